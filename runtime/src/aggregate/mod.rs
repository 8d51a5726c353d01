//! Aggregators: what a window keeps per key and how it turns into a result.
//!
//! Numeric rules (the contract, also in the README of the crate):
//! - An aggregation's input is extracted in stage 1 (see
//!   [`crate::dataflow::keying`]): a missing field or JSON `null` is
//!   [`AggInput::Absent`] and is skipped by every function (`count` with a
//!   `field` counts only present values; `count` without a field counts
//!   records). A non-numeric value (string, bool, object) for
//!   `sum`/`min`/`max`/`avg`, or a non-finite number (NaN, ±inf, only
//!   possible from a CEL expression) sends the whole record to the dead-letter
//!   output: a window never silently ignores a wrong value.
//! - Integers are summed in `i64` with checked arithmetic; on overflow the
//!   sum continues in `f64` (lossy but monotone, never wraps). Any float input
//!   makes the sum a float. An `f64` sum that overflows to ±inf is emitted as
//!   JSON `null`.
//! - `sum` of no values is `0`; `min`, `max` and `avg` of no values are
//!   `null`. `avg` is always a float. `min`/`max` compare integers exactly
//!   and mixed integer/float pairs as `f64`.
//! - `distinctCount` is exact (over a 64-bit hash of the canonical JSON text
//!   of each value, so exact up to hash collisions, probability ~n²/2⁶⁵) up
//!   to [`DISTINCT_EXACT_CAP`] distinct values per window and key; beyond
//!   that it switches to a HyperLogLog with 4096 registers (standard error
//!   ~1.6%). Memory per window is thus bounded by ~80 KiB.
//! - `topK` is exact (see [`topk`]): the `k` most frequent scalar values,
//!   ties broken by canonical JSON text; memory grows with the number of
//!   distinct values per window and key.

pub mod distinct;
pub mod topk;

use std::cmp::Ordering;

pub use distinct::{DISTINCT_EXACT_CAP, DistinctCounter};
pub use topk::TopKCounter;

/// An aggregate function of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    DistinctCount,
    /// The `k` most frequent values.
    TopK {
        k: u32,
    },
}

impl AggregateFunction {
    /// Whether the function needs a numeric input.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Sum | Self::Min | Self::Max | Self::Avg)
    }
}

/// A finite number as read from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    /// Always finite.
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    fn cmp_total(self, other: Number) -> Ordering {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    fn add(self, other: Number) -> Number {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => match a.checked_add(b) {
                Some(s) => Number::Int(s),
                None => Number::Float(a as f64 + b as f64),
            },
            (a, b) => Number::Float(a.as_f64() + b.as_f64()),
        }
    }

    /// The JSON form: integers stay integers, non-finite floats become null.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Number::Int(i) => serde_json::Value::from(i),
            Number::Float(f) => {
                serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
    }
}

/// One aggregation's input from one record, already validated in stage 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggInput {
    /// Missing field or null: skipped.
    Absent,
    /// A value is present (for `count(field)`).
    Present,
    Number(Number),
    /// The 64-bit hash of a value's canonical JSON text (for `distinctCount`).
    Hash(u64),
    /// A value's canonical JSON text (for `topK`), as the byte range
    /// `start..end` of [`crate::dataflow::KeyedRecord::values`].
    Text {
        start: u32,
        end: u32,
    },
}

/// The running state of one aggregate function in one window of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Accumulator {
    Count(u64),
    Sum(Number),
    Min(Option<Number>),
    Max(Option<Number>),
    Avg { sum: Number, n: u64 },
    Distinct(DistinctCounter),
    TopK(TopKCounter),
}

impl Accumulator {
    pub fn new(f: AggregateFunction) -> Self {
        match f {
            AggregateFunction::Count => Accumulator::Count(0),
            AggregateFunction::Sum => Accumulator::Sum(Number::Int(0)),
            AggregateFunction::Min => Accumulator::Min(None),
            AggregateFunction::Max => Accumulator::Max(None),
            AggregateFunction::Avg => Accumulator::Avg {
                sum: Number::Int(0),
                n: 0,
            },
            AggregateFunction::DistinctCount => Accumulator::Distinct(DistinctCounter::default()),
            AggregateFunction::TopK { k } => Accumulator::TopK(TopKCounter::new(k)),
        }
    }

    /// Folds one input in; `values` holds the text that [`AggInput::Text`]
    /// points into. Inputs of the wrong kind (which stage 1 never produces
    /// for this function) are ignored.
    pub fn add(&mut self, input: AggInput, values: &[u8]) {
        match (self, input) {
            (_, AggInput::Absent) => {}
            (Accumulator::Count(n), _) => *n += 1,
            (Accumulator::Sum(s), AggInput::Number(x)) => *s = s.add(x),
            (Accumulator::Min(m), AggInput::Number(x))
                if m.is_none_or(|c| x.cmp_total(c) == Ordering::Less) =>
            {
                *m = Some(x);
            }
            (Accumulator::Max(m), AggInput::Number(x))
                if m.is_none_or(|c| x.cmp_total(c) == Ordering::Greater) =>
            {
                *m = Some(x);
            }
            (Accumulator::Avg { sum, n }, AggInput::Number(x)) => {
                *sum = sum.add(x);
                *n += 1;
            }
            (Accumulator::Distinct(d), AggInput::Hash(h)) => d.insert(h),
            (Accumulator::TopK(t), AggInput::Text { start, end }) => {
                if let Some(v) = values.get(start as usize..end as usize) {
                    t.insert(v);
                }
            }
            _ => {}
        }
    }

    /// Merges `other` (same function) into `self`; used when sessions merge.
    pub fn merge(&mut self, other: &Accumulator) {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::Sum(a), Accumulator::Sum(b)) => *a = a.add(*b),
            (Accumulator::Min(a), Accumulator::Min(Some(b)))
                if a.is_none_or(|c| b.cmp_total(c) == Ordering::Less) =>
            {
                *a = Some(*b);
            }
            (Accumulator::Max(a), Accumulator::Max(Some(b)))
                if a.is_none_or(|c| b.cmp_total(c) == Ordering::Greater) =>
            {
                *a = Some(*b);
            }
            (Accumulator::Avg { sum, n }, Accumulator::Avg { sum: s2, n: n2 }) => {
                *sum = sum.add(*s2);
                *n += n2;
            }
            (Accumulator::Distinct(a), Accumulator::Distinct(b)) => a.merge(b),
            (Accumulator::TopK(a), Accumulator::TopK(b)) => a.merge(b),
            _ => {}
        }
    }

    /// The result as JSON.
    pub fn result(&self) -> serde_json::Value {
        match self {
            Accumulator::Count(n) => serde_json::Value::from(*n),
            Accumulator::Sum(s) => s.to_json(),
            Accumulator::Min(m) | Accumulator::Max(m) => m.map_or(serde_json::Value::Null, Number::to_json),
            Accumulator::Avg { sum, n } => {
                if *n == 0 {
                    serde_json::Value::Null
                } else {
                    Number::Float(sum.as_f64() / *n as f64).to_json()
                }
            }
            Accumulator::Distinct(d) => serde_json::Value::from(d.count()),
            Accumulator::TopK(t) => t.result(),
        }
    }

    /// Appends a compact binary encoding (see [`Accumulator::decode`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn num(out: &mut Vec<u8>, n: Option<Number>) {
            match n {
                None => out.push(0),
                Some(Number::Int(i)) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Some(Number::Float(f)) => {
                    out.push(2);
                    out.extend_from_slice(&f.to_le_bytes());
                }
            }
        }
        match self {
            Accumulator::Count(n) => {
                out.push(b'c');
                out.extend_from_slice(&n.to_le_bytes());
            }
            Accumulator::Sum(s) => {
                out.push(b's');
                num(out, Some(*s));
            }
            Accumulator::Min(m) => {
                out.push(b'm');
                num(out, *m);
            }
            Accumulator::Max(m) => {
                out.push(b'M');
                num(out, *m);
            }
            Accumulator::Avg { sum, n } => {
                out.push(b'a');
                num(out, Some(*sum));
                out.extend_from_slice(&n.to_le_bytes());
            }
            Accumulator::Distinct(d) => {
                out.push(b'd');
                d.encode(out);
            }
            Accumulator::TopK(t) => {
                out.push(b't');
                t.encode(out);
            }
        }
    }

    /// Decodes one accumulator from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Option<Accumulator> {
        fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
            let (head, rest) = input.split_first_chunk::<N>()?;
            *input = rest;
            Some(*head)
        }
        fn num(input: &mut &[u8]) -> Option<Option<Number>> {
            let [tag] = take::<1>(input)?;
            Some(match tag {
                0 => None,
                1 => Some(Number::Int(i64::from_le_bytes(take(input)?))),
                2 => Some(Number::Float(f64::from_le_bytes(take(input)?))),
                _ => return None,
            })
        }
        let [tag] = take::<1>(input)?;
        Some(match tag {
            b'c' => Accumulator::Count(u64::from_le_bytes(take(input)?)),
            b's' => Accumulator::Sum(num(input)??),
            b'm' => Accumulator::Min(num(input)?),
            b'M' => Accumulator::Max(num(input)?),
            b'a' => {
                let sum = num(input)??;
                let n = u64::from_le_bytes(take(input)?);
                Accumulator::Avg { sum, n }
            }
            b'd' => Accumulator::Distinct(DistinctCounter::decode(input)?),
            b't' => Accumulator::TopK(TopKCounter::decode(input)?),
            _ => return None,
        })
    }
}

/// 64-bit FNV-1a followed by a SplitMix64 finaliser: stable across
/// processes and versions (it is persisted inside distinct-count state).
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction::*;
    use serde_json::json;

    fn run(f: AggregateFunction, inputs: &[AggInput]) -> serde_json::Value {
        let mut a = Accumulator::new(f);
        for i in inputs {
            a.add(*i, &[]);
        }
        let mut buf = Vec::new();
        a.encode(&mut buf);
        let mut slice = buf.as_slice();
        let decoded = Accumulator::decode(&mut slice).unwrap();
        assert!(slice.is_empty());
        assert_eq!(decoded, a);
        a.result()
    }

    fn i(v: i64) -> AggInput {
        AggInput::Number(Number::Int(v))
    }

    fn f(v: f64) -> AggInput {
        AggInput::Number(Number::Float(v))
    }

    #[test]
    fn integer_overflow_falls_back_to_float() {
        assert_eq!(run(Sum, &[i(i64::MAX), i(1)]), json!(i64::MAX as f64 + 1.0));
        assert_eq!(run(Sum, &[i(i64::MIN), i(-1)]), json!(i64::MIN as f64 - 1.0));
        assert_eq!(run(Avg, &[i(i64::MAX), i(i64::MAX)]), json!(i64::MAX as f64));
    }

    #[test]
    fn empty_and_absent_inputs() {
        use AggInput::{Absent, Present};
        assert_eq!(run(Sum, &[Absent]), json!(0));
        assert_eq!(run(Min, &[Absent]), json!(null));
        assert_eq!(run(Max, &[]), json!(null));
        assert_eq!(run(Avg, &[Absent]), json!(null));
        assert_eq!(run(Count, &[Absent, Present, Present]), json!(2));
        assert_eq!(run(DistinctCount, &[Absent]), json!(0));
    }

    #[test]
    fn mixed_int_float() {
        assert_eq!(run(Sum, &[i(1), i(2)]), json!(3));
        assert_eq!(run(Sum, &[i(1), f(0.5)]), json!(1.5));
        assert_eq!(run(Min, &[i(3), f(2.5), i(7)]), json!(2.5));
        assert_eq!(run(Max, &[i(3), f(2.5), i(7)]), json!(7));
        assert_eq!(run(Avg, &[i(1), i(2)]), json!(1.5));
        // f64 overflow to infinity is emitted as null, never as invalid JSON.
        assert_eq!(run(Sum, &[f(f64::MAX), f(f64::MAX)]), json!(null));
    }

    #[test]
    fn merge_equals_sequential() {
        let inputs: Vec<_> = (0..50).map(|v| i(v * 7 % 13)).collect();
        for func in [Count, Sum, Min, Max, Avg] {
            let mut whole = Accumulator::new(func);
            let mut left = Accumulator::new(func);
            let mut right = Accumulator::new(func);
            for (n, x) in inputs.iter().enumerate() {
                whole.add(*x, &[]);
                if n < 20 {
                    left.add(*x, &[])
                } else {
                    right.add(*x, &[])
                }
            }
            left.merge(&right);
            assert_eq!(left.result(), whole.result(), "{func:?}");
        }
    }
}
