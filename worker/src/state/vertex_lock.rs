//! One execution of a vertex at a time per state directory.
//!
//! Builds that share a state directory (concurrent `memobuild build`s, the daemon's jobs) often
//! reach the same vertex at once: a team's CI starting several targets of one Dockerfile, say.
//! The first to miss the cache takes an exclusive `flock` on the vertex's lock file and runs
//! it; the others wait for the lock and then find the result in the cache. `flock` locks belong
//! to open files, so this works between threads of one process as between processes, and the
//! kernel drops a dead process's lock: a killed build never blocks the next one.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// Longest pause between two attempts to take a busy lock.
const MAX_POLL: Duration = Duration::from_millis(200);

/// A held vertex lock; released when dropped.
pub struct VertexLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for VertexLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VertexLock")
    }
}

impl VertexLock {
    /// Takes the lock at `path` (created if missing), waiting while another build holds it.
    /// Returns it and whether it had to wait (then the holder's result is probably cached).
    /// Polls instead of blocking, so a cancelled build stops waiting at once.
    pub async fn acquire(path: &Path) -> io::Result<(VertexLock, bool)> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut waited = false;
        let mut pause = Duration::from_millis(10);
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok((VertexLock { _lock: lock }, waited)),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    waited = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL);
                }
                Err((_, e)) => return Err(io::Error::from(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_taker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/ab/abcd");
        let (first, waited) = VertexLock::acquire(&path).await.unwrap();
        assert!(!waited);
        let p = path.clone();
        let second = tokio::spawn(async move { VertexLock::acquire(&p).await.map(|(_, w)| w) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second taker must wait");
        drop(first);
        assert!(second.await.unwrap().unwrap(), "it waited");
    }
}
