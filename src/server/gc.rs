//! Size-bounded garbage collection, in the background.
//!
//! Uploads that take the store over `--max-size` wake the collector; it takes the least recently
//! used objects out of the index (so nobody is told about them any more) and deletes their files
//! on the blocking pool. A GET racing with the deletion either streams the whole object (the open
//! file outlives the unlink) or gets a 404, which a cache client treats as a miss.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::server::lru::LruIndex;
use crate::server::store::Store;

/// Wakes the collector.
#[derive(Debug, Clone)]
pub struct GcHandle {
    wake: Arc<Notify>,
}

impl GcHandle {
    /// Asks for a collection. Cheap; wake-ups while one runs are merged into one more run.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Starts the collector task (it lives as long as the runtime).
pub fn spawn(store: Arc<Store>, index: Arc<LruIndex>) -> GcHandle {
    let wake = Arc::new(Notify::new());
    let handle = GcHandle { wake: wake.clone() };
    tokio::spawn(async move {
        loop {
            wake.notified().await;
            collect(&store, &index).await;
        }
    });
    handle
}

/// Evicts the least recently used objects if the store is over its bound.
pub async fn collect(store: &Arc<Store>, index: &Arc<LruIndex>) {
    let victims = index.take_victims();
    if victims.is_empty() {
        return;
    }
    let store = store.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let mut bytes = 0u64;
        let mut count = 0usize;
        for (id, size) in victims {
            match store.remove(&id) {
                Ok(()) => {
                    tracing::debug!(object = %id, size, "evicted");
                    bytes += size;
                    count += 1;
                }
                Err(e) => tracing::warn!(object = %id, "cannot evict: {e}"),
            }
        }
        (count, bytes)
    })
    .await;
    match removed {
        Ok((count, bytes)) => tracing::info!(
            count,
            bytes,
            remaining = index.total(),
            "garbage collection evicted the least recently used objects"
        ),
        Err(e) => tracing::warn!("garbage collection failed: {e}"),
    }
}
