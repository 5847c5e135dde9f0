//! The mounts of an exec besides its root: binds (of other vertices' filesystems, read-only,
//! writable with the writes discarded, or writable as an output of the op; of the build
//! context), cache mounts, tmpfs, secrets and ssh agent sockets; plus `/etc/hosts` and
//! `/etc/resolv.conf`.
//!
//! Everything is set up before the process starts and torn down after it ends, whatever the
//! outcome ([`ExecMounts::release`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memobuild_proto::pb;

use crate::containerd::{ExtraMount, Mount, MountGuard};
use crate::fsops::{self, CopyOptions, Owner};
use crate::ops::cachemount::{self, CacheBase, CacheLease};
use crate::solver::{FsRef, LocalRef, Output, Solve, SolveError};

/// BuildKit's default target directory for secrets.
const SECRETS_DIR: &str = "/run/secrets";

/// A writable bind mount whose changes become an output of the exec (`Mount.output >= 0`).
pub(crate) struct OutputMount {
    /// Output index of the exec op.
    pub(crate) index: usize,
    /// Active snapshot key.
    pub(crate) key: String,
    /// Its mounts (the upper directory is where the writes land).
    pub(crate) mounts: Vec<Mount>,
    /// The filesystem it started from.
    pub(crate) base: FsRef,
    /// Where it is mounted on the host while the process runs.
    pub(crate) guard: Option<MountGuard>,
}

/// Something to undo after the process ended.
enum Cleanup {
    Unmount(MountGuard),
    RemoveSnapshot(String),
    Dir(tempfile::TempDir),
    Cache(CacheLease),
    Ssh(crate::ssh::AgentProxy),
}

/// The prepared mounts of one exec.
#[derive(Default)]
pub(crate) struct ExecMounts {
    /// Mounts for the runtime spec, in the op's order.
    pub(crate) extra: Vec<ExtraMount>,
    /// `NAME=value` entries from secret env vars.
    pub(crate) secret_env: Vec<String>,
    /// Writable binds that are op outputs.
    pub(crate) outputs: Vec<OutputMount>,
    cleanups: Vec<Cleanup>,
}

impl ExecMounts {
    /// Unmounts, removes snapshots and temporary directories and releases cache directories, in
    /// the reverse order of setting them up. Output mounts not yet turned into layers are dropped.
    pub(crate) async fn release(mut self, solve: &Solve) {
        for o in std::mem::take(&mut self.outputs) {
            if let Some(g) = o.guard
                && let Err(e) = g.unmount()
            {
                tracing::warn!("unmounting an exec output mount: {e}");
            }
            solve.build.remove_snapshot(&o.key).await;
        }
        while let Some(c) = self.cleanups.pop() {
            match c {
                Cleanup::Unmount(g) => {
                    if let Err(e) = g.unmount() {
                        tracing::warn!("unmounting an exec mount: {e}");
                    }
                }
                Cleanup::RemoveSnapshot(key) => {
                    solve.build.remove_snapshot(&key).await;
                }
                Cleanup::Dir(d) => drop(d),
                Cleanup::Cache(l) => drop(l),
                Cleanup::Ssh(p) => drop(p),
            }
        }
    }
}

impl Solve {
    /// Sets up every mount of `exec` except the root one. On error, what was set up so far is
    /// released before returning.
    pub(crate) async fn prepare_mounts(
        &self,
        digest: &str,
        exec: &pb::ExecOp,
        inputs: &[Output],
    ) -> Result<ExecMounts, SolveError> {
        let mut out = ExecMounts::default();
        match self.fill_mounts(digest, exec, inputs, &mut out).await {
            Ok(()) => Ok(out),
            Err(e) => {
                out.release(self).await;
                Err(e)
            }
        }
    }

    async fn fill_mounts(
        &self,
        digest: &str,
        exec: &pb::ExecOp,
        inputs: &[Output],
        out: &mut ExecMounts,
    ) -> Result<(), SolveError> {
        let err = |m: String| self.error(digest, m);
        let meta = exec.meta.clone().unwrap_or_default();
        let sandbox = !matches!(
            pb::NetMode::try_from(exec.network),
            Ok(pb::NetMode::Host | pb::NetMode::None)
        );
        let (files, tmp) = network_files(&meta, sandbox).map_err(&err)?;
        out.cleanups.push(Cleanup::Dir(tmp));
        out.extra.extend(files);

        for m in &exec.mounts {
            if m.dest == "/" {
                continue;
            }
            let kind = pb::MountType::try_from(m.mount_type).map_err(|_| {
                err(format!(
                    "mount at `{}` has unknown type {}",
                    m.dest, m.mount_type
                ))
            })?;
            match kind {
                pb::MountType::Tmpfs => out.extra.push(ExtraMount::Tmpfs {
                    destination: m.dest.clone(),
                    size_bytes: m
                        .tmpfs_opt
                        .as_ref()
                        .and_then(|t| u64::try_from(t.size).ok())
                        .filter(|s| *s > 0),
                }),
                pb::MountType::Bind => self.bind_mount(digest, m, inputs, out).await?,
                pb::MountType::Cache => self.cache_mount(digest, m, inputs, out).await?,
                pb::MountType::Secret => self.secret_mount(digest, m, out).await?,
                pb::MountType::Ssh => self.ssh_mount(digest, m, out).await?,
            }
        }

        for s in &exec.secretenv {
            let Some(value) = self.secret(&s.id).await.map_err(&err)? else {
                if s.optional {
                    continue;
                }
                return Err(err(missing_secret(&s.id)));
            };
            let value = std::str::from_utf8(&value).map_err(|_| {
                err(format!(
                    "secret `{}` is not valid UTF-8 and cannot be environment variable `{}`",
                    s.id, s.name
                ))
            })?;
            out.secret_env.push(format!("{}={value}", s.name));
        }
        Ok(())
    }

    /// The caller's value of secret `id`.
    async fn secret(&self, id: &str) -> Result<Option<std::sync::Arc<Vec<u8>>>, String> {
        self.build
            .caller
            .secrets
            .secret(id)
            .await
            .map_err(|e| format!("secret `{id}`: {e}"))
    }

    async fn bind_mount(
        &self,
        digest: &str,
        m: &pb::Mount,
        inputs: &[Output],
        out: &mut ExecMounts,
    ) -> Result<(), SolveError> {
        let err = |msg: String| self.error(digest, msg);
        let selector = m.selector.trim_start_matches('/').to_string();
        let input = mount_input(inputs, m.input).map_err(&err)?;
        let root: PathBuf = match input {
            Output::Local(local) => {
                if m.output >= 0 {
                    return Err(err(format!(
                        "bind mount at `{}`: a local directory cannot be an exec output",
                        m.dest
                    )));
                }
                self.local_dir(digest, &local, m.readonly, out).await?
            }
            Output::Fs(fs) if m.readonly => {
                if fs.layers.is_empty() {
                    let t = self.temp_dir().map_err(&err)?;
                    let p = t.path().to_path_buf();
                    out.cleanups.push(Cleanup::Dir(t));
                    p
                } else {
                    let (guard, key) = self.mount_view(digest, &fs).await?;
                    out.cleanups.push(Cleanup::RemoveSnapshot(key));
                    let p = guard.path().to_path_buf();
                    out.cleanups.push(Cleanup::Unmount(guard));
                    p
                }
            }
            Output::Fs(fs) => {
                // Writable: an active snapshot of the input. Removed afterwards (BuildKit's
                // read-write-no-output), or turned into an op output when the mount has one.
                let snap = self
                    .build
                    .ensure_snapshot(&self.name(digest), &fs)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let key = format!("memobuild-active-{}", uuid::Uuid::new_v4());
                let mounts = self
                    .build
                    .containerd()
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .prepare(&key, &snap, HashMap::new())
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let index = usize::try_from(m.output).ok();
                let guard = match MountGuard::mount(&mounts) {
                    Ok(g) => g,
                    Err(e) => {
                        self.build.remove_snapshot(&key).await;
                        return Err(err(e.to_string()));
                    }
                };
                let p = guard.path().to_path_buf();
                match index {
                    Some(index) => out.outputs.push(OutputMount {
                        index,
                        key,
                        mounts,
                        base: fs,
                        guard: Some(guard),
                    }),
                    None => {
                        out.cleanups.push(Cleanup::RemoveSnapshot(key));
                        out.cleanups.push(Cleanup::Unmount(guard));
                    }
                }
                p
            }
        };
        let source = fsops::resolve_in_root(&root, &selector, true).map_err(|e| {
            err(format!(
                "bind mount at `{}`: source `/{selector}`: {e}",
                m.dest
            ))
        })?;
        if std::fs::symlink_metadata(&source).is_err() {
            return Err(err(format!(
                "bind mount at `{}`: source `/{selector}` not found",
                m.dest
            )));
        }
        out.extra.push(ExtraMount::Bind {
            source,
            destination: m.dest.clone(),
            readonly: m.readonly,
        });
        Ok(())
    }

    /// The directory to bind for a local source: the directory itself when it can be shown as
    /// it is (read-only, nothing filtered out), else a private copy of what its patterns select
    /// (root-owned, as BuildKit's file sync sends it), removed after the run.
    async fn local_dir(
        &self,
        digest: &str,
        local: &LocalRef,
        readonly: bool,
        out: &mut ExecMounts,
    ) -> Result<PathBuf, SolveError> {
        // (The cache key covers the owners exactly in this case: `solver::cachekey`.)
        if readonly && local.exclude.is_none() && local.include.is_none() {
            return Ok(local.path.clone());
        }
        let tmp = self.temp_dir().map_err(|m| self.error(digest, m))?;
        let dest = tmp.path().to_path_buf();
        out.cleanups.push(Cleanup::Dir(tmp));
        let local = local.clone();
        let d = dest.clone();
        tokio::task::spawn_blocking(move || {
            let opts = CopyOptions {
                dir_copy_contents: true,
                include: local.include.clone(),
                exclude: local.exclude.clone(),
                source_owner: Some(Owner { uid: 0, gid: 0 }),
                ..CopyOptions::default()
            };
            fsops::copy(&local.path, ".", &d, "/", &opts)
        })
        .await
        .map_err(|e| self.error(digest, format!("copy task failed: {e}")))?
        .map_err(|e| self.error(digest, format!("copying the local directory: {e}")))?;
        Ok(dest)
    }

    async fn cache_mount(
        &self,
        digest: &str,
        m: &pb::Mount,
        inputs: &[Output],
        out: &mut ExecMounts,
    ) -> Result<(), SolveError> {
        let err = |msg: String| self.error(digest, msg);
        let opt = m.cache_opt.clone().unwrap_or_default();
        let id = if opt.id.is_empty() {
            m.dest.clone()
        } else {
            opt.id.clone()
        };
        let sharing = pb::CacheSharingOpt::try_from(opt.sharing).unwrap_or_default();
        let base_fs = match mount_input(inputs, m.input).map_err(&err)? {
            Output::Fs(fs) if fs.layers.is_empty() => None,
            Output::Fs(fs) => Some(fs),
            Output::Local(_) => {
                return Err(err(format!(
                    "cache mount at `{}` cannot start from a local directory",
                    m.dest
                )));
            }
        };
        let identity = base_fs
            .as_ref()
            .map(|f| crate::cache::key::fs_identity(&f.layers));
        let dir = cachemount::cache_dir(
            &self.build.engine.state().cache_mounts(),
            &id,
            identity.as_deref().map(|i| (i, m.selector.as_str())),
        );
        // A base is only read when the directory is created; mount it only then.
        let mut view = None;
        let base = match &base_fs {
            Some(fs) if !dir.join("data").is_dir() || sharing == pb::CacheSharingOpt::Private => {
                let (guard, key) = self.mount_view(digest, fs).await?;
                let root = guard.path().to_path_buf();
                view = Some((guard, key));
                Some(CacheBase {
                    root,
                    selector: m.selector.clone(),
                })
            }
            _ => None,
        };
        let lease = cachemount::acquire(dir, sharing, base).await;
        if let Some((guard, key)) = view {
            let _ = guard.unmount();
            self.build.remove_snapshot(&key).await;
        }
        let lease = lease.map_err(|e| err(format!("cache mount at `{}`: {e}", m.dest)))?;
        out.extra.push(ExtraMount::Bind {
            source: lease.dir.clone(),
            destination: m.dest.clone(),
            readonly: m.readonly,
        });
        out.cleanups.push(Cleanup::Cache(lease));
        Ok(())
    }

    /// A secret as a read-only file on a private tmpfs: its value never touches a disk or a layer.
    async fn secret_mount(
        &self,
        digest: &str,
        m: &pb::Mount,
        out: &mut ExecMounts,
    ) -> Result<(), SolveError> {
        let err = |msg: String| self.error(digest, msg);
        let opt = m.secret_opt.clone().unwrap_or_default();
        let Some(value) = self.secret(&opt.id).await.map_err(err)? else {
            if opt.optional {
                return Ok(());
            }
            return Err(err(missing_secret(&opt.id)));
        };
        let tmpfs = Mount {
            r#type: "tmpfs".into(),
            source: "tmpfs".into(),
            target: String::new(),
            options: vec![
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
                "mode=0700".into(),
            ],
        };
        let guard = MountGuard::mount(&[tmpfs]).map_err(|e| err(e.to_string()))?;
        let file = guard.path().join("secret");
        out.cleanups.push(Cleanup::Unmount(guard));
        write_secret(&file, &value, &opt)
            .map_err(|e| err(format!("secret `{}`: writing it: {e}", opt.id)))?;
        let destination = if m.dest.is_empty() {
            format!("{SECRETS_DIR}/{}", opt.id)
        } else {
            m.dest.clone()
        };
        out.extra.push(ExtraMount::Bind {
            source: file,
            destination,
            readonly: true,
        });
        Ok(())
    }

    /// An ssh agent as a socket of the exec's own, owned and permissioned as the mount says,
    /// relaying to the agent the build was given for the mount's id. An id that was not given
    /// skips the mount, unless it is required (BuildKit's behaviour).
    async fn ssh_mount(
        &self,
        digest: &str,
        m: &pb::Mount,
        out: &mut ExecMounts,
    ) -> Result<(), SolveError> {
        let err = |msg: String| self.error(digest, msg);
        // Without options (hand-written LLB), LLB's defaults: root, 0600.
        let opt = m.ssh_opt.clone().unwrap_or(pb::SshOpt {
            mode: 0o600,
            ..Default::default()
        });
        let id = if opt.id.is_empty() {
            crate::ssh::DEFAULT_ID
        } else {
            opt.id.as_str()
        };
        let agent = self
            .build
            .caller
            .ssh
            .agent(id)
            .await
            .map_err(|e| err(format!("ssh agent `{id}`: {e}")))?;
        let Some(agent) = agent else {
            if opt.optional {
                return Ok(());
            }
            return Err(err(format!(
                "ssh agent or key `{id}` is required but was not given (pass `--ssh {id}` to use $SSH_AUTH_SOCK, or `--ssh {id}=PATH` with an agent socket or key files)"
            )));
        };
        let destination = if m.dest.is_empty() {
            "/run/buildkit/ssh_agent.0".to_string()
        } else {
            m.dest.clone()
        };
        let parent = self.build.engine.state().tmp();
        let proxy = crate::ssh::AgentProxy::start(&parent, &agent, opt.uid, opt.gid, opt.mode)
            .map_err(|e| err(format!("ssh mount at `{destination}`: {e}")))?;
        out.extra.push(ExtraMount::Bind {
            source: proxy.socket().to_path_buf(),
            destination,
            readonly: false,
        });
        out.cleanups.push(Cleanup::Ssh(proxy));
        Ok(())
    }

    /// A fresh directory under the state directory (not /tmp, which may be small or in memory).
    pub(crate) fn temp_dir(&self) -> Result<tempfile::TempDir, String> {
        let parent = self.build.engine.state().tmp();
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("creating `{}`: {e}", parent.display()))?;
        tempfile::Builder::new()
            .prefix("mount-")
            .tempdir_in(&parent)
            .map_err(|e| format!("creating a directory in `{}`: {e}", parent.display()))
    }
}

fn missing_secret(id: &str) -> String {
    format!("secret `{id}` is required but was not given (pass `--secret id={id},src=PATH`)")
}

fn write_secret(path: &Path, value: &[u8], opt: &pb::SecretOpt) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, value)?;
    std::os::unix::fs::chown(path, Some(opt.uid), Some(opt.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opt.mode & 0o7777))
}

/// The filesystem a mount takes from input `i` (-1 is scratch).
pub(crate) fn mount_input(inputs: &[Output], i: i64) -> Result<Output, String> {
    if i == -1 {
        return Ok(Output::Fs(FsRef::default()));
    }
    usize::try_from(i)
        .ok()
        .and_then(|i| inputs.get(i))
        .cloned()
        .ok_or_else(|| format!("mount refers to invalid input {i}"))
}

/// `/etc/hosts` (localhost, the build hostname, the op's extra hosts) and a copy of the host's
/// `/etc/resolv.conf`, as read-only binds, as BuildKit gives every build container.
fn network_files(
    meta: &pb::Meta,
    sandbox: bool,
) -> Result<(Vec<ExtraMount>, tempfile::TempDir), String> {
    let tmp = tempfile::Builder::new()
        .prefix("memobuild-net-")
        .tempdir()
        .map_err(|e| format!("creating a directory for /etc/hosts: {e}"))?;
    let hostname = if meta.hostname.is_empty() {
        super::exec::DEFAULT_HOSTNAME
    } else {
        meta.hostname.as_str()
    };
    let mut hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in &meta.extra_hosts {
        hosts.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    let hosts_path = tmp.path().join("hosts");
    std::fs::write(&hosts_path, hosts).map_err(|e| format!("writing /etc/hosts: {e}"))?;
    let mut mounts = vec![ExtraMount::Bind {
        source: hosts_path,
        destination: "/etc/hosts".into(),
        readonly: true,
    }];
    // In the sandbox, names are resolved by slirp4netns's forwarder (the host's servers may be
    // loopback addresses the step cannot reach); elsewhere as on the host.
    let resolv = if sandbox {
        Ok(format!("nameserver {}\n", crate::netns::DNS).into_bytes())
    } else {
        std::fs::read("/etc/resolv.conf")
    };
    if let Ok(resolv) = resolv {
        let p = tmp.path().join("resolv.conf");
        std::fs::write(&p, resolv).map_err(|e| format!("writing /etc/resolv.conf: {e}"))?;
        mounts.push(ExtraMount::Bind {
            source: p,
            destination: "/etc/resolv.conf".into(),
            readonly: true,
        });
    }
    Ok((mounts, tmp))
}
