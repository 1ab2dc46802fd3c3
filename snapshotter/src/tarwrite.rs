//! Deterministic tar entries: numeric owners and empty user/group names, no atime or
//! ctime, mtimes clamped to an optional `SOURCE_DATE_EPOCH`, USTAR names when they
//! fit and PAX records (`path`, `linkpath`, `SCHILY.xattr.*`) when they do not.

use std::io::{self, Read, Write};

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same archive (its path, no leading `/`).
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// The metadata of one entry; `path` is relative (no leading `/`), `/`-separated.
#[derive(Clone, Debug)]
pub struct EntryMeta {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Writes entries to a tar stream deterministically.
pub struct TarWriter<W: Write> {
    out: W,
    epoch: Option<u64>,
    content: u64,
    /// Files' data passes through here: reads of up to [`COPY_BUF`] bytes
    /// (`io::copy`'s 8 KiB made a syscall per 8 KiB of a layer).
    buf: Vec<u8>,
}

/// The largest read of a file's data.
const COPY_BUF: usize = 256 * 1024;

impl<W: Write> TarWriter<W> {
    /// `epoch`: clamp every mtime to at most this (`SOURCE_DATE_EPOCH`).
    pub fn new(out: W, epoch: Option<u64>) -> Self {
        Self {
            out,
            epoch,
            content: 0,
            buf: Vec::new(),
        }
    }

    /// The layer's content size so far, as docker's graph drivers measure it:
    /// regular files' sizes plus symlink target lengths.
    pub fn content_size(&self) -> u64 {
        self.content
    }

    /// Copies at most `size` bytes of `data` into the stream; returns how
    /// many there were.
    fn copy_data(&mut self, data: &mut dyn Read, size: u64) -> io::Result<u64> {
        let want = usize::try_from(size).unwrap_or(usize::MAX).min(COPY_BUF);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let mut copied = 0u64;
        while copied < size {
            let room = usize::try_from(size - copied)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            match data.read(&mut self.buf[..room]) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.write_all(&self.buf[..n])?;
                    copied += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(copied)
    }

    /// Appends one entry; `data` must yield exactly `meta.size` bytes for files.
    pub fn append(&mut self, meta: &EntryMeta, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut name = meta.path.clone();
        if meta.kind == EntryKind::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let mut header = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if !set_ustar_name(&mut header, &name) {
            pax.push(("path".into(), name.clone()));
            let ustar = header.as_ustar_mut().expect("ustar header");
            let n = name.len().min(99);
            ustar.name[..n].copy_from_slice(&name[..n]);
        }
        let (ty, size) = match &meta.kind {
            EntryKind::Dir => (tar::EntryType::Directory, 0),
            EntryKind::File => (tar::EntryType::Regular, meta.size),
            EntryKind::Symlink(t) | EntryKind::Hardlink(t) => {
                let ty = if matches!(meta.kind, EntryKind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let ustar = header.as_ustar_mut().expect("ustar header");
                if t.len() <= 100 {
                    ustar.linkname[..t.len()].copy_from_slice(t);
                } else {
                    pax.push(("linkpath".into(), t.clone()));
                    ustar.linkname[..99].copy_from_slice(&t[..99]);
                }
                (ty, 0)
            }
            EntryKind::Char(..) => (tar::EntryType::Char, 0),
            EntryKind::Block(..) => (tar::EntryType::Block, 0),
            EntryKind::Fifo => (tar::EntryType::Fifo, 0),
        };
        header.set_entry_type(ty);
        header.set_size(size);
        self.content += match &meta.kind {
            EntryKind::File => size,
            EntryKind::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        header.set_mode(meta.mode & 0o7777);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        let mtime = match self.epoch {
            Some(e) => meta.mtime.min(e),
            None => meta.mtime,
        };
        header.set_mtime(mtime);
        if let EntryKind::Char(ma, mi) | EntryKind::Block(ma, mi) = meta.kind {
            header.set_device_major(ma)?;
            header.set_device_minor(mi)?;
        } else {
            header.set_device_major(0)?;
            header.set_device_minor(0)?;
        }
        let mut xattrs = meta.xattrs.clone();
        xattrs.sort();
        for (k, v) in xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v));
        }
        if !pax.is_empty() {
            self.write_pax(&pax)?;
        }
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("file entry without data"))?;
            let copied = self.copy_data(data, size)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} changed size while being archived",
                        String::from_utf8_lossy(&meta.path)
                    ),
                ));
            }
            pad(&mut self.out, size)?;
        }
        Ok(())
    }

    fn write_pax(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            // "LEN KEY=VALUE\n" where LEN counts itself.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest > len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut().expect("ustar").name[..13].copy_from_slice(b"PaxHeaders.0/");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(&body)?;
        pad(&mut self.out, body.len() as u64)
    }

    /// Appends a `.wh.NAME` whiteout for `path` (relative, no trailing `/`).
    pub fn append_whiteout(&mut self, path: &[u8]) -> io::Result<()> {
        let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let mut p = dir.to_vec();
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(base);
        self.append(&whiteout_meta(p), None)
    }

    /// Appends `DIR/.wh..wh..opq` (an opaque directory marker); `dir` empty for the root.
    pub fn append_opaque(&mut self, dir: &[u8]) -> io::Result<()> {
        let mut p = dir.to_vec();
        if !p.is_empty() && !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        self.append(&whiteout_meta(p), None)
    }

    /// Writes the two zero blocks that end an archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn whiteout_meta(path: Vec<u8>) -> EntryMeta {
    EntryMeta {
        path,
        kind: EntryKind::File,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        xattrs: Vec::new(),
    }
}

fn pad<W: Write>(out: &mut W, size: u64) -> io::Result<()> {
    let rem = usize::try_from(size % 512).unwrap_or(0);
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

/// Puts `name` into the USTAR name (and prefix) fields; false when it does not fit.
fn set_ustar_name(header: &mut tar::Header, name: &[u8]) -> bool {
    let ustar = header.as_ustar_mut().expect("ustar header");
    if name.len() <= 100 {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    if name.len() > 256 {
        return false;
    }
    // Split at a '/' so that prefix <= 155 and name <= 100 (the name part must not be empty).
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    for i in (0..trimmed.len()).rev() {
        if trimmed[i] == b'/' {
            let (pre, rest) = (&name[..i], &name[i + 1..]);
            if pre.len() <= 155 && rest.len() <= 100 && !rest.is_empty() {
                ustar.prefix[..pre.len()].copy_from_slice(pre);
                ustar.name[..rest.len()].copy_from_slice(rest);
                return true;
            }
            if rest.len() > 100 {
                break;
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::many_single_char_names)]
mod tests {
    use super::*;

    fn meta(path: &str, kind: EntryKind, size: u64) -> EntryMeta {
        EntryMeta {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 2_000_000_000,
            size,
            xattrs: vec![],
        }
    }

    #[test]
    fn long_names_links_and_xattrs_read_back_through_the_tar_crate() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut w = TarWriter::new(Vec::new(), Some(1_600_000_000));
        let mut m = meta(&long, EntryKind::File, 5);
        m.xattrs.push(("user.k".into(), b"v\0x".to_vec()));
        w.append(&m, Some(&mut &b"hello"[..])).unwrap();
        w.append(&meta("dir", EntryKind::Dir, 0), None).unwrap();
        w.append(
            &meta("l", EntryKind::Symlink("x".repeat(130).into_bytes()), 0),
            None,
        )
        .unwrap();
        w.append_whiteout(b"dir/gone").unwrap();
        w.append_opaque(b"dir").unwrap();
        let out = w.finish().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let mtime = e.header().mtime().unwrap();
            assert!(mtime <= 1_600_000_000);
            assert_eq!(e.header().username_bytes(), Some(&b""[..]));
            if path == long {
                let x: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|r| r.unwrap().key().unwrap().to_owned())
                    .collect();
                assert!(x.contains(&"SCHILY.xattr.user.k".to_owned()));
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "hello");
            }
            if path == "l" {
                assert_eq!(e.link_name_bytes().unwrap().len(), 130);
            }
            seen.push(path);
        }
        assert_eq!(
            seen,
            vec![
                long.clone(),
                "dir/".into(),
                "l".into(),
                "dir/.wh.gone".into(),
                "dir/.wh..wh..opq".into()
            ]
        );
    }
}
