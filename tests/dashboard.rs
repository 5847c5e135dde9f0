//! The team server's dashboard in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver). A server holding 10,000 builds (imported from a JSON-lines store,
//! as an upgraded server would hold them) shows its recent builds, the hit rate over time, the
//! slowest steps and why they ran; a build reported while the page is open appears without a
//! reload. The screenshot is kept as a test artefact (`target/tmp/dashboard.png`).

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use fantoccini::{ClientBuilder, Locator};

const TOKEN: &str = "dash-token";
const BUILDS: usize = 10_000;

/// A chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Option<Driver> {
        if !std::path::Path::new("/usr/bin/chromedriver").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromedriver missing under CI: hack/setup.sh installs chromium-driver"
            );
            eprintln!("SKIPPED: /usr/bin/chromedriver missing (hack/setup.sh installs it)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Build `i` of the seeded history: three projects, a day apart each 400 builds, the hit rate
/// growing over time, one step that runs whenever `src/` changes.
fn seeded(i: usize) -> serde_json::Value {
    let day = 1 + i / 400;
    let cached_copy = !i.is_multiple_of(4);
    let cached_make = cached_copy && i.is_multiple_of(2);
    let at = format!(
        "2026-{:02}-{:02}T{:02}:{:02}:00Z",
        10 + day / 29,
        1 + day % 28,
        (i / 60) % 24,
        i % 60
    );
    let project = ["shop", "api", "web"][i % 3];
    serde_json::json!({
        "id": format!("seed-{i:05}"),
        "project": project,
        "host": "ci-runner",
        "started_at": at,
        "received_at": at,
        "duration_ms": 20_000 + (i % 97) * 100,
        "status": if i % 50 == 49 { "failed" } else { "succeeded" },
        "error": (i % 50 == 49).then_some("RUN make test: exit code 2"),
        "image": (i % 50 != 49).then(|| format!("sha256:{i:064x}")),
        "vertices": [
            {"name": "[1/3] FROM busybox", "digest": "sha256:aa", "cached": true, "duration_ms": 3},
            {"name": "[2/3] COPY src/ /app/src/", "digest": "sha256:bb", "cached": cached_copy, "duration_ms": 120},
            {"name": "[3/3] RUN make", "digest": "sha256:cc", "cached": cached_make,
             "duration_ms": 15_000,
             "reason": (!cached_make).then_some("file `src/main.c` changed")}
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_builds_and_updates_live_in_chromium() {
    let Some(driver) = Driver::start() else {
        return;
    };
    // 10,000 builds in the JSON-lines store of an earlier version: imported at start.
    let store = tempfile::tempdir().expect("store");
    let builds = store.path().join("builds");
    std::fs::create_dir_all(&builds).expect("mkdir");
    let mut log = std::fs::File::create(builds.join("builds.jsonl")).expect("log");
    for i in 0..BUILDS {
        writeln!(log, "{}", seeded(i)).expect("write");
    }
    drop(log);
    let server = Server::start(store.path(), &["--token", TOKEN]);

    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2200"]
        }
    }))
    .expect("capabilities");
    let browser = ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let page = format!("http://{}/", server.addr);
    let opened = Instant::now();
    browser.goto(&page).await.expect("open the dashboard");
    eprintln!(
        "dashboard over {BUILDS} builds loaded in {:?}",
        opened.elapsed()
    );

    let text = |sel: &'static str| {
        let browser = browser.clone();
        async move {
            browser
                .find(Locator::Css(sel))
                .await
                .unwrap_or_else(|e| panic!("{sel}: {e}"))
                .text()
                .await
                .expect("text")
        }
    };
    assert_eq!(browser.title().await.expect("title"), "MemoBuild server");
    // What a person sees: the newest build first, its project and its time.
    let latest = text("#latest").await;
    let first_row = latest.lines().nth(1).unwrap_or_default().to_owned();
    assert!(first_row.contains("shop"), "{latest}");
    assert!(latest.contains("failed"), "{latest}");
    // The hit rate over time: one bar per day of the builds the figures cover.
    let bars = browser
        .find_all(Locator::Css("#hit-rate rect"))
        .await
        .expect("bars");
    assert!(bars.len() >= 2, "{} bars", bars.len());
    let label = bars[0].attr("aria-label").await.expect("label");
    assert!(
        label.is_some_and(|l| l.contains("% of steps cached")),
        "bars say what they show"
    );
    // The slowest steps, and why they ran.
    let slowest = text("#slowest").await;
    assert!(slowest.contains("[3/3] RUN make"), "{slowest}");
    assert!(slowest.contains("file `src/main.c` changed"), "{slowest}");

    // A build reported while the page is open appears without a reload.
    browser
        .execute("window.__still_here = 'yes'; return 1;", vec![])
        .await
        .expect("mark the page");
    let fresh = serde_json::json!({
        "id": "fresh-1",
        "project": "checkout-service",
        "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "duration_ms": 1234,
        "status": "succeeded",
        "vertices": [{"name": "[1/1] RUN go build", "digest": "sha256:dd", "cached": false, "duration_ms": 1200}],
    });
    let r = server.post_build(TOKEN, &fresh);
    assert_eq!(r.status, 201, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let latest = text("#latest").await;
        if latest
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("checkout-service"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new build never appeared:\n{latest}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = browser
        .execute("return window.__still_here || 'reloaded';", vec![])
        .await
        .expect("read the mark");
    assert_eq!(still, "yes", "the page was reloaded");

    let png = browser.screenshot().await.expect("screenshot");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).expect("keep the screenshot");
    eprintln!("screenshot: {}", shot.display());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    browser.close().await.expect("close the session");
}
