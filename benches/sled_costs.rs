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
//! tree of the same size, and point reads that hit and that miss. Prints
//! microseconds per operation; asserts nothing (timings vary by machine).

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE: [u8; 110] = [7; 110];
const SAMPLE: usize = 100_000;

fn random_key() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

fn per_op(start: Instant, n: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let keys: usize = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let cache_mib: u64 = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(cache_mib << 20)
        .open()?;
    let random = db.open_tree("random")?;
    let ascending = db.open_tree("ascending")?;

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
    Ok(())
}
