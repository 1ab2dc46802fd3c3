//! The `rbuild` binary: clap commands, progress rendering and error reports.

mod cmd;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build container images from Dockerfiles, without a daemon"
)]
struct Cli {
    /// State root (default: /var/lib/rbuild as root, $`XDG_DATA_HOME/rbuild` otherwise)
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cmd::state_root(cli.root.as_deref());
    if !matches!(
        cli.command,
        Command::Parse(_) | Command::Check(_) | Command::Login(_) | Command::Logout(_)
    ) {
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
    };
    // What this process held is released with it; its lease files go now
    // rather than at the next command's sweep.
    rbuild_snapshotter::lease::Lease::release_all();
    match result {
        Ok(code) => code,
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
