//! `memobuild server`: the team cache (L3) over HTTP.
//!
//! One axum router composed of sub-routers that share [`AppState`]: `cache` (the Bazel HTTP
//! remote-cache protocol, `/ac` and `/cas`), `api` (build records and analytics, webhook
//! deliveries, `/metrics`, the dashboard at `/`), plus `GET /healthz`. Build records live in
//! `--store`'s `builds/` ([`builds`]), webhook deliveries in its `webhooks/` ([`webhooks`]).
//! Objects live on disk under `--store` ([`store`]); an in-memory LRU index ([`lru`]) rebuilt on
//! start drives size-bounded garbage collection ([`gc`]) after uploads, in the background.
//! Writes need `--token` ([`auth`]): without one they are refused unless
//! `--insecure-open-writes`. Connections are accepted by [`serve`], which bounds them and the
//! time a request head may take; the router bounds request bodies (size, idle time). SIGTERM or
//! SIGINT stops accepting connections and lets running requests finish.

pub mod api;
pub mod auth;
pub mod builds;
pub mod cache;
pub mod dashboard;
pub mod error;
pub mod gc;
pub mod lru;
pub mod metrics;
pub mod openapi;
pub mod records;
pub mod serve;
pub mod state;
pub mod store;
pub mod webhooks;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::cli::ServerArgs;
use crate::server::auth::{Auth, Writes};
use crate::server::error::ApiError;
use crate::server::lru::LruIndex;
use crate::server::metrics::Metrics;
use crate::server::serve::ConnLimits;
use crate::server::state::{AppState, BodyLimits};
use crate::server::store::Store;
use crate::server::webhooks::{WebhookConfig, Webhooks};

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let token = args.token.filter(|t| !t.is_empty());
    if args.token_reads && token.is_none() {
        bail!("`--token-reads` needs `--token` (or MEMOBUILD_SERVER_TOKEN)");
    }
    if args.insecure_open_writes && token.is_some() {
        bail!(
            "`--insecure-open-writes` and `--token` (or MEMOBUILD_SERVER_TOKEN) contradict each \
             other: with a token, writes need it"
        );
    }
    let fd_limit = serve::raise_fd_limit();
    let conn_limits = ConnLimits {
        header_read_timeout: args.header_read_timeout,
        max_connections: args
            .max_connections
            .map(|n| n as usize)
            .unwrap_or_else(|| serve::default_max_connections(fd_limit)),
    };
    if conn_limits.max_connections as u64 * 2 > fd_limit {
        tracing::warn!(
            max_connections = conn_limits.max_connections,
            fd_limit,
            "the connection bound is close to the open-file limit: the server may run out of \
             descriptors before it reaches it"
        );
    }
    let dir = args.store.clone();
    let (store, found) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let store = Store::open(&dir)?;
        let found = store.scan()?;
        Ok((store, found))
    })
    .await
    .context("opening the store")?
    .with_context(|| format!("cannot open the store `{}`", args.store.display()))?;

    let index = LruIndex::new(args.max_size);
    let mut found = found;
    found.sort_by_key(|f| f.last_used);
    for f in &found {
        index.touch(&f.id, f.size);
    }
    tracing::info!(
        store = %store.root().display(),
        objects = index.len(),
        bytes = index.total(),
        max_size = ?args.max_size,
        "store opened"
    );
    let store = Arc::new(store);
    let index = Arc::new(index);
    // A smaller bound than last time is enforced before the first request.
    gc::collect(&store, &index).await;
    let gc = gc::spawn(store.clone(), index.clone());
    let builds_dir = store.root().join("builds");
    let retention = records::Retention {
        keep: args.keep_builds,
        max_age: args.keep_builds_for,
    };
    let database = args.database.clone();
    let (builds, held) = tokio::task::spawn_blocking(move || {
        let builds = records::open(&builds_dir, database.as_deref(), retention)?;
        let held = builds.len()?;
        Ok::<_, std::io::Error>((builds, held))
    })
    .await
    .context("opening the build records")?
    .with_context(|| {
        format!(
            "cannot open the build records in `{}`",
            store.root().join("builds").display()
        )
    })?;
    tracing::info!(records = held, "build records opened");
    let urls = args
        .webhooks
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| parse_webhook_url(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let webhooks = Webhooks::start(
        &store.root().join("webhooks"),
        WebhookConfig {
            urls,
            secret: args.webhook_secret.filter(|s| !s.is_empty()),
            max_attempts: args.webhook_attempts,
            backoff: args.webhook_backoff,
            timeout: args.webhook_timeout,
        },
    )
    .await
    .context("starting webhook deliveries")?;
    let (events, _) = tokio::sync::broadcast::channel(64);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let state = AppState {
        store,
        index,
        auth: Arc::new(Auth::new(
            token.as_deref(),
            args.token_reads,
            args.insecure_open_writes,
        )),
        gc,
        metrics: Arc::new(Metrics::default()),
        builds,
        webhooks,
        events,
        closing,
        limits: BodyLimits {
            idle_timeout: args.body_idle_timeout,
            max_size: args.max_body_size,
        },
    };

    let listener = serve::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    match state.auth.writes() {
        Writes::Token(_) => {}
        Writes::Refused => tracing::warn!(
            "no token configured: writes (uploads, build reports) are refused; start the server \
             with `--token TOKEN` (or MEMOBUILD_SERVER_TOKEN) and builds with \
             `--remote-cache-token TOKEN`"
        ),
        Writes::Open => tracing::warn!(
            "--insecure-open-writes: anyone who can reach {addr} can write to the cache, and \
             one bad client can poison every build's cache"
        ),
    }
    tracing::info!(
        max_connections = conn_limits.max_connections,
        fd_limit,
        header_read_timeout = ?conn_limits.header_read_timeout,
        body_idle_timeout = ?state.limits.idle_timeout,
        max_body_size = state.limits.max_size,
        "limits"
    );
    // The bound address, for scripts and tests that asked for port 0.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);

    let shutdown = async move {
        shutdown_signal().await;
        let _ = closing_tx.send(true);
    };
    serve::serve(listener, router(state), conn_limits, shutdown).await;
    tracing::info!("server stopped");
    Ok(())
}

/// All routes: the sub-routers, `/healthz`, the fallback, and request logging around them.
/// Every request body is cut off when it sends nothing for `--body-idle-timeout`, so a stalled
/// upload does not hold its connection and temporary file for good.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(cache::router(state.clone()))
        .merge(api::router(state.clone()))
        .fallback(fallback)
        .layer(middleware::from_fn(log_request))
        .layer(RequestBodyTimeoutLayer::new(state.limits.idle_timeout))
        .with_state(state)
}

/// A `--webhook` value: an absolute http(s) URL.
fn parse_webhook_url(u: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(u.trim()).with_context(|| format!("--webhook `{u}`"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--webhook `{u}`: expected an http:// or https:// URL");
    }
    Ok(url)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Paths no route matched. Anything that looks like an object path (or tries `..`) is a bad
/// request rather than a miss, so a client with a broken key learns it.
async fn fallback(uri: Uri) -> ApiError {
    let path = uri.path();
    if path.split('/').any(|s| s == ".." || s == ".")
        || path.starts_with("/ac/")
        || path.starts_with("/cas/")
    {
        ApiError::BadRequest(format!(
            "bad object path `{path}`: expected /ac/<64 hex> or /cas/<64 hex>"
        ))
    } else {
        ApiError::NotFound
    }
}

/// One debug line per request.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing running requests");
}
