//! Black-box test of `GET /metrics` (issue 16, item 3): the exposition is
//! read by the reference parser (Python's `prometheus_client`), every
//! family has its HELP text, and the process and build families are there.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Parses `exposition` with `prometheus_client`'s text parser; the
/// families as `name type help` lines. `None` (and a loud line) when
/// Python or the parser is missing and CI is not set.
fn parse(exposition: &str) -> Option<Vec<String>> {
    const SCRIPT: &str = "
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print(family.name, family.type, repr(family.documentation))
";
    let child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => return skip(&format!("python3: {err}")),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("the parser ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        return skip("no prometheus_client");
    }
    assert!(
        out.status.success(),
        "the parser refused the exposition: {stderr}"
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn skip(why: &str) -> Option<Vec<String>> {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the metrics parser: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: /metrics not parsed ({why})");
    None
}

#[test]
fn the_metrics_parse_with_the_reference_parser_and_every_family_has_help() {
    let dir = TempDir::new("metrics");
    let mut serve = Serve::start(dir.path(), &[]);
    let answer = post_json(serve.addr, &report("m-1", "p", "S", &[("q1", 1)]));
    assert_eq!(answer.status, 202);
    assert_eq!(get(serve.addr, "/nope").status, 404);
    let text = get(serve.addr, "/metrics").text();
    serve.stop_ok(Duration::from_secs(30));
    let Some(families) = parse(&text) else { return };
    for family in &families {
        assert!(!family.ends_with("''"), "a family without HELP: {family}");
    }
    let names: Vec<&str> = families
        .iter()
        .map(|f| f.split(' ').next().unwrap_or(""))
        .collect();
    for wanted in [
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "quiesce_build_info",
        "quiesce_reports_accepted",
        "quiesce_http_requests",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    assert!(
        text.contains(&format!(
            "quiesce_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

/// Issue 16, item 3: every request is counted by method, route pattern
/// and status, refusals included (a 413 used to be `route="refused"`, a 405
/// had no method, `/healthz` was counted as `GET /livez`); durations are a
/// histogram; open connections a gauge; with `--access-log` one line per
/// request, without the path's id.
#[test]
fn requests_are_counted_by_method_route_and_status_and_logged_when_asked() {
    let dir = TempDir::new("metrics-labels");
    let mut serve = Serve::start(dir.path(), &["--access-log", "--max-body", "1KiB"]);
    let addr = serve.addr;
    let big = vec![b' '; 4096];
    let too_large = exchange(
        addr,
        &request(
            "POST",
            "/v1/reports",
            &[("Content-Type", "application/json")],
            Some(&big),
            false,
        ),
    );
    assert_eq!(too_large.status, 413);
    assert_eq!(
        exchange(
            addr,
            &request("DELETE", "/v1/enrollment", &[], Some(b""), false)
        )
        .status,
        405
    );
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/v1/reports/secret-looking-id").status, 404);
    let _held = Conn::open(addr).expect("a connection held open");
    // The held connection and the scrape's own, once the server has
    // counted both (a bound on the wait, not a speed assertion).
    let gauge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("quiesce_http_connections_open "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the open connections gauge")
    };
    let mut text = String::new();
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        "the held connection never counted",
        || {
            text = get(addr, "/metrics").text();
            gauge(&text) >= 2.0
        },
    );
    for series in [
        "quiesce_http_requests_total{method=\"POST\",route=\"/v1/reports\",status=\"413\"} 1",
        "quiesce_http_requests_total{method=\"DELETE\",route=\"/v1/enrollment\",status=\"405\"} 1",
        "quiesce_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "quiesce_http_requests_total{method=\"GET\",route=\"/v1/reports/{id}\",status=\"404\"} 1",
        "quiesce_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
    assert!(!text.contains("secret-looking-id"), "{text}");
    let exit = serve.stop_ok(Duration::from_secs(30));
    let access: Vec<&str> = exit
        .log
        .lines()
        .filter(|l| l.contains("quiesce::access"))
        .collect();
    assert!(
        access.iter().any(|l| l.contains("GET /healthz 200")),
        "{access:?}"
    );
    assert!(
        access.iter().any(|l| l.contains("POST /v1/reports 413")),
        "{access:?}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("GET /v1/reports/{id} 404") && l.contains("id=")),
        "{access:?}"
    );
    assert!(
        !exit.log.contains("secret-looking-id"),
        "the path's id was logged"
    );
}
