//! The power-loss test: seeded power cuts under concurrent writes.
//!
//! The store runs on [`PowerFs`], a model disk. Every write, truncation
//! and sync of the write-ahead log goes through it; at a random operation
//! the power goes out: that operation and every later one fails, and what
//! survives is what the completed `fdatasync`s/`fsync`s covered, plus a
//! random subset of the unsynced writes cut into 4 KiB pages (a torn
//! write), and of the unsynced truncations. A file whose directory was
//! never synced after its creation is gone.
//!
//! sled's own files cannot go through the trait. The checkpoint makes them
//! durable with sled's flush and an `fdatasync` of sled's data file, which
//! does go through it: when that sync completes, the model copies sled's
//! directory, and at a cut restores that copy (into a fresh directory, so a
//! sled thread still finishing a write cannot touch it). Any sled state at
//! or after the last checkpoint is a state a real disk could hold, since
//! replaying the log is idempotent; the copy is the oldest of them.
//!
//! After each cut the store is reopened (sometimes with a second cut while
//! it replays the log) and must hold every record it acknowledged, with
//! each deterministic value still on its first record, none whose deletion
//! it acknowledged (a deletion the cut interrupted may go either way),
//! every acknowledged key and freeze, a counter at least as high as its acknowledged charges
//! (and no higher than the charges tried), and a clean integrity check;
//! and across every cut the sequence
//! never hands out one record id twice (ids taken by writes the cut lost
//! included).
//!
//! `FIELDVAULT_POWER_SEED=N` replays one failing chain (its seed is printed
//! when it fails): the same cut points, torn pages and values; which writes
//! share a frame still depends on thread timing. `FIELDVAULT_POWER_CUTS=N`
//! runs more cuts than the default 200.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::file::{FileSystem, StorageFile};
use super::sled_store::{SledConfig, SledStore, StoreIo};
use super::{Charge, Charged, Deletion, Freeze, NewRecord, Store, StoreError};
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, SealedRecord, WrappedKey, NONCE_LEN};
use crate::domain::{FieldKind, RecordId};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const PAGE: usize = 4096;
/// Cuts per chain (one directory, one seed).
const CUTS_PER_CHAIN: usize = 10;
/// Small, so that checkpoints (and log resets) happen every few frames and
/// cuts land inside them.
const CHECKPOINT_BYTES: u64 = 1500;

/// splitmix64: small, seedable, good enough to pick cut points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct FileModel {
    /// What reads see (the page cache).
    current: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// Writes and truncations since the last sync, in order.
    pending: Vec<Pending>,
    /// Its directory entry survives a power cut.
    linked: bool,
}

fn apply(buf: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

#[derive(Default)]
struct Disk {
    /// Operations left before the power goes out (`None`: it never does).
    ops_left: Option<u64>,
    power_off: bool,
    files: HashMap<PathBuf, FileModel>,
    /// The sled directory the store uses now.
    sled_dir: PathBuf,
    /// sled's files (relative path, bytes) as of the last completed
    /// checkpoint sync.
    sled_snapshot: Vec<(PathBuf, Vec<u8>)>,
    /// Completed checkpoint syncs and power cuts, for the report.
    checkpoints: u64,
    cuts: u64,
    /// Which operation each cut hit.
    cut_at: HashMap<&'static str, u64>,
}

impl Disk {
    /// Counts one operation; fails once the power is out.
    fn tick(&mut self, op: &'static str) -> io::Result<()> {
        if self.power_off {
            return Err(io::Error::other("power is out"));
        }
        match &mut self.ops_left {
            Some(0) => {
                self.power_off = true;
                self.cuts += 1;
                *self.cut_at.entry(op).or_default() += 1;
                Err(io::Error::other("power cut"))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[derive(Clone, Default)]
struct PowerFs(Arc<Mutex<Disk>>);

impl PowerFs {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power goes out after `ops` more operations.
    fn arm(&self, ops: u64) {
        self.disk().ops_left = Some(ops);
    }

    /// After a cut, with the store closed: builds what the disk holds after
    /// power comes back, in a fresh directory `dir`, and turns the power on.
    fn power_on(&self, rng: &mut Rng, dir: &Path) {
        let mut disk = self.disk();
        let old_dir = disk.sled_dir.clone();
        let mut files = HashMap::new();
        for (path, model) in disk.files.drain() {
            if !model.linked {
                continue;
            }
            let mut image = model.durable;
            for op in &model.pending {
                match op {
                    Pending::Write { offset, data } => {
                        // Page by page, each page of the write lands or not.
                        let mut at = *offset as usize;
                        let end = at + data.len();
                        while at < end {
                            let next = ((at / PAGE) + 1) * PAGE;
                            let stop = next.min(end);
                            if rng.coin() {
                                let piece = Pending::Write {
                                    offset: at as u64,
                                    data: data[at - *offset as usize..stop - *offset as usize]
                                        .to_vec(),
                                };
                                apply(&mut image, &piece);
                            }
                            at = stop;
                        }
                    }
                    Pending::SetLen(_) => {
                        if rng.coin() {
                            apply(&mut image, op);
                        }
                    }
                }
            }
            let rel = path.strip_prefix(&old_dir).unwrap().to_path_buf();
            files.insert(
                dir.join(rel),
                FileModel {
                    current: image.clone(),
                    durable: image,
                    pending: Vec::new(),
                    linked: true,
                },
            );
        }
        disk.files = files;
        std::fs::create_dir_all(dir).unwrap();
        for (rel, bytes) in &disk.sled_snapshot {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        disk.sled_dir = dir.to_path_buf();
        disk.power_off = false;
        disk.ops_left = None;
        // The old directory may still see a late write from a sled thread
        // of the closed store; it is never read again.
        let _ = std::fs::remove_dir_all(&old_dir);
    }
}

struct PowerFile {
    fs: PowerFs,
    path: PathBuf,
}

impl PowerFile {
    fn with<T>(&self, op: &'static str, f: impl FnOnce(&mut FileModel) -> T) -> io::Result<T> {
        let mut disk = self.fs.disk();
        disk.tick(op)?;
        Ok(f(disk.files.get_mut(&self.path).unwrap()))
    }

    /// The operation at the cut may still partly reach the disk.
    fn pending(&self, op: Pending) -> io::Result<()> {
        let mut disk = self.fs.disk();
        let result = disk.tick(match op {
            Pending::Write { .. } => "log write",
            Pending::SetLen(_) => "log truncation",
        });
        let file = disk.files.get_mut(&self.path).unwrap();
        if result.is_ok() || disk_just_cut(&result) {
            apply(&mut file.current, &op);
            file.pending.push(op);
        }
        result
    }
}

fn disk_just_cut(result: &io::Result<()>) -> bool {
    matches!(result, Err(e) if e.to_string() == "power cut")
}

impl StorageFile for PowerFile {
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        self.with("log read", |f| f.current.clone())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.pending(Pending::Write {
            offset,
            data: buf.to_vec(),
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with("log fdatasync", |f| {
            f.durable = f.current.clone();
            f.pending.clear();
        })
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.with("log fsync", |f| {
            f.durable = f.current.clone();
            f.pending.clear();
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.pending(Pending::SetLen(len))
    }
}

/// sled's data file: its sync completes a checkpoint, so the model copies
/// sled's directory then.
struct SledDataFile(PowerFs);

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, std::fs::read(&path).unwrap()));
        }
    }
}

impl StorageFile for SledDataFile {
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        Err(io::Error::other("not read through the trait"))
    }

    fn write_all_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("sled writes its own files"))
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut disk = self.0.disk();
        disk.tick("checkpoint fdatasync of sled's file")?;
        let mut snapshot = Vec::new();
        let dir = disk.sled_dir.clone();
        read_tree(&dir, &dir, &mut snapshot);
        disk.sled_snapshot = snapshot;
        disk.checkpoints += 1;
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&mut self, _: u64) -> io::Result<()> {
        Err(io::Error::other("sled writes its own files"))
    }
}

impl FileSystem for PowerFs {
    fn open_or_create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut disk = self.disk();
        disk.tick("log open")?;
        disk.files.entry(path.to_path_buf()).or_default();
        Ok(Box::new(PowerFile {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn open_existing(&self, _path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.disk().tick("sled file open")?;
        Ok(Box::new(SledDataFile(self.clone())))
    }

    fn read_existing(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let mut disk = self.disk();
        disk.tick("log check")?;
        Ok(disk.files.get(path).map(|f| f.current.clone()))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.tick("directory fsync")?;
        for (path, file) in disk.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.linked = true;
            }
        }
        Ok(())
    }
}

/// What the store acknowledged.
#[derive(Default)]
struct Acked {
    records: HashMap<RecordId, SealedRecord>,
    /// Deterministic value (its index byte pair) -> its record.
    deterministic: HashMap<u16, RecordId>,
    keys: Vec<WrappedKey>,
    /// Every id the sequence handed out, acknowledged or not, across every
    /// power cut: none may come twice.
    allocated: std::collections::HashSet<RecordId>,
    /// Charges of 1 to [`COUNTER`] acknowledged, and tried (a charge whose
    /// call failed may or may not be logged): the count lies between.
    charges: u64,
    charges_tried: u64,
    /// Callers whose freeze was acknowledged.
    frozen: Vec<String>,
    /// Random-mode records acknowledged and not deleted (deletable).
    random: Vec<RecordId>,
    /// Records whose deletion was acknowledged: never read again.
    deleted: std::collections::HashSet<RecordId>,
    /// Records whose deletion was sent and not answered (the cut came):
    /// either outcome is right.
    deleting: std::collections::HashSet<RecordId>,
}

/// The counter the workload charges.
const COUNTER: &str = "power/charges";

fn sealed(n: u64) -> SealedRecord {
    let mut ciphertext = n.to_be_bytes().to_vec();
    ciphertext.extend_from_slice(&[0xA5; 24]);
    SealedRecord {
        kind: FieldKind::Phone,
        key_version: KeyVersion(1),
        nonce: [(n % 251) as u8; NONCE_LEN],
        ciphertext,
        meta: Some(crate::crypto::RecordMeta {
            created_unix_ms: n,
            expires_unix_ms: None,
            deterministic: false,
        }),
    }
}

fn index(value: u64) -> BlindIndex {
    index_under(1, value)
}

fn index_under(version: u32, value: u64) -> BlindIndex {
    let mut mac = [0u8; 32];
    mac[..8].copy_from_slice(&value.to_be_bytes());
    mac[31] = 0x5A;
    BlindIndex {
        version: KeyVersion(version),
        mac,
    }
}

/// Deterministic values live apart from random ones.
const DET_BASE: u64 = 1 << 40;

fn key(version: u32) -> WrappedKey {
    WrappedKey {
        purpose: KeyPurpose::Index,
        version: KeyVersion(version),
        nonce: [7; NONCE_LEN],
        ciphertext: vec![version as u8; 48],
    }
}

struct Chain {
    seed: u64,
    rng: Rng,
    fs: PowerFs,
    root: tempfile::TempDir,
    dirs: u64,
    acked: Arc<Mutex<Acked>>,
    /// Counter for record contents and key versions.
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Chain {
    fn config(&self) -> SledConfig {
        SledConfig {
            path: self.fs.disk().sled_dir.clone(),
            cache_capacity_bytes: 4 << 20,
            max_queued_writes: super::DEFAULT_MAX_QUEUED_WRITES,
        }
    }

    fn open(&self) -> Result<SledStore, super::StoreError> {
        SledStore::open_with(
            &self.config(),
            &StoreIo {
                fs: &self.fs,
                checkpoint_bytes: Some(CHECKPOINT_BYTES),
                sled_flush_every_ms: None,
            },
        )
    }

    /// Power back on, in a fresh directory.
    fn power_on(&mut self) {
        self.dirs += 1;
        let dir = self.root.path().join(format!("d{}", self.dirs));
        self.fs.power_on(&mut self.rng, &dir);
    }

    fn acked(&self) -> MutexGuard<'_, Acked> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Concurrent writers until the power goes out: two insert random
/// records, one deterministic ones over a few values, one mixed batches
/// and now and then a key version.
async fn write_until_cut(chain: &Chain, store: &SledStore, seed: u64) {
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let store = store.clone();
        let acked = chain.acked.clone();
        let next = chain.next.clone();
        let mut rng = Rng(seed ^ (task << 56));
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            loop {
                if task == 3 && rng.below(6) == 0 {
                    acked.lock().unwrap().charges_tried += 1;
                    let charge = Charge {
                        counter: COUNTER.to_owned(),
                        window_start_ms: 0,
                        amount: 1,
                        limit: None,
                    };
                    match store.charge(vec![charge]).await {
                        Ok(Charged::Added(counts)) => {
                            let mut acked = acked.lock().unwrap();
                            acked.charges += 1;
                            assert!(
                                (acked.charges..=acked.charges_tried).contains(&counts[0]),
                                "count {} after {} acknowledged charges of {} tried",
                                counts[0],
                                acked.charges,
                                acked.charges_tried
                            );
                        }
                        Ok(over) => panic!("a charge without a limit: {over:?}"),
                        Err(_) => return,
                    }
                    continue;
                }
                if task == 3 && rng.below(20) == 0 {
                    let caller = format!("power-{}", next.fetch_add(1, Relaxed));
                    let freeze = Freeze {
                        caller: caller.clone(),
                        since_unix_ms: 1,
                        reason: "power-loss test".to_owned(),
                        by: "vault".to_owned(),
                    };
                    match store.freeze(freeze).await {
                        Ok(None) => acked.lock().unwrap().frozen.push(caller),
                        Ok(Some(f)) => panic!("{caller} was frozen already: {f:?}"),
                        Err(_) => return,
                    }
                    continue;
                }
                if task == 1 && rng.below(6) == 0 {
                    // Delete an acknowledged random-mode record: its value
                    // is its sealed number, its entry under index v1; the
                    // deletion names every index version there is.
                    let picked = {
                        let mut acked = acked.lock().unwrap();
                        if acked.random.is_empty() {
                            None
                        } else {
                            let at = rng.below(acked.random.len() as u64) as usize;
                            let id = acked.random.swap_remove(at);
                            let value = u64::from_be_bytes(
                                acked.records[&id].ciphertext[..8].try_into().unwrap(),
                            );
                            acked.deleting.insert(id);
                            let versions: Vec<u32> =
                                acked.keys.iter().map(|k| k.version.0).collect();
                            Some((id, value, versions))
                        }
                    };
                    let Some((id, value, mut versions)) = picked else {
                        continue;
                    };
                    loop {
                        let indexes = std::iter::once(1)
                            .chain(versions.iter().copied())
                            .map(|v| index_under(v, value))
                            .collect();
                        match store.delete_records(vec![Deletion { id, indexes }]).await {
                            Ok(done) => {
                                assert_eq!(done, vec![true], "{id} was acknowledged");
                                let mut acked = acked.lock().unwrap();
                                acked.deleting.remove(&id);
                                acked.records.remove(&id);
                                acked.deleted.insert(id);
                                break;
                            }
                            // A key version added meanwhile (acknowledged
                            // or in flight): name them all.
                            Err(StoreError::KeysChanged) => {
                                let top = next.load(Relaxed) as u32 + 2;
                                versions = (2..=top).collect();
                            }
                            Err(_) => return,
                        }
                    }
                    continue;
                }
                if task == 3 && rng.below(25) == 0 {
                    let version = next.fetch_add(1, Relaxed) as u32 + 2;
                    match store.insert_keys(vec![key(version)]).await {
                        Ok(()) => acked.lock().unwrap().keys.push(key(version)),
                        Err(_) => return,
                    }
                    continue;
                }
                let batch = 1 + rng.below(3);
                let Ok(ids) = store.allocate(batch as usize).await else {
                    return;
                };
                {
                    let mut acked = acked.lock().unwrap();
                    for id in &ids {
                        assert!(acked.allocated.insert(*id), "{id} was handed out twice");
                    }
                }
                let mut records = Vec::new();
                for id in ids {
                    let n = next.fetch_add(1, Relaxed);
                    let deterministic = task == 2 || (task == 3 && rng.coin());
                    let value = if deterministic {
                        DET_BASE + rng.below(12)
                    } else {
                        n
                    };
                    records.push(NewRecord {
                        id,
                        record: sealed(n),
                        index: index(value),
                        deterministic,
                        older_indexes: Vec::new(),
                    });
                }
                match store.insert_records(records.clone()).await {
                    Ok(tokens) => {
                        let mut acked = acked.lock().unwrap();
                        for (new, token) in records.iter().zip(tokens) {
                            if new.id == token {
                                acked.records.insert(token, new.record.clone());
                                if !new.deterministic {
                                    acked.random.push(token);
                                }
                            }
                            if new.deterministic {
                                let value =
                                    u16::from_be_bytes([new.index.mac[6], new.index.mac[7]]);
                                let first = *acked.deterministic.entry(value).or_insert(token);
                                assert_eq!(first, token, "a deterministic value changed token");
                            }
                        }
                    }
                    Err(_) => return,
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Everything acknowledged is there, nothing whose deletion was
/// acknowledged is, deterministic values keep their tokens, and the
/// integrity check is clean.
async fn verify(chain: &Chain, store: &SledStore) {
    let (deleted, deleting): (Vec<RecordId>, Vec<RecordId>) = {
        let acked = chain.acked();
        (
            acked.deleted.iter().copied().collect(),
            acked.deleting.iter().copied().collect(),
        )
    };
    for (id, got) in deleted
        .iter()
        .zip(store.get_records(deleted.clone()).await.unwrap())
    {
        assert!(
            got.unwrap().is_none(),
            "{id} came back after its deletion was acknowledged"
        );
    }
    // A deletion the cut interrupted went one way or the other; from here
    // on it is settled.
    let settled = store.get_records(deleting.clone()).await.unwrap();
    {
        let mut acked = chain.acked();
        for (id, got) in deleting.iter().zip(settled) {
            acked.deleting.remove(id);
            if got.unwrap().is_none() {
                acked.records.remove(id);
                acked.deleted.insert(*id);
            } else {
                acked.random.push(*id);
            }
        }
    }
    let (tokens, expected, det, keys) = {
        let acked = chain.acked();
        let tokens: Vec<RecordId> = acked.records.keys().copied().collect();
        let expected: Vec<Option<SealedRecord>> = tokens
            .iter()
            .map(|t| acked.records.get(t).cloned())
            .collect();
        let det: Vec<(u16, RecordId)> = acked.deterministic.iter().map(|(v, t)| (*v, *t)).collect();
        (tokens, expected, det, acked.keys.clone())
    };
    let got = store.get_records(tokens.clone()).await.unwrap();
    for ((token, want), got) in tokens.iter().zip(&expected).zip(&got) {
        let got = got
            .as_ref()
            .unwrap_or_else(|e| panic!("reading {token}: {e}"));
        assert_eq!(got, want, "acknowledged token {token} after the cut");
    }
    let stored_keys = store.keys().await.unwrap();
    for k in &keys {
        assert!(
            stored_keys.contains(k),
            "acknowledged key v{} lost",
            k.version.0
        );
    }
    let report = store.check_integrity().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let count = store
        .counters()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.counter == COUNTER)
        .map_or(0, |c| c.count);
    let frozen = {
        let mut acked = chain.acked();
        assert!(
            (acked.charges..=acked.charges_tried).contains(&count),
            "count {count} after {} acknowledged charges of {} tried",
            acked.charges,
            acked.charges_tried
        );
        // From here on the count is durable (the reopen checkpointed it).
        acked.charges = count;
        acked.charges_tried = count;
        acked.frozen.clone()
    };
    for caller in &frozen {
        assert!(
            store.frozen(caller).await.unwrap().is_some(),
            "acknowledged freeze of {caller} lost"
        );
    }
    assert!(store.freezes().await.unwrap().len() >= frozen.len());
    for (value, token) in det {
        let value = DET_BASE + u64::from(value);
        let id = store.allocate(1).await.unwrap()[0];
        assert!(
            chain.acked().allocated.insert(id),
            "{id} was handed out twice"
        );
        let again = store
            .insert_records(vec![NewRecord {
                id,
                record: sealed(0),
                index: index(value),
                deterministic: true,
                older_indexes: Vec::new(),
            }])
            .await
            .unwrap();
        assert_eq!(
            again,
            vec![token],
            "deterministic value {value} lost its token"
        );
    }
}

/// Prints the seed of a chain that panics.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "power-loss test failed: replay with FIELDVAULT_POWER_SEED={} cargo test --lib store::power_loss",
                self.0
            );
        }
    }
}

/// Runs one chain of cuts; returns (cuts, checkpoints, acknowledged
/// records, cuts per operation).
fn run_chain(seed: u64, cuts: usize) -> (u64, u64, usize, usize, HashMap<&'static str, u64>) {
    let _guard = SeedOnPanic(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut chain = Chain {
        seed,
        rng: Rng(seed),
        fs: PowerFs::default(),
        root: tempfile::tempdir().unwrap(),
        dirs: 0,
        acked: Arc::default(),
        next: Arc::default(),
    };
    chain.fs.disk().sled_dir = chain.root.path().join("d0");
    let mut store: Option<SledStore> = None;
    for cut in 0..cuts {
        // Writes, checkpoints and resets cost 2 to 5 operations: cuts land
        // anywhere in the first few dozen commits.
        let ops = chain.rng.below(160);
        chain.fs.arm(ops);
        let running = match store.take() {
            Some(s) => Some(s),
            None => chain.open().ok(),
        };
        if let Some(s) = running {
            let writer_seed = chain.rng.next();
            let writes = write_until_cut(&chain, &s, writer_seed);
            runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(120), writes)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("seed {}: writers still running after 120 s", chain.seed)
                    });
            });
            drop(s);
        }
        chain.power_on();
        // Sometimes a second cut while the store opens, replays the log
        // and checkpoints.
        if chain.rng.coin() {
            chain.fs.arm(chain.rng.below(12));
            if let Ok(s) = chain.open() {
                drop(s);
            }
            chain.power_on();
        }
        let s = chain
            .open()
            .unwrap_or_else(|e| panic!("seed {seed}, cut {cut}: reopening failed: {e}"));
        runtime.block_on(verify(&chain, &s));
        store = Some(s);
    }
    drop(store);
    let (records, deleted) = {
        let acked = chain.acked();
        (acked.records.len(), acked.deleted.len())
    };
    let disk = chain.fs.disk();
    (
        disk.cuts,
        disk.checkpoints,
        records,
        deleted,
        disk.cut_at.clone(),
    )
}

#[test]
fn every_acknowledged_write_survives_power_cuts_under_concurrent_writes() {
    let cuts: usize = std::env::var("FIELDVAULT_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seeds: Vec<u64> = match std::env::var("FIELDVAULT_POWER_SEED") {
        Ok(seed) => vec![seed.parse().expect("FIELDVAULT_POWER_SEED is a u64")],
        Err(_) => {
            let base = std::collections::hash_map::RandomState::new();
            let base = std::hash::BuildHasher::hash_one(&base, 0u8);
            (0..cuts.div_ceil(CUTS_PER_CHAIN) as u64)
                .map(|i| base.wrapping_add(i))
                .collect()
        }
    };
    let (mut total_cuts, mut checkpoints, mut records, mut deleted) = (0, 0, 0, 0);
    let chains = seeds.len();
    let started = std::time::Instant::now();
    let mut cut_at: HashMap<&'static str, u64> = HashMap::new();
    for seed in seeds {
        let (c, k, r, d, at) = run_chain(seed, CUTS_PER_CHAIN);
        total_cuts += c;
        checkpoints += k;
        records += r;
        deleted += d;
        for (op, n) in at {
            *cut_at.entry(op).or_default() += n;
        }
    }
    let mut cut_at: Vec<_> = cut_at.into_iter().collect();
    cut_at.sort();
    eprintln!(
        "power-loss test: {chains} chains, {total_cuts} power cuts, {checkpoints} checkpoints, \
         {records} acknowledged records and {deleted} acknowledged deletions checked, {:.1} s; \
         cuts hit: {cut_at:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        total_cuts as usize >= chains * CUTS_PER_CHAIN,
        "only {total_cuts} cuts happened"
    );
    assert!(deleted > 0, "no deletion was acknowledged before a cut");
}
