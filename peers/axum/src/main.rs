//! The load bench's peer (issue 14): durable report intake written the way
//! a Rust user would write it on the async stack — axum + tokio, one
//! writer thread owning a rusqlite connection — so that `quiesce serve`
//! can be measured against it by the same load generator in the same run.
//!
//! ```text
//! quiesce-peer-axum serve --listen 127.0.0.1:0 --data-dir DIR
//! ```
//!
//! The same command line as `quiesce serve` (only these two flags), so the
//! bench starts both alike: it writes the address it listens on to
//! `DIR/listen.addr` once it accepts connections, and exits on SIGTERM
//! (or SIGINT) after the requests in flight are answered.
//!
//! What it does, and what it does not:
//! - `POST /v1/reports` with the README's JSON shape (`report_id`,
//!   `patient_id`, `site_id`, `instrument`, `submitted_at`, `answers`):
//!   deserialised by serde into a struct (unknown fields refused), then
//!   checked roughly as quiesce does (non-empty ids of at most 128
//!   characters, a `submitted_at` shaped like an RFC 3339 UTC time, 1 to 64
//!   answers, each an integer 0..=10). It is NOT quiesce's strict parser
//!   (no duplicate-key refusal, no date arithmetic, no instrument catalogue,
//!   no FHIR): it is the validation an ordinary service would have.
//! - The durability contract is quiesce's: `202` only after the row is
//!   committed in SQLite (WAL, `synchronous = FULL`: the commit fsyncs the
//!   WAL). One writer thread owns the connection; it takes whatever reports
//!   are waiting and commits them in one transaction (group commit), then
//!   answers each handler through a oneshot channel.
//! - The same `reports` table shape: `report_id` PRIMARY KEY, the fields,
//!   the answers as JSON text, `status` `queued`, a received time. A report
//!   id already stored with the same content is a duplicate (`200`), with
//!   other content a conflict (`409`).
//! - No processing: nothing ever reads the queue. The bench compares
//!   quiesce's CPU per report, processing included, with this peer's CPU
//!   for intake alone (the issue's goal).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use tokio::sync::oneshot;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    report_id: String,
    patient_id: String,
    site_id: String,
    instrument: String,
    submitted_at: String,
    answers: BTreeMap<String, i64>,
}

impl Report {
    fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("report_id", &self.report_id),
            ("patient_id", &self.patient_id),
            ("site_id", &self.site_id),
            ("instrument", &self.instrument),
        ] {
            if value.is_empty() || value.chars().count() > 128 {
                return Err(format!("{name}: 1 to 128 characters"));
            }
        }
        let t = self.submitted_at.as_bytes();
        let shaped = t.len() == 20
            && t[4] == b'-'
            && t[7] == b'-'
            && t[10] == b'T'
            && t[13] == b':'
            && t[16] == b':'
            && t[19] == b'Z'
            && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
                .iter()
                .all(|&i| t[i].is_ascii_digit());
        if !shaped {
            return Err("submitted_at: YYYY-MM-DDTHH:MM:SSZ".into());
        }
        if self.answers.is_empty() || self.answers.len() > 64 {
            return Err("answers: 1 to 64".into());
        }
        if let Some((item, _)) = self.answers.iter().find(|(_, v)| !(0..=10).contains(*v)) {
            return Err(format!("answers.{item}: 0 to 10"));
        }
        Ok(())
    }
}

/// What the writer answers for one report.
enum Stored {
    Created,
    Duplicate,
    Conflict,
    Failed,
}

struct Job {
    report: Report,
    answers: String,
    reply: oneshot::Sender<Stored>,
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS reports (
            report_id TEXT PRIMARY KEY,
            patient_id TEXT NOT NULL,
            site_id TEXT NOT NULL,
            instrument TEXT NOT NULL,
            submitted_at TEXT NOT NULL,
            answers TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'queued',
            received_at INTEGER NOT NULL
        )",
    )?;
    Ok(conn)
}

/// The writer thread: takes every job waiting, stores them in one
/// transaction, commits (the WAL fsynced), then answers each.
fn writer(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::new();
    let mut results: Vec<Stored> = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        batch.extend(jobs.try_iter());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO reports (report_id, patient_id, site_id, instrument, \
                     submitted_at, answers, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (report_id) DO NOTHING",
                )?;
                let mut existing = tx.prepare_cached(
                    "SELECT patient_id, site_id, instrument, submitted_at, answers \
                     FROM reports WHERE report_id = ?1",
                )?;
                for job in &batch {
                    let r = &job.report;
                    let n = insert.execute(params![
                        r.report_id,
                        r.patient_id,
                        r.site_id,
                        r.instrument,
                        r.submitted_at,
                        job.answers,
                        now
                    ])?;
                    if n == 1 {
                        results.push(Stored::Created);
                        continue;
                    }
                    let same = existing
                        .query_row([&r.report_id], |row| {
                            Ok(row.get::<_, String>(0)? == r.patient_id
                                && row.get::<_, String>(1)? == r.site_id
                                && row.get::<_, String>(2)? == r.instrument
                                && row.get::<_, String>(3)? == r.submitted_at
                                && row.get::<_, String>(4)? == job.answers)
                        })
                        .optional()?;
                    results.push(if same == Some(true) {
                        Stored::Duplicate
                    } else {
                        Stored::Conflict
                    });
                }
            }
            tx.commit()
        })();
        if let Err(e) = outcome {
            eprintln!("quiesce-peer-axum: commit failed: {e}");
            results.clear();
        }
        for (i, job) in batch.drain(..).enumerate() {
            let answer = results
                .get_mut(i)
                .map_or(Stored::Failed, |s| std::mem::replace(s, Stored::Failed));
            let _ = job.reply.send(answer);
        }
        results.clear();
    }
}

type Jobs = mpsc::Sender<Job>;

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn post_report(State(jobs): State<Jobs>, Json(report): Json<Report>) -> Response {
    if let Err(why) = report.check() {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "error": why }).to_string(),
        );
    }
    let answers = serde_json::to_string(&report.answers).unwrap_or_default();
    let id = serde_json::to_string(&report.report_id).unwrap_or_default();
    let (reply, answer) = oneshot::channel();
    if jobs
        .send(Job {
            report,
            answers,
            reply,
        })
        .is_err()
    {
        return json(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    match answer.await {
        Ok(Stored::Created) => json(
            StatusCode::ACCEPTED,
            format!(r#"{{"report_id":{id},"status":"queued"}}"#),
        ),
        Ok(Stored::Duplicate) => json(
            StatusCode::OK,
            format!(r#"{{"report_id":{id},"status":"duplicate"}}"#),
        ),
        Ok(Stored::Conflict) => json(
            StatusCode::CONFLICT,
            format!(r#"{{"report_id":{id},"error":"another report has this id"}}"#),
        ),
        Ok(Stored::Failed) | Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, "{}".into()),
    }
}

fn usage() -> ! {
    eprintln!("usage: quiesce-peer-axum serve --listen ADDR --data-dir DIR");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut data_dir) = (None, None);
    if args.next().as_deref() != Some("serve") {
        usage();
    }
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => listen = args.next(),
            "--data-dir" => data_dir = args.next().map(PathBuf::from),
            _ => usage(),
        }
    }
    let (Some(listen), Some(data_dir)) = (listen, data_dir) else {
        usage()
    };
    std::fs::create_dir_all(&data_dir).expect("create the data directory");
    let conn = open(&data_dir.join("peer.db")).expect("open the database");
    let (jobs, queue) = mpsc::channel();
    let writer = thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer(conn, queue))
        .expect("start the writer");

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let app = Router::new()
            .route("/v1/reports", post(post_report))
            .with_state(jobs);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind the listen address");
        let addr = listener.local_addr().expect("the listen address");
        let tmp = data_dir.join("listen.addr.tmp");
        std::fs::write(&tmp, addr.to_string()).expect("write listen.addr");
        std::fs::rename(&tmp, data_dir.join("listen.addr")).expect("write listen.addr");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("a SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await
            .expect("serve");
    });
    // The router (and its senders) are dropped: the writer finishes what
    // is queued and returns.
    drop(runtime);
    writer.join().expect("the writer thread");
}
