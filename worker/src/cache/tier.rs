//! The cache tiers behind one async trait, composed as decorators.
//!
//! ```text
//! ReadThrough(Memory L1, ReadThrough(Disk L2, Detached(Remote L3)))
//! ```
//!
//! [`Tier::get`] answers a record only when every blob it names (of every output) is in the
//! local [`BlobStore`] and matches its digest, and every layer's size and diff ID are its blob's
//! ([`ActionRecord::check`], on a blocking thread); a tier that keeps blobs elsewhere (L3)
//! fetches them into the store first. A record that contradicts its blobs is a miss, reported
//! once through [`TierCtx::warn`] and dropped from that tier. [`ReadThrough`] asks its front
//! tier, then its back one, and backfills the front with what the back had; its `put` writes to
//! both. [`Detached`] makes a tier that may be slow or unreachable harmless: its writes run in
//! the background (awaited by [`Tier::flush`]), and its first failure becomes one warning, after
//! which it is skipped. A damaged blob is not a failure of the tier: [`Remote`] makes it a miss
//! and uploads the blob again once the step has been built here.
//! [`MemoryTier`] is L1, an LRU bounded by bytes; L2 is [`ActionCache`](super::ActionCache);
//! L3 is [`Remote`] over the Bazel HTTP protocol ([`super::remote`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::remote::{RemoteError, RemoteTier};
use super::{ActionRecord, Lookup};
use crate::blobs::BlobStore;

/// Where a tier reports what it cannot turn into an error: a tier that fails in the
/// background, or that is skipped from now on.
pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

/// What every tier call gets besides its key or record.
#[derive(Clone)]
pub struct TierCtx {
    /// The local blob store: records are only answered once their blobs are in it.
    pub blobs: BlobStore,
    /// Where warnings go (the build's progress).
    pub warn: Warn,
}

impl std::fmt::Debug for TierCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierCtx")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// A tier's failure. Lookups that fail are misses to the solver; the message says which tier.
#[derive(Debug, thiserror::Error)]
#[error("{tier}: {message}")]
pub struct TierError {
    /// The tier ([`Tier::describe`]).
    pub tier: String,
    /// What went wrong.
    pub message: String,
}

/// One level of the action cache.
pub trait Tier: Send + Sync {
    /// A short description for messages (`memory`, the directory, the URL).
    fn describe(&self) -> String;
    /// The record stored under `key` whose every blob is now in `ctx.blobs`, verified, each
    /// layer's diff ID its blob's; `Ok(None)` for a miss (including a record whose blobs are gone
    /// or damaged, and one that contradicts its blobs, which is also reported to `ctx.warn`).
    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>>;
    /// Stores `record`, whose blobs are in `ctx.blobs`.
    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>>;
    /// Waits for writes still running in the background.
    fn flush(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }
    /// Whether a tier behind this one failed and is skipped from now on ([`Detached`]).
    fn gave_up(&self) -> bool {
        false
    }
}

/// Asks `front`, then `back`; a hit in `back` is copied into `front`. Writes go to both.
pub struct ReadThrough {
    front: Arc<dyn Tier>,
    back: Arc<dyn Tier>,
}

impl ReadThrough {
    /// `front` in front of `back`.
    pub fn new(front: Arc<dyn Tier>, back: Arc<dyn Tier>) -> Self {
        ReadThrough { front, back }
    }
}

impl Tier for ReadThrough {
    fn describe(&self) -> String {
        format!("{} + {}", self.front.describe(), self.back.describe())
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
        async move {
            match self.front.get(key, ctx).await {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                // A broken front tier is a miss there; the back one may still have it.
                Err(e) => tracing::warn!("cache lookup failed: {e}"),
            }
            let Some(r) = self.back.get(key, ctx).await? else {
                return Ok(None);
            };
            if let Err(e) = self.front.put(&r, ctx).await {
                tracing::warn!("cannot backfill the cache: {e}");
            }
            Ok(Some(r))
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        async move {
            // Both are written even when the first fails; the first error is returned.
            let front = self.front.put(record, ctx).await;
            let back = self.back.put(record, ctx).await;
            front.and(back)
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async move {
            self.front.flush().await;
            self.back.flush().await;
        }
        .boxed()
    }

    fn gave_up(&self) -> bool {
        self.front.gave_up() || self.back.gave_up()
    }
}

/// A tier that must never fail or slow down a build: writes run in the background, and the
/// first failure (of a read or a write) is reported once through [`TierCtx::warn`], after
/// which the tier is skipped for the rest of this process.
pub struct Detached {
    inner: Arc<dyn Tier>,
    disabled: Arc<AtomicBool>,
    pending: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Detached {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Tier>) -> Self {
        Detached {
            inner,
            disabled: Arc::default(),
            pending: Mutex::default(),
        }
    }

    fn fail(disabled: &AtomicBool, warn: &Warn, describe: &str, e: &TierError) {
        if !disabled.swap(true, Ordering::SeqCst) {
            warn(format!(
                "warning: remote cache {describe} failed, continuing without it: {}",
                e.message
            ));
        }
    }
}

impl Tier for Detached {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
        async move {
            if self.disabled.load(Ordering::SeqCst) {
                return Ok(None);
            }
            match self.inner.get(key, ctx).await {
                Ok(r) => Ok(r),
                Err(e) => {
                    Self::fail(&self.disabled, &ctx.warn, &self.inner.describe(), &e);
                    Ok(None)
                }
            }
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        if self.disabled.load(Ordering::SeqCst) {
            return futures::future::ready(Ok(())).boxed();
        }
        let inner = self.inner.clone();
        let disabled = self.disabled.clone();
        let record = record.clone();
        let ctx = ctx.clone();
        let task = tokio::spawn(async move {
            if disabled.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = inner.put(&record, &ctx).await {
                Self::fail(&disabled, &ctx.warn, &inner.describe(), &e);
            }
        });
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|t| !t.is_finished());
            p.push(task);
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async move {
            loop {
                let tasks: Vec<_> = match self.pending.lock() {
                    Ok(mut p) => p.drain(..).collect(),
                    Err(_) => return,
                };
                if tasks.is_empty() {
                    break;
                }
                for t in tasks {
                    let _ = t.await;
                }
            }
            self.inner.flush().await;
        }
        .boxed()
    }

    fn gave_up(&self) -> bool {
        self.disabled.load(Ordering::SeqCst) || self.inner.gave_up()
    }
}

/// About how many bytes a record holds (its strings; what the budget counts).
fn approx_size(r: &ActionRecord) -> usize {
    let layer =
        |l: &crate::layer::LayerBlob| l.digest.len() + l.diff_id.len() + l.media_type.len() + 16;
    r.key.len()
        + r.name.len()
        + r.outputs().flatten().map(layer).sum::<usize>()
        + r.components
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
        + 64
}

/// L1: records in this process' memory, least recently used dropped first once they take more
/// than a byte budget (measured by the strings they hold).
pub struct MemoryTier {
    max_bytes: usize,
    lru: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    bytes: usize,
    tick: u64,
    /// key → (record, its size, its last use).
    entries: HashMap<String, (ActionRecord, usize, u64)>,
    /// last use → key, oldest first.
    order: BTreeMap<u64, String>,
}

impl Lru {
    fn touch(&mut self, key: &str) -> Option<ActionRecord> {
        self.tick += 1;
        let tick = self.tick;
        let (record, _, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.to_string());
        Some(record.clone())
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, size, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= size;
        }
    }
}

impl MemoryTier {
    /// An empty tier holding at most `max_bytes` of records.
    pub fn new(max_bytes: usize) -> Self {
        MemoryTier {
            max_bytes,
            lru: Mutex::default(),
        }
    }

    /// Bytes of records held now.
    pub fn bytes(&self) -> usize {
        self.lru.lock().map(|l| l.bytes).unwrap_or(0)
    }

    /// A record without checking its blobs (for explanations, not for reuse).
    pub fn peek(&self, key: &str) -> Option<ActionRecord> {
        self.lru
            .lock()
            .ok()
            .and_then(|l| l.entries.get(key).map(|e| e.0.clone()))
    }

    fn insert(&self, record: &ActionRecord) {
        let size = approx_size(record);
        let Ok(mut l) = self.lru.lock() else { return };
        l.remove(&record.key);
        if size > self.max_bytes {
            return;
        }
        while l.bytes + size > self.max_bytes {
            let Some((_, oldest)) = l.order.pop_first() else {
                break;
            };
            if let Some((_, s, _)) = l.entries.remove(&oldest) {
                l.bytes -= s;
            }
        }
        l.tick += 1;
        let tick = l.tick;
        l.entries
            .insert(record.key.clone(), (record.clone(), size, tick));
        l.order.insert(tick, record.key.clone());
        l.bytes += size;
    }
}

impl Tier for MemoryTier {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
        let found = self.lru.lock().ok().and_then(|mut l| l.touch(key));
        async move {
            let Some(record) = found else {
                return Ok(None);
            };
            // Stats, and hashing when a blob changed: not on the runtime's threads.
            let blobs = ctx.blobs.clone();
            let judged = tokio::task::spawn_blocking(move || Lookup::of(record, &blobs))
                .await
                .map_err(|e| TierError {
                    tier: self.describe(),
                    message: e.to_string(),
                })?;
            if !matches!(judged, Lookup::Hit(_)) {
                // Its blobs went away (GC, damage) or contradict it: forget it.
                if let Ok(mut l) = self.lru.lock() {
                    l.remove(key);
                }
            }
            Ok(judged.into_hit(&self.describe(), &ctx.warn))
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        _ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        self.insert(record);
        futures::future::ready(Ok(())).boxed()
    }
}

/// L3 as a [`Tier`]: any [`RemoteTier`] (records under `/ac/`, blobs under `/cas/`). A record
/// is answered only once every blob it names is downloaded into the local store and verified;
/// a write uploads the blobs the remote lacks, then the record.
///
/// A blob that downloads damaged is a miss with a warning, not a failure of the tier: one bad
/// object on a shared server must not switch the remote cache off for the rest of the build
/// ([`Detached`] does that on errors). The step is then built here, and its blob is uploaded
/// again even though the remote says (HEAD) it has it: that claim is what kept a damaged blob
/// on the server for every later build.
pub struct Remote {
    inner: Arc<dyn RemoteTier>,
    /// Digests the remote served damaged; their next write does not trust its HEAD.
    damaged: Mutex<HashSet<String>>,
}

impl Remote {
    /// Wraps a remote protocol client.
    pub fn new(inner: Arc<dyn RemoteTier>) -> Self {
        Remote {
            inner,
            damaged: Mutex::default(),
        }
    }

    fn err(&self, e: RemoteError) -> TierError {
        TierError {
            tier: self.inner.describe(),
            message: e.to_string(),
        }
    }

    fn is_damaged(&self, digest: &str) -> bool {
        self.damaged.lock().is_ok_and(|d| d.contains(digest))
    }
}

impl Tier for Remote {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
        async move {
            let Some(record) = self.inner.get_record(key).await.map_err(|e| self.err(e))? else {
                return Ok(None);
            };
            if record.key != key {
                return Ok(None);
            }
            let blocking = |e: tokio::task::JoinError| TierError {
                tier: self.describe(),
                message: e.to_string(),
            };
            // A record is only usable whole: every output's blobs. Those not here (or damaged,
            // hence removed) are downloaded; the sizes the record claims are only trusted below.
            let digests: Vec<String> = record.blobs().iter().map(|l| l.digest.clone()).collect();
            let blobs = ctx.blobs.clone();
            let missing = tokio::task::spawn_blocking(move || {
                digests
                    .into_iter()
                    .filter(|d| !blobs.verify(d, None))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(blocking)?;
            for digest in &missing {
                let fetched = match self.inner.fetch_blob(digest, &ctx.blobs).await {
                    Ok(f) => f,
                    Err(e @ RemoteError::Corrupt { .. }) => {
                        (ctx.warn)(format!(
                            "warning: {e}; building the step here and uploading the blob again"
                        ));
                        if let Ok(mut d) = self.damaged.lock() {
                            d.insert(digest.clone());
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(self.err(e)),
                };
                if !fetched {
                    return Ok(None);
                }
            }
            // A record is one PUT away from anybody who can write to the server: check it
            // against the blobs before it is served (and backfilled into the local tiers). A bad
            // one is a miss, not a failure of the tier; the step's new record replaces it.
            let blobs = ctx.blobs.clone();
            let judged = tokio::task::spawn_blocking(move || Lookup::of(record, &blobs))
                .await
                .map_err(blocking)?;
            Ok(judged.into_hit(&format!("remote cache {}", self.describe()), &ctx.warn))
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        async move {
            for l in record.blobs() {
                let damaged = self.is_damaged(&l.digest);
                let present = !damaged
                    && self
                        .inner
                        .has_blob(&l.digest)
                        .await
                        .map_err(|e| self.err(e))?;
                if present {
                    continue;
                }
                self.inner
                    .upload_blob(&l.digest, &ctx.blobs)
                    .await
                    .map_err(|e| self.err(e))?;
                if damaged && let Ok(mut d) = self.damaged.lock() {
                    d.remove(&l.digest);
                }
            }
            self.inner.put_record(record).await.map_err(|e| self.err(e))
        }
        .boxed()
    }
}

/// A remote tier in memory, for the tests of the tiers and of what uses them.
#[cfg(test)]
pub(crate) mod memory_remote {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use futures::future::BoxFuture;

    use crate::blobs::BlobStore;
    use crate::cache::ActionRecord;
    use crate::cache::remote::{RemoteError, RemoteTier};

    /// A remote in memory that serves its blobs as they are (damaged or not), as a server that
    /// does not check them would, and records uploads.
    #[derive(Default)]
    pub(crate) struct FakeRemote {
        pub(crate) records: Mutex<HashMap<String, ActionRecord>>,
        pub(crate) blobs: Mutex<HashMap<String, Vec<u8>>>,
        pub(crate) record_gets: AtomicUsize,
        pub(crate) uploads: Mutex<Vec<String>>,
    }

    impl RemoteTier for FakeRemote {
        fn describe(&self) -> String {
            "http://fake".into()
        }
        fn get_record<'a>(
            &'a self,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<ActionRecord>, RemoteError>> {
            self.record_gets.fetch_add(1, Ordering::SeqCst);
            let r = self.records.lock().unwrap().get(key).cloned();
            futures::future::ready(Ok(r)).boxed()
        }
        fn put_record<'a>(
            &'a self,
            record: &'a ActionRecord,
        ) -> BoxFuture<'a, Result<(), RemoteError>> {
            self.records
                .lock()
                .unwrap()
                .insert(record.key.clone(), record.clone());
            futures::future::ready(Ok(())).boxed()
        }
        fn fetch_blob<'a>(
            &'a self,
            digest: &'a str,
            store: &'a BlobStore,
        ) -> BoxFuture<'a, Result<bool, RemoteError>> {
            let r = match self.blobs.lock().unwrap().get(digest) {
                None => Ok(false),
                // As HttpTier: content that does not hash to its name never enters the store.
                Some(b) if crate::blobs::sha256_digest(b) != digest => Err(RemoteError::Corrupt {
                    url: format!("http://fake/cas/{digest}"),
                    digest: digest.into(),
                }),
                Some(b) => store
                    .put_bytes(b)
                    .map(|_| true)
                    .map_err(|e| RemoteError::Local(e.to_string())),
            };
            futures::future::ready(r).boxed()
        }
        fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, RemoteError>> {
            let has = self.blobs.lock().unwrap().contains_key(digest);
            futures::future::ready(Ok(has)).boxed()
        }
        fn upload_blob<'a>(
            &'a self,
            digest: &'a str,
            store: &'a BlobStore,
        ) -> BoxFuture<'a, Result<(), RemoteError>> {
            let bytes = std::fs::read(store.path(digest).unwrap()).unwrap();
            self.blobs.lock().unwrap().insert(digest.into(), bytes);
            self.uploads.lock().unwrap().push(digest.into());
            futures::future::ready(Ok(())).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory_remote::FakeRemote;
    use super::*;
    use crate::layer::LayerBlob;
    use std::sync::atomic::AtomicUsize;

    fn ctx(blobs: &BlobStore) -> (TierCtx, Arc<Mutex<Vec<String>>>) {
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let w = warnings.clone();
        let ctx = TierCtx {
            blobs: blobs.clone(),
            warn: Arc::new(move |m| w.lock().unwrap().push(m)),
        };
        (ctx, warnings)
    }

    fn record(key: &str, blobs: &BlobStore, content: &[u8]) -> ActionRecord {
        let digest = blobs.put_bytes(content).unwrap();
        ActionRecord {
            key: key.into(),
            layers: vec![LayerBlob {
                digest: digest.clone(),
                diff_id: digest,
                size: content.len() as u64,
                media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
            }],
            extra_outputs: Vec::new(),
            name: format!("step {key}"),
            duration_ms: 1,
            components: BTreeMap::new(),
        }
    }

    /// A tier keeping records in a map, counting calls, failing on demand.
    #[derive(Default)]
    struct Fake {
        records: Mutex<HashMap<String, ActionRecord>>,
        gets: AtomicUsize,
        puts: AtomicUsize,
        broken: AtomicBool,
    }

    impl Tier for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn get<'a>(
            &'a self,
            key: &'a str,
            _ctx: &'a TierCtx,
        ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let r = if self.broken.load(Ordering::SeqCst) {
                Err(TierError {
                    tier: "fake".into(),
                    message: "connection refused".into(),
                })
            } else {
                Ok(self.records.lock().unwrap().get(key).cloned())
            };
            futures::future::ready(r).boxed()
        }
        fn put<'a>(
            &'a self,
            record: &'a ActionRecord,
            _ctx: &'a TierCtx,
        ) -> BoxFuture<'a, Result<(), TierError>> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let r = if self.broken.load(Ordering::SeqCst) {
                Err(TierError {
                    tier: "fake".into(),
                    message: "connection refused".into(),
                })
            } else {
                self.records
                    .lock()
                    .unwrap()
                    .insert(record.key.clone(), record.clone());
                Ok(())
            };
            futures::future::ready(r).boxed()
        }
    }

    #[tokio::test]
    async fn read_through_backfills_the_front_and_writes_to_all() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path()).unwrap();
        let (ctx, _) = ctx(&blobs);
        let front = Arc::new(MemoryTier::new(1 << 20));
        let back = Arc::new(Fake::default());
        let t = ReadThrough::new(front.clone(), back.clone());
        let r = record("k1", &blobs, b"one");
        back.records.lock().unwrap().insert("k1".into(), r.clone());

        assert_eq!(t.get("k1", &ctx).await.unwrap(), Some(r.clone()));
        assert_eq!(front.peek("k1"), Some(r.clone()), "backfilled");
        assert_eq!(t.get("k1", &ctx).await.unwrap(), Some(r));
        assert_eq!(
            back.gets.load(Ordering::SeqCst),
            1,
            "second hit from the front"
        );
        assert_eq!(t.get("missing", &ctx).await.unwrap(), None);

        let r2 = record("k2", &blobs, b"two");
        t.put(&r2, &ctx).await.unwrap();
        assert!(front.peek("k2").is_some());
        assert!(back.records.lock().unwrap().contains_key("k2"));
    }

    #[tokio::test]
    async fn memory_tier_is_an_lru_bounded_by_bytes() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path()).unwrap();
        let (ctx, _) = ctx(&blobs);
        let one = record("a", &blobs, b"a");
        let size = approx_size(&one);
        let m = MemoryTier::new(size * 2 + size / 2);
        m.put(&one, &ctx).await.unwrap();
        m.put(&record("b", &blobs, b"b"), &ctx).await.unwrap();
        // Using `a` makes `b` the least recently used.
        assert!(m.get("a", &ctx).await.unwrap().is_some());
        m.put(&record("c", &blobs, b"c"), &ctx).await.unwrap();
        assert!(m.peek("a").is_some() && m.peek("c").is_some());
        assert!(m.peek("b").is_none(), "the least recently used went first");
        assert!(m.bytes() <= size * 2 + size / 2);
        // A record larger than the whole budget is not kept.
        let tiny = MemoryTier::new(10);
        tiny.put(&one, &ctx).await.unwrap();
        assert_eq!(tiny.bytes(), 0);
    }

    #[tokio::test]
    async fn memory_tier_never_answers_a_record_whose_blob_is_damaged() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path()).unwrap();
        let (ctx, _) = ctx(&blobs);
        let r = record("k", &blobs, b"content");
        let m = MemoryTier::new(1 << 20);
        m.put(&r, &ctx).await.unwrap();
        std::fs::write(blobs.path(&r.layers[0].digest).unwrap(), b"tampered").unwrap();
        assert_eq!(m.get("k", &ctx).await.unwrap(), None);
        assert!(m.peek("k").is_none(), "forgotten");
    }

    #[tokio::test]
    async fn detached_warns_once_then_skips_the_tier() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path()).unwrap();
        let (ctx, warnings) = ctx(&blobs);
        let fake = Arc::new(Fake::default());
        let t = Detached::new(fake.clone());
        let r = record("k", &blobs, b"x");
        t.put(&r, &ctx).await.unwrap();
        t.flush().await;
        assert!(
            fake.records.lock().unwrap().contains_key("k"),
            "written in the background"
        );
        assert_eq!(t.get("k", &ctx).await.unwrap(), Some(r.clone()));

        fake.broken.store(true, Ordering::SeqCst);
        assert_eq!(t.get("k", &ctx).await.unwrap(), None, "a failure is a miss");
        assert_eq!(t.get("k", &ctx).await.unwrap(), None);
        t.put(&r, &ctx).await.unwrap();
        t.flush().await;
        assert_eq!(
            fake.gets.load(Ordering::SeqCst),
            2,
            "skipped after the failure"
        );
        assert_eq!(fake.puts.load(Ordering::SeqCst), 1);
        assert!(t.gave_up());
        let w = warnings.lock().unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("fake failed, continuing without it: connection refused"));
    }

    #[tokio::test]
    async fn a_failed_background_write_is_reported_by_flush_time() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path()).unwrap();
        let (ctx, warnings) = ctx(&blobs);
        let fake = Arc::new(Fake::default());
        fake.broken.store(true, Ordering::SeqCst);
        let t = ReadThrough::new(
            Arc::new(MemoryTier::new(1 << 20)),
            Arc::new(Detached::new(fake)),
        );
        // The build's own write succeeds: the remote one fails on its own time.
        assert!(!t.gave_up());
        t.put(&record("k", &blobs, b"x"), &ctx).await.unwrap();
        t.flush().await;
        assert!(t.gave_up(), "known through the decorators");
        assert_eq!(warnings.lock().unwrap().len(), 1);
        assert!(t.get("k", &ctx).await.unwrap().is_some(), "still in memory");
    }

    // Verifies: a blob the remote serves damaged is a miss with one warning, not a failure of the
    // tier: the remote stays in use for the rest of the build (`Detached` does not switch it
    // off), and when the rebuilt step is written back its blob is uploaded again although the
    // remote claims (HEAD) to have it, which replaces the damaged copy. Before, the tier was
    // skipped after the warning and nothing was uploaded.
    #[tokio::test]
    async fn a_damaged_remote_blob_is_a_miss_and_is_uploaded_again() {
        let d = tempfile::tempdir().unwrap();
        let local = BlobStore::open(d.path().join("local")).unwrap();
        let elsewhere = BlobStore::open(d.path().join("elsewhere")).unwrap();
        let (ctx, warnings) = ctx(&local);
        let content = b"the layer".to_vec();
        let r = record("k", &elsewhere, &content);
        let digest = r.layers[0].digest.clone();
        let remote = Arc::new(FakeRemote::default());
        remote.records.lock().unwrap().insert("k".into(), r.clone());
        remote
            .blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), b"the layeR".to_vec());
        let t = Detached::new(Arc::new(Remote::new(remote.clone())));

        assert_eq!(t.get("k", &ctx).await.unwrap(), None, "a miss");
        {
            let w = warnings.lock().unwrap();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("does not match digest"), "{w:?}");
            assert!(!w[0].contains("continuing without it"), "{w:?}");
        }
        assert!(!local.verify(&digest, None), "nothing damaged kept");

        // The build runs the step, which makes the same blob here, and stores its record.
        local.put_bytes(&content).unwrap();
        t.put(&r, &ctx).await.unwrap();
        t.flush().await;
        assert_eq!(*remote.uploads.lock().unwrap(), vec![digest.clone()]);
        assert_eq!(remote.blobs.lock().unwrap()[&digest], content, "replaced");

        // Still in use: the next lookup asks the remote again.
        let fresh = BlobStore::open(d.path().join("fresh")).unwrap();
        let ctx2 = ctx_for(&fresh, &warnings);
        assert_eq!(t.get("k", &ctx2).await.unwrap(), Some(r));
        assert_eq!(remote.record_gets.load(Ordering::SeqCst), 2);
        assert!(fresh.verify(&digest, Some(content.len() as u64)));
        // A second write trusts the remote again: no upload.
        t.put(&record("k", &local, &content), &ctx).await.unwrap();
        t.flush().await;
        assert_eq!(remote.uploads.lock().unwrap().len(), 1);
        assert_eq!(warnings.lock().unwrap().len(), 1);
    }

    /// A context over `blobs` whose warnings go to `warnings`.
    fn ctx_for(blobs: &BlobStore, warnings: &Arc<Mutex<Vec<String>>>) -> TierCtx {
        let w = warnings.clone();
        TierCtx {
            blobs: blobs.clone(),
            warn: Arc::new(move |m| w.lock().unwrap().push(m)),
        }
    }
}
