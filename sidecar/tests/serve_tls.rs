//! Black-box tests of TLS in the process (issue 13, item 3): the real
//! binary with certificates made in the test, a real TLS client, real
//! signals.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use support::*;

const TOKEN: &str = "s3cret-tls-token";

fn tokens(dir: &TempDir) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.write("tokens", format!("site1:{TOKEN}\n").as_bytes());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_str().expect("utf-8").to_string()
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// `quiesce serve` over TLS with the certificate and key in `files`,
/// plus `extra`; ready when `/readyz` answers over TLS with `config`.
#[track_caller]
fn serve_tls(
    dir: &TempDir,
    files: (&Path, &Path),
    config: &Arc<ClientConfig>,
    extra: &[&str],
) -> Serve {
    let mut args = vec!["--tls-cert", text(files.0), "--tls-key", text(files.1)];
    args.extend_from_slice(extra);
    Serve::start_probed(&dir.join("data"), &args, &|addr| {
        tls_connect(addr, config)
            .ok()
            .and_then(|mut c| c.send(&request("GET", "/readyz", &[], None, false)).ok())
            .is_some_and(|r| r.status == 200)
    })
}

/// Fails if `text` holds any line of the key file at `key` (beyond its
/// BEGIN/END lines).
#[track_caller]
fn assert_no_key_material(text: &str, key: &Path) {
    let pem = std::fs::read_to_string(key).expect("read the key");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material printed:\n{text}");
    }
}

/// A fresh CA, its server certificate, a client trusting it, and
/// `quiesce serve` over TLS with that certificate and the arguments
/// `extra` gives (from the test's directory).
#[track_caller]
fn tls_serve(
    tag: &str,
    extra: &dyn Fn(&TempDir) -> Vec<String>,
) -> (TempDir, Arc<ClientConfig>, Serve) {
    let dir = TempDir::new(&format!("tls-{tag}"));
    let pki = Pki::new(dir.path(), tag);
    let server = pki.server("server");
    let config = client_config(&pki.ca, None);
    let extra = extra(&dir);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let serve = serve_tls(&dir, (&server.cert_file, &server.key_file), &config, &extra);
    (dir, config, serve)
}

fn post_over<S: Socket>(conn: &mut Conn<S>, id: &str, token: Option<&str>) -> Response {
    let body = report(id, "P-1", "site-1", &[("q1", 1)]).to_string();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    conn.send(&request(
        "POST",
        "/v1/reports",
        &headers,
        Some(body.as_bytes()),
        true,
    ))
    .unwrap_or_else(|f| panic!("POST {id}: {f:?}"))
}

/// Reports over one TLS connection, kept alive: each `202` is written
/// by the store's thread once the report is on disk (a deferred answer,
/// encrypted by that thread), the reads by the handler thread, in order;
/// the data is in the database afterwards. Plain HTTP on the TLS port
/// gets no HTTP answer.
#[test]
fn reports_go_in_over_tls_on_one_kept_alive_connection() {
    let (_dir, config, mut serve) =
        tls_serve("basic", &|dir| vec!["--tokens-file".into(), tokens(dir)]);
    assert!(
        serve
            .log()
            .contains(&format!("listening on https://{}", serve.addr)),
        "{}",
        serve.log()
    );

    let mut conn = tls_connect(serve.addr, &config).expect("a TLS connection");
    assert_eq!(
        conn.socket().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN says HTTP/1.1"
    );
    for i in 0..20 {
        let id = format!("tls-{i:02}");
        let answer = post_over(&mut conn, &id, Some(TOKEN));
        assert_eq!(answer.status, 202, "{id}: {}", answer.text());
        let got = conn
            .send(&request(
                "GET",
                &format!("/v1/reports/{id}"),
                &[("Authorization", &format!("Bearer {TOKEN}"))],
                None,
                true,
            ))
            .expect("GET");
        assert_eq!(got.status, 200, "{id}: {}", got.text());
        assert_eq!(got.json()["report_id"], id);
    }
    assert_eq!(conn.answered, 40);
    // Without the token: refused, over TLS too.
    assert_eq!(post_over(&mut conn, "tls-anon", None).status, 401);

    // Plain HTTP to the TLS port: no HTTP answer (a TLS alert, or the
    // connection closed).
    let mut plain = Conn::open(serve.addr).expect("connect");
    match plain.send(&request("GET", "/livez", &[], None, false)) {
        Ok(response) => panic!("plain HTTP was answered over TLS: {response:?}"),
        Err(failure) => assert_ne!(failure.kind, FailKind::Timeout, "{failure:?}"),
    }

    drop(conn);
    serve.stop_ok(Duration::from_secs(30));
    let (stored, _) = rows(&serve.data_dir);
    for i in 0..20 {
        assert!(stored.contains_key(&format!("tls-{i:02}")), "tls-{i:02}");
    }
}

/// A client that starts a handshake and stalls holds no handler thread
/// (one is all there is) and is closed at the head deadline; a client
/// that does not trust the server's certificate is refused at the
/// handshake.
#[test]
fn a_stalled_handshake_holds_no_thread_and_is_closed_at_the_head_deadline() {
    let (dir, config, mut serve) = tls_serve("stall", &|_| {
        ["--http-threads", "1", "--header-timeout", "1s"]
            .map(String::from)
            .to_vec()
    });
    // The first bytes of a ClientHello (a record header and part of the
    // message), then nothing.
    let mut stalled = std::net::TcpStream::connect(serve.addr).expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .expect("write");
    let started = Instant::now();
    // Served meanwhile, by the one handler thread.
    let mut conn = tls_connect(serve.addr, &config).expect("a TLS connection");
    let answer = conn
        .send(&request("GET", "/livez", &[], None, true))
        .expect("GET /livez");
    assert_eq!(answer.status, 200);
    // The stalled one is closed at its deadline, with no HTTP answer (no
    // HTTP can be said before a handshake).
    let mut stalled = Conn::over(stalled);
    let got = stalled
        .wait_closed(Duration::from_secs(20))
        .expect("the stalled handshake was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before its deadline"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "an HTTP answer in a TLS handshake: {got:?}"
    );

    // A client that trusts another CA: the handshake fails.
    let other = Pki::new(dir.path(), "other");
    let refused = tls_connect(serve.addr, &client_config(&other.ca, None));
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was taken"
    );
    serve.stop_ok(Duration::from_secs(30));
}

/// SIGHUP re-reads the certificate and key: new connections get the new
/// certificate, a connection open before keeps working; a bad file is
/// refused with the old one kept, and the process lives on.
#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_is_bad() {
    let dir = TempDir::new("tls-reload");
    let pki = Pki::new(dir.path(), "reload");
    let first = pki.server("first");
    let config = client_config(&pki.ca, None);
    let live = dir.join("live");
    std::fs::create_dir(&live).expect("mkdir");
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    let install = |id: &Identity| {
        std::fs::copy(&id.cert_file, &cert).expect("copy cert");
        std::fs::copy(&id.key_file, &key).expect("copy key");
    };
    install(&first);
    let mut serve = serve_tls(&dir, (&cert, &key), &config, &[]);
    let mut before = tls_connect(serve.addr, &config).expect("connect");
    let seen = |addr: SocketAddr| {
        let conn = tls_connect(addr, &config).expect("connect");
        conn.socket()
            .conn
            .peer_certificates()
            .expect("a certificate")[0]
            .clone()
    };
    assert_eq!(seen(serve.addr), first.cert);

    let second = pki.server("second");
    install(&second);
    serve.signal("HUP");
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        "the new certificate",
        || seen(serve.addr) == second.cert,
    );
    // The connection from before the reload still works.
    let answer = before
        .send(&request("GET", "/livez", &[], None, true))
        .expect("GET on the old connection");
    assert_eq!(answer.status, 200);

    // A bad certificate file: refused, the second one stays.
    std::fs::write(&cert, "not a certificate\n").expect("write");
    serve.signal("HUP");
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        "the refused reload in the log",
        || {
            serve
                .log()
                .contains("not reloaded: the TLS files loaded before stay")
        },
    );
    assert_eq!(seen(serve.addr), second.cert);
    let exit = serve.stop_ok(Duration::from_secs(30));
    assert_no_key_material(&exit.log, &key);
    // Both reloads are in the audit trail.
    let (status, stdout, _) = cli(&["audit", "--data-dir", text(&serve.data_dir)]);
    assert!(status.success());
    let reloads: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("tls.reloaded"))
        .collect();
    assert_eq!(reloads.len(), 2, "{stdout}");
    assert!(reloads[0].contains("\"reloaded\""), "{}", reloads[0]);
    assert!(reloads[1].contains("refused"), "{}", reloads[1]);
}

/// What stops the start (exit 2, nothing created): a key others can read
/// (with the chmod), a certificate file without a certificate, a key
/// without its certificate, and a non-loopback address with tokens but
/// without TLS.
#[test]
fn unusable_tls_files_and_an_unencrypted_network_listener_stop_the_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("tls-refused");
    let pki = Pki::new(dir.path(), "refused");
    let server = pki.server("server");
    let data = dir.join("data");
    let tokens = tokens(&dir);
    let open_key = dir.join("open.key");
    std::fs::copy(&server.key_file, &open_key).expect("copy");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let garbage = dir.write("garbage.crt", b"hello\n");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "--tls-cert",
                text(&server.cert_file),
                "--tls-key",
                text(&open_key),
            ],
            format!("chmod 600 {}", open_key.display()),
        ),
        (
            vec![
                "--tls-cert",
                text(&garbage),
                "--tls-key",
                text(&server.key_file),
            ],
            "no PEM certificate".to_string(),
        ),
        (
            vec!["--tls-key", text(&server.key_file)],
            "--tls-cert".to_string(),
        ),
        (
            vec!["--listen", "0.0.0.0:0", "--tokens-file", &tokens],
            "without TLS".to_string(),
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["serve", "--data-dir", text(&data)];
        all.extend_from_slice(&args);
        let (status, stderr) = run_to_exit(&all, Duration::from_secs(30));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert_no_key_material(&stderr, &server.key_file);
        assert!(!data.exists(), "{args:?}: the data directory was created");
    }
}

/// Mutual TLS on a non-loopback listener (allowed: TLS, and callers
/// authenticated by their certificates): a client without a certificate,
/// or with one from another CA, is refused at the handshake and gets no
/// answer; one with a certificate from the CA posts, and the audit trail
/// names its subject as the caller.
#[test]
fn mutual_tls_refuses_clients_without_a_valid_certificate_and_audits_the_subject() {
    let dir = TempDir::new("tls-mutual");
    let pki = Pki::new(dir.path(), "mutual");
    let server = pki.server("server");
    let clients = Pki::new(dir.path(), "clients");
    let app = clients.client("site-app");
    let stranger = Pki::new(dir.path(), "stranger").client("site-app");
    let data = dir.join("data");
    let mut command = quiesce(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        text(&data),
        "--tls-cert",
        text(&server.cert_file),
        "--tls-key",
        text(&server.key_file),
        "--tls-client-ca",
        text(&clients.ca_file),
    ]);
    command.env("RUST_LOG", "info");
    let mut process = Process::start(command);
    let line = process.wait_for_line("listening on https://0.0.0.0:");
    assert!(line.contains("(clients need a certificate)"), "{line}");
    let port: u16 = line
        .split("0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // Refused at the handshake: with TLS 1.3 the client may finish its
    // side first and read the server's alert on its first request; either
    // way no HTTP answer comes.
    for (what, client) in [("no certificate", None), ("another CA's", Some(&stranger))] {
        let config = client_config(&pki.ca, client);
        if let Ok(mut conn) = tls_connect(addr, &config) {
            let body = report("mt-refused", "P-1", "site-1", &[("q1", 1)]).to_string();
            let answer = conn.send(&request(
                "POST",
                "/v1/reports",
                &[("Content-Type", "application/json")],
                Some(body.as_bytes()),
                false,
            ));
            assert!(answer.is_err(), "{what}: answered {answer:?}");
        }
    }

    let config = client_config(&pki.ca, Some(&app));
    let mut conn = tls_connect(addr, &config).expect("a client with a certificate");
    assert_eq!(post_over(&mut conn, "mt-1", None).status, 202);
    drop(conn);
    process.signal("TERM");
    let exit = process.wait_exit(Duration::from_secs(30));
    assert_graceful(&exit);

    let (stored, _) = rows(&data);
    assert!(stored.contains_key("mt-1"));
    assert!(
        !stored.contains_key("mt-refused"),
        "a refused client's report was stored"
    );
    let (status, stdout, _) = cli(&[
        "audit",
        "--data-dir",
        text(&data),
        "--caller",
        "CN=site-app",
    ]);
    assert!(status.success());
    let received: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("report.received"))
        .collect();
    assert_eq!(received.len(), 1, "{stdout}");
    assert!(
        received[0].contains("\"report_id\":\"mt-1\""),
        "{}",
        received[0]
    );
}

/// Requests pipelined in one TLS write, POSTs (answered by the store's
/// thread) between GETs (answered by the handler thread): every answer
/// comes, in request order, each decrypting cleanly, so the two threads
/// never encrypted out of turn. Then a hundred handshaken connections wait
/// idle with two handler threads, and each is still served after a new
/// one is: idle TLS connections hold no thread.
#[test]
fn pipelined_answers_keep_their_order_and_idle_tls_connections_hold_no_thread() {
    let (_dir, config, mut serve) = tls_serve("pipeline", &|_| {
        ["--http-threads", "2", "--max-connections", "256"]
            .map(String::from)
            .to_vec()
    });
    let mut conn = tls_connect(serve.addr, &config).expect("connect");
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..30 {
        let id = format!("pl-{i:02}");
        let body = report(&id, "P-1", "site-1", &[("q1", 1)]).to_string();
        batch.extend(request(
            "POST",
            "/v1/reports",
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
            true,
        ));
        expected.push((202, id.clone()));
        batch.extend(request(
            "GET",
            &format!("/v1/reports/{id}"),
            &[],
            None,
            true,
        ));
        expected.push((200, id));
    }
    conn.write(&batch).expect("write the batch");
    for (status, id) in expected {
        let answer = conn.read_response().expect("an answer");
        assert_eq!(answer.status, status, "{id}: {}", answer.text());
        assert_eq!(answer.json()["report_id"], id);
    }

    let mut idle: Vec<_> = (0..100)
        .map(|_| tls_connect(serve.addr, &config).expect("connect"))
        .collect();
    let answer = tls_connect(serve.addr, &config)
        .expect("connect")
        .send(&request("GET", "/livez", &[], None, false))
        .expect("served while 100 wait");
    assert_eq!(answer.status, 200);
    for (i, conn) in idle.iter_mut().enumerate() {
        let answer = conn
            .send(&request("GET", "/livez", &[], None, true))
            .unwrap_or_else(|f| panic!("idle connection {i}: {f:?}"));
        assert_eq!(answer.status, 200);
    }
    drop(idle);
    serve.stop_ok(Duration::from_secs(30));
}
