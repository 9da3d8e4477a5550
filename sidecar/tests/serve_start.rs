//! Black-box tests of `quiesce serve` failing to start (issue 12, finding
//! 10): the reason is said once, in plain words, on stderr whatever the
//! log level, and a bad flag creates nothing.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `serve` with `RUST_LOG=<level>` to its end.
fn serve_with_log(level: &str, args: &[&str]) -> Exit {
    let mut cmd = quiesce(&[&["serve"], args].concat());
    cmd.env("RUST_LOG", level);
    Process::start(cmd).wait_exit(LIMIT)
}

#[test]
fn a_bad_listen_address_is_refused_before_anything_is_created() {
    let dir = TempDir::new("bad-listen");
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let exit = serve_with_log("info", &["--listen", "nonsense", "--data-dir", &data_arg]);
    assert_eq!(exit.code(), Some(2), "a usage error: {}", exit.log);
    assert!(
        exit.log.contains("--listen \"nonsense\" is not an address"),
        "{}",
        exit.log
    );
    assert!(
        !data.exists(),
        "a data directory was created for a run that could not start"
    );
    assert!(
        !exit.log.contains("is up"),
        "services were started:\n{}",
        exit.log
    );
}

#[test]
fn a_taken_port_is_one_plain_error_at_every_log_level() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for level in ["off", "error", "warn", "info"] {
        let dir = TempDir::new("taken-port");
        let data = dir.path().to_str().unwrap().to_string();
        let exit = serve_with_log(level, &["--listen", &addr, "--data-dir", &data]);
        assert_eq!(exit.code(), Some(1), "RUST_LOG={level}:\n{}", exit.log);
        let said: Vec<&str> = exit
            .log
            .lines()
            .filter(|l| l.contains("exits with code 1"))
            .collect();
        assert_eq!(said.len(), 1, "RUST_LOG={level}: said once:\n{}", exit.log);
        assert!(
            said[0].contains("Address already in use"),
            "RUST_LOG={level}: {}",
            said[0]
        );
        assert!(
            !said[0].contains("StartFailed {"),
            "debug formatting: {}",
            said[0]
        );
    }
    drop(taken);
}

#[test]
fn a_corrupt_database_is_one_plain_error() {
    let dir = TempDir::new("corrupt-db");
    let db = dir.write("quiesce.db", &[0x5a; 8192]);
    // Private, as serve requires of a database (or it refuses before
    // reading it).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let exit = serve_with_log("warn", &["--listen", "127.0.0.1:0", "--data-dir", &data]);
    assert_eq!(exit.code(), Some(1), "{}", exit.log);
    let said: Vec<&str> = exit
        .log
        .lines()
        .filter(|l| l.contains("exits with code 1"))
        .collect();
    assert_eq!(said.len(), 1, "said once:\n{}", exit.log);
    assert!(said[0].contains("file is not a database"), "{}", said[0]);
}

/// Issue 16, item 6: every invalid value is a usage error (exit 2, as
/// clap's own), says which flag and why, and creates nothing.
#[test]
fn invalid_values_are_usage_errors_that_name_the_flag() {
    let dir = TempDir::new("usage");
    let file = dir.write("a-file", b"not a directory");
    let file_arg = file.to_str().unwrap().to_string();
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--workers", "0"], "--workers must be at least 1"),
        (&["--max-body", "0"], "--max-body must be more than zero"),
        (
            &["--job-timeout", "0s"],
            "--job-timeout must be more than zero",
        ),
        (
            &["--max-attempts", "0"],
            "--max-attempts must be at least 1",
        ),
        (
            &["--http-threads", "0"],
            "--http-threads must be at least 1",
        ),
        (
            &["--http-active-threads", "0"],
            "--http-active-threads must be at least 1",
        ),
        (
            &["--http-threads", "4", "--http-active-threads", "5"],
            "--http-active-threads (5) must be at most --http-threads (4)",
        ),
        (
            &["--shutdown-timeout", "0s"],
            "--shutdown-timeout (0s) must be longer than --drain-delay (0s)",
        ),
        (&["--lease", "10ms"], "--lease must be at least 1s"),
        (&["--analyzer-url", "ftp://x/"], "--analyzer-url"),
        (&["--database-url", "mysql://db/x"], "--database-url"),
        (&["--summary-keep", "0"], "--summary-keep"),
    ];
    for (args, says) in cases {
        let args = [
            &["--listen", "127.0.0.1:0", "--data-dir", &data_arg][..],
            args,
        ]
        .concat();
        let exit = serve_with_log("info", &args);
        assert_eq!(exit.code(), Some(2), "{args:?}: {}", exit.log);
        assert!(exit.log.contains(says), "{args:?}: {}", exit.log);
        assert!(!data.exists(), "{args:?}: a data directory was created");
    }
    let exit = serve_with_log(
        "info",
        &["--listen", "127.0.0.1:0", "--data-dir", &file_arg],
    );
    assert_eq!(exit.code(), Some(2), "{}", exit.log);
    assert!(exit.log.contains("not a directory"), "{}", exit.log);
}
