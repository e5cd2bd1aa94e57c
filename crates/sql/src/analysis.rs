//! Cold-path statement analysis with PostgreSQL's own parser (pg_query):
//! fingerprint, normalized text, statement kinds, tables read and written,
//! functions, and the read-only / volatile / locking / session verdicts.
//!
//! The parse tree is walked generically (through its serde form), so every
//! node is visited: a function call or table reference cannot hide in a node
//! type the walker does not know.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pg_query::protobuf::{ObjectType, VariableSetKind};
use pg_query::{FingerprintOptions, NodeEnum};
use serde_json::{Map, Value};

use crate::error::SqlError;
use crate::functions;
use crate::hints::{parse_hints, Hints};
use crate::lexer::TokenKind;

/// What a statement is, by its top-level parse node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE (not SELECT … INTO, which is [`Ddl`](Self::Ddl)).
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// CREATE, ALTER, DROP, TRUNCATE, GRANT, COMMENT, REFRESH MATERIALIZED VIEW…
    Ddl,
    /// BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, PREPARE
    /// TRANSACTION…
    Transaction,
    /// SET (also SET LOCAL; see [`Analysis::session_effects`]).
    Set,
    Reset,
    Show,
    Explain,
    /// Everything else: CALL, DO, LISTEN, NOTIFY, PREPARE, EXECUTE, VACUUM…
    Other,
}

/// A statement effect that outlives the transaction, so a transaction-mode
/// pool must refuse it or pin the client to its server connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionEffect {
    /// `SET name …` (not `SET LOCAL`, not `SET TRANSACTION [SNAPSHOT]`).
    Set {
        name: String,
    },
    /// `set_config(…, …, is_local)` with `is_local` not the literal `true`.
    SetConfig,
    Reset {
        name: String,
    },
    ResetAll,
    Listen {
        channel: String,
    },
    /// `UNLISTEN channel`, or `UNLISTEN *` as `channel: None`.
    Unlisten {
        channel: Option<String>,
    },
    /// pg_advisory_lock and friends at session level.
    AdvisoryLock,
    /// CREATE TEMP TABLE / VIEW / SEQUENCE, SELECT … INTO TEMP.
    TempObject {
        name: String,
    },
    Prepare {
        name: String,
    },
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` as `name: None`.
    Deallocate {
        name: Option<String>,
    },
    /// DISCARD ALL / PLANS / SEQUENCES / TEMP.
    Discard,
    /// `DECLARE … CURSOR WITH HOLD`.
    HoldCursor {
        name: String,
    },
}

/// Extra knowledge for the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalysisConfig {
    /// User functions that may run on a replica (as written in SQL, e.g.
    /// `my_func` or `app.my_func`). Other user functions make a statement
    /// not read-only.
    pub read_only_functions: Vec<String>,
    /// User functions whose results must not be cached.
    pub volatile_functions: Vec<String>,
}

/// Everything the proxy needs to know about one statement text (which may
/// hold several statements separated by `;`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Same value for the same query shape regardless of literals,
    /// whitespace, comments, keyword case and IN-list length. Schema names
    /// and full relation names count. A text too long to parse whole is
    /// analysed shortened (see `reduce.rs`): when rows of a VALUES list were cut,
    /// its fingerprint is that of the first row's statement, marked, so bulk
    /// INSERTs of one shape share one, apart from one-row INSERTs.
    pub fingerprint: u64,
    /// The text with literals replaced by `$n` (as in pg_stat_statements);
    /// IN lists of parameters become `($n /*, ... */)`. When rows of a VALUES list
    /// were cut (see `fingerprint`), the first row's statement's, with
    /// [`SHORTENED`] after it.
    pub normalized: String,
    /// One entry per statement, in order.
    pub kinds: Vec<StatementKind>,
    /// Tables (and views) read, sorted, schema-qualified when written so.
    pub tables_read: Vec<String>,
    /// Tables modified: DML targets (also in writable CTEs), COPY FROM,
    /// TRUNCATE, DDL targets. Sorted.
    pub tables_written: Vec<String>,
    /// Functions called, as written (`nextval`, `app.f`), sorted.
    pub functions: Vec<String>,
    /// May write tables the text doesn't name: a function that may (user functions
    /// not declared read-only, dblink), DO, CALL, EXECUTE, GRANT/REVOKE, policies,
    /// `TRUNCATE … CASCADE`, and any other statement that is not read-only yet names
    /// no table it writes. Not the other side-effecting built-ins (`nextval`,
    /// `set_config`, advisory locks, `pg_notify`, large objects…): they change no
    /// table's rows (a sequence is not a table here; nor is a catalog).
    pub unknown_writes: bool,
    /// Calls a function that is not a known built-in (declared read-only or not):
    /// what it reads is unknown.
    pub user_functions: bool,
    /// Every statement changes what the tables hold and what queries return in no way
    /// (a result cache needs to end nothing for it): CREATE, ALTER, DROP and REINDEX of
    /// indexes, CLUSTER, extended statistics — and calls no user function (an index
    /// expression's runs at the build). Still not read-only: it goes to the primary.
    /// (Queries reading such definitions — `pg_get_indexdef()`, `to_regclass()` — are
    /// not cached.)
    pub maintenance: bool,
    /// Safe to run on a replica: only SELECT/VALUES/SHOW/EXPLAIN without
    /// ANALYZE, no row locks, no writable CTE, no side-effecting or unknown
    /// user function.
    pub read_only: bool,
    /// Calls something whose value changes per call (now(), random(),
    /// nextval(), CURRENT_TIMESTAMP, TABLESAMPLE…).
    pub volatile: bool,
    /// Columns (by name) converted to a date or time type (`v::timestamptz`,
    /// `date(v)`, `max(v)::date`): from text, `'now'` or `'today'` in one reads the
    /// clock when the statement runs, so a result of it may be cached only if every
    /// column of that name is a date or time. (A conversion of anything but a column,
    /// a constant, a parameter or a date/time function's result is `volatile`.)
    pub datetime_casts: Vec<String>,
    /// Operators called, by symbol (the last part of `OPERATOR(s.+)`), with those
    /// the syntax calls without writing them: `=` for IN, `CASE x WHEN`, IS [NOT]
    /// DISTINCT FROM, NULLIF, `USING` and NATURAL joins, `IN (subquery)`, GROUP BY,
    /// DISTINCT (an aggregate's too), PARTITION BY and UNION, INTERSECT and EXCEPT
    /// without ALL; `<` for ORDER BY (a window's or an aggregate's too); `<>` for NOT
    /// IN; `>=` and `<=` (`<` and `>` for NOT) for BETWEEN; `~~`, `~~*` and their
    /// negations for [I]LIKE; `~` for SIMILAR TO. Sorted. (What sorting and grouping
    /// call is their operator class's comparison or hash function: the catalog read
    /// lists such a function of the user's under its family's operators.)
    pub operators: Vec<String>,
    /// Types converted to by name, lower case, without their schema: casts (`x::t`,
    /// `CAST(x AS t)`, `t 'literal'`, arrays of one) and column definitions
    /// (`… AS x(a t)`). Sorted. (Not a conversion written as a call, `t(x)`: that is
    /// in [`functions`](Self::functions).)
    pub type_names: Vec<String>,
    /// Result depends on session state (currval, current_setting…).
    pub session_dependent: bool,
    /// Takes row or table locks explicitly (FOR UPDATE/SHARE…, LOCK TABLE).
    pub locking: bool,
    /// A LIMIT, OFFSET, FETCH FIRST or DISTINCT ON picks some rows: unless an ORDER BY
    /// decides every tie, another run may pick others from the same data.
    pub picks_rows: bool,
    /// Effects that outlive the transaction.
    pub session_effects: Vec<SessionEffect>,
    /// The text opens a read-only transaction block (`BEGIN READ ONLY`,
    /// `START TRANSACTION READ ONLY`, not SERIALIZABLE, which a hot standby
    /// refuses): PostgreSQL itself keeps it from writing, so the whole block may
    /// run on a replica.
    pub begins_read_only: bool,
    /// `pgopt:` comment hints.
    pub hints: Hints,
    /// The text is one `EXECUTE name(…)` of an SQL-prepared statement whose arguments
    /// call nothing that may write: `Some(name)`. Its writes are then that statement's
    /// (what its PREPARE names), which the text itself does not say, so
    /// [`unknown_writes`](Self::unknown_writes) is set all the same.
    pub executes: Option<String>,
    /// A text of several statements: each one's own analysis, in order (as
    /// pg_stat_statements records them one by one). Empty for a single statement.
    pub parts: Vec<std::sync::Arc<Analysis>>,
}

impl Analysis {
    /// The fingerprint as 16 lowercase hex digits.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// The kind of the first statement ([`StatementKind::Other`] if empty).
    pub fn kind(&self) -> StatementKind {
        self.kinds.first().copied().unwrap_or(StatementKind::Other)
    }

    /// A result of this statement may be cached: read-only plain SELECTs,
    /// nothing volatile or session-dependent, no hint against it.
    pub fn cacheable(&self) -> bool {
        self.read_only
            && !self.volatile
            && !self.session_dependent
            && !self.locking
            && !self.hints.no_cache
            && !self.kinds.is_empty()
            && self.kinds.iter().all(|k| *k == StatementKind::Select)
    }
}

/// Written after the normalized text of a statement analysed shortened.
pub const SHORTENED: &str = " /* pgopt: shortened for analysis */";

/// Mixed into the fingerprint of a statement analysed shortened.
const SHORTENED_MARK: u64 = 0x7067_6f70_745f_7368;

/// Analyses `sql` with the default configuration.
pub fn analyze(sql: &str) -> Result<Analysis, SqlError> {
    analyze_with(sql, &AnalysisConfig::default())
}

/// Analyses `sql`; never panics (a panic inside the parser library is caught
/// and reported as [`SqlError::Internal`]).
///
/// A text longer than 8 kB is shortened first where the analysis can't tell
/// (`reduce.rs`): a bulk INSERT's rows after the first, long IN lists and long
/// string literals. A parse error's position is then one in the shortened text.
pub fn analyze_with(sql: &str, config: &AnalysisConfig) -> Result<Analysis, SqlError> {
    if let Some(position) = sql.bytes().position(|b| b == 0) {
        return Err(SqlError::NulByte { position });
    }
    let shortened = crate::reduce::reduce(sql);
    let text = shortened.as_ref().map_or(sql, |r| r.text.as_str());
    let analysed = catch_unwind(AssertUnwindSafe(|| {
        let mut analysis = analyze_inner(text, config)?;
        if let Some(cuts) = shortened.as_ref().map(|r| &r.rows_cut_at) {
            if !cuts.is_empty() {
                mark_shortened(&mut analysis);
                mark_shortened_parts(&mut analysis, text, cuts);
            }
        }
        Ok(analysis)
    }));
    match analysed {
        Ok(result) => result,
        Err(panic) => Err(SqlError::Internal {
            message: panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned()),
        }),
    }
}

/// Marks an analysis of a statement whose VALUES rows were cut (see `fingerprint`).
fn mark_shortened(analysis: &mut Analysis) {
    analysis.fingerprint = analysis.fingerprint.rotate_left(32) ^ SHORTENED_MARK;
    analysis.normalized.push_str(SHORTENED);
}

/// Marks the statements of a multi-statement `text` in which rows were cut (at
/// `cuts`, byte offsets in `text`).
fn mark_shortened_parts(analysis: &mut Analysis, text: &str, cuts: &[usize]) {
    if analysis.parts.is_empty() {
        return;
    }
    let Ok(pieces) = pg_query::split_with_parser(text) else {
        return;
    };
    for (part, piece) in analysis.parts.iter_mut().zip(pieces) {
        // (The pieces are slices of `text`.)
        let start = piece.as_ptr() as usize - text.as_ptr() as usize;
        if cuts
            .iter()
            .any(|&c| (start..=start + piece.len()).contains(&c))
        {
            mark_shortened(std::sync::Arc::make_mut(part));
        }
    }
}

fn fingerprint_options() -> FingerprintOptions {
    FingerprintOptions::RANGEVAR_PG17_COMPAT | FingerprintOptions::FULL_RELNAME
}

fn analyze_inner(sql: &str, config: &AnalysisConfig) -> Result<Analysis, SqlError> {
    let err = |e| SqlError::from_pg_query(e, sql);
    let parsed = pg_query::parse(sql, 0).map_err(err)?;
    let fingerprint = pg_query::fingerprint(sql, 0, fingerprint_options())
        .map_err(err)?
        .value;
    let normalized = collapse_param_lists(&pg_query::normalize(sql).map_err(err)?);

    let mut walker = Walker::new(config);
    let mut kinds = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut read_only = !parsed.protobuf.stmts.is_empty();
    let mut maintenance = read_only;
    let mut unknown_writes = false;
    let mut executes = None;
    let mut begins_read_only = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|raw| raw.stmt.as_ref()?.node.as_ref())
        .is_some_and(opens_read_only_block);
    for (i, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let written_before = walker.written.len();
        let (kind, stmt_read_only) = walker.statement(node)?;
        // DML names its target (already noted when an earlier statement wrote it too).
        let names_a_write = walker.written.len() > written_before
            || matches!(
                kind,
                StatementKind::Insert
                    | StatementKind::Update
                    | StatementKind::Delete
                    | StatementKind::Merge
                    | StatementKind::Copy
            );
        if let NodeEnum::ExecuteStmt(execute) = node {
            let lone = parsed.protobuf.stmts.len() == 1 && !walker.unsafe_function;
            executes = lone.then(|| execute.name.clone());
        }
        unknown_writes |= walker.unnamed_writes
            || walker.executes
            || truncates_cascade(node)
            || (!stmt_read_only && !names_a_write && !writes_no_data(node));
        kinds.push(kind);
        read_only &= stmt_read_only;
        maintenance &= changes_no_result(node);
        // After the read-only BEGIN: reads, or the block's end (a COMMIT and then a
        // write, or a new read-write block, is not a read-only text).
        if i > 0 && !stmt_read_only && !continues_or_ends_block(node) {
            begins_read_only = false;
        }
    }
    let hints = parse_hints(sql);
    let kinds_len = kinds.len();
    let user_function = walker.user_function;
    let maintenance = maintenance && !user_function && !walker.unsafe_function;
    let Walker {
        read,
        written,
        functions,
        volatile,
        datetime_casts,
        operators,
        type_names,
        session_dependent,
        locking,
        picks_rows,
        mut session_effects,
        dropped_at_commit,
        ..
    } = walker;
    session_effects.retain(
        |e| !matches!(e, SessionEffect::TempObject { name } if dropped_at_commit.contains(name)),
    );
    Ok(Analysis {
        fingerprint,
        normalized,
        kinds,
        tables_read: read.into_iter().collect(),
        tables_written: written.into_iter().collect(),
        functions: functions.into_iter().collect(),
        unknown_writes,
        user_functions: user_function,
        maintenance,
        read_only,
        volatile,
        datetime_casts: datetime_casts.into_iter().collect(),
        operators: operators.into_iter().collect(),
        type_names: type_names.into_iter().collect(),
        session_dependent,
        locking,
        picks_rows,
        session_effects: session_effects.into_iter().collect(),
        begins_read_only,
        hints,
        executes,
        parts: split_parts(sql, config, kinds_len)?,
    })
}

/// The analyses of each statement of a multi-statement text.
fn split_parts(
    sql: &str,
    config: &AnalysisConfig,
    statements: usize,
) -> Result<Vec<std::sync::Arc<Analysis>>, SqlError> {
    if statements < 2 {
        return Ok(Vec::new());
    }
    let pieces = pg_query::split_with_parser(sql).map_err(|e| SqlError::from_pg_query(e, sql))?;
    pieces
        .into_iter()
        .map(|piece| analyze_inner(piece, config).map(std::sync::Arc::new))
        .collect()
}

/// `BEGIN`/`START TRANSACTION` with `READ ONLY` and without `ISOLATION LEVEL
/// SERIALIZABLE`.
fn opens_read_only_block(node: &NodeEnum) -> bool {
    use pg_query::protobuf::TransactionStmtKind as T;
    let NodeEnum::TransactionStmt(stmt) = node else {
        return false;
    };
    if !matches!(stmt.kind(), T::TransStmtBegin | T::TransStmtStart) {
        return false;
    }
    let option = |name: &str| {
        stmt.options.iter().find_map(|o| match &o.node {
            Some(NodeEnum::DefElem(d)) if d.defname == name => d.arg.as_ref()?.node.as_ref(),
            _ => None,
        })
    };
    let read_only = matches!(
        option("transaction_read_only"),
        Some(NodeEnum::AConst(c)) if matches!(&c.val, Some(pg_query::protobuf::a_const::Val::Ival(i)) if i.ival != 0)
    );
    let serializable = matches!(
        option("transaction_isolation"),
        Some(NodeEnum::AConst(c)) if matches!(&c.val, Some(pg_query::protobuf::a_const::Val::Sval(s)) if s.sval == "serializable")
    );
    read_only && !serializable
}

/// A SELECT with LIMIT, OFFSET, FETCH or DISTINCT ON, here or in a branch of its
/// set operation (`larg`/`rarg` are bare SelectStmts, not wrapped nodes).
fn select_picks_rows(select: &Value) -> bool {
    let set = |k: &str| select.get(k).is_some_and(|v| !v.is_null());
    // DISTINCT is one empty node; DISTINCT ON lists its expressions.
    let distinct_on = select
        .get("distinct_clause")
        .and_then(Value::as_array)
        .is_some_and(|d| {
            d.iter()
                .any(|e| e.get("node").is_some_and(|n| !n.is_null()))
        });
    set("limit_count")
        || set("limit_offset")
        || distinct_on
        || ["larg", "rarg"]
            .iter()
            .any(|k| select.get(*k).is_some_and(select_picks_rows))
}

/// A SELECT that compares rows for equality, here or in a branch of its set
/// operation: GROUP BY, DISTINCT, or UNION, INTERSECT or EXCEPT without ALL.
fn select_compares(select: &Value) -> bool {
    use pg_query::protobuf::SetOperation;
    let non_empty = |k: &str| {
        select
            .get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let set_op = select.get("op").and_then(Value::as_i64).unwrap_or(0);
    let all = select.get("all").and_then(Value::as_bool) == Some(true);
    non_empty("group_clause")
        || non_empty("distinct_clause")
        || (set_op > SetOperation::SetopNone as i64 && !all)
        || ["larg", "rarg"]
            .iter()
            .any(|k| select.get(*k).is_some_and(select_compares))
}

/// `TRUNCATE … CASCADE`: it empties every table with a foreign key to the named ones.
fn truncates_cascade(node: &NodeEnum) -> bool {
    matches!(node, NodeEnum::TruncateStmt(t)
        if t.behavior() == pg_query::protobuf::DropBehavior::DropCascade)
}

/// A statement that changes no row and no query's result (see
/// [`Analysis::maintenance`]): index maintenance, CLUSTER, extended statistics. (Not
/// COMMENT, which `obj_description()` reads; not an index's RENAME, which PostgreSQL
/// lets rename a table too.)
fn changes_no_result(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::IndexStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::CreateStatsStmt(_)
        | NodeEnum::AlterStatsStmt(_) => true,
        NodeEnum::DropStmt(drop) => matches!(
            ObjectType::try_from(drop.remove_type),
            Ok(ObjectType::ObjectIndex | ObjectType::ObjectStatisticExt)
        ),
        // ALTER INDEX … SET TABLESPACE, ATTACH PARTITION, SET (…) (on anything but an
        // index, PostgreSQL refuses them).
        NodeEnum::AlterTableStmt(alter) => {
            ObjectType::try_from(alter.objtype) == Ok(ObjectType::ObjectIndex)
        }
        _ => false,
    }
}

/// Statements that are not read-only yet change no table data: transaction control,
/// settings, locking reads, cursors, LISTEN/NOTIFY, prepared-statement bookkeeping,
/// VACUUM, LOCK, EXPLAIN.
fn writes_no_data(node: &NodeEnum) -> bool {
    use pg_query::protobuf::TransactionStmtKind as T;
    if let NodeEnum::TransactionStmt(t) = node {
        // COMMIT PREPARED makes a prepared transaction's writes visible: which ones,
        // the text doesn't say.
        return t.kind() != T::TransStmtCommitPrepared;
    }
    if let NodeEnum::CopyStmt(copy) = node {
        return !copy.is_from;
    }
    matches!(
        node,
        NodeEnum::TransactionStmt(_)
            | NodeEnum::VariableSetStmt(_)
            | NodeEnum::VariableShowStmt(_)
            | NodeEnum::SelectStmt(_)
            | NodeEnum::ListenStmt(_)
            | NodeEnum::UnlistenStmt(_)
            | NodeEnum::NotifyStmt(_)
            | NodeEnum::DeallocateStmt(_)
            | NodeEnum::DiscardStmt(_)
            | NodeEnum::PrepareStmt(_)
            | NodeEnum::FetchStmt(_)
            | NodeEnum::DeclareCursorStmt(_)
            | NodeEnum::ClosePortalStmt(_)
            | NodeEnum::VacuumStmt(_)
            | NodeEnum::LockStmt(_)
            | NodeEnum::CheckPointStmt(_)
            | NodeEnum::ExplainStmt(_)
    )
}

/// A transaction statement other than BEGIN/START: COMMIT, ROLLBACK, savepoints.
fn continues_or_ends_block(node: &NodeEnum) -> bool {
    use pg_query::protobuf::TransactionStmtKind as T;
    matches!(node, NodeEnum::TransactionStmt(stmt)
        if !matches!(stmt.kind(), T::TransStmtBegin | T::TransStmtStart))
}

/// Accumulates facts over every statement of a text.
struct Walker<'c> {
    config: &'c AnalysisConfig,
    read: BTreeSet<String>,
    written: BTreeSet<String>,
    functions: BTreeSet<String>,
    volatile: bool,
    datetime_casts: BTreeSet<String>,
    operators: BTreeSet<String>,
    type_names: BTreeSet<String>,
    session_dependent: bool,
    locking: bool,
    picks_rows: bool,
    session_effects: BTreeSet<SessionEffect>,
    /// Per statement: a data-modifying node was seen.
    modifies: bool,
    /// Per statement: a function not known to be read-only was called.
    unsafe_function: bool,
    /// Per statement: a function that may write tables the text does not name was
    /// called (a user function not declared read-only, dblink).
    unnamed_writes: bool,
    /// Per statement: an SQL-prepared statement is executed (anywhere in it: `EXPLAIN
    /// ANALYZE EXECUTE`, `CREATE TABLE AS EXECUTE` too), whose writes the text does not
    /// name.
    executes: bool,
    /// A function that is not a known built-in was called.
    user_function: bool,
    /// CTE names in scope, innermost last.
    ctes: Vec<String>,
    /// Temporary tables created `ON COMMIT DROP`: no session effect.
    dropped_at_commit: Vec<String>,
}

/// A DO statement's body (its `AS` string).
fn do_body(do_stmt: &Value) -> Option<&str> {
    do_stmt
        .get("args")?
        .as_array()?
        .iter()
        .filter_map(|a| a.pointer("/node/DefElem"))
        .find(|d| d.get("defname").and_then(Value::as_str) == Some("as"))?
        .pointer("/arg/node/String/sval")?
        .as_str()
}

/// The types a text converted to reads the clock for `'now'`, `'today'`…
const CLOCK_TYPES: &[&str] = &[
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    // Ranges of them: their bounds are read as the type's input ('now').
    "daterange",
    "tsrange",
    "tstzrange",
    "datemultirange",
    "tsmultirange",
    "tstzmultirange",
];

/// Built-in functions whose result is a date, time or timestamp (never text).
const DATETIME_RESULTS: &[&str] = &[
    "date_trunc",
    "date_bin",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "to_timestamp",
    "to_date",
    "timezone",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
];

/// Whether a TypeCast's `type_name` is a date or time type (or an array of one).
fn is_clock_type(type_name: Option<&Value>) -> bool {
    type_name
        .and_then(|t| t.get("names"))
        .and_then(Value::as_array)
        .and_then(|names| names.last())
        .and_then(|n| n.pointer("/node/String/sval"))
        .and_then(Value::as_str)
        .is_some_and(|name| CLOCK_TYPES.contains(&name))
}

/// A ColumnRef's column name (its last field); `None` for `*`.
fn column_name(column_ref: &Value) -> Option<&str> {
    column_ref
        .get("fields")
        .and_then(Value::as_array)
        .and_then(|fields| fields.last())
        .and_then(|f| f.pointer("/node/String/sval"))
        .and_then(Value::as_str)
}

/// Fields of DDL statement nodes that name the object being changed.
const DDL_TARGET_FIELDS: &[&str] = &["relation", "view", "into", "base_stmt", "sequence"];

/// Whether an `AlterTableCmd` takes the table into a parent or out of one.
fn is_inherit_change(cmd: &Value) -> bool {
    use pg_query::protobuf::AlterTableType;
    let subtype = cmd.get("subtype").and_then(Value::as_i64);
    subtype.is_some_and(|s| {
        s == AlterTableType::AtAddInherit as i64 || s == AlterTableType::AtDropInherit as i64
    })
}

impl<'c> Walker<'c> {
    fn new(config: &'c AnalysisConfig) -> Self {
        Walker {
            config,
            read: BTreeSet::new(),
            written: BTreeSet::new(),
            functions: BTreeSet::new(),
            volatile: false,
            datetime_casts: BTreeSet::new(),
            operators: BTreeSet::new(),
            type_names: BTreeSet::new(),
            session_dependent: false,
            locking: false,
            picks_rows: false,
            user_function: false,
            session_effects: BTreeSet::new(),
            modifies: false,
            unsafe_function: false,
            unnamed_writes: false,
            executes: false,
            ctes: Vec::new(),
            dropped_at_commit: Vec::new(),
        }
    }

    /// Walks one top-level statement; returns its kind and whether it may run
    /// on a replica.
    fn statement(&mut self, node: &NodeEnum) -> Result<(StatementKind, bool), SqlError> {
        let tree = serde_json::to_value(node).map_err(|e| SqlError::Internal {
            message: format!("serialising the parse tree: {e}"),
        })?;
        self.modifies = false;
        self.unsafe_function = false;
        self.unnamed_writes = false;
        self.executes = false;
        let locking_before = self.locking;
        self.locking = false;

        let kind = self.kind_and_effects(node);
        self.note_dropped_at_commit(node);
        self.note_made_in_temp_schema(node);
        let read_only = match node {
            NodeEnum::ExplainStmt(explain) => {
                // Without ANALYZE nothing executes: its targets are only read.
                let analyze = explain_analyzes(explain);
                if analyze {
                    self.walk(&tree, false);
                } else {
                    let written = std::mem::take(&mut self.written);
                    // Nor does it take a lock or set anything, or make a table.
                    let effects = self.session_effects.clone();
                    self.walk(&tree, false);
                    self.session_effects = effects;
                    let planned = std::mem::replace(&mut self.written, written);
                    self.read.extend(planned);
                    // Nor is a statement EXECUTE names run.
                    self.executes = false;
                }
                let inner_select = explain
                    .query
                    .as_ref()
                    .and_then(|q| q.node.as_ref())
                    .is_some_and(
                        |n| matches!(n, NodeEnum::SelectStmt(s) if s.into_clause.is_none()),
                    );
                !analyze && inner_select && self.verdict_clean()
            }
            // A view's query runs only when the view is read: its calls take no lock
            // and set nothing now (a TEMP view is still one).
            NodeEnum::ViewStmt(_) => {
                let effects = self.session_effects.clone();
                self.walk(&tree, false);
                let made = std::mem::replace(&mut self.session_effects, effects);
                self.session_effects.extend(made.into_iter().filter(|e| {
                    !matches!(e, SessionEffect::AdvisoryLock | SessionEffect::SetConfig)
                }));
                false
            }
            _ => {
                if let NodeEnum::DropStmt(drop) = node {
                    self.drop_targets(drop);
                }
                self.walk(&tree, false);
                match kind {
                    StatementKind::Select => self.verdict_clean(),
                    StatementKind::Show => true,
                    _ => false,
                }
            }
        };
        self.locking |= locking_before;
        Ok((kind, read_only))
    }

    fn verdict_clean(&self) -> bool {
        !self.modifies && !self.locking && !self.unsafe_function
    }

    /// An object made in the session's temporary schema by naming it (`CREATE TABLE
    /// pg_temp.t`, `pg_temp_3.t`, a view, sequence, type or function there): temporary
    /// as if made with TEMP, though the parse tree does not say so.
    fn note_made_in_temp_schema(&mut self, node: &NodeEnum) {
        fn temp_schema(schema: &str) -> bool {
            schema == "pg_temp"
                || schema
                    .strip_prefix("pg_temp_")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }
        let relation = match node {
            NodeEnum::CreateStmt(c) => c.relation.as_ref(),
            NodeEnum::CreateTableAsStmt(c) => c.into.as_ref().and_then(|i| i.rel.as_ref()),
            NodeEnum::SelectStmt(s) => s.into_clause.as_ref().and_then(|i| i.rel.as_ref()),
            NodeEnum::ViewStmt(v) => v.view.as_ref(),
            NodeEnum::CreateSeqStmt(s) => s.sequence.as_ref(),
            NodeEnum::CompositeTypeStmt(c) => c.typevar.as_ref(),
            _ => None,
        };
        let name = match relation {
            Some(r) if temp_schema(&r.schemaname) => qualified_name(r),
            Some(_) => return,
            None => {
                // Functions and types: a qualified name's parts.
                let parts = match node {
                    NodeEnum::CreateFunctionStmt(f) => &f.funcname,
                    NodeEnum::CreateEnumStmt(e) => &e.type_name,
                    NodeEnum::CreateDomainStmt(d) => &d.domainname,
                    NodeEnum::DefineStmt(d) => &d.defnames,
                    _ => return,
                };
                let parts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match &p.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                match parts.as_slice() {
                    [.., schema, _] if temp_schema(schema) => parts.join("."),
                    _ => return,
                }
            }
        };
        self.session_effects
            .insert(SessionEffect::TempObject { name });
    }

    /// The table a CREATE TEMP TABLE … ON COMMIT DROP (or CREATE TABLE AS, SELECT INTO,
    /// so) makes, which goes with its transaction.
    fn note_dropped_at_commit(&mut self, node: &NodeEnum) {
        use pg_query::protobuf::OnCommitAction;
        let drop = OnCommitAction::OncommitDrop as i32;
        let relation = match node {
            NodeEnum::CreateStmt(c) if c.oncommit == drop => c.relation.as_ref(),
            NodeEnum::CreateTableAsStmt(c) => c
                .into
                .as_ref()
                .filter(|i| i.on_commit == drop)
                .and_then(|i| i.rel.as_ref()),
            NodeEnum::SelectStmt(s) => s
                .into_clause
                .as_ref()
                .filter(|i| i.on_commit == drop)
                .and_then(|i| i.rel.as_ref()),
            _ => None,
        };
        if let Some(r) = relation {
            self.dropped_at_commit.push(qualified_name(r));
        }
    }

    fn kind_and_effects(&mut self, node: &NodeEnum) -> StatementKind {
        use StatementKind as K;
        match node {
            NodeEnum::SelectStmt(s) if s.into_clause.is_some() => K::Ddl,
            NodeEnum::SelectStmt(_) => K::Select,
            NodeEnum::InsertStmt(_) => K::Insert,
            NodeEnum::UpdateStmt(_) => K::Update,
            NodeEnum::DeleteStmt(_) => K::Delete,
            NodeEnum::MergeStmt(_) => K::Merge,
            NodeEnum::CopyStmt(_) => K::Copy,
            NodeEnum::TransactionStmt(_) => K::Transaction,
            NodeEnum::ExplainStmt(_) => K::Explain,
            NodeEnum::VariableShowStmt(_) => K::Show,
            NodeEnum::VariableSetStmt(set) => {
                let reset = match VariableSetKind::try_from(set.kind) {
                    Ok(VariableSetKind::VarReset) => {
                        self.session_effects.insert(SessionEffect::Reset {
                            name: set.name.clone(),
                        });
                        true
                    }
                    Ok(VariableSetKind::VarResetAll) => {
                        self.session_effects.insert(SessionEffect::ResetAll);
                        true
                    }
                    // SET x TO DEFAULT, SET TIME ZONE LOCAL: a RESET (to the start-up
                    // value, where the session had one), tagged SET.
                    Ok(VariableSetKind::VarSetDefault) if !set.is_local => {
                        self.session_effects.insert(SessionEffect::Reset {
                            name: set.name.clone(),
                        });
                        false
                    }
                    // (Both last only as long as the transaction.)
                    Ok(VariableSetKind::VarSetMulti)
                        if set.name == "TRANSACTION" || set.name == "TRANSACTION SNAPSHOT" =>
                    {
                        false
                    }
                    _ => {
                        if !set.is_local {
                            self.session_effects.insert(SessionEffect::Set {
                                name: set.name.clone(),
                            });
                        }
                        false
                    }
                };
                if reset {
                    K::Reset
                } else {
                    K::Set
                }
            }
            NodeEnum::ListenStmt(l) => {
                self.session_effects.insert(SessionEffect::Listen {
                    channel: l.conditionname.clone(),
                });
                K::Other
            }
            NodeEnum::UnlistenStmt(u) => {
                let channel = (!u.conditionname.is_empty()).then(|| u.conditionname.clone());
                self.session_effects
                    .insert(SessionEffect::Unlisten { channel });
                K::Other
            }
            NodeEnum::PrepareStmt(p) => {
                self.session_effects.insert(SessionEffect::Prepare {
                    name: p.name.clone(),
                });
                K::Other
            }
            NodeEnum::DeallocateStmt(d) => {
                let name = (!d.isall && !d.name.is_empty()).then(|| d.name.clone());
                self.session_effects
                    .insert(SessionEffect::Deallocate { name });
                K::Other
            }
            NodeEnum::DiscardStmt(_) => {
                self.session_effects.insert(SessionEffect::Discard);
                K::Other
            }
            NodeEnum::DeclareCursorStmt(c) => {
                const CURSOR_OPT_HOLD: i32 = 0x0020;
                if c.options & CURSOR_OPT_HOLD != 0 {
                    self.session_effects.insert(SessionEffect::HoldCursor {
                        name: c.portalname.clone(),
                    });
                }
                K::Other
            }
            NodeEnum::TruncateStmt(_)
            | NodeEnum::CreateStmt(_)
            | NodeEnum::CreateTableAsStmt(_)
            | NodeEnum::AlterTableStmt(_)
            | NodeEnum::DropStmt(_)
            | NodeEnum::IndexStmt(_)
            | NodeEnum::ViewStmt(_)
            | NodeEnum::RenameStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::GrantStmt(_)
            | NodeEnum::GrantRoleStmt(_)
            | NodeEnum::RefreshMatViewStmt(_)
            | NodeEnum::RuleStmt(_)
            | NodeEnum::DefineStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
            | NodeEnum::AlterObjectSchemaStmt(_)
            | NodeEnum::CreateSeqStmt(_)
            | NodeEnum::AlterSeqStmt(_)
            | NodeEnum::CreateTrigStmt(_)
            | NodeEnum::CreateFunctionStmt(_)
            | NodeEnum::AlterFunctionStmt(_)
            | NodeEnum::CreateSchemaStmt(_)
            | NodeEnum::CreateExtensionStmt(_)
            | NodeEnum::CreateEnumStmt(_)
            | NodeEnum::AlterEnumStmt(_)
            | NodeEnum::CreateDomainStmt(_)
            | NodeEnum::AlterDomainStmt(_)
            | NodeEnum::CreatePolicyStmt(_)
            | NodeEnum::AlterPolicyStmt(_)
            | NodeEnum::CreateForeignTableStmt(_)
            | NodeEnum::CreateStatsStmt(_)
            | NodeEnum::CreateRoleStmt(_)
            | NodeEnum::AlterRoleStmt(_)
            | NodeEnum::DropRoleStmt(_)
            | NodeEnum::CreatedbStmt(_)
            | NodeEnum::DropdbStmt(_)
            | NodeEnum::AlterOwnerStmt(_)
            | NodeEnum::AlterDefaultPrivilegesStmt(_)
            | NodeEnum::CreateTableSpaceStmt(_)
            | NodeEnum::DropTableSpaceStmt(_)
            | NodeEnum::CreatePublicationStmt(_)
            | NodeEnum::AlterPublicationStmt(_)
            | NodeEnum::CreateSubscriptionStmt(_)
            | NodeEnum::AlterSubscriptionStmt(_)
            | NodeEnum::DropSubscriptionStmt(_)
            | NodeEnum::DropOwnedStmt(_)
            | NodeEnum::ReassignOwnedStmt(_)
            | NodeEnum::ImportForeignSchemaStmt(_) => K::Ddl,
            _ => K::Other,
        }
    }

    /// DROP TABLE / VIEW / MATERIALIZED VIEW / FOREIGN TABLE / SEQUENCE name
    /// the dropped relations as lists of strings, not RangeVars.
    fn drop_targets(&mut self, drop: &pg_query::protobuf::DropStmt) {
        let relation_kind = matches!(
            ObjectType::try_from(drop.remove_type),
            Ok(ObjectType::ObjectTable
                | ObjectType::ObjectView
                | ObjectType::ObjectMatview
                | ObjectType::ObjectForeignTable
                | ObjectType::ObjectSequence)
        );
        if !relation_kind {
            return;
        }
        for object in &drop.objects {
            if let Some(NodeEnum::List(list)) = &object.node {
                let name = list
                    .items
                    .iter()
                    .filter_map(|i| match &i.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                if !name.is_empty() {
                    self.written.insert(name);
                }
            }
        }
    }

    fn walk(&mut self, value: &Value, target: bool) {
        match value {
            Value::Array(items) => {
                for item in items {
                    self.walk(item, target);
                }
            }
            Value::Object(map) => self.object(map, target, &[]),
            _ => {}
        }
    }

    /// Walks a JSON object of the tree. `target`: RangeVars below are written
    /// to; `target_fields`: fields of this object whose RangeVars are.
    fn object(&mut self, map: &Map<String, Value>, target: bool, target_fields: &[&str]) {
        if map.contains_key("relname") && map.contains_key("inh") {
            self.range_var(map, target);
            return;
        }
        if map.contains_key("funcname") && map.contains_key("agg_star") {
            self.func_call(map);
        }
        let scope = self.ctes.len();
        if let Some(Value::Object(with)) = map.get("with_clause") {
            if let Some(Value::Array(ctes)) = with.get("ctes") {
                for cte in ctes {
                    if let Some(Value::String(name)) = cte.pointer("/node/CommonTableExpr/ctename")
                    {
                        self.ctes.push(name.clone());
                    }
                }
            }
        }
        for (key, child) in map {
            self.note_operators_and_types(key, child);
            match key.as_str() {
                "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                    self.modifies = true;
                    self.body(child, &["relation"]);
                }
                "CopyStmt" => {
                    let from = child
                        .get("is_from")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    if from {
                        self.modifies = true;
                        self.body(child, &["relation"]);
                    } else {
                        self.body(child, &[]);
                    }
                }
                "TruncateStmt" => {
                    self.modifies = true;
                    self.body(child, &["relations"]);
                }
                "ExecuteStmt" => {
                    self.executes = true;
                    self.walk(child, false);
                }
                "SelectStmt" => {
                    if select_picks_rows(child) {
                        self.picks_rows = true;
                    }
                    self.body(child, &["into_clause"]);
                }
                "LockingClause" | "LockStmt" => {
                    self.locking = true;
                    self.walk(child, false);
                }
                "SqlvalueFunction" => {
                    // CURRENT_DATE … LOCALTIMESTAMP_N are ops 1..=9.
                    if child
                        .get("op")
                        .and_then(Value::as_i64)
                        .is_some_and(|op| (1..=9).contains(&op))
                    {
                        self.volatile = true;
                    }
                }
                "RangeTableSample" => {
                    self.volatile = true;
                    self.walk(child, false);
                }
                // A column of a date or time type a function's record is read into
                // (`jsonb_to_record(…) AS x(a timestamptz)`): text there is converted
                // at run time, and 'now' reads the clock. (In a CREATE TABLE, harmless:
                // DDL is never cached.)
                "ColumnDef" => {
                    if is_clock_type(child.get("type_name")) {
                        self.volatile = true;
                    }
                    let t = target || target_fields.contains(&key.as_str());
                    self.walk(child, t);
                }
                "TypeCast" => {
                    if is_clock_type(child.get("type_name")) {
                        self.converted_to_datetime(child.get("arg"));
                    }
                    let t = target || target_fields.contains(&key.as_str());
                    self.walk(child, t);
                }
                // 'now', 'today', 'tomorrow', 'yesterday': a date/time input reads the
                // clock when the statement runs (typed or coerced, so any such string).
                "AConst" => {
                    let text = child.pointer("/val/Sval/sval").and_then(Value::as_str);
                    if text.is_some_and(functions::reads_clock) {
                        self.volatile = true;
                    }
                }
                k if k.ends_with("Stmt") && is_ddl_tag(k) => {
                    self.modifies = true;
                    self.body(child, DDL_TARGET_FIELDS);
                }
                // `ALTER TABLE c [NO] INHERIT p`: the parent's rows change too.
                "AlterTableCmd" if is_inherit_change(child) => self.body(child, &["def"]),
                k => {
                    let t = target || target_fields.contains(&k);
                    self.walk(child, t);
                }
            }
        }
        self.ctes.truncate(scope);
    }

    /// Notes the operators a node calls, and the types it converts to (see
    /// [`Analysis::operators`] and [`Analysis::type_names`]).
    fn note_operators_and_types(&mut self, key: &str, node: &Value) {
        use pg_query::protobuf::{AExprKind, SubLinkType};
        let last = |names: Option<&Value>| {
            names
                .and_then(Value::as_array)
                .and_then(|names| names.last())
                .and_then(|n| n.pointer("/node/String/sval"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let non_empty = |k: &str| {
            node.get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        let int = |k: &str| node.get(k).and_then(Value::as_i64).unwrap_or(0);
        let (mut equality, mut order) = (false, false);
        match key {
            "AExpr" => {
                let Some(name) = last(node.get("name")) else {
                    return;
                };
                let kind = int("kind");
                let between = [AExprKind::AexprBetween, AExprKind::AexprBetweenSym];
                let not_between = [AExprKind::AexprNotBetween, AExprKind::AexprNotBetweenSym];
                if between.iter().any(|k| *k as i64 == kind) {
                    self.operators.extend([">=".to_string(), "<=".to_string()]);
                } else if not_between.iter().any(|k| *k as i64 == kind) {
                    self.operators.extend(["<".to_string(), ">".to_string()]);
                } else {
                    self.operators.insert(name);
                }
            }
            "SubLink" => match last(node.get("oper_name")) {
                Some(name) => {
                    self.operators.insert(name);
                }
                // `x IN (SELECT …)`.
                None => equality = int("sub_link_type") == SubLinkType::AnySublink as i64,
            },
            "CaseExpr" => equality = node.get("arg").is_some_and(|a| !a.is_null()),
            "JoinExpr" => {
                equality = non_empty("using_clause")
                    || node.get("is_natural").and_then(Value::as_bool) == Some(true);
            }
            "SelectStmt" => {
                equality = select_compares(node);
                order = non_empty("sort_clause");
            }
            // A window: named (WINDOW w AS …), or a call's own (a bare WindowDef).
            "WindowDef" => {
                equality = non_empty("partition_clause");
                order = non_empty("order_clause");
            }
            "FuncCall" => {
                let over = |k: &str| {
                    node.pointer(&format!("/over/{k}"))
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty())
                };
                equality = over("partition_clause")
                    || node.get("agg_distinct").and_then(Value::as_bool) == Some(true);
                order = over("order_clause") || non_empty("agg_order");
            }
            "TypeCast" | "ColumnDef" => {
                if let Some(name) = last(node.get("type_name").and_then(|t| t.get("names"))) {
                    self.type_names.insert(name.to_lowercase());
                }
            }
            _ => {}
        }
        if equality {
            self.operators.insert("=".to_string());
        }
        if order {
            self.operators.insert("<".to_string());
        }
    }

    fn body(&mut self, value: &Value, target_fields: &[&str]) {
        if let Value::Object(map) = value {
            self.object(map, false, target_fields);
        }
    }

    fn range_var(&mut self, map: &Map<String, Value>, target: bool) {
        let part = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
        let (catalog, schema, rel) = (part("catalogname"), part("schemaname"), part("relname"));
        if rel.is_empty() {
            return;
        }
        if !target && schema.is_empty() && self.ctes.iter().any(|c| c == rel) {
            return;
        }
        let mut name = String::with_capacity(catalog.len() + schema.len() + rel.len() + 2);
        for p in [catalog, schema] {
            if !p.is_empty() {
                name.push_str(p);
                name.push('.');
            }
        }
        name.push_str(rel);
        if target {
            if part("relpersistence") == "t" {
                self.session_effects
                    .insert(SessionEffect::TempObject { name: name.clone() });
            }
            self.written.insert(name);
        } else {
            self.read.insert(name);
        }
    }

    /// `arg` (a node) is converted to a date or time type: see
    /// [`Analysis::datetime_casts`].
    fn converted_to_datetime(&mut self, arg: Option<&Value>) {
        let Some(Value::Object(node)) = arg.and_then(|a| a.get("node")) else {
            return;
        };
        let Some((kind, inner)) = node.iter().next() else {
            return;
        };
        match kind.as_str() {
            // A constant is looked at as a constant ('now'), a parameter's value where
            // it is bound.
            "AConst" | "ParamRef" => {}
            "ColumnRef" => match column_name(inner) {
                Some(name) => {
                    self.datetime_casts.insert(name.to_string());
                }
                None => self.volatile = true,
            },
            "TypeCast" if is_clock_type(inner.get("type_name")) => {}
            "FuncCall" => {
                let name = inner
                    .get("funcname")
                    .and_then(Value::as_array)
                    .and_then(|parts| parts.last())
                    .and_then(|p| p.pointer("/node/String/sval"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = inner.get("args").and_then(Value::as_array);
                match (name, args.map(Vec::as_slice)) {
                    _ if DATETIME_RESULTS.contains(&name) => {}
                    // The column's own type.
                    ("min" | "max", Some([arg])) => self.converted_to_datetime(Some(arg)),
                    _ => self.volatile = true,
                }
            }
            _ => self.volatile = true,
        }
    }

    fn func_call(&mut self, map: &Map<String, Value>) {
        let Some(Value::Array(parts)) = map.get("funcname") else {
            return;
        };
        let parts: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
            .collect();
        let name = parts.join(".");
        let builtin = match parts.as_slice() {
            [n] | ["pg_catalog", n] => Some(*n),
            _ => None,
        };
        // `timestamptz(v)`: a conversion, as `v::timestamptz` is.
        if builtin.is_some_and(|f| CLOCK_TYPES.contains(&f)) {
            if let Some(Value::Array(args)) = map.get("args") {
                if let [arg] = args.as_slice() {
                    self.converted_to_datetime(Some(arg));
                }
            }
        }
        let config = self.config;
        let listed = |list: &[String]| list.contains(&name);
        match builtin {
            Some(f) if functions::is_side_effecting(f) => {
                self.unsafe_function = true;
                self.unnamed_writes |= functions::writes_tables(f);
                if functions::is_session_advisory_lock(f) {
                    self.session_effects.insert(SessionEffect::AdvisoryLock);
                }
                if f == "set_config" && !set_config_is_local(map) {
                    self.session_effects.insert(SessionEffect::SetConfig);
                }
            }
            Some(f) if functions::is_known_read_only(f) => {}
            _ if listed(&config.read_only_functions) => self.user_function = true,
            _ => {
                self.unsafe_function = true;
                self.unnamed_writes = true;
                self.user_function = true;
            }
        }
        if let Some(f) = builtin {
            self.volatile |= functions::is_volatile(f);
            self.session_dependent |= functions::is_session_dependent(f);
        }
        self.volatile |= listed(&config.volatile_functions);
        self.functions.insert(name);
    }
}

/// A relation's name as written (`catalog.schema.name`, the parts given), as the
/// walk names it (see `range_var`).
fn qualified_name(r: &pg_query::protobuf::RangeVar) -> String {
    [
        r.catalogname.as_str(),
        r.schemaname.as_str(),
        r.relname.as_str(),
    ]
    .iter()
    .filter(|p| !p.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(".")
}

/// What `set_config_names` gives for a call that names its setting by the column
/// `name` of `pg_settings`: any of the settings it lists may change (never a custom
/// placeholder, which it does not list).
pub const ANY_SETTING: &str = "*";

/// The settings the `set_config(name, value, is_local)` calls of `sql` may set for
/// the session (not those with `is_local` the literal `true`), by the string literal
/// naming each, lower-cased as PostgreSQL folds them, and [`ANY_SETTING`] for a call
/// naming its setting by `pg_settings.name` in one plain SELECT over `pg_settings`
/// alone (pg_dump's `set_config(name, …) FROM pg_settings WHERE name = …`); `None`
/// when a call names
/// its setting otherwise (a parameter, an expression: maybe a custom setting no view
/// lists) or `sql` does not parse. Read from the text itself: an analysis is shared
/// by texts that differ in literals only.
pub fn set_config_names(sql: &str) -> Option<Vec<String>> {
    /// For a query that is one plain SELECT over `pg_settings` alone (no WITH, no
    /// subquery, nothing else in FROM): the names its columns may be qualified by.
    fn settings_scope(tree: &Value) -> Option<Vec<String>> {
        fn count(value: &Value, key: &str) -> usize {
            match value {
                Value::Array(items) => items.iter().map(|v| count(v, key)).sum(),
                Value::Object(map) => {
                    usize::from(map.contains_key(key))
                        + map.values().map(|v| count(v, key)).sum::<usize>()
                }
                _ => 0,
            }
        }
        let stmts = tree.get("stmts")?.as_array()?;
        let [stmt] = stmts.as_slice() else {
            return None;
        };
        let select = stmt.pointer("/stmt/node/SelectStmt")?;
        if count(tree, "SelectStmt") != 1 || select.get("with_clause").is_some_and(|w| !w.is_null())
        {
            return None;
        }
        let [from] = select.get("from_clause")?.as_array()?.as_slice() else {
            return None;
        };
        let range = from.pointer("/node/RangeVar")?;
        let schema = range
            .get("schemaname")
            .and_then(Value::as_str)
            .unwrap_or("");
        if range.get("relname").and_then(Value::as_str) != Some("pg_settings")
            || !matches!(schema, "" | "pg_catalog")
        {
            return None;
        }
        // (Column aliases could give another column the name `name`.)
        let renamed = range
            .pointer("/alias/colnames")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        if renamed {
            return None;
        }
        let mut scope = vec!["pg_settings".to_string()];
        if let Some(alias) = range.pointer("/alias/aliasname").and_then(Value::as_str) {
            scope = vec![alias.to_string()];
        }
        Some(scope)
    }
    /// Whether `arg` is pg_settings' column `name`, bare or qualified by `scope`.
    fn settings_name(arg: &Value, scope: &[String]) -> bool {
        let Some(fields) = arg
            .pointer("/node/ColumnRef/fields")
            .and_then(Value::as_array)
        else {
            return false;
        };
        let parts: Vec<&str> = fields
            .iter()
            .filter_map(|f| f.pointer("/node/String/sval").and_then(Value::as_str))
            .collect();
        parts.len() == fields.len()
            && match parts.as_slice() {
                ["name"] => true,
                [qualifier, "name"] => scope.iter().any(|s| s == qualifier),
                _ => false,
            }
    }
    fn collect(value: &Value, names: &mut Vec<String>, scope: Option<&[String]>) -> bool {
        match value {
            Value::Array(items) => items.iter().all(|item| collect(item, names, scope)),
            Value::Object(map) => {
                // A DO body that may set settings: any may have changed.
                if let Some(body) = map.get("DoStmt").and_then(do_body) {
                    names.extend(crate::procedural::settings_set_by(body).reread());
                }
                if map.contains_key("funcname") && map.contains_key("agg_star") {
                    let parts: Vec<&str> = match map.get("funcname") {
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let set_config = matches!(
                        parts.as_slice(),
                        ["set_config"] | ["pg_catalog", "set_config"]
                    );
                    if set_config && !set_config_is_local(map) {
                        let arg = map.get("args").and_then(|a| a.get(0));
                        let name = arg
                            .and_then(|a| a.pointer("/node/AConst/val/Sval/sval"))
                            .and_then(Value::as_str);
                        let column = arg
                            .zip(scope)
                            .is_some_and(|(arg, scope)| settings_name(arg, scope));
                        match name {
                            Some(name) => names.push(name.to_ascii_lowercase()),
                            None if column => names.push(ANY_SETTING.to_string()),
                            None => return false,
                        }
                    }
                }
                map.values().all(|child| collect(child, names, scope))
            }
            _ => true,
        }
    }
    let parsed = pg_query::parse(sql, 0).ok()?;
    let tree = serde_json::to_value(&parsed.protobuf).ok()?;
    let mut names = Vec::new();
    let scope = settings_scope(&tree);
    if !collect(&tree, &mut names, scope.as_deref()) {
        return None;
    }
    names.sort_unstable();
    names.dedup();
    Some(names)
}

/// `set_config(name, value, true)` with the keyword `true` as third argument.
fn set_config_is_local(map: &Map<String, Value>) -> bool {
    map.get("args")
        .and_then(|a| a.get(2))
        .and_then(|a| a.pointer("/node/AConst/val/Boolval/boolval"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// EXPLAIN executes the statement when ANALYZE is given. Any explicit
/// argument (`ANALYZE off`) also counts as ANALYZE: the parser turns both
/// `off` and the literal `'on'` into a string node, and the verdict must not
/// depend on literal values (the analysis cache ignores them).
fn explain_analyzes(explain: &pg_query::protobuf::ExplainStmt) -> bool {
    explain.options.iter().any(|o| {
        matches!(&o.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze"))
    })
}

fn is_ddl_tag(tag: &str) -> bool {
    [
        "Create",
        "Alter",
        "Drop",
        "Rename",
        "Comment",
        "Grant",
        "Index",
        "View",
        "RefreshMatView",
        "Rule",
        "Define",
        "CompositeType",
        "ImportForeignSchema",
        "Reassign",
    ]
    .iter()
    .any(|p| tag.starts_with(p))
}

/// Rewrites `IN ($1, $2, $3)` as `IN ($1 /*, ... */)` (as PostgreSQL 18's
/// pg_stat_statements shows squashed lists).
fn collapse_param_lists(normalized: &str) -> String {
    let tokens = crate::lexer::significant(normalized);
    let text = |i: usize| &normalized[tokens[i].start..tokens[i].end];
    let mut out = String::with_capacity(normalized.len());
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if t.kind == TokenKind::Word
            && text(i).eq_ignore_ascii_case("in")
            && i + 1 < tokens.len()
            && text(i + 1) == "("
        {
            // ( $a , $b , … )
            let mut j = i + 2;
            let mut count = 0;
            while j < tokens.len() && tokens[j].kind == TokenKind::Param {
                count += 1;
                if j + 1 < tokens.len() && text(j + 1) == "," {
                    j += 2;
                } else {
                    j += 1;
                    break;
                }
            }
            if count >= 2 && j < tokens.len() && text(j) == ")" && text(j - 1) != "," {
                out.push_str(&normalized[copied..tokens[i + 1].start]);
                out.push('(');
                out.push_str(text(i + 2));
                out.push_str(" /*, ... */)");
                copied = tokens[j].end;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&normalized[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index maintenance, CLUSTER, COMMENT and extended statistics change no result;
    /// anything else beside them, or an index expression calling a user function
    /// (run at the build), does.
    #[test]
    fn maintenance_is_what_changes_no_result() {
        let maintenance = |sql: &str| analyze(sql).unwrap().maintenance;
        for sql in [
            "CREATE INDEX t_b ON t (b)",
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON s.t (lower(b))",
            "DROP INDEX t_b",
            "DROP INDEX CONCURRENTLY IF EXISTS s.t_b",
            "ALTER INDEX t_b SET (fillfactor = 70)",
            "REINDEX TABLE t",
            "CLUSTER t USING t_b",
            "CREATE STATISTICS st ON a, b FROM t",
            "DROP STATISTICS st",
            "CREATE INDEX a ON t (b); DROP INDEX a",
        ] {
            assert!(maintenance(sql), "{sql}");
            assert!(!analyze(sql).unwrap().read_only, "{sql}: the primary's");
        }
        for sql in [
            "CREATE INDEX t_f ON t (my_function(b))",
            "CREATE INDEX a ON t (b); INSERT INTO t VALUES (1)",
            "ALTER TABLE t ADD COLUMN z int",
            "ALTER TABLE t RENAME TO u",
            // (ALTER INDEX … RENAME renames a table too; COMMENT is read back.)
            "ALTER INDEX t RENAME TO u",
            "COMMENT ON TABLE t IS 'x'",
            "DROP TABLE t",
            "TRUNCATE t",
            "SELECT 1",
            "CREATE TABLE u (id int)",
        ] {
            assert!(!maintenance(sql), "{sql}");
        }
        // What such DDL changes is never cached.
        for sql in [
            "SELECT id, pg_get_indexdef('t_b'::regclass) FROM t",
            "SELECT id FROM t WHERE to_regclass('t_b') IS NOT NULL",
            "SELECT pg_catalog.pg_index_has_property('t_b'::regclass, 'clusterable') FROM t",
        ] {
            assert!(!analyze(sql).unwrap().cacheable(), "{sql}");
        }
    }

    #[test]
    fn set_config_names_are_read_from_string_literals() {
        let names = |sql| set_config_names(sql);
        let want = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // asyncpg's type introspection.
        assert_eq!(
            names("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new"),
            want(&["jit"])
        );
        assert_eq!(
            names("SELECT pg_catalog.set_config('TimeZone', 'UTC', false), set_config('app.user', $1, false)"),
            want(&["app.user", "timezone"])
        );
        // Local ones last no longer than the transaction.
        assert_eq!(names("SELECT set_config('jit', 'off', true)"), want(&[]));
        assert_eq!(names("SELECT set_config('jit', 'off', $1)"), want(&["jit"]));
        assert_eq!(
            names("SELECT x FROM (SELECT set_config('a.b', '1', false) x) s"),
            want(&["a.b"])
        );
        // Named by a column of pg_settings: any setting it lists.
        assert_eq!(
            names("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'"),
            want(&["*"])
        );
        assert_eq!(
            names("SELECT set_config(s.name, 'on', false), set_config('jit', 'on', false) FROM pg_catalog.pg_settings s"),
            want(&["*", "jit"])
        );
        // Named otherwise: unknown (a custom setting may hide behind a name that only
        // looks like pg_settings').
        for sql in [
            "SELECT set_config(k, v, false) FROM (VALUES ('app.tenant', '42')) c(k, v) WHERE k NOT IN (SELECT name FROM pg_settings)",
            "WITH pg_settings(name) AS (VALUES ('app.tenant')) SELECT set_config(name, '42', false) FROM pg_settings",
            "SELECT set_config(name, '42', false) FROM app.pg_settings",
            "SELECT set_config(t.name, '42', false) FROM pg_settings, t",
            "SELECT set_config(setting, '42', false) FROM pg_settings",
            "SELECT set_config(pg_settings.name, '1', false) FROM pg_settings s",
            "SELECT set_config(name, '42', false) FROM pg_settings s(n, name) WHERE n = 'application_name'",
        ] {
            assert_eq!(names(sql), None, "{sql}");
        }
        assert_eq!(names("SELECT set_config($1, 'off', false)"), None);
        assert_eq!(names("SELECT set_config('j' || 'it', 'off', false)"), None);
        assert_eq!(names("SELECT set_config(name, 'x', false) FROM t"), None);
        assert_eq!(names("SELECT set_config("), None);
        // Another schema's function of that name is not PostgreSQL's.
        assert_eq!(names("SELECT app.set_config(x) FROM t"), want(&[]));
    }

    #[test]
    fn param_lists_collapse_in_normalized_text() {
        assert_eq!(
            collapse_param_lists("SELECT * FROM t WHERE a IN ($1, $2,$3) AND b = $4"),
            "SELECT * FROM t WHERE a IN ($1 /*, ... */) AND b = $4"
        );
        assert_eq!(
            collapse_param_lists("SELECT * FROM t WHERE a IN ($1) AND b IN ($2, c)"),
            "SELECT * FROM t WHERE a IN ($1) AND b IN ($2, c)"
        );
    }
}
