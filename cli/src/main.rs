//! The `rbuild` binary: clap commands, progress rendering and error reports.

use clap::Parser;

#[derive(Parser)]
#[command(name = "rbuild", version, about = "Build container images from Dockerfiles, without a daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {}

fn main() {
    let _cli = Cli::parse();
}
