//! What the engine's errors share: a failed step ([`StepFailure`]) and the
//! one-line rendering of an error and its causes ([`one_line`]). A leaf: the
//! errors of a build and of an export, which wrap the errors of the other
//! modules, are the session's ([`crate::BuildError`]) and the exporter's
//! ([`crate::ExportError`]).

use rbuild_ops::{SourceLocation, VertexId};
use rbuild_solver::ExecError;

/// A failed step, with what the failure report needs.
#[derive(Debug)]
pub struct StepFailure {
    /// The failed vertex (its progress events carry the output seen so far).
    pub id: VertexId,
    /// The step's progress name (`[stage-0 2/3] RUN make`).
    pub name: String,
    pub location: Option<SourceLocation>,
    /// Why it failed; [`ExecError::ProcessFailed`] carries the command, its
    /// exit code and its last lines of output.
    pub source: ExecError,
    /// The state before the failing step saved as a dangling image: the short
    /// ID `rbuild run ID sh` takes to open a shell there.
    pub last_good: Option<String>,
}

/// An error and its causes on one line (`a: b: c`), as `anyhow`'s `{:#}`
/// shows them, leaving out a cause whose text the line already holds (the
/// errors of the crates often word their source into their own message).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::ExportError;

    #[test]
    fn one_line_keeps_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let e = ExportError::Write {
            dest: "/out/x.tar".into(),
            source: Box::new(ExportError::Io(io)),
        };
        assert_eq!(one_line(&e), "writing /out/x.tar: disk on fire");
        let e = ExportError::Image(ExecError::msg("no space"));
        assert_eq!(one_line(&e), "exporting the image: no space");
    }
}
