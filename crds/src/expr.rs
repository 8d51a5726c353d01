//! CEL expressions of a StreamJob spec, checked where the spec is
//! checked ([`crate::Validation`]): an expression that does not compile, or
//! reads a variable other than `record`, is refused as `InvalidSpec` naming
//! its field before anything runs (the runtime compiles the same text with
//! the same CEL implementation). Plain field paths are recognised here for
//! the runtime too ([`plain_path`]).

use crate::validate::FieldError;

/// Checks the CEL expression `source` of spec field `field`: it compiles,
/// and it reads no variable but `record` (unless it is a plain path such as
/// `user_id`, which the fields that take one read as `record.user_id`).
pub fn check(field: &str, source: &str, errors: &mut Vec<FieldError>) {
    check_with(field, source, true, errors);
}

/// [`check`] for expressions that are always CEL (steps): no shorthand.
pub fn check_cel(field: &str, source: &str, errors: &mut Vec<FieldError>) {
    check_with(field, source, false, errors);
}

fn check_with(field: &str, source: &str, shorthand: bool, errors: &mut Vec<FieldError>) {
    let source = source.trim();
    if source.is_empty() {
        errors.push(FieldError::new(field, "empty expression"));
        return;
    }
    if shorthand && plain_path(source).is_some() {
        return;
    }
    match cel::Program::compile(source) {
        Err(e) => errors.push(FieldError::new(
            field,
            format!("does not compile as CEL: {}", one_line(&e.to_string())),
        )),
        Ok(program) => {
            if let Some(why) = foreign_variable(&program) {
                errors.push(FieldError::new(field, why));
            }
        }
    }
}

/// Why `program` cannot run over a record: it reads a variable other than
/// `record` (`None`: it reads none). The runtime compiles with the same
/// check, so a spec the operator accepts compiles in the pods.
pub fn foreign_variable(program: &cel::Program) -> Option<String> {
    let refs = program.references();
    let var = refs
        .variables()
        .into_iter()
        .find(|v| *v != "record" && !EXTENSION_NAMESPACES.contains(v))?;
    Some(format!(
        "unknown variable `{var}`: fields are read as `record.<name>`"
    ))
}

/// What reads as a variable but names functions of the CEL extensions the
/// runtime adds (`math.round(x)`, `base64.encode(b)`).
const EXTENSION_NAMESPACES: &[&str] = &["math", "base64"];

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `record.a.b` -> `["a", "b"]`; `a.b` -> `["a", "b"]`; `None` for anything
/// that is not a dotted list of identifiers (or is just `record`).
pub fn plain_path(source: &str) -> Option<Vec<String>> {
    let segs: Vec<&str> = source.split('.').collect();
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !segs.iter().all(|s| ident(s)) || CEL_RESERVED.contains(&segs[0]) {
        return None;
    }
    let segs = if segs[0] == "record" {
        &segs[1..]
    } else {
        &segs[..]
    };
    if segs.is_empty() {
        return None;
    }
    Some(segs.iter().map(|s| s.to_string()).collect())
}

const CEL_RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(field: &str, source: &str, shorthand: bool) -> Vec<String> {
        let mut e = Vec::new();
        check_with(field, source, shorthand, &mut e);
        e.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn expressions_are_checked_like_the_runtime_compiles_them() {
        assert!(errors("f", "record.amount > 0 && record.page != '/healthz'", false).is_empty());
        assert!(errors("f", "user_id", true).is_empty(), "a plain path");
        assert!(errors("f", "math.round(record.x) + size(base64.encode(b'a'))", false).is_empty());
        assert_eq!(
            errors("f", "user_id", false),
            vec!["f: unknown variable `user_id`: fields are read as `record.<name>`"]
        );
        let bad = errors("spec.pipeline.steps[1].filter", "record.amount >", false);
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].starts_with("spec.pipeline.steps[1].filter: does not compile as CEL"),
            "{bad:?}"
        );
        assert_eq!(errors("f", "  ", false), vec!["f: empty expression"]);
        assert_eq!(plain_path("record.a.b"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(plain_path("a.b"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(plain_path("record"), None);
        assert_eq!(plain_path("true"), None);
        assert_eq!(plain_path("a + b"), None);
    }
}
