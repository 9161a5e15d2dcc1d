//! Backups: a consistent snapshot of the whole store as one byte stream in
//! a logical, versioned format (not a copy of sled's files), and the
//! restore of such a stream into a data dir that holds no store yet.
//!
//! What travels: every table of the store, entry by entry, as the store
//! keeps it — records sealed under their data keys, the data, index, token
//! and audit keys wrapped under the master key, the blind index, the
//! deterministic mappings, and `meta` (the sequence ceiling and every epoch
//! that handed out ids, key lifecycle facts, job states, abuse counters,
//! freezes, canaries). The master key never travels, so a backup is as
//! safe at rest as the store itself, and useless without the master key.
//!
//! # Format, version 1
//!
//! Integers are big-endian.
//!
//! ```text
//! backup  = header table* end digest
//! header  = "FVBACKUP" (8) ‖ format version (u32, = 1) ‖ created (u64, ms since the Unix epoch)
//! table   = 'T' (0x54) ‖ name length (u8) ‖ name (UTF-8) ‖ entry* ‖ 'E' (0x45) ‖ entries (u64)
//! entry   = 'K' (0x4B) ‖ key length (u32) ‖ key ‖ value length (u32) ‖ value
//! end     = 'Z' (0x5A) ‖ tables (u32) ‖ records (u64: the entries of table `records`)
//! digest  = SHA-256 of every byte before it (32)
//! ```
//!
//! A table's entries are in ascending key order; a table appears at most
//! once; a table the reader does not know is refused (a newer version's
//! backup), a known table that is absent is empty (an older version's
//! backup). Keys and values are the store's own encodings (see
//! [`layout`](super::layout)): backend-neutral tables of opaque bytes, which
//! any backend maps to its own storage. Left out: `meta`'s key-version
//! counters (`counts`), which are derived; the restored store counts again
//! when it first opens.
//!
//! Consistency: the snapshot is taken on the commit thread once every
//! logged group is applied, so it holds every write acknowledged before
//! the backup started and no half of a group; writes wait meanwhile (each
//! table goes to an unlinked temporary file beside the store, on a thread
//! of its own; the snapshot is then streamed from them without holding
//! writes).

use super::layout::COUNTS_KEY;
use super::{SledConfig, SledStore, StorageFailure, Store, StoreError};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every backup.
pub const MAGIC: &[u8; 8] = b"FVBACKUP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Every table of the store, in the order a backup holds them. A tree the
/// store adds goes here (one line) or backups refuse to be taken (see
/// [`write_snapshot`]).
pub(crate) const TABLES: &[&str] = &[
    "keys",
    "meta",
    "records",
    "blind_index",
    "deterministic",
    "expiry",
];

/// The table whose entries a backup counts as records.
const RECORDS: &str = "records";

const TABLE: u8 = b'T';
const ENTRY: u8 = b'K';
const TABLE_END: u8 = b'E';
const END: u8 = b'Z';
const DIGEST_LEN: usize = 32;

/// The longest key or value a backup entry may carry: far above anything
/// the store writes (a record is about 100 bytes, a job state a few), so a
/// damaged length is refused instead of allocated.
const MAX_ENTRY_BYTES: u32 = 16 << 20;

/// sled's own tree, which the store never writes.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

/// Whether an entry is derived and left out of backups.
fn left_out(table: &str, key: &[u8]) -> bool {
    table == "meta" && key == COUNTS_KEY
}

/// A snapshot of the whole store in the backup format, ready to be read
/// (in chunks, with [`Read`]): its header, each table from an unlinked
/// temporary file, its end marker, then the SHA-256 of all of them,
/// computed as they are read.
pub struct Snapshot {
    /// What is left to read, in order.
    parts: std::collections::VecDeque<Part>,
    hasher: Sha256,
    digest: Option<([u8; DIGEST_LEN], usize)>,
    records: u64,
    bytes: u64,
    created_unix_ms: u64,
}

/// A piece of a snapshot's bytes.
enum Part {
    Bytes(Vec<u8>, usize),
    File(File, u64),
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("records", &self.records)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Records in the snapshot.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The whole backup's length in bytes, checksum included.
    pub fn size(&self) -> u64 {
        self.bytes
    }

    pub fn created_unix_ms(&self) -> u64 {
        self.created_unix_ms
    }
}

impl Read for Snapshot {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(part) = self.parts.front_mut() {
            let n = match part {
                Part::Bytes(bytes, at) => {
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    n
                }
                Part::File(file, left) => {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = if want == 0 {
                        0
                    } else {
                        file.read(&mut buf[..want])?
                    };
                    if n == 0 && *left > 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "a backup's temporary file is shorter than written",
                        ));
                    }
                    *left -= n as u64;
                    n
                }
            };
            if n == 0 {
                self.parts.pop_front();
                continue;
            }
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let hasher = &self.hasher;
        let (digest, at) = self
            .digest
            .get_or_insert_with(|| (hasher.clone().finalize().into(), 0));
        let n = buf.len().min(DIGEST_LEN - *at);
        buf[..n].copy_from_slice(&digest[*at..*at + n]);
        *at += n;
        Ok(n)
    }
}

/// New temporary files in `dir`, one for each table of [`TABLES`],
/// readable by their owner only, already unlinked (a crash leaves nothing
/// behind; their space is freed when the snapshot is dropped).
pub(super) fn temp_files(dir: &Path) -> Result<Vec<File>, StoreError> {
    TABLES.iter().map(|_| temp_file(dir)).collect()
}

fn temp_file(dir: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!(".backup-{}.tmp", uuid::Uuid::new_v4()));
    let failed = |doing: &str, e: &std::io::Error| {
        StoreError::Backend(StorageFailure::io(
            format!("{doing} {} for a backup", path.display()),
            e,
        ))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| failed("creating", &e))?;
    std::fs::remove_file(&path).map_err(|e| failed("unlinking", &e))?;
    Ok(file)
}

fn now_unix_ms() -> u64 {
    crate::audit::now_unix_ms()
}

fn write_failed(e: std::io::Error) -> StoreError {
    StoreError::Backend(StorageFailure::io("writing a backup's temporary file", &e))
}

fn read_failed(e: sled::Error) -> StoreError {
    StoreError::Backend(super::layout::sled_failure(
        "reading the store for a backup",
        &e,
    ))
}

/// Writes one table (from its marker to its end marker) to `file`;
/// returns the file at its start, its length and the table's entries.
fn write_table(tree: &sled::Tree, table: &str, file: File) -> Result<(File, u64, u64), StoreError> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&[TABLE, table.len() as u8])
        .map_err(write_failed)?;
    out.write_all(table.as_bytes()).map_err(write_failed)?;
    let mut entries: u64 = 0;
    let mut entry = Vec::with_capacity(256);
    for item in tree.iter() {
        let (key, value) = item.map_err(read_failed)?;
        if left_out(table, &key) {
            continue;
        }
        entry.clear();
        entry.push(ENTRY);
        entry.extend_from_slice(&(key.len() as u32).to_be_bytes());
        entry.extend_from_slice(&key);
        entry.extend_from_slice(&(value.len() as u32).to_be_bytes());
        entry.extend_from_slice(&value);
        out.write_all(&entry).map_err(write_failed)?;
        entries += 1;
    }
    out.write_all(&[TABLE_END]).map_err(write_failed)?;
    out.write_all(&entries.to_be_bytes())
        .map_err(write_failed)?;
    let mut file = out.into_inner().map_err(|e| write_failed(e.into_error()))?;
    let len = file.stream_position().map_err(write_failed)?;
    file.rewind().map_err(write_failed)?;
    Ok((file, len, entries))
}

/// Writes every table of `db` in the backup format, each table to one of
/// `files` ([`temp_files`]) on a thread of its own (the trees take
/// concurrent reads), all but the digest, which [`Snapshot`] adds as it is
/// read. Run on the commit thread with every logged group applied: nothing
/// changes meanwhile.
///
/// Refused: a non-empty tree that [`TABLES`] does not name (a tree added
/// to the store but not to backups), so no backup silently leaves data
/// out.
pub(super) fn write_snapshot(db: &sled::Db, files: Vec<File>) -> Result<Snapshot, StoreError> {
    for name in db.tree_names() {
        let known = std::str::from_utf8(&name).is_ok_and(|n| TABLES.contains(&n));
        if known {
            continue;
        }
        let tree = db.open_tree(&name).map_err(read_failed)?;
        if !tree.is_empty() && name.as_ref() != SLED_DEFAULT_TREE {
            return Err(StoreError::Backend(StorageFailure::internal(format!(
                "the store has a tree `{}` that backups do not know: add it to \
                 store::backup::TABLES",
                String::from_utf8_lossy(&name)
            ))));
        }
    }
    if files.len() != TABLES.len() {
        return Err(StoreError::Backend(StorageFailure::internal(
            "a backup needs one temporary file per table",
        )));
    }
    let trees = TABLES
        .iter()
        .map(|t| db.open_tree(t).map_err(read_failed))
        .collect::<Result<Vec<_>, _>>()?;
    let created_unix_ms = now_unix_ms();
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    header.extend_from_slice(&created_unix_ms.to_be_bytes());
    let written: Vec<Result<(File, u64, u64), StoreError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = TABLES
            .iter()
            .zip(&trees)
            .zip(files)
            .map(|((table, tree), file)| scope.spawn(move || write_table(tree, table, file)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(StoreError::Backend(StorageFailure::internal(
                        "a backup thread panicked",
                    )))
                })
            })
            .collect()
    });
    let mut parts = std::collections::VecDeque::with_capacity(TABLES.len() + 2);
    let mut bytes = header.len() as u64;
    parts.push_back(Part::Bytes(header, 0));
    let mut records = 0;
    for (table, result) in TABLES.iter().zip(written) {
        let (file, len, entries) = result?;
        if *table == RECORDS {
            records = entries;
        }
        bytes += len;
        parts.push_back(Part::File(file, len));
    }
    let mut end = vec![END];
    end.extend_from_slice(&(TABLES.len() as u32).to_be_bytes());
    end.extend_from_slice(&records.to_be_bytes());
    bytes += end.len() as u64 + DIGEST_LEN as u64;
    parts.push_back(Part::Bytes(end, 0));
    Ok(Snapshot {
        parts,
        hasher: Sha256::new(),
        digest: None,
        records,
        bytes,
        created_unix_ms,
    })
}

/// Why a backup does not read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading it failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("it is not a fieldvault backup (it does not start with FVBACKUP)")]
    NotABackup,
    #[error(
        "its format version is {found}; this build reads version {FORMAT_VERSION}: restore it \
         with the fieldvault version that made it, or a newer one"
    )]
    UnknownVersion { found: u32 },
    #[error("it is truncated: it ends at byte {offset}, in {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("it is damaged at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error(
        "it is damaged: its SHA-256 checksum ({stored}) does not match its contents ({actual})"
    )]
    Checksum { stored: String, actual: String },
    #[error("it has bytes after its checksum (from byte {offset}): damaged, or files joined")]
    TrailingBytes { offset: u64 },
    #[error(
        "it holds a table `{name}` this build does not know (made by a newer version?): \
         restore it with the fieldvault version that made it"
    )]
    UnknownTable { name: String },
    /// The entries could not be written where they were going.
    #[error("{0}")]
    Sink(String),
}

/// What a backup holds, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub format_version: u32,
    pub created_unix_ms: u64,
    /// Each table in the backup, with its entries.
    pub tables: Vec<(String, u64)>,
    pub records: u64,
    /// The whole backup's length, checksum included.
    pub bytes: u64,
    /// Its SHA-256 checksum, in hex.
    pub sha256: String,
}

/// Reads through `inner`, hashing and counting what it reads.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    offset: u64,
}

impl<R: Read> Hashing<R> {
    /// Exactly `buf.len()` bytes (hashed), or `Truncated` naming `what`.
    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
        self.unhashed(buf, what)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn unhashed(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(BackupError::Truncated {
                        offset: self.offset + got as u64,
                        what,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackupError::Read(e)),
            }
        }
        self.offset += got as u64;
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BackupError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BackupError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BackupError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A length-prefixed key or value.
    fn bytes(&mut self, what: &'static str, into: &mut Vec<u8>) -> Result<(), BackupError> {
        let at = self.offset;
        let len = self.u32(what)?;
        if len > MAX_ENTRY_BYTES {
            return Err(BackupError::Malformed {
                offset: at,
                reason: format!("{what} length {len} is over the {MAX_ENTRY_BYTES} bytes allowed"),
            });
        }
        into.resize(len as usize, 0);
        self.exact(into, what)
    }
}

/// Reads a whole backup from `from`, handing each entry to `entry` (table,
/// key, value) as it goes, and checks it: structure, counts, checksum, and
/// nothing after it. Entries are handed over before the checksum is
/// checked at the end: a caller that stores them keeps them apart until
/// this returns `Ok`.
pub fn read_backup<R: Read>(
    from: R,
    mut entry: impl FnMut(&str, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<Summary, BackupError> {
    let mut r = Hashing {
        inner: from,
        hasher: Sha256::new(),
        offset: 0,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic, "the header")?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let version = r.u32("the header")?;
    if version != FORMAT_VERSION {
        return Err(BackupError::UnknownVersion { found: version });
    }
    let created_unix_ms = r.u64("the header")?;
    let mut tables: Vec<(String, u64)> = Vec::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    loop {
        let at = r.offset;
        match r.u8("a table or the end marker (the end marker and checksum are missing)")? {
            TABLE => {
                let len = r.u8("a table name")?;
                let mut name = vec![0u8; usize::from(len)];
                r.exact(&mut name, "a table name")?;
                let name = match String::from_utf8(name) {
                    Ok(name) if name.chars().all(|c| c.is_ascii_graphic()) => name,
                    _ => {
                        return Err(BackupError::Malformed {
                            offset: at,
                            reason: "a table name is not a name".into(),
                        })
                    }
                };
                if !TABLES.contains(&name.as_str()) {
                    return Err(BackupError::UnknownTable { name });
                }
                if tables.iter().any(|(t, _)| *t == name) {
                    return Err(BackupError::Malformed {
                        offset: at,
                        reason: format!("table `{name}` appears twice"),
                    });
                }
                let mut count: u64 = 0;
                loop {
                    let at = r.offset;
                    match r.u8("a table's entries (its end marker is missing)")? {
                        ENTRY => {
                            r.bytes("an entry's key", &mut key)?;
                            r.bytes("an entry's value", &mut value)?;
                            entry(&name, &key, &value)?;
                            count += 1;
                        }
                        TABLE_END => {
                            let stated = r.u64("a table's end marker")?;
                            if stated != count {
                                return Err(BackupError::Malformed {
                                    offset: at,
                                    reason: format!(
                                        "table `{name}` says it has {stated} entries, and has \
                                         {count}"
                                    ),
                                });
                            }
                            break;
                        }
                        other => {
                            return Err(BackupError::Malformed {
                                offset: at,
                                reason: format!(
                                    "0x{other:02x} is neither an entry nor a table end"
                                ),
                            })
                        }
                    }
                }
                tables.push((name, count));
            }
            END => {
                let stated_tables = r.u32("the end marker")?;
                let stated_records = r.u64("the end marker")?;
                let records = tables
                    .iter()
                    .find(|(t, _)| t == RECORDS)
                    .map_or(0, |(_, n)| *n);
                if stated_tables as usize != tables.len() || stated_records != records {
                    return Err(BackupError::Malformed {
                        offset: at,
                        reason: format!(
                            "the end marker says {stated_tables} tables and {stated_records} \
                             records; the backup has {} and {records}",
                            tables.len()
                        ),
                    });
                }
                let actual: [u8; DIGEST_LEN] = r.hasher.clone().finalize().into();
                let mut stored = [0u8; DIGEST_LEN];
                r.unhashed(&mut stored, "the checksum")?;
                if stored != actual {
                    return Err(BackupError::Checksum {
                        stored: hex::encode(stored),
                        actual: hex::encode(actual),
                    });
                }
                let mut more = [0u8; 1];
                if r.unhashed(&mut more, "").is_ok() {
                    return Err(BackupError::TrailingBytes {
                        offset: r.offset - 1,
                    });
                }
                return Ok(Summary {
                    format_version: version,
                    created_unix_ms,
                    tables,
                    records,
                    bytes: r.offset,
                    sha256: hex::encode(actual),
                });
            }
            other => {
                return Err(BackupError::Malformed {
                    offset: at,
                    reason: format!("0x{other:02x} is neither a table nor the end marker"),
                })
            }
        }
    }
}

/// Checks the backup file at `path` whole (as [`restore`] will), changing
/// nothing.
pub fn verify(path: &Path) -> Result<Summary, BackupError> {
    let file = File::open(path).map_err(BackupError::Read)?;
    read_backup(
        std::io::BufReader::with_capacity(1 << 20, file),
        |_, _, _| Ok(()),
    )
}

/// Why a restore was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "{path} already holds a store: a backup is restored only where there is none (stop the \
         server and move that store away, or restore into a new data dir); nothing was changed"
    )]
    StoreExists { path: String },
    #[error("the backup {path} was not restored: {error}; nothing was changed")]
    Backup { path: String, error: BackupError },
    #[error("{doing}: {error}; nothing was changed")]
    Io {
        doing: String,
        #[source]
        error: std::io::Error,
    },
    #[error("the restored store does not open: {0}; nothing was changed")]
    Store(StoreError),
    #[error(
        "the restored store fails its integrity check ({} problem(s), the first: {}); nothing \
         was changed",
        .0.len(),
        .0.first().map_or("", String::as_str)
    )]
    Integrity(Vec<String>),
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub store_dir: PathBuf,
    pub summary: Summary,
}

fn io(doing: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |error| RestoreError::Io {
        doing: doing.to_string(),
        error,
    }
}

/// Whether `dir` holds anything (a store, or the remains of one).
fn holds_anything(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(format!("reading {}", dir.display()))(e)),
    }
}

/// sled's page cache while restoring.
const RESTORE_CACHE_BYTES: u64 = 64 << 20;

fn sled_config(path: &Path) -> SledConfig {
    SledConfig {
        path: path.to_owned(),
        cache_capacity_bytes: RESTORE_CACHE_BYTES,
        max_queued_writes: super::DEFAULT_MAX_QUEUED_WRITES,
    }
}

/// sled at `path` directly (not through the store), for loading tables:
/// a store just closed may hold sled's lock a moment longer, so a lock
/// conflict is retried (at most 100 times, 20 ms apart).
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(RESTORE_CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if tries < 100 && e.to_string().starts_with("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(super::layout::backend),
        }
    }
}

const HEADER_LEN: u64 = 8 + 4 + 8;

/// Refuses a file that is no backup, or of another format version, from
/// its header alone; leaves the file at its start.
fn check_header(file: &mut File) -> Result<(), BackupError> {
    let head = read_backup(Read::take(&mut *file, HEADER_LEN), |_, _, _| Ok(()));
    file.rewind().map_err(BackupError::Read)?;
    match head {
        Err(BackupError::Truncated { offset, .. }) if offset >= HEADER_LEN => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// Restores the backup at `backup` as the store of `data_dir` (its
/// `store/`), which must not hold one; certificates, keys, policy and
/// other files there are left alone (`data_dir` is made, 0700, if it does
/// not exist).
///
/// The store is built in a temporary directory beside it, opened as the
/// server would open it and checked (integrity check), then renamed into
/// place: a refusal — a store already there, a backup that is damaged,
/// truncated or of an unknown format version — changes nothing.
///
/// The restored store opens with the master key of the store backed up.
/// Its ids stay apart from any the original handed out after the backup:
/// the store records every epoch that handed out ids, and the next start
/// takes a new one.
pub async fn restore(backup: &Path, data_dir: &Path) -> Result<Restored, RestoreError> {
    let store_dir = crate::config::Config::store_dir_in(data_dir);
    if holds_anything(&store_dir)? {
        return Err(RestoreError::StoreExists {
            path: store_dir.display().to_string(),
        });
    }
    let backup_failed = |error| RestoreError::Backup {
        path: backup.display().to_string(),
        error,
    };
    // The header first: a file that is no backup, or of another version,
    // is refused before anything is made.
    let mut file = File::open(backup).map_err(|e| backup_failed(BackupError::Read(e)))?;
    check_header(&mut file).map_err(backup_failed)?;
    let made_data_dir = !data_dir.exists();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(data_dir)
        .map_err(io(format!("creating {}", data_dir.display())))?;
    let temp = data_dir.join(format!(".store-restore-{}", uuid::Uuid::new_v4()));
    let result = build(file, &temp, backup).await;
    let result = match result {
        Ok(summary) => place(&temp, &store_dir, data_dir).map(|()| summary),
        Err(e) => Err(e),
    };
    match result {
        Ok(summary) => Ok(Restored { store_dir, summary }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            if made_data_dir {
                let _ = std::fs::remove_dir(data_dir);
            }
            Err(e)
        }
    }
}

/// Builds the restored store in `temp`: a new store (its files and log,
/// as the server makes them), the backup's tables loaded into it, then
/// opened as the server opens it (which counts the key versions again) and
/// checked.
async fn build(file: File, temp: &Path, backup: &Path) -> Result<Summary, RestoreError> {
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(temp)
        .map_err(io(format!("creating {}", temp.display())))?;
    drop(SledStore::open(&sled_config(temp)).map_err(RestoreError::Store)?);
    let summary = {
        let db = open_sled(temp).map_err(RestoreError::Store)?;
        // The new store's counters: the backup's tables replace them.
        db.open_tree("meta")
            .and_then(|meta| meta.remove(COUNTS_KEY))
            .map_err(|e| RestoreError::Store(super::layout::backend(e)))?;
        let mut trees: Vec<(&str, sled::Tree)> = Vec::new();
        let summary = read_backup(
            std::io::BufReader::with_capacity(1 << 20, file),
            |table, key, value| {
                let tree = match trees.iter().find(|(t, _)| *t == table) {
                    Some((_, tree)) => tree,
                    None => {
                        let name =
                            TABLES
                                .iter()
                                .copied()
                                .find(|t| *t == table)
                                .ok_or_else(|| BackupError::UnknownTable {
                                    name: table.to_owned(),
                                })?;
                        let tree = db
                            .open_tree(name)
                            .map_err(|e| BackupError::Sink(e.to_string()))?;
                        trees.push((name, tree));
                        &trees[trees.len() - 1].1
                    }
                };
                if left_out(table, key) {
                    return Ok(());
                }
                tree.insert(key, value)
                    .map(|_| ())
                    .map_err(|e| BackupError::Sink(format!("writing the restored store: {e}")))
            },
        )
        .map_err(|error| RestoreError::Backup {
            path: backup.display().to_string(),
            error,
        })?;
        db.flush()
            .map_err(|e| RestoreError::Store(super::layout::backend(e)))?;
        summary
    };
    let store = SledStore::reopen(&sled_config(temp)).map_err(RestoreError::Store)?;
    let report = store.check_integrity().await.map_err(RestoreError::Store)?;
    drop(store);
    if !report.problems.is_empty() {
        return Err(RestoreError::Integrity(report.problems));
    }
    Ok(summary)
}

/// Moves the built store into place, durably: its files synced, the
/// rename, the data dir synced.
fn place(temp: &Path, store_dir: &Path, data_dir: &Path) -> Result<(), RestoreError> {
    let sync_dir = |dir: &Path| {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("fsync of {}", dir.display())))
    };
    sync_dir(temp)?;
    // Checked again: a store may have been made meanwhile.
    if holds_anything(store_dir)? {
        return Err(RestoreError::StoreExists {
            path: store_dir.display().to_string(),
        });
    }
    std::fs::rename(temp, store_dir).map_err(io(format!(
        "moving the restored store to {}",
        store_dir.display()
    )))?;
    sync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::crypto::{KeyPurpose, KeyVersion};
    use crate::domain::{FieldKind, RecordId};
    use crate::store::fixtures::{index, new_record as new, ok, record, wrapped};
    use crate::store::{Canary, Freeze, NewRecord};

    fn open(dir: &Path) -> SledStore {
        ok(SledStore::reopen(&SledConfig {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: crate::store::DEFAULT_MAX_QUEUED_WRITES,
        }))
    }

    /// A store with keys, random and deterministic records, a canary, a
    /// freeze and a counter; its record ids.
    async fn filled(dir: &Path) -> (SledStore, Vec<RecordId>) {
        let store = open(dir);
        ok(store
            .insert_keys(vec![
                wrapped(KeyPurpose::Data, 7),
                wrapped(KeyPurpose::Index, 1),
                wrapped(KeyPurpose::Token, 1),
            ])
            .await);
        let ids = ok(store.allocate(5).await);
        ok(store
            .insert_records(vec![
                new(ids[0], FieldKind::Phone, 1, false),
                new(ids[1], FieldKind::Phone, 1, false),
                new(ids[2], FieldKind::Email, 2, true),
                new(ids[3], FieldKind::Address, 3, false),
            ])
            .await);
        ok(store
            .add_canaries(vec![Canary {
                id: ids[4],
                kind: FieldKind::Phone,
                created_unix_ms: 5,
                by: "spiffe://fieldvault.dev/admin".into(),
            }])
            .await);
        ok(store
            .freeze(Freeze {
                caller: "spiffe://fieldvault.dev/intruder".into(),
                since_unix_ms: 6,
                reason: "canary".into(),
                by: "vault".into(),
            })
            .await);
        (store, ids[..4].to_vec())
    }

    async fn backup_bytes(store: &SledStore) -> Vec<u8> {
        let mut snapshot = ok(store.snapshot().await);
        let mut bytes = Vec::new();
        ok(snapshot.read_to_end(&mut bytes));
        assert_eq!(bytes.len() as u64, snapshot.size());
        bytes
    }

    fn write_file(path: &Path, bytes: &[u8]) {
        ok(std::fs::write(path, bytes));
    }

    /// Every file under `dir`, with its bytes: what a refusal must leave.
    fn tree_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for entry in entries {
            let path = ok(entry).path();
            if path.is_dir() {
                out.push((path.clone(), Vec::new()));
                out.extend(tree_of(&path));
            } else {
                out.push((path.clone(), ok(std::fs::read(&path))));
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_restored_store_holds_every_table_of_the_backup_and_passes_its_integrity_check() {
        let tmp = ok(tempfile::tempdir());
        let (store, ids) = filled(&tmp.path().join("live")).await;
        let bytes = backup_bytes(&store).await;
        let (keys, usage, canaries, freezes, counters) = (
            ok(store.keys().await),
            store.key_usage(),
            ok(store.canaries().await),
            ok(store.freezes().await),
            ok(store.counters().await),
        );
        let originals = ok(store.get_records(ids.clone()).await);
        drop(store);
        let file = tmp.path().join("backup.fvb");
        write_file(&file, &bytes);
        let summary = ok(verify(&file));
        assert_eq!(summary.records, 4);
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(
            summary
                .tables
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>(),
            TABLES
        );
        let data_dir = tmp.path().join("restored");
        let restored = ok(restore(&file, &data_dir).await);
        assert_eq!(restored.summary, summary);
        assert_eq!(restored.store_dir, data_dir.join("store"));
        let store = open(&restored.store_dir);
        assert_eq!(ok(store.keys().await), keys);
        assert_eq!(store.key_usage(), usage, "counted again at open");
        assert_eq!(ok(store.canaries().await), canaries);
        assert_eq!(ok(store.freezes().await), freezes);
        assert_eq!(ok(store.counters().await), counters);
        let read = ok(store.get_records(ids.clone()).await);
        for (a, b) in read.iter().zip(&originals) {
            assert_eq!(
                format!("{:?}", a.as_ref().ok()),
                format!("{:?}", b.as_ref().ok())
            );
            assert!(matches!(a, Ok(Some(_))));
        }
        assert_eq!(ok(store.records_by_index(index(1)).await).len(), 2);
        assert_eq!(ok(store.records_by_index(index(2)).await), vec![ids[2]]);
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 4);
        // The restored store takes writes; a deterministic value keeps its
        // token.
        let [fresh]: [RecordId; 1] = ok(store.allocate(1).await).try_into().unwrap();
        assert_eq!(
            ok(store
                .insert_records(vec![new(fresh, FieldKind::Email, 2, true)])
                .await),
            vec![ids[2]]
        );
    }

    #[tokio::test]
    async fn a_restored_store_never_hands_out_an_id_the_original_issued_after_the_backup() {
        let tmp = ok(tempfile::tempdir());
        let (store, ids) = filled(&tmp.path().join("live")).await;
        let bytes = backup_bytes(&store).await;
        let [after]: [RecordId; 1] = ok(store.allocate(1).await).try_into().unwrap();
        ok(store
            .insert_records(vec![new(after, FieldKind::Phone, 9, false)])
            .await);
        drop(store);
        let file = tmp.path().join("backup.fvb");
        write_file(&file, &bytes);
        let restored = ok(restore(&file, &tmp.path().join("restored")).await);
        let store = open(&restored.store_dir);
        assert!(store.knows_epoch(ids[0].epoch));
        let again = ok(store.allocate(1000).await);
        assert!(!again.contains(&after), "a new epoch keeps them apart");
        assert!(again.iter().all(|id| id.epoch != after.epoch));
        let read = ok(store.get_records(vec![after]).await);
        assert!(matches!(read[0], Ok(None)), "the backup never saw it");
    }

    #[tokio::test]
    async fn a_snapshot_holds_every_record_acknowledged_before_it_even_while_the_last_group_applies(
    ) {
        let tmp = ok(tempfile::tempdir());
        let store = open(&tmp.path().join("live"));
        let mut acknowledged = 0;
        for round in 0..5u32 {
            // One large group: the apply thread is still inserting it when
            // the snapshot reaches the commit thread.
            let ids = ok(store.allocate(2000).await);
            let records = ids
                .iter()
                .enumerate()
                .map(|(i, id)| NewRecord {
                    id: *id,
                    record: record(FieldKind::Phone),
                    index: crate::crypto::BlindIndex {
                        version: KeyVersion(1),
                        mac: Sha256::digest(format!("{round}/{i}")).into(),
                    },
                    deterministic: false,
                    older_indexes: Vec::new(),
                })
                .collect();
            ok(store.insert_records(records).await);
            acknowledged += 2000;
            let snapshot = ok(store.snapshot().await);
            assert_eq!(snapshot.records(), acknowledged, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_backup_cut_short_anywhere_or_with_any_byte_changed_is_refused() {
        let tmp = ok(tempfile::tempdir());
        let (store, _) = filled(&tmp.path().join("live")).await;
        let bytes = backup_bytes(&store).await;
        drop(store);
        ok(read_backup(&bytes[..], |_, _, _| Ok(())));
        // Every length short of the whole: every section boundary and
        // every byte inside one.
        for len in 0..bytes.len() {
            match read_backup(&bytes[..len], |_, _, _| Ok(())) {
                Err(BackupError::Truncated { offset, .. }) => assert_eq!(offset, len as u64),
                other => panic!("cut at {len}: {other:?}"),
            }
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(
                read_backup(&damaged[..], |_, _, _| Ok(())).is_err(),
                "byte {at} flipped was taken"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            read_backup(&longer[..], |_, _, _| Ok(())),
            Err(BackupError::TrailingBytes { .. })
        ));
    }

    #[tokio::test]
    async fn a_changed_value_fails_the_checksum_and_an_unknown_version_or_table_is_named() {
        let tmp = ok(tempfile::tempdir());
        let (store, _) = filled(&tmp.path().join("live")).await;
        let bytes = backup_bytes(&store).await;
        drop(store);
        // The last byte of the deterministic table's last entry's value
        // (before that table's end marker, the empty expiry table, the end
        // marker and the digest).
        let mut damaged = bytes.clone();
        let expiry_table = 1 + 1 + "expiry".len() + 1 + 8;
        let at = bytes.len() - DIGEST_LEN - (1 + 4 + 8) - expiry_table - (1 + 8) - 1;
        damaged[at] ^= 0xff;
        assert!(matches!(
            read_backup(&damaged[..], |_, _, _| Ok(())),
            Err(BackupError::Checksum { .. })
        ));
        let mut version = bytes.clone();
        version[8..12].copy_from_slice(&2u32.to_be_bytes());
        let e = read_backup(&version[..], |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(e, BackupError::UnknownVersion { found: 2 }), "{e}");
        assert!(e.to_string().contains("format version is 2"), "{e}");
        let mut other = bytes.clone();
        other[..8].copy_from_slice(b"NOTABACK");
        assert!(matches!(
            read_backup(&other[..], |_, _, _| Ok(())),
            Err(BackupError::NotABackup)
        ));
        // A table of a newer version, with a valid checksum.
        let mut newer = bytes[..bytes.len() - DIGEST_LEN].to_vec();
        let end = newer.len() - (1 + 4 + 8);
        let end_marker = newer.split_off(end);
        newer.extend_from_slice(&[TABLE, 6]);
        newer.extend_from_slice(b"future");
        newer.push(TABLE_END);
        newer.extend_from_slice(&0u64.to_be_bytes());
        newer.extend_from_slice(&end_marker);
        let digest: [u8; 32] = Sha256::digest(&newer).into();
        newer.extend_from_slice(&digest);
        let e = read_backup(&newer[..], |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(&e, BackupError::UnknownTable { name } if name == "future"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_refused_restore_changes_nothing_and_says_why() {
        let tmp = ok(tempfile::tempdir());
        let (store, _) = filled(&tmp.path().join("live")).await;
        let bytes = backup_bytes(&store).await;
        drop(store);
        let data_dir = tmp.path().join("data");
        ok(std::fs::create_dir(&data_dir));
        write_file(&data_dir.join("server.pem"), b"certificate");
        let before = tree_of(&data_dir);
        let file = tmp.path().join("bad.fvb");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "truncated",
                bytes[..bytes.len() / 2].to_vec(),
                "is truncated",
            ),
            (
                "truncated checksum",
                bytes[..bytes.len() - 1].to_vec(),
                "in the checksum",
            ),
            (
                "flipped",
                {
                    let mut b = bytes.clone();
                    let at = b.len() - DIGEST_LEN - 30;
                    b[at] ^= 0x40;
                    b
                },
                "damaged",
            ),
            (
                "newer",
                {
                    let mut b = bytes.clone();
                    b[8..12].copy_from_slice(&9u32.to_be_bytes());
                    b
                },
                "format version is 9",
            ),
            (
                "empty",
                Vec::new(),
                "is truncated: it ends at byte 0, in the header",
            ),
        ];
        for (what, content, says) in cases {
            write_file(&file, &content);
            let e = restore(&file, &data_dir).await.unwrap_err();
            assert!(matches!(e, RestoreError::Backup { .. }), "{what}: {e}");
            let message = e.to_string();
            assert!(message.contains(says), "{what}: {message}");
            assert!(message.contains("nothing was changed"), "{what}: {message}");
            assert_eq!(tree_of(&data_dir), before, "{what}: the data dir changed");
        }
        // A data dir that does not exist stays so.
        let absent = tmp.path().join("absent");
        write_file(&file, &bytes[..100]);
        assert!(restore(&file, &absent).await.is_err());
        assert!(!absent.exists());
        // A data dir with a store.
        write_file(&file, &bytes);
        ok(restore(&file, &data_dir).await);
        let with_store = tree_of(&data_dir);
        let e = restore(&file, &data_dir).await.unwrap_err();
        assert!(matches!(e, RestoreError::StoreExists { .. }), "{e}");
        assert!(e.to_string().contains("already holds a store"), "{e}");
        assert_eq!(tree_of(&data_dir), with_store);
    }

    #[test]
    fn a_tree_backups_do_not_know_refuses_the_backup_and_names_it() {
        let tmp = ok(tempfile::tempdir());
        let db = ok(sled::Config::new().path(tmp.path().join("db")).open());
        ok(ok(db.open_tree("records")).insert(b"k", b"v"));
        // Known and empty trees, and sled's own, are fine.
        ok(db.open_tree("future"));
        let snapshot = ok(write_snapshot(&db, ok(temp_files(tmp.path()))));
        assert_eq!(snapshot.records(), 1);
        ok(ok(db.open_tree("future")).insert(b"k", b"v"));
        let e = write_snapshot(&db, ok(temp_files(tmp.path()))).unwrap_err();
        assert!(e.to_string().contains("tree `future`"), "{e}");
        assert_eq!(
            std::fs::read_dir(tmp.path())
                .map(|d| d.count())
                .unwrap_or(0),
            1,
            "temporary files are unlinked at once"
        );
    }

    /// How long writes pause for a backup of N records (README, "Backup
    /// and restore"): prints the snapshot's time on the commit thread and
    /// the latency of a write sent while it is taken. Not a test of time:
    ///   FIELDVAULT_BACKUP_RECORDS=1000000 cargo test --release --lib \
    ///     store::backup::tests::write_pause -- --ignored --nocapture
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn write_pause() {
        let n: usize = std::env::var("FIELDVAULT_BACKUP_RECORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let tmp = ok(tempfile::tempdir());
        let store = ok(SledStore::open(&SledConfig {
            path: tmp.path().join("store"),
            cache_capacity_bytes: 256 << 20,
            max_queued_writes: crate::store::DEFAULT_MAX_QUEUED_WRITES,
        }));
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(1000);
            let ids = ok(store.allocate(batch).await);
            let records = ids
                .iter()
                .enumerate()
                .map(|(i, id)| NewRecord {
                    id: *id,
                    record: record(FieldKind::Phone),
                    index: crate::crypto::BlindIndex {
                        version: KeyVersion(1),
                        mac: *Sha256::digest((done + i).to_be_bytes()).as_ref(),
                    },
                    deterministic: false,
                    older_indexes: Vec::new(),
                })
                .collect();
            ok(store.insert_records(records).await);
            done += batch;
        }
        // Writes one record at a time, before, during and after the
        // snapshot: the longest any of them waited is the pause.
        let writer = store.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing = done.clone();
        let writes = tokio::spawn(async move {
            let (mut longest, mut count) = (std::time::Duration::ZERO, 0u32);
            let mut round = 0u64;
            while !writing.load(std::sync::atomic::Ordering::SeqCst) {
                let [id]: [RecordId; 1] = ok(writer.allocate(1).await).try_into().unwrap();
                let sent = std::time::Instant::now();
                ok(writer
                    .insert_records(vec![NewRecord {
                        id,
                        record: record(FieldKind::Phone),
                        index: crate::crypto::BlindIndex {
                            version: KeyVersion(1),
                            mac: Sha256::digest(format!("w{round}")).into(),
                        },
                        deterministic: false,
                        older_indexes: Vec::new(),
                    }])
                    .await);
                longest = longest.max(sent.elapsed());
                count += 1;
                round += 1;
            }
            (longest, count)
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let start = std::time::Instant::now();
        let snapshot = store.snapshot().await;
        let taken = start.elapsed();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (waited, count) = ok(writes.await);
        let mut snapshot = ok(snapshot);
        let read_start = std::time::Instant::now();
        let file = tmp.path().join("backup.fvb");
        let mut out = ok(File::create(&file));
        ok(std::io::copy(&mut snapshot, &mut out));
        println!(
            "{n} records: snapshot {} bytes taken in {taken:?}; of {count} writes sent one \
             after another meanwhile, the longest waited {waited:?}; read with its checksum \
             in {:?}",
            snapshot.size(),
            read_start.elapsed()
        );
        drop(store);
        let restore_start = std::time::Instant::now();
        ok(restore(&file, &tmp.path().join("restored")).await);
        println!(
            "restored (loaded, reopened, integrity-checked) in {:?}",
            restore_start.elapsed()
        );
    }
}
