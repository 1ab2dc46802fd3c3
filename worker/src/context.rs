//! Content checksums of selected paths in a directory (the build context, or
//! a snapshot's directory).
//!
//! The checksum covers, for every selected entry in sorted order of its path
//! relative to the root: the path, its type, permission bits, uid and gid
//! (not for a build context: see [`ContextChecksummer::without_owners`]), size,
//! symlink target, device number, and for regular files a blake3 of the
//! content. Never mtime, atime or ctime: a fresh checkout of the same files
//! gives the same checksum.
//!
//! File content hashes are kept in a persistent cache keyed by
//! (path, device, inode, size, mtime, ctime), so an unchanged context is not
//! re-read; files are hashed in parallel with rayon.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rbuild_patterns::{BadPattern, go_match};

use rbuild_ops::{Checksum, Selection};

/// Errors computing a checksum.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A literal source path that does not exist (or is excluded).
    #[error("\"/{path}\": not found")]
    NotFound { path: String },
    /// A wildcard that matched nothing where that is not allowed.
    #[error("\"{pattern}\": no source files were specified (the pattern matches nothing)")]
    NoMatch { pattern: String },
    #[error("\"{path}\": path is outside the build context")]
    OutsideContext { path: String },
    #[error("\"{pattern}\": syntax error in pattern")]
    BadPattern { pattern: String },
    #[error("\"/{path}\": too many levels of symbolic links")]
    SymlinkLoop { path: String },
}

/// Decides which paths of the tree are left out (the `.dockerignore`
/// matcher, `COPY --exclude`). Paths are relative to the root, `/`-separated,
/// without a leading `/`.
pub trait PathFilter: Sync {
    /// `true` if the entry must be left out.
    fn is_excluded(&self, rel: &Path, is_dir: bool) -> bool;

    /// For an excluded directory: whether its children must still be walked
    /// because some may be re-included (`!pattern`). Default: no.
    fn descend_excluded_dir(&self, _rel: &Path) -> bool {
        false
    }

    /// [`PathFilter::is_excluded`] for `rel` (from the root) met while copying
    /// the source `source` (from the root; `rel` is `source` or below it):
    /// a copy's own patterns apply to the path below the source, as
    /// `BuildKit`'s copy matches them, and never to the source itself.
    /// Default: the source does not matter.
    fn is_excluded_below(&self, _source: &Path, rel: &Path, is_dir: bool) -> bool {
        self.is_excluded(rel, is_dir)
    }

    /// [`PathFilter::descend_excluded_dir`] for a directory below `source`.
    fn descend_excluded_dir_below(&self, _source: &Path, rel: &Path) -> bool {
        self.descend_excluded_dir(rel)
    }
}

impl<F: Fn(&Path, bool) -> bool + Sync> PathFilter for F {
    fn is_excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self(rel, is_dir)
    }
}

/// A filter that keeps everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFilter;

impl PathFilter for NoFilter {
    fn is_excluded(&self, _rel: &Path, _is_dir: bool) -> bool {
        false
    }
}

/// Counters, to see what a checksum cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumStats {
    /// Regular files whose content was read.
    pub files_read: u64,
    /// Bytes of content read.
    pub bytes_read: u64,
    /// Regular files whose content hash came from the cache.
    pub cache_hits: u64,
}

/// Files changed this close (in wall-clock time) to the start of a scan are
/// not cached: a later change within the same timestamp tick would go
/// unnoticed (git's "racily clean" problem).
const RACY_MARGIN_NS: i64 = 50_000_000;

const CACHE_MAGIC: &[u8] = b"rbuild context checksums v1\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

#[derive(Default)]
struct CacheState {
    files: HashMap<String, (Stamp, [u8; 32])>,
    dirty: bool,
}

/// A content listing ([`ContextChecksummer::listing`]): each selected path
/// with a digest of its entry, sorted by path.
pub type Listing = Vec<(String, [u8; 32])>;

/// Checksums selections of one directory tree, with a content-hash cache.
pub struct ContextChecksummer {
    root: PathBuf,
    /// Whether entries' uid and gid are part of the checksum.
    owners: bool,
    cache_file: Option<PathBuf>,
    state: Mutex<CacheState>,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    cache_hits: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

struct Entry {
    kind: Kind,
    meta: std::fs::Metadata,
    link: Option<PathBuf>,
}

impl ContextChecksummer {
    /// A checksummer for `root`. With `state_dir`, content hashes persist in
    /// `<state_dir>/context-checksums/<hash of root's path>.bin` across runs
    /// (`state_dir` is a state root: see the snapshotter's `StateLayout`).
    pub fn open(root: &Path, state_dir: Option<&Path>) -> Result<Self, ContextError> {
        let root = fs_err::canonicalize(root)?;
        let cache_file = match state_dir {
            Some(dir) => {
                let dir = rbuild_snapshotter::layout::StateLayout::new(dir).context_checksums();
                fs_err::create_dir_all(&dir)?;
                let name = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
                Some(dir.join(format!("{name}.bin")))
            }
            None => None,
        };
        let files = match &cache_file {
            Some(path) => match fs_err::read(path) {
                Ok(bytes) => decode_cache(&bytes).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(e.into()),
            },
            None => HashMap::new(),
        };
        Ok(Self {
            root,
            owners: true,
            cache_file,
            state: Mutex::new(CacheState {
                files,
                dirty: false,
            }),
            files_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// Leave the entries' uid and gid out of the checksum: for a build
    /// context, whose files a copy always gives to 0:0 (or `--chown`), so a
    /// checkout owned by another user on another machine gives the same keys.
    #[must_use]
    pub fn without_owners(mut self) -> Self {
        self.owners = false;
        self
    }

    /// The (canonical) root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> ChecksumStats {
        ChecksumStats {
            files_read: self.files_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// The checksum of exactly what `selection` picks, minus what `filter`
    /// excludes. `selection.include_patterns`/`exclude_patterns` are not
    /// interpreted here (their pattern language lives with the
    /// `.dockerignore` matcher): fold them into `filter`.
    ///
    /// New content hashes are persisted before returning.
    pub fn checksum(
        &self,
        selection: &Selection,
        filter: &dyn PathFilter,
    ) -> Result<Checksum, ContextError> {
        let (entries, hashes) = self.selected(selection, filter)?;
        let mut h = blake3::Hasher::new_derive_key("rbuild context checksum v1");
        for (rel, e) in &entries {
            put_bytes(&mut h, rel.as_bytes());
            self.put_entry(&mut h, e, hashes.get(rel.as_str()));
        }
        let sum = Checksum::from(h.finalize());
        self.persist()?;
        Ok(sum)
    }

    /// What [`ContextChecksummer::checksum`] sums, entry by entry: each
    /// selected path with a digest of what the checksum takes of it (kind,
    /// mode, size and content, link target), sorted by path; `None` when
    /// more than `limit` entries are selected. Comparing two listings names
    /// the files that changed, appeared or vanished.
    pub fn listing(
        &self,
        selection: &Selection,
        filter: &dyn PathFilter,
        limit: usize,
    ) -> Result<Option<Listing>, ContextError> {
        let (entries, hashes) = self.selected(selection, filter)?;
        if entries.len() > limit {
            return Ok(None);
        }
        let out = entries
            .iter()
            .map(|(rel, e)| {
                let mut h = blake3::Hasher::new_derive_key("rbuild context entry v1");
                self.put_entry(&mut h, e, hashes.get(rel.as_str()));
                (rel.clone(), *h.finalize().as_bytes())
            })
            .collect();
        self.persist()?;
        Ok(Some(out))
    }

    /// What the checksum takes of one entry, after its path.
    fn put_entry(&self, h: &mut blake3::Hasher, e: &Entry, content: Option<&[u8; 32]>) {
        h.update(&[e.kind as u8]);
        h.update(&(e.meta.mode() & 0o7777).to_le_bytes());
        if self.owners {
            h.update(&e.meta.uid().to_le_bytes());
            h.update(&e.meta.gid().to_le_bytes());
        }
        match e.kind {
            Kind::File => {
                h.update(&e.meta.size().to_le_bytes());
                h.update(content.unwrap_or(&[0; 32]));
            }
            Kind::Symlink => {
                let target = e.link.as_deref().unwrap_or(Path::new(""));
                put_bytes(h, target.as_os_str().as_encoded_bytes());
            }
            Kind::Char | Kind::Block => {
                h.update(&e.meta.rdev().to_le_bytes());
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
    }

    /// The entries `selection` picks (minus what `filter` excludes), and
    /// the content hash of each regular file among them.
    #[allow(clippy::type_complexity)]
    fn selected(
        &self,
        selection: &Selection,
        filter: &dyn PathFilter,
    ) -> Result<(BTreeMap<String, Entry>, HashMap<String, [u8; 32]>), ContextError> {
        let scan_start = now_ns();
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for pattern in &selection.paths {
            self.select(pattern, selection, filter, &mut entries)?;
        }

        // Content hashes: from the cache, or read in parallel.
        let mut hashes: HashMap<&str, [u8; 32]> = HashMap::new();
        let mut to_read: Vec<(&str, Stamp)> = Vec::new();
        {
            let state = self.state.lock().expect("checksum cache lock");
            for (rel, e) in &entries {
                if e.kind != Kind::File {
                    continue;
                }
                let stamp = Stamp::of(&e.meta);
                match state.files.get(rel.as_str()) {
                    Some((s, h)) if *s == stamp => {
                        hashes.insert(rel, *h);
                    }
                    _ => to_read.push((rel, stamp)),
                }
            }
        }
        self.cache_hits
            .fetch_add(hashes.len() as u64, Ordering::Relaxed);
        let read: Vec<(&str, Stamp, [u8; 32])> = to_read
            .par_iter()
            .map(|&(rel, stamp)| {
                let h = self.hash_file(&self.root.join(rel))?;
                Ok((rel, stamp, h))
            })
            .collect::<Result<_, std::io::Error>>()?;
        {
            let mut state = self.state.lock().expect("checksum cache lock");
            for &(rel, stamp, h) in &read {
                hashes.insert(rel, h);
                let racy = stamp.mtime_ns.max(stamp.ctime_ns) > scan_start - RACY_MARGIN_NS;
                if !racy {
                    state.files.insert(rel.to_owned(), (stamp, h));
                    state.dirty = true;
                }
            }
        }

        let hashes = hashes
            .into_iter()
            .map(|(rel, h)| (rel.to_owned(), h))
            .collect();
        Ok((entries, hashes))
    }

    /// The content hash of the file at `rel` (relative to the root) if this
    /// checksummer has hashed it and `meta` (its current `lstat`) still has
    /// the stamp it had then.
    pub fn known_hash(&self, rel: &str, meta: &std::fs::Metadata) -> Option<[u8; 32]> {
        let state = self.state.lock().expect("checksum cache lock");
        match state.files.get(rel) {
            Some((s, h)) if *s == Stamp::of(meta) => Some(*h),
            _ => None,
        }
    }

    /// Write the content-hash cache if it changed (atomically).
    pub fn persist(&self) -> Result<(), ContextError> {
        let Some(path) = &self.cache_file else {
            return Ok(());
        };
        let bytes = {
            let mut state = self.state.lock().expect("checksum cache lock");
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            encode_cache(&state.files)
        };
        rbuild_solver::atomic::write(path, &bytes, false)?;
        Ok(())
    }

    fn hash_file(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let mut f = fs_err::File::open(path)?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(total, Ordering::Relaxed);
        Ok(*h.finalize().as_bytes())
    }

    fn lstat(&self, rel: &str) -> Result<Option<Entry>, ContextError> {
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let meta = match fs_err::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.entry(rel, meta).map(Some)
    }

    fn entry(&self, rel: &str, meta: std::fs::Metadata) -> Result<Entry, ContextError> {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            Kind::Socket
        };
        let link = if kind == Kind::Symlink {
            Some(fs_err::read_link(self.root.join(rel))?)
        } else {
            None
        };
        Ok(Entry { kind, meta, link })
    }

    /// Add what one source pattern selects.
    fn select(
        &self,
        pattern: &str,
        selection: &Selection,
        filter: &dyn PathFilter,
        out: &mut BTreeMap<String, Entry>,
    ) -> Result<(), ContextError> {
        let comps = clean(pattern)?;
        let wildcard = selection.allow_wildcard && comps.iter().any(|c| has_meta(c));
        if comps.is_empty() {
            return self.add_tree("", filter, out);
        }
        // Expand component by component.
        let mut current: Vec<String> = vec![String::new()];
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let mut next = Vec::new();
            for dir in &current {
                if selection.allow_wildcard && has_meta(comp) {
                    let dir_path = self.root.join(dir);
                    let Ok(read) = fs_err::read_dir(&dir_path) else {
                        continue;
                    };
                    let mut names: Vec<String> = Vec::new();
                    for entry in read {
                        let entry = entry?;
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                    names.sort();
                    for name in names {
                        if go_match(comp, &name).map_err(|BadPattern| ContextError::BadPattern {
                            pattern: pattern.to_owned(),
                        })? {
                            next.push(join(dir, &name));
                        }
                    }
                } else {
                    let name = if selection.allow_wildcard {
                        unescape(comp)
                    } else {
                        comp.clone()
                    };
                    next.push(join(dir, &name));
                }
            }
            // Keep what exists, is not excluded, and (before the last
            // component) is a directory.
            let mut kept = Vec::new();
            for rel in next {
                let Some(e) = self.lstat(&rel)? else { continue };
                // A symlink on the way to the last component is followed
                // (inside the root, as the root were `/`).
                let (rel, e) = if !last && e.kind == Kind::Symlink {
                    match self.resolve(&rel)? {
                        Some(found) => found,
                        None => continue,
                    }
                } else {
                    (rel, e)
                };
                let is_dir = e.kind == Kind::Dir;
                if !last && !is_dir {
                    continue;
                }
                let r = Path::new(&rel);
                if filter.is_excluded_below(r, r, is_dir)
                    && !(is_dir && filter.descend_excluded_dir_below(r, r))
                {
                    continue;
                }
                kept.push(rel);
            }
            current = kept;
        }
        if current.is_empty() {
            if wildcard {
                if selection.allow_empty_wildcard {
                    return Ok(());
                }
                return Err(ContextError::NoMatch {
                    pattern: pattern.to_owned(),
                });
            }
            return Err(ContextError::NotFound {
                path: comps.join("/"),
            });
        }
        for rel in current {
            if selection.follow_symlinks {
                self.add_followed(&rel, filter, out, 0)?;
            } else {
                self.add_tree(&rel, filter, out)?;
            }
        }
        Ok(())
    }

    /// Follow `rel` through symlinks (scoped to the root) to what it names.
    fn resolve(&self, rel: &str) -> Result<Option<(String, Entry)>, ContextError> {
        let mut rel = rel.to_owned();
        for _ in 0..=40 {
            let Some(e) = self.lstat(&rel)? else {
                return Ok(None);
            };
            let Some(target) = &e.link else {
                return Ok(Some((rel, e)));
            };
            rel = scoped_target(&rel, target);
        }
        Err(ContextError::SymlinkLoop { path: rel })
    }

    /// Add a selected path; if it is a symlink, add it and (resolved inside
    /// the root) what it points to.
    fn add_followed(
        &self,
        rel: &str,
        filter: &dyn PathFilter,
        out: &mut BTreeMap<String, Entry>,
        depth: u32,
    ) -> Result<(), ContextError> {
        if depth > 40 {
            return Err(ContextError::SymlinkLoop {
                path: rel.to_owned(),
            });
        }
        let Some(e) = self.lstat(rel)? else {
            return Err(ContextError::NotFound {
                path: rel.to_owned(),
            });
        };
        let Some(target) = e.link.clone() else {
            return self.add_tree(rel, filter, out);
        };
        out.insert(rel.to_owned(), e);
        let resolved = scoped_target(rel, &target);
        self.add_followed(&resolved, filter, out, depth + 1)
    }

    /// Add an entry and, for a directory, everything under it.
    fn add_tree(
        &self,
        rel: &str,
        filter: &dyn PathFilter,
        out: &mut BTreeMap<String, Entry>,
    ) -> Result<(), ContextError> {
        let Some(e) = self.lstat(rel)? else {
            return Ok(());
        };
        out.extend(self.walk(rel.to_owned(), e, filter, Path::new(rel))?);
        Ok(())
    }

    /// The entry at `rel` (unless excluded, or the root) and everything
    /// under it; subdirectories are walked in parallel. `source` is the
    /// selected path the walk started at (for the filter).
    fn walk(
        &self,
        rel: String,
        e: Entry,
        filter: &dyn PathFilter,
        source: &Path,
    ) -> Result<Vec<(String, Entry)>, ContextError> {
        let is_dir = e.kind == Kind::Dir;
        let excluded = !rel.is_empty() && filter.is_excluded_below(source, Path::new(&rel), is_dir);
        if excluded && !(is_dir && filter.descend_excluded_dir_below(source, Path::new(&rel))) {
            return Ok(Vec::new());
        }
        let mut children: Vec<(String, std::fs::Metadata)> = Vec::new();
        if is_dir {
            let dir = if rel.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&rel)
            };
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // fstatat on the directory, without following symlinks.
                match entry.metadata() {
                    Ok(meta) => children.push((join(&rel, &name), meta)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        let nested: Vec<Vec<(String, Entry)>> = children
            .into_par_iter()
            .map(|(child, meta)| {
                let e = self.entry(&child, meta)?;
                self.walk(child, e, filter, source)
            })
            .collect::<Result<_, ContextError>>()?;
        let mut out = Vec::with_capacity(1 + nested.iter().map(Vec::len).sum::<usize>());
        if !excluded && !rel.is_empty() {
            out.push((rel, e));
        }
        for n in nested {
            out.extend(n);
        }
        Ok(out)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Split a source path into components, dropping `.` and empty ones and
/// resolving `..`; a path leaving the root is an error.
fn clean(path: &str) -> Result<Vec<String>, ContextError> {
    let mut out: Vec<String> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ContextError::OutsideContext {
                        path: path.to_owned(),
                    });
                }
            }
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

/// Where the symlink at `rel` pointing to `target` leads, resolved inside the
/// root: the root is `/`, `..` never leaves it.
fn scoped_target(rel: &str, target: &Path) -> String {
    let joined = if target.is_absolute() {
        target.to_string_lossy().into_owned()
    } else {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        format!("{parent}/{}", target.to_string_lossy())
    };
    clean_scoped(&joined).join("/")
}

/// Like [`clean`], but `..` at the root stays at the root.
fn clean_scoped(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_owned()),
        }
    }
    out
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- cache file

fn encode_cache(files: &HashMap<String, (Stamp, [u8; 32])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(CACHE_MAGIC.len() + files.len() * 96);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    let mut sorted: Vec<_> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, (s, h)) in sorted {
        out.extend_from_slice(&(path.len() as u64).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&s.dev.to_le_bytes());
        out.extend_from_slice(&s.ino.to_le_bytes());
        out.extend_from_slice(&s.size.to_le_bytes());
        out.extend_from_slice(&s.mtime_ns.to_le_bytes());
        out.extend_from_slice(&s.ctime_ns.to_le_bytes());
        out.extend_from_slice(h);
    }
    out
}

/// `None` for anything malformed: the cache is then rebuilt.
fn decode_cache(bytes: &[u8]) -> Option<HashMap<String, (Stamp, [u8; 32])>> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn i64(&mut self) -> Option<i64> {
            Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
    }
    let mut c = Cursor(bytes.strip_prefix(CACHE_MAGIC)?);
    let n = usize::try_from(c.u64()?).ok()?;
    let mut files = HashMap::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let len = usize::try_from(c.u64()?).ok()?;
        let path = String::from_utf8(c.take(len)?.to_vec()).ok()?;
        let stamp = Stamp {
            dev: c.u64()?,
            ino: c.u64()?,
            size: c.u64()?,
            mtime_ns: c.i64()?,
            ctime_ns: c.i64()?,
        };
        let hash: [u8; 32] = c.take(32)?.try_into().ok()?;
        files.insert(path, (stamp, hash));
    }
    c.0.is_empty().then_some(files)
}
