//! `GET /api/stats` computed by the database: both backends run these queries (the same SQL
//! for SQLite and PostgreSQL, written in what the two share: `CAST`, `CASE`, window functions)
//! over the columns and the `steps` table migration 3 added, so only aggregated rows, never the
//! records, leave the database. What stays in Rust is ordering the groups (so that names sort
//! by bytes whatever the database's collation) and keeping the top ten steps.
//!
//! Percentiles are nearest-rank, as [`crate::server::builds::stats`] computes them over
//! records: the value at rank `ceil(p·n)` of the group's sorted wall times, the rank in integer
//! arithmetic so both sides agree to the millisecond.

use std::collections::HashMap;

use crate::server::builds::{
    DayStats, Durations, Filter, ProjectStats, ReasonCount, Stats, StepStats, TargetStats, rate,
};

/// The statements of one backend: its table names, its parameter syntax.
#[derive(Debug)]
pub(super) struct Queries {
    /// Columns `project, target, builds, failed, vertices, cached, mean, p50, p95, max` per
    /// project and target.
    pub targets: String,
    /// The same per project (target empty).
    pub projects: String,
    /// The same columns over all the selected builds, one row (keys empty).
    pub totals: String,
    /// `day, builds, vertices, cached`.
    pub days: String,
    /// `name, executed, cached, total_ms` of steps that executed at least once.
    pub steps: String,
    /// `name, reason, count` of executions with a reason.
    pub reasons: String,
}

/// The parameters every statement takes, in order: `?1` project, `?2` status, `?3` limit,
/// `?4` target, `?5` since (milliseconds), as the backends' `query` binds them.
fn selected(builds: &str) -> String {
    format!(
        "sel AS (SELECT seq, project, target, status, duration_ms, vertices, cached, day
           FROM {builds}
           WHERE (CAST(?1 AS TEXT) IS NULL OR project = ?1) AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
             AND (CAST(?4 AS TEXT) IS NULL OR target = ?4) AND (CAST(?5 AS BIGINT) IS NULL OR at_ms >= ?5)
           ORDER BY seq DESC LIMIT ?3)"
    )
}

/// Build counts and wall-time figures of the selected builds grouped by `keys` (a column
/// list, or empty for one group of all).
fn durations(builds: &str, keys: &str) -> String {
    let (partition, select, group) = if keys.is_empty() {
        (String::new(), String::new(), String::new())
    } else {
        (
            format!("PARTITION BY {keys} "),
            format!("{keys}, "),
            format!(" GROUP BY {keys}"),
        )
    };
    format!(
        "WITH {sel}, ranked AS (
           SELECT *, ROW_NUMBER() OVER ({partition}ORDER BY duration_ms) AS rn,
                  COUNT(*) OVER ({partition}) AS n
           FROM sel)
         SELECT {select}COUNT(*),
           CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT),
           CAST(SUM(vertices) AS BIGINT), CAST(SUM(cached) AS BIGINT),
           CAST(SUM(duration_ms) AS BIGINT) / COUNT(*),
           MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN duration_ms END),
           MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN duration_ms END),
           MAX(duration_ms)
         FROM ranked{group}",
        sel = selected(builds),
    )
}

impl Queries {
    /// The statements over tables `builds` and `steps`; `dollar` writes parameters as
    /// PostgreSQL's `$N` instead of SQLite's `?N`.
    pub fn new(builds: &str, steps: &str, dollar: bool) -> Queries {
        let sel = selected(builds);
        let q = Queries {
            targets: durations(builds, "project, target"),
            projects: durations(builds, "project"),
            totals: durations(builds, ""),
            days: format!(
                "WITH {sel} SELECT day, COUNT(*), CAST(SUM(vertices) AS BIGINT),
                   CAST(SUM(cached) AS BIGINT) FROM sel GROUP BY day"
            ),
            steps: format!(
                "WITH {sel} SELECT s.name,
                   CAST(SUM(1 - s.cached) AS BIGINT), CAST(SUM(s.cached) AS BIGINT),
                   CAST(SUM(CASE WHEN s.cached = 0 THEN s.duration_ms ELSE 0 END) AS BIGINT)
                 FROM {steps} s JOIN sel ON s.build_seq = sel.seq
                 GROUP BY s.name HAVING SUM(1 - s.cached) > 0"
            ),
            reasons: format!(
                "WITH {sel} SELECT s.name, s.reason, COUNT(*)
                 FROM {steps} s JOIN sel ON s.build_seq = sel.seq
                 WHERE s.cached = 0 AND s.reason IS NOT NULL
                 GROUP BY s.name, s.reason"
            ),
        };
        if !dollar {
            return q;
        }
        let d = |s: String| s.replace('?', "$");
        Queries {
            targets: d(q.targets),
            projects: d(q.projects),
            totals: d(q.totals),
            days: d(q.days),
            steps: d(q.steps),
            reasons: d(q.reasons),
        }
    }
}

/// The limit parameter of a filter: `None` for no limit (SQLite's caller writes -1).
pub(super) fn limit(filter: &Filter) -> Option<i64> {
    filter.last.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// One row of [`Queries::targets`] or [`Queries::totals`].
#[derive(Debug, Default)]
pub(super) struct GroupRow {
    pub project: Option<String>,
    pub target: Option<String>,
    pub builds: i64,
    pub failed: Option<i64>,
    pub vertices: Option<i64>,
    pub cached: Option<i64>,
    pub mean: Option<i64>,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub max: Option<i64>,
}

/// One row of [`Queries::days`].
#[derive(Debug)]
pub(super) struct DayRow {
    pub day: String,
    pub builds: i64,
    pub vertices: Option<i64>,
    pub cached: Option<i64>,
}

/// One row of [`Queries::steps`].
#[derive(Debug)]
pub(super) struct StepRow {
    pub name: String,
    pub executed: i64,
    pub cached: i64,
    pub total_ms: i64,
}

/// One row of [`Queries::reasons`].
#[derive(Debug)]
pub(super) struct ReasonRow {
    pub name: String,
    pub reason: String,
    pub count: i64,
}

/// A result row of either backend, read by column index.
pub(super) trait Columns {
    /// The backend's error.
    type Error;
    /// A text column.
    fn text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    /// An integer column.
    fn int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
}

impl GroupRow {
    /// A row whose first `keys` columns are the group (project, then target).
    pub fn read<C: Columns>(c: &C, keys: usize) -> Result<GroupRow, C::Error> {
        Ok(GroupRow {
            project: if keys > 0 { c.text(0)? } else { None },
            target: if keys > 1 { c.text(1)? } else { None },
            builds: c.int(keys)?.unwrap_or(0),
            failed: c.int(keys + 1)?,
            vertices: c.int(keys + 2)?,
            cached: c.int(keys + 3)?,
            mean: c.int(keys + 4)?,
            p50: c.int(keys + 5)?,
            p95: c.int(keys + 6)?,
            max: c.int(keys + 7)?,
        })
    }
}

impl DayRow {
    pub fn read<C: Columns>(c: &C) -> Result<DayRow, C::Error> {
        Ok(DayRow {
            day: c.text(0)?.unwrap_or_default(),
            builds: c.int(1)?.unwrap_or(0),
            vertices: c.int(2)?,
            cached: c.int(3)?,
        })
    }
}

impl StepRow {
    pub fn read<C: Columns>(c: &C) -> Result<StepRow, C::Error> {
        Ok(StepRow {
            name: c.text(0)?.unwrap_or_default(),
            executed: c.int(1)?.unwrap_or(0),
            cached: c.int(2)?.unwrap_or(0),
            total_ms: c.int(3)?.unwrap_or(0),
        })
    }
}

impl ReasonRow {
    pub fn read<C: Columns>(c: &C) -> Result<ReasonRow, C::Error> {
        Ok(ReasonRow {
            name: c.text(0)?.unwrap_or_default(),
            reason: c.text(1)?.unwrap_or_default(),
            count: c.int(2)?.unwrap_or(0),
        })
    }
}

/// Per-day figures from [`Queries::days`] rows, oldest first.
pub(super) fn days(rows: Vec<DayRow>) -> Vec<DayStats> {
    let mut days: Vec<DayStats> = rows
        .into_iter()
        .map(|d| DayStats {
            cache_hit_rate: rate(count(d.cached), count(d.vertices)),
            day: d.day,
            builds: count(Some(d.builds)),
        })
        .collect();
    days.sort_by(|a, b| a.day.cmp(&b.day));
    days
}

/// What the queries returned, as [`Stats`].
pub(super) struct Rows {
    pub totals: GroupRow,
    pub targets: Vec<GroupRow>,
    pub projects: Vec<GroupRow>,
    pub days: Vec<DayRow>,
    pub steps: Vec<StepRow>,
    pub reasons: Vec<ReasonRow>,
}

fn count(v: Option<i64>) -> usize {
    v.and_then(|v| usize::try_from(v).ok()).unwrap_or(0)
}

fn ms(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl GroupRow {
    fn durations(&self) -> Durations {
        Durations {
            mean: ms(self.mean),
            p50: ms(self.p50),
            p95: ms(self.p95),
            max: ms(self.max),
        }
    }
}

impl Rows {
    /// The figures, ordered and cut as `GET /api/stats` shows them.
    pub fn into_stats(self) -> Stats {
        let Rows {
            totals,
            targets,
            projects,
            days,
            steps,
            reasons,
        } = self;
        let vertices = count(totals.vertices);
        let cached = count(totals.cached);
        let builds = count(Some(totals.builds));
        let failed = count(totals.failed).min(builds);

        // Busiest first, then by key compared as bytes (not by the database's collation).
        let mut projects: Vec<ProjectStats> = projects
            .into_iter()
            .map(|g| ProjectStats {
                project: g.project.clone().unwrap_or_default(),
                builds: count(Some(g.builds)),
                failed: count(g.failed),
                mean_duration_ms: ms(g.mean),
                cache_hit_rate: rate(count(g.cached), count(g.vertices)),
            })
            .collect();
        projects.sort_by(|a, b| b.builds.cmp(&a.builds).then(a.project.cmp(&b.project)));
        let mut targets: Vec<TargetStats> = targets
            .into_iter()
            .map(|g| TargetStats {
                project: g.project.clone().unwrap_or_default(),
                target: g.target.clone(),
                builds: count(Some(g.builds)),
                failed: count(g.failed),
                duration_ms: g.durations(),
                cache_hit_rate: rate(count(g.cached), count(g.vertices)),
            })
            .collect();
        targets.sort_by(|a, b| {
            b.builds
                .cmp(&a.builds)
                .then_with(|| (&a.project, &a.target).cmp(&(&b.project, &b.target)))
        });

        let days = self::days(days);

        let mut slowest: Vec<StepStats> = steps
            .into_iter()
            .map(|s| {
                let executed = count(Some(s.executed));
                let total_ms = ms(Some(s.total_ms)).unwrap_or(0);
                StepStats {
                    executed,
                    cached: count(Some(s.cached)),
                    total_ms,
                    mean_ms: total_ms / executed.max(1) as u64,
                    reasons: Vec::new(),
                    name: s.name,
                }
            })
            .collect();
        slowest.sort_by(|a, b| b.total_ms.cmp(&a.total_ms).then(a.name.cmp(&b.name)));
        slowest.truncate(10);
        let mut why: HashMap<String, Vec<ReasonCount>> = HashMap::new();
        for r in reasons {
            why.entry(r.name).or_default().push(ReasonCount {
                reason: r.reason,
                count: count(Some(r.count)),
            });
        }
        for s in &mut slowest {
            let mut r = why.remove(&s.name).unwrap_or_default();
            r.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
            r.truncate(3);
            s.reasons = r;
        }

        Stats {
            builds,
            succeeded: builds - failed,
            failed,
            duration_ms: totals.durations(),
            vertices,
            executed: vertices - cached.min(vertices),
            cached,
            cache_hit_rate: rate(cached, vertices),
            slowest_steps: slowest,
            projects,
            targets,
            days,
        }
    }
}
