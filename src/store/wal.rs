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
//! File layout: a 16-byte header, `MAGIC` then the generation (u64 BE),
//! then frames: payload length (u32 BE), CRC-32 (u32 BE) over the
//! generation and the payload, payload. [`Wal::reset`] bumps the generation,
//! so frames left over from an earlier generation fail their check and are
//! never replayed. Reading stops at the first frame that is cut short or
//! fails its check: that is the tail a crash interrupted, and nothing in it
//! was acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FVWAL\x00\x00\x01";
const HEADER_LEN: u64 = 16;
const FRAME_HEADER_LEN: usize = 8;
/// A frame larger than this is corrupt, not a real write.
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a fieldvault write-ahead log (bad header)")]
    BadHeader { path: String },
}

pub(crate) struct Wal {
    path: PathBuf,
    file: File,
    generation: u64,
    /// Where the next frame goes.
    end: u64,
}

fn crc(generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_be_bytes());
    h.update(payload);
    h.finalize()
}

impl Wal {
    /// Opens (or creates) the log and returns it with the payload of every
    /// intact frame of the current generation, oldest first. The caller
    /// applies them, checkpoints, and calls [`Wal::reset`].
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<Vec<u8>>), WalError> {
        let io = |source| WalError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.is_empty() {
            let mut wal = Self {
                path: path.to_path_buf(),
                file,
                generation: 0,
                end: HEADER_LEN,
            };
            wal.reset()?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            return Ok((wal, Vec::new()));
        }
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return Err(WalError::BadHeader {
                path: path.display().to_string(),
            });
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[8..16]);
        let generation = u64::from_be_bytes(generation);
        let mut frames = Vec::new();
        let mut at = HEADER_LEN as usize;
        while let Some(head) = bytes.get(at..at + FRAME_HEADER_LEN) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let sum = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let start = at + FRAME_HEADER_LEN;
            let Some(payload) = bytes.get(start..start + len).filter(|_| len <= MAX_FRAME) else {
                break;
            };
            if crc(generation, payload) != sum {
                break;
            }
            frames.push(payload.to_vec());
            at = start + len;
        }
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                ignored_bytes = bytes.len() - at,
                "write-ahead log ends in an interrupted write; it was never acknowledged"
            );
            // Cut the interrupted write off, so that the frames appended
            // next are not followed by its leftovers.
            file.set_len(at as u64)
                .and_then(|()| file.sync_all())
                .map_err(io)?;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                generation,
                end: at as u64,
            },
            frames,
        ))
    }

    fn io(&self, source: std::io::Error) -> WalError {
        WalError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Appends one frame and makes it durable (`fdatasync`).
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_FRAME)
            .ok_or_else(|| self.io(std::io::Error::other("frame too large")))?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&crc(self.generation, payload).to_be_bytes());
        frame.extend_from_slice(payload);
        self.file
            .write_all_at(&frame, self.end)
            .map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.end += frame.len() as u64;
        Ok(())
    }

    /// Bytes of frames since the last reset.
    pub(crate) fn len(&self) -> u64 {
        self.end - HEADER_LEN
    }

    /// Empties the log. Call only once everything logged is durable
    /// elsewhere (the checkpoint). The new generation is written first, so a
    /// crash part-way leaves old frames that no longer pass their check.
    pub(crate) fn reset(&mut self) -> Result<(), WalError> {
        let generation = self.generation + 1;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_be_bytes());
        self.file
            .write_all_at(&header, 0)
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.file.set_len(HEADER_LEN))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| self.io(e))?;
        self.generation = generation;
        self.end = HEADER_LEN;
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn frames_come_back_after_reopening_until_a_reset() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        {
            let (mut wal, frames) = ok(Wal::open(&path));
            assert!(frames.is_empty());
            ok(wal.append(b"one"));
            ok(wal.append(b""));
            ok(wal.append(&[7u8; 5000]));
        }
        let (mut wal, frames) = ok(Wal::open(&path));
        assert_eq!(frames, vec![b"one".to_vec(), Vec::new(), vec![7u8; 5000]]);
        ok(wal.reset());
        ok(wal.append(b"two"));
        drop(wal);
        let (_, frames) = ok(Wal::open(&path));
        assert_eq!(frames, vec![b"two".to_vec()]);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_dropped_and_the_rest_kept() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        {
            let (mut wal, _) = ok(Wal::open(&path));
            ok(wal.append(b"kept"));
            ok(wal.append(b"torn frame"));
        }
        let full = ok(std::fs::read(&path));
        // Cut the last frame short, as a crash mid-write would.
        ok(std::fs::write(&path, &full[..full.len() - 3]));
        let (mut wal, frames) = ok(Wal::open(&path));
        assert_eq!(frames, vec![b"kept".to_vec()]);
        // The interrupted write is cut off, and new frames go where the
        // intact part ends.
        let intact = HEADER_LEN as usize + FRAME_HEADER_LEN + b"kept".len();
        assert_eq!(ok(std::fs::metadata(&path)).len(), intact as u64);
        ok(wal.append(b"next"));
        drop(wal);
        let (_, frames) = ok(Wal::open(&path));
        assert_eq!(frames, vec![b"kept".to_vec(), b"next".to_vec()]);
        // A flipped payload byte fails the check: that frame and all after it go.
        let mut bytes = ok(std::fs::read(&path));
        bytes[HEADER_LEN as usize + FRAME_HEADER_LEN] ^= 1;
        ok(std::fs::write(&path, &bytes));
        let (_, frames) = ok(Wal::open(&path));
        assert!(frames.is_empty());
    }

    #[test]
    fn frames_of_an_earlier_generation_are_never_replayed() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        let (mut wal, _) = ok(Wal::open(&path));
        ok(wal.append(b"old"));
        let old = ok(std::fs::read(&path));
        ok(wal.reset());
        drop(wal);
        // A crash after the new header was written but before the file was
        // truncated: the old frame is still there, under the new header.
        let mut bytes = ok(std::fs::read(&path));
        bytes.extend_from_slice(&old[HEADER_LEN as usize..]);
        ok(std::fs::write(&path, &bytes));
        let (_, frames) = ok(Wal::open(&path));
        assert!(frames.is_empty());
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("wal");
        ok(std::fs::write(&path, b"not a log at all"));
        assert!(matches!(Wal::open(&path), Err(WalError::BadHeader { .. })));
    }
}
