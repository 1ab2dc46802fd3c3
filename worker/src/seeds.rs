//! The hook through which the worker's state asks for the content of cache
//! mounts that do not exist yet (see `crate::cachemounts`), and the key it
//! asks by: a leaf, so the state that holds it depends on no op.

use std::fmt;
use std::io::Read;

use rbuild_ops::{CachePerms, MountKind};

/// Which cache a `type=cache` mount without `from=` is, in terms that hold
/// on any machine. As `BuildKit` keys it: its id alone, or with the owner and
/// mode it starts with when `uid=`/`gid=`/`mode=` were given (`BuildKit`
/// bases such a mount on a directory made with them, and keys it by the id
/// and that base). A mount with `from=` is keyed by the result it starts
/// from besides, which is this machine's own: it has no such key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheMountKey {
    pub id: String,
    pub perms: Option<CachePerms>,
}

impl CacheMountKey {
    /// The id alone (no perms).
    pub fn id(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            perms: None,
        }
    }

    /// The key of a mount of kind `kind` whose target is `target`: `None`
    /// for another kind of mount and for a cache mount with `from=`.
    pub fn of(kind: &MountKind, target: &str) -> Option<Self> {
        match kind {
            MountKind::Cache {
                id,
                from: None,
                perms,
                ..
            } => Some(Self {
                id: if id.is_empty() { target } else { id }.to_owned(),
                perms: *perms,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for CacheMountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.perms {
            None => f.write_str(&self.id),
            Some(p) => write!(f, "{} ({p})", self.id),
        }
    }
}

/// Content for cache mounts that do not exist yet on this machine.
pub trait CacheMountSeeds: Send + Sync {
    /// The content of cache mount `key` (an uncompressed layer tar, checked
    /// already), or `None` when there is none. Called while a step that
    /// mounts it is starting; any problem is the seeder's to report.
    fn seed(&self, key: &CacheMountKey) -> Option<Box<dyn Read + Send>>;

    /// Applying the seed of `key` failed: the cache mount starts empty.
    fn failed(&self, key: &CacheMountKey, error: String);
}
