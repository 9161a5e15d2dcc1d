//! The key lifecycle under traffic and across restarts: a rewrap while
//! clients tokenize and detokenize, an index-key rotation with
//! deterministic tokens, a master-key rotation and the restart after it,
//! and the rotation schedule. A real server over real mTLS, certificates
//! made by rcgen at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::crypto::MasterKey;
use fieldvault::domain::TokenMode;
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::grpc::pb::FieldKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

async fn admin(vault: &TestVault) -> KeyAdminClient<Channel> {
    KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("rotator")).await)
}

async fn status(rotator: &mut KeyAdminClient<Channel>) -> pb::GetKeyStatusResponse {
    rotator
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// (version, state, records) of each version.
fn versions(keys: &[pb::KeyVersionStatus]) -> Vec<(u32, i32, u64)> {
    keys.iter()
        .map(|k| (k.version, k.state, k.records))
        .collect()
}

/// Waits (at most `limit`) until `job` of the status reports finished.
async fn finished(
    rotator: &mut KeyAdminClient<Channel>,
    job: fn(&pb::GetKeyStatusResponse) -> Option<&pb::JobStatus>,
    limit: Duration,
) -> pb::GetKeyStatusResponse {
    let started = Instant::now();
    loop {
        let s = status(rotator).await;
        if job(&s).is_some_and(|j| j.state == pb::JobState::Finished as i32) {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "the job did not finish within {limit:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// US area codes for test numbers.
const AREAS: [u32; 20] = [
    202, 206, 212, 213, 214, 216, 225, 303, 305, 312, 415, 503, 617, 702, 713, 718, 801, 808, 907,
    919,
];

/// Fictional numbers (555-01xx): `n` in 0..100 for area code `area`.
fn phone(area: u32, n: u32) -> String {
    format!("+1 {area}-555-01{n:02}")
}

fn canonical(area: u32, n: u32) -> String {
    format!("+1{area}55501{n:02}")
}

async fn tokenize_phones(
    orders: &mut pb::vault_client::VaultClient<Channel>,
    values: &[String],
) -> Vec<String> {
    tokens_for(
        orders,
        values.iter().map(|v| field(FieldKind::Phone, v)).collect(),
    )
    .await
}

/// Asserts every token reveals its value.
async fn assert_reveal(
    support: &mut pb::vault_client::VaultClient<Channel>,
    expected: &HashMap<String, String>,
) {
    let tokens: Vec<String> = expected.keys().cloned().collect();
    for chunk in tokens.chunks(500) {
        let revealed = detokenize(support, "callback", chunk).await.unwrap();
        for (token, r) in chunk.iter().zip(revealed) {
            let r = r.unwrap_or_else(|e| panic!("{token}: {e:?}"));
            assert_eq!(&r.value, &expected[token], "{token}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_under_live_traffic_fails_no_request_and_changes_no_token() {
    // Its readers reveal more than the dev quota allows in a minute.
    let vault = TestVault::start_with(|c| {
        let policy = c.data_dir.with_file_name("no-quota-policy.toml");
        common::write(&policy, common::dev_policy_without_quotas().as_bytes());
        c.policy_file = policy;
    })
    .await;
    let mut orders = vault.client("orders").await;
    let mut rotator = admin(&vault).await;
    let mut expected = HashMap::new();
    for area in AREAS {
        let values: Vec<String> = (0..100).map(|n| phone(area, n)).collect();
        let tokens = tokenize_phones(&mut orders, &values).await;
        for (n, t) in tokens.into_iter().enumerate() {
            expected.insert(t, canonical(area, n as u32));
        }
    }
    let before = expected.len() as u64;
    rotator
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .unwrap();
    // Slow enough that the load below runs through the whole job.
    rotator
        .start_rewrap(pb::StartRewrapRequest {
            rate_per_second: Some(1000),
        })
        .await
        .unwrap();

    let known = Arc::new(Mutex::new(expected));
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..2u32 {
        let (addr, orders_tls, support_tls) = (
            vault.addr(),
            vault.pki.client_tls("orders"),
            vault.pki.client_tls("support"),
        );
        let (known, stop, calls, failures) =
            (known.clone(), stop.clone(), calls.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let mut orders = connect(&addr, &orders_tls).await;
            let mut support = connect(&addr, &support_tls).await;
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let value = phone(404 + worker, n % 100);
                match tokenize(&mut orders, vec![field(FieldKind::Phone, &value)]).await {
                    Ok(mut r) => match r.pop() {
                        Some(Ok(token)) => {
                            known
                                .lock()
                                .unwrap()
                                .insert(token, canonical(404 + worker, n % 100));
                        }
                        other => {
                            eprintln!("tokenize item failed: {other:?}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                    Err(e) => {
                        eprintln!("tokenize failed: {e:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let sample: Vec<(String, String)> = known
                    .lock()
                    .unwrap()
                    .iter()
                    .skip((n as usize * 37) % 1900)
                    .take(20)
                    .map(|(t, v)| (t.clone(), v.clone()))
                    .collect();
                let tokens: Vec<String> = sample.iter().map(|(t, _)| t.clone()).collect();
                match detokenize(&mut support, "callback", &tokens).await {
                    Ok(revealed) => {
                        for ((token, value), r) in sample.iter().zip(revealed) {
                            match r {
                                Ok(r) if &r.value == value => {}
                                other => {
                                    eprintln!("{token}: {other:?}");
                                    failures.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("detokenize failed: {e:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                calls.fetch_add(2, Ordering::SeqCst);
                n += 1;
            }
        }));
    }
    let done = finished(&mut rotator, |s| s.rewrap.as_ref(), Duration::from_secs(60)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        bounded(CALL_DEADLINE, "a load task to stop", task)
            .await
            .unwrap();
    }
    let calls = calls.load(Ordering::SeqCst);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "of {calls} calls");
    assert!(calls >= 20, "the load ran during the rewrap: {calls} calls");

    let job = done.rewrap.unwrap();
    assert_eq!((job.target_version, job.failed), (2, 0), "{job:?}");
    assert!(job.done >= before, "{job:?}");
    let expected = known.lock().unwrap().clone();
    let s = status(&mut rotator).await;
    assert_eq!(
        versions(&s.data_keys),
        [
            (1, pb::KeyState::DecryptOnly as i32, 0),
            (2, pb::KeyState::Active as i32, expected.len() as u64)
        ]
    );
    rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await
        .unwrap();
    let mut support = vault.client("support").await;
    assert_reveal(&mut support, &expected).await;
}

#[tokio::test]
async fn deterministic_tokens_survive_an_index_key_rotation_during_and_after_the_rebuild() {
    let mut vault = TestVault::start_with(|c| {
        c.token_modes.phone = TokenMode::Deterministic;
        // A slow rebuild, so that tokenize calls land in the middle of it.
        c.keys.rewrap_rate = 100;
    })
    .await;
    let mut orders = vault.client("orders").await;
    let mut rotator = admin(&vault).await;
    let first: Vec<String> = (0..100).map(|n| phone(202, n)).collect();
    let first_tokens = tokenize_phones(&mut orders, &first).await;
    // Random-mode values move too.
    let emails = tokens_for(
        &mut orders,
        (0..20)
            .map(|n| field(FieldKind::Email, &format!("user{n}@example.com")))
            .collect(),
    )
    .await;

    let version = rotator
        .rotate_index_key(pb::RotateIndexKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, 2);
    // During the rebuild: old values keep their tokens, new ones get one
    // token each, whichever index key knows them.
    let second: Vec<String> = (0..100).map(|n| phone(303, n)).collect();
    let second_tokens = tokenize_phones(&mut orders, &second).await;
    let mut checks_during = 0;
    loop {
        let s = status(&mut rotator).await;
        let job = s.index_rebuild.unwrap();
        assert_eq!(tokenize_phones(&mut orders, &first).await, first_tokens);
        assert_eq!(tokenize_phones(&mut orders, &second).await, second_tokens);
        if job.state == pb::JobState::Finished as i32 {
            break;
        }
        checks_during += 1;
        assert!(checks_during < 600, "the rebuild did not finish: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks_during > 0, "no check ran during the rebuild");

    let s = status(&mut rotator).await;
    assert_eq!(
        versions(&s.index_keys),
        [
            (1, pb::KeyState::Retired as i32, 0),
            (2, pb::KeyState::Active as i32, 220)
        ],
        "{s:?}"
    );
    let job = s.index_rebuild.unwrap();
    assert_eq!((job.target_version, job.failed, job.remaining), (2, 0, 0));

    // After a restart, under the new index key only.
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    assert_eq!(tokenize_phones(&mut orders, &first).await, first_tokens);
    assert_eq!(tokenize_phones(&mut orders, &second).await, second_tokens);
    let mut support = vault.client("support").await;
    let revealed = detokenize(&mut support, "callback", &emails).await.unwrap();
    assert!(revealed.iter().all(Result::is_ok), "{revealed:?}");
}

/// Writes a master key file with `mode`; its path.
fn key_file(dir: &std::path::Path, name: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    write(&path, MasterKey::generate().to_hex().as_bytes());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test]
async fn after_a_master_key_rotation_the_server_starts_with_the_new_key_only() {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let mut rotator = admin(&vault).await;
    let values: Vec<String> = (0..10).map(|n| phone(202, n)).collect();
    let tokens = tokenize_phones(&mut orders, &values).await;
    let expected: HashMap<String, String> = tokens
        .iter()
        .cloned()
        .zip((0..10).map(|n| canonical(202, n)))
        .collect();

    // Bad key files change nothing.
    let loose = key_file(vault.tmp.path(), "loose.key", 0o644);
    let short = vault.tmp.path().join("short.key");
    write(&short, b"abcdef");
    for bad in [&loose, &short] {
        let e = rotator
            .rotate_master_key(pb::RotateMasterKeyRequest {
                new_key_file: bad.display().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("new_key_file: "), "{e:?}");
    }
    assert_eq!(status(&mut rotator).await.master_rotated_unix_ms, 0);

    let new = key_file(vault.tmp.path(), "new.key", 0o600);
    rotator
        .rotate_master_key(pb::RotateMasterKeyRequest {
            new_key_file: new.display().to_string(),
        })
        .await
        .unwrap();
    assert!(status(&mut rotator).await.master_rotated_unix_ms > 0);
    // The running server goes on: a new data key is wrapped by the new
    // master key.
    rotator
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .unwrap();
    let mut support = vault.client("support").await;
    assert_reveal(&mut support, &expected).await;

    // Restarted with the old key: refused, saying why.
    vault.stop().await;
    let refused = fieldvault::app::start(&vault.config, &no_env).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("replaced by `fieldvault keys rotate-master`"),
        "{message}"
    );
    // With the new one: every token.
    vault.config.master_key = fieldvault::config::MasterKeySource::File(new);
    vault.restart().await;
    let mut support = vault.client("support").await;
    assert_reveal(&mut support, &expected).await;
}

#[tokio::test]
async fn the_schedule_rotates_the_data_key_and_rewraps_without_a_call() {
    let vault = TestVault::start_with(|c| {
        c.keys.rotate_every = Some(Duration::from_secs(2));
    })
    .await;
    let mut orders = vault.client("orders").await;
    let values: Vec<String> = (0..10).map(|n| phone(202, n)).collect();
    let tokens = tokenize_phones(&mut orders, &values).await;
    let mut rotator = admin(&vault).await;
    let started = Instant::now();
    loop {
        let s = status(&mut rotator).await;
        let rewrapped = s
            .rewrap
            .as_ref()
            .is_some_and(|j| j.state == pb::JobState::Finished as i32 && j.target_version >= 2);
        if rewrapped && s.data_keys.first().is_some_and(|k| k.records == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no scheduled rotation and rewrap: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut support = vault.client("support").await;
    let revealed = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert!(revealed.iter().all(Result::is_ok), "{revealed:?}");
}
