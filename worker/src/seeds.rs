//! The hook through which the worker's state asks for the content of cache
//! mounts that do not exist yet (see `crate::cachemounts`): a leaf, so the
//! state that holds it depends on no op.

use std::io::Read;

/// Content for cache mounts that do not exist yet on this machine.
pub trait CacheMountSeeds: Send + Sync {
    /// The content of cache mount `id` (an uncompressed layer tar, checked
    /// already), or `None` when there is none. Called while a step that
    /// mounts it is starting; any problem is the seeder's to report.
    fn seed(&self, id: &str) -> Option<Box<dyn Read + Send>>;

    /// Applying the seed of `id` failed: the cache mount starts empty.
    fn failed(&self, id: &str, error: String);
}
