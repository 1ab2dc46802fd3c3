//! Content checksums for cache keys (the solver's `ContentChecksum` hook):
//! of a build context through its persistent checksummer, of a committed
//! snapshot through a cached sum under `STATE/snapshot-checksums/`.

use std::path::Path;
use std::sync::Arc;

use rbuild_ops::{Checksum, Op, Selection, SourceOp, Vertex};
use rbuild_snapshotter::snapshots::SnapshotId;
use rbuild_solver::{ExecError, ResultRef};

use crate::context::{ContextChecksummer, ContextError, Listing};
use crate::filter::SelectionFilter;
use crate::state::{Inner, Res, err};

impl Inner {
    /// The content checksum of what `selection` picks in snapshot `id`, as
    /// for a build context (so `COPY --from=stage` is keyed by the content it
    /// copies, as BuildKit keys it: a stage that runs again and makes the
    /// same files leaves the copy cached, one that makes other files does
    /// not). A committed snapshot never changes, so the sum is kept in
    /// `STATE/snapshot-checksums/`. `None` (key on the input's key) when the
    /// selection cannot be read: the copy then reports what is wrong.
    fn snapshot_checksum(&self, id: &SnapshotId, selection: &Selection) -> Option<Checksum> {
        // v2: a selection's include/exclude patterns match below each source.
        let mut h = blake3::Hasher::new_derive_key("rbuild snapshot checksum v2");
        h.update(id.as_str().as_bytes());
        h.update(&[0]);
        h.update(format!("{selection:?}").as_bytes());
        let path = rbuild_snapshotter::layout::StateLayout::new(&self.state_root)
            .snapshot_checksums()
            .join(h.finalize().to_hex().as_str());
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(sum) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Some(Checksum(sum));
            }
        }
        let guard = self.snapshots.mount_ro(id).ok()?;
        let summer = ContextChecksummer::open(guard.path(), None).ok()?;
        let filter = SelectionFilter::new(
            None,
            &selection.include_patterns,
            &selection.exclude_patterns,
        )
        .ok()?;
        let sum = summer.checksum(selection, &filter).ok()?;
        drop(guard);
        if let Some(dir) = path.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        let _ = rbuild_solver::atomic::write(&path, sum.as_bytes(), false);
        Some(sum)
    }

    /// The checksummer of a build context directory (owners left out: a
    /// copy from a context gives its files to 0:0 or `--chown`).
    pub(crate) fn checksummer(&self, dir: &Path) -> Result<Arc<ContextChecksummer>, ExecError> {
        let mut map = self.checksummers.lock().expect("checksummer table");
        if let Some(c) = map.get(dir) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(
            ContextChecksummer::open(dir, Some(&self.state_root))
                .map_err(err)?
                .without_owners(),
        );
        map.insert(dir.to_path_buf(), Arc::clone(&c));
        Ok(c)
    }
}

/// A checksum of exactly what `selection` picks in `result` (the result of
/// `input`); `None` to key on the input's key instead.
pub(crate) fn content_checksum(
    inner: &Inner,
    input: &Vertex,
    result: &ResultRef,
    selection: &Selection,
) -> Result<Option<Checksum>, ExecError> {
    let dir = match (&input.op, inner.resolve(result)?) {
        (Op::Source(SourceOp::Context { .. }), Res::Context(dir)) => dir,
        (_, Res::Snap(id)) => return Ok(inner.snapshot_checksum(&id, selection)),
        _ => return Ok(None),
    };
    let summer = inner.checksummer(&dir)?;
    let filter = SelectionFilter::new(
        inner.ignore.as_deref(),
        &selection.include_patterns,
        &selection.exclude_patterns,
    )?;
    summer
        .checksum(selection, &filter)
        .map(Some)
        .map_err(|e| match e {
            ContextError::Io(e) => err(e),
            e => crate::error::WorkerError::BuildContext(e).into(),
        })
}

/// What [`content_checksum`] sums of `selection` in the build context
/// `result`, entry by entry (see `ContextChecksummer::listing`); `None` for
/// a result that is no build context (a stage's files are not listed: that
/// would read them all again), or with more than `limit` entries.
pub(crate) fn content_listing(
    inner: &Inner,
    input: &Vertex,
    result: &ResultRef,
    selection: &Selection,
    limit: usize,
) -> Result<Option<Listing>, ExecError> {
    let (Op::Source(SourceOp::Context { .. }), Res::Context(dir)) =
        (&input.op, inner.resolve(result)?)
    else {
        return Ok(None);
    };
    let summer = inner.checksummer(&dir)?;
    let filter = SelectionFilter::new(
        inner.ignore.as_deref(),
        &selection.include_patterns,
        &selection.exclude_patterns,
    )?;
    summer
        .listing(selection, &filter, limit)
        .map_err(|e| match e {
            ContextError::Io(e) => err(e),
            e => crate::error::WorkerError::BuildContext(e).into(),
        })
}
