//! The store backend a test runs `quiesce serve` on — embedded SQLite in
//! the data directory, or a PostgreSQL database of the test's own (see
//! `pg`) — and the database read directly, the same way for both: one
//! query in SQL that both dialects share, its rows as text (with
//! `rusqlite` for SQLite, with `psql` for PostgreSQL).
//!
//! [`both_backends!`] turns one test body into a test per backend, so
//! that the API's promises are checked on each (the conformance suite).
//!
//! Each [`Serve`] keeps a data directory of its own whatever the backend:
//! with PostgreSQL it holds `listen.addr` and the summary files, and the
//! reports are in the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::db::open_db;
use super::pg::{Database, pg_cluster};
use super::serve::Serve;

/// Where `quiesce serve` keeps its reports.
pub enum Backend {
    /// Embedded SQLite, `quiesce.db` in the data directory (the default).
    Sqlite,
    /// A fresh PostgreSQL database of this test's own
    /// (`--database-url`).
    Postgres(Database),
}

/// A report's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub attempts: i64,
    pub has_result: bool,
}

impl Backend {
    /// A fresh database in the test binary's PostgreSQL cluster; `None`
    /// (after a loud `SKIPPED:` line; a panic with `CI` set) when there
    /// are no server binaries.
    #[track_caller]
    pub fn postgres() -> Option<Backend> {
        pg_cluster().map(|cluster| Backend::Postgres(cluster.database()))
    }

    /// This backend with its text ordered by the ICU collation of
    /// `icu_locale` (`en-US`), as in a database made with a language's
    /// locale rather than `C`: with PostgreSQL, a fresh database made so
    /// in the same cluster (`LOCALE_PROVIDER icu`); SQLite has no
    /// database collation (text compares by its bytes): unchanged.
    #[track_caller]
    pub fn collated(self, icu_locale: &str) -> Backend {
        match self {
            Backend::Sqlite => Backend::Sqlite,
            Backend::Postgres(_) => {
                let cluster = pg_cluster().expect("the cluster of this database");
                Backend::Postgres(cluster.database_with(&format!(
                    "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"
                )))
            }
        }
    }

    /// `sqlite` or `postgres`, for temporary directories and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The database's URL (PostgreSQL), `None` for SQLite.
    pub fn database_url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(db) => Some(db.url()),
        }
    }

    /// Starts `quiesce serve` with `data_dir` and `extra` on this backend
    /// (`--database-url <url>` added for PostgreSQL), as [`Serve::start`].
    #[track_caller]
    pub fn serve(&self, data_dir: &Path, extra: &[&str]) -> Serve {
        match self {
            Backend::Sqlite => Serve::start(data_dir, extra),
            Backend::Postgres(db) => {
                let url = db.url();
                let mut args = vec!["--database-url", url.as_str()];
                args.extend_from_slice(extra);
                let serve = Serve::start(data_dir, &args);
                // The reports are in PostgreSQL, not in a file beside.
                assert!(
                    !data_dir.join("quiesce.db").exists(),
                    "with --database-url, quiesce.db was made in {}",
                    data_dir.display()
                );
                serve
            }
        }
    }

    /// The rows of `sql` (one statement, in SQL both dialects take), each
    /// a list of its columns as text: integers in decimal, NULL as an
    /// empty string (as `psql` prints them). `data_dir` is the server's
    /// (SQLite's file is in it; unused with PostgreSQL).
    #[track_caller]
    pub fn select(&self, data_dir: &Path, sql: &str) -> Vec<Vec<String>> {
        match self {
            Backend::Postgres(db) => db.query(sql),
            Backend::Sqlite => {
                use rusqlite::types::ValueRef;
                let db = open_db(data_dir);
                let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
                let columns = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| {
                        (0..columns)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    ValueRef::Null => String::new(),
                                    ValueRef::Integer(n) => n.to_string(),
                                    ValueRef::Real(x) => x.to_string(),
                                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                    ValueRef::Blob(_) => panic!("{sql:?}: a blob in column {i}"),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<String>>>()
                    })
                    .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
                rows.map(|row| row.unwrap_or_else(|e| panic!("{sql:?}: a row: {e}")))
                    .collect()
            }
        }
    }

    /// The single value `sql` returns (panics unless one row of one
    /// column).
    #[track_caller]
    pub fn scalar(&self, data_dir: &Path, sql: &str) -> String {
        let rows = self.select(data_dir, sql);
        match <[Vec<String>; 1]>::try_from(rows) {
            Ok([row]) if row.len() == 1 => row.into_iter().next().expect("one column"),
            Ok([row]) => panic!("{sql:?}: one value expected, got the row {row:?}"),
            Err(rows) => panic!("{sql:?}: one row expected, got {rows:?}"),
        }
    }

    /// The ids of the reports claimed (`claimed_by` set), sorted.
    #[track_caller]
    pub fn claimed(&self, data_dir: &Path) -> Vec<String> {
        self.select(
            data_dir,
            "SELECT report_id FROM reports WHERE claimed_by IS NOT NULL ORDER BY report_id",
        )
        .into_iter()
        .map(|row| row.into_iter().next().expect("one column"))
        .collect()
    }

    /// Every report row by id, and the number of rows (to show none is
    /// stored twice).
    #[track_caller]
    pub fn rows(&self, data_dir: &Path) -> (HashMap<String, Row>, usize) {
        let rows = self.select(
            data_dir,
            "SELECT report_id, status, attempts, CASE WHEN result IS NULL THEN 0 ELSE 1 END \
             FROM reports",
        );
        let count = rows.len();
        let map = rows
            .into_iter()
            .map(|row| match <[String; 4]>::try_from(row) {
                Ok([id, status, attempts, has_result]) => (
                    id,
                    Row {
                        status,
                        attempts: attempts
                            .parse()
                            .unwrap_or_else(|e| panic!("attempts {attempts:?}: {e}")),
                        has_result: has_result == "1",
                    },
                ),
                Err(row) => panic!("a report row of four columns expected: {row:?}"),
            })
            .collect();
        (map, count)
    }

    /// Rows per `report_id` (the table's primary key says 1; this checks).
    #[track_caller]
    pub fn copies(&self, data_dir: &Path) -> BTreeMap<String, i64> {
        self.select(
            data_dir,
            "SELECT report_id, COUNT(*) FROM reports GROUP BY report_id",
        )
        .into_iter()
        .map(|row| match <[String; 2]>::try_from(row) {
            Ok([id, n]) => (id, n.parse().expect("a count")),
            Err(row) => panic!("(report_id, count) expected: {row:?}"),
        })
        .collect()
    }

    /// Waits (within `limit`) until no report is `queued` in the
    /// database; returns the rows.
    #[track_caller]
    pub fn wait_none_queued(&self, data_dir: &Path, limit: Duration) -> HashMap<String, Row> {
        let give_up = Instant::now() + limit;
        loop {
            let (rows, _) = self.rows(data_dir);
            let queued = rows.values().filter(|r| r.status == "queued").count();
            if queued == 0 {
                return rows;
            }
            assert!(
                Instant::now() < give_up,
                "{queued} report(s) still queued after {limit:?} ({})",
                self.name()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `enrollment` table: `(site_id, patient_id)` pairs.
    #[track_caller]
    pub fn enrollment(&self, data_dir: &Path) -> BTreeSet<(String, String)> {
        self.select(data_dir, "SELECT site_id, patient_id FROM enrollment")
            .into_iter()
            .map(|row| match <[String; 2]>::try_from(row) {
                Ok([site, patient]) => (site, patient),
                Err(row) => panic!("(site_id, patient_id) expected: {row:?}"),
            })
            .collect()
    }

    /// The `summaries` table: `(period_end, body)`, oldest first.
    #[track_caller]
    pub fn summaries(&self, data_dir: &Path) -> Vec<(i64, String)> {
        self.select(
            data_dir,
            "SELECT period_end, body FROM summaries ORDER BY period_end",
        )
        .into_iter()
        .map(|row| match <[String; 2]>::try_from(row) {
            Ok([end, body]) => (end.parse().expect("period_end in ms"), body),
            Err(row) => panic!("(period_end, body) expected: {row:?}"),
        })
        .collect()
    }
}

/// One test, run on each backend: after `both_backends!(name);`, a
/// function `fn name(backend: Backend)` (rustfmt formats it, as any
/// function) becomes the module `name` with `#[test] fn sqlite()` and
/// `#[test] fn postgres()` (`name::sqlite`, `name::postgres` in the test
/// list), each calling it with a backend of its kind (a fresh PostgreSQL
/// database for the second). The PostgreSQL one returns early, after a
/// loud `SKIPPED:` line, when there are no server binaries (and fails
/// with `CI` set).
///
/// `both_backends!(name; postgres: ignore = "why")` marks the PostgreSQL
/// test `#[ignore = "why"]` (a known bug of that backend, to be fixed).
///
/// The body form `both_backends! { fn name(backend) { … } }` makes the
/// function too.
// Each test binary uses part of the harness.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($name:ident; postgres: ignore = $why:literal) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::support::Backend::Sqlite);
            }

            #[test]
            #[ignore = $why]
            fn postgres() {
                let Some(backend) = $crate::support::Backend::postgres() else {
                    return;
                };
                super::$name(backend);
            }
        }
    };
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::support::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                let Some(backend) = $crate::support::Backend::postgres() else {
                    return;
                };
                super::$name(backend);
            }
        }
    )+};
    ($(
        $(#[doc = $doc:expr])*
        fn $name:ident($backend:ident) $body:block
    )+) => {$(
        $(#[doc = $doc])*
        fn $name($backend: $crate::support::Backend) $body
        $crate::support::both_backends!($name);
    )+};
}
#[allow(unused_imports)]
pub(crate) use both_backends;
