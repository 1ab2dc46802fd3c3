//! The crate's error type.

/// Everything that can go wrong while writing, reading or applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An invalid digest (or other OCI value).
    #[error(transparent)]
    Oci(#[from] rbuild_oci::Error),
    #[error("layer entry {0:?} escapes the target directory")]
    Escape(String),
    #[error("layer entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("not a valid tar stream: {0}")]
    BadTar(String),
    #[error("unsupported file type at {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
