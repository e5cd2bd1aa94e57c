//! `pgopt top`: a live terminal view of the busiest query shapes through a running
//! pgopt proxy, read from its admin console (`SHOW QUERIES`), like pg_activity or top:
//! calls per second since the last refresh, latency percentiles, total time.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::config::HumanDuration;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The proxy's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The proxy's port [default: the port of proxy.listen in the config].
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// An admin user (proxy.admin_users).
    #[arg(long, short = 'U', default_value = "postgres")]
    user: String,
    /// Password, when the proxy asks for one.
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Time between refreshes, e.g. 2s.
    #[arg(long, default_value = "2s")]
    interval: HumanDuration,
    /// Shapes shown.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print one snapshot and exit (no screen control).
    #[arg(long)]
    once: bool,
}

/// One query shape as SHOW QUERIES gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub key: String,
    pub query: String,
    pub database: String,
    pub user: String,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

pub async fn run(args: TopArgs, default_port: u16) -> anyhow::Result<()> {
    let port = args.port.unwrap_or(default_port);
    let mut config = tokio_postgres::Config::new();
    config
        .host(&args.host)
        .port(port)
        .user(&args.user)
        .dbname(pgopt_proxy::ADMIN_DATABASE)
        .application_name("pgopt-top")
        .connect_timeout(Duration::from_secs(5));
    if let Some(pw) = &args.password {
        config.password(pw);
    }
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "connecting to the pgopt admin console at {}:{port}",
                args.host
            )
        })?;
    tokio::spawn(conn);
    let target = format!("{}:{port}", args.host);
    let mut previous: Option<(Instant, HashMap<String, Shape>)> = None;
    loop {
        let shapes = fetch(&client).await?;
        let now = Instant::now();
        let rates = previous.as_ref().map(|(at, before)| {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            shapes
                .iter()
                .map(|s| {
                    let before = before.get(&s.key).map_or(0, |b| b.calls);
                    (s.key.clone(), s.calls.saturating_sub(before) as f64 / secs)
                })
                .collect::<HashMap<_, _>>()
        });
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(140);
        let screen = render(&target, &shapes, rates.as_ref(), args.limit, width);
        let mut out = std::io::stdout().lock();
        if args.once {
            write!(out, "{screen}")?;
            return Ok(());
        }
        // Clear the screen, cursor home.
        write!(out, "\x1b[2J\x1b[H{screen}")?;
        out.flush()?;
        drop(out);
        previous = Some((
            now,
            shapes.into_iter().map(|s| (s.key.clone(), s)).collect(),
        ));
        tokio::select! {
            _ = tokio::time::sleep(args.interval.0) => {}
            _ = crate::shutdown_signal() => return Ok(()),
        }
    }
}

pub(crate) async fn fetch(client: &tokio_postgres::Client) -> anyhow::Result<Vec<Shape>> {
    let messages = client
        .simple_query("SHOW QUERIES")
        .await
        .context("SHOW QUERIES")?;
    let mut shapes = Vec::new();
    for m in messages {
        let tokio_postgres::SimpleQueryMessage::Row(r) = m else {
            continue;
        };
        if r.columns().iter().any(|c| c.name() == "note") {
            let note = r.get("note").unwrap_or_default();
            anyhow::bail!("{note}");
        }
        let text = |c: &str| r.get(c).unwrap_or_default().to_string();
        let num = |c: &str| text(c).parse::<f64>().unwrap_or(0.0);
        shapes.push(Shape {
            key: format!(
                "{}/{}/{}",
                text("fingerprint"),
                text("database"),
                text("user")
            ),
            query: text("query"),
            database: text("database"),
            user: text("user"),
            calls: text("calls").parse().unwrap_or(0),
            total_ms: num("total_ms"),
            mean_ms: num("mean_ms"),
            p50_ms: num("p50_ms"),
            p95_ms: num("p95_ms"),
            p99_ms: num("p99_ms"),
        });
    }
    Ok(shapes)
}

/// The screen: busiest now (calls per second since the last refresh) first, or by
/// total time on the first refresh.
pub fn render(
    target: &str,
    shapes: &[Shape],
    rates: Option<&HashMap<String, f64>>,
    limit: usize,
    width: usize,
) -> String {
    let mut rows: Vec<(&Shape, Option<f64>)> = shapes
        .iter()
        .map(|s| (s, rates.and_then(|r| r.get(&s.key).copied())))
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &(&Shape, Option<f64>)| (r.1.unwrap_or(0.0), r.0.total_ms);
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let total_rate: f64 = rows.iter().filter_map(|r| r.1).sum();
    let mut out = format!(
        "pgopt top — {target} — {} query shapes{}\n\n",
        shapes.len(),
        if rates.is_some() {
            format!(", {total_rate:.0} calls/s")
        } else {
            String::new()
        }
    );
    out.push_str(&format!(
        "{:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}  {:<16} query\n",
        "calls/s", "calls", "mean ms", "p50 ms", "p95 ms", "p99 ms", "total s", "db/user"
    ));
    let fixed = 9 * 2 + 8 * 4 + 9 + 16 + 9;
    let room = width.saturating_sub(fixed).max(20);
    for (s, rate) in rows.into_iter().take(limit) {
        let mut query = s.query.split_whitespace().collect::<Vec<_>>().join(" ");
        if query.chars().count() > room {
            query = query.chars().take(room - 1).collect::<String>() + "…";
        }
        let who = format!("{}/{}", s.database, s.user);
        out.push_str(&format!(
            "{:>9} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1}  {:<16} {query}\n",
            rate.map_or("-".to_string(), |r| format!("{r:.1}")),
            s.calls,
            s.mean_ms,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.total_ms / 1000.0,
            who.chars().take(16).collect::<String>(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key: &str, calls: u64, total_ms: f64) -> Shape {
        Shape {
            key: key.into(),
            query: format!("SELECT * FROM {key}   WHERE id = $1"),
            database: "app".into(),
            user: "web".into(),
            calls,
            total_ms,
            mean_ms: total_ms / calls as f64,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
        }
    }

    #[test]
    fn busiest_now_first_then_by_total_time() {
        let shapes = [shape("a", 10, 500.0), shape("b", 1000, 100.0)];
        let screen = render("h:1", &shapes, None, 10, 140);
        let a = screen.find("FROM a").unwrap();
        let b = screen.find("FROM b").unwrap();
        assert!(a < b, "by total time first:\n{screen}");
        assert!(screen.contains("SELECT * FROM a WHERE id = $1"), "{screen}");

        let rates = HashMap::from([("a".to_string(), 0.5), ("b".to_string(), 250.0)]);
        let screen = render("h:1", &shapes, Some(&rates), 10, 140);
        assert!(screen.find("FROM b").unwrap() < screen.find("FROM a").unwrap());
        assert!(
            screen.contains("250.5 calls/s") || screen.contains("250 calls/s"),
            "{screen}"
        );
        assert!(screen.contains("app/web"), "{screen}");
        let one = render("h:1", &shapes, None, 1, 140);
        assert!(!one.contains("FROM b"), "limit 1:\n{one}");
    }
}
