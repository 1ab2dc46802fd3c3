//! `rbuild build`: a Dockerfile and its context to an image.
//!
//! This module does the command's part: it reads the context (a directory, or a
//! tar[.gz] on stdin unpacked to a temporary directory), the Dockerfile (`-f`, `-f
//! -`, or `Dockerfile` in the context), the ignore file (`<Dockerfile>.dockerignore`
//! before `.dockerignore`), build args, secrets and the `--output` spec; parses the
//! Dockerfile (errors rendered with file, line and caret; exit 1); then hands a
//! [`Request`] to [`rbuild_engine::build`] (plan → solve → export, with the
//! exporter `--output` names) while rendering its progress events, and reports the
//! result like `docker build` or the failing step with its last output.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use rbuild_frontend::Entitlements;
use rbuild_ops::{NetworkMode, SourceLocation};

use crate::progress::{ProgressMode, Renderer};

#[derive(clap::Args, Debug)]
#[command(about = "Build an image from a Dockerfile")]
#[allow(clippy::struct_field_names, clippy::struct_excessive_bools)] // named after the flags, one bool per docker flag
pub struct BuildArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads it from stdin)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<String>,
    /// Name and optionally tag the image (`name:tag`)
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Set a build-time variable (`NAME` alone takes its value from the environment)
    #[arg(long = "build-arg", value_name = "K[=V]")]
    build_args: Vec<String>,
    /// The stage to build
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Do not use the cache
    #[arg(long)]
    no_cache: bool,
    /// Do not use the cache for this stage
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// Set a label on the image
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Network for RUN steps without `--network`: `default` (a network namespace
    /// of the step's own with outbound access through pasta or slirp4netns),
    /// `none` (only loopback) or `host` (the host's)
    #[arg(long, value_enum)]
    network: Option<Network>,
    /// Allow an entitlement the Dockerfile asks for: `network.host` (`RUN
    /// --network=host`), `security.insecure` (`RUN --security=insecure`)
    #[arg(
        long = "allow",
        value_enum,
        value_name = "ENTITLEMENT",
        value_delimiter = ','
    )]
    allow: Vec<Entitlement>,
    /// A secret for `RUN --mount=type=secret` (`id=ID,src=PATH` or `id=ID,env=VAR`)
    #[arg(long = "secret", value_name = "SPEC")]
    secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh` (`default`, `ID=SOCKET` or
    /// `ID=KEYFILE[,KEYFILE...]`; no path: `$SSH_AUTH_SOCK`)
    #[arg(long = "ssh", value_name = "ID[=SOCKET|KEY[,KEY...]]")]
    ssh: Vec<String>,
    /// How to show progress
    #[arg(long, value_enum, env = "BUILDKIT_PROGRESS", default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print only the image ID
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Squash the layers the build adds above its final stage's base into one
    #[arg(long, conflicts_with = "squash_all")]
    squash: bool,
    /// Squash the whole file system into one layer
    #[arg(long)]
    squash_all: bool,
    /// Where the result goes instead of the store (`type=docker|oci|tar|local,dest=PATH`)
    #[arg(short = 'o', long, value_name = "SPEC")]
    output: Option<String>,
    /// Export the build cache (`type=local,dest=DIR`, `type=registry,ref=REF`, each
    /// `[,mode=min|max][,compression=gzip|zstd][,ignore-error=true]`; `type=inline`); repeatable
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Import a build cache (`type=local,src=DIR`, `type=registry,ref=REF`, or an image
    /// reference with an inline cache); repeatable, sources merged
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// After the build, say why each step that ran missed the --cache-from records
    #[arg(long = "explain-cache")]
    explain_cache: bool,
    /// Steps run at once (default: the number of CPUs)
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// `commit`: inside RUN steps fsync & co return at once and rbuild syncs
    /// each step's file systems once when it commits it; `full`: the programs'
    /// own syncs are kept
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SyncMode::Commit)]
    sync: SyncMode,
    #[command(flatten)]
    limits: crate::cmd::limits::LimitArgs,
    /// Kill a RUN step that runs longer than this (`30s`, `1m30s`, `2h`)
    #[arg(
        long = "step-timeout",
        value_name = "DURATION",
        value_parser = crate::cmd::limits::parse_duration
    )]
    step_timeout: Option<std::time::Duration>,
    /// Derive every timestamp from the context's last git commit (a git work
    /// tree without uncommitted changes), else from 0, as if
    /// `SOURCE_DATE_EPOCH` were set to it; an explicit `SOURCE_DATE_EPOCH`
    /// wins
    #[arg(long)]
    reproducible: bool,
    /// Always check the registry for a newer version of the base images
    #[arg(long)]
    pull: bool,
    /// Push the image to its registry after the build (the -t names);
    /// --output type=image,name=REF,push=true names others
    #[arg(long)]
    push: bool,
    /// Run the build checks only, without building (like `rbuild check`)
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    habits: crate::cmd::habits::HabitArgs,
    /// The build context: a directory, `-` for a tar[.gz] on stdin, a git URL
    /// (`https://host/repo.git#REF:DIR`, `git@host:repo.git`), or the URL of a
    /// tar archive or a Dockerfile
    #[arg(value_name = "CONTEXT")]
    context: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Default,
    Host,
    None,
}

/// `--sync`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    Commit,
    Full,
}

/// `--allow` (`BuildKit`'s entitlements).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entitlement {
    #[value(name = "network.host")]
    NetworkHost,
    #[value(name = "security.insecure")]
    SecurityInsecure,
}

/// `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// Into the local store under the tags (the default).
    Store,
    /// A `docker save` archive (which `docker load` takes).
    Docker(PathBuf),
    /// An OCI archive.
    Oci(PathBuf),
    /// The final root filesystem as a tar.
    Tar(PathBuf),
    /// The final root filesystem copied into a directory.
    Local(PathBuf),
    /// Into the store and pushed to a registry: under `name=` (else the
    /// tags), layers compressed as `compression=` says (gzip by default).
    Registry(Vec<String>, rbuild_engine::transfer::PushCompression),
}

/// Parses `--output`: `type=T,dest=PATH` (`docker` without `dest` means the
/// store), or a bare `PATH` (`type=local`), `-` for stdout not being supported.
pub fn parse_output(spec: &str) -> anyhow::Result<OutputSpec> {
    if !spec.contains('=') {
        return Ok(OutputSpec::Local(PathBuf::from(spec)));
    }
    let mut kind = None;
    let mut dest = None;
    let mut names = Vec::new();
    let mut push = None;
    let mut compression = None;
    let mut level = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --output field {field:?} (want key=value)"))?;
        match k {
            "type" => kind = Some(v.to_owned()),
            "dest" => dest = Some(PathBuf::from(v)),
            "name" => names.push(v.to_owned()),
            "compression" => {
                compression = Some(rbuild_image::Compression::from_name(v).ok_or_else(|| {
                    anyhow!("--output: compression={v:?} (known: gzip, zstd, uncompressed)")
                })?);
            }
            "compression-level" => {
                level =
                    Some(v.parse::<u32>().map_err(|_| {
                        anyhow!("--output: compression-level={v:?} is not a number")
                    })?);
            }
            "push" => {
                push = Some(match v {
                    "true" => true,
                    "false" => false,
                    _ => bail!("--output: push={v:?} is not true or false"),
                });
            }
            _ => {
                bail!(
                    "--output: unknown field {k:?} (known: type, dest, name, push, compression, \
                     compression-level)"
                )
            }
        }
    }
    let kind = kind.ok_or_else(|| anyhow!("--output {spec:?} has no type="))?;
    let need = |dest: Option<PathBuf>| {
        dest.filter(|d| d.as_os_str() != "-")
            .ok_or_else(|| anyhow!("--output type={kind} needs dest=PATH"))
    };
    let pushing = kind == "registry" || (kind == "image" && push == Some(true));
    if (!names.is_empty() || push.is_some()) && !matches!(kind.as_str(), "image" | "registry") {
        bail!("--output type={kind} takes no name= or push=");
    }
    if (compression.is_some() || level.is_some()) && !pushing {
        bail!(
            "--output: compression= and compression-level= are for pushes (type=registry or \
             type=image,push=true)"
        );
    }
    let compression = compression.unwrap_or(rbuild_image::Compression::Gzip);
    if let Some(l) = level {
        match rbuild_snapshotter::compress::level_range(compression) {
            Some(r) if r.contains(&l) => {}
            Some(r) => bail!(
                "--output: compression-level={l} is out of range for {} ({}-{})",
                if compression == rbuild_image::Compression::Zstd {
                    "zstd"
                } else {
                    "gzip"
                },
                r.start(),
                r.end()
            ),
            None => bail!("--output: compression-level= needs gzip or zstd compression"),
        }
    }
    let compression = rbuild_engine::transfer::PushCompression { compression, level };
    Ok(match kind.as_str() {
        _ if pushing => OutputSpec::Registry(names, compression),
        "docker" | "image" => dest.map_or(OutputSpec::Store, OutputSpec::Docker),
        "oci" => OutputSpec::Oci(need(dest)?),
        "tar" => OutputSpec::Tar(need(dest)?),
        "local" => OutputSpec::Local(need(dest)?),
        other => bail!(
            "--output: unknown type {other:?} (known: docker, image, registry, oci, tar, local)"
        ),
    })
}

/// `key=value` fields of a `--cache-to` / `--cache-from` spec.
fn cache_fields(flag: &str, spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    spec.split(',')
        .map(|field| {
            field
                .split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    anyhow!("{flag}: invalid field {field:?} in {spec:?} (want key=value)")
                })
        })
        .collect()
}

/// One `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheTo {
    Local(rbuild_engine::cache::CacheExport),
    Registry(rbuild_engine::cache_registry::RegistryExport),
    Inline,
}

/// One `--cache-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheFrom {
    Local(rbuild_engine::cache::CacheImport),
    /// A cache manifest or an image with an inline cache.
    Registry(rbuild_engine::cache_registry::RegistryImport),
}

fn true_or_false(flag: &str, k: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => bail!("{flag}: {k}={v:?} is not true or false"),
    }
}

/// Parses one `--cache-to`: `type=local,dest=DIR` or `type=registry,ref=REF`,
/// each with `[,mode=min|max][,compression=gzip|zstd][,ignore-error=true]
/// [,cache-mounts=true]`, or `type=inline`.
pub fn parse_cache_to(spec: &str) -> anyhow::Result<CacheTo> {
    use rbuild_engine::cache::CacheMode;
    let mut kind = None;
    let mut dest = None;
    let mut reference = None;
    let mut mode = None;
    let mut compression = rbuild_image::Compression::Gzip;
    let mut ignore_error = false;
    let mut cache_mounts = false;
    for (k, v) in cache_fields("--cache-to", spec)? {
        match k.as_str() {
            "type" => kind = Some(v),
            "dest" => dest = Some(PathBuf::from(v)),
            "ref" => reference = Some(v),
            "mode" => {
                mode = Some(match v.as_str() {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    _ => bail!("--cache-to: mode must be min or max, not {v:?}"),
                });
            }
            "compression" => {
                compression = match v.as_str() {
                    "gzip" => rbuild_image::Compression::Gzip,
                    "zstd" => rbuild_image::Compression::Zstd,
                    _ => bail!("--cache-to: compression must be gzip or zstd, not {v:?}"),
                }
            }
            "ignore-error" => ignore_error = true_or_false("--cache-to", &k, &v)?,
            "cache-mounts" => cache_mounts = true_or_false("--cache-to", &k, &v)?,
            _ => bail!(
                "--cache-to: unknown field {k:?} (known: type, dest, ref, mode, compression, ignore-error, cache-mounts)"
            ),
        }
    }
    let want = |what: Option<String>, field: &str, t: &str| {
        what.filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow!("--cache-to type={t} needs {field}"))
    };
    match kind.as_deref() {
        Some("local") => {
            let dest = want(
                dest.map(|d| d.to_string_lossy().into_owned()),
                "dest=DIR",
                "local",
            )?;
            Ok(CacheTo::Local(rbuild_engine::cache::CacheExport {
                dest: PathBuf::from(dest),
                mode: mode.unwrap_or_default(),
                compression,
                ignore_error,
                cache_mounts,
            }))
        }
        Some("registry") => {
            let reference = want(reference, "ref=REF", "registry")?;
            rbuild_image::Reference::parse_tagged(&reference)
                .map_err(|e| anyhow!("--cache-to ref={reference:?}: {e}"))?;
            Ok(CacheTo::Registry(
                rbuild_engine::cache_registry::RegistryExport {
                    reference,
                    mode: mode.unwrap_or_default(),
                    compression,
                    ignore_error,
                    cache_mounts,
                },
            ))
        }
        Some("inline") => {
            if mode == Some(CacheMode::Max) {
                bail!(
                    "--cache-to type=inline supports mode=min only (use type=registry for mode=max)"
                );
            }
            if cache_mounts {
                bail!(
                    "--cache-to type=inline cannot carry cache mounts (use type=registry or type=local with cache-mounts=true)"
                );
            }
            Ok(CacheTo::Inline)
        }
        Some(t) => bail!("--cache-to: unknown type {t:?} (known: local, registry, inline)"),
        None => bail!("--cache-to {spec:?} has no type="),
    }
}

/// Parses one `--cache-from`: `type=local,src=DIR`, `type=registry,ref=REF`
/// (each with `[,cache-mounts=true]`) or a bare image reference (a cache
/// manifest or an image with an inline cache).
pub fn parse_cache_from(spec: &str) -> anyhow::Result<CacheFrom> {
    if !spec.contains('=') {
        rbuild_image::Reference::parse_tagged(spec)
            .map_err(|e| anyhow!("--cache-from {spec:?}: {e}"))?;
        return Ok(CacheFrom::Registry(
            rbuild_engine::cache_registry::RegistryImport {
                reference: spec.to_owned(),
                cache_mounts: false,
            },
        ));
    }
    let mut kind = None;
    let mut src = None;
    let mut reference = None;
    let mut cache_mounts = false;
    for (k, v) in cache_fields("--cache-from", spec)? {
        match k.as_str() {
            "type" => kind = Some(v),
            "src" => src = Some(PathBuf::from(v)),
            "ref" => reference = Some(v),
            "cache-mounts" => cache_mounts = true_or_false("--cache-from", &k, &v)?,
            _ => bail!("--cache-from: unknown field {k:?} (known: type, src, ref, cache-mounts)"),
        }
    }
    match kind.as_deref() {
        Some("local") => src
            .filter(|d| !d.as_os_str().is_empty())
            .map(|src| CacheFrom::Local(rbuild_engine::cache::CacheImport { src, cache_mounts }))
            .ok_or_else(|| anyhow!("--cache-from type=local needs src=DIR")),
        Some("registry") => {
            let reference = reference
                .filter(|r| !r.is_empty())
                .ok_or_else(|| anyhow!("--cache-from type=registry needs ref=REF"))?;
            rbuild_image::Reference::parse_tagged(&reference)
                .map_err(|e| anyhow!("--cache-from ref={reference:?}: {e}"))?;
            Ok(CacheFrom::Registry(
                rbuild_engine::cache_registry::RegistryImport {
                    reference,
                    cache_mounts,
                },
            ))
        }
        Some(t) => bail!("--cache-from: unknown type {t:?} (known: local, registry)"),
        None => bail!("--cache-from {spec:?} has no type="),
    }
}

/// Parses one `--secret` and reads its value: `id=ID[,src|source=PATH][,env=VAR]`
/// (`type=file|env` accepted). With neither, the file or environment variable named
/// after the id is used, as buildx does.
pub fn parse_secret(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --secret field {field:?} (want key=value)"))?;
        match k {
            "id" => id = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "env" => env = Some(v.to_owned()),
            "type" if v == "file" || v == "env" => kind = Some(v.to_owned()),
            _ => bail!("--secret: unknown field {field:?} (known: id, src, env, type)"),
        }
    }
    let id = id.ok_or_else(|| anyhow!("--secret {spec:?} has no id="))?;
    if id.is_empty() {
        bail!("--secret {spec:?}: the id is empty (want id=ID,src=PATH or id=ID,env=VAR)");
    }
    for (name, value) in [("src", &src), ("env", &env)] {
        if value.as_deref() == Some("") {
            bail!("--secret {spec:?}: {name} is empty");
        }
    }
    if src.is_none() && env.is_none() {
        if kind.as_deref() == Some("env") {
            env = Some(id.clone());
        } else {
            src = Some(id.clone());
        }
    }
    let data = if let Some(var) = env {
        std::env::var_os(&var)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or_else(|| anyhow!("--secret {spec:?}: environment variable {var} is not set"))?
    } else {
        let path = src.expect("src or env set above");
        fs_err::read(&path).map_err(|e| anyhow!("--secret {spec:?}: {e}"))?
    };
    Ok((id, data))
}

/// `--build-arg`s as a map: `K=V`, or `K` with the value of the environment
/// variable `K` (left out when it is not set, like docker).
pub fn build_arg_map(args: &[String]) -> BTreeMap<String, String> {
    args.iter()
        .filter_map(|a| match a.split_once('=') {
            Some((k, v)) => Some((k.to_owned(), v.to_owned())),
            None => std::env::var(a).ok().map(|v| (a.clone(), v)),
        })
        .collect()
}

/// `SOURCE_DATE_EPOCH`: `--build-arg SOURCE_DATE_EPOCH=N` (as `BuildKit`
/// takes it), else the environment variable, else with `--reproducible` the
/// commit time of the context's git `HEAD` when the context is a clean git
/// work tree, or 0. An empty value is unset; anything but a number of
/// seconds is an error.
fn source_date_epoch(args: &BuildArgs, context: &Path) -> anyhow::Result<Option<i64>> {
    let parse = |v: &str, from: &str| -> anyhow::Result<Option<i64>> {
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<i64>().map(Some).map_err(|_| {
            anyhow!(
                "invalid SOURCE_DATE_EPOCH {v:?} ({from}): expected a number of seconds since 1970"
            )
        })
    };
    if let Some(v) = build_arg_map(&args.build_args).get("SOURCE_DATE_EPOCH") {
        if let Some(e) = parse(v, "--build-arg")? {
            return Ok(Some(e));
        }
    }
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        if let Some(e) = parse(&v, "environment")? {
            return Ok(Some(e));
        }
    }
    if args.reproducible {
        return Ok(Some(git_commit_time(context).unwrap_or(0)));
    }
    Ok(None)
}

/// The commit time of `HEAD` of the git work tree `dir` is in, when nothing
/// under `dir` differs from `HEAD` (untracked files count, ignored ones do
/// not), with the system's `git`; `None` otherwise.
fn git_commit_time(dir: &Path) -> Option<i64> {
    let git = |a: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(a)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if git(&["rev-parse", "--is-inside-work-tree"])? != "true" {
        return None;
    }
    if !git(&[
        "status",
        "--porcelain",
        "--untracked-files=normal",
        "--",
        ".",
    ])?
    .is_empty()
    {
        return None;
    }
    git(&["log", "-1", "--format=%ct"])?.parse().ok()
}

/// The engine's request and what the command keeps for its report.
pub struct Request {
    pub build: rbuild_engine::BuildRequest,
    pub dockerfile_src: String,
    pub tags: Vec<rbuild_image::Reference>,
    pub output: OutputSpec,
    /// What a registry output pushes (its `name=`s, else the tags).
    pub push_names: Vec<rbuild_image::Reference>,
}

impl Request {
    /// The engine's exporter for `--output`.
    fn exporter(&self) -> Box<dyn rbuild_engine::Exporter> {
        use rbuild_engine::{
            DockerArchiveExporter, LocalExporter, OciLayoutExporter, StoreExporter, TarExporter,
        };
        let tags = self.tags.clone();
        match &self.output {
            OutputSpec::Store => Box::new(StoreExporter { tags }),
            OutputSpec::Docker(dest) => Box::new(DockerArchiveExporter {
                dest: dest.clone(),
                tags,
            }),
            OutputSpec::Oci(dest) => Box::new(OciLayoutExporter {
                dest: dest.clone(),
                tags,
            }),
            OutputSpec::Tar(dest) => Box::new(TarExporter { dest: dest.clone() }),
            OutputSpec::Local(dest) => Box::new(LocalExporter { dest: dest.clone() }),
            OutputSpec::Registry(_, compression) => Box::new(rbuild_engine::RegistryExporter {
                tags: Vec::new(),
                names: self.push_names.clone(),
                registry: self.build.registry.clone(),
                compression: *compression,
            }),
        }
    }
}

/// A failed step, as the report shows it.
pub struct StepFailure {
    /// The step's progress name (`[stage-0 2/3] RUN make`).
    pub name: String,
    pub location: Option<SourceLocation>,
    /// The command and its exit code, when a process failed.
    pub command: Option<(Vec<String>, i32)>,
    /// The error as one line.
    pub error: String,
    /// The last lines of output, oldest first.
    pub last_lines: Vec<String>,
    /// What `rbuild run` takes to open a shell in the last good state, if any.
    pub last_good: Option<String>,
    /// A hint after the error (see `ExecError::hint`).
    pub hint: Option<&'static str>,
}

impl StepFailure {
    /// The engine's failure with the last lines of output: the failed
    /// process's, else what the renderer kept of the step's.
    fn new(f: rbuild_engine::StepFailure, progress: &Renderer) -> Self {
        let kept = || -> Vec<String> {
            progress
                .step(f.id)
                .map(|s| s.last_lines.iter().cloned().collect())
                .unwrap_or_default()
        };
        let (command, last_lines) = match &f.source {
            rbuild_solver::ExecError::ProcessFailed {
                command,
                code,
                last_lines,
                ..
            } => (
                Some((command.clone(), *code)),
                if last_lines.is_empty() {
                    kept()
                } else {
                    last_lines.clone()
                },
            ),
            rbuild_solver::ExecError::LimitExceeded { last_lines, .. }
                if !last_lines.is_empty() =>
            {
                (None, last_lines.clone())
            }
            _ => (None, kept()),
        };
        Self {
            error: f.source.to_string(),
            hint: f.source.hint(),
            name: f.name,
            location: f.location,
            command,
            last_lines: last_lines
                .iter()
                .skip(last_lines.len().saturating_sub(crate::progress::KEEP_LINES))
                .cloned()
                .collect(),
            last_good: f.last_good,
        }
    }
}

/// The Dockerfile line `line` as the error report shows it.
fn source_line(src: &str, line: usize) -> String {
    src.lines()
        .nth(line.saturating_sub(1))
        .map(|l| format!("\n {line:>4} | {l}"))
        .unwrap_or_default()
}

/// A planning error: with a column, rendered like a parse error (the line and
/// a caret under it); else the message and the line.
fn plan_error(
    e: &rbuild_frontend::FrontendError,
    name: &str,
    src: &str,
) -> Result<String, anyhow::Error> {
    if let Some(span) = e.span() {
        let diagnostic = rbuild_parser::ParseError {
            line: span.start_line,
            column: span.start_column,
            span,
            message: e.message(),
            help: None,
        };
        return Ok(diagnostic.render(name, src));
    }
    let at = e.line().map(|l| source_line(src, l)).unwrap_or_default();
    Err(anyhow!("{e}{at}"))
}

impl rbuild_engine::Reporter for Renderer {
    fn event(&mut self, ev: &rbuild_solver::progress::Event) {
        self.handle(ev);
    }
    fn warning(&mut self, message: &str) {
        self.println(&format!("WARNING: {message}"));
    }
    fn pull_event(&mut self, reference: &str, ev: &rbuild_engine::transfer::TransferEvent) {
        if let Some(line) = super::transfer::plain_line(ev) {
            self.pull_line(reference, &line);
        }
    }

    fn explain(&mut self, line: &str) {
        self.println(&format!("explain-cache: {line}"));
    }

    fn note(&mut self, line: &str) {
        self.println(line);
    }
}

pub fn run(args: &BuildArgs, root: &Path) -> anyhow::Result<ExitCode> {
    args.habits.check(args.output.is_none() && !args.push)?;
    let (req, _tmp) = match prepare(args, root)? {
        Prepared::Ready(req, tmp) => (req, tmp),
        Prepared::ParseError(rendered) => {
            eprint!("{rendered}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress.resolve(std::io::stderr().is_terminal())
    };
    let checks = super::check::for_build(&req, args.check, root);
    if args.check || checks.error.is_some() {
        return super::check::finish_check_only(&checks, &req, args.check, mode);
    }
    let mut progress = Renderer::new(mode, Box::new(std::io::stderr()));
    let result = rbuild_engine::build(&req.build, req.exporter().as_ref(), &mut progress);
    let result = result.map_err(|e| match e {
        rbuild_engine::BuildError::Step(f) => {
            Failed::Step(Box::new(StepFailure::new(*f, &progress)))
        }
        other => Failed::Engine(other),
    });
    progress.finish();
    // The checks' summary follows a build that succeeded; a failed build
    // ends with its error alone (`rbuild check` lists the warnings).
    if let Ok(built) = &result {
        super::check::after_build(&checks, &req, built.id.as_ref(), mode);
    }
    match result {
        Ok(built) => {
            let Some(id) = built.id else {
                return Ok(ExitCode::SUCCESS);
            };
            if let Some(f) = &args.iidfile {
                fs_err::write(f, id.to_string())?;
            }
            args.habits
                .after_build(root, &id, &req.tags, req.output == OutputSpec::Store)?;
            if args.quiet {
                println!("{id}");
            } else {
                println!("Successfully built {}", short_id(&id));
                if req.output == OutputSpec::Store {
                    for t in &req.tags {
                        println!("Successfully tagged {t}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Failed::Step(f)) => {
            eprint!("{}", failure_report(&f, &req.dockerfile_src));
            Ok(ExitCode::FAILURE)
        }
        Err(Failed::Engine(rbuild_engine::BuildError::Plan(e))) => {
            let rendered = plan_error(&e, &req.build.dockerfile_name, &req.dockerfile_src)?;
            eprint!("{rendered}");
            Ok(ExitCode::FAILURE)
        }
        Err(Failed::Engine(e)) => Err(e.into()),
    }
}

/// Why the engine's build failed, for the report.
enum Failed {
    Step(Box<StepFailure>),
    Engine(rbuild_engine::BuildError),
}

/// The first 12 hex digits of an ID, as docker shows it.
fn short_id(id: &rbuild_image::Digest) -> String {
    id.hex().chars().take(12).collect()
}

enum Prepared {
    /// The request and the temporary context directory to keep alive.
    Ready(Box<Request>, Option<tempfile::TempDir>),
    ParseError(String),
}

fn prepare(args: &BuildArgs, root: &Path) -> anyhow::Result<Prepared> {
    // A bad configuration file fails the build before it starts, not after.
    let config = rbuild_engine::gc::Config::load(root)?;
    let limits = args.limits.limits(config.build.pids_limit)?;
    let step_log_max_size = step_log_max_size()?;
    let df_stdin = args.file.as_deref() == Some("-");
    let mut stdin_dockerfile = None;
    let mut tmp = None;
    // A git or URL context, fetched into a directory of the state root (a
    // git checkout is kept there by commit).
    let remote =
        crate::cmd::remote_context::fetch(&args.context, root, &build_arg_map(&args.build_args))?;
    let is_remote = remote.is_some();
    let context = if let Some(r) = remote {
        stdin_dockerfile = r.dockerfile;
        tmp = r.temp;
        r.dir
    } else if args.context == "-" {
        if df_stdin {
            bail!("cannot read both the Dockerfile (-f -) and the context (-) from stdin");
        }
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading the context from stdin")?;
        // Under the state root, swept by the next command if this one is killed.
        let scratch = rbuild_engine::StateLayout::new(root).tmp();
        fs_err::create_dir_all(&scratch)?;
        let lease = rbuild_snapshotter::lease::Lease::current(root)
            .with_context(|| format!("taking a lease on {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&lease.prefix("context"))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&scratch)
            .context("creating a directory for the context")?;
        if is_tar(&data) {
            unpack_context(&data, dir.path())?;
        } else {
            // Like docker: a plain Dockerfile on stdin, with an empty context.
            stdin_dockerfile = Some(String::from_utf8(data).map_err(|_| {
                anyhow!("stdin is neither a tar archive nor a Dockerfile in UTF-8")
            })?);
        }
        let p = dir.path().to_path_buf();
        tmp = Some(dir);
        p
    } else {
        let p = fs_err::canonicalize(&args.context)
            .with_context(|| format!("context {:?}", args.context))?;
        if !p.is_dir() {
            bail!("context {} is not a directory", args.context);
        }
        p
    };

    // The Dockerfile: stdin, -f (relative to the working directory, may be outside
    // the context), or CONTEXT/Dockerfile.
    let (dockerfile_name, dockerfile_path, src) = if df_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the Dockerfile from stdin")?;
        ("-".to_owned(), None, s)
    } else if let Some(s) = stdin_dockerfile {
        ("Dockerfile".to_owned(), None, s)
    } else {
        let path = match &args.file {
            Some(f) if is_remote => crate::cmd::remote_context::dockerfile_path(&context, f)?,
            Some(f) => PathBuf::from(f),
            None => context.join("Dockerfile"),
        };
        let mut name = args.file.clone().unwrap_or_else(|| "Dockerfile".into());
        // A missing `Dockerfile` may be spelt `dockerfile` (BuildKit's
        // dockerui, moby/moby#10858); `Dockerfile.dockerignore` is still the
        // ignore file's name.
        let mut read = fs_err::read_to_string(&path);
        if read.is_err() && path.file_name().is_some_and(|n| n == "Dockerfile") {
            let lower = path.with_file_name("dockerfile");
            if let Ok(s) = fs_err::read_to_string(&lower) {
                name = match &args.file {
                    Some(_) => lower.display().to_string(),
                    None => "dockerfile".to_owned(),
                };
                read = Ok(s);
            }
        }
        let src = read.map_err(|e| {
            anyhow!(
                "cannot read the Dockerfile: {}",
                e.to_string().lines().next().unwrap_or_default()
            )
        })?;
        (name, Some(path), src)
    };
    let dockerfile = match rbuild_parser::parse(&src) {
        Ok(d) => d,
        Err(e) => return Ok(Prepared::ParseError(e.render(&dockerfile_name, &src))),
    };
    crate::cmd::habits::check_syntax(dockerfile.directives.syntax.as_deref(), &dockerfile_name)?;
    let ignore = rbuild_frontend::dockerignore::load(&context, dockerfile_path.as_deref())
        .context("reading the .dockerignore file")?;

    let labels = args
        .labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.clone(), String::new()),
        })
        .collect();
    let secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<anyhow::Result<_>>()?;
    let ssh = {
        use rbuild_sshforward::{AgentSource, SshSpec};
        let specs = args
            .ssh
            .iter()
            .map(|s| SshSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let auth_sock = std::env::var_os("SSH_AUTH_SOCK").map(std::path::PathBuf::from);
        AgentSource::open_all(&specs, auth_sock.as_deref())?
    };
    let tags: Vec<rbuild_image::Reference> = args
        .tags
        .iter()
        .map(|t| {
            let r = rbuild_image::Reference::parse(t)
                .map(rbuild_image::Reference::with_default_tag)
                .map_err(|e| anyhow!("invalid tag {t:?}: {e}"))?;
            if r.digest.is_some() {
                // docker build's words (moby's sanitizeRepoAndTags).
                bail!("invalid tag {t:?}: build tag cannot contain a digest");
            }
            Ok(r)
        })
        .collect::<anyhow::Result<_>>()?;
    let (mut cache_to, mut cache_to_registry, mut cache_inline) = (Vec::new(), Vec::new(), false);
    for spec in &args.cache_to {
        match parse_cache_to(spec)? {
            CacheTo::Local(l) => cache_to.push(l),
            CacheTo::Registry(r) => cache_to_registry.push(r),
            CacheTo::Inline => cache_inline = true,
        }
    }
    let (mut cache_from, mut cache_from_registry) = (Vec::new(), Vec::new());
    for spec in &args.cache_from {
        match parse_cache_from(spec)? {
            CacheFrom::Local(dir) => cache_from.push(dir),
            CacheFrom::Registry(r) => cache_from_registry.push(r),
        }
    }
    let output = match (&args.output, args.push) {
        (Some(_), true) => bail!("--push and --output cannot be combined"),
        (Some(o), false) => parse_output(o)?,
        (None, true) => OutputSpec::Registry(Vec::new(), rbuild_image::Compression::Gzip.into()),
        (None, false) => OutputSpec::Store,
    };
    let push_names = match &output {
        OutputSpec::Registry(names, _) if names.is_empty() => {
            if tags.is_empty() {
                bail!(
                    "pushing needs a name: give -t NAME or --output type=image,name=NAME,push=true"
                );
            }
            tags.clone()
        }
        OutputSpec::Registry(names, _) => names
            .iter()
            .map(|n| {
                rbuild_image::Reference::parse_tag(n)
                    .map_err(|e| anyhow!("--output name={n:?}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
        _ => Vec::new(),
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let source_date_epoch = source_date_epoch(args, &context)?;
    Ok(Prepared::Ready(
        Box::new(Request {
            build: rbuild_engine::BuildRequest {
                context,
                dockerfile_name,
                dockerfile,
                ignore,
                build_args: build_arg_map(&args.build_args),
                target: args.target.clone(),
                labels,
                no_cache: args.no_cache,
                no_cache_filter: args.no_cache_filter.clone(),
                network: match args.network {
                    Some(Network::Host) => NetworkMode::Host,
                    Some(Network::None) => NetworkMode::None,
                    Some(Network::Default) | None => NetworkMode::Sandbox,
                },
                allow: Entitlements {
                    network_host: args.allow.contains(&Entitlement::NetworkHost),
                    security_insecure: args.allow.contains(&Entitlement::SecurityInsecure),
                },
                secrets,
                ssh,
                source_date_epoch,
                jobs,
                full_sync: args.sync == SyncMode::Full,
                pull: args.pull,
                registry: rbuild_engine::transfer::RegistryOptions::load(root)?,
                state_root: root.to_path_buf(),
                limits,
                step_timeout: args.step_timeout,
                step_log_max_size,
                cache_from,
                cache_to,
                cache_from_registry,
                cache_to_registry,
                cache_inline,
                explain_cache: args.explain_cache,
                run_extras: args.habits.run_extras()?,
                named_contexts: args.habits.named_contexts()?,
                squash: if args.squash_all {
                    Some(rbuild_engine::squash::SquashMode::All)
                } else if args.squash {
                    Some(rbuild_engine::squash::SquashMode::New)
                } else {
                    None
                },
            },
            dockerfile_src: src,
            tags,
            output,
            push_names,
        }),
        tmp,
    ))
}

/// `RBUILD_STEP_LOG_MAX_SIZE` (`BuildKit`'s `BUILDKIT_STEP_LOG_MAX_SIZE`): bytes
/// of a step's output shown before it is clipped; `-1`: no limit; unset:
/// 2 MiB.
fn step_log_max_size() -> anyhow::Result<Option<u64>> {
    const VAR: &str = "RBUILD_STEP_LOG_MAX_SIZE";
    match std::env::var(VAR) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) if v.trim() == "-1" => Ok(Some(u64::MAX)),
        Ok(v) => crate::cmd::limits::parse_size(&v)
            .map(Some)
            .map_err(|e| anyhow!("{VAR}: {e}, or -1 for no limit")),
        Err(e) => Err(anyhow!("{VAR}: {e}")),
    }
}

/// A tar (ustar magic at 257), or gzip (which is taken to hold one).
fn is_tar(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b]) || data.get(257..262) == Some(b"ustar")
}

/// Unpacks a tar[.gz] context into `dest`, refusing entries that leave it.
fn unpack_context(data: &[u8], dest: &Path) -> anyhow::Result<()> {
    let reader: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    for entry in ar.entries().context("reading the context tar from stdin")? {
        let mut entry = entry.context("reading the context tar from stdin")?;
        // unpack_in refuses paths that climb out of dest.
        entry
            .unpack_in(dest)
            .context("unpacking the context tar from stdin")?;
    }
    Ok(())
}

/// The report of a failed step: the instruction with `file:line`, the command and
/// its exit code, the last lines of output, and the last good state.
pub fn failure_report(f: &StepFailure, dockerfile_src: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "------");
    let _ = writeln!(out, " > {}:", f.name);
    for l in &f.last_lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(out, "------");
    if let Some(loc) = &f.location {
        let lines: Vec<&str> = dockerfile_src.lines().collect();
        let _ = writeln!(out, "{}:{}", loc.file, loc.start_line);
        let first = loc.start_line.max(1) as usize;
        let last = (loc.end_line as usize).max(first);
        for n in first..=last.min(lines.len()) {
            let _ = writeln!(out, " {n:>4} | >>> {}", lines[n - 1]);
        }
        let _ = writeln!(out, "------");
    }
    match &f.command {
        Some((cmd, code)) => {
            let _ = writeln!(
                out,
                "ERROR: process \"{}\" did not complete successfully: exit code: {code}",
                cmd.join(" ")
            );
        }
        None => {
            let _ = writeln!(out, "ERROR: {}", f.error);
        }
    }
    if let Some(h) = f.hint {
        let _ = writeln!(out, "{h}");
    }
    if let Some(id) = &f.last_good {
        let _ = writeln!(
            out,
            "The last good step's state is {id}; to open a shell there: rbuild run -it {id} sh"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs() {
        use rbuild_engine::cache::CacheMode;
        let CacheTo::Registry(r) = parse_cache_to(
            "type=registry,ref=r.io/c:1,mode=max,compression=zstd,ignore-error=true",
        )
        .unwrap() else {
            panic!("not a registry export")
        };
        assert_eq!(r.reference, "r.io/c:1");
        assert_eq!(r.mode, CacheMode::Max);
        assert_eq!(r.compression, rbuild_image::Compression::Zstd);
        assert!(r.ignore_error);
        let CacheTo::Local(l) = parse_cache_to("type=local,dest=/c").unwrap() else {
            panic!("not a local export")
        };
        assert_eq!(
            (l.mode, l.compression, l.ignore_error),
            (CacheMode::Min, rbuild_image::Compression::Gzip, false)
        );
        assert_eq!(parse_cache_to("type=inline").unwrap(), CacheTo::Inline);
        for bad in [
            "type=inline,mode=max",
            "type=registry",
            "type=registry,ref=UPPER/x",
            "type=local,dest=/c,compression=lz4",
            "type=registry,ref=r/c,ignore-error=maybe",
            "type=s3,ref=x",
        ] {
            assert!(parse_cache_to(bad).is_err(), "{bad}");
        }
        let reg = |r: &str, m: bool| {
            CacheFrom::Registry(rbuild_engine::cache_registry::RegistryImport {
                reference: r.into(),
                cache_mounts: m,
            })
        };
        assert_eq!(
            parse_cache_from("r.io/app:1").unwrap(),
            reg("r.io/app:1", false)
        );
        assert_eq!(
            parse_cache_from("type=registry,ref=r.io/c").unwrap(),
            reg("r.io/c", false)
        );
        assert_eq!(
            parse_cache_from("type=registry,ref=r.io/c,cache-mounts=true").unwrap(),
            reg("r.io/c", true)
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c,cache-mounts=true").unwrap(),
            CacheFrom::Local(rbuild_engine::cache::CacheImport {
                src: "/c".into(),
                cache_mounts: true
            })
        );
        let CacheTo::Registry(r) =
            parse_cache_to("type=registry,ref=r.io/c:1,cache-mounts=true").unwrap()
        else {
            panic!("not a registry export")
        };
        assert!(r.cache_mounts);
        assert!(parse_cache_to("type=inline,cache-mounts=true").is_err());
        assert!(parse_cache_from("type=registry").is_err());
        assert!(parse_cache_from("Bad Ref").is_err());
    }

    #[test]
    fn output_specs() {
        assert_eq!(
            parse_output("type=docker,dest=/tmp/x.tar").unwrap(),
            OutputSpec::Docker("/tmp/x.tar".into())
        );
        assert_eq!(parse_output("type=docker").unwrap(), OutputSpec::Store);
        assert_eq!(
            parse_output("type=oci,dest=o.tar").unwrap(),
            OutputSpec::Oci("o.tar".into())
        );
        assert_eq!(
            parse_output("type=tar,dest=r.tar").unwrap(),
            OutputSpec::Tar("r.tar".into())
        );
        assert_eq!(
            parse_output("out").unwrap(),
            OutputSpec::Local("out".into())
        );
        assert_eq!(
            parse_output("type=image,name=r:5000/a:1,push=true").unwrap(),
            OutputSpec::Registry(
                vec!["r:5000/a:1".into()],
                rbuild_image::Compression::Gzip.into()
            )
        );
        assert_eq!(
            parse_output("type=registry").unwrap(),
            OutputSpec::Registry(Vec::new(), rbuild_image::Compression::Gzip.into())
        );
        assert_eq!(
            parse_output("type=registry,name=r/a:1,compression=zstd").unwrap(),
            OutputSpec::Registry(vec!["r/a:1".into()], rbuild_image::Compression::Zstd.into())
        );
        assert_eq!(
            parse_output("type=image,push=true,name=r/a:1,compression-level=1").unwrap(),
            OutputSpec::Registry(
                vec!["r/a:1".into()],
                rbuild_engine::transfer::PushCompression {
                    compression: rbuild_image::Compression::Gzip,
                    level: Some(1)
                }
            )
        );
        assert_eq!(
            parse_output("type=registry,compression=zstd,compression-level=19").unwrap(),
            OutputSpec::Registry(
                Vec::new(),
                rbuild_engine::transfer::PushCompression {
                    compression: rbuild_image::Compression::Zstd,
                    level: Some(19)
                }
            )
        );
        assert_eq!(
            parse_output("type=image,push=false").unwrap(),
            OutputSpec::Store
        );
        for bad in [
            "type=local",
            "type=zip,dest=x",
            "dest=x",
            "type=tar,foo=1",
            "type=tar,dest=x,push=true",
            "type=image,push=yes",
            "type=oci,dest=x,compression=zstd",
            "type=registry,compression=lz4",
            "type=registry,compression-level=10",
            "type=registry,compression=zstd,compression-level=23",
            "type=registry,compression=uncompressed,compression-level=1",
            "type=registry,compression-level=fast",
            "type=oci,dest=x,compression-level=1",
        ] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "hunter2").unwrap();
        let (id, data) = parse_secret(&format!("id=pw,src={}", f.display())).unwrap();
        assert_eq!((id.as_str(), data.as_slice()), ("pw", &b"hunter2"[..]));
        // PATH is always set in the test environment.
        let (_, data) = parse_secret("id=p,env=PATH").unwrap();
        assert_eq!(data, std::env::var("PATH").unwrap().into_bytes());
        assert!(parse_secret("src=x").is_err());
        for bad in ["id=", "id=,src=/etc/hostname", "id=x,src=", "id=x,env="] {
            let e = parse_secret(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--secret {bad:?}: ")), "{e}");
            assert!(e.contains("empty"), "{e}");
        }
        let e = parse_secret("id=x,src=/nonexistent/file")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--secret \"id=x,src=/nonexistent/file\": failed to open file \
             `/nonexistent/file`: No such file or directory (os error 2)"
        );
        assert!(parse_secret("id=x,env=RBUILD_SURELY_UNSET_VAR_1234").is_err());
        assert!(parse_secret("id=x,src=/nonexistent/file").is_err());
    }

    #[test]
    fn failure_report_shows_instruction_command_output_and_last_good() {
        let src = "FROM busybox\nRUN echo hi && \\\n    exit 3\n";
        let f = StepFailure {
            name: "[stage-0 2/2] RUN echo hi &&     exit 3".into(),
            location: Some(SourceLocation {
                file: "Dockerfile".into(),
                start_line: 2,
                end_line: 3,
            }),
            command: Some((
                vec!["/bin/sh".into(), "-c".into(), "echo hi && exit 3".into()],
                3,
            )),
            error: String::new(),
            last_lines: vec!["hi".into()],
            last_good: Some("3f2a9c".into()),
            hint: None,
        };
        insta::assert_snapshot!(failure_report(&f, src));
    }
}
