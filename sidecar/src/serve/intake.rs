//! The `intake` service: the HTTP API.
//!
//! | Route | Answer |
//! |-------|--------|
//! | `POST /v1/reports` | 202 accepted (durable), 200 duplicate, 409 conflict, 400 invalid (naming the field), 413 too large, 415 not JSON, 429 backlog full, 503 shutting down, not stored, or stored or not (a commit that failed midway; retrying is safe) |
//! | `GET /v1/reports/{id}` | the report's status, and its result or last error; 404 (each read recorded in the audit trail first: 503 when it cannot be) |
//! | `GET /v1/reports?status=&site=&since=&limit=&after=` | a page of reports by id (no patient ids), and `next`, the `after` of the next page; 400 naming a bad parameter |
//! | `POST /v1/reports/{id}/retry` | 202: a failed report back in the queue, attempts from zero; 409 when it is not failed; 404 |
//! | `GET /v1/enrollment` | distinct patients per site and in total |
//! | `GET /livez` | 200 while the process runs |
//! | `GET /healthz` | 200 `{"status":"healthy","checks":{...}}`; 503 `unhealthy`, each failing check saying why (the store's last commit failed, services not ready or stopping) |
//! | `GET /readyz` | 200 while serving; 503 while the store cannot commit (its last commit failed; 200 again after one succeeds) and from the first moment of shutdown |
//! | `GET /metrics` | Prometheus text format |
//!
//! With a tokens file, `/v1/*` needs a bearer token with the scope of its
//! method (`auth.rs`): 401 without one or with a wrong one, 403 without the
//! scope; the probes stay open, and `/metrics` too unless
//! `--metrics-token-required`.
//!
//! It starts last (after the store and the pipeline are up) and stops
//! first. It binds its listener when it starts, and writes the bound
//! address to `<data-dir>/listen.addr`. With `--admin-listen`, a second
//! listener serves the probes and `/metrics` only (404 for anything else:
//! never patient data), with its address in `<data-dir>/admin.addr`
//! (written before `listen.addr`); it stops after the API's.

mod clinical;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiesce::{BoxError, Readiness, Service, ServiceContext};
use serde_json::{Value, json};

use super::auth::{Auth, Caller};
use super::fhir;
use super::http::{
    Deferred, Handler, Later, Limits, RETRY_AFTER, Request, Response, Server, Tls, status_text,
};
use super::instruments;
use super::operate;
use super::report::{Report, rfc3339_ms, sha256_hex};
use super::store::{
    self, AuditEvent, CallError, Failure, Op, Outcome, Reader, ReaderFactory, StoreHandle, Who,
};

/// How long a request may wait for the store.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// The HTTP service.
pub struct Intake {
    /// Where to listen (`host:port`; port 0 picks one).
    pub listen: String,
    /// Where to write the bound address.
    pub addr_file: PathBuf,
    /// The store's readers.
    pub readers: ReaderFactory,
    /// Server limits.
    pub limits: Limits,
    /// The most reports waiting to be processed before 429.
    pub max_backlog: i64,
    /// The most reports in one batch upload.
    pub max_batch: usize,
    /// A generic total above this raises an alert (for the urgent lane).
    pub alert_total: u32,
    /// Score each report here and store it processed with its insert (no
    /// analyzer is configured: processing is scoring alone).
    pub score_at_intake: bool,
    /// Reports submitted before this are refused.
    pub min_submitted_at: time::OffsetDateTime,
    /// How long the stop may take.
    pub stop_budget: Duration,
    /// The store.
    pub store: StoreHandle,
    /// State shared with the store.
    pub shared: Arc<store::Live>,
    /// The group's readiness, for `/readyz`.
    pub readiness: Readiness,
    /// Who may call the API.
    pub auth: Arc<Auth>,
    /// TLS for the API's listener (the admin listener stays plain: it
    /// serves no patient data).
    pub tls: Option<Arc<Tls>>,
    /// Where the admin listener listens, if there is one.
    pub admin_listen: Option<String>,
    /// Where to write its bound address.
    pub admin_addr_file: PathBuf,
    /// One log line per request (`quiesce::access`).
    pub access_log: bool,
}

impl Service for Intake {
    fn name(&self) -> &str {
        "intake"
    }

    fn run(&mut self, ctx: &ServiceContext) -> Result<(), BoxError> {
        let addr = resolve(&self.listen)?;
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let admin_listener = match &self.admin_listen {
            Some(listen) => {
                let addr = resolve(listen)?;
                Some(
                    TcpListener::bind(addr)
                        .map_err(|e| format!("cannot listen on {addr} (--admin-listen): {e}"))?,
                )
            }
            None => None,
        };
        let probes = Probes {
            shared: self.shared.clone(),
            access_log: self.access_log,
            readiness: self.readiness.clone(),
            auth: self.auth.clone(),
        };
        let api = Api {
            store: self.store.clone(),
            probes: probes.clone(),
            max_backlog: self.max_backlog,
            max_batch: self.max_batch,
            alert_total: self.alert_total,
            score_at_intake: self.score_at_intake,
            min_submitted_at: self.min_submitted_at,
        };
        let readers = self.readers.clone();
        let server = Server::start(
            "http",
            listener,
            self.tls.clone(),
            self.limits.clone(),
            move || readers.reader(),
            api,
        )?;
        let bound = server.local_addr();
        let admin = match admin_listener {
            Some(listener) => {
                // Probes and scrapes: a few at once, each quick.
                let limits = Limits {
                    handlers: 4,
                    active: 4,
                    max_connections: 32,
                    ..self.limits.clone()
                };
                let admin =
                    Server::start("admin", listener, None, limits, || Ok(()), Admin { probes });
                let admin = match admin {
                    Ok(admin) => admin,
                    Err(err) => {
                        server.stop(Instant::now() + self.stop_budget);
                        return Err(err.into());
                    }
                };
                let admin_bound = admin.local_addr();
                // Before listen.addr: whoever sees that one finds this too.
                crate::atomic_file::write(
                    &self.admin_addr_file,
                    format!("{admin_bound}\n").as_bytes(),
                )
                .map_err(|e| format!("cannot write {}: {e}", self.admin_addr_file.display()))?;
                log::info!("admin listener (probes and metrics only) on http://{admin_bound}");
                Some(admin)
            }
            None => None,
        };
        crate::atomic_file::write(&self.addr_file, format!("{bound}\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.addr_file.display()))?;
        match &self.tls {
            Some(tls) if tls.mutual() => {
                log::info!("listening on https://{bound} (clients need a certificate)");
            }
            Some(_) => log::info!("listening on https://{bound}"),
            None => log::info!("listening on http://{bound}"),
        }
        if !self.auth.enabled() {
            log::warn!("no --tokens-file: anyone who can reach {bound} can read and write reports");
        }
        ctx.ready();
        let _ = ctx.done().recv();
        let deadline = Instant::now() + self.stop_budget;
        let mut stuck = server.stop(deadline);
        // After the API's: probes keep being answered (503 for /readyz)
        // while its last requests finish.
        if let Some(admin) = admin {
            stuck.extend(
                admin
                    .stop(deadline)
                    .into_iter()
                    .map(|t| format!("admin {t}")),
            );
        }
        if stuck.is_empty() {
            log::info!("intake stopped");
            Ok(())
        } else {
            Err(format!(
                "http thread(s) still busy at the stop deadline: {}",
                stuck.join(", ")
            )
            .into())
        }
    }
}

fn resolve(listen: &str) -> Result<SocketAddr, BoxError> {
    listen
        .to_socket_addrs()
        .map_err(|e| format!("invalid listen address {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen address {listen:?} resolves to nothing").into())
}

/// The intake's handler: the API, with the probes.
struct Api {
    store: StoreHandle,
    probes: Probes,
    max_backlog: i64,
    /// The most reports in one batch upload.
    max_batch: usize,
    /// A generic total above this raises an alert (for the urgent lane).
    alert_total: u32,
    /// Score each report here, stored processed with its insert.
    score_at_intake: bool,
    /// Reports submitted before this are refused.
    min_submitted_at: time::OffsetDateTime,
}

/// What both listeners serve: the probes and the metrics.
#[derive(Clone)]
struct Probes {
    shared: Arc<store::Live>,
    /// Whether each request gets an access log line.
    access_log: bool,
    readiness: Readiness,
    auth: Arc<Auth>,
}

/// The admin listener's handler: the probes and the metrics, 404 for
/// anything else.
struct Admin {
    probes: Probes,
}

impl Handler<()> for Admin {
    fn handle(
        &self,
        _state: &mut (),
        request: &Request,
        stopping: bool,
        _later: &Later<'_>,
    ) -> Option<Response> {
        let served = matches!(
            request.path.as_str(),
            "/livez" | "/healthz" | "/readyz" | "/metrics"
        );
        let response = if !served {
            error(
                404,
                "the admin listener serves /livez, /healthz, /readyz and /metrics only",
            )
        } else {
            // `/metrics` may need a token.
            match self.probes.auth.check(request) {
                Err(refused) => refused,
                Ok(_) => self.probes.route(request, stopping)?,
            }
        };
        count(&self.probes, &served_by(request, &response, None));
        Some(response)
    }

    fn refused(&self, status: u16, why: &str, head: Option<(&str, &str)>) {
        log::debug!("admin listener refused a request: {status} {why}");
        count(&self.probes, &refused_served(status, head));
    }

    fn connections(&self, open: usize) {
        self.probes
            .shared
            .metrics
            .admin_connections
            .set(open as i64);
    }
}

impl Handler<Reader> for Api {
    fn handle(
        &self,
        db: &mut Reader,
        request: &Request,
        stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response> {
        // Who calls: the token's name, for the logs and the audit trail.
        let caller = match self.probes.auth.check(request) {
            Ok(caller) => caller,
            Err(refused) => {
                count(&self.probes, &served_by(request, &refused, None));
                // In the audit trail too, without waiting for it: a
                // refusal must stay cheap for whoever sends many.
                let mut event = AuditEvent::new(
                    "auth.refused",
                    Who {
                        caller: None,
                        remote: request.peer.map(|p| p.to_string()),
                        request_id: Some(request_id(request)),
                    },
                );
                event.outcome = Some(refused.status.to_string());
                event.detail = Some(
                    json!({ "method": request.method, "path": route_of(&request.path) })
                        .to_string(),
                );
                self.store
                    .audit_later(event, Duration::from_millis(100), &|| later.may_block());
                return Some(refused);
            }
        };
        if request.method == "POST" {
            match request.path.as_str() {
                // Answered when the store has committed it (see `Posted`).
                "/v1/reports" | "/fhir/QuestionnaireResponse" => {
                    return self.post_report(request, &caller, stopping, later);
                }
                // These wait for their commit: another thread takes this
                // one's place meanwhile.
                "/v1/reports:batch" => {
                    later.may_block();
                    let response = self.post_batch(request, &caller, stopping);
                    count(&self.probes, &served_by(request, &response, Some(&caller)));
                    return Some(response);
                }
                "/fhir" => {
                    later.may_block();
                    let response = self.post_fhir_batch(request, &caller, stopping);
                    count(&self.probes, &served_by(request, &response, Some(&caller)));
                    return Some(response);
                }
                _ => {}
            }
        }
        let response = match self.probes.route(request, stopping) {
            Some(response) => response,
            None => self.route(db, request, &caller, later),
        };
        count(&self.probes, &served_by(request, &response, Some(&caller)));
        Some(response)
    }

    fn refused(&self, status: u16, why: &str, head: Option<(&str, &str)>) {
        log::debug!("refused a request: {status} {why}");
        count(&self.probes, &refused_served(status, head));
    }

    fn connections(&self, open: usize) {
        self.probes.shared.metrics.connections.set(open as i64);
    }

    fn standing_by(&self, threads: usize) {
        self.probes
            .shared
            .metrics
            .threads_standing_by
            .set(threads as i64);
    }
}

/// One request served (or refused), for the metrics and the access log.
struct Served<'a> {
    /// Its method, as sent.
    method: &'a str,
    /// Its route's pattern (`/v1/reports/{id}`), never the path itself.
    route: &'a str,
    status: u16,
    /// The answer's body, in bytes.
    bytes: usize,
    /// When its head was read; `None` when it was refused before.
    received: Option<Instant>,
    /// Its request id and caller, for the access log.
    who: Option<(String, Option<String>)>,
}

/// The method as a label: the standard ones, or `other` (a client must not
/// make new series at will).
fn method_label(method: &str) -> &'static str {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// Counts a request in the metrics (by method, route pattern and status),
/// times it, and writes its access log line when asked for.
fn count(probes: &Probes, served: &Served<'_>) {
    let method = method_label(served.method);
    let other;
    let status = match status_text(served.status) {
        Some(text) => text,
        None => {
            other = served.status.to_string();
            &other
        }
    };
    let metrics = &probes.shared.metrics;
    metrics
        .requests
        .with_label_values(&[method, served.route, status])
        .inc();
    let seconds = served.received.map(|at| at.elapsed().as_secs_f64());
    if let Some(seconds) = seconds {
        metrics
            .request_seconds
            .with_label_values(&[method, served.route])
            .observe(seconds);
    }
    if probes.access_log {
        let (request_id, caller) = match &served.who {
            Some((id, caller)) => (id.as_str(), caller.as_deref().unwrap_or("-")),
            None => ("-", "-"),
        };
        log::info!(
            target: "quiesce::access",
            "{method} {} {} {}B {} id={request_id} caller={caller}",
            served.route,
            served.status,
            served.bytes,
            seconds.map_or("-".to_string(), |s| format!("{:.1}ms", s * 1000.0)),
        );
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "error": message }))
}

fn not_allowed(allow: &'static str) -> Response {
    error(405, "method not allowed").with_header("Allow", allow)
}

impl Probes {
    /// The probes and `/metrics`; `None` for any other path.
    fn route(&self, request: &Request, stopping: bool) -> Option<Response> {
        let method = request.method.as_str();
        Some(match request.path.as_str() {
            "/livez" | "/healthz" | "/readyz" | "/metrics"
                if method != "GET" && method != "HEAD" =>
            {
                not_allowed("GET, HEAD")
            }
            "/livez" => Response::json(200, &json!({ "status": "ok" })),
            "/healthz" => self.health(stopping),
            "/readyz" => {
                // Not ready while stopping, or while the store cannot
                // commit (its last commit failed): back by itself after
                // the next commit that succeeds.
                let ready = self.readiness.is_ready()
                    && !stopping
                    && self.shared.health.failure().is_none();
                if ready {
                    Response::json(200, &json!({ "status": "ready" }))
                } else {
                    Response::json(503, &json!({ "status": "not ready" }))
                }
            }
            "/metrics" => {
                let (mut body, content_type) = self.shared.metrics.render();
                self.auth.render_metrics(&mut body);
                Response {
                    status: 200,
                    content_type,
                    headers: Vec::new(),
                    body,
                }
            }
            _ => return None,
        })
    }

    /// `GET /healthz`: each check, `"ok"` or why it fails (no patient
    /// data: the store's check is its last commit's SQLite error); 200
    /// when all pass, 503 otherwise.
    fn health(&self, stopping: bool) -> Response {
        let store = match self.shared.health.failure() {
            None => "ok".to_string(),
            Some(err) => format!("last commit failed: {err}"),
        };
        let services = if stopping {
            "stopping"
        } else if self.readiness.is_ready() {
            "ok"
        } else {
            "not all services are ready"
        };
        let healthy = store == "ok" && services == "ok";
        Response::json(
            if healthy { 200 } else { 503 },
            &json!({
                "status": if healthy { "healthy" } else { "unhealthy" },
                "checks": { "store": store, "services": services },
            }),
        )
    }
}

impl Api {
    /// The API's own routes (the caller authenticated). Those that read
    /// the database or wait for a commit (an audited read) first let
    /// another handler thread take this one's place (`later.may_block`).
    fn route(
        &self,
        db: &mut Reader,
        request: &Request,
        caller: &Caller,
        later: &Later<'_>,
    ) -> Response {
        let method = request.method.as_str();
        match request.path.as_str() {
            "/v1/reports" => match method {
                "GET" => {
                    later.may_block();
                    self.list_reports(db, request, caller)
                }
                _ => not_allowed("GET, POST"),
            },
            path if path.starts_with("/v1/reports/") && path.ends_with("/retry") => {
                let id = &path["/v1/reports/".len()..path.len() - "/retry".len()];
                match method {
                    "POST" => {
                        later.may_block();
                        self.retry(db, request, caller, id)
                    }
                    _ => not_allowed("POST"),
                }
            }
            path if path.starts_with("/v1/reports/") => match method {
                "GET" => {
                    later.may_block();
                    self.get_report(db, request, caller, &path["/v1/reports/".len()..])
                }
                _ => not_allowed("GET"),
            },
            "/v1/enrollment" => match method {
                "GET" => self.enrollment(),
                _ => not_allowed("GET"),
            },
            "/v1/reports:batch" | "/fhir" | "/fhir/QuestionnaireResponse" => not_allowed("POST"),
            path if path.starts_with("/fhir/QuestionnaireResponse/") => match method {
                "GET" => {
                    later.may_block();
                    self.get_fhir_response(
                        db,
                        request,
                        caller,
                        &path["/fhir/QuestionnaireResponse/".len()..],
                    )
                }
                _ => not_allowed("GET"),
            },
            "/fhir/Observation" => match method {
                "GET" => {
                    later.may_block();
                    self.search_observations(db, request, caller)
                }
                _ => not_allowed("GET"),
            },
            _ => error(404, "no such route"),
        }
    }

    /// `POST /v1/reports`: answered now when it is refused, or later, by
    /// the store's reply thread, once the report is committed.
    fn post_report(
        &self,
        request: &Request,
        caller: &Caller,
        stopping: bool,
        later: &Later<'_>,
    ) -> Option<Response> {
        let refused = |response: Response| {
            count(&self.probes, &served_by(request, &response, Some(caller)));
            Some(response)
        };
        let fhir = clinical::is_fhir(request);
        let validated = if fhir {
            self.validate_fhir(request, stopping)
                .map(|(report, raw)| (report, Some(raw)))
        } else {
            self.validate(request, stopping)
                .map(|report| (report, None))
        };
        let (report, raw) = match validated {
            Ok(validated) => validated,
            Err(response) => return refused(response),
        };
        if let Err(why) = self.recent_enough(&report) {
            let response = if fhir {
                clinical::outcome_response(&fhir::OperationOutcome::error(
                    400,
                    fhir::IssueCode::Value,
                    Some("QuestionnaireResponse.authored".into()),
                    why,
                ))
            } else {
                Response::json(400, &json!({ "error": why, "field": "submitted_at" }))
            };
            return refused(response);
        }
        let report_id = report.report_id.clone();
        let hash = report.content_hash();
        let (urgent, scored) = score(&report, self.alert_total, self.score_at_intake);
        let insert = Op::Insert {
            report,
            hash,
            max_backlog: self.max_backlog,
            who: who(request, caller),
            body_sha256: sha256_hex(&request.body),
            urgent,
            raw,
            scored,
        };
        let deadline = Instant::now() + STORE_WAIT;
        let posted = Posted {
            answer: Some(later.defer(deadline)),
            fhir,
            report_id,
            caller: caller.clone(),
            request_id: request_id(request),
            received: request.received,
            probes: self.probes.clone(),
        };
        // Not taken in time: `posted` is dropped and answers 503. A full
        // queue is waited for on another thread's seat.
        let _ = self.store.send_or_wait(
            insert,
            Box::new(move |outcome| posted.finish(outcome)),
            deadline,
            &|| later.may_block(),
        );
        None
    }

    /// Whether `report` was submitted at or after `--min-submitted-at`.
    fn recent_enough(&self, report: &Report) -> Result<(), String> {
        let at = time::OffsetDateTime::parse(
            &report.submitted_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| "not an RFC 3339 timestamp".to_string())?;
        if at < self.min_submitted_at {
            return Err("submitted before --min-submitted-at".to_string());
        }
        Ok(())
    }

    /// A report from the request, or the answer refusing it.
    fn validate(&self, request: &Request, stopping: bool) -> Result<Report, Response> {
        if stopping {
            return Err(error(503, "shutting down").with_header("Retry-After", RETRY_AFTER));
        }
        let json = request.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(error(
                415,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let report =
            Report::parse(&request.body, time::OffsetDateTime::now_utc()).map_err(|invalid| {
                Response::json(
                    400,
                    &json!({ "error": invalid.message, "field": invalid.field }),
                )
            })?;
        // A registered instrument's answers must fit it: every required
        // item, each in its range (never a missing item scored as 0).
        instruments::check(&report.instrument, &report.answers).map_err(|invalid| {
            let first = &invalid[0];
            Response::json(
                400,
                &json!({
                    "error": format!("the answers do not fit {}: {}", report.instrument, first.message),
                    "field": first.field,
                    "problems": invalid
                        .iter()
                        .map(|i| json!({ "field": i.field, "error": i.message }))
                        .collect::<Vec<_>>(),
                }),
            )
        })?;
        Ok(report)
    }

    /// `POST /v1/reports/{id}/retry`: a failed report back in the queue.
    fn retry(&self, db: &mut Reader, request: &Request, caller: &Caller, id: &str) -> Response {
        let op = Op::Redrive {
            report_id: id.to_string(),
            who: who(request, caller),
        };
        match self.store.call(op, Instant::now() + operate::STORE_WAIT) {
            Ok(Outcome::Changed) => {
                log::info!("report {id} re-driven: back in the queue, attempts from zero");
                Response::json(202, &json!({ "report_id": id, "status": "queued" }))
            }
            Ok(_) => match db.report(id) {
                Ok(None) => error(404, "no such report"),
                Ok(Some(report)) => Response::json(
                    409,
                    &json!({
                        "error": format!(
                            "only a failed report can be retried; this one is {}",
                            report.status
                        ),
                        "status": report.status,
                    }),
                ),
                Err(err) => {
                    log::error!("reading report {id}: {err}");
                    error(500, "cannot read the report")
                }
            },
            Err(err) => {
                log::warn!("re-drive of report {id} not stored: {err}");
                not_stored()
            }
        }
    }

    /// Records a read in the audit trail before it is answered: a read
    /// that cannot be recorded is not served (503).
    fn audited(&self, event: AuditEvent, response: Response) -> Response {
        match self
            .store
            .call(Op::Audit(event), Instant::now() + STORE_WAIT)
        {
            Ok(_) => response,
            Err(err) => {
                log::warn!("a read not served: the audit trail cannot record it ({err})");
                error(
                    503,
                    "the read could not be recorded in the audit trail; retry",
                )
                .with_header("Retry-After", RETRY_AFTER)
            }
        }
    }

    /// `GET /v1/reports?status=…&site=…&since=…&limit=…&after=…`.
    fn list_reports(&self, db: &mut Reader, request: &Request, caller: &Caller) -> Response {
        let filter = match operate::filter(&request.params()) {
            Ok(filter) => filter,
            Err(bad) => {
                return Response::json(400, &json!({ "error": bad.why, "field": bad.field }));
            }
        };
        let response = match db.list(&filter) {
            Ok(reports) => Response::json(200, &operate::page(&reports, &filter)),
            Err(err) => {
                log::error!("listing reports: {err}");
                return error(500, "cannot list the reports");
            }
        };
        let mut event = AuditEvent::new("reports.listed", who(request, caller));
        event.outcome = Some(response.status.to_string());
        event.detail = Some(
            json!({
                "status": filter.status,
                "site": filter.site,
                "since_ms": filter.since_ms,
                "after": filter.after,
                "limit": filter.limit,
            })
            .to_string(),
        );
        self.audited(event, response)
    }

    /// `GET /v1/reports/{id}`.
    fn get_report(
        &self,
        db: &mut Reader,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Response {
        let response = report_response(db, id);
        if response.status == 500 {
            return response;
        }
        let mut event = AuditEvent::new("report.read", who(request, caller));
        event.report_id = Some(id.to_string());
        event.outcome = Some(response.status.to_string());
        self.audited(event, response)
    }

    fn enrollment(&self) -> Response {
        let snapshot = self.probes.shared.enrollment.snapshot();
        let sites: serde_json::Map<String, Value> = snapshot
            .sorted()
            .into_iter()
            .map(|(site, n)| (site.clone(), json!(n)))
            .collect();
        Response::json(200, &json!({ "sites": sites, "total": snapshot.total }))
    }
}

/// A report handed to the store, whose client waits for the answer. The
/// store's reply thread calls [`Posted::finish`] once the transaction has
/// committed (or failed); dropped unanswered (the store did not take it in
/// time, or stopped), it answers `503`.
struct Posted {
    answer: Option<Deferred>,
    /// Answered in FHIR (an `OperationOutcome`, `Location`).
    fhir: bool,
    report_id: String,
    /// Who posted it (the audit trail's "who").
    caller: Caller,
    /// Its request id, for the access log.
    request_id: String,
    /// When its head was read.
    received: Instant,
    probes: Probes,
}

impl Posted {
    fn finish(mut self, outcome: Result<Outcome, Failure>) {
        let report_id = &self.report_id;
        if self.fhir {
            if let Err(err) = &outcome {
                log::warn!("report {report_id}: {err}");
            }
            let response = clinical::fhir_answer(report_id, &outcome);
            self.answer(response);
            return;
        }
        // Written by `store-sync` for every report: serialised as it is,
        // not built as a `json!` map first (the same bytes: keys in order).
        #[derive(serde::Serialize)]
        struct Taken<'a> {
            report_id: &'a str,
            status: &'static str,
        }
        let response = match outcome {
            Ok(Outcome::Accepted) => Response::json(
                202,
                &Taken {
                    report_id,
                    status: "accepted",
                },
            ),
            Ok(Outcome::Duplicate) => Response::json(
                200,
                &Taken {
                    report_id,
                    status: "duplicate",
                },
            ),
            Ok(Outcome::BacklogFull) => {
                error(429, "too many reports waiting to be processed; retry later")
                    .with_header("Retry-After", RETRY_AFTER)
            }
            Ok(Outcome::Conflict) => Response::json(
                409,
                &json!({ "error": "report_id already used for a different report", "field": "report_id" }),
            ),
            Ok(other) => {
                log::error!("insert of {report_id} answered {other:?}");
                error(500, "unexpected store answer")
            }
            Err(Failure::NotStored(err)) => {
                log::warn!(
                    "report {report_id} (posted by {}) not stored: {}",
                    self.caller,
                    CallError::Failed(err)
                );
                not_stored()
            }
            Err(Failure::Unknown(err)) => {
                log::warn!("report {report_id}: whether it was stored is unknown ({err})");
                outcome_unknown()
            }
        };
        self.answer(response);
    }

    fn answer(&mut self, response: Response) {
        if let Some(answer) = self.answer.take() {
            let status = response.status;
            let served = Served {
                method: "POST",
                route: "/v1/reports",
                status,
                bytes: response.body.len(),
                received: Some(self.received),
                who: Some((self.request_id.clone(), self.caller.name.clone())),
            };
            let probes = &self.probes;
            if !answer.respond(response, || count(probes, &served)) {
                // The client got 503 at the deadline (counted by `refused`);
                // it may retry: the same report is then a 200 duplicate.
                log::warn!(
                    "report {}: the store answered {status} after the client was told 503",
                    self.report_id
                );
            }
        }
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        if self.answer.is_some() {
            log::warn!(
                "report {} (posted by {}) not stored: the store did not take it in time",
                self.report_id,
                self.caller
            );
            self.answer(not_stored());
        }
    }
}

fn not_stored() -> Response {
    error(503, "the report could not be stored; retry").with_header("Retry-After", RETRY_AFTER)
}

/// The commit's outcome is unknown (store invariant 8): never "not
/// stored" for a report that may be on disk.
fn outcome_unknown() -> Response {
    error(
        503,
        "the report may or may not have been stored (the store's commit failed midway); \
         retrying is safe: the same report is answered as a duplicate if it was stored",
    )
    .with_header("Retry-After", RETRY_AFTER)
}

fn report_response(db: &mut Reader, id: &str) -> Response {
    match db.report(id) {
        Ok(Some(r)) => {
            let ms = |t: Option<i64>| t.and_then(rfc3339_ms);
            let mut body = json!({
                "report_id": r.report_id,
                "status": r.status,
                "site_id": r.site_id,
                "patient_id": r.patient_id,
                "instrument": r.instrument,
                "submitted_at": r.submitted_at,
                "received_at": ms(Some(r.received_at)),
                "attempts": r.attempts,
            });
            if let Some(err) = r.last_error {
                body["last_error"] = json!(err);
            }
            if let Some(result) = r.result {
                body["result"] = serde_json::from_str(&result).unwrap_or(Value::Null);
            }
            if let Some(at) = ms(r.processed_at) {
                body["processed_at"] = json!(at);
            }
            Response::json(200, &body)
        }
        Ok(None) => error(404, "no such report"),
        Err(err) => {
            log::error!("reading report {id}: {err}");
            error(500, "cannot read the report")
        }
    }
}

/// Who sent `request`, for the audit trail: the token's name, the peer,
/// and the request id (the client's `X-Request-Id` when it is a sensible
/// one, else one made here).
fn who(request: &Request, caller: &Caller) -> Who {
    Who {
        caller: caller.name.clone(),
        remote: caller.peer.or(request.peer).map(|p| p.to_string()),
        request_id: Some(request_id(request)),
    }
}

/// A path as a route pattern (an id replaced), for the metrics, the access
/// log and the audit trail: a path may hold a report id someone guessed,
/// and each distinct label would be a new series.
fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/reports" => "/v1/reports",
        "/v1/enrollment" => "/v1/enrollment",
        "/livez" => "/livez",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/reports/") && p.ends_with("/retry") => "/v1/reports/{id}/retry",
        p if p.starts_with("/v1/reports/") => "/v1/reports/{id}",
        _ => "unknown",
    }
}

/// `request`, answered `response` (now), as counted.
fn served_by<'a>(request: &'a Request, response: &Response, caller: Option<&Caller>) -> Served<'a> {
    Served {
        method: &request.method,
        route: route_of(&request.path),
        status: response.status,
        bytes: response.body.len(),
        received: Some(request.received),
        who: Some((request_id(request), caller.and_then(|c| c.name.clone()))),
    }
}

/// A request the server refused before a handler saw it, as counted: by
/// its route when its head was read (a body too large), else `unread`.
fn refused_served<'a>(status: u16, head: Option<(&'a str, &'a str)>) -> Served<'a> {
    Served {
        method: head.map_or("", |(method, _)| method),
        route: head.map_or("unread", |(_, path)| route_of(path)),
        status,
        bytes: 0,
        received: None,
        who: None,
    }
}

/// The request's id: the client's `X-Request-Id` (1 to 64 characters of
/// `A-Z a-z 0-9 . _ -`), or this process's next one, made once per request
/// (the audit row and the access log line of one request name the same).
fn request_id(request: &Request) -> String {
    request.id.get_or_init(|| new_request_id(request)).clone()
}

fn new_request_id(request: &Request) -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    if let Some(id) = request.header("x-request-id")
        && !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return id.to_string();
    }
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let seed = format!("{}-{}", std::process::id(), store::now_ms());
        sha256_hex(seed.as_bytes())[..12].to_string()
    });
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Scores `report` once: whether its answers raise an alert (it goes in
/// the urgent lane, claimed before routine work) and, when `at_intake`
/// (no analyzer is configured), its result, stored with its insert (see
/// the [store]'s "Where a report is scored"). A report
/// whose answers do not fit its instrument gets no result: it is queued,
/// and the pipeline fails it for good, saying why.
fn score(report: &Report, alert_total: u32, at_intake: bool) -> (bool, Option<store::Scored>) {
    match report.assess(alert_total) {
        Ok(assessment) => (
            assessment.alert(),
            at_intake.then(|| super::pipeline::scored_at_intake(&assessment)),
        ),
        Err(_) => (false, None),
    }
}
