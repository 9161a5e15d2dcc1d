//! The protobuf codec of `fieldvault.v1`: prost, with every request message
//! checked against its bounds *before* it is decoded.
//!
//! Why: tonic bounds a message's wire size, but decoding amplifies it. Two
//! bytes (`0a 00`) decode into one empty `Field` of a few hundred bytes, so
//! an 8.8 MB TokenizeRequest of empty fields became 4.4 million structs and
//! took the server from 97 MiB to 2.1 GB, before the batch-size check that
//! runs on the decoded request could refuse it. Here a walk over the encoded
//! bytes, which allocates nothing, counts every repeated field of a request
//! first and refuses the call with INVALID_ARGUMENT naming the field; what
//! prost then decodes holds at most `max_batch_items` items, each with at
//! most [`MAX_STREET_LINES`] street lines, so its memory is the message's
//! wire size plus a few hundred bytes an item.
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
    /// Refuses `bytes` (one encoded message) if decoding it would exceed a
    /// bound; `max_items` is the server's `max_batch_items`.
    fn check(bytes: &[u8], max_items: usize) -> Result<(), Status>;

    /// The status for an error prost found decoding this message.
    fn decode_error(error: prost::DecodeError) -> Status;
}

/// A request: walked against `schema`; prost's errors are the caller's.
macro_rules! request {
    ($message:ty, $schema:expr) => {
        impl DecodeBound for $message {
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
response!(pb::TokenizeResponse);
response!(pb::DetokenizeResponse);

// ---------------------------------------------------------------------------
// The schema: for each request message, the fields the walk checks. Fields
// not listed are skipped by wire type, as prost skips unknown fields; a
// test holds this against the descriptor of proto/fieldvault/v1/vault.proto
// so that every repeated field of a request has a bound.

/// What a field holds on the wire.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// An enum or integer (wire type 0).
    Varint,
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
            Count::AtMost(MAX_STREET_LINES),
        ),
        field(6, "postal_code", Shape::Str, Count::One),
        field(7, "recipient", Shape::Str, Count::One),
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
    ],
};

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
                    &format!("holds {n} items; at most {max_items} are allowed per call"),
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
            Shape::Str | Shape::Msg(_) => 2,
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
        use bytes::Buf;
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

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
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
        MAX_BATCH_ITEMS.scope(self.max_batch_items, self.inner.call(req))
    }
}
