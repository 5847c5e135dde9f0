//! Tests of webhook deliveries: real HTTP on loopback against scripted receivers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::sync::atomic::AtomicUsize;
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
    /// Waits that many milliseconds, then answers with the status.
    Slow(u16, u64),
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
    busy: Arc<Busy>,
    task: tokio::task::JoinHandle<()>,
}

/// Requests being worked on by a receiver (read, not answered yet), now and at most.
#[derive(Default)]
struct Busy {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// Counts one request as being worked on while it lives.
struct BusyGuard(Arc<Busy>);

impl BusyGuard {
    fn new(busy: &Arc<Busy>) -> BusyGuard {
        let now = busy.now.fetch_add(1, Ordering::SeqCst) + 1;
        busy.max.fetch_max(now, Ordering::SeqCst);
        BusyGuard(busy.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
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
        let busy = Arc::new(Busy::default());
        let (r, s, b) = (received.clone(), script.clone(), busy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(sock, r.clone(), s.clone(), b.clone()));
            }
        });
        Receiver {
            url: reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap(),
            received,
            script,
            busy,
            task,
        }
    }

    /// The most requests it worked on at once.
    fn max_busy(&self) -> usize {
        self.busy.max.load(Ordering::SeqCst)
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
    busy: Arc<Busy>,
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
    // Dropped before answering, so that a client which got its answer is never counted.
    let guard = BusyGuard::new(&busy);
    log.lock().unwrap().push(Received { headers, body });
    let answer = |code: u16, extra: &str| {
        format!("HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n")
    };
    let text = match reply {
        Reply::Status(code) => answer(code, ""),
        Reply::Slow(code, ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer(code, "")
        }
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
    drop(guard);
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

/// An address that refuses connections for as long as the returned socket lives: the port
/// is bound (so nobody else can take it) but never listened on (so the kernel refuses every
/// connection to it).
fn refusing() -> (tokio::net::TcpSocket, reqwest::Url) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let url = reqwest::Url::parse(&format!("http://{addr}/hook")).unwrap();
    (socket, url)
}

/// The ids of the pending deliveries `w` shows.
fn pending_ids(w: &Webhooks) -> HashSet<String> {
    w.recent(usize::MAX)
        .into_iter()
        .filter(|d| d.state == DeliveryState::Pending)
        .map(|d| d.id)
        .collect()
}

/// The ids in `finished.jsonl`.
fn logged_ids(dir: &Path) -> HashSet<String> {
    fs::read_to_string(dir.join("finished.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Delivery>(l).unwrap().id)
        .collect()
}

/// Writes a pending delivery to `url` as an earlier run would have left it.
fn write_pending(dir: &Path, url: &reqwest::Url, created_at: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let record = PendingRecord {
        delivery: Delivery {
            id: id.clone(),
            event: "build.completed".into(),
            url: display_url(url),
            created_at: created_at.into(),
            attempts: 0,
            state: DeliveryState::Pending,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(created_at.into()),
        },
        target: url.to_string(),
        body: format!(r#"{{"event":"build.completed","delivery":"{id}"}}"#),
        queued_at_ns: None,
    };
    fs::create_dir_all(dir.join("pending")).unwrap();
    fs::write(pending_path(dir, &id), serde_json::to_vec(&record).unwrap()).unwrap();
    id
}

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
    let (_refusing, closed) = refusing();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_url_does_not_delay_the_others() {
    // Accepts and never answers: each attempt to it lasts the whole (long) timeout.
    let stuck = Receiver::start(&[], Reply::Hang).await;
    let healthy = Receiver::start(&[], Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(vec![stuck.url.clone(), healthy.url.clone()], 3, SHORT);
    cfg.timeout = Duration::from_secs(600);
    let w = Webhooks::start(dir.path(), cfg).await.unwrap();
    // More events than there are slots for the stuck URL, several times over.
    let mut stuck_ids = Vec::new();
    let mut healthy_ids = Vec::new();
    for i in 0..(4 * MAX_IN_FLIGHT_PER_URL) {
        let created = w
            .enqueue("build.completed", &serde_json::json!(i))
            .await
            .unwrap();
        stuck_ids.push(created[0].id.clone());
        healthy_ids.push(created[1].id.clone());
    }
    for id in &healthy_ids {
        let d = finished(&w, id).await;
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 1);
    }
    assert_eq!(healthy.received().len(), healthy_ids.len());

    // The stuck URL holds its own slots, and no more.
    wait_for("the stuck attempts", || {
        (stuck.received().len() == MAX_IN_FLIGHT_PER_URL).then_some(())
    })
    .await;
    let pending = pending_ids(&w);
    assert!(stuck_ids.iter().all(|id| pending.contains(id)));
    assert_eq!(stuck.received().len(), MAX_IN_FLIGHT_PER_URL);
    assert_eq!(w.counters().delivered, healthy_ids.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_send_everything_at_once() {
    let slow = Receiver::start(&[], Reply::Slow(200, 20)).await;
    let stuck = Receiver::start(&[], Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let created_at = rfc3339(SystemTime::now());
    let n = 40;
    let mut slow_ids = Vec::new();
    let mut stuck_ids = Vec::new();
    for _ in 0..n {
        slow_ids.push(write_pending(dir.path(), &slow.url, &created_at));
        stuck_ids.push(write_pending(dir.path(), &stuck.url, &created_at));
    }
    let mut cfg = config(vec![slow.url.clone(), stuck.url.clone()], 3, SHORT);
    cfg.timeout = Duration::from_secs(600);
    let w = Webhooks::start(dir.path(), cfg).await.unwrap();

    for id in &slow_ids {
        assert_eq!(finished(&w, id).await.state, DeliveryState::Delivered);
    }
    assert_eq!(slow.received().len(), n);
    assert!(
        slow.max_busy() <= MAX_IN_FLIGHT_PER_URL,
        "{} requests at once",
        slow.max_busy()
    );
    wait_for("the stuck attempts", || {
        (stuck.received().len() == MAX_IN_FLIGHT_PER_URL).then_some(())
    })
    .await;
    let pending = pending_ids(&w);
    assert!(stuck_ids.iter().all(|id| pending.contains(id)));
    assert_eq!(stuck.received().len(), MAX_IN_FLIGHT_PER_URL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_pending_deliveries_are_dropped() {
    let (_refusing, url) = refusing();
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        in_flight_per_url: MAX_IN_FLIGHT_PER_URL,
        max_pending: 3,
    };
    // Every attempt fails at once, then waits an hour.
    let cfg = config(vec![url.clone()], 5, Duration::from_secs(3600));
    let w = Webhooks::start_with(dir.path(), cfg.clone(), limits)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = w
            .enqueue("build.completed", &serde_json::json!(i))
            .await
            .unwrap();
        ids.push(created[0].id.clone());
        assert!(pending_ids(&w).len() <= 3);
    }
    let newest: HashSet<String> = ids[2..].iter().cloned().collect();
    assert_eq!(pending_ids(&w), newest);
    // Failed for good and counted before `enqueue` returned.
    assert_eq!(w.counters().failed, 2);
    assert_eq!(w.counters().delivered, 0);
    for id in &ids[..2] {
        let d = finished(&w, id).await;
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.last_error.as_deref(), Some(DROPPED_ERROR));
        assert_eq!(d.next_attempt_at, None);
    }
    // Their tasks then clean up: the finished log has them, their pending files are gone.
    let mut expected: Vec<String> = ids[2..].iter().map(|id| format!("{id}.json")).collect();
    expected.sort();
    wait_for("the dropped pending files to go", || {
        (pending_files(dir.path()) == expected).then_some(())
    })
    .await;
    let oldest: HashSet<String> = ids[..2].iter().cloned().collect();
    wait_for("the dropped deliveries to be logged", || {
        (logged_ids(dir.path()) == oldest).then_some(())
    })
    .await;
    drop(w);

    // A restart with a lower bound drops the oldest of those left.
    let limits = Limits {
        max_pending: 2,
        ..limits
    };
    let w = Webhooks::start_with(dir.path(), cfg, limits).await.unwrap();
    let newest: HashSet<String> = ids[3..].iter().cloned().collect();
    assert_eq!(pending_ids(&w), newest);
    let d = finished(&w, &ids[2]).await;
    assert_eq!(d.last_error.as_deref(), Some(DROPPED_ERROR));
    assert_eq!(w.counters().failed, 1);
    let mut expected: Vec<String> = ids[3..].iter().map(|id| format!("{id}.json")).collect();
    expected.sort();
    wait_for("the dropped pending file to go", || {
        (pending_files(dir.path()) == expected).then_some(())
    })
    .await;
    wait_for("the dropped delivery to be logged", || {
        logged_ids(dir.path()).contains(&ids[2]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_delivery_in_flight_frees_its_slot() {
    let stuck = Receiver::start(&[], Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        in_flight_per_url: 1,
        max_pending: 2,
    };
    let mut cfg = config(vec![stuck.url.clone()], 3, SHORT);
    cfg.timeout = Duration::from_secs(600);
    let w = Webhooks::start_with(dir.path(), cfg, limits).await.unwrap();
    let enqueue = async || {
        w.enqueue("build.completed", &serde_json::json!({}))
            .await
            .unwrap()[0]
            .id
            .clone()
    };
    let a = enqueue().await;
    wait_for("the first attempt", || {
        (stuck.received().len() == 1).then_some(())
    })
    .await;
    // Waits for the only slot.
    let b = enqueue().await;
    // Drops `a`, whose attempt is abandoned: `b` gets the slot.
    let c = enqueue().await;
    let d = finished(&w, &a).await;
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.last_error.as_deref(), Some(DROPPED_ERROR));
    let got = wait_for("the second attempt", || {
        let got = stuck.received();
        (got.len() == 2).then_some(got)
    })
    .await;
    assert_eq!(got[1].headers["x-memobuild-delivery"], b);
    assert_eq!(pending_ids(&w), HashSet::from([b.clone(), c.clone()]));
    let mut expected = vec![format!("{b}.json"), format!("{c}.json")];
    expected.sort();
    wait_for("the dropped pending file to go", || {
        (pending_files(dir.path()) == expected).then_some(())
    })
    .await;
    assert_eq!(
        w.counters(),
        WebhookCounters {
            delivered: 0,
            failed: 1,
            failed_attempts: 0
        }
    );
}

/// Collects what the tracing subscriber writes.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// On one thread, so that the tasks log to the subscriber this test sets.
#[tokio::test(flavor = "current_thread")]
async fn logs_show_only_origins() {
    let capture = Capture(Arc::new(Mutex::new(Vec::new())));
    let writer = capture.clone();
    let module = module_path!().trim_end_matches("::tests");
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{module}=trace"
        )))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Whether a log line is enabled is cached per call site, for all threads. While there
    // is a single subscriber, a call site first hit on another thread (another test, with
    // none) is cached as disabled; with two, all of them are asked. Hence this second,
    // idle one, made first. Call sites being registered while the subscribers are set can
    // still be cached wrong: `settle` recomputes the cache once everything has settled.
    let _idle = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    let settle = tracing::callsite::rebuild_interest_cache;

    // Chat-style hooks: the path is the secret.
    let secret = |url: &reqwest::Url| {
        let mut url = url.clone();
        url.set_path("/services/T0001/B0001/SeCrEtPaTh");
        url.set_query(Some("token=QuErYsEcReT"));
        url.set_username("bot").unwrap();
        url.set_password(Some("PaSsWoRd")).unwrap();
        url
    };
    let retried = Receiver::start(&[Reply::Status(500)], Reply::Status(200)).await;
    let rejected = Receiver::start(&[], Reply::Status(404)).await;
    let (_refusing, closed) = refusing();
    let urls = vec![secret(&retried.url), secret(&rejected.url), secret(&closed)];
    let cfg = config(urls.clone(), 2, SHORT);
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("SeCrEtPaTh") && !shown.contains("services"),
        "{shown}"
    );
    let dir = tempfile::tempdir().unwrap();
    let w = Webhooks::start(dir.path(), cfg.clone()).await.unwrap();
    settle();
    tracing::info!("{w:?}");
    let created = w
        .enqueue("build.completed", &serde_json::json!({}))
        .await
        .unwrap();
    for d in &created {
        finished(&w, &d.id).await;
        // The API value keeps the path.
        assert!(d.url.contains("SeCrEtPaTh"), "{}", d.url);
    }
    drop(w);

    // Drops.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        in_flight_per_url: 1,
        max_pending: 1,
    };
    let mut cfg = config(vec![secret(&closed)], 2, Duration::from_secs(3600));
    let w = Webhooks::start_with(dir.path(), cfg.clone(), limits)
        .await
        .unwrap();
    settle();
    for _ in 0..2 {
        w.enqueue("build.completed", &serde_json::json!({}))
            .await
            .unwrap();
    }
    assert_eq!(w.counters().failed, 1);
    drop(w);

    // Errors.
    cfg.urls = vec![reqwest::Url::parse("ftp://bot:PaSsWoRd@example.com/SeCrEtPaTh").unwrap()];
    let e = Webhooks::start(dir.path(), cfg).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("ftp://example.com") && !e.contains("SeCrEtPaTh"),
        "{e}"
    );

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "will retry",
        "webhook delivered",
        "not retrying",
        "no attempts left",
        "failed for good",
        "too many pending deliveries",
        "WebhookConfig",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    for url in &urls {
        assert!(text.contains(&log_url(url)), "no {url} in:\n{text}");
    }
    for secret in ["SeCrEtPaTh", "services", "QuErYsEcReT", "PaSsWoRd", "/hook"] {
        assert!(!text.contains(secret), "{secret:?} in:\n{text}");
    }
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

    let slack = reqwest::Url::parse(
        "https://bot:hunter2@hooks.example.com:8443/services/T0/B0/XXXX?token=abc#x",
    )
    .unwrap();
    assert_eq!(log_url(&slack), "https://hooks.example.com:8443");
    let u = reqwest::Url::parse("https://hooks.example.com:443/services/T0/B0/XXXX").unwrap();
    assert_eq!(log_url(&u), "https://hooks.example.com");
    let u = reqwest::Url::parse("http://[::1]:8080/x").unwrap();
    assert_eq!(log_url(&u), "http://[::1]:8080");
    let cfg = WebhookConfig {
        urls: vec![slack],
        secret: Some("s3cret".into()),
        max_attempts: 1,
        backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    let shown = format!("{cfg:?}");
    for secret in ["hunter2", "services", "XXXX", "abc", "s3cret", "bot"] {
        assert!(!shown.contains(secret), "{secret:?} in {shown}");
    }
    assert!(shown.contains("https://hooks.example.com:8443"), "{shown}");
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
