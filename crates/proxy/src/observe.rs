//! Query insight in the proxy (see `pgopt-insight`): each statement a client runs —
//! a simple Query or an extended Execute — is matched with its completion in the
//! server's responses and recorded by shape (fingerprint), with its latency, rows and
//! SQLSTATE; slow ones go to the slow log, repeated ones to the N+1 detector.
//!
//! The hot path stays cheap: statement texts are analysed through the shared
//! analysis cache (literals stripped first, so `WHERE id = 1` and `= 2` hit the same
//! entry), prepared statements once at Parse; the per-session bookkeeping allocates
//! nothing per statement once warm.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use pgopt_insight::{
    ClientInfo, Insight, InsightConfig, NPlusOneConfig, NPlusOneDetector, NPlusOneSession,
    ParamFormat, ParamRef, Sample, SessionHandle, SlowLog, SlowLogConfig, SlowStatement,
};
use pgopt_sql::{Analysis, Analyzer};
use pgopt_wire::frontend::{Bind, Parse};
use pgopt_wire::Format;

/// The longest client text or Bind message a session's insight keeps a copy of (for
/// the parameters and text of a slow statement's plan): a bulk value is not copied,
/// nor held for the session's life.
const MAX_KEPT_TEXT: usize = 64 * 1024;

/// `text` into `kept`, or `kept` emptied (its allocation given back) when `text` is
/// longer than [`MAX_KEPT_TEXT`].
fn keep_text(kept: &mut String, text: &str) {
    kept.clear();
    if text.len() <= MAX_KEPT_TEXT {
        kept.push_str(text);
    } else if kept.capacity() > MAX_KEPT_TEXT {
        *kept = String::new();
    }
}

use crate::plans::{PlanRequest, PlanSettings, Plans};
use crate::stats::error_field;

/// `[insight]` settings the proxy uses.
#[derive(Debug, Clone)]
pub struct InsightSettings {
    /// Off: statements are not analysed or recorded at all.
    pub enabled: bool,
    pub store: InsightConfig,
    pub slow_log: SlowLogConfig,
    pub n_plus_one: NPlusOneConfig,
    pub plans: PlanSettings,
}

impl Default for InsightSettings {
    fn default() -> Self {
        InsightSettings {
            enabled: true,
            store: InsightConfig::default(),
            slow_log: SlowLogConfig::default(),
            n_plus_one: NPlusOneConfig::default(),
            plans: PlanSettings::default(),
        }
    }
}

/// What every session records into.
pub struct InsightState {
    pub store: Insight,
    pub slow: SlowLog,
    pub n_plus_one: NPlusOneDetector,
    pub plans: Plans,
    /// `insight.enabled`: a RELOAD that turns it off pauses recording (what was
    /// collected stays to read) and one that turns it back on resumes it. Sessions
    /// follow between requests (see [`InsightState::recording`]).
    recording: AtomicBool,
}

impl InsightState {
    pub fn new(settings: &InsightSettings) -> Result<InsightState, String> {
        Ok(InsightState {
            store: Insight::new(settings.store.clone()).map_err(|e| format!("insight: {e}"))?,
            slow: SlowLog::new(settings.slow_log.clone()).with_tracing(),
            n_plus_one: NPlusOneDetector::new(settings.n_plus_one.clone())
                .map_err(|e| format!("insight.n_plus_one: {e}"))?,
            plans: Plans::new(settings.plans.clone()),
            recording: AtomicBool::new(settings.enabled),
        })
    }

    /// Whether sessions record statements now (`insight.enabled`, as last reloaded).
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// RELOAD: the slow log, N+1 and plan settings take effect at once, keeping what was
    /// collected, and `enabled` pauses or resumes recording (as
    /// `pg_stat_statements.track`). The statistics store's own settings
    /// (`max_fingerprints`…) need a restart, as does turning on insight that was off
    /// when pgopt started (see `Shared::apply`).
    pub fn apply(&self, old: &InsightSettings, new: &InsightSettings) -> Result<(), String> {
        self.n_plus_one
            .set_config(new.n_plus_one.clone())
            .map_err(|e| format!("insight.n_plus_one: {e}"))?;
        self.slow.set_config(new.slow_log.clone());
        self.plans.set_settings(new.plans.clone());
        if new.enabled != old.enabled {
            tracing::info!(
                "query insight {}",
                if new.enabled {
                    "resumed"
                } else {
                    "paused: statements are not recorded until insight.enabled = true"
                }
            );
        }
        self.recording.store(new.enabled, Ordering::Relaxed);
        if new.store != old.store {
            tracing::warn!("the insight store's settings take effect after a restart");
        }
        Ok(())
    }
}

/// A statement sent to the server whose completion is awaited.
enum Pending {
    /// A simple Query: done at its ReadyForQuery (several statements in one text
    /// count as one, their rows added up).
    Simple {
        analysis: Option<Arc<Analysis>>,
        start: Instant,
        rows: u64,
        error: Option<[u8; 5]>,
        /// Several statements: the next one to complete (each is recorded as it
        /// completes, timed from the one before).
        part: usize,
        /// Numbers the simple queries (the latest one's text is kept).
        seq: u64,
    },
    /// An Execute: done at CommandComplete, EmptyQueryResponse, PortalSuspended or
    /// its ErrorResponse. `bind` numbers the Bind whose parameters it ran with.
    Execute {
        analysis: Option<Arc<Analysis>>,
        start: Instant,
        bind: u64,
    },
    /// A Sync: Executes still pending at its ReadyForQuery were skipped after an
    /// error and never ran.
    Sync,
}

/// One client session's bookkeeping.
pub struct Tracker {
    state: Arc<InsightState>,
    handle: SessionHandle,
    n_plus_one: NPlusOneSession,
    database: String,
    user: String,
    addr: Option<SocketAddr>,
    pending: VecDeque<Pending>,
    /// When the server message being handled came in (`on_server`'s `at`).
    now: Instant,
    /// When the last statement recorded ended.
    ended: Option<Instant>,
    statements: foldhash::HashMap<String, Option<Arc<Analysis>>>,
    unnamed_statement: Option<Arc<Analysis>>,
    portals: foldhash::HashMap<String, Option<Arc<Analysis>>>,
    unnamed_portal: Option<Arc<Analysis>>,
    /// The latest Bind message, for the parameters of a slow statement.
    last_bind: BytesMut,
    binds: u64,
    /// The text of the latest unnamed Parse: drivers send the same one again and
    /// again (libpq's extended protocol), analysed once.
    unnamed_text: String,
    /// Instead, for a text too long to keep: its length and hash.
    unnamed_long: Option<(usize, u64)>,
    /// Bind parameters are decoded for samples, the slow log and plans (not when
    /// every consumer has them off).
    sample_params: bool,
    /// Where the current transaction runs, when the proxy routes (replicas).
    pub route: Option<pgopt_insight::Route>,
    /// The client's settings as statements (start-up parameters, SETs) and their
    /// version: a plan capture applies them first (search_path above all).
    pub settings: (u64, Arc<[String]>),
    /// The latest simple query's text and its number: with `insight.params = full`
    /// a slow one is planned as it was sent (its literals, IN lists whole).
    last_simple: String,
    simple_seq: u64,
    capture_text: bool,
    /// Parameter type OIDs clients fixed at Parse, by shape (bounded).
    param_types: foldhash::HashMap<u64, Arc<[u32]>>,
}

/// Shapes whose Parse parameter types are kept per session.
const MAX_TYPED_SHAPES: usize = 256;

/// Where a finished statement came from, for its parameters and text.
#[derive(Clone, Copy)]
enum Origin {
    /// A simple query, by number.
    Simple(u64),
    /// An Execute, by the number of the Bind it ran with.
    Bind(u64),
    /// One statement of a multi-statement simple query.
    Part,
}

impl Tracker {
    pub fn new(
        state: Arc<InsightState>,
        database: &str,
        user: &str,
        addr: Option<SocketAddr>,
    ) -> Tracker {
        let capture_text = state.store.config().params == pgopt_insight::ParamMode::Full;
        let handle = state.store.session(database, user);
        let sample_params = state.store.config().params != pgopt_insight::ParamMode::Off
            || state.slow.config().params != pgopt_insight::ParamMode::Off
            || state.plans.enabled();
        let n_plus_one = state.n_plus_one.session(ClientInfo {
            database: database.to_string(),
            user: user.to_string(),
            address: addr,
        });
        Tracker {
            state,
            handle,
            n_plus_one,
            database: database.to_string(),
            user: user.to_string(),
            addr,
            pending: VecDeque::new(),
            now: Instant::now(),
            ended: None,
            statements: Default::default(),
            unnamed_statement: None,
            portals: Default::default(),
            unnamed_portal: None,
            last_bind: BytesMut::new(),
            binds: 0,
            unnamed_text: String::new(),
            unnamed_long: None,
            sample_params,
            route: None,
            settings: (u64::MAX, Arc::from(Vec::new())),
            last_simple: String::new(),
            simple_seq: 0,
            capture_text,
            param_types: Default::default(),
        }
    }

    /// Parse: the statement is analysed once, here. (Of an unnamed text longer than
    /// [`MAX_KEPT_TEXT`] only the length and a hash are kept, to know it again.)
    pub fn on_parse(&mut self, analyzer: &Analyzer, parse: &Parse<'_>) {
        let (name, query) = (parse.name, parse.query);
        let analysis = if name.is_empty() {
            let long = (query.len() > MAX_KEPT_TEXT).then(|| {
                use std::hash::BuildHasher;
                let hash = foldhash::fast::FixedState::with_seed(0).hash_one(query);
                (query.len(), hash)
            });
            let same = match long {
                Some(_) => long == self.unnamed_long,
                None => !query.is_empty() && self.unnamed_text == query,
            };
            if same && self.unnamed_statement.is_some() {
                return;
            }
            self.unnamed_statement = analyzer.analyze(query).ok();
            keep_text(&mut self.unnamed_text, query);
            self.unnamed_long = long;
            self.unnamed_statement.clone()
        } else {
            let analysis = analyzer.analyze(query).ok();
            self.statements.insert(name.to_string(), analysis.clone());
            analysis
        };
        // Parameter types the client fixed, for plan captures of this shape.
        if let Some(analysis) = analysis {
            if parse.param_types.iter().any(|t| t != 0) {
                if self.param_types.len() >= MAX_TYPED_SHAPES {
                    self.param_types.clear();
                }
                let types: Arc<[u32]> = parse.param_types.iter().collect();
                self.param_types.insert(analysis.fingerprint, types);
            }
        }
    }

    /// A Bind of `statement` into `portal`; `frame` is the whole message, decoded
    /// only if its parameters are wanted.
    /// `frame`: the whole Bind, `None` for one passed through as it came (its
    /// values not shown).
    pub fn on_bind(&mut self, portal: &str, statement: &str, frame: Option<&[u8]>) {
        let analysis = if statement.is_empty() {
            self.unnamed_statement.clone()
        } else {
            self.statements.get(statement).cloned().flatten()
        };
        if portal.is_empty() {
            self.unnamed_portal = analysis;
        } else {
            self.portals.insert(portal.to_string(), analysis);
        }
        // (A larger one, a bulk value, is not copied: its parameters are not shown.)
        self.last_bind.clear();
        let frame = frame.unwrap_or(&[]);
        if !frame.is_empty() && frame.len() <= MAX_KEPT_TEXT {
            self.last_bind.extend_from_slice(frame);
        } else if self.last_bind.capacity() > MAX_KEPT_TEXT {
            self.last_bind = BytesMut::new();
        }
        self.binds += 1;
    }

    /// Close of a statement (`statement`) or portal.
    pub fn on_close(&mut self, statement: bool, name: &str) {
        match (statement, name.is_empty()) {
            (true, true) => {
                self.unnamed_statement = None;
                self.unnamed_text.clear();
                self.unnamed_long = None;
            }
            (true, false) => {
                self.statements.remove(name);
            }
            (false, true) => self.unnamed_portal = None,
            (false, false) => {
                self.portals.remove(name);
            }
        }
    }

    /// DISCARD ALL / DEALLOCATE ALL: every named statement is gone.
    pub fn forget_statements(&mut self) {
        self.statements.clear();
        self.portals.clear();
    }

    pub fn on_execute(&mut self, portal: &str, at: Instant) {
        let analysis = if portal.is_empty() {
            self.unnamed_portal.clone()
        } else {
            self.portals.get(portal).cloned().flatten()
        };
        self.pending.push_back(Pending::Execute {
            analysis,
            start: at,
            bind: self.binds,
        });
    }

    /// A simple query that came in at `at`.
    pub fn on_query(&mut self, analyzer: &Analyzer, sql: &str, at: Instant) {
        self.simple_seq += 1;
        if self.capture_text {
            keep_text(&mut self.last_simple, sql);
        }
        self.pending.push_back(Pending::Simple {
            analysis: analyzer.analyze(sql).ok(),
            start: at,
            rows: 0,
            error: None,
            part: 0,
            seq: self.simple_seq,
        });
    }

    /// A FunctionCall: done at its ReadyForQuery, not recorded.
    pub fn on_function_call(&mut self, at: Instant) {
        self.pending.push_back(Pending::Simple {
            analysis: None,
            start: at,
            rows: 0,
            error: None,
            part: 0,
            seq: 0,
        });
    }

    pub fn on_sync(&mut self) {
        self.pending.push_back(Pending::Sync);
    }

    /// COPY FROM STDIN began: `syncs` Syncs sent behind its Execute are ignored by the
    /// server (no ReadyForQuery answers them).
    pub fn copy_in_began(&mut self, syncs: usize) {
        for _ in 0..syncs {
            match self.pending.get(1) {
                Some(Pending::Sync) => {
                    self.pending.remove(1);
                }
                _ => return,
            }
        }
    }

    /// The batch in flight will run again (see `replan.rs`): its statements are
    /// forgotten, the second run counts.
    pub fn abandon(&mut self) {
        self.pending.clear();
    }

    /// A server message the client gets. `execute_failed`: an ErrorResponse that
    /// answers an Execute (not the Parse or Bind before it). `in_transaction`: the
    /// transaction status the statement ran in. `at`: when it came in.
    pub fn on_server(
        &mut self,
        tag: u8,
        body: &[u8],
        execute_failed: bool,
        in_transaction: bool,
        at: Instant,
    ) {
        self.now = at;
        match tag {
            b'C' | b'I' | b's' => {
                let rows = if tag == b'C' { command_rows(body) } else { 0 };
                match self.pending.front_mut() {
                    Some(Pending::Simple {
                        analysis: Some(analysis),
                        start,
                        part,
                        ..
                    }) if !analysis.parts.is_empty() => {
                        let (statement, began) = (analysis.parts.get(*part).cloned(), *start);
                        *part += 1;
                        *start = at;
                        self.done(statement, began, rows, None, Origin::Part, in_transaction);
                    }
                    Some(Pending::Simple { rows: total, .. }) => *total += rows,
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            analysis,
                            start,
                            bind,
                        }) = self.pending.pop_front()
                        {
                            self.done(
                                analysis,
                                start,
                                rows,
                                None,
                                Origin::Bind(bind),
                                in_transaction,
                            );
                        }
                    }
                    _ => {}
                }
            }
            b'E' => {
                let code = error_field(body, b'C').and_then(|c| <[u8; 5]>::try_from(c).ok());
                match self.pending.front_mut() {
                    Some(Pending::Simple {
                        analysis: Some(analysis),
                        start,
                        part,
                        ..
                    }) if !analysis.parts.is_empty() => {
                        // The statement that failed; the rest of the text never runs.
                        let statement = analysis.parts.get(*part).cloned();
                        *part = usize::MAX;
                        let began = *start;
                        self.done(statement, began, 0, code, Origin::Part, in_transaction);
                    }
                    Some(Pending::Simple { error, .. }) => *error = error.or(code),
                    Some(Pending::Execute { .. }) if execute_failed => {
                        if let Some(Pending::Execute {
                            analysis,
                            start,
                            bind,
                        }) = self.pending.pop_front()
                        {
                            self.done(analysis, start, 0, code, Origin::Bind(bind), in_transaction);
                        }
                    }
                    _ => {}
                }
            }
            b'Z' => {
                while let Some(front) = self.pending.pop_front() {
                    match front {
                        Pending::Simple {
                            analysis,
                            start,
                            rows,
                            error,
                            seq,
                            ..
                        } => {
                            // Several statements were recorded one by one already.
                            if analysis.as_ref().is_none_or(|a| a.parts.is_empty()) {
                                let origin = Origin::Simple(seq);
                                self.done(analysis, start, rows, error, origin, in_transaction);
                            }
                            break;
                        }
                        Pending::Sync => break,
                        // Skipped after an error: it never ran.
                        Pending::Execute { .. } => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn done(
        &mut self,
        analysis: Option<Arc<Analysis>>,
        start: Instant,
        rows: u64,
        error: Option<[u8; 5]>,
        origin: Origin,
        in_transaction: bool,
    ) {
        let bind = match origin {
            Origin::Bind(n) => Some(n),
            _ => None,
        };
        let end = self.now;
        // A pipelined statement starts when the one before it ended, not when it came
        // in behind it (as pg_stat_statements times it: queueing is not its time).
        let start = self.ended.filter(|e| *e > start).unwrap_or(start);
        self.ended = Some(end);
        let Some(analysis) = analysis else {
            return; // text the parser refused: the server's error says it all
        };
        let duration = end.duration_since(start);
        // Wall-clock time without a second clock read.
        let wall_us = crate::stats::unix_us_at(end);
        let now_ms = wall_us / 1000;
        let key = self.handle.key(analysis.fingerprint);
        let slow = self.state.slow.is_slow(duration);
        let plan = self.state.plans.wants(duration) && plannable(&analysis);
        // The parameters are at hand when this statement ran with the latest Bind; the
        // store keeps a few samples per shape (rendered as `insight.params` says), so
        // they are decoded only when it keeps this one, or for the slow log or a plan.
        let latest = bind.filter(|b| *b == self.binds && self.sample_params);
        let last_bind = &self.last_bind;
        let decode =
            || latest.and_then(|_| Bind::decode(last_bind.get(5..).unwrap_or_default()).ok());
        let bind = if slow || plan { decode() } else { None };
        let params: Vec<ParamRef<'_>> = match &bind {
            Some(bind) => bind_params(bind),
            None => Vec::new(),
        };
        let sample = Sample {
            duration,
            rows,
            error,
            params: bind.as_ref().map(|_| params.as_slice()),
            route: self.route,
            ..Sample::default()
        };
        let text = || Arc::<str>::from(analysis.normalized.as_str());
        let lazy = || decode().map(|b| bind_params(&b));
        self.state
            .store
            .record_at_lazy(&key, &sample, lazy, text, now_ms);
        self.n_plus_one
            .observe_ms(analysis.fingerprint, in_transaction, now_ms, text);
        if slow || plan {
            if slow {
                self.state.slow.maybe_log(&SlowStatement {
                    fingerprint: analysis.fingerprint,
                    query: &analysis.normalized,
                    duration,
                    rows,
                    database: &self.database,
                    user: &self.user,
                    client_addr: self.addr,
                    params: &params,
                    error,
                    at: SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(wall_us),
                });
            }
            if plan {
                // Values only with `insight.params = full` (EXPLAIN VERBOSE shows them),
                // and only text ones (binary values, drivers' usual choice, are not
                // rendered): then the custom plan for them, else the generic one.
                let full = self.capture_text;
                let all_text = params.iter().all(|p| p.format == ParamFormat::Text);
                let values: Option<Vec<Option<String>>> =
                    bind.as_ref().filter(|_| full && all_text).map(|_| {
                        params
                            .iter()
                            .map(|p| p.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect()
                    });
                // The text as the client sent it (literals, whole IN lists): a simple
                // query, or the unnamed statement the values were bound to.
                let unnamed = self
                    .unnamed_statement
                    .as_ref()
                    .is_some_and(|u| Arc::ptr_eq(u, &analysis));
                let sql = match origin {
                    // (Not kept when too long: see `keep_text`.)
                    Origin::Simple(seq)
                        if full && seq == self.simple_seq && !self.last_simple.is_empty() =>
                    {
                        Some(self.last_simple.clone())
                    }
                    Origin::Bind(_)
                        if values.is_some() && unnamed && !self.unnamed_text.is_empty() =>
                    {
                        Some(self.unnamed_text.clone())
                    }
                    _ => None,
                };
                self.state.plans.request(PlanRequest {
                    fingerprint: analysis.fingerprint,
                    database: self.database.clone(),
                    user: self.user.clone(),
                    query: analysis.normalized.clone(),
                    sql,
                    params: values,
                    param_types: self.param_types.get(&analysis.fingerprint).cloned(),
                    settings: self.settings.1.clone(),
                });
            }
        }
    }

    /// A request answered from the result cache: a call of its shape, counted as a
    /// cache hit, with pgopt's own time.
    pub fn cache_hit(&mut self, analysis: &Analysis, duration: std::time::Duration, rows: u64) {
        let key = self.handle.key(analysis.fingerprint);
        let sample = Sample {
            duration,
            rows,
            cache_hit: true,
            ..Sample::default()
        };
        let text = || Arc::<str>::from(analysis.normalized.as_str());
        self.state.store.record(&key, &sample, text);
    }

    /// A transaction ended: N+1 counting inside it starts over.
    pub fn end_transaction(&mut self) {
        self.n_plus_one.end_transaction();
    }
}

/// One plain SELECT, INSERT, UPDATE or DELETE: what EXPLAIN can plan.
fn plannable(analysis: &Analysis) -> bool {
    use pgopt_sql::StatementKind::*;
    analysis.kinds.len() == 1 && matches!(analysis.kind(), Select | Insert | Update | Delete)
}

/// The parameters of a Bind, with their formats.
fn bind_params<'a>(bind: &Bind<'a>) -> Vec<ParamRef<'a>> {
    // No format codes: all text; one: for all; else one per parameter.
    let mut formats = bind.param_formats.iter();
    let all = match bind.param_formats.len() {
        0 => Some(Format::Text),
        1 => formats.next(),
        _ => None,
    };
    bind.params
        .iter()
        .map(|value| {
            let format = match all {
                Some(format) => format,
                None => formats.next().unwrap_or_default(),
            };
            ParamRef {
                value,
                format: match format {
                    Format::Text => ParamFormat::Text,
                    Format::Binary => ParamFormat::Binary,
                },
                type_oid: 0,
            }
        })
        .collect()
}

/// A wall-clock anchor for a session's statements: `at`, the time then, and that time
/// in unix microseconds (so each statement's time takes no clock read of its own).
/// Rows a CommandComplete tag reports (`SELECT 5`, `INSERT 0 3`, `UPDATE 2`), else 0.
fn command_rows(body: &[u8]) -> u64 {
    let tag = body.strip_suffix(b"\0").unwrap_or(body);
    let last = tag.rsplit(|b| *b == b' ').next().unwrap_or_default();
    if last.is_empty() || !last.iter().all(u8::is_ascii_digit) || last.len() == tag.len() {
        return 0;
    }
    std::str::from_utf8(last)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What insight costs per statement on one thread, simple and extended protocol
    /// (pgbench -S's traffic). A measuring tool, not a check:
    /// `cargo test --release -p pgopt-proxy --lib tracker_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn tracker_cost() {
        let state = Arc::new(InsightState::new(&InsightSettings::default()).unwrap());
        let analyzer = Arc::new(Analyzer::default());
        let (one, _) = statements(&state, &analyzer);
        // Two threads at once, as pgopt's two workers: what they share costs more.
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (state, analyzer) = (state.clone(), analyzer.clone());
                std::thread::spawn(move || statements(&state, &analyzer))
            })
            .collect();
        let two: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        println!(
            "insight per statement, simple and extended: one thread {one:?}, two at once {two:?}"
        );
    }

    fn statements(state: &Arc<InsightState>, analyzer: &Analyzer) -> (Duration, Duration) {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut tracker = Tracker::new(state.clone(), "postgres", "postgres", Some(addr));
        let n = 2_000_000u32;
        let started = Instant::now();
        for i in 0..n {
            let sql = format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i % 100_000
            );
            tracker.on_query(analyzer, &sql, Instant::now());
            tracker.on_server(b'C', b"SELECT 1\0", false, false, Instant::now());
            tracker.on_server(b'Z', b"I", false, false, Instant::now());
            tracker.end_transaction();
        }
        let simple = started.elapsed() / n;
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
        let mut frame = BytesMut::new();
        let started = Instant::now();
        for i in 0..n {
            let parse = Parse {
                name: "",
                query: sql,
                param_types: Default::default(),
            };
            tracker.on_parse(analyzer, &parse);
            let value = (i % 100_000).to_string();
            let values = [Some(value.as_bytes())];
            frame.clear();
            Bind {
                portal: "",
                statement: "",
                param_formats: Default::default(),
                params: (&values).into(),
                result_formats: Default::default(),
            }
            .encode(&mut frame)
            .unwrap();
            tracker.on_bind("", "", Some(&frame));
            tracker.on_execute("", Instant::now());
            tracker.on_sync();
            tracker.on_server(b'C', b"SELECT 1\0", false, false, Instant::now());
            tracker.on_server(b'Z', b"I", false, false, Instant::now());
            tracker.end_transaction();
        }
        (simple, started.elapsed() / n)
    }

    #[test]
    fn rows_from_command_tags() {
        assert_eq!(command_rows(b"SELECT 5\0"), 5);
        assert_eq!(command_rows(b"INSERT 0 3\0"), 3);
        assert_eq!(command_rows(b"UPDATE 12\0"), 12);
        assert_eq!(command_rows(b"BEGIN\0"), 0);
        assert_eq!(command_rows(b"COPY 100\0"), 100);
        assert_eq!(command_rows(b"\0"), 0);
    }
}
