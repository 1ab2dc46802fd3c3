//! Path lookup in a stack of overlay layer directories without mounting them.
//!
//! `lookup(layers, path)` answers what overlayfs would show at `path` if `layers`
//! (top-most first, as in `lowerdir`) were mounted: it walks the path one
//! component at a time, keeping the layers whose directory contributes to the
//! current directory (down to the first opaque one, or the first layer where the
//! name is not a directory), treats a 0:0 character device as a whiteout, and
//! follows symlinks inside the stack's root (an absolute target or `..` never
//! leaves it), at most 40 of them as the kernel allows.
//!
//! Used where a step needs to know, cheaply and before anything is mounted,
//! whether a path exists in its parent chain and where a file made there would
//! land in the step's upper directory (its parents' symlinks resolved).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// The result of a lookup.
#[derive(Debug)]
pub struct Lookup {
    /// Where the path lives (or would be created), relative to the stack's
    /// root, with the symlinks of its parents resolved.
    pub rel: PathBuf,
    /// The entry's metadata (from the layer that shows it), `None` when the
    /// path does not exist in the merged view.
    pub meta: Option<std::fs::Metadata>,
}

pub(crate) fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(crate) fn is_opaque(p: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let mut buf = [0u8; 4];
            matches!(rustix::fs::lgetxattr(p, *name, &mut buf), Ok(1) if buf[0] == b'y')
        })
}

pub(crate) fn lstat(p: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::errno::Errno::ENOTDIR as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The layers (indexes into `layers`) whose directory at `rel` makes up the
/// merged directory there; `rel` must be a resolved directory path.
fn dir_layers(layers: &[PathBuf], rel: &Path) -> io::Result<Vec<usize>> {
    let mut cur: Vec<usize> = (0..layers.len()).collect();
    let mut path = PathBuf::new();
    for c in rel.components() {
        path.push(c);
        cur = next_dir_layers(layers, &cur, &path)?;
    }
    Ok(cur)
}

/// From the layers of a directory, those whose `path` is a directory of the
/// merged view: the top-most that has the name (a directory), then lower ones
/// while they have a directory there and the one above is not opaque.
pub(crate) fn next_dir_layers(
    layers: &[PathBuf],
    parent: &[usize],
    path: &Path,
) -> io::Result<Vec<usize>> {
    let mut out = Vec::new();
    for &i in parent {
        let p = layers[i].join(path);
        match lstat(&p)? {
            None => {}
            Some(m) if m.is_dir() => {
                out.push(i);
                if is_opaque(&p) {
                    break;
                }
            }
            Some(_) => break,
        }
    }
    Ok(out)
}

/// Looks `path` up in the merged view of `layers` (top-most first).
pub fn lookup(layers: &[PathBuf], path: &Path) -> io::Result<Lookup> {
    let mut queue: VecDeque<OsString> = components(path);
    let mut rel = PathBuf::new();
    let mut cur: Vec<usize> = (0..layers.len()).collect();
    let mut hops = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            rel.pop();
            cur = dir_layers(layers, &rel)?;
            continue;
        }
        let candidate = rel.join(&name);
        let mut shown = None;
        for &i in &cur {
            if let Some(m) = lstat(&layers[i].join(&candidate))? {
                shown = (!is_whiteout(&m)).then_some((i, m));
                break;
            }
        }
        let last = queue.is_empty();
        match shown {
            Some((i, ref m)) if m.file_type().is_symlink() && !last => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "{}: too many levels of symbolic links",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(layers[i].join(&candidate))?;
                let mut front = components(&target);
                if target.is_absolute() {
                    rel = PathBuf::new();
                    cur = (0..layers.len()).collect();
                }
                front.extend(queue.drain(..));
                queue = front;
                continue;
            }
            Some((_, ref m)) if !m.is_dir() && !last => {
                // A file where a directory is needed: nothing below it exists.
                shown = None;
            }
            _ => {}
        }
        let Some((_, m)) = shown else {
            // Absent: the rest of the path is where it would be created.
            rel = candidate;
            for rest in queue.drain(..) {
                if rest == ".." {
                    rel.pop();
                } else {
                    rel.push(rest);
                }
            }
            return Ok(Lookup { rel, meta: None });
        };
        if last {
            return Ok(Lookup {
                rel: candidate,
                meta: Some(m),
            });
        }
        cur = next_dir_layers(layers, &cur, &candidate)?;
        rel = candidate;
    }
    // The root itself.
    let meta = layers
        .iter()
        .find_map(|l| std::fs::symlink_metadata(l.join(&rel)).ok());
    Ok(Lookup { rel, meta })
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layers(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let v = (0..n)
            .map(|i| {
                let p = t.path().join(format!("l{i}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        (t, v)
    }

    #[test]
    fn a_file_in_a_lower_layer_exists() {
        let (_t, l) = layers(2);
        std::fs::create_dir(l[1].join("etc")).unwrap();
        std::fs::write(l[1].join("etc/hosts"), "x").unwrap();
        let r = lookup(&l, Path::new("/etc/hosts")).unwrap();
        assert_eq!(r.rel, Path::new("etc/hosts"));
        assert!(r.meta.unwrap().is_file());
        assert!(
            lookup(&l, Path::new("/etc/resolv.conf"))
                .unwrap()
                .meta
                .is_none()
        );
    }

    #[test]
    fn a_whiteout_hides_what_is_below() {
        let (_t, l) = layers(2);
        std::fs::create_dir(l[1].join("etc")).unwrap();
        std::fs::write(l[1].join("etc/hosts"), "x").unwrap();
        std::fs::create_dir(l[0].join("etc")).unwrap();
        nix::sys::stat::mknod(
            &l[0].join("etc/hosts"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        assert!(lookup(&l, Path::new("/etc/hosts")).unwrap().meta.is_none());
    }

    #[test]
    fn an_opaque_directory_hides_the_layers_below_it() {
        if !nix::unistd::geteuid().is_root() {
            return; // trusted.* xattrs need root; the other tests cover the walk
        }
        let (_t, l) = layers(2);
        std::fs::create_dir(l[1].join("etc")).unwrap();
        std::fs::write(l[1].join("etc/hosts"), "x").unwrap();
        std::fs::create_dir(l[0].join("etc")).unwrap();
        rustix::fs::setxattr(
            l[0].join("etc"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert!(lookup(&l, Path::new("/etc/hosts")).unwrap().meta.is_none());
    }

    #[test]
    fn a_symlinked_parent_is_resolved_inside_the_stack() {
        let (_t, l) = layers(2);
        std::fs::create_dir_all(l[1].join("private/etc")).unwrap();
        symlink("/private/etc", l[0].join("etc")).unwrap();
        let r = lookup(&l, Path::new("/etc/hosts")).unwrap();
        assert_eq!(r.rel, Path::new("private/etc/hosts"));
        assert!(r.meta.is_none());
        // An escaping relative link stays at the root.
        symlink("../../../..", l[0].join("up")).unwrap();
        let r = lookup(&l, Path::new("/up/etc/x")).unwrap();
        assert_eq!(r.rel, Path::new("private/etc/x"));
    }

    #[test]
    fn the_last_component_is_not_followed() {
        let (_t, l) = layers(1);
        symlink("/nowhere", l[0].join("link")).unwrap();
        let r = lookup(&l, Path::new("/link")).unwrap();
        assert_eq!(r.rel, Path::new("link"));
        assert!(r.meta.unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let (_t, l) = layers(1);
        symlink("/b", l[0].join("a")).unwrap();
        symlink("/a", l[0].join("b")).unwrap();
        assert!(lookup(&l, Path::new("/a/x")).is_err());
    }
}
