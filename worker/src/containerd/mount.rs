//! Mounting snapshot mounts on the host, and reading overlay directories out of them.

use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use nix::mount::{MntFlags, MsFlags};

use super::{Error, Result};

/// The kernel rejects mount data longer than one page.
const MAX_MOUNT_DATA: usize = 4095;

/// Mounts a snapshot's mounts (as returned by `prepare`/`view`/`mounts`) on a fresh directory and
/// unmounts them on drop. Needs root (`CAP_SYS_ADMIN`).
///
/// The syscalls are blocking but quick; call from `spawn_blocking` if that matters.
///
/// Known limit: containerd shortens overlay `lowerdir=` lists longer than a page by `chdir`-ing to a
/// common parent in a child process; we do not (`chdir` is process-wide), so a chain deeper than about
/// 50 layers fails with [`Error::MountUnsupported`].
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    /// How many mounts are stacked on `target` (they are undone in reverse order).
    mounted: usize,
}

impl MountGuard {
    /// Mounts `mounts` on a new directory under the system temp dir.
    pub fn mount(mounts: &[Mount]) -> Result<Self> {
        Self::mount_in(mounts, &std::env::temp_dir())
    }

    /// Mounts `mounts` on a new directory created under `parent`.
    pub fn mount_in(mounts: &[Mount], parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("memobuild-mnt-")
            .tempdir_in(parent)
            .map_err(|e| {
                Error::io(
                    format!("creating a mount point in `{}`", parent.display()),
                    e,
                )
            })?;
        // Never let TempDir's recursive delete run over a mounted snapshot: we remove the (empty)
        // directory ourselves after unmounting.
        let target = dir.keep();
        let mut guard = MountGuard { target, mounted: 0 };
        for m in mounts {
            let at = if m.target.is_empty() {
                guard.target.clone()
            } else {
                guard.target.join(m.target.trim_start_matches('/'))
            };
            mount_one(m, &at)?;
            guard.mounted += 1;
        }
        Ok(guard)
    }

    /// Where the mounts are.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts and removes the directory, reporting failures (drop does the same silently).
    pub fn unmount(mut self) -> Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        while self.mounted > 0 {
            unmount_one(&self.target)?;
            self.mounted -= 1;
        }
        match std::fs::remove_dir(&self.target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing mount point `{}`", self.target.display()),
                e,
            )),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::warn!(target = %self.target.display(), error = %e, "cannot clean up mount");
        }
    }
}

fn unmount_one(target: &Path) -> Result<()> {
    let mut last = nix::Error::EBUSY;
    for attempt in 0..10 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::Error::EBUSY) => {
                last = nix::Error::EBUSY;
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt.min(4)));
            }
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    // Still busy (or another error): detach so that the mount goes away once unused.
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|_| Error::Mount {
        kind: "umount".into(),
        target: target.to_path_buf(),
        source: last,
    })
}

/// Splits mount options into flags and the data string, as containerd's `parseMountOptions`.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<&str>) {
    let mut set = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (on, flag) = match o.as_str() {
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "atime" => (false, MsFlags::MS_NOATIME),
            "bind" => (true, MsFlags::MS_BIND),
            "defaults" => (true, MsFlags::empty()),
            "dev" => (false, MsFlags::MS_NODEV),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "mand" => (true, MsFlags::MS_MANDLOCK),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "nodev" => (true, MsFlags::MS_NODEV),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "nomand" => (false, MsFlags::MS_MANDLOCK),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "suid" => (false, MsFlags::MS_NOSUID),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            other => {
                data.push(other);
                continue;
            }
        };
        if on {
            set |= flag;
            clear &= !flag;
        } else {
            clear |= flag;
            set &= !flag;
        }
    }
    (set, clear, data)
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, _clear, data) = parse_options(&m.options);
    let data = data.join(",");
    let err = |source| Error::Mount {
        kind: m.r#type.clone(),
        target: target.to_path_buf(),
        source,
    };
    if data.len() > MAX_MOUNT_DATA {
        return Err(Error::MountUnsupported {
            kind: m.r#type.clone(),
            target: target.to_path_buf(),
            reason: format!(
                "mount options are {} bytes, the kernel takes at most {MAX_MOUNT_DATA}",
                data.len()
            ),
        });
    }
    if flags.contains(MsFlags::MS_BIND) {
        let bind = flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        nix::mount::mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .map_err(err)?;
        // Bind mounts ignore other flags on the first call; apply them with a remount.
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | rest;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
            {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(err(e));
            }
        }
        return Ok(());
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(m.r#type.as_str()),
        flags,
        data,
    )
    .map_err(err)
}

fn option_value<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn is_bind(m: &Mount) -> bool {
    m.r#type == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

fn is_readonly(m: &Mount) -> bool {
    m.options.iter().any(|o| o == "ro")
}

/// The directory where writes to an active snapshot land: the `upperdir=` of its overlay mount, or,
/// for an active snapshot without parent (the overlayfs snapshotter returns a single writable bind
/// mount of the upper directory then), the bind source. `None` for read-only views.
pub fn overlay_upperdir(mounts: &[Mount]) -> Option<PathBuf> {
    match mounts {
        [m] if m.r#type == "overlay" => option_value(m, "upperdir").map(PathBuf::from),
        [m] if is_bind(m) && !is_readonly(m) => Some(PathBuf::from(&m.source)),
        _ => None,
    }
}

/// The read-only layers under a snapshot, top-most first as in overlay's `lowerdir=`. For a
/// read-only bind mount (a view of a single-layer snapshot) this is the bind source; for a
/// writable bind (an active snapshot without parent) it is empty.
pub fn overlay_lowerdirs(mounts: &[Mount]) -> Vec<PathBuf> {
    match mounts {
        [m] if m.r#type == "overlay" => option_value(m, "lowerdir")
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default(),
        [m] if is_bind(m) && is_readonly(m) => vec![PathBuf::from(&m.source)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(ty: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: ty.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_dirs() {
        let m = [mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
            ],
        )];
        assert_eq!(overlay_upperdir(&m), Some(PathBuf::from("/s/3/fs")));
        assert_eq!(
            overlay_lowerdirs(&m),
            vec![PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")]
        );
    }

    #[test]
    fn bind_dirs() {
        let rw = [mount("bind", "/s/1/fs", &["rbind", "rw"])];
        assert_eq!(overlay_upperdir(&rw), Some(PathBuf::from("/s/1/fs")));
        assert!(overlay_lowerdirs(&rw).is_empty());
        let ro = [mount("bind", "/s/1/fs", &["ro", "rbind"])];
        assert_eq!(overlay_upperdir(&ro), None);
        assert_eq!(overlay_lowerdirs(&ro), vec![PathBuf::from("/s/1/fs")]);
        // A read-only overlay view has no upperdir.
        let view = [mount("overlay", "overlay", &["lowerdir=/s/2/fs:/s/1/fs"])];
        assert_eq!(overlay_upperdir(&view), None);
    }

    #[test]
    fn options_split_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "lowerdir=/a:/b", "index=off", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (set, _, data) = parse_options(&opts);
        assert!(set.contains(MsFlags::MS_NOSUID));
        assert!(
            !set.contains(MsFlags::MS_RDONLY),
            "later `rw` wins over `ro`"
        );
        assert_eq!(data, vec!["lowerdir=/a:/b", "index=off"]);
    }
}
