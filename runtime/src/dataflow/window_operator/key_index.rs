//! Group key -> the id of its state: keys hashed once, bytes kept once.

use super::*;

/// Index of a key's state in [`WindowOperator::keys`].
pub(super) type KeyId = u32;

pub(super) type GroupKey = Box<[u8]>;

/// Bytes of a group key kept inline in its [`KeyState`].
pub(super) const INLINE_KEY: usize = 22;

/// A group key's bytes: inline when short (read with the key state, no
/// pointer to follow), else boxed.
#[derive(Debug)]
pub(super) enum KeyBytes {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(GroupKey),
}

impl From<&[u8]> for KeyBytes {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut b = [0u8; INLINE_KEY];
            b[..key.len()].copy_from_slice(key);
            KeyBytes::Inline(key.len() as u8, b)
        } else {
            KeyBytes::Heap(key.into())
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Inline(n, b) => &b[..*n as usize],
            KeyBytes::Heap(k) => k,
        }
    }
}

/// Group key -> id, keyed by a 64-bit hash of the key so the bytes live once
/// (in the key state) and a lookup reads the bucket and the key state only.
/// A key whose hash is taken by another key goes to `collisions`.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    by_hash: HashMap<u64, KeyId>,
    collisions: HashMap<GroupKey, KeyId>,
}

impl KeyIndex {
    pub(super) fn hash(key: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = rustc_hash::FxHasher::default();
        h.write(key);
        h.write_usize(key.len());
        h.finish()
    }

    pub(super) fn find(&self, keys: &[Option<KeyState>], key: &[u8]) -> Option<KeyId> {
        if let Some(&id) = self.by_hash.get(&Self::hash(key))
            && keys
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|ks| *ks.key == *key)
        {
            return Some(id);
        }
        if self.collisions.is_empty() {
            return None;
        }
        self.collisions.get(key).copied()
    }

    pub(super) fn insert(&mut self, key: &[u8], id: KeyId) {
        match self.by_hash.entry(Self::hash(key)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.insert(key.into(), id);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &[u8], id: KeyId) {
        let h = Self::hash(key);
        if self.by_hash.get(&h) == Some(&id) {
            self.by_hash.remove(&h);
        } else {
            self.collisions.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(key: &[u8]) -> Option<KeyState> {
        Some(KeyState {
            key: key.into(),
            slots: SmallVec::new(),
            last_used: 0,
            queued: false,
        })
    }

    #[test]
    fn key_index_handles_hash_collisions() {
        let keys = vec![state(b"a"), state(b"b"), state(&[7u8; 40])];
        let mut idx = KeyIndex::default();
        idx.insert(b"a", 0);
        // Pretend "b" collides with "a": its hash slot is taken.
        idx.by_hash.insert(KeyIndex::hash(b"b"), 0);
        idx.insert(b"b", 1);
        idx.insert(&[7u8; 40], 2);
        assert_eq!(idx.find(&keys, b"a"), Some(0));
        assert_eq!(idx.find(&keys, b"b"), Some(1));
        assert_eq!(idx.find(&keys, &[7u8; 40]), Some(2));
        assert_eq!(idx.find(&keys, b"c"), None);
        idx.remove(b"b", 1);
        assert_eq!(idx.find(&keys, b"b"), None);
        assert_eq!(idx.find(&keys, b"a"), Some(0));
        assert_eq!(&*keys[2].as_ref().unwrap().key, &[7u8; 40][..]);
    }
}
