//! The FHIR R4 subset we speak: a `QuestionnaireResponse` in (alone or in a
//! `batch` `Bundle`), an `Observation` of its score out, errors as an
//! `OperationOutcome`. Pure functions over bytes and JSON; the routes, the
//! store and the pipeline call them.
//!
//! How a QuestionnaireResponse becomes a [`Report`]:
//!
//! | FHIR element | Report field | Rule |
//! |---|---|---|
//! | `status` | — | `completed` or `amended`; anything else is refused |
//! | `identifier` (`system`, `value`) | `report_id` | a `value` without `system` that fits our charset is used as is; otherwise `qr-sha256:` + the hex SHA-256 of the FHIR token (system, a vertical bar, value; system empty when absent) |
//! | `id` | `report_id` | when there is no `identifier` (a FHIR id always fits our charset) |
//! | `subject.reference` | `patient_id` | `Patient/{id}` → `{id}` (an absolute URL ending in `/Patient/{id}` too; the base is not kept); else `subject.identifier.value` |
//! | `authored` | `submitted_at` | RFC 3339 with a time zone (a partial date is refused) |
//! | `questionnaire` | `instrument` | a registered instrument's name when the canonical names one ([`instruments::find`]), else the canonical without its version suffix |
//! | `extension` [`SITE_EXTENSION`] | `site_id` | `valueString`, or `valueIdentifier.value` |
//! | `item[].linkId`, `item[].answer[0].value[x]` | `answers` | see below |
//!
//! Items are walked depth first, through `item.item` (groups) and
//! `item.answer.item` (follow-up questions). For a registered instrument an
//! item is found by our plain name or its LOINC code and stored under our
//! plain name (`44260-8` → `q9`); items that are not the instrument's (a
//! form's own total, a hidden field) are skipped: they stay in the raw
//! resource, stored verbatim beside the report. For any other instrument
//! every answered item is an answer under its `linkId`. An answer is a
//! `valueInteger`, or a `valueCoding` with a LOINC answer code of the
//! instrument's scale (`LA6568-5` = 0 … `LA6571-9` = 3); one answer per item.
//!
//! A Bundle is read as a whole first: a body that is not JSON, or a key
//! repeated anywhere in it, refuses the whole Bundle (the entries could not
//! be told apart reliably); after that each entry is answered on its own.
//!
//! Errors name the element at fault with a FHIRPath `expression`
//! (`QuestionnaireResponse.item[0].item[3].answer[0].valueCoding`), never
//! the value sent. A missing item of a registered instrument is named
//! `QuestionnaireResponse.item.where(linkId='44260-8')`. All the missing
//! and out-of-range items of a registered instrument are reported at once;
//! other problems stop at the first.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::instruments::{self, Instrument};
use super::report::{self, Invalid, Report};

mod observation;
mod outcome;

pub use self::observation::observation;
pub use self::outcome::{Issue, IssueCode, OperationOutcome, Severity};

/// The extension carrying the site: `valueString` or `valueIdentifier`.
pub const SITE_EXTENSION: &str = "http://quiesce.dev/fhir/StructureDefinition/site";
/// Our code system for alert rules (codes: the rules' ids, `phq9-item9`).
pub const ALERT_SYSTEM: &str = "http://quiesce.dev/fhir/CodeSystem/alert-rule";
/// Our code system for severity bands (codes: `minimal` … `severe`).
pub const BAND_SYSTEM: &str = "http://quiesce.dev/fhir/CodeSystem/severity-band";
/// LOINC.
pub const LOINC: &str = "http://loinc.org";
/// The report ids derived from an identifier that does not fit our charset.
const HASHED: &str = "qr-sha256:";

// The subset of a QuestionnaireResponse we read. Unknown elements are
// ignored here; they are kept in the raw resource.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuestionnaireResponse {
    id: Option<String>,
    identifier: Option<Identifier>,
    questionnaire: Option<String>,
    status: Option<String>,
    subject: Option<Reference>,
    authored: Option<String>,
    #[serde(default)]
    extension: Vec<Extension>,
    #[serde(default)]
    item: Vec<QrItem>,
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
    identifier: Option<Identifier>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    url: Option<String>,
    value_string: Option<String>,
    value_identifier: Option<Identifier>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrItem {
    link_id: Option<String>,
    #[serde(default)]
    answer: Vec<QrAnswer>,
    #[serde(default)]
    item: Vec<QrItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrAnswer {
    value_coding: Option<Coding>,
    #[serde(default)]
    item: Vec<QrItem>,
    /// `valueInteger` and any other `value[x]`.
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
struct Coding {
    system: Option<String>,
    code: Option<String>,
}

/// Parses and validates a QuestionnaireResponse, as of `now`: the report,
/// and the raw resource (the body, verbatim) to store beside it.
///
/// # Errors
///
/// An `OperationOutcome` (400) naming the element(s) at fault.
pub fn parse_questionnaire_response(
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(Report, String), OperationOutcome> {
    let raw = std::str::from_utf8(body)
        .map_err(|_| {
            OperationOutcome::bad(
                IssueCode::Structure,
                "QuestionnaireResponse",
                "the body is not UTF-8",
            )
        })?
        .to_string();
    let value = strict(body, "QuestionnaireResponse")?;
    let report = from_value(value, now)?;
    Ok((report, raw))
}

/// Parses a `Bundle` of type `batch` whose entries are QuestionnaireResponses
/// (`request`, when present, `POST QuestionnaireResponse`): each entry's
/// outcome, in order, each validated on its own. An entry's raw resource is
/// its `resource` written back as JSON (keys in order, no whitespace: the
/// same content, not the same bytes); expressions in an entry's outcome are
/// relative to its resource (`QuestionnaireResponse.status`).
///
/// # Errors
///
/// An `OperationOutcome` when the body is not a batch Bundle at all.
#[allow(clippy::type_complexity)]
pub fn parse_bundle(
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Vec<Result<(Report, String), OperationOutcome>>, OperationOutcome> {
    let value = strict(body, "Bundle")?;
    let Value::Object(mut bundle) = value else {
        return Err(OperationOutcome::bad(
            IssueCode::Structure,
            "Bundle",
            "expected a JSON object",
        ));
    };
    match bundle.get("resourceType") {
        Some(Value::String(t)) if t == "Bundle" => {}
        Some(_) => {
            return Err(OperationOutcome::bad(
                IssueCode::NotSupported,
                "Bundle.resourceType",
                "expected a Bundle",
            ));
        }
        None => {
            return Err(OperationOutcome::bad(
                IssueCode::Required,
                "Bundle.resourceType",
                "missing",
            ));
        }
    }
    match bundle.get("type") {
        Some(Value::String(t)) if t == "batch" => {}
        Some(Value::String(t)) if t == "transaction" => {
            return Err(OperationOutcome::bad(
                IssueCode::NotSupported,
                "Bundle.type",
                "transactions (all or nothing) are not supported: send a batch, each entry is answered on its own",
            ));
        }
        Some(_) => {
            return Err(OperationOutcome::bad(
                IssueCode::Value,
                "Bundle.type",
                "must be batch",
            ));
        }
        None => {
            return Err(OperationOutcome::bad(
                IssueCode::Required,
                "Bundle.type",
                "missing",
            ));
        }
    }
    let entries = match bundle.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(OperationOutcome::bad(
                IssueCode::Structure,
                "Bundle.entry",
                "must be an array",
            ));
        }
    };
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| entry_of(i, entry, now))
        .collect())
}

fn entry_of(
    i: usize,
    entry: Value,
    now: OffsetDateTime,
) -> Result<(Report, String), OperationOutcome> {
    let at = format!("Bundle.entry[{i}]");
    let Value::Object(mut entry) = entry else {
        return Err(OperationOutcome::bad(
            IssueCode::Structure,
            at,
            "expected a JSON object",
        ));
    };
    if let Some(request) = entry.get("request") {
        let method = request.get("method").and_then(Value::as_str);
        let url = request.get("url").and_then(Value::as_str);
        if method != Some("POST") {
            return Err(OperationOutcome::bad(
                IssueCode::NotSupported,
                format!("{at}.request.method"),
                "only POST is supported in a batch",
            ));
        }
        if url.map(|u| u.trim_start_matches('/')) != Some("QuestionnaireResponse") {
            return Err(OperationOutcome::bad(
                IssueCode::NotSupported,
                format!("{at}.request.url"),
                "only QuestionnaireResponse is supported in a batch",
            ));
        }
    }
    let Some(resource) = entry.remove("resource") else {
        return Err(OperationOutcome::bad(
            IssueCode::Required,
            format!("{at}.resource"),
            "missing",
        ));
    };
    let raw = resource.to_string();
    from_value(resource, now).map(|report| (report, raw))
}

/// Parses `body` as JSON, a repeated key being an error naming its path
/// (`item.0.linkId` → `QuestionnaireResponse.item[0].linkId`).
fn strict(body: &[u8], root: &str) -> Result<Value, OperationOutcome> {
    report::strict_json(body).map_err(|e| {
        if e.field == "body" {
            OperationOutcome::bad(IssueCode::Structure, root, e.message)
        } else {
            let mut path = root.to_string();
            for segment in e.field.split('.') {
                if segment.bytes().all(|b| b.is_ascii_digit()) {
                    path.push_str(&format!("[{segment}]"));
                } else {
                    path.push('.');
                    path.push_str(segment);
                }
            }
            OperationOutcome::bad(IssueCode::Structure, path, e.message)
        }
    })
}

/// Where each report field came from, to name it in errors.
struct Sources {
    report_id: &'static str,
    /// Our item name -> its element path.
    items: BTreeMap<String, String>,
}

fn from_value(value: Value, now: OffsetDateTime) -> Result<Report, OperationOutcome> {
    const QR: &str = "QuestionnaireResponse";
    match value.get("resourceType") {
        Some(Value::String(t)) if t == QR => {}
        Some(_) => {
            return Err(OperationOutcome::bad(
                IssueCode::NotSupported,
                "resourceType",
                "expected a QuestionnaireResponse",
            ));
        }
        None => {
            return Err(OperationOutcome::bad(
                IssueCode::Required,
                "resourceType",
                "missing",
            ));
        }
    }
    let qr: QuestionnaireResponse = serde_json::from_value(value)
        .map_err(|e| OperationOutcome::bad(IssueCode::Structure, QR, without_value(&e)))?;
    match qr.status.as_deref() {
        Some("completed" | "amended") => {}
        Some(_) => {
            return Err(OperationOutcome::bad(
                IssueCode::Value,
                "QuestionnaireResponse.status",
                "must be completed or amended: a response still in progress is not scored",
            ));
        }
        None => {
            return Err(OperationOutcome::bad(
                IssueCode::Required,
                "QuestionnaireResponse.status",
                "missing",
            ));
        }
    }
    let (report_id, report_id_from) = report_id(&qr)?;
    let patient_id = patient_id(qr.subject.as_ref())?;
    let site_id = site_id(&qr.extension)?;
    let Some(questionnaire) = qr.questionnaire.as_deref() else {
        return Err(OperationOutcome::bad(
            IssueCode::Required,
            "QuestionnaireResponse.questionnaire",
            "missing",
        ));
    };
    let registered = instruments::find(questionnaire);
    let instrument = match registered {
        Some(i) => i.name.to_string(),
        None => questionnaire
            .split_once('|')
            .map_or(questionnaire, |(url, _)| url)
            .to_string(),
    };
    let Some(authored) = qr.authored else {
        return Err(OperationOutcome::bad(
            IssueCode::Required,
            "QuestionnaireResponse.authored",
            "missing",
        ));
    };
    let mut walk = Walk {
        instrument: registered,
        answers: Map::new(),
        sources: Sources {
            report_id: report_id_from,
            items: BTreeMap::new(),
        },
        problems: Vec::new(),
    };
    walk.items(&qr.item, QR);
    if !walk.problems.is_empty() {
        return Err(OperationOutcome {
            status: 400,
            issues: walk.problems,
        });
    }
    let sources = walk.sources;
    // A registered instrument's items first, all problems at once (every
    // missing item named): the walk has kept each answer within its item's
    // range, so each fits a u8.
    if let Some(instrument) = registered {
        let answers: BTreeMap<String, u8> = walk
            .answers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().map_or(u8::MAX, |n| n.min(255) as u8)))
            .collect();
        instruments::check(instrument.name, &answers).map_err(|problems| OperationOutcome {
            status: 400,
            issues: problems
                .iter()
                .map(|p| instrument_issue(p, registered, &sources))
                .collect(),
        })?;
    }
    // Our own rules (charsets, lengths, the time), by the same code as a
    // JSON report; their errors named in FHIR terms.
    let ours = json!({
        "report_id": report_id,
        "patient_id": patient_id,
        "site_id": site_id,
        "instrument": instrument,
        "submitted_at": authored,
        "answers": walk.answers,
    });
    Report::parse(ours.to_string().as_bytes(), now)
        .map_err(|e| OperationOutcome::bad(IssueCode::Value, expression(&e, &sources), e.message))
}

/// A shape error without the value it would quote: serde's "invalid
/// type: string \"Patient/123\", expected struct Reference" carries the
/// element's value, which may be a patient's id (errors never carry a
/// submitted value). Found by the property tests (issue 12).
fn without_value(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let prefix = ["invalid type", "invalid value"]
        .into_iter()
        .find(|p| text.starts_with(p));
    match (prefix, text.rsplit_once(", expected ")) {
        // What follows the last ", expected " is the type's own text.
        (Some(prefix), Some((_, expected))) => format!("{prefix}: expected {expected}"),
        (Some(prefix), None) => prefix.to_string(),
        (None, _) => text,
    }
}

/// The report id and the element it came from (see the module's table).
fn report_id(qr: &QuestionnaireResponse) -> Result<(String, &'static str), OperationOutcome> {
    if let Some(identifier) = &qr.identifier {
        let Some(value) = identifier.value.as_deref().filter(|v| !v.is_empty()) else {
            return Err(OperationOutcome::bad(
                IssueCode::Required,
                "QuestionnaireResponse.identifier.value",
                "missing",
            ));
        };
        let fits = value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
            && !value.starts_with(HASHED);
        let id = match identifier.system.as_deref() {
            None if fits => value.to_string(),
            system => {
                let token = format!("{}|{value}", system.unwrap_or(""));
                format!("{HASHED}{}", report::sha256_hex(token.as_bytes()))
            }
        };
        return Ok((id, "QuestionnaireResponse.identifier"));
    }
    match qr.id.as_deref() {
        Some(id) => Ok((id.to_string(), "QuestionnaireResponse.id")),
        None => Err(OperationOutcome::bad(
            IssueCode::Required,
            "QuestionnaireResponse.identifier",
            "an identifier (or an id) is required: it makes a retry idempotent",
        )),
    }
}

fn patient_id(subject: Option<&Reference>) -> Result<String, OperationOutcome> {
    const AT: &str = "QuestionnaireResponse.subject";
    let Some(subject) = subject else {
        return Err(OperationOutcome::bad(IssueCode::Required, AT, "missing"));
    };
    if let Some(reference) = subject.reference.as_deref() {
        let id = reference
            .strip_prefix("Patient/")
            .or_else(|| reference.rsplit_once("/Patient/").map(|(_, id)| id));
        return match id {
            Some(id) if !id.is_empty() && !id.contains('/') => Ok(id.to_string()),
            _ => Err(OperationOutcome::bad(
                IssueCode::Value,
                "QuestionnaireResponse.subject.reference",
                "must be a reference to a Patient (Patient/{id})",
            )),
        };
    }
    match subject.identifier.as_ref().and_then(|i| i.value.clone()) {
        Some(value) => Ok(value),
        None => Err(OperationOutcome::bad(
            IssueCode::Required,
            "QuestionnaireResponse.subject.reference",
            "missing: a Patient reference (or identifier) is required",
        )),
    }
}

fn site_id(extensions: &[Extension]) -> Result<String, OperationOutcome> {
    let at = format!("QuestionnaireResponse.extension('{SITE_EXTENSION}')");
    let Some(site) = extensions
        .iter()
        .find(|e| e.url.as_deref() == Some(SITE_EXTENSION))
    else {
        return Err(OperationOutcome::bad(
            IssueCode::Required,
            at,
            "missing: the site is required",
        ));
    };
    site.value_string
        .clone()
        .or_else(|| site.value_identifier.as_ref().and_then(|i| i.value.clone()))
        .ok_or_else(|| {
            OperationOutcome::bad(
                IssueCode::Required,
                at,
                "needs a valueString or a valueIdentifier with a value",
            )
        })
}

/// The depth-first walk of the items, collecting the answers.
struct Walk {
    instrument: Option<&'static Instrument>,
    /// Item name -> the answer (a JSON integer, checked by `Report::parse`).
    answers: Map<String, Value>,
    sources: Sources,
    problems: Vec<Issue>,
}

impl Walk {
    fn items(&mut self, items: &[QrItem], parent: &str) {
        for (i, item) in items.iter().enumerate() {
            if !self.problems.is_empty() {
                return;
            }
            let at = format!("{parent}.item[{i}]");
            self.item(item, &at);
        }
    }

    fn fail(&mut self, code: IssueCode, expression: String, diagnostics: impl Into<String>) {
        self.problems.push(Issue {
            severity: Severity::Error,
            code,
            diagnostics: Some(diagnostics.into()),
            expression: vec![expression],
        });
    }

    fn item(&mut self, item: &QrItem, at: &str) {
        let Some(link_id) = item.link_id.as_deref() else {
            return self.fail(IssueCode::Required, format!("{at}.linkId"), "missing");
        };
        // The item's name in the report, or None when skipped (not one of
        // the registered instrument's items).
        let name = match self.instrument {
            Some(instrument) => instrument
                .item(link_id.trim())
                .map(|i| (i.name.to_string(), i.max)),
            None => Some((link_id.to_string(), u8::MAX)),
        };
        if let Some((name, _)) = &name
            && !item.answer.is_empty()
        {
            if item.answer.len() > 1 {
                return self.fail(
                    IssueCode::Value,
                    format!("{at}.answer[1]"),
                    "one answer per item",
                );
            }
            if self.sources.items.contains_key(name) {
                return self.fail(
                    IssueCode::Invalid,
                    format!("{at}.linkId"),
                    format!("item {name} is answered more than once"),
                );
            }
            self.sources.items.insert(name.clone(), at.to_string());
        }
        for (j, answer) in item.answer.iter().enumerate() {
            let answer_at = format!("{at}.answer[{j}]");
            if let Some((name, max)) = &name
                && let Some(value) = self.value(answer, &answer_at, *max)
            {
                self.answers.insert(name.clone(), value.into());
            }
            if !self.problems.is_empty() {
                return;
            }
            self.items(&answer.item, &answer_at);
        }
        self.items(&item.item, at);
    }

    /// The answer's value, or None (and a problem) when it has none we read.
    fn value(&mut self, answer: &QrAnswer, at: &str, max: u8) -> Option<u64> {
        if let Some(coding) = &answer.value_coding {
            let at = format!("{at}.valueCoding");
            let Some(instrument) = self.instrument else {
                self.fail(
                    IssueCode::NotSupported,
                    at,
                    "coded answers need a registered instrument (PHQ-9, GAD-7); send valueInteger",
                );
                return None;
            };
            if coding.system.as_deref().is_some_and(|s| s != LOINC) {
                self.fail(
                    IssueCode::CodeInvalid,
                    format!("{at}.system"),
                    format!("must be {LOINC}"),
                );
                return None;
            }
            let value = coding
                .code
                .as_deref()
                .and_then(|c| instrument.answer_value(c));
            if value.is_none() {
                self.fail(
                    IssueCode::CodeInvalid,
                    at,
                    format!(
                        "not an answer code of {} (LOINC LA6568-5 … LA6571-9)",
                        instrument.name
                    ),
                );
            }
            return value.map(u64::from);
        }
        if let Some(integer) = answer.other.get("valueInteger") {
            let at = format!("{at}.valueInteger");
            return match integer.as_u64() {
                Some(n) if n <= u64::from(max) => Some(n),
                _ if max == u8::MAX => Some(integer.as_u64().unwrap_or(u64::MAX)),
                _ => {
                    self.fail(
                        IssueCode::Value,
                        at,
                        format!("must be an integer from 0 to {max}"),
                    );
                    None
                }
            };
        }
        if let Some(key) = answer.other.keys().find(|k| k.starts_with("value")) {
            self.fail(
                IssueCode::NotSupported,
                format!("{at}.{key}"),
                "answers are valueInteger or valueCoding",
            );
        } else {
            self.fail(
                IssueCode::Required,
                at.to_string(),
                "an answer needs a value",
            );
        }
        None
    }
}

/// The FHIR element a report field came from.
fn expression(e: &Invalid, sources: &Sources) -> String {
    let field = e.field.as_str();
    match field {
        "report_id" => sources.report_id.to_string(),
        "patient_id" => "QuestionnaireResponse.subject".to_string(),
        "site_id" => format!("QuestionnaireResponse.extension('{SITE_EXTENSION}')"),
        "instrument" => "QuestionnaireResponse.questionnaire".to_string(),
        "submitted_at" => "QuestionnaireResponse.authored".to_string(),
        "answers" => "QuestionnaireResponse.item".to_string(),
        _ => field
            .strip_prefix("answers.")
            .and_then(|name| (sources.items.get(name)).or_else(|| sources.items.get(name.trim())))
            .cloned()
            .unwrap_or_else(|| "QuestionnaireResponse".to_string()),
    }
}

/// An issue for a registered instrument's problem (all missing items, all
/// out-of-range answers): a missing item is `required`, named by its LOINC
/// code as `item.where(linkId=…)`.
fn instrument_issue(p: &Invalid, instrument: Option<&Instrument>, sources: &Sources) -> Issue {
    let name = p.field.strip_prefix("answers.").unwrap_or(&p.field);
    let item = instrument.and_then(|i| i.item(name));
    let (code, expression, diagnostics) = match item {
        Some(item) if p.message == "missing" => (
            IssueCode::Required,
            format!("QuestionnaireResponse.item.where(linkId='{}')", item.loinc),
            format!(
                "item {} ({}, {}) is missing: every item is required",
                item.name, item.loinc, item.text
            ),
        ),
        _ => (IssueCode::Value, expression(p, sources), p.message.clone()),
    };
    Issue {
        severity: Severity::Error,
        code,
        diagnostics: Some(diagnostics),
        expression: vec![expression],
    }
}

#[cfg(test)]
mod tests;
