//! rbuild's solver: the op vocabulary ([`ops`]), the build graph ([`graph`]),
//! cache keys ([`cachekey`]), context checksums ([`context`]), the parallel
//! scheduler ([`scheduler`]), the persistent cache index ([`cacheindex`]) and
//! progress events ([`progress`]).
//!
//! The solver knows nothing of Dockerfiles and runs nothing itself: an
//! [`Executor`] (built on the image store, snapshotter and sandbox) produces
//! results and content checksums.

mod atomic;
pub mod cacheindex;
pub mod cachekey;
pub mod context;
pub mod graph;
pub mod ops;
pub mod progress;
pub mod scheduler;

pub use cacheindex::{CacheIndex, CacheIndexError, CacheRecord};
pub use cachekey::{CacheKey, Checksum, ContentChecksum, InputKey};
pub use graph::{BuildGraph, GraphError, VertexId};
pub use ops::{Op, Vertex};
pub use progress::{Event, EventReceiver, EventSender};
pub use scheduler::{
    BoxFuture, ExecContext, ExecError, Executor, Outputs, ResultRef, SolveError, Solved, Solver,
};
