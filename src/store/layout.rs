//! The sled layout and the byte encodings of everything the store keeps:
//! tree keys, records, wrapped keys and write-ahead-log frames.
//!
//! Layout (big-endian integers; encodings start with a format byte):
//! - `records`: record id → encoded [`SealedRecord`]. A record id is its
//!   sequence number (8) ‖ its epoch (8): ids come from the store's
//!   sequence, so new records are inserted in ascending key order (sled
//!   appends to its last leaf instead of splitting random ones);
//! - `blind_index`: index version (4) ‖ mac (32) ‖ record id (16) → empty,
//!   every random-mode record of a value;
//! - `deterministic`: index version (4) ‖ mac (32) → record id, the one
//!   deterministic record of a value (its only index entry: a value's
//!   records are its `blind_index` entries and this mapping);
//! - `keys`: purpose (1) ‖ version (4) → encoded [`WrappedKey`];
//! - `meta`: [`CEILING_KEY`] → u64, the sequence's durable ceiling (every
//!   sequence number below it may have been handed out, so none is handed
//!   out again); [`EPOCH_PREFIX`] ‖ epoch (8) → empty, every epoch that
//!   ever handed out ids; [`COUNTER_PREFIX`] ‖ name → a durable counter,
//!   [`FREEZE_PREFIX`] ‖ caller → a frozen caller, [`CANARY_PREFIX`] ‖
//!   record id (16) → a canary (abuse controls: written through the log
//!   as `WAL_META` entries, like job states);
//! - `expiry`: expires (u64 ms) ‖ record id (16) → empty, every record with
//!   a time to live, soonest first (what the sweeper reads).

use super::apply::{Deleted, Reindexed, Rewritten, Staged};
use super::{FailureCause, KeyUsage, StorageFailure, StoreError};
use crate::crypto::{
    BlindIndex, KeyPurpose, KeyVersion, RecordMeta, SealedRecord, WrappedKey, NONCE_LEN,
};
use crate::domain::{FieldKind, RecordId};
use std::path::{Path, PathBuf};

/// A record without lifecycle facts (stored before records carried them).
const RECORD_FORMAT_V1: u8 = 1;
/// A record with its lifecycle facts ([`RecordMeta`]).
const RECORD_FORMAT: u8 = 2;
/// The lifecycle facts' bytes in a record: created (8) ‖ expires (8, 0:
/// never) ‖ mode (1).
const RECORD_META_BYTES: usize = 17;
const KEY_FORMAT: u8 = 1;
/// Write-ahead log entry tags of development builds before this layout (a
/// record keyed by a random token id; a record id and a ceiling without an
/// epoch): refused on replay.
const WAL_OLD_TAGS: [u8; 3] = [1, 3, 4];
/// Write-ahead log entry tag: a new wrapped key.
const WAL_NEW_KEY: u8 = 2;
/// Write-ahead log entry tag: a new record with its index entries.
const WAL_NEW_RECORD: u8 = 5;
/// Write-ahead log entry tag: the sequence's ceiling was raised.
const WAL_CEILING: u8 = 6;
/// Write-ahead log entry tag: a record re-sealed under another data-key
/// version (a rewrap).
const WAL_REWRITE: u8 = 7;
/// Write-ahead log entry tag: a record's index entry moved to another
/// index-key version (an index rebuild).
const WAL_REINDEX: u8 = 8;
/// Write-ahead log entry tag: a `meta` entry set or removed (key
/// lifecycle facts, a background job's state).
const WAL_META: u8 = 9;
/// Write-ahead log entry tag: a wrapped key destroyed (a retired version).
const WAL_DROP_KEY: u8 = 10;
/// Write-ahead log entry tag: an existing wrapped key replaced (the same
/// key, wrapped under a new master key).
const WAL_REWRAPPED_KEY: u8 = 11;
/// Write-ahead log entry tag: a record deleted with its index and expiry
/// entries (a tombstone).
const WAL_DELETE: u8 = 12;

/// The `meta` key of the store's layout version, written with the first
/// ceiling raise, so before any record.
pub(super) const FORMAT_KEY: &[u8] = b"format";
/// This layout's version (records keyed by sequence number and epoch).
pub(super) const STORE_FORMAT: u8 = 1;

/// Why a store of an earlier development layout is refused.
pub(super) const OLD_LAYOUT: &str = "the store was made by a development build before this \
     layout (records keyed by token, or ids without an epoch), or its `meta` tree is lost; \
     this version cannot read it: start from a new data_dir (`fieldvault serve --dev --reset` \
     for the dev setup), or restore the store from a backup";

/// The `meta` key of the sequence's ceiling.
pub(super) const CEILING_KEY: &[u8] = b"sequence_ceiling";
/// The `meta` keys of known epochs start with this.
pub(super) const EPOCH_PREFIX: &[u8] = b"epoch/";

/// The `meta` key of the key-version counters (see [`encode_counts`]).
pub(super) const COUNTS_KEY: &[u8] = b"counts";
/// The `meta` keys of key lifecycle facts start with this: `key/` ‖
/// purpose (1) ‖ version (4) → created (u64 ms) ‖ retired (u64 ms, 0 while
/// live).
pub(super) const KEY_INFO_PREFIX: &[u8] = b"key/";
/// The `meta` keys of replaced master keys start with this: `master/` ‖
/// fingerprint (8) → replaced at (u64 ms).
pub(super) const MASTER_PREFIX: &[u8] = b"master/";
/// The `meta` key of the file the master key in force was read from by
/// the last rotation.
pub(super) const MASTER_FILE_KEY: &[u8] = b"master_file";
/// The `meta` keys of background jobs' states start with this.
pub(super) const JOB_PREFIX: &[u8] = b"job/";

/// The `meta` keys of durable counters start with this: `counter/` ‖
/// name → [`encode_counter`].
pub(super) const COUNTER_PREFIX: &[u8] = b"counter/";
/// The `meta` keys of frozen callers start with this: `freeze/` ‖ caller
/// → [`encode_freeze`]. Keys sort by caller (a `String` orders by its
/// bytes).
pub(super) const FREEZE_PREFIX: &[u8] = b"freeze/";
/// The `meta` keys of canaries start with this: `canary/` ‖ record id (16,
/// as [`record_key`], so canaries list in id order) → [`encode_canary`].
pub(super) const CANARY_PREFIX: &[u8] = b"canary/";

const COUNTER_FORMAT: u8 = 1;
const FREEZE_FORMAT: u8 = 1;
const CANARY_FORMAT: u8 = 1;

/// The `meta` key of a counter.
pub(super) fn counter_key(name: &str) -> Vec<u8> {
    [COUNTER_PREFIX, name.as_bytes()].concat()
}

/// The `meta` key of a caller's freeze.
pub(super) fn freeze_key(caller: &str) -> Vec<u8> {
    [FREEZE_PREFIX, caller.as_bytes()].concat()
}

/// The `meta` key of a canary.
pub(super) fn canary_key(id: RecordId) -> Vec<u8> {
    [CANARY_PREFIX, &record_key(id)[..]].concat()
}

/// A counter as stored: format (1) ‖ window start (u64 ms) ‖ count (8).
pub(super) fn encode_counter(window_start_ms: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(COUNTER_FORMAT);
    out.extend_from_slice(&window_start_ms.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out
}

/// `(window start, count)` of a stored counter.
pub(super) fn decode_counter(b: &[u8]) -> Result<(u64, u64), StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "counter",
        reason,
    };
    let mut b = b;
    if take_as(&mut b, 1, "counter")?[0] != COUNTER_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let window = u64_from(take_as(&mut b, 8, "counter")?)?;
    let count = u64_from(take_as(&mut b, 8, "counter")?)?;
    if !b.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok((window, count))
}

/// The counter name of a `counter/` key.
pub(super) fn counter_name(key: &[u8]) -> Result<String, StoreError> {
    name_after(key, COUNTER_PREFIX, "counter")
}

/// The caller of a `freeze/` key.
pub(super) fn freeze_caller(key: &[u8]) -> Result<String, StoreError> {
    name_after(key, FREEZE_PREFIX, "freeze")
}

fn name_after(key: &[u8], prefix: &[u8], what: &'static str) -> Result<String, StoreError> {
    key.strip_prefix(prefix)
        .and_then(|name| String::from_utf8(name.to_vec()).ok())
        .ok_or(StoreError::Corrupt {
            what,
            reason: "key is not UTF-8",
        })
}

/// A freeze as stored (the caller is its key): format (1) ‖ since (u64
/// ms) ‖ length (4) ‖ reason ‖ length (4) ‖ by.
pub(super) fn encode_freeze(f: &super::Freeze) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + f.reason.len() + f.by.len());
    out.push(FREEZE_FORMAT);
    out.extend_from_slice(&f.since_unix_ms.to_be_bytes());
    put_str(&mut out, &f.reason);
    put_str(&mut out, &f.by);
    out
}

/// Bytes [`encode_freeze`] makes.
pub(super) fn encoded_freeze_bytes(f: &super::Freeze) -> usize {
    1 + 8 + 4 + f.reason.len() + 4 + f.by.len()
}

pub(super) fn decode_freeze(caller: String, b: &[u8]) -> Result<super::Freeze, StoreError> {
    let mut b = b;
    if take_as(&mut b, 1, "freeze")?[0] != FREEZE_FORMAT {
        return Err(StoreError::Corrupt {
            what: "freeze",
            reason: "unknown format",
        });
    }
    let since_unix_ms = u64_from(take_as(&mut b, 8, "freeze")?)?;
    let reason = take_str(&mut b, "freeze")?;
    let by = take_str(&mut b, "freeze")?;
    if !b.is_empty() {
        return Err(StoreError::Corrupt {
            what: "freeze",
            reason: "trailing bytes",
        });
    }
    Ok(super::Freeze {
        caller,
        since_unix_ms,
        reason,
        by,
    })
}

/// A canary as stored (the id is its key): format (1) ‖ field kind (1) ‖
/// created (u64 ms) ‖ length (4) ‖ by.
pub(super) fn encode_canary(c: &super::Canary) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + c.by.len());
    out.push(CANARY_FORMAT);
    out.push(c.kind.code());
    out.extend_from_slice(&c.created_unix_ms.to_be_bytes());
    put_str(&mut out, &c.by);
    out
}

/// Bytes [`encode_canary`] makes.
pub(super) fn encoded_canary_bytes(c: &super::Canary) -> usize {
    1 + 1 + 8 + 4 + c.by.len()
}

/// The canary a `canary/` entry stores.
pub(super) fn decode_canary(key: &[u8], b: &[u8]) -> Result<super::Canary, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "canary",
        reason,
    };
    let id = key
        .strip_prefix(CANARY_PREFIX)
        .ok_or(corrupt("not a canary key"))
        .and_then(|id| record_id_from(id).map_err(|_| corrupt("key is not a record id")))?;
    let mut b = b;
    if take_as(&mut b, 1, "canary")?[0] != CANARY_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let kind = FieldKind::from_code(take_as(&mut b, 1, "canary")?[0])
        .ok_or(corrupt("unknown field kind"))?;
    let created_unix_ms = u64_from(take_as(&mut b, 8, "canary")?)?;
    let by = take_str(&mut b, "canary")?;
    if !b.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(super::Canary {
        id,
        kind,
        created_unix_ms,
        by,
    })
}

/// Bytes a `meta` entry adds to a frame: tag, key length, key, present
/// flag, and the value with its length.
pub(super) fn frame_meta_bytes(key_len: usize, value_len: Option<usize>) -> usize {
    1 + 4 + key_len + 1 + value_len.map_or(0, |v| 4 + v)
}

/// Length (4) ‖ UTF-8 bytes.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// [`take`] for a `meta` value: a short value is `what`, corrupt.
pub(super) fn take_as<'a>(
    b: &mut &'a [u8],
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], StoreError> {
    take(b, n).map_err(|_| StoreError::Corrupt {
        what,
        reason: "cut short",
    })
}

/// A length (4) and that many bytes of UTF-8.
pub(super) fn take_str(b: &mut &[u8], what: &'static str) -> Result<String, StoreError> {
    let len = take_as(b, 4, what)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    String::from_utf8(take_as(b, len, what)?.to_vec()).map_err(|_| StoreError::Corrupt {
        what,
        reason: "text is not UTF-8",
    })
}

/// The `meta` key of a background job's state.
pub(super) fn job_key(job: super::Job) -> Vec<u8> {
    [JOB_PREFIX, job.name().as_bytes()].concat()
}

/// The `meta` key of `epoch`.
pub(super) fn epoch_key(epoch: u64) -> Vec<u8> {
    let mut key = EPOCH_PREFIX.to_vec();
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

/// The write-ahead log, beside sled's own files.
pub(crate) const WAL_FILE: &str = "fieldvault.wal";

pub(super) fn data_file_path(dir: &Path) -> PathBuf {
    dir.join("db")
}

/// `BlindIndex` as a map key: version ‖ mac.
pub(super) fn index_prefix(index: &BlindIndex) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..4].copy_from_slice(&index.version.0.to_be_bytes());
    key[4..].copy_from_slice(&index.mac);
    key
}

pub(super) fn index_entry(index: &BlindIndex, id: RecordId) -> [u8; 52] {
    let mut key = [0u8; 52];
    key[..36].copy_from_slice(&index_prefix(index));
    key[36..].copy_from_slice(&record_key(id));
    key
}

/// A record id as a tree key: sequence number, then epoch, big-endian, so
/// keys sort by sequence number.
pub(super) fn record_key(id: RecordId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.seq.to_be_bytes());
    key[8..].copy_from_slice(&id.epoch.to_be_bytes());
    key
}

pub(super) fn key_id(purpose: KeyPurpose, version: KeyVersion) -> [u8; 5] {
    let mut id = [0u8; 5];
    id[0] = purpose.code();
    id[1..].copy_from_slice(&version.0.to_be_bytes());
    id
}

pub(super) fn record_id_from(bytes: &[u8]) -> Result<RecordId, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "record reference",
        reason: "not a record id",
    };
    let array: [u8; 16] = bytes.try_into().map_err(|_| corrupt())?;
    let (seq, epoch) = array.split_at(8);
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?);
    let epoch = u64::from_be_bytes(epoch.try_into().map_err(|_| corrupt())?);
    if epoch >= RecordId::EPOCH_LIMIT {
        return Err(corrupt());
    }
    Ok(RecordId::new(seq, epoch))
}

/// A big-endian u64 as stored in `meta` and the log (a ceiling, an
/// epoch).
pub(super) fn u64_from(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "sequence ceiling or epoch",
        reason: "not 8 bytes",
    })?;
    Ok(u64::from_be_bytes(array))
}

/// A sled error as a typed storage failure.
pub(super) fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(sled_failure("sled", &e))
}

/// A sled error while `doing` something, typed by its cause.
pub(super) fn sled_failure(doing: &str, e: &sled::Error) -> StorageFailure {
    match e {
        sled::Error::Io(io) => StorageFailure::io(doing, io),
        sled::Error::Corruption { .. } => {
            StorageFailure::new(FailureCause::Corrupt, format!("{doing}: {e}"))
        }
        _ => StorageFailure::internal(format!("{doing}: {e}")),
    }
}

/// A raised sequence ceiling, with the epoch of the process that raised
/// it (logged before that process hands out any id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ceiling {
    pub(super) ceiling: u64,
    pub(super) epoch: u64,
}

/// One group as logged: raised sequence ceilings, new wrapped keys, and
/// new records with their index entries, and the rarer [`Changes`].
/// Replaying it applies all of them (idempotently; a ceiling only ever
/// rises).
#[derive(Debug, Default)]
pub(super) struct Frame {
    pub(super) ceilings: Vec<Ceiling>,
    pub(super) keys: Vec<WrappedKey>,
    pub(super) records: Vec<Staged>,
    pub(super) changes: Changes,
}

/// A `meta` entry set (`Some`) or removed (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MetaOp {
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

/// What key lifecycle work writes: records re-sealed or re-indexed, keys
/// re-wrapped or destroyed, `meta` entries (key facts, job states).
#[derive(Clone, Debug, Default)]
pub(super) struct Changes {
    pub(super) rewrites: Vec<Rewritten>,
    pub(super) reindexed: Vec<Reindexed>,
    pub(super) rewrapped_keys: Vec<WrappedKey>,
    pub(super) dropped_keys: Vec<(KeyPurpose, KeyVersion)>,
    pub(super) meta: Vec<MetaOp>,
    /// Records deleted (after the group's rewrites and moves).
    pub(super) deleted: Vec<Deleted>,
}

impl Changes {
    pub(super) fn is_empty(&self) -> bool {
        self.deleted.is_empty()
            && self.rewrites.is_empty()
            && self.reindexed.is_empty()
            && self.rewrapped_keys.is_empty()
            && self.dropped_keys.is_empty()
            && self.meta.is_empty()
    }
}

/// Entries: `WAL_CEILING` ‖ ceiling (8) ‖ epoch (8), `WAL_NEW_KEY` ‖
/// length (4) ‖ encoded key, or `WAL_NEW_RECORD` ‖ record id (16) ‖ index
/// version (4) ‖ mac (32) ‖ deterministic (1) ‖ length (4) ‖ encoded
/// record; then the [`Changes`]: `WAL_REWRITE` ‖ record id (16) ‖ former
/// data-key version (4) ‖ length (4) ‖ encoded record, `WAL_REINDEX` ‖
/// record id (16) ‖ former index (36) ‖ new index (36) ‖ deterministic (1),
/// `WAL_REWRAPPED_KEY` ‖ length (4) ‖ encoded key, `WAL_DROP_KEY` ‖ key id
/// (5), `WAL_META` ‖ length (4) ‖ key ‖ present (1) [‖ length (4) ‖ value],
/// `WAL_DELETE` ‖ record id (16) ‖ data-key version (4) ‖ expires (8, 0:
/// none) ‖ entries (1) ‖ per entry: index (36) ‖ deterministic (1).
pub(super) fn encode_frame(
    ceiling: Option<Ceiling>,
    keys: &[WrappedKey],
    records: &[Staged],
    changes: &Changes,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + keys.len() * 80 + records.len() * 120);
    if let Some(c) = ceiling {
        out.push(WAL_CEILING);
        out.extend_from_slice(&c.ceiling.to_be_bytes());
        out.extend_from_slice(&c.epoch.to_be_bytes());
    }
    for k in keys {
        put_sized(&mut out, WAL_NEW_KEY, &encode_key(k));
    }
    for s in records {
        out.push(WAL_NEW_RECORD);
        out.extend_from_slice(&record_key(s.id));
        out.extend_from_slice(&index_prefix(&s.index));
        out.push(u8::from(s.deterministic));
        out.extend_from_slice(&(s.record.len() as u32).to_be_bytes());
        out.extend_from_slice(&s.record);
    }
    for r in &changes.rewrites {
        out.push(WAL_REWRITE);
        out.extend_from_slice(&record_key(r.id));
        out.extend_from_slice(&r.from.0.to_be_bytes());
        out.extend_from_slice(&(r.record.len() as u32).to_be_bytes());
        out.extend_from_slice(&r.record);
    }
    for r in &changes.reindexed {
        out.push(WAL_REINDEX);
        out.extend_from_slice(&record_key(r.id));
        out.extend_from_slice(&index_prefix(&r.old));
        out.extend_from_slice(&index_prefix(&r.new));
        out.push(u8::from(r.deterministic));
    }
    for k in &changes.rewrapped_keys {
        put_sized(&mut out, WAL_REWRAPPED_KEY, &encode_key(k));
    }
    for (purpose, version) in &changes.dropped_keys {
        out.push(WAL_DROP_KEY);
        out.extend_from_slice(&key_id(*purpose, *version));
    }
    for d in &changes.deleted {
        out.push(WAL_DELETE);
        out.extend_from_slice(&record_key(d.id));
        out.extend_from_slice(&d.version.0.to_be_bytes());
        out.extend_from_slice(&d.expires_unix_ms.unwrap_or(0).to_be_bytes());
        // At most a few entries (one per record; a damaged store may hold
        // more): capped by the commit thread.
        out.push(d.entries.len() as u8);
        for (index, deterministic) in &d.entries {
            out.extend_from_slice(&index_prefix(index));
            out.push(u8::from(*deterministic));
        }
    }
    for m in &changes.meta {
        put_sized(&mut out, WAL_META, &m.key);
        match &m.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

/// `tag` ‖ length (4) ‖ `bytes`.
fn put_sized(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Bytes a record adds to a frame: its entry header (tag, record id,
/// index, deterministic flag, length) and its encoding.
pub(super) fn frame_record_bytes(r: &SealedRecord) -> usize {
    1 + 16 + 36 + 1 + 4 + encoded_record_bytes(r)
}

/// Bytes a rewritten record adds to a frame: its entry header (tag,
/// record id, former version, length) and its encoding.
pub(super) fn frame_rewrite_bytes(r: &SealedRecord) -> usize {
    1 + 16 + 4 + 4 + encoded_record_bytes(r)
}

/// The length of [`encode_record`]'s output.
pub(super) fn encoded_record_bytes(r: &SealedRecord) -> usize {
    let meta = if r.meta.is_some() {
        RECORD_META_BYTES
    } else {
        0
    };
    2 + 4 + meta + NONCE_LEN + r.ciphertext.len()
}

/// Bytes a deletion adds to a frame.
pub(super) fn frame_delete_bytes(entries: usize) -> usize {
    1 + 16 + 4 + 8 + 1 + entries * 37
}

/// The most index entries one deletion logs (a record has one; a damaged
/// store may hold a few).
pub(super) const MAX_DELETED_ENTRIES: usize = u8::MAX as usize;

/// An expiry-tree key: expires (8) ‖ record id (16), so keys sort by
/// expiry.
pub(super) fn expiry_key(expires_unix_ms: u64, id: RecordId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&expires_unix_ms.to_be_bytes());
    key[8..].copy_from_slice(&record_key(id));
    key
}

/// The expiry and record id of an expiry-tree key.
pub(super) fn expiry_from(key: &[u8]) -> Result<(u64, RecordId), StoreError> {
    if key.len() != 24 {
        return Err(StoreError::Corrupt {
            what: "expiry entry",
            reason: "not 24 bytes",
        });
    }
    Ok((u64_from(&key[..8])?, record_id_from(&key[8..])?))
}

/// The expiry of an encoded record (`None`: never, or it does not decode:
/// `decode_record` refuses it anyway).
pub(super) fn encoded_record_expiry(b: &[u8]) -> Option<u64> {
    decode_record(b).ok().and_then(|r| r.expires_unix_ms())
}

/// Bytes a ceiling adds to a frame.
pub(super) const FRAME_CEILING_BYTES: usize = 1 + 8 + 8;

/// Bytes a wrapped key adds to a frame.
pub(super) fn frame_key_bytes(k: &WrappedKey) -> usize {
    1 + 4 + (2 + 4 + NONCE_LEN + k.ciphertext.len())
}

/// Splits `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if b.len() < n {
        return Err(StoreError::Corrupt {
            what: "write-ahead log entry",
            reason: "cut short",
        });
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// A length (4 bytes) and that many bytes.
fn take_sized<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    let len = take(b, 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    take(b, len)
}

/// A blind index as logged and keyed: version (4) ‖ mac (32).
pub(super) fn index_from(prefix: &[u8]) -> BlindIndex {
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&prefix[4..36]);
    BlindIndex {
        version: KeyVersion(u32::from_be_bytes([
            prefix[0], prefix[1], prefix[2], prefix[3],
        ])),
        mac,
    }
}

/// The data-key version of an encoded record (0 if it is too short to
/// tell: `decode_record` refuses it anyway).
pub(super) fn encoded_record_version(b: &[u8]) -> KeyVersion {
    match b.get(2..6) {
        Some(v) => KeyVersion(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        None => KeyVersion(0),
    }
}

pub(super) fn decode_frame(mut b: &[u8]) -> Result<Frame, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "write-ahead log entry",
        reason,
    };
    let flag = |b: u8| match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(corrupt("bad flag")),
    };
    let mut out = Frame::default();
    while !b.is_empty() {
        match take(&mut b, 1)?[0] {
            WAL_NEW_RECORD => {
                let id = record_id_from(take(&mut b, 16)?)?;
                let index = index_from(take(&mut b, 36)?);
                let deterministic = flag(take(&mut b, 1)?[0])?;
                let record = take_sized(&mut b)?.to_vec();
                decode_record(&record)?;
                out.records.push(Staged {
                    id,
                    index,
                    deterministic,
                    record,
                });
            }
            WAL_NEW_KEY => out.keys.push(decode_key(take_sized(&mut b)?)?),
            WAL_CEILING => {
                let ceiling = u64_from(take(&mut b, 8)?)?;
                let epoch = u64_from(take(&mut b, 8)?)?;
                if epoch >= RecordId::EPOCH_LIMIT {
                    return Err(corrupt("epoch out of range"));
                }
                out.ceilings.push(Ceiling { ceiling, epoch });
            }
            WAL_REWRITE => {
                let id = record_id_from(take(&mut b, 16)?)?;
                let from = KeyVersion(u32_from(take(&mut b, 4)?));
                let record = take_sized(&mut b)?.to_vec();
                let to = decode_record(&record)?.key_version;
                out.changes.rewrites.push(Rewritten {
                    id,
                    from,
                    to,
                    record,
                });
            }
            WAL_REINDEX => {
                let id = record_id_from(take(&mut b, 16)?)?;
                let old = index_from(take(&mut b, 36)?);
                let new = index_from(take(&mut b, 36)?);
                let deterministic = flag(take(&mut b, 1)?[0])?;
                out.changes.reindexed.push(Reindexed {
                    id,
                    old,
                    new,
                    deterministic,
                });
            }
            WAL_REWRAPPED_KEY => out
                .changes
                .rewrapped_keys
                .push(decode_key(take_sized(&mut b)?)?),
            WAL_DROP_KEY => {
                let id = take(&mut b, 5)?;
                let purpose = KeyPurpose::from_code(id[0]).ok_or(corrupt("unknown key purpose"))?;
                out.changes
                    .dropped_keys
                    .push((purpose, KeyVersion(u32_from(&id[1..5]))));
            }
            WAL_DELETE => {
                let id = record_id_from(take(&mut b, 16)?)?;
                let version = KeyVersion(u32_from(take(&mut b, 4)?));
                let expires = u64_from(take(&mut b, 8)?)?;
                let n = take(&mut b, 1)?[0];
                let mut entries = Vec::with_capacity(n.into());
                for _ in 0..n {
                    let index = index_from(take(&mut b, 36)?);
                    entries.push((index, flag(take(&mut b, 1)?[0])?));
                }
                out.changes.deleted.push(Deleted {
                    id,
                    version,
                    expires_unix_ms: Some(expires).filter(|e| *e != 0),
                    entries,
                });
            }
            WAL_META => {
                let key = take_sized(&mut b)?.to_vec();
                let value = if flag(take(&mut b, 1)?[0])? {
                    Some(take_sized(&mut b)?.to_vec())
                } else {
                    None
                };
                out.changes.meta.push(MetaOp { key, value });
            }
            tag if WAL_OLD_TAGS.contains(&tag) => {
                return Err(StoreError::Damaged(OLD_LAYOUT.to_owned()))
            }
            _ => return Err(corrupt("unknown entry type")),
        }
    }
    Ok(out)
}

/// The key-version counters as kept in `meta`: format (1) ‖ the log
/// generation they include (8) ‖ count (4) ‖ per version: purpose (1) ‖
/// version (4) ‖ records (8). "Include" means every frame of that
/// generation is counted: a replay of its frames adds nothing.
pub(super) fn encode_counts(generation: u64, usage: &KeyUsage) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + usage.len() * 13);
    out.push(COUNTS_FORMAT);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&(usage.len() as u32).to_be_bytes());
    for ((purpose, version), n) in usage {
        out.push(purpose.code());
        out.extend_from_slice(&version.0.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

pub(super) fn decode_counts(mut b: &[u8]) -> Result<(u64, KeyUsage), StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "key-version counters",
        reason,
    };
    if take(&mut b, 1)?[0] != COUNTS_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let generation = u64_from(take(&mut b, 8)?)?;
    let n = u32_from(take(&mut b, 4)?);
    let mut usage = KeyUsage::new();
    for _ in 0..n {
        let purpose =
            KeyPurpose::from_code(take(&mut b, 1)?[0]).ok_or(corrupt("unknown purpose"))?;
        let version = KeyVersion(u32_from(take(&mut b, 4)?));
        usage.insert((purpose, version), u64_from(take(&mut b, 8)?)?);
    }
    if !b.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok((generation, usage))
}

const COUNTS_FORMAT: u8 = 1;

/// The `meta` key of a key version's lifecycle facts.
pub(super) fn key_info_key(purpose: KeyPurpose, version: KeyVersion) -> Vec<u8> {
    let mut key = KEY_INFO_PREFIX.to_vec();
    key.extend_from_slice(&key_id(purpose, version));
    key
}

/// created (8) ‖ retired (8, 0 while live).
pub(super) fn encode_key_info(created_unix_ms: u64, retired_unix_ms: Option<u64>) -> Vec<u8> {
    let mut out = created_unix_ms.to_be_bytes().to_vec();
    out.extend_from_slice(&retired_unix_ms.unwrap_or(0).to_be_bytes());
    out
}

pub(super) fn decode_key_info(b: &[u8]) -> Result<(u64, Option<u64>), StoreError> {
    if b.len() != 16 {
        return Err(StoreError::Corrupt {
            what: "key facts",
            reason: "not 16 bytes",
        });
    }
    let retired = u64_from(&b[8..])?;
    Ok((u64_from(&b[..8])?, Some(retired).filter(|r| *r != 0)))
}

fn u32_from(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// format (1) ‖ kind (1) ‖ data-key version (4) ‖ [format 2: created (8)
/// ‖ expires (8, 0: never) ‖ mode (1: 1 deterministic)] ‖ nonce ‖
/// ciphertext.
pub(super) fn encode_record(r: &SealedRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_record_bytes(r));
    out.push(match r.meta {
        Some(_) => RECORD_FORMAT,
        None => RECORD_FORMAT_V1,
    });
    out.push(r.kind.code());
    out.extend_from_slice(&r.key_version.0.to_be_bytes());
    if let Some(m) = &r.meta {
        out.extend_from_slice(&m.created_unix_ms.to_be_bytes());
        out.extend_from_slice(&m.expires_unix_ms.unwrap_or(0).to_be_bytes());
        out.push(u8::from(m.deterministic));
    }
    out.extend_from_slice(&r.nonce);
    out.extend_from_slice(&r.ciphertext);
    out
}

pub(super) fn decode_record(b: &[u8]) -> Result<SealedRecord, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "record",
        reason,
    };
    let meta_len = match b.first() {
        Some(&RECORD_FORMAT) => RECORD_META_BYTES,
        Some(&RECORD_FORMAT_V1) => 0,
        Some(_) => return Err(corrupt("unknown format")),
        None => return Err(corrupt("too short")),
    };
    let at = 6 + meta_len;
    if b.len() < at + NONCE_LEN + 16 {
        return Err(corrupt("too short"));
    }
    let kind = FieldKind::from_code(b[1]).ok_or(corrupt("unknown field kind"))?;
    let version = u32_from(&b[2..6]);
    let meta = if meta_len == 0 {
        None
    } else {
        let expires = u64_from(&b[14..22])?;
        Some(RecordMeta {
            created_unix_ms: u64_from(&b[6..14])?,
            expires_unix_ms: Some(expires).filter(|e| *e != 0),
            deterministic: match b[22] {
                0 => false,
                1 => true,
                _ => return Err(corrupt("unknown mode")),
            },
        })
    };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[at..at + NONCE_LEN]);
    Ok(SealedRecord {
        kind,
        key_version: KeyVersion(version),
        nonce,
        ciphertext: b[at + NONCE_LEN..].to_vec(),
        meta,
    })
}

pub(super) fn encode_key(k: &WrappedKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 4 + NONCE_LEN + k.ciphertext.len());
    out.push(KEY_FORMAT);
    out.push(k.purpose.code());
    out.extend_from_slice(&k.version.0.to_be_bytes());
    out.extend_from_slice(&k.nonce);
    out.extend_from_slice(&k.ciphertext);
    out
}

pub(super) fn decode_key(b: &[u8]) -> Result<WrappedKey, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "wrapped key",
        reason,
    };
    if b.len() < 2 + 4 + NONCE_LEN + 16 {
        return Err(corrupt("too short"));
    }
    if b[0] != KEY_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let purpose = KeyPurpose::from_code(b[1]).ok_or(corrupt("unknown key purpose"))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[6..6 + NONCE_LEN]);
    Ok(WrappedKey {
        purpose,
        version: KeyVersion(u32::from_be_bytes([b[2], b[3], b[4], b[5]])),
        nonce,
        ciphertext: b[6 + NONCE_LEN..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{index, record};

    fn ok<T>(r: Result<T, StoreError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_group_cost_of_records_and_keys_is_exactly_their_bytes_in_the_frame() {
        let records: Vec<SealedRecord> = [10, 4000, 0]
            .into_iter()
            .map(|n| SealedRecord {
                ciphertext: vec![3; n],
                ..record(FieldKind::Address)
            })
            .collect();
        let staged: Vec<Staged> = records
            .iter()
            .zip(0..)
            .map(|(r, n)| Staged {
                id: RecordId::new(n, 3),
                index: index(2),
                deterministic: false,
                record: encode_record(r),
            })
            .collect();
        let key = WrappedKey {
            purpose: KeyPurpose::Index,
            version: KeyVersion(3),
            nonce: [5; NONCE_LEN],
            ciphertext: vec![6; 48],
        };
        let rewrites: Vec<Rewritten> = records
            .iter()
            .zip(0..)
            .map(|(r, n)| Rewritten {
                id: RecordId::new(n, 3),
                from: KeyVersion(1),
                to: r.key_version,
                record: encode_record(r),
            })
            .collect();
        let frame = encode_frame(
            Some(Ceiling {
                ceiling: 9,
                epoch: 3,
            }),
            std::slice::from_ref(&key),
            &staged,
            &Changes {
                rewrites,
                ..Changes::default()
            },
        );
        let cost: usize = records.iter().map(frame_record_bytes).sum::<usize>()
            + records.iter().map(frame_rewrite_bytes).sum::<usize>()
            + frame_key_bytes(&key)
            + FRAME_CEILING_BYTES;
        assert_eq!(frame.len(), cost);
    }

    #[test]
    fn a_logged_frame_round_trips_and_damage_is_reported() {
        let id = RecordId::new(77, 5);
        let staged = Staged {
            id,
            index: index(4),
            deterministic: true,
            record: encode_record(&record(FieldKind::Address)),
        };
        let key = WrappedKey {
            purpose: KeyPurpose::Index,
            version: KeyVersion(3),
            nonce: [5; NONCE_LEN],
            ciphertext: vec![6; 48],
        };
        let ceiling = Ceiling {
            ceiling: 1 << 16,
            epoch: 5,
        };
        let frame = encode_frame(
            Some(ceiling),
            std::slice::from_ref(&key),
            &[staged],
            &Changes::default(),
        );
        let back = ok(decode_frame(&frame));
        assert_eq!(back.records.len(), 1);
        assert_eq!(
            (
                back.records[0].id,
                back.records[0].index,
                back.records[0].deterministic
            ),
            (id, index(4), true)
        );
        assert_eq!(back.ceilings, vec![ceiling]);
        assert_eq!(back.keys, vec![key]);
        assert!(decode_frame(&frame[..frame.len() - 1]).is_err());
        // Tag 9 is a `meta` entry now: an unknown tag is one no entry has.
        let mut bad = frame.clone();
        bad[0] = 99;
        assert!(matches!(
            decode_frame(&bad),
            Err(StoreError::Corrupt {
                reason: "unknown entry type",
                ..
            })
        ));
    }

    /// One of each key-lifecycle entry: a rewrite, a random and a
    /// deterministic index move, a re-wrapped key, a destroyed key, a
    /// `meta` entry set and one removed.
    fn lifecycle_changes() -> Changes {
        let sealed = SealedRecord {
            key_version: KeyVersion(8),
            ..record(FieldKind::Phone)
        };
        Changes {
            rewrites: vec![Rewritten {
                id: RecordId::new(12, 5),
                from: KeyVersion(7),
                to: KeyVersion(8),
                record: encode_record(&sealed),
            }],
            reindexed: vec![
                Reindexed {
                    id: RecordId::new(13, 5),
                    old: index(3),
                    new: BlindIndex {
                        version: KeyVersion(2),
                        mac: [4; 32],
                    },
                    deterministic: false,
                },
                Reindexed {
                    id: RecordId::new(14, 5),
                    old: index(5),
                    new: BlindIndex {
                        version: KeyVersion(2),
                        mac: [6; 32],
                    },
                    deterministic: true,
                },
            ],
            rewrapped_keys: vec![WrappedKey {
                purpose: KeyPurpose::Token,
                version: KeyVersion(1),
                nonce: [7; NONCE_LEN],
                ciphertext: vec![8; 48],
            }],
            dropped_keys: vec![(KeyPurpose::Data, KeyVersion(7))],
            meta: vec![
                MetaOp {
                    key: b"job/rewrap".to_vec(),
                    value: Some(vec![1, 2, 3]),
                },
                MetaOp {
                    key: b"job/index_rebuild".to_vec(),
                    value: None,
                },
            ],
            deleted: vec![
                Deleted {
                    id: RecordId::new(16, 5),
                    version: KeyVersion(8),
                    expires_unix_ms: Some(1_800_000_000_000),
                    entries: vec![(index(10), true)],
                },
                Deleted {
                    id: RecordId::new(17, 5),
                    version: KeyVersion(7),
                    expires_unix_ms: None,
                    entries: vec![
                        (index(11), false),
                        (
                            BlindIndex {
                                version: KeyVersion(2),
                                mac: [12; 32],
                            },
                            false,
                        ),
                    ],
                },
                Deleted {
                    id: RecordId::new(18, 5),
                    version: KeyVersion(7),
                    expires_unix_ms: None,
                    entries: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn every_key_lifecycle_entry_round_trips_through_a_logged_frame() {
        let changes = lifecycle_changes();
        let frame = encode_frame(None, &[], &[], &changes);
        let back = ok(decode_frame(&frame)).changes;
        let rewrites: Vec<_> = back
            .rewrites
            .iter()
            .map(|r| (r.id, r.from, r.to, r.record.clone()))
            .collect();
        assert_eq!(
            rewrites,
            vec![(
                RecordId::new(12, 5),
                KeyVersion(7),
                KeyVersion(8),
                changes.rewrites[0].record.clone()
            )]
        );
        let moves = |c: &Changes| -> Vec<_> {
            c.reindexed
                .iter()
                .map(|r| (r.id, r.old, r.new, r.deterministic))
                .collect()
        };
        assert_eq!(moves(&back), moves(&changes));
        assert_eq!(back.rewrapped_keys, changes.rewrapped_keys);
        assert_eq!(back.dropped_keys, changes.dropped_keys);
        assert_eq!(back.meta, changes.meta);
        assert_eq!(back.deleted, changes.deleted);
        // Beside records, keys and a ceiling, in the same frame.
        let staged = Staged {
            id: RecordId::new(15, 5),
            index: index(9),
            deterministic: false,
            record: encode_record(&record(FieldKind::Email)),
        };
        let ceiling = Ceiling {
            ceiling: 64,
            epoch: 5,
        };
        let mixed = ok(decode_frame(&encode_frame(
            Some(ceiling),
            &[],
            &[staged],
            &changes,
        )));
        assert_eq!(mixed.ceilings, vec![ceiling]);
        assert_eq!(mixed.records.len(), 1);
        assert_eq!(moves(&mixed.changes), moves(&changes));
        assert_eq!(mixed.changes.meta, changes.meta);
    }

    #[test]
    fn a_cut_short_or_damaged_key_lifecycle_entry_is_reported_corrupt() {
        let all = lifecycle_changes();
        let one_each = [
            Changes {
                rewrites: all.rewrites.clone(),
                ..Changes::default()
            },
            Changes {
                reindexed: all.reindexed[1..].to_vec(),
                ..Changes::default()
            },
            Changes {
                rewrapped_keys: all.rewrapped_keys.clone(),
                ..Changes::default()
            },
            Changes {
                dropped_keys: all.dropped_keys.clone(),
                ..Changes::default()
            },
            Changes {
                meta: all.meta[..1].to_vec(),
                ..Changes::default()
            },
            Changes {
                meta: all.meta[1..].to_vec(),
                ..Changes::default()
            },
        ];
        for changes in &one_each {
            let frame = encode_frame(None, &[], &[], changes);
            assert!(decode_frame(&frame).is_ok());
            for cut in 1..frame.len() {
                assert!(
                    matches!(decode_frame(&frame[..cut]), Err(StoreError::Corrupt { .. })),
                    "tag {} cut at {cut} of {}",
                    frame[0],
                    frame.len()
                );
            }
        }
        // A move's deterministic flag that is neither 0 nor 1.
        let mut frame = encode_frame(None, &[], &[], &one_each[1]);
        let last = frame.len() - 1;
        frame[last] = 2;
        assert!(matches!(
            decode_frame(&frame),
            Err(StoreError::Corrupt {
                reason: "bad flag",
                ..
            })
        ));
        // A destroyed key of an unknown purpose.
        let mut frame = encode_frame(None, &[], &[], &one_each[3]);
        frame[1] = 99;
        assert!(matches!(
            decode_frame(&frame),
            Err(StoreError::Corrupt {
                reason: "unknown key purpose",
                ..
            })
        ));
        // A rewrite whose record does not decode.
        let mut frame = encode_frame(None, &[], &[], &one_each[0]);
        frame[1 + 16 + 4 + 4] = 9;
        assert!(matches!(
            decode_frame(&frame),
            Err(StoreError::Corrupt { what: "record", .. })
        ));
    }

    #[test]
    fn the_key_version_counters_round_trip_and_damage_is_reported() {
        let mut usage = KeyUsage::new();
        usage.insert((KeyPurpose::Data, KeyVersion(1)), 3);
        usage.insert((KeyPurpose::Data, KeyVersion(2)), u64::MAX);
        usage.insert((KeyPurpose::Index, KeyVersion(1)), 0);
        let bytes = encode_counts(42, &usage);
        assert_eq!(ok(decode_counts(&bytes)), (42, usage));
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode_counts(&bytes[..cut]),
                    Err(StoreError::Corrupt { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_counts(&longer).is_err(), "trailing bytes");
        let mut bad = bytes;
        bad[0] = 2;
        assert!(decode_counts(&bad).is_err(), "unknown format");
    }

    #[test]
    fn counters_freezes_and_canaries_round_trip_and_damage_is_reported_corrupt() {
        use crate::store::{Canary, Freeze};
        let counter = encode_counter(60_000, u64::MAX);
        assert_eq!(ok(decode_counter(&counter)), (60_000, u64::MAX));
        assert_eq!(
            ok(counter_name(&counter_key("reveal/support/callback"))),
            "reveal/support/callback"
        );
        let freeze = Freeze {
            caller: "spiffe://example.org/support".into(),
            since_unix_ms: 1_700_000_000_000,
            reason: "quota hit 3 times in 10 minutes".into(),
            by: "vault".into(),
        };
        let frozen = encode_freeze(&freeze);
        assert_eq!(frozen.len(), encoded_freeze_bytes(&freeze));
        let caller = ok(freeze_caller(&freeze_key(&freeze.caller)));
        assert_eq!(ok(decode_freeze(caller.clone(), &frozen)), freeze);
        let canary = Canary {
            id: RecordId::new(77, 5),
            kind: FieldKind::Email,
            created_unix_ms: 9,
            by: "admin".into(),
        };
        let key = canary_key(canary.id);
        let bytes = encode_canary(&canary);
        assert_eq!(bytes.len(), encoded_canary_bytes(&canary));
        assert_eq!(ok(decode_canary(&key, &bytes)), canary);
        // Canary keys sort as record ids do.
        assert!(canary_key(RecordId::new(2, 9)) < canary_key(RecordId::new(256, 1)));
        let corrupt = |r: Result<(), StoreError>, what: &str| {
            assert!(
                matches!(&r, Err(StoreError::Corrupt { what: w, .. }) if *w == what),
                "{what}: {r:?}"
            );
        };
        for (bytes, what) in [
            (&counter, "counter"),
            (&frozen, "freeze"),
            (&bytes, "canary"),
        ] {
            let decode = |b: &[u8]| match what {
                "counter" => decode_counter(b).map(drop),
                "freeze" => decode_freeze(caller.clone(), b).map(drop),
                _ => decode_canary(&key, b).map(drop),
            };
            for cut in 0..bytes.len() {
                corrupt(decode(&bytes[..cut]), what);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            corrupt(decode(&longer), what);
            let mut format = bytes.clone();
            format[0] = 2;
            corrupt(decode(&format), what);
        }
        let mut kind = bytes.clone();
        kind[1] = 99;
        corrupt(decode_canary(&key, &kind).map(drop), "canary");
        corrupt(decode_canary(b"canary/short", &bytes).map(drop), "canary");
        let mut not_utf8 = frozen.clone();
        not_utf8[1 + 8 + 4] = 0xff;
        corrupt(decode_freeze(caller, &not_utf8).map(drop), "freeze");
        corrupt(freeze_caller(b"freeze/\xff").map(drop), "freeze");
    }

    #[test]
    fn key_facts_round_trip_with_zero_meaning_live() {
        let live = encode_key_info(1_700_000_000_000, None);
        assert_eq!(ok(decode_key_info(&live)), (1_700_000_000_000, None));
        let retired = encode_key_info(5, Some(9));
        assert_eq!(ok(decode_key_info(&retired)), (5, Some(9)));
        assert!(decode_key_info(&retired[..15]).is_err());
    }

    #[test]
    fn a_log_entry_of_an_earlier_development_layout_says_what_to_do() {
        for tag in WAL_OLD_TAGS {
            let got = decode_frame(&[tag, 0, 0, 0]).err().map(|e| e.to_string());
            assert!(
                got.as_deref()
                    .is_some_and(|e| e.contains("before this layout") && e.contains("--reset")),
                "{got:?}"
            );
        }
    }

    #[test]
    fn truncated_or_unknown_bytes_are_reported_corrupt() {
        assert!(decode_record(&[1, 1, 0]).is_err());
        let mut bytes = encode_record(&record(FieldKind::Phone));
        bytes[1] = 99;
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
        bytes[0] = 2;
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
