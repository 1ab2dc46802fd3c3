//! The commands, one module per command group.

pub mod build;
pub mod builder;
pub mod change;
pub mod check;
pub mod fmt;
pub mod habits;
pub mod image;
pub mod info;
pub mod limits;
pub mod parse;
pub mod refuse;
pub mod remote_context;
pub mod run;
pub mod run_flags;
pub mod squash;
pub mod system;
pub mod transfer;

use std::path::{Path, PathBuf};

/// The state root: `--root`/`RBUILD_ROOT`, else `/var/lib/rbuild` as root, else
/// `$XDG_DATA_HOME/rbuild`, else `$HOME/.local/share/rbuild`; with none of
/// them (or only relative ones) an error saying to set `RBUILD_ROOT`, never a
/// directory relative to the current one.
pub fn state_root(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let is_root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if is_root {
        return Ok(PathBuf::from("/var/lib/rbuild"));
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(x) = absolute("XDG_DATA_HOME") {
        return Ok(x.join("rbuild"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(".local/share/rbuild"));
    }
    anyhow::bail!(
        "no state root: HOME and XDG_DATA_HOME are unset (or not absolute paths); set RBUILD_ROOT \
         (or --root) to a directory rbuild may write"
    )
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
    let layout = rbuild_engine::StateLayout::new(root);
    // A root of another format is not swept: the command refuses it (or
    // migrates it) when it opens the store.
    if !matches!(
        layout.format(),
        Ok(None | Some(rbuild_engine::layout::FORMAT_VERSION))
    ) {
        return;
    }
    let _ = rbuild_snapshotter::lease::sweep(root, &layout.sweep_dirs());
}
