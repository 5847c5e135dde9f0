//! The build context: incremental transfer, stdin tarballs and git URLs, sessions that carry it.

use super::*;

// Verifies: the first build through the daemon transfers only the context files the COPYs
// read; a second build of an unchanged context transfers only the listing and runs nothing (every step
// cached, same image); after one file is edited exactly that file's bytes are transferred, and
// only the COPY reading it and the RUN after it run.
#[test]
fn the_context_is_transferred_incrementally_and_only_what_changed_runs() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", TWO_COPIES)
        .write("a.txt", "a1\n")
        .write("b.txt", "b1\n")
        .write("big.bin", &"x".repeat(200_000));
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let reg = registry_arg(&env);
    let args = ["--build-arg", &reg, "--progress", "json", "--output", &oci];
    let build = || {
        let started = Instant::now();
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "memobuild build --addr");
        // Every vertex that started completed (none is left hanging in the client's view).
        let started_ids: BTreeSet<String> = progress_events(&out)
            .iter()
            .filter(|e| e["state"] == "started")
            .filter_map(|e| e["vertex"].as_str().map(str::to_string))
            .collect();
        let completed_ids: BTreeSet<String> = progress_events(&out)
            .iter()
            .filter(|e| e["state"] == "completed")
            .filter_map(|e| e["vertex"].as_str().map(str::to_string))
            .collect();
        assert_eq!(started_ids, completed_ids, "{}", stderr(&out));
        (out, started.elapsed())
    };

    let (first, _) = build();
    assert_eq!(
        steps_in_state(&first, "started").len(),
        5,
        "{:?}",
        steps_in_state(&first, "started")
    );
    // Only the files the COPYs read are transferred (the frontend asks for those paths, as
    // BuildKit's does): not big.bin, not the Dockerfile again. The figure is what fsutil
    // counts: every packet's bytes, listings and requests included.
    let first_bytes = context_bytes(&first);
    assert!((6..2_000).contains(&first_bytes), "{first_bytes} bytes");

    // The daemon ends the Status stream when the build is done: the client does not wait for
    // its 5 s of silence.
    let (second, took) = build();
    assert!(
        took < Duration::from_secs(5),
        "a cached build took {took:?}"
    );
    assert!(
        steps_in_state(&second, "started").is_empty(),
        "{:?}",
        steps_in_state(&second, "started")
    );
    assert_eq!(
        steps_in_state(&second, "cached").len(),
        5,
        "{:?}",
        steps_in_state(&second, "cached")
    );
    // Nothing changed: the listing goes over again, no file's content does.
    let listing_bytes = context_bytes(&second);
    assert!(listing_bytes < first_bytes, "{listing_bytes} bytes");
    assert_eq!(stdout(&second), stdout(&first));

    let edited = "b2, longer than before\n";
    sb.write("b.txt", edited);
    let (third, _) = build();
    // The edited file's bytes go over, with a packet's framing, and nothing else.
    let edit_bytes = context_bytes(&third) - listing_bytes;
    assert!(
        (edited.len() as u64..edited.len() as u64 + 64).contains(&edit_bytes),
        "{edit_bytes} bytes more than the listing"
    );
    let ran = steps_in_state(&third, "started");
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(
        ran.iter()
            .all(|n| n.contains("COPY b.txt") || n.contains("/b-copy")),
        "{ran:?}"
    );
    assert!(
        steps_in_state(&third, "cached")
            .iter()
            .any(|n| n.contains("COPY a.txt")),
        "{:?}",
        steps_in_state(&third, "cached")
    );
    assert_ne!(stdout(&third), stdout(&first));
}

// Verifies: contexts buildx sends other than a directory: a tar archive on standard input
// (pulled by the daemon through the session's Upload service; members' owners kept, `-f` a
// path inside), a Dockerfile alone on standard input, and a git URL the daemon fetches itself
// (`#ref:subdir`, `.git` left out); a rebuild of the same git context runs nothing.
#[test]
fn contexts_from_stdin_and_git_urls() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    let remote = |args: &[&str], stdin: Option<Vec<u8>>| -> Output {
        let mut cmd = common::daemon::remote_command_with_context(&daemon, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("memobuild build --addr");
        if let Some(data) = stdin {
            let mut input = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = input.write_all(&data);
            });
        }
        child.wait_with_output().expect("wait")
    };

    // A tar archive on stdin is the context.
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_cksum();
        archive.append_data(&mut h, path, data).expect("append");
    };
    add(
        "build/Dockerfile.ctx",
        format!("FROM {}\nCOPY . /ctx/\n", env.busybox()).as_bytes(),
        0,
    );
    add("data/owned.txt", b"from the archive\n", 1000);
    let archive = archive.into_inner().expect("tar");
    let out_tar = sb.path("from-tar.tar");
    let tar_arg = format!("type=tar,dest={}", out_tar.display());
    let out = remote(
        &["-f", "build/Dockerfile.ctx", "--output", &tar_arg, "-"],
        Some(archive),
    );
    assert_ok(&out, "a tar context on stdin");
    let entries = tar_entries(&out_tar);
    let (_, uid, _, data) = &entries["ctx/data/owned.txt"];
    assert_eq!(data, b"from the archive\n");
    assert_eq!(
        *uid, 1000,
        "the archive's owner is kept, as BuildKit keeps it"
    );

    // A Dockerfile alone on stdin, with an empty context.
    let out_df = sb.path("from-dockerfile");
    let df_arg = format!("type=local,dest={}", out_df.display());
    let out = remote(
        &["--output", &df_arg, "-"],
        Some(format!("FROM {}\nRUN echo alone > /alone\n", env.busybox()).into_bytes()),
    );
    assert_ok(&out, "a Dockerfile on stdin");
    assert_eq!(
        std::fs::read_to_string(out_df.join("alone")).expect("alone"),
        "alone\n"
    );

    // A git URL, fetched by the daemon.
    let repo = common::git::GitServer::start();
    common::git::commit(
        &repo.work(),
        &[(
            "sub/Dockerfile",
            &format!(
                "FROM {}\nCOPY . /src/\nRUN ls -a /src > /listing\n",
                env.busybox()
            ),
        )],
        "dockerfile",
    );
    common::git::git(&repo.work(), &["push", "-q", "../srv/repo.git", "main"]);
    let url = format!("{}#main:sub", repo.url());
    let out_git = sb.path("from-git");
    let git_arg = format!("type=local,dest={}", out_git.display());
    let args = ["--progress", "json", "--output", &git_arg, &url];
    let first = remote(&args, None);
    assert_ok(&first, "a git context");
    assert_eq!(
        std::fs::read_to_string(out_git.join("src/b.txt")).expect("b.txt"),
        "b2\n"
    );
    let listing = std::fs::read_to_string(out_git.join("listing")).expect("listing");
    assert!(!listing.contains(".git"), "{listing}");
    let again = remote(&args, None);
    assert_ok(&again, "the git context again");
    assert!(
        steps_in_state(&again, "started").is_empty(),
        "{:?}",
        steps_in_state(&again, "started")
    );
}

// Verifies: the daemon starts its HTTP/2 connection inside a session only when it first calls
// into the session, as grpc-go's idle channels do. A client that opens a session and closes it
// again at once (buildx does, before its build's session) reads no byte back and sees the
// stream end promptly: BuildKit's `conn.Close` hands every message it drains to its HTTP/2
// server as a whole buffer of stale bytes, which failed the connection with PROTOCOL_ERROR
// and cost buildx a one-second GOAWAY wait in about one build in thirty.
#[test]
fn a_session_closed_unused_gets_no_bytes_from_the_daemon() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        for _ in 0..20 {
            // The client's own first bytes (its server preface), then its half-close.
            let preface: Vec<u8> = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
            let outgoing = futures::stream::iter(vec![memobuild_proto::control::BytesMessage {
                data: preface,
            }]);
            let mut request = tonic::Request::new(outgoing);
            request.metadata_mut().insert(
                "x-docker-expose-session-uuid",
                unique("unused").parse().expect("metadata value"),
            );
            let mut incoming = control
                .session(request)
                .await
                .expect("Control/Session")
                .into_inner();
            let drained = tokio::time::timeout(Duration::from_secs(10), async {
                let mut bytes = 0;
                while let Some(m) = incoming.message().await.expect("session stream") {
                    bytes += m.data.len();
                }
                bytes
            })
            .await
            .expect("the session stream ends after the client's half-close");
            assert_eq!(drained, 0, "bytes the daemon sent into an unused session");
        }
    });
}

// Verifies: a client may stream many small messages into its session faster than the daemon
// uses them (buildx sends one per file of a big context while the daemon compares): the daemon
// takes them off the connection instead of leaving them in HTTP/2's buffers, where h2 counts
// them as a flood of small DATA frames and closes the whole connection (GOAWAY
// ENHANCE_YOUR_CALM "too_many_data_frames", failing the build's Solve and Status with it).
#[test]
fn a_session_fed_many_small_messages_keeps_its_connection() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        // One message per item, each sent as its own DATA frame: the stream pauses between
        // items, so the client's encoder cannot join them. The daemon never calls into this
        // session, so nothing reads the tunnel's bytes as HTTP/2.
        let outgoing = futures::stream::unfold(0u32, |i| async move {
            if i == 20_000 {
                return None;
            }
            tokio::task::yield_now().await;
            Some((
                memobuild_proto::control::BytesMessage { data: vec![7; 100] },
                i + 1,
            ))
        });
        let mut request = tonic::Request::new(outgoing);
        request.metadata_mut().insert(
            "x-docker-expose-session-uuid",
            unique("small").parse().expect("metadata value"),
        );
        let mut incoming = control
            .session(request)
            .await
            .expect("Control/Session")
            .into_inner();
        let ended = tokio::time::timeout(Duration::from_secs(60), incoming.message())
            .await
            .expect("the session stream ends after the client's half-close");
        assert!(ended.is_ok(), "the session failed: {ended:?}");
        // The connection it shared is still up.
        control
            .list_workers(memobuild_proto::control::ListWorkersRequest::default())
            .await
            .expect("ListWorkers on the same connection after the session");
    });
}
