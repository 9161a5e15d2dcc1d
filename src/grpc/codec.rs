//! The protobuf codec of `fieldvault.v1`: prost, with every request message
//! checked against its bounds *before* it is decoded.
//!
//! Why: tonic bounds a message's wire size, but decoding amplifies it. Two
//! bytes (`0a 00`) decode into one empty `Field` of a few hundred bytes, so
//! an 8.8 MB TokenizeRequest of empty fields became 4.4 million structs and
//! took the server from 97 MiB to 2.1 GB, before the batch-size check that
//! runs on the decoded request could refuse it. Here one pass over the
//! encoded bytes (allocating at most a small tally per address) counts
//! every repeated field of a request first and refuses the call with
//! INVALID_ARGUMENT naming the field; what prost then decodes holds at most
//! `max_batch_items` items, each with at most
//! [`MAX_STREET_LINES_ON_THE_WIRE`] street lines, so its memory is the
//! message's wire size plus under 1 KiB an item.
//! A large request is walked and decoded inside `block_in_place`, so that
//! other calls keep a runtime worker meanwhile.
//!
//! The walk is also stricter than prost where it can name the field: a
//! string that is not UTF-8, a length that runs past its message, a varint
//! of more than ten bytes, a known field with the wrong wire type, a group
//! (proto3 has none) or an invalid wire type fail as INVALID_ARGUMENT with
//! the path (`fields[3].value: is not valid UTF-8`). Any error prost still
//! finds in a request is INVALID_ARGUMENT too (the client sent it), not
//! prost's default INTERNAL. Responses (decoded by clients) and all encoding
//! are exactly [`tonic_prost::ProstCodec`]'s.
//!
//! The generated code builds the codec with `Default` for every call, so
//! the codec cannot be handed the server's `max_batch_items`: the server
//! wraps the service in [`BatchLimit`], which sets it in a task-local for
//! the duration of each call (decoding runs inside the call's future). Not a
//! process-wide static, so servers with different settings in one process
//! (tests) each see their own. Without the wrapper (a client, or a server
//! built without it) the limit is the config's default.

use super::error::invalid_argument;
use super::pb;
use crate::config::DEFAULT_MAX_BATCH_ITEMS;
use crate::domain::value::MAX_STREET_LINES;

/// Street lines one address may carry on the wire. The validator allows
/// [`MAX_STREET_LINES`] and refuses more *per item*, so a batch still
/// reports per item (invariant 6); only past this larger bound, which no
/// honest client reaches and which keeps decoding small, does the whole
/// call fail before decoding.
pub const MAX_STREET_LINES_ON_THE_WIRE: usize = 4 * MAX_STREET_LINES;
use bytes::Buf;
use prost::Message;
use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::server::NamedService;
use tonic::Status;

tokio::task_local! {
    static MAX_BATCH_ITEMS: usize;
}

/// The `max_batch_items` of the server whose call is being decoded, or the
/// config's default outside a [`BatchLimit`].
fn max_batch_items() -> usize {
    MAX_BATCH_ITEMS
        .try_with(|n| *n)
        .unwrap_or(DEFAULT_MAX_BATCH_ITEMS)
}

/// A message the codec decodes: requests check their encoded bytes against
/// their bounds before prost decodes them; responses check nothing.
pub trait DecodeBound {
    /// A request (decoded by the server), not a response.
    const IS_REQUEST: bool;

    /// Refuses `bytes` (one encoded message) if decoding it would exceed a
    /// bound; `max_items` is the server's `max_batch_items`.
    fn check(bytes: &[u8], max_items: usize) -> Result<(), Status>;

    /// The status for an error prost found decoding this message (its
    /// message names messages and fields, never a value).
    fn decode_error(error: prost::DecodeError) -> Status;
}

/// A request: walked against `schema`; prost's errors are the caller's.
macro_rules! request {
    ($message:ty, $schema:expr) => {
        impl DecodeBound for $message {
            const IS_REQUEST: bool = true;

            fn check(bytes: &[u8], max_items: usize) -> Result<(), Status> {
                walk_message(&$schema, bytes, max_items)
            }

            fn decode_error(error: prost::DecodeError) -> Status {
                let error = error.to_string();
                let reason = error
                    .strip_prefix("failed to decode Protobuf message: ")
                    .unwrap_or(&error);
                invalid_argument($schema.name, &format!("is not a valid message: {reason}"))
            }
        }
    };
}

/// A response: decoded by a client exactly as `ProstCodec` does.
macro_rules! response {
    ($message:ty) => {
        impl DecodeBound for $message {
            const IS_REQUEST: bool = false;

            fn check(_: &[u8], _: usize) -> Result<(), Status> {
                Ok(())
            }

            fn decode_error(error: prost::DecodeError) -> Status {
                Status::internal(error.to_string())
            }
        }
    };
}

request!(pb::TokenizeRequest, TOKENIZE_REQUEST);
request!(pb::DetokenizeRequest, DETOKENIZE_REQUEST);
request!(pb::DeleteTokensRequest, DELETE_TOKENS_REQUEST);
request!(pb::GetTokenInfoRequest, GET_TOKEN_INFO_REQUEST);
request!(pb::EraseValueRequest, ERASE_VALUE_REQUEST);
request!(pb::ExportValueRequest, EXPORT_VALUE_REQUEST);
response!(pb::TokenizeResponse);
response!(pb::DetokenizeResponse);
response!(pb::DeleteTokensResponse);
response!(pb::GetTokenInfoResponse);
response!(pb::EraseValueResponse);
response!(pb::ExportValueResponse);

// KeyAdmin (key_admin.proto): small requests without repeated fields, still
// walked, so a malformed one is refused naming its field like any other.
request!(pb::RotateDataKeyRequest, ROTATE_DATA_KEY_REQUEST);
request!(pb::GetKeyStatusRequest, GET_KEY_STATUS_REQUEST);
request!(pb::StartRewrapRequest, START_REWRAP_REQUEST);
request!(pb::GetRewrapStatusRequest, GET_REWRAP_STATUS_REQUEST);
request!(pb::RetireKeyVersionRequest, RETIRE_KEY_VERSION_REQUEST);
request!(pb::RotateIndexKeyRequest, ROTATE_INDEX_KEY_REQUEST);
request!(pb::RotateMasterKeyRequest, ROTATE_MASTER_KEY_REQUEST);
response!(pb::RotateDataKeyResponse);
response!(pb::GetKeyStatusResponse);
response!(pb::StartRewrapResponse);
response!(pb::GetRewrapStatusResponse);
response!(pb::RetireKeyVersionResponse);
response!(pb::RotateIndexKeyResponse);
response!(pb::RotateMasterKeyResponse);

// Admin (admin.proto).
request!(pb::ListCallersRequest, LIST_CALLERS_REQUEST);
request!(pb::FreezeCallerRequest, FREEZE_CALLER_REQUEST);
request!(pb::UnfreezeCallerRequest, UNFREEZE_CALLER_REQUEST);
request!(pb::CreateCanariesRequest, CREATE_CANARIES_REQUEST);
request!(pb::ListCanariesRequest, LIST_CANARIES_REQUEST);
response!(pb::ListCallersResponse);
response!(pb::FreezeCallerResponse);
response!(pb::UnfreezeCallerResponse);
response!(pb::CreateCanariesResponse);
response!(pb::ListCanariesResponse);

// Backup (backup.proto).
request!(pb::BackupRequest, BACKUP_REQUEST);
response!(pb::BackupResponse);

// Grants (grants.proto).
request!(pb::RequestGrantRequest, REQUEST_GRANT_REQUEST);
request!(pb::ApproveGrantRequest, APPROVE_GRANT_REQUEST);
request!(pb::RejectGrantRequest, REJECT_GRANT_REQUEST);
request!(pb::RevokeGrantRequest, REVOKE_GRANT_REQUEST);
request!(pb::ListGrantsRequest, LIST_GRANTS_REQUEST);
request!(pb::GetGrantRequest, GET_GRANT_REQUEST);
response!(pb::RequestGrantResponse);
response!(pb::ApproveGrantResponse);
response!(pb::RejectGrantResponse);
response!(pb::RevokeGrantResponse);
response!(pb::ListGrantsResponse);
response!(pb::GetGrantResponse);

// ---------------------------------------------------------------------------
// The schema: for each request message, the fields the walk checks. Fields
// not listed are skipped by wire type, as prost skips unknown fields; a
// test holds this against the descriptors of proto/fieldvault/v1/ (every
// request of every service) so that every repeated field of a request has
// a bound.

/// What a field holds on the wire.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// An enum or integer (wire type 0).
    Varint,
    /// A repeated enum or integer: one per field (wire type 0) or packed,
    /// many in one length-delimited field (wire type 2); each counts.
    Varints,
    /// A string: length-delimited, UTF-8.
    Str,
    /// A message: length-delimited, walked.
    Msg(&'static Schema),
}

/// How many times a field may occur.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Count {
    /// A singular field: occurrences replace (scalars) or merge into one
    /// (messages), so they do not add items.
    One,
    /// Repeated, at most the server's `max_batch_items`.
    BatchItems,
    /// Repeated, at most this many.
    AtMost(usize),
}

#[derive(Debug)]
struct FieldSpec {
    number: u32,
    name: &'static str,
    shape: Shape,
    count: Count,
}

#[derive(Debug)]
struct Schema {
    /// The message's name, for errors about the message as a whole.
    name: &'static str,
    fields: &'static [FieldSpec],
}

const fn field(number: u32, name: &'static str, shape: Shape, count: Count) -> FieldSpec {
    FieldSpec {
        number,
        name,
        shape,
        count,
    }
}

static POSTAL_ADDRESS: Schema = Schema {
    name: "PostalAddress",
    fields: &[
        field(1, "country", Shape::Str, Count::One),
        field(2, "region", Shape::Str, Count::One),
        field(3, "city", Shape::Str, Count::One),
        field(4, "district", Shape::Str, Count::One),
        field(
            5,
            "street_lines",
            Shape::Str,
            Count::AtMost(MAX_STREET_LINES_ON_THE_WIRE),
        ),
        field(6, "postal_code", Shape::Str, Count::One),
        field(7, "recipient", Shape::Str, Count::One),
    ],
};

/// A well-known type: its name is the full one.
static DURATION: Schema = Schema {
    name: "google.protobuf.Duration",
    fields: &[
        field(1, "seconds", Shape::Varint, Count::One),
        field(2, "nanos", Shape::Varint, Count::One),
    ],
};

static FIELD: Schema = Schema {
    name: "Field",
    fields: &[
        field(1, "kind", Shape::Varint, Count::One),
        field(2, "value", Shape::Str, Count::One),
        field(3, "region", Shape::Str, Count::One),
        field(4, "scheme", Shape::Varint, Count::One),
        field(5, "address", Shape::Msg(&POSTAL_ADDRESS), Count::One),
        field(6, "ttl", Shape::Msg(&DURATION), Count::One),
    ],
};

static TOKENIZE_REQUEST: Schema = Schema {
    name: "TokenizeRequest",
    fields: &[
        field(1, "fields", Shape::Msg(&FIELD), Count::BatchItems),
        field(2, "purpose", Shape::Str, Count::One),
    ],
};

static DETOKENIZE_REQUEST: Schema = Schema {
    name: "DetokenizeRequest",
    fields: &[
        field(1, "tokens", Shape::Str, Count::BatchItems),
        field(2, "purpose", Shape::Str, Count::One),
        field(3, "justification", Shape::Str, Count::One),
        field(4, "grant_id", Shape::Str, Count::One),
    ],
};

static DELETE_TOKENS_REQUEST: Schema = Schema {
    name: "DeleteTokensRequest",
    fields: &[field(1, "tokens", Shape::Str, Count::BatchItems)],
};

static GET_TOKEN_INFO_REQUEST: Schema = Schema {
    name: "GetTokenInfoRequest",
    fields: &[field(1, "tokens", Shape::Str, Count::BatchItems)],
};

static ERASE_VALUE_REQUEST: Schema = Schema {
    name: "EraseValueRequest",
    fields: &[field(1, "field", Shape::Msg(&FIELD), Count::One)],
};

static EXPORT_VALUE_REQUEST: Schema = Schema {
    name: "ExportValueRequest",
    fields: &[
        field(1, "field", Shape::Msg(&FIELD), Count::One),
        field(2, "purpose", Shape::Str, Count::One),
    ],
};

static ROTATE_DATA_KEY_REQUEST: Schema = Schema {
    name: "RotateDataKeyRequest",
    fields: &[],
};

static GET_KEY_STATUS_REQUEST: Schema = Schema {
    name: "GetKeyStatusRequest",
    fields: &[],
};

static START_REWRAP_REQUEST: Schema = Schema {
    name: "StartRewrapRequest",
    fields: &[field(1, "rate_per_second", Shape::Varint, Count::One)],
};

static GET_REWRAP_STATUS_REQUEST: Schema = Schema {
    name: "GetRewrapStatusRequest",
    fields: &[],
};

static RETIRE_KEY_VERSION_REQUEST: Schema = Schema {
    name: "RetireKeyVersionRequest",
    fields: &[field(1, "version", Shape::Varint, Count::One)],
};

static ROTATE_INDEX_KEY_REQUEST: Schema = Schema {
    name: "RotateIndexKeyRequest",
    fields: &[],
};

static ROTATE_MASTER_KEY_REQUEST: Schema = Schema {
    name: "RotateMasterKeyRequest",
    fields: &[field(1, "new_key_file", Shape::Str, Count::One)],
};

static LIST_CALLERS_REQUEST: Schema = Schema {
    name: "ListCallersRequest",
    fields: &[],
};

static FREEZE_CALLER_REQUEST: Schema = Schema {
    name: "FreezeCallerRequest",
    fields: &[
        field(1, "caller", Shape::Str, Count::One),
        field(2, "reason", Shape::Str, Count::One),
    ],
};

static UNFREEZE_CALLER_REQUEST: Schema = Schema {
    name: "UnfreezeCallerRequest",
    fields: &[field(1, "caller", Shape::Str, Count::One)],
};

static CREATE_CANARIES_REQUEST: Schema = Schema {
    name: "CreateCanariesRequest",
    fields: &[
        field(1, "kind", Shape::Varint, Count::One),
        field(2, "count", Shape::Varint, Count::One),
    ],
};

static LIST_CANARIES_REQUEST: Schema = Schema {
    name: "ListCanariesRequest",
    fields: &[],
};

static BACKUP_REQUEST: Schema = Schema {
    name: "BackupRequest",
    fields: &[],
};

static REQUEST_GRANT_REQUEST: Schema = Schema {
    name: "RequestGrantRequest",
    fields: &[
        field(1, "caller", Shape::Str, Count::One),
        field(
            2,
            "kinds",
            Shape::Varints,
            Count::AtMost(crate::domain::grant::MAX_GRANT_KINDS),
        ),
        field(3, "purpose", Shape::Str, Count::One),
        field(4, "max_reveals", Shape::Varint, Count::One),
        field(5, "valid_for", Shape::Msg(&DURATION), Count::One),
        field(6, "reason", Shape::Str, Count::One),
        field(
            7,
            "tokens",
            Shape::Str,
            Count::AtMost(crate::domain::grant::MAX_GRANT_TOKENS),
        ),
    ],
};

static APPROVE_GRANT_REQUEST: Schema = Schema {
    name: "ApproveGrantRequest",
    fields: &[field(1, "grant_id", Shape::Str, Count::One)],
};

static REJECT_GRANT_REQUEST: Schema = Schema {
    name: "RejectGrantRequest",
    fields: &[
        field(1, "grant_id", Shape::Str, Count::One),
        field(2, "reason", Shape::Str, Count::One),
    ],
};

static REVOKE_GRANT_REQUEST: Schema = Schema {
    name: "RevokeGrantRequest",
    fields: &[
        field(1, "grant_id", Shape::Str, Count::One),
        field(2, "reason", Shape::Str, Count::One),
    ],
};

static LIST_GRANTS_REQUEST: Schema = Schema {
    name: "ListGrantsRequest",
    fields: &[
        field(1, "state", Shape::Varint, Count::One),
        field(2, "caller", Shape::Str, Count::One),
        field(3, "limit", Shape::Varint, Count::One),
    ],
};

static GET_GRANT_REQUEST: Schema = Schema {
    name: "GetGrantRequest",
    fields: &[field(1, "grant_id", Shape::Str, Count::One)],
};

/// Every request message, by the schema it is walked against.
#[cfg(test)]
static REQUESTS: [&Schema; 25] = [
    &TOKENIZE_REQUEST,
    &DETOKENIZE_REQUEST,
    &DELETE_TOKENS_REQUEST,
    &GET_TOKEN_INFO_REQUEST,
    &ERASE_VALUE_REQUEST,
    &EXPORT_VALUE_REQUEST,
    &ROTATE_DATA_KEY_REQUEST,
    &GET_KEY_STATUS_REQUEST,
    &START_REWRAP_REQUEST,
    &GET_REWRAP_STATUS_REQUEST,
    &RETIRE_KEY_VERSION_REQUEST,
    &ROTATE_INDEX_KEY_REQUEST,
    &ROTATE_MASTER_KEY_REQUEST,
    &LIST_CALLERS_REQUEST,
    &FREEZE_CALLER_REQUEST,
    &UNFREEZE_CALLER_REQUEST,
    &CREATE_CANARIES_REQUEST,
    &LIST_CANARIES_REQUEST,
    &BACKUP_REQUEST,
    &REQUEST_GRANT_REQUEST,
    &APPROVE_GRANT_REQUEST,
    &REJECT_GRANT_REQUEST,
    &REVOKE_GRANT_REQUEST,
    &LIST_GRANTS_REQUEST,
    &GET_GRANT_REQUEST,
];

// ---------------------------------------------------------------------------
// The walk.

/// Where in the request the walk is, rendered only for an error (so the
/// walk allocates nothing).
#[derive(Clone, Copy)]
enum Path<'a> {
    /// The request message itself.
    Root(&'static str),
    /// A singular field of a message.
    Field(&'a Path<'a>, &'static str),
    /// An element of a repeated field.
    Item(&'a Path<'a>, &'static str, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (parent, name) = match self {
            Path::Root(name) => return f.write_str(name),
            Path::Field(parent, name) | Path::Item(parent, name, _) => (parent, name),
        };
        if !matches!(parent, Path::Root(_)) {
            write!(f, "{parent}.")?;
        }
        f.write_str(name)?;
        if let Path::Item(_, _, i) = self {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

fn refuse(path: &Path<'_>, reason: &str) -> Status {
    invalid_argument(&path.to_string(), reason)
}

/// The most fields a schema lists (a test holds the schemas to it).
const MAX_FIELDS: usize = 8;

/// Counts of one message as decoded: its repeated fields, and the tallies
/// of its singular message fields, which merge over every occurrence (a
/// `Field` that carries `address` twice decodes into one address holding
/// the street lines of both). Allocates only for a singular message field
/// that is present.
struct Tally {
    counts: [usize; MAX_FIELDS],
    children: [Option<Box<Tally>>; MAX_FIELDS],
}

impl Tally {
    fn new() -> Self {
        Self {
            counts: [0; MAX_FIELDS],
            children: std::array::from_fn(|_| None),
        }
    }
}

impl Count {
    /// The most occurrences that add items, if bounded.
    fn bound(self, max_items: usize) -> Option<usize> {
        match self {
            Count::One => None,
            Count::BatchItems => Some(max_items),
            Count::AtMost(n) => Some(n),
        }
    }
}

/// Checks one whole request message.
fn walk_message(schema: &'static Schema, bytes: &[u8], max_items: usize) -> Result<(), Status> {
    let path = Path::Root(schema.name);
    let mut tally = Tally::new();
    walk(schema, bytes, &path, max_items, &mut tally)?;
    check_counts(schema, &tally, &path, max_items)
}

/// Refuses the counts in `tally` (of a message at `path`) that pass their
/// bounds, then those of its singular message fields.
fn check_counts(
    schema: &Schema,
    tally: &Tally,
    path: &Path<'_>,
    max_items: usize,
) -> Result<(), Status> {
    for (i, spec) in schema.fields.iter().enumerate() {
        let n = tally.counts[i];
        let here = Path::Field(path, spec.name);
        match spec.count {
            Count::BatchItems if n > max_items => {
                return Err(refuse(
                    &here,
                    &crate::domain::batch::too_many_items(n, max_items),
                ))
            }
            Count::AtMost(max) if n > max => {
                return Err(refuse(
                    &here,
                    &format!("holds {n} items; at most {max} are allowed"),
                ))
            }
            _ => {}
        }
        if let (Shape::Msg(sub), Some(child)) = (spec.shape, &tally.children[i]) {
            check_counts(sub, child, &here, max_items)?;
        }
    }
    Ok(())
}

/// Walks the fields in `bytes` (all or part of one message at `path`),
/// counting into `tally`. Repeated message fields are walked and checked
/// element by element; singular ones add to the tally they share. Past its
/// bound, a repeated field's elements are only counted (the call is refused
/// with the count), so the walk costs one pass over the bytes whatever
/// their shape.
fn walk(
    schema: &'static Schema,
    mut bytes: &[u8],
    path: &Path<'_>,
    max_items: usize,
    tally: &mut Tally,
) -> Result<(), Status> {
    while !bytes.is_empty() {
        let key = varint(&mut bytes).map_err(|reason| refuse(path, reason))?;
        let wire_type = key & 7;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(refuse(
                path,
                &format!("holds an invalid field number {number}"),
            ));
        }
        let Some(index) = schema
            .fields
            .iter()
            .position(|f| u64::from(f.number) == number)
        else {
            skip(wire_type, &mut bytes).map_err(|reason| refuse(path, reason))?;
            continue;
        };
        let spec = &schema.fields[index];
        let nth = tally.counts[index];
        tally.counts[index] = nth.saturating_add(1);
        if spec.count.bound(max_items).is_some_and(|max| nth >= max) {
            skip(wire_type, &mut bytes).map_err(|reason| refuse(path, reason))?;
            continue;
        }
        let item = Path::Item(path, spec.name, nth);
        let single = Path::Field(path, spec.name);
        let here = if spec.count == Count::One {
            &single
        } else {
            &item
        };
        let expected = match spec.shape {
            Shape::Varint => 0,
            // Packed (proto3's default) or one by one.
            Shape::Varints if wire_type == 0 => 0,
            Shape::Str | Shape::Msg(_) | Shape::Varints => 2,
        };
        if wire_type != expected {
            return Err(refuse(
                here,
                &format!("has wire type {wire_type}; this field is sent with wire type {expected}"),
            ));
        }
        match spec.shape {
            Shape::Varint => {
                varint(&mut bytes).map_err(|reason| refuse(here, reason))?;
            }
            Shape::Varints if wire_type == 0 => {
                varint(&mut bytes).map_err(|reason| refuse(here, reason))?;
            }
            Shape::Varints => {
                // A packed run: each varint in it is an element (the run
                // itself was counted as one above).
                let mut packed = delimited(&mut bytes).map_err(|reason| refuse(here, reason))?;
                let mut n = 0usize;
                while !packed.is_empty() {
                    varint(&mut packed).map_err(|reason| refuse(here, reason))?;
                    n += 1;
                }
                tally.counts[index] = tally.counts[index].saturating_add(n).saturating_sub(1);
            }
            Shape::Str => {
                let text = delimited(&mut bytes).map_err(|reason| refuse(here, reason))?;
                if std::str::from_utf8(text).is_err() {
                    return Err(refuse(here, "is not valid UTF-8"));
                }
            }
            Shape::Msg(sub) => {
                let inner = delimited(&mut bytes).map_err(|reason| refuse(here, reason))?;
                if spec.count == Count::One {
                    let child = tally.children[index].get_or_insert_with(|| Box::new(Tally::new()));
                    walk(sub, inner, here, max_items, child)?;
                } else {
                    let mut child = Tally::new();
                    walk(sub, inner, here, max_items, &mut child)?;
                    check_counts(sub, &child, here, max_items)?;
                }
            }
        }
    }
    Ok(())
}

const TRUNCATED: &str = "is truncated: a length runs past the end of its message";

/// Reads a varint as prost does: at most ten bytes, and no more than 64 bits.
fn varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return Err("holds a varint longer than 64 bits");
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *bytes = &bytes[i + 1..];
            return Ok(value);
        }
    }
    if bytes.len() < 10 {
        Err("is truncated: it ends inside a varint")
    } else {
        Err("holds a varint longer than 64 bits")
    }
}

/// Reads a length-delimited payload.
fn delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let len = varint(bytes)?;
    let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
    if len > bytes.len() {
        return Err(TRUNCATED);
    }
    let (payload, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(payload)
}

/// Skips an unknown field's payload.
fn skip(wire_type: u64, bytes: &mut &[u8]) -> Result<(), &'static str> {
    let fixed = |bytes: &mut &[u8], n: usize| {
        if bytes.len() < n {
            return Err("is truncated: it ends inside a fixed-size field");
        }
        *bytes = &bytes[n..];
        Ok(())
    };
    match wire_type {
        0 => varint(bytes).map(drop),
        1 => fixed(bytes, 8),
        2 => delimited(bytes).map(drop),
        5 => fixed(bytes, 4),
        3 | 4 => Err("holds a group (wire type 3 or 4), which proto3 does not have"),
        _ => Err("holds an invalid wire type (6 or 7)"),
    }
}

// ---------------------------------------------------------------------------
// The codec.

/// [`tonic_prost::ProstCodec`] with [`DecodeBound`] checks before decoding;
/// set as the codec of the generated services in build.rs.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeBound + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            _type: PhantomData,
            max_items: max_batch_items(),
        }
    }
}

/// Decodes a `U` once its bytes pass [`DecodeBound::check`].
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U> {
    _type: PhantomData<U>,
    max_items: usize,
}

impl<U: Message + Default + DecodeBound> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Walking and decoding a large message takes a while (tens of ms
        // for the largest in a release build, most of a second in a debug
        // one): off the runtime's worker, so other calls go on meanwhile.
        if buf.remaining() >= BLOCKING_DECODE_BYTES && U::IS_REQUEST && multi_thread_runtime() {
            tokio::task::block_in_place(|| self.decode_now(buf))
        } else {
            self.decode_now(buf)
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Messages from this size on are walked and decoded outside the runtime.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

fn multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

impl<U: Message + Default + DecodeBound> BoundedDecoder<U> {
    fn decode_now(&self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands the whole message over in one contiguous buffer; if a
        // version ever did not, it is made contiguous (without a copy for
        // tonic's BytesMut).
        if buf.chunk().len() == buf.remaining() {
            U::check(buf.chunk(), self.max_items)?;
            U::decode(buf).map(Some).map_err(U::decode_error)
        } else {
            let bytes = buf.copy_to_bytes(buf.remaining());
            U::check(&bytes, self.max_items)?;
            U::decode(bytes).map(Some).map_err(U::decode_error)
        }
    }
}

/// A gRPC service whose requests are decoded under `max_batch_items` (see
/// the module docs for why this is a task-local).
#[derive(Debug, Clone)]
pub struct BatchLimit<S> {
    inner: S,
    max_batch_items: usize,
}

impl<S> BatchLimit<S> {
    pub fn new(inner: S, max_batch_items: usize) -> Self {
        Self {
            inner,
            max_batch_items,
        }
    }
}

impl<S: NamedService> NamedService for BatchLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> tower_service::Service<R> for BatchLimit<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<usize, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        // Set while the service builds its future and while it runs, so
        // the limit holds wherever the service creates its codec.
        let n = self.max_batch_items;
        let future = MAX_BATCH_ITEMS.sync_scope(n, || self.inner.call(req));
        MAX_BATCH_ITEMS.scope(n, future)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tonic::Code;
    use tonic_types::StatusExt;

    fn varint_bytes(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(n, &mut out);
        out
    }

    /// A length-delimited field.
    fn ld(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint_bytes(number << 3 | 2);
        out.extend(varint_bytes(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn repeat(part: &[u8], n: usize) -> Vec<u8> {
        part.repeat(n)
    }

    /// A Field holding an address with `lines` empty street lines.
    fn field_with_street_lines(lines: usize) -> Vec<u8> {
        ld(5, &repeat(&ld(5, b""), lines))
    }

    fn tokenize(bytes: &[u8], max: usize) -> Result<(), Status> {
        <pb::TokenizeRequest as DecodeBound>::check(bytes, max)
    }

    fn detokenize(bytes: &[u8], max: usize) -> Result<(), Status> {
        <pb::DetokenizeRequest as DecodeBound>::check(bytes, max)
    }

    /// The refusal's message, after checking it is INVALID_ARGUMENT with a
    /// BadRequest naming the same field as the message.
    fn refusal(result: Result<(), Status>) -> String {
        let status = result.expect_err("the bytes should be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad = status
            .get_details_bad_request()
            .expect("a google.rpc.BadRequest detail");
        let field = &bad.field_violations[0].field;
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field} / {}",
            status.message()
        );
        status.message().to_owned()
    }

    #[test]
    fn a_tokenize_request_of_empty_fields_past_the_batch_limit_is_refused_with_its_count() {
        let ok = repeat(&ld(1, b""), 1000);
        assert!(tokenize(&ok, 1000).is_ok());
        let over = repeat(&ld(1, b""), 1001);
        assert_eq!(
            refusal(tokenize(&over, 1000)),
            "fields: holds 1001 items; at most 1000 are allowed per call"
        );
        assert_eq!(
            refusal(tokenize(&ok, 7)),
            "fields: holds 1000 items; at most 7 are allowed per call"
        );
    }

    #[test]
    fn a_detokenize_request_of_empty_tokens_past_the_batch_limit_is_refused_with_its_count() {
        let mut bytes = repeat(&ld(1, b""), 11);
        bytes.extend(ld(2, b"callback"));
        assert!(detokenize(&bytes, 11).is_ok());
        assert_eq!(
            refusal(detokenize(&bytes, 10)),
            "tokens: holds 11 items; at most 10 are allowed per call"
        );
    }

    #[test]
    fn street_lines_past_the_wire_bound_are_refused_naming_the_field() {
        let mut bytes = repeat(&ld(1, b""), 3);
        // Past the validator's bound but within the wire's: left to the
        // validator, which answers for that item alone.
        bytes.extend(ld(1, &field_with_street_lines(MAX_STREET_LINES + 1)));
        bytes.extend(ld(
            1,
            &field_with_street_lines(MAX_STREET_LINES_ON_THE_WIRE),
        ));
        assert!(tokenize(&bytes, 1000).is_ok());
        bytes.extend(ld(
            1,
            &field_with_street_lines(MAX_STREET_LINES_ON_THE_WIRE + 1),
        ));
        assert_eq!(
            refusal(tokenize(&bytes, 1000)),
            format!(
                "fields[5].address.street_lines: holds {} items; at most \
                 {MAX_STREET_LINES_ON_THE_WIRE} are allowed",
                MAX_STREET_LINES_ON_THE_WIRE + 1
            )
        );
    }

    #[test]
    fn street_lines_count_over_every_occurrence_of_an_address_since_prost_merges_them() {
        // Two `address` fields of one Field decode into one address with
        // the lines of both.
        let half = field_with_street_lines(MAX_STREET_LINES_ON_THE_WIRE / 2 + 1);
        let field = [half.clone(), half].concat();
        let refused = refusal(tokenize(&ld(1, &field), 1000));
        assert!(
            refused.starts_with(&format!(
                "fields[0].address.street_lines: holds {} items",
                MAX_STREET_LINES_ON_THE_WIRE + 2
            )),
            "{refused}"
        );
        // Two Fields with half each are fine.
        let five = MAX_STREET_LINES_ON_THE_WIRE / 2 + 1;
        let two = [
            ld(1, &field_with_street_lines(five)),
            ld(1, &field_with_street_lines(five)),
        ]
        .concat();
        assert!(tokenize(&two, 1000).is_ok());
    }

    #[test]
    fn millions_of_items_are_counted_in_one_pass_without_walking_past_the_bound() {
        let bytes = repeat(&ld(1, &field_with_street_lines(1)), 1_000_000);
        assert_eq!(
            refusal(tokenize(&bytes, 1000)),
            "fields: holds 1000000 items; at most 1000 are allowed per call"
        );
        let lines = ld(1, &field_with_street_lines(1_000_000));
        assert_eq!(
            refusal(tokenize(&lines, 1000)),
            format!(
                "fields[0].address.street_lines: holds 1000000 items; at most \
                 {MAX_STREET_LINES_ON_THE_WIRE} are allowed"
            )
        );
    }

    #[test]
    fn truncated_varints_are_refused_where_they_end() {
        // A key cut short.
        assert_eq!(
            refusal(tokenize(&[0x80], 10)),
            "TokenizeRequest: is truncated: it ends inside a varint"
        );
        // A length cut short.
        assert_eq!(
            refusal(tokenize(&[0x0a, 0x80], 10)),
            "fields[0]: is truncated: it ends inside a varint"
        );
        // An enum inside a Field, cut short by the Field's own length.
        let field = ld(1, &[0x08, 0x81]);
        assert_eq!(
            refusal(tokenize(&field, 10)),
            "fields[0].kind: is truncated: it ends inside a varint"
        );
        // Eleven continuation bytes, and a tenth byte past 64 bits.
        let mut long = vec![0x08];
        long.extend([0xff; 11]);
        assert!(refusal(tokenize(&ld(1, &long), 10)).contains("longer than 64 bits"));
        let mut overflow = vec![0x08];
        overflow.extend([0xff; 9]);
        overflow.push(0x02);
        assert!(refusal(tokenize(&ld(1, &overflow), 10)).contains("longer than 64 bits"));
        let mut max = vec![0x08];
        max.extend([0xff; 9]);
        max.push(0x01);
        assert!(tokenize(&ld(1, &max), 10).is_ok(), "u64::MAX is a varint");
    }

    #[test]
    fn lengths_past_the_end_of_their_message_are_refused() {
        assert_eq!(
            refusal(tokenize(&[0x0a, 0x05, 0x00], 10)),
            "fields[0]: is truncated: a length runs past the end of its message"
        );
        // The value's length fits the request but not its Field.
        let mut bytes = vec![0x0a, 0x03, 0x12, 0x05, b'x'];
        bytes.extend([b'y'; 8]);
        assert_eq!(
            refusal(tokenize(&bytes, 10)),
            "fields[0].value: is truncated: a length runs past the end of its message"
        );
        // A length no usize holds.
        let mut huge = vec![0x12];
        huge.extend(varint_bytes(u64::MAX));
        assert!(refusal(detokenize(&huge, 10)).starts_with("purpose: is truncated"));
        // An unknown fixed64 cut short.
        assert_eq!(
            refusal(detokenize(&[0x79, 1, 2, 3], 10)),
            "DetokenizeRequest: is truncated: it ends inside a fixed-size field"
        );
    }

    #[test]
    fn a_string_that_is_not_utf8_is_refused_naming_its_path() {
        let field = [vec![0x08, 0x01], ld(2, &[b'+', 0xff, 0xfe])].concat();
        let bytes = [ld(1, &ld(2, b"ok")), ld(1, &field)].concat();
        assert_eq!(
            refusal(tokenize(&bytes, 10)),
            "fields[1].value: is not valid UTF-8"
        );
        let address = ld(5, &[ld(5, b"1 Example Way"), ld(5, &[0xc3])].concat());
        assert_eq!(
            refusal(tokenize(&ld(1, &address), 10)),
            "fields[0].address.street_lines[1]: is not valid UTF-8"
        );
        assert_eq!(
            refusal(detokenize(&[ld(1, b"fv1_a"), ld(1, &[0x80])].concat(), 10)),
            "tokens[1]: is not valid UTF-8"
        );
        assert_eq!(
            refusal(detokenize(&ld(3, &[0xed, 0xa0, 0x80]), 10)),
            "justification: is not valid UTF-8"
        );
    }

    #[test]
    fn a_known_field_with_the_wrong_wire_type_is_refused() {
        assert_eq!(
            refusal(tokenize(&[0x08, 0x01], 10)),
            "fields[0]: has wire type 0; this field is sent with wire type 2"
        );
        assert_eq!(
            refusal(tokenize(&ld(1, &ld(1, b"")), 10)),
            "fields[0].kind: has wire type 2; this field is sent with wire type 0"
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_groups_and_bad_wire_types_are_refused() {
        // field 9 as varint, fixed64, length-delimited and fixed32.
        let unknown = [
            vec![0x48, 0x96, 0x01],
            vec![0x49, 1, 2, 3, 4, 5, 6, 7, 8],
            ld(9, &[0xff, 0xff]),
            vec![0x4d, 1, 2, 3, 4],
        ]
        .concat();
        let field = [unknown.clone(), ld(2, b"x")].concat();
        assert!(tokenize(&[unknown.clone(), ld(1, &field)].concat(), 10).is_ok());
        // Groups: a start and an end group.
        assert!(refusal(tokenize(&[0x4b, 0x4c], 10)).contains("group"));
        assert!(refusal(tokenize(&ld(1, &[0x4c]), 10)).starts_with("fields[0]: holds a group"));
        // Wire types 6 and 7.
        assert!(refusal(tokenize(&[0x4e], 10)).contains("invalid wire type"));
        assert!(refusal(tokenize(&[0x4f], 10)).contains("invalid wire type"));
        // Field number 0 and one past 2^29 - 1.
        assert!(refusal(tokenize(&[0x02, 0x00], 10)).contains("invalid field number 0"));
        let mut big = varint_bytes((1u64 << 29) << 3);
        big.push(0);
        assert!(refusal(tokenize(&big, 10)).contains("invalid field number"));
    }

    #[test]
    fn every_legal_request_passes_and_decodes_to_what_was_sent() {
        let address = pb::PostalAddress {
            country: "US".into(),
            street_lines: vec!["1 Example Way".into(); MAX_STREET_LINES],
            ..Default::default()
        };
        let request = pb::TokenizeRequest {
            fields: vec![
                pb::Field {
                    kind: pb::FieldKind::Address as i32,
                    address: Some(address),
                    ..Default::default()
                };
                1000
            ],
            purpose: Some("billing".into()),
        };
        let bytes = request.encode_to_vec();
        assert!(tokenize(&bytes, 1000).is_ok());
        let request = pb::DetokenizeRequest {
            tokens: vec!["fv1_AAAAAAAAAAAAAAAAAAAAAA".into(); 1000],
            purpose: "callback".into(),
            justification: "ticket TEST-1".into(),
            grant_id: String::new(),
        };
        assert!(detokenize(&request.encode_to_vec(), 1000).is_ok());
    }

    #[test]
    fn a_prost_error_in_a_request_is_invalid_argument_and_in_a_response_internal() {
        // Invalid UTF-8 inside a field, as prost reports it.
        let bytes = ld(1, &ld(2, &[0xff]));
        let error = pb::TokenizeRequest::decode(bytes.as_slice()).unwrap_err();
        let status = <pb::TokenizeRequest as DecodeBound>::decode_error(error.clone());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "TokenizeRequest: is not a valid message: Field.value: TokenizeRequest.fields: \
             invalid string value: data is not UTF-8 encoded"
        );
        let status = <pb::TokenizeResponse as DecodeBound>::decode_error(error);
        assert_eq!(status.code(), Code::Internal);
        assert!(<pb::TokenizeResponse as DecodeBound>::check(&[0xff], 0).is_ok());
    }

    #[test]
    fn the_schema_bounds_every_repeated_field_of_every_request_message_in_the_proto() {
        use prost_types::field_descriptor_proto::{Label, Type};
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        // vault.proto and key_admin.proto: one package, several files.
        let files: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "fieldvault.v1")
            .collect();
        assert_eq!(
            files.len(),
            5,
            "vault.proto, key_admin.proto, admin.proto, backup.proto and grants.proto"
        );
        // A message by its schema's name: a name of fieldvault.v1, or the
        // full name of a well-known type (google.protobuf.Duration).
        let message = |name: &str| {
            let (package, short) = name.rsplit_once('.').unwrap_or(("fieldvault.v1", name));
            set.file
                .iter()
                .filter(|f| f.package() == package)
                .flat_map(|f| &f.message_type)
                .find(|m| m.name() == short)
                .unwrap_or_else(|| panic!("{name} is not in the proto"))
        };
        let full_name = |name: &str| {
            if name.contains('.') {
                format!(".{name}")
            } else {
                format!(".fieldvault.v1.{name}")
            }
        };
        // Every method of every service takes a request that has a schema,
        // and every schema is the request of some method.
        let mut inputs: Vec<String> = files
            .iter()
            .flat_map(|f| &f.service)
            .flat_map(|s| &s.method)
            .map(|m| {
                m.input_type()
                    .trim_start_matches(".fieldvault.v1.")
                    .to_owned()
            })
            .collect();
        inputs.sort();
        let mut schemas: Vec<String> = REQUESTS.iter().map(|s| s.name.to_owned()).collect();
        schemas.sort();
        assert_eq!(inputs, schemas);
        // Every message reachable from a request, against its schema.
        let mut todo: Vec<&Schema> = REQUESTS.to_vec();
        let mut seen = 0;
        while let Some(schema) = todo.pop() {
            seen += 1;
            assert!(schema.fields.len() <= MAX_FIELDS, "{}", schema.name);
            let proto = message(schema.name);
            assert_eq!(
                proto.field.len(),
                schema.fields.len(),
                "{}: the schema lists every field of the proto",
                schema.name
            );
            for f in &proto.field {
                let spec = schema
                    .fields
                    .iter()
                    .find(|s| i64::from(s.number) == i64::from(f.number()))
                    .unwrap_or_else(|| panic!("{}.{} is not in the schema", schema.name, f.name()));
                assert_eq!(spec.name, f.name());
                let repeated = f.label() == Label::Repeated;
                assert_eq!(
                    repeated,
                    spec.count != Count::One,
                    "{}.{}: a repeated field has a bound, a singular one none",
                    schema.name,
                    f.name()
                );
                match (f.r#type(), spec.shape) {
                    (Type::Enum | Type::Uint32 | Type::Int64 | Type::Int32, Shape::Varint)
                    | (Type::Enum, Shape::Varints)
                    | (Type::String, Shape::Str) => {}
                    (Type::Message, Shape::Msg(sub)) => {
                        assert_eq!(f.type_name(), full_name(sub.name));
                        todo.push(sub);
                    }
                    (t, s) => panic!(
                        "{}.{}: {t:?} in the proto, {s:?} here",
                        schema.name,
                        f.name()
                    ),
                }
            }
        }
        // Field and what it holds are walked once per request that holds
        // it (Tokenize, EraseValue, ExportValue); Duration once more
        // (RequestGrant's valid_for).
        assert_eq!(
            seen,
            25 + 3 * 3 + 1,
            "twenty-five requests; Field, PostalAddress and Duration thrice, Duration once more"
        );
        // The street-line bound leaves the validators' to the validator.
        assert_eq!(
            POSTAL_ADDRESS.fields[4].count,
            Count::AtMost(MAX_STREET_LINES_ON_THE_WIRE)
        );
        const { assert!(MAX_STREET_LINES_ON_THE_WIRE > crate::domain::value::MAX_STREET_LINES) };
    }

    #[test]
    fn key_admin_requests_are_walked_and_refused_naming_their_field() {
        let master = |bytes: &[u8]| <pb::RotateMasterKeyRequest as DecodeBound>::check(bytes, 10);
        assert_eq!(
            refusal(master(&ld(1, &[b'/', 0xff]))),
            "new_key_file: is not valid UTF-8"
        );
        assert!(master(&ld(1, b"/etc/fieldvault/new.key")).is_ok());
        let rewrap = |bytes: &[u8]| <pb::StartRewrapRequest as DecodeBound>::check(bytes, 10);
        assert_eq!(
            refusal(rewrap(&ld(1, b"100"))),
            "rate_per_second: has wire type 2; this field is sent with wire type 0"
        );
        let request = pb::StartRewrapRequest {
            rate_per_second: Some(500),
        };
        assert!(rewrap(&request.encode_to_vec()).is_ok());
        let retire = |bytes: &[u8]| <pb::RetireKeyVersionRequest as DecodeBound>::check(bytes, 10);
        assert_eq!(
            refusal(retire(&[0x08, 0x80])),
            "version: is truncated: it ends inside a varint"
        );
        // An empty request with an unknown field: skipped, as prost does.
        let status = |bytes: &[u8]| <pb::GetKeyStatusRequest as DecodeBound>::check(bytes, 10);
        assert!(status(&ld(9, b"x")).is_ok());
        assert_eq!(
            refusal(status(&[0x0a, 0x05])),
            "GetKeyStatusRequest: is truncated: a length runs past the end of its message"
        );
    }

    #[test]
    fn lifecycle_requests_are_bounded_and_walked_naming_their_fields() {
        let delete =
            |bytes: &[u8], max| <pb::DeleteTokensRequest as DecodeBound>::check(bytes, max);
        let info = |bytes: &[u8], max| <pb::GetTokenInfoRequest as DecodeBound>::check(bytes, max);
        let erase = |bytes: &[u8]| <pb::EraseValueRequest as DecodeBound>::check(bytes, 10);
        let export = |bytes: &[u8]| <pb::ExportValueRequest as DecodeBound>::check(bytes, 10);
        let tokens = repeat(&ld(1, b""), 11);
        assert!(delete(&tokens, 11).is_ok());
        assert_eq!(
            refusal(delete(&tokens, 10)),
            "tokens: holds 11 items; at most 10 are allowed per call"
        );
        assert_eq!(
            refusal(info(&tokens, 10)),
            "tokens: holds 11 items; at most 10 are allowed per call"
        );
        assert_eq!(
            refusal(info(&[ld(1, b"fv1_a"), ld(1, &[0xff])].concat(), 10)),
            "tokens[1]: is not valid UTF-8"
        );
        // The field of an erase or export is walked as Tokenize's fields
        // are, its time to live included.
        let phone = [vec![0x08, 0x01], ld(2, &[b'+', 0xff])].concat();
        assert_eq!(
            refusal(erase(&ld(1, &phone))),
            "field.value: is not valid UTF-8"
        );
        let ttl = ld(6, &ld(1, b"5"));
        assert_eq!(
            refusal(export(&[ld(1, &ttl), ld(2, b"dsar")].concat())),
            "field.ttl.seconds: has wire type 2; this field is sent with wire type 0"
        );
        assert_eq!(
            refusal(export(&ld(2, &[0xc3]))),
            "purpose: is not valid UTF-8"
        );
        let lines = field_with_street_lines(MAX_STREET_LINES_ON_THE_WIRE + 1);
        assert!(refusal(erase(&ld(1, &lines))).starts_with("field.address.street_lines: holds"));
        // A legal one, with a negative time to live (the handler refuses
        // it, naming the item): a ten-byte varint on the wire.
        let request = pb::TokenizeRequest {
            fields: vec![pb::Field {
                kind: pb::FieldKind::Phone as i32,
                value: "+1 202-555-0143".into(),
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: -1,
                }),
                ..Default::default()
            }],
            purpose: None,
        };
        assert!(tokenize(&request.encode_to_vec(), 10).is_ok());
        let request = pb::ExportValueRequest {
            field: request.fields.into_iter().next(),
            purpose: "dsar".into(),
        };
        assert!(export(&request.encode_to_vec()).is_ok());
    }

    #[test]
    fn grant_requests_count_packed_and_unpacked_kinds_and_bound_their_tokens() {
        let request = |bytes: &[u8]| <pb::RequestGrantRequest as DecodeBound>::check(bytes, 1000);
        let max = crate::domain::grant::MAX_GRANT_KINDS;
        // Packed (proto3's encoding of a repeated enum): each varint counts.
        let packed = |n: usize| ld(2, &vec![0x02; n]);
        assert!(request(&packed(max)).is_ok());
        assert_eq!(
            refusal(request(&packed(max + 1))),
            format!("kinds: holds {} items; at most {max} are allowed", max + 1)
        );
        // One by one, and a mix of both.
        let one = [0x10, 0x02];
        assert!(request(&repeat(&one, max)).is_ok());
        assert!(refusal(request(&repeat(&one, max + 1))).starts_with("kinds: holds 9 items"));
        assert!(
            refusal(request(&[packed(max), one.to_vec()].concat())).starts_with("kinds: holds 9")
        );
        // A packed run that ends inside a varint, and the wrong wire type.
        assert_eq!(
            refusal(request(&ld(2, &[0x80]))),
            "kinds[0]: is truncated: it ends inside a varint"
        );
        assert!(refusal(request([0x15, 0, 0, 0, 0].as_slice()))
            .starts_with("kinds[0]: has wire type 5"));
        // Tokens: at most MAX_GRANT_TOKENS.
        let tokens = repeat(&ld(7, b"fv1_a"), crate::domain::grant::MAX_GRANT_TOKENS + 1);
        assert!(refusal(request(&tokens)).starts_with("tokens: holds 1001 items"));
        // What prost makes of a legal request passes and decodes whole.
        let legal = pb::RequestGrantRequest {
            kinds: vec![2, 1, 4],
            valid_for: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            tokens: vec!["fv1_a".into(); 3],
            ..Default::default()
        };
        let bytes = legal.encode_to_vec();
        assert!(request(&bytes).is_ok());
        assert_eq!(pb::RequestGrantRequest::decode(&bytes[..]).unwrap(), legal);
    }

    #[test]
    fn a_decoded_item_holds_at_most_a_kib_beyond_its_wire_bytes() {
        // README, "Limits": the struct, its street lines' `String`s and, for
        // each of its strings (value, region, six address parts, the
        // street lines), an allocation rounded up by the
        // allocator (at most 16 bytes more than its wire bytes).
        let field = std::mem::size_of::<pb::Field>()
            + MAX_STREET_LINES * std::mem::size_of::<String>()
            + (8 + MAX_STREET_LINES) * 16;
        assert!(field <= 1024, "{field}");
        assert!(std::mem::size_of::<String>() + 16 <= 1024);
    }

    #[tokio::test]
    async fn the_batch_limit_is_the_wrapped_servers_and_the_config_default_elsewhere() {
        #[derive(Clone)]
        struct Echo;
        impl tower_service::Service<()> for Echo {
            type Response = usize;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<usize, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, (): ()) -> Self::Future {
                std::future::ready(Ok(max_batch_items()))
            }
        }
        /// Reads the limit only when polled, as tonic's generated services do.
        #[derive(Clone)]
        struct Lazy;
        impl tower_service::Service<()> for Lazy {
            type Response = usize;
            type Error = std::convert::Infallible;
            type Future =
                std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, Self::Error>>>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, (): ()) -> Self::Future {
                Box::pin(async {
                    tokio::task::yield_now().await;
                    Ok(max_batch_items())
                })
            }
        }
        use tower_service::Service;
        assert_eq!(BatchLimit::new(Echo, 7).call(()).await, Ok(7));
        assert_eq!(BatchLimit::new(Lazy, 9).call(()).await, Ok(9));
        assert_eq!(Lazy.call(()).await, Ok(DEFAULT_MAX_BATCH_ITEMS));
        assert_eq!(Echo.call(()).await, Ok(DEFAULT_MAX_BATCH_ITEMS));
    }

    proptest::proptest! {
        /// The walk is at least as strict as prost: whatever it lets through
        /// decodes.
        #[test]
        fn whatever_the_walk_accepts_prost_decodes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            flip in 0usize..64,
            mask in 1u8..=255,
        ) {
            let legal = pb::TokenizeRequest {
                fields: vec![pb::Field {
                    kind: 2,
                    value: "x".into(),
                    address: Some(pb::PostalAddress {
                        country: "US".into(),
                        street_lines: vec!["1 Example Way".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                purpose: Some("p".into()),
            }
            .encode_to_vec();
            let mut mutated = legal.clone();
            let i = flip % mutated.len();
            mutated[i] ^= mask;
            for candidate in [bytes, mutated] {
                if tokenize(&candidate, 1000).is_ok() {
                    proptest::prop_assert!(pb::TokenizeRequest::decode(candidate.as_slice()).is_ok());
                }
                if detokenize(&candidate, 1000).is_ok() {
                    proptest::prop_assert!(pb::DetokenizeRequest::decode(candidate.as_slice()).is_ok());
                }
            }
        }
    }
}
