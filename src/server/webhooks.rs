//! Webhooks: a `POST` to every configured URL when a build completes (or on any other event),
//! signed, retried with backoff, and durable across server restarts.
//!
//! # What a receiver gets
//!
//! One `POST <url>` per delivery, with the body (these exact bytes are signed, persisted, and sent
//! unchanged on every attempt of the delivery):
//!
//! ```text
//! {"event":"build.completed","delivery":"<uuid v4>","created_at":"2025-01-31T12:00:00Z","payload":{...}}
//! ```
//!
//! and the headers:
//!
//! - `Content-Type: application/json`
//! - `User-Agent: memobuild-webhooks/<version>`
//! - `X-MemoBuild-Event: <event>` (e.g. `build.completed`)
//! - `X-MemoBuild-Delivery: <uuid>`, the same on every attempt of one delivery
//! - `X-MemoBuild-Signature-256: sha256=<hex>` when a secret is configured: the lowercase hex
//!   HMAC-SHA256 of the raw body bytes keyed with the secret. This is GitHub's
//!   `X-Hub-Signature-256` scheme, so a receiver can reuse its GitHub verification code: compute
//!   the HMAC over the body exactly as received (before any JSON parsing) and compare it with the
//!   header in constant time.
//!
//! Delivery is *at least once*: a receiver can see one delivery id more than once (its answer
//! was lost, or the server stopped between the answer and its bookkeeping) and should ignore
//! ids it has already processed.
//!
//! # Retries
//!
//! Any 2xx answer delivers. Connection errors, timeouts, 5xx, 408 and 429 are retried, after the
//! configured backoff doubled at each retry and capped at 5 minutes, or after the answer's
//! `Retry-After` (in seconds, capped at 5 minutes) when it has one. Any other answer (4xx, or a
//! 3xx: redirects are not followed) fails the delivery at once. After `max_attempts` attempts the
//! delivery fails for good. Attempts run in background tasks, at most [`MAX_IN_FLIGHT`] at once
//! over all URLs; waiting between attempts holds no slot.
//!
//! # On disk
//!
//! Under the directory given to [`Webhooks::start`] (e.g. `STORE/webhooks`):
//!
//! - `pending/<id>.json`: one file per delivery not finished yet: its [`Delivery`] state, the
//!   target URL and the body. Written before [`Webhooks::enqueue`] returns and rewritten after
//!   each failed attempt, always through a temporary file in `tmp/` that is fsynced and renamed
//!   into place. On start every file here is queued again, keeping its attempt count, and tried
//!   right away (a restart is a retry point).
//! - `finished.jsonl`: the last finished deliveries (delivered or failed for good), one
//!   [`Delivery`] per line, oldest first, trimmed to the last [`KEEP_FINISHED`] now and then.
//!   It feeds [`Webhooks::recent`] after a restart.
//! - `tmp/`: temporary files; leftovers older than an hour are removed on start.
//! - `corrupt/`: pending files that could not be read on start, moved aside (with a warning)
//!   for a human to look at.
//!
//! Pending files hold the full URL (which may carry credentials) and are created mode 0600; the
//! [`Delivery`] state shown by the API hides the URL's password and query string.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The longest wait between two attempts, whatever the backoff or `Retry-After` say.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How many finished deliveries are kept (in memory and in `finished.jsonl`).
pub const KEEP_FINISHED: usize = 200;
/// Attempts in flight at once, over all URLs.
pub const MAX_IN_FLIGHT: usize = 4;
/// The event header.
pub const EVENT_HEADER: &str = "X-MemoBuild-Event";
/// The delivery id header.
pub const DELIVERY_HEADER: &str = "X-MemoBuild-Delivery";
/// The signature header (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-MemoBuild-Signature-256";

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("memobuild-webhooks/", env!("CARGO_PKG_VERSION"));
/// Temporary files older than this are leftovers of a crash.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// The finished log is trimmed back to [`KEEP_FINISHED`] lines when it grows past this.
const FINISHED_LOG_MAX_LINES: usize = 2 * KEEP_FINISHED;

/// Configuration from the CLI.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Endpoints every event is POSTed to (http:// or https://).
    pub urls: Vec<reqwest::Url>,
    /// HMAC-SHA256 key for the signature header; None = deliveries are unsigned. An empty
    /// string counts as none.
    pub secret: Option<String>,
    /// Attempts per delivery, the first included (>= 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each retry, capped at 5 minutes.
    pub backoff: Duration,
    /// Per-attempt timeout (connect + response).
    pub timeout: Duration,
}

// By hand, so that the secret (and secrets in URLs) never reach a log.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field(
                "urls",
                &self.urls.iter().map(display_url).collect::<Vec<_>>(),
            )
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; more attempts will be made.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: attempts exhausted or an answer that retrying cannot fix.
    Failed,
}

/// One delivery's state, as `GET /api/webhooks/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// uuid v4, also sent as `X-MemoBuild-Delivery`.
    pub id: String,
    /// e.g. `build.completed`.
    pub event: String,
    /// The target, with any password and query string hidden.
    pub url: String,
    /// RFC 3339, seconds.
    pub created_at: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<u16>,
    /// What went wrong in the last attempt (connection error, timeout, `HTTP 500`), if anything.
    pub last_error: Option<String>,
    /// RFC 3339, when the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<String>,
}

/// Counters for `/metrics`, since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookCounters {
    /// Deliveries that got a 2xx answer.
    pub delivered: u64,
    /// Deliveries given up for good.
    pub failed: u64,
    /// Attempts that did not get a 2xx answer (retried or not).
    pub failed_attempts: u64,
}

/// The webhook queue: owns the delivery tasks, which stop when it is dropped.
pub struct Webhooks {
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<()>>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("dir", &self.shared.dir)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What the delivery tasks share with [`Webhooks`].
struct Shared {
    dir: PathBuf,
    config: WebhookConfig,
    client: reqwest::Client,
    /// The keyed HMAC, cloned for each signature.
    mac: Option<Hmac<Sha256>>,
    /// Bounds the attempts in flight.
    slots: Semaphore,
    state: Mutex<State>,
    /// Lines in `finished.jsonl`; the lock also serializes writes to it.
    finished_log: tokio::sync::Mutex<usize>,
    delivered: AtomicU64,
    failed: AtomicU64,
    failed_attempts: AtomicU64,
}

/// The deliveries `recent` shows. Each carries a sequence number giving creation order within
/// one run, to order deliveries created in the same second.
#[derive(Default)]
struct State {
    next_seq: u64,
    pending: HashMap<String, (u64, Delivery)>,
    finished: VecDeque<(u64, Delivery)>,
}

/// A pending delivery as persisted in `pending/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingRecord {
    /// The state the API shows.
    delivery: Delivery,
    /// The full target URL.
    target: String,
    /// The exact body, sent unchanged on every attempt.
    body: String,
}

/// The body of every POST, serialized once per delivery (fields in this order).
#[derive(Serialize)]
struct Envelope<'a> {
    event: &'a str,
    delivery: &'a str,
    created_at: &'a str,
    payload: &'a serde_json::Value,
}

/// How one attempt ended.
enum Outcome {
    Delivered {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    GiveUp {
        status: Option<u16>,
        error: String,
    },
}

/// What `start` found on disk.
struct Loaded {
    finished: Vec<Delivery>,
    finished_lines: usize,
    pending: Vec<PendingRecord>,
}

impl Webhooks {
    /// Opens `dir` (created if missing; e.g. STORE/webhooks), re-queues every delivery still
    /// pending there from an earlier run, and spawns the delivery task(s) on the current tokio
    /// runtime.
    pub async fn start(dir: &Path, config: WebhookConfig) -> anyhow::Result<Arc<Webhooks>> {
        if config.max_attempts == 0 {
            bail!("webhook attempts must be at least 1");
        }
        if config.timeout.is_zero() {
            bail!("the webhook timeout must be more than zero");
        }
        for url in &config.urls {
            if !matches!(url.scheme(), "http" | "https") {
                bail!(
                    "webhook URL `{}` is neither http:// nor https://",
                    display_url(url)
                );
            }
        }
        let mut config = config;
        config.secret = config.secret.filter(|s| !s.is_empty());
        let mac = match &config.secret {
            Some(s) => Some(
                Hmac::<Sha256>::new_from_slice(s.as_bytes())
                    .context("cannot use the webhook secret as an HMAC key")?,
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(USER_AGENT)
            .build()
            .context("cannot build the webhook HTTP client")?;

        let owned = dir.to_path_buf();
        let loaded = blocking(move || open_dir(&owned))
            .await
            .with_context(|| format!("cannot open the webhook directory `{}`", dir.display()))?;

        let mut state = State::default();
        for d in loaded.finished {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.finished.push_back((seq, d));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            client,
            mac,
            slots: Semaphore::new(MAX_IN_FLIGHT),
            state: Mutex::new(state),
            finished_log: tokio::sync::Mutex::new(loaded.finished_lines),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
        });
        let webhooks = Arc::new(Webhooks {
            shared,
            tasks: Mutex::new(JoinSet::new()),
        });

        let requeued = loaded.pending.len();
        let now = rfc3339(SystemTime::now());
        for mut record in loaded.pending {
            let target = match reqwest::Url::parse(&record.target) {
                Ok(u) => u,
                // Checked when loading.
                Err(_) => continue,
            };
            record.delivery.next_attempt_at = Some(now.clone());
            webhooks.schedule(record, target);
        }
        tracing::info!(
            dir = %dir.display(),
            urls = webhooks.shared.config.urls.len(),
            requeued,
            "webhooks ready"
        );
        Ok(webhooks)
    }

    /// Queues `payload` for every configured URL: the delivery is written to disk (durable)
    /// before this returns; sending happens in the background. With no URLs configured it does
    /// nothing. Returns the deliveries created.
    ///
    /// `event` must be non-empty printable ASCII without spaces (it goes into a header). If
    /// writing one delivery fails, the others are still queued and the first error is returned.
    pub async fn enqueue(
        &self,
        event: &str,
        payload: &serde_json::Value,
    ) -> anyhow::Result<Vec<Delivery>> {
        if event.is_empty() || event.len() > 200 || !event.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("invalid webhook event name {event:?}");
        }
        let created_at = rfc3339(SystemTime::now());
        let mut created = Vec::new();
        let mut first_error = None;
        for url in &self.shared.config.urls {
            let id = uuid::Uuid::new_v4().to_string();
            let body = serde_json::to_string(&Envelope {
                event,
                delivery: &id,
                created_at: &created_at,
                payload,
            })
            .context("cannot serialize the webhook payload")?;
            let record = PendingRecord {
                delivery: Delivery {
                    id,
                    event: event.to_string(),
                    url: display_url(url),
                    created_at: created_at.clone(),
                    attempts: 0,
                    state: DeliveryState::Pending,
                    last_status: None,
                    last_error: None,
                    next_attempt_at: Some(created_at.clone()),
                },
                target: url.to_string(),
                body,
            };
            match self.shared.persist(&record).await {
                Ok(()) => {
                    created.push(record.delivery.clone());
                    self.schedule(record, url.clone());
                }
                Err(e) => {
                    let e = e.context(format!(
                        "cannot queue the webhook delivery to `{}`",
                        display_url(url)
                    ));
                    tracing::warn!("{e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(created),
        }
    }

    /// The most recent deliveries (pending ones and the last finished ones), newest first, at
    /// most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Delivery> {
        let state = self.shared.lock();
        let mut all: Vec<&(u64, Delivery)> = state
            .pending
            .values()
            .chain(state.finished.iter())
            .collect();
        // RFC 3339 in UTC with a fixed width sorts as text.
        all.sort_unstable_by(|a, b| (&b.1.created_at, b.0).cmp(&(&a.1.created_at, a.0)));
        all.into_iter()
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Counters for /metrics: deliveries delivered, deliveries failed for good, attempts that
    /// failed (retried or not).
    pub fn counters(&self) -> WebhookCounters {
        WebhookCounters {
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            failed_attempts: self.shared.failed_attempts.load(Ordering::Relaxed),
        }
    }

    /// Whether any URL is configured.
    pub fn enabled(&self) -> bool {
        !self.shared.config.urls.is_empty()
    }

    /// Records `record` as pending and starts its delivery task.
    fn schedule(&self, record: PendingRecord, target: reqwest::Url) {
        let seq = {
            let mut state = self.shared.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state
                .pending
                .insert(record.delivery.id.clone(), (seq, record.delivery.clone()));
            seq
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::warn!("a webhook delivery task failed: {e}");
            }
        }
        tasks.spawn(deliver(self.shared.clone(), seq, record, target));
    }
}

/// Makes attempts until `record` is delivered or failed for good.
async fn deliver(shared: Arc<Shared>, seq: u64, mut record: PendingRecord, target: reqwest::Url) {
    let max = shared.config.max_attempts.max(1);
    loop {
        let d = &mut record.delivery;
        if d.attempts >= max {
            // Only a delivery queued again on start gets here (fewer attempts configured now,
            // or a stop between its last attempt and its bookkeeping).
            d.state = DeliveryState::Failed;
            d.next_attempt_at = None;
            d.last_error
                .get_or_insert_with(|| "no attempts left".to_string());
            shared.finish(seq, record.delivery).await;
            return;
        }
        let outcome = {
            let Ok(_slot) = shared.slots.acquire().await else {
                return;
            };
            shared.attempt(&target, &record).await
        };
        let d = &mut record.delivery;
        d.attempts += 1;
        match outcome {
            Outcome::Delivered { status } => {
                tracing::debug!(delivery = %d.id, url = %d.url, attempt = d.attempts, status, "webhook attempt delivered");
                d.state = DeliveryState::Delivered;
                d.last_status = Some(status);
                d.last_error = None;
                d.next_attempt_at = None;
                shared.finish(seq, record.delivery).await;
                return;
            }
            Outcome::GiveUp { status, error } => {
                tracing::debug!(delivery = %d.id, url = %d.url, attempt = d.attempts, "webhook attempt failed, not retrying: {error}");
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                d.state = DeliveryState::Failed;
                d.last_status = status;
                d.last_error = Some(error);
                d.next_attempt_at = None;
                shared.finish(seq, record.delivery).await;
                return;
            }
            Outcome::Retry {
                status,
                error,
                retry_after,
            } => {
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                d.last_status = status;
                if d.attempts >= max {
                    tracing::debug!(delivery = %d.id, url = %d.url, attempt = d.attempts, "webhook attempt failed, no attempts left: {error}");
                    d.last_error = Some(error);
                    d.state = DeliveryState::Failed;
                    d.next_attempt_at = None;
                    shared.finish(seq, record.delivery).await;
                    return;
                }
                let delay = retry_after
                    .map(|r| r.min(MAX_BACKOFF))
                    .unwrap_or_else(|| retry_delay(shared.config.backoff, d.attempts));
                tracing::debug!(
                    delivery = %d.id,
                    url = %d.url,
                    attempt = d.attempts,
                    retry_in = %humantime::format_duration(delay),
                    "webhook attempt failed, will retry: {error}"
                );
                d.last_error = Some(error);
                d.next_attempt_at = Some(rfc3339(SystemTime::now() + delay));
                if let Err(e) = shared.persist(&record).await {
                    tracing::warn!("{e:#}");
                }
                shared.update_pending(&record.delivery);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One POST of `record`'s body to `target`.
    async fn attempt(&self, target: &reqwest::Url, record: &PendingRecord) -> Outcome {
        let d = &record.delivery;
        let mut request = self
            .client
            .post(target.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, &d.event)
            .header(DELIVERY_HEADER, &d.id);
        if let Some(mac) = &self.mac {
            let mut mac = mac.clone();
            mac.update(record.body.as_bytes());
            let signature = hex::encode(mac.finalize().into_bytes());
            request = request.header(SIGNATURE_HEADER, format!("sha256={signature}"));
        }
        let response = match request.body(record.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => return classify_error(&e, self.config.timeout),
        };
        let status = response.status();
        let code = status.as_u16();
        if status.is_success() {
            Outcome::Delivered { status: code }
        } else if status.is_server_error() || code == 408 || code == 429 {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Outcome::Retry {
                status: Some(code),
                error: format!("HTTP {code}"),
                retry_after,
            }
        } else {
            Outcome::GiveUp {
                status: Some(code),
                error: format!("HTTP {code}"),
            }
        }
    }

    /// Writes `record` to `pending/<id>.json`, atomically and durably.
    async fn persist(&self, record: &PendingRecord) -> anyhow::Result<()> {
        let path = pending_path(&self.dir, &record.delivery.id);
        let bytes = serde_json::to_vec(record).context("cannot serialize a webhook delivery")?;
        let dir = self.dir.clone();
        let dest = path.clone();
        blocking(move || write_atomic(&dir, &dest, &bytes))
            .await
            .with_context(|| format!("cannot write `{}`", path.display()))
    }

    /// Refreshes the state `recent` shows for a pending delivery.
    fn update_pending(&self, delivery: &Delivery) {
        if let Some(entry) = self.lock().pending.get_mut(&delivery.id) {
            entry.1 = delivery.clone();
        }
    }

    /// Records a delivery that is delivered or failed for good: counters, log, finished log,
    /// pending file removed, and last the state `recent` shows.
    async fn finish(&self, seq: u64, delivery: Delivery) {
        if delivery.state == DeliveryState::Delivered {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                delivery = %delivery.id,
                event = %delivery.event,
                url = %delivery.url,
                attempts = delivery.attempts,
                status = ?delivery.last_status,
                "webhook delivered"
            );
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                delivery = %delivery.id,
                event = %delivery.event,
                url = %delivery.url,
                attempts = delivery.attempts,
                status = ?delivery.last_status,
                error = delivery.last_error.as_deref().unwrap_or(""),
                "webhook delivery failed for good"
            );
        }
        if let Err(e) = self.log_finished(&delivery).await {
            tracing::warn!("{e:#}");
        }
        let path = pending_path(&self.dir, &delivery.id);
        let pending_dir = self.dir.join("pending");
        let owned = path.clone();
        let removed = blocking(move || {
            match fs::remove_file(&owned) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            sync_dir(&pending_dir);
            Ok(())
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!("cannot remove `{}`: {e:#}", path.display());
        }
        let mut state = self.lock();
        state.pending.remove(&delivery.id);
        state.finished.push_back((seq, delivery));
        while state.finished.len() > KEEP_FINISHED {
            state.finished.pop_front();
        }
    }

    /// Appends `delivery` to `finished.jsonl`, trimming the file when it has grown too long.
    async fn log_finished(&self, delivery: &Delivery) -> anyhow::Result<()> {
        let mut lines = self.finished_log.lock().await;
        let mut line = serde_json::to_vec(delivery).context("cannot serialize a delivery")?;
        line.push(b'\n');
        let dir = self.dir.clone();
        let count = *lines;
        let path = dir.join("finished.jsonl");
        let shown = path.clone();
        *lines = blocking(move || {
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)?;
            if count + 1 > FINISHED_LOG_MAX_LINES {
                return trim_finished_log(&dir);
            }
            Ok(count + 1)
        })
        .await
        .with_context(|| format!("cannot append to `{}`", shown.display()))?;
        Ok(())
    }
}

/// How a request that got no answer ended.
fn classify_error(e: &reqwest::Error, timeout: Duration) -> Outcome {
    // The innermost cause says what happened (`Connection refused (os error 111)`); the outer
    // ones repeat the URL.
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if e.is_timeout() {
        Outcome::Retry {
            status: None,
            error: format!("timed out after {}", humantime::format_duration(timeout)),
            retry_after: None,
        }
    } else if e.is_connect() {
        Outcome::Retry {
            status: None,
            error: format!("connection failed: {cause}"),
            retry_after: None,
        }
    } else if e.is_builder() {
        Outcome::GiveUp {
            status: None,
            error: format!("invalid request: {cause}"),
        }
    } else {
        Outcome::Retry {
            status: None,
            error: format!("request failed: {cause}"),
            retry_after: None,
        }
    }
}

/// The wait after the `failed`-th failed attempt: `backoff`, doubled for each earlier retry,
/// at most [`MAX_BACKOFF`].
fn retry_delay(backoff: Duration, failed: u32) -> Duration {
    let factor = 2u32.saturating_pow(failed.saturating_sub(1));
    backoff.saturating_mul(factor).min(MAX_BACKOFF)
}

/// `url` for logs and the API: password and query string hidden.
fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("redacted"));
    }
    if shown.query().is_some() {
        shown.set_query(Some("redacted"));
    }
    shown.set_fragment(None);
    shown.to_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn pending_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("pending").join(format!("{id}.json"))
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task failed")?
}

/// Fsyncs a directory so that renames and removals in it survive a crash; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `dest` through a fsynced temporary file in `dir/tmp/`.
fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp_dir = dir.join("tmp");
    let mut tmp = tempfile::Builder::new()
        .prefix("write-")
        .suffix(".tmp")
        .tempfile_in(&tmp_dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", tmp_dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Keeps the last [`KEEP_FINISHED`] lines of `finished.jsonl`; returns how many are left.
fn trim_finished_log(dir: &Path) -> anyhow::Result<usize> {
    let path = dir.join("finished.jsonl");
    let text = fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let keep = &lines[lines.len().saturating_sub(KEEP_FINISHED)..];
    let mut out = Vec::with_capacity(text.len());
    for l in keep {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    write_atomic(dir, &path, &out)?;
    Ok(keep.len())
}

/// Creates the directory tree, removes stale temporary files, and loads the finished log and
/// the pending deliveries (moving unreadable ones aside). Blocks.
fn open_dir(dir: &Path) -> anyhow::Result<Loaded> {
    for sub in ["pending", "tmp", "corrupt"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).with_context(|| format!("cannot create `{}`", path.display()))?;
    }

    let now = SystemTime::now();
    if let Ok(entries) = fs::read_dir(dir.join("tmp")) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    let (finished, finished_lines) = load_finished(dir);
    let done: HashSet<&str> = finished.iter().map(|d| d.id.as_str()).collect();

    let pending_dir = dir.join("pending");
    let entries = fs::read_dir(&pending_dir)
        .with_context(|| format!("cannot list `{}`", pending_dir.display()))?;
    let mut pending = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list `{}`: {e}", pending_dir.display());
                continue;
            }
        };
        let path = entry.path();
        match read_pending(&path) {
            Ok(record) if done.contains(record.delivery.id.as_str()) => {
                // Finished, but the server stopped before removing the file.
                tracing::debug!(file = %path.display(), "removing a finished webhook delivery");
                let _ = fs::remove_file(&path);
            }
            Ok(record) => pending.push(record),
            Err(e) => {
                tracing::warn!(
                    file = %path.display(),
                    "unreadable pending webhook delivery, moving it to `{}`: {e:#}",
                    dir.join("corrupt").display()
                );
                move_aside(dir, &path);
            }
        }
    }
    // Oldest first, so that they are retried in order.
    pending.sort_by(|a, b| a.delivery.created_at.cmp(&b.delivery.created_at));
    Ok(Loaded {
        finished,
        finished_lines,
        pending,
    })
}

/// Reads and checks one `pending/<id>.json`.
fn read_pending(path: &Path) -> anyhow::Result<PendingRecord> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file name is not UTF-8")?;
    let Some(id) = name.strip_suffix(".json") else {
        bail!("not a `.json` file");
    };
    let parsed = uuid::Uuid::parse_str(id).context("the file name is not a delivery id")?;
    let text = fs::read_to_string(path).context("cannot read it")?;
    let record: PendingRecord = serde_json::from_str(&text).context("not a delivery record")?;
    if record.delivery.id != id || parsed.hyphenated().to_string() != id {
        bail!(
            "it holds delivery `{}`, not the one its name says",
            record.delivery.id
        );
    }
    if record.delivery.state != DeliveryState::Pending {
        bail!("the delivery is not pending");
    }
    let target = reqwest::Url::parse(&record.target).context("invalid target URL")?;
    if !matches!(target.scheme(), "http" | "https") {
        bail!("the target URL is neither http:// nor https://");
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&record.body).context("the body is not JSON")?;
    Ok(record)
}

/// Moves an unreadable pending file to `corrupt/`, under a fresh name if it is taken.
fn move_aside(dir: &Path, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".to_string());
    let mut dest = dir.join("corrupt").join(&name);
    if dest.exists() {
        dest = dir
            .join("corrupt")
            .join(format!("{name}.{}", uuid::Uuid::new_v4()));
    }
    if let Err(e) = fs::rename(path, &dest) {
        tracing::warn!(
            file = %path.display(),
            "cannot move it to `{}`: {e}",
            dest.display()
        );
    }
}

/// The deliveries in `finished.jsonl` (the last [`KEEP_FINISHED`]) and the number of lines
/// left in the file (trimmed when it was longer or had bad lines). Problems are logged, never
/// fatal: the log is only history.
fn load_finished(dir: &Path) -> (Vec<Delivery>, usize) {
    let path = dir.join("finished.jsonl");
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Vec::new(), 0),
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the finished webhook deliveries: {e}");
            return (Vec::new(), 0);
        }
    };
    let mut all = Vec::new();
    let mut lines = 0usize;
    let mut bad = 0usize;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        match serde_json::from_slice::<Delivery>(line) {
            Ok(d) if d.state != DeliveryState::Pending => all.push(d),
            _ => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(file = %path.display(), lines = bad, "skipping unreadable lines");
    }
    let kept: Vec<Delivery> = all.split_off(all.len().saturating_sub(KEEP_FINISHED));
    if bad == 0 && lines <= KEEP_FINISHED {
        return (kept, lines);
    }
    let mut out = Vec::new();
    for d in &kept {
        if let Ok(mut line) = serde_json::to_vec(d) {
            line.push(b'\n');
            out.extend_from_slice(&line);
        }
    }
    match write_atomic(dir, &path, &out) {
        Ok(()) => {
            let n = kept.len();
            (kept, n)
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot trim: {e:#}");
            (kept, lines)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// How the test receiver answers one request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Status(u16),
        /// A status with `Retry-After: <seconds>`.
        RetryAfter(u16, u64),
        /// Reads the request and closes the connection without answering.
        Close,
        /// Reads the request and never answers.
        Hang,
    }

    #[derive(Debug, Clone)]
    struct Received {
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    struct Script {
        queue: VecDeque<Reply>,
        default: Reply,
    }

    /// A minimal HTTP/1.1 receiver on loopback that records what it gets and answers from a
    /// script (then with a default reply).
    struct Receiver {
        url: reqwest::Url,
        received: Arc<Mutex<Vec<Received>>>,
        script: Arc<Mutex<Script>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Receiver {
        async fn start(script: &[Reply], default: Reply) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(Script {
                queue: script.iter().copied().collect(),
                default,
            }));
            let (r, s) = (received.clone(), script.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(sock, r.clone(), s.clone()));
                }
            });
            Receiver {
                url: reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap(),
                received,
                script,
                task,
            }
        }

        fn received(&self) -> Vec<Received> {
            self.received.lock().unwrap().clone()
        }

        fn set_default(&self, reply: Reply) {
            self.script.lock().unwrap().default = reply;
        }
    }

    async fn serve(
        mut sock: TcpStream,
        log: Arc<Mutex<Vec<Received>>>,
        script: Arc<Mutex<Script>>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut headers = HashMap::new();
        for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        let reply = {
            let mut s = script.lock().unwrap();
            s.queue.pop_front().unwrap_or(s.default)
        };
        log.lock().unwrap().push(Received { headers, body });
        let answer = |code: u16, extra: &str| {
            format!(
                "HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
            )
        };
        let text = match reply {
            Reply::Status(code) => answer(code, ""),
            Reply::RetryAfter(code, secs) => answer(code, &format!("retry-after: {secs}\r\n")),
            Reply::Close => return,
            Reply::Hang => {
                // Until the client gives up.
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        };
        let _ = sock.write_all(text.as_bytes()).await;
        let _ = sock.shutdown().await;
    }

    fn config(urls: Vec<reqwest::Url>, max_attempts: u32, backoff: Duration) -> WebhookConfig {
        WebhookConfig {
            urls,
            secret: None,
            max_attempts,
            backoff,
            timeout: Duration::from_secs(10),
        }
    }

    const SHORT: Duration = Duration::from_millis(50);

    /// Polls `f` until it returns something, for at most 20 seconds.
    async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until delivery `id` is finished and returns it.
    async fn finished(w: &Webhooks, id: &str) -> Delivery {
        wait_for(&format!("delivery {id} to finish"), || {
            w.recent(1000)
                .into_iter()
                .find(|d| d.id == id && d.state != DeliveryState::Pending)
        })
        .await
    }

    fn pending_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("pending"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_delivery() {
        let rx = Receiver::start(&[], Reply::Status(204)).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(vec![rx.url.clone()], 3, SHORT);
        cfg.secret = Some("s3cret".to_string());
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let w = Webhooks::start(dir.path(), cfg).await.unwrap();
        assert!(w.enabled());
        let payload = serde_json::json!({"build": "b-1", "ok": true});
        let created = w.enqueue("build.completed", &payload).await.unwrap();
        assert_eq!(created.len(), 1);
        let id = created[0].id.clone();
        assert_eq!(created[0].state, DeliveryState::Pending);
        assert_eq!(created[0].url, rx.url.to_string());
        uuid::Uuid::parse_str(&id).unwrap();

        let d = finished(&w, &id).await;
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_status, Some(204));
        assert_eq!(d.last_error, None);
        assert_eq!(d.next_attempt_at, None);

        let got = rx.received();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.headers["user-agent"],
            format!("memobuild-webhooks/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(r.headers["x-memobuild-event"], "build.completed");
        assert_eq!(r.headers["x-memobuild-delivery"], id);
        let sig = r.headers["x-memobuild-signature-256"]
            .strip_prefix("sha256=")
            .unwrap();
        assert_eq!(sig, sig.to_ascii_lowercase());
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&r.body);
        mac.verify_slice(&hex::decode(sig).unwrap()).unwrap();

        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["event"], "build.completed");
        assert_eq!(body["delivery"], id.as_str());
        assert_eq!(body["created_at"], created[0].created_at.as_str());
        humantime::parse_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
        assert_eq!(body["payload"], payload);
        // Field order as documented.
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"event":"build.completed","delivery":""#),
            "{text}"
        );

        assert_eq!(
            w.counters(),
            WebhookCounters {
                delivered: 1,
                failed: 0,
                failed_attempts: 0
            }
        );
        assert!(
            w.recent(100)
                .iter()
                .all(|d| d.state != DeliveryState::Pending)
        );
        wait_for("the pending file to go", || {
            pending_files(dir.path()).is_empty().then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsigned_without_secret_and_nothing_without_urls() {
        let rx = Receiver::start(&[], Reply::Status(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(vec![rx.url.clone()], 1, SHORT);
        cfg.secret = Some(String::new());
        let w = Webhooks::start(dir.path(), cfg).await.unwrap();
        let id = w
            .enqueue("build.completed", &serde_json::json!(1))
            .await
            .unwrap()[0]
            .id
            .clone();
        assert_eq!(finished(&w, &id).await.state, DeliveryState::Delivered);
        assert!(
            !rx.received()[0]
                .headers
                .contains_key("x-memobuild-signature-256")
        );
        assert!(w.enqueue("bad event", &serde_json::json!(1)).await.is_err());

        let dir = tempfile::tempdir().unwrap();
        let w = Webhooks::start(dir.path(), config(vec![], 3, SHORT))
            .await
            .unwrap();
        assert!(!w.enabled());
        assert!(
            w.enqueue("build.completed", &serde_json::json!({}))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(w.recent(10).is_empty());
        assert!(pending_files(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_until_delivered() {
        let rx = Receiver::start(
            &[Reply::Status(500), Reply::Status(500)],
            Reply::Status(200),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let w = Webhooks::start(dir.path(), config(vec![rx.url.clone()], 5, SHORT))
            .await
            .unwrap();
        let id = w
            .enqueue("build.completed", &serde_json::json!({"n": 1}))
            .await
            .unwrap()[0]
            .id
            .clone();
        let d = finished(&w, &id).await;
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 3);
        assert_eq!(d.last_status, Some(200));
        assert_eq!(
            w.counters(),
            WebhookCounters {
                delivered: 1,
                failed: 0,
                failed_attempts: 2
            }
        );
        // Every attempt sent the same bytes and the same delivery id.
        let got = rx.received();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|r| r.body == got[0].body));
        assert!(got.iter().all(|r| r.headers["x-memobuild-delivery"] == id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gives_up() {
        let always_500 = Receiver::start(&[], Reply::Status(500)).await;
        let not_found = Receiver::start(&[], Reply::Status(404)).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            drop(l);
            reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let urls = vec![
            always_500.url.clone(),
            not_found.url.clone(),
            closed.clone(),
        ];
        let w = Webhooks::start(dir.path(), config(urls, 3, SHORT))
            .await
            .unwrap();
        let created = w
            .enqueue("build.completed", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(created.len(), 3);

        let d = finished(&w, &created[0].id).await;
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.attempts, 3);
        assert_eq!(d.last_status, Some(500));
        assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));

        let d = finished(&w, &created[1].id).await;
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_status, Some(404));
        assert_eq!(d.last_error.as_deref(), Some("HTTP 404"));

        let d = finished(&w, &created[2].id).await;
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.attempts, 3);
        assert_eq!(d.last_status, None);
        let error = d.last_error.unwrap();
        assert!(error.starts_with("connection failed: "), "{error}");

        assert_eq!(always_500.received().len(), 3);
        assert_eq!(not_found.received().len(), 1);
        assert_eq!(
            w.counters(),
            WebhookCounters {
                delivered: 0,
                failed: 3,
                failed_attempts: 7
            }
        );
        wait_for("the pending files to go", || {
            pending_files(dir.path()).is_empty().then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn honours_retry_after_and_times_out() {
        // The backoff alone would wait 5 minutes; `Retry-After: 0` retries at once.
        let busy = Receiver::start(&[Reply::RetryAfter(429, 0)], Reply::Status(200)).await;
        let hang = Receiver::start(&[], Reply::Hang).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            vec![busy.url.clone(), hang.url.clone()],
            2,
            Duration::from_secs(3600),
        );
        cfg.timeout = Duration::from_millis(300);
        let w = Webhooks::start(dir.path(), cfg).await.unwrap();
        let created = w
            .enqueue("build.completed", &serde_json::json!({}))
            .await
            .unwrap();

        let d = finished(&w, &created[0].id).await;
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 2);

        // A timeout is retried like any failure; the hanging receiver is hit once only since
        // the retry waits for the (long) backoff, so check the pending state instead.
        let d = wait_for("the timed-out attempt", || {
            w.recent(10)
                .into_iter()
                .find(|d| d.id == created[1].id && d.attempts == 1)
        })
        .await;
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.last_status, None);
        assert!(
            d.last_error.as_deref().unwrap().starts_with("timed out"),
            "{d:?}"
        );
        assert!(d.next_attempt_at.is_some());
        assert_eq!(pending_files(dir.path()), vec![format!("{}.json", d.id)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_deliveries_survive_a_restart() {
        let rx = Receiver::start(&[], Reply::Close).await;
        let dir = tempfile::tempdir().unwrap();
        let long = config(vec![rx.url.clone()], 5, Duration::from_secs(3600));
        let w = Webhooks::start(dir.path(), long.clone()).await.unwrap();
        let payload = serde_json::json!({"build": 7});
        let id = w.enqueue("build.completed", &payload).await.unwrap()[0]
            .id
            .clone();
        // The first attempt fails and is recorded (on disk first, then in memory).
        let d = wait_for("the first failed attempt", || {
            w.recent(10)
                .into_iter()
                .find(|d| d.id == id && d.attempts == 1)
        })
        .await;
        assert_eq!(d.state, DeliveryState::Pending);
        assert!(d.last_error.is_some());
        drop(w);

        let file = dir.path().join("pending").join(format!("{id}.json"));
        let on_disk: PendingRecord = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(on_disk.delivery.attempts, 1);
        assert_eq!(on_disk.delivery.id, id);

        // The receiver comes back; so does the server.
        rx.set_default(Reply::Status(200));
        let w = Webhooks::start(dir.path(), config(vec![rx.url.clone()], 5, SHORT))
            .await
            .unwrap();
        let d = finished(&w, &id).await;
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 2);
        let got = rx.received();
        let last = got.last().unwrap();
        assert_eq!(last.headers["x-memobuild-delivery"], id);
        assert_eq!(last.body, on_disk.body.as_bytes());
        assert_eq!(w.counters().delivered, 1);
        wait_for("the pending file to go", || (!file.exists()).then_some(())).await;
        drop(w);

        // The finished history survives too, and nothing is sent again.
        let before = rx.received().len();
        let w = Webhooks::start(dir.path(), long).await.unwrap();
        let recent = w.recent(10);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].id, id);
        assert_eq!(recent[0].state, DeliveryState::Delivered);
        assert!(
            w.recent(100)
                .iter()
                .all(|d| d.state != DeliveryState::Pending)
        );
        assert_eq!(rx.received().len(), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_pending_files_are_moved_aside() {
        let rx = Receiver::start(&[], Reply::Status(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let pending = dir.path().join("pending");
        fs::create_dir_all(&pending).unwrap();
        let bad_id = uuid::Uuid::new_v4().to_string();
        fs::write(
            pending.join(format!("{bad_id}.json")),
            b"{\"delivery\": tru",
        )
        .unwrap();
        fs::write(pending.join("notes.txt"), b"hello").unwrap();

        let w = Webhooks::start(dir.path(), config(vec![rx.url.clone()], 3, SHORT))
            .await
            .unwrap();
        assert!(pending_files(dir.path()).is_empty());
        let corrupt = dir.path().join("corrupt");
        assert_eq!(
            fs::read(corrupt.join(format!("{bad_id}.json"))).unwrap(),
            b"{\"delivery\": tru"
        );
        assert!(corrupt.join("notes.txt").exists());
        assert!(w.recent(10).is_empty());

        // The queue still works.
        let id = w
            .enqueue("build.completed", &serde_json::json!({}))
            .await
            .unwrap()[0]
            .id
            .clone();
        assert_eq!(finished(&w, &id).await.state, DeliveryState::Delivered);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_is_newest_first_and_bounded() {
        let rx = Receiver::start(&[], Reply::Status(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let w = Webhooks::start(dir.path(), config(vec![rx.url.clone()], 1, SHORT))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                w.enqueue("build.completed", &serde_json::json!(i))
                    .await
                    .unwrap()[0]
                    .id
                    .clone(),
            );
        }
        for id in &ids {
            finished(&w, id).await;
        }
        let recent: Vec<String> = w.recent(3).into_iter().map(|d| d.id).collect();
        assert_eq!(recent, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(10);
        assert_eq!(retry_delay(b, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(b, 2), Duration::from_secs(20));
        assert_eq!(retry_delay(b, 3), Duration::from_secs(40));
        assert_eq!(retry_delay(b, 6), MAX_BACKOFF);
        assert_eq!(retry_delay(b, 100), MAX_BACKOFF);
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let u = reqwest::Url::parse("https://bot:hunter2@example.com/hook?token=abc#x").unwrap();
        let shown = display_url(&u);
        assert!(
            !shown.contains("hunter2") && !shown.contains("abc"),
            "{shown}"
        );
        assert!(
            shown.starts_with("https://bot:redacted@example.com/hook"),
            "{shown}"
        );
    }

    #[test]
    fn finished_log_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let mut text = String::new();
        for i in 0..(KEEP_FINISHED + 10) {
            let d = Delivery {
                id: format!("id-{i}"),
                event: "e".into(),
                url: "http://x/".into(),
                created_at: "2025-01-01T00:00:00Z".into(),
                attempts: 1,
                state: DeliveryState::Delivered,
                last_status: Some(200),
                last_error: None,
                next_attempt_at: None,
            };
            text.push_str(&serde_json::to_string(&d).unwrap());
            text.push('\n');
        }
        text.push_str("garbage\n");
        fs::write(dir.path().join("finished.jsonl"), text).unwrap();
        let (kept, lines) = load_finished(dir.path());
        assert_eq!(kept.len(), KEEP_FINISHED);
        assert_eq!(lines, KEEP_FINISHED);
        assert_eq!(kept[0].id, "id-10");
        let after = fs::read_to_string(dir.path().join("finished.jsonl")).unwrap();
        assert_eq!(after.lines().count(), KEEP_FINISHED);
    }
}
