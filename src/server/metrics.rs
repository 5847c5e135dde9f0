//! Counters for `GET /metrics` (Prometheus' text exposition format, version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::server::builds::BuildCounters;
use crate::server::store::Kind;
use crate::server::webhooks::WebhookCounters;

/// What a cache request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read that found the object.
    Hit,
    /// A read that did not.
    Miss,
    /// An upload that was stored.
    Stored,
    /// An upload that was refused (bad digest, too large, broken or stalled body).
    Rejected,
    /// A read that found a blob whose content does not match its name (removed; the read is
    /// counted as a miss too).
    Damaged,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Hit, "hit"),
    (Outcome::Miss, "miss"),
    (Outcome::Stored, "stored"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Damaged, "damaged"),
];

/// Cache request counters since the server started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `[kind][outcome]`: kind 0 = ac, 1 = cas.
    requests: [[AtomicU64; 5]; 2],
    /// Bytes sent in GET bodies and received in stored uploads, per kind.
    bytes_out: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Ac => 0,
        Kind::Cas => 1,
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Hit => 0,
        Outcome::Miss => 1,
        Outcome::Stored => 2,
        Outcome::Rejected => 3,
        Outcome::Damaged => 4,
    }
}

impl Metrics {
    /// Counts one request.
    pub fn request(&self, kind: Kind, outcome: Outcome) {
        self.requests[kind_index(kind)][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes served.
    pub fn sent(&self, kind: Kind, bytes: u64) {
        self.bytes_out[kind_index(kind)].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts bytes stored.
    pub fn received(&self, kind: Kind, bytes: u64) {
        self.bytes_in[kind_index(kind)].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Requests of `kind` with `outcome` so far.
    pub fn count(&self, kind: Kind, outcome: Outcome) -> u64 {
        self.requests[kind_index(kind)][outcome_index(outcome)].load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` shows, gathered by the handler.
pub struct Snapshot<'a> {
    /// Cache counters.
    pub metrics: &'a Metrics,
    /// Objects and bytes in the store now.
    pub objects: usize,
    /// Bytes in the store now.
    pub bytes: u64,
    /// The store's bound, if any.
    pub max_bytes: Option<u64>,
    /// Build record totals since start.
    pub builds: BuildCounters,
    /// Records held for the API.
    pub builds_held: usize,
    /// Webhook totals since start.
    pub webhooks: WebhookCounters,
}

/// Renders the text format.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    let mut requests = Vec::new();
    for kind in [Kind::Ac, Kind::Cas] {
        for (o, label) in OUTCOMES {
            requests.push((
                format!("kind=\"{}\",result=\"{label}\"", kind.as_str()),
                s.metrics.count(kind, o),
            ));
        }
    }
    family(
        "memobuild_cache_requests_total",
        "counter",
        "Cache requests by namespace and result.",
        &requests,
    );
    let per_kind = |a: &[AtomicU64; 2]| {
        [Kind::Ac, Kind::Cas]
            .iter()
            .map(|&k| {
                (
                    format!("kind=\"{}\"", k.as_str()),
                    a[kind_index(k)].load(Ordering::Relaxed),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "memobuild_cache_sent_bytes_total",
        "counter",
        "Bytes served by cache reads.",
        &per_kind(&s.metrics.bytes_out),
    );
    family(
        "memobuild_cache_received_bytes_total",
        "counter",
        "Bytes stored by cache uploads.",
        &per_kind(&s.metrics.bytes_in),
    );
    family(
        "memobuild_cache_objects",
        "gauge",
        "Objects in the store.",
        &[(String::new(), s.objects as u64)],
    );
    family(
        "memobuild_cache_size_bytes",
        "gauge",
        "Bytes in the store.",
        &[(String::new(), s.bytes)],
    );
    if let Some(max) = s.max_bytes {
        family(
            "memobuild_cache_max_size_bytes",
            "gauge",
            "The store's size bound.",
            &[(String::new(), max)],
        );
    }
    family(
        "memobuild_builds_total",
        "counter",
        "Build records accepted, by status.",
        &[
            ("status=\"succeeded\"".into(), s.builds.succeeded),
            ("status=\"failed\"".into(), s.builds.failed),
        ],
    );
    family(
        "memobuild_build_vertices_total",
        "counter",
        "Vertices of reported builds, by whether they came from the cache.",
        &[
            ("result=\"cached\"".into(), s.builds.cached_vertices),
            ("result=\"executed\"".into(), s.builds.executed_vertices),
        ],
    );
    family(
        "memobuild_build_duration_milliseconds_total",
        "counter",
        "Wall time of reported builds, summed.",
        &[(String::new(), s.builds.duration_ms_sum)],
    );
    family(
        "memobuild_build_records",
        "gauge",
        "Build records held for the API.",
        &[(String::new(), s.builds_held as u64)],
    );
    family(
        "memobuild_webhook_deliveries_total",
        "counter",
        "Webhook deliveries that ended, by result.",
        &[
            ("result=\"delivered\"".into(), s.webhooks.delivered),
            ("result=\"failed\"".into(), s.webhooks.failed),
        ],
    );
    family(
        "memobuild_webhook_failed_attempts_total",
        "counter",
        "Webhook attempts that failed (retried or not).",
        &[(String::new(), s.webhooks.failed_attempts)],
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_in_text_format() {
        let m = Metrics::default();
        m.request(Kind::Ac, Outcome::Hit);
        m.request(Kind::Ac, Outcome::Hit);
        m.request(Kind::Cas, Outcome::Miss);
        m.sent(Kind::Cas, 10);
        let text = render(&Snapshot {
            metrics: &m,
            objects: 3,
            bytes: 99,
            max_bytes: None,
            builds: BuildCounters {
                succeeded: 2,
                ..BuildCounters::default()
            },
            builds_held: 2,
            webhooks: WebhookCounters::default(),
        });
        assert!(text.contains("memobuild_cache_requests_total{kind=\"ac\",result=\"hit\"} 2\n"));
        assert!(text.contains("memobuild_cache_requests_total{kind=\"cas\",result=\"miss\"} 1\n"));
        assert!(text.contains("memobuild_cache_sent_bytes_total{kind=\"cas\"} 10\n"));
        assert!(text.contains("# TYPE memobuild_cache_objects gauge\nmemobuild_cache_objects 3\n"));
        assert!(text.contains("memobuild_builds_total{status=\"succeeded\"} 2\n"));
        assert!(!text.contains("max_size"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }
}
