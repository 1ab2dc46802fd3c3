//! The local worker: executes solver vertices on this machine with the image
//! store, the snapshot store and the sandbox, and exports results as images.
//!
//! The one place the solver touches `rbuild-snapshotter`, `rbuild-sandbox` and
//! `rbuild-image`.
//!
//! Results ([`ResultRef`]) are `snap:<snapshot id>` for everything that has a
//! filesystem in the snapshot store, and `ctx:<name>` for a build context (the
//! directory on disk; volatile).
//!
//! Running steps needs overlay mounts: root, or a user namespace where the
//! kernel allows overlayfs. [`LocalWorker::check_support`] says so clearly.
//!
//! State under the state root: `snapshots/` (the snapshot store),
//! `cache-mounts/` (`RUN --mount=type=cache`), `context-checksums/` (the
//! context checksum cache); the solver's [`crate::CacheIndex`] lives there too.
//!
//! # Use
//!
//! ```no_run
//! # async fn build(graph: rbuild_solver::BuildGraph, target: rbuild_solver::VertexId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use rbuild_solver::worker::{ExportOptions, LocalWorker, WorkerOptions};
//! use rbuild_solver::{CacheIndex, Solver, progress};
//!
//! let state = std::path::PathBuf::from("/var/lib/rbuild");
//! let store = Arc::new(rbuild_image::Store::open(state.join("images"))?);
//! let mut opts = WorkerOptions {
//!     state_root: state.clone(),
//!     ..WorkerOptions::default()
//! };
//! opts.contexts.insert("context".into(), "/src/app".into());
//! // `.dockerignore`: any `PathFilter`, e.g. a closure over the frontend's matcher.
//! opts.ignore = Some(Arc::new(|rel: &std::path::Path, _is_dir: bool| {
//!     rel.starts_with("target")
//! }));
//! let worker = LocalWorker::new(Arc::clone(&store), opts)?;
//! worker.check_support()?;
//! let solver = Solver::new(Arc::new(worker.clone()), CacheIndex::open(&state)?, 4);
//! let (tx, _rx) = progress::channel(); // render _rx
//! let outputs = solver.solve(&graph, &[target], tx).await?;
//! let result = &outputs.get(target).expect("solved").result;
//! let image_id = worker.export_image(
//!     &store,
//!     result,
//!     &ExportOptions {
//!         config: rbuild_image::ImageConfig {
//!             architecture: "amd64".into(),
//!             os: "linux".into(),
//!             ..Default::default()
//!         },
//!         base_image: None,
//!         tags: vec![rbuild_image::Reference::parse("app:latest")?],
//!         keep_empty_layers: false,
//!     },
//! )?;
//! # let _ = image_id; Ok(()) }
//! ```

mod exec;
mod export;
mod fileop;
mod http;
mod reuse;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_image::Store;
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};

use crate::cachekey::{Checksum, ContentChecksum};
use crate::context::{ContextChecksummer, PathFilter};
use crate::ops::{Op, Selection, SourceOp, Vertex};
use crate::patterns::PatternMatcher;
use crate::progress::VertexLogger;
use crate::scheduler::{BoxFuture, ExecContext, ExecError, Executor, ResultRef};

pub use export::ExportOptions;

/// A `.dockerignore` matcher (or any filter), shared by all context reads.
/// `is_excluded(rel, is_dir)`, `rel` relative to the context root.
pub type IgnoreFilter = Arc<dyn PathFilter + Send + Sync>;

/// How to build a [`LocalWorker`].
#[derive(Clone, Default)]
pub struct WorkerOptions {
    /// The state root (`$RBUILD_ROOT`): snapshots, cache mounts and context
    /// checksums live below it.
    pub state_root: PathBuf,
    /// Named contexts: `"context"` is the main build context directory.
    pub contexts: HashMap<String, PathBuf>,
    /// `.dockerignore` of the main context (e.g. a closure over the frontend's
    /// `PatternMatcher::matches`); `None` excludes nothing.
    pub ignore: Option<IgnoreFilter>,
    /// `--secret` data by id.
    pub secrets: HashMap<String, Vec<u8>>,
    /// `SOURCE_DATE_EPOCH`: clamp mtimes in written layers.
    pub source_date_epoch: Option<u64>,
}

/// Executes ops locally. Cheap to clone.
#[derive(Clone)]
pub struct LocalWorker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) state_root: PathBuf,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) images: Arc<Store>,
    pub(crate) contexts: HashMap<String, PathBuf>,
    pub(crate) ignore: Option<IgnoreFilter>,
    pub(crate) secrets: HashMap<String, Vec<u8>>,
    pub(crate) epoch: Option<u64>,
    checksummers: Mutex<HashMap<PathBuf, Arc<ContextChecksummer>>>,
}

/// What a [`ResultRef`] names.
#[derive(Clone, Debug)]
pub(crate) enum Res {
    Snap(SnapshotId),
    Context(PathBuf),
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> ExecError {
    ExecError::Other(Box::new(e))
}

impl LocalWorker {
    /// A worker over the image store `images` (where `FROM` images are
    /// looked up and results exported).
    pub fn new(images: Arc<Store>, opts: WorkerOptions) -> Result<Self, ExecError> {
        fs_err::create_dir_all(&opts.state_root).map_err(err)?;
        let snapshots = SnapshotStore::open(&opts.state_root).map_err(err)?;
        let mut contexts = HashMap::new();
        for (name, dir) in opts.contexts {
            let dir = fs_err::canonicalize(&dir).map_err(err)?;
            contexts.insert(name, dir);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                state_root: opts.state_root,
                snapshots,
                images,
                contexts,
                ignore: opts.ignore,
                secrets: opts.secrets,
                epoch: opts.source_date_epoch,
                checksummers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Fails with a clear message when this process cannot mount overlays
    /// (not root and no user namespace allowing it).
    pub fn check_support(&self) -> Result<(), ExecError> {
        self.inner.snapshots.check_overlay().map_err(err)
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.inner.snapshots
    }

    /// The snapshot a result names (`None` for a build context).
    pub fn snapshot_of(result: &ResultRef) -> Option<SnapshotId> {
        result
            .as_str()
            .strip_prefix("snap:")
            .and_then(SnapshotId::parse)
    }

    /// Exports `target` as an image into `store`; see [`ExportOptions`].
    /// Returns the image ID.
    pub fn export_image(
        &self,
        store: &Store,
        target: &ResultRef,
        opts: &ExportOptions,
    ) -> Result<rbuild_image::Digest, ExecError> {
        export::export_image(&self.inner, store, target, opts)
    }

    /// Copies the merged filesystem of `target` into `dest` (`--output
    /// type=local`).
    pub fn export_dir(&self, target: &ResultRef, dest: &Path) -> Result<(), ExecError> {
        let res = self.inner.resolve(target)?;
        let Res::Snap(id) = res else {
            return Err(ExecError::msg("cannot export a build context"));
        };
        let lowers = self.inner.snapshots.lowers(&id).map_err(err)?;
        rbuild_snapshotter::overlay::copy_lower_stack(&lowers, dest).map_err(err)
    }
}

pub(crate) fn snap_ref(id: &SnapshotId) -> ResultRef {
    ResultRef::new(format!("snap:{id}"))
}

impl Inner {
    pub(crate) fn resolve(&self, r: &ResultRef) -> Result<Res, ExecError> {
        if let Some(id) = LocalWorker::snapshot_of(r) {
            return Ok(Res::Snap(id));
        }
        if let Some(name) = r.as_str().strip_prefix("ctx:") {
            return self
                .contexts
                .get(name)
                .map(|p| Res::Context(p.clone()))
                .ok_or_else(|| ExecError::msg(format!("no build context named {name:?}")));
        }
        Err(ExecError::msg(format!("unknown result {r}")))
    }

    /// The content checksum of what `selection` picks in snapshot `id`, as
    /// for a build context (so `COPY --from=stage` is keyed by the content it
    /// copies, as BuildKit keys it: a stage that runs again and makes the
    /// same files leaves the copy cached, one that makes other files does
    /// not). A committed snapshot never changes, so the sum is kept in
    /// `STATE/snapshot-checksums/`. `None` (key on the input's key) when the
    /// selection cannot be read: the copy then reports what is wrong.
    fn snapshot_checksum(&self, id: &SnapshotId, selection: &Selection) -> Option<Checksum> {
        // v2: a selection's include/exclude patterns match below each source.
        let mut h = blake3::Hasher::new_derive_key("rbuild snapshot checksum v2");
        h.update(id.as_str().as_bytes());
        h.update(&[0]);
        h.update(format!("{selection:?}").as_bytes());
        let path = self
            .state_root
            .join("snapshot-checksums")
            .join(h.finalize().to_hex().as_str());
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(sum) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Some(Checksum(sum));
            }
        }
        let guard = self.snapshots.mount_ro(id).ok()?;
        let summer = ContextChecksummer::open(guard.path(), None).ok()?;
        let filter = SelectionFilter::new(
            None,
            &selection.include_patterns,
            &selection.exclude_patterns,
        )
        .ok()?;
        let sum = summer.checksum(selection, &filter).ok()?;
        drop(guard);
        if let Some(dir) = path.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        let _ = crate::atomic::write(&path, sum.as_bytes(), false);
        Some(sum)
    }

    fn checksummer(&self, dir: &Path) -> Result<Arc<ContextChecksummer>, ExecError> {
        let mut map = self.checksummers.lock().expect("checksummer table");
        if let Some(c) = map.get(dir) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(ContextChecksummer::open(dir, Some(&self.state_root)).map_err(err)?);
        map.insert(dir.to_path_buf(), Arc::clone(&c));
        Ok(c)
    }

    fn source(&self, op: &SourceOp, logger: &VertexLogger) -> Result<ResultRef, ExecError> {
        match op {
            SourceOp::Scratch => {
                let a = self.snapshots.prepare(None, "scratch").map_err(err)?;
                Ok(snap_ref(&self.snapshots.commit(a).map_err(err)?))
            }
            SourceOp::Context { name, .. } => {
                if self.contexts.contains_key(name) {
                    Ok(ResultRef::new(format!("ctx:{name}")))
                } else {
                    Err(ExecError::msg(format!("no build context named {name:?}")))
                }
            }
            SourceOp::Image {
                reference,
                resolved_digest,
                ..
            } => self.image_source(reference, resolved_digest.as_deref(), logger),
            SourceOp::Http {
                url,
                checksum,
                filename,
                chmod,
            } => http::download(
                self,
                url,
                checksum.as_deref(),
                filename.as_deref(),
                *chmod,
                logger,
            ),
        }
    }

    fn image_source(
        &self,
        reference: &str,
        digest: Option<&str>,
        logger: &VertexLogger,
    ) -> Result<ResultRef, ExecError> {
        let not_found = |e: rbuild_image::Error| {
            ExecError::msg(format!(
                "{reference}: image not found in the local store ({e}); pull or load it first"
            ))
        };
        let img = match self.images.find(reference) {
            Ok(i) => i,
            Err(e) => {
                // `docker.io/library/x:tag` may be stored as `x:tag`.
                let short = reference
                    .strip_prefix("docker.io/library/")
                    .or_else(|| reference.strip_prefix("docker.io/"));
                match short.map(|s| self.images.find(s)) {
                    Some(Ok(i)) => i,
                    _ => match digest.map(|d| self.images.find(d)) {
                        Some(Ok(i)) => i,
                        _ => return Err(not_found(e)),
                    },
                }
            }
        };
        let mut parent: Option<SnapshotId> = None;
        let total = img.diff_ids().len() as u64;
        for (i, d) in img.diff_ids().iter().enumerate() {
            logger.progress(i as u64, Some(total));
            let blob = self.images.open_blob(d).map_err(err)?;
            let r = std::io::BufReader::with_capacity(256 * 1024, blob);
            parent = Some(
                self.snapshots
                    .from_layer(parent.as_ref(), d, r)
                    .map_err(err)?,
            );
        }
        match parent {
            Some(id) => Ok(snap_ref(&id)),
            None => self.source(&SourceOp::Scratch, logger),
        }
    }
}

/// `.dockerignore` plus a copy's include and exclude patterns. The ignore
/// filter sees paths from the root (the context's own paths); the copy's
/// patterns see the path below the copied source, as `BuildKit`'s copy
/// (fsutil) matches them: `COPY --exclude=*.mp3 dir/ /d/` leaves out
/// `dir/a.mp3`. The source itself is never matched by them.
pub(crate) struct SelectionFilter<'a> {
    ignore: Option<&'a (dyn PathFilter + Send + Sync)>,
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
}

impl<'a> SelectionFilter<'a> {
    pub(crate) fn new(
        ignore: Option<&'a (dyn PathFilter + Send + Sync)>,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, ExecError> {
        let compile = |ps: &[String], what: &str| -> Result<Option<PatternMatcher>, ExecError> {
            if ps.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(ps)
                .map(|m| (!m.is_empty()).then_some(m))
                .map_err(|e| ExecError::msg(format!("invalid {what} patterns: {e}")))
        };
        Ok(Self {
            ignore,
            include: compile(include, "include")?,
            exclude: compile(exclude, "exclude")?,
        })
    }

    /// `rel` below `source`, `/`-separated; `None` for the source itself.
    fn below(source: &Path, rel: &Path) -> Option<String> {
        let r = rel.strip_prefix(source).ok()?;
        (!r.as_os_str().is_empty()).then(|| r.to_string_lossy().into_owned())
    }
}

impl PathFilter for SelectionFilter<'_> {
    fn is_excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self.is_excluded_below(Path::new(""), rel, is_dir)
    }

    fn descend_excluded_dir(&self, rel: &Path) -> bool {
        self.descend_excluded_dir_below(Path::new(""), rel)
    }

    fn is_excluded_below(&self, source: &Path, rel: &Path, is_dir: bool) -> bool {
        if self.ignore.is_some_and(|i| i.is_excluded(rel, is_dir)) {
            return true;
        }
        let Some(below) = Self::below(source, rel) else {
            return false;
        };
        self.include.as_ref().is_some_and(|m| !m.matches(&below))
            || self.exclude.as_ref().is_some_and(|m| m.matches(&below))
    }

    /// Whether something below the excluded directory `rel` may still be
    /// copied: every reason it is left out must allow one (a `!` exception
    /// of the `.dockerignore` or of `--exclude`, an include pattern that
    /// goes deeper).
    fn descend_excluded_dir_below(&self, source: &Path, rel: &Path) -> bool {
        if let Some(i) = self.ignore {
            if i.is_excluded(rel, true) && !i.descend_excluded_dir(rel) {
                return false;
            }
        }
        let Some(below) = Self::below(source, rel) else {
            return true;
        };
        if let Some(m) = &self.include {
            if !m.matches(&below) && !m.may_match_below(&below) {
                return false;
            }
        }
        if let Some(m) = &self.exclude {
            if m.matches(&below) && !m.has_exclusions() {
                return false;
            }
        }
        true
    }
}

impl ContentChecksum for LocalWorker {
    fn content_checksum(
        &self,
        input: &Vertex,
        result: &ResultRef,
        selection: &Selection,
    ) -> Result<Option<Checksum>, ExecError> {
        let dir = match (&input.op, self.inner.resolve(result)?) {
            (Op::Source(SourceOp::Context { .. }), Res::Context(dir)) => dir,
            (_, Res::Snap(id)) => return Ok(self.inner.snapshot_checksum(&id, selection)),
            _ => return Ok(None),
        };
        let summer = self.inner.checksummer(&dir)?;
        let filter = SelectionFilter::new(
            self.inner.ignore.as_deref(),
            &selection.include_patterns,
            &selection.exclude_patterns,
        )?;
        summer
            .checksum(selection, &filter)
            .map(Some)
            .map_err(|e| match e {
                crate::context::ContextError::Io(e) => err(e),
                e => ExecError::msg(e.to_string()),
            })
    }
}

/// Cancels a running process when the `execute` future is dropped.
struct CancelOnDrop(rbuild_sandbox::CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Executor for LocalWorker {
    fn execute<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [ResultRef],
        ctx: ExecContext,
    ) -> BoxFuture<'a, Result<ResultRef, ExecError>> {
        Box::pin(async move {
            let inner = Arc::clone(&self.inner);
            let op = vertex.op.clone();
            let inputs = inputs.to_vec();
            let token = rbuild_sandbox::CancelToken::new();
            let _guard = CancelOnDrop(token.clone());
            tokio::task::spawn_blocking(move || match &op {
                Op::Source(s) => inner.source(s, &ctx.logger),
                Op::Exec(e) => exec::run(&inner, e, &inputs, &ctx, token),
                Op::File(f) => fileop::run(&inner, f, &inputs),
                Op::Merge(m) => fileop::merge(&inner, m, &inputs),
            })
            .await
            .map_err(|e| ExecError::msg(format!("worker task failed: {e}")))?
        })
    }

    fn result_exists(&self, result: &ResultRef) -> bool {
        match self.inner.resolve(result) {
            Ok(Res::Snap(id)) => self.inner.snapshots.exists(&id),
            Ok(Res::Context(_)) => true,
            Err(_) => false,
        }
    }
}
