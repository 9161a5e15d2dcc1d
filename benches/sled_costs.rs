//! What sled 0.34 itself costs, without fieldvault: the floor under the
//! store's write and read paths (README, "Performance").
//!
//! ```sh
//! cargo bench --bench sled_costs -- [KEYS] [CACHE_MIB]   # defaults: 1000000 64
//! ```
//!
//! Fills a tree with KEYS random 16-byte keys (as token ids are) and
//! 110-byte values (about an encoded record), then times, single-threaded:
//! inserts of new random keys, inserts of ascending keys into a second
//! tree of the same size, and point reads that hit and that miss.
//!
//! Then the same for a layout with ascending ids, each tree filled to KEYS
//! entries first: a records tree (8-byte big-endian ascending u64 keys,
//! 70-byte values) and an index tree (keys: 4-byte version, 32 random
//! bytes, 8-byte sequence number; empty values). Inserts into both one by
//! one, and through `Tree::apply_batch` in batches of 64 and of 1000 (the
//! batch is built inside the timing); into the index tree also one by one
//! with each run of 64 or 1000 keys sorted first (does locality help?).
//! Point reads of random existing keys of the records tree compare with
//! the random 16-byte layout above. Every measurement times SAMPLE
//! operations, so the trees grow past KEYS while it runs.
//!
//! Batches run last: sled's first batch or transaction switches the whole
//! process to taking a global read lock on every later insert and get,
//! which would tax the one-by-one numbers measured after it. One by one
//! again after the batches, as a control for that and for the trees'
//! growth.
//!
//! Before all that, process RSS (VmRSS) before and after filling KEYS
//! records (70-byte values) into a fresh db in a temporary directory, first
//! with ascending 8-byte keys, then (that db dropped) with random 16-byte
//! keys. The allocator keeps what the first db freed, so the second fill
//! starts from there: compare the KiB after the fills rather than their
//! growth. Prints microseconds per operation and KiB; asserts nothing
//! (timings vary by machine). sled's own flusher thread runs beside the one
//! timed thread.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE: [u8; 110] = [7; 110];
const RECORD: [u8; 70] = [7; 70];
const INDEX_VERSION: u32 = 1;
const SAMPLE: usize = 100_000;

fn random_key() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// splitmix64: index keys and read positions without a syscall per key.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Version ‖ 32 random bytes ‖ sequence number, all big-endian.
    fn index_key(&mut self, seq: u64) -> [u8; 44] {
        let mut key = [0; 44];
        key[..4].copy_from_slice(&INDEX_VERSION.to_be_bytes());
        for chunk in key[4..36].chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_ne_bytes());
        }
        key[36..].copy_from_slice(&seq.to_be_bytes());
        key
    }
}

fn per_op(start: Instant, n: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// VmRSS of this process, KiB.
fn rss_kib() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// RSS before and after filling `keys` records into a fresh db.
fn rss_fill(
    keys: usize,
    cache_mib: u64,
    ascending: bool,
) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let before = rss_kib()?;
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(cache_mib << 20)
        .open()?;
    let records = db.open_tree("records")?;
    for i in 0..keys as u64 {
        if ascending {
            records.insert(i.to_be_bytes(), &RECORD[..])?;
        } else {
            records.insert(random_key(), &RECORD[..])?;
        }
    }
    let after = rss_kib()?;
    Ok((before, after))
}

fn one_by_one<K: AsRef<[u8]>>(tree: &sled::Tree, keys: &[K], value: &[u8]) -> sled::Result<f64> {
    let start = Instant::now();
    for key in keys {
        tree.insert(key.as_ref(), value)?;
    }
    Ok(per_op(start, keys.len()))
}

/// One by one, each run of `size` keys sorted first (sort timed too).
fn sorted_runs<K: AsRef<[u8]> + Ord + Clone>(
    tree: &sled::Tree,
    keys: &[K],
    value: &[u8],
    size: usize,
) -> sled::Result<f64> {
    let start = Instant::now();
    for run in keys.chunks(size) {
        let mut run = run.to_vec();
        run.sort_unstable();
        for key in &run {
            tree.insert(key.as_ref(), value)?;
        }
    }
    Ok(per_op(start, keys.len()))
}

fn batches<K: AsRef<[u8]>>(
    tree: &sled::Tree,
    keys: &[K],
    value: &[u8],
    size: usize,
) -> sled::Result<f64> {
    let start = Instant::now();
    for run in keys.chunks(size) {
        let mut batch = sled::Batch::default();
        for key in run {
            batch.insert(key.as_ref(), value);
        }
        tree.apply_batch(batch)?;
    }
    Ok(per_op(start, keys.len()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let keys: usize = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let cache_mib: u64 = args.get(1).map_or(Ok(64), |a| a.parse())?;

    // First, while the process holds nothing else.
    let (rss_asc_before, rss_asc_after) = rss_fill(keys, cache_mib, true)?;
    let (rss_rand_before, rss_rand_after) = rss_fill(keys, cache_mib, false)?;

    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(cache_mib << 20)
        .open()?;
    let random = db.open_tree("random")?;
    let ascending = db.open_tree("ascending")?;
    let records = db.open_tree("records")?;
    let index = db.open_tree("index")?;
    let mut rng = Rng(0x5eed);

    let mut kept = Vec::with_capacity(SAMPLE);
    let start = Instant::now();
    for i in 0..keys {
        let key = random_key();
        if i % (keys / SAMPLE).max(1) == 0 && kept.len() < SAMPLE {
            kept.push(key);
        }
        random.insert(key, &VALUE[..])?;
    }
    let fill_random = per_op(start, keys);
    let start = Instant::now();
    for i in 0..keys as u128 {
        ascending.insert(i.to_be_bytes(), &VALUE[..])?;
    }
    let fill_ascending = per_op(start, keys);
    let start = Instant::now();
    for i in 0..keys as u64 {
        records.insert(i.to_be_bytes(), &RECORD[..])?;
    }
    let fill_records = per_op(start, keys);
    let mut seq = 0u64;
    let start = Instant::now();
    for _ in 0..keys {
        index.insert(rng.index_key(seq), &[][..])?;
        seq += 1;
    }
    let fill_index = per_op(start, keys);
    db.flush()?;

    let start = Instant::now();
    for _ in 0..SAMPLE {
        random.insert(random_key(), &VALUE[..])?;
    }
    let insert_random = per_op(start, SAMPLE);
    let start = Instant::now();
    for i in 0..SAMPLE as u128 {
        ascending.insert((keys as u128 + i).to_be_bytes(), &VALUE[..])?;
    }
    let insert_ascending = per_op(start, SAMPLE);

    // Keys generated outside the timings.
    let positions: Vec<[u8; 8]> = (0..SAMPLE)
        .map(|_| (rng.next() % keys as u64).to_be_bytes())
        .collect();
    let mut next_record = keys as u64;
    let mut record_keys = || {
        let run: Vec<[u8; 8]> = (next_record..next_record + SAMPLE as u64)
            .map(u64::to_be_bytes)
            .collect();
        next_record += SAMPLE as u64;
        run
    };
    let mut index_keys = || {
        (0..SAMPLE)
            .map(|_| {
                seq += 1;
                rng.index_key(seq)
            })
            .collect::<Vec<_>>()
    };
    let records_one = one_by_one(&records, &record_keys(), &RECORD)?;
    let index_one = one_by_one(&index, &index_keys(), &[])?;
    let index_sorted_64 = sorted_runs(&index, &index_keys(), &[], 64)?;
    let index_sorted_1000 = sorted_runs(&index, &index_keys(), &[], 1000)?;

    let start = Instant::now();
    let mut found = 0;
    for key in &kept {
        found += usize::from(random.get(key)?.is_some());
    }
    let get_hit = per_op(start, kept.len());
    let start = Instant::now();
    for _ in 0..SAMPLE {
        // 122 random bits: never present.
        let _ = random.get(random_key())?;
    }
    let get_miss = per_op(start, SAMPLE);
    let start = Instant::now();
    let mut records_found = 0;
    for key in &positions {
        records_found += usize::from(records.get(key)?.is_some());
    }
    let get_records = per_op(start, SAMPLE);

    let records_batch_64 = batches(&records, &record_keys(), &RECORD, 64)?;
    let records_batch_1000 = batches(&records, &record_keys(), &RECORD, 1000)?;
    let index_batch_64 = batches(&index, &index_keys(), &[], 64)?;
    let index_batch_1000 = batches(&index, &index_keys(), &[], 1000)?;
    // Controls: drift as the trees grow, plus the lock the batches turned on.
    let records_one_after = one_by_one(&records, &record_keys(), &RECORD)?;
    let index_one_after = one_by_one(&index, &index_keys(), &[])?;

    println!("sled 0.34, {keys} keys per tree, {cache_mib} MiB cache, one thread");
    println!("| operation | µs per op |");
    println!("|---|---:|");
    println!("| fill, random keys | {fill_random:.2} |");
    println!("| fill, ascending keys | {fill_ascending:.2} |");
    println!("| insert, random key, tree full | {insert_random:.2} |");
    println!("| insert, ascending key, tree full | {insert_ascending:.2} |");
    println!(
        "| get, random key present ({found} of {}) | {get_hit:.2} |",
        kept.len()
    );
    println!("| get, random key absent | {get_miss:.2} |");
    println!("| records: fill, 8-byte ascending keys, 70-byte values | {fill_records:.2} |");
    println!("| records: insert one by one | {records_one:.2} |");
    println!("| records: apply_batch of 64 | {records_batch_64:.2} |");
    println!("| records: apply_batch of 1000 | {records_batch_1000:.2} |");
    println!("| records: one by one again, after the batches | {records_one_after:.2} |");
    println!(
        "| records: get, random key present ({records_found} of {SAMPLE}) | {get_records:.2} |"
    );
    println!("| index: fill, 44-byte random keys, empty values | {fill_index:.2} |");
    println!("| index: insert one by one | {index_one:.2} |");
    println!("| index: one by one, runs of 64 sorted | {index_sorted_64:.2} |");
    println!("| index: one by one, runs of 1000 sorted | {index_sorted_1000:.2} |");
    println!("| index: apply_batch of 64 | {index_batch_64:.2} |");
    println!("| index: apply_batch of 1000 | {index_batch_1000:.2} |");
    println!("| index: one by one again, after the batches | {index_one_after:.2} |");
    println!();
    println!("RSS, {keys} records of 70 bytes, fresh db each, {cache_mib} MiB cache");
    println!("| keys | KiB before | KiB after | growth, bytes per record |");
    println!("|---|---:|---:|---:|");
    for (layout, before, after) in [
        ("8-byte ascending", rss_asc_before, rss_asc_after),
        ("16-byte random", rss_rand_before, rss_rand_after),
    ] {
        let per_record = after.saturating_sub(before) as f64 * 1024.0 / keys as f64;
        println!("| {layout} | {before} | {after} | {per_record:.0} |");
    }
    Ok(())
}
