//! The audit trail end to end over real mTLS: one event per call of every
//! audited kind with its fields, no value in any file, the chain across a
//! restart, a trail edited while the server was down, and a sink that fails
//! under the running server (refused fast, recovered by itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::audit::{keyfile, trail, verify};
use fieldvault::crypto::MasterKey;
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const PHONE: &str = "+1 202-555-0142";
const PHONE_CANONICAL: &str = "+12025550142";
const STREET: &str = "1 Fakestreet Lane";
const CITY: &str = "Testville";

/// Every event of every file of the trail at `audit_log`, in order.
fn events(audit_log: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for file in trail::files_of(audit_log).unwrap() {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            out.push(line["event"].clone());
        }
    }
    out
}

/// The one event of request `id`.
fn event_of(audit_log: &Path, id: &str) -> Value {
    let found: Vec<Value> = events(audit_log)
        .into_iter()
        .filter(|e| e["request_id"] == id)
        .collect();
    assert_eq!(found.len(), 1, "events of request {id}: {found:?}");
    found.into_iter().next().unwrap()
}

fn master_of(vault: &TestVault) -> MasterKey {
    match &vault.config.master_key {
        fieldvault::config::MasterKeySource::File(p) => MasterKey::from_file(p).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Verifies the whole trail; the files in chain order.
fn verified(vault: &TestVault) -> Vec<verify::FileSummary> {
    let key = keyfile::load(&vault.config.audit_log, &master_of(vault)).unwrap();
    let files = trail::files_of(&vault.config.audit_log).unwrap();
    verify::verify_files(&key, &files).unwrap_or_else(|e| panic!("the trail broke: {e}"))
}

fn request_id<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> String {
    let metadata = match r {
        Ok(resp) => resp.metadata(),
        Err(status) => status.metadata(),
    };
    metadata
        .get("x-request-id")
        .expect("every answer names its request id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The one event of a call refused with `code`.
fn refused_event<T: std::fmt::Debug>(
    audit_log: &Path,
    r: &Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
) -> Value {
    assert_eq!(
        r.as_ref().err().map(tonic::Status::code),
        Some(code),
        "{r:?}"
    );
    event_of(audit_log, &request_id(r))
}

fn detokenize_request(tokens: &[String], purpose: &str) -> pb::DetokenizeRequest {
    pb::DetokenizeRequest {
        tokens: tokens.to_vec(),
        purpose: purpose.into(),
        justification: "ticket TEST-1".into(),
        grant_id: String::new(),
    }
}

fn tokens_of(event: &Value) -> Vec<String> {
    event["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["token"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_every_audited_kind_leaves_one_event_with_its_fields_and_no_value() {
    let vault = TestVault::start().await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    let mut intruder = vault.client("intruder").await;

    // Tokenize, allowed: the issued tokens, kinds and rules.
    let mut address = field(pb::FieldKind::Address, "");
    address.address = Some(pb::PostalAddress {
        country: "US".into(),
        city: CITY.into(),
        street_lines: vec![STREET.into()],
        postal_code: "20500".into(),
        ..Default::default()
    });
    let r = orders
        .tokenize(pb::TokenizeRequest {
            fields: vec![field(pb::FieldKind::Phone, PHONE), address],
            purpose: None,
        })
        .await;
    let id = request_id(&r);
    let tokens: Vec<String> = r
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.outcome.unwrap() {
            pb::tokenize_result::Outcome::Token(t) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    let e = event_of(&log, &id);
    assert_eq!(e["action"], "tokenize");
    assert_eq!(e["caller"], "spiffe://fieldvault.dev/orders");
    assert_eq!(e["decision"], "allowed");
    assert_eq!(e["code"], "ok");
    assert_eq!(e["kinds"], serde_json::json!(["address", "phone"]));
    assert_eq!(tokens_of(&e), tokens);
    assert_eq!(
        e["rules"],
        serde_json::json!(["orders may tokenize every kind"])
    );
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");

    // Tokenize, denied and rejected.
    let r = intruder
        .tokenize(pb::TokenizeRequest {
            fields: vec![field(pb::FieldKind::Phone, PHONE)],
            purpose: None,
        })
        .await;
    let e = refused_event(&log, &r, tonic::Code::PermissionDenied);
    assert_eq!(
        (e["decision"].as_str(), e["code"].as_str()),
        (Some("denied"), Some("permission_denied"))
    );
    assert_eq!(e["caller"], "spiffe://fieldvault.dev/intruder");
    assert!(e["reason"].as_str().unwrap().contains("intruder"), "{e}");
    let r = orders
        .tokenize(pb::TokenizeRequest {
            fields: vec![field(pb::FieldKind::Phone, PHONE)],
            purpose: Some("no such purpose!".into()),
        })
        .await;
    let e = refused_event(&log, &r, tonic::Code::InvalidArgument);
    assert_eq!(
        (e["decision"].as_str(), e["code"].as_str()),
        (Some("rejected"), Some("invalid_argument"))
    );
    assert!(e["reason"].as_str().unwrap().starts_with("purpose:"), "{e}");

    // Detokenize, allowed: full and masked per item, with the rules.
    let r = support
        .detokenize(detokenize_request(&tokens, "callback"))
        .await;
    let id = request_id(&r);
    let revealed = r.unwrap().into_inner().results;
    let masked_address = match revealed[1].outcome.clone().unwrap() {
        pb::detokenize_result::Outcome::Revealed(v) => v.value,
        other => panic!("{other:?}"),
    };
    let e = event_of(&log, &id);
    assert_eq!(e["action"], "detokenize");
    assert_eq!(e["caller"], "spiffe://fieldvault.dev/support");
    assert_eq!(e["purpose"], "callback");
    assert_eq!(e["justification"], "ticket TEST-1");
    assert_eq!(e["decision"], "allowed");
    assert_eq!(tokens_of(&e), tokens);
    let outcomes: Vec<&str> = e["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["full", "masked"]);
    assert_eq!(e["kinds"], serde_json::json!(["address", "phone"]));
    assert_eq!(e["rules"].as_array().unwrap().len(), 2, "{e}");

    // Detokenize refused for its purpose and for its arguments: the
    // tokens asked for are named.
    let r = support
        .detokenize(detokenize_request(&tokens, "marketing"))
        .await;
    let e = refused_event(&log, &r, tonic::Code::PermissionDenied);
    assert_eq!(e["decision"], "denied");
    assert_eq!(e["purpose"], "marketing");
    assert_eq!(tokens_of(&e), tokens);
    let r = support.detokenize(detokenize_request(&tokens, "")).await;
    let e = refused_event(&log, &r, tonic::Code::InvalidArgument);
    assert_eq!(
        (e["decision"].as_str(), e["code"].as_str()),
        (Some("rejected"), Some("invalid_argument"))
    );
    assert_eq!(tokens_of(&e), tokens);
    // A string that is not a token is not copied into the trail.
    let r = support
        .detokenize(detokenize_request(&[PHONE.to_owned()], "callback"))
        .await;
    let e = event_of(&log, &request_id(&r));
    assert_eq!(e["items"][0]["token"], Value::Null, "{e}");
    assert_eq!(e["items"][0]["outcome"], "invalid_argument");

    // A certificate posing as another workload (a CN that looks like a
    // SPIFFE ID, no SAN): refused for its identity, audited without one.
    // A zero-width space in a name reads as that name: refused too.
    for (stem, cn) in [
        ("lookalike", "spiffe://fieldvault.dev/support"),
        ("zero-width", "\u{200B}spiffe://fieldvault.dev/support"),
        ("hidden-mark", "supp\u{200B}ort"),
    ] {
        vault.pki.issue_client(stem, cn, None);
        let mut lookalike = connect(&vault.addr(), &vault.pki.client_tls(stem)).await;
        let r = lookalike
            .detokenize(detokenize_request(&tokens, "callback"))
            .await;
        assert_eq!(
            r.as_ref().unwrap_err().code(),
            tonic::Code::Unauthenticated,
            "{stem}"
        );
        let e = event_of(&log, &request_id(&r));
        assert_eq!(
            (e["decision"].as_str(), e["code"].as_str()),
            (Some("denied"), Some("unauthenticated"))
        );
        assert_eq!(e["caller"], Value::Null);
        assert!(!e["reason"].as_str().unwrap().is_empty());
        assert_eq!(tokens_of(&e), tokens);
        // What the call declared is kept.
        assert_eq!(e["purpose"], "callback");
        assert_eq!(e["justification"], "ticket TEST-1");
    }

    // KeyAdmin: allowed, rejected for an argument, denied.
    let mut rotator =
        KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("rotator")).await);
    let r = rotator.rotate_data_key(pb::RotateDataKeyRequest {}).await;
    let id = request_id(&r);
    let version = r.unwrap().into_inner().version;
    let e = event_of(&log, &id);
    assert_eq!(e["action"], "keys.rotate_data_key");
    assert_eq!(e["caller"], "spiffe://fieldvault.dev/rotator");
    assert_eq!(e["decision"], "allowed");
    assert_eq!(e["details"]["version"], version);
    let r = rotator.get_key_status(pb::GetKeyStatusRequest {}).await;
    let e = event_of(&log, &request_id(&r));
    assert_eq!(
        (e["action"].as_str(), e["decision"].as_str()),
        (Some("keys.get_key_status"), Some("allowed"))
    );
    let r = rotator
        .start_rewrap(pb::StartRewrapRequest {
            rate_per_second: Some(0),
        })
        .await;
    let e = refused_event(&log, &r, tonic::Code::InvalidArgument);
    assert_eq!(
        (e["action"].as_str(), e["decision"].as_str()),
        (Some("keys.start_rewrap"), Some("rejected"))
    );
    let r = KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("support")).await)
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await;
    let e = refused_event(&log, &r, tonic::Code::PermissionDenied);
    assert_eq!(
        (e["action"].as_str(), e["decision"].as_str()),
        (Some("keys.retire_key_version"), Some("denied"))
    );
    assert_eq!(e["caller"], "spiffe://fieldvault.dev/support");

    // No value, full or masked, in any file beside the trail.
    let dir = log.parent().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() || !path.to_string_lossy().contains("audit") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for value in [
            PHONE,
            PHONE_CANONICAL,
            STREET,
            CITY,
            masked_address.as_str(),
        ] {
            assert!(
                !text.contains(value),
                "{} holds a value or its masked form",
                path.display()
            );
        }
    }
    // And the chain verifies: one file, one chain.
    let files = verified(&vault);
    assert_eq!(files.len(), 1);
    assert!(files[0].new_chain.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_the_chain_and_an_edit_made_while_down_stops_the_next_start() {
    let mut vault = TestVault::start().await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(pb::FieldKind::Phone, PHONE)]).await;
    let mut support = vault.client("support").await;
    detokenize(&mut support, "callback", &tokens).await.unwrap();

    // A restart goes on with the same chain, in the same file.
    vault.restart().await;
    let mut support = vault.client("support").await;
    detokenize(&mut support, "callback", &tokens).await.unwrap();
    let files = verified(&vault);
    assert_eq!(files.len(), 1);
    let all = events(&log);
    assert_eq!(
        all.iter()
            .filter(|e| e["action"] == "audit.chain_start")
            .count(),
        1
    );
    assert_eq!(files[0].end.next_seq, all.len() as u64);
    vault.stop().await;

    // Whole events cut off the end while the server was down: the chain
    // that is left is valid, but shorter than the server recorded.
    let text = std::fs::read_to_string(&log).unwrap();
    let cut: String = text
        .split_inclusive('\n')
        .take(text.lines().count() - 2)
        .collect();
    std::fs::write(&log, &cut).unwrap();
    let refused = fieldvault::app::start(&vault.config, &no_env).await;
    let message = refused.err().expect("a cut trail was accepted").to_string();
    assert!(message.contains("were cut off its end"), "{message}");
    std::fs::write(&log, &text).unwrap();

    // An event edited while the server was down: the next start refuses,
    // names the line and changes nothing.
    let edited = text.replacen("\"purpose\":\"callback\"", "\"purpose\":\"shipping\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, &edited).unwrap();
    let refused = fieldvault::app::start(&vault.config, &no_env).await;
    let message = refused
        .err()
        .expect("a broken trail was accepted")
        .to_string();
    assert!(
        message.contains("does not verify") && message.contains("line 3"),
        "{message}"
    );
    assert!(message.contains("start_new_chain"), "{message}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), edited);

    // Asked to, it moves the file aside and records that as the first
    // event of a new chain.
    vault.config.audit.start_new_chain = true;
    vault.restart().await;
    let first = events(&log).into_iter().next().unwrap();
    assert_eq!(first["action"], "audit.chain_start");
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not verify") && reason.contains("broken-"),
        "{reason}"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.log.broken-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), edited);
    let mut support = vault.client("support").await;
    detokenize(&mut support, "callback", &tokens).await.unwrap();
    let files = verified(&vault);
    assert_eq!(files[0].end.next_seq, 2);
}

async fn health(vault: &TestVault) -> i32 {
    let channel = channel(&vault.addr(), &vault.pki.client_tls("orders")).await;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "fieldvault.v1.Vault".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits (bounded) until health reports `status`.
async fn health_becomes(vault: &TestVault, status: tonic_health::ServingStatus) {
    let mut last = -1;
    for _ in 0..50 {
        last = health(vault).await;
        if last == status as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health stayed {last}, not {status:?}");
}

/// A reveal while the sink fails: UNAVAILABLE, fast, nothing revealed.
async fn refused_fast(vault: &TestVault, tokens: &[String]) {
    let mut support = vault.client("support").await;
    let started = Instant::now();
    let r = support
        .detokenize(detokenize_request(tokens, "callback"))
        .await;
    let took = started.elapsed();
    let status = r.expect_err("a reveal was answered without its audit event");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
    // The issue's bound is 1 s; the slack covers a loaded test machine.
    assert!(took < Duration::from_millis(1500), "refused after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_directory_removed_under_the_server_stops_reveals_fast_until_it_is_back() {
    let vault = TestVault::start_with(|c| {
        c.audit_log = c.data_dir.with_file_name("logs").join("audit.log");
    })
    .await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(pb::FieldKind::Phone, PHONE)]).await;
    let mut support = vault.client("support").await;
    detokenize(&mut support, "callback", &tokens).await.unwrap();

    let key = keyfile::load(&log, &master_of(&vault)).unwrap();
    let dir = log.parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    refused_fast(&vault, &tokens).await;
    health_becomes(&vault, tonic_health::ServingStatus::NotServing).await;
    // Tokenize fails closed too: nothing is stored while nothing is audited.
    let status = tokenize(&mut orders, vec![field(pb::FieldKind::Phone, PHONE)])
        .await
        .expect_err("a tokenize was answered without its audit event");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The directory is back: the server recovers by itself.
    std::fs::create_dir_all(&dir).unwrap();
    health_becomes(&vault, tonic_health::ServingStatus::Serving).await;
    let revealed = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert!(revealed[0].is_ok());
    // The new file says what happened, and the outage is in the chain.
    let all = events(&log);
    assert_eq!(all[0]["action"], "audit.file_start");
    assert!(
        all[0]["reason"]
            .as_str()
            .unwrap()
            .contains("renamed or removed"),
        "{}",
        all[0]
    );
    let recovered: Vec<&Value> = all
        .iter()
        .filter(|e| e["action"] == "audit.sink_recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{all:?}");
    assert!(recovered[0]["details"]["refused_events"].as_u64().unwrap() >= 2);
    // The new file verifies on its own (its first event continues the
    // chain of the file that was removed), with the key file the server
    // put back beside it.
    let again = keyfile::load(&log, &master_of(&vault)).unwrap();
    assert_eq!(again.id(), key.id());
    let files = verify::verify_files(&key, std::slice::from_ref(&log)).unwrap();
    assert!(files[0].new_chain.is_none());
    assert!(files[0].start.next_seq > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_in_place_of_the_audit_file_is_never_appended_to() {
    let vault = TestVault::start().await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(pb::FieldKind::Phone, PHONE)]).await;
    let moved = log.with_file_name("moved.log");
    std::fs::rename(&log, &moved).unwrap();
    std::fs::write(&log, "not the server's\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o400)).unwrap();

    refused_fast(&vault, &tokens).await;
    health_becomes(&vault, tonic_health::ServingStatus::NotServing).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "not the server's\n");

    std::fs::remove_file(&log).unwrap();
    health_becomes(&vault, tonic_health::ServingStatus::Serving).await;
    let mut support = vault.client("support").await;
    assert!(detokenize(&mut support, "callback", &tokens).await.unwrap()[0].is_ok());
    // The moved file and the new one form one chain.
    let key = keyfile::load(&log, &master_of(&vault)).unwrap();
    let files = verify::verify_files(&key, &[moved, log.clone()]).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[1].start, files[0].end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_a_known_sequence_of_real_calls_gives_exactly_the_expected_counts() {
    use fieldvault::audit::report::{build, Verification};
    let vault = TestVault::start().await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    let mut intruder = vault.client("intruder").await;
    let since = fieldvault::audit::now_unix_ms();

    let phones = tokens_for(
        &mut orders,
        vec![
            field(pb::FieldKind::Phone, "+1 202-555-0101"),
            field(pb::FieldKind::Phone, "+1 202-555-0102"),
            field(pb::FieldKind::Email, "someone@example.com"),
        ],
    )
    .await;
    // Two reveals in full and one masked, in two calls.
    detokenize(&mut support, "callback", &phones[..2])
        .await
        .unwrap();
    detokenize(&mut support, "callback", &phones[2..])
        .await
        .unwrap();
    // Refused whole: a purpose no rule lists (twice), a caller no rule names.
    for _ in 0..2 {
        detokenize(&mut support, "marketing", &phones)
            .await
            .unwrap_err();
    }
    detokenize(&mut intruder, "callback", &phones[..1])
        .await
        .unwrap_err();
    // An item refused inside an allowed call: a token this vault never made.
    let unknown = "fv1_AAAAAAAAAAAAAAAAAAAAAA".to_owned();
    let results = detokenize(&mut support, "callback", &[phones[0].clone(), unknown])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err());
    let mut rotator =
        KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("rotator")).await);
    rotator
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .unwrap();
    let until = fieldvault::audit::now_unix_ms() + 1;

    let files = trail::files_of(&log).unwrap();
    let key = keyfile::load(&log, &master_of(&vault)).unwrap();
    let verification = Verification::of(verify::verify_files(&key, &files), true);
    assert!(verification.is_verified());
    let report = build(&files, since, until, verification).unwrap();

    let calls: Vec<(&str, u64, u64)> = report
        .calls
        .iter()
        .map(|c| {
            (
                c.action.as_str(),
                c.allowed,
                c.denied + c.rejected + c.failed,
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("detokenize", 3, 3),
            ("keys.rotate_data_key", 1, 0),
            ("tokenize", 1, 0)
        ]
    );
    let reveals: Vec<(Option<&str>, &str, u64)> = report
        .reveals
        .iter()
        .map(|r| (r.kind.as_deref(), r.level.as_str(), r.count))
        .collect();
    assert_eq!(
        reveals,
        [(Some("email"), "masked", 1), (Some("phone"), "full", 3)]
    );
    let tokenized: Vec<(Option<&str>, u64)> = report
        .tokenized
        .iter()
        .map(|t| (t.kind.as_deref(), t.count))
        .collect();
    assert_eq!(tokenized, [(Some("email"), 1), (Some("phone"), 2)]);
    let refused: Vec<(Option<&str>, u64, u64)> = report
        .refused_calls
        .iter()
        .map(|r| (r.purpose.as_deref(), r.calls, r.tokens))
        .collect();
    assert_eq!(
        refused,
        [(Some("callback"), 1, 1), (Some("marketing"), 2, 6)]
    );
    let items: Vec<(&str, u64)> = report
        .refused_items
        .iter()
        .map(|r| (r.code.as_str(), r.count))
        .collect();
    assert_eq!(items, [("not_issued", 1)]);
    assert_eq!(report.key_operations.len(), 1);
    assert_eq!(report.key_operations[0].details["version"], 2);
    let busiest: Vec<(Option<&str>, u64)> = report
        .busiest_callers
        .iter()
        .map(|b| (b.caller.as_deref(), b.values_revealed))
        .collect();
    assert_eq!(busiest, [(Some("spiffe://fieldvault.dev/support"), 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_over_a_real_trail_shows_a_grant_its_approvals_use_and_revocation() {
    use fieldvault::dev::{spiffe_id, DEV_POLICY};
    use fieldvault::grpc::pb::grants_client::GrantsClient;
    let vault = TestVault::start_with_toml(DEV_POLICY, "", "").await;
    let since = fieldvault::audit::now_unix_ms();
    let mut orders = vault.client("orders").await;
    let addresses: Vec<String> = (1..=3)
        .map(|n| format!("{n} Example Street, Springfield"))
        .collect();
    let tokens = tokens_for(
        &mut orders,
        addresses
            .iter()
            .map(|a| field(pb::FieldKind::Address, a))
            .collect(),
    )
    .await;
    let grants = |who: &'static str| {
        let vault = &vault;
        async move { GrantsClient::new(channel(&vault.addr(), &vault.pki.client_tls(who)).await) }
    };
    let grant_id = grants("admin")
        .await
        .request_grant(pb::RequestGrantRequest {
            caller: spiffe_id("fulfilment"),
            kinds: vec![pb::FieldKind::Address as i32],
            purpose: "shipping".into(),
            max_reveals: 5,
            valid_for: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            reason: "ticket SHIP-1".into(),
            tokens: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .grant_id;
    let mut fulfilment = vault.client("fulfilment").await;
    let reveal = |tokens: &[String]| pb::DetokenizeRequest {
        tokens: tokens.to_vec(),
        purpose: "shipping".into(),
        justification: String::new(),
        grant_id: grant_id.clone(),
    };
    // Refused while pending.
    let pending = fulfilment.detokenize(reveal(&tokens[..1])).await;
    assert_eq!(pending.unwrap_err().code(), tonic::Code::FailedPrecondition);
    for approver in ["approver1", "approver2"] {
        grants(approver)
            .await
            .approve_grant(pb::ApproveGrantRequest {
                grant_id: grant_id.clone(),
            })
            .await
            .unwrap();
    }
    // 3 values in 2 calls.
    fulfilment.detokenize(reveal(&tokens[..2])).await.unwrap();
    fulfilment.detokenize(reveal(&tokens[2..])).await.unwrap();
    grants("approver1")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: grant_id.clone(),
            reason: "batch shipped".into(),
        })
        .await
        .unwrap();
    let revoked = fulfilment.detokenize(reveal(&tokens[..1])).await;
    let status = revoked.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("revoked"), "{status:?}");
    let until = fieldvault::audit::now_unix_ms() + 1;

    // The report, as a user runs it, over the server's own trail.
    let config = vault.tmp.path().join("fieldvault.toml");
    let report = |format: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fieldvault"));
        command.args([
            "audit",
            "report",
            "--config",
            config.to_str().unwrap(),
            "--since",
            &fieldvault::audit::search::format_ms(since),
            "--until",
            &fieldvault::audit::search::format_ms(until),
            "--format",
            format,
        ]);
        let out = common::process::output_within(command, Duration::from_secs(30));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for part in ["Example Street", "Springfield"] {
            assert!(
                !stdout.contains(part),
                "the report holds a value:\n{stdout}"
            );
        }
        stdout
    };
    let json: Value = serde_json::from_str(&report("json")).unwrap();
    let grants = json["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{json:#}");
    let g = &grants[0];
    let (fulfilment_id, admin, approver1, approver2) = (
        spiffe_id("fulfilment"),
        spiffe_id("admin"),
        spiffe_id("approver1"),
        spiffe_id("approver2"),
    );
    assert_eq!(g["grant"], grant_id.as_str());
    assert_eq!(g["caller"], fulfilment_id.as_str());
    assert_eq!(g["purpose"], "shipping");
    assert_eq!(g["requested_by"], admin.as_str());
    assert_eq!(
        g["approvers"],
        serde_json::json!([approver1.clone(), approver2.clone()])
    );
    assert_eq!(g["max_reveals"], 5);
    let changes: Vec<(&str, &str)> = g["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["state"].as_str().unwrap(), c["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("requested", admin.as_str()),
            ("approved", approver1.as_str()),
            ("approved", approver2.as_str()),
            ("active", approver2.as_str()),
            ("revoked", approver1.as_str()),
        ]
    );
    assert_eq!(
        (
            &g["values_revealed"],
            &g["calls"],
            &g["last_used"],
            &g["refused_calls"]
        ),
        (
            &Value::from(3),
            &Value::from(2),
            &Value::from(3),
            &Value::from(2)
        ),
        "{g:#}"
    );
    let md = report("md");
    let row = format!(
        "| {grant_id} | {fulfilment_id} | shipping | {admin} | {approver1}, {approver2} | requested by {admin} at "
    );
    assert!(md.contains("## Grants\n"), "{md}");
    assert!(md.contains(&row), "missing {row:?} in\n{md}");
    assert!(
        md.contains("; revoked by ") && md.contains(" | 5 | 3 | 2 | 3 | 2 |"),
        "{md}"
    );
    let csv = report("csv");
    let grant_row = format!("grant,,{fulfilment_id},shipping,detokenize,,revoked,,{grant_id},3");
    assert!(
        csv.lines().any(|l| l == grant_row),
        "missing {grant_row:?} in\n{csv}"
    );
}
