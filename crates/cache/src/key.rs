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

/// A key borrowed from the caller's buffer: a lookup needs no allocation, only a
/// miss that goes on to fill turns it into a [`Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    hash: u64,
    bytes: &'a [u8],
}

impl<'a> KeyRef<'a> {
    /// The key of `bytes`, parts written with [`push_part`].
    pub fn new(bytes: &'a [u8]) -> KeyRef<'a> {
        // A fixed seed: the same key hashes the same in every pgopt instance.
        let mut hasher =
            foldhash::quality::FixedState::with_seed(0x7067_6f70_745f_6b65).build_hasher();
        hasher.write(bytes);
        KeyRef {
            hash: hasher.finish(),
            bytes,
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn to_key(&self) -> Key {
        Key {
            hash: self.hash,
            bytes: self.bytes.into(),
        }
    }
}

impl Key {
    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn view(&self) -> KeyRef<'_> {
        KeyRef {
            hash: self.hash,
            bytes: &self.bytes,
        }
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
        push_part(&mut self.bytes, label, value);
    }

    pub fn finish(self) -> Key {
        let hash = KeyRef::new(&self.bytes).hash;
        Key {
            hash,
            bytes: self.bytes.into(),
        }
    }
}

/// Keys built one after another in one buffer (a session's), sharing a prefix: the
/// parts all of them hold, written again only when their `version` changes.
#[derive(Debug, Default)]
pub struct KeyBuf {
    bytes: Vec<u8>,
    prefix: usize,
    version: Option<u64>,
    hash: u64,
}

impl KeyBuf {
    /// Whether the prefix was written at another `version` (or not yet).
    pub fn needs_prefix(&self, version: u64) -> bool {
        self.version != Some(version)
    }

    /// Writes the prefix, with [`push_part`], for `version`.
    pub fn set_prefix(&mut self, version: u64, prefix: impl FnOnce(&mut Vec<u8>)) {
        /// Room taken at once for a session's first key: a prefix (names, settings,
        /// defaults) and a short statement fit, with no growth part by part.
        const FIRST: usize = 512;
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(FIRST);
        }
        self.bytes.clear();
        prefix(&mut self.bytes);
        self.prefix = self.bytes.len();
        self.version = Some(version);
    }

    /// Builds the next key: the prefix, then the rest from `rest` ([`push_part`]).
    pub fn build(&mut self, rest: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.truncate(self.prefix);
        rest(&mut self.bytes);
        self.hash = KeyRef::new(&self.bytes).hash;
    }

    /// The key last built.
    pub fn key(&self) -> KeyRef<'_> {
        KeyRef {
            hash: self.hash,
            bytes: &self.bytes,
        }
    }
}

/// Appends one part to a key's bytes as [`KeyBuilder`] does: its label, then 0 when
/// absent, or 1, its length and its bytes (for keys built in a reused buffer, see
/// [`KeyRef`]).
pub fn push_part(bytes: &mut Vec<u8>, label: u8, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            bytes.reserve(10 + v.len());
            bytes.extend_from_slice(&[label, 1]);
            bytes.extend_from_slice(&(v.len() as u64).to_be_bytes());
            bytes.extend_from_slice(v);
        }
        None => bytes.extend_from_slice(&[label, 0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_gives_the_builders_keys() {
        let built = |rest: &[u8]| {
            KeyBuilder::new()
                .part(b'd', b"db")
                .part(b'q', rest)
                .finish()
        };
        let mut buf = KeyBuf::default();
        assert!(buf.needs_prefix(7));
        buf.set_prefix(7, |b| push_part(b, b'd', Some(b"db")));
        for rest in [&b"select 1"[..], b"select 22", b"x"] {
            assert!(!buf.needs_prefix(7));
            buf.build(|b| push_part(b, b'q', Some(rest)));
            assert_eq!(buf.key().to_key(), built(rest));
            assert_eq!(buf.key().hash(), built(rest).hash());
        }
        assert!(buf.needs_prefix(8));
        buf.set_prefix(8, |b| push_part(b, b'd', Some(b"other")));
        buf.build(|_| {});
        assert_eq!(
            buf.key().to_key(),
            KeyBuilder::new().part(b'd', b"other").finish()
        );
    }

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
