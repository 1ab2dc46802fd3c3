//! `SourceOp::Image`: an image of the local store unpacked as a chain of
//! snapshots, one per layer.

use rbuild_snapshotter::snapshots::SnapshotId;
use rbuild_solver::progress::VertexLogger;
use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, err, snap_ref};

/// The snapshot chain of `reference` (or of the image `digest` names) in the
/// local image store.
pub(crate) fn pull_local(
    inner: &Inner,
    reference: &str,
    digest: Option<&str>,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    let not_found = |e: rbuild_image::Error| {
        ExecError::msg(format!(
            "{reference}: image not found in the local store ({e}); pull or load it first"
        ))
    };
    // The image the plan resolved (by ID), held against a concurrent prune or
    // rmi for the rest of the build; else the reference.
    let by_digest = digest.and_then(|d| inner.images.resolve_and_hold(d).ok());
    let img = match by_digest {
        Some(i) => i,
        None => match inner.images.resolve_and_hold(reference) {
            Ok(i) => i,
            Err(e) => {
                // `docker.io/library/x:tag` may be stored as `x:tag`.
                let short = reference
                    .strip_prefix("docker.io/library/")
                    .or_else(|| reference.strip_prefix("docker.io/"));
                match short.map(|s| inner.images.resolve_and_hold(s)) {
                    Some(Ok(i)) => i,
                    _ => return Err(not_found(e)),
                }
            }
        },
    };
    let mut parent: Option<SnapshotId> = None;
    let total = img.diff_ids().len() as u64;
    for (i, d) in img.diff_ids().iter().enumerate() {
        logger.progress(i as u64, Some(total));
        let blob = inner.images.open_blob(d).map_err(err)?;
        let r = std::io::BufReader::with_capacity(256 * 1024, blob);
        parent = Some(
            inner
                .snapshots
                .from_layer(parent.as_ref(), d, r)
                .map_err(err)?,
        );
    }
    match parent {
        Some(id) => Ok(snap_ref(&id)),
        None => inner.scratch(),
    }
}
