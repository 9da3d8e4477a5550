//! Black-box tests of the strict reading of a report (issue 12, findings 4
//! and 9): the real binary on 127.0.0.1, real HTTP, the real SQLite file.
//! A repeated key anywhere in the body, a `submitted_at` before 2000, a
//! control or bidi character in an id or an item name, item names that
//! collide once trimmed, a length over the limit once normalised: each is a
//! 400 naming its field (never echoing a value), and nothing is stored. A
//! UTF-8 BOM before the body is tolerated.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A server with a fresh data directory, removed at the end.
fn server(tag: &str) -> (TempDir, Serve) {
    let dir = TempDir::new(tag);
    let serve = Serve::start(dir.path(), &[]);
    (dir, serve)
}

/// A valid report's body as text, with `answers` as given (raw JSON).
fn body_with_answers(id: &str, answers: &str) -> String {
    format!(
        r#"{{"report_id":"{id}","patient_id":"P-SECRET-1","site_id":"site-a","instrument":"daily-diary","submitted_at":"{SUBMITTED_AT}","answers":{answers}}}"#
    )
}

/// Posts `body`, asserts a 400 naming `field`, and that the answer does not
/// carry `secret` (a submitted value).
#[track_caller]
fn refused(addr: std::net::SocketAddr, body: &[u8], field: &str, secret: &str, what: &str) {
    let response = post(addr, body);
    assert_error(&response, 400, Some(field), what);
    assert!(
        !response.text().contains(secret),
        "{what}: the answer echoes a submitted value: {}",
        response.text()
    );
}

/// The stored `answers` of report `id`, as JSON.
fn stored_answers(data_dir: &Path, id: &str) -> Value {
    let text: String = open_db(data_dir)
        .query_row(
            "SELECT answers FROM reports WHERE report_id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("the stored report");
    serde_json::from_str(&text).expect("stored answers are JSON")
}

/// The stored `site_id` of report `id`.
fn stored_site(data_dir: &Path, id: &str) -> String {
    open_db(data_dir)
        .query_row(
            "SELECT site_id FROM reports WHERE report_id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("the stored report")
}

#[test]
fn a_repeated_key_anywhere_is_a_400_naming_it() {
    let (dir, mut serve) = server("dup-keys");
    let addr = serve.addr;
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "an answer twice (the last one used to win, suppressing the alert)",
            body_with_answers("d-1", r#"{"q1":4,"q1":0}"#),
            "answers.q1",
            "P-SECRET-1",
        ),
        (
            "an answer twice with the same value",
            body_with_answers("d-2", r#"{"q1":2,"q2":1,"q1":2}"#),
            "answers.q1",
            "P-SECRET-1",
        ),
        (
            "an answer twice, once written with an escape",
            body_with_answers("d-3", r#"{"q1":4,"q\u0031":0}"#),
            "answers.q1",
            "P-SECRET-1",
        ),
        (
            "report_id twice",
            r#"{"report_id":"d-4","patient_id":"P-SECRET-1","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"q1":1},"report_id":"d-5"}"#.to_string(),
            "report_id",
            "P-SECRET-1",
        ),
        (
            "patient_id twice",
            r#"{"report_id":"d-6","patient_id":"P-SECRET-1","patient_id":"P-SECRET-2","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"q1":1}}"#.to_string(),
            "patient_id",
            "P-SECRET-2",
        ),
        (
            "answers twice",
            r#"{"report_id":"d-7","patient_id":"P-SECRET-1","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"q1":4},"answers":{"q1":0}}"#.to_string(),
            "answers",
            "P-SECRET-1",
        ),
        (
            "a key repeated in an object nested in an answer",
            body_with_answers("d-8", r#"{"q1":{"a":1,"a":2}}"#),
            "answers.q1.a",
            "P-SECRET-1",
        ),
        (
            "a key repeated in an object inside an array",
            body_with_answers("d-9", r#"{"q1":[0,{"b":true,"b":false}]}"#),
            "answers.q1.1.b",
            "P-SECRET-1",
        ),
    ];
    for (what, body, field, secret) in &cases {
        refused(addr, body.as_bytes(), field, secret, what);
        assert_eq!(
            post(addr, body.as_bytes()).json()["error"],
            json!("duplicate key"),
            "{what}"
        );
    }
    assert_eq!(
        rows(dir.path()).1,
        0,
        "a report with a repeated key was stored"
    );

    // The same keys in different objects are not repeats.
    let fine = r#"{"report_id":"d-ok","patient_id":"P-1","site_id":"site-a","instrument":"daily-diary","submitted_at":"2025-06-01T09:30:00Z","answers":{"report_id":1,"q1":4}}"#;
    let response = post(addr, fine.as_bytes());
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        stored_answers(dir.path(), "d-ok"),
        json!({"report_id": 1, "q1": 4})
    );
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn submitted_at_before_2000_is_a_400() {
    let (dir, mut serve) = server("too-early");
    let addr = serve.addr;
    let base = report("e-base", "P-SECRET-1", "site-a", &[("q1", 1)]);
    let at = |id: &str, when: &str| {
        let mut v = base.clone();
        v["report_id"] = json!(id);
        v["submitted_at"] = json!(when);
        v.to_string()
    };
    for (id, when) in [
        ("e-0", "0000-01-01T00:00:00Z"),
        ("e-1", "1969-12-31T23:59:59Z"),
        ("e-2", "1970-01-01T00:00:00Z"),
        ("e-3", "1999-12-31T23:59:59.999Z"),
        // 1999-12-31T23:00:00Z in UTC.
        ("e-4", "2000-01-01T01:00:00+02:00"),
    ] {
        refused(addr, at(id, when).as_bytes(), "submitted_at", when, when);
    }
    assert_eq!(
        rows(dir.path()).1,
        0,
        "a report from before 2000 was stored"
    );

    for (id, when) in [
        ("e-ok-1", "2000-01-01T00:00:00Z"),
        ("e-ok-2", "1999-12-31T20:00:00-04:00"),
    ] {
        let response = post(addr, at(id, when).as_bytes());
        assert_eq!(response.status, 202, "{when}: {}", response.text());
    }
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn control_and_bidi_characters_in_ids_and_item_names_are_a_400() {
    let (dir, mut serve) = server("control-chars");
    let addr = serve.addr;
    let base = report("c-base", "P-1", "site-a", &[("q1", 1)]);
    let bad = [
        ("NUL", "\u{0}"),
        ("BEL", "\u{7}"),
        ("ESC", "\u{1b}"),
        ("DEL", "\u{7f}"),
        ("C1 NEL", "\u{85}"),
        ("C1 CSI", "\u{9b}"),
        ("LRM", "\u{200e}"),
        ("RLM", "\u{200f}"),
        ("LRE", "\u{202a}"),
        ("RLO", "\u{202e}"),
        ("LRI", "\u{2066}"),
        ("PDI", "\u{2069}"),
    ];
    let mut n = 0;
    for (name, ch) in bad {
        for field in ["report_id", "patient_id", "site_id", "instrument"] {
            n += 1;
            let mut v = base.clone();
            v["report_id"] = json!(format!("c-{n}"));
            // In the middle: trimming cannot remove it.
            let value = format!("A{ch}B-SECRET");
            v[field] = json!(value);
            refused(
                addr,
                v.to_string().as_bytes(),
                field,
                "B-SECRET",
                &format!("{name} in {field}"),
            );
        }
        n += 1;
        let item = format!("q{ch}1");
        let mut v = base.clone();
        v["report_id"] = json!(format!("c-{n}"));
        v["answers"] = json!({ item.clone(): 1 });
        refused(
            addr,
            v.to_string().as_bytes(),
            &format!("answers.{item}"),
            "P-1",
            &format!("{name} in an item name"),
        );
    }
    assert_eq!(
        rows(dir.path()).1,
        0,
        "a report with a control or bidi character was stored"
    );

    // Other non-ASCII text is fine, and surrounding whitespace is trimmed.
    let mut v = base.clone();
    v["report_id"] = json!("c-ok");
    v["patient_id"] = json!("\tPatiënt Ωμέγα 患者\n");
    v["instrument"] = json!("Échelle d'anxiété");
    v["answers"] = json!({"élément 1": 1});
    let response = post(addr, v.to_string().as_bytes());
    assert_eq!(response.status, 202, "{}", response.text());
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn item_names_that_collide_once_trimmed_are_a_400_and_names_are_stored_trimmed() {
    let (dir, mut serve) = server("trimmed-items");
    let addr = serve.addr;
    for (id, answers) in [
        ("t-1", r#"{"q1":4,"q1 ":0}"#),
        ("t-2", r#"{" q1":0,"q1":4}"#),
        ("t-3", r#"{"q1\t":4,"\nq1":0}"#),
    ] {
        let response = post(addr, body_with_answers(id, answers).as_bytes());
        assert_error(&response, 400, None, answers);
        let field = response.json()["field"]
            .as_str()
            .expect("a field")
            .to_string();
        let item = field.strip_prefix("answers.").unwrap_or_else(|| {
            panic!("{answers}: the field names an item: {field:?}");
        });
        assert_eq!(
            item.trim(),
            "q1",
            "{answers}: the field names q1: {field:?}"
        );
        assert!(
            !response.text().contains("P-SECRET"),
            "{answers}: echoes a value: {}",
            response.text()
        );
    }
    // Blank once trimmed.
    let response = post(addr, body_with_answers("t-4", r#"{"  ":1}"#).as_bytes());
    assert_error(&response, 400, Some("answers.  "), "a blank item name");
    assert_eq!(
        rows(dir.path()).1,
        0,
        "a report with colliding items was stored"
    );

    // A padded name alone is stored trimmed, and scored under that name.
    let response = post(
        addr,
        body_with_answers("t-ok", r#"{" q1 ":3,"q2":0}"#).as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        stored_answers(dir.path(), "t-ok"),
        json!({"q1": 3, "q2": 0})
    );
    let got = wait_settled(addr, "t-ok", Duration::from_secs(20));
    assert_eq!(
        got["result"]["score"]["alert_items"],
        json!(["q1"]),
        "{got}"
    );
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn lengths_are_checked_on_what_is_stored() {
    let (dir, mut serve) = server("lengths");
    let addr = serve.addr;
    // 'ß' upper-cases to "SS": 128 of them would be stored as 256.
    let mut v = report("l-1", "P-1", &"ß".repeat(128), &[("q1", 1)]);
    refused(addr, v.to_string().as_bytes(), "site_id", "ß", "128 ß");
    v["site_id"] = json!("ß".repeat(65));
    v["report_id"] = json!("l-2");
    refused(addr, v.to_string().as_bytes(), "site_id", "ß", "65 ß");
    assert_eq!(rows(dir.path()).1, 0, "an over-long site was stored");

    // 64 of them are 128 once upper-cased: the limit itself.
    v["site_id"] = json!("ß".repeat(64));
    v["report_id"] = json!("l-ok");
    let response = post(addr, v.to_string().as_bytes());
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(stored_site(dir.path(), "l-ok"), "SS".repeat(64));
    // An item name of 128 once trimmed is fine; of 129 it is not.
    let long = "i".repeat(128);
    let mut v = report("l-item", "P-1", "site-a", &[]);
    v["answers"] = json!({ format!("  {long}  "): 1 });
    let response = post_json(addr, &v);
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        stored_answers(dir.path(), "l-item"),
        json!({ long.clone(): 1 })
    );
    v["report_id"] = json!("l-item-2");
    v["answers"] = json!({ format!("{long}i"): 1 });
    assert_error(
        &post_json(addr, &v),
        400,
        Some(&format!("answers.{long}i")),
        "an item name of 129",
    );
    serve.stop_ok(Duration::from_secs(40));
}

#[test]
fn a_utf8_bom_before_the_body_is_tolerated() {
    let (dir, mut serve) = server("bom");
    let addr = serve.addr;
    let bom = "\u{feff}";
    let body = format!("{bom}{}", report("b-1", "P-1", "site-a", &[("q1", 1)]));
    let response = post(addr, body.as_bytes());
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(rows(dir.path()).1, 1);
    // The same report without the BOM is the same report.
    let plain = report("b-1", "P-1", "site-a", &[("q1", 1)]).to_string();
    assert_eq!(post(addr, plain.as_bytes()).status, 200, "a duplicate");

    // A BOM alone, a BOM twice, or a BOM elsewhere is still not a report.
    let twice = format!("{bom}{bom}{plain}");
    let late = format!(" {bom}{plain}");
    for (what, body) in [
        ("a BOM alone", bom.to_string()),
        ("a BOM and whitespace", format!("{bom} \r\n")),
        ("two BOMs", twice),
        ("a BOM after whitespace", late),
    ] {
        assert_error(&post(addr, body.as_bytes()), 400, Some("body"), what);
    }
    assert_eq!(rows(dir.path()).1, 1);
    serve.stop_ok(Duration::from_secs(40));
}

/// Issue 12: the earliest `submitted_at` is configurable
/// (`--min-submitted-at`): older reports are refused naming the field,
/// alone or in a batch; the flag cannot go before 2000.
#[test]
fn reports_submitted_before_the_configured_floor_are_refused() {
    let dir = TempDir::new("min-submitted");
    let mut serve = Serve::start(dir.path(), &["--min-submitted-at", "2025-01-01T00:00:00Z"]);
    let mut old = report("old-1", "P-1", "s", &[("q1", 1)]);
    old["submitted_at"] = json!("2024-12-31T23:59:59Z");
    let refused = post_json(serve.addr, &old);
    assert_error(&refused, 400, Some("submitted_at"), "before the floor");
    let fine = report("new-1", "P-1", "s", &[("q1", 1)]);
    assert_eq!(post_json(serve.addr, &fine).status, 202);
    let body =
        serde_json::to_vec(&json!([old, report("new-2", "P-2", "s", &[("q1", 1)])])).unwrap();
    let batch = post_batch(serve.addr, "application/json", &body);
    assert_eq!(batch.status, 200, "{}", batch.text());
    let results = batch.json()["results"].clone();
    assert_eq!(results[0]["status"], "invalid", "{results}");
    assert_eq!(results[0]["field"], "submitted_at", "{results}");
    assert_eq!(results[1]["status"], "accepted", "{results}");
    serve.stop_ok(Duration::from_secs(30));
    let (status, log) = run_to_exit(
        &["serve", "--min-submitted-at", "1999-12-31T00:00:00Z"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("must not be before 2000-01-01"), "{log}");
}
