//! An ePRO report: what a trial site posts, how it is validated, and how it
//! is scored.
//!
//! The body is read strictly, so that what we store is what any other
//! reader of the same bytes (a gateway, an audit) sees:
//!
//! 1. A key repeated in any object of the body is refused, naming it
//!    ([`Strict`]): `serde_json::Value` would keep the last one.
//! 2. Text is checked as it is stored: trimmed (and, for `site_id`,
//!    upper-cased) first, then measured in characters.
//! 3. Ids and item names carry no control character (C0, DEL, C1) and no
//!    bidirectional-formatting character ([`BIDI`]); item names that are
//!    equal once trimmed are refused.
//! 4. An error names a field, never a submitted value.
//!
//! Most bodies are plainly reports, and are read without building a tree
//! ([`Shape`]); any other body is read as a tree, which finds its first
//! problem, so both readings give the same answer for every body.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::instruments::{self, Scored};

/// Longest id, name or instrument accepted, in characters.
const MAX_TEXT: usize = 128;
/// Most answers in one report.
const MAX_ANSWERS: usize = 200;
/// The highest answer value (answers are 0..=4).
const MAX_ANSWER: u64 = 4;
/// How far in the future `submitted_at` may be (clock skew).
const MAX_FUTURE: Duration = Duration::minutes(5);
/// The earliest `submitted_at` accepted: anything before is a client's
/// broken clock or a default value, not a patient's answer.
const EARLIEST: OffsetDateTime = time::macros::datetime!(2000-01-01 0:00 UTC);
/// The bidirectional-formatting characters refused in ids and item names
/// (marks, embeddings, overrides, isolates): they make text display other
/// than it compares.
const BIDI: [char; 11] = [
    '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
    '\u{2067}', '\u{2068}', '\u{2069}',
];
/// A UTF-8 byte order mark, tolerated before the body.
const BOM: &[u8] = b"\xEF\xBB\xBF";

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
        let body = content(body)?;
        // Most bodies are well-formed reports: read them without a tree.
        if let Some(shape) = Shape::read(body) {
            let [report_id, patient_id, site_id, instrument, submitted_at] =
                shape.text.each_ref().map(|t| Field::Text(t));
            let items = shape.answers.iter().map(|(k, n)| (k.as_ref(), Some(*n)));
            return Report::checked(
                [report_id, patient_id, site_id, instrument, submitted_at],
                Answers::Items(items),
                now,
            );
        }
        Report::from_tree(body, now)
    }

    /// [`Report::parse`] of a body's [`content`] by way of a tree: any
    /// body, whatever its problem.
    fn from_tree(body: &[u8], now: OffsetDateTime) -> Result<Report, Invalid> {
        let Value::Object(object) = Strict::parse(body)? else {
            return Err(invalid("body", "expected a JSON object"));
        };
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(unknown.clone(), "unknown field"));
        }
        let text = |name| match object.get(name) {
            None => Field::Missing,
            Some(Value::String(s)) => Field::Text(s),
            Some(_) => Field::Other,
        };
        let answers = match object.get("answers") {
            None => Answers::Missing,
            Some(Value::Object(items)) => {
                Answers::Items(items.iter().map(|(k, v)| (k.as_str(), v.as_u64())))
            }
            Some(_) => Answers::Other,
        };
        Report::checked(
            [
                text("report_id"),
                text("patient_id"),
                text("site_id"),
                text("instrument"),
                text("submitted_at"),
            ],
            answers,
            now,
        )
    }

    /// The report from its fields as read (the five text fields in the
    /// order of [`FIELDS`], then the answers in key order), checked in
    /// that order: the first problem is the error.
    fn checked<'a>(
        [report_id, patient_id, site_id, instrument, at]: [Field<'_>; 5],
        answers: Answers<impl ExactSizeIterator<Item = (&'a str, Option<u64>)>>,
        now: OffsetDateTime,
    ) -> Result<Report, Invalid> {
        let report_id = text("report_id", report_id)?;
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
        let patient_id = at_most(MAX_TEXT, "patient_id", text("patient_id", patient_id)?)?;
        let site_id = at_most(
            MAX_TEXT,
            "site_id",
            text("site_id", site_id)?.to_uppercase(),
        )?;
        let instrument = at_most(MAX_TEXT, "instrument", text("instrument", instrument)?)?;
        let submitted_at = submitted_at(at, now)?;
        let answers = self::answers(answers)?;
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
        sha256_hex(&canonical)
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

// Until the pipeline calls it (issue 15, wired by the lead).
impl Report {
    /// Scores the answers: by the registry's rules when the instrument is
    /// registered ([`instruments::find`]), else generically
    /// ([`Report::score`], whose JSON shape is unchanged).
    ///
    /// # Errors
    ///
    /// The answers of a registered instrument that do not fit it, each
    /// naming its field (a report checked at intake with
    /// [`instruments::check`] has none).
    pub fn assess(&self, alert_total: u32) -> Result<Assessment, Vec<Invalid>> {
        match instruments::find(&self.instrument) {
            Some(instrument) => instrument.score(&self.answers).map(Assessment::Instrument),
            None => Ok(Assessment::Generic(self.score(alert_total))),
        }
    }
}

/// The outcome of [`Report::assess`]. It serialises as the inner score:
/// both carry `total`, `max_item` and `alert`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Assessment {
    /// A registered instrument's score: band and alert rules.
    Instrument(Scored),
    /// The generic score.
    Generic(Score),
}

impl Assessment {
    /// Whether the report needs a clinician's attention.
    pub fn alert(&self) -> bool {
        match self {
            Assessment::Instrument(s) => s.alert,
            Assessment::Generic(s) => s.alert,
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

/// The string `field`, trimmed, not empty, and free of control and bidi
/// characters (invariant 3). Its length is checked by the caller, on the
/// value it stores (invariant 2).
fn text(field: &str, value: Field<'_>) -> Result<String, Invalid> {
    match value {
        Field::Missing => Err(invalid(field, "missing")),
        Field::Text(s) => {
            let s = s.trim();
            if s.is_empty() {
                Err(invalid(field, "must not be empty"))
            } else if s.chars().any(forbidden) {
                Err(invalid(field, FORBIDDEN))
            } else {
                Ok(s.to_string())
            }
        }
        Field::Other => Err(invalid(field, "must be a string")),
    }
}

/// `value` (as it will be stored) when it is at most `max` characters.
fn at_most(max: usize, field: &str, value: String) -> Result<String, Invalid> {
    if value.chars().count() > max {
        Err(invalid(field, format!("longer than {max} characters")))
    } else {
        Ok(value)
    }
}

const FORBIDDEN: &str = "must not contain control or bidirectional-formatting characters";

/// A control (C0, DEL, C1) or bidirectional-formatting character.
fn forbidden(c: char) -> bool {
    c.is_control() || BIDI.contains(&c)
}

fn submitted_at(value: Field<'_>, now: OffsetDateTime) -> Result<String, Invalid> {
    let field = "submitted_at";
    let raw = match value {
        Field::Missing => return Err(invalid(field, "missing")),
        Field::Text(s) => s.trim(),
        Field::Other => return Err(invalid(field, "must be an RFC 3339 timestamp string")),
    };
    let at = OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|e| invalid(field, format!("not an RFC 3339 timestamp ({e})")))?;
    if at > now + MAX_FUTURE {
        return Err(invalid(field, "more than 5 minutes in the future"));
    }
    if at < EARLIEST {
        return Err(invalid(field, "before 2000-01-01T00:00:00Z"));
    }
    Ok(rfc3339(at.to_offset(time::UtcOffset::UTC)))
}

fn answers<'a>(
    value: Answers<impl ExactSizeIterator<Item = (&'a str, Option<u64>)>>,
) -> Result<BTreeMap<String, u8>, Invalid> {
    let field = "answers";
    let items = match value {
        Answers::Missing => return Err(invalid(field, "missing")),
        Answers::Items(items) => items,
        Answers::Other => return Err(invalid(field, "must be an object of item -> integer 0..=4")),
    };
    if items.len() == 0 || items.len() > MAX_ANSWERS {
        return Err(invalid(
            field,
            format!("must have 1 to {MAX_ANSWERS} items"),
        ));
    }
    let mut answers = BTreeMap::new();
    for (item, value) in items {
        // The field as sent, so that the client can find it (made only for
        // an error: most reports have none).
        let name = || format!("answers.{item}");
        let trimmed = item.trim();
        if trimmed.is_empty() || trimmed.chars().count() > MAX_TEXT {
            return Err(invalid(
                name(),
                "item names must be 1 to 128 characters, trimmed",
            ));
        }
        if trimmed.chars().any(forbidden) {
            return Err(invalid(name(), FORBIDDEN));
        }
        let answer = match value {
            Some(n) if n <= MAX_ANSWER => n as u8,
            _ => return Err(invalid(name(), "must be an integer from 0 to 4")),
        };
        if answers.insert(trimmed.to_string(), answer).is_some() {
            return Err(invalid(
                name(),
                "another item has the same name once whitespace is trimmed",
            ));
        }
    }
    Ok(answers)
}

/// The body without a leading byte order mark; an error when nothing but
/// whitespace is left.
fn content(body: &[u8]) -> Result<&[u8], Invalid> {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("body", "the body is empty; expected a JSON object"));
    }
    Ok(body)
}

/// A text field of the body, as the checks see it.
#[derive(Clone, Copy)]
enum Field<'a> {
    Missing,
    Text(&'a str),
    /// Present, but not a string.
    Other,
}

/// The body's `answers`: each item's name and its value when that is a
/// non-negative integer, in the order of their names.
enum Answers<I> {
    Missing,
    Items(I),
    /// Present, but not an object.
    Other,
}

/// A body in the shape of a report, read without building a tree: one
/// object holding each of [`FIELDS`] exactly once and nothing else, the
/// first five strings, `answers` an object of distinct names with
/// non-negative integer values, and nothing after it. [`Shape::read`]
/// gives up on anything else (a syntax error too), and the body is read
/// again as a tree ([`Strict`]), which finds the same problem it always
/// did: the two readings agree on every body this one accepts.
struct Shape<'a> {
    /// The first five of [`FIELDS`], in their order.
    text: [Cow<'a, str>; 5],
    /// Sorted by name, as a `serde_json::Map` iterates.
    answers: Vec<(Cow<'a, str>, u64)>,
}

impl<'a> Shape<'a> {
    fn read(body: &'a [u8]) -> Option<Shape<'a>> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let shape = de.deserialize_map(ShapeVisitor).ok()?;
        de.end().ok()?;
        Some(shape)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a report")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        let mut text: [Option<Cow<'de, str>>; 5] = Default::default();
        let mut answers = None;
        while let Some(key) = map.next_key_seed(TextSeed)? {
            match FIELDS.iter().position(|f| *f == key) {
                Some(5) if answers.is_none() => answers = Some(map.next_value_seed(AnswersSeed)?),
                Some(i) if i < 5 && text[i].is_none() => {
                    text[i] = Some(map.next_value_seed(TextSeed)?);
                }
                // Unknown or repeated: for the tree to name.
                _ => return Err(A::Error::custom("not the shape of a report")),
            }
        }
        let missing = || A::Error::custom("a field is missing");
        let [a, b, c, d, e] = text;
        Ok(Shape {
            text: [
                a.ok_or_else(missing)?,
                b.ok_or_else(missing)?,
                c.ok_or_else(missing)?,
                d.ok_or_else(missing)?,
                e.ok_or_else(missing)?,
            ],
            answers: answers.ok_or_else(missing)?,
        })
    }
}

/// A string, borrowed from the body when it has no escapes.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Cow<'de, str>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// `answers`: names and non-negative integers (a float, a negative number
/// or anything else gives up, as `Value::as_u64` would be `None`).
struct AnswersSeed;

impl<'de> DeserializeSeed<'de> for AnswersSeed {
    type Value = Vec<(Cow<'de, str>, u64)>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AnswersSeed {
    type Value = Vec<(Cow<'de, str>, u64)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("answers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(map.size_hint().unwrap_or(16).min(MAX_ANSWERS));
        while let Some(name) = map.next_key_seed(TextSeed)? {
            items.push((name, map.next_value::<u64>()?));
            if items.len() > MAX_ANSWERS {
                return Err(A::Error::custom("too many answers"));
            }
        }
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if items.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(A::Error::custom("a repeated name"));
        }
        Ok(items)
    }
}

/// Parses `body` as JSON strictly (invariant 1 of the module: a repeated
/// key is an error naming its path, `item.0.linkId`), for the other
/// formats we read (FHIR).
pub(super) fn strict_json(body: &[u8]) -> Result<Value, Invalid> {
    Strict::parse(body)
}

/// Reads a JSON document as `serde_json::Value` does, except that a key
/// repeated in an object is an error naming the key (invariant 1). The
/// nesting limit is `serde_json`'s own (128), checked by its deserializer.
struct Strict<'a> {
    /// Set to the repeated key when one is found; each enclosing object or
    /// array prefixes its own key or index as the error unwinds, so the
    /// path is built only on that error.
    repeated: &'a Cell<Option<String>>,
}

impl Strict<'_> {
    fn parse(body: &[u8]) -> Result<Value, Invalid> {
        let repeated = Cell::new(None);
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = Strict {
            repeated: &repeated,
        }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
        parsed.map_err(|e| match repeated.take() {
            Some(path) => invalid(path, "duplicate key"),
            None => invalid("body", format!("invalid JSON: {e}")),
        })
    }

    /// Prefixes the repeated key's path (if that is the error) with `at`.
    fn within(&self, at: impl fmt::Display) {
        if let Some(path) = self.repeated.take() {
            self.repeated.set(Some(format!("{at}.{path}")));
        }
    }

    fn child(&self) -> Strict<'_> {
        Strict {
            repeated: self.repeated,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(self.child()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.within(items.len());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.repeated.set(Some(key));
                return Err(A::Error::custom("duplicate key"));
            }
            match map.next_value_seed(self.child()) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(e) => {
                    self.within(&key);
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(object))
    }
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

/// SHA-256 of `bytes`, in lower-case hex (a body's, a report's content, a
/// token's).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`: a digest of every request is written so, and
/// `write!` with `{:02x}` per byte cost as much as the SHA-256 itself.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
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
    fn a_repeated_key_is_refused_naming_its_path() {
        let cases = [
            (r#","answers":{"q1":1}"#, "answers"),
            (r#","report_id":"r-2""#, "report_id"),
        ];
        for (extra, field) in cases {
            let err = Report::parse(&body(extra), now()).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.message.as_str()),
                (field, "duplicate key")
            );
        }
        let nested = String::from_utf8(body(""))
            .unwrap()
            .replace(r#""q1":0"#, r#""q1":0,"q\u0031":1"#);
        assert_eq!(
            Report::parse(nested.as_bytes(), now()).unwrap_err().field,
            "answers.q1"
        );
        let deep = String::from_utf8(body(r#","x":[{},[{"a":1,"b":{"c":1,"c":2}}]]"#)).unwrap();
        let err = Report::parse(deep.as_bytes(), now()).unwrap_err();
        assert_eq!(err.field, "x.1.0.b.c");
        // Other errors inside nested values are still about the body.
        let broken = String::from_utf8(body(r#","x":[{"a":1,"b":}]"#)).unwrap();
        assert_eq!(
            Report::parse(broken.as_bytes(), now()).unwrap_err().field,
            "body"
        );
    }

    #[test]
    fn text_is_checked_as_stored() {
        let mut v: serde_json::Value = serde_json::from_slice(&body("")).unwrap();
        let check = |v: &serde_json::Value| Report::parse(v.to_string().as_bytes(), now());
        v["site_id"] = "ß".repeat(64).into();
        assert_eq!(check(&v).unwrap().site_id, "SS".repeat(64));
        v["site_id"] = "ß".repeat(65).into();
        assert_eq!(check(&v).unwrap_err().field, "site_id");
        v["site_id"] = "s".into();
        for bad in [
            '\0', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}', '\u{200e}', '\u{202e}', '\u{2069}',
        ] {
            for field in ["report_id", "patient_id", "site_id", "instrument"] {
                let mut w = v.clone();
                w[field] = format!("a{bad}b").into();
                assert_eq!(check(&w).unwrap_err().field, field, "{bad:?}");
            }
            let mut w = v.clone();
            w["answers"] = serde_json::json!({ format!("q{bad}"): 1 });
            assert_eq!(check(&w).unwrap_err().field, format!("answers.q{bad}"));
        }
        v["answers"] = serde_json::json!({"q1": 1, " q1\t": 2});
        // Either name is the field at fault; the later one (in key order) is named.
        assert_eq!(check(&v).unwrap_err().field, "answers.q1");
        v["answers"] = serde_json::json!({" q1 ": 2});
        assert_eq!(
            check(&v).unwrap().answers,
            BTreeMap::from([("q1".into(), 2)])
        );
    }

    #[test]
    fn submitted_at_is_not_before_2000() {
        let mut v: serde_json::Value = serde_json::from_slice(&body("")).unwrap();
        for early in [
            "0000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2000-01-01T00:59:59+01:00",
        ] {
            v["submitted_at"] = early.into();
            let err = Report::parse(v.to_string().as_bytes(), now()).unwrap_err();
            assert_eq!(err.field, "submitted_at", "{early}");
        }
        v["submitted_at"] = "2000-01-01T01:00:00+01:00".into();
        let r = Report::parse(v.to_string().as_bytes(), now()).unwrap();
        assert_eq!(r.submitted_at, "2000-01-01T00:00:00Z");
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn a_leading_bom_is_tolerated() {
        let with_bom = [BOM, &body("")].concat();
        assert_eq!(
            Report::parse(&with_bom, now()).unwrap(),
            Report::parse(&body(""), now()).unwrap()
        );
        assert_eq!(Report::parse(BOM, now()).unwrap_err().field, "body");
        let twice = [BOM, BOM, &body("")].concat();
        assert_eq!(Report::parse(&twice, now()).unwrap_err().field, "body");
    }

    #[test]
    fn registered_instruments_are_scored_by_the_registry_others_generically() {
        let mut r = Report::parse(&body(""), now()).unwrap();
        r.answers = (1..=9).map(|i| (format!("q{i}"), 0)).collect();
        r.answers.insert("q9".into(), 1);
        let Assessment::Instrument(scored) = r.assess(20).unwrap() else {
            panic!("PHQ-9 is registered");
        };
        assert_eq!(
            (scored.total, scored.band, scored.alert),
            (1, "minimal", true)
        );
        // The generic score would not alert on an item at 1.
        assert!(!r.score(20).alert);
        r.instrument = "EQ-5D".into();
        let generic = r.assess(20).unwrap();
        assert_eq!(generic, Assessment::Generic(r.score(20)));
        assert_eq!(
            serde_json::to_value(&generic).unwrap(),
            serde_json::json!({"total": 1, "max_item": 1, "alert": false, "alert_items": []})
        );
        // A registered instrument's answers that do not fit it are errors.
        r.instrument = "PHQ-9".into();
        r.answers.remove("q3");
        let problems = r.assess(20).unwrap_err();
        assert_eq!(problems[0].field, "answers.q3");
    }

    /// Bodies near a valid one: every prefix, every one-byte deletion,
    /// and edits a client might make, valid or not.
    fn near_misses() -> Vec<Vec<u8>> {
        let valid = body("");
        let mut bodies: Vec<Vec<u8>> = (0..=valid.len()).map(|n| valid[..n].to_vec()).collect();
        for i in 0..valid.len() {
            let mut b = valid.clone();
            b.remove(i);
            bodies.push(b);
        }
        let text = String::from_utf8(valid).unwrap();
        let edits: &[(&str, &str)] = &[
            (r#""q1":0"#, r#""q1":0.0"#),
            (r#""q1":0"#, r#""q1":-0"#),
            (r#""q1":0"#, r#""q1":-1"#),
            (r#""q1":0"#, r#""q1":1e0"#),
            (r#""q1":0"#, r#""q1":18446744073709551616"#),
            (r#""q1":0"#, r#""q1":"0""#),
            (r#""q1":0"#, r#""q1":null"#),
            (r#""q1":0"#, r#""q1":{"a":1,"a":1}"#),
            (r#""q1":0"#, r#""q1":7"#),
            (r#""q1":0"#, r#""q\u0031":0"#),
            (r#""q1":0"#, r#""q2":0"#),
            (r#""q1":0"#, r#"" q2 ":0"#),
            (r#""q1":0"#, r#""":0"#),
            (r#""q1":0"#, r#""q\u0000":0"#),
            (r#"{"q1":0,"q2":4}"#, "{}"),
            (r#"{"q1":0,"q2":4}"#, "[]"),
            (r#"{"q1":0,"q2":4}"#, "4"),
            (r#""r-1""#, r#""r\u002d1""#),
            (r#""r-1""#, r#""r 1""#),
            (r#""r-1""#, "null"),
            (r#""r-1""#, r#"["r-1"]"#),
            (r#"" P-7 ""#, r#""P-\u00077""#),
            (r#"" P-7 ""#, r#""P-\u202e7""#),
            (r#""site-a""#, r#""straße""#),
            (r#""PHQ-9""#, r#""""#),
            (r#""PHQ-9""#, r#""  ""#),
            ("+02:00", "+02:00x"),
            ("2026-11-23T13:00:00+02:00", "2026-11-23T14:06:00+02:00"),
            ("2026-11-23T13:00:00+02:00", "1999-12-31T23:59:59Z"),
            (r#""report_id""#, r#""report_id ""#),
            (r#""report_id""#, r#""patient_id""#),
            (r#""answers""#, r#""instrument""#),
            ("{\"report_id", " \n{ \"report_id"),
        ];
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            bodies.push(text.replacen(from, to, 1).into_bytes());
        }
        for extra in [
            "",
            " ",
            r#","x":1"#,
            r#","x":{"a":1,"a":2}"#,
            r#","answers":{"q1":1}"#,
            "}",
            ",",
        ] {
            bodies.push(format!("{text}{extra}").into_bytes());
            bodies.push(body(extra));
        }
        let many = |n: usize| {
            let items: Vec<String> = (0..n).map(|i| format!(r#""i{i}":1"#)).collect();
            text.replace(r#""q1":0,"q2":4"#, &items.join(","))
                .into_bytes()
        };
        bodies.extend([many(MAX_ANSWERS), many(MAX_ANSWERS + 1)]);
        bodies.extend([
            b"[1]".to_vec(),
            b"{}".to_vec(),
            b"null".to_vec(),
            b"\"x\"".to_vec(),
        ]);
        bodies
    }

    #[test]
    fn reading_without_a_tree_agrees_with_the_tree_on_every_body() {
        let (mut read, mut gave_up) = (0, 0);
        for body in near_misses() {
            let shown = String::from_utf8_lossy(&body).into_owned();
            match Shape::read(&body) {
                Some(_) => read += 1,
                None => gave_up += 1,
            }
            assert_eq!(
                Report::parse(&body, now()),
                content(&body).and_then(|b| Report::from_tree(b, now())),
                "{shown}"
            );
        }
        // Both readings were exercised, valid reports and refused ones.
        assert!(read >= 20, "{read} read without a tree");
        assert!(gave_up >= 200, "{gave_up} given up");
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
