//! Named prepared statements in transaction mode. A client's statement `s1` becomes
//! `pgopt_<hash of query and parameter types>` on the servers; each server connection
//! remembers which of those it has, and the proxy prepares them on whichever server a
//! client is lent, just before they are used. Responses the client did not ask for are
//! swallowed; responses for work the proxy skipped are made up — in the order the
//! client expects, which [`Expected`] keeps.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgopt_wire::backend::{CommandComplete, ReadyForQuery};
use pgopt_wire::frontend::Parse;
use pgopt_wire::{sqlstate, EncodeError, ErrorBuilder, Severity, TransactionStatus};

/// Whether a statement is one PostgreSQL takes in a failed transaction (its
/// `IsTransactionExitStmt`: COMMIT, END, ROLLBACK or ABORT, also to a savepoint,
/// PREPARE TRANSACTION), or an empty one.
/// (A comment first counts: the server judges; [`surely_ends_transaction`] does not
/// count it.)
pub fn ends_transaction(sql: &str) -> bool {
    exits_transaction(sql).unwrap_or(true)
}

/// [`ends_transaction`], but `false` when only the server can tell (a comment first).
pub fn surely_ends_transaction(sql: &str) -> bool {
    exits_transaction(sql).unwrap_or(false)
}

/// `None`: a comment first, which pgopt does not read past.
fn exits_transaction(sql: &str) -> Option<bool> {
    let sql = sql.trim_start();
    if sql.starts_with("/*") || sql.starts_with("--") {
        return None;
    }
    let mut words = sql
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty());
    let Some(word) = words.next() else {
        return Some(true); // an empty query: PostgreSQL parses nothing, checks nothing
    };
    let is = |w: &str, name: &str| w.eq_ignore_ascii_case(name);
    let second = words.next();
    // COMMIT PREPARED and ROLLBACK PREPARED end another (prepared) transaction.
    let prepared = second.is_some_and(|w| is(w, "prepared"));
    Some(
        (["commit", "rollback"].iter().any(|w| is(word, w)) && !prepared)
            || ["end", "abort"].iter().any(|w| is(word, w))
            || (is(word, "prepare") && second.is_some_and(|w| is(w, "transaction"))),
    )
}

/// PostgreSQL's message for a statement refused in a failed transaction (25P02).
pub const IN_FAILED_TRANSACTION: &str =
    "current transaction is aborted, commands ignored until end of transaction block";

/// The query text of Parse message `parse` (the whole frame), as bytes: not decoded.
pub fn query_bytes(parse: &[u8]) -> Option<&[u8]> {
    let body = parse.get(5..)?;
    let rest = &body[memchr::memchr(0, body)? + 1..];
    Some(&rest[..memchr::memchr(0, rest)?])
}

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Prepared {
    pub id: u64,
    pub server_name: String,
    /// The Parse message under `server_name`, ready to send.
    pub parse: Bytes,
    /// The client's encoding salt its text was parsed under (see [`statement_id`]);
    /// `None` for ASCII text, which means the same in every encoding.
    pub encoding: Option<u64>,
    /// What it does with the session's sequences, once asked (`None`: its text does
    /// not parse); see `Relay::sequences_at_bind`.
    pub sequences: std::sync::OnceLock<Option<crate::session_state::SequenceUse>>,
}

impl Prepared {
    /// The statement's SQL text (`None` when it is not UTF-8: see [`Prepared::text`]).
    pub fn query(&self) -> Option<&str> {
        Parse::decode(self.parse.get(5..)?).ok().map(|p| p.query)
    }

    /// The statement's SQL text, escaped when it is not UTF-8 (see `pgopt_wire::text`).
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(pgopt_wire::text::escape(query_bytes(&self.parse)?))
    }

    /// The server statement for `parse` from a client whose `client_encoding` gives
    /// `salt` (see `Settings::encoding_salt`).
    pub fn from_parse(parse: &Parse<'_>, salt: u64) -> Result<Prepared, EncodeError> {
        let id = statement_id(parse, salt);
        let server_name = server_name(id);
        let mut buf = BytesMut::new();
        Parse {
            name: &server_name,
            query: parse.query,
            param_types: parse.param_types,
        }
        .encode(&mut buf)?;
        Ok(Prepared {
            id,
            server_name,
            encoding: (!parse.query.is_ascii()).then_some(salt),
            parse: buf.freeze(),
            sequences: Default::default(),
        })
    }
}

/// The statements pgopt prepared on one server connection, each with the checkout
/// that last used it, so that past `max_prepared_statements` the one unused longest
/// is closed (as PgBouncer's `max_prepared_statements` does): clients that each
/// prepare statements of their own would otherwise fill the server's memory.
#[derive(Debug, Default)]
pub struct PreparedSet {
    used: foldhash::HashMap<u64, u64>,
    /// The connection's checkouts so far: the current one's number.
    checkout: u64,
}

impl PreparedSet {
    pub fn contains(&self, id: &u64) -> bool {
        self.used.contains_key(id)
    }

    /// Adds `id`, used by the current checkout.
    pub fn insert(&mut self, id: u64) {
        self.used.insert(id, self.checkout);
    }

    /// Marks `id` used by the current checkout, if the connection has it.
    pub fn touch(&mut self, id: u64) {
        if let Some(at) = self.used.get_mut(&id) {
            *at = self.checkout;
        }
    }

    pub fn remove(&mut self, id: &u64) -> bool {
        self.used.remove(id).is_some()
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// Every statement, removed.
    pub fn take_all(&mut self) -> Vec<u64> {
        self.used.drain().map(|(id, _)| id).collect()
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// A new checkout: what it uses is kept over what earlier ones used.
    pub fn new_checkout(&mut self) {
        self.checkout += 1;
    }

    /// With `max` or more statements (`max` > 0), the one unused longest that the
    /// current checkout has not used (its portals may still run), removed: to be
    /// closed on the server. `None` under the limit, or when the current checkout uses
    /// them all.
    pub fn evict(&mut self, max: usize) -> Option<u64> {
        if max == 0 || self.used.len() < max {
            return None;
        }
        let (&id, _) = self
            .used
            .iter()
            .filter(|(_, &at)| at < self.checkout)
            .min_by_key(|(&id, &at)| (at, id))?;
        self.used.remove(&id);
        Some(id)
    }
}

/// A statement's name on the servers, from its id.
pub fn server_name(id: u64) -> String {
    format!("pgopt_{id:016x}")
}

/// A statement's id on the servers: a hash of its text and parameter types, and, for
/// text beyond ASCII, of the client's `client_encoding` unless UTF8 (`salt`, see
/// `Settings::encoding_salt`): the same bytes are another text in another encoding
/// (0xE9 is é in LATIN1, И in KOI8R), and the server reads a statement's text once,
/// when it is prepared.
pub fn statement_id(parse: &Parse<'_>, salt: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    parse.query.hash(&mut hasher);
    if salt != 0 && !parse.query.is_ascii() {
        salt.hash(&mut hasher);
    }
    for oid in parse.param_types.iter() {
        oid.hash(&mut hasher);
    }
    hasher.finish()
}

/// One client's named statement, and the pool's plan epoch when the client last
/// learned its result shape (at Parse or Describe).
#[derive(Debug)]
pub struct ClientStatement {
    pub prepared: Arc<Prepared>,
    pub epoch: u64,
    /// Which of the client's Parses made it (names of one text share a server
    /// statement, but not what the client learned of its shape: see
    /// [`ClientStatements::refresh`]).
    pub serial: u64,
    /// A `DISCARD ALL` ran since it was prepared. PostgreSQL would have dropped it;
    /// pgopt keeps it usable (a client that did not notice goes on working) but, as
    /// PostgreSQL, lets a Parse take the name again.
    pub discarded: bool,
}

/// One client's named statements.
///
/// `by_name` is what the client will have once everything it sent has run: a Parse,
/// Close or `DEALLOCATE` changes it when sent, since the client's next messages may
/// use the names at once. The server may yet skip one (after an error, up to the
/// Sync) or refuse it (a failed transaction), and PostgreSQL's client would then
/// still have what it had: each change is kept in `pending` until it is settled
/// ([`ClientStatements::settle`]) and undone if it did not happen.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// foldhash: looked up on every Bind (SipHash cost ~150 instructions a lookup).
    by_name: foldhash::HashMap<String, ClientStatement>,
    /// Changes not settled yet, in the order sent.
    pending: VecDeque<Change>,
    next_change: u64,
    /// The client's unnamed statement: its Parse as sent, kept to prepare it again
    /// on another server connection (a client may Parse it in one batch and Bind it
    /// in the next, after a Sync); gone when PostgreSQL would drop it (a failed
    /// Parse of it, a simple query, a Close). Logged as the names are.
    unnamed: Option<Bytes>,
    /// The client's batches sent so far (each Sync or simple query ends one).
    batch: u64,
    /// The last [`ClientStatement::serial`] given.
    serial: u64,
}

/// How a change to a client's names turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Happened,
    /// The server skipped it (after an error, up to the Sync), refused it (a failed
    /// transaction), or it was never sent: undone.
    Undone,
    /// A Parse that failed: PostgreSQL drops the old unnamed statement first, so
    /// there is none (for a name, as `Undone`).
    Emptied,
}

/// One change to a client's names, and what each name it touched was before it.
#[derive(Debug)]
struct Change {
    id: u64,
    /// `DEALLOCATE ALL`: it touched every name, also those it found absent.
    all: bool,
    before: Vec<(String, Option<ClientStatement>)>,
    /// What the unnamed statement was before, when the change was to it.
    unnamed: Option<Option<Bytes>>,
    /// The batch it was sent in.
    batch: u64,
    /// A Parse of the unnamed statement sent when the server's may have been another
    /// client's (see [`ClientStatements::unnamed_may_be_foreign`]).
    over_foreign: bool,
    /// It happened; kept while an earlier one is unsettled, whose undoing must not
    /// undo this one's effect.
    done: bool,
}

impl ClientStatements {
    pub fn insert(&mut self, name: &str, prepared: Arc<Prepared>, epoch: u64) {
        self.serial += 1;
        self.by_name.insert(
            name.to_string(),
            ClientStatement {
                prepared,
                epoch,
                serial: self.serial,
                discarded: false,
            },
        );
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut ClientStatement> {
        self.by_name.get_mut(name)
    }

    /// Whether the client has a statement `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether PostgreSQL would refuse a Parse of `name` (42P05): the client has it,
    /// no `DISCARD ALL` dropped it since, and no change still unsettled from an
    /// earlier batch touched it (one the server may yet skip: pgopt can't tell, and
    /// lets the new Parse replace it, as it did before it checked). Within a batch,
    /// what the server skips, it skips to the end.
    pub fn taken(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|s| !s.discarded)
            && !self.pending.iter().any(|c| {
                !c.done
                    && c.batch < self.batch
                    && (c.all || c.before.iter().any(|(n, _)| n == name))
            })
    }

    /// Whether the server's unnamed statement may be another client's for a message of
    /// this batch: a Parse of it sent over another client's, in an earlier batch, is
    /// still unsettled (an error before it may have the server skip it), and this batch
    /// changed the unnamed statement no more (a change of its own is what its messages
    /// see, skipped or not).
    pub fn unnamed_may_be_foreign(&self) -> bool {
        let unnamed = |c: &&Change| c.unnamed.is_some();
        !self
            .pending
            .iter()
            .filter(unnamed)
            .any(|c| c.batch == self.batch)
            && self
                .pending
                .iter()
                .filter(unnamed)
                .any(|c| c.over_foreign && !c.done && c.batch < self.batch)
    }

    /// The client ended a batch (a Sync or a simple query).
    #[inline]
    pub fn end_batch(&mut self) {
        self.batch += 1;
    }

    /// A server's ErrorResponse (its body) that names one of the client's statements
    /// by its server name (`"pgopt_<16 hex digits>"`), as the whole frame with the
    /// client's name instead, as PostgreSQL would have named it; `None` when it names
    /// none. (When two of the client's names are one server statement, either.)
    pub fn error_in_client_names(&self, body: &[u8]) -> Option<Vec<u8>> {
        const MARK: &[u8] = b"\"pgopt_";
        const NAME_LEN: usize = MARK.len() - 1 + 16; // pgopt_ and the hex digits
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut at = 0;
        while let Some(found) = body[at..].windows(MARK.len()).position(|w| w == MARK) {
            let start = at + found + 1; // the name, after its quote
            at = start;
            let Some(server) = body.get(start..start + NAME_LEN) else {
                break;
            };
            if body.get(start + NAME_LEN) != Some(&b'"') {
                continue;
            }
            let Some(name) = self
                .by_name
                .iter()
                .find(|(_, s)| s.prepared.server_name.as_bytes() == server)
                .map(|(n, _)| n)
            else {
                continue;
            };
            let out = out.get_or_insert_with(|| {
                let mut frame = Vec::with_capacity(body.len() + 5);
                frame.extend_from_slice(&[b'E', 0, 0, 0, 0]);
                frame
            });
            out.extend_from_slice(&body[copied..start]);
            out.extend_from_slice(name.as_bytes());
            copied = start + NAME_LEN;
            at = copied;
        }
        let mut out = out?;
        out.extend_from_slice(&body[copied..]);
        let len = (out.len() - 1) as u32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Some(out)
    }

    /// A `DISCARD ALL` ran: every name may be prepared again (see
    /// [`ClientStatement::discarded`]).
    pub fn discard_all(&mut self) {
        for s in self.by_name.values_mut() {
            s.discarded = true;
        }
    }

    /// The Parse (the whole frame, under the server's name) of the client's statement
    /// `name`.
    pub fn parse_of(&self, name: &str) -> Option<&Bytes> {
        Some(&self.by_name.get(name)?.prepared.parse)
    }

    /// The SQL text of the client's statement `name`.
    pub fn query_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name)?.prepared.query()
    }

    /// Every statement of the client's: its name and its Parse (under the server's
    /// name).
    pub fn parses(&self) -> impl Iterator<Item = (&str, Parse<'_>)> {
        self.by_name.iter().filter_map(|(name, s)| {
            Some((
                name.as_str(),
                Parse::decode(s.prepared.parse.get(5..)?).ok()?,
            ))
        })
    }

    /// Every statement of the client's: its server statement's id and its text (see
    /// [`Prepared::text`]).
    pub fn texts(&self) -> impl Iterator<Item = (u64, std::borrow::Cow<'_, str>)> {
        self.by_name
            .values()
            .filter_map(|s| Some((s.prepared.id, s.prepared.text()?)))
    }

    /// The client's statement `name` now knows its current shape. (Only it: another
    /// name of the same text, prepared before a schema change, still expects the old
    /// shape, and gets PostgreSQL's "cached plan must not change result type".)
    pub fn refresh(&mut self, name: &str, epoch: u64) {
        if let Some(s) = self.by_name.get_mut(name) {
            s.epoch = epoch;
        }
    }

    /// [`ClientStatements::refresh`] of the statement of [`ClientStatement::serial`]
    /// `serial`, if the client still has it.
    pub fn refresh_serial(&mut self, serial: u64, epoch: u64) {
        if let Some(s) = self.by_name.values_mut().find(|s| s.serial == serial) {
            s.epoch = epoch;
        }
    }

    /// The [`ClientStatement::serial`] of statement `name` (0: none).
    pub fn serial(&self, name: &str) -> u64 {
        self.by_name.get(name).map_or(0, |s| s.serial)
    }

    /// The client moved to another pool (see `Relay::follow_reload`): what it learned
    /// of its statements' result shapes dates from before any invalidation there.
    pub fn rebase(&mut self) {
        for s in self.by_name.values_mut() {
            s.epoch = 0;
        }
    }

    /// The server statement of each of the client's named statements.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_name.values().map(|s| s.prepared.id)
    }

    /// The client's unnamed statement's Parse, if it has one.
    pub fn unnamed(&self) -> Option<&Bytes> {
        self.unnamed.as_ref()
    }

    /// What a Bind of the unnamed statement sent now may run, each a Parse message as
    /// the client sent it: the client's latest (what it has once everything it sent has
    /// run) and, while a change to it from an earlier batch is unsettled and this batch
    /// made none, each statement such a change replaced (the server may yet skip the
    /// change). Within a batch, what the server skips, it skips to the end: a Bind
    /// behind a change of its own batch runs that change's statement, or nothing.
    pub fn unnamed_candidates(&self) -> impl Iterator<Item = &Bytes> {
        let unsettled = |c: &&Change| c.unnamed.is_some() && !c.done;
        let pending = || self.pending.iter().filter(unsettled);
        let own = pending().any(|c| c.batch == self.batch);
        let replaced = pending()
            .filter(move |c| !own && c.batch < self.batch)
            .filter_map(|c| c.unnamed.as_ref()?.as_ref());
        self.unnamed.iter().chain(replaced)
    }

    /// The client's Parse (`frame`) of the unnamed statement. Its change id, to settle.
    /// (A client that parses the same text each time, as most do, is not copied again.)
    /// `over_foreign`: the server's unnamed statement may be another client's (see
    /// [`ClientStatements::unnamed_may_be_foreign`]).
    pub fn parse_unnamed(&mut self, frame: &[u8], over_foreign: bool) -> u64 {
        let frame = match &self.unnamed {
            Some(same) if same[..] == *frame => same.clone(),
            _ => Bytes::copy_from_slice(frame),
        };
        let before = self.unnamed.replace(frame);
        let id = self.log_unnamed(before);
        if let Some(change) = self.pending.back_mut() {
            change.over_foreign = over_foreign;
        }
        id
    }

    /// The client's Close of the unnamed statement, or a simple query, which drops
    /// it. Its change id, to settle.
    pub fn close_unnamed(&mut self) -> u64 {
        let before = self.unnamed.take();
        self.log_unnamed(before)
    }

    fn log_unnamed(&mut self, before: Option<Bytes>) -> u64 {
        let id = self.log(false, Vec::new());
        if let Some(change) = self.pending.back_mut() {
            change.unnamed = Some(before);
        }
        id
    }

    /// The client's Parse of statement `name` (not one of its names: PostgreSQL
    /// refuses that). Its change id, to settle.
    pub fn prepare(&mut self, name: &str, prepared: Arc<Prepared>, epoch: u64) -> u64 {
        self.serial += 1;
        let before = self.by_name.insert(
            name.to_string(),
            ClientStatement {
                prepared,
                epoch,
                serial: self.serial,
                discarded: false,
            },
        );
        self.log(false, vec![(name.to_string(), before)])
    }

    /// The client's Close of statement `name` (a name it does not have is no error).
    /// Its change id, to settle.
    pub fn close(&mut self, name: &str) -> u64 {
        let before = self.by_name.remove(name);
        self.log(false, vec![(name.to_string(), before)])
    }

    /// A `DEALLOCATE` of one of the client's statements (`None`: all of them),
    /// answered by the proxy. Its change id for [`Step::Deallocated`]; `None` when
    /// `name` is not one of the client's.
    pub fn deallocate(&mut self, name: Option<&str>) -> Option<u64> {
        Some(match name {
            None => {
                let removed = self.by_name.drain().map(|(n, s)| (n, Some(s))).collect();
                self.log(true, removed)
            }
            Some(name) => {
                let (name, statement) = self.by_name.remove_entry(name)?;
                self.log(false, vec![(name, Some(statement))])
            }
        })
    }

    fn log(&mut self, all: bool, before: Vec<(String, Option<ClientStatement>)>) -> u64 {
        let id = self.next_change;
        self.next_change += 1;
        self.pending.push_back(Change {
            id,
            all,
            before,
            unnamed: None,
            batch: self.batch,
            over_foreign: false,
            done: false,
        });
        id
    }

    /// Change `id` is settled (see [`Settled`]). A later change of the same name
    /// (or a later `DEALLOCATE ALL`) still decides what the name is now; undoing this
    /// one only changes what that one found.
    pub fn settle(&mut self, id: u64, settled: Settled) {
        // The usual case: the oldest change happened.
        if settled == Settled::Happened && self.pending.front().is_some_and(|c| c.id == id) {
            self.pending.pop_front();
            self.compact();
            return;
        }
        let Some(at) = self.pending.iter().position(|c| c.id == id && !c.done) else {
            return;
        };
        if settled == Settled::Happened {
            self.pending[at].done = true;
            self.compact();
            return;
        }
        let Some(change) = self.pending.remove(at) else {
            return;
        };
        if let Some(before) = change.unnamed {
            let before = if settled == Settled::Emptied {
                None
            } else {
                before
            };
            match self
                .pending
                .iter_mut()
                .skip(at)
                .find(|c| c.unnamed.is_some())
            {
                Some(later) => later.unnamed = Some(before),
                None => self.unnamed = before,
            }
        }
        for (name, before) in change.before {
            let later = self
                .pending
                .iter_mut()
                .skip(at)
                .find(|c| c.all || c.before.iter().any(|(n, _)| *n == name));
            match later {
                Some(later) => match later.before.iter_mut().find(|(n, _)| *n == name) {
                    Some(found) => found.1 = before,
                    // A DEALLOCATE ALL that found the name absent would have removed it.
                    None => later.before.push((name, before)),
                },
                None => match before {
                    Some(statement) => {
                        self.by_name.insert(name, statement);
                    }
                    None => {
                        self.by_name.remove(&name);
                    }
                },
            }
        }
        self.compact();
    }

    /// Changes that happened, with none unsettled before them, are forgotten.
    fn compact(&mut self) {
        while self.pending.front().is_some_and(|c| c.done) {
            self.pending.pop_front();
        }
    }
}

/// What a simple query `DEALLOCATE [PREPARE] name | ALL` names, if that is the whole
/// query: `Some(None)` for ALL, `Some(Some(name))` for one statement (unquoted names
/// fold to lower case, as PostgreSQL folds them).
pub fn deallocate_target(sql: &str) -> Option<Option<String>> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(None);
    }
    if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        if quoted.is_empty() || quoted.contains('"') {
            return None;
        }
        return Some(Some(quoted.to_string()));
    }
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
    plain.then(|| Some(name.to_ascii_lowercase()))
}

/// How a client's Parse of `DEALLOCATE name` (one of its own statements) or
/// `DEALLOCATE ALL` goes to the server in transaction mode, with what it deallocates
/// written after it: the server's statements are pgopt's, shared with other clients,
/// and its `DEALLOCATE` would not know the client's names (26000). The client's names
/// change when a portal of it is executed (see `Relay::execute_stand_in`). `DO`, as
/// `DEALLOCATE`, answers NoData to a Describe, takes the transaction's snapshot, and
/// fails in a failed transaction; its CommandComplete is renamed.
const DEALLOCATE_STAND_IN: &str = "DO 'BEGIN END' -- pgopt: DEALLOCATE ";

/// The stand-in's text for a `DEALLOCATE` of `target` (`None`: ALL). A name is
/// written in hex: nothing in it can end the comment.
pub fn deallocate_stand_in(target: Option<&str>) -> String {
    use std::fmt::Write;
    let mut text = String::from(DEALLOCATE_STAND_IN);
    match target {
        None => text.push_str("ALL"),
        Some(name) => {
            text.push_str("x'");
            for b in name.bytes() {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\'');
        }
    }
    text
}

/// What a stand-in's text (see [`deallocate_stand_in`]) deallocates: `Some(None)` all
/// the client's statements, `Some(Some(name))` one; `None` for any other text.
pub fn stand_in_target(query: &str) -> Option<Option<String>> {
    let rest = query.strip_prefix(DEALLOCATE_STAND_IN)?;
    if rest == "ALL" {
        return Some(None);
    }
    let hex = rest.strip_prefix("x'")?.strip_suffix('\'')?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().map(Some)
}

/// What a request sent to the server (or skipped) owes the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or FunctionCall: done at ReadyForQuery.
    Query,
}

/// One entry of the expected-response queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent to the server; its responses go to the client. `prepared` names the
    /// statement a Parse creates on the server, forgotten if it fails.
    Server {
        request: Request,
        prepared: Option<u64>,
    },
    /// The client's Parse of a named statement, sent as server statement `prepared`
    /// and forgotten if it fails (`None`: the unnamed statement, sent as it came, or a
    /// statement the server has, whose failure drops nothing), and the client's name
    /// change `change` settled.
    Parse { prepared: Option<u64>, change: u64 },
    /// The client's Close of its unnamed statement, with its name change.
    CloseUnnamed { change: u64 },
    /// Not sent: the client's name change `change` takes effect here in the order of
    /// things (a simple query's drop of the unnamed statement, before the query).
    Mark { change: u64 },
    /// A Parse the proxy injected: its ParseComplete is not the client's.
    Injected { prepared: u64 },
    /// The client's Parse of a statement the server has, sent under a name of pgopt's
    /// (see `Relay::probe_parse`): its answer is the client's, and settles `change`.
    ProbeParse { change: u64 },
    /// The Close of that name, right after it: its CloseComplete is not the client's.
    ProbeClose,
    /// The client's unnamed statement prepared again by the proxy on this server
    /// connection: its ParseComplete is not the client's.
    InjectedUnnamed,
    /// A Close the proxy injected: of the unnamed statement (`stale: None`), before
    /// preparing statement `stale` again (its plan a schema change invalidated), or of
    /// statement `stale` past `max_prepared_statements`. Its CloseComplete is not the
    /// client's (see [`Expected::take_closed`]); skipped, it leaves the old copy on the
    /// server (see [`Expected::take_still_stale`]).
    InjectedClose { stale: Option<u64>, mark: u64 },
    /// A Bind of a client's named statement, sent as server statement `statement`;
    /// its responses go to the client.
    Bind { statement: u64 },
    /// A client's Describe of a statement (server statement `statement`, or the
    /// unnamed one with that id; the client's by [`ClientStatement::serial`], 0 for
    /// the unnamed one): its responses go to the client, and what they say is kept
    /// (see `pool::Description`).
    DescribeStatement { statement: u64, serial: u64 },
    /// A Describe pgopt sent itself after preparing server statement `statement`,
    /// whose description it did not know: its responses are kept, not relayed.
    InjectedDescribe { statement: u64 },
    /// Not sent: the proxy answers with this message itself (ParseComplete `'1'` or
    /// CloseComplete `'3'`) and settles the client's name change `change`.
    Answer { tag: u8, change: u64 },
    /// A simple-query `DEALLOCATE name` (`all`: `DEALLOCATE ALL`) of the client's own
    /// statements, answered by the proxy: CommandComplete and ReadyForQuery, or 25P02
    /// and ReadyForQuery if the transaction has failed by the time it is answered.
    Deallocated { all: bool, id: u64 },
    /// The client's Execute of a portal of a `DEALLOCATE` stand-in (see
    /// [`deallocate_stand_in`]; `all`: of `DEALLOCATE ALL`): its CommandComplete is
    /// renamed (see [`Expected::take_renamed`]) and settles the name change `change`;
    /// an error, or the server skipping it, undoes it.
    Deallocate { all: bool, change: u64 },
    /// A query pgopt sent itself (settings for this client): every response to it,
    /// up to and including its ReadyForQuery, is dropped. `identity`: it sets the
    /// session authorization or role; `first`: it applies start-up values the client
    /// gave, the first time (see `Relay::identity_refused`).
    InjectedQuery { identity: bool, first: bool },
    /// A statement pgopt sent itself in the client's batch as Parse, Bind and Execute
    /// of the unnamed statement and portal, with no Sync (the client's start-up
    /// values applied again after a RESET in its batch): its ParseComplete,
    /// BindComplete and CommandComplete are dropped. Its error is relayed: the server
    /// then skips the client's requests up to its Sync, and the client hears why.
    InjectedStatement,
    /// Extended-protocol messages pgopt sent itself ending in a Sync (to end a
    /// client's unsynced batch before answering a simple query itself): every
    /// response up to and including the Sync's ReadyForQuery is dropped, errors too
    /// unless `relay_errors`. A server skipping after an error stops skipping at it.
    InjectedSync { relay_errors: bool },
    /// A statement pgopt sent itself, with no Sync, to fail a client's unsynced
    /// batch (see `Relay::fail_open_batch`): its responses, up to and including its
    /// ErrorResponse, are dropped. The server then skips to the client's Sync.
    InjectedFailure,
    /// An ErrorResponse from pgopt (the next of [`Expected`]'s queued errors).
    Error,
    /// A ReadyForQuery from pgopt, with the current transaction status.
    Ready,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Relay,
    /// Not for the client (the ParseComplete of an injected Parse).
    Drop,
}

/// Steps that owe a ReadyForQuery, by kind (see [`Expected::all_server_readies`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Readies {
    /// The client's Syncs and simple Queries sent.
    server: usize,
    /// Syncs pgopt sent to end a batch.
    injected_syncs: usize,
    /// pgopt's own queries.
    injected_queries: usize,
}

impl Readies {
    /// Counts `step` in (`by` 1) or out (-1).
    fn count(&mut self, step: &Step, by: isize) {
        let counter = match step {
            Step::Server {
                request: Request::Sync | Request::Query,
                ..
            } => &mut self.server,
            Step::InjectedSync { .. } => &mut self.injected_syncs,
            Step::InjectedQuery { .. } => &mut self.injected_queries,
            _ => return,
        };
        *counter = counter.wrapping_add_signed(by);
    }
}

/// Responses the client is owed, in order.
#[derive(Debug, Default)]
pub struct Expected {
    queue: VecDeque<Step>,
    /// What in `queue` owes a ReadyForQuery, by kind, kept as steps come and go: the
    /// relay asks for every message it routes, and a pipeline queues thousands.
    readies: Readies,
    /// The client's name changes settled since the last
    /// [`Expected::drain_settled`]: whether each happened (one the server skipped,
    /// after an error up to the Sync, or one that failed, did not).
    settled: Vec<(u64, Settled)>,
    /// A batch failed or was abandoned since the last
    /// [`Expected::take_unnamed_unsure`]: the server's unnamed statement may not be
    /// what the client's is.
    unnamed_unsure: bool,
    /// Encoded ErrorResponses for the [`Step::Error`]s in the queue, in order.
    errors: VecDeque<Bytes>,
    /// An error sent the server skipping to a Sync that is not queued yet (see
    /// [`Expected::take_server_awaits_sync`]).
    server_awaits_sync: bool,
    /// Statements whose injected Close the server skipped or refused since the last
    /// [`Expected::take_still_stale`]: the server still has their old copies.
    still_stale: Vec<u64>,
    /// Statements whose injected Close the server confirmed (see
    /// [`Expected::take_closed`]).
    closed: Vec<(u64, u64)>,
    /// The commit at a Sync pgopt sent to end a batch before its answer to a
    /// DEALLOCATE failed: as PostgreSQL's, that answer is the error and a
    /// ReadyForQuery, with no CommandComplete.
    commit_failed: bool,
    /// The CommandComplete just accounted for answers a [`Step::Deallocate`]: the
    /// client is told `DEALLOCATE ALL` (`true`) or `DEALLOCATE` instead.
    renamed: Option<bool>,
}

impl Expected {
    pub fn push(&mut self, step: Step) {
        self.readies.count(&step, 1);
        self.queue.push_back(step);
    }

    fn pop_front(&mut self) {
        if let Some(step) = self.queue.pop_front() {
            self.readies.count(&step, -1);
        }
    }

    fn remove_second(&mut self) {
        if let Some(step) = self.queue.remove(1) {
            self.readies.count(&step, -1);
        }
    }

    /// Whether an error just sent the server skipping messages up to a Sync the client
    /// has not sent yet: PostgreSQL discards everything until then, a simple Query
    /// too, so the connection is not the client's to give back before its Sync.
    pub fn take_server_awaits_sync(&mut self) -> bool {
        std::mem::take(&mut self.server_awaits_sync)
    }

    /// The ReadyForQuerys still to come that the relay observes as the client's:
    /// [`Expected::server_readies`] and those of Syncs pgopt sent to end a batch.
    pub fn observed_readies(&self) -> usize {
        self.check_readies();
        self.readies.server + self.readies.injected_syncs
    }

    /// (Debug builds: the counts kept match the queue's.)
    fn check_readies(&self) {
        if cfg!(debug_assertions) {
            let mut counted = Readies::default();
            for step in &self.queue {
                counted.count(step, 1);
            }
            assert_eq!(counted, self.readies, "{:?}", self.queue);
        }
    }

    /// Whether the next server message answers a query or Sync pgopt sent itself.
    pub fn head_is_pgopts(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Step::InjectedQuery { .. } | Step::InjectedSync { .. } | Step::InjectedStatement)
        )
    }

    /// Whether the next server message answers a query pgopt sent to set the client's
    /// session authorization or role (`Some(true)`), or to apply its start-up values
    /// the first time (`Some(false)`): a failure of either ends the session.
    pub fn head_is_identity(&self) -> Option<bool> {
        match self.queue.front() {
            Some(Step::InjectedQuery { identity: true, .. }) => Some(true),
            Some(Step::InjectedQuery { first: true, .. }) => Some(false),
            _ => None,
        }
    }

    /// Whether a query pgopt sent for the client's settings is still to be answered.
    pub fn owes_injected_query(&self) -> bool {
        self.readies.injected_queries > 0
    }

    /// Whether the next server message answers a query pgopt sent for the client's
    /// settings.
    pub fn head_is_injected_query(&self) -> bool {
        matches!(self.queue.front(), Some(Step::InjectedQuery { .. }))
    }

    /// Whether the next server message answers a Sync pgopt sent itself.
    pub fn head_is_injected_sync(&self) -> bool {
        matches!(self.queue.front(), Some(Step::InjectedSync { .. }))
    }

    /// Whether the next server message answers a failing statement pgopt sent itself.
    pub fn head_is_injected_failure(&self) -> bool {
        matches!(self.queue.front(), Some(Step::InjectedFailure))
    }

    /// Server ReadyForQuery messages still to come for what is queued (each Sync and
    /// simple Query sent), not counting those of injected queries.
    /// Every ReadyForQuery the server still owes, pgopt's own queries' included.
    pub fn all_server_readies(&self) -> usize {
        self.observed_readies() + self.readies.injected_queries
    }

    /// Whether the CommandComplete just accounted for is a DEALLOCATE's, and of ALL
    /// (see [`Step::Deallocate`]).
    #[inline]
    pub fn take_renamed(&mut self) -> Option<bool> {
        self.renamed.take()
    }

    /// COPY FROM STDIN began (CopyInResponse) for the Execute at the head: the Syncs
    /// the client sent right after it, before it knew, PostgreSQL ignores during COPY
    /// (as it does Flush), and answers none of them. They are dropped; how many.
    pub fn copy_in_began(&mut self) -> usize {
        if self.head_request() != Some(Request::Execute) {
            return 0;
        }
        let mut dropped = 0;
        while matches!(
            self.queue.get(1),
            Some(Step::Server {
                request: Request::Sync,
                ..
            })
        ) {
            self.remove_second();
            dropped += 1;
        }
        dropped
    }

    pub fn server_readies(&self) -> usize {
        self.check_readies();
        self.readies.server
    }

    /// The request the server answers next, if it is one the client sent.
    pub fn head_request(&self) -> Option<Request> {
        match self.queue.front() {
            Some(Step::Server { request, .. }) => Some(*request),
            Some(Step::Parse { .. } | Step::ProbeParse { .. }) => Some(Request::Parse),
            Some(Step::CloseUnnamed { .. }) => Some(Request::Close),
            Some(Step::Bind { .. }) => Some(Request::Bind),
            Some(Step::Deallocate { .. }) => Some(Request::Execute),
            Some(Step::DescribeStatement { .. }) => Some(Request::Describe),
            _ => None,
        }
    }

    /// The statement whose description the server sends next, if a client's
    /// Describe of a statement is what it answers next.
    pub fn head_describes(&self) -> Option<u64> {
        match self.queue.front() {
            Some(
                Step::DescribeStatement { statement, .. } | Step::InjectedDescribe { statement },
            ) => Some(*statement),
            _ => None,
        }
    }

    /// When the server answers a client's Describe of a statement next: the client's
    /// statement, by [`ClientStatement::serial`].
    pub fn head_client_describes(&self) -> Option<u64> {
        match self.queue.front() {
            Some(Step::DescribeStatement { serial, .. }) => Some(*serial),
            _ => None,
        }
    }

    /// Whether a Describe pgopt sent of statement `id` is still to be answered.
    pub fn owes_injected_describe(&self, id: u64) -> bool {
        self.queue
            .iter()
            .any(|s| matches!(s, Step::InjectedDescribe { statement } if *statement == id))
    }

    /// The server statement of the Bind at the head of the queue, if a Bind of a
    /// client's named statement is what the server answers next.
    pub fn head_bind(&self) -> Option<u64> {
        match self.queue.front() {
            Some(Step::Bind { statement }) => Some(*statement),
            _ => None,
        }
    }

    /// Whether everything owed is one extended-query batch: server requests up to a
    /// Sync, and nothing after it.
    pub fn lone_batch(&self) -> bool {
        let mut steps = self.queue.iter();
        for step in steps.by_ref() {
            match step {
                Step::Server {
                    request: Request::Sync,
                    ..
                } => return steps.next().is_none(),
                Step::Server {
                    request: Request::Query,
                    ..
                }
                | Step::Answer { .. }
                | Step::Mark { .. }
                | Step::Deallocated { .. }
                | Step::InjectedQuery { .. }
                | Step::InjectedSync { .. }
                | Step::InjectedFailure
                | Step::Error
                | Step::Ready => return false,
                _ => {}
            }
        }
        false
    }

    /// Whether anything was settled, or made the unnamed statement unsure, since the
    /// last [`Expected::drain_settled`] and [`Expected::take_unnamed_unsure`].
    #[inline]
    pub fn has_news(&self) -> bool {
        !self.settled.is_empty()
            || self.unnamed_unsure
            || !self.still_stale.is_empty()
            || !self.closed.is_empty()
    }

    /// Statements the server still has an old copy of (see `still_stale`), since the
    /// last call.
    #[inline]
    pub fn take_still_stale(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.still_stale)
    }

    /// Statements whose Close pgopt injected (a stale copy, or one closed past
    /// `max_prepared_statements`) the server confirmed: no old copy is left of them.
    /// Each with the stale mark it was sent as of (see `ServerConn::closed`).
    pub fn take_closed(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.closed)
    }

    /// The client's name changes settled since the last call.
    #[inline]
    pub fn drain_settled(&mut self) -> std::vec::Drain<'_, (u64, Settled)> {
        self.settled.drain(..)
    }

    /// Whether a batch failed or was abandoned since the last call (see
    /// `unnamed_unsure`).
    #[inline]
    pub fn take_unnamed_unsure(&mut self) -> bool {
        std::mem::take(&mut self.unnamed_unsure)
    }

    /// A batch to run again, whose head Bind the server refused: what the server
    /// skipped after it is accounted as [`Expected::skip_to_sync`] accounts it (the
    /// Parses pgopt sent forgotten, a stale statement's skipped Close leaving it
    /// stale), then everything owed is forgotten ([`Expected::abandon`]): the
    /// connection stays the client's, so its record must match the server.
    pub fn abandon_refused_batch(&mut self, mut forget: impl FnMut(u64)) {
        self.pop_front();
        self.skip_to_sync(&mut forget);
        self.server_awaits_sync = false;
        self.abandon();
    }

    /// Forgets everything owed (a server connection lost, or a batch to run again):
    /// the client's name changes still queued did not happen.
    pub fn abandon(&mut self) {
        self.unnamed_unsure = true;
        self.readies = Readies::default();
        for step in self.queue.drain(..) {
            match step {
                Step::Parse { change, .. }
                | Step::ProbeParse { change }
                | Step::Answer { change, .. }
                | Step::CloseUnnamed { change }
                | Step::Mark { change }
                | Step::Deallocate { change, .. }
                | Step::Deallocated { id: change, .. } => {
                    self.settled.push((change, Settled::Undone))
                }
                _ => {}
            }
        }
        self.errors.clear();
        self.commit_failed = false;
    }

    /// Queues messages pgopt sends in the place of a server's answer to a request
    /// (dropped, as the server's would be, if an error before it has the server skip
    /// to the Sync).
    pub fn push_reply(&mut self, reply: Bytes) {
        self.push_error(reply);
    }

    /// Queues an ErrorResponse pgopt sends in the place of a server's.
    pub fn push_error(&mut self, error: Bytes) {
        self.errors.push_back(error);
        self.push(Step::Error);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the head of the queue is an answer the proxy owes (the cheap test
    /// before [`Expected::answer_ready`], which runs after every server message).
    #[inline]
    pub fn owes_answer(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(
                Step::Answer { .. }
                    | Step::Mark { .. }
                    | Step::Deallocated { .. }
                    | Step::Error
                    | Step::Ready
            )
        )
    }

    /// Answers the proxy owes at the head of the queue, now that everything before them
    /// is done: appended to `out`. `settled` is told, in order, whether each name
    /// change answered took effect.
    pub fn answer_ready(
        &mut self,
        out: &mut BytesMut,
        status: TransactionStatus,
        mut settled: impl FnMut(u64, Settled),
    ) {
        loop {
            match self.queue.front().copied() {
                Some(Step::Answer { tag, change }) => {
                    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
                    settled(change, Settled::Happened);
                }
                Some(Step::Mark { change }) => settled(change, Settled::Happened),
                Some(Step::Deallocated { all, id }) => {
                    let applied = status != TransactionStatus::Failed;
                    let commit_failed = std::mem::take(&mut self.commit_failed);
                    if applied && !commit_failed {
                        let tag = if all { "DEALLOCATE ALL" } else { "DEALLOCATE" };
                        // Short fixed tags: encoding cannot fail.
                        let _ = CommandComplete { tag }.encode(out);
                    } else if !applied {
                        let _ = ErrorBuilder::new(
                            Severity::Error,
                            sqlstate::IN_FAILED_SQL_TRANSACTION,
                            IN_FAILED_TRANSACTION,
                        )
                        .encode_error(out);
                    }
                    let how = if applied {
                        Settled::Happened
                    } else {
                        Settled::Undone
                    };
                    settled(id, how);
                    ReadyForQuery { status }.encode(out);
                }
                Some(Step::Error) => {
                    if let Some(e) = self.errors.pop_front() {
                        out.extend_from_slice(&e);
                    }
                }
                Some(Step::Ready) => ReadyForQuery { status }.encode(out),
                _ => return,
            }
            self.pop_front();
        }
    }

    /// Accounts for one server message with type `tag`. `forget` is called for
    /// statements the server turned out not to have prepared.
    pub fn on_server_message(&mut self, tag: u8, mut forget: impl FnMut(u64)) -> Verdict {
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            // But a notice a query of pgopt's applying the client's settings drew (a
            // RESET of a transaction setting outside a block warns) is pgopt's.
            if tag == b'N'
                && matches!(
                    self.queue.front(),
                    Some(Step::InjectedQuery { .. } | Step::InjectedStatement)
                )
            {
                return Verdict::Drop;
            }
            return Verdict::Relay;
        }
        let Some(&head) = self.queue.front() else {
            return Verdict::Relay;
        };
        match head {
            Step::Injected { prepared } => self.injected(tag, b'1', Some(prepared), &mut forget),
            Step::InjectedUnnamed => self.injected(tag, b'1', None, &mut forget),
            // (A stale statement's Close refused: its old copy stays; the Parse after
            // it, skipped, forgets it as well.)
            Step::InjectedClose { stale, mark } => {
                match tag {
                    b'E' => self.still_stale.extend(stale),
                    b'3' => self.closed.extend(stale.map(|id| (id, mark))),
                    _ => {}
                }
                self.injected(tag, b'3', stale, &mut forget)
            }
            Step::DescribeStatement { .. } => {
                if tag == b'E' {
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                } else if completes(Request::Describe, tag) {
                    self.pop_front();
                }
                Verdict::Relay
            }
            Step::ProbeParse { change } => self.settles(tag, b'1', change, &mut forget),
            Step::ProbeClose => {
                if tag == b'3' {
                    self.pop_front();
                    return Verdict::Drop;
                }
                if tag == b'E' {
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                }
                Verdict::Relay
            }
            Step::InjectedDescribe { .. } => match tag {
                b'E' => {
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                    Verdict::Relay
                }
                b'T' | b'n' => {
                    self.pop_front();
                    Verdict::Drop
                }
                _ => Verdict::Drop,
            },
            Step::Bind { .. } => {
                if tag == b'E' {
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                } else if tag == b'2' {
                    self.pop_front();
                }
                Verdict::Relay
            }
            Step::Parse { prepared, change } => {
                match tag {
                    b'1' => {
                        self.pop_front();
                        self.settled.push((change, Settled::Happened));
                    }
                    b'E' => {
                        let settled = match prepared {
                            Some(id) => {
                                forget(id);
                                Settled::Undone
                            }
                            None => Settled::Emptied,
                        };
                        self.settled.push((change, settled));
                        self.pop_front();
                        self.skip_to_sync(&mut forget);
                    }
                    _ => {}
                }
                Verdict::Relay
            }
            Step::CloseUnnamed { change } => self.settles(tag, b'3', change, &mut forget),
            Step::Deallocate { all, change } => match tag {
                b'C' => {
                    self.renamed = Some(all);
                    self.settles(tag, b'C', change, &mut forget)
                }
                // (No stand-in's answer: the portal was another, a cursor.)
                b'I' | b's' => {
                    self.pop_front();
                    self.settled.push((change, Settled::Undone));
                    Verdict::Relay
                }
                _ => self.settles(tag, b'C', change, &mut forget),
            },
            Step::Server { request, prepared } => {
                if tag == b'E' && !matches!(request, Request::Query | Request::Sync) {
                    if let Some(id) = prepared {
                        forget(id);
                    }
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                } else if completes(request, tag) {
                    self.pop_front();
                }
                Verdict::Relay
            }
            // Answers are written as soon as they reach the head; a server message
            // arriving here belongs to nothing we track.
            Step::InjectedSync { relay_errors: true } if tag == b'E' => {
                self.commit_failed = true;
                Verdict::Relay
            }
            Step::InjectedFailure => {
                if tag == b'E' {
                    self.pop_front();
                }
                Verdict::Drop
            }
            Step::InjectedStatement => match tag {
                b'C' => {
                    self.pop_front();
                    Verdict::Drop
                }
                b'E' => {
                    // (The unnamed statement is the failed Parse's, or none.)
                    self.unnamed_unsure = true;
                    self.pop_front();
                    self.skip_to_sync(&mut forget);
                    Verdict::Relay
                }
                _ => Verdict::Drop,
            },
            Step::InjectedQuery { .. } | Step::InjectedSync { .. } => {
                if tag == b'Z' {
                    self.pop_front();
                }
                Verdict::Drop
            }
            Step::Answer { .. }
            | Step::Mark { .. }
            | Step::Deallocated { .. }
            | Step::Error
            | Step::Ready => Verdict::Relay,
        }
    }

    /// A client's request whose answer (`done`, or an error) settles its name change
    /// `change`; the answer is the client's.
    fn settles(&mut self, tag: u8, done: u8, change: u64, forget: &mut impl FnMut(u64)) -> Verdict {
        if tag == done {
            self.pop_front();
            self.settled.push((change, Settled::Happened));
        } else if tag == b'E' {
            self.settled.push((change, Settled::Undone));
            self.pop_front();
            self.skip_to_sync(forget);
        }
        Verdict::Relay
    }

    /// A Parse or Close pgopt sent itself: its completion (`done`) is not the
    /// client's; its error is (the server then skips to the Sync), and the statement
    /// it prepared, if any, is forgotten.
    fn injected(
        &mut self,
        tag: u8,
        done: u8,
        prepared: Option<u64>,
        forget: &mut impl FnMut(u64),
    ) -> Verdict {
        if tag == done {
            self.pop_front();
            return Verdict::Drop;
        }
        if tag == b'E' {
            match prepared {
                Some(id) => forget(id),
                // The client's unnamed statement prepared again, or the Close before
                // it: what the server's unnamed statement is now, pgopt can't tell.
                None => self.unnamed_unsure = true,
            }
            self.pop_front();
            self.skip_to_sync(forget);
        }
        Verdict::Relay
    }

    /// After an error in the extended protocol the server ignores everything up to the
    /// next Sync: those requests get no response, and Parses among them prepared nothing.
    /// (A Close of the unnamed statement skipped is undone in the client's names, as on
    /// the server. An unnamed Parse skipped — the client's, or one pgopt sent to
    /// prepare it again — leaves the server's unsure: it may hold another client's.)
    fn skip_to_sync(&mut self, forget: &mut impl FnMut(u64)) {
        self.server_awaits_sync = true;
        while let Some(&step) = self.queue.front() {
            match step {
                Step::Server {
                    request: Request::Sync,
                    ..
                }
                | Step::InjectedSync { .. } => {
                    self.server_awaits_sync = false;
                    break;
                }
                Step::Ready => break,
                Step::Server {
                    prepared: Some(id), ..
                }
                | Step::Injected { prepared: id } => forget(id),
                Step::Parse { prepared, change } => {
                    match prepared {
                        Some(id) => forget(id),
                        // The unnamed statement (or a named one the server has, for
                        // which this is needlessly careful).
                        None => self.unnamed_unsure = true,
                    }
                    self.settled.push((change, Settled::Undone));
                }
                Step::Answer { change, .. }
                | Step::CloseUnnamed { change }
                | Step::Mark { change }
                | Step::Deallocate { change, .. }
                | Step::ProbeParse { change } => self.settled.push((change, Settled::Undone)),
                // The server skipped the refused message's place too.
                Step::Error => {
                    self.errors.pop_front();
                }
                Step::Deallocated { id, .. } => self.settled.push((id, Settled::Undone)),
                Step::InjectedUnnamed | Step::InjectedClose { stale: None, .. } => {
                    self.unnamed_unsure = true
                }
                Step::InjectedClose {
                    stale: Some(id), ..
                } => self.still_stale.push(id),
                _ => {}
            }
            self.pop_front();
        }
    }
}

/// Whether server message `tag` is the last response to `request`.
fn completes(request: Request, tag: u8) -> bool {
    match request {
        Request::Parse => tag == b'1',
        Request::Bind => tag == b'2',
        // ParameterDescription ('t') comes first for a statement.
        Request::Describe => matches!(tag, b'T' | b'n'),
        Request::Execute => matches!(tag, b'C' | b'I' | b's'),
        Request::Close => tag == b'3',
        Request::Sync | Request::Query => tag == b'Z',
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn past_the_limit_the_statement_unused_longest_goes_but_never_one_this_checkout_used() {
        let mut set = super::PreparedSet::default();
        set.new_checkout();
        set.insert(1);
        set.insert(2);
        set.new_checkout();
        set.insert(3);
        set.touch(1);
        // Under the limit, or no limit: nothing goes.
        assert_eq!(set.evict(4), None);
        assert_eq!(set.evict(0), None);
        // 2 was last used a checkout before 1 and 3; those two this checkout used.
        assert_eq!(set.evict(3), Some(2));
        assert!(!set.contains(&2));
        assert_eq!(set.evict(2), None, "the rest are this checkout's");
        set.new_checkout();
        set.touch(3);
        assert_eq!(set.evict(2), Some(1));
        assert_eq!(set.len(), 1);
    }
    use super::*;

    fn run(expected: &mut Expected, tags: &[u8]) -> (Vec<Verdict>, Vec<u64>) {
        let mut forgotten = Vec::new();
        let verdicts = tags
            .iter()
            .map(|&t| expected.on_server_message(t, |id| forgotten.push(id)))
            .collect();
        (verdicts, forgotten)
    }

    #[test]
    fn only_a_parse_over_another_clients_unnamed_statement_still_in_flight_is_a_risk() {
        let mut names = ClientStatements::default();
        let first = names.parse_unnamed(b"P-first", true);
        assert!(
            !names.unnamed_may_be_foreign(),
            "the same batch sees its Parse"
        );
        names.end_batch();
        assert!(names.unnamed_may_be_foreign(), "it may yet be skipped");
        let second = names.parse_unnamed(b"P-second", false);
        assert!(!names.unnamed_may_be_foreign(), "this batch's own Parse");
        names.end_batch();
        assert!(
            names.unnamed_may_be_foreign(),
            "the first is still in flight"
        );
        names.settle(first, Settled::Happened);
        assert!(!names.unnamed_may_be_foreign(), "the first happened");
        names.settle(second, Settled::Happened);
        let third = names.parse_unnamed(b"P-third", false);
        names.end_batch();
        assert!(
            !names.unnamed_may_be_foreign(),
            "over the client's own: as PostgreSQL"
        );
        names.settle(third, Settled::Undone);
    }

    #[test]
    fn transaction_exit_statements_are_postgresqls() {
        for sql in [
            "COMMIT",
            " rollback to savepoint s",
            "END",
            "abort",
            "PREPARE TRANSACTION 'x'",
            "",
        ] {
            assert!(surely_ends_transaction(sql), "{sql}");
        }
        for sql in [
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "SELECT 1",
            "PREPARE p AS SELECT 1",
        ] {
            assert!(!ends_transaction(sql), "{sql}");
        }
        assert!(ends_transaction("/* hint */ SELECT 1"));
        assert!(!surely_ends_transaction("-- note\nCOMMIT"));
    }

    #[test]
    fn a_batch_run_again_forgets_what_the_server_skipped_after_its_refused_bind() {
        let mut e = Expected::default();
        e.push(Step::Bind { statement: 1 });
        e.push(Step::Server {
            request: Request::Execute,
            prepared: None,
        });
        e.push(Step::InjectedClose {
            stale: Some(2),
            mark: 0,
        });
        e.push(Step::Injected { prepared: 2 });
        e.push(Step::Bind { statement: 2 });
        e.push(Step::Injected { prepared: 3 });
        e.push(Step::Bind { statement: 3 });
        e.push(Step::Server {
            request: Request::Sync,
            prepared: None,
        });
        let mut forgotten = Vec::new();
        e.abandon_refused_batch(|id| forgotten.push(id));
        assert_eq!(forgotten, [2, 3], "the Parses the server skipped");
        assert_eq!(e.take_still_stale(), [2], "its old copy is still there");
        assert!(e.is_empty());
        assert!(!e.take_server_awaits_sync());
    }

    #[test]
    fn injected_parse_complete_is_dropped_and_the_rest_relayed() {
        let mut e = Expected::default();
        e.push(Step::Injected { prepared: 7 });
        e.push(Step::Server {
            request: Request::Bind,
            prepared: None,
        });
        e.push(Step::Server {
            request: Request::Execute,
            prepared: None,
        });
        e.push(Step::Server {
            request: Request::Sync,
            prepared: None,
        });
        let (v, forgotten) = run(&mut e, b"12DDCZ");
        assert_eq!(v[0], Verdict::Drop);
        assert!(v[1..].iter().all(|v| *v == Verdict::Relay));
        assert!(forgotten.is_empty());
        assert!(e.is_empty());
    }

    #[test]
    fn answers_wait_for_what_comes_before_them() {
        let mut e = Expected::default();
        let mut out = BytesMut::new();
        e.push(Step::Server {
            request: Request::Bind,
            prepared: None,
        });
        e.push(Step::Answer {
            tag: b'3',
            change: 0,
        });
        e.push(Step::Server {
            request: Request::Sync,
            prepared: None,
        });
        e.answer_ready(&mut out, TransactionStatus::Idle, |_, _| {});
        assert!(out.is_empty(), "the Bind is still owed");
        run(&mut e, b"2");
        e.answer_ready(&mut out, TransactionStatus::Idle, |_, _| {});
        assert_eq!(&out[..], b"3\0\0\0\x04");
        run(&mut e, b"Z");
        assert!(e.is_empty());
    }

    #[test]
    fn a_deallocate_answered_in_a_failed_transaction_is_refused_and_undone() {
        let mut names = ClientStatements::default();
        names.insert("a", prepared(1), 0);
        names.insert("b", prepared(2), 0);
        let mut e = Expected::default();
        // `SELECT 1/0` is still owed when `DEALLOCATE ALL` and `DEALLOCATE a` arrive.
        e.push(Step::Server {
            request: Request::Query,
            prepared: None,
        });
        let id = names.deallocate(None).unwrap();
        e.push(Step::Deallocated { all: true, id });
        assert!(names.deallocate(Some("a")).is_none(), "already gone");
        assert!(names.query_of("b").is_none());
        names.prepare("b", prepared(3), 0); // prepared again in the meantime
        let mut out = BytesMut::new();
        e.answer_ready(&mut out, TransactionStatus::Failed, |id, ok| {
            names.settle(id, ok)
        });
        assert!(out.is_empty(), "the query is still owed");
        run(&mut e, b"EZ");
        e.answer_ready(&mut out, TransactionStatus::Failed, |id, ok| {
            names.settle(id, ok)
        });
        assert_eq!(out[0], b'E', "25P02, not DEALLOCATE ALL");
        assert_eq!(&out[out.len() - 6..], b"Z\0\0\0\x05E");
        assert!(names.get_mut("a").is_some(), "a is back");
        assert_eq!(
            names.get_mut("b").unwrap().prepared.id,
            3,
            "the newer b stays"
        );

        // In a live transaction it takes effect.
        let id = names.deallocate(Some("a")).unwrap();
        e.push(Step::Deallocated { all: false, id });
        let mut out = BytesMut::new();
        e.answer_ready(&mut out, TransactionStatus::InTransaction, |id, ok| {
            names.settle(id, ok)
        });
        assert_eq!(out[0], b'C');
        assert!(names.get_mut("a").is_none());
        assert!(e.is_empty());

        // One the server skipped (never answered) comes back.
        let skipped = names.deallocate(Some("b")).unwrap();
        names.insert("c", prepared(4), 0);
        let answered = names.deallocate(Some("c")).unwrap();
        names.settle(answered, Settled::Happened);
        names.settle(skipped, Settled::Undone);
        assert!(names.get_mut("b").is_some(), "b is back");
        assert!(names.get_mut("c").is_none());
    }

    fn prepared(id: u64) -> Arc<Prepared> {
        Arc::new(Prepared {
            id,
            server_name: format!("pgopt_{id}"),
            parse: Bytes::new(),
            encoding: None,
            sequences: Default::default(),
        })
    }

    fn ids(names: &ClientStatements) -> Vec<(String, u64)> {
        let mut ids: Vec<(String, u64)> = names
            .by_name
            .iter()
            .map(|(n, s)| (n.clone(), s.prepared.id))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn name_changes_that_did_not_happen_are_undone_under_later_ones() {
        let named = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(n, i)| (n.to_string(), *i)).collect()
        };
        // A Parse skipped after an error: the name was never the client's.
        let mut names = ClientStatements::default();
        let parse = names.prepare("a", prepared(1), 0);
        names.settle(parse, Settled::Undone);
        assert_eq!(ids(&names), named(&[]));
        assert!(names.pending.is_empty());

        // A Close skipped: the statement is still there.
        names.insert("a", prepared(1), 0);
        let close = names.close("a");
        assert_eq!(ids(&names), named(&[]));
        names.settle(close, Settled::Undone);
        assert_eq!(ids(&names), named(&[("a", 1)]));

        // Close a (skipped), then Parse a again (happened): the new a stays, and the
        // old one comes back if that Parse is undone after all.
        let close = names.close("a");
        let parse = names.prepare("a", prepared(2), 0);
        names.settle(close, Settled::Undone);
        assert_eq!(ids(&names), named(&[("a", 2)]));
        names.settle(parse, Settled::Undone);
        assert_eq!(ids(&names), named(&[("a", 1)]));

        // A Parse of b undone under a later DEALLOCATE ALL that happened: gone
        // either way; a DEALLOCATE ALL undone under a later Parse of a: the other
        // names come back, the new a stays.
        let parse = names.prepare("b", prepared(3), 0);
        let all = names.deallocate(None).unwrap();
        names.settle(parse, Settled::Undone);
        names.settle(all, Settled::Happened);
        assert_eq!(ids(&names), named(&[]));
        names.insert("a", prepared(1), 0);
        names.insert("c", prepared(4), 0);
        let all = names.deallocate(None).unwrap();
        let parse = names.prepare("a", prepared(5), 0);
        names.settle(all, Settled::Undone);
        assert_eq!(ids(&names), named(&[("a", 5), ("c", 4)]));
        names.settle(parse, Settled::Happened);
        assert_eq!(ids(&names), named(&[("a", 5), ("c", 4)]));
        // A skipped Close of a name DEALLOCATE ALL later found absent: ALL removes it.
        let close = names.close("c");
        let all = names.deallocate(None).unwrap();
        names.settle(close, Settled::Undone);
        assert_eq!(ids(&names), named(&[]));
        names.settle(all, Settled::Undone);
        assert_eq!(ids(&names), named(&[("a", 5), ("c", 4)]));
        assert!(names.pending.is_empty());
    }

    #[test]
    fn undoing_an_earlier_change_keeps_a_later_one_that_happened() {
        // Batch 1 closes a but an error skips it; batch 2, pipelined, closes a and
        // is answered first (pgopt's own CloseComplete): a stays closed.
        let mut names = ClientStatements::default();
        names.insert("a", prepared(1), 0);
        let skipped = names.close("a");
        names.end_batch();
        let closed = names.close("a");
        names.settle(closed, Settled::Happened);
        names.settle(skipped, Settled::Undone);
        assert_eq!(ids(&names), vec![]);
        assert!(names.pending.is_empty(), "settled changes are forgotten");
    }

    #[test]
    fn errors_name_the_clients_statements() {
        let mut names = ClientStatements::default();
        let prepared = Arc::new(Prepared {
            id: 1,
            server_name: "pgopt_00000000000000aa".into(),
            parse: Bytes::new(),
            encoding: None,
            sequences: Default::default(),
        });
        names.insert("s1", prepared, 0);
        let body = b"SERROR\0C08P01\0Mbind message supplies 2 parameters, but prepared statement \"pgopt_00000000000000aa\" requires 1\0\0";
        let frame = names.error_in_client_names(body).unwrap();
        let want = b"SERROR\0C08P01\0Mbind message supplies 2 parameters, but prepared statement \"s1\" requires 1\0\0";
        assert_eq!(&frame[5..], want);
        assert_eq!(frame[0], b'E');
        assert_eq!(
            u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
            frame.len() - 1
        );
        // Another statement's server name, or none: left as it is.
        assert!(names
            .error_in_client_names(b"SERROR\0Mprepared statement \"pgopt_00000000000000bb\"\0\0")
            .is_none());
        assert!(names
            .error_in_client_names(b"SERROR\0Mdivision by zero\0\0")
            .is_none());
    }

    #[test]
    fn abandoning_or_skipping_settles_the_name_changes_queued() {
        let mut e = Expected::default();
        e.push(Step::Server {
            request: Request::Bind,
            prepared: None,
        });
        e.push(Step::Parse {
            prepared: Some(1),
            change: 10,
        });
        e.push(Step::Answer {
            tag: b'3',
            change: 11,
        });
        e.push(Step::Server {
            request: Request::Sync,
            prepared: None,
        });
        e.push(Step::Parse {
            prepared: Some(2),
            change: 12,
        });
        let (_, forgotten) = run(&mut e, b"EZ");
        assert_eq!(forgotten, vec![1]);
        assert_eq!(
            e.drain_settled().collect::<Vec<_>>(),
            vec![(10, Settled::Undone), (11, Settled::Undone)]
        );
        run(&mut e, b"1");
        assert_eq!(
            e.drain_settled().collect::<Vec<_>>(),
            vec![(12, Settled::Happened)]
        );
        e.push(Step::Parse {
            prepared: Some(3),
            change: 13,
        });
        e.push(Step::Deallocated { all: true, id: 14 });
        e.abandon();
        assert_eq!(
            e.drain_settled().collect::<Vec<_>>(),
            vec![(13, Settled::Undone), (14, Settled::Undone)]
        );
    }

    #[test]
    fn an_error_skips_to_sync_and_forgets_parses_that_did_not_happen() {
        let mut e = Expected::default();
        e.push(Step::Server {
            request: Request::Parse,
            prepared: Some(1),
        });
        e.push(Step::Injected { prepared: 2 });
        e.push(Step::Server {
            request: Request::Bind,
            prepared: None,
        });
        e.push(Step::Answer {
            tag: b'1',
            change: 0,
        });
        e.push(Step::Server {
            request: Request::Sync,
            prepared: None,
        });
        let (v, mut forgotten) = run(&mut e, b"EZ");
        assert_eq!(v, vec![Verdict::Relay, Verdict::Relay]);
        forgotten.sort();
        assert_eq!(forgotten, vec![1, 2]);
        assert!(e.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_end_at_ready_for_query() {
        let mut e = Expected::default();
        e.push(Step::Server {
            request: Request::Query,
            prepared: None,
        });
        e.push(Step::Server {
            request: Request::Query,
            prepared: None,
        });
        run(&mut e, b"TDCEZ");
        assert!(!e.is_empty());
        run(&mut e, b"CZ");
        assert!(e.is_empty());
    }

    #[test]
    fn stand_ins_say_what_they_deallocate() {
        for target in [None, Some("s1"), Some("S 1*/\n--x'"), Some("")] {
            let text = deallocate_stand_in(target);
            assert_eq!(stand_in_target(&text), Some(target.map(str::to_string)));
            // Nothing of the name is SQL: it is hex, within the comment's line.
            let written = &text[DEALLOCATE_STAND_IN.len()..];
            assert!(written
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'\''));
        }
        assert_eq!(stand_in_target("DO 'BEGIN END'"), None);
        assert_eq!(stand_in_target(&format!("{DEALLOCATE_STAND_IN}x'7'")), None);
        assert_eq!(
            stand_in_target(&format!("{DEALLOCATE_STAND_IN}x'ff'")),
            None
        );
    }

    #[test]
    fn deallocate_targets() {
        assert_eq!(
            deallocate_target("DEALLOCATE _pg3_0"),
            Some(Some("_pg3_0".into()))
        );
        assert_eq!(
            deallocate_target(" deallocate prepare S1 ; "),
            Some(Some("s1".into()))
        );
        assert_eq!(
            deallocate_target("DEALLOCATE \"S1\""),
            Some(Some("S1".into()))
        );
        // Quoted names with spaces are left to the server.
        assert_eq!(deallocate_target("DEALLOCATE \"S 1\""), None);
        assert_eq!(deallocate_target("DEALLOCATE ALL"), Some(None));
        assert_eq!(deallocate_target("deallocate prepare all;"), Some(None));
        assert_eq!(deallocate_target("DEALLOCATE a; SELECT 1"), None);
        assert_eq!(deallocate_target("DEALLOCATE"), None);
        assert_eq!(deallocate_target("SELECT 1"), None);
    }

    #[test]
    fn same_text_and_types_share_a_server_name() {
        let types = [23u32];
        let a = Parse {
            name: "s1",
            query: "SELECT $1",
            param_types: (&types).into(),
        };
        let b = Parse {
            name: "other",
            query: "SELECT $1",
            param_types: (&types).into(),
        };
        let c = Parse {
            name: "s1",
            query: "SELECT $1",
            param_types: (&[25u32]).into(),
        };
        let (pa, pb, pc) = (
            Prepared::from_parse(&a, 0).unwrap(),
            Prepared::from_parse(&b, 0).unwrap(),
            Prepared::from_parse(&c, 0).unwrap(),
        );
        assert_eq!(pa.server_name, pb.server_name);
        assert_ne!(pa.server_name, pc.server_name);
    }
}
