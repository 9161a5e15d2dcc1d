//! Storage primitives. Each method is one step the vault composes; nothing
//! above this module knows which backend is in use (sled now; PostgreSQL is
//! planned, for several vault nodes).
//!
//! Durability contract: a write method returns `Ok` only once its data would
//! survive `kill -9` and power loss.

mod sled_store;

use crate::crypto::{SealedRecord, WrappedDataKey};
use crate::domain::TokenId;
use async_trait::async_trait;

pub use sled_store::{SledConfig, SledStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key already exists; nothing was written.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// Stored bytes do not decode: disk corruption or tampering.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        reason: &'static str,
    },
    /// The backend failed (I/O, lock, flush or sync). Writes are not
    /// acknowledged when this happens.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every wrapped data key, in version order.
    async fn data_keys(&self) -> Result<Vec<WrappedDataKey>, StoreError>;

    /// Adds a wrapped data key; `AlreadyExists` if its version is taken.
    /// Durable when it returns.
    async fn insert_data_key(&self, key: WrappedDataKey) -> Result<(), StoreError>;

    /// Adds records, all or none; `AlreadyExists` if any token is taken.
    /// Durable when it returns.
    async fn insert_records(&self, records: Vec<(TokenId, SealedRecord)>)
        -> Result<(), StoreError>;

    /// The records for `tokens`, in the same order (`None` when absent).
    async fn get_records(
        &self,
        tokens: Vec<TokenId>,
    ) -> Result<Vec<Option<SealedRecord>>, StoreError>;
}
