//! FHIR `OperationOutcome`: how every error of the FHIR routes is answered.

use serde::Serialize;
use serde_json::{Value, json};

/// How bad an issue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// This item (or request) was refused.
    Error,
    /// For information.
    Information,
}

/// The FHIR issue type (the value set `issue-type`, the codes we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    /// Not a valid resource, in general.
    Invalid,
    /// Not valid JSON, or an element of the wrong shape.
    Structure,
    /// A required element is missing.
    Required,
    /// An element's value is wrong.
    Value,
    /// A code is not in the value set expected.
    CodeInvalid,
    /// The request is valid FHIR but asks for what we do not do.
    NotSupported,
    /// The same resource again.
    Duplicate,
    /// An id reused for other content.
    Conflict,
    /// The request is too large.
    TooCostly,
    /// The server is overloaded: retry later.
    Throttled,
    /// A transient failure: retry later.
    Transient,
    /// Not found.
    NotFound,
    /// An unexpected failure.
    Exception,
    /// Not a problem: what happened (a success, said in FHIR).
    Informational,
}

/// One issue of an [`OperationOutcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// How bad.
    pub severity: Severity,
    /// What kind.
    pub code: IssueCode,
    /// What is wrong, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// The elements at fault, as FHIRPath.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// A FHIR `OperationOutcome`, with the HTTP status to answer it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationOutcome {
    /// The HTTP status.
    pub status: u16,
    /// The issues, at least one.
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    /// One error issue.
    pub fn error(
        status: u16,
        code: IssueCode,
        expression: Option<String>,
        diagnostics: impl Into<String>,
    ) -> OperationOutcome {
        OperationOutcome {
            status,
            issues: vec![Issue {
                severity: Severity::Error,
                code,
                diagnostics: Some(diagnostics.into()),
                expression: expression.into_iter().collect(),
            }],
        }
    }

    /// A 400 with one error issue on `expression`.
    pub(super) fn bad(
        code: IssueCode,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Self {
        OperationOutcome::error(400, code, Some(expression.into()), diagnostics)
    }

    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        self.status
    }

    /// The resource, as JSON.
    pub fn to_json(&self) -> Value {
        json!({ "resourceType": "OperationOutcome", "issue": self.issues })
    }
}
