//! Exporting a result's snapshot chain as an image in the store.

use rbuild_image::{Digest, History, ImageConfig, Reference, RootFs, Store};

use rbuild_snapshotter::snapshots::SnapshotId;

use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, Res, err};

/// What [`crate::LocalWorker::export_image`] writes.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// The image config (from the frontend), serialised canonically when its
    /// blob is written. Its `rootfs` is replaced; its `history` is kept, with
    /// `empty_layer` set to match the layers actually written (a step whose
    /// diff is empty gets no layer).
    pub config: ImageConfig,
    /// The base image (`FROM`), recorded as the image's parent.
    pub base_image: Option<Digest>,
    /// Tags to set (may be empty: a dangling image).
    pub tags: Vec<Reference>,
    /// Write a (tar-with-no-entries) layer for steps whose diff is empty,
    /// as the classic builder does, instead of leaving them out and marking
    /// their history entry `empty_layer`.
    pub keep_empty_layers: bool,
}

pub(crate) fn export_image(
    inner: &Inner,
    store: &Store,
    target: &ResultRef,
    opts: &ExportOptions,
    status: &mut dyn FnMut(&str, bool),
) -> Result<Digest, ExecError> {
    let mut cfg = opts.config.clone();
    let Res::Snap(top) = inner.resolve(target)? else {
        return Err(ExecError::msg("cannot export a build context as an image"));
    };
    let mut chain = inner.snapshots.chain(&top).map_err(err)?;
    chain.reverse();
    let mut txn = store.begin().map_err(err)?;
    let mut diff_ids = Vec::new();
    let mut reused = 0usize;
    // For every snapshot made by a step (not a base layer): did it give a layer?
    let mut steps: Vec<bool> = Vec::new();
    status("exporting layers", false);
    for id in &chain {
        let info = inner.snapshots.info(id).map_err(err)?;
        // Snapshots of kind `cache` are steps' layers imported from a build
        // cache (`--cache-from`): steps, not base layers.
        let imported_step = info.kind == "cache";
        if let Some(d) = &info.layer {
            // A layer of a base image, which this build holds (its blobs stay).
            if !imported_step && store.has_blob(d) {
                diff_ids.push(d.clone());
                reused += 1;
                continue;
            }
        }
        if info.kind == "scratch" {
            continue;
        }
        if (info.layer.is_none() || imported_step)
            && !opts.keep_empty_layers
            && inner.snapshots.is_empty(id).map_err(err)?
        {
            steps.push(false);
            continue;
        }
        // A step's layer was written by an earlier export of the same snapshot:
        // reuse its diff ID instead of diffing, tarring and hashing it again.
        // The record is staged again all the same: a prune may have removed
        // the image that had it, or may before this commit.
        // Otherwise the layer stays the snapshot: only its diff ID is
        // computed here (the tar is written, and checked, when the image is
        // read).
        let (d, size, content) = if let Some(c) = cached_layer(inner, id) {
            c
        } else {
            let c = rbuild_snapshotter::snapshots::SnapshotStore::upper_layer_digest(
                &inner.snapshots.upper(id),
                inner.epoch,
            )
            .map_err(err)?;
            remember_layer(inner, id, &c);
            c
        };
        txn.add_snapshot_layer(&inner.state_root, id, inner.epoch, d.clone(), size, content)
            .map_err(err)?;
        diff_ids.push(d);
        if info.layer.is_none() || imported_step {
            steps.push(true);
        } else {
            reused += 1;
        }
    }
    status("exporting layers", true);
    fix_history(&mut cfg.history, reused, &steps);
    cfg.rootfs = RootFs {
        kind: "layers".into(),
        diff_ids,
    };
    let id = txn
        .add_config(&cfg, opts.tags.clone(), opts.base_image.clone())
        .map_err(err)?;
    let writing = format!("writing image {id}");
    status(&writing, false);
    txn.commit_held().map_err(err)?;
    status(&writing, true);
    for t in &opts.tags {
        let naming = format!("naming to {}", t.full_name());
        status(&naming, false);
        status(&naming, true);
    }
    Ok(id)
}

/// Where the diff ID of a committed snapshot's layer is remembered. Snapshot
/// IDs are unique and a committed snapshot never changes; the layer's bytes
/// also depend on the mtime clamp, so the epoch is part of the name.
pub(crate) fn layer_cache_path(inner: &Inner, id: &SnapshotId) -> std::path::PathBuf {
    let epoch = inner
        .epoch
        .map_or_else(|| "none".to_owned(), |e| e.to_string());
    rbuild_snapshotter::layout::StateLayout::new(&inner.state_root)
        .layer_cache()
        .join(format!("{}-{epoch}", id.as_str()))
}

/// The diff ID, tar size and content size of a snapshot's layer, if an
/// earlier export remembered them.
pub(crate) fn cached_layer(inner: &Inner, id: &SnapshotId) -> Option<(Digest, u64, u64)> {
    let text = fs_err::read_to_string(layer_cache_path(inner, id)).ok()?;
    let mut parts = text.split_whitespace();
    let d = Digest::parse(parts.next()?).ok()?;
    let size = parts.next()?.parse().ok()?;
    let content = parts.next()?.parse().ok()?;
    Some((d, size, content))
}

/// The diff ID of a committed snapshot's layer: the one an earlier export
/// remembered, else computed without writing the layer (and remembered, so
/// the export after it does not diff again).
pub(crate) fn layer_diff_id(inner: &Inner, id: &SnapshotId) -> Result<Digest, ExecError> {
    if let Some((d, _, _)) = cached_layer(inner, id) {
        return Ok(d);
    }
    let c = rbuild_snapshotter::snapshots::SnapshotStore::upper_layer_digest(
        &inner.snapshots.upper(id),
        inner.epoch,
    )
    .map_err(err)?;
    remember_layer(inner, id, &c);
    Ok(c.0)
}

/// Best effort: a cache entry that cannot be written only costs a re-diff.
fn remember_layer(inner: &Inner, id: &SnapshotId, (d, size, content): &(Digest, u64, u64)) {
    let path = layer_cache_path(inner, id);
    if let Some(dir) = path.parent() {
        let _ = fs_err::create_dir_all(dir);
    }
    let _ =
        rbuild_solver::atomic::write(&path, format!("{d} {size} {content}\n").as_bytes(), false);
}

/// Makes the non-empty history entries match the layers: the first `base`
/// non-empty entries are the base image's layers, the following ones the
/// steps in order (an entry whose step wrote nothing becomes `empty_layer`).
/// Missing entries are added; surplus ones are marked empty.
fn fix_history(history: &mut Vec<History>, base: usize, steps: &[bool]) {
    let mut seen = 0usize;
    let mut step = 0usize;
    for h in history.iter_mut() {
        if h.empty_layer {
            continue;
        }
        if seen < base {
            seen += 1;
            continue;
        }
        match steps.get(step) {
            Some(&wrote) => h.empty_layer = !wrote,
            None => h.empty_layer = true,
        }
        step += 1;
    }
    let layers_left = steps.iter().skip(step).filter(|&&w| w).count();
    let missing_base = base.saturating_sub(seen);
    for _ in 0..missing_base + layers_left {
        history.push(History {
            created_by: Some("rbuild".into()),
            ..History::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(empty: bool) -> History {
        History {
            empty_layer: empty,
            ..History::default()
        }
    }

    #[test]
    fn history_marks_steps_without_diff_empty() {
        let mut hist = vec![h(false), h(true), h(false), h(false)];
        fix_history(&mut hist, 1, &[false, true]);
        let empties: Vec<bool> = hist.iter().map(|h| h.empty_layer).collect();
        assert_eq!(empties, [false, true, true, false]);
    }

    #[test]
    fn history_gains_entries_for_unlisted_layers() {
        let mut hist = vec![h(false)];
        fix_history(&mut hist, 1, &[true, true]);
        assert_eq!(hist.iter().filter(|h| !h.empty_layer).count(), 3);
    }
}
