//! Where build records live: [`BuildStore`], which the API, the dashboard and `/metrics` read
//! through, and its backends: SQLite ([`sqlite::SqliteStore`], the default), one file in the
//! server's store (`STORE/builds/builds.db`), write-ahead logged so that readers never wait for
//! the writer; and PostgreSQL ([`postgres::PostgresStore`], `--database postgres://…`) for
//! several server replicas over one database. Records older than the retention (by count and
//! by age) are deleted as new ones arrive.
//!
//! Servers before this kept records in a JSON-lines file (`STORE/builds/builds.jsonl`): a store
//! that still holds one imports it once ([`import`]), then renames it `builds.jsonl.imported`.

mod aggregate;
pub mod import;
pub mod postgres;
pub mod sqlite;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::server::builds::{BuildCounters, BuildRecord, DayStats, Filter, Stats};

/// Which records are kept: the newest `keep`, and none received longer than `max_age` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records kept at most (at least 1).
    pub keep: usize,
    /// Records received longer ago than this are deleted.
    pub max_age: Option<Duration>,
}

/// What [`BuildStore::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new record.
    New,
    /// A record with this id is held already; nothing changed.
    Duplicate,
}

/// The build records. Every method blocks (disk): call them on the blocking pool.
pub trait BuildStore: Send + Sync + std::fmt::Debug {
    /// Stores a record, durable before this returns; applies the retention.
    fn add(&self, record: BuildRecord) -> io::Result<Added>;
    /// Stores records in one transaction (an import), skipping ids held already; how many
    /// were new. The retention is applied once, at the end.
    fn insert_all(&self, records: &[BuildRecord]) -> io::Result<usize>;
    /// The record with this id.
    fn get(&self, id: &str) -> io::Result<Option<Arc<BuildRecord>>>;
    /// Records matching `filter`, newest first.
    fn query(&self, filter: &Filter) -> io::Result<Vec<Arc<BuildRecord>>>;
    /// Aggregates over the records matching `filter`, computed by the database.
    fn stats(&self, filter: &Filter) -> io::Result<Stats>;
    /// Only [`Stats::days`] of those (the dashboard's longer window).
    fn days(&self, filter: &Filter) -> io::Result<Vec<DayStats>>;
    /// Records held.
    fn len(&self) -> io::Result<usize>;
    /// Totals of the records accepted since the server started, for `/metrics`.
    fn counters(&self) -> BuildCounters;
}

/// Milliseconds since the epoch of an RFC 3339 time; 0 for one that does not parse (records
/// are validated when received, so only a hand-edited import can get here).
fn epoch_ms(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .map_or(0, millis_since_epoch)
}

/// `t` in milliseconds since the epoch (0 before it).
fn millis_since_epoch(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the epoch of the time `ago` before now (0 before the epoch).
pub fn ago_ms(ago: Duration) -> i64 {
    std::time::SystemTime::now()
        .checked_sub(ago)
        .map_or(0, millis_since_epoch)
}

impl Retention {
    /// Records received before this (milliseconds since the epoch) are too old to keep.
    fn cutoff_ms(&self) -> Option<i64> {
        self.max_age.map(ago_ms)
    }
}

/// A record as both backends store it: the columns queries filter and order by, and the whole
/// record as JSON.
struct Row<'a> {
    record: &'a BuildRecord,
    /// When it was received (or, for an imported one without that, when it started): what
    /// the age retention and `since` compare.
    at_ms: i64,
    json: String,
    /// `started_at`'s date, what per-day figures group by.
    day: &'a str,
    duration_ms: i64,
    vertices: i64,
    cached: i64,
}

impl<'a> Row<'a> {
    fn of(record: &'a BuildRecord) -> io::Result<Row<'a>> {
        Ok(Row {
            record,
            at_ms: epoch_ms(record.received_at.as_deref().unwrap_or(&record.started_at)),
            json: serde_json::to_string(record).map_err(io::Error::other)?,
            day: record.started_at.get(..10).unwrap_or(&record.started_at),
            duration_ms: i64::try_from(record.duration_ms).unwrap_or(i64::MAX),
            vertices: i64::try_from(record.vertices.len()).unwrap_or(i64::MAX),
            cached: i64::try_from(record.cached()).unwrap_or(i64::MAX),
        })
    }
}

/// A stored `record` column back into a record.
fn decode(json: &str) -> io::Result<Arc<BuildRecord>> {
    serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| io::Error::other(format!("a stored build record does not parse: {e}")))
}

/// Refuses a schema version newer than the `known` migrations of database `shown`.
fn check_schema(shown: &dyn std::fmt::Display, version: usize, known: usize) -> io::Result<()> {
    if version > known {
        return Err(io::Error::other(format!(
            "{shown}: schema version {version} is newer than this server knows ({known}): a newer MemoBuild wrote it"
        )));
    }
    Ok(())
}

/// Opens the records: in `database` (a `postgres://` URL) when given, else in SQLite in the
/// store's build directory `dir` (created); a JSON-lines log of an earlier version found in
/// `dir` is imported either way. Blocks.
pub fn open(
    dir: &Path,
    database: Option<&str>,
    retention: Retention,
) -> io::Result<Arc<dyn BuildStore>> {
    std::fs::create_dir_all(dir)?;
    let retention = Retention {
        keep: retention.keep.max(1),
        ..retention
    };
    let store: Arc<dyn BuildStore> = match database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(postgres::PostgresStore::connect(url, retention)?)
        }
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--database `{}`: expected a postgres://USER@HOST:PORT/DB URL (without it, records are kept in SQLite in the store)",
                    crate::gitctx::redact(other)
                ),
            ));
        }
        None => Arc::new(sqlite::SqliteStore::open(
            &dir.join("builds.db"),
            retention,
        )?),
    };
    import::import_jsonl(dir, store.as_ref(), retention.keep)?;
    Ok(store)
}

#[cfg(test)]
mod tests;
