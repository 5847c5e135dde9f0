//! The daemon's `Control/Status` stream as our progress events.
//!
//! BuildKit resends a whole `Vertex` on every change and clients merge by digest
//! (`client/graph.go`), so the same vertex arrives several times: first with `started`, then
//! with `completed` (and `cached` or `error`). [`StatusTracker`] remembers what each vertex
//! last reported and turns only the transitions into events, in the order our renderers
//! expect (a vertex is announced before it completes). A vertex that runs again after it
//! completed (BuildKit resends `[internal] load build definition` and `FROM` with a new
//! `started` when the frontend solves them again) is not announced again: buildctl's printer
//! merges such intervals into one entry, and so do we, unless the new run fails.
//!
//! `VertexStatus` (transfer progress such as `transferring context: 2.1MB`) becomes a
//! [`ProgressEvent::Status`]; warnings become messages. The last
//! [`TAIL_LINES`] lines each vertex logged are kept, so that a failed build can show what the
//! failing step printed last, as buildctl does ([`StatusTracker::failures`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use memobuild_proto::control::{StatusResponse, Vertex, VertexLog, VertexWarning};
use memobuild_worker::progress::{LogStream, ProgressEvent, VertexState};
use prost_types::Timestamp;

/// Log lines kept per vertex for [`StatusTracker::failures`] (BuildKit's `logsBufferSize`).
pub const TAIL_LINES: usize = 10;

/// What one vertex last reported.
#[derive(Debug, Default)]
struct Seen {
    name: String,
    /// The error of its latest run (empty: none).
    error: String,
    /// Its last complete log lines, each prefixed with the seconds since its start.
    tail: VecDeque<String>,
    /// A log line not ended yet.
    partial: Vec<u8>,
    /// `started` of the latest run, if any.
    started: Option<Timestamp>,
    /// Whether the latest run's end was seen.
    finished: bool,
    /// Whether an end was reported: later runs are then merged into it.
    reported: bool,
}

/// Converts status updates into progress events, one transition at a time.
#[derive(Debug, Default)]
pub struct StatusTracker {
    vertices: HashMap<String, Seen>,
    /// Digests in the order they first appeared.
    order: Vec<String>,
}

/// A vertex that failed, with what it printed last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The vertex's name.
    pub name: String,
    /// Its last log lines, oldest first.
    pub tail: Vec<String>,
}

impl StatusTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events one status update adds: vertex transitions, then logs, then warnings (the
    /// order BuildKit's own printer applies within one update).
    pub fn update(&mut self, response: StatusResponse) -> Vec<ProgressEvent> {
        let mut events = Vec::new();
        for vertex in response.vertexes {
            self.vertex(vertex, &mut events);
        }
        for status in response.statuses {
            events.push(ProgressEvent::Status {
                digest: status.vertex,
                id: status.id,
                current: u64::try_from(status.current).unwrap_or_default(),
                total: u64::try_from(status.total).ok().filter(|t| *t > 0),
                completed: status.completed.is_some(),
            });
        }
        for log in response.logs {
            self.keep_tail(&log);
            events.push(log_event(log));
        }
        for warning in response.warnings {
            events.push(warning_event(&warning));
        }
        events
    }

    /// The vertices whose latest run failed (cancelled ones aside), in order of appearance.
    pub fn failures(&self) -> Vec<Failure> {
        self.order
            .iter()
            .filter_map(|d| self.vertices.get(d))
            .filter(|v| !v.error.is_empty() && !v.error.ends_with("context canceled"))
            .map(|v| {
                let mut tail: Vec<String> = v.tail.iter().cloned().collect();
                if !v.partial.is_empty() {
                    tail.push(String::from_utf8_lossy(&v.partial).into_owned());
                }
                let skip = tail.len().saturating_sub(TAIL_LINES);
                Failure {
                    name: v.name.clone(),
                    tail: tail.split_off(skip),
                }
            })
            .collect()
    }

    fn seen(&mut self, digest: &str) -> &mut Seen {
        if !self.vertices.contains_key(digest) {
            self.order.push(digest.to_owned());
        }
        self.vertices.entry(digest.to_owned()).or_default()
    }

    fn keep_tail(&mut self, log: &VertexLog) {
        let seen = self.seen(&log.vertex);
        let since = match (&seen.started, &log.timestamp) {
            (Some(started), Some(at)) => elapsed(started, at).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let sec = since.as_secs_f64();
        // BuildKit's printer: three decimals under 10 s, two under 100 s, then one.
        let prec = if sec < 10.0 {
            3
        } else if sec < 100.0 {
            2
        } else {
            1
        };
        seen.partial.extend_from_slice(&log.msg);
        while let Some(end) = seen.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = seen.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            if seen.tail.len() == TAIL_LINES {
                seen.tail.pop_front();
            }
            seen.tail.push_back(format!("{sec:.prec$} {text}"));
        }
    }

    fn vertex(&mut self, v: Vertex, events: &mut Vec<ProgressEvent>) {
        let seen = self.seen(&v.digest);
        if !v.name.is_empty() {
            seen.name = v.name.clone();
        }
        if v.completed.is_some() {
            seen.error = v.error.clone();
        }
        let name = seen.name.clone();
        let event = |state, duration, error| ProgressEvent::Vertex {
            digest: v.digest.clone(),
            name: name.clone(),
            state,
            duration,
            error,
        };
        // A new run: started for the first time, or again with a later start.
        let new_run = match (&v.started, &seen.started) {
            (Some(now), Some(before)) => seen.finished && later(now, before),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if new_run {
            seen.started = v.started;
            seen.finished = false;
            // A cached vertex is announced by its CACHED line alone, a run again by nothing.
            let cached_now = v.cached && v.completed.is_some();
            if !cached_now && !seen.reported {
                events.push(event(VertexState::Started, None, None));
            }
        }
        let Some(completed) = v.completed else {
            return;
        };
        if seen.finished {
            return;
        }
        seen.finished = true;
        let failed = !v.error.is_empty();
        if seen.reported && !failed {
            return;
        }
        if seen.started.is_none() && !v.cached {
            // Completed without ever being started (possible for a failed one): announce it
            // so the line that ends it has a name above it.
            events.push(event(VertexState::Started, None, None));
        }
        seen.reported = true;
        let duration = v
            .started
            .as_ref()
            .and_then(|started| elapsed(started, &completed));
        events.push(if failed {
            event(VertexState::Error, duration, Some(v.error.clone()))
        } else if v.cached {
            event(VertexState::Cached, None, None)
        } else {
            event(VertexState::Completed, duration, None)
        });
    }
}

fn log_event(log: VertexLog) -> ProgressEvent {
    ProgressEvent::Log {
        digest: log.vertex,
        // BuildKit: 1 stdout, 2 stderr.
        stream: if log.stream == 2 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        data: log.msg,
    }
}

fn warning_event(w: &VertexWarning) -> ProgressEvent {
    let mut text = format!("warning: {}", String::from_utf8_lossy(&w.short));
    for detail in &w.detail {
        text.push_str("\n  ");
        text.push_str(&String::from_utf8_lossy(detail));
    }
    if !w.url.is_empty() {
        text.push_str(&format!("\n  more info: {}", w.url));
    }
    ProgressEvent::Message(text)
}

fn later(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

/// `to - from`, if not negative.
fn elapsed(from: &Timestamp, to: &Timestamp) -> Option<Duration> {
    let nanos = |t: &Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let d = nanos(to) - nanos(from);
    u64::try_from(d).ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn vertex(digest: &str, started: Option<Timestamp>, completed: Option<Timestamp>) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: format!("step {digest}"),
            started,
            completed,
            ..Vertex::default()
        }
    }

    fn update(vertexes: Vec<Vertex>) -> StatusResponse {
        StatusResponse {
            vertexes,
            ..StatusResponse::default()
        }
    }

    /// (digest, state, duration, error) of the vertex events.
    fn states(
        events: &[ProgressEvent],
    ) -> Vec<(String, VertexState, Option<Duration>, Option<String>)> {
        events
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::Vertex {
                    digest,
                    state,
                    duration,
                    error,
                    ..
                } => Some((digest.clone(), *state, *duration, error.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn started_then_completed_with_duration() {
        let mut t = StatusTracker::new();
        let first = t.update(update(vec![vertex("a", ts(10, 0), None)]));
        assert_eq!(
            states(&first),
            vec![("a".into(), VertexState::Started, None, None)]
        );
        // Resent unchanged: nothing new.
        assert!(
            t.update(update(vec![vertex("a", ts(10, 0), None)]))
                .is_empty()
        );
        let done = t.update(update(vec![vertex("a", ts(10, 0), ts(11, 500_000_000))]));
        assert_eq!(
            states(&done),
            vec![(
                "a".into(),
                VertexState::Completed,
                Some(Duration::from_millis(1500)),
                None
            )]
        );
        assert!(
            t.update(update(vec![vertex("a", ts(10, 0), ts(11, 500_000_000))]))
                .is_empty()
        );
        match &done[0] {
            ProgressEvent::Vertex { name, .. } => assert_eq!(name, "step a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cached_vertex_is_one_event() {
        let mut t = StatusTracker::new();
        let mut v = vertex("c", ts(5, 0), ts(5, 0));
        v.cached = true;
        let events = t.update(update(vec![v.clone()]));
        assert_eq!(
            states(&events),
            vec![("c".into(), VertexState::Cached, None, None)]
        );
        assert!(t.update(update(vec![v])).is_empty());
    }

    #[test]
    fn error_carries_the_message() {
        let mut t = StatusTracker::new();
        t.update(update(vec![vertex("e", ts(1, 0), None)]));
        let mut v = vertex("e", ts(1, 0), ts(3, 0));
        v.error = "process \"/bin/sh -c false\" did not complete successfully: exit code: 1".into();
        let events = t.update(update(vec![v]));
        assert_eq!(
            states(&events),
            vec![(
                "e".into(),
                VertexState::Error,
                Some(Duration::from_secs(2)),
                Some(
                    "process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
                        .into()
                )
            )]
        );
    }

    #[test]
    fn completed_without_start_is_announced_first() {
        let mut t = StatusTracker::new();
        let mut v = vertex("x", None, ts(2, 0));
        v.error = "failed".into();
        let events = t.update(update(vec![v]));
        assert_eq!(
            states(&events),
            vec![
                ("x".into(), VertexState::Started, None, None),
                ("x".into(), VertexState::Error, None, Some("failed".into())),
            ]
        );
    }

    #[test]
    fn a_vertex_that_runs_again_is_merged_unless_it_fails() {
        let mut t = StatusTracker::new();
        t.update(update(vec![vertex("r", ts(1, 0), ts(2, 0))]));
        assert!(
            t.update(update(vec![vertex("r", ts(5, 0), None)]))
                .is_empty()
        );
        assert!(
            t.update(update(vec![vertex("r", ts(5, 0), ts(6, 0))]))
                .is_empty()
        );
        assert!(
            t.update(update(vec![vertex("r", ts(7, 0), None)]))
                .is_empty()
        );
        let mut failed = vertex("r", ts(7, 0), ts(9, 0));
        failed.error = "boom".into();
        assert_eq!(
            states(&t.update(update(vec![failed]))),
            vec![(
                "r".into(),
                VertexState::Error,
                Some(Duration::from_secs(2)),
                Some("boom".into())
            )]
        );
    }

    #[test]
    fn a_name_sent_once_is_kept() {
        let mut t = StatusTracker::new();
        t.update(update(vec![vertex("n", ts(1, 0), None)]));
        let mut v = vertex("n", ts(1, 0), ts(2, 0));
        v.name.clear();
        match &t.update(update(vec![v]))[0] {
            ProgressEvent::Vertex { name, .. } => assert_eq!(name, "step n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_keep_the_last_lines_of_failed_vertices() {
        let mut t = StatusTracker::new();
        t.update(update(vec![
            vertex("ok", ts(1, 0), None),
            vertex("bad", ts(1, 0), None),
        ]));
        let log = |vertex: &str, at: i64, msg: &str| VertexLog {
            vertex: vertex.into(),
            timestamp: ts(at, 500_000_000),
            stream: 1,
            msg: msg.as_bytes().to_vec(),
        };
        let mut logs = vec![log("ok", 2, "fine\n")];
        for i in 0..12 {
            logs.push(log("bad", 1, &format!("line {i}\n")));
        }
        logs.push(log("bad", 12, "no newline"));
        t.update(StatusResponse {
            logs,
            ..StatusResponse::default()
        });
        let mut bad = vertex("bad", ts(1, 0), ts(13, 0));
        bad.error = "exit code: 3".into();
        t.update(update(vec![vertex("ok", ts(1, 0), ts(3, 0)), bad]));
        let failures = t.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].name, "step bad");
        assert_eq!(failures[0].tail.len(), TAIL_LINES);
        assert_eq!(failures[0].tail[0], "0.500 line 3");
        assert_eq!(failures[0].tail[8], "0.500 line 11");
        assert_eq!(failures[0].tail[9], "no newline");

        let mut cancelled = vertex("c", ts(1, 0), ts(2, 0));
        cancelled.error = "failed: context canceled".into();
        let mut t = StatusTracker::new();
        t.update(update(vec![cancelled]));
        assert!(t.failures().is_empty());
    }

    #[test]
    fn logs_and_warnings() {
        let mut t = StatusTracker::new();
        let events = t.update(StatusResponse {
            logs: vec![
                VertexLog {
                    vertex: "a".into(),
                    stream: 1,
                    msg: b"out\n".to_vec(),
                    ..VertexLog::default()
                },
                VertexLog {
                    vertex: "a".into(),
                    stream: 2,
                    msg: b"err\n".to_vec(),
                    ..VertexLog::default()
                },
            ],
            warnings: vec![VertexWarning {
                vertex: "a".into(),
                short: b"FromAsCasing: 'as' and 'FROM' keywords' casing do not match".to_vec(),
                detail: vec![b"line 1".to_vec()],
                url: "https://docs.docker.com/go/dockerfile/rule/from-as-casing/".into(),
                ..VertexWarning::default()
            }],
            ..StatusResponse::default()
        });
        assert!(matches!(
            &events[0],
            ProgressEvent::Log { digest, stream: LogStream::Stdout, data } if digest == "a" && data == b"out\n"
        ));
        assert!(matches!(
            &events[1],
            ProgressEvent::Log {
                stream: LogStream::Stderr,
                ..
            }
        ));
        match &events[2] {
            ProgressEvent::Message(m) => {
                assert!(m.starts_with("warning: FromAsCasing"), "{m}");
                assert!(
                    m.contains("\n  line 1") && m.contains("more info: https://docs"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
