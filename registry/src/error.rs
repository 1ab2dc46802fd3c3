//! The registry client's errors: each names the registry and says what to do.

use rbuild_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach registry {registry}: {reason}")]
    Connect { registry: String, reason: String },
    /// The connection broke during a request (a registry that died, a reset).
    #[error("registry {registry}: the connection broke: {reason}")]
    Broken { registry: String, reason: String },
    #[error(
        "registry {registry}: x509: certificate signed by unknown authority ({reason}); put the \
         registry's CA certificate in {ca_path}, or mark the registry insecure"
    )]
    UnknownAuthority {
        registry: String,
        reason: String,
        /// Where the CA would be read from.
        ca_path: String,
    },
    #[error("registry {registry}: TLS files in {dir}: {reason}")]
    CertsDir {
        registry: String,
        dir: String,
        reason: String,
    },
    #[error("registry {registry}: TLS: {reason}")]
    Tls { registry: String, reason: String },
    #[error("registry {registry}: authentication required (401): run `rbuild login {registry}`")]
    Unauthorized { registry: String },
    #[error("login to {registry} failed: unauthorized: incorrect username or password")]
    LoginRefused { registry: String },
    #[error("registry {registry}: access to {repository} denied (403){detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry}: getting a token from {realm}: {reason}")]
    Token {
        registry: String,
        realm: String,
        reason: String,
    },
    #[error("manifest unknown: {reference} does not exist in the registry")]
    ManifestUnknown { reference: String },
    #[error("registry {registry}: blob {digest} unknown in {repository}")]
    BlobUnknown {
        registry: String,
        repository: String,
        digest: Digest,
    },
    #[error(
        "{reference}: Docker Image manifest version 2, schema 1 is deprecated and not \
         supported; push the image again with a current client"
    )]
    Schema1 { reference: String },
    #[error("{reference}: no image for platform {wanted} in the index; it has: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference}: bad manifest: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("registry {registry}: {method} {url}: {status}{detail}")]
    Status {
        registry: String,
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: {reason}")]
    Protocol { registry: String, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether trying again may help: a connection that failed or broke.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Broken { .. })
    }
}

/// The innermost cause of an error (`Connection reset by peer (os error 104)`).
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut root = e;
    while let Some(c) = root.source() {
        root = c;
    }
    root.to_string()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
