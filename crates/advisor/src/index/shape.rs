//! How one statement uses each table, read from PostgreSQL's parse tree (pg_query):
//! columns compared for equality, ranges, sorts, operators only GIN serves, constant
//! predicates a partial index could hold, and every column it touches. Parameters
//! (`$n`) are matched to the column they are compared with, so the evaluator can give
//! them plausible values.

use std::collections::{BTreeMap, BTreeSet};

use pg_query::protobuf::Node;
use pg_query::protobuf::{
    a_const, AExprKind, BoolExprType, NullTestType, SelectStmt, SortByDir, SortByNulls, SubLinkType,
};
use pg_query::NodeEnum;

use super::catalog::{quote_ident, Table};

/// An index key: a column or an expression on one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    /// As it goes into CREATE INDEX (`email`, `lower(email)`).
    pub sql: String,
    /// The plain column, when the key is one.
    pub column: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SortKey {
    pub key: Key,
    /// `DESC`, `NULLS FIRST`… as written; empty for the default.
    pub order: String,
}

/// A constant condition (`deleted_at IS NULL`, `status = 'active'`, `NOT done`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Predicate {
    pub sql: String,
    pub column: String,
    /// The share of rows it keeps, from pg_stats; 1.0 when unknown.
    pub selectivity: f64,
}

/// One table reference in a statement.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableUse {
    /// Index into the catalog's tables.
    pub table: usize,
    pub eq: Vec<Key>,
    pub range: Vec<Key>,
    pub sort: Vec<SortKey>,
    /// GIN indexes: their body (`tags`, `to_tsvector('english'::regconfig, body)`) and
    /// `SELECT 1 FROM table WHERE <the condition>`, for the planner to estimate the share
    /// of rows the condition keeps (None when it cannot be written alone).
    pub gin: Vec<(String, Option<String>)>,
    /// The table reference as written (for such probes).
    pub range_var: Option<pg_query::protobuf::RangeVar>,
    pub predicates: Vec<Predicate>,
    /// Every column touched (quoted identifiers).
    pub columns: BTreeSet<String>,
    /// `*` or `t.*` reads every column.
    pub star: bool,
    /// Rows come back to the client (a SELECT), so covering indexes can matter.
    pub read: bool,
}

/// How a parameter is used, for choosing a plausible value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParamUse {
    /// Compared with a column: equal, or the lower/upper bound of a range.
    Column {
        table: usize,
        column: String,
        pick: Pick,
    },
    Limit,
    Offset,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pick {
    Common,
    Low,
    High,
}

#[derive(Debug, Default)]
pub(crate) struct Shape {
    pub uses: Vec<TableUse>,
    pub params: BTreeMap<u32, ParamUse>,
}

impl Shape {
    pub fn tables(&self) -> BTreeSet<usize> {
        self.uses.iter().map(|u| u.table).collect()
    }
}

/// Table names (schema, name) a statement mentions in FROM, UPDATE, DELETE, JOIN…
pub(crate) fn relation_names(stmt: &NodeEnum) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for (node, _, _, _) in stmt.nodes() {
        if let pg_query::NodeRef::RangeVar(r) = node {
            let schema = (!r.schemaname.is_empty()).then(|| r.schemaname.clone());
            let name = (schema, r.relname.clone());
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The one statement of `sql`, or why it cannot be advised on.
pub(crate) fn parse_one(sql: &str) -> Result<NodeEnum, String> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| format!("does not parse: {e}"))?;
    let mut stmts = parsed.protobuf.stmts.into_iter();
    let (Some(raw), None) = (stmts.next(), stmts.next()) else {
        return Err("not exactly one statement".into());
    };
    let node = raw
        .stmt
        .and_then(|n| n.node)
        .ok_or_else(|| "empty statement".to_string())?;
    match &node {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => {
            Err("SELECT INTO creates a table".into())
        }
        NodeEnum::SelectStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::InsertStmt(_) => Ok(node),
        _ => Err("not a SELECT, INSERT, UPDATE or DELETE".into()),
    }
}

/// Reads the shape of a parsed statement against the catalog.
pub(crate) fn shape(stmt: &NodeEnum, tables: &[Table]) -> Shape {
    let mut w = Walker {
        tables,
        shape: Shape::default(),
        ctes: BTreeSet::new(),
    };
    match stmt {
        NodeEnum::SelectStmt(s) => w.select(s, None),
        NodeEnum::UpdateStmt(u) => {
            w.with(u.with_clause.as_ref(), None);
            let mut scope = Scope::default();
            if let Some(r) = &u.relation {
                w.range_var(r, false, &mut scope);
            }
            let mut quals = Vec::new();
            for f in &u.from_clause {
                w.join_item(f, &mut scope, &mut quals, None);
            }
            for t in &u.target_list {
                if let Some(NodeEnum::ResTarget(rt)) = &t.node {
                    if let Some(v) = &rt.val {
                        w.scan(v, &scope);
                    }
                }
            }
            w.where_(u.where_clause.as_deref(), &quals, &scope);
        }
        NodeEnum::DeleteStmt(d) => {
            w.with(d.with_clause.as_ref(), None);
            let mut scope = Scope::default();
            if let Some(r) = &d.relation {
                w.range_var(r, false, &mut scope);
            }
            let mut quals = Vec::new();
            for f in &d.using_clause {
                w.join_item(f, &mut scope, &mut quals, None);
            }
            w.where_(d.where_clause.as_deref(), &quals, &scope);
        }
        NodeEnum::InsertStmt(i) => {
            w.with(i.with_clause.as_ref(), None);
            if let Some(NodeEnum::SelectStmt(s)) =
                i.select_stmt.as_ref().and_then(|n| n.node.as_ref())
            {
                w.select(s, None);
            }
        }
        _ => {}
    }
    for u in &mut w.shape.uses {
        dedup(&mut u.eq);
        dedup(&mut u.range);
        u.range.retain(|k| !u.eq.contains(k));
        dedup(&mut u.gin);
    }
    w.shape
}

fn dedup<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::new();
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

/// The table references visible in one query block, innermost first through `parent`.
#[derive(Default)]
struct Scope<'p> {
    /// (name it is referred to by, index into `Shape::uses`).
    entries: Vec<(String, usize)>,
    parent: Option<&'p Scope<'p>>,
}

/// A column reference resolved: which table use, which column, and whether it belongs
/// to an enclosing block (a correlated reference).
struct Resolved {
    use_: usize,
    column: String,
    outer: bool,
}

struct Walker<'t> {
    tables: &'t [Table],
    shape: Shape,
    ctes: BTreeSet<String>,
}

fn inner(node: &Node) -> Option<&NodeEnum> {
    node.node.as_ref()
}

fn string(node: &Node) -> Option<&str> {
    match inner(node)? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

fn param(node: &Node) -> Option<u32> {
    match inner(node)? {
        NodeEnum::ParamRef(p) => u32::try_from(p.number).ok(),
        NodeEnum::TypeCast(c) => param(c.arg.as_deref()?),
        _ => None,
    }
}

/// A literal as SQL text and as pg_stats prints it.
fn literal(node: &Node) -> Option<(String, String)> {
    let NodeEnum::AConst(c) = inner(node)? else {
        return None;
    };
    Some(match c.val.as_ref()? {
        a_const::Val::Ival(i) => (i.ival.to_string(), i.ival.to_string()),
        a_const::Val::Fval(f) => (f.fval.clone(), f.fval.clone()),
        a_const::Val::Boolval(b) => {
            let v = if b.boolval { "true" } else { "false" };
            (v.into(), if b.boolval { "t" } else { "f" }.into())
        }
        a_const::Val::Sval(s) => (format!("'{}'", s.sval.replace('\'', "''")), s.sval.clone()),
        a_const::Val::Bsval(_) => return None,
    })
}

fn op_name(names: &[Node]) -> Option<&str> {
    names.last().and_then(string)
}

/// The direct sub-expressions of an expression node (enough to find every column
/// reference and subquery in the expressions statements use).
fn children(node: &NodeEnum) -> Vec<&Node> {
    let mut out: Vec<&Node> = Vec::new();
    match node {
        NodeEnum::AExpr(e) => out.extend(e.lexpr.as_deref().into_iter().chain(e.rexpr.as_deref())),
        NodeEnum::BoolExpr(b) => out.extend(&b.args),
        NodeEnum::FuncCall(f) => {
            out.extend(&f.args);
            out.extend(f.agg_filter.as_deref());
            out.extend(&f.agg_order);
        }
        NodeEnum::TypeCast(c) => out.extend(c.arg.as_deref()),
        NodeEnum::ResTarget(r) => out.extend(r.val.as_deref()),
        NodeEnum::NullTest(n) => out.extend(n.arg.as_deref()),
        NodeEnum::BooleanTest(n) => out.extend(n.arg.as_deref()),
        NodeEnum::List(l) => out.extend(&l.items),
        NodeEnum::SortBy(s) => out.extend(s.node.as_deref()),
        NodeEnum::RowExpr(r) => out.extend(&r.args),
        NodeEnum::CoalesceExpr(c) => out.extend(&c.args),
        NodeEnum::MinMaxExpr(c) => out.extend(&c.args),
        NodeEnum::AIndirection(i) => out.extend(i.arg.as_deref()),
        NodeEnum::AArrayExpr(a) => out.extend(&a.elements),
        NodeEnum::CollateClause(c) => out.extend(c.arg.as_deref()),
        NodeEnum::CaseExpr(c) => {
            out.extend(c.arg.as_deref());
            out.extend(&c.args);
            out.extend(c.defresult.as_deref());
        }
        NodeEnum::CaseWhen(w) => {
            out.extend(w.expr.as_deref().into_iter().chain(w.result.as_deref()))
        }
        NodeEnum::SubLink(s) => out.extend(s.testexpr.as_deref()),
        _ => {}
    }
    out
}

/// `col = constant` becomes a partial-index predicate only for columns with at most this
/// many distinct values.
const PARTIAL_MAX_DISTINCT: f64 = 20.0;

/// Functions whose result an expression index can hold (immutable, common in lookups).
const INDEXABLE_FUNCTIONS: &[&str] = &["lower", "upper", "md5", "btrim", "ltrim", "rtrim", "abs"];

impl Walker<'_> {
    fn with(&mut self, with: Option<&pg_query::protobuf::WithClause>, parent: Option<&Scope>) {
        let Some(with) = with else { return };
        for cte in &with.ctes {
            if let Some(NodeEnum::CommonTableExpr(c)) = inner(cte) {
                self.ctes.insert(c.ctename.clone());
                if let Some(q) = c.ctequery.as_deref().and_then(inner) {
                    self.statement(q, parent);
                }
            }
        }
    }

    fn statement(&mut self, node: &NodeEnum, parent: Option<&Scope>) {
        if let NodeEnum::SelectStmt(s) = node {
            self.select(s, parent);
        } else {
            // A writable CTE: its tables and predicates matter the same way.
            let nested = shape(node, self.tables);
            self.shape.uses.extend(nested.uses);
            self.shape.params.extend(nested.params);
        }
    }

    fn select(&mut self, s: &SelectStmt, parent: Option<&Scope>) {
        self.with(s.with_clause.as_ref(), parent);
        if s.larg.is_some() || s.rarg.is_some() {
            if let Some(l) = &s.larg {
                self.select(l, parent);
            }
            if let Some(r) = &s.rarg {
                self.select(r, parent);
            }
            return;
        }
        let mut scope = Scope {
            entries: Vec::new(),
            parent,
        };
        let mut quals: Vec<&Node> = Vec::new();
        let first = self.shape.uses.len();
        for f in &s.from_clause {
            self.join_item(f, &mut scope, &mut quals, parent);
        }
        for u in first..self.shape.uses.len() {
            self.shape.uses[u].read = true;
        }
        for t in &s.target_list {
            self.scan(t, &scope);
        }
        self.where_(s.where_clause.as_deref(), &quals, &scope);
        for g in &s.group_clause {
            self.scan(g, &scope);
        }
        if let Some(h) = &s.having_clause {
            self.scan(h, &scope);
        }
        self.sort(&s.sort_clause, &scope);
        if let Some(n) = s.limit_count.as_deref().and_then(param) {
            self.shape.params.insert(n, ParamUse::Limit);
        }
        if let Some(n) = s.limit_offset.as_deref().and_then(param) {
            self.shape.params.insert(n, ParamUse::Offset);
        }
    }

    fn range_var(&mut self, r: &pg_query::protobuf::RangeVar, read: bool, scope: &mut Scope) {
        if r.schemaname.is_empty() && self.ctes.contains(&r.relname) {
            return;
        }
        let found = self.tables.iter().position(|t| {
            t.name == r.relname && (r.schemaname.is_empty() || t.schema == r.schemaname)
        });
        let Some(table) = found else { return };
        let use_ = self.shape.uses.len();
        self.shape.uses.push(TableUse {
            table,
            read,
            range_var: Some(r.clone()),
            ..TableUse::default()
        });
        let name = r
            .alias
            .as_ref()
            .map(|a| a.aliasname.clone())
            .unwrap_or_else(|| r.relname.clone());
        scope.entries.push((name, use_));
    }

    fn join_item<'n>(
        &mut self,
        node: &'n Node,
        scope: &mut Scope,
        quals: &mut Vec<&'n Node>,
        parent: Option<&Scope>,
    ) {
        match inner(node) {
            Some(NodeEnum::RangeVar(r)) => self.range_var(r, true, scope),
            Some(NodeEnum::JoinExpr(j)) => {
                let before = scope.entries.len();
                if let Some(l) = &j.larg {
                    self.join_item(l, scope, quals, parent);
                }
                if let Some(r) = &j.rarg {
                    self.join_item(r, scope, quals, parent);
                }
                if let Some(q) = &j.quals {
                    quals.push(q);
                }
                // USING (col): both sides compare col for equality.
                for u in &j.using_clause {
                    let Some(col) = string(u) else { continue };
                    for &(_, use_) in &scope.entries[before..] {
                        self.eq_column(use_, col);
                    }
                }
            }
            Some(NodeEnum::RangeSubselect(sub)) => {
                if let Some(NodeEnum::SelectStmt(s)) = sub.subquery.as_deref().and_then(inner) {
                    if sub.lateral {
                        let lateral = Scope {
                            entries: scope.entries.clone(),
                            parent,
                        };
                        self.select(s, Some(&lateral));
                    } else {
                        self.select(s, parent);
                    }
                }
            }
            _ => {}
        }
    }

    fn eq_column(&mut self, use_: usize, column: &str) {
        let table = &self.tables[self.shape.uses[use_].table];
        if let Some(c) = table.column(column) {
            let key = Key {
                sql: c.ident.clone(),
                column: Some(c.name.clone()),
            };
            let u = &mut self.shape.uses[use_];
            u.columns.insert(c.ident.clone());
            u.eq.push(key);
        }
    }

    fn resolve(&self, fields: &[Node], scope: &Scope) -> Option<Resolved> {
        let names: Vec<&str> = fields.iter().map(string).collect::<Option<_>>()?;
        let (qualifier, column) = match names.as_slice() {
            [c] => (None, *c),
            [q, c] | [_, q, c] => (Some(*q), *c),
            _ => return None,
        };
        let mut s = Some(scope);
        let mut outer = false;
        while let Some(sc) = s {
            let matches: Vec<usize> = sc
                .entries
                .iter()
                .filter(|(name, use_)| {
                    qualifier.is_none_or(|q| q == name)
                        && self.tables[self.shape.uses[*use_].table]
                            .column(column)
                            .is_some()
                })
                .map(|(_, u)| *u)
                .collect();
            match matches.as_slice() {
                [u] => {
                    return Some(Resolved {
                        use_: *u,
                        column: column.to_owned(),
                        outer,
                    })
                }
                [] => {}
                _ => return None,
            }
            // A qualifier naming something in this block that lacks the column.
            if qualifier.is_some_and(|q| sc.entries.iter().any(|(n, _)| n == q)) {
                return None;
            }
            s = sc.parent;
            outer = true;
        }
        None
    }

    fn ident(&self, r: &Resolved) -> String {
        quote_ident(&r.column)
    }

    /// An index key on a table of this block: a column, or an indexable function of one.
    fn key(&self, node: &Node, scope: &Scope) -> Option<(usize, Key)> {
        match inner(node)? {
            NodeEnum::ColumnRef(c) => {
                let r = self.resolve(&c.fields, scope)?;
                if r.outer {
                    return None;
                }
                Some((
                    r.use_,
                    Key {
                        sql: self.ident(&r),
                        column: Some(r.column),
                    },
                ))
            }
            NodeEnum::FuncCall(f) => {
                let name = op_name(&f.funcname)?;
                if !INDEXABLE_FUNCTIONS.contains(&name) || f.args.len() != 1 {
                    return None;
                }
                let (use_, k) = self.key(&f.args[0], scope)?;
                k.column.as_ref()?;
                Some((
                    use_,
                    Key {
                        sql: format!("{name}({})", k.sql),
                        column: None,
                    },
                ))
            }
            _ => None,
        }
    }

    /// Whether an expression reads a column of `use_` (so it is not a constant for it).
    fn reads(&self, node: &Node, use_: usize, scope: &Scope) -> bool {
        match inner(node) {
            Some(NodeEnum::ColumnRef(c)) => self
                .resolve(&c.fields, scope)
                .is_none_or(|r| r.use_ == use_),
            Some(NodeEnum::SubLink(_)) => true,
            Some(n) => children(n).into_iter().any(|c| self.reads(c, use_, scope)),
            None => false,
        }
    }

    /// Whether every column an expression reads belongs to `use_` in this block (no
    /// other table, no outer reference, no subquery).
    fn confined_to(&self, node: &Node, use_: usize, scope: &Scope) -> bool {
        match inner(node) {
            Some(NodeEnum::ColumnRef(c)) => self
                .resolve(&c.fields, scope)
                .is_some_and(|r| r.use_ == use_ && !r.outer),
            Some(NodeEnum::SubLink(_)) => false,
            Some(n) => children(n)
                .into_iter()
                .all(|c| self.confined_to(c, use_, scope)),
            None => true,
        }
    }

    /// Marks columns and walks subqueries inside any expression.
    fn scan(&mut self, node: &Node, scope: &Scope) {
        match inner(node) {
            Some(NodeEnum::ColumnRef(c)) => {
                if c.fields
                    .last()
                    .is_some_and(|f| matches!(inner(f), Some(NodeEnum::AStar(_))))
                {
                    let q = (c.fields.len() == 2)
                        .then(|| string(&c.fields[0]))
                        .flatten();
                    for (name, u) in &scope.entries {
                        if q.is_none_or(|q| q == name) {
                            self.shape.uses[*u].star = true;
                        }
                    }
                } else if let Some(r) = self.resolve(&c.fields, scope) {
                    let ident = self.ident(&r);
                    self.shape.uses[r.use_].columns.insert(ident);
                }
            }
            Some(NodeEnum::SubLink(s)) => {
                if let Some(t) = &s.testexpr {
                    self.scan(t, scope);
                }
                if let Some(NodeEnum::SelectStmt(sub)) = s.subselect.as_deref().and_then(inner) {
                    self.select(sub, Some(scope));
                }
            }
            Some(n) => {
                for c in children(n) {
                    self.scan(c, scope);
                }
            }
            None => {}
        }
    }

    fn where_(&mut self, clause: Option<&Node>, quals: &[&Node], scope: &Scope) {
        for q in quals.iter().copied().chain(clause) {
            self.qual(q, scope);
        }
    }

    /// One conjunct of WHERE or ON.
    fn qual(&mut self, node: &Node, scope: &Scope) {
        self.scan(node, scope);
        match inner(node) {
            Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::AndExpr as i32 => {
                for a in &b.args {
                    self.qual(a, scope);
                }
            }
            Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::NotExpr as i32 => {
                if let Some((u, k)) = b.args.first().and_then(|a| self.key(a, scope)) {
                    self.predicate(u, &k, format!("NOT {}", k.sql), Some("f"));
                }
            }
            Some(NodeEnum::ColumnRef(_)) => {
                if let Some((u, k)) = self.key(node, scope) {
                    self.predicate(u, &k, k.sql.clone(), Some("t"));
                }
            }
            Some(NodeEnum::NullTest(n)) => {
                let Some((u, k)) = n.arg.as_deref().and_then(|a| self.key(a, scope)) else {
                    return;
                };
                let is_null = n.nulltesttype == NullTestType::IsNull as i32;
                let sql = format!("{} IS {}NULL", k.sql, if is_null { "" } else { "NOT " });
                self.predicate(u, &k, sql, None);
                let table = &self.tables[self.shape.uses[u].table];
                if let (Some(col), Some(p)) = (&k.column, self.shape.uses[u].predicates.last_mut())
                {
                    let nulls = table
                        .column(col)
                        .and_then(|c| c.stats.as_ref())
                        .map(|s| s.null_frac);
                    if let Some(f) = nulls {
                        p.selectivity = if is_null { f } else { 1.0 - f };
                    }
                }
            }
            Some(NodeEnum::SubLink(s)) if s.sub_link_type == SubLinkType::AnySublink as i32 => {
                if let Some((u, k)) = s.testexpr.as_deref().and_then(|t| self.key(t, scope)) {
                    self.shape.uses[u].eq.push(k);
                }
            }
            Some(NodeEnum::AExpr(e)) => self.comparison(e, scope),
            _ => {}
        }
    }

    fn predicate(&mut self, use_: usize, key: &Key, sql: String, value: Option<&str>) {
        let Some(column) = key.column.clone() else {
            return;
        };
        let table = &self.tables[self.shape.uses[use_].table];
        let selectivity = value
            .and_then(|v| table.eq_selectivity(&column, v))
            .unwrap_or(1.0);
        self.shape.uses[use_].predicates.push(Predicate {
            sql,
            column,
            selectivity,
        });
    }

    fn comparison(&mut self, e: &pg_query::protobuf::AExpr, scope: &Scope) {
        let (Some(l), r) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
            return;
        };
        let kind = e.kind;
        if kind == AExprKind::AexprIn as i32 || kind == AExprKind::AexprOpAny as i32 {
            if op_name(&e.name) != Some("=") {
                return;
            }
            if let Some((u, k)) = self.key(l, scope) {
                if r.is_none_or(|r| !self.reads(r, u, scope)) {
                    self.mark_params(r, u, &k, Pick::Common);
                    self.shape.uses[u].eq.push(k);
                }
            }
            return;
        }
        if kind == AExprKind::AexprBetween as i32 {
            if let Some((u, k)) = self.key(l, scope) {
                if let Some(NodeEnum::List(list)) = r.and_then(inner) {
                    if list.items.iter().all(|i| !self.reads(i, u, scope)) {
                        if let [lo, hi] = list.items.as_slice() {
                            self.mark_param(lo, u, &k, Pick::Low);
                            self.mark_param(hi, u, &k, Pick::High);
                        }
                        self.shape.uses[u].range.push(k);
                    }
                }
            }
            return;
        }
        if kind != AExprKind::AexprOp as i32 {
            return;
        }
        let (Some(op), Some(r)) = (op_name(&e.name), r) else {
            return;
        };
        match op {
            "=" | "<" | ">" | "<=" | ">=" => {
                for (this, other, flipped) in [(l, r, false), (r, l, true)] {
                    let Some((u, k)) = self.key(this, scope) else {
                        continue;
                    };
                    if self.reads(other, u, scope) {
                        continue;
                    }
                    // `x < $1` bounds x from above; `$1 < x` from below.
                    let pick = match (op, flipped) {
                        ("=", _) => Pick::Common,
                        ("<" | "<=", false) | (">" | ">=", true) => Pick::Low,
                        _ => Pick::High,
                    };
                    self.mark_param(other, u, &k, pick);
                    if op == "=" {
                        // A constant worth a partial index names one of a few values
                        // (`status = 'active'`), not one of many (`id = 42`).
                        let few = k.column.as_deref().is_some_and(|c| {
                            let t = &self.tables[self.shape.uses[u].table];
                            t.column(c)
                                .and_then(|c| c.stats.as_ref())
                                .is_some_and(|s| s.distinct(t.rows) <= PARTIAL_MAX_DISTINCT)
                        });
                        if let Some((sql, value)) = literal(other).filter(|_| few) {
                            self.predicate(u, &k, format!("{} = {sql}", k.sql), Some(&value));
                        }
                        self.shape.uses[u].eq.push(k);
                    } else {
                        self.shape.uses[u].range.push(k);
                    }
                }
            }
            "@@" => {
                for (this, other) in [(l, r), (r, l)] {
                    if let Some((u, body)) = self.text_search(this, scope) {
                        if !self.reads(other, u, scope) {
                            let probe = self.condition_probe(u, e, scope);
                            self.shape.uses[u].gin.push((body, probe));
                        }
                    }
                }
            }
            "@>" | "<@" | "?" | "?|" | "?&" | "&&" => {
                let Some((u, k)) = self.key(l, scope) else {
                    return;
                };
                let Some(column) = &k.column else { return };
                let table = &self.tables[self.shape.uses[u].table];
                let Some(c) = table.column(column) else {
                    return;
                };
                let served = if c.type_name == "jsonb" {
                    matches!(op, "@>" | "?" | "?|" | "?&")
                } else {
                    c.is_array && matches!(op, "@>" | "<@" | "&&")
                };
                if served && !self.reads(r, u, scope) {
                    let probe = self.condition_probe(u, e, scope);
                    self.shape.uses[u].gin.push((k.sql, probe));
                }
            }
            _ => {}
        }
    }

    /// `SELECT 1 FROM <the table as written> WHERE <e>`: the planner's estimate of the
    /// rows one condition keeps. None when the condition refers to other tables or the
    /// deparser fails.
    fn condition_probe(
        &self,
        use_: usize,
        e: &pg_query::protobuf::AExpr,
        scope: &Scope,
    ) -> Option<String> {
        use pg_query::protobuf::{AConst, Integer, LimitOption, ResTarget, SetOperation};
        let expr = Node {
            node: Some(NodeEnum::AExpr(Box::new(e.clone()))),
        };
        if !self.confined_to(&expr, use_, scope) {
            return None;
        }
        let one = Node {
            node: Some(NodeEnum::AConst(AConst {
                val: Some(a_const::Val::Ival(Integer { ival: 1 })),
                ..AConst::default()
            })),
        };
        let stmt = SelectStmt {
            target_list: vec![Node {
                node: Some(NodeEnum::ResTarget(Box::new(ResTarget {
                    val: Some(Box::new(one)),
                    ..ResTarget::default()
                }))),
            }],
            from_clause: vec![Node {
                node: Some(NodeEnum::RangeVar(self.shape.uses[use_].range_var.clone()?)),
            }],
            where_clause: Some(Box::new(expr)),
            limit_option: LimitOption::Default as i32,
            op: SetOperation::SetopNone as i32,
            ..SelectStmt::default()
        };
        let node = NodeEnum::SelectStmt(Box::new(stmt));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            node.deparse(pg_query::DeparseOptions::default())
        }))
        .ok()?
        .ok()
    }

    /// `tsv_column` or `to_tsvector('config', column)` (the one-argument form depends
    /// on default_text_search_config, so no index can hold it).
    fn text_search(&self, node: &Node, scope: &Scope) -> Option<(usize, String)> {
        match inner(node)? {
            NodeEnum::ColumnRef(_) => {
                let (u, k) = self.key(node, scope)?;
                let table = &self.tables[self.shape.uses[u].table];
                (table.column(k.column.as_deref()?)?.type_name == "tsvector").then_some((u, k.sql))
            }
            NodeEnum::FuncCall(f) if op_name(&f.funcname) == Some("to_tsvector") => {
                let [config, arg] = f.args.as_slice() else {
                    return None;
                };
                let (config, _) = literal(config)?;
                let (u, k) = self.key(arg, scope)?;
                Some((u, format!("to_tsvector({config}::regconfig, {})", k.sql)))
            }
            _ => None,
        }
    }

    fn mark_params(&mut self, node: Option<&Node>, use_: usize, key: &Key, pick: Pick) {
        let Some(node) = node else { return };
        if param(node).is_some() {
            self.mark_param(node, use_, key, pick);
        } else if let Some(NodeEnum::List(l)) = inner(node) {
            for i in &l.items {
                self.mark_param(i, use_, key, pick);
            }
        }
    }

    fn mark_param(&mut self, node: &Node, use_: usize, key: &Key, pick: Pick) {
        let (Some(n), Some(column)) = (param(node), &key.column) else {
            return;
        };
        self.shape.params.insert(
            n,
            ParamUse::Column {
                table: self.shape.uses[use_].table,
                column: column.clone(),
                pick,
            },
        );
    }

    fn sort(&mut self, clause: &[Node], scope: &Scope) {
        let mut keys: Vec<(usize, SortKey)> = Vec::new();
        for s in clause {
            self.scan(s, scope);
            let Some(NodeEnum::SortBy(by)) = inner(s) else {
                return;
            };
            let Some((u, key)) = by.node.as_deref().and_then(|n| self.key(n, scope)) else {
                return;
            };
            let mut order = String::new();
            if by.sortby_dir == SortByDir::SortbyDesc as i32 {
                order.push_str(" DESC");
            } else if by.sortby_dir == SortByDir::SortbyUsing as i32 {
                return;
            }
            if by.sortby_nulls == SortByNulls::SortbyNullsFirst as i32 {
                order.push_str(" NULLS FIRST");
            } else if by.sortby_nulls == SortByNulls::SortbyNullsLast as i32 {
                order.push_str(" NULLS LAST");
            }
            keys.push((u, SortKey { key, order }));
        }
        // Only a sort entirely on one table can come from one index.
        let Some(&(u, _)) = keys.first() else { return };
        if keys.iter().all(|(v, _)| *v == u) {
            let mut sort: Vec<SortKey> = keys.into_iter().map(|(_, k)| k).collect();
            // One direction throughout: a backward scan serves it, so keep ASC keys.
            if sort.iter().all(|k| k.order == " DESC") {
                for k in &mut sort {
                    k.order.clear();
                }
            }
            self.shape.uses[u].sort = sort;
        }
    }
}
