//! Decode bounds (README, "Limits"): a request is checked against its bounds
//! before it is decoded, because decoding amplifies (two bytes `0a 00`
//! decode into one `Field` struct). Real servers over real mTLS; the memory
//! tests run the real binary as a child to read its RSS and send raw bytes
//! over HTTP/2, since a well-behaved client cannot send them. Every call
//! and every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::process::{self, ServerProcess};
use common::raw::*;
use common::*;
use fieldvault::dev::DEV_POLICY;
use fieldvault::grpc::pb::{self, FieldKind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::timeout;
use tonic::Code;
use tonic_types::StatusExt;

/// Bound on connecting, the handshake and small calls.
const STEP: Duration = Duration::from_secs(10);
/// Bound on one call carrying a largest message (debug build, 2 cores
/// shared with other tests).
const BIG_CALL: Duration = Duration::from_secs(60);
/// The largest message the server accepts with the default
/// `max_batch_items` (8,802,162 bytes; README, "Limits").
fn max_message_bytes() -> usize {
    fieldvault::limits::max_message_bytes(1000)
}
/// What one refused call may add to the server's peak RSS. Before the
/// codec checked bounds, one call of 4.4 million empty fields added 2 GB;
/// the message buffer itself is 8.4 MiB.
const RSS_GROWTH_BOUND_MIB: u64 = 100;

const TOKENIZE: &str = "/fieldvault.v1.Vault/Tokenize";
const DETOKENIZE: &str = "/fieldvault.v1.Vault/Detokenize";

// ---------------------------------------------------------------------------
// Raw protobuf and a raw HTTP/2 client.

fn varint(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(n, &mut out);
    out
}

/// A length-delimited field.
fn ld(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(number << 3 | 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// Sends `message` (protobuf bytes) as one gRPC call on `path` as `name`
/// and returns the call's status (OK included), within `deadline`.
async fn raw_call(
    addr: &str,
    pki_dir: &Path,
    name: &str,
    path: &str,
    message: &[u8],
    deadline: Duration,
) -> tonic::Status {
    let H2Conn { send, driver } = h2_connect(addr, pki_dir, name).await.unwrap();
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    let status = timeout(deadline, async move {
        let mut ready = send.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = ready.send_request(request, false).unwrap();
        // h2 holds the data and sends it as the server's window allows.
        body.send_data(Bytes::from(framed), true).unwrap();
        let response = response.await.unwrap();
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return status;
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.unwrap().expect("trailers");
        tonic::Status::from_header_map(&trailers).expect("a grpc-status")
    })
    .await
    .unwrap_or_else(|_| panic!("no answer to {path} within {deadline:?}"));
    driver.abort();
    status
}

/// [`raw_call`] as `orders` on an in-process test server.
async fn orders_call(vault: &TestVault, path: &str, message: &[u8]) -> tonic::Status {
    raw_call(&vault.addr(), &vault.pki.dir, "orders", path, message, STEP).await
}

/// Checks `status` is INVALID_ARGUMENT, its message `message`, and its
/// google.rpc.BadRequest names `field`.
fn assert_invalid_argument(status: &tonic::Status, field: &str, message: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), message);
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    assert_eq!(bad.field_violations[0].field, field);
}

// ---------------------------------------------------------------------------
// The real binary, for RSS.

struct ChildVault {
    _tmp: tempfile::TempDir,
    pki: Pki,
    server: ServerProcess,
}

fn start_child() -> ChildVault {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let config_path = write_config_file(
        tmp.path(),
        &pki,
        DEV_POLICY,
        (&tmp.path().join("data"), &tmp.path().join("audit.log")),
        "",
        "",
    );
    let server = process::start_with_config(&config_path, &tmp.path().join("server.log")).unwrap();
    ChildVault {
        _tmp: tmp,
        pki,
        server,
    }
}

/// Sends `message` on `path` as the no-rights `intruder` to a fresh server
/// process, and checks that it is refused with INVALID_ARGUMENT naming
/// `named` with `reason`, that the server's peak RSS grew by less than
/// [`RSS_GROWTH_BOUND_MIB`], and that it still serves a normal call.
async fn refused_without_growing(
    what: &str,
    path: &str,
    message: Vec<u8>,
    named: &str,
    reason: &str,
) {
    assert!(message.len() <= max_message_bytes(), "{}", message.len());
    let vault = start_child();
    let addr = vault.server.addr.clone();
    let pid = vault.server.pid();
    let orders = timeout(
        STEP,
        fieldvault::client::connect(&addr, &vault.pki.client_tls("orders")),
    )
    .await
    .unwrap()
    .unwrap();
    let warm_up = || {
        let mut orders = orders.clone();
        async move {
            let results = tokenize(
                &mut orders,
                vec![field(FieldKind::Phone, "+1 202-555-0143")],
            )
            .await
            .unwrap();
            assert!(results[0].is_ok(), "{results:?}");
        }
    };
    timeout(STEP, warm_up()).await.unwrap();
    let before = proc_mib(pid, "VmRSS:");
    let started = Instant::now();
    let status = raw_call(&addr, &vault.pki.dir, "intruder", path, &message, BIG_CALL).await;
    let took = started.elapsed();
    let peak = proc_mib(pid, "VmHWM:");
    let after = proc_mib(pid, "VmRSS:");
    eprintln!(
        "{what}: {} bytes; RSS {before} MiB before, {peak} MiB peak, {after} MiB after; \
         answered in {took:?}: {:?} {}",
        message.len(),
        status.code(),
        status.message()
    );
    assert_invalid_argument(&status, named, &format!("{named}: {reason}"));
    assert!(
        peak < before + RSS_GROWTH_BOUND_MIB,
        "{what}: the server's RSS went from {before} MiB to a peak of {peak} MiB"
    );
    timeout(STEP, warm_up()).await.unwrap();
    drop(orders);
}

/// As many copies of `part` as fit in the largest legal message after
/// `fixed` bytes.
fn fill(part: &[u8], fixed: usize) -> usize {
    (max_message_bytes() - fixed) / part.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenize_of_millions_of_empty_fields_from_a_caller_without_rights_is_refused_naming_fields_and_the_server_stays_small(
) {
    let part = ld(1, b"");
    let n = fill(&part, 0);
    refused_without_growing(
        "4.4M empty fields",
        TOKENIZE,
        part.repeat(n),
        "fields",
        &format!("holds {n} items; at most 1000 are allowed per call"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detokenize_of_millions_of_empty_tokens_is_refused_naming_tokens_and_the_server_stays_small(
) {
    let purpose = ld(2, b"callback");
    let part = ld(1, b"");
    let n = fill(&part, purpose.len());
    let mut message = part.repeat(n);
    message.extend(purpose);
    refused_without_growing(
        "4.4M empty tokens",
        DETOKENIZE,
        message,
        "tokens",
        &format!("holds {n} items; at most 1000 are allowed per call"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenize_of_millions_of_fields_with_an_empty_address_is_refused_and_the_server_stays_small(
) {
    let part = ld(1, &ld(5, b""));
    let n = fill(&part, 0);
    refused_without_growing(
        "2.2M fields with an empty address",
        TOKENIZE,
        part.repeat(n),
        "fields",
        &format!("holds {n} items; at most 1000 are allowed per call"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_with_a_million_street_lines_is_refused_naming_them_and_the_server_stays_small() {
    let lines = ld(5, b"").repeat(1_000_000);
    let message = ld(1, &ld(5, &lines));
    refused_without_growing(
        "one field of 1M street lines",
        TOKENIZE,
        message,
        "fields[0].address.street_lines",
        &format!(
            "holds 1000000 items; at most {} are allowed",
            fieldvault::grpc::codec::MAX_STREET_LINES_ON_THE_WIRE
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_with_as_many_street_lines_as_the_largest_message_holds_is_refused_and_the_server_stays_small(
) {
    let n = fill(&ld(5, b""), 16);
    let message = ld(1, &ld(5, &ld(5, b"").repeat(n)));
    refused_without_growing(
        "one field of 4.4M street lines",
        TOKENIZE,
        message,
        "fields[0].address.street_lines",
        &format!(
            "holds {n} items; at most {} are allowed",
            fieldvault::grpc::codec::MAX_STREET_LINES_ON_THE_WIRE
        ),
    )
    .await;
}

/// A normal call must answer within this, whatever else is going on.
const NORMAL_CALL_DEADLINE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_calls_of_millions_of_empty_fields_neither_bloat_the_server_nor_slow_other_callers(
) {
    let vault = start_child();
    let addr = vault.server.addr.clone();
    let pid = vault.server.pid();
    let orders = timeout(
        STEP,
        fieldvault::client::connect(&addr, &vault.pki.client_tls("orders")),
    )
    .await
    .unwrap()
    .unwrap();
    let normal_call = |mut orders: pb::vault_client::VaultClient<_>| async move {
        let started = Instant::now();
        let results = timeout(
            NORMAL_CALL_DEADLINE,
            tokenize(
                &mut orders,
                vec![field(FieldKind::Phone, "+1 202-555-0143")],
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("a normal call took more than {NORMAL_CALL_DEADLINE:?}"))
        .unwrap();
        assert!(results[0].is_ok(), "{results:?}");
        started.elapsed()
    };
    normal_call(orders.clone()).await;
    let before = proc_mib(pid, "VmRSS:");
    let part = ld(1, b"");
    let n = fill(&part, 0);
    let message = Arc::new(part.repeat(n));
    // From `support`, a caller the policy knows (it may not tokenize, but
    // the request is walked before any handler runs): its budget holds all
    // three messages, so all three are walked at once. (Callers no rule
    // names, such as `intruder`, share one message of budget: two of three
    // would be refused before they were read.)
    let floods: Vec<_> = (0..3)
        .map(|_| {
            let (addr, dir, message) = (addr.clone(), vault.pki.dir.clone(), message.clone());
            tokio::spawn(async move {
                raw_call(&addr, &dir, "support", TOKENIZE, &message, BIG_CALL).await
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    while calls < 5 || !floods.iter().all(|f| f.is_finished()) {
        slowest = slowest.max(normal_call(orders.clone()).await);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = proc_mib(pid, "VmHWM:");
    for flood in floods {
        let status = flood.await.unwrap();
        assert_invalid_argument(
            &status,
            "fields",
            &format!("fields: holds {n} items; at most 1000 are allowed per call"),
        );
    }
    eprintln!(
        "3 concurrent calls of {n} empty fields: RSS {before} MiB before, {peak} MiB peak; \
         {calls} normal calls meanwhile, the slowest {slowest:?}"
    );
    assert!(
        peak < before + RSS_GROWTH_BOUND_MIB,
        "the server's RSS went from {before} MiB to a peak of {peak} MiB"
    );
    assert!(slowest < NORMAL_CALL_DEADLINE, "{slowest:?}");
}

// ---------------------------------------------------------------------------
// Malformed protobuf: the caller's error, named.

#[tokio::test]
async fn a_field_value_that_is_not_utf8_is_invalid_argument_naming_the_field() {
    let vault = TestVault::start().await;
    let good = [
        vec![0x08, FieldKind::Phone as u8],
        ld(2, b"+1 202-555-0143"),
    ]
    .concat();
    let bad = [
        vec![0x08, FieldKind::Phone as u8],
        ld(2, b"+1 202-555-01\xff\xfe"),
    ]
    .concat();
    let message = [ld(1, &good), ld(1, &bad)].concat();
    let status = orders_call(&vault, TOKENIZE, &message).await;
    assert_invalid_argument(
        &status,
        "fields[1].value",
        "fields[1].value: is not valid UTF-8",
    );
    assert!(!status.message().contains("555"), "no value in the message");
}

#[tokio::test]
async fn a_truncated_message_is_invalid_argument_naming_where_it_ends() {
    let vault = TestVault::start().await;
    // A field that announces 16 bytes and carries 3.
    let message = [0x0a, 0x10, 0x08, 0x01, 0x12];
    let status = orders_call(&vault, TOKENIZE, &message).await;
    assert_invalid_argument(
        &status,
        "fields[0]",
        "fields[0]: is truncated: a length runs past the end of its message",
    );
    // A token whose bytes end inside a length varint.
    let message = [0x12, 0x02, b'c', b'b', 0x0a, 0xff];
    let status = raw_call(
        &vault.addr(),
        &vault.pki.dir,
        "support",
        DETOKENIZE,
        &message,
        STEP,
    )
    .await;
    assert_invalid_argument(
        &status,
        "tokens[0]",
        "tokens[0]: is truncated: it ends inside a varint",
    );
}

#[tokio::test]
async fn nesting_past_what_prost_allows_is_invalid_argument_not_internal() {
    let vault = TestVault::start().await;
    // 200 nested groups in an unknown field: prost stops at a depth of 100.
    let mut message = vec![0x4b; 200];
    message.extend([0x4c; 200]);
    let status = orders_call(&vault, TOKENIZE, &message).await;
    assert_invalid_argument(
        &status,
        "TokenizeRequest",
        "TokenizeRequest: holds a group (wire type 3 or 4), which proto3 does not have",
    );
}

// ---------------------------------------------------------------------------
// Bounds that legal clients meet.

#[tokio::test]
async fn the_codec_counts_against_the_servers_max_batch_items_not_a_fixed_default() {
    let vault = TestVault::start_with(|c| c.max_batch_items = 1500).await;
    let mut orders = vault.client("orders").await;
    let fields = vec![field(FieldKind::Phone, "+1 202-555-0143"); 1500];
    let results = tokenize(&mut orders, fields).await.unwrap();
    assert_eq!(results.len(), 1500);
    assert!(results.iter().all(|r| r.is_ok()));
    let fields = vec![field(FieldKind::Phone, "+1 202-555-0143"); 1501];
    let status = tokenize(&mut orders, fields).await.unwrap_err();
    assert_invalid_argument(
        &status,
        "fields",
        "fields: holds 1501 items; at most 1500 are allowed per call",
    );
}

#[tokio::test]
async fn more_street_lines_than_an_address_may_have_fail_that_item_and_far_more_fail_the_call() {
    let vault = TestVault::start().await;
    let mut orders = vault.client("orders").await;
    let address = |lines: usize| pb::Field {
        kind: FieldKind::Address as i32,
        address: Some(pb::PostalAddress {
            country: "US".into(),
            city: "Springfield".into(),
            street_lines: vec!["1 Example Way".into(); lines],
            ..Default::default()
        }),
        ..Default::default()
    };
    // Nine lines: the validator refuses that item alone (a batch reports
    // per item); the others are tokenized.
    let results = tokenize(&mut orders, vec![address(8), address(9)])
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    let refused = results[1].as_ref().unwrap_err();
    assert_eq!(code(refused), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message.contains("street_lines"), "{refused:?}");
    // Past the wire bound the call is refused before decoding.
    let lines = fieldvault::grpc::codec::MAX_STREET_LINES_ON_THE_WIRE + 1;
    let status = tokenize(&mut orders, vec![address(8), address(lines)])
        .await
        .unwrap_err();
    assert_invalid_argument(
        &status,
        "fields[1].address.street_lines",
        &format!(
            "fields[1].address.street_lines: holds {lines} items; at most {} are allowed",
            lines - 1
        ),
    );
}

// ---------------------------------------------------------------------------
// The data-lifecycle requests (README, "Data lifecycle"): bounded and
// walked like Tokenize and Detokenize, before any handler runs.

const DELETE_TOKENS: &str = "/fieldvault.v1.Vault/DeleteTokens";
const GET_TOKEN_INFO: &str = "/fieldvault.v1.Vault/GetTokenInfo";
const ERASE_VALUE: &str = "/fieldvault.v1.Vault/EraseValue";
const EXPORT_VALUE: &str = "/fieldvault.v1.Vault/ExportValue";

#[tokio::test]
async fn lifecycle_requests_past_the_batch_limit_or_malformed_are_refused_naming_the_field() {
    let vault = TestVault::start().await;
    let tokens = ld(1, b"fv1_AAAAAAAAAAAAAAAAAAAAAA").repeat(1001);
    for path in [DELETE_TOKENS, GET_TOKEN_INFO] {
        let status = orders_call(&vault, path, &tokens).await;
        assert_invalid_argument(
            &status,
            "tokens",
            "tokens: holds 1001 items; at most 1000 are allowed per call",
        );
        let status = orders_call(&vault, path, &[ld(1, b"fv1_"), ld(1, &[0xfe])].concat()).await;
        assert_invalid_argument(&status, "tokens[1]", "tokens[1]: is not valid UTF-8");
    }
    // The value of an erase or export: named, never quoted.
    let phone = [
        vec![0x08, FieldKind::Phone as u8],
        ld(2, b"+1 202-555-01\xff"),
    ]
    .concat();
    for path in [ERASE_VALUE, EXPORT_VALUE] {
        let status = orders_call(&vault, path, &ld(1, &phone)).await;
        assert_invalid_argument(&status, "field.value", "field.value: is not valid UTF-8");
        assert!(!status.message().contains("555"));
    }
    // A time to live sent as a string where its seconds go.
    let ttl = [vec![0x08, FieldKind::Phone as u8], ld(6, &ld(1, b"60"))].concat();
    let status = orders_call(&vault, TOKENIZE, &ld(1, &ttl)).await;
    assert_invalid_argument(
        &status,
        "fields[0].ttl.seconds",
        "fields[0].ttl.seconds: has wire type 2; this field is sent with wire type 0",
    );
    let status = orders_call(
        &vault,
        EXPORT_VALUE,
        &[ld(1, &ttl), ld(2, &[0xc3])].concat(),
    )
    .await;
    assert_invalid_argument(
        &status,
        "field.ttl.seconds",
        "field.ttl.seconds: has wire type 2; this field is sent with wire type 0",
    );
}
