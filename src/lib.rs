//! fieldvault: a gRPC data vault. See README.md and shared design notes.
//!
//! Layers (one-way): `grpc` → `vault` → (`domain`, `crypto`, `store`, `audit`);
//! `app` wires them; `config` reads settings; `devpki` makes dev certificates.

pub mod app;
pub mod audit;
pub mod client;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod devpki;
pub mod domain;
pub mod drain;
pub mod fsperm;
pub mod grpc;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod policy_file;
pub mod request;
pub mod reread;
pub mod store;
pub mod tls;
pub mod tls_reload;
pub mod vault;
