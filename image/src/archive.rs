//! `save` and `load`.
//!
//! `save` writes one tarball that both old and new tools read, as `docker save`
//! does since Docker 25: `manifest.json` + `repositories` (docker-archive) and
//! `oci-layout` + `index.json` + `blobs/sha256/` (OCI image layout) over the same
//! blobs. Entries are sorted, owned by 0:0 with mtime 0, JSON is canonical: the
//! same images give the same bytes.
//!
//! `load` reads docker-archives (current, and legacy with per-layer folders),
//! OCI layout tarballs, each possibly gzip/zstd/bzip2/xz compressed. The tarball is
//! staged on disk (never held in memory), every blob is checked against its digest
//! and every layer against the config's diff IDs before anything is committed.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rbuild_snapshotter::compress::Format;
use rbuild_snapshotter::tarwrite::{EntryKind, EntryMeta, TarWriter};
use rbuild_snapshotter::{Compression, Decoder, Digest, Encoder, HashingWriter};

use crate::config::ImageConfig;
use crate::error::{Error, Result};
use crate::manifest::{self, ArchiveEntry, Descriptor, Index, Manifest};
use crate::reference::Reference;
use crate::store::{CommitReport, Image, Store};

/// Options for [`save`].
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// Layer compression in the archive (docker writes uncompressed layers).
    pub compression: Compression,
    /// Threads for compression (0 = all).
    pub threads: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            compression: Compression::None,
            threads: 0,
        }
    }
}

/// One image to save and the tags to record for it (empty: saved by ID).
pub struct SaveItem {
    pub image: Image,
    pub tags: Vec<Reference>,
}

fn meta(path: &str, kind: EntryKind, size: u64) -> EntryMeta {
    let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
    EntryMeta {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        size,
        xattrs: Vec::new(),
    }
}

enum BlobSource {
    Store(Digest),
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Writes `items` as one archive to `out`.
pub fn save<W: Write>(store: &Store, items: &[SaveItem], out: W, opts: &SaveOptions) -> Result<W> {
    let scratch = tempfile::Builder::new()
        .prefix(&store.temp_prefix("save")?)
        .tempdir_in(store.tmp_dir())?;
    let mut blobs: BTreeMap<Digest, (BlobSource, u64)> = BTreeMap::new();
    let mut compressed: HashMap<Digest, (Digest, u64)> = HashMap::new();
    let mut index_descs = Vec::new();
    let mut entries: Vec<ArchiveEntry> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in items {
        let img = &item.image;
        let (mut m, _, _) = store.manifest(img)?;
        blobs.insert(
            img.id.clone(),
            (
                BlobSource::Store(img.id.clone()),
                img.raw_config.len() as u64,
            ),
        );
        for l in &mut m.layers {
            if opts.compression == Compression::None {
                blobs.insert(
                    l.digest.clone(),
                    (BlobSource::Store(l.digest.clone()), l.size),
                );
                continue;
            }
            let (cd, csize) = if let Some(c) = compressed.get(&l.digest) {
                c.clone()
            } else {
                let path = scratch.path().join(l.digest.hex());
                // The diff ID is known: hash only the compressed bytes.
                let f = HashingWriter::new(io::BufWriter::with_capacity(
                    1 << 20,
                    fs_err::File::create(&path)?,
                ));
                let mut enc = Encoder::new(f, opts.compression, opts.threads)?;
                let mut src = io::BufReader::with_capacity(1 << 20, store.open_blob(&l.digest)?);
                io::copy(&mut src, &mut enc)?;
                let (f, digest, size) = enc.finish()?.finish();
                f.into_inner().map_err(io::IntoInnerError::into_error)?;
                blobs.insert(digest.clone(), (BlobSource::File(path), size));
                compressed.insert(l.digest.clone(), (digest.clone(), size));
                (digest, size)
            };
            *l = Descriptor::new(opts.compression.oci_layer_media_type(), cd, csize);
        }
        let mbytes = crate::json::canonical(&m)?;
        let mdigest = Digest::of(&mbytes);
        let msize = mbytes.len() as u64;
        blobs.insert(mdigest.clone(), (BlobSource::Bytes(mbytes), msize));
        if item.tags.is_empty() {
            index_descs.push(Descriptor::new(
                manifest::OCI_MANIFEST,
                mdigest.clone(),
                msize,
            ));
        }
        for t in &item.tags {
            let mut d = Descriptor::new(manifest::OCI_MANIFEST, mdigest.clone(), msize);
            let mut ann = BTreeMap::new();
            ann.insert(manifest::ANNOTATION_IMAGE_NAME.to_owned(), t.full_name());
            if let Some(tag) = &t.tag {
                ann.insert(manifest::ANNOTATION_REF_NAME.to_owned(), tag.clone());
                if let Some(top) = m.layers.last() {
                    repositories
                        .entry(t.repo.clone())
                        .or_default()
                        .insert(tag.clone(), top.digest.hex().to_owned());
                }
            }
            d.annotations = Some(ann);
            index_descs.push(d);
        }
        let layer_paths: Vec<String> = m
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
            .collect();
        let tags: Vec<String> = item.tags.iter().map(ToString::to_string).collect();
        if let Some(e) = entries.iter_mut().find(|e| {
            e.config == format!("blobs/sha256/{}", img.id.hex()) && e.layers == layer_paths
        }) {
            let mut all = e.repo_tags.take().unwrap_or_default();
            all.extend(tags);
            e.repo_tags = if all.is_empty() { None } else { Some(all) };
        } else {
            entries.push(ArchiveEntry {
                config: format!("blobs/sha256/{}", img.id.hex()),
                repo_tags: if tags.is_empty() { None } else { Some(tags) },
                layers: layer_paths,
                layer_sources: None,
            });
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.into()),
        manifests: index_descs,
        annotations: None,
        extra: BTreeMap::new(),
    };
    let mut tw = TarWriter::new(out, None);
    tw.append(&meta("blobs", EntryKind::Dir, 0), None)?;
    tw.append(&meta("blobs/sha256", EntryKind::Dir, 0), None)?;
    for (d, (src, size)) in &blobs {
        let name = format!("blobs/sha256/{}", d.hex());
        match src {
            BlobSource::Store(sd) => {
                let mut f = io::BufReader::with_capacity(256 * 1024, store.open_blob(sd)?);
                tw.append(&meta(&name, EntryKind::File, *size), Some(&mut f))?;
            }
            BlobSource::File(p) => {
                let mut f = io::BufReader::with_capacity(256 * 1024, fs_err::File::open(p)?);
                tw.append(&meta(&name, EntryKind::File, *size), Some(&mut f))?;
            }
            BlobSource::Bytes(b) => {
                tw.append(&meta(&name, EntryKind::File, *size), Some(&mut &b[..]))?;
            }
        }
    }
    let mut small = |name: &str, data: Vec<u8>| -> Result<()> {
        tw.append(
            &meta(name, EntryKind::File, data.len() as u64),
            Some(&mut &data[..]),
        )?;
        Ok(())
    };
    small("index.json", crate::json::canonical(&index)?)?;
    small("manifest.json", crate::json::canonical(&entries)?)?;
    small("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    if !repositories.is_empty() {
        small("repositories", crate::json::canonical(&repositories)?)?;
    }
    Ok(tw.finish()?)
}

/// What `load` loaded: each image with its tags, and tags taken from other images.
pub type LoadReport = CommitReport;

struct Extracted {
    root: PathBuf,
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

impl Extracted {
    /// Follows archive-internal symlinks/hardlinks (legacy archives share layer.tar).
    fn lookup(&self, name: &str) -> Result<(PathBuf, Digest, u64)> {
        let mut cur = normalize(name);
        for _ in 0..16 {
            if let Some((d, n)) = self.files.get(&cur) {
                return Ok((self.root.join(&cur), d.clone(), *n));
            }
            match self.links.get(&cur) {
                Some(t) => cur = t.clone(),
                None => break,
            }
        }
        Err(Error::BadArchive(format!(
            "{name} is missing from the archive"
        )))
    }
}

fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Loads every image in the archive read from `input` into the store.
pub fn load<R: Read + Send + 'static>(store: &Store, input: R) -> Result<LoadReport> {
    let mut txn = store.begin()?;
    let root = txn.staging_dir().join("x");
    fs_err::create_dir(&root)?;
    let ex = extract(Decoder::new(input)?, &root)?;
    let mut images: Vec<(Vec<u8>, Vec<Reference>)> = Vec::new();
    if ex.files.contains_key("manifest.json") {
        let (p, _, _) = ex.lookup("manifest.json")?;
        let entries: Vec<ArchiveEntry> = serde_json::from_slice(&fs_err::read(&p)?)
            .map_err(|e| Error::BadArchive(format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(Error::BadArchive("manifest.json lists no image".into()));
        }
        for e in entries {
            let (cp, cd, _) = ex.lookup(&e.config)?;
            verify_named(&e.config, &cd)?;
            let config = fs_err::read(&cp)?;
            let mut diff_ids = Vec::new();
            for l in &e.layers {
                let (lp, ld, _) = ex.lookup(l)?;
                verify_named(l, &ld)?;
                diff_ids.push(stage_layer(&mut txn, lp, ld)?);
            }
            check_diff_ids(&config, &diff_ids)?;
            // As docker: a RepoTag with a digest fails the load (before anything is
            // committed, so the store is left as it was).
            let tags = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    Reference::parse_tag(t).map_err(|err| {
                        Error::BadArchive(format!("manifest.json: invalid tag {t:?}: {err}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            images.push((config, tags));
        }
    } else if ex.files.contains_key("index.json") {
        let (p, _, _) = ex.lookup("index.json")?;
        let index: Index = serde_json::from_slice(&fs_err::read(&p)?)
            .map_err(|e| Error::BadArchive(format!("index.json: {e}")))?;
        for desc in &index.manifests {
            let tags = oci_tags(desc);
            let m = resolve_manifest(&ex, desc)?;
            let (cp, cd, cn) = ex.lookup(&blob_name(&m.config.digest))?;
            verify_desc(&m.config, &cd, cn)?;
            let config = fs_err::read(&cp)?;
            let mut diff_ids = Vec::new();
            for l in &m.layers {
                let (lp, ld, ln) = ex.lookup(&blob_name(&l.digest))?;
                verify_desc(l, &ld, ln)?;
                diff_ids.push(stage_layer(&mut txn, lp, ld)?);
            }
            check_diff_ids(&config, &diff_ids)?;
            images.push((config, tags));
        }
        if images.is_empty() {
            return Err(Error::BadArchive("index.json lists no image".into()));
        }
    } else if ex.files.contains_key("repositories") {
        return Err(Error::BadArchive(
            "legacy archive without manifest.json (docker < 1.10) is not supported".into(),
        ));
    } else {
        return Err(Error::BadArchive(
            "no manifest.json or index.json: not an image archive".into(),
        ));
    }
    for (config, tags) in images {
        txn.add_image(&config, tags, None)?;
    }
    let mut report = txn.commit()?;
    // One line per image even when several descriptors named it.
    let mut merged: Vec<(Digest, Vec<Reference>)> = Vec::new();
    for (id, tags) in report.images {
        match merged.iter_mut().find(|(d, _)| *d == id) {
            Some((_, t)) => t.extend(tags),
            None => merged.push((id, tags)),
        }
    }
    report.images = merged;
    Ok(report)
}

#[allow(clippy::many_single_char_names)]
fn extract<R: Read>(input: R, root: &Path) -> Result<Extracted> {
    let mut ex = Extracted {
        root: root.to_path_buf(),
        files: HashMap::new(),
        links: HashMap::new(),
    };
    let mut a = tar::Archive::new(input);
    let entries = a.entries().map_err(|e| Error::BadArchive(e.to_string()))?;
    let mut any = false;
    for e in entries {
        let mut e = e.map_err(|e| Error::BadArchive(format!("not a valid tarball: {e}")))?;
        any = true;
        let raw = e.path_bytes().into_owned();
        let comps = rbuild_snapshotter::apply::clean_name(&raw)
            .map_err(|err| Error::BadArchive(err.to_string()))?;
        if comps.is_empty() {
            continue;
        }
        let rel = comps
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let dest = comps.iter().fold(root.to_path_buf(), |p, c| {
            p.join(std::ffi::OsStr::from_bytes(c))
        });
        let ty = e.header().entry_type();
        match ty {
            tar::EntryType::Directory => fs_err::create_dir_all(&dest)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = dest.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                let want = e
                    .header()
                    .size()
                    .map_err(|err| Error::BadArchive(err.to_string()))?;
                let mut w = HashingWriter::new(io::BufWriter::with_capacity(
                    256 * 1024,
                    fs_err::File::create(&dest)?,
                ));
                copy_entry(&mut e, &mut w, &rel)?;
                let (buf, d, n) = w.finish();
                if n != want {
                    return Err(Error::BadArchive(format!(
                        "truncated archive: {rel} has {n} of {want} bytes"
                    )));
                }
                let f = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
                f.sync_all()?;
                ex.files.insert(rel, (d, n));
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let t = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let target = if ty == tar::EntryType::Symlink && !t.starts_with('/') {
                    let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
                    normalize(&format!("{dir}/{t}"))
                } else {
                    normalize(&t)
                };
                ex.links.insert(rel, target);
            }
            _ => {}
        }
    }
    if !any {
        return Err(Error::BadArchive("empty archive".into()));
    }
    Ok(ex)
}

/// Copies a tar entry to `w`: a failing read is a truncated archive, a failing write
/// an I/O error of the store (a full disk says "No space left on device").
fn copy_entry(e: &mut impl Read, w: &mut impl Write, rel: &str) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match e.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(Error::BadArchive(format!(
                    "truncated archive at {rel}: {err}"
                )));
            }
        };
        w.write_all(&buf[..n])?;
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// When a file is named after its digest (`blobs/sha256/<hex>`, `<hex>.json`), it must match.
fn verify_named(name: &str, actual: &Digest) -> Result<()> {
    let n = normalize(name);
    let base = n.rsplit('/').next().unwrap_or(&n);
    let hex = base.strip_suffix(".json").unwrap_or(base);
    if let Ok(expected) = Digest::from_hex(hex) {
        if expected != *actual {
            return Err(Error::DigestMismatch {
                expected,
                actual: actual.clone(),
            });
        }
    }
    Ok(())
}

fn verify_desc(desc: &Descriptor, actual: &Digest, size: u64) -> Result<()> {
    if desc.digest != *actual {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            actual: actual.clone(),
        });
    }
    if desc.size != size {
        return Err(Error::BadArchive(format!(
            "blob {} has {size} bytes, its descriptor says {}",
            desc.digest, desc.size
        )));
    }
    Ok(())
}

/// Stages a layer file from the extracted archive; returns its diff ID.
fn stage_layer(txn: &mut crate::store::Txn<'_>, path: PathBuf, digest: Digest) -> Result<Digest> {
    let mut magic = [0u8; 6];
    let n = fs_err::File::open(&path)?.read(&mut magic)?;
    if Format::detect(&magic[..n]) == Format::Plain {
        txn.adopt_layer(path, digest.clone())?;
        return Ok(digest);
    }
    let f = fs_err::File::open(&path)?.into_file();
    Ok(txn.put_layer(f)?.0)
}

fn check_diff_ids(config: &[u8], diff_ids: &[Digest]) -> Result<()> {
    let cfg = ImageConfig::from_slice(config)?;
    if cfg.rootfs.diff_ids.len() != diff_ids.len() {
        return Err(Error::BadArchive(format!(
            "the config lists {} layers but the archive has {}",
            cfg.rootfs.diff_ids.len(),
            diff_ids.len()
        )));
    }
    for (i, (want, got)) in cfg.rootfs.diff_ids.iter().zip(diff_ids).enumerate() {
        if want != got {
            return Err(Error::BadArchive(format!(
                "layer {}: diff ID {got} does not match the config's {want}",
                i + 1
            )));
        }
    }
    Ok(())
}

/// The tag an OCI layout's descriptor names. A name pinned by digest (containerd
/// exports an image pulled by digest so) is no tag: the image loads untagged.
fn oci_tags(desc: &Descriptor) -> Vec<Reference> {
    let Some(ann) = &desc.annotations else {
        return Vec::new();
    };
    if let Some(n) = ann.get(manifest::ANNOTATION_IMAGE_NAME) {
        if let Ok(r) = Reference::parse_tag(n) {
            return vec![r];
        }
    }
    if let Some(n) = ann.get(manifest::ANNOTATION_REF_NAME) {
        if n.contains(':') || n.contains('/') {
            if let Ok(r) = Reference::parse_tag(n) {
                return vec![r];
            }
        }
    }
    Vec::new()
}

/// Follows nested indexes to one image manifest (this machine's platform, else the first).
fn resolve_manifest(ex: &Extracted, desc: &Descriptor) -> Result<Manifest> {
    let mut desc = desc.clone();
    for _ in 0..8 {
        let (p, d, n) = ex.lookup(&blob_name(&desc.digest))?;
        verify_desc(&desc, &d, n)?;
        let bytes = fs_err::read(&p)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadArchive(format!("manifest {}: {e}", desc.digest)))?;
        let is_index = v.get("manifests").is_some()
            || matches!(
                desc.media_type.as_str(),
                manifest::OCI_INDEX | manifest::DOCKER_MANIFEST_LIST
            );
        if is_index {
            let idx: Index = serde_json::from_value(v)
                .map_err(|e| Error::BadArchive(format!("index {}: {e}", desc.digest)))?;
            let arch = rbuild_oci::host_architecture();
            let pick = idx
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.architecture == arch && p.os == "linux")
                })
                .or_else(|| idx.manifests.first())
                .ok_or_else(|| {
                    Error::BadArchive(format!("index {} lists no manifest", desc.digest))
                })?;
            desc = pick.clone();
            continue;
        }
        return serde_json::from_value(v)
            .map_err(|e| Error::BadArchive(format!("manifest {}: {e}", desc.digest)));
    }
    Err(Error::BadArchive("indexes nested too deeply".into()))
}
