//! The same behaviour asked of every backend: SQLite always, PostgreSQL when the tests have one
//! (`MEMOBUILD_TEST_POSTGRES`, a server `hack/test.sh` starts; each test gets a database of
//! its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
            reason: None,
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

/// One backend under test: a store directory and, for PostgreSQL, the database's URL.
struct Backend {
    name: &'static str,
    dir: tempfile::TempDir,
    database: Option<String>,
}

impl Backend {
    fn open(&self, retention: Retention) -> io::Result<Arc<dyn BuildStore>> {
        open(self.dir.path(), self.database.as_deref(), retention)
    }
}

/// A fresh SQLite store, and a fresh PostgreSQL database when the tests have a server (under
/// CI they must).
fn backends() -> Vec<Backend> {
    let mut all = vec![Backend {
        name: "sqlite",
        dir: tempfile::tempdir().unwrap(),
        database: None,
    }];
    match std::env::var("MEMOBUILD_TEST_POSTGRES") {
        Ok(base) => {
            let name = format!("mb_{}", uuid::Uuid::new_v4().simple());
            let mut admin = ::postgres::Client::connect(&base, ::postgres::NoTls).unwrap();
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
            let mut url = reqwest::Url::parse(&base).unwrap();
            url.set_path(&name);
            all.push(Backend {
                name: "postgres",
                dir: tempfile::tempdir().unwrap(),
                database: Some(url.to_string()),
            });
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("MEMOBUILD_TEST_POSTGRES not set under CI: run the tests through hack/test.sh")
        }
        Err(_) => eprintln!("SKIPPED PostgreSQL: MEMOBUILD_TEST_POSTGRES not set"),
    }
    all
}

// Verifies: records persist across reopening, newest first; a duplicate id changes nothing;
// only the newest `keep` are held; filters and `last` are served by the database; the counters
// count what was accepted since start; a smaller count at start applies at once.
#[test]
fn records_persist_dedup_and_keep_the_newest() {
    for b in backends() {
        let store = b.open(KEEP3).unwrap();
        for i in 0..5 {
            let status = if i == 3 {
                BuildStatus::Failed
            } else {
                BuildStatus::Succeeded
            };
            let r = record(&format!("b{i}"), &format!("p{}", i % 2), status, &now());
            assert_eq!(store.add(r).unwrap(), Added::New, "{}", b.name);
        }
        let dup = record("b4", "p0", BuildStatus::Succeeded, &now());
        assert_eq!(store.add(dup).unwrap(), Added::Duplicate, "{}", b.name);
        assert_eq!(store.len().unwrap(), 3, "{}", b.name);
        assert!(store.get("b1").unwrap().is_none(), "{}", b.name);
        assert_eq!(
            store.get("b3").unwrap().unwrap().status,
            BuildStatus::Failed
        );
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["b4", "b3", "b2"]);
        let p0 = Filter {
            project: Some("p0".into()),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &p0), ["b4", "b2"], "{}", b.name);
        let failed = Filter {
            status: Some(BuildStatus::Failed),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &failed), ["b3"], "{}", b.name);
        let last = Filter {
            last: Some(1),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &last), ["b4"], "{}", b.name);
        let c = store.counters();
        assert_eq!((c.succeeded, c.failed, c.executed_vertices), (4, 1, 5));
        drop(store);

        let store = b.open(KEEP3).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["b4", "b3", "b2"]);
        assert_eq!(store.counters().succeeded, 0, "counters are since start");
        drop(store);
        let one = Retention {
            keep: 1,
            max_age: None,
        };
        let store = b.open(one).unwrap();
        assert_eq!(
            ids(store.as_ref(), &Filter::default()),
            ["b4"],
            "{}",
            b.name
        );
    }
}

// Verifies: records received longer ago than the age retention are deleted.
#[test]
fn old_records_are_deleted_by_age() {
    for b in backends() {
        let store = b.open(KEEP3).unwrap();
        let old = record("old", "p", BuildStatus::Succeeded, "2020-01-01T00:00:00Z");
        store.add(old).unwrap();
        store
            .add(record("new", "p", BuildStatus::Succeeded, &now()))
            .unwrap();
        drop(store);
        let day = Retention {
            keep: 3,
            max_age: Some(Duration::from_secs(86_400)),
        };
        let store = b.open(day).unwrap();
        assert_eq!(
            ids(store.as_ref(), &Filter::default()),
            ["new"],
            "{}",
            b.name
        );
    }
}

// Verifies: a JSON-lines log of an earlier server is imported once, in order, with a torn last
// line set aside and a repeated line's id kept once; it is renamed, so a restart imports
// nothing again; the records then behave as any other.
#[test]
fn a_jsonl_log_is_imported_once() {
    for b in backends() {
        let mut log = std::fs::File::create(b.dir.path().join(import::JSONL)).unwrap();
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

        let store = b.open(KEEP3).unwrap();
        assert_eq!(ids(store.as_ref(), &Filter::default()), ["j3", "j2", "j1"]);
        assert!(!b.dir.path().join(import::JSONL).exists());
        assert!(b.dir.path().join(import::IMPORTED).exists());
        let aside = std::fs::read(b.dir.path().join("builds.bad.jsonl")).unwrap();
        assert!(aside.starts_with(b"{\"id\":\"torn\""));
        store
            .add(record("n", "p", BuildStatus::Failed, &now()))
            .unwrap();
        drop(store);
        let store = b.open(KEEP3).unwrap();
        assert_eq!(
            ids(store.as_ref(), &Filter::default()),
            ["n", "j3", "j2"],
            "{}",
            b.name
        );
    }
}

// Verifies: a database written by a newer schema than this server knows is refused with a
// message saying so, not misread.
#[test]
fn a_newer_schema_is_refused() {
    for b in backends() {
        drop(b.open(KEEP3).unwrap());
        match &b.database {
            None => {
                let db = b.dir.path().join("builds.db");
                let conn = rusqlite::Connection::open(db).unwrap();
                conn.pragma_update(None, "user_version", 99).unwrap();
            }
            Some(url) => {
                let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
                c.batch_execute("UPDATE memobuild_schema SET version = 99")
                    .unwrap();
            }
        }
        let err = b.open(KEEP3).unwrap_err().to_string();
        assert!(err.contains("newer"), "{}: {err}", b.name);
    }
}

// Verifies: two servers over one PostgreSQL database (replicas) see each other's records at
// once, and a record posted to both is stored once.
#[test]
fn replicas_share_one_postgres_database() {
    let Some(b) = backends().into_iter().find(|b| b.database.is_some()) else {
        return;
    };
    let one = b.open(KEEP3).unwrap();
    let two = b.open(KEEP3).unwrap();
    let r = record("shared", "p", BuildStatus::Succeeded, &now());
    assert_eq!(one.add(r.clone()).unwrap(), Added::New);
    assert_eq!(two.add(r).unwrap(), Added::Duplicate);
    assert_eq!(two.get("shared").unwrap().unwrap().project, "p");
    assert_eq!(two.len().unwrap(), 1);
}

// Verifies: a `--database` that is not a PostgreSQL URL is refused, naming the flag, with any
// password hidden.
#[test]
fn a_bad_database_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(dir.path(), Some("mysql://u:secret@h/db"), KEEP3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--database") && !err.contains("secret"),
        "{err}"
    );
}

// Verifies: `target` and `since` filters are served by the database; a database made by the
// first schema version (records without the target column) is migrated, the targets of its
// records filled in from the records themselves.
#[test]
fn targets_and_windows_filter_and_old_schemas_migrate() {
    for b in backends() {
        // The first schema, with one record of target `prod`, as an earlier server left it.
        let mut old = record("v1", "p", BuildStatus::Succeeded, &now());
        old.target = Some("prod".into());
        old.vertices[0].reason = Some("file `a` changed".into());
        old.vertices.push(VertexTiming {
            name: "COPY . .".into(),
            digest: String::new(),
            cached: true,
            duration_ms: 3,
            reason: None,
        });
        let row = Row::of(&old).unwrap();
        let (at, json) = (row.at_ms, &row.json);
        match &b.database {
            None => {
                let conn = rusqlite::Connection::open(b.dir.path().join("builds.db")).unwrap();
                conn.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
                conn.pragma_update(None, "user_version", 1).unwrap();
                conn.execute(
                    "INSERT INTO builds (id, project, status, at_ms, record) VALUES ('v1', 'p', 'succeeded', ?1, ?2)",
                    rusqlite::params![at, json],
                )
                .unwrap();
            }
            Some(url) => {
                let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
                c.batch_execute(postgres::MIGRATIONS[0]).unwrap();
                c.batch_execute(
                    "CREATE TABLE memobuild_schema (version INTEGER NOT NULL);
                     INSERT INTO memobuild_schema (version) VALUES (1);",
                )
                .unwrap();
                c.execute(
                    "INSERT INTO memobuild_builds (id, project, status, at_ms, record) VALUES ('v1', 'p', 'succeeded', $1, $2)",
                    &[&at, json],
                )
                .unwrap();
            }
        }
        let store = b.open(KEEP3).unwrap();
        let mut dev = record("dev", "p", BuildStatus::Succeeded, &now());
        dev.target = Some("dev".into());
        store.add(dev).unwrap();
        let stale = record("stale", "p", BuildStatus::Succeeded, "2020-01-01T00:00:00Z");
        store.add(stale).unwrap();
        let prod = Filter {
            target: Some("prod".into()),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &prod), ["v1"], "{}", b.name);
        let day = Filter {
            since_ms: Some(ago_ms(Duration::from_secs(86_400))),
            ..Filter::default()
        };
        assert_eq!(ids(store.as_ref(), &day), ["dev", "v1"], "{}", b.name);
        // Migration 3 filled in the aggregated columns and steps of the old record too.
        for f in [Filter::default(), prod] {
            assert_eq!(
                store.stats(&f).unwrap(),
                reference(store.as_ref(), &f),
                "{}",
                b.name
            );
        }
    }
}

/// [`crate::server::builds::stats`] over the records `filter` selects: what the database's
/// aggregates must equal.
fn reference(store: &dyn BuildStore, filter: &Filter) -> crate::server::builds::Stats {
    let records = store.query(filter).unwrap();
    crate::server::builds::stats(records.iter().map(|r| r.as_ref()))
}

// Verifies: `/api/stats` computed by the database (records::aggregate) equals the reference
// computed over the records, for every filter, on both backends: counts, nearest-rank
// percentiles (with ties), per-project and per-target groups in byte order (names whose
// order differs between collations), per-day hit rates, the slowest steps and their most
// frequent reasons, an empty selection; and it follows the retention (steps go with builds).
#[test]
fn database_aggregates_equal_the_reference() {
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let projects = ["api", "Zed", "web", "\u{e4}pfel", "_x"];
    let targets = [None, Some("prod"), Some("Dev")];
    let steps = [
        "[1/3] FROM base",
        "[2/3] RUN make",
        "[3/3] COPY . /app",
        "RUN test",
    ];
    let reasons = [
        None,
        Some("file `a.c` changed"),
        Some("build arg `V` changed"),
    ];
    let mut records = Vec::new();
    for i in 0..400 {
        let status = if next(10) == 0 {
            BuildStatus::Failed
        } else {
            BuildStatus::Succeeded
        };
        let mut r = record(
            &format!("b{i:04}"),
            projects[next(5) as usize],
            status,
            &now(),
        );
        r.target = targets[next(3) as usize].map(str::to_owned);
        r.duration_ms = next(50) * 100 + next(3);
        r.started_at = format!("2026-11-{:02}T10:00:00Z", 10 + next(12));
        r.vertices = (0..next(6))
            .map(|_| {
                let cached = next(3) == 0;
                VertexTiming {
                    name: steps[next(4) as usize].into(),
                    digest: String::new(),
                    cached,
                    duration_ms: next(5000),
                    reason: if cached {
                        None
                    } else {
                        reasons[next(3) as usize].map(str::to_owned)
                    },
                }
            })
            .collect();
        records.push(r);
    }
    for b in backends() {
        let store = b
            .open(Retention {
                keep: 350,
                max_age: None,
            })
            .unwrap();
        for r in &records {
            store.add(r.clone()).unwrap();
        }
        assert_eq!(store.len().unwrap(), 350, "{}", b.name);
        let filters = [
            Filter::default(),
            Filter {
                project: Some("Zed".into()),
                ..Filter::default()
            },
            Filter {
                target: Some("prod".into()),
                ..Filter::default()
            },
            Filter {
                status: Some(BuildStatus::Failed),
                ..Filter::default()
            },
            Filter {
                last: Some(37),
                ..Filter::default()
            },
            Filter {
                since_ms: Some(ago_ms(Duration::from_secs(3600))),
                project: Some("api".into()),
                ..Filter::default()
            },
            Filter {
                project: Some("none".into()),
                ..Filter::default()
            },
        ];
        for f in &filters {
            let got = store.stats(f).unwrap();
            assert_eq!(got, reference(store.as_ref(), f), "{} {f:?}", b.name);
            assert_eq!(store.days(f).unwrap(), got.days, "{} {f:?}", b.name);
        }
        let all = store.stats(&Filter::default()).unwrap();
        assert_eq!(all.builds, 350, "{}", b.name);
        assert!(all.slowest_steps[0].reasons.len() > 1, "{all:?}");
        assert!(all.projects.len() == 5 && all.targets.len() > 5, "{all:?}");
        let empty = store
            .stats(&Filter {
                project: Some("none".into()),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!((empty.builds, empty.duration_ms.p50), (0, None));
        // The steps of the 50 builds the retention deleted went with them.
        let (steps, vertices): (i64, i64) = match &b.database {
            None => {
                let c = rusqlite::Connection::open(b.dir.path().join("builds.db")).unwrap();
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM steps), (SELECT SUM(vertices) FROM builds)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
            }
            Some(url) => {
                let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
                let r = c
                    .query_one(
                        "SELECT (SELECT COUNT(*) FROM memobuild_steps), \
                         (SELECT CAST(SUM(vertices) AS BIGINT) FROM memobuild_builds)",
                        &[],
                    )
                    .unwrap();
                (r.get(0), r.get(1))
            }
        };
        assert_eq!(steps, vertices, "{}", b.name);
        assert_eq!(usize::try_from(vertices).unwrap(), all.vertices);
    }
}
