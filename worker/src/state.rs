//! What every op of the worker shares: the stores and options ([`Inner`]),
//! what a [`ResultRef`] names ([`Res`]). It names no op, only `context`,
//! `error` and `seeds`, which name no other module but `context`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rbuild_image::Store;
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};
use rbuild_solver::{ExecError, ResultRef};

use crate::context::{ContextChecksummer, PathFilter};
// The ops import `err` from here with the state they work on.
pub(crate) use crate::error::err;
use crate::seeds::CacheMountSeeds;

/// A `.dockerignore` matcher (or any filter), shared by all context reads.
/// `is_excluded(rel, is_dir)`, `rel` relative to the context root.
pub type IgnoreFilter = Arc<dyn PathFilter + Send + Sync>;

/// The worker's state, shared by its clones and by the ops.
pub(crate) struct Inner {
    pub(crate) state_root: PathBuf,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) images: Arc<Store>,
    pub(crate) contexts: HashMap<String, PathBuf>,
    pub(crate) ignore: Option<IgnoreFilter>,
    pub(crate) secrets: HashMap<String, Vec<u8>>,
    pub(crate) ssh: HashMap<String, Arc<rbuild_sshforward::AgentSource>>,
    pub(crate) epoch: Option<u64>,
    /// `--sync=full` (see `WorkerOptions::full_sync`).
    pub(crate) full_sync: bool,
    /// Limits, timeout and output budget of RUN steps (see `WorkerOptions`).
    pub(crate) limits: rbuild_sandbox::Limits,
    pub(crate) step_timeout: Option<std::time::Duration>,
    pub(crate) log_max: u64,
    /// One context checksummer per context directory (see `crate::checksum`).
    pub(crate) checksummers: Mutex<HashMap<PathBuf, Arc<ContextChecksummer>>>,
    /// Seeds of cache mounts imported with a build cache (see
    /// `crate::cachemounts`).
    pub(crate) cache_seeds: std::sync::OnceLock<Arc<dyn CacheMountSeeds>>,
}

/// What a [`ResultRef`] names.
#[derive(Clone, Debug)]
pub(crate) enum Res {
    Snap(SnapshotId),
    Context(PathBuf),
}

pub(crate) fn snap_ref(id: &SnapshotId) -> ResultRef {
    ResultRef::new(format!("snap:{id}"))
}

/// The snapshot a result names (`None` for a build context).
pub fn snapshot_of(result: &ResultRef) -> Option<SnapshotId> {
    result
        .as_str()
        .strip_prefix("snap:")
        .and_then(SnapshotId::parse)
}

impl Inner {
    /// What a result names; a snapshot is held by this process's lease from
    /// its first use (see `rbuild_snapshotter::lease`).
    pub(crate) fn resolve(&self, r: &ResultRef) -> Result<Res, ExecError> {
        if let Some(id) = snapshot_of(r) {
            self.snapshots.hold(&id).map_err(err)?;
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

    /// A new empty committed snapshot (`scratch`).
    pub(crate) fn scratch(&self) -> Result<ResultRef, ExecError> {
        let a = self.snapshots.prepare(None, "scratch").map_err(err)?;
        Ok(snap_ref(&self.snapshots.commit(a).map_err(err)?))
    }
}
