//! A real `memobuild daemon` process for the tests, on a unix socket in a sandbox, stopped
//! (SIGTERM, then waited for) on drop; and gRPC clients of its services for what the
//! `memobuild build --addr` client cannot express.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use memobuild_proto::control::control_client::ControlClient;
use memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::{Env, Sandbox, ctr, memobuild, run};

/// How long a daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping daemon may take (its own grace for builds is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// BuildKit's message limit.
const MAX_MESSAGE: usize = 16 << 20;

/// A running `memobuild daemon`.
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    /// The containerd namespace it was told to use, if a test gave one.
    namespace: Option<String>,
    containerd: String,
}

impl Daemon {
    /// Starts `memobuild daemon --addr unix://SANDBOX/mb.sock --state-dir SANDBOX/daemon-state
    /// --containerd $MEMOBUILD_TEST_CONTAINERD EXTRA…`, logging at debug level to
    /// `SANDBOX/daemon.log`, and waits until its socket accepts connections.
    pub fn start(sb: &Sandbox, env: &Env, extra: &[&str]) -> Daemon {
        let socket = sb.path("mb.sock");
        let log = sb.path("daemon.log");
        let file = std::fs::File::create(&log).expect("create daemon.log");
        let mut cmd = memobuild();
        cmd.arg("daemon")
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(sb.path("daemon-state"))
            .arg("--containerd")
            .arg(&env.containerd)
            .args(extra)
            .env("MEMOBUILD_LOG", "memobuild=debug,memobuild_worker=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file);
        let child = cmd.spawn().expect("start memobuild daemon");
        let namespace = extra
            .iter()
            .position(|a| *a == "--namespace")
            .and_then(|i| extra.get(i + 1))
            .map(|s| s.to_string());
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            log,
            namespace,
            containerd: env.containerd.clone(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "memobuild daemon exited ({status}) before listening:\n{}",
                    daemon.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "memobuild daemon did not listen within {START_TIMEOUT:?}:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// `unix:///…/mb.sock`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| i32::try_from(c.id()).expect("pid"))
            .expect("daemon process")
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Sends SIGTERM and waits up to `timeout` for the daemon to exit; `None` if it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        signal(child.id(), libc::SIGTERM);
        wait_timeout(child, timeout)
    }

    /// A gRPC channel to the daemon's socket.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_static("http://localhost")
            .connect_with_connector(UnixConnector(self.socket.clone()))
            .await
            .expect("connect to the daemon")
    }

    /// A `Control` client with BuildKit's message limits.
    pub async fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// An `LLBBridge` client with BuildKit's message limits.
    pub async fn gateway(&self) -> LlbBridgeClient<Channel> {
        LlbBridgeClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Tasks, containers and leases in the daemon's containerd namespace (which the test must
    /// have given it with `--namespace`), and the daemon's runc containers, one `kind id` each.
    pub fn containerd_leftovers(&self) -> Vec<String> {
        let ns = self
            .namespace
            .as_deref()
            .expect("containerd_leftovers needs a daemon started with --namespace");
        let env = Env {
            containerd: self.containerd.clone(),
            registry: String::new(),
        };
        let mut found: Vec<String> = super::runc_containers_of(self.pid() as u32)
            .into_iter()
            .map(|id| format!("runc {id}"))
            .collect();
        for kind in ["tasks", "containers", "leases"] {
            let out = run(ctr(&env, ns, &[kind, "ls", "-q"]));
            assert!(out.status.success(), "ctr {kind} ls: {out:?}");
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                found.push(format!("{kind} {id}"));
            }
        }
        found
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            signal(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let log = self.log();
        if std::thread::panicking() {
            eprintln!("--- daemon log ({})\n{log}", self.log.display());
        }
        // A namespace of the test's own is emptied and removed, so that runs do not pile up
        // snapshots in the shared containerd.
        if let Some(ns) = &self.namespace {
            purge_namespace(&self.containerd, ns);
        }
        // Whatever the test checked, a daemon that panicked (in any task) is a failure.
        if !std::thread::panicking() && log.contains("panicked at") {
            panic!("the daemon panicked:\n{log}");
        }
    }
}

impl Sandbox {
    /// `memobuild build --addr DAEMON ARGS… CONTEXT`, not yet started (for tests that kill it
    /// or run several at once).
    pub fn remote_command(&self, daemon: &Daemon, args: &[&str]) -> Command {
        let mut cmd = remote_command_with_context(daemon, args);
        cmd.arg(self.context());
        cmd
    }

    /// `memobuild build --addr DAEMON ARGS… CONTEXT`, run to the end.
    pub fn build_remote(&self, daemon: &Daemon, args: &[&str]) -> Output {
        run(self.remote_command(daemon, args))
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes everything in containerd namespace `ns`, then the namespace (best effort).
/// Snapshots are left to containerd's garbage collector, after their `gc.root` labels (the
/// engine keeps base layers as roots) are dropped: removing them one by one can fail for good
/// on containerd 1.6, whose collector forgets to unlink a collected child from its parent.
fn purge_namespace(containerd: &str, ns: &str) {
    let env = Env {
        containerd: containerd.to_owned(),
        registry: String::new(),
    };
    // `ctr snapshots ls` has no `-q`: its first column, under a header.
    let ids = |kind: &str| -> Vec<String> {
        let quiet = kind != "snapshots";
        let args: &[&str] = if quiet {
            &[kind, "ls", "-q"]
        } else {
            &[kind, "ls"]
        };
        ctr(&env, ns, args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .skip(usize::from(!quiet))
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let quietly = |args: &[&str]| {
        let _ = ctr(&env, ns, args).output();
    };
    for id in ids("tasks") {
        quietly(&["tasks", "kill", "-s", "SIGKILL", &id]);
        quietly(&["tasks", "rm", "-f", &id]);
    }
    for kind in ["containers", "images", "leases"] {
        for id in ids(kind) {
            quietly(&[kind, "rm", &id]);
        }
    }
    for key in ids("snapshots") {
        quietly(&["snapshots", "label", &key, "containerd.io/gc.root="]);
    }
    for digest in ids("content") {
        quietly(&["content", "rm", &digest]);
    }
    // Removing a lease synchronously runs the collector.
    let kick = format!("purge-{}", std::process::id());
    quietly(&["leases", "create", "--id", &kick]);
    quietly(&["leases", "rm", "--sync", &kick]);
    let _ = Command::new("ctr")
        .args(["--address", containerd, "namespaces", "rm", ns])
        .output();
}

/// Dials one unix socket whatever URI tonic asks for.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// `memobuild build --addr DAEMON ARGS…`, the context among `ARGS` (a URL, `-`).
pub fn remote_command_with_context(daemon: &Daemon, args: &[&str]) -> Command {
    let mut cmd = memobuild();
    cmd.arg("build")
        .arg("--addr")
        .arg(daemon.addr())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// MemoBuild's frontend as a `# syntax=` image in the test registry: this build of `memobuild`
/// (stripped, with the shared libraries it links, on scratch; the hack/frontend-image.sh image
/// is the same stage with a static binary), built and pushed with `memobuild build --tag`
/// once per test process. Returns its reference.
pub fn frontend_image(env: &Env) -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let reference = format!(
                "{}/memobuild/dockerfile:test-{}",
                env.registry,
                std::process::id()
            );
            let sb = Sandbox::new();
            let ctx = sb.context();
            let bin = ctx.join("memobuild");
            std::fs::copy(env!("CARGO_BIN_EXE_memobuild"), &bin).expect("copy memobuild");
            let strip = run({
                let mut c = Command::new("strip");
                c.arg(&bin);
                c
            });
            assert!(strip.status.success(), "strip: {strip:?}");
            // The dynamic loader and the libraries `ldd` names, at the same paths.
            let ldd = run({
                let mut c = Command::new("ldd");
                c.arg(&bin);
                c
            });
            let mut libs = Vec::new();
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                let path = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                if let Some(p) = path.filter(|p| p.starts_with('/')) {
                    libs.push(p.to_owned());
                }
            }
            assert!(!libs.is_empty(), "ldd found no libraries: {ldd:?}");
            for lib in &libs {
                let dest = ctx.join("rootfs").join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
                std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
            }
            std::fs::write(
                ctx.join("Dockerfile"),
                "FROM scratch\nCOPY rootfs/ /\nCOPY memobuild /bin/memobuild\n\
                 LABEL moby.buildkit.frontend.network.none=\"true\"\n\
                 LABEL moby.buildkit.frontend.caps=\"moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts\"\n\
                 ENTRYPOINT [\"/bin/memobuild\", \"frontend\"]\n",
            )
            .expect("write Dockerfile");
            let out = sb.build(env, &["--tag", &reference, "--push"]);
            super::assert_ok(&out, "building the frontend image");
            reference
        })
        .clone()
}
