//! The engine: what outlives a build. One per process, shared by every build it runs.
//!
//! An [`Engine`] holds the containerd connection, the cache tiers that are the same for every
//! build (memory, local disk, the remote tier's client), the blob store, the stat caches of
//! local directories and the [`StateDir`]. A build asks it for a [`Build`]
//! ([`Engine::build`]), which adds what is the build's own: a containerd lease, the registry
//! client with the caller's credentials, and the caller's sources (local directories, secrets,
//! ssh agents). `memobuild build` makes one engine and one build; `memobuild daemon` makes one
//! engine and a build per client request, concurrently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::WorkerError;
use crate::blobs::BlobStore;
use crate::build::Build;
use crate::cache::ActionCache;
use crate::cache::remote::HttpTier;
use crate::cache::tier::{Detached, MemoryTier, ReadThrough, Remote, Tier};
use crate::caller::Caller;
use crate::containerd::Containerd;
use crate::fingerprint::StatCache;
use crate::registry::{Registry, RegistryConfig};
use crate::state::StateDir;

/// Budget of the in-memory (L1) tier: records are small, this holds tens of thousands.
const MEMORY_TIER_BYTES: usize = 64 << 20;

/// How long a build's lease lives if the process dies before releasing it: long enough for
/// any build, short enough that a crash does not pin snapshots for long.
const BUILD_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// containerd namespace MemoBuild works in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "memobuild";

/// How an [`Engine`] is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// MemoBuild's state directory.
    pub state_dir: StateDir,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Mirrors to try first, by registry host (`docker.io` → `["127.0.0.1:5000"]`).
    pub registry_mirrors: HashMap<String, Vec<String>>,
    /// Base URL of a remote (L3) cache speaking the Bazel HTTP cache protocol.
    pub remote_cache: Option<String>,
    /// Bearer token for the remote cache.
    pub remote_cache_token: Option<String>,
}

impl EngineConfig {
    /// A configuration with defaults for everything but the socket and the state directory.
    pub fn new(containerd_socket: impl Into<PathBuf>, state_dir: StateDir) -> Self {
        EngineConfig {
            containerd_socket: containerd_socket.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            state_dir,
            insecure_registries: Vec::new(),
            registry_mirrors: HashMap::new(),
            remote_cache: None,
            remote_cache_token: None,
        }
    }
}

/// The long-lived half of the worker. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// containerd, without a lease (each build adds its own).
    ctd: Containerd,
    blobs: BlobStore,
    /// L2, also read directly for explanations.
    cache: ActionCache,
    /// L1.
    memory: Arc<MemoryTier>,
    /// L3's client; each build wraps it in a tier of its own (see [`Engine::tiers`]).
    remote: Option<Arc<HttpTier>>,
    stat_caches: Mutex<HashMap<PathBuf, Arc<StatCache>>>,
    state: StateDir,
    registry: RegistryConfig,
}

impl Engine {
    /// Connects to containerd and opens the state directory.
    pub async fn open(cfg: EngineConfig) -> Result<Self, WorkerError> {
        let ctd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await?;
        ctd.version().await?;
        // Network namespaces of steps whose process was killed.
        let swept = tokio::task::spawn_blocking(crate::netns::sweep)
            .await
            .unwrap_or(0);
        if swept > 0 {
            tracing::info!("removed {swept} network namespaces left by killed builds");
        }
        // Containers (and their tasks and shims) of builds that were killed.
        match ctd.remove_stale_containers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} containers left by killed builds"),
            Err(e) => tracing::warn!("cannot look for containers of killed builds: {e}"),
        }
        // Temporaries of processes that were killed before they could remove them.
        let state = cfg.state_dir.clone();
        if let Ok(Ok(s)) =
            tokio::task::spawn_blocking(move || crate::state::stale::sweep_state(&state)).await
            && s.entries > 0
        {
            tracing::info!(
                "removed {} temporary files ({} bytes) left by killed builds",
                s.entries,
                s.bytes
            );
        }
        let blobs = BlobStore::open(cfg.state_dir.blobs())?;
        let cache = ActionCache::open(cfg.state_dir.action_cache())?;
        let remote = match &cfg.remote_cache {
            Some(url) if !url.is_empty() => Some(Arc::new(HttpTier::new(
                url,
                cfg.remote_cache_token.clone(),
            )?)),
            _ => None,
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                ctd,
                blobs,
                cache,
                memory: Arc::new(MemoryTier::new(MEMORY_TIER_BYTES)),
                remote,
                stat_caches: Mutex::default(),
                state: cfg.state_dir.clone(),
                registry: RegistryConfig {
                    insecure: cfg.insecure_registries.clone(),
                    mirrors: cfg.registry_mirrors.clone(),
                    ..RegistryConfig::default()
                },
            }),
        })
    }

    /// Starts a build for `caller`: takes a containerd lease that keeps what the build makes
    /// alive until [`Build::finish`] (or the lease's expiry, should the process die).
    pub async fn build(&self, caller: Caller) -> Result<Build, WorkerError> {
        let lease = self.inner.ctd.create_lease(BUILD_LEASE_EXPIRY).await?;
        let ctd = match self.inner.ctd.with_lease(&lease) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.inner.ctd.delete_lease(&lease).await;
                return Err(e.into());
            }
        };
        let registry = Arc::new(self.registry(Some(caller.credentials.clone())));
        Ok(Build::new(self.clone(), ctd, lease, registry, caller))
    }

    /// A registry client with the engine's settings (plain-HTTP hosts, mirrors) and
    /// `credentials`.
    pub fn registry(
        &self,
        credentials: Option<Arc<dyn crate::registry::CredentialProvider>>,
    ) -> Registry {
        Registry::new(RegistryConfig {
            provider: credentials,
            ..self.inner.registry.clone()
        })
    }

    /// The registry settings every build starts from.
    pub fn registry_config(&self) -> &RegistryConfig {
        &self.inner.registry
    }

    /// The tiers as one build sees them: memory, then disk, then the remote tier in the
    /// background. The remote tier's wrapper is the build's own, so a failure that makes one
    /// build skip it (after a single warning) does not turn it off for the next build.
    pub(crate) fn tiers(&self) -> Arc<dyn Tier> {
        let local: Arc<dyn Tier> = Arc::new(self.inner.cache.clone());
        let below_memory: Arc<dyn Tier> = match &self.inner.remote {
            Some(http) => {
                let remote = Arc::new(Detached::new(Arc::new(Remote::new(http.clone()))));
                Arc::new(ReadThrough::new(local, remote))
            }
            None => local,
        };
        Arc::new(ReadThrough::new(self.inner.memory.clone(), below_memory))
    }

    /// containerd, without a lease.
    pub fn containerd(&self) -> &Containerd {
        &self.inner.ctd
    }

    /// The local blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// The action cache (L2).
    pub fn cache(&self) -> &ActionCache {
        &self.inner.cache
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.inner.state
    }

    /// The stat cache for fingerprints of files under `root` (one per directory, shared by
    /// every build of this engine, saved by [`Engine::save_stat_caches`]).
    pub(crate) fn stat_cache(&self, root: &Path) -> Arc<StatCache> {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let Ok(mut m) = self.inner.stat_caches.lock() else {
            return Arc::new(StatCache::ephemeral());
        };
        m.entry(root.clone())
            .or_insert_with(|| Arc::new(StatCache::load(self.inner.state.stat_cache(&root))))
            .clone()
    }

    /// Writes the stat caches that changed since they were loaded or last saved.
    pub fn save_stat_caches(&self) {
        let caches: Vec<Arc<StatCache>> = self
            .inner
            .stat_caches
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for c in caches {
            if let Err(e) = c.save() {
                tracing::warn!("cannot save the stat cache: {e}");
            }
        }
    }
}
