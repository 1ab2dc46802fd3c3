//! Who owns what under a state root: owner locks, leases, and sweeping what
//! dead processes left.
//!
//! Every process that uses a state root holds an *owner lock*:
//! `<root>/leases/<token>.lock`, flock(2)ed exclusively for as long as the
//! process lives (the kernel drops the lock when it dies, however it dies).
//! `token` is `<pid>.<8 hex digits>`, chosen at random and never reused, so a
//! recycled PID is never mistaken for the old owner. A process is alive for
//! the store when its lock file exists and cannot be locked ([`is_alive`]).
//!
//! Temporary files and directories a process makes under the root carry its
//! token in their name, as one `-`-separated part (`tmp-<token>-<id>`,
//! `rw-<token>-XXXXXX`, `txn-<token>-XXXXXX`, ...). [`sweep`] removes those
//! whose owner is dead, and only those, after unmounting whatever is still
//! mounted on or under them: a build killed mid-step leaves its overlay
//! mounted, and the next command takes it down.
//!
//! The *lease* is what the process uses and must outlive a concurrent
//! `image prune` or `rmi`: image IDs, blobs, snapshots, and temporary paths
//! outside the root (a build output or `save -o` being written, removed by
//! the sweep when the owner died before renaming it into place). It is
//! `<root>/leases/<token>.json`, a journal of JSON lines: the first is the
//! whole lease, each later one adds (or, with `"release": true`, removes)
//! what it lists. A change is one `write(2)` of one line to the file opened
//! for appending, always *before* the process relies on what it adds; no
//! new inode per change (a no-op build holds a few dozen snapshots, and a
//! temp file and rename for each cost more than the rest of the build).
//! Readers apply the complete lines in order and ignore a last line still
//! being written. When the journal grows long it is compacted: the whole
//! lease written to a temp file and renamed over it. Prune and
//! rmi read the live leases ([`live_holds`]) under the store's lock and keep
//! what they name; taking a hold under that same lock and checking that the
//! thing still exists makes the two orders (hold first, prune first) the only
//! possible ones.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

/// What a lease holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// An image ID (`sha256:...`): its record, config and layers are kept.
    Image,
    /// A blob digest (`sha256:...`).
    Blob,
    /// A snapshot ID.
    Snapshot,
}

/// The content of a lease file; also the union of all live leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: u32,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub images: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub blobs: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub snapshots: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub temps: BTreeSet<PathBuf>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Holds {
    fn set(&mut self, kind: Hold) -> &mut BTreeSet<String> {
        match kind {
            Hold::Image => &mut self.images,
            Hold::Blob => &mut self.blobs,
            Hold::Snapshot => &mut self.snapshots,
        }
    }

    fn apply(&mut self, line: Line) {
        if line.release {
            for v in &line.holds.images {
                self.images.remove(v);
            }
            for v in &line.holds.blobs {
                self.blobs.remove(v);
            }
            for v in &line.holds.snapshots {
                self.snapshots.remove(v);
            }
            for v in &line.holds.temps {
                self.temps.remove(v);
            }
        } else {
            if line.holds.pid != 0 {
                self.pid = line.holds.pid;
            }
            self.merge(line.holds);
        }
    }

    fn merge(&mut self, other: Holds) {
        self.images.extend(other.images);
        self.blobs.extend(other.blobs);
        self.snapshots.extend(other.snapshots);
        self.temps.extend(other.temps);
    }
}

/// This process's owner lock and lease on one state root. Lives until the
/// process exits (see [`Lease::current`]).
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    token: String,
    _lock: std::fs::File,
    holds: Mutex<Journal>,
}

/// This process's holds and the journal they are appended to.
#[derive(Debug)]
struct Journal {
    holds: Holds,
    /// `<token>.json`, open for appending.
    file: Option<std::fs::File>,
    /// Lines in the file.
    lines: usize,
}

/// One line of a lease journal: a [`Holds`] to add, or to remove when
/// `release` is set.
#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    holds: Holds,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    release: bool,
}

/// Past this many lines the journal is rewritten as one.
const COMPACT_AFTER: usize = 256;

/// Parses a lease journal: the complete lines applied in order. A last line
/// without its newline is a write in progress and is ignored, unless it is
/// a whole lease of the older one-object format.
fn parse_journal(b: &[u8]) -> Result<Holds, serde_json::Error> {
    let mut out = Holds::default();
    let (complete, tail) = match b.iter().rposition(|&c| c == b'\n') {
        Some(i) => (&b[..=i], &b[i + 1..]),
        None => (&b[..0], b),
    };
    for line in complete.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let l: Line = serde_json::from_slice(line)?;
        out.apply(l);
    }
    if complete.is_empty() && !tail.is_empty() {
        if let Ok(l) = serde_json::from_slice::<Line>(tail) {
            out.apply(l);
        }
    }
    Ok(out)
}

static LEASES: LazyLock<Mutex<HashMap<PathBuf, Arc<Lease>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn leases_dir(root: &Path) -> PathBuf {
    crate::layout::StateLayout::new(root).leases()
}

/// Creates `dir` (its parents as usual) private to its owner when it is
/// missing: a state root, or its `leases/`. An existing one is left as it is.
fn create_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs_err::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("{e} (creating {})", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// The key of a root in the table of this process's leases.
fn key(root: &Path) -> io::Result<PathBuf> {
    create_private(root)?;
    fs_err::canonicalize(root)
}

fn nonce() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    #[allow(clippy::cast_possible_truncation)] // any 32 bits of the hash will do
    let n = h.finish() as u32;
    n
}

fn try_lock(f: &std::fs::File) -> io::Result<()> {
    rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
}

impl Lease {
    /// This process's lease on the state root `root`, made (and its owner
    /// lock taken) on first use; the same one for the rest of the process.
    pub fn current(root: &Path) -> io::Result<Arc<Lease>> {
        let key = key(root)?;
        let mut table = LEASES.lock().expect("lease table");
        if let Some(l) = table.get(&key) {
            return Ok(Arc::clone(l));
        }
        let l = Arc::new(Self::create(&key)?);
        table.insert(key, Arc::clone(&l));
        Ok(l)
    }

    /// This process's lease on `root` if it made one.
    fn existing(root: &Path) -> Option<Arc<Lease>> {
        let key = fs_err::canonicalize(root).ok()?;
        LEASES.lock().expect("lease table").get(&key).cloned()
    }

    fn create(root: &Path) -> io::Result<Self> {
        let dir = leases_dir(root);
        create_private(&dir)?;
        loop {
            let token = format!("{}.{:08x}", std::process::id(), nonce());
            // Locked under a temporary name, then renamed: whoever sees the
            // lock file sees it locked.
            let tmp = dir.join(format!(".new-{token}"));
            let file = match fs_err::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(f) => f.into_parts().0,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            try_lock(&file).map_err(|e| {
                io::Error::new(e.kind(), format!("{e} (locking {})", tmp.display()))
            })?;
            let lock = dir.join(format!("{token}.lock"));
            if lock.exists() {
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            match std::fs::rename(&tmp, &lock) {
                Ok(()) => {}
                // A sweep took the half-made lock for a dead one's: again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} (renaming {} to {})", tmp.display(), lock.display()),
                    ));
                }
            }
            let lease = Self {
                dir,
                token,
                _lock: file,
                holds: Mutex::new(Journal {
                    holds: Holds {
                        pid: std::process::id(),
                        ..Holds::default()
                    },
                    file: None,
                    lines: 0,
                }),
            };
            lease.compact(&mut lease.holds.lock().expect("lease holds"))?;
            return Ok(lease);
        }
    }

    /// The owner token (`<pid>.<nonce>`) to put in temporary names.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A name prefix for a temporary file or directory of this process:
    /// `<kind>-<token>-` (a tempfile's random suffix follows).
    pub fn prefix(&self, kind: &str) -> String {
        format!("{kind}-{}-", self.token)
    }

    /// Writes `data` to `path` (its directory made if missing) atomically:
    /// a temp file beside it named with this process's owner token (swept
    /// once the process is dead, in a directory [`sweep`] covers), synced,
    /// then renamed.
    pub fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&self.prefix("tmp"))
            .tempfile_in(dir)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.token))
    }

    /// Writes the whole lease as a one-line journal (temp + rename) and
    /// opens it for appending.
    fn compact(&self, j: &mut Journal) -> io::Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{}.json.tmp", self.token));
        let mut data = serde_json::to_vec(&j.holds).map_err(io::Error::other)?;
        data.push(b'\n');
        {
            let mut f = fs_err::File::create(&tmp)?;
            f.write_all(&data)?;
        }
        fs_err::rename(&tmp, &path)?;
        j.file = Some(
            fs_err::OpenOptions::new()
                .append(true)
                .open(&path)?
                .into_parts()
                .0,
        );
        j.lines = 1;
        Ok(())
    }

    /// Appends one change (a single `write(2)`), or compacts when the
    /// journal is long.
    fn append(&self, j: &mut Journal, change: &Line) -> io::Result<()> {
        if j.lines >= COMPACT_AFTER || j.file.is_none() {
            return self.compact(j);
        }
        let mut data = serde_json::to_vec(change).map_err(io::Error::other)?;
        data.push(b'\n');
        let f = j.file.as_mut().expect("journal open");
        f.write_all(&data).map_err(|e| {
            io::Error::new(e.kind(), format!("{e} (writing {})", self.path().display()))
        })?;
        j.lines += 1;
        Ok(())
    }

    fn change(kind: Hold, value: &str, release: bool) -> Line {
        let mut holds = Holds::default();
        holds.set(kind).insert(value.to_owned());
        Line { holds, release }
    }

    /// Adds `value` to the lease (written out before this returns).
    pub fn hold(&self, kind: Hold, value: &str) -> io::Result<()> {
        let mut j = self.holds.lock().expect("lease holds");
        if j.holds.set(kind).insert(value.to_owned()) {
            if let Err(e) = self.append(&mut j, &Self::change(kind, value, false)) {
                j.holds.set(kind).remove(value);
                // The file may now hold a part of the line: rewrite it whole
                // on the next change.
                j.file = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Drops `value` from the lease.
    pub fn release(&self, kind: Hold, value: &str) -> io::Result<()> {
        let mut j = self.holds.lock().expect("lease holds");
        if j.holds.set(kind).remove(value) {
            self.append(&mut j, &Self::change(kind, value, true))?;
        }
        Ok(())
    }

    /// Whether this lease holds `value`.
    pub fn holds(&self, kind: Hold, value: &str) -> bool {
        self.holds
            .lock()
            .expect("lease holds")
            .holds
            .set(kind)
            .contains(value)
    }

    fn temp_change(path: &Path, release: bool) -> Line {
        let mut holds = Holds::default();
        holds.temps.insert(path.to_path_buf());
        Line { holds, release }
    }

    /// Records a temporary path outside the state root that this process is
    /// about to create (written out before this returns): if the process
    /// dies before [`Lease::release_temp`], the next sweep removes it. Its
    /// file name must contain the owner token.
    pub fn hold_temp(&self, path: &Path) -> io::Result<()> {
        let mut j = self.holds.lock().expect("lease holds");
        if j.holds.temps.insert(path.to_path_buf()) {
            if let Err(e) = self.append(&mut j, &Self::temp_change(path, false)) {
                j.holds.temps.remove(path);
                j.file = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The temporary path is gone or renamed into place.
    pub fn release_temp(&self, path: &Path) -> io::Result<()> {
        let mut j = self.holds.lock().expect("lease holds");
        if j.holds.temps.remove(path) {
            self.append(&mut j, &Self::temp_change(path, true))?;
        }
        Ok(())
    }

    /// Removes this process's lease files (the process is about to exit):
    /// the next command then has nothing of it to sweep.
    pub fn release_all() {
        let table = std::mem::take(&mut *LEASES.lock().expect("lease table"));
        for l in table.values() {
            let _ = std::fs::remove_file(l.dir.join(format!("{}.json", l.token)));
            let _ = std::fs::remove_file(l.dir.join(format!("{}.lock", l.token)));
        }
    }
}

/// Whether `s` is an owner token: `<pid>.<8 lowercase hex digits>`.
pub fn is_token(s: &str) -> bool {
    let Some((pid, n)) = s.split_once('.') else {
        return false;
    };
    !pid.is_empty()
        && pid.len() <= 10
        && pid.bytes().all(|b| b.is_ascii_digit())
        && n.len() == 8
        && n.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The owner of a file in `<root>/leases`: `<token>.lock`, `<token>.json`,
/// `<token>.json.tmp`, `.new-<token>`.
fn lease_file_token(name: &str) -> Option<&str> {
    let t = name.strip_prefix(".new-").unwrap_or_else(|| {
        name.strip_suffix(".lock")
            .or_else(|| name.strip_suffix(".json"))
            .or_else(|| name.strip_suffix(".json.tmp"))
            .unwrap_or("")
    });
    is_token(t).then_some(t)
}

/// The owner token in a temporary name (one of its `-`-separated parts).
pub fn token_in(name: &str) -> Option<&str> {
    name.split('-').find(|p| is_token(p))
}

/// Whether the owner `token` of state root `root` is alive: its lock file
/// exists and is locked. This process is alive.
pub fn is_alive(root: &Path, token: &str) -> bool {
    if Lease::existing(root).is_some_and(|l| l.token == token) {
        return true;
    }
    let path = leases_dir(root).join(format!("{token}.lock"));
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        // Cannot tell: count it alive, never remove what may be in use.
        Err(_) => return true,
    };
    // Locked (would block) or cannot tell: alive.
    try_lock(&f).is_err()
}

/// The union of the holds of every live lease of `root` (this process's
/// included). Call it under the store lock for a consistent answer.
pub fn live_holds(root: &Path) -> io::Result<Holds> {
    let mut out = Holds::default();
    if let Some(l) = Lease::existing(root) {
        out.merge(l.holds.lock().expect("lease holds").holds.clone());
    }
    let dir = leases_dir(root);
    let rd = match fs_err::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(token) = name.strip_suffix(".json") else {
            continue;
        };
        if !is_token(token) || !is_alive(root, token) {
            continue;
        }
        match std::fs::read(dir.join(&name)) {
            Ok(b) => {
                let h: Holds = parse_journal(&b).map_err(|e| {
                    io::Error::other(format!("lease {}: {e}", dir.join(&name).display()))
                })?;
                out.merge(h);
            }
            // It ended meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The mount points of this mount namespace (`/proc/self/mountinfo`).
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = fs_err::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .collect())
}

/// mountinfo's octal escapes (`\040` for a space, ...) undone.
fn unescape_mount_path(p: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter().all(|c| (b'0'..=b'7').contains(c)).then(|| {
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0')
            })
        });
        if let (b'\\', Some(v)) = (b[i], octal.and_then(|v| u8::try_from(v).ok())) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// What a [`sweep`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Mounts of dead owners taken down.
    pub unmounted: usize,
    /// Temporary files and directories of dead owners removed.
    pub removed: usize,
}

/// Liveness answers for one sweep.
struct Owners<'a> {
    root: &'a Path,
    known: HashMap<String, bool>,
}

impl Owners<'_> {
    fn dead(&mut self, token: &str) -> bool {
        if let Some(alive) = self.known.get(token) {
            return !alive;
        }
        let alive = is_alive(self.root, token);
        self.known.insert(token.to_owned(), alive);
        !alive
    }

    /// The dead owner a path under the root belongs to, by any component.
    fn dead_owner_of(&mut self, rel: &Path) -> Option<String> {
        rel.components().find_map(|c| {
            let t = token_in(c.as_os_str().to_str()?)?.to_owned();
            self.dead(&t).then_some(t)
        })
    }
}

/// Removes a file or a directory tree, opening up directories left without
/// permissions (overlayfs's `work/work` is mode 000).
pub fn remove_all(p: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !m.is_dir() {
        return match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            open_up(p);
            match std::fs::remove_dir_all(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                    e.kind(),
                    format!("{e} (removing {})", p.display()),
                )),
                _ => Ok(()),
            }
        }
    }
}

fn open_up(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
}

/// Takes down the mounts of dead owners under `root` (any mount point with a
/// dead owner's token in a component of its path below the root), then
/// removes the entries of `dirs` (directories under the root) and of
/// `<root>/leases` that carry a dead owner's token, and the temporary paths
/// outside the root that dead leases list. Entries without a token are left
/// alone. Errors on single entries are skipped (the next sweep tries again).
pub fn sweep(root: &Path, dirs: &[PathBuf]) -> io::Result<SweepReport> {
    // Our own lease first: an owner with no lock yet would look dead.
    Lease::current(root)?;
    let root = fs_err::canonicalize(root)?;
    let mut owners = Owners {
        root: &root,
        known: HashMap::new(),
    };
    let mut report = SweepReport::default();

    // Mounts, deepest first.
    let mut dead_mounts: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| {
            m.strip_prefix(&root)
                .is_ok_and(|rel| owners.dead_owner_of(rel).is_some())
        })
        .collect();
    dead_mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    dead_mounts.dedup();
    for m in &dead_mounts {
        if nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
            report.unmounted += 1;
        }
    }
    let still_mounted: Vec<PathBuf> = if dead_mounts.is_empty() {
        Vec::new()
    } else {
        mount_points()?
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect()
    };

    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let dir = fs_err::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(token) = name.to_str().and_then(token_in) else {
                continue;
            };
            if !owners.dead(token) {
                continue;
            }
            let p = dir.join(&name);
            // Never descend into something still mounted.
            if still_mounted.iter().any(|m| m.starts_with(&p)) {
                continue;
            }
            if remove_all(&p).is_ok() {
                report.removed += 1;
            }
        }
    }

    // Dead leases: what they list outside the root, then their files.
    let ldir = leases_dir(&root);
    if let Ok(rd) = std::fs::read_dir(&ldir) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // `<token>.json` before `<token>.lock`: the lock file goes last.
        names.sort_by_key(|n| Path::new(n).extension().is_some_and(|e| e == "lock"));
        for name in names {
            let Some(token) = lease_file_token(&name) else {
                continue;
            };
            let token = token.to_owned();
            if !owners.dead(&token) {
                continue;
            }
            let p = ldir.join(&name);
            if name == format!("{token}.json") {
                if let Ok(h) = std::fs::read(&p)
                    .map_err(|_| ())
                    .and_then(|b| parse_journal(&b).map_err(|_| ()))
                {
                    for t in &h.temps {
                        // Only what carries the owner's token.
                        if t.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.contains(token.as_str()))
                            && remove_all(t).is_ok()
                            && !t.exists()
                        {
                            report.removed += 1;
                        }
                    }
                }
            }
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_names() {
        assert!(is_token("123.0a1b2c3d"));
        assert!(!is_token("123.0a1b2c3"));
        assert!(!is_token("x123.0a1b2c3d"));
        assert!(!is_token("123.0A1B2C3D"));
        assert_eq!(
            token_in("tmp-77.deadbeef-0123abcd4567"),
            Some("77.deadbeef")
        );
        assert_eq!(token_in("rw-5.00000000-Ab3xYz"), Some("5.00000000"));
        assert_eq!(token_in("tmp-0123abcd4567"), None);
        assert_eq!(token_in(".tmp-x-12"), None);
    }

    #[test]
    fn holds_are_appended_to_one_file_and_read_back() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let lease = Lease::current(root).unwrap();
        let path = root.join(format!("leases/{}.json", lease.token()));
        let ino = fs_err::metadata(&path).unwrap().ino();
        for i in 0..40 {
            lease.hold(Hold::Snapshot, &format!("s{i}")).unwrap();
        }
        lease.release(Hold::Snapshot, "s7").unwrap();
        lease.hold_temp(&root.join("out-x")).unwrap();
        assert_eq!(
            fs_err::metadata(&path).unwrap().ino(),
            ino,
            "a change appends to the lease file; it does not replace it"
        );
        let read = parse_journal(&fs_err::read(&path).unwrap()).unwrap();
        assert_eq!(read.snapshots.len(), 39);
        assert!(!read.snapshots.contains("s7") && read.snapshots.contains("s39"));
        assert!(read.temps.contains(&root.join("out-x")));
        assert_eq!(read.pid, std::process::id());
    }

    #[test]
    fn a_long_journal_is_compacted_into_one_line() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let lease = Lease::current(root).unwrap();
        let path = root.join(format!("leases/{}.json", lease.token()));
        for i in 0..(COMPACT_AFTER + 10) {
            lease.hold(Hold::Blob, &format!("b{i}")).unwrap();
            lease.release(Hold::Blob, &format!("b{i}")).unwrap();
        }
        lease.hold(Hold::Image, "sha256:kept").unwrap();
        let b = fs_err::read(&path).unwrap();
        let lines = b.split(|&c| c == b'\n').count() - 1;
        assert!(lines < 30, "{lines} lines after compaction");
        let read = parse_journal(&b).unwrap();
        assert!(read.blobs.is_empty());
        assert!(read.images.contains("sha256:kept"));
    }

    #[test]
    fn a_line_being_written_is_ignored_and_the_old_format_is_read() {
        let full =
            b"{\"pid\":3,\"images\":[\"a\"]}\n{\"snapshots\":[\"s\"]}\n{\"images\":[\"a\"],\"rel";
        let h = parse_journal(full).unwrap();
        assert!(h.images.contains("a"), "the partial release is not applied");
        assert!(h.snapshots.contains("s"));
        let old = br#"{"pid":3,"images":["a"],"blobs":[],"snapshots":["s"],"temps":[]}"#;
        let h = parse_journal(old).unwrap();
        assert!(h.images.contains("a") && h.snapshots.contains("s"));
        assert!(
            parse_journal(b"{\"images\":\n").is_err(),
            "a complete bad line is an error"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn a_missing_root_is_made_private() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/root");
        let lease = Lease::current(&root).unwrap();
        assert!(!lease.token().is_empty());
        for d in [root.clone(), root.join("leases")] {
            assert_eq!(fs_err::metadata(&d).unwrap().mode() & 0o777, 0o700, "{d:?}");
        }
    }

    #[test]
    fn a_live_lease_is_kept_and_a_dead_owners_leftovers_go() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let lease = Lease::current(root).unwrap();
        assert!(Arc::ptr_eq(&lease, &Lease::current(root).unwrap()));
        assert!(is_alive(root, lease.token()));
        lease.hold(Hold::Image, "sha256:aa").unwrap();
        lease.hold(Hold::Snapshot, "0123").unwrap();
        let holds = live_holds(root).unwrap();
        assert!(holds.images.contains("sha256:aa") && holds.snapshots.contains("0123"));

        // A dead owner: a lease file nobody locks, its temp dirs and an output.
        let dead = "999999.0badf00d";
        fs_err::write(root.join(format!("leases/{dead}.lock")), "").unwrap();
        let outside = t.path().join(format!(".rbuild-output-{dead}-1"));
        fs_err::write(&outside, "partial").unwrap();
        let dead_holds = Holds {
            images: ["sha256:bb".to_owned()].into(),
            temps: [outside.clone()].into(),
            ..Holds::default()
        };
        fs_err::write(
            root.join(format!("leases/{dead}.json")),
            serde_json::to_vec(&dead_holds).unwrap(),
        )
        .unwrap();
        assert!(!is_alive(root, dead));
        assert!(!live_holds(root).unwrap().images.contains("sha256:bb"));
        let area = root.join("area");
        for n in [
            format!("tmp-{dead}-0123"),
            format!("tmp-{}-4567", lease.token()),
            "tmp-89ab".to_owned(),
        ] {
            fs_err::create_dir_all(area.join(n).join("work/work")).unwrap();
        }
        fs_err::set_permissions(
            area.join(format!("tmp-{dead}-0123/work/work")),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let r = sweep(root, std::slice::from_ref(&area)).unwrap();
        assert_eq!(r.unmounted, 0);
        let mut left: Vec<String> = fs_err::read_dir(&area)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec!["tmp-89ab".to_owned(), format!("tmp-{}-4567", lease.token())];
        want.sort();
        assert_eq!(left, want, "only the dead owner's entry went");
        assert!(!outside.exists(), "the dead owner's output temp is gone");
        assert!(!root.join(format!("leases/{dead}.json")).exists());
        assert!(!root.join(format!("leases/{dead}.lock")).exists());
        assert!(root.join(format!("leases/{}.lock", lease.token())).exists());
        lease.release(Hold::Image, "sha256:aa").unwrap();
        assert!(!live_holds(root).unwrap().images.contains("sha256:aa"));
    }
}
