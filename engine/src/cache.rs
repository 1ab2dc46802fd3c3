//! A build cache shared between machines (`--cache-to`, `--cache-from`).
//!
//! The model is `BuildKit`'s remote cache: a graph of records, one per step
//! result, keyed by rbuild's cache key, each linking the records of its
//! inputs and, when it has one, naming its result as a chain of layer blobs
//! (gzip-compressed tars, bottom first). It travels as an OCI image manifest
//! whose config is the cache description ([`CacheConfig`], media type
//! [`CACHE_CONFIG_MEDIA_TYPE`]) and whose layers are the blobs, so a registry
//! (any: OCI manifests with custom configs are accepted everywhere) or an OCI
//! image layout directory (`type=local`) can hold it.
//!
//! `mode=min` gives layers only to the final result (every record still
//! links its inputs); `mode=max` to every step result.
//!
//! A result's creation time travels with its layers (`createdat`, as
//! `BuildKit`'s `buildkit/createdat`): the snapshot unpacked on the importing
//! machine keeps it, so its image has the same `created` and the same ID.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use rbuild_image::Digest;
use rbuild_oci::manifest::{self, Descriptor, Index, Manifest};
use rbuild_ops::{BuildGraph, CacheKey, InputKey, Op, SourceOp, VertexId};
use rbuild_snapshotter::snapshots::SnapshotId;
use rbuild_snapshotter::{Compression, Decoder, HashingReader};
use rbuild_solver::progress::{Stream, VertexLogger};
use rbuild_solver::{ImportedCache, Outputs, ResultRef};
use rbuild_worker::LocalWorker;
use rbuild_worker::cachelayers::ChainLink;

use crate::cache_types::io;
pub use crate::cache_types::{CacheError, RemoteBlobs};

/// The media type of rbuild's cache description (rbuild's keys are not
/// `BuildKit`'s, so it is not `BuildKit`'s cache config).
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";

/// `mode=` of `--cache-to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Layers only for the final result (`BuildKit`'s default).
    #[default]
    Min,
    /// Layers for every step result.
    Max,
}

/// One `--cache-to type=local,dest=DIR[,mode=...][,compression=...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    pub dest: PathBuf,
    pub mode: CacheMode,
    /// How new layer blobs are compressed (`compression=gzip|zstd`).
    pub compression: Compression,
    /// `ignore-error=true`: a failed export is a warning.
    pub ignore_error: bool,
    /// `cache-mounts=true`: the build's cache mounts go too
    /// ([`crate::cache_mounts`]).
    pub cache_mounts: bool,
}

/// One `--cache-from type=local,src=DIR[,cache-mounts=true]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheImport {
    pub src: PathBuf,
    /// `cache-mounts=true`: the cache's cache mounts seed the ones that do
    /// not exist here ([`crate::cache_mounts`]).
    pub cache_mounts: bool,
}

/// Where an imported cache's blobs come from: an OCI layout directory or a
/// registry (`crate::cache_registry`'s `RemoteCache`).
pub enum CacheSource {
    Local(PathBuf),
    Registry(std::sync::Arc<dyn RemoteBlobs>),
}

/// A blob of a source as a file: the layout's own, or a verified download
/// removed when dropped.
enum BlobFile {
    Path(PathBuf),
    Temp(tempfile::TempPath),
}

impl std::ops::Deref for BlobFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        match self {
            BlobFile::Path(p) => p,
            BlobFile::Temp(t) => t,
        }
    }
}

impl CacheSource {
    /// The source as messages name it (a directory or a reference).
    pub fn name(&self) -> String {
        match self {
            CacheSource::Local(dir) => dir.display().to_string(),
            CacheSource::Registry(r) => r.name().to_owned(),
        }
    }

    /// The blob `d` as a file (a registry's is downloaded and verified).
    fn blob_file(&self, d: &Digest) -> Result<BlobFile, CacheError> {
        match self {
            CacheSource::Local(dir) => {
                let p = blob_path(dir, d);
                if p.is_file() {
                    Ok(BlobFile::Path(p))
                } else {
                    Err(CacheError::Invalid {
                        path: dir.clone(),
                        reason: format!("blob {d} is missing"),
                    })
                }
            }
            CacheSource::Registry(r) => r.fetch_blob(d).map(BlobFile::Temp),
        }
    }
}

/// The compression of a blob, by its first bytes.
fn blob_compression(path: &Path) -> Compression {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let n = fs_err::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .unwrap_or(0);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// The cache description: the config blob of the cache manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Layer blobs, each on its parent (an index into this list).
    pub layers: Vec<CacheLayer>,
    /// One record per step result.
    pub records: Vec<CacheRecordDesc>,
    /// Cache mounts (`cache-mounts=true`), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<crate::cache_mounts::CacheMountDesc>,
}

/// One layer of the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    /// The compressed blob (a layer of the manifest).
    pub blob: Digest,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The layer below (an index into [`CacheConfig::layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<usize>,
    /// A base image's layer (unpacked as the image's own layers are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base: bool,
    /// When the snapshot it was made from was committed (RFC 3339).
    #[serde(default, rename = "createdat", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// One step result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecordDesc {
    /// The step's cache key.
    pub key: CacheKey,
    /// The step's progress name (for people reading the cache).
    pub description: String,
    /// The keys of the records of its inputs, in input order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<CacheKey>,
    /// For a step that reads an input by content (a `COPY`): the key of its
    /// op over its inputs' own keys, which a machine that has not unpacked
    /// the input can compute (`BuildKit`'s key with selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_inputs: Option<CacheKey>,
    /// What went into its key, in a form that can be compared field by
    /// field (`--explain-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<KeyParts>,
    /// The top of its result's layer chain, when the cache holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// When its result was made (RFC 3339).
    #[serde(default, rename = "createdat", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The parts of a cache key, comparable one by one: each field of the op as
/// a short digest (so no value, a build arg's included, is written out in
/// clear), `env NAME` for each environment entry, and what each input
/// contributed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    pub fields: BTreeMap<String, String>,
    pub inputs: Vec<KeyInput>,
    /// The files behind each `Content` input, when listed (beside the key:
    /// see [`crate::cache_files`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::cache_files::InputFiles>,
}

/// What one input contributed to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyInput {
    /// The input's key.
    Key(CacheKey),
    /// Content checksums of what the op reads from it.
    Content(Vec<rbuild_ops::Checksum>),
}

fn short_digest(v: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    blake3::hash(&bytes).to_hex()[..16].to_owned()
}

impl KeyParts {
    /// The parts of the key of `op` over `inputs`.
    pub fn of(op: &Op, inputs: &[InputKey]) -> Self {
        let mut fields = BTreeMap::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(op) {
            for (name, value) in map {
                match (name.as_str(), &value) {
                    ("env", serde_json::Value::Array(entries)) => {
                        for e in entries {
                            let e = e.as_str().unwrap_or_default();
                            let (k, v) = e.split_once('=').unwrap_or((e, ""));
                            fields.insert(
                                format!("env {k}"),
                                short_digest(&serde_json::Value::String(v.to_owned())),
                            );
                        }
                    }
                    // Proxy variables are not part of the key.
                    ("proxy_env", _) => {}
                    _ => {
                        fields.insert(name, short_digest(&value));
                    }
                }
            }
        }
        let inputs = inputs
            .iter()
            .map(|i| match i {
                InputKey::Key(k) => KeyInput::Key(*k),
                InputKey::Content(sums) => KeyInput::Content(sums.clone()),
            })
            .collect();
        Self {
            fields,
            inputs,
            files: Vec::new(),
        }
    }
}

impl CacheConfig {
    /// The chain of layer indexes of `top`, bottom first; `None` when a
    /// parent index is out of range or the chain loops.
    pub fn chain(&self, top: usize) -> Option<Vec<usize>> {
        let mut out = Vec::new();
        let mut next = Some(top);
        while let Some(i) = next {
            if i >= self.layers.len() || out.len() > self.layers.len() {
                return None;
            }
            out.push(i);
            next = self.layers[i].parent;
        }
        out.reverse();
        Some(out)
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub records: usize,
    pub layers: usize,
    /// Blobs removed because nothing referenced them any more.
    pub removed_blobs: usize,
    /// Cache mounts written.
    pub cache_mounts: usize,
    /// The clean-up was left to the next export: a build was reading the
    /// directory.
    pub cleanup_deferred: bool,
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

/// Takes an exclusive lock on the layout `dir` (blocks): writers of the same
/// directory take turns, so one's clean-up never removes another's blobs.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, CacheError> {
    let path = dir.join(".rbuild-cache.lock");
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?
        .into_file();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| CacheError::Lock { path, errno })
}

/// The lock of the readers of the layout `dir`, taken shared by each build
/// that imports from it for as long as it may read blobs (blocks only while
/// a writer is removing blobs). A writer removes unreferenced blobs only
/// when it can take this lock exclusively at once; otherwise it leaves them
/// to the next export, so blobs never vanish under a reader, and a reader
/// never makes a writer wait (two builds that each read the other's export
/// directory cannot deadlock).
///
/// `None` when the lock file cannot be opened (a missing directory, which
/// the read then reports, or a read-only one, which no writer can change).
pub fn lock_readers(dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, CacheError> {
    let path = dir.join(".rbuild-cache.readers.lock");
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .or_else(|_| fs_err::File::open(&path));
    let Ok(file) = file else {
        return Ok(None);
    };
    nix::fcntl::Flock::lock(file.into_file(), nix::fcntl::FlockArg::LockShared)
        .map(Some)
        .map_err(|(_, errno)| CacheError::Lock { path, errno })
}

/// The readers' lock of `dir` taken exclusively, when no reader holds it.
fn no_readers(dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, CacheError> {
    let path = dir.join(".rbuild-cache.readers.lock");
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?
        .into_file();
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(CacheError::Lock { path, errno }),
    }
}

/// Writes `data` to `path` through a temporary name in the same directory.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(data).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// Writes a blob given as bytes (no-op when present).
fn put_bytes(dir: &Path, data: &[u8]) -> Result<Digest, CacheError> {
    let d = Digest::of(data);
    let path = blob_path(dir, &d);
    if !path.is_file() {
        write_atomic(&path, data)?;
    }
    Ok(d)
}

fn rfc3339(t: Option<(i64, u32)>) -> Option<String> {
    t.map(|(s, n)| rbuild_image::time::format_rfc3339(s, n))
}

/// Exports the records of a solve to the OCI layout `opts.dest`: blobs
/// first, `index.json` last (temporary name + rename), then the blobs no
/// longer referenced are removed.
pub fn export_local(
    worker: &LocalWorker,
    graph: &BuildGraph,
    outputs: &Outputs,
    target: VertexId,
    imported: Option<&ImportedRecords>,
    mounts: Option<&crate::cache_mounts::ImportedMounts>,
    opts: &CacheExport,
) -> Result<ExportReport, CacheError> {
    export_layout(
        worker, graph, outputs, target, imported, mounts, opts, None, None,
    )
}

/// Blobs of an export left in a registry source rather than copied into
/// the layout: digest → (the source's index, its descriptor).
/// `None`: the destination registry has the blob already (a layer this
/// machine compressed before, by its remembered digest).
pub(crate) type Foreign = HashMap<Digest, (Option<usize>, Descriptor)>;

/// The destination registry of a registry export, as [`add_layer`] asks it
/// before it compresses a layer.
pub(crate) trait RegistryDest {
    /// Whether it has a blob (a HEAD): a layer compressed before whose blob
    /// is there is not compressed again.
    fn has_blob(&self, d: &Digest) -> bool;

    /// A blob of the layer `diff_id` in `compression` that the destination
    /// repository has now (there already, or mounted from a repository of
    /// the same registry an image push put it in), named instead of
    /// compressing the layer a second time.
    fn known_layer(&self, diff_id: &Digest, compression: Compression) -> Option<Descriptor>;
}

/// The destination of a registry export.
pub(crate) type HasBlob<'a> = &'a dyn RegistryDest;

/// [`export_local`]; with `foreign`, the layers of records a registry
/// source holds and this build never unpacked are not downloaded: they are
/// named in the manifest and listed in `foreign` (a registry export mounts
/// or copies them from there).
#[allow(clippy::too_many_arguments)]
pub(crate) fn export_layout(
    worker: &LocalWorker,
    graph: &BuildGraph,
    outputs: &Outputs,
    target: VertexId,
    imported: Option<&ImportedRecords>,
    mounts: Option<&crate::cache_mounts::ImportedMounts>,
    opts: &CacheExport,
    mut foreign: Option<&mut Foreign>,
    has_blob: Option<HasBlob<'_>>,
) -> Result<ExportReport, CacheError> {
    let dir = &opts.dest;
    let blobs_dir = dir.join("blobs").join("sha256");
    fs_err::create_dir_all(&blobs_dir).map_err(io(&blobs_dir))?;
    let _lock = lock_dir(dir)?;
    let mut config = describe(
        worker,
        graph,
        outputs,
        target,
        imported,
        opts,
        foreign.as_deref_mut(),
        has_blob,
        false,
    )?;
    if opts.cache_mounts {
        config.cache_mounts = crate::cache_mounts::export_mounts(
            worker,
            graph,
            mounts,
            &mut crate::cache_mounts::LayoutBlobs::new(dir),
        )?;
    }
    write_layout(dir, &config, foreign.as_deref())
}

/// The cache description of a solve; the layer blobs are written into the
/// layout `opts.dest` (with `digest_only`, nothing is written: each layer is
/// named by its diff ID, as the inline cache names an image's layers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn describe(
    worker: &LocalWorker,
    graph: &BuildGraph,
    outputs: &Outputs,
    target: VertexId,
    imported: Option<&ImportedRecords>,
    opts: &CacheExport,
    mut foreign: Option<&mut Foreign>,
    has_blob: Option<HasBlob<'_>>,
    digest_only: bool,
) -> Result<CacheConfig, CacheError> {
    let dir = &opts.dest;
    let mut config = CacheConfig::default();
    let mut layer_of: HashMap<SnapshotId, usize> = HashMap::new();
    let mut copied: HashMap<(usize, usize), usize> = HashMap::new();
    let mut solved: Vec<(VertexId, &rbuild_solver::Solved)> =
        outputs.iter().map(|(id, s)| (*id, s)).collect();
    solved.sort_by_key(|(_, s)| s.key);
    let mut seen = BTreeSet::new();
    for (id, s) in solved {
        if !s.cacheable || !seen.insert(s.key) {
            continue;
        }
        let Some(vertex) = graph.get(id) else {
            continue;
        };
        let input_solved: Vec<&rbuild_solver::Solved> = vertex
            .inputs
            .iter()
            .filter_map(|i| outputs.get(*i))
            .collect();
        let inputs: Vec<CacheKey> = input_solved.iter().map(|s| s.key).collect();
        let by_inputs = (!vertex.op.content_selections().is_empty()
            && input_solved.len() == vertex.inputs.len()
            && input_solved.iter().all(|s| s.cacheable))
        .then(|| {
            let keys: Vec<InputKey> = inputs.iter().map(|k| InputKey::Key(*k)).collect();
            rbuild_ops::cache_key(&vertex.op, &keys)
        });
        // A base image is read from the local store on every machine (it is
        // resolved before anything runs): its record only links.
        let is_image = matches!(vertex.op, Op::Source(SourceOp::Image { .. }));
        let wants_layers = !is_image && (opts.mode == CacheMode::Max || id == target);
        let mut layer = None;
        let mut created = None;
        // A result answered lazily from an imported cache and never
        // needed is not here: its imported layers are copied over.
        let available = s.available_result().filter(|_| wants_layers);
        if wants_layers && available.is_none() && !digest_only {
            if let Some(imported) = imported {
                let copy = imported.copy_layers(
                    &s.key,
                    dir,
                    &mut config,
                    &mut copied,
                    foreign.as_deref_mut(),
                )?;
                if let Some((top, at)) = copy {
                    layer = Some(top);
                    created = at;
                }
            }
        }
        if let Some(result) = available {
            if let Some(chain) =
                worker
                    .result_chain(&result)
                    .map_err(|source| CacheError::Layer {
                        snapshot: result.to_string(),
                        source,
                    })?
            {
                for link in &chain {
                    layer = Some(add_layer(
                        worker,
                        dir,
                        &mut config,
                        &mut layer_of,
                        link,
                        layer,
                        Writing {
                            compression: opts.compression,
                            digest_only,
                            foreign: foreign.as_deref_mut(),
                            has_blob,
                        },
                    )?);
                }
                created = chain.last().and_then(|l| l.created);
            }
        }
        config.records.push(CacheRecordDesc {
            key: s.key,
            description: vertex.description.name.clone(),
            inputs,
            by_inputs,
            // A step answered from an imported record keeps that record's
            // parts (a lazily imported step's key was found by its inputs'
            // keys, without the content checksums the machine that ran it
            // had): the same build gives the same description everywhere.
            explain: imported.and_then(|i| i.explain_of(&s.key)).or_else(|| {
                Some(KeyParts {
                    files: crate::cache_files::input_files(worker, graph, outputs, id),
                    ..KeyParts::of(&vertex.op, &s.key_inputs)
                })
            }),
            layer,
            created_at: rfc3339(created),
        });
    }

    Ok(config)
}

/// Writes the config, manifest and `index.json` of `config` into the layout
/// `dir` (its layer blobs are there, or in `foreign`), then removes the blobs
/// no longer referenced.
fn write_layout(
    dir: &Path,
    config: &CacheConfig,
    foreign: Option<&Foreign>,
) -> Result<ExportReport, CacheError> {
    let blobs_dir = dir.join("blobs").join("sha256");
    let config_bytes = serde_json::to_vec(config).map_err(|e| CacheError::Invalid {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config_digest = put_bytes(dir, &config_bytes)?;
    let mut layers = Vec::new();
    let mut listed = BTreeSet::new();
    for l in &config.layers {
        if listed.insert(l.blob.clone()) {
            if let Some((_, desc)) = foreign.and_then(|f| f.get(&l.blob)) {
                layers.push(desc.clone());
                continue;
            }
            let path = blob_path(dir, &l.blob);
            let size = fs_err::metadata(&path).map_err(io(dir))?.len();
            layers.push(Descriptor::new(
                blob_compression(&path).oci_layer_media_type(),
                l.blob.clone(),
                size,
            ));
        }
    }
    for m in &config.cache_mounts {
        if listed.insert(m.blob.clone()) {
            layers.push(Descriptor::new(
                Compression::Gzip.oci_layer_media_type(),
                m.blob.clone(),
                m.size,
            ));
        }
    }
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        config: Descriptor::new(
            CACHE_CONFIG_MEDIA_TYPE,
            config_digest.clone(),
            config_bytes.len() as u64,
        ),
        layers,
        annotations: None,
        extra: BTreeMap::new(),
    };
    let m_bytes = rbuild_oci::json::canonical(&m).map_err(|e| CacheError::Invalid {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let m_digest = put_bytes(dir, &m_bytes)?;
    let mut desc = Descriptor::new(
        manifest::OCI_MANIFEST,
        m_digest.clone(),
        m_bytes.len() as u64,
    );
    desc.annotations = Some(BTreeMap::from([(
        manifest::ANNOTATION_REF_NAME.to_owned(),
        "latest".to_owned(),
    )]));
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.into()),
        manifests: vec![desc],
        annotations: None,
        extra: BTreeMap::new(),
    };
    let index_bytes = rbuild_oci::json::canonical(&index).map_err(|e| CacheError::Invalid {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &index_bytes)?;

    // Only what index.json now reaches stays; unless a build is reading
    // the directory (it may still need the blobs it read of): then the next
    // export cleans up.
    let Some(_no_readers) = no_readers(dir)? else {
        return Ok(ExportReport {
            records: config.records.len(),
            layers: config.layers.len(),
            removed_blobs: 0,
            cache_mounts: config.cache_mounts.len(),
            cleanup_deferred: true,
        });
    };
    let mut keep: BTreeSet<String> = listed.iter().map(|d| d.hex().to_owned()).collect();
    keep.insert(config_digest.hex().to_owned());
    keep.insert(m_digest.hex().to_owned());
    let mut removed_blobs = 0;
    for e in fs_err::read_dir(&blobs_dir).map_err(io(&blobs_dir))? {
        let e = e.map_err(io(&blobs_dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            fs_err::remove_file(e.path()).map_err(io(&blobs_dir))?;
            removed_blobs += 1;
        }
    }
    Ok(ExportReport {
        records: config.records.len(),
        layers: config.layers.len(),
        removed_blobs,
        cache_mounts: config.cache_mounts.len(),
        cleanup_deferred: false,
    })
}

/// How [`add_layer`] writes a layer.
struct Writing<'a, 'f> {
    compression: Compression,
    /// Nothing written: the layer named by its diff ID (the inline cache).
    digest_only: bool,
    /// A registry export's blobs left out of the layout.
    foreign: Option<&'a mut Foreign>,
    has_blob: Option<HasBlob<'f>>,
}

/// Adds the layer of `link` (on `parent`) to the config, writing its blob;
/// a layer compressed before whose blob the destination has (the layout, or
/// the registry) is named by its remembered digest, not compressed again.
fn add_layer(
    worker: &LocalWorker,
    dir: &Path,
    config: &mut CacheConfig,
    layer_of: &mut HashMap<SnapshotId, usize>,
    link: &ChainLink,
    parent: Option<usize>,
    how: Writing<'_, '_>,
) -> Result<usize, CacheError> {
    let Writing {
        compression,
        digest_only,
        foreign,
        has_blob,
    } = how;
    // A registry export's layout is scratch, removed once pushed: its
    // blobs need not reach the disk.
    let durable = foreign.is_none();
    if let Some(&i) = layer_of.get(&link.snapshot) {
        return Ok(i);
    }
    let remembered = (!digest_only)
        .then(|| worker.remembered_chain_layer(link, compression))
        .flatten();
    if let Some((digest, size, diff_id)) = remembered {
        let here = blob_path(dir, &digest).is_file();
        let there = !here && foreign.is_some() && has_blob.is_some_and(|has| has.has_blob(&digest));
        if here || there {
            if let (true, Some(f)) = (there, foreign) {
                f.insert(
                    digest.clone(),
                    (
                        None,
                        Descriptor::new(compression.oci_layer_media_type(), digest.clone(), size),
                    ),
                );
            }
            return Ok(push_layer(config, layer_of, link, digest, diff_id, parent));
        }
    }
    if digest_only {
        let diff_id = worker
            .chain_layer_diff_id(link)
            .map_err(|source| CacheError::Layer {
                snapshot: link.snapshot.to_string(),
                source,
            })?;
        return Ok(push_layer(
            config,
            layer_of,
            link,
            diff_id.clone(),
            diff_id,
            parent,
        ));
    }
    // A layer an image push of this build (or an earlier one) compressed
    // and sent to the same registry is mounted from there, not compressed
    // again.
    if let (Some(f), Some(dest)) = (foreign, has_blob) {
        let known = worker
            .remembered_chain_diff_id(link)
            .and_then(|diff_id| Some((dest.known_layer(&diff_id, compression)?, diff_id)));
        if let Some((desc, diff_id)) = known {
            let digest = desc.digest.clone();
            f.insert(digest.clone(), (None, desc));
            return Ok(push_layer(config, layer_of, link, digest, diff_id, parent));
        }
    }
    let blobs_dir = dir.join("blobs").join("sha256");
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-layer-")
        .tempfile_in(&blobs_dir)
        .map_err(io(&blobs_dir))?;
    let out = std::io::BufWriter::with_capacity(1 << 20, tmp);
    let (out, digests) = worker
        .write_chain_layer(link, out, compression)
        .map_err(|source| CacheError::Layer {
            snapshot: link.snapshot.to_string(),
            source,
        })?;
    let tmp = out
        .into_inner()
        .map_err(|e| io(&blobs_dir)(e.into_error()))?;
    worker.remember_chain_layer(link, compression, &digests);
    let path = blob_path(dir, &digests.digest);
    if path.is_file() {
        drop(tmp);
    } else {
        if durable {
            tmp.as_file().sync_all().map_err(io(&path))?;
        }
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
    }
    Ok(push_layer(
        config,
        layer_of,
        link,
        digests.digest,
        digests.diff_id,
        parent,
    ))
}

/// Adds the layer of `link` to the description and remembers its index.
/// A base image's layer is unpacked as the image's own: when this machine
/// unpacked it is not part of the cache (it would make the description
/// differ from machine to machine).
fn push_layer(
    config: &mut CacheConfig,
    layer_of: &mut HashMap<SnapshotId, usize>,
    link: &ChainLink,
    blob: Digest,
    diff_id: Digest,
    parent: Option<usize>,
) -> usize {
    let base = link.base_layer.is_some();
    config.layers.push(CacheLayer {
        blob,
        diff_id,
        parent,
        base,
        created_at: if base { None } else { rfc3339(link.created) },
    });
    let i = config.layers.len() - 1;
    layer_of.insert(link.snapshot.clone(), i);
    i
}

/// Reads the cache description of the OCI layout `dir`.
pub fn read_local(dir: &Path) -> Result<CacheConfig, CacheError> {
    let invalid = |reason: String| CacheError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let index_path = dir.join("index.json");
    let bytes = fs_err::read(&index_path).map_err(io(&index_path))?;
    let index: Index =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("index.json: {e}")))?;
    for desc in &index.manifests {
        let Ok(m_bytes) = read_blob(dir, &desc.digest) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&m_bytes) else {
            continue;
        };
        if m.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
            continue;
        }
        let c_bytes = read_blob(dir, &m.config.digest)?;
        let config: CacheConfig = serde_json::from_slice(&c_bytes)
            .map_err(|e| invalid(format!("cache config {}: {e}", m.config.digest)))?;
        return Ok(config);
    }
    Err(invalid(format!(
        "index.json names no manifest with a {CACHE_CONFIG_MEDIA_TYPE} config"
    )))
}

/// A blob, checked against its digest.
fn read_blob(dir: &Path, d: &Digest) -> Result<Vec<u8>, CacheError> {
    let path = blob_path(dir, d);
    let bytes = fs_err::read(&path).map_err(io(&path))?;
    if Digest::of(&bytes) != *d {
        return Err(CacheError::Invalid {
            path,
            reason: format!("content does not match its digest {d}"),
        });
    }
    Ok(bytes)
}

/// Seconds and nanoseconds since the Unix epoch.
type Created = (i64, u32);

/// A layer blob of a source, decompressed, opened at the first read: a
/// layer applied already is neither read nor downloaded.
struct LazyLayer<'a> {
    src: &'a CacheSource,
    blob: &'a Digest,
    open: Option<(BlobFile, Decoder)>,
}

impl LazyLayer<'_> {
    fn start(&self) -> std::io::Result<(BlobFile, Decoder)> {
        let blob = self.blob;
        let file = self
            .src
            .blob_file(blob)
            .map_err(|e| std::io::Error::other(crate::error::one_line(&e)))?;
        // A layout's blob is checked against its digest before any of it
        // is applied (a registry's download was checked as it came).
        if let BlobFile::Path(path) = &file {
            let mut check = HashingReader::new(fs_err::File::open(path)?);
            std::io::copy(&mut check, &mut std::io::sink())?;
            let (_, digest, _) = check.finish();
            if digest != *blob {
                return Err(std::io::Error::other(format!(
                    "cache blob {blob} in {} does not match its digest",
                    self.src.name()
                )));
            }
        }
        let f = fs_err::File::open(&*file)?;
        let decoder = Decoder::new(std::io::BufReader::with_capacity(256 * 1024, f))?;
        Ok((file, decoder))
    }
}

impl std::io::Read for LazyLayer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.open.is_none() {
            self.open = Some(self.start()?);
        }
        self.open.as_mut().map_or(Ok(0), |(_, d)| d.read(buf))
    }
}

/// The records of every `--cache-from` source, asked by the solver on a
/// miss in the local index. A record's layers are unpacked only when the
/// solver asks for its key.
pub struct ImportedRecords {
    worker: LocalWorker,
    sources: Vec<(CacheSource, CacheConfig)>,
    /// Key → (source, record), the first source that has it.
    by_key: HashMap<CacheKey, (usize, usize)>,
    /// A record's key by its inputs' keys → its key.
    by_inputs: HashMap<CacheKey, CacheKey>,
    /// (source, layer) → snapshot, for layers unpacked already.
    unpacked: Mutex<HashMap<(usize, usize), SnapshotId>>,
}

impl ImportedRecords {
    pub fn new(worker: LocalWorker, sources: Vec<(PathBuf, CacheConfig)>) -> Self {
        Self::with_sources(
            worker,
            sources
                .into_iter()
                .map(|(dir, c)| (CacheSource::Local(dir), c))
                .collect(),
        )
    }

    /// The records of sources of any kind (directories, registries).
    pub fn with_sources(worker: LocalWorker, sources: Vec<(CacheSource, CacheConfig)>) -> Self {
        let mut by_key: HashMap<CacheKey, (usize, usize)> = HashMap::new();
        for (s, (_, config)) in sources.iter().enumerate() {
            for (r, record) in config.records.iter().enumerate() {
                // A record with layers wins over one that only links.
                match by_key.get(&record.key) {
                    Some(&(s0, r0))
                        if sources[s0].1.records[r0].layer.is_some() || record.layer.is_none() => {}
                    _ => {
                        by_key.insert(record.key, (s, r));
                    }
                }
            }
        }
        let mut by_inputs = HashMap::new();
        for (_, config) in &sources {
            for record in &config.records {
                if let Some(b) = record.by_inputs {
                    by_inputs.entry(b).or_insert(record.key);
                }
            }
        }
        Self {
            worker,
            sources,
            by_key,
            by_inputs,
            unpacked: Mutex::new(HashMap::new()),
        }
    }

    /// The registry source at `index` (of a [`Foreign`] blob).
    pub(crate) fn remote(&self, index: usize) -> Option<&dyn RemoteBlobs> {
        match self.sources.get(index) {
            Some((CacheSource::Registry(r), _)) => Some(&**r),
            _ => None,
        }
    }

    /// The key parts of the imported record for `key`, when one has them.
    fn explain_of(&self, key: &CacheKey) -> Option<KeyParts> {
        self.sources
            .iter()
            .flat_map(|(_, c)| &c.records)
            .find(|r| r.key == *key && r.explain.is_some())
            .and_then(|r| r.explain.clone())
    }

    /// The registry sources.
    pub(crate) fn remotes(&self) -> impl Iterator<Item = &dyn RemoteBlobs> {
        self.sources.iter().filter_map(|(s, _)| match s {
            CacheSource::Registry(r) => Some(&**r),
            CacheSource::Local(_) => None,
        })
    }

    /// How many records the sources hold.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Copies the layer chain of the record for `key` (when it has one and
    /// its blobs are there) into the layout `dest` and `config`; returns its
    /// top layer and creation time. `copied` maps (source, layer) to the
    /// layers already copied.
    fn copy_layers(
        &self,
        key: &CacheKey,
        dest: &Path,
        config: &mut CacheConfig,
        copied: &mut HashMap<(usize, usize), usize>,
        mut foreign: Option<&mut Foreign>,
    ) -> Result<Option<(usize, Option<Created>)>, CacheError> {
        let Some(&(source, record)) = self.by_key.get(key) else {
            return Ok(None);
        };
        let (from_source, src) = &self.sources[source];
        let record = &src.records[record];
        let Some(chain) = record.layer.and_then(|top| src.chain(top)) else {
            return Ok(None);
        };
        // Every blob of the chain first (a registry's downloaded): a chain
        // with a blob missing is not copied (its record only links).
        let mut files = HashMap::new();
        for &i in &chain {
            let blob = &src.layers[i].blob;
            if copied.contains_key(&(source, i)) || blob_path(dest, blob).is_file() {
                continue;
            }
            if let (Some(f), CacheSource::Registry(r)) = (foreign.as_deref_mut(), from_source) {
                match r.descriptor(blob) {
                    Some(d) => {
                        f.insert(blob.clone(), (Some(source), d.clone()));
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            match from_source.blob_file(blob) {
                Ok(f) => {
                    files.insert(i, f);
                }
                Err(_) => return Ok(None),
            }
        }
        let mut parent = None;
        for i in chain {
            if let Some(&j) = copied.get(&(source, i)) {
                parent = Some(j);
                continue;
            }
            let layer = &src.layers[i];
            let to = blob_path(dest, &layer.blob);
            if let Some(from) = files.get(&i) {
                let from: &Path = from;
                let tmp = tempfile::Builder::new()
                    .prefix(".tmp-copy-")
                    .tempfile_in(to.parent().unwrap_or(dest))
                    .map_err(io(dest))?;
                let mut r = fs_err::File::open(from).map_err(io(from))?;
                let mut w = tmp.reopen().map_err(io(&to))?;
                std::io::copy(&mut r, &mut w).map_err(io(&to))?;
                w.sync_all().map_err(io(&to))?;
                tmp.persist(&to).map_err(|e| io(&to)(e.error))?;
            }
            config.layers.push(CacheLayer {
                parent,
                ..layer.clone()
            });
            let j = config.layers.len() - 1;
            copied.insert((source, i), j);
            parent = Some(j);
        }
        let created = record
            .created_at
            .as_deref()
            .and_then(rbuild_image::time::parse_rfc3339);
        Ok(parent.map(|p| (p, created)))
    }

    fn unpack(&self, source: usize, top: usize) -> Result<SnapshotId, String> {
        let (src, config) = &self.sources[source];
        let chain = config
            .chain(top)
            .ok_or_else(|| format!("{}: a layer chain of the cache is broken", src.name()))?;
        let mut parent: Option<SnapshotId> = None;
        for i in chain {
            if let Some(id) = self.unpacked.lock().expect("unpacked").get(&(source, i)) {
                parent = Some(id.clone());
                continue;
            }
            let layer = &config.layers[i];
            // Fetched (and checked) only when the layer is applied: a base
            // layer this machine has already is not downloaded.
            let decoder = LazyLayer {
                src,
                blob: &layer.blob,
                open: None,
            };
            let created = layer
                .created_at
                .as_deref()
                .and_then(rbuild_image::time::parse_rfc3339);
            let id = self
                .worker
                .apply_cache_layer(
                    parent.as_ref(),
                    &layer.diff_id,
                    decoder,
                    layer.base,
                    created,
                )
                .map_err(|e| format!("cache layer {}: {e}", layer.blob))?;
            self.unpacked
                .lock()
                .expect("unpacked")
                .insert((source, i), id.clone());
            parent = Some(id);
        }
        parent.ok_or_else(|| "an empty layer chain".to_owned())
    }
}

impl ImportedCache for ImportedRecords {
    fn load(&self, key: &CacheKey, logger: &VertexLogger) -> Option<ResultRef> {
        let &(source, record) = self.by_key.get(key)?;
        let top = self.sources[source].1.records[record].layer?;
        match self.unpack(source, top) {
            Ok(id) => Some(LocalWorker::snapshot_result(&id)),
            Err(e) => {
                logger.log(
                    Stream::Stderr,
                    format!("imported cache not usable, running the step: {e}"),
                );
                None
            }
        }
    }

    fn has(&self, key: &CacheKey) -> bool {
        self.by_key.contains_key(key)
    }

    fn key_by_inputs(&self, by_inputs: &CacheKey) -> Option<CacheKey> {
        self.by_inputs.get(by_inputs).copied()
    }
}

/// Why the steps that ran missed the imported records (`--explain-cache`):
/// for each, the record of the same step (by name) in the imported caches,
/// and which parts of the key differ from it. One line per step.
pub fn explain_misses(
    graph: &BuildGraph,
    outputs: &Outputs,
    imported: &ImportedRecords,
) -> Vec<String> {
    // The closest record: the same step name, else the same place in the
    // Dockerfile (`[stage 2/5]`: the name holds expanded build args).
    let mut by_name: HashMap<&str, &CacheRecordDesc> = HashMap::new();
    let mut by_place: HashMap<&str, &CacheRecordDesc> = HashMap::new();
    for (_, config) in &imported.sources {
        for r in &config.records {
            by_name.entry(r.description.as_str()).or_insert(r);
            if let Some(place) = step_place(&r.description) {
                by_place.entry(place).or_insert(r);
            }
        }
    }
    let name_of_key: HashMap<CacheKey, &str> = outputs
        .iter()
        .filter_map(|(id, s)| Some((s.key, graph.get(*id)?.description.name.as_str())))
        .collect();
    let mut ids: Vec<VertexId> = outputs.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    let mut lines = Vec::new();
    for id in ids {
        let (Some(s), Some(vertex)) = (outputs.get(id), graph.get(id)) else {
            continue;
        };
        if s.cached || !s.cacheable {
            continue;
        }
        let name = &vertex.description.name;
        let record = by_name
            .get(name.as_str())
            .or_else(|| step_place(name).and_then(|p| by_place.get(p)));
        let Some(record) = record else {
            lines.push(format!(
                "{name}: no record of this step in the imported cache"
            ));
            continue;
        };
        let Some(theirs) = &record.explain else {
            lines.push(format!(
                "{name}: its record does not say what its key was made of"
            ));
            continue;
        };
        let ours = KeyParts {
            files: crate::cache_files::input_files(&imported.worker, graph, outputs, id),
            ..KeyParts::of(&vertex.op, &s.key_inputs)
        };
        let mut why = Vec::new();
        let names: BTreeSet<&String> = ours.fields.keys().chain(theirs.fields.keys()).collect();
        for f in names {
            if ours.fields.get(f) == theirs.fields.get(f) {
                continue;
            }
            why.push(match f.strip_prefix("env ") {
                Some(var) => format!("the value of {var} (a build arg or ENV) changed"),
                None if f == "args" => "the command changed".to_owned(),
                None if f == "chain_id" || f == "pin" => "the base image changed".to_owned(),
                None => format!("its {f} changed"),
            });
        }
        if ours.inputs.len() == theirs.inputs.len() {
            for (pos, (a, b)) in ours.inputs.iter().zip(&theirs.inputs).enumerate() {
                if a == b {
                    continue;
                }
                let input = vertex
                    .inputs
                    .get(pos)
                    .and_then(|i| graph.get(*i))
                    .map_or("an input", |v| v.description.name.as_str());
                why.push(match (a, b) {
                    (KeyInput::Content(_), KeyInput::Content(_)) => {
                        match crate::cache_files::describe_change(&ours.files, &theirs.files, pos) {
                            Some(which) => {
                                format!("the files it reads from {input} changed ({which})")
                            }
                            None => format!("the files it reads from {input} changed"),
                        }
                    }
                    (KeyInput::Key(k), _) => format!(
                        "its input {} changed",
                        name_of_key.get(k).copied().unwrap_or(input)
                    ),
                    _ => format!("its input {input} changed"),
                });
            }
        } else {
            why.push("its inputs changed".to_owned());
        }
        if why.is_empty() {
            why.push("its key changed".to_owned());
        }
        lines.push(format!("{name}: {}", why.join("; ")));
    }
    lines
}

/// The `[stage n/m]` prefix of a step's name.
fn step_place(name: &str) -> Option<&str> {
    name.starts_with('[')
        .then(|| name.find(']'))
        .flatten()
        .map(|end| &name[..=end])
        .filter(|p| !p.starts_with("[internal]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8, parent: Option<usize>) -> CacheLayer {
        CacheLayer {
            blob: Digest::of(&[n]),
            diff_id: Digest::of(&[n, n]),
            parent,
            base: false,
            created_at: None,
        }
    }

    #[test]
    fn chains_are_bottom_first_and_broken_ones_refused() {
        let mut c = CacheConfig {
            layers: vec![layer(0, None), layer(1, Some(0)), layer(2, Some(1))],
            ..CacheConfig::default()
        };
        assert_eq!(c.chain(2), Some(vec![0, 1, 2]));
        assert_eq!(c.chain(0), Some(vec![0]));
        assert_eq!(c.chain(3), None, "out of range");
        c.layers[0].parent = Some(2);
        assert_eq!(c.chain(2), None, "a loop");
        c.layers[0].parent = Some(9);
        assert_eq!(c.chain(1), None, "a parent out of range");
    }

    #[test]
    fn the_config_reads_back_and_names_createdat_as_buildkit_does() {
        let c = CacheConfig {
            layers: vec![CacheLayer {
                created_at: Some("2026-01-02T03:04:05.5Z".into()),
                ..layer(0, None)
            }],
            records: vec![CacheRecordDesc {
                key: CacheKey([7; 32]),
                description: "[1/2] RUN x".into(),
                inputs: vec![CacheKey([8; 32])],
                by_inputs: None,
                explain: Some(KeyParts::default()),
                layer: Some(0),
                created_at: None,
            }],
            cache_mounts: Vec::new(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""createdat":"2026-01-02T03:04:05.5Z""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<CacheConfig>(&json).unwrap(), c);
    }

    #[test]
    fn key_parts_name_env_entries_without_their_values() {
        let mut run = rbuild_ops::ExecOp::new(vec!["sh".into(), "-c".into(), "make".into()], 0);
        run.env = vec!["TOKEN=s3cret".into(), "VER=1".into()];
        let parts = KeyParts::of(&Op::Exec(run.clone()), &[]);
        assert!(parts.fields.contains_key("env TOKEN"));
        let json = serde_json::to_string(&parts).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        run.env[1] = "VER=2".into();
        let other = KeyParts::of(&Op::Exec(run), &[]);
        let changed: Vec<&String> = parts
            .fields
            .keys()
            .filter(|k| parts.fields.get(*k) != other.fields.get(*k))
            .collect();
        assert_eq!(changed, ["env VER"]);
    }
}
