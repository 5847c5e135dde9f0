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
use crate::containerd::{Containerd, Lease};
use crate::fingerprint::StatCache;
use crate::registry::resolved::ResolvedCache;
use crate::registry::{Registry, RegistryConfig};
use crate::state::StateDir;

/// Budget of the in-memory (L1) tier: records are small, this holds tens of thousands.
const MEMORY_TIER_BYTES: usize = 64 << 20;

/// How long a build's lease lives if the process dies before releasing it: long enough for
/// any build, short enough that a crash does not pin snapshots for long.
const BUILD_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// containerd namespace MemoBuild works in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "memobuild";

/// Finds containerd's socket when the engine first needs containerd (and may start one: the
/// embedded containerd of `memobuild build`).
pub type ConnectFn =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<PathBuf, String>> + Send + Sync>;

/// Where an engine's containerd is.
#[derive(Clone)]
pub enum ContainerdSource {
    /// This socket.
    Socket(PathBuf),
    /// Asked when first needed: a fully cached build never starts or reaches containerd.
    Lazy(ConnectFn),
}

impl std::fmt::Debug for ContainerdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerdSource::Socket(p) => write!(f, "Socket({})", p.display()),
            ContainerdSource::Lazy(_) => f.write_str("Lazy"),
        }
    }
}

/// How an [`Engine`] is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// containerd.
    pub containerd: ContainerdSource,
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
        Self::with_containerd(
            ContainerdSource::Socket(containerd_socket.into()),
            state_dir,
        )
    }

    /// A configuration with defaults for everything but containerd and the state directory.
    pub fn with_containerd(containerd: ContainerdSource, state_dir: StateDir) -> Self {
        EngineConfig {
            containerd,
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
    /// containerd, without a lease (each build adds its own), connected when first needed.
    ctd: tokio::sync::OnceCell<Containerd>,
    containerd: ContainerdSource,
    namespace: String,
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
    /// Opens the state directory. containerd is reached when something first needs it
    /// ([`Engine::containerd`]).
    pub async fn open(cfg: EngineConfig) -> Result<Self, WorkerError> {
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
        let engine = Engine {
            inner: Arc::new(Inner {
                ctd: tokio::sync::OnceCell::new(),
                containerd: cfg.containerd.clone(),
                namespace: cfg.namespace.clone(),
                blobs,
                cache,
                memory: Arc::new(MemoryTier::new(MEMORY_TIER_BYTES)),
                remote,
                stat_caches: Mutex::default(),
                state: cfg.state_dir.clone(),
                registry: RegistryConfig {
                    insecure: cfg.insecure_registries.clone(),
                    mirrors: cfg.registry_mirrors.clone(),
                    resolved: Some(Arc::new(ResolvedCache::on_disk(
                        cfg.state_dir.resolved_images(),
                    ))),
                    ..RegistryConfig::default()
                },
            }),
        };
        // A socket given outright is checked now, so a wrong one fails early.
        if matches!(cfg.containerd, ContainerdSource::Socket(_)) {
            engine.containerd().await?;
        }
        Ok(engine)
    }

    /// containerd, without a lease: connected (and, for a lazy source, found or started) on
    /// first use, when leftovers of killed builds (containers, network namespaces) are removed.
    pub async fn containerd(&self) -> Result<&Containerd, WorkerError> {
        self.inner
            .ctd
            .get_or_try_init(|| async {
                let socket = match &self.inner.containerd {
                    ContainerdSource::Socket(p) => p.clone(),
                    ContainerdSource::Lazy(connect) => {
                        connect().await.map_err(|context| WorkerError::Io {
                            context,
                            source: std::io::Error::other("containerd is not available"),
                        })?
                    }
                };
                let ctd = Containerd::connect(&socket, &self.inner.namespace).await?;
                ctd.version().await?;
                // Network namespaces of steps whose process was killed.
                let swept = tokio::task::spawn_blocking(crate::netns::sweep)
                    .await
                    .unwrap_or(0);
                if swept > 0 {
                    tracing::info!("removed {swept} network namespaces left by killed builds");
                }
                // Containers (runc's, and containerd's with their tasks and shims) of builds
                // that were killed.
                match crate::containerd::sweep_runc().await {
                    0 => {}
                    n => tracing::info!("removed {n} runc containers left by killed builds"),
                }
                match ctd.remove_stale_containers().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("removed {n} containers left by killed builds"),
                    Err(e) => tracing::warn!("cannot look for containers of killed builds: {e}"),
                }
                Ok::<_, WorkerError>(ctd)
            })
            .await
    }

    /// Starts a build for `caller`. Its containerd lease (which keeps what the build makes
    /// alive until [`Build::finish`], or the lease's expiry should the process die) is taken
    /// when the build first needs containerd.
    pub async fn build(&self, caller: Caller) -> Result<Build, WorkerError> {
        let registry = Arc::new(self.registry(Some(caller.credentials.clone())));
        Ok(Build::new(self.clone(), registry, caller))
    }

    /// A containerd client with a new lease for a build.
    pub(crate) async fn leased(&self) -> Result<(Containerd, Lease), WorkerError> {
        let base = self.containerd().await?;
        let lease = base.create_lease(BUILD_LEASE_EXPIRY).await?;
        match base.with_lease(&lease) {
            Ok(c) => Ok((c, lease)),
            Err(e) => {
                let _ = base.delete_lease(&lease).await;
                Err(e.into())
            }
        }
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
