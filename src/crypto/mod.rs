//! AES-256-GCM sealing with associated data, the master key, and the keyring
//! of versioned data keys wrapped under it.
//!
//! Key hierarchy: the master key (KEK) wraps each data key (DEK); records are
//! sealed under the active DEK. A record's associated data binds its token
//! id, field kind and key version, so a ciphertext moved to another token,
//! relabelled as another kind or replayed under another version fails to open.

mod keyring;
mod master;
mod token_cipher;

pub use keyring::{
    unwrap_one, BlindIndex, KeyPurpose, KeyVersion, Keyring, RecordMeta, SealedRecord, WrappedKey,
};
pub use master::{MasterKey, MasterKeyError};
pub use token_cipher::{TokenCipher, TOKEN_BLOCK_LEN, TOKEN_BLOCK_VERSION};

/// 64 bits from the operating system's random source.
pub fn random_u64() -> u64 {
    use aes_gcm::aead::rand_core::RngCore;
    aes_gcm::aead::OsRng.next_u64()
}

/// Length of an AES-GCM nonce in bytes (96 bits, random per seal).
pub const NONCE_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, or ciphertext, nonce or associated
    /// data altered. Never returns partial plaintext.
    #[error("ciphertext failed authentication (altered, moved, or sealed under another key)")]
    Integrity,
    #[error("record is sealed under key version {0}, which this keyring does not hold")]
    UnknownKeyVersion(u32),
    #[error(
        "data key version {0} could not be unwrapped: the master key does not match this keyring"
    )]
    Unwrap(u32),
    #[error("encryption failed")]
    Seal,
    #[error("keyring holds no data key")]
    Empty,
    /// The stored keys do not hold exactly one token key (version 1): a
    /// store made by a development build before tokens encrypted a
    /// sequence number, or tampering.
    #[error(
        "the store's keys hold no token key, or more than one: a store made before tokens \
         encrypted a sequence number cannot be read by this version; start from a new data \
         dir (`fieldvault serve --dev --reset` for the dev setup)"
    )]
    TokenKey,
}
