//! Tokens at the vault: a token the token key did not make is answered
//! without reading the store. The store here is a real sled store behind a
//! wrapper that counts the record ids the vault asks it for.

use super::test_support::{caller, ok, vault_over};
use super::*;
use crate::crypto::{BlindIndex, WrappedKey};
use crate::domain::value::FieldInput;
use crate::store::{IntegrityReport, RecordRead, SledConfig, SledStore, DEFAULT_MAX_QUEUED_WRITES};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A sled store that counts the record ids read through it.
struct Counting {
    inner: SledStore,
    ids_read: AtomicUsize,
    /// A freeze that lands while the next read of records runs (as an
    /// operator's or a parallel call's would).
    freeze_during_read: std::sync::Mutex<Option<crate::store::Freeze>>,
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        self.inner.keys().await
    }
    async fn is_unused(&self) -> Result<bool, StoreError> {
        self.inner.is_unused().await
    }
    async fn insert_keys(&self, keys: Vec<WrappedKey>) -> Result<(), StoreError> {
        self.inner.insert_keys(keys).await
    }
    async fn allocate(&self, n: usize) -> Result<Vec<RecordId>, StoreError> {
        self.inner.allocate(n).await
    }
    fn knows_epoch(&self, epoch: u64) -> bool {
        self.inner.knows_epoch(epoch)
    }
    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<RecordId>, StoreError> {
        self.inner.insert_records(records).await
    }
    fn failure(&self) -> Option<StorageFailure> {
        self.inner.failure()
    }
    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        self.inner.check_integrity().await
    }
    async fn records_by_index(&self, index: BlindIndex) -> Result<Vec<RecordId>, StoreError> {
        self.inner.records_by_index(index).await
    }
    async fn delete_records(
        &self,
        deletions: Vec<crate::store::Deletion>,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.delete_records(deletions).await
    }
    async fn expired_records(
        &self,
        now_unix_ms: u64,
        after: Option<(u64, RecordId)>,
        limit: usize,
    ) -> Result<Vec<(u64, RecordId)>, StoreError> {
        self.inner.expired_records(now_unix_ms, after, limit).await
    }
    async fn get_records(&self, ids: Vec<RecordId>) -> Result<Vec<RecordRead>, StoreError> {
        self.ids_read.fetch_add(ids.len(), Ordering::SeqCst);
        let freeze = self
            .freeze_during_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(freeze) = freeze {
            ok(self.inner.freeze(freeze).await);
        }
        self.inner.get_records(ids).await
    }
    fn key_usage(&self) -> crate::store::KeyUsage {
        self.inner.key_usage()
    }
    async fn key_catalog(&self) -> Result<crate::store::KeyCatalog, StoreError> {
        self.inner.key_catalog().await
    }
    async fn change_keys(&self, change: crate::store::KeyChange) -> Result<(), StoreError> {
        self.inner.change_keys(change).await
    }
    async fn scan_records(
        &self,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, RecordRead)>, StoreError> {
        self.inner.scan_records(after, limit).await
    }
    async fn charge(
        &self,
        charges: Vec<crate::store::Charge>,
    ) -> Result<crate::store::Charged, StoreError> {
        self.inner.charge(charges).await
    }
    async fn reset_counters(&self, counters: Vec<String>) -> Result<(), StoreError> {
        self.inner.reset_counters(counters).await
    }
    async fn counters(&self) -> Result<Vec<crate::store::CounterValue>, StoreError> {
        self.inner.counters().await
    }
    async fn counter(&self, name: &str) -> Result<Option<crate::store::CounterValue>, StoreError> {
        self.inner.counter(name).await
    }
    async fn put_grant(
        &self,
        grant: crate::domain::grant::Grant,
        expect: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.inner.put_grant(grant, expect).await
    }
    async fn grant(
        &self,
        id: crate::domain::grant::GrantId,
    ) -> Result<Option<crate::domain::grant::Grant>, StoreError> {
        self.inner.grant(id).await
    }
    async fn grants(&self) -> Result<Vec<crate::domain::grant::Grant>, StoreError> {
        self.inner.grants().await
    }
    async fn freeze(
        &self,
        freeze: crate::store::Freeze,
    ) -> Result<Option<crate::store::Freeze>, StoreError> {
        self.inner.freeze(freeze).await
    }
    async fn unfreeze(&self, caller: &str) -> Result<Option<crate::store::Freeze>, StoreError> {
        self.inner.unfreeze(caller).await
    }
    async fn frozen(&self, caller: &str) -> Result<Option<crate::store::Freeze>, StoreError> {
        self.inner.frozen(caller).await
    }
    async fn freezes(&self) -> Result<Vec<crate::store::Freeze>, StoreError> {
        self.inner.freezes().await
    }
    async fn add_canaries(&self, canaries: Vec<crate::store::Canary>) -> Result<(), StoreError> {
        self.inner.add_canaries(canaries).await
    }
    async fn canaries_of(
        &self,
        ids: Vec<RecordId>,
    ) -> Result<Vec<Option<crate::store::Canary>>, StoreError> {
        self.inner.canaries_of(ids).await
    }
    async fn canaries(&self) -> Result<Vec<crate::store::Canary>, StoreError> {
        self.inner.canaries().await
    }
    async fn snapshot(&self) -> Result<crate::store::Snapshot, StoreError> {
        self.inner.snapshot().await
    }
    async fn rewrite_records(
        &self,
        rewrites: Vec<crate::store::Rewrite>,
        job: Option<(crate::store::Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.rewrite_records(rewrites, job).await
    }
    async fn scan_index(
        &self,
        version: crate::crypto::KeyVersion,
        after: Option<crate::store::IndexEntry>,
        limit: usize,
    ) -> Result<Vec<crate::store::IndexEntry>, StoreError> {
        self.inner.scan_index(version, after, limit).await
    }
    async fn reindex(
        &self,
        moves: Vec<crate::store::Reindex>,
        job: Option<(crate::store::Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.reindex(moves, job).await
    }
    async fn job_state(&self, job: crate::store::Job) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.job_state(job).await
    }
    async fn job_progress(
        &self,
        job: crate::store::Job,
    ) -> Result<(Option<Vec<u8>>, crate::store::KeyUsage), StoreError> {
        self.inner.job_progress(job).await
    }
    async fn set_job_state(
        &self,
        job: crate::store::Job,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner.set_job_state(job, state).await
    }
}

#[tokio::test]
async fn a_flipped_bit_anywhere_in_a_token_is_not_found_without_a_store_read() {
    let dir = ok(tempfile::tempdir());
    let store = Arc::new(Counting {
        inner: ok(SledStore::open(&SledConfig {
            path: dir.path().join("store"),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
        })),
        ids_read: AtomicUsize::new(0),
        freeze_during_read: Default::default(),
    });
    let master = MasterKey::generate();
    let vault = vault_over(store.clone(), dir.path(), &master).await;
    let audit_path = dir.path().join("audit.log");
    let items = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0164"))];
    let token = match ok(vault.tokenize(&caller("orders"), None, items).await).pop() {
        Some(Ok(token)) => token,
        other => panic!("tokenize: {other:?}"),
    };

    // Every one-bit change of the token's 128 bits, in one call.
    let flipped: Vec<String> = (0..128)
        .map(|bit| {
            let mut bytes = *token.as_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            TokenId::from_bytes(bytes).to_string()
        })
        .collect();
    let got = ok(vault
        .detokenize(&caller("support"), "callback", "", flipped.clone())
        .await);
    assert_eq!(got.len(), 128);
    for (bit, outcome) in got.iter().enumerate() {
        assert!(
            matches!(outcome, Err(ItemError::NotFound)),
            "bit {bit}: {outcome:?}"
        );
    }
    assert_eq!(
        store.ids_read.load(Ordering::SeqCst),
        0,
        "a token the key did not make was looked up"
    );
    // The audit trail says which tokens the key did not make.
    let log = ok(std::fs::read_to_string(&audit_path));
    let event: serde_json::Value = ok(serde_json::from_str(log.lines().last().unwrap_or("")));
    let items = event["event"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 128);
    for (item, token) in items.iter().zip(&flipped) {
        assert_eq!(item["outcome"], "not_issued");
        assert_eq!(item["token"], token.as_str());
    }

    // The token itself is one read, and reveals its value.
    let got = ok(vault
        .detokenize(&caller("support"), "callback", "", vec![token.to_string()])
        .await);
    match &got[..] {
        [Ok(revealed)] => assert_eq!(revealed.value.expose(), "+12025550164"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.ids_read.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_store_with_records_but_no_keys_is_refused_not_given_new_keys() {
    let dir = ok(tempfile::tempdir());
    let config = SledConfig {
        path: dir.path().join("store"),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
    };
    let master = MasterKey::generate();
    {
        let store = Arc::new(ok(SledStore::reopen_in_test(&config)));
        assert!(ok(store.is_unused().await));
        let vault = vault_over(store, dir.path(), &master).await;
        let items = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0165"))];
        assert!(ok(vault.tokenize(&caller("orders"), None, items).await)[0].is_ok());
    }
    // The keys are lost (damage, a bad repair, a partial restore).
    {
        let db = ok(sled::Config::new().path(&config.path).open());
        ok(ok(db.open_tree("keys")).clear());
        ok(db.flush());
    }
    let store = ok(SledStore::reopen_in_test(&config));
    assert!(!ok(store.is_unused().await));
    let refused = open_keyring(&store, &master).await;
    assert!(
        matches!(refused, Err(KeyringSetupError::KeysMissing)),
        "{refused:?}"
    );
    assert!(ok(store.keys().await).is_empty(), "no key was made");
    // At start, the message says what is wrong, and does not send the
    // operator after the master key, which is not involved.
    let message = crate::app::StartError::Keyring(KeyringSetupError::KeysMissing).to_string();
    assert!(
        message.contains("restore the store from a backup"),
        "{message}"
    );
    assert!(!message.contains("master key"), "{message}");
    let wrong_key =
        crate::app::StartError::Keyring(KeyringSetupError::Crypto(CryptoError::Unwrap(1)))
            .to_string();
    assert!(
        wrong_key.contains("is this the right master key"),
        "{wrong_key}"
    );
}

#[tokio::test]
async fn a_freeze_that_lands_while_a_reveal_runs_stops_it_before_any_value_leaves() {
    let dir = ok(tempfile::tempdir());
    let store = Arc::new(Counting {
        inner: ok(SledStore::open(&SledConfig {
            path: dir.path().join("store"),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: DEFAULT_MAX_QUEUED_WRITES,
        })),
        ids_read: AtomicUsize::new(0),
        freeze_during_read: Default::default(),
    });
    let master = MasterKey::generate();
    let vault = vault_over(store.clone(), dir.path(), &master).await;
    let items = vec![Ok(FieldInput::simple(FieldKind::Phone, "+1 202-555-0165"))];
    let token = match ok(vault.tokenize(&caller("orders"), None, items).await).pop() {
        Some(Ok(token)) => token.to_string(),
        other => panic!("tokenize: {other:?}"),
    };
    // Admitted, then frozen while its records are read.
    *store
        .freeze_during_read
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(crate::store::Freeze {
        caller: caller("support").to_string(),
        since_unix_ms: 1,
        reason: "operator test".into(),
        by: "spiffe://t.example/admin".into(),
    });
    let refused = vault
        .detokenize(&caller("support"), "callback", "", vec![token.clone()])
        .await;
    match refused {
        Err(VaultError::Frozen { reason, .. }) => assert_eq!(reason, "operator test"),
        other => panic!("revealed after the freeze: {other:?}"),
    }
    // The freeze was read mid-call (not at its start).
    assert_eq!(store.ids_read.load(Ordering::SeqCst), 1);
    // Its event says nothing was revealed.
    let trail = ok(std::fs::read_to_string(dir.path().join("audit.log")));
    let last = trail
        .lines()
        .rfind(|l| l.contains("\"action\":\"detokenize\""))
        .unwrap_or_default();
    assert!(
        last.contains("\"decision\":\"denied\"")
            && last.contains("\"outcome\":\"refused\"")
            && !last.contains("\"outcome\":\"full\""),
        "{last}"
    );
}
