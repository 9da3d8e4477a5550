//! A report's score as a FHIR R4 `Observation`.

use serde_json::{Value, json};

use super::{ALERT_SYSTEM, BAND_SYSTEM, IssueCode, LOINC, OperationOutcome};
use crate::serve::instruments;

/// HL7 v3 observation interpretation (`AA`, critical abnormal, marks an
/// alert).
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The score of report `report_id` as an R4 `Observation`: coded with the
/// instrument's total LOINC code (44261-6 for PHQ-9; text only for an
/// instrument we do not know), `valueInteger` the total, `derivedFrom`
/// `QuestionnaireResponse/{report_id}`, status `final`.
///
/// `interpretation` carries the severity band (a coding in
/// [`BAND_SYSTEM`]) and, when an alert fired, HL7 `AA` (critical abnormal).
/// Each alert that fired is a `component` coded with its rule in
/// [`ALERT_SYSTEM`] (display: the rule's description), `valueBoolean`
/// true; an item rule names its item's LOINC code in the component's text.
/// `result` is the report's stored result (`{"score": …, "analysis": …}`)
/// or its score alone.
///
/// # Errors
///
/// A 404 `OperationOutcome` when `result` holds no score (not processed).
pub fn observation(
    report_id: &str,
    result: &Value,
    instrument: &str,
) -> Result<Value, OperationOutcome> {
    let score = result.get("score").unwrap_or(result);
    let Some(total) = score.get("total").and_then(Value::as_u64) else {
        return Err(OperationOutcome::error(
            404,
            IssueCode::NotFound,
            None,
            format!("report {report_id} has no score yet"),
        ));
    };
    let registered = instruments::find(instrument);
    let code = match registered {
        Some(i) => json!({
            "coding": [{ "system": LOINC, "code": i.total.code, "display": i.total.display }],
            "text": format!("{} total score", i.name),
        }),
        None => json!({ "text": format!("{instrument} total score") }),
    };
    let alert = score.get("alert").and_then(Value::as_bool).unwrap_or(false);
    let mut interpretation = Vec::new();
    if let (Some(label), Some(band)) = (
        score.get("band").and_then(Value::as_str),
        score.get("band_code").and_then(Value::as_str),
    ) {
        interpretation.push(json!({
            "coding": [{ "system": BAND_SYSTEM, "code": band, "display": label }],
            "text": label,
        }));
    }
    if alert {
        interpretation.push(json!({
            "coding": [{ "system": INTERPRETATION, "code": "AA", "display": "Critical abnormal" }],
            "text": "safety alert",
        }));
    }
    let mut components = Vec::new();
    for fired in score
        .get("alerts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let rule = fired.get("rule").and_then(Value::as_str).unwrap_or("alert");
        let description = fired
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or(rule);
        let item = fired
            .get("item")
            .and_then(Value::as_str)
            .and_then(|name| registered.and_then(|i| i.item(name)));
        let text = match item {
            Some(item) => format!("{description}: item {} ({})", item.name, item.loinc),
            None => description.to_string(),
        };
        components.push(json!({
            "code": {
                "coding": [{ "system": ALERT_SYSTEM, "code": rule, "display": description }],
                "text": text,
            },
            "valueBoolean": true,
        }));
    }
    if alert && components.is_empty() {
        // The generic score: an item at 3 or more, or the total above the
        // threshold.
        components.push(json!({
            "code": {
                "coding": [{ "system": ALERT_SYSTEM, "code": "generic", "display": "an item at 3 or more, or the total above the alert threshold" }],
                "text": "generic alert",
            },
            "valueBoolean": true,
        }));
    }
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": CATEGORY, "code": "survey", "display": "Survey" }] }],
        "code": code,
        "valueInteger": total,
        "derivedFrom": [{ "reference": format!("QuestionnaireResponse/{report_id}") }],
    });
    if !interpretation.is_empty() {
        observation["interpretation"] = interpretation.into();
    }
    if !components.is_empty() {
        observation["component"] = components.into();
    }
    Ok(observation)
}
