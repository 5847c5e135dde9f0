//! The live `--progress tty` view, in the style of `buildx --progress tty`.
//!
//! Plain ANSI rather than indicatif: the view is one pure function of the events seen so far
//! ([`View::frame`]), so its layout, truncation and height limits are unit-tested as strings, and
//! the terminal side ([`repaint`]) is a single write per frame: cursor up over the last frame,
//! each line rewritten and erased to its end, the rest of the screen below cleared. indicatif's
//! one-bar-per-item model fits the log lines under running vertices and the "drop finished
//! vertices first when the screen is short" rule poorly, and hides its bars when stderr is not a
//! terminal, where `--progress tty` should still draw.
//!
//! Lines are truncated to the terminal's width (never wrapped, which would break the cursor
//! arithmetic) and the live frame is kept shorter than the terminal, because lines that scrolled
//! off the top cannot be redrawn. The final frame, printed once when the events end, has no height
//! limit and no log lines.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use memobuild_worker::progress::{ProgressEvent, VertexState};
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthChar;

/// How often the live view is redrawn at most.
const FRAME_INTERVAL: Duration = Duration::from_millis(100);
/// Log lines shown under a running vertex.
const LOG_LINES: usize = 6;
/// Build-level messages (warnings, exports) shown in the live frame; the final frame has all.
const LIVE_MESSAGES: usize = 3;
/// A log line without a newline is cut to this many bytes (progress bars redraw with `\r`).
const MAX_PARTIAL: usize = 4096;

/// Renders events as a live view on stderr until the channel closes, then prints the final state.
pub async fn render(mut rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    let mut view = View::new(Instant::now());
    let mut drawn = 0usize;
    let mut dirty = true;
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    view.apply(&ev, Instant::now());
                    dirty = true;
                }
                None => break,
            },
            _ = tick.tick() => {
                if dirty || view.running() > 0 {
                    let frame = view.frame(Instant::now(), terminal_size(), false);
                    drawn = paint(drawn, &frame);
                    dirty = false;
                }
            }
        }
    }
    let frame = view.frame(Instant::now(), terminal_size(), true);
    paint(drawn, &frame);
}

/// Writes `frame` over the `drawn` lines painted last; returns how many lines are on screen now.
fn paint(drawn: usize, frame: &[String]) -> usize {
    let bytes = repaint(drawn, frame);
    let mut err = std::io::stderr().lock();
    // A closed stderr only means nobody watches; the build goes on.
    let _ = err.write_all(bytes.as_bytes()).and_then(|()| err.flush());
    frame.len()
}

/// The bytes that replace a frame of `drawn` lines (the cursor at the start of the line below
/// it) with `frame`: overwrite in place and erase leftovers, instead of clearing first, so
/// nothing flickers.
pub(crate) fn repaint(drawn: usize, frame: &[String]) -> String {
    let mut out = String::new();
    if drawn > 0 {
        let _ = write!(out, "\x1b[{drawn}A\r");
    }
    for line in frame {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Terminal width and height in cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    pub cols: usize,
    pub rows: usize,
}

/// The size of the terminal on stderr; 80×24 when it has none (e.g. `--progress tty` into a file).
fn terminal_size() -> Size {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a live,
    // properly aligned `winsize` owned by this frame.
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        Size {
            cols: usize::from(ws.ws_col),
            rows: usize::from(ws.ws_row),
        }
    } else {
        Size { cols: 80, rows: 24 }
    }
}

/// Whether `auto` progress should be the live view: stderr is a terminal that understands ANSI.
pub fn stderr_is_capable_terminal() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Cached,
    Done,
    Error,
}

#[derive(Debug)]
struct Vertex {
    name: String,
    status: Status,
    /// When the renderer saw it start.
    started: Instant,
    /// Final duration, for `Done` and `Error`.
    duration: Option<Duration>,
    logs: LogTail,
}

/// The last lines a vertex printed, plus the line it is still printing.
#[derive(Debug, Default)]
struct LogTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl LogTail {
    fn push(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.lines
                .push_back(sanitize(&String::from_utf8_lossy(&line[..nl])));
            if self.lines.len() > LOG_LINES {
                self.lines.pop_front();
            }
        }
        if self.partial.len() > MAX_PARTIAL {
            let cut = self
                .partial
                .iter()
                .rposition(|&b| b == b'\r')
                .unwrap_or(self.partial.len() - MAX_PARTIAL);
            self.partial.drain(..cut);
        }
    }

    /// Up to `n` last lines, oldest first, the unfinished one included.
    fn last(&self, n: usize) -> Vec<String> {
        let mut all: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            all.push(sanitize(&String::from_utf8_lossy(&self.partial)));
        }
        let skip = all.len().saturating_sub(n);
        all.split_off(skip)
    }
}

/// What the live view knows: vertices in first-seen order and the build's messages.
#[derive(Debug)]
pub(crate) struct View {
    start: Instant,
    vertices: Vec<Vertex>,
    index: HashMap<String, usize>,
    messages: Vec<String>,
}

impl View {
    pub(crate) fn new(start: Instant) -> Self {
        View {
            start,
            vertices: Vec::new(),
            index: HashMap::new(),
            messages: Vec::new(),
        }
    }

    /// Number of vertices still running.
    pub(crate) fn running(&self) -> usize {
        self.vertices
            .iter()
            .filter(|v| v.status == Status::Running)
            .count()
    }

    fn vertex(&mut self, digest: &str, name: &str, now: Instant) -> &mut Vertex {
        let i = match self.index.get(digest) {
            Some(&i) => i,
            None => {
                self.vertices.push(Vertex {
                    name: name.to_string(),
                    status: Status::Running,
                    started: now,
                    duration: None,
                    logs: LogTail::default(),
                });
                self.index
                    .insert(digest.to_string(), self.vertices.len() - 1);
                self.vertices.len() - 1
            }
        };
        &mut self.vertices[i]
    }

    /// Takes in one event that arrived at `now`.
    pub(crate) fn apply(&mut self, ev: &ProgressEvent, now: Instant) {
        match ev {
            ProgressEvent::Vertex {
                digest,
                name,
                state,
                duration,
                ..
            }
            | ProgressEvent::Step {
                digest,
                name,
                state,
                duration,
                ..
            } => {
                let v = self.vertex(digest, name, now);
                v.name.clone_from(name);
                match state {
                    VertexState::Started => {
                        v.status = Status::Running;
                        v.started = now;
                        v.duration = None;
                    }
                    VertexState::Cached => v.status = Status::Cached,
                    VertexState::Completed | VertexState::Error => {
                        v.status = if *state == VertexState::Completed {
                            Status::Done
                        } else {
                            Status::Error
                        };
                        v.duration = Some(duration.unwrap_or_else(|| now - v.started));
                    }
                }
            }
            ProgressEvent::Log { digest, data, .. } => {
                // Output of a vertex we have not seen start: show it under its digest.
                let short = digest.strip_prefix("sha256:").unwrap_or(digest);
                let name = short.get(..12).unwrap_or(short).to_string();
                self.vertex(digest, &name, now).logs.push(data);
            }
            ProgressEvent::Status { .. } => {}
            ProgressEvent::Message(m) => self.messages.extend(m.lines().map(str::to_string)),
        }
    }

    /// The screen at `now`: a header, a line per vertex (log lines under running ones), then the
    /// build's messages. A live frame fits `size`; the `last` one shows everything, running
    /// vertices as canceled (the build ended without them), and only messages may be wider than
    /// the terminal (they wrap, nothing is redrawn after it).
    pub(crate) fn frame(&self, now: Instant, size: Size, last: bool) -> Vec<String> {
        let cols = size.cols.saturating_sub(1).max(1);
        let finished = self
            .vertices
            .iter()
            .filter(|v| v.status != Status::Running)
            .count();
        if last && self.vertices.is_empty() && self.messages.is_empty() {
            // Nothing ran (e.g. the Dockerfile did not parse): leave only the error to be printed.
            return Vec::new();
        }
        // A vertex still running at the end was canceled: something else failed.
        let failed = self
            .vertices
            .iter()
            .any(|v| v.status == Status::Error || (last && v.status == Status::Running));
        let mut header = format!(
            "[+] Building {:.1}s ({finished}/{})",
            secs(now - self.start),
            self.vertices.len()
        );
        if last {
            header.push_str(if failed { " FAILED" } else { " FINISHED" });
        }

        // One block per vertex: its line, then its log lines.
        let mut blocks: Vec<(bool, Vec<String>)> = self
            .vertices
            .iter()
            .map(|v| {
                let mut lines = vec![vertex_line(v, now, cols, last)];
                if v.status == Status::Running && !last {
                    lines.extend(
                        v.logs
                            .last(LOG_LINES)
                            .iter()
                            .map(|l| fit(&format!(" => => # {l}"), cols)),
                    );
                }
                (v.status == Status::Running, lines)
            })
            .collect();
        let messages: Vec<String> = if last {
            self.messages.iter().map(|m| sanitize_name(m)).collect()
        } else {
            let skip = self.messages.len().saturating_sub(LIVE_MESSAGES);
            self.messages[skip..]
                .iter()
                .map(|m| fit(&sanitize_name(m), cols))
                .collect()
        };
        if !last {
            // Header, messages and the cursor's line are always on screen.
            let budget = size.rows.saturating_sub(2 + messages.len());
            fit_height(&mut blocks, budget);
        }

        let mut out = vec![fit(&header, cols)];
        out.extend(blocks.into_iter().flat_map(|(_, lines)| lines));
        out.extend(messages);
        out
    }
}

/// Shrinks `blocks` (running?, lines) to at most `budget` lines: first the oldest finished
/// vertices go, then log lines of running ones (from the longest tail), then the oldest running
/// vertices.
fn fit_height(blocks: &mut Vec<(bool, Vec<String>)>, budget: usize) {
    let total = |b: &Vec<(bool, Vec<String>)>| b.iter().map(|(_, l)| l.len()).sum::<usize>();
    while total(blocks) > budget {
        if let Some(i) = blocks.iter().position(|(running, _)| !running) {
            blocks.remove(i);
        } else if let Some((_, lines)) = blocks
            .iter_mut()
            .filter(|(_, l)| l.len() > 1)
            .max_by_key(|(_, l)| l.len())
        {
            lines.remove(1);
        } else {
            blocks.remove(0);
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// ` => NAME ... STATUS`, the status right-aligned at `cols`.
fn vertex_line(v: &Vertex, now: Instant, cols: usize, last: bool) -> String {
    let status = match v.status {
        Status::Running if last => "CANCELED".to_string(),
        Status::Running => format!("{:.1}s", secs(now - v.started)),
        Status::Cached => "CACHED".to_string(),
        Status::Done => format!("DONE {:.1}s", secs(v.duration.unwrap_or_default())),
        Status::Error => format!("ERROR {:.1}s", secs(v.duration.unwrap_or_default())),
    };
    let left = format!(" => {}", sanitize_name(&v.name));
    let status_w = width(&status);
    // Room for the name, a space and the status; on a very narrow terminal, name first.
    if cols < status_w + 8 {
        return fit(&format!("{left} {status}"), cols);
    }
    let left = fit(&left, cols - status_w - 1);
    let pad = cols - status_w - width(&left);
    format!("{left}{}{status}", " ".repeat(pad))
}

/// Display width in terminal cells.
fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` cut to `cols` cells, ending in `…` when something was cut.
pub(crate) fn fit(s: &str, cols: usize) -> String {
    if width(s) <= cols {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw + 1 > cols {
            break;
        }
        out.push(c);
        w += cw;
    }
    if cols > 0 {
        out.push('…');
    }
    out
}

/// A vertex name or message on one line: whitespace controls become spaces, the rest as in
/// [`sanitize`].
fn sanitize_name(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    sanitize(&flat)
}

/// One line of process output as a terminal would leave it: text after the last `\r` (progress
/// bars redraw that way), ANSI escape sequences removed (they would move our cursor), tabs
/// expanded to 8-column stops, other control characters dropped.
pub(crate) fn sanitize(line: &str) -> String {
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut col = 0;
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => {
                let n = 8 - col % 8;
                out.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            c if c.is_control() => {}
            c => {
                out.push(c);
                col += c.width().unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: Size = Size { cols: 61, rows: 30 };

    fn vertex(digest: &str, name: &str, state: VertexState, ms: Option<u64>) -> ProgressEvent {
        ProgressEvent::Vertex {
            digest: digest.into(),
            name: name.into(),
            state,
            duration: ms.map(Duration::from_millis),
            error: None,
        }
    }

    fn log(digest: &str, data: &str) -> ProgressEvent {
        ProgressEvent::Log {
            digest: digest.into(),
            stream: memobuild_worker::progress::LogStream::Stdout,
            data: data.as_bytes().to_vec(),
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn vertices_in_first_seen_order_with_timers_and_final_states() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        v.apply(
            &vertex("a", "[1/3] FROM busybox", VertexState::Cached, None),
            t0,
        );
        v.apply(
            &vertex("b", "[2/3] RUN make", VertexState::Started, None),
            at(t0, 100),
        );
        v.apply(
            &vertex("c", "[3/3] COPY x /", VertexState::Started, None),
            at(t0, 200),
        );
        v.apply(&log("b", "one\ntwo\nthr"), at(t0, 300));
        v.apply(
            &vertex("c", "[3/3] COPY x /", VertexState::Completed, Some(250)),
            at(t0, 450),
        );
        assert_eq!(
            v.frame(at(t0, 1600), WIDE, false),
            [
                "[+] Building 1.6s (2/3)",
                " => [1/3] FROM busybox                                CACHED",
                " => [2/3] RUN make                                      1.5s",
                " => => # one",
                " => => # two",
                " => => # thr",
                " => [3/3] COPY x /                                 DONE 0.2s",
            ]
        );
        v.apply(
            &vertex("b", "[2/3] RUN make", VertexState::Error, Some(2000)),
            at(t0, 2100),
        );
        v.apply(
            &ProgressEvent::Message("warning: something".into()),
            at(t0, 2100),
        );
        assert_eq!(
            v.frame(at(t0, 2200), WIDE, true),
            [
                "[+] Building 2.2s (3/3) FAILED",
                " => [1/3] FROM busybox                                CACHED",
                " => [2/3] RUN make                                ERROR 2.0s",
                " => [3/3] COPY x /                                 DONE 0.2s",
                "warning: something",
            ]
        );
    }

    #[test]
    fn unfinished_vertices_are_canceled_in_the_final_frame_and_logs_dropped() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        v.apply(
            &vertex("a", "[1/1] RUN sleep 9", VertexState::Started, None),
            t0,
        );
        v.apply(&log("a", "zzz\n"), t0);
        let f = v.frame(at(t0, 500), WIDE, true);
        assert_eq!(f[0], "[+] Building 0.5s (0/1) FAILED");
        assert!(f[1].ends_with(" CANCELED"), "{f:?}");
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_build_that_ran_nothing_leaves_no_final_frame() {
        let t0 = Instant::now();
        let v = View::new(t0);
        assert_eq!(v.frame(t0, WIDE, false), ["[+] Building 0.0s (0/0)"]);
        assert!(v.frame(t0, WIDE, true).is_empty());
    }

    #[test]
    fn only_the_last_log_lines_are_kept() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        v.apply(&vertex("a", "run", VertexState::Started, None), t0);
        for i in 0..20 {
            v.apply(&log("a", &format!("line {i}\n")), t0);
        }
        let f = v.frame(t0, WIDE, false);
        assert_eq!(f.len(), 2 + LOG_LINES);
        assert_eq!(f[2], " => => # line 14");
        assert_eq!(f[7], " => => # line 19");
    }

    #[test]
    fn log_lines_split_across_chunks_and_multibyte_chars_are_joined() {
        let mut t = LogTail::default();
        let bytes = "héllo\nwor".as_bytes();
        t.push(&bytes[..2]); // splits `é`
        t.push(&bytes[2..]);
        t.push(b"ld\n");
        assert_eq!(t.last(10), ["héllo", "world"]);
    }

    #[test]
    fn lines_never_exceed_the_terminal_width() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        let long = format!("[1/1] RUN {}", "x".repeat(200));
        v.apply(&vertex("a", &long, VertexState::Started, None), t0);
        v.apply(&log("a", &format!("{}\n", "日本語".repeat(40))), t0);
        for cols in [1, 2, 5, 10, 20, 40, 100] {
            let size = Size { cols, rows: 30 };
            for line in v.frame(at(t0, 1234), size, false) {
                assert!(width(&line) < cols.max(2), "{cols}: {line:?}");
            }
        }
        let f = v.frame(at(t0, 1234), Size { cols: 41, rows: 30 }, false);
        assert_eq!(f[1], " => [1/1] RUN xxxxxxxxxxxxxxxxxxxx… 1.2s");
        assert_eq!(width(&f[2]), 40);
    }

    #[test]
    fn a_short_terminal_drops_finished_vertices_first_then_log_lines() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        for d in ["a", "b", "c"] {
            v.apply(&vertex(d, d, VertexState::Started, None), t0);
            v.apply(&vertex(d, d, VertexState::Completed, Some(1)), t0);
        }
        v.apply(&vertex("r", "running", VertexState::Started, None), t0);
        v.apply(&log("r", "1\n2\n3\n4\n"), t0);
        // Six rows: the header, four lines, the cursor's line.
        let f = v.frame(t0, Size { cols: 40, rows: 6 }, false);
        assert_eq!(f.len(), 5, "{f:?}");
        assert!(f[1].starts_with(" => running"), "{f:?}");
        assert_eq!(f[2..], [" => => # 2", " => => # 3", " => => # 4"]);
        // The final frame has everything.
        assert_eq!(v.frame(t0, Size { cols: 40, rows: 6 }, true).len(), 5);
    }

    #[test]
    fn sanitize_keeps_what_a_terminal_would_show() {
        assert_eq!(sanitize("10%\r50%\r100%"), "100%");
        assert_eq!(sanitize("done\r"), "done");
        assert_eq!(sanitize("\x1b[1;31mred\x1b[0m plain"), "red plain");
        assert_eq!(sanitize("\x1b]0;title\x07text"), "text");
        assert_eq!(sanitize("a\tb"), "a       b");
        assert_eq!(sanitize("bell\x07\x08"), "bell");
    }

    #[test]
    fn fit_counts_wide_characters_and_marks_cuts() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("日本語", 4), "日…");
        assert_eq!(fit("abc", 0), "");
    }

    #[test]
    fn repaint_moves_up_over_the_last_frame_and_clears_below() {
        let frame = vec!["a".to_string(), "b".to_string()];
        assert_eq!(repaint(0, &frame), "a\x1b[K\nb\x1b[K\n\x1b[J");
        assert_eq!(repaint(3, &frame), "\x1b[3A\ra\x1b[K\nb\x1b[K\n\x1b[J");
    }

    #[test]
    fn logs_of_unknown_vertices_show_under_their_short_digest() {
        let t0 = Instant::now();
        let mut v = View::new(t0);
        v.apply(&log(&format!("sha256:{}", "ab".repeat(32)), "hi\n"), t0);
        let f = v.frame(t0, WIDE, false);
        assert!(f[1].starts_with(" => abababababab "), "{f:?}");
        assert_eq!(f[2], " => => # hi");
    }
}
