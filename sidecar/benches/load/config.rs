//! Configuration, the data directory, the binary.

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::temp::TempDir;

pub(crate) struct Config {
    pub(crate) window: Duration,
    pub(crate) clients: usize,
    pub(crate) sigterm_after: Duration,
    pub(crate) backlog_reports: u64,
    pub(crate) backlog_window: Duration,
    pub(crate) idle_rounds: usize,
    /// `LOAD_TARGETS`: whether to run the five runs of issue 5.
    pub(crate) intake: bool,
    /// `LOAD_TARGETS`: the targets of the replica comparison (issue 11), in
    /// the order of its first round.
    pub(crate) replica_targets: Vec<Target>,
    /// `LOAD_TARGETS`: whether to run the comparison with the axum + tokio
    /// peer (issue 14, `peers`; not part of `all`).
    pub(crate) peers: bool,
    /// `LOAD_ROUNDS`: rounds of the replica comparison and of the peers'.
    pub(crate) rounds: usize,
}

/// A target of the replica comparison: one `quiesce serve` on SQLite, or
/// `n` replicas sharing one PostgreSQL database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Sqlite,
    Postgres(usize),
}

impl Target {
    pub(crate) fn name(self) -> String {
        match self {
            Target::Sqlite => "sqlite".into(),
            Target::Postgres(n) => format!("pg-{n}"),
        }
    }
}

/// `LOAD_TARGETS`, a comma-separated list (default `all`): `intake` (the
/// five runs of issue 5: bare server, sidecar, SIGTERMs, 1M backlog),
/// `replicas` (SQLite, one PostgreSQL replica, two on one database), or
/// single replica targets `sqlite`, `pg-1`, `pg-2`; `all` is `intake,replicas`;
/// `peers` (quiesce vs the axum + tokio peer, issue 14) runs only when named.
fn targets(spec: &str) -> (bool, Vec<Target>, bool) {
    let mut intake = false;
    let mut peers = false;
    let mut replicas = Vec::new();
    let all = [Target::Sqlite, Target::Postgres(1), Target::Postgres(2)];
    let mut add = |t: Target| {
        if !replicas.contains(&t) {
            replicas.push(t);
        }
    };
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => {
                intake = true;
                all.into_iter().for_each(&mut add);
            }
            "intake" => intake = true,
            "peers" => peers = true,
            "replicas" => all.into_iter().for_each(&mut add),
            "sqlite" => add(Target::Sqlite),
            "pg-1" => add(Target::Postgres(1)),
            "pg-2" => add(Target::Postgres(2)),
            other => panic!(
                "LOAD_TARGETS: unknown target {other:?} (all, intake, replicas, sqlite, pg-1, pg-2, peers)"
            ),
        }
    }
    assert!(
        intake || peers || !replicas.is_empty(),
        "LOAD_TARGETS={spec:?} selects nothing"
    );
    (intake, replicas, peers)
}

impl Config {
    pub(crate) fn from_env() -> Config {
        let seconds = |name: &str, default: f64| {
            let secs = env::var(name).map_or(default, |v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .unwrap_or_else(|| panic!("{name}={v:?} is not a number of seconds"))
            });
            Duration::from_secs_f64(secs)
        };
        let count = |name: &str, default: u64| {
            env::var(name).map_or(default, |v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
            })
        };
        let window = seconds("LOAD_SECONDS", 30.0);
        let (intake, replica_targets, peers) =
            targets(&env::var("LOAD_TARGETS").unwrap_or_else(|_| "all".into()));
        Config {
            intake,
            replica_targets,
            peers,
            rounds: usize::try_from(count("LOAD_ROUNDS", 3).max(1)).unwrap_or(3),
            window,
            clients: usize::try_from(count("LOAD_CLIENTS", 32).max(1)).unwrap_or(32),
            sigterm_after: window.min(Duration::from_secs(5)),
            backlog_reports: count("LOAD_BACKLOG", 1_000_000),
            backlog_window: seconds("LOAD_BACKLOG_SECONDS", 20.0),
            idle_rounds: usize::try_from(count("LOAD_IDLE_ROUNDS", 5).max(1)).unwrap_or(5),
        }
    }
}

/// The bench's data directory, `load-<pid>-…` under cargo's target tmp
/// dir (on the target dir's disk, so fsyncs are real fsyncs): removed at
/// the end, unless `LOAD_KEEP` is set.
pub(crate) fn data_dir() -> TempDir {
    let base = env::var_os("CARGO_TARGET_TMPDIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    let mut tmp = TempDir::new_in(&base, "load");
    if env::var_os("LOAD_KEEP").is_some() {
        tmp.keep();
    }
    tmp
}

/// The binary cargo built for this bench (the `bench` profile: release
/// optimisations with debug info, for profilers).
pub(crate) fn build_sidecar() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_quiesce"));
    assert!(bin.is_file(), "no binary at {}", bin.display());
    println!("binary: {}", bin.display());
    bin
}

/// The commit the binary was built from, and whether the tree had local
/// changes (from `git`, when there is one).
pub(crate) fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!(
                "commit {commit} + local changes to {} file(s)",
                changes.lines().count()
            ),
            _ => format!("commit {commit}"),
        },
        None => "unknown (no git)".into(),
    }
}
