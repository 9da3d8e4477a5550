//! Black-box tests of the clinical side (issue 15): FHIR R4
//! QuestionnaireResponse in and its resource and Observation back out,
//! the registered instruments' rules at intake and in the result (PHQ-9's
//! item-9 alert), and batch uploads (ours and a FHIR `batch` Bundle), on
//! both stores.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PHQ9: &str = include_str!("../../examples/data/fhir/phq9-questionnaire-response.json");
const BUNDLE: &str = include_str!("../../examples/data/fhir/batch-bundle.json");

fn fhir_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> Response {
    exchange(
        addr,
        &request(
            "POST",
            path,
            &[("Content-Type", "application/fhir+json")],
            Some(body),
            false,
        ),
    )
}

fn phq9(id: &str, answers: &[(&str, u8)]) -> Value {
    let mut body = report(id, "P-9", "site-9", &[]);
    body["instrument"] = json!("PHQ-9");
    body["answers"] = answers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    body
}

both_backends!(
    a_questionnaire_response_is_stored_verbatim_and_scored_as_an_observation,
    registered_instruments_are_validated_and_item_9_always_alerts,
    a_batch_answers_each_item_and_keeps_the_good_ones,
);

fn a_questionnaire_response_is_stored_verbatim_and_scored_as_an_observation(backend: Backend) {
    let dir = TempDir::new("fhir");
    let mut serve = backend.serve(dir.path(), &[]);
    let addr = serve.addr;
    let created = fhir_post(addr, "/fhir/QuestionnaireResponse", PHQ9.as_bytes());
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        created.header("content-type"),
        Some("application/fhir+json")
    );
    let location = created.header("location").expect("a Location").to_string();
    let id = location
        .strip_prefix("/fhir/QuestionnaireResponse/")
        .expect("the resource's location")
        .to_string();
    assert!(
        !created.text().contains("P-1001"),
        "the patient echoed: {}",
        created.text()
    );
    // The same resource again: already stored, same place.
    let again = fhir_post(addr, "/fhir/QuestionnaireResponse", PHQ9.as_bytes());
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("location"), Some(location.as_str()));
    // Another resource with the same identifier: a conflict, in FHIR.
    let changed = PHQ9.replacen("LA6569-3", "LA6570-1", 1);
    assert_ne!(changed, PHQ9);
    let conflict = fhir_post(addr, "/fhir/QuestionnaireResponse", changed.as_bytes());
    assert_eq!(conflict.status, 409, "{}", conflict.text());
    assert_eq!(conflict.json()["resourceType"], "OperationOutcome");
    assert_eq!(conflict.json()["issue"][0]["code"], "conflict");
    // The resource as it was sent, byte for byte.
    let stored = get(addr, &location);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.body, PHQ9.as_bytes());
    let settled = wait_settled(addr, &id, Duration::from_secs(30));
    assert_eq!(settled["status"], "processed", "{settled}");
    assert_eq!(settled["instrument"], "PHQ-9");
    let score = &settled["result"]["score"];
    let search = get(
        addr,
        &format!("/fhir/Observation?derived-from=QuestionnaireResponse/{id}"),
    );
    assert_eq!(search.status, 200, "{}", search.text());
    let bundle = search.json();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["total"], 1, "{bundle}");
    let observation = &bundle["entry"][0]["resource"];
    assert_eq!(observation["resourceType"], "Observation");
    assert_eq!(observation["code"]["coding"][0]["code"], "44261-6");
    assert_eq!(observation["valueInteger"], score["total"]);
    assert_eq!(
        observation["derivedFrom"][0]["reference"],
        format!("QuestionnaireResponse/{id}")
    );
    // In-progress answers are not a report.
    let draft = PHQ9.replace("\"completed\"", "\"in-progress\"");
    let refused = fhir_post(addr, "/fhir/QuestionnaireResponse", draft.as_bytes());
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["resourceType"], "OperationOutcome");
    assert!(
        refused.text().contains("QuestionnaireResponse.status"),
        "{}",
        refused.text()
    );
    let missing = get(addr, "/fhir/QuestionnaireResponse/nope");
    assert_eq!(missing.status, 404);
    serve.stop_ok(Duration::from_secs(30));
}

fn registered_instruments_are_validated_and_item_9_always_alerts(backend: Backend) {
    let dir = TempDir::new("phq9");
    let mut serve = backend.serve(dir.path(), &[]);
    let addr = serve.addr;
    // A missing item is refused, named; never scored as 0.
    let partial = post_json(addr, &phq9("p-1", &[("q1", 1), ("q2", 0)]));
    assert_eq!(partial.status, 400, "{}", partial.text());
    let body = partial.json();
    assert_eq!(body["field"], "answers.q3", "{body}");
    assert_eq!(body["problems"].as_array().map(Vec::len), Some(7), "{body}");
    // PHQ-9 answers are 0 to 3.
    let mut answers: Vec<(String, u8)> = (1..=9).map(|i| (format!("q{i}"), 0)).collect();
    answers[0].1 = 4;
    let four: Vec<(&str, u8)> = answers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let out_of_range = post_json(addr, &phq9("p-2", &four));
    assert_eq!(out_of_range.status, 400, "{}", out_of_range.text());
    assert_eq!(out_of_range.json()["field"], "answers.q1");
    // Item 9 at 1, a total of 1: minimal, and a safety alert.
    answers[0].1 = 0;
    answers[8].1 = 1;
    let item9: Vec<(&str, u8)> = answers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let posted = post_json(addr, &phq9("p-3", &item9));
    assert_eq!(posted.status, 202, "{}", posted.text());
    let settled = wait_settled(addr, "p-3", Duration::from_secs(30));
    let score = &settled["result"]["score"];
    assert_eq!(score["total"], 1, "{settled}");
    assert_eq!(score["band"], "minimal", "{settled}");
    assert_eq!(score["alert"], true, "{settled}");
    assert_eq!(score["alerts"][0]["rule"], "phq9-item9", "{settled}");
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("quiesce_alerts_total{instrument=\"PHQ-9\",rule=\"phq9-item9\"} 1"),
        "{metrics}"
    );
    serve.stop_ok(Duration::from_secs(30));
}

fn a_batch_answers_each_item_and_keeps_the_good_ones(backend: Backend) {
    let dir = TempDir::new("batch");
    let mut serve = backend.serve(dir.path(), &["--max-batch", "4"]);
    let addr = serve.addr;
    let good = report("b-1", "P-1", "S", &[("q1", 1)]);
    let mut bad = report("b-2", "P-2", "S", &[("q1", 1)]);
    bad["submitted_at"] = json!("yesterday");
    let other = report("b-3", "P-3", "S", &[("q1", 2)]);
    let body = serde_json::to_vec(&json!([good, good, bad, other])).expect("json");
    let batch = post_batch(addr, "application/json", &body);
    assert_eq!(batch.status, 200, "{}", batch.text());
    let results = batch.json()["results"].clone();
    let statuses: Vec<&str> = results
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("a status"))
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "duplicate", "invalid", "accepted"],
        "{results}"
    );
    assert_eq!(results[2]["field"], "submitted_at", "{results}");
    // NDJSON too; the same reports are duplicates now.
    let ndjson = format!("{good}\n{other}\n");
    let again = post_batch(addr, "application/x-ndjson", ndjson.as_bytes());
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["counts"]["duplicate"], 2, "{}", again.text());
    // Over the limit: refused whole, nothing stored.
    let five = serde_json::to_vec(&json!([
        report("c-1", "P", "S", &[]),
        report("c-2", "P", "S", &[]),
        report("c-3", "P", "S", &[]),
        report("c-4", "P", "S", &[]),
        report("c-5", "P", "S", &[]),
    ]))
    .expect("json");
    let over = post_batch(addr, "application/json", &five);
    assert_eq!(over.status, 413, "{}", over.text());
    // A FHIR batch Bundle: each entry answered on its own.
    let bundle = fhir_post(addr, "/fhir", BUNDLE.as_bytes());
    assert_eq!(bundle.status, 200, "{}", bundle.text());
    let answer = bundle.json();
    assert_eq!(answer["type"], "batch-response", "{answer}");
    let entry_statuses: Vec<&str> = answer["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().expect("a status"))
        .collect();
    assert_eq!(entry_statuses.len(), 3, "{answer}");
    assert_eq!(entry_statuses[0], "201 Created", "{answer}");
    assert!(
        entry_statuses[1].starts_with("200") || entry_statuses[1].starts_with("409"),
        "{answer}"
    );
    let (rows, count) = backend.rows(dir.path());
    assert!(
        rows.contains_key("b-1") && rows.contains_key("b-3"),
        "{rows:?}"
    );
    assert!(
        !rows.contains_key("b-2") && !rows.contains_key("c-1"),
        "{rows:?}"
    );
    assert_eq!(count, rows.len());
    serve.stop_ok(Duration::from_secs(30));
}

/// A batch whose server is told to stop while it is being stored: every
/// item answered accepted is in the database afterwards.
#[test]
fn a_batch_interrupted_by_sigterm_loses_no_accepted_item() {
    let dir = TempDir::new("batch-stop");
    let mut serve = Serve::start(dir.path(), &["--drain-delay", "0s"]);
    let items: Vec<Value> = (0..300)
        .map(|i| report(&format!("s-{i}"), &format!("P-{i}"), "S", &[("q1", 1)]))
        .collect();
    let body = serde_json::to_vec(&items).expect("json");
    let mut conn = Conn::open(serve.addr).expect("connect");
    conn.write(&request(
        "POST",
        "/v1/reports:batch",
        &[("Content-Type", "application/json")],
        Some(&body),
        false,
    ))
    .expect("send the batch");
    serve.signal("TERM");
    let answer = conn.read_response();
    let exit = serve.wait_exit(Duration::from_secs(30));
    assert_graceful(&exit);
    let (rows, _) = rows(dir.path());
    match answer {
        Ok(answer) if answer.status == 200 => {
            for result in answer.json()["results"].as_array().expect("results") {
                if result["status"] == "accepted" {
                    let id = result["report_id"].as_str().expect("an id");
                    assert!(rows.contains_key(id), "{id} answered accepted, not stored");
                }
            }
        }
        // Refused as the stop began: none of it may be half there.
        Ok(answer) => assert_eq!(answer.status, 503, "{}", answer.text()),
        Err(err) => panic!("no answer: {err:?}"),
    }
}

both_backends!(an_alert_is_claimed_before_a_backlog_of_routine_reports);

/// Issue 15, item 2: a report whose answers raise an alert (PHQ-9 item 9)
/// is not queued behind a backlog of routine ones: it is claimed in its
/// own lane first. Posted after 300 routine reports on a slow analyzer, it
/// is processed while most of them still wait (without the lane it would
/// come last).
fn an_alert_is_claimed_before_a_backlog_of_routine_reports(backend: Backend) {
    let _heavy = heavy();
    let analyzer = ScriptedAnalyzer::slow(Duration::from_millis(10));
    let url = analyzer.url();
    let dir = TempDir::new("urgent");
    let mut serve = backend.serve(dir.path(), &["--workers", "1", "--analyzer-url", &url]);
    let addr = serve.addr;
    let ids: Vec<String> = (0..300).map(|i| format!("routine-{i}")).collect();
    let body = serde_json::to_vec(
        &ids.iter()
            .map(|id| report(id, "P-R", "S", &[("q1", 1)]))
            .collect::<Vec<_>>(),
    )
    .expect("json");
    let batch = post_batch(addr, "application/json", &body);
    assert_eq!(batch.status, 200, "{}", batch.text());
    let mut answers: Vec<(String, u8)> = (1..=9).map(|i| (format!("q{i}"), 0)).collect();
    answers[8].1 = 1;
    let item9: Vec<(&str, u8)> = answers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let posted = post_json(addr, &phq9("urgent-1", &item9));
    assert_eq!(posted.status, 202, "{}", posted.text());
    let settled = wait_settled(addr, "urgent-1", Duration::from_secs(60));
    assert_eq!(settled["status"], "processed", "{settled}");
    let waiting: usize = backend
        .scalar(
            dir.path(),
            "SELECT COUNT(*) FROM reports WHERE status = 'queued' AND report_id LIKE 'routine-%'",
        )
        .parse()
        .expect("a count");
    assert!(
        waiting >= 100,
        "only {waiting} routine report(s) still waited when the alert was processed"
    );
    serve.stop_ok(Duration::from_secs(30));
}
