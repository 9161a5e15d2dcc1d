//! Grants at the vault, over a real sled store: which rule a covered item
//! is revealed under, what consumes a unit, and a policy that changes under
//! an active grant.

use super::test_support::{caller, ok, vault_over};
use super::*;
use crate::domain::value::FieldInput;
use crate::store::{SledConfig, SledStore, DEFAULT_MAX_QUEUED_WRITES};
use std::path::Path;
use std::time::Duration;

/// The courier sees addresses masked for shipping by a standing rule, and
/// in full only under a grant an approver approved.
const POLICY: &str = r#"
version = 1

[[rules]]
name = "shop tokenizes"
callers = ["spiffe://t.example/shop"]
action = "tokenize"
kinds = ["address", "phone"]

[[rules]]
name = "courier masked"
callers = ["spiffe://t.example/courier"]
action = "detokenize"
kinds = ["address"]
purposes = ["shipping"]
reveal = "masked"

[[rules]]
name = "courier in full under a grant"
callers = ["spiffe://t.example/courier"]
action = "detokenize"
kinds = ["address"]
purposes = ["shipping"]
reveal = "full"
requires_grant = true
approvers = ["spiffe://t.example/boss"]
"#;

fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(ok(SledStore::reopen_in_test(&SledConfig {
        path: dir.join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    })))
}

async fn vault(dir: &Path) -> Vault {
    let vault = vault_over(store(dir), dir, &MasterKey::generate()).await;
    vault.replace_policy(ok(Policy::from_toml(POLICY)));
    vault
}

async fn tokens(vault: &Vault, n: usize) -> Vec<String> {
    let items = (0..n)
        .map(|i| {
            Ok(FieldInput::simple(
                FieldKind::Address,
                &format!("{i} Example Street, Springfield"),
            ))
        })
        .collect();
    ok(vault.tokenize(&caller("shop"), None, items).await)
        .into_iter()
        .map(|t| ok(t).to_string())
        .collect()
}

fn ask(tokens: Vec<String>) -> GrantRequest {
    GrantRequest {
        caller: String::new(),
        kinds: Ok(vec![FieldKind::Address]),
        purpose: "shipping".into(),
        max_reveals: 5,
        valid_for: Some(Ok(Duration::from_secs(3600))),
        reason: "TEST-1".into(),
        tokens,
    }
}

async fn active(vault: &Vault, tokens: Vec<String>) -> String {
    let g = ok(vault.request_grant(&caller("courier"), ask(tokens)).await);
    let id = g.grant.id.to_string();
    let g = ok(vault.approve_grant(&caller("boss"), &id).await);
    assert_eq!(g.state, crate::domain::grant::GrantState::Active);
    id
}

async fn levels(vault: &Vault, grant: &str, tokens: &[String]) -> Vec<Option<RevealLevel>> {
    ok(vault
        .detokenize_under_grant(&caller("courier"), "shipping", "", grant, tokens.to_vec())
        .await)
    .into_iter()
    .map(|r| r.ok().map(|v| v.reveal))
    .collect()
}

async fn used(vault: &Vault, id: &str) -> u64 {
    ok(vault.get_grant(&caller("courier"), id).await).used
}

#[tokio::test]
async fn a_grant_lifts_a_covered_item_to_its_rule_and_counts_only_what_that_rule_reveals() {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let t = tokens(&vault, 3).await;
    // Without a grant the standing rule decides: masked, nothing counted.
    assert_eq!(
        levels(&vault, "", &t).await,
        vec![Some(RevealLevel::Masked); 3]
    );
    // Under a grant for the first two tokens: those in full (one unit
    // each), the third by the standing rule, masked, for free.
    let id = active(&vault, t[..2].to_vec()).await;
    assert_eq!(
        levels(&vault, &id, &t).await,
        vec![
            Some(RevealLevel::Full),
            Some(RevealLevel::Full),
            Some(RevealLevel::Masked)
        ]
    );
    assert_eq!(used(&vault, &id).await, 2);
    // A token the vault never issued, or one deleted, consumes nothing.
    let unknown = "fv1_AAAAAAAAAAAAAAAAAAAAAA".to_owned();
    assert_eq!(levels(&vault, &id, &[unknown]).await, vec![None]);
    assert_eq!(used(&vault, &id).await, 2);
}

#[tokio::test]
async fn a_policy_that_drops_the_grant_rule_stops_reveals_under_an_active_grant_at_the_next_call() {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let t = tokens(&vault, 1).await;
    let id = active(&vault, Vec::new()).await;
    assert_eq!(levels(&vault, &id, &t).await, vec![Some(RevealLevel::Full)]);
    // The grant rule is gone: a call naming the grant is refused whole
    // (the caller has no rule that requires a grant), and the grant is not
    // charged; without it the standing rule decides.
    let without = POLICY
        .split("[[rules]]")
        .filter(|r| !r.contains("requires_grant"))
        .collect::<Vec<_>>()
        .join("[[rules]]");
    vault.replace_policy(ok(Policy::from_toml(&without)));
    assert!(matches!(
        vault
            .detokenize_under_grant(&caller("courier"), "shipping", "", &id, t.clone())
            .await,
        Err(VaultError::PermissionDenied(_))
    ));
    assert_eq!(
        levels(&vault, "", &t).await,
        vec![Some(RevealLevel::Masked)]
    );
    assert_eq!(used(&vault, &id).await, 1);
}

#[tokio::test]
async fn an_approver_a_rule_names_is_the_only_one_who_approves_and_a_grants_rule_is_needed_to_act_for_others(
) {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let g = ok(vault
        .request_grant(&caller("courier"), ask(Vec::new()))
        .await);
    let id = g.grant.id.to_string();
    assert_eq!(g.grant.approvals_required, 1);
    // The shop is none of its parties: to it the grant does not exist.
    assert!(matches!(
        vault.approve_grant(&caller("shop"), &id).await,
        Err(VaultError::NotFound(_))
    ));
    assert!(matches!(
        vault.approve_grant(&caller("courier"), &id).await,
        Err(VaultError::PermissionDenied(_))
    ));
    // The shop may not request for the courier (no grants rule).
    let mut r = ask(Vec::new());
    r.caller = "spiffe://t.example/courier".into();
    assert!(matches!(
        vault.request_grant(&caller("shop"), r).await,
        Err(VaultError::PermissionDenied(_))
    ));
    // Phones are under no grant rule of the courier's.
    let mut r = ask(Vec::new());
    r.kinds = Ok(vec![FieldKind::Phone]);
    assert!(matches!(
        vault.request_grant(&caller("courier"), r).await,
        Err(VaultError::InvalidArgument { field: "kinds", .. })
    ));
}

#[tokio::test]
async fn a_grant_opens_only_its_own_rule_and_an_approver_taken_off_the_rule_approves_no_more() {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let t = tokens(&vault, 1).await;
    // Requested under the grant rule; then the rule loses its approver.
    let pending = ok(vault
        .request_grant(&caller("courier"), ask(Vec::new()))
        .await);
    let pending = pending.grant.id.to_string();
    let id = active(&vault, Vec::new()).await;
    let moved = POLICY.replace(
        r#"approvers = ["spiffe://t.example/boss"]"#,
        r#"approvers = ["spiffe://t.example/deputy"]"#,
    );
    vault.replace_policy(ok(Policy::from_toml(&moved)));
    assert!(matches!(
        vault.approve_grant(&caller("boss"), &pending).await,
        Err(VaultError::PermissionDenied(_))
    ));
    // The deputy was not an approver when the grant was requested: it is
    // none of the grant's parties, and the grant is unknown to it.
    assert!(matches!(
        vault.approve_grant(&caller("deputy"), &pending).await,
        Err(VaultError::NotFound(_))
    ));
    // A second rule that requires a grant, added later, is not opened by
    // a grant approved under the first: the active grant still reveals
    // under its own rule.
    let wider = format!(
        "{POLICY}\n[[rules]]\nname = \"courier phones under a grant\"\ncallers = \
         [\"spiffe://t.example/courier\"]\naction = \"detokenize\"\nkinds = [\"address\"]\n\
         purposes = [\"shipping\"]\nreveal = \"full\"\nrequires_grant = true\napprovers = \
         [\"spiffe://t.example/deputy\"]\n"
    );
    vault.replace_policy(ok(Policy::from_toml(&wider)));
    let revealed = ok(vault
        .detokenize_under_grant(&caller("courier"), "shipping", "", &id, t.clone())
        .await);
    let rules = ok(vault.get_grant(&caller("courier"), &id).await)
        .grant
        .rule;
    assert_eq!(rules, "courier in full under a grant");
    assert!(revealed[0].is_ok());
    let without_own = wider
        .split("[[rules]]")
        .filter(|r| !r.contains("\"courier in full under a grant\""))
        .collect::<Vec<_>>()
        .join("[[rules]]");
    vault.replace_policy(ok(Policy::from_toml(&without_own)));
    // Its own rule gone: the standing rule decides (masked), the other
    // grant rule does not count.
    assert_eq!(
        levels(&vault, &id, &t).await,
        vec![Some(RevealLevel::Masked)]
    );
}

#[tokio::test]
async fn only_approvals_the_policy_in_force_allows_count_and_a_stricter_rule_binds_pending_grants()
{
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let three = |approvals: u32, approvers: &str| {
        POLICY.replace(
            r#"approvers = ["spiffe://t.example/boss"]"#,
            &format!("approvals = {approvals}\napprovers = [{approvers}]"),
        )
    };
    let all =
        r#""spiffe://t.example/boss", "spiffe://t.example/chief", "spiffe://t.example/deputy""#;
    vault.replace_policy(ok(Policy::from_toml(&three(2, all))));
    let id = ok(vault
        .request_grant(&caller("courier"), ask(Vec::new()))
        .await)
    .grant
    .id
    .to_string();
    ok(vault.approve_grant(&caller("boss"), &id).await);
    // The boss is taken off the rule: its approval no longer counts.
    let without_boss = r#""spiffe://t.example/chief", "spiffe://t.example/deputy""#;
    vault.replace_policy(ok(Policy::from_toml(&three(2, without_boss))));
    let g = ok(vault.approve_grant(&caller("chief"), &id).await);
    assert_eq!(g.state, crate::domain::grant::GrantState::Pending);
    assert_eq!(g.grant.approvals.len(), 1);
    // The rule now asks three of its three approvers.
    vault.replace_policy(ok(Policy::from_toml(&three(3, all))));
    let g = ok(vault.approve_grant(&caller("deputy"), &id).await);
    assert_eq!(
        (g.state, g.grant.approvals_required),
        (crate::domain::grant::GrantState::Pending, 3)
    );
    let g = ok(vault.approve_grant(&caller("boss"), &id).await);
    assert_eq!(g.state, crate::domain::grant::GrantState::Active);
}

#[tokio::test]
async fn a_rule_edited_to_reveal_more_does_not_widen_a_grant_approved_before() {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let t = tokens(&vault, 1).await;
    let masked = POLICY.replace(
        "reveal = \"full\"\nrequires_grant = true",
        "reveal = \"masked\"\nrequires_grant = true",
    );
    vault.replace_policy(ok(Policy::from_toml(&masked)));
    let id = active(&vault, Vec::new()).await;
    assert_eq!(
        levels(&vault, &id, &t).await,
        vec![Some(RevealLevel::Masked)]
    );
    // The same rule now reveals in full: this grant still reveals masked.
    vault.replace_policy(ok(Policy::from_toml(POLICY)));
    assert_eq!(
        levels(&vault, &id, &t).await,
        vec![Some(RevealLevel::Masked)]
    );
    // The first reveal was the standing rule's (as revealing, and first in
    // the file): free; the second the grant rule's, capped: one unit.
    assert_eq!(used(&vault, &id).await, 1);
}

#[tokio::test]
async fn a_grant_approved_while_its_rule_revealed_less_never_reveals_more_later() {
    let dir = ok(tempfile::tempdir());
    let vault = vault(dir.path()).await;
    let t = tokens(&vault, 1).await;
    // Requested while the rule reveals in full, approved once it reveals
    // masked, then the rule is put back to full.
    let g = ok(vault
        .request_grant(&caller("courier"), ask(Vec::new()))
        .await);
    assert_eq!(g.grant.reveal, RevealLevel::Full);
    let id = g.grant.id.to_string();
    let masked = POLICY.replace(
        "reveal = \"full\"\nrequires_grant = true",
        "reveal = \"masked\"\nrequires_grant = true",
    );
    vault.replace_policy(ok(Policy::from_toml(&masked)));
    let g = ok(vault.approve_grant(&caller("boss"), &id).await);
    assert_eq!(g.grant.reveal, RevealLevel::Masked);
    vault.replace_policy(ok(Policy::from_toml(POLICY)));
    assert_eq!(
        levels(&vault, &id, &t).await,
        vec![Some(RevealLevel::Masked)]
    );
}
