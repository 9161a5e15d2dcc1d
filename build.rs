//! Compiles the public contract with a vendored protoc, so the build needs
//! nothing but cargo.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry plaintext get a hand-written, redacted Debug.
    config.skip_debug([
        "fieldvault.v1.Field",
        "fieldvault.v1.RevealedValue",
        "fieldvault.v1.PostalAddress",
    ]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types")
        // Request messages are checked against their bounds before they are
        // decoded (decoding amplifies: src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::BoundedCodec")
        .file_descriptor_set_path(out_dir.join("fieldvault_descriptor.bin"))
        // error_details.proto generates no Rust (google.rpc is tonic_types'),
        // but it lands in the descriptor set, so reflection can describe the
        // google.rpc.BadRequest that per-item errors carry.
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/fieldvault/v1/vault.proto"),
                PathBuf::from("proto/fieldvault/v1/key_admin.proto"),
                PathBuf::from("proto/fieldvault/v1/admin.proto"),
                PathBuf::from("proto/fieldvault/v1/backup.proto"),
                PathBuf::from("proto/fieldvault/v1/grants.proto"),
                PathBuf::from("proto/google/rpc/error_details.proto"),
            ],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
