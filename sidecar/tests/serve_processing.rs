//! Black-box tests of what `quiesce serve` does with the reports it took
//! in: enrollment counters against a count made here (and rebuilt after a
//! restart), the periodic summary (file and row), and the external
//! analyzer — one that answers, one that fails then answers, one that
//! never answers.
//!
//! Part of the conformance suite: each test runs on both store backends,
//! embedded SQLite and PostgreSQL (`name::sqlite`, `name::postgres`; see
//! `both_backends!`), with the same assertions.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const MARGIN: Duration = Duration::from_secs(20);

/// `GET /v1/enrollment` as `(per site, total)`.
fn enrollment(serve: &Serve) -> Value {
    let response = get(serve.addr, "/v1/enrollment");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn expected_enrollment(enrolled: &BTreeSet<(String, String)>) -> Value {
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    for (site, _) in enrolled {
        *sites.entry(site.clone()).or_default() += 1;
    }
    json!({ "sites": sites, "total": enrolled.len() })
}

both_backends!(enrollment_equals_an_independent_count_and_is_rebuilt_after_a_restart);
fn enrollment_equals_an_independent_count_and_is_rebuilt_after_a_restart(backend: Backend) {
    let dir = TempDir::new(&format!("enrollment-{}", backend.name()));
    let mut serve = backend.serve(dir.path(), &[]);
    let addr = serve.addr;
    let mut rng = Rng::new("enrollment");
    // Site ids in several spellings of the same few sites; patient ids
    // with padding, and one that differs only by case (a different
    // patient: ids are trimmed, not case-folded).
    let sites = [
        "site-a", " Site-A ", "SITE-B", "site-b", "site-c", "Site-D\t",
    ];
    let patients = [
        "P-1", " P-1", "P-2", "P-3 ", "p-3", "P-4", "P-5", "P-6", "P-7", "P-8",
    ];
    let mut enrolled = BTreeSet::new();
    let mut posted: Vec<Value> = Vec::new();
    for i in 0..90 {
        let site = sites[rng.range(0, sites.len() as u64) as usize];
        let patient = patients[rng.range(0, patients.len() as u64) as usize];
        let body = report(
            &format!("e-{i}"),
            patient,
            site,
            &[("q1", rng.range(0, 5) as u8), ("q2", 1)],
        );
        let response = post_json(addr, &body);
        assert_eq!(response.status, 202, "{}", response.text());
        enrolled.insert((site.trim().to_uppercase(), patient.trim().to_string()));
        posted.push(body);
        // Now and then, the same report again (a client's retry), and a
        // different report under a used id: neither counts.
        if i % 7 == 3 {
            let again = &posted[rng.range(0, posted.len() as u64) as usize];
            assert_eq!(post_json(addr, again).status, 200);
        }
        if i % 11 == 5 {
            let mut other = posted[rng.range(0, posted.len() as u64) as usize].clone();
            other["patient_id"] = json!("P-NEVER");
            other["site_id"] = json!("site-never");
            assert_eq!(post_json(addr, &other).status, 409);
        }
    }
    let rows = backend.wait_none_queued(dir.path(), Duration::from_secs(30));
    assert_eq!(rows.len(), 90);
    assert!(rows.values().all(|r| r.status == "processed"), "{rows:?}");

    let expected = expected_enrollment(&enrolled);
    // The counters are updated just after the commit that a GET can see
    // first: allow them a moment.
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut got = enrollment(&serve);
    while got != expected && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(20));
        got = enrollment(&serve);
    }
    assert_eq!(got, expected, "enrollment after {} reports", rows.len());
    // The database's own table agrees.
    assert_eq!(backend.enrollment(dir.path()), enrolled);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);

    // Rebuilt from the database at start, before the server is ready.
    let mut serve = backend.serve(dir.path(), &[]);
    assert_eq!(enrollment(&serve), expected, "after a restart");
    // And it goes on counting from there.
    let body = report("e-new", "P-NEW", "site-new", &[("q1", 0)]);
    assert_eq!(post_json(serve.addr, &body).status, 202);
    wait_settled(serve.addr, "e-new", Duration::from_secs(20));
    enrolled.insert(("SITE-NEW".into(), "P-NEW".into()));
    let expected = expected_enrollment(&enrolled);
    let give_up = Instant::now() + Duration::from_secs(10);
    while enrollment(&serve) != expected && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(enrollment(&serve), expected);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

both_backends!(a_report_in_work_when_the_server_is_killed_is_processed_once_after_a_restart);
fn a_report_in_work_when_the_server_is_killed_is_processed_once_after_a_restart(backend: Backend) {
    // The shortest lease (1 s): with PostgreSQL, the claims of the killed
    // process (another replica id: hostname-pid) wait for it to run out
    // and for a reaper round (half a lease); SQLite's store, the data
    // directory's one process, releases them as it opens.
    let silent = SilentAnalyzer::start();
    let url = silent.url();
    let dir = TempDir::new(&format!("killed-{}", backend.name()));
    let mut serve = backend.serve(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--job-timeout",
            "60s",
            "--workers",
            "2",
            "--lease",
            "1s",
        ],
    );
    let ids: Vec<String> = (0..3).map(|i| format!("kw-{i}")).collect();
    for id in &ids {
        let response = post_json(serve.addr, &report(id, "P-1", "site-k", &[("q1", 3)]));
        assert_eq!(response.status, 202, "{}", response.text());
    }
    // Two in work, held by the analyzer, and claimed.
    let give_up = Instant::now() + Duration::from_secs(20);
    while silent.connections.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < give_up, "the analyzer was never called");
        thread::sleep(Duration::from_millis(10));
    }
    let in_work = backend.claimed(dir.path());
    assert!(in_work.len() >= 2, "claimed: {in_work:?}");
    serve.kill9();

    // Nothing lost, nothing counted: the attempts cut short left the
    // reports queued as they were.
    let (rows, count) = backend.rows(dir.path());
    assert_eq!(count, 3, "{rows:?}");
    for id in &ids {
        let row = &rows[id];
        assert_eq!((row.status.as_str(), row.attempts), ("queued", 0), "{id}");
    }

    // The next start, with an analyzer that answers, processes each once.
    let analyzer = ScriptedAnalyzer::start(vec![(200, r#"{"ok":true}"#.into())]);
    let url = analyzer.url();
    let mut serve = backend.serve(dir.path(), &["--analyzer-url", &url, "--lease", "1s"]);
    for id in &ids {
        let got = wait_settled(serve.addr, id, Duration::from_secs(30));
        assert_eq!(got["status"], "processed", "{got}");
        assert_eq!(got["attempts"], 1, "{got}");
        assert_eq!(got["result"]["analysis"], json!({"ok": true}), "{got}");
        assert_eq!(got["result"]["score"]["alert"], true, "{got}");
    }
    let mut analyzed = analyzer.report_ids();
    analyzed.sort();
    assert_eq!(analyzed, ids, "each report analyzed once after the restart");
    assert!(backend.copies(dir.path()).values().all(|&n| n == 1));
    assert_eq!(backend.claimed(dir.path()), Vec::<String>::new());
    let expected = json!({"sites": {"SITE-K": 1}, "total": 1});
    let give_up = Instant::now() + Duration::from_secs(10);
    while enrollment(&serve) != expected && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(enrollment(&serve), expected);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

both_backends!(without_an_analyzer_a_report_is_processed_by_the_commit_its_202_waits_for);
// Issue 14: with no analyzer, a report is scored at intake and stored
// processed by its own insert: processed when its 202 (or its batch's 200)
// is answered, never queued, the counters in step.
fn without_an_analyzer_a_report_is_processed_by_the_commit_its_202_waits_for(backend: Backend) {
    let dir = TempDir::new(&format!("inline-{}", backend.name()));
    let mut serve = backend.serve(dir.path(), &[]);
    let addr = serve.addr;
    let check = |id: &str| {
        // No waiting: read at once after the answer.
        let got = get(addr, &format!("/v1/reports/{id}")).json();
        assert_eq!(got["status"], "processed", "{got}");
        assert_eq!(got["attempts"], 1, "{got}");
        assert_eq!(got["result"]["analysis"], Value::Null, "{got}");
        assert_eq!(got["result"]["score"]["total"], 4, "{got}");
    };
    for i in 0..3 {
        let id = format!("in-{i}");
        let response = post_json(addr, &report(&id, "P-1", "site-i", &[("q1", 1), ("q2", 3)]));
        assert_eq!(response.status, 202, "{}", response.text());
        check(&id);
    }
    let batch: Vec<Value> = (0..3)
        .map(|i| {
            report(
                &format!("inb-{i}"),
                "P-2",
                "site-i",
                &[("q1", 1), ("q2", 3)],
            )
        })
        .collect();
    let body = serde_json::to_vec(&batch).expect("json");
    let response = post_batch(addr, "application/json", &body);
    assert_eq!(response.status, 200, "{}", response.text());
    for i in 0..3 {
        check(&format!("inb-{i}"));
    }
    let metrics = get(addr, "/metrics").text();
    for line in [
        "quiesce_reports_accepted_total 6",
        "quiesce_reports_processed_total 6",
        "quiesce_backlog 0",
        "quiesce_alerts_total{instrument=\"unregistered\",rule=\"generic\"} 6",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert_eq!(
        enrollment(&serve),
        json!({ "sites": { "SITE-I": 2 }, "total": 2 })
    );
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

/// The summary files written so far, oldest first, as JSON.
fn summaries(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("summaries"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("summary-") && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|n| {
        n.trim_start_matches("summary-")
            .trim_end_matches(".json")
            .parse::<u64>()
            .unwrap_or(0)
    });
    files
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join("summaries").join(&n))
                .unwrap_or_else(|e| panic!("read {n}: {e}"));
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{n} is not JSON ({e}): {text:?}"));
            (n, value)
        })
        .collect()
}

both_backends!(the_summary_file_and_row_match_what_was_posted);
fn the_summary_file_and_row_match_what_was_posted(backend: Backend) {
    let dir = TempDir::new(&format!("summary-{}", backend.name()));
    let mut serve = backend.serve(dir.path(), &[]);
    let addr = serve.addr;
    // (site, patient, answers): alerts from an item at 3+ or a total > 20.
    let eleven_twos: Vec<(String, u8)> = (0..11).map(|i| (format!("t{i:02}"), 2)).collect();
    let eleven_twos: Vec<(&str, u8)> = eleven_twos.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    type Post<'a> = (&'a str, &'a str, Vec<(&'a str, u8)>);
    let posts: Vec<Post> = vec![
        ("site-a", "P-1", vec![("q1", 0), ("q2", 1)]),
        ("site-a", "P-1", vec![("q1", 3)]),
        ("site-a", "P-2", vec![("q1", 4), ("q2", 4)]),
        ("Site-A", "P-3", vec![("q1", 2)]),
        ("site-b", "P-1", eleven_twos.clone()),
        ("site-b", "P-1", vec![("q1", 1)]),
        ("site-c", "P-9", vec![("q1", 0)]),
    ];
    let mut expected: BTreeMap<String, (i64, i64, BTreeSet<String>)> = BTreeMap::new();
    for (i, (site, patient, answers)) in posts.iter().enumerate() {
        let response = post_json(addr, &report(&format!("s-{i}"), patient, site, answers));
        assert_eq!(response.status, 202, "{}", response.text());
        let total: u32 = answers.iter().map(|(_, v)| u32::from(*v)).sum();
        let alert = answers.iter().any(|(_, v)| *v >= 3) || total > 20;
        let entry = expected.entry(site.to_uppercase()).or_default();
        entry.0 += 1;
        entry.1 += i64::from(alert);
        entry.2.insert((*patient).to_string());
    }
    backend.wait_none_queued(dir.path(), Duration::from_secs(30));
    serve.stop_ok(Duration::from_secs(25) + MARGIN);

    // Restart with a short interval: the first summary covers everything
    // since the beginning, hence exactly what was posted.
    let mut serve = backend.serve(dir.path(), &["--summary-interval", "300ms"]);
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut files = summaries(dir.path());
    while files.len() < 2 && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(50));
        files = summaries(dir.path());
    }
    let exit = serve.stop_ok(Duration::from_secs(25) + MARGIN);
    assert!(
        files.len() >= 2,
        "two summaries within 30 s: {files:?}\n{}",
        exit.log
    );
    let (name, first) = &files[0];
    let sites: Vec<Value> = expected
        .iter()
        .map(|(site, (reports, alerts, patients))| {
            json!({"site_id": site, "reports": reports, "alerts": alerts, "patients": patients.len()})
        })
        .collect();
    assert_eq!(first["sites"], json!(sites), "{name}: {first}");
    assert_eq!(first["reports"], json!(posts.len()), "{first}");
    let alerts: i64 = expected.values().map(|e| e.1).sum();
    assert_eq!(first["alerts"], json!(alerts), "{first}");
    assert!(
        first["period_start"].is_string() && first["period_end"].is_string(),
        "{first}"
    );
    // The next period had nothing, and follows on.
    let (_, second) = &files[1];
    assert_eq!(second["reports"], 0, "{second}");
    assert_eq!(second["sites"], json!([]), "{second}");
    assert_eq!(
        second["period_start"], first["period_end"],
        "periods are contiguous"
    );

    // Each file has its row in the `summaries` table, with the same body.
    let stored: Vec<(i64, Value)> = backend
        .summaries(dir.path())
        .into_iter()
        .map(|(end, body)| (end, serde_json::from_str(&body).expect("a JSON body")))
        .collect();
    for (name, body) in &files {
        let end: i64 = name
            .trim_start_matches("summary-")
            .trim_end_matches(".json")
            .parse()
            .expect("summary-<ms>.json");
        assert!(
            stored.iter().any(|(e, b)| *e == end && b == body),
            "no row for {name}: {stored:?}"
        );
    }
    // Written atomically: no temporary file left behind.
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("summaries"))
        .expect("the summaries directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !(n.starts_with("summary-") && n.ends_with(".json")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

both_backends!(the_summary_lists_its_sites_in_byte_order_whatever_the_database_collation);
fn the_summary_lists_its_sites_in_byte_order_whatever_the_database_collation(backend: Backend) {
    // A database made with a language's locale, as most are (not `C`):
    // in en-US, punctuation weighs less than letters and digits, so
    // `SITE_B` comes before `SITEC` and `SITE-A` before `SITE.2`. The
    // summary's order is the ids' bytes' whatever the database (the
    // order of `the_summary_file_and_row_match_what_was_posted`, and of
    // SQLite, which has no database collation).
    let backend = backend.collated("en-US");
    let dir = TempDir::new(&format!("summary-order-{}", backend.name()));
    let mut serve = backend.serve(dir.path(), &[]);
    let sites = ["SITEC", "SITE_B", "SITE-A", "SITE-10", "SITE-9", "SITE.2"];
    for (i, site) in sites.iter().enumerate() {
        let body = report(&format!("so-{i}"), "P-1", site, &[("q1", 1)]);
        let response = post_json(serve.addr, &body);
        assert_eq!(response.status, 202, "{}", response.text());
    }
    backend.wait_none_queued(dir.path(), Duration::from_secs(30));
    serve.stop_ok(Duration::from_secs(25) + MARGIN);

    // The first summary after a restart covers them all (as above).
    let mut serve = backend.serve(dir.path(), &["--summary-interval", "300ms"]);
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut files = summaries(dir.path());
    while files.is_empty() && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(50));
        files = summaries(dir.path());
    }
    let exit = serve.stop_ok(Duration::from_secs(25) + MARGIN);
    let (name, first) = files
        .first()
        .unwrap_or_else(|| panic!("no summary within 30 s\n{}", exit.log));
    let listed: Vec<&str> = first["sites"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no sites: {first}"))
        .iter()
        .map(|site| site["site_id"].as_str().expect("a site_id"))
        .collect();
    let mut by_bytes = sites.to_vec();
    by_bytes.sort_unstable();
    assert_eq!(listed, by_bytes, "{name}: {first}");
}

both_backends!(an_analyzer_that_never_answers_times_out_retries_and_ends_failed);
fn an_analyzer_that_never_answers_times_out_retries_and_ends_failed(backend: Backend) {
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let dir = TempDir::new(&format!("silent-{}", backend.name()));
    let mut serve = backend.serve(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--job-timeout",
            "200ms",
            "--retry-backoff",
            "10ms",
            "--max-attempts",
            "3",
            "--workers",
            "2",
        ],
    );
    let addr = serve.addr;
    for id in ["sl-1", "sl-2"] {
        assert_eq!(
            post_json(addr, &report(id, "P-1", "s", &[("q1", 1)])).status,
            202
        );
    }
    for id in ["sl-1", "sl-2"] {
        let got = wait_settled(addr, id, Duration::from_secs(30));
        assert_eq!(got["status"], "failed", "{got}");
        assert_eq!(got["attempts"], 3, "{got}");
        // (Which words it uses is checked below, in
        // `a_timed_out_analyzer_call_is_reported_as_a_timeout`.)
        let error = got["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("analyzer"), "the last error: {got}");
        assert!(got.get("result").is_none(), "{got}");
    }
    assert_eq!(
        analyzer.connections.load(Ordering::SeqCst),
        6,
        "three calls per report"
    );
    let metrics = get(addr, "/metrics").text();
    for line in [
        "quiesce_reports_failed_total 2",
        "quiesce_reports_retried_total 4",
        "quiesce_reports_processed_total 0",
        "quiesce_backlog 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    // No thread is left stuck on the silent analyzer: the stop meets its
    // deadline and the process exits.
    let exit = serve.stop_ok(Duration::from_secs(25) + MARGIN);
    assert!(exit.elapsed < Duration::from_secs(25) + MARGIN);
    let (rows, _) = backend.rows(dir.path());
    assert!(
        rows.values()
            .all(|r| r.status == "failed" && r.attempts == 3),
        "{rows:?}"
    );
}

both_backends!(a_timed_out_analyzer_call_is_reported_as_a_timeout);
fn a_timed_out_analyzer_call_is_reported_as_a_timeout(backend: Backend) {
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let dir = TempDir::new(&format!("timeout-words-{}", backend.name()));
    let mut serve = backend.serve(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--job-timeout",
            "100ms",
            "--max-attempts",
            "1",
            "--workers",
            "8",
        ],
    );
    let ids: Vec<String> = (0..80).map(|i| format!("tw-{i}")).collect();
    for id in &ids {
        assert_eq!(
            post_json(serve.addr, &report(id, "P-1", "s", &[("q1", 1)])).status,
            202
        );
    }
    let mut errors = Vec::new();
    for id in &ids {
        let got = wait_settled(serve.addr, id, Duration::from_secs(30));
        assert_eq!(got["status"], "failed", "{got}");
        errors.push(got["last_error"].as_str().unwrap_or_default().to_string());
    }
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
    let unclear: Vec<&String> = errors.iter().filter(|e| !e.contains("deadline")).collect();
    assert!(
        unclear.is_empty(),
        "{} of {} timed-out calls not reported as a timeout: {unclear:?}",
        unclear.len(),
        errors.len()
    );
}

both_backends!(an_analyzer_answer_is_kept_in_the_result);
fn an_analyzer_answer_is_kept_in_the_result(backend: Backend) {
    let analyzer = ScriptedAnalyzer::start(vec![(
        200,
        r#"{"risk":"high","model":"v2","notes":["q2"]}"#.into(),
    )]);
    let url = analyzer.url();
    let dir = TempDir::new(&format!("analyzer-ok-{}", backend.name()));
    let mut serve = backend.serve(dir.path(), &["--analyzer-url", &url]);
    let body = report("an-1", "P-1", "site-a", &[("q1", 1), ("q2", 3)]);
    assert_eq!(post_json(serve.addr, &body).status, 202);
    let got = wait_settled(serve.addr, "an-1", Duration::from_secs(30));
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["attempts"], 1);
    assert_eq!(
        got["result"]["analysis"],
        json!({"risk": "high", "model": "v2", "notes": ["q2"]}),
        "{got}"
    );
    assert_eq!(got["result"]["score"]["total"], 4, "{got}");
    // What the analyzer was sent: the report and its score, as JSON.
    let requests = analyzer.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (head, sent) = &requests[0];
    assert!(head.starts_with("POST /v1/analyze HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let sent: Value = serde_json::from_slice(sent).expect("a JSON request");
    assert_eq!(sent["report"]["report_id"], "an-1", "{sent}");
    assert_eq!(sent["report"]["site_id"], "SITE-A", "{sent}");
    assert_eq!(
        sent["report"]["answers"],
        json!({"q1": 1, "q2": 3}),
        "{sent}"
    );
    assert_eq!(sent["score"]["total"], 4, "{sent}");
    assert_eq!(sent["score"]["alert"], true, "{sent}");
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

both_backends!(an_analyzer_error_is_retried_then_processed);
fn an_analyzer_error_is_retried_then_processed(backend: Backend) {
    let analyzer = ScriptedAnalyzer::start(vec![
        (500, r#"{"error":"busy"}"#.into()),
        (200, r#"{"ok":true}"#.into()),
    ]);
    let url = analyzer.url();
    let dir = TempDir::new(&format!("analyzer-retry-{}", backend.name()));
    let mut serve = backend.serve(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--retry-backoff",
            "10ms",
            "--workers",
            "1",
        ],
    );
    let body = report("ar-1", "P-1", "site-a", &[("q1", 1)]);
    assert_eq!(post_json(serve.addr, &body).status, 202);
    let got = wait_settled(serve.addr, "ar-1", Duration::from_secs(30));
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["attempts"], 2, "{got}");
    assert_eq!(got["result"]["analysis"], json!({"ok": true}), "{got}");
    assert!(
        got.get("last_error").is_none(),
        "cleared once processed: {got}"
    );
    assert_eq!(analyzer.requests().len(), 2);
    let metrics = get(serve.addr, "/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "quiesce_reports_retried_total 1"),
        "{metrics}"
    );
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}

both_backends!(an_analyzer_answer_that_is_not_json_fails_the_report_after_its_attempts);
fn an_analyzer_answer_that_is_not_json_fails_the_report_after_its_attempts(backend: Backend) {
    let analyzer = ScriptedAnalyzer::start(vec![(200, "not json".into())]);
    let url = analyzer.url();
    let dir = TempDir::new(&format!("analyzer-garbage-{}", backend.name()));
    let mut serve = backend.serve(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--retry-backoff",
            "10ms",
            "--max-attempts",
            "2",
        ],
    );
    let body = report("ag-1", "P-1", "site-a", &[("q1", 1)]);
    assert_eq!(post_json(serve.addr, &body).status, 202);
    let got = wait_settled(serve.addr, "ag-1", Duration::from_secs(30));
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(got["attempts"], 2, "{got}");
    assert!(
        got["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not JSON")),
        "{got}"
    );
    assert_eq!(analyzer.requests().len(), 2);
    serve.stop_ok(Duration::from_secs(25) + MARGIN);
}
