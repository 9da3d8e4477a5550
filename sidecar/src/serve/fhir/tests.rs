use serde_json::json;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;

use super::*;
use crate::serve::report::Assessment;

const PHQ9_QR: &str =
    include_str!("../../../../examples/data/fhir/phq9-questionnaire-response.json");
const GAD7_QR: &str =
    include_str!("../../../../examples/data/fhir/gad7-questionnaire-response.json");
const BATCH: &str = include_str!("../../../../examples/data/fhir/batch-bundle.json");

fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2026-11-23T12:00:00Z", &Rfc3339).unwrap()
}

fn parse(v: &Value) -> Result<Report, OperationOutcome> {
    parse_questionnaire_response(v.to_string().as_bytes(), now()).map(|(r, _)| r)
}

fn scored(report: &Report) -> instruments::Scored {
    match report.assess(20).unwrap() {
        Assessment::Instrument(s) => s,
        Assessment::Generic(s) => panic!("scored generically: {s:?}"),
    }
}

/// The single issue of `outcome`: (code, expression).
#[track_caller]
fn issue(outcome: &OperationOutcome) -> (IssueCode, &str) {
    assert_eq!(outcome.issues.len(), 1, "{outcome:?}");
    assert_eq!(outcome.http_status(), 400);
    let issue = &outcome.issues[0];
    assert!(issue.diagnostics.as_ref().is_some_and(|d| !d.is_empty()));
    (issue.code, issue.expression[0].as_str())
}

/// A PHQ-9 response with valueInteger answers `q1..q9`.
fn phq9(answers: [u8; 9]) -> Value {
    json!({
        "resourceType": "QuestionnaireResponse",
        "id": "r-1",
        "extension": [{ "url": SITE_EXTENSION, "valueString": "site-a" }],
        "questionnaire": "PHQ-9",
        "status": "completed",
        "subject": { "reference": "Patient/P-1" },
        "authored": "2026-11-23T09:00:00Z",
        "item": answers.iter().enumerate().map(|(i, a)| json!({
            "linkId": format!("q{}", i + 1),
            "answer": [{ "valueInteger": a }],
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn the_phq9_example_nested_and_loinc_coded_is_read_and_scored() {
    let (report, raw) = parse_questionnaire_response(PHQ9_QR.as_bytes(), now()).unwrap();
    assert_eq!(raw, PHQ9_QR, "the raw resource is the body, verbatim");
    let token = "https://epro.example.org/responses|2026-11-23-0001";
    assert_eq!(
        report.report_id,
        format!(
            "qr-sha256:{}",
            report::hex(&Sha256::digest(token.as_bytes()))
        )
    );
    assert_eq!(report.patient_id, "P-1001");
    assert_eq!(report.site_id, "SITE-12");
    assert_eq!(report.instrument, "PHQ-9");
    assert_eq!(report.submitted_at, "2026-11-23T08:30:00Z");
    // LOINC link ids stored under our names; q9 was nested in q8's answer,
    // the items in a group; the form's own total (44261-6) is skipped.
    let answers: Vec<(&str, u8)> = report
        .answers
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        answers,
        [
            ("q1", 1),
            ("q2", 2),
            ("q3", 1),
            ("q4", 2),
            ("q5", 0),
            ("q6", 1),
            ("q7", 2),
            ("q8", 0),
            ("q9", 1)
        ]
    );
    let s = scored(&report);
    assert_eq!((s.total, s.band), (10, "moderate"));
    assert_eq!(
        s.alerts.iter().map(|a| a.rule).collect::<Vec<_>>(),
        ["phq9-item9"]
    );
}

#[test]
fn the_gad7_example_with_integers_is_read_and_scored() {
    let (report, _) = parse_questionnaire_response(GAD7_QR.as_bytes(), now()).unwrap();
    assert_eq!(report.report_id, "gad7-2026-11-23-0002");
    assert_eq!(report.instrument, "GAD-7");
    assert_eq!(report.site_id, "SITE-12");
    let s = scored(&report);
    assert_eq!((s.total, s.band, s.alert), (16, "severe", true));
    assert_eq!(s.alerts[0].rule, "gad7-severe");
}

#[test]
fn phq9_bands_at_every_boundary_through_fhir() {
    for (answers, total, band) in [
        ([1, 1, 1, 1, 0, 0, 0, 0, 0], 4, "minimal"),
        ([1, 1, 1, 1, 1, 0, 0, 0, 0], 5, "mild"),
        ([3, 3, 3, 0, 0, 0, 0, 0, 0], 9, "mild"),
        ([3, 3, 3, 1, 0, 0, 0, 0, 0], 10, "moderate"),
        ([3, 3, 3, 3, 2, 0, 0, 0, 0], 14, "moderate"),
        ([3, 3, 3, 3, 3, 0, 0, 0, 0], 15, "moderately severe"),
        ([3, 3, 3, 3, 3, 3, 1, 0, 0], 19, "moderately severe"),
        ([3, 3, 3, 3, 3, 3, 2, 0, 0], 20, "severe"),
    ] {
        let s = scored(&parse(&phq9(answers)).unwrap());
        assert_eq!((s.total, s.band), (total, band), "{answers:?}");
        assert_eq!(s.alert, total >= 20, "{answers:?}");
    }
}

#[test]
fn item_9_alerts_at_a_total_of_1_through_fhir() {
    let s = scored(&parse(&phq9([0, 0, 0, 0, 0, 0, 0, 0, 1])).unwrap());
    assert_eq!((s.total, s.band, s.alert), (1, "minimal", true));
    assert_eq!(s.alerts[0].item, Some("q9"));
}

#[test]
fn in_progress_is_refused() {
    for status in ["in-progress", "stopped", "entered-in-error"] {
        let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
        v["status"] = status.into();
        let err = parse(&v).unwrap_err();
        assert_eq!(
            issue(&err),
            (IssueCode::Value, "QuestionnaireResponse.status"),
            "{status}"
        );
    }
    let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
    v.as_object_mut().unwrap().remove("status");
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Required, "QuestionnaireResponse.status")
    );
}

#[test]
fn missing_items_are_all_named() {
    let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
    let items = v["item"].as_array_mut().unwrap();
    items.remove(6);
    items.remove(1);
    let err = parse(&v).unwrap_err();
    assert_eq!(err.http_status(), 400);
    let named: Vec<_> = err
        .issues
        .iter()
        .map(|i| (i.code, i.expression[0].as_str()))
        .collect();
    assert_eq!(
        named,
        [
            (
                IssueCode::Required,
                "QuestionnaireResponse.item.where(linkId='68509-9')"
            ),
            (
                IssueCode::Required,
                "QuestionnaireResponse.item.where(linkId='69736-7')"
            ),
        ]
    );
    // No answered item at all: every item named.
    v["item"] = json!([]);
    assert_eq!(parse(&v).unwrap_err().issues.len(), 7);
}

#[test]
fn out_of_range_answers_are_refused() {
    let err = parse(&phq9([0, 0, 4, 0, 0, 0, 0, 0, 0])).unwrap_err();
    assert_eq!(
        issue(&err),
        (
            IssueCode::Value,
            "QuestionnaireResponse.item[2].answer[0].valueInteger"
        )
    );
    let mut v = phq9([0; 9]);
    for bad in [json!(-1), json!(1.5), json!("1")] {
        v["item"][3]["answer"][0]["valueInteger"] = bad.clone();
        let err = parse(&v).unwrap_err();
        assert_eq!(
            issue(&err),
            (
                IssueCode::Value,
                "QuestionnaireResponse.item[3].answer[0].valueInteger"
            ),
            "{bad}"
        );
    }
}

#[test]
fn an_unknown_answer_code_is_named() {
    let mut v: Value = serde_json::from_str(PHQ9_QR).unwrap();
    v["item"][0]["item"][3]["answer"][0]["valueCoding"]["code"] = "LA6572-7".into();
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (
            IssueCode::CodeInvalid,
            "QuestionnaireResponse.item[0].item[3].answer[0].valueCoding"
        )
    );
    // In a nested answer's item too.
    let mut v: Value = serde_json::from_str(PHQ9_QR).unwrap();
    v["item"][0]["item"][7]["answer"][0]["item"][0]["answer"][0]["valueCoding"]["system"] =
        "http://snomed.info/sct".into();
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (
            IssueCode::CodeInvalid,
            "QuestionnaireResponse.item[0].item[7].answer[0].item[0].answer[0].valueCoding.system"
        )
    );
}

#[test]
fn answers_are_one_per_item_with_a_supported_value() {
    let mut v = phq9([0; 9]);
    v["item"][1]["answer"] = json!([{ "valueInteger": 1 }, { "valueInteger": 2 }]);
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Value, "QuestionnaireResponse.item[1].answer[1]")
    );
    let mut v = phq9([0; 9]);
    v["item"][1]["answer"] = json!([{ "valueString": "2" }]);
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (
            IssueCode::NotSupported,
            "QuestionnaireResponse.item[1].answer[0].valueString"
        )
    );
    // The same item under its LOINC code and its name.
    let mut v = phq9([0; 9]);
    v["item"][1]["linkId"] = "44250-9".into();
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Invalid, "QuestionnaireResponse.item[1].linkId")
    );
    let mut v = phq9([0; 9]);
    v["item"][1].as_object_mut().unwrap().remove("linkId");
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Required, "QuestionnaireResponse.item[1].linkId")
    );
}

#[test]
fn report_fields_are_named_in_fhir_terms() {
    let cases: [(&str, Value, IssueCode, &str); 8] = [
        (
            "extension",
            json!([]),
            IssueCode::Required,
            "QuestionnaireResponse.extension('http://quiesce.dev/fhir/StructureDefinition/site')",
        ),
        (
            "subject",
            json!({ "reference": "Group/7" }),
            IssueCode::Value,
            "QuestionnaireResponse.subject.reference",
        ),
        (
            "subject",
            json!({ "display": "someone" }),
            IssueCode::Required,
            "QuestionnaireResponse.subject.reference",
        ),
        (
            "authored",
            json!("2026-11"),
            IssueCode::Value,
            "QuestionnaireResponse.authored",
        ),
        (
            "authored",
            json!("2026-11-24T12:00:00Z"),
            IssueCode::Value,
            "QuestionnaireResponse.authored",
        ),
        (
            "questionnaire",
            Value::Null,
            IssueCode::Required,
            "QuestionnaireResponse.questionnaire",
        ),
        (
            "identifier",
            json!({ "system": "urn:x" }),
            IssueCode::Required,
            "QuestionnaireResponse.identifier.value",
        ),
        (
            "resourceType",
            json!("Patient"),
            IssueCode::NotSupported,
            "resourceType",
        ),
    ];
    for (element, value, code, expression) in cases {
        let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(element);
        } else {
            v[element] = value;
        }
        assert_eq!(
            issue(&parse(&v).unwrap_err()),
            (code, expression),
            "{element}"
        );
    }
    let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
    v["subject"] = json!({ "reference": "Patient/P\u{202e}1" });
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Value, "QuestionnaireResponse.subject")
    );
    // A wrong shape is a structure error on the resource.
    v["item"] = json!({ "linkId": "q1" });
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Structure, "QuestionnaireResponse")
    );
}

#[test]
fn a_repeated_key_is_a_structure_error_naming_its_path() {
    let body = PHQ9_QR.replacen(
        r#""linkId": "44250-9","#,
        r#""linkId": "44250-9", "linkId": "q1","#,
        1,
    );
    let err = parse_questionnaire_response(body.as_bytes(), now()).unwrap_err();
    assert_eq!(
        issue(&err),
        (
            IssueCode::Structure,
            "QuestionnaireResponse.item[0].item[0].linkId"
        )
    );
    let err = parse_questionnaire_response(b"{", now()).unwrap_err();
    assert_eq!(issue(&err), (IssueCode::Structure, "QuestionnaireResponse"));
}

#[test]
fn the_report_id_comes_from_the_identifier_or_the_id() {
    let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
    let id = |v: &Value| parse(v).unwrap().report_id;
    // A value without a system that fits our charset: as is.
    assert_eq!(id(&v), "gad7-2026-11-23-0002");
    // Otherwise hashed, deterministically, and within 128 characters.
    v["identifier"]["value"] = "has space".into();
    let spaced = id(&v);
    assert!(
        spaced.starts_with("qr-sha256:") && spaced.len() == 74,
        "{spaced}"
    );
    assert_eq!(spaced, id(&v));
    v["identifier"] = json!({ "system": "urn:a", "value": "1" });
    let a = id(&v);
    v["identifier"] = json!({ "system": "urn:b", "value": "1" });
    assert_ne!(a, id(&v), "the system is part of the key");
    // A value that looks like a hashed id is hashed too (no collisions).
    v["identifier"] = json!({ "value": a });
    assert_ne!(id(&v), a);
    // No identifier: the resource id; neither: refused.
    v.as_object_mut().unwrap().remove("identifier");
    v["id"] = "abc-1.2".into();
    assert_eq!(id(&v), "abc-1.2");
    v.as_object_mut().unwrap().remove("id");
    assert_eq!(
        issue(&parse(&v).unwrap_err()),
        (IssueCode::Required, "QuestionnaireResponse.identifier")
    );
}

#[test]
fn the_patient_and_the_site_have_several_forms() {
    let mut v: Value = serde_json::from_str(GAD7_QR).unwrap();
    v["subject"] = json!({ "reference": "https://ehr.example.org/fhir/Patient/77" });
    assert_eq!(parse(&v).unwrap().patient_id, "77");
    v["subject"] = json!({ "identifier": { "system": "urn:mrn", "value": "MRN-5" } });
    assert_eq!(parse(&v).unwrap().patient_id, "MRN-5");
    v["extension"] = json!([
        { "url": "http://example.org/other", "valueString": "x" },
        { "url": SITE_EXTENSION, "valueIdentifier": { "value": "s-9" } },
    ]);
    assert_eq!(parse(&v).unwrap().site_id, "S-9");
}

#[test]
fn unknown_instruments_take_integers_under_their_link_ids() {
    let v = json!({
        "resourceType": "QuestionnaireResponse",
        "id": "x-1",
        "extension": [{ "url": SITE_EXTENSION, "valueString": "site-a" }],
        "questionnaire": "https://example.org/Questionnaire/eq-5d|2",
        "status": "completed",
        "subject": { "reference": "Patient/P-1" },
        "authored": "2026-11-23T09:00:00Z",
        "item": [{ "linkId": "g", "item": [
            { "linkId": "mobility", "answer": [{ "valueInteger": 4 }] },
            { "linkId": "pain", "answer": [{ "valueInteger": 1 }] },
        ]}],
    });
    let report = parse(&v).unwrap();
    assert_eq!(report.instrument, "https://example.org/Questionnaire/eq-5d");
    assert_eq!(
        report.answers,
        BTreeMap::from([("mobility".into(), 4), ("pain".into(), 1)])
    );
    assert!(matches!(report.assess(20), Ok(Assessment::Generic(_))));
    // Our generic range (0..=4), named in FHIR terms.
    let mut high = v.clone();
    high["item"][0]["item"][1]["answer"][0]["valueInteger"] = 5.into();
    assert_eq!(
        issue(&parse(&high).unwrap_err()),
        (IssueCode::Value, "QuestionnaireResponse.item[0].item[1]")
    );
    // Codes need an instrument that defines them.
    let mut coded = v;
    coded["item"][0]["item"][1]["answer"][0] =
        json!({ "valueCoding": { "system": LOINC, "code": "LA6568-5" } });
    assert_eq!(
        issue(&parse(&coded).unwrap_err()),
        (
            IssueCode::NotSupported,
            "QuestionnaireResponse.item[0].item[1].answer[0].valueCoding"
        )
    );
}

#[test]
fn the_batch_example_answers_each_entry() {
    let outcomes = parse_bundle(BATCH.as_bytes(), now()).unwrap();
    assert_eq!(outcomes.len(), 3);
    let (good, raw) = outcomes[0].as_ref().unwrap();
    assert_eq!(good.report_id, "offline-0001");
    assert_eq!(
        serde_json::from_str::<Value>(raw).unwrap()["resourceType"],
        "QuestionnaireResponse"
    );
    // The duplicate: same id, same content (the store answers duplicate).
    let (again, _) = outcomes[1].as_ref().unwrap();
    assert_eq!(
        (&again.report_id, again.content_hash()),
        (&good.report_id, good.content_hash())
    );
    // The bad one names what is wrong, the others are untouched.
    let bad = outcomes[2].as_ref().unwrap_err();
    assert_eq!(
        issue(bad),
        (
            IssueCode::Required,
            "QuestionnaireResponse.item.where(linkId='44260-8')"
        )
    );
}

#[test]
fn only_batches_of_questionnaire_responses_are_taken() {
    let bundle: Value = serde_json::from_str(BATCH).unwrap();
    let whole = |v: &Value| parse_bundle(v.to_string().as_bytes(), now());
    let mut v = bundle.clone();
    v["type"] = "transaction".into();
    assert_eq!(
        issue(&whole(&v).unwrap_err()),
        (IssueCode::NotSupported, "Bundle.type")
    );
    v["type"] = "collection".into();
    assert_eq!(
        issue(&whole(&v).unwrap_err()),
        (IssueCode::Value, "Bundle.type")
    );
    let mut v = bundle.clone();
    v["resourceType"] = "QuestionnaireResponse".into();
    assert_eq!(
        issue(&whole(&v).unwrap_err()),
        (IssueCode::NotSupported, "Bundle.resourceType")
    );
    let mut v = bundle.clone();
    v["entry"][1]["request"]["method"] = "PUT".into();
    v["entry"][2]["request"]["url"] = "Observation".into();
    v["entry"][0].as_object_mut().unwrap().remove("resource");
    let outcomes = whole(&v).unwrap();
    let named: Vec<_> = outcomes
        .iter()
        .map(|o| issue(o.as_ref().unwrap_err()))
        .collect();
    assert_eq!(
        named,
        [
            (IssueCode::Required, "Bundle.entry[0].resource"),
            (IssueCode::NotSupported, "Bundle.entry[1].request.method"),
            (IssueCode::NotSupported, "Bundle.entry[2].request.url"),
        ]
    );
    let mut v = bundle;
    v["entry"] = json!([]);
    assert!(whole(&v).unwrap().is_empty());
}

#[test]
fn the_score_is_an_observation() {
    let (report, _) = parse_questionnaire_response(PHQ9_QR.as_bytes(), now()).unwrap();
    let result = json!({ "score": report.assess(20).unwrap(), "analysis": null });
    let o = observation(&report.report_id, &result, &report.instrument).unwrap();
    assert_eq!(o["resourceType"], "Observation");
    assert_eq!(o["status"], "final");
    assert_eq!(o["code"]["coding"][0]["system"], LOINC);
    assert_eq!(o["code"]["coding"][0]["code"], "44261-6");
    assert_eq!(o["valueInteger"], 10);
    assert_eq!(
        o["derivedFrom"][0]["reference"],
        format!("QuestionnaireResponse/{}", report.report_id)
    );
    assert_eq!(o["interpretation"][0]["coding"][0]["code"], "moderate");
    assert_eq!(o["interpretation"][1]["coding"][0]["code"], "AA");
    let component = &o["component"][0];
    assert_eq!(component["code"]["coding"][0]["code"], "phq9-item9");
    assert_eq!(component["valueBoolean"], true);
    assert!(
        component["code"]["text"]
            .as_str()
            .unwrap()
            .contains("44260-8")
    );
    // The score alone will do; without an alert, no AA and no component.
    let calm = parse(&phq9([1, 0, 0, 0, 0, 0, 0, 0, 0])).unwrap();
    let o = observation("r-1", &json!(calm.assess(20).unwrap()), "phq-9").unwrap();
    assert_eq!(o["interpretation"].as_array().unwrap().len(), 1);
    assert!(o.get("component").is_none());
    // GAD-7: its own total code.
    let (gad, _) = parse_questionnaire_response(GAD7_QR.as_bytes(), now()).unwrap();
    let o = observation("g", &json!({ "score": gad.assess(20).unwrap() }), "GAD-7").unwrap();
    assert_eq!(o["code"]["coding"][0]["code"], "70274-6");
    assert_eq!(
        o["component"][0]["code"]["coding"][0]["code"],
        "gad7-severe"
    );
}

#[test]
fn a_generic_score_is_an_observation_without_loinc() {
    let score = json!({"score": {"total": 21, "max_item": 2, "alert": true, "alert_items": []}});
    let o = observation("r-9", &score, "EQ-5D").unwrap();
    assert!(o["code"].get("coding").is_none());
    assert_eq!(o["code"]["text"], "EQ-5D total score");
    assert_eq!(o["valueInteger"], 21);
    assert_eq!(o["interpretation"][0]["coding"][0]["code"], "AA");
    assert_eq!(o["component"][0]["code"]["coding"][0]["code"], "generic");
    // Not processed yet: a 404 outcome.
    let err = observation("r-9", &json!({}), "EQ-5D").unwrap_err();
    assert_eq!(
        (err.http_status(), err.issues[0].code),
        (404, IssueCode::NotFound)
    );
}

#[test]
fn an_operation_outcome_is_fhir_json() {
    let err = parse(&phq9([0, 0, 4, 0, 0, 0, 0, 0, 0])).unwrap_err();
    assert_eq!(
        err.to_json(),
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "value",
                "diagnostics": "must be an integer from 0 to 3",
                "expression": ["QuestionnaireResponse.item[2].answer[0].valueInteger"],
            }],
        })
    );
    let conflict = OperationOutcome::error(409, IssueCode::Conflict, None, "other content");
    assert_eq!(conflict.http_status(), 409);
    assert_eq!(conflict.to_json()["issue"][0]["code"], "conflict");
    assert!(conflict.to_json()["issue"][0].get("expression").is_none());
    assert_eq!(
        serde_json::to_value(IssueCode::CodeInvalid).unwrap(),
        "code-invalid"
    );
}
