//! Where build records live: [`BuildStore`], which the API, the dashboard and `/metrics` read
//! through, and its backend, SQLite ([`sqlite::SqliteStore`]): one file in the server's store
//! (`STORE/builds/builds.db`), write-ahead logged so that readers never wait for the writer.
//! Records older than the retention (by count and by age) are deleted as new ones arrive.
//!
//! Servers before this kept records in a JSON-lines file (`STORE/builds/builds.jsonl`): a store
//! that still holds one imports it once ([`import`]), then renames it `builds.jsonl.imported`.

pub mod import;
pub mod sqlite;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::server::builds::{BuildCounters, BuildRecord, Filter};

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
    /// The record with this id.
    fn get(&self, id: &str) -> io::Result<Option<Arc<BuildRecord>>>;
    /// Records matching `filter`, newest first.
    fn query(&self, filter: &Filter) -> io::Result<Vec<Arc<BuildRecord>>>;
    /// Records held.
    fn len(&self) -> io::Result<usize>;
    /// Totals of the records accepted since the server started, for `/metrics`.
    fn counters(&self) -> BuildCounters;
}

/// Opens the records of the store whose build directory is `dir` (creating it), importing a
/// JSON-lines log of an earlier version found there. Blocks.
pub fn open(dir: &Path, retention: Retention) -> io::Result<Arc<dyn BuildStore>> {
    std::fs::create_dir_all(dir)?;
    let store = sqlite::SqliteStore::open(&dir.join("builds.db"), retention)?;
    import::import_jsonl(dir, &store, retention.keep)?;
    Ok(Arc::new(store))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::server::builds::{BuildStatus, VertexTiming};

    fn record(id: &str, project: &str, status: BuildStatus, received_at: &str) -> BuildRecord {
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
            vertices: vec![VertexTiming {
                name: "RUN make".into(),
                digest: String::new(),
                cached: false,
                duration_ms: 10,
            }],
            received_at: Some(received_at.into()),
        }
    }

    fn now() -> String {
        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
    }

    fn ids(store: &dyn BuildStore, filter: &Filter) -> Vec<String> {
        let records = store.query(filter).unwrap();
        records.iter().map(|r| r.id.clone()).collect()
    }

    const KEEP3: Retention = Retention {
        keep: 3,
        max_age: None,
    };

    // Verifies: records persist across reopening, newest first; a duplicate id changes
    // nothing; only the newest `keep` are held; filters and `last` are served by the database;
    // the counters count what was accepted since start.
    #[test]
    fn records_persist_dedup_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), KEEP3).unwrap();
        for i in 0..5 {
            let status = if i == 3 {
                BuildStatus::Failed
            } else {
                BuildStatus::Succeeded
            };
            let r = record(&format!("b{i}"), &format!("p{}", i % 2), status, &now());
            assert_eq!(store.add(r).unwrap(), Added::New);
        }
        let dup = record("b4", "p0", BuildStatus::Succeeded, &now());
        assert_eq!(store.add(dup).unwrap(), Added::Duplicate);
        assert_eq!(store.len().unwrap(), 3);
        assert!(store.get("b1").unwrap().is_none());
        assert_eq!(
            store.get("b3").unwrap().unwrap().status,
            BuildStatus::Failed
        );
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["b4", "b3", "b2"]);
        let p0 = Filter {
            project: Some("p0".into()),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &p0), ["b4", "b2"]);
        let failed = Filter {
            status: Some(BuildStatus::Failed),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &failed), ["b3"]);
        let last = Filter {
            last: Some(1),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &last), ["b4"]);
        let c = store.counters();
        assert_eq!((c.succeeded, c.failed, c.executed_vertices), (4, 1, 5));
        drop(store);

        let store = open(dir.path(), KEEP3).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["b4", "b3", "b2"]);
        assert_eq!(store.counters().succeeded, 0, "counters are since start");
        // A smaller count at start applies at once.
        drop(store);
        let store = open(
            dir.path(),
            Retention {
                keep: 1,
                max_age: None,
            },
        )
        .unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["b4"]);
    }

    // Verifies: records received longer ago than the age retention are deleted, at start and
    // when a record arrives.
    #[test]
    fn old_records_are_deleted_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), KEEP3).unwrap();
        store
            .add(record(
                "old",
                "p",
                BuildStatus::Succeeded,
                "2020-01-01T00:00:00Z",
            ))
            .unwrap();
        store
            .add(record("new", "p", BuildStatus::Succeeded, &now()))
            .unwrap();
        drop(store);
        let day = Retention {
            keep: 3,
            max_age: Some(Duration::from_secs(86_400)),
        };
        let store = open(dir.path(), day).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["new"]);
    }

    // Verifies: a JSON-lines log of an earlier server is imported once, in order, with a torn
    // last line set aside and a repeated line's id kept once; it is renamed, so a restart
    // imports nothing again; the records then behave as any other.
    #[test]
    fn a_jsonl_log_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = std::fs::File::create(dir.path().join(import::JSONL)).unwrap();
        let lines: Vec<String> = (0..4)
            .map(|i| {
                let r = record(&format!("j{i}"), "p", BuildStatus::Succeeded, &now());
                serde_json::to_string(&r).unwrap()
            })
            .collect();
        for l in &lines {
            writeln!(log, "{l}").unwrap();
        }
        writeln!(log, "{}", lines[0]).unwrap();
        log.write_all(b"{\"id\":\"torn\",\"project\":\"caf\xc3")
            .unwrap();
        drop(log);

        let store = open(dir.path(), KEEP3).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["j3", "j2", "j1"]);
        assert!(!dir.path().join(import::JSONL).exists());
        assert!(dir.path().join(import::IMPORTED).exists());
        let aside = std::fs::read(dir.path().join("builds.bad.jsonl")).unwrap();
        assert!(aside.starts_with(b"{\"id\":\"torn\""));
        store
            .add(record("n", "p", BuildStatus::Failed, &now()))
            .unwrap();
        drop(store);
        let store = open(dir.path(), KEEP3).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["n", "j3", "j2"]);
    }

    // Verifies: a database written by a newer schema than this server knows is refused with a
    // message saying so, not misread.
    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), KEEP3).unwrap());
        let conn = rusqlite::Connection::open(dir.path().join("builds.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = open(dir.path(), KEEP3).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
