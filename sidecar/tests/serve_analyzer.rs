//! Black-box tests of the analyzer client as HTTP/1.1 (issue 12, finding
//! 6): a chunked answer and an interim `100 Continue` used to fail every
//! report ("analyzer answer is not JSON"); an error answer's body used to
//! be copied into `last_error`, which any caller can read.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// Starts serve with `analyzer`, posts one report, and returns it settled.
fn settle_one(analyzer: &ScriptedAnalyzer, id: &str) -> serde_json::Value {
    let dir = TempDir::new("analyzer-client");
    let url = analyzer.url();
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &url, "--max-attempts", "1"]);
    let answer = post_json(serve.addr, &report(id, "P-1", "s", &[("q1", 1)]));
    assert_eq!(answer.status, 202, "{answer:?}");
    let got = wait_settled(serve.addr, id, Duration::from_secs(30));
    serve.stop_ok(Duration::from_secs(30));
    got
}

#[test]
fn a_chunked_answer_is_read_whole() {
    let chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
        6\r\n{\"risk\r\n6\r\n\":0.25\r\n1\r\n}\r\n0\r\n\r\n"
            .to_vec();
    let analyzer = ScriptedAnalyzer::start_raw(vec![chunked]);
    let got = settle_one(&analyzer, "an-chunked");
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["result"]["analysis"], json!({"risk": 0.25}), "{got}");
}

#[test]
fn an_interim_100_continue_is_skipped() {
    let with_interim =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"risk\":0.5}"
            .to_vec();
    let analyzer = ScriptedAnalyzer::start_raw(vec![with_interim]);
    let got = settle_one(&analyzer, "an-interim");
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["result"]["analysis"], json!({"risk": 0.5}), "{got}");
}

#[test]
fn an_error_answer_is_named_by_its_status_without_the_peer_s_words() {
    let analyzer = ScriptedAnalyzer::start(vec![(500, "{\"echo\":\"P-1 answered 4\"}".into())]);
    let got = settle_one(&analyzer, "an-error");
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(got["last_error"], "analyzer answered 500", "{got}");
}

/// A sidecar stopped and continued (SIGSTOP, SIGCONT: a debugger, a
/// frozen container, a paused VM) while it waits for the analyzer: the
/// read interrupted by the stop signal is read again, not counted as a
/// failed attempt.
#[test]
fn a_stop_and_continue_during_an_analyzer_call_is_not_a_failed_attempt() {
    let analyzer = ScriptedAnalyzer::slow(Duration::from_millis(800));
    let dir = TempDir::new("analyzer-sigstop");
    let mut serve = Serve::start(dir.path(), &["--analyzer-url", &analyzer.url()]);
    let posted = post_json(serve.addr, &report("stop-1", "p", "S", &[("q1", 1)]));
    assert_eq!(posted.status, 202, "{}", posted.text());
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while analyzer.report_ids().is_empty() {
        assert!(
            std::time::Instant::now() < give_up,
            "the analyzer was never called"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    serve.signal("STOP");
    std::thread::sleep(Duration::from_millis(200));
    serve.signal("CONT");
    let body = wait_settled(serve.addr, "stop-1", Duration::from_secs(20));
    assert_eq!(body["status"], "processed", "{body}");
    assert_eq!(body["attempts"], 1, "{body}");
    assert_eq!(analyzer.report_ids(), vec!["stop-1"]);
    serve.stop_ok(Duration::from_secs(15));
}
