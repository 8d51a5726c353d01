//! Expressions of a job spec (filter, keyBy, event time, aggregation
//! fields). Plain field paths (`record.a.b`, or the shorthand `a.b`) are read
//! straight from the decoded record; anything else is a CEL program over the
//! variable `record`.

use std::borrow::Cow;

use crate::codec::{FieldPaths, Scalar};
use crate::error::{Result, RuntimeError};

/// A compiled expression.
#[derive(Debug)]
pub enum Expr {
    /// A field path; the value is in the decoder slot with this index.
    Path(usize),
    /// A CEL program (evaluated with `record` bound to the whole record).
    Cel(Box<cel::Program>),
}

impl Expr {
    /// Compiles `source`, registering plain paths in `paths`. `field` is the
    /// spec path the expression comes from and prefixes any error.
    pub fn compile(field: &str, source: &str, paths: &mut FieldPaths) -> Result<Self> {
        let source = source.trim();
        if source.is_empty() {
            return Err(RuntimeError::compile(field, "expression is empty"));
        }
        if let Some(path) = plain_path(source) {
            return Ok(Expr::Path(paths.add(&path)));
        }
        let program = cel::Program::compile(source).map_err(|e| RuntimeError::compile(field, e))?;
        if let Some(why) = streamops_crds::expr::foreign_variable(&program) {
            return Err(RuntimeError::compile(field, why));
        }
        Ok(Expr::Cel(Box::new(program)))
    }

    pub fn is_path(&self) -> bool {
        matches!(self, Expr::Path(_))
    }

    /// Evaluates against a decoded record: `slots` from the decoder and, when
    /// any expression of the plan is CEL, the record as a CEL context.
    /// `Ok(None)` means the field is missing.
    pub fn eval<'a>(
        &self,
        slots: &[Option<Scalar<'a>>],
        ctx: Option<&cel::Context>,
    ) -> Result<Option<Scalar<'a>>, String> {
        match self {
            Expr::Path(slot) => Ok(slots.get(*slot).cloned().flatten()),
            Expr::Cel(program) => {
                let ctx = ctx.ok_or("internal: CEL expression without a record context")?;
                match program.execute(ctx) {
                    Ok(v) => Ok(Some(from_cel(v)?)),
                    // A missing field in CEL is an evaluation error; report as missing.
                    Err(cel::ExecutionError::NoSuchKey(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

fn from_cel(v: cel::Value) -> Result<Scalar<'static>, String> {
    Ok(match v {
        cel::Value::Null => Scalar::Null,
        cel::Value::Bool(b) => Scalar::Bool(b),
        cel::Value::Int(i) => Scalar::Int(i),
        cel::Value::UInt(u) => i64::try_from(u).map_or(Scalar::Float(u as f64), Scalar::Int),
        cel::Value::Float(f) => Scalar::Float(f),
        cel::Value::String(s) => Scalar::Str(Cow::Owned(s.as_str().to_owned())),
        cel::Value::List(_) | cel::Value::Map(_) => Scalar::Composite,
        other => return Err(format!("unsupported result type {}", other.type_of())),
    })
}

pub use streamops_crds::expr::plain_path;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_recognised() {
        assert_eq!(plain_path("record.user_id"), Some(vec!["user_id".to_string()]));
        assert_eq!(
            plain_path("record.a.b"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(plain_path("ts"), Some(vec!["ts".to_string()]));
        assert_eq!(plain_path("record"), None);
        assert_eq!(plain_path("record.a + 1"), None);
        assert_eq!(plain_path("size(record.a)"), None);
        assert_eq!(plain_path("true"), None);
    }

    #[test]
    fn compile_errors_name_the_spec_field() {
        let mut paths = FieldPaths::default();
        let err = Expr::compile("spec.pipeline.filter", "record.a ==", &mut paths).unwrap_err();
        assert!(err.to_string().starts_with("spec.pipeline.filter: "), "{err}");
        let err = Expr::compile("spec.pipeline.keyBy[0]", "user + 1", &mut paths).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.pipeline.keyBy[0]: unknown variable `user`"),
            "{err}"
        );
        assert!(Expr::compile("spec.pipeline.filter", "record.amount > 10.0", &mut paths).is_ok());
    }
}
