//! rbuild's own static rules (the seeds' best practices), read from the Dockerfile.

use rbuild_parser::Dockerfile;

use super::{CheckConfig, LintOptions, Sink};

/// What the caller knows about the build context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextFacts {
    /// Total bytes of regular files in the context (when it was measured).
    pub size: Option<u64>,
    /// Whether the context has a `.dockerignore` (or `<Dockerfile>.dockerignore`).
    pub has_dockerignore: bool,
    /// The size past which a context without `.dockerignore` is large.
    pub large: u64,
}

pub(super) fn run(
    _src: &str,
    _df: &Dockerfile,
    _opts: &LintOptions<'_>,
    _cfg: &CheckConfig,
    _sink: &mut Sink,
) {
}
