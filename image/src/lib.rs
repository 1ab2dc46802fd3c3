//! The local image store and image formats.
//!
//! - [`Store`]: blobs by sha256 under `blobs/sha256/`, image records and tags in an
//!   index (`index.json`) written atomically under a lock file; [`Txn`] stages
//!   blobs and images and commits them in one step.
//! - [`config`] (from `rbuild_oci`): the image config (OCI fields plus Docker's Healthcheck, `OnBuild`,
//!   Shell, `ArgsEscaped`; unknown fields kept).
//! - [`json::canonical`]: sorted-key JSON, so the same content has the same ID.
//! - [`archive`]: `save` (docker-archive + OCI layout in one tarball) and `load`
//!   (legacy and current docker-archive, OCI layout; plain or compressed).
//! - [`import`]: a rootfs tarball as a one-layer image.

pub mod archive;
pub mod error;
pub mod import;
pub mod store;

// The OCI types are `rbuild_oci`'s; re-exported under their old paths.
pub use rbuild_oci::{
    ContainerConfig, Digest, Healthcheck, History, ImageConfig, Reference, RootFs, config, json,
    manifest, reference, time,
};
pub use rbuild_snapshotter::Compression;

pub use error::{Error, Result};
pub use store::{Blob, Image, Layer, LayerSource, RemoveEvent, Store, Txn};
