//! Distinct counting: exact up to a cap, then HyperLogLog.

use std::collections::HashSet;

/// Distinct values kept exactly per window and key before switching to a
/// HyperLogLog sketch.
pub const DISTINCT_EXACT_CAP: usize = 10_000;

/// HyperLogLog precision: 2^12 registers, standard error 1.04/sqrt(4096) ≈ 1.6%.
const HLL_P: u32 = 12;
const HLL_M: usize = 1 << HLL_P;

/// Counts distinct 64-bit value hashes. Exact while at most
/// [`DISTINCT_EXACT_CAP`] hashes were seen; an estimate afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistinctCounter {
    Exact(HashSet<u64>),
    Sketch(Box<[u8; HLL_M]>),
}

impl Default for DistinctCounter {
    fn default() -> Self {
        DistinctCounter::Exact(HashSet::new())
    }
}

impl DistinctCounter {
    pub fn insert(&mut self, hash: u64) {
        match self {
            DistinctCounter::Exact(set) => {
                set.insert(hash);
                if set.len() > DISTINCT_EXACT_CAP {
                    self.convert_to_sketch();
                }
            }
            DistinctCounter::Sketch(regs) => hll_insert(regs, hash),
        }
    }

    fn convert_to_sketch(&mut self) {
        if let DistinctCounter::Exact(set) = self {
            let mut regs = Box::new([0u8; HLL_M]);
            for h in set.iter() {
                hll_insert(&mut regs, *h);
            }
            *self = DistinctCounter::Sketch(regs);
        }
    }

    pub fn merge(&mut self, other: &DistinctCounter) {
        match other {
            DistinctCounter::Exact(b) => {
                for h in b {
                    self.insert(*h);
                }
            }
            DistinctCounter::Sketch(b) => {
                self.convert_to_sketch();
                if let DistinctCounter::Sketch(a) = self {
                    for (x, y) in a.iter_mut().zip(b.iter()) {
                        *x = (*x).max(*y);
                    }
                }
            }
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            DistinctCounter::Exact(set) => set.len() as u64,
            DistinctCounter::Sketch(regs) => hll_estimate(regs),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DistinctCounter::Exact(set) => {
                out.push(0);
                out.extend_from_slice(&(set.len() as u32).to_le_bytes());
                let mut sorted: Vec<_> = set.iter().copied().collect();
                sorted.sort_unstable();
                for h in sorted {
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
            DistinctCounter::Sketch(regs) => {
                out.push(1);
                out.extend_from_slice(&regs[..]);
            }
        }
    }

    pub fn decode(input: &mut &[u8]) -> Option<DistinctCounter> {
        let (&tag, rest) = input.split_first()?;
        *input = rest;
        match tag {
            0 => {
                let (n, rest) = input.split_first_chunk::<4>()?;
                let n = u32::from_le_bytes(*n) as usize;
                let bytes = rest.get(..n.checked_mul(8)?)?;
                let set = bytes
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        u64::from_le_bytes(b)
                    })
                    .collect();
                *input = &rest[n * 8..];
                Some(DistinctCounter::Exact(set))
            }
            1 => {
                let regs = input.get(..HLL_M)?;
                let mut b = Box::new([0u8; HLL_M]);
                b.copy_from_slice(regs);
                *input = &input[HLL_M..];
                Some(DistinctCounter::Sketch(b))
            }
            _ => None,
        }
    }
}

fn hll_insert(regs: &mut [u8; HLL_M], hash: u64) {
    let idx = (hash >> (64 - HLL_P)) as usize;
    let rest = (hash << HLL_P) | (1 << (HLL_P - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if regs[idx] < rank {
        regs[idx] = rank;
    }
}

fn hll_estimate(regs: &[u8; HLL_M]) -> u64 {
    let m = HLL_M as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0;
    let mut zeros = 0usize;
    for &r in regs.iter() {
        sum += 2f64.powi(-i32::from(r));
        if r == 0 {
            zeros += 1;
        }
    }
    let raw = alpha * m * m / sum;
    let est = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    est.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::stable_hash64;

    #[test]
    fn exact_below_cap_estimate_above() {
        let mut d = DistinctCounter::default();
        for i in 0..DISTINCT_EXACT_CAP as u64 {
            d.insert(stable_hash64(&i.to_le_bytes()));
            d.insert(stable_hash64(&i.to_le_bytes()));
        }
        assert_eq!(d.count(), DISTINCT_EXACT_CAP as u64);
        for i in 0..50_000u64 {
            d.insert(stable_hash64(&i.to_le_bytes()));
        }
        assert!(matches!(d, DistinctCounter::Sketch(_)));
        let c = d.count() as f64;
        assert!((c - 50_000.0).abs() / 50_000.0 < 0.06, "estimate {c}");
        let mut buf = Vec::new();
        d.encode(&mut buf);
        let mut s = buf.as_slice();
        assert_eq!(DistinctCounter::decode(&mut s), Some(d));
    }
}
