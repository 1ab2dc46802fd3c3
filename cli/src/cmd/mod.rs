//! The commands, one module per command group.

pub mod build;
pub mod builder;
pub mod change;
pub mod fmt;
pub mod image;
pub mod parse;
pub mod run;
pub mod system;

use std::path::{Path, PathBuf};

/// The state root: `--root`/`RBUILD_ROOT`, else `/var/lib/rbuild` as root, else
/// `$XDG_DATA_HOME/rbuild` (`~/.local/share/rbuild`).
pub fn state_root(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    let is_root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if is_root {
        return PathBuf::from("/var/lib/rbuild");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("rbuild");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/share/rbuild")
}

/// Takes down the mounts and removes the temporary state that dead rbuild
/// processes left under the state root (see `rbuild_snapshotter::lease`):
/// every command but `parse` starts with it, so a build killed mid-step
/// leaves nothing mounted once the next command ran. Best effort: a root
/// that cannot be read is reported by the command itself.
pub fn sweep_state_root(root: &Path) {
    if !root.is_dir() {
        return; // nothing to sweep; the command makes it as it should be
    }
    let dirs = [
        root.join("snapshots"),
        root.join("snapshots/mounts"),
        root.join("tmp"),
        root.join("rootfs-cache"),
        root.join("cache-mounts"),
    ];
    let _ = rbuild_snapshotter::lease::sweep(root, &dirs);
}

/// A file being written beside its destination under a temporary name
/// (`.rbuild-<kind>-<owner token>-<n>`) that this process's lease records, so
/// the next command removes it if the process dies; [`PendingOutput::persist`]
/// fsyncs it and renames it into place. The destination is then complete or
/// absent, never truncated. Dropped unpersisted, the temporary file goes.
pub struct PendingOutput {
    tmp: PathBuf,
    dest: PathBuf,
    lease: std::sync::Arc<rbuild_snapshotter::lease::Lease>,
    done: bool,
}

impl PendingOutput {
    /// Creates the temporary file for `dest` (whose directory must exist).
    pub fn create(root: &Path, dest: &Path, kind: &str) -> anyhow::Result<(Self, std::fs::File)> {
        use anyhow::Context as _;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = fs_err::canonicalize(dir)
            .with_context(|| format!("the directory of {}", dest.display()))?;
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} names no file", dest.display()))?;
        let lease = rbuild_snapshotter::lease::Lease::current(root)
            .with_context(|| format!("taking a lease on {}", root.display()))?;
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
    pub fn persist(mut self, file: &std::fs::File) -> anyhow::Result<()> {
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
