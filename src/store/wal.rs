//! A small write-ahead log: the durability of the sled backend.
//!
//! Why: sled makes a multi-key write atomic only through a transaction or a
//! batch, and each of those forces out and waits for two log-buffer writes
//! (`pin_log` rolls the buffer before and after), about 200–400 µs apiece on
//! this machine; its `flush` also blocks every transaction while it waits on
//! the disk. So the vault writes each group of records once to this log,
//! `fdatasync`s it, and only then applies them to sled with plain inserts.
//! After a crash, [`Wal::open`] hands back every logged frame and the store
//! applies them again (inserts are idempotent), so sled never keeps a record
//! without its index entries, or the reverse. A checkpoint (sled `flush` +
//! `fdatasync` of sled's file, then [`Wal::reset`]) keeps the log short.
//!
//! File layout (format 2; big-endian integers):
//! - a 24-byte header: [`MAGIC`] (its last byte is the format version), the
//!   generation (u64), a CRC-32 of those 16 bytes (u32), 4 zero bytes;
//! - frames: [`FRAME_MARKER`] (4 bytes), payload length (u32), generation
//!   (u64), sequence number (u64, from 0 in each generation), CRC-32 (u32)
//!   over the 24 bytes before it and the payload, then the payload.
//!
//! A frame verifies when its marker, checksum, generation (the header's)
//! and sequence number (one more than the previous frame's) are right.
//! [`Wal::reset`] truncates the log to its header, syncs, and only then
//! writes the next generation into the header, so no frame outlives the
//! checkpoint that made it redundant.
//!
//! Torn tail or damage: each frame is synced before the next is appended,
//! so only the last frame can be cut short by a crash, and its callers were
//! never answered. At the first frame that does not verify, [`Wal::open`]
//! scans the rest of the file for a frame of this generation that does
//! (every offset with the marker; a flipped bit in a length field can point
//! anywhere, even past the end). If there is none, the bad frame is the
//! interrupted last write: it is cut off and the log opens. If there is one,
//! acknowledged writes were damaged: open fails with
//! [`WalError::Damaged`], naming the file and the offset, and the file is
//! left exactly as it was (`fieldvault store salvage` or a backup decides
//! what happens next). A flipped bit in the last frame cannot be told from a
//! torn write, and is cut like one.
//!
//! Format 1 (header `FVWAL\0\0\x01`, frames without marker, generation or
//! sequence) cannot tell a torn tail from damage. A format-1 log is read
//! with its own rules: if its frames verify to the end of the file they are
//! replayed (the checkpoint after the replay rewrites the log as format 2);
//! if anything after them does not verify, open refuses with
//! [`WalError::OldFormatDamaged`] instead of guessing.

use super::file::{FileSystem, StorageFile};
use super::{FailureCause, StorageFailure};
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"FVWAL\x00\x00\x02";
const MAGIC_V1: &[u8; 8] = b"FVWAL\x00\x00\x01";
pub(crate) const HEADER_LEN: u64 = 24;
const HEADER_LEN_V1: usize = 16;
pub(crate) const FRAME_MARKER: [u8; 4] = *b"FVfr";
pub(crate) const FRAME_HEADER_LEN: usize = 28;
const FRAME_HEADER_LEN_V1: usize = 8;
/// A frame larger than this is corrupt, not a real write.
pub(crate) const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a fieldvault write-ahead log (bad header)")]
    BadHeader { path: String },
    /// A frame that does not verify is followed by one that does: this is
    /// damage to acknowledged writes, not an interrupted write.
    #[error(
        "{path}: write-ahead log damaged at byte {offset} ({reason}); a valid frame follows at \
         byte {next_valid}, so writes that were acknowledged are at stake. The log was left \
         untouched and the server will not start. Restore the store from a backup, or run \
         `fieldvault store salvage` with the same --config (or --dev --data-dir) as serve: it \
         keeps every frame that verifies and reports what it drops (README, Durability)"
    )]
    Damaged {
        path: String,
        offset: u64,
        next_valid: u64,
        reason: String,
    },
    /// A format-1 log whose frames do not verify to its end.
    #[error(
        "{path}: format-1 write-ahead log (written by an older fieldvault) does not verify from \
         byte {offset}; that format cannot tell an interrupted write from damage. The log was \
         left untouched and the server will not start. Restore the store from a backup, or run \
         `fieldvault store salvage` with the same --config (or --dev --data-dir) as serve \
         (README, Durability)"
    )]
    OldFormatDamaged { path: String, offset: u64 },
    /// The store exists but its log does not: the log is never deleted,
    /// so something outside fieldvault removed it (or the filesystem lost
    /// it), with whatever was logged since the last checkpoint.
    #[error(
        "{path}: the write-ahead log is missing, but the store beside it exists: writes \
         acknowledged since the last checkpoint may be lost. The server will not start. \
         Restore the store from a backup; or, to go on with what the store holds (all of it \
         if the server had stopped cleanly), create an empty log (`touch {path}`, mode 0600) \
         and start again (README, Durability)"
    )]
    Missing { path: String },
}

impl WalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// As a typed storage failure: damage is `Corrupt`, an I/O error keeps
    /// its kind.
    pub(crate) fn failure(&self) -> StorageFailure {
        match self {
            Self::Io { path, source } => StorageFailure::io(path, source),
            Self::BadHeader { .. }
            | Self::Damaged { .. }
            | Self::OldFormatDamaged { .. }
            | Self::Missing { .. } => StorageFailure::new(FailureCause::Corrupt, self.to_string()),
        }
    }
}

pub(crate) fn header(generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&generation.to_be_bytes());
    let sum = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The generation in a format-2 header, if the header verifies.
pub(crate) fn read_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    if &h[..8] != MAGIC || h[16..20] != crc32fast::hash(&h[..16]).to_be_bytes() || h[20..] != [0; 4]
    {
        return None;
    }
    Some(u64::from_be_bytes(h[8..16].try_into().ok()?))
}

pub(crate) fn encode_frame(generation: u64, sequence: u64, payload: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&FRAME_MARKER);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&generation.to_be_bytes());
    frame.extend_from_slice(&sequence.to_be_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&frame);
    h.update(payload);
    frame.extend_from_slice(&h.finalize().to_be_bytes());
    frame.extend_from_slice(payload);
    Some(frame)
}

/// A frame that verifies on its own (marker, length, checksum), wherever it
/// is and whatever its generation and sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameAt {
    pub(crate) offset: u64,
    pub(crate) generation: u64,
    pub(crate) sequence: u64,
    /// Frame header and payload.
    pub(crate) len: u64,
}

impl FrameAt {
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.len
    }

    pub(crate) fn payload<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.offset as usize + FRAME_HEADER_LEN..self.end() as usize]
    }
}

/// Why the bytes at `at` are not a frame, or the frame there.
pub(crate) fn frame_at(bytes: &[u8], at: usize) -> Result<FrameAt, &'static str> {
    let head = bytes
        .get(at..at + FRAME_HEADER_LEN)
        .ok_or("frame header cut short")?;
    if head[..4] != FRAME_MARKER {
        return Err("no frame marker");
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let be64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_be_bytes(a)
    };
    let len = be32(&head[4..8]) as usize;
    if len > MAX_FRAME {
        return Err("frame length out of range");
    }
    let start = at + FRAME_HEADER_LEN;
    let payload = bytes
        .get(start..start + len)
        .ok_or("frame length runs past the end of the file")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..24]);
    h.update(payload);
    if h.finalize() != be32(&head[24..28]) {
        return Err("checksum mismatch");
    }
    Ok(FrameAt {
        offset: at as u64,
        generation: be64(&head[8..16]),
        sequence: be64(&head[16..24]),
        len: (FRAME_HEADER_LEN + len) as u64,
    })
}

/// The first frame that verifies at or after `from` and satisfies `keep`.
pub(crate) fn next_frame(
    bytes: &[u8],
    from: usize,
    keep: impl Fn(&FrameAt) -> bool,
) -> Option<FrameAt> {
    let mut at = from;
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let rel = bytes[at..].windows(4).position(|w| w == FRAME_MARKER)?;
        at += rel;
        if let Ok(frame) = frame_at(bytes, at) {
            if keep(&frame) {
                return Some(frame);
            }
        }
        at += 1;
    }
    None
}

/// What a log's bytes hold, once they are known not to be damaged.
enum Inspected {
    /// Empty, or only an interrupted first header write: start afresh.
    Fresh,
    /// Format 1 whose frames verify to its end.
    V1,
    /// Format 2: the header's generation and the frames' scan (which may
    /// end in an interrupted write, never in damage).
    V2 { generation: u64, scan: Scan },
}

/// Tells damage (refuse to start, touch nothing) from everything else,
/// reading only.
fn inspect(path: &Path, bytes: &[u8]) -> Result<Inspected, WalError> {
    let torn_header = read_header(bytes).is_none() && !is_v1(bytes) && interrupted_header(bytes);
    if bytes.is_empty() || torn_header {
        return Ok(Inspected::Fresh);
    }
    if is_v1(bytes) {
        let (_, _, end) = scan_v1(bytes);
        if end < bytes.len() {
            return Err(WalError::OldFormatDamaged {
                path: path.display().to_string(),
                offset: end as u64,
            });
        }
        return Ok(Inspected::V1);
    }
    let Some(generation) = read_header(bytes) else {
        // A damaged header over frames that verify is damage; a file
        // with neither is not a log.
        let next = next_frame(bytes, HEADER_LEN as usize, |_| true);
        if bytes.starts_with(MAGIC) || next.is_some() {
            return Err(WalError::Damaged {
                path: path.display().to_string(),
                offset: 0,
                next_valid: next.map_or(HEADER_LEN, |f| f.offset),
                reason: "header does not verify".into(),
            });
        }
        return Err(WalError::BadHeader {
            path: path.display().to_string(),
        });
    };
    let scan = scan(bytes, generation);
    if let Some(next) = &scan.next_valid {
        return Err(WalError::Damaged {
            path: path.display().to_string(),
            offset: scan.end,
            next_valid: next.offset,
            reason: scan.bad.unwrap_or("frame does not verify").into(),
        });
    }
    Ok(Inspected::V2 { generation, scan })
}

/// Reads the log at `path` (if there is one) and fails as [`Wal::open`]
/// would on damage, changing nothing: the store checks this before it
/// opens sled, so a refused start leaves the store as it was.
/// `store_exists`: the store beside the log was created before (its log
/// must be there too).
///
/// `Ok(true)` when the log is an empty file: one an operator created to go
/// on with what sled holds (a log the server wrote always has a header).
pub(crate) fn check(
    fs: &dyn FileSystem,
    path: &Path,
    store_exists: bool,
) -> Result<bool, WalError> {
    match fs.read_existing(path).map_err(|e| WalError::io(path, e))? {
        Some(bytes) => inspect(path, &bytes).map(|_| bytes.is_empty()),
        None if store_exists => Err(WalError::Missing {
            path: path.display().to_string(),
        }),
        None => Ok(false),
    }
}

/// How a format-2 log reads.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The frames of this generation, in order, up to the first that does
    /// not verify.
    pub(crate) frames: Vec<FrameAt>,
    /// Where the intact part ends.
    pub(crate) end: u64,
    /// Why the frame at `end` does not verify (when bytes follow `end`).
    pub(crate) bad: Option<&'static str>,
    /// A frame of this generation (or a later one) that verifies after
    /// `end`: damage, not a torn tail.
    pub(crate) next_valid: Option<FrameAt>,
}

pub(crate) fn scan(bytes: &[u8], generation: u64) -> Scan {
    let mut frames: Vec<FrameAt> = Vec::new();
    let mut at = HEADER_LEN as usize;
    let mut bad = None;
    while at < bytes.len() {
        let expected = frames.len() as u64;
        match frame_at(bytes, at) {
            Ok(f) if f.generation == generation && f.sequence == expected => {
                at = f.end() as usize;
                frames.push(f);
            }
            Ok(f) if f.generation >= generation => {
                bad = Some(if f.generation == generation {
                    "frame sequence number out of order"
                } else {
                    "frame of a later generation than the header"
                });
                // It verifies itself: it is the valid data after the gap.
                return Scan {
                    frames,
                    end: at as u64,
                    bad,
                    next_valid: Some(f),
                };
            }
            Ok(_) => {
                bad = Some("frame of an earlier generation");
                break;
            }
            Err(why) => {
                bad = Some(why);
                break;
            }
        }
    }
    let next_valid = bad.and_then(|_| next_frame(bytes, at + 1, |f| f.generation >= generation));
    Scan {
        frames,
        end: at as u64,
        bad,
        next_valid,
    }
}

/// Format 1: frames up to the first that does not verify, and where they end.
pub(crate) fn scan_v1(bytes: &[u8]) -> (u64, Vec<(usize, usize)>, usize) {
    let mut g = [0u8; 8];
    g.copy_from_slice(&bytes[8..16]);
    let generation = u64::from_be_bytes(g);
    let mut frames = Vec::new();
    let mut at = HEADER_LEN_V1;
    while let Some(head) = bytes.get(at..at + FRAME_HEADER_LEN_V1) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let sum = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let start = at + FRAME_HEADER_LEN_V1;
        let Some(payload) = bytes.get(start..start + len).filter(|_| len <= MAX_FRAME) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&generation.to_be_bytes());
        h.update(payload);
        if h.finalize() != sum {
            break;
        }
        frames.push((start, start + len));
        at = start + len;
    }
    (generation, frames, at)
}

/// Whether `bytes` is a file of format 1.
pub(crate) fn is_v1(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN_V1 && &bytes[..8] == MAGIC_V1
}

/// A header write interrupted by a crash (at creation, or at a reset after
/// the truncation): no frame follows, and what is there is zeros or a
/// prefix of a header.
fn interrupted_header(bytes: &[u8]) -> bool {
    let n = bytes.len().min(8);
    bytes.len() <= HEADER_LEN as usize
        && (bytes.iter().all(|b| *b == 0) || bytes[..n] == MAGIC[..n])
}

pub(crate) struct Wal {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    generation: u64,
    /// The sequence number of the next frame.
    sequence: u64,
    /// Where the next frame goes.
    end: u64,
    /// A format-1 log still holding frames: nothing may be appended until
    /// they are replayed and [`Wal::reset`] rewrites the log as format 2.
    old_format: bool,
}

impl Wal {
    /// Opens (or creates) the log and returns it with the payload of every
    /// frame of the current generation, oldest first. The caller applies
    /// them, checkpoints, and calls [`Wal::reset`]. An interrupted last
    /// frame is cut off; damage refuses to open and changes nothing.
    pub(crate) fn open(fs: &dyn FileSystem, path: &Path) -> Result<(Self, Vec<Vec<u8>>), WalError> {
        let io = |e| WalError::io(path, e);
        let mut file = fs.open_or_create(path).map_err(io)?;
        let bytes = file.read_to_end().map_err(io)?;
        let mut wal = Self {
            path: path.to_path_buf(),
            file,
            generation: 0,
            sequence: 0,
            end: HEADER_LEN,
            old_format: false,
        };
        let (generation, scan) = match inspect(path, &bytes)? {
            Inspected::Fresh => {
                if !bytes.is_empty() {
                    tracing::warn!(
                        path = %path.display(),
                        bytes = bytes.len(),
                        "write-ahead log holds only an interrupted header write; starting it afresh"
                    );
                }
                wal.reset()?;
                // The file may be new: make its directory entry durable.
                if let Some(dir) = path.parent() {
                    fs.sync_dir(dir).map_err(io)?;
                }
                return Ok((wal, Vec::new()));
            }
            Inspected::V1 => return wal.open_v1(&bytes),
            Inspected::V2 { generation, scan } => (generation, scan),
        };
        if scan.end < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                offset = scan.end,
                ignored_bytes = bytes.len() as u64 - scan.end,
                reason = scan.bad.unwrap_or("frame does not verify"),
                "write-ahead log ends in an interrupted write; it was never acknowledged, cutting it off"
            );
            // Cut the interrupted write off, so that the frames appended
            // next are not followed by its leftovers.
            wal.file
                .set_len(scan.end)
                .and_then(|()| wal.file.sync_all())
                .map_err(io)?;
        }
        wal.generation = generation;
        wal.sequence = scan.frames.len() as u64;
        wal.end = scan.end;
        let frames = scan
            .frames
            .iter()
            .map(|f| f.payload(&bytes).to_vec())
            .collect();
        Ok((wal, frames))
    }

    fn open_v1(mut self, bytes: &[u8]) -> Result<(Self, Vec<Vec<u8>>), WalError> {
        let (generation, frames, end) = scan_v1(bytes);
        if end < bytes.len() {
            return Err(WalError::OldFormatDamaged {
                path: self.path.display().to_string(),
                offset: end as u64,
            });
        }
        self.generation = generation;
        if frames.is_empty() {
            // Nothing to replay: rewrite it as format 2 now.
            self.reset()?;
            tracing::info!(path = %self.path.display(), "write-ahead log upgraded to format 2");
            return Ok((self, Vec::new()));
        }
        self.old_format = true;
        self.end = bytes.len() as u64;
        let frames = frames.iter().map(|(s, e)| bytes[*s..*e].to_vec()).collect();
        Ok((self, frames))
    }

    fn io(&self, source: std::io::Error) -> WalError {
        WalError::io(&self.path, source)
    }

    /// Appends one frame and makes it durable (`fdatasync`).
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        if self.old_format {
            return Err(self.io(std::io::Error::other(
                "a format-1 log must be replayed and reset before anything is appended",
            )));
        }
        let frame = encode_frame(self.generation, self.sequence, payload)
            .ok_or_else(|| self.io(std::io::Error::other("frame too large")))?;
        self.file
            .write_all_at(&frame, self.end)
            .map_err(|e| self.io(e))?;
        let started = std::time::Instant::now();
        self.file.sync_data().map_err(|e| self.io(e))?;
        metrics::histogram!(crate::metrics::WAL_SYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        self.end += frame.len() as u64;
        self.sequence += 1;
        Ok(())
    }

    /// The log's generation: every frame in it belongs to it, and a reset
    /// moves to the next.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of frames since the last reset.
    pub(crate) fn len(&self) -> u64 {
        self.end.saturating_sub(HEADER_LEN)
    }

    /// Empties the log. Call only once everything logged is durable
    /// elsewhere (the checkpoint). The frames are cut off and the cut made
    /// durable before the new generation is written, so a crash part-way
    /// leaves either the old header or the new one, never frames under a
    /// header they do not belong to.
    pub(crate) fn reset(&mut self) -> Result<(), WalError> {
        let generation = self.generation + 1;
        self.file
            .set_len(HEADER_LEN)
            .and_then(|()| self.file.sync_all())
            .and_then(|()| self.file.write_all_at(&header(generation), 0))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.io(e))?;
        self.generation = generation;
        self.sequence = 0;
        self.end = HEADER_LEN;
        self.old_format = false;
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("sequence", &self.sequence)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::RealFs;
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn open(path: &Path) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
        Wal::open(&RealFs, path)
    }

    /// A log holding `payloads`, and the offset of each frame.
    fn log_with(path: &Path, payloads: &[&[u8]]) -> Vec<u64> {
        let (mut wal, _) = ok(open(path));
        let mut offsets = Vec::new();
        for p in payloads {
            offsets.push(wal.end);
            ok(wal.append(p));
        }
        offsets
    }

    #[test]
    fn frames_come_back_after_reopening_until_a_reset() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        {
            let (mut wal, frames) = ok(open(&path));
            assert!(frames.is_empty());
            ok(wal.append(b"one"));
            ok(wal.append(b""));
            ok(wal.append(&[7u8; 5000]));
        }
        let (mut wal, frames) = ok(open(&path));
        assert_eq!(frames, vec![b"one".to_vec(), Vec::new(), vec![7u8; 5000]]);
        // Appending after a reopen continues the sequence.
        ok(wal.append(b"four"));
        drop(wal);
        let (mut wal, frames) = ok(open(&path));
        assert_eq!(frames.len(), 4);
        ok(wal.reset());
        ok(wal.append(b"two"));
        drop(wal);
        let (_, frames) = ok(open(&path));
        assert_eq!(frames, vec![b"two".to_vec()]);
        let bytes = ok(std::fs::read(&path));
        assert_eq!(&bytes[..8], MAGIC, "the header names format 2");
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_the_frames_before_it_kept() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let offsets = log_with(&path, &[b"kept", b"also kept", &[5u8; 3000]]);
        let full = ok(std::fs::read(&path));
        let intact = offsets[2] as usize;
        // Cut short, and cut short with the rest of its page never written
        // (zeros), as a crash mid-write leaves it.
        let mut zero_filled = full[..full.len() - 1000].to_vec();
        zero_filled.resize(full.len() + 500, 0);
        for torn in [full[..full.len() - 3].to_vec(), zero_filled] {
            ok(std::fs::write(&path, &torn));
            let (mut wal, frames) = ok(open(&path));
            assert_eq!(frames, vec![b"kept".to_vec(), b"also kept".to_vec()]);
            assert_eq!(ok(std::fs::metadata(&path)).len(), intact as u64);
            // New frames go where the intact part ends.
            ok(wal.append(b"next"));
            drop(wal);
            let (_, frames) = ok(open(&path));
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[2], b"next".to_vec());
            ok(std::fs::write(&path, &full));
        }
    }

    fn assert_refused_untouched(path: &Path, bytes: &[u8], offset: u64) {
        ok(std::fs::write(path, bytes));
        match open(path) {
            Err(WalError::Damaged {
                path: p,
                offset: at,
                ..
            }) => {
                assert_eq!(p, path.display().to_string());
                assert_eq!(at, offset);
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a damaged log opened"),
        }
        assert_eq!(
            ok(std::fs::read(path)),
            bytes,
            "the damaged log was changed"
        );
    }

    #[test]
    fn a_flipped_bit_in_a_middle_frame_refuses_to_open_and_leaves_the_log_untouched() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let offsets = log_with(&path, &[b"first", b"middle frame", b"last"]);
        let mut bytes = ok(std::fs::read(&path));
        bytes[offsets[1] as usize + FRAME_HEADER_LEN + 3] ^= 0x10;
        assert_refused_untouched(&path, &bytes, offsets[1]);
        let message = open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&format!("byte {}", offsets[1])),
            "{message}"
        );
        assert!(message.contains("fieldvault store salvage"), "{message}");
    }

    #[test]
    fn a_flipped_bit_in_the_first_frames_length_field_refuses_to_open() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let offsets = log_with(&path, &[b"first", b"second", b"third"]);
        let clean = ok(std::fs::read(&path));
        // The high bit sends the length past the end of the file; a low bit
        // makes it end inside the next frame.
        for bit in [0x80u8, 0x01] {
            let mut bytes = clean.clone();
            bytes[offsets[0] as usize + 4 + if bit == 0x80 { 0 } else { 3 }] ^= bit;
            assert_refused_untouched(&path, &bytes, offsets[0]);
        }
    }

    /// Every single-bit flip in the header or in any frame but the last is
    /// refused, and the file stays as it was. (A flip in the last frame
    /// looks exactly like a torn write.)
    #[test]
    fn any_flipped_bit_before_the_last_frame_refuses_to_open() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let offsets = log_with(&path, &[b"a", b"bb", &[3u8; 40], b"last"]);
        let clean = ok(std::fs::read(&path));
        for byte in 0..offsets[3] as usize {
            for bit in 0..8 {
                let mut bytes = clean.clone();
                bytes[byte] ^= 1 << bit;
                ok(std::fs::write(&path, &bytes));
                let result = open(&path);
                let Err(WalError::Damaged { offset, .. }) = result else {
                    panic!("flip at byte {byte} bit {bit}: {:?}", result.err());
                };
                let frame_start = offsets.iter().rev().find(|o| **o as usize <= byte);
                assert_eq!(offset, frame_start.copied().unwrap_or(0), "byte {byte}");
                assert_eq!(ok(std::fs::read(&path)), bytes, "byte {byte} bit {bit}");
            }
        }
    }

    /// A frame cut out whole leaves frames that verify, but the sequence
    /// numbers show the gap.
    #[test]
    fn a_frame_missing_from_the_middle_refuses_to_open() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let offsets = log_with(&path, &[b"zero", b"one", b"two"]);
        let clean = ok(std::fs::read(&path));
        let mut bytes = clean[..offsets[1] as usize].to_vec();
        bytes.extend_from_slice(&clean[offsets[2] as usize..]);
        assert_refused_untouched(&path, &bytes, offsets[1]);
    }

    #[test]
    fn frames_of_an_earlier_generation_are_never_replayed() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let (mut wal, _) = ok(open(&path));
        ok(wal.append(b"old"));
        let old = ok(std::fs::read(&path));
        ok(wal.reset());
        drop(wal);
        // Old frames under the new header (as if the truncation had been
        // lost): not this generation, so not replayed, and cut off.
        let mut bytes = ok(std::fs::read(&path));
        bytes.extend_from_slice(&old[HEADER_LEN as usize..]);
        ok(std::fs::write(&path, &bytes));
        let (_, frames) = ok(open(&path));
        assert!(frames.is_empty());
        assert_eq!(ok(std::fs::metadata(&path)).len(), HEADER_LEN);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        ok(std::fs::write(
            &path,
            b"not a log at all, and longer than a header",
        ));
        assert!(matches!(open(&path), Err(WalError::BadHeader { .. })));
    }

    #[test]
    fn an_interrupted_header_write_starts_the_log_afresh() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        for torn in [vec![0u8; 24], MAGIC[..5].to_vec(), {
            let mut h = header(7).to_vec();
            h[12] ^= 4;
            h
        }] {
            ok(std::fs::write(&path, &torn));
            let (mut wal, frames) = ok(open(&path));
            assert!(frames.is_empty());
            ok(wal.append(b"x"));
            drop(wal);
            assert_eq!(ok(open(&path)).1, vec![b"x".to_vec()]);
        }
    }

    fn v1_log(generation: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&generation.to_be_bytes());
        for p in payloads {
            let mut h = crc32fast::Hasher::new();
            h.update(&generation.to_be_bytes());
            h.update(p);
            bytes.extend_from_slice(&(p.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&h.finalize().to_be_bytes());
            bytes.extend_from_slice(p);
        }
        bytes
    }

    #[test]
    fn a_format_1_log_is_replayed_then_rewritten_as_format_2() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        ok(std::fs::write(&path, v1_log(4, &[b"one", b"two"])));
        let (mut wal, frames) = ok(open(&path));
        assert_eq!(frames, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(
            wal.append(b"x").is_err(),
            "nothing appended before the reset"
        );
        ok(wal.reset());
        ok(wal.append(b"three"));
        drop(wal);
        assert_eq!(ok(open(&path)).1, vec![b"three".to_vec()]);
        // An empty format-1 log (a clean shutdown) is upgraded at once.
        ok(std::fs::write(&path, v1_log(9, &[])));
        let (mut wal, frames) = ok(open(&path));
        assert!(frames.is_empty());
        ok(wal.append(b"y"));
        assert_eq!(&ok(std::fs::read(&path))[..8], MAGIC);
    }

    #[test]
    fn a_format_1_log_that_does_not_verify_to_its_end_is_refused_untouched() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let mut bytes = v1_log(4, &[b"one", b"two"]);
        bytes[HEADER_LEN_V1 + FRAME_HEADER_LEN_V1] ^= 1;
        ok(std::fs::write(&path, &bytes));
        assert!(matches!(
            open(&path),
            Err(WalError::OldFormatDamaged { offset: 16, .. })
        ));
        assert_eq!(ok(std::fs::read(&path)), bytes);
    }
}
