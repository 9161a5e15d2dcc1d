//! The transport ceiling: the `fieldvault.v1.Vault` service with no work
//! behind it, on the same mTLS accept loop with the same server settings,
//! layers and limits, so the benchmark can show how
//! close the real vault gets to what TLS + HTTP/2 + protobuf allow.

use fieldvault::config::Config;
use fieldvault::grpc::pb;
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

/// Answers every Tokenize and Detokenize at once with fixed results of the
/// same shape as the real service's.
#[derive(Clone, Copy, Default)]
pub struct NullVault;

const FIXED_TOKEN: &str = "fv1_AAAAAAAAQACAAAAAAAAAAA";

#[tonic::async_trait]
impl pb::vault_server::Vault for NullVault {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let results = request
            .into_inner()
            .fields
            .iter()
            .map(|_| pb::TokenizeResult {
                outcome: Some(pb::tokenize_result::Outcome::Token(FIXED_TOKEN.to_owned())),
            })
            .collect();
        Ok(Response::new(pb::TokenizeResponse { results }))
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let results = request
            .into_inner()
            .tokens
            .into_iter()
            .map(|token| pb::DetokenizeResult {
                token,
                outcome: Some(pb::detokenize_result::Outcome::Revealed(
                    pb::RevealedValue {
                        kind: pb::FieldKind::Email as i32,
                        reveal: pb::Reveal::Full as i32,
                        value: "user0000000@example.com".to_owned(),
                        ..Default::default()
                    },
                )),
            })
            .collect();
        Ok(Response::new(pb::DetokenizeResponse { results }))
    }

    // The data-lifecycle calls are not benchmarked.
    async fn delete_tokens(
        &self,
        _: Request<pb::DeleteTokensRequest>,
    ) -> Result<Response<pb::DeleteTokensResponse>, Status> {
        Err(Status::unimplemented("not part of the transport ceiling"))
    }

    async fn get_token_info(
        &self,
        _: Request<pb::GetTokenInfoRequest>,
    ) -> Result<Response<pb::GetTokenInfoResponse>, Status> {
        Err(Status::unimplemented("not part of the transport ceiling"))
    }

    async fn erase_value(
        &self,
        _: Request<pb::EraseValueRequest>,
    ) -> Result<Response<pb::EraseValueResponse>, Status> {
        Err(Status::unimplemented("not part of the transport ceiling"))
    }

    async fn export_value(
        &self,
        _: Request<pb::ExportValueRequest>,
    ) -> Result<Response<pb::ExportValueResponse>, Status> {
        Err(Status::unimplemented("not part of the transport ceiling"))
    }
}

/// Serves [`NullVault`] with the TLS settings and limits of `config`, on
/// the vault's own accept loop and tonic settings and layers
/// ([`fieldvault::app::server_builder`], [`fieldvault::app::accept_limits`])
/// and the same message bounds, until the process ends. Prints
/// `listening on ADDR` like the real server.
pub async fn serve(config: &Config) -> Result<(), String> {
    let limits = fieldvault::limits::Resolved::new(config, fieldvault::limits::nofile_soft_limit())
        .map_err(|e| e.to_string())?;
    // The TLS files as the server reads them at start (no reloading).
    let (tls, _) = fieldvault::tls_reload::load(&fieldvault::tls_reload::TlsSources::of(config))
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", config.listen))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let (incoming, _accept) =
        fieldvault::tls::incoming(listener, tls, fieldvault::app::accept_limits(&limits));
    println!("listening on {addr}");
    fieldvault::app::server_builder(&limits, None, Default::default())
        .add_service(
            pb::vault_server::VaultServer::new(NullVault)
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes),
        )
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}
