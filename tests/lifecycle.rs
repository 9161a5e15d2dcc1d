//! The data lifecycle over real mTLS (README, "Data lifecycle"): tokens
//! with a time to live, DeleteTokens, EraseValue, ExportValue and
//! GetTokenInfo against a real in-process server with certificates made at
//! test time, the dev policy (orders may delete and inspect, admin may
//! erase and export for "dsar") and a config file with a fast sweeper.
//! Every call has a deadline (the channel's) and every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::dev::DEV_POLICY;
use fieldvault::domain::TokenMode;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::grpc::pb::{self, FieldKind};
use fieldvault::store::{IntegrityReport, SledConfig, SledStore, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

/// One phone number in the formats a caller may send it in (region US).
const PHONE: &str = "+1 202-555-0143";
const PHONE_VARIANTS: [&str; 4] = [
    "+1 202-555-0143",
    "(202) 555-0143",
    "202.555.0143",
    "+12025550143",
];
const PHONE_CANONICAL: &str = "+12025550143";
/// Another number, which no call here may touch.
const OTHER_PHONE: &str = "+1 202-555-0187";
const EMAIL: &str = "lifecycle.test@example.com";

/// The sweeper runs every 200 ms; phones live 30 days at most, emails as
/// long as asked.
const TABLES: &str = r#"
[token_modes]
phone = "deterministic"

[retention]
sweep_interval = "200ms"

[retention.phone]
max_ttl = "30d"
"#;

/// How long a test waits for something the server does in the background
/// (an expiry to be swept).
const BACKGROUND: Duration = Duration::from_secs(30);

async fn start() -> TestVault {
    TestVault::start_with_toml(DEV_POLICY, "default_phone_region = \"US\"", TABLES).await
}

fn phone(value: &str) -> pb::Field {
    field(FieldKind::Phone, value)
}

fn with_ttl(mut f: pb::Field, ttl: prost_types::Duration) -> pb::Field {
    f.ttl = Some(ttl);
    f
}

fn secs(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn lifecycle(vault: &TestVault, name: &str) -> fieldvault::client::Lifecycle {
    fieldvault::client::Lifecycle::new(channel(&vault.addr(), &vault.pki.client_tls(name)).await)
}

/// The field a BadRequest detail names, after checking the status is
/// INVALID_ARGUMENT and its message starts with that field.
fn bad_field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    let field = bad.field_violations[0].field.clone();
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{status:?}"
    );
    field
}

/// The same for a per-item status.
fn bad_item_field(status: &tonic_types::Status) -> String {
    use tonic_types::RpcStatusExt;
    assert_eq!(code(status), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    let field = bad.field_violations[0].field.clone();
    assert!(
        status.message.starts_with(&format!("{field}: ")),
        "{status:?}"
    );
    field
}

/// `info` expires `ttl_ms` after its creation (give or take the moment
/// between the two readings of the server's clock).
#[track_caller]
fn assert_ttl(info: &pb::TokenInfo, ttl_ms: u64) {
    let lived = info.expires_unix_ms.checked_sub(info.created_unix_ms);
    assert!(
        lived.is_some_and(|ms| (ttl_ms..=ttl_ms + 500).contains(&ms)),
        "expected a {ttl_ms} ms lifetime: {info:?}"
    );
}

/// Whether `token` detokenizes for `support` (callback: phones in full,
/// emails masked): `Ok(())`, or the item's code.
async fn detokenizes(vault: &TestVault, token: &str) -> Result<(), Code> {
    let mut support = vault.client("support").await;
    let results = detokenize(&mut support, "callback", &[token.to_owned()])
        .await
        .unwrap();
    results[0].as_ref().map(|_| ()).map_err(code)
}

/// Stops the server and opens its store (every wait bounded) for the
/// integrity check: records and indexes agree, and the counts.
async fn integrity(vault: &mut TestVault) -> IntegrityReport {
    vault.stop().await;
    let store = SledStore::open(&SledConfig {
        path: vault.config.store_dir(),
        cache_capacity_bytes: 16 << 20,
        max_queued_writes: fieldvault::store::DEFAULT_MAX_QUEUED_WRITES,
    })
    .unwrap();
    let report = bounded(
        SERVER_DEADLINE,
        "the integrity check",
        store.check_integrity(),
    )
    .await
    .unwrap();
    drop(store);
    assert!(
        report.problems.is_empty(),
        "integrity problems: {:?}",
        report.problems
    );
    report
}

/// Every event of the audit trail, in order.
fn events(audit_log: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for file in fieldvault::audit::trail::files_of(audit_log).unwrap() {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            out.push(line["event"].clone());
        }
    }
    out
}

/// The files under `dir` that hold any of `needles`.
fn files_containing(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path) {
            for needle in needles {
                let needle = needle.as_bytes();
                if bytes.windows(needle.len()).any(|w| w == needle) {
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

/// Every form of the test's values that must never be at rest.
fn needles() -> Vec<&'static str> {
    let mut out = PHONE_VARIANTS.to_vec();
    out.extend([
        PHONE_CANONICAL,
        "2025550143",
        "555-0143",
        OTHER_PHONE,
        "2025550187",
        EMAIL,
        "lifecycle.test",
    ]);
    out
}

// ---------------------------------------------------------------------------
// Retention.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_two_second_ttl_detokenizes_before_and_is_not_found_after_and_the_sweeper_removes_its_record_and_index_entries(
) {
    let mut vault = start().await;
    let mut orders = vault.client("orders").await;
    // Emails are random-mode tokens: one record and one index entry each.
    let tokens = tokens_for(
        &mut orders,
        vec![
            with_ttl(field(FieldKind::Email, EMAIL), secs(2)),
            field(FieldKind::Email, "lifecycle.keep@example.com"),
        ],
    )
    .await;
    let (expiring, kept) = (tokens[0].clone(), tokens[1].clone());
    let mut info = lifecycle(&vault, "orders").await;
    let infos = info.token_info(tokens.clone()).await.unwrap();
    let expiring_info = infos[0].as_ref().unwrap().clone();
    assert_ttl(&expiring_info, 2000);
    assert_eq!(infos[1].as_ref().unwrap().expires_unix_ms, 0, "never");

    // Before: it detokenizes (if this machine was too slow to ask within
    // the two seconds, the check says so rather than pass by accident).
    let asked_at = now_ms();
    let before = detokenizes(&vault, &expiring).await;
    if asked_at + 200 < expiring_info.expires_unix_ms {
        assert_eq!(before, Ok(()), "before its expiry");
    }
    // After: NOT_FOUND, never earlier than its expiry, within a deadline.
    let deadline = Instant::now() + BACKGROUND;
    loop {
        let asked_at = now_ms();
        match detokenizes(&vault, &expiring).await {
            Ok(()) => {
                assert!(
                    asked_at < expiring_info.expires_unix_ms + 1000,
                    "still detokenizes a second after its expiry"
                );
                assert!(Instant::now() < deadline, "never expired");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(code) => {
                assert_eq!(code, Code::NotFound);
                assert!(
                    now_ms() >= expiring_info.expires_unix_ms,
                    "NOT_FOUND before its expiry"
                );
                break;
            }
        }
    }
    // Expired is NOT_FOUND for every call, at once.
    let infos = info.token_info(vec![expiring.clone()]).await.unwrap();
    assert_eq!(code(infos[0].as_ref().unwrap_err()), Code::NotFound);
    assert_eq!(detokenizes(&vault, &kept).await, Ok(()));

    // The sweeper deletes the record and its index entry: with the
    // server stopped, the store holds the kept token only and its
    // records and indexes agree. The sweep runs every 200 ms; until it
    // has, the server is started again and given more time.
    let deadline = Instant::now() + BACKGROUND;
    loop {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let report = integrity(&mut vault).await;
        if report.records == 1 {
            assert_eq!(report.index_entries, 1, "{report:?}");
            break;
        }
        assert_eq!(report.records, 2, "{report:?}");
        assert!(Instant::now() < deadline, "never swept: {report:?}");
        vault.restart().await;
    }
    vault.restart().await;
    assert_eq!(detokenizes(&vault, &expiring).await, Err(Code::NotFound));
    assert_eq!(detokenizes(&vault, &kept).await, Ok(()));
    vault.stop().await;
    let hits = files_containing(vault.tmp.path(), &needles());
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
}

/// Checks each refused item names `fields[i].ttl` and no value, and
/// returns the messages by index.
fn ttl_refusals(results: &[Result<String, tonic_types::Status>]) -> Vec<String> {
    results
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, r)| {
            let e = r.as_ref().unwrap_err();
            assert_eq!(bad_item_field(e), format!("fields[{i}].ttl"), "{e:?}");
            assert!(!e.message.contains("555"), "no value in {e:?}");
            e.message.clone()
        })
        .collect()
}

#[tokio::test]
async fn a_ttl_of_zero_negative_or_not_a_duration_fails_that_item_alone_naming_its_ttl() {
    // Refused at the edge: no retention settings needed.
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let nanos = |seconds, nanos| prost_types::Duration { seconds, nanos };
    let results = tokenize(
        &mut orders,
        vec![
            phone(OTHER_PHONE),
            with_ttl(phone(PHONE), secs(0)),
            with_ttl(phone(PHONE), secs(-5)),
            with_ttl(phone(PHONE), nanos(0, -500_000_000)),
            with_ttl(phone(PHONE), nanos(1, -1)),
            with_ttl(phone(PHONE), nanos(0, 1_000_000_000)),
        ],
    )
    .await
    .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    let says = ttl_refusals(&results);
    assert!(
        says[0].contains("is 0s") && says[0].contains("more than zero"),
        "{says:?}"
    );
    assert!(says[1].contains("is -5s"), "{says:?}");
    assert!(says[2].contains("is -0.500000000s"), "{says:?}");
    assert!(
        says[3].contains("not a valid google.protobuf.Duration"),
        "{says:?}"
    );
    assert!(
        says[4].contains("not a valid google.protobuf.Duration"),
        "{says:?}"
    );
    // Nothing was stored for the refused items: the value has no token
    // (the other number's token is the only record).
    let mut vault = vault;
    let report = integrity(&mut vault).await;
    assert_eq!(report.records, 1, "{report:?}");
}

#[tokio::test]
async fn a_ttl_over_the_kinds_maximum_fails_that_item_alone_naming_its_ttl() {
    let vault = start().await;
    let mut orders = vault.client("orders").await;
    let results = tokenize(
        &mut orders,
        vec![
            with_ttl(phone(OTHER_PHONE), secs(30 * 86_400)),
            // Phones live 30 days at most.
            with_ttl(phone(PHONE), secs(30 * 86_400 + 1)),
            with_ttl(phone(PHONE), secs(i64::MAX)),
        ],
    )
    .await
    .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    let says = ttl_refusals(&results);
    assert!(
        says.iter()
            .all(|m| m.contains("30d") || m.contains("2592000")),
        "{says:?}"
    );
    // Emails have no maximum here: a long one is taken.
    let long = tokenize(
        &mut orders,
        vec![with_ttl(
            field(FieldKind::Email, EMAIL),
            secs(3650 * 86_400),
        )],
    )
    .await
    .unwrap();
    assert!(long[0].is_ok(), "{long:?}");
    let mut admin = lifecycle(&vault, "admin").await;
    assert!(admin
        .export_value(phone(PHONE), "dsar")
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------
// Delete and inspect.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_token_twice_is_harmless_and_an_unknown_token_is_reported_per_item() {
    let mut vault = start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(
        &mut orders,
        vec![phone(PHONE), field(FieldKind::Email, EMAIL)],
    )
    .await;
    let mut deleter = lifecycle(&vault, "orders").await;
    let never_issued = "fv1_AAAAAAAAAAAAAAAAAAAAAA".to_owned();
    let results = deleter
        .delete_tokens(vec![
            tokens[0].clone(),
            never_issued.clone(),
            "not a token".to_owned(),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], Ok(pb::FieldKind::Phone));
    let unknown = results[1].as_ref().unwrap_err();
    assert_eq!(code(unknown), Code::NotFound, "{unknown:?}");
    assert!(unknown.message.starts_with("tokens[1]"), "{unknown:?}");
    assert_eq!(
        bad_item_field(results[2].as_ref().unwrap_err()),
        "tokens[2]"
    );
    // Twice: the call succeeds, the token is NOT_FOUND for that item.
    let again = deleter
        .delete_tokens(vec![tokens[0].clone()])
        .await
        .unwrap();
    assert_eq!(code(again[0].as_ref().unwrap_err()), Code::NotFound);
    assert_eq!(detokenizes(&vault, &tokens[0]).await, Err(Code::NotFound));
    assert_eq!(detokenizes(&vault, &tokens[1]).await, Ok(()));
    // A caller without the action deletes nothing.
    let mut support = lifecycle(&vault, "support").await;
    let refused = support.delete_tokens(vec![tokens[1].clone()]).await;
    match refused {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(items) => assert_eq!(code(items[0].as_ref().unwrap_err()), Code::NotFound),
    }
    assert_eq!(detokenizes(&vault, &tokens[1]).await, Ok(()));
    // Deleted for good: not back after a restart, and a deterministic
    // tokenize of the value makes a new token.
    vault.restart().await;
    assert_eq!(detokenizes(&vault, &tokens[0]).await, Err(Code::NotFound));
    let mut orders = vault.client("orders").await;
    let again = tokens_for(&mut orders, vec![phone(PHONE)]).await;
    assert_ne!(again[0], tokens[0]);
    let report = integrity(&mut vault).await;
    assert_eq!(report.records, 2, "the email and the new phone: {report:?}");
}

#[tokio::test]
async fn token_info_returns_kind_created_expiry_key_version_and_mode_and_never_the_value() {
    let vault = start().await;
    let mut orders = vault.client("orders").await;
    let before = now_ms();
    let tokens = tokens_for(
        &mut orders,
        vec![
            phone(PHONE),
            with_ttl(field(FieldKind::Email, EMAIL), secs(3600)),
        ],
    )
    .await;
    let after = now_ms();
    let mut inspector = lifecycle(&vault, "orders").await;
    let mut asked = tokens.clone();
    asked.push("fv1_AAAAAAAAAAAAAAAAAAAAAA".into());
    let infos = inspector.token_info(asked).await.unwrap();
    let phone_info = infos[0].as_ref().unwrap();
    assert_eq!(phone_info.token, tokens[0]);
    assert_eq!(phone_info.kind, pb::FieldKind::Phone as i32);
    assert!(
        (before..=after).contains(&phone_info.created_unix_ms),
        "{phone_info:?}"
    );
    assert_eq!(phone_info.expires_unix_ms, 0, "never expires");
    assert_eq!(phone_info.key_version, 1);
    assert_eq!(phone_info.mode, pb::TokenMode::Deterministic as i32);
    let email_info = infos[1].as_ref().unwrap();
    assert_eq!(email_info.kind, pb::FieldKind::Email as i32);
    assert_eq!(email_info.mode, pb::TokenMode::Random as i32);
    assert_ttl(email_info, 3_600_000);
    assert_eq!(code(infos[2].as_ref().unwrap_err()), Code::NotFound);
    // The answer, as bytes on the wire, holds no value.
    let raw = vault
        .client("orders")
        .await
        .get_token_info(pb::GetTokenInfoRequest {
            tokens: tokens.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = prost::Message::encode_to_vec(&raw);
    for needle in needles() {
        let needle = needle.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "a value in GetTokenInfo's answer"
        );
    }
    // A caller without the action learns nothing.
    let mut intruder = lifecycle(&vault, "intruder").await;
    match intruder.token_info(tokens.clone()).await {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(items) => assert!(items
            .iter()
            .all(|i| i.as_ref().is_err_and(|e| code(e) == Code::NotFound))),
    }
}

// ---------------------------------------------------------------------------
// Erase and export by value.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_by_value_removes_every_token_of_a_phone_number_in_both_modes_and_across_its_formats_and_a_later_deterministic_tokenize_gives_a_new_token(
) {
    let mut vault = start().await;
    // Random mode first: a new token for every format sent.
    vault.config.token_modes.phone = TokenMode::Random;
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    let mut random = tokens_for(
        &mut orders,
        vec![phone(PHONE_VARIANTS[0]), phone(PHONE_VARIANTS[1])],
    )
    .await;
    let other = tokens_for(&mut orders, vec![phone(OTHER_PHONE)]).await;
    // Under a second index key too.
    let mut rotator =
        KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("rotator")).await);
    let version = rotator
        .rotate_index_key(pb::RotateIndexKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, 2);
    random.extend(tokens_for(&mut orders, vec![phone(PHONE_VARIANTS[2])]).await);
    assert_eq!(random.iter().collect::<BTreeSet<_>>().len(), 3);

    // Then deterministic: one token for every format.
    vault.config.token_modes.phone = TokenMode::Deterministic;
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    let deterministic = tokens_for(
        &mut orders,
        PHONE_VARIANTS.iter().map(|v| phone(v)).collect(),
    )
    .await;
    assert!(deterministic.iter().all(|t| *t == deterministic[0]));

    // Erased by any of its formats (here national format, region US).
    let mut admin = lifecycle(&vault, "admin").await;
    let erased = admin.erase_value(phone("(202) 555-0143")).await.unwrap();
    let erased: BTreeSet<String> = erased.into_iter().collect();
    let mut expected: BTreeSet<String> = random.iter().cloned().collect();
    expected.insert(deterministic[0].clone());
    assert_eq!(erased, expected);
    for token in &expected {
        assert_eq!(detokenizes(&vault, token).await, Err(Code::NotFound));
    }
    assert_eq!(detokenizes(&vault, &other[0]).await, Ok(()));
    // Nothing is left to erase or export.
    assert!(admin.erase_value(phone(PHONE)).await.unwrap().is_empty());
    assert!(admin
        .export_value(phone(PHONE), "dsar")
        .await
        .unwrap()
        .is_empty());
    // A later deterministic tokenize gives a new token, which is the only
    // one of the value from then on.
    let mut orders = vault.client("orders").await;
    let new = tokens_for(&mut orders, vec![phone(PHONE)]).await;
    assert!(!expected.contains(&new[0]));
    let exported = admin.export_value(phone(PHONE), "dsar").await.unwrap();
    assert_eq!(
        exported.iter().map(|i| i.token.clone()).collect::<Vec<_>>(),
        new
    );
    // After a restart, still gone.
    vault.restart().await;
    for token in &expected {
        assert_eq!(detokenizes(&vault, token).await, Err(Code::NotFound));
    }
    let report = integrity(&mut vault).await;
    assert_eq!(report.records, 2, "the other number and the new token");
    let hits = files_containing(vault.tmp.path(), &needles());
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
}

#[tokio::test]
async fn export_lists_exactly_the_values_tokens_and_callers_without_the_action_or_purpose_are_denied(
) {
    let mut vault = start().await;
    vault.config.token_modes.phone = TokenMode::Random;
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    let mine = tokens_for(
        &mut orders,
        vec![phone(PHONE_VARIANTS[0]), phone(PHONE_VARIANTS[3])],
    )
    .await;
    let _other = tokens_for(&mut orders, vec![phone(OTHER_PHONE)]).await;
    let mut admin = lifecycle(&vault, "admin").await;
    let exported = admin
        .export_value(phone("202.555.0143"), "dsar")
        .await
        .unwrap();
    let listed: BTreeSet<String> = exported.iter().map(|i| i.token.clone()).collect();
    assert_eq!(listed, mine.iter().cloned().collect());
    for info in &exported {
        assert_eq!(info.kind, pb::FieldKind::Phone as i32);
        assert!(info.created_unix_ms > 0, "{info:?}");
        assert_eq!(info.expires_unix_ms, 0);
        assert_eq!(info.key_version, 1);
        assert_eq!(info.mode, pb::TokenMode::Random as i32);
    }
    // Denied: a caller without an export rule, admin for another purpose.
    for (who, purpose) in [
        ("orders", "dsar"),
        ("support", "dsar"),
        ("intruder", "dsar"),
        ("admin", "marketing"),
    ] {
        let mut client = lifecycle(&vault, who).await;
        let status = client
            .export_value(phone(PHONE), purpose)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{who}: {status:?}");
        assert!(!status.message().contains("555"), "{status:?}");
    }
    // The purpose is required.
    let status = admin.export_value(phone(PHONE), "").await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::PermissionDenied
        ) && status.message().contains("purpose"),
        "{status:?}"
    );
    // Erase needs its own action: orders and support erase nothing.
    for who in ["orders", "support"] {
        let mut client = lifecycle(&vault, who).await;
        let status = client.erase_value(phone(PHONE)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{who}: {status:?}");
    }
    for token in &mine {
        assert_eq!(detokenizes(&vault, token).await, Ok(()));
    }
}

#[tokio::test]
async fn erase_and_export_of_a_malformed_value_are_invalid_argument_naming_the_field_and_change_nothing(
) {
    let vault = start().await;
    let mut orders = vault.client("orders").await;
    let kept = tokens_for(&mut orders, vec![phone(PHONE)]).await;
    let mut admin = lifecycle(&vault, "admin").await;
    // Too short to be a phone number: the same validation as Tokenize.
    let status = admin.erase_value(phone("+1 202-555-01")).await.unwrap_err();
    assert_eq!(bad_field(&status), "field.value", "{status:?}");
    assert!(!status.message().contains("555"), "{status:?}");
    let status = admin
        .export_value(phone("+1 202-555-01"), "dsar")
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "field.value", "{status:?}");
    // Refused at the edge: no kind, a time to live, no field at all.
    let status = admin
        .erase_value(pb::Field {
            value: PHONE.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "field.kind");
    let status = admin
        .erase_value(with_ttl(phone(PHONE), secs(60)))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "field.ttl");
    let raw = vault
        .client("admin")
        .await
        .erase_value(pb::EraseValueRequest { field: None })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&raw), "field");
    // A national ID with a bad check digit, named as Tokenize names it.
    let status = admin
        .erase_value(national_id(pb::NationalIdScheme::EsDni, "12345678A"))
        .await
        .unwrap_err();
    assert!(bad_field(&status).starts_with("field."), "{status:?}");
    assert_eq!(detokenizes(&vault, &kept[0]).await, Ok(()));
}

// ---------------------------------------------------------------------------
// Audit and plaintext.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_call_is_audited_naming_tokens_and_no_value_is_left_on_disk() {
    let mut vault = start().await;
    let log = vault.config.audit_log.clone();
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(
        &mut orders,
        vec![phone(PHONE), field(FieldKind::Email, EMAIL)],
    )
    .await;
    let mut as_orders = lifecycle(&vault, "orders").await;
    let mut as_admin = lifecycle(&vault, "admin").await;
    as_orders.token_info(tokens.clone()).await.unwrap();
    as_orders
        .delete_tokens(vec![tokens[1].clone()])
        .await
        .unwrap();
    let exported = as_admin
        .export_value(phone("202.555.0143"), "dsar")
        .await
        .unwrap();
    assert_eq!(exported.len(), 1);
    let erased = as_admin.erase_value(phone("(202) 555-0143")).await.unwrap();
    assert_eq!(erased, vec![tokens[0].clone()]);
    // And refused ones.
    lifecycle(&vault, "orders")
        .await
        .erase_value(phone(PHONE))
        .await
        .unwrap_err();
    lifecycle(&vault, "orders")
        .await
        .export_value(phone(PHONE), "dsar")
        .await
        .unwrap_err();

    vault.stop().await;
    let events = events(&log);
    let of = |action: &str, decision: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == action && e["decision"] == decision)
            .collect()
    };
    let tokens_in = |e: &Value| -> Vec<String> {
        e["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["token"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let inspected = of("inspect", "allowed");
    assert_eq!(inspected.len(), 1, "{events:?}");
    assert_eq!(tokens_in(inspected[0]), tokens);
    let deleted = of("delete", "allowed");
    assert_eq!(deleted.len(), 1, "{events:?}");
    assert_eq!(tokens_in(deleted[0]), vec![tokens[1].clone()]);
    let exports = of("export", "allowed");
    assert_eq!(exports.len(), 1, "{events:?}");
    assert_eq!(exports[0]["purpose"], "dsar");
    assert_eq!(tokens_in(exports[0]), vec![tokens[0].clone()]);
    let erases = of("erase", "allowed");
    assert_eq!(erases.len(), 1, "{events:?}");
    assert_eq!(tokens_in(erases[0]), vec![tokens[0].clone()]);
    assert_eq!(of("erase", "denied").len(), 1, "{events:?}");
    assert_eq!(of("export", "denied").len(), 1, "{events:?}");
    // No value in the trail, the store or anywhere else in the test's
    // directory (the audit trail is in data/).
    let hits = files_containing(vault.tmp.path(), &needles());
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
}
