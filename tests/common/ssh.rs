//! OpenSSH helpers for the tests (the approach of `tests/ssh.rs`): a real `ssh-agent` on a
//! socket in the sandbox, ed25519 keys, and the host's `ssh-add` staged into a build context
//! with the libraries `ldd` lists, so that a busybox step can run it through the host's
//! dynamic loader (`/ssh/ld.so --library-path /ssh /ssh/ssh-add`) and ask a forwarded agent
//! which keys it holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Sandbox, assert_ok, run, stdout};

/// `ssh-add` inside an image whose context went through [`stage_ssh_add`] and was copied to
/// `/ssh/`.
pub const SSH_ADD: &str = "/ssh/ld.so --library-path /ssh /ssh/ssh-add";

/// Whether OpenSSH's tools are installed; under CI their absence is a failure.
pub fn have_ssh_tools() -> bool {
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
pub struct Agent {
    child: Child,
    /// Its socket (what `SSH_AUTH_SOCK` names).
    pub socket: PathBuf,
}

impl Agent {
    /// Starts one on `SANDBOX/user-agent.sock`.
    pub fn start(sb: &Sandbox) -> Agent {
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

    /// Loads `key`.
    pub fn add(&self, key: &Path) {
        let out = run({
            let mut c = Command::new("ssh-add");
            c.arg(key).env("SSH_AUTH_SOCK", &self.socket);
            c
        });
        assert_ok(&out, "ssh-add");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ed25519 key without passphrase at `sb/name`, and its SHA256 fingerprint.
pub fn keygen(sb: &Sandbox, name: &str) -> (PathBuf, String) {
    let path = sb.path(name);
    let out = run({
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path);
        c
    });
    assert_ok(&out, "ssh-keygen");
    let out = run({
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

/// Copies the host's `ssh-add` and every library `ldd` lists into `CONTEXT/ssh/` (the loader
/// as `ld.so`).
pub fn stage_ssh_add(sb: &Sandbox) {
    let dir = sb.context().join("ssh");
    std::fs::create_dir_all(&dir).expect("mkdir ssh");
    let which = run({
        let mut c = Command::new("sh");
        c.args(["-c", "command -v ssh-add"]);
        c
    });
    let bin = PathBuf::from(stdout(&which).trim());
    std::fs::copy(&bin, dir.join("ssh-add")).expect("copy ssh-add");
    let ldd = run({
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
