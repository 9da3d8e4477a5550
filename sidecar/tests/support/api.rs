//! The sidecar's API as the tests speak it: valid reports, posting them,
//! error answers, waiting for a report to be processed.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::SUBMITTED_AT;
use super::http::{Conn, Response, exchange, get, request};

/// A JSON `POST /v1/reports`.
pub fn post_request(body: &[u8], keep_alive: bool) -> Vec<u8> {
    request(
        "POST",
        "/v1/reports",
        &[("Content-Type", "application/json")],
        Some(body),
        keep_alive,
    )
}

/// `POST /v1/reports` with a JSON body on a fresh connection.
#[track_caller]
pub fn post(addr: SocketAddr, body: &[u8]) -> Response {
    exchange(addr, &post_request(body, false))
}

/// Opens `n` keep-alive connections, each served one request, so that
/// each holds a handler thread until dropped.
#[track_caller]
pub fn hold_handlers(addr: SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut conn = Conn::open(addr).expect("connect");
            let response = conn
                .send(&request("GET", "/livez", &[], None, true))
                .expect("served");
            assert_eq!(response.status, 200);
            conn
        })
        .collect()
}

/// Posts `report` as JSON.
#[track_caller]
pub fn post_json(addr: SocketAddr, report: &Value) -> Response {
    post(addr, report.to_string().as_bytes())
}

/// A valid report.
pub fn report(id: &str, patient: &str, site: &str, answers: &[(&str, u8)]) -> Value {
    let answers: serde_json::Map<String, Value> = answers
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    json!({
        "report_id": id,
        "patient_id": patient,
        "site_id": site,
        "instrument": "daily-diary",
        "submitted_at": SUBMITTED_AT,
        "answers": answers,
    })
}

/// `POST /v1/reports:batch` with `body` as `content_type` (a JSON array
/// of reports, or NDJSON), on a fresh connection.
pub fn post_batch(addr: SocketAddr, content_type: &str, body: &[u8]) -> Response {
    exchange(
        addr,
        &request(
            "POST",
            "/v1/reports:batch",
            &[("Content-Type", content_type)],
            Some(body),
            false,
        ),
    )
}

/// Asserts an error answer: `status`, a JSON body with a non-empty
/// `error`, and (when given) the `field`.
#[track_caller]
pub fn assert_error(response: &Response, status: u16, field: Option<&str>, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: expected {status}, got {} {}",
        response.status,
        response.text()
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{what}: error bodies are JSON: {:?}",
        response.headers
    );
    let body = response.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: a non-empty \"error\": {body}"
    );
    if let Some(field) = field {
        assert_eq!(
            body["field"],
            json!(field),
            "{what}: the field named: {body}"
        );
    }
}

/// Polls `GET /v1/reports/{id}` until its status is not `queued`, within
/// `limit`; returns the last body.
#[track_caller]
pub fn wait_settled(addr: SocketAddr, id: &str, limit: Duration) -> Value {
    let give_up = Instant::now() + limit;
    loop {
        let response = get(addr, &format!("/v1/reports/{id}"));
        assert_eq!(response.status, 200, "GET {id}: {}", response.text());
        let body = response.json();
        if body["status"] != "queued" || Instant::now() > give_up {
            return body;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
