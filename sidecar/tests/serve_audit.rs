//! Black-box tests of the audit trail (issue 13, item 5): each action on a
//! report leaves a row, written with the change it records; the rows hold
//! no patient id and no answer; the table refuses UPDATE and DELETE (and
//! TRUNCATE on PostgreSQL); `quiesce audit` exports it without a server.

mod support;

use std::time::Duration;

use serde_json::Value;
use sha2::Digest as _;
use support::*;

/// Runs `quiesce <args>` to its exit: its status, stdout and stderr.
/// Posts, re-posts, conflicts, reads (found and not) and waits for the
/// processing: the audit rows every action leaves. Returns the body
/// first posted.
fn act(serve: &Serve) -> Vec<u8> {
    let body = serde_json::to_vec(&report(
        "au-1",
        "P-SECRET-7",
        "site-a",
        &[("q1", 3), ("q2", 1)],
    ))
    .expect("json");
    let post = |body: &[u8], request_id: &str| {
        exchange(
            serve.addr,
            &request(
                "POST",
                "/v1/reports",
                &[
                    ("Content-Type", "application/json"),
                    ("X-Request-Id", request_id),
                ],
                Some(body),
                false,
            ),
        )
    };
    assert_eq!(post(&body, "req-1").status, 202);
    assert_eq!(post(&body, "req-2").status, 200);
    let other =
        serde_json::to_vec(&report("au-1", "P-SECRET-7", "site-a", &[("q1", 0)])).expect("json");
    assert_eq!(post(&other, "req-3").status, 409);
    let settled = wait_settled(serve.addr, "au-1", Duration::from_secs(30));
    assert_eq!(settled["status"], "processed");
    assert_eq!(get(serve.addr, "/v1/reports/au-1").status, 200);
    assert_eq!(get(serve.addr, "/v1/reports/au-404").status, 404);
    body
}

/// The rows `act` must have left, in order (actions and outcomes), and no
/// patient data in any.
fn check(rows: &[Value], body: &[u8]) {
    let text = rows
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains("P-SECRET-7"),
        "a patient id in the audit trail:\n{text}"
    );
    assert!(
        !text.contains("\"q1\""),
        "an answer in the audit trail:\n{text}"
    );
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let of = |action: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(a, _)| a == action)
            .map(|(_, o)| o.as_str())
            .collect()
    };
    assert_eq!(
        seen.first().map(|(a, _)| a.as_str()),
        Some("server.started"),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(|(a, _)| a.as_str()),
        Some("server.stopped"),
        "{seen:?}"
    );
    assert_eq!(
        of("report.received"),
        ["202 accepted", "200 duplicate", "409 conflict"],
        "{seen:?}"
    );
    assert_eq!(of("attempt"), ["processed"], "{seen:?}");
    assert_eq!(of("alert.raised"), ["alert"], "{seen:?}");
    let at = |action: &str| seen.iter().position(|(a, _)| a == action).expect(action);
    assert!(at("attempt") < at("alert.raised"), "{seen:?}");
    // The polls for the processing read it too (200); one read of an
    // unknown report (404).
    let reads = of("report.read");
    assert!(reads.iter().all(|o| *o == "200" || *o == "404"), "{seen:?}");
    assert_eq!(reads.iter().filter(|o| **o == "404").count(), 1, "{seen:?}");
    assert!(reads.contains(&"200"), "{seen:?}");
    let received = rows
        .iter()
        .find(|r| r["action"] == "report.received")
        .expect("a received row");
    let sha = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(received["body_sha256"], sha.as_str());
    assert_eq!(received["request_id"], "req-1");
    assert_eq!(received["report_id"], "au-1");
    assert!(
        received["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{received}"
    );
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_action_leaves_a_row_and_the_trail_cannot_be_changed_sqlite() {
    let dir = TempDir::new("audit-sqlite");
    let mut serve = Serve::start(dir.path(), &[]);
    let body = act(&serve);
    serve.stop_ok(Duration::from_secs(30));
    let data = dir.path().to_str().expect("utf-8");
    let (status, stdout, log) = cli(&["audit", "--data-dir", data]);
    assert!(status.success(), "{log}");
    check(&lines(&stdout), &body);
    // Filters.
    let (_, stdout, _) = cli(&["audit", "--data-dir", data, "--report-id", "au-404"]);
    let rows = lines(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["action"], "report.read");
    let (_, stdout, _) = cli(&["audit", "--data-dir", data, "--caller", "pipeline"]);
    assert!(
        lines(&stdout).iter().all(|r| r["caller"] == "pipeline"),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&[
        "audit",
        "--data-dir",
        data,
        "--until",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(stdout, "");
    // Append-only: the database itself refuses a change.
    let db = rusqlite::Connection::open(dir.join("quiesce.db")).expect("open");
    for sql in ["UPDATE audit SET outcome = 'x'", "DELETE FROM audit"] {
        let err = db.execute(sql, []).expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[test]
fn every_action_leaves_a_row_and_the_trail_cannot_be_changed_postgres() {
    let Some(cluster) = pg_cluster() else { return };
    let db = cluster.database();
    let dir = TempDir::new("audit-pg");
    let url = db.url();
    let mut serve = Serve::start(dir.path(), &["--database-url", &url]);
    let body = act(&serve);
    serve.stop_ok(Duration::from_secs(30));
    let (status, stdout, log) = cli(&["audit", "--database-url", &url]);
    assert!(status.success(), "{log}");
    check(&lines(&stdout), &body);
    for sql in [
        "UPDATE audit SET outcome = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let refused = std::panic::catch_unwind(|| db.query(sql));
        let message = match refused {
            Ok(rows) => panic!("{sql} was allowed: {rows:?}"),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default(),
        };
        assert!(message.contains("append-only"), "{sql}: {message}");
    }
}

/// With bearer tokens, each row names the caller's token and address; a
/// refused request leaves a row (no secret, no guessed id); a reload of
/// the tokens (SIGHUP) leaves one too.
#[test]
fn rows_name_the_caller_and_refusals_and_reloads_are_recorded() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("audit-tokens");
    let tokens = dir.write(
        "tokens",
        b"site-app:aaaaaaaaaaaaaaaaaaaaaaaa:write\nmonitor:bbbbbbbbbbbbbbbbbbbbbbbb:read\n",
    );
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.sub("data");
    let tokens_arg = tokens.to_str().unwrap();
    let mut serve = Serve::start(&data, &["--tokens-file", tokens_arg]);
    let body = serde_json::to_vec(&report("tok-1", "P-SECRET-9", "s", &[("q1", 1)])).unwrap();
    let post = |auth: &str| {
        exchange(
            serve.addr,
            &request(
                "POST",
                "/v1/reports",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", auth),
                ],
                Some(&body),
                false,
            ),
        )
    };
    assert_eq!(post("Bearer aaaaaaaaaaaaaaaaaaaaaaaa").status, 202);
    assert_eq!(post("Bearer wrong-wrong-wrong-wrong").status, 401);
    let read = exchange(
        serve.addr,
        &request(
            "GET",
            "/v1/reports/guessed-id",
            &[("Authorization", "Bearer bbbbbbbbbbbbbbbbbbbbbbbb")],
            None,
            false,
        ),
    );
    assert_eq!(read.status, 404);
    serve.signal("HUP");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while !serve.log().contains("tokens file reloaded") {
        assert!(
            std::time::Instant::now() < give_up,
            "no reload:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.stop_ok(Duration::from_secs(30));
    let (status, stdout, log) = cli(&["audit", "--data-dir", data.to_str().unwrap()]);
    assert!(status.success(), "{log}");
    assert!(
        !stdout.contains("aaaaaaaa") && !stdout.contains("wrong-wrong"),
        "a secret:\n{stdout}"
    );
    assert!(!stdout.contains("P-SECRET-9"), "a patient id:\n{stdout}");
    let rows = lines(&stdout);
    let find =
        |action: &str| -> Vec<&Value> { rows.iter().filter(|r| r["action"] == action).collect() };
    let received = find("report.received");
    assert_eq!(received.len(), 1, "{stdout}");
    assert_eq!(received[0]["caller"], "site-app");
    assert!(
        received[0]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{stdout}"
    );
    let refused = find("auth.refused");
    assert_eq!(refused.len(), 1, "{stdout}");
    assert_eq!(refused[0]["outcome"], "401");
    assert_eq!(refused[0]["detail"]["path"], "/v1/reports");
    let reads = find("report.read");
    assert_eq!(reads.len(), 1, "{stdout}");
    assert_eq!(reads[0]["caller"], "monitor");
    assert_eq!(reads[0]["report_id"], "guessed-id");
    assert_eq!(reads[0]["outcome"], "404");
    let reloads = find("tokens.reloaded");
    assert_eq!(reloads.len(), 1, "{stdout}");
    assert_eq!(reloads[0]["outcome"], "2 token(s)");
}

/// A request without `X-Request-Id` gets one id, made once: the audit
/// row of the report received and the access log line of its POST name
/// the same.
#[test]
fn a_request_without_an_id_is_named_by_one_made_up_id_everywhere() {
    let dir = TempDir::new("audit-request-id");
    let mut serve = Serve::start(&dir.join("data"), &["--access-log"]);
    let answer = post_json(serve.addr, &report("rid-1", "P-1", "site-1", &[("q1", 1)]));
    assert_eq!(answer.status, 202, "{}", answer.text());
    let exit = serve.stop_ok(Duration::from_secs(30));
    let data = dir.join("data");
    let (status, stdout, _) = cli(&["audit", "--data-dir", data.to_str().expect("utf-8")]);
    assert!(status.success());
    let received: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .find(|row| row["action"] == "report.received")
        .unwrap_or_else(|| panic!("no report.received row:\n{stdout}"));
    let id = received["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request id: {received}"));
    let access: Vec<&str> = exit
        .log
        .lines()
        .filter(|l| l.contains("quiesce::access") && l.contains("POST /v1/reports "))
        .collect();
    assert_eq!(access.len(), 1, "{}", exit.log);
    assert!(
        access[0].contains(&format!("id={id} ")),
        "audit id {id}, access line {}",
        access[0]
    );
}
