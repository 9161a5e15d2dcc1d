//! How the client commands reach the server: address, certificates,
//! deadlines.

use super::DEFAULT_ADDR;
use super::DEFAULT_DATA_DIR;
use clap::Args;
use fieldvault::client::{ClientError, ClientTls, ConnectOptions};
use fieldvault::grpc::pb::vault_client::VaultClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Args)]
pub(crate) struct Conn {
    /// Server address, host:port.
    #[arg(long, default_value = DEFAULT_ADDR, env = "FIELDVAULT_ADDR")]
    addr: String,
    /// CA certificate that signed the server certificate (PEM).
    // Which of these and --dev-identity go together is checked in `tls()`,
    // to name the mistake rather than the first flag missing.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Use the dev identity NAME (orders, support, rotator, admin, intruder,
    /// fulfilment, approver1, approver2) from DATA_DIR/dev/ made by `serve
    /// --dev`: a name, not a path.
    #[arg(long, value_name = "NAME")]
    dev_identity: Option<String>,
    /// Data directory holding dev/ for --dev-identity (relative to the
    /// current directory).
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "FIELDVAULT_DATA_DIR")]
    data_dir: PathBuf,
    /// Give up connecting after this long: TCP, TLS handshake and HTTP/2
    /// together (10s, 500ms, 1m; a bare number is seconds).
    #[arg(long, default_value = "10s", env = "FIELDVAULT_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = fieldvault::client::parse_duration)]
    connect_timeout: Duration,
    /// Deadline of each call, from sending it to the last byte of the answer
    /// (10s, 500ms, 1m; a bare number is seconds).
    #[arg(long, default_value = "30s", env = "FIELDVAULT_TIMEOUT", value_name = "DURATION", value_parser = fieldvault::client::parse_duration)]
    timeout: Duration,
    /// Print every outcome as JSON on stdout, one object per line: each
    /// item, and a whole-call failure too.
    #[arg(long)]
    pub(crate) json: bool,
    /// What can be told locally about our certificate, for a refusal that
    /// comes during a call (set by [`Conn::channel`]).
    #[arg(skip)]
    hints: std::sync::OnceLock<Arc<[String]>>,
    /// Whether the server has sent anything (set by [`Conn::channel`]).
    #[arg(skip)]
    heard: std::sync::OnceLock<fieldvault::client::Heard>,
}

impl Conn {
    /// An mTLS client of the Vault service at `--addr`, for chunks of at
    /// most `batch` items: it accepts any answer the server may send for
    /// such a chunk (tonic's default limit, 4 MiB, is below what 1000
    /// largest addresses take, and an answer refused here was already
    /// revealed and audited by the server).
    pub(crate) async fn connect(&self, batch: usize) -> Result<VaultClient<Channel>, ClientError> {
        Ok(VaultClient::new(self.channel().await?)
            .max_decoding_message_size(answer_limit(batch))
            .max_encoding_message_size(usize::MAX))
    }

    /// An mTLS channel to `--addr`, for any service the server offers
    /// (health, reflection): connecting is bounded by `--connect-timeout`
    /// and every call on it by `--timeout`. Map a failed call's status
    /// through [`Conn::call_status`].
    pub(crate) async fn channel(&self) -> Result<Channel, ClientError> {
        fieldvault::client::check_addr(&self.addr)?;
        let tls = self.tls()?;
        let options = ConnectOptions {
            connect_timeout: self.connect_timeout,
            call_timeout: Some(self.timeout),
        };
        let connected = fieldvault::client::channel_heard(&self.addr, &tls, &options)
            .await
            .map_err(|e| match e {
                ClientError::ConnectTimeout { .. } => {
                    e.with_hint("(set with --connect-timeout or FIELDVAULT_CONNECT_TIMEOUT)")
                }
                e => e,
            })?;
        let _ = self.heard.set(connected.heard);
        let _ = self.hints.set(connected.refusal_hints);
        Ok(connected.channel)
    }

    /// A failed call's status, with a deadline that passed named as such:
    /// tonic reports its own call timeout as `Cancelled: Timeout expired`.
    pub(crate) fn call_status(&self) -> CallStatus {
        CallStatus {
            timeout: self.timeout,
            late: "",
            heard: self.heard.get().cloned(),
            hints: self.hints.get().cloned().unwrap_or_else(|| Arc::new([])),
        }
    }

    fn tls(&self) -> Result<ClientTls, ClientError> {
        let files = [
            ("--ca", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ];
        let usage = |m: String| Err(ClientError::Usage(m));
        match (&self.dev_identity, &self.ca, &self.cert, &self.key) {
            (Some(name), None, None, None) => ClientTls::dev(&self.data_dir, name),
            (None, Some(ca), Some(cert), Some(key)) => ClientTls::from_files(ca, cert, key),
            (Some(_), ..) => {
                usage("give either --dev-identity or --ca/--cert/--key, not both".into())
            }
            (None, None, None, None) => {
                usage("give either --dev-identity NAME or all of --ca, --cert and --key".into())
            }
            (None, ..) => {
                let missing: Vec<&str> = files
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(flag, _)| *flag)
                    .collect();
                usage(format!(
                    "{} missing: --ca, --cert and --key go together",
                    missing.join(" and ")
                ))
            }
        }
    }
}

/// Maps a failed call's status: a call timeout that passed is named as
/// such (tonic reports it as `Cancelled: Timeout expired`).
#[derive(Clone)]
pub(crate) struct CallStatus {
    timeout: std::time::Duration,
    /// What the server may have done before a deadline passed, said with
    /// it (see [`CallStatus::when_late`]).
    late: &'static str,
    /// Whether the server has sent anything on the channel, if known.
    heard: Option<fieldvault::client::Heard>,
    /// See [`fieldvault::client::Connected::refusal_hints`].
    hints: Arc<[String]>,
}

impl CallStatus {
    pub(crate) fn map(&self, status: tonic::Status) -> tonic::Status {
        if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" {
            return self.deadline_exceeded();
        }
        // The server refused our certificate with a TLS alert that came
        // after the connector's first-bytes window (a slow server, TLS
        // 1.3): it never accepted the connection, nothing was handled.
        if let Some(refused) = std::error::Error::source(&status)
            .and_then(|e| fieldvault::client::alert_refusal(e, &self.hints))
        {
            return tonic::Status::unauthenticated(refused);
        }
        // A connection that broke under a call (the server stopped, a
        // reset) comes as `Unknown: transport error`, or as `Cancelled:
        // operation was canceled` when the connection closed before the
        // request was sent on it: it is UNAVAILABLE, said with its cause.
        // (The server never cancels a call itself.)
        let broken = (status.code() == tonic::Code::Unknown
            && status.message() == "transport error")
            || (status.code() == tonic::Code::Cancelled
                && status.message() == "operation was canceled");
        if broken {
            let cause = std::error::Error::source(&status)
                .map(|e| format!(" ({})", fieldvault::client::error_chain(e)))
                .unwrap_or_default();
            return tonic::Status::unavailable(format!(
                "the connection to the server broke during the call{cause}: the server may have \
                 stopped; the items of this call may or may not have been handled"
            ));
        }
        status
    }

    /// The same, saying `late` (what the server may have done with the
    /// call before it passed) when the call deadline passes.
    pub(crate) fn when_late(self, late: &'static str) -> Self {
        Self { late, ..self }
    }

    fn deadline_exceeded(&self) -> tonic::Status {
        let mut late = String::new();
        if self.heard.as_ref().is_some_and(|h| !h.anything()) {
            late.push_str(
                "; the server sent nothing at all after the TLS handshake (is this a fieldvault \
                 server?)",
            );
        }
        if !self.late.is_empty() {
            late.push_str("; ");
            late.push_str(self.late);
        }
        tonic::Status::deadline_exceeded(format!(
            "no answer within {} (the call timeout; set with --timeout or FIELDVAULT_TIMEOUT){late}",
            fieldvault::client::format_duration(self.timeout)
        ))
    }

    /// Runs a unary call within `--timeout`, the answer's body included
    /// (tonic's own call timeout stops at the response headers: a server
    /// that sends them and then stalls would hang the call), and maps a
    /// failure through [`CallStatus::map`].
    pub(crate) async fn bound<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|s| self.map(s)),
            Err(_) => Err(self.deadline_exceeded()),
        }
    }
}

/// The largest answer accepted for a chunk of `batch` items: twice the
/// most the server may send for it (its `max_message_bytes` for that many
/// items bounds its answers too).
pub(crate) fn answer_limit(batch: usize) -> usize {
    fieldvault::limits::max_message_bytes(batch).saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_broken_under_a_call_is_unavailable_and_a_passed_deadline_is_named() {
        let status = CallStatus {
            timeout: Duration::from_secs(2),
            late: "",
            heard: None,
            hints: Arc::new([]),
        };
        let s = status.map(tonic::Status::cancelled("operation was canceled"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let s = status.map(tonic::Status::unknown("transport error"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(
            s.message()
                .starts_with("the connection to the server broke"),
            "{s:?}"
        );
        let s = status.map(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(s.message().starts_with("no answer within 2s"), "{s:?}");
        // Anything else is left as the server said it.
        let s = status.map(tonic::Status::unknown("something else"));
        assert_eq!(s.code(), tonic::Code::Unknown);
    }
}
