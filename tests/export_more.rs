//! End to end, more outputs against the real containerd and registry from hack/services.sh:
//! `type=containerd` (listed and run by `ctr` in the build's namespace, also after containerd's
//! garbage collector ran), a `type=docker` tar loaded into Debian's docker.io engine (a private
//! dockerd started by the test) and run, a `type=oci,tar=false` layout unpacked by `umoci`, and
//! reproducibility (two builds from empty state directories give the same manifest digest, with
//! and without `SOURCE_DATE_EPOCH`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Sandbox, assert_ok, stderr, stdout, unique};

const DOCKERFILE: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
ENV GREETING="hello from memobuild"
WORKDIR /app
RUN echo "built by RUN" > run.txt && mkdir -p data && echo data > data/file
COPY message.txt ./
CMD ["/bin/sh", "-c", "echo $GREETING; cat /app/run.txt /app/message.txt /app/data/file"]
"#;

const EXPECTED: &str = "hello from memobuild\nbuilt by RUN\nmessage from the context\ndata\n";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE)
        .write("message.txt", "message from the context\n");
    sb
}

/// `memobuild build` on the sandbox, with the test registry as `REGISTRY`.
fn build(sb: &Sandbox, env: &Env, args: &[&str]) -> Output {
    let registry = format!("REGISTRY={}", env.registry);
    let mut all = vec!["--progress", "plain", "--build-arg", registry.as_str()];
    all.extend_from_slice(args);
    sb.build(env, &all)
}

/// The manifest digest `memobuild build` prints as the last line of stdout.
fn digest_of(out: &Output) -> String {
    let d = stdout(out).lines().last().unwrap_or_default().to_string();
    assert!(d.starts_with("sha256:") && d.len() == 71, "digest: {d:?}");
    d
}

/// Removes image records from the worker's namespace when the test ends, however it ends.
struct CtrImages<'a> {
    env: &'a Env,
    names: Vec<String>,
}

impl Drop for CtrImages<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = common::ctr(
                self.env,
                memobuild_worker::DEFAULT_NAMESPACE,
                &["images", "rm", n],
            )
            .output();
        }
    }
}

#[test]
fn containerd_output_is_listed_and_runs_under_ctr() {
    // `--output type=containerd` puts the image into containerd's image store in the namespace
    // the build used (the worker's default, `memobuild`): `ctr images ls` lists both names with
    // the digest the build printed, and `ctr run` runs them by name: the `unpack=true` one on
    // the snapshots the export made, the other after ctr unpacks it. A synchronous GC (deleting
    // a lease with --sync) runs first, so this also shows the image keeps its config, layers and
    // snapshots alive once the build's lease is gone (the manifest's gc.ref labels).
    let Some(env) = Env::get() else { return };
    let ns = memobuild_worker::DEFAULT_NAMESPACE;
    let sb = sandbox();
    let base = unique("ctd");
    let unpacked = format!("docker.io/library/{base}:unpacked");
    let packed = format!("docker.io/library/{base}:packed");
    let _cleanup = CtrImages {
        env: &env,
        names: vec![unpacked.clone(), packed.clone()],
    };
    let out = build(
        &sb,
        &env,
        &[
            "-t",
            &format!("{base}:unpacked"),
            "--output",
            "type=containerd,unpack=true",
            "--output",
            &format!("type=containerd,name={base}:packed"),
        ],
    );
    assert_ok(&out, "memobuild build type=containerd");
    let digest = digest_of(&out);
    assert!(
        stderr(&out).contains(&format!(
            "imported {unpacked}@{digest} into containerd (namespace `{ns}`, unpacked)"
        )),
        "{}",
        stderr(&out)
    );

    let ls = common::run(common::ctr(&env, ns, &["images", "ls"]));
    assert_ok(&ls, "ctr images ls");
    for name in [&unpacked, &packed] {
        let line = stdout(&ls)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", stdout(&ls)));
        assert!(line.contains(&digest), "{line}");
        assert!(
            line.contains("application/vnd.oci.image.manifest.v1+json"),
            "{line}"
        );
    }

    // Force a garbage collection: what only the build's lease held is gone after this.
    let lease = unique("gc");
    assert_ok(
        &common::run(common::ctr(&env, ns, &["leases", "create", "--id", &lease])),
        "ctr leases create",
    );
    assert_ok(
        &common::run(common::ctr(&env, ns, &["leases", "rm", "--sync", &lease])),
        "ctr leases rm --sync",
    );
    let check = common::run(common::ctr(
        &env,
        ns,
        &["images", "check", &format!("name=={unpacked}")],
    ));
    assert_ok(&check, "ctr images check");
    assert!(stdout(&check).contains("complete"), "{}", stdout(&check));

    for name in [&unpacked, &packed] {
        let run = common::ctr_run(&env, ns, name, &[]);
        assert_ok(&run, &format!("ctr run {name}"));
        assert_eq!(stdout(&run), EXPECTED);
    }

    // Exporting another image under an existing name re-points that name (Images.Update).
    sb.write("message.txt", "a new message\n");
    let again = build(
        &sb,
        &env,
        &[
            "--output",
            &format!("type=containerd,name={base}:packed,oci-mediatypes=false"),
        ],
    );
    assert_ok(&again, "memobuild build type=containerd (again)");
    // stdout names the image this output stored: its Docker-typed manifest.
    let stored = digest_of(&again);
    let ls = common::run(common::ctr(&env, ns, &["images", "ls"]));
    let line = stdout(&ls)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(packed.as_str()))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{line}"
    );
    assert!(
        !line.contains(&digest) && line.contains(stored.trim_start_matches("sha256:")),
        "re-pointed: {line}"
    );
    let run = common::ctr_run(&env, ns, &packed, &[]);
    assert_ok(&run, "ctr run (re-pointed)");
    assert_eq!(
        stdout(&run),
        EXPECTED.replace("message from the context", "a new message")
    );
}

#[test]
fn containerd_output_needs_a_name() {
    // Without `-t` or `name=`, `type=containerd` has nothing to call the image: refused before
    // anything is built, with a one-line error saying what to add.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let out = build(&sb, &env, &["--output", "type=containerd"]);
    assert!(!out.status.success());
    assert!(
        common::error_line(&out).contains("type=containerd needs name=NAME"),
        "{}",
        stderr(&out)
    );
}

/// Finds `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// A private Docker engine: its own data root, exec root (and so its own containerd), socket and
/// pid file under a temporary directory; no bridge, no iptables. Stopped, and its mounts
/// removed, on drop.
struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
    docker: PathBuf,
}

impl Dockerd {
    /// Starts dockerd and waits until `docker info` answers; `Err` says why it could not.
    fn start() -> Result<Dockerd, String> {
        let dockerd = which("dockerd").ok_or("dockerd is not installed (Debian's docker.io)")?;
        // The client of the same package (an unrelated newer `docker` may come first on PATH).
        let docker = dockerd
            .parent()
            .map(|d| d.join("docker"))
            .filter(|d| d.is_file())
            .or_else(|| which("docker"))
            .ok_or("the docker client is not installed")?;
        // Short path: the engine's and its containerd's sockets live under it.
        let dir = tempfile::Builder::new()
            .prefix("mb-dockerd-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("tempdir: {e}"))?;
        let p = |n: &str| dir.path().join(n);
        let log = std::fs::File::create(p("dockerd.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&dockerd)
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--host")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .arg("--pidfile")
            .arg(p("docker.pid"))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", dockerd.display()))?;
        let mut d = Dockerd { dir, child, docker };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "dockerd exited with {status} before answering; its log:\n{}",
                    d.log_tail()
                ));
            }
            if d.docker(&["info"]).status.success() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer `docker info` within 60 s; its log:\n{}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `docker -H unix://… ARGS`.
    fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.docker);
        c.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args);
        common::run(c)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and its own containerd, then exits.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Whatever it left mounted under its directory (overlay2, shm, netns), deepest first.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

#[test]
fn docker_archive_loads_into_docker_and_runs() {
    // A `type=docker` tar is read by Debian's Docker engine: `docker load` takes it (naming the
    // image by the `-t` tag), and `docker run` runs it with the expected output. The engine is a
    // private dockerd (own data and exec roots, socket, no bridge, no iptables); when it cannot
    // run on this machine the test says why and skips.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let tar = sb.path("docker.tar");
    let tag = format!("{}:1", unique("dockerload"));
    let out = build(
        &sb,
        &env,
        &[
            "-t",
            &tag,
            "--output",
            &format!("type=docker,dest={}", tar.display()),
        ],
    );
    assert_ok(&out, "memobuild build type=docker");

    let dockerd = match Dockerd::start() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED docker_archive_loads_into_docker_and_runs: {why}");
            return;
        }
    };
    let load = dockerd.docker(&["load", "-i", &tar.to_string_lossy()]);
    assert_ok(&load, "docker load");
    assert!(
        stdout(&load).contains(&format!("Loaded image: {tag}")),
        "{}",
        stdout(&load)
    );
    let inspect = dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.WorkingDir}}",
        &tag,
    ]);
    assert_ok(&inspect, "docker image inspect");
    assert_eq!(stdout(&inspect).trim(), "/app");
    let run = dockerd.docker(&["run", "--rm", "--network", "none", &tag]);
    assert_ok(&run, "docker run");
    assert_eq!(stdout(&run), EXPECTED);
}

#[test]
fn oci_layout_directory_is_unpacked_by_umoci() {
    // `type=oci,tar=false` with a tagged name writes an OCI layout whose index.json names the
    // tag (`org.opencontainers.image.ref.name`), so `umoci unpack --image DIR:TAG` finds it and
    // unpacks a runtime bundle whose rootfs has the base image's and the build's files.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let layout = sb.path("layout");
    let name = format!("{}:v1", unique("umoci"));
    let out = build(
        &sb,
        &env,
        &[
            "--output",
            &format!("type=oci,tar=false,dest={},name={name}", layout.display()),
        ],
    );
    assert_ok(&out, "memobuild build type=oci,tar=false");
    let bundle = sb.path("bundle");
    let unpack = common::run({
        let mut c = Command::new("umoci");
        c.arg("unpack")
            .arg("--image")
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle);
        c
    });
    assert_ok(&unpack, "umoci unpack");
    let rootfs = bundle.join("rootfs");
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
    assert_eq!(read("app/run.txt"), "built by RUN\n");
    assert_eq!(read("app/message.txt"), "message from the context\n");
    assert_eq!(read("app/data/file"), "data\n");
    assert!(
        rootfs.join("bin/sh").exists(),
        "busybox from the base image"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap_or_default())
            .expect("bundle config.json");
    assert_eq!(config["process"]["cwd"], "/app");
}

/// Builds the context in a fresh sandbox (empty state directory) into an OCI archive; returns
/// the printed digest and the archive's path (kept alive by the returned sandbox).
fn fresh_build(env: &Env, args: &[&str]) -> (String, Sandbox, PathBuf) {
    let sb = sandbox();
    let tar = sb.path("out.tar");
    let mut all = vec![
        "--output".to_string(),
        format!("type=oci,dest={}", tar.display()),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = build(&sb, env, &all);
    assert_ok(&out, "memobuild build");
    (digest_of(&out), sb, tar)
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    format!(
        "{:x}",
        sha2::Sha256::digest(std::fs::read(p).unwrap_or_default())
    )
}

#[test]
fn same_context_from_empty_state_gives_the_same_digest() {
    // Two builds of the same context, each from an empty state directory (so every RUN and COPY
    // executes again, at other times, on files written at other times) give the same manifest
    // digest, and byte-identical OCI archives. With `SOURCE_DATE_EPOCH` as a build arg the two
    // builds agree again, on another digest (mtimes clamped to it and `created` set from it).
    let Some(env) = Env::get() else { return };
    let (a, _sa, tar_a) = fresh_build(&env, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let (b, _sb, tar_b) = fresh_build(&env, &[]);
    assert_eq!(a, b, "same context, empty caches: same manifest digest");
    assert_eq!(sha256_file(&tar_a), sha256_file(&tar_b));

    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let (c, _sc, tar_c) = fresh_build(&env, &epoch);
    let (d, _sd, _) = fresh_build(&env, &epoch);
    assert_eq!(c, d, "same SOURCE_DATE_EPOCH: same manifest digest");
    assert_ne!(a, c, "SOURCE_DATE_EPOCH changes the image");
    let cfg = common::run({
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", tar_c.display()));
        cmd
    });
    assert_ok(&cfg, "skopeo inspect --config");
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).expect("config");
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
}
