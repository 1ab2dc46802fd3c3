//! rbuild-frontend: a parsed Dockerfile and build options to a build graph of
//! solver ops and the image config of the target stage (`BuildKit`'s
//! `dockerfile2llb`), plus the `.dockerignore` matcher.
//!
//! Pure: the only outside world is the caller's [`ImageResolver`].
//!
//! `COPY --link` is planned as a plain copy onto the current state (same files,
//! same layer); the `MergeOp` rebasing `BuildKit` does is not used.

pub mod dockerignore;
mod error;
mod image;
mod plan;
mod util;

pub use error::{FrontendError, ResolveError};
pub use image::{
    ContainerConfig, DEFAULT_PATH, Empty, Healthcheck, History, ImageConfig, Platform, RootFs,
};
pub use plan::{
    BuildOptions, BuildPlan, HISTORY_COMMENT, ImageResolver, ResolvedImage, build_plan, plan_source,
};
