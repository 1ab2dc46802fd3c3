//! The contract between the solver and whoever runs ops: results
//! ([`ResultRef`]), failures ([`ExecError`]), and the [`Executor`] and
//! [`ContentChecksum`] traits a worker implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rbuild_ops::{CacheKey, Checksum, Selection, Vertex, VertexId};
use serde::{Deserialize, Serialize};

use crate::progress::VertexLogger;

/// An executor's result: an opaque id (a snapshot) that only the executor
/// interprets. Stored in the cache index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResultRef(pub String);

impl ResultRef {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an executor could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A process exited unsuccessfully (`BuildKit`'s wording).
    #[error("process \"{}\" did not complete successfully: exit code: {code}", command.join(" "))]
    ProcessFailed {
        command: Vec<String>,
        code: i32,
        /// The last lines of its output, oldest first.
        last_lines: Vec<String>,
        /// Whether it ran under the sandbox's seccomp profile (see
        /// [`ExecError::hint`]).
        seccomp: bool,
    },
    /// A process was stopped by a resource limit of the build: the command
    /// (`BuildKit`'s wording) and the limit with the option that set it.
    #[error("process \"{}\" did not complete successfully: {limit}", command.join(" "))]
    LimitExceeded {
        command: Vec<String>,
        limit: StepLimit,
        /// The last lines of its output, oldest first.
        last_lines: Vec<String>,
    },
    /// Anything else, already worded for the user.
    #[error("{0}")]
    Message(String),
    /// An underlying error.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl ExecError {
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message(message.into())
    }

    /// What the user may do about this failure, when it looks like one the
    /// sandbox caused: a process under the seccomp profile whose output says
    /// "Operation not permitted" (what a refused syscall gives) may have been
    /// refused one. Shown after the error, whose wording stays `BuildKit`'s.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ExecError::ProcessFailed {
                last_lines,
                seccomp: true,
                ..
            } if last_lines
                .iter()
                .any(|l| l.contains("Operation not permitted")) =>
            {
                Some(SECCOMP_HINT)
            }
            _ => None,
        }
    }
}

/// See [`ExecError::hint`].
pub const SECCOMP_HINT: &str = "hint: RUN steps run under Docker's default seccomp profile, which \
    refuses some system calls with \"Operation not permitted\"; a step that needs one can run \
    with `RUN --security=insecure` and `rbuild build --allow security.insecure`, which lifts \
    the profile";

/// The resource limit that stopped a step ([`ExecError::LimitExceeded`]),
/// named with the `rbuild build` option that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepLimit {
    /// A process was killed by the OOM killer under `--memory` (bytes).
    Memory(u64),
    /// A fork was refused at `--pids-limit` (processes).
    Pids(u64),
    /// The step ran longer than `--step-timeout`.
    Timeout(Duration),
}

impl fmt::Display for StepLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepLimit::Memory(b) => {
                write!(f, "killed: out of memory (--memory {})", docker_size(*b))
            }
            StepLimit::Pids(n) => write!(f, "pids limit {n} reached (--pids-limit)"),
            StepLimit::Timeout(d) => {
                write!(f, "timed out after {} (--step-timeout)", go_duration(*d))
            }
        }
    }
}

/// Bytes as `docker --memory` takes them: `64m`, `1g`, else a plain number.
fn docker_size(b: u64) -> String {
    for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
        if b >= 1 << shift && b % (1 << shift) == 0 {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// A duration as Go prints it (what `--step-timeout` takes): `2s`, `1m30s`,
/// `1h0m0s`, `1.5s`, `250ms`.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    if secs == 0 {
        return format!("{ms}ms");
    }
    let frac = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}").trim_end_matches('0').to_owned()
    };
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}{frac}s")
    } else if m > 0 {
        format!("{m}m{s}{frac}s")
    } else {
        format!("{s}{frac}s")
    }
}

/// A boxed future, so [`Executor`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the executor gets besides the vertex and its inputs.
#[derive(Clone, Debug)]
pub struct ExecContext {
    pub id: VertexId,
    /// The vertex's cache key (a stable name for its result).
    pub key: CacheKey,
    /// Report output lines and progress here.
    pub logger: VertexLogger,
}

/// Runs ops. Implemented on top of the image store, snapshotter and sandbox.
pub trait Executor: ContentChecksum + Send + Sync + 'static {
    /// Produce the result of `vertex`; `inputs[i]` is the result of
    /// `vertex.inputs[i]`. The future is dropped if the solve is cancelled
    /// (another vertex failed): executors must clean up on drop (e.g. kill
    /// the process).
    fn execute<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [ResultRef],
        ctx: ExecContext,
    ) -> BoxFuture<'a, Result<ResultRef, ExecError>>;

    /// Whether a result recorded in the cache index is still usable (its
    /// snapshot was not pruned). A `false` turns a hit into a miss.
    fn result_exists(&self, _result: &ResultRef) -> bool {
        true
    }
}

/// Records of a build cache imported from elsewhere (`--cache-from`), asked
/// when the local cache index has no record for a key.
pub trait ImportedCache: Send + Sync + 'static {
    /// The result for `key`, made available here (its layers unpacked into
    /// snapshots), or `None` when no imported record has it or its layers
    /// cannot be had (a record without layers, a missing or corrupt blob:
    /// the step then runs). Only the results the build asks for are
    /// unpacked. Called from a blocking thread.
    fn load(&self, key: &CacheKey, logger: &VertexLogger) -> Option<ResultRef>;

    /// Whether an imported record has `key` (with layers or not): the vertex
    /// is then answered lazily, its result made available only if needed.
    fn has(&self, key: &CacheKey) -> bool;

    /// The key of the record whose inputs' keys gave `by_inputs` (the key of
    /// its op over its inputs' own keys, no content checksums): lets a step
    /// that reads a lazy input by content be found without unpacking it.
    fn key_by_inputs(&self, by_inputs: &CacheKey) -> Option<CacheKey>;
}

/// The hook the executor implements so keys can depend on file content.
pub trait ContentChecksum: Send + Sync {
    /// A checksum of exactly the paths `selection` picks in `result`, the
    /// result of `input` (tar-header fields without mtime, then content; see
    /// the worker's context checksummer).
    ///
    /// `Ok(None)` means "not computed": the input's own key is used instead.
    /// For a volatile input ([`rbuild_ops::Op::is_volatile`]) `None` makes its dependent
    /// uncacheable.
    ///
    /// Called from a blocking thread; may take long.
    fn content_checksum(
        &self,
        input: &Vertex,
        result: &ResultRef,
        selection: &Selection,
    ) -> Result<Option<Checksum>, ExecError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_name_the_command_and_the_option() {
        let e = |limit| {
            ExecError::LimitExceeded {
                command: vec!["/bin/sh".into(), "-c".into(), "make".into()],
                limit,
                last_lines: Vec::new(),
            }
            .to_string()
        };
        assert_eq!(
            e(StepLimit::Memory(64 << 20)),
            "process \"/bin/sh -c make\" did not complete successfully: killed: out of \
             memory (--memory 64m)"
        );
        assert_eq!(
            e(StepLimit::Pids(100)),
            "process \"/bin/sh -c make\" did not complete successfully: pids limit 100 \
             reached (--pids-limit)"
        );
        assert_eq!(
            e(StepLimit::Timeout(Duration::from_secs(2))),
            "process \"/bin/sh -c make\" did not complete successfully: timed out after 2s \
             (--step-timeout)"
        );
    }

    #[test]
    fn sizes_and_durations_read_like_the_options() {
        assert_eq!(docker_size(1 << 30), "1g");
        assert_eq!(docker_size(1536 << 20), "1536m");
        assert_eq!(docker_size(7_000_000), "7000000");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    }
}
