//! The planner's view through HypoPG: EXPLAIN costs of a statement with hypothetical
//! indexes that exist only in this backend's memory, so nothing is built.
//!
//! When the hypopg extension is not created in the database, it is created inside a
//! transaction that is rolled back at the end, so the database is left as it was; the
//! tables' AccessShare locks are then held until the run ends (with a lock_timeout).

use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::AdvisorError;

/// How a statement is costed: as text with every parameter given a value, or prepared
/// and planned generically when some parameter has no plausible value.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    Plain(String),
    Generic { text: String, params: usize },
}

/// A statement's plan: total cost and the indexes it scans.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub cost: f64,
    /// Rows the plan returns.
    pub rows: f64,
    pub indexes: Vec<String>,
    /// Sequential scans: relation name and the rows the planner expects them to keep.
    pub seq_scans: Vec<(String, f64)>,
}

pub(crate) struct Hypo<'c> {
    client: &'c Client,
    /// The extension's schema, quoted.
    schema: String,
    in_transaction: bool,
}

fn query_error(check: &'static str) -> impl Fn(tokio_postgres::Error) -> AdvisorError {
    move |source| AdvisorError::Query { check, source }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

impl<'c> Hypo<'c> {
    pub async fn open(client: &'c Client) -> Result<Hypo<'c>, AdvisorError> {
        let q = query_error("index_advisor.hypopg");
        let schema_of = "SELECT quote_ident(n.nspname) FROM pg_extension e
                           JOIN pg_namespace n ON n.oid = e.extnamespace
                          WHERE e.extname = 'hypopg'";
        let mut in_transaction = false;
        let schema = match client.query_opt(schema_of, &[]).await.map_err(&q)? {
            Some(row) => row.get::<_, String>(0),
            None => {
                let available = client
                    .query_opt(
                        "SELECT current_setting('server_version_num')::int / 10000
                          WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions
                                             WHERE name = 'hypopg')",
                        &[],
                    )
                    .await
                    .map_err(&q)?;
                if let Some(row) = available {
                    return Err(AdvisorError::HypoPgMissing { major: row.get(0) });
                }
                client
                    .batch_execute("BEGIN; SET LOCAL lock_timeout = '5s'")
                    .await
                    .map_err(&q)?;
                if let Err(e) = client.batch_execute("CREATE EXTENSION hypopg").await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(AdvisorError::HypoPgCreate {
                        message: db_message(&e),
                    });
                }
                in_transaction = true;
                client
                    .query_one(schema_of, &[])
                    .await
                    .map_err(&q)?
                    .get::<_, String>(0)
            }
        };
        let set = if in_transaction { "SET LOCAL" } else { "SET" };
        client
            .batch_execute(&format!(
                "{set} plan_cache_mode = force_generic_plan; {set} statement_timeout = '60s';
                 {set} lock_timeout = '5s'"
            ))
            .await
            .map_err(&q)?;
        let hypo = Hypo {
            client,
            schema,
            in_transaction,
        };
        hypo.deallocate_probe().await?;
        hypo.reset().await?;
        Ok(hypo)
    }

    /// Drops every hypothetical index and, when the extension was created for this run,
    /// rolls it back.
    pub async fn close(self) -> Result<(), AdvisorError> {
        let q = query_error("index_advisor.hypopg");
        if self.in_transaction {
            self.client.batch_execute("ROLLBACK").await.map_err(q)
        } else {
            self.reset().await?;
            self.client
                .batch_execute("RESET plan_cache_mode; RESET statement_timeout; RESET lock_timeout")
                .await
                .map_err(q)
        }
    }

    /// Drops the probe's prepared statement if a failed run left it (only that one: the
    /// caller's own prepared statements on this connection stay).
    async fn deallocate_probe(&self) -> Result<(), AdvisorError> {
        let q = query_error("index_advisor.explain");
        let left = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_prepared_statements WHERE name = 'pgopt_probe'",
                &[],
            )
            .await
            .map_err(&q)?;
        if left.is_some() {
            self.client
                .batch_execute("DEALLOCATE pgopt_probe")
                .await
                .map_err(&q)?;
        }
        Ok(())
    }

    async fn reset(&self) -> Result<(), AdvisorError> {
        self.client
            .batch_execute(&format!("SELECT {}.hypopg_reset()", self.schema))
            .await
            .map_err(query_error("index_advisor.hypopg"))
    }

    /// Creates a hypothetical index (`body` is `ON table (…)…`); its oid, name and
    /// estimated size in bytes.
    pub async fn create(&self, body: &str) -> Result<(u32, String, i64), AdvisorError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT indexrelid, indexname::text, {0}.hypopg_relation_size(indexrelid)::int8
                       FROM {0}.hypopg_create_index($1)",
                    self.schema
                ),
                &[&format!("CREATE INDEX {body}")],
            )
            .await
            .map_err(query_error("index_advisor.hypopg_create_index"))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// Whether `schema.name` names a relation already (an index name must be new).
    pub async fn relation_exists(&self, schema: &str, name: &str) -> Result<bool, AdvisorError> {
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n
                                    ON n.oid = c.relnamespace
                                 WHERE n.nspname = $1 AND c.relname = $2)",
                &[&schema, &name],
            )
            .await
            .map_err(query_error("index_advisor.names"))?;
        Ok(row.get(0))
    }

    pub async fn drop(&self, oid: u32) -> Result<(), AdvisorError> {
        self.client
            .execute(
                &format!("SELECT {}.hypopg_drop_index($1)", self.schema),
                &[&oid],
            )
            .await
            .map_err(query_error("index_advisor.hypopg_drop_index"))?;
        Ok(())
    }

    /// The plan of one statement; an Err is the server's message (the statement is then
    /// left out of the workload).
    pub async fn explain(&self, probe: &Probe) -> Result<Result<Plan, String>, AdvisorError> {
        // A statement may end in a `--` comment: a newline ends it before what follows.
        let body = match probe {
            Probe::Plain(text) => format!("EXPLAIN (FORMAT JSON) {text}\n"),
            Probe::Generic { text, params } => {
                let nulls = vec!["NULL"; *params].join(", ");
                format!(
                    "PREPARE pgopt_probe AS {text}\n;
                     EXPLAIN (FORMAT JSON) EXECUTE pgopt_probe({nulls});
                     DEALLOCATE pgopt_probe"
                )
            }
        };
        let sql = if self.in_transaction {
            format!("SAVEPOINT pgopt_probe; {body}; RELEASE pgopt_probe")
        } else {
            body
        };
        match self.client.simple_query(&sql).await {
            Ok(messages) => {
                let json = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                Ok(json
                    .as_deref()
                    .and_then(parse_plan)
                    .ok_or_else(|| "EXPLAIN returned no plan".to_string()))
            }
            Err(e) if e.as_db_error().is_some() => {
                if self.in_transaction {
                    self.client
                        .batch_execute("ROLLBACK TO pgopt_probe; RELEASE pgopt_probe")
                        .await
                        .map_err(query_error("index_advisor.explain"))?;
                }
                // PREPARE is not transactional: a failed batch can leave it behind.
                self.deallocate_probe().await?;
                Ok(Err(db_message(&e)))
            }
            Err(source) => Err(AdvisorError::Query {
                check: "index_advisor.explain",
                source,
            }),
        }
    }
}

fn parse_plan(json: &str) -> Option<Plan> {
    let v: Value = serde_json::from_str(json).ok()?;
    let plan = v.get(0)?.get("Plan")?;
    let mut out = Plan {
        cost: plan.get("Total Cost")?.as_f64()?,
        rows: plan.get("Plan Rows").and_then(Value::as_f64).unwrap_or(0.0),
        ..Plan::default()
    };
    collect(plan, &mut out);
    Some(out)
}

fn collect(v: &Value, out: &mut Plan) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(name)) = m.get("Index Name") {
                if !out.indexes.contains(name) {
                    out.indexes.push(name.clone());
                }
            }
            if m.get("Node Type").and_then(Value::as_str) == Some("Seq Scan") {
                if let (Some(rel), Some(rows)) = (
                    m.get("Relation Name").and_then(Value::as_str),
                    m.get("Plan Rows").and_then(Value::as_f64),
                ) {
                    out.seq_scans.push((rel.to_owned(), rows));
                }
            }
            for x in m.values() {
                collect(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}
