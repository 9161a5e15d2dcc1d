//! The vault over a real sled store whose checkpoint is made to fail after
//! a batch's log sync (a test-only fault of the store's writer).

use super::test_support::{caller, ok, vault_over};
use super::*;
use crate::domain::value::FieldInput;
use crate::store::{SledConfig, SledStore, DEFAULT_MAX_QUEUED_WRITES};
use std::path::Path;

/// A vault over the store in `dir`, and the store. The same process
/// reopens a store it just closed: sled's background flusher may hold the
/// store's lock for a moment after the last handle is dropped (seen once
/// in CI under load), so the lock is waited for, within a bound. Across
/// processes (a server restart) the old process is gone first.
async fn vault(dir: &Path, master: &MasterKey) -> (Vault, Arc<SledStore>) {
    let config = SledConfig {
        path: dir.join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let store = loop {
        match SledStore::reopen_in_test(&config) {
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => break Arc::new(ok(other)),
        }
    };
    (vault_over(store.clone(), dir, master).await, store)
}

#[tokio::test]
async fn a_batch_whose_checkpoint_fails_after_its_log_sync_gets_its_tokens_and_they_detokenize_after_a_restart(
) {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let phones = ["+1 202-555-0111", "+1 202-555-0122"];
    let tokens: Vec<String> = {
        let (vault, store) = vault(dir.path(), &master).await;
        // The first ids log the sequence's first ceiling: take them before
        // the fault is armed, so it hits the batch's own group.
        ok(store.allocate(1).await);
        store.fail_next_checkpoint(5); // EIO
        let items = phones
            .iter()
            .map(|p| Ok(FieldInput::simple(FieldKind::Phone, p)))
            .collect();
        let got = ok(vault.tokenize(&caller("orders"), None, items).await);
        let tokens = got
            .into_iter()
            .map(|t| t.map(|t| t.to_string()))
            .collect::<Result<Vec<_>, _>>();
        let tokens = tokens.unwrap_or_else(|e| panic!("a durable batch got {e:?}"));
        // Later writes are refused, saying why, and health would say so.
        let later = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0133"))];
        match vault.tokenize(&caller("orders"), None, later).await {
            Err(VaultError::Unavailable(msg)) => {
                assert!(msg.contains("I/O error (os error 5)"), "{msg}");
                assert!(!msg.contains("555"), "{msg}");
            }
            other => panic!("a write after the failure got {other:?}"),
        }
        assert!(vault.storage_failure().is_some());
        tokens
    };
    // Closed (the vault and the store are dropped, the commit thread
    // joined). sled flushes its own trees on drop, so the tokens coming
    // back would prove nothing about the log: what must hold is that no
    // checkpoint ran after the failure, so the log still holds the batch's
    // frame (format 2: a 24-byte header, then a frame starting "FVfr").
    let wal = ok(std::fs::read(
        dir.path().join("store").join("fieldvault.wal"),
    ));
    assert!(
        wal.len() > 24 + 28 && wal.get(24..28) == Some(&b"FVfr"[..]),
        "the log was emptied after the failure ({} bytes)",
        wal.len()
    );
    // The restart replays the log.
    let (vault, store) = vault(dir.path(), &master).await;
    assert!(vault.storage_failure().is_none());
    let got = ok(vault
        .detokenize(&caller("support"), "callback", "", tokens)
        .await);
    let values: Vec<String> = got
        .iter()
        .map(|r| match r {
            Ok(revealed) => revealed.value.expose().to_owned(),
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(values, vec!["+12025550111", "+12025550122"]);
    let report = ok(store.check_integrity().await);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_reveal_behind_a_hung_audit_disk_is_refused_unavailable_and_reveals_nothing() {
    let dir = ok(tempfile::tempdir());
    let master = MasterKey::generate();
    let store: Arc<dyn Store> = Arc::new(ok(SledStore::open(&SledConfig {
        path: dir.path().join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    })));
    let (vault, trail) =
        super::test_support::vault_and_trail(store, dir.path(), &master, Settings::default()).await;
    let items = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0133"))];
    let token = match ok(vault.tokenize(&caller("orders"), None, items).await).pop() {
        Some(Ok(token)) => token.to_string(),
        other => panic!("tokenize: {other:?}"),
    };
    {
        let _hung = trail.stall();
        let refused = vault
            .detokenize(&caller("support"), "callback", "", vec![token.clone()])
            .await;
        assert!(
            matches!(&refused, Err(VaultError::Unavailable(m)) if m.contains("audit")),
            "{refused:?}"
        );
        assert!(vault.audit_failure().is_some());
        // While the trail refuses events, a tokenize stores nothing.
        let items = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0134"))];
        let refused = vault.tokenize(&caller("orders"), None, items).await;
        assert!(
            matches!(&refused, Err(VaultError::Unavailable(_))),
            "{refused:?}"
        );
    }
    // It recovers by itself once the disk answers.
    for _ in 0..50 {
        if vault.audit_failure().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let revealed = ok(vault
        .detokenize(&caller("support"), "callback", "", vec![token])
        .await);
    assert!(revealed[0].is_ok());
}
