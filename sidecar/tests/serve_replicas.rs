//! Black-box tests of several `quiesce serve` replicas on one real
//! PostgreSQL database (issue 11): shared intake, leased work reclaimed
//! from a killed replica, claims released by a stopped one, counters that
//! converge, one schema when replicas start together, and a database
//! restarted under load. Each replica is the real binary with a data
//! directory of its own; the database is read afterwards with `psql`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// A replica of `db`, named `id`, with a data directory under `dir`.
fn replica(dir: &TempDir, db: &Database, id: &str, extra: &[&str]) -> Serve {
    let url = db.url();
    let mut args = vec!["--database-url", &url, "--replica-id", id];
    args.extend_from_slice(extra);
    Serve::start(&dir.sub(id), &args)
}

/// A counter's value in `GET /metrics` (0 when absent).
fn metric(serve: &Serve, name: &str) -> u64 {
    let text = get(serve.addr, "/metrics").text();
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse::<f64>().ok()
        })
        .map_or(0, |v| v as u64)
}

/// Report ids by status, and the number of rows per id, from the database.
fn statuses(db: &Database) -> (HashMap<String, String>, BTreeMap<String, usize>) {
    let mut status = HashMap::new();
    let mut copies = BTreeMap::new();
    for row in db.query("SELECT report_id, status FROM reports") {
        *copies.entry(row[0].clone()).or_default() += 1;
        status.insert(row[0].clone(), row[1].clone());
    }
    (status, copies)
}

/// Waits (within `limit`) until no report is queued in `db`.
#[track_caller]
fn wait_none_queued(db: &Database, limit: Duration) {
    let give_up = Instant::now() + limit;
    loop {
        let queued: usize = db
            .scalar("SELECT COUNT(*) FROM reports WHERE status = 'queued'")
            .parse()
            .expect("a count");
        if queued == 0 {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{queued} report(s) still queued after {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Posts `n` reports `{tag}-{i}`, patient `{tag}-p{i % patients}`, site
/// `S{i % 3}`, to `serve`; returns the ids answered 202.
fn post_some(serve: &Serve, tag: &str, n: usize, patients: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i}");
            let body = report(
                &id,
                &format!("{tag}-p{}", i % patients),
                &format!("S{}", i % 3),
                &[("q1", 1)],
            );
            let response = post_json(serve.addr, &body);
            assert_eq!(response.status, 202, "{id}: {}", response.text());
            id
        })
        .collect()
}

/// Issue 11, item 3 and its "kill a replica" test: three replicas share the
/// load; one is SIGKILLed while it holds claims. Every report answered 202
/// by any replica ends processed, stored once; the killed replica's claims
/// are reclaimed by the others (their reapers count exactly those); and no
/// report is analysed twice except those the killed replica was working on.
#[test]
fn a_killed_replica_s_claims_are_reclaimed_and_nothing_is_lost_or_done_twice() {
    let Some(cluster) = pg_cluster() else { return };
    let _heavy = heavy();
    let db = cluster.database();
    let dir = TempDir::new("replicas-kill");
    // Slow enough that each replica holds a queue of claims at any moment.
    let analyzer = ScriptedAnalyzer::slow(Duration::from_millis(15));
    let url = analyzer.url();
    let extra = [
        "--lease",
        "3s",
        "--workers",
        "2",
        "--analyzer-url",
        &url,
        "--shutdown-timeout",
        "10s",
    ];
    let mut replicas: Vec<Serve> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| replica(&dir, &db, id, &extra))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Instant::now() + Duration::from_secs(40);
    let clients: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, serve)| {
            // The killed replica's clients may see requests cut off.
            let strict = i != 2;
            (
                i,
                run_load(serve.addr, &format!("k{i}"), 2, &stop, 150, give_up, strict),
            )
        })
        .collect();
    // Kill r3 once the database holds work it has claimed.
    let claimed_by_r3 = loop {
        let n: usize = db
            .scalar("SELECT COUNT(*) FROM reports WHERE claimed_by = 'r3' AND status = 'queued'")
            .parse()
            .expect("a count");
        if n >= 5 {
            replicas[2].kill9();
            break db
                .query(
                    "SELECT report_id FROM reports WHERE claimed_by = 'r3' AND status = 'queued'",
                )
                .into_iter()
                .map(|r| r[0].clone())
                .collect::<HashSet<String>>();
        }
        assert!(Instant::now() < give_up, "r3 never held 5 claims");
        thread::sleep(Duration::from_millis(5));
    };
    assert!(!claimed_by_r3.is_empty());
    let mut accepted: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for (i, handles) in clients {
        for handle in handles {
            let load = handle.join().expect("a load client");
            if i != 2 {
                assert!(
                    load.violations.is_empty(),
                    "r{}: {:?}",
                    i + 1,
                    load.violations
                );
                assert!(load.unknown.is_empty(), "r{}: {:?}", i + 1, load.unknown);
            }
            assert!(load.other.is_empty(), "r{}: {:?}", i + 1, load.other);
            accepted.extend(load.accepted);
            accepted.extend(load.duplicates);
            unknown.extend(load.unknown);
        }
    }
    // Within the lease (3 s) plus a reaper round (1.5 s), and the work.
    wait_none_queued(&db, Duration::from_secs(30));
    let (status, copies) = statuses(&db);
    for id in &accepted {
        assert_eq!(
            status.get(id).map(String::as_str),
            Some("processed"),
            "{id}"
        );
    }
    assert!(copies.values().all(|&n| n == 1), "a report stored twice");
    // A request r3 never answered: stored or not, but never half-done.
    for id in &unknown {
        if let Some(s) = status.get(id) {
            assert_eq!(s, "processed", "{id}");
        }
    }
    // The claims r3 held went back to the queue through the survivors'
    // reapers, each exactly once.
    let reclaimed: u64 = replicas[..2]
        .iter()
        .map(|r| metric(r, "quiesce_leases_reclaimed_total"))
        .sum();
    assert_eq!(reclaimed, claimed_by_r3.len() as u64);
    // Analysed twice: only reports r3 had claimed (its analysis died
    // with it); every other report exactly once.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for id in analyzer.report_ids() {
        *calls.entry(id).or_default() += 1;
    }
    let twice: Vec<&String> = calls
        .iter()
        .filter(|(id, n)| **n > 1 && !claimed_by_r3.contains(*id))
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "analysed more than once: {twice:?}");
    for id in status.keys() {
        assert!(calls.contains_key(id), "{id} never analysed");
    }
    let again = calls.values().filter(|n| **n > 1).count();
    eprintln!(
        "kill-a-replica: {} accepted, {} processed, {} claims of the killed replica reclaimed, \
         {again} of them analysed again, {} duplicates",
        accepted.len(),
        status.values().filter(|s| *s == "processed").count(),
        claimed_by_r3.len(),
        twice.len()
    );
    stop.store(true, Ordering::SeqCst);
    for serve in &mut replicas[..2] {
        serve.stop_ok(Duration::from_secs(15));
    }
}

/// Issue 11, items 3 and 4: SIGTERM to a replica that holds claims: it
/// exits 0 having released them, the other takes them at once (far
/// sooner than the lease), and every replica's enrollment converges to
/// an independent count.
#[test]
fn a_stopped_replica_releases_its_claims_and_enrollment_converges() {
    let Some(cluster) = pg_cluster() else { return };
    let _heavy = heavy();
    let db = cluster.database();
    let dir = TempDir::new("replicas-term");
    let analyzer = ScriptedAnalyzer::slow(Duration::from_millis(100));
    let url = analyzer.url();
    // A lease far longer than the test: only a release explains a quick
    // takeover.
    let extra = ["--lease", "5m", "--workers", "1", "--analyzer-url", &url];
    // A stop too short to finish the claimed work (its drain is 0.7 s).
    let mut r1 = replica(
        &dir,
        &db,
        "r1",
        &[&extra[..], &["--shutdown-timeout", "2s"]].concat(),
    );
    let accepted = post_some(&r1, "t", 120, 40);
    // r1 alone has claimed work; now a second replica, then r1 stops.
    let mut r2 = replica(&dir, &db, "r2", &extra);
    let held: usize = db
        .scalar("SELECT COUNT(*) FROM reports WHERE claimed_by = 'r1' AND status = 'queued'")
        .parse()
        .expect("a count");
    assert!(held > 0, "r1 holds no claim to release");
    let exit = r1.stop_ok(Duration::from_secs(20));
    assert!(
        exit.log.contains("unfinished claim(s)"),
        "no release logged:\n{}",
        exit.log
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM reports WHERE claimed_by = 'r1'"),
        "0",
        "r1's claims outlived it"
    );
    wait_none_queued(&db, Duration::from_secs(30));
    let (status, _) = statuses(&db);
    for id in &accepted {
        assert_eq!(status[id], "processed", "{id}");
    }
    // An independent count: the distinct (site, patient) pairs posted.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut pairs = HashSet::new();
    for i in 0..120 {
        if pairs.insert((i % 3, i % 40)) {
            *expected.entry(format!("S{}", i % 3)).or_default() += 1;
        }
    }
    let r3 = replica(&dir, &db, "r3", &extra);
    for serve in [&r2, &r3] {
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            let body = get(serve.addr, "/v1/enrollment").json();
            let sites: BTreeMap<String, u64> = body["sites"]
                .as_object()
                .expect("sites")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
                .collect();
            if sites == expected {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "enrollment {sites:?}, expected {expected:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    r2.stop_ok(Duration::from_secs(15));
    let mut r3 = r3;
    r3.stop_ok(Duration::from_secs(15));
}

/// Issue 11, item 4: the backlog limit is judged on the shared backlog: a
/// replica that has accepted nothing refuses (429) once another has filled
/// it, and still recognises a duplicate. (Enrollment converging is
/// checked by the SIGTERM test.)
#[test]
fn the_backlog_limit_is_shared_by_the_replicas() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = TempDir::new("replicas-backlog");
    // Never answers: the reports stay queued (a job times out after 30 s).
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let extra = [
        "--max-backlog",
        "10",
        "--analyzer-url",
        &url,
        "--job-timeout",
        "30s",
        "--shutdown-timeout",
        "3s",
    ];
    let mut r1 = replica(&dir, &db, "r1", &extra);
    let mut r2 = replica(&dir, &db, "r2", &extra);
    post_some(&r1, "b", 10, 10);
    // r2 hears of r1's backlog within a refresh (250 ms); its next POST
    // is judged on the database's count at its commit in any case.
    let refused = post_json(r2.addr, &report("b-late", "p", "S0", &[("q1", 1)]));
    assert_eq!(refused.status, 429, "{}", refused.text());
    // A duplicate is still recognised at the limit, across replicas.
    let again = post_json(r2.addr, &report("b-3", "b-p3", "S0", &[("q1", 1)]));
    assert_eq!(again.status, 200, "{}", again.text());
    r1.terminate(Duration::from_secs(10));
    r2.terminate(Duration::from_secs(10));
}

/// Issue 11, item 5: three replicas started at once on an empty database
/// all come up, with one schema; a database migrated by a newer release
/// is refused with a clear error.
#[test]
fn replicas_started_together_agree_on_one_schema_and_a_newer_one_is_refused() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = Arc::new(TempDir::new("replicas-migrate"));
    let url = db.url();
    let starters: Vec<_> = ["m1", "m2", "m3"]
        .into_iter()
        .map(|id| {
            let (dir, url) = (dir.clone(), url.clone());
            thread::spawn(move || {
                Serve::start(&dir.sub(id), &["--database-url", &url, "--replica-id", id])
            })
        })
        .collect();
    let mut replicas: Vec<Serve> = starters
        .into_iter()
        .map(|h| h.join().expect("a replica started"))
        .collect();
    // Versions 1, 2, … each recorded once, each applied by one replica.
    let versions: Vec<String> = db
        .query("SELECT version FROM quiesce_schema ORDER BY version")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let expected: Vec<String> = (1..=versions.len()).map(|v| v.to_string()).collect();
    assert!(versions.len() >= 3, "{versions:?}");
    assert_eq!(versions, expected);
    let migrated: usize = replicas
        .iter()
        .map(|r| r.log().matches("schema migrated to version").count())
        .sum();
    assert_eq!(
        migrated,
        versions.len(),
        "each migration applied once in all"
    );
    for serve in &mut replicas {
        serve.stop_ok(Duration::from_secs(15));
    }
    db.query("INSERT INTO quiesce_schema (version, applied_by) VALUES (99, 'a newer release')");
    let (status, log) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.sub("m4").to_str().expect("utf-8"),
            "--database-url",
            &url,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("schema version 99, newer than this quiesce knows"),
        "{log}"
    );
}

/// Issue 11, item 5, for SQLite: the same refusal of a newer schema.
#[test]
fn a_sqlite_database_from_a_newer_release_is_refused() {
    let dir = TempDir::new("sqlite-newer");
    let data = dir.sub("data");
    let mut serve = Serve::start(&data, &[]);
    serve.stop_ok(Duration::from_secs(15));
    let conn = rusqlite::Connection::open(data.join("quiesce.db")).expect("open");
    conn.pragma_update(None, "user_version", 99).expect("set");
    drop(conn);
    let (status, log) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("schema version 99, newer than this quiesce knows"),
        "{log}"
    );
}

/// Issue 11, item 7: the database restarted under load. While it is down
/// the replica is not ready and answers no POST with 202; every report it
/// answered 202 is in the database afterwards; it recovers by itself and
/// processes everything.
#[test]
fn the_database_restarted_under_load() {
    // A cluster of its own: stopping the shared one would disturb the
    // other tests.
    let Some(cluster) = Cluster::new() else {
        return;
    };
    let _heavy = heavy();
    let db = cluster.database();
    let dir = TempDir::new("replicas-restart");
    let mut serve = replica(&dir, &db, "r1", &["--shutdown-timeout", "10s"]);
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Instant::now() + Duration::from_secs(45);
    let clients = run_load(serve.addr, "d", 2, &stop, 100_000, give_up, true);
    // Some load first, then the outage.
    while db
        .scalar("SELECT COUNT(*) FROM reports")
        .parse::<usize>()
        .expect("a count")
        < 100
    {
        assert!(Instant::now() < give_up, "no load reached the database");
        thread::sleep(Duration::from_millis(20));
    }
    cluster.stop();
    // Not ready while the database is down.
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        "/readyz stayed 200 with the database down",
        || get(serve.addr, "/readyz").status == 503,
    );
    thread::sleep(Duration::from_secs(1));
    cluster.start();
    // Ready again without a restart of its own (the probe backs off: at
    // most 30 s between tries).
    wait_until(
        Duration::from_secs(40),
        Duration::from_millis(50),
        "never ready again after the database came back",
        || get(serve.addr, "/readyz").status == 200,
    );
    // More load after the recovery, then stop.
    let after: usize = db
        .scalar("SELECT COUNT(*) FROM reports")
        .parse()
        .expect("a count");
    let more_by = Instant::now() + Duration::from_secs(10);
    while db
        .scalar("SELECT COUNT(*) FROM reports")
        .parse::<usize>()
        .expect("a count")
        < after + 50
    {
        assert!(
            Instant::now() < more_by,
            "no report accepted after the recovery"
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let mut accepted = Vec::new();
    let mut unavailable = 0;
    for handle in clients {
        let load = handle.join().expect("a load client");
        assert!(load.violations.is_empty(), "{:?}", load.violations);
        assert!(load.other.is_empty(), "{:?}", load.other);
        assert_eq!(load.missing_retry_after, 0);
        unavailable += load.unavailable.len();
        accepted.extend(load.accepted);
    }
    assert!(
        unavailable > 0,
        "no POST was refused while the database was down"
    );
    wait_none_queued(&db, Duration::from_secs(30));
    let (status, copies) = statuses(&db);
    for id in &accepted {
        assert_eq!(
            status.get(id).map(String::as_str),
            Some("processed"),
            "{id}"
        );
    }
    assert!(copies.values().all(|&n| n == 1));
    serve.stop_ok(Duration::from_secs(15));
}

/// Issue 11, item 2: duplicates (200) and conflicts (409) are decided by
/// the database's key, whichever replica is asked; of two replicas raced
/// on the same ids, exactly one answers 202 per id.
#[test]
fn duplicates_and_conflicts_are_decided_across_replicas() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = TempDir::new("replicas-dup");
    let mut r1 = replica(&dir, &db, "r1", &[]);
    let mut r2 = replica(&dir, &db, "r2", &[]);
    let first = post_json(r1.addr, &report("dup-1", "p1", "S0", &[("q1", 2)]));
    assert_eq!(first.status, 202, "{}", first.text());
    let same = post_json(r2.addr, &report("dup-1", "p1", "S0", &[("q1", 2)]));
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(same.json()["status"], "duplicate");
    let other = post_json(r2.addr, &report("dup-1", "p1", "S0", &[("q1", 3)]));
    assert_eq!(other.status, 409, "{}", other.text());
    // Races: each id posted to both replicas at once.
    let (a1, a2) = (r1.addr, r2.addr);
    let racers: Vec<_> = [a1, a2]
        .into_iter()
        .map(|addr| {
            thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let body = report(&format!("race-{i}"), "p", "S1", &[("q1", 1)]);
                        post_json(addr, &body).status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let answers: Vec<Vec<u16>> = racers
        .into_iter()
        .map(|h| h.join().expect("a racer"))
        .collect();
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        let mut pair = [*a, *b];
        pair.sort_unstable();
        assert_eq!(pair, [200, 202], "race-{i}");
    }
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM reports WHERE report_id LIKE 'race-%'"),
        "40"
    );
    r1.stop_ok(Duration::from_secs(15));
    r2.stop_ok(Duration::from_secs(15));
}

/// Issue 11, item 4: one summary per period, whatever the number of
/// replicas: the stored periods follow one another without overlap, and
/// there are no more of them than intervals elapsed.
#[test]
fn two_replicas_write_one_summary_per_period() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = TempDir::new("replicas-summary");
    let extra = ["--summary-interval", "1s"];
    let mut r1 = replica(&dir, &db, "r1", &extra);
    let started = Instant::now();
    let mut r2 = replica(&dir, &db, "r2", &extra);
    post_some(&r1, "s", 6, 3);
    thread::sleep(Duration::from_millis(4500));
    r1.stop_ok(Duration::from_secs(15));
    r2.stop_ok(Duration::from_secs(15));
    let elapsed = started.elapsed().as_secs_f64();
    let periods: Vec<(i64, i64)> = db
        .query("SELECT period_start, period_end FROM summaries ORDER BY period_start")
        .into_iter()
        .map(|r| (r[0].parse().expect("ms"), r[1].parse().expect("ms")))
        .collect();
    assert!(periods.len() >= 2, "{periods:?}");
    assert!(
        periods.len() as f64 <= elapsed + 1.0,
        "{} summaries in {elapsed:.1} s: {periods:?}",
        periods.len()
    );
    for pair in periods.windows(2) {
        assert_eq!(
            pair[1].0, pair[0].1,
            "periods overlap or leave a gap: {periods:?}"
        );
    }
    // Each written as a file by the replica that stored it: one file per row.
    let files: usize = ["r1", "r2"]
        .iter()
        .map(|id| {
            std::fs::read_dir(dir.join(id).join("summaries"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(files, periods.len());
}

/// Issue 11, item 3: a late result is discarded, never stored twice. A
/// replica frozen (SIGSTOP) mid-job stops renewing its lease; another
/// replica reclaims the report and processes it; when the first one
/// wakes (SIGCONT) and finishes the same job, its result is not stored
/// and is counted as discarded. Also: a replica reached over PostgreSQL's
/// unix socket.
#[test]
fn a_late_result_after_the_lease_ran_out_is_discarded() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = TempDir::new("replicas-late");
    let analyzer = ScriptedAnalyzer::slow(Duration::from_millis(1500));
    let url = analyzer.url();
    let extra = ["--lease", "1s", "--workers", "1", "--analyzer-url", &url];
    let mut r1 = replica(&dir, &db, "r1", &extra);
    let posted = post_json(r1.addr, &report("late-1", "p", "S0", &[("q1", 1)]));
    assert_eq!(posted.status, 202, "{}", posted.text());
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        "r1 never called the analyzer",
        || !analyzer.report_ids().is_empty(),
    );
    r1.signal("STOP");
    let socket = db.socket_url();
    let mut r2 = Serve::start(
        &dir.sub("r2"),
        &[
            &["--database-url", &socket, "--replica-id", "r2"][..],
            &extra,
        ]
        .concat(),
    );
    // r2 reclaims it once r1's lease has run out; r1 wakes while r2 is
    // still working on it (r2's analyzer call takes 1.5 s), with its own
    // answer waiting in its socket: its result comes first, and must not
    // be stored, the report being r2's now.
    let ms = Duration::from_millis;
    wait_until(
        Duration::from_secs(20),
        ms(10),
        "r2 never reclaimed the report",
        || {
            db.scalar("SELECT COALESCE(claimed_by, '-') FROM reports WHERE report_id = 'late-1'")
                == "r2"
        },
    );
    r1.signal("CONT");
    wait_until(
        Duration::from_secs(20),
        ms(20),
        "r1's late result was not discarded",
        || metric(&r1, "quiesce_results_discarded_total") > 0,
    );
    wait_until(
        Duration::from_secs(20),
        ms(20),
        "r2 never processed the report",
        || db.scalar("SELECT status FROM reports WHERE report_id = 'late-1'") == "processed",
    );
    assert_eq!(metric(&r1, "quiesce_results_discarded_total"), 1);
    assert_eq!(metric(&r1, "quiesce_reports_processed_total"), 0);
    assert_eq!(metric(&r2, "quiesce_reports_processed_total"), 1);
    assert_eq!(metric(&r2, "quiesce_leases_reclaimed_total"), 1);
    assert_eq!(
        db.query("SELECT status, attempts FROM reports WHERE report_id = 'late-1'"),
        vec![vec!["processed".to_string(), "1".to_string()]]
    );
    assert_eq!(analyzer.report_ids(), vec!["late-1", "late-1"]);
    r1.stop_ok(Duration::from_secs(15));
    r2.stop_ok(Duration::from_secs(15));
}
