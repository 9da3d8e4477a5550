//! A service group stopped on Ctrl-C: go-zero's `ServiceGroup`, with the
//! stop order the intake-before-store rule needs.
//!
//! # The Go pattern
//!
//! ```go
//! group := service.NewServiceGroup()
//! group.Add(ehrSync)          // Start() runs a ticker; Stop() ends it
//! group.Add(reportProcessor)  // Stop() flushes the buffered reports
//! group.Add(scheduler)
//! defer group.Stop()
//! group.Start()               // blocks; SIGTERM makes it return
//! ```
//!
//! Since go-zero 1.8, `Stop` stops every service at once; the order in
//! which they are stopped is not yours to choose.
//!
//! # The Rust way
//!
//! A [`quiesce::Supervisor`] starts the services in the order added, each
//! on its own named thread, and the next only once the previous has called
//! `ctx.ready()`. On the first Ctrl-C or SIGTERM it stops them in reverse,
//! one at a time, each within its stop timeout: the scheduler first, then
//! the processor (which flushes its buffer), then the EHR sync. A second
//! signal gives the stop up: the run returns at once and the program exits
//! with 128 + the signal. The report names every service's outcome and
//! gives the exit code.
//!
//! # Running it
//!
//! ```text
//! cargo run --example service_group                       # Ctrl-C to stop
//! cargo run --example service_group -- --stop-after-ms 800  # stops itself
//! ```
//!
//! `--stop-after-ms` sends the process a real SIGTERM after that long, so
//! the run goes through the same signal path as Ctrl-C.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{select, tick};
use quiesce::{BoxError, Context, Service, ServiceContext, Supervisor, Threads};

/// Pulls new enrollments from the EHR on a ticker.
struct EhrSync {
    every: Duration,
}

impl Service for EhrSync {
    fn name(&self) -> &str {
        "ehr-sync"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        println!("ehr-sync: connected");
        ctx.ready();
        let ticker = tick(self.every);
        let mut pulls = 0;
        loop {
            select! {
                recv(ticker) -> _ => {
                    pulls += 1;
                    println!("ehr-sync: pull #{pulls}");
                }
                recv(ctx.done()) -> _ => break,
            }
        }
        println!("ehr-sync: stopped after {pulls} pulls");
        Ok(())
    }
}

/// Buffers incoming reports and flushes them in batches, and on stop.
struct ReportProcessor {
    buffer: Arc<Mutex<Vec<String>>>,
}

impl Service for ReportProcessor {
    fn name(&self) -> &str {
        "report-processor"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        ctx.ready();
        let mut n = 0;
        while ctx.sleep(Duration::from_millis(70)).is_ok() {
            n += 1;
            let mut buffer = self.buffer.lock().unwrap();
            buffer.push(format!("ePRO-{n:04}"));
            if buffer.len() == 5 {
                println!("report-processor: flushed {} reports", buffer.len());
                buffer.clear();
            }
        }
        let pending = std::mem::take(&mut *self.buffer.lock().unwrap());
        println!(
            "report-processor: stopped, flushed the last {} buffered reports",
            pending.len()
        );
        Ok(())
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let stop_after = parse_stop_after();

    let mut sup = Supervisor::builder()
        .shutdown_timeout(Duration::from_secs(10))
        .build();
    sup.add(EhrSync {
        every: Duration::from_millis(150),
    });
    sup.add(ReportProcessor {
        buffer: Arc::default(),
    })
    .stop_timeout(Duration::from_secs(5));
    sup.add_fn("scheduler", |ctx| {
        ctx.ready();
        let mut summaries = 0;
        while ctx.sleep(Duration::from_millis(250)).is_ok() {
            summaries += 1;
            println!("scheduler: daily summary #{summaries} written");
        }
        println!("scheduler: stopped");
        Ok(())
    });

    // Optional self-stop: a real SIGTERM to this process, from a named,
    // joined thread.
    let mut helpers = Threads::<()>::new(&Context::background());
    if let Some(after) = stop_after {
        helpers
            .spawn("self-stop", move |ctx| {
                if ctx.sleep(after).is_ok() {
                    println!("self-stop: sending SIGTERM");
                    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                }
            })
            .expect("start the self-stop thread");
    }

    println!("service group starting; Ctrl-C to stop");
    let report = sup.run_until_signal().expect("install the signal handlers");
    let _ = helpers.shutdown_timeout(Duration::from_secs(5));

    println!("report: {report}");
    for service in &report.services {
        println!("  {}: {:?}", service.name, service.outcome);
    }
    println!("exit code {}", report.exit_code());
    std::process::exit(report.exit_code());
}

fn parse_stop_after() -> Option<Duration> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => None,
        [flag, ms] if flag == "--stop-after-ms" => match ms.parse() {
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: service_group [--stop-after-ms N]");
    std::process::exit(2);
}
