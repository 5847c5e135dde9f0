//! A job's progress as BuildKit's `Control/Status` stream.
//!
//! The solver and the exporters report [`ProgressEvent`]s; a [`StatusHub`] turns each into a
//! `StatusResponse` (a vertex is resent whole on every change, as clients merge by digest),
//! keeps them all, and hands them to every `Status` call, late ones first getting what they
//! missed. When the job ends the hub closes and every stream ends, which is what clients wait
//! for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use memobuild_proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning};
use memobuild_worker::progress::{LogStream, Progress, ProgressEvent, VertexState};
use tokio::sync::broadcast;

/// Responses buffered for a slow `Status` reader before it misses some (it then gets the
/// whole history again, which clients merge without harm).
const LIVE_BUFFER: usize = 4096;

/// The progress of one job, for any number of `Status` readers.
#[derive(Debug)]
pub struct StatusHub {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    history: Vec<StatusResponse>,
    live: Option<broadcast::Sender<StatusResponse>>,
    vertices: HashMap<String, Vertex>,
    /// The step currently running, which build-wide notes are attached to.
    current_step: Option<String>,
    /// Inputs of each vertex of the definitions solved, by digest.
    inputs: HashMap<String, Vec<String>>,
}

/// What a `Status` reader gets: what happened so far, then what happens next.
pub struct Subscription {
    /// Responses sent before the subscription.
    pub history: Vec<StatusResponse>,
    /// Later ones; `None` once the job is over.
    pub live: Option<broadcast::Receiver<StatusResponse>>,
}

impl StatusHub {
    /// An open hub.
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(LIVE_BUFFER);
        Arc::new(StatusHub {
            inner: Mutex::new(Inner {
                history: Vec::new(),
                live: Some(tx),
                vertices: HashMap::new(),
                current_step: None,
                inputs: HashMap::new(),
            }),
        })
    }

    /// A [`Progress`] whose events end up in this hub, converted as they are sent: the hub
    /// closes after the last of them, never before.
    pub fn progress(self: &Arc<Self>) -> Progress {
        let hub = self.clone();
        Progress::from_fn(move |ev| hub.apply(&ev))
    }

    /// Remembers the inputs of each vertex of `def`, for the vertices' `inputs` field.
    pub fn add_definition(&self, def: &memobuild_proto::ParsedDefinition) {
        if let Ok(mut inner) = self.inner.lock() {
            for op in def.ops() {
                inner.inputs.insert(
                    op.digest.clone(),
                    op.op.inputs.iter().map(|i| i.digest.clone()).collect(),
                );
            }
        }
    }

    /// Subscribes to the job's progress.
    pub fn subscribe(&self) -> Subscription {
        match self.inner.lock() {
            Ok(inner) => Subscription {
                history: inner.history.clone(),
                live: inner.live.as_ref().map(broadcast::Sender::subscribe),
            },
            Err(_) => Subscription {
                history: Vec::new(),
                live: None,
            },
        }
    }

    /// The job's steps so far, for its history record: every vertex shown, those finished,
    /// those from the cache, and the warnings.
    pub fn step_counts(&self) -> crate::daemon::build_history::StepCounts {
        let Ok(inner) = self.inner.lock() else {
            return Default::default();
        };
        let count = |f: &dyn Fn(&Vertex) -> bool| {
            i32::try_from(inner.vertices.values().filter(|v| f(v)).count()).unwrap_or(i32::MAX)
        };
        crate::daemon::build_history::StepCounts {
            total: count(&|_| true),
            completed: count(&|v| v.completed.is_some() && v.error.is_empty()),
            cached: count(&|v| v.cached),
            warnings: i32::try_from(
                inner
                    .history
                    .iter()
                    .map(|r| r.warnings.len())
                    .sum::<usize>(),
            )
            .unwrap_or(i32::MAX),
        }
    }

    /// Ends every stream: the job is over.
    pub fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.live = None;
        }
    }

    /// A warning about the job as a whole (unsupported options and the like).
    pub fn warn(&self, message: &str) {
        self.publish(StatusResponse {
            warnings: vec![VertexWarning {
                level: 1,
                short: message.as_bytes().to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    /// A warning a frontend reported (LLBBridge `Warn`, or the daemon's own frontend): a lint
    /// finding with its rule's URL, the Dockerfile and the range it is about, which buildx and
    /// buildctl print with the source lines under the vertex `w.digest` (`#1 WARN: …`).
    pub fn warning(&self, w: memobuild_proto::gateway::WarnRequest) {
        self.publish(StatusResponse {
            warnings: vec![VertexWarning {
                vertex: w.digest,
                level: w.level,
                short: w.short,
                detail: w.detail,
                url: w.url,
                info: w.info,
                ranges: w.ranges,
            }],
            ..Default::default()
        });
    }

    fn publish(&self, r: StatusResponse) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(tx) = &inner.live {
                let _ = tx.send(r.clone());
            }
            inner.history.push(r);
        }
    }

    fn apply(&self, ev: &ProgressEvent) {
        let now = Some(timestamp(SystemTime::now()));
        let response = {
            let Ok(mut inner) = self.inner.lock() else {
                return;
            };
            match ev {
                ProgressEvent::Vertex {
                    digest,
                    name,
                    state,
                    error,
                    ..
                }
                | ProgressEvent::Step {
                    digest,
                    name,
                    state,
                    error,
                    ..
                } => {
                    if matches!(ev, ProgressEvent::Step { .. }) {
                        inner.current_step =
                            (*state == VertexState::Started).then(|| digest.clone());
                    }
                    let inputs = inner.inputs.get(digest).cloned().unwrap_or_default();
                    let v = inner
                        .vertices
                        .entry(digest.clone())
                        .or_insert_with(|| Vertex {
                            digest: digest.clone(),
                            inputs,
                            name: name.clone(),
                            ..Default::default()
                        });
                    v.name.clone_from(name);
                    match state {
                        VertexState::Started => {
                            v.started = now;
                            v.completed = None;
                        }
                        VertexState::Cached => {
                            v.cached = true;
                            v.started = v.started.or(now);
                            v.completed = now;
                        }
                        VertexState::Completed => {
                            v.started = v.started.or(now);
                            v.completed = now;
                        }
                        VertexState::Error => {
                            v.started = v.started.or(now);
                            v.completed = now;
                            v.error = error.clone().unwrap_or_else(|| "failed".into());
                        }
                    }
                    StatusResponse {
                        vertexes: vec![v.clone()],
                        ..Default::default()
                    }
                }
                ProgressEvent::Status {
                    digest,
                    id,
                    current,
                    total,
                    completed,
                } => StatusResponse {
                    statuses: vec![VertexStatus {
                        id: id.clone(),
                        vertex: digest.clone(),
                        name: id.clone(),
                        current: i64::try_from(*current).unwrap_or(i64::MAX),
                        total: total
                            .and_then(|t| i64::try_from(t).ok())
                            .unwrap_or_default(),
                        timestamp: now,
                        started: inner.vertices.get(digest).and_then(|v| v.started).or(now),
                        completed: if *completed { now } else { None },
                    }],
                    ..Default::default()
                },
                ProgressEvent::Log {
                    digest,
                    stream,
                    data,
                } => StatusResponse {
                    logs: vec![VertexLog {
                        vertex: digest.clone(),
                        timestamp: now,
                        stream: match stream {
                            LogStream::Stdout => 1,
                            LogStream::Stderr => 2,
                        },
                        msg: data.clone(),
                    }],
                    ..Default::default()
                },
                ProgressEvent::Message(m) => {
                    if let Some(w) = m.strip_prefix("warning: ") {
                        StatusResponse {
                            warnings: vec![VertexWarning {
                                level: 1,
                                short: w.as_bytes().to_vec(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }
                    } else if let Some(step) = inner.current_step.clone() {
                        StatusResponse {
                            logs: vec![VertexLog {
                                vertex: step,
                                timestamp: now,
                                stream: 1,
                                msg: format!("{m}\n").into_bytes(),
                            }],
                            ..Default::default()
                        }
                    } else {
                        tracing::debug!("build note: {m}");
                        return;
                    }
                }
            }
        };
        self.publish(response);
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vertices_are_resent_whole_and_streams_end_on_close() {
        let hub = StatusHub::new();
        hub.apply(&ProgressEvent::Vertex {
            digest: "sha256:a".into(),
            name: "[1/2] RUN x".into(),
            state: VertexState::Started,
            duration: None,
            error: None,
        });
        let mut late = hub.subscribe();
        assert_eq!(late.history.len(), 1);
        hub.apply(&ProgressEvent::Vertex {
            digest: "sha256:a".into(),
            name: "[1/2] RUN x".into(),
            state: VertexState::Completed,
            duration: None,
            error: None,
        });
        let live = late.live.as_mut().unwrap().recv().await.unwrap();
        let v = &live.vertexes[0];
        assert!(v.started.is_some() && v.completed.is_some() && !v.cached);
        assert_eq!(v.name, "[1/2] RUN x");
        hub.apply(&ProgressEvent::Message("warning: careful".into()));
        let w = late.live.as_mut().unwrap().recv().await.unwrap();
        assert_eq!(w.warnings[0].short, b"careful");
        hub.close();
        assert!(late.live.as_mut().unwrap().recv().await.is_err());
        assert!(hub.subscribe().live.is_none());
    }

    #[test]
    fn cached_vertices_are_started_and_completed() {
        let hub = StatusHub::new();
        hub.apply(&ProgressEvent::Vertex {
            digest: "sha256:b".into(),
            name: "COPY".into(),
            state: VertexState::Cached,
            duration: None,
            error: None,
        });
        let s = hub.subscribe();
        let v = &s.history[0].vertexes[0];
        assert!(v.cached && v.started.is_some() && v.completed.is_some());
    }
}
