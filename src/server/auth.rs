//! Bearer-token checks. Writes need the token; a server without one refuses writes unless it
//! was started with `--insecure-open-writes`. Reads are open unless `--token-reads`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};

use crate::server::error::ApiError;
use crate::server::state::AppState;

/// Who may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Whoever presents the token whose SHA-256 this is.
    Token([u8; 32]),
    /// Nobody: no token was configured. The default, so that a server started without
    /// thinking about it cannot have its cache poisoned by any client that reaches it.
    Refused,
    /// Anybody (`--insecure-open-writes`).
    Open,
}

/// Who may do what.
#[derive(Debug, Clone)]
pub struct Auth {
    writes: Writes,
    /// Whether reads need the token too.
    reads: bool,
}

impl Auth {
    /// Writes need `token` when it is `Some`; without one they are refused, or open to anyone
    /// when `open_writes`. Reads need the token when `reads` (and there is one).
    pub fn new(token: Option<&str>, reads: bool, open_writes: bool) -> Auth {
        let writes = match token {
            Some(t) => Writes::Token(hash(t)),
            None if open_writes => Writes::Open,
            None => Writes::Refused,
        };
        Auth { writes, reads }
    }

    /// The write rule.
    pub fn writes(&self) -> Writes {
        self.writes
    }

    /// Checks the `Authorization` header for a request that writes (`write`) or reads.
    pub fn check(&self, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
        let expected = match &self.writes {
            Writes::Token(h) => h,
            Writes::Refused if write => return Err(ApiError::WritesRefused),
            Writes::Refused | Writes::Open => return Ok(()),
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
        let open = Auth::new(None, false, true);
        assert!(open.check(&HeaderMap::new(), true).is_ok());
        assert!(open.check(&HeaderMap::new(), false).is_ok());

        // No token and no `--insecure-open-writes`: reads only.
        let closed = Auth::new(None, false, false);
        assert!(matches!(
            closed.check(&with("Bearer anything"), true),
            Err(ApiError::WritesRefused)
        ));
        assert!(closed.check(&HeaderMap::new(), false).is_ok());

        let auth = Auth::new(Some("s3cret"), false, false);
        assert!(auth.check(&HeaderMap::new(), false).is_ok());
        assert!(auth.check(&HeaderMap::new(), true).is_err());
        assert!(auth.check(&with("Bearer s3cret"), true).is_ok());
        assert!(auth.check(&with("Bearer s3cre"), true).is_err());
        assert!(auth.check(&with("Basic s3cret"), true).is_err());

        let strict = Auth::new(Some("s3cret"), true, false);
        assert!(strict.check(&HeaderMap::new(), false).is_err());
        assert!(strict.check(&with("Bearer s3cret"), false).is_ok());
    }
}
