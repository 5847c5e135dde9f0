//! Peers that accept a connection and then say nothing (issue 12, item 3). Each test starts such
//! a peer (a listener on 127.0.0.1 whose connections are accepted and kept open, never read or
//! answered) and checks that the build neither hangs nor lies: a registry there fails the build
//! with an error naming the host; a remote cache there costs a warning naming it, and the build
//! succeeds. Before the fix the first hung for over 11 minutes without a word, the second for
//! 19 (three tries of 600 s each).
//!
//! The bounds below are generous hang limits (the test's own timeout, so a hang fails the test
//! instead of stalling the suite), not speed assertions.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Sandbox, assert_ok, memobuild, stderr};

/// How long a build may take before the test calls it hung. The registry's limit is 30 s per
/// request and the remote cache's a few seconds; a pull makes few requests before failing.
const HANG: Duration = Duration::from_secs(240);

/// A peer at `127.0.0.1:PORT` that accepts every connection and never reads or writes; the
/// connections stay open for as long as the test process lives.
fn silent_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    addr
}

/// `memobuild build` on `sb` with `args`, killed (and the test failed) after [`HANG`].
fn build_bounded(sb: &Sandbox, env: &Env, args: &[&str]) -> (Output, Duration) {
    let mut cmd: Command = memobuild();
    cmd.arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .args(args)
        .arg(sb.context())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn memobuild");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "memobuild build still running after {HANG:?}: hung\n--- stderr\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    (output, took)
}

#[test]
fn a_registry_that_never_answers_fails_the_build_naming_the_host() {
    let Some(env) = Env::get() else { return };
    let host = silent_peer();
    let sb = Sandbox::new();
    sb.write("Dockerfile", &format!("FROM {host}/x/y:1\nRUN true\n"));
    let (out, took) = build_bounded(&sb, &env, &["--progress", "plain"]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("registry {host} did not answer within 30s")),
        "{text}"
    );
    eprintln!("failed after {took:?}");
}

#[test]
fn a_remote_cache_that_never_answers_is_a_warning_and_the_build_succeeds() {
    let Some(env) = Env::get() else { return };
    let url = format!("http://{}", silent_peer());
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo hi > /hi\n",
    );
    let (out, took) = build_bounded(
        &sb,
        &env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--progress",
            "plain",
            "--remote-cache",
            &url,
            "--output",
            &format!("type=oci,dest={}", sb.path("out.tar").display()),
        ],
    );
    assert_ok(&out, "memobuild build --remote-cache <silent>");
    let text = stderr(&out);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("warning: remote cache {url}")))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{text}");
    assert!(warnings[0].contains("no answer within"), "{text}");
    assert!(sb.path("out.tar").is_file());
    eprintln!("succeeded after {took:?}");
}
