//! Cancellation, concurrency, disk usage and prune, and shutdown.

use super::*;

/// A Dockerfile whose RUN prints `ready-2` (its name shows `ready-$((1+1))`) and then sleeps.
fn sleeper(env: &Env) -> String {
    format!(
        "FROM {}\nRUN echo ready-$((1+1)) {} && sleep 30\n",
        env.busybox(),
        unique("sleep")
    )
}

/// A client building [`sleeper`] through `daemon`, returned once its RUN runs, with the
/// file its progress goes to.
fn sleeping_client(sb: &Sandbox, daemon: &Daemon) -> (std::process::Child, std::path::PathBuf) {
    let log = sb.path("client.log");
    let client = sb
        .remote_command(daemon, &["--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("client.log"))
        .spawn()
        .expect("start client");
    wait_for_line(&log, " ready-2", Duration::from_secs(60), daemon);
    (client, log)
}

// Verifies: when the client of a build vanishes (SIGKILL) while a `RUN sleep 30` runs, the
// daemon cancels the build: within seconds no task, container or lease is left in its
// containerd namespace; and it serves the next build.
#[test]
fn a_vanished_client_cancels_its_build() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", &sleeper(&env));
    let ns = unique("vanish");
    let daemon = Daemon::start(&sb, &env, &["--namespace", &ns]);
    let (mut client, _) = sleeping_client(&sb, &daemon);
    assert!(
        daemon
            .containerd_leftovers()
            .iter()
            .any(|l| l.starts_with("tasks ") || l.starts_with("runc ")),
        "the RUN's container should be running: {:?}",
        daemon.containerd_leftovers()
    );
    client.kill().expect("kill client");
    client.wait().expect("reap client");
    let mut left = Vec::new();
    let clean = eventually(Duration::from_secs(5), || {
        left = daemon.containerd_leftovers();
        left.is_empty()
    });
    assert!(clean, "left in containerd after 5 s: {left:?}");

    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo next > /next\n", env.busybox()),
    );
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let out = sb.build_remote(&daemon, &["--progress", "plain", "--output", &local]);
    assert_ok(&out, "the next build");
    assert_eq!(
        std::fs::read_to_string(sb.path("fs/next")).expect("next"),
        "next\n"
    );
}

// Verifies: two clients building different contexts on one daemon at the same time both
// succeed, each getting its own result; the builds really overlap (both RUNs are running at
// once).
#[test]
fn two_clients_build_at_once() {
    let Some(env) = Env::get() else { return };
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let daemon = Daemon::start(&a, &env, &[]);
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        sb.write(
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY id.txt /id.txt\nRUN echo running-$(cat /id.txt) && sleep 5 && cp /id.txt /out.txt\n",
                env.busybox()
            ),
        )
        .write("id.txt", &format!("{name}-{}", unique("ctx")));
    }
    let mut clients = Vec::new();
    for (i, sb) in [&a, &b].into_iter().enumerate() {
        let log = sb.path("client.log");
        let local = format!("type=local,dest={}", sb.path("fs").display());
        let child = sb
            .remote_command(&daemon, &["--progress", "plain", "--output", &local])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("client.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        clients.push((child, log));
    }
    // Both RUNs run at once: when both have started, neither has finished.
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        wait_for_line(
            &sb.path("client.log"),
            &format!(" running-{name}"),
            Duration::from_secs(60),
            &daemon,
        );
    }
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        let text = std::fs::read_to_string(sb.path("client.log")).expect("client.log");
        let number = text
            .lines()
            .find(|l| l.contains(&format!(" running-{name}")))
            .and_then(|l| l.split_whitespace().next())
            .expect("the RUN's vertex number")
            .to_string();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{number} DONE"))),
            "{name}'s RUN finished before the other's started: the builds did not overlap\n{text}"
        );
    }
    for ((sb, other), (mut child, log)) in [(&a, "beta"), (&b, "alpha")].into_iter().zip(clients) {
        let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("client ends");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "client failed:\n{text}");
        assert!(
            !text.contains(&format!("running-{other}")),
            "the other build's progress reached this client:\n{text}"
        );
        let id = std::fs::read_to_string(sb.context().join("id.txt")).expect("id");
        assert_eq!(
            std::fs::read_to_string(sb.path("fs/out.txt")).expect("out.txt"),
            id
        );
    }
}

// Verifies: Control/DiskUsage lists records after a build; Control/Prune{all} streams the
// records it removed, after which DiskUsage lists none; a build after the prune works and
// really runs its RUN again (its cache is gone).
#[test]
fn disk_usage_and_prune_over_grpc() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {} > /x\n",
            env.busybox(),
            unique("prune")
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let build = || {
        let out = sb.build_remote(&daemon, &["--progress", "json", "--output", &oci]);
        assert_ok(&out, "memobuild build --addr");
        out
    };
    let runs = |out: &Output| {
        steps_in_state(out, "started")
            .iter()
            .filter(|n| n.contains("RUN echo"))
            .count()
    };
    let first = build();
    assert_eq!(runs(&first), 1, "{:?}", steps_in_state(&first, "started"));
    let (usage, pruned, after) = block_on(async {
        let mut control = daemon.control().await;
        let usage = control
            .disk_usage(DiskUsageRequest::default())
            .await
            .expect("DiskUsage")
            .into_inner()
            .record;
        let mut stream = control
            .prune(PruneRequest {
                all: true,
                ..Default::default()
            })
            .await
            .expect("Prune")
            .into_inner();
        let mut pruned = Vec::new();
        while let Some(r) = stream.message().await.expect("Prune stream") {
            pruned.push(r);
        }
        let after = control
            .disk_usage(DiskUsageRequest::default())
            .await
            .expect("DiskUsage")
            .into_inner()
            .record;
        (usage, pruned, after)
    });
    assert!(!usage.is_empty(), "no records after a build");
    assert!(usage.iter().map(|r| r.size).sum::<i64>() > 0, "{usage:?}");
    assert!(!pruned.is_empty(), "Prune removed nothing");
    assert!(
        after.is_empty(),
        "records left after Prune{{all}}: {after:?}"
    );

    let again = build();
    assert_eq!(
        runs(&again),
        1,
        "the RUN runs again after the prune: {:?}",
        steps_in_state(&again, "started")
    );
    assert_eq!(stdout(&again), stdout(&first), "same image");
}

// Verifies: SIGTERM while a build runs stops the daemon within 10 s; the client fails with
// an error instead of hanging; no task, container or lease of the build is left in containerd
// and the socket file is gone.
#[test]
fn sigterm_stops_the_daemon_and_cleans_up() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", &sleeper(&env));
    let ns = unique("sigterm");
    let mut daemon = Daemon::start(&sb, &env, &["--namespace", &ns]);
    let (mut client, log) = sleeping_client(&sb, &daemon);
    assert!(
        !daemon.containerd_leftovers().is_empty(),
        "the build should be using containerd"
    );

    let started = Instant::now();
    let status = daemon.terminate(Duration::from_secs(10));
    let Some(status) = status else {
        panic!(
            "the daemon did not exit within 10 s of SIGTERM:\n{}",
            daemon.log()
        );
    };
    assert!(
        status.success(),
        "the daemon's exit: {status}\n{}",
        daemon.log()
    );
    let client_status = wait_timeout(&mut client, Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(client_status) = client_status else {
        let _ = client.kill();
        panic!(
            "the client hangs {:?} after the daemon stopped:\n{text}",
            started.elapsed()
        );
    };
    assert!(!client_status.success(), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    let left = daemon.containerd_leftovers();
    assert!(left.is_empty(), "left in containerd: {left:?}");
    assert!(!daemon.socket().exists(), "the socket file is left");
}
