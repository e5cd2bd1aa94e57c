//! `pgopt.toml`: one file, every key defaulted, unknown keys refused, environment overrides
//! (`PGOPT_SECTION__KEY=value`). Errors read `FILE:LINE: key.path: what was expected`.

mod bounded;
mod cache;
mod duration;
mod proxy;
mod routing;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bounded::{Bounded, Scale};
pub use cache::CacheSection;
pub use duration::{HumanDuration, KeepaliveSeconds};
pub use proxy::{
    ChannelBindingSetting, ClientAuthMethod, LoadBalanceHosts, ProxyConfig, ServerTlsModeSetting,
    TargetSessionAttrs, TlsModeSetting,
};
pub use routing::{proxy_replicas, RoutingSection};

/// A set secret as `pgopt config print` shows it.
pub const MASK: &str = "********";

/// What a printed config shows of a secret: "" when unset, else [`MASK`].
pub(crate) fn masked<S: serde::Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { MASK })
}

/// A URL (or several, separated by commas) with the password of each one's
/// `user:password@`, and of a `password=` query parameter, replaced by [`MASK`].
pub(crate) fn mask_url_passwords(urls: &str) -> String {
    let mask = |url: &str| {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_string();
        };
        // As the URL parsers split it (a password may hold `?` or `@`); the query
        // starts at the next `?`.
        let (userinfo, after) = crate::upstream::split_userinfo(rest);
        let user = match userinfo.map(|info| (info, info.split_once(':'))) {
            Some((_, Some((user, _)))) => format!("{user}:{MASK}@"),
            Some((info, None)) => format!("{info}@"),
            None => String::new(),
        };
        let after = match after.split_once('?') {
            Some((before, query)) => {
                let query: Vec<_> = (query.split('&'))
                    .map(|p| match p.split_once('=') {
                        Some(("password", _)) => format!("password={MASK}"),
                        _ => p.to_string(),
                    })
                    .collect();
                format!("{before}?{}", query.join("&"))
            }
            None => after.to_string(),
        };
        format!("{scheme}://{user}{after}")
    };
    // A comma starts the next URL only where a scheme follows it: inside one URL it
    // separates hosts (`h1,h2`) or is part of a password.
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in urls.match_indices(',') {
        let next = urls[i + 1..].trim_start();
        let scheme = next.find("://").map(|end| &next[..end]);
        if scheme.is_some_and(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }) {
            parts.push(&urls[start..i]);
            start = i + 1;
        }
    }
    parts.push(&urls[start..]);
    parts.into_iter().map(mask).collect::<Vec<_>>().join(",")
}

/// Serializes a URL field with its passwords masked.
pub(crate) fn masked_url<S: serde::Serializer>(urls: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url_passwords(urls))
}

/// The whole configuration tree. Each section is the small typed config of one part.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub logging: LoggingConfig,
    pub demo: DemoConfig,
    pub proxy: ProxyConfig,
    /// The upstream's replicas and the read/write split.
    pub routing: RoutingSection,
    pub insight: InsightSection,
    /// The proxy's result cache.
    pub cache: CacheSection,
    /// `pgopt advise` thresholds.
    pub advise: pgopt_advisor::Thresholds,
}

/// `[insight]`: what the proxy records of every query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InsightSection {
    /// Record statistics per query shape, the slow log and N+1 findings.
    pub enabled: bool,
    /// Most (query shape, database, user) entries kept; the least costly go first.
    pub max_fingerprints: Bounded<1, 10000000>,
    /// How sampled parameters are kept: off | redacted | full.
    pub params: pgopt_insight::ParamMode,
    pub slow_log: pgopt_insight::SlowLogConfig,
    pub n_plus_one: pgopt_insight::NPlusOneConfig,
    pub plans: PlansSection,
}

/// `[insight.plans]`: EXPLAIN captured for slow query shapes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlansSection {
    pub enabled: bool,
    /// Statements at least this slow get their shape's plan captured.
    pub threshold: HumanDuration,
    /// One capture per shape per this long.
    pub interval: HumanDuration,
    /// Captures per minute at most, over all shapes.
    pub per_minute: Bounded<1, 600>,
    /// A sequential scan of a table with at least this many rows is flagged.
    pub large_table_rows: u64,
    /// Plans kept.
    pub keep: Bounded<1, 100000>,
}

impl Default for PlansSection {
    fn default() -> Self {
        let d = pgopt_proxy::PlanSettings::default();
        PlansSection {
            enabled: d.enabled,
            threshold: HumanDuration(d.threshold),
            interval: HumanDuration(d.interval),
            per_minute: Bounded(d.per_minute),
            large_table_rows: d.large_table_rows,
            keep: Bounded(d.keep as u32),
        }
    }
}

impl Default for InsightSection {
    fn default() -> Self {
        InsightSection {
            enabled: true,
            max_fingerprints: Bounded(5000),
            params: pgopt_insight::ParamMode::Redacted,
            slow_log: pgopt_insight::SlowLogConfig::default(),
            n_plus_one: pgopt_insight::NPlusOneConfig::default(),
            plans: PlansSection::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// error | warn | info | debug | trace (RUST_LOG, when set, wins).
    pub level: LogLevel,
    /// text | json
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Size of the "saas" sample; 1.0 is about one million rows.
    pub scale: Scale,
    /// How long the workload runs.
    pub duration: HumanDuration,
    /// Concurrent workload connections.
    pub clients: Bounded<1, 256>,
    /// Seed of the data generator and the workload.
    pub seed: u64,
    /// Port of the embedded PostgreSQL; 0 picks a free one.
    pub port: u16,
    /// Streaming replicas started next to it; the proxy sends reads to them.
    pub replicas: Bounded<0, 4>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            scale: Scale(0.05),
            duration: HumanDuration(std::time::Duration::from_secs(10)),
            clients: Bounded(4),
            seed: 42,
            port: 0,
            replicas: Bounded(0),
        }
    }
}

/// A config problem, located: `pgopt.toml:7: demo.scale: expected …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `FILE:LINE`, `FILE`, or `environment variable NAME`.
    pub origin: String,
    /// Dotted key path, empty when the problem is not a key (a syntax error).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
    pub env_overrides: Vec<String>,
}

/// Environment variables that override keys: `PGOPT_DEMO__SCALE=0.5` sets `demo.scale`.
/// Values that are not valid UTF-8 are skipped here and reported by [`load`]'s caller
/// as a config error rather than crashing the process.
pub fn env_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    let mut overrides = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("PGOPT_") && name.contains("__")) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError {
            origin: format!("environment variable {name}"),
            key: env_key_path(name).join("."),
            message: "the value is not valid UTF-8".into(),
        })?;
        overrides.push((name.to_string(), value));
    }
    Ok(overrides)
}

/// Reads `file` (when given) and applies `overrides` on top.
pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut table = toml::Table::new();
    let mut from_file = Config::default();
    if let Some(path) = file {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        // The file alone first, so its errors point at its lines.
        from_file = parse_text(&origin, &text)?;
        if !overrides.is_empty() {
            table = text.parse::<toml::Table>().map_err(|e| ConfigError {
                origin,
                key: String::new(),
                message: e.message().to_string(),
            })?;
        }
    }
    if overrides.is_empty() {
        return Ok(Loaded {
            config: from_file,
            file: file.map(Path::to_path_buf),
            env_overrides: Vec::new(),
        });
    }
    for (name, raw) in overrides {
        let segments = env_key_path(name);
        insert_path(&mut table, &segments, env_value(raw)).map_err(|message| ConfigError {
            origin: format!("environment variable {name}"),
            key: segments.join("."),
            message,
        })?;
        // Each override is checked as it is applied, so a bad one is named.
        from_table(table.clone(), &format!("environment variable {name}"))?;
    }
    Ok(Loaded {
        config: from_table(table, "the config")?,
        file: file.map(Path::to_path_buf),
        env_overrides: overrides.iter().map(|(n, _)| n.clone()).collect(),
    })
}

/// A message about a config key (`proxy.databases[1].upstream: …`, as the checks made
/// after parsing word theirs) with the file and line of that key in front, when the
/// key is in `file` (else as it is): `pgopt.toml:14: proxy.databases[1].upstream: …`.
pub fn at_line(file: Option<&Path>, message: &str) -> String {
    let located = file.and_then(|path| {
        let (key, _) = message.split_once(": ")?;
        let text = std::fs::read_to_string(path).ok()?;
        let line = line_of_key(&text, key)?;
        Some(format!("{}:{line}: {message}", path.display()))
    });
    located.unwrap_or_else(|| message.to_string())
}

/// The line (1-based) of `key` (`proxy.auth`, `proxy.databases[1].upstream`,
/// `proxy.users[0]`) in TOML `text` laid out as tables: the key's line in its table,
/// or for an entry of an array of tables its `[[…]]` line. `None` when not found (a
/// key written inline, or set by an environment variable).
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    // The table part (`proxy.databases`, with the entry's index) and the key in it.
    let (table, index, leaf) = match key.rfind(']') {
        Some(close) => {
            let open = key[..close].rfind('[')?;
            let index: usize = key[open + 1..close].parse().ok()?;
            let leaf = key[close + 1..].strip_prefix('.').unwrap_or("");
            (&key[..open], Some(index), leaf)
        }
        None => {
            let (table, leaf) = key.rsplit_once('.')?;
            (table, None, leaf)
        }
    };
    let mut seen = 0;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed: String = line
            .split('#')
            .next()?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if trimmed.starts_with('[') {
            inside = match index {
                Some(i) if trimmed == format!("[[{table}]]") => {
                    seen += 1;
                    if seen == i + 1 && leaf.is_empty() {
                        return Some(n + 1);
                    }
                    seen == i + 1
                }
                None => trimmed == format!("[{table}]"),
                _ => false,
            };
            continue;
        }
        if inside && !leaf.is_empty() && trimmed.split('=').next() == Some(leaf) {
            return Some(n + 1);
        }
    }
    None
}

/// Parses and validates TOML text; errors carry `origin:LINE`.
pub fn parse_text(origin: &str, text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = path_of(&e);
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        ConfigError {
            origin: match line {
                Some(line) => format!("{origin}:{line}"),
                None => origin.to_string(),
            },
            key,
            message: expected_form(inner.message()),
        }
    })
}

fn from_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError {
        origin: origin.to_string(),
        key: path_of(&e),
        message: expected_form(e.into_inner().message()),
    })
}

fn path_of<E>(e: &serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    if path == "." {
        String::new()
    } else {
        path
    }
}

/// `PGOPT_DEMO__SCALE` → `["demo", "scale"]`.
fn env_key_path(name: &str) -> Vec<String> {
    name.trim_start_matches("PGOPT_")
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect()
}

/// An environment value is read as a TOML value when it is one (`0.5`, `true`, `[1, 2]`),
/// else as a string (`127.0.0.1:6432`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{segment}` is a value, not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Rewrites serde's wording into "expected X, found Y".
fn expected_form(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if let Some(rest) = message.strip_prefix("unknown field ") {
        if let Some((field, expected)) = rest.split_once(", expected ") {
            return format!("unknown key {field}; expected {expected}");
        }
        if let Some((field, _)) = rest.split_once(", there are no fields") {
            return format!("unknown key {field}; this section takes no keys");
        }
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                return format!("expected {expected}, found {found}");
            }
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {expected}, found {found}");
        }
    }
    message
}

#[cfg(test)]
mod tests;
