//! Errors reach the client clearly; malformed requests leave the daemon serving.

use super::*;

// Verifies: a Dockerfile syntax error comes back as one line naming `Dockerfile:LINE`; a
// failing RUN shows the step's last output lines (the tail, not all of it) above an error
// naming the line and the exit code. Both errors carry BuildKit's source detail, which the
// client (as buildx) prints as the Dockerfile's lines with the failing one marked.
#[test]
fn dockerfile_and_step_errors_reach_the_client() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN true\nFORM x\n", env.busybox()),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let out = sb.build_remote(&daemon, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.starts_with("error: "), "{}", stderr(&out));
    assert!(line.contains("Dockerfile:3"), "{line}");
    assert!(
        line.to_lowercase().contains("unknown instruction"),
        "{line}"
    );
    assert!(
        stderr(&out).contains("Dockerfile:3\n--------------------\n")
            && stderr(&out).contains("   3 | >>> FORM x\n"),
        "{}",
        stderr(&out)
    );

    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN for i in $(seq 1 15); do echo output-line-$i; done; exit 7\n",
            env.busybox()
        ),
    );
    let out = sb.build_remote(&daemon, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("Dockerfile:2"), "{line}");
    assert!(line.contains("exit code: 7"), "{line}");
    assert!(
        stderr(&out).contains("   2 | >>> RUN for i in"),
        "{}",
        stderr(&out)
    );
    // The failure block above the error: the step's name, then its last lines.
    let text = stderr(&out);
    let block: Vec<&str> = text
        .split("------\n")
        .find(|b| b.starts_with(" > ") && b.contains("RUN for i"))
        .unwrap_or_else(|| panic!("no failure block:\n{text}"))
        .lines()
        .collect();
    assert!(
        block.last().is_some_and(|l| l.ends_with("output-line-15")),
        "{block:?}"
    );
    assert!(
        !block.iter().any(|l| l.ends_with("output-line-1")),
        "the whole output instead of its tail: {block:?}"
    );
}

// Verifies: host networking and privileged steps run only when the client asks for the
// entitlement and the daemon grants it, in the daemon's own Dockerfile frontend too (a step
// with `--network=host` never reaches the host's loopback unasked); asking for an entitlement
// the daemon does not grant fails the request up front, as buildkitd does.
#[test]
fn entitlements_are_asked_for_and_granted() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN --network=host true\n", env.busybox()),
    );
    let strict = Daemon::start(&sb, &env, &[]);
    let out = sb.build_remote(&strict, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("entitlement `network.host`"), "{line}");
    let out = sb.build_remote(&strict, &["--progress", "plain", "--allow", "network.host"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("granting entitlement network.host is not allowed"),
        "{line}"
    );
    drop(strict);

    let granting = Daemon::start(&sb, &env, &["--allow-insecure-entitlement", "network.host"]);
    let out = sb.build_remote(&granting, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--allow network.host"),
        "{}",
        stderr(&out)
    );
    let out = sb.build_remote(
        &granting,
        &["--progress", "plain", "--allow", "network.host"],
    );
    assert_ok(&out, "a granted entitlement");
}

/// A definition whose terminal names an op the definition does not hold.
fn dangling_definition() -> pb::Definition {
    DefinitionBuilder::new().finish(pb::Input::new(format!("sha256:{}", "0".repeat(64)), 0))
}

// Verifies: requests the CLI cannot make are refused with InvalidArgument naming what is
// wrong, and the daemon goes on serving: an unknown frontend in Control/Solve and in
// LLBBridge/Solve (whose error, returned, fails the waiting Control/Solve); a Definition of
// garbage bytes and one whose terminal names a missing op; an unknown exporter type. A build
// through the CLI then succeeds.
#[test]
fn malformed_requests_are_refused_and_the_daemon_keeps_serving() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo still serving > /ok\n", env.busybox()),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        let invalid = |what: &str, r: Result<tonic::Response<_>, tonic::Status>, needle: &str| {
            let status: tonic::Status = match r {
                Ok(_) => panic!("{what}: accepted"),
                Err(s) => s,
            };
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{what}: {:?}",
                status.message()
            );
        };

        // Unknown frontend, Control level.
        let r = control
            .solve(ControlSolve {
                frontend: "nope.v0".into(),
                ..control_solve(&common::unique("frontend"))
            })
            .await;
        invalid("Control/Solve frontend nope.v0", r, "nope.v0");

        // Unknown frontend, LLBBridge level, inside a gateway-mode build.
        let build_ref = common::unique("gateway");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        let pong = gateway
            .ping(tagged(PingRequest {}, &build_ref))
            .await
            .expect("ping")
            .into_inner();
        assert!(pong.frontend_api_caps.iter().any(|c| c.id == "return"));
        let r = gateway
            .solve(tagged(
                GatewaySolve {
                    frontend: "nope.v0".into(),
                    allow_result_return: true,
                    ..Default::default()
                },
                &build_ref,
            ))
            .await;
        let status = r.expect_err("LLBBridge/Solve nope.v0 accepted");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("nope.v0"), "{status:?}");
        gateway
            .r#return(tagged(
                ReturnRequest {
                    result: None,
                    error: Some(memobuild_proto::rpc::Status {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        details: Vec::new(),
                    }),
                },
                &build_ref,
            ))
            .await
            .expect("return");
        let solved = tokio::time::timeout(Duration::from_secs(30), solve)
            .await
            .expect("the Control/Solve ends after Return")
            .expect("task");
        invalid(
            "gateway-mode Control/Solve after Return{error}",
            solved,
            "nope.v0",
        );

        // Malformed definitions.
        let r = control
            .solve(ControlSolve {
                definition: Some(pb::Definition {
                    def: vec![b"\xff\xffnot an op".to_vec()],
                    ..Default::default()
                }),
                ..control_solve(&common::unique("garbage"))
            })
            .await;
        invalid("garbage definition", r, "definition");
        let r = control
            .solve(ControlSolve {
                definition: Some(dangling_definition()),
                ..control_solve(&common::unique("dangling"))
            })
            .await;
        invalid("dangling terminal", r, "definition");

        // Unknown exporter.
        let r = control
            .solve(ControlSolve {
                exporters: vec![Exporter {
                    r#type: "nope".into(),
                    attrs: BTreeMap::new(),
                }],
                definition: Some(dangling_definition()),
                ..control_solve(&common::unique("exporter"))
            })
            .await;
        invalid("unknown exporter", r, "nope");
    });

    let local = format!("type=local,dest={}", sb.path("fs").display());
    let out = sb.build_remote(&daemon, &["--progress", "plain", "--output", &local]);
    assert_ok(&out, "a build after the malformed requests");
    assert_eq!(
        std::fs::read_to_string(sb.path("fs/ok")).expect("ok"),
        "still serving\n"
    );
}
