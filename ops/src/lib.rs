//! rbuild's op vocabulary: what a frontend emits and a solver schedules.
//!
//! A leaf crate (plain data and pure functions, no I/O): the ops modelled on
//! `BuildKit`'s LLB ([`op`]), vertex ids ([`id`]), the build graph with dedup
//! of identical vertices ([`graph`]) and the digests over ops: the cache key of
//! an op given its inputs' contributions and the definition digest used for
//! dedup ([`cachekey`]).
//!
//! Module dependencies (no cycles): `id` ← `op` ← `cachekey` ← `graph`.

pub mod cachekey;
pub mod graph;
pub mod id;
pub mod op;

pub use cachekey::{CacheKey, Checksum, InputKey, ParseDigestError, cache_key, definition_digest};
pub use graph::{BuildGraph, GraphError};
pub use id::VertexId;
pub use op::*;
