//! Applying a layer tar to a directory, as the OCI image spec says: whiteouts
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` hides what lower layers had in that
//! directory), hard links, symlinks, devices, owners, modes, mtimes, xattrs.
//!
//! Nothing is ever written outside the target: entry names are cleaned (a leading
//! `/` is dropped, `..` that would climb above the root is refused), parent
//! directories are resolved inside the root (a symlink on the way is followed as if
//! the root were `/`), the last component is never followed, and hard-link targets
//! are resolved the same way.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// Applies the layer tar read from `layer` to `target`.
pub fn apply_layer<R: Read>(target: &Path, layer: R, opts: &ApplyOptions) -> Result<ApplyStats> {
    let root = fs_err::canonicalize(target)?;
    let mut stats = ApplyStats::default();
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
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
        let Some((base, parents)) = comps.split_last() else {
            // The root itself: only its metadata.
            if entry.header().entry_type().is_dir() {
                let h = entry.header();
                dirs.push((root.clone(), h.mode().unwrap_or(0o755), mtime(h)));
            }
            continue;
        };
        let parent = resolve_dir(&root, parents, true)?;
        if base.as_slice() == b".wh..wh..opq" {
            stats.whiteouts += 1;
            for child in fs_err::read_dir(&parent)? {
                let p = child?.path();
                if !written.contains(&p) {
                    remove_any(&p)?;
                }
            }
            continue;
        }
        if let Some(victim) = base.strip_prefix(b".wh.") {
            stats.whiteouts += 1;
            if victim.starts_with(b".wh.") || victim.is_empty() || victim == b"." || victim == b".."
            {
                continue; // reserved names (e.g. .wh..wh.plnk)
            }
            remove_any(&parent.join(OsStr::from_bytes(victim)))?;
            continue;
        }
        let path = parent.join(OsStr::from_bytes(base));
        let h = entry.header().clone();
        let ty = h.entry_type();
        let mode = h.mode().map_err(|e| bad(&name, &e))?;
        let existing = fs_err::symlink_metadata(&path).ok();
        if ty.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&path)?;
            }
            if !path.is_dir()
                || fs_err::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            {
                fs_err::create_dir(&path)?;
            }
            finish_meta(&path, &h, &mut entry, opts, false)?;
            dirs.push((path.clone(), mode, mtime(&h)));
            written.insert(path);
            continue;
        }
        if existing.is_some() {
            remove_any(&path)?;
        }
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = fs_err::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                stats.bytes += io::copy(&mut entry, &mut f)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
            }
            tar::EntryType::Symlink => {
                let t = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "symlink without a target"))?
                    .into_owned();
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &path)
                    .map_err(|e| at(&path, e))?;
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
                let tpath = resolve_dir(&root, tparents, false)?.join(OsStr::from_bytes(tbase));
                let tm = fs_err::symlink_metadata(&tpath)
                    .map_err(|_| bad(&name, "hard link target does not exist"))?;
                if tm.is_dir() {
                    return Err(bad(&name, "hard link to a directory"));
                }
                fs_err::hard_link(&tpath, &path)?;
                written.insert(path);
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match ty {
                    tar::EntryType::Char => (rustix::fs::FileType::CharacterDevice, devno(&h)),
                    tar::EntryType::Block => (rustix::fs::FileType::BlockDevice, devno(&h)),
                    _ => (rustix::fs::FileType::Fifo, 0),
                };
                let m = rustix::fs::Mode::from_bits_truncate(mode & 0o777);
                match rustix::fs::mknodat(rustix::fs::CWD, &path, ft, m, dev) {
                    Ok(()) => {}
                    Err(e)
                        if ft != rustix::fs::FileType::Fifo
                            && (e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS) =>
                    {
                        stats.skipped_devices += 1;
                        continue;
                    }
                    Err(e) => return Err(at(&path, e.into()).into()),
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => return Err(bad(&name, &format!("unsupported entry type {other:?}"))),
        }
        finish_meta(&path, &h, &mut entry, opts, ty == tar::EntryType::Symlink)?;
        written.insert(path);
    }
    // Directory modes and mtimes last, deepest first: filling a directory changes its mtime.
    for (path, mode, mt) in dirs.into_iter().rev() {
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(mt, 0))
            .map_err(|e| at(&path, e))?;
    }
    Ok(stats)
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

#[allow(clippy::needless_pass_by_value)]
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{e}: {}", path.display()))
}

/// Owner, xattrs, mode (after chown, which clears set-id bits) and mtime.
fn finish_meta<R: Read>(
    path: &Path,
    h: &tar::Header,
    entry: &mut tar::Entry<'_, R>,
    opts: &ApplyOptions,
    is_link: bool,
) -> Result<()> {
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))?;
    } else if opts.chown {
        let uid = u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0);
        let gid = u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0);
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))?;
    }
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Ok(key) = ext.key() {
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                    match rustix::fs::lsetxattr(
                        path,
                        attr,
                        ext.value_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    ) {
                        Ok(()) => {}
                        // Filesystems or users that cannot hold this namespace: skip.
                        Err(e)
                            if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::PERM => {}
                        Err(e) => return Err(at(path, e.into()).into()),
                    }
                }
            }
        }
    }
    let mt = filetime::FileTime::from_unix_time(mtime(h), 0);
    if is_link {
        filetime::set_symlink_file_times(path, mt, mt).map_err(|e| at(path, e))?;
    } else {
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        if !h.entry_type().is_dir() {
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            filetime::set_file_mtime(path, mt).map_err(|e| at(path, e))?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(p)?,
        Ok(_) => fs_err::remove_file(p)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(p, e).into()),
    }
    Ok(())
}

/// Resolves `comps` (a directory path) inside `root` the way a chroot would:
/// symlinks are followed with the root as `/`, `..` stops at the root. Missing
/// directories are created (mode 0755) when `create` is set.
pub fn resolve_dir(root: &Path, comps: &[Vec<u8>], create: bool) -> Result<PathBuf> {
    let mut stack: Vec<Vec<u8>> = Vec::new();
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
        let mut cur = root.to_path_buf();
        for s in &stack {
            cur.push(OsStr::from_bytes(s));
        }
        let next = cur.join(OsStr::from_bytes(&c));
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(Error::BadEntry {
                        path: next.display().to_string(),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                let t = fs_err::read_link(&next)?;
                let tb = t.as_os_str().as_bytes();
                if tb.starts_with(b"/") {
                    stack.clear();
                }
                for part in tb.split(|&b| b == b'/').rev() {
                    todo.push(part.to_vec());
                }
            }
            Ok(m) if m.is_dir() => stack.push(c),
            Ok(_) => {
                return Err(Error::BadEntry {
                    path: next.display().to_string(),
                    reason: "a parent path is not a directory".into(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs_err::create_dir(&next)?;
                stack.push(c);
            }
            Err(e) => return Err(at(&next, e).into()),
        }
    }
    let mut cur = root.to_path_buf();
    for s in &stack {
        cur.push(OsStr::from_bytes(s));
    }
    Ok(cur)
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
