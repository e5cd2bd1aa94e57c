//! A listener on a logical replication stream (`pgoutput`): every transaction committed
//! on the server — by pgopt's clients or anyone else, including what triggers and
//! foreign-key cascades change — arrives as the set of tables it changed, in commit
//! order. The result cache (issue 6) turns these into invalidations for writes that
//! bypass pgopt.
//!
//! The slot is TEMPORARY: PostgreSQL drops it when the listener's connection ends, so
//! a pgopt that dies holds no WAL back. The publication (`FOR ALL TABLES`) is created
//! once if missing, which needs a superuser; a DBA can create it instead.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use pgopt_wire::frontend::Query;
use pgopt_wire::replication::{encode_status_update, pg_epoch_micros, Change, StreamMessage};
use pgopt_wire::split_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::server::{ServerConn, ServerTarget};
use crate::ProxyError;

/// The server and login to listen on (plaintext password or trust; no TLS).
#[derive(Debug, Clone)]
pub struct WalSource {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub keepalive: Option<crate::config::Keepalive>,
    /// The database's other servers.
    pub more_hosts: crate::config::MoreHosts,
    /// TLS as the pools' connections use it (`proxy.server_tls_*`), unless off.
    pub tls: Option<crate::server_tls::ServerTlsConnector>,
}

impl WalSource {
    fn target(&self) -> ServerTarget {
        ServerTarget {
            host: self.host.clone(),
            port: self.port,
            more_hosts: self.more_hosts.clone(),
            dbname: self.dbname.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            md5_hash: None,
            tls: self.tls.clone(),
        }
    }
}

/// One committed transaction's changed tables (`schema.name`), its end position and
/// its commit time (microseconds since 2000-01-01 UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub end_lsn: u64,
    pub tables: Vec<String>,
    pub commit_time: i64,
}

/// What a listener's stream tells its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// The stream starts here (the slot exists): what committed before was not seen
    /// on it. `marker`: what the listener wrote into the WAL after the slot's start
    /// (see [`MARKER_PREFIX`]), and where, when it could.
    Started {
        marker: Option<(String, u64)>,
        /// Whether the stream carries this listener's probes (see [`PROBE_PREFIX`]).
        probes: bool,
        /// The server the stream is on (of the database's hosts, its address as
        /// connected to): probes must be written there.
        server: String,
    },
    Committed(Committed),
    /// A listener's marker (another's, or this one's own) and its position, reached in
    /// the stream: every commit before it has been streamed here.
    Marker(String, u64),
    /// This listener's probe `seq` came back (see [`PROBE_PREFIX`]).
    Probe(u64),
}

/// The prefix of the logical decoding message a listener writes once its slot exists
/// (its content: the publication's name and the slot's, unique, on two lines: a
/// stream of another publication may not carry the same tables). Transactional, so
/// that its commit flushes it and it reaches other streams at once, after every
/// commit before it. Another pgopt instance whose stream was up
/// throughout reaches it after every commit before it, and says so through Redis: the
/// commits in this listener's gap were all heard, so nothing need be ended for them.
pub const MARKER_PREFIX: &str = "pgopt.stream_start";

/// The prefix of the messages a listener writes into the WAL, every so often, to time
/// its stream (see [`Lag`]); content: the slot's name and a sequence number, on two
/// lines. Transactional, as [`MARKER_PREFIX`]'s, for the same reason (a
/// non-transactional message on PostgreSQL before 17 may wait for a later flush).
pub const PROBE_PREFIX: &str = "pgopt.probe";

/// How far behind a stream is, timed with probes: messages a listener writes into the
/// WAL on a connection of its own ([`emit_probe`]) and sees again on its stream. A
/// probe that came back vouches that every commit before it was sent has been heard.
#[derive(Debug)]
pub struct Lag {
    /// Probes on their way, oldest first: sequence number and when it was sent.
    out: VecDeque<(u64, Instant)>,
    next: u64,
    /// When the newest probe that came back was sent (or the stream started).
    heard_to: Instant,
    /// The round trip of the newest probe that came back.
    last: Duration,
}

impl Lag {
    /// A stream that starts at `now` (what committed before it is not its concern).
    pub fn new(now: Instant) -> Lag {
        Lag {
            out: VecDeque::new(),
            next: 0,
            heard_to: now,
            last: Duration::ZERO,
        }
    }

    /// A probe is sent at `now`: its sequence number.
    pub fn send(&mut self, now: Instant) -> u64 {
        self.next += 1;
        self.out.push_back((self.next, now));
        self.next
    }

    /// Probe `seq` came back at `now` (and those before it were lost, if still out).
    pub fn back(&mut self, seq: u64, now: Instant) {
        while let Some(&(first, sent)) = self.out.front() {
            if first > seq {
                break;
            }
            self.out.pop_front();
            if first == seq {
                self.heard_to = self.heard_to.max(sent);
                self.last = now.saturating_duration_since(sent);
            }
        }
    }

    /// How long a commit may have gone unheard at `now`: since the newest probe that
    /// came back was sent.
    pub fn unheard(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.heard_to)
    }

    /// The stream's lag at `now`: the newest round trip, or the oldest probe still out
    /// if it has been out longer.
    pub fn lag(&self, now: Instant) -> Duration {
        let waiting = self.out.front().map_or(Duration::ZERO, |&(_, sent)| {
            now.saturating_duration_since(sent)
        });
        self.last.max(waiting)
    }
}

/// Writes probe `seq` of `slot` into the WAL (see [`PROBE_PREFIX`]) on `conn`, a
/// plain connection to the stream's server `server`, opened on `source` first if
/// `None` (refused if it reaches another of the database's servers: a probe there
/// would never come back on the stream).
pub async fn emit_probe(
    source: &WalSource,
    conn: &mut Option<ServerConn>,
    server: &str,
    slot: &str,
    seq: u64,
) -> Result<(), String> {
    let max_len = pgopt_wire::DEFAULT_MAX_MESSAGE_LEN;
    if conn.is_none() {
        let mut opened = ServerConn::connect(
            &source.target(),
            None,
            source.connect_timeout,
            max_len,
            source.keepalive,
        )
        .await
        .map_err(|e| e.to_string())?;
        if opened.addr.to_string() != server {
            return Err(format!(
                "the probe's connection reached {}, not the stream's server {server}",
                opened.addr
            ));
        }
        // (Its commit waits for no synchronous standby: a standby down would make the
        // stream look late.)
        opened
            .simple_query("SET synchronous_commit = local", max_len)
            .await?;
        *conn = Some(opened);
    }
    let Some(open) = conn.as_mut() else {
        return Ok(());
    };
    let sql = format!(
        "SELECT pg_catalog.pg_logical_emit_message(true, {}, {})::text",
        crate::session_state::quote_literal(PROBE_PREFIX),
        crate::session_state::quote_literal(&format!("{slot}\n{seq}"))
    );
    let written = open.simple_query(&sql, max_len).await.map(|_| ());
    if written.is_err() {
        *conn = None;
    }
    written
}

/// How often the listener tells the server how far it has read, asking for a reply:
/// a walsender that answers nothing for a while is stuck (see [`Heard`]).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// When a listener's stream last sent anything (a change, a keepalive): a stream
/// silent for long, though asked for replies, is stuck (a server that hangs, a
/// stalled connection) and is started again.
#[derive(Debug)]
pub struct Heard {
    base: Instant,
    ms: std::sync::atomic::AtomicU64,
}

impl Default for Heard {
    fn default() -> Self {
        Heard {
            base: Instant::now(),
            ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Heard {
    /// The stream sent something now.
    pub fn now(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the stream has been silent (since the listener began, if it never
    /// sent anything).
    pub fn silent(&self) -> Duration {
        let at = Duration::from_millis(self.ms.load(std::sync::atomic::Ordering::Relaxed));
        self.base.elapsed().saturating_sub(at)
    }
}

/// Creates `publication` for all tables unless it exists. A publication of updates
/// and deletes makes PostgreSQL refuse them on a table without a replica identity (no
/// primary key, no `REPLICA IDENTITY`): when such tables exist it is not created, and
/// the error names them.
pub async fn ensure_publication(source: &WalSource, publication: &str) -> Result<(), ProxyError> {
    let target = &source.target();
    let max_len = pgopt_wire::DEFAULT_MAX_MESSAGE_LEN;
    let mut conn = ServerConn::connect(
        target,
        None,
        source.connect_timeout,
        max_len,
        source.keepalive,
    )
    .await?;
    let name = crate::session_state::quote_literal(publication);
    let check = format!(
        "SELECT pg_catalog.string_agg(c.oid::pg_catalog.regclass::text, ', ') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
         AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
           (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {name})"
    );
    let unfit = conn
        .simple_query(&check, max_len)
        .await
        .map_err(|e| ProxyError::Server {
            server: target.describe(),
            message: format!("checking tables for publication {publication}: {e}"),
        })?;
    if let Some(tables) = unfit.first().and_then(|r| r.first().cloned().flatten()) {
        return Err(ProxyError::Server {
            server: target.describe(),
            message: format!(
                "not creating publication {publication} FOR ALL TABLES: PostgreSQL would then refuse UPDATE and DELETE on tables without a replica identity: {tables} (add a primary key or REPLICA IDENTITY FULL, or create the publication yourself for the tables you want)"
            ),
        });
    }
    // (Another instance starting too may create it between the check and the CREATE:
    // the loser's CREATE fails with 23505, or 42710 once the winner committed.)
    let sql = format!(
        "DO $pgopt$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {name}) \
         THEN EXECUTE pg_catalog.format('CREATE PUBLICATION %I FOR ALL TABLES', {name}); END IF; \
         EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $pgopt$"
    );
    conn.simple_query(&sql, max_len)
        .await
        .map(|_| ())
        .map_err(|e| ProxyError::Server {
            server: target.describe(),
            message: format!(
                "creating publication {publication} (FOR ALL TABLES needs a superuser; or create it yourself): {e}"
            ),
        })
}

/// Streams committed changes into `out` until the connection ends or `out` is closed,
/// after a first [`WalEvent::Started`] once the slot exists (what committed before it
/// is not streamed). `slot` names the temporary slot (unique per listener). With
/// `markers` (on PostgreSQL 14 and later), a [`MARKER_PREFIX`] message is written
/// after the slot's start, and such messages in the stream are passed on. (On
/// PostgreSQL 14 and later this listener's own probes are passed on too.)
pub async fn listen(
    source: &WalSource,
    publication: &str,
    slot: &str,
    markers: bool,
    heard: &Heard,
    out: mpsc::Sender<WalEvent>,
) -> Result<(), ProxyError> {
    let target = &source.target();
    let (timeout, max_len) = (source.connect_timeout, pgopt_wire::DEFAULT_MAX_MESSAGE_LEN);
    let failed = |message: String| ProxyError::Server {
        server: target.describe(),
        message,
    };
    let mut conn = ServerConn::connect_with(
        target,
        None,
        timeout,
        max_len,
        source.keepalive,
        &[("replication", "database")],
        true,
    )
    .await?;
    let slot_ident = crate::session_state::quote_ident(slot);
    conn.simple_query(
        &format!(
            "CREATE_REPLICATION_SLOT {slot_ident} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        ),
        max_len,
    )
    .await
    .map_err(|e| failed(format!("creating replication slot {slot}: {e}")))?;
    // Logical decoding messages reach pgoutput's consumers from PostgreSQL 14 on.
    let messages = conn
        .params
        .iter()
        .find(|(name, _)| name == "server_version")
        .and_then(|(_, v)| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
        .is_some_and(|major| major >= 14);
    let markers = markers && messages;
    let marker = if markers {
        // After the slot's start: every commit before it is before the marker too.
        let content = format!("{publication}\n{slot}");
        // (Its commit waits for no synchronous standby: a standby down would hold the
        // stream's start.)
        let sql = format!(
            "SET synchronous_commit = local; \
             SELECT pg_catalog.pg_logical_emit_message(true, {}, {})::text",
            crate::session_state::quote_literal(MARKER_PREFIX),
            crate::session_state::quote_literal(&content)
        );
        let written = conn.simple_query(&sql, max_len).await.map(|rows| {
            rows.first()
                .and_then(|row| row.first().cloned().flatten())
                .and_then(|lsn| crate::routing::parse_lsn(&lsn))
        });
        match written {
            Ok(Some(lsn)) => Some((content, lsn)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "writing the replication stream's start marker failed");
                None
            }
        }
    } else {
        None
    };
    // The stream starts here: what committed before was not seen.
    if out
        .send(WalEvent::Started {
            marker: marker.clone(),
            probes: messages,
            server: conn.addr.to_string(),
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    let start = format!(
        "START_REPLICATION SLOT {slot_ident} LOGICAL 0/0 (proto_version '1', publication_names {}{})",
        crate::session_state::quote_literal(&crate::session_state::quote_ident(publication)),
        if messages { ", messages 'true'" } else { "" }
    );
    let mut buf = BytesMut::new();
    Query { sql: &start }
        .encode(&mut buf)
        .map_err(|e| failed(e.to_string()))?;
    conn.stream
        .write_all(&buf)
        .await
        .map_err(ProxyError::server_io)?;
    conn.stream.flush().await.map_err(ProxyError::server_io)?;
    buf.clear();

    let mut relations: HashMap<u32, String> = HashMap::new();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut flushed = 0u64;
    // Between a Begin and its Commit: the WAL end a keepalive gives is not all handled.
    let mut in_transaction = false;
    let mut last_status = Instant::now();
    let mut streaming = false;
    loop {
        let frame = match split_frame(&mut buf, max_len) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let status_due = STATUS_INTERVAL.saturating_sub(last_status.elapsed());
                tokio::select! {
                    read = conn.stream.read_buf(&mut buf) => match read {
                        Ok(n) if n > 0 => continue,
                        _ => return Err(failed("the replication connection closed".into())),
                    },
                    () = tokio::time::sleep(status_due), if streaming => {
                        send_status(&mut conn, flushed, true).await?;
                        last_status = Instant::now();
                        continue;
                    }
                    () = out.closed() => return Ok(()),
                }
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        heard.now();
        match frame.tag() {
            b'W' => streaming = true,
            b'E' => {
                let message = crate::stats::error_field(frame.body(), b'M')
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                return Err(failed(format!("replication: {message}")));
            }
            b'd' => match StreamMessage::decode(frame.body()) {
                Ok(StreamMessage::Keepalive { end, reply }) => {
                    // Everything up to the server's WAL end was handled (WAL of no
                    // transaction here — checkpoints, other databases' — yields no
                    // message): confirmed as flushed, as pg_recvlogical does. A
                    // server shutting down waits for that before it stops.
                    if !in_transaction && changed.is_empty() {
                        flushed = flushed.max(end);
                    }
                    if reply {
                        send_status(&mut conn, flushed, false).await?;
                        last_status = Instant::now();
                    }
                }
                Ok(StreamMessage::XLogData { data, .. }) => match Change::decode(data) {
                    Ok(Change::Relation { oid, schema, name }) => {
                        relations.insert(oid, format!("{schema}.{name}"));
                    }
                    Ok(Change::Insert { relation })
                    | Ok(Change::Update { relation })
                    | Ok(Change::Delete { relation }) => {
                        changed.insert(relation_name(&relations, relation));
                    }
                    Ok(Change::Truncate { relations: rels }) => {
                        for r in rels {
                            changed.insert(relation_name(&relations, r));
                        }
                    }
                    Ok(Change::Commit { end, time, .. }) => {
                        in_transaction = false;
                        flushed = flushed.max(end);
                        if !changed.is_empty() {
                            let tables = std::mem::take(&mut changed).into_iter().collect();
                            let committed = Committed {
                                end_lsn: end,
                                tables,
                                commit_time: time,
                            };
                            if out.send(WalEvent::Committed(committed)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(Change::Message {
                        prefix,
                        content,
                        lsn,
                        ..
                    }) if prefix == MARKER_PREFIX => {
                        let marker = String::from_utf8_lossy(content).into_owned();
                        if out.send(WalEvent::Marker(marker, lsn)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(Change::Message {
                        prefix, content, ..
                    }) if prefix == PROBE_PREFIX => {
                        let seq = std::str::from_utf8(content)
                            .ok()
                            .and_then(|c| c.strip_prefix(slot)?.strip_prefix('\n'))
                            .and_then(|seq| seq.parse().ok());
                        if let Some(seq) = seq {
                            if out.send(WalEvent::Probe(seq)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(Change::Begin { .. }) => in_transaction = true,
                    Ok(Change::Message { .. } | Change::Other(_)) => {}
                    Err(e) => return Err(failed(format!("pgoutput: {e}"))),
                },
                Err(e) => return Err(failed(format!("replication stream: {e}"))),
            },
            // NoticeResponse, ParameterStatus, CopyDone…
            b'c' => return Err(failed("the server ended the replication stream".into())),
            _ => {}
        }
    }
}

/// A relation's name, or its OID when its Relation message was never seen (it always
/// precedes the first change; this is for a server that breaks the rule).
fn relation_name(relations: &HashMap<u32, String>, oid: u32) -> String {
    relations
        .get(&oid)
        .cloned()
        .unwrap_or_else(|| format!("oid:{oid}"))
}

async fn send_status(conn: &mut ServerConn, flushed: u64, reply: bool) -> Result<(), ProxyError> {
    let mut out = BytesMut::with_capacity(64);
    encode_status_update(&mut out, flushed, pg_epoch_micros(SystemTime::now()), reply);
    conn.stream
        .write_all(&out)
        .await
        .map_err(ProxyError::server_io)?;
    conn.stream.flush().await.map_err(ProxyError::server_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_back_vouches_for_what_was_sent_before_it() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut lag = Lag::new(start);
        assert_eq!(lag.unheard(at(300)), Duration::from_millis(300));
        let first = lag.send(at(100));
        let second = lag.send(at(200));
        // Out longer than any round trip so far: the oldest probe's age is the lag.
        assert_eq!(lag.lag(at(250)), Duration::from_millis(150));
        lag.back(first, at(240));
        assert_eq!(lag.unheard(at(300)), Duration::from_millis(200));
        assert_eq!(lag.lag(at(260)), Duration::from_millis(140));
        lag.back(second, at(260));
        assert_eq!(lag.lag(at(900)), Duration::from_millis(60));
        assert_eq!(lag.unheard(at(900)), Duration::from_millis(700));
    }

    #[test]
    fn a_later_probe_back_clears_earlier_ones_still_out() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut lag = Lag::new(start);
        let _lost = lag.send(at(10));
        let later = lag.send(at(20));
        lag.back(later, at(30));
        assert_eq!(lag.lag(at(1000)), Duration::from_millis(10));
        assert_eq!(lag.unheard(at(1000)), Duration::from_millis(980));
        // A stray repeat changes nothing.
        lag.back(later, at(2000));
        assert_eq!(lag.lag(at(2000)), Duration::from_millis(10));
    }
}
