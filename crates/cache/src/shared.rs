//! The library form with Redis (DESIGN.md §11): [`ResultCache`] in memory (L1) in
//! front of Redis (L2), with invalidations shared by every process on the same Redis
//! and prefix — other applications using this, and pgopt proxies whose `[cache.redis]`
//! is the same (their tags are table names).
//!
//! The same rules as the proxy's: a value read from Redis is used only when it was
//! filled at the tags' current versions there, and none of them is behind a version
//! this process saw (Redis gone back in time); a fill is stored only when no tag moved
//! while it ran; [`SharedCache::invalidate`] returns once every process listening has
//! confirmed it; while the invalidation channel is down nothing is served or stored.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    FillTicket, Joined, Key, L1Config, RedisConfig, ResultCache, Snapshot, Source, TableStats, L2,
};

/// The tag every entry carries: bumped when invalidations may have been missed (a
/// dropped channel), so everything goes. The proxy's entries carry it too.
pub const ALL: &str = "*";

/// Tags counted one by one at most (the rest as one).
const MAX_TAGS: usize = 1_000;

/// L1 + L2 with a shared invalidation channel.
pub struct SharedCache {
    pub cache: Arc<ResultCache>,
    pub l2: Arc<L2>,
}

impl SharedCache {
    /// Starts connecting to Redis in the background (until it is reachable and the
    /// channel subscribed, [`SharedCache::get_or_set`] runs every fill and stores
    /// nothing). Call within a Tokio runtime.
    pub fn start(l1: L1Config, redis: RedisConfig) -> Result<SharedCache, redis::RedisError> {
        let cache = Arc::new(ResultCache::with_tables(
            l1,
            TableStats::new(MAX_TAGS, Some(ALL)),
        ));
        let (versions, tables) = (cache.versions.clone(), cache.tables.clone());
        let flush = Arc::new(move || {
            versions.bump(&[ALL]);
            tables.invalidated(&[ALL], Source::Bus, &versions);
        });
        let l2 = L2::start(redis, cache.versions.clone(), cache.tables.clone(), flush)?;
        Ok(SharedCache { cache, l2 })
    }

    /// Whether values may be served and stored now (the invalidation channel is up).
    pub fn serving(&self) -> bool {
        self.l2.serving()
    }

    /// Tells the other processes sharing Redis that this one leaves, so they need not
    /// wait for its heartbeats (else they serve nothing for about 10 s, then end every
    /// value). Call before the process exits: the goodbye its drop sends may not run
    /// once the runtime shuts down.
    pub async fn close(&self) {
        self.l2.leave().await;
    }

    /// The value under `key`: from memory, else from Redis when it was filled at the
    /// tags' current versions, else `fill`'s — stored in both for `ttl`, tagged with
    /// `tags`. Concurrent callers in this process wait for one fill (another runs when
    /// it fails or its value can't be stored); an error goes to its caller only and is
    /// never stored.
    pub async fn get_or_set<S, F, Fut, E>(
        &self,
        key: Key,
        tags: &[S],
        ttl: Duration,
        fill: F,
    ) -> Result<Bytes, E>
    where
        S: AsRef<str>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        if !self.serving() {
            return fill().await;
        }
        let mut tags: Vec<String> = tags.iter().map(|t| t.as_ref().to_string()).collect();
        tags.push(ALL.to_string());
        let cache = &self.cache;
        // Joined after a wait: the leader's value, if it went into L1; if not (its
        // fill failed, or it could not be stored), one of the waiters fills next.
        let flight = loop {
            if let Some(hit) = cache.lookup(key.view()) {
                hit.tables.hit();
                return Ok(hit.value);
            }
            match cache.flights.join(&key) {
                Joined::Leader(f) => break Some(f),
                // Another caller is filling it: its result, unless it is slow.
                Joined::Waiter(wait) => {
                    let hangs = tokio::time::timeout(cache.flight_timeout, wait)
                        .await
                        .is_err();
                    // The lease may have run out while it waited.
                    if !self.serving() {
                        return fill().await;
                    }
                    if hangs {
                        break None; // the leader hangs: fill for this caller
                    }
                }
            }
        };
        let Some(found) = read_through(cache, &self.l2, key, &tags, ttl).await else {
            // Redis is not reachable: the fill answers, nothing is stored.
            return fill().await;
        };
        let ticket = found.ticket;
        if let Some(value) = found.value {
            ticket.tables().hit();
            return Ok(value);
        }
        ticket.tables().miss();
        let value = fill().await?;
        // The Redis versions read before the fill ran: what the stored value is
        // valid at.
        let remote: Vec<(String, u64)> = ticket
            .snapshot()
            .remote()
            .map(|(t, v)| (t.to_string(), v))
            .collect();
        let key = ticket.key().clone();
        // (Not once the lease ran out while it filled: a commit this instance did not
        // hear of may have been acknowledged meanwhile.)
        let stored = if self.serving() {
            cache.complete_fill_counted(ticket, value.clone(), ttl)
        } else {
            ticket.tables().not_stored();
            false
        };
        drop(flight); // wakes the waiters: the value is in L1
        if stored {
            let remote: Vec<(&str, u64)> = remote.iter().map(|(t, v)| (t.as_str(), *v)).collect();
            self.l2.store(&key, &remote, &value, ttl).await;
        }
        Ok(value)
    }

    /// Data behind `tags` changed: their entries are invalid here at once, and in
    /// every process sharing Redis once this returns (each confirmed it, or the
    /// confirmation timed out). When Redis is not reached the tags are owed, told
    /// once it is back, and lookups here miss until then.
    pub async fn invalidate<S: AsRef<str>>(&self, tags: &[S]) {
        let tags: Vec<String> = tags.iter().map(|t| t.as_ref().to_string()).collect();
        self.cache.invalidate(&tags);
        match self.l2.publish(&tags).await {
            Some(versions) => self
                .cache
                .versions
                .observe(versions.iter().map(|(t, v)| (t.as_str(), *v))),
            // A value read from Redis meanwhile may have gone into L1 at the bumped
            // versions: bumped again.
            None => self.cache.versions.bump(&tags),
        }
    }
}

/// What Redis had for an L1 miss (see [`read_through`]).
pub struct FromRedis {
    /// The fill to run when there is no value (taken after the versions Redis sent
    /// were learned).
    pub ticket: FillTicket,
    /// A value stored at the tables' current versions in Redis (already put into L1
    /// when it is exactly as current as the versions known here).
    pub value: Option<Bytes>,
    /// The versions the value is current at, when nothing but this reply moved them.
    pub current: Option<Snapshot>,
}

/// An L1 miss on `key` (reading `tags`) looked up in Redis: one round trip for the
/// tables' versions there and a value stored at them. A value is refused when a
/// version is behind one seen here (Redis gone back in time, e.g. a failover that
/// lost increments), and Redis is then moved past it ([`L2::raise`]). `None`: Redis
/// is not reachable.
pub async fn read_through(
    cache: &ResultCache,
    l2: &Arc<L2>,
    key: Key,
    tags: &[String],
    ttl: Duration,
) -> Option<FromRedis> {
    // Before the round trip: a value may go into L1 only if nothing moved while it
    // was away (a reply can be older than a message applied meanwhile).
    let before = cache.versions.snapshot(tags);
    let found = l2.lookup(&key, tags).await?;
    let remote = || {
        tags.iter()
            .map(String::as_str)
            .zip(found.versions.iter().copied())
    };
    let seen = cache.versions.behind(remote());
    let behind = !seen.is_empty();
    if behind {
        if found.value.is_some() {
            // Counted by the lookup as a hit: a stale value, a miss.
            let c = &l2.counters;
            c.hits.fetch_sub(1, Relaxed);
            c.misses.fetch_add(1, Relaxed);
            c.stale.fetch_add(1, Relaxed);
        }
        // A reply older than a message applied meanwhile, or Redis gone back in time:
        // then it is moved past what was seen (a no-op for the former).
        let (l2, versions) = (l2.clone(), cache.versions.clone());
        tokio::spawn(async move {
            let raised = l2.raise(&seen).await;
            versions.observe(raised.iter().map(|(t, v)| (t.as_str(), *v)));
        });
    }
    // The versions now, if this reply alone moved them since `before`.
    let current = cache.versions.observe_since(&before, remote());
    // Taken after the versions moved: what a fill now checks against.
    let ticket = cache.begin_fill(key, tags);
    let value = found.value.filter(|_| !behind);
    if let (Some(value), Some(current)) = (&value, &current) {
        // No longer than it has left in Redis.
        let ttl = found.ttl_left.map_or(ttl, |left| left.min(ttl));
        cache.l1.insert(
            ticket.key().clone(),
            current.clone(),
            value.clone(),
            ttl,
            ticket.tables().clone(),
        );
    }
    Some(FromRedis {
        ticket,
        value,
        current,
    })
}
