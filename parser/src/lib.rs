//! rbuild-parser: the Dockerfile grammar and the shell-word lexer.
//!
//! This crate does no I/O and knows nothing about images: text in, typed AST or
//! diagnostics out.

mod ast;
mod error;
mod grammar;
mod quote;
pub mod shell;
mod span;

pub use ast::{Ast, Directives, Heredoc, Node, Warning, parse_ast};
pub use error::ParseError;
pub use span::Span;
