//! Validation the CRD schema cannot express, with errors that name the field.
//!
//! The schema (minimums, enums, patterns) is enforced by the apiserver at
//! `kubectl apply` time; what is checked here (cross-field rules such as
//! `slide <= size`) surfaces as `Stalled=True` with reason `InvalidSpec` and
//! every message below joined into the condition's message.

use std::fmt;

/// One problem with a spec, located by its JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// e.g. `spec.pipeline.window.slide`
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A spec that can check itself beyond what its schema says.
pub trait Validation {
    /// Every problem found, in field order; empty when the spec is valid.
    fn validate(&self) -> Vec<FieldError>;

    /// All problems as one human-readable message, or `None` when valid.
    fn validation_message(&self) -> Option<String> {
        message(&self.validate())
    }
}

/// `errors` as one human-readable message, or `None` when there are none.
pub fn message(errors: &[FieldError]) -> Option<String> {
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}
