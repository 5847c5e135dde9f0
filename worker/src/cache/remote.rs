//! L3: a remote cache shared by a team, behind the [`RemoteTier`] trait.
//!
//! [`HttpTier`] speaks the Bazel HTTP remote-cache protocol: `GET|HEAD|PUT /ac/<key>` for action
//! records (MemoBuild keys), `GET|HEAD|PUT /cas/<sha256 hex>` for layer blobs. `memobuild server`,
//! bazel-remote or any WebDAV store can serve it. Every blob fetched is verified against its
//! digest before it enters the local store; a record is only used when all its blobs could be
//! fetched. Failures are errors of the tier; the caller turns them into warnings, never into a
//! failed build. A blob that arrives damaged is [`RemoteError::Corrupt`], which the tier above
//! ([`super::tier::Remote`]) treats as a miss to rebuild and upload again, not as a failure.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::blobs::{BlobStore, digest_hex};
use crate::cache::ActionRecord;

/// Errors of a remote tier.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The request failed (connection, timeout, bad status).
    #[error("remote cache {url}: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A downloaded blob did not match its digest (it is discarded).
    #[error("remote cache {url}: content does not match digest {digest}")]
    Corrupt {
        /// The URL requested.
        url: String,
        /// The expected digest.
        digest: String,
    },
    /// Local file trouble while fetching or pushing.
    #[error("remote cache: {0}")]
    Local(String),
}

/// A cache tier behind the local one. Misses are `Ok(None)` / `Ok(false)`, not errors.
pub trait RemoteTier: Send + Sync {
    /// A short description for messages (the base URL).
    fn describe(&self) -> String;
    /// The record stored under `key`, if any.
    fn get_record<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, RemoteError>>;
    /// Stores a record.
    fn put_record<'a>(&'a self, record: &'a ActionRecord)
    -> BoxFuture<'a, Result<(), RemoteError>>;
    /// Downloads blob `digest` into `store` (verified). `Ok(false)` when the tier lacks it.
    fn fetch_blob<'a>(
        &'a self,
        digest: &'a str,
        store: &'a BlobStore,
    ) -> BoxFuture<'a, Result<bool, RemoteError>>;
    /// Whether the tier says it holds blob `digest` (without downloading it). A tier can be
    /// wrong: [`RemoteTier::fetch_blob`] may still find the content damaged.
    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, RemoteError>>;
    /// Uploads blob `digest` from `store`, replacing whatever the tier holds under that name.
    fn upload_blob<'a>(
        &'a self,
        digest: &'a str,
        store: &'a BlobStore,
    ) -> BoxFuture<'a, Result<(), RemoteError>>;
}

/// The Bazel HTTP remote-cache protocol over reqwest.
#[derive(Debug, Clone)]
pub struct HttpTier {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

/// How many times a request is tried before the tier gives up on it.
const ATTEMPTS: u32 = 3;

impl HttpTier {
    /// A tier at `base` (`http://host:port[/prefix]`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, RemoteError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| RemoteError::Http {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(HttpTier {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends the request built by `make`, retrying connection errors and 5xx with backoff.
    async fn send(
        &self,
        url: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RemoteError> {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.auth(make()).send().await {
                Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() && attempt == 1 => {
                    // Nobody listens: retrying will not help, and the build should not wait.
                    return Err(RemoteError::Http {
                        url: url.to_string(),
                        message: format!("cannot connect: {e}"),
                    });
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
        Err(RemoteError::Http {
            url: url.to_string(),
            message: last,
        })
    }

    /// A refused request, with the first line of the server's answer when it gave one
    /// (`memobuild server` says there how to configure a token, for instance).
    async fn status_err(url: &str, mut r: reqwest::Response) -> RemoteError {
        let status = r.status();
        // Only the start of the body: an error page can be anything.
        let mut body = Vec::new();
        while body.len() < 1024 {
            match r.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&body);
        let reason: String = text
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(300)
            .collect();
        RemoteError::Http {
            url: url.to_string(),
            message: if reason.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {reason}")
            },
        }
    }
}

impl RemoteTier for HttpTier {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn get_record<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, RemoteError>> {
        async move {
            let url = self.url("ac", key);
            let r = self.send(&url, || self.client.get(&url)).await?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !r.status().is_success() {
                return Err(Self::status_err(&url, r).await);
            }
            let bytes = r.bytes().await.map_err(|e| RemoteError::Http {
                url: url.clone(),
                message: e.to_string(),
            })?;
            // A record that does not parse or is filed under another key is a miss.
            Ok(serde_json::from_slice::<ActionRecord>(&bytes)
                .ok()
                .filter(|rec| rec.key == key))
        }
        .boxed()
    }

    fn put_record<'a>(
        &'a self,
        record: &'a ActionRecord,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        async move {
            let url = self.url("ac", &record.key);
            let body = serde_json::to_vec(record).map_err(|e| RemoteError::Local(e.to_string()))?;
            let r = self
                .send(&url, || self.client.put(&url).body(body.clone()))
                .await?;
            if !r.status().is_success() {
                return Err(Self::status_err(&url, r).await);
            }
            Ok(())
        }
        .boxed()
    }

    fn fetch_blob<'a>(
        &'a self,
        digest: &'a str,
        store: &'a BlobStore,
    ) -> BoxFuture<'a, Result<bool, RemoteError>> {
        async move {
            let hex = digest_hex(digest).map_err(|e| RemoteError::Local(e.to_string()))?;
            let url = self.url("cas", hex);
            let r = self.send(&url, || self.client.get(&url)).await?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(false);
            }
            if !r.status().is_success() {
                return Err(Self::status_err(&url, r).await);
            }
            let local = |e: &dyn std::fmt::Display| RemoteError::Local(format!("{digest}: {e}"));
            let tmp = store.temp().map_err(|e| local(&e))?;
            let file = tmp.as_file().try_clone().map_err(|e| local(&e))?;
            let mut file = tokio::fs::File::from_std(file);
            let mut hasher = Sha256::new();
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| RemoteError::Http {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| local(&e))?;
            }
            file.flush().await.map_err(|e| local(&e))?;
            drop(file);
            if format!("sha256:{}", hex::encode(hasher.finalize())) != digest {
                return Err(RemoteError::Corrupt {
                    url,
                    digest: digest.to_string(),
                });
            }
            let store = store.clone();
            let d = digest.to_string();
            tokio::task::spawn_blocking(move || store.commit(tmp, &d))
                .await
                .map_err(|e| local(&e))?
                .map_err(|e| local(&e))?;
            Ok(true)
        }
        .boxed()
    }

    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, RemoteError>> {
        async move {
            let hex = digest_hex(digest).map_err(|e| RemoteError::Local(e.to_string()))?;
            let url = self.url("cas", hex);
            let head = self.send(&url, || self.client.head(&url)).await?;
            Ok(head.status().is_success())
        }
        .boxed()
    }

    fn upload_blob<'a>(
        &'a self,
        digest: &'a str,
        store: &'a BlobStore,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        async move {
            let hex = digest_hex(digest).map_err(|e| RemoteError::Local(e.to_string()))?;
            let url = self.url("cas", hex);
            let path = store
                .path(digest)
                .map_err(|e| RemoteError::Local(e.to_string()))?;
            let len = tokio::fs::metadata(&path)
                .await
                .map_err(|e| RemoteError::Local(format!("{}: {e}", path.display())))?
                .len();
            let r = self
                .send(&url, || {
                    self.client
                        .put(&url)
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(file_body(&path))
                })
                .await?;
            if !r.status().is_success() {
                return Err(Self::status_err(&url, r).await);
            }
            Ok(())
        }
        .boxed()
    }
}

/// A streaming request body reading `path` (opened when the request is sent, so retries reread).
fn file_body(path: &Path) -> reqwest::Body {
    let path = path.to_path_buf();
    let stream = futures::stream::once(async move { tokio::fs::File::open(path).await })
        .map(|f| match f {
            Ok(f) => tokio_util::io::ReaderStream::new(f).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .flatten();
    reqwest::Body::wrap_stream(stream)
}
