//! Tests of the PostgreSQL harness itself (`support/pg.rs`), against the
//! real server it starts: databases are independent, a committed row
//! survives a stop and a start (and a SIGKILL), and both URLs reach the
//! same database through the real client.

mod support;

use support::*;

#[test]
fn two_databases_are_independent() {
    let Some(pg) = pg_cluster() else { return };
    let a = pg.database();
    let b = pg.database();
    assert_ne!(a.name(), b.name());
    a.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    a.query("INSERT INTO t VALUES (1, 'in a'), (2, 'also in a')");
    // The same table name in b is another table: empty, and creatable.
    b.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    b.query("INSERT INTO t VALUES (1, 'in b')");
    assert_eq!(
        a.query("SELECT id, v FROM t ORDER BY id"),
        vec![vec!["1", "in a"], vec!["2", "also in a"]]
    );
    assert_eq!(
        b.query("SELECT id, v FROM t ORDER BY id"),
        vec![vec!["1", "in b"]]
    );
    assert_eq!(a.scalar("SELECT current_database()"), a.name());
    assert_eq!(b.scalar("SELECT current_database()"), b.name());
}

#[test]
fn an_error_fails_the_query() {
    let Some(pg) = pg_cluster() else { return };
    let db = pg.database();
    let failed = std::panic::catch_unwind(|| db.query("SELECT * FROM no_such_table"))
        .expect_err("a query of a missing table must fail");
    let message = failed
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("no_such_table") && message.contains("does not exist"),
        "psql's error is in the message: {message}"
    );
}

#[test]
fn values_with_separators_and_newlines_come_back_whole() {
    let Some(pg) = pg_cluster() else { return };
    let db = pg.database();
    assert_eq!(
        db.query("SELECT 'a b', E'two\\nlines', NULL, '' UNION ALL SELECT 'x', 'y', 'z', 'w'"),
        vec![vec!["a b", "two\nlines", "", ""], vec!["x", "y", "z", "w"]]
    );
    assert!(db.query("SELECT 1 WHERE false").is_empty());
}

#[test]
fn the_socket_url_and_the_tcp_url_reach_the_same_database() {
    let Some(pg) = pg_cluster() else { return };
    let db = pg.database();
    assert!(db.url().starts_with("postgresql://postgres@127.0.0.1:"));
    assert!(db.socket_url().starts_with("postgresql://postgres@/"));
    psql(&db.socket_url(), "CREATE TABLE t (v text)");
    psql(&db.socket_url(), "INSERT INTO t VALUES ('via the socket')");
    psql(&db.url(), "INSERT INTO t VALUES ('via tcp')");
    let expected = vec![vec!["via tcp"], vec!["via the socket"]];
    assert_eq!(psql(&db.url(), "SELECT v FROM t ORDER BY v"), expected);
    assert_eq!(
        psql(&db.socket_url(), "SELECT v FROM t ORDER BY v"),
        expected
    );
    // Each really went the way it says: the server reports the client's
    // address for TCP and none for a unix socket.
    assert_eq!(
        psql(&db.url(), "SELECT host(inet_client_addr())"),
        vec![vec!["127.0.0.1"]]
    );
    assert_eq!(
        psql(
            &db.socket_url(),
            "SELECT inet_client_addr() IS NULL, current_setting('unix_socket_directories')"
        ),
        vec![vec!["t".to_string(), pg.socket_dir().display().to_string()]]
    );
}

#[test]
fn a_committed_row_survives_a_stop_and_a_start_and_a_kill() {
    // A cluster of its own: stopping the shared one would fail the others.
    let Some(pg) = Cluster::new() else { return };
    let db = pg.database();
    db.query("CREATE TABLE t (id int PRIMARY KEY)");
    db.query("INSERT INTO t VALUES (1)");
    let port = pg.port();
    let first_pid = pg.pid().expect("running");

    pg.stop();
    assert!(!pg.running());
    let refused = std::panic::catch_unwind(|| db.query("SELECT 1"));
    assert!(refused.is_err(), "a stopped server answered a query");

    pg.start();
    assert_eq!(pg.port(), port);
    assert_ne!(pg.pid(), Some(first_pid), "a new postmaster");
    assert_eq!(db.scalar("SELECT count(*) FROM t WHERE id = 1"), "1");

    // A crash: what was committed is recovered from the WAL.
    db.query("INSERT INTO t VALUES (2)");
    pg.kill();
    assert!(!pg.running());
    pg.start();
    assert_eq!(
        db.scalar("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    assert!(
        pg.log().contains("database system was interrupted"),
        "recovery after the kill is in the log:\n{}",
        pg.log()
    );
}

#[test]
fn durability_settings_are_the_servers_defaults() {
    let Some(pg) = pg_cluster() else { return };
    let db = pg.database();
    assert_eq!(
        db.query("SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('max_connections')"),
        vec![vec!["on", "on", "200"]]
    );
}
