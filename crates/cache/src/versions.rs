//! Table versions: a counter per table, bumped when a write to it commits. An entry
//! remembers the versions it was filled at and is valid only while they all stand;
//! taking them *before* the query runs means a write that commits during a slow fill
//! leaves that fill's result born invalid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Versions of every table written since start (tables never written are at 0).
#[derive(Debug, Default)]
pub struct Versions {
    tables: RwLock<HashMap<String, u64>>,
    /// Bumps so far, over all tables.
    pub bumps: AtomicU64,
}

/// The versions of some tables at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<(String, u64)>);

impl Snapshot {
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(t, _)| t.as_str())
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
                    (t.to_string(), *map.entry(t.to_string()).or_insert(0))
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
            .all(|(t, v)| map.get(t).copied().unwrap_or(0) == *v)
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
                *v += 1;
            }
        }
        self.bumps.fetch_add(tables.len() as u64, Ordering::Relaxed);
    }

    /// The version of one table.
    pub fn get(&self, table: &str) -> u64 {
        let map = self.tables.read().unwrap_or_else(|p| p.into_inner());
        map.get(table).copied().unwrap_or(0)
    }
}
