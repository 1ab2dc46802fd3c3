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
    // The dump shows BuildKit's parser level, like BuildKit's own dumper: it
    // accepts what only the later instruction checks reject.
    let rendered = match args.format {
        Format::Json => match rbuild_parser::parse(&src) {
            Ok(d) => {
                for w in &d.warnings {
                    eprint!("{}", w.render(&name, &src));
                }
                Ok(serde_json::to_string_pretty(&d)? + "\n")
            }
            Err(e) => Err(e),
        },
        Format::Dump => rbuild_parser::parse_ast(&src).map(|ast| ast.dump()),
    };
    match rendered {
        Ok(text) => {
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprint!("{}", e.render(&name, &src));
            Ok(ExitCode::FAILURE)
        }
    }
}
