//! fieldvault: a gRPC data vault. See README.md and shared design notes.
//!
//! Layers (one-way): `grpc` → `vault` → (`domain`, `crypto`, `store`, `audit`);
//! `app` wires them; `config` reads settings; `devpki` makes dev certificates.

pub mod crypto;
pub mod domain;
pub mod store;
pub mod audit;
pub mod vault;
pub mod grpc;
pub mod app;
pub mod client;
pub mod config;
pub mod dev;
pub mod devpki;
pub mod tls;
