//! A real `memobuild server` process for the tests, killed on drop.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::memobuild;

/// A running server.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// Starts the server over `store` on `127.0.0.1:0` (no port picked ahead that someone
    /// could take) with `args`, and reads the address it prints first.
    pub fn start(store: &Path, args: &[&str]) -> Server {
        let mut cmd = memobuild();
        cmd.args(["server", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start memobuild server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start (first line {line:?})");
        };
        Server {
            child,
            url: url.to_owned(),
            addr: url.trim_start_matches("http://").to_owned(),
        }
    }

    /// Reports a build record (`POST /api/builds`) with the bearer `token`; the response.
    pub fn post_build(&self, token: &str, record: &serde_json::Value) -> super::http::Resp {
        let auth = format!("Bearer {token}");
        super::http::request(
            &self.addr,
            "POST",
            "/api/builds",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            record.to_string().as_bytes(),
        )
    }

    /// Stops it (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
