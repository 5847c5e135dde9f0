//! Progress renderers: the live view (`tty`), plain lines in the style of
//! `buildx --progress plain`, and JSON lines.
//!
//! Everything goes to stderr, as buildx does, so stdout stays free for results.

mod tty;

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use memobuild_worker::progress::{LogStream, ProgressEvent, VertexState};
use tokio::sync::mpsc;

use crate::cli::ProgressMode;

/// Renders events until the channel closes. `auto` is `tty` when stderr is a terminal, else
/// `plain`.
pub async fn render(mode: ProgressMode, rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    match mode {
        ProgressMode::Tty => tty::render(rx).await,
        ProgressMode::Auto if tty::stderr_is_capable_terminal() => tty::render(rx).await,
        ProgressMode::Json => render_lines(true, rx).await,
        ProgressMode::Auto | ProgressMode::Plain => render_lines(false, rx).await,
    }
}

/// The line-oriented renderers: one write per event.
async fn render_lines(json: bool, mut rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    let start = Instant::now();
    let mut numbers: HashMap<String, usize> = HashMap::new();
    let mut vertex_start: HashMap<String, Instant> = HashMap::new();
    let stderr = std::io::stderr();
    while let Some(ev) = rx.recv().await {
        let mut out = stderr.lock();
        let _ = if json {
            json_line(&mut out, &ev)
        } else {
            plain_line(&mut out, &ev, &mut numbers, &mut vertex_start, start)
        };
        let _ = out.flush();
    }
}

fn json_line(out: &mut impl Write, ev: &ProgressEvent) -> std::io::Result<()> {
    let v = match ev {
        ProgressEvent::Vertex {
            digest,
            name,
            state,
            duration,
            error,
        } => {
            let mut v = serde_json::json!({
                "vertex": digest,
                "name": name,
                "state": state.as_str(),
                "duration_ms": duration.map(|d| d.as_millis() as u64),
            });
            if let Some(e) = error {
                v["error"] = serde_json::Value::String(e.clone());
            }
            v
        }
        ProgressEvent::Log {
            digest,
            stream,
            data,
        } => serde_json::json!({
            "vertex": digest,
            "stream": match stream { LogStream::Stdout => "stdout", LogStream::Stderr => "stderr" },
            "log": String::from_utf8_lossy(data),
        }),
        ProgressEvent::Step {
            digest,
            name,
            state,
            duration,
            error,
        } => {
            let mut v = serde_json::json!({
                "step": digest,
                "name": name,
                "state": state.as_str(),
                "duration_ms": duration.map(|d| d.as_millis() as u64),
            });
            if let Some(e) = error {
                v["error"] = serde_json::Value::String(e.clone());
            }
            v
        }
        ProgressEvent::Status {
            digest,
            id,
            current,
            total,
            completed,
        } => serde_json::json!({
            "vertex": digest,
            "status": id,
            "current": current,
            "total": total,
            "completed": completed,
        }),
        ProgressEvent::Message(m) => serde_json::json!({ "message": m }),
    };
    writeln!(out, "{v}")
}

fn plain_line(
    out: &mut impl Write,
    ev: &ProgressEvent,
    numbers: &mut HashMap<String, usize>,
    vertex_start: &mut HashMap<String, Instant>,
    start: Instant,
) -> std::io::Result<()> {
    let next = numbers.len() + 1;
    match ev {
        ProgressEvent::Vertex {
            digest,
            name,
            state,
            duration,
            error,
        }
        | ProgressEvent::Step {
            digest,
            name,
            state,
            duration,
            error,
        } => {
            let n = *numbers.entry(digest.clone()).or_insert(next);
            match state {
                VertexState::Started => {
                    vertex_start.insert(digest.clone(), Instant::now());
                    writeln!(out, "#{n} {name}")
                }
                VertexState::Cached => writeln!(out, "#{n} {name}\n#{n} CACHED"),
                VertexState::Completed => {
                    let secs = duration.map(|d| d.as_secs_f64()).unwrap_or_default();
                    writeln!(out, "#{n} DONE {secs:.1}s")
                }
                VertexState::Error => {
                    writeln!(out, "#{n} ERROR: {}", error.as_deref().unwrap_or("failed"))
                }
            }
        }
        ProgressEvent::Log { digest, data, .. } => {
            let n = *numbers.entry(digest.clone()).or_insert(next);
            let t = vertex_start
                .get(digest)
                .map(|s| s.elapsed())
                .unwrap_or_else(|| start.elapsed())
                .as_secs_f64();
            for line in String::from_utf8_lossy(data).lines() {
                writeln!(out, "#{n} {t:.3} {line}")?;
            }
            Ok(())
        }
        ProgressEvent::Status {
            digest,
            id,
            current,
            completed,
            ..
        } if *completed => {
            let n = *numbers.entry(digest.clone()).or_insert(next);
            writeln!(
                out,
                "#{n} {id} {} done",
                crate::cache_cmd::human_size(*current)
            )
        }
        ProgressEvent::Status { .. } => Ok(()),
        ProgressEvent::Message(m) => writeln!(out, "{m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_vertex_line_has_the_documented_fields() {
        let mut buf = Vec::new();
        json_line(
            &mut buf,
            &ProgressEvent::Vertex {
                digest: "sha256:ab".into(),
                name: "[1/2] RUN x".into(),
                state: VertexState::Completed,
                duration: Some(Duration::from_millis(1500)),
                error: None,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["vertex"], "sha256:ab");
        assert_eq!(v["state"], "completed");
        assert_eq!(v["duration_ms"], 1500);
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn plain_numbers_vertices_in_order() {
        let mut buf = Vec::new();
        let mut nums = HashMap::new();
        let mut starts = HashMap::new();
        let t = Instant::now();
        for (d, s) in [
            ("a", VertexState::Started),
            ("b", VertexState::Started),
            ("a", VertexState::Completed),
        ] {
            plain_line(
                &mut buf,
                &ProgressEvent::Vertex {
                    digest: d.into(),
                    name: format!("step {d}"),
                    state: s,
                    duration: None,
                    error: None,
                },
                &mut nums,
                &mut starts,
                t,
            )
            .unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "#1 step a\n#2 step b\n#1 DONE 0.0s\n"
        );
    }
}
