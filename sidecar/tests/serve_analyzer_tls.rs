//! Issue 13, item 3, the analyzer side: the analyzer client speaks
//! `https://` (trust in webpki-roots, or in `--analyzer-ca`) and sends its
//! own bearer token (`--analyzer-token-file`). Black-box: the real binary,
//! real TLS with certificates made here (rcgen), stand-in analyzers on
//! 127.0.0.1.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::*;

const TOKEN: &str = "an4lyzer-Token.one_9f8e7d6c5b4a";
const NEXT_TOKEN: &str = "an4lyzer-Token.two_0a1b2c3d4e5f";

/// Writes `text` to `name` in `dir`, with `mode`.
fn write_mode(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.write(name, text.as_bytes());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// Starts serve on `dir` with `extra`, posts report `id`, and returns it
/// settled (after one attempt) and serve, still running.
fn settle(dir: &TempDir, extra: &[&str], id: &str) -> (serde_json::Value, Serve) {
    let mut args = vec!["--max-attempts", "1"];
    args.extend_from_slice(extra);
    let serve = Serve::start(dir.path(), &args);
    let answer = post_json(serve.addr, &report(id, "P-1", "s", &[("q1", 1)]));
    assert_eq!(answer.status, 202, "{answer:?}");
    let got = wait_settled(serve.addr, id, Duration::from_secs(30));
    (got, serve)
}

/// A report is processed through an https analyzer whose certificate (for
/// 127.0.0.1, an IP SAN) is signed by the CA of --analyzer-ca. Before
/// issue 13 an https:// URL was refused at start.
#[test]
fn a_report_is_processed_through_an_https_analyzer_trusted_via_analyzer_ca() {
    let dir = TempDir::new("analyzer-tls-ok");
    let ca = TestCa::new("quiesce test CA");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let server = ca.server(&["localhost", "127.0.0.1"]).server_config();
    let analyzer =
        ScriptedAnalyzer::start_tls(vec![(200, r#"{"risk":0.75}"#.into())], server.clone());
    let url = analyzer.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (got, mut serve) = settle(
        &dir,
        &["--analyzer-url", &url, "--analyzer-ca", path_str(&ca_file)],
        "tls-ok",
    );
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(got["result"]["analysis"], json!({"risk": 0.75}), "{got}");
    assert_eq!(analyzer.report_ids(), vec!["tls-ok"]);
    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(
        exit.log
            .contains(&format!("TLS trusting {}", ca_file.display())),
        "{}",
        exit.log
    );

    // By name too: the certificate names localhost, and so does the URL.
    let by_name = ScriptedAnalyzer::start_tls(vec![(200, "{}".into())], server);
    let url = format!("https://localhost:{}/v1/analyze", by_name.addr.port());
    let (got, mut serve) = settle(
        &TempDir::new("analyzer-tls-name"),
        &["--analyzer-url", &url, "--analyzer-ca", path_str(&ca_file)],
        "tls-name",
    );
    assert_eq!(got["status"], "processed", "{got}");
    assert_eq!(by_name.report_ids(), vec!["tls-name"]);
    serve.stop_ok(Duration::from_secs(30));
}

/// An analyzer whose certificate the sidecar must not trust: signed by
/// another CA than --analyzer-ca's, signed by a CA that webpki-roots does
/// not hold (no --analyzer-ca), or not naming the URL's host. The report
/// is not sent (the analyzer reads no request: the handshake is refused),
/// it fails by the retry rules (one attempt here), its last_error is a
/// reason of ours naming the kind of failure, and the server stops
/// cleanly.
#[test]
fn an_analyzer_with_a_certificate_not_to_trust_gets_no_report() {
    let dir = TempDir::new("analyzer-tls-refused");
    let trusted = TestCa::new("trusted CA");
    let ca_file = trusted.write_pem(&dir, "trusted.pem");
    let rogue = TestCa::new("rogue CA");
    let rogue_server = rogue.server(&["localhost", "127.0.0.1"]).server_config();
    let wrong_name = trusted.server(&["analyzer.example"]).server_config();
    let unknown = "TLS handshake failed: the analyzer's certificate is not signed by a trusted \
                   CA (unknown issuer)";
    let cases = [
        ("rogue", rogue_server.clone(), Some(&ca_file), unknown),
        ("webpki", rogue_server, None, unknown),
        (
            "name",
            wrong_name,
            Some(&ca_file),
            "TLS handshake failed: the analyzer's certificate does not name the host of \
             --analyzer-url",
        ),
    ];
    for (case, config, ca, expected) in cases {
        let analyzer = ScriptedAnalyzer::start_tls(vec![(200, "{}".into())], config);
        let url = analyzer.url();
        let mut args = vec!["--analyzer-url", url.as_str()];
        if let Some(ca) = ca {
            args.extend(["--analyzer-ca", path_str(ca)]);
        }
        let data = TempDir::new(&format!("analyzer-tls-{case}"));
        let (got, mut serve) = settle(&data, &args, &format!("tls-{case}"));
        assert_eq!(got["status"], "failed", "{case}: {got}");
        assert_eq!(got["attempts"], 1, "{case}: {got}");
        assert_eq!(got["last_error"], expected, "{case}: {got}");
        assert!(analyzer.requests().is_empty(), "{case}: a request was read");
        assert_eq!(
            analyzer.unfinished.load(Ordering::SeqCst),
            1,
            "{case}: one handshake, refused"
        );
        let exit = serve.stop_ok(Duration::from_secs(30));
        assert!(!exit.log.contains("panicked"), "{case}: {}", exit.log);
    }
}

/// The token of --analyzer-token-file reaches the analyzer on every call,
/// over TLS; SIGHUP re-reads the file (a file that cannot be used keeps
/// the token in use); the token is never logged.
#[test]
fn the_bearer_token_arrives_at_the_analyzer_and_is_reloaded_on_sighup() {
    let dir = TempDir::new("analyzer-token");
    let ca = TestCa::new("quiesce test CA");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let analyzer = ScriptedAnalyzer::start_tls(
        vec![(200, "{}".into())],
        ca.server(&["127.0.0.1"]).server_config(),
    );
    let token_file = write_mode(&dir, "analyzer-token", &format!("\n{TOKEN}  \n"), 0o600);
    let url = analyzer.url();
    let data = TempDir::new("analyzer-token-data");
    let mut serve = Serve::start(
        data.path(),
        &[
            "--analyzer-url",
            &url,
            "--analyzer-ca",
            path_str(&ca_file),
            "--analyzer-token-file",
            path_str(&token_file),
        ],
    );
    let post_settled = |serve: &Serve, id: &str| {
        let answer = post_json(serve.addr, &report(id, "P-1", "s", &[("q1", 1)]));
        assert_eq!(answer.status, 202, "{answer:?}");
        let got = wait_settled(serve.addr, id, Duration::from_secs(30));
        assert_eq!(got["status"], "processed", "{got}");
    };
    let authorization = |i: usize| -> Option<String> {
        let (head, _) = analyzer.requests()[i].clone();
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
    };
    post_settled(&serve, "tok-1");
    assert_eq!(authorization(0), Some(format!("Bearer {TOKEN}")));

    // A new token, then SIGHUP: the next call carries it.
    let next = dir.join("analyzer-token.next");
    std::fs::write(&next, NEXT_TOKEN).expect("write");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&next, &token_file).expect("rename");
    serve.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        "the reload was never logged",
        || serve.log().contains("reloaded (a new token)"),
    );
    post_settled(&serve, "tok-2");
    assert_eq!(authorization(1), Some(format!("Bearer {NEXT_TOKEN}")));

    // A file others can read is not used: the token stays.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    serve.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        "the refused reload was never logged",
        || {
            serve
                .log()
                .contains("the analyzer token loaded before stays in use")
        },
    );
    post_settled(&serve, "tok-3");
    assert_eq!(authorization(2), Some(format!("Bearer {NEXT_TOKEN}")));
    assert!(serve.running(), "SIGHUP must never stop serve");

    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(
        exit.log
            .contains(&format!("chmod 600 {}", token_file.display())),
        "{}",
        exit.log
    );
    for token in [TOKEN, NEXT_TOKEN] {
        assert!(
            !exit.log.contains(token),
            "the token is logged: {}",
            exit.log
        );
    }
    // Both reloads are in the audit trail, how they went, no token.
    let mut command = quiesce(&["audit", "--data-dir", path_str(data.path())]);
    command.stdout(std::process::Stdio::piped());
    let audit = Process::start(command).wait_exit(Duration::from_secs(30));
    assert_eq!(audit.code(), Some(0), "{}", audit.log);
    let outcomes: Vec<String> = audit
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON lines"))
        .filter(|row| row["action"] == "analyzer_token.reloaded")
        .map(|row| row["outcome"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        outcomes,
        ["reloaded", "refused: the token loaded before stays in use"],
        "{}",
        audit.stdout
    );
    for token in [TOKEN, NEXT_TOKEN] {
        assert!(!audit.stdout.contains(token), "{}", audit.stdout);
    }
}

/// Runs `quiesce serve` with `extra` to its exit: (code, stderr), and
/// checks that the data directory was not created.
fn refused_start(dir: &TempDir, extra: &[&str]) -> (Option<i32>, String) {
    let data = dir.join("data");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path_str(&data),
    ];
    args.extend_from_slice(extra);
    let (status, stderr) = run_to_exit(&args, Duration::from_secs(30));
    assert!(!data.exists(), "the data directory was created: {stderr}");
    (status.code(), stderr)
}

/// A token file group or others can read is refused at start (exit 2),
/// with the chmod that fixes it, and never printed; so is a token that
/// would go in clear (http://) to a host that is not a loopback address,
/// unless --allow-insecure.
#[test]
fn an_unsafe_analyzer_token_is_refused_at_start() {
    let dir = TempDir::new("analyzer-token-refused");
    let open = write_mode(&dir, "open-token", TOKEN, 0o644);
    let (code, stderr) = refused_start(
        &dir,
        &[
            "--analyzer-url",
            "https://127.0.0.1:1/v1/analyze",
            "--analyzer-token-file",
            path_str(&open),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", open.display())),
        "{stderr}"
    );
    assert!(stderr.contains("analyzer token file"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");

    let private = write_mode(&dir, "token", TOKEN, 0o600);
    let in_clear = [
        "--analyzer-url",
        "http://192.0.2.7:9000/v1/analyze",
        "--analyzer-token-file",
        path_str(&private),
    ];
    let (code, stderr) = refused_start(&dir, &in_clear);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("in clear"), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
    // Yours alone: allowed.
    let data = TempDir::new("analyzer-token-insecure");
    let mut args = in_clear.to_vec();
    args.push("--allow-insecure");
    let mut serve = Serve::start(data.path(), &args);
    serve.stop_ok(Duration::from_secs(30));
}

/// A plain http:// analyzer on loopback gets the token too (the network
/// is the host's own).
#[test]
fn the_token_goes_over_http_to_a_loopback_analyzer() {
    let dir = TempDir::new("analyzer-token-loopback");
    let analyzer = ScriptedAnalyzer::start(vec![(200, "{}".into())]);
    let token = write_mode(&dir, "token", TOKEN, 0o600);
    let url = analyzer.url();
    let data = TempDir::new("analyzer-token-loopback-data");
    let (got, mut serve) = settle(
        &data,
        &[
            "--analyzer-url",
            &url,
            "--analyzer-token-file",
            path_str(&token),
        ],
        "tok-plain",
    );
    assert_eq!(got["status"], "processed", "{got}");
    let (head, _) = analyzer.requests()[0].clone();
    assert!(
        head.contains(&format!("Authorization: Bearer {TOKEN}")),
        "{head}"
    );
    serve.stop_ok(Duration::from_secs(30));
}

/// A CA file that is not one (no certificate, a broken one, missing) is a
/// usage error at start: exit 2, naming --analyzer-ca.
#[test]
fn a_bad_analyzer_ca_file_is_refused_at_start() {
    let dir = TempDir::new("analyzer-ca-refused");
    let not_pem = dir.write("not.pem", b"this is not a certificate\n");
    let broken = dir.write("broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
    let missing = dir.join("missing.pem");
    for (ca, expected) in [
        (&not_pem, "holds no certificate"),
        (&broken, "not a PEM file of certificates"),
        (&missing, "cannot read"),
    ] {
        let (code, stderr) = refused_start(
            &dir,
            &[
                "--analyzer-url",
                "https://127.0.0.1:1/v1/analyze",
                "--analyzer-ca",
                path_str(ca),
            ],
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("--analyzer-ca"), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // With an http:// URL, a CA is a mistake too.
    let ca = TestCa::new("quiesce test CA").write_pem(&dir, "ca.pem");
    let (code, stderr) = refused_start(
        &dir,
        &[
            "--analyzer-url",
            "http://127.0.0.1:1/v1/analyze",
            "--analyzer-ca",
            path_str(&ca),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs an https://"), "{stderr}");
}

/// The job's context still ends a call under TLS: an analyzer that never
/// answers the handshake (a listener that reads and stays silent), or
/// that completes it, reads the request and does not answer in time, costs
/// the job's deadline; a shutdown during a stalled handshake is prompt and
/// leaves the report queued, its attempt not counted.
#[test]
fn a_call_stalled_in_the_handshake_or_the_answer_ends_with_the_context() {
    let dir = TempDir::new("analyzer-tls-stall");
    let ca = TestCa::new("quiesce test CA");
    let ca_file = ca.write_pem(&dir, "ca.pem");

    // Mid-handshake, at the job deadline.
    let silent = SilentAnalyzer::start();
    let url = format!("https://{}/v1/analyze", silent.addr);
    let data = TempDir::new("analyzer-tls-stall-hs");
    let (got, mut serve) = settle(
        &data,
        &[
            "--analyzer-url",
            &url,
            "--analyzer-ca",
            path_str(&ca_file),
            "--job-timeout",
            "1s",
        ],
        "stall-hs",
    );
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(
        got["last_error"], "analyzer did not answer before the job deadline",
        "{got}"
    );
    serve.stop_ok(Duration::from_secs(30));

    // Mid-answer: the handshake done and the request read.
    let slow = ScriptedAnalyzer::start_tls_delayed(
        vec![(200, "{}".into())],
        ca.server(&["127.0.0.1"]).server_config(),
        Duration::from_secs(3),
    );
    let url = slow.url();
    let data = TempDir::new("analyzer-tls-stall-answer");
    let (got, mut serve) = settle(
        &data,
        &[
            "--analyzer-url",
            &url,
            "--analyzer-ca",
            path_str(&ca_file),
            "--job-timeout",
            "1s",
        ],
        "stall-answer",
    );
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(
        got["last_error"], "analyzer did not answer before the job deadline",
        "{got}"
    );
    assert_eq!(slow.report_ids(), vec!["stall-answer"]);
    serve.stop_ok(Duration::from_secs(30));

    // A shutdown mid-handshake, far before the job deadline.
    let silent = SilentAnalyzer::start();
    let url = format!("https://{}/v1/analyze", silent.addr);
    let data = TempDir::new("analyzer-tls-stall-stop");
    let mut serve = Serve::start(
        data.path(),
        &[
            "--analyzer-url",
            &url,
            "--analyzer-ca",
            path_str(&ca_file),
            "--job-timeout",
            "60s",
            "--shutdown-timeout",
            "10s",
        ],
    );
    let answer = post_json(serve.addr, &report("stall-stop", "P-1", "s", &[("q1", 1)]));
    assert_eq!(answer.status, 202, "{answer:?}");
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(10),
        "the analyzer was never called",
        || silent.connections.load(Ordering::SeqCst) >= 1,
    );
    let exit = serve.terminate(Duration::from_secs(20));
    assert_graceful(&exit);
    let (rows, count) = rows(data.path());
    assert_eq!(count, 1, "{rows:?}");
    let row = &rows["stall-stop"];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("queued", 0),
        "{row:?}"
    );
}
