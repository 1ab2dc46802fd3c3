//! The crate's error type.

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Layer(#[from] rbuild_snapshotter::Error),
    /// An invalid digest, reference or image config.
    #[error(transparent)]
    Oci(#[from] rbuild_oci::Error),
    /// The state root's format stamp is newer or unreadable.
    #[error(transparent)]
    Format(#[from] rbuild_snapshotter::layout::FormatError),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("ambiguous image ID {0:?}: it matches several images")]
    Ambiguous(String),
    #[error("blob {expected} does not match its content (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    #[error("invalid archive: {0}")]
    BadArchive(String),
    #[error("invalid tarball: {0}")]
    BadTar(String),
    #[error("conflict: unable to delete {id} (must be forced) - {reason}")]
    Conflict { id: String, reason: String },
    #[error(
        "conflict: unable to delete {0} (cannot be forced) - image is being used by a running \
         rbuild process"
    )]
    InUse(String),
    #[error("state index {path} is corrupt: {reason}")]
    CorruptIndex { path: String, reason: String },
    #[error("state root {path} {reason}")]
    UnsafeRoot { path: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
