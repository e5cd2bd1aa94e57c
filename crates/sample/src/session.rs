//! One workload connection: every query prepared once and reused, parameters drawn
//! from the session's own seeded generator.

use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Statement};

use crate::generate::Dataset;
use crate::rng::{sub_seed, Rng, Weighted};
use crate::workload::{queries, QueryKind, QuerySpec};
use crate::Error;

/// The prepared statements of one query.
#[derive(Clone)]
struct Prepared {
    main: Statement,
    per_row: Option<Statement>,
}

/// A connection running workload queries.
pub struct Session {
    client: Client,
    dataset: Arc<Dataset>,
    statements: Vec<Option<Prepared>>,
    rng: Rng,
    mix: Weighted,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("prepared", &self.statements.iter().flatten().count())
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session on `client` drawing parameters for `dataset` (use the scale and
    /// seed the database was loaded with, so ids and e-mails exist) from a generator
    /// seeded with `seed`. Nothing is prepared yet; see [`Session::prepare_all`].
    pub fn new(client: Client, dataset: Arc<Dataset>, seed: u64) -> Session {
        Session {
            client,
            dataset,
            statements: vec![None; queries().len()],
            rng: Rng::new(sub_seed(seed, "workload session")),
            mix: Weighted::new(queries().iter().map(|q| u64::from(q.weight))),
        }
    }

    /// Prepares every query not prepared yet; stops at the first failure. A query
    /// left unprepared is prepared again when it is first executed.
    pub async fn prepare_all(&mut self) -> Result<(), Error> {
        for index in 0..queries().len() {
            self.prepared(index).await?;
        }
        Ok(())
    }

    /// A query index chosen by weight.
    pub fn pick(&mut self) -> usize {
        self.mix.sample(&mut self.rng)
    }

    /// Whether the connection has closed (then the session is of no further use).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// A token to cancel the query in flight from elsewhere.
    pub fn cancel_token(&self) -> CancelToken {
        self.client.cancel_token()
    }

    /// Runs query `index` of [`queries`] once with fresh parameters; returns the rows
    /// it returned or changed (for the N+1 pattern, all rows of all statements).
    pub async fn execute(&mut self, index: usize) -> Result<u64, Error> {
        let spec: &'static QuerySpec = &queries()[index];
        let params = spec.params(&self.dataset, &mut self.rng);
        let prepared = self.prepared(index).await?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let query_error = |source| Error::Query {
            query: spec.name,
            source,
        };
        match (&prepared.per_row, spec.kind) {
            (Some(per_row), _) => self
                .n_plus_one(&prepared.main, per_row, &refs)
                .await
                .map_err(query_error),
            (None, QueryKind::Read) => self
                .client
                .query(&prepared.main, &refs)
                .await
                .map(|rows| rows.len() as u64)
                .map_err(query_error),
            (None, QueryKind::Write) => self
                .client
                .execute(&prepared.main, &refs)
                .await
                .map_err(query_error),
        }
    }

    /// Runs the query named `name` once, see [`Session::execute`].
    pub async fn execute_named(&mut self, name: &str) -> Result<u64, Error> {
        let index = queries()
            .iter()
            .position(|q| q.name == name)
            .ok_or_else(|| Error::UnknownQuery {
                name: name.to_string(),
            })?;
        self.execute(index).await
    }

    /// The list query, then the per-row query for each row, in one transaction.
    async fn n_plus_one(
        &mut self,
        list: &Statement,
        per_row: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let transaction = self.client.transaction().await?;
        let rows = transaction.query(list, params).await?;
        let mut total = rows.len() as u64;
        for row in &rows {
            if let Some(id) = row.try_get::<_, Option<i64>>(1)? {
                total += transaction.query(per_row, &[&id]).await?.len() as u64;
            }
        }
        transaction.commit().await?;
        Ok(total)
    }

    async fn prepared(&mut self, index: usize) -> Result<Prepared, Error> {
        if let Some(prepared) = &self.statements[index] {
            return Ok(prepared.clone());
        }
        let spec = &queries()[index];
        let prepare_error = |source| Error::Prepare {
            query: spec.name,
            source,
        };
        let main = self.client.prepare(spec.sql).await.map_err(prepare_error)?;
        let per_row = match spec.per_row_sql {
            Some(sql) => Some(self.client.prepare(sql).await.map_err(prepare_error)?),
            None => None,
        };
        let prepared = Prepared { main, per_row };
        self.statements[index] = Some(prepared.clone());
        Ok(prepared)
    }
}
