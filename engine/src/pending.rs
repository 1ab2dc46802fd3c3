//! Output files written beside their destination under a temporary name and
//! renamed into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_snapshotter::lease::Lease;

/// Why a pending output could not be made or put in place.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("the directory of {}", .dest.display())]
    Dir {
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} names no file", .0.display())]
    NoFileName(PathBuf),
    #[error("taking a lease on {}", .root.display())]
    Lease {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A file being written beside its destination under a temporary name
/// (`.rbuild-<kind>-<owner token>-<n>`) that this process's lease records, so
/// the next command removes it if the process dies; [`PendingOutput::persist`]
/// fsyncs it and renames it into place. The destination is then complete or
/// absent, never truncated. Dropped unpersisted, the temporary file goes.
pub struct PendingOutput {
    tmp: PathBuf,
    dest: PathBuf,
    lease: Arc<Lease>,
    done: bool,
}

impl PendingOutput {
    /// Creates the temporary file for `dest` (whose directory must exist),
    /// held by this process's lease on the state root `root`.
    pub fn create(
        root: &Path,
        dest: &Path,
        kind: &str,
    ) -> Result<(Self, std::fs::File), PendingError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = fs_err::canonicalize(dir).map_err(|source| PendingError::Dir {
            dest: dest.to_path_buf(),
            source,
        })?;
        let name = dest
            .file_name()
            .ok_or_else(|| PendingError::NoFileName(dest.to_path_buf()))?;
        let lease = Lease::current(root).map_err(|source| PendingError::Lease {
            root: root.to_path_buf(),
            source,
        })?;
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".rbuild-{kind}-{}-{n}", lease.token()));
        lease.hold_temp(&tmp)?;
        let out = Self {
            tmp,
            dest: dir.join(name),
            lease,
            done: false,
        };
        let f = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out.tmp)?;
        Ok((out, f.into_parts().0))
    }

    /// Flushes `file` (the one [`PendingOutput::create`] gave) to disk and
    /// renames the temporary file over the destination.
    pub fn persist(mut self, file: &std::fs::File) -> Result<(), PendingError> {
        file.sync_all()?;
        fs_err::rename(&self.tmp, &self.dest)?;
        self.done = true;
        if let Some(dir) = self.dest.parent() {
            let _ = fs_err::File::open(dir).and_then(|d| d.sync_all());
        }
        let _ = self.lease.release_temp(&self.tmp);
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
            let _ = self.lease.release_temp(&self.tmp);
        }
    }
}
