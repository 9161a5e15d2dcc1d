//! Approved workflows over real mTLS (README, "Approved workflows"): the
//! Grants service and Detokenize under a grant, against a real in-process
//! server with certificates made at test time and the dev policy
//! (`fulfilment` reveals addresses in full for purpose `shipping` only
//! under a grant two of `approver1`, `approver2` approved; `admin` has a
//! `grants` rule). Every call has a deadline (the channel's) and every wait
//! is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::audit::{keyfile, trail, verify};
use fieldvault::crypto::MasterKey;
use fieldvault::dev::{spiffe_id, DEV_POLICY};
use fieldvault::grpc::pb::grants_client::GrantsClient;
use fieldvault::grpc::pb::{self, FieldKind, GrantState};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const SHIPPING: &str = "shipping";

/// Obviously fake addresses, one per index.
fn address(n: usize) -> String {
    format!("{n} Example Street, Springfield")
}

async fn grants(vault: &TestVault, who: &str) -> GrantsClient<Channel> {
    GrantsClient::new(channel(&vault.addr(), &vault.pki.client_tls(who)).await)
}

async fn addresses(vault: &TestVault, n: usize) -> Vec<String> {
    let mut orders = vault.client("orders").await;
    tokens_for(
        &mut orders,
        (0..n)
            .map(|i| field(FieldKind::Address, &address(i)))
            .collect(),
    )
    .await
}

fn ask(max_reveals: u32, valid_for_secs: i64) -> pb::RequestGrantRequest {
    pb::RequestGrantRequest {
        caller: String::new(),
        kinds: vec![FieldKind::Address as i32],
        purpose: SHIPPING.into(),
        max_reveals,
        valid_for: Some(prost_types::Duration {
            seconds: valid_for_secs,
            nanos: 0,
        }),
        reason: "labels for batch TEST-7".into(),
        tokens: Vec::new(),
    }
}

/// Requests a grant as `who`; its id.
async fn request(vault: &TestVault, who: &str, r: pb::RequestGrantRequest) -> String {
    grants(vault, who)
        .await
        .request_grant(r)
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .grant_id
}

async fn approve(vault: &TestVault, who: &str, id: &str) -> Result<pb::Grant, tonic::Status> {
    grants(vault, who)
        .await
        .approve_grant(pb::ApproveGrantRequest {
            grant_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().grant.unwrap())
}

async fn get(vault: &TestVault, who: &str, id: &str) -> pb::Grant {
    grants(vault, who)
        .await
        .get_grant(pb::GetGrantRequest {
            grant_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

/// The grants `who` sees in `state` (`Unspecified`: any).
async fn list(vault: &TestVault, who: &str, state: GrantState) -> Vec<pb::Grant> {
    grants(vault, who)
        .await
        .list_grants(pb::ListGrantsRequest {
            state: state as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants
}

/// An approved grant of `max` for fulfilment; its id.
async fn approved(vault: &TestVault, max: u32) -> String {
    let id = request(vault, "fulfilment", ask(max, 3600)).await;
    approve(vault, "approver1", &id).await.unwrap();
    let g = approve(vault, "approver2", &id).await.unwrap();
    assert_eq!(g.state(), GrantState::Active);
    id
}

/// Detokenizes as `client` for shipping under `grant_id`.
async fn reveal(
    client: &mut pb::vault_client::VaultClient<Channel>,
    grant_id: &str,
    tokens: &[String],
) -> Result<Vec<Result<pb::RevealedValue, tonic_types::Status>>, tonic::Status> {
    let resp = client
        .detokenize(pb::DetokenizeRequest {
            tokens: tokens.to_vec(),
            purpose: SHIPPING.into(),
            justification: String::new(),
            grant_id: grant_id.into(),
        })
        .await?
        .into_inner();
    Ok(resp
        .results
        .into_iter()
        .map(|r| match r.outcome.unwrap() {
            pb::detokenize_result::Outcome::Revealed(v) => Ok(v),
            pb::detokenize_result::Outcome::Error(e) => Err(e),
        })
        .collect())
}

/// The refusal of a call that must fail, with its code.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> String {
    let e = r.expect_err("the call must be refused");
    assert_eq!(e.code(), code, "{e:?}");
    e.message().to_owned()
}

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

fn master_of(vault: &TestVault) -> MasterKey {
    match &vault.config.master_key {
        fieldvault::config::MasterKeySource::File(p) => MasterKey::from_file(p).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// The files under `dir` that hold `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_reveals_only_under_an_active_grant_and_never_past_its_count_deadline_or_revocation(
) {
    let vault = TestVault::start().await;
    let tokens = addresses(&vault, 4).await;
    let mut fulfilment = vault.client("fulfilment").await;

    // Without a grant: refused, saying a grant is needed.
    let message = refused(
        reveal(&mut fulfilment, "", &tokens[..1]).await,
        Code::PermissionDenied,
    );
    assert!(
        message.contains("only under an approved grant"),
        "{message}"
    );

    // Pending: refused, naming the state.
    let id = request(&vault, "fulfilment", ask(3, 3600)).await;
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[..1]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("is pending (0 of 2 approvals)"),
        "{message}"
    );

    // Approved by two: reveals in full, one unit per value.
    approve(&vault, "approver1", &id).await.unwrap();
    let g = approve(&vault, "approver2", &id).await.unwrap();
    assert_eq!(g.state(), GrantState::Active);
    assert!(g.activated_unix_ms > 0);
    let shown = reveal(&mut fulfilment, &id, &tokens[..2]).await.unwrap();
    for (i, v) in shown.iter().enumerate() {
        let v = v.as_ref().unwrap();
        assert_eq!(v.reveal(), pb::Reveal::Full);
        assert!(v.value.contains(&format!("{i} Example Street")), "{i}");
    }
    let g = get(&vault, "fulfilment", &id).await;
    assert_eq!((g.used, g.remaining, g.max_reveals), (2, 1, 3));

    // More than is left: refused whole, nothing consumed.
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[2..4]).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("has 1 of 3 reveals left"), "{message}");
    assert_eq!(get(&vault, "fulfilment", &id).await.used, 2);
    reveal(&mut fulfilment, &id, &tokens[2..3]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    // After N reveals: exhausted.
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[3..4]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("is exhausted (3 of 3 reveals used)"),
        "{message}"
    );
    assert_eq!(
        get(&vault, "fulfilment", &id).await.state(),
        GrantState::Exhausted
    );

    // Revoked: refused at the next call, naming who revoked it.
    let id = approved(&vault, 10).await;
    reveal(&mut fulfilment, &id, &tokens[..1]).await.unwrap();
    let g = grants(&vault, "admin")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: id.clone(),
            reason: "batch cancelled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(g.state(), GrantState::Revoked);
    assert_eq!(g.ended_by, spiffe_id("admin"));
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[..1]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("is revoked (by 'spiffe://fieldvault.dev/admin'"),
        "{message}"
    );

    // Expired: a grant of a few seconds, used, then past its deadline.
    let id = request(&vault, "fulfilment", ask(10, 3)).await;
    approve(&vault, "approver2", &id).await.unwrap();
    let g = approve(&vault, "approver1", &id).await.unwrap();
    reveal(&mut fulfilment, &id, &tokens[..1]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let wait = Duration::from_millis(g.expires_unix_ms.saturating_sub(now_ms()) + 50);
    assert!(wait <= Duration::from_secs(4), "{wait:?}");
    tokio::time::sleep(wait).await;
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[..1]).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("is expired"), "{message}");
    assert_eq!(
        get(&vault, "fulfilment", &id).await.state(),
        GrantState::Expired
    );

    // Another workflow cannot use fulfilment's grant; nor another purpose.
    let id = approved(&vault, 10).await;
    let mut support = vault.client("support").await;
    // support has no rule that requires a grant: it learns nothing of
    // grants, not even that this one exists.
    let message = refused(
        reveal(&mut support, &id, &tokens[..1]).await,
        Code::PermissionDenied,
    );
    assert!(
        message.contains("no policy rule that requires a grant names caller")
            && !message.contains("fulfilment"),
        "{message}"
    );
    let other_purpose = fulfilment
        .detokenize(pb::DetokenizeRequest {
            tokens: tokens[..1].to_vec(),
            purpose: "callback".into(),
            justification: String::new(),
            grant_id: id.clone(),
        })
        .await;
    let message = refused(other_purpose, Code::PermissionDenied);
    assert!(message.contains("is for purpose 'shipping'"), "{message}");
    assert_eq!(get(&vault, "fulfilment", &id).await.used, 0);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_approval_rule_needs_two_distinct_approvers_other_than_the_requester() {
    let vault = TestVault::start().await;
    let tokens = addresses(&vault, 1).await;
    let mut fulfilment = vault.client("fulfilment").await;
    // An operator requests on fulfilment's behalf.
    let mut r = ask(5, 3600);
    r.caller = spiffe_id("fulfilment");
    let id = request(&vault, "admin", r).await;
    let g = get(&vault, "approver1", &id).await;
    assert_eq!(g.requested_by, spiffe_id("admin"));
    assert_eq!(g.caller, spiffe_id("fulfilment"));
    assert_eq!(g.approvals_required, 2);
    assert_eq!(
        g.approvers,
        vec![spiffe_id("approver1"), spiffe_id("approver2")]
    );

    // The workflow may not approve its own grant; the requester may not
    // either (admin is no approver of this rule anyway).
    let message = refused(
        approve(&vault, "fulfilment", &id).await,
        Code::PermissionDenied,
    );
    assert!(message.contains("approvals come from others"), "{message}");
    let message = refused(approve(&vault, "admin", &id).await, Code::PermissionDenied);
    assert!(message.contains("approvals come from others"), "{message}");
    let message = refused(approve(&vault, "support", &id).await, Code::NotFound);
    assert_eq!(message, format!("no grant {id}"), "none of its parties");

    // One approval leaves it pending; the same approver again counts once.
    let g = approve(&vault, "approver1", &id).await.unwrap();
    assert_eq!(g.state(), GrantState::Pending);
    assert_eq!(g.approvals.len(), 1);
    let message = refused(
        approve(&vault, "approver1", &id).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("approved grant") && message.contains("already"),
        "{message}"
    );
    let g = get(&vault, "fulfilment", &id).await;
    assert_eq!((g.state(), g.approvals.len()), (GrantState::Pending, 1));
    refused(
        reveal(&mut fulfilment, &id, &tokens).await,
        Code::FailedPrecondition,
    );

    // The second distinct approver makes it active.
    let g = approve(&vault, "approver2", &id).await.unwrap();
    assert_eq!(g.state(), GrantState::Active);
    let who: Vec<&str> = g.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(who, [spiffe_id("approver1"), spiffe_id("approver2")]);
    assert!(reveal(&mut fulfilment, &id, &tokens).await.unwrap()[0].is_ok());
    // An active grant is approved no more.
    let message = refused(
        approve(&vault, "approver1", &id).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("already"), "{message}");

    // Rejection ends a pending grant; a rejected grant reveals nothing.
    let id = request(&vault, "fulfilment", ask(5, 3600)).await;
    let g = grants(&vault, "approver2")
        .await
        .reject_grant(pb::RejectGrantRequest {
            grant_id: id.clone(),
            reason: "no ticket".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(
        (g.state(), g.ended_by.as_str(), g.end_reason.as_str()),
        (
            GrantState::Rejected,
            spiffe_id("approver2").as_str(),
            "no ticket"
        )
    );
    let message = refused(
        approve(&vault, "approver1", &id).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("is rejected"), "{message}");
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("is rejected"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_reveal_exactly_the_hundred_values_of_a_grant_of_a_hundred() {
    let vault = TestVault::start().await;
    let tokens = addresses(&vault, 40).await;
    let id = approved(&vault, 100).await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let client = vault.client("fulfilment").await;
        let (id, tokens) = (id.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let (mut revealed, mut refused) = (0usize, 0usize);
            // Batches of 1 to 3 until the grant refuses three times.
            let mut i = c;
            while refused < 3 {
                let n = 1 + i % 3;
                let batch: Vec<String> = (0..n)
                    .map(|k| tokens[(i + k) % tokens.len()].clone())
                    .collect();
                i += 1;
                match reveal(&mut client, &id, &batch).await {
                    Ok(results) => {
                        revealed += results.iter().filter(|r| r.is_ok()).count();
                        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
                    }
                    Err(e) => {
                        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                        refused += 1;
                        // Once fewer units are left than a batch, single
                        // values may still pass: ask for one.
                        if let Ok(results) = reveal(&mut client, &id, &batch[..1]).await {
                            revealed += results.iter().filter(|r| r.is_ok()).count();
                        }
                    }
                }
            }
            revealed
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += bounded(SERVER_DEADLINE, "a client to finish", t)
            .await
            .unwrap();
    }
    assert_eq!(total, 100, "values revealed under a grant of 100");
    let g = get(&vault, "fulfilment", &id).await;
    assert_eq!(
        (g.used, g.remaining, g.state()),
        (100, 0, GrantState::Exhausted)
    );
    // The trail's detokenize events under the grant add up to 100 units.
    let units: u64 = events(&vault.config.audit_log)
        .iter()
        .filter(|e| e["action"] == "detokenize" && e["details"]["grant"] == id.as_str())
        .filter_map(|e| e["details"]["grant_units"].as_u64())
        .sum();
    assert_eq!(units, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_and_what_it_used_survive_a_restart_and_a_token_list_limits_it_to_those_tokens() {
    let mut vault = TestVault::start().await;
    let tokens = addresses(&vault, 3).await;
    let mut r = ask(10, 3600);
    r.tokens = vec![tokens[0].clone(), tokens[1].clone()];
    let id = request(&vault, "fulfilment", r).await;
    approve(&vault, "approver1", &id).await.unwrap();
    approve(&vault, "approver2", &id).await.unwrap();
    let mut fulfilment = vault.client("fulfilment").await;
    let results = reveal(&mut fulfilment, &id, &tokens).await.unwrap();
    assert!(results[0].is_ok() && results[1].is_ok());
    // A token the grant does not list is answered as one the caller may
    // not see (NOT_FOUND), and consumes nothing.
    assert_eq!(code(results[2].as_ref().unwrap_err()), Code::NotFound);
    assert_eq!(get(&vault, "fulfilment", &id).await.used, 2);

    vault.restart().await;
    let g = get(&vault, "approver2", &id).await;
    assert_eq!((g.state(), g.used, g.remaining), (GrantState::Active, 2, 8));
    assert_eq!(g.tokens, tokens[..2]);
    assert_eq!(g.approvals.len(), 2);
    let mut fulfilment = vault.client("fulfilment").await;
    assert!(reveal(&mut fulfilment, &id, &tokens[..1]).await.unwrap()[0].is_ok());
    assert_eq!(get(&vault, "fulfilment", &id).await.used, 3);
    // A revocation stored before a restart still refuses after it.
    grants(&vault, "fulfilment")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    vault.restart().await;
    let mut fulfilment = vault.client("fulfilment").await;
    let message = refused(
        reveal(&mut fulfilment, &id, &tokens[..1]).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("is revoked"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grant_requests_and_ids_get_precise_errors_and_change_nothing() {
    let vault = TestVault::start_with_toml(
        DEV_POLICY,
        "",
        "[grants]\nmax_reveals = 50\nmax_valid_for = \"2d\"\nmax_pending = 4\n\
         max_requests_per_day = 7\n",
    )
    .await;
    let mut client = grants(&vault, "fulfilment").await;
    let field_of = |e: &tonic::Status| {
        use tonic_types::StatusExt;
        e.get_details_bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
            .unwrap_or_default()
    };
    let cases: Vec<(pb::RequestGrantRequest, &str, &str)> = vec![
        (
            pb::RequestGrantRequest {
                max_reveals: 0,
                ..ask(0, 60)
            },
            "max_reveals",
            "at least 1",
        ),
        (
            ask(51, 60),
            "max_reveals",
            "over this server's ceiling of 50",
        ),
        (
            ask(5, 3 * 86_400),
            "valid_for",
            "over this server's maximum of 2d",
        ),
        (
            pb::RequestGrantRequest {
                valid_for: None,
                ..ask(5, 60)
            },
            "valid_for",
            "is required",
        ),
        (ask(5, 0), "valid_for", "more than zero"),
        (ask(5, -5), "valid_for", "more than zero"),
        (
            pb::RequestGrantRequest {
                kinds: vec![FieldKind::Phone as i32],
                ..ask(5, 60)
            },
            "kinds",
            "no policy rule that requires a grant reveals field kind 'phone'",
        ),
        (
            pb::RequestGrantRequest {
                kinds: vec![],
                ..ask(5, 60)
            },
            "kinds",
            "at least one",
        ),
        (
            pb::RequestGrantRequest {
                kinds: vec![2, 2],
                ..ask(5, 60)
            },
            "kinds",
            "twice",
        ),
        (
            pb::RequestGrantRequest {
                kinds: vec![0],
                ..ask(5, 60)
            },
            "kinds",
            "kinds[0]",
        ),
        (
            pb::RequestGrantRequest {
                purpose: "callback".into(),
                ..ask(5, 60)
            },
            "purpose",
            "for purpose 'callback'",
        ),
        (
            pb::RequestGrantRequest {
                purpose: "Not A Purpose".into(),
                ..ask(5, 60)
            },
            "purpose",
            "lower-case",
        ),
        (
            pb::RequestGrantRequest {
                reason: String::new(),
                ..ask(5, 60)
            },
            "reason",
            "is required",
        ),
        (
            pb::RequestGrantRequest {
                tokens: vec!["fv1_not-a-token".into()],
                ..ask(5, 60)
            },
            "tokens",
            "tokens[0] is not a token this vault issued",
        ),
        (
            pb::RequestGrantRequest {
                caller: "spiffe://Bad Domain/x".into(),
                ..ask(5, 60)
            },
            "caller",
            "",
        ),
    ];
    for (r, field, text) in cases {
        let e = client.request_grant(r.clone()).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{r:?}: {e:?}");
        assert_eq!(field_of(&e), field, "{r:?}: {e:?}");
        assert!(e.message().contains(text), "{r:?}: {}", e.message());
    }
    // Only an operator requests for another workflow.
    let mut r = ask(5, 60);
    r.caller = spiffe_id("support");
    let message = refused(client.request_grant(r).await, Code::PermissionDenied);
    assert!(message.contains("only for itself"), "{message}");
    // Nothing was stored by any of them.
    let listed = list(&vault, "admin", GrantState::Unspecified).await;
    assert!(listed.is_empty(), "{listed:?}");

    // Ids: malformed, unknown.
    let e = client
        .get_grant(pb::GetGrantRequest {
            grant_id: "grant-1".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(
        (e.code(), field_of(&e).as_str()),
        (Code::InvalidArgument, "grant_id")
    );
    let unknown = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
    let message = refused(approve(&vault, "approver1", unknown).await, Code::NotFound);
    assert!(message.contains(unknown), "{message}");
    let mut fulfilment = vault.client("fulfilment").await;
    let tokens = addresses(&vault, 1).await;
    let message = refused(
        reveal(&mut fulfilment, unknown, &tokens).await,
        Code::NotFound,
    );
    assert!(message.contains(unknown), "{message}");
    let e = reveal(&mut fulfilment, "nope", &tokens)
        .await
        .expect_err("malformed");
    assert_eq!(
        (e.code(), field_of(&e).as_str()),
        (Code::InvalidArgument, "grant_id")
    );

    // A caller who is none of a grant's parties sees nothing of it.
    let id = request(&vault, "admin", {
        let mut r = ask(5, 60);
        r.caller = spiffe_id("fulfilment");
        r
    })
    .await;
    let e = grants(&vault, "support")
        .await
        .get_grant(pb::GetGrantRequest {
            grant_id: id.clone(),
        })
        .await
        .expect_err("not a party");
    // Answered exactly as an unknown grant.
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, format!("no grant {id}").as_str())
    );
    let seen = list(&vault, "support", GrantState::Unspecified).await;
    assert!(seen.is_empty(), "{seen:?}");
    // At most max_pending pending grants per workflow (the operator's
    // request above is one of them).
    for _ in 0..3 {
        client.request_grant(ask(5, 60)).await.unwrap();
    }
    let message = refused(
        client.request_grant(ask(5, 60)).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("has 4 pending grants"), "{message}");
    // The approvers and the workflow see it; the list filters by state.
    let pending = list(&vault, "approver1", GrantState::Pending).await;
    assert_eq!(pending.len(), 4);
    assert_eq!(pending[3].grant_id, id, "newest first");
    let active = list(&vault, "fulfilment", GrantState::Active).await;
    assert!(active.is_empty());

    // At most max_requests_per_day grants per workflow and day, ended ones
    // included (they stay stored): 4 so far, 3 more, then refused.
    for g in &pending {
        grants(&vault, "admin")
            .await
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: g.grant_id.clone(),
                reason: String::new(),
            })
            .await
            .unwrap();
    }
    for _ in 0..3 {
        client.request_grant(ask(5, 60)).await.unwrap();
    }
    let message = refused(
        client.request_grant(ask(5, 60)).await,
        Code::ResourceExhausted,
    );
    assert!(
        message.contains("was requested 7 grants today") && message.contains("resets at"),
        "{message}"
    );
    assert_eq!(
        list(&vault, "admin", GrantState::Unspecified).await.len(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_event_is_in_the_trail_naming_the_grant_and_its_parties_the_chain_verifies_and_no_value_is_at_rest(
) {
    let vault = TestVault::start().await;
    let tokens = addresses(&vault, 2).await;
    let id = approved(&vault, 5).await;
    let mut fulfilment = vault.client("fulfilment").await;
    reveal(&mut fulfilment, &id, &tokens).await.unwrap();
    refused(
        reveal(&mut fulfilment, &id, &vec![tokens[0].clone(); 4]).await,
        Code::FailedPrecondition,
    );
    let rejected = request(&vault, "fulfilment", ask(5, 60)).await;
    grants(&vault, "approver1")
        .await
        .reject_grant(pb::RejectGrantRequest {
            grant_id: rejected.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    grants(&vault, "approver1")
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: id.clone(),
            reason: "done".into(),
        })
        .await
        .unwrap();

    get(&vault, "approver2", &id).await;

    let all = events(&vault.config.audit_log);
    let of = |action: &str, grant: &str| -> Vec<&Value> {
        all.iter()
            .filter(|e| e["action"] == action && e["details"]["grant"] == grant)
            .collect()
    };
    let requested = of("grant.request", &id);
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["caller"], spiffe_id("fulfilment"));
    assert_eq!(
        requested[0]["details"]["grant_requested_by"],
        spiffe_id("fulfilment")
    );
    assert_eq!(
        requested[0]["details"]["grant_reason"],
        "labels for batch TEST-7"
    );
    let approvals = of("grant.approve", &id);
    assert_eq!(approvals.len(), 2);
    assert_eq!(
        approvals[1]["details"]["grant_approvers"],
        serde_json::json!([spiffe_id("approver1"), spiffe_id("approver2")])
    );
    assert_eq!(approvals[1]["details"]["grant_state"], "active");
    let used = of("detokenize", &id);
    assert_eq!(used.len(), 2, "the reveal and the refusal");
    assert_eq!(used[0]["decision"], "allowed");
    assert_eq!(used[0]["details"]["grant_units"], 2);
    assert_eq!(used[0]["details"]["grant_used"], 2);
    assert_eq!(
        used[0]["details"]["grant_requested_by"],
        spiffe_id("fulfilment")
    );
    assert_eq!(
        used[0]["details"]["grant_approvers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(used[1]["code"], "failed_precondition");
    assert!(used[1]["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["outcome"] != "full"));
    assert_eq!(
        of("grant.reject", &rejected)[0]["details"]["grant_state"],
        "rejected"
    );
    let revoked = of("grant.revoke", &id);
    assert_eq!(revoked[0]["caller"], spiffe_id("approver1"));
    assert_eq!(revoked[0]["details"]["grant_state"], "revoked");
    assert!(!of("grant.get", &id).is_empty());

    // The chain verifies.
    let key = keyfile::load(&vault.config.audit_log, &master_of(&vault)).unwrap();
    let files = trail::files_of(&vault.config.audit_log).unwrap();
    verify::verify_files(&key, &files).unwrap_or_else(|e| panic!("the trail broke: {e}"));
    // No address is at rest anywhere (store, trail).
    for needle in ["Example Street", "Springfield"] {
        let hits = files_containing(vault.tmp.path(), needle);
        assert!(hits.is_empty(), "{needle} found in {hits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_of_one_grant_both_count_once_each() {
    let vault = TestVault::start().await;
    for _ in 0..5 {
        let id = request(&vault, "fulfilment", ask(5, 3600)).await;
        let started = Instant::now();
        let (a, b) = tokio::join!(
            approve(&vault, "approver1", &id),
            approve(&vault, "approver2", &id)
        );
        a.unwrap();
        b.unwrap();
        let g = get(&vault, "fulfilment", &id).await;
        assert_eq!(
            (g.state(), g.approvals.len()),
            (GrantState::Active, 2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_freezes_a_workflow_even_when_the_grant_it_names_is_unusable() {
    let vault = TestVault::start().await;
    let mut admin = fieldvault::grpc::pb::admin_client::AdminClient::new(
        channel(&vault.addr(), &vault.pki.client_tls("admin")).await,
    );
    let canary = admin
        .create_canaries(pb::CreateCanariesRequest {
            kind: FieldKind::Address as i32,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let mut fulfilment = vault.client("fulfilment").await;
    let unknown = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
    let message = refused(
        reveal(&mut fulfilment, unknown, &canary).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("frozen"), "{message}");
    // Frozen: refused whatever it asks next.
    let message = refused(
        grants(&vault, "fulfilment")
            .await
            .request_grant(ask(5, 60))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("frozen"), "{message}");
}
