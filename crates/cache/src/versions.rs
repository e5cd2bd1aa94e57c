//! Table versions: an entry remembers the versions of its tables taken *before* its
//! query ran and is valid only while they all stand, so a write that commits during a
//! slow fill leaves that fill's result born invalid.
//!
//! A table's version here has two parts. The local part is bumped by every write this
//! process sees commit. The remote part is the table's counter in Redis (see `l2.rs`),
//! shared by every pgopt instance: it is learned from Redis replies and invalidation
//! messages, and any change to it bumps the local part too — so a snapshot, once
//! outdated, never becomes current again, whatever order replies arrive in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Version {
    remote: u64,
    local: u64,
}

/// Versions of the tables some entry depends on (tables never seen are at 0).
#[derive(Debug, Default)]
pub struct Versions {
    /// foldhash: looked up on every cache hit.
    tables: RwLock<foldhash::HashMap<String, Version>>,
    /// Bumps so far, over all tables.
    pub bumps: AtomicU64,
}

/// The versions of some tables at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<(String, Version)>);

impl Snapshot {
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(t, _)| t.as_str())
    }

    /// Each table with its remote (Redis) version, as the snapshot saw it.
    pub fn remote(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(t, v)| (t.as_str(), v.remote))
    }
}

impl Versions {
    /// The versions of `tables` now. A table seen for the first time gets a version
    /// here: only tables some entry depends on are tracked (see [`Versions::bump`]).
    pub fn snapshot<S: AsRef<str>>(&self, tables: &[S]) -> Snapshot {
        {
            let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
            if tables.iter().all(|t| map.contains_key(t.as_ref())) {
                return Snapshot(
                    tables
                        .iter()
                        .map(|t| (t.as_ref().to_string(), map[t.as_ref()]))
                        .collect(),
                );
            }
        }
        let mut map = self.tables.write().unwrap_or_else(|p| p.into_inner());
        Snapshot(
            tables
                .iter()
                .map(|t| {
                    let t = t.as_ref();
                    (t.to_string(), *map.entry(t.to_string()).or_default())
                })
                .collect(),
        )
    }

    /// Every table of `snapshot` is still at the version it had.
    pub fn is_current(&self, snapshot: &Snapshot) -> bool {
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        snapshot
            .0
            .iter()
            .all(|(t, v)| map.get(t).copied().unwrap_or_default() == *v)
    }

    /// A write to `tables` committed. Only tables some snapshot has taken are
    /// tracked: a table no entry depends on needs no version (a later snapshot sees
    /// the data after this write anyway), so the map stays bounded by what is cached.
    pub fn bump<S: AsRef<str>>(&self, tables: &[S]) {
        if tables.is_empty() {
            return;
        }
        let mut map = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for t in tables {
            if let Some(v) = map.get_mut(t.as_ref()) {
                v.local += 1;
            }
        }
        self.bumps.fetch_add(tables.len() as u64, Ordering::Relaxed);
    }

    /// Remote versions read from Redis: a table whose remote version differs from the
    /// one known is bumped (a write elsewhere, or Redis lost the counter).
    pub fn observe<'a>(&self, remote: impl IntoIterator<Item = (&'a str, u64)>) {
        self.merge(remote, true)
    }

    /// [`Versions::observe`] for tables already tracked only (an invalidation message
    /// may name any table written anywhere).
    pub fn observe_tracked<'a>(&self, remote: impl IntoIterator<Item = (&'a str, u64)>) {
        self.merge(remote, false)
    }

    /// [`Versions::observe`] of a reply to a request sent at `before`: the versions
    /// after it, if nothing but this reply moved them since `before` — then a value
    /// read with the reply is exactly as current as they are. `None` when something
    /// else moved them meanwhile (the reply may be older than that).
    pub fn observe_since<'a>(
        &self,
        before: &Snapshot,
        remote: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Option<Snapshot> {
        let mut map = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let unchanged = before
            .0
            .iter()
            .all(|(t, v)| map.get(t).copied().unwrap_or_default() == *v);
        self.merge_into(&mut map, remote, true);
        unchanged.then(|| {
            Snapshot(
                before
                    .0
                    .iter()
                    .map(|(t, _)| (t.clone(), map.get(t).copied().unwrap_or_default()))
                    .collect(),
            )
        })
    }

    fn merge<'a>(&self, remote: impl IntoIterator<Item = (&'a str, u64)>, track: bool) {
        let mut map = self.tables.write().unwrap_or_else(|p| p.into_inner());
        self.merge_into(&mut map, remote, track);
    }

    fn merge_into<'a>(
        &self,
        map: &mut foldhash::HashMap<String, Version>,
        remote: impl IntoIterator<Item = (&'a str, u64)>,
        track: bool,
    ) {
        for (t, r) in remote {
            let v = match map.get_mut(t) {
                Some(v) => v,
                None if track => map.entry(t.to_string()).or_default(),
                None => continue,
            };
            if v.remote != r {
                v.remote = r;
                v.local += 1;
                self.bumps.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether a Redis reply is behind what this process already saw: a table's remote
    /// version lower than the one known. Versions in Redis only grow, so that is a
    /// reply older than a message applied meanwhile, or Redis having gone back in
    /// time (a failover to a replica that missed increments, a restore): either way a
    /// value validated by those versions may be stale.
    /// Returns those tables with the version known here.
    pub fn behind<'a>(
        &self,
        remote: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Vec<(String, u64)> {
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        remote
            .into_iter()
            .filter_map(|(t, r)| {
                let known = map.get(t)?.remote;
                (r < known).then(|| (t.to_string(), known))
            })
            .collect()
    }

    /// Whether some snapshot has taken `table` (entries may depend on it).
    pub fn tracks(&self, table: &str) -> bool {
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(table)
    }

    /// The local version of one table.
    pub fn get(&self, table: &str) -> u64 {
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        map.get(table).map(|v| v.local).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outdated_snapshot_never_becomes_current_again() {
        let v = Versions::default();
        v.observe([("t", 7)]);
        let before = v.snapshot(&["t"]);
        assert!(v.is_current(&before));
        // A newer remote version arrives, then an older reply comes in late.
        v.observe([("t", 8)]);
        assert!(!v.is_current(&before));
        v.observe([("t", 7)]);
        assert!(!v.is_current(&before), "back at remote 7, but bumped twice");
        // The same remote version again changes nothing.
        let now = v.snapshot(&["t"]);
        v.observe([("t", 7)]);
        assert!(v.is_current(&now));
        assert_eq!(now.remote().collect::<Vec<_>>(), [("t", 7)]);
        v.bump(&["t"]);
        assert!(!v.is_current(&now));
    }

    #[test]
    fn a_reply_older_than_a_message_applied_meanwhile_validates_nothing() {
        let v = Versions::default();
        // Nothing moved but the reply itself: its versions are current.
        let before = v.snapshot(&["t"]);
        let after = v.observe_since(&before, [("t", 7)]).unwrap();
        assert!(v.is_current(&after));
        assert_eq!(after.remote().next(), Some(("t", 7)));
        // A message (remote 8) is applied while a request is out; its reply says 7.
        let before = v.snapshot(&["t"]);
        v.observe_tracked([("t", 8)]);
        assert!(v.observe_since(&before, [("t", 7)]).is_none());
    }
}
