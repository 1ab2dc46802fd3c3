//! Path and tree helpers shared by the ops that write files (file, exec,
//! merge): paths resolved inside a root, `mkdir -p` inside a root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use rbuild_solver::ExecError;

use crate::error::err;

pub(crate) fn io_msg(
    what: &str,
    p: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ExecError {
    crate::error::context(format!("{what} {}", p.display()), e)
}

/// `a/./b/../c` → `a/c`, relative; refuses climbing above the root.
pub(crate) fn clean_rel(p: &str) -> Result<PathBuf, ExecError> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                if !out.pop() {
                    return Err(ExecError::msg(format!(
                        "\"{p}\": path is outside the build context"
                    )));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

pub(crate) fn resolve(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        return root.to_path_buf();
    }
    rbuild_sandbox::user::resolve_in_root(root, rel)
}

/// The parent resolved inside the root, the last component kept as is.
pub(crate) fn resolve_nofollow(root: &Path, rel: &Path) -> PathBuf {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => resolve(root, parent).join(name),
        _ => root.to_path_buf(),
    }
}

pub(crate) fn sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, ExecError> {
    let mut names: Vec<_> = fs_err::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    names.sort();
    Ok(names)
}

pub(crate) fn create_dir(p: &Path) -> Result<(), ExecError> {
    match fs_err::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// `mkdir -p` of `rel` resolved inside `root` (`BuildKit`'s `MkdirAll` of the
/// path its `RootPath` gives): symlinks on the way are followed inside the
/// root, a dangling one too (`COPY f /link/` with `link -> ../tmp/x` makes
/// `/tmp/x`). New directories get `mode` and `owner`. Returns the resolved path.
pub(crate) fn mkdir_all(
    root: &Path,
    rel: &Path,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> Result<PathBuf, ExecError> {
    let full = resolve(root, rel);
    let inside = full
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mut cur = root.to_path_buf();
    for c in inside.components() {
        cur.push(c);
        match fs_err::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExecError::msg(format!(
                    "\"/{}\": not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                )));
            }
            Err(_) => {
                create_dir(&cur)?;
                fs_err::set_permissions(&cur, std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(err)?;
                if let Some((u, g)) = owner {
                    nix::unistd::chown(&cur, Some(u.into()), Some(g.into()))
                        .or_else(unmapped_ok)
                        .map_err(|e| io_msg("chown", &cur, e))?;
                }
            }
        }
    }
    Ok(full)
}

/// A chown to an id that rootless rbuild's user namespace does not map (no
/// subordinate ids) leaves the owner as it is: the file stays root's there.
pub(crate) fn unmapped_ok(e: nix::errno::Errno) -> Result<(), nix::errno::Errno> {
    if rbuild_snapshotter::overlay::unmapped_id(e as i32) {
        Ok(())
    } else {
        Err(e)
    }
}
