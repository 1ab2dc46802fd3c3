//! The build flags docker and buildx users pass that rbuild implements at the
//! command's edge: `--platform` (the host's only, until multi-platform builds),
//! `--metadata-file` (buildx's JSON), and `--load` (the result also loaded
//! into the docker daemon at `DOCKER_HOST` or its default socket).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use rbuild_image::{Digest, Reference, Store};
use rbuild_oci::Platform;

/// Docker's flags of `rbuild build` that live here.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct HabitArgs {
    /// Target platform (`os/arch[/variant]`); only the host's is accepted:
    /// multi-platform and cross-platform builds are not supported yet
    #[arg(long, value_name = "PLATFORM", value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Write the build result's metadata (buildx's JSON: `containerimage.digest`,
    /// `containerimage.config.digest`, `image.name`) to this file
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<std::path::PathBuf>,
    /// Also load the image into the docker daemon (`DOCKER_HOST`, else
    /// /var/run/docker.sock)
    #[arg(long)]
    pub load: bool,
    /// Add a line to RUN steps' /etc/hosts (`HOST:IP`)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Size of RUN steps' /dev/shm (`64m`, `1g`, bytes; default 64m)
    #[arg(long = "shm-size", value_name = "SIZE", value_parser = crate::cmd::limits::parse_size)]
    pub shm_size: Option<u64>,
    /// A resource limit of RUN steps (`nofile=1024:2048`, `nproc=512`; -1: unlimited)
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// A named context for `FROM NAME` and `COPY --from=NAME`: a directory,
    /// or `docker-image://REF` for an image
    #[arg(long = "build-context", value_name = "NAME=DIR|docker-image://REF")]
    pub build_context: Vec<String>,
    /// An annotation of the image's manifest (`KEY=VALUE`, `manifest:KEY=VALUE`),
    /// written by `save` and `push`
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Accepted and ignored, as buildx does: rbuild leaves no intermediate
    /// containers (`--rm=false` keeps none either)
    #[arg(long = "rm", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub rm: Option<bool>,
    /// Accepted and ignored, as buildx does (see `--rm`)
    #[arg(long = "force-rm", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub force_rm: Option<bool>,
}

/// `--annotation`s: `KEY=VALUE`, or `manifest:KEY=VALUE` (other targets,
/// `index:` and the like, need multi-platform images).
fn parse_annotations(
    specs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for spec in specs {
        let (k, v) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--annotation {spec:?}: want KEY=VALUE"))?;
        let k = match k.split_once(':') {
            Some(("manifest", k)) => k,
            Some((t, _)) if !t.contains('.') && !t.contains('/') => {
                bail!("--annotation {spec:?}: only manifest annotations are supported (not {t}:)")
            }
            _ => k,
        };
        if k.is_empty() {
            bail!("--annotation {spec:?}: the key is empty");
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Parses one `--build-context NAME=VALUE`.
fn parse_build_context(spec: &str) -> anyhow::Result<(String, rbuild_frontend::NamedContext)> {
    let (name, value) = spec.split_once('=').ok_or_else(|| {
        anyhow!("--build-context {spec:?}: want NAME=DIR or NAME=docker-image://REF")
    })?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("--build-context {spec:?}: invalid name {name:?}");
    }
    if let Some(r) = value.strip_prefix("docker-image://") {
        Reference::parse(r).map_err(|e| anyhow!("--build-context {spec:?}: {e}"))?;
        return Ok((
            name.to_owned(),
            rbuild_frontend::NamedContext::Image(r.to_owned()),
        ));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        bail!(
            "--build-context {spec:?}: {scheme}:// contexts are not supported (use a directory or \
             docker-image://REF)"
        );
    }
    let dir = fs_err::canonicalize(value).map_err(|e| anyhow!("--build-context {spec:?}: {e}"))?;
    if !dir.is_dir() {
        bail!(
            "--build-context {spec:?}: {} is not a directory",
            dir.display()
        );
    }
    Ok((name.to_owned(), rbuild_frontend::NamedContext::Dir(dir)))
}

/// A `# syntax=` directive: the Dockerfile frontend's own images
/// (`docker/dockerfile:1…`, `docker/dockerfile-upstream`, on `docker.io` or
/// not, any 1.x tag or `-labs`, digest or none) are the syntax rbuild's
/// built-in frontend speaks; any other frontend image is refused.
pub fn check_syntax(syntax: Option<&str>, file: &str) -> anyhow::Result<()> {
    let Some(raw) = syntax.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let name = raw.split('@').next().unwrap_or(raw);
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let ours = matches!(repo, "docker/dockerfile" | "docker/dockerfile-upstream")
        && tag.is_none_or(|t| {
            let base = t.split('-').next().unwrap_or(t);
            base == "1"
                || base.starts_with("1.")
                || matches!(t, "labs" | "latest" | "master" | "master-labs")
        });
    if !ours {
        bail!(
            "{file}: the syntax directive asks for frontend {raw:?}: rbuild builds with its \
             built-in Dockerfile frontend only (docker/dockerfile:1 syntax)"
        );
    }
    Ok(())
}

/// Parses `--add-host HOST:IP` (`HOST=IP` too, as newer docker takes it).
fn parse_add_host(spec: &str) -> anyhow::Result<(String, String)> {
    let (host, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| anyhow!("--add-host {spec:?}: want HOST:IP"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("--add-host {spec:?}: invalid host name {host:?}");
    }
    if ip == "host-gateway" {
        bail!("--add-host {spec:?}: host-gateway is not supported; give the IP address");
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map_err(|_| anyhow!("--add-host {spec:?}: {ip:?} is not an IP address"))?;
    Ok((host.to_owned(), ip.to_owned()))
}

/// Parses `--ulimit NAME=SOFT[:HARD]` (docker's form; HARD defaults to SOFT,
/// `-1` is unlimited).
fn parse_ulimit(spec: &str) -> anyhow::Result<rbuild_ops::Ulimit> {
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--ulimit {spec:?}: want NAME=SOFT[:HARD]"))?;
    if !rbuild_sandbox::is_rlimit_name(name) {
        bail!(
            "--ulimit {spec:?}: unknown limit {name:?} (known: core, cpu, data, fsize, locks, \
             memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)"
        );
    }
    let num = |v: &str| -> anyhow::Result<i64> {
        match v.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => bail!("--ulimit {spec:?}: {v:?} is not a number (or -1 for unlimited)"),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => (num(values)?, num(values)?),
    };
    let above = |a: i64, b: i64| b != -1 && (a == -1 || a > b);
    if above(soft, hard) {
        bail!("--ulimit {spec:?}: the soft limit is above the hard limit");
    }
    Ok(rbuild_ops::Ulimit {
        name: name.to_owned(),
        soft,
        hard,
    })
}

impl HabitArgs {
    /// `--build-context`s by name (the last of a name wins).
    pub fn named_contexts(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, rbuild_frontend::NamedContext>> {
        self.build_context
            .iter()
            .map(|c| parse_build_context(c))
            .collect()
    }

    /// `--add-host`, `--shm-size` and `--ulimit` for every RUN step.
    pub fn run_extras(&self) -> anyhow::Result<rbuild_frontend::RunExtras> {
        if self.shm_size == Some(0) {
            bail!("--shm-size must be more than 0");
        }
        Ok(rbuild_frontend::RunExtras {
            extra_hosts: self
                .add_host
                .iter()
                .map(|h| parse_add_host(h))
                .collect::<anyhow::Result<_>>()?,
            shm_size: self.shm_size,
            ulimits: self
                .ulimit
                .iter()
                .map(|u| parse_ulimit(u))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Refuses what cannot be done before the build starts: a platform other
    /// than the host's.
    pub fn check(&self, in_store: bool) -> anyhow::Result<()> {
        parse_annotations(&self.annotation)?;
        if !self.annotation.is_empty() && !in_store {
            bail!(
                "--annotation is for images built into the store (their save and push carry it), not --output or --push"
            );
        }
        let host = Platform::host();
        for p in &self.platform {
            let parsed = Platform::parse(p).ok_or_else(|| {
                anyhow!("--platform {p:?}: not a platform (want os/arch[/variant])")
            })?;
            if parsed != host {
                bail!(
                    "--platform {p}: multi-platform and cross-platform builds are not supported \
                     yet; rbuild builds for the host's platform ({host})"
                );
            }
        }
        Ok(())
    }

    /// What follows a build into the store that made image `id` named `tags`:
    /// the metadata file, then the load into docker.
    pub fn after_build(
        &self,
        root: &Path,
        id: &Digest,
        tags: &[Reference],
        in_store: bool,
    ) -> anyhow::Result<()> {
        if in_store && !self.annotation.is_empty() {
            Store::open(root)?.set_annotations(id, parse_annotations(&self.annotation)?)?;
        }
        if let Some(path) = &self.metadata_file {
            let json = metadata(root, id, tags, in_store);
            let text = serde_json::to_string_pretty(&json)?;
            fs_err::write(path, text + "\n")
                .with_context(|| format!("--metadata-file {}", path.display()))?;
        }
        if self.load {
            if !in_store {
                bail!(
                    "--load cannot be combined with --output (it loads the image the store holds)"
                );
            }
            docker_load(root, id, tags)?;
        }
        Ok(())
    }
}

/// buildx's metadata of an image build: the manifest's digest (that of the
/// manifest `rbuild save` writes) and descriptor, the config's digest (the
/// image ID `rbuild images` shows) and the names.
fn metadata(root: &Path, id: &Digest, tags: &[Reference], in_store: bool) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "containerimage.config.digest".into(),
        serde_json::Value::String(id.to_string()),
    );
    let manifest = in_store
        .then(|| Store::open(root).ok())
        .flatten()
        .and_then(|s| s.image(id).ok().and_then(|img| s.manifest(&img).ok()));
    if let Some((_, bytes, digest)) = manifest {
        m.insert(
            "containerimage.digest".into(),
            serde_json::Value::String(digest.to_string()),
        );
        m.insert(
            "containerimage.descriptor".into(),
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest.to_string(),
                "size": bytes.len(),
            }),
        );
    }
    if !tags.is_empty() {
        let names: Vec<String> = tags.iter().map(ToString::to_string).collect();
        m.insert(
            "image.name".into(),
            serde_json::Value::String(names.join(",")),
        );
    }
    serde_json::Value::Object(m)
}

/// Where the docker daemon listens: `DOCKER_HOST` (`unix://PATH`,
/// `tcp://HOST:PORT`), else `/var/run/docker.sock`.
enum DockerHost {
    Unix(String),
    Tcp(String),
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{p}"),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

fn docker_host() -> anyhow::Result<DockerHost> {
    let v = std::env::var("DOCKER_HOST").unwrap_or_default();
    if v.is_empty() {
        return Ok(DockerHost::Unix("/var/run/docker.sock".into()));
    }
    if let Some(p) = v.strip_prefix("unix://") {
        return Ok(DockerHost::Unix(p.to_owned()));
    }
    if let Some(a) = v.strip_prefix("tcp://") {
        return Ok(DockerHost::Tcp(a.trim_end_matches('/').to_owned()));
    }
    bail!("--load: DOCKER_HOST={v:?} is not supported (want unix://PATH or tcp://HOST:PORT)")
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// `docker load` of the image through the daemon's API (`POST /images/load`
/// with a docker archive of it, its tags included).
fn docker_load(root: &Path, id: &Digest, tags: &[Reference]) -> anyhow::Result<()> {
    let host = docker_host()?;
    let mut conn: Box<dyn Stream> = match &host {
        DockerHost::Unix(p) => Box::new(
            std::os::unix::net::UnixStream::connect(p)
                .map_err(|e| anyhow!("--load: no docker daemon answers at {host}: {e}"))?,
        ),
        DockerHost::Tcp(a) => Box::new(
            std::net::TcpStream::connect(a)
                .map_err(|e| anyhow!("--load: no docker daemon answers at {host}: {e}"))?,
        ),
    };
    let store = Store::open(root)?;
    let image = store.image(id)?;
    let items = [rbuild_image::archive::SaveItem {
        image,
        tags: tags.to_vec(),
    }];
    let archive = tempfile::Builder::new()
        .prefix(&store.temp_prefix("load")?)
        .tempfile_in(store.tmp_dir())
        .context("--load: a temporary file for the archive")?;
    let w = std::io::BufWriter::new(archive.reopen()?);
    let w = rbuild_image::archive::save(
        &store,
        &items,
        w,
        &rbuild_image::archive::SaveOptions::default(),
    )?;
    w.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    let len = archive.as_file().metadata()?.len();
    let head = format!(
        "POST /images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let send = |conn: &mut Box<dyn Stream>| -> std::io::Result<()> {
        conn.write_all(head.as_bytes())?;
        std::io::copy(&mut archive.reopen()?, conn)?;
        conn.flush()
    };
    send(&mut conn).map_err(|e| anyhow!("--load: sending the image to {host}: {e}"))?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| anyhow!("--load: reading {host}'s answer: {e}"))?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if code != "200" {
        bail!(
            "--load: {host} refused the image: {} {}",
            status.trim(),
            body.trim().replace('\n', " ")
        );
    }
    // A 200 answer may still carry an error in its JSON stream.
    if let Some(msg) = body
        .split(['\n', '\r'])
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
    {
        bail!("--load: {host}: {msg}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_directives() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7",
            "docker/dockerfile:1.7-labs",
            "docker/dockerfile:1-labs",
            "docker.io/docker/dockerfile:1",
            "docker/dockerfile",
            "docker/dockerfile:1@sha256:ac85f380a63b13dfcefa89046420e1781752bab202122f8f50032edf31be0021",
            "docker/dockerfile-upstream:master",
        ] {
            assert!(check_syntax(Some(ok), "Dockerfile").is_ok(), "{ok}");
        }
        for bad in [
            "docker/dockerfile:0.5",
            "tonistiigi/dockerfile:runmount",
            "example.com/my/frontend:1",
            "docker/dockerfilex:1",
        ] {
            let e = check_syntax(Some(bad), "Dockerfile")
                .unwrap_err()
                .to_string();
            assert!(e.contains("built-in Dockerfile frontend only"), "{e}");
        }
    }

    #[test]
    fn add_host_and_ulimit_specs() {
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            ("db".into(), "10.0.0.5".into())
        );
        assert_eq!(
            parse_add_host("v6=::1").unwrap(),
            ("v6".into(), "::1".into())
        );
        assert_eq!(
            parse_add_host("v6:[fd00::1]").unwrap(),
            ("v6".into(), "fd00::1".into())
        );
        for bad in ["db", "db:notanip", ":1.2.3.4", "h:host-gateway"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
        let u = parse_ulimit("nofile=100:200").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 100, 200));
        let u = parse_ulimit("stack=-1").unwrap();
        assert_eq!((u.soft, u.hard), (-1, -1));
        for bad in [
            "nofile",
            "bogus=1",
            "nofile=x",
            "nofile=300:200",
            "nofile=-1:5",
            "nofile=-2",
        ] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_host_platform_passes() {
        let host = Platform::host().to_string();
        let ok = HabitArgs {
            platform: vec![host.clone()],
            ..HabitArgs::default()
        };
        assert!(ok.check(true).is_ok());
        let other = if host.contains("amd64") {
            "linux/arm64"
        } else {
            "linux/amd64"
        };
        let bad = HabitArgs {
            platform: vec![host, other.into()],
            ..HabitArgs::default()
        };
        let e = bad.check(true).unwrap_err().to_string();
        assert!(e.contains("multi-platform") && e.contains(other), "{e}");
    }
}
