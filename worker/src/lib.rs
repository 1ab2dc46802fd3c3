//! The local worker: implements the solver's [`Executor`] on this machine
//! with the image store, the snapshot store and the sandbox, and exports
//! results as images.
//!
//! The one crate of the build that runs ops: the solver itself knows nothing
//! of `rbuild-snapshotter`, `rbuild-sandbox` and `rbuild-image`.
//!
//! Layout (no module cycles; every arrow points down):
//! - `lib` (this file): [`LocalWorker`], the [`Executor`] and
//!   [`ContentChecksum`] implementations, dispatching to
//! - `ops::{source, exec, file, merge}`: one module per op, as `BuildKit`'s
//!   `llbsolver/ops` (`source::{image, http}` for image and download sources;
//!   `file::reuse` for incremental copies); `export`: results as images;
//!   `checksum`: content checksums for cache keys;
//! - `fsutil` (paths inside a root), `filter` (`.dockerignore` plus a copy's
//!   patterns), `state` (the shared `Inner` state and what a result names);
//! - [`context`] (the context checksummer), `atomic` (atomic file writes);
//! - [`git`] (resolving and checking out git refs with the system `git`),
//!   [`gitstore`] (checkouts kept by commit as snapshots, for git contexts
//!   and `ADD <git ref>`), [`remote`] (remote build contexts: git or a URL).
//!
//! Results ([`ResultRef`]) are `snap:<snapshot id>` for everything that has a
//! filesystem in the snapshot store, and `ctx:<name>` for a build context (the
//! directory on disk; volatile).
//!
//! Steps run over an overlay of their parent (root, or a user namespace
//! where the kernel allows overlayfs), or where overlayfs cannot be mounted
//! over a copy of it (the snapshot store's `Backend::Copy`);
//! [`LocalWorker::check_support`] decides which, and fails clearly when
//! `RBUILD_SNAPSHOTTER` asks for what cannot be had.
//!
//! State under the state root: `snapshots/` (the snapshot store),
//! `cache-mounts/` (`RUN --mount=type=cache`), `context-checksums/` (the
//! context checksum cache), `git-checkouts/` (which snapshot is which git
//! checkout); the solver's `CacheIndex` lives there too.
//!
//! # Use
//!
//! ```no_run
//! # async fn build(graph: rbuild_ops::BuildGraph, target: rbuild_ops::VertexId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use rbuild_worker::{ExportOptions, LocalWorker, WorkerOptions};
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
//! let solver = Solver::new(Arc::new(worker.clone()), CacheIndex::open(&rbuild_snapshotter::layout::StateLayout::new(&state).cache_index())?, 4);
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

pub mod cachelayers;
pub mod cachemounts;
mod checksum;
pub mod context;
pub mod error;
mod export;
mod filter;
mod fsutil;
pub mod git;
pub mod gitstore;
mod ops;
pub mod remote;
mod seeds;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_image::Store;
use rbuild_ops::{Checksum, Op, Selection, Vertex};
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};
use rbuild_solver::{BoxFuture, ContentChecksum, ExecContext, ExecError, Executor, ResultRef};

use crate::state::{Inner, Res, err};

pub use export::ExportOptions;
pub use rbuild_sandbox::Limits as StepLimits;
pub use state::{IgnoreFilter, snapshot_of};

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
    /// `--ssh` agents by id, forwarded into steps that mount them.
    pub ssh: HashMap<String, Arc<rbuild_sshforward::AgentSource>>,
    /// `SOURCE_DATE_EPOCH`: clamp mtimes in written layers.
    pub source_date_epoch: Option<u64>,
    /// `--sync=full`: RUN steps keep their programs' own syncs. By default
    /// `fsync`, `fdatasync`, `sync_file_range`, `syncfs` and `sync` return at
    /// once inside a step, and the worker makes the step durable itself: one
    /// `syncfs` per file system of its snapshot and cache mounts.
    pub full_sync: bool,
    /// Resource limits of every RUN step (`--memory`, `--pids-limit`, ...):
    /// not part of any cache key, as in `BuildKit`.
    pub limits: StepLimits,
    /// Kill a RUN step that runs longer (`--step-timeout`).
    pub step_timeout: Option<std::time::Duration>,
    /// Bytes of a step's output kept in progress before it is clipped with a
    /// note (`None`: `BuildKit`'s 2 MiB; `Some(u64::MAX)`: no limit).
    pub step_log_max_size: Option<u64>,
}

/// Executes ops locally. Cheap to clone.
#[derive(Clone)]
pub struct LocalWorker {
    inner: Arc<Inner>,
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
                ssh: opts.ssh,
                epoch: opts.source_date_epoch,
                full_sync: opts.full_sync,
                limits: opts.limits,
                step_timeout: opts.step_timeout,
                log_max: opts.step_log_max_size.unwrap_or(ops::exec::DEFAULT_LOG_MAX),
                checksummers: Mutex::new(HashMap::new()),
                cache_seeds: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Chooses how steps get their root filesystem (overlay, or the copying
    /// snapshotter where overlayfs cannot be mounted) and fails with a clear
    /// message when `RBUILD_SNAPSHOTTER` asks for what cannot be had.
    pub fn check_support(&self) -> Result<(), ExecError> {
        self.inner.snapshots.backend().map_err(err)?;
        // Resource limits that cannot be applied here fail the build before
        // any step runs.
        rbuild_sandbox::check_limits(&self.inner.limits).map_err(|e| ExecError::msg(e.to_string()))
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.inner.snapshots
    }

    /// The snapshot a result names (`None` for a build context).
    pub fn snapshot_of(result: &ResultRef) -> Option<SnapshotId> {
        state::snapshot_of(result)
    }

    /// Exports `target` as an image into `store`; see [`ExportOptions`].
    /// Returns the image ID. This process holds the image (a concurrent
    /// prune leaves it) until it ends.
    pub fn export_image(
        &self,
        store: &Store,
        target: &ResultRef,
        opts: &ExportOptions,
    ) -> Result<rbuild_image::Digest, ExecError> {
        export::export_image(&self.inner, store, target, opts, &mut |_, _| {})
    }

    /// [`LocalWorker::export_image`], reporting its phases as `BuildKit`
    /// names them (`exporting layers`, `writing image sha256:...`, `naming
    /// to ...`): `status(name, false)` when one starts, `status(name, true)`
    /// when it is done.
    pub fn export_image_with_status(
        &self,
        store: &Store,
        target: &ResultRef,
        opts: &ExportOptions,
        status: &mut dyn FnMut(&str, bool),
    ) -> Result<rbuild_image::Digest, ExecError> {
        export::export_image(&self.inner, store, target, opts, status)
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

/// Unpacks the layers of image `id` of `images` into the snapshot store of
/// `state_root`, one snapshot per layer, as the first `FROM` of it would (and
/// finds them again the same way, by chain ID): `rbuild import` and `load`
/// leave an image ready to build on, as `docker import`/`load` register its
/// layers in the graph driver and containerd unpacks what it pulls. Layers
/// unpacked before are skipped. The snapshots are kept by the garbage
/// collector while the image is in the store (an unpacked base image).
pub fn unpack_image(
    images: &Store,
    state_root: &Path,
    id: &rbuild_image::Digest,
) -> Result<(), ExecError> {
    let img = images.hold_image(id).map_err(err)?;
    let snapshots = SnapshotStore::open(state_root).map_err(err)?;
    ops::source::image::unpack_layers(&snapshots, images, &img, &mut |_, _| {})?;
    Ok(())
}

impl LocalWorker {
    /// What the content checksum of `selection` in `result` (the result of
    /// `input`, a build context) is made of, entry by entry: each selected
    /// path with a digest of its entry (sorted by path), for saying which
    /// files a changed checksum changed (`--explain-cache`); `None` for a
    /// result that is no build context or has more than `limit` entries.
    pub fn content_listing(
        &self,
        input: &Vertex,
        result: &ResultRef,
        selection: &Selection,
        limit: usize,
    ) -> Result<Option<context::Listing>, ExecError> {
        checksum::content_listing(&self.inner, input, result, selection, limit)
    }
}

impl ContentChecksum for LocalWorker {
    fn content_checksum(
        &self,
        input: &Vertex,
        result: &ResultRef,
        selection: &Selection,
    ) -> Result<Option<Checksum>, ExecError> {
        checksum::content_checksum(&self.inner, input, result, selection)
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
                Op::Source(s) => ops::source::run(&inner, s, &ctx.logger),
                Op::Exec(e) => ops::exec::run(&inner, e, &inputs, &ctx, token),
                Op::File(f) => ops::file::run(&inner, f, &inputs),
                Op::Merge(m) => ops::merge::run(&inner, m, &inputs),
            })
            .await
            .map_err(|e| crate::error::context("worker task failed", e))?
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
