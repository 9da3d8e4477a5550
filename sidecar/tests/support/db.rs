//! The database: the server's SQLite file, read directly (the tests of
//! SQLite itself, and those of one backend; [`Backend`] reads either).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::backend::{Backend, Row};

/// The server's database, opened read-only.
pub fn open_db(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("quiesce.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open quiesce.db read-only");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// Every report row by id, and the number of rows (to show none is
/// stored twice): [`Backend::rows`] on SQLite.
pub fn rows(data_dir: &Path) -> (HashMap<String, Row>, usize) {
    Backend::Sqlite.rows(data_dir)
}

/// Rows per `report_id` (the table's primary key says 1; this checks):
/// [`Backend::copies`] on SQLite.
pub fn copies(data_dir: &Path) -> BTreeMap<String, i64> {
    Backend::Sqlite.copies(data_dir)
}

/// `PRAGMA integrity_check` of the database.
pub fn integrity(data_dir: &Path) -> String {
    let db = open_db(data_dir);
    let rows: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .expect("integrity_check")
        .query_map([], |r| r.get(0))
        .expect("integrity_check rows")
        .map(|r| r.expect("a row"))
        .collect();
    rows.join("; ")
}

/// Waits (within `limit`) until no report is `queued` in the database;
/// returns the rows: [`Backend::wait_none_queued`] on SQLite.
pub fn wait_none_queued(data_dir: &Path, limit: Duration) -> HashMap<String, Row> {
    Backend::Sqlite.wait_none_queued(data_dir, limit)
}
