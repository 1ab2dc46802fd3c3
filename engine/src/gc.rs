//! The build cache and its garbage collector (`rbuild builder prune`,
//! `rbuild system df`, the automatic GC after a build).
//!
//! The build cache is everything under the state root that a build made and
//! that no image needs: snapshots (with the cache-index records naming them),
//! snapshot and context checksums, copy-reuse and layer-cache records, the
//! records of the git checkouts kept as snapshots (`git-checkouts/`), the
//! unpacked roots of `rbuild run` (`rootfs-cache/`) and, with `all`, the
//! cache mounts. As `BuildKit`'s image-ref checker, a snapshot that an image
//! of the store keeps a layer as (`snaplayers/`), or whose chain ID is one of
//! an image's layer chains (an unpacked base image), is never deleted, nor
//! any snapshot below it. What a live process holds in its lease stays too
//! (see [`SnapshotStore::remove_unless_held`]). A snapshot goes only with
//! everything above it, so no chain is left without its base.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_image::{Digest, Store};
use rbuild_snapshotter::layout::StateLayout;
use rbuild_snapshotter::lease;
use rbuild_snapshotter::snapshots::{SnapshotError, SnapshotId, SnapshotStore};
use rbuild_solver::{CacheIndex, CacheIndexError};

/// What went wrong collecting the build cache.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Image(#[from] rbuild_image::Error),
    #[error(transparent)]
    CacheIndex(#[from] CacheIndexError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

type Result<T> = std::result::Result<T, GcError>;

/// What `builder prune` removes.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Cache mounts too, and every unused `run` root.
    pub all: bool,
    /// Only what was last used longer ago than this.
    pub until: Option<Duration>,
    /// Remove oldest-used first until the build cache is at most this big.
    pub keep_storage: Option<u64>,
}

/// One removed object: its ID and the bytes it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub id: String,
    pub size: u64,
}

/// What a prune removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub removed: Vec<Removed>,
    /// Every byte freed (the removed objects and the records that described them).
    pub reclaimed: u64,
}

/// One snapshot of the build cache.
#[derive(Clone, Debug)]
pub struct CacheItem {
    pub id: SnapshotId,
    pub parent: Option<SnapshotId>,
    /// Bytes on disk (hard links counted once over the whole survey).
    pub size: u64,
    /// Seconds since the Unix epoch of the last use of it or a snapshot above it.
    pub last_used: u64,
    /// An image uses it or a live process holds it: not reclaimable.
    pub in_use: bool,
    /// What made it (the cache record's step name, else the snapshot kind).
    pub description: String,
    depth: usize,
}

/// The build cache as `system df` reports it.
#[derive(Clone, Debug, Default)]
pub struct CacheUsage {
    pub items: Vec<CacheItem>,
    /// Bytes of the other records (checksums, copy-reuse, layer cache,
    /// cache index, `run` roots).
    pub records_size: u64,
    /// Of which reclaimable.
    pub records_reclaimable: u64,
    /// Cache mounts: (name, bytes).
    pub mounts: Vec<(String, u64)>,
}

impl CacheUsage {
    pub fn size(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum::<u64>() + self.records_size
    }

    pub fn reclaimable(&self) -> u64 {
        self.items
            .iter()
            .filter(|i| !i.in_use)
            .map(|i| i.size)
            .sum::<u64>()
            + self.records_reclaimable
    }
}

/// Bytes under a path as `du -sb` counts them (apparent sizes, directories
/// included, each inode once per [`Du`]).
#[derive(Default)]
pub struct Du {
    seen: HashSet<(u64, u64)>,
}

impl Du {
    pub fn size(&mut self, p: &Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.nlink() > 1 && !m.is_dir() && !self.seen.insert((m.dev(), m.ino())) {
            return 0;
        }
        let mut total = m.len();
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    total += self.size(&e.path());
                }
            }
        }
        total
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mtime_unix(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    // temporary names of live processes are theirs
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.') || lease::token_in(n).is_some())
                })
                .collect()
        },
    )
}

fn remove_path(p: &Path) -> io::Result<()> {
    let r = if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        lease::remove_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("{e} (removing {})", p.display()),
        )),
        _ => Ok(()),
    }
}

/// The chain IDs of every image's layers.
fn image_chain_ids(images: &Store) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    for img in images.images()? {
        let mut chain: Option<Digest> = None;
        for d in img.diff_ids() {
            let next = match &chain {
                None => d.clone(),
                Some(c) => Digest::of(format!("{c} {d}").as_bytes()),
            };
            out.insert(next.clone());
            chain = Some(next);
        }
    }
    Ok(out)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs_err::canonicalize(a), fs_err::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The snapshots of the build cache: size, last use, whether in use.
/// `du` of every snapshot, each once over the survey; without, each on its
/// own, remembered in the snapshot's `size` file (a committed snapshot never
/// changes), so that the collection after every build does not walk them all.
fn survey(state_root: &Path, images: &Store, mut du: Option<&mut Du>) -> Result<Vec<CacheItem>> {
    let snaps = SnapshotStore::open(state_root)?;
    let index = CacheIndex::open(&StateLayout::new(state_root).cache_index())?;
    let list = snaps.list()?;
    let infos: HashMap<SnapshotId, _> = list.iter().cloned().collect();
    let mut last_used: HashMap<SnapshotId, u64> = HashMap::new();
    let mut description: HashMap<SnapshotId, String> = HashMap::new();
    for (id, info) in &list {
        let created = info
            .created
            .map_or(0, |(s, _)| u64::try_from(s).unwrap_or(0));
        last_used.insert(id.clone(), created);
        description.insert(id.clone(), info.kind.clone());
    }
    for r in index.entries()? {
        if let Some(id) = rbuild_worker::snapshot_of(&r.result) {
            if let Some(t) = last_used.get_mut(&id) {
                *t = (*t).max(r.last_used_unix);
                description.insert(id, r.description.clone());
            }
        }
    }
    // A git checkout (a context or `ADD <git ref>`): its record's last use, and
    // what it is (also when a cache record names it as an ADD step's source).
    for r in rbuild_worker::gitstore::records(state_root)
        .into_iter()
        .filter_map(|(_, r)| r)
    {
        if let Some(t) = last_used.get_mut(&r.snapshot) {
            *t = (*t).max(r.last_used);
            description.insert(r.snapshot.clone(), r.description());
        }
    }
    // In use: kept as an image's layer, an unpacked layer chain of an image,
    // or held by a live process; and everything below those.
    let mut roots: Vec<SnapshotId> = Vec::new();
    for (root, id) in images.snapshot_layers()? {
        if root.as_deref().is_none_or(|r| same_dir(r, state_root)) {
            roots.push(id);
        }
    }
    let chains = image_chain_ids(images)?;
    for (id, info) in &list {
        if info.chain_id.as_ref().is_some_and(|c| chains.contains(c)) {
            roots.push(id.clone());
        }
    }
    roots.extend(snaps.held_chains()?);
    let mut in_use = HashSet::new();
    for r in roots {
        let mut cur = Some(r);
        while let Some(c) = cur {
            if !in_use.insert(c.clone()) {
                break;
            }
            cur = infos.get(&c).and_then(|i| i.parent.clone());
        }
    }
    // A parent is used whenever a snapshot above it is; depth orders removal.
    let mut depth: HashMap<SnapshotId, usize> = HashMap::new();
    for (id, _) in &list {
        let t = last_used[id];
        let mut cur = infos.get(id).and_then(|i| i.parent.clone());
        let mut n = 0;
        while let Some(c) = cur {
            n += 1;
            if let Some(p) = last_used.get_mut(&c) {
                *p = (*p).max(t);
            }
            cur = infos.get(&c).and_then(|i| i.parent.clone());
        }
        depth.insert(id.clone(), n);
    }
    Ok(list
        .into_iter()
        .map(|(id, info)| CacheItem {
            size: match du.as_deref_mut() {
                Some(du) => du.size(&snaps.root().join(id.as_str())),
                None => remembered_size(&snaps.root().join(id.as_str())),
            },
            last_used: last_used[&id],
            in_use: in_use.contains(&id),
            description: description.remove(&id).unwrap_or_default(),
            depth: depth[&id],
            parent: info.parent,
            id,
        })
        .collect())
}

/// The size of a snapshot directory, measured once and kept in its `size`
/// file (written to a temporary name and renamed).
fn remembered_size(dir: &Path) -> u64 {
    let file = dir.join("size");
    if let Some(n) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return n;
    }
    let n = Du::default().size(dir);
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        if io::Write::write_all(&mut tmp, n.to_string().as_bytes()).is_ok() {
            let _ = tmp.persist(&file);
        }
    }
    n
}

/// The directories of records that only speed builds up.
fn record_dirs(l: &StateLayout) -> [PathBuf; 6] {
    [
        l.snapshot_checksums(),
        l.context_checksums(),
        l.copy_reuse(),
        l.layer_cache(),
        l.git_checkouts(),
        l.layer_scans(),
    ]
}

/// The entries of the root that are not counted as images.
fn not_images(l: &StateLayout) -> [PathBuf; 11] {
    [
        l.blobs()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        l.snapshots(),
        l.cache_index(),
        l.snapshot_checksums(),
        l.context_checksums(),
        l.copy_reuse(),
        l.layer_cache(),
        l.git_checkouts(),
        l.layer_scans(),
        l.rootfs_cache(),
        l.cache_mounts(),
    ]
}

/// The images as `system df` reports them.
#[derive(Clone, Debug, Default)]
pub struct ImagesUsage {
    /// Images in the store, and of those the tagged ones.
    pub count: usize,
    pub active: usize,
    /// Bytes of every blob plus every entry of the root that is neither build
    /// cache nor a volume (the store's records, leases, temporary files, the
    /// root itself).
    pub size: u64,
    /// Bytes of blobs no tagged image uses.
    pub reclaimable: u64,
    /// The cache mounts' directory itself with its lock files (the mounts'
    /// contents are in [`CacheUsage::mounts`]).
    pub mounts_extra: u64,
}

/// Measures the images part of the root (`du -sb` sizes, hard links once).
pub fn images_usage(state_root: &Path, store: &Store) -> Result<ImagesUsage> {
    let images = store.images()?;
    let tagged: Vec<_> = images.iter().filter(|i| !i.dangling()).collect();
    let mut active = HashSet::new();
    for i in &tagged {
        active.extend(i.diff_ids().iter().cloned());
        active.insert(i.id.clone());
    }
    let layout = StateLayout::new(state_root);
    let mut du = Du::default();
    let mut size = 0;
    let mut reclaimable = 0;
    for (d, _) in store.blobs()? {
        let s = du.size(&store.blob_path(&d));
        size += s;
        if !active.contains(&d) {
            reclaimable += s;
        }
    }
    let own = |p: &Path| std::fs::symlink_metadata(p).map_or(0, |m| m.len());
    size +=
        own(state_root) + own(layout.blobs().parent().unwrap_or(state_root)) + own(&layout.blobs());
    let not_images = not_images(&layout);
    for e in fs_err::read_dir(state_root)?.flatten() {
        if !not_images.contains(&e.path()) {
            size += du.size(&e.path());
        }
    }
    let mounts_dir = layout.cache_mounts();
    let mounts_extra = own(&mounts_dir)
        + fs_err::read_dir(&mounts_dir).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| du.size(&e.path()))
                .sum()
        });
    Ok(ImagesUsage {
        count: images.len(),
        active: tagged.len(),
        size,
        reclaimable,
        mounts_extra,
    })
}

/// The build cache of the state root, for `system df`.
pub fn usage(state_root: &Path, images: &Store) -> Result<CacheUsage> {
    let mut du = Du::default();
    let items = survey(state_root, images, Some(&mut du))?;
    let mut records_size = 0;
    let layout = StateLayout::new(state_root);
    for d in record_dirs(&layout) {
        records_size += du.size(&d);
    }
    records_size += du.size(&layout.cache_index());
    // The snapshots directory itself and what in it is no snapshot (chains,
    // mount points, half-made snapshots of running builds).
    let snaps_dir = layout.snapshots();
    records_size += std::fs::symlink_metadata(&snaps_dir).map_or(0, |m| m.len());
    if let Ok(rd) = std::fs::read_dir(&snaps_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_str().and_then(SnapshotId::parse).is_none() {
                records_size += du.size(&e.path());
            }
        }
    }
    let rootfs = layout.rootfs_cache();
    records_size += std::fs::symlink_metadata(&rootfs).map_or(0, |m| m.len());
    let held = lease::live_holds(state_root)?;
    let ids: HashSet<String> = images
        .images()?
        .iter()
        .map(|i| i.id.hex().to_owned())
        .collect();
    let mut records_reclaimable = records_size;
    for p in entries(&rootfs) {
        let s = du.size(&p);
        records_size += s;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let used =
            name.is_some_and(|n| ids.contains(&n) || held.images.contains(&format!("sha256:{n}")));
        if !used {
            records_reclaimable += s;
        }
    }
    let mounts = entries(&layout.cache_mounts())
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, du.size(&p))
        })
        .collect();
    Ok(CacheUsage {
        items,
        records_size,
        records_reclaimable,
        mounts,
    })
}

/// Whether another live process uses the state root.
fn others_alive(state_root: &Path) -> Result<bool> {
    let own = lease::Lease::current(state_root)?;
    for p in entries(&StateLayout::new(state_root).leases()) {
        let Some(token) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        if token != own.token() && lease::is_alive(state_root, token) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes build cache (see the module documentation).
pub fn prune(state_root: &Path, images: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    // Image commits wait: a snapshot cannot become an image's layer meanwhile.
    let _lock = images.lock()?;
    let snaps = SnapshotStore::open(state_root)?;
    let items = survey(state_root, images, None)?;
    let cutoff = opts.until.map(|d| now_unix().saturating_sub(d.as_secs()));
    let old_enough = |t: u64| cutoff.is_none_or(|c| t <= c);
    let mut candidates: Vec<&CacheItem> = items
        .iter()
        .filter(|i| !i.in_use && old_enough(i.last_used))
        .collect();
    // Oldest use first; above before below on a tie.
    candidates.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(b.depth.cmp(&a.depth))
            .then(a.id.cmp(&b.id))
    });
    let children: HashMap<&SnapshotId, Vec<&CacheItem>> =
        items.iter().fold(HashMap::new(), |mut m, i| {
            if let Some(p) = &i.parent {
                m.entry(p).or_default().push(i);
            }
            m
        });
    let mut total: u64 = items.iter().map(|i| i.size).sum();
    let mut victims: Vec<&CacheItem> = Vec::new();
    let mut chosen: HashSet<&SnapshotId> = HashSet::new();
    for c in candidates {
        if opts.keep_storage.is_some_and(|k| total <= k) {
            break;
        }
        if chosen.contains(&c.id) {
            continue;
        }
        // Everything above goes with it.
        let mut stack = vec![c];
        while let Some(i) = stack.pop() {
            if chosen.insert(&i.id) {
                total = total.saturating_sub(i.size);
                victims.push(i);
                stack.extend(children.get(&i.id).into_iter().flatten().copied());
            }
        }
    }
    victims.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.id.cmp(&b.id)));
    let mut report = PruneReport::default();
    let mut kept_back: HashSet<SnapshotId> = HashSet::new();
    for v in victims {
        if kept_back.contains(&v.id) {
            continue;
        }
        if snaps.remove_unless_held(&v.id)? {
            report.reclaimed += v.size;
            report.removed.push(Removed {
                id: v.id.as_str().to_owned(),
                size: v.size,
            });
        } else {
            // Held meanwhile: its chain stays.
            let mut cur = v.parent.clone();
            while let Some(p) = cur {
                cur = items
                    .iter()
                    .find(|i| i.id == p)
                    .and_then(|i| i.parent.clone());
                kept_back.insert(p);
            }
        }
    }
    let exists = |id: &SnapshotId| snaps.exists(id);
    // Records naming a snapshot that is gone.
    let layout = StateLayout::new(state_root);
    let index = CacheIndex::open(&layout.cache_index())?;
    index.retain(|r| rbuild_worker::snapshot_of(&r.result).is_none_or(|id| exists(&id)))?;
    report.reclaimed += rbuild_worker::gitstore::remove_dangling(state_root, &snaps);
    let sweep = |dir: &Path, report: &mut PruneReport, gone: &dyn Fn(&Path) -> bool| {
        for p in entries(dir) {
            if gone(&p) {
                let s = Du::default().size(&p);
                if remove_path(&p).is_ok() {
                    report.reclaimed += s;
                }
            }
        }
    };
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let snap_gone = |s: &str| SnapshotId::parse(s.trim()).is_some_and(|id| !exists(&id));
    sweep(&layout.snapshot_chains(), &mut report, &|p| {
        std::fs::read_to_string(p).is_ok_and(|s| snap_gone(&s))
    });
    sweep(&layout.layer_cache(), &mut report, &|p| {
        if name_of(p).starts_with("squash-") {
            return crate::squash::record_gone(&layout, p);
        }
        name_of(p)
            .rsplit_once('-')
            .is_some_and(|(s, _)| snap_gone(s))
    });
    sweep(&layout.copy_reuse().join("manifests"), &mut report, &|p| {
        snap_gone(&name_of(p))
    });
    sweep(&layout.copy_reuse(), &mut report, &|p| {
        p.is_file() && std::fs::read_to_string(p).is_ok_and(|s| snap_gone(&s))
    });
    // Checksum caches and the image checks' records are keyed by hashes:
    // by age, all without filters.
    let keep_records = opts.keep_storage.is_some() && opts.until.is_none();
    if !keep_records {
        for d in [
            layout.snapshot_checksums(),
            layout.context_checksums(),
            layout.layer_scans(),
        ] {
            sweep(&d, &mut report, &|p| old_enough(mtime_unix(p)));
        }
    }
    // `run` roots: of images gone (all: of images no process runs).
    let held = lease::live_holds(state_root)?;
    let ids: HashSet<String> = images
        .images()?
        .iter()
        .map(|i| i.id.hex().to_owned())
        .collect();
    for p in entries(&layout.rootfs_cache()) {
        let n = name_of(&p);
        if held.images.contains(&format!("sha256:{n}")) || (!opts.all && ids.contains(&n)) {
            continue;
        }
        if !old_enough(mtime_unix(&p)) {
            continue;
        }
        let s = Du::default().size(&p);
        remove_path(&p)?;
        report.reclaimed += s;
        report.removed.push(Removed { id: n, size: s });
    }
    // Cache mounts: only with all, and only when no other process could be using one.
    if opts.all && !others_alive(state_root)? {
        for p in entries(&layout.cache_mounts()) {
            let s = Du::default().size(&p);
            let is_mount = p.is_dir();
            remove_path(&p)?;
            report.reclaimed += s;
            if is_mount {
                report.removed.push(Removed {
                    id: name_of(&p),
                    size: s,
                });
            }
        }
    }
    Ok(report)
}

/// The `[gc]` section of `config.toml` (`BuildKit`'s names and defaults).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcConfig {
    /// Collect after every build (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The cache is never pruned below this (default: 10%, at most 10 GB).
    #[serde(default)]
    pub reserved_space: Option<Space>,
    /// The cache uses at most this (default: 80%, at most 100 GB).
    #[serde(default)]
    pub max_used_space: Option<Space>,
    /// Keep at least this free on the file system (default: 20%).
    #[serde(default)]
    pub min_free_space: Option<Space>,
}

fn yes() -> bool {
    true
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reserved_space: None,
            max_used_space: None,
            min_free_space: None,
        }
    }
}

/// An amount of disk: bytes, or a percentage of the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Bytes(u64),
    Percent(u8),
}

impl Space {
    fn bytes(self, fs_size: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => fs_size / 100 * u64::from(p),
        }
    }

    /// `"10GB"`, `"512MiB"`, `"20%"`, a number of bytes (binary units, as
    /// docker's `RAMInBytes`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .map(Self::Percent)
                .ok_or_else(|| format!("{s:?} is not a percentage from 0% to 100%"));
        }
        let n = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let num: u64 = t[..n]
            .parse()
            .map_err(|_| format!("{s:?} is not a size (like 10GB, 512MiB or 20%)"))?;
        let shift = match t[n..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            other => return Err(format!("unknown unit {other:?} in {s:?}")),
        };
        num.checked_mul(1 << shift)
            .map(Self::Bytes)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> serde::Deserialize<'de> for Space {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self::Bytes(n)),
            Raw::S(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// rbuild's configuration file (`config.toml` in the state root, or the
/// file `$RBUILD_CONFIG` names). Unknown sections and keys are errors.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gc: GcConfig,
    #[serde(default)]
    pub build: BuildConfig,
    /// `[registry."HOST[:PORT]"]`: per-registry settings (`BuildKit`'s names).
    #[serde(default)]
    pub registry: std::collections::BTreeMap<String, RegistryConfig>,
}

/// The `[build]` section of `config.toml`: defaults of `rbuild build`'s
/// options (an option on the command line wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildConfig {
    /// `--pids-limit` of every RUN step (default: none, like Docker's; 0:
    /// none). `pidsLimit` is accepted too, the `[gc]` keys' spelling.
    #[serde(default, alias = "pidsLimit")]
    pub pids_limit: Option<u64>,
}

/// One `[registry."HOST[:PORT]"]` section of `config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Plain http is allowed.
    #[serde(default)]
    pub http: bool,
    /// https without certificate verification (and plain http) is allowed.
    #[serde(default)]
    pub insecure: bool,
    /// Registries tried first for pulls from this one (`docker.io` mirrors),
    /// as `HOST[:PORT]`.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// What is wrong with the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// The directory of the configuration file (its `certs.d/` is searched
    /// first for registry certificates): that of `$RBUILD_CONFIG`, else the
    /// state root.
    pub fn dir(state_root: &Path) -> PathBuf {
        match std::env::var_os("RBUILD_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p)
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            None => state_root.to_path_buf(),
        }
    }

    /// The file `$RBUILD_CONFIG` names (which must exist), else
    /// `<state_root>/config.toml` when present, else the defaults.
    pub fn load(state_root: &Path) -> std::result::Result<Self, ConfigError> {
        let (path, must) = match std::env::var_os("RBUILD_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => (PathBuf::from(p), true),
            None => (StateLayout::new(state_root).config_toml(), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !must && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
            path,
        })
    }
}

/// The cache size to prune down to under `BuildKit`'s policy, given the file
/// system's size and free bytes and the cache's size; `None`: nothing to do.
pub fn gc_target(cfg: &GcConfig, fs_size: u64, fs_free: u64, cache: u64) -> Option<u64> {
    const GB: u64 = 1_000_000_000;
    let reserved = cfg
        .reserved_space
        .map_or_else(|| (fs_size / 10).min(10 * GB), |s| s.bytes(fs_size));
    let max_used = cfg
        .max_used_space
        .map_or_else(|| (fs_size / 10 * 8).min(100 * GB), |s| s.bytes(fs_size));
    let min_free = cfg.min_free_space.map_or(fs_size / 5, |s| s.bytes(fs_size));
    let mut target = cache;
    if max_used > 0 {
        target = target.min(max_used);
    }
    if min_free > 0 && fs_free < min_free {
        target = target.min(cache.saturating_sub(min_free - fs_free));
    }
    let target = target.max(reserved);
    (target < cache).then_some(target)
}

/// The garbage collection after a build: oldest-used first, down to what
/// [`gc_target`] allows, never what an image or a live process uses.
pub fn auto(state_root: &Path, images: &Store, cfg: &GcConfig) -> Result<PruneReport> {
    if !cfg.enabled {
        return Ok(PruneReport::default());
    }
    let st = nix::sys::statvfs::statvfs(state_root).map_err(io::Error::from)?;
    let frag = st.fragment_size();
    let fs_size = st.blocks() * frag;
    let fs_free = st.blocks_available() * frag;
    let cache = survey(state_root, images, None)?
        .iter()
        .map(|i| i.size)
        .sum();
    match gc_target(cfg, fs_size, fs_free, cache) {
        None => Ok(PruneReport::default()),
        Some(target) => prune(
            state_root,
            images,
            &PruneOptions {
                all: false,
                until: None,
                keep_storage: Some(target),
            },
        ),
    }
}

/// What a build calls at its end: the policy of the configuration file
/// (see [`Config::load`]), then [`auto`].
pub fn after_build(state_root: &Path, images: &Store) -> Result<PruneReport> {
    let cfg = Config::load(state_root)?;
    auto(state_root, images, &cfg.gc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn default_policy_is_buildkits() {
        let d = GcConfig::default();
        // 100 GB disk, 50 GB free, 30 GB cache: within 80%, 20% free: nothing.
        assert_eq!(gc_target(&d, 100 * GB, 50 * GB, 30 * GB), None);
        // 85 GB cache: down to 80 GB.
        assert_eq!(gc_target(&d, 100 * GB, 25 * GB, 85 * GB), Some(80 * GB));
        // 15 GB free of 100: free 5 GB more.
        assert_eq!(gc_target(&d, 100 * GB, 15 * GB, 30 * GB), Some(25 * GB));
        // Never below the reserve (10%, at most 10 GB).
        assert_eq!(gc_target(&d, 100 * GB, 0, 12 * GB), Some(10 * GB));
        assert_eq!(gc_target(&d, 100 * GB, 0, 9 * GB), None);
        // The caps: 1 TB disk, 150 GB cache, plenty free: down to 100 GB.
        assert_eq!(gc_target(&d, 1000 * GB, 800 * GB, 150 * GB), Some(100 * GB));
    }

    #[test]
    fn config_reads_sizes_and_percentages_and_refuses_unknown_keys() {
        let c: Config = toml::from_str(
            "[gc]\nreservedSpace = \"1GB\"\nmaxUsedSpace = \"50%\"\nminFreeSpace = 1024\n",
        )
        .unwrap();
        assert_eq!(c.gc.reserved_space, Some(Space::Bytes(1 << 30)));
        assert_eq!(c.gc.max_used_space, Some(Space::Percent(50)));
        assert_eq!(c.gc.min_free_space, Some(Space::Bytes(1024)));
        let e = toml::from_str::<Config>("[gc]\nkeepBytes = 1\n").unwrap_err();
        assert!(e.to_string().contains("keepBytes"), "{e}");
        let e = toml::from_str::<Config>("[registries]\n").unwrap_err();
        assert!(e.to_string().contains("registries"), "{e}");
        let c: Config = toml::from_str(
            "[registry.\"127.0.0.1:5000\"]\nhttp = true\n[registry.\"docker.io\"]\nmirrors = [\"m:1\"]\n",
        )
        .unwrap();
        assert!(c.registry["127.0.0.1:5000"].http);
        assert_eq!(c.registry["docker.io"].mirrors, ["m:1"]);
        let e = toml::from_str::<Config>("[registry.\"x\"]\ninsecure-skip = true\n").unwrap_err();
        assert!(e.to_string().contains("insecure-skip"), "{e}");
        assert!(toml::from_str::<Config>("[gc]\nmaxUsedSpace = \"150%\"\n").is_err());
    }

    #[test]
    fn config_build_section_sets_the_pids_limit_default() {
        let c: Config = toml::from_str("[build]\npids-limit = 500\n").unwrap();
        assert_eq!(c.build.pids_limit, Some(500));
        let c: Config = toml::from_str("[build]\npidsLimit = 7\n").unwrap();
        assert_eq!(c.build.pids_limit, Some(7));
        assert_eq!(Config::default().build.pids_limit, None);
        let e = toml::from_str::<Config>("[build]\nmemory = \"1g\"\n").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        assert!(toml::from_str::<Config>("[build]\npids-limit = -1\n").is_err());
    }
}
