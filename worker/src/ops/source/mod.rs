//! `SourceOp`: scratch, a build context, an image from the local store
//! ([`image`]), a download ([`http`]), a git checkout ([`git`]), as `BuildKit`'s source op hands each
//! kind of identifier to its source.

pub(crate) mod git;
pub(crate) mod http;
pub(crate) mod image;

use rbuild_ops::SourceOp;
use rbuild_solver::progress::VertexLogger;
use rbuild_solver::{ExecError, ResultRef};

use crate::state::Inner;

pub(crate) fn run(
    inner: &Inner,
    op: &SourceOp,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    match op {
        SourceOp::Scratch => inner.scratch(),
        SourceOp::Context { name, .. } => {
            if inner.contexts.contains_key(name) {
                Ok(ResultRef::new(format!("ctx:{name}")))
            } else {
                Err(ExecError::msg(format!("no build context named {name:?}")))
            }
        }
        SourceOp::Image { reference, pin, .. } => image::pull_local(inner, reference, pin, logger),
        SourceOp::Http {
            url,
            checksum,
            filename,
            chmod,
        } => http::download(
            inner,
            url,
            checksum.as_deref(),
            filename.as_deref(),
            *chmod,
            logger,
        ),
        SourceOp::Git {
            remote,
            reference,
            commit,
            subdir,
            keep_git_dir,
            submodules,
        } => git::fetch(
            inner,
            &crate::git::Checkout {
                remote,
                reference,
                commit,
                subdir,
                keep_git_dir: *keep_git_dir,
                submodules: *submodules,
            },
            logger,
        ),
    }
}
