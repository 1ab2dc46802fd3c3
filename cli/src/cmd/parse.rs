//! `rbuild parse`: print a Dockerfile's syntax tree as JSON or in BuildKit's
//! AST dump format; on invalid input print a diagnostic and exit 1.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// The typed syntax tree as JSON (instructions, flags, heredocs, spans).
    Json,
    /// BuildKit's parser AST dump: one `(instruction "arg" ...)` per line.
    Dump,
}

#[derive(clap::Args, Debug)]
pub struct ParseArgs {
    /// The Dockerfile to read; `-` reads standard input.
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

pub fn run(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let (name, src) = if args.file.as_os_str() == "-" {
        let mut src = String::new();
        std::io::stdin()
            .read_to_string(&mut src)
            .context("reading the Dockerfile from standard input")?;
        ("<stdin>".to_string(), src)
    } else {
        let src = fs_err::read_to_string(&args.file)?;
        (args.file.display().to_string(), src)
    };
    let dockerfile = match rbuild_parser::parse(&src) {
        Ok(d) => d,
        Err(e) => {
            eprint!("{}", e.render(&name, &src));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &dockerfile)?;
            writeln!(out)?;
        }
        Format::Dump => write!(out, "{}", dockerfile.dump())?,
    }
    Ok(ExitCode::SUCCESS)
}
