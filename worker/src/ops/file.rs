//! `FileOp`: COPY/ADD, mkdir, mkfile, rm on an overlay of the base, with
//! `BuildKit`'s fileop copy semantics (fsutil `copy`).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild_snapshotter::overlay::{OverlayLayout, mount_overlay};
use rbuild_snapshotter::snapshots::{Active, ReadGuard, SnapshotStore};

use rbuild_ops::{Chmod, Chown, Copy, FileAction, FileOp, UserRef};
use rbuild_patterns::go_match;
use rbuild_solver::{ExecError, ResultRef};

use crate::context::{ContextChecksummer, NoFilter, PathFilter};
use crate::filter::SelectionFilter;
use crate::fsutil::{clean_rel, create_dir, io_msg, mkdir_all, resolve, resolve_nofollow, sorted};
use crate::state::{Inner, Res, err, snap_ref};

mod reuse;

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The owner `--chown` (or WORKDIR's `USER`) gives, as `BuildKit`'s `readUser`:
/// an id is the uid (and the gid when no group follows); a user name takes uid
/// and gid from the destination's `/etc/passwd`, a group name the gid from its
/// `/etc/group`. A name that is not there leaves root's id (0) for the user and
/// the user's gid for the group, silently, as `BuildKit` does.
fn resolve_owner(dest_root: &Path, c: &Chown) -> (u32, u32) {
    let read = |p: &str| std::fs::read_to_string(resolve(dest_root, Path::new(p))).ok();
    let (uid, mut gid) = match &c.user {
        UserRef::Id(i) => (*i, *i),
        UserRef::Name(n) => read("etc/passwd")
            .and_then(|t| rbuild_sandbox::user::passwd_ids(&t, n))
            .unwrap_or((0, 0)),
    };
    match &c.group {
        None => {}
        Some(UserRef::Id(g)) => gid = *g,
        Some(UserRef::Name(n)) => {
            if let Some(g) = read("etc/group").and_then(|t| rbuild_sandbox::user::group_id(&t, n)) {
                gid = g;
            }
        }
    }
    (uid, gid)
}

/// Applies `u+x,g-w,o=r,a+X`-style changes to `mode`.
fn symbolic_mode(spec: &str, mode: u32, is_dir: bool) -> Result<u32, ExecError> {
    let bad = || ExecError::msg(format!("invalid --chmod {spec:?}"));
    let mut m = mode & 0o7777;
    for clause in spec.split(',') {
        let op_at = clause.find(['+', '-', '=']).ok_or_else(bad)?;
        let (who, rest) = clause.split_at(op_at);
        let mut mask = 0;
        for c in who.chars() {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return Err(bad()),
            };
        }
        if who.is_empty() {
            mask = 0o7777;
        }
        let op = rest.chars().next().ok_or_else(bad)?;
        let mut bits = 0;
        for c in rest[1..].chars() {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if is_dir || m & 0o111 != 0 => 0o111,
                'X' => 0,
                's' => 0o6000,
                't' => 0o1000,
                _ => return Err(bad()),
            };
        }
        let bits = bits & mask;
        m = match op {
            '+' => m | bits,
            '-' => m & !bits,
            _ => (m & !(mask & 0o777)) | bits,
        };
    }
    Ok(m)
}

struct CopyCtx<'a> {
    filter: &'a dyn PathFilter,
    /// The source being copied (from the source root), for `filter`: a
    /// copy's patterns match the paths below it.
    source: PathBuf,
    /// The directories on the way down to the current entry that are left
    /// out themselves but may hold entries that are copied: each is made
    /// (with its source's metadata) only when one is, as fsutil delays the
    /// parents of an included path (`COPY --parents a/./*/c`, `!` exceptions).
    held: Vec<HeldDir>,
    owner: Option<(u32, u32)>,
    mode: Option<&'a Chmod>,
    timestamp: Option<i64>,
    /// First destination (relative to `root`) of each source inode with
    /// several links.
    links: HashMap<(u64, u64), PathBuf>,
    /// Regular files still to be created and copied (content and metadata):
    /// done in parallel by [`CopyCtx::flush`].
    pending: Vec<(PathBuf, PathBuf, std::fs::Metadata)>,
    /// Directories whose metadata (times last) is set by [`CopyCtx::flush`],
    /// once the files in them exist.
    dir_metas: Vec<(PathBuf, std::fs::Metadata)>,
    /// Where destinations are: the overlay's mount point while the base is
    /// mounted, else the new snapshot's upper directory.
    root: PathBuf,
    /// Whether `root` is an overlay mount. Then a directory that does not
    /// exist yet is created through the overlay (which copies its parents
    /// up) and filled later, straight in the upper directory, with the
    /// mount gone: no overlay in the way of creating its files, and files
    /// can be linked from an earlier result ([`reuse`]).
    overlay: bool,
    /// Directories to fill once unmounted: (source, destination relative to
    /// the root, path for filters).
    deferred: Vec<(PathBuf, PathBuf, PathBuf)>,
    /// The build context the sources come from (for content hashes).
    context: Option<(&'a Path, &'a ContextChecksummer)>,
    /// An earlier result of the same op to link unchanged files from.
    base: Option<&'a mut reuse::Base>,
    manifest: &'a mut reuse::Manifest,
}

/// A directory of [`CopyCtx::held`].
struct HeldDir {
    dst: PathBuf,
    meta: std::fs::Metadata,
    made: bool,
}

impl CopyCtx<'_> {
    /// Makes the held directories that are not made yet, from the top: an
    /// entry below them is about to be copied.
    fn make_held(&mut self) -> Result<(), ExecError> {
        for i in 0..self.held.len() {
            if self.held[i].made {
                continue;
            }
            let dst = self.held[i].dst.clone();
            if fs_err::symlink_metadata(&dst).is_ok_and(|e| !e.is_dir()) {
                return Err(self.not_a_dir(&dst));
            }
            create_dir(&dst)?;
            self.dir_metas.push((dst, self.held[i].meta.clone()));
            self.held[i].made = true;
        }
        Ok(())
    }

    /// Creates the pending files and copies their content and metadata on the
    /// rayon pool, a directory's files per job (creating files in different
    /// directories does not contend for a directory lock), then sets the
    /// directories' metadata, so that their times are not disturbed.
    fn flush(&mut self) -> Result<(), ExecError> {
        use rayon::prelude::*;
        let jobs = std::mem::take(&mut self.pending);
        let this = &*self;
        let one = |(src, dst, m): &(PathBuf, PathBuf, std::fs::Metadata)| {
            // Plain `std::fs::File`s: `std::io::copy` then copies in the kernel
            // (`copy_file_range`, or `sendfile` across file systems).
            let mut from = fs_err::File::open(src).map_err(err)?.into_parts().0;
            let mut to = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dst)
                .map_err(err)?
                .into_parts()
                .0;
            std::io::copy(&mut from, &mut to).map_err(|e| io_msg("copy to", dst, e))?;
            this.meta(dst, m, false)
        };
        if jobs.len() < 16 {
            jobs.iter().try_for_each(one)?;
        } else {
            let groups: Vec<_> = jobs
                .chunk_by(|a, b| a.1.parent() == b.1.parent())
                .flat_map(|g| g.chunks(256))
                .collect();
            groups
                .par_iter()
                .try_for_each(|g| g.iter().try_for_each(one))?;
        }
        for (dst, m) in std::mem::take(&mut self.dir_metas) {
            self.meta(&dst, &m, false)?;
        }
        Ok(())
    }

    /// Owner, mode (`None` for symlinks) and mtime a copy of `m` gets.
    fn target_meta(
        &self,
        m: &std::fs::Metadata,
        symlink: bool,
    ) -> Result<(u32, u32, Option<u32>, filetime::FileTime), ExecError> {
        let (uid, gid) = self.owner.unwrap_or((m.uid(), m.gid()));
        let mode = if symlink {
            None
        } else {
            Some(match self.mode {
                None => m.mode() & 0o7777,
                Some(Chmod::Octal(o)) => *o & 0o7777,
                Some(Chmod::Symbolic(s)) => symbolic_mode(s, m.mode(), m.is_dir())?,
            })
        };
        // `timestamp` clamps (SOURCE_DATE_EPOCH): never later than it.
        let mtime = filetime::FileTime::from_last_modification_time(m);
        let t = match self.timestamp {
            Some(ts) if mtime.unix_seconds() > ts => filetime::FileTime::from_unix_time(ts, 0),
            _ => mtime,
        };
        Ok((uid, gid, mode, t))
    }

    fn meta(&self, dst: &Path, m: &std::fs::Metadata, symlink: bool) -> Result<(), ExecError> {
        let (uid, gid, mode, t) = self.target_meta(m, symlink)?;
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            dst,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .or_else(crate::fsutil::unmapped_ok)
        .map_err(|e| io_msg("chown", dst, e))?;
        if let Some(mode) = mode {
            fs_err::set_permissions(dst, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        }
        filetime::set_symlink_file_times(dst, t, t).map_err(|e| io_msg("set times", dst, e))?;
        Ok(())
    }

    fn not_a_dir(&self, dst: &Path) -> ExecError {
        ExecError::msg(format!(
            "cannot copy to non-directory: /{}",
            self.rel(dst).display()
        ))
    }

    fn rel<'p>(&self, dst: &'p Path) -> &'p Path {
        dst.strip_prefix(&self.root).unwrap_or(dst)
    }

    /// The content hash of the context file `src`, if the checksummer knows it.
    fn source_hash(&self, src: &Path, m: &std::fs::Metadata) -> Option<[u8; 32]> {
        let (root, summer) = self.context?;
        let rel = src.strip_prefix(root).ok()?.to_str()?;
        summer.known_hash(rel, m)
    }

    /// Finishes what one source wrote: the pending files, then the deferred
    /// directories, filled straight in the upper directory with the overlay
    /// unmounted. With `go_on`, the overlay is mounted again for the next
    /// source.
    fn finish_source(&mut self, tgt: &mut Target<'_>, go_on: bool) -> Result<(), ExecError> {
        self.flush()?;
        if self.deferred.is_empty() {
            return Ok(());
        }
        tgt.unmount()?;
        self.root.clone_from(&tgt.upper);
        self.overlay = false;
        for (src, rel, filter_rel) in std::mem::take(&mut self.deferred) {
            let dst = tgt.upper.join(&rel);
            self.entry(&src, &dst, &filter_rel, false)?;
        }
        self.flush()?;
        if go_on {
            self.root = tgt.root()?;
            self.overlay = true;
        }
        Ok(())
    }

    /// Copies the entries of directory `src` into `target` (`rel`: `src`'s
    /// path for filters).
    fn children(&mut self, src: &Path, target: &Path, rel: &Path) -> Result<(), ExecError> {
        for name in sorted(src)? {
            self.entry(
                &src.join(&name),
                &target.join(&name),
                &rel.join(&name),
                false,
            )?;
        }
        Ok(())
    }

    /// Copies `src` (not followed) to `dst`; `rel` is its path for filters.
    fn entry(&mut self, src: &Path, dst: &Path, rel: &Path, follow: bool) -> Result<(), ExecError> {
        let m = if follow {
            fs_err::metadata(src)
        } else {
            fs_err::symlink_metadata(src)
        }
        .map_err(err)?;
        let ft = m.file_type();
        if !rel.as_os_str().is_empty()
            && self
                .filter
                .is_excluded_below(&self.source, rel, ft.is_dir())
        {
            if ft.is_dir() && self.filter.descend_excluded_dir_below(&self.source, rel) {
                // Left out itself, but something below may be copied.
                self.held.push(HeldDir {
                    dst: dst.to_path_buf(),
                    meta: m,
                    made: false,
                });
                let r = self.children(src, dst, rel);
                self.held.pop();
                r?;
            }
            return Ok(());
        }
        self.make_held()?;
        let existing = fs_err::symlink_metadata(dst).ok();
        if let Some(existing) = &existing {
            // BuildKit (fsutil's copy) refuses to put a directory where a
            // non-directory is, or anything else where a directory is.
            if ft.is_dir() && !existing.is_dir() {
                return Err(self.not_a_dir(dst));
            } else if existing.is_dir() && !ft.is_dir() {
                return Err(ExecError::msg(format!(
                    "cannot replace to directory /{} with file",
                    self.rel(dst).display()
                )));
            } else if !existing.is_dir() {
                fs_err::remove_file(dst).map_err(err)?;
                self.manifest.record(self.rel(dst), None);
            }
        }
        if ft.is_dir() {
            if self.overlay && existing.is_none() {
                // A new directory: create it through the overlay now, fill it
                // once the overlay is unmounted (see `CopyCtx::overlay`).
                create_dir(dst)?;
                let to = self.rel(dst).to_path_buf();
                self.deferred
                    .push((src.to_path_buf(), to, rel.to_path_buf()));
                return Ok(());
            }
            create_dir(dst)?;
            self.children(src, dst, rel)?;
            self.dir_metas.push((dst.to_path_buf(), m));
            Ok(())
        } else if ft.is_symlink() {
            let target = fs_err::read_link(src).map_err(err)?;
            std::os::unix::fs::symlink(&target, dst).map_err(|e| io_msg("symlink", dst, e))?;
            self.meta(dst, &m, true)
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                    let first = self.root.join(first);
                    self.manifest.record(self.rel(dst), None);
                    return fs_err::hard_link(first, dst).map_err(err);
                }
                let to = self.rel(dst).to_path_buf();
                self.manifest.record(&to, None);
                self.links.insert((m.dev(), m.ino()), to);
                // A file other links point to is copied now, before them.
                fs_err::copy(src, dst).map_err(err)?;
                return self.meta(dst, &m, false);
            }
            let hash = self.source_hash(src, &m);
            let to = self.rel(dst).to_path_buf();
            self.manifest.record(&to, hash);
            if let (Some(h), false) = (hash, self.overlay) {
                let (uid, gid, mode, mtime) = self.target_meta(&m, false)?;
                let want = reuse::Wanted {
                    size: m.size(),
                    mode: mode.unwrap_or(0),
                    uid,
                    gid,
                    mtime,
                };
                if let Some(base) = self.base.as_deref_mut() {
                    if base.link(&to, dst, &h, &want) {
                        return Ok(());
                    }
                }
            }
            self.pending.push((src.to_path_buf(), dst.to_path_buf(), m));
            Ok(())
        } else {
            let kind = if ft.is_fifo() {
                nix::sys::stat::SFlag::S_IFIFO
            } else if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                return Ok(()); // sockets are not copied
            };
            nix::sys::stat::mknod(
                dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777),
                m.rdev(),
            )
            .map_err(|e| io_msg("mknod", dst, e))?;
            self.meta(dst, &m, false)
        }
    }
}

/// Expands a source path (maybe a glob) into existing paths relative to `root`.
fn expand(
    root: &Path,
    raw: &str,
    wildcard: bool,
    filter: &dyn PathFilter,
) -> Result<Vec<PathBuf>, ExecError> {
    let rel = clean_rel(raw)?;
    if !(wildcard && has_meta(raw)) {
        let p = resolve_nofollow(root, &rel);
        if fs_err::symlink_metadata(&p).is_err()
            || (!rel.as_os_str().is_empty() && filter.is_excluded_below(&rel, &rel, p.is_dir()))
        {
            return Err(ExecError::msg(format!("\"/{}\": not found", rel.display())));
        }
        return Ok(vec![rel]);
    }
    let mut found = vec![PathBuf::new()];
    for comp in rel.components() {
        let comp = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        for base in &found {
            let dir = resolve(root, base);
            if has_meta(&comp) {
                let Ok(names) = sorted(&dir) else { continue };
                for n in names {
                    let ns = n.to_string_lossy();
                    let matched = go_match(&comp, &ns).map_err(|_| {
                        ExecError::msg(format!("\"{raw}\": syntax error in pattern"))
                    })?;
                    if matched {
                        let r = base.join(&n);
                        let is_dir = dir.join(&n).is_dir();
                        // Only the `.dockerignore` applies to a source itself.
                        if !filter.is_excluded_below(&r, &r, is_dir) {
                            next.push(r);
                        }
                    }
                }
            } else if fs_err::symlink_metadata(dir.join(&comp)).is_ok() {
                next.push(base.join(&comp));
            }
        }
        found = next;
    }
    Ok(found)
}

/// Whether the file starts like a tar archive (maybe compressed).
pub(crate) fn is_archive(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    let Ok(mut dec) = rbuild_snapshotter::Decoder::new(f) else {
        return false;
    };
    let mut buf = vec![0u8; 512];
    let mut n = 0;
    while n < 512 {
        match dec.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n == 512 && (&buf[257..262] == b"ustar" || tar_checksum_ok(&buf))
}

fn tar_checksum_ok(h: &[u8]) -> bool {
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(want) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == want && h[0] != 0
}

/// Where a file op writes: the new snapshot's upper directory, through an
/// overlay of the base while mounted (mounted lazily, unmounted to write in
/// the upper directory directly); with the copying snapshotter, through a
/// copy of the base whose changes are moved into the upper directory when it
/// is "unmounted".
pub(super) struct Target<'a> {
    upper: PathBuf,
    layout: Option<OverlayLayout>,
    mounts: PathBuf,
    /// The mount point's name prefix, with this process's owner token.
    prefix: String,
    mnt_dir: Option<tempfile::TempDir>,
    mount: Option<rbuild_snapshotter::overlay::OverlayMount>,
    /// The copying snapshotter's store and snapshot, and the copy while
    /// there is one.
    copying: Option<(&'a SnapshotStore, &'a Active)>,
    copy: Option<tempfile::TempDir>,
}

impl Target<'_> {
    /// The root to write under: the overlay (mounted now if needed), the
    /// copy of the base, or the upper directory when there is no base.
    fn root(&mut self) -> Result<PathBuf, ExecError> {
        let Some(layout) = &self.layout else {
            return Ok(self.upper.clone());
        };
        if let Some((store, active)) = self.copying {
            if self.copy.is_none() {
                self.copy = Some(store.materialize(active).map_err(err)?);
            }
            return Ok(self
                .copy
                .as_ref()
                .map_or_else(PathBuf::new, |t| t.path().join("root")));
        }
        if let Some(m) = &self.mount {
            return Ok(m.target().to_path_buf());
        }
        if self.mnt_dir.is_none() {
            let d = tempfile::Builder::new()
                .prefix(&self.prefix)
                .tempdir_in(&self.mounts)
                .map_err(err)?;
            self.mnt_dir = Some(d);
        }
        let dir = self
            .mnt_dir
            .as_ref()
            .map_or_else(PathBuf::new, |d| d.path().to_path_buf());
        let m = mount_overlay(layout, &dir).map_err(err)?;
        let root = m.target().to_path_buf();
        self.mount = Some(m);
        Ok(root)
    }

    fn overlaid(&self) -> bool {
        self.layout.is_some() && self.copying.is_none()
    }

    fn unmount(&mut self) -> Result<(), ExecError> {
        if let (Some(t), Some((store, active))) = (self.copy.take(), self.copying) {
            return store.capture(active, &t.path().join("root")).map_err(err);
        }
        match self.mount.take() {
            Some(m) => m.unmount().map_err(err),
            None => Ok(()),
        }
    }
}

/// A COPY action's inputs besides the op itself.
struct CopyInputs<'a> {
    ignore: Option<&'a (dyn PathFilter + Send + Sync)>,
    context: Option<(&'a Path, &'a ContextChecksummer)>,
    base: Option<&'a mut reuse::Base>,
    manifest: &'a mut reuse::Manifest,
}

fn copy_action(
    src_root: &Path,
    tgt: &mut Target<'_>,
    c: &Copy,
    inp: CopyInputs<'_>,
) -> Result<(), ExecError> {
    let from_context = inp.context.is_some();
    let ignore = inp.ignore;
    let dest_root = &tgt.root()?;
    let owner = match &c.owner {
        Some(o) => Some(resolve_owner(dest_root, o)),
        None if from_context => Some((0, 0)),
        None => None,
    };
    let filter = SelectionFilter::new(ignore, &c.include_patterns, &c.exclude_patterns)?;
    let mut sources = Vec::new();
    for raw in &c.src_paths {
        let found = expand(src_root, raw, c.allow_wildcard, &filter)?;
        if found.is_empty() && !c.allow_empty_wildcard {
            return Err(ExecError::msg(format!(
                "lstat \"{raw}\": no source files were specified"
            )));
        }
        sources.extend(found);
    }
    // `COPY --parents` without wildcards: the path must exist (BuildKit's
    // required paths).
    for raw in &c.required_paths {
        let rel = clean_rel(raw)?;
        let p = resolve_nofollow(src_root, &rel);
        if fs_err::symlink_metadata(&p).is_err()
            || (!rel.as_os_str().is_empty() && filter.is_excluded_below(&rel, &rel, p.is_dir()))
        {
            return Err(ExecError::msg(format!("\"/{}\": not found", rel.display())));
        }
    }
    // Wildcards that matched nothing (allowed): BuildKit's copy is a no-op,
    // not even the destination directory is made.
    if sources.is_empty() && c.allow_wildcard && c.required_paths.is_empty() {
        return Ok(());
    }
    let dest_rel = clean_rel(&c.dest)?;
    let dest_path = resolve(dest_root, &dest_rel);
    let dest_is_dir = c.dest.ends_with('/')
        || c.dest.ends_with("/.")
        || dest_rel.as_os_str().is_empty()
        || fs_err::metadata(&dest_path).is_ok_and(|m| m.is_dir());
    let created_owner = if c.owner.is_some() { owner } else { None };
    if c.create_dest_path {
        // The directories made for the destination path take an octal
        // `--chmod` (fsutil's `MkdirAll` of the destination's directory); the
        // directory a directory copy makes as its target stays 0755 (below),
        // as the conformance corpus's BuildKit made it.
        let mode = match &c.mode {
            Some(Chmod::Octal(o)) => *o,
            _ => 0o755,
        };
        if dest_is_dir {
            mkdir_all(dest_root, &dest_rel, created_owner, mode)?;
        } else if let Some(parent) = dest_rel.parent() {
            mkdir_all(dest_root, parent, created_owner, mode)?;
        }
    }
    let mut ctx = CopyCtx {
        filter: &filter,
        source: PathBuf::new(),
        held: Vec::new(),
        owner,
        mode: c.mode.as_ref(),
        timestamp: c.timestamp,
        links: HashMap::new(),
        pending: Vec::new(),
        dir_metas: Vec::new(),
        root: dest_root.clone(),
        overlay: tgt.overlaid(),
        deferred: Vec::new(),
        context: inp.context,
        base: inp.base,
        manifest: inp.manifest,
    };
    for rel in sources {
        // A later source may replace what an earlier one copied: finish each
        // source's files before the next.
        ctx.finish_source(tgt, true)?;
        let src = if c.follow_symlinks {
            resolve(src_root, &rel)
        } else {
            resolve_nofollow(src_root, &rel)
        };
        let m = fs_err::symlink_metadata(&src)
            .map_err(|_| ExecError::msg(format!("\"/{}\": not found", rel.display())))?;
        let base_name = rel.file_name().map_or_else(
            || std::ffi::OsString::from(""),
            std::ffi::OsStr::to_os_string,
        );
        ctx.source.clone_from(&rel);
        if m.is_dir() {
            if c.dir_contents_only {
                if fs_err::symlink_metadata(&dest_path).is_ok_and(|d| !d.is_dir()) {
                    return Err(ExecError::msg(format!(
                        "cannot copy to non-directory: /{}",
                        dest_rel.display()
                    )));
                }
                let target = mkdir_all(dest_root, &dest_rel, created_owner, 0o755)?;
                ctx.children(&src, &target, &rel)?;
            } else {
                let target = if dest_is_dir {
                    dest_path.join(&base_name)
                } else {
                    dest_path.clone()
                };
                ctx.entry(&src, &target, &rel, false)?;
            }
        } else if c.attempt_unpack && m.is_file() && is_archive(&src) {
            let target = mkdir_all(dest_root, &dest_rel, created_owner, 0o755)?;
            ctx.manifest.poison();
            let f = fs_err::File::open(&src).map_err(err)?.into_parts().0;
            let dec = rbuild_snapshotter::Decoder::new(f).map_err(err)?;
            // `ADD --chown` owns the extracted entries too (BuildKit ≥ 0.23).
            let opts = rbuild_snapshotter::ApplyOptions {
                owner: c.owner.as_ref().and(owner),
                ..rbuild_snapshotter::ApplyOptions::default()
            };
            rbuild_snapshotter::apply_layer(&target, dec, &opts).map_err(|e| {
                crate::error::context(format!("extracting \"/{}\"", rel.display()), e)
            })?;
        } else {
            let target = if dest_is_dir {
                dest_path.join(&base_name)
            } else {
                dest_path.clone()
            };
            ctx.entry(&src, &target, &rel, false)?;
        }
    }
    ctx.finish_source(tgt, false)
}

fn set_meta(
    p: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    ts: Option<i64>,
) -> Result<(), ExecError> {
    fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(err)?;
    if let Some((u, g)) = owner {
        nix::unistd::chown(p, Some(u.into()), Some(g.into()))
            .or_else(crate::fsutil::unmapped_ok)
            .map_err(|e| io_msg("chown", p, e))?;
    }
    if let Some(ts) = ts {
        let t = filetime::FileTime::from_unix_time(ts, 0);
        filetime::set_symlink_file_times(p, t, t).map_err(|e| io_msg("set times", p, e))?;
    }
    Ok(())
}

fn apply_action(
    inner: &Inner,
    tgt: &mut Target<'_>,
    action: &FileAction,
    inputs: &[ResultRef],
    guards: &mut HashMap<usize, ReadGuard>,
    base: Option<&mut reuse::Base>,
    manifest: &mut reuse::Manifest,
) -> Result<(), ExecError> {
    if let FileAction::Copy(c) = action {
        let r = inputs
            .get(c.src_input)
            .ok_or_else(|| ExecError::msg("copy source input does not exist"))?;
        return match inner.resolve(r)? {
            Res::Context(dir) => {
                let summer = inner.checksummer(&dir)?;
                let inp = CopyInputs {
                    ignore: inner.ignore.as_deref(),
                    context: Some((&dir, &summer)),
                    base,
                    manifest,
                };
                copy_action(&dir, tgt, c, inp)
            }
            Res::Snap(id) => {
                if let std::collections::hash_map::Entry::Vacant(v) = guards.entry(c.src_input) {
                    v.insert(inner.snapshots.mount_ro(&id).map_err(err)?);
                }
                let src = guards[&c.src_input].path().to_path_buf();
                let inp = CopyInputs {
                    ignore: None,
                    context: None,
                    base: None,
                    manifest,
                };
                copy_action(&src, tgt, c, inp)
            }
        };
    }
    manifest.poison();
    let dest_root = &tgt.root()?;
    match action {
        FileAction::Copy(_) => unreachable!("handled above"),
        FileAction::Mkdir(m) => {
            let rel = clean_rel(&m.path)?;
            let owner = m.owner.as_ref().map(|o| resolve_owner(dest_root, o));
            // An existing directory is left as it is (BuildKit's mkdir -p):
            // a WORKDIR does not take over a directory the image has.
            if fs_err::metadata(resolve(dest_root, &rel)).is_ok_and(|d| d.is_dir()) {
                return Ok(());
            }
            let p = if m.make_parents {
                mkdir_all(dest_root, &rel, owner, m.mode)?
            } else {
                let p = resolve_nofollow(dest_root, &rel);
                create_dir(&p)?;
                p
            };
            set_meta(&p, m.mode, owner, m.timestamp)
        }
        FileAction::Mkfile(f) => {
            let rel = clean_rel(&f.path)?;
            let owner = f.owner.as_ref().map(|o| resolve_owner(dest_root, o));
            let p = resolve_nofollow(dest_root, &rel);
            fs_err::write(&p, &f.data).map_err(err)?;
            set_meta(&p, f.mode, owner, f.timestamp)
        }
        FileAction::Rm(r) => {
            let found = if r.allow_wildcard && has_meta(&r.path) {
                expand(dest_root, &r.path, true, &NoFilter)?
            } else {
                let rel = clean_rel(&r.path)?;
                if fs_err::symlink_metadata(resolve_nofollow(dest_root, &rel)).is_ok() {
                    vec![rel]
                } else {
                    Vec::new()
                }
            };
            if found.is_empty() && !r.allow_not_found {
                return Err(ExecError::msg(format!(
                    "\"/{}\": not found",
                    r.path.trim_start_matches('/')
                )));
            }
            for rel in found {
                let p = resolve_nofollow(dest_root, &rel);
                let m = fs_err::symlink_metadata(&p).map_err(err)?;
                if m.is_dir() {
                    fs_err::remove_dir_all(&p).map_err(err)?;
                } else {
                    fs_err::remove_file(&p).map_err(err)?;
                }
            }
            Ok(())
        }
    }
}

pub(crate) fn run(
    inner: &Inner,
    op: &FileOp,
    inputs: &[ResultRef],
) -> Result<ResultRef, ExecError> {
    let base = match op.base {
        None => None,
        Some(i) => match inner.resolve(
            inputs
                .get(i)
                .ok_or_else(|| ExecError::msg("file op base input does not exist"))?,
        )? {
            Res::Snap(id) => Some(id),
            Res::Context(_) => {
                return Err(ExecError::msg("a build context cannot be a file op base"));
            }
        },
    };
    let active = inner
        .snapshots
        .prepare(base.as_ref(), "file")
        .map_err(err)?;
    // An earlier result of the same copies on the same base: its unchanged
    // files are linked instead of copied (see `reuse`).
    let contexts: Vec<PathBuf> = inputs
        .iter()
        .filter_map(|r| match inner.resolve(r) {
            Ok(Res::Context(dir)) => Some(dir),
            _ => None,
        })
        .collect();
    let key = reuse::key(op, base.as_ref(), &contexts);
    let mut reuse_base = key.as_deref().and_then(|k| reuse::lookup(inner, k));
    let mut manifest = reuse::Manifest::default();
    let copies = match inner.snapshots.copies() {
        Ok(c) => c,
        Err(e) => {
            let _ = inner.snapshots.abort(active);
            return Err(err(e));
        }
    };
    let mut tgt = Target {
        upper: active.upper.clone(),
        layout: (!active.lowers.is_empty()).then(|| OverlayLayout {
            lower: active.lowers.clone(),
            upper: active.upper.clone(),
            work: active.work.clone(),
        }),
        mounts: inner.snapshots.mounts_dir(),
        prefix: inner.snapshots.temp_prefix("rw"),
        mnt_dir: None,
        mount: None,
        copying: copies.then_some((&inner.snapshots, &active)),
        copy: None,
    };
    let result = (|| {
        let mut guards = HashMap::new();
        for a in &op.actions {
            apply_action(
                inner,
                &mut tgt,
                a,
                inputs,
                &mut guards,
                reuse_base.as_mut(),
                &mut manifest,
            )?;
        }
        drop(guards);
        tgt.unmount()
    })();
    drop(tgt);
    match result {
        Ok(()) => {
            let id = inner.snapshots.commit(active).map_err(err)?;
            if let Some(k) = &key {
                reuse::remember(inner, k, &id, &manifest);
            }
            Ok(snap_ref(&id))
        }
        Err(e) => {
            let _ = inner.snapshots.abort(active);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chown(user: UserRef, group: Option<UserRef>) -> Chown {
        Chown { user, group }
    }

    #[test]
    fn owner_names_resolve_as_buildkit_read_user() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nother:x:1002:\n").unwrap();
        let name = |s: &str| UserRef::Name(s.into());
        let o = |c: Chown| resolve_owner(root, &c);
        assert_eq!(o(chown(name("app"), None)), (1000, 1001));
        assert_eq!(o(chown(name("app"), Some(name("other")))), (1000, 1002));
        assert_eq!(o(chown(UserRef::Id(7), None)), (7, 7));
        assert_eq!(o(chown(UserRef::Id(7), Some(UserRef::Id(8)))), (7, 8));
        // Names the image lacks: root for the user, the user's gid for the group.
        assert_eq!(o(chown(name("ghost"), None)), (0, 0));
        assert_eq!(o(chown(name("app"), Some(name("nogroup")))), (1000, 1001));
        assert_eq!(o(chown(UserRef::Id(7), Some(name("nogroup")))), (7, 7));
        assert_eq!(o(chown(name("ghost"), Some(name("other")))), (0, 1002));
        // No passwd at all: names are root.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_owner(empty.path(), &chown(name("app"), None)),
            (0, 0)
        );
    }
}
