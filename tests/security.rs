//! The security model over the real server: file modes under a loose umask,
//! refused permissions on the files that steer the server, and no
//! existence or kind oracle in Detokenize.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{start_with_config_under_umask, ServerProcess};
use common::*;
use fieldvault::app;
use fieldvault::domain::TokenId;
use fieldvault::grpc::pb::{FieldKind, NationalIdScheme};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// Every call in these tests is bounded.
const DEADLINE: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry under `root` (itself included) whose mode is not 0700 for a
/// directory or 0600 for a regular file, as "path mode".
fn loose_entries(root: &Path) -> Vec<String> {
    let mut loose = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.mode() & 0o7777;
        let wanted = if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            mode
        };
        if mode != wanted {
            loose.push(format!("{} {mode:04o}", path.display()));
        }
    }
    loose.sort();
    loose
}

fn count_entries(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                1 + count_entries(&e.path())
            } else {
                1
            }
        })
        .sum()
}

struct ConfigFiles {
    config: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    server_log: PathBuf,
    pki: Pki,
}

/// A config for `serve --config`: data in DIR/data, the audit log in
/// DIR/logs (neither exists yet), keys and policy 0600.
fn config_files(dir: &Path) -> ConfigFiles {
    let pki = Pki::new(&dir.join("pki"));
    let config = write_config_file(
        dir,
        &pki,
        // It reveals more than the dev quota allows in a minute.
        &common::dev_policy_without_quotas(),
        (&dir.join("data"), &dir.join("logs/audit/audit.log")),
        "",
        "[token_modes]\nphone = \"deterministic\"",
    );
    ConfigFiles {
        config,
        data: dir.join("data"),
        logs: dir.join("logs"),
        server_log: dir.join("server.log"),
        pki,
    }
}

/// Tokenizes `rounds` batches of phone numbers, addresses and emails, and
/// detokenizes each batch once (so the audit log is written).
async fn write_some_tokens(server: &ServerProcess, pki: &Pki, rounds: usize) {
    let tls = pki.client_tls("orders");
    let mut orders = bounded("connect", fieldvault::client::connect(&server.addr, &tls))
        .await
        .unwrap();
    let mut support = bounded(
        "connect",
        fieldvault::client::connect(&server.addr, &pki.client_tls("support")),
    )
    .await
    .unwrap();
    for round in 0..rounds {
        let fields: Vec<_> = (0..50)
            .flat_map(|i| {
                [
                    field(FieldKind::Phone, &format!("+1 202-555-01{:02}", i % 100)),
                    field(
                        FieldKind::Address,
                        &format!("{round} Fakestreet {i}, Testville 99999, US"),
                    ),
                    field(FieldKind::Email, &format!("test.{round}.{i}@example.com")),
                ]
            })
            .collect();
        let tokens = bounded("tokenize", tokens_for(&mut orders, fields)).await;
        bounded("detokenize", detokenize(&mut support, "callback", &tokens))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn under_umask_022_every_file_the_server_creates_is_0600_and_every_directory_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let files = config_files(tmp.path());
    // An existing data dir open to others is tightened to 0700 (the logs
    // dir does not exist yet: the server creates it).
    std::fs::create_dir(&files.data).unwrap();
    set_mode(&files.data, 0o755);

    let server = start_with_config_under_umask(&files.config, &files.server_log, "022")
        .unwrap_or_else(|e| panic!("server did not start: {e}"));
    write_some_tokens(&server, &files.pki, 20).await;
    // While it runs, and after kill -9 (nothing tidies up on the way out).
    for root in [&files.data, &files.logs] {
        assert_eq!(loose_entries(root), Vec::<String>::new(), "while serving");
    }
    server.kill9();
    for root in [&files.data, &files.logs] {
        assert_eq!(loose_entries(root), Vec::<String>::new(), "after kill -9");
    }

    // A restart replays the log and lets sled recover: still owner-only.
    let server = start_with_config_under_umask(&files.config, &files.server_log, "022")
        .unwrap_or_else(|e| panic!("server did not restart: {e}"));
    write_some_tokens(&server, &files.pki, 5).await;
    drop(server);
    for root in [&files.data, &files.logs] {
        assert_eq!(loose_entries(root), Vec::<String>::new(), "after a restart");
    }
    // The walk saw the store and the audit log, not an empty directory.
    assert!(count_entries(&files.data.join("store")) >= 3);
    assert!(files.logs.join("audit/audit.log").is_file());
}

#[tokio::test]
async fn the_server_refuses_a_policy_ca_or_key_file_others_can_change_or_read() {
    let mut vault = TestVault::start().await;
    vault.stop().await;
    let config = vault.config.clone();
    let cases: [(&str, PathBuf, u32, &str); 4] = [
        (
            "policy_file",
            config.policy_file.clone(),
            0o664,
            "mode 0664 is writable by group; run: chmod g-w,o-w",
        ),
        (
            "tls.client_ca",
            config.tls.client_ca.clone(),
            0o646,
            "mode 0646 is writable by others; run: chmod g-w,o-w",
        ),
        (
            "tls.key",
            config.tls.key.clone(),
            // 0640 in the server's own group is accepted (a Kubernetes
            // Secret mounted with fsGroup); a group that may write is not.
            0o660,
            "mode 0660 is readable and writable by group; run: chmod 600",
        ),
        (
            "master_key.file",
            match &config.master_key {
                fieldvault::config::MasterKeySource::File(path) => path.clone(),
                other => panic!("{other:?}"),
            },
            0o604,
            "mode 0604 is readable by others; run: chmod 600",
        ),
    ];
    for (setting, path, mode, expected) in cases {
        set_mode(&path, mode);
        let err = bounded("start", app::start(&config, &no_env))
            .await
            .err()
            .unwrap()
            .to_string();
        let shown = path.display();
        assert!(
            err.contains(&format!("{setting} {shown}: {expected} {shown}")),
            "{setting}: {err}"
        );
        set_mode(&path, 0o600);
    }
    // A policy others may read (but not change) is fine.
    set_mode(&config.policy_file, 0o644);
    let server = bounded("start", app::start(&config, &no_env))
        .await
        .unwrap();
    bounded("shutdown", server.shutdown()).await.unwrap();
}

/// Detokenizes one token as support for "callback" and returns its error.
async fn refusal(vault: &TestVault, token: &str) -> tonic_types::Status {
    let mut support = bounded("connect", vault.client("support")).await;
    let got = bounded(
        "detokenize",
        detokenize(&mut support, "callback", &[token.to_owned()]),
    )
    .await
    .unwrap();
    got.into_iter().next().unwrap().unwrap_err()
}

async fn national_id_token(vault: &TestVault) -> String {
    let mut orders = bounded("connect", vault.client("orders")).await;
    let fields = vec![national_id(NationalIdScheme::CnRic, "11010519491231002X")];
    bounded("tokenize", tokens_for(&mut orders, fields))
        .await
        .remove(0)
}

#[tokio::test]
async fn a_caller_without_rights_to_a_kind_cannot_tell_its_token_from_an_unknown_one() {
    // The sample policy gives support no right to national IDs.
    let vault = TestVault::start().await;
    let hidden = national_id_token(&vault).await;
    // Well-formed, but not made by this vault's token key.
    let unknown = TokenId::from_bytes([0x5a; 16]).to_string();

    let for_hidden = refusal(&vault, &hidden).await;
    let for_unknown = refusal(&vault, &unknown).await;
    assert_eq!(code(&for_unknown), Code::NotFound);
    // Code, message and details, byte for byte.
    assert_eq!(for_hidden, for_unknown);

    // The audit trail keeps the truth.
    let log = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let items: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|line| line["event"]["action"] == "detokenize")
        .map(|line| line["event"]["items"][0].clone())
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["token"], hidden.as_str());
    assert_eq!(items[0]["kind"], "national_id");
    assert_eq!(items[0]["outcome"], "permission_denied");
    assert_eq!(items[1]["token"], unknown.as_str());
    assert_eq!(items[1]["kind"], serde_json::Value::Null);
    assert_eq!(items[1]["outcome"], "not_issued");
}

#[tokio::test]
async fn explicit_kind_denials_name_the_kind_when_the_config_asks_for_them() {
    let vault = TestVault::start_with(|c| c.explicit_kind_denials = true).await;
    let hidden = national_id_token(&vault).await;
    let err = refusal(&vault, &hidden).await;
    assert_eq!(code(&err), Code::PermissionDenied);
    assert!(
        err.message.contains("field kind 'national_id'"),
        "{}",
        err.message
    );
}
