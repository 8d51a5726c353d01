//! The native evaluation of steps against CEL: random expressions of the
//! subset (and beyond it) over random records, run as a `map` and as a
//! `filter` both natively and through cel-rust alone. Whenever the native
//! evaluation decides a record, CEL must decide it the same way, with the
//! same bytes; whatever it cannot decide exactly goes to CEL.

use proptest::prelude::*;
use serde_json::{Value, json};
use streamops_runtime::dataflow::steps::{StepDef, StepKind, StepOutcome, Steps};

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "record.a",
            "record.b",
            "record.c",
            "record.s",
            "record.n",
            "record.o.x"
        ])
        .prop_map(str::to_owned),
        (-5i64..5).prop_map(|i| i.to_string()),
        prop::sample::select(vec!["0.0", "-2.5", "1.5", "100.0", "3.0"]).prop_map(str::to_owned),
        prop::sample::select(vec!["'x'", "'ab'", "''", "true", "false", "null"]).prop_map(str::to_owned),
    ]
}

const OPS: [&str; 13] = [
    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||",
];

/// Half flat binary operations over leaves (every pair of types meets
/// every operator often), half deeper trees.
fn expr() -> impl Strategy<Value = String> {
    prop_oneof![
        (leaf(), prop::sample::select(OPS.to_vec()), leaf()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        tree(),
    ]
}

fn tree() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("!({e})")),
            inner.clone().prop_map(|e| format!("-({e})")),
            inner.clone().prop_map(|e| format!("int({e})")),
            inner.clone().prop_map(|e| format!("double({e})")),
            inner.clone().prop_map(|e| format!("size({e})")),
            (inner.clone(), prop::sample::select(OPS.to_vec()), inner.clone())
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            (inner.clone(), inner.clone(), inner).prop_map(|(c, a, b)| format!("({c}) ? ({a}) : ({b})")),
        ]
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-30i64..30).prop_map(Value::from),
        2 => prop::sample::select(vec![0.0, -1.5, 2.25, 1e300, -0.0]).prop_map(Value::from),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(9.3e18)),
        2 => prop::sample::select(vec!["x", "ab", "", "10", "é"]).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!({"x": 1})),
        1 => Just(json!([1, 2])),
    ]
}

fn record() -> impl Strategy<Value = Value> {
    (
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(value()),
    )
        .prop_map(|(a, b, c, s, o)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("a", a), ("b", b), ("c", c), ("s", s), ("o", o)] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

fn compiled(kind: StepKind) -> Option<(Steps, Steps)> {
    let defs = [StepDef {
        name: "e".into(),
        kind,
    }];
    let native = Steps::compile("spec.pipeline.steps", None, &defs).ok()?;
    let cel = Steps::compile("spec.pipeline.steps", None, &defs)
        .ok()?
        .cel_only();
    Some((native, cel))
}

/// Native and CEL agree wherever native decides.
fn agree(native: &Steps, cel: &Steps, record: &[u8]) -> Result<bool, TestCaseError> {
    let (mut n_out, mut c_out) = (Vec::new(), Vec::new());
    let Some(n) = native.run_native(record, &mut n_out) else {
        return Ok(false);
    };
    let c = cel.run_json(record, &mut c_out);
    prop_assert_eq!(
        Ok(n),
        c.clone().map_err(|e| e.to_string()),
        "native {:?}, CEL {:?}",
        n,
        c
    );
    if n == StepOutcome::Mapped {
        prop_assert_eq!(
            String::from_utf8_lossy(&n_out),
            String::from_utf8_lossy(&c_out),
            "the mapped record"
        );
    }
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn native_evaluation_agrees_with_cel_wherever_it_decides(e in expr(), r in record()) {
        let bytes = r.to_string().into_bytes();
        if let Some((native, cel)) = compiled(StepKind::Map(vec![("out".into(), e.clone())])) {
            agree(&native, &cel, &bytes)?;
        }
        if let Some((native, cel)) = compiled(StepKind::Filter(e.clone())) {
            agree(&native, &cel, &bytes)?;
        }
        if let Some((native, cel)) = compiled(StepKind::Route(vec![(e, "t".into())])) {
            agree(&native, &cel, &bytes)?;
        }
    }
}

/// The common shapes run natively (what the engine benchmark measures),
/// and so do most records of a plain dataset.
#[test]
fn common_steps_run_natively() {
    let defs = vec![
        StepDef {
            name: "valid".into(),
            kind: StepKind::Filter("record.amount >= 0.0 && record.page != '/healthz'".into()),
        },
        StepDef {
            name: "shape".into(),
            kind: StepKind::Map(vec![
                ("user_id".into(), "record.user_id".into()),
                ("page".into(), "record.page".into()),
                ("amount".into(), "record.amount".into()),
                ("ts".into(), "record.ts".into()),
                ("cents".into(), "int(record.amount * 100.0)".into()),
            ]),
        },
        StepDef {
            name: "big".into(),
            kind: StepKind::Route(vec![("record.cents > 5000".into(), "big".into())]),
        },
    ];
    let native = Steps::compile("spec.pipeline.steps", None, &defs).unwrap();
    assert!(native.is_native());
    let cel = Steps::compile("spec.pipeline.steps", None, &defs)
        .unwrap()
        .cel_only();
    let mut decided = 0;
    for i in 0..200 {
        let r = json!({"user_id": format!("u{i}"), "page": format!("/p/{}", i % 7), "amount": (i as f64) * 0.75,
                       "ts": 1_700_000_000_000i64 + i});
        let bytes = r.to_string().into_bytes();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        if let Some(n) = native.run_native(&bytes, &mut a) {
            decided += 1;
            assert_eq!(Ok(n), cel.run_json(&bytes, &mut b).map_err(|e| e.to_string()));
            assert_eq!(a, b, "{r}");
        }
    }
    assert_eq!(decided, 200, "every record of the plain dataset runs natively");
    // Functions outside the subset keep the steps on CEL.
    let strings = Steps::compile(
        "spec.pipeline.steps",
        None,
        &[StepDef {
            name: "s".into(),
            kind: StepKind::Map(vec![("u".into(), "record.user.lowerAscii()".into())]),
        }],
    )
    .unwrap();
    assert!(!strings.is_native());
}
