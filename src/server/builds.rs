//! Build records: what `memobuild build` reports to the server when it is done, and the
//! analytics computed from them. Where they are kept is [`crate::server::records`].

#[cfg(test)]
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// The build produced its image.
    Succeeded,
    /// The build failed.
    Failed,
}

impl BuildStatus {
    /// The name used in JSON and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
        }
    }
}

/// One cacheable step of a build, as the client's solver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VertexTiming {
    /// Progress name (`[stage 2/4] RUN make`).
    pub name: String,
    /// LLB digest of the vertex.
    #[serde(default)]
    pub digest: String,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Milliseconds to restore or execute it.
    #[serde(default)]
    pub duration_ms: u64,
    /// Why it ran, for an executed vertex (what changed: a file, a build arg, a base image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a client reports about one build (`POST /api/builds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildRecord {
    /// Chosen by the client (a UUID); posting the same id again changes nothing.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$", min_length = 1, max_length = 128)]
    pub id: String,
    /// What the build is of, for grouping: the context directory's name unless the client
    /// named it.
    #[serde(default)]
    pub project: String,
    /// `--target`, when given.
    #[serde(default)]
    pub target: Option<String>,
    /// The Dockerfile's path as given, relative to the context when inside it.
    #[serde(default)]
    pub dockerfile: String,
    /// The machine that built.
    #[serde(default)]
    pub host: String,
    /// When the build started, RFC 3339 in UTC.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z$")]
    pub started_at: String,
    /// Wall time of the whole build.
    pub duration_ms: u64,
    /// How it ended.
    pub status: BuildStatus,
    /// The error, for a failed build.
    #[serde(default)]
    pub error: Option<String>,
    /// The image digest, for a successful build.
    #[serde(default)]
    pub image: Option<String>,
    /// Image names it was tagged with.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Every cacheable vertex, in completion order.
    #[serde(default)]
    pub vertices: Vec<VertexTiming>,
    /// When the server accepted the record, RFC 3339 (set by the server).
    #[serde(default)]
    pub received_at: Option<String>,
}

/// Limits on what a record may hold, so one client cannot fill the server's memory.
const MAX_ID: usize = 128;
const MAX_TEXT: usize = 4096;
const MAX_VERTICES: usize = 20_000;
const MAX_ERROR: usize = 64 * 1024;
const MAX_TAGS: usize = 256;
const MAX_DIGEST: usize = 256;

impl BuildRecord {
    /// Checks what serde cannot: id characters, timestamps, sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || self.id.len() > MAX_ID
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!(
                "`id`: expected 1 to {MAX_ID} characters of [A-Za-z0-9._-], got {:?}",
                self.id
            ));
        }
        humantime::parse_rfc3339_weak(&self.started_at).map_err(|e| {
            format!(
                "`started_at`: expected an RFC 3339 time, got {:?} ({e})",
                self.started_at
            )
        })?;
        for (field, value) in [
            ("project", Some(&self.project)),
            ("dockerfile", Some(&self.dockerfile)),
            ("host", Some(&self.host)),
            ("target", self.target.as_ref()),
            ("image", self.image.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_TEXT) {
                return Err(format!("`{field}`: longer than {MAX_TEXT} bytes"));
            }
        }
        if self.error.as_ref().is_some_and(|e| e.len() > MAX_ERROR) {
            return Err(format!("`error`: longer than {MAX_ERROR} bytes"));
        }
        if self.tags.len() > MAX_TAGS || self.tags.iter().any(|t| t.len() > MAX_TEXT) {
            return Err(format!(
                "`tags`: at most {MAX_TAGS} of at most {MAX_TEXT} bytes each"
            ));
        }
        if let Some(i) = self.vertices.iter().position(|v| {
            v.name.len() > MAX_TEXT
                || v.digest.len() > MAX_DIGEST
                || v.reason.as_ref().is_some_and(|r| r.len() > MAX_TEXT)
        }) {
            return Err(format!(
                "`vertices[{i}]`: a name or reason is at most {MAX_TEXT} bytes, a digest {MAX_DIGEST}"
            ));
        }
        if self.vertices.len() > MAX_VERTICES {
            return Err(format!(
                "`vertices`: {} entries, at most {MAX_VERTICES}",
                self.vertices.len()
            ));
        }
        if self.status == BuildStatus::Succeeded && self.error.is_some() {
            return Err("`error` is set on a succeeded build".into());
        }
        Ok(())
    }

    /// Vertices restored from the cache.
    pub fn cached(&self) -> usize {
        self.vertices.iter().filter(|v| v.cached).count()
    }

    /// Vertices that executed.
    pub fn executed(&self) -> usize {
        self.vertices.len() - self.cached()
    }

    /// Share of vertices restored from the cache; `None` without vertices.
    pub fn hit_rate(&self) -> Option<f64> {
        (!self.vertices.is_empty()).then(|| self.cached() as f64 / self.vertices.len() as f64)
    }

    /// The record without its vertices, with the derived counts: what lists and webhooks show.
    pub fn summary(&self) -> BuildSummary {
        let mut slowest: Vec<&VertexTiming> = self.vertices.iter().filter(|v| !v.cached).collect();
        slowest.sort_by_key(|v| std::cmp::Reverse(v.duration_ms));
        BuildSummary {
            id: self.id.clone(),
            project: self.project.clone(),
            target: self.target.clone(),
            dockerfile: self.dockerfile.clone(),
            host: self.host.clone(),
            started_at: self.started_at.clone(),
            received_at: self.received_at.clone(),
            duration_ms: self.duration_ms,
            status: self.status,
            error: self.error.clone(),
            image: self.image.clone(),
            tags: self.tags.clone(),
            vertices: self.vertices.len(),
            executed: self.executed(),
            cached: self.cached(),
            cache_hit_rate: self.hit_rate(),
            slowest: slowest.into_iter().take(5).cloned().collect(),
        }
    }
}

/// A build as lists, stats and webhooks show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildSummary {
    /// See [`BuildRecord`].
    pub id: String,
    /// See [`BuildRecord`].
    pub project: String,
    /// See [`BuildRecord`].
    pub target: Option<String>,
    /// See [`BuildRecord`].
    pub dockerfile: String,
    /// See [`BuildRecord`].
    pub host: String,
    /// See [`BuildRecord`].
    pub started_at: String,
    /// See [`BuildRecord`].
    pub received_at: Option<String>,
    /// See [`BuildRecord`].
    pub duration_ms: u64,
    /// See [`BuildRecord`].
    pub status: BuildStatus,
    /// See [`BuildRecord`].
    pub error: Option<String>,
    /// See [`BuildRecord`].
    pub image: Option<String>,
    /// See [`BuildRecord`].
    pub tags: Vec<String>,
    /// Cacheable vertices.
    pub vertices: usize,
    /// Vertices that executed.
    pub executed: usize,
    /// Vertices restored from the cache.
    pub cached: usize,
    /// `cached / vertices`; null without vertices.
    pub cache_hit_rate: Option<f64>,
    /// The (up to) five executed vertices that took longest.
    pub slowest: Vec<VertexTiming>,
}

/// Which records a query looks at.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this `--target`.
    pub target: Option<String>,
    /// Only builds that ended so.
    pub status: Option<BuildStatus>,
    /// Only builds received at or after this, in milliseconds since the epoch.
    pub since_ms: Option<i64>,
    /// Only the newest this many (after the other filters).
    pub last: Option<usize>,
}

/// Aggregates over a set of builds (`GET /api/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Builds counted.
    pub builds: usize,
    /// Of which succeeded.
    pub succeeded: usize,
    /// Of which failed.
    pub failed: usize,
    /// Build wall times.
    pub duration_ms: Durations,
    /// Vertices over all builds counted.
    pub vertices: usize,
    /// Of which executed.
    pub executed: usize,
    /// Of which were restored from the cache.
    pub cached: usize,
    /// `cached / vertices`; null without vertices.
    pub cache_hit_rate: Option<f64>,
    /// Executed time spent per step name, the largest first (at most ten).
    pub slowest_steps: Vec<StepStats>,
    /// The same per project, the busiest first.
    pub projects: Vec<ProjectStats>,
    /// Figures per project and `--target`, the busiest first.
    pub targets: Vec<TargetStats>,
    /// Builds and hit rate per day, oldest first.
    pub days: Vec<DayStats>,
}

/// One project's builds of one target (no target: the Dockerfile's last stage).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TargetStats {
    /// Project name.
    pub project: String,
    /// The `--target`, null for none.
    pub target: Option<String>,
    /// Builds counted.
    pub builds: usize,
    /// Of which failed.
    pub failed: usize,
    /// Wall times.
    pub duration_ms: Durations,
    /// `cached / vertices` over its builds.
    pub cache_hit_rate: Option<f64>,
}

/// Wall-time figures of a set of builds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Durations {
    /// Arithmetic mean.
    pub mean: Option<u64>,
    /// Median (nearest rank).
    pub p50: Option<u64>,
    /// 95th percentile (nearest rank).
    pub p95: Option<u64>,
    /// Longest.
    pub max: Option<u64>,
}

/// Where executed time went, per step name.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StepStats {
    /// Progress name.
    pub name: String,
    /// Times it executed.
    pub executed: usize,
    /// Times it was restored from the cache.
    pub cached: usize,
    /// Milliseconds spent executing it, summed.
    pub total_ms: u64,
    /// Mean milliseconds per execution.
    pub mean_ms: u64,
    /// Why it ran, the most frequent reasons first (at most three).
    pub reasons: Vec<ReasonCount>,
}

/// A reason a step ran, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReasonCount {
    /// What changed (`file `src/main.c` changed`).
    pub reason: String,
    /// Executions it explained.
    pub count: usize,
}

/// The builds of one day (UTC, by start time).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DayStats {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Builds that started that day.
    pub builds: usize,
    /// `cached / vertices` over them; null without vertices.
    pub cache_hit_rate: Option<f64>,
}

/// One project's figures.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProjectStats {
    /// Project name.
    pub project: String,
    /// Builds counted.
    pub builds: usize,
    /// Of which failed.
    pub failed: usize,
    /// Mean wall time.
    pub mean_duration_ms: Option<u64>,
    /// `cached / vertices` over its builds.
    pub cache_hit_rate: Option<f64>,
}

#[cfg(test)]
/// Nearest-rank percentile of sorted values, `pct` in percent: the value at rank
/// `ceil(pct·n/100)`, in integers so that the database's figures (`records::aggregate`) agree.
fn percentile(sorted: &[u64], pct: usize) -> Option<u64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (pct * n).div_ceil(100);
    sorted.get(rank.clamp(1, n) - 1).copied()
}

#[cfg(test)]
fn durations(mut ms: Vec<u64>) -> Durations {
    if ms.is_empty() {
        return Durations::default();
    }
    ms.sort_unstable();
    let sum: u128 = ms.iter().map(|&m| u128::from(m)).sum();
    Durations {
        mean: u64::try_from(sum / ms.len() as u128).ok(),
        p50: percentile(&ms, 50),
        p95: percentile(&ms, 95),
        max: ms.last().copied(),
    }
}

/// `part / whole`, `None` when `whole` is 0.
pub(crate) fn rate(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
/// The figures of one group of builds.
struct Group {
    builds: usize,
    failed: usize,
    duration_ms: Durations,
    cache_hit_rate: Option<f64>,
}

#[cfg(test)]
/// `records` grouped by `key`, each group's figures, the busiest group first (then by key).
fn grouped<'a, K: Ord + std::hash::Hash + Copy>(
    records: &[&'a BuildRecord],
    key: impl Fn(&'a BuildRecord) -> K,
) -> Vec<(K, Group)> {
    let mut groups: HashMap<K, Vec<&BuildRecord>> = HashMap::new();
    for r in records {
        groups.entry(key(r)).or_default().push(r);
    }
    let mut out: Vec<(K, Group)> = groups
        .into_iter()
        .map(|(k, rs)| {
            let v: usize = rs.iter().map(|r| r.vertices.len()).sum();
            let c: usize = rs.iter().map(|r| r.cached()).sum();
            let group = Group {
                builds: rs.len(),
                failed: rs
                    .iter()
                    .filter(|r| r.status == BuildStatus::Failed)
                    .count(),
                duration_ms: durations(rs.iter().map(|r| r.duration_ms).collect()),
                cache_hit_rate: rate(c, v),
            };
            (k, group)
        })
        .collect();
    out.sort_by(|(ka, a), (kb, b)| b.builds.cmp(&a.builds).then(ka.cmp(kb)));
    out
}

#[cfg(test)]
/// Builds and hit rate per day (UTC, by start time), oldest first.
pub fn days<'a>(records: impl IntoIterator<Item = &'a BuildRecord>) -> Vec<DayStats> {
    let mut by_day: std::collections::BTreeMap<&str, (usize, usize, usize)> =
        std::collections::BTreeMap::new();
    for r in records {
        let day = r.started_at.get(..10).unwrap_or(&r.started_at);
        let d = by_day.entry(day).or_default();
        d.0 += 1;
        d.1 += r.vertices.len();
        d.2 += r.cached();
    }
    by_day
        .into_iter()
        .map(|(day, (builds, v, c))| DayStats {
            day: day.to_owned(),
            builds,
            cache_hit_rate: rate(c, v),
        })
        .collect()
}

#[cfg(test)]
/// Computes [`Stats`] over `records` (any order): the reference the database's aggregates
/// (`records::aggregate`) are tested against.
pub fn stats<'a>(records: impl IntoIterator<Item = &'a BuildRecord>) -> Stats {
    let records: Vec<&BuildRecord> = records.into_iter().collect();
    let vertices: usize = records.iter().map(|r| r.vertices.len()).sum();
    let cached: usize = records.iter().map(|r| r.cached()).sum();

    let mut steps: HashMap<&str, StepStats> = HashMap::new();
    let mut reasons: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for v in records.iter().flat_map(|r| &r.vertices) {
        let s = steps.entry(&v.name).or_insert_with(|| StepStats {
            name: v.name.clone(),
            executed: 0,
            cached: 0,
            total_ms: 0,
            mean_ms: 0,
            reasons: Vec::new(),
        });
        if v.cached {
            s.cached += 1;
        } else {
            s.executed += 1;
            s.total_ms = s.total_ms.saturating_add(v.duration_ms);
            if let Some(r) = &v.reason {
                *reasons.entry(&v.name).or_default().entry(r).or_default() += 1;
            }
        }
    }
    let mut slowest: Vec<StepStats> = steps
        .into_values()
        .filter(|s| s.executed > 0)
        .map(|mut s| {
            s.mean_ms = s.total_ms / s.executed as u64;
            let mut why: Vec<ReasonCount> = reasons
                .remove(s.name.as_str())
                .unwrap_or_default()
                .into_iter()
                .map(|(reason, count)| ReasonCount {
                    reason: reason.to_owned(),
                    count,
                })
                .collect();
            why.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
            why.truncate(3);
            s.reasons = why;
            s
        })
        .collect();
    slowest.sort_by(|a, b| b.total_ms.cmp(&a.total_ms).then(a.name.cmp(&b.name)));
    slowest.truncate(10);

    let projects: Vec<ProjectStats> = grouped(&records, |r| r.project.as_str())
        .into_iter()
        .map(|(name, g)| ProjectStats {
            project: name.to_owned(),
            builds: g.builds,
            failed: g.failed,
            mean_duration_ms: g.duration_ms.mean,
            cache_hit_rate: g.cache_hit_rate,
        })
        .collect();
    let targets: Vec<TargetStats> =
        grouped(&records, |r| (r.project.as_str(), r.target.as_deref()))
            .into_iter()
            .map(|((project, target), g)| TargetStats {
                project: project.to_owned(),
                target: target.map(str::to_owned),
                builds: g.builds,
                failed: g.failed,
                duration_ms: g.duration_ms,
                cache_hit_rate: g.cache_hit_rate,
            })
            .collect();

    let days = days(records.iter().copied());

    let failed = records
        .iter()
        .filter(|r| r.status == BuildStatus::Failed)
        .count();
    Stats {
        builds: records.len(),
        succeeded: records.len() - failed,
        failed,
        duration_ms: durations(records.iter().map(|r| r.duration_ms).collect()),
        vertices,
        executed: vertices - cached,
        cached,
        cache_hit_rate: rate(cached, vertices),
        slowest_steps: slowest,
        projects,
        targets,
        days,
    }
}

/// Totals since the server started, for `/metrics` (counters never go down).
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildCounters {
    /// Records accepted, succeeded builds.
    pub succeeded: u64,
    /// Records accepted, failed builds.
    pub failed: u64,
    /// Vertices restored from the cache, over accepted records.
    pub cached_vertices: u64,
    /// Vertices executed, over accepted records.
    pub executed_vertices: u64,
    /// Wall time of accepted builds, summed, in milliseconds.
    pub duration_ms_sum: u64,
}

impl BuildCounters {
    /// Counts a newly stored record.
    pub fn count(&mut self, record: &BuildRecord) {
        match record.status {
            BuildStatus::Succeeded => self.succeeded += 1,
            BuildStatus::Failed => self.failed += 1,
        }
        self.cached_vertices += record.cached() as u64;
        self.executed_vertices += record.executed() as u64;
        self.duration_ms_sum = self.duration_ms_sum.saturating_add(record.duration_ms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record(
        id: &str,
        project: &str,
        status: BuildStatus,
        v: &[(&str, bool, u64)],
    ) -> BuildRecord {
        BuildRecord {
            id: id.into(),
            project: project.into(),
            target: None,
            dockerfile: "Dockerfile".into(),
            host: "h".into(),
            started_at: "2026-11-24T10:00:00Z".into(),
            duration_ms: 1000,
            status,
            error: (status == BuildStatus::Failed).then(|| "boom".to_owned()),
            image: None,
            tags: vec![],
            vertices: v
                .iter()
                .map(|(n, c, d)| VertexTiming {
                    name: (*n).into(),
                    digest: String::new(),
                    cached: *c,
                    duration_ms: *d,
                    reason: (!*c).then(|| format!("file `{n}.c` changed")),
                })
                .collect(),
            received_at: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = record("a-1", "p", BuildStatus::Succeeded, &[]);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.id = "../x".into();
        assert!(bad.validate().unwrap_err().contains("`id`"));
        let mut bad = ok.clone();
        bad.started_at = "yesterday".into();
        assert!(bad.validate().unwrap_err().contains("`started_at`"));
        let mut bad = ok;
        bad.error = Some("x".into());
        assert!(bad.validate().unwrap_err().contains("`error`"));
    }

    #[test]
    fn summary_counts_and_slowest() {
        let r = record(
            "a",
            "p",
            BuildStatus::Succeeded,
            &[
                ("A", true, 1),
                ("B", false, 50),
                ("C", false, 700),
                ("D", true, 2),
            ],
        );
        let s = r.summary();
        assert_eq!((s.vertices, s.executed, s.cached), (4, 2, 2));
        assert_eq!(s.cache_hit_rate, Some(0.5));
        let names: Vec<&str> = s.slowest.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["C", "B"]);
        assert_eq!(record("e", "p", BuildStatus::Failed, &[]).hit_rate(), None);
    }

    #[test]
    fn stats_aggregate_builds_steps_and_projects() {
        let mut a = record(
            "1",
            "app",
            BuildStatus::Succeeded,
            &[("RUN make", false, 300), ("COPY", false, 10)],
        );
        a.duration_ms = 400;
        let mut b = record(
            "2",
            "app",
            BuildStatus::Succeeded,
            &[("RUN make", true, 1), ("COPY", true, 1)],
        );
        b.duration_ms = 100;
        let mut c = record("3", "web", BuildStatus::Failed, &[("RUN make", false, 500)]);
        c.duration_ms = 2000;
        let s = stats([&a, &b, &c]);
        assert_eq!((s.builds, s.succeeded, s.failed), (3, 2, 1));
        assert_eq!((s.vertices, s.executed, s.cached), (5, 3, 2));
        assert_eq!(s.cache_hit_rate, Some(0.4));
        assert_eq!(s.duration_ms.mean, Some(833));
        assert_eq!(s.duration_ms.p50, Some(400));
        assert_eq!(s.duration_ms.max, Some(2000));
        assert_eq!(s.slowest_steps[0].name, "RUN make");
        assert_eq!(s.slowest_steps[0].total_ms, 800);
        assert_eq!(s.slowest_steps[0].executed, 2);
        assert_eq!(s.slowest_steps[0].cached, 1);
        assert_eq!(s.slowest_steps[0].mean_ms, 400);
        assert_eq!(
            s.slowest_steps[0].reasons,
            [ReasonCount {
                reason: "file `RUN make.c` changed".into(),
                count: 2
            }]
        );
        assert_eq!(
            s.targets.iter().map(|t| t.builds).sum::<usize>(),
            s.builds,
            "every build is under one project and target"
        );
        assert_eq!(s.days.len(), 1);
        assert_eq!(s.days[0].day, "2026-11-24");
        assert_eq!(s.days[0].builds, s.builds);
        assert_eq!(s.projects[0].project, "app");
        assert_eq!(s.projects[0].cache_hit_rate, Some(0.5));
        assert_eq!(s.projects[1].failed, 1);
        let empty = stats([]);
        assert_eq!(empty.cache_hit_rate, None);
        assert_eq!(empty.duration_ms, Durations::default());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&[7], 95), Some(7));
    }
}
