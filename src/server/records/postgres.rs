//! Build records in PostgreSQL, for teams that run several server replicas over one database
//! (`memobuild server --database postgres://…`). The same table as SQLite's (`memobuild_builds`:
//! the record as JSON beside the columns queries use), the same retention; ids are unique in
//! the database, so a record posted to two replicas is stored once.
//!
//! Schema versions live in `memobuild_schema`; replicas starting together migrate one at a
//! time, under a transaction-scoped advisory lock. Connections are kept in a small pool and
//! replaced when the server closed them.

use std::io;
use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls};

use super::aggregate::{self, Columns, DayRow, GroupRow, Queries, ReasonRow, Rows, StepRow};
use super::{Added, BuildStore, Retention, Row, decode};
use crate::server::builds::{BuildCounters, BuildRecord, BuildStatus, DayStats, Filter, Stats};

/// Schema changes, in order; `memobuild_schema.version` is how many have been applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the records (see `sqlite.rs`).
    "CREATE TABLE memobuild_builds (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        status TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX memobuild_builds_by_project ON memobuild_builds (project, seq);
    CREATE INDEX memobuild_builds_by_status ON memobuild_builds (status, seq);
    CREATE INDEX memobuild_builds_by_age ON memobuild_builds (at_ms);",
    // 2: the target, for per-target queries, filled in from the records already held.
    "ALTER TABLE memobuild_builds ADD COLUMN target TEXT;
    UPDATE memobuild_builds SET target = record::jsonb ->> 'target';
    CREATE INDEX memobuild_builds_by_target ON memobuild_builds (project, target, seq);",
    // 3: what `/api/stats` aggregates in SQL (see `sqlite.rs`).
    "ALTER TABLE memobuild_builds
        ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN vertices BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN cached BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN day TEXT NOT NULL DEFAULT '';
    CREATE TABLE memobuild_steps (
        build_seq BIGINT NOT NULL REFERENCES memobuild_builds (seq) ON DELETE CASCADE,
        name TEXT NOT NULL,
        cached BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        reason TEXT
    );
    CREATE INDEX memobuild_steps_by_build ON memobuild_steps (build_seq);
    INSERT INTO memobuild_steps (build_seq, name, cached, duration_ms, reason)
        SELECT b.seq, COALESCE(v ->> 'name', ''),
            CASE WHEN (v ->> 'cached')::BOOLEAN THEN 1 ELSE 0 END,
            COALESCE((v ->> 'duration_ms')::BIGINT, 0), v ->> 'reason'
        FROM memobuild_builds b,
            jsonb_array_elements(COALESCE(b.record::jsonb -> 'vertices', '[]'::jsonb)) v;
    UPDATE memobuild_builds b SET
        duration_ms = COALESCE((record::jsonb ->> 'duration_ms')::BIGINT, 0),
        vertices = (SELECT COUNT(*) FROM memobuild_steps s WHERE s.build_seq = b.seq),
        cached = (SELECT COUNT(*) FROM memobuild_steps s WHERE s.build_seq = b.seq AND s.cached = 1),
        day = COALESCE(substr(record::jsonb ->> 'started_at', 1, 10), '');",
];

/// Serializes migrations across replicas (`pg_advisory_xact_lock`): "memobld" in ASCII.
const MIGRATION_LOCK: i64 = 0x006d_656d_6f62_6c64;

/// Connections kept open for reuse.
const POOL: usize = 4;

/// The PostgreSQL backend.
pub struct PostgresStore {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    retention: Retention,
    pool: Mutex<Vec<Client>>,
    counters: Mutex<BuildCounters>,
    queries: Queries,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shown)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date. Blocks.
    pub fn connect(url: &str, retention: Retention) -> io::Result<PostgresStore> {
        let shown = crate::gitctx::redact(url);
        let config: postgres::Config = url
            .parse()
            .map_err(|e| io::Error::other(format!("--database `{shown}`: {e}")))?;
        let store = PostgresStore {
            config,
            shown,
            retention,
            pool: Mutex::new(Vec::new()),
            counters: Mutex::new(BuildCounters::default()),
            queries: Queries::new("memobuild_builds", "memobuild_steps", true),
        };
        store.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS memobuild_schema (version INTEGER NOT NULL)",
            )?;
            let version: i32 = match tx.query_opt("SELECT version FROM memobuild_schema", &[])? {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO memobuild_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            let version = usize::try_from(version).unwrap_or(0);
            if let Err(e) = super::check_schema(&store.shown, version, MIGRATIONS.len()) {
                return Ok(Err(e));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(sql)?;
                let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.execute("UPDATE memobuild_schema SET version = $1", &[&v])?;
                tracing::info!(version = i + 1, "build records: schema migrated");
            }
            tx.commit()?;
            Ok(Ok(()))
        })??;
        store.with(|c| store.retain(c))?;
        Ok(store)
    }

    /// Runs `f` on a pooled connection (connecting if none is free); a connection the server
    /// closed is dropped, not pooled again.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> io::Result<T> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self
                .config
                .connect(NoTls)
                .map_err(|e| io::Error::other(format!("{}: cannot connect: {e}", self.shown)))?,
        };
        let result = f(&mut client).map_err(|e| io::Error::other(format!("{}: {e}", self.shown)));
        if !client.is_closed() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL {
                pool.push(client);
            }
        }
        result
    }

    /// Deletes what the retention no longer keeps.
    fn retain(&self, c: &mut Client) -> Result<(), postgres::Error> {
        let keep = i64::try_from(self.retention.keep).unwrap_or(i64::MAX);
        c.execute(
            "DELETE FROM memobuild_builds WHERE seq <= \
             (SELECT seq FROM memobuild_builds ORDER BY seq DESC OFFSET $1 LIMIT 1)",
            &[&keep],
        )?;
        if let Some(cutoff) = self.retention.cutoff_ms() {
            c.execute("DELETE FROM memobuild_builds WHERE at_ms < $1", &[&cutoff])?;
        }
        Ok(())
    }
}

/// Inserts one record unless its id is held, and then its steps; 1 when it was new. Callers
/// hold a transaction.
fn insert(c: &mut impl postgres::GenericClient, row: &Row<'_>) -> Result<u64, postgres::Error> {
    let r = row.record;
    let seq = c.query_opt(
        "INSERT INTO memobuild_builds (id, project, target, status, at_ms, record, day, duration_ms, vertices, cached) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING RETURNING seq",
        &[
            &r.id,
            &r.project,
            &r.target,
            &r.status.as_str(),
            &row.at_ms,
            &row.json,
            &row.day,
            &row.duration_ms,
            &row.vertices,
            &row.cached,
        ],
    )?;
    let Some(seq) = seq else { return Ok(0) };
    let seq: i64 = seq.get(0);
    let step = c.prepare(
        "INSERT INTO memobuild_steps (build_seq, name, cached, duration_ms, reason) VALUES ($1, $2, $3, $4, $5)",
    )?;
    for v in &r.vertices {
        let duration = i64::try_from(v.duration_ms).unwrap_or(i64::MAX);
        c.execute(
            &step,
            &[&seq, &v.name, &i64::from(v.cached), &duration, &v.reason],
        )?;
    }
    Ok(1)
}

/// Runs `sql` with the filter's parameters.
fn rows(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    filter: &Filter,
) -> Result<Vec<postgres::Row>, postgres::Error> {
    c.query(
        sql,
        &[
            &filter.project.as_deref(),
            &filter.status.map(BuildStatus::as_str),
            &aggregate::limit(filter),
            &filter.target.as_deref(),
            &filter.since_ms,
        ],
    )
}

impl Columns for postgres::Row {
    type Error = postgres::Error;
    fn text(&self, i: usize) -> Result<Option<String>, postgres::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<Option<i64>, postgres::Error> {
        self.try_get(i)
    }
}

/// Each of `rows` read by `read`.
fn read_all<T>(
    rows: &[postgres::Row],
    read: impl Fn(&postgres::Row) -> Result<T, postgres::Error>,
) -> Result<Vec<T>, postgres::Error> {
    rows.iter().map(read).collect()
}

impl BuildStore for PostgresStore {
    fn add(&self, record: BuildRecord) -> io::Result<Added> {
        let row = Row::of(&record)?;
        let new = self.with(|c| {
            let mut tx = c.transaction()?;
            let new = insert(&mut tx, &row)?;
            tx.commit()?;
            Ok(new)
        })?;
        if new == 0 {
            return Ok(Added::Duplicate);
        }
        if let Err(e) = self.with(|c| self.retain(c)) {
            tracing::warn!("{e}");
        }
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(&record);
        Ok(Added::New)
    }

    fn insert_all(&self, records: &[BuildRecord]) -> io::Result<usize> {
        let rows = records
            .iter()
            .map(Row::of)
            .collect::<io::Result<Vec<_>>>()?;
        let new = self.with(|c| {
            let mut tx = c.transaction()?;
            let mut new = 0;
            for row in &rows {
                new += insert(&mut tx, row)?;
            }
            tx.commit()?;
            Ok(new)
        })?;
        self.with(|c| self.retain(c))?;
        Ok(usize::try_from(new).unwrap_or(usize::MAX))
    }

    fn get(&self, id: &str) -> io::Result<Option<Arc<BuildRecord>>> {
        let row = self
            .with(|c| c.query_opt("SELECT record FROM memobuild_builds WHERE id = $1", &[&id]))?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    fn query(&self, filter: &Filter) -> io::Result<Vec<Arc<BuildRecord>>> {
        let limit = filter.last.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let project = filter.project.as_deref();
        let status = filter.status.map(BuildStatus::as_str);
        let target = filter.target.as_deref();
        let rows = self.with(|c| {
            c.query(
                "SELECT record FROM memobuild_builds \
                 WHERE ($1::TEXT IS NULL OR project = $1) AND ($2::TEXT IS NULL OR status = $2) \
                   AND ($4::TEXT IS NULL OR target = $4) AND ($5::BIGINT IS NULL OR at_ms >= $5) \
                 ORDER BY seq DESC LIMIT $3",
                &[&project, &status, &limit, &target, &filter.since_ms],
            )
        })?;
        rows.iter().map(|r| decode(r.get(0))).collect()
    }

    fn stats(&self, filter: &Filter) -> io::Result<Stats> {
        let q = &self.queries;
        let rows = self.with(|c| {
            // One snapshot for every query: a record added meanwhile is in all figures or none.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let totals = rows(&mut tx, &q.totals, filter)?
                .first()
                .map(|r| GroupRow::read(r, 0))
                .transpose()?
                .unwrap_or_default();
            let rows = Rows {
                totals,
                targets: read_all(&rows(&mut tx, &q.targets, filter)?, |r| {
                    GroupRow::read(r, 2)
                })?,
                projects: read_all(&rows(&mut tx, &q.projects, filter)?, |r| {
                    GroupRow::read(r, 1)
                })?,
                days: read_all(&rows(&mut tx, &q.days, filter)?, DayRow::read)?,
                steps: read_all(&rows(&mut tx, &q.steps, filter)?, StepRow::read)?,
                reasons: read_all(&rows(&mut tx, &q.reasons, filter)?, ReasonRow::read)?,
            };
            tx.commit()?;
            Ok(rows)
        })?;
        Ok(rows.into_stats())
    }

    fn days(&self, filter: &Filter) -> io::Result<Vec<DayStats>> {
        let rows = self.with(|c| read_all(&rows(c, &self.queries.days, filter)?, DayRow::read))?;
        Ok(aggregate::days(rows))
    }

    fn len(&self) -> io::Result<usize> {
        let n: i64 = self.with(|c| {
            c.query_one("SELECT COUNT(*) FROM memobuild_builds", &[])
                .map(|r| r.get(0))
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn counters(&self) -> BuildCounters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
