//! The `rbuild` binary: clap commands, progress rendering and error reports.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build container images from Dockerfiles, without a daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Parse a Dockerfile and print its syntax tree.
    Parse(cmd::parse::ParseArgs),
    /// Run a command in a throwaway sandbox over a root filesystem.
    Run(cmd::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(&args),
        Command::Run(args) => Ok(exit_code(cmd::run::main(&args))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A process exit status as an `ExitCode` (statuses outside 0..=255 become 1).
fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}
