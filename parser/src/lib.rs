//! rbuild-parser: the Dockerfile grammar and the shell-word lexer.
//!
//! This crate does no I/O and knows nothing about images: text in, typed AST or
//! diagnostics out.

pub mod shell;
mod error;
mod grammar;
mod span;
