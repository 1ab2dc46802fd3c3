//! Progress events the solver emits; the cli renders them.
//!
//! Each event serialises to one JSON object with an `"event"` tag, e.g.
//! `{"event":"vertex_done","id":3,"duration_ms":1200}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use rbuild_ops::{CacheKey, SourceLocation, VertexId};

/// The sending half the solver writes events to.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;
/// The receiving half the renderer reads.
pub type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// A new event channel.
pub fn channel() -> (EventSender, EventReceiver) {
    tokio::sync::mpsc::unbounded_channel()
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One progress event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The vertex is being worked on: it got a job slot to execute, or it is
    /// about to be reported `VertexCached`, or it failed computing its key.
    /// Vertices waiting for a job slot have not started.
    VertexStarted {
        id: VertexId,
        name: String,
        location: Option<SourceLocation>,
    },
    /// Answered from the cache; nothing ran.
    VertexCached { id: VertexId, name: String },
    /// The cache key of a started vertex whose result is cacheable (sent
    /// after `VertexStarted`): what names its result in the cache index and
    /// in an exported cache. Shown in JSON progress only.
    VertexKey { id: VertexId, key: CacheKey },
    /// A line of output from the vertex's process.
    VertexLog {
        id: VertexId,
        stream: Stream,
        line: String,
    },
    /// A named phase of the vertex's work began (`completed: false`) or
    /// ended (`completed: true`), as `BuildKit`'s vertex statuses: the export
    /// reports `exporting layers`, `writing image sha256:...`, `naming to
    /// ...`, `sending tarball`, `renaming to DEST`.
    VertexStatus {
        id: VertexId,
        name: String,
        completed: bool,
    },
    /// Bytes transferred or processed (pulls, downloads, copies).
    VertexProgress {
        id: VertexId,
        current: u64,
        total: Option<u64>,
    },
    /// Executed successfully.
    VertexDone {
        id: VertexId,
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
    },
    /// Failed; the solve stops.
    VertexFailed { id: VertexId, error: String },
    /// Was running (or computing its key) when another vertex failed, and
    /// was stopped.
    VertexCanceled { id: VertexId },
}

impl Event {
    /// The vertex the event is about.
    pub fn vertex(&self) -> VertexId {
        match self {
            Event::VertexStarted { id, .. }
            | Event::VertexCached { id, .. }
            | Event::VertexKey { id, .. }
            | Event::VertexLog { id, .. }
            | Event::VertexStatus { id, .. }
            | Event::VertexProgress { id, .. }
            | Event::VertexDone { id, .. }
            | Event::VertexFailed { id, .. }
            | Event::VertexCanceled { id } => *id,
        }
    }

    /// One line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise to JSON")
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` signature
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// What an executor uses to report log lines and progress for the vertex it
/// runs.
#[derive(Clone, Debug)]
pub struct VertexLogger {
    id: VertexId,
    sender: EventSender,
}

impl VertexLogger {
    pub fn new(id: VertexId, sender: EventSender) -> Self {
        Self { id, sender }
    }

    pub fn id(&self) -> VertexId {
        self.id
    }

    /// Report one line of output. Lost silently if nobody listens.
    pub fn log(&self, stream: Stream, line: impl Into<String>) {
        let _ = self.sender.send(Event::VertexLog {
            id: self.id,
            stream,
            line: line.into(),
        });
    }

    /// Report bytes processed.
    pub fn progress(&self, current: u64, total: Option<u64>) {
        let _ = self.sender.send(Event::VertexProgress {
            id: self.id,
            current,
            total,
        });
    }
}
