//! `rbuild build URL`: a remote build context, as `docker buildx build`
//! takes one. A git reference (`https://host/repo.git#ref:subdir`,
//! `git@host:repo.git`, `git://…`, `ssh://…`) is checked out at its commit,
//! without `.git` unless `--build-arg BUILDKIT_CONTEXT_KEEP_GIT_DIR=1` or
//! `?keep-git-dir=1`, and kept in the state root's store of checkouts (a
//! later build of the same commit resolves the ref and reuses it); any other
//! `http(s)://` URL is downloaded, and is the context when it is a tar
//! archive, the Dockerfile when it is text, in a temporary directory under
//! the state root (swept if rbuild is killed). The build then reads either
//! as a local context. The fetching itself is the worker's
//! (`rbuild_engine::remote`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, anyhow, bail};

/// The default of `RBUILD_CONTEXT_MAX_SIZE`: bytes a URL context may
/// download, and unpack to.
const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// A fetched remote context.
pub struct Remote {
    /// The context directory.
    pub dir: PathBuf,
    /// The temporary directory to keep until the build ends (a URL
    /// context; a git checkout is in the store, held by the lease).
    pub temp: Option<tempfile::TempDir>,
    /// The Dockerfile, when the URL was one (the context is then empty).
    pub dockerfile: Option<String>,
}

/// A scratch directory of this process under the state root's `tmp/`.
fn temp_dir(root: &Path, kind: &str) -> anyhow::Result<tempfile::TempDir> {
    let scratch = rbuild_engine::StateLayout::new(root).tmp();
    fs_err::create_dir_all(&scratch)?;
    let lease = rbuild_snapshotter::lease::Lease::current(root)
        .with_context(|| format!("taking a lease on {}", root.display()))?;
    tempfile::Builder::new()
        .prefix(&lease.prefix(kind))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&scratch)
        .context("creating a directory for the context")
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn max_size() -> anyhow::Result<u64> {
    const VAR: &str = "RBUILD_CONTEXT_MAX_SIZE";
    match std::env::var(VAR) {
        Ok(v) if !v.trim().is_empty() => {
            crate::cmd::limits::parse_size(&v).map_err(|e| anyhow!("{VAR}: {e}"))
        }
        _ => Ok(DEFAULT_MAX_SIZE),
    }
}

/// Fetches `spec` when it names a remote context (`None` for a local
/// directory or `-`).
pub fn fetch(
    spec: &str,
    root: &Path,
    build_args: &BTreeMap<String, String>,
) -> anyhow::Result<Option<Remote>> {
    if let Some(g) = rbuild_frontend::gitref::parse(spec) {
        let g = g.map_err(|e| anyhow!("git context {spec}: {e}"))?;
        let keep = g.keep_git_dir.unwrap_or(false)
            || build_args
                .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
                .and_then(|v| parse_bool(v))
                .unwrap_or(false);
        let got = rbuild_engine::remote::fetch_git(
            root,
            &g.remote,
            &g.reference,
            &g.subdir,
            keep,
            g.submodules.unwrap_or(true),
            g.checksum.as_deref(),
        )
        .map_err(|e| anyhow!("git context: {}", rbuild_engine::one_line(&e)))?;
        return Ok(Some(Remote {
            dir: got.dir,
            temp: None,
            dockerfile: None,
        }));
    }
    if !(spec.starts_with("http://") || spec.starts_with("https://")) {
        return Ok(None);
    }
    let max = max_size()?;
    let dir = temp_dir(root, "context")?;
    let scratch = temp_dir(root, "download")?;
    let got = rbuild_engine::remote::fetch_url(spec, dir.path(), scratch.path(), max)
        .map_err(|e| anyhow!("context: {}", rbuild_engine::one_line(&e)))?;
    let dockerfile = match got {
        rbuild_engine::remote::UrlContext::Dockerfile(text) => Some(text),
        rbuild_engine::remote::UrlContext::Archive { skipped_special } => {
            if skipped_special > 0 {
                eprintln!(
                    "WARNING: {spec}: {skipped_special} device nodes or FIFOs of the context archive were left out"
                );
            }
            None
        }
    };
    Ok(Some(Remote {
        dir: dir.path().to_path_buf(),
        temp: Some(dir),
        dockerfile,
    }))
}

/// `-f FILE` with a remote context: a relative name is read inside the
/// context (after its subdirectory), as `BuildKit` reads `filename` from the
/// context's source; an absolute one is a local file (as buildx).
pub fn dockerfile_path(context: &Path, file: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(file);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("the Dockerfile {file:?} is outside the remote context");
    }
    Ok(context.join(p))
}
