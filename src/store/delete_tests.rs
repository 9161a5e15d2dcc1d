//! Deletes, expiry and the tombstones that keep a deleted record gone.

use super::apply::Deleted;
use super::fixtures::{index, ok, open, record};
use super::layout::{encode_frame, Changes, WAL_FILE};
use super::sled_store::SledStore;
use super::wal::Wal;
use super::{Deletion, NewRecord, Reindex, Rewrite, Store, StoreError};
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, RecordMeta, SealedRecord, WrappedKey};
use crate::domain::{FieldKind, RecordId};

/// A record created at `created` that expires at `expires`.
fn expiring(created: u64, expires: Option<u64>, deterministic: bool) -> SealedRecord {
    SealedRecord {
        meta: Some(RecordMeta {
            created_unix_ms: created,
            expires_unix_ms: expires,
            deterministic,
        }),
        ..record(FieldKind::Phone)
    }
}

fn new(id: RecordId, record: SealedRecord, idx: u8, deterministic: bool) -> NewRecord {
    NewRecord {
        id,
        record,
        index: index(idx),
        deterministic,
        older_indexes: Vec::new(),
    }
}

fn deletion(id: RecordId, indexes: &[BlindIndex]) -> Deletion {
    Deletion {
        id,
        indexes: indexes.to_vec(),
    }
}

async fn ids<const N: usize>(store: &SledStore) -> [RecordId; N] {
    ok(store.allocate(N).await)
        .try_into()
        .unwrap_or_else(|_| panic!("allocate returned another count"))
}

async fn present(store: &SledStore, ids: &[RecordId]) -> Vec<bool> {
    ok(store.get_records(ids.to_vec()).await)
        .into_iter()
        .map(|r| ok(r).is_some())
        .collect()
}

async fn assert_clean(store: &SledStore) {
    let report = ok(store.check_integrity().await);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn usage(entries: &[(KeyPurpose, u32, u64)]) -> super::KeyUsage {
    entries
        .iter()
        .map(|(p, v, n)| ((*p, KeyVersion(*v)), *n))
        .collect()
}

#[tokio::test]
async fn a_deleted_record_loses_its_entries_and_counts_and_stays_deleted_after_a_reopen() {
    let dir = ok(tempfile::tempdir());
    let [a, b, c, d, absent, e];
    {
        let store = open(dir.path());
        [a, b, c, d, absent, e] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, expiring(1, None, false), 1, false),
                new(b, expiring(1, None, false), 1, false),
                new(c, expiring(1, None, true), 2, true),
                new(d, expiring(1, Some(5_000), false), 3, false),
            ])
            .await);
        let deleted = ok(store
            .delete_records(vec![
                deletion(a, &[index(1)]),
                deletion(c, &[index(2)]),
                deletion(d, &[index(3)]),
                deletion(absent, &[index(4)]),
                // Named twice in one call: deleted once.
                deletion(a, &[index(1)]),
            ])
            .await);
        assert_eq!(deleted, vec![true, true, true, false, false]);
        assert_eq!(
            present(&store, &[a, b, c, d]).await,
            vec![false, true, false, false]
        );
        assert_eq!(ok(store.records_by_index(index(1)).await), vec![b]);
        assert!(ok(store.records_by_index(index(2)).await).is_empty());
        assert!(ok(store.expired_records(u64::MAX, None, 10).await).is_empty());
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 7, 1), (KeyPurpose::Index, 1, 1)])
        );
        // Deleting twice is harmless.
        assert_eq!(
            ok(store.delete_records(vec![deletion(a, &[index(1)])]).await),
            vec![false]
        );
        // The value's deterministic mapping went with its record: the
        // value gets a new one.
        assert_eq!(
            ok(store
                .insert_records(vec![new(e, expiring(2, None, true), 2, true)])
                .await),
            vec![e]
        );
        assert_clean(&store).await;
    }
    let store = open(dir.path());
    assert_eq!(
        present(&store, &[a, b, c, d, e]).await,
        vec![false, true, false, false, true]
    );
    assert_eq!(
        store.key_usage(),
        usage(&[(KeyPurpose::Data, 7, 2), (KeyPurpose::Index, 1, 2)])
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn a_logged_delete_that_never_reached_the_trees_is_replayed_on_open() {
    let dir = ok(tempfile::tempdir());
    let [a, b];
    {
        let store = open(dir.path());
        [a, b] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, expiring(1, Some(9_000), false), 1, false),
                new(b, expiring(1, None, true), 2, true),
            ])
            .await);
    }
    // As if the process died after logging the deletion, before applying
    // it: the frame is in the log, the trees still hold both records.
    {
        let (mut wal, frames) = ok(Wal::open(&super::file::RealFs, &dir.path().join(WAL_FILE)));
        assert!(frames.is_empty(), "a clean close leaves an empty log");
        let changes = Changes {
            deleted: vec![
                Deleted {
                    id: a,
                    version: KeyVersion(7),
                    expires_unix_ms: Some(9_000),
                    entries: vec![(index(1), false)],
                },
                Deleted {
                    id: b,
                    version: KeyVersion(7),
                    expires_unix_ms: None,
                    entries: vec![(index(2), true)],
                },
            ],
            ..Changes::default()
        };
        ok(wal.append(&encode_frame(None, &[], &[], &changes)));
    }
    let store = open(dir.path());
    assert_eq!(present(&store, &[a, b]).await, vec![false, false]);
    assert!(ok(store.records_by_index(index(2)).await).is_empty());
    assert!(ok(store.expired_records(u64::MAX, None, 10).await).is_empty());
    assert!(store.key_usage().is_empty(), "{:?}", store.key_usage());
    assert_clean(&store).await;
    drop(store);
    // Replaying it again (another crash before the log was emptied) is
    // harmless: it was applied and the log checkpointed.
    let store = open(dir.path());
    assert_eq!(present(&store, &[a, b]).await, vec![false, false]);
    assert_clean(&store).await;
}

#[tokio::test]
async fn a_rewrite_or_an_index_move_never_brings_a_deleted_record_back() {
    let dir = ok(tempfile::tempdir());
    let store = open(dir.path());
    let [a, b] = ids(&store).await;
    ok(store
        .insert_records(vec![
            new(a, expiring(1, None, false), 1, false),
            new(b, expiring(1, None, true), 2, true),
        ])
        .await);
    ok(store
        .delete_records(vec![deletion(a, &[index(1)]), deletion(b, &[index(2)])])
        .await);
    let resealed = SealedRecord {
        key_version: KeyVersion(8),
        ..expiring(1, None, false)
    };
    let rewrites = vec![Rewrite {
        id: a,
        from: KeyVersion(7),
        record: resealed,
    }];
    assert_eq!(ok(store.rewrite_records(rewrites, None).await), vec![false]);
    let moves = vec![Reindex {
        entry: super::IndexEntry {
            id: b,
            index: index(2),
            deterministic: true,
        },
        new: BlindIndex {
            version: KeyVersion(2),
            mac: [2; 32],
        },
    }];
    assert_eq!(ok(store.reindex(moves, None).await), vec![false]);
    assert_eq!(present(&store, &[a, b]).await, vec![false, false]);
    assert!(store.key_usage().is_empty(), "{:?}", store.key_usage());
    assert_clean(&store).await;
}

#[tokio::test]
async fn an_expired_deterministic_token_gives_way_to_a_new_one_of_its_value() {
    let dir = ok(tempfile::tempdir());
    let store = open(dir.path());
    let [old, same, fresh] = ids(&store).await;
    ok(store
        .insert_records(vec![new(old, expiring(1_000, Some(2_000), true), 5, true)])
        .await);
    // Before it expires the value keeps its token...
    assert_eq!(
        ok(store
            .insert_records(vec![new(same, expiring(1_500, None, true), 5, true)])
            .await),
        vec![old]
    );
    // ...after, the expired record is deleted and the value gets a new one.
    assert_eq!(
        ok(store
            .insert_records(vec![new(fresh, expiring(2_000, None, true), 5, true)])
            .await),
        vec![fresh]
    );
    assert_eq!(present(&store, &[old, fresh]).await, vec![false, true]);
    assert_eq!(ok(store.records_by_index(index(5)).await), vec![fresh]);
    assert_eq!(
        store.key_usage(),
        usage(&[(KeyPurpose::Data, 7, 1), (KeyPurpose::Index, 1, 1)])
    );
    assert_clean(&store).await;
}

#[tokio::test]
async fn expired_records_come_soonest_first_a_page_at_a_time() {
    let dir = ok(tempfile::tempdir());
    let store = open(dir.path());
    let [a, b, c, never] = ids(&store).await;
    ok(store
        .insert_records(vec![
            new(a, expiring(1, Some(300), false), 1, false),
            new(b, expiring(1, Some(100), false), 2, false),
            new(c, expiring(1, Some(200), false), 3, false),
            new(never, expiring(1, None, false), 4, false),
        ])
        .await);
    // The expiry index is read from the trees: what the sweeper sees once
    // the write is applied.
    store.wait_applied();
    assert_eq!(
        ok(store.expired_records(250, None, 10).await),
        vec![(100, b), (200, c)]
    );
    assert_eq!(
        ok(store.expired_records(1_000, None, 1).await),
        vec![(100, b)]
    );
    assert_eq!(
        ok(store.expired_records(1_000, Some((100, b)), 5).await),
        vec![(200, c), (300, a)]
    );
    assert!(ok(store.expired_records(99, None, 5).await).is_empty());
    assert_clean(&store).await;
}

#[tokio::test]
async fn a_deletion_that_does_not_name_every_live_index_version_deletes_nothing() {
    let dir = ok(tempfile::tempdir());
    let store = open(dir.path());
    let key = |version| WrappedKey {
        purpose: KeyPurpose::Index,
        version: KeyVersion(version),
        nonce: [3; crate::crypto::NONCE_LEN],
        ciphertext: vec![4; 48],
    };
    ok(store.insert_keys(vec![key(1), key(2)]).await);
    let [a] = ids(&store).await;
    ok(store
        .insert_records(vec![new(a, expiring(1, None, false), 1, false)])
        .await);
    let refused = store.delete_records(vec![deletion(a, &[index(1)])]).await;
    assert!(
        matches!(refused, Err(StoreError::KeysChanged)),
        "{refused:?}"
    );
    assert_eq!(present(&store, &[a]).await, vec![true]);
    let both = [
        index(1),
        BlindIndex {
            version: KeyVersion(2),
            mac: [1; 32],
        },
    ];
    assert_eq!(
        ok(store.delete_records(vec![deletion(a, &both)]).await),
        vec![true]
    );
    assert_clean(&store).await;
}
