//! End to end: ADD of http(s) URLs and of git repositories, against real servers on loopback (a
//! small HTTP file server in a thread of the test, `git daemon` serving a repository made in a
//! temporary directory), built by `memobuild build` on the real containerd from hack/services.sh.
//! Results are read by running the image under `ctr`; cache behaviour from `--progress json`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::git::GitServer;
use common::{Env, Sandbox, assert_ok, error_line, progress_events, stderr, stdout};
use sha2::Digest;

const IMAGE: &str = "docker.io/library/sources:test";

/// `memobuild build --progress json` of the sandbox, tagging `sources:test` into `out.tar`.
fn build(sb: &Sandbox, env: &Env) -> Output {
    let dest = sb.path("out.tar");
    let dest = format!("type=oci,dest={}", dest.display());
    sb.build(
        env,
        &[
            "--progress",
            "json",
            "-t",
            "sources:test",
            "--output",
            &dest,
        ],
    )
}

/// Builds (which must succeed), runs the image and returns what its `CMD` printed and the build.
fn build_and_run(sb: &Sandbox, env: &Env) -> (String, Output) {
    let out = build(sb, env);
    assert_ok(&out, "memobuild build");
    let run = sb.ctr_run(env, &sb.path("out.tar"), IMAGE);
    assert_ok(&run, "ctr run");
    (stdout(&run), out)
}

/// How many vertices named `name` reached `state` (an ADD of a URL or repository is two
/// vertices with one name: the source and the copy).
fn count(out: &Output, state: &str, name: &str) -> usize {
    progress_events(out)
        .iter()
        .filter(|e| e["state"] == state && e["name"].as_str().is_some_and(|n| n.contains(name)))
        .count()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A tiny HTTP/1.1 file server on 127.0.0.1: `GET /path` answers the body set for the path
/// (with a fixed `Last-Modified`), else 404. Counts the requests it served.
struct FileServer {
    port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<AtomicUsize>,
}

impl FileServer {
    fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (files.clone(), hits.clone());
        // The thread ends with the test process; it holds nothing but the listener.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &f, &h);
            }
        });
        FileServer { port, files, hits }
    }

    fn set(&self, path: &str, body: &[u8]) {
        self.files
            .lock()
            .expect("lock")
            .insert(path.to_string(), body.to_vec());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(
    stream: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    hits: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let path = request.split(' ').nth(1).unwrap_or("/").to_string();
    let body = files.lock().ok().and_then(|f| f.get(&path).cloned());
    let mut w = stream;
    match body {
        Some(b) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            w.write_all(&b)?;
        }
        None => write!(
            w,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    w.flush()
}

fn from(env: &Env) -> String {
    format!("FROM {}", env.busybox())
}

// Verifies: ADD of a URL with the right checksum puts the file at the destination with
// BuildKit's mode (0600), owner 0:0 and the clamped mtime; a rebuild takes source and copy from
// the cache without contacting the server (the checksum pins the content).
#[test]
fn add_url_with_checksum_is_verified_and_cached() {
    let Some(env) = Env::get() else { return };
    let server = FileServer::start();
    server.set("/dl/tool.txt", b"hello tool\n");
    let sum = sha256_hex(b"hello tool\n");
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "{}\nADD --checksum=sha256:{sum} {} /opt/\nCMD stat -c '%n %a %u:%g %Y' /opt/tool.txt; cat /opt/tool.txt\n",
            from(&env),
            server.url("/dl/tool.txt")
        ),
    );
    let (printed, first) = build_and_run(&sb, &env);
    assert_eq!(printed, "/opt/tool.txt 600 0:0 0\nhello tool\n");
    assert_eq!(count(&first, "started", "ADD"), 2, "{}", stderr(&first));
    assert_eq!(server.hits(), 1);

    let again = build(&sb, &env);
    assert_ok(&again, "rebuild");
    assert_eq!(count(&again, "started", "ADD"), 0, "{}", stderr(&again));
    assert_eq!(count(&again, "cached", "ADD"), 2, "{}", stderr(&again));
    assert_eq!(server.hits(), 1, "a pinned URL is not fetched again");
}

// Verifies: a checksum that does not match fails the build (exit 1) with an error naming the
// URL, the expected digest and the actual one.
#[test]
fn add_url_with_wrong_checksum_fails_clearly() {
    let Some(env) = Env::get() else { return };
    let server = FileServer::start();
    server.set("/x.bin", b"actual bytes");
    let wrong = "0".repeat(64);
    let sb = Sandbox::new();
    let url = server.url("/x.bin");
    sb.write(
        "Dockerfile",
        &format!(
            "{}\nADD --checksum=sha256:{wrong} {url} /x.bin\n",
            from(&env)
        ),
    );
    let out = build(&sb, &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains(&url), "{line}");
    assert!(line.contains(&format!("expected sha256:{wrong}")), "{line}");
    assert!(
        line.contains(&format!("got sha256:{}", sha256_hex(b"actual bytes"))),
        "{line}"
    );
}

// Verifies: without a checksum the URL is fetched on every build (as BuildKit does); unchanged
// bytes give the same layer, so the copy and the RUN after it are cache hits; changed bytes on
// the server rebuild the copy and what follows, and the image has the new content.
#[test]
fn add_url_without_checksum_refetches_and_rebuilds_only_on_change() {
    let Some(env) = Env::get() else { return };
    let server = FileServer::start();
    server.set("/data.txt", b"v1\n");
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "{}\nADD --chmod=644 {} /data/\nRUN cp /data/data.txt /copy.txt\nCMD stat -c '%a' /data/data.txt; cat /copy.txt\n",
            from(&env),
            server.url("/data.txt")
        ),
    );
    let (printed, first) = build_and_run(&sb, &env);
    assert_eq!(printed, "644\nv1\n");
    assert_eq!(count(&first, "started", "ADD"), 2);

    let again = build(&sb, &env);
    assert_ok(&again, "rebuild");
    assert_eq!(server.hits(), 2, "fetched again");
    assert_eq!(count(&again, "started", "ADD"), 1, "only the download ran");
    assert_eq!(count(&again, "cached", "ADD"), 1, "the copy was a hit");
    assert_eq!(count(&again, "started", "RUN"), 0);

    server.set("/data.txt", b"v2\n");
    let (printed, changed) = build_and_run(&sb, &env);
    assert_eq!(printed, "644\nv2\n");
    assert_eq!(count(&changed, "started", "ADD"), 2);
    assert_eq!(count(&changed, "started", "RUN"), 1);
}

// Verifies: ADD of a git repository at an annotated tag, at a branch with a subdirectory, and
// with --keep-git-dir (a repository on the branch, `.git` kept; dropped otherwise); a rebuild
// with nothing moved takes every git source from the cache; moving the branch rebuilds exactly
// the ADDs of the branch, and the tag's stays cached.
#[test]
fn add_git_at_tag_branch_subdir_and_keep_git_dir() {
    let Some(env) = Env::get() else { return };
    let repo = GitServer::start();
    let url = repo.url();
    let first_commit = repo.rev_parse("v1^{commit}");
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "{}\nADD {url}#v1 /v1\nADD {url}#main:sub /sub\nADD --keep-git-dir=true {url}#main /kept\n\
             ADD {url}#{first_commit}:sub /c\n\
             CMD cat /v1/a.txt /v1/sub/b.txt /sub/b.txt /kept/a.txt /kept/.git/HEAD /c/b.txt; ls -a /v1 | tr '\\n' ' '\n",
            from(&env)
        ),
    );
    let (printed, first) = build_and_run(&sb, &env);
    assert_eq!(
        printed,
        "one\nb1\nb2\ntwo\nref: refs/heads/main\nb1\n. .. a.txt sub "
    );
    assert_eq!(count(&first, "started", "ADD"), 8, "{}", stderr(&first));

    let again = build(&sb, &env);
    assert_ok(&again, "rebuild");
    assert_eq!(count(&again, "started", "ADD"), 0, "{}", stderr(&again));
    assert_eq!(count(&again, "cached", "ADD"), 8, "{}", stderr(&again));

    repo.move_main(&[("a.txt", "three\n"), ("sub/b.txt", "b3\n")]);
    let (printed, moved) = build_and_run(&sb, &env);
    assert_eq!(
        printed,
        "one\nb1\nb3\nthree\nref: refs/heads/main\nb1\n. .. a.txt sub "
    );
    // Both sources of `main` and their copies run, and the copy of the last ADD (its stage
    // below changed); the tag's and the commit's sources are hits.
    assert_eq!(count(&moved, "started", "ADD"), 5, "{}", stderr(&moved));
    assert_eq!(count(&moved, "cached", &format!("{url}#v1 ")), 2);
    assert_eq!(count(&moved, "cached", &format!("{url}#{first_commit}")), 1);
}

// Verifies: a ref the repository does not have fails the build (exit 1) naming the repository
// and the ref.
#[test]
fn add_git_of_a_missing_ref_fails_clearly() {
    let Some(env) = Env::get() else { return };
    let repo = GitServer::start();
    let url = repo.url();
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("{}\nADD {url}#no-such-branch /src\n", from(&env)),
    );
    let out = build(&sb, &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "repository `{url}` has no branch or tag `no-such-branch`"
        )),
        "{line}"
    );
}

// Verifies: an ssh git source (`git.mountsshsock`) gives git's ssh exactly the agent `--ssh`
// forwards, never the user's own `$SSH_AUTH_SOCK` unasked (as BuildKit forwards only what
// `--ssh` names), and a failure without `--ssh` says how to forward one. A stand-in `ssh`
// (GIT_SSH_COMMAND) records the socket it was given, then fails like an unreachable host.
#[test]
fn ssh_git_sources_use_the_agent_ssh_forwards() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("{}\nADD git@127.0.0.1:team/app.git /src\n", from(&env)),
    );
    let seen = sb.path("seen");
    let fake = sb.path("fake-ssh");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"${{SSH_AUTH_SOCK-unset}}\" >> {}\necho 'ssh: connect to host 127.0.0.1: refused' >&2\nexit 255\n",
            seen.display()
        ),
    )
    .expect("write fake ssh");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let agent = sb.path("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).expect("agent socket");
    let run = |extra: &[&str]| {
        sb.build_with_env(
            &env,
            extra,
            &[
                ("GIT_SSH_COMMAND", fake.as_os_str()),
                ("SSH_AUTH_SOCK", "/users/own/agent.sock".as_ref()),
            ],
        )
    };
    let with = run(&["--ssh", &format!("default={}", agent.display())]);
    assert!(!with.status.success());
    let lines = std::fs::read_to_string(&seen).expect("ssh was run");
    assert!(
        !lines.is_empty() && lines.lines().all(|l| l == agent.to_string_lossy()),
        "{lines}"
    );
    assert!(stderr(&with).contains("Dockerfile:2"), "{}", stderr(&with));

    std::fs::remove_file(&seen).expect("rm");
    let without = run(&[]);
    assert!(!without.status.success());
    let lines = std::fs::read_to_string(&seen).expect("ssh was run");
    assert!(
        lines.lines().all(str::is_empty),
        "no agent unasked: {lines:?}"
    );
    assert!(
        error_line(&without).contains("pass `--ssh default`"),
        "{}",
        stderr(&without)
    );
}

/// `memobuild build` of a git context (the URL as the context argument).
fn build_git_context(sb: &Sandbox, env: &Env, context: &str) -> Output {
    let mut cmd = common::memobuild();
    cmd.args(["build", "--containerd", &env.containerd, "--state-dir"])
        .arg(sb.state())
        .args(["--progress", "json", "-t", "sources:test", "--output"])
        .arg(format!("type=oci,dest={}", sb.path("out.tar").display()))
        .arg(context);
    common::run(cmd)
}

// Verifies: a git URL is a build context, as with buildx: `#REF:SUBDIR` picks the ref and the
// directory (whose Dockerfile is used); the repository's `.git` is not in the context; a
// rebuild with nothing moved executes nothing; moving the branch reruns the COPY that reads
// the changed file; a Dockerfile that links out of the repository is not read from this
// machine; a ref the repository lacks fails naming the context and the ref.
#[test]
fn git_repositories_are_build_contexts() {
    let Some(env) = Env::get() else { return };
    let repo = GitServer::start();
    repo.move_main(&[
        (
            "sub/Dockerfile",
            &format!(
                "{}\nCOPY . /ctx\nCMD cat /ctx/b.txt; ls -a /ctx | tr '\\n' ' '\n",
                from(&env)
            ),
        ),
        (
            "Dockerfile",
            &format!(
                "{}\nCOPY . /ctx\nCMD ls -a /ctx | tr '\\n' ' '\n",
                from(&env)
            ),
        ),
    ]);
    let sb = Sandbox::new();
    let sub = format!("{}#main:sub", repo.url());

    let first = build_git_context(&sb, &env, &sub);
    assert_ok(&first, "build of a git context");
    let run = sb.ctr_run(&env, &sb.path("out.tar"), IMAGE);
    assert_ok(&run, "ctr run");
    assert_eq!(stdout(&run), "b2\n. .. Dockerfile b.txt ");

    let again = build_git_context(&sb, &env, &sub);
    assert_ok(&again, "rebuild");
    assert_eq!(count(&again, "started", "COPY"), 0, "{}", stderr(&again));

    repo.move_main(&[("sub/b.txt", "b3\n")]);
    let moved = build_git_context(&sb, &env, &sub);
    assert_ok(&moved, "build after the branch moved");
    assert_eq!(count(&moved, "started", "COPY"), 1, "{}", stderr(&moved));
    let run = sb.ctr_run(&env, &sb.path("out.tar"), IMAGE);
    assert_eq!(stdout(&run), "b3\n. .. Dockerfile b.txt ");

    // The whole repository: no `.git` in the image.
    let root = build_git_context(&sb, &env, &format!("{}#main", repo.url()));
    assert_ok(&root, "build of the repository root");
    let run = sb.ctr_run(&env, &sb.path("out.tar"), IMAGE);
    assert_eq!(stdout(&run), ". .. Dockerfile a.txt sub ");

    // A repository's Dockerfile that links out of it is not read from this machine.
    let secret = sb.path("secret.txt");
    std::fs::write(&secret, "TOPSECRET\n").expect("write");
    std::fs::create_dir_all(repo.work().join("evil")).expect("mkdir");
    std::os::unix::fs::symlink(&secret, repo.work().join("evil/Dockerfile")).expect("symlink");
    repo.move_main(&[("evil/keep.txt", "x\n")]);
    let evil = build_git_context(&sb, &env, &format!("{}#main:evil", repo.url()));
    assert!(!evil.status.success());
    assert!(!stderr(&evil).contains("TOPSECRET"), "{}", stderr(&evil));
    assert!(
        error_line(&evil).contains("Dockerfile"),
        "{}",
        stderr(&evil)
    );

    let missing = build_git_context(&sb, &env, &format!("{}#no-such-branch", repo.url()));
    assert!(!missing.status.success());
    let err = error_line(&missing);
    assert!(
        err.contains(&repo.url()) && err.contains("no-such-branch"),
        "{err}"
    );
}
