//! What a request can fail with, and the HTTP status each failure maps to.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A failed request. The body is a one-line message; server-side failures are logged at warn.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a malformed name or path, or content that does not match its digest.
    BadRequest(String),
    /// 401: a missing or wrong bearer token.
    Unauthorized,
    /// 403: a write to a server that takes none (started without `--token`).
    WritesRefused,
    /// 408: the client stopped sending the body of its request.
    BodyTimeout,
    /// 404: no such object.
    NotFound,
    /// 413: the upload is larger than the store may hold.
    TooLarge(u64),
    /// 413: the upload is larger than `--max-body-size`.
    BodyTooLarge(u64),
    /// 415: the body is not of the type the route takes.
    UnsupportedMediaType(String),
    /// 500: the server could not do its part (disk trouble).
    Internal(String),
}

impl ApiError {
    /// A server-side failure, with what was being done.
    pub fn internal(context: impl std::fmt::Display, e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(format!("{context}: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".to_string(),
            ),
            ApiError::WritesRefused => (
                StatusCode::FORBIDDEN,
                "this server takes no writes: it was started without a token; start it with \
                 `--token TOKEN` (or MEMOBUILD_SERVER_TOKEN) and give builds \
                 `--remote-cache-token TOKEN`, or with `--insecure-open-writes` to let anyone \
                 who can reach it write"
                    .to_string(),
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving: upload abandoned".to_string(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found".to_string()),
            ApiError::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the store holds at most {max} bytes"),
            ),
            ApiError::BodyTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("uploads are limited to {max} bytes (`--max-body-size`)"),
            ),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::Internal(m) => {
                tracing::warn!("{m}");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        let mut resp = (status, format!("{message}\n")).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
