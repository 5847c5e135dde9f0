//! The cache routes: the Bazel HTTP remote-cache protocol.
//!
//! `GET|HEAD|PUT /ac/<key>` stores action records as opaque bytes; `GET|HEAD|PUT /cas/<hex>`
//! stores blobs under the SHA-256 of their bytes, which the server checks while the upload
//! streams to disk, and again before it first serves a blob it has not checked since it started
//! or since the file changed ([`Store::open_blob`]): a damaged blob is removed and is a miss, so
//! the next client that builds it uploads a good copy. Names are exactly 64 lowercase hex digits
//! (400 otherwise). A miss is 404. Bodies stream in both directions; nothing holds a whole
//! object in memory. An upload larger than `--max-body-size` is refused (413) before it is read
//! when it says its length, and cut off when it does not; one that stalls is abandoned (408).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::server::auth::require_token;
use crate::server::error::ApiError;
use crate::server::metrics::Outcome;
use crate::server::state::AppState;
use crate::server::store::{Blob, Kind, ObjectId};

/// Buffer between the request body and the temporary file, and for reading files back.
const IO_BUFFER: usize = 256 * 1024;

/// The `/ac` and `/cas` routes, behind the token check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/ac/{name}",
            get(|s: State<AppState>, p: Path<String>| get_object(Kind::Ac, s, p))
                .head(|s: State<AppState>, p: Path<String>| head_object(Kind::Ac, s, p))
                .put(
                    |s: State<AppState>, p: Path<String>, h: HeaderMap, b: Body| {
                        put_object(Kind::Ac, s, p, h, b)
                    },
                ),
        )
        .route(
            "/cas/{name}",
            get(|s: State<AppState>, p: Path<String>| get_object(Kind::Cas, s, p))
                .head(|s: State<AppState>, p: Path<String>| head_object(Kind::Cas, s, p))
                .put(
                    |s: State<AppState>, p: Path<String>, h: HeaderMap, b: Body| {
                        put_object(Kind::Cas, s, p, h, b)
                    },
                ),
        )
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

fn parse(kind: Kind, name: &str) -> Result<ObjectId, ApiError> {
    ObjectId::parse(kind, name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "bad {} name `{name}`: expected 64 lowercase hex digits",
            kind.as_str()
        ))
    })
}

/// Runs blocking store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&what, e))?
        .map_err(|e| ApiError::internal(&what, e))
}

/// Opens `id` for reading: a blob only once its content is known to match its name. `None`
/// when it is not stored (or was damaged, which is logged and counted).
async fn open(state: &AppState, id: &ObjectId) -> Result<Option<(std::fs::File, u64)>, ApiError> {
    let store = state.store.clone();
    let lookup = id.clone();
    let found = match id.kind {
        Kind::Ac => blocking(format!("reading {id}"), move || store.open_object(&lookup)).await?,
        Kind::Cas => {
            match blocking(format!("reading {id}"), move || store.open_blob(&lookup)).await? {
                Blob::Found(f, len) => Some((f, len)),
                Blob::Missing => None,
                Blob::Damaged(actual) => {
                    tracing::warn!(
                        object = %id,
                        actual = %actual,
                        "stored blob does not match its name (sha256 {actual}): removed, \
                         a client's upload will replace it"
                    );
                    state.metrics.request(Kind::Cas, Outcome::Damaged);
                    None
                }
            }
        }
    };
    if found.is_none() {
        state.index.forget(id);
    }
    Ok(found)
}

async fn get_object(
    kind: Kind,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse(kind, &name)?;
    let Some((file, len)) = open(&state, &id).await? else {
        state.metrics.request(kind, Outcome::Miss);
        return Err(ApiError::NotFound);
    };
    state.index.touch(&id, len);
    state.metrics.request(kind, Outcome::Hit);
    state.metrics.sent(kind, len);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file),
        IO_BUFFER,
    ));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// HEAD answers for a blob only once it is known to be intact (as GET does): a HEAD that claimed
/// a damaged blob would stop every client from uploading a good one.
async fn head_object(
    kind: Kind,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse(kind, &name)?;
    let size = match kind {
        Kind::Ac => {
            let store = state.store.clone();
            let lookup = id.clone();
            let size = blocking(format!("reading {id}"), move || store.stat(&lookup)).await?;
            if size.is_none() {
                state.index.forget(&id);
            }
            size
        }
        Kind::Cas => open(&state, &id).await?.map(|(_, len)| len),
    };
    let Some(len) = size else {
        state.metrics.request(kind, Outcome::Miss);
        return Err(ApiError::NotFound);
    };
    state.index.touch(&id, len);
    state.metrics.request(kind, Outcome::Hit);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
    )
        .into_response())
}

async fn put_object(
    kind: Kind,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let metrics = state.metrics.clone();
    match store_upload(kind, state, &name, headers, body).await {
        Ok(size) => {
            metrics.request(kind, Outcome::Stored);
            metrics.received(kind, size);
            Ok(StatusCode::OK)
        }
        Err(e) => {
            metrics.request(kind, Outcome::Rejected);
            Err(e)
        }
    }
}

/// Streams an upload into the store; returns its size.
async fn store_upload(
    kind: Kind,
    state: AppState,
    name: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<u64, ApiError> {
    let id = parse(kind, name)?;
    let max = state.index.max_size();
    let max_body = state.limits.max_size;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before a byte of the body is read: hyper then closes the connection rather than
    // read the rest.
    if let Some(len) = declared {
        if len > max_body {
            return Err(ApiError::BodyTooLarge(max_body));
        }
        if let Some(max) = max
            && len > max
        {
            return Err(ApiError::TooLarge(max));
        }
    }

    let store = state.store.clone();
    let tmp = blocking(format!("storing {id}"), move || store.temp()).await?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::internal(format!("storing {id}"), e))?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        // A body that breaks off or stalls is the client's failure; the temporary file goes
        // away when `tmp` is dropped.
        let chunk = chunk.map_err(body_error)?;
        size += chunk.len() as u64;
        if size > max_body {
            return Err(ApiError::BodyTooLarge(max_body));
        }
        if let Some(m) = max
            && size > m
        {
            return Err(ApiError::TooLarge(m));
        }
        if kind == Kind::Cas {
            hasher.update(&chunk);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("storing {id}"), e))?;
    }
    out.flush()
        .await
        .map_err(|e| ApiError::internal(format!("storing {id}"), e))?;
    drop(out);
    if kind == Kind::Cas {
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != id.hash {
            return Err(ApiError::BadRequest(format!(
                "content has sha256 {}, not {}",
                hex::encode(actual),
                id.hex()
            )));
        }
    }
    let store = state.store.clone();
    let target = id.clone();
    blocking(format!("storing {id}"), move || match target.kind {
        // Its hash was just checked: served without hashing it again.
        Kind::Cas => store.commit_checked(tmp, &target),
        Kind::Ac => store.commit(tmp, &target),
    })
    .await?;
    state.index.touch(&id, size);
    if state.index.over_limit() {
        state.gc.wake();
    }
    Ok(size)
}

/// A request body that failed: stalled past `--body-idle-timeout` (408), or broken off.
fn body_error(e: axum::Error) -> ApiError {
    let inner = e.into_inner();
    if inner
        .downcast_ref::<tower_http::timeout::TimeoutError>()
        .is_some()
    {
        tracing::debug!("upload abandoned: no data within the body idle timeout");
        return ApiError::BodyTimeout;
    }
    ApiError::BadRequest(format!("reading the body: {inner}"))
}
