//! A build session between the command line and the crates that do the work:
//! plan (the frontend) → solve (the solver over the local worker) → export
//! (one [`Exporter`] per output), with interrupt handling, the created-time
//! policy and the last good state of a failed step.
//!
//! The engine does not render: it reports through the solver's progress
//! [`Event`](rbuild_solver::progress::Event)s to a [`Reporter`] the caller
//! implements, and returns typed errors ([`BuildError`]).

pub mod cache;
pub mod cache_files;
pub mod cache_mounts;
pub mod cache_registry;
pub mod cache_types;
pub mod checks;
mod error;
pub mod exporter;
pub mod pending;
mod report;
mod session;
pub mod squash;
pub mod transfer;

pub use error::{StepFailure, one_line};
pub use exporter::{
    DockerArchiveExporter, ExportContext, ExportError, Exporter, LocalExporter, OciLayoutExporter,
    Phases, RegistryExporter, StoreExporter, TarExporter,
};
pub use pending::{PendingError, PendingOutput};
pub use rbuild_snapshotter::layout::{self, StateLayout};
/// Garbage collection of the build cache and disk accounting (`builder prune`,
/// `system df`, the automatic collection after a build); implemented over the
/// worker's state.
pub mod gc;
/// Remote build contexts (a git repository, a tarball or Dockerfile URL).
pub use rbuild_worker::remote;
/// Unpacks an image of the store as its first `FROM` would (`import`, `load`).
pub use rbuild_worker::unpack_image;
pub use session::{BuildError, BuildRequest, Built, Reporter, build};
