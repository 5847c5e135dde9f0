//! `memobuild daemon`: a BuildKit endpoint (`buildctl`, `docker buildx` with the remote
//! driver) over MemoBuild's engine.
//!
//! One [`Engine`] (containerd, cache tiers, blobs, state directory) serves every client; each
//! `Control/Solve` is a job with a [`memobuild_worker::Build`] of its own, reading through the
//! client's session. The services are BuildKit's `Control` ([`control`]) and `LLBBridge`
//! ([`gateway`]) on every listening address; sessions are in [`session`], jobs in [`jobs`],
//! progress in [`status`], the Dockerfile frontend in [`frontend`], conversions to wire types in
//! [`convert`], the config file in [`config`] and the listeners in [`serve`].

pub mod build_history;
pub mod config;
pub mod content;
pub mod control;
pub mod convert;
pub mod frontend;
pub mod frontend_image;
pub mod gateway;
pub mod jobs;
pub mod remote_context;
pub mod serve;
pub mod session;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use memobuild_proto::worker_types::WorkerRecord;
use memobuild_worker::{Engine, EngineConfig, StateDir};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::DaemonArgs;
use crate::daemon::config::{Config, GcRule};
use crate::daemon::jobs::Jobs;
use crate::daemon::session::Sessions;

/// The default listening address, as buildkitd's.
pub const DEFAULT_ADDR: &str = "unix:///run/memobuild/buildkitd.sock";

/// How long a stopping daemon waits for cancelled builds to clean up.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Everything the services share.
pub struct Daemon {
    /// The engine every build runs on.
    pub engine: Engine,
    /// Connected sessions.
    pub sessions: Arc<Sessions>,
    /// Running (and just finished) jobs.
    pub jobs: Arc<Jobs>,
    /// Records of the builds clients ran (`docker buildx history`).
    pub history: build_history::BuildHistory,
    /// RUN steps at once, per build.
    pub max_parallelism: usize,
    /// Entitlements the daemon grants when a client asks.
    pub allowed_entitlements: Vec<String>,
    /// GC rules applied after builds.
    pub gc: Vec<GcRule>,
    /// Whether `# syntax=docker/dockerfile:…` runs that image (`--official-frontend-images`)
    /// instead of being served by MemoBuild's frontend.
    pub run_official_frontend_images: bool,
    /// Cancelled when the daemon stops.
    pub shutdown: CancellationToken,
    worker_id: String,
    /// Builds running now.
    running: watch::Sender<usize>,
    gc_running: std::sync::atomic::AtomicBool,
}

/// Counts a running build for as long as it lives.
pub struct Running(watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Daemon {
    /// The worker record clients see.
    pub fn worker_record(&self) -> WorkerRecord {
        convert::worker_record(&self.worker_id, &self.gc)
    }

    /// Marks a build as running until the returned value is dropped.
    pub fn running(&self) -> Running {
        self.running.send_modify(|n| *n += 1);
        Running(self.running.clone())
    }

    /// After a build: prunes the local cache as the GC rules say, in the background.
    pub fn after_build(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.gc.is_empty() || self.gc_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let daemon = self.clone();
        tokio::task::spawn_blocking(move || {
            let state = daemon.engine.state();
            for rule in &daemon.gc {
                // Entries unused for longer than the rule keeps them go first, then the least
                // recently used until the rest fits; what a build used in the last minutes is
                // spared (another build may be about to read it).
                if let Some(d) = rule.keep_duration {
                    let policy = memobuild_worker::state::usage::PrunePolicy {
                        keep_duration: Some(d),
                        ..Default::default()
                    };
                    if let Err(e) = memobuild_worker::state::usage::prune(state, &policy) {
                        tracing::warn!("cache GC: {e}");
                    }
                }
                if let Some(max) = rule.keep_bytes
                    && let Err(e) = memobuild_worker::state::usage::auto_prune(state, max)
                {
                    tracing::warn!("cache GC: {e}");
                }
            }
            daemon.gc_running.store(false, Ordering::Release);
        });
    }
}

/// Runs `memobuild daemon` until SIGTERM or SIGINT.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let state = StateDir::new(
        args.state_dir
            .clone()
            .or_else(|| config.root.clone())
            .unwrap_or_else(|| crate::cli::state_dir(None)),
    );
    let addrs: Vec<String> = if !args.addr.is_empty() {
        args.addr.clone()
    } else if !config.grpc.address.is_empty() {
        config.grpc.address.clone()
    } else {
        vec![DEFAULT_ADDR.to_string()]
    };
    let tls = serve::TlsFiles {
        cert: args.tlscert.clone().or(config.grpc.tls.cert.clone()),
        key: args.tlskey.clone().or(config.grpc.tls.key.clone()),
        ca: args.tlscacert.clone().or(config.grpc.tls.ca.clone()),
    };
    // Listeners first: a daemon that cannot listen should say so before starting anything.
    let listeners = serve::listen(&addrs, &tls).await?;

    let containerd_addr = args
        .containerd
        .clone()
        .or(config.memobuild.containerd.clone());
    let containerd =
        crate::embedded::Containerd::select(containerd_addr.as_deref(), &state).await?;
    let mut insecure = config.insecure_registries();
    insecure.extend(args.insecure_registries.iter().cloned());
    let engine = Engine::open(EngineConfig {
        namespace: args
            .namespace
            .clone()
            .or(config.memobuild.namespace.clone())
            .unwrap_or_else(|| memobuild_worker::DEFAULT_NAMESPACE.to_string()),
        insecure_registries: insecure,
        registry_mirrors: config.mirrors(),
        remote_cache: args
            .remote_cache
            .clone()
            .or(config.memobuild.remote_cache.clone()),
        remote_cache_token: args
            .remote_cache_token
            .clone()
            .or(config.memobuild.remote_cache_token.clone()),
        ..EngineConfig::new(containerd.socket(), state.clone())
    })
    .await;
    let engine = match engine {
        Ok(e) => e,
        Err(e) => {
            containerd.release(std::time::Duration::ZERO).await;
            return Err(e).context("opening the engine");
        }
    };
    let worker_id =
        blake3::hash(state.root().as_os_str().as_encoded_bytes()).to_hex()[..25].to_string();
    let daemon = Arc::new(Daemon {
        engine,
        sessions: Sessions::new(),
        jobs: Jobs::new(),
        history: build_history::BuildHistory::open(&state),
        max_parallelism: args
            .max_parallelism
            .or(config.max_parallelism())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
        allowed_entitlements: args.allow_insecure_entitlement.clone(),
        run_official_frontend_images: args.official_frontend_images,
        gc: config.gc_rules(),
        shutdown: CancellationToken::new(),
        worker_id,
        running: watch::channel(0).0,
        gc_running: std::sync::atomic::AtomicBool::new(false),
    });

    let stop = CancellationToken::new();
    let servers = serve::serve(daemon.clone(), listeners, stop.clone());
    for a in &addrs {
        eprintln!("memobuild daemon listening on {a}");
    }
    let signal = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<_, std::io::Error>(())
    };
    let served = tokio::select! {
        r = servers => r,
        r = signal => r.context("waiting for signals").map(|_| ()),
    };
    // Stop accepting, cancel what runs, let the builds clean up (unmount, release leases).
    stop.cancel();
    daemon.shutdown.cancel();
    for job in daemon.jobs.all() {
        job.cancel.cancel();
    }
    let mut running = daemon.running.subscribe();
    let _ = tokio::time::timeout(STOP_GRACE, async {
        let _ = running.wait_for(|n| *n == 0).await;
        memobuild_worker::cleanup::wait().await;
    })
    .await;
    serve::remove_sockets(&addrs);
    containerd.release(std::time::Duration::ZERO).await;
    served
}
