//! `quiesce`: the ePRO intake sidecar (`quiesce serve`) and the CSV
//! de-identification job (`quiesce anonymize`), built only from the
//! quiesce library's public API.

mod anonymize;
mod atomic_file;
mod other_signals;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Graceful shutdown and bounded concurrency for synchronous Rust: an ePRO
/// intake sidecar and a CSV de-identification job built on the quiesce
/// library.
#[derive(Debug, Parser)]
#[command(name = "quiesce", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
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
            ExitCode::FAILURE
        }
    }
}
