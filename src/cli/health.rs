//! `fieldvault health`: a gRPC health check over mTLS, as an exec probe
//! (Kubernetes' own gRPC probe cannot present a client certificate).

use super::conn::Conn;
use super::output::{call_failed, emit, Failure, EXIT_ITEM_FAILED, EXIT_OK};
use clap::Args;
use std::process::ExitCode;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Args)]
#[command(
    after_help = "Exit codes: 0 SERVING; 1 the server answered another status \
    (NOT_SERVING); 2 the check could not be made (unreachable, TLS, unknown service)."
)]
pub(crate) struct HealthArgs {
    /// The service to ask about: empty for the server as a whole,
    /// fieldvault.v1.Vault or fieldvault.v1.KeyAdmin.
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    conn: Conn,
}

/// The largest health answer accepted (a real one is under 10 bytes).
const MAX_ANSWER_BYTES: usize = 4096;

/// The status as grpc.health.v1 names it (`SERVING`).
fn status_name(status: i32) -> String {
    match ServingStatus::try_from(status) {
        Ok(s) => s.as_str_name().to_owned(),
        Err(_) => format!("UNKNOWN({status})"),
    }
}

/// Exit 0 when the server answers SERVING, 1 when it answers anything else
/// (NOT_SERVING, SERVICE_UNKNOWN, …), 2 when the check itself fails
/// (unreachable, TLS, an unknown service).
pub(crate) async fn health(args: HealthArgs) -> ExitCode {
    let json = args.conn.json;
    let channel = match args.conn.channel().await {
        Ok(channel) => channel,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    // A health answer is a few bytes: anything much larger is not one.
    let mut client = HealthClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
    let response = args
        .conn
        .call_status()
        .bound(client.check(HealthCheckRequest {
            service: args.service.clone(),
        }))
        .await;
    let status = match response {
        Ok(r) => r.into_inner().status,
        Err(s) if s.code() == tonic::Code::NotFound => {
            let f = Failure::new(
                tonic::Code::NotFound,
                format!(
                    "--service {:?} is not registered on this server (ask about \"\" for the \
                     server as a whole, fieldvault.v1.Vault or fieldvault.v1.KeyAdmin)",
                    args.service
                ),
            );
            return call_failed(json, &f, 0);
        }
        Err(s)
            if s.code() == tonic::Code::OutOfRange
                && s.message()
                    .starts_with("Error, decoded message length too large") =>
        {
            let f = Failure::new(
                tonic::Code::OutOfRange,
                format!(
                    "the server's answer is larger than a health answer can be ({MAX_ANSWER_BYTES} \
                     bytes at most): is this a fieldvault server?"
                ),
            );
            return call_failed(json, &f, 0);
        }
        Err(s) => return call_failed(json, &Failure::from_status(&s), 0),
    };
    let name = status_name(status);
    if json {
        emit!(
            "{}",
            serde_json::json!({"service": args.service, "status": name})
        );
    } else if args.service.is_empty() {
        emit!("{name}");
    } else {
        emit!("{}: {name}", args.service);
    }
    ExitCode::from(if status == ServingStatus::Serving as i32 {
        EXIT_OK
    } else {
        EXIT_ITEM_FAILED
    })
}
