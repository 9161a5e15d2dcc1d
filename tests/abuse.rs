//! Abuse controls over real mTLS: quotas (durable across restarts, a batch
//! refused whole), automatic freeze on repeated quota hits and on a scan of
//! unknown tokens, unfreeze, canary tokens, justification patterns, the
//! deny list and the live policy file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::dev::spiffe_id;
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::admin_client::AdminClient;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use tonic::Code;

const POLICY: &str = r#"
version = 1

[freeze]
quota_hits = { count = 3, within = "1h" }
unknown_tokens = { count = 20, within = "1h" }

[[rules]]
name = "orders tokenize"
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "address", "email"]

[[rules]]
name = "orders delete"
callers = ["spiffe://fieldvault.dev/orders"]
action = "delete"
kinds = ["phone"]

[[rules]]
name = "intruder inspect"
callers = ["spiffe://fieldvault.dev/intruder"]
action = "inspect"
kinds = ["phone"]

[[rules]]
name = "support callback"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"
quota = ["60/minute"]

[[rules]]
name = "support addresses"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["address"]
purposes = ["callback"]
reveal = "masked"

[[rules]]
name = "fraud review needs a ticket"
callers = ["spiffe://fieldvault.dev/intruder"]
action = "detokenize"
kinds = ["email"]
purposes = ["fraud_review"]
reveal = "full"
justification = "SUP-[0-9]+"

[[rules]]
name = "operators"
callers = ["spiffe://fieldvault.dev/admin"]
action = "admin"
"#;

/// A server on [`POLICY`] (or `policy`), with an `admin` identity.
async fn start(policy: &str) -> TestVault {
    let policy = policy.to_owned();
    let vault = TestVault::start_with(move |config| {
        let path = config.data_dir.with_file_name("abuse-policy.toml");
        write(&path, policy.as_bytes());
        config.policy_file = path;
    })
    .await;
    vault
        .pki
        .issue_client("admin", "admin", Some(&spiffe_id("admin")));
    vault
}

async fn admin(vault: &TestVault) -> AdminClient<Channel> {
    AdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("admin")).await)
}

fn phones(n: usize) -> Vec<pb::Field> {
    (0..n)
        .map(|i| field(pb::FieldKind::Phone, &format!("+1 202-555-{:04}", 100 + i)))
        .collect()
}

async fn reveal(
    client: &mut pb::vault_client::VaultClient<Channel>,
    tokens: &[String],
    justification: &str,
    purpose: &str,
) -> Result<Vec<Result<pb::RevealedValue, tonic_types::Status>>, tonic::Status> {
    detokenize_with(client, purpose, justification, tokens).await
}

/// Waits, if needed, until at least `need` is left in the current UTC
/// minute: quota windows are calendar minutes, and the scenario must not
/// straddle two.
async fn room_in_this_minute(need: Duration) -> u128 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = 60_000 - now.as_millis() % 60_000;
    if left < need.as_millis() {
        tokio::time::sleep(Duration::from_millis(left as u64 + 100)).await;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        / 60_000
}

fn minute_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        / 60_000
}

/// What a caller frozen automatically is told (the control is not named:
/// a caller must not learn which token was a canary).
const AUTOMATIC: &str = "reason: an abuse control of the vault froze it (its operators know which)";

fn assert_frozen(status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let msg = status.message();
    assert!(
        msg.contains("frozen since") && msg.contains(reason),
        "{msg}"
    );
    assert!(!msg.contains("canary"), "{msg}");
}

#[tokio::test]
async fn quotas_count_durably_refuse_whole_batches_and_repeated_hits_freeze_until_unfrozen() {
    let mut vault = start(POLICY).await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, phones(70)).await;
    let address = tokens_for(
        &mut orders,
        vec![field(
            pb::FieldKind::Address,
            "1 Example Street, Springfield, US",
        )],
    )
    .await;
    let minute = room_in_this_minute(Duration::from_secs(40)).await;
    let mut support = vault.client("support").await;

    // 50 values, then a batch of 11 that would make 61: refused whole.
    let got = reveal(&mut support, &tokens[..50], "", "callback")
        .await
        .unwrap();
    assert!(got.iter().all(|r| r.is_ok()));
    let over = reveal(&mut support, &tokens[50..61], "", "callback")
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let msg = over.message();
    assert!(
        msg.contains("rule 'support callback'")
            && msg.contains("60 values per minute")
            && msg.contains("50 revealed in this minute, this call asks 11")
            && msg.contains("resets at")
            && msg.contains("nothing was revealed"),
        "{msg}"
    );
    // The details say when to retry (google.rpc.RetryInfo).
    use tonic_types::StatusExt;
    let details = over.get_error_details();
    let retry = details.retry_info().and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d <= Duration::from_secs(60)),
        "{retry:?}"
    );
    // Refused whole: all 10 that remain can still be revealed...
    let got = reveal(&mut support, &tokens[50..60], "", "callback")
        .await
        .unwrap();
    assert!(got.iter().all(|r| r.is_ok()));
    // ...and the 61st value in the minute cannot.
    let over = reveal(&mut support, &tokens[60..61], "", "callback")
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");

    // A restart does not reset the count: this is the third hit, which
    // freezes support (the call itself is answered for its quota).
    vault.restart().await;
    let mut support = vault.client("support").await;
    let over = reveal(&mut support, &tokens[60..61], "", "callback")
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert_eq!(
        minute_now(),
        minute,
        "the scenario must run within one minute"
    );

    // Frozen: the same refusal for every kind and every action, and it
    // survives a restart.
    vault.restart().await;
    let mut support = vault.client("support").await;
    let reason = "hit its quotas 3 times within 1h";
    let refusals = [
        reveal(&mut support, &tokens[..1], "", "callback")
            .await
            .unwrap_err(),
        reveal(&mut support, &address, "", "callback")
            .await
            .unwrap_err(),
        tokenize(&mut support, phones(1)).await.unwrap_err(),
        KeyAdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("support")).await)
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .unwrap_err(),
        AdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("support")).await)
            .list_callers(pb::ListCallersRequest {})
            .await
            .unwrap_err(),
    ];
    for r in &refusals {
        // The caller learns it was frozen, not by which control.
        assert_frozen(r, AUTOMATIC);
        assert_eq!(r.message(), refusals[0].message());
    }

    // The admin sees it, and unfreezes it.
    let mut admin = admin(&vault).await;
    let listed = admin
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap()
        .into_inner();
    let s = listed
        .callers
        .iter()
        .find(|c| c.caller == spiffe_id("support"))
        .unwrap();
    let frozen = s.frozen.as_ref().unwrap();
    assert_eq!(frozen.by, "vault");
    assert!(frozen.reason.contains(reason), "{}", frozen.reason);
    let quota = &s.quotas[0];
    assert_eq!(
        (quota.rule.as_str(), quota.limit, quota.per.as_str()),
        ("support callback", 60, "minute")
    );
    if minute_now() == minute {
        assert_eq!(quota.used, 60);
    }
    admin
        .unfreeze_caller(pb::UnfreezeCallerRequest {
            caller: spiffe_id("support"),
        })
        .await
        .unwrap();
    // Access is back (an address: no quota); a second unfreeze is refused
    // precisely.
    let got = reveal(&mut support, &address, "", "callback")
        .await
        .unwrap();
    assert!(got[0].is_ok());
    let again = admin
        .unfreeze_caller(pb::UnfreezeCallerRequest {
            caller: spiffe_id("support"),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(
        again.message(),
        "caller 'spiffe://fieldvault.dev/support' is not frozen"
    );
    vault.stop().await;
}

#[tokio::test]
async fn a_canary_freezes_even_a_caller_whose_policy_allows_the_kind_and_reveals_nothing() {
    let mut vault = start(POLICY).await;
    let mut orders = vault.client("orders").await;
    let real = tokens_for(&mut orders, phones(1)).await;
    let mut admin = admin(&vault).await;
    let canaries = admin
        .create_canaries(pb::CreateCanariesRequest {
            kind: pb::FieldKind::Phone as i32,
            count: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(canaries.len(), 2);
    for c in &canaries {
        // Shaped exactly like a real token.
        assert!(c.starts_with("fv1_") && c.len() == real[0].len(), "{c}");
    }
    let listed = admin
        .list_canaries(pb::ListCanariesRequest {})
        .await
        .unwrap()
        .into_inner()
        .canaries;
    assert_eq!(
        listed.iter().map(|c| c.token.clone()).collect::<Vec<_>>(),
        canaries
    );
    assert_eq!(listed[0].created_by, spiffe_id("admin"));

    // Support may reveal phones; a canary among real tokens freezes it and
    // nothing is revealed, not even the real one.
    let mut support = vault.client("support").await;
    let asked = vec![real[0].clone(), canaries[1].clone()];
    let refused = reveal(&mut support, &asked, "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);
    let refused = reveal(&mut support, &real, "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);

    // A caller with no detokenize rule at all is frozen just the same.
    let refused = reveal(&mut orders, &canaries[..1], "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);

    // Freezes survive a restart.
    vault.restart().await;
    let mut support = vault.client("support").await;
    let refused = reveal(&mut support, &real, "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);

    // The trail has both freezes, and the canary item of the call.
    vault.stop().await;
    let trail = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let frozen: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("\"action\":\"caller.frozen\""))
        .collect();
    assert_eq!(frozen.len(), 2, "{trail}");
    assert!(
        frozen[0].contains("\"trigger\":\"canary\""),
        "{}",
        frozen[0]
    );
    assert!(trail.contains("\"outcome\":\"canary\""));
    assert!(!trail.contains("202-555"));
}

#[tokio::test]
async fn a_justification_is_required_where_a_rule_says_and_must_match_its_pattern() {
    let mut vault = start(POLICY).await;
    let mut orders = vault.client("orders").await;
    let email = tokens_for(
        &mut orders,
        vec![field(pb::FieldKind::Email, "someone@example.com")],
    )
    .await;
    let mut reviewer = vault.client("intruder").await;
    for (given, expected) in [
        ("", "none was given"),
        ("SUP-", "does not match"),
        ("please SUP-12", "does not match"),
    ] {
        let refused = reveal(&mut reviewer, &email, given, "fraud_review")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("'SUP-[0-9]+'") && refused.message().contains(expected),
            "{given:?}: {}",
            refused.message()
        );
    }
    let got = reveal(&mut reviewer, &email, "SUP-4711", "fraud_review")
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "someone@example.com");

    // Each is audited, with its decision.
    vault.stop().await;
    let trail = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let reviews: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("fraud_review"))
        .collect();
    assert_eq!(reviews.len(), 4, "{trail}");
    assert_eq!(
        reviews
            .iter()
            .filter(|l| l.contains("\"decision\":\"denied\""))
            .count(),
        3
    );
}

/// Replaces the policy file the way an editor or a ConfigMap does: a new
/// file renamed over it.
fn replace_policy(path: &Path, text: &str) {
    let next = path.with_extension("next");
    write(&next, text.as_bytes());
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn the_deny_list_and_policy_changes_bite_at_the_next_call_and_a_broken_file_changes_nothing()
{
    let mut vault = start(POLICY).await;
    let path = vault.config.policy_file.clone();
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    let token = tokens_for(&mut orders, phones(1)).await;

    // A leaver on the deny list: refused at the very next call.
    replace_policy(
        &path,
        &POLICY.replace(
            "version = 1\n",
            "version = 1\ndeny = [\"spiffe://fieldvault.dev/orders\"]\n",
        ),
    );
    let refused = tokenize(&mut orders, phones(1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "caller 'spiffe://fieldvault.dev/orders' is on the policy's deny list"
    );

    // A broken file: the policy in force stays (orders still denied,
    // support still served).
    replace_policy(
        &path,
        &POLICY.replace("action = \"admin\"", "action = \"erase\""),
    );
    let refused = tokenize(&mut orders, phones(1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(reveal(&mut support, &token, "", "callback").await.is_ok());

    // A valid change: orders is back, and support's phone rule is gone.
    replace_policy(
        &path,
        &POLICY.replace(
            "kinds = [\"phone\"]\npurposes = [\"callback\"]",
            "kinds = [\"email\"]\npurposes = [\"callback\"]",
        ),
    );
    assert!(tokenize(&mut orders, phones(1)).await.is_ok());
    let got = reveal(&mut support, &token, "", "callback").await.unwrap();
    assert_eq!(code(got[0].as_ref().unwrap_err()), Code::NotFound);

    // Every reload is audited within a second or so (the watcher's tick).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    vault.stop().await;
    let trail = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let reloads: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("\"action\":\"policy.reload\""))
        .collect();
    assert_eq!(reloads.len(), 3, "{trail}");
    // The reload comes before the first call it decided.
    let at = |needle: &str| trail.lines().position(|l| l.contains(needle)).unwrap();
    assert!(
        at("\"action\":\"policy.reload\"") < at("is on the policy's deny list"),
        "{trail}"
    );
    assert!(reloads[1].contains("\"decision\":\"rejected\"") && reloads[1].contains("line "));
}

#[tokio::test]
async fn more_unknown_tokens_than_the_threshold_freeze_the_caller() {
    let vault = start(POLICY).await;
    let mut support = vault.client("support").await;
    // Well-formed tokens this vault never issued, and garbage.
    let mut unknown: Vec<String> = (0..15u8)
        .map(|i| format!("fv1_{}{}", (b'A' + i) as char, "A".repeat(21)))
        .collect();
    let got = reveal(&mut support, &unknown, "", "callback")
        .await
        .unwrap();
    assert!(got
        .iter()
        .all(|r| code(r.as_ref().unwrap_err()) == Code::NotFound));
    // Real tokens of a kind support may not see are answered like unknown
    // ones but not counted: a legitimate caller meets them in mixed tables.
    let mut orders = vault.client("orders").await;
    let email = tokens_for(
        &mut orders,
        vec![field(pb::FieldKind::Email, "someone@example.com")],
    )
    .await;
    let got = reveal(&mut support, &vec![email[0].clone(); 30], "", "callback")
        .await
        .unwrap();
    assert!(got
        .iter()
        .all(|r| code(r.as_ref().unwrap_err()) == Code::NotFound));
    // Garbage counts; a real phone beside it is not revealed.
    unknown.truncate(5);
    unknown.push("not a token".into());
    unknown.extend(tokens_for(&mut orders, phones(1)).await);
    // 15 + 6 = 21, more than 20: frozen, and this call is refused.
    let refused = reveal(&mut support, &unknown, "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);
    // Its event says the phone was not revealed.
    let trail = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let last = trail
        .lines()
        .rfind(|l| l.contains("\"action\":\"detokenize\""))
        .unwrap();
    assert!(
        last.contains("\"outcome\":\"refused\"") && !last.contains("\"outcome\":\"full\""),
        "{last}"
    );
    // The operators see why.
    let listed = admin(&vault)
        .await
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap()
        .into_inner();
    let frozen = listed
        .callers
        .iter()
        .find(|c| c.caller == spiffe_id("support"))
        .and_then(|c| c.frozen.clone())
        .unwrap();
    assert_eq!(
        frozen.reason,
        "sent 21 unknown tokens within 1h (more than 20)"
    );
}

#[tokio::test]
async fn admin_calls_need_the_admin_action_and_bad_arguments_change_nothing() {
    let vault = start(POLICY).await;
    let mut admin = admin(&vault).await;
    let mut not_admin =
        AdminClient::new(channel(&vault.addr(), &vault.pki.client_tls("orders")).await);
    let denied = not_admin
        .freeze_caller(pb::FreezeCallerRequest {
            caller: spiffe_id("support"),
            reason: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    for (caller, reason, field) in [
        ("", "why", "caller"),
        ("spiffe://", "why", "caller"),
        ("support", "", "reason"),
        ("support", "a\u{7}b", "reason"),
        ("support", "looks \u{202e}reversed", "reason"),
        ("support", "two\u{2028}lines", "reason"),
        ("spiffe://fieldvault.dev/admin", "oops", "caller"),
    ] {
        let bad = admin
            .freeze_caller(pb::FreezeCallerRequest {
                caller: caller.into(),
                reason: reason.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        assert!(bad.message().starts_with(&format!("{field}: ")), "{bad:?}");
    }
    let bad = admin
        .create_canaries(pb::CreateCanariesRequest {
            kind: pb::FieldKind::Phone as i32,
            count: 1001,
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("count: "), "{bad:?}");
    let bad = admin
        .create_canaries(pb::CreateCanariesRequest { kind: 0, count: 1 })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("kind: "), "{bad:?}");

    // An operator's freeze: by the operator, refused twice, lifted once.
    let frozen = admin
        .freeze_caller(pb::FreezeCallerRequest {
            caller: spiffe_id("support"),
            reason: "leaver, ticket SEC-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .freeze
        .unwrap();
    assert_eq!(frozen.by, spiffe_id("admin"));
    let twice = admin
        .freeze_caller(pb::FreezeCallerRequest {
            caller: spiffe_id("support"),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert!(twice.message().contains("frozen already"), "{twice:?}");
    let mut support = vault.client("support").await;
    let refused = reveal(
        &mut support,
        &["fv1_AAAAAAAAAAAAAAAAAAAAAA".to_owned()],
        "",
        "callback",
    )
    .await
    .unwrap_err();
    assert_frozen(&refused, "leaver, ticket SEC-1");
    admin
        .unfreeze_caller(pb::UnfreezeCallerRequest {
            caller: spiffe_id("support"),
        })
        .await
        .unwrap();
    assert!(reveal(
        &mut support,
        &["fv1_AAAAAAAAAAAAAAAAAAAAAA".to_owned()],
        "",
        "callback"
    )
    .await
    .is_ok());
}

/// The real binary: the alert line a freeze writes to the log, once, in its
/// documented format; SIGHUP re-reads the policy and the server lives on;
/// no value in the log.
#[tokio::test]
async fn a_freeze_writes_one_alert_line_and_sighup_rereads_the_policy() {
    use common::process::start_with_config;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    pki.issue_client("admin", "admin", Some(&spiffe_id("admin")));
    let config = write_config_file(
        tmp.path(),
        &pki,
        POLICY,
        (&tmp.path().join("data"), &tmp.path().join("data/audit.log")),
        "",
        "",
    );
    let log = tmp.path().join("server.log");
    let mut server = start_with_config(&config, &log).unwrap();
    let mut orders = connect(&server.addr, &pki.client_tls("orders")).await;
    let real = tokens_for(&mut orders, phones(3)).await;
    let mut admin = AdminClient::new(channel(&server.addr, &pki.client_tls("admin")).await);
    let canary = admin
        .create_canaries(pb::CreateCanariesRequest {
            kind: pb::FieldKind::Phone as i32,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let mut support = connect(&server.addr, &pki.client_tls("support")).await;
    assert!(reveal(&mut support, &real, "", "callback").await.is_ok());
    let asked = [real.clone(), canary.clone()].concat();
    let refused = reveal(&mut support, &asked, "", "callback")
        .await
        .unwrap_err();
    assert_frozen(&refused, AUTOMATIC);
    // Asking again: refused, no second alert.
    assert!(reveal(&mut support, &canary, "", "callback").await.is_err());

    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    bounded(
        Duration::from_secs(10),
        "the policy reload after SIGHUP",
        async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("policy reloaded") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    assert!(server.is_running(), "SIGHUP must not end the server");
    // Still serving, under the (same) policy re-read.
    assert!(tokenize(&mut orders, phones(1)).await.is_ok());
    // Open connections would hold a graceful stop.
    drop((orders, admin, support));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exit = server.terminate(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    let alerts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ALERT caller_frozen"))
        .collect();
    assert_eq!(alerts.len(), 1, "{text}");
    let alert = alerts[0];
    assert!(
        alert.contains("WARN") && alert.contains("fieldvault::alert"),
        "{alert}"
    );
    assert!(
        alert.contains(
            "ALERT caller_frozen caller=\"spiffe://fieldvault.dev/support\" trigger=canary since="
        ) && alert.contains(" by=\"vault\" request_id=")
            && alert.ends_with("reason=\"asked to detokenize a canary token\""),
        "{alert}"
    );
    for part in ["202-555", "+1202555", "2025550"] {
        assert!(
            !text.contains(part),
            "the server log holds a value:\n{text}"
        );
    }
}

#[tokio::test]
async fn tokens_whose_records_were_deleted_do_not_count_as_unknown_toward_the_scan_freeze() {
    let vault = start(POLICY).await;
    let mut orders = vault.client("orders").await;
    let mut support = vault.client("support").await;
    // More than the policy's 20, issued by this vault, then deleted.
    let tokens = tokens_for(&mut orders, phones(25)).await;
    let deleted = orders
        .delete_tokens(pb::DeleteTokensRequest {
            tokens: tokens.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.results.iter().all(|r| matches!(
        r.outcome,
        Some(pb::delete_tokens_result::Outcome::Deleted(_))
    )));
    let got = reveal(&mut support, &tokens, "", "callback").await.unwrap();
    assert!(got
        .iter()
        .all(|r| code(r.as_ref().unwrap_err()) == Code::NotFound));
    // Not frozen: support still reveals a live token.
    let live = tokens_for(
        &mut orders,
        vec![field(pb::FieldKind::Phone, "+1 202-555-0177")],
    )
    .await;
    let got = reveal(&mut support, &live, "", "callback").await.unwrap();
    assert!(got[0].is_ok(), "{got:?}");
}

#[tokio::test]
async fn a_canary_token_freezes_a_caller_that_inspects_or_deletes_it_too() {
    let vault = start(POLICY).await;
    let mut admin = admin(&vault).await;
    let canaries = admin
        .create_canaries(pb::CreateCanariesRequest {
            kind: pb::FieldKind::Phone as i32,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let mut orders = vault.client("orders").await;
    let real = tokens_for(&mut orders, phones(1)).await;
    let mut tokens = real.clone();
    tokens.extend(canaries.iter().cloned());
    let refused = orders
        .delete_tokens(pb::DeleteTokensRequest {
            tokens: tokens.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let mut intruder = vault.client("intruder").await;
    let refused = intruder
        .get_token_info(pb::GetTokenInfoRequest { tokens })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // Both frozen by the vault; the real token beside the canary was not
    // deleted.
    let callers = admin
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap()
        .into_inner()
        .callers;
    for who in ["orders", "intruder"] {
        let c = callers
            .iter()
            .find(|c| c.caller == format!("spiffe://fieldvault.dev/{who}"))
            .unwrap();
        assert!(c.frozen.is_some(), "{who} not frozen");
    }
    let mut support = vault.client("support").await;
    let got = reveal(&mut support, &real, "", "callback").await.unwrap();
    assert!(got[0].is_ok(), "{got:?}");
}
