//! Backup and restore end to end: the real binary over real mTLS, a
//! backup under tokenize load, restored into a new data dir and served
//! with the same master key; refusals that change nothing; the policy
//! action `backup`; no plaintext in the backup, the logs or the trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{cli, start_with_config};
use common::{bounded, channel, connect, detokenize, field, tokenize, Pki, TestVault};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::backup_service_client::BackupServiceClient;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CALL: Duration = Duration::from_secs(30);

/// A fake phone number (+1 202-555-01xx), `n` below 100.
fn phone(n: usize) -> String {
    format!("+1 202-555-01{:02}", n % 100)
}

/// The needles of "no plaintext anywhere": every fake number in raw,
/// canonical and national form.
fn needles() -> Vec<Vec<u8>> {
    (0..100)
        .flat_map(|n| {
            [
                phone(n).into_bytes(),
                format!("+120255501{n:02}").into_bytes(),
                format!("20255501{n:02}").into_bytes(),
            ]
        })
        .collect()
}

fn files_containing(dir: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needles));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == &needle[..]) {
                    hits.push(format!(
                        "{} holds {:?}",
                        path.display(),
                        String::from_utf8_lossy(needle)
                    ));
                }
            }
        }
    }
    hits
}

/// Every file under `dir` with its bytes (directories as empty).
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push((path.clone(), Vec::new()));
            out.extend(snapshot_of(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// The CLI's connection flags for identity `who` of `pki` at `addr`.
fn conn(addr: &str, pki: &Path, who: &str) -> Vec<String> {
    vec![
        "--addr".into(),
        addr.into(),
        "--ca".into(),
        pki.join("ca.pem").display().to_string(),
        "--cert".into(),
        pki.join(format!("{who}.pem")).display().to_string(),
        "--key".into(),
        pki.join(format!("{who}.key")).display().to_string(),
        "--timeout".into(),
        "60s".into(),
    ]
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn backup_cli(addr: &str, pki: &Path, who: &str, out: &Path) -> std::process::Output {
    let mut args = vec![
        "backup".to_owned(),
        "--json".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(conn(addr, pki, who));
    run(&args)
}

fn restore_cli(input: &Path, data_dir: &Path) -> std::process::Output {
    run(&[
        "restore".to_owned(),
        "--in".into(),
        input.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ])
}

/// Tokenizes `values` as orders; the tokens.
async fn tokens(
    client: &mut pb::vault_client::VaultClient<tonic::transport::Channel>,
    values: &[String],
) -> Vec<String> {
    let fields = values
        .iter()
        .map(|v| field(pb::FieldKind::Phone, v))
        .collect();
    bounded(CALL, "tokenize", tokenize(client, fields))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_tokenize_load_restores_every_token_acknowledged_before_it_with_no_plaintext_anywhere(
) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let audit = tmp.path().join("data/audit.log");
    let config = common::write_config_file(
        tmp.path(),
        &pki,
        &common::dev_policy_without_quotas(),
        (&data, &audit),
        "",
        "",
    );
    let log = tmp.path().join("server.log");
    let server = start_with_config(&config, &log).unwrap();
    let addr = server.addr.clone();
    let mut orders = connect(&addr, &pki.client_tls("orders")).await;

    // Acknowledged before the backup: (value, token).
    let mut before: Vec<(String, String)> = Vec::new();
    let first: Vec<String> = (0..100).map(phone).collect();
    let got = tokens(&mut orders, &first).await;
    before.extend(first.into_iter().zip(got));
    // Tokens with a time to live travel with their expiry (the expiry
    // index too: the integrity check below compares them).
    let expiring_values: Vec<String> = (0..5)
        .map(|n| format!("+1 202-555-01{:02}", 90 + n))
        .collect();
    let fields = expiring_values
        .iter()
        .map(|v| pb::Field {
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..field(pb::FieldKind::Phone, v)
        })
        .collect();
    let expiring: Vec<String> = bounded(CALL, "tokenize with a ttl", tokenize(&mut orders, fields))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    before.extend(expiring_values.into_iter().zip(expiring.iter().cloned()));

    // Load: tokenize calls in a loop on two connections, each token kept
    // with whether the backup had started when it was acknowledged.
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (started, stop) = (started.clone(), stop.clone());
        let mut client = connect(&addr, &pki.client_tls("orders")).await;
        load.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let values: Vec<String> = (0..20).map(|i| phone(worker * 37 + round + i)).collect();
                let got = tokens(&mut client, &values).await;
                let before_backup = !started.load(Ordering::SeqCst);
                acked.extend(
                    values
                        .into_iter()
                        .zip(got)
                        .map(|(v, t)| (v, t, before_backup)),
                );
                round += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let file = tmp.path().join("backups/vault.fvb");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    started.store(true, Ordering::SeqCst);
    let addr2 = addr.clone();
    let (pki_dir, file2) = (pki.dir.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || backup_cli(&addr2, &pki_dir, "admin", &file2))
        .await
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let acked = bounded(CALL, "the load to stop", task).await.unwrap();
        for (value, token, before_backup) in acked {
            if before_backup {
                before.push((value, token));
            }
        }
    }
    assert!(before.len() > 100, "the load ran before the backup");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner-only");
    assert_eq!(summary["bytes"].as_u64(), Some(meta.len()));
    assert!(summary["records"].as_u64().unwrap() >= 100, "{summary}");
    assert_eq!(summary["file"].as_str(), Some(file.to_str().unwrap()));
    assert_eq!(summary["sha256"].as_str().unwrap().len(), 64);
    // Nothing left beside it.
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1
    );
    drop(server);

    // Restored into a new data dir; served with the same master key (a
    // new data dir has no audit trail: the restored vault begins a new
    // chain, which says so).
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::write(restored.join("unrelated.pem"), b"left alone").unwrap();
    let out = restore_cli(&file, &restored);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{} records", summary["records"])),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(restored.join("unrelated.pem")).unwrap(),
        b"left alone"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let restored_audit = restored.join("audit.log");
    let text = text
        .replace(&data.display().to_string(), &restored.display().to_string())
        .replace(
            &audit.display().to_string(),
            &restored_audit.display().to_string(),
        );
    let restored_config = tmp.path().join("restored.toml");
    std::fs::write(
        &restored_config,
        format!("{text}\n[audit]\nstart_new_chain = true\n"),
    )
    .unwrap();
    let restored_log = tmp.path().join("restored-server.log");
    let server = start_with_config(&restored_config, &restored_log).unwrap();
    let mut support = connect(&server.addr, &pki.client_tls("support")).await;
    for chunk in before.chunks(500) {
        let chunk_tokens: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
        let revealed = bounded(
            CALL,
            "detokenize",
            detokenize(&mut support, "callback", &chunk_tokens),
        )
        .await
        .unwrap();
        for ((value, token), r) in chunk.iter().zip(revealed) {
            let v = r.unwrap_or_else(|e| panic!("{token} acknowledged before the backup: {e:?}"));
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(v.value, format!("+{digits}"), "{token}");
        }
    }
    // The restored vault takes new tokens.
    let mut orders = connect(&server.addr, &pki.client_tls("orders")).await;
    let info = bounded(
        CALL,
        "token info",
        orders.get_token_info(pb::GetTokenInfoRequest {
            tokens: expiring.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    for r in info.results {
        match r.outcome {
            Some(pb::get_token_info_result::Outcome::Info(i)) => {
                assert!(i.expires_unix_ms > i.created_unix_ms, "{i:?}")
            }
            other => panic!("{}: {other:?}", r.token),
        }
    }
    let fresh = tokens(&mut orders, &[phone(99)]).await;
    assert_eq!(fresh.len(), 1);
    let server_log = server.log_path.clone();
    drop(server);

    // The restored store passes the integrity check.
    let store = fieldvault::store::SledStore::open(&fieldvault::store::SledConfig {
        path: restored.join("store"),
        cache_capacity_bytes: 16 << 20,
        max_queued_writes: fieldvault::store::DEFAULT_MAX_QUEUED_WRITES,
    });
    let store = match store {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let report = fieldvault::store::Store::check_integrity(&store)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.records as usize >= before.len());
    drop(store);

    // No plaintext in the backup, the data dirs, the server logs or the
    // audit trails; the backup was audited.
    let needles = needles();
    let hits = files_containing(tmp.path(), &needles);
    assert!(hits.is_empty(), "plaintext: {hits:?}");
    let trail = std::fs::read_to_string(&audit).unwrap();
    let event = trail
        .lines()
        .find(|l| l.contains("\"backup\""))
        .unwrap_or_else(|| panic!("no backup event in {trail}"));
    assert!(event.contains("spiffe://fieldvault.dev/admin"), "{event}");
    assert!(
        event.contains(&format!("\"records\":{}", summary["records"])),
        "{event}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("backup snapshot taken"), "{logs}");
    assert!(std::fs::metadata(&server_log).unwrap().len() > 0);
}

#[tokio::test]
async fn restore_refuses_a_dir_with_a_store_a_truncated_file_a_flipped_byte_and_a_newer_format_changing_nothing(
) {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    tokens(&mut orders, &[phone(1), phone(2), phone(3)]).await;
    let file = vault.tmp.path().join("vault.fvb");
    let (addr, pki) = (vault.addr(), vault.pki.dir.clone());
    let file2 = file.clone();
    let out = tokio::task::spawn_blocking(move || backup_cli(&addr, &pki, "admin", &file2))
        .await
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let bytes = std::fs::read(&file).unwrap();

    // Into the server's own data dir (it has a store).
    let data = vault.config.data_dir.clone();
    vault.stop().await;
    let before = snapshot_of(&data);
    let out = restore_cli(&file, &data);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ALREADY_EXISTS"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds a store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_of(&data), before, "nothing changed");

    // A directory given as the backup file.
    let fresh = vault.tmp.path().join("fresh");
    let out = restore_cli(vault.tmp.path(), &fresh);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "INVALID_ARGUMENT: --in {}: is a directory, not a backup file; nothing was changed",
            vault.tmp.path().display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!fresh.exists(), "nothing made");

    // Damaged files into a new data dir with certificates in it.
    let target = vault.tmp.path().join("new");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("server.pem"), b"certificate").unwrap();
    let empty = snapshot_of(&target);
    let bad = vault.tmp.path().join("bad.fvb");
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2;
    flipped[at] ^= 0x10;
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&2u32.to_be_bytes());
    for (what, content, says) in [
        (
            "truncated",
            bytes[..bytes.len() - 40].to_vec(),
            "is truncated",
        ),
        ("flipped", flipped, "damaged"),
        ("newer", newer, "format version is 2"),
    ] {
        std::fs::write(&bad, &content).unwrap();
        let out = restore_cli(&bad, &target);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let message = stderr(&out);
        assert!(message.contains(says), "{what}: {message}");
        assert!(message.contains("nothing was changed"), "{what}: {message}");
        assert_eq!(snapshot_of(&target), empty, "{what}: the data dir changed");
    }
    // The whole file restores there.
    let out = restore_cli(&file, &target);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(target.join("store/db").exists());
}

#[tokio::test]
async fn a_backup_to_a_path_that_cannot_be_written_is_refused_before_the_server_is_asked() {
    let vault = TestVault::start().await;
    let pki = vault.pki.dir.clone();
    let tmp = vault.tmp.path().to_owned();
    let file_in_the_way = tmp.join("a-file");
    std::fs::write(&file_in_the_way, b"x").unwrap();
    // A closed port: a refusal about the path proves the server was never
    // asked.
    let closed = common::conn::closed_port();
    for (out, says) in [
        (
            tmp.join("no/such/dir/vault.fvb"),
            "No such file or directory",
        ),
        (file_in_the_way.join("vault.fvb"), "Not a directory"),
        (
            tmp.clone(),
            "is a directory, not a file: name a file in it, e.g. ",
        ),
        // A device is refused, never replaced by a backup.
        (
            std::path::PathBuf::from("/dev/null"),
            "is not a regular file (a device, socket or fifo)",
        ),
    ] {
        let (pki, out2, closed) = (pki.clone(), out.clone(), closed.clone());
        let result = tokio::task::spawn_blocking(move || backup_cli(&closed, &pki, "admin", &out2))
            .await
            .unwrap();
        assert_eq!(result.status.code(), Some(2));
        let json: serde_json::Value = serde_json::from_str(stdout(&result).trim()).unwrap();
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(
            message.contains(&format!("--out {}", out.display())),
            "{message}"
        );
        assert_eq!(
            json["error"]["code"].as_str(),
            Some("INVALID_ARGUMENT"),
            "{json}"
        );
    }
    assert_eq!(std::fs::read(&file_in_the_way).unwrap(), b"x");
}

#[tokio::test]
async fn a_caller_without_the_backup_rule_is_permission_denied_and_the_refusal_is_audited() {
    let vault = TestVault::start().await;
    for who in ["orders", "support", "intruder"] {
        let mut client =
            BackupServiceClient::new(channel(&vault.addr(), &vault.pki.client_tls(who)).await);
        let status = bounded(CALL, "backup", client.backup(pb::BackupRequest {}))
            .await
            .err()
            .unwrap_or_else(|| panic!("{who} got a backup"));
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{who}: {status:?}"
        );
        if who != "intruder" {
            // (The intruder is named by no rule at all, and told so.)
            assert!(status.message().contains("backup"), "{}", status.message());
        }
    }
    let out = vault.tmp.path().join("denied.fvb");
    let (addr, pki, out2) = (vault.addr(), vault.pki.dir.clone(), out.clone());
    let result = tokio::task::spawn_blocking(move || backup_cli(&addr, &pki, "orders", &out2))
        .await
        .unwrap();
    assert_eq!(result.status.code(), Some(2));
    assert!(
        stdout(&result).contains("PERMISSION_DENIED"),
        "{}",
        stdout(&result)
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(vault.tmp.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".partial-"))
            .count(),
        0,
        "no partial file left"
    );
    // The admin is allowed, with the same client.
    let mut admin =
        BackupServiceClient::new(channel(&vault.addr(), &vault.pki.client_tls("admin")).await);
    let mut stream = bounded(CALL, "backup", admin.backup(pb::BackupRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = bounded(CALL, "a chunk", stream.message()).await.unwrap() {
        bytes.extend_from_slice(&m.chunk);
    }
    assert!(bytes.starts_with(b"FVBACKUP"));
    let summary = fieldvault::store::backup::read_backup(&bytes[..], |_, _, _| Ok(())).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    let trail = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let events: Vec<&str> = trail.lines().filter(|l| l.contains("\"backup\"")).collect();
    assert_eq!(events.len(), 5, "{trail}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("PERMISSION_DENIED") || e.contains("denied"))
            .count(),
        4,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_frozen_or_deny_listed_caller_with_a_backup_rule_is_refused() {
    // rotator may back up but is deny-listed; ops may freeze callers.
    let vault = TestVault::start_with(|config| {
        let policy = fieldvault::dev::DEV_POLICY
            .replace("deny = []", "deny = [\"spiffe://fieldvault.dev/rotator\"]")
            + r#"
[[rules]]
name = "rotator may back up"
callers = ["spiffe://fieldvault.dev/rotator"]
action = "backup"

[[rules]]
name = "ops manages freezes"
callers = ["spiffe://fieldvault.dev/ops"]
action = "admin"
"#;
        std::fs::write(&config.policy_file, policy).unwrap();
    })
    .await;
    let backup = |who: &'static str| {
        let (addr, tls) = (vault.addr(), vault.pki.client_tls(who));
        async move {
            let mut client = BackupServiceClient::new(channel(&addr, &tls).await);
            bounded(CALL, "backup", client.backup(pb::BackupRequest {}))
                .await
                .expect_err("a refused caller got a backup")
        }
    };
    let status = backup("rotator").await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("deny"), "{}", status.message());

    vault
        .pki
        .issue_client("ops", "ops", Some(&fieldvault::dev::spiffe_id("ops")));
    let mut ops =
        fieldvault::client::Admin::new(channel(&vault.addr(), &vault.pki.client_tls("ops")).await);
    bounded(
        CALL,
        "freeze",
        ops.freeze_caller("spiffe://fieldvault.dev/admin", "a test"),
    )
    .await
    .unwrap();
    let status = backup("admin").await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("frozen"), "{}", status.message());
}
