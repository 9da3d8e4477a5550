//! Black-box tests of the log (issue 16, item 2): an invalid `RUST_LOG`
//! is reported and does not silence the log; `--log-format json` writes
//! one JSON object per line.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn serve_with(env: &[(&str, &str)], args: &[&str]) -> Exit {
    let dir = TempDir::new("logs");
    let data = dir.path().to_str().unwrap().to_string();
    let mut command = quiesce(
        &[
            &["serve", "--listen", "127.0.0.1:0", "--data-dir", &data][..],
            args,
        ]
        .concat(),
    );
    for (k, v) in env {
        command.env(k, v);
    }
    let mut process = Process::start(command);
    process.wait_for_line("all services up");
    process.signal("TERM");
    process.wait_exit(Duration::from_secs(30))
}

#[test]
fn an_invalid_rust_log_is_reported_and_the_rest_still_logs() {
    let exit = serve_with(&[("RUST_LOG", "quiesce=bogus")], &[]);
    assert_graceful(&exit);
    assert!(
        exit.log.contains("RUST_LOG: ignored \"quiesce=bogus\""),
        "{}",
        exit.log
    );
    assert!(
        exit.log.contains("INFO"),
        "the default level still logs:\n{}",
        exit.log
    );
}

#[test]
fn the_json_log_is_one_object_per_line() {
    let exit = serve_with(&[("RUST_LOG", "info")], &["--log-format", "json"]);
    assert_graceful(&exit);
    let lines: Vec<&str> = exit.log.lines().collect();
    assert!(lines.len() >= 5, "{}", exit.log);
    for line in lines {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["time", "level", "target", "message"] {
            assert!(object[field].is_string(), "{field} in {line}");
        }
        assert!(
            object["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    assert!(
        exit.log.contains("\"message\":\"all services up"),
        "{}",
        exit.log
    );
}
