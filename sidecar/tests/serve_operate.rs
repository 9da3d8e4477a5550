//! Black-box tests of what an operator does with the reports (issue 16,
//! item 4): list them by status a page at a time (`GET /v1/reports`,
//! `quiesce reports list`), and put a failed one back in the queue once
//! the analyzer is fixed (`POST /v1/reports/{id}/retry`, `quiesce reports
//! retry`), on SQLite and on PostgreSQL.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Runs `quiesce <args>` to its exit: its status, and its stdout then
/// stderr.
fn cli(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut command = quiesce(args);
    command.stdout(std::process::Stdio::piped());
    let exit = Process::start(command).wait_exit(Duration::from_secs(30));
    (exit.status, format!("{}{}", exit.stdout, exit.log))
}

/// An analyzer that fails the first `n` requests (500), then answers 200.
fn failing_first(n: usize) -> ScriptedAnalyzer {
    let mut script = vec![(500, r#"{"error":"down"}"#.to_string()); n];
    script.push((200, r#"{"risk":0.1}"#.to_string()));
    ScriptedAnalyzer::start(script)
}

fn post_three(serve: &Serve) {
    for id in ["op-1", "op-2", "op-3"] {
        let answer = post_json(serve.addr, &report(id, "P-secret", "site-a", &[("q1", 1)]));
        assert_eq!(answer.status, 202, "{}", answer.text());
        let settled = wait_settled(serve.addr, id, Duration::from_secs(30));
        assert_eq!(settled["status"], "failed", "{settled}");
        assert!(
            settled.get("processed_at").is_none(),
            "a failed report was never processed: {settled}"
        );
    }
}

#[test]
fn failed_reports_are_listed_a_page_at_a_time_and_re_driven_over_http() {
    let analyzer = failing_first(3);
    let dir = TempDir::new("operate-http");
    let url = analyzer.url();
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url, "--max-attempts", "1"]);
    post_three(&serve);
    // Page 1 of 2, then page 2; no patient id anywhere.
    let first = get(serve.addr, "/v1/reports?status=failed&limit=2");
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(!first.text().contains("P-secret"), "{}", first.text());
    let body = first.json();
    let ids: Vec<&str> = body["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| r["report_id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids, ["op-1", "op-2"]);
    assert_eq!(body["reports"][0]["status"], "failed");
    assert_eq!(body["reports"][0]["site_id"], "SITE-A");
    assert_eq!(body["next"], "op-2");
    let second = get(serve.addr, "/v1/reports?status=failed&limit=2&after=op-2").json();
    assert_eq!(second["reports"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["reports"][0]["report_id"], "op-3");
    assert_eq!(second["next"], Value::Null);
    assert_eq!(
        get(serve.addr, "/v1/reports?status=processed").json()["reports"],
        serde_json::json!([])
    );
    // A bad parameter is named.
    let bad = get(serve.addr, "/v1/reports?status=done");
    assert_error(&bad, 400, Some("status"), "an unknown status");
    let bad = get(serve.addr, "/v1/reports?limit=5000");
    assert_error(&bad, 400, Some("limit"), "a page too large");
    // The analyzer works now: re-drive one.
    let retried = exchange(
        serve.addr,
        &request("POST", "/v1/reports/op-2/retry", &[], Some(b""), false),
    );
    assert_eq!(retried.status, 202, "{}", retried.text());
    let settled = wait_settled(serve.addr, "op-2", Duration::from_secs(30));
    assert_eq!(settled["status"], "processed", "{settled}");
    assert_eq!(settled["attempts"], 1, "attempts start again: {settled}");
    // Only a failed report can be retried.
    let again = exchange(
        serve.addr,
        &request("POST", "/v1/reports/op-2/retry", &[], Some(b""), false),
    );
    assert_eq!(again.status, 409, "{}", again.text());
    let missing = exchange(
        serve.addr,
        &request("POST", "/v1/reports/nope/retry", &[], Some(b""), false),
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
    let wrong = get(serve.addr, "/v1/reports/op-1/retry");
    assert_eq!(wrong.status, 405);
    let metrics = get(serve.addr, "/metrics").text();
    assert!(
        metrics.contains("quiesce_reports_redriven_total 1"),
        "{metrics}"
    );
    serve.stop_ok(Duration::from_secs(30));
}

#[test]
fn the_command_line_lists_and_re_drives_without_a_server() {
    let analyzer = failing_first(3);
    let dir = TempDir::new("operate-cli");
    let url = analyzer.url();
    let data = dir.path().to_str().expect("utf-8").to_string();
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url, "--max-attempts", "1"]);
    post_three(&serve);
    // Reading works beside a running server; re-driving does not (SQLite).
    let (status, out) = cli(&[
        "reports",
        "--data-dir",
        &data,
        "list",
        "--status",
        "failed",
        "--limit",
        "2",
    ]);
    assert!(status.success(), "{out}");
    assert!(out.contains("more: --after op-2"), "{out}");
    assert!(!out.contains("P-secret"), "{out}");
    let (status, out) = cli(&["reports", "--data-dir", &data, "retry", "op-1"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("POST /v1/reports/{id}/retry"), "{out}");
    serve.stop_ok(Duration::from_secs(30));
    let (status, out) = cli(&["reports", "--data-dir", &data, "retry", "op-1", "op-404"]);
    assert_eq!(
        status.code(),
        Some(1),
        "one of the two was not re-driven: {out}"
    );
    assert!(out.contains("op-1: queued again"), "{out}");
    assert!(out.contains("op-404: no such report"), "{out}");
    // The next start processes it.
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url, "--max-attempts", "1"]);
    let settled = wait_settled(serve.addr, "op-1", Duration::from_secs(30));
    assert_eq!(settled["status"], "processed", "{settled}");
    serve.stop_ok(Duration::from_secs(30));
}

#[test]
fn on_postgresql_a_failed_report_is_re_driven_from_the_command_line_while_serving() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let analyzer = failing_first(3);
    let dir = TempDir::new("operate-pg");
    let (url, db_url) = (analyzer.url(), db.url());
    let mut serve = Serve::start(
        dir.path(),
        &[
            "--analyzer-url",
            &url,
            "--max-attempts",
            "1",
            "--database-url",
            &db_url,
        ],
    );
    post_three(&serve);
    let listed = get(serve.addr, "/v1/reports?status=failed").json();
    assert_eq!(listed["reports"].as_array().map(Vec::len), Some(3));
    let (status, out) = cli(&[
        "reports",
        "--database-url",
        &db_url,
        "list",
        "--status",
        "failed",
    ]);
    assert!(status.success(), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("\"report_id\"")).count(),
        3,
        "{out}"
    );
    let (status, out) = cli(&["reports", "--database-url", &db_url, "retry", "op-3"]);
    assert!(status.success(), "{out}");
    assert!(out.contains("op-3: queued again"), "{out}");
    let settled = wait_settled(serve.addr, "op-3", Duration::from_secs(30));
    assert_eq!(settled["status"], "processed", "{settled}");
    assert_eq!(
        db.scalar("SELECT n FROM counts WHERE name = 'backlog'"),
        "0"
    );
    serve.stop_ok(Duration::from_secs(30));
}
