//! L3: a remote cache shared by a team, behind the [`RemoteTier`] trait.
//!
//! [`HttpTier`] speaks the Bazel HTTP remote-cache protocol: `GET|HEAD|PUT /ac/<key>` for action
//! records (MemoBuild keys), `GET|HEAD|PUT /cas/<sha256 hex>` for layer blobs. `memobuild server`,
//! bazel-remote or any WebDAV store can serve it. Every blob fetched is verified against its
//! digest before it enters the local store; a record is only used when all its blobs could be
//! fetched and it matches them ([`crate::layer::check`]). Failures are errors of the tier; the
//! caller turns them into warnings, never into a failed build. A blob that arrives damaged is
//! [`RemoteError::Corrupt`], which the tier above ([`super::tier::Remote`]) treats as a miss to
//! rebuild and upload again, not as a failure.
//!
//! A remote cache is an optimisation, so it gets little patience: [`CONNECT_TIMEOUT`],
//! [`FIRST_BYTE_TIMEOUT`] for each response, [`IDLE_TIMEOUT`] for a body that stops moving
//! (download or upload), and no second try after a timeout. A server that accepts connections
//! and never answers costs a build a few seconds and one warning.

use std::path::Path;
use std::sync::{Arc, Mutex};
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
    /// For requests whose body (if any) is in memory: its read timeout bounds the silence of a
    /// response body being downloaded.
    client: reqwest::Client,
    /// For blob uploads: no read timeout, because reqwest's counts from the start of the
    /// request, so it would bound the upload's total time; [`send_watched`] bounds its silence.
    uploads: reqwest::Client,
    timeouts: Timeouts,
}

/// How many times a request is tried before the tier gives up on it (only 5xx answers and
/// connections dropped mid-request are tried again; timeouts and refusals are not).
const ATTEMPTS: u32 = 3;

/// TCP connect. A team cache is on the local network or close to it: a connection that takes
/// longer than this is not going to make the build faster.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// From a request sent to its response headers (lookups, existence checks, records). The server
/// answers from its disk (bazel-remote, `memobuild server`); waiting longer for an optimisation
/// would slow the build down instead. A blob download, asked only of a server that just answered
/// a lookup, waits up to [`IDLE_TIMEOUT`].
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// No byte of a body (downloaded, or taken by the server while uploading) for this long: the
/// transfer has stalled. Silence only, never a total: a big blob over a slow link moves often.
/// Also bounds the wait for the answer to an upload once its last byte is sent (the server
/// hashes what it received before it answers).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits of one [`HttpTier`] (the constants above; tests make them shorter).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent → response headers.
    pub first_byte: Duration,
    /// Silence of a body being transferred.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: CONNECT_TIMEOUT,
            first_byte: FIRST_BYTE_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

impl HttpTier {
    /// A tier at `base` (`http://host:port[/prefix]`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, RemoteError> {
        Self::with_timeouts(base, token, Timeouts::default())
    }

    /// [`HttpTier::new`] with other limits.
    pub fn with_timeouts(
        base: &str,
        token: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, RemoteError> {
        let err = |e: reqwest::Error| RemoteError::Http {
            url: base.to_string(),
            message: e.to_string(),
        };
        // The read timeout also runs while waiting for headers; `first_byte` (shorter) is
        // enforced around `send` and fires first.
        let client = crate::tls::client_builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle.max(timeouts.first_byte))
            .build()
            .map_err(err)?;
        let uploads = crate::tls::client_builder()
            .connect_timeout(timeouts.connect)
            .build()
            .map_err(err)?;
        Ok(HttpTier {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            client,
            uploads,
            timeouts,
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

    /// Sends the request built by `make` (with how to wait for its answer), retrying 5xx
    /// answers and dropped connections with backoff. A refused connection or a timeout ends it
    /// at once: the server is not there, or not answering, and the build should not wait for it.
    async fn send(
        &self,
        url: &str,
        make: impl Fn() -> (reqwest::RequestBuilder, Wait),
    ) -> Result<reqwest::Response, RemoteError> {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        let fail = |message: String| RemoteError::Http {
            url: url.to_string(),
            message,
        };
        for attempt in 1..=ATTEMPTS {
            let (rb, wait) = make();
            let rb = self.auth(rb);
            let sent = match wait {
                Wait::Upload(p) => send_watched(rb, &p, self.timeouts.idle).await,
                Wait::Answer(limit) => match tokio::time::timeout(limit, rb.send()).await {
                    Ok(r) => r.map_err(Failure::Http),
                    Err(_) => Err(Failure::NoAnswer(limit)),
                },
            };
            match sent {
                Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
                Ok(r) => return Ok(r),
                Err(Failure::NoAnswer(limit)) => {
                    return Err(fail(format!("no answer within {}s", limit.as_secs_f32())));
                }
                Err(Failure::Stalled) => {
                    return Err(fail(format!(
                        "the upload stalled (nothing taken or answered for {}s)",
                        self.timeouts.idle.as_secs_f32()
                    )));
                }
                // Nobody listens: retrying will not help, and the build should not wait.
                Err(Failure::Http(e)) if e.is_connect() => {
                    return Err(fail(format!("cannot connect: {e}")));
                }
                Err(Failure::Http(e)) if e.is_timeout() => {
                    return Err(fail(format!("timed out: {e}")));
                }
                Err(Failure::Http(e)) => last = e.to_string(),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
        Err(fail(last))
    }

    /// How long to wait for the answer to a lookup, a check or a record.
    fn answer(&self) -> Wait {
        Wait::Answer(self.timeouts.first_byte)
    }

    /// The error of a response body that failed while it was downloaded.
    fn body_err(&self, url: &str, e: &reqwest::Error) -> RemoteError {
        RemoteError::Http {
            url: url.to_string(),
            message: if e.is_timeout() {
                format!(
                    "the download stalled (nothing for {}s)",
                    self.timeouts.idle.as_secs_f32()
                )
            } else {
                e.to_string()
            },
        }
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
            let r = self
                .send(&url, || (self.client.get(&url), self.answer()))
                .await?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !r.status().is_success() {
                return Err(Self::status_err(&url, r).await);
            }
            let bytes = r.bytes().await.map_err(|e| self.body_err(&url, &e))?;
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
                .send(&url, || {
                    (self.client.put(&url).body(body.clone()), self.answer())
                })
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
            // Asked only once a record was found, so the server is known to answer; a server
            // that checks a big blob before sending it may take longer than a lookup to start.
            let wait = || Wait::Answer(self.timeouts.idle);
            let r = self.send(&url, || (self.client.get(&url), wait())).await?;
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
                let chunk = chunk.map_err(|e| self.body_err(&url, &e))?;
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
            let head = self
                .send(&url, || (self.client.head(&url), self.answer()))
                .await?;
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
                    let progress = Progress::new();
                    let rb = self
                        .uploads
                        .put(&url)
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(file_body(&path, progress.clone()));
                    (rb, Wait::Upload(progress))
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

/// How [`HttpTier::send`] waits for an answer.
enum Wait {
    /// At most this long for the response headers.
    Answer(Duration),
    /// An upload reporting to this: until its body or its answer is silent for the idle limit.
    Upload(Progress),
}

/// Why one try of a request failed.
enum Failure {
    /// reqwest's error (connect, a read timeout of a body, a dropped connection, …).
    Http(reqwest::Error),
    /// No response headers within this limit.
    NoAnswer(Duration),
    /// An upload whose body was not taken, or whose answer did not come, for the idle limit.
    Stalled,
}

/// When an upload's body last moved, shared by the body stream and [`send_watched`].
#[derive(Clone)]
struct Progress(Arc<Mutex<tokio::time::Instant>>);

impl Progress {
    fn new() -> Self {
        Progress(Arc::new(Mutex::new(tokio::time::Instant::now())))
    }

    fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    fn last(&self) -> tokio::time::Instant {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }
}

/// Sends an upload whose body reports to `progress`, failing once neither the body moved nor
/// an answer came for `idle`. The socket takes the body as fast as the server reads it, so a
/// server that stops reading stalls the body; after the last byte, the same limit waits for the
/// answer. A total limit would cut off a big blob on a slow link instead.
async fn send_watched(
    rb: reqwest::RequestBuilder,
    progress: &Progress,
    idle: Duration,
) -> Result<reqwest::Response, Failure> {
    let send = rb.send();
    tokio::pin!(send);
    loop {
        let deadline = progress.last() + idle;
        tokio::select! {
            r = &mut send => return r.map_err(Failure::Http),
            () = tokio::time::sleep_until(deadline) => {
                if progress.last() + idle <= tokio::time::Instant::now() {
                    return Err(Failure::Stalled);
                }
            }
        }
    }
}

/// A streaming request body reading `path` (opened when the request is sent, so retries
/// reread), reporting each chunk taken to `progress`.
fn file_body(path: &Path, progress: Progress) -> reqwest::Body {
    let path = path.to_path_buf();
    let stream = futures::stream::once(async move { tokio::fs::File::open(path).await })
        .map(|f| match f {
            Ok(f) => tokio_util::io::ReaderStream::new(f).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .flatten()
        .inspect(move |_| progress.touch());
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::testhttp::{self, Reply};

    fn quick() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_millis(500),
            idle: Duration::from_millis(800),
        }
    }

    /// Runs `f`, failing the test instead of hanging when it takes a minute.
    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("still waiting after 60 s")
    }

    // Verifies (issue 12, item 3): a server that accepts and never answers fails a lookup once
    // the first-byte limit passes, says so, and is not tried again (one connection): the tier
    // gives up quickly and the build goes on without it.
    #[tokio::test]
    async fn a_silent_server_fails_fast_and_once() {
        let peer = testhttp::silent().await;
        let tier = HttpTier::with_timeouts(&format!("http://{}", peer.addr), None, quick())
            .expect("client");
        let err = bounded(tier.get_record(&"ab".repeat(32)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no answer within 0.5s"), "{err}");
        assert_eq!(peer.connections.load(Ordering::SeqCst), 1, "no retry");
    }

    // Verifies: the limits are on silence, not on a transfer's length: a blob sent in 12 pieces
    // 200 ms apart (2.4 s in all, three times the idle limit) downloads and verifies; one that
    // stops half way fails once the idle limit passes, saying it stalled.
    #[tokio::test]
    async fn slow_downloads_pass_and_stalled_ones_fail() {
        let blob = b"slow blob!".repeat(120);
        let digest = crate::blobs::sha256_digest(&blob);
        for stall in [None, Some(600)] {
            let body = blob.clone();
            let peer = testhttp::serve(move |_, _| Reply::Body {
                status: 200,
                body: body.clone(),
                piece: 100,
                gap: Duration::from_millis(200),
                stall_after: stall,
            })
            .await;
            let d = tempfile::tempdir().unwrap();
            let store = BlobStore::open(d.path()).unwrap();
            let tier = HttpTier::with_timeouts(&format!("http://{}", peer.addr), None, quick())
                .expect("client");
            let got = bounded(tier.fetch_blob(&digest, &store)).await;
            match stall {
                None => {
                    assert!(got.unwrap());
                    assert!(store.verify(&digest, Some(blob.len() as u64)));
                }
                Some(_) => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains("the download stalled"), "{err}");
                    assert!(!store.contains(&digest));
                }
            }
        }
    }

    // Verifies: an upload to a server that takes the request head and then reads nothing fails
    // once the idle limit passes (the body cannot move, no answer comes); one the server reads
    // slowly, longer in all than the limit, goes through. 32 MiB: more than loopback socket
    // buffers hold, so a server that does not read does stall the body.
    #[tokio::test]
    async fn stalled_uploads_fail_and_slow_ones_pass() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let digest = store.put_bytes(&vec![7u8; 32 << 20]).unwrap();
        for read in [false, true] {
            let peer = testhttp::serve(move |method, _| match method {
                "HEAD" => Reply::now(404, b""),
                _ if read => Reply::ReadSlowly {
                    status: 200,
                    piece: 1 << 20,
                    gap: Duration::from_millis(60),
                },
                _ => Reply::Nothing,
            })
            .await;
            let tier = HttpTier::with_timeouts(&format!("http://{}", peer.addr), None, quick())
                .expect("client");
            let started = std::time::Instant::now();
            let got = bounded(tier.upload_blob(&digest, &store)).await;
            if read {
                got.unwrap();
                assert!(
                    started.elapsed() > quick().idle,
                    "the slow upload took longer than the idle limit"
                );
            } else {
                let err = got.unwrap_err().to_string();
                assert!(err.contains("the upload stalled"), "{err}");
            }
        }
    }
}
