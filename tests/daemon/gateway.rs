//! The gateway (LLBBridge) flows: raw LLB, frontend inputs, MemoBuild's frontend as a gateway client, `# syntax=` images.

use super::*;

/// Returns `reference` as the result of the gateway build `build_ref`, then waits for the
/// Control/Solve that started it (`solve`) to succeed.
async fn return_and_finish<T>(
    gateway: &mut memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient<
        tonic::transport::Channel,
    >,
    reference: Ref,
    build_ref: &str,
    solve: tokio::task::JoinHandle<Result<T, tonic::Status>>,
) {
    gateway
        .r#return(tagged(
            ReturnRequest {
                result: Some(memobuild_proto::gateway::Result {
                    result: Some(result::Result::Ref(reference)),
                    ..Default::default()
                }),
                error: None,
            },
            build_ref,
        ))
        .await
        .expect("return");
    tokio::time::timeout(Duration::from_secs(30), solve)
        .await
        .expect("the Control/Solve ends after Return")
        .expect("task")
        .expect("the Control/Solve succeeds");
}

// Verifies: the raw-LLB flow of buildctl (`buildctl build < def.pb`, §2.B) on a definition
// `memobuild lower` wrote: a session-less gateway-mode Control/Solve, LLBBridge/Solve with the
// Definition, ReadFile of what its RUN wrote from the returned reference, and Return, after
// which the Control/Solve succeeds; and the old clients' path, a Control/Solve carrying the
// Definition, which runs it (a failing RUN fails it with its exit code).
#[test]
fn raw_llb_from_memobuild_lower_solves_over_the_gateway_and_control() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let marker = unique("raw");
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker} > /raw.txt\n", env.busybox()),
    );
    let def = lower(&sb);
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker} && exit 3\n", env.busybox()),
    );
    let failing = lower(&sb);
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let control = daemon.control().await;
        let build_ref = unique("llb");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        gateway
            .ping(tagged(PingRequest {}, &build_ref))
            .await
            .expect("ping");
        let solved = gateway
            .solve(tagged(
                GatewaySolve {
                    definition: Some(def.clone()),
                    allow_result_return: true,
                    ..Default::default()
                },
                &build_ref,
            ))
            .await
            .expect("LLBBridge/Solve of the definition")
            .into_inner();
        let reference = match solved.result.and_then(|r| r.result) {
            Some(result::Result::Ref(r)) => r,
            other => panic!("no reference: {other:?}"),
        };
        assert!(!reference.id.is_empty());
        let data = gateway
            .read_file(tagged(
                ReadFileRequest {
                    r#ref: reference.id.clone(),
                    file_path: "/raw.txt".into(),
                    ..Default::default()
                },
                &build_ref,
            ))
            .await
            .expect("ReadFile")
            .into_inner()
            .data;
        assert_eq!(String::from_utf8_lossy(&data), format!("{marker}\n"));
        let reference = Ref {
            id: reference.id,
            def: None,
        };
        return_and_finish(&mut gateway, reference, &build_ref, solve).await;

        // The old path: the Definition in Control/Solve.
        let mut control = control.clone();
        control
            .solve(ControlSolve {
                definition: Some(def),
                ..control_solve(&unique("legacy"))
            })
            .await
            .expect("Control/Solve of the definition");
        let status = control
            .solve(ControlSolve {
                definition: Some(failing),
                ..control_solve(&unique("legacy-fail"))
            })
            .await
            .expect_err("a failing RUN fails the solve");
        assert!(status.message().contains("exit code: 3"), "{status:?}");
    });
}

/// `memobuild lower` of `dockerfile` (a Dockerfile that reads no context).
fn lower_text(dockerfile: &str) -> pb::Definition {
    let sb = Sandbox::new();
    sb.write("Dockerfile", dockerfile);
    lower(&sb)
}

// Verifies: buildx's frontend inputs (bake's `target:` contexts, remote bake definitions) work
// over LLBBridge: a `context:base=input:base` stage is the client's definition of `base`, with
// the env and working directory of its `input-metadata:base` config (not of the Dockerfile it
// came from); the `dockerfile` and `context` inputs stand for the Dockerfile's directory and
// the main context, so the build needs no session at all; the result's files and config are
// as a user would check them, and an input the request does not carry is named in the error.
#[test]
fn frontend_inputs_stand_for_targets_the_client_built() {
    use base64::Engine as _;
    let Some(env) = Env::get() else { return };
    let marker = unique("input");
    let base = lower_text(&format!(
        "FROM {}\nENV BASEVAR=from-the-dockerfile\nWORKDIR /srv\nRUN echo {marker} > /srv/marker\n",
        env.busybox()
    ));
    let dockerfile = lower_text(
        "FROM scratch\nCOPY <<'EOF' /Dockerfile\nFROM base\nCOPY ctx.txt /srv/ctx.txt\nRUN echo \"$BASEVAR $(pwd)\" > env.txt\nEOF\n",
    );
    let context = lower_text("FROM scratch\nCOPY <<'EOF' /ctx.txt\nfrom the context input\nEOF\n");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "BASEVAR=from-metadata"],
            "WorkingDir": "/srv"
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let metadata = serde_json::json!({
        "containerimage.config": base64::engine::general_purpose::STANDARD
            .encode(config.to_string()),
    });
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let control = daemon.control().await;
        let build_ref = unique("inputs");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        let request = |opts: &[(&str, String)]| GatewaySolve {
            frontend: "dockerfile.v0".into(),
            frontend_opt: opts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            frontend_inputs: [
                ("base".to_owned(), base.clone()),
                ("dockerfile".to_owned(), dockerfile.clone()),
                ("context".to_owned(), context.clone()),
            ]
            .into(),
            allow_result_return: true,
            ..Default::default()
        };
        let solved = gateway
            .solve(tagged(
                request(&[
                    ("context:base", "input:base".into()),
                    ("input-metadata:base", metadata.to_string()),
                ]),
                &build_ref,
            ))
            .await
            .expect("LLBBridge/Solve with frontend inputs")
            .into_inner()
            .result
            .expect("a result");
        let image: serde_json::Value = serde_json::from_slice(
            solved
                .metadata
                .get("containerimage.config")
                .expect("the image config"),
        )
        .expect("config JSON");
        assert_eq!(image["config"]["WorkingDir"], "/srv", "{image}");
        assert!(
            image["config"]["Env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "BASEVAR=from-metadata")),
            "{image}"
        );
        let reference = match solved.result {
            Some(result::Result::Ref(r)) => r,
            other => panic!("no reference: {other:?}"),
        };
        for (path, want) in [
            ("/srv/marker", format!("{marker}\n")),
            ("/srv/env.txt", "from-metadata /srv\n".to_owned()),
            ("/srv/ctx.txt", "from the context input\n".to_owned()),
        ] {
            let data = gateway
                .read_file(tagged(
                    ReadFileRequest {
                        r#ref: reference.id.clone(),
                        file_path: path.into(),
                        ..Default::default()
                    },
                    &build_ref,
                ))
                .await
                .unwrap_or_else(|e| panic!("ReadFile {path}: {e}"))
                .into_inner()
                .data;
            assert_eq!(String::from_utf8_lossy(&data), want, "{path}");
        }

        let missing = gateway
            .solve(tagged(
                request(&[("context:base", "input:nope".into())]),
                &build_ref,
            ))
            .await
            .expect_err("an input the request lacks");
        assert!(
            missing.message().contains("invalid input `nope`")
                && missing.message().contains("base"),
            "{missing:?}"
        );
        return_and_finish(&mut gateway, reference, &build_ref, solve).await;
    });
}

// Verifies: MemoBuild's frontend run as a gateway client (`--client-frontend`: the Dockerfile
// read through a solved local source and ReadFile, base images through ResolveImageConfig, the
// final definition solved and returned with its config over LLBBridge, as a `# syntax=` image
// runs) builds the same image, byte for byte, as the daemon's own `dockerfile.v0`; progress
// shows the same steps; lint findings arrive through `Warn` with their lines; subrequests
// answer the same; a Dockerfile error names its line.
#[test]
fn the_frontend_as_a_gateway_client_builds_what_the_daemons_frontend_builds() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let marker = unique("gw");
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {} as base\nWORKDIR /app\nCOPY a.txt ./\nRUN echo {marker} > run.txt\nENV MODE prod\nCMD [\"cat\", \"/app/a.txt\"]\n",
            env.busybox()
        ),
    )
    .write("a.txt", "from the context\n")
    .write(".dockerignore", "ignored.txt\n")
    .write("ignored.txt", "never sent\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let daemons = sb.path("daemons.tar");
    let clients = sb.path("clients.tar");
    let built = sb.build_remote(
        &daemon,
        &["--output", &format!("type=oci,dest={}", daemons.display())],
    );
    assert_ok(&built, "build with the daemon's frontend");
    let client = sb.build_remote(
        &daemon,
        &[
            "--client-frontend",
            "--output",
            &format!("type=oci,dest={}", clients.display()),
        ],
    );
    assert_ok(&client, "build with the frontend as a gateway client");
    assert_eq!(oci_manifest_digest(&clients), oci_manifest_digest(&daemons));
    let text = stderr(&client);
    for step in [
        "[internal] load build definition from Dockerfile",
        "[internal] load .dockerignore",
        &format!("[internal] load metadata for {}", env.busybox()),
        "[internal] load build context",
        "[4/4] RUN echo",
    ] {
        assert!(text.contains(step), "`{step}` is shown: {text}");
    }
    // The lint finding (FromAsCasing, LegacyKeyValueFormat) came through `Warn`.
    assert!(
        text.contains("FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"),
        "{text}"
    );
    assert!(text.contains("LegacyKeyValueFormat"), "{text}");

    let outline = |extra: &[&str]| {
        let mut args = vec!["--call=outline"];
        args.extend_from_slice(extra);
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "--call=outline");
        stdout(&out)
    };
    assert_eq!(outline(&["--client-frontend"]), outline(&[]));

    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN true\nCOPY\n", env.busybox()),
    );
    let failed = sb.build_remote(&daemon, &["--client-frontend"]);
    assert_eq!(failed.status.code(), Some(1));
    let text = stderr(&failed);
    assert!(
        text.contains("Dockerfile:3"),
        "the failing line is named: {text}"
    );
}

// Verifies: `# syntax=IMAGE` makes the daemon run that frontend image (`gateway.v0`) as a
// container whose stdin/stdout carry LLBBridge, as buildkitd does; with MemoBuild's own
// frontend image it builds the same image, byte for byte, as the daemon's in-process frontend
// (the syntax line aside, which changes only the Dockerfile text, not the definition);
// `--call=outline` works through it; `# syntax=docker/dockerfile:1` is served in process
// without a pull and says so; an image that is no frontend fails with its output.
#[test]
fn syntax_images_run_as_gateway_frontends() {
    let Some(env) = Env::get() else { return };
    let image = common::daemon::frontend_image(&env);
    let sb = Sandbox::new();
    let marker = unique("syntax");
    let body = format!(
        "FROM {}\nARG GREETING=hello\nWORKDIR /srv\nCOPY a.txt ./\nRUN echo {marker} $GREETING > run.txt\nUSER 1000\nCMD [\"cat\", \"/srv/run.txt\"]\n",
        env.busybox()
    );
    sb.write("a.txt", "context file\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let build = |dockerfile: &str, name: &str, extra: &[&str]| {
        sb.write("Dockerfile", dockerfile);
        let dest = sb.path(name);
        let mut args = vec![
            "--output".to_owned(),
            format!("type=oci,dest={}", dest.display()),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, name);
        (dest, stderr(&out))
    };
    let (plain, _) = build(&body, "plain.tar", &[]);
    let (through_image, progress) = build(
        &format!("# syntax={image}\n{body}"),
        "image.tar",
        &["--build-arg", "GREETING=hi"],
    );
    assert!(
        progress.contains(&format!("resolve image config for docker-image://{image}")),
        "{progress}"
    );
    let (plain_hi, _) = build(&body, "plain-hi.tar", &["--build-arg", "GREETING=hi"]);
    assert_ne!(oci_manifest_digest(&plain), oci_manifest_digest(&plain_hi));
    assert_eq!(
        oci_manifest_digest(&through_image),
        oci_manifest_digest(&plain_hi),
        "the frontend image builds what the daemon's frontend builds"
    );

    sb.write("Dockerfile", &format!("# syntax={image}\n{body}"));
    let outline = sb.build_remote(&daemon, &["--call=outline"]);
    assert_ok(&outline, "--call=outline through the frontend image");
    assert!(
        stdout(&outline).contains("GREETING"),
        "{}",
        stdout(&outline)
    );

    let (official, progress) = build(
        &format!("# syntax=docker/dockerfile:1\n{body}"),
        "official.tar",
        &["--build-arg", "GREETING=hi"],
    );
    assert!(
        progress
            .contains("# syntax=docker/dockerfile:1: served by MemoBuild's Dockerfile frontend"),
        "{progress}"
    );
    assert_eq!(
        oci_manifest_digest(&official),
        oci_manifest_digest(&plain_hi)
    );

    // With `--official-frontend-images` that line runs Docker's image, as buildkitd does
    // (here it cannot be pulled: the error names it).
    let sb2 = Sandbox::new();
    sb2.write("a.txt", "context file\n").write(
        "Dockerfile",
        &format!("# syntax=docker/dockerfile:1\n{body}"),
    );
    let strict = Daemon::start(&sb2, &env, &["--official-frontend-images"]);
    let pulled = sb2.build_remote(&strict, &[]);
    assert_eq!(pulled.status.code(), Some(1), "{}", stderr(&pulled));
    assert!(
        stderr(&pulled).contains("docker.io/docker/dockerfile:1"),
        "{}",
        stderr(&pulled)
    );
    drop(strict);

    sb.write("Dockerfile", &format!("# syntax={}\n{body}", env.busybox()));
    let failed = sb.build_remote(&daemon, &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("without returning a result"),
        "{}",
        stderr(&failed)
    );
}
