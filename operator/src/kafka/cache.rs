//! The eviction policy of the admin-client cache, without I/O or a clock:
//! every call takes `now`, so the tests decide what time it is.
//!
//! Invariants: never more than `capacity` entries; an entry unused for
//! longer than `ttl` is never returned (it is dropped at the next access);
//! when a new entry needs room, the least recently used one goes.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

struct Entry<V> {
    value: V,
    last_used: Instant,
    /// Order of use (higher: more recent); unlike `last_used`, two uses are
    /// never equal, so the least recently used entry is always one.
    tick: u64,
}

/// A map of at most `capacity` entries, least recently used evicted first,
/// idle entries expiring after `ttl`.
pub struct BoundedCache<K, V> {
    capacity: usize,
    ttl: Duration,
    tick: u64,
    entries: HashMap<K, Entry<V>>,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value for `key`, now marked used; `None` when absent or expired.
    /// Returns the expired values too, for the caller to drop where it
    /// chooses (outside its lock).
    pub fn get(&mut self, key: &K, now: Instant) -> (Option<&V>, Vec<V>) {
        let expired = self.expire(now);
        self.tick += 1;
        let tick = self.tick;
        let value = self.entries.get_mut(key).map(|e| {
            e.last_used = now;
            e.tick = tick;
            &e.value
        });
        (value, expired)
    }

    /// Stores `value` for `key` as used at `now`, replacing any previous
    /// one. Returns what left the cache: expired entries, the least
    /// recently used ones past capacity, and a replaced value.
    pub fn insert(&mut self, key: K, value: V, now: Instant) -> Vec<V> {
        let mut gone = self.expire(now);
        if let Some(old) = self.entries.remove(&key) {
            gone.push(old.value);
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.tick)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                gone.push(e.value);
            }
        }
        self.tick += 1;
        self.entries.insert(
            key,
            Entry {
                value,
                last_used: now,
                tick: self.tick,
            },
        );
        gone
    }

    /// Removes the entries unused for longer than `ttl`.
    fn expire(&mut self, now: Instant) -> Vec<V> {
        let ttl = self.ttl;
        let stale: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_used) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .iter()
            .filter_map(|k| self.entries.remove(k))
            .map(|e| e.value)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn sorted(mut v: Vec<&'static str>) -> Vec<&'static str> {
        v.sort_unstable();
        v
    }

    #[test]
    fn never_more_than_capacity_least_recently_used_evicted() {
        let t0 = Instant::now();
        let mut cache = BoundedCache::new(3, TTL);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(cache.insert(k, k, t0 + secs(i as u64)).is_empty());
        }
        // "a" is used again, so "b" is now the least recently used.
        assert_eq!(cache.get(&"a", t0 + secs(3)).0, Some(&"a"));
        assert_eq!(cache.insert("d", "d", t0 + secs(4)), vec!["b"]);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&"b", t0 + secs(5)).0, None);
        // Then "c" (untouched since its insert), then "a".
        assert_eq!(cache.insert("e", "e", t0 + secs(6)), vec!["c"]);
        assert_eq!(cache.insert("f", "f", t0 + secs(7)), vec!["a"]);
        for k in ["d", "e", "f"] {
            assert_eq!(cache.get(&k, t0 + secs(8)).0, Some(&k));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn uses_at_the_same_instant_keep_their_order() {
        let now = Instant::now();
        let mut cache = BoundedCache::new(2, TTL);
        cache.insert("a", 1, now);
        cache.insert("b", 2, now);
        cache.get(&"a", now);
        assert_eq!(cache.insert("c", 3, now), vec![2], "b was used least recently");
    }

    #[test]
    fn replacing_a_key_returns_the_old_value_and_evicts_nothing_else() {
        let now = Instant::now();
        let mut cache = BoundedCache::new(2, TTL);
        cache.insert("a", 1, now);
        cache.insert("b", 2, now);
        assert_eq!(cache.insert("a", 10, now), vec![1]);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"a", now).0, Some(&10));
        assert_eq!(cache.get(&"b", now).0, Some(&2));
    }

    #[test]
    fn entries_unused_past_the_ttl_are_dropped_on_access() {
        let t0 = Instant::now();
        let mut cache = BoundedCache::new(10, TTL);
        cache.insert("a", "a", t0);
        cache.insert("b", "b", t0);
        // A use renews "b"; at exactly the TTL "a" is still there.
        assert_eq!(cache.get(&"b", t0 + secs(300)).0, Some(&"b"));
        let (a, expired) = cache.get(&"a", t0 + TTL);
        assert_eq!((a, expired), (Some(&"a"), vec![]));
        // 10 min after their last use both are gone, whichever key is asked.
        let (c, expired) = cache.get(&"c", t0 + TTL + TTL + secs(1));
        assert_eq!(c, None);
        assert_eq!(sorted(expired), vec!["a", "b"]);
        assert!(cache.is_empty());
    }

    #[test]
    fn an_insert_drops_expired_entries_before_evicting_live_ones() {
        let t0 = Instant::now();
        let mut cache = BoundedCache::new(2, TTL);
        cache.insert("old", "old", t0);
        cache.insert("live", "live", t0 + secs(500));
        let gone = cache.insert("new", "new", t0 + TTL + secs(1));
        assert_eq!(gone, vec!["old"]);
        assert_eq!(cache.get(&"live", t0 + TTL + secs(2)).0, Some(&"live"));
    }

    #[test]
    fn a_zero_capacity_still_holds_one() {
        let now = Instant::now();
        let mut cache = BoundedCache::new(0, TTL);
        cache.insert("a", 1, now);
        assert_eq!(cache.get(&"a", now).0, Some(&1));
        assert_eq!(cache.insert("b", 2, now), vec![1]);
    }
}
