//! The database: the server's SQLite file, read directly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

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

/// A report's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub attempts: i64,
    pub has_result: bool,
}

/// Every report row by id, and the number of rows (to show none is
/// stored twice).
pub fn rows(data_dir: &Path) -> (HashMap<String, Row>, usize) {
    let db = open_db(data_dir);
    let mut stmt = db
        .prepare("SELECT report_id, status, attempts, result IS NOT NULL FROM reports")
        .expect("query reports");
    let mut map = HashMap::new();
    let mut count = 0;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    status: r.get(1)?,
                    attempts: r.get(2)?,
                    has_result: r.get(3)?,
                },
            ))
        })
        .expect("read reports");
    for row in rows {
        let (id, row) = row.expect("a report row");
        count += 1;
        map.insert(id, row);
    }
    (map, count)
}

/// Rows per `report_id` (the table's primary key says 1; this checks).
pub fn copies(data_dir: &Path) -> BTreeMap<String, i64> {
    let db = open_db(data_dir);
    let mut stmt = db
        .prepare("SELECT report_id, COUNT(*) FROM reports GROUP BY report_id")
        .expect("query reports");
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("read reports")
        .map(|r| r.expect("a row"))
        .collect()
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
/// returns the rows.
pub fn wait_none_queued(data_dir: &Path, limit: Duration) -> HashMap<String, Row> {
    let give_up = Instant::now() + limit;
    loop {
        let (rows, _) = rows(data_dir);
        let queued = rows.values().filter(|r| r.status == "queued").count();
        if queued == 0 {
            return rows;
        }
        assert!(
            Instant::now() < give_up,
            "{queued} report(s) still queued after {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
