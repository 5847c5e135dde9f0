//! End to end: a Dockerfile with FROM + ENV + WORKDIR + RUN + COPY + CMD is built by
//! `memobuild build` on the real containerd from hack/services.sh, exported as an OCI archive,
//! inspected with skopeo, imported into containerd with ctr, and run; and the errors a user meets
//! first (broken Dockerfile, unreachable registry, missing context file, failing RUN) come out as
//! one line that names the problem.

mod common;

use common::{Env, Sandbox, assert_ok, error_line, progress_events, stderr};

const SKELETON: &str = r#"# The walking skeleton.
ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
ENV GREETING="hello from memobuild"
WORKDIR /app
RUN echo "built by RUN as uid $(id -u)" > run.txt && mkdir -p data
COPY message.txt ./
COPY --chown=1000:1000 --chmod=0640 message.txt /owned.txt
CMD ["/bin/sh", "-c", "echo $GREETING; cat /app/run.txt /app/message.txt; pwd; stat -c '%u:%g %a' /owned.txt"]
"#;

fn skeleton(env: &Env) -> (Sandbox, std::process::Output) {
    let sb = Sandbox::new();
    sb.write("Dockerfile", SKELETON)
        .write("message.txt", "message from the context\n")
        .write("unused.txt", "not copied\n");
    let dest = sb.path("out.tar");
    let out = sb.build(
        env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--progress",
            "json",
            "-t",
            "skeleton:test",
            "--output",
            &format!("type=oci,dest={}", dest.display()),
        ],
    );
    (sb, out)
}

#[test]
fn skeleton_image_runs_under_ctr_with_the_expected_output() {
    let Some(env) = Env::get() else { return };
    let (sb, out) = skeleton(&env);
    assert_ok(&out, "memobuild build");
    let archive = sb.path("out.tar");

    // skopeo reads the archive and sees the config the Dockerfile asked for.
    let cfg = common::run({
        let mut c = std::process::Command::new("skopeo");
        c.args([
            "inspect",
            "--config",
            &format!("oci-archive:{}", archive.display()),
        ]);
        c
    });
    assert_ok(&cfg, "skopeo inspect --config");
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).expect("config json");
    let env_list: Vec<String> = serde_json::from_value(cfg["config"]["Env"].clone()).expect("Env");
    assert!(
        env_list.contains(&"GREETING=hello from memobuild".to_string()),
        "{env_list:?}"
    );
    assert!(
        env_list.iter().any(|e| e.starts_with("PATH=")),
        "{env_list:?}"
    );
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
    let diff_ids = cfg["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .len();
    let non_empty = cfg["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .count();
    assert_eq!(diff_ids, non_empty, "every layer has its history entry");

    // containerd imports and runs it.
    let run = sb.ctr_run(&env, &archive, "docker.io/library/skeleton:test");
    assert_ok(&run, "ctr run");
    assert_eq!(
        common::stdout(&run),
        "hello from memobuild\nbuilt by RUN as uid 0\nmessage from the context\n/app\n1000:1000 640\n"
    );
}

#[test]
fn json_progress_reports_every_vertex() {
    let Some(env) = Env::get() else { return };
    let (_sb, out) = skeleton(&env);
    assert_ok(&out, "memobuild build");
    let events = progress_events(&out);
    let with_state = |state: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["state"] == state)
            .map(|e| e["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let started = with_state("started");
    let completed = with_state("completed");
    assert!(
        started.iter().any(|n| n.contains("RUN echo")),
        "{started:?}"
    );
    assert_eq!(
        started.len(),
        completed.len(),
        "every started vertex completes: {events:?}"
    );
    // Vertices carry their LLB digest; steps (exports) an id of the same shape.
    for e in events.iter().filter(|e| e["state"] == "completed") {
        assert!(
            e.get("vertex")
                .or_else(|| e.get("step"))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .starts_with("sha256:"),
            "{e}"
        );
        assert!(e["duration_ms"].is_u64(), "{e}");
    }
    // The RUN's output is not in the logs (it writes to a file) but the COPY is a vertex too.
    assert!(
        completed.iter().any(|n| n.contains("COPY message.txt")),
        "{completed:?}"
    );
}

fn failing_build(dockerfile: &str, env: &Env) -> (std::process::Output, String) {
    let sb = Sandbox::new();
    sb.write("Dockerfile", dockerfile)
        .write("present.txt", "here\n");
    let out = sb.build(
        env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--progress",
            "plain",
        ],
    );
    assert!(
        !out.status.success(),
        "build should fail:\n{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));
    let all = stderr(&out);
    assert!(!all.contains("panicked"), "{all}");
    let line = error_line(&out);
    assert!(line.starts_with("error: "), "last line is the error: {all}");
    (out, line)
}

#[test]
fn broken_dockerfile_names_file_and_line() {
    let Some(env) = Env::get() else { return };
    let (_, line) = failing_build(
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nFORM x\n",
        &env,
    );
    assert!(line.contains("Dockerfile:3"), "{line}");
    assert!(
        line.to_lowercase().contains("unknown instruction"),
        "{line}"
    );
}

#[test]
fn unreachable_registry_names_the_registry() {
    let Some(env) = Env::get() else { return };
    // Port 1 on loopback: nothing listens there.
    let (_, line) = failing_build("FROM 127.0.0.1:1/library/busybox:latest\nRUN true\n", &env);
    assert!(line.contains("127.0.0.1:1"), "{line}");
}

#[test]
fn missing_context_file_names_the_file_and_line() {
    let Some(env) = Env::get() else { return };
    let (_, line) = failing_build(
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY present.txt /\nCOPY missing.txt /\n",
        &env,
    );
    assert!(line.contains("missing.txt"), "{line}");
    assert!(line.contains("Dockerfile:4"), "{line}");
}

#[test]
fn failing_run_reports_line_exit_code_and_output() {
    let Some(env) = Env::get() else { return };
    let (out, line) = failing_build(
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo about to fail && exit 3\n",
        &env,
    );
    assert!(line.contains("Dockerfile:3"), "{line}");
    assert!(line.contains("exit code: 3"), "{line}");
    assert!(stderr(&out).contains("about to fail"), "{}", stderr(&out));
}

#[test]
fn bad_build_arg_is_rejected_before_building() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", "FROM scratch\n");
    let out = sb.build(&env, &["--build-arg", "=oops"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains("--build-arg"), "{}", stderr(&out));
}

#[test]
fn stages_the_target_does_not_need_never_run() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\n\
         FROM ${REGISTRY}/library/busybox:latest AS broken\n\
         RUN echo this stage would fail && exit 1\n\
         FROM ${REGISTRY}/library/busybox:latest AS base\n\
         RUN echo base > /base\n\
         FROM base AS final\n\
         RUN cat /base > /final\n",
    );
    let out = sb.build(
        &env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--progress",
            "json",
        ],
    );
    assert_ok(&out, "memobuild build");
    let names: Vec<String> = progress_events(&out)
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect();
    assert!(!names.iter().any(|n| n.contains("would fail")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("/final")), "{names:?}");

    // Targeting the broken stage does run it, and fails.
    let out = sb.build(
        &env,
        &[
            "--build-arg",
            &format!("REGISTRY={}", env.registry),
            "--target",
            "broken",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("exit code: 1"),
        "{}",
        stderr(&out)
    );
}
