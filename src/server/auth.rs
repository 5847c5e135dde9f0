//! Bearer-token checks: writes need the token when one is configured, reads only with
//! `--token-reads`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};

use crate::server::error::ApiError;
use crate::server::state::AppState;

/// Who may do what.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// SHA-256 of the token, when one is configured.
    token_hash: Option<[u8; 32]>,
    /// Whether reads need the token too.
    reads: bool,
}

impl Auth {
    /// Writes need `token` when it is `Some`; reads too when `reads`.
    pub fn new(token: Option<&str>, reads: bool) -> Auth {
        Auth {
            token_hash: token.map(hash),
            reads,
        }
    }

    /// Whether a token is configured.
    pub fn enabled(&self) -> bool {
        self.token_hash.is_some()
    }

    /// Checks the `Authorization` header for a request that writes (`write`) or reads.
    pub fn check(&self, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
        let Some(expected) = &self.token_hash else {
            return Ok(());
        };
        if !write && !self.reads {
            return Ok(());
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(&hash(t), expected) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests in time independent of where they differ. Comparing digests of the
/// tokens rather than the tokens also hides the expected token's length.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Middleware for the cache routes: PUT (and any other method that is not a read) is a write.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    match state.auth.check(req.headers(), write) {
        Ok(()) => next.run(req).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn token_rules() {
        let open = Auth::new(None, false);
        assert!(open.check(&HeaderMap::new(), true).is_ok());

        let auth = Auth::new(Some("s3cret"), false);
        assert!(auth.check(&HeaderMap::new(), false).is_ok());
        assert!(auth.check(&HeaderMap::new(), true).is_err());
        assert!(auth.check(&with("Bearer s3cret"), true).is_ok());
        assert!(auth.check(&with("Bearer s3cre"), true).is_err());
        assert!(auth.check(&with("Basic s3cret"), true).is_err());

        let strict = Auth::new(Some("s3cret"), true);
        assert!(strict.check(&HeaderMap::new(), false).is_err());
        assert!(strict.check(&with("Bearer s3cret"), false).is_ok());
    }
}
