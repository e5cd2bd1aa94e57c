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

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Prepared {
    pub id: u64,
    pub server_name: String,
    /// The Parse message under `server_name`, ready to send.
    pub parse: Bytes,
}

impl Prepared {
    /// The statement's SQL text.
    pub fn query(&self) -> Option<&str> {
        Parse::decode(self.parse.get(5..)?).ok().map(|p| p.query)
    }

    pub fn from_parse(parse: &Parse<'_>) -> Result<Prepared, EncodeError> {
        let mut hasher = DefaultHasher::new();
        parse.query.hash(&mut hasher);
        for oid in parse.param_types.iter() {
            oid.hash(&mut hasher);
        }
        let id = hasher.finish();
        let server_name = format!("pgopt_{id:016x}");
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
            parse: buf.freeze(),
        })
    }
}

/// One client's named statement, and the pool's plan epoch when the client last
/// learned its result shape (at Parse or Describe).
#[derive(Debug)]
pub struct ClientStatement {
    pub prepared: Arc<Prepared>,
    pub epoch: u64,
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// foldhash: looked up on every Bind (SipHash cost ~150 instructions a lookup).
    by_name: foldhash::HashMap<String, ClientStatement>,
    /// What each `DEALLOCATE` answered by the proxy and not yet settled removed, in
    /// order: put back if the transaction turns out to have failed before it.
    deallocated: VecDeque<(u64, Vec<(String, ClientStatement)>)>,
    next_deallocation: u64,
    /// The last `DEALLOCATE ALL`: names removed before it never come back.
    last_all: Option<u64>,
}

impl ClientStatements {
    pub fn insert(&mut self, name: &str, prepared: Arc<Prepared>, epoch: u64) {
        self.by_name
            .insert(name.to_string(), ClientStatement { prepared, epoch });
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut ClientStatement> {
        self.by_name.get_mut(name)
    }

    /// Whether the client has a statement `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
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

    /// The client's statements on server statement `id` now know its current shape.
    pub fn refresh(&mut self, id: u64, epoch: u64) {
        for s in self.by_name.values_mut() {
            if s.prepared.id == id {
                s.epoch = epoch;
            }
        }
    }

    /// Whether the client had a statement of that name.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// A `DEALLOCATE` of one of the client's statements (`None`: all of them),
    /// answered by the proxy: the names are gone at once (later messages must not
    /// find them) but can still come back, see [`ClientStatements::settle`].
    /// Its id for [`Step::Deallocated`]; `None` when `name` is not one of the
    /// client's.
    pub fn deallocate(&mut self, name: Option<&str>) -> Option<u64> {
        let id = self.next_deallocation;
        let removed = match name {
            None => {
                self.last_all = Some(id);
                self.by_name.drain().collect()
            }
            Some(name) => vec![self.by_name.remove_entry(name)?],
        };
        self.next_deallocation += 1;
        self.deallocated.push_back((id, removed));
        Some(id)
    }

    /// `DEALLOCATE` `id` was answered: `applied` is false when the transaction had
    /// failed by then (PostgreSQL refuses it with 25P02), and its names come back
    /// unless the client has prepared them again since. Older ones never answered
    /// (the server skipped them after an error) come back too.
    pub fn settle(&mut self, id: u64, applied: bool) {
        while let Some((first, _)) = self.deallocated.front() {
            if *first > id {
                return;
            }
            let Some((first, removed)) = self.deallocated.pop_front() else {
                return;
            };
            let undone = first < id || !applied;
            if undone && self.last_all.is_none_or(|all| all <= first) {
                for (name, statement) in removed {
                    self.by_name.entry(name).or_insert(statement);
                }
            }
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
    /// A Parse the proxy injected: its ParseComplete is not the client's.
    Injected { prepared: u64 },
    /// A Close the proxy injected before preparing a statement again whose plan a
    /// schema change invalidated: its CloseComplete is not the client's.
    InjectedClose,
    /// A Bind of a client's named statement, sent as server statement `statement`;
    /// its responses go to the client.
    Bind { statement: u64 },
    /// Not sent: the proxy answers with this message itself (ParseComplete `'1'` or
    /// CloseComplete `'3'`).
    Answer(u8),
    /// A simple-query `DEALLOCATE name` (`all`: `DEALLOCATE ALL`) of the client's own
    /// statements, answered by the proxy: CommandComplete and ReadyForQuery, or 25P02
    /// and ReadyForQuery if the transaction has failed by the time it is answered.
    Deallocated { all: bool, id: u64 },
    /// A query pgopt sent itself (settings for this client): every response to it,
    /// up to and including its ReadyForQuery, is dropped.
    InjectedQuery,
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

/// Responses the client is owed, in order.
#[derive(Debug, Default)]
pub struct Expected {
    queue: VecDeque<Step>,
    /// [`Step::Deallocated`] ids the server skipped (after an error, up to Sync):
    /// never answered, not applied.
    skipped_deallocations: Vec<u64>,
    /// Encoded ErrorResponses for the [`Step::Error`]s in the queue, in order.
    errors: VecDeque<Bytes>,
    /// An error sent the server skipping to a Sync that is not queued yet (see
    /// [`Expected::take_server_awaits_sync`]).
    server_awaits_sync: bool,
    /// The commit at a Sync pgopt sent to end a batch before its answer to a
    /// DEALLOCATE failed: as PostgreSQL's, that answer is the error and a
    /// ReadyForQuery, with no CommandComplete.
    commit_failed: bool,
}

impl Expected {
    pub fn push(&mut self, step: Step) {
        self.queue.push_back(step);
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
        self.server_readies()
            + self
                .queue
                .iter()
                .filter(|s| matches!(s, Step::InjectedSync { .. }))
                .count()
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
        self.observed_readies()
            + self
                .queue
                .iter()
                .filter(|s| matches!(s, Step::InjectedQuery))
                .count()
    }

    pub fn server_readies(&self) -> usize {
        self.queue
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::Server {
                        request: Request::Sync | Request::Query,
                        ..
                    }
                )
            })
            .count()
    }

    /// The request the server answers next, if it is one the client sent.
    pub fn head_request(&self) -> Option<Request> {
        match self.queue.front() {
            Some(Step::Server { request, .. }) => Some(*request),
            Some(Step::Bind { .. }) => Some(Request::Bind),
            _ => None,
        }
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
                | Step::Answer(_)
                | Step::Deallocated { .. }
                | Step::InjectedQuery
                | Step::InjectedSync { .. }
                | Step::InjectedFailure
                | Step::Error
                | Step::Ready => return false,
                _ => {}
            }
        }
        false
    }

    /// Forgets a [`Expected::lone_batch`] whose responses the proxy drops (to run it
    /// again).
    /// The ids of DEALLOCATEs the server skipped since the last call.
    pub fn take_skipped_deallocations(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.skipped_deallocations)
    }

    pub fn abandon(&mut self) {
        self.queue.clear();
        self.errors.clear();
        self.commit_failed = false;
    }

    /// Queues an ErrorResponse pgopt sends in the place of a server's.
    pub fn push_error(&mut self, error: Bytes) {
        self.errors.push_back(error);
        self.queue.push_back(Step::Error);
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
            Some(Step::Answer(_) | Step::Deallocated { .. } | Step::Error | Step::Ready)
        )
    }

    /// Answers the proxy owes at the head of the queue, now that everything before them
    /// is done: appended to `out`. `deallocated` is told, in order, whether each
    /// [`Step::Deallocated`] answered took effect.
    pub fn answer_ready(
        &mut self,
        out: &mut BytesMut,
        status: TransactionStatus,
        mut deallocated: impl FnMut(u64, bool),
    ) {
        loop {
            match self.queue.front().copied() {
                Some(Step::Answer(tag)) => out.extend_from_slice(&[tag, 0, 0, 0, 4]),
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
                            "current transaction is aborted, commands ignored until end of transaction block",
                        )
                        .encode_error(out);
                    }
                    deallocated(id, applied);
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
            self.queue.pop_front();
        }
    }

    /// Accounts for one server message with type `tag`. `forget` is called for
    /// statements the server turned out not to have prepared.
    pub fn on_server_message(&mut self, tag: u8, mut forget: impl FnMut(u64)) -> Verdict {
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return Verdict::Relay;
        }
        let Some(&head) = self.queue.front() else {
            return Verdict::Relay;
        };
        match head {
            Step::Injected { prepared } => match tag {
                b'1' => {
                    self.queue.pop_front();
                    Verdict::Drop
                }
                b'E' => {
                    forget(prepared);
                    self.queue.pop_front();
                    self.skip_to_sync(&mut forget);
                    Verdict::Relay
                }
                _ => Verdict::Relay,
            },
            Step::InjectedClose => match tag {
                b'3' => {
                    self.queue.pop_front();
                    Verdict::Drop
                }
                b'E' => {
                    self.queue.pop_front();
                    self.skip_to_sync(&mut forget);
                    Verdict::Relay
                }
                _ => Verdict::Relay,
            },
            Step::Bind { .. } => {
                if tag == b'E' {
                    self.queue.pop_front();
                    self.skip_to_sync(&mut forget);
                } else if tag == b'2' {
                    self.queue.pop_front();
                }
                Verdict::Relay
            }
            Step::Server { request, prepared } => {
                if tag == b'E' && !matches!(request, Request::Query | Request::Sync) {
                    if let Some(id) = prepared {
                        forget(id);
                    }
                    self.queue.pop_front();
                    self.skip_to_sync(&mut forget);
                } else if completes(request, tag) {
                    self.queue.pop_front();
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
                    self.queue.pop_front();
                }
                Verdict::Drop
            }
            Step::InjectedQuery | Step::InjectedSync { .. } => {
                if tag == b'Z' {
                    self.queue.pop_front();
                }
                Verdict::Drop
            }
            Step::Answer(_) | Step::Deallocated { .. } | Step::Error | Step::Ready => {
                Verdict::Relay
            }
        }
    }

    /// After an error in the extended protocol the server ignores everything up to the
    /// next Sync: those requests get no response, and Parses among them prepared nothing.
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
                // The server skipped the refused message's place too.
                Step::Error => {
                    self.errors.pop_front();
                }
                Step::Deallocated { id, .. } => self.skipped_deallocations.push(id),
                _ => {}
            }
            self.queue.pop_front();
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
        e.push(Step::Answer(b'3'));
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
        let prepared = |id| {
            Arc::new(Prepared {
                id,
                server_name: format!("pgopt_{id}"),
                parse: Bytes::new(),
            })
        };
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
        names.insert("b", prepared(3), 0); // prepared again in the meantime
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

        // One the server skipped (never answered) comes back when a later one settles.
        let skipped = names.deallocate(Some("b")).unwrap();
        names.insert("c", prepared(4), 0);
        let answered = names.deallocate(Some("c")).unwrap();
        assert!(skipped < answered);
        names.settle(answered, true);
        assert!(names.get_mut("b").is_some(), "b is back");
        assert!(names.get_mut("c").is_none());
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
        e.push(Step::Answer(b'1'));
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
            Prepared::from_parse(&a).unwrap(),
            Prepared::from_parse(&b).unwrap(),
            Prepared::from_parse(&c).unwrap(),
        );
        assert_eq!(pa.server_name, pb.server_name);
        assert_ne!(pa.server_name, pc.server_name);
    }
}
