//! Loading the sample into a database: create the tables, stream every table's rows
//! with `COPY … FROM STDIN`, add primary and foreign keys, set the identity
//! sequences, commit, then ANALYZE.
//!
//! Everything up to the commit runs in one transaction, so a failed load leaves the
//! database as it was. Tables are created in that transaction, which lets COPY use
//! `FREEZE` (rows are written frozen and all-visible, so no later VACUUM is needed
//! for index-only scans) — except the partitioned `audit_log`, which PostgreSQL does
//! not allow.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Client;

use crate::generate::{Chunk, Dataset};
use crate::layout::Counts;
use crate::schema::{audit_partitions_sql, foreign_keys_sql, primary_keys_sql, Table, TABLES_SQL};
use crate::Error;

/// The largest scale [`load`] accepts (about a billion rows).
pub const MAX_SCALE: f64 = 1000.0;

/// Chunks generated ahead of the COPY stream.
const CHUNKS_AHEAD: usize = 4;

/// What to load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Data size: 1.0 is about 1,000,000 rows; every table gets at least one row.
    pub scale: f64,
    /// Seed of the generator: the same seed and scale load the same rows.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            scale: 1.0,
            seed: 42,
        }
    }
}

/// The step a load is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPhase {
    /// Creating the tables and partitions.
    Schema,
    /// Streaming rows into `table`.
    Copy,
    /// Adding `table`'s primary key.
    PrimaryKeys,
    /// Adding (and so validating) a foreign key of `table`.
    ForeignKeys,
    /// Collecting statistics of `table`, after the commit.
    Analyze,
}

/// Progress of a load, reported after every step and every COPY chunk (about 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    pub phase: LoadPhase,
    /// The table being worked on (empty while creating the schema).
    pub table: &'static str,
    /// Rows of `table` sent so far.
    pub table_rows_done: u64,
    /// Rows `table` will have.
    pub table_rows: u64,
    /// Rows of all tables sent so far.
    pub rows_done_total: u64,
    /// Rows of all tables, as in [`plan`].
    pub rows_total: u64,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Rows stored per table, in load order.
    pub rows_per_table: Vec<(&'static str, u64)>,
    pub total_rows: u64,
    /// Bytes of COPY text sent.
    pub copy_bytes: u64,
    /// The whole load, from the first statement to the end of ANALYZE.
    pub elapsed: Duration,
    /// From the start until every row was stored (checks, generator set-up, creating
    /// the tables, streaming the rows).
    pub copy_elapsed: Duration,
    /// Adding primary and foreign keys (validating the foreign keys) and committing.
    pub keys_elapsed: Duration,
    pub analyze_elapsed: Duration,
}

/// Rows per table at `scale`, in load order; the same for every seed.
pub fn plan(scale: f64) -> Vec<(&'static str, u64)> {
    let counts = Counts::new(scale);
    Table::ALL
        .iter()
        .map(|t| (t.name(), counts.get(*t)))
        .collect()
}

/// Creates the sample schema in the current schema of `client`'s database and loads
/// it. Fails with [`Error::AlreadyExists`] if any sample table is already there (see
/// [`drop_schema`]); on any other failure the transaction is rolled back.
pub async fn load(
    client: &Client,
    opts: &LoadOptions,
    progress: &mut (dyn FnMut(LoadProgress) + Send),
) -> Result<LoadReport, Error> {
    if !(opts.scale.is_finite() && opts.scale > 0.0 && opts.scale <= MAX_SCALE) {
        return Err(Error::InvalidScale {
            scale: opts.scale,
            max: MAX_SCALE,
        });
    }
    let started = Instant::now();
    let existing = existing_tables(client).await?;
    if !existing.is_empty() {
        return Err(Error::AlreadyExists { tables: existing });
    }
    let (scale, seed) = (opts.scale, opts.seed);
    let dataset = tokio::task::spawn_blocking(move || Arc::new(Dataset::new(scale, seed)))
        .await
        .map_err(|e| Error::Generator {
            table: "(layout)",
            reason: e.to_string(),
        })?;

    execute(client, "BEGIN", "starting the load transaction").await?;
    let mut loader = Loader {
        client,
        dataset,
        progress,
        rows_done_total: 0,
        rows_total: plan(scale).iter().map(|(_, n)| n).sum(),
    };
    let loaded = loader.load_in_transaction().await;
    let (rows_per_table, copy_bytes, copied_at) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::warn!(error = %rollback, "rolling back the failed load");
            }
            return Err(e);
        }
    };
    execute(client, "COMMIT", "committing the load").await?;
    let copy_elapsed = copied_at - started;
    let keys_elapsed = copied_at.elapsed();

    let analyze_started = Instant::now();
    for table in Table::ALL {
        loader.report(LoadPhase::Analyze, table, loader.dataset.rows(table));
        let sql = format!("ANALYZE {}", table.name());
        execute(client, &sql, &sql).await?;
    }
    let total_rows = rows_per_table.iter().map(|(_, n)| n).sum();
    let report = LoadReport {
        rows_per_table,
        total_rows,
        copy_bytes,
        elapsed: started.elapsed(),
        copy_elapsed,
        keys_elapsed,
        analyze_elapsed: analyze_started.elapsed(),
    };
    tracing::info!(
        rows = report.total_rows,
        secs = report.elapsed.as_secs_f64(),
        scale,
        seed,
        "sample loaded"
    );
    Ok(report)
}

/// The sample tables that exist in the current schema.
pub async fn existing_tables(client: &Client) -> Result<Vec<String>, Error> {
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relname = ANY($1::text[]) \
             ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|source| Error::Schema {
            step: "looking for existing sample tables".into(),
            source,
        })?;
    rows.iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Schema {
            step: "reading the existing table names".into(),
            source,
        })
}

/// Drops the sample tables (and the audit log's partitions) if they exist. Fails,
/// changing nothing, if other objects depend on them.
pub async fn drop_schema(client: &Client) -> Result<(), Error> {
    let names: Vec<&str> = Table::ALL.iter().rev().map(|t| t.name()).collect();
    let sql = format!("DROP TABLE IF EXISTS {}", names.join(", "));
    execute(client, &sql, "dropping the sample tables").await
}

async fn execute(client: &Client, sql: &str, step: &str) -> Result<(), Error> {
    client
        .batch_execute(sql)
        .await
        .map_err(|source| Error::Schema {
            step: step.to_string(),
            source,
        })
}

/// State of one load.
struct Loader<'a> {
    client: &'a Client,
    dataset: Arc<Dataset>,
    progress: &'a mut (dyn FnMut(LoadProgress) + Send),
    rows_done_total: u64,
    rows_total: u64,
}

/// Rows per table, COPY bytes, and when the last row was stored.
type Loaded = (Vec<(&'static str, u64)>, u64, Instant);

impl Loader<'_> {
    fn report(&mut self, phase: LoadPhase, table: Table, table_rows_done: u64) {
        (self.progress)(LoadProgress {
            phase,
            table: table.name(),
            table_rows_done,
            table_rows: self.dataset.rows(table),
            rows_done_total: self.rows_done_total,
            rows_total: self.rows_total,
        });
    }

    async fn load_in_transaction(&mut self) -> Result<Loaded, Error> {
        (self.progress)(LoadProgress {
            phase: LoadPhase::Schema,
            table: "",
            table_rows_done: 0,
            table_rows: 0,
            rows_done_total: 0,
            rows_total: self.rows_total,
        });
        // Sorting the primary keys' entries is the slow part of adding them.
        execute(
            self.client,
            "SET LOCAL maintenance_work_mem = '256MB'",
            "setting maintenance_work_mem",
        )
        .await?;
        let schema = format!("{TABLES_SQL}{}", audit_partitions_sql());
        execute(self.client, &schema, "creating the sample tables").await?;

        let mut rows_per_table = Vec::with_capacity(Table::ALL.len());
        let mut copy_bytes = 0;
        for table in Table::ALL {
            let (rows, bytes) = self.copy_table(table).await?;
            rows_per_table.push((table.name(), rows));
            copy_bytes += bytes;
        }
        let copied_at = Instant::now();
        tracing::debug!(copy_bytes, "sample rows copied");

        for (table, sql) in primary_keys_sql() {
            self.report(LoadPhase::PrimaryKeys, table, self.dataset.rows(table));
            execute(self.client, &sql, &sql).await?;
        }
        for (name, sql) in foreign_keys_sql() {
            if let Some(table) = Table::ALL.iter().find(|t| t.name() == name) {
                self.report(LoadPhase::ForeignKeys, *table, self.dataset.rows(*table));
            }
            execute(self.client, &sql, &sql).await?;
        }
        // Ids were loaded explicitly: move each identity sequence past them.
        let setvals: Vec<String> = Table::ALL
            .iter()
            .filter(|t| t.has_identity())
            .map(|t| {
                format!(
                    "setval(pg_get_serial_sequence('{}', 'id'), {})",
                    t.name(),
                    self.dataset.rows(*t)
                )
            })
            .collect();
        let sql = format!("SELECT {}", setvals.join(", "));
        execute(self.client, &sql, "setting the identity sequences").await?;
        Ok((rows_per_table, copy_bytes, copied_at))
    }

    /// Streams `table`'s rows, generated on a blocking thread while the previous
    /// chunks travel; returns the rows stored and the bytes sent.
    async fn copy_table(&mut self, table: Table) -> Result<(u64, u64), Error> {
        let expected = self.dataset.rows(table);
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Chunk>(CHUNKS_AHEAD);
        let dataset = Arc::clone(&self.dataset);
        let producer = tokio::task::spawn_blocking(move || {
            for chunk in dataset.chunks(table) {
                if sender.blocking_send(chunk).is_err() {
                    break; // the COPY failed and stopped listening
                }
            }
        });

        let freeze = if table == Table::AuditLog {
            ""
        } else {
            " WITH (FREEZE)"
        };
        let sql = format!(
            "COPY {} ({}) FROM STDIN{freeze}",
            table.name(),
            table.columns()
        );
        let copy_error = |rows_sent: u64| {
            move |source| Error::Copy {
                table: table.name(),
                rows_sent,
                source,
            }
        };
        let sink = self
            .client
            .copy_in::<_, Bytes>(&sql)
            .await
            .map_err(copy_error(0))?;
        let mut sink = pin!(sink);
        let (mut rows_sent, mut bytes_sent) = (0u64, 0u64);
        self.report(LoadPhase::Copy, table, 0);
        while let Some(chunk) = chunks.recv().await {
            bytes_sent += chunk.data.len() as u64;
            sink.send(Bytes::from(chunk.data))
                .await
                .map_err(copy_error(rows_sent))?;
            rows_sent += chunk.rows;
            self.rows_done_total += chunk.rows;
            self.report(LoadPhase::Copy, table, rows_sent);
        }
        // A generator that panicked ends the stream early: never commit a short table.
        producer.await.map_err(|e| Error::Generator {
            table: table.name(),
            reason: e.to_string(),
        })?;
        let stored = sink
            .as_mut()
            .finish()
            .await
            .map_err(copy_error(rows_sent))?;
        if stored != expected {
            return Err(Error::RowCount {
                table: table.name(),
                stored,
                expected,
            });
        }
        Ok((stored, bytes_sent))
    }
}
