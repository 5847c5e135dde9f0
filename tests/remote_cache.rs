//! The team cache: two state directories (two machines) sharing one real `memobuild server`.
//! The second builds with zero executed vertices and the same image; a damaged blob on the
//! server is detected, rebuilt and replaced; a server without a token takes no uploads; an
//! unreachable server is a warning, not a failed build.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use common::nginx::Nginx;
use common::server::Server;
use common::{Env, Sandbox, assert_ok, progress_events, stderr};
use sha2::{Digest as _, Sha256};

const DOCKERFILE: &str = "ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
COPY app.txt /app/app.txt
RUN wc -c /app/app.txt > /app/size
WORKDIR /app
CMD [\"cat\", \"/app/size\"]
";

fn build(sb: &Sandbox, env: &Env, url: &str, token: &str) -> Output {
    let out = sb.build(
        env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--progress",
            "json",
            "--remote-cache",
            url,
            "--remote-cache-token",
            token,
            "-t",
            "remote:test",
            "--output",
            &format!("type=oci,dest={}", sb.path("out.tar").display()),
        ],
    );
    assert_ok(&out, "memobuild build");
    out
}

fn executed(out: &Output) -> BTreeSet<String> {
    progress_events(out)
        .iter()
        // Vertices of the definition only: exports are steps, not vertices.
        .filter(|e| e["state"] == "started" && e.get("vertex").is_some())
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .filter(|n| !n.starts_with("[internal]"))
        .collect()
}

fn digest(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn machine(context_from: &Sandbox) -> Sandbox {
    let sb = Sandbox::new();
    for f in ["Dockerfile", "app.txt"] {
        let data = std::fs::read_to_string(context_from.context().join(f)).expect("read");
        sb.write(f, &data);
    }
    sb
}

#[test]
fn a_second_machine_builds_nothing_and_gets_the_same_image() {
    let Some(env) = Env::get() else { return };
    let store = tempfile::tempdir().expect("store");
    let server = Server::start(store.path(), &["--token", "s3cret"]);

    let first = Sandbox::new();
    first
        .write("Dockerfile", DOCKERFILE)
        .write("app.txt", "hello team\n");
    let a = build(&first, &env, &server.url, "s3cret");
    assert_eq!(executed(&a).len(), 4, "{:?}", executed(&a));

    // A fresh state dir: everything comes from the server.
    let second = machine(&first);
    let b = build(&second, &env, &server.url, "s3cret");
    assert!(
        executed(&b).is_empty(),
        "ran: {:?}\n{}",
        executed(&b),
        stderr(&b)
    );
    assert_eq!(digest(&b), digest(&a));
    let run = second.ctr_run(
        &env,
        &second.path("out.tar"),
        "docker.io/library/remote:test",
    );
    assert_ok(&run, "ctr run");
    assert_eq!(common::stdout(&run), "11 /app/app.txt\n");
}

// Verifies: blobs damaged on the server are not served (the server checks them and answers a
// miss), the steps are rebuilt to the same image, and the cache heals: the rebuilding machine's
// uploads replace the damaged blobs (HEAD no longer claims them), so every blob on the server
// matches its name again and the next fresh machine builds nothing. Before, every later fresh
// build met the same damaged blobs and rebuilt again.
#[test]
fn a_damaged_blob_on_the_server_is_detected_rebuilt_and_replaced() {
    let Some(env) = Env::get() else { return };
    let store = tempfile::tempdir().expect("store");
    let server = Server::start(store.path(), &["--token", "t"]);
    let first = Sandbox::new();
    first
        .write("Dockerfile", DOCKERFILE)
        .write("app.txt", "x\n");
    let a = build(&first, &env, &server.url, "t");

    // Flip the last byte of every blob the server holds.
    let mut flipped = 0;
    for entry in cas_objects(store.path()) {
        let mut bytes = std::fs::read(&entry).expect("read");
        if let Some(last) = bytes.last_mut() {
            *last ^= 0xff;
            std::fs::write(&entry, bytes).expect("write");
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the server stored blobs under cas/");

    let second = machine(&first);
    let b = build(&second, &env, &server.url, "t");
    assert!(!executed(&b).is_empty(), "rebuilt locally");
    assert_eq!(digest(&b), digest(&a), "rebuilt to the same image");

    let objects = cas_objects(store.path());
    assert!(!objects.is_empty());
    for p in objects {
        let bytes = std::fs::read(&p).expect("read");
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            name,
            "{} healed",
            p.display()
        );
    }
    let third = machine(&first);
    let c = build(&third, &env, &server.url, "t");
    assert!(
        executed(&c).is_empty(),
        "ran: {:?}\n{}",
        executed(&c),
        stderr(&c)
    );
    assert_eq!(digest(&c), digest(&a));
}

/// The files under the server store's `cas/`.
fn cas_objects(store: &Path) -> Vec<std::path::PathBuf> {
    walk(store)
        .into_iter()
        .filter(|p| p.starts_with(store.join("cas")))
        .collect()
}

// Verifies: a server started without a token takes no writes, so a build against it still
// succeeds, stores nothing there, and its warning carries the server's reason (how to configure a
// token) rather than a bare status. Before, such a server took any client's uploads.
#[test]
fn a_server_without_a_token_refuses_uploads_and_says_why() {
    let Some(env) = Env::get() else { return };
    let store = tempfile::tempdir().expect("store");
    let server = Server::start(store.path(), &[]);
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE)
        .write("app.txt", "no token\n");
    let out = build(&sb, &env, &server.url, "a-guess");
    let err = stderr(&out);
    assert!(err.contains("warning: remote cache"), "{err}");
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("--insecure-open-writes"), "{err}");
    assert!(cas_objects(store.path()).is_empty(), "nothing stored");
}

#[test]
fn a_record_edited_on_the_server_is_refused_and_replaced() {
    // Issue 12, item 1 (the server's side): one hex digit of the RUN step's newest layer diff ID
    // changed in the server's `/ac` object (same length, the JSON still valid). A fresh machine
    // must not build an image from it: a warning names the remote cache and the step, the step
    // runs again, and the image is the first machine's. Its upload replaces the bad record, so
    // the next fresh machine builds nothing and hears nothing. Before the fix the second
    // machine came out CACHED with an image whose config named the edited diff ID.
    let Some(env) = Env::get() else { return };
    let store = tempfile::tempdir().expect("store");
    let server = Server::start(store.path(), &["--token", "t"]);
    let first = Sandbox::new();
    first
        .write("Dockerfile", DOCKERFILE)
        .write("app.txt", "edited\n");
    let a = build(&first, &env, &server.url, "t");

    let mut edited = 0;
    for path in walk(store.path()) {
        if !path.components().any(|c| c.as_os_str() == "ac") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if !record["name"]
            .as_str()
            .is_some_and(|n| n.contains("RUN wc"))
        {
            continue;
        }
        let diff_id = record["layers"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|l| l["diff_id"].as_str())
            .expect("a layer")
            .to_string();
        let (head, last) = diff_id.split_at(diff_id.len() - 1);
        let wrong = format!("{head}{}", if last == "0" { "1" } else { "0" });
        std::fs::write(&path, text.replace(&diff_id, &wrong)).expect("write");
        edited += 1;
    }
    assert_eq!(edited, 1, "the RUN step's record on the server");

    let second = machine(&first);
    let b = build(&second, &env, &server.url, "t");
    let text = stderr(&b);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("does not match its blobs"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(&format!("remote cache {}", server.url))
            && warnings[0].contains("RUN wc"),
        "{text}"
    );
    assert!(
        executed(&b).iter().any(|n| n.contains("RUN wc")),
        "ran: {:?}",
        executed(&b)
    );
    assert_eq!(digest(&b), digest(&a), "the first machine's image");

    let third = machine(&first);
    let c = build(&third, &env, &server.url, "t");
    assert!(executed(&c).is_empty(), "ran: {:?}", executed(&c));
    assert!(
        !stderr(&c).contains("does not match its blobs"),
        "{}",
        stderr(&c)
    );
    assert_eq!(digest(&c), digest(&a));
}

#[test]
fn an_unreachable_server_is_only_a_warning() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE).write("app.txt", "x\n");
    let out = build(&sb, &env, "http://127.0.0.1:1", "t");
    assert!(
        stderr(&out).contains("warning: remote cache"),
        "{}",
        stderr(&out)
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// Verifies (issue 16): any Bazel HTTP cache serves as L3, here Debian's nginx with WebDAV `PUT`
// and nothing of MemoBuild's: the first machine stores its records and layers there (`ac/`,
// `cas/`), a fresh state directory then builds with no step executed and the same image, and
// neither build warns (nginx keeps no build reports, which is not worth a warning).
#[test]
fn an_nginx_webdav_store_is_a_team_cache() {
    let Some(env) = Env::get() else { return };
    let nginx = Nginx::start();
    let first = Sandbox::new();
    first
        .write("Dockerfile", DOCKERFILE)
        .write("app.txt", "hello nginx\n");
    let a = build(&first, &env, &nginx.url, "");
    assert_eq!(executed(&a).len(), 4, "{:?}", executed(&a));
    assert_quiet(&a);
    let stored = walk(&nginx.root());
    let under = |d: &str| {
        stored
            .iter()
            .filter(|p| p.starts_with(nginx.root().join(d)))
            .count()
    };
    assert!(under("ac") >= 3, "records stored in nginx: {stored:?}");
    assert!(under("cas") >= 2, "layers stored in nginx: {stored:?}");

    let second = machine(&first);
    let b = build(&second, &env, &nginx.url, "");
    assert!(
        executed(&b).is_empty(),
        "ran: {:?}\n{}",
        executed(&b),
        stderr(&b)
    );
    assert_quiet(&b);
    assert_eq!(digest(&b), digest(&a));
}

/// No warning about the remote cache or the build report (the Dockerfile's lint warning about
/// `FROM ${REGISTRY}` is expected).
fn assert_quiet(out: &Output) {
    let err = stderr(out);
    for w in ["warning: remote cache", "build report"] {
        assert!(!err.contains(w), "{err}");
    }
}
