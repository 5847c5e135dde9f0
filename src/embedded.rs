//! Which containerd a build talks to, and the embedded one MemoBuild starts when there is none.
//!
//! `--containerd ADDR` (or `MEMOBUILD_CONTAINERD`) is used as given. Without it the system's
//! `/run/containerd/containerd.sock` is used if it answers; otherwise (or with
//! `--containerd embedded`) MemoBuild runs a private containerd from `PATH` under
//! `<state-dir>/containerd/` (own root, state, socket and config: no CRI, overlayfs) when a
//! build first needs one, and keeps it for the next build for `--containerd-linger` (5 minutes
//! by default) after the last build using it ends, as buildkitd stays up between builds: its
//! start costs some 40 ms of every build that runs a step otherwise. A small process of
//! `memobuild` itself ([`linger`]) watches the idle time and then stops it: tasks killed and
//! deleted through the API, SIGTERM, SIGKILL after [`STOP_TIMEOUT`], then any shim serving its
//! socket, any process whose root lies under its directory and any mount left there are
//! removed. `--containerd-linger 0` (and an interrupted build) stops it at once instead.
//!
//! Several builds with the same state directory share one instance, reference-counted with
//! `flock(2)`: each build holds a shared lock on `users.lock` while it runs; starting and stopping
//! happen under an exclusive `control.lock`, and the build that leaves finds out whether it was
//! the last by trying an exclusive lock on `users.lock`; the last one writes to `idle` when
//! the instance may stop, which the watcher (holding `linger.lock` while it runs) reads. The kernel drops the
//! locks of a process that dies, so a crashed build never leaves a count behind; an instance it
//! leaves running is reused (and then stopped) by the next build. The daemon runs in its own
//! process group so a Ctrl-C in the terminal reaches only `memobuild`, which then stops it (if
//! it is the last user) before exiting.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Mutex;

/// The system containerd's socket, used when it answers and no address is given.
pub const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";
/// The `--containerd` value that asks for the embedded containerd even if the system one answers.
pub const EMBEDDED: &str = "embedded";
/// How long the embedded containerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the embedded containerd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two checks of whether it answers (starting) or is gone (stopping).
const POLL_MAX: Duration = Duration::from_millis(50);

/// The containerd of one build.
pub enum Containerd {
    /// Given with `--containerd`, or the system's.
    External(PathBuf),
    /// MemoBuild's own, under the state directory.
    Embedded(Embedded),
}

impl Containerd {
    /// Picks the containerd for a build: `addr` if given (`unix:///path` or a path; `embedded`
    /// forces the embedded one), else the system's if it answers, else the embedded one, started
    /// if no other build of `state_dir` runs it already.
    pub async fn select(
        addr: Option<&str>,
        state_dir: &memobuild_worker::StateDir,
    ) -> anyhow::Result<Containerd> {
        match addr {
            Some(EMBEDDED) => {}
            Some(a) => {
                return Ok(Containerd::External(PathBuf::from(
                    a.strip_prefix("unix://").unwrap_or(a),
                )));
            }
            None if answers(Path::new(SYSTEM_SOCKET)).await => {
                return Ok(Containerd::External(PathBuf::from(SYSTEM_SOCKET)));
            }
            None => {}
        }
        Ok(Containerd::Embedded(
            Embedded::start(&state_dir.embedded_containerd()).await?,
        ))
    }

    /// The socket to connect to.
    pub fn socket(&self) -> &Path {
        match self {
            Containerd::External(p) => p,
            Containerd::Embedded(e) => &e.socket,
        }
    }

    /// Ends this build's use. An embedded containerd no other build uses is stopped after
    /// `linger` without a build (at once when it is zero).
    pub async fn release(self, linger: Duration) {
        if let Containerd::Embedded(e) = self {
            e.release(linger).await;
        }
    }
}

/// Whether a containerd answers `Version` on `socket` within a few seconds.
async fn answers(socket: &Path) -> bool {
    if !socket.exists() {
        return false;
    }
    let probe = memobuild_worker::containerd::Containerd::connect(socket, "default");
    matches!(
        tokio::time::timeout(Duration::from_secs(5), probe).await,
        Ok(Ok(_))
    )
}

/// This build's share of the embedded containerd.
pub struct Embedded {
    socket: PathBuf,
    /// Shared with the signal handler, which releases the instance on SIGINT/SIGTERM; `None`
    /// once released.
    share: Arc<Mutex<Option<Share>>>,
    on_signal: tokio::task::JoinHandle<()>,
}

/// What releasing needs: where the instance lives and our shared lock on its `users.lock`.
struct Share {
    paths: Paths,
    user: Flock<File>,
    /// The daemon, if this process started it (so it can be reaped).
    child: Option<tokio::process::Child>,
}

impl Embedded {
    async fn start(dir: &Path) -> anyhow::Result<Embedded> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve `{}`", dir.display()))?;
        let paths = Paths::new(&dir);
        let control = lock(&paths.control_lock, FlockArg::LockExclusive).await?;
        let user = lock(&paths.users_lock, FlockArg::LockShared).await?;
        let child = if running_pid(&paths).is_some() && answers(&paths.socket).await {
            tracing::info!("reusing embedded containerd at {}", paths.socket.display());
            None
        } else {
            // Whatever an instance that died (or hangs) left behind goes first.
            stop_daemon(&paths, None).await;
            Some(spawn(&paths).await?)
        };
        drop(control);
        let socket = paths.socket.clone();
        let share = Arc::new(Mutex::new(Some(Share { paths, user, child })));
        let on_signal = tokio::spawn(release_on_signal(share.clone()));
        Ok(Embedded {
            socket,
            share,
            on_signal,
        })
    }

    async fn release(self, linger: Duration) {
        // Holding the lock throughout: a signal now waits (and is then dropped with its task)
        // instead of exiting halfway through the stop; a stop the signal handler began is
        // finished by it, and the process exits there.
        let mut share = self.share.lock().await;
        if let Some(s) = share.take() {
            s.release(linger).await;
        }
        self.on_signal.abort();
    }
}

/// On SIGINT or SIGTERM: release the instance (stopping it if this build was its last user), then
/// exit as the signal would have. Holding the share's lock until the exit keeps the build's own
/// [`Embedded::release`] from racing ahead and returning an error caused by the stop.
async fn release_on_signal(share: Arc<Mutex<Option<Share>>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    };
    let mut guard = share.lock().await;
    if let Some(s) = guard.take() {
        // An interrupted build may leave a step running in it: stop it now.
        s.release(Duration::ZERO).await;
    }
    eprintln!("\nerror: interrupted");
    std::process::exit(code);
}

impl Share {
    async fn release(self, linger: Duration) {
        let Share { paths, user, child } = self;
        let control = match lock(&paths.control_lock, FlockArg::LockExclusive).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("embedded containerd left running: {e:#}");
                return;
            }
        };
        // Nobody can take a share while we hold the control lock, so after dropping ours an
        // exclusive lock succeeds exactly when no other build uses the instance.
        drop(user);
        match try_lock(&paths.users_lock, FlockArg::LockExclusiveNonblock) {
            Ok(Some(_last)) if linger.is_zero() => stop_daemon(&paths, child).await,
            Ok(Some(_last)) => {
                // It outlives this process (its own process group, output to its log); the
                // watcher stops it.
                drop(child);
                if let Err(e) = keep(&paths, linger) {
                    tracing::warn!("embedded containerd stopped instead of kept: {e:#}");
                    stop_daemon(&paths, None).await;
                }
            }
            Ok(None) => tracing::info!("embedded containerd still used by another build"),
            Err(e) => tracing::warn!("embedded containerd left running: {e:#}"),
        }
        drop(control);
    }
}

/// Where an embedded instance keeps its things.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Paths {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    control_lock: PathBuf,
    users_lock: PathBuf,
    /// When it may stop, if no build uses it then (milliseconds since the epoch).
    idle: PathBuf,
    /// Held by the watcher that stops it when idle ([`linger`]).
    linger_lock: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
            config: dir.join("config.toml"),
            socket: socket_path(dir),
            pid: dir.join("containerd.pid"),
            log: dir.join("containerd.log"),
            control_lock: dir.join("control.lock"),
            users_lock: dir.join("users.lock"),
            idle: dir.join("idle"),
            linger_lock: dir.join("linger.lock"),
        }
    }
}

/// Keeps the instance running for `linger`: writes the moment it may stop (each build that
/// leaves sets it anew, with its own `--containerd-linger`) and starts a watcher unless one
/// runs already.
fn keep(p: &Paths, linger: Duration) -> anyhow::Result<()> {
    set_deadline(p, linger)?;
    if try_lock(&p.linger_lock, FlockArg::LockExclusiveNonblock)?.is_none() {
        return Ok(());
    }
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find the memobuild executable")?;
    std::process::Command::new(exe)
        .arg(LINGER_COMMAND)
        .arg(&p.dir)
        .arg(humantime::format_duration(linger).to_string())
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Not ours to wait for, and out of reach of the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
        .context("cannot start the watcher of the embedded containerd")?;
    Ok(())
}

/// The hidden `memobuild` subcommand that runs [`linger`].
pub const LINGER_COMMAND: &str = "embedded-containerd-linger";

/// How often the watcher looks again: whether the instance's directory is still there, and
/// whether a build still uses it.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The watcher of the embedded containerd under `dir`: once the moment the last build set
/// ([`keep`]; `linger` from now if none did) has passed with no build using it, stops it.
/// Returns at once if another watcher runs, and when the instance is gone.
pub async fn linger(dir: &Path, linger: Duration) -> anyhow::Result<()> {
    let p = Paths::new(dir);
    let Some(_watching) = try_lock(&p.linger_lock, FlockArg::LockExclusiveNonblock)? else {
        return Ok(());
    };
    if !p.idle.exists() {
        set_deadline(&p, linger)?;
    }
    let Some(pid) = running_pid(&p) else {
        return Ok(());
    };
    loop {
        if !p.dir.exists() {
            // Its directory was removed under it (a state directory deleted): nothing can
            // reach it any more, so it goes now instead of running on forever.
            tracing::warn!("the embedded containerd's directory is gone; stopping it");
            stop_instance(&p, is_ours(pid, &p).then_some(pid), None).await;
            return Ok(());
        }
        if running_pid(&p).is_none() {
            return Ok(());
        }
        let left = time_left(&p);
        if !left.is_zero() {
            tokio::time::sleep(left.min(WATCH_INTERVAL)).await;
            continue;
        }
        let control = lock(&p.control_lock, FlockArg::LockExclusive).await?;
        // A build that holds a share sets the moment again when it ends.
        if try_lock(&p.users_lock, FlockArg::LockExclusiveNonblock)?.is_some()
            && time_left(&p).is_zero()
        {
            tracing::info!("stopping the idle embedded containerd");
            stop_daemon(&p, None).await;
            let _ = std::fs::remove_file(&p.idle);
            return Ok(());
        }
        drop(control);
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Records that the instance may stop `linger` from now.
fn set_deadline(p: &Paths, linger: Duration) -> anyhow::Result<()> {
    let deadline = now_millis().saturating_add(linger.as_millis());
    write_atomically(&p.idle, deadline.to_string().as_bytes())
}

/// How long until the instance may stop (zero once that moment has passed, or if unknown).
fn time_left(p: &Paths) -> Duration {
    let deadline: u128 = std::fs::read_to_string(&p.idle)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let ms = deadline.saturating_sub(now_millis());
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `DIR/containerd.sock`, or a name in `/tmp` derived from DIR when that path would not fit a
/// socket address (108 bytes, and containerd adds `.ttrpc` for its second socket).
fn socket_path(dir: &Path) -> PathBuf {
    let p = dir.join("containerd.sock");
    if p.as_os_str().len() < 100 {
        return p;
    }
    // FNV-1a: stable across builds of memobuild, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    PathBuf::from(format!("/tmp/memobuild-containerd-{h:016x}.sock"))
}

/// containerd's config (v2, as containerd 1.6 reads it): its own root, state and socket; no CRI
/// and no snapshotters that cannot work on a plain filesystem. Clients ask for `overlayfs`.
fn config_toml(p: &Paths) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"# Written by memobuild for its embedded containerd; rewritten at each start.
version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
        root = q(&p.dir.join("root")),
        state = q(&p.dir.join("state")),
        socket = q(&p.socket),
        opt = q(&p.dir.join("opt")),
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `containerd` in `PATH`.
fn find_containerd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("containerd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no containerd to build with: `{SYSTEM_SOCKET}` does not answer and `containerd` \
                 is not installed (not in PATH) to start one; install containerd and runc \
                 (Debian: `apt-get install containerd`) or pass --containerd ADDR"
            )
        })
}

/// Starts the daemon and waits until it answers.
async fn spawn(p: &Paths) -> anyhow::Result<tokio::process::Child> {
    let bin = find_containerd()?;
    write_atomically(&p.config, config_toml(p).as_bytes())?;
    let _ = std::fs::remove_file(&p.socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("cannot open `{}`", p.log.display()))?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--config")
        .arg(&p.config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal is ours to handle, not containerd's.
        .process_group(0);
    // runc and the shims live in sbin, which not every PATH has.
    cmd.env("PATH", sbin_path());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", bin.display()))?;
    let pid = child.id().context("containerd exited at once")?;
    write_atomically(&p.pid, pid.to_string().as_bytes())?;

    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    // containerd answers some 40 ms after it is spawned: poll often at first, then less.
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(&p.pid);
            bail!(
                "the embedded containerd exited ({status}) while starting: {}",
                log_tail(&p.log)
            );
        }
        if answers(&p.socket).await {
            tracing::info!("embedded containerd ready at {}", p.socket.display());
            return Ok(child);
        }
        if tokio::time::Instant::now() > deadline {
            stop_daemon(p, Some(child)).await;
            bail!(
                "the embedded containerd did not answer on `{}` within {}s: {}",
                p.socket.display(),
                START_TIMEOUT.as_secs(),
                log_tail(&p.log)
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// The last lines of containerd's log, on one line, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    format!("log `{}`: {tail}", log.display())
}

/// Stops the instance and everything it left: tasks through the API, the daemon (SIGTERM, then
/// SIGKILL), stray shims and container processes, mounts under its directory, its socket and pid
/// file. Safe when nothing runs.
async fn stop_daemon(p: &Paths, child: Option<tokio::process::Child>) {
    stop_instance(p, running_pid(p), child).await;
}

/// [`stop_daemon`] of the instance `pid` (when one runs), which its pid file may no longer
/// name (its directory removed under it).
async fn stop_instance(p: &Paths, pid: Option<Pid>, child: Option<tokio::process::Child>) {
    if pid.is_some()
        && let Err(e) = tokio::time::timeout(Duration::from_secs(20), delete_tasks(&p.socket)).await
    {
        tracing::warn!("deleting the embedded containerd's tasks: {e}");
    }
    if let Some(pid) = pid {
        terminate(pid, p, child).await;
    }
    let (dir, socket) = (p.dir.clone(), p.socket.clone());
    let swept = tokio::task::spawn_blocking(move || {
        kill_strays(&dir, &socket);
        unmount_under(&dir);
    })
    .await;
    if let Err(e) = swept {
        tracing::warn!("cleaning up after the embedded containerd: {e}");
    }
    for f in [&p.pid, &p.socket] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_file(PathBuf::from(format!("{}.ttrpc", p.socket.display())));
}

/// The daemon's pid, if the pid file names a live containerd started with our config.
fn running_pid(p: &Paths) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(&p.pid).ok()?.trim().parse().ok()?;
    is_ours(Pid::from_raw(pid), p).then(|| Pid::from_raw(pid))
}

/// Whether `pid` is a containerd started with our config (the pid may have been reused).
fn is_ours(pid: Pid, p: &Paths) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .any(|a| a == p.config.as_os_str().as_encoded_bytes())
    })
}

/// SIGTERM, wait up to [`STOP_TIMEOUT`], SIGKILL.
async fn terminate(pid: Pid, p: &Paths, mut child: Option<tokio::process::Child>) {
    let _ = kill(pid, Signal::SIGTERM);
    let gone = |child: &mut Option<tokio::process::Child>| match child {
        // Our own child stays a zombie (and in /proc) until reaped.
        Some(c) => !matches!(c.try_wait(), Ok(None)),
        None => !is_ours(pid, p),
    };
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    // It exits a few milliseconds after SIGTERM when no task runs.
    let mut pause = Duration::from_millis(1);
    while !gone(&mut child) {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("embedded containerd ignored SIGTERM, killing it");
            let _ = kill(pid, Signal::SIGKILL);
            if let Some(c) = child.as_mut() {
                let _ = c.wait().await;
            }
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Kills and deletes every task in every namespace, so the shims unmount their rootfs and exit.
async fn delete_tasks(socket: &Path) -> anyhow::Result<()> {
    use containerd_client::services::v1::{
        DeleteTaskRequest, KillRequest, ListNamespacesRequest, ListTasksRequest,
        namespaces_client::NamespacesClient, tasks_client::TasksClient,
    };
    use containerd_client::with_namespace;
    use tonic::Request;

    let channel = containerd_client::connect(socket).await?;
    let namespaces = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await?
        .into_inner()
        .namespaces;
    let mut tasks = TasksClient::new(channel);
    for ns in namespaces {
        let ns = ns.name.as_str();
        let req = with_namespace!(ListTasksRequest::default(), ns);
        for t in tasks.list(req).await?.into_inner().tasks {
            let kill = KillRequest {
                container_id: t.id.clone(),
                signal: 9,
                all: true,
                ..Default::default()
            };
            let _ = tasks.kill(with_namespace!(kill, ns)).await;
            // `Delete` fails while the process is still being reaped; try for a moment.
            for _ in 0..20 {
                let del = DeleteTaskRequest {
                    container_id: t.id.clone(),
                };
                match tasks.delete(with_namespace!(del, ns)).await {
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// Kills what outlived the daemon: shims serving `socket` and processes whose root directory is
/// under `dir` (containers).
fn kill_strays(dir: &Path, socket: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let root = std::fs::read_link(entry.path().join("root")).ok();
        let shim = is_shim_of(&cmdline, socket);
        if shim || root.is_some_and(|r| r.starts_with(dir) && r != dir) {
            tracing::warn!("killing process {pid} left by the embedded containerd");
            if shim {
                delete_runc_state(&cmdline);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The runc v2 shim keeps runc's state in `/run/containerd/runc/<namespace>` whatever
/// containerd's state dir; `runc delete --force` clears it (and kills the container), so a later
/// container with the same namespace and id does not collide.
fn delete_runc_state(shim_cmdline: &[u8]) {
    let args: Vec<String> = shim_cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    if let (Some(ns), Some(id)) = (flag("-namespace"), flag("-id")) {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(Path::new("/run/containerd/runc").join(&ns))
            .args(["delete", "--force", &id])
            .env("PATH", sbin_path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `PATH` plus the sbin directories, where runc and the shims live on Debian.
fn sbin_path() -> std::ffi::OsString {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    path
}

/// Whether a NUL-separated command line is a containerd shim with `-address socket`.
fn is_shim_of(cmdline: &[u8], socket: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_shim = args
        .first()
        .is_some_and(|a| a.windows(15).any(|w| w == b"containerd-shim"));
    is_shim
        && args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == socket.as_os_str().as_encoded_bytes())
}

/// Unmounts everything mounted under `dir`, deepest first (lazily if busy).
fn unmount_under(dir: &Path) {
    use nix::mount::{MntFlags, umount2};
    for _pass in 0..3 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points = mounts_under(&info, dir);
        if points.is_empty() {
            return;
        }
        points.sort_by(|a, b| b.cmp(a));
        for m in points {
            if umount2(&m, MntFlags::empty()).is_err() {
                let _ = umount2(&m, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Mount points in a `/proc/self/mountinfo` text that are `dir` or under it.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = s
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let (b'\\', Some(c)) = (b[i], octal) {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write `{}`", path.display()))
}

fn open_lock(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open `{}`", path.display()))
}

/// A blocking `flock`, waited for on a blocking thread.
async fn lock(path: &Path, arg: FlockArg) -> anyhow::Result<Flock<File>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = open_lock(&path)?;
        Flock::lock(f, arg)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock `{}`: {e}", path.display()))
    })
    .await
    .context("lock task failed")?
}

/// A non-blocking `flock`: `None` if someone else holds a conflicting lock.
fn try_lock(path: &Path, arg: FlockArg) -> anyhow::Result<Option<Flock<File>>> {
    match Flock::lock(open_lock(path)?, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => bail!("cannot lock `{}`: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_stays_in_the_dir_unless_too_long() {
        assert_eq!(
            socket_path(Path::new("/var/lib/memobuild/containerd")),
            Path::new("/var/lib/memobuild/containerd/containerd.sock")
        );
        let long = PathBuf::from(format!("/{}/containerd", "d".repeat(100)));
        let s = socket_path(&long);
        assert!(
            s.to_string_lossy()
                .starts_with("/tmp/memobuild-containerd-"),
            "{s:?}"
        );
        assert!(s.as_os_str().len() < 100);
        assert_eq!(s, socket_path(&long), "stable");
        assert_ne!(s, socket_path(&long.join("x")));
    }

    #[test]
    fn config_names_the_instance_paths_and_disables_cri() {
        let p = Paths::new(Path::new("/s/containerd"));
        let c = config_toml(&p);
        assert!(c.contains("root = \"/s/containerd/root\"\n"), "{c}");
        assert!(c.contains("state = \"/s/containerd/state\"\n"), "{c}");
        assert!(
            c.contains("address = \"/s/containerd/containerd.sock\"\n"),
            "{c}"
        );
        assert!(c.contains("\"io.containerd.grpc.v1.cri\""), "{c}");
        assert_eq!(toml_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn shims_are_recognised_by_their_socket() {
        let sock = Path::new("/s/containerd/containerd.sock");
        let shim = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0memobuild\0-id\0x\0-address\0/s/containerd/containerd.sock\0";
        assert!(is_shim_of(shim, sock));
        assert!(!is_shim_of(shim, Path::new("/other.sock")));
        assert!(!is_shim_of(
            b"sleep\0-address\0/s/containerd/containerd.sock\0",
            sock
        ));
    }

    #[test]
    fn mountinfo_points_under_a_dir() {
        let info = "\
36 35 98:0 / / rw - ext4 /dev/root rw
40 36 0:40 / /s/containerd/state/x/rootfs rw - overlay overlay rw
41 36 0:41 / /s/containerd/with\\040space rw - tmpfs tmpfs rw
42 36 0:42 / /s/containerd2 rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_under(info, Path::new("/s/containerd")),
            [
                PathBuf::from("/s/containerd/state/x/rootfs"),
                PathBuf::from("/s/containerd/with space")
            ]
        );
    }

    #[test]
    fn one_user_at_a_time_can_be_last() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.lock");
        let a = try_lock(&users, FlockArg::LockSharedNonblock).unwrap();
        let b = try_lock(&users, FlockArg::LockSharedNonblock).unwrap();
        assert!(a.is_some() && b.is_some());
        drop(a);
        assert!(
            try_lock(&users, FlockArg::LockExclusiveNonblock)
                .unwrap()
                .is_none(),
            "b still uses it"
        );
        drop(b);
        assert!(
            try_lock(&users, FlockArg::LockExclusiveNonblock)
                .unwrap()
                .is_some()
        );
    }
}
