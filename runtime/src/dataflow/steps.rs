//! `spec.pipeline.steps`: named stateless steps run on each source record
//! in stage 1, before the key is read. A `filter` keeps the record when its
//! CEL predicate over `record` is true; a `map` replaces the record by an
//! object whose fields are CEL expressions over it. A step that fails on a
//! record (a missing field, a wrong type, a division by zero) is a dead
//! letter naming the step, its expression and the error; never a crash.
//!
//! The record is decoded once, straight into CEL's representation
//! ([`crate::codec::json::to_val`]), and travels between steps as a CEL
//! value; after a `map` it is written back as JSON
//! ([`crate::codec::json::write_cel_json`]), which is what the rest of
//! stage 1 (event time, key, aggregation inputs) reads, what goes on to the
//! keyed stage, and what a stateless job writes.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{CelMap, CelMapKey, CelString};
use cel::common::value::Val;

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
    /// `(when, to)` rules: the first whose `when` holds sends the record to
    /// StreamTopic `to`.
    Route(Vec<(String, String)>),
}

/// The steps from a spec.
pub fn from_spec(list: &str, steps: &[streamops_crds::job::StepSpec]) -> Result<Vec<StepDef>> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let kind = match (&s.filter, &s.map, &s.route) {
                (Some(f), None, None) => StepKind::Filter(f.clone()),
                (None, Some(m), None) => {
                    StepKind::Map(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                (None, None, Some(r)) => {
                    StepKind::Route(r.iter().map(|r| (r.when.clone(), r.to.clone())).collect())
                }
                _ => {
                    return Err(RuntimeError::compile(
                        format!("{list}[{i}]"),
                        "exactly one of filter, map and route",
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
    /// `(when source, when, index into Steps::targets)`.
    Route(Vec<(String, cel::Program, usize)>),
}

/// Compiled steps.
pub struct Steps {
    steps: Vec<Compiled>,
    /// The same steps without CEL, when every expression is in the native
    /// subset ([`super::native`]); records it cannot decide go through CEL.
    native: Option<super::native::NativeSteps>,
    /// The StreamTopics `route` steps write to, each once.
    targets: Vec<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// A filter dropped it.
    Filtered,
    /// It goes on as it was (no `map` ran).
    Unchanged,
    /// It goes on as the last `map` made it (written as JSON to the
    /// caller's buffer).
    Mapped,
    /// A `route` step sent it to [`Steps::target`] `target`, as it was
    /// (`mapped: false`) or as the last `map` made it (in the caller's
    /// buffer).
    Routed { target: usize, mapped: bool },
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
        let mut targets: Vec<String> = Vec::new();
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
                StepKind::Map(fields) => {
                    // Written in name order (canonical JSON); a name given
                    // twice keeps its last expression.
                    let by_name: std::collections::BTreeMap<&String, &String> =
                        fields.iter().map(|(n, e)| (n, e)).collect();
                    CompiledKind::Map(
                        by_name
                            .into_iter()
                            .map(|(name, source)| {
                                Ok((
                                    Arc::new(name.clone()),
                                    source.clone(),
                                    compile(&format!("{field}.map.{name}"), source)?,
                                ))
                            })
                            .collect::<Result<Vec<_>>>()?,
                    )
                }
                StepKind::Route(rules) => CompiledKind::Route(
                    rules
                        .iter()
                        .enumerate()
                        .map(|(j, (when, to))| {
                            let target = match targets.iter().position(|t| t == to) {
                                Some(t) => t,
                                None => {
                                    targets.push(to.clone());
                                    targets.len() - 1
                                }
                            };
                            Ok((
                                when.clone(),
                                compile(&format!("{field}.route[{j}].when"), when)?,
                                target,
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
        let native = super::native::NativeSteps::compile(
            &steps
                .iter()
                .map(|s| match &s.kind {
                    CompiledKind::Filter(_, p) => super::native::StepShape::Filter(p),
                    CompiledKind::Map(fields) => super::native::StepShape::Map(
                        fields.iter().map(|(n, _, p)| (n.as_str(), p)).collect(),
                    ),
                    CompiledKind::Route(rules) => {
                        super::native::StepShape::Route(rules.iter().map(|(_, p, t)| (p, *t)).collect())
                    }
                })
                .collect::<Vec<_>>(),
        );
        Ok(Steps {
            steps,
            native,
            targets,
            env: Arc::new(env),
        })
    }

    /// The same steps run through CEL only (the native subset off): what
    /// the differential tests compare the native evaluation with.
    pub fn cel_only(mut self) -> Steps {
        self.native = None;
        self
    }

    /// Whether the steps have a native evaluation ([`super::native`]).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// The native evaluation of the record alone: `None` when the steps
    /// have none or it gives the record to CEL.
    pub fn run_native(&self, value: &[u8], out: &mut Vec<u8>) -> Option<StepOutcome> {
        use super::native::NativeOutcome as N;
        let native = self.native.as_ref()?;
        Some(match native.run(&crate::codec::JsonDecoder, value, out).ok()? {
            N::Filtered => StepOutcome::Filtered,
            N::Unchanged => StepOutcome::Unchanged,
            N::Mapped => StepOutcome::Mapped,
            N::Routed { target, mapped } => StepOutcome::Routed { target, mapped },
        })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The StreamTopic of route target `i` ([`StepOutcome::Routed`]).
    pub fn target(&self, i: usize) -> &str {
        self.targets.get(i).map_or("", String::as_str)
    }

    /// Runs every step on the JSON record `value`. The record is decoded
    /// once, straight into CEL's representation, and bound once; only a
    /// `map` binds a new one. When a `map` ran, the record it made is
    /// written to `out` as JSON (fields in name order) and the outcome is
    /// [`StepOutcome::Mapped`]; `out` is cleared first.
    pub fn run_json(
        &self,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<StepOutcome, DeadLetterReason> {
        if let Some(outcome) = self.run_native(value, out) {
            return Ok(outcome);
        }
        let record = crate::codec::json::to_val(value).map_err(DeadLetterReason::InvalidRecord)?;
        let mut ctx = cel::Context::with_env(self.env.clone());
        ctx.add_variable_as_val("record", record);
        let mut mapped: Option<(&Compiled, Fields<'_>)> = None;
        for (i, step) in self.steps.iter().enumerate() {
            match &step.kind {
                CompiledKind::Filter(source, program) => {
                    if !holds(step, "filter", source, program, &ctx)? {
                        return Ok(StepOutcome::Filtered);
                    }
                }
                CompiledKind::Map(fields) => {
                    let mut values = Vec::with_capacity(fields.len());
                    for (name, source, program) in fields {
                        let v = program
                            .execute(&ctx)
                            .map_err(|e| failed(step, &format!("map.{name}"), source, e.to_string()))?;
                        values.push((name, v));
                    }
                    // The next step reads the new record (the last map's
                    // is only written out).
                    if i + 1 < self.steps.len() {
                        let mut record: HashMap<CelMapKey<'static>, Box<dyn Val>> =
                            HashMap::with_capacity(values.len());
                        for (name, v) in &values {
                            let v: Box<dyn Val> =
                                v.clone().try_into().map_err(|e: cel::ExecutionError| {
                                    failed(step, &format!("map.{name}"), "", e.to_string())
                                })?;
                            record.insert(CelMapKey::String(CelString::from(name.as_str().to_owned())), v);
                        }
                        ctx.add_variable_as_val("record", Box::new(CelMap::from(record)));
                    }
                    mapped = Some((step, values));
                }
                CompiledKind::Route(rules) => {
                    for (source, program, target) in rules {
                        if holds(step, "route", source, program, &ctx)? {
                            if let Some((by, values)) = &mapped {
                                write_record(by, values, out)?;
                            }
                            return Ok(StepOutcome::Routed {
                                target: *target,
                                mapped: mapped.is_some(),
                            });
                        }
                    }
                }
            }
        }
        let Some((step, values)) = mapped else {
            return Ok(StepOutcome::Unchanged);
        };
        write_record(step, &values, out)?;
        Ok(StepOutcome::Mapped)
    }
}

/// Whether the predicate `program` (`source`, at `part` of `step`) holds:
/// true; false or null do not; any other value or an error fails the step.
fn holds(
    step: &Compiled,
    part: &str,
    source: &str,
    program: &cel::Program,
    ctx: &cel::Context,
) -> std::result::Result<bool, DeadLetterReason> {
    match program.execute(ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(cel::Value::Null) => Ok(false),
        Ok(other) => Err(failed(
            step,
            part,
            source,
            format!("expected a bool, got {:?}", other.type_of()),
        )),
        Err(e) => Err(failed(step, part, source, e.to_string())),
    }
}

/// A map step's output fields and their values, in name order.
type Fields<'a> = Vec<(&'a Arc<String>, cel::Value)>;

/// The record a `map` step made (its fields in name order) as JSON, into
/// `out` (cleared first).
fn write_record(
    step: &Compiled,
    values: &Fields<'_>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), DeadLetterReason> {
    out.clear();
    out.push(b'{');
    for (i, (name, v)) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::codec::json::write_json_string(out, name);
        out.push(b':');
        crate::codec::json::write_cel_json(v, out)
            .map_err(|e| failed(step, &format!("map.{name}"), "", e))?;
    }
    out.push(b'}');
    Ok(())
}

fn failed(step: &Compiled, part: &str, source: &str, error: String) -> DeadLetterReason {
    DeadLetterReason::Step {
        field: format!("{}.{part}", step.at),
        step: step.name.clone(),
        expression: source.trim().to_owned(),
        error,
    }
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

    /// Runs `s` on `v`: `Ok(None)` filtered, `Ok(Some(None))` unchanged,
    /// `Ok(Some(Some(json)))` mapped.
    fn run(
        s: &Steps,
        v: serde_json::Value,
    ) -> std::result::Result<Option<Option<serde_json::Value>>, DeadLetterReason> {
        let mut out = Vec::new();
        Ok(match s.run_json(v.to_string().as_bytes(), &mut out)? {
            StepOutcome::Filtered => None,
            StepOutcome::Unchanged => Some(None),
            StepOutcome::Mapped => Some(Some(serde_json::from_slice(&out).expect("the map's JSON"))),
            StepOutcome::Routed { .. } => panic!("routed: use run_json"),
        })
    }

    #[test]
    fn a_route_sends_the_record_as_it_is_to_the_first_matching_rule() {
        let s = steps(&[
            ("shape", map(&[("u", "record.user"), ("a", "record.amount")])),
            (
                "aside",
                StepKind::Route(vec![
                    ("record.a > 100".into(), "big".into()),
                    ("record.a < 0".into(), "refunds".into()),
                    ("record.a > 50".into(), "big".into()),
                ]),
            ),
        ]);
        let mut out = Vec::new();
        let mut route = |v: serde_json::Value| {
            let r = s.run_json(v.to_string().as_bytes(), &mut out);
            (r, serde_json::from_slice::<serde_json::Value>(&out).ok())
        };
        let (r, v) = route(json!({"user": "a", "amount": 500}));
        let Ok(StepOutcome::Routed { target, mapped: true }) = r else {
            panic!("{r:?}")
        };
        assert_eq!((s.target(target), v), ("big", Some(json!({"u": "a", "a": 500}))));
        let (r, _) = route(json!({"user": "a", "amount": -1}));
        let Ok(StepOutcome::Routed { target, .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.target(target), "refunds");
        let (r, _) = route(json!({"user": "a", "amount": 60}));
        let Ok(StepOutcome::Routed { target, .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(s.target(target), "big", "the same topic from two rules");
        assert_eq!(
            route(json!({"user": "a", "amount": 7})).0,
            Ok(StepOutcome::Mapped)
        );
        let (r, _) = route(json!({"user": "a", "amount": "x"}));
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("spec.pipeline.steps[1] (aside).route: expression `record.a > 100` failed"),
            "{e}"
        );
        // Before any map the record goes as it came.
        let first = steps(&[("aside", StepKind::Route(vec![("true".into(), "all".into())]))]);
        assert_eq!(
            first.run_json(b"{\"x\":1}", &mut out),
            Ok(StepOutcome::Routed {
                target: 0,
                mapped: false
            })
        );
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
        let out = run(
            &s,
            json!({"user": "ANA", "amount": 1.5, "page": "/x", "when": "2026-01-01T00:00:00Z"}),
        )
        .unwrap();
        let Some(Some(v)) = out else { panic!("{out:?}") };
        assert_eq!(
            v,
            json!({"user": "ana", "cents": 150, "tags": ["/x", "web"], "at": "2026-01-01T00:00:00+00:00",
                   "nested": {"a": {"b": null}}})
        );
        let small = run(
            &s,
            json!({"user": "b", "amount": 1.0, "page": "/", "when": "2026-01-01T00:00:00Z"}),
        );
        assert!(matches!(small, Ok(None)));
        let unpaid = run(&s, json!({"user": "b", "amount": 0.0}));
        assert!(matches!(unpaid, Ok(None)), "before the map fails");
        // Filters alone leave the record as it was.
        let only = steps(&[("paid", StepKind::Filter("record.amount > 0".into()))]);
        assert!(matches!(run(&only, json!({"amount": 2})), Ok(Some(None))));
        // Not JSON: a dead letter before any step.
        let mut out = Vec::new();
        let e = only.run_json(b"{nope", &mut out).unwrap_err();
        assert_eq!(e.kind(), "invalid_record");
    }

    #[test]
    fn a_failing_step_names_itself_its_expression_and_the_error() {
        let s = steps(&[
            ("ok", StepKind::Filter("true".into())),
            ("ratio", map(&[("r", "record.a / record.b")])),
        ]);
        let Err(e) = run(&s, json!({"a": 1, "b": 0})) else {
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
        let Err(e) = run(&s, json!({"a": 1})) else {
            panic!("no error")
        };
        assert!(e.to_string().contains("(ratio).map.r"), "{e}");
        let typed = steps(&[("typed", StepKind::Filter("record.a".into()))]);
        let Err(e) = run(&typed, json!({"a": 3})) else {
            panic!("no error")
        };
        assert!(e.to_string().contains("expected a bool, got"), "{e}");
        let nan = steps(&[("nan", map(&[("x", "0.0 / 0.0")]))]);
        let Err(e) = run(&nan, json!({})) else {
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
        let s = steps(&[("d", map(&[("d", "duration('1500ms')"), ("e", "duration('2m')")]))]);
        let Some(Some(v)) = run(&s, json!({})).unwrap() else {
            panic!()
        };
        assert_eq!(v, json!({"d": "1.5s", "e": "120s"}));
        let b = steps(&[("b", map(&[("b", "b'abc'")]))]);
        assert!(run(&b, json!({})).unwrap_err().to_string().contains("bytes"));
    }

    #[test]
    fn a_record_is_read_as_json_gives_it_and_written_back_the_same() {
        // Integers stay int (arithmetic works), big ones uint, escapes and
        // nesting survive, maps are written with sorted keys.
        let s = steps(&[
            (
                "next",
                map(&[
                    ("n", "record.n + 1"),
                    ("big", "record.big"),
                    ("s", "record.s"),
                    ("o", "record.o"),
                ]),
            ),
            (
                "again",
                map(&[
                    ("n", "record.n * 2"),
                    ("rest", "[record.big, record.s, record.o]"),
                ]),
            ),
        ]);
        let v = json!({"n": 41, "big": 18446744073709551615u64, "s": "a\"b\\c\u{e9}", "o": {"z": [1, 2.5, null], "a": true}});
        let Some(Some(out)) = run(&s, v).unwrap() else {
            panic!()
        };
        assert_eq!(
            out,
            json!({"n": 84, "rest": [18446744073709551615u64, "a\"b\\c\u{e9}", {"a": true, "z": [1, 2.5, null]}]})
        );
    }
}
