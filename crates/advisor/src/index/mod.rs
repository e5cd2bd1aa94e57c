//! The index advisor: from a workload (pg_stat_statements or a file of SQL), candidate
//! indexes read off each statement's parse tree, costed by the planner with HypoPG
//! hypothetical indexes, and chosen greedily under a storage budget.
//!
//! Selection follows the spirit of "Extend" (Kossmann et al., VLDB 2020): each round
//! re-costs every remaining candidate on top of the indexes already chosen (so
//! interactions count) and takes the one with the best benefit per byte; an index is
//! kept only if it lowers the weighted workload cost by `min_improvement`. A final pass
//! removes chosen indexes that later choices made unnecessary. Candidates that gained
//! nothing in a round are not tried again.

mod candidates;
mod catalog;
mod hypo;
mod shape;

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use tokio_postgres::Client;

use crate::AdvisorError;
use candidates::Candidate;
pub use catalog::quote_ident;
use catalog::Table;
use hypo::{Hypo, Plan, Probe};
use shape::{ParamUse, Pick, Shape};

/// One statement of the workload and how much it counts.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadStatement {
    pub text: String,
    /// Calls (from pg_stat_statements) or 1: a statement's cost is multiplied by it.
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexOptions {
    /// Total estimated size of the recommended indexes, bytes.
    pub budget_bytes: Option<i64>,
    pub max_indexes: usize,
    /// An index must lower the weighted workload cost by this share to be kept.
    pub min_improvement: f64,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            budget_bytes: None,
            max_indexes: 10,
            min_improvement: 0.002,
        }
    }
}

/// What the advisor found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    pub recommendations: Vec<Recommendation>,
    pub statements: Vec<StatementReport>,
    /// Indexes on the workload's tables that no statement's plan uses (unique and
    /// constraint indexes excluded).
    pub unused: Vec<UnusedIndex>,
    /// Weighted planner cost of the evaluated statements, before and after.
    pub cost_before: f64,
    pub cost_after: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub name: String,
    pub table: String,
    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS …`.
    pub definition: String,
    /// HypoPG's size estimate.
    pub bytes: i64,
    /// Indices into `IndexReport::statements` whose plan uses it.
    pub statements: Vec<usize>,
    /// Weighted cost of those statements without and with the recommended set (None
    /// when not verified).
    pub cost_before: f64,
    pub cost_after: Option<f64>,
    /// Costed by the planner with a hypothetical index. GIN indexes, which HypoPG cannot
    /// simulate, are recommended from the operator and the share of rows the statement
    /// keeps, unverified.
    pub verified: bool,
    /// Existing indexes whose keys lead this one's: once it is built they serve nothing
    /// it does not (drop them after checking no other workload needs them).
    pub supersedes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementReport {
    pub text: String,
    pub weight: f64,
    /// Planner cost of one execution before and after (None when skipped).
    pub cost_before: Option<f64>,
    pub cost_after: Option<f64>,
    /// Recommended indexes its new plan uses.
    pub indexes: Vec<String>,
    /// Why the statement was not evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnusedIndex {
    pub name: String,
    pub table: String,
    pub bytes: i64,
    pub definition: String,
    pub drop: String,
}

/// A GIN index is recommended for tables of at least this many rows, when the statement
/// keeps at most this share of them.
const GIN_MIN_ROWS: f64 = 1000.0;
const GIN_MAX_SHARE: f64 = 0.1;

/// A GIN index's size, roughly: the indexed column's average width for every row.
fn gin_bytes(c: &Candidate, t: &Table) -> i64 {
    let width = t
        .columns
        .iter()
        .filter(|col| c.keys.iter().any(|k| k.contains(col.ident.as_str())))
        .filter_map(|col| col.stats.as_ref().map(|s| s.avg_width))
        .fold(0.0, f64::max)
        .max(8.0);
    (width * t.rows.max(1.0)) as i64 + 8192
}

/// Progress: a phase and how far through it.
pub type Progress<'a> = &'a mut (dyn FnMut(&str, usize, usize) + Send);

/// Statements from pg_stat_statements in this database, top `limit` by total time.
pub async fn workload_from_pg_stat_statements(
    client: &Client,
    limit: i64,
) -> Result<Vec<WorkloadStatement>, AdvisorError> {
    let rows = client
        .query(
            r"SELECT s.query, s.calls::float8
                FROM pg_stat_statements s
               WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND s.toplevel
                 AND s.query ~* '^\s*(select|with|update|delete|insert|table)\M'
               ORDER BY s.total_exec_time DESC
               LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(|source| match source.code() {
            Some(c) if c.code() == "42P01" => AdvisorError::NoWorkload {
                reason: "pg_stat_statements is not installed in this database \
                         (CREATE EXTENSION pg_stat_statements, with it in \
                         shared_preload_libraries), so pass --workload FILE"
                    .into(),
            },
            _ => AdvisorError::Query {
                check: "index_advisor.pg_stat_statements",
                source,
            },
        })?;
    Ok(rows
        .into_iter()
        .map(|r| WorkloadStatement {
            text: r.get(0),
            weight: r.get(1),
        })
        .collect())
}

/// Statements from a file of SQL separated by `;`, each with weight 1.
pub fn workload_from_sql(text: &str) -> Vec<WorkloadStatement> {
    let parts = pg_query::split_with_parser(text)
        .or_else(|_| pg_query::split_with_scanner(text))
        .unwrap_or_else(|_| text.split(';').collect());
    parts
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| WorkloadStatement {
            text: s.to_owned(),
            weight: 1.0,
        })
        .collect()
}

/// One workload statement being evaluated.
struct Stmt {
    weight: f64,
    tables: BTreeSet<usize>,
    /// GIN candidates (judged apart: HypoPG cannot simulate them), with the share of the
    /// table's rows their condition keeps, when the planner could estimate it.
    gin: Vec<(Candidate, Option<f64>)>,
    probe: Probe,
    base: Plan,
    current: f64,
}

/// Recommends indexes for `workload`. Reads the catalog and plans only: the database is
/// left unchanged.
pub async fn recommend_indexes(
    client: &Client,
    workload: &[WorkloadStatement],
    options: &IndexOptions,
    progress: Progress<'_>,
) -> Result<IndexReport, AdvisorError> {
    let mut report = IndexReport::default();
    // Parse everything, then load the tables the statements mention.
    let mut parsed = Vec::new();
    let mut names = Vec::new();
    for w in workload {
        match shape::parse_one(&w.text) {
            Ok(node) => {
                for n in shape::relation_names(&node) {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                parsed.push(Ok(node));
            }
            Err(why) => parsed.push(Err(why)),
        }
    }
    let tables = catalog::load(client, &names).await?;
    for t in &tables {
        if t.indexable && t.columns.iter().all(|c| c.stats.is_none()) {
            report.warnings.push(format!(
                "{} has no planner statistics: run ANALYZE {0} for estimates to mean anything",
                t.qualified
            ));
        }
    }

    let hypo = Hypo::open(client).await?;
    let result = run(
        &hypo,
        workload,
        parsed,
        &tables,
        options,
        progress,
        &mut report,
    )
    .await;
    let closed = hypo.close().await;
    result?;
    closed?;
    Ok(report)
}

async fn run(
    hypo: &Hypo<'_>,
    workload: &[WorkloadStatement],
    parsed: Vec<Result<pg_query::NodeEnum, String>>,
    tables: &[Table],
    options: &IndexOptions,
    progress: Progress<'_>,
    report: &mut IndexReport,
) -> Result<(), AdvisorError> {
    // Baseline plans and candidates.
    let mut stmts: Vec<Option<Stmt>> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for (i, (w, node)) in workload.iter().zip(parsed).enumerate() {
        progress("costing the workload", i, workload.len());
        let mut entry = StatementReport {
            text: w.text.clone(),
            weight: w.weight,
            cost_before: None,
            cost_after: None,
            indexes: Vec::new(),
            skipped: None,
        };
        let node = match node {
            Ok(n) => n,
            Err(why) => {
                entry.skipped = Some(why);
                report.statements.push(entry);
                stmts.push(None);
                continue;
            }
        };
        let shape = shape::shape(&node, tables);
        if shape.uses.is_empty() {
            entry.skipped = Some("reads no table of this database".into());
            report.statements.push(entry);
            stmts.push(None);
            continue;
        }
        let statement_probe = probe(&w.text, &shape, tables);
        match hypo.explain(&statement_probe).await? {
            Ok(base) => {
                entry.cost_before = Some(base.cost);
                let mut gin = Vec::new();
                for u in &shape.uses {
                    for c in candidates::for_use(u, tables) {
                        if !c.gin {
                            candidates.push(c);
                            continue;
                        }
                        // The share of rows its condition keeps, by the planner.
                        let condition = u
                            .gin
                            .iter()
                            .find(|(body, _)| c.keys.first() == Some(body))
                            .and_then(|(_, sql)| sql.as_deref());
                        let mut share = None;
                        if let Some(sql) = condition {
                            if let Ok(p) = hypo.explain(&probe(sql, &shape, tables)).await? {
                                share = Some(p.rows / tables[c.table].rows.max(1.0));
                            }
                        }
                        gin.push((c, share));
                    }
                }
                stmts.push(Some(Stmt {
                    weight: w.weight,
                    tables: shape.tables(),
                    gin,
                    probe: statement_probe,
                    current: base.cost,
                    base,
                }));
            }
            Err(message) => {
                entry.skipped = Some(format!("EXPLAIN failed: {message}"));
                stmts.push(None);
            }
        }
        report.statements.push(entry);
    }
    candidates.sort();
    candidates.dedup();
    let total_before: f64 = stmts.iter().flatten().map(|s| s.weight * s.base.cost).sum();
    report.cost_before = total_before;
    // An index must lower the workload's cost as it stands (with the indexes chosen so
    // far) by this share: once a dominant statement is fixed, the rest still count.
    let threshold = |stmts: &[Option<Stmt>]| -> f64 {
        options.min_improvement
            * stmts
                .iter()
                .flatten()
                .map(|s| s.weight * s.current)
                .sum::<f64>()
    };

    // Greedy selection.
    struct Chosen {
        candidate: Candidate,
        oid: u32,
        name: String,
        bytes: i64,
    }
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut active: Vec<bool> = vec![true; candidates.len()];
    let mut used_bytes = 0i64;
    let budget = options.budget_bytes.unwrap_or(i64::MAX);
    let mut round = 0;
    // A statement's cost with the chosen set plus one candidate, kept across rounds:
    // choosing an index on table T changes only the plans of statements that read T,
    // so only those are planned again. Also each candidate's estimated size.
    let mut with_candidate: HashMap<(usize, usize), f64> = HashMap::new();
    let mut sizes: HashMap<usize, i64> = HashMap::new();
    while chosen.len() < options.max_indexes {
        round += 1;
        let mut best: Option<(usize, f64, f64)> = None; // (candidate, gain, score)
        let floor = threshold(&stmts);
        let todo: Vec<usize> = (0..candidates.len()).filter(|&c| active[c]).collect();
        for (n, &c) in todo.iter().enumerate() {
            progress(&format!("choosing index {round}"), n, todo.len());
            let table = candidates[c].table;
            if sizes
                .get(&c)
                .is_some_and(|&b| used_bytes.saturating_add(b) > budget)
            {
                continue;
            }
            let stale: Vec<usize> = stmts
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.as_ref().is_some_and(|s| s.tables.contains(&table))
                        && !with_candidate.contains_key(&(c, *i))
                })
                .map(|(i, _)| i)
                .collect();
            if !stale.is_empty() || !sizes.contains_key(&c) {
                let (oid, _, bytes) = hypo.create(&candidates[c].body(tables)).await?;
                sizes.insert(c, bytes);
                if used_bytes.saturating_add(bytes) <= budget {
                    for i in stale {
                        if let Some(s) = &stmts[i] {
                            with_candidate.insert((c, i), cost(hypo, s).await?.cost);
                        }
                    }
                }
                hypo.drop(oid).await?;
            }
            let bytes = sizes[&c];
            if used_bytes.saturating_add(bytes) > budget {
                continue;
            }
            let mut gain = 0.0;
            for (i, s) in stmts.iter().enumerate() {
                if let Some(s) = s.as_ref().filter(|s| s.tables.contains(&table)) {
                    gain += s.weight * (s.current - with_candidate[&(c, i)]);
                }
            }
            if gain <= 0.0 {
                active[c] = false;
                continue;
            }
            let score = gain / bytes.max(8192) as f64;
            // The best benefit per byte among those that clear the bar.
            if gain >= floor && best.is_none_or(|(_, _, s)| score > s) {
                best = Some((c, gain, score));
            }
        }
        let Some((c, _, _)) = best else { break };
        active[c] = false;
        let (oid, name, bytes) = hypo.create(&candidates[c].body(tables)).await?;
        used_bytes += bytes;
        chosen.push(Chosen {
            candidate: candidates[c].clone(),
            oid,
            name,
            bytes,
        });
        let table = candidates[c].table;
        recost(hypo, &mut stmts, table).await?;
        with_candidate
            .retain(|&(_, i), _| stmts[i].as_ref().is_none_or(|s| !s.tables.contains(&table)));
    }

    // Drop chosen indexes that later ones made unnecessary.
    let mut i = 0;
    while i < chosen.len() {
        progress("pruning", i, chosen.len());
        let table = chosen[i].candidate.table;
        hypo.drop(chosen[i].oid).await?;
        let mut loss = 0.0;
        for s in stmts.iter().flatten() {
            if s.tables.contains(&table) {
                loss += s.weight * (cost(hypo, s).await?.cost - s.current);
            }
        }
        if loss < threshold(&stmts) {
            chosen.remove(i);
            recost(hypo, &mut stmts, table).await?;
        } else {
            let (oid, name, _) = hypo.create(&chosen[i].candidate.body(tables)).await?;
            chosen[i].oid = oid;
            chosen[i].name = name;
            i += 1;
        }
    }

    // Final plans: which statements each index helps.
    let mut plans: Vec<Option<Plan>> = Vec::new();
    let mut total_after = 0.0;
    let mut used_existing: BTreeSet<String> = BTreeSet::new();
    for (i, s) in stmts.iter().enumerate() {
        progress("final plans", i, stmts.len());
        let Some(s) = s else {
            plans.push(None);
            continue;
        };
        let plan = cost(hypo, s).await?;
        total_after += s.weight * plan.cost;
        used_existing.extend(s.base.indexes.iter().cloned());
        used_existing.extend(plan.indexes.iter().cloned());
        report.statements[i].cost_after = Some(plan.cost);
        plans.push(Some(plan));
    }
    report.cost_after = total_after;

    // GIN indexes, which HypoPG cannot simulate: recommended, unverified, for a condition
    // that keeps few rows of a large table.
    let mut gins: Vec<(Candidate, Vec<usize>)> = Vec::new();
    for (i, (s, plan)) in stmts.iter().zip(&plans).enumerate() {
        let (Some(s), Some(plan)) = (s, plan) else {
            continue;
        };
        for (c, share) in &s.gin {
            let t = &tables[c.table];
            // Its condition alone keeps few rows; or, when that could not be estimated,
            // the statement still reads the table sequentially to keep few rows.
            let selective = t.rows >= GIN_MIN_ROWS
                && match share {
                    Some(share) => *share <= GIN_MAX_SHARE,
                    None => plan
                        .seq_scans
                        .iter()
                        .any(|(rel, rows)| *rel == t.name && *rows <= GIN_MAX_SHARE * t.rows),
                };
            if !selective {
                continue;
            }
            match gins.iter_mut().find(|(g, _)| g == c) {
                Some((_, helped)) => helped.push(i),
                None => gins.push((c.clone(), vec![i])),
            }
        }
    }
    gins.sort_by_key(|(_, helped)| std::cmp::Reverse(helped.len()));

    let mut picked: Vec<(Candidate, i64, Option<String>)> = chosen
        .into_iter()
        .map(|c| (c.candidate, c.bytes, Some(c.name)))
        .collect();
    let mut used_bytes: i64 = picked.iter().map(|p| p.1).sum();
    for (c, _) in &gins {
        let bytes = gin_bytes(c, &tables[c.table]);
        if picked.len() < options.max_indexes && used_bytes.saturating_add(bytes) <= budget {
            used_bytes += bytes;
            picked.push((c.clone(), bytes, None));
        }
    }

    let mut names: Vec<String> = Vec::new();
    for (c, bytes, hypo_name) in &picked {
        let base = c.base_name(tables);
        let mut name = base.clone();
        let schema = &tables[c.table].schema;
        let mut n = 2;
        while names.contains(&name) || hypo.relation_exists(schema, &name).await? {
            name = format!("{}_{n}_idx", base.trim_end_matches("_idx"));
            n += 1;
        }
        names.push(name.clone());
        let mut rec = Recommendation {
            definition: format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} {}",
                catalog::quote_ident(&name),
                c.body(tables)
            ),
            name,
            table: tables[c.table].qualified.clone(),
            bytes: *bytes,
            verified: hypo_name.is_some(),
            statements: Vec::new(),
            cost_before: 0.0,
            cost_after: hypo_name.as_ref().map(|_| 0.0),
            supersedes: c.supersedes(&tables[c.table]),
        };
        for (i, (s, plan)) in stmts.iter().zip(&plans).enumerate() {
            let (Some(s), Some(plan)) = (s, plan) else {
                continue;
            };
            let helps = match hypo_name {
                Some(h) => plan.indexes.contains(h),
                None => gins.iter().any(|(g, helped)| g == c && helped.contains(&i)),
            };
            if helps {
                report.statements[i].indexes.push(rec.name.clone());
                rec.statements.push(i);
                rec.cost_before += s.weight * s.base.cost;
                if let Some(a) = &mut rec.cost_after {
                    *a += s.weight * plan.cost;
                }
            }
        }
        report.recommendations.push(rec);
    }

    // Existing indexes no plan uses, on tables the workload reads.
    let touched: BTreeSet<usize> = stmts
        .iter()
        .flatten()
        .flat_map(|s| s.tables.iter().copied())
        .collect();
    for &t in &touched {
        for ix in &tables[t].indexes {
            if !ix.enforces && ix.valid && !used_existing.contains(&ix.relname) {
                report.unused.push(UnusedIndex {
                    name: ix.name.clone(),
                    table: tables[t].qualified.clone(),
                    bytes: ix.bytes,
                    definition: ix.definition.clone(),
                    drop: format!("DROP INDEX CONCURRENTLY IF EXISTS {}", ix.name),
                });
            }
        }
    }
    Ok(())
}

/// A statement's plan with the hypothetical indexes now in place. A statement whose
/// baseline planned cannot fail now; if it does, it counts at its old cost.
async fn cost(hypo: &Hypo<'_>, s: &Stmt) -> Result<Plan, AdvisorError> {
    Ok(hypo.explain(&s.probe).await?.unwrap_or_else(|_| Plan {
        cost: s.current,
        ..Plan::default()
    }))
}

/// Re-plans the statements on `table` with the current index set.
async fn recost(
    hypo: &Hypo<'_>,
    stmts: &mut [Option<Stmt>],
    table: usize,
) -> Result<(), AdvisorError> {
    for s in stmts.iter_mut().flatten() {
        if s.tables.contains(&table) {
            s.current = cost(hypo, s).await?.cost;
        }
    }
    Ok(())
}

/// The statement as the planner will see it: each `$n` replaced by a plausible value
/// from pg_stats for the column it is compared with; when some have none, prepared and
/// planned generically with those renumbered.
fn probe(text: &str, shape: &Shape, tables: &[Table]) -> Probe {
    let spans = pgopt_sql::parameter_spans(text);
    if spans.is_empty() {
        return Probe::Plain(text.to_owned());
    }
    let mut missing: Vec<u32> = Vec::new();
    let mut out = String::with_capacity(text.len() + 16);
    let mut at = 0;
    for (range, n) in &spans {
        out.push_str(&text[at..range.start]);
        at = range.end;
        match shape.params.get(n).and_then(|u| value(u, tables)) {
            Some(v) => out.push_str(&v),
            None => {
                let k = match missing.iter().position(|m| m == n) {
                    Some(k) => k,
                    None => {
                        missing.push(*n);
                        missing.len() - 1
                    }
                };
                out.push_str(&format!("${}", k + 1));
            }
        }
    }
    out.push_str(&text[at..]);
    if missing.is_empty() {
        Probe::Plain(out)
    } else {
        // PREPARE must see $1..$k all used, which holds: they were numbered in order
        // of first appearance.
        Probe::Generic {
            text: out,
            params: missing.len(),
        }
    }
}

/// A plausible value for a parameter, as SQL.
fn value(u: &ParamUse, tables: &[Table]) -> Option<String> {
    match u {
        ParamUse::Limit => Some("20".into()),
        ParamUse::Offset => Some("0".into()),
        ParamUse::Column {
            table,
            column,
            pick,
        } => {
            let stats = tables[*table].column(column)?.stats.as_ref()?;
            let h = &stats.histogram;
            let at = |share: f64| h.get(((h.len().saturating_sub(1)) as f64 * share) as usize);
            // A typical value, not the most common one: planning for the heaviest
            // value would favour plans that only suit it.
            let typical = || {
                let c = &stats.common_values;
                at(0.5).or_else(|| c.get(c.len() / 2))
            };
            let v = match pick {
                Pick::Common => typical(),
                Pick::Low => at(0.1).or_else(|| stats.common_values.first()),
                Pick::High => at(0.9).or_else(|| stats.common_values.first()),
            }?;
            Some(quote_literal(v))
        }
    }
}

fn quote_literal(v: &str) -> String {
    let body = v.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}
