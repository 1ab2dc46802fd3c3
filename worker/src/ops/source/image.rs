//! `SourceOp::Image`: an image of the local store unpacked as a chain of
//! snapshots, one per layer.

use rbuild_image::{Digest, Image, Store};
use rbuild_ops::ImagePin;
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};
use rbuild_solver::progress::VertexLogger;
use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, err, snap_ref};

/// The snapshot chain of the image `pin` names in the local image store
/// (`reference` is only for messages: the name is never looked up again, so a
/// tag moved since planning cannot swap the content under the key).
pub(crate) fn pull_local(
    inner: &Inner,
    reference: &str,
    pin: &ImagePin,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    let digest = Digest::parse(pin.digest()).map_err(err)?;
    let img = match pin {
        // Held against a concurrent prune or rmi for the rest of the build (the
        // resolver took the same hold when it planned).
        ImagePin::ImageId(_) => inner.images.hold_image(&digest).map_err(|e| {
            crate::error::context(
                format!(
                    "{reference}: image {digest} is not in the local store (removed after \
                     the build resolved it? pull or load it again)"
                ),
                e,
            )
        })?,
        ImagePin::Manifest(_) => {
            return Err(ExecError::msg(format!(
                "{reference}@{digest}: images pinned by manifest digest come from a \
                 registry, and this build has none"
            )));
        }
    };
    let parent = unpack_layers(&inner.snapshots, &inner.images, &img, &mut |i, total| {
        logger.progress(i, Some(total));
    })?;
    match parent {
        Some(id) => Ok(snap_ref(&id)),
        None => inner.scratch(),
    }
}

/// Unpacks the layers of `img` as a chain of snapshots, one per layer, each
/// found again by its chain ID (a layer unpacked before is not unpacked
/// again); the top-most snapshot, `None` for an image without layers.
/// `progress(i, total)` before each layer.
pub(crate) fn unpack_layers(
    snapshots: &SnapshotStore,
    images: &Store,
    img: &Image,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Option<SnapshotId>, ExecError> {
    let mut parent: Option<SnapshotId> = None;
    let total = img.diff_ids().len() as u64;
    for (i, d) in img.diff_ids().iter().enumerate() {
        progress(i as u64, total);
        let blob = images.open_blob(d).map_err(err)?;
        let r = std::io::BufReader::with_capacity(256 * 1024, blob);
        parent = Some(snapshots.from_layer(parent.as_ref(), d, r).map_err(err)?);
    }
    Ok(parent)
}
