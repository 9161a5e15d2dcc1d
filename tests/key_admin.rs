//! The KeyAdmin service and `fieldvault keys` as callers use them: a real
//! server over real mTLS (in-process, or `serve --dev` for the CLI), with
//! certificates made by rcgen at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conn::{cli_in, stderr, stdout};
use common::process::{start_dev, CLI_DEADLINE};
use common::*;
use fieldvault::crypto::MasterKey;
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::grpc::pb::FieldKind;
use fieldvault::vault::MAX_REWRAP_RATE;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

const PHONES: [&str; 3] = ["+1 202-555-0140", "+1 202-555-0141", "+1 202-555-0142"];

/// A KeyAdmin client for dev identity `name`; every call has
/// [`CALL_DEADLINE`].
async fn admin(vault: &TestVault, name: &str) -> KeyAdminClient<Channel> {
    KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls(name)).await)
}

/// Calls every KeyAdmin method once with a well-formed request; the
/// outcome of each, by method name.
async fn every_call(client: &mut KeyAdminClient<Channel>) -> Vec<(&'static str, tonic::Status)> {
    fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
        match r {
            Ok(_) => tonic::Status::ok(""),
            Err(s) => s,
        }
    }
    vec![
        (
            "RotateDataKey",
            outcome(client.rotate_data_key(pb::RotateDataKeyRequest {}).await),
        ),
        (
            "GetKeyStatus",
            outcome(client.get_key_status(pb::GetKeyStatusRequest {}).await),
        ),
        (
            "StartRewrap",
            outcome(
                client
                    .start_rewrap(pb::StartRewrapRequest {
                        rate_per_second: Some(100),
                    })
                    .await,
            ),
        ),
        (
            "GetRewrapStatus",
            outcome(
                client
                    .get_rewrap_status(pb::GetRewrapStatusRequest {})
                    .await,
            ),
        ),
        (
            "RetireKeyVersion",
            outcome(
                client
                    .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
                    .await,
            ),
        ),
        (
            "RotateIndexKey",
            outcome(client.rotate_index_key(pb::RotateIndexKeyRequest {}).await),
        ),
        (
            "RotateMasterKey",
            outcome(
                client
                    .rotate_master_key(pb::RotateMasterKeyRequest {
                        new_key_file: "/nonexistent/fieldvault-test/new.key".into(),
                    })
                    .await,
            ),
        ),
    ]
}

/// Asserts `status` is INVALID_ARGUMENT naming `field` in its message and
/// in a google.rpc.BadRequest detail.
#[track_caller]
fn assert_names_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{status:?}"
    );
    let bad = status
        .get_details_bad_request()
        .expect("a BadRequest detail");
    assert_eq!(bad.field_violations[0].field, field);
}

async fn key_status(client: &mut KeyAdminClient<Channel>) -> pb::GetKeyStatusResponse {
    client
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits (at most a minute) for the rewrap job to finish; its last status.
async fn rewrap_finished(client: &mut KeyAdminClient<Channel>) -> pb::JobStatus {
    let started = Instant::now();
    loop {
        let job = client
            .get_rewrap_status(pb::GetRewrapStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if job.state == pb::JobState::Finished as i32 {
            return job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rewrap did not finish within a minute: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Who may call.

/// Needs the vault's policy check (action `keys`) in every KeyAdmin method.
#[tokio::test]
async fn callers_without_a_keys_rule_are_denied_every_key_admin_call_and_nothing_changes() {
    let vault = TestVault::start().await;
    for name in ["orders", "support", "intruder"] {
        let mut client = admin(&vault, name).await;
        for (method, status) in every_call(&mut client).await {
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{name} calling {method}: {status:?}"
            );
            let why = if name == "intruder" {
                "no policy rule names caller"
            } else {
                "has no rule allowing keys"
            };
            assert!(
                status.message().contains(why),
                "{name} calling {method}: {status:?}"
            );
        }
    }
    // Nothing was rotated, started or retired.
    let status = key_status(&mut admin(&vault, "rotator").await).await;
    let versions: Vec<(u32, i32)> = status
        .data_keys
        .iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(versions, [(1, pb::KeyState::Active as i32)]);
    assert_eq!(status.index_keys.len(), 1, "{status:?}");
    assert_eq!(status.master_rotated_unix_ms, 0);
    assert_eq!(
        status.rewrap.unwrap().state,
        pb::JobState::Idle as i32,
        "no rewrap was started"
    );
}

// ---------------------------------------------------------------------------
// Bad input at the wire.

#[tokio::test]
async fn a_rewrap_rate_of_zero_or_past_the_maximum_is_invalid_argument_naming_rate_per_second() {
    let vault = TestVault::start().await;
    let mut rotator = admin(&vault, "rotator").await;
    for rate in [0, MAX_REWRAP_RATE + 1, u32::MAX] {
        let status = rotator
            .start_rewrap(pb::StartRewrapRequest {
                rate_per_second: Some(rate),
            })
            .await
            .unwrap_err();
        assert_names_field(&status, "rate_per_second");
    }
}

#[tokio::test]
async fn a_caller_without_the_keys_right_is_denied_before_its_arguments_are_judged() {
    let vault = TestVault::start().await;
    let mut intruder = admin(&vault, "intruder").await;
    let denied = [
        intruder
            .start_rewrap(pb::StartRewrapRequest {
                rate_per_second: Some(0),
            })
            .await
            .unwrap_err(),
        intruder
            .retire_key_version(pb::RetireKeyVersionRequest { version: 0 })
            .await
            .unwrap_err(),
        intruder
            .rotate_master_key(pb::RotateMasterKeyRequest {
                new_key_file: "relative.key".into(),
            })
            .await
            .unwrap_err(),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
}

#[tokio::test]
async fn an_empty_or_relative_new_key_file_is_invalid_argument_naming_new_key_file() {
    let vault = TestVault::start().await;
    let mut rotator = admin(&vault, "rotator").await;
    for path in ["", "new.key", "../keys/new.key"] {
        let status = rotator
            .rotate_master_key(pb::RotateMasterKeyRequest {
                new_key_file: path.into(),
            })
            .await
            .unwrap_err();
        assert_names_field(&status, "new_key_file");
    }
}

#[tokio::test]
async fn retiring_version_zero_is_invalid_argument_naming_version() {
    let vault = TestVault::start().await;
    let mut rotator = admin(&vault, "rotator").await;
    let status = rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 0 })
        .await
        .unwrap_err();
    assert_names_field(&status, "version");
}

#[tokio::test]
async fn health_reports_the_key_admin_service_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let vault = TestVault::start().await;
    let mut health =
        HealthClient::new(channel(&vault.addr(), &vault.pki.client_tls("intruder")).await);
    let answer = health
        .check(HealthCheckRequest {
            service: "fieldvault.v1.KeyAdmin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

// ---------------------------------------------------------------------------
// The lifecycle over the wire (needs the vault's key-lifecycle internals).

#[tokio::test]
async fn tokens_made_before_and_after_a_rotation_detokenize_and_status_counts_them() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    let mut rotator = admin(&vault, "rotator").await;
    let fields = |values: &[&str]| {
        values
            .iter()
            .map(|v| field(FieldKind::Phone, v))
            .collect::<Vec<_>>()
    };
    let before = tokens_for(&mut orders, fields(&PHONES)).await;
    let version = rotator
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, 2);
    let after = tokens_for(&mut orders, fields(&PHONES[..2])).await;

    let status = key_status(&mut rotator).await;
    let versions: Vec<(u32, i32, u64)> = status
        .data_keys
        .iter()
        .map(|v| (v.version, v.state, v.records))
        .collect();
    assert_eq!(
        versions,
        [
            (1, pb::KeyState::DecryptOnly as i32, 3),
            (2, pb::KeyState::Active as i32, 2)
        ]
    );
    assert!(status.data_keys[1].created_unix_ms > 0, "{status:?}");

    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let revealed = detokenize(&mut support, "callback", &all).await.unwrap();
    let values: Vec<String> = revealed.into_iter().map(|r| r.unwrap().value).collect();
    assert_eq!(
        values,
        [
            "+12025550140",
            "+12025550141",
            "+12025550142",
            "+12025550140",
            "+12025550141"
        ]
    );
}

#[tokio::test]
async fn after_a_rewrap_the_old_version_retires_and_every_token_still_detokenizes() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    let mut rotator = admin(&vault, "rotator").await;
    let fields: Vec<pb::Field> = PHONES.iter().map(|v| field(FieldKind::Phone, v)).collect();
    let tokens = tokens_for(&mut orders, fields).await;
    rotator
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .unwrap();

    // Records remain on v1: retiring it is refused, and so is the active
    // version and one that never existed.
    let status = rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 2 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 99 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    rotator
        .start_rewrap(pb::StartRewrapRequest {
            rate_per_second: None,
        })
        .await
        .unwrap();
    let job = rewrap_finished(&mut rotator).await;
    assert_eq!(
        (job.target_version, job.done, job.remaining, job.failed),
        (2, 3, 0, 0),
        "{job:?}"
    );
    let status = key_status(&mut rotator).await;
    assert_eq!(status.data_keys[0].records, 0, "{status:?}");
    assert_eq!(status.data_keys[1].records, 3, "{status:?}");

    rotator
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await
        .unwrap();
    let status = key_status(&mut rotator).await;
    assert_eq!(status.data_keys[0].state, pb::KeyState::Retired as i32);
    let revealed = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert!(revealed.iter().all(Result::is_ok), "{revealed:?}");
}

// ---------------------------------------------------------------------------
// The CLI.

/// The connection flags of dev identity `who` for a `serve --dev` at
/// `addr` with data dir `data`, after `args`.
fn dev_args<'a>(args: &[&'a str], addr: &'a str, who: &'a str, data: &'a str) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--addr", addr, "--dev-identity", who, "--data-dir", data]);
    all
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

fn json_object(out: &std::process::Output) -> Value {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {}", show(out));
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", show(out)))
}

#[test]
fn keys_help_lists_every_subcommand() {
    let out = cli_in(Path::new("."), &["keys", "--help"], &[], CLI_DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let help = stdout(&out);
    for command in [
        "status",
        "rotate",
        "rewrap",
        "retire",
        "rotate-index",
        "rotate-master",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} is not listed:\n{help}"
        );
    }
    let out = cli_in(
        Path::new("."),
        &["keys", "rotate-master", "--help"],
        &[],
        CLI_DEADLINE,
    );
    let help = stdout(&out);
    assert!(
        help.contains("The SERVER reads it, so it is a path on the server's machine"),
        "{help}"
    );
    // The client commands' connection flags, not copies.
    for flag in [
        "--addr",
        "--dev-identity",
        "--data-dir",
        "--ca",
        "--cert",
        "--key",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag}:\n{help}");
    }
}

#[test]
fn a_bad_rate_or_version_is_refused_before_connecting_without_quoting_it() {
    // Nothing listens on the address: a refusal before connecting.
    let addr = common::conn::closed_port();
    for args in [
        &["keys", "rewrap", "--rate", "0"][..],
        &["keys", "rewrap", "--rate", "2000000"],
        &["keys", "retire", "0"],
        &["keys", "retire", "+12025550143"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--json", "--addr", &addr, "--dev-identity", "rotator"]);
        let out = cli_in(Path::new("."), &all, &[], CLI_DEADLINE);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        let error = &json_object(&out)["error"];
        assert_eq!(
            error["code"],
            "INVALID_ARGUMENT",
            "{args:?}: {}",
            show(&out)
        );
        let message = error["message"].as_str().unwrap();
        let value = args[args.len() - 1];
        assert!(
            !message.contains(&format!(" {value} ")) && !message.contains("2025550143"),
            "{message}"
        );
    }
}

/// Needs the vault's internals: status, rotate, rewrap --wait, retire.
#[test]
fn the_rotator_rotates_rewraps_and_retires_with_the_cli_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start_dev(&data, &tmp.path().join("server.log")).unwrap();
    let data = data.to_str().unwrap();
    let addr = server.addr.as_str();
    let run = |code: i32, who: &str, args: &[&str]| {
        let out = cli_in(
            tmp.path(),
            &dev_args(args, addr, who, data),
            &[],
            CLI_DEADLINE,
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", show(&out));
        out
    };

    let out = run(0, "rotator", &["keys", "status", "--json"]);
    let status = json_object(&out);
    assert_eq!(status["data_keys"][0]["version"], 1);
    assert_eq!(status["data_keys"][0]["state"], "active");
    assert_eq!(status["rewrap"]["state"], "idle");
    // Human output: a table with an RFC 3339 UTC creation time.
    let out = run(0, "rotator", &["keys", "status"]);
    let text = stdout(&out);
    assert!(text.starts_with("Data keys\n  VERSION  STATE"), "{text}");
    assert!(text.contains("Rewrap: idle"), "{text}");

    for who in ["orders", "support", "intruder"] {
        let out = run(2, who, &["keys", "rotate", "--json"]);
        assert_eq!(json_object(&out)["error"]["code"], "PERMISSION_DENIED");
    }

    let out = run(
        0,
        "orders",
        &["tokenize", "--kind", "phone", PHONES[0], PHONES[1]],
    );
    let tokens: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let out = run(0, "rotator", &["keys", "rotate", "--json"]);
    assert_eq!(json_object(&out)["data_key_version"], 2);

    let out = run(0, "rotator", &["keys", "rewrap", "--wait", "--json"]);
    let job = json_object(&out);
    assert_eq!(job["state"], "finished", "{}", show(&out));
    assert_eq!(job["target_version"], 2);
    assert_eq!(job["remaining"], 0);
    // Progress went to stderr: records done / total.
    assert!(stderr(&out).contains("rewrap to v2: "), "{}", show(&out));
    assert!(stderr(&out).contains("/2 records"), "{}", show(&out));

    let out = run(0, "rotator", &["keys", "retire", "1"]);
    assert_eq!(
        stdout(&out),
        "data key version 1 is retired: its key is destroyed\n"
    );
    let out = run(2, "rotator", &["keys", "retire", "2", "--json"]);
    assert_eq!(json_object(&out)["error"]["code"], "FAILED_PRECONDITION");
    let out = run(0, "rotator", &["keys", "status", "--json"]);
    let status = json_object(&out);
    assert_eq!(status["data_keys"][0]["state"], "retired");
    assert_eq!(status["data_keys"][1]["records"], 2);

    let mut args = vec!["detokenize", "--purpose", "callback"];
    args.extend(tokens.iter().map(String::as_str));
    let out = run(0, "support", &args);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", show(&out));
}

/// Needs the vault's internals (the master-key rotation).
#[test]
fn rotate_master_sends_the_absolute_path_of_a_relative_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start_dev(&data, &tmp.path().join("server.log")).unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    write(
        &keys.join("new.key"),
        MasterKey::generate().to_hex().as_bytes(),
    );
    let args = dev_args(
        &[
            "keys",
            "rotate-master",
            "--new-key-file",
            "new.key",
            "--json",
        ],
        &server.addr,
        "rotator",
        data.to_str().unwrap(),
    );
    // Run from the key's directory: the relative name is made absolute.
    let out = cli_in(&keys, &args, &[], CLI_DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let sent = std::fs::canonicalize(keys.join("new.key")).unwrap();
    assert_eq!(
        json_object(&out)["new_key_file"],
        sent.to_str().unwrap(),
        "{}",
        show(&out)
    );
    let status = cli_in(
        &keys,
        &dev_args(
            &["keys", "status", "--json"],
            &server.addr,
            "rotator",
            data.to_str().unwrap(),
        ),
        &[],
        CLI_DEADLINE,
    );
    assert!(
        json_object(&status)["master_rotated"].is_string(),
        "{}",
        show(&status)
    );
}
