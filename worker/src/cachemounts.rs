//! Cache mounts (`RUN --mount=type=cache`) as layers, for a build cache
//! shared between machines (`--cache-to ...,cache-mounts=true`), and seeds
//! for cache mounts a step is about to create (`--cache-from
//! ...,cache-mounts=true`).
//!
//! A cache mount is the directory `cache-mounts/<name>` of the state root,
//! `<name>` made of what `BuildKit` keys it by (`getRefCacheDir`: the id,
//! then `:` and the ref of its base when it has one): its id (the `id=` of
//! the mount, else its target as written); the owner and mode it starts with
//! when `uid=`/`gid=`/`mode=` were given (`BuildKit` bases it on a directory
//! made with them); with `from=`, the input result it starts as a copy of and
//! the path in it (`source=`). `sharing` is never part of it. A plain id
//! keeps the name it always had ([`dir_name`]). A `private` mount that was
//! busy got `<name>.1`, `<name>.2`, ...: only `<name>` is exported. Only
//! mounts without `from=` are exported and seeded ([`CacheMountKey`]): the
//! result a `from=` mount starts from is this machine's.
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

pub use crate::seeds::{CacheMountKey, CacheMountSeeds};

impl LocalWorker {
    /// Seeds for cache mounts that steps create from now on (once per
    /// worker: a later call is ignored).
    pub fn set_cache_mount_seeds(&self, seeds: std::sync::Arc<dyn CacheMountSeeds>) {
        let _ = self.inner.cache_seeds.set(seeds);
    }

    /// Writes the content of cache mount `key` as a layer to `out`,
    /// compressed with `compression`, and returns its digests; `None` when
    /// this machine has no such cache mount. A `locked` or `private` mount is
    /// read under its lock, so no step of another build writes it meanwhile.
    pub fn write_cache_mount<W: Write>(
        &self,
        key: &CacheMountKey,
        sharing: CacheSharing,
        out: W,
        compression: Compression,
    ) -> Result<Option<(W, LayerDigests)>, ExecError> {
        let base =
            rbuild_snapshotter::layout::StateLayout::new(&self.inner.state_root).cache_mounts();
        let name = dir_name(key, None);
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

/// Fills `made` (which does not exist yet) with the seed of cache mount
/// `key`, when the worker has seeds and one for `key`. Returns whether it
/// did; a seed that cannot be applied leaves nothing behind (the mount starts
/// empty, and the seeder is told).
pub(crate) fn seed(inner: &Inner, key: &CacheMountKey, made: &std::path::Path) -> bool {
    let Some(seeds) = inner.cache_seeds.get() else {
        return false;
    };
    let Some(reader) = seeds.seed(key) else {
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
            seeds.failed(key, e);
            false
        }
    }
}

/// The directory name of cache mount `key`, which with `from` starts as a
/// copy of path `from.1` of input result `from.0`: its id made safe for a
/// file name, then a digest of all of it (so two keys never share a name).
/// A plain id (no perms, no `from`) is digested alone, as it always was, so
/// its cache made by an earlier rbuild is still found; any other key is
/// digested in its own blake3 domain, length-prefixed.
pub(crate) fn dir_name(key: &CacheMountKey, from: Option<(&str, &str)>) -> String {
    let clean: String = key
        .id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let digest = if key.perms.is_none() && from.is_none() {
        blake3::hash(key.id.as_bytes())
    } else {
        let mut h = blake3::Hasher::new_derive_key("rbuild 2026 cache mount key with a base");
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(key.id.as_bytes());
        match &key.perms {
            Some(p) => put(format!("{p}").as_bytes()),
            None => put(b""),
        }
        match from {
            Some((result, source)) => {
                put(result.as_bytes());
                put(source.as_bytes());
            }
            None => put(b""),
        }
        h.finalize()
    };
    format!("{clean}-{}", &digest.to_hex()[..16])
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
