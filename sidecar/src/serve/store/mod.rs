//! The store: the reports (archive and work queue), enrollment and the
//! summaries, in SQLite (embedded, the default) or PostgreSQL (shared by
//! several replicas). One writer thread (the `store` service) owns the
//! write connection and commits whatever is waiting in one transaction —
//! many inserts, claims, results and retries — and the `store-sync` thread
//! replies to each caller once the commit is durable (with SQLite it
//! flushes the WAL first, one fsync for one or more transactions; see
//! [`Syncer`](sync::Syncer)). Readers open their own connections. The
//! SQLite writer writes each commit's WAL frames in one call instead of
//! two per page ([`walbuf`]).
//!
//! The `reports` table is both the archive and the work queue: a report is
//! `queued` until a result (`processed`) or its last failed attempt
//! (`failed`) is committed, so a crash at any moment loses nothing, and
//! every update is conditional on `status = 'queued'`, so processing a
//! report twice (after a crash) stores it once.
//!
//! # Where a report is scored
//!
//! When no analyzer is configured (`--analyzer-url` absent), processing is
//! scoring alone, which takes microseconds: intake scores the report (on
//! its HTTP thread, off the writer) and sends it with its result
//! ([`Op::Insert`]'s `scored`), and the insert stores it `processed` in
//! its own transaction — the row with its result, the enrollment, and the
//! audit rows of an attempt and of its alert, as [`Op::Complete`] would —
//! so it is never queued, claimed or updated: one transaction, one write
//! of its row. The pipeline works on the rest: every report when an
//! analyzer is configured, a report whose answers do not fit its
//! instrument (queued, and failed for good by the pipeline, as before),
//! reports queued before an upgrade, and re-driven ones.
//!
//! # Claims and leases
//!
//! Work is claimed, whatever the backend: a claim ([`Op::Claim`]) marks
//! due reports `claimed_by` this replica until `lease_until`; the claims a
//! replica holds are renewed ([`Op::Heartbeat`]) while it lives, released
//! at its stop ([`Op::Release`]), and returned to the queue by any
//! replica's reaper ([`Op::Reap`]) once their lease has run out (the
//! replica died). A report's outcome is stored only while it is still
//! claimed by the replica that worked on it. With SQLite there is one
//! replica (the data directory's lock); with PostgreSQL, as many as share
//! the database, and the claim skips rows other replicas are claiming
//! (`FOR UPDATE SKIP LOCKED`).
//!
//! # What it owns, and who touches what
//!
//! - `store` (the service thread, [`Writer`]): the write
//!   connection (inside its [`Engine`](writer::Engine)), the command
//!   channel's receiving end, and every change to [`Live`]'s backlog and
//!   enrollment counters.
//! - `store-sync` (a [`quiesce::Consumer`]): the WAL file handle (SQLite),
//!   and the calling of every [`Reply`].
//! - Callers (HTTP handlers, analysis workers, the dispatcher, the
//!   scheduler) hold a [`StoreHandle`]: they send commands and wait on
//!   their reply, nothing else. Readers (GET handlers, the scheduler's
//!   summary) use a [`Reader`] of their own.
//!
//! # Invariants
//!
//! 1. Every write is made by the `store` thread, one transaction per batch
//!    of commands; a batch's accounting ([`Live`]'s backlog and counters)
//!    is done after its commit, in command order, before the next batch
//!    starts (the next batch's backlog check sees it).
//! 2. No reply tells of a commit before it is durable: `store-sync`
//!    flushes the SQLite WAL, then replies (or each commit flushes itself,
//!    `synchronous = FULL`, when the WAL file could not be opened);
//!    PostgreSQL's COMMIT returns once durable (`synchronous_commit = on`,
//!    and on a synchronous standby too when one is configured).
//! 3. Every command gets exactly one reply: its outcome or its failure; a
//!    command dropped unanswered (the store stopped) drops its reply, which
//!    [`StoreHandle::call`] reports as "stopped".
//! 4. A report's status moves only `queued` → `processed` or `failed`, by
//!    updates conditional on `queued` and on the report being claimed by
//!    this replica: a second result for a report, or a late one after its
//!    lease ran out and another replica claimed it, changes nothing
//!    (`Outcome::Unchanged`, counted as discarded). (A report scored at
//!    intake is inserted `processed`, with its result, and never moves.)
//!    Only `failed` → `queued` goes back, by an operator's re-drive.
//! 5. At every batch boundary, [`Live::backlog`] is the number of `queued`
//!    rows as this replica knows it: with SQLite, counted at start, +1 per
//!    accepted insert not scored at intake (one scored is stored
//!    `processed`) and per re-drive, −1 per report processed or failed
//!    by the pipeline (exact: nobody
//!    else writes); with PostgreSQL, the shared `counts` row, which every
//!    committing transaction of every replica updates with its own
//!    changes, read back at each tick (so it converges within one tick);
//!    a batch with inserts reads it afresh inside its transaction.
//! 6. Replies run on `store-sync`, never on the writer, each under
//!    `catch_unwind`: one broken reply neither delays a commit nor keeps
//!    the other replies from being called (3).
//! 7. [`Live::health`] tells the outcome of the last commit: set by the
//!    writer after each transaction (before its replies are handed to
//!    `store-sync`): failed when the commit failed or a statement failed
//!    for a reason of the store's own (busy or locked by another process,
//!    corrupt, no room, I/O, the server gone), after which the rest of
//!    that batch is not tried (answered not stored: each would wait out
//!    the busy timeout again); and marked failed by `store-sync` when a
//!    flush fails. While it is failed, the writer probes (a one-row write
//!    to the `probe` table, 1 s then doubling up to 30 s; with PostgreSQL
//!    a new connection first), so it turns healthy again by itself even
//!    with no work and no traffic. A failure is logged when it starts,
//!    then once per [`LOG_EVERY`] with a count (a [`Throttle`]), and the
//!    recovery once.
//! 8. A reply's failure says whether the command is certainly not stored
//!    ([`Failure::NotStored`]: its statement failed, or the transaction
//!    failed before its commit, or its commit was refused and rolled
//!    back) or may be ([`Failure::Unknown`]: any other failure of the
//!    commit — the connection lost while committing — or of the flush
//!    after it). Never "not stored" for a command that may be on disk.
//!    A command whose statement fails is answered alone and leaves nothing
//!    behind; with SQLite, one that fails after an earlier statement of its
//!    own changed rows (a report inserted, its enrollment refused) fails
//!    its whole batch, rolled back, as any error does with PostgreSQL: no
//!    change is kept without its audit rows.
//!
//! # Files
//!
//! - this file: the commands ([`Op`]), their outcomes, the handle callers
//!   send them through ([`StoreHandle`]), the live state ([`Live`]), and
//!   the choice of backend ([`Backend`], [`new`]);
//! - `writer`: the writer service, common to both backends: batching,
//!   health and probes, accounting;
//! - `sqlite` and `postgres`: each backend's schema and migrations, its
//!   [`Engine`](writer::Engine) (one transaction of commands) and its
//!   reads;
//! - `read`: the [`Reader`] the GET handlers and the scheduler use;
//! - `sync`: the `store-sync` thread ([`Syncer`](sync::Syncer)) that flushes
//!   the WAL and calls the replies.

mod postgres;
mod read;
mod sqlite;
mod sync;
mod walbuf;
mod writer;

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use quiesce::{Counters, JobError, JobHandle};

use super::metrics::Metrics;
use super::report::Report;

pub use read::{AuditFilter, ListFilter, ListedReport, Reader, ReaderFactory};
pub use writer::Writer;

/// Where the reports are kept.
#[derive(Clone, Debug)]
pub enum Backend {
    /// An embedded SQLite file (one process).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database shared by every replica: a libpq connection
    /// string (`postgres://…`, `postgresql://…`, or `key=value` pairs).
    Postgres(String),
}

/// How this replica claims work.
#[derive(Clone, Debug)]
pub struct Claiming {
    /// This replica's id, stored as `claimed_by` (unique per replica).
    pub replica: String,
    /// How long a claim stays this replica's without being renewed.
    pub lease: Duration,
}

/// The store's writer service, the handle to reach it, and the factory of
/// readers, for `backend`.
///
/// # Errors
///
/// When the PostgreSQL connection string is not usable (the database
/// itself is reached when the service starts).
pub fn new(
    backend: &Backend,
    claiming: Claiming,
    shared: Arc<Live>,
    capacity: usize,
) -> Result<(Writer, StoreHandle, ReaderFactory), String> {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let replica = claiming.replica.clone();
    let (engine, readers): (Box<dyn writer::Engine>, ReaderFactory) = match backend {
        Backend::Sqlite(path) => (
            Box::new(sqlite::Engine::new(path.clone(), claiming)),
            ReaderFactory::sqlite(path.clone()),
        ),
        Backend::Postgres(url) => {
            let url = postgres::with_defaults(url)?;
            (
                Box::new(postgres::Engine::new(url.clone(), claiming)),
                ReaderFactory::postgres(url),
            )
        }
    };
    Ok((
        Writer::new(engine, replica, rx, shared),
        StoreHandle { tx },
        readers,
    ))
}

/// Opens the store without a server (the command line's `quiesce reports
/// retry`), applies `ops` in one transaction, and closes it: each
/// command's outcome, or why it was not stored. With SQLite the caller
/// must hold the data directory's lock (no server may run on it).
///
/// # Errors
///
/// When the store cannot be opened, or the transaction failed.
pub fn apply_offline(
    backend: &Backend,
    ops: Vec<Op>,
) -> Result<Vec<Result<Outcome, String>>, String> {
    let claiming = Claiming {
        replica: format!("cli-{}", std::process::id()),
        lease: Duration::from_secs(30),
    };
    let mut engine: Box<dyn writer::Engine> = match backend {
        Backend::Sqlite(path) => Box::new(sqlite::Engine::new(path.clone(), claiming)),
        Backend::Postgres(url) => Box::new(postgres::Engine::new(
            postgres::with_defaults(url)?,
            claiming,
        )),
    };
    let counts = engine.open().map_err(|e| e.to_string())?;
    let refs: Vec<&Op> = ops.iter().collect();
    let applied = engine.apply(&refs, counts.backlog);
    let closed = engine.close();
    let results = applied.results.map_err(|f| f.to_string())?;
    closed?;
    Ok(results
        .into_iter()
        .map(|r| r.map(|effect| effect.outcome))
        .collect())
}

/// Whether `url` is a PostgreSQL connection string (nothing is reached).
///
/// # Errors
///
/// Why it is not.
pub fn check_database_url(url: &str) -> Result<(), String> {
    postgres::with_defaults(url).map(drop)
}

/// The shared PostgreSQL readers for `url` (the command line's reads).
///
/// # Errors
///
/// When `url` is not a PostgreSQL connection string.
pub fn postgres_readers(url: &str) -> Result<postgres::Readers, String> {
    Ok(postgres::Readers::new(postgres::with_defaults(url)?))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// What a writer command does.
#[derive(Debug)]
pub enum Op {
    /// Store a new report (or recognise a duplicate or a conflict).
    Insert {
        /// The report.
        report: Report,
        /// Its [`Report::content_hash`] (computed by the caller, off the
        /// writer thread).
        hash: String,
        /// Refuse a new report ([`Outcome::BacklogFull`]) when this many
        /// are queued; a duplicate is still recognised.
        max_backlog: i64,
        /// Who sent it, for the audit trail.
        who: Who,
        /// SHA-256 of the request's body (hex), for the audit trail: it
        /// ties the row to what was sent without holding it.
        body_sha256: String,
        /// The resource as the client sent it (FHIR), kept verbatim beside
        /// the normalised report.
        raw: Option<String>,
        /// Its answers raise an alert (a self-harm item, say): claimed
        /// before routine work, in a lane of its own.
        urgent: bool,
        /// Its result, when it was scored at intake (no analyzer is
        /// configured): the report is stored `processed` with it, its
        /// enrollment and its processing's audit rows, in this insert's
        /// transaction, and never queued. `None`: stored `queued`, for the
        /// pipeline.
        scored: Option<Scored>,
    },
    /// Store many reports in one transaction (a batch upload): each item
    /// an [`Op::Insert`], each judged on its own (accepted, duplicate,
    /// conflict, backlog full); answered [`Outcome::Many`], in order.
    InsertMany {
        /// The inserts.
        items: Vec<Op>,
    },
    /// Store a report's result and mark it processed.
    Complete {
        /// Which report.
        report_id: String,
        /// Its site, for enrollment.
        site_id: String,
        /// Its patient, for enrollment.
        patient_id: String,
        /// The result, as JSON.
        result: String,
        /// Whether it raised an alert.
        alert: bool,
        /// Attempts made, this one included.
        attempts: u32,
    },
    /// Record a failed attempt and when to try again.
    Retry {
        /// Which report.
        report_id: String,
        /// Attempts made.
        attempts: u32,
        /// The attempt's error.
        error: String,
        /// Not before this (ms since the epoch).
        next_at_ms: i64,
    },
    /// Mark a report failed for good.
    Fail {
        /// Which report.
        report_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// Claim up to `limit` due reports not claimed by another replica
    /// (this replica's own claims included), for the lease, the urgent
    /// ones (alerts) first: answered [`Outcome::Claimed`].
    Claim {
        /// The most reports to claim.
        limit: usize,
    },
    /// Renew the lease of every claim this replica holds: [`Outcome::Rows`].
    Heartbeat,
    /// Return to the queue every claim whose lease has run out (its
    /// replica stopped renewing it): [`Outcome::Rows`].
    Reap,
    /// Release every claim this replica holds (at its stop), for the
    /// others to take at once: [`Outcome::Rows`].
    Release,
    /// Put a failed report back in the queue (an operator's re-drive, once
    /// the analyzer is fixed): attempts start again from zero.
    /// [`Outcome::Changed`], or [`Outcome::Unchanged`] when there is no
    /// such report or it is not `failed`.
    Redrive {
        /// Which report.
        report_id: String,
        /// Who asked, for the audit trail.
        who: Who,
    },
    /// Append a row to the audit trail (a read, a start or a stop…: what
    /// changes nothing else): [`Outcome::Changed`].
    Audit(AuditEvent),
    /// Store a periodic summary, unless one was stored for a period that
    /// ends after `period_start` (another replica's): [`Outcome::Changed`]
    /// when stored, [`Outcome::Unchanged`] when not.
    Summary {
        /// Its period, ms since the epoch.
        period_start: i64,
        /// End of the period (exclusive).
        period_end: i64,
        /// The summary, as JSON.
        body: String,
    },
}

/// A report's result computed before its insert (at intake, when no
/// analyzer is configured): what [`Op::Complete`] would store for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scored {
    /// The result, as JSON.
    pub result: String,
    /// Whether it raised an alert.
    pub alert: bool,
    /// The alerts raised, as metric labels (instrument, rule): counted
    /// once the report is stored.
    pub alert_labels: Vec<(&'static str, &'static str)>,
}

/// How a command went, once committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new report, now durable.
    Accepted,
    /// The same report again.
    Duplicate,
    /// Another report with the same id.
    Conflict,
    /// A new report, refused: the backlog is at its limit.
    BacklogFull,
    /// An update that changed a row.
    Changed,
    /// An update that found nothing to change (already processed, or no
    /// longer claimed by this replica).
    Unchanged,
    /// The reports claimed.
    Claimed(Vec<Claimed>),
    /// How many rows an update changed.
    Rows(u64),
    /// Each item's outcome, in order ([`Op::InsertMany`]).
    Many(Vec<Outcome>),
}

/// Who asked for a change or a read, as the audit trail records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    /// The caller's name (its token's), or what acted (`pipeline`, `cli`).
    pub caller: Option<String>,
    /// The peer's address, or the replica that acted.
    pub remote: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
}

/// One row of the audit trail: what happened, to which report, for whom,
/// with what outcome. Never an answer or a patient id (the report id and
/// the body's hash tie a row to its record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: `report.received`, `report.read`, `attempt` …
    pub action: &'static str,
    /// For whom.
    pub who: Who,
    /// Which report, if one.
    pub report_id: Option<String>,
    /// SHA-256 of what was sent, if anything.
    pub body_sha256: Option<String>,
    /// How it ended (an HTTP status, `processed`, `retry` …).
    pub outcome: Option<String>,
    /// More, as a JSON object (no patient data).
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with only its action and who.
    pub fn new(action: &'static str, who: Who) -> AuditEvent {
        AuditEvent {
            action,
            who,
            report_id: None,
            body_sha256: None,
            outcome: None,
            detail: None,
        }
    }
}

/// One row of the audit trail as a backend writes it, borrowed from the
/// command it records (no copies per report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuditEntry<'a> {
    pub(crate) action: &'static str,
    pub(crate) caller: Option<&'a str>,
    pub(crate) remote: Option<&'a str>,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) report_id: Option<&'a str>,
    pub(crate) body_sha256: Option<&'a str>,
    pub(crate) outcome: Option<&'a str>,
    pub(crate) detail: Option<Cow<'a, str>>,
}

impl<'a> AuditEntry<'a> {
    /// A row of `action` for `who`, the rest empty.
    fn by(action: &'static str, who: &'a Who) -> AuditEntry<'a> {
        AuditEntry {
            action,
            caller: who.caller.as_deref(),
            remote: who.remote.as_deref(),
            request_id: who.request_id.as_deref(),
            report_id: None,
            body_sha256: None,
            outcome: None,
            detail: None,
        }
    }
}

impl AuditEvent {
    /// The row that records it.
    pub(crate) fn row(&self) -> AuditEntry<'_> {
        AuditEntry {
            report_id: self.report_id.as_deref(),
            body_sha256: self.body_sha256.as_deref(),
            outcome: self.outcome.as_deref(),
            detail: self.detail.as_deref().map(Cow::Borrowed),
            ..AuditEntry::by(self.action, &self.who)
        }
    }
}

/// The audit rows a committed command adds, in the same transaction
/// (apart from [`Op::Audit`] itself): what the backends write. A batch
/// whose audit rows cannot be written is not committed at all, on both
/// backends: no change is stored without its rows.
pub(crate) fn audit_rows<'a>(
    op: &'a Op,
    outcome: &Outcome,
    replica: &'a str,
) -> Vec<AuditEntry<'a>> {
    // What the pipeline did, on `replica`.
    let event = |action, report_id: &'a str, outcome: &'a str, detail: Option<String>| AuditEntry {
        action,
        caller: Some("pipeline"),
        remote: Some(replica),
        request_id: None,
        report_id: Some(report_id),
        body_sha256: None,
        outcome: Some(outcome),
        detail: detail.map(Cow::Owned),
    };
    // A report processed: its attempt, and the alert it raised.
    let processed_rows = |report_id: &'a str, attempts: u32, alert: bool| {
        // `{"attempts":N}`, as `json!` writes it.
        let mut rows = vec![event(
            "attempt",
            report_id,
            "processed",
            Some(format!("{{\"attempts\":{attempts}}}")),
        )];
        if alert {
            rows.push(event("alert.raised", report_id, "alert", None));
        }
        rows
    };
    match (op, outcome) {
        (
            Op::Insert {
                report,
                who,
                body_sha256,
                scored,
                ..
            },
            outcome,
        ) => {
            let status = match outcome {
                Outcome::Accepted => "202 accepted",
                Outcome::Duplicate => "200 duplicate",
                Outcome::Conflict => "409 conflict",
                Outcome::BacklogFull => "429 backlog full",
                _ => "500",
            };
            let mut rows = vec![AuditEntry {
                report_id: Some(&report.report_id),
                body_sha256: Some(body_sha256),
                outcome: Some(status),
                ..AuditEntry::by("report.received", who)
            }];
            if let (Some(scored), Outcome::Accepted) = (scored, outcome) {
                // Processed in this transaction: the rows its processing
                // writes (as `Op::Complete`'s), first attempt.
                rows.extend(processed_rows(&report.report_id, 1, scored.alert));
            }
            rows
        }
        (
            Op::Complete {
                report_id,
                alert,
                attempts,
                ..
            },
            outcome,
        ) => {
            if *outcome != Outcome::Changed {
                return vec![event(
                    "attempt",
                    report_id,
                    "discarded",
                    Some(
                        serde_json::json!({ "attempts": attempts, "why": "no longer claimed by this replica, or settled" })
                            .to_string(),
                    ),
                )];
            }
            processed_rows(report_id, *attempts, *alert)
        }
        (
            Op::Retry {
                report_id,
                attempts,
                error,
                ..
            }
            | Op::Fail {
                report_id,
                attempts,
                error,
            },
            outcome,
        ) => vec![event(
            "attempt",
            report_id,
            match (op, outcome) {
                (_, outcome) if *outcome != Outcome::Changed => "discarded",
                (Op::Retry { .. }, _) => "retry",
                _ => "failed",
            },
            Some(serde_json::json!({ "attempts": attempts, "error": error }).to_string()),
        )],
        (Op::Redrive { report_id, who }, outcome) => vec![AuditEntry {
            report_id: Some(report_id),
            outcome: Some(if *outcome == Outcome::Changed {
                "queued"
            } else {
                "refused: not failed"
            }),
            ..AuditEntry::by("report.redriven", who)
        }],
        (Op::Audit(event), _) => vec![event.row()],
        (Op::InsertMany { items }, Outcome::Many(outcomes)) => items
            .iter()
            .zip(outcomes)
            .flat_map(|(item, outcome)| audit_rows(item, outcome, replica))
            .collect(),
        _ => Vec::new(),
    }
}

/// A report claimed for processing, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The report's fields.
    pub report_id: String,
    /// Its patient.
    pub patient_id: String,
    /// Its site.
    pub site_id: String,
    /// Its instrument.
    pub instrument: String,
    /// When it was submitted (RFC 3339, as sent).
    pub submitted_at: String,
    /// Its answers, as stored (JSON text).
    pub answers: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Why a command has no outcome (8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not stored: its transaction failed before its commit, or its commit
    /// was refused for want of room, and was rolled back.
    NotStored(String),
    /// Its commit or the flush after it failed: it may be stored or not.
    /// Every command is idempotent (an insert by `report_id` and content,
    /// an update conditional on `queued`), so sending it again is safe.
    Unknown(String),
}

impl Failure {
    /// The error, without the kind.
    pub fn error(&self) -> &str {
        match self {
            Failure::NotStored(err) | Failure::Unknown(err) => err,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotStored(err) => write!(f, "not stored: {err}"),
            Failure::Unknown(err) => write!(f, "outcome unknown: {err}"),
        }
    }
}

/// Called with the outcome once the command's transaction has committed
/// (or failed).
pub type Reply = Box<dyn FnOnce(Result<Outcome, Failure>) + Send + 'static>;

struct Command {
    op: Op,
    reply: Reply,
}

/// Patients known to be enrolled at their site, so that a report from one
/// of them skips the enrollment statement: with SQLite an index lookup
/// (about 2 µs of the writer's time per report, BENCHMARKS.md step 9),
/// with PostgreSQL a round trip.
///
/// A pair enters only once a transaction that enrolled it, or found it
/// enrolled, has committed; a rolled-back batch's pairs, and those of a
/// commit whose outcome is unknown, are forgotten ([`Self::ended`]).
/// Nothing deletes an enrollment row, so a pair once known stays true.
/// Each pair is kept as 128 bits from two SipHash keys drawn at random per
/// process, not as its ids: no patient id is held here, and a pair not
/// enrolled is taken for one that is with a probability of about one in
/// 2^112 per lookup at the full set. At most [`Self::MOST`] pairs (about
/// 2 MiB); when full, the set starts again, which only costs lookups.
#[derive(Default)]
pub(crate) struct Enrolled {
    keys: std::collections::HashSet<u128>,
    pending: Vec<u128>,
    /// Two hashers, each with keys of its own drawn at random.
    hashers: (std::hash::RandomState, std::hash::RandomState),
}

impl Enrolled {
    /// The most pairs kept.
    pub(crate) const MOST: usize = 1 << 16;

    /// The pair's key.
    pub(crate) fn key(&self, site_id: &str, patient_id: &str) -> u128 {
        use std::hash::BuildHasher;
        let pair = (site_id, patient_id);
        let high = self.hashers.0.hash_one(pair);
        let low = self.hashers.1.hash_one(pair);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Whether the pair is enrolled for sure (committed).
    pub(crate) fn known(&self, key: u128) -> bool {
        self.keys.contains(&key)
    }

    /// The pair is enrolled by the transaction under way, or was found so.
    pub(crate) fn note(&mut self, key: u128) {
        self.pending.push(key);
    }

    /// The transaction under way has ended: its pairs are known when it
    /// `committed`, and forgotten when it was rolled back or its commit's
    /// outcome is unknown.
    pub(crate) fn ended(&mut self, committed: bool) {
        if !committed {
            self.pending.clear();
        }
        for key in self.pending.drain(..) {
            if self.keys.len() >= Self::MOST {
                self.keys.clear();
            }
            self.keys.insert(key);
        }
    }
}

/// The store's live state, kept in memory and shared with the rest of the
/// sidecar: counters, the backlog, metrics, and the dispatcher's wake-up.
pub struct Live {
    /// Distinct patients per site, among processed reports.
    pub enrollment: Counters<String>,
    /// Reports queued (accepted, not yet processed or failed).
    pub backlog: AtomicI64,
    /// Metrics.
    pub metrics: Metrics,
    /// Wakes the dispatcher when new work is committed.
    pub work_added: Sender<()>,
    /// Whether the store can commit (`/readyz`, `/healthz`, the
    /// dispatcher's backoff).
    pub health: Health,
}

/// Whether the store can commit: the outcome of its last commit (7).
/// Written by the `store` thread (each commit) and `store-sync` (a failed
/// flush); read by anyone.
#[derive(Debug, Default)]
pub struct Health {
    /// The last commit's error; `None` when it succeeded (or none was made).
    failure: Mutex<Option<String>>,
    /// How many times a commit succeeded after one that failed: a change
    /// tells the dispatcher that the store has recovered.
    recoveries: AtomicU64,
}

impl Health {
    /// Why the last commit failed, or `None` when it succeeded.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts the recoveries (a commit that succeeded after a failed one).
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::SeqCst)
    }

    /// A commit succeeded; `true` when the last one had failed.
    pub(crate) fn committed(&self) -> bool {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let recovered = failure.take().is_some();
        if recovered {
            self.recoveries.fetch_add(1, Ordering::SeqCst);
        }
        recovered
    }

    /// A commit (or the flush of one) failed with `err`; `true` when the
    /// last one had succeeded.
    pub(crate) fn failed(&self, err: &str) -> bool {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.replace(err.to_string()).is_none()
    }
}

/// A log line once per interval, with the count of the occurrences it
/// stands for, rather than one line per occurrence: a fault that repeats
/// (a full disk) must not flood the log.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// One more occurrence at `now`: `Some(n)` when a line is due, `n`
    /// occurrences (this one included) since the last line; `None` when it
    /// is held back.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.held += 1;
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }

    /// The fault is over: the occurrences held back since the last line
    /// (to be told once), and the next one is logged at once.
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.held)
    }
}

/// How often a repeated store failure is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A cheap handle to send commands to the store.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Command>,
}

/// Why a store command got no reply.
#[derive(Debug)]
pub enum CallError {
    /// The store did not take or reply to the command before the deadline
    /// (busy, or stopped).
    Unavailable(&'static str),
    /// The transaction failed (e.g. disk full).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            CallError::Failed(err) => write!(f, "store failed: {err}"),
        }
    }
}

impl std::error::Error for CallError {}

impl StoreHandle {
    /// Sends `op` and waits (until `deadline`) for it to be committed.
    ///
    /// # Errors
    ///
    /// [`CallError`].
    pub fn call(&self, op: Op, deadline: Instant) -> Result<Outcome, CallError> {
        // The library's one-shot slot (a mutex and a condition variable)
        // rather than a channel: the wait is a commit (hundreds of
        // microseconds, an fsync), and a channel's receive spins and yields
        // first, which only burns CPU here. A command dropped without a reply
        // (the store stopped) drops the completer: `NotRun`.
        let (completer, reply) = JobHandle::pair();
        self.send(
            op,
            Box::new(move |outcome| completer.complete(outcome)),
            deadline,
        )?;
        match reply.join_deadline(deadline) {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(CallError::Failed(err.to_string())),
            Err(JobError::Timeout) => Err(CallError::Unavailable("no reply in time")),
            Err(_) => Err(CallError::Unavailable("stopped")),
        }
    }

    /// Appends `event` to the audit trail without waiting for its commit
    /// (for what must stay cheap: a refused request, a signal). Waits at
    /// most `wait` for room; a row not taken or not stored is logged,
    /// never dropped in silence.
    /// `may_wait` is called first when there is no room at once.
    pub fn audit_later(&self, event: AuditEvent, wait: Duration, may_wait: &dyn Fn()) {
        let action = event.action;
        let reply: Reply = Box::new(move |outcome| {
            if let Err(failure) = outcome {
                log::warn!("audit row {action} not recorded: {failure}");
            }
        });
        if let Err(err) =
            self.send_or_wait(Op::Audit(event), reply, Instant::now() + wait, may_wait)
        {
            log::warn!("audit row {action} not recorded: {err}");
        }
    }

    /// Queues `op` (waiting until `deadline` for room) without waiting for
    /// its commit; `reply` gets the outcome once committed.
    ///
    /// # Errors
    ///
    /// [`CallError::Unavailable`] when the store did not take it in time;
    /// `reply` is then dropped uncalled.
    pub fn send(&self, op: Op, reply: Reply, deadline: Instant) -> Result<(), CallError> {
        self.send_or_wait(op, reply, deadline, &|| {})
    }

    /// [`StoreHandle::send`], calling `may_wait` before it waits for room
    /// (when the queue is full): an HTTP handler lets another thread take
    /// its place.
    ///
    /// # Errors
    ///
    /// As [`StoreHandle::send`].
    pub fn send_or_wait(
        &self,
        op: Op,
        reply: Reply,
        deadline: Instant,
        may_wait: &dyn Fn(),
    ) -> Result<(), CallError> {
        use crossbeam_channel::{SendTimeoutError, TrySendError};
        let command = match self.tx.try_send(Command { op, reply }) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(CallError::Unavailable("stopped")),
            Err(TrySendError::Full(command)) => command,
        };
        may_wait();
        self.tx
            .send_deadline(command, deadline)
            .map_err(|e| match e {
                SendTimeoutError::Timeout(_) => CallError::Unavailable("busy"),
                SendTimeoutError::Disconnected(_) => CallError::Unavailable("stopped"),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_known_enrollments_stay_bounded_and_keep_the_latest() {
        let mut known = Enrolled::default();
        let first = known.key("S", "P-0");
        known.note(first);
        known.ended(true);
        assert!(known.known(first));
        // The same ids at another site are another pair.
        assert!(!known.known(known.key("S2", "P-0")));
        assert!(!known.known(known.key("SP", "-0")));
        let mut last = first;
        for n in 1..=Enrolled::MOST {
            last = known.key("S", &format!("P-{n}"));
            known.note(last);
        }
        known.ended(true);
        assert!(known.keys.len() <= Enrolled::MOST, "{}", known.keys.len());
        assert!(known.known(last));
        // Full, it started again: the first pair is no longer known.
        assert!(!known.known(first));
    }

    #[test]
    fn a_throttle_logs_once_per_interval_with_the_count() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.hit(t0), Some(1));
        for ms in 1..1000 {
            assert_eq!(throttle.hit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.hit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(throttle.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.reset(), 1);
        assert_eq!(throttle.hit(t0 + Duration::from_secs(12)), Some(1));
    }

    #[test]
    fn a_processed_report_s_rows_name_the_pipeline_and_its_attempts() {
        let op = Op::Complete {
            report_id: "r-1".into(),
            site_id: "S".into(),
            patient_id: "p".into(),
            result: "{}".into(),
            alert: true,
            attempts: 12,
        };
        let rows = audit_rows(&op, &Outcome::Changed, "replica-a");
        let attempt = AuditEntry {
            action: "attempt",
            caller: Some("pipeline"),
            remote: Some("replica-a"),
            request_id: None,
            report_id: Some("r-1"),
            body_sha256: None,
            outcome: Some("processed"),
            detail: Some(serde_json::json!({ "attempts": 12 }).to_string().into()),
        };
        let alert = AuditEntry {
            action: "alert.raised",
            outcome: Some("alert"),
            detail: None,
            ..attempt.clone()
        };
        assert_eq!(rows, [attempt, alert]);
        let discarded = audit_rows(&op, &Outcome::Unchanged, "replica-a");
        assert_eq!(discarded.len(), 1);
        assert_eq!(discarded[0].outcome, Some("discarded"));
    }

    #[test]
    fn health_tells_the_last_commit_and_counts_recoveries() {
        let health = Health::default();
        assert_eq!(health.failure(), None);
        assert!(!health.committed());
        assert!(health.failed("database or disk is full"));
        assert!(!health.failed("database or disk is full"));
        assert_eq!(
            health.failure().as_deref(),
            Some("database or disk is full")
        );
        assert_eq!(health.recoveries(), 0);
        assert!(health.committed());
        assert_eq!((health.failure(), health.recoveries()), (None, 1));
    }

    #[test]
    fn a_call_whose_command_is_dropped_without_a_reply_is_told_the_store_stopped() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = StoreHandle { tx };
        let dropper = std::thread::spawn(move || drop(rx.recv()));
        let op = Op::Retry {
            report_id: "r".into(),
            attempts: 1,
            error: "e".into(),
            next_at_ms: 0,
        };
        let got = handle.call(op, Instant::now() + Duration::from_secs(30));
        assert!(
            matches!(got, Err(CallError::Unavailable("stopped"))),
            "{got:?}"
        );
        dropper.join().unwrap();
    }
}
