//! Black-box tests of `quiesce serve`'s HTTP API: the real binary on
//! 127.0.0.1, real HTTP from a client of our own, the real database.
//! Every status code with its error body, every validation rule, hostile
//! bodies, body limits, slow and flooding clients.
//!
//! Part of the conformance suite: each test runs on both store backends,
//! embedded SQLite and PostgreSQL (`name::sqlite`, `name::postgres`; see
//! `both_backends!`), with the same assertions.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// A server on `backend` with a fresh data directory, removed at the end.
fn server(backend: &Backend, tag: &str, extra: &[&str]) -> (TempDir, Serve) {
    let dir = TempDir::new(&format!("{tag}-{}", backend.name()));
    let serve = backend.serve(dir.path(), extra);
    (dir, serve)
}

fn rfc3339_in(minutes: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format a timestamp")
}

both_backends!(an_accepted_report_is_202_then_processed_with_its_score);
fn an_accepted_report_is_202_then_processed_with_its_score(backend: Backend) {
    let (dir, mut serve) = server(&backend, "accepted", &[]);
    let addr = serve.addr;

    let body = json!({
        "report_id": "site12-2026-11-23-0001",
        "patient_id": "  P-0042 ",
        "site_id": " site-12",
        "instrument": " daily-diary ",
        "submitted_at": "2025-06-01T11:30:00+02:00",
        "answers": {"q1": 1, "q2": 3, "q3": 0},
    });
    let response = post_json(addr, &body);
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"report_id": "site12-2026-11-23-0001", "status": "accepted"})
    );
    // 202 means durable: the row is in the database already.
    let (rows, _) = backend.rows(dir.path());
    assert!(rows.contains_key("site12-2026-11-23-0001"), "{rows:?}");

    let got = wait_settled(addr, "site12-2026-11-23-0001", Duration::from_secs(20));
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["report_id"], "site12-2026-11-23-0001");
    assert_eq!(got["patient_id"], "P-0042", "trimmed: {got}");
    assert_eq!(got["site_id"], "SITE-12", "trimmed and upper-cased: {got}");
    assert_eq!(got["instrument"], "daily-diary", "trimmed: {got}");
    assert_eq!(got["submitted_at"], "2025-06-01T09:30:00Z", "in UTC: {got}");
    assert_eq!(got["attempts"], 1, "{got}");
    assert!(got["received_at"].is_string(), "{got}");
    assert!(got["processed_at"].is_string(), "{got}");
    assert!(got.get("last_error").is_none(), "{got}");
    let score = &got["result"]["score"];
    assert_eq!(score["total"], 4, "{got}");
    assert_eq!(score["max_item"], 3, "{got}");
    assert_eq!(score["alert"], true, "an item at 3: {got}");
    assert_eq!(score["alert_items"], json!(["q2"]), "{got}");
    assert_eq!(got["result"]["analysis"], Value::Null, "no analyzer: {got}");

    // An alert from the total alone (21 > 20), and no alert.
    let many: Vec<(String, u8)> = (0..11)
        .map(|i| (format!("item{i:02}"), if i == 0 { 1 } else { 2 }))
        .collect();
    let many: Vec<(&str, u8)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        post_json(addr, &report("by-total", "P-1", "s", &many)).status,
        202
    );
    assert_eq!(
        post_json(addr, &report("calm", "P-1", "s", &[("q1", 1), ("q2", 2)])).status,
        202
    );
    let by_total = wait_settled(addr, "by-total", Duration::from_secs(20));
    assert_eq!(by_total["status"], "processed", "{by_total}");
    assert_eq!(
        by_total["result"]["score"],
        json!({"total": 21, "max_item": 2, "alert": true, "alert_items": []})
    );
    let calm = wait_settled(addr, "calm", Duration::from_secs(20));
    assert_eq!(
        calm["result"]["score"],
        json!({"total": 3, "max_item": 2, "alert": false, "alert_items": []})
    );
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(the_same_report_again_is_a_200_duplicate_and_another_one_a_409);
fn the_same_report_again_is_a_200_duplicate_and_another_one_a_409(backend: Backend) {
    let (dir, mut serve) = server(&backend, "duplicate", &[]);
    let addr = serve.addr;
    let original = br#"{"report_id":"dup-1","patient_id":"P-7","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"q1":0,"q2":4}}"#;
    let response = post(addr, original);
    assert_eq!(response.status, 202, "{}", response.text());

    // The same content: fields reordered, whitespace, the same site in
    // another case, the same instant in another offset, text to trim.
    let same = [
        &br#"{"report_id":"dup-1","patient_id":"P-7","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"q1":0,"q2":4}}"#[..],
        br#"{ "answers" : { "q2" : 4 , "q1" : 0 } ,
              "submitted_at" : "2025-06-01T09:30:00Z", "instrument":"daily-diary",
              "site_id":"site-a", "patient_id":"P-7", "report_id":"dup-1" }"#,
        br#"{"report_id":"dup-1","patient_id":" P-7 ","site_id":"SITE-A","instrument":"daily-diary ","submitted_at":"2025-06-01T11:30:00+02:00","answers":{"q1":0,"q2":4}}"#,
    ];
    for body in same {
        let response = post(addr, body);
        assert_eq!(
            response.status,
            200,
            "{}: {}",
            String::from_utf8_lossy(body),
            response.text()
        );
        assert_eq!(
            response.json(),
            json!({"report_id": "dup-1", "status": "duplicate"})
        );
    }

    // The same id with other content.
    let others = [
        report("dup-1", "P-7", "site-a", &[("q1", 1), ("q2", 4)]),
        report("dup-1", "P-8", "site-a", &[("q1", 0), ("q2", 4)]),
        report("dup-1", "P-7", "site-b", &[("q1", 0), ("q2", 4)]),
        report("dup-1", "P-7", "site-a", &[("q1", 0), ("q2", 4), ("q3", 0)]),
    ];
    for body in &others {
        assert_error(
            &post_json(addr, body),
            409,
            Some("report_id"),
            &body.to_string(),
        );
    }
    // Still one row, with the original content, processed once.
    let got = wait_settled(addr, "dup-1", Duration::from_secs(20));
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["result"]["score"]["total"], 4, "{got}");
    assert_eq!(got["attempts"], 1, "{got}");
    assert_eq!(backend.copies(dir.path()).get("dup-1"), Some(&1));
    // A duplicate of a processed report is still a duplicate.
    assert_eq!(post(addr, original).status, 200);
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(each_validation_rule_is_a_400_naming_its_field);
fn each_validation_rule_is_a_400_naming_its_field(backend: Backend) {
    let (dir, mut serve) = server(&backend, "validation", &[]);
    let addr = serve.addr;
    let base = report("v-base", "P-1", "site-a", &[("q1", 1)]);
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let without = |field: &str| {
        let mut v = base.clone();
        v.as_object_mut().expect("an object").remove(field);
        v
    };
    let answers = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("q{i}"), json!(i % 5)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "report_id with a space",
            with("report_id", json!("has space")),
            "report_id",
        ),
        (
            "report_id with a slash",
            with("report_id", json!("a/b")),
            "report_id",
        ),
        (
            "report_id not ASCII",
            with("report_id", json!("r-é")),
            "report_id",
        ),
        (
            "report_id of 129",
            with("report_id", json!("x".repeat(129))),
            "report_id",
        ),
        ("report_id empty", with("report_id", json!("")), "report_id"),
        (
            "report_id a number",
            with("report_id", json!(7)),
            "report_id",
        ),
        ("report_id missing", without("report_id"), "report_id"),
        (
            "patient_id blank",
            with("patient_id", json!("   ")),
            "patient_id",
        ),
        (
            "patient_id of 129",
            with("patient_id", json!("p".repeat(129))),
            "patient_id",
        ),
        (
            "patient_id a number",
            with("patient_id", json!(5)),
            "patient_id",
        ),
        (
            "patient_id null",
            with("patient_id", Value::Null),
            "patient_id",
        ),
        ("site_id empty", with("site_id", json!("")), "site_id"),
        (
            "site_id of 129",
            with("site_id", json!("s".repeat(129))),
            "site_id",
        ),
        ("site_id missing", without("site_id"), "site_id"),
        (
            "instrument blank",
            with("instrument", json!("\t \n")),
            "instrument",
        ),
        (
            "instrument of 129",
            with("instrument", json!("i".repeat(129))),
            "instrument",
        ),
        (
            "instrument an array",
            with("instrument", json!(["daily-diary"])),
            "instrument",
        ),
        ("instrument missing", without("instrument"), "instrument"),
        (
            "submitted_at a word",
            with("submitted_at", json!("yesterday")),
            "submitted_at",
        ),
        (
            "submitted_at a date",
            with("submitted_at", json!("2025-06-01")),
            "submitted_at",
        ),
        (
            "submitted_at without offset",
            with("submitted_at", json!("2025-06-01T09:30:00")),
            "submitted_at",
        ),
        (
            "submitted_at a number",
            with("submitted_at", json!(1_700_000_000)),
            "submitted_at",
        ),
        (
            "submitted_at 10 minutes ahead",
            with("submitted_at", json!(rfc3339_in(10))),
            "submitted_at",
        ),
        (
            "submitted_at missing",
            without("submitted_at"),
            "submitted_at",
        ),
        ("answers empty", with("answers", json!({})), "answers"),
        (
            "answers 201 items",
            with("answers", answers(201)),
            "answers",
        ),
        ("answers a list", with("answers", json!([1, 2])), "answers"),
        (
            "answers a string",
            with("answers", json!("q1=1")),
            "answers",
        ),
        ("answers missing", without("answers"), "answers"),
        (
            "answer 5",
            with("answers", json!({"q1": 1, "q9": 5})),
            "answers.q9",
        ),
        (
            "answer -1",
            with("answers", json!({"q1": -1})),
            "answers.q1",
        ),
        (
            "answer 1.5",
            with("answers", json!({"q1": 1.5})),
            "answers.q1",
        ),
        (
            "answer a string",
            with("answers", json!({"q1": "2"})),
            "answers.q1",
        ),
        (
            "answer null",
            with("answers", json!({"q1": null})),
            "answers.q1",
        ),
        (
            "answer true",
            with("answers", json!({"q1": true})),
            "answers.q1",
        ),
        (
            "answer huge",
            with("answers", json!({"q1": u64::MAX})),
            "answers.q1",
        ),
        ("unknown field", with("comment", json!("hi")), "comment"),
        (
            "a field in the wrong case",
            with("Report_ID", json!("x")),
            "Report_ID",
        ),
    ];
    for (what, body, field) in &cases {
        assert_error(&post_json(addr, body), 400, Some(field), what);
    }
    // None of them was stored.
    assert_eq!(
        backend.rows(dir.path()).1,
        0,
        "an invalid report was stored"
    );

    // The limits themselves are fine.
    let fine: Vec<(&str, Value)> = vec![
        (
            "report_id of 128",
            with("report_id", json!("a.b_c:d-".repeat(16))),
        ),
        ("patient_id of 128, padded", {
            let mut v = with("patient_id", json!(format!("  {}  ", "p".repeat(128))));
            v["report_id"] = json!("v-padded");
            v
        }),
        ("answers 200 items", {
            let mut v = with("answers", answers(200));
            v["report_id"] = json!("v-200");
            v
        }),
        ("submitted_at a minute ahead", {
            let mut v = with("submitted_at", json!(rfc3339_in(1)));
            v["report_id"] = json!("v-ahead");
            v
        }),
        ("answers 0 and 4", {
            let mut v = with("answers", json!({"a": 0, "b": 4}));
            v["report_id"] = json!("v-edges");
            v
        }),
    ];
    for (what, body) in &fine {
        let response = post_json(addr, body);
        assert_eq!(response.status, 202, "{what}: {}", response.text());
    }
    let padded = wait_settled(addr, "v-padded", Duration::from_secs(20));
    assert_eq!(padded["patient_id"], json!("p".repeat(128)), "trimmed");
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(hostile_and_malformed_bodies_are_400);
fn hostile_and_malformed_bodies_are_400(backend: Backend) {
    // A body limit large enough for the 100k-deep body to be parsed.
    let (dir, mut serve) = server(&backend, "malformed", &["--max-body", "1MiB"]);
    let addr = serve.addr;
    let valid = report("m-1", "P-1", "site-a", &[("q1", 1)]).to_string();

    let nested_100k = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    let deep_answer = valid.replace(
        r#""q1":1"#,
        &format!(r#""q1":{}1{}"#, "[".repeat(1000), "]".repeat(1000)),
    );
    let mut non_utf8 = valid.clone().into_bytes();
    let at = valid.find("P-1").expect("the patient id");
    non_utf8[at + 1] = 0xff;
    non_utf8[at + 2] = 0xfe;
    let lone_surrogate = valid.replace("P-1", r"P-\ud800");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nested 100k arrays", nested_100k.into_bytes()),
        ("nested 50k objects", nested_objects.into_bytes()),
        ("an answer nested 1000 deep", deep_answer.into_bytes()),
        ("truncated", valid.as_bytes()[..valid.len() - 7].to_vec()),
        ("truncated to one byte", b"{".to_vec()),
        ("non-UTF-8 bytes", non_utf8),
        ("a lone surrogate", lone_surrogate.into_bytes()),
        ("empty", Vec::new()),
        ("whitespace", b" \r\n\t ".to_vec()),
        ("null", b"null".to_vec()),
        ("an array", b"[1,2,3]".to_vec()),
        ("a string", br#""report""#.to_vec()),
        ("trailing garbage", format!("{valid} x").into_bytes()),
        ("two objects", format!("{valid}{valid}").into_bytes()),
        ("a NUL byte", b"\0".to_vec()),
    ];
    for (what, body) in &cases {
        let response = post(addr, body);
        assert_error(&response, 400, Some("body"), what);
    }
    // No body at all (no Content-Length either).
    let response = exchange(
        addr,
        &request(
            "POST",
            "/v1/reports",
            &[("Content-Type", "application/json")],
            None,
            false,
        ),
    );
    assert_error(&response, 400, Some("body"), "no body");
    // A huge but well-formed report (900 KB of patient id).
    let huge = report(&"h".repeat(10), &"p".repeat(900_000), "s", &[("q1", 1)]);
    assert_error(&post_json(addr, &huge), 400, Some("patient_id"), "huge");
    assert_eq!(
        backend.rows(dir.path()).1,
        0,
        "a malformed report was stored"
    );
    // The server took all that in its stride.
    assert_eq!(get(addr, "/livez").status, 200);
    assert_eq!(post(addr, valid.as_bytes()).status, 202);
    serve.stop_ok(Duration::from_secs(40));
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn chunked_post(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = request(
        "POST",
        "/v1/reports",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
        false,
    );
    raw.extend_from_slice(&chunked(body, chunk));
    raw
}

both_backends!(bodies_over_the_limit_are_413_with_content_length_or_chunked);
fn bodies_over_the_limit_are_413_with_content_length_or_chunked(backend: Backend) {
    let (dir, mut serve) = server(&backend, "limits", &["--max-body", "1KiB"]);
    let addr = serve.addr;
    // A valid report just over the limit, padded with whitespace.
    let small = report("l-ok", "P-1", "site-a", &[("q1", 1)]).to_string();
    let big = format!("{small}{}", " ".repeat(1100));
    assert!(big.len() > 1024);

    // An honest Content-Length over the limit, with the head alone: the
    // server answers before reading the body.
    let mut conn = Conn::open(addr).expect("connect");
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    conn.write(head.as_bytes()).expect("write the head");
    let response = conn.read_response().expect("an answer to the head alone");
    assert_error(
        &response,
        413,
        None,
        "Content-Length over the limit (head only)",
    );

    // Head and body in one go, as most clients send them.
    let response = post(addr, big.as_bytes());
    assert_error(&response, 413, None, "Content-Length over the limit");

    // With Expect: 100-continue, the 413 comes instead of the 100.
    let mut conn = Conn::open(addr).expect("connect");
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    conn.write(head.as_bytes()).expect("write the head");
    let response = conn.read_response().expect("an answer to the head");
    assert_error(&response, 413, None, "Expect: 100-continue over the limit");

    // Chunked bodies are counted on the bytes read: many small chunks,
    // and one chunk that says it is large.
    let response = exchange(addr, &chunked_post(big.as_bytes(), 100));
    assert_error(&response, 413, None, "chunked over the limit, small chunks");
    let response = exchange(addr, &chunked_post(big.as_bytes(), 2000));
    assert_error(&response, 413, None, "chunked over the limit, one chunk");
    let mut raw = request(
        "POST",
        "/v1/reports",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
        false,
    );
    raw.extend_from_slice(b"ffffffff\r\n{");
    let response = exchange(addr, &raw);
    assert_error(&response, 413, None, "a chunk of 4 GiB announced");

    // Under the limit, chunked or not, it is accepted.
    let response = exchange(addr, &chunked_post(small.as_bytes(), 10));
    assert_eq!(
        response.status,
        202,
        "chunked under the limit: {}",
        response.text()
    );
    let exact = format!("{small}{}", " ".repeat(1024 - small.len()));
    let exact = exact.replace("l-ok", "l-ex");
    assert_eq!(exact.len(), 1024);
    let response = post(addr, exact.as_bytes());
    assert_eq!(
        response.status,
        202,
        "exactly the limit: {}",
        response.text()
    );
    let (rows, _) = backend.rows(dir.path());
    let mut ids: Vec<&String> = rows.keys().collect();
    ids.sort();
    assert_eq!(ids, ["l-ex", "l-ok"]);
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(a_body_that_is_not_json_is_415);
fn a_body_that_is_not_json_is_415(backend: Backend) {
    let (dir, mut serve) = server(&backend, "content-type", &[]);
    let addr = serve.addr;
    let body = report("ct-1", "P-1", "site-a", &[("q1", 1)]).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("Content-Type", ct)])
            .unwrap_or_default();
        let response = exchange(
            addr,
            &request(
                "POST",
                "/v1/reports",
                &headers,
                Some(body.as_bytes()),
                false,
            ),
        );
        assert_error(&response, 415, None, &format!("{content_type:?}"));
    }
    assert_eq!(backend.rows(dir.path()).1, 0);
    // Parameters and case do not matter.
    let response = exchange(
        addr,
        &request(
            "POST",
            "/v1/reports",
            &[("Content-Type", "Application/JSON; charset=utf-8")],
            Some(body.as_bytes()),
            false,
        ),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(a_full_backlog_is_429_with_retry_after);
fn a_full_backlog_is_429_with_retry_after(backend: Backend) {
    // An analyzer that never answers and a long job deadline keep the
    // reports queued.
    let analyzer = SilentAnalyzer::start();
    let url = analyzer.url();
    let (dir, mut serve) = server(
        &backend,
        "backlog",
        &[
            "--max-backlog",
            "3",
            "--workers",
            "1",
            "--job-timeout",
            "60s",
            "--analyzer-url",
            &url,
            "--shutdown-timeout",
            "10s",
        ],
    );
    let addr = serve.addr;
    for i in 0..3 {
        let response = post_json(addr, &report(&format!("b-{i}"), "P-1", "s", &[("q1", 1)]));
        assert_eq!(response.status, 202, "report {i}: {}", response.text());
    }
    for i in 3..6 {
        let response = post_json(addr, &report(&format!("b-{i}"), "P-1", "s", &[("q1", 1)]));
        assert_error(&response, 429, None, &format!("report {i}"));
        let retry_after = response.header("retry-after").unwrap_or_default();
        assert!(
            retry_after.parse::<u64>().is_ok_and(|s| s > 0),
            "Retry-After in seconds: {:?}",
            response.headers
        );
    }
    // A full backlog still knows its reports: the same one again is a
    // duplicate, another under its id a conflict.
    let response = post_json(addr, &report("b-0", "P-1", "s", &[("q1", 1)]));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"report_id": "b-0", "status": "duplicate"})
    );
    let other = report("b-1", "P-2", "s", &[("q1", 1)]);
    assert_error(&post_json(addr, &other), 409, Some("report_id"), "b-1");
    for i in 0..3 {
        let got = get(addr, &format!("/v1/reports/b-{i}")).json();
        assert_eq!(got["status"], "queued", "{got}");
        assert_eq!(got["attempts"], 0, "{got}");
        assert!(got.get("result").is_none(), "{got}");
    }
    assert_eq!(get(addr, "/v1/reports/b-3").status, 404);
    // A report in work (the analyzer holds its call) is claimed by the
    // server.
    let give_up = Instant::now() + Duration::from_secs(20);
    while analyzer.connections.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < give_up, "the analyzer was never called");
        thread::sleep(Duration::from_millis(10));
    }
    let claimed = backend.claimed(dir.path());
    assert!(!claimed.is_empty(), "a report in work is claimed");
    // A stuck analyzer call does not hold up the stop.
    let exit = serve.stop_ok(Duration::from_secs(10 + 20));
    let (rows, _) = backend.rows(dir.path());
    assert_eq!(rows.len(), 3, "{rows:?}\n{}", exit.log);
    for row in rows.values() {
        assert_eq!(row.status, "queued", "a cancelled job stays queued");
        assert_eq!(row.attempts, 0, "a cancelled attempt does not count");
    }
    // Released at the stop, for the next start (or another replica) to
    // take at once.
    assert_eq!(
        backend.claimed(dir.path()),
        Vec::<String>::new(),
        "claims left after a graceful stop (in work before it: {claimed:?})\n{}",
        exit.log
    );
}

both_backends!(unknown_reports_and_routes_are_404_and_wrong_methods_405_with_allow);
fn unknown_reports_and_routes_are_404_and_wrong_methods_405_with_allow(backend: Backend) {
    let (_dir, mut serve) = server(&backend, "routes", &[]);
    let addr = serve.addr;
    assert_error(
        &get(addr, "/v1/reports/nobody"),
        404,
        None,
        "unknown report",
    );
    assert_error(&get(addr, "/v1/reports/a%2Fb"), 404, None, "unknown report");
    assert_error(&get(addr, "/v1/reports/a%00b"), 404, None, "unknown report");
    assert_error(&get(addr, "/v1/reports/"), 404, None, "an empty id");
    let long = format!("/v1/reports/{}", "x".repeat(5000));
    assert_error(&get(addr, &long), 404, None, "an id of 5000");
    for path in [
        "/",
        "/nope",
        "/v2/reports",
        "/v1/report",
        "/v1/enrollment/x",
    ] {
        assert_error(&get(addr, path), 404, None, path);
    }
    let cases = [
        ("PUT", "/v1/reports", "GET, POST"),
        ("DELETE", "/v1/reports", "GET, POST"),
        ("POST", "/v1/reports/x", "GET"),
        ("DELETE", "/v1/reports/x", "GET"),
        ("POST", "/v1/enrollment", "GET"),
    ];
    for (method, path, allow) in cases {
        let response = exchange(addr, &request(method, path, &[], Some(b""), false));
        assert_error(&response, 405, None, &format!("{method} {path}"));
        assert_eq!(
            response.header("allow"),
            Some(allow),
            "{method} {path}: {:?}",
            response.headers
        );
    }
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(health_readiness_and_metrics);
fn health_readiness_and_metrics(backend: Backend) {
    let (_dir, mut serve) = server(&backend, "health", &[]);
    let addr = serve.addr;
    for path in ["/livez", "/healthz", "/readyz", "/livez?verbose=1"] {
        let response = get(addr, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert!(response.json().is_object(), "{path}");
    }
    assert_eq!(
        post_json(addr, &report("mx-1", "P-1", "s", &[("q1", 1)])).status,
        202
    );
    assert_eq!(
        post_json(addr, &report("mx-1", "P-1", "s", &[("q1", 1)])).status,
        200
    );
    assert_eq!(post(addr, b"{").status, 400);
    wait_settled(addr, "mx-1", Duration::from_secs(20));

    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4"),
        "{:?}",
        response.headers
    );
    let text = response.text();
    for name in [
        "quiesce_http_requests_total",
        "quiesce_reports_accepted_total",
        "quiesce_reports_processed_total",
        "quiesce_reports_failed_total",
        "quiesce_reports_retried_total",
        "quiesce_backlog",
        "quiesce_jobs_running",
        "quiesce_job_duration_seconds_bucket",
        "quiesce_job_duration_seconds_sum",
        "quiesce_job_duration_seconds_count",
        "quiesce_store_commit_batch_size_bucket",
        "quiesce_store_commit_seconds_bucket",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "metric {name} missing:\n{text}"
        );
    }
    let value = |line_start: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value("quiesce_reports_accepted_total "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("quiesce_reports_processed_total "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value("quiesce_backlog "), Some(0.0), "{text}");
    for (route, status) in [
        ("/v1/reports", "202"),
        ("/v1/reports", "200"),
        ("/v1/reports", "400"),
    ] {
        let series = format!(
            "quiesce_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"{status}\"}} "
        );
        assert_eq!(value(&series), Some(1.0), "{series}\n{text}");
    }
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(malformed_framing_is_refused_with_a_status);
fn malformed_framing_is_refused_with_a_status(backend: Backend) {
    let (_dir, mut serve) = server(&backend, "framing", &[]);
    let addr = serve.addr;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage request line", b"HELLO\r\n\r\n".to_vec(), 400),
        (
            "two different Content-Lengths",
            b"POST /v1/reports HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            400,
        ),
        (
            "Content-Length and chunked",
            b"POST /v1/reports HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}".to_vec(),
            400,
        ),
        (
            "a negative Content-Length",
            b"POST /v1/reports HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "an unknown transfer coding",
            b"POST /v1/reports HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        (
            "a malformed chunk",
            b"POST /v1/reports HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a 20 KiB head",
            format!("GET /livez HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024)).into_bytes(),
            431,
        ),
    ];
    for (what, raw, status) in cases {
        let response = exchange(addr, &raw);
        assert_error(&response, status, None, what);
    }
    assert_eq!(get(addr, "/livez").status, 200);
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(keep_alive_serves_many_requests_on_one_connection);
fn keep_alive_serves_many_requests_on_one_connection(backend: Backend) {
    let (_dir, mut serve) = server(&backend, "keepalive", &[]);
    let addr = serve.addr;
    let mut conn = Conn::open(addr).expect("connect");
    for i in 0..20 {
        let body = report(&format!("ka-{i}"), "P-1", "s", &[("q1", 1)]).to_string();
        let response = conn
            .send(&post_request(body.as_bytes(), true))
            .unwrap_or_else(|f| panic!("request {i}: {f:?}"));
        assert_eq!(response.status, 202, "{}", response.text());
        assert!(!response.closes(), "request {i}: {:?}", response.headers);
        let response = conn
            .send(&request("GET", "/livez", &[], None, true))
            .unwrap_or_else(|f| panic!("GET {i}: {f:?}"));
        assert_eq!(response.status, 200);
    }
    // Pipelined requests in one write get their answers in order, whether
    // the store answers them after its commit (POST) or the handler at once
    // (GET, a 400): a new report, a duplicate, an invalid one, a GET.
    let mut mixed = Vec::new();
    let fresh = report("ka-pipe", "P-2", "s", &[("q1", 2)]).to_string();
    let again = report("ka-0", "P-1", "s", &[("q1", 1)]).to_string();
    mixed.extend(post_request(fresh.as_bytes(), true));
    mixed.extend(post_request(again.as_bytes(), true));
    mixed.extend(post_request(b"{}", true));
    mixed.extend(post_request(fresh.as_bytes(), true));
    mixed.extend(request("GET", "/livez", &[], None, true));
    conn.write(&mixed).expect("write");
    let statuses: Vec<u16> = (0..5)
        .map(|i| {
            conn.read_response()
                .unwrap_or_else(|f| panic!("answer {i}: {f:?}"))
                .status
        })
        .collect();
    assert_eq!(statuses, [202, 200, 400, 200, 200]);
    // Two pipelined requests in one write get two answers, in order.
    let mut both = request("GET", "/v1/reports/ka-0", &[], None, true);
    both.extend(request("GET", "/v1/reports/none", &[], None, false));
    conn.write(&both).expect("write");
    assert_eq!(conn.read_response().expect("first").status, 200);
    let second = conn.read_response().expect("second");
    assert_eq!(second.status, 404);
    assert!(second.closes(), "Connection: close is honoured");
    serve.stop_ok(Duration::from_secs(40));
}

/// A client that sends its request head a byte at a time, every ~200 ms.
fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>) -> (usize, usize, Result<Response, Failure>) {
    let head = b"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let mut conn = Conn::open(addr).expect("connect the slow client");
    let mut sent = 0;
    for byte in head.iter() {
        if stop.load(Ordering::SeqCst) || conn.write(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        // Has the server given up on us already?
        let mut probe = [0u8; 1];
        conn.stream().set_nonblocking(true).expect("nonblocking");
        let peeked = conn.stream().peek(&mut probe);
        conn.stream().set_nonblocking(false).expect("blocking");
        match peeked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => break, // a byte of an answer, the end, or a reset
        }
        thread::sleep(Duration::from_millis(200));
    }
    let outcome = conn.read_response();
    (sent, head.len(), outcome)
}

both_backends!(a_client_trickling_its_head_is_cut_off_without_holding_up_others);
fn a_client_trickling_its_head_is_cut_off_without_holding_up_others(backend: Backend) {
    let (_dir, mut serve) = server(
        &backend,
        "slowloris",
        &[
            "--header-timeout",
            "1s",
            "--http-threads",
            "2",
            "--max-connections",
            "16",
        ],
    );
    let addr = serve.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || trickle(addr, stop))
        })
        .collect();
    // Two slow clients on two handler threads: the others still get
    // served, by the time the slow ones are cut off at the latest.
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for i in 0..5 {
        let response = get(addr, "/livez");
        assert_eq!(response.status, 200, "request {i}");
        let body = report(&format!("sl-{i}"), "P-1", "s", &[("q1", 1)]);
        assert_eq!(post_json(addr, &body).status, 202);
    }
    let served_in = started.elapsed();
    let results: Vec<_> = slow
        .into_iter()
        .map(|h| h.join().expect("slow client"))
        .collect();
    stop.store(true, Ordering::SeqCst);
    for (sent, total, outcome) in results {
        assert!(
            sent < total,
            "the slow client was cut off before it could finish ({sent} of {total} bytes sent)"
        );
        match outcome {
            Ok(response) => assert_error(&response, 408, None, "the slow client"),
            Err(f) => assert!(f.closed_before_answer(), "closed, or 408: {f:?}"),
        }
        // At ~5 bytes a second, 1 s of header timeout lets through a
        // handful; far fewer than the whole head, even on a slow machine.
        assert!(sent < 60, "{sent} bytes sent before the cut");
    }
    println!("normal requests served in {served_in:?} while two clients trickled");
    serve.stop_ok(Duration::from_secs(40));
}

both_backends!(slow_bodies_and_audited_reads_hold_threads_not_the_intake);
fn slow_bodies_and_audited_reads_hold_threads_not_the_intake(backend: Backend) {
    // One thread waits for requests; three stand by.
    let (dir, mut serve) = server(
        &backend,
        "seats",
        &[
            "--http-threads",
            "4",
            "--http-active-threads",
            "1",
            "--body-timeout",
            "60s",
        ],
    );
    let addr = serve.addr;
    // How many threads stand by, once it is `n` (the metric follows the
    // threads; a bound on the wait, not a speed assertion).
    let standing_by_reaches = |n: f64| {
        let mut seen = None;
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            &format!("threads standing by never {n}"),
            || {
                seen = get(addr, "/metrics")
                    .text()
                    .lines()
                    .find_map(|l| l.strip_prefix("quiesce_http_threads_standing_by "))
                    .and_then(|v| v.parse::<f64>().ok());
                seen == Some(n)
            },
        );
    };
    standing_by_reaches(3.0);
    // Two clients that send a report's head and half its body, then wait:
    // each holds a thread, which gives its place up to one standing by.
    let bodies: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            report(&format!("slow-{i}"), "P-1", "s", &[("q1", 1)])
                .to_string()
                .into_bytes()
        })
        .collect();
    let mut slow: Vec<Conn> = bodies
        .iter()
        .map(|body| {
            let raw = request(
                "POST",
                "/v1/reports",
                &[("Content-Type", "application/json")],
                Some(body),
                false,
            );
            let mut conn = Conn::open(addr).expect("connect a slow client");
            conn.write(&raw[..raw.len() - body.len() / 2])
                .expect("the head and half the body");
            conn
        })
        .collect();
    standing_by_reaches(1.0);
    // Meanwhile the intake goes on, and audited reads (each waiting for
    // its audit row's commit) are served too, well before the bodies'
    // deadline (the client gives up after its own read timeout).
    for i in 0..5 {
        let body = report(&format!("quick-{i}"), "P-2", "s", &[("q1", 1)]);
        assert_eq!(post_json(addr, &body).status, 202, "report {i}");
        let read = get(addr, &format!("/v1/reports/quick-{i}"));
        assert_eq!(read.status, 200, "read {i}");
    }
    // The slow bodies end, and are taken.
    for (conn, body) in slow.iter_mut().zip(&bodies) {
        conn.write(&body[body.len() - body.len() / 2..])
            .expect("the rest of the body");
        let response = conn.read_response().expect("the slow report's answer");
        assert_eq!(response.status, 202);
    }
    standing_by_reaches(3.0);
    serve.stop_ok(Duration::from_secs(40));
    let stored = backend.scalar(
        dir.path(),
        "SELECT COUNT(*) FROM reports WHERE report_id LIKE 'slow-%' OR report_id LIKE 'quick-%'",
    );
    assert_eq!(stored, "7");
    // Each read is in the audit trail.
    let audited = backend.scalar(
        dir.path(),
        "SELECT COUNT(*) FROM audit WHERE action = 'report.read' AND report_id LIKE 'quick-%'",
    );
    assert_eq!(audited, "5");
}

both_backends!(a_connection_flood_past_the_limit_gets_immediate_503s);
fn a_connection_flood_past_the_limit_gets_immediate_503s(backend: Backend) {
    let (_dir, mut serve) = server(
        &backend,
        "flood",
        &["--http-threads", "2", "--max-connections", "4"],
    );
    let addr = serve.addr;
    // Two keep-alive connections served once and quiet, two more that
    // have sent nothing yet: four open, the cap (idle connections hold no
    // handler thread, but they count)...
    let mut held = hold_handlers(addr, 2);
    let mut waiting: Vec<Conn> = (0..2).map(|_| Conn::open(addr).expect("connect")).collect();
    thread::sleep(Duration::from_millis(200));
    // ...and every further one is answered 503 at once, without a handler.
    for i in 0..10 {
        let mut conn = Conn::open(addr).expect("connect");
        let response = conn
            .read_response()
            .unwrap_or_else(|f| panic!("connection {i} got no answer: {f:?}"));
        assert_error(&response, 503, None, &format!("flood connection {i}"));
        assert!(
            response.header("retry-after").is_some(),
            "{:?}",
            response.headers
        );
    }
    // A flooding client that sends its request first gets its 503 too.
    let mut lost = Vec::new();
    for i in 0..10 {
        let mut conn = Conn::open(addr).expect("connect");
        match conn.send(&request("GET", "/livez", &[], None, true)) {
            Ok(response) => assert_error(&response, 503, None, &format!("flood request {i}")),
            Err(f) => lost.push(format!("{i}: {f:?}")),
        }
    }
    // The connections within the cap are served all along.
    for conn in held.iter_mut().chain(waiting.iter_mut()) {
        let response = conn
            .send(&request("GET", "/livez", &[], None, false))
            .expect("a connection within the cap served");
        assert_eq!(response.status, 200);
    }
    assert!(
        lost.is_empty(),
        "flood requests that lost their 503 to a reset: {lost:#?}"
    );
    serve.stop_ok(Duration::from_secs(40));
}
