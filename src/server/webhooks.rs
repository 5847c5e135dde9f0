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
//! delivery fails for good.
//!
//! # Limits
//!
//! - Attempts run in background tasks, at most [`MAX_IN_FLIGHT_PER_URL`] at once *per target
//!   URL*, given out first come, first served. An attempt can last the whole timeout (a
//!   blackholed endpoint), but it only delays deliveries to its own URL: there is no slot shared
//!   between URLs. Waiting between attempts holds no slot.
//! - At most [`MAX_PENDING`] deliveries are pending at once, over all URLs (a receiver that is
//!   down for long would otherwise grow the queue, and the pending files, without limit). Queuing
//!   one more fails the *oldest* pending delivery for good, so that the newest events win: its
//!   state becomes failed with the error `dropped: too many pending deliveries`, it counts in
//!   `failed`, and a warning is logged, all before [`Webhooks::enqueue`] returns; an attempt of it
//!   in flight is abandoned (the receiver may have got it all the same). Its task then appends it to `finished.jsonl` and removes its pending
//!   file; should the server stop before that, the delivery is pending again after the restart
//!   (where the bound applies again).
//!
//! # Logs
//!
//! A hook URL's path and query are often its secret (chat hooks such as
//! `https://hooks.slack.com/services/T…/B…/<secret>`), so logs and the `Debug` output of
//! [`WebhookConfig`] show only a URL's origin, `scheme://host[:port]`. The [`Delivery`] state
//! shown by the API (to token holders) keeps the path but hides the password and query string.
//!
//! # On disk
//!
//! Under the directory given to [`Webhooks::start`] (e.g. `STORE/webhooks`):
//!
//! - `pending/<id>.json`: one file per delivery not finished yet: its [`Delivery`] state, the
//!   target URL and the body. Written before [`Webhooks::enqueue`] returns and rewritten after
//!   each failed attempt, always through a temporary file in `tmp/` that is fsynced and renamed
//!   into place. On start every file here is queued again, oldest first, keeping its attempt
//!   count, and is due at once (a restart is a retry point); the attempts still go through the
//!   per-URL limit, so a restart with thousands pending opens at most
//!   [`MAX_IN_FLIGHT_PER_URL`] connections per URL, and beyond [`MAX_PENDING`] the oldest are
//!   dropped as above.
//! - `finished.jsonl`: the last finished deliveries (delivered or failed for good), one
//!   [`Delivery`] per line, oldest first, trimmed to the last [`KEEP_FINISHED`] now and then.
//!   It feeds [`Webhooks::recent`] after a restart.
//! - `tmp/`: temporary files; leftovers older than an hour are removed on start.
//! - `corrupt/`: pending files that could not be read on start, moved aside (with a warning)
//!   for a human to look at.
//!
//! Pending files hold the full URL (which may carry credentials) and are created mode 0600.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest wait between two attempts, whatever the backoff or `Retry-After` say.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How many finished deliveries are kept (in memory and in `finished.jsonl`).
pub const KEEP_FINISHED: usize = 200;
/// Attempts in flight at once to one target URL. There is no limit over all URLs: one URL's
/// slow attempts never delay another's.
pub const MAX_IN_FLIGHT_PER_URL: usize = 2;
/// Deliveries pending at once, over all URLs; queuing one more fails the oldest for good.
pub const MAX_PENDING: usize = 10_000;
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
/// The `last_error` of a delivery dropped to honour [`MAX_PENDING`].
const DROPPED_ERROR: &str = "dropped: too many pending deliveries";

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

// By hand, so that the secret (and secrets in URLs: credentials, paths, queries) never reach a
// log.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls.iter().map(log_url).collect::<Vec<_>>())
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; more attempts will be made.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: attempts exhausted, an answer that retrying cannot fix, or dropped because too
    /// many deliveries were pending.
    Failed,
}

/// One delivery's state, as `GET /api/webhooks/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// uuid v4, also sent as `X-MemoBuild-Delivery`.
    pub id: String,
    /// e.g. `build.completed`.
    pub event: String,
    /// The target, with any password and query string hidden (the path is kept: never log it).
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
    /// Deliveries given up for good (dropped ones included).
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
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// The queue's bounds: [`MAX_IN_FLIGHT_PER_URL`] and [`MAX_PENDING`], smaller in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    in_flight_per_url: usize,
    max_pending: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            in_flight_per_url: MAX_IN_FLIGHT_PER_URL,
            max_pending: MAX_PENDING,
        }
    }
}

/// What the delivery tasks share with [`Webhooks`].
struct Shared {
    dir: PathBuf,
    config: WebhookConfig,
    limits: Limits,
    client: reqwest::Client,
    /// The keyed HMAC, cloned for each signature.
    mac: Option<Hmac<Sha256>>,
    /// Bounds the attempts in flight, one semaphore per target URL (the full URL as persisted).
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    state: Mutex<State>,
    /// Lines in `finished.jsonl`; the lock also serializes writes to it.
    finished_log: tokio::sync::Mutex<usize>,
    delivered: AtomicU64,
    failed: AtomicU64,
    failed_attempts: AtomicU64,
}

/// The deliveries `recent` shows. Each carries a sequence number giving creation order within
/// one run (deliveries re-queued on start are numbered oldest first), to order deliveries
/// created in the same second and to find the oldest pending one.
#[derive(Default)]
struct State {
    next_seq: u64,
    pending: HashMap<String, PendingEntry>,
    /// The pending deliveries that can still be dropped (all but those their task is
    /// finishing), by sequence number: oldest first. Its length is what [`MAX_PENDING`] bounds.
    droppable: BTreeMap<u64, String>,
    finished: VecDeque<(u64, Delivery)>,
}

/// A pending delivery in memory.
struct PendingEntry {
    seq: u64,
    /// As last recorded by its task.
    delivery: Delivery,
    /// The target's origin, for logs.
    origin: String,
    /// Cancelled when the delivery is dropped; its task then stops and cleans up.
    cancel: CancellationToken,
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
    /// When it was queued, in nanoseconds since the Unix epoch: orders the deliveries created
    /// in the same second when they are queued again on start (the oldest are dropped first).
    /// Absent from files written by earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queued_at_ns: Option<u64>,
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
        Webhooks::start_with(dir, config, Limits::default()).await
    }

    /// [`Webhooks::start`] with the given bounds.
    async fn start_with(
        dir: &Path,
        config: WebhookConfig,
        limits: Limits,
    ) -> anyhow::Result<Arc<Webhooks>> {
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
                    log_url(url)
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
        let client = memobuild_worker::tls::client_builder()
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
            limits,
            client,
            mac,
            slots: Mutex::new(HashMap::new()),
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

        // Oldest first (as loaded): they get the lowest sequence numbers, so they are the first
        // dropped if there are too many, and they queue for their URL's slots in that order.
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
    /// nothing. Returns the deliveries created. When this makes more than [`MAX_PENDING`]
    /// deliveries pending, the oldest pending ones are failed for good (see the module doc).
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
        let now = SystemTime::now();
        let created_at = rfc3339(now);
        let queued_at_ns = now
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
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
                queued_at_ns,
            };
            match self.shared.persist(&record).await {
                Ok(()) => {
                    created.push(record.delivery.clone());
                    self.schedule(record, url.clone());
                }
                Err(e) => {
                    let e = e.context(format!(
                        "cannot queue the webhook delivery to `{}`",
                        log_url(url)
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
        let mut all: Vec<(u64, &Delivery)> = state
            .pending
            .values()
            .map(|e| (e.seq, &e.delivery))
            .chain(state.finished.iter().map(|(seq, d)| (*seq, d)))
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

    /// Records `record` as pending, dropping the oldest pending deliveries if there are too
    /// many, and starts its delivery task.
    fn schedule(&self, record: PendingRecord, target: reqwest::Url) {
        let cancel = CancellationToken::new();
        let origin = log_url(&target);
        let (seq, dropped) = {
            let mut state = self.shared.lock();
            let dropped = state.make_room(self.shared.limits.max_pending);
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.insert(
                record.delivery.id.clone(),
                PendingEntry {
                    seq,
                    delivery: record.delivery.clone(),
                    origin: origin.clone(),
                    cancel: cancel.clone(),
                },
            );
            state.droppable.insert(seq, record.delivery.id.clone());
            (seq, dropped)
        };
        for (d, origin) in dropped {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                delivery = %d.id,
                event = %d.event,
                url = %origin,
                attempts = d.attempts,
                created_at = %d.created_at,
                max_pending = self.shared.limits.max_pending,
                "webhook delivery dropped: too many pending deliveries"
            );
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::warn!("a webhook delivery task failed: {e}");
            }
        }
        tasks.spawn(deliver(
            self.shared.clone(),
            seq,
            record,
            target,
            origin,
            cancel,
        ));
    }
}

impl State {
    /// Fails the oldest droppable pending deliveries for good until fewer than `max` are
    /// pending, and cancels their tasks (which then clean up their files). Returns them, with
    /// their origins, for counting and logging.
    fn make_room(&mut self, max: usize) -> Vec<(Delivery, String)> {
        let mut dropped = Vec::new();
        while self.droppable.len() >= max {
            let Some((seq, id)) = self.droppable.pop_first() else {
                break;
            };
            let Some(entry) = self.pending.remove(&id) else {
                continue;
            };
            entry.cancel.cancel();
            let mut d = entry.delivery;
            mark_dropped(&mut d);
            self.push_finished(seq, d.clone());
            dropped.push((d, entry.origin));
        }
        dropped
    }

    fn push_finished(&mut self, seq: u64, delivery: Delivery) {
        self.finished.push_back((seq, delivery));
        while self.finished.len() > KEEP_FINISHED {
            self.finished.pop_front();
        }
    }
}

/// What waiting for a slot and making an attempt came to.
enum Step {
    Attempted(Outcome),
    /// The delivery was dropped meanwhile.
    Dropped,
}

/// Makes attempts until `record` is delivered, failed for good or dropped.
async fn deliver(
    shared: Arc<Shared>,
    seq: u64,
    mut record: PendingRecord,
    target: reqwest::Url,
    origin: String,
    cancel: CancellationToken,
) {
    let max = shared.config.max_attempts.max(1);
    let slots = shared.slots_for(&target);
    loop {
        let d = &mut record.delivery;
        if d.attempts >= max {
            // Only a delivery queued again on start gets here (fewer attempts configured now,
            // or a stop between its last attempt and its bookkeeping).
            d.state = DeliveryState::Failed;
            d.next_attempt_at = None;
            d.last_error
                .get_or_insert_with(|| "no attempts left".to_string());
            shared.finish(seq, record.delivery, &origin).await;
            return;
        }
        // Dropping the attempt when the delivery is dropped frees its slot at once.
        let step = tokio::select! {
            biased;
            () = cancel.cancelled() => Step::Dropped,
            outcome = async {
                // The semaphore is never closed.
                let _slot = slots.acquire().await;
                shared.attempt(&target, &record).await
            } => Step::Attempted(outcome),
        };
        let outcome = match step {
            Step::Attempted(outcome) => outcome,
            Step::Dropped => {
                shared.finish_dropped(record.delivery).await;
                return;
            }
        };
        let d = &mut record.delivery;
        d.attempts += 1;
        match outcome {
            Outcome::Delivered { status } => {
                tracing::debug!(delivery = %d.id, url = %origin, attempt = d.attempts, status, "webhook attempt delivered");
                d.state = DeliveryState::Delivered;
                d.last_status = Some(status);
                d.last_error = None;
                d.next_attempt_at = None;
                shared.finish(seq, record.delivery, &origin).await;
                return;
            }
            Outcome::GiveUp { status, error } => {
                tracing::debug!(delivery = %d.id, url = %origin, attempt = d.attempts, "webhook attempt failed, not retrying: {error}");
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                d.state = DeliveryState::Failed;
                d.last_status = status;
                d.last_error = Some(error);
                d.next_attempt_at = None;
                shared.finish(seq, record.delivery, &origin).await;
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
                    tracing::debug!(delivery = %d.id, url = %origin, attempt = d.attempts, "webhook attempt failed, no attempts left: {error}");
                    d.last_error = Some(error);
                    d.state = DeliveryState::Failed;
                    d.next_attempt_at = None;
                    shared.finish(seq, record.delivery, &origin).await;
                    return;
                }
                let delay = retry_after
                    .map(|r| r.min(MAX_BACKOFF))
                    .unwrap_or_else(|| retry_delay(shared.config.backoff, d.attempts));
                tracing::debug!(
                    delivery = %d.id,
                    url = %origin,
                    attempt = d.attempts,
                    retry_in = %humantime::format_duration(delay),
                    "webhook attempt failed, will retry: {error}"
                );
                d.last_error = Some(error);
                d.next_attempt_at = Some(rfc3339(SystemTime::now() + delay));
                // Not cancelled halfway: a drop meanwhile is seen below, after the write, so
                // the file removal comes after it.
                if let Err(e) = shared.persist(&record).await {
                    tracing::warn!("{e:#}");
                }
                shared.update_pending(&record.delivery);
                let dropped = tokio::select! {
                    biased;
                    () = cancel.cancelled() => true,
                    () = tokio::time::sleep(delay) => false,
                };
                if dropped {
                    shared.finish_dropped(record.delivery).await;
                    return;
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The semaphore bounding the attempts in flight to `target`.
    fn slots_for(&self, target: &reqwest::Url) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .entry(target.as_str().to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.in_flight_per_url.max(1))))
            .clone()
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
            Err(e) => return classify_error(e, self.config.timeout),
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
            entry.delivery = delivery.clone();
        }
    }

    /// Marks a pending delivery as being finished by its task, so that it can no longer be
    /// dropped. False if it was dropped already.
    fn claim(&self, id: &str) -> bool {
        let mut state = self.lock();
        let State {
            pending, droppable, ..
        } = &mut *state;
        match pending.get(id) {
            Some(entry) => {
                droppable.remove(&entry.seq);
                true
            }
            None => false,
        }
    }

    /// Records a delivery that is delivered or failed for good: counters, log, finished log,
    /// pending file removed, and last the state `recent` shows. If it was dropped meanwhile,
    /// the drop stands (it is counted and shown already) and only its files are cleaned up.
    async fn finish(&self, seq: u64, delivery: Delivery, origin: &str) {
        if !self.claim(&delivery.id) {
            self.finish_dropped(delivery).await;
            return;
        }
        if delivery.state == DeliveryState::Delivered {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                delivery = %delivery.id,
                event = %delivery.event,
                url = %origin,
                attempts = delivery.attempts,
                status = ?delivery.last_status,
                "webhook delivered"
            );
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                delivery = %delivery.id,
                event = %delivery.event,
                url = %origin,
                attempts = delivery.attempts,
                status = ?delivery.last_status,
                error = delivery.last_error.as_deref().unwrap_or(""),
                "webhook delivery failed for good"
            );
        }
        self.record_finished(&delivery).await;
        let mut state = self.lock();
        state.pending.remove(&delivery.id);
        state.push_finished(seq, delivery);
    }

    /// The task's part of a drop (the rest was done by [`State::make_room`]): the finished log
    /// and the pending file. Also refreshes the state `recent` shows with the task's own
    /// record, which may count one more attempt.
    async fn finish_dropped(&self, delivery: Delivery) {
        let mut delivery = delivery;
        mark_dropped(&mut delivery);
        self.record_finished(&delivery).await;
        let mut state = self.lock();
        if let Some(entry) = state.finished.iter_mut().find(|(_, d)| d.id == delivery.id) {
            entry.1 = delivery;
        }
    }

    /// Appends a finished delivery to the finished log, then removes its pending file.
    async fn record_finished(&self, delivery: &Delivery) {
        if let Err(e) = self.log_finished(delivery).await {
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
            crate::server::store::sync_dir(&pending_dir);
            Ok(())
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!("cannot remove `{}`: {e:#}", path.display());
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

/// A delivery failed for good to honour [`MAX_PENDING`].
fn mark_dropped(d: &mut Delivery) {
    d.state = DeliveryState::Failed;
    d.last_error = Some(DROPPED_ERROR.to_string());
    d.next_attempt_at = None;
}

/// How a request that got no answer ended.
fn classify_error(e: reqwest::Error, timeout: Duration) -> Outcome {
    // Never the URL (its path may be a secret, and the error ends up in logs).
    let e = e.without_url();
    // The innermost cause says what happened (`Connection refused (os error 111)`).
    let mut cause: &dyn std::error::Error = &e;
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

/// `url` for the API ([`Delivery::url`]): password and query string hidden, the path kept.
/// Never for logs: see [`log_url`].
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

/// `url` for logs, errors and `Debug`: its origin only, `scheme://host[:port]` (no
/// credentials, path, query or fragment; the port only when not the scheme's default).
fn log_url(url: &reqwest::Url) -> String {
    match url.host_str() {
        Some(host) => match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        },
        None => format!("{}:", url.scheme()),
    }
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

/// Writes `bytes` to `dest` through a fsynced temporary file in `dir/tmp/`.
fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp_dir = dir.join("tmp");
    let mut tmp = tempfile::Builder::new()
        .prefix("write-")
        .suffix(".tmp")
        .tempfile_in(&tmp_dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", tmp_dir.display()))?;
    tmp.write_all(bytes)?;
    crate::server::store::persist_durably(tmp, dest)?;
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
    // Oldest first, so that they are retried in order (and dropped in order if too many).
    pending.sort_by(|a, b| {
        (&a.delivery.created_at, a.queued_at_ns).cmp(&(&b.delivery.created_at, b.queued_at_ns))
    });
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
mod tests;
