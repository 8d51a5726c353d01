//! `topK`: the `k` most frequent values of a window, exactly.
//!
//! Every distinct value (its canonical JSON text) is counted, so the result is
//! exact and two counters merge by adding counts (session merges). The price
//! is memory proportional to the number of distinct values per (key, window):
//! about `len(value) + 40` bytes each. The spec bounds `k` to `1..=1000`; the
//! number of distinct values is bounded only by the input, which is why the
//! bounded entry cache (see `WindowOperator`) spills whole entries to the
//! state backend rather than relying on each entry being small.
//!
//! Ranking: higher count first; equal counts by the canonical JSON text of the
//! value in ascending byte order (deterministic across runs, restores and
//! merge orders).

use rustc_hash::FxHashMap as HashMap;

/// Exact frequency counts of values, ranked on demand.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopKCounter {
    k: u32,
    counts: HashMap<Box<[u8]>, u64>,
}

impl TopKCounter {
    pub fn new(k: u32) -> Self {
        TopKCounter {
            k,
            counts: HashMap::default(),
        }
    }

    /// Counts one value, given as canonical JSON text.
    pub fn insert(&mut self, value: &[u8]) {
        match self.counts.get_mut(value) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(value.into(), 1);
            }
        }
    }

    pub fn merge(&mut self, other: &TopKCounter) {
        for (v, n) in &other.counts {
            *self.counts.entry(v.clone()).or_default() += n;
        }
    }

    /// The top `k` as `(value text, count)`, best first.
    pub fn ranked(&self) -> Vec<(&[u8], u64)> {
        let mut all: Vec<(&[u8], u64)> = self.counts.iter().map(|(v, n)| (&**v, *n)).collect();
        let rank = |a: &(&[u8], u64), b: &(&[u8], u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        let k = self.k as usize;
        if all.len() > k && k > 0 {
            all.select_nth_unstable_by(k - 1, rank);
            all.truncate(k);
        }
        all.sort_unstable_by(rank);
        all.truncate(k);
        all
    }

    /// `[{"value": v, "count": n}, ...]`, best first.
    pub fn result(&self) -> serde_json::Value {
        let items = self
            .ranked()
            .into_iter()
            .map(|(v, n)| {
                // The text was produced by `Scalar::write_canonical`: valid JSON.
                let value = serde_json::from_slice(v).unwrap_or(serde_json::Value::Null);
                serde_json::json!({"value": value, "count": n})
            })
            .collect();
        serde_json::Value::Array(items)
    }

    /// `k`, count of entries, then (len, text, count) sorted by text so that
    /// equal counters encode to equal bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.k.to_le_bytes());
        out.extend_from_slice(&(self.counts.len() as u32).to_le_bytes());
        let mut entries: Vec<_> = self.counts.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (v, n) in entries {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    pub fn decode(input: &mut &[u8]) -> Option<TopKCounter> {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let head = input.get(..n)?;
            *input = &input[n..];
            Some(head)
        }
        let u32_at =
            |input: &mut &[u8]| -> Option<u32> { Some(u32::from_le_bytes(take(input, 4)?.try_into().ok()?)) };
        let k = u32_at(input)?;
        let len = u32_at(input)? as usize;
        let mut counts = HashMap::default();
        counts.reserve(len.min(input.len() / 12));
        for _ in 0..len {
            let vlen = u32_at(input)? as usize;
            let v: Box<[u8]> = take(input, vlen)?.into();
            let n = u64::from_le_bytes(take(input, 8)?.try_into().ok()?);
            counts.insert(v, n);
        }
        Some(TopKCounter { k, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranks_by_count_then_value_text() {
        let mut t = TopKCounter::new(3);
        for v in [&b"\"b\""[..], b"\"a\"", b"\"c\"", b"\"b\"", b"2", b"10", b"\"c\""] {
            t.insert(v);
        }
        assert_eq!(
            t.result(),
            json!([{"value": "b", "count": 2}, {"value": "c", "count": 2}, {"value": "a", "count": 1}])
        );
        let mut buf = Vec::new();
        t.encode(&mut buf);
        let mut s = buf.as_slice();
        assert_eq!(TopKCounter::decode(&mut s), Some(t));
        assert!(s.is_empty());
    }

    #[test]
    fn merge_equals_sequential() {
        let values: Vec<Vec<u8>> = (0..200).map(|i| format!("{}", i * 7 % 13).into_bytes()).collect();
        let (mut whole, mut left, mut right) =
            (TopKCounter::new(4), TopKCounter::new(4), TopKCounter::new(4));
        for (i, v) in values.iter().enumerate() {
            whole.insert(v);
            if i < 77 { left.insert(v) } else { right.insert(v) }
        }
        right.merge(&left);
        assert_eq!(right.result(), whole.result());
        // Brute force: counts of 0..13, ties by text.
        let mut expect: Vec<(String, usize)> = (0..13)
            .map(|x| (x.to_string(), (0..200).filter(|i| i * 7 % 13 == x).count()))
            .collect();
        expect.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let expect: Vec<_> = expect[..4]
            .iter()
            .map(|(v, n)| json!({"value": v.parse::<i64>().unwrap(), "count": n}))
            .collect();
        assert_eq!(whole.result(), json!(expect));
    }
}
