//! The public contract over a real server and real mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::domain::TokenId;
use fieldvault::grpc::pb::{self, FieldKind};
use tonic::Code;

const PHONE: &str = "+1 202-555-0142";
const ADDRESS: &str = "1 Example Way, Springfield, ZZ 00000";
const NATIONAL_ID: &str = "078-05-1120";

/// Fails if `text` holds any of the test's sensitive values, raw or
/// canonical. Only whole values are looked for: short fragments such as
/// "555" or "0142" occur by chance in random tokens and timestamps.
fn assert_no_sensitive_value(text: &str) {
    for value in [
        PHONE,
        "+12025550142",
        "2025550142",
        ADDRESS,
        "Example Way",
        NATIONAL_ID,
        "078051120",
        // The malformed phone of a_bad_item_fails_alone_with_its_field_named.
        "202 555 01x2",
    ] {
        assert!(!text.contains(value), "{value:?} leaked into {text:?}");
    }
}

#[tokio::test]
async fn orders_tokenizes_every_kind_and_support_sees_phone_in_full_and_address_masked() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(
        &mut orders,
        vec![
            field(FieldKind::Phone, PHONE),
            field(FieldKind::Address, ADDRESS),
            national_id(pb::NationalIdScheme::UsSsn, NATIONAL_ID),
        ],
    )
    .await;
    for t in &tokens {
        assert!(t.starts_with("fv1_") && t.len() <= 40, "{t}");
        assert_no_sensitive_value(t);
    }

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    let phone = got[0].as_ref().unwrap();
    assert_eq!(phone.value, "+12025550142");
    assert_eq!(phone.kind, FieldKind::Phone as i32);
    assert_eq!(phone.reveal, pb::Reveal::Full as i32);
    let address = got[1].as_ref().unwrap();
    // A free-form address masks whole (see field_kinds.rs for structured ones).
    assert_eq!(address.value, "***");
    assert_eq!(address.kind, FieldKind::Address as i32);
    assert_eq!(address.reveal, pb::Reveal::Masked as i32);
    // The sample policy gives support no right to national IDs: the token
    // is answered as if it did not exist (tests/security.rs).
    let id = got[2].as_ref().unwrap_err();
    assert_eq!(code(id), Code::NotFound);
    assert!(!id.message.contains("national_id"), "{}", id.message);
}

#[tokio::test]
async fn each_tokenize_call_gets_a_new_token() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let a = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    let b = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn intruder_with_a_valid_certificate_and_no_rules_is_denied() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;

    // rotator's only rule is for key administration: it has no data rights.
    for (name, why) in [
        ("intruder", "no policy rule names caller"),
        ("rotator", "has no rule allowing detokenize"),
    ] {
        let mut client = vault.client(name).await;
        let err = detokenize(&mut client, "callback", &tokens)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains(why), "{}", err.message());
        let err = tokenize(&mut client, vec![field(FieldKind::Phone, PHONE)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_no_sensitive_value(err.message());
    }
}

#[tokio::test]
async fn support_needs_a_purpose_the_policy_lists() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    let mut support = vault.client("support").await;

    let err = detokenize(&mut support, "", &tokens).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("purpose:"), "{}", err.message());

    let err = detokenize(&mut support, "marketing", &tokens)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("purpose 'marketing'"),
        "{}",
        err.message()
    );

    let err = detokenize(&mut support, "Not A Purpose", &tokens)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn orders_may_tokenize_but_not_detokenize() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    let err = detokenize(&mut orders, "callback", &tokens)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("has no rule allowing detokenize"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn an_unknown_token_is_a_per_item_not_found_while_the_others_succeed() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let known = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    // Well-formed, but not made by this vault's token key.
    let unknown = TokenId::from_bytes([0x5a; 16]).to_string();
    let tokens = vec![
        known[0].clone(),
        unknown,
        "not-a-token".to_owned(),
        known[0].clone(),
    ];

    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, "+12025550142");
    let not_found = got[1].as_ref().unwrap_err();
    assert_eq!(code(not_found), Code::NotFound);
    assert!(
        not_found.message.starts_with("tokens[1]"),
        "{}",
        not_found.message
    );
    let malformed = got[2].as_ref().unwrap_err();
    assert_eq!(code(malformed), Code::InvalidArgument);
    assert!(
        malformed.message.starts_with("tokens[2]"),
        "{}",
        malformed.message
    );
    assert_eq!(got[3].as_ref().unwrap().value, "+12025550142");
}

#[tokio::test]
async fn a_bad_item_fails_alone_with_its_field_named() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let got = tokenize(
        &mut orders,
        vec![
            field(FieldKind::Phone, PHONE),
            field(FieldKind::Unspecified, PHONE),
            field(FieldKind::Phone, "+1 202 555 01x2"),
            pb::Field {
                kind: 42,
                value: PHONE.to_owned(),
                ..Default::default()
            },
            field(FieldKind::Address, "   "),
            field(FieldKind::Address, ADDRESS),
        ],
    )
    .await
    .unwrap();
    assert!(got[0].is_ok());
    let expect = [
        (1, "fields[1].kind"),
        (2, "fields[2].value"),
        (3, "fields[3].kind"),
        (4, "fields[4].value"),
    ];
    for (i, prefix) in expect {
        let e = got[i].as_ref().unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument, "{}", e.message);
        assert!(e.message.starts_with(prefix), "{}", e.message);
        assert_no_sensitive_value(&e.message);
    }
    assert!(got[5].is_ok());

    // The good items were stored.
    let mut support = vault.client("support").await;
    let tokens = vec![got[0].clone().unwrap()];
    let revealed = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert_eq!(revealed[0].as_ref().unwrap().value, "+12025550142");
}

#[tokio::test]
async fn a_batch_over_the_limit_is_rejected_whole() {
    let vault = TestVault::start_with(|c| c.max_batch_items = 3).await;
    let mut orders = vault.client("orders").await;
    let fields = vec![field(FieldKind::Phone, PHONE); 4];
    let err = tokenize(&mut orders, fields).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 3"), "{}", err.message());

    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE); 3]).await;
    assert_eq!(tokens.len(), 3);
    let mut support = vault.client("support").await;
    let err = detokenize(&mut support, "callback", &vec![tokens[0].clone(); 4])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = tokenize(&mut orders, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn every_reveal_and_refusal_is_in_the_audit_log_without_values() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(&mut orders, vec![field(FieldKind::Phone, PHONE)]).await;
    let mut support = vault.client("support").await;
    detokenize(&mut support, "callback", &tokens).await.unwrap();
    detokenize(&mut support, "marketing", &tokens)
        .await
        .unwrap_err();

    let log = std::fs::read_to_string(&vault.config.audit_log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["action"] == "detokenize")
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["caller"], "spiffe://fieldvault.dev/support");
    assert_eq!(lines[0]["purpose"], "callback");
    assert_eq!(lines[0]["justification"], "ticket TEST-1");
    assert_eq!(lines[0]["items"][0]["token"], tokens[0].as_str());
    assert_eq!(lines[0]["items"][0]["outcome"], "full");
    assert_eq!(lines[1]["decision"], "denied");
    assert_eq!(lines[1]["code"], "permission_denied");
    assert_no_sensitive_value(&log);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let vault = TestVault::start().await;
    let channel = channel(&vault.addr(), &vault.pki.client_tls("intruder")).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fieldvault.v1.Vault".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"fieldvault.v1.Vault".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
