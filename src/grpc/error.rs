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
        VaultError::Unavailable(msg) => Status::unavailable(msg),
    }
}

/// A per-item error as a `google.rpc.Status`. `prefix` locates the item in
/// the request, e.g. `fields[3]` or `tokens[0]`.
pub(crate) fn item_status(prefix: &str, e: &ItemError) -> tonic_types::Status {
    let (code, message) = match e {
        ItemError::InvalidArgument { field, reason } => match field {
            Some(field) => (Code::InvalidArgument, format!("{prefix}.{field}: {reason}")),
            None => (Code::InvalidArgument, format!("{prefix}: {reason}")),
        },
        ItemError::NotFound => (Code::NotFound, format!("{prefix}: {e}")),
        ItemError::PermissionDenied(d) => (Code::PermissionDenied, format!("{prefix}: {d}")),
        ItemError::DataLoss => (Code::DataLoss, format!("{prefix}: {e}")),
        ItemError::Internal => (Code::Internal, format!("{prefix}: {e}")),
    };
    tonic_types::Status {
        code: code as i32,
        message,
        details: Vec::new(),
    }
}
