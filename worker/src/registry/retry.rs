//! Errors of a push, and the policy that retries an operation when its error says that may help:
//! connection failures, timeouts, `408`, `429` and `5xx`, with exponential backoff (or the
//! registry's `Retry-After`, capped).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of a push. Each names the image, the blob or manifest, and the registry.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The name does not parse as an image reference.
    #[error("invalid image name `{name}`: {reason}")]
    InvalidReference {
        /// The name as given.
        name: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Connecting failed or timed out.
    #[error("{what}: cannot reach registry {host}: {reason}{}", tries(*.attempts))]
    Unreachable {
        /// Registry host.
        host: String,
        /// What was being pushed.
        what: String,
        /// Innermost cause (`connection refused`, `i/o timeout`, …).
        reason: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// An unexpected HTTP status.
    #[error("{what}: registry {host} answered HTTP {status}{}{}", detail(.message), tries(*.attempts))]
    Status {
        /// Registry host.
        host: String,
        /// What was being pushed.
        what: String,
        /// HTTP status.
        status: u16,
        /// The registry's error message, if it sent one.
        message: String,
        /// How many times it was tried.
        attempts: u32,
        /// `Retry-After`, when the registry said so.
        retry_after: Option<Duration>,
    },
    /// Authentication is needed and failed, or access is denied.
    #[error("{what}: registry {host} {}", denial(*.status, .message, .username.as_deref()))]
    Unauthorized {
        /// Registry host.
        host: String,
        /// What was being pushed.
        what: String,
        /// HTTP status (401 or 403).
        status: u16,
        /// The registry's message.
        message: String,
        /// The user whose credentials were refused; `None` when there were none.
        username: Option<String>,
    },
    /// The registry broke the protocol (e.g. no `Location` on an upload session).
    #[error("{what}: registry {host}: {message}")]
    Protocol {
        /// Registry host.
        host: String,
        /// What was being pushed.
        what: String,
        /// What was wrong.
        message: String,
    },
    /// Reading the local blob failed.
    #[error("{what}: reading `{}`: {source}", .path.display())]
    Local {
        /// What was being pushed.
        what: String,
        /// The blob file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn denial(status: u16, message: &str, username: Option<&str>) -> String {
    let why = match (status, username) {
        (403, _) => "denied access (HTTP 403)".to_string(),
        (_, Some(u)) => format!("refused the credentials of user `{u}` (HTTP {status})"),
        (_, None) => format!(
            "requires authentication (HTTP {status}) and no credentials are configured for it \
             (docker login, or `auths`/`credHelpers` in $DOCKER_CONFIG/config.json)"
        ),
    };
    format!("{why}{}", detail(message))
}

impl PushError {
    /// Whether trying again may help: connection failures, timeouts, `408`, `429` and `5xx`.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::Unreachable { .. } => true,
            PushError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..=599).contains(status)
            }
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn after_attempts(mut self, n: u32) -> Self {
        if let PushError::Unreachable { attempts, .. } | PushError::Status { attempts, .. } =
            &mut self
        {
            *attempts = n;
        }
        self
    }
}

/// Result alias for pushes.
pub type Result<T, E = PushError> = std::result::Result<T, E>;

/// How often and how patiently an operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest wait, also for a registry's `Retry-After`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three tries, waiting 0.5 s then 1 s (at most 10 s when the registry asks for longer).
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed tries (1-based): exponential, capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails with an error that is not
    /// [retryable](PushError::is_retryable), or has been tried [`RetryPolicy::attempts`] times.
    /// The error returned says how many tries were made.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempts = self.attempts.max(1);
        let mut n = 0;
        loop {
            n += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && n < attempts => {
                    let wait = e
                        .retry_after()
                        .unwrap_or_else(|| self.backoff(n))
                        .min(self.max_backoff);
                    tracing::debug!("retrying in {wait:?} after: {e}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.after_attempts(n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16) -> PushError {
        PushError::Status {
            host: "r:5000".into(),
            what: "pushing `r:5000/a:1`: blob `sha256:ab`".into(),
            status: code,
            message: String::new(),
            attempts: 1,
            retry_after: None,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn retries_5xx_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = fast()
            .run(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(status(500)),
                    _ => Ok("done"),
                }
            })
            .await
            .unwrap();
        assert_eq!(out, "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt_and_says_so() {
        let calls = AtomicU32::new(0);
        let err = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(status(503))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let msg = err.to_string();
        assert!(msg.contains("HTTP 503"), "{msg}");
        assert!(msg.contains("after 3 attempts"), "{msg}");
        assert!(msg.contains("r:5000"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        for code in [400u16, 404, 405] {
            let calls = AtomicU32::new(0);
            let err = fast()
                .run(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(status(code))
                })
                .await
                .unwrap_err();
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code}");
            assert!(!err.to_string().contains("attempts"));
        }
        for code in [408u16, 429, 500, 502] {
            assert!(status(code).is_retryable(), "{code}");
        }
        let unreachable = PushError::Unreachable {
            host: "h".into(),
            what: "w".into(),
            reason: "connection refused".into(),
            attempts: 1,
        };
        assert!(unreachable.is_retryable());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
        assert_eq!(p.backoff(60), Duration::from_millis(350));
    }

    #[test]
    fn denial_wording() {
        let e = PushError::Unauthorized {
            host: "127.0.0.1:5000".into(),
            what: "pushing `127.0.0.1:5000/a:1`: blob `sha256:ab`".into(),
            status: 401,
            message: String::new(),
            username: None,
        };
        assert!(e.to_string().contains("no credentials are configured"));
        let e = PushError::Unauthorized {
            host: "127.0.0.1:5000".into(),
            what: "pushing `127.0.0.1:5000/a:1`: blob `sha256:ab`".into(),
            status: 401,
            message: String::new(),
            username: Some("bob".into()),
        };
        assert!(e.to_string().contains("credentials of user `bob`"));
    }
}
