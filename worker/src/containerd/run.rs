//! Running one process in a container on a snapshot: container + task, output through FIFOs.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, ExecProcessRequest, KillRequest, ListContainersRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::Mount;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mount::overlay_upperdir;
use super::runc::{self, Executor};
use super::spec::{self, SPEC_TYPE_URL};
use super::{Containerd, Error, Result};

/// Label naming the process that created a container.
const PID_LABEL: &str = "memobuild.pid";

const RUNTIME: &str = "io.containerd.runc.v2";
/// How long to wait for the output FIFOs to drain after the process exited.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a killed task to exit before deleting it anyway.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Network of the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Share the host's network namespace (`RUN --network=host`, an entitlement).
    #[default]
    Host,
    /// A private network namespace with only loopback (`RUN --network=none`).
    None,
    /// An existing network namespace, by path (the default sandbox of [`crate::netns`]).
    Path(std::path::PathBuf),
}

/// Credentials of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// A mount on top of the default ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    /// Bind-mount a host path (cache mounts, bind-from-stage, secrets).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path inside the container.
        destination: String,
        /// Mount read-only.
        readonly: bool,
    },
    /// A fresh tmpfs (`nosuid,strictatime,mode=1777`).
    Tmpfs {
        /// Path inside the container.
        destination: String,
        /// Size limit (the kernel's default, half of RAM, when `None`).
        size_bytes: Option<u64>,
    },
}

/// What to run, and where.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Mounts of the (active) snapshot to use as the root filesystem.
    pub rootfs: Vec<Mount>,
    /// Command and arguments (`args[0]` is looked up in the container's `PATH` by runc).
    pub args: Vec<String>,
    /// `KEY=value` entries; a default `PATH` is added when absent.
    pub env: Vec<String>,
    /// Working directory (`/` when empty).
    pub cwd: String,
    /// Credentials of the process.
    pub user: User,
    /// Hostname (`memobuild` when empty).
    pub hostname: String,
    /// Network namespace choice.
    pub network: NetworkMode,
    /// Every capability, /proc and /sys unmasked, any device (`--security=insecure`).
    pub privileged: bool,
    /// `NAME=VALUE` pairs of secrets, added to the environment of the process but never to
    /// the container's spec, which containerd keeps in its database.
    pub secret_env: Vec<String>,
    /// Mounts added after the default ones (`/proc`, `/dev`, `/sys`, …).
    pub mounts: Vec<ExtraMount>,
    /// Receives output chunks as they arrive. Slow receivers slow the process down (back pressure).
    pub output: Option<mpsc::Sender<(OutputStream, Vec<u8>)>>,
    /// Cancelling kills the process, cleans up and makes `run` return [`Error::Cancelled`].
    pub cancel: Option<CancellationToken>,
    /// The process's stdin and stdout as one byte stream (a gateway frontend speaks gRPC over
    /// them): what is written to it reaches stdin, stdout comes out of it (not through
    /// `output`; stderr still does).
    pub stdio: Option<StdioPipe>,
}

/// One end of a stream that becomes a process's stdin and stdout ([`RunRequest::stdio`]);
/// taken by the first run that uses it.
#[derive(Debug, Clone)]
pub struct StdioPipe(std::sync::Arc<std::sync::Mutex<Option<tokio::io::DuplexStream>>>);

impl StdioPipe {
    /// A pipe whose process side is `io`.
    pub fn new(io: tokio::io::DuplexStream) -> Self {
        StdioPipe(std::sync::Arc::new(std::sync::Mutex::new(Some(io))))
    }

    pub(super) fn take(&self) -> Option<tokio::io::DuplexStream> {
        self.0.lock().ok().and_then(|mut io| io.take())
    }
}

impl Containerd {
    /// Runs `req` to completion and returns the exit code (128 + signal when killed by a signal).
    ///
    /// The process runs in a container with a unique id on a root filesystem of `req.rootfs`,
    /// with runc directly ([`super::runc`]) or through containerd's task service (the runtime
    /// `io.containerd.runc.v2`), whichever [`runc::executor`] chose. Output streams as it comes;
    /// everything is cleaned up afterwards, also when this future is dropped (in a spawned task)
    /// and on errors.
    ///
    /// runc creates missing mount points (`/proc`, `/dev`, `/etc/hosts` of a bind, …) in the root
    /// filesystem; when the rootfs is writable, the empty files and directories it created are removed
    /// from the upper directory afterwards so they do not end up in the layer.
    pub async fn run(&self, req: RunRequest) -> Result<i32> {
        let id = format!("memobuild-{}", uuid::Uuid::new_v4().simple());
        match runc::executor()? {
            Executor::Runc(runc) => runc::run(runc, req, &id, self.namespace()).await,
            Executor::Containerd => self.run_task(req, id).await,
        }
    }

    /// [`Containerd::run`] through containerd's task service: a container record, a task run
    /// by the runc shim, output through FIFOs.
    async fn run_task(&self, req: RunRequest, id: String) -> Result<i32> {
        let io_dir = tempfile::Builder::new()
            .prefix("memobuild-io-")
            .tempdir()
            .map_err(|e| Error::io(format!("container `{id}`: creating the FIFO directory"), e))?;
        let stdout_path = io_dir.path().join("stdout");
        let stderr_path = io_dir.path().join("stderr");
        let stdin_path = io_dir.path().join("stdin");
        let mut readers = Vec::with_capacity(2);
        let (mut stdio_out, stdin) = match req.stdio.as_ref().and_then(StdioPipe::take) {
            Some(io) => {
                let (from_caller, to_caller) = tokio::io::split(io);
                let stdin = connect_stdin(&id, &stdin_path, from_caller)?;
                (Some(to_caller), Some(stdin))
            }
            None => (None, None),
        };
        for (path, stream) in [
            (&stdout_path, OutputStream::Stdout),
            (&stderr_path, OutputStream::Stderr),
        ] {
            nix::unistd::mkfifo(
                path.as_path(),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| {
                Error::io(
                    format!("container `{id}`: creating FIFO `{}`", path.display()),
                    e.into(),
                )
            })?;
            // Opened read-only and non-blocking before the shim opens the write end: epoll reports
            // nothing until a writer connects, and EOF once the shim closes it after the process's
            // output is fully copied.
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(|e| {
                    Error::io(
                        format!("container `{id}`: opening FIFO `{}`", path.display()),
                        e,
                    )
                })?;
            let task = match (stream, stdio_out.take()) {
                (OutputStream::Stdout, Some(to_caller)) => tokio::spawn(async move {
                    let (mut rx, mut to_caller) = (rx, to_caller);
                    if let Err(e) = tokio::io::copy(&mut rx, &mut to_caller).await {
                        tracing::debug!(error = %e, "copying a process's stdout ended");
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_caller).await;
                }),
                _ => tokio::spawn(pump(rx, stream, req.output.clone())),
            };
            readers.push(AbortOnDrop(task));
        }
        // Not drained with the output: the caller's side may stay open after the process exits.
        let (stdin_path, _stdin_feed) = match stdin {
            Some(feed) => (
                Some(stdin_path.display().to_string()),
                Some(AbortOnDrop(feed)),
            ),
            None => (None, None),
        };

        let created_mountpoints = MountpointCleanup::before(&req);

        let spec = spec::build(&req, &id, self.namespace());
        let spec_json = serde_json::to_vec(&spec).map_err(|source| Error::Spec {
            id: id.clone(),
            source,
        })?;

        // Dropping `run` mid-way leaves cleanup to the guard (a spawned task); every other exit
        // path below cleans up inline, so nothing is left behind when the runtime shuts down.
        let mut guard = ContainerGuard {
            ctd: self.clone(),
            id: id.clone(),
            armed: true,
        };
        let outcome = self
            .start_and_wait(
                &id,
                &req,
                spec_json,
                Stdio {
                    stdin: stdin_path.unwrap_or_default(),
                    stdout: &stdout_path,
                    stderr: &stderr_path,
                },
            )
            .await;
        guard.armed = false;
        let exit = match outcome {
            Ok(Some(code)) => code,
            Ok(None) => {
                self.kill_and_delete(&id).await;
                created_mountpoints.remove_created();
                return Err(Error::Cancelled { id });
            }
            Err(e) => {
                self.kill_and_delete(&id).await;
                created_mountpoints.remove_created();
                return Err(e);
            }
        };

        // The shim closes the FIFOs once it has copied all output; wait for that before deleting.
        for r in &mut readers {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut r.0).await.is_err() {
                tracing::warn!(container = %id, "output did not reach EOF in time");
            }
        }
        drop(readers);

        let deleted = self.delete_task_and_container(&id).await;
        created_mountpoints.remove_created();
        deleted?;
        Ok(exit)
    }

    /// Creates container and task, starts it and waits for its exit code (`None`: cancelled).
    async fn start_and_wait(
        &self,
        id: &str,
        req: &RunRequest,
        spec_json: Vec<u8>,
        stdio: Stdio<'_>,
    ) -> Result<Option<i32>> {
        let Stdio {
            stdin,
            stdout,
            stderr,
        } = stdio;
        ContainersClient::new(self.channel())
            .create(self.request(CreateContainerRequest {
                container: Some(Container {
                    id: id.to_owned(),
                    // The creating process, so that the containers of a killed build are known
                    // for garbage at the next start ([`Containerd::remove_stale_containers`]).
                    labels: HashMap::from([
                        ("memobuild.run".to_owned(), "1".to_owned()),
                        (PID_LABEL.to_owned(), std::process::id().to_string()),
                    ]),
                    runtime: Some(Runtime {
                        name: RUNTIME.to_owned(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.to_owned(),
                        value: spec_json,
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .map_err(|s| Error::rpc("container create", id, s))?;

        let mut tasks = TasksClient::new(self.channel());
        // With secret env vars, the container's own process never starts: the step runs as a
        // process executed in the created container, whose spec (with the secrets) goes to the
        // shim and runc only, not into containerd's metadata database, which keeps container
        // specs on disk (and in freed pages long after the container is gone).
        let exec_id = if req.secret_env.is_empty() {
            String::new()
        } else {
            "step".to_owned()
        };
        let (init_in, init_out, init_err) = if exec_id.is_empty() {
            (
                stdin.clone(),
                stdout.display().to_string(),
                stderr.display().to_string(),
            )
        } else {
            (String::new(), String::new(), String::new())
        };
        tasks
            .create(self.request(CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: req.rootfs.clone(),
                stdin: init_in,
                stdout: init_out,
                stderr: init_err,
                terminal: false,
                ..Default::default()
            }))
            .await
            .map_err(|s| Error::rpc("task create", id, s))?;
        if !exec_id.is_empty() {
            let process = spec::process_json(req, id, self.namespace(), &req.secret_env).map_err(
                |source| Error::Spec {
                    id: id.to_owned(),
                    source,
                },
            )?;
            tasks
                .exec(self.request(ExecProcessRequest {
                    container_id: id.to_owned(),
                    stdin: stdin.clone(),
                    stdout: stdout.display().to_string(),
                    stderr: stderr.display().to_string(),
                    terminal: false,
                    spec: Some(prost_types::Any {
                        type_url: spec::PROCESS_TYPE_URL.to_owned(),
                        value: process,
                    }),
                    exec_id: exec_id.clone(),
                }))
                .await
                .map_err(|s| Error::rpc("task exec", id, s))?;
        }
        tasks
            .start(self.request(StartRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(|s| Error::rpc("task start", id, s))?;

        let cancel = req.cancel.clone().unwrap_or_default();
        tokio::select! {
            status = self.wait_process(id, &exec_id) => status.map(Some),
            () = cancel.cancelled() => Ok(None),
        }
    }

    async fn wait(&self, id: &str) -> Result<i32> {
        self.wait_process(id, "").await
    }

    /// Waits for process `exec_id` of task `id` (`""`: the task's own process).
    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32> {
        let resp = TasksClient::new(self.channel())
            .wait(self.request(WaitRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map_err(|s| Error::rpc("task wait", id, s))?;
        // runc reports 128 + signal for signalled processes, so this fits in an i32.
        Ok(i32::try_from(resp.into_inner().exit_status).unwrap_or(i32::MAX))
    }

    /// Deletes the task (if any) and the container; missing ones are not errors.
    async fn delete_task_and_container(&self, id: &str) -> Result<()> {
        let res = TasksClient::new(self.channel())
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await;
        let task_result = match res {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc("task delete", id, s)),
        };
        let res = ContainersClient::new(self.channel())
            .delete(self.request(DeleteContainerRequest { id: id.to_owned() }))
            .await;
        let container_result = match res {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc("container delete", id, s)),
        };
        task_result.and(container_result)
    }

    /// Kills and deletes the containers (and their tasks) that processes which are gone left in
    /// this namespace: a build killed with SIGKILL cannot clean up after itself. Returns how
    /// many were removed.
    pub async fn remove_stale_containers(&self) -> Result<usize> {
        let list = ContainersClient::new(self.channel())
            .list(self.request(ListContainersRequest {
                filters: vec!["labels.\"memobuild.run\"".to_owned()],
            }))
            .await
            .map_err(|s| Error::rpc("container list", "", s))?
            .into_inner()
            .containers;
        let mut removed = 0;
        for c in list {
            let Some(pid) = c.labels.get(PID_LABEL).and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 || crate::state::process_alive(pid) {
                continue;
            }
            self.kill_and_delete(&c.id).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Best-effort: SIGKILL every process of the task, wait briefly, delete task and container.
    async fn kill_and_delete(&self, id: &str) {
        let killed = TasksClient::new(self.channel())
            .kill(self.request(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal: SIGKILL,
                all: true,
            }))
            .await;
        if killed.is_ok() {
            let _ = tokio::time::timeout(KILL_TIMEOUT, self.wait(id)).await;
        }
        if let Err(e) = self.delete_task_and_container(id).await {
            tracing::warn!(container = %id, error = %e, "cleanup after an aborted run failed");
        }
    }
}

/// Deletes task and container if `run` returns early (error) or its future is dropped.
struct ContainerGuard {
    ctd: Containerd,
    id: String,
    armed: bool,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ctd = self.ctd.clone();
        let id = std::mem::take(&mut self.id);
        let what = format!("container `{id}`");
        crate::cleanup::spawn(&what, async move { ctd.kill_and_delete(&id).await });
    }
}

pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The FIFO paths of a process's standard streams (`stdin` empty: none).
struct Stdio<'a> {
    stdin: String,
    stdout: &'a Path,
    stderr: &'a Path,
}

/// Makes the FIFO `path` the process's stdin, fed from `from_caller` until it ends. The FIFO is
/// opened read-write so that opening does not wait for the shim; dropping the writer (when
/// the caller's side ends) gives the process EOF.
fn connect_stdin(
    id: &str,
    path: &Path,
    from_caller: tokio::io::ReadHalf<tokio::io::DuplexStream>,
) -> Result<JoinHandle<()>> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
        Error::io(
            format!("container `{id}`: creating FIFO `{}`", path.display()),
            e.into(),
        )
    })?;
    let mut tx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| {
            Error::io(
                format!("container `{id}`: opening FIFO `{}`", path.display()),
                e,
            )
        })?;
    Ok(tokio::spawn(async move {
        let mut from_caller = from_caller;
        if let Err(e) = tokio::io::copy(&mut from_caller, &mut tx).await {
            tracing::debug!(error = %e, "copying to a process's stdin ended");
        }
    }))
}

pub(super) async fn pump(
    mut rx: impl tokio::io::AsyncRead + Unpin,
    stream: OutputStream,
    out: Option<mpsc::Sender<(OutputStream, Vec<u8>)>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if let Some(tx) = &out {
                    // A caller that stopped listening just loses the output.
                    let _ = tx.send((stream, buf[..n].to_vec())).await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading container output failed");
                return;
            }
        }
    }
}

/// Removes the empty mount points runc created in a writable rootfs's upper directory.
///
/// Before the run, records which mount destinations (and their parent directories) are absent from
/// the upper directory; afterwards removes those that are now present and empty, deepest first.
/// Paths are walked without following symlinks, so nothing outside the upper directory is touched.
pub(super) struct MountpointCleanup {
    upper: Option<PathBuf>,
    candidates: Vec<PathBuf>,
}

impl MountpointCleanup {
    pub(super) fn before(req: &RunRequest) -> Self {
        let Some(upper) = overlay_upperdir(&req.rootfs) else {
            return MountpointCleanup {
                upper: None,
                candidates: Vec::new(),
            };
        };
        let mut candidates = Vec::new();
        for m in spec::spec_mounts(req) {
            let rel = relative(&m.destination);
            let mut prefix = PathBuf::new();
            for c in rel.components() {
                prefix.push(c);
                if !candidates.contains(&prefix)
                    && matches!(lstat_beneath(&upper, &prefix), Lookup::Absent)
                {
                    candidates.push(prefix.clone());
                }
            }
        }
        // Deepest first, so children go before their parents.
        candidates.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        MountpointCleanup {
            upper: Some(upper),
            candidates,
        }
    }

    pub(super) fn remove_created(&self) {
        let Some(upper) = &self.upper else { return };
        for rel in &self.candidates {
            let Lookup::Found(meta) = lstat_beneath(upper, rel) else {
                continue;
            };
            let path = upper.join(rel);
            let removed = if meta.is_dir() {
                // Fails (and keeps the directory) when it is not empty.
                std::fs::remove_dir(&path).is_ok()
            } else if meta.is_file() && meta.len() == 0 {
                std::fs::remove_file(&path).is_ok()
            } else {
                false
            };
            if removed {
                tracing::debug!(path = %path.display(), "removed mount point created by runc");
            }
        }
    }
}

fn relative(destination: &str) -> PathBuf {
    Path::new(destination)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

enum Lookup {
    Absent,
    Found(std::fs::Metadata),
    /// A parent is a symlink or not a directory: leave the path alone.
    Unsafe,
}

fn lstat_beneath(root: &Path, rel: &Path) -> Lookup {
    let mut cur = root.to_path_buf();
    let count = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(meta) if i + 1 == count => return Lookup::Found(meta),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Lookup::Unsafe,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Absent,
            Err(_) => return Lookup::Unsafe,
        }
    }
    Lookup::Unsafe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoint_cleanup_removes_only_new_empty_entries() -> std::io::Result<()> {
        let upper = tempfile::tempdir()?;
        // Existed before the run: must stay even though empty.
        std::fs::create_dir(upper.path().join("proc"))?;
        let req = RunRequest {
            rootfs: vec![Mount {
                r#type: "bind".into(),
                source: upper.path().display().to_string(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            mounts: vec![
                ExtraMount::Bind {
                    source: PathBuf::from("/etc/hosts"),
                    destination: "/etc/hosts".into(),
                    readonly: true,
                },
                ExtraMount::Tmpfs {
                    destination: "/cache/x".into(),
                    size_bytes: None,
                },
            ],
            ..RunRequest::default()
        };
        let cleanup = MountpointCleanup::before(&req);
        // What runc would create, plus a file the process wrote next to a mount point.
        for d in [
            "dev/pts",
            "dev/shm",
            "dev/mqueue",
            "sys/fs/cgroup",
            "etc",
            "cache/x",
        ] {
            std::fs::create_dir_all(upper.path().join(d))?;
        }
        std::fs::write(upper.path().join("etc/hosts"), b"")?;
        std::fs::write(upper.path().join("cache/data"), b"kept")?;
        cleanup.remove_created();

        let p = upper.path();
        assert!(p.join("proc").is_dir());
        assert!(!p.join("dev").exists());
        assert!(!p.join("sys").exists());
        assert!(!p.join("etc").exists());
        assert!(!p.join("cache/x").exists());
        assert!(p.join("cache/data").is_file(), "non-empty parents stay");
        Ok(())
    }

    #[test]
    fn lookup_does_not_follow_symlinks() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        std::os::unix::fs::symlink("/", root.path().join("etc"))?;
        assert!(matches!(
            lstat_beneath(root.path(), Path::new("etc/hostname")),
            Lookup::Unsafe
        ));
        Ok(())
    }
}
