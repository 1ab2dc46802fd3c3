//! `SourceOp::Git`: the commit the frontend resolved, checked out by
//! [`crate::git::checkout`] into a new snapshot.

use rbuild_snapshotter::layout::StateLayout;
use rbuild_solver::progress::{Stream, VertexLogger};
use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, err, snap_ref};

pub(crate) fn fetch(
    inner: &Inner,
    c: &crate::git::Checkout<'_>,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    logger.log(
        Stream::Stdout,
        format!("fetching {} at {}", c.remote, c.commit),
    );
    let tmp = StateLayout::new(&inner.state_root).tmp();
    fs_err::create_dir_all(&tmp).map_err(err)?;
    let scratch = tempfile::Builder::new()
        .prefix(&inner.snapshots.temp_prefix("git"))
        .tempdir_in(&tmp)
        .map_err(err)?;
    let active = inner.snapshots.prepare(None, "git").map_err(err)?;
    match crate::git::checkout(c, &active.upper, scratch.path()) {
        Ok(()) => Ok(snap_ref(&inner.snapshots.commit(active).map_err(err)?)),
        Err(e) => {
            let _ = inner.snapshots.abort(active);
            Err(e)
        }
    }
}
