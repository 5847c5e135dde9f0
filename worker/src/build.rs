//! One build on an [`Engine`]: the state that is the build's own.
//!
//! A [`Build`] holds a containerd client bound to the build's lease (everything it creates is
//! kept alive by that lease until [`Build::finish`]), a registry client with the caller's
//! credentials, the caller's sources ([`Caller`]) and the cache tiers as this build sees them.
//! Several builds of one engine run concurrently without sharing any of this.

use std::sync::Arc;

use memobuild_proto::{ParsedDefinition, pb};

use crate::WorkerError;
use crate::blobs::BlobStore;
use crate::cache::tier::Tier;
use crate::caller::Caller;
use crate::containerd::{Containerd, Lease};
use crate::engine::Engine;
use crate::image;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::solver::{self, FsRef, SolveError, SolveOptions, SolveResult};

/// A build in progress. Cheap to clone; [`Build::finish`] ends it.
#[derive(Clone)]
pub struct Build {
    pub(crate) engine: Engine,
    /// containerd with this build's lease, made when the build first needs containerd.
    ctd: Arc<tokio::sync::OnceCell<(Containerd, Lease)>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) caller: Caller,
    /// The cache tiers, composed for this build.
    pub(crate) tiers: Arc<dyn Tier>,
}

impl Build {
    pub(crate) fn new(engine: Engine, registry: Arc<Registry>, caller: Caller) -> Self {
        let tiers = engine.tiers();
        Build {
            engine,
            ctd: Arc::default(),
            registry,
            caller,
            tiers,
        }
    }

    /// The engine this build runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// containerd, with this build's lease (connected, and the lease taken, on first use:
    /// a build whose every step comes from the cache never needs containerd).
    pub async fn containerd(&self) -> Result<&Containerd, WorkerError> {
        self.ctd
            .get_or_try_init(|| self.engine.leased())
            .await
            .map(|(c, _)| c)
    }

    /// Removes snapshot `key` (best effort; nothing to do when containerd was never used).
    pub(crate) async fn remove_snapshot(&self, key: &str) {
        if let Some((c, _)) = self.ctd.get() {
            let _ = c.remove(key).await;
        }
    }

    /// The registry client, with the caller's credentials.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// What the build reads from its caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The local blob store.
    pub fn blobs(&self) -> &BlobStore {
        self.engine.blobs()
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

    /// Waits until every background upload to the remote cache has finished.
    pub async fn flush_uploads(&self) {
        self.tiers.flush().await;
    }

    /// Whether the remote cache failed during this build (and was warned about and skipped
    /// since): whoever meant to talk to the same server again need not wait for it too.
    pub fn remote_cache_failed(&self) -> bool {
        self.tiers.gave_up()
    }

    /// Ends the build: saves the stat caches and releases the lease, after which whatever
    /// only this build referenced may be collected by containerd.
    pub async fn finish(self) {
        // Containers of cancelled steps are killed in the background: done before the lease
        // goes, so nothing of this build outlives it.
        crate::cleanup::wait().await;
        self.engine.save_stat_caches();
        if let Some((c, lease)) = self.ctd.get()
            && let Err(e) = c.without_lease().delete_lease(lease).await
        {
            tracing::warn!("releasing containerd lease: {e}");
        }
    }

    /// Runs `f` on a read-only mount of `fs` (on a blocking thread): how a gateway client
    /// reads files of a result. The empty filesystem is an empty directory.
    pub async fn with_mounted<T: Send + 'static>(
        &self,
        fs: &FsRef,
        f: impl FnOnce(&std::path::Path) -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let join = |e: tokio::task::JoinError| WorkerError::Io {
            context: "reading a result".into(),
            source: std::io::Error::other(e.to_string()),
        };
        if fs.layers.is_empty() {
            let dir = tempfile::tempdir().map_err(|source| WorkerError::Io {
                context: "making an empty directory".into(),
                source,
            })?;
            return tokio::task::spawn_blocking(move || f(dir.path()))
                .await
                .map_err(join);
        }
        let snap = self.ensure_snapshot("read a result", fs).await?;
        let key = format!("memobuild-view-{}", uuid::Uuid::new_v4());
        let mounts = self.containerd().await?.view(&key, &snap).await?;
        let result = match crate::containerd::MountGuard::mount(&mounts) {
            Ok(guard) => tokio::task::spawn_blocking(move || {
                let out = f(guard.path());
                drop(guard);
                out
            })
            .await
            .map_err(join),
            Err(e) => Err(WorkerError::Containerd(e)),
        };
        self.remove_snapshot(&key).await;
        result
    }

    /// Runs a process on a writable copy of `fs` (thrown away afterwards): `req` without its
    /// `rootfs`, which is filled in here. Returns the exit code. A gateway frontend image runs
    /// this way, its stdin and stdout carrying LLBBridge ([`RunRequest::stdio`]).
    pub async fn run_process(
        &self,
        fs: &FsRef,
        mut req: crate::containerd::RunRequest,
    ) -> Result<i32, WorkerError> {
        let parent = self.ensure_snapshot("run a process", fs).await?;
        let key = format!("memobuild-process-{}", uuid::Uuid::new_v4());
        let ctd = self.containerd().await?;
        req.rootfs = ctd
            .prepare(&key, &parent, std::collections::HashMap::new())
            .await?;
        let ran = ctd.run(req).await;
        self.remove_snapshot(&key).await;
        Ok(ran?)
    }

    /// Pulls an image into containerd and the blob store, reporting each layer it downloads
    /// to `progress`; returns its filesystem.
    pub(crate) async fn pull_image(
        &self,
        reference: &str,
        platform: &pb::Platform,
        progress: image::PullProgress<'_>,
    ) -> Result<FsRef, WorkerError> {
        // The download needs no containerd: it runs while the build connects to containerd
        // (or starts the embedded one).
        let platform = crate::to_platform(platform);
        let (ctd, fetched) = tokio::join!(
            self.containerd(),
            image::fetch(&self.registry, self.blobs(), reference, &platform, progress)
        );
        let fetched = fetched?;
        image::unpack(ctd?, self.blobs(), &fetched.reference, &fetched.layers).await?;
        Ok(FsRef {
            layers: fetched.layers,
        })
    }

    /// The committed snapshot holding `fs` (named by its chain ID), made from the layer blobs
    /// when containerd does not have it; `""` for the empty filesystem.
    pub(crate) async fn ensure_snapshot(
        &self,
        what: &str,
        fs: &FsRef,
    ) -> Result<String, WorkerError> {
        Ok(
            image::unpack(self.containerd().await?, self.blobs(), what, &fs.layers)
                .await?
                .unwrap_or_default(),
        )
    }
}
