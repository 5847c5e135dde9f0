//! Build records in SQLite: a table of records (the whole record as JSON beside the columns
//! queries filter and order by), write-ahead logged, `synchronous=FULL` (a record the client was
//! told is stored survives a power cut), schema versions in `PRAGMA user_version` applied in
//! order by [`MIGRATIONS`].
//!
//! One writer connection behind a mutex; readers take a read-only connection from a small pool,
//! so a query over thousands of records never waits for an append, nor an append for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::aggregate::{self, Columns, DayRow, GroupRow, Queries, ReasonRow, Rows, StepRow};
use super::{Added, BuildStore, Retention, Row, decode};
use crate::server::builds::{BuildCounters, BuildRecord, BuildStatus, DayStats, Filter, Stats};

/// Schema changes, in order; the database's `user_version` is how many have been applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the records. `seq` orders them (newest last, as received); `at_ms` is when the
    // server received it (or, for imported records without that, when the build started).
    "CREATE TABLE builds (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        status TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX builds_by_project ON builds (project, seq);
    CREATE INDEX builds_by_status ON builds (status, seq);
    CREATE INDEX builds_by_age ON builds (at_ms);",
    // 2: the target, for per-target queries, filled in from the records already held.
    "ALTER TABLE builds ADD COLUMN target TEXT;
    UPDATE builds SET target = json_extract(record, '$.target');
    CREATE INDEX builds_by_target ON builds (project, target, seq);",
    // 3: what `/api/stats` aggregates in SQL (`aggregate.rs`): per build its wall time, step
    // counts and day; per step (a `steps` row, deleted with its build) its name, whether it
    // was cached, its time and why it ran. Filled in from the records already held.
    "ALTER TABLE builds ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN vertices INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN day TEXT NOT NULL DEFAULT '';
    CREATE TABLE steps (
        build_seq INTEGER NOT NULL REFERENCES builds (seq) ON DELETE CASCADE,
        name TEXT NOT NULL,
        cached INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        reason TEXT
    );
    CREATE INDEX steps_by_build ON steps (build_seq);
    INSERT INTO steps (build_seq, name, cached, duration_ms, reason)
        SELECT b.seq, COALESCE(json_extract(v.value, '$.name'), ''),
            CASE WHEN json_extract(v.value, '$.cached') THEN 1 ELSE 0 END,
            COALESCE(json_extract(v.value, '$.duration_ms'), 0), json_extract(v.value, '$.reason')
        FROM builds b, json_each(b.record, '$.vertices') v;
    UPDATE builds SET
        duration_ms = COALESCE(json_extract(record, '$.duration_ms'), 0),
        vertices = (SELECT COUNT(*) FROM steps WHERE build_seq = builds.seq),
        cached = (SELECT COUNT(*) FROM steps WHERE build_seq = builds.seq AND cached = 1),
        day = COALESCE(substr(json_extract(record, '$.started_at'), 1, 10), '');",
];

/// Readers kept open for reuse.
const READERS: usize = 4;

/// The SQLite backend.
pub struct SqliteStore {
    path: PathBuf,
    retention: Retention,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    counters: Mutex<BuildCounters>,
    queries: Queries,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// An SQLite error as an I/O error naming the database.
fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("{}: {what}: {e}", path.display()))
}

impl SqliteStore {
    /// Opens (creating) the database at `path` and brings its schema up to date. Blocks.
    pub fn open(path: &Path, retention: Retention) -> io::Result<SqliteStore> {
        let err = |what: &str| {
            let what = what.to_owned();
            move |e| db_err(path, &what, e)
        };
        let mut conn = Connection::open(path).map_err(err("opening"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(err("setting the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("enabling the write-ahead log"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("setting synchronous"))?;
        // A build's `steps` rows go with it (the retention deletes builds only).
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err("enabling foreign keys"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err("reading the schema version"))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        super::check_schema(&path.display(), version, MIGRATIONS.len())?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(err("starting a migration"))?;
            tx.execute_batch(sql).map_err(err("migrating the schema"))?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )
            .map_err(err("recording the schema version"))?;
            tx.commit().map_err(err("committing a migration"))?;
            tracing::info!(db = %path.display(), version = i + 1, "build records: schema migrated");
        }
        let store = SqliteStore {
            path: path.to_owned(),
            retention,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            counters: Mutex::new(BuildCounters::default()),
            queries: Queries::new("builds", "steps", false),
        };
        {
            let conn = store.writer();
            store.retain(&conn)?;
        }
        Ok(store)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A connection is usable after a panic elsewhere: SQLite rolls back what was open.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a read-only connection from the pool (opening one if none is free).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> io::Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| db_err(&self.path, "opening a reader", e))?;
                c.busy_timeout(Duration::from_secs(5))
                    .map_err(|e| db_err(&self.path, "setting the busy timeout", e))?;
                c
            }
        };
        let result = f(&conn).map_err(|e| db_err(&self.path, "reading", e));
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }

    /// Deletes what the retention no longer keeps.
    fn retain(&self, conn: &Connection) -> io::Result<()> {
        let keep = i64::try_from(self.retention.keep).unwrap_or(i64::MAX);
        conn.execute(
            "DELETE FROM builds WHERE seq <= (SELECT seq FROM builds ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
            params![keep],
        )
        .map_err(|e| db_err(&self.path, "applying the retention", e))?;
        if let Some(cutoff) = self.retention.cutoff_ms() {
            conn.execute("DELETE FROM builds WHERE at_ms < ?1", params![cutoff])
                .map_err(|e| db_err(&self.path, "applying the retention", e))?;
        }
        Ok(())
    }
}

/// `INSERT OR IGNORE`s one record and, when it was new, its steps; 1 when it was new. Callers
/// hold a transaction, or run it on the writer alone.
fn insert(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<usize> {
    let r = row.record;
    let new = conn.execute(
        "INSERT OR IGNORE INTO builds (id, project, target, status, at_ms, record, day, duration_ms, vertices, cached)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            r.id,
            r.project,
            r.target,
            r.status.as_str(),
            row.at_ms,
            row.json,
            row.day,
            row.duration_ms,
            row.vertices,
            row.cached
        ],
    )?;
    if new == 0 {
        return Ok(0);
    }
    let seq = conn.last_insert_rowid();
    let mut step = conn.prepare_cached(
        "INSERT INTO steps (build_seq, name, cached, duration_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for v in &r.vertices {
        step.execute(params![
            seq,
            v.name,
            i64::from(v.cached),
            i64::try_from(v.duration_ms).unwrap_or(i64::MAX),
            v.reason
        ])?;
    }
    Ok(new)
}

/// Runs `sql` with the filter's parameters, one `T` per row.
fn rows<T>(
    c: &Connection,
    sql: &str,
    filter: &Filter,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(
        params![
            filter.project.as_deref(),
            filter.status.map(BuildStatus::as_str),
            aggregate::limit(filter).unwrap_or(-1),
            filter.target.as_deref(),
            filter.since_ms
        ],
        f,
    )?;
    rows.collect()
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
}

impl BuildStore for SqliteStore {
    fn add(&self, record: BuildRecord) -> io::Result<Added> {
        let row = Row::of(&record)?;
        let mut conn = self.writer();
        let store = |conn: &mut Connection| {
            let tx = conn.transaction()?;
            let new = insert(&tx, &row)?;
            tx.commit()?;
            Ok(new)
        };
        let new = store(&mut conn).map_err(|e| db_err(&self.path, "storing a record", e))?;
        if new == 0 {
            return Ok(Added::Duplicate);
        }
        if let Err(e) = self.retain(&conn) {
            // The record is stored; older ones stay a little longer.
            tracing::warn!("{e}");
        }
        drop(conn);
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
        let mut conn = self.writer();
        let err = |e| db_err(&self.path, "importing records", e);
        let tx = conn.transaction().map_err(err)?;
        let mut new = 0;
        for row in &rows {
            new += insert(&tx, row).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        self.retain(&conn)?;
        Ok(new)
    }

    fn get(&self, id: &str) -> io::Result<Option<Arc<BuildRecord>>> {
        let json: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT record FROM builds WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()
        })?;
        json.as_deref().map(decode).transpose()
    }

    fn query(&self, filter: &Filter) -> io::Result<Vec<Arc<BuildRecord>>> {
        let limit = filter
            .last
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT record FROM builds
                 WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR status = ?2)
                   AND (?4 IS NULL OR target = ?4) AND (?5 IS NULL OR at_ms >= ?5)
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    filter.project.as_deref(),
                    filter.status.map(BuildStatus::as_str),
                    limit,
                    filter.target.as_deref(),
                    filter.since_ms
                ],
                |row| row.get(0),
            )?;
            rows.collect()
        })?;
        rows.iter().map(|json| decode(json)).collect()
    }

    fn stats(&self, filter: &Filter) -> io::Result<Stats> {
        let q = &self.queries;
        let rows = self.read(|c| {
            // One snapshot for every query: a record added meanwhile is in all figures or none.
            c.execute_batch("BEGIN")?;
            let result = (|| {
                let totals = rows(c, &q.totals, filter, |r| GroupRow::read(r, 0))?
                    .pop()
                    .unwrap_or_default();
                Ok(Rows {
                    totals,
                    targets: rows(c, &q.targets, filter, |r| GroupRow::read(r, 2))?,
                    projects: rows(c, &q.projects, filter, |r| GroupRow::read(r, 1))?,
                    days: rows(c, &q.days, filter, |r| DayRow::read(r))?,
                    steps: rows(c, &q.steps, filter, |r| StepRow::read(r))?,
                    reasons: rows(c, &q.reasons, filter, |r| ReasonRow::read(r))?,
                })
            })();
            c.execute_batch("COMMIT")?;
            result
        })?;
        Ok(rows.into_stats())
    }

    fn days(&self, filter: &Filter) -> io::Result<Vec<DayStats>> {
        let rows = self.read(|c| rows(c, &self.queries.days, filter, |r| DayRow::read(r)))?;
        Ok(aggregate::days(rows))
    }

    fn len(&self) -> io::Result<usize> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM builds", [], |r| r.get::<_, i64>(0)))
            .map(|n| usize::try_from(n).unwrap_or(0))
    }

    fn counters(&self) -> BuildCounters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
