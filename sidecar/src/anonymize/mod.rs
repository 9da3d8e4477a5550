//! `quiesce anonymize`: replaces the identifier columns of CSV exports by
//! keyed pseudonyms, many files at once.
//!
//! The flow, one module per step:
//!
//! - [`args`]: the command line, checked into [`args::Settings`];
//! - [`key`]: the secret key (file or environment, never a default);
//! - [`inputs`]: the files to do and their outputs, refused before any
//!   write if an output would overwrite an input;
//! - [`batch`]: the files on `quiesce::scope`, at most N at once, under a
//!   context cancelled by SIGINT/SIGTERM or the `--timeout` deadline;
//! - [`transform`]: one file, row by row ([`columns`], [`pseudonym`],
//!   [`dialect`], [`source`]), into an output (`crate::atomic_file`) that appears whole or not
//!   at all;
//! - [`progress`] while it runs, [`summary`] at the end, with the exit
//!   status; any text that comes from the inputs (file names, headers) is
//!   printed through [`shown`], control characters escaped.

mod args;
mod batch;
mod columns;
mod committer;
mod dialect;
mod inputs;
mod key;
mod progress;
mod pseudonym;
mod shown;
mod source;
mod summary;
mod transform;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::select;
use quiesce::signals::{SignalGuard, SignalReceived, signal_context, signal_name};
use quiesce::{Context, ContextError, Threads};

pub use args::Args;

use args::{Settings, Usage};
use indicatif::HumanBytes;
use key::Key;
use progress::Progress;
use pseudonym::Pseudonymizer;
use summary::{EXIT_USAGE, EarlyStop, Summary};
use transform::Transform;

/// How often the progress bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Runs `quiesce anonymize`; the exit status is documented in `--help`.
///
/// # Errors
///
/// Only what stops the whole run before any file is processed (signal
/// handlers that cannot be installed, an output directory that cannot be
/// created); usage mistakes are printed here and give exit status 2.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // `-q` means quiet: no INFO lines either, unless RUST_LOG asks for them.
    if args.quiet && std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    match args.validate().and_then(|s| prepare(s, started)) {
        Ok(prepared) => prepared.run(),
        Err(usage) => {
            progress::say(&format!("quiesce: {usage}"));
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Everything checked, nothing written yet.
struct Prepared {
    settings: Settings,
    pseudonyms: Pseudonymizer,
    found: inputs::Found,
    started: Instant,
}

fn prepare(settings: Settings, started: Instant) -> Result<Prepared, Usage> {
    let key = Key::load(settings.key_file.as_deref(), settings.allow_insecure_key)?;
    let pseudonyms = Pseudonymizer::new(&key).map_err(|e| Usage(format!("{e:#}")))?;
    let found = inputs::discover(&settings.inputs, &settings.out, settings.follow_symlinks)?;
    Ok(Prepared {
        settings,
        pseudonyms,
        found,
        started,
    })
}

impl Prepared {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Prepared {
            settings,
            pseudonyms,
            found,
            started,
        } = self;
        std::fs::create_dir_all(&settings.out)
            .with_context(|| format!("cannot create --out {}", shown::path(&settings.out)))?;
        let signals = signal_context(&Context::background())
            .context("cannot install the SIGINT/SIGTERM handlers")?;
        let _force = exit_on_second_signal(&signals)?;
        // SIGHUP (a closed terminal) stops the run like SIGTERM; the other
        // signals that would kill the process at once are logged and
        // ignored, so no partial output is ever left behind.
        let hangup = signals.with_cancel();
        let hup_ctx = hangup.context();
        let _others = crate::other_signals::watch(move |signal| {
            if signal == signal_hook::consts::SIGHUP {
                log::info!("received SIGHUP: stopping like SIGTERM");
                hangup.cancel_with_cause(SignalReceived(signal));
            } else {
                log::warn!("received {}: ignored", signal_name(signal));
            }
        })
        .context("cannot install the signal handlers")?;
        let ctx = match settings.timeout {
            Some(timeout) => hup_ctx.with_timeout(timeout.saturating_sub(started.elapsed())),
            None => hup_ctx.with_cancel(),
        };

        log::info!(
            "anonymizing {} ({}) into {}, {} at a time",
            summary::plural(found.jobs.len() as u64, "file"),
            HumanBytes(found.bytes()),
            shown::path(&settings.out),
            settings.concurrency
        );
        let progress = Progress::new(settings.quiet, found.jobs.len(), found.bytes());
        let committer = committer::Committer::start(settings.concurrency * 2)
            .context("cannot start the commit thread")?;
        let transform = Transform {
            columns: &settings.columns,
            pseudonyms: &pseudonyms,
            progress: &progress,
            committer: &committer,
        };
        let mut files = with_ticker(&progress, || {
            batch::run(&found.jobs, settings.concurrency, &ctx, |job, ctx| {
                transform.file(job, ctx)
            })
        });
        for (name, err) in committer.finish() {
            if let Some(report) = files.iter_mut().find(|f| f.name == name) {
                report.status = summary::Status::Failed(format!("cannot write the output: {err}"));
            }
        }
        progress.clear();

        files.extend(found.problems.iter().map(|p| summary::FileReport {
            name: p.name.clone(),
            rows: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            status: summary::Status::Failed(p.message.clone()),
        }));
        let summary = Summary {
            files,
            elapsed: started.elapsed(),
            stop: stop_reason(&ctx, &signals, settings.timeout),
        };
        drop(signals);
        if settings.quiet {
            if let Some(stop) = &summary.stop {
                progress::say(&format!("quiesce: {stop}"));
            }
        } else {
            progress::show(&summary.to_string());
        }
        log::debug!("finished in {:?}", summary.elapsed);
        Ok(summary.exit_code())
    }
}

/// Runs `f` with a thread redrawing the progress bar (when there is one):
/// a job of a [`quiesce::scope`] of its own, so it is named, registered and
/// joined before this returns, and a panic in it is caught.
fn with_ticker<R>(progress: &Progress, f: impl FnOnce() -> R) -> R {
    if !progress.has_bar() {
        return f();
    }
    let ticking = Context::background().with_cancel();
    let (result, ticker) = quiesce::scope(1, &ticking, |s| {
        let ticker = s.spawn(|ctx| {
            while ctx.sleep(TICK).is_ok() {
                progress.tick();
            }
        });
        let result = f();
        ticking.cancel();
        (result, ticker)
    });
    if let Err(err) = ticker.join() {
        log::warn!("the progress bar stopped: {err}");
    }
    result
}

/// A thread (`anon-force`) that ends the process with 128 + the signal
/// when a second SIGINT or SIGTERM comes before the run has stopped: the
/// library only tells (its `forced` context), the binary decides. It ends
/// when the returned `Threads` is dropped.
fn exit_on_second_signal(signals: &SignalGuard) -> anyhow::Result<Threads> {
    let forced = signals.forced().clone();
    let mut threads = Threads::new(&Context::background());
    threads
        .spawn("anon-force", move |ctx| {
            select! {
                recv(forced.done()) -> _ => {
                    let cause = forced.cause();
                    if let Some(SignalReceived(n)) = cause.and_then(|c| c.downcast_ref().copied()) {
                        std::process::exit(quiesce::exit::forced(n));
                    }
                }
                recv(ctx.done()) -> _ => {}
            }
        })
        .context("cannot start the signal watcher")?;
    Ok(threads)
}

/// Why the run's context is done, if it is.
fn stop_reason(
    ctx: &Context,
    signals: &SignalGuard,
    timeout: Option<Duration>,
) -> Option<EarlyStop> {
    match ctx.err()? {
        ContextError::DeadlineExceeded => Some(EarlyStop::Deadline(timeout.unwrap_or_default())),
        ContextError::Canceled => Some(EarlyStop::Signal(
            ctx.cause()
                .and_then(|cause| cause.downcast_ref::<SignalReceived>().map(|s| s.0))
                .or_else(|| signals.received())
                .map_or_else(|| "a cancellation".to_string(), signal_name),
        )),
    }
}
