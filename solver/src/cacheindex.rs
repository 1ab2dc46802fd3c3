//! The persistent cache index: cache key → result, under the state root.
//!
//! Layout: `<state>/cache-index/entries/<key hex>.json`, one record per key,
//! each written atomically (temporary file + rename), so readers never see a
//! partial record and a killed build leaves the index readable. Writers
//! (`put`, `remove`) hold an exclusive `flock` on `<state>/cache-index/lock`;
//! maintenance (prune) can hold it across many operations with
//! [`CacheIndex::lock`].

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use rbuild_ops::CacheKey;

use crate::executor::ResultRef;

/// Errors reading or writing the cache index.
#[derive(Debug, thiserror::Error)]
pub enum CacheIndexError {
    #[error("cache index: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index: cannot lock {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
    #[error("cache index: cannot encode record for {key}: {source}")]
    Encode {
        key: CacheKey,
        source: serde_json::Error,
    },
}

/// One cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub key: CacheKey,
    /// What the executor produced (a snapshot id it understands).
    pub result: ResultRef,
    /// Progress name of the vertex that produced it (for `df`/`prune` output).
    pub description: String,
    /// Seconds since the Unix epoch when it was recorded.
    pub created_unix: u64,
    /// Seconds since the Unix epoch when it was recorded or last used (the
    /// entry file's mtime, see [`CacheIndex::touch`]); for LRU pruning.
    #[serde(skip)]
    pub last_used_unix: u64,
}

impl CacheRecord {
    /// A record stamped with the current time.
    pub fn new(key: CacheKey, result: ResultRef, description: impl Into<String>) -> Self {
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            key,
            result,
            description: description.into(),
            created_unix,
            last_used_unix: created_unix,
        }
    }
}

/// A persistent key → result map. Cheap to clone; clones share the same
/// directory.
#[derive(Clone, Debug)]
pub struct CacheIndex {
    dir: PathBuf,
}

/// An exclusive hold on the index's writers; released on drop.
#[derive(Debug)]
pub struct IndexLock {
    _lock: Flock<std::fs::File>,
}

impl CacheIndex {
    /// Open (creating if needed) the index in `dir` (a state root's
    /// `cache-index/`: see the snapshotter's `StateLayout`).
    pub fn open(dir: &Path) -> Result<Self, CacheIndexError> {
        let dir = dir.to_path_buf();
        fs_err::create_dir_all(dir.join("entries"))?;
        Ok(Self { dir })
    }

    /// The directory holding the index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join("entries").join(format!("{key}.json"))
    }

    /// Take the writers' lock (blocks until free).
    pub fn lock(&self) -> Result<IndexLock, CacheIndexError> {
        let path = self.dir.join("lock");
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?
            .into_file();
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| CacheIndexError::Lock { path, errno })?;
        Ok(IndexLock { _lock: lock })
    }

    /// The record for `key`. A record that cannot be decoded (written by an
    /// incompatible version) counts as absent.
    pub fn get(&self, key: &CacheKey) -> Result<Option<CacheRecord>, CacheIndexError> {
        let path = self.entry_path(key);
        let mut file = match fs_err::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        let Some(mut record) = serde_json::from_slice::<CacheRecord>(&bytes)
            .ok()
            .filter(|r| r.key == *key)
        else {
            return Ok(None);
        };
        record.last_used_unix = file
            .metadata()?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(record.created_unix, |d| d.as_secs());
        Ok(Some(record))
    }

    /// Record (or replace) an entry.
    pub fn put(&self, record: &CacheRecord) -> Result<(), CacheIndexError> {
        let bytes = serde_json::to_vec(record).map_err(|source| CacheIndexError::Encode {
            key: record.key,
            source,
        })?;
        let _guard = self.lock()?;
        crate::atomic::write(&self.entry_path(&record.key), &bytes, false)?;
        Ok(())
    }

    /// Mark an entry as used now (sets its file's mtime; no rewrite).
    pub fn touch(&self, key: &CacheKey) -> Result<(), CacheIndexError> {
        let file = fs_err::File::options()
            .write(true)
            .open(self.entry_path(key))?;
        file.set_modified(SystemTime::now())?;
        Ok(())
    }

    /// Remove an entry; `true` if it existed.
    pub fn remove(&self, key: &CacheKey) -> Result<bool, CacheIndexError> {
        let _guard = self.lock()?;
        self.remove_locked(key)
    }

    /// Remove an entry while already holding [`CacheIndex::lock`].
    pub fn remove_locked(&self, key: &CacheKey) -> Result<bool, CacheIndexError> {
        match fs_err::remove_file(self.entry_path(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keep the records `keep` accepts and remove the others, holding the
    /// writers' lock throughout (`prune`). Returns the removed records.
    pub fn retain(
        &self,
        mut keep: impl FnMut(&CacheRecord) -> bool,
    ) -> Result<Vec<CacheRecord>, CacheIndexError> {
        let _guard = self.lock()?;
        let mut removed = Vec::new();
        for record in self.entries()? {
            if !keep(&record) && self.remove_locked(&record.key)? {
                removed.push(record);
            }
        }
        Ok(removed)
    }

    /// All records, sorted by key. Undecodable records are skipped.
    pub fn entries(&self) -> Result<Vec<CacheRecord>, CacheIndexError> {
        let mut out = Vec::new();
        for entry in fs_err::read_dir(self.dir.join("entries"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue; // temporary files
            };
            let Ok(key) = hex.parse::<CacheKey>() else {
                continue;
            };
            if let Some(record) = self.get(&key)? {
                out.push(record);
            }
        }
        out.sort_by_key(|r| r.key);
        Ok(out)
    }
}
