//! What the client commands print: one vocabulary for text and `--json`
//! (gRPC codes by their canonical names, field kinds, reveals and schemes
//! as the command line spells them) and the exit codes.

use fieldvault::domain::value::IdScheme;
use fieldvault::domain::FieldKind;
use fieldvault::grpc::pb;
use std::process::ExitCode;
use tonic_types::{RpcStatusExt, StatusExt};

/// Every item was answered and none failed.
pub(crate) const EXIT_OK: u8 = 0;
/// Every item was answered and at least one failed (its line says why).
pub(crate) const EXIT_ITEM_FAILED: u8 = 1;
/// The call failed as a whole (connection, TLS, a refused call, bad
/// arguments, unreadable input): the output is missing some or all items.
pub(crate) const EXIT_CALL_FAILED: u8 = 2;

/// Prints one output line. A reader that went away (`| head -1`) ends
/// the command quietly, exit code 2: the output it got is incomplete.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if writeln!(out, $($arg)*).and_then(|()| out.flush()).is_err() {
            std::process::exit(i32::from($crate::cli::output::EXIT_CALL_FAILED));
        }
    }};
}
pub(crate) use emit;

/// The canonical name of a gRPC status code, as in the gRPC spec and the
/// README (`INVALID_ARGUMENT`, not `InvalidArgument`).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A field kind as `--kind` spells it (`phone`), `unknown(N)` for a number
/// this client does not know.
pub(crate) fn kind_name(kind: i32) -> String {
    u8::try_from(kind)
        .ok()
        .and_then(FieldKind::from_code)
        .map_or_else(|| format!("unknown({kind})"), |k| k.as_str().to_owned())
}

/// A reveal as the policy spells it (`full`, `masked`, `none`).
pub(crate) fn reveal_name(reveal: i32) -> String {
    match pb::Reveal::try_from(reveal) {
        Ok(pb::Reveal::Full) => "full".into(),
        Ok(pb::Reveal::Masked) => "masked".into(),
        Ok(pb::Reveal::None) => "none".into(),
        _ => format!("unknown({reveal})"),
    }
}

/// A national ID scheme as `--scheme` spells it (`us_ssn`); `None` when
/// unspecified.
pub(crate) fn scheme_name(scheme: i32) -> Option<String> {
    if scheme == pb::NationalIdScheme::Unspecified as i32 {
        return None;
    }
    Some(
        IdScheme::ALL
            .into_iter()
            .find(|s| fieldvault::grpc::scheme_to_pb(*s) as i32 == scheme)
            .map_or_else(|| format!("unknown({scheme})"), |s| s.as_str().to_owned()),
    )
}

/// A structured address as JSON with the proto's field names: the same
/// shape `tokenize --address-json` reads.
pub(crate) fn address_json(a: &pb::PostalAddress) -> serde_json::Value {
    serde_json::json!({
        "country": a.country,
        "region": a.region,
        "city": a.city,
        "district": a.district,
        "street_lines": a.street_lines,
        "postal_code": a.postal_code,
        "recipient": a.recipient,
    })
}

/// A token mode as the config spells it (`random`, `deterministic`), or
/// `unknown` (a record stored before records carried their mode).
pub(crate) fn mode_name(mode: i32) -> String {
    match pb::TokenMode::try_from(mode) {
        Ok(pb::TokenMode::Random) => "random".into(),
        Ok(pb::TokenMode::Deterministic) => "deterministic".into(),
        Ok(pb::TokenMode::Unspecified) => "unknown".into(),
        Err(_) => format!("unknown({mode})"),
    }
}

/// A time in milliseconds since the epoch as RFC 3339, or `none` (0).
fn time_or(unix_ms: u64, none: &str) -> String {
    if unix_ms == 0 {
        none.to_owned()
    } else {
        fieldvault::domain::time::rfc3339(unix_ms)
    }
}

/// Token metadata on one line, tab-separated: token, kind, created,
/// expires (`never`), key version (`v3`), mode. Never a value.
pub(crate) fn token_info_text(token: &str, info: &pb::TokenInfo) -> String {
    format!(
        "{token}\t{}\tcreated {}\texpires {}\tkey v{}\t{}",
        kind_name(info.kind),
        time_or(info.created_unix_ms, "unknown"),
        time_or(info.expires_unix_ms, "never"),
        info.key_version,
        mode_name(info.mode)
    )
}

/// Token metadata as JSON: times as milliseconds (null: unknown, never)
/// and as RFC 3339.
pub(crate) fn token_info_json(info: &pb::TokenInfo) -> serde_json::Value {
    let ms = |v: u64| (v != 0).then_some(v);
    let text = |v: u64| (v != 0).then(|| fieldvault::domain::time::rfc3339(v));
    serde_json::json!({
        "token": info.token,
        "kind": kind_name(info.kind),
        "created_unix_ms": ms(info.created_unix_ms),
        "created": text(info.created_unix_ms),
        "expires_unix_ms": ms(info.expires_unix_ms),
        "expires": text(info.expires_unix_ms),
        "key_version": info.key_version,
        "mode": mode_name(info.mode),
    })
}

/// A failure, of one item or of a whole call, in the printed vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: tonic::Code,
    pub(crate) message: String,
    /// `google.rpc.BadRequest` field violations: (field, description).
    pub(crate) violations: Vec<(String, String)>,
}

/// The field violations of a `google.rpc.BadRequest` detail, if any.
fn violations(bad_request: Option<tonic_types::BadRequest>) -> Vec<(String, String)> {
    bad_request
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

impl Failure {
    pub(crate) fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// An INVALID_ARGUMENT naming `field`, shaped like the server's own.
    pub(crate) fn invalid(field: &str, reason: &str) -> Self {
        Self {
            code: tonic::Code::InvalidArgument,
            message: format!("{field}: {reason}"),
            violations: vec![(field.to_owned(), reason.to_owned())],
        }
    }

    /// A per-item error the server sent.
    pub(crate) fn from_item(s: &tonic_types::Status) -> Self {
        Self {
            code: tonic::Code::from_i32(s.code),
            message: s.message.clone(),
            violations: violations(s.get_details_bad_request()),
        }
    }

    /// A whole call the server (or the transport) refused.
    pub(crate) fn from_status(s: &tonic::Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_owned(),
            violations: violations(s.get_details_bad_request()),
        }
    }

    pub(crate) fn from_client(e: &fieldvault::client::ClientError) -> Self {
        Self::new(e.code(), e.to_string())
    }

    /// Rewrites a leading `fields[k]` / `tokens[k]` in the message and the
    /// violations with `map(k)`: the server counts within one chunk, the
    /// output counts within the whole input.
    pub(crate) fn reindex(mut self, list: &str, map: impl Fn(usize) -> Option<usize>) -> Self {
        self.message = reindex_path(&self.message, list, &map);
        for (field, _) in &mut self.violations {
            *field = reindex_path(field, list, &map);
        }
        self
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let mut obj = serde_json::json!({
            "code": code_name(self.code),
            "message": self.message,
        });
        if !self.violations.is_empty() {
            obj["field_violations"] = self
                .violations
                .iter()
                .map(|(field, description)| {
                    serde_json::json!({"field": field, "description": description})
                })
                .collect();
        }
        obj
    }

    /// `INVALID_ARGUMENT: fields[1].value: is empty`
    pub(crate) fn text(&self) -> String {
        format!("{}: {}", code_name(self.code), self.message)
    }
}

fn reindex_path(s: &str, list: &str, map: &impl Fn(usize) -> Option<usize>) -> String {
    let Some(rest) = s.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
        return s.to_owned();
    };
    let Some(end) = rest.find(']') else {
        return s.to_owned();
    };
    match rest[..end].parse::<usize>().ok().and_then(map) {
        Some(k) => format!("{list}[{k}]{}", &rest[end + 1..]),
        None => s.to_owned(),
    }
}

/// Prints a whole-call failure: a JSON object on stdout with `--json`
/// (`{"error": {...}, "unanswered_from": N}`), else a line on stderr.
/// `unanswered_from` is the index of the first input item that got no
/// answer (0: none did). Returns [`EXIT_CALL_FAILED`].
pub(crate) fn call_failed(json: bool, failure: &Failure, unanswered_from: usize) -> ExitCode {
    if json {
        let obj =
            serde_json::json!({ "error": failure.json(), "unanswered_from": unanswered_from });
        emit!("{obj}");
    } else {
        eprintln!("fieldvault: {}", failure.text());
        if let Some(n) = Some(unanswered_from).filter(|n| *n > 0) {
            eprintln!(
                "fieldvault: items from index {n} (input line {}) on were not answered; \
                 the output above is complete up to there",
                n + 1
            );
        }
    }
    ExitCode::from(EXIT_CALL_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_by_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::DataLoss), "DATA_LOSS");
    }

    #[test]
    fn kinds_reveals_and_schemes_print_as_the_command_line_spells_them() {
        assert_eq!(kind_name(pb::FieldKind::Phone as i32), "phone");
        assert_eq!(kind_name(pb::FieldKind::NationalId as i32), "national_id");
        assert_eq!(kind_name(99), "unknown(99)");
        assert_eq!(reveal_name(pb::Reveal::Full as i32), "full");
        assert_eq!(reveal_name(pb::Reveal::Masked as i32), "masked");
        assert_eq!(
            scheme_name(pb::NationalIdScheme::UsSsn as i32).as_deref(),
            Some("us_ssn")
        );
        assert_eq!(scheme_name(0), None);
    }

    #[test]
    fn chunk_indices_are_rewritten_to_input_indices() {
        let f =
            Failure::invalid("fields[3].value", "is empty").reindex("fields", |k| Some(k + 1000));
        assert_eq!(f.message, "fields[1003].value: is empty");
        assert_eq!(f.violations[0].0, "fields[1003].value");
        let f = Failure::new(tonic::Code::NotFound, "tokens[0]: no record")
            .reindex("tokens", |k| Some(k + 5));
        assert_eq!(f.message, "tokens[5]: no record");
        // Other paths are left alone.
        let f = Failure::new(tonic::Code::InvalidArgument, "purpose: is required")
            .reindex("fields", |k| Some(k + 5));
        assert_eq!(f.message, "purpose: is required");
    }
}
