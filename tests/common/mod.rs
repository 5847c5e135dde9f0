//! Shared helpers for the end-to-end tests: the real containerd and registry that `hack/`
//! starts (found through `MEMOBUILD_TEST_*`), a per-test context directory, and a command builder
//! for the `memobuild` binary.
#![allow(dead_code)]

pub mod daemon;
pub mod git;
pub mod http;
pub mod nginx;
pub mod server;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The services a test needs.
pub struct Env {
    /// containerd socket.
    pub containerd: String,
    /// Registry `127.0.0.1:PORT` holding `library/busybox:latest`.
    pub registry: String,
}

impl Env {
    /// Reads the environment `hack/services.sh` wrote. Without it the test cannot mean anything:
    /// under CI (`CI` set) that is a failure, elsewhere a loud skip.
    pub fn get() -> Option<Env> {
        match (
            std::env::var("MEMOBUILD_TEST_CONTAINERD"),
            std::env::var("MEMOBUILD_TEST_REGISTRY"),
        ) {
            (Ok(containerd), Ok(registry)) => Some(Env {
                containerd,
                registry,
            }),
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "MEMOBUILD_TEST_CONTAINERD / MEMOBUILD_TEST_REGISTRY not set under CI: run the tests through hack/test.sh"
                    );
                }
                eprintln!(
                    "SKIPPED: MEMOBUILD_TEST_CONTAINERD not set (run hack/test.sh to start containerd and a registry)"
                );
                None
            }
        }
    }

    /// The base image reference in the test registry.
    pub fn busybox(&self) -> String {
        format!("{}/library/busybox:latest", self.registry)
    }
}

/// The Python tool `name` from the venv `hack/pytools.sh` makes (`MEMOBUILD_TEST_PYTOOLS`, set
/// by `hack/test.sh`): `None`, a loud skip, outside CI without it; a failure under CI.
pub fn pytool(name: &str) -> Option<PathBuf> {
    match std::env::var_os("MEMOBUILD_TEST_PYTOOLS") {
        Some(dir) => Some(Path::new(&dir).join(name)),
        None if std::env::var_os("CI").is_some() => {
            panic!("MEMOBUILD_TEST_PYTOOLS not set under CI: run the tests through hack/test.sh")
        }
        None => {
            eprintln!("SKIPPED: MEMOBUILD_TEST_PYTOOLS not set (hack/test.sh sets it)");
            None
        }
    }
}

/// A per-test scratch directory holding a build context and a state directory.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// A containerd namespace of this test's own, for importing and running results.
    pub namespace: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("memobuild-e2e-")
                .tempdir()
                .expect("tempdir"),
            namespace: format!("memobuild-test-{}-{n}", std::process::id()),
        }
    }

    /// The context directory.
    pub fn context(&self) -> PathBuf {
        let p = self.dir.path().join("context");
        std::fs::create_dir_all(&p).expect("mkdir context");
        p
    }

    /// MemoBuild's state directory for this test.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A path in the sandbox (outside the context).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file into the context.
    pub fn write(&self, rel: &str, contents: &str) -> &Self {
        let p = self.context().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, contents).expect("write");
        self
    }

    /// `memobuild build` with the test's containerd and state dir, plus `args`, on the context.
    pub fn build(&self, env: &Env, args: &[&str]) -> Output {
        self.build_with_env(env, args, &[])
    }

    /// [`Sandbox::build`] with extra environment variables for the `memobuild` process.
    pub fn build_with_env(
        &self,
        env: &Env,
        args: &[&str],
        vars: &[(&str, &std::ffi::OsStr)],
    ) -> Output {
        let mut cmd = memobuild();
        cmd.envs(vars.iter().copied());
        cmd.arg("build")
            .arg("--containerd")
            .arg(&env.containerd)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .arg(self.context());
        run(cmd)
    }

    /// Imports an OCI archive into this test's namespace and runs `image`, returning its output.
    ///
    /// Images already in the namespace are removed first, waiting for containerd's garbage
    /// collection: importing over an existing name drops the old image's references while the
    /// new one unpacks, and containerd 1.6 can then collect a layer snapshot the unpack found
    /// and is about to build on ("parent snapshot ... does not exist").
    pub fn ctr_run(&self, env: &Env, archive: &Path, image: &str) -> Output {
        let listed = run(ctr(env, &self.namespace, &["images", "ls", "-q"]));
        assert_ok(&listed, "ctr images ls");
        for name in String::from_utf8_lossy(&listed.stdout).lines() {
            let rm = run(ctr(env, &self.namespace, &["images", "rm", "--sync", name]));
            assert_ok(&rm, "ctr images rm --sync");
        }
        let imp = run(ctr(
            env,
            &self.namespace,
            &["images", "import", &archive.to_string_lossy()],
        ));
        assert_ok(&imp, "ctr images import");
        ctr_run(env, &self.namespace, image, &[])
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Best effort: leave no images behind in containerd.
        if let Some(env) = Env::get_quiet()
            && let Ok(out) = ctr(&env, &self.namespace, &["images", "ls", "-q"]).output()
        {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(&env, &self.namespace, &["images", "rm", name]).output();
            }
        }
    }
}

impl Env {
    fn get_quiet() -> Option<Env> {
        Some(Env {
            containerd: std::env::var("MEMOBUILD_TEST_CONTAINERD").ok()?,
            registry: std::env::var("MEMOBUILD_TEST_REGISTRY").ok()?,
        })
    }
}

/// The `memobuild` binary under test, with inherited `MEMOBUILD_*` settings removed. An
/// embedded containerd it starts is stopped when its build ends (`MEMOBUILD_CONTAINERD_LINGER`
/// 0), so that no test leaves one running for the default five minutes; a test of the
/// lingering passes `--containerd-linger`.
pub fn memobuild() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memobuild"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MEMOBUILD_") && !k.starts_with("MEMOBUILD_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MEMOBUILD_CONTAINERD_LINGER", "0");
    cmd
}

/// `skopeo inspect --raw` of the image `reference` in a plain-HTTP registry, as JSON.
pub fn raw_manifest(reference: &str) -> serde_json::Value {
    let out = run({
        let mut c = Command::new("skopeo");
        c.args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"));
        c
    });
    assert_ok(&out, "skopeo inspect --raw");
    serde_json::from_slice(&out.stdout).expect("manifest JSON")
}

/// The blob `digest` of repository `repo` in the test registry.
pub fn registry_blob(env: &Env, repo: &str, digest: &str) -> Vec<u8> {
    let out = run({
        let mut c = Command::new("curl");
        c.args([
            "-sf",
            &format!("http://{}/v2/{repo}/blobs/{digest}", env.registry),
        ]);
        c
    });
    assert_ok(&out, "GET blob");
    out.stdout
}

/// `ctr` against the test containerd in `namespace`.
pub fn ctr(env: &Env, namespace: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&env.containerd)
        .arg("--namespace")
        .arg(namespace)
        .args(args);
    cmd
}

/// The runc containers (by id) that process `pid` made and that are not cleaned up: their
/// bundle under `/run/memobuild/bundles`, which goes last, names `pid` as owner.
pub fn runc_containers_of(pid: u32) -> Vec<String> {
    let bundles: Vec<String> = std::path::Path::new("/run/memobuild/bundles")
        .read_dir()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|b| {
            std::fs::read_to_string(b.path().join("owner"))
                .is_ok_and(|o| o.trim() == pid.to_string())
        })
        .map(|b| b.file_name().to_string_lossy().into_owned())
        .collect();
    bundles
}

/// The ids runc lists under MemoBuild's runc root.
pub fn runc_listed() -> Vec<String> {
    let mut cmd = Command::new("runc");
    cmd.args(["--root", "/run/memobuild/runc", "list", "-q"]);
    stdout(&run(cmd)).lines().map(str::to_owned).collect()
}

/// Runs `image` (already in containerd's `namespace`) with `ctr run --rm`: its entrypoint and
/// command from the image config, or `cmd` when given, with the config's environment, working
/// directory and user. Returns ctr's exit status, and the process's stdout and stderr.
///
/// The process writes its output to files in a bind-mounted directory (through the host's static
/// busybox, so the image needs no shell), not through ctr's pipes. containerd 1.6's shim waits
/// at most two seconds for its copy of a process's output once the task is deleted, so on a busy
/// machine `ctr run --rm` can lose the tail of it; a file cannot.
pub fn ctr_run(env: &Env, namespace: &str, image: &str, cmd: &[&str]) -> Output {
    let argv: Vec<String> = if cmd.is_empty() {
        image_argv(env, namespace, image)
    } else {
        cmd.iter().map(|a| a.to_string()).collect()
    };
    let io = tempfile::Builder::new()
        .prefix("memobuild-ctr-io-")
        .tempdir()
        .expect("tempdir");
    std::fs::copy("/bin/busybox", io.path().join("busybox")).expect("copy the host's busybox");
    std::fs::set_permissions(
        io.path(),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .expect("chmod");
    let mount = format!(
        "type=bind,src={},dst=/.memobuild-test-io,options=rbind:rw",
        io.path().display()
    );
    let id = unique("run");
    let mut args = vec![
        "run",
        "--rm",
        "--mount",
        &mount,
        image,
        &id,
        "/.memobuild-test-io/busybox",
        "sh",
        "-c",
        "exec \"$@\" >/.memobuild-test-io/stdout 2>/.memobuild-test-io/stderr",
        "sh",
    ];
    args.extend(argv.iter().map(String::as_str));
    let mut out = run(ctr(env, namespace, &args));
    out.stdout = std::fs::read(io.path().join("stdout")).unwrap_or_default();
    let mut stderr = std::fs::read(io.path().join("stderr")).unwrap_or_default();
    stderr.extend_from_slice(&out.stderr);
    out.stderr = stderr;
    out
}

/// The entrypoint and command of `image` in containerd's `namespace`, from its config.
fn image_argv(env: &Env, namespace: &str, image: &str) -> Vec<String> {
    let content = |digest: &str| -> serde_json::Value {
        let got = run(ctr(env, namespace, &["content", "get", digest]));
        assert_ok(&got, &format!("ctr content get {digest}"));
        serde_json::from_slice(&got.stdout).expect("JSON content")
    };
    let listed = run(ctr(
        env,
        namespace,
        &["images", "ls", &format!("name=={image}")],
    ));
    assert_ok(&listed, "ctr images ls");
    let target = stdout(&listed)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{image} is not in namespace {namespace}"))
        .to_string();
    let mut manifest = content(&target);
    if let Some(list) = manifest["manifests"].as_array() {
        let host = list
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .or(list.first())
            .and_then(|m| m["digest"].as_str())
            .unwrap_or_else(|| panic!("{image}: an index without manifests"))
            .to_string();
        manifest = content(&host);
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{image}: a manifest without a config"))
        .to_string();
    let config = content(&config_digest);
    ["Entrypoint", "Cmd"]
        .iter()
        .flat_map(|k| config["config"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Runs a command and captures its output.
pub fn run(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Panics with stdout/stderr when `out` failed.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON progress events of a `--progress json` run.
pub fn progress_events(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The last line of stderr: where the one-line error is.
pub fn error_line(out: &Output) -> String {
    stderr(out).lines().last().unwrap_or_default().to_string()
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// `len` bytes of noise (xorshift from `seed`): data deflate cannot shrink, as most binaries.
#[allow(dead_code)]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A name no other test (or earlier run against the same containerd or registry) uses: for
/// repositories, images, containers and leases.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "e2e-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

/// A Dockerfile of two COPY + RUN pairs, each RUN reading what its COPY brought: an edit of
/// `a.txt` or `b.txt` shows which steps run again.
pub const TWO_COPIES: &str = "ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
COPY a.txt /a.txt
RUN cat /a.txt > /a-copy
COPY b.txt /b.txt
RUN cat /b.txt > /b-copy
";
