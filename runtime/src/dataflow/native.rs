//! Native evaluation of the common subset of step expressions: field
//! paths, literals, arithmetic, comparisons, `&&`, `||`, `!`, `? :`,
//! `int()` and `double()` over ints, doubles, strings, bools and null.
//!
//! Steps whose every expression is in the subset ([`NativeSteps::compile`])
//! run without the CEL interpreter: the record's fields are read straight
//! from its JSON ([`crate::codec::FieldPaths`]) and the steps evaluated on
//! them. Whatever the subset does not decide exactly as cel-rust does (a
//! missing field, an object, mixed types, an overflow, a division by zero,
//! any error) is a [`Fallback`]: the caller runs the record through CEL, so
//! results and dead letters are CEL's by construction. The differential
//! property test (`runtime/tests/native_model.rs`) holds the two to that.

use std::borrow::Cow;

use cel::common::ast::{Expr, LiteralValue};

use crate::codec::{FieldPaths, RecordDecoder, Scalar};

/// The record could not be evaluated natively: run it through CEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// A value the subset computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum NVal<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(Cow<'a, str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Where a path reads from: a slot of the source record's fields, or a
/// field of the record the last `map` made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Slot(usize),
    Field(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum NExpr {
    Lit(NVal<'static>),
    Path(Loc),
    Not(Box<NExpr>),
    Neg(Box<NExpr>),
    And(Box<NExpr>, Box<NExpr>),
    Or(Box<NExpr>, Box<NExpr>),
    Arith(Arith, Box<NExpr>, Box<NExpr>),
    Cmp(Cmp, Box<NExpr>, Box<NExpr>),
    Cond(Box<NExpr>, Box<NExpr>, Box<NExpr>),
    ToInt(Box<NExpr>),
    ToDouble(Box<NExpr>),
}

/// What the record is at a step, for compiling paths.
enum Scope<'s> {
    /// The source record: any path, through `paths`.
    Source(&'s mut FieldPaths),
    /// The record a `map` made: its top-level fields, in order.
    Mapped(&'s [String]),
}

/// `record.a.b` -> `["a", "b"]`.
fn path_of(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Ident(name) if name == "record" => Some(Vec::new()),
        Expr::Select(s) if !s.test => {
            let mut p = path_of(&s.operand.expr)?;
            p.push(s.field.clone());
            Some(p)
        }
        _ => None,
    }
}

fn compile(e: &Expr, scope: &mut Scope<'_>) -> Option<NExpr> {
    if let Some(path) = path_of(e) {
        if path.is_empty() {
            return None; // `record` itself
        }
        return Some(NExpr::Path(match scope {
            Scope::Source(paths) => Loc::Slot(paths.add(&path)),
            Scope::Mapped(fields) => match path.as_slice() {
                [name] => Loc::Field(fields.iter().position(|f| f == name)?),
                _ => return None,
            },
        }));
    }
    match e {
        Expr::Literal(l) => Some(NExpr::Lit(match l {
            LiteralValue::Boolean(b) => NVal::Bool(bool::from(*b)),
            LiteralValue::Int(i) => NVal::Int(i64::from(*i)),
            LiteralValue::Double(d) => NVal::Double(f64::from(*d)),
            LiteralValue::String(s) => NVal::Str(Cow::Owned(s.inner().to_owned())),
            LiteralValue::Null => NVal::Null,
            LiteralValue::UInt(_) | LiteralValue::Bytes(_) => return None,
        })),
        Expr::Call(c) if c.target.is_none() => {
            let mut arg =
                |i: usize| -> Option<Box<NExpr>> { Some(Box::new(compile(&c.args.get(i)?.expr, scope)?)) };
            let unary = c.args.len() == 1;
            let binary = c.args.len() == 2;
            Some(match c.func_name.as_str() {
                "!_" if unary => NExpr::Not(arg(0)?),
                "-_" if unary => NExpr::Neg(arg(0)?),
                "int" if unary => NExpr::ToInt(arg(0)?),
                "double" if unary => NExpr::ToDouble(arg(0)?),
                "_&&_" if binary => NExpr::And(arg(0)?, arg(1)?),
                "_||_" if binary => NExpr::Or(arg(0)?, arg(1)?),
                "_?_:_" if c.args.len() == 3 => NExpr::Cond(arg(0)?, arg(1)?, arg(2)?),
                op if binary => {
                    let arith = match op {
                        "_+_" => Some(Arith::Add),
                        "_-_" => Some(Arith::Sub),
                        "_*_" => Some(Arith::Mul),
                        "_/_" => Some(Arith::Div),
                        "_%_" => Some(Arith::Rem),
                        _ => None,
                    };
                    let cmp = match op {
                        "_==_" => Some(Cmp::Eq),
                        "_!=_" => Some(Cmp::Ne),
                        "_<_" => Some(Cmp::Lt),
                        "_<=_" => Some(Cmp::Le),
                        "_>_" => Some(Cmp::Gt),
                        "_>=_" => Some(Cmp::Ge),
                        _ => None,
                    };
                    match (arith, cmp) {
                        (Some(a), _) => NExpr::Arith(a, arg(0)?, arg(1)?),
                        (_, Some(k)) => NExpr::Cmp(k, arg(0)?, arg(1)?),
                        _ => return None,
                    }
                }
                _ => return None,
            })
        }
        _ => None,
    }
}

/// The largest magnitude below which a double converts to an int (CEL
/// refuses what does not fit; the edge itself goes to CEL).
const INT_RANGE: f64 = 9.2e18;

fn eval<'a>(e: &NExpr, slots: &[Option<Scalar<'a>>], fields: &[NVal<'a>]) -> Result<NVal<'a>, Fallback> {
    Ok(match e {
        NExpr::Lit(v) => v.clone(),
        NExpr::Path(Loc::Field(i)) => fields.get(*i).cloned().ok_or(Fallback)?,
        NExpr::Path(Loc::Slot(i)) => match slots.get(*i).cloned().flatten().ok_or(Fallback)? {
            Scalar::Null => NVal::Null,
            Scalar::Bool(b) => NVal::Bool(b),
            Scalar::Int(i) => NVal::Int(i),
            // An integer above i64::MAX is read as a double here but is a
            // uint to CEL.
            Scalar::Float(f) if f.abs() >= INT_RANGE && f.fract() == 0.0 => return Err(Fallback),
            Scalar::Float(f) => NVal::Double(f),
            Scalar::Str(s) => NVal::Str(s),
            Scalar::Composite => return Err(Fallback),
        },
        NExpr::Not(a) => match eval(a, slots, fields)? {
            NVal::Bool(b) => NVal::Bool(!b),
            _ => return Err(Fallback),
        },
        NExpr::Neg(a) => match eval(a, slots, fields)? {
            NVal::Int(i) => NVal::Int(i.checked_neg().ok_or(Fallback)?),
            NVal::Double(d) => NVal::Double(-d),
            _ => return Err(Fallback),
        },
        NExpr::And(a, b) => match eval(a, slots, fields)? {
            NVal::Bool(false) => NVal::Bool(false),
            NVal::Bool(true) => match eval(b, slots, fields)? {
                v @ NVal::Bool(_) => v,
                _ => return Err(Fallback),
            },
            _ => return Err(Fallback),
        },
        NExpr::Or(a, b) => match eval(a, slots, fields)? {
            NVal::Bool(true) => NVal::Bool(true),
            NVal::Bool(false) => match eval(b, slots, fields)? {
                v @ NVal::Bool(_) => v,
                _ => return Err(Fallback),
            },
            _ => return Err(Fallback),
        },
        NExpr::Cond(c, a, b) => match eval(c, slots, fields)? {
            NVal::Bool(true) => eval(a, slots, fields)?,
            NVal::Bool(false) => eval(b, slots, fields)?,
            _ => return Err(Fallback),
        },
        NExpr::ToInt(a) => match eval(a, slots, fields)? {
            NVal::Int(i) => NVal::Int(i),
            NVal::Double(d) if d.abs() < INT_RANGE => NVal::Int(d.trunc() as i64),
            _ => return Err(Fallback),
        },
        NExpr::ToDouble(a) => match eval(a, slots, fields)? {
            NVal::Int(i) => NVal::Double(i as f64),
            NVal::Double(d) => NVal::Double(d),
            _ => return Err(Fallback),
        },
        NExpr::Arith(op, a, b) => arith(*op, eval(a, slots, fields)?, eval(b, slots, fields)?)?,
        NExpr::Cmp(op, a, b) => NVal::Bool(compare(*op, &eval(a, slots, fields)?, &eval(b, slots, fields)?)?),
    })
}

fn arith<'a>(op: Arith, a: NVal<'a>, b: NVal<'a>) -> Result<NVal<'a>, Fallback> {
    Ok(match (a, b) {
        (NVal::Int(x), NVal::Int(y)) => NVal::Int(
            match op {
                Arith::Add => x.checked_add(y),
                Arith::Sub => x.checked_sub(y),
                Arith::Mul => x.checked_mul(y),
                Arith::Div => x.checked_div(y),
                Arith::Rem => x.checked_rem(y),
            }
            .ok_or(Fallback)?,
        ),
        (NVal::Double(x), NVal::Double(y)) => NVal::Double(match op {
            Arith::Add => x + y,
            Arith::Sub => x - y,
            Arith::Mul => x * y,
            Arith::Div if y != 0.0 => x / y,
            Arith::Div | Arith::Rem => return Err(Fallback),
        }),
        (NVal::Str(x), NVal::Str(y)) if op == Arith::Add => NVal::Str(Cow::Owned(format!("{x}{y}"))),
        _ => return Err(Fallback),
    })
}

fn compare(op: Cmp, a: &NVal<'_>, b: &NVal<'_>) -> Result<bool, Fallback> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (NVal::Int(x), NVal::Int(y)) => Some(x.cmp(y)),
        (NVal::Double(x), NVal::Double(y)) => x.partial_cmp(y),
        (NVal::Str(x), NVal::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (NVal::Bool(x), NVal::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(x.cmp(y)),
        (NVal::Null, NVal::Null) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(Ordering::Equal),
        _ => return Err(Fallback),
    };
    Ok(match (op, ord) {
        // NaN: equal to nothing, ordered against nothing.
        (Cmp::Ne, None) => true,
        (_, None) => false,
        (Cmp::Eq, Some(o)) => o == Ordering::Equal,
        (Cmp::Ne, Some(o)) => o != Ordering::Equal,
        (Cmp::Lt, Some(o)) => o == Ordering::Less,
        (Cmp::Le, Some(o)) => o != Ordering::Greater,
        (Cmp::Gt, Some(o)) => o == Ordering::Greater,
        (Cmp::Ge, Some(o)) => o != Ordering::Less,
    })
}

/// One compiled step.
enum NStep {
    Filter(NExpr),
    /// Output fields in name order (as the CEL path writes them).
    Map(Vec<(String, NExpr)>),
    /// `(when, route target)` rules.
    Route(Vec<(NExpr, usize)>),
}

/// What a step list is when each expression is in the subset.
pub(crate) enum StepShape<'a> {
    Filter(&'a cel::Program),
    Map(Vec<(&'a str, &'a cel::Program)>),
    Route(Vec<(&'a cel::Program, usize)>),
}

/// Steps in the subset, ready to run without CEL.
pub struct NativeSteps {
    paths: FieldPaths,
    steps: Vec<NStep>,
}

/// What [`NativeSteps::run`] made of a record (as the CEL path would say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeOutcome {
    Filtered,
    Unchanged,
    Mapped,
    Routed { target: usize, mapped: bool },
}

const INLINE: usize = 16;

impl NativeSteps {
    /// The steps, if every expression is in the subset.
    pub(crate) fn compile(steps: &[StepShape<'_>]) -> Option<NativeSteps> {
        let mut paths = FieldPaths::default();
        let mut mapped: Option<Vec<String>> = None;
        let mut out = Vec::new();
        for step in steps {
            let mut scope = match &mapped {
                None => Scope::Source(&mut paths),
                Some(fields) => Scope::Mapped(fields),
            };
            let compiled = match step {
                StepShape::Filter(p) => NStep::Filter(compile(&p.expression().expr, &mut scope)?),
                StepShape::Route(rules) => NStep::Route(
                    rules
                        .iter()
                        .map(|(p, t)| Some((compile(&p.expression().expr, &mut scope)?, *t)))
                        .collect::<Option<_>>()?,
                ),
                StepShape::Map(fields) => NStep::Map(
                    fields
                        .iter()
                        .map(|(n, p)| Some(((*n).to_owned(), compile(&p.expression().expr, &mut scope)?)))
                        .collect::<Option<_>>()?,
                ),
            };
            if let NStep::Map(fields) = &compiled {
                mapped = Some(fields.iter().map(|(n, _)| n.clone()).collect());
            }
            out.push(compiled);
        }
        Some(NativeSteps { paths, steps: out })
    }

    /// Runs the steps on the JSON record `value`; a map's record goes to
    /// `out` as JSON (cleared first). `Err(Fallback)`: run it through CEL.
    pub fn run(
        &self,
        decoder: &dyn RecordDecoder,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<NativeOutcome, Fallback> {
        let n = self.paths.slot_count();
        let mut inline: [Option<Scalar<'_>>; INLINE] = [const { None }; INLINE];
        let mut heap: Vec<Option<Scalar<'_>>> = Vec::new();
        let slots: &mut [Option<Scalar<'_>>] = if n <= INLINE {
            &mut inline[..n]
        } else {
            heap.resize(n, None);
            &mut heap
        };
        // Not an object, or not JSON: CEL says how it fails.
        decoder.extract(value, &self.paths, slots).map_err(|_| Fallback)?;
        let mut fields: Vec<NVal<'_>> = Vec::new();
        let mut mapped: Option<&[(String, NExpr)]> = None;
        for step in &self.steps {
            match step {
                NStep::Filter(e) => match eval(e, slots, &fields)? {
                    NVal::Bool(true) => {}
                    NVal::Bool(false) | NVal::Null => return Ok(NativeOutcome::Filtered),
                    _ => return Err(Fallback),
                },
                NStep::Map(exprs) => {
                    let next = exprs
                        .iter()
                        .map(|(_, e)| eval(e, slots, &fields))
                        .collect::<Result<Vec<_>, _>>()?;
                    fields = next;
                    mapped = Some(exprs);
                }
                NStep::Route(rules) => {
                    for (e, target) in rules {
                        match eval(e, slots, &fields)? {
                            NVal::Bool(true) => {
                                if let Some(names) = mapped {
                                    write(names, &fields, out)?;
                                }
                                return Ok(NativeOutcome::Routed {
                                    target: *target,
                                    mapped: mapped.is_some(),
                                });
                            }
                            NVal::Bool(false) | NVal::Null => {}
                            _ => return Err(Fallback),
                        }
                    }
                }
            }
        }
        match mapped {
            None => Ok(NativeOutcome::Unchanged),
            Some(names) => {
                write(names, &fields, out)?;
                Ok(NativeOutcome::Mapped)
            }
        }
    }
}

/// A mapped record as JSON (names in order).
fn write(names: &[(String, NExpr)], values: &[NVal<'_>], out: &mut Vec<u8>) -> Result<(), Fallback> {
    use std::io::Write;
    out.clear();
    out.push(b'{');
    for (i, ((name, _), v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::codec::json::write_json_string(out, name);
        out.push(b':');
        match v {
            NVal::Null => out.extend_from_slice(b"null"),
            NVal::Bool(true) => out.extend_from_slice(b"true"),
            NVal::Bool(false) => out.extend_from_slice(b"false"),
            // Writing to a Vec cannot fail.
            NVal::Int(i) => {
                let _ = write!(out, "{i}");
            }
            NVal::Double(d) => {
                let n = serde_json::Number::from_f64(*d).ok_or(Fallback)?;
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            NVal::Str(s) => crate::codec::json::write_json_string(out, s),
        }
    }
    out.push(b'}');
    Ok(())
}
