//! A result as a chain of layers for an exported build cache, and a chain of
//! imported layers back into a result (`--cache-to` / `--cache-from`).
//!
//! A result's chain is its snapshot chain, bottom first: the layers of its
//! base image (kind `layer`, whose blobs the image store has) then one layer
//! per step. Imported step layers become snapshots of kind `cache`, with the
//! created time of the snapshot they were made from on the exporting
//! machine (`BuildKit`'s `buildkit/createdat`).

use std::io::{Read, Write};

use rbuild_image::Digest;
use rbuild_snapshotter::snapshots::SnapshotId;
use rbuild_snapshotter::{Compression, LayerDigests};
use rbuild_solver::{ExecError, ResultRef};

use crate::LocalWorker;
use crate::state::{Res, err, snap_ref};

/// One snapshot of a result's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub snapshot: SnapshotId,
    /// When the snapshot was committed (seconds, nanoseconds since the epoch).
    pub created: Option<(i64, u32)>,
    /// A base image's layer (its diff ID; its blob is in the image store).
    pub base_layer: Option<Digest>,
}

impl LocalWorker {
    /// The snapshot chain of `result`, bottom first, without empty `scratch`
    /// roots; `None` for a result that is no snapshot (a build context).
    pub fn result_chain(&self, result: &ResultRef) -> Result<Option<Vec<ChainLink>>, ExecError> {
        let Res::Snap(top) = self.inner.resolve(result)? else {
            return Ok(None);
        };
        let mut chain = self.inner.snapshots.chain(&top).map_err(err)?;
        chain.reverse();
        let mut out = Vec::with_capacity(chain.len());
        for id in chain {
            let info = self.inner.snapshots.info(&id).map_err(err)?;
            if info.kind == "scratch" {
                continue;
            }
            let base_layer = info
                .layer
                .filter(|d| info.kind != "cache" && self.inner.images.has_blob(d));
            out.push(ChainLink {
                snapshot: id,
                created: info.created,
                base_layer,
            });
        }
        Ok(Some(out))
    }

    /// Writes the layer of one link of a chain to `out`, compressed with
    /// `compression` (deterministic: the same snapshot gives the same bytes),
    /// and returns its digests.
    pub fn write_chain_layer<W: Write>(
        &self,
        link: &ChainLink,
        out: W,
        compression: Compression,
    ) -> Result<(W, LayerDigests), ExecError> {
        let inner = &self.inner;
        let written = if let Some(d) = &link.base_layer {
            let mut blob = inner.images.open_blob(d).map_err(err)?;
            rbuild_snapshotter::write_layer(out, compression, 0, |w| {
                std::io::copy(&mut blob, w).map(drop)
            })
        } else {
            let upper = inner.snapshots.upper(&link.snapshot);
            rbuild_snapshotter::write_layer(out, compression, 0, |w| {
                rbuild_snapshotter::snapshots::SnapshotStore::write_upper_layer(
                    &upper,
                    w,
                    inner.epoch,
                )
                .map(drop)
                .map_err(std::io::Error::other)
            })
        };
        written.map_err(err)
    }

    /// The diff ID of one link's layer, without writing it: a base layer's
    /// own, else a step's as the image export computes (and remembers) it.
    pub fn chain_layer_diff_id(&self, link: &ChainLink) -> Result<Digest, ExecError> {
        match &link.base_layer {
            Some(d) => Ok(d.clone()),
            None => crate::export::layer_diff_id(&self.inner, &link.snapshot),
        }
    }

    /// The diff ID of one link's layer when it is known without reading the
    /// layer: a base layer's own, or a step's the image export remembered.
    pub fn remembered_chain_diff_id(&self, link: &ChainLink) -> Option<Digest> {
        match &link.base_layer {
            Some(d) => Some(d.clone()),
            None => crate::export::cached_layer(&self.inner, &link.snapshot).map(|(d, _, _)| d),
        }
    }

    /// Where the compressed form of a link's layer an export wrote is
    /// remembered (beside the diff ID the image export remembers, swept with
    /// it when the snapshot goes).
    fn compressed_layer_path(&self, link: &ChainLink, c: Compression) -> std::path::PathBuf {
        let mut p = crate::export::layer_cache_path(&self.inner, &link.snapshot).into_os_string();
        p.push(match c {
            Compression::None => ".none",
            Compression::Gzip => ".gzip",
            Compression::Zstd => ".zstd",
        });
        p.into()
    }

    /// The compressed form of a link's layer an earlier export wrote with
    /// `c`: (digest, size, diff ID). The same snapshot compresses to the
    /// same bytes, so a destination that has that digest has the layer.
    pub fn remembered_chain_layer(
        &self,
        link: &ChainLink,
        c: Compression,
    ) -> Option<(Digest, u64, Digest)> {
        let text = fs_err::read_to_string(self.compressed_layer_path(link, c)).ok()?;
        let mut parts = text.split_whitespace();
        let digest = Digest::parse(parts.next()?).ok()?;
        let size = parts.next()?.parse().ok()?;
        let diff_id = Digest::parse(parts.next()?).ok()?;
        Some((digest, size, diff_id))
    }

    /// Remembers what [`Self::write_chain_layer`] gave (best effort: a
    /// record that cannot be written only costs a compression).
    pub fn remember_chain_layer(&self, link: &ChainLink, c: Compression, d: &LayerDigests) {
        let path = self.compressed_layer_path(link, c);
        if let Some(dir) = path.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        let _ = rbuild_solver::atomic::write(
            &path,
            format!("{} {} {}\n", d.digest, d.size, d.diff_id).as_bytes(),
            false,
        );
    }

    /// Applies one imported layer (an uncompressed tar) on `parent`: a
    /// base image's layer (`base`) as when the image is unpacked, a step's
    /// as a snapshot of kind `cache` committed with `created`; either is
    /// reused when a snapshot with the same chain ID exists. Returns the
    /// snapshot.
    pub fn apply_cache_layer(
        &self,
        parent: Option<&SnapshotId>,
        diff_id: &Digest,
        reader: impl Read,
        base: bool,
        created: Option<(i64, u32)>,
    ) -> Result<SnapshotId, ExecError> {
        let snapshots = &self.inner.snapshots;
        let id = if base {
            snapshots.from_layer(parent, diff_id, reader)
        } else {
            snapshots.import_cache_layer(parent, diff_id, reader, created)
        }
        .map_err(err)?;
        self.inner.snapshots.hold(&id).map_err(err)?;
        Ok(id)
    }

    /// The result naming snapshot `id`.
    pub fn snapshot_result(id: &SnapshotId) -> ResultRef {
        snap_ref(id)
    }
}
