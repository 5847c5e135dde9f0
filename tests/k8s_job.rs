//! The Kubernetes Job, run as far as it can run without a cluster (issue 16): MemoBuild's own
//! image is built by MemoBuild from the top-level Dockerfile, on a `debian:bookworm-slim` made
//! from Debian's packages (hack/debian-base.sh) and with the compiled binary standing in for the
//! Rust build stage; then the container `memobuild k8s job` describes (its image, command,
//! arguments, environment, volumes and security context, read from the generated manifest) runs
//! under the real containerd the way a kubelet runs it, twice, each time on an empty state
//! volume, building a git context against a real `memobuild server`. The second run executes
//! no step: it is served by the team cache. Needs the network to deb.debian.org, as the
//! Dockerfile's `apt-get install` does.

// A failed unwrap is a failed test, which is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::git::GitServer;
use common::server::Server;
use common::{Env, Sandbox, assert_ok, run, stderr, stdout};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const TOKEN: &str = "team-cache-token";

/// The build records the server holds for `project`, newest first.
fn builds(server: &Server, project: &str) -> Vec<Value> {
    let out = run({
        let mut c = Command::new("curl");
        c.args([
            "-sf",
            &format!("{}/api/builds?project={project}", server.url),
        ]);
        c
    });
    assert_ok(&out, "GET /api/builds");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["builds"].as_array().cloned().unwrap_or_default()
}

/// Builds MemoBuild's image from the top-level Dockerfile and pushes it as `image`.
///
/// The `rust:1-bookworm` build stage cannot run here (no such image, and a release build in a
/// container takes minutes), so the stage named `build` is replaced, as buildx's
/// `--build-context build=DIR` replaces it, by a directory holding this test's `memobuild` where
/// the stage would leave it. Everything else, the Debian runtime stage with its `apt-get install`,
/// runs as written.
fn build_memobuild_image(env: &Env, sb: &Sandbox, image: &str) {
    let debian = run({
        let mut c = Command::new("bash");
        c.arg(Path::new(REPO).join("hack/debian-base.sh")).arg(
            std::env::var_os("MEMOBUILD_TEST_STATE").expect("MEMOBUILD_TEST_STATE (hack/test.sh)"),
        );
        c
    });
    assert_ok(&debian, "hack/debian-base.sh");

    let stage = sb.path("build-stage");
    std::fs::create_dir_all(stage.join("usr/local/bin")).unwrap();
    // Debug info is most of a test binary's size and none of what the image needs.
    let strip = run({
        let mut c = Command::new("objcopy");
        c.arg("--strip-debug")
            .arg(env!("CARGO_BIN_EXE_memobuild"))
            .arg(stage.join("usr/local/bin/memobuild"));
        c
    });
    assert_ok(&strip, "objcopy --strip-debug");

    let mut cmd = common::memobuild();
    cmd.args([
        "build",
        "--progress",
        "plain",
        "--containerd",
        &env.containerd,
    ])
    .arg("--state-dir")
    .arg(sb.state())
    .arg("--build-context")
    .arg(format!("build={}", stage.display()))
    .arg("--build-context")
    .arg(format!(
        "debian:bookworm-slim=docker-image://{}/library/debian:bookworm-slim",
        env.registry
    ))
    .args(["-t", image, "--push", REPO]);
    let out = run(cmd);
    assert_ok(&out, "memobuild build of MemoBuild's Dockerfile");
}

/// The one container of the Job `memobuild k8s job` prints for these flags, as JSON.
fn job_container(args: &[&str]) -> (Value, Value) {
    let mut cmd = common::memobuild();
    cmd.args(["k8s", "job", "--format", "json"]).args(args);
    let out = run(cmd);
    assert_ok(&out, "memobuild k8s job");
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pod = job["spec"]["template"]["spec"].clone();
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{pod}");
    (pod.clone(), containers[0].clone())
}

/// Runs `container` of `pod` under containerd as a kubelet would: the image pulled, the
/// command and arguments as given, environment values and `secretKeyRef`s resolved from
/// `secrets`, each `emptyDir` volume a fresh directory, `privileged` with the writable
/// cgroup filesystem the CRI gives privileged containers. Services the build reaches are on
/// this machine's loopback, so the container shares the host network (in a cluster they are
/// Services). Returns the container's output.
fn run_like_kubelet(
    env: &Env,
    namespace: &str,
    pod: &Value,
    container: &Value,
    secrets: &HashMap<(&str, &str), &str>,
    volumes_root: &Path,
    name: &str,
) -> std::process::Output {
    let image = container["image"].as_str().unwrap();
    let pull = run(common::ctr(
        env,
        namespace,
        &["images", "pull", "--plain-http", image],
    ));
    assert_ok(&pull, "ctr images pull");

    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--net-host".into()];
    if container["securityContext"]["privileged"] == Value::Bool(true) {
        args.push("--privileged".into());
        args.push("--mount".into());
        args.push("type=bind,src=/sys/fs/cgroup,dst=/sys/fs/cgroup,options=rbind:rw".into());
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().unwrap();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            let k = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            (*secrets.get(&k).unwrap_or_else(|| panic!("no secret {k:?}"))).to_owned()
        };
        args.push("--env".into());
        args.push(format!("{key}={value}"));
    }
    let volumes: HashMap<&str, &Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap();
        let volume = volumes[vname];
        assert!(
            volume.get("emptyDir").is_some(),
            "this run provides emptyDir volumes only: {volume}"
        );
        let dir: PathBuf = volumes_root.join(vname);
        std::fs::create_dir_all(&dir).unwrap();
        let mode = if m["readOnly"] == Value::Bool(true) {
            "ro"
        } else {
            "rw"
        };
        args.push("--mount".into());
        args.push(format!(
            "type=bind,src={},dst={},options=rbind:{mode}",
            dir.display(),
            m["mountPath"].as_str().unwrap()
        ));
    }
    args.push(image.into());
    args.push(name.into());
    for part in ["command", "args"] {
        for a in container[part].as_array().into_iter().flatten() {
            args.push(a.as_str().unwrap().to_owned());
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run(common::ctr(env, namespace, &argv))
}

// Verifies (issue 16): MemoBuild builds its own image from the top-level Dockerfile (Debian
// stand-in base, compiled binary for the Rust stage); the container of the Job that
// `memobuild k8s job` prints, run under containerd as a kubelet runs it (privileged, an
// emptyDir state volume, the cache token from a Secret), builds and pushes a git context with
// its embedded containerd and reports to the team server; a second pod on a fresh emptyDir
// executes no step, pushes the same digest, and the server records both builds.
#[test]
fn job_container_builds_a_git_context_twice_under_containerd() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let namespace = common::unique("k8sjob");
    let image = format!("{}/memobuild/memobuild:{namespace}", env.registry);
    build_memobuild_image(&env, &sb, &image);

    let server = Server::start(&sb.path("server-store"), &["--token", TOKEN]);
    let repo = GitServer::start();
    repo.move_main(&[
        (
            "app/Dockerfile",
            &format!(
                "FROM {}\nRUN echo built-in-a-pod > /built\nCOPY hello.txt /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n",
                env.busybox()
            ),
        ),
        ("app/hello.txt", "hello from git\n"),
    ]);
    let context = format!("{}#main:app", repo.url());
    let tag = format!("{}/k8sjob/app:{namespace}", env.registry);
    let cache = server.url.clone();
    let (pod, container) = job_container(&[
        "--image",
        &image,
        "--project",
        &namespace,
        "--remote-cache",
        &cache,
        "--remote-cache-token-secret",
        "team-cache:token",
        "-t",
        &tag,
        "--push",
        &context,
    ]);
    let secrets = HashMap::from([(("team-cache", "token"), TOKEN)]);

    let mut digests = Vec::new();
    for n in 1..=2 {
        let out = run_like_kubelet(
            &env,
            &namespace,
            &pod,
            &container,
            &secrets,
            &sb.path(&format!("pod-{n}")),
            &format!("{namespace}-{n}"),
        );
        assert_ok(&out, &format!("the Job's container, run {n}"));
        let log = format!("{}{}", stdout(&out), stderr(&out));
        let digest = log
            .lines()
            .rev()
            .find(|l| l.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no image id in the pod's log:\n{log}"))
            .to_owned();
        if n == 1 {
            assert!(log.contains("RUN echo built-in-a-pod"), "{log}");
        } else {
            let cached = log.lines().filter(|l| l.ends_with(" CACHED")).count();
            assert_eq!(cached, 3, "every step of the second pod is cached:\n{log}");
        }
        digests.push(digest);
    }
    assert_eq!(digests[0], digests[1], "both pods push the same image");

    let builds = builds(&server, &namespace);
    assert_eq!(builds.len(), 2, "{builds:?}");
    // Newest first: the second pod executed nothing; the first pulled the base, ran the RUN
    // and the COPY.
    assert_eq!(builds[0]["executed"], 0, "{:?}", builds[0]);
    assert_eq!(builds[0]["cached"], 3, "{:?}", builds[0]);
    assert_eq!(builds[1]["executed"], 3, "{:?}", builds[1]);
    for b in &builds {
        assert_eq!(b["status"], "succeeded", "{b:?}");
        assert_eq!(b["tags"][0], tag.as_str(), "{b:?}");
    }

    // The pushed image is the one the Dockerfile describes.
    let ran = run(common::ctr(
        &env,
        &namespace,
        &["images", "pull", "--plain-http", &tag],
    ));
    assert_ok(&ran, "ctr images pull of the built image");
    let ran = common::ctr_run(&env, &namespace, &tag, &[]);
    assert_ok(&ran, "ctr run of the built image");
    assert_eq!(stdout(&ran), "hello from git\n");
    for img in [&image, &tag] {
        let _ = run(common::ctr(&env, &namespace, &["images", "rm", img]));
    }
}
