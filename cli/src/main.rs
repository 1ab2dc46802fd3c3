//! The `rbuild` binary: clap commands, progress rendering and error reports.

mod cmd;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

#[derive(Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build container images from Dockerfiles, without a daemon",
    override_usage = "rbuild [OPTIONS] <COMMAND>\n       rbuild [BUILD OPTIONS] CONTEXT   (as `rbuild build`, when the first word is not a command)"
)]
struct Cli {
    /// State root (default: /var/lib/rbuild as root, $`XDG_DATA_HOME/rbuild` otherwise)
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Build an image from a Dockerfile.
    Build(cmd::build::BuildArgs),
    /// Parse a Dockerfile and print its syntax tree.
    Parse(cmd::parse::ParseArgs),
    /// Run the build checks on a Dockerfile without building.
    Check(cmd::check::CheckArgs),
    /// Run a command in a throwaway container of an image.
    Run(cmd::run::RunArgs),
    /// Download an image from a registry
    Pull(cmd::transfer::PullArgs),
    /// Upload an image to a registry
    Push(cmd::transfer::PushArgs),
    /// Log in to a registry
    Login(cmd::transfer::LoginArgs),
    /// Log out from a registry
    Logout(cmd::transfer::LogoutArgs),
    #[command(flatten)]
    Image(cmd::image::ImageCommand),
    #[command(flatten)]
    System(cmd::system::SystemCommand),
    #[command(flatten)]
    Builder(cmd::builder::BuilderCommand),
    #[command(flatten)]
    Info(cmd::info::InfoCommand),
}

/// A reader that stops reading (`rbuild images | head -1`) ends rbuild as
/// SIGPIPE would end a C program (exit 141, nothing printed), not with
/// `println!`'s panic. Rust ignores SIGPIPE so that the sandbox's and the
/// registry client's pipes and sockets get EPIPE errors they handle; only a
/// failed print to stdout is taken for the reader having gone.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}

/// Whether stdout is a pipe whose reader has closed it (poll reports an
/// error on its write end).
fn stdout_reader_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    // `rbuild -f Dockerfile -t name .` is `rbuild build …`; flag errors are
    // one line and exit 125, as docker's.
    let argv = cmd::refuse::default_to_build(std::env::args_os().collect(), &Cli::command());
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return cmd::refuse::clap_error(&e, &argv),
    };
    let root = match cmd::state_root(cli.root.as_deref()) {
        Ok(root) => root,
        // Commands that touch no state run without one.
        Err(_)
            if matches!(
                cli.command,
                Command::Parse(_)
                    | Command::Logout(_)
                    | Command::Info(
                        cmd::info::InfoCommand::Version | cmd::info::InfoCommand::Completion { .. }
                    )
            ) =>
        {
            PathBuf::new()
        }
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !matches!(
        cli.command,
        Command::Parse(_)
            | Command::Check(_)
            | Command::Login(_)
            | Command::Logout(_)
            | Command::Info(_)
    ) {
        // As non-root, the rest of the command runs in a user namespace of
        // its own (the state root was chosen above, as the real user). Still
        // one thread here, as `unshare` needs.
        if let Err(e) = rbuild_sandbox::rootless::enter() {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
        cmd::sweep_state_root(&root);
    }
    let result = match cli.command {
        Command::Build(args) => cmd::build::run(&args, &root),
        Command::Parse(args) => cmd::parse::run(&args),
        Command::Check(args) => cmd::check::run(&args, &root),
        Command::Run(args) => Ok(exit_code(cmd::run::main(&args, &root))),
        Command::Pull(args) => cmd::transfer::pull(&args, &root),
        Command::Push(args) => cmd::transfer::push(&args, &root),
        Command::Login(args) => cmd::transfer::login(&args, &root),
        Command::Logout(args) => cmd::transfer::logout(&args),
        Command::Image(c) => cmd::image::run(c, &root),
        Command::System(c) => cmd::system::run(&c, &root).map(|()| ExitCode::SUCCESS),
        Command::Builder(c) => cmd::builder::run(&c, &root).map(|()| ExitCode::SUCCESS),
        Command::Info(c) => cmd::info::run(&c, &root, Cli::command()).map(|()| ExitCode::SUCCESS),
    };
    // What this process held is released with it; its lease files go now
    // rather than at the next command's sweep.
    rbuild_snapshotter::lease::Lease::release_all();
    match result {
        Ok(code) => code,
        // The reader of stdout went away (see `quiet_on_closed_stdout`).
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) && stdout_reader_gone() =>
        {
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("Error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line (each cause once, see
/// [`rbuild_engine::one_line`]); a full disk reads "no space left on device"
/// whichever layer met it (the I/O errors of the library crates carry the OS's text,
/// `No space left on device (os error 28)`, inside their own).
fn error_line(e: &anyhow::Error) -> String {
    rbuild_engine::one_line(e.as_ref()).replace(
        "No space left on device (os error 28)",
        "no space left on device",
    )
}

/// A process exit status as an `ExitCode` (statuses outside 0..=255 become 1).
fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}
