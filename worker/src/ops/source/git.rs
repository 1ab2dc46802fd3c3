//! `SourceOp::Git`: the commit the frontend resolved, checked out by
//! [`crate::git::checkout`] into a snapshot, or the checkout of the same
//! commit kept by [`crate::gitstore`] (shared with git build contexts).

use rbuild_solver::progress::{Stream, VertexLogger};
use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, snap_ref};

pub(crate) fn fetch(
    inner: &Inner,
    c: &crate::git::Checkout<'_>,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    let remote = crate::git::redact(c.remote);
    let stored = crate::gitstore::checkout(&inner.snapshots, &inner.state_root, c, || {
        logger.log(Stream::Stdout, format!("fetching {remote} at {}", c.commit));
    })?;
    if !stored.fetched {
        logger.log(
            Stream::Stdout,
            format!("using the stored checkout of {remote} at {}", c.commit),
        );
    }
    Ok(snap_ref(&stored.snapshot))
}
