//! The store's sync points behind a small file trait.
//!
//! Everything durability rests on goes through [`FileSystem`] and
//! [`StorageFile`]: the write-ahead log's writes, `fdatasync`s, truncations
//! and the directory `fsync` after its creation, and the `fdatasync` of
//! sled's data file that completes a checkpoint. [`RealFs`] is the real
//! thing; the power-loss test (`power_loss.rs`) swaps in a file system that
//! drops, at a random "power cut", every write no completed sync covers.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// One open file: only the operations whose ordering durability depends on.
pub(crate) trait StorageFile: Send {
    /// The whole file, from offset 0.
    fn read_to_end(&mut self) -> std::io::Result<Vec<u8>>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// `fdatasync`: the data written so far (and the size) survive power loss.
    fn sync_data(&mut self) -> std::io::Result<()>;
    /// `fsync`: data and metadata (a truncation) survive power loss.
    fn sync_all(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

/// Opens files and syncs directories.
pub(crate) trait FileSystem: Send + Sync {
    /// Opens `path` read-write, creating it (mode 0600) if it does not
    /// exist. A new file's directory entry is durable only after
    /// [`FileSystem::sync_dir`].
    fn open_or_create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file to sync it (sled's data file: sled writes it,
    /// the checkpoint `fdatasync`s it through this handle).
    fn open_existing(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>>;
    /// `fsync` of a directory: makes the creation, removal or rename of an
    /// entry in it durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// The whole content of `path`, or `None` if there is no such file;
    /// changes nothing.
    fn read_existing(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
}

/// The operating system's files.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RealFs;

struct RealFile(File);

impl StorageFile for RealFile {
    fn read_to_end(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        // `read_at` from 0, so the file position never matters.
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = self.0.read_at(&mut chunk, bytes.len() as u64)?;
            if n == 0 {
                return Ok(bytes);
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}

impl FileSystem for RealFs {
    fn open_or_create(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open_existing(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        sync_dir(dir)
    }

    fn read_existing(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match read_file(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `fsync` of a directory (an empty path is the current directory).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Reads a whole file (for tools that never write it).
pub(crate) fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}
