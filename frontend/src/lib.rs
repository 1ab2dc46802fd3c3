//! rbuild-frontend: a parsed Dockerfile and build options to a build graph of
//! solver ops and the image config of the target stage (`BuildKit`'s
//! `dockerfile2llb`), plus the `.dockerignore` matcher ([`dockerignore`]).
//!
//! Pure: nothing here does I/O; base images are looked up through the caller's
//! [`ImageResolver`], and only for stages the target needs.
//!
//! ```text
//! let plan = build_plan(&rbuild_parser::parse(src)?, &opts, &store)?;
//! solver.solve(&plan.graph, &[plan.target])           // the rootfs
//! diff snapshot(layer_vertices[i]) against [i-1] (the first against base's layers)
//! → one layer per history entry of plan.image without empty_layer, after base's
//! ```
//!
//! Decisions worth knowing:
//! - Vertex names are `BuildKit`'s progress names (`[stage 2/5] RUN make`) with the
//!   Dockerfile location; history `created_by` texts are `BuildKit`'s, so
//!   `rbuild history` reads like `docker history`.
//! - The build context is one `SourceOp::Context` vertex whose `include_patterns`
//!   (and `follow_paths`) are the paths COPY/ADD/bind mounts select from it (none
//!   when one of them selects `.`), and whose `exclude_patterns` are
//!   [`BuildOptions::dockerignore`].
//! - COPY/ADD heredocs are `Mkfile`s in an empty tree, copied like any source.
//! - `COPY --link`/`ADD --link` are planned as `BuildKit` plans them: a copy onto
//!   an empty tree, then a `MergeOp` of the stage and that tree (one new layer).
//! - `--chown` names stay names ([`rbuild_ops::UserRef::Name`]): the worker
//!   resolves them against the destination's `/etc/passwd` and `/etc/group`. So
//!   does the `USER` owner of a WORKDIR `mkdir`.
//! - `ADD` of git sources is refused; `ADD` of `http(s)://` URLs is an
//!   `SourceOp::Http` vertex named after the URL's last path element.

pub mod dockerignore;
mod error;
pub mod gitref;
pub mod lint;
mod plan;
mod scope;
mod util;

pub use error::{FrontendError, ResolveError};
// The image config model and platforms are `rbuild_oci`'s.
pub use plan::{
    BuildOptions, BuildPlan, Entitlements, HISTORY_COMMENT, ImageResolver, NamedContext,
    ResolvedImage, RunExtras, build_plan, plan_source,
};
pub use rbuild_oci::{
    ContainerConfig, DEFAULT_PATH, Empty, Healthcheck, History, ImageConfig, Platform, RootFs,
};
pub use rbuild_ops::ImagePin;
