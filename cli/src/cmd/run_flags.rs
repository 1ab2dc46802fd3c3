//! `docker run` flags of `rbuild run` beyond the basics: `--entrypoint`,
//! `-v HOST:CTR[:ro]`, `--env-file`, `--tmpfs`, `--name` (one container at a
//! time per name) and `--read-only`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use rbuild_sandbox::Mount;

#[derive(clap::Args, Debug, Default)]
pub struct RunFlags {
    /// Replace the image's ENTRYPOINT (and drop its CMD); `""` clears it
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Bind a host directory or file: `HOST:CTR[:ro|rw]` (HOST absolute)
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
    /// Read environment variables from a file (`K=V` lines, `K` alone from
    /// rbuild's environment, `#` comments)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Mount a fresh tmpfs: `PATH[:size=SIZE]`
    #[arg(long, value_name = "PATH[:size=SIZE]")]
    pub tmpfs: Vec<String>,
    /// Name the container: one run at a time holds a name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
}

impl RunFlags {
    /// The mounts `-v` and `--tmpfs` ask for.
    pub fn mounts(&self) -> anyhow::Result<Vec<Mount>> {
        let mut out = Vec::new();
        for v in &self.volume {
            out.push(parse_volume(v)?);
        }
        for t in &self.tmpfs {
            out.push(parse_tmpfs(t)?);
        }
        Ok(out)
    }

    /// `--env-file` entries, in order, before `-e`'s.
    pub fn env_file_entries(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for f in &self.env_file {
            let text = fs_err::read_to_string(f).with_context(|| "--env-file".to_owned())?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match line.split_once('=') {
                    Some(("", _)) => bail!(
                        "--env-file {}:{}: no variable name before '='",
                        f.display(),
                        n + 1
                    ),
                    Some((k, _)) if k.contains(char::is_whitespace) => bail!(
                        "--env-file {}:{}: variable name {k:?} has white space",
                        f.display(),
                        n + 1
                    ),
                    Some(_) => out.push(line.to_owned()),
                    None => {
                        let k = line.trim_end();
                        if let Ok(v) = std::env::var(k) {
                            out.push(format!("{k}={v}"));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Takes the name for this run, if one is given: an exclusive lock on
    /// `<root>/run-names/NAME` held until the returned guard drops (so until
    /// the process ends, however it ends).
    pub fn hold_name(
        &self,
        root: &Path,
    ) -> anyhow::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        let Some(name) = &self.name else {
            return Ok(None);
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            bail!("--name {name:?}: invalid name (want [a-zA-Z0-9][a-zA-Z0-9_.-]*)");
        }
        let dir = rbuild_engine::StateLayout::new(root).run_names();
        fs_err::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(name))
            .with_context(|| format!("--name {name}: opening its lock file"))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(Some)
            .map_err(|(_, e)| match e {
                nix::errno::Errno::EWOULDBLOCK => anyhow!(
                    "--name {name}: a container of that name is already running (one at a time per name)"
                ),
                e => anyhow!("--name {name}: locking: {e}"),
            })
    }
}

/// `-v HOST:CTR[:ro|rw]`.
fn parse_volume(spec: &str) -> anyhow::Result<Mount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, ctr, readonly) = match parts.as_slice() {
        [h, c] | [h, c, "rw"] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [_, _, o] => bail!("-v {spec:?}: unknown option {o:?} (known: ro, rw)"),
        _ => bail!("-v {spec:?}: want HOST:CTR[:ro]"),
    };
    if !host.starts_with('/') {
        bail!("-v {spec:?}: named volumes are not supported; give an absolute host path");
    }
    if !ctr.starts_with('/') {
        bail!("-v {spec:?}: the container path {ctr:?} is not absolute");
    }
    let source = fs_err::canonicalize(host).map_err(|e| anyhow!("-v {spec:?}: {e}"))?;
    Ok(Mount::Bind {
        source,
        target: PathBuf::from(ctr),
        readonly,
    })
}

/// `--tmpfs PATH[:size=SIZE]`.
fn parse_tmpfs(spec: &str) -> anyhow::Result<Mount> {
    let (path, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !path.starts_with('/') {
        bail!("--tmpfs {spec:?}: the path {path:?} is not absolute");
    }
    let mut size = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                size = Some(
                    crate::cmd::limits::parse_size(v)
                        .map_err(|e| anyhow!("--tmpfs {spec:?}: size: {e}"))?,
                );
            }
            _ => bail!("--tmpfs {spec:?}: option {o:?} is not supported (only size=SIZE)"),
        }
    }
    Ok(Mount::Tmpfs {
        target: PathBuf::from(path),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_and_tmpfs_specs() {
        assert_eq!(
            parse_volume("/tmp:/data:ro").unwrap(),
            Mount::Bind {
                source: std::fs::canonicalize("/tmp").unwrap(),
                target: "/data".into(),
                readonly: true
            }
        );
        for bad in ["/tmp", "vol:/data", "/tmp:data", "/tmp:/d:z", "/no/such:/d"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_tmpfs("/scratch:size=1m").unwrap(),
            Mount::Tmpfs {
                target: "/scratch".into(),
                size: Some(1 << 20)
            }
        );
        for bad in ["rel", "/x:noexec", "/x:size=big"] {
            assert!(parse_tmpfs(bad).is_err(), "{bad}");
        }
    }
}
