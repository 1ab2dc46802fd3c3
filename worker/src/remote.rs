//! Remote build contexts (`rbuild build URL`), as `BuildKit`'s dockerui
//! `DetectGitContext` / `DetectHTTPContext`: a git repository at a ref
//! ([`fetch_git`]), or a URL whose content is a tar archive (plain, gzip,
//! bzip2, xz or zstd: the context) or a text file (the Dockerfile, with an
//! empty context) ([`fetch_url`]).
//!
//! A downloaded archive is hostile until proven otherwise: the download and
//! its unpacked size are limited, entries are counted, device nodes and FIFOs
//! are left out (never created), and what remains is applied with the
//! snapshotter's layer applier, which never writes outside the directory
//! whatever names and links the archive holds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rbuild_solver::ExecError;

use crate::state::err;

/// At most this many entries in a context archive.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// A git context in the store of checkouts.
#[derive(Debug, Clone)]
pub struct GitContext {
    /// The checkout (a snapshot's directory, held by this process's lease:
    /// read it, never write it).
    pub dir: PathBuf,
    /// The commit checked out.
    pub commit: String,
    /// `false` when a stored checkout of the commit was reused.
    pub fetched: bool,
}

/// A git context: resolves `reference` of `remote` with `git ls-remote`
/// (every time: a branch moves), checks the commit against `checksum` (a hex
/// prefix), then takes the checkout of that commit (or `subdir` of it; `.git`
/// only with `keep_git_dir`; with its submodules when `submodules`) from the
/// store of checkouts, fetching it when the store has none
/// ([`crate::gitstore`]).
pub fn fetch_git(
    state_root: &Path,
    remote: &str,
    reference: &str,
    subdir: &str,
    keep_git_dir: bool,
    submodules: bool,
    checksum: Option<&str>,
) -> Result<GitContext, ExecError> {
    let resolved = crate::git::resolve(remote, reference)?;
    let key_commit = resolved.key_commit(keep_git_dir).to_owned();
    let commit = resolved.tag_commit.unwrap_or(resolved.object);
    if let Some(c) = checksum {
        if !commit.starts_with(&c.to_ascii_lowercase()) {
            return Err(ExecError::msg(format!(
                "{}: expected checksum to match {c}, got {commit}",
                crate::git::redact(remote)
            )));
        }
    }
    let snapshots = rbuild_snapshotter::snapshots::SnapshotStore::open(state_root).map_err(err)?;
    let stored = crate::gitstore::checkout(
        &snapshots,
        state_root,
        &crate::git::Checkout {
            remote,
            reference,
            commit: &key_commit,
            subdir,
            keep_git_dir,
            submodules,
        },
        || {},
    )?;
    Ok(GitContext {
        dir: snapshots.upper(&stored.snapshot),
        commit,
        fetched: stored.fetched,
    })
}

/// What a URL context turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlContext {
    /// A tar archive, unpacked into the destination; the number of device
    /// nodes and FIFOs left out.
    Archive { skipped_special: u64 },
    /// A text file: the Dockerfile (the context stays empty).
    Dockerfile(String),
}

fn too_big(url: &str, what: &str, max: u64) -> ExecError {
    ExecError::msg(format!(
        "{url}: the context {what} is larger than the limit of {max} bytes (RBUILD_CONTEXT_MAX_SIZE)"
    ))
}

/// Downloads `url` (at most `max_size` bytes) into `scratch`, then unpacks
/// it into `dest` (at most `max_size` bytes and [`MAX_ENTRIES`] entries
/// unpacked) when it is a tar archive, or returns it as the Dockerfile.
pub fn fetch_url(
    url: &str,
    dest: &Path,
    scratch: &Path,
    max_size: u64,
) -> Result<UrlContext, ExecError> {
    let resp = crate::ops::source::http::get(url)?;
    if resp.length.is_some_and(|l| l > max_size) {
        return Err(too_big(url, "download", max_size));
    }
    let file = scratch.join("context");
    let mut body = resp.body;
    let mut out = fs_err::File::create(&file).map_err(err)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| crate::error::context(url.to_string(), e))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > max_size {
            return Err(too_big(url, "download", max_size));
        }
        out.write_all(&buf[..n]).map_err(err)?;
    }
    if resp.length.is_some_and(|l| l != done) {
        return Err(ExecError::msg(format!("{url}: connection closed early")));
    }
    out.flush().map_err(err)?;
    drop(out);
    let compressed = {
        let mut magic = [0u8; 6];
        let mut f = fs_err::File::open(&file).map_err(err)?;
        let n = f.read(&mut magic).map_err(err)?;
        rbuild_snapshotter::compress::Format::detect(&magic[..n])
            != rbuild_snapshotter::compress::Format::Plain
    };
    if !crate::ops::file::is_archive(&file) {
        if compressed {
            return Err(ExecError::msg(format!(
                "{url}: compressed, but not a tar archive"
            )));
        }
        let text = fs_err::read(&file).map_err(err)?;
        let text = String::from_utf8(text).map_err(|_| {
            ExecError::msg(format!(
                "{url}: neither a tar archive nor a Dockerfile in UTF-8"
            ))
        })?;
        return Ok(UrlContext::Dockerfile(text));
    }
    // Filter into a plain tar of regular files, directories and links
    // (counted and limited), then apply that.
    let filtered = scratch.join("filtered.tar");
    let skipped_special = filter_archive(url, &file, &filtered, max_size)?;
    fs_err::remove_file(&file).map_err(err)?;
    let f = fs_err::File::open(&filtered).map_err(err)?;
    let opts = rbuild_snapshotter::ApplyOptions {
        chown: false,
        owner: None,
    };
    rbuild_snapshotter::apply_layer(dest, std::io::BufReader::new(f), &opts)
        .map_err(|e| crate::error::context(format!("{url}: unpacking the context"), e))?;
    Ok(UrlContext::Archive { skipped_special })
}

/// Copies the entries of the (compressed) archive `src` that may be written
/// into a context to the plain tar `dst`; returns how many device nodes and
/// FIFOs were left out.
fn filter_archive(url: &str, src: &Path, dst: &Path, max_size: u64) -> Result<u64, ExecError> {
    use tar::EntryType as T;
    let bad = |e: std::io::Error| crate::error::context(format!("{url}: reading the archive"), e);
    let dec =
        rbuild_snapshotter::Decoder::new(fs_err::File::open(src).map_err(err)?.into_parts().0)
            .map_err(bad)?;
    let mut ar = tar::Archive::new(dec);
    let out = std::io::BufWriter::new(fs_err::File::create(dst).map_err(err)?);
    let mut b = tar::Builder::new(out);
    let (mut entries, mut bytes, mut skipped) = (0u64, 0u64, 0u64);
    for e in ar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            T::Char | T::Block | T::Fifo | T::XGlobalHeader | T::XHeader
        ) {
            skipped += u64::from(matches!(kind, T::Char | T::Block | T::Fifo));
            continue;
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(ExecError::msg(format!(
                "{url}: the context archive has more than {MAX_ENTRIES} entries"
            )));
        }
        let size = e.size();
        bytes = bytes.saturating_add(size).saturating_add(512);
        if bytes > max_size {
            return Err(too_big(url, "archive unpacked", max_size));
        }
        let path = e.path().map_err(bad)?.into_owned();
        let mut h = e.header().clone();
        match kind {
            T::Regular | T::Continuous | T::Directory | T::GNUSparse => {
                if kind == T::GNUSparse {
                    return Err(ExecError::msg(format!(
                        "{url}: sparse files are not supported in a context archive ({})",
                        path.display()
                    )));
                }
                h.set_entry_type(if kind == T::Directory {
                    T::Directory
                } else {
                    T::Regular
                });
                b.append_data(&mut h, &path, &mut e).map_err(bad)?;
            }
            T::Symlink | T::Link => {
                let target = e
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| {
                        ExecError::msg(format!("{url}: link {} has no target", path.display()))
                    })?
                    .into_owned();
                h.set_size(0);
                b.append_link(&mut h, &path, &target).map_err(bad)?;
            }
            _ => {
                skipped += 1;
            }
        }
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| crate::error::context(format!("{url}: writing the archive"), e))?;
    Ok(skipped)
}
