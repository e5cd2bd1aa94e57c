//! Candidate indexes from each statement's use of a table: equality columns first
//! (most selective first), then one range or the sort columns; partial indexes for
//! constant predicates that keep a small share of the rows; INCLUDE columns for
//! index-only scans; GIN for full-text, jsonb and array operators. Candidates an
//! existing index already serves are dropped.

use std::collections::BTreeSet;

use super::catalog::Table;
use super::shape::{Key, TableUse};

/// A partial index is worth trying when its predicate keeps at most this share of rows.
const PARTIAL_MAX_SELECTIVITY: f64 = 0.5;
/// Covering (INCLUDE) variants only when the statement touches this few columns.
const COVERING_MAX_COLUMNS: usize = 8;
const MAX_EQ_KEYS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Candidate {
    pub table: usize,
    pub gin: bool,
    /// Key columns or expressions, each with its order (`created_at DESC`).
    pub keys: Vec<String>,
    pub include: Vec<String>,
    pub predicate: Option<String>,
}

impl Candidate {
    /// `ON table [USING gin] (keys) [INCLUDE (…)] [WHERE …]`.
    pub fn body(&self, tables: &[Table]) -> String {
        let mut s = format!("ON {}", tables[self.table].qualified);
        if self.gin {
            s.push_str(" USING gin");
        }
        s.push_str(&format!(" ({})", self.keys.join(", ")));
        if !self.include.is_empty() {
            s.push_str(&format!(" INCLUDE ({})", self.include.join(", ")));
        }
        if let Some(p) = &self.predicate {
            s.push_str(&format!(" WHERE {p}"));
        }
        s
    }

    /// A readable name: table, key words, `_idx`, within PostgreSQL's 63 bytes.
    pub fn base_name(&self, tables: &[Table]) -> String {
        let mut words = vec![tables[self.table].name.clone()];
        for k in &self.keys {
            words.push(k.clone());
        }
        if self.predicate.is_some() {
            words.push("partial".into());
        }
        if !self.include.is_empty() {
            words.push("covering".into());
        }
        let mut name = String::new();
        for c in words.join("_").chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                name.push(c);
            } else if !name.ends_with('_') {
                name.push('_');
            }
        }
        let mut name = name.trim_matches('_').to_owned();
        name.truncate(55);
        format!("{}_idx", name.trim_end_matches('_'))
    }

    pub fn bare_keys(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.split(" DESC").next().unwrap_or(k))
            .map(|k| k.split(" NULLS").next().unwrap_or(k))
            .collect()
    }

    /// Existing indexes this one makes redundant: plain (no predicate, no INCLUDE, not
    /// enforcing a constraint) ones of the same method whose keys lead this one's.
    pub fn supersedes(&self, table: &Table) -> Vec<String> {
        let keys = self.bare_keys();
        table
            .indexes
            .iter()
            .filter(|ix| {
                ix.valid
                    && !ix.enforces
                    && (ix.method == "gin") == self.gin
                    && ix.predicate.is_none()
                    && self.predicate.is_none()
                    && ix.include.is_empty()
                    && ix.keys.len() <= keys.len()
                    && ix.keys.iter().zip(&keys).all(|(a, b)| a == b)
            })
            .map(|ix| ix.name.clone())
            .collect()
    }

    /// An existing valid index with these keys leading, the same predicate and method,
    /// that holds the INCLUDE columns too; or a unique one on exactly these keys.
    fn served(&self, table: &Table) -> bool {
        let keys = self.bare_keys();
        // A unique index on exactly these keys finds at most one row: covering it saves
        // one heap page per lookup, not worth another index.
        let unique_lookup = table.indexes.iter().any(|ix| {
            ix.valid
                && ix.enforces
                && ix.method == "btree"
                && ix.predicate.is_none()
                && ix.keys == keys
        });
        if unique_lookup && self.predicate.is_none() && !self.gin {
            return true;
        }
        table.indexes.iter().any(|ix| {
            ix.valid
                && (ix.method == "gin") == self.gin
                && ix.predicate == self.predicate
                && ix.keys.len() >= keys.len()
                && ix.keys.iter().zip(&keys).all(|(a, b)| a == b)
                && self
                    .include
                    .iter()
                    .all(|c| ix.keys.contains(c) || ix.include.contains(c))
        })
    }
}

/// Every candidate for one table use.
pub(crate) fn for_use(u: &TableUse, tables: &[Table]) -> Vec<Candidate> {
    let table = &tables[u.table];
    if !table.indexable {
        return Vec::new();
    }
    let distinct = |k: &Key| -> f64 {
        k.column
            .as_deref()
            .and_then(|c| table.column(c))
            .and_then(|c| c.stats.as_ref())
            .map(|s| s.distinct(table.rows))
            .unwrap_or(0.0)
    };
    let mut eq = u.eq.clone();
    eq.sort_by(|a, b| distinct(b).total_cmp(&distinct(a)));
    eq.truncate(MAX_EQ_KEYS);
    let plain = |ks: &[Key]| -> Vec<(Key, String)> {
        ks.iter().map(|k| (k.clone(), String::new())).collect()
    };

    // Key lists for btree indexes.
    let mut shapes: Vec<Vec<(Key, String)>> = Vec::new();
    if !eq.is_empty() {
        shapes.push(plain(&eq));
    }
    if eq.len() > 1 {
        for k in &eq {
            shapes.push(plain(std::slice::from_ref(k)));
        }
    }
    for r in u.range.iter().take(3) {
        let mut keys = plain(&eq);
        keys.push((r.clone(), String::new()));
        shapes.push(keys);
        if !eq.is_empty() {
            shapes.push(plain(std::slice::from_ref(r)));
        }
    }
    if !u.sort.is_empty() {
        let mut keys = plain(&eq);
        for s in &u.sort {
            if !eq.contains(&s.key) {
                keys.push((s.key.clone(), s.order.clone()));
            }
        }
        shapes.push(keys);
    }

    let mut out: Vec<Candidate> = Vec::new();
    let btree = |keys: &[(Key, String)], predicate: Option<&str>| Candidate {
        table: u.table,
        gin: false,
        keys: keys.iter().map(|(k, o)| format!("{}{o}", k.sql)).collect(),
        include: Vec::new(),
        predicate: predicate.map(str::to_owned),
    };
    for keys in &shapes {
        out.push(btree(keys, None));
    }
    for p in &u.predicates {
        if p.selectivity > PARTIAL_MAX_SELECTIVITY {
            continue;
        }
        let mut any = false;
        for keys in &shapes {
            let rest: Vec<(Key, String)> = keys
                .iter()
                .filter(|(k, _)| k.column.as_deref() != Some(&p.column))
                .cloned()
                .collect();
            if !rest.is_empty() {
                out.push(btree(&rest, Some(&p.sql)));
                any = true;
            }
        }
        if !any {
            if let Some(c) = table.column(&p.column) {
                let key = Key {
                    sql: c.ident.clone(),
                    column: Some(c.name.clone()),
                };
                out.push(btree(&[(key, String::new())], Some(&p.sql)));
            }
        }
    }
    if u.read && !u.star && u.columns.len() <= COVERING_MAX_COLUMNS {
        let covering: Vec<Candidate> = out
            .iter()
            .filter_map(|c| {
                let keys: BTreeSet<&str> = c.bare_keys().into_iter().collect();
                let include: Vec<String> = u
                    .columns
                    .iter()
                    .filter(|col| !keys.contains(col.as_str()))
                    .cloned()
                    .collect();
                (!include.is_empty()).then(|| Candidate {
                    include,
                    ..c.clone()
                })
            })
            .collect();
        out.extend(covering);
    }
    for (body, _) in &u.gin {
        out.push(Candidate {
            table: u.table,
            gin: true,
            keys: vec![body.clone()],
            include: Vec::new(),
            predicate: None,
        });
    }
    out.retain(|c| !c.served(table));
    out.sort();
    out.dedup();
    out
}
