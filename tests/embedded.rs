//! End to end: without `--containerd` (and with no system containerd answering), `memobuild build`
//! starts a private containerd under its state directory, builds, and stops it. The image it
//! exports runs under the test containerd; afterwards no containerd, shim or container process and
//! no mount is left under the state directory. Two builds sharing a state directory at once share
//! one instance and both succeed; without a `containerd` binary the error says so.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Env, Sandbox, assert_ok, stderr};

const DOCKERFILE: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
WORKDIR /app
RUN echo "built by RUN as uid $(id -u)" > run.txt && sleep 1
COPY message.txt ./
CMD ["/bin/sh", "-c", "cat /app/run.txt /app/message.txt"]
"#;

const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE)
        .write("message.txt", "message from the context\n");
    sb
}

/// `memobuild build` without `--containerd` (or with `embedded` when asked to, or when this
/// machine has a system containerd, which would otherwise be used), writing `out`.
fn build_cmd(env: &Env, sb: &Sandbox, out: &str, force: bool) -> Command {
    let mut cmd = common::memobuild();
    cmd.arg("build");
    if force || Path::new(SYSTEM_SOCKET).exists() {
        cmd.args(["--containerd", "embedded"]);
    }
    cmd.arg("--state-dir")
        .arg(sb.state())
        .args(["--progress", "plain", "-t", "embedded:test", "--no-cache"])
        .arg("--build-arg")
        .arg(format!("REGISTRY={}", env.registry))
        .arg("--output")
        .arg(format!("type=oci,dest={}", sb.path(out).display()))
        .arg(sb.context());
    cmd
}

/// Processes that belong to the embedded containerd of `state`: the daemon (its command line names
/// the state dir), shims (their `-address` does) and containers (their root is under it).
fn leftover_processes(state: &Path) -> Vec<String> {
    let state = state.canonicalize().expect("state dir");
    let needle = state.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.parse::<u32>().is_ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let root = std::fs::read_link(entry.path().join("root")).ok();
        if cmdline.contains(&needle) || root.is_some_and(|r| r.starts_with(&state)) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn leftover_mounts(state: &Path) -> Vec<String> {
    let state = state.canonicalize().expect("state dir");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(m).starts_with(&state))
        })
        .map(str::to_string)
        .collect()
}

fn assert_nothing_left(sb: &Sandbox) {
    assert_eq!(leftover_processes(&sb.state()), Vec::<String>::new());
    assert_eq!(leftover_mounts(&sb.state()), Vec::<String>::new());
    assert!(
        !sb.state().join("containerd/containerd.sock").exists(),
        "socket left behind"
    );
}

fn assert_runs(env: &Env, sb: &Sandbox, out: &Output, archive: &str) {
    assert_ok(out, "memobuild build (embedded containerd)");
    let run = sb.ctr_run(env, &sb.path(archive), "docker.io/library/embedded:test");
    assert_ok(&run, "ctr run");
    assert_eq!(
        common::stdout(&run),
        "built by RUN as uid 0\nmessage from the context\n"
    );
}

#[test]
fn build_without_containerd_starts_and_stops_an_embedded_one() {
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let out = common::run(build_cmd(&env, &sb, "out.tar", false));
    assert_runs(&env, &sb, &out, "out.tar");
    let log = std::fs::read_to_string(sb.state().join("containerd/containerd.log"))
        .expect("the embedded containerd's log");
    assert!(log.contains("containerd successfully booted"), "{log}");
    assert_nothing_left(&sb);
}

// Verifies (issue 14): with `--containerd-linger`, the embedded containerd a build started stays
// up after it, the next build uses that same instance (no second start), and once no build has
// used it for the linger, it is stopped with everything it had (processes, mounts, socket).
#[test]
fn an_embedded_containerd_lingers_for_the_next_build_then_stops() {
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let build = |out: &str| {
        let mut cmd = build_cmd(&env, &sb, out, false);
        cmd.args(["--containerd-linger", "4s"]);
        common::run(cmd)
    };
    let pid = || std::fs::read_to_string(sb.state().join("containerd/containerd.pid")).ok();
    let first = build("a.tar");
    assert_runs(&env, &sb, &first, "a.tar");
    let started = pid().expect("the embedded containerd's pid file");
    assert!(
        Path::new(&format!("/proc/{}", started.trim())).exists(),
        "the embedded containerd stopped although it should linger"
    );
    let second = build("b.tar");
    assert_runs(&env, &sb, &second, "b.tar");
    assert_eq!(
        pid().as_deref(),
        Some(started.as_str()),
        "a second instance"
    );
    let log = std::fs::read_to_string(sb.state().join("containerd/containerd.log"))
        .expect("the embedded containerd's log");
    assert_eq!(
        log.matches("containerd successfully booted").count(),
        1,
        "{log}"
    );
    // Stopped after 4 s without a build (the watcher polls no more often than that).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !leftover_processes(&sb.state()).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_nothing_left(&sb);
    assert!(pid().is_none(), "pid file left behind");
}

#[test]
fn two_builds_with_one_state_dir_share_the_embedded_containerd() {
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let spawn = |out: &str| {
        build_cmd(&env, &sb, out, false)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn memobuild")
    };
    let (a, b) = (spawn("a.tar"), spawn("b.tar"));
    let a = a.wait_with_output().expect("build a");
    let b = b.wait_with_output().expect("build b");
    assert_runs(&env, &sb, &a, "a.tar");
    assert_runs(&env, &sb, &b, "b.tar");
    let log = std::fs::read_to_string(sb.state().join("containerd/containerd.log"))
        .expect("the embedded containerd's log");
    let boots = log.matches("containerd successfully booted").count();
    // Both builds run a 1 s RUN after pulling; the second finds the first's instance running.
    assert_eq!(boots, 1, "one shared instance expected:\n{log}");
    assert_nothing_left(&sb);
}

#[test]
fn without_a_containerd_binary_the_error_says_so() {
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let empty = sb.path("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    // `embedded` so that a system containerd on this machine does not make the test moot.
    let mut cmd = build_cmd(&env, &sb, "out.tar", true);
    cmd.env("PATH", &empty);
    let out = common::run(cmd);
    assert!(!out.status.success());
    let err = common::error_line(&out);
    assert!(
        err.contains("`containerd` is not installed"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&sb);
}

// Verifies (issue 14): a build whose every step comes from the cache never starts the
// embedded containerd: nothing needs one.
#[test]
fn a_cached_rebuild_starts_no_containerd() {
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let cmd = |out: &str| {
        let mut cmd = common::memobuild();
        cmd.arg("build")
            .args(["--containerd", "embedded", "-t", "embedded:test"])
            .arg("--state-dir")
            .arg(sb.state())
            .arg("--build-arg")
            .arg(format!("REGISTRY={}", env.registry))
            .arg("--output")
            .arg(format!("type=oci,dest={}", sb.path(out).display()))
            .arg(sb.context());
        cmd
    };
    let first = common::run(cmd("a.tar"));
    assert_runs(&env, &sb, &first, "a.tar");
    let log = sb.state().join("containerd/containerd.log");
    assert!(log.exists(), "the first build needed containerd");
    std::fs::remove_file(&log).expect("rm log");
    let second = common::run(cmd("b.tar"));
    assert_ok(&second, "cached rebuild");
    assert_eq!(
        common::stdout(&first),
        common::stdout(&second),
        "same image"
    );
    assert!(!log.exists(), "a fully cached build started containerd");
    assert_nothing_left(&sb);
}
