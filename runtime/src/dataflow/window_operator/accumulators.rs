//! The aggregates of one (window, key) entry and their stored form.

use super::*;

/// Accumulators held inline in a slot (jobs with more use a vector).
pub(super) const INLINE_ACCS: usize = 2;

/// The accumulators of one entry: inline up to [`INLINE_ACCS`] (no
/// allocation, and in the same cache lines as the slot), else a vector.
#[derive(Debug, Clone)]
pub(super) enum AccSet {
    Inline(u8, [Accumulator; INLINE_ACCS]),
    Heap(Vec<Accumulator>),
}

impl Default for AccSet {
    fn default() -> Self {
        AccSet::Inline(0, [Accumulator::Count(0), Accumulator::Count(0)])
    }
}

impl AccSet {
    pub(super) fn push(&mut self, acc: Accumulator) {
        match self {
            AccSet::Inline(n, items) if (*n as usize) < INLINE_ACCS => {
                items[*n as usize] = acc;
                *n += 1;
            }
            AccSet::Inline(_, items) => {
                let mut v: Vec<Accumulator> = Vec::with_capacity(INLINE_ACCS * 2);
                v.extend(
                    items
                        .iter_mut()
                        .map(|a| std::mem::replace(a, Accumulator::Count(0))),
                );
                v.push(acc);
                *self = AccSet::Heap(v);
            }
            AccSet::Heap(v) => v.push(acc),
        }
    }

    pub(super) fn extend(&mut self, accs: impl Iterator<Item = Accumulator>) {
        for a in accs {
            self.push(a);
        }
    }

    pub(super) fn clear(&mut self) {
        *self = AccSet::default();
    }
}

impl std::ops::Deref for AccSet {
    type Target = [Accumulator];
    fn deref(&self) -> &[Accumulator] {
        match self {
            AccSet::Inline(n, items) => &items[..*n as usize],
            AccSet::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for AccSet {
    fn deref_mut(&mut self) -> &mut [Accumulator] {
        match self {
            AccSet::Inline(n, items) => &mut items[..*n as usize],
            AccSet::Heap(v) => v,
        }
    }
}

/// Decodes the accumulators of one entry into `accs` (appended). An
/// aggregation added since the state was written starts empty.
pub(super) fn decode_accs(
    functions: &[AggregateFunction],
    mut rest: &[u8],
    partition: PartitionId,
    accs: &mut AccSet,
) -> Result<()> {
    for f in functions {
        if rest.is_empty() {
            accs.push(Accumulator::new(*f));
            continue;
        }
        accs.push(Accumulator::decode(&mut rest).ok_or_else(|| corrupt(partition, "bad value"))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_set_spills_to_a_vector_past_the_inline_ones() {
        let mut a = AccSet::default();
        for n in 0..5 {
            a.push(Accumulator::Count(n));
        }
        assert_eq!(&a[..], &(0..5).map(Accumulator::Count).collect::<Vec<_>>()[..]);
        a.clear();
        assert!(a.is_empty());
    }
}
