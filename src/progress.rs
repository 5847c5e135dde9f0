//! Progress renderers: the live view (`tty`), plain lines in the style of
//! `buildx --progress plain`, JSON lines, and `quiet` (warnings only).
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
        ProgressMode::Quiet => render_quiet(rx).await,
    }
}

/// `quiet`: only the warnings about the build; its errors are the command's own.
async fn render_quiet(mut rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    while let Some(ev) = rx.recv().await {
        if let Some(line) = quiet_line(&ev) {
            eprintln!("{line}");
        }
    }
}

/// What `quiet` shows of `ev`: a warning.
fn quiet_line(ev: &ProgressEvent) -> Option<&str> {
    match ev {
        ProgressEvent::Message(m) if m.starts_with("warning") => Some(m),
        _ => None,
    }
}

/// The line-oriented renderers: one write per event.
async fn render_lines(json: bool, mut rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    let mut plain = Plain::new();
    let stderr = std::io::stderr();
    while let Some(ev) = rx.recv().await {
        let mut out = stderr.lock();
        let _ = if json {
            json_line(&mut out, &ev)
        } else {
            plain.event(&mut out, &ev)
        };
        let _ = out.flush();
    }
    let _ = plain.finish(&mut stderr.lock());
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

/// `buildx --progress plain`: vertices numbered in the order they are first seen, log output
/// as whole lines prefixed with the vertex and its elapsed time. A step's output arrives in
/// chunks that may end mid-line; the rest of such a line waits for the next chunk (or the
/// vertex's end), as BuildKit's printer keeps it, so no line is split in two.
struct Plain {
    start: Instant,
    numbers: HashMap<String, usize>,
    vertex_start: HashMap<String, Instant>,
    /// Per vertex, output after its last newline.
    partial: HashMap<String, Vec<u8>>,
}

impl Plain {
    fn new() -> Plain {
        Plain {
            start: Instant::now(),
            numbers: HashMap::new(),
            vertex_start: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    fn number(&mut self, digest: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(digest.to_owned()).or_insert(next)
    }

    fn elapsed(&self, digest: &str) -> f64 {
        self.vertex_start
            .get(digest)
            .map(|s| s.elapsed())
            .unwrap_or_else(|| self.start.elapsed())
            .as_secs_f64()
    }

    /// Writes what is left of `digest`'s last line.
    fn flush_partial(&mut self, out: &mut impl Write, digest: &str) -> std::io::Result<()> {
        let Some(rest) = self.partial.remove(digest) else {
            return Ok(());
        };
        if rest.is_empty() {
            return Ok(());
        }
        let (n, t) = (self.number(digest), self.elapsed(digest));
        writeln!(out, "#{n} {t:.3} {}", String::from_utf8_lossy(&rest))
    }

    fn event(&mut self, out: &mut impl Write, ev: &ProgressEvent) -> std::io::Result<()> {
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
                let n = self.number(digest);
                match state {
                    VertexState::Started => {
                        self.vertex_start.insert(digest.clone(), Instant::now());
                        writeln!(out, "#{n} {name}")
                    }
                    VertexState::Cached => writeln!(out, "#{n} {name}\n#{n} CACHED"),
                    VertexState::Completed => {
                        self.flush_partial(out, digest)?;
                        let secs = duration.map(|d| d.as_secs_f64()).unwrap_or_default();
                        writeln!(out, "#{n} DONE {secs:.1}s")
                    }
                    VertexState::Error => {
                        self.flush_partial(out, digest)?;
                        let e = error.as_deref().unwrap_or("failed");
                        writeln!(out, "#{n} ERROR: {e}")
                    }
                }
            }
            ProgressEvent::Log { digest, data, .. } => {
                let (n, t) = (self.number(digest), self.elapsed(digest));
                let mut buf = self.partial.remove(digest).unwrap_or_default();
                buf.extend_from_slice(data);
                let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in String::from_utf8_lossy(&buf[..whole]).lines() {
                    writeln!(out, "#{n} {t:.3} {line}")?;
                }
                buf.drain(..whole);
                if !buf.is_empty() {
                    self.partial.insert(digest.clone(), buf);
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
                let n = self.number(digest);
                let size = crate::cache_cmd::human_size(*current);
                writeln!(out, "#{n} {id} {size} done")
            }
            ProgressEvent::Status { .. } => Ok(()),
            ProgressEvent::Message(m) => writeln!(out, "{m}"),
        }
    }

    /// At the end of the stream: whatever output has no newline yet.
    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut left: Vec<String> = self.partial.keys().cloned().collect();
        left.sort_by_key(|d| self.numbers.get(d).copied());
        for d in left {
            self.flush_partial(out, &d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // Verifies: `--progress quiet` shows warnings and nothing else (no steps, logs or notes).
    #[test]
    fn quiet_shows_only_warnings() {
        let warning = ProgressEvent::Message("warning: SBOM attestations are not generated".into());
        assert_eq!(
            quiet_line(&warning),
            Some("warning: SBOM attestations are not generated")
        );
        let note = ProgressEvent::Message("exported sha256:ab to out.tar".into());
        assert_eq!(quiet_line(&note), None);
        let log = ProgressEvent::Log {
            digest: "sha256:1".into(),
            stream: LogStream::Stdout,
            data: b"warning: from a RUN\n".to_vec(),
        };
        assert_eq!(quiet_line(&log), None);
    }

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
        let mut plain = Plain::new();
        for (d, s) in [
            ("a", VertexState::Started),
            ("b", VertexState::Started),
            ("a", VertexState::Completed),
        ] {
            let ev = ProgressEvent::Vertex {
                digest: d.into(),
                name: format!("step {d}"),
                state: s,
                duration: None,
                error: None,
            };
            plain.event(&mut buf, &ev).unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "#1 step a\n#2 step b\n#1 DONE 0.0s\n"
        );
    }

    // Verifies: output that arrives in chunks ending mid-line is printed as whole lines (a
    // line is never split in two), per vertex, the rest flushed when the vertex ends.
    #[test]
    fn plain_joins_lines_split_across_chunks() {
        let mut buf = Vec::new();
        let mut plain = Plain::new();
        let log = |d: &str, s: &str| ProgressEvent::Log {
            digest: d.into(),
            stream: LogStream::Stdout,
            data: s.as_bytes().to_vec(),
        };
        let done = |d: &str| ProgressEvent::Vertex {
            digest: d.into(),
            name: d.into(),
            state: VertexState::Completed,
            duration: None,
            error: None,
        };
        for ev in [
            log("a", "  Downloaded"),
            log("b", "other\n"),
            log("a", " crossbeam v0.8\n  Compiling x"),
            log("a", " v1\nno newline"),
            done("a"),
        ] {
            plain.event(&mut buf, &ev).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(' ').unwrap().1)
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
            .collect();
        assert_eq!(
            lines,
            [
                "other",
                "  Downloaded crossbeam v0.8",
                "  Compiling x v1",
                "no newline",
                "0.0s"
            ],
            "{text}"
        );
    }
}
