//! `MergeOp`: inputs stacked as layers, later over earlier.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild_ops::MergeOp;
use rbuild_solver::{ExecError, ResultRef};

use crate::fsutil::{io_msg, sorted};
use crate::state::{Inner, Res, err, snap_ref};

/// `MergeOp`: the inputs stacked, later over earlier, as `BuildKit` merges
/// them: the first input's snapshot chain is kept as is, and every layer of
/// each later input is added on top as a layer of its own (its upper
/// directory cloned: directories made again with their metadata, everything
/// else hard-linked, as committed snapshots never change). So `COPY --link`
/// (a copy onto an empty tree, merged onto the stage) adds one layer, whose
/// directories' metadata win over the stage's in the merged view, and no
/// file content is copied.
pub(crate) fn run(
    inner: &Inner,
    op: &MergeOp,
    inputs: &[ResultRef],
) -> Result<ResultRef, ExecError> {
    let mut top: Option<rbuild_snapshotter::snapshots::SnapshotId> = None;
    for (k, &i) in op.inputs.iter().enumerate() {
        let r = inputs
            .get(i)
            .ok_or_else(|| ExecError::msg("merge input does not exist"))?;
        // (tree, whether its files may be hard-linked: not a build context's)
        let uppers: Vec<(PathBuf, bool)> = match inner.resolve(r)? {
            Res::Snap(id) if k == 0 => {
                top = Some(id);
                continue;
            }
            Res::Snap(id) => {
                let mut chain = inner.snapshots.chain(&id).map_err(err)?;
                chain.reverse();
                let mut ups = Vec::new();
                for s in chain {
                    if !inner.snapshots.is_empty(&s).map_err(err)? {
                        ups.push((inner.snapshots.upper(&s), true));
                    }
                }
                ups
            }
            Res::Context(dir) => vec![(dir, false)],
        };
        for (up, link) in uppers {
            let active = inner
                .snapshots
                .prepare(top.as_ref(), "merge")
                .map_err(err)?;
            let done = if link {
                clone_tree(&up, &active.upper)
            } else {
                let _ = fs_err::remove_dir(&active.upper);
                rbuild_snapshotter::overlay::copy_lower_stack(
                    std::slice::from_ref(&up),
                    &active.upper,
                )
                .map_err(err)
            };
            match done {
                Ok(()) => top = Some(inner.snapshots.commit(active).map_err(err)?),
                Err(e) => {
                    let _ = inner.snapshots.abort(active);
                    return Err(e);
                }
            }
        }
    }
    if let Some(id) = top {
        return Ok(snap_ref(&id));
    }
    inner.scratch()
}

/// Makes `dst` (an existing directory) a copy of the tree `src`:
/// directories are created with `src`'s mode, owner, xattrs (overlay's
/// opaque marks included) and times; everything else is hard-linked.
fn clone_tree(src: &Path, dst: &Path) -> Result<(), ExecError> {
    for name in sorted(src)? {
        let (s, d) = (src.join(&name), dst.join(&name));
        let m = fs_err::symlink_metadata(&s).map_err(err)?;
        if m.is_dir() {
            fs_err::create_dir(&d).map_err(err)?;
            clone_tree(&s, &d)?;
        } else {
            // link(2) does not follow a symlink: the link itself is shared.
            fs_err::hard_link(&s, &d).map_err(err)?;
        }
    }
    let m = fs_err::symlink_metadata(src).map_err(err)?;
    let xattrs = rbuild_snapshotter::diff::read_xattrs(src).map_err(err)?;
    rbuild_snapshotter::diff::write_xattrs(dst, &xattrs).map_err(err)?;
    nix::unistd::chown(dst, Some(m.uid().into()), Some(m.gid().into()))
        .map_err(|e| io_msg("chown", dst, e))?;
    fs_err::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(err)?;
    let t = filetime::FileTime::from_last_modification_time(&m);
    filetime::set_symlink_file_times(dst, t, t).map_err(|e| io_msg("set times", dst, e))
}
