//! One module per op, as `BuildKit` splits `solver/llbsolver/ops`. Each takes
//! the worker state and the op's input results and returns the op's result.

pub(crate) mod exec;
pub(crate) mod file;
pub(crate) mod merge;
pub(crate) mod source;
