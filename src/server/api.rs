//! The build routes: records, analytics, webhooks' delivery log, metrics and the dashboard.
//!
//! - `POST /api/builds`: a [`BuildRecord`] as `application/json` (a write: the token is
//!   needed, as for uploads); 201 when new, 200 when that id is recorded already. A new record
//!   is queued for the webhooks as a `build.completed` event carrying its summary.
//! - `GET /api/builds[?project=&target=&status=&since=&last=]`: summaries, newest first (50
//!   unless `last` says otherwise, at most 1000; `since=24h`: received in the last day).
//! - `GET /api/builds/{id}`: the record with its vertices and the derived counts.
//! - `GET /api/stats[?project=&target=&status=&since=&last=]`:
//!   [`crate::server::builds::Stats`] (percentiles over the window `since` names).
//! - `GET /api/webhooks/deliveries[?last=]`: recent deliveries and their state (authorized
//!   as a write: hook URLs can hold secrets).
//! - `GET /metrics`: Prometheus text format. `GET /`: the dashboard (HTML). `GET /events`:
//!   server-sent events, one `build` event (the summary) per build recorded, which the
//!   dashboard listens to so that it updates without a reload.
//! - `GET /api/openapi.json`: the OpenAPI 3.1 document of the `/api/*` routes
//!   ([`crate::server::openapi`]), built from the handlers' annotations and the types they
//!   answer with, so it cannot drift from them; readable without a token.
//!
//! Reads need the token only with `--token-reads`, as the cache's do.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::server::auth::require_token;
use crate::server::builds::{BuildRecord, BuildStatus, BuildSummary, Filter};
use crate::server::dashboard;
use crate::server::error::ApiError;
use crate::server::metrics;
use crate::server::openapi;
use crate::server::records::Added;
use crate::server::state::AppState;
use crate::server::webhooks::Delivery;

/// Builds a list shows unless asked for more, and the most it shows.
const DEFAULT_LIST: usize = 50;
const MAX_LIST: usize = 1000;

/// The routes, behind the token check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/builds", get(list_builds).post(post_build))
        .route("/api/builds/{id}", get(get_build))
        .route("/api/stats", get(get_stats))
        .route("/api/webhooks/deliveries", get(deliveries))
        .route("/metrics", get(get_metrics))
        .route("/", get(get_dashboard))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(state, require_token))
        .route("/api/openapi.json", get(openapi::document))
}

/// `?project=&status=&last=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this project (empty: all).
    project: Option<String>,
    /// Only this `--target` (empty: all).
    target: Option<String>,
    /// Only builds that ended so.
    status: Option<BuildStatus>,
    /// Only builds received within this long before now: `24h`, `7d`, `30m`.
    #[param(example = "24h")]
    since: Option<String>,
    /// Only the newest this many.
    #[param(minimum = 0)]
    last: Option<usize>,
}

/// `GET /api/builds`: summaries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildList {
    /// The builds.
    builds: Vec<BuildSummary>,
}

/// `POST /api/builds`: where the record can be read.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    /// The record's id.
    id: String,
    /// `/api/builds/{id}`.
    url: String,
}

/// `GET /api/builds/{id}`: the record and the counts derived from it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildDetail {
    /// The record as reported.
    #[serde(flatten)]
    record: BuildRecord,
    /// Vertices that executed.
    executed: usize,
    /// Vertices restored from the cache.
    cached: usize,
    /// `cached / vertices`; null without vertices.
    cache_hit_rate: Option<f64>,
}

/// `GET /api/webhooks/deliveries`: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    deliveries: Vec<Delivery>,
}

/// `?last=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LastQuery {
    /// Only the newest this many.
    #[param(minimum = 0)]
    last: Option<usize>,
}

impl ListQuery {
    /// The filter: `last` defaulting to `default_last` and capped at `cap`.
    fn filter(self, default_last: Option<usize>, cap: Option<usize>) -> Result<Filter, ApiError> {
        let since_ms = match self.since.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let ago = humantime::parse_duration(s).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "`since`: expected a duration such as `24h` or `7d`, got {s:?} ({e})"
                    ))
                })?;
                Some(crate::server::records::ago_ms(ago))
            }
        };
        let last = self.last.or(default_last);
        Ok(Filter {
            project: self.project.filter(|p| !p.is_empty()),
            target: self.target.filter(|t| !t.is_empty()),
            status: self.status,
            since_ms,
            last: match cap {
                Some(cap) => last.map(|n| n.min(cap)),
                None => last,
            },
        })
    }
}

/// Records a build (a write: the token is needed).
#[utoipa::path(
    post,
    path = "/api/builds",
    tag = "builds",
    request_body(content = BuildRecord, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "That id is recorded already", body = Recorded),
        (status = 400, description = "Not a valid build record", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong bearer token", body = String, content_type = "text/plain"),
        (status = 403, description = "The server takes no writes (no token configured)", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is too large", body = String, content_type = "text/plain"),
        (status = 415, description = "Not `application/json`", body = String, content_type = "text/plain"),
    ),
    security((), ("bearer" = []))
)]
pub async fn post_build(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // JSON only: a browser can POST `text/plain` across sites without asking first.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "a build record is `Content-Type: application/json`".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&body);
    let mut record: BuildRecord = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            ApiError::BadRequest(format!("build record: {}", e.inner()))
        } else {
            ApiError::BadRequest(format!("build record: `{at}`: {}", e.inner()))
        }
    })?;
    record
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("build record: {e}")))?;
    record.received_at =
        Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    // In a task of its own: a client that gives up waiting must not cut this off halfway
    // (deliveries queued, record not written).
    tokio::spawn(record_build(state, record))
        .await
        .map_err(|e| ApiError::internal("recording the build", e))?
}

/// Queues the webhooks, then writes the record. Deliveries are on disk first, so a crash in
/// between means the client's retry (the record is not there yet) queues them again: at
/// least once, never lost. A record that is already there queues nothing.
async fn record_build(state: AppState, record: BuildRecord) -> Result<Response, ApiError> {
    let id = record.id.clone();
    let created = |status: StatusCode| {
        let url = format!("/api/builds/{id}");
        (
            status,
            axum::Json(Recorded {
                id: id.clone(),
                url,
            }),
        )
            .into_response()
    };
    let (builds, held_id) = (state.builds.clone(), record.id.clone());
    let held = blocking("reading the build records", move || builds.get(&held_id)).await?;
    if held.is_some() {
        return Ok(created(StatusCode::OK));
    }
    let summary = record.summary();
    let payload = serde_json::json!({ "build": summary });
    state
        .webhooks
        .enqueue("build.completed", &payload)
        .await
        .map_err(|e| ApiError::internal("queueing webhooks", format!("{e:#}")))?;
    let builds = state.builds.clone();
    let added = blocking("recording the build", move || builds.add(record)).await?;
    Ok(match added {
        Added::New => {
            if let Ok(json) = serde_json::to_string(&summary) {
                // No dashboard open is no error.
                let _ = state.events.send(json);
            }
            tracing::info!(
                id = %summary.id,
                project = %summary.project,
                status = summary.status.as_str(),
                duration_ms = summary.duration_ms,
                executed = summary.executed,
                cached = summary.cached,
                "build recorded"
            );
            created(StatusCode::CREATED)
        }
        Added::Duplicate => created(StatusCode::OK),
    })
}

/// Recent builds, newest first (50 unless `last` says otherwise, at most 1000).
#[utoipa::path(
    get,
    path = "/api/builds",
    tag = "builds",
    params(ListQuery),
    responses(
        (status = 200, description = "Summaries, newest first", body = BuildList),
        (status = 400, description = "A malformed query", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong bearer token (`--token-reads`)", body = String, content_type = "text/plain"),
    ),
    security((), ("bearer" = []))
)]
pub async fn list_builds(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<BuildList>, ApiError> {
    let filter = q.filter(Some(DEFAULT_LIST), Some(MAX_LIST))?;
    let records = blocking("reading the build records", move || {
        state.builds.query(&filter)
    })
    .await?;
    let builds = records.iter().map(|r| r.summary()).collect();
    Ok(axum::Json(BuildList { builds }))
}

/// Runs `f` (which reads or writes the records, on disk) on the blocking pool; its failure,
/// or a panic, is a 500 saying what was being done.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(what, e))?
        .map_err(|e| ApiError::internal(what, e))
}

/// One build: the record with its vertices and the derived counts.
#[utoipa::path(
    get,
    path = "/api/builds/{id}",
    tag = "builds",
    params(("id" = String, Path, description = "The record's id")),
    responses(
        (status = 200, description = "The record", body = BuildDetail),
        (status = 401, description = "Missing or wrong bearer token (`--token-reads`)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such build", body = String, content_type = "text/plain"),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_build(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<BuildDetail>, ApiError> {
    let record = blocking("reading the build records", move || state.builds.get(&id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(BuildDetail {
        executed: record.executed(),
        cached: record.cached(),
        cache_hit_rate: record.hit_rate(),
        record: record.as_ref().clone(),
    }))
}

/// Aggregates over the builds held (all of them unless `last` narrows them).
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "builds",
    params(ListQuery),
    responses(
        (status = 200, description = "Aggregates", body = crate::server::builds::Stats),
        (status = 400, description = "A malformed query", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong bearer token (`--token-reads`)", body = String, content_type = "text/plain"),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_stats(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<crate::server::builds::Stats>, ApiError> {
    // All records held unless `last` or `since` narrow them (not capped: stats are over all).
    let filter = q.filter(None, None)?;
    // The database aggregates (records::aggregate); it blocks, so not on the async workers.
    let computed = blocking("computing stats", move || state.builds.stats(&filter)).await?;
    Ok(axum::Json(computed))
}

/// Recent webhook deliveries and their state. Webhook URLs can carry secrets in their paths
/// (chat hooks do), so this list is authorized as a write: the token, or nobody on a server
/// without one unless `--insecure-open-writes`.
#[utoipa::path(
    get,
    path = "/api/webhooks/deliveries",
    tag = "webhooks",
    params(LastQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = DeliveryList),
        (status = 400, description = "A malformed query", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong bearer token", body = String, content_type = "text/plain"),
        (status = 403, description = "The server takes no writes (no token configured)", body = String, content_type = "text/plain"),
    ),
    security(("bearer" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LastQuery>,
) -> Result<axum::Json<DeliveryList>, ApiError> {
    state.auth.check(&headers, true)?;
    let last = q.last.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    Ok(axum::Json(DeliveryList {
        deliveries: state.webhooks.recent(last),
    }))
}

async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let builds = state.builds.clone();
    let builds_held = blocking("counting the build records", move || builds.len()).await?;
    let text = metrics::render(&metrics::Snapshot {
        metrics: &state.metrics,
        objects: state.index.len(),
        bytes: state.index.total(),
        max_bytes: state.index.max_size(),
        builds: state.builds.counters(),
        builds_held,
        webhooks: state.webhooks.counters(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn get_dashboard(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let page = blocking("rendering the dashboard", move || dashboard::render(&state)).await?;
    Ok(Html(page))
}

/// `GET /events`: a `build` event per build recorded (its summary), until the client goes or
/// the server shuts down; a comment every 15 s keeps proxies from closing an idle stream. A
/// client too slow to keep up skips events (it is told with a `lagged` event).
async fn events(
    State(state): State<AppState>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = state.events.subscribe();
    let closing = state.closing.clone();
    let stream = futures::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        loop {
            if *closing.borrow() {
                return None;
            }
            tokio::select! {
                got = rx.recv() => {
                    let event = match got {
                        Ok(json) => Event::default().event("build").data(json),
                        Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                        Err(RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), (rx, closing)));
                }
                changed = closing.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}
