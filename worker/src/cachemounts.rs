//! Cache mounts (`RUN --mount=type=cache`) as layers, for a build cache
//! shared between machines (`--cache-to ...,cache-mounts=true`), and seeds
//! for cache mounts a step is about to create (`--cache-from
//! ...,cache-mounts=true`).
//!
//! A cache mount is the directory `cache-mounts/<name>` of the state root,
//! `<name>` made of its id (the `id=` of the mount, else its target) alone:
//! `sharing`, `uid`, `gid` and `mode` are not part of its identity (the
//! owner and mode apply when a step creates it). A `private` mount that was
//! busy got `<name>.1`, `<name>.2`, ...: only `<name>` is exported.
//!
//! Seeding is lazy: the worker asks its [`CacheMountSeeds`] only when a step
//! that is running mounts a cache that does not exist here; an existing
//! local cache mount is always kept as it is (never merged with a seed).

use std::io::{Read, Write};

use rbuild_ops::CacheSharing;
use rbuild_snapshotter::{Compression, DiffOptions, LayerDigests};
use rbuild_solver::ExecError;

use crate::LocalWorker;
use crate::state::{Inner, err};

/// Content for cache mounts that do not exist yet on this machine.
pub trait CacheMountSeeds: Send + Sync {
    /// The content of cache mount `id` (an uncompressed layer tar, checked
    /// already), or `None` when there is none. Called while a step that
    /// mounts it is starting; any problem is the seeder's to report.
    fn seed(&self, id: &str) -> Option<Box<dyn Read + Send>>;

    /// Applying the seed of `id` failed: the cache mount starts empty.
    fn failed(&self, id: &str, error: String);
}

impl LocalWorker {
    /// Seeds for cache mounts that steps create from now on (once per
    /// worker: a later call is ignored).
    pub fn set_cache_mount_seeds(&self, seeds: std::sync::Arc<dyn CacheMountSeeds>) {
        let _ = self.inner.cache_seeds.set(seeds);
    }

    /// Writes the content of cache mount `id` as a layer to `out`,
    /// compressed with `compression`, and returns its digests; `None` when
    /// this machine has no such cache mount. A `locked` or `private` mount is
    /// read under its lock, so no step of another build writes it meanwhile.
    pub fn write_cache_mount<W: Write>(
        &self,
        id: &str,
        sharing: CacheSharing,
        out: W,
        compression: Compression,
    ) -> Result<Option<(W, LayerDigests)>, ExecError> {
        let (base, name) = mount_name(&self.inner, id);
        let dir = base.join(&name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let _lock = match sharing {
            CacheSharing::Shared => None,
            CacheSharing::Locked | CacheSharing::Private => {
                crate::ops::exec::try_lock(&base.join(format!("{name}.lock")), true)?
            }
        };
        let opts = DiffOptions {
            source_date_epoch: self.inner.epoch,
        };
        let written = rbuild_snapshotter::write_layer(out, compression, 0, |w| {
            rbuild_snapshotter::write_diff(None, &dir, w, &opts)
                .map(drop)
                .map_err(std::io::Error::other)
        })
        .map_err(err)?;
        Ok(Some(written))
    }
}

/// The cache mounts' directory and the name of mount `id` in it.
fn mount_name(inner: &Inner, id: &str) -> (std::path::PathBuf, String) {
    let base = rbuild_snapshotter::layout::StateLayout::new(&inner.state_root).cache_mounts();
    (base, crate::ops::exec::sanitize(id))
}

/// Fills `made` (which does not exist yet) with the seed of cache mount
/// `id`, when the worker has seeds and one for `id`. Returns whether it did;
/// a seed that cannot be applied leaves nothing behind (the mount starts
/// empty, and the seeder is told).
pub(crate) fn seed(inner: &Inner, id: &str, made: &std::path::Path) -> bool {
    let Some(seeds) = inner.cache_seeds.get() else {
        return false;
    };
    let Some(reader) = seeds.seed(id) else {
        return false;
    };
    let applied = fs_err::create_dir(made)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            rbuild_snapshotter::apply_layer(
                made,
                reader,
                &rbuild_snapshotter::ApplyOptions::default(),
            )
            .map_err(|e| e.to_string())
        });
    match applied {
        Ok(_) => true,
        Err(e) => {
            let _ = rbuild_snapshotter::lease::remove_all(made);
            seeds.failed(id, e);
            false
        }
    }
}
