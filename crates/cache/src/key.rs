//! Cache keys: every input that can change a result, in one canonical byte string.
//! The hash finds the entry; the full bytes decide it is the same key (two keys that
//! share a hash never share an entry).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// A complete cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    hash: u64,
    bytes: Arc<[u8]>,
}

impl Key {
    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A key with a chosen hash (tests: two different keys in one bucket).
    #[doc(hidden)]
    pub fn with_hash(mut self, hash: u64) -> Key {
        self.hash = hash;
        self
    }
}

/// Builds a [`Key`] from labelled parts. Each part is written as its label, its length
/// and its bytes, so no two different sequences of parts give the same bytes
/// (`("ab", "c")` and `("a", "bc")` differ).
#[derive(Debug, Default)]
pub struct KeyBuilder {
    bytes: Vec<u8>,
}

impl KeyBuilder {
    pub fn new() -> KeyBuilder {
        KeyBuilder::default()
    }

    /// A builder with room for `parts` parts of `bytes` bytes in all (no regrowth).
    pub fn with_capacity(parts: usize, bytes: usize) -> KeyBuilder {
        KeyBuilder {
            bytes: Vec::with_capacity(bytes + parts * 10),
        }
    }

    /// Adds one part: `label` names what it is (`b'd'` database, `b'r'` role…).
    pub fn part(mut self, label: u8, value: &[u8]) -> KeyBuilder {
        self.push(label, Some(value));
        self
    }

    /// Adds a part that may be absent (a NULL parameter): absent differs from empty.
    pub fn optional(mut self, label: u8, value: Option<&[u8]>) -> KeyBuilder {
        self.push(label, value);
        self
    }

    /// Adds settings as sorted (name, value) pairs, so their order never matters.
    pub fn settings<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        pairs.sort_unstable();
        self.push(b'S', Some(&(pairs.len() as u64).to_be_bytes()));
        for (name, value) in pairs {
            self.push(b'n', Some(name.as_bytes()));
            self.push(b'v', Some(value.as_bytes()));
        }
        self
    }

    fn push(&mut self, label: u8, value: Option<&[u8]>) {
        self.bytes.push(label);
        match value {
            Some(v) => {
                self.bytes.push(1);
                self.bytes
                    .extend_from_slice(&(v.len() as u64).to_be_bytes());
                self.bytes.extend_from_slice(v);
            }
            None => self.bytes.push(0),
        }
    }

    pub fn finish(self) -> Key {
        // A fixed seed: the same key hashes the same in every pgopt instance.
        let mut hasher =
            foldhash::quality::FixedState::with_seed(0x7067_6f70_745f_6b65).build_hasher();
        hasher.write(&self.bytes);
        Key {
            hash: hasher.finish(),
            bytes: self.bytes.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_delimited_and_settings_sorted() {
        let a = KeyBuilder::new()
            .part(b'q', b"ab")
            .part(b'q', b"c")
            .finish();
        let b = KeyBuilder::new()
            .part(b'q', b"a")
            .part(b'q', b"bc")
            .finish();
        assert_ne!(a, b);
        let null = KeyBuilder::new().optional(b'p', None).finish();
        let empty = KeyBuilder::new().optional(b'p', Some(b"")).finish();
        assert_ne!(null, empty);
        let x = KeyBuilder::new()
            .settings([("TimeZone", "UTC"), ("DateStyle", "ISO")])
            .finish();
        let y = KeyBuilder::new()
            .settings([("DateStyle", "ISO"), ("TimeZone", "UTC")])
            .finish();
        assert_eq!(x, y);
        assert_eq!(x.hash(), y.hash());
        let z = KeyBuilder::new()
            .settings([("DateStyle", "ISO"), ("TimeZone", "Europe/Paris")])
            .finish();
        assert_ne!(x, z);
    }
}
