//! The single mapping from vault errors to gRPC statuses. Messages carry
//! field names, identities, purposes and rule outcomes — never a value.

use crate::vault::{ItemError, VaultError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub(crate) fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

pub(crate) fn call_status(e: VaultError) -> Status {
    match e {
        VaultError::InvalidArgument { field, reason } => invalid_argument(field, &reason),
        VaultError::PermissionDenied(denial) => Status::permission_denied(denial.to_string()),
        VaultError::Unauthenticated(why) => Status::unauthenticated(why),
        VaultError::Unavailable(msg) => Status::unavailable(msg),
        VaultError::NotFound(msg) => Status::not_found(msg),
        VaultError::FailedPrecondition(msg) => Status::failed_precondition(msg),
        VaultError::Frozen { ref caller, .. } => {
            let mut details = ErrorDetails::new();
            details.add_precondition_failure_violation("FROZEN", caller.clone(), e.to_string());
            Status::with_error_details(Code::FailedPrecondition, e.to_string(), details)
        }
        VaultError::LimitReached {
            ref message,
            resets_at_unix_ms,
        } => {
            let mut details = ErrorDetails::new();
            let wait = resets_at_unix_ms.saturating_sub(crate::audit::now_unix_ms());
            details.set_retry_info(Some(std::time::Duration::from_millis(wait)));
            Status::with_error_details(Code::ResourceExhausted, message.clone(), details)
        }
        VaultError::QuotaExceeded {
            ref caller,
            ref rule,
            ref quota,
            resets_at_unix_ms,
            ..
        } => {
            let mut details = ErrorDetails::new();
            details.add_quota_failure_violation(
                format!("caller:{caller} rule:{rule}"),
                format!("{quota}"),
            );
            let wait = resets_at_unix_ms.saturating_sub(crate::audit::now_unix_ms());
            details.set_retry_info(Some(std::time::Duration::from_millis(wait)));
            Status::with_error_details(Code::ResourceExhausted, e.to_string(), details)
        }
    }
}

/// A `google.rpc.BadRequest` detail with one field violation.
fn bad_request(field: &str, description: &str) -> prost_types::Any {
    use prost::Message;
    let detail = tonic_types::pb::BadRequest {
        field_violations: vec![tonic_types::pb::bad_request::FieldViolation {
            field: field.to_owned(),
            description: description.to_owned(),
            ..Default::default()
        }],
    };
    prost_types::Any {
        type_url: "type.googleapis.com/google.rpc.BadRequest".to_owned(),
        value: detail.encode_to_vec(),
    }
}

/// A per-item error as a `google.rpc.Status`. `prefix` locates the item in
/// the request, e.g. `fields[3]` or `tokens[0]`. INVALID_ARGUMENT carries a
/// `google.rpc.BadRequest` naming the exact field (`fields[3].value`).
pub(crate) fn item_status(prefix: &str, e: &ItemError) -> tonic_types::Status {
    let (code, message, details) = match e {
        ItemError::InvalidArgument { field, reason } => {
            let path = match field {
                Some(field) => format!("{prefix}.{field}"),
                None => prefix.to_owned(),
            };
            let detail = bad_request(&path, reason);
            (
                Code::InvalidArgument,
                format!("{path}: {reason}"),
                vec![detail],
            )
        }
        ItemError::PermissionDenied(d) => {
            (Code::PermissionDenied, format!("{prefix}: {d}"), Vec::new())
        }
        ItemError::NotFound | ItemError::NotIssued | ItemError::Expired => {
            (Code::NotFound, format!("{prefix}: {e}"), Vec::new())
        }
        ItemError::DataLoss => (Code::DataLoss, format!("{prefix}: {e}"), Vec::new()),
        ItemError::Unavailable => (Code::Unavailable, format!("{prefix}: {e}"), Vec::new()),
        ItemError::Internal => (Code::Internal, format!("{prefix}: {e}"), Vec::new()),
    };
    tonic_types::Status {
        code: code as i32,
        message,
        details,
    }
}
