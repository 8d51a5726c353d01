//! Steps against a plain interpreter: random records and random lists of
//! `filter` and `map` steps, run by the engine's [`Steps`] (CEL) and by a
//! few lines of Rust that say what each step means; the outcome (dropped,
//! kept as is, replaced by which record, or a dead letter naming which
//! step) must agree.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use streamops_runtime::dataflow::steps::{StepDef, StepKind, StepOutcome, Steps};

const FIELDS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Term {
    Field(&'static str),
    Plus(&'static str, i64),
    Const(i64),
}

#[derive(Clone, Debug)]
enum Step {
    Greater(&'static str, i64),
    Map(BTreeMap<&'static str, Term>),
    /// Route records whose field is below the bound to the topic.
    Route(&'static str, i64, &'static str),
}

/// What the steps did with a record.
#[derive(Debug, PartialEq)]
enum Model {
    Dropped,
    /// Kept, as replaced by the last map (or unchanged).
    Kept(Value),
    /// Routed to the topic, as it was at the route step.
    Routed(&'static str, Value),
}

fn field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(FIELDS.to_vec())
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![
        field().prop_map(Term::Field),
        (field(), -5i64..5).prop_map(|(f, k)| Term::Plus(f, k)),
        (-5i64..5).prop_map(Term::Const),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (field(), -20i64..20).prop_map(|(f, k)| Step::Greater(f, k)),
        prop::collection::btree_map(field(), term(), 1..=3).prop_map(Step::Map),
        (field(), -20i64..20, prop::sample::select(vec!["low", "lower"]))
            .prop_map(|(f, k, t)| Step::Route(f, k, t)),
    ]
}

/// A field: absent, an int, or a string.
fn record() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        field(),
        prop_oneof![4 => (-30i64..30).prop_map(Value::from), 1 => Just(json!("x"))],
        0..=3,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn cel_of(step: &Step) -> StepKind {
    let term = |t: &Term| match t {
        Term::Field(f) => format!("record.{f}"),
        Term::Plus(f, k) => format!("record.{f} + {k}"),
        Term::Const(k) => k.to_string(),
    };
    match step {
        Step::Greater(f, k) => StepKind::Filter(format!("record.{f} > {k}")),
        Step::Map(m) => StepKind::Map(m.iter().map(|(o, t)| ((*o).to_owned(), term(t))).collect()),
        Step::Route(f, k, t) => StepKind::Route(vec![(format!("record.{f} < {k}"), (*t).to_owned())]),
    }
}

/// What the steps mean (`Err(i)`: step `i` failed).
fn interpret(steps: &[Step], record: &Value) -> Result<Model, usize> {
    let mut r = record.clone();
    for (i, s) in steps.iter().enumerate() {
        let int = |f: &str, r: &Value| r.get(f).and_then(Value::as_i64).ok_or(i);
        match s {
            Step::Greater(f, k) => {
                if int(f, &r)? <= *k {
                    return Ok(Model::Dropped);
                }
            }
            Step::Route(f, k, t) => {
                if int(f, &r)? < *k {
                    return Ok(Model::Routed(t, r));
                }
            }
            Step::Map(m) => {
                let mut out = serde_json::Map::new();
                for (o, t) in m {
                    let v = match t {
                        Term::Field(f) => r.get(*f).cloned().ok_or(i)?,
                        Term::Plus(f, k) => Value::from(int(f, &r)? + k),
                        Term::Const(k) => Value::from(*k),
                    };
                    out.insert((*o).to_owned(), v);
                }
                r = Value::Object(out);
            }
        }
    }
    Ok(Model::Kept(r))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn steps_do_what_a_plain_interpreter_says(record in record(), steps in prop::collection::vec(step(), 1..=5)) {
        let defs: Vec<StepDef> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepDef { name: format!("s{i}"), kind: cel_of(s) })
            .collect();
        let engine = Steps::compile("spec.pipeline.steps", None, &defs).unwrap();
        let mut out = Vec::new();
        let got = engine.run_json(record.to_string().as_bytes(), &mut out);
        let mapped = steps.iter().any(|s| matches!(s, Step::Map(_)));
        match (interpret(&steps, &record), got) {
            (Ok(Model::Dropped), Ok(StepOutcome::Filtered)) => {}
            (Ok(Model::Kept(want)), Ok(StepOutcome::Unchanged)) => prop_assert_eq!(want, record),
            (Ok(Model::Kept(want)), Ok(StepOutcome::Mapped)) => {
                prop_assert!(mapped);
                let got: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(got, want);
            }
            (Ok(Model::Routed(to, want)), Ok(StepOutcome::Routed { target, mapped })) => {
                prop_assert_eq!(engine.target(target), to);
                let got: Value = if mapped { serde_json::from_slice(&out).unwrap() } else { record.clone() };
                prop_assert_eq!(got, want);
            }
            (Err(i), Err(reason)) => {
                let text = reason.to_string();
                let prefix = format!("spec.pipeline.steps[{i}] (s{i})");
                prop_assert!(text.starts_with(&prefix), "{} does not start with {}", text, prefix);
            }
            (want, got) => prop_assert!(false, "model {:?}, engine {:?}", want, got),
        }
    }
}
