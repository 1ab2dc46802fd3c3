//! The copying snapshotter's diff: what a step changed in a full copy of its
//! parent's filesystem, written into the step's upper directory as overlayfs
//! would have left it there. Used where overlayfs cannot be mounted (see
//! [`crate::snapshots::Backend`]); the rest of the store (layers, lookups,
//! squash) then reads the upper directory exactly as after an overlay step.
//!
//! [`capture`] walks `tree` (the copy the step ran in) beside the merged view
//! of `lowers` (the parent chain's upper directories, top-most first: whiteouts
//! hide what is below, an opaque directory or a non-directory stops the
//! merging, as in [`crate::lookup`]):
//! - an entry absent from the merged view, or that differs from it (type,
//!   mode, owner, size, mtime, device, link target, xattrs other than
//!   overlayfs's own; regular files with equal metadata and whole-second
//!   mtimes by content, see `diff::differs`) is moved into `upper` (a rename:
//!   the tree is thrown away afterwards), a new directory with all it holds;
//! - a directory of both whose own metadata differs is made in `upper` even
//!   when nothing inside changed (as overlayfs copies it up to change it);
//! - the parents of what lands in `upper` are made there with the tree's
//!   owner, mode, xattrs and mtime, as overlayfs copies parents up;
//! - a name the merged view shows and the tree does not gets a whiteout (a
//!   0/0 character device).
//!
//! A directory made where the merged view had another type, or where a
//! lower layer's whiteout hid a name, or removed and made again (its birth
//! time is after the copy), is moved up whole and marked opaque, as
//! overlayfs marks it. A file with several names (every file of the copy
//! has one, see `overlay::copy_lower_stack_unlinked`: the step linked it) is
//! moved up under each, so they stay hard links in `upper`, as overlayfs
//! copies a linked file up. What differs from an overlay step: on a file
//! system without birth times a directory removed and made again is recorded
//! as whiteouts of what it held. The files the merged views show are the same
//! either way.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};

use crate::diff::{Xattrs, content_xattrs};
use crate::error::Result;
use crate::lookup::{is_whiteout, lstat};

/// Writes into `upper` (an empty directory on the file system of `tree`) the
/// changes that turn the merged view of `lowers` into `tree`. `tree` is
/// consumed: changed entries are moved out of it; remove it afterwards.
///
/// `made_after`: when the copy was complete. A directory of both whose birth
/// time is later was removed and made again by the step: it is moved up
/// whole and marked opaque, as overlayfs leaves it (where the file system
/// keeps no birth time, what it held below is whited out instead).
pub fn capture(
    lowers: &[PathBuf],
    tree: &Path,
    upper: &Path,
    made_after: Option<std::time::SystemTime>,
) -> Result<()> {
    let root_layers: Vec<usize> = (0..lowers.len()).collect();
    let mut c = Capture {
        lowers,
        upper,
        made: Vec::new(),
        made_after,
    };
    c.walk(tree, Path::new(""), &root_layers)?;
    Ok(())
}

struct Capture<'a> {
    lowers: &'a [PathBuf],
    upper: &'a Path,
    /// Directories made in `upper` (relative), with the tree's metadata to
    /// give them once their contents are in place.
    made: Vec<(PathBuf, std::fs::Metadata, Xattrs)>,
    made_after: Option<std::time::SystemTime>,
}

/// What the merged view shows under one directory: name → (layer index,
/// metadata) of the top-most layer that has it (whiteouts left out).
type Merged = BTreeMap<OsString, (usize, std::fs::Metadata)>;

impl Capture<'_> {
    /// The merged listing of directory `rel`, made of `layers` (those whose
    /// directory there contributes, top-most first).
    fn merged(&self, rel: &Path, layers: &[usize]) -> Result<(Merged, HashSet<OsString>)> {
        let mut out = Merged::new();
        let mut hidden = HashSet::new();
        for &i in layers {
            let dir = self.lowers[i].join(rel);
            for entry in fs_err::read_dir(&dir)? {
                let name = entry?.file_name();
                if out.contains_key(&name) || hidden.contains(&name) {
                    continue;
                }
                let m = fs_err::symlink_metadata(dir.join(&name))?;
                if is_whiteout(&m) {
                    hidden.insert(name);
                } else {
                    out.insert(name, (i, m));
                }
            }
        }
        Ok((out, hidden))
    }

    fn walk(&mut self, tree: &Path, rel: &Path, layers: &[usize]) -> Result<()> {
        let (mut below, hidden) = self.merged(rel, layers)?;
        let mut names: Vec<OsString> = fs_err::read_dir(tree.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = rel.join(&name);
            let path = tree.join(&child);
            let m = fs_err::symlink_metadata(&path)?;
            if m.file_type().is_socket() {
                below.remove(&name);
                continue;
            }
            let Some((layer, lm)) = below.remove(&name) else {
                self.move_up(tree, &child)?;
                if m.is_dir() && hidden.contains(&name) {
                    self.opaque(&child)?;
                }
                continue;
            };
            let lower_path = self.lowers[layer].join(&child);
            let remade = self
                .made_after
                .is_some_and(|t| m.created().is_ok_and(|b| b > t));
            if m.is_dir() && lm.is_dir() && remade {
                self.move_up(tree, &child)?;
                self.opaque(&child)?;
            } else if m.is_dir() && lm.is_dir() {
                if crate::diff::entry_differs(&lower_path, &lm, &path, &m, content_xattrs)? {
                    self.make_dir(tree, &child)?;
                }
                let sub = crate::lookup::next_dir_layers(self.lowers, layers, &child)?;
                self.walk(tree, &child, &sub)?;
                self.finish_dir(&child)?;
            } else if (m.is_file() && m.nlink() > 1)
                || crate::diff::entry_differs(&lower_path, &lm, &path, &m, content_xattrs)?
            {
                // Every file of the copy has one name (`copy_lower_stack_unlinked`):
                // one with more was linked by the step, which overlayfs copies up.
                self.move_up(tree, &child)?;
                if m.is_dir() {
                    self.opaque(&child)?;
                }
            }
        }
        // What the merged view has and the tree does not: removed.
        for name in below.into_keys() {
            let child = rel.join(&name);
            self.parents(tree, &child)?;
            let dst = self.upper.join(&child);
            nix::sys::stat::mknod(&dst, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| {
                let why = if crate::overlay::in_user_namespace() {
                    "a user namespace may make them from Linux 5.8"
                } else {
                    "the file system of the state root cannot hold them: put it on a local \
                     file system such as ext4, xfs or btrfs (a volume, in a container)"
                };
                io::Error::other(format!(
                    "make the overlay whiteout {}: {e} ({why})",
                    dst.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Marks the directory `rel` moved into `upper` opaque, as overlayfs
    /// marks one made where a name was removed (a whiteout, or another
    /// type, below it): the layers then match an overlay step's.
    fn opaque(&self, rel: &Path) -> Result<()> {
        let p = self.upper.join(rel);
        rustix::fs::lsetxattr(
            &p,
            crate::overlay::opaque_xattr(),
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| io::Error::other(format!("mark {} opaque: {e}", p.display())))?;
        Ok(())
    }

    /// Makes the parents of `rel` in `upper` (with the tree's metadata, set
    /// when each is finished).
    fn parents(&mut self, tree: &Path, rel: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut p = rel.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if lstat(&self.upper.join(d))?.is_some() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            self.make_dir(tree, &d)?;
        }
        Ok(())
    }

    /// Makes directory `rel` in `upper` (parents first) unless it is there.
    fn make_dir(&mut self, tree: &Path, rel: &Path) -> Result<()> {
        if lstat(&self.upper.join(rel))?.is_some() {
            return Ok(());
        }
        self.parents(tree, rel)?;
        let src = tree.join(rel);
        let m = fs_err::symlink_metadata(&src)?;
        let x = content_xattrs(&src)?;
        fs_err::create_dir(self.upper.join(rel))?;
        self.made.push((rel.to_path_buf(), m, x));
        Ok(())
    }

    /// Gives directory `rel`, if this capture made it, the tree's metadata
    /// (now that what it holds is in place, so its mtime stays).
    fn finish_dir(&mut self, rel: &Path) -> Result<()> {
        while let Some(pos) = self.made.iter().rposition(|(p, _, _)| p.starts_with(rel)) {
            let (p, m, x) = self.made.remove(pos);
            crate::overlay::set_meta(&self.upper.join(&p), &m, &x)?;
        }
        Ok(())
    }

    /// Moves `rel` (new or changed, a directory with all it holds) from the
    /// tree into `upper`, replacing nothing (the upper dir holds no entry
    /// at a path the walk visits once).
    fn move_up(&mut self, tree: &Path, rel: &Path) -> Result<()> {
        self.parents(tree, rel)?;
        fs_err::rename(tree.join(rel), self.upper.join(rel))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn need_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "cannot run: whiteouts and owners need root"
        );
    }

    /// Every entry under `dir` (sorted): path, type, mode, owner, mtime,
    /// content or link target, content xattrs.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
                let name = e.unwrap().file_name();
                let r = rel.join(&name);
                let p = dir.join(&r);
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    stack.push(r.clone());
                    format!("dir mtime={}.{}", m.mtime(), m.mtime_nsec())
                } else if m.file_type().is_symlink() {
                    format!("link {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_file() {
                    format!(
                        "file {:?} mtime={}.{}",
                        std::fs::read(&p).unwrap(),
                        m.mtime(),
                        m.mtime_nsec()
                    )
                } else {
                    format!("other rdev={}", m.rdev())
                };
                out.push(format!(
                    "{} {what} mode={:o} {}:{} {:?}",
                    r.display(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    content_xattrs(&p).unwrap()
                ));
            }
        }
        out.sort();
        out
    }

    fn whiteout(p: &Path) {
        nix::sys::stat::mknod(p, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    }

    /// Two layers: `l2` (bottom) and `l1` (top, with a whiteout and an
    /// opaque directory), as the store keeps them.
    fn layers(d: &Path) -> Vec<PathBuf> {
        let (l1, l2) = (d.join("l1"), d.join("l2"));
        for p in [
            l2.join("etc"),
            l2.join("gone-dir/sub"),
            l2.join("opq"),
            l2.join("keep"),
            l1.join("etc"),
            l1.join("opq"),
        ] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(l2.join("etc/passwd"), "root\n").unwrap();
        std::fs::write(l2.join("etc/old"), "old").unwrap();
        std::fs::write(l2.join("etc/hidden"), "h").unwrap();
        std::fs::write(l2.join("gone-dir/sub/f"), "f").unwrap();
        std::fs::write(l2.join("opq/below"), "b").unwrap();
        std::fs::write(l2.join("keep/k"), "k").unwrap();
        std::fs::write(l2.join("was-file"), "w").unwrap();
        std::fs::write(l1.join("etc/new-in-l1"), "n").unwrap();
        whiteout(&l1.join("etc/hidden"));
        rustix::fs::lsetxattr(
            l1.join("opq"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::write(l1.join("opq/above"), "a").unwrap();
        vec![l1, l2]
    }

    #[test]
    fn an_unchanged_copy_leaves_the_upper_dir_empty() {
        need_root();
        let d = tempfile::tempdir().unwrap();
        let lowers = layers(d.path());
        let tree = d.path().join("tree");
        crate::overlay::copy_lower_stack(&lowers, &tree).unwrap();
        // The copy is the merged view: the whiteout and the opaque dir applied.
        assert!(!tree.join("etc/hidden").exists());
        assert!(!tree.join("opq/below").exists());
        assert!(tree.join("opq/above").exists());
        let upper = d.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        capture(&lowers, &tree, &upper, None).unwrap();
        assert_eq!(listing(&upper), Vec::<String>::new());
    }

    #[test]
    fn changes_land_in_upper_as_overlayfs_would_leave_them() {
        need_root();
        let d = tempfile::tempdir().unwrap();
        let lowers = layers(d.path());
        let tree = d.path().join("tree");
        crate::overlay::copy_lower_stack(&lowers, &tree).unwrap();
        let t = |p: &str| tree.join(p);
        std::fs::write(t("etc/passwd"), "root\nuser\n").unwrap(); // changed
        std::fs::remove_file(t("etc/old")).unwrap(); // removed
        std::fs::remove_dir_all(t("gone-dir")).unwrap(); // removed dir
        std::fs::create_dir_all(t("new/deep")).unwrap(); // new dir
        std::fs::write(t("new/deep/x"), "x").unwrap();
        std::fs::write(t("new/a"), "a").unwrap();
        std::fs::hard_link(t("new/a"), t("new/b")).unwrap();
        std::fs::set_permissions(t("keep"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_file(t("was-file")).unwrap(); // file → dir
        std::fs::create_dir(t("was-file")).unwrap();
        nix::unistd::chown(&t("etc/new-in-l1"), Some(1000.into()), Some(1000.into())).unwrap();
        rustix::fs::lsetxattr(
            t("opq/above"),
            "user.note",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let want = listing(&tree);
        let upper = d.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        capture(&lowers, &tree, &upper, None).unwrap();

        // Mounted on its parents, the upper dir shows exactly the tree.
        let mut stack = vec![upper.clone()];
        stack.extend(lowers.iter().cloned());
        let merged = d.path().join("merged");
        crate::overlay::copy_lower_stack(&stack, &merged).unwrap();
        assert_eq!(listing(&merged), want);

        // And holds only what changed: the unchanged `keep/k`, `etc/new-in-l1`'s
        // content and `opq/above`'s siblings stay below.
        let has = |p: &str| std::fs::symlink_metadata(upper.join(p)).ok();
        assert!(has("keep").is_some_and(|m| m.mode() & 0o777 == 0o700));
        assert!(has("keep/k").is_none());
        let wh = |p: &str| has(p).is_some_and(|m| is_whiteout(&m));
        assert!(wh("etc/old") && wh("gone-dir"), "{:?}", listing(&upper));
        assert!(has("gone-dir/sub").is_none());
        assert!(has("etc/passwd").is_some() && has("etc/new-in-l1").is_some());
        assert!(has("new/deep/x").is_some() && has("was-file").is_some_and(|m| m.is_dir()));
        assert_eq!(
            has("new/a").unwrap().ino(),
            has("new/b").unwrap().ino(),
            "a hard link stays one"
        );
        // `etc` was copied up with the tree's metadata (its mtime changed
        // by the removal; it is the tree's, not the time of the capture).
        let tree_etc = want.iter().find(|l| l.starts_with("etc dir")).unwrap();
        let up_etc = listing(&upper)
            .into_iter()
            .find(|l| l.starts_with("etc dir"))
            .unwrap();
        assert_eq!(&up_etc, tree_etc);
        // The copy's unchanged files were left in it.
        assert!(tree.join("keep/k").exists() && !tree.join("etc/passwd").exists());
    }
}
