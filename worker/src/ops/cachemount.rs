//! `RUN --mount=type=cache`: directories under `<state>/cache-mounts/` that outlive builds.
//!
//! One directory per cache id (and per base filesystem, when the mount names one: BuildKit keys
//! cache refs by id and base too). Its contents never enter a layer: it is bind-mounted into the
//! container, so what a process writes there bypasses the root snapshot.
//!
//! Sharing, as BuildKit's `CacheSharingOpt`:
//! - `shared`: every user mounts the same directory at once;
//! - `locked`: users take turns (a tokio mutex per directory inside this process, an exclusive
//!   `flock` on `<dir>/data.lock` across processes);
//! - `private`: each concurrent user gets a directory of its own (`data`, `data-1`, …); idle ones
//!   are reused, so every one of them keeps its contents for later builds.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use memobuild_proto::pb;
use nix::fcntl::{Flock, FlockArg};

use crate::fsops::{self, CopyOptions};

/// Per directory, the mutex `locked` users take turns on (shared by every worker in the process).
static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// Slot directories a `private` user of this process holds right now.
static PRIVATE_IN_USE: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// How many private slots of one cache a build may create before giving up.
const MAX_PRIVATE_SLOTS: usize = 64;

/// A cache directory in use; dropping it lets the next user in.
pub(crate) struct CacheLease {
    /// The directory to bind-mount.
    pub(crate) dir: PathBuf,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    _flock: Option<Flock<File>>,
    private_slot: Option<PathBuf>,
}

impl Drop for CacheLease {
    fn drop(&mut self) {
        if let Some(slot) = self.private_slot.take()
            && let Ok(mut in_use) = PRIVATE_IN_USE.lock()
        {
            in_use.remove(&slot);
        }
    }
}

/// The base a cache directory starts from: a mounted filesystem and the path in it.
pub(crate) struct CacheBase {
    /// Root of the mounted input.
    pub(crate) root: PathBuf,
    /// The mount's selector inside it.
    pub(crate) selector: String,
}

/// The directory under `root` (the state directory's `cache-mounts/`) for cache `id` on base
/// `base_identity` (`None`: no base). Readable, and collision-free through the hash suffix.
pub(crate) fn cache_dir(root: &Path, id: &str, base_identity: Option<(&str, &str)>) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(id.as_bytes());
    if let Some((identity, selector)) = base_identity {
        h.update(b"\0");
        h.update(identity.as_bytes());
        h.update(b"\0");
        h.update(selector.as_bytes());
    }
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let readable = readable.trim_matches('_');
    let readable: String = readable.chars().take(64).collect();
    let hash = h.finalize().to_hex();
    root.join(format!("{readable}-{}", &hash.as_str()[..16]))
}

/// Takes cache directory `dir` with `sharing`, creating it (from `base`, if any) the first time.
pub(crate) async fn acquire(
    dir: PathBuf,
    sharing: pb::CacheSharingOpt,
    base: Option<CacheBase>,
) -> Result<CacheLease, String> {
    let d = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(&d))
        .await
        .map_err(|e| format!("cache mount task failed: {e}"))?
        .map_err(|e| format!("creating `{}`: {e}", dir.display()))?;
    let base = Arc::new(base);
    match sharing {
        pb::CacheSharingOpt::Shared => {
            let slot = dir.join("data");
            ensure_slot(&slot, base).await?;
            Ok(CacheLease {
                dir: slot,
                _turn: None,
                _flock: None,
                private_slot: None,
            })
        }
        pb::CacheSharingOpt::Locked => {
            let mutex = {
                let mut locks = LOCKS
                    .lock()
                    .map_err(|_| "cache mount lock table poisoned".to_string())?;
                locks.entry(dir.clone()).or_default().clone()
            };
            let turn = mutex.lock_owned().await;
            let lock_path = dir.join("data.lock");
            let flock = tokio::task::spawn_blocking(move || lock_file(&lock_path, true))
                .await
                .map_err(|e| format!("cache mount task failed: {e}"))??
                .ok_or_else(|| "cache mount lock not taken".to_string())?;
            let slot = dir.join("data");
            ensure_slot(&slot, base).await?;
            Ok(CacheLease {
                dir: slot,
                _turn: Some(turn),
                _flock: Some(flock),
                private_slot: None,
            })
        }
        pb::CacheSharingOpt::Private => {
            for n in 0..MAX_PRIVATE_SLOTS {
                let name = if n == 0 {
                    "data".to_string()
                } else {
                    format!("data-{n}")
                };
                let slot = dir.join(&name);
                {
                    let mut in_use = PRIVATE_IN_USE
                        .lock()
                        .map_err(|_| "cache mount slot table poisoned".to_string())?;
                    if !in_use.insert(slot.clone()) {
                        continue;
                    }
                }
                // From here on the lease owns the in-process claim (its drop releases it).
                let mut lease = CacheLease {
                    dir: slot.clone(),
                    _turn: None,
                    _flock: None,
                    private_slot: Some(slot.clone()),
                };
                let lock_path = dir.join(format!("{name}.lock"));
                let flock = tokio::task::spawn_blocking(move || lock_file(&lock_path, false))
                    .await
                    .map_err(|e| format!("cache mount task failed: {e}"))??;
                let Some(flock) = flock else {
                    continue; // another process uses this slot
                };
                lease._flock = Some(flock);
                ensure_slot(&slot, base.clone()).await?;
                return Ok(lease);
            }
            Err(format!(
                "more than {MAX_PRIVATE_SLOTS} private cache directories of `{}` in use",
                dir.display()
            ))
        }
    }
}

/// An exclusive `flock` on `path` (created if missing); `None` if `wait` is false and another
/// holder has it.
fn lock_file(path: &Path, wait: bool) -> Result<Option<Flock<File>>, String> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening `{}`: {e}", path.display()))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::Error::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(format!("locking `{}`: {e}", path.display())),
    }
}

/// Creates slot directory `slot` unless it exists: empty (`0755`, root-owned) or a copy of the
/// base's selected directory (its contents, mode and owner). Built beside it and renamed, so a
/// crash never leaves a half-filled cache.
async fn ensure_slot(slot: &Path, base: Arc<Option<CacheBase>>) -> Result<(), String> {
    let slot = slot.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if slot.is_dir() {
            return Ok(());
        }
        let parent = slot
            .parent()
            .ok_or_else(|| format!("`{}` has no parent", slot.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(parent)
            .map_err(|e| format!("creating a cache directory in `{}`: {e}", parent.display()))?;
        if let Some(b) = base.as_ref() {
            populate(tmp.path(), b)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let tmp = tmp.keep();
        match std::fs::rename(&tmp, &slot) {
            Ok(()) => Ok(()),
            // Someone else made it first (a shared user in another process): use theirs.
            Err(_) if slot.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(format!("creating `{}`: {e}", slot.display()))
            }
        }
    })
    .await
    .map_err(|e| format!("cache mount task failed: {e}"))?
}

fn populate(dest: &Path, base: &CacheBase) -> Result<(), String> {
    let src =
        fsops::resolve_in_root(&base.root, &base.selector, true).map_err(|e| e.to_string())?;
    let md = std::fs::metadata(&src)
        .map_err(|e| format!("cache mount source `{}`: {e}", base.selector))?;
    if !md.is_dir() {
        return Err(format!(
            "cache mount source `{}` is not a directory",
            base.selector
        ));
    }
    let opts = CopyOptions {
        dir_copy_contents: true,
        ..CopyOptions::default()
    };
    let rel = base.selector.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    fsops::copy(&base.root, rel, dest, "/", &opts)
        .map_err(|e| format!("filling the cache directory from `{}`: {e}", base.selector))?;
    // The copy gives the root the source's metadata; make sure of owner and mode (the point of
    // a base for cache mounts is `uid=`, `gid=`, `mode=`).
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dest, Some(md.uid()), Some(md.gid())).map_err(|e| e.to_string())?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dir_names_are_readable_and_distinct() {
        let root = Path::new("/state/cache-mounts");
        let a = cache_dir(root, "/root/.cache", None);
        let b = cache_dir(root, "/root/.cache", Some(("sha256:x", "/cache")));
        let c = cache_dir(root, "/root/_cache", None);
        assert!(a.starts_with("/state/cache-mounts"));
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(name.is_some_and(|n| n.starts_with("root_.cache-")));
        assert_ne!(a, b);
        assert_ne!(a, c);
        let dots = cache_dir(root, "../../etc", None);
        assert!(dots.starts_with("/state/cache-mounts"));
        assert_eq!(dots.components().count(), a.components().count());
    }

    #[tokio::test]
    async fn locked_users_take_turns_and_private_users_get_their_own() {
        let state = tempfile::tempdir().unwrap();
        let dir = cache_dir(state.path(), "turns", None);
        let first = acquire(dir.clone(), pb::CacheSharingOpt::Locked, None)
            .await
            .unwrap();
        std::fs::write(first.dir.join("f"), b"1").unwrap();
        let second = tokio::spawn(acquire(dir.clone(), pb::CacheSharingOpt::Locked, None));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "second locked user must wait");
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert_eq!(std::fs::read(second.dir.join("f")).unwrap(), b"1");
        let p0 = acquire(dir.clone(), pb::CacheSharingOpt::Private, None)
            .await
            .unwrap();
        assert_ne!(
            p0.dir, second.dir,
            "private users avoid a directory in locked use"
        );
        drop((p0, second));

        let p1 = acquire(dir.clone(), pb::CacheSharingOpt::Private, None)
            .await
            .unwrap();
        let p2 = acquire(dir.clone(), pb::CacheSharingOpt::Private, None)
            .await
            .unwrap();
        assert_ne!(p1.dir, p2.dir);
        assert_eq!(p1.dir, dir.join("data"), "the idle main slot is reused");
        let p2_dir = p2.dir.clone();
        drop(p2);
        let p3 = acquire(dir.clone(), pb::CacheSharingOpt::Private, None)
            .await
            .unwrap();
        assert_eq!(p3.dir, p2_dir, "a released slot is reused");
        let shared = acquire(dir, pb::CacheSharingOpt::Shared, None)
            .await
            .unwrap();
        assert_eq!(shared.dir, p1.dir);
    }

    #[tokio::test]
    async fn base_gives_owner_mode_and_contents() {
        let state = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let cache = base.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(cache.join("seed"), b"s").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&cache, Some(1234), Some(4321)).unwrap();
        let dir = cache_dir(state.path(), "based", Some(("chain", "/cache")));
        let lease = acquire(
            dir,
            pb::CacheSharingOpt::Shared,
            Some(CacheBase {
                root: base.path().to_path_buf(),
                selector: "/cache".into(),
            }),
        )
        .await
        .unwrap();
        let md = std::fs::metadata(&lease.dir).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1234, 4321, 0o700)
        );
        assert_eq!(std::fs::read(lease.dir.join("seed")).unwrap(), b"s");
    }
}
