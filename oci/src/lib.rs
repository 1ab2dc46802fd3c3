//! The OCI and Docker types every other rbuild crate shares, in one place: no I/O.
//!
//! - [`Digest`]: `sha256:<hex>` content digests.
//! - [`Reference`]: image references with docker's normalisation (`docker.io/library/`).
//! - [`Platform`] and [`host_architecture`]: `os/arch[/variant]`, GOARCH names.
//! - [`config`]: the image config (OCI fields plus Docker's Healthcheck, `OnBuild`,
//!   Shell, `ArgsEscaped`; unknown fields kept), history, rootfs, [`DEFAULT_PATH`].
//! - [`manifest`]: manifests, indexes, descriptors, media types.
//! - [`json::canonical`]: sorted-key JSON, so the same content has the same digest.
//! - [`time`]: RFC 3339 formatting and parsing.
//! - [`path::clean`]: Go's `path.Clean`.

pub mod config;
pub mod digest;
pub mod error;
pub mod json;
pub mod manifest;
pub mod path;
pub mod platform;
pub mod reference;
pub mod time;

pub use config::{ContainerConfig, DEFAULT_PATH, Empty, Healthcheck, History, ImageConfig, RootFs};
pub use digest::Digest;
pub use error::{Error, Result};
pub use platform::{Platform, host_architecture};
pub use reference::Reference;
