//! Running one process with runc directly, as BuildKit's OCI worker does: the snapshot's mounts
//! go on a bundle of our own and `runc run` is the process's parent, its stdio the process's.
//!
//! This skips containerd's container record, its shim and the task service, about 100 ms of a
//! step on this machine (`ctr run` 130-170 ms, `runc run` 30-40 ms for the same `echo`). The
//! task-service path ([`super::run`]) stays for when runc is not on `PATH`, or when
//! `MEMOBUILD_EXECUTOR=containerd` asks for it.
//!
//! runc's state lives under [`RUNC_ROOT`], bundles under [`BUNDLES`]: both on `/run`, so a
//! reboot forgets them. Each bundle names the process that made it; [`sweep`] removes the
//! containers and bundles of processes that are gone (a build killed with SIGKILL).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::mount::MountGuard;
use super::run::{AbortOnDrop, DRAIN_TIMEOUT, KILL_TIMEOUT, MountpointCleanup, pump};
use super::{Error, OutputStream, Result, RunRequest, spec};

/// runc's `--root`: where it keeps the state of running containers.
pub const RUNC_ROOT: &str = "/run/memobuild/runc";
/// Where each run's bundle (its `config.json` and mounted rootfs) is made.
pub const BUNDLES: &str = "/run/memobuild/bundles";
/// The file in a bundle naming the process that made it.
const OWNER: &str = "owner";
/// The environment variable choosing the executor: `runc` or `containerd`.
const EXECUTOR_VAR: &str = "MEMOBUILD_EXECUTOR";

/// What runs a step's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Executor {
    /// `runc run` on a bundle of ours, with this binary.
    Runc(PathBuf),
    /// A containerd container and task (through its runc shim).
    Containerd,
}

/// The executor of this process: `MEMOBUILD_EXECUTOR` when set, runc when it is on `PATH`,
/// containerd's task service otherwise.
pub(crate) fn executor() -> Result<&'static Executor> {
    static CHOSEN: OnceLock<std::result::Result<Executor, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            choose(
                std::env::var(EXECUTOR_VAR).ok().as_deref(),
                find_on_path("runc"),
            )
        })
        .as_ref()
        .map_err(|reason| Error::Executor {
            reason: reason.clone(),
        })
}

fn choose(asked: Option<&str>, runc: Option<PathBuf>) -> std::result::Result<Executor, String> {
    match (asked.unwrap_or_default(), runc) {
        ("containerd", _) => Ok(Executor::Containerd),
        ("runc" | "", Some(path)) => Ok(Executor::Runc(path)),
        ("", None) => Ok(Executor::Containerd),
        ("runc", None) => Err(format!(
            "{EXECUTOR_VAR}=runc, but there is no `runc` on PATH (Debian: apt-get install runc)"
        )),
        (other, _) => Err(format!(
            "{EXECUTOR_VAR}=`{other}` is not an executor: use `runc` or `containerd`"
        )),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `req` with runc as container `id` and returns the exit code (128 + signal when killed
/// by a signal). Cleans up (container, mounts, bundle) on every path, also when this future is
/// dropped (in a spawned task).
pub(crate) async fn run(runc: &Path, req: RunRequest, id: &str, namespace: &str) -> Result<i32> {
    let bundle = Bundle::create(id)?;
    let rootfs = match MountGuard::mount_in(&req.rootfs, &bundle.dir) {
        Ok(r) => r,
        Err(e) => {
            bundle.remove();
            return Err(e);
        }
    };
    let (rootfs_path, bundle_dir) = (rootfs.path().display().to_string(), bundle.dir.clone());
    let guard = RunGuard {
        runc: runc.to_path_buf(),
        id: id.to_owned(),
        rootfs: Some(rootfs),
        bundle: Some(bundle),
    };

    let mut spec = spec::build(&req, id, namespace);
    spec.root.path = rootfs_path;
    spec::add_env(&mut spec.process, &req.secret_env);
    let config = serde_json::to_vec(&spec).map_err(|source| Error::Spec {
        id: id.to_owned(),
        source,
    })?;
    let config_path = bundle_dir.join("config.json");
    // A spec with secrets never touches a disk: runc reads it from a FIFO.
    let _feed = if req.secret_env.is_empty() {
        write_private(&config_path, &config)?;
        None
    } else {
        Some(ConfigFeed::start(&config_path, config)?)
    };

    let created_mountpoints = MountpointCleanup::before(&req);
    let log = bundle_dir.join("log.json");
    let stdio = req.stdio.as_ref().and_then(|s| s.take());
    let mut command = Command::new(runc);
    command
        .arg("--root")
        .arg(RUNC_ROOT)
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--bundle")
        .arg(&bundle_dir)
        .arg(id)
        .stdin(if stdio.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not in our process group: a terminal's Ctrl-C reaches MemoBuild, which cancels the
        // build and kills the container itself.
        .process_group(0);
    let mut child = command.spawn().map_err(|e| {
        Error::io(
            format!("container `{id}`: starting `{}`", runc.display()),
            e,
        )
    })?;

    let mut readers = Vec::with_capacity(2);
    // Held to the end of the run: dropping it stops feeding the process's stdin.
    let mut stdin_feed = None;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    match stdio {
        Some(io) => {
            let (mut from_caller, mut to_caller) = tokio::io::split(io);
            if let Some(mut stdin) = child.stdin.take() {
                stdin_feed = Some(AbortOnDrop(tokio::spawn(async move {
                    if let Err(e) = tokio::io::copy(&mut from_caller, &mut stdin).await {
                        tracing::debug!(error = %e, "copying to a process's stdin ended");
                    }
                })));
            }
            if let Some(mut stdout) = stdout {
                readers.push(AbortOnDrop(tokio::spawn(async move {
                    if let Err(e) = tokio::io::copy(&mut stdout, &mut to_caller).await {
                        tracing::debug!(error = %e, "copying a process's stdout ended");
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_caller).await;
                })));
            }
        }
        None => readers.extend(stdout.map(|o| pumped(o, OutputStream::Stdout, &req.output))),
    }
    readers.extend(stderr.map(|e| pumped(e, OutputStream::Stderr, &req.output)));

    let cancel = req.cancel.clone().unwrap_or_default();
    let status = tokio::select! {
        status = child.wait() => Some(status),
        () = cancel.cancelled() => None,
    };
    let Some(status) = status else {
        guard.kill(&mut child).await;
        drop(guard.finish(true).await);
        created_mountpoints.remove_created();
        return Err(Error::Cancelled { id: id.to_owned() });
    };
    // The process and everything it started are gone with its PID namespace; what they wrote
    // is in the pipes.
    for r in &mut readers {
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut r.0).await.is_err() {
            tracing::warn!(container = %id, "output did not reach EOF in time");
        }
    }
    drop((readers, stdin_feed));
    let failure = runc_error(&log);
    // `runc run` deletes its container when the process exits; only a runc that did not exit
    // by itself may have left one.
    let exited = status.as_ref().is_ok_and(|s| s.code().is_some());
    let finished = guard.finish(!exited).await;
    created_mountpoints.remove_created();
    let status = status.map_err(|e| Error::io(format!("container `{id}`: waiting for runc"), e))?;
    finished?;
    match status.code() {
        // runc's own failures (a missing executable, a bad mount) are in its log; the
        // process's exit code is runc's otherwise.
        Some(code) if code != 0 && failure.is_some() => Err(Error::Runtime {
            id: id.to_owned(),
            message: failure.unwrap_or_default(),
        }),
        Some(code) => Ok(code),
        None => Err(Error::Runtime {
            id: id.to_owned(),
            message: format!("runc ended without an exit code ({status})"),
        }),
    }
}

/// A task sending what `reader` gives to `out` as `stream`, aborted when dropped.
fn pumped(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    stream: OutputStream,
    out: &Option<mpsc::Sender<(OutputStream, Vec<u8>)>>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(pump(reader, stream, out.clone())))
}

/// Hands a spec to runc through a FIFO at the bundle's `config.json`. The writer polls for
/// runc's read end (a blocking open would wait forever should runc fail before it reads) and
/// gives up when dropped.
struct ConfigFeed {
    stop: Arc<AtomicBool>,
}

impl ConfigFeed {
    /// How often the writer looks for a reader.
    const POLL: Duration = Duration::from_millis(1);

    fn start(path: &Path, config: Vec<u8>) -> Result<Self> {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::io(format!("creating FIFO `{}`", path.display()), e.into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (path, flag) = (path.to_path_buf(), stop.clone());
        std::thread::Builder::new()
            .name("memobuild-spec".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    // ENXIO until runc opens the read end.
                    let opened = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&path);
                    let Ok(mut fifo) = opened else {
                        std::thread::sleep(Self::POLL);
                        continue;
                    };
                    let blocking = nix::fcntl::fcntl(
                        &fifo,
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                    );
                    // EPIPE if runc stops reading: it reports its own error.
                    let written = blocking
                        .map_err(std::io::Error::from)
                        .and_then(|_| std::io::Write::write_all(&mut fifo, &config));
                    if let Err(e) = written {
                        tracing::debug!(error = %e, "handing the spec to runc");
                    }
                    return;
                }
            })
            .map_err(|e| Error::io("starting the spec writer", e))?;
        Ok(ConfigFeed { stop })
    }
}

impl Drop for ConfigFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The first error runc logged (`--log-format json`), if any.
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = entry.get("level")?.as_str()?;
        matches!(level, "error" | "fatal" | "panic")
            .then(|| entry.get("msg")?.as_str().map(str::to_owned))?
    })
}

/// A run's bundle directory: `config.json`, runc's log, the owner's pid and the rootfs mount.
#[derive(Debug)]
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn create(id: &str) -> Result<Self> {
        let dir = Path::new(BUNDLES).join(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating bundle `{}`", dir.display()), e))?;
        write_private(&dir.join(OWNER), std::process::id().to_string().as_bytes())?;
        Ok(Bundle { dir })
    }

    /// Removes the bundle's files and directory; never recursively, so that a rootfs still
    /// mounted in it is left alone (the directory stays and a later sweep retries).
    fn remove(&self) {
        for name in ["config.json", "log.json", OWNER] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::debug!(bundle = %self.dir.display(), error = %e, "bundle not removed");
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| Error::io(format!("writing `{}`", path.display()), e))
}

/// Owns a run's container, rootfs mount and bundle until they are cleaned up: inline by
/// [`RunGuard::finish`], or in a spawned task if the run's future is dropped.
struct RunGuard {
    runc: PathBuf,
    id: String,
    rootfs: Option<MountGuard>,
    bundle: Option<Bundle>,
}

impl RunGuard {
    /// Kills the container and waits (briefly) for runc to see it exit.
    async fn kill(&self, child: &mut Child) {
        let _ = runc_command(&self.runc, ["kill", self.id.as_str(), "KILL"]).await;
        if tokio::time::timeout(KILL_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(container = %self.id, "runc did not exit after the kill");
        }
    }

    /// Deletes the container when `delete` (`runc run` does so itself when the process
    /// exits), unmounts the rootfs and removes the bundle.
    async fn finish(mut self, delete: bool) -> Result<()> {
        let runc = delete.then(|| self.runc.clone());
        cleanup(
            runc.as_deref(),
            &self.id,
            self.rootfs.take(),
            self.bundle.take(),
        )
        .await
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.rootfs.is_none() && self.bundle.is_none() {
            return;
        }
        let (runc, id) = (self.runc.clone(), std::mem::take(&mut self.id));
        let (rootfs, bundle) = (self.rootfs.take(), self.bundle.take());
        let what = format!("container `{id}`");
        crate::cleanup::spawn(&what, async move {
            if let Err(e) = cleanup(Some(&runc), &id, rootfs, bundle).await {
                tracing::warn!(container = %id, error = %e, "cleanup after an aborted run failed");
            }
        });
    }
}

/// Deletes the container with `runc` (if given), unmounts `rootfs` and removes `bundle`.
async fn cleanup(
    runc: Option<&Path>,
    id: &str,
    rootfs: Option<MountGuard>,
    bundle: Option<Bundle>,
) -> Result<()> {
    // `--force` kills a container still running; one runc already removed is not an error.
    let deleted = match runc {
        Some(runc) => runc_command(runc, ["delete", "--force", id])
            .await
            .map(drop),
        None => Ok(()),
    };
    let unmounted = match rootfs {
        Some(r) => tokio::task::spawn_blocking(move || r.unmount())
            .await
            .unwrap_or_else(|e| Err(Error::io("unmounting a rootfs", std::io::Error::other(e)))),
        None => Ok(()),
    };
    if let Some(b) = bundle {
        b.remove();
    }
    if let Err(message) = deleted {
        tracing::debug!(container = %id, %message, "runc delete");
    }
    unmounted
}

/// Runs `runc --root RUNC_ROOT ARGS…`; `Err` carries its stderr.
async fn runc_command<const N: usize>(
    runc: &Path,
    args: [&str; N],
) -> std::result::Result<Vec<u8>, String> {
    let out = Command::new(runc)
        .arg("--root")
        .arg(RUNC_ROOT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("starting `{}`: {e}", runc.display()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Removes the containers and bundles of runs whose process is gone. Returns how many bundles
/// were removed.
pub(crate) async fn sweep() -> usize {
    let Ok(Executor::Runc(runc)) = executor() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(BUNDLES) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let owner = std::fs::read_to_string(dir.join(OWNER))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        // A bundle without an owner is being made right now (or its maker died before
        // writing it): only one older than a minute is taken for garbage.
        let stale = match owner {
            Some(pid) => pid != std::process::id() as i32 && !crate::state::process_alive(pid),
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60)),
        };
        if !stale {
            continue;
        }
        let _ = runc_command(runc, ["delete", "--force", &id]).await;
        // The rootfs mount point is the one directory in the bundle.
        let mut clean = true;
        if let Ok(inner) = std::fs::read_dir(&dir) {
            for e in inner.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let mnt = e.path();
                    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
                    clean &= std::fs::remove_dir(&mnt).is_ok();
                }
            }
        }
        if clean {
            Bundle { dir }.remove();
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_is_runc_when_there_is_one_unless_asked_otherwise() {
        let runc = Some(PathBuf::from("/usr/sbin/runc"));
        assert_eq!(
            choose(None, runc.clone()),
            Ok(Executor::Runc(PathBuf::from("/usr/sbin/runc")))
        );
        assert_eq!(choose(None, None), Ok(Executor::Containerd));
        assert_eq!(
            choose(Some("containerd"), runc.clone()),
            Ok(Executor::Containerd)
        );
        let missing = choose(Some("runc"), None).unwrap_err();
        assert!(missing.contains("no `runc` on PATH"), "{missing}");
        let bad = choose(Some("crun"), runc).unwrap_err();
        assert!(bad.contains("`crun` is not an executor"), "{bad}");
    }

    #[test]
    fn runc_errors_are_read_from_its_json_log() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"minor\"}\n\
             {\"level\":\"error\",\"msg\":\"runc run failed: exec: \\\"nope\\\": executable file not found in $PATH\"}\n",
        )?;
        assert_eq!(
            runc_error(&log).as_deref(),
            Some("runc run failed: exec: \"nope\": executable file not found in $PATH")
        );
        std::fs::write(&log, "{\"level\":\"info\",\"msg\":\"fine\"}\n")?;
        assert_eq!(runc_error(&log), None);
        assert_eq!(runc_error(&dir.path().join("absent")), None);
        Ok(())
    }
}
