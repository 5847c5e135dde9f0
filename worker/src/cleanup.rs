//! Cleanups that run after what needed them is gone.
//!
//! A container's guard, dropped when its build is cancelled, cannot await containerd in `Drop`;
//! it hands the kill and delete to [`spawn`]. Those tasks are tracked so that whoever ends a
//! build ([`crate::Build::finish`]) or the process (the daemon on SIGTERM, `memobuild build` at
//! exit) can [`wait`] for them, and no container, task or shim is left behind.

use std::future::Future;
use std::sync::OnceLock;

use tokio_util::task::TaskTracker;

fn tracker() -> &'static TaskTracker {
    static TRACKER: OnceLock<TaskTracker> = OnceLock::new();
    TRACKER.get_or_init(TaskTracker::new)
}

/// Runs `cleanup` on the current runtime, tracked; without a runtime it cannot run, and that
/// is logged.
pub fn spawn(what: &str, cleanup: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            tracing::debug!("cleaning up {what} in the background");
            tracker().spawn_on(cleanup, &handle);
        }
        Err(_) => tracing::warn!("no runtime to clean up {what}"),
    }
}

/// Waits until every cleanup spawned so far has finished.
pub async fn wait() {
    let t = tracker();
    t.close();
    t.wait().await;
    t.reopen();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_spawned_cleanups() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn("a test", async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        wait().await;
        assert!(rx.await.is_ok());
    }
}
