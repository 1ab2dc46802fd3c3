//! The worker's errors. They reach the solver as [`ExecError::Other`], so the
//! source chain survives to the one-line rendering (`engine::one_line` prints
//! each cause once): a message worded for the user ([`ExecError::msg`]) is for
//! conditions with no underlying error; where there is one, it is a source here.

use std::error::Error as StdError;

use rbuild_solver::ExecError;

/// Boxed cause.
type Source = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An operation on something failed (`chown /x`, `locking /c`, `https://u`).
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Source,
    },
    /// The sandbox could not start or finish a RUN step.
    #[error(transparent)]
    Sandbox(#[from] rbuild_sandbox::SandboxError),
    /// The build context could not be read or checksummed.
    #[error(transparent)]
    BuildContext(#[from] crate::context::ContextError),
}

impl From<WorkerError> for ExecError {
    fn from(e: WorkerError) -> Self {
        ExecError::Other(Box::new(e))
    }
}

/// `what` failed because of `e`, keeping `e` as the source.
pub(crate) fn context(
    what: impl Into<String>,
    e: impl StdError + Send + Sync + 'static,
) -> ExecError {
    WorkerError::Context {
        what: what.into(),
        source: Box::new(e),
    }
    .into()
}

/// Any error as an [`ExecError`], as its source.
pub(crate) fn err(e: impl StdError + Send + Sync + 'static) -> ExecError {
    ExecError::Other(Box::new(e))
}
