//! `rbuild run`: a command in a throwaway container.
//!
//! The container's root is an overlay over the given root filesystem (lower) with a
//! temporary upper directory, mounted by the sandbox inside its own mount namespace:
//! the root filesystem is never modified and nothing is left behind. Where overlayfs
//! cannot be used, the root filesystem is copied to a temporary directory instead.
//!
//! Until the image store is wired in, the root filesystem is a directory given with
//! `--rootfs`; `IMAGE` arguments are refused with a message saying so.

use std::path::PathBuf;

use anyhow::{Context, bail};
use rbuild_sandbox::{
    CancelToken, Input, NetworkMode, Output, ProcessSpec, Rootfs, SandboxError, run,
};

#[derive(clap::Args, Debug)]
#[command(
    about = "Run a command in a throwaway container",
    override_usage = "rbuild run [OPTIONS] --rootfs DIR CMD [ARG...]\n       rbuild run [OPTIONS] IMAGE [CMD [ARG...]]"
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
    /// Network: `host` (the host's) or `none` (only loopback)
    #[arg(long, value_enum, default_value_t = Network::Host)]
    network: Network,
    /// Hostname inside the container
    #[arg(long, default_value = "rbuild")]
    hostname: String,
    /// Keep stdin open (pass rbuild's stdin to the command)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal (with -i: an interactive shell)
    #[arg(short = 't', long)]
    tty: bool,
    /// Use this directory as the container's root filesystem instead of an image
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// IMAGE then CMD... (or, with --rootfs, CMD...)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE|CMD"
    )]
    args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    Host,
    None,
}

/// Runs the command; returns the exit code for rbuild (the command's own, or
/// 125/126/127 like `docker run` when it could not be started).
pub fn main(args: &RunArgs) -> i32 {
    match run_cmd(args) {
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

fn run_cmd(args: &RunArgs) -> anyhow::Result<i32> {
    let Some(dir) = &args.rootfs else {
        match args.args.first() {
            Some(image) => bail!(
                "cannot run image {image:?}: this rbuild has no image store yet; \
                 use --rootfs DIR to run over a root filesystem directory"
            ),
            None => bail!("no image given (usage: rbuild run [OPTIONS] --rootfs DIR CMD...)"),
        }
    };
    if args.args.is_empty() {
        bail!("no command specified");
    }
    let lower = fs_err::canonicalize(dir).with_context(|| "the --rootfs directory")?;
    if !lower.is_dir() {
        bail!("--rootfs {} is not a directory", lower.display());
    }

    let cancel = CancelToken::new();
    install_signal_handlers(&cancel)?;

    let spec = || {
        let mut spec = ProcessSpec::new(args.args.clone());
        spec.env = env_entries(&args.env);
        spec.user = args.user.clone().unwrap_or_default();
        spec.cwd = args.workdir.clone().unwrap_or_else(|| "/".into());
        spec.hostname.clone_from(&args.hostname);
        spec.network = match args.network {
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
        spec
    };

    let scratch = tempfile::Builder::new()
        .prefix("rbuild-run-")
        .tempdir()
        .context("creating the container's scratch directory")?;
    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    fs_err::create_dir(&upper)?;
    fs_err::create_dir(&work)?;
    let overlay = Rootfs::Overlay {
        lower: vec![lower.clone()],
        upper,
        work,
    };
    let result = match run(&overlay, spec()) {
        // The overlay could not be mounted (no overlayfs here, or not in a user
        // namespace): nothing ran yet, so run again over a copy.
        Err(SandboxError::Setup { message })
            if message.contains("mount: ")
                && message.contains(scratch.path().to_str().unwrap_or("\0")) =>
        {
            let copy = scratch.path().join("copy");
            rbuild_snapshotter::overlay::copy_lower_stack(std::slice::from_ref(&lower), &copy)
                .context("copying the root filesystem (overlayfs is not available)")
                .and_then(|()| Ok(run(&Rootfs::Dir(copy), spec())?))
        }
        other => other.map_err(anyhow::Error::from),
    };
    // overlayfs leaves work/work with mode 000: as non-root the scratch dir could
    // not be removed without opening it up first.
    let _ = fs_err::set_permissions(
        scratch.path().join("work/work"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    Ok(result?.code)
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
