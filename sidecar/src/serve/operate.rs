//! What an operator does with the reports, over HTTP (`GET /v1/reports`,
//! `POST /v1/reports/{id}/retry`) and from the command line without a
//! server (`quiesce reports list|retry`): find the reports in a state (the
//! failed ones, typically) a page at a time, and put a failed report back
//! in the queue once what made it fail is fixed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::report::rfc3339_ms;
use super::store::{self, Backend, ListFilter, ListedReport, Op, Outcome, ReaderFactory};

/// The most reports on one page, and the default.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// How long a re-drive may wait for the store.
pub const STORE_WAIT: Duration = Duration::from_secs(10);

/// A query parameter that is not acceptable: the parameter, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadParam {
    /// Which parameter.
    pub field: String,
    /// Why.
    pub why: String,
}

fn bad(field: &str, why: impl Into<String>) -> BadParam {
    BadParam {
        field: field.to_string(),
        why: why.into(),
    }
}

/// The filter the parameters of `GET /v1/reports` (or the CLI's flags)
/// describe: `status`, `site`, `since` (RFC 3339), `limit` (1 to
/// [`MAX_PAGE`]), `after` (the last id of the previous page).
///
/// # Errors
///
/// An unknown or repeated parameter, or a value out of its range.
pub fn filter(params: &[(String, String)]) -> Result<ListFilter, BadParam> {
    let mut filter = ListFilter {
        limit: DEFAULT_PAGE,
        ..ListFilter::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        if seen.contains(&name.as_str()) {
            return Err(bad(name, "given twice"));
        }
        seen.push(name);
        match name.as_str() {
            "status" => {
                if !matches!(value.as_str(), "queued" | "processed" | "failed") {
                    return Err(bad(name, "must be queued, processed or failed"));
                }
                filter.status = Some(value.clone());
            }
            // Stored upper-cased (see `Report::parse`).
            "site" => filter.site = Some(value.to_uppercase()),
            "since" => {
                let at = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
                    bad(name, "must be an RFC 3339 time, e.g. 2026-11-28T00:00:00Z")
                })?;
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                filter.since_ms = Some(i64::try_from(ms).map_err(|_| bad(name, "out of range"))?);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(name, format!("must be 1 to {MAX_PAGE}")))?;
            }
            "after" => filter.after = Some(value.clone()),
            _ => {
                return Err(bad(
                    name,
                    "unknown parameter (status, site, since, limit, after)",
                ));
            }
        }
    }
    Ok(filter)
}

/// One listed report as JSON.
pub fn listed(report: &ListedReport) -> Value {
    let mut body = json!({
        "report_id": report.report_id,
        "status": report.status,
        "site_id": report.site_id,
        "instrument": report.instrument,
        "received_at": rfc3339_ms(report.received_at),
        "attempts": report.attempts,
    });
    if let Some(err) = &report.last_error {
        body["last_error"] = json!(err);
    }
    body
}

/// A page as JSON: the reports, and `next` (the `after` of the next page)
/// when the page is full.
pub fn page(reports: &[ListedReport], filter: &ListFilter) -> Value {
    let next = (reports.len() == filter.limit)
        .then(|| reports.last().map(|r| r.report_id.clone()))
        .flatten();
    json!({
        "reports": reports.iter().map(listed).collect::<Vec<_>>(),
        "next": next,
    })
}

/// Options of `quiesce reports`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory of the SQLite store (as `serve --data-dir`).
    #[arg(long, env = "QUIESCE_DATA_DIR", default_value = "./quiesce-data")]
    pub data_dir: PathBuf,

    /// The PostgreSQL store (as `serve --database-url`) instead of SQLite.
    #[arg(long, env = "QUIESCE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: ReportsCommand,
}

/// What to do with the reports.
#[derive(Debug, clap::Subcommand)]
pub enum ReportsCommand {
    /// Print a page of reports as JSON lines (no patient ids), in id
    /// order; when the page is full, the `--after` of the next page goes
    /// to stderr.
    List {
        /// Only reports with this status: queued, processed or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only reports of this site.
        #[arg(long)]
        site: Option<String>,
        /// Only reports received at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_PAGE)]
        limit: usize,
        /// Only reports whose id sorts after this one (the previous page's
        /// last).
        #[arg(long)]
        after: Option<String>,
    },
    /// Put failed reports back in the queue (attempts from zero). With
    /// SQLite only while no server runs on the data directory (use `POST
    /// /v1/reports/{id}/retry` on a running one); with PostgreSQL at any
    /// time.
    Retry {
        /// The reports' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Options of `quiesce audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The data directory of the SQLite store (as `serve --data-dir`).
    #[arg(long, env = "QUIESCE_DATA_DIR", default_value = "./quiesce-data")]
    pub data_dir: PathBuf,

    /// The PostgreSQL store (as `serve --database-url`) instead of SQLite.
    #[arg(long, env = "QUIESCE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Rows at or after this time (RFC 3339).
    #[arg(long, value_parser = rfc3339_arg)]
    pub since: Option<i64>,

    /// Rows before this time (RFC 3339).
    #[arg(long, value_parser = rfc3339_arg)]
    pub until: Option<i64>,

    /// Rows about this report.
    #[arg(long)]
    pub report_id: Option<String>,

    /// Rows of this caller (a token's name, `pipeline`, `cli (uid N)` …).
    #[arg(long)]
    pub caller: Option<String>,
}

/// An RFC 3339 time as ms since the epoch.
fn rfc3339_arg(s: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| "must be an RFC 3339 time, e.g. 2026-11-28T00:00:00Z".to_string())?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".to_string())
}

/// Runs `quiesce audit`: the audit trail as JSON lines on stdout, oldest
/// first, read from the store without a server.
///
/// # Errors
///
/// A store that cannot be opened or read.
pub fn run_audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let backend = match &args.database_url {
        Some(url) => Backend::Postgres(url.clone()),
        None => Backend::Sqlite(args.data_dir.join("quiesce.db")),
    };
    if let Backend::Sqlite(path) = &backend
        && !path.exists()
    {
        bail!("no database in {}", args.data_dir.display());
    }
    let mut reader = reader(&backend)?;
    let mut filter = store::AuditFilter {
        since_ms: args.since,
        until_ms: args.until,
        report_id: args.report_id,
        caller: args.caller,
        after_id: 0,
        limit: 1000,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let rows = reader.audit(&filter).map_err(anyhow::Error::msg)?;
        for row in &rows {
            let line = json!({
                "id": row.id,
                "at": rfc3339_ms(row.at),
                "action": row.action,
                "caller": row.caller,
                "remote": row.remote,
                "request_id": row.request_id,
                "report_id": row.report_id,
                "body_sha256": row.body_sha256,
                "outcome": row.outcome,
                "detail": row.detail.as_deref().map(|d| serde_json::from_str::<Value>(d).unwrap_or(Value::Null)),
            });
            writeln!(out, "{line}").context("writing to stdout")?;
        }
        match rows.last() {
            Some(last) if rows.len() == filter.limit => filter.after_id = last.id,
            _ => break,
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// A reader of `backend`, for the command line.
fn reader(backend: &Backend) -> anyhow::Result<store::Reader> {
    let factory = match backend {
        Backend::Sqlite(path) => ReaderFactory::Sqlite(path.clone()),
        Backend::Postgres(url) => {
            ReaderFactory::Postgres(store::postgres_readers(url).map_err(anyhow::Error::msg)?)
        }
    };
    factory.reader().context("cannot open the store")
}

/// Runs `quiesce reports`: exit 0 when everything asked was done, 1 when
/// a report could not be re-driven.
///
/// # Errors
///
/// Bad options, or a store that cannot be opened.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = match &args.database_url {
        Some(url) => Backend::Postgres(url.clone()),
        None => Backend::Sqlite(args.data_dir.join("quiesce.db")),
    };
    if let Backend::Sqlite(path) = &backend
        && !path.exists()
    {
        bail!(
            "no database in {} (nothing to list or retry)",
            args.data_dir.display()
        );
    }
    match args.command {
        ReportsCommand::List {
            status,
            site,
            since,
            limit,
            after,
        } => {
            let params: Vec<(String, String)> = [
                ("status", status),
                ("site", site),
                ("since", since),
                ("limit", Some(limit.to_string())),
                ("after", after),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
            let filter =
                filter(&params).map_err(|bad| anyhow::anyhow!("--{}: {}", bad.field, bad.why))?;
            let mut reader = reader(&backend)?;
            let reports = reader.list(&filter).map_err(anyhow::Error::msg)?;
            for report in &reports {
                println!("{}", listed(report));
            }
            if let Some(next) = page(&reports, &filter)["next"].as_str() {
                eprintln!("more: --after {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ReportsCommand::Retry { ids } => {
            // With SQLite, no server may be running: its backlog count
            // would not know of these reports.
            let _lock = match &backend {
                Backend::Sqlite(_) => Some(
                    super::lock_data_dir(&args.data_dir)
                        .context("use POST /v1/reports/{id}/retry on the running server instead")?,
                ),
                Backend::Postgres(_) => None,
            };
            let ops = ids
                .iter()
                .map(|id| Op::Redrive {
                    report_id: id.clone(),
                    who: store::Who {
                        caller: Some(format!("cli (uid {})", rustix::process::getuid().as_raw())),
                        remote: None,
                        request_id: None,
                    },
                })
                .collect();
            let outcomes = store::apply_offline(&backend, ops).map_err(anyhow::Error::msg)?;
            let mut all = true;
            let mut reader = reader(&backend)?;
            for (id, outcome) in ids.iter().zip(outcomes) {
                match outcome {
                    Ok(Outcome::Changed) => println!("{id}: queued again"),
                    Ok(_) => {
                        all = false;
                        match reader.report(id).map_err(anyhow::Error::msg)? {
                            None => println!("{id}: no such report"),
                            Some(r) => println!("{id}: not failed ({}): left as it is", r.status),
                        }
                    }
                    Err(err) => {
                        all = false;
                        println!("{id}: not stored: {err}");
                    }
                }
            }
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_parameters_make_a_filter_and_bad_ones_name_themselves() {
        let f = filter(&params(&[
            ("status", "failed"),
            ("site", "site-a"),
            ("since", "2026-11-28T00:00:00Z"),
            ("limit", "2"),
            ("after", "r-9"),
        ]))
        .unwrap();
        assert_eq!(
            f,
            ListFilter {
                status: Some("failed".into()),
                site: Some("SITE-A".into()),
                since_ms: Some(1_795_824_000_000),
                after: Some("r-9".into()),
                limit: 2,
            }
        );
        assert_eq!(filter(&[]).unwrap().limit, DEFAULT_PAGE);
        for (pairs, field) in [
            (&[("status", "done")][..], "status"),
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "1001")][..], "limit"),
            (&[("since", "yesterday")][..], "since"),
            (&[("sort", "x")][..], "sort"),
            (&[("site", "a"), ("site", "b")][..], "site"),
        ] {
            assert_eq!(filter(&params(pairs)).unwrap_err().field, field);
        }
    }
}
