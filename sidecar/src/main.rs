//! `quiesce`: the ePRO intake sidecar (`quiesce serve`) and the CSV
//! de-identification job (`quiesce anonymize`), built only from the
//! quiesce library's public API.

mod anonymize;
mod atomic_file;
mod other_signals;
mod serve;

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Graceful shutdown and bounded concurrency for synchronous Rust: an ePRO
/// intake sidecar and a CSV de-identification job built on the quiesce
/// library.
#[derive(Debug, Parser)]
#[command(
    name = "quiesce",
    version,
    about,
    propagate_version = true,
    after_help = "The README tells more: 'Try the sidecar' (a first session), 'Security' (tokens, \
listening), 'HTTP API', 'Clinical data' (FHIR, PHQ-9, GAD-7), 'Running more than one replica' \
(PostgreSQL), 'De-identify CSV exports'; deploy/README.md the Docker, systemd and Kubernetes \
recipes."
)]
struct Cli {
    /// How log lines look on stderr: `text` for people, `json` (one object
    /// per line: time, level, target, message) for log pipelines. RUST_LOG
    /// sets the levels (default info).
    #[arg(long, global = true, env = "QUIESCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The log's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `[time LEVEL target] message`.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take in patient-reported outcome reports over HTTP, store them
    /// durably, process them on a bounded pool, stop on SIGTERM without
    /// losing one.
    Serve(Box<serve::Args>),
    /// List the reports a store holds (the failed ones, say), and put
    /// failed reports back in the queue, without a running server.
    Reports(serve::operate::Args),
    /// Export the audit trail (who sent, read, processed or re-drove which
    /// report, and when) as JSON lines, without a running server.
    Audit(serve::operate::AuditArgs),
    /// Replace identifier columns of CSV exports by keyed pseudonyms, many
    /// files at once.
    Anonymize(anonymize::Args),
}

/// A setting refused before anything was created or started because it
/// would expose patient data (a non-loopback address without tokens, a
/// tokens file others can read): exit code 2, like a usage error.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// mimalloc, not the system's malloc: a report's strings are made on a
/// handler thread and freed on the `store` thread, the pattern glibc's
/// per-thread caches serve worst (malloc and free were 14% of the process's
/// CPU). Measured in BENCHMARKS.md (issue 14, step 8): 14 to 24% less CPU
/// per report at 32 clients. Built without transparent huge pages
/// (`no_thp`): with them, RSS at the start was 13 MiB higher.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Anonymize(args) => anonymize::run(args),
        Command::Reports(args) => serve::operate::run(args),
        Command::Audit(args) => serve::operate::run_audit(args),
    };
    match result {
        Ok(code) => code,
        // A bad command line: as clap says it (usage, exit 2).
        Err(err) if err.downcast_ref::<serve::Usage>().is_some() => {
            use clap::CommandFactory as _;
            Cli::command()
                .error(clap::error::ErrorKind::ValueValidation, format!("{err:#}"))
                .exit()
        }
        Err(err) => {
            eprintln!("quiesce: {err:#}");
            if err.downcast_ref::<Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The levels `RUST_LOG` may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The directives of a `RUST_LOG` value that env_logger understands
/// (`level`, `target`, `target=level`), and the ones it does not: an
/// unknown level would otherwise make env_logger drop the whole value's
/// meaning (`quiesce=bogus` silenced everything).
fn log_directives(spec: &str) -> (Vec<String>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.split_once('=') {
            Some((target, level)) if !target.is_empty() => Some(level),
            Some(_) => None,
            None => LEVELS
                .contains(&directive.to_ascii_lowercase().as_str())
                .then_some(directive),
        };
        let valid = match (directive.split_once('='), level) {
            (Some(_), Some(level)) => LEVELS.contains(&level.to_ascii_lowercase().as_str()),
            (Some(_), None) => false,
            // A bare word is a level or a target (all levels for it).
            (None, _) => !directive.contains(char::is_whitespace),
        };
        if valid {
            good.push(directive.to_string());
        } else {
            bad.push(directive.to_string());
        }
    }
    (good, bad)
}

/// Logging on stderr, as `format` says, at the levels `RUST_LOG` sets
/// (default info); its directives that cannot be understood are reported
/// and left out, the rest still apply.
fn init_logging(format: LogFormat) {
    use std::io::Write as _;
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (good, bad) = log_directives(&spec);
    let mut builder = env_logger::Builder::new();
    if good.is_empty() {
        builder.parse_filters("info");
    } else {
        builder.parse_filters(&good.join(","));
    }
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let line = serde_json::json!({
                    "time": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
    }
    builder.init();
    for directive in bad {
        log::warn!(
            "RUST_LOG: ignored {directive:?}: not a level ({}) or target[=level]",
            LEVELS.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn rust_log_directives_that_cannot_be_understood_are_set_apart() {
        let (good, bad) = log_directives("quiesce=bogus, warn ,quiesce::serve=debug,=info,hyper");
        assert_eq!(good, ["warn", "quiesce::serve=debug", "hyper"]);
        assert_eq!(bad, ["quiesce=bogus", "=info"]);
        assert_eq!(log_directives(""), (vec![], vec![]));
    }
}
