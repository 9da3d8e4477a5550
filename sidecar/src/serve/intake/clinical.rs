//! The clinical routes of the API (issue 15): FHIR R4 in and out, and
//! batch uploads.
//!
//! | Route | Answer |
//! |-------|--------|
//! | `POST /fhir/QuestionnaireResponse` (or `POST /v1/reports` with `Content-Type: application/fhir+json`) | 201 stored (durable), `Location` the resource's; 200 the same resource again; 409 its id used for another; 400 an `OperationOutcome` naming the element; 429, 503 as for a report |
//! | `GET /fhir/QuestionnaireResponse/{id}` | the resource as it was sent; 404 |
//! | `GET /fhir/Observation?derived-from=QuestionnaireResponse/{id}` | a `searchset` Bundle with the score as an `Observation` once processed (empty before) |
//! | `POST /v1/reports:batch` (a JSON array, or NDJSON) | 200: each item's outcome, in order; the valid items committed in one transaction |
//! | `POST /fhir` (a `batch` Bundle of QuestionnaireResponses) | 200: a `batch-response` Bundle, each entry's status and outcome |
//!
//! Every error is an `OperationOutcome` on the FHIR routes. Nothing the
//! client sent is echoed back (patient data): answers carry ids, statuses
//! and outcomes only.

use std::time::Instant;

use quiesce::{Context, JobError};

use serde_json::{Value, json};

use super::super::fhir::{self, IssueCode, OperationOutcome};
use super::super::http::{RETRY_AFTER, Request, Response};
use super::super::instruments;
use super::super::report::Report;
use super::super::store::{AuditEvent, Failure, Op, Outcome, Reader};
use super::{Api, Caller, STORE_WAIT, error, sha256_hex, who};

/// The FHIR media type.
pub(super) const FHIR_JSON: &str = "application/fhir+json";

/// An `OperationOutcome` answer.
pub(super) fn outcome_response(outcome: &OperationOutcome) -> Response {
    let mut response = Response::json(outcome.http_status(), &outcome.to_json());
    response.content_type = FHIR_JSON;
    response
}

/// A FHIR resource answer.
fn fhir_response(status: u16, body: &Value) -> Response {
    let mut response = Response::json(status, body);
    response.content_type = FHIR_JSON;
    response
}

/// An information-only `OperationOutcome` (a success, said in FHIR).
fn information(status: u16, code: IssueCode, diagnostics: String) -> Response {
    let mut outcome = OperationOutcome::error(status, code, None, diagnostics);
    for issue in &mut outcome.issues {
        issue.severity = fhir::Severity::Information;
    }
    outcome_response(&outcome)
}

/// Whether `request` carries a FHIR resource.
pub(super) fn is_fhir(request: &Request) -> bool {
    request.path.starts_with("/fhir")
        || request.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(FHIR_JSON))
        })
}

/// How the answer to a stored (or refused) QuestionnaireResponse reads.
pub(super) fn fhir_answer(report_id: &str, outcome: &Result<Outcome, Failure>) -> Response {
    let location = format!("/fhir/QuestionnaireResponse/{report_id}");
    match outcome {
        Ok(Outcome::Accepted) => information(
            201,
            IssueCode::Informational,
            format!("stored durably as {report_id}"),
        )
        .with_header("Location", location),
        Ok(Outcome::Duplicate) => information(
            200,
            IssueCode::Duplicate,
            format!("already stored as {report_id}"),
        )
        .with_header("Location", location),
        Ok(Outcome::Conflict) => outcome_response(&OperationOutcome::error(
            409,
            IssueCode::Conflict,
            Some("QuestionnaireResponse.identifier".into()),
            "this identifier is already used for a different QuestionnaireResponse",
        )),
        Ok(Outcome::BacklogFull) => outcome_response(&OperationOutcome::error(
            429,
            IssueCode::Throttled,
            None,
            "too many reports waiting to be processed; retry later",
        ))
        .with_header("Retry-After", RETRY_AFTER),
        Ok(_) => outcome_response(&OperationOutcome::error(
            500,
            IssueCode::Exception,
            None,
            "unexpected store answer",
        )),
        Err(Failure::NotStored(_)) => outcome_response(&OperationOutcome::error(
            503,
            IssueCode::Transient,
            None,
            "not stored; retry",
        ))
        .with_header("Retry-After", RETRY_AFTER),
        Err(Failure::Unknown(_)) => outcome_response(&OperationOutcome::error(
            503,
            IssueCode::Transient,
            None,
            "whether it was stored is unknown (a commit failed midway); retrying is safe: \
             the same resource is answered as already stored if it was",
        ))
        .with_header("Retry-After", RETRY_AFTER),
    }
}

/// A report parsed from one item of a batch, or why it is not one: the
/// field and the message.
type Item = Result<(Report, Option<String>), (String, String)>;

/// The items of a `POST /v1/reports:batch` body: a JSON array of reports,
/// or one report per line (NDJSON).
fn batch_items(body: &[u8], max: usize) -> Result<Vec<Item>, Response> {
    let now = time::OffsetDateTime::now_utc();
    let text = std::str::from_utf8(body).map_err(|_| error(400, "the body is not UTF-8"))?;
    let raw: Vec<String> = if text.trim_start().starts_with('[') {
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(text)
            .map_err(|_| error(400, "the body is not a JSON array of reports"))?;
        items.into_iter().map(|i| i.get().to_string()).collect()
    } else {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    if raw.is_empty() {
        return Err(error(400, "the batch is empty"));
    }
    if raw.len() > max {
        return Err(error(
            413,
            &format!("a batch holds at most {max} reports (--max-batch); send the rest in another"),
        ));
    }
    let validate = |item: &String| -> Item {
        let report = Report::parse(item.as_bytes(), now)
            .map_err(|invalid| (invalid.field, invalid.message))?;
        instruments::check(&report.instrument, &report.answers)
            .map_err(|invalid| (invalid[0].field.clone(), invalid[0].message.clone()))?;
        Ok((report, None))
    };
    // Validated on a bounded number of threads (the library's `scope`: at
    // most VALIDATORS at once, joined before it returns), in slices, under
    // the request's deadline: a slice not started in time is not run, and
    // the batch is answered 503.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(VALIDATORS);
    let slice = raw.len().div_ceil(threads).max(1);
    let ctx = Context::background().with_timeout(STORE_WAIT);
    let validate = &validate;
    let slices: Vec<Result<Vec<Item>, JobError>> = quiesce::scope(threads, &ctx, |s| {
        let handles: Vec<_> = raw
            .chunks(slice)
            .map(|chunk| s.spawn(move |_ctx| chunk.iter().map(validate).collect::<Vec<Item>>()))
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut items = Vec::with_capacity(raw.len());
    for slice in slices {
        match slice {
            Ok(slice) => items.extend(slice),
            Err(err) => {
                log::warn!("a batch's validation did not finish: {err}");
                return Err(
                    error(503, "the batch could not be validated in time; retry")
                        .with_header("Retry-After", RETRY_AFTER),
                );
            }
        }
    }
    Ok(items)
}

/// The most threads that validate one batch.
const VALIDATORS: usize = 4;

impl Api {
    /// `POST /fhir/QuestionnaireResponse`: the report the resource holds,
    /// and the resource verbatim, or the answer refusing it.
    pub(super) fn validate_fhir(
        &self,
        request: &Request,
        stopping: bool,
    ) -> Result<(Report, String), Response> {
        if stopping {
            return Err(outcome_response(&OperationOutcome::error(
                503,
                IssueCode::Transient,
                None,
                "shutting down; retry",
            ))
            .with_header("Retry-After", RETRY_AFTER));
        }
        fhir::parse_questionnaire_response(&request.body, time::OffsetDateTime::now_utc())
            .map_err(|outcome| outcome_response(&outcome))
    }

    /// Sends the valid items in one transaction: each item's outcome, or
    /// the store's failure.
    fn insert_many(
        &self,
        request: &Request,
        caller: &Caller,
        items: &[Item],
    ) -> Result<Vec<Option<Outcome>>, Response> {
        let body_sha256 = sha256_hex(&request.body);
        let inserts: Vec<Op> = items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .map(|(report, raw)| {
                let (urgent, scored) = super::score(report, self.alert_total, self.score_at_intake);
                Op::Insert {
                    report: report.clone(),
                    hash: report.content_hash(),
                    max_backlog: self.max_backlog,
                    who: who(request, caller),
                    body_sha256: body_sha256.clone(),
                    raw: raw.clone(),
                    urgent,
                    scored,
                }
            })
            .collect();
        let mut stored = if inserts.is_empty() {
            Vec::new().into_iter()
        } else {
            match self.store.call(
                Op::InsertMany { items: inserts },
                Instant::now() + STORE_WAIT,
            ) {
                Ok(Outcome::Many(outcomes)) => outcomes.into_iter(),
                Ok(other) => {
                    log::error!("a batch insert answered {other:?}");
                    return Err(error(500, "unexpected store answer"));
                }
                Err(err) => {
                    log::warn!("a batch of {} report(s) not stored: {err}", items.len());
                    return Err(error(
                        503,
                        "the batch could not be stored (none of it, or, when the commit failed \
                         midway, maybe all of it); retrying is safe: stored items come back as \
                         duplicates",
                    )
                    .with_header("Retry-After", RETRY_AFTER));
                }
            }
        };
        Ok(items
            .iter()
            .map(|item| item.as_ref().ok().and_then(|_| stored.next()))
            .collect())
    }

    /// `POST /v1/reports:batch`.
    pub(super) fn post_batch(
        &self,
        request: &Request,
        caller: &Caller,
        stopping: bool,
    ) -> Response {
        if stopping {
            return error(503, "shutting down").with_header("Retry-After", RETRY_AFTER);
        }
        let items: Vec<Item> = match batch_items(&request.body, self.max_batch) {
            Ok(items) => items
                .into_iter()
                .map(|item| {
                    let (report, raw) = item?;
                    self.recent_enough(&report)
                        .map_err(|why| ("submitted_at".to_string(), why))?;
                    Ok((report, raw))
                })
                .collect(),
            Err(response) => return response,
        };
        let outcomes = match self.insert_many(request, caller, &items) {
            Ok(outcomes) => outcomes,
            Err(response) => return response,
        };
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        let results: Vec<Value> = items
            .iter()
            .zip(outcomes)
            .enumerate()
            .map(|(index, (item, outcome))| {
                let (status, mut line) = match (item, outcome) {
                    (Err((field, message)), _) => {
                        ("invalid", json!({ "field": field, "error": message }))
                    }
                    (Ok((report, _)), Some(outcome)) => {
                        let status = match outcome {
                            Outcome::Accepted => "accepted",
                            Outcome::Duplicate => "duplicate",
                            Outcome::Conflict => "conflict",
                            Outcome::BacklogFull => "backlog_full",
                            _ => "error",
                        };
                        (status, json!({ "report_id": report.report_id }))
                    }
                    (Ok((report, _)), None) => ("error", json!({ "report_id": report.report_id })),
                };
                *counts.entry(status).or_default() += 1;
                line["index"] = json!(index);
                line["status"] = json!(status);
                line
            })
            .collect();
        Response::json(200, &json!({ "results": results, "counts": counts }))
    }

    /// `POST /fhir`: a `batch` Bundle of QuestionnaireResponses.
    pub(super) fn post_fhir_batch(
        &self,
        request: &Request,
        caller: &Caller,
        stopping: bool,
    ) -> Response {
        if stopping {
            return outcome_response(&OperationOutcome::error(
                503,
                IssueCode::Transient,
                None,
                "shutting down; retry",
            ))
            .with_header("Retry-After", RETRY_AFTER);
        }
        let entries = match fhir::parse_bundle(&request.body, time::OffsetDateTime::now_utc()) {
            Ok(entries) => entries,
            Err(outcome) => return outcome_response(&outcome),
        };
        if entries.len() > self.max_batch {
            return outcome_response(&OperationOutcome::error(
                413,
                IssueCode::TooCostly,
                Some("Bundle.entry".into()),
                format!(
                    "a batch holds at most {} entries (--max-batch)",
                    self.max_batch
                ),
            ));
        }
        let mut problems = Vec::with_capacity(entries.len());
        let items: Vec<Item> = entries
            .into_iter()
            .map(|entry| match entry {
                Ok((report, _)) if self.recent_enough(&report).is_err() => {
                    problems.push(Some(OperationOutcome::error(
                        400,
                        IssueCode::Value,
                        Some("QuestionnaireResponse.authored".into()),
                        "submitted before --min-submitted-at",
                    )));
                    Err((String::new(), String::new()))
                }
                Ok((report, raw)) => {
                    problems.push(None);
                    Ok((report, Some(raw)))
                }
                Err(outcome) => {
                    problems.push(Some(outcome));
                    Err((String::new(), String::new()))
                }
            })
            .collect();
        let outcomes = match self.insert_many(request, caller, &items) {
            Ok(outcomes) => outcomes,
            Err(response) => return response,
        };
        let entries: Vec<Value> = items
            .iter()
            .zip(outcomes)
            .zip(problems)
            .map(|((item, outcome), problem)| {
                let answer = match (item, outcome, problem) {
                    (_, _, Some(problem)) => outcome_response(&problem),
                    (Ok((report, _)), Some(outcome), None) => {
                        fhir_answer(&report.report_id, &Ok(outcome))
                    }
                    _ => outcome_response(&OperationOutcome::error(
                        500,
                        IssueCode::Exception,
                        None,
                        "no outcome",
                    )),
                };
                let location = answer
                    .headers
                    .iter()
                    .find(|(name, _)| *name == "Location")
                    .map(|(_, value)| value.clone());
                let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                let mut response = json!({
                    "status": format!("{} {}", answer.status, reason(answer.status)),
                    "outcome": body,
                });
                if let Some(location) = location {
                    response["location"] = json!(location);
                }
                json!({ "response": response })
            })
            .collect();
        fhir_response(
            200,
            &json!({
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": entries,
            }),
        )
    }

    /// `GET /fhir/QuestionnaireResponse/{id}`: the resource as sent.
    pub(super) fn get_fhir_response(
        &self,
        db: &mut Reader,
        request: &Request,
        caller: &Caller,
        id: &str,
    ) -> Response {
        let response = match db.report(id) {
            Ok(Some(report)) => match report.raw {
                Some(raw) => {
                    let mut response = Response::json(200, &Value::Null);
                    response.body = raw.into_bytes();
                    response.content_type = FHIR_JSON;
                    response
                }
                None => outcome_response(&OperationOutcome::error(
                    404,
                    IssueCode::NotFound,
                    None,
                    format!("{id} was not sent as FHIR: see /v1/reports/{id}"),
                )),
            },
            Ok(None) => outcome_response(&OperationOutcome::error(
                404,
                IssueCode::NotFound,
                None,
                format!("no QuestionnaireResponse {id}"),
            )),
            Err(err) => {
                log::error!("reading report {id}: {err}");
                return outcome_response(&OperationOutcome::error(
                    500,
                    IssueCode::Exception,
                    None,
                    "cannot read the resource",
                ));
            }
        };
        let mut event = AuditEvent::new("report.read", who(request, caller));
        event.report_id = Some(id.to_string());
        event.outcome = Some(response.status.to_string());
        event.detail = Some(json!({ "as": "QuestionnaireResponse" }).to_string());
        self.audited(event, response)
    }

    /// `GET /fhir/Observation?derived-from=QuestionnaireResponse/{id}`.
    pub(super) fn search_observations(
        &self,
        db: &mut Reader,
        request: &Request,
        caller: &Caller,
    ) -> Response {
        let params = request.params();
        let derived = params
            .iter()
            .find(|(name, _)| name == "derived-from")
            .and_then(|(_, value)| value.strip_prefix("QuestionnaireResponse/"));
        let Some(id) = derived else {
            return outcome_response(&OperationOutcome::error(
                400,
                IssueCode::NotSupported,
                None,
                "search by derived-from=QuestionnaireResponse/{id} only",
            ));
        };
        let found = match db.report(id) {
            Ok(found) => found,
            Err(err) => {
                log::error!("reading report {id}: {err}");
                return outcome_response(&OperationOutcome::error(
                    500,
                    IssueCode::Exception,
                    None,
                    "cannot read the report",
                ));
            }
        };
        let observation = found.and_then(|report| {
            let result: Value = serde_json::from_str(report.result.as_deref()?).ok()?;
            fhir::observation(id, &result, &report.instrument).ok()
        });
        let entries: Vec<Value> = observation
            .into_iter()
            .map(|resource| json!({ "resource": resource }))
            .collect();
        let response = fhir_response(
            200,
            &json!({
                "resourceType": "Bundle",
                "type": "searchset",
                "total": entries.len(),
                "entry": entries,
            }),
        );
        let mut event = AuditEvent::new("report.read", who(request, caller));
        event.report_id = Some(id.to_string());
        event.outcome = Some(response.status.to_string());
        event.detail = Some(json!({ "as": "Observation" }).to_string());
        self.audited(event, response)
    }
}

/// The reason phrase of a status, for a batch-response entry.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}
