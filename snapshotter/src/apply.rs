//! Applying a layer tar to a directory, as the OCI image spec says: whiteouts
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` hides what lower layers had in that
//! directory), hard links, symlinks, devices, owners, modes, mtimes, xattrs.
//!
//! Nothing is ever touched outside the target, whatever the layer holds. Entry
//! names are cleaned (a leading `/` is dropped, `..` that would climb above the
//! root is refused). The parent directory of every entry — regular files,
//! directories, links, devices, whiteouts and opaque markers alike — is opened
//! with `openat2(RESOLVE_IN_ROOT)` (or, to create missing directories, an
//! equivalent walk one component at a time with `O_NOFOLLOW`), so a symlink on the
//! way is followed as if the root were `/` and can never lead out. Every change is
//! then made relative to that directory's descriptor with the `*at()` calls, never
//! following the last component. Hard-link targets are resolved the same way.
//! FIFOs and device nodes are created with `mknodat` and never opened: their
//! owner, mode and times are set with `fchownat`/`fchmodat`/`utimensat`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Options for [`apply_layer`].
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Set owners from the tar (default: when running as root).
    pub chown: bool,
    /// Give every entry this owner (uid, gid) instead of the tar's
    /// (`ADD --chown` of an archive).
    pub owner: Option<(u32, u32)>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            chown: rustix::process::geteuid().is_root(),
            owner: None,
        }
    }
}

/// What applying a layer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes that could not be created (no privilege).
    pub skipped_devices: u64,
    pub whiteouts: u64,
}

/// Cleans a tar entry name into components relative to the root; `None` for the root.
/// Refuses names that climb above the root and names containing NUL.
pub fn clean_name(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    if raw.contains(&0) {
        return Err(Error::BadEntry {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason: "NUL in name".into(),
        });
    }
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(Error::Escape(String::from_utf8_lossy(raw).into_owned()));
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// What whiteouts become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whiteouts {
    /// Remove what they name: the target holds every layer so far.
    Remove,
    /// Keep them as overlayfs does in the upper dir of this one layer: `.wh.NAME`
    /// becomes a 0/0 character device, `.wh..wh..opq` the opaque xattr.
    Overlay,
}

/// Applies the layer tar read from `layer` to `target`.
pub fn apply_layer<R: Read>(target: &Path, layer: R, opts: &ApplyOptions) -> Result<ApplyStats> {
    apply(target, layer, opts, Whiteouts::Remove)
}

/// Unpacks the layer tar read from `layer` into `upper`, the (empty) overlay upper
/// dir of this layer: whiteouts are kept the overlayfs way (a 0/0 character device
/// for `.wh.NAME`, `trusted.overlay.opaque=y` for `.wh..wh..opq`). Owners are set
/// when running as root.
pub fn apply_overlay_layer<R: Read>(upper: &Path, layer: R) -> Result<ApplyStats> {
    apply(upper, layer, &ApplyOptions::default(), Whiteouts::Overlay)
}

/// An open directory inside the root, with its identity.
struct Dir {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
}

impl Dir {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let st = rustix::fs::fstat(&fd)?;
        Ok(Self {
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// The target directory, opened once; every path is resolved inside it.
struct Root {
    dir: Rc<Dir>,
    shown: String,
    /// The directories resolved last (their components and themselves), most
    /// recent first: entries of one directory, and of a parent again after a
    /// subdirectory, resolve it once. Dropped whenever anything is removed.
    recent: Vec<(Vec<Vec<u8>>, Rc<Dir>)>,
}

/// How many resolved directories [`Root`] keeps open.
const RECENT: usize = 8;

const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

fn joined(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn shown(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&joined(comps)).into_owned()
}

impl Root {
    fn open(target: &Path) -> Result<Self> {
        let fd = rustix::fs::open(target, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_at(&target.display().to_string(), "opening", e))?;
        Ok(Self {
            dir: Rc::new(Dir::new(fd)?),
            shown: target.display().to_string(),
            recent: Vec::new(),
        })
    }

    fn forget(&mut self) {
        self.recent.clear();
    }

    /// The directory `comps` names, resolved inside the root as a chroot would:
    /// symlinks on the way are followed with the root as `/`, `..` stops at the root.
    /// Missing directories are created (mode 0755) when `create` is set.
    fn resolve(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Rc<Dir>> {
        if comps.is_empty() {
            return Ok(self.dir.clone());
        }
        if let Some(i) = self.recent.iter().position(|(k, _)| k.as_slice() == comps) {
            let hit = self.recent.remove(i);
            let d = hit.1.clone();
            self.recent.insert(0, hit);
            return Ok(d);
        }
        let d = Rc::new(self.lookup(comps, create)?);
        self.recent.truncate(RECENT - 1);
        self.recent.insert(0, (comps.to_vec(), d.clone()));
        Ok(d)
    }

    fn lookup(&self, comps: &[Vec<u8>], create: bool) -> Result<Dir> {
        let path = joined(comps);
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.dir.fd, &path[..], DIR_FLAGS, Mode::empty(), how) {
            Ok(fd) => Ok(Dir::new(fd)?),
            Err(Errno::NOENT) if create => self.walk(comps, true),
            // No openat2 (old kernel), a rename race, a path too long for one call:
            // the same resolution one component at a time.
            Err(Errno::NOSYS | Errno::AGAIN | Errno::XDEV | Errno::NAMETOOLONG | Errno::PERM) => {
                self.walk(comps, create)
            }
            Err(e) => Err(resolve_err(comps, e)),
        }
    }

    /// [`Root::lookup`] one component at a time: each is opened with `O_NOFOLLOW`
    /// relative to the directory before it, a symlink is read and its target
    /// walked instead (from the root when absolute), `..` goes back one directory
    /// and never above the root.
    fn walk(&self, comps: &[Vec<u8>], create: bool) -> Result<Dir> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut todo: Vec<Vec<u8>> = comps.iter().rev().cloned().collect();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let cur = stack.last().map_or(self.dir.fd.as_fd(), AsFd::as_fd);
            let kind = match rustix::fs::statat(cur, &c[..], AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
                Err(Errno::NOENT) if create => None,
                Err(e) => return Err(resolve_err(comps, e)),
            };
            match kind {
                Some(FileType::Symlink) => {
                    links += 1;
                    if links > 40 {
                        return Err(resolve_err(comps, Errno::LOOP));
                    }
                    let t = rustix::fs::readlinkat(cur, &c[..], Vec::new())
                        .map_err(|e| resolve_err(comps, e))?;
                    let t = t.as_bytes();
                    if t.starts_with(b"/") {
                        stack.clear();
                    }
                    todo.extend(t.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                }
                Some(FileType::Directory) | None => {
                    if kind.is_none() {
                        rustix::fs::mkdirat(cur, &c[..], Mode::from_raw_mode(0o755))
                            .map_err(|e| resolve_err(comps, e))?;
                    }
                    let fd = rustix::fs::openat(
                        cur,
                        &c[..],
                        DIR_FLAGS | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )
                    .map_err(|e| resolve_err(comps, e))?;
                    stack.push(fd);
                }
                Some(_) => return Err(resolve_err(comps, Errno::NOTDIR)),
            }
        }
        match stack.pop() {
            Some(fd) => Ok(Dir::new(fd)?),
            None => Ok(Dir::new(self.dir.fd.try_clone()?)?),
        }
    }
}

fn resolve_err(comps: &[Vec<u8>], e: Errno) -> Error {
    let reason = match e {
        Errno::NOTDIR => "a parent path is not a directory".to_owned(),
        Errno::LOOP => "too many levels of symbolic links".to_owned(),
        Errno::NOENT => "a parent directory does not exist".to_owned(),
        e => io::Error::from(e).to_string(),
    };
    Error::BadEntry {
        path: shown(comps),
        reason,
    }
}

fn io_at(what: &str, op: &str, e: Errno) -> Error {
    let e = io::Error::from(e);
    Error::Io(io::Error::new(e.kind(), format!("{op} {what}: {e}")))
}

/// What the layer applied so far wrote, by the directory holding it (its
/// device and inode) and name: an opaque marker hides only what lower layers
/// had. What the apply removes again leaves it (a name whited out or
/// replaced, a directory with all it held), so neither a later entry of that
/// name made only as a parent, nor a directory made later that gets a removed
/// one's inode number back, counts as written.
#[derive(Default)]
struct Written(HashMap<(u64, u64), HashSet<Vec<u8>>>);

impl Written {
    fn insert(&mut self, dir: &Dir, name: &[u8]) {
        self.0
            .entry((dir.dev, dir.ino))
            .or_default()
            .insert(name.to_vec());
    }

    fn contains(&self, dir: &Dir, name: &[u8]) -> bool {
        self.0
            .get(&(dir.dev, dir.ino))
            .is_some_and(|names| names.contains(name))
    }

    /// `name` in `dir` is removed.
    fn remove(&mut self, dir: &Dir, name: &[u8]) {
        if let Some(names) = self.0.get_mut(&(dir.dev, dir.ino)) {
            names.remove(name);
        }
    }

    /// The directory `(dev, ino)` is removed: what was written in it goes.
    fn remove_dir(&mut self, dev: u64, ino: u64) {
        self.0.remove(&(dev, ino));
    }
}

/// A layer entry's place: the resolved parent and the last component.
struct Place<'a> {
    dir: &'a Dir,
    name: &'a [u8],
    /// The entry's name as the tar has it, for messages.
    shown: &'a str,
}

impl Place<'_> {
    fn err(&self, op: &str, e: Errno) -> Error {
        io_at(&format!("{:?}", self.shown), op, e)
    }

    fn kind(&self) -> Result<Option<FileType>> {
        match rustix::fs::statat(&self.dir.fd, self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err("inspecting", e)),
        }
    }

    /// Removes the entry (a whole tree for a directory), and what the layer
    /// wrote there from `written`.
    fn remove(&self, written: &mut Written) -> Result<()> {
        written.remove(self.dir, self.name);
        remove_at(self.dir.fd.as_fd(), self.name, &mut |dev, ino| {
            written.remove_dir(dev, ino);
        })
        .map_err(|e| self.err("removing", e))
    }

    /// `/proc/self/fd/N/NAME`: the entry without following it, for the calls that
    /// have no `*at()` form (xattrs on symlinks, devices and directories).
    fn proc_path(&self) -> OsString {
        let mut p = format!("/proc/self/fd/{}/", self.dir.fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(self.name);
        OsString::from_vec(p)
    }

    fn chown(&self, owner: Option<(u32, u32)>) -> Result<()> {
        if let Some((u, g)) = owner {
            rustix::fs::chownat(
                &self.dir.fd,
                self.name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .or_else(unmapped_ok)
            .map_err(|e| self.err("changing the owner of", e))?;
        }
        Ok(())
    }

    fn set_xattrs(&self, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let p = self.proc_path();
        for (k, v) in xattrs {
            xattr_ok(rustix::fs::lsetxattr(
                &p,
                k.as_str(),
                v,
                rustix::fs::XattrFlags::empty(),
            ))
            .map_err(|e| self.err(&format!("setting xattr {k} on"), e))?;
        }
        Ok(())
    }

    fn set_mtime(&self, mtime: i64) -> Result<()> {
        rustix::fs::utimensat(
            &self.dir.fd,
            self.name,
            &times(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("setting the mtime of", e))
    }
}

/// Ignores what a filesystem or an unprivileged user cannot hold.
fn xattr_ok(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(Errno::NOTSUP | Errno::PERM) => Ok(()),
        r => r,
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The owner an entry gets, if any.
fn owner_of(h: &tar::Header, opts: &ApplyOptions) -> Option<(u32, u32)> {
    if opts.owner.is_some() {
        return opts.owner;
    }
    opts.chown.then(|| {
        (
            u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0),
            u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0),
        )
    })
}

/// The entry's `SCHILY.xattr.*` PAX records, without overlayfs' own attributes
/// (a layer must not steer the overlay mount its snapshot ends up in).
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Ok(key) = ext.key() {
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                    if !attr.starts_with("trusted.overlay.") && !attr.starts_with("user.overlay.") {
                        out.push((attr.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    out
}

/// Applies a layer to `target` (see the module docs for how it stays inside).
#[allow(clippy::too_many_lines)]
fn apply<R: Read>(
    target: &Path,
    layer: R,
    opts: &ApplyOptions,
    whiteouts: Whiteouts,
) -> Result<ApplyStats> {
    let mut root = Root::open(target)?;
    let mut stats = ApplyStats::default();
    let mut written = Written::default();
    let mut dirs: Vec<(Vec<Vec<u8>>, u32, i64)> = Vec::new();
    let mut archive = tar::Archive::new(layer);
    let entries = archive
        .entries()
        .map_err(|e| Error::BadTar(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::BadTar(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_name(&raw)?;
        stats.entries += 1;
        let h = entry.header().clone();
        let ty = h.entry_type();
        if matches!(ty, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        let Some((base, parents)) = comps.split_last() else {
            // The root itself: only its metadata.
            if ty.is_dir() {
                dirs.push((Vec::new(), h.mode().unwrap_or(0o755), mtime(&h)));
            }
            continue;
        };
        if base.as_slice() == b".wh..wh..opq" {
            stats.whiteouts += 1;
            let dir = root.resolve(parents, true)?;
            opaque(&dir, &name, whiteouts, &mut written)?;
            root.forget();
            continue;
        }
        if let Some(victim) = base.strip_prefix(b".wh.") {
            stats.whiteouts += 1;
            if victim.starts_with(b".wh.") || victim.is_empty() || victim == b"." || victim == b".."
            {
                continue; // reserved names (e.g. .wh..wh.plnk)
            }
            let dir = match root.resolve(parents, whiteouts == Whiteouts::Overlay) {
                Ok(d) => d,
                // Nothing there to remove.
                Err(Error::BadEntry { .. }) if whiteouts == Whiteouts::Remove => continue,
                Err(e) => return Err(e),
            };
            let place = Place {
                dir: &dir,
                name: victim,
                shown: &name,
            };
            place.remove(&mut written)?;
            root.forget();
            if whiteouts == Whiteouts::Overlay {
                rustix::fs::mknodat(&dir.fd, victim, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|e| place.err("making the whiteout", e))?;
            }
            continue;
        }
        let dir = root.resolve(parents, true)?;
        let place = Place {
            dir: &dir,
            name: base,
            shown: &name,
        };
        let mode = h.mode().map_err(|e| bad(&name, &e))?;
        let owner = owner_of(&h, opts);
        let xattrs = xattrs_of(&mut entry);
        let existing = place.kind()?;
        if ty.is_dir() {
            if existing.is_some_and(|k| k != FileType::Directory) {
                place.remove(&mut written)?;
                root.forget();
            }
            if existing != Some(FileType::Directory) {
                rustix::fs::mkdirat(&dir.fd, base, Mode::from_raw_mode(0o755))
                    .map_err(|e| place.err("creating directory", e))?;
            }
            place.chown(owner)?;
            place.set_xattrs(&xattrs)?;
            dirs.push((comps.clone(), mode, mtime(&h)));
            written.insert(&dir, base);
            continue;
        }
        if existing.is_some() {
            place.remove(&mut written)?;
            root.forget();
        }
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &dir.fd,
                    base.as_slice(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| place.err("creating", e))?;
                let mut f = std::fs::File::from(fd);
                stats.bytes += io::copy(&mut entry, &mut f).map_err(|e| {
                    Error::Io(io::Error::new(e.kind(), format!("writing {name:?}: {e}")))
                })?;
                if let Some((u, g)) = owner {
                    rustix::fs::fchown(
                        &f,
                        Some(rustix::fs::Uid::from_raw(u)),
                        Some(rustix::fs::Gid::from_raw(g)),
                    )
                    .or_else(unmapped_ok)
                    .map_err(|e| place.err("changing the owner of", e))?;
                }
                for (k, v) in &xattrs {
                    xattr_ok(rustix::fs::fsetxattr(
                        &f,
                        k.as_str(),
                        v,
                        rustix::fs::XattrFlags::empty(),
                    ))
                    .map_err(|e| place.err(&format!("setting xattr {k} on"), e))?;
                }
                // After chown, which clears set-id bits.
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
                    .map_err(|e| place.err("setting the mode of", e))?;
                rustix::fs::futimens(&f, &times(mtime(&h)))
                    .map_err(|e| place.err("setting the mtime of", e))?;
            }
            tar::EntryType::Symlink => {
                let t = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "symlink without a target"))?
                    .into_owned();
                if t.contains(&0) {
                    return Err(bad(&name, "NUL in the symlink target"));
                }
                rustix::fs::symlinkat(&t[..], &dir.fd, base.as_slice())
                    .map_err(|e| place.err("creating symlink", e))?;
                place.chown(owner)?;
                place.set_xattrs(&xattrs)?;
                place.set_mtime(mtime(&h))?;
            }
            tar::EntryType::Link => {
                let t = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "hard link without a target"))?
                    .into_owned();
                let tc = clean_name(&t)?;
                let Some((tbase, tparents)) = tc.split_last() else {
                    return Err(bad(&name, "hard link to the root"));
                };
                let missing = || bad(&name, "hard link target does not exist");
                let tdir = root.resolve(tparents, false).map_err(|_| missing())?;
                let target = Place {
                    dir: &tdir,
                    name: tbase,
                    shown: &name,
                };
                match target.kind()? {
                    None => return Err(missing()),
                    Some(FileType::Directory) => {
                        return Err(bad(&name, "hard link to a directory"));
                    }
                    Some(_) => {}
                }
                // Without AT_SYMLINK_FOLLOW: a symlink is linked, never followed.
                rustix::fs::linkat(
                    &tdir.fd,
                    tbase.as_slice(),
                    &dir.fd,
                    base.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(|e| place.err("hard linking", e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match ty {
                    tar::EntryType::Char => (FileType::CharacterDevice, devno(&h)),
                    tar::EntryType::Block => (FileType::BlockDevice, devno(&h)),
                    _ => (FileType::Fifo, 0),
                };
                match rustix::fs::mknodat(
                    &dir.fd,
                    base.as_slice(),
                    ft,
                    Mode::from_raw_mode(mode & 0o777),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(Errno::PERM | Errno::ACCESS) if ft != FileType::Fifo => {
                        stats.skipped_devices += 1;
                        continue;
                    }
                    Err(e) => return Err(place.err("creating node", e)),
                }
                // Never opened: a FIFO would block, a device would act.
                place.chown(owner)?;
                place.set_xattrs(&xattrs)?;
                // The node was made just now in this directory: fchmodat's
                // following of a last symlink cannot apply.
                rustix::fs::chmodat(
                    &dir.fd,
                    base.as_slice(),
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )
                .map_err(|e| place.err("setting the mode of", e))?;
                place.set_mtime(mtime(&h))?;
            }
            other => return Err(bad(&name, &format!("unsupported entry type {other:?}"))),
        }
        written.insert(&dir, base);
    }
    // Directory modes and mtimes last, deepest first: filling a directory changes
    // its mtime. Each is found again inside the root; one that is gone or no longer
    // a directory (a later entry replaced it) is left alone.
    for (comps, mode, mt) in dirs.into_iter().rev() {
        let mode = Mode::from_raw_mode(mode & 0o7777);
        let Some((base, parents)) = comps.split_last() else {
            rustix::fs::chmod(target, mode).map_err(|e| io_at(&root.shown, "chmod", e))?;
            rustix::fs::utimensat(rustix::fs::CWD, target, &times(mt), AtFlags::empty())
                .map_err(|e| io_at(&root.shown, "setting the mtime of", e))?;
            continue;
        };
        let Ok(dir) = root.resolve(parents, false) else {
            continue;
        };
        let shown = shown(&comps);
        let place = Place {
            dir: &dir,
            name: base,
            shown: &shown,
        };
        if place.kind()? != Some(FileType::Directory) {
            continue;
        }
        rustix::fs::chmodat(&dir.fd, base.as_slice(), mode, AtFlags::empty())
            .map_err(|e| place.err("setting the mode of", e))?;
        place.set_mtime(mt)?;
    }
    Ok(stats)
}

/// A chown to an id the user namespace does not map (rootless without
/// subordinate ids) leaves the owner as it is (see `overlay::unmapped_id`).
fn unmapped_ok(e: Errno) -> std::result::Result<(), Errno> {
    if crate::overlay::unmapped_id(e.raw_os_error()) {
        Ok(())
    } else {
        Err(e)
    }
}

/// An opaque marker in `dir`: removes what lower layers had there, or marks the
/// overlay upper dir opaque.
fn opaque(dir: &Dir, name: &str, whiteouts: Whiteouts, written: &mut Written) -> Result<()> {
    let err = |op: &str, e: Errno| io_at(&format!("{name:?}"), op, e);
    let fd = rustix::fs::openat(
        &dir.fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("opening the directory of", e))?;
    if whiteouts == Whiteouts::Overlay {
        return rustix::fs::fsetxattr(
            &fd,
            crate::overlay::opaque_xattr(),
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| err("marking opaque the directory of", e));
    }
    let mut victims = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd).map_err(|e| err("listing", e))? {
        let e = e.map_err(|e| err("listing", e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." && !written.contains(dir, n) {
            victims.push(n.to_vec());
        }
    }
    for v in victims {
        remove_at(dir.fd.as_fd(), &v, &mut |dev, ino| {
            written.remove_dir(dev, ino);
        })
        .map_err(|e| err("removing what lies under", e))?;
    }
    Ok(())
}

// Depth-first without recursion: each level holds its descriptor and the
// subdirectories still to remove; other children go as they are listed.
struct Level {
    fd: OwnedFd,
    name: Vec<u8>,
    /// The directory's device and inode.
    id: (u64, u64),
    subdirs: Vec<Vec<u8>>,
}
fn open_level(parent: BorrowedFd<'_>, name: Vec<u8>) -> rustix::io::Result<Level> {
    let fd = rustix::fs::openat(
        parent,
        &name[..],
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut subdirs = Vec::new();
    let mut others = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let is_dir = match e.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(&fd, n, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            subdirs.push(n.to_vec());
        } else {
            others.push(n.to_vec());
        }
    }
    for n in others {
        rustix::fs::unlinkat(&fd, &n[..], AtFlags::empty())?;
    }
    let st = rustix::fs::fstat(&fd)?;
    Ok(Level {
        fd,
        name,
        id: (st.st_dev, st.st_ino),
        subdirs,
    })
}

/// Removes `name` in `dir` (a whole tree for a directory), never following a
/// symlink: a tree is walked by descriptors opened with `O_NOFOLLOW`. Each
/// directory removed is told to `gone` (device, inode).
fn remove_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    gone: &mut dyn FnMut(u64, u64),
) -> rustix::io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
        Ok(_) => {}
    }
    let mut stack = vec![open_level(dir, name.to_vec())?];
    while let Some(top) = stack.last_mut() {
        if let Some(sub) = top.subdirs.pop() {
            let next = open_level(top.fd.as_fd(), sub)?;
            stack.push(next);
        } else {
            let done = stack.pop().expect("a level is on the stack");
            let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
            rustix::fs::unlinkat(parent, &done.name[..], AtFlags::REMOVEDIR)?;
            gone(done.id.0, done.id.1);
        }
    }
    Ok(())
}

fn devno(h: &tar::Header) -> rustix::fs::Dev {
    let ma = h.device_major().ok().flatten().unwrap_or(0);
    let mi = h.device_minor().ok().flatten().unwrap_or(0);
    rustix::fs::makedev(ma, mi)
}

fn mtime(h: &tar::Header) -> i64 {
    h.mtime()
        .ok()
        .and_then(|m| i64::try_from(m).ok())
        .unwrap_or(0)
}

fn bad(name: &str, reason: &(impl std::fmt::Display + ?Sized)) -> Error {
    Error::BadEntry {
        path: name.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarwrite::{EntryKind, EntryMeta, TarWriter};

    fn m(path: &str, kind: EntryKind, size: u64) -> EntryMeta {
        EntryMeta {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1_000,
            size,
            xattrs: vec![],
        }
    }

    fn layer(entries: &[(EntryMeta, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), None);
        for (meta, data) in entries {
            let mut d = *data;
            w.append(meta, Some(&mut d)).unwrap();
        }
        w.finish().unwrap()
    }

    fn raw_tar(name: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
        // Built by hand: the tar crate's builder refuses `..` in names.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_gnu_mut().unwrap().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    #[test]
    fn whiteouts_and_opaque_directories_follow_the_oci_spec() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let opts = ApplyOptions {
            chown: false,
            owner: None,
        };
        apply_layer(
            root,
            &layer(&[
                (m("a", EntryKind::Dir, 0), b""),
                (m("a/x", EntryKind::File, 1), b"x"),
                (m("a/y", EntryKind::File, 1), b"y"),
                (m("b", EntryKind::Dir, 0), b""),
                (m("b/old", EntryKind::File, 1), b"o"),
            ])[..],
            &opts,
        )
        .unwrap();
        let mut w = TarWriter::new(Vec::new(), None);
        w.append(&m("b", EntryKind::Dir, 0), None).unwrap();
        w.append(&m("b/new", EntryKind::File, 1), Some(&mut &b"n"[..]))
            .unwrap();
        w.append_opaque(b"b").unwrap();
        w.append_whiteout(b"a/x").unwrap();
        let l2 = w.finish().unwrap();
        let st = apply_layer(root, &l2[..], &opts).unwrap();
        assert_eq!(st.whiteouts, 2);
        assert!(!root.join("a/x").exists());
        assert!(root.join("a/y").exists());
        assert!(!root.join("b/old").exists());
        assert!(
            root.join("b/new").exists(),
            "entries of the same layer survive the opaque marker"
        );
    }

    /// The tree `entries` (a layer in the order given) makes in an empty
    /// directory, as `(path, content)` sorted (`/` after a directory).
    fn applied(entries: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
        let t = tempfile::tempdir().unwrap();
        let mut w = TarWriter::new(Vec::new(), None);
        for (path, what) in entries {
            match (path.strip_prefix("-"), path.strip_suffix("/.opq"), what) {
                (Some(victim), _, _) => w.append_whiteout(victim.as_bytes()).unwrap(),
                (_, Some(dir), _) => w.append_opaque(dir.as_bytes()).unwrap(),
                (_, _, None) => w.append(&m(path, EntryKind::Dir, 0), None).unwrap(),
                (_, _, Some(data)) => w
                    .append(
                        &m(path, EntryKind::File, data.len() as u64),
                        Some(&mut data.as_bytes()),
                    )
                    .unwrap(),
            }
        }
        let opts = ApplyOptions {
            chown: false,
            owner: None,
        };
        apply_layer(t.path(), &w.finish().unwrap()[..], &opts).unwrap();
        let mut out = Vec::new();
        let mut todo = vec![t.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs_err::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(t.path()).unwrap().display().to_string();
                if p.is_dir() {
                    out.push((format!("{rel}/"), String::new()));
                    todo.push(p);
                } else {
                    out.push((rel, fs_err::read_to_string(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// A whiteout takes what it removes out of what the layer wrote: a
    /// directory made later under that name only as a parent (not an entry
    /// of the layer) goes with an opaque marker of its directory, as it does
    /// when the name was never written.
    #[test]
    fn a_name_whited_out_in_its_own_layer_is_no_longer_the_layers() {
        let never_written = applied(&[("y", None), ("y/s/f", Some("f")), ("y/.opq", None)]);
        assert_eq!(never_written, [("y/".to_owned(), String::new())]);
        let whited_out = applied(&[
            ("y", None),
            ("y/s", Some("s")),
            ("-y/s", None),
            ("y/s/f", Some("f")),
            ("y/.opq", None),
        ]);
        assert_eq!(whited_out, never_written);
    }

    /// A directory removed during an apply takes what the layer wrote in it
    /// along: a directory made after it, which may get its inode number back
    /// (ext4 hands a freed inode out again at once), inherits none of it.
    #[test]
    fn a_directory_made_after_one_was_removed_inherits_nothing_of_it() {
        for removed_by in ["-y", "y"] {
            // Removed by a whiteout, or replaced by a file.
            let what = (removed_by == "y").then_some("now a file");
            let got = applied(&[
                ("y", None),
                ("y/s", Some("s")),
                (removed_by, what),
                ("z/s/f", Some("f")),
                ("z/.opq", None),
            ]);
            let mut want = vec![("z/".to_owned(), String::new())];
            if let Some(w) = what {
                want.insert(0, ("y".to_owned(), w.to_owned()));
            }
            assert_eq!(got, want, "y removed by {removed_by:?}");
        }
    }

    #[test]
    fn dot_dot_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("root");
        fs_err::create_dir(&inner).unwrap();
        let tar = raw_tar("../evil", tar::EntryType::Regular, None, b"boom");
        let err = apply_layer(
            &inner,
            &tar[..],
            &ApplyOptions {
                chown: false,
                owner: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Escape(_)), "{err}");
        assert!(!t.path().join("evil").exists());
    }

    #[test]
    fn absolute_names_and_symlinked_parents_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("root");
        fs_err::create_dir(&inner).unwrap();
        let outside = t.path().join("outside");
        fs_err::create_dir(&outside).unwrap();
        let opts = ApplyOptions {
            chown: false,
            owner: None,
        };
        // A symlink pointing out, then a file written through it.
        let l1 = layer(&[(
            m(
                "esc",
                EntryKind::Symlink(outside.to_str().unwrap().into()),
                0,
            ),
            b"",
        )]);
        apply_layer(&inner, &l1[..], &opts).unwrap();
        let l2 = layer(&[(m("esc/pwned", EntryKind::File, 2), b"hi")]);
        apply_layer(&inner, &l2[..], &opts).unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(
            inner
                .join(outside.strip_prefix("/").unwrap())
                .join("pwned")
                .exists()
        );
        // Relative symlink climbing out.
        let l3 = layer(&[
            (m("up", EntryKind::Symlink("../../../..".into()), 0), b""),
            (m("up/f", EntryKind::File, 1), b"f"),
        ]);
        apply_layer(&inner, &l3[..], &opts).unwrap();
        assert!(inner.join("f").exists());
        // Absolute entry names.
        let tar = raw_tar("/abs", tar::EntryType::Regular, None, b"a");
        apply_layer(&inner, &tar[..], &opts).unwrap();
        assert!(inner.join("abs").exists());
    }

    #[test]
    fn hard_links_to_outside_are_refused_or_contained() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("root");
        fs_err::create_dir(&inner).unwrap();
        let opts = ApplyOptions {
            chown: false,
            owner: None,
        };
        let tar = raw_tar("h", tar::EntryType::Link, Some("../secret"), b"");
        assert!(apply_layer(&inner, &tar[..], &opts).is_err());
        let tar = raw_tar("h", tar::EntryType::Link, Some("/etc/passwd"), b"");
        // Resolved inside the root, where it does not exist.
        assert!(apply_layer(&inner, &tar[..], &opts).is_err());
        assert!(!inner.join("h").exists());
    }

    #[test]
    fn diff_then_apply_reproduces_the_upper_tree() {
        let t = tempfile::tempdir().unwrap();
        let (low, up, out) = (
            t.path().join("low"),
            t.path().join("up"),
            t.path().join("out"),
        );
        for d in [&low, &up, &out] {
            fs_err::create_dir_all(d).unwrap();
        }
        fs_err::create_dir_all(low.join("d/e")).unwrap();
        fs_err::write(low.join("d/e/f"), "f").unwrap();
        fs_err::write(low.join("keep"), "k").unwrap();
        fs_err::create_dir_all(up.join("d")).unwrap();
        fs_err::write(up.join("keep"), "k2").unwrap();
        fs_err::write(up.join("d/new"), "n").unwrap();
        std::os::unix::fs::symlink("keep", up.join("s")).unwrap();
        let opts = ApplyOptions {
            chown: false,
            owner: None,
        };
        let base = crate::diff::write_diff(None, &low, Vec::new(), &crate::DiffOptions::default())
            .unwrap();
        apply_layer(&out, &base[..], &opts).unwrap();
        let top =
            crate::diff::write_diff(Some(&low), &up, Vec::new(), &crate::DiffOptions::default())
                .unwrap();
        apply_layer(&out, &top[..], &opts).unwrap();
        assert_eq!(fs_err::read_to_string(out.join("keep")).unwrap(), "k2");
        assert_eq!(fs_err::read_to_string(out.join("d/new")).unwrap(), "n");
        assert!(!out.join("d/e").exists());
        assert_eq!(fs_err::read_link(out.join("s")).unwrap(), Path::new("keep"));
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;
    use crate::diff::{DiffOptions, read_xattrs, write_diff};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn xattrs_devices_owners_and_clamped_mtimes_survive_diff_and_apply() {
        let t = tempfile::tempdir().unwrap();
        let (up, out) = (t.path().join("up"), t.path().join("out"));
        fs_err::create_dir_all(&up).unwrap();
        fs_err::create_dir_all(&out).unwrap();
        let f = up.join("file");
        fs_err::write(&f, "x").unwrap();
        let have_xattr =
            rustix::fs::lsetxattr(&f, "user.test", b"v1", rustix::fs::XattrFlags::empty()).is_ok();
        let root = rustix::process::geteuid().is_root();
        if root {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                up.join("null"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_bits_truncate(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
            std::os::unix::fs::lchown(&f, Some(1234), Some(5678)).unwrap();
        }
        filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(2_000_000_000, 0)).unwrap();
        let layer = write_diff(
            None,
            &up,
            Vec::new(),
            &DiffOptions {
                source_date_epoch: Some(1_700_000_000),
            },
        )
        .unwrap();
        let opts = ApplyOptions {
            chown: root,
            owner: None,
        };
        apply_layer(&out, &layer[..], &opts).unwrap();
        let m = fs_err::symlink_metadata(out.join("file")).unwrap();
        assert_eq!(
            m.mtime(),
            1_700_000_000,
            "mtime clamped to SOURCE_DATE_EPOCH"
        );
        if have_xattr {
            assert_eq!(
                read_xattrs(&out.join("file")).unwrap(),
                vec![("user.test".to_owned(), b"v1".to_vec())]
            );
        } else {
            println!("xattrs not supported here: skipped that part");
        }
        if root {
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
            let d = fs_err::symlink_metadata(out.join("null")).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(
                &d.file_type()
            ));
            assert_eq!(d.rdev(), rustix::fs::makedev(1, 3));
        } else {
            println!("not root: owners and devices skipped");
        }
    }
}

#[cfg(test)]
mod containment_props {
    use super::*;
    use proptest::prelude::*;

    fn raw_entry(name: &[u8], ty: tar::EntryType, link: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(99);
        h.as_gnu_mut().unwrap().name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(99);
        h.as_gnu_mut().unwrap().linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(ty);
        h.set_size(u64::from(ty == tar::EntryType::Regular));
        h.set_mode(0o755);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        if ty == tar::EntryType::Regular {
            out.push(b'x');
            out.resize(1024, 0);
        }
        out
    }

    fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "..", ".", "", "/abs", "c/.."]),
            1..6,
        )
        .prop_map(|parts| parts.join("/").into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever names, symlinks and hard links a layer holds, nothing lands outside the target.
        #[test]
        fn nothing_is_written_outside_the_target(
            entries in prop::collection::vec((path_strategy(), 0u8..4, path_strategy()), 1..8)
        ) {
            let t = tempfile::tempdir().unwrap();
            let target = t.path().join("target");
            fs_err::create_dir(&target).unwrap();
            let mut layer = Vec::new();
            for (name, kind, link) in &entries {
                let ty = match kind {
                    0 => tar::EntryType::Regular,
                    1 => tar::EntryType::Directory,
                    2 => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                let link = if *kind == 2 { [b"../../..".as_slice(), link].concat() } else { link.clone() };
                layer.extend(raw_entry(name, ty, &link));
            }
            layer.extend_from_slice(&[0; 1024]);
            let _ = apply_layer(&target, &layer[..], &ApplyOptions { chown: false, owner: None });
            let outside: Vec<_> = fs_err::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
            prop_assert_eq!(outside, vec![std::ffi::OsString::from("target")]);
            prop_assert!(!Path::new("/abs").exists());
        }
    }
}

#[cfg(test)]
mod hostile {
    //! Layers made to reach outside the target: each leaves the bait beside the
    //! target untouched.
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use std::time::Duration;

    /// A tar of `(name, type, link target, mode, data)` entries.
    fn tar_of(entries: &[(&str, tar::EntryType, &str, u32, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, link, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(*mode);
            h.set_mtime(1_234_567);
            h.set_size(data.len() as u64);
            if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            }
            if link.is_empty() {
                b.append_data(&mut h, name, *data).unwrap();
            } else {
                b.append_link(&mut h, name, link).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    struct Setup {
        _t: tempfile::TempDir,
        target: PathBuf,
        bait: PathBuf,
    }

    fn setup() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        let bait = t.path().join("bait");
        fs_err::create_dir_all(&target).unwrap();
        fs_err::create_dir_all(bait.join("dir")).unwrap();
        fs_err::write(bait.join("file"), "precious").unwrap();
        fs_err::write(bait.join("dir/inner"), "inner").unwrap();
        fs_err::set_permissions(&bait, std::fs::Permissions::from_mode(0o750)).unwrap();
        Setup {
            _t: t,
            target,
            bait,
        }
    }

    fn listing(p: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![p.to_path_buf()];
        while let Some(d) = todo.pop() {
            let m = fs_err::symlink_metadata(&d).unwrap();
            let data = if m.is_file() {
                fs_err::read(&d).unwrap()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {} {data:?}",
                d.display(),
                m.mode(),
                m.mtime()
            ));
            if m.is_dir() {
                for e in fs_err::read_dir(&d).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }

    /// Applies with a time limit: a hang (a FIFO opened) fails the test.
    fn apply_timed(target: &Path, layer: Vec<u8>, overlay: bool) -> Result<ApplyStats> {
        let (tx, rx) = std::sync::mpsc::channel();
        let target = target.to_path_buf();
        std::thread::spawn(move || {
            let opts = ApplyOptions::default();
            let r = if overlay {
                apply_overlay_layer(&target, &layer[..])
            } else {
                apply_layer(&target, &layer[..], &opts)
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("applying the layer hung")
    }

    fn need_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "cannot run: devices, owners and overlay whiteouts need root"
        );
    }

    use tar::EntryType as T;

    #[test]
    fn whiteouts_through_a_symlinked_parent_act_inside() {
        need_root();
        for overlay in [false, true] {
            let s = setup();
            let link = s.bait.to_str().unwrap();
            let before = listing(&s.bait);
            // In one layer, and across two.
            let one = tar_of(&[
                ("evil", T::Symlink, link, 0o777, b""),
                ("evil/.wh.file", T::Regular, "", 0o644, b""),
                ("evil/.wh..wh..opq", T::Regular, "", 0o644, b""),
                ("evil/dir/.wh.inner", T::Regular, "", 0o644, b""),
            ]);
            apply_timed(&s.target, one, overlay).unwrap();
            let two = tar_of(&[("evil/.wh.dir", T::Regular, "", 0o644, b"")]);
            apply_timed(&s.target, two, overlay).unwrap();
            assert_eq!(listing(&s.bait), before, "overlay: {overlay}");
            if overlay {
                let inside = s.target.join(s.bait.strip_prefix("/").unwrap());
                let m = fs_err::symlink_metadata(inside.join("file")).unwrap();
                assert!(m.file_type().is_char_device() && m.rdev() == 0);
            }
        }
    }

    #[test]
    fn entries_through_a_symlink_land_inside() {
        need_root();
        for overlay in [false, true] {
            let s = setup();
            let link = s.bait.to_str().unwrap();
            let before = listing(&s.bait);
            let l = tar_of(&[
                ("evil", T::Symlink, link, 0o777, b""),
                ("evil/sub", T::Directory, "", 0o777, b""),
                ("evil/file", T::Regular, "", 0o644, b"overwritten"),
                ("evil/dir", T::Regular, "", 0o644, b"replaced"),
                ("rel", T::Symlink, "../../../../../../..", 0o777, b""),
                ("rel/x", T::Regular, "", 0o644, b"x"),
            ]);
            apply_timed(&s.target, l, overlay).unwrap();
            assert_eq!(listing(&s.bait), before, "overlay: {overlay}");
            let inside = s.target.join(s.bait.strip_prefix("/").unwrap());
            assert_eq!(fs_err::read(inside.join("file")).unwrap(), b"overwritten");
            assert!(inside.join("sub").is_dir());
            assert!(s.target.join("x").is_file());
        }
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_keeps_its_mode_inside() {
        need_root();
        for overlay in [false, true] {
            let s = setup();
            let link = s.bait.to_str().unwrap();
            let before = listing(&s.bait);
            let l = tar_of(&[
                ("d", T::Directory, "", 0o777, b""),
                ("d", T::Symlink, link, 0o777, b""),
                ("e", T::Directory, "", 0o700, b""),
                ("e", T::Symlink, "/", 0o777, b""),
            ]);
            apply_timed(&s.target, l, overlay).unwrap();
            assert_eq!(listing(&s.bait), before, "overlay: {overlay}");
            let m = fs_err::symlink_metadata(s.target.join("d")).unwrap();
            assert!(m.file_type().is_symlink());
        }
    }

    #[test]
    fn hard_links_resolve_inside_and_never_follow_a_symlink() {
        need_root();
        for overlay in [false, true] {
            let s = setup();
            let bait_file = s.bait.join("file");
            let before = listing(&s.bait);
            let l = tar_of(&[
                ("l", T::Symlink, bait_file.to_str().unwrap(), 0o777, b""),
                ("h", T::Link, "l", 0o644, b""),
            ]);
            apply_timed(&s.target, l, overlay).unwrap();
            let m = fs_err::symlink_metadata(s.target.join("h")).unwrap();
            assert!(m.file_type().is_symlink(), "the symlink itself is linked");
            // A host path as target: resolved in the root, where it is missing.
            let l = tar_of(&[("h2", T::Link, bait_file.to_str().unwrap(), 0o644, b"")]);
            let e = apply_timed(&s.target, l, overlay).unwrap_err();
            assert!(e.to_string().contains("does not exist"), "{e}");
            assert_eq!(listing(&s.bait), before, "overlay: {overlay}");
            assert_eq!(fs_err::metadata(&bait_file).unwrap().nlink(), 1);
        }
    }

    #[test]
    fn fifos_and_devices_are_made_never_opened() {
        need_root();
        for overlay in [false, true] {
            let s = setup();
            let l = tar_of(&[
                ("fifo", T::Fifo, "", 0o644, b""),
                ("null", T::Char, "", 0o666, b""),
                ("blk", T::Block, "", 0o600, b""),
                ("suid", T::Regular, "", 0o4755, b"#!"),
                ("sgid-dir", T::Directory, "", 0o2775, b""),
            ]);
            let st = apply_timed(&s.target, l, overlay).unwrap();
            let m = fs_err::symlink_metadata(s.target.join("fifo")).unwrap();
            assert!(m.file_type().is_fifo());
            assert_eq!((m.mode() & 0o7777, m.mtime()), (0o644, 1_234_567));
            assert_eq!(st.skipped_devices, 0);
            let m = fs_err::symlink_metadata(s.target.join("null")).unwrap();
            assert!(m.file_type().is_char_device());
            assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
            assert_eq!((m.mode() & 0o7777, m.mtime()), (0o666, 1_234_567));
            let m = fs_err::symlink_metadata(s.target.join("blk")).unwrap();
            assert!(m.file_type().is_block_device());
            let m = fs_err::symlink_metadata(s.target.join("suid")).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o4755, "set-id bits kept");
            let m = fs_err::symlink_metadata(s.target.join("sgid-dir")).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o2775);
            // Applying again over the FIFO replaces it without opening it.
            let l = tar_of(&[("fifo", T::Fifo, "", 0o600, b"")]);
            apply_timed(&s.target, l, overlay).unwrap();
        }
    }

    #[test]
    fn overlay_attributes_in_a_layer_are_dropped() {
        need_root();
        let s = setup();
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.keep", &b"k"[..]),
        ])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "d", &[][..]).unwrap();
        apply_timed(&s.target, b.into_inner().unwrap(), true).unwrap();
        let names = crate::diff::read_xattrs(&s.target.join("d")).unwrap();
        assert!(
            !names.iter().any(|(k, _)| k.starts_with("trusted.overlay.")),
            "{names:?}"
        );
        assert!(
            names.contains(&("user.keep".to_owned(), b"k".to_vec())),
            "{names:?}"
        );
    }
}
