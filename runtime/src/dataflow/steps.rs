//! `spec.pipeline.steps`: named stateless steps run on each source record
//! in stage 1, before the key is read. A `filter` keeps the record when its
//! CEL predicate over `record` is true; a `map` replaces the record by an
//! object whose fields are CEL expressions over it. A step that fails on a
//! record (a missing field, a wrong type, a division by zero) is a dead
//! letter naming the step, its expression and the error; never a crash.
//!
//! The record travels between steps as a CEL value; after a `map` it is
//! written back as JSON ([`cel_to_json`]), which is what the rest of stage
//! 1 (event time, key, aggregation inputs) reads and what goes on to the
//! keyed stage.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dataflow::keying::DeadLetterReason;
use crate::error::{Result, RuntimeError};

/// A step as the spec gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub name: String,
    pub kind: StepKind,
}

/// What a step does, with its CEL source text.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Filter(String),
    /// Output fields, in the order given.
    Map(Vec<(String, String)>),
}

/// The steps from a spec.
pub fn from_spec(list: &str, steps: &[streamops_crds::job::StepSpec]) -> Result<Vec<StepDef>> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let kind = match (&s.filter, &s.map) {
                (Some(f), None) => StepKind::Filter(f.clone()),
                (None, Some(m)) => StepKind::Map(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                _ => {
                    return Err(RuntimeError::compile(
                        format!("{list}[{i}]"),
                        "exactly one of filter and map",
                    ));
                }
            };
            Ok(StepDef {
                name: s.name.clone(),
                kind,
            })
        })
        .collect()
}

struct Compiled {
    /// `spec.pipeline.steps[i] (name)`: how errors name the step.
    at: String,
    /// The step's name (`filter` for the short form's filter).
    name: String,
    kind: CompiledKind,
}

enum CompiledKind {
    Filter(String, cel::Program),
    Map(Vec<(Arc<String>, String, cel::Program)>),
}

/// Compiled steps.
pub struct Steps {
    steps: Vec<Compiled>,
    /// CEL's standard library with the strings, math, lists and encoders
    /// extensions (`lowerAscii`, `split`, `math.greatest`, `base64.encode`,
    /// ...), as cel-go's `ext` packages offer them.
    env: Arc<cel::Env>,
}

/// The CEL environment every expression of a job runs in ([`Steps`], and
/// the expressions of [`super::keying`]).
pub(crate) fn environment() -> Result<cel::Env> {
    let mut env = cel::Env::stdlib();
    let add = |env: &mut cel::Env,
               ext: fn(&mut cel::Env) -> std::result::Result<(), cel::DeclarationError>| {
        env.add_extension(ext)
            .map_err(|e| RuntimeError::Dataflow(format!("CEL extension: {e:?}")))
    };
    add(&mut env, cel::extensions::strings)?;
    add(&mut env, cel::extensions::math)?;
    add(&mut env, cel::extensions::lists)?;
    add(&mut env, cel::extensions::encoders)?;
    Ok(env)
}

/// What the steps made of a record.
#[derive(Debug)]
pub enum StepOutcome<T = serde_json::Value> {
    /// A filter dropped it.
    Filtered,
    /// It goes on; `Some`: a map replaced it (the new record as JSON).
    Kept(Option<T>),
}

impl Steps {
    /// Compiles `defs`, the list at spec field `list`, after `filter`
    /// (`spec.pipeline.filter`, the short
    /// form of a first filter step: a plain path there reads
    /// `record.<path>`); errors name the step's field.
    pub fn compile(list: &str, filter: Option<&str>, defs: &[StepDef]) -> Result<Steps> {
        let env = environment()?;
        let compile = |field: &str, source: &str| -> Result<cel::Program> {
            let program = env
                .compile(source.trim())
                .map_err(|e| RuntimeError::compile(field, e))?;
            if let Some(why) = streamops_crds::expr::foreign_variable(&program) {
                return Err(RuntimeError::compile(field, why));
            }
            Ok(program)
        };
        let mut steps = Vec::new();
        if let Some(source) = filter.filter(|_| !defs.is_empty()) {
            let cel = match crate::expr::plain_path(source.trim()) {
                Some(path) => format!("record.{}", path.join(".")),
                None => source.to_owned(),
            };
            steps.push(Compiled {
                at: "spec.pipeline".into(),
                name: "filter".into(),
                kind: CompiledKind::Filter(source.to_owned(), compile("spec.pipeline.filter", &cel)?),
            });
        }
        for (i, d) in defs.iter().enumerate() {
            let field = format!("{list}[{i}]");
            let kind = match &d.kind {
                StepKind::Filter(source) => {
                    CompiledKind::Filter(source.clone(), compile(&format!("{field}.filter"), source)?)
                }
                StepKind::Map(fields) => CompiledKind::Map(
                    fields
                        .iter()
                        .map(|(name, source)| {
                            Ok((
                                Arc::new(name.clone()),
                                source.clone(),
                                compile(&format!("{field}.map.{name}"), source)?,
                            ))
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
            };
            steps.push(Compiled {
                at: format!("{field} ({})", d.name),
                name: d.name.clone(),
                kind,
            });
        }
        Ok(Steps {
            steps,
            env: Arc::new(env),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every step on `record` (the decoded source record).
    pub fn run(&self, record: cel::Value) -> std::result::Result<StepOutcome, DeadLetterReason> {
        let mut ctx = cel::Context::with_env(self.env.clone());
        let mut record = record;
        let mut mapped = false;
        for step in &self.steps {
            ctx.add_variable_from_value("record", record.clone());
            match &step.kind {
                CompiledKind::Filter(source, program) => match program.execute(&ctx) {
                    Ok(cel::Value::Bool(true)) => {}
                    Ok(cel::Value::Bool(false) | cel::Value::Null) => return Ok(StepOutcome::Filtered),
                    Ok(other) => {
                        return Err(failed(
                            step,
                            "filter",
                            source,
                            format!("expected a bool, got {:?}", other.type_of()),
                        ));
                    }
                    Err(e) => return Err(failed(step, "filter", source, e.to_string())),
                },
                CompiledKind::Map(fields) => {
                    let mut out: HashMap<cel::objects::Key, cel::Value> =
                        HashMap::with_capacity(fields.len());
                    for (name, source, program) in fields {
                        let v = program
                            .execute(&ctx)
                            .map_err(|e| failed(step, &format!("map.{name}"), source, e.to_string()))?;
                        out.insert(cel::objects::Key::String(name.clone()), v);
                    }
                    record = cel::Value::Map(cel::objects::Map { map: Arc::new(out) });
                    mapped = true;
                }
            }
        }
        if !mapped {
            return Ok(StepOutcome::Kept(None));
        }
        cel_to_json(&record)
            .map(|v| StepOutcome::Kept(Some(v)))
            .map_err(|e| {
                match self
                    .steps
                    .iter()
                    .rev()
                    .find(|s| matches!(s.kind, CompiledKind::Map(_)))
                {
                    Some(last) => failed(last, "map", "", e),
                    None => DeadLetterReason::InvalidRecord(e),
                }
            })
    }
}

fn failed(step: &Compiled, part: &str, source: &str, error: String) -> DeadLetterReason {
    DeadLetterReason::Step {
        field: format!("{}.{part}", step.at),
        step: step.name.clone(),
        expression: source.trim().to_owned(),
        error,
    }
}

/// A CEL value as JSON: maps (keys as strings), lists, numbers, strings,
/// booleans, null; timestamps as RFC 3339 strings, durations as seconds
/// (`"1.5s"`, as protobuf's JSON mapping writes them). Not representable,
/// hence errors: NaN and infinities, bytes (encode them first, e.g.
/// `base64.encode(...)`), functions and other opaque values.
pub fn cel_to_json(v: &cel::Value) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        cel::Value::Null => J::Null,
        cel::Value::Bool(b) => J::Bool(*b),
        cel::Value::Int(i) => J::from(*i),
        cel::Value::UInt(u) => J::from(*u),
        cel::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None => return Err(format!("{f} cannot be written as JSON")),
        },
        cel::Value::String(s) => J::String(s.as_str().to_owned()),
        cel::Value::List(items) => J::Array(
            items
                .iter()
                .map(cel_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        cel::Value::Map(m) => {
            let mut entries: Vec<(String, J)> = m
                .map
                .iter()
                .map(|(k, v)| Ok((k.to_string(), cel_to_json(v)?)))
                .collect::<std::result::Result<_, String>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            J::Object(entries.into_iter().collect())
        }
        cel::Value::Timestamp(t) => J::String(t.to_rfc3339()),
        cel::Value::Duration(d) => {
            let ms = d.num_milliseconds();
            let text = if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{}s", ms as f64 / 1000.0)
            };
            J::String(text)
        }
        cel::Value::Bytes(_) => {
            return Err("bytes cannot be written as JSON: encode them, e.g. base64.encode(..)".into());
        }
        other => return Err(format!("a {:?} cannot be written as JSON", other.type_of())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps(defs: &[(&str, StepKind)]) -> Steps {
        let defs: Vec<StepDef> = defs
            .iter()
            .map(|(n, k)| StepDef {
                name: (*n).into(),
                kind: k.clone(),
            })
            .collect();
        Steps::compile("spec.pipeline.steps", None, &defs).unwrap()
    }

    fn record(v: serde_json::Value) -> cel::Value {
        crate::codec::json::json_to_cel(&v)
    }

    fn map(fields: &[(&str, &str)]) -> StepKind {
        StepKind::Map(fields.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect())
    }

    #[test]
    fn filters_and_maps_run_in_order_on_the_record_so_far() {
        let s = steps(&[
            ("paid", StepKind::Filter("record.amount > 0".into())),
            (
                "reshape",
                map(&[
                    ("user", "record.user.lowerAscii()"),
                    ("cents", "int(record.amount * 100.0)"),
                    ("tags", "[record.page, 'web']"),
                    ("at", "timestamp(record.when)"),
                    ("nested", "{'a': {'b': null}}"),
                ]),
            ),
            ("big", StepKind::Filter("record.cents >= 150".into())),
        ]);
        let out = s
            .run(record(
                json!({"user": "ANA", "amount": 1.5, "page": "/x", "when": "2026-01-01T00:00:00Z"}),
            ))
            .unwrap();
        let StepOutcome::Kept(Some(v)) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            v,
            json!({"user": "ana", "cents": 150, "tags": ["/x", "web"], "at": "2026-01-01T00:00:00+00:00",
                   "nested": {"a": {"b": null}}})
        );
        let small = s.run(record(
            json!({"user": "b", "amount": 1.0, "page": "/", "when": "2026-01-01T00:00:00Z"}),
        ));
        assert!(matches!(small, Ok(StepOutcome::Filtered)));
        let unpaid = s.run(record(json!({"user": "b", "amount": 0.0})));
        assert!(
            matches!(unpaid, Ok(StepOutcome::Filtered)),
            "before the map fails"
        );
        // Filters alone leave the record as it was.
        let only = steps(&[("paid", StepKind::Filter("record.amount > 0".into()))]);
        assert!(matches!(
            only.run(record(json!({"amount": 2}))),
            Ok(StepOutcome::Kept(None))
        ));
    }

    #[test]
    fn a_failing_step_names_itself_its_expression_and_the_error() {
        let s = steps(&[
            ("ok", StepKind::Filter("true".into())),
            ("ratio", map(&[("r", "record.a / record.b")])),
        ]);
        let Err(e) = s.run(record(json!({"a": 1, "b": 0}))) else {
            panic!("no error")
        };
        assert_eq!(e.kind(), "expression_error");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "spec.pipeline.steps[1] (ratio).map.r: expression `record.a / record.b` failed: "
            ),
            "{text}"
        );
        assert_eq!(e.step(), Some(("ratio".into(), "record.a / record.b".into())));
        let Err(e) = s.run(record(json!({"a": 1}))) else {
            panic!("no error")
        };
        assert!(e.to_string().contains("(ratio).map.r"), "{e}");
        let typed = steps(&[("typed", StepKind::Filter("record.a".into()))]);
        let Err(e) = typed.run(record(json!({"a": 3}))) else {
            panic!("no error")
        };
        assert!(e.to_string().contains("expected a bool, got"), "{e}");
        let nan = steps(&[("nan", map(&[("x", "0.0 / 0.0")]))]);
        let Err(e) = nan.run(record(json!({}))) else {
            panic!("no error")
        };
        assert!(e.to_string().contains("cannot be written as JSON"), "{e}");
    }

    #[test]
    fn compile_errors_name_the_step_field() {
        let bad = Steps::compile(
            "spec.pipeline.steps",
            None,
            &[StepDef {
                name: "x".into(),
                kind: map(&[("a", "record.b +")]).clone(),
            }],
        );
        let e = bad.err().unwrap().to_string();
        assert!(e.starts_with("spec.pipeline.steps[0].map.a:"), "{e}");
        let other = Steps::compile(
            "spec.pipeline.steps",
            None,
            &[StepDef {
                name: "x".into(),
                kind: StepKind::Filter("user > 1".into()),
            }],
        );
        assert!(
            other
                .err()
                .unwrap()
                .to_string()
                .contains("unknown variable `user`")
        );
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(
            cel_to_json(&record(json!(null))).unwrap(),
            serde_json::Value::Null
        );
        let s = steps(&[("d", map(&[("d", "duration('1500ms')"), ("e", "duration('2m')")]))]);
        let StepOutcome::Kept(Some(v)) = s.run(record(json!({}))).unwrap() else {
            panic!()
        };
        assert_eq!(v, json!({"d": "1.5s", "e": "120s"}));
        let b = steps(&[("b", map(&[("b", "b'abc'")]))]);
        assert!(
            b.run(record(json!({})))
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
    }
}
