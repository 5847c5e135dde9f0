//! End to end: `RUN --mount=type=ssh` with a real `ssh-agent` (`--ssh default` through
//! `$SSH_AUTH_SOCK`) and with key files (`--ssh ID=KEY`, loaded into an agent of the build's
//! own), built by `memobuild build` on the real containerd from hack/services.sh. The image
//! (busybox) gets the host's `ssh-add` and the shared libraries `ldd` lists, run through the
//! host's dynamic loader, so the test can ask the forwarded agent which keys it holds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Sandbox, assert_ok, error_line, stderr, stdout};

const IMAGE: &str = "docker.io/library/ssh:test";

/// `ssh-add` inside the image: the host's binary through the host's loader.
const SSH_ADD: &str = "/ssh/ld.so --library-path /ssh /ssh/ssh-add";

/// Whether OpenSSH's tools are installed; under CI their absence is a failure.
fn have_ssh_tools() -> bool {
    let ok = ["ssh-agent", "ssh-add", "ssh-keygen", "ldd"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "ssh-agent, ssh-add, ssh-keygen and ldd are needed under CI (openssh-client)"
        );
        eprintln!("SKIPPED: OpenSSH client tools not installed");
    }
    ok
}

/// A real `ssh-agent` in the foreground on a socket in the sandbox; killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(sb: &Sandbox) -> Agent {
        let socket = sb.path("user-agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "ssh-agent did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, socket }
    }

    fn add(&self, key: &Path) {
        let out = common::run({
            let mut c = Command::new("ssh-add");
            c.arg(key).env("SSH_AUTH_SOCK", &self.socket);
            c
        });
        assert_ok(&out, "ssh-add");
    }

    fn list(&self) -> String {
        let out = common::run({
            let mut c = Command::new("ssh-add");
            c.arg("-l").env("SSH_AUTH_SOCK", &self.socket);
            c
        });
        stdout(&out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ed25519 key at `sb/name` (passphrase may be empty) and its SHA256 fingerprint.
fn keygen(sb: &Sandbox, name: &str, passphrase: &str) -> (PathBuf, String) {
    let path = sb.path(name);
    let out = common::run({
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"])
            .arg(&path);
        c
    });
    assert_ok(&out, "ssh-keygen");
    let out = common::run({
        let mut c = Command::new("ssh-keygen");
        c.arg("-lf").arg(&path);
        c
    });
    assert_ok(&out, "ssh-keygen -l");
    let fp = stdout(&out)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    assert!(fp.starts_with("SHA256:"), "{fp}");
    (path, fp)
}

/// Copies the host's `ssh-add` and every library `ldd` lists into `CONTEXT/ssh/` (the loader as
/// `ld.so`).
fn stage_ssh_add(sb: &Sandbox) {
    let dir = sb.context().join("ssh");
    std::fs::create_dir_all(&dir).expect("mkdir ssh");
    let which = common::run({
        let mut c = Command::new("sh");
        c.args(["-c", "command -v ssh-add"]);
        c
    });
    let bin = PathBuf::from(stdout(&which).trim());
    std::fs::copy(&bin, dir.join("ssh-add")).expect("copy ssh-add");
    let ldd = common::run({
        let mut c = Command::new("ldd");
        c.arg(&bin);
        c
    });
    assert_ok(&ldd, "ldd");
    let mut loader = false;
    for line in stdout(&ldd).lines() {
        let line = line.trim();
        let (name, path) = match line.split_once(" => ") {
            Some((name, rest)) => (name.to_string(), rest.split(" (").next().unwrap_or("")),
            None if line.starts_with('/') => {
                loader = true;
                ("ld.so".to_string(), line.split(" (").next().unwrap_or(""))
            }
            None => continue, // linux-vdso
        };
        if path.starts_with('/') {
            std::fs::copy(path, dir.join(&name)).unwrap_or_else(|e| panic!("copy {path}: {e}"));
        }
    }
    assert!(
        loader,
        "no dynamic loader in ldd's output:\n{}",
        stdout(&ldd)
    );
}

/// `memobuild build` of the sandbox's context, tagging `ssh:test` and writing `out.tar`, with
/// `extra` flags and `SSH_AUTH_SOCK` set to `auth_sock` (unset when `None`).
fn build(sb: &Sandbox, env: &Env, extra: &[&str], auth_sock: Option<&Path>) -> Output {
    let mut cmd = common::memobuild();
    cmd.arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .args(["--progress", "plain", "-t", "ssh:test", "--output"])
        .arg(format!("type=oci,dest={}", sb.path("out.tar").display()))
        .args(extra)
        .arg(sb.context());
    match auth_sock {
        Some(s) => cmd.env("SSH_AUTH_SOCK", s),
        None => cmd.env_remove("SSH_AUTH_SOCK"),
    };
    common::run(cmd)
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

// Verifies: `--ssh default` forwards the agent at $SSH_AUTH_SOCK (SSH_AUTH_SOCK in the RUN points
// at the default socket and `ssh-add -l` lists the user's key); `--ssh keys=KEYFILE` forwards an
// agent holding exactly that key, on a socket with the mount's uid and mode; the forwarded agent
// refuses to delete keys (the user's agent still has its key afterwards); an optional ssh mount
// whose id was not given is skipped; no mount point is left in the image; the private agent is
// gone after the build; neither the key nor the socket path shows up in the output or the layers.
#[test]
fn agent_and_key_files_reach_run() {
    let Some(env) = Env::get() else { return };
    if !have_ssh_tools() {
        return;
    }
    let sb = Sandbox::new();
    let agent = Agent::start(&sb);
    let (user_key, user_fp) = keygen(&sb, "id_user", "");
    agent.add(&user_key);
    let (file_key, file_fp) = keygen(&sb, "id_file", "");
    stage_ssh_add(&sb);
    sb.write(
        "Dockerfile",
        &format!(
            r#"FROM {}
COPY ssh/ /ssh/
RUN --mount=type=ssh echo "$SSH_AUTH_SOCK" > /sock && {SSH_ADD} -l > /out
RUN --mount=type=ssh,id=keys,target=/k.sock,uid=1000,mode=0640,required stat -c '%a %u' /k.sock > /stat && {SSH_ADD} -l > /out-keys
RUN --mount=type=ssh ({SSH_ADD} -D && echo removed || echo refused) > /delete 2>/dev/null
RUN --mount=type=ssh,id=absent test ! -e /run/buildkit/ssh_agent.0 && echo skipped > /optional
CMD cat /sock /out /stat /out-keys /delete /optional; for p in /run/buildkit /k.sock; do [ -e $p ] && echo "left $p"; done; true
"#,
            env.busybox()
        ),
    );
    let keys_flag = format!("keys={}", file_key.display());
    let out = build(
        &sb,
        &env,
        &["--ssh", "default", "--ssh", &keys_flag],
        Some(&agent.socket),
    );
    assert_ok(&out, "memobuild build");

    let run = sb.ctr_run(&env, &sb.path("out.tar"), IMAGE);
    assert_ok(&run, "ctr run");
    let got = stdout(&run);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 6, "{got}");
    assert_eq!(lines[0], "/run/buildkit/ssh_agent.0");
    assert!(
        lines[1].contains(&user_fp) && !lines[1].contains(&file_fp),
        "{got}"
    );
    assert_eq!(lines[2], "640 1000");
    assert!(
        lines[3].contains(&file_fp) && !lines[3].contains(&user_fp),
        "{got}"
    );
    assert_eq!(lines[4], "refused");
    assert_eq!(lines[5], "skipped");

    assert!(
        agent.list().contains(&user_fp),
        "the user's agent lost its key"
    );
    let state = sb.state().display().to_string();
    assert!(
        processes_mentioning(&format!("{state}/")).is_empty(),
        "left running: {:?}",
        processes_mentioning(&state)
    );
    let leftovers: Vec<_> = std::fs::read_dir(sb.state().join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let private = std::fs::read_to_string(&file_key).expect("key");
    let secret_line = private.lines().nth(1).expect("key body");
    let printed = format!("{}{}", stderr(&out), stdout(&out));
    assert!(!printed.contains(secret_line), "{printed}");
    assert!(
        !printed.contains(&agent.socket.display().to_string()),
        "{printed}"
    );
    let layers = common::run({
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("mkdir -p \"$2\" && tar -xf \"$1\" -C \"$2\" && for f in \"$2\"/blobs/sha256/*; do gzip -dc \"$f\" 2>/dev/null || true; done")
            .arg("sh")
            .arg(sb.path("out.tar"))
            .arg(sb.path("layers"));
        c
    });
    assert!(!layers.stdout.is_empty());
    let layer_text = String::from_utf8_lossy(&layers.stdout);
    assert!(!layer_text.contains(secret_line));
}

// Verifies: a required ssh mount whose id was not given fails naming the id and the Dockerfile
// line; `--ssh default` without SSH_AUTH_SOCK, a missing key file, key files without ssh-agent
// installed and a passphrase-protected key are errors naming what is wrong, before anything runs.
#[test]
fn missing_or_unusable_ssh_sources_are_clear_errors() {
    let Some(env) = Env::get() else { return };
    if !have_ssh_tools() {
        return;
    }
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN --mount=type=ssh,id=deploy,required true\n",
            env.busybox()
        ),
    );
    let failing = |extra: &[&str]| {
        let out = build(&sb, &env, extra, None);
        assert!(!out.status.success(), "must fail:\n{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        error_line(&out)
    };
    let line = failing(&[]);
    assert!(
        line.contains("ssh agent or key `deploy` is required but was not given"),
        "{line}"
    );
    assert!(line.contains("Dockerfile:2"), "{line}");

    let line = failing(&["--ssh", "deploy"]);
    assert!(line.contains("SSH_AUTH_SOCK is not set"), "{line}");

    let missing = sb.path("no-such-key");
    let line = failing(&["--ssh", &format!("deploy={}", missing.display())]);
    assert!(line.contains("no-such-key"), "{line}");

    // Key files need OpenSSH's ssh-agent.
    let (plain, _) = keygen(&sb, "id_plain", "");
    let mut cmd = common::memobuild();
    cmd.arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .arg("--ssh")
        .arg(format!("deploy={}", plain.display()))
        .arg(sb.context())
        .env("PATH", "/nonexistent");
    let out = common::run(cmd);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("`ssh-agent` not found"), "{line}");

    let (locked, _) = keygen(&sb, "id_locked", "a passphrase");
    let line = failing(&["--ssh", &format!("deploy={}", locked.display())]);
    assert!(
        line.contains("passphrase") && line.contains("id_locked"),
        "{line}"
    );
}
