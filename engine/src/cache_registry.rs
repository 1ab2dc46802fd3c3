//! The registry transport of the build cache: `--cache-to
//! type=registry,ref=REF`, `--cache-from type=registry,ref=REF` (or a bare
//! image reference) and the inline cache (`--cache-to type=inline`).
//!
//! **Export**: the cache is written as an OCI layout in a scratch directory
//! of the state root ([`crate::cache::export_local`]), then pushed: every
//! layer blob (HEAD first: a blob the repository has is not sent again; a
//! blob pushed or pulled from another repository of the same registry is
//! mounted; else uploaded from its file, streaming), then the config blob,
//! and the manifest LAST. Two machines exporting to the same reference at
//! once therefore never leave a manifest naming a blob not uploaded: the
//! manifest is the only thing that switches.
//!
//! **Import**: the reference is resolved to a manifest. One whose config has
//! rbuild's cache media type is a cache manifest; an image's config may carry
//! an inline cache under [`INLINE_CACHE_KEY`], whose layers are the image's
//! own (matched by diff ID). Only the manifest and the config are read at
//! import; a layer blob is downloaded when the solver asks for a record
//! whose result it is part of (laziness), verified, then unpacked.
//!
//! **Inline**: the records of `mode=min` travel in the pushed image's config
//! (as `BuildKit`'s `moby.buildkit.cache.v0`, under rbuild's own key), the
//! final result's layers being the image's layers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rbuild_image::{Digest, ImageConfig, Reference, Store};
use rbuild_oci::Platform;
use rbuild_oci::manifest::{self, Descriptor, Index, Manifest};
use rbuild_ops::{BuildGraph, VertexId};
use rbuild_registry::{Client, Mount, RemoteRef};
use rbuild_snapshotter::Compression;
use rbuild_solver::Outputs;
use rbuild_worker::LocalWorker;

use crate::cache::{
    CACHE_CONFIG_MEDIA_TYPE, CacheConfig, CacheError, CacheExport, CacheMode, ExportReport,
    ImportedRecords,
};
use crate::transfer::RegistryOptions;

/// The key of an image config's field holding rbuild's inline cache (the
/// cache description, its layers named by the image's diff IDs).
pub const INLINE_CACHE_KEY: &str = "rbuild.cache.v1";

/// How many blobs are uploaded at once (a cache has many small layers: each
/// costs a HEAD, a POST, a PATCH and a PUT).
const PARALLEL: usize = 6;

/// One `--cache-to type=registry,ref=REF[,mode=...][,compression=...][,ignore-error=...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryExport {
    pub reference: String,
    pub mode: CacheMode,
    pub compression: Compression,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: the build's cache mounts go too
    /// ([`crate::cache_mounts`]).
    pub cache_mounts: bool,
}

/// One `--cache-from type=registry,ref=REF[,cache-mounts=true]` (or a bare
/// image reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryImport {
    pub reference: String,
    /// `cache-mounts=true`: the cache's cache mounts seed the ones that do
    /// not exist here.
    pub cache_mounts: bool,
}

/// A tokio runtime that may be dropped anywhere (even on a thread of
/// another runtime): it is shut down in the background.
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn new(reference: &str) -> Result<Self, CacheError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
            .map_err(|e| remote_err(reference, format!("starting the runtime: {e}")))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.as_ref().expect("runtime until dropped").block_on(f)
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn remote_err(reference: &str, reason: impl Into<String>) -> CacheError {
    CacheError::Remote {
        reference: reference.to_owned(),
        reason: reason.into(),
    }
}

fn reg_err(reference: &str) -> impl Fn(rbuild_registry::Error) -> CacheError + '_ {
    move |e| CacheError::Registry {
        reference: reference.to_owned(),
        source: Box::new(e),
    }
}

fn parse_ref(reference: &str) -> Result<(Reference, RemoteRef), CacheError> {
    let r = Reference::parse_tagged(reference)
        .map_err(|e| remote_err(reference, format!("invalid reference format: {e}")))?;
    let remote = RemoteRef::new(&r);
    Ok((r, remote))
}

/// A cache in a registry, its blobs fetched when asked for.
pub struct RemoteCache {
    name: String,
    client: Client,
    remote: RemoteRef,
    rt: Rt,
    store: Store,
    /// The manifest's layers by digest.
    layers: HashMap<Digest, Descriptor>,
}

impl RemoteCache {
    /// Reads the cache manifest (or the image with an inline cache) that
    /// `reference` names, and its description.
    pub fn open(
        store: &Store,
        reference: &str,
        opts: &RegistryOptions,
    ) -> Result<(Self, CacheConfig), CacheError> {
        let (_, remote) = parse_ref(reference)?;
        let client = Client::new(opts.client.clone(), opts.credentials.clone());
        let rt = Rt::new(reference)?;
        let reg = reg_err(reference);
        let resolved = rt
            .block_on(client.resolve(&remote, &Platform::host()))
            .map_err(&reg)?;
        let m = resolved.manifest;
        let config_bytes = rt
            .block_on(client.get_blob_bytes(&remote, &m.config))
            .map_err(&reg)?;
        let config = if m.config.media_type == CACHE_CONFIG_MEDIA_TYPE {
            serde_json::from_slice::<CacheConfig>(&config_bytes).map_err(|e| {
                remote_err(reference, format!("cache config {}: {e}", m.config.digest))
            })?
        } else {
            inline_of(reference, &config_bytes, &m)?
        };
        let layers = m
            .layers
            .iter()
            .map(|d| (d.digest.clone(), d.clone()))
            .collect();
        Ok((
            Self {
                name: reference.to_owned(),
                client,
                remote,
                rt,
                store: store.clone(),
                layers,
            },
            config,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manifest's descriptor of layer blob `d`.
    pub fn descriptor(&self, d: &Digest) -> Option<&Descriptor> {
        self.layers.get(d)
    }

    /// Downloads the layer blob `d` into the store's scratch, verified
    /// against its digest and size; the file goes when the path is dropped.
    pub fn fetch_blob(&self, d: &Digest) -> Result<tempfile::TempPath, CacheError> {
        let desc = self
            .layers
            .get(d)
            .ok_or_else(|| remote_err(&self.name, format!("the manifest has no layer {d}")))?;
        let prefix = self
            .store
            .temp_prefix("cache-blob")
            .map_err(|e| remote_err(&self.name, e.to_string()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(self.store.tmp_dir())
            .map_err(|e| remote_err(&self.name, format!("scratch file: {e}")))?
            .into_temp_path();
        self.rt
            .block_on(self.client.download_blob(&self.remote, desc, &tmp, &|_| {}))
            .map_err(reg_err(&self.name))?;
        Ok(tmp)
    }
}

/// A registry cache as a source of an import's layers.
impl crate::cache_types::RemoteBlobs for RemoteCache {
    fn name(&self) -> &str {
        RemoteCache::name(self)
    }

    fn descriptor(&self, d: &Digest) -> Option<&Descriptor> {
        RemoteCache::descriptor(self, d)
    }

    fn fetch_blob(&self, d: &Digest) -> Result<tempfile::TempPath, CacheError> {
        RemoteCache::fetch_blob(self, d)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The registry sources of `imported`.
fn registry_sources(imported: &ImportedRecords) -> impl Iterator<Item = &RemoteCache> {
    imported
        .remotes()
        .filter_map(|r| r.as_any().downcast_ref::<RemoteCache>())
}

/// A downloaded blob, removed when the reader is dropped.
struct TempReader {
    file: std::fs::File,
    _path: tempfile::TempPath,
}

impl std::io::Read for TempReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

/// A registry cache as the source of its cache mounts' blobs.
impl crate::cache_mounts::BlobSource for RemoteCache {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn std::io::Read + Send>, CacheError> {
        let path = self.fetch_blob(digest)?;
        let file = fs_err::File::open(&path)
            .map_err(|e| remote_err(&self.name, e.to_string()))?
            .into_parts()
            .0;
        Ok(Box::new(TempReader { file, _path: path }))
    }
}

/// The inline cache of an image config, its layers renamed from the image's
/// diff IDs to the manifest's blobs.
fn inline_of(reference: &str, config: &[u8], m: &Manifest) -> Result<CacheConfig, CacheError> {
    let image = ImageConfig::from_slice(config)
        .map_err(|e| remote_err(reference, format!("image config: {e}")))?;
    let inline = image.extra.get(INLINE_CACHE_KEY).ok_or_else(|| {
        remote_err(
            reference,
            "neither a build cache nor an image with an inline cache (--cache-to type=inline)",
        )
    })?;
    let mut cache: CacheConfig = serde_json::from_value(inline.clone())
        .map_err(|e| remote_err(reference, format!("inline cache: {e}")))?;
    let diff_ids = &image.rootfs.diff_ids;
    for l in &mut cache.layers {
        if let Some(d) = diff_ids
            .iter()
            .position(|d| *d == l.diff_id)
            .and_then(|i| m.layers.get(i))
        {
            l.blob = d.digest.clone();
        }
    }
    Ok(cache)
}

/// One `--cache-from` of a registry: the source and its description (the
/// manifest and config read; no layer yet).
pub fn import(
    store: &Store,
    reference: &str,
    opts: &RegistryOptions,
) -> Result<(Arc<RemoteCache>, CacheConfig), CacheError> {
    RemoteCache::open(store, reference, opts).map(|(r, c)| (Arc::new(r), c))
}

/// A scratch directory of the state root (removed when dropped, swept if
/// the process dies).
fn scratch(store: &Store, reference: &str) -> Result<tempfile::TempDir, CacheError> {
    let prefix = store
        .temp_prefix("cache-export")
        .map_err(|e| remote_err(reference, e.to_string()))?;
    tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(store.tmp_dir())
        .map_err(|e| remote_err(reference, format!("scratch directory: {e}")))
}

/// The manifest of the OCI layout `dir` as written by `export_local`: its
/// bytes and parsed form.
fn layout_manifest(dir: &Path, reference: &str) -> Result<(Vec<u8>, Manifest), CacheError> {
    let bad = |e: String| remote_err(reference, e);
    let index: Index = serde_json::from_slice(
        &fs_err::read(dir.join("index.json")).map_err(|e| bad(e.to_string()))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let desc = index
        .manifests
        .first()
        .ok_or_else(|| bad("the cache layout has no manifest".into()))?;
    let bytes = fs_err::read(blob_path(dir, &desc.digest)).map_err(|e| bad(e.to_string()))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    Ok((bytes, m))
}

fn blob_path(dir: &Path, d: &Digest) -> std::path::PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

/// Exports the records of a solve to the registry reference `opts.reference`:
/// layer blobs, then the config, then the manifest.
#[allow(clippy::too_many_arguments)]
pub fn export(
    worker: &LocalWorker,
    store: &Store,
    graph: &BuildGraph,
    outputs: &Outputs,
    target: VertexId,
    imported: Option<&ImportedRecords>,
    mounts: Option<&crate::cache_mounts::ImportedMounts>,
    opts: &RegistryExport,
    registry: &RegistryOptions,
) -> Result<ExportReport, CacheError> {
    let reference = opts.reference.as_str();
    let (_, remote) = parse_ref(reference)?;
    let dir = scratch(store, reference)?;
    // Layers of records imported from a registry and never unpacked here
    // stay there: mounted or copied registry to registry below.
    let mut foreign = crate::cache::Foreign::new();
    let client = Arc::new(Client::new(
        registry.client.clone(),
        registry.credentials.clone(),
    ));
    let rt = Rt::new(reference)?;
    let has_blob = Dest {
        rt: &rt,
        client: &client,
        remote: &remote,
        store,
    };
    let report = crate::cache::export_layout(
        worker,
        graph,
        outputs,
        target,
        imported,
        mounts,
        &CacheExport {
            dest: dir.path().to_path_buf(),
            mode: opts.mode,
            compression: opts.compression,
            ignore_error: opts.ignore_error,
            cache_mounts: opts.cache_mounts,
        },
        Some(&mut foreign),
        Some(&has_blob),
    )?;
    let (m_bytes, m) = layout_manifest(dir.path(), reference)?;
    let config: CacheConfig = serde_json::from_slice(
        &fs_err::read(blob_path(dir.path(), &m.config.digest))
            .map_err(|e| remote_err(reference, e.to_string()))?,
    )
    .map_err(|e| remote_err(reference, e.to_string()))?;
    let diff_ids: HashMap<Digest, Digest> = config
        .layers
        .iter()
        .map(|l| (l.blob.clone(), l.diff_id.clone()))
        .collect();
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        for desc in m.layers.iter().filter(|d| !foreign.contains_key(&d.digest)) {
            // Repositories of the same registry known to have the blob:
            // the imported caches', then those it was pulled from or
            // pushed to.
            let mut mounts: Vec<String> = imported
                .into_iter()
                .flat_map(registry_sources)
                .filter(|r| r.descriptor(&desc.digest).is_some())
                .map(|r| (r.remote.registry.clone(), r.remote.repository.clone()))
                .chain(
                    diff_ids
                        .get(&desc.digest)
                        .map(|d| store.layer_sources(d))
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|s| s.digest == desc.digest)
                        .map(|s| (s.registry, s.repository)),
                )
                .filter(|(reg, repo)| *reg == remote.registry && *repo != remote.repository)
                .map(|(_, repo)| repo)
                .collect();
            mounts.dedup();
            let (client, remote, sem) = (Arc::clone(&client), remote.clone(), Arc::clone(&sem));
            let (digest, size, path) = (
                desc.digest.clone(),
                desc.size,
                blob_path(dir.path(), &desc.digest),
            );
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                push_blob(&client, &remote, &digest, size, &path, &mounts).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| remote_err(reference, e.to_string()))?
                .map_err(reg_err(reference))?;
        }
        for (digest, (source, desc)) in &foreign {
            // There already (a layer compressed here before).
            let Some(source) = source else { continue };
            let from = imported
                .and_then(|i| i.remote(*source))
                .and_then(|r| r.as_any().downcast_ref::<RemoteCache>())
                .ok_or_else(|| remote_err(reference, format!("no source for blob {digest}")))?;
            copy_foreign(&client, &remote, from, desc).await?;
        }
        push_blob(
            &client,
            &remote,
            &m.config.digest,
            m.config.size,
            &blob_path(dir.path(), &m.config.digest),
            &[],
        )
        .await
        .map_err(reg_err(reference))?;
        // The layers made here are in this repository now: a later push of
        // an image with them mounts them from here. (Not the ones mounted
        // from a source: their diff IDs are that source's word.)
        for desc in m.layers.iter().filter(|d| !foreign.contains_key(&d.digest)) {
            if let Some(diff_id) = diff_ids.get(&desc.digest) {
                let _ = store.add_layer_source(
                    diff_id,
                    rbuild_image::LayerSource {
                        digest: desc.digest.clone(),
                        media_type: desc.media_type.clone(),
                        size: desc.size,
                        registry: remote.registry.clone(),
                        repository: remote.repository.clone(),
                    },
                );
            }
        }
        // Last: only now does the reference name the new cache, whose
        // blobs are all there.
        client
            .put_manifest(&remote, manifest::OCI_MANIFEST, &m_bytes)
            .await
            .map_err(reg_err(reference))
    })?;
    Ok(report)
}

/// The destination of an export: HEADs, and the layers an image push
/// left in its registry (mounted rather than compressed again).
struct Dest<'a> {
    rt: &'a Rt,
    client: &'a Client,
    remote: &'a RemoteRef,
    store: &'a Store,
}

impl crate::cache::RegistryDest for Dest<'_> {
    fn has_blob(&self, d: &Digest) -> bool {
        self.rt
            .block_on(self.client.blob_exists(self.remote, d))
            .ok()
            .flatten()
            .is_some()
    }

    fn known_layer(&self, diff_id: &Digest, compression: Compression) -> Option<Descriptor> {
        let sources = self.store.layer_sources(diff_id);
        let same = sources.iter().rev().filter(|s| {
            s.registry == self.remote.registry
                && crate::transfer::compression_of(&s.media_type) == compression
        });
        for s in same {
            let desc =
                Descriptor::new(compression.oci_layer_media_type(), s.digest.clone(), s.size);
            if s.repository == self.remote.repository {
                if self.has_blob(&s.digest) {
                    return Some(desc);
                }
                continue;
            }
            let mounted = self.rt.block_on(self.client.mount_blob(
                self.remote,
                &s.repository,
                &s.digest,
            ));
            // A registry that cannot mount answers with an upload: the
            // layer is compressed and uploaded as any other then.
            if matches!(mounted, Ok(Mount::Mounted)) {
                return Some(desc);
            }
        }
        None
    }
}

/// A blob of the registry source `from` into `remote`'s repository: nothing
/// when it is there, a mount within one registry, else downloaded from
/// `from` and uploaded.
async fn copy_foreign(
    client: &Client,
    remote: &RemoteRef,
    from: &RemoteCache,
    desc: &Descriptor,
) -> Result<(), CacheError> {
    let reference = from.name();
    let target = format!("{}/{}", remote.registry, remote.repository);
    let reg = reg_err(&target);
    if client
        .blob_exists(remote, &desc.digest)
        .await
        .map_err(&reg)?
        .is_some()
    {
        return Ok(());
    }
    let mut started = None;
    if from.remote.registry == remote.registry {
        match client
            .mount_blob(remote, &from.remote.repository, &desc.digest)
            .await
        {
            Ok(Mount::Mounted) => return Ok(()),
            Ok(Mount::Upload(loc)) => started = Some(loc),
            Err(_) => {}
        }
    }
    let prefix = from
        .store
        .temp_prefix("cache-blob")
        .map_err(|e| remote_err(reference, e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(from.store.tmp_dir())
        .map_err(|e| remote_err(reference, format!("scratch file: {e}")))?
        .into_temp_path();
    client
        .download_blob(&from.remote, desc, &tmp, &|_| {})
        .await
        .map_err(reg_err(reference))?;
    client
        .upload_blob(remote, &desc.digest, desc.size, &tmp, started)
        .await
        .map_err(&reg)
}

/// One blob into `remote`'s repository: nothing when it is there, a mount
/// from one of `mounts` (repositories of the same registry that have it),
/// else an upload from `path`.
async fn push_blob(
    client: &Client,
    remote: &RemoteRef,
    digest: &Digest,
    size: u64,
    path: &Path,
    mounts: &[String],
) -> Result<(), rbuild_registry::Error> {
    if client.blob_exists(remote, digest).await?.is_some() {
        return Ok(());
    }
    let mut started = None;
    for from in mounts {
        match client.mount_blob(remote, from, digest).await {
            Ok(Mount::Mounted) => return Ok(()),
            Ok(Mount::Upload(loc)) => {
                started = Some(loc);
                break;
            }
            // The other repository may be gone or out of reach: upload.
            Err(_) => {}
        }
    }
    client
        .upload_blob(remote, digest, size, path, started)
        .await
}

/// The inline cache of a build (`--cache-to type=inline`): the records of
/// `mode=min`, the final result's layers named by their diff IDs (the
/// image's layers), for the image config's [`INLINE_CACHE_KEY`].
pub fn inline_cache(
    worker: &LocalWorker,
    store: &Store,
    graph: &BuildGraph,
    outputs: &Outputs,
    target: VertexId,
    imported: Option<&ImportedRecords>,
) -> Result<serde_json::Value, CacheError> {
    // Nothing is written: each layer is named by its diff ID.
    let config = crate::cache::describe(
        worker,
        graph,
        outputs,
        target,
        imported,
        &CacheExport {
            dest: store.tmp_dir(),
            mode: CacheMode::Min,
            compression: Compression::None,
            ignore_error: false,
            cache_mounts: false,
        },
        None,
        None,
        true,
    )?;
    serde_json::to_value(&config).map_err(|e| remote_err("inline cache", e.to_string()))
}
