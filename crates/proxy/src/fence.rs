//! Write fences: when a miss that ran on a replica may be stored in the cache.
//!
//! A fill keeps the table versions taken before its query ran (see `pgopt-cache`),
//! so a write that commits during the fill makes it unstorable. On the primary that
//! is enough: a write whose bump the versions reflect had committed before the query
//! started, so the query saw it. A replica may not have replayed it yet. So, per
//! database and cache tag, pgopt keeps the WAL position of the latest commit it knows
//! of that wrote the tag, and a replica's fill is stored only when the replica's
//! replay position, as observed *before* the query ran (a lower bound: replay only
//! moves forward), is at or past the position of every tag the fill reads (`*`
//! included: a write to unknown tables).
//!
//! A write through pgopt bumps the versions when its transaction ends, before its
//! WAL position is known (it is read after the commit, on the same connection). So a
//! [`FenceToken`] marks its tags *pending* before the bump: while a tag has a pending
//! write, no replica fill reading it is stored. The token resolves with the position
//! read after the commit. A write whose position could not be read (the read failed,
//! the connection broke, the session has no replicas to route to) leaves its tags
//! *unresolved since* the moment it ended: they are resolved by the primary's WAL
//! position from a routing health check that started after that moment (the checker
//! reads it every `check_interval`), which is at or past the commit.
//!
//! Commits seen by the cache's replication listener carry their end position, which
//! is recorded before their invalidation; when the stream (re)starts, `*` is
//! unresolved since then (commits before it were not seen).
//!
//! With Redis, other instances' commits count in the versions too. Their positions are
//! never known here, but each reached this instance as a bus message before the fill's
//! versions counted it (the fill is not stored otherwise: see
//! [`pgopt_cache::L2::remote_writes`]), and it committed before that. So each tag is
//! unresolved since its latest such message was received (and `*` since the channel
//! was last subscribed, for the commits before): a primary check that started later
//! resolves it, per database (tags on the bus name no database).

use std::collections::HashMap as StdMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgopt_cache::RemoteWrites;

use crate::cache::ALL;

/// The key fences are kept under: the primary's server and database (two database
/// entries of pgopt may reach one server database, and a write through one must
/// fence the other's replica fills; positions of different servers don't compare).
pub fn key(host: &str, port: u16, dbname: &str) -> String {
    format!("{host}:{port}/{dbname}")
}

/// [`key`] of a pool's server.
pub fn key_of(target: &crate::server::ServerTarget) -> String {
    key(&target.host, target.port, &target.dbname)
}

/// [`key`] of a configured database.
pub fn key_of_database(db: &crate::config::Database) -> String {
    key(&db.host, db.port, &db.dbname)
}

/// foldhash: a write's commit marks each of its tags (SipHash was most of that).
type HashMap<K, V> = StdMap<K, V, foldhash::fast::RandomState>;

/// Every database's tags and what a replica must have replayed for them.
#[derive(Debug, Default)]
pub struct Fences {
    databases: Mutex<HashMap<String, HashMap<String, Mark>>>,
}

/// One tag of one database.
#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    /// The latest known commit position of a write to it.
    lsn: u64,
    /// Writes that ended (their versions are bumped) with their position not read yet.
    pending: u32,
    /// A write ended at this moment (the latest such) with its position unknown.
    unresolved: Option<Instant>,
    /// The latest other instance's commit (see [`RemoteWrites`]) already counted in
    /// `unresolved` or `lsn`.
    remote: Option<Instant>,
}

/// A write's tags, pending until [`FenceToken::resolve`]; dropped unresolved, they are
/// fenced up to the primary's next checked WAL position.
#[derive(Debug)]
pub struct FenceToken {
    fences: Arc<Fences>,
    database: String,
    tags: Vec<String>,
    ended: Instant,
    resolved: bool,
}

impl Fences {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, HashMap<String, Mark>>) -> R) -> R {
        f(&mut self.databases.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A transaction that wrote `tags` in `database` ended: call before its versions are
    /// bumped.
    pub fn begin(self: &Arc<Self>, database: &str, tags: Vec<String>) -> FenceToken {
        self.mark(database, &tags, |mark| mark.pending += 1);
        FenceToken {
            fences: self.clone(),
            database: database.to_string(),
            tags,
            ended: Instant::now(),
            resolved: false,
        }
    }

    /// Applies `f` to the mark of each of `tags` in `database`, made when missing
    /// (looked up first: a name is copied only the first time).
    fn mark(&self, database: &str, tags: &[String], mut f: impl FnMut(&mut Mark)) {
        self.with(|dbs| {
            let marks = match dbs.get_mut(database) {
                Some(marks) => marks,
                None => dbs.entry(database.to_string()).or_default(),
            };
            for t in tags {
                match marks.get_mut(t) {
                    Some(mark) => f(mark),
                    None => f(marks.entry(t.clone()).or_default()),
                }
            }
        });
    }

    /// A commit at `lsn` wrote `tags` (the replication listener: call before the bump).
    pub fn advance(&self, database: &str, tags: &[String], lsn: u64) {
        self.mark(database, tags, |mark| mark.lsn = mark.lsn.max(lsn));
    }

    /// Writes to anything in `database` may have committed unseen until now.
    pub fn unresolved_all(&self, database: &str) {
        let now = Instant::now();
        self.with(|dbs| {
            let mark = dbs
                .entry(database.to_string())
                .or_default()
                .entry(ALL.to_string())
                .or_default();
            mark.unresolved = Some(mark.unresolved.map_or(now, |t| t.max(now)));
        });
    }

    /// Whether a fill of `tags` in `database` that ran on a replica replayed at least
    /// up to `replayed` (observed before the query ran) saw every write its versions
    /// reflect. `primary`: when the last successful check of the primary's WAL
    /// position started, and the position it read. `remote`: other instances'
    /// commits the versions count (with Redis).
    pub fn covers(
        &self,
        database: &str,
        tags: impl IntoIterator<Item = impl AsRef<str>>,
        replayed: u64,
        primary: Option<(Instant, u64)>,
        remote: Option<&RemoteWrites>,
    ) -> bool {
        self.with(|dbs| {
            if remote.is_some() && !dbs.contains_key(database) {
                dbs.insert(database.to_string(), HashMap::default());
            }
            let Some(marks) = dbs.get_mut(database) else {
                return true;
            };
            let tags: Vec<_> = tags.into_iter().collect();
            let all = std::iter::once(ALL);
            for t in tags.iter().map(AsRef::as_ref).chain(all) {
                let since = remote.and_then(|r| r.since(t));
                let mark = match marks.get_mut(t) {
                    Some(mark) => mark,
                    None if since.is_some() => marks.entry(t.to_string()).or_default(),
                    None => continue,
                };
                if let Some(since) = since.filter(|&s| mark.remote.is_none_or(|r| r < s)) {
                    mark.remote = Some(since);
                    mark.unresolved = Some(mark.unresolved.map_or(since, |u| u.max(since)));
                }
                if mark.pending > 0 {
                    return false;
                }
                if let Some(since) = mark.unresolved {
                    match primary {
                        Some((checked, lsn)) if checked >= since => {
                            mark.lsn = mark.lsn.max(lsn);
                            mark.unresolved = None;
                        }
                        _ => return false,
                    }
                }
                if mark.lsn > replayed {
                    return false;
                }
            }
            true
        })
    }
}

impl FenceToken {
    /// The tags the write reached.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The write's commit is at or before `lsn` (read on its connection after it).
    pub fn resolve(mut self, lsn: u64) {
        self.resolved = true;
        self.fences.mark(&self.database, &self.tags, |mark| {
            mark.pending = mark.pending.saturating_sub(1);
            mark.lsn = mark.lsn.max(lsn);
        });
    }
}

impl Drop for FenceToken {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let ended = self.ended;
        self.fences.mark(&self.database, &self.tags, |mark| {
            mark.pending = mark.pending.saturating_sub(1);
            mark.unresolved = Some(mark.unresolved.map_or(ended, |u| u.max(ended)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pending_write_fences_its_tags_until_its_position_is_known() {
        let fences = Arc::new(Fences::default());
        let items = tags(&["items"]);
        assert!(fences.covers("db", &items, 0, None, None));
        let token = fences.begin("db", items.clone());
        assert!(!fences.covers("db", &items, u64::MAX, None, None));
        assert!(fences.covers("db", tags(&["other"]), 0, None, None));
        assert!(fences.covers("other_db", &items, 0, None, None));
        token.resolve(100);
        assert!(!fences.covers("db", &items, 99, None, None));
        assert!(fences.covers("db", &items, 100, None, None));
    }

    #[test]
    fn a_write_to_unknown_tables_fences_every_tag() {
        let fences = Arc::new(Fences::default());
        fences.begin("db", tags(&[ALL])).resolve(50);
        assert!(!fences.covers("db", tags(&["items"]), 49, None, None));
        assert!(fences.covers("db", tags(&["items"]), 50, None, None));
    }

    #[test]
    fn an_unknown_position_waits_for_a_primary_check_that_started_after_the_write() {
        let fences = Arc::new(Fences::default());
        let items = tags(&["items"]);
        let before = Instant::now() - std::time::Duration::from_millis(1);
        drop(fences.begin("db", items.clone()));
        assert!(!fences.covers("db", &items, u64::MAX, None, None));
        assert!(!fences.covers("db", &items, u64::MAX, Some((before, 10)), None));
        let after = Instant::now() + std::time::Duration::from_millis(1);
        assert!(!fences.covers("db", &items, 199, Some((after, 200)), None));
        assert!(fences.covers("db", &items, 200, Some((after, 200)), None));
        // Resolved for good: an older check does not matter any more.
        assert!(fences.covers("db", &items, 200, None, None));
    }

    #[test]
    fn another_instances_commit_waits_for_a_primary_check_after_its_message() {
        let fences = Arc::new(Fences::default());
        let items = tags(&["items"]);
        let subscribed = Instant::now();
        let received = subscribed + std::time::Duration::from_millis(10);
        let remote = RemoteWrites {
            baseline: subscribed,
            received: vec![("items".to_string(), received)],
        };
        let check = |at: Instant, lsn| Some((at, lsn));
        // No check since the message (nor the subscription): unknown.
        assert!(!fences.covers("db", &items, u64::MAX, None, Some(&remote)));
        assert!(!fences.covers("db", &items, u64::MAX, check(subscribed, 5), Some(&remote)));
        // A check after it: the replica must have replayed what the primary had then.
        let after = received + std::time::Duration::from_millis(1);
        assert!(!fences.covers("db", &items, 99, check(after, 100), Some(&remote)));
        assert!(fences.covers("db", &items, 100, check(after, 100), Some(&remote)));
        // Resolved in this database; another database needs its own primary's check.
        assert!(fences.covers("db", &items, 100, None, Some(&remote)));
        assert!(!fences.covers("other", &items, u64::MAX, None, Some(&remote)));
        // A later message: unresolved again.
        let next = after + std::time::Duration::from_millis(1);
        let later = RemoteWrites {
            baseline: subscribed,
            received: vec![("items".to_string(), next)],
        };
        assert!(!fences.covers("db", &items, u64::MAX, check(after, 100), Some(&later)));
        assert!(fences.covers("db", &items, 150, check(next, 150), Some(&later)));
    }

    #[test]
    fn the_listener_advances_and_a_restart_fences_everything() {
        let fences = Arc::new(Fences::default());
        let items = tags(&["items"]);
        fences.advance("db", &items, 300);
        assert!(!fences.covers("db", &items, 299, None, None));
        assert!(fences.covers("db", &items, 300, None, None));
        fences.unresolved_all("db");
        assert!(!fences.covers("db", tags(&["users"]), u64::MAX, None, None));
    }
}
