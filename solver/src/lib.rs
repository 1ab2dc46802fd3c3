//! rbuild's solver: the parallel scheduler ([`scheduler`]), the persistent
//! cache index ([`cacheindex`]), progress events ([`progress`]) and the
//! contract with whoever runs ops ([`executor`]). The op vocabulary, the build
//! graph and cache keys are in `rbuild_ops`.
//!
//! The solver knows nothing of Dockerfiles and runs nothing itself: an
//! [`Executor`] (`rbuild_worker::LocalWorker`, built on the image store,
//! snapshotter and sandbox) produces
//! results and content checksums.
//!
//! # How a solve goes
//!
//! The frontend builds a `rbuild_ops::BuildGraph` with `BuildGraph::add` (inputs
//! first; identical vertices are merged) and hands the targets to
//! [`Solver::solve`]. For each needed vertex, once its inputs are solved:
//!
//! 1. its inputs' key contributions are gathered: for every input the op reads
//!    by content (`Op::content_selections`: COPY sources, read-only bind
//!    mounts) the executor's [`ContentChecksum::content_checksum`] hook is
//!    asked for a checksum of exactly the selected paths, which replaces the
//!    input's key; other inputs contribute their key;
//! 2. the key is `rbuild_ops::cache_key` of the op and those contributions;
//! 3. unless the op is volatile (`Op::is_volatile`: the build context,
//!    an HTTP source without checksum), `--no-cache` is on, or the vertex has
//!    `ignore_cache`, the [`CacheIndex`] is asked; a hit whose result still
//!    exists ([`Executor::result_exists`]) is reused (event `VertexCached`);
//! 4. otherwise [`Executor::execute`] runs it (at most `jobs` at once) and the
//!    result is recorded in the index.
//!
//! # Implementing an executor
//!
//! - `SourceOp::Context`: return a reference to the context directory (cheap;
//!   it runs every solve). Its `content_checksum` uses a
//!   context checksummer (`rbuild_worker::context`) for that directory (one per context per
//!   build, with the state dir so hashes persist), with a filter that applies
//!   `.dockerignore` and the selection's include/exclude patterns.
//! - Inputs that are snapshots: checksum their directory the same way (no state
//!   dir needed), or return `Ok(None)` to key on the input's key instead.
//! - `SourceOp::Http` without checksum is volatile: the executor may keep its
//!   own `ETag` cache to avoid downloading again; dependents key on the file's
//!   content checksum.
//! - Log lines go to [`ExecContext::logger`]; a failing process is
//!   [`ExecError::ProcessFailed`] with its last output lines.
//! - The `execute` future is dropped when the solve is cancelled: kill
//!   processes and remove half-made snapshots on drop.

pub mod atomic;
pub mod cacheindex;
pub mod executor;
pub mod progress;
pub mod scheduler;

pub use cacheindex::{CacheIndex, CacheIndexError, CacheRecord};
pub use executor::{
    BoxFuture, ContentChecksum, ExecContext, ExecError, Executor, ImportedCache, ResultRef,
    StepLimit,
};
pub use progress::{Event, EventReceiver, EventSender};
pub use scheduler::{Lazy, LazyRef, Outputs, SolveError, Solved, Solver};
