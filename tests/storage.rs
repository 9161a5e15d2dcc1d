//! What is on disk: it survives a restart, and tampering with it is
//! detected instead of returning garbage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::grpc::pb::FieldKind;
use tonic::Code;

const PHONE: &str = "+1 202-555-0143";
const OTHER_PHONE: &str = "+1 202-555-0187";

/// Opens the stopped server's sled store directly and edits one tree.
fn edit_records(vault: &TestVault, edit: impl FnOnce(&sled::Tree)) {
    let db = sled::open(vault.config.store_dir()).unwrap();
    let records = db.open_tree("records").unwrap();
    edit(&records);
    db.flush().unwrap();
}

/// A stopped server holding PHONE and OTHER_PHONE, and their tokens.
async fn two_phones_then_stop() -> (TestVault, Vec<String>) {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let fields = vec![
        field(FieldKind::Phone, PHONE),
        field(FieldKind::Phone, OTHER_PHONE),
    ];
    let tokens = tokens_for(&mut orders, fields).await;
    drop(orders);
    vault.stop().await;
    (vault, tokens)
}

/// Edits the stopped server's records on disk, then starts it again.
async fn tamper_and_restart(mut vault: TestVault, edit: impl FnOnce(&sled::Tree)) -> TestVault {
    edit_records(&vault, edit);
    vault.restart().await;
    vault
}

/// The store key of the `i`-th value of the first tokenize call: records
/// are keyed by their sequence number, which one call takes in item order.
fn key(records: &sled::Tree, i: usize) -> Vec<u8> {
    records.iter().keys().nth(i).unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn a_restarted_server_still_detokenizes_earlier_tokens() {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    drop(orders);
    vault.restart().await;
    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "+12025550143");
}

#[tokio::test]
async fn a_ciphertext_altered_on_disk_fails_to_decrypt_with_an_error() {
    let (vault, tokens) = two_phones_then_stop().await;
    let vault = tamper_and_restart(vault, |records| {
        let k = key(records, 0);
        let mut bytes = records.get(&k).unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        records.insert(&k, bytes).unwrap();
    })
    .await;

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    let err = got[0].as_ref().unwrap_err();
    assert_eq!(code(err), Code::DataLoss, "{}", err.message);
    assert!(err.message.contains("integrity"), "{}", err.message);
    // The untouched record next to it is fine.
    assert_eq!(got[1].as_ref().unwrap().value, "+12025550187");
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_token_fails_to_decrypt() {
    let (vault, tokens) = two_phones_then_stop().await;
    let vault = tamper_and_restart(vault, |records| {
        // Replay the first record's bytes under the second token.
        let first = records.get(key(records, 0)).unwrap().unwrap();
        records.insert(key(records, 1), first).unwrap();
    })
    .await;

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "+12025550143");
    assert_eq!(code(got[1].as_ref().unwrap_err()), Code::DataLoss);
}

#[tokio::test]
async fn a_record_relabelled_as_another_kind_fails_to_decrypt() {
    let (vault, tokens) = two_phones_then_stop().await;
    let vault = tamper_and_restart(vault, |records| {
        let k = key(records, 0);
        let mut bytes = records.get(&k).unwrap().unwrap().to_vec();
        // Byte 1 holds the kind code: claim it is an address (masked reveal).
        bytes[1] = 2;
        records.insert(&k, bytes).unwrap();
    })
    .await;

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(code(got[0].as_ref().unwrap_err()), Code::DataLoss);
    assert!(got[1].is_ok());
}

#[tokio::test]
async fn a_stored_record_that_does_not_decode_is_data_loss_for_its_item_only() {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let fields = vec![
        field(FieldKind::Phone, PHONE),
        field(FieldKind::Phone, "+1 202-555-0161"),
        field(FieldKind::Phone, OTHER_PHONE),
    ];
    let tokens = tokens_for(&mut orders, fields).await;
    drop(orders);
    vault.stop().await;
    let vault = tamper_and_restart(vault, |records| {
        // Not a record at all: an unknown format byte and too short.
        records.insert(key(records, 1), &[9u8, 9, 9][..]).unwrap();
    })
    .await;

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "+12025550143");
    let err = got[1].as_ref().unwrap_err();
    assert_eq!(code(err), Code::DataLoss, "{}", err.message);
    assert_eq!(got[2].as_ref().unwrap().value, "+12025550187");
}

/// Copies a store directory (files only; sled keeps no subdirectories
/// with data), keeping it private.
fn copy_store(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_store_restored_from_a_backup_never_gives_a_later_token_to_another_value() {
    let mut vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    drop(orders);
    vault.stop().await;
    let store = vault.config.store_dir();
    let backup = vault.tmp.path().join("backup");
    copy_store(&store, &backup);

    // Issued after the backup: lost when it is restored.
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    let lost = tokens_for(&mut orders, vec![field(FieldKind::Phone, OTHER_PHONE)]).await;
    drop(orders);
    vault.stop().await;
    std::fs::remove_dir_all(&store).unwrap();
    copy_store(&backup, &store);

    // The restored store takes the same sequence numbers again, under a
    // new epoch: the new value gets another token, and the lost token is
    // unknown instead of revealing the new value.
    vault.restart().await;
    let mut orders = vault.client("orders").await;
    let new = tokens_for(
        &mut orders,
        vec![field(FieldKind::Phone, "+1 202-555-0161")],
    )
    .await;
    assert_ne!(new, lost);
    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &[lost[0].clone(), new[0].clone()])
        .await
        .unwrap();
    assert_eq!(code(got[0].as_ref().unwrap_err()), Code::NotFound);
    assert_eq!(got[1].as_ref().unwrap().value, "+12025550161");
}
