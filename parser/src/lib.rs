//! rbuild-parser: the Dockerfile grammar and the shell-word lexer.
//!
//! This crate does no I/O and knows nothing about images: text in, typed AST or
//! diagnostics out.
//!
//! Two levels:
//! - [`parse_ast`]: BuildKit's parser level ([`Ast`] of [`Node`]s), which is
//!   what BuildKit's AST dump ([`Ast::dump`]) shows.
//! - [`parse`]: the typed level ([`Dockerfile`] of [`Instruction`]s), which
//!   also rejects what BuildKit's `instructions` package rejects.

mod ast;
mod error;
mod grammar;
mod instructions;
mod quote;
pub use quote::go_quote;
pub mod shell;
mod span;

pub use ast::{Ast, Directives, Heredoc, Node, Warning, parse_ast};
pub use error::{ParseError, edit_distance};
pub use instructions::{
    Add, Arg, ArgDef, BindMount, CacheMount, Cmd, Command, Copy, Dockerfile, Duration, Entrypoint,
    Env, Expose, From, Healthcheck, Instruction, InstructionKind, KeyValue, Label, Maintainer,
    Mount, NetworkMode, Onbuild, Run, SecretMount, SecurityMode, Shell, SshMount, Stopsignal,
    TmpfsMount, UnexpandedMount, User, Volume, Workdir,
};
pub use span::Span;

/// Parses a Dockerfile into typed instructions.
pub fn parse(src: &str) -> Result<Dockerfile, ParseError> {
    let ast = parse_ast(src)?;
    let instructions = ast
        .nodes
        .iter()
        .map(instructions::instruction)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dockerfile {
        directives: ast.directives,
        instructions,
        warnings: ast.warnings,
    })
}

impl Dockerfile {
    /// BuildKit's AST dump of this file (see [`Ast::dump`]).
    pub fn dump(&self) -> String {
        ast::dump_nodes(self.instructions.iter().map(|i| &i.node))
    }
}
