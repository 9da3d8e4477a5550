//! An ePRO report: what a trial site posts, how it is validated, and how it
//! is scored.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Longest id, name or instrument accepted, in characters.
const MAX_TEXT: usize = 128;
/// Most answers in one report.
const MAX_ANSWERS: usize = 200;
/// The highest answer value (answers are 0..=4).
const MAX_ANSWER: u64 = 4;
/// How far in the future `submitted_at` may be (clock skew).
const MAX_FUTURE: Duration = Duration::minutes(5);

const FIELDS: [&str; 6] = [
    "report_id",
    "patient_id",
    "site_id",
    "instrument",
    "submitted_at",
    "answers",
];

/// A validated report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The client's idempotency key.
    pub report_id: String,
    /// The patient (as the site identifies them).
    pub patient_id: String,
    /// The site, upper-cased.
    pub site_id: String,
    /// The questionnaire.
    pub instrument: String,
    /// When the patient submitted it, normalised to UTC RFC 3339.
    pub submitted_at: String,
    /// Item name -> answer 0..=4.
    pub answers: BTreeMap<String, u8>,
}

/// Why a body is not a valid report: the field at fault and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field (`answers.q3` for an answer; `body` for the whole body).
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Report {
    /// Parses and validates a JSON body, as of `now`.
    ///
    /// # Errors
    ///
    /// The first problem found, naming its field.
    pub fn parse(body: &[u8], now: OffsetDateTime) -> Result<Report, Invalid> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid("body", "the body is empty; expected a JSON object"));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid("body", format!("invalid JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(invalid("body", "expected a JSON object"));
        };
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(unknown.clone(), "unknown field"));
        }
        let report_id = text(&object, "report_id")?;
        if report_id.chars().count() > MAX_TEXT
            || !report_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        {
            return Err(invalid(
                "report_id",
                "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'",
            ));
        }
        let patient_id = text(&object, "patient_id")?;
        let site_id = text(&object, "site_id")?.to_uppercase();
        let instrument = text(&object, "instrument")?;
        let submitted_at = submitted_at(&object, now)?;
        let answers = answers(&object)?;
        Ok(Report {
            report_id,
            patient_id,
            site_id,
            instrument,
            submitted_at,
            answers,
        })
    }

    /// A hash of the report's content, to tell a retry of the same report
    /// (same id, same content) from a different report reusing an id.
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a report serialises");
        hex(&Sha256::digest(&canonical))
    }

    /// Scores the answers.
    pub fn score(&self, alert_total: u32) -> Score {
        let total: u32 = self.answers.values().map(|&a| u32::from(a)).sum();
        let max_item = self.answers.values().copied().max().unwrap_or(0);
        let alert_items: Vec<String> = self
            .answers
            .iter()
            .filter(|(_, a)| **a >= 3)
            .map(|(k, _)| k.clone())
            .collect();
        Score {
            total,
            max_item,
            alert: !alert_items.is_empty() || total > alert_total,
            alert_items,
        }
    }
}

/// The outcome of scoring a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Score {
    /// The sum of the answers.
    pub total: u32,
    /// The highest answer.
    pub max_item: u8,
    /// Whether the report needs a clinician's attention: an item at 3 or
    /// more, or a total above the threshold.
    pub alert: bool,
    /// The items at 3 or more.
    pub alert_items: Vec<String>,
}

fn text(object: &Map<String, Value>, field: &str) -> Result<String, Invalid> {
    match object.get(field) {
        None => Err(invalid(field, "missing")),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(invalid(field, "must not be empty"))
            } else if s.chars().count() > MAX_TEXT {
                Err(invalid(field, format!("longer than {MAX_TEXT} characters")))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn submitted_at(object: &Map<String, Value>, now: OffsetDateTime) -> Result<String, Invalid> {
    let field = "submitted_at";
    let raw = match object.get(field) {
        None => return Err(invalid(field, "missing")),
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(invalid(field, "must be an RFC 3339 timestamp string")),
    };
    let at = OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|e| invalid(field, format!("not an RFC 3339 timestamp ({e})")))?;
    if at > now + MAX_FUTURE {
        return Err(invalid(field, "more than 5 minutes in the future"));
    }
    Ok(rfc3339(at.to_offset(time::UtcOffset::UTC)))
}

fn answers(object: &Map<String, Value>) -> Result<BTreeMap<String, u8>, Invalid> {
    let field = "answers";
    let items = match object.get(field) {
        None => return Err(invalid(field, "missing")),
        Some(Value::Object(items)) => items,
        Some(_) => return Err(invalid(field, "must be an object of item -> integer 0..=4")),
    };
    if items.is_empty() || items.len() > MAX_ANSWERS {
        return Err(invalid(
            field,
            format!("must have 1 to {MAX_ANSWERS} items"),
        ));
    }
    let mut answers = BTreeMap::new();
    for (item, value) in items {
        let name = format!("answers.{item}");
        if item.trim().is_empty() || item.chars().count() > MAX_TEXT {
            return Err(invalid(name, "item names must be 1 to 128 characters"));
        }
        match value.as_u64() {
            Some(n) if n <= MAX_ANSWER => {
                answers.insert(item.clone(), n as u8);
            }
            _ => return Err(invalid(name, "must be an integer from 0 to 4")),
        }
    }
    Ok(answers)
}

/// `t` as RFC 3339 text.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `ms` milliseconds since the Unix epoch as RFC 3339 text; `None` when out
/// of range.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(rfc3339)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-11-23T12:00:00Z", &Rfc3339).unwrap()
    }

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"report_id":"r-1","patient_id":" P-7 ","site_id":"site-a","instrument":"PHQ-9",
               "submitted_at":"2026-11-23T13:00:00+02:00","answers":{{"q1":0,"q2":4}}{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_valid_report_is_normalised() {
        let r = Report::parse(&body(""), now()).unwrap();
        assert_eq!(r.patient_id, "P-7");
        assert_eq!(r.site_id, "SITE-A");
        assert_eq!(r.submitted_at, "2026-11-23T11:00:00Z");
        assert_eq!(r.answers.len(), 2);
        let score = r.score(20);
        assert_eq!((score.total, score.max_item, score.alert), (4, 4, true));
        assert_eq!(score.alert_items, ["q2"]);
    }

    #[test]
    fn problems_name_their_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "body"),
            (b"[1]", "body"),
            (b"{\"report_id\":", "body"),
            (&body(r#","extra":1"#), "extra"),
        ];
        for (input, field) in cases {
            assert_eq!(Report::parse(input, now()).unwrap_err().field, *field);
        }
        let mut v: serde_json::Value = serde_json::from_slice(&body("")).unwrap();
        let check = |v: &serde_json::Value, field: &str| {
            let err = Report::parse(v.to_string().as_bytes(), now()).unwrap_err();
            assert_eq!(err.field, field, "{err:?}");
        };
        v["report_id"] = "has space".into();
        check(&v, "report_id");
        v["report_id"] = "x".repeat(129).into();
        check(&v, "report_id");
        v["report_id"] = "ok".into();
        v["patient_id"] = "   ".into();
        check(&v, "patient_id");
        v["patient_id"] = 5.into();
        check(&v, "patient_id");
        v["patient_id"] = "p".into();
        v["submitted_at"] = "yesterday".into();
        check(&v, "submitted_at");
        v["submitted_at"] = "2026-11-23T12:06:00Z".into();
        check(&v, "submitted_at");
        v["submitted_at"] = "2026-11-23T12:04:00Z".into();
        v["answers"] = serde_json::json!({});
        check(&v, "answers");
        v["answers"] = serde_json::json!({"q1": 5});
        check(&v, "answers.q1");
        v["answers"] = serde_json::json!({"q1": 1.5});
        check(&v, "answers.q1");
        v["answers"] = serde_json::json!({"q1": -1});
        check(&v, "answers.q1");
        v.as_object_mut().unwrap().remove("instrument");
        v["answers"] = serde_json::json!({"q1": 1});
        check(&v, "instrument");
    }

    #[test]
    fn the_content_hash_ignores_formatting_but_not_content() {
        let a = Report::parse(&body(""), now()).unwrap();
        let spaced = String::from_utf8(body("")).unwrap().replace(',', " , ");
        let b = Report::parse(spaced.as_bytes(), now()).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        let mut c = a.clone();
        c.answers.insert("q1".into(), 1);
        assert_ne!(a.content_hash(), c.content_hash());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            Report::parse(deep.as_bytes(), now()).unwrap_err().field,
            "body"
        );
    }
}
