//! Incremental `COPY` from a build context: a file op that copies context
//! files records, next to its snapshot, the content hash of every regular file
//! it wrote (`STATE/copy-reuse/manifests/<snapshot>`), and remembers that
//! snapshot as the latest result of "the same op on the same base"
//! (`STATE/copy-reuse/<key>`). When the op runs again because some context
//! files changed, each file whose content hash, size, mode, owner and mtime
//! are those of the previous result's file at the same path is hard-linked
//! from it instead of being created and copied: after a one-file change, a
//! `COPY . /app` of 20,000 files writes one file.
//!
//! Safe because committed snapshots never change (a RUN on top copies a file
//! up before writing it) and because every reused file is checked against
//! the new source (content hash from the context checksummer, which hashed
//! it for the cache key, and the metadata the copy would give it). The key
//! only chooses which earlier result to try.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use rbuild_snapshotter::snapshots::SnapshotId;

use crate::state::Inner;
use rbuild_ops::{FileAction, FileOp};

const MAGIC: &[u8] = b"rbuild copy manifest v1\n";

/// Content hashes of the regular files a file op wrote, by path relative to
/// the root; `None` once something was written that is not accounted for.
#[derive(Default)]
pub(crate) struct Manifest {
    files: HashMap<PathBuf, [u8; 32]>,
    poisoned: bool,
}

impl Manifest {
    /// `rel` now holds content with hash `hash` (`None`: unknown).
    pub(crate) fn record(&mut self, rel: &Path, hash: Option<[u8; 32]>) {
        match hash {
            Some(h) => {
                self.files.insert(rel.to_path_buf(), h);
            }
            None => {
                self.files.remove(rel);
            }
        }
    }

    /// Something was written or removed that the manifest cannot describe.
    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut entries: Vec<_> = self.files.iter().collect();
        entries.sort();
        for (p, h) in entries {
            let b = p.as_os_str().as_encoded_bytes();
            out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(h);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<HashMap<PathBuf, [u8; 32]>> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        let mut files = HashMap::new();
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            rest = &rest[4..];
            let path = rest.get(..len)?;
            let hash: [u8; 32] = rest.get(len..len + 32)?.try_into().ok()?;
            rest = &rest[len + 32..];
            let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path);
            files.insert(PathBuf::from(path), hash);
        }
        Some(files)
    }
}

/// An earlier result of the same op whose files may be linked.
pub(crate) struct Base {
    /// Its upper directory.
    pub(super) upper: PathBuf,
    files: HashMap<PathBuf, [u8; 32]>,
    /// Inodes of `upper` already linked by this op: each is linked at most
    /// once, so files that are separate in the source stay separate.
    used: HashSet<u64>,
}

impl Base {
    /// Links the base's file at `rel` to `dst` if it has content `hash` and
    /// exactly the metadata `want` (mode, uid, gid, size, mtime).
    pub(crate) fn link(&mut self, rel: &Path, dst: &Path, hash: &[u8; 32], want: &Wanted) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.files.get(rel) != Some(hash) {
            return false;
        }
        let src = self.upper.join(rel);
        let Ok(m) = std::fs::symlink_metadata(&src) else {
            return false;
        };
        let same = m.is_file()
            && m.size() == want.size
            && m.mode() & 0o7777 == want.mode
            && m.uid() == want.uid
            && m.gid() == want.gid
            && filetime::FileTime::from_last_modification_time(&m) == want.mtime
            && !self.used.contains(&m.ino());
        if same && std::fs::hard_link(&src, dst).is_ok() {
            self.used.insert(m.ino());
            return true;
        }
        false
    }
}

/// The metadata a copied regular file gets.
pub(crate) struct Wanted {
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: filetime::FileTime,
}

fn dir(inner: &Inner) -> PathBuf {
    rbuild_snapshotter::layout::StateLayout::new(&inner.state_root).copy_reuse()
}

fn manifest_path(inner: &Inner, id: &SnapshotId) -> PathBuf {
    dir(inner).join("manifests").join(id.as_str())
}

/// The key of "this op on this base": `None` when the op is not made of
/// copies only (other actions write files the manifest cannot describe).
pub(crate) fn key(op: &FileOp, base: Option<&SnapshotId>, contexts: &[PathBuf]) -> Option<String> {
    if op.actions.is_empty()
        || !op.actions.iter().all(|a| matches!(a, FileAction::Copy(_)))
        || contexts.is_empty()
    {
        return None;
    }
    let mut h = blake3::Hasher::new_derive_key("rbuild copy reuse key v1");
    h.update(base.map_or("", SnapshotId::as_str).as_bytes());
    h.update(&[0]);
    h.update(format!("{:?}", op.actions).as_bytes());
    for c in contexts {
        h.update(&[0]);
        h.update(c.as_os_str().as_encoded_bytes());
    }
    Some(h.finalize().to_hex().to_string())
}

/// The latest result of the op with `key`, if it and its manifest exist.
pub(crate) fn lookup(inner: &Inner, key: &str) -> Option<Base> {
    let id = std::fs::read_to_string(dir(inner).join(key)).ok()?;
    let id = SnapshotId::parse(id.trim())?;
    // Held before it is looked at: a concurrent `builder prune` then keeps it
    // or has removed it already (see `SnapshotStore::remove_unless_held`).
    inner.snapshots.hold(&id).ok()?;
    if !inner.snapshots.exists(&id) {
        return None;
    }
    let files = Manifest::decode(&std::fs::read(manifest_path(inner, &id)).ok()?)?;
    Some(Base {
        upper: inner.snapshots.upper(&id),
        files,
        used: HashSet::new(),
    })
}

/// Records `id` (just committed) as the latest result of the op with `key`.
/// Best effort: a failure only costs a later full copy.
pub(crate) fn remember(inner: &Inner, key: &str, id: &SnapshotId, manifest: &Manifest) {
    if manifest.poisoned || manifest.files.is_empty() {
        return;
    }
    let _ = (|| -> std::io::Result<()> {
        let m = manifest_path(inner, id);
        fs_err::create_dir_all(m.parent().unwrap_or(Path::new(".")))?;
        rbuild_solver::atomic::write(&m, &manifest.encode(), false)?;
        let mut id_line = Vec::new();
        writeln!(id_line, "{id}")?;
        rbuild_solver::atomic::write(&dir(inner).join(key), &id_line, false)
    })();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_garbage() {
        let mut m = Manifest::default();
        m.record(Path::new("app/a.txt"), Some([1; 32]));
        m.record(Path::new("app/b"), Some([2; 32]));
        m.record(Path::new("app/b"), None);
        let files = Manifest::decode(&m.encode()).expect("decodes");
        assert_eq!(files.len(), 1);
        assert_eq!(files[Path::new("app/a.txt")], [1; 32]);
        let mut bytes = m.encode();
        bytes.truncate(bytes.len() - 3);
        assert!(Manifest::decode(&bytes).is_none());
        assert!(Manifest::decode(b"something else").is_none());
    }
}
