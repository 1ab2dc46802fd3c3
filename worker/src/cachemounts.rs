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

use std::io::Write;
use std::path::Path;

use rbuild_ops::CacheSharing;
use rbuild_snapshotter::{Compression, DiffOptions, LayerDigests};
use rbuild_solver::ExecError;

use crate::LocalWorker;
use crate::error::err;
use crate::state::Inner;

pub use crate::seeds::CacheMountSeeds;

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
                try_lock(&base.join(format!("{name}.lock")), true)?
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
    (base, sanitize(id))
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

/// The directory name of cache mount `id`: its id made safe for a file name,
/// then a digest of it (so two ids never share a name).
pub(crate) fn sanitize(id: &str) -> String {
    let h = blake3::hash(id.as_bytes()).to_hex();
    let clean: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    format!("{clean}-{}", &h[..16])
}

/// An exclusive lock on the lock file `path` (made when missing); `None`
/// when it is taken and `blocking` is false.
pub(crate) fn try_lock(
    path: &Path,
    blocking: bool,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ExecError> {
    let f = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?
        .into_parts()
        .0;
    let arg = if blocking {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockExclusiveNonblock
    };
    match nix::fcntl::Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !blocking => Ok(None),
        Err((_, e)) => Err(crate::error::context(
            format!("locking {}", path.display()),
            e,
        )),
    }
}
