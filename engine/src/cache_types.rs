//! What the modules of the build cache share (`cache`, `cache_mounts`,
//! `cache_registry`): its error and the registry source of an import as
//! `cache` sees it. A leaf: it names no module of the crate, so the cache
//! modules depend on it and not on each other both ways.

use std::path::{Path, PathBuf};

use rbuild_image::Digest;
use rbuild_oci::manifest::Descriptor;

/// Errors exporting or importing a build cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a build cache: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot lock {}: {errno}", .path.display())]
    Lock { path: PathBuf, errno: nix::Error },
    #[error("writing a layer of {}: {source}", .snapshot)]
    Layer {
        snapshot: String,
        #[source]
        source: rbuild_solver::ExecError,
    },
    /// A registry's cache (`type=registry`, an image's inline cache).
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: Box<rbuild_registry::Error>,
    },
    #[error("{reference}: {reason}")]
    Remote { reference: String, reason: String },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blobs of a cache in a registry, as an import reads them
/// (`cache_registry`'s `RemoteCache`).
pub trait RemoteBlobs: Send + Sync {
    /// The source as messages name it (its reference).
    fn name(&self) -> &str;

    /// The manifest's descriptor of layer blob `d`.
    fn descriptor(&self, d: &Digest) -> Option<&Descriptor>;

    /// Downloads the layer blob `d`, verified against its digest and size;
    /// the file goes when the path is dropped.
    fn fetch_blob(&self, d: &Digest) -> Result<tempfile::TempPath, CacheError>;

    /// The source as its own type (the registry transport gets its
    /// `RemoteCache` back).
    fn as_any(&self) -> &dyn std::any::Any;
}
