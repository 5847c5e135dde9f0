//! Temporary files of processes that are gone.
//!
//! Everything MemoBuild writes before it is complete (a blob being downloaded, a record, an
//! export beside its destination) lives under a temporary name until it is renamed into place.
//! A process killed with SIGKILL cannot remove its temporaries, so their names carry the
//! process id ([`temp_prefix`]): a later process removes those whose process no longer exists
//! ([`sweep_dir`]), and scratch directories are per process (`tmp/<pid>/`, removed whole). A
//! temporary of an older MemoBuild (no process id in its name) goes once it is a day old.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How old a temporary without a process id must be before it is taken for stale.
const LEGACY_AGE: Duration = Duration::from_secs(24 * 3600);

/// The prefix of this process's temporaries of kind `kind` (`.tmp-<pid>-`).
pub fn temp_prefix(kind: &str) -> String {
    format!("{kind}{}-", std::process::id())
}

/// The process id in `name` after `kind` (`.tmp-123-x` → 123).
fn owner(name: &str, kind: &str) -> Option<i32> {
    name.strip_prefix(kind)?.split('-').next()?.parse().ok()
}

fn is_old(md: &fs::Metadata) -> bool {
    md.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > LEGACY_AGE)
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Entries removed.
    pub entries: u64,
    /// Bytes they held.
    pub bytes: u64,
}

impl Swept {
    fn add(&mut self, other: Swept) {
        self.entries += other.entries;
        self.bytes += other.bytes;
    }
}

/// Removes the entries of `dir` named `<kind><pid>-…` whose process is gone (and old ones named
/// `<kind>…` without a process id).
pub fn sweep_dir(dir: &Path, kind: &str) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return swept;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(kind) {
            continue;
        }
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        let stale = match owner(&name, kind) {
            Some(pid) => pid != std::process::id() as i32 && !super::process_alive(pid),
            None => is_old(&md),
        };
        if stale {
            swept.add(remove_tree(&e.path()));
        }
    }
    swept
}

/// Removes the per-process scratch directories under `tmp` (`<pid>/`) of processes that are
/// gone, and old entries of older MemoBuilds.
pub fn sweep_scratch(tmp: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(tmp) else {
        return swept;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        let stale = match name.parse::<i32>() {
            Ok(pid) => pid != std::process::id() as i32 && !super::process_alive(pid),
            Err(_) => is_old(&md),
        };
        if stale {
            swept.add(remove_tree(&e.path()));
        }
    }
    swept
}

/// Removes `path` and what is below it without crossing into other filesystems: a mount a
/// killed process left inside (a snapshot, a tmpfs) is detached first, never emptied.
fn remove_tree(path: &Path) -> Swept {
    detach_mounts_under(path);
    let mut swept = Swept::default();
    let dev = match path.symlink_metadata() {
        Ok(md) => md.dev(),
        Err(_) => return swept,
    };
    remove_same_device(path, dev, &mut swept);
    swept
}

fn remove_same_device(path: &Path, dev: u64, swept: &mut Swept) {
    let Ok(md) = path.symlink_metadata() else {
        return;
    };
    if md.dev() != dev {
        return;
    }
    if md.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                remove_same_device(&e.path(), dev, swept);
            }
        }
        if fs::remove_dir(path).is_ok() {
            swept.entries += 1;
        }
    } else if fs::remove_file(path).is_ok() {
        swept.entries += 1;
        swept.bytes += md.len();
    }
}

/// Lazily unmounts every mount point at or below `path` (deepest first).
fn detach_mounts_under(path: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!("cannot unmount `{p}` left by a killed build: {e}");
        }
    }
}

/// Removes the stale temporaries of a whole state directory: scratch space, blob and record
/// temporaries, export-time conversions, copy donors. Returns what went.
pub fn sweep_state(state: &super::StateDir) -> io::Result<Swept> {
    let mut swept = Swept::default();
    swept.add(sweep_scratch(&state.tmp_root()));
    swept.add(sweep_dir(&state.sha256_blobs(), ".tmp-"));
    swept.add(sweep_dir(&state.sha256_blobs().join(".verified"), ".tmp-"));
    swept.add(sweep_dir(
        &state.sha256_blobs().join(".gzip-chunks"),
        ".tmp-",
    ));
    if let Ok(shards) = fs::read_dir(state.action_cache()) {
        for s in shards.flatten() {
            swept.add(sweep_dir(&s.path(), ".tmp-"));
        }
    }
    if let Ok(shards) = fs::read_dir(state.compression_memo()) {
        for s in shards.flatten() {
            swept.add(sweep_dir(&s.path(), ".tmp-"));
        }
    }
    swept.add(sweep_dir(&state.copy_donors(), ".tmp-"));
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process id that does not exist now (a child that has exited and been reaped).
    fn dead_pid() -> i32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        pid
    }

    // Verifies: temporaries of a dead process go, this process's and live ones stay, and an old
    // unowned one goes while a new one stays.
    #[test]
    fn only_the_dead_processes_temporaries_go() {
        let d = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let mine = d.path().join(format!("{}x", temp_prefix(".tmp-")));
        let theirs = d.path().join(format!(".tmp-{dead}-abc"));
        let unowned_new = d.path().join(".tmp-zzzz");
        let other = d.path().join("0123abcd");
        for p in [&mine, &theirs, &unowned_new, &other] {
            fs::write(p, b"12345").unwrap();
        }
        let swept = sweep_dir(d.path(), ".tmp-");
        assert_eq!(
            swept,
            Swept {
                entries: 1,
                bytes: 5
            }
        );
        assert!(mine.exists() && unowned_new.exists() && other.exists());
        assert!(!theirs.exists());
    }

    #[test]
    fn dead_scratch_directories_go_whole() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(dead_pid().to_string());
        fs::create_dir_all(dead.join("export-1/sub")).unwrap();
        fs::write(dead.join("export-1/sub/f"), b"x").unwrap();
        let live = d.path().join(std::process::id().to_string());
        fs::create_dir_all(&live).unwrap();
        let swept = sweep_scratch(d.path());
        assert!(!dead.exists());
        assert!(live.exists());
        assert_eq!(swept.bytes, 1);
    }
}
