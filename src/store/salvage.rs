//! `fieldvault store salvage`: what an operator runs when the server refuses
//! to start because the write-ahead log is damaged (and there is no backup
//! to restore, or the backup is older than the log).
//!
//! It keeps every frame of the log's generation that verifies, reports what
//! it drops (byte ranges, and the frame sequence numbers that are missing),
//! copies the original log beside it (`fieldvault.wal.corrupt-<unix time>`),
//! and puts the salvaged log in its place through a synced temporary file,
//! a rename and a directory `fsync`, so that at every moment
//! `fieldvault.wal` is either the original or the salvaged log. It runs on
//! a stopped server only: it holds sled's lock on the store while it works.
//! A log that verifies, or merely ends in an interrupted write (which the
//! server cuts at start), is left alone.

use super::file::{read_file, sync_dir};
use super::integrity::PartialEntries;
use super::layout::{data_file_path, WAL_FILE};
use super::sled_store::{SledConfig, SledStore};
use super::wal::{
    encode_frame, frame_at, header, is_v1, next_frame, scan_v1, FrameAt, HEADER_LEN, MAGIC,
};
use super::StoreError;
use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::RangeInclusive;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no store there (is this the store directory of the server's config?)")]
    NoStore(String),
    /// The store exists and its log does not: nothing to salvage from.
    #[error(
        "{0}: the write-ahead log is missing, so there is nothing to salvage from; writes \
         acknowledged since the last checkpoint may be lost. Restore the store from a backup; \
         or, to go on with what the store holds, create an empty log (`touch {0}`, mode 0600) \
         and start the server (README, Durability)"
    )]
    NoLog(String),
    #[error(
        "{0}: another process holds the store's lock; is the server still running? Stop it \
         before salvaging"
    )]
    Locked(String),
    #[error("{0}: cannot open the store: {1}")]
    Open(String, String),
    #[error(
        "{0}: not a fieldvault write-ahead log, and no frame in it verifies; nothing to salvage"
    )]
    NotALog(String),
    #[error(
        "{0}: the salvaged log is in place (the original is kept beside it), but replaying it \
         and removing what the dropped frames left in the store failed: {1}; fix the cause \
         and run salvage again"
    )]
    Reconcile(String, String),
}

/// A byte range of the log that salvage drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// What salvage found and did.
#[derive(Debug)]
pub struct SalvageReport {
    pub log: PathBuf,
    pub generation: u64,
    /// Frames kept (they verify and belong to the log's generation).
    pub kept_frames: usize,
    pub kept_payload_bytes: u64,
    pub dropped: Vec<Dropped>,
    /// Sequence numbers of frames that are gone (gaps between kept frames).
    pub missing_sequences: Vec<RangeInclusive<u64>>,
    /// Whether bytes after the last kept frame did not verify: frames after
    /// it (if any) are gone and their number is unknown.
    pub unknown_tail: bool,
    pub action: Action,
    /// After a salvage: the remnants of the dropped frames that sled had
    /// stored in part, removed once the kept frames were replayed.
    pub partial: PartialEntries,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// The log verifies: nothing changed.
    NothingToDo,
    /// The log only ends in an interrupted write, which the server cuts at
    /// start: nothing changed.
    TornTailOnly,
    /// The salvaged log replaced the original, which was copied here.
    Salvaged { original_copy: PathBuf },
}

/// The frames to keep and what is dropped, from the log's bytes.
struct Plan {
    generation: u64,
    header_ok: bool,
    kept: Vec<(u64, Vec<u8>)>,
    kept_payload_bytes: u64,
    dropped: Vec<Dropped>,
    missing: Vec<RangeInclusive<u64>>,
    unknown_tail: bool,
    /// Only the end of the log fails to verify, nothing valid after it.
    torn_tail_only: bool,
    /// The kept frames sit in the file in sequence order.
    in_order: bool,
}

fn plan(bytes: &[u8]) -> Option<Plan> {
    if is_v1(bytes) {
        return Some(plan_v1(bytes));
    }
    let header_gen = super::wal::read_header(bytes);
    let mut dropped = Vec::new();
    if header_gen.is_none() {
        dropped.push(Dropped {
            offset: 0,
            bytes: HEADER_LEN.min(bytes.len() as u64),
            reason: "header does not verify".into(),
        });
    }
    let mut all: Vec<FrameAt> = Vec::new();
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Ok(f) => {
                at = f.end() as usize;
                all.push(f);
            }
            Err(why) => {
                let stop =
                    next_frame(bytes, at + 1, |_| true).map_or(bytes.len(), |f| f.offset as usize);
                dropped.push(Dropped {
                    offset: at as u64,
                    bytes: (stop - at) as u64,
                    reason: why.into(),
                });
                at = stop;
            }
        }
    }
    if header_gen.is_none() && all.is_empty() && !bytes.starts_with(MAGIC) {
        return None;
    }
    let generation = header_gen
        .or_else(|| all.iter().map(|f| f.generation).max())
        .unwrap_or(1);
    // Frames are kept in sequence order, wherever they sit in the file: a
    // frame that verifies is never dropped for being out of place (storage
    // that reorders blocks), only a second frame with a sequence number
    // already kept.
    let mut ordered: Vec<&FrameAt> = Vec::with_capacity(all.len());
    for f in &all {
        if f.generation == generation {
            ordered.push(f);
        } else {
            dropped.push(Dropped {
                offset: f.offset,
                bytes: f.len,
                reason: format!(
                    "a frame of generation {} (the log is at {generation})",
                    f.generation
                ),
            });
        }
    }
    ordered.sort_by_key(|f| (f.sequence, f.offset));
    let mut kept = Vec::new();
    let mut missing = Vec::new();
    let mut next_seq = 0u64;
    let mut kept_payload_bytes = 0;
    let mut last_kept_end = HEADER_LEN;
    for f in ordered {
        if f.sequence < next_seq {
            let same = kept
                .last()
                .is_some_and(|(_, p): &(u64, Vec<u8>)| p.as_slice() == f.payload(bytes));
            dropped.push(Dropped {
                offset: f.offset,
                bytes: f.len,
                reason: if same {
                    format!("a copy of frame sequence {}", f.sequence)
                } else {
                    format!(
                        "a second, different frame with sequence {} (the first is kept)",
                        f.sequence
                    )
                },
            });
            continue;
        }
        if f.sequence > next_seq {
            missing.push(next_seq..=f.sequence - 1);
        }
        next_seq = f.sequence + 1;
        let payload = f.payload(bytes).to_vec();
        kept_payload_bytes += payload.len() as u64;
        kept.push((f.offset, payload));
        last_kept_end = last_kept_end.max(f.end());
    }
    dropped.sort_by_key(|d| d.offset);
    let unknown_tail = dropped.iter().any(|d| d.offset >= last_kept_end);
    let torn_tail_only = header_gen.is_some()
        && missing.is_empty()
        && kept.windows(2).all(|w| w[0].0 < w[1].0)
        && dropped.len() <= 1
        && dropped
            .iter()
            .all(|d| d.offset == last_kept_end && d.offset + d.bytes == bytes.len() as u64);
    let in_order = kept.windows(2).all(|w| w[0].0 < w[1].0);
    Some(Plan {
        generation,
        header_ok: header_gen.is_some(),
        in_order,
        kept,
        kept_payload_bytes,
        dropped,
        missing,
        unknown_tail,
        torn_tail_only,
    })
}

/// Format 1 has no markers: the frames before the first bad one are all
/// that can be found.
fn plan_v1(bytes: &[u8]) -> Plan {
    let (generation, frames, end) = scan_v1(bytes);
    let kept: Vec<(u64, Vec<u8>)> = frames
        .iter()
        .map(|(s, e)| (*s as u64, bytes[*s..*e].to_vec()))
        .collect();
    let mut dropped = Vec::new();
    if end < bytes.len() {
        dropped.push(Dropped {
            offset: end as u64,
            bytes: (bytes.len() - end) as u64,
            reason: "format-1 frame does not verify (that format cannot find later frames)".into(),
        });
    }
    Plan {
        generation,
        header_ok: true,
        kept_payload_bytes: kept.iter().map(|(_, p)| p.len() as u64).sum(),
        kept,
        unknown_tail: !dropped.is_empty(),
        dropped,
        missing: Vec::new(),
        // Format 1 is refused at open when anything does not verify, so
        // it must be rewritten even for a torn tail.
        torn_tail_only: false,
        in_order: true,
    }
}

/// The salvaged log: a fresh header and the kept frames, renumbered from 0.
fn salvaged_bytes(plan: &Plan) -> Vec<u8> {
    let mut out = header(plan.generation).to_vec();
    for (seq, (_, payload)) in plan.kept.iter().enumerate() {
        // A kept payload came out of a frame, so it fits in one.
        if let Some(frame) = encode_frame(plan.generation, seq as u64, payload) {
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// Salvages the write-ahead log in `store_dir` (the server's
/// `data_dir/store`). The server must be stopped.
pub fn salvage(store_dir: &Path) -> Result<SalvageReport, SalvageError> {
    let log = store_dir.join(WAL_FILE);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SalvageError::Io { path, source }
    };
    if !data_file_path(store_dir).is_file() {
        return Err(SalvageError::NoStore(store_dir.display().to_string()));
    }
    if !log.is_file() {
        return Err(SalvageError::NoLog(log.display().to_string()));
    }
    // sled's lock on its data file: a running server holds it, and holding
    // it here keeps a server from starting while the log is rewritten. A
    // process that just exited may hold it a moment longer (sled's
    // background writes), so a conflict is retried for up to a second.
    let mut tries = 0;
    let lock = loop {
        match sled::Config::new()
            .path(store_dir)
            .cache_capacity(1 << 20)
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                if tries == 50 {
                    return Err(SalvageError::Locked(store_dir.display().to_string()));
                }
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                return Err(SalvageError::Open(
                    store_dir.display().to_string(),
                    e.to_string(),
                ))
            }
        }
    };
    let bytes = read_file(&log).map_err(io(&log))?;
    let plan = plan(&bytes).ok_or_else(|| SalvageError::NotALog(log.display().to_string()))?;
    let mut report = SalvageReport {
        log: log.clone(),
        generation: plan.generation,
        kept_frames: plan.kept.len(),
        kept_payload_bytes: plan.kept_payload_bytes,
        dropped: plan.dropped.clone(),
        missing_sequences: plan.missing.clone(),
        unknown_tail: plan.unknown_tail,
        action: Action::NothingToDo,
        partial: PartialEntries::default(),
    };
    // A frame missing whole (no bad bytes left) still needs the log
    // renumbered: the server refuses a gap in the sequence.
    let verifies = plan.header_ok
        && plan.in_order
        && plan.dropped.is_empty()
        && plan.missing.is_empty()
        && !is_v1(&bytes);
    if !verifies {
        if plan.torn_tail_only {
            // Nothing acknowledged is missing, and the interrupted write
            // was never applied, so sled holds nothing of it either.
            report.action = Action::TornTailOnly;
            return Ok(report);
        }
        report.action = replace_log(store_dir, &log, &bytes, &plan)?;
    }
    // sled writes its trees on its own between checkpoints, so it may hold
    // a dropped frame whole, in part or not at all. Replay the kept frames
    // (opening the store does, and checkpoints), then remove what a dropped
    // frame left half-written, so the trees agree again; the close makes
    // that durable (its checkpoint). This runs on a log that verifies too:
    // a salvage cut short after it replaced the log is finished by the next.
    drop(lock);
    let reconcile =
        |e: StoreError| SalvageError::Reconcile(store_dir.display().to_string(), e.to_string());
    let store = SledStore::reopen(&SledConfig {
        path: store_dir.to_path_buf(),
        cache_capacity_bytes: 16 << 20,
        max_queued_writes: 1,
    })
    .map_err(reconcile)?;
    report.partial = store.remove_partial_entries().map_err(reconcile)?;
    drop(store);
    Ok(report)
}

/// Keeps a durable copy of the original log, then puts the salvaged one in
/// its place (synced temporary file, rename, directory fsync).
fn replace_log(
    store_dir: &Path,
    log: &Path,
    bytes: &[u8],
    plan: &Plan,
) -> Result<Action, SalvageError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SalvageError::Io { path, source }
    };
    // 1. A copy of the original, durable before anything else changes.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut copy = store_dir.join(format!("{WAL_FILE}.corrupt-{stamp}"));
    let mut n = 1;
    while copy.exists() {
        copy = store_dir.join(format!("{WAL_FILE}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    write_durably(&copy, bytes).map_err(io(&copy))?;
    // 2. The salvaged log in a temporary file, synced, renamed over the
    //    original, and the rename made durable.
    let tmp = store_dir.join(format!("{WAL_FILE}.salvage-tmp"));
    let _ = std::fs::remove_file(&tmp);
    write_durably(&tmp, &salvaged_bytes(plan)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, log).map_err(io(log))?;
    sync_dir(store_dir).map_err(io(store_dir))?;
    Ok(Action::Salvaged {
        original_copy: copy,
    })
}

/// What the reconciliation of the trees found.
fn write_partial(s: &mut String, p: &PartialEntries) {
    if p.index_entries == 0 && p.deterministic_entries == 0 && p.expiry_entries == 0 {
        let _ = writeln!(
            s,
            "the store held no half-written remnant of a dropped frame"
        );
    } else {
        let _ = writeln!(
            s,
            "removed what dropped frames had left half-written in the store: {} index entries, \
             {} deterministic mappings and {} expiry entries without their record",
            p.index_entries, p.deterministic_entries, p.expiry_entries
        );
    }
    if !p.unindexed_records.is_empty() {
        let _ = writeln!(
            s,
            "kept {} records that have no index entry (they still reveal, but \
             erase-by-value and deterministic lookups cannot find them; the integrity check \
             reports them); restoring a backup is the only way to rebuild their index:",
            p.unindexed_records.len()
        );
        for id in &p.unindexed_records {
            let _ = writeln!(s, "{id}: no index entry");
        }
    }
}

/// Creates `path` (0600; it must not exist), writes `bytes`, syncs the
/// file and its directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl std::fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let _ = writeln!(s, "write-ahead log: {}", self.log.display());
        let _ = writeln!(
            s,
            "frames that verify (generation {}): {} ({} bytes of records)",
            self.generation, self.kept_frames, self.kept_payload_bytes
        );
        for d in &self.dropped {
            let _ = writeln!(
                s,
                "dropped: {} bytes at byte {} ({})",
                d.bytes, d.offset, d.reason
            );
        }
        if !self.missing_sequences.is_empty() {
            let list: Vec<String> = self
                .missing_sequences
                .iter()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect();
            let _ = writeln!(s, "frames missing (sequence numbers): {}", list.join(", "));
        }
        if self.unknown_tail && self.action != Action::TornTailOnly {
            let _ = writeln!(
                s,
                "the bytes after the last frame that verifies are dropped: an interrupted last \
                 write, or damaged frames whose number cannot be known"
            );
        }
        match &self.action {
            Action::NothingToDo => {
                let _ = writeln!(
                    s,
                    "the log verifies: nothing in it to salvage (its frames were replayed, as a \
                     start does)"
                );
                write_partial(&mut s, &self.partial);
                let _ = writeln!(s, "start the server.");
            }
            Action::TornTailOnly => {
                let _ = writeln!(
                    s,
                    "the log only ends in an interrupted write, never acknowledged; the server \
                     cuts it off at start. Nothing changed; start the server."
                );
            }
            Action::Salvaged { original_copy } => {
                let _ = writeln!(
                    s,
                    "the original log is kept, unchanged, at {}",
                    original_copy.display()
                );
                let _ = writeln!(s, "the salvaged log replaced {}", self.log.display());
                let _ = writeln!(
                    s,
                    "the {} kept frames were replayed into the store",
                    self.kept_frames
                );
                write_partial(&mut s, &self.partial);
                if self.dropped.is_empty() && self.missing_sequences.is_empty() {
                    let _ = writeln!(
                        s,
                        "next: nothing was dropped (the frames were only out of place); start \
                         the server. Keep the .corrupt copy until you are sure, and check the \
                         disk (SMART, dmesg) before trusting it again."
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "next: writes in the dropped frames are lost from this store, unless \
                         sled had already stored them whole on its own (then they stay). If a \
                         backup holds them, restore the store from it instead (stop, replace \
                         the store directory with it, keep the audit log, start). Otherwise start the server. Tokens acknowledged in \
                         the dropped frames answer NOT_FOUND; tell their owners. Keep the \
                         .corrupt copy until you are sure, and check the disk (SMART, dmesg) \
                         before trusting it again."
                    );
                }
            }
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply::Staged;
    use super::super::file::RealFs;
    use super::super::layout::{
        encode_frame as encode_frame_payload, encode_record, record_key, Ceiling,
    };
    use super::super::wal::{Wal, FRAME_HEADER_LEN};
    use super::super::Store;
    use super::*;
    use crate::crypto::{BlindIndex, KeyVersion, SealedRecord, NONCE_LEN};
    use crate::domain::{FieldKind, RecordId};

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A frame payload as the store logs it: one random-mode record `id`
    /// under blind index `mac` (and the ceiling that was logged before it).
    fn record_frame(id: RecordId, mac: u8, deterministic: bool) -> Vec<u8> {
        let record = SealedRecord {
            kind: FieldKind::Phone,
            key_version: KeyVersion(1),
            nonce: [mac; NONCE_LEN],
            ciphertext: vec![mac; 40],
            meta: None,
        };
        encode_frame_payload(
            Some(Ceiling {
                ceiling: 1 << 16,
                epoch: EPOCH,
            }),
            &[],
            &[Staged {
                id,
                index: BlindIndex {
                    version: KeyVersion(1),
                    mac: [mac; 32],
                },
                deterministic,
                record: encode_record(&record),
            }],
            &Default::default(),
        )
    }

    /// The epoch of the process that logged the test frames.
    const EPOCH: u64 = 0x0011_2233_4455_6677;

    /// `n` frames of one record each, with their ids.
    fn record_frames(n: usize) -> (Vec<Vec<u8>>, Vec<RecordId>) {
        let tokens: Vec<RecordId> = (0..n as u64).map(|seq| RecordId::new(seq, EPOCH)).collect();
        let frames = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| record_frame(*t, i as u8, false))
            .collect();
        (frames, tokens)
    }

    /// A store directory holding a sled db and a log of `payloads`; returns
    /// the frame offsets.
    fn store_with_log(dir: &Path, payloads: &[Vec<u8>]) -> Vec<u64> {
        drop(ok(sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()));
        let (mut wal, _) = ok(Wal::open(&RealFs, &dir.join(WAL_FILE)));
        let mut offsets = Vec::new();
        let mut at = HEADER_LEN;
        for p in payloads {
            offsets.push(at);
            ok(wal.append(p));
            at += (FRAME_HEADER_LEN + p.len()) as u64;
        }
        offsets
    }

    fn open_store(dir: &Path) -> SledStore {
        ok(SledStore::reopen(&SledConfig {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 1 << 20,
            max_queued_writes: 1,
        }))
    }

    #[test]
    fn salvage_keeps_the_frames_that_verify_and_reports_what_it_dropped() {
        let dir = ok(tempfile::tempdir());
        let (payloads, tokens) = record_frames(5);
        let offsets = store_with_log(dir.path(), &payloads);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        // Damage frames 1 and 2 (a payload bit, a length bit).
        bytes[offsets[1] as usize + FRAME_HEADER_LEN] ^= 1;
        bytes[offsets[2] as usize + 6] ^= 0x40;
        ok(std::fs::write(&log, &bytes));
        assert!(Wal::open(&RealFs, &log).is_err());

        let report = ok(salvage(dir.path()));
        assert_eq!(report.kept_frames, 3);
        assert_eq!(report.missing_sequences, vec![1..=2]);
        assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
        assert_eq!(report.dropped[0].offset, offsets[1]);
        assert_eq!(report.dropped[0].bytes, offsets[3] - offsets[1]);
        assert!(!report.unknown_tail);
        let Action::Salvaged { original_copy } = &report.action else {
            panic!("{:?}", report.action);
        };
        assert_eq!(
            ok(std::fs::read(original_copy)),
            bytes,
            "original kept as is"
        );
        let text = report.to_string();
        assert!(text.contains(&format!("at byte {}", offsets[1])), "{text}");
        assert!(text.contains("sequence numbers): 1-2"), "{text}");
        // The kept frames were replayed (and the log checkpointed): their
        // records are in the store, the dropped ones are not.
        assert!(report.partial.is_empty(), "{:?}", report.partial);
        let (_, frames) = ok(Wal::open(&RealFs, &log));
        assert!(frames.is_empty(), "the replay was checkpointed");
        let store = open_store(dir.path());
        let got = ok(futures_read(&store, &tokens));
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, false, true, true]
        );
        drop(store);
        // And salvaging again finds nothing to do.
        let again = ok(salvage(dir.path()));
        assert_eq!(again.action, Action::NothingToDo);
    }

    #[test]
    fn salvage_of_a_log_with_a_damaged_header_keeps_its_frames() {
        let dir = ok(tempfile::tempdir());
        let (payloads, tokens) = record_frames(2);
        store_with_log(dir.path(), &payloads);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        bytes[10] ^= 2;
        ok(std::fs::write(&log, &bytes));
        assert!(Wal::open(&RealFs, &log).is_err());
        let report = ok(salvage(dir.path()));
        assert_eq!(report.kept_frames, 2);
        assert_eq!(report.dropped[0].offset, 0);
        let store = open_store(dir.path());
        assert!(ok(futures_read(&store, &tokens))
            .iter()
            .all(Option::is_some));
    }

    #[test]
    fn salvage_leaves_an_intact_or_merely_torn_log_alone() {
        let intact = ok(tempfile::tempdir());
        store_with_log(intact.path(), &record_frames(2).0);
        assert_eq!(ok(salvage(intact.path())).action, Action::NothingToDo);
        let dir = ok(tempfile::tempdir());
        store_with_log(dir.path(), &record_frames(2).0);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        bytes.truncate(bytes.len() - 1);
        ok(std::fs::write(&log, &bytes));
        let report = ok(salvage(dir.path()));
        assert_eq!(report.action, Action::TornTailOnly);
        assert_eq!(ok(std::fs::read(&log)), bytes);
        let names: Vec<_> = ok(std::fs::read_dir(dir.path()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("corrupt"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn salvage_refuses_while_the_store_is_open() {
        let dir = ok(tempfile::tempdir());
        store_with_log(dir.path(), &record_frames(1).0);
        let db = ok(sled::open(dir.path()));
        assert!(matches!(salvage(dir.path()), Err(SalvageError::Locked(_))));
        drop(db);
    }

    /// The records of `tokens` through the store's own read path.
    fn futures_read(
        store: &SledStore,
        tokens: &[RecordId],
    ) -> Result<Vec<Option<SealedRecord>>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?;
        let read = runtime
            .block_on(store.get_records(tokens.to_vec()))
            .map_err(|e| e.to_string())?;
        read.into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn a_frame_missing_whole_from_the_middle_is_salvaged_not_left_alone() {
        let dir = ok(tempfile::tempdir());
        let (payloads, _) = record_frames(3);
        let offsets = store_with_log(dir.path(), &payloads);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        // Frame 1 cut out whole: every byte left verifies, seq 1 is gone.
        bytes.drain(offsets[1] as usize..offsets[2] as usize);
        ok(std::fs::write(&log, &bytes));
        assert!(Wal::open(&RealFs, &log).is_err(), "the server refuses it");
        let report = ok(salvage(dir.path()));
        assert_eq!(report.missing_sequences, vec![1..=1]);
        assert!(
            matches!(report.action, Action::Salvaged { .. }),
            "{:?}",
            report.action
        );
        assert!(Wal::open(&RealFs, &log).is_ok(), "the server starts again");
    }

    #[test]
    fn salvage_removes_what_a_dropped_frame_left_half_written_in_the_store() {
        let dir = ok(tempfile::tempdir());
        // Frames 0, 2 and 3 are damaged and dropped; frame 1 verifies.
        // sled had stored frame 0 whole (it stays), frame 2 only in part
        // (its index entry, not the record) and frame 3 as a record without
        // its index entry. (A partial deterministic mapping is the second
        // run's case below.)
        let tokens: Vec<RecordId> = (0..4).map(|seq| RecordId::new(seq, EPOCH)).collect();
        let payloads: Vec<Vec<u8>> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| record_frame(*t, 10 + i as u8, false))
            .collect();
        let offsets = store_with_log(dir.path(), &payloads);
        {
            let store = open_store(dir.path());
            drop(store);
        }
        // The open above replayed and checkpointed everything; put the
        // log back and take the remnants apart as a crash would leave them.
        let log = dir.path().join(WAL_FILE);
        drop(store_with_log(dir.path(), &payloads));
        {
            let db = ok(sled::Config::new().path(dir.path()).open());
            let records = ok(db.open_tree("records"));
            let index = ok(db.open_tree("blind_index"));
            ok(records.remove(record_key(tokens[2])));
            let mut entry = vec![0, 0, 0, 1];
            entry.extend_from_slice(&[13u8; 32]);
            entry.extend_from_slice(&record_key(tokens[3]));
            assert!(ok(index.remove(entry)).is_some());
            ok(db.flush());
        }
        let mut bytes = ok(std::fs::read(&log));
        assert_eq!(offsets.len(), 4);
        for i in [0usize, 2, 3] {
            bytes[offsets[i] as usize + FRAME_HEADER_LEN] ^= 1;
        }
        ok(std::fs::write(&log, &bytes));

        let report = ok(salvage(dir.path()));
        assert!(
            matches!(report.action, Action::Salvaged { .. }),
            "{:?}",
            report.action
        );
        assert_eq!(report.partial.unindexed_records, vec![tokens[3]]);
        assert_eq!(report.partial.index_entries, 1);
        assert_eq!(report.partial.deterministic_entries, 0);
        let text = report.to_string();
        assert!(
            text.contains(&format!("{}: no index entry", tokens[3])),
            "{text}"
        );

        let store = open_store(dir.path());
        let got = ok(futures_read(&store, &tokens));
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, true, false, true],
            "frame 0 was whole in sled and stays; 2 is gone; 3 still reveals (kept)"
        );
        let runtime = ok(tokio::runtime::Builder::new_current_thread().build());
        let integrity = ok(runtime.block_on(store.check_integrity()));
        assert_eq!(
            integrity.problems,
            vec![format!("{} has 0 index entries", tokens[3])],
            "only the kept record without its index entry is left to report"
        );
        drop(store);

        // A salvage cut short after it replaced the log leaves a log that
        // verifies and remnants in sled: running it again finishes the job.
        {
            let db = ok(sled::Config::new().path(dir.path()).open());
            let deterministic = ok(db.open_tree("deterministic"));
            ok(deterministic.insert([7u8; 36], &[0u8; 16][..]));
            ok(db.flush());
        }
        let again = ok(salvage(dir.path()));
        assert_eq!(again.action, Action::NothingToDo);
        assert_eq!(again.partial.deterministic_entries, 1, "{again}");
    }

    #[test]
    fn frames_out_of_place_in_the_file_are_kept_in_sequence_order() {
        let dir = ok(tempfile::tempdir());
        let (payloads, tokens) = record_frames(4);
        let offsets = store_with_log(dir.path(), &payloads);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        // Frames 1 and 2 swapped (equal lengths), every frame intact.
        let (a, b, c) = (
            offsets[1] as usize,
            offsets[2] as usize,
            offsets[3] as usize,
        );
        let (first, second) = (bytes[a..b].to_vec(), bytes[b..c].to_vec());
        assert_eq!(first.len(), second.len());
        bytes[a..b].copy_from_slice(&second);
        bytes[b..c].copy_from_slice(&first);
        ok(std::fs::write(&log, &bytes));
        assert!(Wal::open(&RealFs, &log).is_err(), "the server refuses it");

        let report = ok(salvage(dir.path()));
        assert_eq!(report.kept_frames, 4);
        assert!(report.missing_sequences.is_empty(), "{report}");
        assert!(report.dropped.is_empty(), "{report}");
        assert!(matches!(report.action, Action::Salvaged { .. }), "{report}");
        let store = open_store(dir.path());
        assert!(ok(futures_read(&store, &tokens))
            .iter()
            .all(Option::is_some));
    }

    /// A dropped frame may hold the only copy of a ceiling raise and of
    /// acknowledged records above the stored ceiling. Frame 1 raised the
    /// ceiling from 64 to 200, frame 2 stored id 150 (acknowledged), frame
    /// 3 stored id 20 (taken before the raise, committed after it). Frames
    /// 1 and 2 are damaged and sled held neither. After salvage the store
    /// goes on from 64 and hands out sequence number 150 again, but under
    /// a new epoch: never the id (nor the token) acknowledged for 150.
    #[test]
    fn after_salvage_no_id_of_a_dropped_frame_is_handed_out_again() {
        let dir = ok(tempfile::tempdir());
        let frame = |ceiling: Option<u64>, seq: Option<u64>, mac: u8| {
            let staged: Vec<Staged> = seq
                .map(|seq| Staged {
                    id: RecordId::new(seq, EPOCH),
                    index: BlindIndex {
                        version: KeyVersion(1),
                        mac: [mac; 32],
                    },
                    deterministic: false,
                    record: encode_record(&SealedRecord {
                        kind: FieldKind::Phone,
                        key_version: KeyVersion(1),
                        nonce: [mac; NONCE_LEN],
                        ciphertext: vec![mac; 40],
                        meta: None,
                    }),
                })
                .into_iter()
                .collect();
            let ceiling = ceiling.map(|ceiling| Ceiling {
                ceiling,
                epoch: EPOCH,
            });
            encode_frame_payload(ceiling, &[], &staged, &Default::default())
        };
        let payloads = vec![
            frame(Some(64), Some(10), 1),
            frame(Some(200), None, 0),
            frame(None, Some(150), 2),
            frame(None, Some(20), 3),
        ];
        let offsets = store_with_log(dir.path(), &payloads);
        let log = dir.path().join(WAL_FILE);
        let mut bytes = ok(std::fs::read(&log));
        bytes[offsets[1] as usize + FRAME_HEADER_LEN] ^= 1;
        bytes[offsets[2] as usize + FRAME_HEADER_LEN] ^= 1;
        ok(std::fs::write(&log, &bytes));
        let report = ok(salvage(dir.path()));
        assert_eq!(report.missing_sequences, vec![1..=2], "{report}");
        let store = open_store(dir.path());
        let runtime = ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build());
        let ids = ok(runtime.block_on(store.allocate(200)));
        assert!(
            ids.iter().any(|id| id.seq == 150),
            "the sequence went back (the test's premise)"
        );
        assert!(
            !ids.contains(&RecordId::new(150, EPOCH)),
            "id 150, acknowledged in a dropped frame, is handed out again"
        );
        assert!(store.knows_epoch(EPOCH), "the kept frames recorded it");
    }
}
