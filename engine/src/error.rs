//! The engine's errors.

use std::path::PathBuf;

use rbuild_ops::{SourceLocation, VertexId};
use rbuild_solver::{CacheIndexError, ExecError, SolveError};

use crate::pending::PendingError;

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

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step failed.
    #[error("{}: {}", .0.name, .0.source)]
    Step(Box<StepFailure>),
    /// Planning failed: an error in the Dockerfile or a base image not found.
    #[error(transparent)]
    Plan(Box<rbuild_frontend::FrontendError>),
    #[error("opening the image store {}", .root.display())]
    Store {
        root: PathBuf,
        #[source]
        source: rbuild_image::Error,
    },
    #[error("{}", .file.display())]
    Ignore {
        file: PathBuf,
        #[source]
        source: rbuild_frontend::dockerignore::PatternError,
    },
    /// The worker could not start (or the kernel lacks what it needs).
    #[error(transparent)]
    Worker(ExecError),
    #[error(transparent)]
    CacheIndex(#[from] CacheIndexError),
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// The garbage collection after the build failed.
    #[error("collecting the build cache")]
    Gc(#[source] crate::gc::GcError),
    /// SIGINT or SIGTERM: the solve was cancelled and cleaned up.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Solve(Box<SolveError>),
    #[error("internal error: the target was not solved")]
    TargetNotSolved,
    #[error(transparent)]
    Export(#[from] ExportError),
    /// `--cache-to` could not be written.
    #[error("exporting cache to {}", .dest.display())]
    CacheExport {
        dest: PathBuf,
        #[source]
        source: crate::cache::CacheError,
    },
    /// `--cache-to type=registry` could not be written.
    #[error("exporting cache to {reference}")]
    CacheExportRegistry {
        reference: String,
        #[source]
        source: crate::cache::CacheError,
    },
    /// `--cache-to type=inline`: the cache description could not be made.
    #[error("preparing the inline cache")]
    CacheInline(#[source] crate::cache::CacheError),
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exporting the image: {0}")]
    Image(#[source] ExecError),
    #[error("exporting to {}: {source}", .dest.display())]
    Dir {
        dest: PathBuf,
        #[source]
        source: ExecError,
    },
    #[error("exporting the root filesystem: {0}")]
    RootFs(#[source] ExecError),
    /// Writing the output file `dest` (through its temporary name) failed.
    #[error("writing {}", .dest.display())]
    Write {
        dest: PathBuf,
        #[source]
        source: Box<ExportError>,
    },
    #[error(transparent)]
    Pending(#[from] PendingError),
    #[error(transparent)]
    Store(#[from] rbuild_image::Error),
    #[error("creating a temporary directory")]
    TempDir(#[source] std::io::Error),
    /// Pushing the image to a registry failed.
    #[error("pushing {name}")]
    Push {
        name: String,
        #[source]
        source: Box<crate::transfer::TransferError>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Squash(#[from] crate::squash::SquashError),
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
