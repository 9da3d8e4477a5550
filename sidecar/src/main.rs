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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Anonymize(args) => anonymize::run(args),
    };
    match result {
        Ok(code) => code,
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
