//! Issue 13, items 1 and 2: callers of `quiesce serve` authenticate with
//! bearer tokens from `--tokens-file`, reloaded on SIGHUP; a non-loopback
//! `--listen` without tokens is refused; `--admin-listen` serves the probes
//! and metrics only. Black-box: the real binary, real HTTP on 127.0.0.1,
//! real signals.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const SITE: &str = "5173a8e0c2d94b1f8e6a0d7c3b2f1e90"; // write only
const READER: &str = "b6e1f0a29c8d4e7f9a3b5c1d0e2f4a68"; // read only
const OPS: &str = "0f9e8d7c6b5a49382716a5b4c3d2e1f0"; // all (the default)
const WRONG: &str = "00000000000000000000000000000000";

/// Writes a tokens file with `mode`.
fn tokens_file(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.write(name, text.as_bytes());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Replaces the tokens file at `path` at once (as a Kubernetes Secret
/// volume does): a new file, private, renamed over it.
fn replace_tokens(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&next, path).expect("rename");
}

/// `method path` on a fresh connection, with the token if any.
#[track_caller]
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    exchange(addr, &request(method, path, &headers, body, false))
}

#[track_caller]
fn post_with(addr: SocketAddr, token: Option<&str>, id: &str) -> Response {
    let body = report(id, "P-1", "site-1", &[("q1", 1)]).to_string();
    call(addr, "POST", "/v1/reports", token, Some(body.as_bytes()))
}

#[track_caller]
fn get_with(addr: SocketAddr, token: Option<&str>, path: &str) -> Response {
    call(addr, "GET", path, token, None)
}

/// The value of `quiesce_auth_failures_total{reason=...}` in a /metrics body.
fn auth_failures(metrics: &str, reason: &str) -> Option<u64> {
    let prefix = format!("quiesce_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (within 20 s) for the log to hold `n` lines containing `needle`.
#[track_caller]
fn wait_log(serve: &mut Serve, needle: &str, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while serve.log().matches(needle).count() < n {
        if Instant::now() > give_up || !serve.running() {
            serve.fail(&format!("fewer than {n} log lines with {needle:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[track_caller]
fn assert_challenge(response: &Response, expected: &str, what: &str) {
    assert_eq!(response.status, 401, "{what}: {response:?}");
    assert_eq!(
        response.header("www-authenticate"),
        Some(expected),
        "{what}: {response:?}"
    );
}

/// Missing and wrong tokens get 401 with the challenge, each valid token
/// its 2xx, a token without the scope 403; the probes and /metrics stay
/// open; refusals are counted by reason and logged with the peer's
/// address, never with a secret.
#[test]
fn the_api_needs_a_token_with_the_scope_and_the_probes_stay_open() {
    let dir = TempDir::new("auth-tokens");
    let tokens = tokens_file(
        &dir,
        "tokens",
        &format!(
            "# site 1's app, a reader, ops\nsite1:{SITE}:write\n\nreader:{READER}:read\nops:{OPS}\n"
        ),
        0o600,
    );
    let mut serve = Serve::start(
        &dir.join("data"),
        &["--tokens-file", tokens.to_str().expect("utf-8")],
    );
    let addr = serve.addr;

    let missing = post_with(addr, None, "auth-1");
    assert_challenge(&missing, "Bearer realm=\"quiesce\"", "no token");
    assert_error(&missing, 401, None, "no token");
    let wrong = post_with(addr, Some(WRONG), "auth-1");
    assert_challenge(
        &wrong,
        "Bearer realm=\"quiesce\", error=\"invalid_token\"",
        "a wrong token",
    );
    assert_challenge(
        &get_with(addr, Some(WRONG), "/v1/reports/auth-1"),
        "Bearer realm=\"quiesce\", error=\"invalid_token\"",
        "a wrong token's GET",
    );
    assert_challenge(
        &get_with(addr, None, "/v1/enrollment"),
        "Bearer realm=\"quiesce\"",
        "enrollment without a token",
    );
    // Nothing was stored by the refused posts.
    let read = get_with(addr, Some(READER), "/v1/reports/auth-1");
    assert_eq!(read.status, 404, "{read:?}");

    // Each token that may write, posts.
    assert_eq!(post_with(addr, Some(SITE), "auth-1").status, 202);
    assert_eq!(post_with(addr, Some(OPS), "auth-2").status, 202);
    // Each token that may read, reads.
    for token in [READER, OPS] {
        let read = get_with(addr, Some(token), "/v1/reports/auth-1");
        assert_eq!(read.status, 200, "{read:?}");
        assert_eq!(read.json()["report_id"], "auth-1");
        assert_eq!(get_with(addr, Some(token), "/v1/enrollment").status, 200);
    }
    // A write-only token cannot read; a read-only token cannot write.
    let forbidden = get_with(addr, Some(SITE), "/v1/reports/auth-1");
    assert_error(&forbidden, 403, None, "a write-only token's GET");
    assert!(!forbidden.text().contains("P-1"), "{forbidden:?}");
    assert_eq!(get_with(addr, Some(SITE), "/v1/enrollment").status, 403);
    assert_eq!(post_with(addr, Some(READER), "auth-3").status, 403);

    // The probes and the metrics need nothing.
    for path in ["/livez", "/healthz", "/readyz", "/metrics"] {
        let open = get_with(addr, None, path);
        assert_eq!(open.status, 200, "{path}: {open:?}");
    }
    let metrics = get_with(addr, None, "/metrics").text();
    assert_eq!(auth_failures(&metrics, "missing"), Some(2), "{metrics}");
    assert_eq!(auth_failures(&metrics, "invalid"), Some(2), "{metrics}");
    assert_eq!(auth_failures(&metrics, "forbidden"), Some(3), "{metrics}");

    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(
        exit.log
            .contains("401 missing: POST /v1/reports from 127.0.0.1:"),
        "{}",
        exit.log
    );
    assert!(
        exit.log
            .contains("401 invalid: GET /v1/reports/{id} from 127.0.0.1:"),
        "{}",
        exit.log
    );
    assert!(exit.log.contains("3 token(s) loaded"), "{}", exit.log);
    assert!(
        !exit.log.contains("no --tokens-file"),
        "warned of an open API: {}",
        exit.log
    );
    for secret in [SITE, READER, OPS, WRONG] {
        assert!(
            !exit.log.contains(secret),
            "a secret in the log:\n{}",
            exit.log
        );
    }
}

/// Rotation: while a client keeps posting with a token present in every
/// version of the file, the file is replaced and SIGHUP sent, again and
/// again. No request of that client is refused; the token removed is
/// refused (revoked) and the one added is accepted from the reload on.
#[test]
fn tokens_rotate_on_sighup_without_refusing_a_valid_one() {
    let dir = TempDir::new("auth-rotate");
    let tokens = tokens_file(
        &dir,
        "tokens",
        &format!("steady:{OPS}\nold:{SITE}\n"),
        0o600,
    );
    let mut serve = Serve::start(
        &dir.join("data"),
        &["--tokens-file", tokens.to_str().expect("utf-8")],
    );
    let addr = serve.addr;
    assert_eq!(post_with(addr, Some(SITE), "rot-old-0").status, 202);

    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, posted) = (stop.clone(), posted.clone());
        thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = statuses.len();
                let response = post_with(addr, Some(OPS), &format!("rot-{n}"));
                statuses.push(response.status);
                posted.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        })
    };
    // The client's posts go on through every reload: a few between each.
    let wait_posts = |serve: &mut Serve, at_least: usize| {
        let give_up = Instant::now() + Duration::from_secs(20);
        while posted.load(Ordering::SeqCst) < at_least {
            if Instant::now() > give_up {
                serve.fail("the client stopped posting");
            }
            thread::sleep(Duration::from_millis(1));
        }
    };
    // Alternate between two files, each with the steady token.
    let versions = [
        format!("steady:{OPS}\nnew:{READER}:all\n"),
        format!("# back\nold:{SITE}\nsteady:{OPS}:write\n"),
    ];
    for round in 0..6 {
        wait_posts(&mut serve, 5 * round + 5);
        replace_tokens(&tokens, &versions[round % 2]);
        serve.signal("HUP");
        wait_log(&mut serve, "tokens file reloaded: 2 token(s)", round + 1);
        let (gone, added) = if round % 2 == 0 {
            (SITE, READER)
        } else {
            (READER, SITE)
        };
        let revoked = post_with(addr, Some(gone), &format!("rot-gone-{round}"));
        assert_challenge(
            &revoked,
            "Bearer realm=\"quiesce\", error=\"invalid_token\"",
            "a revoked token",
        );
        let fresh = post_with(addr, Some(added), &format!("rot-added-{round}"));
        assert_eq!(fresh.status, 202, "round {round}: {fresh:?}");
    }
    wait_posts(&mut serve, 5 * 6 + 5);
    stop.store(true, Ordering::SeqCst);
    let statuses = client.join().expect("the client");
    assert!(statuses.len() >= 35, "the client posted {statuses:?}");
    let refused: Vec<(usize, u16)> = statuses
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, s)| s != 202)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} requests with a valid token refused during the rotation, the first ones \
         (index, status): {:?}",
        refused.len(),
        statuses.len(),
        &refused[..refused.len().min(10)]
    );
    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(
        exit.log
            .contains("received SIGHUP: reloading the tokens file"),
        "{}",
        exit.log
    );
    assert!(!exit.log.contains("ignored"), "{}", exit.log);
}

/// A reload that finds the file unusable (readable by others, then a bad
/// line) keeps the tokens loaded before, and says why.
#[test]
fn a_bad_tokens_file_on_reload_keeps_the_old_set() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("auth-bad-reload");
    let tokens = tokens_file(&dir, "tokens", &format!("site1:{SITE}\n"), 0o600);
    let mut serve = Serve::start(
        &dir.join("data"),
        &["--tokens-file", tokens.to_str().expect("utf-8")],
    );
    let addr = serve.addr;

    replace_tokens(&tokens, &format!("reader:{READER}\n"));
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    serve.signal("HUP");
    wait_log(
        &mut serve,
        "not reloaded: the 1 token(s) loaded before stay valid",
        1,
    );
    assert_eq!(post_with(addr, Some(SITE), "bad-1").status, 202);
    assert_eq!(post_with(addr, Some(READER), "bad-2").status, 401);

    replace_tokens(&tokens, &format!("reader:{READER}\nshort:0123456789\n"));
    serve.signal("HUP");
    wait_log(
        &mut serve,
        "not reloaded: the 1 token(s) loaded before stay valid",
        2,
    );
    assert_eq!(post_with(addr, Some(SITE), "bad-3").status, 202);
    assert_eq!(post_with(addr, Some(READER), "bad-4").status, 401);

    replace_tokens(&tokens, &format!("reader:{READER}\n"));
    serve.signal("HUP");
    wait_log(&mut serve, "tokens file reloaded: 1 token(s)", 1);
    assert_eq!(post_with(addr, Some(SITE), "bad-5").status, 401);
    assert_eq!(post_with(addr, Some(READER), "bad-6").status, 202);

    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(exit.log.contains("chmod 600"), "{}", exit.log);
    assert!(exit.log.contains("line 2 (short)"), "{}", exit.log);
    assert!(!exit.log.contains("0123456789"), "{}", exit.log);
}

/// A tokens file others can read, or with a secret too short, stops the
/// start with exit 2 and the way out, before the data directory is
/// created; the secret is never printed.
#[test]
fn an_unusable_tokens_file_is_refused_at_start() {
    let dir = TempDir::new("auth-refused");
    let data = dir.join("data");
    let open = tokens_file(&dir, "open", &format!("site1:{SITE}\n"), 0o644);
    let (status, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--tokens-file",
            open.to_str().expect("utf-8"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", open.display())),
        "{stderr}"
    );
    assert!(!stderr.contains(SITE), "{stderr}");
    assert!(!data.exists(), "the data directory was created");

    let short = tokens_file(
        &dir,
        "short",
        &format!("site1:{SITE}\n# next\nsite2:tooShortSecret1\n"),
        0o600,
    );
    let (status, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--tokens-file",
            short.to_str().expect("utf-8"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3 (site2)"), "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
    assert!(!stderr.contains("tooShortSecret1"), "{stderr}");
    assert!(!stderr.contains(SITE), "{stderr}");
    assert!(!data.exists(), "the data directory was created");
}

/// A non-loopback --listen is refused (exit 2) before anything is created
/// or bound without tokens, and with tokens but without TLS (the tokens
/// and the reports would cross the network in clear; the TLS case is in
/// `serve_tls.rs`); with --allow-insecure (and a warning), it starts.
#[test]
fn a_non_loopback_listen_needs_tokens_and_tls_or_allow_insecure() {
    let dir = TempDir::new("auth-listen");
    let data = dir.join("data");
    let data_arg = data.to_str().expect("utf-8");
    let tokens = tokens_file(&dir, "tokens", &format!("site1:{SITE}\n"), 0o600);
    let tokens_arg = tokens.to_str().expect("utf-8");
    for (extra, missing) in [
        (&[][..], "--tokens-file"),
        (
            &["--tokens-file", tokens_arg][..],
            "without TLS (--tls-cert, --tls-key)",
        ),
    ] {
        let mut args = vec!["serve", "--listen", "0.0.0.0:0", "--data-dir", data_arg];
        args.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(&args, Duration::from_secs(30));
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--listen 0.0.0.0:0 is not a loopback address")
                && stderr.contains(missing)
                && stderr.contains("--allow-insecure"),
            "{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        assert!(!data.exists(), "the data directory was created");
    }

    let mut command = quiesce(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data_arg,
        "--allow-insecure",
        "--workers=1",
    ]);
    command.env("RUST_LOG", "info");
    let mut process = Process::start(command);
    let line = process.wait_for_line("listening on http://0.0.0.0:");
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let answer = post_with(addr, None, "nl-open");
    assert_eq!(answer.status, 202, "{answer:?}");
    process.signal("TERM");
    let exit = process.wait_exit(Duration::from_secs(30));
    assert_graceful(&exit);
    assert!(
        exit.log
            .contains("no --tokens-file: anyone who can reach 0.0.0.0:"),
        "{}",
        exit.log
    );
}

/// Without a tokens file on loopback, the API is open (as before) and the
/// start says so.
#[test]
fn without_tokens_on_loopback_the_api_is_open_and_the_start_warns() {
    let dir = TempDir::new("auth-open");
    let mut serve = Serve::start(&dir.join("data"), &[]);
    assert_eq!(post_with(serve.addr, None, "open-1").status, 202);
    assert_eq!(get_with(serve.addr, None, "/v1/reports/open-1").status, 200);
    serve.signal("HUP");
    assert_eq!(get_with(serve.addr, None, "/livez").status, 200);
    let exit = serve.stop_ok(Duration::from_secs(30));
    assert!(
        exit.log.contains(&format!(
            "no --tokens-file: anyone who can reach {} can read and write reports",
            serve.addr
        )),
        "{}",
        exit.log
    );
    assert!(
        exit.log
            .contains("received SIGHUP: ignored (no --tokens-file"),
        "{}",
        exit.log
    );
}

/// --admin-listen serves the probes and the metrics (here with
/// --metrics-token-required) and never patient data: 404 for the API,
/// even with a valid token. Its address file goes with the stop.
#[test]
fn the_admin_listener_serves_probes_and_metrics_only() {
    let dir = TempDir::new("auth-admin");
    let data = dir.join("data");
    let tokens = tokens_file(
        &dir,
        "tokens",
        &format!("site1:{SITE}:write\nops:{OPS}\n"),
        0o600,
    );
    let mut serve = Serve::start(
        &data,
        &[
            "--tokens-file",
            tokens.to_str().expect("utf-8"),
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-token-required",
        ],
    );
    let admin: SocketAddr = std::fs::read_to_string(data.join("admin.addr"))
        .expect("admin.addr")
        .trim()
        .parse()
        .expect("an address");
    assert_ne!(admin, serve.addr);
    assert_eq!(post_with(serve.addr, Some(SITE), "adm-1").status, 202);

    for path in ["/livez", "/healthz", "/readyz"] {
        let probe = get_with(admin, None, path);
        assert_eq!(probe.status, 200, "{path}: {probe:?}");
    }
    // /metrics needs a token, of any scope, on both listeners.
    for addr in [admin, serve.addr] {
        assert_challenge(
            &get_with(addr, None, "/metrics"),
            "Bearer realm=\"quiesce\"",
            "metrics without a token",
        );
        let metrics = get_with(addr, Some(SITE), "/metrics");
        assert_eq!(metrics.status, 200, "{metrics:?}");
        assert!(
            metrics.text().contains("quiesce_reports_accepted_total 1"),
            "{}",
            metrics.text()
        );
    }
    // No patient data on the admin listener, whatever the token.
    for token in [None, Some(OPS)] {
        let read = get_with(admin, token, "/v1/reports/adm-1");
        assert_error(&read, 404, None, "GET a report on the admin listener");
        assert!(!read.text().contains("P-1"), "{read:?}");
        assert_eq!(get_with(admin, token, "/v1/enrollment").status, 404);
        assert_eq!(post_with(admin, token, "adm-2").status, 404);
    }
    // The API still answers on its own listener.
    assert_eq!(
        get_with(serve.addr, Some(OPS), "/v1/reports/adm-1").status,
        200
    );
    assert_eq!(
        get_with(serve.addr, Some(OPS), "/v1/reports/adm-2").status,
        404
    );

    serve.stop_ok(Duration::from_secs(30));
    assert!(!data.join("admin.addr").exists(), "a stale admin.addr");
    assert!(
        Conn::open(admin).is_err_and(|f| f.kind == FailKind::Refused),
        "the admin listener outlived the stop"
    );
}
