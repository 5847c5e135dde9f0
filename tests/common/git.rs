//! A git repository served by `git daemon` on 127.0.0.1, for tests of git sources and
//! contexts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{assert_ok, stdout};

/// A repository served by `git daemon` on 127.0.0.1, with a work tree to commit from.
pub struct GitServer {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Child,
}

impl GitServer {
    /// `repo.git` with a first commit (`a.txt` = one, `sub/b.txt` = b1), annotated tag `v1`, and
    /// a second commit on `main` (`a.txt` = two, `sub/b.txt` = b2).
    pub fn start() -> GitServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        let srv = dir.path().join("srv");
        std::fs::create_dir_all(&srv).expect("mkdir");
        git(dir.path(), &["init", "-q", "-b", "main", "work"]);
        git(&srv, &["init", "-q", "--bare", "-b", "main", "repo.git"]);
        commit(&work, &[("a.txt", "one\n"), ("sub/b.txt", "b1\n")], "first");
        git(&work, &["tag", "-a", "v1", "-m", "v1"]);
        commit(
            &work,
            &[("a.txt", "two\n"), ("sub/b.txt", "b2\n")],
            "second",
        );
        git(&work, &["push", "-q", "--tags", "../srv/repo.git", "main"]);

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut daemon = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", srv.display()))
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(&srv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let url = format!("git://127.0.0.1:{port}/repo.git");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("git")
                .args(["ls-remote", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "git daemon did not start");
            if let Ok(Some(st)) = daemon.try_wait() {
                panic!("git daemon exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        GitServer { dir, port, daemon }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }

    pub fn rev_parse(&self, rev: &str) -> String {
        let out = Command::new("git")
            .current_dir(self.work())
            .args(["rev-parse", rev])
            .output()
            .expect("git rev-parse");
        assert_ok(&out, "git rev-parse");
        stdout(&out).trim().to_string()
    }

    /// Commits and pushes `main`.
    pub fn move_main(&self, files: &[(&str, &str)]) {
        commit(&self.work(), files, "move");
        git(&self.work(), &["push", "-q", "../srv/repo.git", "main"]);
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Commits `files` in the work tree `work`.
pub fn commit(work: &Path, files: &[(&str, &str)], msg: &str) {
    for (p, c) in files {
        let path = work.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, c).expect("write");
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", msg]);
}

pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert_ok(&out, &format!("git {}", args.join(" ")));
}
