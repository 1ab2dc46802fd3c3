//! The OCI distribution client: resolve a reference to a manifest (an index to
//! a platform's), pull blobs streaming and verified, push blobs (HEAD, mount
//! from another repository, chunked upload with a monolithic fallback) and
//! manifests as exact bytes; anonymous, Basic and Bearer-token authentication;
//! https with the system's roots plus extra CAs per registry, plain http for
//! loopback and insecure registries; retries with backoff on connection
//! errors, 5xx and 429 (`Retry-After`).
//!
//! It knows the protocol only: nothing of builds or of the local store.
//! Manifests travel as raw bytes and their digest is the digest of those
//! bytes; nothing is re-serialised.

mod api;
pub mod auth;
mod client;
pub mod config;
pub mod error;
pub mod reference;
mod tls;

pub use api::{BlobStream, Fetched, Mount, Resolved, parse_manifest, select_platform};
pub use auth::{Anonymous, CredentialSource, Credentials, Fixed};
pub use client::{Client, Options};
pub use config::{ConfigError, DockerConfig};
pub use error::{Error, Result};
pub use reference::{RemoteRef, is_loopback};
