//! A persistent store of overlay snapshots under `<state root>/snapshots/`.
//!
//! A snapshot is a directory `<id>/` holding `fs/` (an overlayfs upper dir:
//! the changes against its parent, with overlay whiteouts — a 0/0 character
//! device for a removed path, `trusted.overlay.opaque=y` on a directory that
//! hides what is below) and `meta.json` (its parent and, for snapshots made
//! from an image layer, the layer's diff ID). A chain of snapshots is mounted
//! as one overlay (lower dirs top-most first).
//!
//! Atomicity: [`SnapshotStore::prepare`] works in `tmp-<owner>-<id>/`, and
//! [`SnapshotStore::commit`] renames it to `<id>/` once `meta.json` is written
//! (itself temp + rename), so a killed build leaves only `tmp-*` directories.
//! Their names, like those of the mount points under `mounts/`, carry the
//! owner token of the process that made them (see [`crate::lease`]):
//! [`SnapshotStore::open`] unmounts and removes those of dead processes only,
//! never those of a build running beside it.
//!
//! Steps get a writable root one of two ways ([`Backend`], chosen once per
//! process by [`SnapshotStore::backend`]): an overlay of the parent chain
//! with the step's upper dir (root, or a user namespace where the kernel
//! allows overlayfs: Linux 5.11+), or, where overlayfs cannot be mounted, a
//! full copy of the parent chain ([`SnapshotStore::materialize`]) whose
//! changes are moved into the upper dir afterwards
//! ([`SnapshotStore::capture`], see [`crate::capture`]). Snapshots look the
//! same either way, so a store may be used by both.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::layout::StateLayout;
use crate::lease::{Hold, Lease};
use crate::overlay::{OverlayLayout, OverlayMount, copy_lower_stack, mount_overlay};
use crate::tarwrite::{EntryKind, EntryMeta, TarWriter};

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("invalid snapshot metadata {path}: {reason}")]
    BadMeta { path: PathBuf, reason: String },
    #[error("layer {diff_id}: {reason}")]
    BadLayer { diff_id: String, reason: String },
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error(transparent)]
    Layer(#[from] crate::Error),
    #[error(
        "overlay mounts are not available ({0}); RBUILD_SNAPSHOTTER=copy (or auto, the \
         default) builds over copies instead"
    )]
    NoOverlay(String),
    #[error("{0}")]
    Backend(String),
}

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// How steps get a writable root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// overlayfs: the parent chain as lower dirs, the step's upper dir.
    Overlay,
    /// The copying snapshotter: a full copy of the parent chain, diffed
    /// against it after the step. `reason` says why (overlayfs unavailable,
    /// or `RBUILD_SNAPSHOTTER=copy`).
    Copy { reason: String },
}

/// The environment variable that chooses the backend: `overlay`, `copy`, or
/// `auto` (the default: overlay where it can be mounted, else copy).
pub const BACKEND_ENV: &str = "RBUILD_SNAPSHOTTER";

/// A snapshot's name: a short hex string (keeps overlay option strings short).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(pub String);

impl SnapshotId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    fn valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
    /// Parses an id, refusing anything that is not a short hex string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::valid(s).then(|| Self(s.to_owned()))
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `meta.json` records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub parent: Option<SnapshotId>,
    /// The diff ID of the image layer this snapshot was made from.
    #[serde(default)]
    pub layer: Option<Digest>,
    /// The chain ID (image layers only), for dedup.
    #[serde(default)]
    pub chain_id: Option<Digest>,
    /// A free-form label (`scratch`, `exec`, `file`, `http`, `flat`).
    #[serde(default)]
    pub kind: String,
    /// When the snapshot was committed: seconds and nanoseconds since the Unix
    /// epoch. A cached step keeps its snapshot and so its time, which is what
    /// gives a fully cached rebuild the same image ID (as in `BuildKit`).
    #[serde(default)]
    pub created: Option<(i64, u32)>,
}

/// A snapshot being written: run a step over `lowers` + `upper`.
#[derive(Debug)]
pub struct Active {
    pub id: SnapshotId,
    /// The changes land here.
    pub upper: PathBuf,
    /// overlayfs work dir (same filesystem as `upper`).
    pub work: PathBuf,
    /// The parent chain's upper dirs, top-most first (empty without parent).
    pub lowers: Vec<PathBuf>,
    dir: PathBuf,
    info: SnapshotInfo,
}

/// A read-only view of a snapshot chain; unmounted when dropped.
#[derive(Debug)]
pub struct ReadGuard {
    path: PathBuf,
    _mount: Option<OverlayMount>,
    _dir: Option<tempfile::TempDir>,
}

impl ReadGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The snapshot store.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    counter: AtomicU64,
    state_root: PathBuf,
    lease: std::sync::Arc<Lease>,
    backend: std::sync::OnceLock<std::result::Result<Backend, String>>,
}

/// The file beside a [`SnapshotStore::materialize`] copy made when it is complete.
const COPIED: &str = "copied";

/// Longest lowerdir option string we build before flattening a chain.
const MAX_LOWER_CHARS: usize = 3000;

impl SnapshotStore {
    /// Opens (creating) `<state_root>/snapshots`, taking down the mounts and
    /// removing the half-made snapshots of dead processes.
    pub fn open(state_root: &Path) -> Result<Self> {
        let layout = StateLayout::new(state_root);
        let root = layout.snapshots();
        fs_err::create_dir_all(layout.snapshot_chains())?;
        fs_err::create_dir_all(layout.snapshot_mounts())?;
        let lease = Lease::current(state_root)?;
        crate::lease::sweep(state_root, &[root.clone(), layout.snapshot_mounts()])?;
        Ok(Self {
            root,
            counter: AtomicU64::new(0),
            state_root: state_root.to_path_buf(),
            lease,
            backend: std::sync::OnceLock::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where temporary mount points go (`<root>/snapshots/mounts`).
    pub fn mounts_dir(&self) -> PathBuf {
        StateLayout::new(&self.state_root).snapshot_mounts()
    }

    fn chains_dir(&self) -> PathBuf {
        StateLayout::new(&self.state_root).snapshot_chains()
    }

    /// A name prefix for a temporary file or directory of this process in
    /// the store (`<kind>-<owner token>-`): swept once the process is dead.
    pub fn temp_prefix(&self, kind: &str) -> String {
        self.lease.prefix(kind)
    }

    /// The lease of this process on the state root.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Records in this process's lease that it uses snapshot `id` (a
    /// [`SnapshotStore::prune`] elsewhere keeps its chain).
    pub fn hold(&self, id: &SnapshotId) -> Result<()> {
        self.lease.hold(Hold::Snapshot, id.as_str())?;
        Ok(())
    }

    /// The backend of this process (see [`Backend`]): what `RBUILD_SNAPSHOTTER`
    /// asks for, else overlay when a test mount in the store works, else the
    /// copying snapshotter. Decided once. Fails when overlay is asked for and
    /// cannot be mounted, or the variable holds something else.
    pub fn backend(&self) -> Result<&Backend> {
        self.backend
            .get_or_init(|| {
                let want = std::env::var(BACKEND_ENV).unwrap_or_default();
                match want.as_str() {
                    "copy" => Ok(Backend::Copy {
                        reason: format!("{BACKEND_ENV}=copy"),
                    }),
                    "overlay" => self
                        .check_overlay()
                        .map(|()| Backend::Overlay)
                        .map_err(|e| e.to_string()),
                    "" | "auto" => Ok(match self.check_overlay() {
                        Ok(()) => Backend::Overlay,
                        Err(e) => Backend::Copy {
                            reason: e.to_string(),
                        },
                    }),
                    other => Err(format!(
                        "{BACKEND_ENV}={other:?}: the snapshotter is one of overlay, copy, auto"
                    )),
                }
            })
            .as_ref()
            .map_err(|e| SnapshotError::Backend(e.clone()))
    }

    /// Whether steps run over a copy of their parent (see [`Backend::Copy`]).
    pub fn copies(&self) -> Result<bool> {
        Ok(matches!(self.backend()?, Backend::Copy { .. }))
    }

    /// Fails with a clear message when overlay cannot be mounted here.
    pub fn check_overlay(&self) -> Result<()> {
        let t = tempfile::Builder::new()
            .prefix(&self.temp_prefix("ovl-check"))
            .tempdir_in(self.mounts_dir())?;
        for d in ["l1", "l2", "u", "w", "m"] {
            fs_err::create_dir(t.path().join(d))?;
        }
        fs_err::write(t.path().join("l2/f"), b"x")?;
        let layout = OverlayLayout {
            lower: vec![t.path().join("l1"), t.path().join("l2")],
            upper: t.path().join("u"),
            work: t.path().join("w"),
        };
        let merged = t.path().join("m");
        match mount_overlay(&layout, &merged) {
            Ok(m) => {
                // A write through it must land in the upper dir (an upper
                // dir on a file system overlayfs cannot use fails here).
                let works =
                    fs_err::write(merged.join("g"), b"y").is_ok() && t.path().join("u/g").is_file();
                m.unmount()?;
                if works {
                    Ok(())
                } else {
                    Err(SnapshotError::NoOverlay(format!(
                        "a write through an overlay in {} did not reach its upper dir",
                        self.mounts_dir().display()
                    )))
                }
            }
            Err(e) => Err(SnapshotError::NoOverlay(e.to_string())),
        }
    }

    /// A full copy of what `active`'s step starts from (its parent chain and
    /// what its upper dir already holds), for the copying snapshotter: made
    /// under the mounts dir with this process's owner token (swept if the
    /// process dies), removed when the returned directory is dropped.
    pub fn materialize(&self, active: &Active) -> Result<tempfile::TempDir> {
        let t = tempfile::Builder::new()
            .prefix(&self.temp_prefix("copy"))
            .tempdir_in(self.mounts_dir())?;
        let mut stack = vec![active.upper.clone()];
        stack.extend(active.lowers.iter().cloned());
        let root = t.path().join("root");
        crate::overlay::copy_lower_stack_unlinked(&stack, &root)?;
        // Its birth time marks the end of the copy (see `capture`).
        fs_err::write(t.path().join(COPIED), b"")?;
        Ok(t)
    }

    /// Replaces what `active`'s upper dir holds by the changes that turn its
    /// parent chain into `tree` (the `root` of a [`SnapshotStore::materialize`]
    /// copy after the step; consumed).
    pub fn capture(&self, active: &Active, tree: &Path) -> Result<()> {
        for entry in fs_err::read_dir(&active.upper)? {
            crate::overlay::remove_any(&entry?.path())?;
        }
        let made_after = tree
            .parent()
            .and_then(|d| std::fs::metadata(d.join(COPIED)).ok())
            .and_then(|m| m.created().ok());
        crate::capture::capture(&active.lowers, tree, &active.upper, made_after)?;
        Ok(())
    }

    fn new_id(&self) -> SnapshotId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{now} {} {n} {}", std::process::id(), self.root.display());
        SnapshotId(Digest::of(seed.as_bytes()).hex()[..12].to_owned())
    }

    fn dir(&self, id: &SnapshotId) -> PathBuf {
        self.root.join(&id.0)
    }

    /// The upper dir of a committed snapshot.
    pub fn upper(&self, id: &SnapshotId) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn exists(&self, id: &SnapshotId) -> bool {
        self.dir(id).join("meta.json").is_file()
    }

    /// Starts a snapshot on `parent`.
    pub fn prepare(&self, parent: Option<&SnapshotId>, kind: &str) -> Result<Active> {
        let lowers = match parent {
            Some(p) => self.mount_lowers(p)?,
            None => Vec::new(),
        };
        let id = self.new_id();
        let dir = self.root.join(format!("{}{id}", self.temp_prefix("tmp")));
        fs_err::create_dir(&dir)?;
        let upper = dir.join("fs");
        let work = dir.join("work");
        fs_err::create_dir(&upper)?;
        fs_err::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))?;
        fs_err::create_dir(&work)?;
        Ok(Active {
            id,
            upper,
            work,
            lowers,
            dir,
            info: SnapshotInfo {
                parent: parent.cloned(),
                kind: kind.to_owned(),
                ..SnapshotInfo::default()
            },
        })
    }

    /// Commits a prepared snapshot; it becomes readable under its id.
    pub fn commit(&self, active: Active) -> Result<SnapshotId> {
        self.commit_with(active, None, None, None)
    }

    fn commit_with(
        &self,
        mut active: Active,
        layer: Option<Digest>,
        chain_id: Option<Digest>,
        created: Option<(i64, u32)>,
    ) -> Result<SnapshotId> {
        active.info.layer = layer;
        active.info.chain_id = chain_id;
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        active.info.created = Some(created.unwrap_or((
            i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            since_epoch.subsec_nanos(),
        )));
        let _ = remove_tree(&active.work);
        let bytes = serde_json::to_vec(&active.info).map_err(io::Error::other)?;
        write_atomic(&active.dir.join("meta.json"), &bytes)?;
        let dest = self.dir(&active.id);
        // Held before it is visible: a concurrent `builder prune` never sees
        // it unheld while the cache index does not name it yet.
        self.hold(&active.id)?;
        fs_err::rename(&active.dir, &dest)?;
        Ok(active.id)
    }

    /// Throws a prepared snapshot away.
    #[allow(clippy::needless_pass_by_value)] // consumes the active snapshot
    pub fn abort(&self, active: Active) -> Result<()> {
        remove_tree(&active.dir)?;
        Ok(())
    }

    /// The metadata of a committed snapshot.
    pub fn info(&self, id: &SnapshotId) -> Result<SnapshotInfo> {
        let path = self.dir(id).join("meta.json");
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound(id.0.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::BadMeta {
            path,
            reason: e.to_string(),
        })
    }

    /// The chain from `id` down to its root: ids, top-most first.
    pub fn chain(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        let mut out = vec![id.clone()];
        let mut cur = self.info(id)?.parent;
        while let Some(p) = cur {
            cur = self.info(&p)?.parent;
            out.push(p);
        }
        Ok(out)
    }

    /// The upper dirs of the chain, top-most first.
    pub fn lowers(&self, id: &SnapshotId) -> Result<Vec<PathBuf>> {
        Ok(self.chain(id)?.iter().map(|i| self.upper(i)).collect())
    }

    /// The lower dirs to mount for `id`: the chain, or (when its option string
    /// would be too long for the kernel) one flattened copy of it, made once.
    pub fn mount_lowers(&self, id: &SnapshotId) -> Result<Vec<PathBuf>> {
        let lowers = self.lowers(id)?;
        let len: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
        if len <= MAX_LOWER_CHARS {
            return Ok(lowers);
        }
        let flat = self.dir(id).join("flat");
        if !flat.is_dir() {
            // What a killed flattening of this snapshot left.
            crate::lease::sweep(&self.state_root, &[self.dir(id)])?;
            let tmp =
                self.dir(id)
                    .join(format!("{}{}", self.temp_prefix("flat-tmp"), self.new_id()));
            copy_lower_stack(&lowers, &tmp)?;
            // Whiteouts of the bottom-most layer are meaningless once flattened.
            match fs_err::rename(&tmp, &flat) {
                Ok(()) => {}
                Err(_) if flat.is_dir() => remove_tree(&tmp)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(vec![flat])
    }

    /// A read-only view of the chain of `id`: the directory itself for a
    /// parentless snapshot, an overlay otherwise.
    pub fn mount_ro(&self, id: &SnapshotId) -> Result<ReadGuard> {
        let lowers = self.mount_lowers(id)?;
        if lowers.len() == 1 {
            return Ok(ReadGuard {
                path: lowers[0].clone(),
                _mount: None,
                _dir: None,
            });
        }
        let t = tempfile::Builder::new()
            .prefix(&self.temp_prefix("ro"))
            .tempdir_in(self.mounts_dir())?;
        if self.copies()? {
            let root = t.path().join("root");
            copy_lower_stack(&lowers, &root)?;
            return Ok(ReadGuard {
                path: root,
                _mount: None,
                _dir: Some(t),
            });
        }
        let layout = OverlayLayout {
            lower: lowers,
            upper: PathBuf::new(),
            work: PathBuf::new(),
        };
        let m = mount_overlay(&layout, t.path()).map_err(|e| match e {
            crate::overlay::OverlayError::Mount { .. } => SnapshotError::NoOverlay(e.to_string()),
            e => e.into(),
        })?;
        Ok(ReadGuard {
            path: t.path().to_path_buf(),
            _mount: Some(m),
            _dir: Some(t),
        })
    }

    /// The snapshot for image layer `diff_id` on `parent`, applying `reader`
    /// (an uncompressed layer tar) when no snapshot has that chain ID yet.
    pub fn from_layer<R: Read>(
        &self,
        parent: Option<&SnapshotId>,
        diff_id: &Digest,
        reader: R,
    ) -> Result<SnapshotId> {
        self.layer_snapshot(parent, diff_id, reader, "layer", None)
    }

    /// [`SnapshotStore::from_layer`] for a layer of an imported build cache
    /// (kind `cache`: a step's result, not a base image's layer), committed
    /// with the time the step's snapshot was made on the machine that
    /// exported it (`created`), so the image made from it has that machine's
    /// created time.
    pub fn import_cache_layer<R: Read>(
        &self,
        parent: Option<&SnapshotId>,
        diff_id: &Digest,
        reader: R,
        created: Option<(i64, u32)>,
    ) -> Result<SnapshotId> {
        self.layer_snapshot(parent, diff_id, reader, "cache", created)
    }

    fn layer_snapshot<R: Read>(
        &self,
        parent: Option<&SnapshotId>,
        diff_id: &Digest,
        reader: R,
        kind: &str,
        created: Option<(i64, u32)>,
    ) -> Result<SnapshotId> {
        let chain_id = match parent {
            Some(p) => {
                let pinfo = self.info(p)?;
                let base = pinfo
                    .chain_id
                    .map_or_else(|| format!("snapshot:{p}"), |c| c.to_string());
                Digest::of(format!("{base} {diff_id}").as_bytes())
            }
            None => diff_id.clone(),
        };
        if let Some(id) = self.by_chain(&chain_id) {
            return Ok(id);
        }
        let active = self.prepare(parent, kind)?;
        if let Err(e) = crate::apply::apply_overlay_layer(&active.upper, reader) {
            let _ = self.abort(active);
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            return Err(SnapshotError::BadLayer {
                diff_id: diff_id.to_string(),
                reason,
            });
        }
        let id = self.commit_with(
            active,
            Some(diff_id.clone()),
            Some(chain_id.clone()),
            created,
        )?;
        write_atomic(&self.chains_dir().join(chain_id.hex()), id.0.as_bytes())?;
        Ok(id)
    }

    fn by_chain(&self, chain_id: &Digest) -> Option<SnapshotId> {
        let s = fs_err::read_to_string(self.chains_dir().join(chain_id.hex())).ok()?;
        let id = SnapshotId::parse(s.trim())?;
        self.exists(&id).then_some(id)
    }

    /// Whether the snapshot's upper dir holds no change at all.
    pub fn is_empty(&self, id: &SnapshotId) -> Result<bool> {
        Ok(fs_err::read_dir(self.upper(id))?.next().is_none()
            && !crate::diff::read_xattrs(&self.upper(id))?
                .iter()
                .any(|(k, _)| k == crate::overlay::opaque_xattr()))
    }

    /// Writes the snapshot's changes as a deterministic OCI layer tar
    /// (overlay whiteouts become `.wh.` entries, opaque dirs `.wh..wh..opq`).
    pub fn write_layer<W: Write>(&self, id: &SnapshotId, out: W, epoch: Option<u64>) -> Result<W> {
        Ok(Self::write_upper_layer(&self.upper(id), out, epoch)?.0)
    }

    /// Where the upper dir of snapshot `id` of the store at `state_root` is,
    /// without opening the store.
    pub fn upper_at(state_root: &Path, id: &SnapshotId) -> PathBuf {
        StateLayout::new(state_root)
            .snapshots()
            .join(&id.0)
            .join("fs")
    }

    /// Whether snapshot `id` of the store at `state_root` is committed.
    pub fn exists_at(state_root: &Path, id: &SnapshotId) -> bool {
        StateLayout::new(state_root)
            .snapshots()
            .join(&id.0)
            .join("meta.json")
            .is_file()
    }

    /// [`SnapshotStore::write_layer`] for the upper dir `upper`.
    pub fn write_upper_layer<W: Write>(
        upper: &Path,
        out: W,
        epoch: Option<u64>,
    ) -> Result<(W, u64)> {
        let mut tar = TarWriter::new(out, epoch);
        let mut links = HashMap::new();
        write_upper_dir(&mut tar, upper, &[], &mut links)?;
        let content = tar.content_size();
        Ok((tar.finish()?, content))
    }

    /// The diff ID, size and content size of the layer
    /// [`SnapshotStore::write_upper_layer`] writes for `upper`, without
    /// writing it anywhere: the tar is made on this thread and hashed on
    /// another, so reading the files and hashing them overlap.
    pub fn upper_layer_digest(upper: &Path, epoch: Option<u64>) -> Result<(Digest, u64, u64)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = std::thread::spawn(move || {
            let mut h = crate::digest::HashingWriter::new(io::sink());
            for chunk in rx {
                h.write_all(&chunk).expect("writing to a sink");
            }
            let (_, d, n) = h.finish();
            (d, n)
        });
        let chunks = crate::digest::ChunkWriter::new(1 << 20, move |c| {
            tx.send(c)
                .map_err(|_| io::Error::other("layer hasher stopped"))
        });
        let written = Self::write_upper_layer(upper, chunks, epoch).and_then(|(mut w, content)| {
            w.flush()?;
            drop(w);
            Ok(content)
        });
        let (d, size) = hasher
            .join()
            .map_err(|_| io::Error::other("layer hasher panicked"))?;
        Ok((d, size, written?))
    }

    /// Removes a committed snapshot (children are not checked).
    pub fn remove(&self, id: &SnapshotId) -> Result<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(SnapshotError::NotFound(id.0.clone()));
        }
        let trash = self
            .root
            .join(format!("{}{id}", self.temp_prefix("tmp-rm")));
        fs_err::rename(&dir, &trash)?;
        remove_tree(&trash)?;
        Ok(())
    }

    /// Removes every snapshot that is not in the chain of one of `keep`
    /// (e.g. the results the cache index still names) nor of one that a
    /// live process holds (see [`SnapshotStore::hold`]); returns what went.
    pub fn prune(&self, keep: &[SnapshotId]) -> Result<Vec<SnapshotId>> {
        let held = crate::lease::live_holds(&self.state_root)?;
        let keep: Vec<SnapshotId> = keep
            .iter()
            .cloned()
            .chain(held.snapshots.iter().filter_map(|s| SnapshotId::parse(s)))
            .collect();
        let mut live = std::collections::HashSet::new();
        for k in &keep {
            if let Ok(chain) = self.chain(k) {
                live.extend(chain);
            }
        }
        let mut removed = Vec::new();
        for (id, _) in self.list()? {
            if !live.contains(&id) {
                self.remove(&id)?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Removes a committed snapshot unless a live process holds it or a
    /// snapshot above it (returns `false` then, leaving it in place). The
    /// snapshot is first moved out of sight, then the leases are read: a
    /// process holds a snapshot before it checks that it exists, so it
    /// either sees it gone or its hold is seen here and the snapshot is put
    /// back.
    pub fn remove_unless_held(&self, id: &SnapshotId) -> Result<bool> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(true);
        }
        let trash = self
            .root
            .join(format!("{}{id}", self.temp_prefix("tmp-gc")));
        fs_err::rename(&dir, &trash)?;
        let held = crate::lease::live_holds(&self.state_root)?;
        let needed = held
            .snapshots
            .iter()
            .filter_map(|s| SnapshotId::parse(s))
            .any(|h| {
                let mut cur = Some(h);
                while let Some(c) = cur {
                    if c == *id {
                        return true;
                    }
                    cur = self.info(&c).ok().and_then(|i| i.parent);
                }
                false
            });
        if needed {
            fs_err::rename(&trash, &dir)?;
            return Ok(false);
        }
        remove_tree(&trash)?;
        Ok(true)
    }

    /// The snapshots a live process holds, with their chains.
    pub fn held_chains(&self) -> Result<std::collections::HashSet<SnapshotId>> {
        let held = crate::lease::live_holds(&self.state_root)?;
        let mut out = std::collections::HashSet::new();
        for h in held.snapshots.iter().filter_map(|s| SnapshotId::parse(s)) {
            let mut cur = Some(h);
            while let Some(c) = cur {
                if !out.insert(c.clone()) {
                    break;
                }
                cur = self.info(&c).ok().and_then(|i| i.parent);
            }
        }
        Ok(out)
    }

    /// All committed snapshots.
    pub fn list(&self) -> Result<Vec<(SnapshotId, SnapshotInfo)>> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(&self.root)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(SnapshotId::parse) else {
                continue;
            };
            if let Ok(info) = self.info(&id) {
                out.push((id, info));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("{e} (removing {})", p.display()),
        )),
        _ => Ok(()),
    }
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn sorted_children(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs_err::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

type Xattrs = Vec<(String, Vec<u8>)>;

fn layer_xattrs(path: &Path) -> io::Result<(Xattrs, bool)> {
    let all = crate::diff::read_xattrs(path).map_err(|e| match e {
        crate::Error::Io(e) => e,
        e => io::Error::other(e.to_string()),
    })?;
    let opaque = all
        .iter()
        .any(|(k, v)| k == crate::overlay::opaque_xattr() && v == b"y");
    let kept = all
        .into_iter()
        .filter(|(k, _)| !crate::overlay::is_own_xattr(k))
        .collect();
    Ok((kept, opaque))
}

/// One thing an overlay upper dir holds, as its layer tar shows it.
pub(crate) enum UpperItem<'a> {
    /// An entry; for a regular file (not a hard link) the file to read.
    Entry(&'a EntryMeta, Option<&'a Path>),
    /// A `.wh.NAME` whiteout of this path.
    Whiteout(&'a [u8]),
    /// An opaque marker in this directory.
    Opaque(&'a [u8]),
}

fn write_upper_dir<W: Write>(
    tar: &mut TarWriter<W>,
    dir: &Path,
    rel: &[u8],
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> io::Result<()> {
    walk_upper(dir, rel, links, &mut |item| match item {
        UpperItem::Entry(meta, Some(path)) => {
            let mut f = fs_err::File::open(path)?;
            tar.append(meta, Some(&mut f))
        }
        UpperItem::Entry(meta, None) => tar.append(meta, None),
        UpperItem::Whiteout(p) => tar.append_whiteout(p),
        UpperItem::Opaque(p) => tar.append_opaque(p),
    })
}

/// Walks an overlay upper dir in the order its layer tar is written (sorted,
/// depth first; a directory before what it holds), handing each item to
/// `visit`: whiteouts (0/0 character devices), opaque markers (the
/// `trusted.overlay.opaque` xattr), hard links (to the first path of the same
/// inode in this walk). Sockets are left out.
#[allow(clippy::cast_sign_loss)]
pub(crate) fn walk_upper(
    dir: &Path,
    rel: &[u8],
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    visit: &mut dyn FnMut(UpperItem<'_>) -> io::Result<()>,
) -> io::Result<()> {
    for name in sorted_children(dir)? {
        let path = dir.join(&name);
        let mut p = rel.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        let m = fs_err::symlink_metadata(&path)?;
        let ft = m.file_type();
        if ft.is_char_device() && m.rdev() == 0 {
            visit(UpperItem::Whiteout(&p))?;
            continue;
        }
        let (xattrs, opaque) = layer_xattrs(&path)?;
        let mut meta = EntryMeta {
            path: p.clone(),
            kind: EntryKind::File,
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            mtime: m.mtime().max(0) as u64,
            size: 0,
            xattrs,
        };
        if ft.is_dir() {
            meta.kind = EntryKind::Dir;
            visit(UpperItem::Entry(&meta, None))?;
            if opaque {
                visit(UpperItem::Opaque(&p))?;
            }
            walk_upper(&path, &p, links, visit)?;
        } else if ft.is_symlink() {
            meta.kind = EntryKind::Symlink(fs_err::read_link(&path)?.into_os_string().into_vec());
            visit(UpperItem::Entry(&meta, None))?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    meta.kind = EntryKind::Hardlink(first.clone());
                    visit(UpperItem::Entry(&meta, None))?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), p.clone());
            }
            meta.size = m.len();
            visit(UpperItem::Entry(&meta, Some(&path)))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            #[allow(clippy::cast_possible_truncation)]
            let (ma, mi) = (
                nix::sys::stat::major(m.rdev()) as u32,
                nix::sys::stat::minor(m.rdev()) as u32,
            );
            meta.kind = if ft.is_char_device() {
                EntryKind::Char(ma, mi)
            } else {
                EntryKind::Block(ma, mi)
            };
            visit(UpperItem::Entry(&meta, None))?;
        } else if ft.is_fifo() {
            meta.kind = EntryKind::Fifo;
            visit(UpperItem::Entry(&meta, None))?;
        }
        // Sockets are not part of a layer.
    }
    Ok(())
}
