//! Overlay snapshots: an image's unpacked layer directories as the read-only lower
//! stack, plus a step's upper and work directories, mounted at a target with
//! overlayfs; or, where overlayfs cannot be used, a copy of the lower stack into a
//! fresh directory (the step's diff is then computed by comparing that directory
//! with its parent, see `diff`).
//!
//! Mounts are made in the caller's mount namespace with nix's safe API. The sandbox
//! can also mount the same layout itself inside its own mount namespace
//! (`rbuild_sandbox::Rootfs::Overlay`), which is what rootless runs need.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

/// Errors of overlay mounting and the copy fallback.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("mount overlay at {target}: {source}")]
    Mount {
        target: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("unmount {target}: {source}")]
    Unmount {
        target: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("overlay needs at least one lower directory")]
    NoLower,
    #[error(
        "overlay options for {layers} layers are {len} bytes, over the kernel's one-page limit; \
         use the copy fallback"
    )]
    OptionsTooLong { layers: usize, len: usize },
    #[error("path {0} contains a character overlay options cannot hold (',' or ':')")]
    BadPath(PathBuf),
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = OverlayError> = std::result::Result<T, E>;

/// The directories of one overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayout {
    /// The read-only layers, top-most first (overlayfs `lowerdir` order).
    pub lower: Vec<PathBuf>,
    /// Receives the step's changes.
    pub upper: PathBuf,
    /// overlayfs scratch space; same filesystem as `upper`, empty.
    pub work: PathBuf,
}

/// The kernel's limit for mount options (one page, with the NUL).
const MAX_OPTIONS: usize = 4095;

impl OverlayLayout {
    /// The `mount -o` data for this layout. With only lower dirs (`upper` empty
    /// path) the overlay is read-only.
    pub fn options(&self) -> Result<String> {
        if self.lower.is_empty() {
            return Err(OverlayError::NoLower);
        }
        let check = |p: &Path| -> Result<String> {
            let s = p.to_string_lossy();
            if s.contains(',') || s.contains(':') || p.as_os_str().as_bytes() != s.as_bytes() {
                return Err(OverlayError::BadPath(p.to_path_buf()));
            }
            Ok(s.into_owned())
        };
        let lower = self
            .lower
            .iter()
            .map(|p| check(p))
            .collect::<Result<Vec<_>>>()?
            .join(":");
        let mut opts = format!("lowerdir={lower}");
        if in_user_namespace() {
            // overlayfs keeps its markers in `user.overlay.*` xattrs: a user
            // namespace may not set `trusted.*` ones.
            opts.push_str(",userxattr");
        }
        if !self.upper.as_os_str().is_empty() {
            opts = format!(
                "{opts},upperdir={},workdir={}",
                check(&self.upper)?,
                check(&self.work)?
            );
        }
        if opts.len() > MAX_OPTIONS {
            return Err(OverlayError::OptionsTooLong {
                layers: self.lower.len(),
                len: opts.len(),
            });
        }
        Ok(opts)
    }
}

/// Whether this process is in a user namespace other than the initial one
/// (rootless rbuild): overlays are then mounted with `userxattr` and opaque
/// directories are marked with [`opaque_xattr`]'s `user.overlay.opaque`.
pub fn in_user_namespace() -> bool {
    static IN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
    })
}

/// Whether a chown that failed with `errno` (raw) asked for an id this user
/// namespace does not map (`EINVAL`): rootless rbuild without subordinate ids
/// leaves such files owned by the namespace's root (the README says so).
pub fn unmapped_id(errno: i32) -> bool {
    errno == nix::errno::Errno::EINVAL as i32 && in_user_namespace()
}

/// The xattr that marks an upper directory opaque for the overlays this
/// process mounts: `trusted.overlay.opaque`, or `user.overlay.opaque` in a
/// user namespace (`userxattr`).
pub fn opaque_xattr() -> &'static str {
    if in_user_namespace() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether `name` is an xattr the overlays this process mounts keep for
/// themselves: `trusted.overlay.*`, and `user.overlay.*` in a user namespace.
pub fn is_own_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || (in_user_namespace() && name.starts_with("user.overlay."))
}

/// An overlay mounted at a target; unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    active: bool,
}

impl OverlayMount {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting failure (a lazy detach is tried when busy).
    pub fn unmount(mut self) -> Result<()> {
        self.active = false;
        unmount(&self.target)
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.active {
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts `layout` at `target` (an existing directory).
pub fn mount_overlay(layout: &OverlayLayout, target: &Path) -> Result<OverlayMount> {
    let opts = layout.options()?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|source| OverlayError::Mount {
        target: target.to_path_buf(),
        source,
    })?;
    Ok(OverlayMount {
        target: target.to_path_buf(),
        active: true,
    })
}

/// Unmounts `target`; when it is busy, detaches it lazily.
pub fn unmount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|source| {
                OverlayError::Unmount {
                    target: target.to_path_buf(),
                    source,
                }
            })
        }
        Err(source) => Err(OverlayError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Whether overlay snapshots can be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlaySupport {
    /// overlayfs mounts work in this mount namespace.
    Native,
    /// They do not; the reason says why. Use [`copy_lower_stack`].
    Unavailable(String),
}

/// Tries a real overlay mount under `scratch` (a directory on the filesystem that
/// will hold the snapshots: overlayfs's upper dir needs one that supports it).
/// Cheap enough to call once per process; the caller caches the answer.
pub fn detect_overlay(scratch: &Path) -> OverlaySupport {
    let features = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !features
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return OverlaySupport::Unavailable(
            "the kernel has no overlay filesystem (/proc/filesystems)".into(),
        );
    }
    let Ok(dir) = tempfile::Builder::new()
        .prefix(".overlay-check-")
        .tempdir_in(scratch)
    else {
        return OverlaySupport::Unavailable(format!(
            "cannot create a test directory in {}",
            scratch.display()
        ));
    };
    let p = dir.path();
    let lower = p.join("lower");
    let layout = OverlayLayout {
        lower: vec![lower.clone()],
        upper: p.join("upper"),
        work: p.join("work"),
    };
    let merged = p.join("merged");
    for d in [&lower, &layout.upper, &layout.work, &merged] {
        if let Err(e) = std::fs::create_dir(d) {
            return OverlaySupport::Unavailable(format!("create {}: {e}", d.display()));
        }
    }
    if let Err(e) = std::fs::write(lower.join("f"), b"x") {
        return OverlaySupport::Unavailable(format!("write test file: {e}"));
    }
    let m = match mount_overlay(&layout, &merged) {
        Ok(m) => m,
        Err(e) => return OverlaySupport::Unavailable(e.to_string()),
    };
    let works = std::fs::read(merged.join("f")).is_ok_and(|b| b == b"x")
        && std::fs::write(merged.join("g"), b"y").is_ok()
        && layout.upper.join("g").exists()
        && !lower.join("g").exists();
    let unmounted = m.unmount();
    match (works, unmounted) {
        (true, Ok(())) => OverlaySupport::Native,
        (false, _) => OverlaySupport::Unavailable(format!(
            "an overlay mounted in {} did not behave as overlayfs",
            scratch.display()
        )),
        (true, Err(e)) => OverlaySupport::Unavailable(e.to_string()),
    }
}

/// The root filesystem of a step, as prepared by [`prepare_rootfs`].
#[derive(Debug)]
pub enum PreparedRootfs {
    /// An overlay mounted at the target; the step's changes land in `upper`.
    Overlay(OverlayMount),
    /// A full copy of the lower stack at the target; diff it against the parent.
    Copy(PathBuf),
}

impl PreparedRootfs {
    pub fn path(&self) -> &Path {
        match self {
            PreparedRootfs::Overlay(m) => m.target(),
            PreparedRootfs::Copy(p) => p,
        }
    }
}

/// Mounts `layout` at `target` when `support` is native, otherwise copies the
/// lower stack into `target` (which should be empty).
pub fn prepare_rootfs(
    layout: &OverlayLayout,
    target: &Path,
    support: &OverlaySupport,
) -> Result<PreparedRootfs> {
    if *support == OverlaySupport::Native {
        match mount_overlay(layout, target) {
            Ok(m) => return Ok(PreparedRootfs::Overlay(m)),
            Err(OverlayError::OptionsTooLong { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    copy_lower_stack(&layout.lower, target)?;
    Ok(PreparedRootfs::Copy(target.to_path_buf()))
}

/// Copies the merged view of `lower` (top-most first, as for overlayfs) into
/// `target`: bottom layer first, each layer over the last, overlay whiteouts (a
/// 0:0 character device) removing what is below and opaque directories hiding
/// it. Owners (when root), modes, mtimes, xattrs (overlayfs's own left out),
/// symlinks, hard links within a layer, devices and fifos are kept.
pub fn copy_lower_stack(lower: &[PathBuf], target: &Path) -> Result<()> {
    copy_stack(lower, target, true)
}

/// [`copy_lower_stack`] with every name a file of its own: the root a step
/// of the copying snapshotter runs in. A write through one name of a file
/// that has several then changes that name only, as overlayfs's copy-up
/// does, so both snapshotters make the same layers.
pub fn copy_lower_stack_unlinked(lower: &[PathBuf], target: &Path) -> Result<()> {
    copy_stack(lower, target, false)
}

fn copy_stack(lower: &[PathBuf], target: &Path, keep_links: bool) -> Result<()> {
    fs_err::create_dir_all(target)?;
    let chown = nix::unistd::geteuid().is_root();
    for layer in lower.iter().rev() {
        let mut links = keep_links.then(HashMap::new);
        copy_dir(layer, target, chown, &mut links)?;
        copy_meta(layer, target, chown)?;
    }
    Ok(())
}

use crate::lookup::is_whiteout;

/// Removes `p`, a directory with all it holds or anything else; nothing
/// when it is absent.
pub(crate) fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(p)?,
        Ok(_) => fs_err::remove_file(p)?,
        Err(_) => {}
    }
    Ok(())
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> OverlayError {
    let path = path.to_path_buf();
    move |source| OverlayError::Sys { what, path, source }
}

fn copy_meta(src: &Path, dst: &Path, chown: bool) -> Result<()> {
    let m = fs_err::symlink_metadata(src)?;
    let x = content_xattrs(src)?;
    set_meta_as(dst, &m, &x, chown)
}

/// [`crate::diff::content_xattrs`] with this module's error.
fn content_xattrs(p: &Path) -> Result<crate::diff::Xattrs> {
    crate::diff::content_xattrs(p).map_err(|e| match e {
        crate::Error::Io(e) => e.into(),
        e => std::io::Error::other(e.to_string()).into(),
    })
}

/// Gives `dst` the owner (when root, in or out of a user namespace), mode,
/// xattrs and times of `m` / `xattrs`.
pub(crate) fn set_meta(
    dst: &Path,
    m: &std::fs::Metadata,
    xattrs: &[(String, Vec<u8>)],
) -> crate::error::Result<()> {
    set_meta_as(dst, m, xattrs, nix::unistd::geteuid().is_root()).map_err(|e| match e {
        OverlayError::Io(e) => crate::Error::Io(e),
        e => crate::Error::Io(std::io::Error::other(e.to_string())),
    })
}

fn set_meta_as(
    dst: &Path,
    m: &std::fs::Metadata,
    xattrs: &[(String, Vec<u8>)],
    chown: bool,
) -> Result<()> {
    if chown {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            dst,
            Some(Uid::from_raw(m.uid())),
            Some(Gid::from_raw(m.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .or_else(|e| {
            // An owner this user namespace does not map (rootless without
            // subordinate ids): left to the namespace's root, as the
            // applier leaves it.
            if unmapped_id(e as i32) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(sys("chown", dst))?;
    }
    for (k, v) in xattrs {
        match rustix::fs::lsetxattr(dst, k.as_str(), v, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // A file system that holds no xattrs (an export directory).
            Err(e) if e == rustix::io::Errno::NOTSUP => {}
            Err(e) => {
                return Err(OverlayError::Sys {
                    what: "set the xattr of",
                    path: dst.to_path_buf(),
                    source: nix::errno::Errno::from_raw(e.raw_os_error()),
                });
            }
        }
    }
    if !m.file_type().is_symlink() {
        fs_err::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    let ts = |s: i64, ns: i64| TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &ts(m.atime(), m.atime_nsec()),
        &ts(m.mtime(), m.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(sys("set times of", dst))?;
    Ok(())
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    chown: bool,
    links: &mut Option<HashMap<(u64, u64), PathBuf>>,
) -> Result<()> {
    for entry in fs_err::read_dir(src)? {
        let entry = entry?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let m = fs_err::symlink_metadata(&s)?;
        if is_whiteout(&m) {
            remove_any(&d)?;
            continue;
        }
        let existing = std::fs::symlink_metadata(&d).ok();
        if m.is_dir() {
            // An opaque directory hides what the layers below hold there.
            if !existing.as_ref().is_some_and(std::fs::Metadata::is_dir)
                || crate::lookup::is_opaque(&s)
            {
                remove_any(&d)?;
                fs_err::create_dir(&d)?;
            }
            copy_dir(&s, &d, chown, links)?;
            copy_meta(&s, &d, chown)?;
            continue;
        }
        if existing.is_some() {
            remove_any(&d)?;
        }
        if let (true, Some(links)) = (m.nlink() > 1, links.as_mut()) {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs_err::hard_link(first, &d)?;
                continue;
            }
            links.insert((m.dev(), m.ino()), d.clone());
        }
        let ft = m.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs_err::read_link(&s)?, &d).map_err(|e| {
                std::io::Error::new(e.kind(), format!("symlink {}: {e}", d.display()))
            })?;
        } else if ft.is_file() {
            fs_err::copy(&s, &d)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                SFlag::S_IFIFO
            } else if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(&d, kind, Mode::from_bits_truncate(m.mode()), m.rdev())
                .map_err(sys("mknod", &d))?;
        } else {
            continue; // sockets are not copied
        }
        copy_meta(&s, &d, chown)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_join_lower_top_first() {
        let l = OverlayLayout {
            lower: vec!["/l/2".into(), "/l/1".into()],
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert_eq!(
            l.options().unwrap(),
            "lowerdir=/l/2:/l/1,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn options_refuse_bad_paths_and_overlong() {
        let l = OverlayLayout {
            lower: vec!["/a:b".into()],
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert!(matches!(l.options(), Err(OverlayError::BadPath(_))));
        let l = OverlayLayout {
            lower: (0..200)
                .map(|i| PathBuf::from(format!("/var/lib/rbuild/snapshots/{i:040}")))
                .collect(),
            upper: "/u".into(),
            work: "/w".into(),
        };
        let e = l.options().unwrap_err().to_string();
        assert!(e.contains("200 layers"), "{e}");
        let l = OverlayLayout {
            lower: vec![],
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert!(matches!(l.options(), Err(OverlayError::NoLower)));
    }

    #[test]
    fn copy_fallback_merges_layers_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (
            d.path().join("l1"),
            d.path().join("l2"),
            d.path().join("out"),
        );
        std::fs::create_dir_all(l1.join("dir/sub")).unwrap();
        std::fs::write(l1.join("dir/a"), "a1").unwrap();
        std::fs::write(l1.join("dir/gone"), "g").unwrap();
        std::fs::write(l1.join("dir/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("dir/a", l1.join("link")).unwrap();
        std::fs::create_dir_all(l2.join("dir")).unwrap();
        std::fs::write(l2.join("dir/a"), "a2").unwrap();
        std::fs::write(l2.join("hl1"), "h").unwrap();
        std::fs::hard_link(l2.join("hl1"), l2.join("hl2")).unwrap();
        let is_root = nix::unistd::geteuid().is_root();
        if is_root {
            nix::sys::stat::mknod(&l2.join("dir/gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
            nix::sys::stat::mknod(&l2.join("dir/sub"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        }
        copy_lower_stack(&[l2.clone(), l1.clone()], &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("dir/a")).unwrap(), "a2");
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            PathBuf::from("dir/a")
        );
        let (m1, m2) = (
            std::fs::metadata(out.join("hl1")).unwrap(),
            std::fs::metadata(out.join("hl2")).unwrap(),
        );
        assert_eq!(m1.ino(), m2.ino());
        if is_root {
            assert!(!out.join("dir/gone").exists());
            assert!(!out.join("dir/sub").exists());
        } else {
            panic!("cannot run: the whiteout checks need root (mknod of a whiteout)");
        }
        // The lower dirs are untouched.
        assert_eq!(std::fs::read_to_string(l1.join("dir/a")).unwrap(), "a1");
    }

    #[test]
    fn overlay_mount_writes_go_to_upper() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "cannot run: overlay mounts need root"
        );
        let d = tempfile::tempdir().unwrap();
        let support = detect_overlay(d.path());
        if let OverlaySupport::Unavailable(why) = &support {
            panic!("cannot run: overlay unavailable: {why}");
        }
        let p = d.path();
        let layout = OverlayLayout {
            lower: vec![p.join("l2"), p.join("l1")],
            upper: p.join("up"),
            work: p.join("work"),
        };
        for dir in [
            &layout.lower[0],
            &layout.lower[1],
            &layout.upper,
            &layout.work,
        ] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::create_dir(p.join("m")).unwrap();
        std::fs::write(p.join("l1/f"), "1").unwrap();
        std::fs::write(p.join("l2/f"), "2").unwrap();
        let r = prepare_rootfs(&layout, &p.join("m"), &support).unwrap();
        assert!(matches!(r, PreparedRootfs::Overlay(_)));
        assert_eq!(std::fs::read_to_string(r.path().join("f")).unwrap(), "2");
        std::fs::write(r.path().join("f"), "3").unwrap();
        std::fs::write(r.path().join("new"), "n").unwrap();
        let PreparedRootfs::Overlay(m) = r else {
            unreachable!()
        };
        m.unmount().unwrap();
        assert_eq!(std::fs::read_to_string(p.join("l2/f")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(p.join("l1/f")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(p.join("up/f")).unwrap(), "3");
        assert!(p.join("up/new").exists() && !p.join("l2/new").exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(p.join("m").to_str().unwrap()));
    }
}
