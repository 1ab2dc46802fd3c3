//! The diff of a directory tree against its parent, written as a layer tar:
//! added and changed entries (with their parent directories), `.wh.NAME` for
//! removed ones, hard links between entries of the layer, in a sorted walk.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::tarwrite::{EntryKind, EntryMeta, TarWriter};

/// Options for [`write_diff`].
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Clamp mtimes to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<u64>,
}

/// Writes the layer that turns `lower` (None: empty) into `upper` to `out`; returns
/// the writer. Neither tree is modified.
pub fn write_diff<W: Write>(
    lower: Option<&Path>,
    upper: &Path,
    out: W,
    opts: &DiffOptions,
) -> Result<W> {
    let mut d = Differ {
        tar: TarWriter::new(out, opts.source_date_epoch),
        links: HashMap::new(),
        pending_parents: Vec::new(),
    };
    d.walk_dir(lower, upper, &[])?;
    Ok(d.tar.finish()?)
}

struct Differ<W: Write> {
    tar: TarWriter<W>,
    /// (dev, ino) of emitted regular files with several links → their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Ancestor directories not yet emitted (emitted before the first change inside).
    pending_parents: Vec<(Vec<u8>, PathBuf)>,
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs_err::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl<W: Write> Differ<W> {
    fn walk_dir(&mut self, lower: Option<&Path>, upper: &Path, rel: &[u8]) -> Result<()> {
        let up_names = sorted_children(upper)?;
        let low_names = match lower {
            Some(l) if fs_err::symlink_metadata(l).is_ok_and(|m| m.is_dir()) => sorted_children(l)?,
            _ => Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < up_names.len() || j < low_names.len() {
            let take_up = j >= low_names.len()
                || (i < up_names.len() && up_names[i].as_bytes() <= low_names[j].as_bytes());
            if take_up {
                let name = &up_names[i];
                if j < low_names.len() && low_names[j] == *name {
                    j += 1;
                }
                i += 1;
                let child_rel = join_rel(rel, name.as_bytes());
                let up_path = upper.join(name);
                let low_path = lower.map(|l| l.join(name));
                self.visit(low_path.as_deref(), &up_path, &child_rel)?;
            } else {
                let name = &low_names[j];
                j += 1;
                self.flush_parents()?;
                self.tar.append_whiteout(&join_rel(rel, name.as_bytes()))?;
            }
        }
        Ok(())
    }

    fn visit(&mut self, lower: Option<&Path>, upper: &Path, rel: &[u8]) -> Result<()> {
        let um = fs_err::symlink_metadata(upper)?;
        let lm = lower.and_then(|l| std::fs::symlink_metadata(l).ok());
        let ft = um.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let changed = match &lm {
            None => true,
            Some(lm) => differs(lower.expect("lower exists"), lm, upper, &um)?,
        };
        if ft.is_dir() {
            let lower_dir = match &lm {
                Some(m) if m.is_dir() => lower,
                _ => None,
            };
            if changed {
                self.flush_parents()?;
                self.emit(upper, &um, rel)?;
                self.walk_dir(lower_dir, upper, rel)?;
            } else {
                self.pending_parents
                    .push((rel.to_vec(), upper.to_path_buf()));
                self.walk_dir(lower_dir, upper, rel)?;
                self.pending_parents.pop();
            }
            return Ok(());
        }
        if changed {
            self.flush_parents()?;
            self.emit(upper, &um, rel)?;
        }
        Ok(())
    }

    fn flush_parents(&mut self) -> Result<()> {
        for (rel, path) in std::mem::take(&mut self.pending_parents) {
            let m = fs_err::symlink_metadata(&path)?;
            self.emit(&path, &m, &rel)?;
        }
        Ok(())
    }

    fn emit(&mut self, path: &Path, m: &std::fs::Metadata, rel: &[u8]) -> Result<()> {
        let ft = m.file_type();
        let mut meta = EntryMeta {
            path: rel.to_vec(),
            kind: EntryKind::File,
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            mtime: u64::try_from(m.mtime()).unwrap_or(0),
            size: 0,
            xattrs: read_xattrs(path)?,
        };
        if ft.is_dir() {
            meta.kind = EntryKind::Dir;
            self.tar.append(&meta, None)?;
        } else if ft.is_symlink() {
            let t = fs_err::read_link(path)?;
            meta.kind = EntryKind::Symlink(t.into_os_string().into_vec());
            self.tar.append(&meta, None)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key) {
                    meta.kind = EntryKind::Hardlink(first.clone());
                    self.tar.append(&meta, None)?;
                    return Ok(());
                }
                self.links.insert(key, rel.to_vec());
            }
            meta.size = m.len();
            let mut f = fs_err::File::open(path)?;
            self.tar.append(&meta, Some(&mut f))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let dev = m.rdev();
            let (ma, mi) = (rustix::fs::major(dev), rustix::fs::minor(dev));
            meta.kind = if ft.is_char_device() {
                EntryKind::Char(ma, mi)
            } else {
                EntryKind::Block(ma, mi)
            };
            self.tar.append(&meta, None)?;
        } else if ft.is_fifo() {
            meta.kind = EntryKind::Fifo;
            self.tar.append(&meta, None)?;
        }
        Ok(())
    }
}

/// Whether `upper` differs from `lower`: type, mode, owner, size, mtime, device,
/// link target, xattrs; regular files with equal metadata and whole-second mtimes
/// are compared by content (their mtimes may have been truncated by a copy).
fn differs(
    lower: &Path,
    lm: &std::fs::Metadata,
    upper: &Path,
    um: &std::fs::Metadata,
) -> Result<bool> {
    entry_differs(lower, lm, upper, um, read_xattrs)
}

/// Extended attributes: (name, value), sorted by name.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// [`differs`] with the xattrs that count read by `xattrs`.
pub(crate) fn entry_differs(
    lower: &Path,
    lm: &std::fs::Metadata,
    upper: &Path,
    um: &std::fs::Metadata,
    xattrs: fn(&Path) -> Result<Xattrs>,
) -> Result<bool> {
    let (lt, ut) = (lm.file_type(), um.file_type());
    if lt.is_dir() != ut.is_dir()
        || lt.is_file() != ut.is_file()
        || lt.is_symlink() != ut.is_symlink()
    {
        return Ok(true);
    }
    if lm.mode() != um.mode()
        || lm.uid() != um.uid()
        || lm.gid() != um.gid()
        || lm.rdev() != um.rdev()
    {
        return Ok(true);
    }
    if xattrs(lower)? != xattrs(upper)? {
        return Ok(true);
    }
    if ut.is_dir() {
        return Ok(lm.mtime() != um.mtime() || lm.mtime_nsec() != um.mtime_nsec());
    }
    if ut.is_symlink() {
        return Ok(fs_err::read_link(lower)? != fs_err::read_link(upper)?);
    }
    if lm.len() != um.len() || lm.mtime() != um.mtime() || lm.mtime_nsec() != um.mtime_nsec() {
        return Ok(true);
    }
    if ut.is_file() && um.mtime_nsec() == 0 {
        return Ok(!same_content(lower, upper)?);
    }
    Ok(false)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = fs_err::File::open(a)?;
    let mut fb = fs_err::File::open(b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs_err::File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The extended attributes of `path` (not following symlinks), sorted, without
/// `security.selinux` (a host label, not image content).
pub fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::PERM => {
            return Ok(Vec::new());
        }
        Err(e) if e == rustix::io::Errno::RANGE => {
            names = vec![0u8; 65536];
            rustix::fs::llistxattr(path, &mut names).map_err(|e| io_at(path, e.into()))?
        }
        Err(e) => return Err(io_at(path, e.into()).into()),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name == "security.selinux" {
            continue;
        }
        let mut val = vec![0u8; 65536];
        match rustix::fs::lgetxattr(path, name, &mut val) {
            Ok(len) => {
                val.truncate(len);
                out.push((name.to_owned(), val));
            }
            Err(e) if e == rustix::io::Errno::NODATA => {}
            Err(e) => return Err(io_at(path, e.into()).into()),
        }
    }
    out.sort();
    Ok(out)
}

/// The xattrs of `path` that are image content: [`read_xattrs`] without
/// overlayfs's own markers (`trusted.overlay.*`, `user.overlay.*`).
pub(crate) fn content_xattrs(path: &Path) -> Result<Xattrs> {
    Ok(read_xattrs(path)?
        .into_iter()
        .filter(|(k, _)| !(k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.")))
        .collect())
}

/// Sets extended attributes on `path` (not following symlinks).
pub fn write_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    for (k, v) in xattrs {
        rustix::fs::lsetxattr(path, k.as_str(), v, rustix::fs::XattrFlags::empty())
            .map_err(|e| io_at(path, e.into()))?;
    }
    Ok(())
}

#[allow(clippy::needless_pass_by_value)]
fn io_at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{e} (xattrs of {})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect()
    }

    #[test]
    fn diff_lists_additions_changes_and_whiteouts_in_sorted_order() {
        let t = tempfile::tempdir().unwrap();
        let (low, up) = (t.path().join("low"), t.path().join("up"));
        for d in [&low, &up] {
            fs_err::create_dir_all(d.join("etc/keep")).unwrap();
            fs_err::write(d.join("etc/keep/same"), "same").unwrap();
            filetime::set_file_mtime(
                d.join("etc/keep/same"),
                filetime::FileTime::from_unix_time(1000, 0),
            )
            .unwrap();
            filetime::set_file_mtime(
                d.join("etc/keep"),
                filetime::FileTime::from_unix_time(1000, 0),
            )
            .unwrap();
        }
        fs_err::write(low.join("etc/gone"), "x").unwrap();
        fs_err::create_dir_all(low.join("olddir/sub")).unwrap();
        fs_err::write(low.join("etc/changed"), "old").unwrap();
        fs_err::write(up.join("etc/changed"), "new!").unwrap();
        fs_err::write(up.join("etc/b"), "b").unwrap();
        fs_err::hard_link(up.join("etc/b"), up.join("etc/c")).unwrap();
        symlink("/etc/b", up.join("link")).unwrap();
        let out = write_diff(Some(&low), &up, Vec::new(), &DiffOptions::default()).unwrap();
        let names: Vec<_> = entries(&out)
            .into_iter()
            .map(|(p, t, l)| format!("{p} {t:?} {l}"))
            .collect();
        assert_eq!(
            names,
            vec![
                "etc/ Directory ",
                "etc/b Regular ",
                "etc/c Link etc/b",
                "etc/changed Regular ",
                "etc/.wh.gone Regular ",
                "link Symlink /etc/b",
                ".wh.olddir Regular ",
            ]
        );
        // Deterministic: the same trees give the same bytes.
        let again = write_diff(Some(&low), &up, Vec::new(), &DiffOptions::default()).unwrap();
        assert_eq!(out, again);
    }
}
