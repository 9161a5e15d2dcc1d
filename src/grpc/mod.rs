//! The wire edge: the only module that sees protobuf types. Service
//! implementations, protobuf <-> domain conversions, the one place vault
//! errors become gRPC statuses, and peer certificate -> caller identity.

mod admin;
mod backup;
pub mod codec;
mod error;
mod grants;
mod key_admin;
mod service;

pub use admin::AdminService;
pub use backup::{BackupService, CHUNK_BYTES as BACKUP_CHUNK_BYTES};
pub use grants::GrantsService;
pub use key_admin::KeyAdminService;
pub use service::{kind_to_pb, scheme_to_pb, VaultService};

/// Generated protobuf types and gRPC stubs for `fieldvault.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("fieldvault.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("fieldvault_descriptor");

    impl std::fmt::Debug for Field {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Field")
                .field("kind", &self.kind)
                .field("value", &"<redacted>")
                .field("region", &self.region)
                .field("scheme", &self.scheme)
                .field("address", &self.address)
                .field("ttl", &self.ttl)
                .finish()
        }
    }

    impl std::fmt::Debug for PostalAddress {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("PostalAddress(<redacted>)")
        }
    }

    impl std::fmt::Debug for RevealedValue {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RevealedValue")
                .field("kind", &self.kind)
                .field("reveal", &self.reveal)
                .field("value", &"<redacted>")
                .field("scheme", &self.scheme)
                .field("address", &self.address)
                .finish()
        }
    }
}
