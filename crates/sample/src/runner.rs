//! Running the workload: `clients` concurrent connections for a while, each picking
//! queries by weight with its own seeded generator and timing every call.
//!
//! Only the plain tokio-postgres client API is used (connect, prepare, query,
//! transactions, cancel requests), so the same run works against PostgreSQL directly
//! or through a proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::error::describe;
use crate::generate::Dataset;
use crate::load::MAX_SCALE;
use crate::report::{self, QueryStats, WorkloadReport};
use crate::rng::sub_seed;
use crate::session::Session;
use crate::Error;

/// How long to wait between reconnection attempts after a connection dropped.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// How long the cancel request for the query in flight at the end may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(1);

/// How to run the workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadOptions {
    /// Concurrent connections, at least 1.
    pub clients: usize,
    /// How long to run; must be above zero.
    pub duration: Duration,
    /// Seed of the query mix and parameters; use the load's seed so the parameters
    /// (e-mails in particular) match the data.
    pub seed: u64,
    /// The scale the database was loaded with, so ids stay in range.
    pub scale: f64,
    /// Stop after this many queries in total (over all clients), even before
    /// `duration` is up.
    pub max_queries: Option<u64>,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 4,
            duration: Duration::from_secs(10),
            seed: 42,
            scale: 1.0,
            max_queries: None,
        }
    }
}

/// Runs the workload against the database `config` points to (loaded with the
/// sample at `opts.scale`). Query errors are counted per query, with the first
/// message kept; the run fails only if the options are invalid or no connection
/// could be opened at all.
pub async fn run(
    config: tokio_postgres::Config,
    opts: &WorkloadOptions,
) -> Result<WorkloadReport, Error> {
    validate(opts)?;
    let (scale, seed) = (opts.scale, opts.seed);
    let dataset = tokio::task::spawn_blocking(move || Arc::new(Dataset::new(scale, seed)))
        .await
        .map_err(|e| Error::Client {
            reason: format!("building the parameter space: {e}"),
        })?;

    let mut connecting = Vec::with_capacity(opts.clients);
    for client in 0..opts.clients {
        let (config, dataset) = (config.clone(), Arc::clone(&dataset));
        connecting.push(tokio::spawn(async move {
            connect(&config, dataset, client_seed(seed, client, 0)).await
        }));
    }
    let mut sessions = Vec::with_capacity(opts.clients);
    let mut first_failure = None;
    let mut failed_connections = 0;
    for (client, handle) in connecting.into_iter().enumerate() {
        match handle.await.map_err(|e| Error::Client {
            reason: e.to_string(),
        })? {
            Ok(session) => sessions.push((client, session)),
            Err(e) => {
                tracing::warn!(client, error = %describe(&e), "workload connection failed");
                failed_connections += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    if sessions.is_empty() {
        if let Some(source) = first_failure {
            return Err(Error::Connect {
                clients: opts.clients,
                source,
            });
        }
    }

    let started = Instant::now();
    let deadline = started
        .checked_add(opts.duration)
        .unwrap_or_else(|| far_future(started));
    let budget = opts
        .max_queries
        .map(|max| (Arc::new(AtomicU64::new(0)), max));
    let clients = sessions.len();
    let mut running = Vec::with_capacity(clients);
    for (client, session) in sessions {
        let driver = Driver {
            client,
            seed,
            config: config.clone(),
            dataset: Arc::clone(&dataset),
            deadline,
            budget: budget.clone(),
        };
        running.push(tokio::spawn(driver.drive(session)));
    }
    let mut totals = QueryStats::for_all_queries()?;
    for handle in running {
        let stats = handle.await.map_err(|e| Error::Client {
            reason: e.to_string(),
        })??;
        for (total, s) in totals.iter_mut().zip(&stats) {
            total.merge(s)?;
        }
    }
    report::build(&totals, started.elapsed(), clients, failed_connections)
}

fn validate(opts: &WorkloadOptions) -> Result<(), Error> {
    if !(opts.scale.is_finite() && opts.scale > 0.0 && opts.scale <= MAX_SCALE) {
        return Err(Error::InvalidScale {
            scale: opts.scale,
            max: MAX_SCALE,
        });
    }
    if opts.clients == 0 {
        return Err(Error::InvalidOptions {
            reason: "clients must be at least 1".into(),
        });
    }
    if opts.duration.is_zero() {
        return Err(Error::InvalidOptions {
            reason: "duration must be above zero".into(),
        });
    }
    Ok(())
}

/// A deadline for "no time limit".
fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(100 * 365 * 86_400))
        .unwrap_or(now)
}

/// Seed of client `client`'s `attempt`-th connection.
fn client_seed(seed: u64, client: usize, attempt: u64) -> u64 {
    sub_seed(seed, &format!("client {client} connection {attempt}"))
}

/// Connects and prepares every query. A query that fails to prepare is not fatal:
/// it is prepared again when picked, and its failures are counted as its errors.
async fn connect(
    config: &tokio_postgres::Config,
    dataset: Arc<Dataset>,
    seed: u64,
) -> Result<Session, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "workload connection ended");
        }
    });
    let mut session = Session::new(client, dataset, seed);
    if let Err(e) = session.prepare_all().await {
        tracing::warn!(error = %error_message(&e), "preparing the workload queries");
    }
    Ok(session)
}

/// The report text of an error: the server's message for query failures.
fn error_message(error: &Error) -> String {
    match error {
        Error::Query { source, .. } | Error::Prepare { source, .. } => describe(source),
        other => other.to_string(),
    }
}

/// One client's loop.
struct Driver {
    client: usize,
    seed: u64,
    config: tokio_postgres::Config,
    dataset: Arc<Dataset>,
    deadline: Instant,
    /// Queries issued by all clients, and the limit.
    budget: Option<(Arc<AtomicU64>, u64)>,
}

impl Driver {
    async fn drive(self, mut session: Session) -> Result<Vec<QueryStats>, Error> {
        let mut stats = QueryStats::for_all_queries()?;
        let mut attempt = 0;
        while Instant::now() < self.deadline {
            if let Some((issued, max)) = &self.budget {
                if issued.fetch_add(1, Ordering::Relaxed) >= *max {
                    break;
                }
            }
            if session.is_closed() {
                attempt += 1;
                match self.reconnect(attempt).await {
                    Some(fresh) => session = fresh,
                    None => break,
                }
            }
            let index = session.pick();
            let cancel = session.cancel_token();
            let call_started = Instant::now();
            tokio::select! {
                result = session.execute(index) => match result {
                    Ok(_) => stats[index].record_ok(call_started.elapsed()),
                    Err(e) => stats[index].record_error(|| error_message(&e)),
                },
                _ = tokio::time::sleep_until(self.deadline.into()) => {
                    // Time is up: cancel the call in flight and leave it uncounted.
                    let cancelled = cancel.cancel_query(NoTls);
                    if let Ok(Err(e)) = tokio::time::timeout(CANCEL_TIMEOUT, cancelled).await {
                        tracing::debug!(client = self.client, error = %e, "cancelling the last query");
                    }
                    break;
                }
            }
        }
        Ok(stats)
    }

    /// A new session after the connection dropped, or `None` once time is up.
    async fn reconnect(&self, attempt: u64) -> Option<Session> {
        loop {
            let seed = client_seed(self.seed, self.client, attempt);
            let connecting = connect(&self.config, Arc::clone(&self.dataset), seed);
            match tokio::time::timeout_at(self.deadline.into(), connecting).await {
                Ok(Ok(session)) => return Some(session),
                Ok(Err(e)) => {
                    tracing::debug!(client = self.client, error = %describe(&e), "reconnecting");
                }
                Err(_) => return None,
            }
            if Instant::now() + RECONNECT_PAUSE >= self.deadline {
                return None;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}
