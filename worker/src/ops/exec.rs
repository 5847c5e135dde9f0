//! ExecOp: runs a process in a containerd task on an active snapshot of its root input (with the
//! mounts `ops::mounts` prepares), then turns what it wrote into a layer.

use std::collections::{HashMap, VecDeque};

use memobuild_proto::pb;
use tokio::sync::mpsc;

use crate::containerd::{ExtraMount, MountGuard, NetworkMode, OutputStream, RunRequest, User};
use crate::fsops;
use crate::ops::mounts::{ExecMounts, mount_input};
use crate::ops::writable_dir;
use crate::progress::LogStream;
use crate::solver::{FsRef, Output, Solve, SolveError};

/// How many output lines of a failed process are kept for the error report.
const TAIL_LINES: usize = 10;

/// BuildKit's hostname for build containers; some scripts look at it.
pub(crate) const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

impl Solve {
    pub(crate) async fn exec(
        &self,
        digest: &str,
        exec: pb::ExecOp,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, SolveError> {
        let meta = exec
            .meta
            .clone()
            .ok_or_else(|| self.error(digest, "exec op has no meta".into()))?;
        if meta.args.is_empty() {
            return Err(self.error(digest, "exec op has no arguments".into()));
        }
        let Some(root) = exec.mounts.iter().find(|m| m.dest == "/").cloned() else {
            return Err(self.error(digest, "exec op has no root mount".into()));
        };
        let base = match mount_input(&inputs, root.input).map_err(|m| self.error(digest, m))? {
            Output::Fs(f) => f,
            Output::Local(_) => {
                return Err(self.error(
                    digest,
                    "a local directory cannot be the root filesystem of a process".into(),
                ));
            }
        };

        let mut mounts = self.prepare_mounts(digest, &exec, &inputs).await?;
        // Secret env vars go to the process only (they replace variables of the same name
        // there), never into the container's spec.
        let secret_env = std::mem::take(&mut mounts.secret_env);
        let extra = mounts.extra.clone();
        let result = match self
            .run_exec(
                digest,
                Isolation {
                    network: exec.network,
                    security: exec.security,
                    secret_env,
                },
                meta,
                &base,
                extra,
            )
            .await
        {
            Ok(fs) => self.collect_outputs(digest, &root, fs, &mut mounts).await,
            Err(e) => Err(e),
        };
        mounts.release(self).await;
        result
    }

    /// The op's outputs: the root filesystem at the root mount's output index, and the layers of
    /// writable output mounts at theirs.
    async fn collect_outputs(
        &self,
        digest: &str,
        root: &pb::Mount,
        root_fs: FsRef,
        mounts: &mut ExecMounts,
    ) -> Result<Vec<Output>, SolveError> {
        let mut outs: Vec<Option<Output>> = Vec::new();
        let mut put = |i: usize, o: Output| {
            if outs.len() <= i {
                outs.resize(i + 1, None);
            }
            outs[i] = Some(o);
        };
        if let Ok(i) = usize::try_from(root.output) {
            put(i, Output::Fs(root_fs));
        }
        while let Some(mut m) = mounts.outputs.pop() {
            let layer = async {
                if let Some(g) = m.guard.take() {
                    g.unmount().map_err(|e| self.error(digest, e.to_string()))?;
                }
                let upper = writable_dir(&m.mounts)
                    .ok_or_else(|| self.error(digest, "snapshot has no upper directory".into()))?;
                self.snapshot_layer(digest, &m.key, &upper, &m.base).await
            }
            .await;
            match layer {
                Ok(fs) => put(m.index, Output::Fs(fs)),
                Err(e) => {
                    self.build.remove_snapshot(&m.key).await;
                    return Err(e);
                }
            }
        }
        outs.into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| self.error(digest, format!("exec op has no output {i}"))))
            .collect()
    }

    async fn run_exec(
        &self,
        digest: &str,
        isolation: Isolation,
        meta: pb::Meta,
        base: &FsRef,
        mounts: Vec<ExtraMount>,
    ) -> Result<FsRef, SolveError> {
        let key = format!("memobuild-active-{}", uuid::Uuid::new_v4());
        // The sandbox network (BuildKit's default) is set up while the snapshot is prepared.
        let sandbox = match pb::NetMode::try_from(isolation.network) {
            Ok(pb::NetMode::None) | Ok(pb::NetMode::Host) => None,
            _ => Some(tokio::task::spawn_blocking(crate::netns::Sandbox::create)),
        };
        let parent = self
            .build
            .ensure_snapshot(&self.name(digest), base)
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let rootfs = self
            .build
            .containerd()
            .await
            .map_err(|e| self.error(digest, e.to_string()))?
            .prepare(&key, &parent, HashMap::new())
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;

        let outcome = self
            .exec_in_snapshot(
                digest, &key, &rootfs, isolation, sandbox, meta, base, mounts,
            )
            .await;
        if outcome.is_err() {
            self.build.remove_snapshot(&key).await;
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_in_snapshot(
        &self,
        digest: &str,
        key: &str,
        rootfs: &[crate::containerd::Mount],
        isolation: Isolation,
        sandbox: Option<
            tokio::task::JoinHandle<Result<crate::netns::Sandbox, crate::netns::NetError>>,
        >,
        meta: pb::Meta,
        base: &FsRef,
        mounts: Vec<ExtraMount>,
    ) -> Result<FsRef, SolveError> {
        // Resolve the user against the image's /etc/passwd and make sure the working
        // directory exists, as BuildKit does before starting the process.
        let guard = MountGuard::mount(rootfs).map_err(|e| self.error(digest, e.to_string()))?;
        let user_spec = meta.user.clone();
        let cwd = if meta.cwd.is_empty() {
            "/".to_string()
        } else {
            meta.cwd.clone()
        };
        let root = guard.path().to_path_buf();
        let cwd2 = cwd.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let (uid, gid, additional_gids) =
                fsops::resolve_user_spec(&root, &user_spec).map_err(|e| e.to_string())?;
            let dir = fsops::resolve_in_root(&root, &cwd2, true).map_err(|e| e.to_string())?;
            if !dir.exists() {
                fsops::mkdir_all(&dir, 0o755, None).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(User {
                uid,
                gid,
                additional_gids,
            })
        })
        .await
        .map_err(|e| self.error(digest, format!("prepare task failed: {e}")))?;
        guard
            .unmount()
            .map_err(|e| self.error(digest, e.to_string()))?;
        let user = prepared.map_err(|m| self.error(digest, m))?;

        // The sandbox (BuildKit's default) is a namespace of the step's own with outbound
        // access, kept until the step is over.
        let Isolation {
            network,
            security,
            secret_env,
        } = isolation;
        let (network, sandbox) = match (pb::NetMode::try_from(network), sandbox) {
            (Ok(pb::NetMode::None), _) => (NetworkMode::None, None),
            (Ok(pb::NetMode::Host), _) => (NetworkMode::Host, None),
            (_, setup) => {
                let setup = setup
                    .unwrap_or_else(|| tokio::task::spawn_blocking(crate::netns::Sandbox::create));
                let sandbox = setup
                    .await
                    .map_err(|e| self.error(digest, format!("network setup failed: {e}")))?
                    .map_err(|e| self.error(digest, e.to_string()))?;
                (NetworkMode::Path(sandbox.path()), Some(sandbox))
            }
        };
        let (tx, mut rx) = mpsc::channel::<(OutputStream, Vec<u8>)>(64);
        let progress = self.progress.clone();
        let d = digest.to_string();
        let logger = tokio::spawn(async move {
            let mut tail: VecDeque<String> = VecDeque::new();
            let mut partial = String::new();
            while let Some((stream, data)) = rx.recv().await {
                partial.push_str(&String::from_utf8_lossy(&data));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    tail.push_back(line.trim_end().to_string());
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
                let s = match stream {
                    OutputStream::Stdout => LogStream::Stdout,
                    OutputStream::Stderr => LogStream::Stderr,
                };
                progress.log(&d, s, data);
            }
            if !partial.trim().is_empty() {
                tail.push_back(partial.trim_end().to_string());
                if tail.len() > TAIL_LINES {
                    tail.pop_front();
                }
            }
            tail
        });

        let req = RunRequest {
            rootfs: rootfs.to_vec(),
            args: meta.args.clone(),
            env: meta.env.clone(),
            cwd,
            user,
            hostname: if meta.hostname.is_empty() {
                DEFAULT_HOSTNAME.to_string()
            } else {
                meta.hostname.clone()
            },
            network,
            privileged: security == pb::SecurityMode::Insecure as i32,
            secret_env,
            mounts,
            output: Some(tx),
            cancel: None,
            stdio: None,
        };
        let permit = self
            .exec_slots
            .acquire()
            .await
            .map_err(|e| self.error(digest, format!("exec slots closed: {e}")))?;
        let ctd = self
            .build
            .containerd()
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let code = ctd.run(req).await;
        drop(permit);
        // The process is gone: its network goes down in the background (slirp4netns killed and
        // reaped, the namespace unmounted) while the layer is committed. `Build::finish` waits
        // for it.
        if let Some(sandbox) = sandbox {
            crate::cleanup::spawn("a step's network namespace", async move {
                let _ = tokio::task::spawn_blocking(move || drop(sandbox)).await;
            });
        }
        let tail: Vec<String> = logger.await.map(Vec::from).unwrap_or_default();
        let code = code.map_err(|e| self.error(digest, e.to_string()))?;
        if code != 0 {
            let mut e = self.error(
                digest,
                format!(
                    "process \"{}\" did not complete successfully: exit code: {code}",
                    meta.args.join(" ")
                ),
            );
            e.output_tail = tail;
            return Err(e);
        }
        let upper = writable_dir(rootfs)
            .ok_or_else(|| self.error(digest, "snapshot has no upper directory".into()))?;
        self.snapshot_layer(digest, key, &upper, base).await
    }
}

/// How a step's process is set apart: its network and security modes (`pb::NetMode`,
/// `pb::SecurityMode`) and the secrets it gets as environment variables.
struct Isolation {
    network: i32,
    security: i32,
    secret_env: Vec<String>,
}
