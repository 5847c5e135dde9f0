//! The network a `RUN` gets by default: a namespace of its own with outbound access, as
//! BuildKit's sandbox network mode.
//!
//! Each step gets a fresh network namespace, named under `/run/netns` as `ip netns add` names
//! them (made here, in-process: a thread unshares its network namespace and bind-mounts it
//! there, which costs far less than starting `ip`), with [slirp4netns] attached to it:
//! user-mode networking that gives the namespace a `tap0` interface (10.0.2.100/24), a gateway
//! and a DNS forwarder (10.0.2.3), and reaches the outside through sockets of this process's
//! network namespace. `--disable-host-loopback` keeps the step away from the loopback services
//! of the machine it builds on (10.0.2.2 would otherwise reach them). So a step can fetch
//! packages but cannot talk to the build host's local daemons; `--network=host` (an
//! entitlement) shares the host's namespace, `--network=none` gives an empty one.
//!
//! slirp4netns exits when the pipe this process holds (`--exit-fd`) closes, also if MemoBuild
//! is killed; namespaces are named after the process id, so [`sweep`] removes those of dead
//! processes at the next start.
//!
//! [slirp4netns]: https://github.com/rootless-containers/slirp4netns

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Name prefix of MemoBuild's namespaces (`memobuild-<pid>-<n>`).
const PREFIX: &str = "memobuild-";
/// The DNS forwarder slirp4netns provides inside the namespace.
pub const DNS: &str = "10.0.2.3";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Setting up a step's network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool is missing.
    #[error(
        "`{tool}` is needed for the default (sandbox) network of RUN steps and was not found: install it (Debian: `apt-get install {package}`), or use `RUN --network=none`, or `--network=host` with `--allow network.host`"
    )]
    Missing {
        /// The command.
        tool: &'static str,
        /// The Debian package holding it.
        package: &'static str,
    },
    /// A command failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// A network namespace with outbound access; removed (and its slirp4netns stopped) on drop.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    slirp: Option<Child>,
    /// Held open: slirp4netns exits when it closes.
    _exit: OwnedFd,
}

/// Makes `/run/netns` a shared mount point once per process, as `ip netns add` does, so that
/// namespaces bound under it show in every mount namespace.
fn prepare_dir() -> io::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let done = DONE.get_or_init(|| {
        use nix::mount::{MsFlags, mount};
        let dir = Path::new(NETNS_DIR);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let shared = || {
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )
        };
        match shared() {
            Ok(()) => Ok(()),
            // Not a mount point yet: bind it onto itself first.
            Err(nix::errno::Errno::EINVAL) => mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|()| shared())
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    done.clone().map_err(io::Error::other)
}

/// Creates the named network namespace at `path`: a new namespace, bound onto an empty file.
fn add(path: &Path) -> io::Result<()> {
    prepare_dir()?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    // Only the thread that unshares changes namespace; its binding keeps the namespace.
    let target = path.to_path_buf();
    let bound = std::thread::Builder::new()
        .name("memobuild-netns".into())
        .spawn(move || -> io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if let Err(e) = bound {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Removes the named network namespace at `path` (the namespace ends with its last user).
fn delete(path: &Path) -> io::Result<()> {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_file(path)
}

impl Sandbox {
    /// Makes a namespace and attaches slirp4netns to it. Blocking (a few milliseconds).
    pub fn create() -> Result<Sandbox, NetError> {
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = Path::new(NETNS_DIR).join(&name);
        add(&path).map_err(io_err(format!("creating network namespace `{name}`")))?;
        let remove = |e| {
            let _ = delete(&path);
            e
        };
        // Close-on-exec everywhere but on the two ends slirp4netns inherits, so no other child
        // of this process holds them (which would keep slirp4netns from seeing EOF).
        let pipe = || -> Result<(OwnedFd, OwnedFd), NetError> {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| io_err("creating a pipe")(e.into()))
        };
        let inherit = |fd: &OwnedFd| -> Result<(), NetError> {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map(|_| ())
            .map_err(|e| io_err("preparing a pipe")(e.into()))
        };
        let (ready_r, ready_w) = pipe().map_err(remove)?;
        let (exit_r, exit_w) = pipe().map_err(remove)?;
        inherit(&ready_w).map_err(remove)?;
        inherit(&exit_r).map_err(remove)?;
        let child = Command::new("slirp4netns")
            .arg("--configure")
            .arg("--mtu=65520")
            .arg("--disable-host-loopback")
            .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
            .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
            .arg("--netns-type=path")
            .arg(&path)
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        // The child has its copies; ours of the ends it uses must go, or EOF never comes.
        drop(ready_w);
        drop(exit_r);
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(remove(NetError::Missing {
                    tool: "slirp4netns",
                    package: "slirp4netns",
                }));
            }
            Err(e) => return Err(remove(io_err("starting slirp4netns")(e))),
        };
        // slirp4netns writes "1" once the interface is configured, or exits.
        let mut ready = [0u8; 1];
        let got = std::fs::File::from(ready_r).read(&mut ready);
        if !matches!(got, Ok(1)) {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            let stderr = out
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_default();
            return Err(remove(NetError::Io {
                what: "starting slirp4netns".into(),
                source: io::Error::other(if stderr.is_empty() {
                    "it exited before the network was ready".to_owned()
                } else {
                    stderr
                }),
            }));
        }
        Ok(Sandbox {
            name,
            slirp: Some(child),
            _exit: exit_w,
        })
    }

    /// The namespace's path, for the runtime spec.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut c) = self.slirp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = delete(&self.path());
    }
}

/// Removes the namespaces processes that are gone left behind (killed before their steps
/// ended). Returns how many.
pub fn sweep() -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if crate::state::process_alive(pid) {
            continue;
        }
        if delete(&e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn namespaces_are_made_in_process_and_swept_when_their_process_is_gone() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // No process has this id (above any pid_max): its namespace is a killed build's.
        let path = Path::new(NETNS_DIR).join(format!("{PREFIX}2147483600-0"));
        add(&path).unwrap();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let made = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(made, own, "a namespace of its own is bound there");
        assert!(add(&path).is_err(), "a name is made once");
        assert!(sweep() >= 1);
        assert!(!path.exists());
    }
}
