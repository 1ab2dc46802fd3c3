//! Pull and push between the local store and a registry (`rbuild pull`,
//! `rbuild push`, `FROM` of an image not in the store): the registry crate
//! speaks the protocol, the image store keeps what came; this module moves
//! layers between them.
//!
//! **Pull**: the reference is resolved to the platform's manifest, the config
//! comes first, and only the layers whose diff ID the store lacks are
//! downloaded (a few at a time), verified against their digest, decompressed
//! (gzip, zstd or none) while hashed, and checked against the config's diff
//! ID (a download that breaks goes on with a `Range` from the bytes it has); one store transaction then records the image, its tag and its repo
//! digest. Each layer's compressed digest, media type and repository are kept
//! (`layer-sources/`).
//!
//! **Push**: per layer, a compressed form the registry already has (HEAD) is
//! used as is; one in another repository of the same registry is mounted;
//! else the layer is compressed with gzip (deterministic: the same layer gives
//! the same bytes on any machine, whatever its cores; incompressible pieces
//! stored) and uploaded while it is compressed, a few layers at a time. Then the config and a Docker schema 2
//! manifest (OCI when a layer is zstd), whose bytes depend only on the
//! layers' digests: an unchanged image pushed again uploads no blob and gets
//! the same manifest digest.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_image::manifest::{self, Descriptor, Manifest};
use rbuild_image::{Digest, ImageConfig, LayerSource, Reference, Store};
use rbuild_oci::Platform;
use rbuild_registry::{Client, CredentialSource, Mount, RemoteRef};
use rbuild_snapshotter::{Compression, Decoder, HashingWriter};
use tokio::sync::{Semaphore, mpsc};

/// How many layers are downloaded or uploaded at once.
const PARALLEL: usize = 3;

/// What a transfer reports, for the caller to render as docker does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferEvent {
    /// A line of its own (`1: Pulling from team/app`, `Digest: ...`, `Status: ...`).
    Line(String),
    /// A layer's status (`Pulling fs layer`, `Download complete`, `Pull complete`,
    /// `Pushed`, `Layer already exists`, `Mounted from REPO`), by its short ID.
    Layer { id: String, status: String },
    /// Bytes of a layer moved so far.
    Progress {
        id: String,
        current: u64,
        total: u64,
    },
}

/// Where the registries are and who we are to them.
#[derive(Clone)]
pub struct RegistryOptions {
    pub client: rbuild_registry::Options,
    pub credentials: Arc<dyn CredentialSource>,
    /// Mirrors per registry (`docker.io` → `127.0.0.1:5001`), tried first for pulls.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for RegistryOptions {
    /// Credentials as docker keeps them (`$DOCKER_CONFIG/config.json`, its
    /// helpers, podman's auth file).
    fn default() -> Self {
        Self {
            client: rbuild_registry::Options::default(),
            credentials: Arc::new(rbuild_registry::DockerConfig::from_env()),
            mirrors: std::collections::BTreeMap::new(),
        }
    }
}

pub use crate::gc::RegistryConfig;

impl RegistryOptions {
    /// The settings of `config.toml` (`[registry."HOST"]`), the `certs.d`
    /// directories (beside the configuration file first, then
    /// `~/.config/containers/certs.d`, `/etc/containers/certs.d`,
    /// `/etc/docker/certs.d`, as podman looks) and docker's credentials.
    pub fn load(state_root: &Path) -> Result<Self, crate::gc::ConfigError> {
        let cfg = crate::gc::Config::load(state_root)?;
        let mut opts = Self::default();
        opts.client.insecure = cfg
            .registry
            .iter()
            .filter(|(_, r)| r.http || r.insecure)
            .map(|(k, _)| k.clone())
            .collect();
        let mut dirs = vec![crate::gc::Config::dir(state_root).join("certs.d")];
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            dirs.push(PathBuf::from(home).join(".config/containers/certs.d"));
        }
        dirs.push(PathBuf::from("/etc/containers/certs.d"));
        dirs.push(PathBuf::from("/etc/docker/certs.d"));
        opts.client.certs_dirs = dirs;
        opts.mirrors = cfg
            .registry
            .into_iter()
            .filter(|(_, r)| !r.mirrors.is_empty())
            .map(|(k, r)| (k, r.mirrors))
            .collect();
        Ok(opts)
    }
}

/// The registry a `login`/`logout` argument names: `host[:port]`, with any
/// scheme and path dropped (`https://index.docker.io/v1/` is Docker Hub);
/// none means Docker Hub.
pub fn login_registry(server: Option<&str>) -> String {
    let Some(s) = server else {
        return rbuild_registry::reference::DOCKER_HUB.to_owned();
    };
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            rbuild_registry::reference::DOCKER_HUB.to_owned()
        }
        h => h.to_owned(),
    }
}

/// Checks `creds` against `registry`, then stores them as docker does.
pub fn login(
    registry: &str,
    creds: &rbuild_registry::Credentials,
    opts: &RegistryOptions,
    config: &rbuild_registry::DockerConfig,
) -> Result<(), TransferError> {
    let client = Client::new(
        opts.client.clone(),
        Arc::new(rbuild_registry::Fixed(creds.clone())),
    );
    runtime()?
        .block_on(client.login(registry))
        .map_err(|source| TransferError::Login {
            registry: registry.to_owned(),
            source: Box::new(source),
        })?;
    config
        .store(registry, creds)
        .map_err(|source| TransferError::Credentials {
            registry: registry.to_owned(),
            source,
        })
}

/// Why a pull or a push failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid reference format: {0}")]
    Reference(#[source] rbuild_oci::Error),
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: Box<rbuild_registry::Error>,
    },
    #[error("{reference}: {source}")]
    Store {
        reference: String,
        #[source]
        source: rbuild_image::Error,
    },
    #[error("{reference}: {reason}")]
    Image { reference: String, reason: String },
    #[error("{source}")]
    Login {
        registry: String,
        #[source]
        source: Box<rbuild_registry::Error>,
    },
    #[error("credentials for {registry}: {source}")]
    Credentials {
        registry: String,
        #[source]
        source: rbuild_registry::ConfigError,
    },
    #[error("An image does not exist locally with the tag: {0}")]
    NoLocalImage(String),
    #[error("starting the runtime")]
    Runtime(#[source] io::Error),
    #[error("{reference}: {source}")]
    Io {
        reference: String,
        #[source]
        source: io::Error,
    },
}

/// What a pull did.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image ID.
    pub id: Digest,
    /// The reference pulled (familiar form).
    pub reference: Reference,
    /// The digest the reference resolved to (the repo digest).
    pub digest: Digest,
    /// Layers downloaded (the rest the store had).
    pub downloaded: usize,
    /// Whether the store had the image already.
    pub up_to_date: bool,
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub reference: Reference,
    pub digest: Digest,
    pub size: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime, TransferError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(TransferError::Runtime)
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

/// Pulls `name` for `platform` (default: the host's) into the store and tags
/// it; reports to `report`. The image is held by this process's lease.
pub fn pull(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
    opts: &RegistryOptions,
    report: &mut dyn FnMut(TransferEvent),
) -> Result<Pulled, TransferError> {
    let r = Reference::parse_tagged(name).map_err(TransferError::Reference)?;
    let platform = platform.cloned().unwrap_or_else(Platform::host);
    let rt = runtime()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = pull_async(store.clone(), r, platform, opts.clone(), tx);
    rt.block_on(async move {
        let mut job = std::pin::pin!(job);
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => report(ev),
                res = &mut job => {
                    while let Ok(ev) = rx.try_recv() {
                        report(ev);
                    }
                    return res;
                }
            }
        }
    })
}

/// The tags of `name`'s repository in its registry (`pull -a`).
pub fn list_tags(name: &str, opts: &RegistryOptions) -> Result<Vec<String>, TransferError> {
    let r = Reference::parse(name).map_err(TransferError::Reference)?;
    let remote = RemoteRef::new(&r);
    let client = Client::new(opts.client.clone(), opts.credentials.clone());
    runtime()?
        .block_on(client.list_tags(&remote))
        .map_err(|source| TransferError::Registry {
            reference: r.repo.clone(),
            source: Box::new(source),
        })
}

/// A layer downloaded and decompressed into the store's staging.
struct Fetched {
    index: usize,
    path: PathBuf,
    diff_id: Digest,
}

async fn pull_async(
    store: Store,
    r: Reference,
    platform: Platform,
    opts: RegistryOptions,
    tx: mpsc::UnboundedSender<TransferEvent>,
) -> Result<Pulled, TransferError> {
    let remote = RemoteRef::new(&r);
    let reference = r.to_string();
    let reg_err = |source| TransferError::Registry {
        reference: reference.clone(),
        source: Box::new(source),
    };
    let store_err = |source| TransferError::Store {
        reference: reference.clone(),
        source,
    };
    let client = Arc::new(Client::new(opts.client.clone(), opts.credentials.clone()));
    let what = r.tag.clone().unwrap_or_else(|| {
        r.digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    });
    // Mirrors first (each a registry of its own, same repository), then the
    // registry itself.
    let mut candidates: Vec<RemoteRef> = opts
        .mirrors
        .get(&remote.registry)
        .into_iter()
        .flatten()
        .map(|m| RemoteRef {
            registry: m.clone(),
            ..remote.clone()
        })
        .collect();
    candidates.push(remote.clone());
    let mut found = None;
    let mut last = None;
    for c in candidates {
        match client.resolve(&c, &platform).await {
            Ok(res) => {
                found = Some((c, res));
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some((remote, resolved)) = found else {
        return Err(reg_err(
            last.expect("at least the registry itself was tried"),
        ));
    };
    let _ = tx.send(TransferEvent::Line(format!(
        "{what}: Pulling from {}",
        remote.repository
    )));
    let m = &resolved.manifest;
    // A config the store has (the image is there) is not fetched again.
    let stored = store
        .has_blob(&m.config.digest)
        .then(|| store.read_blob(&m.config.digest).ok())
        .flatten()
        .filter(|b| Digest::of(b) == m.config.digest);
    let config = match stored {
        Some(b) => b,
        None => client
            .get_blob_bytes(&remote, &m.config)
            .await
            .map_err(reg_err)?,
    };
    let cfg = ImageConfig::from_slice(&config).map_err(|e| TransferError::Image {
        reference: reference.clone(),
        reason: format!("bad image config: {e}"),
    })?;
    let diff_ids = cfg.rootfs.diff_ids.clone();
    if diff_ids.len() != m.layers.len() {
        return Err(TransferError::Image {
            reference: reference.clone(),
            reason: format!(
                "the manifest has {} layers, the config {} diff IDs",
                m.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let id = m.config.digest.clone();
    let had_image = store.image(&id).is_ok();
    let mut txn = store.begin().map_err(store_err)?;
    let staging = txn.staging_dir().to_owned();
    let sem = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    let mut wanted = std::collections::HashSet::new();
    for (i, (desc, diff_id)) in m.layers.iter().zip(&diff_ids).enumerate() {
        let sid = short(&desc.digest);
        if store.has_blob(diff_id) || !wanted.insert(diff_id.clone()) {
            let _ = tx.send(TransferEvent::Layer {
                id: sid,
                status: "Already exists".into(),
            });
            continue;
        }
        let _ = tx.send(TransferEvent::Layer {
            id: sid.clone(),
            status: "Pulling fs layer".into(),
        });
        let (client, remote, desc, diff_id, tx, sem, staging) = (
            Arc::clone(&client),
            remote.clone(),
            desc.clone(),
            diff_id.clone(),
            tx.clone(),
            Arc::clone(&sem),
            staging.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let progress = layer_progress(&tx, &sid, desc.size);
            let out = staging.join(format!("layer-{i}"));
            // Downloaded and unpacked at once; a transfer that breaks goes
            // on where it stopped, else starts again from the beginning.
            let mut attempt = 0;
            let got = loop {
                match fetch_layer(&client, &remote, &desc, &out, &*progress).await {
                    Ok(d) => break d,
                    Err(LayerFailure::Registry(e))
                        if e.is_transient() && attempt < client.options().retries =>
                    {
                        attempt += 1;
                        tokio::time::sleep(client.options().backoff * attempt).await;
                    }
                    Err(LayerFailure::Registry(e)) => return Err((None, Some(e))),
                    Err(LayerFailure::Io(e)) => return Err((Some(e), None)),
                }
            };
            let _ = tx.send(TransferEvent::Layer {
                id: sid.clone(),
                status: "Verifying Checksum".into(),
            });
            let _ = tx.send(TransferEvent::Layer {
                id: sid.clone(),
                status: "Download complete".into(),
            });
            if got != diff_id {
                return Err((
                    Some(io::Error::other(format!(
                        "layer {} decompresses to {got}, the config says {diff_id}",
                        desc.digest
                    ))),
                    None,
                ));
            }
            Ok::<_, (Option<io::Error>, Option<rbuild_registry::Error>)>(Fetched {
                index: i,
                path: out,
                diff_id,
            })
        });
    }
    let mut fetched = Vec::new();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(f)) => fetched.push(f),
            Ok(Err((_, Some(e)))) => return Err(reg_err(e)),
            Ok(Err((Some(e), _))) => {
                return Err(TransferError::Io {
                    reference: reference.clone(),
                    source: e,
                });
            }
            Ok(Err((None, None))) => unreachable!("a failure carries its error"),
            Err(e) => {
                return Err(TransferError::Io {
                    reference: reference.clone(),
                    source: io::Error::other(e.to_string()),
                });
            }
        }
    }
    fetched.sort_by_key(|f| f.index);
    let downloaded = fetched.len();
    for f in fetched {
        txn.adopt_layer(f.path, f.diff_id).map_err(store_err)?;
        let _ = tx.send(TransferEvent::Layer {
            id: short(&m.layers[f.index].digest),
            status: "Pull complete".into(),
        });
    }
    let tags = if r.tag.is_some() {
        vec![Reference {
            repo: r.repo.clone(),
            tag: r.tag.clone(),
            digest: None,
        }]
    } else {
        Vec::new()
    };
    let got_id = txn.add_image(&config, tags, None).map_err(store_err)?;
    txn.add_repo_digest(&got_id, format!("{}@{}", r.repo, resolved.digest));
    txn.commit_held().map_err(store_err)?;
    for (desc, diff_id) in m.layers.iter().zip(&diff_ids) {
        // Best effort: a missing record only costs a recompression at push.
        let _ = store.add_layer_source(
            diff_id,
            LayerSource {
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                registry: remote.registry.clone(),
                repository: remote.repository.clone(),
            },
        );
    }
    let _ = tx.send(TransferEvent::Line(format!("Digest: {}", resolved.digest)));
    let up_to_date = had_image && downloaded == 0;
    let _ = tx.send(TransferEvent::Line(if up_to_date {
        format!("Status: Image is up to date for {r}")
    } else {
        format!("Status: Downloaded newer image for {r}")
    }));
    Ok(Pulled {
        id: got_id,
        reference: r,
        digest: resolved.digest,
        downloaded,
        up_to_date,
    })
}

/// Why fetching a layer failed.
enum LayerFailure {
    Registry(rbuild_registry::Error),
    Io(io::Error),
}

/// The receiving end of the download: the bytes as a `Read` for the decoder.
struct ChunkReader {
    rx: mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// Downloads one layer and unpacks it (gzip, zstd or none) into `out` as it
/// arrives, on a blocking thread; returns the diff ID of what was written.
/// The download is verified (size and digest) before this returns: a layer
/// whose bytes do not match fails even when they decompressed.
async fn fetch_layer(
    client: &Client,
    remote: &RemoteRef,
    desc: &Descriptor,
    out: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Digest, LayerFailure> {
    let mut stream = client
        .blob_stream(remote, desc)
        .await
        .map_err(LayerFailure::Registry)?;
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(8);
    let dest = out.to_owned();
    let unpack = tokio::task::spawn_blocking(move || -> io::Result<Digest> {
        let reader = ChunkReader {
            rx,
            chunk: bytes::Bytes::new(),
        };
        let mut dec = Decoder::new(io::BufReader::with_capacity(256 * 1024, reader))?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(
            256 * 1024,
            fs_err::File::create(&dest)?,
        ));
        io::copy(&mut dec, &mut w)?;
        let (buf, d, _) = w.finish();
        let f = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        Ok(d)
    });
    let mut resumed = 0;
    let fed = loop {
        match stream.next().await {
            Ok(Some(chunk)) => {
                progress(stream.received());
                if tx.send(chunk).await.is_err() {
                    // The decoder stopped: its error says why.
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            // A transfer that broke goes on from the bytes received (the
            // decoder waits); a registry that ignores the range makes the
            // caller start again.
            Err(e) if e.is_transient() && resumed < client.options().retries => {
                resumed += 1;
                tokio::time::sleep(client.options().backoff * resumed).await;
                match client.resume_blob_stream(remote, &mut stream).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break Err(e),
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let unpacked = unpack
        .await
        .map_err(|e| LayerFailure::Io(io::Error::other(e.to_string())))?;
    // A broken or wrong download is the registry's failure first (and is
    // retried); else the decoder's.
    fed.map_err(LayerFailure::Registry)?;
    unpacked.map_err(LayerFailure::Io)
}

/// How pushed layers are compressed: gzip (as docker) or zstd (an OCI
/// manifest), at `level` (the snapshotter's default when `None`). A layer
/// the registry has in that compression already is used as it is, whatever
/// its level (as BuildKit does without `force-compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushCompression {
    pub compression: Compression,
    pub level: Option<u32>,
}

impl From<Compression> for PushCompression {
    fn from(compression: Compression) -> Self {
        Self {
            compression,
            level: None,
        }
    }
}

/// Pushes the image tagged `name` to its registry, its layers compressed
/// as `compression` says; reports to `report`.
pub fn push(
    store: &Store,
    name: &str,
    compression: impl Into<PushCompression>,
    opts: &RegistryOptions,
    report: &mut dyn FnMut(TransferEvent),
) -> Result<Pushed, TransferError> {
    let r = Reference::parse_tag(name).map_err(TransferError::Reference)?;
    let img = store
        .resolve_and_hold(&r.to_string())
        .map_err(|_| TransferError::NoLocalImage(r.to_string()))?;
    let rt = runtime()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = push_async(store.clone(), r, img, compression.into(), opts.clone(), tx);
    rt.block_on(async move {
        let mut job = std::pin::pin!(job);
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => report(ev),
                res = &mut job => {
                    while let Ok(ev) = rx.try_recv() {
                        report(ev);
                    }
                    return res;
                }
            }
        }
    })
}

/// The familiar name of a repository of `registry` (for `Mounted from`).
fn familiar(registry: &str, repository: &str) -> String {
    if registry == rbuild_registry::reference::DOCKER_HUB {
        repository
            .strip_prefix("library/")
            .unwrap_or(repository)
            .to_owned()
    } else {
        format!("{registry}/{repository}")
    }
}

type PushFailure = (
    Option<io::Error>,
    Option<rbuild_registry::Error>,
    Option<rbuild_image::Error>,
);

/// The compression a layer media type names.
pub(crate) fn compression_of(media_type: &str) -> Compression {
    if media_type.contains("zstd") {
        Compression::Zstd
    } else if media_type.contains("gzip") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// The media type of a layer rbuild compressed (docker's where it has one).
fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => manifest::DOCKER_LAYER_GZIP,
        Compression::Zstd => manifest::OCI_LAYER_ZSTD,
        Compression::None => manifest::DOCKER_LAYER,
    }
}

/// One layer to push.
struct LayerPush {
    client: Arc<Client>,
    store: Store,
    remote: RemoteRef,
    diff_id: Digest,
    compression: PushCompression,
    scratch: PathBuf,
    tx: mpsc::UnboundedSender<TransferEvent>,
    /// Layers compressed at once: a permit is held while the layer is
    /// compressed and sent, not for the requests before and after.
    sem: Arc<Semaphore>,
}

/// Pushes one layer; returns its descriptor in the manifest.
async fn push_layer(job: LayerPush) -> Result<Descriptor, PushFailure> {
    let LayerPush {
        client,
        store,
        remote,
        diff_id,
        compression,
        scratch,
        tx,
        sem,
    } = job;
    let reg = |e| (None, Some(e), None);
    let sid = short(&diff_id);
    let status = |s: String| {
        let _ = tx.send(TransferEvent::Layer {
            id: sid.clone(),
            status: s,
        });
    };
    let sources: Vec<LayerSource> = store
        .layer_sources(&diff_id)
        .into_iter()
        .filter(|s| {
            s.registry == remote.registry
                && compression_of(&s.media_type) == compression.compression
        })
        .rev()
        .collect();
    // Known here: the same repository first, then the others (mounts).
    for s in sources.iter().filter(|s| s.repository == remote.repository) {
        if client
            .blob_exists(&remote, &s.digest)
            .await
            .map_err(reg)?
            .is_some()
        {
            status("Layer already exists".into());
            return Ok(Descriptor::new(&s.media_type, s.digest.clone(), s.size));
        }
    }
    let mut upload_at = None;
    for s in sources.iter().filter(|s| s.repository != remote.repository) {
        if client
            .blob_exists(&remote, &s.digest)
            .await
            .map_err(reg)?
            .is_some()
        {
            status("Layer already exists".into());
            return Ok(Descriptor::new(&s.media_type, s.digest.clone(), s.size));
        }
        match client.mount_blob(&remote, &s.repository, &s.digest).await {
            Ok(Mount::Mounted) => {
                status(format!(
                    "Mounted from {}",
                    familiar(&remote.registry, &s.repository)
                ));
                record(&store, &diff_id, s, &remote);
                return Ok(Descriptor::new(&s.media_type, s.digest.clone(), s.size));
            }
            Ok(Mount::Upload(loc)) => {
                upload_at = Some(loc);
                break;
            }
            // The source repository may be gone or out of reach: upload.
            Err(_) => {}
        }
    }
    // Compressed while it is sent, as docker does; a registry that does not
    // take it so gets it from a file (with retries).
    let permit = Arc::clone(&sem)
        .acquire_owned()
        .await
        .map_err(|e| (Some(io::Error::other(e.to_string())), None, None))?;
    status("Pushing".into());
    let progress = layer_progress(&tx, &sid, store.blob_size(&diff_id).unwrap_or(0));
    match push_streamed(
        &client,
        &store,
        &remote,
        &diff_id,
        compression,
        upload_at.take(),
        progress,
        permit,
    )
    .await
    {
        Ok(desc) => {
            status("Pushed".into());
            let src = LayerSource {
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                registry: remote.registry.clone(),
                repository: remote.repository.clone(),
            };
            record(&store, &diff_id, &src, &remote);
            return Ok(desc);
        }
        Err(e @ (None, None, Some(_))) => return Err(e),
        Err(_) => {}
    }
    let path = scratch.join(format!("layer-{}", diff_id.hex()));
    let p2 = path.clone();
    let s2 = store.clone();
    let d2 = diff_id.clone();
    let permit = sem
        .acquire_owned()
        .await
        .map_err(|e| (Some(io::Error::other(e.to_string())), None, None))?;
    let digests = tokio::task::spawn_blocking(move || compress(&s2, &d2, compression, &p2))
        .await
        .map_err(|e| (Some(io::Error::other(e.to_string())), None, None))?
        .map_err(|e| (None, None, Some(e)))?;
    drop(permit);
    let desc = Descriptor::new(
        layer_media_type(compression.compression),
        digests.0.clone(),
        digests.1,
    );
    let src = LayerSource {
        digest: desc.digest.clone(),
        media_type: desc.media_type.clone(),
        size: desc.size,
        registry: remote.registry.clone(),
        repository: remote.repository.clone(),
    };
    if client
        .blob_exists(&remote, &desc.digest)
        .await
        .map_err(reg)?
        .is_some()
    {
        status("Layer already exists".into());
    } else {
        client
            .upload_blob(&remote, &desc.digest, desc.size, &path, upload_at)
            .await
            .map_err(reg)?;
        status("Pushed".into());
    }
    let _ = fs_err::tokio::remove_file(&path).await;
    record(&store, &diff_id, &src, &remote);
    Ok(desc)
}

/// Compresses the layer `diff_id` on a blocking thread while uploading the
/// bytes; returns the layer's descriptor. `permit` goes once the last byte
/// is compressed (the upload's PUT does not hold back the next layer).
#[allow(clippy::too_many_arguments)]
async fn push_streamed(
    client: &Client,
    store: &Store,
    remote: &RemoteRef,
    diff_id: &Digest,
    compression: PushCompression,
    started: Option<String>,
    progress: Progress,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Descriptor, PushFailure> {
    // Two 1 MiB pieces queued for the upload: memory stays small with
    // several layers in flight.
    let (txc, rxc) = mpsc::channel::<io::Result<bytes::Bytes>>(2);
    let (s2, d2) = (store.clone(), diff_id.clone());
    let producer =
        tokio::task::spawn_blocking(move || compress_into(&s2, &d2, compression, &txc, &*progress));
    let stream = futures_util::stream::unfold(rxc, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let size = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let size2 = Arc::clone(&size);
    let done = async move {
        let produced = producer.await;
        drop(permit);
        let (d, n) = produced
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        size2.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(d)
    };
    let digest = client
        .upload_stream(remote, started, stream, done)
        .await
        .map_err(|e| (None, Some(e), None))?;
    Ok(Descriptor::new(
        layer_media_type(compression.compression),
        digest,
        size.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// Writes the stored layer `diff_id` compressed into `tx`, in chunks;
/// returns the compressed digest and size. A failure is sent too, so the
/// upload fails rather than ending early.
fn compress_into(
    store: &Store,
    diff_id: &Digest,
    compression: PushCompression,
    tx: &mpsc::Sender<io::Result<bytes::Bytes>>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> rbuild_image::Result<(Digest, u64)> {
    let result = (|| -> rbuild_image::Result<(Digest, u64)> {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let out = rbuild_snapshotter::ChunkWriter::new(1 << 20, |c| {
            tx.blocking_send(Ok(bytes::Bytes::from(c)))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
        });
        // A layer kept as a snapshot is written out as a tar on this
        // thread, straight into the encoder (no thread and no copies between
        // the tar and the compression), its diff ID checked at the end: a
        // mismatch ends the upload's stream with an error, so no PUT names
        // the bytes.
        if let rbuild_snapshotter::squash::LayerInput::Upper { dir, epoch } =
            store.layer_input(diff_id)?
        {
            let (mut out, d) = rbuild_snapshotter::compress::write_layer_at(
                out,
                compression.compression,
                compression.level,
                threads,
                |w| {
                    let counted = CountedWriter {
                        inner: w,
                        n: 0,
                        progress,
                    };
                    rbuild_snapshotter::snapshots::SnapshotStore::write_upper_layer(
                        &dir, counted, epoch,
                    )
                    .map(drop)
                    .map_err(io::Error::other)
                },
            )?;
            if d.diff_id != *diff_id {
                return Err(rbuild_image::Error::DigestMismatch {
                    expected: diff_id.clone(),
                    actual: d.diff_id,
                });
            }
            out.flush()?;
            return Ok((d.digest, d.size));
        }
        let mut blob = Counted {
            inner: store.open_blob(diff_id)?,
            n: 0,
            progress,
        };
        // The uncompressed bytes are not hashed again: the store verified
        // the blob when it was written.
        let (mut out, digest, size) = rbuild_snapshotter::compress::compress_known(
            out,
            compression.compression,
            compression.level,
            threads,
            |w| copy_big(&mut blob, w),
        )?;
        out.flush()?;
        Ok((digest, size))
    })();
    if let Err(e) = &result {
        let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
    }
    result
}

/// Copies `r` into `w` in 1 MiB reads: writes that large go past the
/// layer writer's buffer straight to the encoder (one copy less than
/// `io::copy`'s 8 KiB steps).
fn copy_big(r: &mut dyn io::Read, w: &mut dyn io::Write) -> io::Result<()> {
    let mut buf = vec![0; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => w.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A callback given the bytes of a layer moved so far.
type Progress = Box<dyn Fn(u64) + Send + Sync>;

/// [`TransferEvent::Progress`] of the layer `id` (`total` bytes) into `tx`,
/// at most one per MiB (and the last one).
fn layer_progress(tx: &mpsc::UnboundedSender<TransferEvent>, id: &str, total: u64) -> Progress {
    let (tx, id) = (tx.clone(), id.to_owned());
    let last = std::sync::atomic::AtomicU64::new(0);
    Box::new(move |n: u64| {
        let prev = last.load(std::sync::atomic::Ordering::Relaxed);
        // (A retried transfer starts again from 0.)
        if n < prev || n - prev >= 1 << 20 || n == total {
            last.store(n, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(TransferEvent::Progress {
                id: id.clone(),
                current: n,
                total,
            });
        }
    })
}

/// A reader that reports the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    n: u64,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

impl<R: io::Read> io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        (self.progress)(self.n);
        Ok(k)
    }
}

/// A writer that reports the bytes written through it.
struct CountedWriter<'a, 'w> {
    inner: &'w mut dyn io::Write,
    n: u64,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

impl io::Write for CountedWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        (self.progress)(self.n);
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Remembers that `diff_id` is `src`'s blob in `remote`'s repository too.
fn record(store: &Store, diff_id: &Digest, src: &LayerSource, remote: &RemoteRef) {
    let _ = store.add_layer_source(
        diff_id,
        LayerSource {
            repository: remote.repository.clone(),
            registry: remote.registry.clone(),
            ..src.clone()
        },
    );
}

/// Compresses the stored layer `diff_id` into `dest`: (digest, size).
fn compress(
    store: &Store,
    diff_id: &Digest,
    compression: PushCompression,
    dest: &Path,
) -> rbuild_image::Result<(Digest, u64)> {
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let out = io::BufWriter::with_capacity(256 * 1024, fs_err::File::create(dest)?);
    let mut blob = store.open_blob(diff_id)?;
    let (out, d) = rbuild_snapshotter::compress::write_layer_at(
        out,
        compression.compression,
        compression.level,
        threads,
        |w| io::copy(&mut blob, w).map(drop),
    )?;
    let mut f = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    f.flush()?;
    if d.diff_id != *diff_id {
        return Err(rbuild_image::Error::DigestMismatch {
            expected: diff_id.clone(),
            actual: d.diff_id,
        });
    }
    Ok((d.digest, d.size))
}

async fn push_async(
    store: Store,
    r: Reference,
    img: rbuild_image::Image,
    compression: PushCompression,
    opts: RegistryOptions,
    tx: mpsc::UnboundedSender<TransferEvent>,
) -> Result<Pushed, TransferError> {
    let remote = RemoteRef::new(&r);
    let reference = r.to_string();
    let reg_err = |source| TransferError::Registry {
        reference: reference.clone(),
        source: Box::new(source),
    };
    let io_err = |source| TransferError::Io {
        reference: reference.clone(),
        source,
    };
    let client = Arc::new(Client::new(opts.client.clone(), opts.credentials.clone()));
    let _ = tx.send(TransferEvent::Line(format!(
        "The push refers to repository [{}/{}]",
        remote.registry, remote.repository
    )));
    let scratch = tempfile::Builder::new()
        .prefix(
            &store
                .temp_prefix("push")
                .map_err(|source| TransferError::Store {
                    reference: reference.clone(),
                    source,
                })?,
        )
        .tempdir_in(store.tmp_dir())
        .map_err(io_err)?;
    let mut unique: Vec<Digest> = Vec::new();
    for d in img.diff_ids() {
        if !unique.contains(d) {
            unique.push(d.clone());
        }
    }
    // PARALLEL layers are compressed and sent at once; twice as many are
    // under way, so the HEAD, POST and PUT of the others overlap with that
    // work (docker-registry took 6-250 ms per PUT, committing the blob).
    let sem = Arc::new(Semaphore::new(PARALLEL));
    let requests = Arc::new(Semaphore::new(2 * PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, d) in unique.iter().enumerate() {
        let _ = tx.send(TransferEvent::Layer {
            id: short(d),
            status: "Preparing".into(),
        });
        let (client, store, remote, d, scratch, tx, sem, requests) = (
            Arc::clone(&client),
            store.clone(),
            remote.clone(),
            d.clone(),
            scratch.path().to_owned(),
            tx.clone(),
            Arc::clone(&sem),
            Arc::clone(&requests),
        );
        tasks.spawn(async move {
            let _under_way = requests.acquire_owned().await;
            let job = LayerPush {
                client,
                store,
                remote,
                diff_id: d,
                compression,
                scratch,
                tx,
                sem,
            };
            (i, push_layer(job).await)
        });
    }
    let mut descs: Vec<Option<Descriptor>> = vec![None; unique.len()];
    while let Some(res) = tasks.join_next().await {
        let (i, res) = res.map_err(|e| io_err(io::Error::other(e.to_string())))?;
        match res {
            Ok(d) => descs[i] = Some(d),
            Err((_, Some(e), _)) => return Err(reg_err(e)),
            Err((_, _, Some(e))) => {
                return Err(TransferError::Store {
                    reference: reference.clone(),
                    source: e,
                });
            }
            Err((Some(e), _, _)) => return Err(io_err(e)),
            Err((None, None, None)) => unreachable!("a failure carries its error"),
        }
    }
    let layers: Vec<Descriptor> = img
        .diff_ids()
        .iter()
        .map(|d| {
            let i = unique.iter().position(|u| u == d).unwrap_or(0);
            descs[i].clone().expect("every layer pushed")
        })
        .collect();
    // Config: there already, or mounted from a repository of the same
    // registry it was pushed to or pulled from, or uploaded.
    let mut config_upload = None;
    let mut config_there = client
        .blob_exists(&remote, &img.id)
        .await
        .map_err(reg_err)?
        .is_some();
    let siblings = img.record.repo_digests.iter().filter_map(|rd| {
        let (name, _) = rd.split_once('@')?;
        let sib = RemoteRef::new(&Reference::parse(name).ok()?);
        (sib.registry == remote.registry && sib.repository != remote.repository)
            .then_some(sib.repository)
    });
    for from in siblings {
        if config_there {
            break;
        }
        match client.mount_blob(&remote, &from, &img.id).await {
            Ok(Mount::Mounted) => config_there = true,
            Ok(Mount::Upload(loc)) => {
                config_upload = Some(loc);
                break;
            }
            Err(_) => {}
        }
    }
    if !config_there {
        let path = scratch.path().join("config");
        fs_err::write(&path, &img.raw_config).map_err(io_err)?;
        client
            .upload_blob(
                &remote,
                &img.id,
                img.raw_config.len() as u64,
                &path,
                config_upload,
            )
            .await
            .map_err(reg_err)?;
    }
    // Docker's schema 2 has no zstd layers: those make an OCI manifest.
    let oci = layers
        .iter()
        .any(|l| compression_of(&l.media_type) == Compression::Zstd);
    let (mt, config_mt) = if oci {
        (manifest::OCI_MANIFEST, manifest::OCI_CONFIG)
    } else {
        (manifest::DOCKER_MANIFEST, manifest::DOCKER_CONFIG)
    };
    let layers = layers
        .into_iter()
        .map(|mut l| {
            // The same bytes under the manifest's family of media types.
            let mt = match (oci, compression_of(&l.media_type)) {
                (false, Compression::Gzip) => manifest::DOCKER_LAYER_GZIP,
                (false, _) => manifest::DOCKER_LAYER,
                (true, Compression::Gzip) => manifest::OCI_LAYER_GZIP,
                (true, Compression::Zstd) => manifest::OCI_LAYER_ZSTD,
                (true, Compression::None) => manifest::OCI_LAYER,
            };
            mt.clone_into(&mut l.media_type);
            l
        })
        .collect();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(mt.into()),
        config: Descriptor::new(config_mt, img.id.clone(), img.raw_config.len() as u64),
        layers,
        // Annotations belong to OCI manifests (Docker's schema 2 has none).
        annotations: Some(img.record.annotations.clone())
            .filter(|a| !a.is_empty() && mt == manifest::OCI_MANIFEST),
        extra: std::collections::BTreeMap::new(),
    };
    let bytes = rbuild_oci::json::canonical(&m).map_err(|e| TransferError::Image {
        reference: reference.clone(),
        reason: e.to_string(),
    })?;
    let digest = client
        .put_manifest(&remote, mt, &bytes)
        .await
        .map_err(reg_err)?;
    let _ = store.add_repo_digest(&img.id, &format!("{}@{digest}", r.repo));
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let _ = tx.send(TransferEvent::Line(format!(
        "{tag}: digest: {digest} size: {}",
        bytes.len()
    )));
    Ok(Pushed {
        reference: r,
        digest,
        size: bytes.len(),
    })
}
