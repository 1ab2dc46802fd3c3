//! One build: plan with the frontend's planner (`rbuild_frontend::build_plan`),
//! solve over the local worker (`rbuild_worker::LocalWorker`), export through an
//! [`Exporter`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_frontend::dockerignore::PatternMatcher;
use rbuild_frontend::{
    BuildOptions, BuildPlan, Entitlements, ImageResolver, Platform, ResolveError, ResolvedImage,
    build_plan,
};
use rbuild_image::{Digest, Reference, Store};
use rbuild_ops::{ImagePin, NetworkMode, VertexId};
use rbuild_snapshotter::layout::StateLayout;
use rbuild_solver::progress::Event;
use rbuild_solver::{CacheIndex, CacheIndexError, ExecError, ResultRef, SolveError, Solver};
use rbuild_worker::{ExportOptions, LocalWorker, WorkerOptions};

use crate::error::StepFailure;
use crate::exporter::{ExportContext, ExportError, Exporter, Phases};
pub use crate::report::Reporter;
use crate::transfer::{RegistryOptions, TransferEvent};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step failed.
    #[error("{}: {}", .0.name, .0.source)]
    Step(Box<StepFailure>),
    /// Planning failed: an error in the Dockerfile or a base image not found.
    #[error(transparent)]
    Plan(Box<rbuild_frontend::FrontendError>),
    #[error("opening the image store {}", .root.display())]
    Store {
        root: PathBuf,
        #[source]
        source: rbuild_image::Error,
    },
    #[error("{}", .file.display())]
    Ignore {
        file: PathBuf,
        #[source]
        source: rbuild_frontend::dockerignore::PatternError,
    },
    /// The worker could not start (or the kernel lacks what it needs).
    #[error(transparent)]
    Worker(ExecError),
    #[error(transparent)]
    CacheIndex(#[from] CacheIndexError),
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// The garbage collection after the build failed.
    #[error("collecting the build cache")]
    Gc(#[source] crate::gc::GcError),
    /// SIGINT or SIGTERM: the solve was cancelled and cleaned up.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Solve(Box<SolveError>),
    #[error("internal error: the target was not solved")]
    TargetNotSolved,
    #[error(transparent)]
    Export(#[from] ExportError),
    /// `--cache-to` could not be written.
    #[error("exporting cache to {}", .dest.display())]
    CacheExport {
        dest: PathBuf,
        #[source]
        source: crate::cache::CacheError,
    },
    /// `--cache-to type=registry` could not be written.
    #[error("exporting cache to {reference}")]
    CacheExportRegistry {
        reference: String,
        #[source]
        source: crate::cache::CacheError,
    },
    /// `--cache-to type=inline`: the cache description could not be made.
    #[error("preparing the inline cache")]
    CacheInline(#[source] crate::cache::CacheError),
}

/// Everything a build needs, read and checked by the caller.
// Independent yes/no options of `rbuild build` (--no-cache, --sync=full,
// --pull, --explain-cache), not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub struct BuildRequest {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile's name for messages (`Dockerfile`, the `-f` path, or `-`).
    pub dockerfile_name: String,
    pub dockerfile: rbuild_parser::Dockerfile,
    /// `.dockerignore` patterns and the file they came from.
    pub ignore: Option<(PathBuf, Vec<String>)>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    /// The network of RUN steps without `--network`.
    pub network: NetworkMode,
    pub allow: Entitlements,
    pub secrets: HashMap<String, Vec<u8>>,
    /// `--ssh` agents by id, for `RUN --mount=type=ssh`.
    pub ssh: HashMap<String, Arc<rbuild_sshforward::AgentSource>>,
    /// `SOURCE_DATE_EPOCH`: the created times and the clamp of file times.
    pub source_date_epoch: Option<i64>,
    /// Steps run at once.
    pub jobs: usize,
    /// `--sync=full`: RUN steps keep their programs' own syncs (see
    /// `rbuild_worker::WorkerOptions::full_sync`).
    pub full_sync: bool,
    /// `--pull`: check the registry for a newer version of every base image.
    pub pull: bool,
    /// How registries are reached (pulls of base images).
    pub registry: RegistryOptions,
    pub state_root: PathBuf,
    /// Resource limits of every RUN step (`--memory`, `--pids-limit`, ...);
    /// never part of a cache key.
    pub limits: rbuild_worker::StepLimits,
    /// `--step-timeout`: a RUN step running longer is killed.
    pub step_timeout: Option<std::time::Duration>,
    /// Bytes of a step's output shown before it is clipped (`None`: 2 MiB,
    /// `Some(u64::MAX)`: all).
    pub step_log_max_size: Option<u64>,
    /// `--cache-from type=local,src=DIR`: build caches asked on a miss.
    pub cache_from: Vec<crate::cache::CacheImport>,
    /// `--cache-to type=local,dest=DIR`: where the build's records go.
    pub cache_to: Vec<crate::cache::CacheExport>,
    /// `--cache-from type=registry,ref=REF` or `--cache-from IMAGE`: caches
    /// (or images with an inline cache) in registries, after `cache_from`.
    pub cache_from_registry: Vec<crate::cache_registry::RegistryImport>,
    /// `--cache-to type=registry,ref=REF`.
    pub cache_to_registry: Vec<crate::cache_registry::RegistryExport>,
    /// `--cache-to type=inline`: the records travel in the image's config.
    pub cache_inline: bool,
    /// `--explain-cache`: say why each step that ran missed the imported
    /// records.
    pub explain_cache: bool,
    /// `--squash` / `--squash-all`: the exported image is squashed.
    pub squash: Option<crate::squash::SquashMode>,
    /// `--add-host`, `--shm-size`, `--ulimit` of every RUN step.
    pub run_extras: rbuild_frontend::RunExtras,
    /// `--build-context NAME=DIR|docker-image://REF`.
    pub named_contexts: BTreeMap<String, rbuild_frontend::NamedContext>,
}

/// What a successful build made.
#[derive(Debug)]
pub struct Built {
    /// The image ID (none for outputs that are no image).
    pub id: Option<Digest>,
}

/// Base images come from the local store; one not there is pulled from its
/// registry (and with `--pull` every base is checked against the registry
/// first). Each is held by this process's lease from the moment it is
/// resolved: a concurrent `image prune` or `rmi` leaves it, its config and its
/// layers until the build ends. A base in the store and not `--pull`ed needs
/// no network.
struct StoreResolver<'a, 'r> {
    store: &'a Store,
    pull: bool,
    registry: RegistryOptions,
    reporter: std::cell::RefCell<&'r mut dyn Reporter>,
}

impl StoreResolver<'_, '_> {
    fn pull(&self, reference: &str, platform: &Platform) -> Result<Digest, ResolveError> {
        let mut reporter = self.reporter.borrow_mut();
        reporter.pull_event(
            reference,
            &TransferEvent::Line(format!("pulling {reference}")),
        );
        let pulled = crate::transfer::pull(
            self.store,
            reference,
            Some(platform),
            &self.registry,
            &mut |ev| reporter.pull_event(reference, &ev),
        );
        pulled.map(|p| p.id).map_err(|e| {
            let line = crate::error::one_line(&e);
            let why = line
                .strip_prefix(&format!("{reference}: "))
                .unwrap_or(&line);
            ResolveError(format!(
                "no such image in the local store, and pulling it failed: {why}"
            ))
        })
    }
}

impl ImageResolver for StoreResolver<'_, '_> {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let local = if self.pull {
            None
        } else {
            self.store.resolve_and_hold(reference).ok()
        };
        let img = if let Some(img) = local {
            img
        } else {
            // Only a name that could be in a registry is pulled (an image
            // ID or a garbled name is not found, as before).
            let parsed = Reference::parse(reference).map_err(|e| {
                ResolveError(format!(
                    "image not found in the local store ({e}); pull, load or import it first"
                ))
            })?;
            let id = self.pull(&parsed.to_string(), platform)?;
            self.store.hold_image(&id).map_err(|e| {
                ResolveError(format!(
                    "{reference}: pulled, then gone from the store: {e}"
                ))
            })?
        };
        // The canonical name for progress (`docker.io/library/busybox:latest`);
        // the store resolved the name as the docker CLI does.
        let canonical = Reference::parse_tagged(reference)
            .map_or_else(|_| reference.to_owned(), |r| r.full_name());
        Ok(ResolvedImage {
            reference: canonical,
            pin: ImagePin::ImageId(img.id.to_string()),
            config: img.config,
        })
    }

    /// `git ls-remote`, every build (a branch moves; the commit is the key).
    fn resolve_git(
        &self,
        remote: &str,
        reference: &str,
        keep_git_dir: bool,
    ) -> Result<String, ResolveError> {
        rbuild_worker::git::resolve(remote, reference)
            .map(|r| r.key_commit(keep_git_dir).to_owned())
            .map_err(|e| ResolveError(e.to_string()))
    }
}

/// `.dockerignore` for the context reader, with moby's re-inclusion rules.
struct Ignore(PatternMatcher);

impl rbuild_worker::context::PathFilter for Ignore {
    fn is_excluded(&self, rel: &Path, _is_dir: bool) -> bool {
        self.0.matches(&rel.to_string_lossy())
    }
    fn descend_excluded_dir(&self, rel: &Path) -> bool {
        !self.0.can_skip_excluded_dir(&rel.to_string_lossy())
    }
}

/// Plans, solves and exports `req` through `exporter`, reporting to `reporter`.
pub fn build(
    req: &BuildRequest,
    exporter: &dyn Exporter,
    reporter: &mut dyn Reporter,
) -> Result<Built, BuildError> {
    let store = Arc::new(
        Store::open(&req.state_root).map_err(|source| BuildError::Store {
            root: req.state_root.clone(),
            source,
        })?,
    );
    let plan = plan(req, &store, reporter)?;
    for w in &plan.warnings {
        reporter.warning(w);
    }
    let worker = start_worker(req, &store)?;
    let Imports {
        records: imported,
        mounts,
        mut locks,
    } = import_caches(req, &plan, &worker, &store, reporter);
    let solved = solve(
        req,
        &plan,
        &worker,
        &store,
        imported
            .clone()
            .map(|i| i as Arc<dyn rbuild_solver::ImportedCache>),
        reporter,
    );
    for w in mounts.iter().flat_map(|m| m.take_warnings()) {
        reporter.warning(&w);
    }
    let outputs = solved?;
    let target = outputs
        .get(plan.target)
        .ok_or(BuildError::TargetNotSolved)?
        .result
        .clone();
    let mut plan = set_created(plan, &worker, &target);
    if req.cache_inline {
        let id = side_id(&plan, side_imports(req) + side_exports(req));
        let name = "preparing build cache for export".to_owned();
        let inline = side_vertex(reporter, id, name, || {
            crate::cache_registry::inline_cache(
                &worker,
                &store,
                &plan.graph,
                &outputs,
                plan.target,
                imported.as_deref(),
            )
        })
        .map_err(BuildError::CacheInline)?;
        plan.image
            .extra
            .insert(crate::cache_registry::INLINE_CACHE_KEY.to_owned(), inline);
    }
    let id = export(req, &plan, &worker, &store, &target, exporter, reporter)?;
    // This build's own read of a directory it now writes ends here (the
    // writer would otherwise see a reader and leave the clean-up).
    locks.retain(|(dir, _)| {
        !req.cache_to
            .iter()
            .any(|to| fs_err::canonicalize(&to.dest).is_ok_and(|d| d == *dir))
    });
    export_caches(
        req,
        &plan,
        &worker,
        &store,
        &outputs,
        imported.as_deref(),
        mounts.as_deref(),
        reporter,
    )?;
    for w in mounts.iter().flat_map(|m| m.take_warnings()) {
        reporter.warning(&w);
    }
    drop(locks);
    if req.explain_cache {
        match &imported {
            Some(imported) => {
                for line in crate::cache::explain_misses(&plan.graph, &outputs, imported) {
                    reporter.explain(&line);
                }
            }
            None => reporter.explain("--explain-cache: no --cache-from to compare with"),
        }
    }
    finish_build(req, &store)?;
    Ok(Built { id })
}

/// The last step of a successful build, after the export: the automatic
/// garbage collection of the build cache, by the configured policy
/// (`rbuild_worker::gc`).
fn finish_build(req: &BuildRequest, store: &Store) -> Result<(), BuildError> {
    crate::gc::after_build(&req.state_root, store)
        .map(drop)
        .map_err(BuildError::Gc)
}

/// A vertex of its own in progress for work outside the graph (cache import
/// and export), as `BuildKit` shows them: started, then done or failed.
fn side_vertex<T, E: std::error::Error + 'static>(
    reporter: &mut dyn Reporter,
    id: VertexId,
    name: String,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    reporter.event(&Event::VertexStarted {
        id,
        name,
        location: None,
    });
    let started = std::time::Instant::now();
    let r = work();
    match &r {
        Ok(_) => reporter.event(&Event::VertexDone {
            id,
            duration: started.elapsed(),
        }),
        Err(e) => reporter.event(&Event::VertexFailed {
            id,
            error: crate::error::one_line(e),
        }),
    }
    r
}

/// Ids for the side vertices, after the graph's and the export's.
fn side_id(plan: &BuildPlan, n: usize) -> VertexId {
    VertexId(u32::try_from(plan.graph.len() + 1 + n).unwrap_or(u32::MAX))
}

/// How many side vertices the imports take.
fn side_imports(req: &BuildRequest) -> usize {
    req.cache_from.len() + req.cache_from_registry.len()
}

/// How many side vertices the exports take.
fn side_exports(req: &BuildRequest) -> usize {
    req.cache_to.len() + req.cache_to_registry.len()
}

/// What `--cache-from` gave the build.
#[derive(Default)]
struct Imports {
    records: Option<Arc<crate::cache::ImportedRecords>>,
    /// Cache mounts of the sources given with `cache-mounts=true`.
    mounts: Option<Arc<crate::cache_mounts::ImportedMounts>>,
    /// The readers' lock of each source directory (canonical path), held
    /// while the build may read its blobs.
    locks: Vec<(PathBuf, nix::fcntl::Flock<std::fs::File>)>,
}

/// `--cache-from`: reads every source's records (each a step in progress,
/// `importing cache manifest from DIR`); one that is missing or unreadable
/// is a warning and the build goes on without it. Each source directory is
/// locked for reading (`crate::cache::lock_readers`) until the build is
/// done with it. The cache mounts of sources given with `cache-mounts=true`
/// become the worker's seeds of new cache mounts.
fn import_caches(
    req: &BuildRequest,
    plan: &BuildPlan,
    worker: &LocalWorker,
    store: &Store,
    reporter: &mut dyn Reporter,
) -> Imports {
    if side_imports(req) == 0 {
        return Imports::default();
    }
    let mut sources = Vec::new();
    let mut mount_sources: Vec<(
        Arc<dyn crate::cache_mounts::BlobSource>,
        Vec<crate::cache_mounts::CacheMountDesc>,
    )> = Vec::new();
    let mut locks = Vec::new();
    for (n, from) in req.cache_from.iter().enumerate() {
        let dir = &from.src;
        let name = format!("importing cache manifest from {}", dir.display());
        let read = side_vertex(reporter, side_id(plan, n), name, || {
            let lock = crate::cache::lock_readers(dir)?;
            crate::cache::read_local(dir).map(|config| (lock, config))
        });
        match read {
            Ok((lock, config)) => {
                if let (Some(lock), Ok(canonical)) = (lock, fs_err::canonicalize(dir)) {
                    locks.push((canonical, lock));
                }
                if from.cache_mounts && !config.cache_mounts.is_empty() {
                    mount_sources.push((
                        Arc::new(crate::cache_mounts::LayoutBlobs::new(dir)),
                        config.cache_mounts.clone(),
                    ));
                }
                sources.push((crate::cache::CacheSource::Local(dir.clone()), config));
            }
            Err(e) => reporter.warning(&format!(
                "cache import from {} failed, building without it: {}",
                dir.display(),
                crate::error::one_line(&e)
            )),
        }
    }
    for (n, from) in req.cache_from_registry.iter().enumerate() {
        let reference = &from.reference;
        let name = format!("importing cache manifest from {reference}");
        let id = side_id(plan, req.cache_from.len() + n);
        let read = side_vertex(reporter, id, name, || {
            crate::cache_registry::import(store, reference, &req.registry)
        });
        match read {
            Ok((remote, config)) => {
                if from.cache_mounts && !config.cache_mounts.is_empty() {
                    mount_sources.push((
                        Arc::clone(&remote) as Arc<dyn crate::cache_mounts::BlobSource>,
                        config.cache_mounts.clone(),
                    ));
                }
                sources.push((crate::cache::CacheSource::Registry(remote), config));
            }
            Err(e) => reporter.warning(&format!(
                "cache import from {reference} failed, building without it: {}",
                crate::error::one_line(&e)
            )),
        }
    }
    let mounts = (!mount_sources.is_empty()).then(|| {
        let tmp = StateLayout::new(&req.state_root).tmp();
        let _ = fs_err::create_dir_all(&tmp);
        let m = Arc::new(crate::cache_mounts::ImportedMounts::new(mount_sources, tmp));
        worker.set_cache_mount_seeds(
            Arc::clone(&m) as Arc<dyn rbuild_worker::cachemounts::CacheMountSeeds>
        );
        m
    });
    Imports {
        records: Some(Arc::new(crate::cache::ImportedRecords::with_sources(
            worker.clone(),
            sources,
        ))),
        mounts,
        locks,
    }
}

/// `--cache-to`: writes the build's records (each a step in progress,
/// `exporting cache to DIR`).
#[allow(clippy::too_many_arguments)] // the build's parts, each used
fn export_caches(
    req: &BuildRequest,
    plan: &BuildPlan,
    worker: &LocalWorker,
    store: &Store,
    outputs: &rbuild_solver::Outputs,
    imported: Option<&crate::cache::ImportedRecords>,
    mounts: Option<&crate::cache_mounts::ImportedMounts>,
    reporter: &mut dyn Reporter,
) -> Result<(), BuildError> {
    for (n, to) in req.cache_to.iter().enumerate() {
        let name = format!("exporting cache to {}", to.dest.display());
        let id = side_id(plan, side_imports(req) + n);
        let done = side_vertex(reporter, id, name, || {
            crate::cache::export_local(
                worker,
                &plan.graph,
                outputs,
                plan.target,
                imported,
                mounts,
                to,
            )
        });
        match done {
            Ok(_) => {}
            Err(e) if to.ignore_error => reporter.warning(&format!(
                "exporting cache to {} failed (ignore-error=true): {}",
                to.dest.display(),
                crate::error::one_line(&e)
            )),
            Err(source) => {
                return Err(BuildError::CacheExport {
                    dest: to.dest.clone(),
                    source,
                });
            }
        }
    }
    for (n, to) in req.cache_to_registry.iter().enumerate() {
        let name = format!("exporting cache to {}", to.reference);
        let id = side_id(plan, side_imports(req) + req.cache_to.len() + n);
        let done = side_vertex(reporter, id, name, || {
            crate::cache_registry::export(
                worker,
                store,
                &plan.graph,
                outputs,
                plan.target,
                imported,
                mounts,
                to,
                &req.registry,
            )
        });
        match done {
            Ok(_) => {}
            Err(e) if to.ignore_error => reporter.warning(&format!(
                "exporting cache to {} failed (ignore-error=true): {}",
                to.reference,
                crate::error::one_line(&e)
            )),
            Err(source) => {
                return Err(BuildError::CacheExportRegistry {
                    reference: to.reference.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn plan(
    req: &BuildRequest,
    store: &Store,
    reporter: &mut dyn Reporter,
) -> Result<BuildPlan, BuildError> {
    let opts = BuildOptions {
        dockerfile_path: req.dockerfile_name.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        no_cache: req.no_cache,
        no_cache_filter: req.no_cache_filter.clone(),
        network: req.network,
        allow: req.allow,
        dockerignore: req
            .ignore
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default(),
        source_date_epoch: req.source_date_epoch,
        run_extras: req.run_extras.clone(),
        named_contexts: req.named_contexts.clone(),
        ..BuildOptions::default()
    };
    let resolver = StoreResolver {
        store,
        pull: req.pull,
        registry: req.registry.clone(),
        reporter: std::cell::RefCell::new(reporter),
    };
    build_plan(&req.dockerfile, &opts, &resolver).map_err(|e| BuildError::Plan(Box::new(e)))
}

fn start_worker(req: &BuildRequest, store: &Arc<Store>) -> Result<LocalWorker, BuildError> {
    let ignore = match &req.ignore {
        Some((file, patterns)) if !patterns.is_empty() => {
            let pm = PatternMatcher::new(patterns).map_err(|source| BuildError::Ignore {
                file: file.clone(),
                source,
            })?;
            Some(Arc::new(Ignore(pm)) as rbuild_worker::IgnoreFilter)
        }
        _ => None,
    };
    let worker = LocalWorker::new(
        Arc::clone(store),
        WorkerOptions {
            state_root: req.state_root.clone(),
            contexts: std::iter::once(("context".to_owned(), req.context.clone()))
                .chain(req.named_contexts.iter().filter_map(|(n, c)| match c {
                    rbuild_frontend::NamedContext::Dir(d) => Some((n.clone(), d.clone())),
                    rbuild_frontend::NamedContext::Image(_) => None,
                }))
                .collect(),
            ignore,
            secrets: req.secrets.clone(),
            ssh: req.ssh.clone(),
            source_date_epoch: req.source_date_epoch.and_then(|e| u64::try_from(e).ok()),
            full_sync: req.full_sync,
            limits: req.limits.clone(),
            step_timeout: req.step_timeout,
            step_log_max_size: req.step_log_max_size,
        },
    )
    .map_err(BuildError::Worker)?;
    worker.check_support().map_err(BuildError::Worker)?;
    Ok(worker)
}

/// Solves the plan's target; SIGINT or SIGTERM cancels the solve (the worker
/// kills its processes and removes half-made snapshots).
fn solve(
    req: &BuildRequest,
    plan: &BuildPlan,
    worker: &LocalWorker,
    store: &Store,
    imported: Option<Arc<dyn rbuild_solver::ImportedCache>>,
    reporter: &mut dyn Reporter,
) -> Result<rbuild_solver::Outputs, BuildError> {
    let cache = CacheIndex::open(&StateLayout::new(&req.state_root).cache_index())?;
    let solver = Solver::new(Arc::new(worker.clone()), cache, req.jobs)
        .with_no_cache(req.no_cache)
        .with_imported(imported);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(req.jobs.max(2))
        .enable_all()
        .build()
        .map_err(BuildError::Runtime)?;
    let solved = rt.block_on(async {
        let (tx, mut rx) = rbuild_solver::progress::channel();
        let targets = [plan.target];
        let mut solve = Box::pin(solver.solve(&plan.graph, &targets, tx));
        let mut interrupted = std::pin::pin!(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        let result = loop {
            tokio::select! {
                Some(ev) = rx.recv() => reporter.event(&ev),
                r = &mut solve => break Some(r),
                () = &mut interrupted => break None,
            }
        };
        // Dropping the solve (on interrupt) cancels it: the worker kills its
        // processes and removes half-made snapshots.
        drop(solve);
        while let Ok(ev) = rx.try_recv() {
            reporter.event(&ev);
        }
        result
    });
    let outputs = match solved {
        None => return Err(BuildError::Interrupted),
        Some(Ok(o)) => o,
        Some(Err(SolveError::Vertex {
            id,
            name,
            location,
            inputs,
            source,
        })) => {
            let last_good = inputs
                .first()
                .and_then(|r| save_last_good(worker, store, r, &plan.image));
            return Err(BuildError::Step(Box::new(StepFailure {
                id,
                name,
                location,
                source,
                last_good,
            })));
        }
        Some(Err(e)) => return Err(BuildError::Solve(Box::new(e))),
    };
    Ok(outputs)
}

/// Timestamps: what `SOURCE_DATE_EPOCH` gave (the frontend set those), else the
/// time the target's snapshot was made, so a fully cached rebuild gives the
/// same image ID, as with `BuildKit`.
fn set_created(mut plan: BuildPlan, worker: &LocalWorker, target: &ResultRef) -> BuildPlan {
    if plan.image.created.is_none() {
        let (secs, nanos) = LocalWorker::snapshot_of(target)
            .and_then(|id| worker.snapshots().info(&id).ok())
            .and_then(|info| info.created)
            .unwrap_or_else(rbuild_image::time::now);
        let created = rbuild_image::time::format_rfc3339(secs, nanos);
        let base_entries = plan.base.as_ref().map_or(0, |b| b.config.history.len());
        for h in plan.image.history.iter_mut().skip(base_entries) {
            if h.created.is_none() {
                h.created = Some(created.clone());
            }
        }
        plan.image.created = Some(created);
    }
    plan
}

/// The export, reported as one more vertex after the graph's, named and
/// phased as `BuildKit` reports it.
fn export(
    req: &BuildRequest,
    plan: &BuildPlan,
    worker: &LocalWorker,
    store: &Store,
    target: &ResultRef,
    exporter: &dyn Exporter,
    reporter: &mut dyn Reporter,
) -> Result<Option<Digest>, BuildError> {
    let export_vertex = VertexId(u32::try_from(plan.graph.len()).unwrap_or(u32::MAX));
    reporter.event(&Event::VertexStarted {
        id: export_vertex,
        name: exporter.name().to_owned(),
        location: None,
    });
    let started = std::time::Instant::now();
    let exported = exporter.export(
        &ExportContext {
            state_root: &req.state_root,
            store,
            worker,
            plan,
            target,
            squash: req.squash,
        },
        &mut Phases::new(reporter, export_vertex),
    );
    match &exported {
        Ok(_) => reporter.event(&Event::VertexDone {
            id: export_vertex,
            duration: started.elapsed(),
        }),
        Err(e) => reporter.event(&Event::VertexFailed {
            id: export_vertex,
            error: crate::error::one_line(e),
        }),
    }
    Ok(exported?)
}

/// The state before the failing step as a dangling image (the final stage's
/// config), so `rbuild run -it ID sh` opens a shell there. Returns its short ID.
fn save_last_good(
    worker: &LocalWorker,
    store: &Store,
    result: &ResultRef,
    config: &rbuild_oci::ImageConfig,
) -> Option<String> {
    LocalWorker::snapshot_of(result)?;
    let id = worker
        .export_image(
            store,
            result,
            &ExportOptions {
                config: config.clone(),
                base_image: None,
                tags: Vec::new(),
                keep_empty_layers: true,
            },
        )
        .ok()?;
    // Not listed by `images` (only with -a); best effort: the state is there.
    let _ = store.mark_last_good(&id);
    Some(id.hex().chars().take(12).collect())
}
