//! MemoBuild's engine: it takes a BuildKit LLB `Definition`, executes it on containerd, and
//! exports the result as an OCI image.
//!
//! ```text
//! Definition ─ solver::load ─> vertex graph ─ solver ─> snapshots + layers ─ export ─> OCI image
//! ```
//!
//! The worker never parses a Dockerfile: its only input is the Definition (plus the image config
//! the frontend produced beside it, as opaque JSON).
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod blobs;
pub mod cache;
pub mod containerd;
pub mod export;
pub mod filesync;
pub mod fingerprint;
mod followpaths;
pub mod fsops;
pub mod gitignore;
pub mod image;
pub mod layer;
mod ops;
pub mod patterns;
pub mod progress;
pub mod registry;
pub mod secrets;
pub mod solver;
pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use memobuild_proto::{ParsedDefinition, pb};

use crate::blobs::BlobStore;
use crate::cache::ActionCache;
use crate::cache::remote::{HttpTier, RemoteError};
use crate::cache::tier::{Detached, MemoryTier, ReadThrough, Remote, Tier};
use std::collections::HashMap;
use std::sync::Mutex;

use crate::containerd::{Containerd, Lease};
use crate::fingerprint::StatCache;
use crate::progress::Progress;
use crate::registry::{Registry, RegistryConfig};
use crate::solver::{FsRef, SolveError, SolveOptions, SolveResult};

/// Budget of the in-memory (L1) tier: records are small, this holds tens of thousands.
const MEMORY_TIER_BYTES: usize = 64 << 20;

/// containerd namespace MemoBuild works in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "memobuild";

/// How a [`Worker`] is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// containerd's socket; required by [`Worker::open`].
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace.
    pub namespace: String,
    /// MemoBuild's state directory (blobs, cache).
    pub state_dir: PathBuf,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Base URL of a remote (L3) cache speaking the Bazel HTTP cache protocol.
    pub remote_cache: Option<String>,
    /// Bearer token for the remote cache.
    pub remote_cache_token: Option<String>,
    /// Registry credentials (for pulls), asked per host.
    pub credentials: Option<Arc<dyn registry::CredentialProvider>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            containerd_socket: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            state_dir: PathBuf::from("/var/lib/memobuild"),
            insecure_registries: Vec::new(),
            remote_cache: None,
            remote_cache_token: None,
            credentials: None,
        }
    }
}

/// Errors setting up or using a worker outside a solve.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// containerd could not be reached or refused a call.
    #[error(transparent)]
    Containerd(#[from] containerd::Error),
    /// The registry could not be reached or refused a call.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Pulling an image failed.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// The local blob store failed.
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
    /// The cache directory failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// The remote cache is misconfigured.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// No containerd socket was configured.
    #[error("no containerd socket configured (pass --containerd)")]
    NoContainerd,
}

/// The engine: a containerd connection (with a lease for this process' work), a registry
/// client, and the local blob store. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) ctd: Containerd,
    pub(crate) registry: Arc<Registry>,
    pub(crate) blobs: BlobStore,
    /// L2, also read directly for explanations.
    pub(crate) cache: ActionCache,
    /// Every tier, composed: memory, then disk, then (detached) the remote cache.
    pub(crate) tiers: Arc<dyn Tier>,
    stat_caches: Arc<Mutex<HashMap<PathBuf, Arc<StatCache>>>>,
    state_dir: PathBuf,
    lease: Option<Lease>,
}

impl Worker {
    /// Connects to containerd, opens the state directory and takes a lease that keeps this
    /// build's snapshots and content alive until [`Worker::close`] (or its expiry).
    pub async fn open(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        let socket = cfg
            .containerd_socket
            .clone()
            .ok_or(WorkerError::NoContainerd)?;
        let ctd = Containerd::connect(&socket, &cfg.namespace).await?;
        ctd.version().await?;
        let lease = ctd.create_lease(Duration::from_secs(24 * 3600)).await?;
        let ctd = ctd.with_lease(&lease)?;
        let blobs = BlobStore::open(cfg.state_dir.join("blobs"))?;
        let cache = ActionCache::open(cfg.state_dir.join("cache").join("ac"))?;
        let local: Arc<dyn Tier> = Arc::new(cache.clone());
        let below_memory: Arc<dyn Tier> = match &cfg.remote_cache {
            Some(url) if !url.is_empty() => {
                let http = HttpTier::new(url, cfg.remote_cache_token.clone())?;
                let remote = Arc::new(Detached::new(Arc::new(Remote::new(Arc::new(http)))));
                Arc::new(ReadThrough::new(local, remote))
            }
            _ => local,
        };
        let tiers: Arc<dyn Tier> = Arc::new(ReadThrough::new(
            Arc::new(MemoryTier::new(MEMORY_TIER_BYTES)),
            below_memory,
        ));
        Ok(Worker {
            ctd,
            registry: Arc::new(Registry::new(registry_config(&cfg))),
            blobs,
            cache,
            tiers,
            stat_caches: Arc::default(),
            state_dir: cfg.state_dir.clone(),
            lease: Some(lease),
        })
    }

    /// The local blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The action cache.
    pub fn cache(&self) -> &ActionCache {
        &self.cache
    }

    /// The stat cache for fingerprints of files under `root` (one per directory, shared by the
    /// vertices of this process, saved by [`Worker::close`]).
    pub(crate) fn stat_cache(&self, root: &std::path::Path) -> Arc<StatCache> {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let Ok(mut m) = self.stat_caches.lock() else {
            return Arc::new(StatCache::ephemeral());
        };
        m.entry(root.clone())
            .or_insert_with(|| {
                let name = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
                Arc::new(StatCache::load(
                    self.state_dir
                        .join("cache")
                        .join("stat")
                        .join(name.as_str()),
                ))
            })
            .clone()
    }

    /// Waits until every background upload to the remote cache has finished.
    pub async fn flush_uploads(&self) {
        self.tiers.flush().await;
    }

    /// Releases the lease; snapshots of this build that nothing else references become garbage.
    pub async fn close(&self) {
        let caches: Vec<Arc<StatCache>> = self
            .stat_caches
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for c in caches {
            if let Err(e) = c.save() {
                tracing::warn!("cannot save the stat cache: {e}");
            }
        }
        if let Some(l) = &self.lease
            && let Err(e) = self.ctd.without_lease().delete_lease(l).await
        {
            tracing::warn!("releasing containerd lease: {e}");
        }
    }

    /// The registry client.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Pulls an image into containerd and the blob store; returns its filesystem.
    pub(crate) async fn pull_image(
        &self,
        reference: &str,
        platform: &pb::Platform,
    ) -> Result<FsRef, WorkerError> {
        let pulled = image::pull(
            &self.ctd,
            &self.registry,
            &self.blobs,
            reference,
            &to_platform(platform),
        )
        .await?;
        Ok(FsRef {
            layers: pulled.layers,
        })
    }

    /// The committed snapshot holding `fs` (named by its chain ID), made from the layer blobs
    /// when containerd does not have it; `""` for the empty filesystem.
    pub(crate) async fn ensure_snapshot(
        &self,
        what: &str,
        fs: &FsRef,
    ) -> Result<String, WorkerError> {
        Ok(image::unpack(&self.ctd, &self.blobs, what, &fs.layers)
            .await?
            .unwrap_or_default())
    }

    /// Solves a definition.
    pub async fn solve(
        &self,
        def: ParsedDefinition,
        opts: SolveOptions,
        progress: Progress,
    ) -> Result<SolveResult, SolveError> {
        solver::solve(self, def, opts, progress).await
    }
}

/// Resolves an image reference to its (index or manifest) digest and config JSON, which is what
/// a frontend pins and reads.
pub async fn resolve_image_config(
    registry: &Registry,
    reference: &str,
    platform: &pb::Platform,
) -> Result<(String, Vec<u8>), WorkerError> {
    let r = registry.resolve(reference, &to_platform(platform)).await?;
    Ok((
        r.index_digest.clone().unwrap_or(r.manifest_digest.clone()),
        r.config,
    ))
}

/// The registry client configuration a worker config implies.
pub fn registry_config(cfg: &WorkerConfig) -> RegistryConfig {
    RegistryConfig {
        insecure: cfg.insecure_registries.clone(),
        provider: cfg.credentials.clone(),
        ..RegistryConfig::default()
    }
}

fn to_platform(p: &pb::Platform) -> registry::Platform {
    registry::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
    }
}
