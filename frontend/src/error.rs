//! The frontend's error type: every variant names the Dockerfile and, where
//! there is one, the line.

use rbuild_ops::GraphError;
use rbuild_parser::{ParseError, Span};

/// Why a Dockerfile cannot be turned into a build plan.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontendError {
    /// The Dockerfile (or an ONBUILD trigger of a base image) does not parse.
    #[error("{file}:{}:{}: {}", .error.line, .error.column, .error.message)]
    Parse {
        file: String,
        error: Box<ParseError>,
    },
    /// A problem with one instruction (bad value, unknown stage, ...).
    #[error("{file}:{line}: {message}")]
    Instruction {
        file: String,
        line: usize,
        message: String,
    },
    /// A word that cannot be expanded (`${` errors), or values grown past a limit;
    /// `span` is the failing construct in the Dockerfile (the instruction when the
    /// word cannot be found in its source).
    #[error("{file}:{}:{}: {message}", .span.start_line, .span.start_column)]
    Expansion {
        file: String,
        span: Span,
        message: String,
    },
    /// `--target` names no stage.
    #[error("{file}: target stage {target:?} could not be found{}", fmt_suggestion(.suggestion.as_deref()))]
    UnknownTarget {
        file: String,
        target: String,
        suggestion: Option<String>,
    },
    /// Stages that need each other.
    #[error("{file}:{line}: circular dependency detected on stage: {stage}")]
    CircularDependency {
        file: String,
        line: usize,
        stage: String,
    },
    /// The image resolver could not find a base image.
    #[error("{file}:{line}: {reference}: {message}")]
    Resolve {
        file: String,
        line: usize,
        reference: String,
        message: String,
    },
    /// The Dockerfile has no `FROM`.
    #[error("{file}: dockerfile contains no stages to build")]
    NoStages { file: String },
    /// The solver refused a vertex (a bug in the frontend).
    #[error("{file}: internal error building the graph: {source}")]
    Graph {
        file: String,
        #[source]
        source: GraphError,
    },
}

fn fmt_suggestion(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

impl FrontendError {
    /// The 1-based Dockerfile line the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { error, .. } => Some(error.line),
            Self::Expansion { span, .. } => Some(span.start_line),
            Self::Instruction { line, .. }
            | Self::CircularDependency { line, .. }
            | Self::Resolve { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The part of the Dockerfile the error points at, when it is known to the column.
    pub fn span(&self) -> Option<Span> {
        match self {
            Self::Parse { error, .. } => Some(error.span),
            Self::Expansion { span, .. } => Some(*span),
            _ => None,
        }
    }

    /// The message without the `file:line:` in front.
    pub fn message(&self) -> String {
        match self {
            Self::Parse { error, .. } => error.message.clone(),
            Self::Expansion { message, .. } | Self::Instruction { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// What an [`crate::ImageResolver`] returns when it cannot resolve a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);
