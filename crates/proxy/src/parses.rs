//! Session mode, with the cache: what each of a client's statement names holds, for
//! the writes a Bind of it runs. (Transaction mode reads the statement registry,
//! `statements.rs`, which settles every change to a name the same way.)
//!
//! A Parse changes a name only once the server has answered it: the server may skip
//! it (after an error earlier in its batch, up to the Sync) or refuse it (42P05, a
//! name the client has), and the name then keeps its statement. A Bind sent before a
//! Parse of an earlier batch is answered — a pipeline — may run either statement.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use pgopt_sql::Analysis;

use crate::statements::Settled;

/// What a name holds, as far as the cache can tell: the analysis of its statement, or
/// `None` when the text could not be read (it may write anything).
pub type Held = Option<Arc<Analysis>>;

/// Names kept, at most (a client preparing more has the kept ones forgotten: a Bind
/// of a forgotten name may write anything).
const MAX_NAMES: usize = 10_000;

#[derive(Debug, Default)]
pub struct SessionParses {
    /// What each name holds by the Parses the server has answered. A name not here
    /// may hold anything (never seen parsed: an SQL `PREPARE` may have made it;
    /// closed; forgotten).
    settled: HashMap<String, Held>,
    /// Parses sent, not yet answered, in order.
    pending: VecDeque<Pending>,
    next_change: u64,
    /// The client's Syncs sent: a batch is what the server skips to its end after an
    /// error.
    batch: u64,
}

#[derive(Debug)]
struct Pending {
    change: u64,
    name: String,
    held: Held,
    batch: u64,
}

/// What a Bind may run: the first statement, and any others (none, usually, so no
/// allocation).
#[derive(Debug, Default)]
pub struct Bound {
    pub first: Held,
    pub more: Vec<Held>,
}

impl SessionParses {
    /// The client sent a Parse of `name`, whose statement is `held`. Its change id, for
    /// the server's answer to settle (see `Step::Parse`).
    pub fn parse(&mut self, name: String, held: Held) -> u64 {
        self.next_change += 1;
        self.pending.push_back(Pending {
            change: self.next_change,
            name,
            held,
            batch: self.batch,
        });
        self.next_change
    }

    /// The client sent a Sync.
    pub fn sync(&mut self) {
        self.batch += 1;
    }

    /// The client sent a Close of statement `name`: from now on it may hold anything
    /// (the server may skip the Close).
    pub fn close(&mut self, name: &str) {
        self.settled.remove(name);
    }

    /// The server answered Parse `change`.
    pub fn settle(&mut self, change: u64, settled: Settled) {
        let Some(at) = self.pending.iter().position(|p| p.change == change) else {
            return;
        };
        let Some(parse) = self.pending.remove(at) else {
            return;
        };
        // (Skipped or refused, the name keeps what it held; a failed Parse of the
        // unnamed statement leaves none, where what it held is only too careful.)
        if settled == Settled::Happened {
            if self.settled.len() >= MAX_NAMES && !self.settled.contains_key(&parse.name) {
                self.settled.clear();
            }
            self.settled.insert(parse.name, parse.held);
        }
    }

    /// What a Bind of `name` sent now may run: the statement of a Parse of it earlier
    /// in this batch (if that Parse is skipped, so is the Bind); else what the name
    /// holds, and each statement of a Parse of an earlier batch not yet answered.
    pub fn bound(&self, name: &str) -> Bound {
        let mut of_name = self.pending.iter().filter(|p| p.name == name);
        if let Some(here) = of_name.clone().rev().find(|p| p.batch == self.batch) {
            return Bound {
                first: here.held.clone(),
                more: Vec::new(),
            };
        }
        Bound {
            first: self.settled.get(name).cloned().flatten(),
            more: of_name.by_ref().map(|p| p.held.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(sql: &str) -> Held {
        Some(Arc::new(pgopt_sql::analyze(sql).unwrap()))
    }

    /// Each statement a Bind may run, by its text (`None`: anything).
    fn texts(bound: &Bound) -> Vec<Option<String>> {
        std::iter::once(&bound.first)
            .chain(&bound.more)
            .map(|h| h.as_ref().map(|a| a.normalized.clone()))
            .collect()
    }

    #[test]
    fn a_parse_changes_its_name_once_answered_and_not_when_skipped() {
        let insert = || Some("INSERT INTO t VALUES ($1)".to_string());
        let select = || Some("SELECT $1".to_string());
        let mut p = SessionParses::default();
        // Never parsed: anything.
        assert_eq!(texts(&p.bound("w")), [None]);
        let first = p.parse("w".into(), held("INSERT INTO t VALUES (1)"));
        // In its own batch: its statement only.
        assert_eq!(texts(&p.bound("w")), [insert()]);
        p.sync();
        // Pipelined behind it: what the name held (anything), or it.
        assert_eq!(texts(&p.bound("w")), [None, insert()]);
        p.settle(first, Settled::Happened);
        assert_eq!(texts(&p.bound("w")), [insert()]);
        // A Parse the server skips (or refuses) leaves the INSERT.
        let second = p.parse("w".into(), held("SELECT 1"));
        p.sync();
        assert_eq!(texts(&p.bound("w")), [insert(), select()]);
        p.settle(second, Settled::Undone);
        assert_eq!(texts(&p.bound("w")), [insert()]);
        // Other names are their own.
        let other = p.parse("".into(), held("SELECT 1"));
        p.settle(other, Settled::Happened);
        assert_eq!(texts(&p.bound("w")), [insert()]);
        assert_eq!(texts(&p.bound("")), [select()]);
        // A Close: anything.
        p.close("w");
        assert_eq!(texts(&p.bound("w")), [None]);
    }
}
