//! `quiesce serve`: the ePRO intake sidecar, wired from four supervised
//! services.
//!
//! ```text
//! start:  store -> pipeline -> scheduler -> intake      (each waits for the previous to be up)
//! stop:   intake -> scheduler -> pipeline -> store      (each within its share of the deadline)
//! ```
//!
//! The stop on SIGTERM: readiness false -> drain delay -> intake stops
//! accepting and finishes its requests -> the scheduler stops -> the
//! pipeline stops claiming work and its running jobs finish or are
//! cancelled (left queued) -> the store commits what is left and
//! checkpoints -> exit 0. Past the shutdown timeout the stuck threads are
//! named and the exit code is 3.

mod analyzer;
mod auth;
mod fhir;
#[cfg(test)]
mod fuzz_tests;
mod http;
mod instruments;
mod intake;
mod metrics;
pub mod operate;
mod pipeline;
mod report;
mod scheduler;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use quiesce::{Counters, Supervisor};

use crate::Refused;

use self::analyzer::Analyzer;
use self::auth::Auth;
use self::http::{Limits, Tls, TlsFiles};
use self::intake::Intake;
use self::metrics::Metrics;
use self::pipeline::Pipeline;
use self::scheduler::Scheduler;

/// Options of `quiesce serve`. Every one has a `QUIESCE_*` environment
/// variable; a flag wins over the variable.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 graceful stop; 1 a service failed or could not start; \
2 refused as unsafe for patient data (a non-loopback --listen without --tokens-file, a tokens \
file others can read or that does not parse, an analyzer token file others can read or that would \
go in clear to a non-loopback host) or a command-line error (a bad --analyzer-ca too); \
3 shutdown deadline exceeded (stuck threads are named in the log); 130/143 forced by a second \
SIGINT/SIGTERM. Durations take units: 500ms, 25s, 24h. RUST_LOG sets the log level (default info). The README's 'Try the sidecar', 'HTTP API', \
'Security' and 'Running more than one replica' sections tell more."
)]
// The fields' docs are `--help`'s text, read in a terminal: `<secret>` and
// the analyzer's URL are meant as written there, not as HTML or links.
#[allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]
pub struct Args {
    /// Address to listen on. Port 0 picks a free port; the bound address is
    /// logged and written to <DATA_DIR>/listen.addr.
    #[arg(long, env = "QUIESCE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Bearer tokens the API's callers must present (Authorization: Bearer
    /// <secret>): one name:secret or name:secret:scope a line, scope write
    /// (POST only), read (GET only) or all (the default); # comments. Mode
    /// 0600 (0640 if root's). Re-read on SIGHUP. Without it, the API is
    /// open, and only a loopback --listen is allowed.
    #[arg(long, env = "QUIESCE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// /metrics needs a valid token too (any scope); by default it is open,
    /// like the probes.
    #[arg(long, env = "QUIESCE_METRICS_TOKEN_REQUIRED")]
    pub metrics_token_required: bool,

    /// Serve the API over TLS with this certificate chain (PEM, leaf
    /// first); needs --tls-key. Re-read on SIGHUP (new connections get the
    /// new one).
    #[arg(long, env = "QUIESCE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Mode
    /// 0600 (0640 if root's). Re-read on SIGHUP.
    #[arg(long, env = "QUIESCE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: clients must present a certificate issued by one of
    /// these CAs (PEM); others are refused at the handshake. The
    /// certificate's subject is the caller in the audit trail when no
    /// bearer token names one. Needs --tls-cert. Re-read on SIGHUP.
    #[arg(long, env = "QUIESCE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Listen on a non-loopback --listen address without TLS
    /// (--tls-cert) and authenticated callers (--tokens-file or
    /// --tls-client-ca): anyone on the path reads patient reports; and send
    /// --analyzer-token-file's token over http:// to a non-loopback host,
    /// in clear. For a network you trust entirely (a mesh that encrypts and
    /// authenticates for you).
    #[arg(long, env = "QUIESCE_ALLOW_INSECURE")]
    pub allow_insecure: bool,

    /// A second listener serving only /livez, /healthz, /readyz and
    /// /metrics (never patient data), e.g. 0.0.0.0:9090 for kubelet probes
    /// and Prometheus while --listen stays on 127.0.0.1. Its bound address
    /// is written to <DATA_DIR>/admin.addr.
    #[arg(long, env = "QUIESCE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Directory for the database (SQLite), summaries and listen.addr
    /// (created if missing). One process per directory.
    #[arg(long, env = "QUIESCE_DATA_DIR", default_value = "./quiesce-data")]
    pub data_dir: PathBuf,

    /// Keep the reports in this PostgreSQL database, shared with every
    /// replica pointed at it, instead of SQLite in the data directory: a
    /// libpq connection string (postgres://user@host:5432/db?sslmode=require,
    /// postgresql:///db?host=/run/postgresql, or host=... dbname=...). Put
    /// a password in the environment variable or a ~/.pgpass file, not on
    /// the command line.
    #[arg(long, env = "QUIESCE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// This replica's id, stored with each report it claims; unique per
    /// replica (a pod name). Default: hostname-pid.
    #[arg(long, env = "QUIESCE_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How long a claimed report stays this replica's without being
    /// renewed (renewed every third of it while the replica lives): after
    /// a replica dies, its reports are taken by the others within the
    /// lease plus one reaper round (half a lease).
    #[arg(long, env = "QUIESCE_LEASE", default_value = "30s", value_parser = duration)]
    pub lease: Duration,

    /// Analysis workers. Default: the number of CPUs.
    #[arg(long, env = "QUIESCE_WORKERS")]
    pub workers: Option<usize>,

    /// Reports accepted but not yet processed at which POSTs get 429.
    #[arg(long, env = "QUIESCE_MAX_BACKLOG", default_value_t = 1_000_000)]
    pub max_backlog: u64,

    /// Deadline of one processing job (analyzer call included).
    #[arg(long, env = "QUIESCE_JOB_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub job_timeout: Duration,

    /// Attempts before a report is marked failed with its last error.
    #[arg(long, env = "QUIESCE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Delay before the first retry; it doubles at each attempt (at most
    /// 5 minutes).
    #[arg(long, env = "QUIESCE_RETRY_BACKOFF", default_value = "1s", value_parser = duration)]
    pub retry_backoff: Duration,

    /// How often the summary (per site: reports, alerts, patients) is
    /// written.
    #[arg(long, env = "QUIESCE_SUMMARY_INTERVAL", default_value = "24h", value_parser = duration)]
    pub summary_interval: Duration,

    /// How many summary files to keep in <DATA_DIR>/summaries (the oldest
    /// go first; the database keeps every summary).
    #[arg(long, env = "QUIESCE_SUMMARY_KEEP", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub summary_keep: u32,

    /// On SIGTERM, how long to keep serving with /readyz at 503 before
    /// stopping, so load balancers stop sending traffic (5s under
    /// Kubernetes). Counts against the shutdown timeout.
    #[arg(long, env = "QUIESCE_DRAIN_DELAY", default_value = "0s", value_parser = duration)]
    pub drain_delay: Duration,

    /// The whole shutdown's deadline (under Kubernetes' 30 s grace period).
    #[arg(long, env = "QUIESCE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// External analysis service, e.g. http://127.0.0.1:9000/v1/analyze
    /// or https://analyzer.example:8443/v1/analyze (port 80 or 443 by
    /// default; an IPv6 address in brackets). Each report is posted there
    /// under the job's deadline. https:// checks the service's certificate
    /// against webpki-roots (Mozilla's CAs) or --analyzer-ca, for the URL's
    /// host (a name, or an IP address).
    #[arg(long, env = "QUIESCE_ANALYZER_URL")]
    pub analyzer_url: Option<String>,

    /// PEM file of the CA certificates an https:// analyzer's certificate
    /// must be signed by (one or more), instead of webpki-roots: a private
    /// CA's.
    #[arg(long, env = "QUIESCE_ANALYZER_CA")]
    pub analyzer_ca: Option<PathBuf>,

    /// File holding one bearer token sent to the analyzer on every call
    /// (Authorization: Bearer <token>); surrounding whitespace is trimmed.
    /// Mode 0600 (0640 if root's), like --tokens-file; re-read on SIGHUP.
    /// Sent over http:// only to a loopback host, unless --allow-insecure.
    #[arg(long, env = "QUIESCE_ANALYZER_TOKEN_FILE")]
    pub analyzer_token_file: Option<PathBuf>,

    /// One log line per request (target `quiesce::access`, at info): method,
    /// route pattern, status, bytes, duration, request id, caller. Never a
    /// patient id (ids in paths are not logged).
    #[arg(long, env = "QUIESCE_ACCESS_LOG")]
    pub access_log: bool,

    /// Largest request body accepted (bytes; KiB and MiB suffixes allowed).
    /// A batch upload needs room: 500 reports take about 150 KiB.
    #[arg(long, env = "QUIESCE_MAX_BODY", default_value = "1MiB", value_parser = size)]
    pub max_body: usize,

    /// The most reports (or FHIR entries) in one batch upload
    /// (`POST /v1/reports:batch`, `POST /fhir`).
    #[arg(long, env = "QUIESCE_MAX_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,

    /// Reports submitted before this time (RFC 3339) are refused (400): a
    /// client's broken clock or default value, not a patient's answer.
    /// Never earlier than 2000-01-01T00:00:00Z.
    #[arg(long, env = "QUIESCE_MIN_SUBMITTED_AT", default_value = "2000-01-01T00:00:00Z",
          value_parser = min_submitted_at)]
    pub min_submitted_at: time::OffsetDateTime,

    /// A report whose answers total more than this raises an alert (as
    /// does any answer of 3 or 4).
    #[arg(long, env = "QUIESCE_ALERT_TOTAL", default_value_t = 20)]
    pub alert_total: u32,

    /// HTTP requests read and answered at once (connections waiting for a
    /// request hold no thread). Most of these threads stand by: see
    /// `--http-active-threads`.
    #[arg(long, env = "QUIESCE_HTTP_THREADS", default_value_t = 64)]
    pub http_threads: usize,

    /// Of `--http-threads`, how many wait for requests at once. One that
    /// has to wait (a body still on its way, an audited read's commit, a
    /// database read, a client not reading its answers) lets one standing
    /// by take its place, so slow clients hold threads, never the intake.
    /// Fewer waiting threads are woken less often under load. Default: the
    /// number of CPUs (at most `--http-threads`).
    #[arg(long, env = "QUIESCE_HTTP_ACTIVE_THREADS")]
    pub http_active_threads: Option<usize>,

    /// Open HTTP connections at most; more get 503 at once.
    #[arg(long, env = "QUIESCE_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// Time a client has to send a request's head, from its first byte.
    #[arg(long, env = "QUIESCE_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request's body.
    #[arg(long, env = "QUIESCE_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_timeout: Duration,

    /// How long an idle keep-alive connection stays open.
    #[arg(long, env = "QUIESCE_IDLE_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub idle_timeout: Duration,
}

/// A bad command line: reported like clap's own errors (usage, exit 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error, formatted.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new(Usage(format!($($arg)*)))
    };
}

/// The addresses `listen` names (`flag` for the error).
fn addresses(flag: &str, listen: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                return Err(usage!("{flag} {listen:?}: the name has no address"));
            }
            Ok(addrs)
        }
        Err(err) => Err(usage!(
            "{flag} {listen:?} is not an address to listen on ({err}); examples: 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080"
        )),
    }
}

fn min_submitted_at(s: &str) -> Result<time::OffsetDateTime, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "must be an RFC 3339 time, e.g. 2025-01-01T00:00:00Z".to_string())?;
    if at < time::macros::datetime!(2000-01-01 0:00 UTC) {
        return Err("must not be before 2000-01-01T00:00:00Z".into());
    }
    Ok(at)
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 25s, 24h)"))
}

fn size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 65536, 64KiB, 1MiB)"))?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("unknown size unit {unit:?} (use KiB or MiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Records a reload asked for by SIGHUP (`kind`: what was reloaded) in the
/// audit trail, without waiting.
fn audit_reload(audit: &store::StoreHandle, kind: &'static str, outcome: String) {
    let mut event = store::AuditEvent::new(
        kind,
        store::Who {
            caller: Some("SIGHUP".into()),
            ..store::Who::default()
        },
    );
    event.outcome = Some(outcome);
    audit.audit_later(event, Duration::from_secs(1), &|| {});
}

impl Args {
    /// Checks what clap cannot check alone (values against each other,
    /// the listen address): a [`Usage`] error, exit 2.
    fn check(&self) -> anyhow::Result<()> {
        // Before anything is created: a bad address must not leave a data
        // directory and a database behind, or start three services first.
        let listen = addresses("--listen", &self.listen)?;
        if let Some(admin) = &self.admin_listen {
            addresses("--admin-listen", admin)?;
        }
        let loopback = listen.iter().all(|addr| addr.ip().is_loopback());
        let authenticated = self.tokens_file.is_some() || self.tls_client_ca.is_some();
        let safe = authenticated && self.tls_cert.is_some();
        if !(loopback || safe || self.allow_insecure) {
            let missing = match (self.tls_cert.is_some(), authenticated) {
                (false, false) => {
                    "without TLS (--tls-cert, --tls-key) and without \
                                   authenticated callers (--tokens-file or --tls-client-ca), \
                                   anyone who can reach it could read and write patient reports"
                }
                (false, true) => {
                    "without TLS (--tls-cert, --tls-key), patient reports and \
                                  bearer tokens would cross the network in clear"
                }
                _ => {
                    "without authenticated callers (--tokens-file or --tls-client-ca), \
                      anyone who can reach it could read and write patient reports"
                }
            };
            return Err(Refused(format!(
                "--listen {} is not a loopback address, and {missing}: see \"Security\" in \
                 the README, or listen on 127.0.0.1 (with --admin-listen for probes and \
                 metrics), or pass --allow-insecure if the network is yours alone",
                self.listen
            ))
            .into());
        }
        if self.metrics_token_required && self.tokens_file.is_none() {
            return Err(usage!("--metrics-token-required needs --tokens-file"));
        }
        if self.workers == Some(0) {
            return Err(usage!("--workers must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(usage!("--max-attempts must be at least 1"));
        }
        if self.job_timeout.is_zero() {
            return Err(usage!("--job-timeout must be more than zero"));
        }
        if self.summary_interval.is_zero() {
            return Err(usage!("--summary-interval must be more than zero"));
        }
        if self.shutdown_timeout <= self.drain_delay {
            return Err(usage!(
                "--shutdown-timeout ({}) must be longer than --drain-delay ({})",
                humantime::format_duration(self.shutdown_timeout),
                humantime::format_duration(self.drain_delay)
            ));
        }
        if self.http_threads == 0 {
            return Err(usage!("--http-threads must be at least 1"));
        }
        match self.http_active_threads {
            Some(0) => return Err(usage!("--http-active-threads must be at least 1")),
            Some(active) if active > self.http_threads => {
                return Err(usage!(
                    "--http-active-threads ({active}) must be at most --http-threads ({})",
                    self.http_threads
                ));
            }
            _ => {}
        }
        if self.max_connections < self.http_threads {
            return Err(usage!(
                "--http-threads ({}) must be at most --max-connections ({})",
                self.http_threads,
                self.max_connections
            ));
        }
        if self.max_body == 0 {
            return Err(usage!("--max-body must be more than zero"));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(usage!("--lease must be at least 1s"));
        }
        if let Some(id) = &self.replica_id
            && (id.is_empty() || id.len() > 200 || id.chars().any(char::is_control))
        {
            return Err(usage!("--replica-id must be 1 to 200 printable characters"));
        }
        Ok(())
    }
}

/// Runs `quiesce serve` until SIGINT/SIGTERM; the exit code says how the
/// stop went.
///
/// # Errors
///
/// Invalid options, or a data directory that cannot be created or is in
/// use by another `quiesce serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.check()?;
    // Before anything is created: a tokens file others can read, or one
    // that does not parse, stops the start.
    let auth = Arc::new(
        Auth::new(args.tokens_file.clone(), args.metrics_token_required).map_err(Refused)?,
    );
    // So do certificates that cannot be used, and a key others can read.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })
            .map_err(Refused)?,
        )),
        _ => None,
    };
    let analyzer = analyzer(&args)?;
    let analyzer_token = analyzer.as_ref().and_then(Analyzer::token);
    if let Some(url) = &args.database_url {
        store::check_database_url(url).map_err(|e| usage!("--database-url: {e}"))?;
    }
    if args.data_dir.exists() && !args.data_dir.is_dir() {
        return Err(usage!(
            "--data-dir {}: not a directory",
            args.data_dir.display()
        ));
    }
    make_private(&args.data_dir)?;
    // Held until `run` returns: one process per data dir.
    let _lock = lock_data_dir(&args.data_dir)?;
    let backend = match &args.database_url {
        Some(url) => store::Backend::Postgres(url.clone()),
        None => store::Backend::Sqlite(args.data_dir.join("quiesce.db")),
    };
    let replica = args.replica_id.clone().unwrap_or_else(default_replica_id);
    let addr_file = args.data_dir.join("listen.addr");
    let admin_addr_file = args.data_dir.join("admin.addr");
    // A stale address must not mislead a script waiting for this run's.
    for file in [&addr_file, &admin_addr_file] {
        match std::fs::remove_file(file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("cannot remove {}", file.display()));
            }
            _ => {}
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.unwrap_or(cpus);

    // The shutdown budget after the drain delay, shared out in stop order;
    // the supervisor also holds the whole to `--shutdown-timeout`.
    let budget = args.shutdown_timeout - args.drain_delay;
    let intake_stop = budget.mul_f64(0.3);
    let pipeline_stop = budget.mul_f64(0.5);
    // The store stops last, with whatever is left (the supervisor holds it
    // to the overall deadline): its final commit and checkpoint must not
    // be cut short by a fixed share.
    let store_stop = budget;

    let (work_added_tx, work_added_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(store::Live {
        enrollment: Counters::new(),
        backlog: AtomicI64::new(0),
        metrics: Metrics::new(),
        work_added: work_added_tx,
        health: store::Health::default(),
    });
    let claiming = store::Claiming {
        replica: replica.clone(),
        lease: args.lease,
    };
    let (store_service, store, readers) =
        store::new(&backend, claiming.clone(), shared.clone(), 4096)
            .map_err(|e| usage!("--database-url: {e}"))?;

    let mut sup = Supervisor::builder()
        .shutdown_timeout(args.shutdown_timeout)
        .drain_delay(args.drain_delay)
        .start_timeout(Duration::from_secs(60))
        .build();
    let readiness = sup.readiness();
    sup.add(store_service).stop_timeout(store_stop);
    sup.add(Pipeline::new(
        claiming,
        store.clone(),
        work_added_rx,
        pipeline::Settings {
            workers,
            job_timeout: args.job_timeout,
            max_attempts: args.max_attempts,
            retry_backoff: quiesce::Backoff::new(args.retry_backoff, Duration::from_secs(300)),
            alert_total: args.alert_total,
            analyzer,
            // Room after the drain for cancelled jobs to return (a loaded
            // machine is slow to run them) within the pipeline's share.
            drain: pipeline_stop.mul_f64(0.7),
        },
        &shared,
    ))
    .stop_timeout(pipeline_stop);
    sup.add(Scheduler::new(
        readers.clone(),
        args.data_dir.join("summaries"),
        store.clone(),
        args.summary_interval,
        args.summary_keep as usize,
    ))
    .stop_timeout(Duration::from_secs(1));
    let store_for_signals = store.clone();
    sup.add(Intake {
        listen: args.listen.clone(),
        addr_file,
        readers,
        limits: Limits {
            handlers: args.http_threads,
            // At most `handlers`: the server clamps it.
            active: args.http_active_threads.unwrap_or(cpus),
            max_connections: args.max_connections,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            idle_timeout: args.idle_timeout,
            max_body: args.max_body,
            max_head: 16 * 1024,
            close_grace: Duration::from_millis(200).min(intake_stop / 4),
        },
        max_backlog: i64::try_from(args.max_backlog).unwrap_or(i64::MAX),
        max_batch: args.max_batch as usize,
        alert_total: args.alert_total,
        score_at_intake: args.analyzer_url.is_none(),
        min_submitted_at: args.min_submitted_at,
        stop_budget: intake_stop.saturating_sub(Duration::from_millis(100)),
        store,
        shared: shared.clone(),
        readiness,
        auth: auth.clone(),
        tls: tls.clone(),
        admin_listen: args.admin_listen.clone(),
        admin_addr_file,
        access_log: args.access_log,
    })
    .stop_timeout(intake_stop);

    log::info!(
        "quiesce serve {replica}: reports in {}, {workers} worker(s), shutdown timeout {:?}",
        match &backend {
            store::Backend::Sqlite(path) => path.display().to_string(),
            store::Backend::Postgres(_) => "PostgreSQL (--database-url)".to_string(),
        },
        args.shutdown_timeout
    );
    // SIGHUP re-reads the tokens file, the TLS files and the analyzer's
    // token file (each reload in the audit trail); it and the others that
    // would kill the process at once are otherwise logged and ignored
    // (serve stops on SIGINT and SIGTERM only).
    let audit = store_for_signals;
    let _others = crate::other_signals::watch(move |signal| {
        if signal != signal_hook::consts::SIGHUP {
            log::warn!(
                "received {}: ignored (quiesce serve stops on SIGINT or SIGTERM)",
                quiesce::signals::signal_name(signal)
            );
            return;
        }
        if tls.is_none() && !auth.enabled() && analyzer_token.is_none() {
            log::warn!(
                "received SIGHUP: ignored (no --tokens-file, TLS files or --analyzer-token-file \
                 to reload; quiesce serve stops on SIGINT or SIGTERM)"
            );
        }
        if let Some(tls) = &tls {
            log::info!("received SIGHUP: reloading the TLS certificate and key");
            let outcome = match tls.reload() {
                Ok(()) => {
                    log::info!("TLS files reloaded: new connections use them");
                    "reloaded".to_string()
                }
                Err(err) => {
                    log::error!("{err}; not reloaded: the TLS files loaded before stay");
                    "refused: the files loaded before stay".to_string()
                }
            };
            audit_reload(&audit, "tls.reloaded", outcome);
        }
        // In the audit trail (no names, no secrets): how many, or why not.
        if auth.enabled() {
            log::info!("received SIGHUP: reloading the tokens file");
            let outcome = match auth.reload() {
                Ok(n) => format!("{n} token(s)"),
                Err(_) => "refused: the tokens loaded before stay valid".into(),
            };
            audit_reload(&audit, "tokens.reloaded", outcome);
        }
        if let Some(token) = &analyzer_token {
            log::info!("received SIGHUP: reloading the analyzer token file");
            let outcome = match token.reload() {
                Ok(()) => "reloaded".into(),
                Err(_) => "refused: the token loaded before stays in use".into(),
            };
            audit_reload(&audit, "analyzer_token.reloaded", outcome);
        }
    })
    .context("cannot install the signal handlers")?;
    let report = sup
        .run_until_signal()
        .context("cannot install the signal handlers")?;
    // Nothing listens any more: a script must not find this run's address.
    for file in ["listen.addr", "admin.addr"] {
        if let Err(err) = std::fs::remove_file(args.data_dir.join(file))
            && err.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {file}: {err}");
        }
    }
    log::info!(
        "stopped ({}): {} accepted, {} processed, {} failed, {} still queued; exit {}",
        match &report.cause {
            quiesce::StopCause::Requested(why) => why.clone(),
            other => other.to_string(),
        },
        shared.metrics.accepted.get(),
        shared.metrics.processed.get(),
        shared.metrics.failed.get(),
        shared.backlog.load(Ordering::SeqCst),
        report.exit_code()
    );
    let code = report.exit_code();
    if code != 0 {
        // Why the process exits non-zero, once, in plain words, and seen
        // even when RUST_LOG hides errors.
        let why = format!("quiesce serve exits with code {code}: {report}");
        if log::log_enabled!(log::Level::Error) {
            log::error!("{why}");
        } else {
            eprintln!("quiesce: {why}");
        }
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The analyzer of `--analyzer-url`, with its TLS configuration
/// (`--analyzer-ca`) and its token (`--analyzer-token-file`), checked and
/// built before anything is created: a bad URL or CA file is a usage error,
/// a token file others can read or a token in clear on a network is
/// refused (exit 2 either way).
fn analyzer(args: &Args) -> anyhow::Result<Option<Analyzer>> {
    let Some(url) = &args.analyzer_url else {
        for (given, flag) in [
            (args.analyzer_ca.is_some(), "--analyzer-ca"),
            (args.analyzer_token_file.is_some(), "--analyzer-token-file"),
        ] {
            if given {
                return Err(usage!("{flag} needs --analyzer-url"));
            }
        }
        return Ok(None);
    };
    let mut analyzer = Analyzer::parse(url).map_err(|e| usage!("--analyzer-url: {e}"))?;
    match analyzer.scheme() {
        analyzer::Scheme::Https => {
            let config = analyzer::client_config(args.analyzer_ca.as_deref())
                .map_err(|e| usage!("--analyzer-ca: {e}"))?;
            analyzer = analyzer
                .with_tls(config)
                .map_err(|e| usage!("--analyzer-url: {e}"))?;
        }
        analyzer::Scheme::Http if args.analyzer_ca.is_some() => {
            return Err(usage!("--analyzer-ca needs an https:// --analyzer-url"));
        }
        analyzer::Scheme::Http => {}
    }
    if let Some(path) = &args.analyzer_token_file {
        if analyzer.scheme() == analyzer::Scheme::Http
            && !analyzer.host_is_loopback()
            && !args.allow_insecure
        {
            return Err(Refused(format!(
                "--analyzer-token-file with --analyzer-url {}: the token would cross the \
                 network in clear to a host that is not a loopback address; use an https:// \
                 URL, or pass --allow-insecure if the network is yours alone",
                analyzer.url()
            ))
            .into());
        }
        let token = analyzer::BearerToken::load(path).map_err(Refused)?;
        analyzer = analyzer.with_token(Arc::new(token));
    }
    log::info!(
        "analyzer: {}{}{}",
        analyzer.url(),
        match (analyzer.scheme(), &args.analyzer_ca) {
            (analyzer::Scheme::Http, _) => String::new(),
            (analyzer::Scheme::Https, None) => ", TLS trusting webpki-roots".to_string(),
            (analyzer::Scheme::Https, Some(ca)) => format!(", TLS trusting {}", ca.display()),
        },
        match &args.analyzer_token_file {
            Some(path) => format!(", bearer token from {}", path.display()),
            None => String::new(),
        }
    );
    Ok(Some(analyzer))
}

/// This replica's default id: the host's name and the process id, unique
/// on a network of hosts with unique names.
fn default_replica_id() -> String {
    let host = rustix::system::uname();
    let host = host.nodename().to_string_lossy();
    let host = if host.is_empty() { "quiesce" } else { &host };
    format!("{host}-{}", std::process::id())
}

/// Makes everything `serve` creates private to its user: the process's
/// umask becomes 077 (SQLite's database, WAL and shared-memory files, the
/// summaries, `listen.addr` and the lock come out 0600, directories 0700),
/// and the data directory is created 0700. A database that group or
/// others can read (or whose directory they can) is refused, with the
/// `chmod` that fixes it; a looser directory without a database, or
/// another file, is tightened with a warning. They hold patient data.
///
/// # Errors
///
/// When the directory cannot be created or its mode set.
fn make_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use rustix::fs::Mode;
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

    // Before any thread starts (none has yet): the umask is process-wide.
    rustix::process::umask(Mode::from_raw_mode(0o077));
    // A database someone else could read: patient data may have been
    // exposed. Not tightened in silence: refused, for a person to look at
    // who could read it, with the commands that fix it. (A directory with
    // no database yet holds nothing to expose: it is tightened below.)
    let db = dir.join("quiesce.db");
    if db.exists() {
        let loose: Vec<(std::path::PathBuf, u32)> = [
            dir.to_path_buf(),
            db.clone(),
            dir.join("quiesce.db-wal"),
            dir.join("quiesce.db-shm"),
        ]
        .into_iter()
        .filter_map(|path| {
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some((path, mode))
        })
        .collect();
        if !loose.is_empty() {
            let list: Vec<String> = loose
                .iter()
                .map(|(path, mode)| format!("{} (mode {mode:o})", path.display()))
                .collect();
            bail!(
                "refusing to start: patient data is readable by group or others: {}; check who \
                 could read it, then: chmod 700 {} && chmod 600 {}*",
                list.join(", "),
                dir.display(),
                db.display()
            );
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let tighten = |path: &std::path::Path, mode: u32| -> anyhow::Result<()> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(()); // not there (yet): created private
        };
        let now = meta.permissions().mode() & 0o777;
        if now & 0o077 != 0 {
            log::warn!(
                "{} was readable by others ({now:o}); making it {mode:o}",
                path.display()
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(
                || {
                    use std::os::unix::fs::MetadataExt as _;
                    let me = rustix::process::geteuid().as_raw();
                    if meta.uid() == me {
                        format!("cannot make {} private", path.display())
                    } else {
                        // A volume's mount point (an emptyDir, a claim with
                        // fsGroup) belongs to root: the process cannot
                        // tighten it, but can create a private directory
                        // inside it.
                        format!(
                            "cannot make {} private: it belongs to uid {}, and this process runs \
                             as uid {me}; point --data-dir at a directory inside it (created \
                             private), e.g. {}",
                            path.display(),
                            meta.uid(),
                            path.join("data").display()
                        )
                    }
                },
            )?;
        }
        Ok(())
    };
    tighten(dir, 0o700)?;
    tighten(&dir.join("summaries"), 0o700)?;
    for file in [
        "quiesce.db",
        "quiesce.db-wal",
        "quiesce.db-shm",
        "listen.addr",
        "admin.addr",
        LOCK_FILE,
    ] {
        tighten(&dir.join(file), 0o600)?;
    }
    Ok(())
}

/// The name of the lock file in the data directory.
const LOCK_FILE: &str = "quiesce.lock";

/// Takes the data directory's lock (an exclusive `flock` on
/// `quiesce.lock`, released by the kernel when the process ends, however
/// it ends), so that a second `serve` on the same directory refuses to
/// start instead of sharing the SQLite file behind the first one's back.
/// The file holds the owner's pid, for the operator.
///
/// # Errors
///
/// When another process holds the lock, or the file cannot be opened.
pub(crate) fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            bail!(
                "the data directory {} is in use by another quiesce serve{} (it holds {}); \
                 only one process may use a data directory (replicas sharing a PostgreSQL \
                 database each have their own)",
                dir.display(),
                if owner.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {owner})")
                },
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // Ours now: record who holds it (best effort; the lock is what counts).
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_parse() {
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("1 MiB"), Ok(1 << 20));
        assert!(size("lots").is_err());
        assert!(size("3 parsecs").is_err());
    }
}
