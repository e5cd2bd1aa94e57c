//! L2 and the invalidation bus: one Redis (or Redis Cluster) shared by every pgopt
//! instance.
//!
//! - **Versions:** each table has a counter in Redis (`<prefix>{pgopt}v:<table>`),
//!   created at a random value and incremented at every commit that wrote the table,
//!   through any instance. A lost counter (restart, FLUSHALL, failover) comes back at
//!   another random value, so an entry filled before never matches it: a missing
//!   version means a miss, never "valid".
//! - **Values:** an entry in Redis holds its full key, the versions its query was
//!   filled at and the reply, lz4-compressed above a size, behind an HMAC-SHA256 over
//!   everything (keyed with `hmac_key`'s HMAC of the prefix): a forged or corrupted
//!   value, or one copied from under another prefix, is rejected. It
//!   is served only while every version it holds is the current one, read in the
//!   same round trip.
//! - **Bus:** a commit's increments and its invalidation message are one script, so
//!   each instance's messages carry a gapless sequence. Subscribers move their local
//!   versions on each message; a gap, a restarted sequence, a heartbeat ahead of the
//!   last message, or a dropped subscription flushes their L1, and nothing is served
//!   while the subscription is down.
//! - **Delivery:** a remote version is *delivered* once this instance knows it has
//!   received every message of the commits it counts (see [`L2::remote_writes`]): a
//!   fill that ran on a replica needs that to tell which other instances' commits the
//!   replica must have replayed.
//! - **Degradation:** a failed or slow Redis call is a miss (the query goes to
//!   PostgreSQL); the connection is rebuilt with backoff; tables whose increments did
//!   not reach Redis are incremented once it is back.
//!
//! Every key shares the hash tag `{pgopt}`: scripts touch several keys, which Redis
//! Cluster allows within one slot only.

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::FromRedisValue;
use sha2::Sha256;

use crate::key::Key;
use crate::resp::{Command, Pipe, Subscriber, Target};
use crate::tables::{Source, TableStats};
use crate::versions::Versions;

/// `[cache.redis]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS; with
    /// `cluster`, several node URLs separated by commas.
    pub url: String,
    pub cluster: bool,
    /// Put before every key and the channel: instances sharing a prefix share entries
    /// and invalidations, others are isolated.
    pub prefix: String,
    /// Store values in Redis (L2); off: Redis carries versions and invalidations only.
    pub store_values: bool,
    /// How long one Redis call may take before it counts as failed.
    pub timeout: Duration,
    /// Key of the HMAC over stored values (a fixed key when unset: corruption is
    /// still caught, forgery is not).
    pub hmac_key: Option<Vec<u8>>,
    /// Values at least this large are compressed.
    pub compress_min: usize,
    /// Values larger than this are refused when read back.
    pub max_value_bytes: usize,
    /// PEM file of the CA that signed Redis' certificate (`rediss://`); the system's
    /// roots when unset.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            prefix: "pgopt:".into(),
            store_values: true,
            timeout: Duration::from_millis(100),
            hmac_key: None,
            compress_min: 1024,
            max_value_bytes: 64 << 20,
            ca_file: None,
        }
    }
}

/// What L2 and the bus have done.
#[derive(Debug, Default)]
pub struct L2Counters {
    /// Commands reach Redis now.
    pub up: AtomicBool,
    /// The invalidation channel is subscribed now.
    pub bus_up: AtomicBool,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stored: AtomicU64,
    /// Values refused: bad HMAC, another key, unreadable.
    pub rejected: AtomicU64,
    /// Values found at outdated versions.
    pub stale: AtomicU64,
    /// Redis calls that failed or timed out.
    pub errors: AtomicU64,
    /// Commits whose increments did not reach Redis at once.
    pub publish_failures: AtomicU64,
    /// Commits whose subscribers did not all confirm within the timeout.
    pub ack_timeouts: AtomicU64,
    /// Commits that waited for their subscribers' confirmations, and the time they
    /// waited in all (µs): with `ack_timeouts`, what the lease costs writers.
    pub ack_waits: AtomicU64,
    pub ack_wait_us: AtomicU64,
    /// Invalidation messages received from any instance.
    pub messages: AtomicU64,
    /// L1 flushes for a dropped subscription or a gap in a sequence.
    pub flushes: AtomicU64,
}

/// A connection for commands: pgopt's own client on a plain node (see
/// [`crate::resp`]), the redis crate's for TLS and Redis Cluster.
#[derive(Clone)]
enum Conn {
    Plain(Arc<Pipe>),
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A Lua script, run by its SHA1.
struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_string(),
        }
    }
}

impl Conn {
    /// Runs `cmd`, an EVALSHA of `script` (see [`eval`]), loading the script first
    /// when Redis does not have it (a restart, SCRIPT FLUSH, a new node).
    async fn eval<T: FromRedisValue>(
        &mut self,
        script: &Lua,
        cmd: &mut Command,
    ) -> redis::RedisResult<T> {
        match self.query(cmd).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                let mut load = Command::new("SCRIPT");
                load.arg("LOAD").arg(script.code);
                self.query::<()>(&mut load).await?;
                self.query(cmd).await
            }
            result => result,
        }
    }

    async fn query<T: FromRedisValue>(&mut self, cmd: &mut Command) -> redis::RedisResult<T> {
        let value = match self {
            Conn::Plain(pipe) => pipe.query(cmd).await?,
            Conn::Single(c) => crate_cmd(cmd).query_async(c).await?,
            Conn::Cluster(c) => crate_cmd(cmd).query_async(c).await?,
        };
        T::from_redis_value(&value)
    }

    /// Two commands sent together (one write on a plain node, a pipeline else).
    async fn query_pair<A: FromRedisValue, B: FromRedisValue>(
        &mut self,
        first: &mut Command,
        second: &mut Command,
    ) -> redis::RedisResult<(A, B)> {
        let (a, b) = match self {
            Conn::Plain(pipe) => pipe.query_pair(first, second).await?,
            Conn::Single(c) => crate_pair(first, second).query_async(c).await?,
            Conn::Cluster(c) => crate_pair(first, second).query_async(c).await?,
        };
        Ok((A::from_redis_value(&a)?, B::from_redis_value(&b)?))
    }
}

fn crate_pair(first: &Command, second: &Command) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.add_command(crate_cmd(first))
        .add_command(crate_cmd(second));
    pipe
}

/// `cmd` as the redis crate's command.
fn crate_cmd(cmd: &Command) -> redis::Cmd {
    let mut args = cmd.args();
    let mut c = redis::cmd(std::str::from_utf8(args.next().unwrap_or_default()).unwrap_or(""));
    for a in args {
        c.arg(a);
    }
    c
}

/// Raises version counters Redis lost increments of (gone back in time): KEYS are
/// version keys, ARGV the versions seen of them; each counter below is set to what was
/// seen (the caller then publishes those tables, moving them past). Returns the
/// 1-based positions raised.
const RAISE: &str = r"
local raised = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and tonumber(v) < tonumber(ARGV[i]) then
    redis.call('SET', key, ARGV[i])
    raised[#raised + 1] = i
  end
end
return raised
";

/// Reads versions (creating missing ones at the random values given) and, when asked,
/// an entry and its time to live in ms: `{'v1 … vn'[, entry or '', pttl]}` (the
/// versions in one string: a reply's every element costs the client a parse).
const READ: &str = r"
local want = tonumber(ARGV[1])
local n = #KEYS - want
local out = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if not v then
    v = ARGV[i + 1]
    redis.call('SET', KEYS[i], v)
  end
  out[i] = v
end
if want == 1 then
  local entry = redis.call('GET', KEYS[n + 1]) or ''
  return {table.concat(out, ' '), entry, tostring(redis.call('PTTL', KEYS[n + 1]))}
end
return {table.concat(out, ' ')}
";

/// A commit: KEYS[1] the instance's sequence, then versions; ARGV: channel, instance,
/// the message's id (unique in the instance's life: what subscribers confirm), the
/// tables' names, random values for missing versions, a random start for a missing
/// sequence. Increments the versions, publishes
/// `w\0instance\0seq\0id\0table\0version…`, returns the new versions, the sequence
/// number and how many subscribers got the message, joined by spaces.
/// (INCR first: a key it finds missing comes back as 1, which no counter reaches,
/// since each starts at 1 or more. The sequence's expiry is renewed by the
/// heartbeats, not here: each call a commit's script makes costs Redis about a µs.)
const WRITE: &str = r"
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  seq = tonumber(ARGV[#ARGV])
  redis.call('SET', KEYS[1], ARGV[#ARGV], 'EX', 86400)
end
local n = #KEYS - 1
local msg = {'w', ARGV[2], string.format('%d', seq), ARGV[3]}
local out = {}
for i = 1, n do
  local k = KEYS[i + 1]
  local v = redis.call('INCR', k)
  if v == 1 then
    v = ARGV[3 + n + i]
    redis.call('SET', k, v)
  else
    v = string.format('%d', v)
  end
  out[i] = v
  msg[#msg + 1] = ARGV[3 + i]
  msg[#msg + 1] = v
end
out[n + 1] = string.format('%d', seq)
out[n + 2] = string.format('%d', redis.call('PUBLISH', ARGV[1], table.concat(msg, '\0')))
return table.concat(out, ' ')
";

/// A heartbeat: `hb\0instance\0seq` with the instance's last sequence number, so a
/// lost last message is noticed. A missing sequence starts here, at ARGV[3] (random),
/// so the instance's first write follows it in order; a sequence Redis lost comes
/// back at another number, which every subscriber notices.
const BEAT: &str = r"
local seq = redis.call('GET', KEYS[1])
if not seq then
  seq = ARGV[3]
  redis.call('SET', KEYS[1], seq)
end
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('PUBLISH', ARGV[1], 'hb\0' .. ARGV[2] .. '\0' .. seq .. '\0' .. ARGV[4])
return seq
";

/// An instance's goodbye: `bye\0instance\0seq`, in its sequence as a heartbeat is (none
/// when it has no sequence).
const BYE: &str = r"
local seq = redis.call('GET', KEYS[1])
if seq then
  redis.call('PUBLISH', ARGV[1], 'bye\0' .. ARGV[2] .. '\0' .. seq)
  return seq
end
return ''
";

/// How long an instance on the bus may stay quiet before the others give it up for
/// gone (a crash: it said no goodbye) and serve again, ending every value first (it
/// may have committed a write it never announced).
const PEER_GONE: Duration = Duration::from_secs(10);

/// How often every instance publishes a heartbeat on the bus.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// A channel silent this long (plus what may delay a beat) is taken as dropped: L1 is
/// flushed and the instance subscribes again.
const CHANNEL_SILENCE: Duration = Duration::from_secs(3);
/// Redis Cluster: how often a subscriber checks that it listens on the node that owns
/// the bus's slot.
const OWNER_CHECK: Duration = Duration::from_secs(5);
/// Entries live at most a day in Redis.
const MAX_TTL_MS: u64 = 86_400_000;
const MAGIC: &[u8; 4] = b"PGC1";
const MAC_LEN: usize = 32;
const COMPRESSED: u8 = 1;

/// What a lookup in Redis found.
#[derive(Debug)]
pub struct Found {
    /// The current remote version of each table asked for, in order.
    pub versions: Vec<u64>,
    /// A value stored at exactly those versions under the same key.
    pub value: Option<Bytes>,
    /// How long the value has left in Redis.
    pub ttl_left: Option<Duration>,
}

/// L2 and the bus, with the tasks that keep them connected.
pub struct L2 {
    config: RedisConfig,
    /// The key of the values' HMAC: `hmac_key`'s HMAC of the prefix, so a value
    /// copied under another prefix (another tenant's, sharing the HMAC key) is refused.
    mac_key: [u8; MAC_LEN],
    /// The CA certificate (PEM) for `rediss://`, if not the system's.
    ca: Option<Vec<u8>>,
    conn: Mutex<Option<Conn>>,
    /// A random id for this process: its sequence key and its messages.
    instance: u64,
    /// `instance` in decimal, the key of its sequence and the bus's channel, as the
    /// scripts take them.
    instance_arg: String,
    seq_key: String,
    channel: String,
    read: Lua,
    raise: Lua,
    write: Lua,
    beat: Lua,
    bye: Lua,
    /// [`L2::leave`] ran: no goodbye again when dropped.
    left: std::sync::atomic::AtomicBool,
    pub counters: L2Counters,
    /// Tables written while Redis was unreachable: incremented once it is back.
    /// Each with a count of the commits that owed it, so a payment only clears
    /// what it covered.
    owed: Mutex<HashMap<String, u64>>,
    reconnect: Arc<tokio::sync::Notify>,
    /// Confirmations received per id of this instance's messages. (Not per sequence
    /// number: after a failover Redis may hand one out again, while writers of the
    /// first message with it still wait.)
    acks: Mutex<HashMap<u64, Acks>>,
    /// The id of this instance's next message.
    next_message: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// When this instance's latest heartbeat to come back on the bus was sent (or it
    /// subscribed), in ms since `epoch`, plus one (0: never): the instance serves only
    /// within its lease from then (see [`L2::serving`]).
    heard: AtomicU64,
    /// When the first call Redis left unanswered since it last answered one was sent
    /// (a [`L2::now_ms`] value; 0: Redis answered the latest): Redis stopped no later
    /// than that for everyone (see [`L2::outlast_leases`]).
    unanswered_since: AtomicU64,
    /// When this instance began to owe Redis a commit (a [`L2::now_ms`] value; 0: it
    /// owes none): its heartbeats stopped then (see `keep_connected`).
    owing_since: AtomicU64,
    /// When a refused call was last logged as a warning (a [`L2::now_ms`] value).
    refusal_warned: AtomicU64,
    epoch: Instant,
    /// The bus's owner last warned about as missing from the URLs (once each).
    owner_warned: Mutex<Option<String>>,
    /// Which remote versions have had every message of their commits received.
    delivery: Mutex<Delivery>,
    /// The other instances sharing the bus, by id, each with when its latest
    /// heartbeat arrived (a [`L2::now_ms`] value): one gone quiet may be committing
    /// writes it cannot announce (see [`L2::serving`]).
    peers: Mutex<Peers>,
    /// Until when (a [`L2::now_ms`] value) every peer has been heard from recently
    /// enough ([`L2::peer_lease`]); `u64::MAX` without peers.
    peers_until: AtomicU64,
}

/// The other instances on the bus (see `L2::peers`).
#[derive(Debug, Default)]
struct Peers {
    heard: HashMap<u64, u64>,
    /// When the bus was last subscribed (a [`L2::now_ms`] value): a peer is given up
    /// for gone only after [`PEER_GONE`] of silence since then too.
    subscribed: u64,
}

/// What the bus has delivered (see [`L2::remote_writes`]).
#[derive(Debug)]
struct Delivery {
    /// Per table: a remote version every message of whose commits was received (or
    /// came before `baseline`), and when the latest other instance's message about
    /// it was received.
    tables: HashMap<String, Delivered>,
    /// Versions read by lookups, not known delivered yet, with when their reply came
    /// (a [`L2::now_ms`] value): delivered once a heartbeat of this instance sent
    /// after that comes back, since Redis delivers in order.
    pending: HashMap<String, (u64, u64)>,
    /// When the channel was last subscribed or found to have missed a message:
    /// commits before it may never have been received.
    baseline: Instant,
    /// When the latest other instance's message about a table not tracked here was
    /// received (such tables get no entry, so the map stays bounded by what is
    /// cached): a table first read later counts from then.
    untracked: Option<Instant>,
}

/// Confirmations of one of this instance's messages, and its writer once it waits.
#[derive(Debug, Default)]
struct Acks {
    received: u64,
    /// How many the writer waits for, and how it is woken.
    writer: Option<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// Takes the confirmations of a message out once its writer stopped waiting (woken,
/// timed out or cancelled).
struct StopWaiting<'a>(&'a L2, u64);

impl Drop for StopWaiting<'_> {
    fn drop(&mut self) {
        let mut acks = self.0.acks.lock().unwrap_or_else(|p| p.into_inner());
        acks.remove(&self.1);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Delivered {
    version: Option<u64>,
    received: Option<Instant>,
}

impl Delivery {
    fn remote_writes<'a>(
        &self,
        remote: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Option<RemoteWrites> {
        let mut received = Vec::new();
        for (table, version) in remote {
            let d = self.tables.get(table)?;
            if d.version != Some(version) {
                return None;
            }
            if let Some(at) = d.received {
                received.push((table.to_string(), at));
            }
        }
        Some(RemoteWrites {
            baseline: self.baseline,
            received,
        })
    }

    /// A lookup's reply, received at `at` (an [`L2::now_ms`] value), said these
    /// versions.
    fn read(&mut self, tables: &[String], versions: &[u64], at: u64) {
        for (t, &v) in tables.iter().zip(versions) {
            if self.tables.get(t).is_some_and(|d| d.version == Some(v)) {
                continue;
            }
            match self.pending.get_mut(t) {
                // The earliest reply that said it.
                Some((p, _)) if *p == v => {}
                Some(p) => *p = (v, at),
                None => {
                    self.pending.insert(t.clone(), (v, at));
                }
            }
        }
    }

    /// A commit's message (`foreign`: another instance's) received `now`; `tracked`:
    /// whether a table may be cached here.
    fn delivered(
        &mut self,
        changed: &[(&str, u64)],
        foreign: bool,
        now: Instant,
        tracked: impl Fn(&str) -> bool,
    ) {
        for &(t, v) in changed {
            let pending = self.pending.remove(t).is_some();
            let d = match self.tables.get_mut(t) {
                Some(d) => d,
                None if pending || tracked(t) => self.tables.entry(t.to_string()).or_default(),
                None => {
                    if foreign {
                        self.untracked = Some(now);
                    }
                    continue;
                }
            };
            d.version = Some(v);
            if foreign {
                d.received = Some(now);
            }
        }
    }

    /// This instance's heartbeat sent at `sent` came back: every message published
    /// before it was received, so versions read before it are delivered.
    fn beat_back(&mut self, sent: u64) {
        let (tables, untracked) = (&mut self.tables, self.untracked);
        self.pending.retain(|t, &mut (v, at)| {
            if at >= sent {
                return true;
            }
            let d = tables.entry(t.clone()).or_insert(Delivered {
                version: None,
                received: untracked,
            });
            d.version = Some(v);
            false
        });
    }

    /// Messages may have been missed until now: no version is known delivered any
    /// more (a Redis that lost increments counts the same numbers again, for other
    /// commits), each is proven again by a message or a heartbeat.
    fn missed(&mut self, now: Instant) {
        self.baseline = now;
        self.pending.clear();
        for d in self.tables.values_mut() {
            d.version = None;
        }
    }
}

/// Other instances' commits a fill's remote versions count: each was received on the
/// bus at or before its table's time here, or committed before `baseline`. Their
/// WAL positions are unknown here; a position the primary had after those moments
/// is past them.
#[derive(Debug, Clone)]
pub struct RemoteWrites {
    pub baseline: Instant,
    pub received: Vec<(String, Instant)>,
}

impl RemoteWrites {
    /// When the latest commit counted for `table` (or, for [`crate::ALL`], for any
    /// table before the baseline) may have reached this instance.
    pub fn since(&self, table: &str) -> Option<Instant> {
        let received = self
            .received
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, at)| *at);
        if table == crate::ALL {
            Some(received.map_or(self.baseline, |r| r.max(self.baseline)))
        } else {
            received
        }
    }
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("prefix", &self.config.prefix)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Drop for L2 {
    fn drop(&mut self) {
        self.abort_tasks();
        // A goodbye on the way out (within a runtime), unless `leave` said it, or a
        // commit is still owed (see `leave`).
        if self.left.load(Relaxed) || self.owes() {
            return;
        }
        let (Some(mut conn), Ok(runtime)) =
            (self.connection(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let mut cmd = self.bye_command();
        let wait = self.config.timeout.max(Duration::from_millis(100));
        runtime.spawn(async move {
            let bye = Lua::new(BYE);
            let _ = tokio::time::timeout(wait, conn.eval::<redis::Value>(&bye, &mut cmd)).await;
        });
    }
}

/// Whether Redis answered `e` (an error reply: out of memory, read-only, no
/// permission…), rather than failing to answer.
fn is_refusal(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
}

/// What sending `bytes` to Redis may take beyond a call's `timeout`: 20 ms a MB
/// (50 MB/s, a slow network's pace).
fn transfer_time(bytes: usize) -> Duration {
    Duration::from_millis(u64::try_from(bytes / 50_000).unwrap_or(u64::MAX))
}

/// The invalidation channel of `prefix`'s keys in database `db`. Pub/sub ignores
/// databases: deployments on two databases of one Redis, with the same prefix, must
/// not hear each other's versions and heartbeats.
fn channel(prefix: &str, db: i64) -> String {
    match db {
        0 => format!("{prefix}invalidations"),
        // (After the name: no prefix of database 0 can name the same channel.)
        db => format!("{prefix}invalidations:db{db}"),
    }
}

/// An EVALSHA of `script` with `keys` keys: the caller adds the keys, then the
/// arguments. Each is copied into the command's one buffer as it is added (redis'
/// `ScriptInvocation` keeps each in a `Vec` of its own and copies them again).
fn eval(script: &Lua, keys: usize) -> Command {
    let mut cmd = Command::new("EVALSHA");
    cmd.arg(&script.hash).num(keys as u64);
    cmd
}

/// The numbers of a reply the scripts join with spaces; `None` if one is not a number.
fn numbers(reply: &[u8]) -> Option<Vec<u64>> {
    if reply.is_empty() {
        return Some(Vec::new());
    }
    reply.split(|&b| b == b' ').map(number).collect()
}

/// A number written in decimal digits (at most 19: no overflow), as the scripts and
/// messages write them.
fn number(n: &[u8]) -> Option<u64> {
    (!n.is_empty() && n.len() <= 19 && n.iter().all(u8::is_ascii_digit)).then(|| {
        n.iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'))
    })
}

/// A random number (ids and starting versions: unpredictable enough, not secret):
/// splitmix64 over a counter that starts at a seed from the OS-seeded hasher and the
/// clock. (A commit takes one per table: seeding each anew cost more than the rest
/// of building its command.)
fn random() -> u64 {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        AtomicU64::new(h.finish())
    });
    let mut z = next.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A version counter's starting value: random, below 10^14 so Lua's numbers print
/// it exactly.
fn first_version() -> u64 {
    1 + random() % (1 << 46)
}

impl L2 {
    /// Starts connecting (in the background: a Redis that is down now only means
    /// misses until it is up). `flush` empties L1 and bumps every version: called when
    /// invalidations may have been missed. Other instances' invalidation messages are
    /// counted in `tables` ([`Source::Bus`]). Call within a Tokio runtime.
    pub fn start(
        config: RedisConfig,
        versions: Arc<Versions>,
        tables: Arc<TableStats>,
        flush: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Arc<L2>, redis::RedisError> {
        let ca = match &config.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read cache.redis.ca_file",
                    format!("{}: {e}", path.display()),
                ))
            })?),
        };
        if config.prefix.contains(['{', '}']) {
            // Redis Cluster hashes a key by its first `{…}`: `{pgopt}` must be it.
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the cache's Redis prefix may not hold '{' or '}' (Redis Cluster's hash tags)",
                config.prefix.clone(),
            )));
        }
        // Parsed now: a bad URL is a configuration error.
        let mut db = 0;
        for (i, url) in config.url.split(',').enumerate() {
            let parsed = client(url.trim(), ca.as_deref())?;
            if i == 0 {
                db = parsed.get_connection_info().redis.db;
            }
        }
        let instance = random() >> 1;
        let mac_key = {
            let key = config.hmac_key.as_deref().unwrap_or(b"pgopt-cache");
            let mut input = b"pgopt values under prefix ".to_vec();
            input.extend_from_slice(config.prefix.as_bytes());
            mac(key, &input)
        };
        let l2 = Arc::new(L2 {
            ca,
            mac_key,
            instance,
            instance_arg: instance.to_string(),
            seq_key: format!("{}{{pgopt}}seq:{instance:x}", config.prefix),
            channel: channel(&config.prefix, db),
            conn: Mutex::new(None),
            read: Lua::new(READ),
            raise: Lua::new(RAISE),
            write: Lua::new(WRITE),
            beat: Lua::new(BEAT),
            bye: Lua::new(BYE),
            left: std::sync::atomic::AtomicBool::new(false),
            counters: L2Counters::default(),
            owed: Mutex::new(HashMap::new()),
            reconnect: Arc::new(tokio::sync::Notify::new()),
            acks: Mutex::new(HashMap::new()),
            next_message: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            heard: AtomicU64::new(0),
            unanswered_since: AtomicU64::new(0),
            owing_since: AtomicU64::new(0),
            refusal_warned: AtomicU64::new(0),
            epoch: Instant::now(),
            owner_warned: Mutex::new(None),
            delivery: Mutex::new(Delivery {
                tables: HashMap::new(),
                pending: HashMap::new(),
                baseline: Instant::now(),
                untracked: None,
            }),
            peers: Mutex::default(),
            peers_until: AtomicU64::new(u64::MAX),
            config,
        });
        if l2.config.hmac_key.is_none() && l2.config.store_values {
            tracing::warn!(
                "cache.redis.hmac_key is not set: values read from Redis are checked for \
                 corruption, not forgery; set it where others can write to this Redis"
            );
        }
        let keeper = tokio::spawn(keep_connected(Arc::downgrade(&l2)));
        let listener = tokio::spawn(listen(Arc::downgrade(&l2), versions, tables, flush));
        l2.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([keeper, listener]);
        Ok(l2)
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether entries may be served and filled: the bus is subscribed (else another
    /// instance's write could go unnoticed) and this instance's own heartbeat came
    /// back within the lease, counted from when it was sent. Redis delivers in order,
    /// so every message published before that beat reached Redis has been applied; a
    /// writer whose message an instance did not confirm waits out the lease and a
    /// timeout more (see `await_acks`), so an instance cut off from Redis, or lagging
    /// behind its messages, has stopped serving by the time that writer's client hears
    /// its commit ended.
    /// Nor while another instance on the bus has gone quiet for [`L2::peer_lease`]:
    /// cut off from Redis, it may be committing writes it cannot announce (its
    /// writers wait out a longer lease, see `outlast_leases`), until it is heard again,
    /// says it leaves, or is given up for gone after [`PEER_GONE`].
    pub fn serving(&self) -> bool {
        let heard = self.heard.load(Relaxed);
        let now = self.now_ms();
        self.counters.bus_up.load(Relaxed)
            && heard > 0
            && u128::from(now) < u128::from(heard) + self.lease().as_millis()
            && now < self.peers_until.load(Relaxed)
    }

    /// How long another instance may be quiet while this one serves: its lease less a
    /// timeout, so that this one stops before a writer cut off from Redis lets its
    /// client go (`outlast_leases` waits a lease and a timeout from when Redis stopped
    /// answering it, and its last heartbeat reached Redis before that).
    fn peer_lease(&self) -> Duration {
        self.lease().saturating_sub(self.config.timeout)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes `peers_until` from `peers`.
    fn peers_changed(&self, peers: &Peers) {
        let lease = u64::try_from(self.peer_lease().as_millis()).unwrap_or(u64::MAX);
        let until = peers
            .heard
            .values()
            .map(|&at| at.saturating_add(lease))
            .min()
            .unwrap_or(u64::MAX);
        self.peers_until.store(until, Relaxed);
    }

    /// How many other instances share the bus (each heard within [`PEER_GONE`]).
    pub fn peer_count(&self) -> usize {
        self.peers().heard.len()
    }

    /// Instance `id`'s heartbeat arrived. It was published after this instance's own
    /// latest heartbeat to come back (Redis delivers in order): its lease is counted
    /// from when that one was sent, not from its arrival, which a lagging reader or a
    /// late delivery would put later.
    fn peer_heard(&self, id: u64) {
        let at = match self.heard.load(Relaxed) {
            0 => self.now_ms(),
            heard => heard,
        };
        let mut peers = self.peers();
        let entry = peers.heard.entry(id).or_default();
        *entry = (*entry).max(at);
        self.peers_changed(&peers);
    }

    /// Instance `id` said it leaves (it shut down).
    fn peer_left(&self, id: u64) {
        let mut peers = self.peers();
        if peers.heard.remove(&id).is_some() {
            tracing::info!(
                instance = id,
                "another pgopt instance sharing the cache left"
            );
        }
        self.peers_changed(&peers);
    }

    /// The peers quiet for [`PEER_GONE`] (and since the bus was subscribed) are given
    /// up: `true` if any was (their unannounced commits, if any, must end everything).
    fn peers_gone(&self) -> bool {
        let now = self.now_ms();
        let gone = u64::try_from(PEER_GONE.as_millis()).unwrap_or(u64::MAX);
        let mut peers = self.peers();
        let since = peers.subscribed;
        let before = peers.heard.len();
        peers
            .heard
            .retain(|_, at| now.saturating_sub((*at).max(since)) < gone);
        let dropped = before - peers.heard.len();
        if dropped > 0 {
            self.peers_changed(&peers);
        }
        dropped > 0
    }

    /// Tells the other instances this one leaves, so that they need not wait for its
    /// heartbeats (see [`L2::serving`]); its heartbeats stop. Call at shutdown.
    /// No goodbye while it owes Redis a commit: the others then give it up after
    /// [`PEER_GONE`], ending every value.
    pub async fn leave(&self) {
        self.left.store(true, Relaxed);
        // (A heartbeat under way must not land after the goodbye.)
        for task in self.abort_tasks() {
            let _ = task.await;
        }
        self.pay_owed().await;
        if self.owes() {
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let mut cmd = self.bye_command();
        let said = conn.eval::<redis::Value>(&self.bye, &mut cmd);
        let _ =
            tokio::time::timeout(self.config.timeout.max(Duration::from_millis(100)), said).await;
    }

    /// Stops the background tasks (connection, heartbeats, the bus): their handles,
    /// to wait for.
    fn abort_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in &tasks {
            task.abort();
        }
        tasks
    }

    fn bye_command(&self) -> Command {
        let mut cmd = eval(&self.bye, 1);
        cmd.arg(&self.seq_key)
            .arg(&self.channel)
            .arg(&self.instance_arg);
        cmd
    }

    /// How long the bus may be silent while this instance serves: three heartbeats
    /// and what may delay one (an owed payment and the beat, each up to `timeout`).
    fn lease(&self) -> Duration {
        HEARTBEAT * 3 + self.config.timeout * 2
    }

    /// Now, in ms since `epoch`, plus one.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The lease runs from `at` (a [`L2::now_ms`] value), unless it already runs from
    /// later.
    fn heard_at(&self, at: u64) {
        self.heard.fetch_max(at, Relaxed);
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The other instances' commits that `remote` (tables at the versions a fill's
    /// snapshot took from Redis) count, if every one of them is known to have reached
    /// this instance; `None` when a version is not delivered yet (its message may be
    /// on its way).
    pub fn remote_writes<'a>(
        &self,
        remote: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Option<RemoteWrites> {
        self.delivery().remote_writes(remote)
    }

    /// A message of a commit (by `foreign`: another instance) moved these versions:
    /// call before the versions are applied.
    fn delivered(&self, changed: &[(&str, u64)], foreign: bool, versions: &Versions) {
        let tracked = |t: &str| versions.tracks(t);
        self.delivery()
            .delivered(changed, foreign, Instant::now(), tracked);
    }

    /// Messages may have been missed until now.
    fn missed(&self) {
        self.delivery().missed(Instant::now());
    }

    /// Adds the version key of each table (`<prefix>{pgopt}v:<table>`) to `cmd`.
    fn version_keys<'a>(&self, cmd: &mut Command, tables: impl IntoIterator<Item = &'a str>) {
        for table in tables {
            cmd.arg_with(&[
                self.config.prefix.as_bytes(),
                b"{pgopt}v:",
                table.as_bytes(),
            ]);
        }
    }

    fn entry_key(&self, key: &Key) -> String {
        format!("{}{{pgopt}}e:{:016x}", self.config.prefix, key.hash())
    }

    /// Where subscribers confirm they applied an instance's message.
    fn ack_channel(&self, instance: u64) -> String {
        format!("{}ack:{instance:x}", self.config.prefix)
    }

    fn connection(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A call failed: the connection is rebuilt.
    fn failed(&self, what: &str, e: &str) {
        self.counters.errors.fetch_add(1, Relaxed);
        if self.counters.up.swap(false, Relaxed) {
            tracing::warn!(error = %e, "Redis {what} failed: the cache goes to PostgreSQL until Redis is back");
        }
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.reconnect.notify_one();
    }

    /// Redis refused a call (it answered, with an error: the connection is fine).
    fn refused(&self, what: &str, e: &redis::RedisError) {
        self.counters.errors.fetch_add(1, Relaxed);
        // Once a minute at most: a Redis out of memory refuses every store and beat.
        let now = self.now_ms();
        let last = self.refusal_warned.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 60_000)
            && self
                .refusal_warned
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "a Redis {what} was refused (warned once a minute; SHOW CACHE's redis_errors counts them)");
        } else {
            tracing::debug!(error = %e, "a Redis {what} was refused");
        }
    }

    /// Runs `cmd`, an EVALSHA of `script` (see [`eval`]); `None` when it failed.
    async fn call<T: FromRedisValue>(
        &self,
        what: &str,
        script: &Lua,
        cmd: &mut Command,
    ) -> Option<T> {
        let mut conn = self.connection()?;
        self.answered(what, conn.eval::<T>(script, cmd)).await
    }

    /// What a call to Redis answered; `None` when it failed or timed out (counted,
    /// and the connection rebuilt unless Redis itself refused the call).
    async fn answered<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let sent = self.now_ms();
        let unanswered = || {
            let _ = self
                .unanswered_since
                .compare_exchange(0, sent, Relaxed, Relaxed);
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(v)) => {
                self.unanswered_since.store(0, Relaxed);
                Some(v)
            }
            Ok(Err(e)) if is_refusal(&e) => {
                self.unanswered_since.store(0, Relaxed);
                self.refused(what, &e);
                None
            }
            Ok(Err(e)) => {
                unanswered();
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                unanswered();
                self.failed(
                    what,
                    &format!("no answer within {} ms", self.config.timeout.as_millis()),
                );
                None
            }
        }
    }

    /// A lookup's versions, value and the value's time to live, by an MGET of the
    /// version keys and the entry (pipelined with the entry's PTTL): a fraction of
    /// the READ script's cost to Redis. `Some(None)`: a version is missing (the
    /// script creates it); `None`: Redis was not reached.
    #[allow(clippy::type_complexity)]
    async fn peek(
        &self,
        key: &Key,
        tables: &[String],
        want: bool,
    ) -> Option<Option<(Vec<u64>, Option<Vec<u8>>, Option<Duration>)>> {
        let mut conn = self.connection()?;
        let mut get = Command::new("MGET");
        self.version_keys(&mut get, tables.iter().map(String::as_str));
        let entry = want.then(|| self.entry_key(key));
        let mut ttl = entry.map(|entry| {
            get.arg(&entry);
            let mut ttl = Command::new("PTTL");
            ttl.arg(&entry);
            ttl
        });
        let call = async {
            match &mut ttl {
                Some(ttl) => {
                    let (got, left): (Vec<Option<Vec<u8>>>, i64) =
                        conn.query_pair(&mut get, ttl).await?;
                    Ok((got, Some(left)))
                }
                None => Ok((conn.query(&mut get).await?, None)),
            }
        };
        let (mut got, left) = self.answered("lookup", call).await?;
        if got.len() != tables.len() + usize::from(want) {
            self.failed("lookup", "an unexpected reply");
            return None;
        }
        let raw = if want { got.pop().flatten() } else { None };
        let mut versions = Vec::with_capacity(tables.len());
        for v in got {
            let Some(v) = v else { return Some(None) };
            let Some(v) = number(&v) else {
                // Redis answered: the connection is fine.
                self.counters.errors.fetch_add(1, Relaxed);
                tracing::warn!("a version in Redis is not a number: the lookup goes to PostgreSQL");
                return None;
            };
            versions.push(v);
        }
        // (-2: the entry expired between MGET and PTTL, which Redis may run apart: the
        // value is served, but not kept. -1: no expiry.)
        let ttl_left = match left {
            Some(-2) if raw.is_some() => Some(Duration::ZERO),
            left => left
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
        };
        Some(Some((versions, raw, ttl_left)))
    }

    /// [`L2::peek`]'s answer by the READ script, which creates missing versions.
    async fn read_creating(
        &self,
        key: &Key,
        tables: &[String],
        want: bool,
    ) -> Option<(Vec<u64>, Option<Vec<u8>>, Option<Duration>)> {
        let mut cmd = eval(&self.read, tables.len() + usize::from(want));
        self.version_keys(&mut cmd, tables.iter().map(String::as_str));
        if want {
            cmd.arg(self.entry_key(key));
        }
        cmd.num(u64::from(want));
        for _ in tables {
            cmd.num(first_version());
        }
        let mut reply: Vec<Vec<u8>> = self.call("lookup", &self.read, &mut cmd).await?;
        let ttl_left = if want { reply.pop() } else { None }
            .and_then(|t| std::str::from_utf8(&t).ok()?.parse::<u64>().ok())
            .map(Duration::from_millis);
        let raw = if want { reply.pop() } else { None };
        let versions = reply.first().and_then(|r| numbers(r));
        let Some(versions) = versions.filter(|v| reply.len() == 1 && v.len() == tables.len())
        else {
            self.failed("lookup", "an unexpected reply");
            return None;
        };
        Some((versions, raw.filter(|r| !r.is_empty()), ttl_left))
    }

    /// The current versions of `tables` and, when L2 stores values, the value stored
    /// under `key` if it was filled at exactly those versions. `None`: Redis is not
    /// reachable now.
    /// Commits of this instance not yet counted in Redis (see `owed`).
    fn owes(&self) -> bool {
        !self
            .owed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub async fn lookup(&self, key: &Key, tables: &[String]) -> Option<Found> {
        // A commit of this instance not yet counted in Redis: Redis' versions are
        // behind it, so what they validate may predate it.
        if self.owes() {
            return None;
        }
        let want = self.config.store_values;
        let (versions, raw, ttl_left) = match self.peek(key, tables, want).await? {
            Some(found) => found,
            None => self.read_creating(key, tables, want).await?,
        };
        self.delivery().read(tables, &versions, self.now_ms());
        let value = match raw {
            None => None,
            Some(raw) => match decode(&raw, key, self.mac_key(), self.config.max_value_bytes) {
                Err(why) => {
                    self.counters.rejected.fetch_add(1, Relaxed);
                    tracing::warn!(why, "a value in Redis was refused");
                    None
                }
                Ok((stored, value)) => {
                    let current = tables
                        .iter()
                        .map(String::as_str)
                        .zip(versions.iter().copied());
                    let mut want: Vec<(&str, u64)> = current.collect();
                    let mut have: Vec<(&str, u64)> =
                        stored.iter().map(|(t, v)| (t.as_str(), *v)).collect();
                    want.sort_unstable();
                    have.sort_unstable();
                    if want == have {
                        Some(value)
                    } else {
                        self.counters.stale.fetch_add(1, Relaxed);
                        None
                    }
                }
            },
        };
        let c = &self.counters;
        if want {
            if value.is_some() { &c.hits } else { &c.misses }.fetch_add(1, Relaxed);
        }
        Some(Found {
            versions,
            value,
            ttl_left,
        })
    }

    fn mac_key(&self) -> &[u8] {
        &self.mac_key
    }

    /// Stores `value` for `key`, filled at `versions` (the remote versions read before
    /// its query ran), for `ttl`.
    pub async fn store(&self, key: &Key, versions: &[(&str, u64)], value: &[u8], ttl: Duration) {
        if !self.config.store_values {
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let payload = encode(
            key,
            versions,
            value,
            self.mac_key(),
            self.config.compress_min,
        );
        let mut cmd = Command::new("SET");
        cmd.arg(self.entry_key(key))
            .arg(payload.as_ref())
            .arg("PX")
            .num(
                u64::try_from(ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_TTL_MS),
            );
        // A large value takes longer than `timeout` to send: not a failure (which
        // drops the connection every other call shares) unless slower than that.
        // (Not one of the calls `unanswered_since` counts: its allowance is longer.)
        let within = self.config.timeout + transfer_time(payload.len());
        match tokio::time::timeout(within, conn.query::<()>(&mut cmd)).await {
            Ok(Ok(())) => {
                self.counters.stored.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) if is_refusal(&e) => self.refused("store", &e),
            Ok(Err(e)) => self.failed("store", &e.to_string()),
            Err(_) => self.failed("store", "timed out"),
        }
    }

    /// Another instance's replication stream started with `marker` written into the
    /// WAL at `lsn`, and this instance's stream — up, with every commit before it heard
    /// and published — has reached it: told through Redis for a minute (see
    /// [`L2::stream_marker_reached`]). Not while a publish is owed (Redis does not count
    /// every commit heard yet). `false` when not told.
    pub async fn reach_stream_marker(&self, marker: &str, lsn: u64) -> bool {
        if self.owes() {
            return false;
        }
        let Some(mut conn) = self.connection() else {
            return false;
        };
        let mut cmd = Command::new("SET");
        cmd.arg(self.marker_key(marker))
            .num(lsn)
            .arg("PX")
            .num(60_000);
        self.answered("stream marker", conn.query::<()>(&mut cmd))
            .await
            .is_some()
    }

    /// Whether another instance's stream reached `marker` at `lsn`, where this
    /// instance wrote it (see [`L2::reach_stream_marker`]): a message with the same
    /// text elsewhere in the WAL proves nothing.
    pub async fn stream_marker_reached(&self, marker: &str, lsn: u64) -> bool {
        let Some(mut conn) = self.connection() else {
            return false;
        };
        let mut cmd = Command::new("GET");
        cmd.arg(self.marker_key(marker));
        self.answered("stream marker", conn.query::<Option<u64>>(&mut cmd))
            .await
            .flatten()
            == Some(lsn)
    }

    fn marker_key(&self, marker: &str) -> String {
        format!("{}{{pgopt}}m:{marker}", self.config.prefix)
    }

    /// Redis was behind versions this instance saw (`seen`: table, version), as after
    /// a failover that lost increments: each counter still behind is set to what was
    /// seen and those tables are published (incremented past it, every instance
    /// told), so no value stored at the old versions matches again — for any instance,
    /// also one that never saw the higher ones. Returns the new versions of the tables
    /// raised.
    pub async fn raise(&self, seen: &[(String, u64)]) -> Vec<(String, u64)> {
        if seen.is_empty() {
            return Vec::new();
        }
        let mut cmd = eval(&self.raise, seen.len());
        self.version_keys(&mut cmd, seen.iter().map(|(t, _)| t.as_str()));
        for (_, v) in seen {
            cmd.num(*v);
        }
        let raised: Vec<usize> = self
            .call("raise", &self.raise, &mut cmd)
            .await
            .unwrap_or_default();
        let tables: Vec<String> = raised
            .iter()
            .filter_map(|i| seen.get(i.checked_sub(1)?))
            .map(|(t, _)| t.clone())
            .collect();
        if tables.is_empty() {
            return Vec::new();
        }
        tracing::warn!(?tables, "Redis was behind table versions seen before (a failover that lost writes?): moved past them");
        self.publish(&tables).await.unwrap_or_default()
    }

    /// A commit wrote `tables`: their versions are incremented in Redis and every
    /// instance is told. Returns the new versions, `None` when Redis was not reached
    /// (the tables are owed and incremented once it is back).
    pub async fn publish(&self, tables: &[String]) -> Option<Vec<(String, u64)>> {
        if tables.is_empty() {
            return Some(Vec::new());
        }
        let result = self.publish_now(tables).await;
        if result.is_none() {
            self.counters.publish_failures.fetch_add(1, Relaxed);
            self.owe(tables.iter().map(String::as_str));
            self.outlast_leases().await;
        }
        result
    }

    /// A commit no instance was told of (Redis did not answer, or refused it: out of
    /// memory, read-only, …): its client hears it ended only once every other
    /// instance has stopped serving. This one's heartbeats stopped when it began to
    /// owe, and those of one that lost Redis too stop coming back no later than the
    /// first call Redis left unanswered was sent; each other instance's lease on it
    /// (the same for instances with the same `timeout`) runs out within a lease and a
    /// timeout of the earlier of the two. Commits after that wait no more. (An
    /// instance that still reaches Redis when this one can't stops serving once this
    /// one has gone quiet: see [`L2::serving`].)
    async fn outlast_leases(&self) {
        let since = match self.unanswered_since.load(Relaxed) {
            0 => self.owing_since.load(Relaxed),
            unanswered => match self.owing_since.load(Relaxed) {
                0 => unanswered,
                owing => owing.min(unanswered),
            },
        }
        .max(1);
        let until =
            self.epoch + Duration::from_millis(since - 1) + self.config.timeout + self.lease();
        tokio::time::sleep_until(until.into()).await;
    }

    async fn publish_now(&self, tables: &[String]) -> Option<Vec<(String, u64)>> {
        let mut cmd = eval(&self.write, 1 + tables.len());
        cmd.arg(&self.seq_key);
        self.version_keys(&mut cmd, tables.iter().map(String::as_str));
        let id = self.next_message.fetch_add(1, Relaxed);
        cmd.arg(&self.channel).arg(&self.instance_arg).num(id);
        for t in tables {
            cmd.arg(t.as_str());
        }
        for _ in tables {
            cmd.num(first_version());
        }
        cmd.num(first_version());
        let reply: Vec<u8> = self.call("publish", &self.write, &mut cmd).await?;
        let mut numbers = numbers(&reply).filter(|v| v.len() == tables.len() + 2)?;
        let receivers = numbers.pop()?;
        let seq = numbers.pop()?;
        self.await_acks(id, seq, receivers).await;
        Some(tables.iter().cloned().zip(numbers).collect())
    }

    /// Waits until every subscriber that got message `id` (sequence number `seq`,
    /// this instance's own included) has applied it, or — one has not — until the lease is over, when an
    /// instance that never got the message has stopped serving (see
    /// [`L2::serving`]): either way no instance serves what the commit changed once its
    /// client hears it ended.
    async fn await_acks(&self, id: u64, seq: u64, receivers: u64) {
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + self.lease() + self.config.timeout;
        let confirmed = {
            let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            let entry = acks.entry(id).or_default();
            if entry.received >= receivers {
                acks.remove(&id);
                None
            } else {
                let (tx, rx) = tokio::sync::oneshot::channel();
                entry.writer = Some((receivers, tx));
                Some(rx)
            }
        };
        if let Some(confirmed) = confirmed {
            let _stop = StopWaiting(self, id);
            let on_time = match tokio::time::timeout_at(deadline, confirmed).await {
                Ok(Ok(())) => true,
                // Not woken, yet nothing left to wake it: the lease is waited out.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    false
                }
                Err(_) => false,
            };
            if !on_time {
                self.counters.ack_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    seq,
                    receivers,
                    "not every instance confirmed an invalidation in time"
                );
            }
        }
        self.counters.ack_waits.fetch_add(1, Relaxed);
        self.counters
            .ack_wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    }

    /// A subscriber applied this instance's message `id`.
    fn ack_received(&self, id: u64) {
        // Not an id this instance handed out (an instance of an older version confirms
        // by sequence number): no writer waits for it.
        let next = self.next_message.load(Relaxed);
        if id >= next {
            return;
        }
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = acks.entry(id).or_default();
        entry.received += 1;
        if entry
            .writer
            .as_ref()
            .is_some_and(|(wanted, _)| entry.received >= *wanted)
        {
            if let Some((_, writer)) = entry.writer.take() {
                let _ = writer.send(());
            }
        }
        // Confirmations that came after their writer stopped waiting: ids only grow,
        // so the old ones go (a writer still waiting takes out its own).
        if acks.len() > 4096 {
            acks.retain(|&i, a| a.writer.is_some() || i + 1024 > next);
        }
    }

    /// Redis Cluster: the master that owns the `{pgopt}` slot, as the cluster names it
    /// (host, port). The bus's scripts run there, and PUBLISH counts only the
    /// subscribers of the node it runs on: a subscriber elsewhere still gets the
    /// message (the cluster bus forwards it) but the writer, not counting it, would
    /// not wait for its confirmation. So every instance subscribes on this node.
    async fn bus_owner(&self) -> Option<(String, u16)> {
        let mut conn = self.connection()?;
        let timeout = self.config.timeout.max(Duration::from_secs(1));
        let mut keyslot = Command::new("CLUSTER");
        // Every key of pgopt's has this hash tag (one slot, so scripts may touch them all).
        keyslot.arg("KEYSLOT").arg("{pgopt}");
        let slot: i64 = tokio::time::timeout(timeout, conn.query(&mut keyslot))
            .await
            .ok()?
            .ok()?;
        let mut slots = Command::new("CLUSTER");
        slots.arg("SLOTS");
        let ranges: redis::Value = tokio::time::timeout(timeout, conn.query(&mut slots))
            .await
            .ok()?
            .ok()?;
        slot_owner(&ranges, slot)
    }

    /// The URL to subscribe on the bus's owner with: a configured one with the node's
    /// address, or a host name that resolves to it, as written; else the first one with
    /// the node's address in place of its own — but never for TLS (`rediss://`), whose
    /// certificate names a host, not an address: then `None` (the bus stays down, and
    /// the cache with it, rather than subscribe where writers don't wait).
    async fn owner_url(&self, (host, port): &(String, u16)) -> Option<String> {
        let urls: Vec<&str> = self.config.url.split(',').map(str::trim).collect();
        let exact = host_port(host, *port);
        if let Some(u) = urls.iter().find(|u| url_host_port(u) == exact) {
            return Some(u.to_string());
        }
        // A configured host name that resolves to the node (kept: TLS checks names).
        let owner: Option<std::net::IpAddr> = host.parse().ok();
        for u in &urls {
            let Ok(addrs) = tokio::net::lookup_host(url_host_port(u)).await else {
                continue;
            };
            if addrs
                .into_iter()
                .any(|a| Some(a.ip()) == owner && a.port() == *port)
            {
                return Some(u.to_string());
            }
        }
        let url = with_node(urls.first()?, &exact);
        let mut warned = self.owner_warned.lock().unwrap_or_else(|p| p.into_inner());
        if url.is_none() && warned.as_deref() != Some(exact.as_str()) {
            *warned = Some(exact.clone());
            tracing::warn!(
                node = %exact,
                "the Redis node that owns the cache bus's slot is not in cache.redis.url: \
                 list it by the name its TLS certificate carries"
            );
        }
        url
    }

    /// Confirms to `instance` that its message `id` was applied here.
    fn send_ack(&self, instance: u64, id: u64) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let mut cmd = Command::new("PUBLISH");
        cmd.arg(self.ack_channel(instance)).num(id);
        let timeout = self.config.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, conn.query::<()>(&mut cmd)).await;
        });
    }

    /// `tables` are owed a commit each (incremented once Redis counts them); this
    /// instance's heartbeats stop from now (see `outlast_leases`).
    fn owe<'a>(&self, tables: impl IntoIterator<Item = &'a str>) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        for t in tables {
            *owed.entry(t.to_string()).or_default() += 1;
        }
        let _ = self
            .owing_since
            .compare_exchange(0, self.now_ms(), Relaxed, Relaxed);
    }

    /// Tables owed from a time Redis was unreachable, published now.
    /// They stay owed (lookups stay misses) until Redis has counted them.
    async fn pay_owed(&self) {
        let owed: Vec<(String, u64)> = {
            let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            owed.iter().map(|(t, n)| (t.clone(), *n)).collect()
        };
        let tables: Vec<String> = owed.iter().map(|(t, _)| t.clone()).collect();
        if !owed.is_empty() && self.publish_now(&tables).await.is_some() {
            let mut left = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            for (t, n) in &owed {
                // A commit that failed meanwhile may not be covered: it stays owed.
                if left.get(t) == Some(n) {
                    left.remove(t);
                }
            }
            if left.is_empty() {
                self.owing_since.store(0, Relaxed);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let urls: Vec<&str> = self.config.url.split(',').map(str::trim).collect();
        let attempt = async {
            let mut conn = self.open(&urls).await?;
            // A Redis that takes connections but answers nothing (paused, or its
            // machine swapping) is not reached: each call would wait its timeout. A
            // refusal counts as an answer (an ACL may refuse PING), but for one that
            // says the connection is not usable: no or a wrong password, a dataset
            // still loading. (Not a cluster's: PING goes to every primary there, and
            // one down would keep the healthy ones unused; its connect has had its
            // slots answered.)
            if !self.config.cluster {
                if let Err(e) = conn.query::<redis::Value>(&mut Command::new("PING")).await {
                    let text = e.to_string();
                    let refused = matches!(
                        e.kind(),
                        redis::ErrorKind::ResponseError | redis::ErrorKind::ExtensionError
                    ) && !["NOAUTH", "WRONGPASS", "LOADING"]
                        .iter()
                        .any(|code| text.contains(code));
                    if !refused {
                        return Err(e);
                    }
                }
            }
            Ok::<Conn, redis::RedisError>(conn)
        };
        match tokio::time::timeout(self.config.timeout.max(Duration::from_secs(1)), attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(redis::RedisError::to_string(&e)),
            Err(_) => Err("connecting timed out".into()),
        }
    }

    /// A connection to Redis at `urls` (the first, or the cluster they are seeds of).
    async fn open(&self, urls: &[&str]) -> redis::RedisResult<Conn> {
        if self.config.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec());
            // (`certs` turns TLS on: only for rediss:// URLs.)
            if let Some(ca) = self
                .ca
                .as_ref()
                .filter(|_| urls[0].starts_with("rediss://"))
            {
                builder = builder.certs(certificates(ca));
            }
            Ok(Conn::Cluster(
                builder.build()?.get_async_connection().await?,
            ))
        } else if let Some(target) = Target::of(urls[0])? {
            Ok(Conn::Plain(Arc::new(Pipe::connect(&target).await?)))
        } else {
            let client = client(urls[0], self.ca.as_deref())?;
            Ok(Conn::Single(
                client.get_multiplexed_async_connection().await?,
            ))
        }
    }
}

/// A client for `url`, trusting `ca` (PEM) for `rediss://` when given.
fn client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(ca) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, certificates(ca))
        }
        _ => redis::Client::open(url),
    }
}

fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// Keeps the command connection up (reconnecting with backoff), pays owed
/// increments, and sends the heartbeat.
async fn keep_connected(l2: Weak<L2>) {
    /// A failing connect is logged as a warning at most this often (else at debug).
    const WARN_EVERY: Duration = Duration::from_secs(60);
    let mut backoff = Duration::from_millis(100);
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let Some(this) = l2.upgrade() else { return };
        let wait = if this.connection().is_none() {
            match this.connect().await {
                Ok(conn) => {
                    *this.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    if !this.counters.up.swap(true, Relaxed) {
                        tracing::info!("Redis reached: the shared cache is on");
                    }
                    backoff = Duration::from_millis(100);
                    warned = None;
                    // (Lookups stay misses until this is done: see `lookup`.)
                    this.pay_owed().await;
                    HEARTBEAT
                }
                Err(e) => {
                    this.counters.errors.fetch_add(1, Relaxed);
                    if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        warned = Some(std::time::Instant::now());
                        tracing::warn!(
                            error = %e,
                            "connecting to Redis failed: the shared cache serves nothing until \
                             it is reached (trying again)"
                        );
                    } else {
                        tracing::debug!(error = %e, "connecting to Redis failed");
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            }
        } else {
            // The beat first: a payment may wait for confirmations, and this
            // instance's lease runs from its beats (see `L2::serving`). None while it
            // owes Redis a commit: the others must not take it for one that announced
            // all it wrote (see `L2::peer_lease`).
            if !this.owes() {
                let mut cmd = eval(&this.beat, 1);
                cmd.arg(&this.seq_key)
                    .arg(&this.channel)
                    .arg(&this.instance_arg)
                    .num(first_version())
                    .num(this.now_ms());
                let _: Option<String> = this.call("heartbeat", &this.beat, &mut cmd).await;
            }
            this.pay_owed().await;
            HEARTBEAT
        };
        let reconnect = this.reconnect.clone();
        drop(this);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = reconnect.notified() => {}
        }
    }
}

/// Follows the invalidation channel: moves local versions, flushes L1 on a gap or a
/// dropped subscription, resubscribes with backoff.
async fn listen(
    l2: Weak<L2>,
    versions: Arc<Versions>,
    tables: Arc<TableStats>,
    flush: Arc<dyn Fn() + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(this) = l2.upgrade() else { return };
        // Cluster: the slot's owner, watched while subscribed there.
        let (url, owner) = if this.config.cluster {
            let found = match this.bus_owner().await {
                Some(owner) => this.owner_url(&owner).await.map(|url| (url, Some(owner))),
                None => None,
            };
            match found {
                Some(found) => found,
                None => {
                    drop(this);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        } else {
            let first = this.config.url.split(',').next().unwrap_or("");
            (first.trim().to_string(), None)
        };
        let ca = this.ca.clone();
        let channel = this.channel.clone();
        let acks = this.ack_channel(this.instance);
        let timeout = this.config.timeout.max(Duration::from_secs(1));
        // A silent channel, allowing for what may delay heartbeats (a payment of
        // owed tables and the beat itself, each up to `timeout`), is dropped.
        let silence = CHANNEL_SILENCE + this.config.timeout * 4;
        drop(this);
        let subscribed = tokio::time::timeout(
            timeout,
            Bus::subscribe(&url, ca.as_deref(), &[&channel, &acks]),
        )
        .await;
        let mut bus = match subscribed {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let Some(this) = l2.upgrade() else { return };
        // What was filled while the channel was down (a lookup that began before it
        // dropped) may have missed a message: gone before anything is served again.
        this.missed();
        flush();
        // Subscribed: every message from now on comes (and L1 was just flushed). The
        // peers are served again once each is heard (what they wrote meanwhile was
        // announced, or is owed and announced when they are back).
        this.heard_at(this.now_ms());
        this.peers().subscribed = this.now_ms();
        this.counters.bus_up.store(true, Relaxed);
        tracing::info!("subscribed to the cache's invalidation channel");
        drop(this);
        let mut last: HashMap<u64, u64> = HashMap::new();
        // Cluster: the slot may move (a failover, a resharding); subscribed on its old
        // node, this instance would no longer be waited for. A task of its own checks
        // every few seconds (off this loop: its round trips must not delay messages).
        let moved = Arc::new(tokio::sync::Notify::new());
        let watcher =
            owner.map(|owner| tokio::spawn(watch_owner(l2.clone(), owner, moved.clone())));
        // Every instance (this one included) sends a heartbeat every HEARTBEAT: a
        // channel silent for CHANNEL_SILENCE is taken as dropped (a half-open
        // connection).
        // (One timer and one wait for the whole subscription: re-arming them for
        // each message cost more than applying it.)
        let moved_away = moved.notified();
        tokio::pin!(moved_away);
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(quiet);
        let mut heard = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                next = bus.next() => next,
                () = &mut quiet => {
                    if heard.elapsed() < silence {
                        quiet.as_mut().reset(heard + silence);
                        continue;
                    }
                    None
                }
                () = &mut moved_away => {
                    tracing::warn!(
                        "the cache bus's slot moved to another Redis node: subscribing there"
                    );
                    break;
                }
            };
            let Some((channel, payload)) = next else {
                break;
            };
            heard = tokio::time::Instant::now();
            let Some(this) = l2.upgrade() else { return };
            if channel == acks.as_bytes() {
                if let Some(id) = number(&payload) {
                    this.ack_received(id);
                }
                continue;
            }
            this.counters.messages.fetch_add(1, Relaxed);
            let payload = &payload[..];
            // Another instance's commit counts per table (this one's counted locally).
            let foreign = write_of(payload).is_some_and(|(instance, _)| instance != this.instance);
            let applied = apply(
                payload,
                &mut last,
                &versions,
                foreign.then_some(&*tables),
                |changed| this.delivered(changed, foreign, &versions),
            );
            if !applied {
                this.missed();
                this.counters.flushes.fetch_add(1, Relaxed);
                tracing::warn!("an invalidation message was missed: the local cache is flushed");
                flush();
            }
            // The writer waits for this (after a flush too: nothing stale is left).
            match write_of(payload) {
                // Its own message: no round trip to confirm it.
                Some((instance, id)) if instance == this.instance => this.ack_received(id),
                Some((instance, id)) => this.send_ack(instance, id),
                None => {}
            }
            // Its own heartbeat back: everything published before it is applied (above
            // or earlier), so the lease runs from when it was sent.
            if let Some(sent) = own_beat(payload, this.instance) {
                this.heard_at(sent);
                this.delivery().beat_back(sent);
                if this.peers_gone() {
                    tracing::warn!(
                        "another pgopt instance sharing the cache went quiet without a goodbye: \
                         every cached value ends (it may have committed writes it never announced)"
                    );
                    this.missed();
                    this.counters.flushes.fetch_add(1, Relaxed);
                    flush();
                    // Owed, so that nothing is looked up in Redis until its versions
                    // have moved past whatever that instance wrote.
                    this.owe([crate::ALL]);
                    this.reconnect.notify_one();
                }
            } else if let Some((kind, from)) = peer_word(payload, this.instance) {
                match kind {
                    PeerWord::Beat => this.peer_heard(from),
                    PeerWord::Bye => this.peer_left(from),
                }
            }
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        let Some(this) = l2.upgrade() else { return };
        // Until subscribed again, nothing is served: messages may be lost meanwhile.
        this.counters.bus_up.store(false, Relaxed);
        this.counters.flushes.fetch_add(1, Relaxed);
        tracing::warn!("the cache's invalidation channel dropped: the local cache is flushed");
        flush();
    }
}

/// The bus's subscription: pgopt's own client on a plain node (see [`crate::resp`]),
/// the redis crate's for TLS.
enum Bus {
    Plain(Subscriber),
    Crate(redis::aio::PubSubStream),
}

impl Bus {
    async fn subscribe(url: &str, ca: Option<&[u8]>, channels: &[&str]) -> redis::RedisResult<Bus> {
        if let Some(target) = Target::of(url)? {
            return Ok(Bus::Plain(Subscriber::subscribe(&target, channels).await?));
        }
        let mut pubsub = client(url, ca)?.get_async_pubsub().await?;
        pubsub.subscribe(channels).await?;
        Ok(Bus::Crate(pubsub.into_on_message()))
    }

    /// The next message's channel and payload; `None` once the subscription ended.
    async fn next(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        use futures_util::StreamExt;
        match self {
            Bus::Plain(s) => s.next().await.ok(),
            Bus::Crate(s) => {
                let msg = s.next().await?;
                Some((
                    msg.get_channel_name().as_bytes().to_vec(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
        }
    }
}

/// Redis Cluster: tells the subscriber (`moved`) when the bus's slot has left the node
/// it subscribed on (`subscribed`, as the cluster named it then). A check Redis does
/// not answer proves nothing: a dead node ends the subscription by its silence.
async fn watch_owner(l2: Weak<L2>, subscribed: (String, u16), moved: Arc<tokio::sync::Notify>) {
    loop {
        tokio::time::sleep(OWNER_CHECK).await;
        let Some(this) = l2.upgrade() else { return };
        if this
            .bus_owner()
            .await
            .is_some_and(|owner| owner != subscribed)
        {
            moved.notify_one();
            return;
        }
    }
}

/// `host:port`, an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `host:port` of a Redis URL (`redis[s]://[user:password@]host:port[/db]`).
fn url_host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// `url` with `node` (`host:port`) in place of its own; `None` for a TLS URL, whose
/// certificate check needs the name the node's certificate carries.
fn with_node(url: &str, node: &str) -> Option<String> {
    if url.starts_with("rediss://") {
        return None;
    }
    let old = url_host_port(url);
    // Where it is in `url` (a password might repeat it).
    let start = old.as_ptr() as usize - url.as_ptr() as usize;
    Some(format!(
        "{}{node}{}",
        &url[..start],
        &url[start + old.len()..]
    ))
}

/// The master (address, port) serving `slot` in a `CLUSTER SLOTS` reply: entries of
/// `[start, end, [ip, port, id, …], replicas…]`.
fn slot_owner(reply: &redis::Value, slot: i64) -> Option<(String, u16)> {
    use redis::Value;
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&slot) {
            return None;
        }
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

/// When this instance's heartbeat `payload` was sent (its `now_ms`), if it is one.
fn own_beat(payload: &[u8], instance: u64) -> Option<u64> {
    let mut parts = payload.split(|&b| b == 0);
    if parts.next()? != b"hb" {
        return None;
    }
    let from = number(parts.next()?)?;
    let _seq = parts.next()?;
    let sent = number(parts.next()?)?;
    (from == instance).then_some(sent)
}

/// What another instance's heartbeat or goodbye says.
enum PeerWord {
    Beat,
    Bye,
}

/// A heartbeat or goodbye of an instance other than `instance`, and its sender.
fn peer_word(payload: &[u8], instance: u64) -> Option<(PeerWord, u64)> {
    let mut parts = payload.split(|&b| b == 0);
    let kind = match parts.next()? {
        b"hb" => PeerWord::Beat,
        b"bye" => PeerWord::Bye,
        _ => return None,
    };
    let from = number(parts.next()?)?;
    (from != instance).then_some((kind, from))
}

/// The sender of a commit's message and the message's id (what is confirmed).
fn write_of(payload: &[u8]) -> Option<(u64, u64)> {
    let mut parts = payload.split(|&b| b == 0);
    if parts.next()? != b"w" {
        return None;
    }
    let instance = number(parts.next()?)?;
    let _seq = number(parts.next()?)?;
    let id = number(parts.next()?)?;
    Some((instance, id))
}

/// Applies one message; `false` when invalidations may have been missed (a gap or a
/// restart in the sender's sequence, or an unreadable message). A commit's tables are
/// counted in `count` when given, and passed to `delivered` before their versions
/// move.
fn apply(
    payload: &[u8],
    last: &mut HashMap<u64, u64>,
    versions: &Versions,
    count: Option<&TableStats>,
    delivered: impl FnOnce(&[(&str, u64)]),
) -> bool {
    let mut parts = payload.split(|&b| b == 0);
    let (Some(kind), Some(instance), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Some(instance), Some(seq)) = (number(instance), number(seq)) else {
        return false;
    };
    let seen = last.get(&instance).copied();
    let in_order = match (kind, seen) {
        // The first word from an instance: its earlier commits are in the versions
        // every fill reads, so it sets the baseline.
        (_, None) => true,
        (b"w", Some(s)) => seq == s + 1,
        (b"hb" | b"bye", Some(s)) => seq == s,
        _ => false,
    };
    if kind == b"bye" {
        // Its sequence ends here; a new one would start afresh.
        last.remove(&instance);
        return in_order;
    }
    last.insert(instance, seq);
    if kind == b"w" {
        // The message's id: only its sender reads it.
        if parts.next().and_then(number).is_none() {
            return false;
        }
        let mut changed = Vec::new();
        loop {
            match (parts.next(), parts.next()) {
                (Some(table), Some(v)) => match (std::str::from_utf8(table), number(v)) {
                    (Ok(table), Some(v)) => changed.push((table, v)),
                    _ => return false,
                },
                (None, None) => break,
                _ => return false,
            }
        }
        if let Some(stats) = count {
            let tables: Vec<&str> = changed.iter().map(|(t, _)| *t).collect();
            stats.invalidated(&tables, Source::Bus, versions);
        }
        delivered(&changed);
        versions.observe_tracked(changed);
    }
    in_order
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// `PGC1 | flags | HMAC | key length, key | table count, (name length, name, version)… | value`.
fn encode(
    key: &Key,
    versions: &[(&str, u64)],
    value: &[u8],
    mac_key: &[u8],
    compress_min: usize,
) -> Bytes {
    let mut body = BytesMut::with_capacity(value.len() + 64);
    let flags = if value.len() >= compress_min {
        COMPRESSED
    } else {
        0
    };
    body.put_u8(flags);
    body.put_u32(key.bytes().len() as u32);
    body.put_slice(key.bytes());
    body.put_u16(versions.len() as u16);
    for (t, v) in versions {
        body.put_u16(t.len() as u16);
        body.put_slice(t.as_bytes());
        body.put_u64(*v);
    }
    if flags & COMPRESSED != 0 {
        body.put_slice(&lz4_flex::compress_prepend_size(value));
    } else {
        body.put_slice(value);
    }
    let mut out = BytesMut::with_capacity(body.len() + 4 + MAC_LEN);
    out.put_slice(MAGIC);
    out.put_slice(&mac(mac_key, &body));
    out.put_slice(&body);
    out.freeze()
}

type Decoded = (Vec<(String, u64)>, Bytes);

/// The versions and value of a stored entry, if it is intact, authentic and for `key`.
fn decode(raw: &[u8], key: &Key, mac_key: &[u8], max: usize) -> Result<Decoded, &'static str> {
    let rest = raw
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a pgopt value")?;
    if rest.len() < MAC_LEN {
        return Err("truncated");
    }
    let (tag, body) = rest.split_at(MAC_LEN);
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(mac_key).map_err(|_| "bad HMAC key")?;
    m.update(body);
    // Compared in constant time.
    m.verify_slice(tag)
        .map_err(|_| "the HMAC does not match: forged or corrupted")?;
    let mut r = Reader(body);
    let flags = r.u8()?;
    let key_len = r.u32()? as usize;
    if r.take(key_len)? != key.bytes() {
        return Err("stored under another key");
    }
    let n = r.u16()?;
    let mut versions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(len)?).map_err(|_| "a table name is not UTF-8")?;
        versions.push((name.to_string(), r.u64()?));
    }
    let value = if flags & COMPRESSED != 0 {
        let size = r.0.get(..4).ok_or("truncated")?;
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
        if size > max {
            return Err("larger than allowed");
        }
        lz4_flex::decompress_size_prepended(r.0).map_err(|_| "does not decompress")?
    } else if r.0.len() > max {
        return Err("larger than allowed");
    } else {
        r.0.to_vec()
    };
    Ok((versions, Bytes::from(value)))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_value_is_given_time_to_reach_redis() {
        assert_eq!(transfer_time(1_000), Duration::ZERO);
        assert_eq!(transfer_time(1_000_000), Duration::from_millis(20));
        assert_eq!(transfer_time(64 << 20), Duration::from_millis(1342));
    }

    #[test]
    fn each_redis_database_has_its_own_channel() {
        assert_eq!(channel("pgopt:", 0), "pgopt:invalidations");
        assert_eq!(channel("pgopt:", 3), "pgopt:invalidations:db3");
    }

    #[test]
    fn script_replies_are_read_as_numbers_or_refused() {
        assert_eq!(numbers(b"17 3 99"), Some(vec![17, 3, 99]));
        assert_eq!(numbers(b""), Some(vec![]));
        assert_eq!(numbers(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            numbers(b"9999999999999999999"),
            Some(vec![9_999_999_999_999_999_999])
        );
        for bad in [&b"1  2"[..], b"1 ", b" 1", b"-2", b"1 x", b"1.5"] {
            assert_eq!(numbers(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_bus_owner_takes_a_plain_urls_place_but_never_a_tls_ones() {
        assert_eq!(url_host_port("redis://u:p@h1:7000/0"), "h1:7000");
        assert_eq!(url_host_port("redis://h1:7000"), "h1:7000");
        assert_eq!(
            with_node("redis://u:h1:7000@h1:7000/0", "10.0.0.2:7001").as_deref(),
            Some("redis://u:h1:7000@10.0.0.2:7001/0")
        );
        assert_eq!(
            with_node("redis://h1:7000", &host_port("::1", 7001)).as_deref(),
            Some("redis://[::1]:7001")
        );
        assert_eq!(
            with_node("rediss://cache.example:7000", "10.0.0.2:7001"),
            None
        );
    }
    use crate::KeyBuilder;

    fn key(text: &str) -> Key {
        KeyBuilder::new().part(b's', text.as_bytes()).finish()
    }

    #[test]
    fn values_round_trip_and_forgeries_are_refused() {
        let k = key("SELECT 1");
        for size in [10, 5000] {
            let value = vec![7u8; size];
            let raw = encode(&k, &[("t", 42), ("*", 9)], &value, b"secret", 1024);
            if size > 1024 {
                assert!(raw.len() < size / 2, "compressed");
            }
            let (versions, got) = decode(&raw, &k, b"secret", 1 << 20).unwrap();
            assert_eq!(versions, [("t".to_string(), 42), ("*".to_string(), 9)]);
            assert_eq!(&got[..], &value[..]);
            assert!(
                decode(&raw, &k, b"other", 1 << 20).is_err(),
                "another HMAC key"
            );
            assert!(decode(&raw, &key("SELECT 2"), b"secret", 1 << 20).is_err());
            let mut forged = raw.to_vec();
            let last = forged.len() - 1;
            forged[last] ^= 1;
            assert!(decode(&forged, &k, b"secret", 1 << 20).is_err());
            for cut in 0..raw.len() {
                assert!(decode(&raw[..cut], &k, b"secret", 1 << 20).is_err());
            }
        }
    }

    #[test]
    fn a_version_is_delivered_by_its_message_or_by_a_heartbeat_sent_after_it_was_read() {
        let start = Instant::now();
        let mut d = Delivery {
            tables: HashMap::new(),
            pending: HashMap::new(),
            baseline: start,
            untracked: None,
        };
        let tracked = |_: &str| true;
        let t = |v| [("t", v)];
        // Read at ms 10: unknown until a beat sent after ms 10 comes back.
        d.read(&["t".to_string()], &[7], 10);
        assert!(d.remote_writes(t(7)).is_none());
        d.beat_back(10);
        assert!(
            d.remote_writes(t(7)).is_none(),
            "a beat sent as the reply came"
        );
        d.beat_back(11);
        let w = d.remote_writes(t(7)).expect("delivered");
        assert_eq!(w.since("t"), None, "no other instance's message");
        assert_eq!(w.since(crate::ALL), Some(start), "the baseline");
        // Another instance's commit moves it to 8; its message is the proof.
        let received = start + Duration::from_millis(5);
        d.delivered(&[("t", 8)], true, received, tracked);
        assert!(d.remote_writes(t(7)).is_none());
        assert_eq!(d.remote_writes(t(8)).unwrap().since("t"), Some(received));
        // A read of 9 before its message: not delivered, and an older beat does not
        // make it so; its message does.
        d.read(&["t".to_string()], &[9], 20);
        assert!(d.remote_writes(t(9)).is_none());
        d.delivered(
            &[("t", 9)],
            false,
            received + Duration::from_millis(5),
            tracked,
        );
        let w = d.remote_writes(t(9)).unwrap();
        assert_eq!(w.since("t"), Some(received), "own messages add no receipt");
        d.beat_back(30);
        assert!(
            d.remote_writes(t(9)).is_some(),
            "the pending read went with the message"
        );
        // Messages missed: nothing is known delivered until proven again (a Redis
        // that lost increments counts 9 again, for another commit).
        let missed = received + Duration::from_millis(10);
        d.missed(missed);
        assert!(d.remote_writes(t(9)).is_none());
        d.read(&["t".to_string()], &[9], 40);
        d.beat_back(41);
        let w = d.remote_writes(t(9)).unwrap();
        assert_eq!(w.since(crate::ALL), Some(missed));
        assert_eq!(w.since("t"), Some(received), "receipts are kept");
        // A table not cached here gets no entry; read later, it counts from its
        // latest message.
        let late = missed + Duration::from_millis(5);
        d.delivered(&[("u", 3)], true, late, |t| t != "u");
        assert!(!d.tables.contains_key("u"));
        d.read(&["u".to_string()], &[3], 50);
        d.beat_back(51);
        assert_eq!(d.remote_writes([("u", 3)]).unwrap().since("u"), Some(late));
    }

    /// After a failover Redis may hand a sequence number out again while the writer
    /// of its first message still waits: each writer counts its own message's
    /// confirmations.
    #[tokio::test]
    async fn writers_of_one_sequence_number_wait_for_their_own_messages_confirmations() {
        let l2 = L2::start(
            RedisConfig {
                // Nothing listens there: only the confirmations are exercised.
                url: "redis://127.0.0.1:1".into(),
                timeout: Duration::from_millis(100),
                ..RedisConfig::default()
            },
            Arc::new(Versions::default()),
            Arc::new(TableStats::default()),
            Arc::new(|| {}),
        )
        .unwrap();
        let (first, second) = (
            l2.next_message.fetch_add(1, Relaxed),
            l2.next_message.fetch_add(1, Relaxed),
        );
        let wait = |id| {
            let l2 = l2.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                l2.await_acks(id, 7, 2).await;
                started.elapsed()
            })
        };
        // One of the second message's confirmations comes before its writer waits;
        // one for an id never handed out is not kept.
        l2.ack_received(second);
        l2.ack_received(second + 1_000_000);
        assert_eq!(l2.acks.lock().unwrap().len(), 1);
        let (a, b) = (wait(first), wait(second));
        tokio::time::sleep(Duration::from_millis(50)).await;
        l2.ack_received(first);
        l2.ack_received(first);
        let a = a.await.unwrap();
        assert!(a < l2.lease(), "woken by its confirmations: {a:?}");
        assert!(!b.is_finished(), "one of two");
        l2.ack_received(second);
        let b = b.await.unwrap();
        assert!(b < l2.lease(), "{b:?}");
        assert_eq!(l2.counters.ack_timeouts.load(Relaxed), 0);
        assert!(
            l2.acks.lock().unwrap().is_empty(),
            "each writer took its own out"
        );
    }

    #[test]
    fn a_gap_or_a_restart_in_a_sequence_is_a_miss() {
        let v = Versions::default();
        v.observe([("t", 1)]);
        let mut last = HashMap::new();
        assert!(apply(
            b"w\x005\x0010\x001\x00t\x002",
            &mut last,
            &v,
            None,
            |_| {}
        ));
        assert_eq!(v.snapshot(&["t"]).remote().next(), Some(("t", 2)));
        assert!(apply(
            b"w\x005\x0011\x002\x00t\x003\x00u\x001",
            &mut last,
            &v,
            None,
            |_| {}
        ));
        assert_eq!(
            v.snapshot(&["u"]).remote().next(),
            Some(("u", 0)),
            "untracked"
        );
        assert!(apply(b"hb\x005\x0011", &mut last, &v, None, |_| {}));
        assert!(
            !apply(b"hb\x005\x0012", &mut last, &v, None, |_| {}),
            "a lost last message"
        );
        assert!(
            !apply(b"w\x005\x0014\x003\x00t\x004", &mut last, &v, None, |_| {}),
            "a gap"
        );
        assert!(
            !apply(b"w\x005\x001\x004\x00t\x001", &mut last, &v, None, |_| {}),
            "a restart"
        );
        assert!(
            apply(b"w\x006\x0099\x001", &mut last, &v, None, |_| {}),
            "another instance's first"
        );
        assert!(!apply(b"w\x005", &mut last, &v, None, |_| {}));
        assert!(!apply(
            b"w\x005\x002\x005\x00t",
            &mut last,
            &v,
            None,
            |_| {}
        ));
        assert!(!apply(b"w\x007\x002", &mut last, &v, None, |_| {}), "no id");
        assert_eq!(write_of(b"w\x007\x002\x0031\x00t\x001"), Some((7, 31)));
        assert_eq!(write_of(b"w\x007\x002"), None);
    }
}
