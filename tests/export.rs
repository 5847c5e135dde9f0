//! End to end: every output type against the real registry and containerd from hack/services.sh.
//! `--push` (and `type=image,push=true`) to the test registry, read back by skopeo and pulled and
//! run by containerd; pushing twice and to a second repository; a registry with basic auth
//! (credentials from a temporary DOCKER_CONFIG, inline or through a credential helper); a registry
//! behind a fake proxy that fails, to see retries; `type=local` (files, modes, owners, whiteouts);
//! `type=docker` (skopeo and containerd read it); `oci-mediatypes=false`; several outputs at once.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, Sandbox, assert_ok, error_line, stderr, stdout, unique};

const SKELETON: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
ENV GREETING="hello from memobuild"
WORKDIR /app
RUN echo "built by RUN as uid $(id -u)" > run.txt && mkdir -p data
COPY message.txt ./
COPY --chown=1000:1000 --chmod=0640 message.txt /owned.txt
CMD ["/bin/sh", "-c", "echo $GREETING; cat /app/run.txt /app/message.txt; pwd; stat -c '%u:%g %a' /owned.txt"]
"#;

const SKELETON_OUTPUT: &str =
    "hello from memobuild\nbuilt by RUN as uid 0\nmessage from the context\n/app\n1000:1000 640\n";

fn skeleton_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("Dockerfile", SKELETON)
        .write("message.txt", "message from the context\n");
    sb
}

/// `memobuild build` on the sandbox with `args`, `DOCKER_CONFIG` pointing at `docker_config`
/// (an empty directory unless a test writes a config.json there), and `extra_path` prepended to
/// `PATH` when given.
fn build(
    sb: &Sandbox,
    env: &Env,
    docker_config: &Path,
    extra_path: Option<&Path>,
    args: &[&str],
) -> Output {
    let mut cmd = common::memobuild();
    cmd.arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .arg("--progress")
        .arg("plain")
        .arg("--build-arg")
        .arg(format!("REGISTRY={}", env.registry))
        .args(args)
        .arg(sb.context())
        .env("DOCKER_CONFIG", docker_config);
    if let Some(p) = extra_path {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", p.display()));
    }
    common::run(cmd)
}

fn empty_docker_config(sb: &Sandbox) -> PathBuf {
    let d = sb.path("docker-config-empty");
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn skopeo(args: &[&str]) -> Output {
    let mut c = Command::new("skopeo");
    c.args(args);
    common::run(c)
}

/// The `pushed NAME@DIGEST (…)` progress lines.
fn pushed_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("pushed "))
        .map(str::to_string)
        .collect()
}

/// Pulls `image` from a plain-HTTP registry into the sandbox's namespace and runs it.
fn ctr_pull_run(sb: &Sandbox, env: &Env, image: &str, cmd: &[&str]) -> Output {
    let pull = common::run(common::ctr(
        env,
        &sb.namespace,
        &["images", "pull", "--plain-http", image],
    ));
    assert_ok(&pull, "ctr images pull");
    common::ctr_run(env, &sb.namespace, image, cmd)
}

/// Files MemoBuild left behind under its temporary names.
fn temp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".memobuild-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pushed_image_is_read_by_skopeo_and_runs_under_containerd() {
    // `-t NAME --push` pushes to the registry: skopeo sees the image and its config, containerd
    // pulls it over plain HTTP and runs it with the expected output, and the progress says which
    // digest went where.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let name = format!("{}/{}:1", env.registry, unique("app"));
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &["-t", &name, "--push"],
    );
    assert_ok(&out, "memobuild build --push");
    let digest = stdout(&out).trim().to_string();
    let lines = pushed_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(
        lines[0].starts_with(&format!("pushed {name}@{digest}")),
        "{lines:?}"
    );

    let inspect = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{name}")]);
    assert_ok(&inspect, "skopeo inspect");
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    assert_eq!(v["Digest"], digest.as_str());
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(5));
    let raw = common::raw_manifest(&name);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    let run = ctr_pull_run(&sb, &env, &name, &[]);
    assert_ok(&run, "ctr run");
    assert_eq!(stdout(&run), SKELETON_OUTPUT);
}

#[test]
fn pushing_again_skips_blobs_and_a_second_repository_mounts_them() {
    // Two names in one push: the second repository of the same registry gets every blob by
    // cross-repository mount. Pushing again finds every blob present and uploads nothing.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let first = format!("{}/{}:1", env.registry, unique("first"));
    let second = format!("{}/{}:1", env.registry, unique("second"));
    let cfg = empty_docker_config(&sb);
    let out = build(
        &sb,
        &env,
        &cfg,
        None,
        &["-t", &first, "-t", &second, "--push"],
    );
    assert_ok(&out, "memobuild build --push (two names)");
    let lines = pushed_lines(&out);
    assert_eq!(lines.len(), 2, "{}", stderr(&out));
    // The base layer comes from library/busybox by mount; the rest is uploaded.
    assert!(
        lines[0].contains("(5 uploaded, 1 mounted, 0 already present)"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("(0 uploaded, 6 mounted, 0 already present)"),
        "{lines:?}"
    );
    let digest = stdout(&out).trim().to_string();
    for n in [&first, &second] {
        let i = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{n}")]);
        assert_ok(&i, "skopeo inspect");
        let v: serde_json::Value = serde_json::from_slice(&i.stdout).expect("json");
        assert_eq!(v["Digest"], digest.as_str(), "{n}");
    }

    let again = build(&sb, &env, &cfg, None, &["-t", &first, "--push"]);
    assert_ok(&again, "memobuild build --push (again)");
    let lines = pushed_lines(&again);
    assert_eq!(lines.len(), 1, "{}", stderr(&again));
    assert!(
        lines[0].contains(&format!(
            "@{digest} (0 uploaded, 0 mounted, 6 already present)"
        )),
        "{lines:?}"
    );
}

#[test]
fn local_output_is_the_final_filesystem_with_whiteouts_applied() {
    // A bare `--output DIR` writes the image's filesystem: a base file removed by RUN is absent,
    // a directory replaced by RUN holds only its new content (opaque whiteout), contents, modes,
    // owners and symlinks are as in the image, and no whiteout file is left in the tree.
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
RUN echo old > /home/app/old && mkdir -p /data && echo data > /data/f && chmod 0750 /data && chmod 0604 /data/f
RUN rm /etc/group && rm -rf /home/app && mkdir /home/app && echo fresh > /home/app/new
COPY --chown=1000:1000 --chmod=0640 message.txt /app/message.txt
RUN ln -s /etc/passwd /link
"#,
    )
    .write("message.txt", "message from the context\n");
    let dest = sb.path("rootfs");
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &["--output", dest.to_str().expect("utf-8 path")],
    );
    assert_ok(&out, "memobuild build --output DIR");

    assert!(!dest.join("etc/group").exists(), "removed by RUN rm");
    let passwd = std::fs::read_to_string(dest.join("etc/passwd")).expect("etc/passwd");
    assert!(passwd.contains("root:x:0:0"), "{passwd}");
    let names: Vec<String> = std::fs::read_dir(dest.join("home/app"))
        .expect("home/app")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["new"],
        "the replaced directory has only its new file"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("data/f")).expect("f"),
        "data\n"
    );
    let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).expect(p).mode() & 0o7777;
    assert_eq!(mode("data/f"), 0o604);
    assert_eq!(mode("data"), 0o750);
    assert_eq!(mode("bin/busybox"), 0o755);
    // Written as the user running the build (BuildKit's client does the same); the image's
    // owner (1000:1000) is in its layers, not in a local export.
    let msg = std::fs::symlink_metadata(dest.join("app/message.txt")).expect("message");
    assert_eq!(
        (msg.uid(), msg.gid(), msg.mode() & 0o7777),
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            0o640
        )
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("app/message.txt")).expect("message"),
        "message from the context\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).expect("link"),
        Path::new("/etc/passwd")
    );
    fn whiteouts(dir: &Path, found: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".wh.") {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                whiteouts(&p, found);
            }
        }
    }
    let mut found = Vec::new();
    whiteouts(&dest, &mut found);
    assert!(found.is_empty(), "{found:?}");
    assert!(temp_leftovers(&sb.path("")).is_empty());
}

#[test]
fn docker_archive_is_read_by_skopeo_and_containerd() {
    // `type=docker,dest=FILE`: skopeo reads it as a docker-archive (manifest.json) and copies its
    // layers; manifest.json names the tag and the layers; containerd imports and runs it.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let tar = sb.path("docker.tar");
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &[
            "-t",
            "e2e-docker:1",
            "--output",
            &format!("type=docker,dest={}", tar.display()),
        ],
    );
    assert_ok(&out, "memobuild build type=docker");
    let archive = format!("docker-archive:{}", tar.display());
    let i = skopeo(&["inspect", &archive]);
    assert_ok(&i, "skopeo inspect docker-archive");
    let cfg = skopeo(&["inspect", "--config", &archive]);
    assert_ok(&cfg, "skopeo inspect --config docker-archive");
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).expect("config");
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    let layout = sb.path("copied");
    let copy = skopeo(&[
        "copy",
        "--quiet",
        &archive,
        &format!("oci:{}:t", layout.display()),
    ]);
    assert_ok(
        &copy,
        "skopeo copy docker-archive → oci (reads every layer)",
    );

    let manifest = common::run({
        let mut c = Command::new("tar");
        c.arg("-xOf").arg(&tar).arg("manifest.json");
        c
    });
    assert_ok(&manifest, "tar -xOf manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&manifest.stdout).expect("manifest.json");
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["e2e-docker:1"]));
    assert_eq!(
        m[0]["Layers"].as_array().map(Vec::len),
        cfg["rootfs"]["diff_ids"].as_array().map(Vec::len)
    );

    let run = sb.ctr_run(&env, &tar, "docker.io/library/e2e-docker:1");
    assert_ok(&run, "ctr run");
    assert_eq!(stdout(&run), SKELETON_OUTPUT);
}

#[test]
fn oci_mediatypes_false_pushes_docker_media_types() {
    // `type=image,…,push=true,oci-mediatypes=false` pushes a Docker v2s2 manifest (docker media
    // types for manifest, config and layers) that containerd still pulls and runs.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let name = format!("{}/{}:1", env.registry, unique("docker-types"));
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &[
            "--output",
            &format!("type=image,name={name},push=true,oci-mediatypes=false"),
        ],
    );
    assert_ok(&out, "memobuild build type=image,oci-mediatypes=false");
    let m = common::raw_manifest(&name);
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in m["layers"].as_array().expect("layers") {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    let run = ctr_pull_run(&sb, &env, &name, &[]);
    assert_ok(&run, "ctr run");
    assert_eq!(stdout(&run), SKELETON_OUTPUT);
}

#[test]
fn several_outputs_are_all_written() {
    // One build, four outputs: an OCI tar, a docker tar, a directory and a push; each is there.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let name = format!("{}/{}:1", env.registry, unique("multi"));
    let (oci, docker, dir) = (sb.path("oci.tar"), sb.path("docker.tar"), sb.path("fs"));
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &[
            "-t",
            &name,
            "--push",
            "--output",
            &format!("type=oci,dest={}", oci.display()),
            "--output",
            &format!("type=docker,dest={}", docker.display()),
            "--output",
            dir.to_str().expect("utf-8 path"),
        ],
    );
    assert_ok(&out, "memobuild build with four outputs");
    assert_ok(
        &skopeo(&["inspect", &format!("oci-archive:{}", oci.display())]),
        "skopeo inspect oci-archive",
    );
    assert_ok(
        &skopeo(&["inspect", &format!("docker-archive:{}", docker.display())]),
        "skopeo inspect docker-archive",
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("app/message.txt")).expect("message"),
        "message from the context\n"
    );
    assert_ok(
        &skopeo(&["inspect", "--tls-verify=false", &format!("docker://{name}")]),
        "skopeo inspect docker://",
    );
    assert_eq!(pushed_lines(&out).len(), 1);
}

#[test]
fn unreachable_registry_fails_the_push_with_one_line() {
    // Pushing to a registry nobody listens on: exit 1, one line naming the registry and the blob,
    // after the retries; the output written before it is complete and no temporary file is left.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let oci = sb.path("out.tar");
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &[
            "-t",
            "127.0.0.1:1/e2e/app:1",
            "--push",
            "--output",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.starts_with("error: pushing `127.0.0.1:1/e2e/app:1`: blob `sha256:"),
        "{line}"
    );
    assert!(
        line.contains("cannot reach registry 127.0.0.1:1: connection refused"),
        "{line}"
    );
    assert!(line.contains("after 3 attempts"), "{line}");
    assert!(!stderr(&out).contains("panicked"));
    assert_ok(
        &skopeo(&["inspect", &format!("oci-archive:{}", oci.display())]),
        "the OCI archive written before the push",
    );
    assert!(temp_leftovers(&sb.path("")).is_empty());
}

/// A second registry with htpasswd basic auth on a free loopback port; stopped on drop.
struct AuthRegistry {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(user: &str, password: &str) -> AuthRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = common::run({
            let mut c = Command::new("htpasswd");
            c.args(["-Bbn", user, password]);
            c
        });
        assert_ok(
            &htpasswd,
            "htpasswd (apache2-utils; hack/setup.sh installs it)",
        );
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("write htpasswd");
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: memobuild-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = AuthRegistry {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&reg.addr, "GET", "/v2/") != Some(401) {
            assert!(Instant::now() < deadline, "auth registry did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The status code of a bodiless HTTP/1.1 request, or `None` when nothing answers.
fn http_status(addr: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn write_docker_config(dir: &Path, json: &serde_json::Value) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("config.json"), json.to_string()).expect("config.json");
}

#[test]
fn basic_auth_registry_needs_the_credentials_from_docker_config() {
    // A registry with htpasswd auth: without credentials the push fails with one line saying so;
    // with a wrong password it names the refused user; with `auths` (base64 `auth`) in a
    // temporary DOCKER_CONFIG it works, and so with a `credHelpers` entry and its helper.
    let Some(env) = Env::get() else { return };
    let reg = AuthRegistry::start("tester", "s3cret");
    let sb = skeleton_sandbox();
    let name = format!("{}/{}:1", reg.addr, unique("auth"));

    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &["-t", &name, "--push"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("registry {} requires authentication", reg.addr)),
        "{line}"
    );
    assert!(line.contains("no credentials are configured"), "{line}");

    let b64 = |s: &str| {
        // Tiny base64 so the test needs no crate for it.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in s.as_bytes().chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let wrong = sb.path("docker-config-wrong");
    write_docker_config(
        &wrong,
        &serde_json::json!({"auths": {reg.addr.clone(): {"auth": b64("tester:nope")}}}),
    );
    let out = build(&sb, &env, &wrong, None, &["-t", &name, "--push"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("refused the credentials of user `tester`"),
        "{line}"
    );
    assert!(line.contains(&reg.addr), "{line}");

    let good = sb.path("docker-config-good");
    write_docker_config(
        &good,
        &serde_json::json!({"auths": {format!("http://{}", reg.addr): {"auth": b64("tester:s3cret")}}}),
    );
    let out = build(&sb, &env, &good, None, &["-t", &name, "--push"]);
    assert_ok(&out, "push with credentials");
    let digest = stdout(&out).trim().to_string();
    let i = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "tester:s3cret",
        &format!("docker://{name}"),
    ]);
    assert_ok(&i, "skopeo inspect with credentials");
    let v: serde_json::Value = serde_json::from_slice(&i.stdout).expect("json");
    assert_eq!(v["Digest"], digest.as_str());

    // The same through a credential helper found on PATH.
    let bin = sb.path("helper-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let helper = bin.join("docker-credential-memobuildtest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"tester\",\"Secret\":\"s3cret\"}' \"$server\"\n",
    )
    .expect("helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let helpers = sb.path("docker-config-helper");
    write_docker_config(
        &helpers,
        &serde_json::json!({"credHelpers": {reg.addr.clone(): "memobuildtest"}}),
    );
    let name2 = format!("{}/{}:1", reg.addr, unique("auth-helper"));
    let out = build(&sb, &env, &helpers, Some(&bin), &["-t", &name2, "--push"]);
    assert_ok(&out, "push with a credential helper");
    assert_eq!(pushed_lines(&out).len(), 1);

    // Pulls use the same credentials: a base image in the private registry builds with them
    // (fresh state dir, so the base really comes from the registry) and fails without them.
    let child = Sandbox::new();
    child.write(
        "Dockerfile",
        &format!("FROM {name}\nRUN echo derived > /derived\n"),
    );
    let out = build(&child, &env, &good, None, &[]);
    assert_ok(&out, "pull a private base image with credentials");
    let anon = Sandbox::new();
    anon.write("Dockerfile", &format!("FROM {name}\nRUN true\n"));
    let out = build(&anon, &env, &empty_docker_config(&anon), None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains(&reg.addr), "{}", error_line(&out));
}

/// A fake registry front: fails the requests `fail` picks with HTTP 500 and proxies the rest to
/// `upstream`, one request per connection. Records `METHOD STATUS` of every request.
struct Proxy {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

type FailPolicy = Arc<Mutex<dyn FnMut(&str) -> bool + Send>>;

impl Proxy {
    fn start(upstream: &str, fail: impl FnMut(&str) -> bool + Send + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let fail: FailPolicy = Arc::new(Mutex::new(fail));
        let (upstream, l) = (upstream.to_string(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (upstream, log, fail) = (upstream.clone(), l.clone(), fail.clone());
                std::thread::spawn(move || {
                    if let Err(e) = proxy_one(conn, &upstream, &log, &fail) {
                        log.lock().expect("log").push(format!("proxy error: {e}"));
                    }
                });
            }
        });
        Proxy { addr, log }
    }

    fn count(&self, entry: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| *l == entry)
            .count()
    }
}

fn proxy_one(
    client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<String>>,
    fail: &FailPolicy,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let method = request_line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut headers = Vec::new();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("transfer-encoding:") {
            chunked = lower.contains("chunked");
        } else if !lower.starts_with("connection:") {
            headers.push(h);
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let mut client = client;
    if (fail.lock().expect("fail policy"))(&method) {
        log.lock().expect("log").push(format!("{method} 500"));
        client.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut head = request_line.clone();
    for h in &headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let status = String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string();
    log.lock().expect("log").push(format!("{method} {status}"));
    client.write_all(&response)?;
    Ok(())
}

#[test]
fn a_registry_failing_twice_is_retried_and_a_big_layer_goes_in_chunks() {
    // Behind a proxy that answers the first two upload-session requests (POST) with HTTP 500, the
    // push still succeeds (each blob upload is retried); a 20 MB layer goes in several PATCH
    // chunks; the image arrives intact in the real registry and runs.
    let Some(env) = Env::get() else { return };
    let mut posts = 0;
    let proxy = Proxy::start(&env.registry, move |method| {
        if method == "POST" {
            posts += 1;
            return posts <= 2;
        }
        false
    });
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN head -c 20000000 /dev/urandom > /big\n",
    );
    let repo = unique("retry");
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &["-t", &format!("{}/{repo}:1", proxy.addr), "--push"],
    );
    assert_ok(&out, "push through a registry that fails twice");
    assert_eq!(proxy.count("POST 500"), 2, "{:?}", proxy.log.lock());
    assert!(proxy.count("PATCH 202") >= 2, "{:?}", proxy.log.lock());
    let direct = format!("{}/{repo}:1", env.registry);
    let i = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{direct}"),
    ]);
    assert_ok(&i, "skopeo inspect (past the proxy)");
    let v: serde_json::Value = serde_json::from_slice(&i.stdout).expect("json");
    assert_eq!(v["Digest"], stdout(&out).trim());
    let run = ctr_pull_run(&sb, &env, &direct, &["stat", "-c", "%s", "/big"]);
    assert_ok(&run, "ctr run stat");
    assert_eq!(stdout(&run), "20000000\n");
}

#[test]
fn a_registry_that_keeps_failing_gives_a_clear_error() {
    // A registry that answers everything with HTTP 500: three tries per operation, then one line
    // naming the registry, the image and the blob; exit code 1.
    let Some(env) = Env::get() else { return };
    let proxy = Proxy::start(&env.registry, |_| true);
    let sb = skeleton_sandbox();
    let name = format!("{}/{}:1", proxy.addr, unique("failing"));
    let out = build(
        &sb,
        &env,
        &empty_docker_config(&sb),
        None,
        &["-t", &name, "--push"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!("error: pushing `{name}`: blob `sha256:")),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "registry {} answered HTTP 500 (gave up after 3 attempts)",
            proxy.addr
        )),
        "{line}"
    );
    assert!(proxy.count("HEAD 500") >= 3, "{:?}", proxy.log.lock());
}

#[test]
fn a_moved_tag_is_seen_after_a_minute_or_at_once_with_pull() {
    // A rebuild within a minute reuses what the base image's tag named (as BuildKit does, so a
    // no-op asks the registry nothing); `--pull` asks the registry again and builds on the image
    // the tag names now.
    let Some(env) = Env::get() else { return };
    let base = format!("{}/{}:latest", env.registry, unique("moving-base"));
    let push_base = |version: &str| {
        let sb = Sandbox::new();
        sb.write(
            "Dockerfile",
            &format!(
                "ARG REGISTRY\nFROM ${{REGISTRY}}/library/busybox:latest\nRUN echo {version} > /version\n"
            ),
        );
        let out = build(
            &sb,
            &env,
            &empty_docker_config(&sb),
            None,
            &["-t", &base, "--push"],
        );
        assert_ok(&out, &format!("pushing base {version}"));
    };
    let app = Sandbox::new();
    app.write(
        "Dockerfile",
        &format!("FROM {base}\nRUN cat /version > /seen\n"),
    );
    let build_app = |dest: &str, extra: &[&str]| -> String {
        let dest = app.path(dest);
        let mut args = vec!["--output", dest.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let out = build(&app, &env, &empty_docker_config(&app), None, &args);
        assert_ok(&out, "building on the base");
        std::fs::read_to_string(dest.join("seen")).expect("/seen")
    };

    push_base("one");
    assert_eq!(build_app("first", &[]), "one\n");
    push_base("two");
    assert_eq!(
        build_app("again", &[]),
        "one\n",
        "a rebuild within a minute reuses the resolution"
    );
    assert_eq!(
        build_app("pulled", &["--pull"]),
        "two\n",
        "--pull resolves again"
    );
    assert_eq!(
        build_app("after", &[]),
        "two\n",
        "the refreshed resolution is the one reused"
    );
}

#[test]
fn an_unchanged_archive_is_not_written_again() {
    // A no-op rebuild whose OCI or docker archive is already at its destination, untouched since
    // the last build wrote it, leaves the file alone (same inode, same bytes); a file changed or
    // replaced since, or a different image, is written again.
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let cfg = empty_docker_config(&sb);
    for (kind, name) in [("oci", "out.tar"), ("docker", "docker.tar")] {
        let dest = sb.path(name);
        let output = format!("type={kind},dest={},name=e2e/app:1", dest.display());
        let run = |what: &str| {
            let out = build(&sb, &env, &cfg, None, &["--output", &output]);
            assert_ok(&out, what);
            stderr(&out)
        };
        run("first build");
        let bytes = std::fs::read(&dest).expect("archive");
        let ino = std::fs::metadata(&dest).expect("stat").ino();
        let again = run("no-op rebuild");
        assert!(again.contains("(already there, unchanged)"), "{again}");
        assert_eq!(std::fs::metadata(&dest).expect("stat").ino(), ino);
        assert_eq!(std::fs::read(&dest).expect("archive"), bytes);

        // Changed by someone else: written again, with the same bytes as before.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&dest)
            .and_then(|mut f| f.write_all(b"junk"))
            .expect("append");
        let rewritten = run("rebuild after the archive changed");
        assert!(!rewritten.contains("already there"), "{rewritten}");
        assert_eq!(std::fs::read(&dest).expect("archive"), bytes);

        // Another image: written.
        sb.write("message.txt", &format!("{kind} changed\n"));
        let changed = run("rebuild of another image");
        assert!(!changed.contains("already there"), "{changed}");
        assert_ne!(std::fs::read(&dest).expect("archive"), bytes);
        sb.write("message.txt", "message from the context\n");
    }
}

// Verifies: a push moves the tag for this machine's later builds at once. A base image is
// pushed under a tag and a build `FROM` that tag resolves it (and keeps the answer for a
// minute); the base is rebuilt with other content and pushed to the same tag; the next build
// from it, seconds later on the same state directory, uses the new base, not the remembered
// one.
#[test]
fn a_pushed_tag_is_resolved_afresh_by_the_next_build() {
    let Some(env) = Env::get() else { return };
    let base = format!("{}/{}:latest", env.registry, unique("base"));
    let state = Sandbox::new();
    let cfg = empty_docker_config(&state);
    let build_in = |dir: &Sandbox, args: &[&str]| {
        let mut cmd = common::memobuild();
        cmd.args([
            "build",
            "--containerd",
            &env.containerd,
            "--progress",
            "plain",
        ])
        .arg("--state-dir")
        .arg(state.state())
        .args(args)
        .arg(dir.context())
        .env("DOCKER_CONFIG", &cfg);
        common::run(cmd)
    };
    let app = Sandbox::new();
    app.write(
        "Dockerfile",
        &format!("FROM {base}\nRUN cat /version > /seen\nCMD [\"cat\", \"/seen\"]\n"),
    );
    let mut seen = Vec::new();
    for version in ["one", "two"] {
        let b = Sandbox::new();
        b.write(
            "Dockerfile",
            &format!("FROM {}\nRUN echo {version} > /version\n", env.busybox()),
        );
        assert_ok(&build_in(&b, &["-t", &base, "--push"]), "push of the base");
        let tar = app.path("app.tar");
        let dest = format!("type=oci,dest={}", tar.display());
        let out = build_in(&app, &["-t", "app:latest", "--output", &dest]);
        assert_ok(&out, "build from the base");
        let run = app.ctr_run(&env, &tar, "docker.io/library/app:latest");
        seen.push(stdout(&run));
    }
    assert_eq!(seen, ["one\n", "two\n"]);
}

// Verifies: `memobuild build --provenance mode=max --push` on this machine attaches the same
// kind of attestation the daemon does for buildx: the tag names an index of the image and an
// attestation manifest whose SLSA v1 statement names the image, with the build argument's
// value (max mode keeps it) and the Dockerfile frontend's request.
#[test]
fn local_push_with_provenance_is_an_attested_index() {
    let Some(env) = Env::get() else { return };
    let sb = skeleton_sandbox();
    let repo = unique("attested");
    let tag = format!("{}/{repo}:1", env.registry);
    let cfg = empty_docker_config(&sb);
    let out = build(
        &sb,
        &env,
        &cfg,
        None,
        &[
            "--provenance",
            "mode=max",
            "--build-arg",
            "FLAVOUR=mint",
            "-t",
            &tag,
            "--push",
        ],
    );
    assert_ok(&out, "build --provenance mode=max --push");
    let index = common::raw_manifest(&tag);
    let entries = index["manifests"].as_array().expect("an index");
    assert_eq!(entries.len(), 2, "{index}");
    let att = common::raw_manifest(&format!(
        "{}/{repo}@{}",
        env.registry,
        entries[1]["digest"].as_str().expect("digest")
    ));
    let layer = att["layers"][0]["digest"].as_str().expect("layer");
    let blob = common::registry_blob(&env, &repo, layer);
    let statement: serde_json::Value = serde_json::from_slice(&blob).expect("statement");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        entries[0]["digest"]
            .as_str()
            .expect("digest")
            .trim_start_matches("sha256:")
    );
    let request = &statement["predicate"]["buildDefinition"]["externalParameters"]["request"];
    assert_eq!(request["frontend"], "dockerfile.v0");
    assert_eq!(request["args"]["build-arg:FLAVOUR"], "mint", "{statement}");
}
