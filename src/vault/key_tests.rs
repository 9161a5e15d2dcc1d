//! The key lifecycle at the vault, over a real sled store: what the wire
//! tests cannot arrange (a record damaged on disk, a rotation held open).

use super::keys::{Cursor, JobRecord};
use super::test_support::{caller, ok, vault_over, vault_with};
use super::*;
use crate::domain::value::FieldInput;
use crate::store::{SledConfig, SledStore, DEFAULT_MAX_QUEUED_WRITES};
use std::path::Path;
use std::time::{Duration, Instant};

fn config(dir: &Path) -> SledConfig {
    SledConfig {
        path: dir.join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    }
}

async fn open_vault(dir: &Path, master: &MasterKey) -> Arc<Vault> {
    let store: Arc<dyn Store> = Arc::new(ok(SledStore::reopen_in_test(&config(dir))));
    Arc::new(vault_over(store, dir, master).await)
}

/// sled on a store this process just closed (its lock can outlive the
/// last handle for a moment).
fn sled_of_closed(dir: &Path) -> sled::Db {
    for _ in 0..100 {
        if let Ok(db) = sled::open(dir.join("store")) {
            return db;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(sled::open(dir.join("store")))
}

async fn phones(vault: &Vault, values: &[&str]) -> Vec<TokenId> {
    let items = values
        .iter()
        .map(|v| Ok(FieldInput::simple(FieldKind::Phone, v)))
        .collect();
    ok(vault.tokenize(&caller("orders"), None, items).await)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

async fn finished_rewrap(vault: &Vault) -> JobStatus {
    let started = Instant::now();
    loop {
        let job = ok(vault.rewrap_status(&caller("rotator")).await);
        if job.state == JobState::Finished {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rewrap_reports_a_record_that_fails_its_check_by_token_leaves_it_and_moves_the_rest() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let tokens = {
        let vault = open_vault(dir.path(), &master).await;
        phones(
            &vault,
            &["+1 202-555-0110", "+1 202-555-0111", "+1 202-555-0112"],
        )
        .await
    };
    // Damage the middle record's ciphertext on disk, store closed.
    let damaged_key;
    let damaged_bytes;
    {
        let db = sled_of_closed(dir.path());
        let records = ok(db.open_tree("records"));
        let (key, mut value) = ok(records.iter().nth(1).unwrap_or_else(|| panic!("3 records")));
        let last = value.len() - 1;
        let mut bytes = value.to_vec();
        bytes[last] ^= 0x01;
        value = bytes.into();
        ok(records.insert(&key, value.clone()));
        ok(db.flush());
        damaged_key = key;
        damaged_bytes = value;
    }
    let vault = open_vault(dir.path(), &master).await;
    ok(vault.rotate_data_key(&caller("rotator")).await);
    ok(vault.start_rewrap(&caller("rotator"), Some(1000)).await);
    let job = finished_rewrap(&vault).await;
    assert_eq!((job.done, job.failed, job.remaining), (2, 1, 1), "{job:?}");
    assert_eq!(job.failed_tokens, vec![tokens[1]]);
    // Retiring v1 is refused while the damaged record is on it.
    let refused = vault.retire_key_version(&caller("rotator"), 1).await;
    assert!(
        matches!(&refused, Err(VaultError::FailedPrecondition(m)) if m.contains("still protects 1 records")),
        "{refused:?}"
    );
    vault.stop_background().await;
    drop(vault);
    // Never rewritten: the same bytes as damaged.
    let db = sled_of_closed(dir.path());
    let records = ok(db.open_tree("records"));
    assert_eq!(ok(records.get(&damaged_key)), Some(damaged_bytes));
}

#[tokio::test]
async fn a_second_master_key_rotation_while_one_runs_is_refused_and_changes_nothing() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let vault = open_vault(dir.path(), &master).await;
    let new = dir.path().join("new.key");
    ok(std::fs::write(
        &new,
        MasterKey::generate().to_hex().as_bytes(),
    ));
    {
        use std::os::unix::fs::PermissionsExt;
        ok(std::fs::set_permissions(
            &new,
            std::fs::Permissions::from_mode(0o600),
        ));
    }
    let running = vault.key_jobs_master_lock_for_test().await;
    let refused = vault.rotate_master_key(&caller("rotator"), &new).await;
    assert!(
        matches!(&refused, Err(VaultError::FailedPrecondition(m)) if m.contains("already running")),
        "{refused:?}"
    );
    drop(running);
    let status = ok(vault.key_status(&caller("rotator")).await);
    assert_eq!(status.master_rotated_unix_ms, None);
    ok(vault.rotate_master_key(&caller("rotator"), &new).await);
    assert!(ok(vault.key_status(&caller("rotator")).await)
        .master_rotated_unix_ms
        .is_some());
}

#[test]
fn a_job_state_round_trips_and_damage_is_refused() {
    let record = JobRecord {
        target: 3,
        running: true,
        done: 12,
        rate: 500,
        started_ms: 1_700_000_000_000,
        finished_ms: 0,
        failed_count: 2,
        failed: vec![RecordId::new(7, 9), RecordId::new(8, 9)],
        cursor: Cursor::Record(RecordId::new(40, 9)),
    };
    let bytes = record.encode();
    assert_eq!(JobRecord::decode(&bytes), Some(record.clone()));
    assert_eq!(JobRecord::decode(&bytes[..bytes.len() - 1]), None);
    let mut extra = bytes.clone();
    extra.push(0);
    assert_eq!(JobRecord::decode(&extra), None);
    let mut other_format = bytes;
    other_format[0] = 9;
    assert_eq!(JobRecord::decode(&other_format), None);
}

#[tokio::test]
async fn callers_without_the_keys_action_change_no_key() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    for who in ["orders", "support", "intruder"] {
        let refused = vault.rotate_data_key(&caller(who)).await;
        assert!(
            matches!(refused, Err(VaultError::PermissionDenied(_))),
            "{who}: {refused:?}"
        );
    }
    let status = ok(vault.key_status(&caller("rotator")).await);
    assert_eq!(status.data_keys.len(), 1);
}

#[tokio::test]
async fn a_new_master_key_file_that_is_not_a_regular_file_is_refused_without_blocking() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    let fifo = dir.path().join("fifo.key");
    ok(rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    ));
    for (path, kind) in [(fifo, "a FIFO"), (dir.path().to_path_buf(), "a directory")] {
        // A FIFO with no writer would block an open that waits for one.
        let refused = tokio::time::timeout(
            Duration::from_secs(20),
            vault.rotate_master_key(&caller("rotator"), &path),
        )
        .await
        .unwrap_or_else(|_| panic!("rotate-master blocked on {kind}"));
        assert!(
            matches!(&refused, Err(VaultError::InvalidArgument { field: "new_key_file", reason })
                if reason.contains(&format!("is {kind}, not a regular file"))),
            "{kind}: {refused:?}"
        );
    }
    // A path that would forge log lines is refused before it is used.
    let forged = dir
        .path()
        .join("x\n2026-11-27T10:46:00Z  INFO key operation outcome=\"ok\"");
    let refused = vault.rotate_master_key(&caller("rotator"), &forged).await;
    assert!(
        matches!(&refused, Err(VaultError::InvalidArgument { field: "new_key_file", reason })
            if reason.contains("control") && !reason.contains("INFO")),
        "{refused:?}"
    );
    let status = ok(vault.key_status(&caller("rotator")).await);
    assert_eq!(status.master_rotated_unix_ms, None);
}

#[tokio::test]
async fn after_a_later_rotation_the_rewrap_reads_idle_with_the_records_to_move() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    phones(&vault, &["+1 202-555-0113", "+1 202-555-0114"]).await;
    ok(vault.rotate_data_key(&caller("rotator")).await);
    ok(vault.start_rewrap(&caller("rotator"), None).await);
    let job = finished_rewrap(&vault).await;
    assert_eq!((job.target_version, job.done, job.remaining), (2, 2, 0));
    ok(vault.rotate_data_key(&caller("rotator")).await);
    let job = ok(vault.rewrap_status(&caller("rotator")).await);
    assert_eq!(
        (job.state, job.target_version, job.remaining),
        (JobState::Idle, 3, 2),
        "{job:?}"
    );
}

#[tokio::test]
async fn following_a_running_rewrap_without_a_rate_keeps_its_rate() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    phones(
        &vault,
        &["+1 202-555-0115", "+1 202-555-0116", "+1 202-555-0117"],
    )
    .await;
    ok(vault.rotate_data_key(&caller("rotator")).await);
    // One record a second: still running at the second call.
    ok(vault.start_rewrap(&caller("rotator"), Some(1)).await);
    let job = ok(vault.start_rewrap(&caller("rotator"), None).await);
    assert_eq!(
        (job.state, job.rate_per_second),
        (JobState::Running, 1),
        "{job:?}"
    );
    let job = ok(vault.start_rewrap(&caller("rotator"), Some(1000)).await);
    assert_eq!(job.rate_per_second, 1000, "a rate given applies");
    vault.stop_background().await;
}

#[tokio::test]
async fn a_new_master_key_under_a_directory_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    // Anyone could move `sub` aside and put a key they know in its place.
    let open_dir = dir.path().join("shared");
    let sub = open_dir.join("sub");
    ok(std::fs::create_dir_all(&sub));
    ok(std::fs::set_permissions(
        &open_dir,
        std::fs::Permissions::from_mode(0o777),
    ));
    ok(std::fs::set_permissions(
        &sub,
        std::fs::Permissions::from_mode(0o700),
    ));
    let key = sub.join("new.key");
    ok(std::fs::write(
        &key,
        MasterKey::generate().to_hex().as_bytes(),
    ));
    ok(std::fs::set_permissions(
        &key,
        std::fs::Permissions::from_mode(0o600),
    ));
    let refused = vault.rotate_master_key(&caller("rotator"), &key).await;
    assert!(
        matches!(&refused, Err(VaultError::InvalidArgument { field: "new_key_file", reason })
            if reason.contains("lets group or others replace")),
        "{refused:?}"
    );
    // Nor through a link from a closed directory to it, or to a directory
    // under it.
    let closed = dir.path().join("closed");
    ok(std::fs::create_dir(&closed));
    ok(std::fs::set_permissions(
        &closed,
        std::fs::Permissions::from_mode(0o700),
    ));
    ok(std::os::unix::fs::symlink(&key, closed.join("link.key")));
    ok(std::os::unix::fs::symlink(&sub, closed.join("dir")));
    for via in [closed.join("link.key"), closed.join("dir").join("new.key")] {
        let refused = vault.rotate_master_key(&caller("rotator"), &via).await;
        assert!(
            matches!(&refused, Err(VaultError::InvalidArgument { field: "new_key_file", reason })
                if reason.contains("lets group or others replace")),
            "{via:?}: {refused:?}"
        );
    }
    // With the directory closed, the same file is taken.
    ok(std::fs::set_permissions(
        &open_dir,
        std::fs::Permissions::from_mode(0o755),
    ));
    ok(vault.rotate_master_key(&caller("rotator"), &key).await);
}

#[tokio::test]
async fn a_new_master_key_path_with_bidirectional_or_invisible_characters_is_refused() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    for c in ['\u{202E}', '\u{2066}', '\u{200B}', '\u{2028}', '\u{7F}'] {
        let path = dir.path().join(format!("key{c}x"));
        let refused = vault.rotate_master_key(&caller("rotator"), &path).await;
        assert!(
            matches!(&refused, Err(VaultError::InvalidArgument { field: "new_key_file", reason })
                if reason.contains("bidirectional")),
            "U+{:04X}: {refused:?}",
            u32::from(c)
        );
    }
}

#[tokio::test]
async fn rotation_stops_at_the_live_version_limit_until_old_versions_retire() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    for _ in 1..super::keys::MAX_LIVE_VERSIONS {
        ok(vault.rotate_data_key(&caller("rotator")).await);
    }
    let refused = vault.rotate_data_key(&caller("rotator")).await;
    assert!(
        matches!(&refused, Err(VaultError::FailedPrecondition(m)) if m.contains("retire older versions")),
        "{refused:?}"
    );
    ok(vault.retire_key_version(&caller("rotator"), 1).await);
    ok(vault.rotate_data_key(&caller("rotator")).await);
}

#[tokio::test]
async fn an_index_rotation_whose_rebuild_never_started_is_rebuilt_at_the_next_start() {
    let dir = ok(tempfile::tempdir());
    let vault = open_vault(dir.path(), &MasterKey::generate()).await;
    phones(&vault, &["+1 202-555-0118", "+1 202-555-0119"]).await;
    // As if the server died between storing the new index key and the
    // rebuild's first state.
    ok(vault.rotate(crate::crypto::KeyPurpose::Index).await);
    vault.start_background();
    let started = Instant::now();
    loop {
        let status = ok(vault.key_status(&caller("rotator")).await);
        let states: Vec<(u32, KeyState, u64)> = status
            .index_keys
            .iter()
            .map(|k| (k.version, k.state, k.records))
            .collect();
        if states == [(1, KeyState::Retired, 0), (2, KeyState::Active, 2)] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vault.stop_background().await;
}

#[tokio::test]
async fn with_retire_after_rewrap_a_finished_rewrap_retires_the_emptied_versions() {
    let dir = ok(tempfile::tempdir());
    let store: Arc<dyn Store> = Arc::new(ok(SledStore::reopen_in_test(&config(dir.path()))));
    let settings = Settings {
        keys: KeySettings {
            retire_after_rewrap: true,
            ..KeySettings::default()
        },
        ..Settings::default()
    };
    let vault = Arc::new(vault_with(store, dir.path(), &MasterKey::generate(), settings).await);
    let tokens = phones(&vault, &["+1 202-555-0120", "+1 202-555-0121"]).await;
    ok(vault.rotate_data_key(&caller("rotator")).await);
    ok(vault.rotate_data_key(&caller("rotator")).await);
    ok(vault.start_rewrap(&caller("rotator"), None).await);
    finished_rewrap(&vault).await;
    let started = Instant::now();
    loop {
        let status = ok(vault.key_status(&caller("rotator")).await);
        let states: Vec<(u32, KeyState, u64)> = status
            .data_keys
            .iter()
            .map(|k| (k.version, k.state, k.records))
            .collect();
        if states
            == [
                (1, KeyState::Retired, 0),
                (2, KeyState::Retired, 0),
                (3, KeyState::Active, 2),
            ]
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revealed = ok(vault
        .detokenize(
            &caller("support"),
            "callback",
            "",
            tokens.iter().map(ToString::to_string).collect(),
        )
        .await);
    assert!(revealed.iter().all(Result::is_ok), "{revealed:?}");
}
