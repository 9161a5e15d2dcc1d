//! Server reflection over a real server and real mTLS: both protocol
//! versions (v1, and v1alpha for grpcurl 1.8.6 and Python's
//! grpcio-reflection), and the error detail types the per-item errors carry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic::transport::Channel;

/// One v1alpha request on a fresh stream; its reply.
async fn v1alpha(
    channel: Channel,
    request: tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = bounded(
        CALL_DEADLINE,
        "a v1alpha reflection stream",
        client.server_reflection_info(tokio_stream::iter(vec![request])),
    )
    .await
    .expect("the server answers reflection v1alpha")
    .into_inner();
    let reply = bounded(
        CALL_DEADLINE,
        "a v1alpha reflection reply",
        stream.message(),
    )
    .await
    .unwrap()
    .expect("one reply");
    reply.message_response.expect("a reply body")
}

/// One v1 request on a fresh stream; its reply.
async fn v1(
    channel: Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = bounded(
        CALL_DEADLINE,
        "a v1 reflection stream",
        client.server_reflection_info(tokio_stream::iter(vec![request])),
    )
    .await
    .expect("the server answers reflection v1")
    .into_inner();
    let reply = bounded(CALL_DEADLINE, "a v1 reflection reply", stream.message())
        .await
        .unwrap()
        .expect("one reply");
    reply.message_response.expect("a reply body")
}

fn decode_files(encoded: Vec<Vec<u8>>) -> Vec<FileDescriptorProto> {
    encoded
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect()
}

/// The file named `name` among `files`; panics listing what came back.
fn file<'a>(files: &'a [FileDescriptorProto], name: &str) -> &'a FileDescriptorProto {
    files.iter().find(|f| f.name() == name).unwrap_or_else(|| {
        let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
        panic!("{name} is not among {names:?}")
    })
}

/// Asserts that `files` hold google/rpc/error_details.proto with a
/// `BadRequest` whose `FieldViolation` has `field` and `description`;
/// returns the files it imports.
fn assert_bad_request_is_described(files: &[FileDescriptorProto]) -> Vec<String> {
    let details = file(files, "google/rpc/error_details.proto");
    assert_eq!(details.package(), "google.rpc");
    let bad_request = details
        .message_type
        .iter()
        .find(|m| m.name() == "BadRequest")
        .expect("google.rpc.BadRequest");
    let violation = bad_request
        .nested_type
        .iter()
        .find(|m| m.name() == "FieldViolation")
        .expect("google.rpc.BadRequest.FieldViolation");
    let fields: Vec<(&str, i32)> = violation
        .field
        .iter()
        .map(|f| (f.name(), f.number()))
        .collect();
    assert!(fields.contains(&("field", 1)), "{fields:?}");
    assert!(fields.contains(&("description", 2)), "{fields:?}");
    details.dependency.clone()
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_vault_and_resolves_google_rpc_bad_request() {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let vault = TestVault::start().await;
    let channel = channel(&vault.addr(), &vault.pki.client_tls("intruder")).await;

    let MessageResponse::ListServicesResponse(list) =
        v1alpha(channel.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("ListServices did not answer with a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "fieldvault.v1.Vault",
        "fieldvault.v1.KeyAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service.to_owned()), "{names:?}");
    }

    let reply = v1alpha(
        channel.clone(),
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(found) = reply else {
        panic!("google.rpc.BadRequest did not resolve: {reply:?}");
    };
    let imports = assert_bad_request_is_described(&decode_files(found.file_descriptor_proto));
    // Every file it imports resolves too, so a client needs nothing but
    // reflection to decode a BadRequest.
    assert!(!imports.is_empty());
    for import in imports {
        let reply = v1alpha(
            channel.clone(),
            MessageRequest::FileByFilename(import.clone()),
        )
        .await;
        let MessageResponse::FileDescriptorResponse(found) = reply else {
            panic!("{import} did not resolve: {reply:?}");
        };
        file(&decode_files(found.file_descriptor_proto), &import);
    }

    // The Vault's own file resolves too.
    let reply = v1alpha(
        channel,
        MessageRequest::FileContainingSymbol("fieldvault.v1.Vault".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(found) = reply else {
        panic!("fieldvault.v1.Vault did not resolve: {reply:?}");
    };
    let files = decode_files(found.file_descriptor_proto);
    let vault_proto = file(&files, "fieldvault/v1/vault.proto");
    assert_eq!(vault_proto.service[0].name(), "Vault");
}

#[tokio::test]
async fn reflection_v1_resolves_google_rpc_bad_request() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let vault = TestVault::start().await;
    let channel = channel(&vault.addr(), &vault.pki.client_tls("intruder")).await;
    let reply = v1(
        channel,
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(found) = reply else {
        panic!("google.rpc.BadRequest did not resolve: {reply:?}");
    };
    assert_bad_request_is_described(&decode_files(found.file_descriptor_proto));
}

/// The package options a Go, Java or C# client is generated with, as the
/// server describes its own contract.
#[tokio::test]
async fn the_served_contract_names_its_go_java_and_csharp_packages() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let vault = TestVault::start().await;
    let channel = channel(&vault.addr(), &vault.pki.client_tls("intruder")).await;
    let reply = v1(
        channel,
        MessageRequest::FileByFilename("fieldvault/v1/vault.proto".into()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(found) = reply else {
        panic!("fieldvault/v1/vault.proto did not resolve: {reply:?}");
    };
    let files = decode_files(found.file_descriptor_proto);
    let options = file(&files, "fieldvault/v1/vault.proto")
        .options
        .clone()
        .expect("file options");
    assert_eq!(
        options.go_package(),
        "github.com/fieldvault/fieldvault/gen/go/fieldvault/v1;fieldvaultv1"
    );
    assert_eq!(options.java_package(), "io.github.fieldvault.v1");
    assert!(options.java_multiple_files());
    assert_eq!(options.csharp_namespace(), "Fieldvault.V1");
}

/// The descriptor set compiled into the server holds the error details, so
/// reflection cannot lose them to a build change unnoticed.
#[test]
fn the_compiled_descriptor_set_holds_the_error_details() {
    let set = FileDescriptorSet::decode(fieldvault::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
    for import in assert_bad_request_is_described(&set.file) {
        file(&set.file, &import);
    }
}

#[tokio::test]
async fn reflection_v1alpha_is_absent_when_turned_off() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let vault = TestVault::start_with(|c| c.reflection = false).await;
    let channel = channel(&vault.addr(), &vault.pki.client_tls("intruder")).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let status = bounded(
        CALL_DEADLINE,
        "a v1alpha reflection stream",
        client.server_reflection_info(tokio_stream::iter(vec![request])),
    )
    .await
    .expect_err("reflection is off");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}
