//! The `rbuild` binary: clap commands, progress rendering and error reports.

use clap::Parser;

mod run;

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
    Run(run::RunArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(&args),
    };
    std::process::exit(code);
}
