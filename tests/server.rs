//! `memobuild server` and `memobuild cache du|prune`, end to end: the real binary, the server on
//! a free loopback port, spoken to with raw HTTP/1.1 (so that paths reach it byte for byte, `..`
//! included). No containerd or registry needed.

// A failed unwrap is a failed test, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

mod common;
use common::http::{Resp, request};

const BIN: &str = env!("CARGO_BIN_EXE_memobuild");

/// The protocol tests write without a token, which a server only allows when told to.
const OPEN: &str = "--insecure-open-writes";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A running `memobuild server`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` over `store` and reads the bound address it prints.
    fn start(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = store.with_extension("log");
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(args)
            .env_remove("MEMOBUILD_SERVER_TOKEN")
            .env("MEMOBUILD_LOG", "memobuild=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start memobuild server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first line {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            addr: addr.to_string(),
            child,
            log,
        }
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(&self.addr, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], b"")
    }

    fn put(&self, path: &str, body: &[u8]) -> Resp {
        self.req("PUT", path, &[], body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn object_path(store: &Path, kind: &str, hex: &str) -> PathBuf {
    store.join(kind).join(&hex[..2]).join(hex)
}

#[test]
fn ac_and_cas_round_trip() {
    // PUT, GET and HEAD on both namespaces, misses are 404, objects land in the sharded layout.
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let server = Server::start(&store, &[OPEN], &[]);

    assert_eq!(server.get("/healthz").status, 200);

    let key = "ab".repeat(32);
    let record = br#"{"key":"...","layers":[]}"#;
    assert_eq!(server.get(&format!("/ac/{key}")).status, 404);
    assert_eq!(server.put(&format!("/ac/{key}"), record).status, 200);
    let got = server.get(&format!("/ac/{key}"));
    assert_eq!((got.status, got.body.as_slice()), (200, &record[..]));
    let head = server.req("HEAD", &format!("/ac/{key}"), &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(&*record.len().to_string())
    );
    assert!(head.body.is_empty());
    assert!(object_path(&store, "ac", &key).is_file());

    // A blob bigger than any buffer on the way.
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hex = sha256_hex(&blob);
    assert_eq!(
        server.req("HEAD", &format!("/cas/{hex}"), &[], b"").status,
        404
    );
    assert_eq!(server.put(&format!("/cas/{hex}"), &blob).status, 200);
    let got = server.get(&format!("/cas/{hex}"));
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), blob.len());
    assert!(got.body == blob, "blob differs after the round trip");
    let head = server.req("HEAD", &format!("/cas/{hex}"), &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(&*blob.len().to_string())
    );
    assert_eq!(
        std::fs::read(object_path(&store, "cas", &hex)).unwrap(),
        blob
    );

    // Uploading the same blob again is fine; records are replaced.
    assert_eq!(server.put(&format!("/cas/{hex}"), &blob).status, 200);
    assert_eq!(server.put(&format!("/ac/{key}"), b"v2").status, 200);
    assert_eq!(server.get(&format!("/ac/{key}")).body, b"v2");

    assert_eq!(server.get(&format!("/cas/{}", "0".repeat(64))).status, 404);
    assert_eq!(server.get("/nothing-here").status, 404);
}

#[test]
fn cas_refuses_content_that_does_not_match_its_digest() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let server = Server::start(&store, &[OPEN], &[]);
    let claimed = sha256_hex(b"the real content");
    let r = server.put(&format!("/cas/{claimed}"), b"something else");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("sha256"));
    assert_eq!(server.get(&format!("/cas/{claimed}")).status, 404);
    assert!(!object_path(&store, "cas", &claimed).exists());
    // Nor is anything left behind in the upload area.
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    // The right content under the same name is taken.
    assert_eq!(
        server
            .put(&format!("/cas/{claimed}"), b"the real content")
            .status,
        200
    );
}

#[test]
fn writes_need_the_token_and_reads_only_with_token_reads() {
    let d = tempfile::tempdir().unwrap();
    let server = Server::start(&d.path().join("a"), &["--token", "s3cret"], &[]);
    let key = format!("/ac/{}", "cd".repeat(32));
    let r = server.put(&key, b"x");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let wrong = [("Authorization", "Bearer s3cre")];
    assert_eq!(server.req("PUT", &key, &wrong, b"x").status, 401);
    let basic = [("Authorization", "Basic czNjcmV0")];
    assert_eq!(server.req("PUT", &key, &basic, b"x").status, 401);
    assert_eq!(server.get(&key).status, 404, "nothing was stored");
    let right = [("Authorization", "Bearer s3cret")];
    assert_eq!(server.req("PUT", &key, &right, b"x").status, 200);
    // Reads are open.
    assert_eq!(server.get(&key).body, b"x");

    // The token from the environment, and reads closed too.
    let strict = Server::start(
        &d.path().join("b"),
        &["--token-reads"],
        &[("MEMOBUILD_SERVER_TOKEN", "s3cret")],
    );
    assert_eq!(strict.put(&key, b"y").status, 401);
    assert_eq!(strict.req("PUT", &key, &right, b"y").status, 200);
    assert_eq!(strict.get(&key).status, 401);
    assert_eq!(strict.req("HEAD", &key, &[], b"").status, 401);
    assert_eq!(strict.req("GET", &key, &right, b"").body, b"y");
    // Health checks need no token.
    assert_eq!(strict.get("/healthz").status, 200);
}

#[test]
fn bad_names_and_path_traversal_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let server = Server::start(&store, &[OPEN], &[]);
    let hex = "ef".repeat(32);
    for path in [
        "/cas/../../etc/passwd".to_string(),
        "/ac/../../etc/passwd".to_string(),
        "/cas/..".to_string(),
        "/cas/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        "/ac/not-hex".to_string(),
        format!("/ac/{}", hex.to_uppercase()),
        format!("/cas/{}", &hex[..63]),
        format!("/cas/{hex}0"),
        format!("/cas/{hex}/x"),
        "/ac/".to_string(),
        "/../store/ac".to_string(),
    ] {
        assert_eq!(server.get(&path).status, 400, "GET {path}");
        assert_eq!(server.put(&path, b"x").status, 400, "PUT {path}");
    }
    // Nothing was written anywhere under the store but its empty layout (and the build
    // records' database, made at start).
    let files: Vec<PathBuf> = walk(&store)
        .into_iter()
        .filter(|f| !f.starts_with(store.join("builds")))
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_collection_evicts_the_least_recently_read() {
    // --max-size 1000 with 300-byte blobs: the fourth upload takes the store to 1200, and the
    // collector evicts down to 900, i.e. the one object that was neither read nor written last.
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let blobs: Vec<Vec<u8>> = (0..4u8).map(|n| vec![n; 300]).collect();
    let path = |b: &Vec<u8>| format!("/cas/{}", sha256_hex(b));
    {
        let server = Server::start(&store, &[OPEN, "--max-size", "1000"], &[]);
        for b in &blobs[..3] {
            assert_eq!(server.put(&path(b), b).status, 200);
            std::thread::sleep(Duration::from_millis(30));
        }
        // Read the oldest: it is now the most recently used.
        assert_eq!(server.get(&path(&blobs[0])).status, 200);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(server.put(&path(&blobs[3]), &blobs[3]).status, 200);
        // Watch the disk, not the server: a GET would count as a use.
        let evicted = object_path(&store, "cas", &sha256_hex(&blobs[1]));
        wait_until("blob 1 evicted", || !evicted.exists());
        assert_eq!(server.get(&path(&blobs[1])).status, 404);
        for b in [&blobs[0], &blobs[2], &blobs[3]] {
            assert_eq!(server.get(&path(b)).status, 200, "{} kept", path(b));
            std::thread::sleep(Duration::from_millis(30));
        }
        // Reads just now, in this order: 0, 2, 3.
    }
    // A restart rebuilds the use order from the files and enforces a smaller bound at once:
    // 900 bytes → at most 540, so only the most recently read blob stays.
    let server = Server::start(&store, &[OPEN, "--max-size", "600"], &[]);
    for (n, b) in blobs.iter().enumerate() {
        let present = object_path(&store, "cas", &sha256_hex(b)).exists();
        assert_eq!(present, n == 3, "blob {n} after the restart");
    }
    assert_eq!(server.get(&path(&blobs[3])).status, 200);
}

#[test]
fn uploads_larger_than_the_store_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let server = Server::start(&d.path().join("store"), &[OPEN, "--max-size", "1KB"], &[]);
    let big = vec![1u8; 5000];
    assert_eq!(
        server
            .put(&format!("/cas/{}", sha256_hex(&big)), &big)
            .status,
        413
    );
}

// Verifies: a server started without a token refuses every write (PUT /ac, PUT /cas, POST
// /api/builds) with 403 and a message saying how to configure one, even to a client that sends
// some bearer token, while reads stay open; the old open behaviour needs
// `--insecure-open-writes`, and the server warns about it when it starts.
#[test]
fn writes_need_a_token_unless_open_writes_are_asked_for() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("a");
    let server = Server::start(&store, &[], &[]);
    let key = format!("/ac/{}", "cd".repeat(32));
    let blob = b"a blob";
    let cas = format!("/cas/{}", sha256_hex(blob));
    for (path, body) in [(&key, &b"x"[..]), (&cas, &blob[..])] {
        let r = server.put(path, body);
        assert_eq!(r.status, 403, "PUT {path}: {}", r.text());
        assert!(r.text().contains("--token"), "{}", r.text());
        assert!(r.text().contains("--insecure-open-writes"), "{}", r.text());
        let bearer = [("Authorization", "Bearer guess")];
        assert_eq!(server.req("PUT", path, &bearer, body).status, 403);
        assert_eq!(server.get(path).status, 404, "nothing stored, reads open");
    }
    let record =
        r#"{"id":"b-1","started_at":"2026-11-24T10:00:00Z","duration_ms":1,"status":"succeeded"}"#;
    let len = record.len().to_string();
    let r = server.req(
        "POST",
        "/api/builds",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
        ],
        record.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(server.get("/api/builds/b-1").status, 404);
    assert_eq!(server.get("/healthz").status, 200);
    let objects: Vec<_> = walk(&store)
        .into_iter()
        .filter(|p| p.starts_with(store.join("ac")) || p.starts_with(store.join("cas")))
        .collect();
    assert!(objects.is_empty(), "{objects:?}");

    let open = Server::start(&d.path().join("b"), &[OPEN], &[]);
    assert_eq!(open.put(&key, b"x").status, 200);
    assert_eq!(open.put(&cas, blob).status, 200);
    let log = std::fs::read_to_string(&open.log).unwrap();
    assert!(log.contains("anyone who can reach"), "{log}");
}

/// Flips one byte in the middle of a file, keeping its size.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

// Verifies: the server checks a blob's sha256 before serving it (GET or HEAD) for the first time
// since it was written or the server started, so a blob damaged on disk is a miss (404) rather
// than served or claimed, it is removed, and a client's upload of the right bytes replaces it;
// damage done while the server was down is caught after the restart.
#[test]
fn a_corrupt_blob_is_not_served_and_a_good_upload_replaces_it() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let path = format!("/cas/{}", sha256_hex(&blob));
    let file = object_path(&store, "cas", &sha256_hex(&blob));
    {
        let server = Server::start(&store, &[OPEN], &[]);
        assert_eq!(server.put(&path, &blob).status, 200);
        assert_eq!(server.get(&path).body, blob);
        // What the server remembers as verified includes the file's mtime; let the clock move
        // past the upload's last write so the damage gets a time of its own.
        std::thread::sleep(Duration::from_millis(50));
        flip_a_byte(&file);
        assert_eq!(server.req("HEAD", &path, &[], b"").status, 404, "HEAD");
        assert_eq!(server.get(&path).status, 404, "GET");
        assert!(!file.exists(), "the damaged blob is removed");
        let log = std::fs::read_to_string(&server.log).unwrap();
        assert!(log.contains("does not match its name"), "{log}");

        assert_eq!(server.put(&path, &blob).status, 200, "replacement taken");
        assert_eq!(server.req("HEAD", &path, &[], b"").status, 200);
        assert_eq!(server.get(&path).body, blob);
    }
    // Damaged while the server was down.
    flip_a_byte(&file);
    let server = Server::start(&store, &[OPEN], &[]);
    assert_eq!(server.req("HEAD", &path, &[], b"").status, 404);
    assert_eq!(server.get(&path).status, 404);
    // An intact blob is served after a restart (checked once, on its first read).
    assert_eq!(server.put(&path, &blob).status, 200);
    drop(server);
    let server = Server::start(&store, &[OPEN], &[]);
    assert_eq!(server.req("HEAD", &path, &[], b"").status, 200);
    assert_eq!(server.get(&path).body, blob);
}

/// Reads from `s` until the peer closes it or `limit` passes; returns what came and when the
/// connection ended (`None`: still open at `limit`).
fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    use std::io::Read;
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, None);
            }
            // Reset by the server: closed.
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
}

// Verifies: a connection that sends part of a request head and then nothing is closed once
// `--header-read-timeout` has passed, instead of holding a descriptor for good.
#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let server = Server::start(
        &d.path().join("store"),
        &["--header-read-timeout", "1s"],
        &[],
    );
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    let closed = closed.expect("connection still open after 10 s");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
}

// Verifies: an upload that declares 2 MB, sends 100 bytes and stalls is answered 408 and closed
// once `--body-idle-timeout` passes without a byte, and its temporary file is removed.
#[test]
fn a_stalled_upload_is_cut_off_and_leaves_no_temporary_file() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let server = Server::start(&store, &[OPEN, "--body-idle-timeout", "1s"], &[]);
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    let hex = sha256_hex(b"never sent whole");
    write!(
        s,
        "PUT /cas/{hex} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 100]).unwrap();
    wait_until("the upload's temporary file", || {
        std::fs::read_dir(store.join("tmp")).unwrap().count() == 1
    });
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    let closed = closed.expect("stalled upload still open after 10 s");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    wait_until("the temporary file removed", || {
        std::fs::read_dir(store.join("tmp")).unwrap().count() == 0
    });
    assert!(!object_path(&store, "cas", &hex).exists());
}

// Verifies: `--max-body-size` refuses an upload that declares more with 413 before reading any
// of it, and cuts off one that sends more without declaring it (chunked).
#[test]
fn uploads_over_max_body_size_are_refused_before_they_are_read() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let server = Server::start(&store, &[OPEN, "--max-body-size", "1KB"], &[]);
    let hex = sha256_hex(b"x");
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "PUT /cas/{hex} HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\n"
    )
    .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "PUT /cas/{hex} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n"
    )
    .unwrap();
    s.write_all(&[1u8; 2000]).unwrap();
    s.write_all(b"\r\n").unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Under the bound is fine.
    assert_eq!(server.put(&format!("/cas/{hex}"), b"x").status, 200);
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

// Verifies: with `--max-connections 32`, 300 connections that never finish their headers hold at
// most 32 of the server's descriptors, and `/healthz` still answers at once: an idle connection
// (no request running) is closed to make room for a new one.
#[test]
fn idle_connections_over_the_limit_make_room_so_healthz_answers() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let server = Server::start(
        &d.path().join("store"),
        &["--max-connections", "32", "--header-read-timeout", "60s"],
        &[],
    );
    assert_eq!(server.get("/healthz").status, 200);
    let before = open_fds(server.child.id());
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let during = open_fds(server.child.id());
    assert!(
        during <= before + 32 + 2,
        "{during} descriptors open (before: {before})"
    );
    let start = Instant::now();
    assert_eq!(server.get("/healthz").status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

// ---- memobuild cache du | prune ----

fn cache(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("cache")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("MEMOBUILD_STATE_DIR")
        .output()
        .expect("run memobuild cache")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A state directory as `memobuild build` leaves it, with chosen last-use times.
struct State {
    dir: tempfile::TempDir,
}

impl State {
    fn new() -> State {
        State {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A blob (and its verification stamp) last used `age` ago; returns its hex digest.
    fn blob(&self, content: &[u8], age: Duration) -> String {
        let hex = sha256_hex(content);
        let dir = self.path().join("blobs/sha256");
        std::fs::create_dir_all(dir.join(".verified")).unwrap();
        std::fs::write(dir.join(&hex), content).unwrap();
        std::fs::write(dir.join(".verified").join(&hex), "1 2 3 4").unwrap();
        set_age(&dir.join(&hex), age);
        set_age(&dir.join(".verified").join(&hex), age);
        hex
    }

    /// An action record naming `layers`, last used `age` ago; returns its key.
    fn record(&self, n: u8, layers: &[&str], age: Duration) -> String {
        let key = hex::encode([n; 32]);
        let layers: Vec<_> = layers
            .iter()
            .map(|h| {
                serde_json::json!({
                    "digest": format!("sha256:{h}"),
                    "diff_id": format!("sha256:{h}"),
                    "size": 1000,
                    "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"
                })
            })
            .collect();
        let rec = serde_json::json!({
            "key": key, "layers": layers, "name": "[1/2] RUN x", "duration_ms": 5,
            "components": {"op": "x"}
        });
        let dir = self.path().join("cache/ac").join(&key[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{key}.json"));
        std::fs::write(&file, serde_json::to_vec(&rec).unwrap()).unwrap();
        set_age(&file, age);
        key
    }

    fn has_blob(&self, hex: &str) -> bool {
        self.path().join("blobs/sha256").join(hex).exists()
    }

    fn has_stamp(&self, hex: &str) -> bool {
        self.path()
            .join("blobs/sha256/.verified")
            .join(hex)
            .exists()
    }

    fn has_record(&self, key: &str) -> bool {
        self.path()
            .join("cache/ac")
            .join(&key[..2])
            .join(format!("{key}.json"))
            .exists()
    }

    fn size_of(&self, rel: &[PathBuf]) -> u64 {
        rel.iter()
            .map(|p| std::fs::metadata(self.path().join(p)).unwrap().len())
            .sum()
    }
}

fn set_age(path: &Path, age: Duration) {
    let t = filetime::FileTime::from_system_time(SystemTime::now() - age);
    filetime::set_file_times(path, t, t).unwrap();
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Two records sharing blob `s`: the old one also names `a`, the new one `b`; `c` (old) and `d`
/// (new) are named by nobody. `s` itself was last touched long ago.
struct Fixture {
    st: State,
    r_old: String,
    r_new: String,
    a: String,
    b: String,
    s: String,
    c: String,
    d: String,
}

fn fixture() -> Fixture {
    let st = State::new();
    let a = st.blob(&[b'a'; 1000], 3 * DAY);
    let b = st.blob(&[b'b'; 1000], HOUR);
    let s = st.blob(&[b's'; 1000], 10 * DAY);
    let c = st.blob(&[b'c'; 1000], 2 * DAY);
    let d = st.blob(&[b'd'; 1000], HOUR / 6);
    let r_old = st.record(1, &[&a, &s], 3 * DAY);
    let r_new = st.record(2, &[&b, &s], HOUR);
    Fixture {
        st,
        r_old,
        r_new,
        a,
        b,
        s,
        c,
        d,
    }
}

impl Fixture {
    /// Only the entries an LRU prune should keep are left: the new record and its blobs, and
    /// the recent unnamed blob.
    fn assert_pruned_to_recent(&self) {
        let st = &self.st;
        assert!(!st.has_record(&self.r_old));
        assert!(st.has_record(&self.r_new));
        for gone in [&self.a, &self.c] {
            assert!(!st.has_blob(gone) && !st.has_stamp(gone), "{gone} removed");
        }
        for kept in [&self.b, &self.s, &self.d] {
            assert!(st.has_blob(kept) && st.has_stamp(kept), "{kept} kept");
        }
    }
}

fn du_line<'a>(out: &'a str, label: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn du_reports_blobs_and_records() {
    let f = fixture();
    let out = ok(&cache(f.st.path(), &["du"]));
    assert_eq!(du_line(&out, "blobs:")[1..3], ["5", "files,"], "{out}");
    assert_eq!(du_line(&out, "records:")[1..3], ["2", "files,"], "{out}");
    assert!(du_line(&out, "blobs:").contains(&"KiB"), "{out}");
    assert!(out.contains("containerd snapshots"), "{out}");
}

#[test]
fn prune_by_age_keeps_blobs_of_kept_records() {
    let f = fixture();
    let out = ok(&cache(f.st.path(), &["prune", "--keep-duration", "1d"]));
    f.assert_pruned_to_recent();
    assert!(
        out.contains(&format!("removed record {}", f.r_old)),
        "{out}"
    );
    assert!(
        out.contains(&format!("removed blob sha256:{}", f.a)),
        "{out}"
    );
    assert!(!out.contains(&f.s), "{out}");
}

#[test]
fn prune_by_size_removes_least_recently_used_first() {
    let f = fixture();
    let st = &f.st;
    let blob = |h: &str| PathBuf::from("blobs/sha256").join(h);
    let stamp = |h: &str| PathBuf::from("blobs/sha256/.verified").join(h);
    let record = |k: &str| {
        PathBuf::from("cache/ac")
            .join(&k[..2])
            .join(format!("{k}.json"))
    };
    // Exactly what should stay.
    let keep = st.size_of(&[
        record(&f.r_new),
        blob(&f.b),
        stamp(&f.b),
        blob(&f.s),
        stamp(&f.s),
        blob(&f.d),
        stamp(&f.d),
    ]);

    // A dry run removes nothing.
    let out = ok(&cache(
        st.path(),
        &["prune", "--keep-size", &keep.to_string(), "--dry-run"],
    ));
    assert!(out.contains("would remove record"), "{out}");
    assert!(st.has_record(&f.r_old) && st.has_blob(&f.a));

    ok(&cache(
        st.path(),
        &["prune", "--keep-size", &keep.to_string()],
    ));
    f.assert_pruned_to_recent();
    // Already under the bound: nothing more goes.
    let out = ok(&cache(st.path(), &["prune", "--keep-size", "1MiB"]));
    assert!(out.contains("removed 0 records and 0 blobs"), "{out}");
}

#[test]
fn prune_all_empties_the_cache() {
    let f = fixture();
    ok(&cache(f.st.path(), &["prune", "--all"]));
    for h in [&f.a, &f.b, &f.s, &f.c, &f.d] {
        assert!(!f.st.has_blob(h) && !f.st.has_stamp(h));
    }
    assert!(!f.st.has_record(&f.r_old) && !f.st.has_record(&f.r_new));
    let out = ok(&cache(f.st.path(), &["du"]));
    assert_eq!(du_line(&out, "blobs:")[1], "0", "{out}");
    assert_eq!(du_line(&out, "records:")[1], "0", "{out}");
}

#[test]
fn prune_needs_a_bound() {
    let f = fixture();
    let out = cache(f.st.path(), &["prune"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-size"));
    let out = cache(f.st.path(), &["prune", "--all", "--keep-size", "1GB"]);
    assert!(!out.status.success(), "--all conflicts with a bound");
    assert!(f.st.has_record(&f.r_old));
}
