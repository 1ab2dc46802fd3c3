//! Cache mounts in a shared build cache (`--cache-to ...,cache-mounts=true`,
//! `--cache-from ...,cache-mounts=true`), which `BuildKit` cannot do
//! (moby/buildkit#1474): a farm's package-manager caches survive machine
//! turnover.
//!
//! Export: each cache mount that a `RUN` of the build mounts and that exists
//! on this machine becomes one gzip layer blob (a tar of its directory) and
//! one entry of the cache description ([`CacheMountDesc`]: its id, sharing,
//! blob and diff ID). A mount used by the build that this machine does not
//! have (every step was cached) but an imported cache had is carried over
//! from that cache, so a chain of machines keeps it.
//!
//! Import: lazily. Nothing is unpacked when the cache is read; when a step
//! that runs mounts a cache that does not exist here, the worker asks
//! [`ImportedMounts`] for it (`rbuild_worker::cachemounts`), and its blob is
//! fetched, checked against its digest and unpacked as the new mount.
//!
//! Merge rule: a cache mount that exists on this machine is kept as it is
//! (its content is never merged with or replaced by an imported one); of
//! several `--cache-from` sources holding the same id, the first given wins.
//! The identity of a cache mount is its [`CacheMountKey`], as the worker
//! keys it (and `BuildKit`): its id (the `id=` of the mount, else its
//! target), and the owner and mode it starts with when the mount gave
//! `uid=`/`gid=`/`mode=` (so `id=go,uid=1000` is another cache than
//! `id=go`); `sharing` is not part of it. A mount with `from=` is keyed by
//! the result it starts from too, which is this machine's own: it is
//! neither exported nor seeded. A description written before the owner was
//! part of the key names plain ids only, and is read as such.
//!
//! The code works on blobs through [`BlobSink`] and [`BlobSource`], so any
//! transport of the cache (a layout directory, a registry) carries mounts
//! by implementing those two.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use rbuild_image::Digest;
use rbuild_ops::{BuildGraph, CachePerms, CacheSharing, Op};
use rbuild_snapshotter::{Compression, Decoder, HashingReader};
use rbuild_worker::LocalWorker;
use rbuild_worker::cachemounts::{CacheMountKey, CacheMountSeeds};

use crate::cache_types::{CacheError, io};

/// One cache mount in the cache description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMountDesc {
    /// The mount's id (`id=`, else its target), as the worker keys it.
    pub id: String,
    /// The owner and mode it started with, when the mount gave any of
    /// `uid=`/`gid=`/`mode=`: part of its identity ([`CacheMountKey`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perms: Option<CachePerms>,
    /// Its `sharing=` in the build that exported it (for people reading the
    /// cache; not part of its identity).
    pub sharing: CacheSharing,
    /// The gzip-compressed tar of its directory (a layer of the manifest).
    pub blob: Digest,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

/// Where an export puts blobs (a transport of the cache).
pub trait BlobSink {
    /// A directory for temporary files that [`BlobSink::put`] can move from
    /// cheaply (the layout's blob directory, a scratch directory).
    fn temp_dir(&self) -> PathBuf;

    /// Stores the blob written to `file`, whose digest is `digest`.
    fn put(&mut self, digest: &Digest, file: tempfile::NamedTempFile) -> Result<(), CacheError>;
}

/// Where an import reads blobs from (a transport of the cache).
pub trait BlobSource: Send + Sync {
    /// A name for messages (the directory, the reference).
    fn name(&self) -> String;

    /// The blob `digest`, as stored (the caller checks it).
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, CacheError>;
}

/// An OCI image layout directory (`type=local`) as a blob sink and source.
#[derive(Clone, Debug)]
pub struct LayoutBlobs {
    dir: PathBuf,
}

impl LayoutBlobs {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(d.hex())
    }
}

impl BlobSink for LayoutBlobs {
    fn temp_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    fn put(&mut self, digest: &Digest, file: tempfile::NamedTempFile) -> Result<(), CacheError> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(());
        }
        file.as_file().sync_all().map_err(io(&path))?;
        file.persist(&path).map_err(|e| io(&path)(e.error))?;
        Ok(())
    }
}

impl BlobSource for LayoutBlobs {
    fn name(&self) -> String {
        self.dir.display().to_string()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, CacheError> {
        let path = self.path(digest);
        let f = fs_err::File::open(&path).map_err(io(&path))?;
        Ok(Box::new(f))
    }
}

impl CacheMountDesc {
    /// The cache mount it describes.
    pub fn key(&self) -> CacheMountKey {
        CacheMountKey {
            id: self.id.clone(),
            perms: self.perms,
        }
    }
}

/// The cache mounts without `from=` that `RUN` steps of `graph` mount: key →
/// sharing (the first step's).
pub fn mounts_of(graph: &BuildGraph) -> BTreeMap<CacheMountKey, CacheSharing> {
    let mut out = BTreeMap::new();
    for id in graph.ids() {
        let Some(Op::Exec(exec)) = graph.get(id).map(|v| &v.op) else {
            continue;
        };
        for m in &exec.mounts {
            if let (Some(key), rbuild_ops::MountKind::Cache { sharing, .. }) =
                (CacheMountKey::of(&m.kind, &m.target), &m.kind)
            {
                out.entry(key).or_insert(*sharing);
            }
        }
    }
    out
}

/// Exports the cache mounts that steps of `graph` mount into `sink`: each
/// one this machine has as a new blob, each other one that `imported` has
/// by copying its blob. Returns their entries of the description, by id.
pub fn export_mounts(
    worker: &LocalWorker,
    graph: &BuildGraph,
    imported: Option<&ImportedMounts>,
    sink: &mut dyn BlobSink,
) -> Result<Vec<CacheMountDesc>, CacheError> {
    let mut out = Vec::new();
    for (key, sharing) in mounts_of(graph) {
        let tmp_dir = sink.temp_dir();
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-mount-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, tmp);
        let written = worker
            .write_cache_mount(&key, sharing, w, Compression::Gzip)
            .map_err(|source| CacheError::Layer {
                snapshot: format!("cache mount {key}"),
                source,
            })?;
        if let Some((w, digests)) = written {
            let tmp = w.into_inner().map_err(|e| io(&tmp_dir)(e.into_error()))?;
            sink.put(&digests.digest, tmp)?;
            out.push(CacheMountDesc {
                id: key.id,
                perms: key.perms,
                sharing,
                blob: digests.digest,
                diff_id: digests.diff_id,
                size: digests.size,
            });
            continue;
        }
        let Some((source, desc)) = imported.and_then(|i| i.get(&key)) else {
            continue;
        };
        // Carried over from the imported cache, checked on the way.
        let w = tempfile::Builder::new()
            .prefix(".tmp-mount-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        let tmp = match fetch_checked(source.as_ref(), desc, w) {
            Ok(tmp) => tmp,
            Err(e) => {
                if let Some(i) = imported {
                    i.warn(format!(
                        "cache mount {key} not carried over from {}: {e}",
                        source.name()
                    ));
                }
                continue;
            }
        };
        sink.put(&desc.blob, tmp)?;
        out.push(desc.clone());
    }
    Ok(out)
}

/// Copies the blob of `desc` from `source` into `to`, checking its digest.
fn fetch_checked<W: Write>(
    source: &dyn BlobSource,
    desc: &CacheMountDesc,
    mut to: W,
) -> Result<W, String> {
    let r = source.open(&desc.blob).map_err(|e| e.to_string())?;
    let mut r = HashingReader::new(r);
    std::io::copy(&mut r, &mut to).map_err(|e| e.to_string())?;
    to.flush().map_err(|e| e.to_string())?;
    let (_, digest, _) = r.finish();
    if digest != desc.blob {
        return Err(format!("blob {} does not match its digest", desc.blob));
    }
    Ok(to)
}

/// The cache mounts of the `--cache-from` sources given with
/// `cache-mounts=true`: seeds of the cache mounts steps create (see the
/// module's merge rule).
pub struct ImportedMounts {
    sources: Vec<(Arc<dyn BlobSource>, Vec<CacheMountDesc>)>,
    /// Key → (source, entry), the first source that has it.
    by_key: HashMap<CacheMountKey, (usize, usize)>,
    /// Where fetched blobs are kept while they are checked and unpacked.
    tmp: PathBuf,
    /// Problems met while seeding (warnings of the build).
    warnings: Mutex<Vec<String>>,
    /// The mounts seeded, in order.
    seeded: Mutex<Vec<CacheMountKey>>,
}

impl ImportedMounts {
    /// `tmp`: a directory for fetched blobs (on the state root's file system).
    pub fn new(sources: Vec<(Arc<dyn BlobSource>, Vec<CacheMountDesc>)>, tmp: PathBuf) -> Self {
        let mut by_key = HashMap::new();
        for (s, (_, mounts)) in sources.iter().enumerate() {
            for (m, desc) in mounts.iter().enumerate() {
                by_key.entry(desc.key()).or_insert((s, m));
            }
        }
        Self {
            sources,
            by_key,
            tmp,
            warnings: Mutex::new(Vec::new()),
            seeded: Mutex::new(Vec::new()),
        }
    }

    /// How many cache mounts the sources hold.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn get(&self, key: &CacheMountKey) -> Option<(&Arc<dyn BlobSource>, &CacheMountDesc)> {
        let &(s, m) = self.by_key.get(key)?;
        let (source, mounts) = &self.sources[s];
        Some((source, &mounts[m]))
    }

    fn warn(&self, line: String) {
        self.warnings.lock().expect("warnings").push(line);
    }

    /// The problems met (each a warning of the build), emptied.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings"))
    }

    /// The cache mounts seeded so far.
    pub fn seeded(&self) -> Vec<CacheMountKey> {
        self.seeded.lock().expect("seeded").clone()
    }
}

impl CacheMountSeeds for ImportedMounts {
    fn seed(&self, key: &CacheMountKey) -> Option<Box<dyn Read + Send>> {
        let (source, desc) = self.get(key)?;
        // Fetched whole and checked before any of it is unpacked.
        let fetched = tempfile::tempfile_in(&self.tmp)
            .map_err(|e| format!("{}: {e}", self.tmp.display()))
            .and_then(|f| fetch_checked(source.as_ref(), desc, f))
            .and_then(|mut f| {
                f.rewind().map_err(|e| e.to_string())?;
                Decoder::new(std::io::BufReader::with_capacity(256 * 1024, f))
                    .map_err(|e| e.to_string())
            });
        match fetched {
            Ok(d) => {
                self.seeded.lock().expect("seeded").push(key.clone());
                Some(Box::new(d))
            }
            Err(e) => {
                self.warn(format!(
                    "cache mount {key} from {} not usable, it starts empty: {e}",
                    source.name()
                ));
                None
            }
        }
    }

    fn failed(&self, key: &CacheMountKey, error: String) {
        self.seeded.lock().expect("seeded").retain(|s| s != key);
        self.warn(format!(
            "cache mount {key}: its imported content could not be unpacked, it starts empty: {error}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout directory holding one mount `key` whose tar has one file.
    fn layout_with(dir: &Path, key: &CacheMountKey, content: &[u8]) -> CacheMountDesc {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        tar.append_data(&mut h, "f", content).unwrap();
        let tar = tar.into_inner().unwrap();
        let (gz, digests) =
            rbuild_snapshotter::write_layer(Vec::new(), Compression::Gzip, 1, |w| {
                w.write_all(&tar)
            })
            .unwrap();
        let mut blobs = LayoutBlobs::new(dir);
        fs_err::create_dir_all(blobs.temp_dir()).unwrap();
        let mut tmp = tempfile::NamedTempFile::new_in(blobs.temp_dir()).unwrap();
        tmp.write_all(&gz).unwrap();
        blobs.put(&digests.digest, tmp).unwrap();
        CacheMountDesc {
            id: key.id.clone(),
            perms: key.perms,
            sharing: CacheSharing::Shared,
            blob: digests.digest,
            diff_id: digests.diff_id,
            size: digests.size,
        }
    }

    fn seeded_content(m: &ImportedMounts, key: &CacheMountKey) -> Option<Vec<u8>> {
        let mut tar = tar::Archive::new(m.seed(key)?);
        let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
        let mut out = Vec::new();
        entry.read_to_end(&mut out).unwrap();
        Some(out)
    }

    #[test]
    fn the_first_source_with_a_key_wins_and_a_corrupt_blob_is_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        let apt = CacheMountKey::id("apt");
        let go = CacheMountKey::id("go");
        let go_1000 = CacheMountKey {
            id: "go".into(),
            perms: Some(CachePerms::new(1000, 0, 0o755)),
        };
        let a1 = layout_with(&one, &apt, b"from one");
        let a2 = layout_with(&two, &apt, b"from two");
        let g2 = layout_with(&two, &go, b"go from two");
        let g1000 = layout_with(&one, &go_1000, b"go of 1000 from one");
        let sources: Vec<(Arc<dyn BlobSource>, Vec<CacheMountDesc>)> = vec![
            (Arc::new(LayoutBlobs::new(&one)), vec![a1, g1000]),
            (Arc::new(LayoutBlobs::new(&two)), vec![a2, g2.clone()]),
        ];
        let m = ImportedMounts::new(sources, tmp.path().to_path_buf());
        assert_eq!(m.len(), 3);
        assert_eq!(seeded_content(&m, &apt).unwrap(), b"from one");
        // The id with an owner is another mount than the id alone.
        assert_eq!(seeded_content(&m, &go).unwrap(), b"go from two");
        assert_eq!(
            seeded_content(&m, &go_1000).unwrap(),
            b"go of 1000 from one"
        );
        let go_2000 = CacheMountKey {
            id: "go".into(),
            perms: Some(CachePerms::new(2000, 0, 0o755)),
        };
        assert!(m.seed(&go_2000).is_none());
        assert!(m.seed(&CacheMountKey::id("none")).is_none());
        assert_eq!(m.seeded(), [apt, go.clone(), go_1000]);
        assert!(m.take_warnings().is_empty());

        fs_err::write(LayoutBlobs::new(&two).path(&g2.blob), b"not it").unwrap();
        assert!(
            m.seed(&go).is_none(),
            "a blob that does not match is not used"
        );
        let w = m.take_warnings();
        assert!(
            w.len() == 1 && w[0].contains("cache mount go ") && w[0].contains("does not match"),
            "{w:?}"
        );
    }

    #[test]
    fn a_description_without_perms_reads_as_plain_ids() {
        let old = r#"{"id":"pkgs","sharing":"locked","blob":"sha256:0000000000000000000000000000000000000000000000000000000000000000","diff_id":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1}"#;
        let d: CacheMountDesc = serde_json::from_str(old).unwrap();
        assert_eq!(d.key(), CacheMountKey::id("pkgs"));
        assert_eq!(serde_json::to_string(&d).unwrap(), old, "written as before");
        let with = CacheMountDesc {
            perms: Some(CachePerms::new(5, 6, 0o700)),
            ..d
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(
            json.contains(r#""perms":{"uid":5,"gid":6,"mode":448}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<CacheMountDesc>(&json).unwrap(), with);
    }
}
