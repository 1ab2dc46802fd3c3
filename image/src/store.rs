//! The content store and image index.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>   configs (by image ID) and uncompressed layers (by diff ID)
//! index.json           image records and tags
//! lock                 flock(2)ed by every writer of index.json and blobs/
//! tmp/                 staging for transactions (txn-<owner>-*) and other scratch,
//!                      removed once its owner process is dead
//! leases/              what running processes use (see rbuild_snapshotter::lease)
//! ```
//!
//! Every write goes to a temporary file that is fsynced, verified against its digest
//! and renamed into place; index.json is rewritten whole the same way while the lock
//! is held. Readers never lock: they see either the old or the new index.
//!
//! Concurrency: what a running process uses is held by its lease (images by ID,
//! blobs by digest): `image prune` and `rmi` read the live leases under the lock
//! and keep what they name. [`Store::resolve_and_hold`] takes the hold under the
//! lock, so an image is either held before a prune looks or already gone. A
//! transaction stages every blob it refers to (even one the store has: a prune may
//! remove it before the commit) and its commit, under the lock, checks that every
//! layer of its images is there ([`Txn::commit_held`] also holds the images it
//! wrote, for a caller that goes on reading them).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rbuild_snapshotter::layout::StateLayout;
use rbuild_snapshotter::lease::{Hold, Lease};
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};
use rbuild_snapshotter::{ApplyOptions, Decoder, Digest, HashingWriter};
use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::error::{Error, Result};
use crate::manifest::{self, Descriptor, Manifest};
use crate::reference::Reference;

/// One image record in the index.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageRecord {
    /// When the image entered this store (RFC 3339).
    pub added: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tag_time: Option<String>,
    /// `repo@sha256:...` of the manifests this image was pulled as or pushed
    /// as (docker's `RepoDigests`), one per repository, familiar repo names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
    /// A failed build's last good state (see [`Store::mark_last_good`]):
    /// listed only with `images -a` while it has no tag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_good: bool,
    /// Annotations of the image's manifest (`build --annotation`), in the
    /// manifests `save` and `push` write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a layer travelled to or from a registry: its compressed form there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSource {
    /// Digest of the compressed blob.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The registry as references name it (`127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// The repository in it (`library/busybox`).
    pub repository: String,
}

/// How many sources are kept per layer (the newest).
const LAYER_SOURCES_KEPT: usize = 16;

/// Adds `repo_digest` (`repo@sha256:...`) to `list`, replacing the entry of the
/// same repository.
fn put_repo_digest(list: &mut Vec<String>, repo_digest: &str) {
    let repo = repo_digest.split('@').next().unwrap_or(repo_digest);
    list.retain(|r| r.split('@').next() != Some(repo));
    list.push(repo_digest.to_owned());
    list.sort();
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: BTreeMap<Digest, ImageRecord>,
    /// Familiar `repo:tag` → image ID.
    tags: BTreeMap<String, Digest>,
    /// What is known about layer blobs (by diff ID).
    #[serde(default)]
    layers: BTreeMap<Digest, LayerRecord>,
}

/// What the index knows about a layer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Sum of the sizes of the regular files in the layer (docker's layer size).
    pub size: u64,
}

/// An image in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image ID: the digest of the config blob.
    pub id: Digest,
    pub config: ImageConfig,
    /// The config blob exactly as stored.
    pub raw_config: Vec<u8>,
    /// Tags pointing at this image, sorted.
    pub tags: Vec<Reference>,
    pub record: ImageRecord,
}

impl Image {
    /// Diff IDs of the layers, bottom first.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.config.rootfs.diff_ids
    }

    /// `created` of the config, seconds since the epoch.
    pub fn created_unix(&self) -> i64 {
        self.config.created_unix()
    }

    /// Whether no tag points at it.
    pub fn dangling(&self) -> bool {
        self.tags.is_empty()
    }
}

/// A layer blob in the store (an uncompressed tar, named by its diff ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    /// Size of the blob (the uncompressed tar).
    pub size: u64,
    /// Size of the files it holds, as docker counts an image's size.
    pub content_size: u64,
}

/// What `remove` and `prune` did, in docker's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveEvent {
    Untagged(String),
    Deleted(Digest),
}

/// What a committed transaction changed.
#[derive(Clone, Debug, Default)]
pub struct CommitReport {
    /// Each image with the tags it got.
    pub images: Vec<(Digest, Vec<Reference>)>,
    /// Tags that moved: (tag, image they pointed at before).
    pub retagged: Vec<(Reference, Digest)>,
}

/// A layer kept as a build snapshot rather than as a tar.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapLayer {
    /// The state root of the snapshot store holding it; absent: this store's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_root: Option<PathBuf>,
    snapshot: String,
    epoch: Option<u64>,
    /// Size of the tar.
    size: u64,
}

/// A blob being read: a file of the store, or a layer tar written from a
/// snapshot on a helper thread (and checked against its diff ID).
pub struct Blob(BlobSource);

enum BlobSource {
    File(fs_err::File),
    Generated(Generated),
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            BlobSource::File(f) => f.read(buf),
            BlobSource::Generated(g) => g.read(buf),
        }
    }
}

/// The receiving end of a layer tar written by a helper thread in chunks.
struct Generated {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Generated {
    fn start(upper: PathBuf, epoch: Option<u64>, diff_id: Digest) -> Self {
        // Two 1 MiB pieces ahead of the reader: enough to keep both sides
        // busy, little memory with several layers read at once (a push).
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let chunks = tx.clone();
            let sender = rbuild_snapshotter::ChunkWriter::new(1 << 20, move |c| {
                chunks
                    .send(Ok(c))
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "layer reader gone"))
            });
            let result =
                SnapshotStore::write_upper_layer(&upper, HashingWriter::new(sender), epoch)
                    .map_err(|e| io::Error::other(e.to_string()))
                    .and_then(|(w, _)| {
                        let (mut sender, d, _) = w.finish();
                        sender.flush()?;
                        if d == diff_id {
                            // The end (an empty chunk): a thread that dies
                            // before it leaves the reader with an error.
                            let _ = tx.send(Ok(Vec::new()));
                            Ok(())
                        } else {
                            Err(io::Error::other(format!(
                                "layer {diff_id} written again from {} came out as {d}",
                                upper.display()
                            )))
                        }
                    });
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(c)) if c.is_empty() => {
                    self.done = true;
                    return Ok(0);
                }
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the layer writer stopped before the end"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The store at one root directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// The paths under `root`.
    layout: StateLayout,
}

/// Held while writing; released on drop.
pub struct LockGuard {
    _file: std::fs::File,
}

fn fsync_dir(p: &Path) -> Result<()> {
    fs_err::File::open(p)?.sync_all()?;
    Ok(())
}

/// Makes the state root private, so that no other user reaches into it (its
/// snapshots hold whatever images carry, setuid binaries included): a missing
/// root is created `0700`; an existing rbuild root of ours (it has `blobs/`) or an
/// empty directory of ours that is open to others (as older rbuild made them) is
/// changed to `0700`. Any other directory is never re-moded behind the user's
/// back: one that others can enter and that holds something else is refused, as
/// is a root every user may write to (such as `/tmp`); one of another owner is
/// left as it is.
pub fn private_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs_err::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("creating the state root {}: {e}", root.display()),
            )
            .into());
        }
    }
    let m = fs_err::metadata(root)?;
    let unsafe_root = |reason: String| Error::UnsafeRoot {
        path: root.display().to_string(),
        reason,
    };
    if !m.is_dir() {
        return Err(unsafe_root("is not a directory".into()));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(unsafe_root(format!(
            "is writable by every user (mode {mode:04o}): use a directory of its own"
        )));
    }
    let me = fs_err::metadata("/proc/self")?.uid();
    if m.uid() == me && mode & 0o077 != 0 {
        // rbuild's: it has the store (`blobs/`) or only what the startup sweep
        // made (`leases/`), or nothing yet.
        let ours = StateLayout::new(root).blobs().is_dir()
            || fs_err::read_dir(root)?.all(|e| {
                e.is_ok_and(|e| e.file_name() == "leases" || e.file_name() == "rbuild-format")
            });
        if !ours {
            return Err(unsafe_root(format!(
                "is a directory others can enter (mode {mode:04o}) that holds something other \
                 than an rbuild state root; rbuild will not change its mode: use a new or \
                 empty directory"
            )));
        }
        fs_err::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `root`, which is made private:
    /// see [`private_root`].
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        private_root(&root)?;
        let layout = StateLayout::new(&root);
        layout.check_format()?;
        fs_err::create_dir_all(layout.blobs())?;
        fs_err::create_dir_all(layout.snap_layers())?;
        fs_err::create_dir_all(layout.tmp())?;
        Ok(Self { root, layout })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.layout.blobs().join(d.hex())
    }

    /// Where the record of a layer kept as a snapshot lives.
    fn snap_layer_path(&self, d: &Digest) -> PathBuf {
        self.layout.snap_layers().join(d.hex())
    }

    /// The snapshot a layer is kept as (its upper dir), if it is one and the
    /// snapshot exists.
    fn snap_layer(&self, d: &Digest) -> Option<(SnapLayer, PathBuf)> {
        let bytes = std::fs::read(self.snap_layer_path(d)).ok()?;
        let l: SnapLayer = serde_json::from_slice(&bytes).ok()?;
        let id = SnapshotId::parse(&l.snapshot)?;
        let state_root = l.state_root.as_deref().unwrap_or(&self.root);
        let upper = SnapshotStore::upper_at(state_root, &id);
        SnapshotStore::exists_at(state_root, &id).then_some((l, upper))
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file() || self.snap_layer(d).is_some()
    }

    /// The directory a layer kept as a snapshot lives in (its upper dir, with
    /// overlay whiteouts), when it is kept so (the build checks walk it instead
    /// of writing its tar).
    pub fn layer_dir(&self, d: &Digest) -> Option<PathBuf> {
        if self.blob_path(d).is_file() {
            return None;
        }
        self.snap_layer(d).map(|(_, upper)| upper)
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        match std::fs::metadata(self.blob_path(d)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self
                .snap_layer(d)
                .map(|(l, _)| l.size)
                .ok_or_else(|| Error::MissingBlob(d.clone())),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// Reads a blob. A layer kept as a snapshot is written from it on the fly
    /// and checked against its diff ID: a mismatch is a read error at the end.
    pub fn open_blob(&self, d: &Digest) -> Result<Blob> {
        match fs_err::File::open(self.blob_path(d)) {
            Ok(f) => return Ok(Blob(BlobSource::File(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let (l, upper) = self
            .snap_layer(d)
            .ok_or_else(|| Error::MissingBlob(d.clone()))?;
        Ok(Blob(BlobSource::Generated(Generated::start(
            upper,
            l.epoch,
            d.clone(),
        ))))
    }

    /// Where a layer's tar is read from by the squasher: its blob file, or
    /// the snapshot it is kept as (read as its tar would be written).
    pub fn layer_input(&self, d: &Digest) -> Result<rbuild_snapshotter::squash::LayerInput> {
        use rbuild_snapshotter::squash::LayerInput;
        let p = self.blob_path(d);
        if p.is_file() {
            return Ok(LayerInput::Tar(p));
        }
        let (l, upper) = self
            .snap_layer(d)
            .ok_or_else(|| Error::MissingBlob(d.clone()))?;
        Ok(LayerInput::Upper {
            dir: upper,
            epoch: l.epoch,
        })
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open_blob(d)?.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Every blob in the store with its size (layers kept as snapshots too).
    pub fn blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(self.layout.blobs())? {
            let e = e?;
            if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
                out.push((d, e.metadata()?.len()));
            }
        }
        for e in fs_err::read_dir(self.layout.snap_layers())? {
            let e = e?;
            if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
                if !out.iter().any(|(o, _)| *o == d) {
                    let size = std::fs::read(e.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice::<SnapLayer>(&b).ok())
                        .map_or(0, |l| l.size);
                    out.push((d, size));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The snapshots layers of this store are kept as (see
    /// [`Txn::add_snapshot_layer`]): `(state root when not this store's, snapshot ID)`.
    /// A build cache collector must keep them and their chains.
    pub fn snapshot_layers(&self) -> Result<Vec<(Option<PathBuf>, SnapshotId)>> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(self.layout.snap_layers())? {
            let e = e?;
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue; // removed meanwhile
            };
            if let Ok(l) = serde_json::from_slice::<SnapLayer>(&bytes) {
                if let Some(id) = SnapshotId::parse(&l.snapshot) {
                    out.push((l.state_root, id));
                }
            }
        }
        Ok(out)
    }

    /// Removes a blob, whichever way it is kept, and what the store knows of
    /// it in registries (its `layer-sources/` record).
    fn remove_blob(&self, d: &Digest) -> Result<()> {
        for p in [
            self.blob_path(d),
            self.snap_layer_path(d),
            self.layer_sources_path(d),
        ] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(())
    }

    /// Takes the writer lock (blocking) and removes staging left by dead processes.
    pub fn lock(&self) -> Result<LockGuard> {
        let f = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.layout.store_lock())?;
        let f = f.into_file();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(io::Error::from)?;
        self.clean_stale_tmp()?;
        Ok(LockGuard { _file: f })
    }

    /// Removes the scratch of dead processes from `tmp/` (their owner token in
    /// the name; older `<kind>-<pid>-*` names by PID).
    fn clean_stale_tmp(&self) -> Result<()> {
        rbuild_snapshotter::lease::sweep(&self.root, &[self.layout.tmp()])?;
        for e in fs_err::read_dir(self.layout.tmp())? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                    rbuild_snapshotter::lease::remove_all(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// This process's lease on the store's root.
    pub fn lease(&self) -> Result<std::sync::Arc<Lease>> {
        Ok(Lease::current(&self.root)?)
    }

    /// A name prefix for scratch of this process under `tmp/`
    /// (`<kind>-<owner token>-`): removed once the process is dead.
    pub fn temp_prefix(&self, kind: &str) -> Result<String> {
        Ok(self.lease()?.prefix(kind))
    }

    /// Where scratch goes (`<root>/tmp`).
    pub fn tmp_dir(&self) -> PathBuf {
        self.layout.tmp()
    }

    /// Resolves `name` (see [`Self::resolve`]) and holds the image in this
    /// process's lease, under the lock: a concurrent `prune` or `rmi` then
    /// leaves it (its record, config and layers) in place until the process
    /// ends.
    pub fn resolve_and_hold(&self, name: &str) -> Result<Image> {
        let _lock = self.lock()?;
        let id = self.resolve(name)?;
        self.lease()?.hold(Hold::Image, &id.to_string())?;
        self.image(&id)
    }

    /// Holds the image with ID `id` in this process's lease, under the lock
    /// (as [`Self::resolve_and_hold`], without looking a name up).
    pub fn hold_image(&self, id: &Digest) -> Result<Image> {
        let _lock = self.lock()?;
        let img = self.image(id)?;
        self.lease()?.hold(Hold::Image, &id.to_string())?;
        Ok(img)
    }

    /// Image IDs and blobs the live leases hold.
    fn held(&self) -> Result<(HashSet<Digest>, HashSet<Digest>)> {
        let h = rbuild_snapshotter::lease::live_holds(&self.root)?;
        let parse = |s: &BTreeSet<String>| -> HashSet<Digest> {
            s.iter().filter_map(|d| Digest::parse(d).ok()).collect()
        };
        Ok((parse(&h.images), parse(&h.blobs)))
    }

    /// Blobs that must stay: those of the images in the index and of held
    /// images (configs and layers), and held blobs.
    fn protected_blobs(
        &self,
        idx: &IndexFile,
        held: &(HashSet<Digest>, HashSet<Digest>),
    ) -> Result<HashSet<Digest>> {
        let mut used = self.used_blobs(idx)?;
        for id in &held.0 {
            if used.contains(id) {
                continue;
            }
            if let Ok(raw) = self.read_blob(id) {
                used.insert(id.clone());
                if let Ok(cfg) = ImageConfig::from_slice(&raw) {
                    used.extend(cfg.rootfs.diff_ids);
                }
            }
        }
        used.extend(held.1.iter().cloned());
        Ok(used)
    }

    fn read_index(&self) -> Result<IndexFile> {
        let p = self.layout.index_json();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::CorruptIndex {
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile {
                version: 1,
                ..IndexFile::default()
            }),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn write_index(&self, idx: &IndexFile, _lock: &LockGuard) -> Result<()> {
        let tmp =
            self.layout
                .tmp()
                .join(format!("{}{}.json", self.temp_prefix("index")?, unique()));
        let data = crate::json::canonical(idx)?;
        {
            let mut f = fs_err::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        fs_err::rename(&tmp, self.layout.index_json())?;
        fsync_dir(&self.root)?;
        Ok(())
    }

    /// Starts a transaction: blobs and images staged, then committed in one step.
    pub fn begin(&self) -> Result<Txn<'_>> {
        let dir = tempfile::Builder::new()
            .prefix(&self.temp_prefix("txn")?)
            .tempdir_in(self.layout.tmp())?;
        Ok(Txn {
            store: self,
            dir,
            blobs: Vec::new(),
            images: Vec::new(),
            layer_sizes: Vec::new(),
            snap_layers: Vec::new(),
            repo_digests: Vec::new(),
            n: 0,
        })
    }

    fn load_image(&self, id: &Digest, rec: &ImageRecord, idx: &IndexFile) -> Result<Image> {
        let raw_config = self.read_blob(id)?;
        let config = ImageConfig::from_slice(&raw_config)?;
        let mut tags: Vec<Reference> = idx
            .tags
            .iter()
            .filter(|(_, v)| *v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect();
        tags.sort();
        Ok(Image {
            id: id.clone(),
            config,
            raw_config,
            tags,
            record: rec.clone(),
        })
    }

    /// All images, newest first (by `created`, then ID).
    pub fn images(&self) -> Result<Vec<Image>> {
        let idx = self.read_index()?;
        let mut out = Vec::new();
        for (id, rec) in &idx.images {
            match self.load_image(id, rec, &idx) {
                Ok(img) => out.push(img),
                // Removed by a prune or rmi since the index was read.
                Err(_) if !self.read_index()?.images.contains_key(id) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            b.created_unix()
                .cmp(&a.created_unix())
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// The image with this ID.
    pub fn image(&self, id: &Digest) -> Result<Image> {
        let idx = self.read_index()?;
        let rec = idx
            .images
            .get(id)
            .ok_or_else(|| Error::NoSuchImage(id.to_string()))?;
        self.load_image(id, rec, &idx)
    }

    /// The image `name` resolves to (see [`Self::resolve`]).
    pub fn find(&self, name: &str) -> Result<Image> {
        self.image(&self.resolve(name)?)
    }

    /// Finds an image by `name[:tag]`, full or short ID, or `name@sha256:...`.
    pub fn resolve(&self, name: &str) -> Result<Digest> {
        let idx = self.read_index()?;
        self.resolve_in(&idx, name).map(|(d, _)| d)
    }

    /// Resolves `name`; the second value is the tag when it was found by tag.
    fn resolve_in(&self, idx: &IndexFile, name: &str) -> Result<(Digest, Option<Reference>)> {
        let not_found = || Error::NoSuchImage(name.to_owned());
        if let Ok(d) = Digest::parse(name) {
            return if idx.images.contains_key(&d) {
                Ok((d, None))
            } else {
                Err(not_found())
            };
        }
        if let Ok(r) = Reference::parse(name) {
            if let Some(d) = &r.digest {
                if idx.images.contains_key(d) {
                    return Ok((d.clone(), None));
                }
                let wanted = format!("{}@{d}", r.repo);
                if let Some((id, _)) = idx
                    .images
                    .iter()
                    .find(|(_, rec)| rec.repo_digests.contains(&wanted))
                {
                    return Ok((id.clone(), None));
                }
                for id in idx.images.keys() {
                    if let Ok(img) = self.image(id) {
                        if self.manifest(&img).is_ok_and(|(_, _, md)| md == *d) {
                            return Ok((id.clone(), None));
                        }
                    }
                }
                return Err(not_found());
            }
            let r = r.with_default_tag();
            if let Some(d) = idx.tags.get(&r.to_string()) {
                return Ok((d.clone(), Some(r)));
            }
        }
        let short = name.strip_prefix("sha256:").unwrap_or(name);
        if !short.is_empty()
            && short.len() <= 64
            && short
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let hits: Vec<&Digest> = idx
                .images
                .keys()
                .filter(|d| d.hex().starts_with(short))
                .collect();
            return match hits.len() {
                0 => Err(not_found()),
                1 => Ok((hits[0].clone(), None)),
                _ => Err(Error::Ambiguous(name.to_owned())),
            };
        }
        match Reference::parse(name) {
            Ok(_) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// Layers of an image, bottom first.
    pub fn layers(&self, img: &Image) -> Result<Vec<Layer>> {
        let idx = self.read_index()?;
        img.diff_ids()
            .iter()
            .map(|d| {
                let size = self.blob_size(d)?;
                Ok(Layer {
                    diff_id: d.clone(),
                    size,
                    content_size: idx.layers.get(d).map_or(size, |l| l.size),
                })
            })
            .collect()
    }

    /// An image's size as docker reports it: the files of its distinct layers.
    pub fn image_size(&self, img: &Image) -> Result<u64> {
        let mut seen = BTreeSet::new();
        Ok(self
            .layers(img)?
            .into_iter()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .map(|l| l.content_size)
            .sum())
    }

    /// The OCI manifest `save` writes for an image (uncompressed layers), its
    /// canonical bytes and its digest (shown as the image's repo digest).
    pub fn manifest(&self, img: &Image) -> Result<(Manifest, Vec<u8>, Digest)> {
        let layers = self
            .layers(img)?
            .into_iter()
            .map(|l| Descriptor::new(manifest::OCI_LAYER, l.diff_id, l.size))
            .collect();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor::new(
                manifest::OCI_CONFIG,
                img.id.clone(),
                img.raw_config.len() as u64,
            ),
            layers,
            annotations: Some(img.record.annotations.clone()).filter(|a| !a.is_empty()),
            extra: BTreeMap::new(),
        };
        let bytes = crate::json::canonical(&m)?;
        let d = Digest::of(&bytes);
        Ok((m, bytes, d))
    }

    /// Unpacks an image's layers, in order, into `dest` (which must exist).
    pub fn unpack(&self, img: &Image, dest: &Path, opts: &ApplyOptions) -> Result<()> {
        for d in img.diff_ids() {
            let f = self.open_blob(d)?;
            rbuild_snapshotter::apply_layer(
                dest,
                io::BufReader::with_capacity(256 * 1024, f),
                opts,
            )?;
        }
        Ok(())
    }

    /// Marks image `id` as a failed build's last good state: kept for `rbuild
    /// run` like any dangling image (and removed by `image prune` like one),
    /// but not listed by `images` without `-a`.
    pub fn mark_last_good(&self, id: &Digest) -> Result<()> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        if let Some(rec) = idx.images.get_mut(id) {
            rec.last_good = true;
        }
        self.write_index(&idx, &lock)
    }

    /// Sets the annotations of image `id`'s manifest (replacing any).
    pub fn set_annotations(
        &self,
        id: &Digest,
        annotations: BTreeMap<String, String>,
    ) -> Result<()> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        if let Some(rec) = idx.images.get_mut(id) {
            rec.annotations = annotations;
        }
        self.write_index(&idx, &lock)
    }

    /// Points `target` at the image `source` resolves to. Returns the image the tag
    /// pointed at before, if it moved.
    pub fn tag(&self, source: &str, target: &Reference) -> Result<Option<Digest>> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        target.check_tag()?;
        let (id, _) = self.resolve_in(&idx, source)?;
        let key = target.clone().with_default_tag().to_string();
        let old = idx.tags.insert(key, id.clone());
        if let Some(rec) = idx.images.get_mut(&id) {
            rec.last_tag_time = Some(now_rfc3339());
        }
        self.write_index(&idx, &lock)?;
        Ok(old.filter(|o| *o != id))
    }

    /// Records `repo_digest` (`repo@sha256:...`, the manifest it was pushed
    /// as) for the image `id`.
    pub fn add_repo_digest(&self, id: &Digest, repo_digest: &str) -> Result<()> {
        let lock = self.lock()?;
        let mut idx = self.read_index()?;
        let rec = idx
            .images
            .get_mut(id)
            .ok_or_else(|| Error::NoSuchImage(id.to_string()))?;
        put_repo_digest(&mut rec.repo_digests, repo_digest);
        self.write_index(&idx, &lock)
    }

    fn layer_sources_path(&self, diff_id: &Digest) -> PathBuf {
        self.layout.layer_sources().join(diff_id.hex())
    }

    /// The compressed forms a layer was pulled or pushed as, newest last.
    pub fn layer_sources(&self, diff_id: &Digest) -> Vec<LayerSource> {
        std::fs::read(self.layer_sources_path(diff_id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Remembers that the layer `diff_id` is `source` in a registry (written
    /// to a temp file and renamed, under the lock).
    pub fn add_layer_source(&self, diff_id: &Digest, source: LayerSource) -> Result<()> {
        let _lock = self.lock()?;
        let mut list = self.layer_sources(diff_id);
        list.retain(|s| {
            !(s.registry == source.registry
                && s.repository == source.repository
                && s.digest == source.digest)
        });
        list.push(source);
        if list.len() > LAYER_SOURCES_KEPT {
            list.drain(..list.len() - LAYER_SOURCES_KEPT);
        }
        let dir = self.layout.layer_sources();
        fs_err::create_dir_all(&dir)?;
        let tmp = self.layout.tmp().join(format!(
            "{}{}.json",
            self.temp_prefix("layersource")?,
            unique()
        ));
        fs_err::write(&tmp, serde_json::to_vec(&list).map_err(io::Error::other)?)?;
        fs_err::rename(&tmp, self.layer_sources_path(diff_id))?;
        Ok(())
    }

    /// `rmi`: removes tags and images with docker's rules; see the crate docs.
    /// An image a running process holds is not deleted: removed by tag it
    /// loses the tag only, by ID it is refused ([`Error::InUse`]).
    pub fn remove(&self, names: &[String], force: bool) -> Result<Vec<Result<Vec<RemoveEvent>>>> {
        let lock = self.lock()?;
        let held = self.held()?;
        let mut results = Vec::new();
        for name in names {
            let mut idx = self.read_index()?;
            let r = self.remove_one(&mut idx, name, force, &held);
            let r = match r {
                Ok((events, freed)) => {
                    self.write_index(&idx, &lock)?;
                    self.delete_blobs(&freed)?;
                    Ok(events)
                }
                Err(e) => Err(e),
            };
            results.push(r);
        }
        Ok(results)
    }

    #[allow(clippy::unused_self)]
    fn children(&self, idx: &IndexFile, id: &Digest) -> usize {
        idx.images
            .values()
            .filter(|r| r.parent.as_ref() == Some(id))
            .count()
    }

    fn remove_one(
        &self,
        idx: &mut IndexFile,
        name: &str,
        force: bool,
        held: &(HashSet<Digest>, HashSet<Digest>),
    ) -> Result<(Vec<RemoveEvent>, Vec<Digest>)> {
        let (id, by_tag) = self.resolve_in(idx, name)?;
        let in_use = held.0.contains(&id);
        if in_use && by_tag.is_none() {
            return Err(Error::InUse(id.hex()[..12].to_owned()));
        }
        let tags: Vec<String> = idx
            .tags
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let mut events = Vec::new();
        if let Some(tag) = by_tag {
            let key = tag.to_string();
            idx.tags.remove(&key);
            events.push(RemoveEvent::Untagged(key));
            if tags.len() > 1 || self.children(idx, &id) > 0 || in_use {
                return Ok((events, Vec::new()));
            }
        } else {
            let repos: BTreeSet<&str> = tags
                .iter()
                .map(|t| t.rsplit_once(':').map_or(t.as_str(), |(r, _)| r))
                .collect();
            if repos.len() > 1 && !force {
                return Err(Error::Conflict {
                    id: id.hex()[..12].to_owned(),
                    reason: "image is referenced in multiple repositories".into(),
                });
            }
            if self.children(idx, &id) > 0 && !force {
                return Err(Error::Conflict {
                    id: id.hex()[..12].to_owned(),
                    reason: "image has dependent child images".into(),
                });
            }
            for t in &tags {
                idx.tags.remove(t);
                events.push(RemoveEvent::Untagged(t.clone()));
            }
        }
        let freed = self.delete_image(idx, &id, &mut events, held)?;
        Ok((events, freed))
    }

    /// Drops an image record; returns the blobs no longer used (config and layers,
    /// top layer first, in the order docker reports them).
    fn delete_image(
        &self,
        idx: &mut IndexFile,
        id: &Digest,
        events: &mut Vec<RemoveEvent>,
        held: &(HashSet<Digest>, HashSet<Digest>),
    ) -> Result<Vec<Digest>> {
        let img = idx.images.remove(id);
        if img.is_none() {
            return Ok(Vec::new());
        }
        for r in idx.images.values_mut() {
            if r.parent.as_ref() == Some(id) {
                r.parent = None;
            }
        }
        events.push(RemoveEvent::Deleted(id.clone()));
        let mut freed = vec![id.clone()];
        let cfg = ImageConfig::from_slice(&self.read_blob(id)?)?;
        let used = self.protected_blobs(idx, held)?;
        let mut seen = HashSet::new();
        for d in cfg.rootfs.diff_ids.iter().rev() {
            if !used.contains(d) && seen.insert(d.clone()) {
                idx.layers.remove(d);
                events.push(RemoveEvent::Deleted(d.clone()));
                freed.push(d.clone());
            }
        }
        Ok(freed)
    }

    fn used_blobs(&self, idx: &IndexFile) -> Result<HashSet<Digest>> {
        let mut used = HashSet::new();
        for id in idx.images.keys() {
            used.insert(id.clone());
            let cfg = ImageConfig::from_slice(&self.read_blob(id)?)?;
            used.extend(cfg.rootfs.diff_ids);
        }
        Ok(used)
    }

    fn delete_blobs(&self, ds: &[Digest]) -> Result<()> {
        for d in ds {
            self.remove_blob(d)?;
        }
        Ok(())
    }

    /// `image prune`: removes dangling images (all images with `all`: rbuild has no
    /// containers) that are no other image's parent and that no running process
    /// holds (a build's base image, an image being saved), and blobs no image
    /// uses. Returns the events and the bytes reclaimed.
    pub fn prune(&self, all: bool) -> Result<(Vec<RemoveEvent>, u64)> {
        let lock = self.lock()?;
        let held = self.held()?;
        let mut idx = self.read_index()?;
        let mut events = Vec::new();
        loop {
            let tagged: HashSet<Digest> = idx.tags.values().cloned().collect();
            let victims: Vec<Digest> = idx
                .images
                .keys()
                .filter(|id| {
                    (all || !tagged.contains(*id))
                        && self.children(&idx, id) == 0
                        && !held.0.contains(*id)
                })
                .cloned()
                .collect();
            if victims.is_empty() {
                break;
            }
            for id in victims {
                let tags: Vec<String> = idx
                    .tags
                    .iter()
                    .filter(|(_, v)| **v == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for t in tags {
                    idx.tags.remove(&t);
                    events.push(RemoveEvent::Untagged(t));
                }
                idx.images.remove(&id);
                events.push(RemoveEvent::Deleted(id));
            }
        }
        let used = self.protected_blobs(&idx, &held)?;
        idx.layers.retain(|d, _| used.contains(d));
        self.write_index(&idx, &lock)?;
        let mut reclaimed = 0;
        let mut layer_events = Vec::new();
        for (d, size) in self.blobs()? {
            if !used.contains(&d) {
                reclaimed += size;
                self.remove_blob(&d)?;
                if !events.contains(&RemoveEvent::Deleted(d.clone())) {
                    layer_events.push(RemoveEvent::Deleted(d));
                }
            }
        }
        events.extend(layer_events);
        // Records of layers that are gone (left by a store of before they
        // went with their layer).
        if let Ok(rd) = std::fs::read_dir(self.layout.layer_sources()) {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(d) = name
                    .to_str()
                    .and_then(|h| Digest::parse(&format!("sha256:{h}")).ok())
                else {
                    continue;
                };
                if !used.contains(&d) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok((events, reclaimed))
    }
}

fn now_rfc3339() -> String {
    let (s, n) = crate::time::now();
    crate::time::format_rfc3339(s, n)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An image staged in a [`Txn`]: ID, tags, parent, diff IDs of its layers.
type StagedImage = (Digest, Vec<Reference>, Option<Digest>, Vec<Digest>);

/// A set of staged blobs and images, committed together by [`Txn::commit`]. Dropped
/// without commit, it leaves the store exactly as it was.
pub struct Txn<'s> {
    store: &'s Store,
    dir: tempfile::TempDir,
    blobs: Vec<(PathBuf, Digest)>,
    images: Vec<StagedImage>,
    layer_sizes: Vec<(Digest, u64)>,
    /// Layers kept as snapshots: the record staged, and its diff ID.
    /// Records of layers kept as snapshots: written at commit, under the
    /// lock, unless the store holds the same bytes already.
    snap_layers: Vec<(Vec<u8>, Digest)>,
    /// Repo digests to record: (image ID, `repo@digest`).
    repo_digests: Vec<(Digest, String)>,
    n: usize,
}

impl Txn<'_> {
    /// A directory for scratch files of this transaction (removed with it).
    pub fn staging_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh staging path.
    pub fn staging_path(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("blob-{}", self.n))
    }

    fn staged(&self, d: &Digest) -> bool {
        self.blobs.iter().any(|(_, b)| b == d) || self.snap_layers.iter().any(|(_, b)| b == d)
    }

    /// Stages a layer kept as the committed snapshot `snapshot` of the
    /// snapshot store at `state_root` instead of as a tar: `diff_id`, `size`
    /// and `content_size` are those of the tar
    /// [`SnapshotStore::write_upper_layer`] writes from it with `epoch`.
    /// Reading the blob writes that tar again (and checks it). The snapshot
    /// must stay as long as the layer is in the store. The record is staged
    /// even when the store has the layer already: a prune may remove it
    /// before the commit.
    pub fn add_snapshot_layer(
        &mut self,
        state_root: &Path,
        snapshot: &SnapshotId,
        epoch: Option<u64>,
        diff_id: Digest,
        size: u64,
        content_size: u64,
    ) -> Result<()> {
        if self.staged(&diff_id) {
            return Ok(());
        }
        let same = |a: &Path, b: &Path| match (fs_err::canonicalize(a), fs_err::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let state_root = if same(state_root, &self.store.root) {
            None
        } else {
            Some(fs_err::canonicalize(state_root)?)
        };
        let rec = SnapLayer {
            state_root,
            snapshot: snapshot.as_str().to_owned(),
            epoch,
            size,
        };
        let bytes = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        self.layer_sizes.push((diff_id.clone(), content_size));
        self.snap_layers.push((bytes, diff_id));
        Ok(())
    }

    /// Whether the blob is in the store or staged here.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.staged(d) || self.store.has_blob(d)
    }

    /// Stages a file already written inside the staging dir whose digest the
    /// caller computed. Kept even when the store has the blob already (a prune
    /// may remove it before the commit); the commit moves it in only if needed.
    pub fn adopt(&mut self, path: PathBuf, digest: Digest) {
        if !self.staged(&digest) {
            self.blobs.push((path, digest));
        }
    }

    /// Stages a blob from a stream, verifying it against `expected` when given.
    #[allow(clippy::many_single_char_names)]
    pub fn put_blob<R: Read>(
        &mut self,
        mut r: R,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let path = self.staging_path();
        let mut w = HashingWriter::new(io::BufWriter::new(fs_err::File::create(&path)?));
        io::copy(&mut r, &mut w)?;
        let (buf, d, n) = w.finish();
        let f = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        if let Some(e) = expected {
            if *e != d {
                return Err(Error::DigestMismatch {
                    expected: e.clone(),
                    actual: d,
                });
            }
        }
        self.adopt(path, d.clone());
        Ok((d, n))
    }

    /// Stages a small blob.
    pub fn put_bytes(&mut self, data: &[u8]) -> Result<Digest> {
        Ok(self.put_blob(data, None)?.0)
    }

    /// Stages a layer from a tar stream, plain or compressed (gzip, zstd, bzip2,
    /// xz); the stored blob is the uncompressed tar, named by its diff ID. The tar
    /// is checked: it must be complete and no entry may escape its root.
    pub fn put_layer<R: Read + Send + 'static>(&mut self, r: R) -> Result<(Digest, u64)> {
        let dec = Decoder::new(r)?;
        let (d, n) = self.put_blob(dec, None)?;
        if n == 0 {
            return Err(Error::BadTar("empty input".into()));
        }
        let path = self
            .blobs
            .iter()
            .find(|(_, b)| *b == d)
            .map(|(p, _)| p.clone());
        let path = path.unwrap_or_else(|| self.store.blob_path(&d));
        let content = check_layer(&path)?;
        self.layer_sizes.push((d.clone(), content));
        Ok((d, n))
    }

    /// Stages an uncompressed layer written by `produce` (e.g. a tar writer);
    /// returns its diff ID and size. Nothing is held in memory.
    pub fn write_layer<F>(&mut self, produce: F) -> Result<(Digest, u64)>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let path = self.staging_path();
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(
            256 * 1024,
            fs_err::File::create(&path)?,
        ));
        produce(&mut w)?;
        let (buf, d, n) = w.finish();
        let f = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        self.adopt_layer(path, d.clone())?;
        Ok((d, n))
    }

    /// [`Txn::write_layer`] for a layer this process writes from entries it
    /// checked as it read them (a squashed layer): `produce` returns the
    /// layer's content size, and the tar is not read through again.
    pub fn write_own_layer<F>(&mut self, produce: F) -> Result<(Digest, u64)>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<u64>,
    {
        let path = self.staging_path();
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(
            256 * 1024,
            fs_err::File::create(&path)?,
        ));
        let content = produce(&mut w)?;
        let (buf, d, n) = w.finish();
        let f = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        if !self.staged(&d) && !self.store.has_blob(&d) {
            self.layer_sizes.push((d.clone(), content));
        }
        self.adopt(path, d.clone());
        Ok((d, n))
    }

    /// Stages an uncompressed layer file already inside the staging dir whose diff ID
    /// the caller computed; the tar is checked (complete, nothing escaping) unless the
    /// store has that layer already (then it was checked when it came in).
    pub fn adopt_layer(&mut self, path: PathBuf, diff_id: Digest) -> Result<()> {
        if self.staged(&diff_id) {
            return Ok(());
        }
        if self.store.has_blob(&diff_id) {
            self.adopt(path, diff_id);
            return Ok(());
        }
        let content = check_layer(&path)?;
        self.layer_sizes.push((diff_id.clone(), content));
        self.adopt(path, diff_id);
        Ok(())
    }

    /// Stages the layer that turns `lower` (None: empty) into `upper`, with
    /// whiteouts; returns its diff ID and size.
    pub fn add_diff(
        &mut self,
        lower: Option<&Path>,
        upper: &Path,
        opts: &rbuild_snapshotter::DiffOptions,
    ) -> Result<(Digest, u64)> {
        let mut err = None;
        let r = self.write_layer(
            |w| match rbuild_snapshotter::write_diff(lower, upper, w, opts) {
                Ok(_) => Ok(()),
                Err(rbuild_snapshotter::Error::Io(e)) => Err(e),
                Err(e) => {
                    err = Some(e);
                    Err(io::Error::other("diff failed"))
                }
            },
        );
        match (r, err) {
            (_, Some(e)) => Err(e.into()),
            (r, None) => r,
        }
    }

    /// Stages an image whose config blob is `config` (canonical bytes written by the
    /// caller or taken as is) and tags it. Layers must be staged or stored.
    pub fn add_image(
        &mut self,
        config: &[u8],
        tags: Vec<Reference>,
        parent: Option<Digest>,
    ) -> Result<Digest> {
        for t in &tags {
            t.check_tag()?;
        }
        let cfg = ImageConfig::from_slice(config)?;
        let id = self.put_bytes(config)?;
        for d in &cfg.rootfs.diff_ids {
            if !self.has_blob(d) {
                return Err(Error::MissingBlob(d.clone()));
            }
        }
        self.images.push((
            id.clone(),
            tags.into_iter().map(Reference::with_default_tag).collect(),
            parent,
            cfg.rootfs.diff_ids,
        ));
        Ok(id)
    }

    /// Records `repo_digest` (`repo@sha256:...`, the manifest the image was
    /// pulled as) for the staged or stored image `id` at commit.
    pub fn add_repo_digest(&mut self, id: &Digest, repo_digest: String) {
        self.repo_digests.push((id.clone(), repo_digest));
    }

    /// Stages an image from a config value (written as canonical JSON).
    pub fn add_config(
        &mut self,
        config: &ImageConfig,
        tags: Vec<Reference>,
        parent: Option<Digest>,
    ) -> Result<Digest> {
        let bytes = config.to_canonical()?;
        self.add_image(&bytes, tags, parent)
    }

    /// Moves the staged blobs into the store and records the images and tags, under
    /// the lock. Fails, recording nothing, when a layer of an image is not in the
    /// store by then.
    pub fn commit(self) -> Result<CommitReport> {
        self.commit_inner(false)
    }

    /// [`Txn::commit`], and the images are held by this process's lease from the
    /// same moment (a concurrent prune leaves them until the process ends): for a
    /// caller that goes on reading what it wrote.
    pub fn commit_held(self) -> Result<CommitReport> {
        self.commit_inner(true)
    }

    fn commit_inner(self, hold: bool) -> Result<CommitReport> {
        let lock = self.store.lock()?;
        for (path, d) in &self.blobs {
            let dest = self.store.blob_path(d);
            if !dest.exists() {
                fs_err::rename(path, &dest)?;
            }
        }
        fsync_dir(&self.store.layout.blobs())?;
        // A record already there with the same bytes is left alone: a rebuild
        // that exports the same layers writes (and allocates) nothing.
        let mut renamed = false;
        for (i, (bytes, d)) in self.snap_layers.iter().enumerate() {
            let dest = self.store.snap_layer_path(d);
            if self.store.blob_path(d).exists()
                || std::fs::read(&dest).is_ok_and(|old| old == *bytes)
            {
                continue;
            }
            let tmp = self.dir.path().join(format!("snaplayer-{i}"));
            fs_err::write(&tmp, bytes)?;
            fs_err::rename(&tmp, dest)?;
            renamed = true;
        }
        if renamed {
            fsync_dir(&self.store.layout.snap_layers())?;
        }
        let lease = self.store.lease()?;
        for (id, _, _, diff_ids) in &self.images {
            for d in std::iter::once(id).chain(diff_ids) {
                if !self.store.has_blob(d) {
                    return Err(Error::MissingBlob(d.clone()));
                }
            }
            if hold {
                lease.hold(Hold::Image, &id.to_string())?;
            }
        }
        let mut idx = self.store.read_index()?;
        for (d, size) in &self.layer_sizes {
            idx.layers
                .entry(d.clone())
                .or_insert(LayerRecord { size: *size });
        }
        let mut report = CommitReport::default();
        let now = now_rfc3339();
        for (id, tags, parent, _) in &self.images {
            let rec = idx.images.entry(id.clone()).or_insert_with(|| ImageRecord {
                added: now.clone(),
                parent: parent.clone(),
                last_tag_time: None,
                repo_digests: Vec::new(),
                last_good: false,
                annotations: BTreeMap::new(),
            });
            if !tags.is_empty() {
                rec.last_tag_time = Some(now.clone());
            }
            for t in tags {
                if let Some(old) = idx.tags.insert(t.to_string(), id.clone()) {
                    if old != *id {
                        report.retagged.push((t.clone(), old));
                    }
                }
            }
            report.images.push((id.clone(), tags.clone()));
        }
        for (id, rd) in &self.repo_digests {
            if let Some(rec) = idx.images.get_mut(id) {
                put_repo_digest(&mut rec.repo_digests, rd);
            }
        }
        self.store.write_index(&idx, &lock)?;
        Ok(report)
    }
}

/// Reads a layer tar through: complete, well-formed, no entry escaping its root.
/// Returns its content size: regular files' sizes plus symlink target lengths.
pub fn check_layer(path: &Path) -> Result<u64> {
    let mut content = 0;
    let f = io::BufReader::new(fs_err::File::open(path)?);
    let mut a = tar::Archive::new(f);
    let entries = a.entries().map_err(|e| Error::BadTar(e.to_string()))?;
    for e in entries {
        let mut e = e.map_err(|e| Error::BadTar(format!("truncated or corrupt: {e}")))?;
        rbuild_snapshotter::apply::clean_name(&e.path_bytes())?;
        if e.header().entry_type() == tar::EntryType::Link {
            if let Some(l) = e.link_name_bytes() {
                rbuild_snapshotter::apply::clean_name(&l)?;
            }
        }
        let want = e.header().size().unwrap_or(0);
        let got = io::copy(&mut e, &mut io::sink())
            .map_err(|err| Error::BadTar(format!("truncated tarball: {err}")))?;
        if got != want {
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            return Err(Error::BadTar(format!(
                "truncated tarball: {name} has {got} of {want} bytes"
            )));
        }
        // As docker's graph drivers measure a layer: file sizes plus symlink lengths.
        match e.header().entry_type() {
            t if t.is_file() => content += want,
            tar::EntryType::Symlink => content += e.link_name_bytes().map_or(0, |l| l.len() as u64),
            _ => {}
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ImageConfig, RootFs};

    #[test]
    fn a_layer_kept_as_a_snapshot_reads_as_its_tar_and_is_checked() {
        use rbuild_snapshotter::snapshots::SnapshotStore;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let store = Store::open(&root).unwrap();
        let snaps = SnapshotStore::open(&root).unwrap();
        let a = snaps.prepare(None, "test").unwrap();
        fs_err::create_dir_all(a.upper.join("app")).unwrap();
        fs_err::write(a.upper.join("app/f"), "content").unwrap();
        std::os::unix::fs::symlink("f", a.upper.join("app/l")).unwrap();
        let sid = snaps.commit(a).unwrap();
        let upper = snaps.upper(&sid);
        let (d, size, content) =
            SnapshotStore::upper_layer_digest(&upper, Some(1_600_000_000)).unwrap();
        let (tar, content2) =
            SnapshotStore::write_upper_layer(&upper, Vec::new(), Some(1_600_000_000)).unwrap();
        assert_eq!(d, Digest::of(&tar), "the digest is the tar's");
        assert_eq!((size, content, content2), (tar.len() as u64, 8, 8));

        let mut txn = store.begin().unwrap();
        txn.add_snapshot_layer(&root, &sid, Some(1_600_000_000), d.clone(), size, content)
            .unwrap();
        let cfg = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![d.clone()],
            },
            ..ImageConfig::default()
        };
        txn.add_config(&cfg, vec![Reference::parse("snap").unwrap()], None)
            .unwrap();
        assert!(!store.has_blob(&d), "nothing is visible before commit");
        txn.commit().unwrap();
        assert!(store.has_blob(&d));
        assert!(!store.blob_path(&d).exists(), "no tar was written");
        assert_eq!(store.blob_size(&d).unwrap(), size);
        assert_eq!(store.read_blob(&d).unwrap(), tar);
        let img = store.find("snap").unwrap();
        let dest = t.path().join("dest");
        fs_err::create_dir(&dest).unwrap();
        store
            .unpack(
                &img,
                &dest,
                &rbuild_snapshotter::ApplyOptions {
                    chown: false,
                    owner: None,
                },
            )
            .unwrap();
        assert_eq!(
            fs_err::read_to_string(dest.join("app/f")).unwrap(),
            "content"
        );
        assert_eq!(store.image_size(&img).unwrap(), 8);

        // A snapshot changed behind the store's back is an error, not a wrong tar.
        fs_err::write(upper.join("app/f"), "CONTENT").unwrap();
        let e = store.read_blob(&d).unwrap_err().to_string();
        assert!(e.contains("came out as"), "{e}");

        // Removing the image drops the record, not the snapshot.
        store.remove(&["snap".to_owned()], false).unwrap();
        assert!(!store.has_blob(&d));
        assert!(store.blobs().unwrap().is_empty());
        assert!(snaps.exists(&sid));
    }

    #[test]
    fn a_build_writes_diff_layers_and_unpacks_them_again() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("root")).unwrap();
        let (low, up) = (t.path().join("low"), t.path().join("up"));
        fs_err::create_dir_all(low.join("etc")).unwrap();
        fs_err::write(low.join("etc/a"), "a").unwrap();
        fs_err::write(low.join("etc/gone"), "g").unwrap();
        fs_err::create_dir_all(up.join("etc")).unwrap();
        fs_err::write(up.join("etc/a"), "a2").unwrap();
        fs_err::write(up.join("etc/new"), "n").unwrap();
        let opts = rbuild_snapshotter::DiffOptions {
            source_date_epoch: Some(1_600_000_000),
        };
        let mut txn = store.begin().unwrap();
        let (base, _) = txn.add_diff(None, &low, &opts).unwrap();
        let (top, _) = txn.add_diff(Some(&low), &up, &opts).unwrap();
        let cfg = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![base, top],
            },
            ..ImageConfig::default()
        };
        let id = txn
            .add_config(&cfg, vec![Reference::parse("built").unwrap()], None)
            .unwrap();
        assert!(!store.has_blob(&id), "nothing is visible before commit");
        txn.commit().unwrap();
        let img = store.find("built:latest").unwrap();
        assert_eq!(img.id, id);
        let dest = t.path().join("dest");
        fs_err::create_dir(&dest).unwrap();
        store
            .unpack(
                &img,
                &dest,
                &rbuild_snapshotter::ApplyOptions {
                    chown: false,
                    owner: None,
                },
            )
            .unwrap();
        assert_eq!(fs_err::read_to_string(dest.join("etc/a")).unwrap(), "a2");
        assert_eq!(fs_err::read_to_string(dest.join("etc/new")).unwrap(), "n");
        assert!(!dest.join("etc/gone").exists());
    }

    #[test]
    fn a_dropped_transaction_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        {
            let mut txn = store.begin().unwrap();
            txn.put_bytes(b"hello").unwrap();
        }
        assert!(store.blobs().unwrap().is_empty());
        assert_eq!(fs_err::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn put_blob_verifies_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let mut txn = store.begin().unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            txn.put_blob(&b"hello"[..], Some(&wrong)),
            Err(Error::DigestMismatch { .. })
        ));
        let right = Digest::of(b"hello");
        assert_eq!(txn.put_blob(&b"hello"[..], Some(&right)).unwrap().0, right);
    }
}
