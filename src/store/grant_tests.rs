//! Grants in the store: compare-and-set on their revision, durable through
//! the write-ahead log like every `meta` write, and checked by the
//! integrity check.

use super::fixtures::{ok, open};
use super::grant_layout::{encode_grant, grant_key};
use super::layout::{encode_frame, Changes, MetaOp, WAL_FILE};
use super::wal::Wal;
use super::{Charge, Charged, Store, StoreError};
use crate::domain::grant::{Approval, Decided, Grant, GrantId};
use crate::domain::{FieldKind, Purpose};

fn grant() -> Grant {
    Grant {
        id: GrantId::new(),
        revision: 0,
        caller: "spiffe://fieldvault.dev/fulfilment".into(),
        requested_by: "spiffe://fieldvault.dev/fulfilment".into(),
        kinds: vec![FieldKind::Address],
        purpose: ok(Purpose::parse("shipping")),
        max_reveals: 10,
        created_unix_ms: 1_000,
        expires_unix_ms: 9_000,
        reason: "batch TEST-1".into(),
        tokens: Vec::new(),
        rule: "fulfilment".into(),
        reveal: crate::domain::policy::RevealLevel::Full,
        approvals_required: 1,
        approvers: vec!["spiffe://fieldvault.dev/approver1".into()],
        approvals: Vec::new(),
        decided: Decided::Pending,
    }
}

fn approved(mut g: Grant) -> Grant {
    g.approvals.push(Approval {
        by: "spiffe://fieldvault.dev/approver1".into(),
        at_unix_ms: 2_000,
    });
    g.decided = Decided::Active {
        since_unix_ms: 2_000,
    };
    g
}

#[tokio::test]
async fn a_grant_changes_only_from_the_revision_it_was_read_at_and_keeps_its_last_change_after_a_reopen(
) {
    let dir = ok(tempfile::tempdir());
    let g = grant();
    {
        let store = open(dir.path());
        assert!(ok(store.put_grant(g.clone(), None).await));
        let stored = ok(store.grant(g.id).await).unwrap_or_else(|| panic!("stored"));
        assert_eq!(stored.revision, 1);
        // Its id is taken.
        assert!(matches!(
            store.put_grant(g.clone(), None).await,
            Err(StoreError::AlreadyExists("grant"))
        ));
        // Two changes read at revision 1: the first wins, the second
        // changes nothing.
        assert!(ok(store.put_grant(approved(g.clone()), Some(1)).await));
        let mut other = g.clone();
        other.decided = Decided::Rejected(crate::domain::grant::Ended {
            by: "spiffe://fieldvault.dev/approver1".into(),
            at_unix_ms: 2_001,
            reason: String::new(),
        });
        assert!(!ok(store.put_grant(other, Some(1)).await));
        // An absent grant is no revision.
        assert!(!ok(store.put_grant(grant(), Some(1)).await));
        assert_eq!(ok(store.grants().await).len(), 1);
    }
    let store = open(dir.path());
    let stored = ok(store.grant(g.id).await).unwrap_or_else(|| panic!("stored"));
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.decided, approved(g.clone()).decided);
    assert_eq!(stored.approvals.len(), 1);
    assert!(ok(store.grant(GrantId::new()).await).is_none());
    assert!(ok(store.check_integrity().await).problems.is_empty());
}

#[tokio::test]
async fn a_logged_grant_change_that_never_reached_the_tree_is_replayed_on_open() {
    let dir = ok(tempfile::tempdir());
    let g = grant();
    {
        let store = open(dir.path());
        assert!(ok(store.put_grant(g.clone(), None).await));
    }
    // As if the process died after logging the approval, before `meta`
    // had it on disk: the frame is in the log only.
    {
        let (mut wal, frames) = ok(Wal::open(&super::file::RealFs, &dir.path().join(WAL_FILE)));
        assert!(frames.is_empty(), "a clean close leaves an empty log");
        let mut active = approved(g.clone());
        active.revision = 2;
        let changes = Changes {
            meta: vec![MetaOp {
                key: grant_key(g.id),
                value: Some(encode_grant(&active)),
            }],
            ..Changes::default()
        };
        ok(wal.append(&encode_frame(None, &[], &[], &changes)));
    }
    let store = open(dir.path());
    let stored = ok(store.grant(g.id).await).unwrap_or_else(|| panic!("stored"));
    assert_eq!((stored.revision, stored.decided), (2, approved(g).decided));
}

#[tokio::test]
async fn a_grants_use_never_passes_its_limit_and_reads_back_as_one_counter() {
    let dir = ok(tempfile::tempdir());
    let store = open(dir.path());
    let charge = |amount| Charge {
        counter: "g\u{1f}test".into(),
        window_start_ms: 0,
        amount,
        limit: Some(10),
    };
    assert_eq!(
        ok(store.charge(vec![charge(7)]).await),
        Charged::Added(vec![7])
    );
    assert_eq!(
        ok(store.charge(vec![charge(4)]).await),
        Charged::Over { index: 0, count: 7 }
    );
    assert_eq!(
        ok(store.charge(vec![charge(3)]).await),
        Charged::Added(vec![10])
    );
    let c = ok(store.counter("g\u{1f}test").await).unwrap_or_else(|| panic!("stored"));
    assert_eq!((c.count, c.window_start_ms), (10, 0));
    assert!(ok(store.counter("g\u{1f}other").await).is_none());
}

#[tokio::test]
async fn a_grant_that_does_not_decode_is_an_integrity_problem() {
    let dir = ok(tempfile::tempdir());
    let id = GrantId::new();
    {
        let store = open(dir.path());
        let mut g = grant();
        g.id = id;
        assert!(ok(store.put_grant(g, None).await));
    }
    {
        let db = ok(sled::open(dir.path()));
        let meta = ok(db.open_tree("meta"));
        ok(meta.insert(grant_key(id), &b"\x01cut"[..]));
        ok(db.flush());
    }
    let store = open(dir.path());
    let problems = ok(store.check_integrity().await).problems;
    assert!(problems.iter().any(|p| p.contains("grant")), "{problems:?}");
    assert!(store.grant(id).await.is_err());
}
