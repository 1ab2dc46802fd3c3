//! Atomic file replacement: write a temporary file in the same directory,
//! flush it to disk, rename it over the destination.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `dest`, unique within this machine's processes.
fn temp_path(dest: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".tmp-{name}-{}-{n}", std::process::id()))
}

/// Replace `dest` with `data` so that readers see the old or the new content,
/// never a mix, even if the process is killed.
///
/// No `fsync` unless `durable`: the solver's and worker's files (cache records, checksum
/// caches) are validated when read and a damaged one counts as absent, so
/// after a power loss the worst case is a cache miss; an fsync per record
/// costs milliseconds per build step.
pub fn write(dest: &Path, data: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = temp_path(dest);
    let result = (|| {
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs_err::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    result
}
