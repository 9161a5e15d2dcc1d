//! The vault's vocabulary: field kinds, tokens, callers, purposes, secret
//! values, validation, masking and policy decisions. Nothing here does I/O.

pub mod batch;
mod caller;
pub mod grant;
mod kind;
pub mod policy;
mod purpose;
pub mod retention;
mod secret;
pub mod time;
mod token;
pub mod value;

pub use caller::{CallerId, CallerIdError};
pub use kind::{FieldKind, UnknownFieldKind};
pub(crate) use purpose::breaks_a_line;
pub use purpose::{Justification, Purpose, TextError};
pub use retention::{KindRetention, Retention, TtlError};
pub use secret::Plaintext;
pub use token::{RecordId, TokenId, TokenMode, TokenModes, TokenParseError, TOKEN_PREFIX};
