//! Progress events the solver emits; `src/` renders them (tty, plain, json).
//!
//! Vertex identity in events is the LLB op digest, as in BuildKit's `Status` stream, so that the
//! same build reports the same vertex ids whoever renders them.

use std::time::Duration;

use tokio::sync::mpsc;

/// The state a vertex moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VertexState {
    /// Execution started.
    Started,
    /// The result came from the cache; nothing ran.
    Cached,
    /// Execution finished successfully.
    Completed,
    /// Execution failed.
    Error,
}

impl VertexState {
    /// The lowercase name used in JSON progress.
    pub fn as_str(self) -> &'static str {
        match self {
            VertexState::Started => "started",
            VertexState::Cached => "cached",
            VertexState::Completed => "completed",
            VertexState::Error => "error",
        }
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The process' standard output.
    Stdout,
    /// The process' standard error.
    Stderr,
}

/// One progress event.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// A vertex changed state.
    Vertex {
        /// LLB digest of the vertex.
        digest: String,
        /// Human name (`llb.customname` or a derived one).
        name: String,
        /// New state.
        state: VertexState,
        /// Time since the vertex started, for terminal states.
        duration: Option<Duration>,
        /// Error text for `Error`.
        error: Option<String>,
    },
    /// Output of a running vertex.
    Log {
        /// LLB digest of the vertex.
        digest: String,
        /// Which stream.
        stream: LogStream,
        /// Raw bytes, as they came.
        data: Vec<u8>,
    },
    /// A step of the build that is not a vertex of the definition (an export, reading the
    /// build definition): shown like a vertex, never counted as one that executed.
    Step {
        /// An id of the step, shaped like a digest.
        digest: String,
        /// What it does (`exporting to image`).
        name: String,
        /// New state.
        state: VertexState,
        /// Time since it started, for terminal states.
        duration: Option<Duration>,
        /// Error text for `Error`.
        error: Option<String>,
    },
    /// A transfer or sub-task of a vertex or step (`transferring context: 2.1MB`).
    Status {
        /// The vertex or step it belongs to.
        digest: String,
        /// What is being done.
        id: String,
        /// Progress so far (bytes or items).
        current: u64,
        /// Expected total, when known.
        total: Option<u64>,
        /// Whether it is over.
        completed: bool,
    },
    /// A note about the build as a whole (e.g. export steps).
    Message(String),
}

/// Sending half of a progress channel. Sending never fails the build: a renderer that went away
/// only means nobody watches.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<ProgressEvent>>,
    /// Called with each event in the sender's thread, in order (the daemon's status hub).
    sink: Option<std::sync::Arc<dyn Fn(ProgressEvent) + Send + Sync>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("channel", &self.tx.is_some())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl Progress {
    /// A sink that forwards to `tx`.
    pub fn new(tx: mpsc::UnboundedSender<ProgressEvent>) -> Self {
        Progress {
            tx: Some(tx),
            sink: None,
        }
    }

    /// A sink that calls `f` with each event as it is sent: nothing is queued, so whoever
    /// ends the stream after the build has every event (no event can trail a close).
    pub fn from_fn(f: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Self {
        Progress {
            tx: None,
            sink: Some(std::sync::Arc::new(f)),
        }
    }

    /// A sink that drops everything.
    pub fn discard() -> Self {
        Progress {
            tx: None,
            sink: None,
        }
    }

    /// Sends an event.
    pub fn send(&self, ev: ProgressEvent) {
        if let Some(f) = &self.sink {
            f(ev);
        } else if let Some(tx) = &self.tx {
            let _ = tx.send(ev);
        }
    }

    /// Sends a vertex state change.
    pub fn vertex(
        &self,
        digest: &str,
        name: &str,
        state: VertexState,
        duration: Option<Duration>,
        error: Option<String>,
    ) {
        self.send(ProgressEvent::Vertex {
            digest: digest.to_string(),
            name: name.to_string(),
            state,
            duration,
            error,
        });
    }

    /// Sends a state change of a step that is not a vertex.
    pub fn step(
        &self,
        digest: &str,
        name: &str,
        state: VertexState,
        duration: Option<Duration>,
        error: Option<String>,
    ) {
        self.send(ProgressEvent::Step {
            digest: digest.to_string(),
            name: name.to_string(),
            state,
            duration,
            error,
        });
    }

    /// Sends a log chunk.
    pub fn log(&self, digest: &str, stream: LogStream, data: Vec<u8>) {
        self.send(ProgressEvent::Log {
            digest: digest.to_string(),
            stream,
            data,
        });
    }
}
