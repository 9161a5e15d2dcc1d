//! Field kinds over the real server: canonical values, deterministic and
//! random tokens, per-kind masks, and per-item errors with BadRequest details.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::crypto::MasterKey;
use fieldvault::domain::value::{canonicalise, FieldInput, PhoneRegion};
use fieldvault::domain::{FieldKind as Kind, TokenMode};
use fieldvault::grpc::pb::{self, FieldKind, NationalIdScheme};
use fieldvault::store::{SledConfig, SledStore, Store};
use tonic::Code;
use tonic_types::RpcStatusExt;

/// support: phone full, address and email masked, national IDs metadata only.
/// rotator (standing in for a label printer): addresses in full.
const POLICY: &str = r#"
version = 1
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "address", "national_id", "email"]
[[rules]]
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"
[[rules]]
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["address", "email"]
purposes = ["callback"]
reveal = "masked"
[[rules]]
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["national_id"]
purposes = ["callback"]
reveal = "none"
[[rules]]
callers = ["spiffe://fieldvault.dev/rotator"]
action = "detokenize"
kinds = ["address"]
purposes = ["delivery-label"]
reveal = "full"
"#;

async fn start(phone_mode: TokenMode) -> TestVault {
    TestVault::start_with(|c| {
        let path = c.data_dir.with_file_name("kinds-policy.toml");
        write(&path, POLICY.as_bytes());
        c.policy_file = path;
        c.token_modes.phone = phone_mode;
        c.token_modes.national_id = TokenMode::Deterministic;
        c.default_phone_region = PhoneRegion::parse("US").ok();
    })
    .await
}

fn phone(value: &str, region: &str) -> pb::Field {
    pb::Field {
        region: region.to_owned(),
        ..field(FieldKind::Phone, value)
    }
}

const CN_VARIANTS: [(&str, &str); 4] = [
    ("+86 138-1234-5678", ""),
    ("008613812345678", "CN"),
    ("13812345678", "CN"),
    ("138 1234 5678", "cn"),
];

#[tokio::test]
async fn format_variants_of_one_number_get_one_deterministic_token() {
    let vault = start(TokenMode::Deterministic).await;
    let mut orders = vault.client("orders").await;
    let fields = CN_VARIANTS.iter().map(|(v, r)| phone(v, r)).collect();
    let tokens = tokens_for(&mut orders, fields).await;
    assert!(tokens.iter().all(|t| t == &tokens[0]), "{tokens:?}");
    // And again in a later call.
    let again = tokens_for(&mut orders, vec![phone("+8613812345678", "")]).await;
    assert_eq!(again[0], tokens[0]);
    // The default region (US here) reads national numbers without a region.
    let us = tokens_for(
        &mut orders,
        vec![phone("(202) 555-0142", ""), phone("+1 202 555 0142", "CN")],
    )
    .await;
    assert_eq!(us[0], us[1]);
    assert_ne!(us[0], tokens[0]);

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens[..1])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "+8613812345678");
}

#[tokio::test]
async fn random_mode_gives_a_new_token_each_time_but_indexes_them_all() {
    let mut vault = start(TokenMode::Random).await;
    let mut orders = vault.client("orders").await;
    let fields = CN_VARIANTS.iter().map(|(v, r)| phone(v, r)).collect();
    let mut tokens = tokens_for(&mut orders, fields).await;
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), CN_VARIANTS.len());
    drop(orders);
    vault.stop().await;

    // The blind index maps the value to all four tokens (erase-by-value needs it).
    let store = SledStore::open(&SledConfig {
        path: vault.config.store_dir(),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: fieldvault::store::DEFAULT_MAX_QUEUED_WRITES,
    })
    .unwrap();
    let fieldvault::config::MasterKeySource::File(key_path) = &vault.config.master_key else {
        panic!("test config uses a key file");
    };
    let master = MasterKey::from_file(key_path).unwrap();
    let keyring = fieldvault::vault::open_keyring(&store, &master)
        .await
        .unwrap();
    let canonical = canonicalise(&FieldInput::simple(Kind::Phone, "+8613812345678"), None).unwrap();
    let index = keyring.blind_index(Kind::Phone, &canonical).unwrap();
    let mut indexed: Vec<String> = store
        .records_by_index(index)
        .await
        .unwrap()
        .into_iter()
        .map(|id| keyring.token_of(id).to_string())
        .collect();
    indexed.sort();
    assert_eq!(indexed, tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tokenizations_of_one_value_yield_one_token() {
    let vault = start(TokenMode::Deterministic).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        // Separate connections, so the calls really race on the server.
        let mut client = vault.client("orders").await;
        let (value, region) = CN_VARIANTS[i % CN_VARIANTS.len()];
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..5 {
                out.extend(tokens_for(&mut client, vec![phone(value, region)]).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 80);
    all.dedup();
    assert_eq!(all.len(), 1, "one value, one token: {all:?}");
}

#[tokio::test]
async fn invalid_values_fail_per_item_with_a_bad_request_naming_the_field() {
    let vault = start(TokenMode::Random).await;
    let mut orders = vault.client("orders").await;
    let got = tokenize(
        &mut orders,
        vec![
            national_id(NationalIdScheme::CnRic, "11010519491231002X"),
            national_id(NationalIdScheme::CnRic, "110105194912310021"),
            field(FieldKind::NationalId, "078-05-1120"),
            phone("12812345678", "CN"),
            phone("13812345678", "XX"),
            national_id(NationalIdScheme::UsSsn, "666-05-1120"),
            field(FieldKind::Email, "not-an-email"),
        ],
    )
    .await
    .unwrap();
    assert!(got[0].is_ok());
    let expect = [
        (1, "fields[1].value", "cn_ric"),
        (2, "fields[2].scheme", "required"),
        (3, "fields[3].value", "not a valid number"),
        (4, "fields[4].region", "region"),
        (5, "fields[5].value", "area number"),
        (6, "fields[6].value", "not an email address"),
    ];
    for (i, path, words) in expect {
        let e = got[i].as_ref().unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument, "{}", e.message);
        assert!(
            e.message.starts_with(path) && e.message.contains(words),
            "{}",
            e.message
        );
        let bad = e.get_details_bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, path);
        assert!(bad.field_violations[0].description.contains(words));
        for secret in ["1281234", "0510", "1120", "not-an-email"] {
            assert!(!e.message.contains(secret), "{}", e.message);
        }
    }
}

#[tokio::test]
async fn bidi_controls_and_broken_email_domains_fail_per_item_naming_the_field() {
    let vault = start(TokenMode::Random).await;
    let mut orders = vault.client("orders").await;
    let mut city_with_override = structured_address();
    if let Some(a) = city_with_override.address.as_mut() {
        a.city = "Spring\u{202E}dleif".into();
    }
    let got = tokenize(
        &mut orders,
        vec![
            field(FieldKind::Address, "17 Fakestreet\u{2067} Lane, ZZ"),
            city_with_override,
            field(FieldKind::Email, "test\u{202D}user@example.com"),
            field(FieldKind::Email, "testuser@-x-.com"),
            phone("+1 202-555-0142", "US"),
        ],
    )
    .await
    .unwrap();
    let expect = [
        (0, "fields[0].value", "bidirectional"),
        (1, "fields[1].address.city", "bidirectional"),
        (2, "fields[2].value", "bidirectional"),
        (3, "fields[3].value", "starts or ends with '-'"),
    ];
    for (i, path, words) in expect {
        let e = got[i].as_ref().unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument, "{}", e.message);
        assert!(
            e.message.starts_with(path) && e.message.contains(words),
            "{}",
            e.message
        );
        let bad = e.get_details_bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations[0].field, path);
        for secret in ["Fakestreet", "Spring", "testuser", "-x-", "user@"] {
            assert!(!e.message.contains(secret), "{}", e.message);
        }
    }
    assert!(got[4].is_ok(), "{:?}", got[4]);
}

fn structured_address() -> pb::Field {
    pb::Field {
        address: Some(pb::PostalAddress {
            country: "United States of America".into(),
            region: "ZZ".into(),
            city: "Springfield".into(),
            district: "Testdistrict".into(),
            street_lines: vec!["  17   Fakestreet Lane ".into(), "Apt 0".into()],
            postal_code: "00000 0000".into(),
            recipient: "Test Person".into(),
        }),
        ..field(FieldKind::Address, "")
    }
}

#[tokio::test]
async fn each_kind_is_masked_as_stated_and_no_more() {
    let vault = start(TokenMode::Random).await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(
        &mut orders,
        vec![
            phone("138 1234 5678", "CN"),
            structured_address(),
            field(FieldKind::Email, " Alice.Test@EXAMPLE.com "),
            national_id(NationalIdScheme::CnRic, "11010519491231002x"),
            field(
                FieldKind::Address,
                "17 Fakestreet Lane, Springfield, ZZ 00000",
            ),
        ],
    )
    .await;
    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    let v: Vec<&pb::RevealedValue> = got.iter().map(|r| r.as_ref().unwrap()).collect();

    assert_eq!(
        (v[0].value.as_str(), v[0].reveal),
        ("+8613812345678", pb::Reveal::Full as i32)
    );

    assert_eq!(v[1].reveal, pb::Reveal::Masked as i32);
    assert_eq!(v[1].value, "Springfield, ZZ, US");
    let a = v[1].address.as_ref().unwrap();
    assert_eq!(
        (a.country.as_str(), a.region.as_str(), a.city.as_str()),
        ("US", "ZZ", "Springfield")
    );
    assert!(
        a.street_lines.is_empty()
            && a.postal_code.is_empty()
            && a.recipient.is_empty()
            && a.district.is_empty()
    );

    assert_eq!(v[2].value, "A***@example.com");

    assert_eq!(v[3].reveal, pb::Reveal::None as i32);
    assert_eq!(v[3].value, "");
    assert_eq!(v[3].kind, FieldKind::NationalId as i32);
    assert_eq!(v[3].scheme, NationalIdScheme::CnRic as i32);

    assert_eq!(v[4].value, "***");

    // Nothing masked carries more of the value than stated.
    let shown: String = v.iter().map(|r| format!("{r:?}{}", r.value)).collect();
    for secret in [
        "Fakestreet",
        "Test Person",
        "Testdistrict",
        "00000",
        "Alice",
        "1101",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }

    // A caller allowed the full address gets every normalised part.
    let mut labels = vault.client("rotator").await;
    let got = detokenize(&mut labels, "delivery-label", &tokens[1..2])
        .await
        .unwrap();
    let full = got[0].as_ref().unwrap();
    assert_eq!(
        full.value,
        "Test Person, 17 Fakestreet Lane, Apt 0, Testdistrict, Springfield, ZZ, 00000-0000, US"
    );
    assert_eq!(
        full.address.as_ref().unwrap().street_lines,
        vec!["17 Fakestreet Lane", "Apt 0"]
    );
}
