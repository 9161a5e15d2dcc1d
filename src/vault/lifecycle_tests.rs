//! The data lifecycle at the vault, over a real sled store: time to live
//! and the sweeper, deletes, erasure and subject access.

use super::test_support::{caller, ok, vault_and_trail, vault_with};
use super::*;
use crate::domain::value::FieldInput;
use crate::domain::{KindRetention, Retention};
use crate::store::{SledConfig, SledStore, DEFAULT_MAX_QUEUED_WRITES};
use std::path::Path;
use std::time::Duration;

const NUMBER: &str = "+1 202-555-0143";

fn sled(dir: &Path) -> Arc<SledStore> {
    Arc::new(ok(SledStore::reopen_in_test(&SledConfig {
        path: dir.join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    })))
}

fn store(dir: &Path) -> Arc<dyn Store> {
    sled(dir)
}

fn settings(phone: TokenMode) -> Settings {
    let mut retention = Retention::default();
    *retention.for_kind_mut(FieldKind::Phone) = KindRetention {
        default_ttl: None,
        max_ttl: Duration::from_secs(3600),
    };
    Settings {
        token_modes: TokenModes {
            phone,
            ..TokenModes::default()
        },
        retention,
        ..Settings::default()
    }
}

fn phone(value: &str, ttl: Option<Duration>) -> FieldInput {
    FieldInput {
        ttl,
        ..FieldInput::simple(FieldKind::Phone, value)
    }
}

async fn tokenize(vault: &Vault, value: &str, ttl: Option<Duration>) -> TokenId {
    let mut got = ok(vault
        .tokenize(&caller("orders"), None, vec![Ok(phone(value, ttl))])
        .await);
    ok(got.remove(0))
}

async fn reveals(vault: &Vault, token: &TokenId) -> bool {
    let got = ok(vault
        .detokenize(&caller("support"), "callback", "", vec![token.to_string()])
        .await);
    match &got[0] {
        Ok(_) => true,
        Err(ItemError::NotFound) => false,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn an_expired_token_is_unknown_at_once_and_the_sweeper_deletes_its_record() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let sled = sled(dir.path());
    let store: Arc<dyn Store> = sled.clone();
    let (vault, trail) = vault_and_trail(
        store.clone(),
        dir.path(),
        &master,
        settings(TokenMode::Random),
    )
    .await;
    let short = tokenize(&vault, NUMBER, Some(Duration::from_millis(1))).await;
    let long = tokenize(&vault, NUMBER, Some(Duration::from_secs(3600))).await;
    let kept = tokenize(&vault, "+1 202-555-0144", None).await;
    let info = ok(vault
        .token_info(&caller("orders"), vec![long.to_string(), kept.to_string()])
        .await);
    let info: Vec<TokenInfo> = info.into_iter().map(ok).collect();
    let created = info[0].created_unix_ms.unwrap_or(0);
    assert!(created > 0);
    assert_eq!(info[0].expires_unix_ms, Some(created + 3_600_000));
    assert_eq!(info[0].mode, Some(TokenMode::Random));
    assert_eq!(info[1].expires_unix_ms, None, "no ttl, no default: never");
    // Past the short one's expiry (no clock is asserted on: this only
    // waits for it).
    while crate::audit::now_unix_ms() <= created {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !reveals(&vault, &short).await,
        "expired: answered as unknown"
    );
    assert!(reveals(&vault, &kept).await && reveals(&vault, &long).await);
    let gone = ok(vault
        .token_info(&caller("orders"), vec![short.to_string()])
        .await);
    assert!(matches!(gone[0], Err(ItemError::NotFound)), "{:?}", gone[0]);
    // The sweeper reads the expiry index, which holds a record once its
    // write is applied.
    sled.wait_applied();
    assert_eq!(ok(vault.sweep_expired().await), 1);
    assert_eq!(ok(vault.sweep_expired().await), 0, "nothing left to sweep");
    assert_eq!(
        ok(store
            .get_records(vec![ok(vault
                .keyring()
                .record_of(&short)
                .ok_or("not ours"))])
            .await)
        .into_iter()
        .map(|r| ok(r).is_some())
        .collect::<Vec<_>>(),
        vec![false]
    );
    let report = ok(store.check_integrity().await);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.records, report.index_entries), (2, 2));
    // The trail says what was swept and what the expired token's reveal
    // was; no value anywhere in it.
    drop(vault);
    drop(trail);
    let log = ok(std::fs::read_to_string(dir.path().join("audit.log")));
    assert!(log.contains("\"action\":\"sweep\""), "{log}");
    assert!(log.contains("\"outcome\":\"expired\""), "{log}");
    assert!(
        !log.contains("555-0143") && !log.contains("2025550143"),
        "{log}"
    );
}

#[tokio::test]
async fn a_time_to_live_of_zero_or_over_the_kinds_maximum_is_refused_naming_ttl() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let vault = vault_with(
        store(dir.path()),
        dir.path(),
        &master,
        settings(TokenMode::Random),
    )
    .await;
    let got = ok(vault
        .tokenize(
            &caller("orders"),
            None,
            vec![
                Ok(phone(NUMBER, Some(Duration::ZERO))),
                Ok(phone(NUMBER, Some(Duration::from_secs(7200)))),
                Ok(phone(NUMBER, Some(Duration::from_secs(3600)))),
            ],
        )
        .await);
    let reason = |r: &Result<TokenId, ItemError>| match r {
        Err(ItemError::InvalidArgument {
            field: Some("ttl"),
            reason,
        }) => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(&got[0]), "must be more than zero");
    assert_eq!(
        reason(&got[1]),
        "2h is more than the 1h this vault keeps phone tokens (retention.phone.max_ttl)"
    );
    assert!(got[2].is_ok());
}

#[tokio::test]
async fn erasing_a_value_deletes_its_tokens_in_both_modes_and_any_format_and_it_gets_a_new_one() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let store = store(dir.path());
    let random = vault_with(
        store.clone(),
        dir.path(),
        &master,
        settings(TokenMode::Random),
    )
    .await;
    let r1 = tokenize(&random, NUMBER, None).await;
    let r2 = tokenize(&random, "+12025550143", Some(Duration::from_secs(60))).await;
    let other = tokenize(&random, "+1 202-555-0149", None).await;
    drop(random);
    let vault = vault_with(
        store.clone(),
        dir.path(),
        &master,
        settings(TokenMode::Deterministic),
    )
    .await;
    let d1 = tokenize(&vault, "+1 (202) 555-0143", None).await;
    assert_eq!(tokenize(&vault, NUMBER, None).await, d1, "deterministic");

    // Subject access first: exactly the value's tokens.
    let exported = ok(vault
        .export_value(
            &caller("privacy"),
            "dsar",
            Ok(FieldInput {
                region: Some("US".into()),
                ..phone("202.555.0143", None)
            }),
        )
        .await);
    let mut tokens: Vec<TokenId> = exported.iter().map(|i| i.token).collect();
    let mut expected = vec![r1, r2, d1];
    tokens.sort_by_key(ToString::to_string);
    expected.sort_by_key(ToString::to_string);
    assert_eq!(tokens, expected);
    assert!(exported.iter().all(|i| i.kind == FieldKind::Phone));
    let modes: Vec<Option<TokenMode>> = exported
        .iter()
        .filter(|i| i.token == d1 || i.token == r1)
        .map(|i| i.mode)
        .collect();
    assert!(
        modes.contains(&Some(TokenMode::Deterministic)) && modes.contains(&Some(TokenMode::Random))
    );
    assert!(exported
        .iter()
        .any(|i| i.token == r2 && i.expires_unix_ms.is_some()));

    // A caller without the action is refused, whatever it asks.
    for refused in [
        vault
            .export_value(&caller("orders"), "dsar", Ok(phone(NUMBER, None)))
            .await
            .err(),
        vault
            .export_value(&caller("privacy"), "marketing", Ok(phone(NUMBER, None)))
            .await
            .err(),
        vault
            .erase_value(&caller("orders"), Ok(phone(NUMBER, None)))
            .await
            .err(),
    ] {
        assert!(
            matches!(refused, Some(VaultError::PermissionDenied(_))),
            "{refused:?}"
        );
    }
    // A malformed value: the same validation as Tokenize, naming the field.
    let bad = vault
        .erase_value(&caller("privacy"), Ok(phone("not a number", None)))
        .await
        .err();
    assert!(
        matches!(
            bad,
            Some(VaultError::InvalidArgument {
                field: "field.value",
                ..
            })
        ),
        "{bad:?}"
    );

    let mut erased = ok(vault
        .erase_value(
            &caller("privacy"),
            Ok(FieldInput {
                region: Some("US".into()),
                ..phone("(202) 555-0143", None)
            }),
        )
        .await);
    erased.sort_by_key(ToString::to_string);
    assert_eq!(erased, expected);
    for t in [&r1, &r2, &d1] {
        assert!(!reveals(&vault, t).await, "{t} erased");
    }
    assert!(reveals(&vault, &other).await, "another value's token stays");
    assert!(ok(vault
        .export_value(&caller("privacy"), "dsar", Ok(phone(NUMBER, None)))
        .await)
    .is_empty());
    assert!(ok(vault
        .erase_value(&caller("privacy"), Ok(phone(NUMBER, None)))
        .await)
    .is_empty());
    let again = tokenize(&vault, NUMBER, None).await;
    assert!(!expected.contains(&again), "a new token after the erasure");
    let report = ok(store.check_integrity().await);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn deleting_tokens_reports_per_item_and_twice_is_harmless() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let store = store(dir.path());
    let vault = vault_with(
        store.clone(),
        dir.path(),
        &master,
        settings(TokenMode::Random),
    )
    .await;
    let a = tokenize(&vault, NUMBER, None).await;
    let b = tokenize(&vault, "+1 202-555-0145", None).await;
    let unused = ok(vault.store.allocate(1).await).remove(0);
    let foreign = TokenId::from_bytes([7; 16]).to_string();
    let got = ok(vault
        .delete_tokens(
            &caller("orders"),
            vec![
                a.to_string(),
                "not a token".into(),
                foreign,
                vault.keyring().token_of(unused).to_string(),
            ],
        )
        .await);
    assert!(matches!(got[0], Ok(FieldKind::Phone)), "{:?}", got[0]);
    assert!(
        matches!(got[1], Err(ItemError::InvalidArgument { .. })),
        "{:?}",
        got[1]
    );
    assert!(matches!(got[2], Err(ItemError::NotFound)), "{:?}", got[2]);
    assert!(matches!(got[3], Err(ItemError::NotFound)), "{:?}", got[3]);
    let twice = ok(vault
        .delete_tokens(&caller("orders"), vec![a.to_string()])
        .await);
    assert!(
        matches!(twice[0], Err(ItemError::NotFound)),
        "{:?}",
        twice[0]
    );
    assert!(!reveals(&vault, &a).await);
    assert!(reveals(&vault, &b).await);
    // Without a delete rule: refused as a call.
    let refused = vault
        .delete_tokens(&caller("support"), vec![b.to_string()])
        .await
        .err();
    assert!(
        matches!(refused, Some(VaultError::PermissionDenied(_))),
        "{refused:?}"
    );
    assert!(reveals(&vault, &b).await);
    let report = ok(store.check_integrity().await);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn one_backup_runs_at_a_time_and_the_next_may_start_once_it_is_dropped() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let vault = vault_with(
        store(dir.path()),
        dir.path(),
        &master,
        settings(TokenMode::Random),
    )
    .await;
    tokenize(&vault, NUMBER, None).await;
    let first = ok(vault.backup(&caller("rotator")).await);
    let second = vault.backup(&caller("rotator")).await.err();
    assert!(
        matches!(&second, Some(VaultError::FailedPrecondition(m)) if m.contains("already running")),
        "{second:?}"
    );
    drop(first);
    let third = ok(vault.backup(&caller("rotator")).await);
    assert_eq!(third.snapshot.records(), 1);
}
