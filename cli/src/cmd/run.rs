//! `rbuild run`: a command in a throwaway container.
//!
//! The container's root is an overlay over the given root filesystem (lower) with a
//! temporary upper directory, mounted by the sandbox inside its own mount namespace:
//! the root filesystem is never modified and nothing is left behind. Where overlayfs
//! cannot be used, the root filesystem is copied to a temporary directory instead.
//!
//! `IMAGE` is resolved in the local image store; its layers are unpacked once into
//! `<root>/rootfs-cache/<image id>` (written to a temporary name and renamed into
//! place, then reused read-only as the overlay's lower layer) and its config gives
//! the defaults: ENTRYPOINT + CMD (CMD replaced by a given command), Env,
//! `WorkingDir` and `User`, overridden by `-e`, `-w` and `-u`. With `--rootfs DIR` a
//! directory is the root filesystem instead and every argument is the command.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rbuild_sandbox::{
    CancelToken, Input, NetworkMode, Output, ProcessSpec, Rootfs, SandboxError, run,
};

#[derive(clap::Args, Debug)]
#[command(
    about = "Run a command in a throwaway container",
    override_usage = "rbuild run [OPTIONS] IMAGE [CMD [ARG...]]\n       rbuild run [OPTIONS] --rootfs DIR CMD [ARG...]"
)]
pub struct RunArgs {
    /// Remove the container when it exits (runs are always throwaway: the root
    /// filesystem is never changed)
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (`K` alone takes it from rbuild's environment)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// User (`name`, `name:group`, `uid`, `uid:gid`) from the image's passwd/group
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Network: `default` (a network namespace of its own with outbound access
    /// through pasta or slirp4netns), `none` (only loopback) or `host` (the host's)
    #[arg(long, value_enum, default_value_t = Network::Default)]
    network: Network,
    /// Hostname inside the container
    #[arg(long, default_value = "rbuild")]
    hostname: String,
    /// Security option, as docker's: `seccomp=unconfined` runs without the
    /// default seccomp profile (Docker's, applied otherwise)
    #[arg(long = "security-opt", value_name = "OPT", value_parser = parse_security_opt)]
    security_opt: Vec<SecurityOpt>,
    /// Keep stdin open (pass rbuild's stdin to the command)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal (with -i: an interactive shell)
    #[arg(short = 't', long)]
    tty: bool,
    /// Use this directory as the container's root filesystem instead of an image
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    #[command(flatten)]
    limits: crate::cmd::limits::LimitArgs,
    #[command(flatten)]
    more: crate::cmd::run_flags::RunFlags,
    /// IMAGE then CMD... (or, with --rootfs, CMD...)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE|CMD"
    )]
    args: Vec<String>,
}

/// A `--security-opt` rbuild supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SecurityOpt {
    SeccompUnconfined,
}

fn parse_security_opt(s: &str) -> Result<SecurityOpt, String> {
    // docker also takes the old `seccomp:unconfined` spelling.
    match s {
        "seccomp=unconfined" | "seccomp:unconfined" => Ok(SecurityOpt::SeccompUnconfined),
        _ => Err(format!(
            "unsupported security option {s:?}: rbuild run supports seccomp=unconfined only"
        )),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    Default,
    Host,
    None,
}

/// Runs the command; returns the exit code for rbuild (the command's own, or
/// 125/126/127 like `docker run` when it could not be started).
pub fn main(args: &RunArgs, root: &Path) -> i32 {
    // IMAGE takes hyphen values (so does the command after it): a flag clap
    // did not know lands there.
    if let Some(flag) = args.args.first().filter(|a| a.starts_with('-')) {
        eprintln!("{}", crate::cmd::refuse::flag_message("run", flag));
        return i32::from(crate::cmd::refuse::FLAG_ERROR);
    }
    match run_cmd(args, root) {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<SandboxError>()
                .map_or(125, SandboxError::exit_code);
            eprintln!("rbuild run: {e:#}");
            code
        }
    }
}

fn env_entries(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// What to run and over what: the lower directory and the process defaults.
struct Target {
    lower: PathBuf,
    argv: Vec<String>,
    env: Vec<String>,
    user: String,
    cwd: String,
}

/// `KEY` of a `KEY=value` entry.
fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// `base` with `over` applied: a key in `over` replaces the same key in `base`.
fn merge_env(base: &[String], over: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = base
        .iter()
        .filter(|b| !over.iter().any(|o| env_key(o) == env_key(b)))
        .cloned()
        .collect();
    out.extend(over);
    out
}

fn target(args: &RunArgs, root: &Path) -> anyhow::Result<Target> {
    let mut env = args.more.env_file_entries()?;
    env = merge_env(&env, env_entries(&args.env));
    if let Some(dir) = &args.rootfs {
        if args.args.is_empty() {
            bail!("no command specified");
        }
        let lower = fs_err::canonicalize(dir).with_context(|| "the --rootfs directory")?;
        if !lower.is_dir() {
            bail!("--rootfs {} is not a directory", lower.display());
        }
        return Ok(Target {
            lower,
            argv: args.args.clone(),
            env,
            user: args.user.clone().unwrap_or_default(),
            cwd: args.workdir.clone().unwrap_or_else(|| "/".into()),
        });
    }
    let Some((name, cmd)) = args.args.split_first() else {
        bail!("no image given (usage: rbuild run [OPTIONS] IMAGE [CMD...])");
    };
    let store = rbuild_image::Store::open(root)
        .with_context(|| format!("opening the image store {}", root.display()))?;
    // Held while its layers are unpacked: a concurrent prune or rmi leaves them.
    let image = match store.resolve_and_hold(name) {
        Ok(i) => i,
        Err(rbuild_image::Error::NoSuchImage(_)) => {
            bail!("no such image: {name} (see `rbuild images`)")
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("image {name:?}"))),
    };
    let lower = unpacked_rootfs(&store, &image)?;
    let config = image.config.config.clone();
    // --entrypoint replaces the ENTRYPOINT and drops the image's CMD (docker's
    // rule); `--entrypoint ""` leaves none.
    let (mut argv, image_cmd) = match &args.more.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (
            config.entrypoint.clone().unwrap_or_default(),
            config.cmd.clone().unwrap_or_default(),
        ),
    };
    if cmd.is_empty() {
        argv.extend(image_cmd);
    } else {
        argv.extend(cmd.iter().cloned());
    }
    if argv.is_empty() {
        bail!("no command specified: image {name} has no ENTRYPOINT or CMD");
    }
    Ok(Target {
        lower,
        argv,
        env: merge_env(&config.env, env),
        user: args.user.clone().unwrap_or(config.user),
        cwd: args
            .workdir
            .clone()
            .or(Some(config.working_dir).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into()),
    })
}

/// The image's layers unpacked in `<root>/rootfs-cache/<id>`: made once (unpacked
/// in a temporary directory beside it, then renamed into place) and reused.
fn unpacked_rootfs(
    store: &rbuild_image::Store,
    image: &rbuild_image::Image,
) -> anyhow::Result<PathBuf> {
    let cache = rbuild_engine::StateLayout::new(store.root()).rootfs_cache();
    let dest = cache.join(image.id.hex());
    if dest.is_dir() {
        return Ok(dest);
    }
    fs_err::create_dir_all(&cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(&store.temp_prefix(".tmp")?)
        .tempdir_in(&cache)
        .with_context(|| format!("creating a temporary directory in {}", cache.display()))?;
    fs_err::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    store
        .unpack(
            image,
            tmp.path(),
            &rbuild_snapshotter::ApplyOptions::default(),
        )
        .with_context(|| format!("unpacking image {}", image.id))?;
    match std::fs::rename(tmp.path(), &dest) {
        Ok(()) => {}
        // Another run unpacked it meanwhile: use theirs (ours is removed on drop).
        Err(_) if dest.is_dir() => {}
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "renaming {} to {}",
                tmp.path().display(),
                dest.display()
            )));
        }
    }
    Ok(dest)
}

fn run_cmd(args: &RunArgs, root: &Path) -> anyhow::Result<i32> {
    let limits = args.limits.limits(None)?;
    let mounts = args.more.mounts()?;
    // Held for the whole run; released when this process ends.
    let _name = args.more.hold_name(root)?;
    let Target {
        lower,
        argv,
        env,
        user,
        cwd,
    } = target(args, root)?;

    let cancel = CancelToken::new();
    install_signal_handlers(&cancel)?;

    // Under the state root, swept by the next command if this one is killed;
    // in the system's temporary directory when a `--rootfs` run has no usable
    // state root (an unprivileged user pointed at root's).
    let in_root = rbuild_image::Store::open(root).and_then(|store| {
        Ok(tempfile::Builder::new()
            .prefix(&store.temp_prefix("run")?)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(store.tmp_dir())?)
    });
    let scratch = match in_root {
        Ok(d) => d,
        Err(_) if args.rootfs.is_some() => tempfile::Builder::new()
            .prefix("rbuild-run-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .context("creating the container's scratch directory")?,
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "creating the container's scratch directory in {}",
                root.display()
            )));
        }
    };
    let scratch_path = scratch.path().to_path_buf();
    let spec = || {
        let mut spec = ProcessSpec::new(argv.clone());
        spec.env.clone_from(&env);
        spec.user.clone_from(&user);
        spec.cwd.clone_from(&cwd);
        spec.hostname.clone_from(&args.hostname);
        spec.seccomp = !args.security_opt.contains(&SecurityOpt::SeccompUnconfined);
        spec.network = match args.network {
            Network::Default => NetworkMode::Private,
            Network::Host => NetworkMode::Host,
            Network::None => NetworkMode::None,
        };
        spec.stdin = if args.interactive || args.tty {
            Input::Inherit
        } else {
            Input::Null
        };
        spec.stdout = Output::Inherit;
        spec.stderr = Output::Inherit;
        spec.terminal = args.tty;
        spec.cancel = Some(cancel.clone());
        spec.scratch_dir = Some(scratch_path.clone());
        spec.limits = limits.clone();
        spec.mounts.clone_from(&mounts);
        spec.readonly_rootfs = args.more.read_only;
        spec
    };

    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    fs_err::create_dir(&upper)?;
    fs_err::create_dir(&work)?;
    let overlay = Rootfs::Overlay {
        lower: vec![lower.clone()],
        upper,
        work,
    };
    let over_copy = || {
        let copy = scratch.path().join("copy");
        rbuild_snapshotter::overlay::copy_lower_stack(std::slice::from_ref(&lower), &copy)
            .context("copying the root filesystem (overlayfs is not available)")
            .and_then(|()| Ok(run(&Rootfs::Dir(copy), spec())?))
    };
    let copying =
        std::env::var(rbuild_snapshotter::snapshots::BACKEND_ENV).is_ok_and(|v| v == "copy");
    let result = if copying {
        over_copy()
    } else {
        match run(&overlay, spec()) {
            // The overlay could not be mounted (no overlayfs here, or not in a user
            // namespace): nothing ran yet, so run again over a copy.
            Err(SandboxError::Setup { message })
                if message.contains("mount: ")
                    && message.contains(scratch.path().to_str().unwrap_or("\0")) =>
            {
                over_copy()
            }
            other => other.map_err(anyhow::Error::from),
        }
    };
    // overlayfs leaves work/work with mode 000: as non-root the scratch dir could
    // not be removed without opening it up first.
    let _ = fs_err::set_permissions(
        scratch.path().join("work/work"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    let status = result?;
    // Like a build step's error: the limit that ended the command.
    let limit = match status.limit {
        Some(rbuild_sandbox::LimitHit::OutOfMemory) => Some(rbuild_solver::StepLimit::Memory(
            limits.memory.unwrap_or_default(),
        )),
        Some(rbuild_sandbox::LimitHit::Pids) => Some(rbuild_solver::StepLimit::Pids(
            limits.pids.unwrap_or_default(),
        )),
        None => None,
    };
    if let Some(l) = limit {
        eprintln!("rbuild run: {l}");
    }
    Ok(status.code)
}

/// SIGINT, SIGTERM and SIGHUP cancel the run (every process of the container is
/// killed). With `-t` the terminal is in raw mode: Ctrl-C reaches the container's
/// own terminal as a character, not rbuild as a signal.
fn install_signal_handlers(cancel: &CancelToken) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Blocked here (inherited by the thread below and by the sandbox, which
    // unblocks everything in its processes), taken with sigwait by that thread.
    set.thread_block().context("blocking signals")?;
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        loop {
            match set.wait() {
                Ok(_) => cancel.cancel(),
                Err(_) => return,
            }
        }
    });
    Ok(())
}
