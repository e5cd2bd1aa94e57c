//! `pgopt config from-pgbouncer FILE`: a PgBouncer `pgbouncer.ini` turned into the
//! `[proxy]` section of a `pgopt.toml`, so a deployment moves over without rewriting
//! its settings by hand.
//!
//! Every setting pgopt has is carried over with PgBouncer's meaning (its defaults
//! where pgopt's differ: md5 auth, a socket in `/tmp`); every other one is reported
//! with its line and why (not needed, or not supported), never silently dropped.
//! The users, hba and ident files are referred to, not copied: `proxy.auth_file`
//! reads PgBouncer's user list as it is.

use std::fmt::Write as _;

/// The converted config (TOML text) and the notes on what was not carried over, each
/// `FILE:LINE: key: why`.
pub struct Converted {
    pub toml: String,
    pub notes: Vec<String>,
}

/// One `key = value` of the ini file, with where it was.
struct Setting {
    file: String,
    line: usize,
    key: String,
    value: String,
}

impl Setting {
    fn at(&self) -> String {
        format!("{}:{}: {}", self.file, self.line, self.key)
    }
}

#[derive(Default)]
struct Ini {
    pgbouncer: Vec<Setting>,
    databases: Vec<Setting>,
    users: Vec<Setting>,
}

/// Reads `path` (and the files its `%include` lines name, relative to the working
/// directory as PgBouncer takes them) into its sections.
fn read(path: &str, ini: &mut Ini, depth: usize) -> Result<(), String> {
    if depth > 10 {
        return Err(format!("{path}: %include nested more than 10 deep"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = |what: String| format!("{path}:{}: {what}", i + 1);
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(included) = line.strip_prefix("%include") {
            read(included.trim(), ini, depth + 1).map_err(at)?;
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| at("a section header without its closing ]".into()))?;
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        let (key, value) = split_key(line).ok_or_else(|| at("expected key = value".into()))?;
        let setting = Setting {
            file: path.to_string(),
            line: i + 1,
            key,
            value: value.trim().to_string(),
        };
        match section.as_str() {
            "pgbouncer" => ini.pgbouncer.push(setting),
            "databases" => ini.databases.push(setting),
            "users" => ini.users.push(setting),
            "" => return Err(at("a setting before any [section]".into())),
            other => return Err(at(format!("unknown section [{other}]"))),
        }
    }
    Ok(())
}

/// `key = value`, the key possibly double-quoted (a database or user name with odd
/// characters, as PgBouncer allows).
fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(rest) = line.strip_prefix('"') {
        let end = rest.find('"')?;
        let value = rest[end + 1..].trim_start().strip_prefix('=')?;
        return Some((rest[..end].to_string(), value));
    }
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()).then(|| (key.to_string(), value))
}

/// The `key=value` pairs of a PgBouncer connection string: values may be
/// single-quoted, a quote inside written twice (`''`); a backslash is itself, as
/// PgBouncer reads it.
fn conn_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("expected key=value in {rest:?}"))?;
        let key = rest[..eq].trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("expected key=value in {rest:?}"));
        }
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices().peekable();
            let end = loop {
                match chars.next() {
                    Some((_, '\'')) if chars.peek().is_some_and(|(_, c)| *c == '\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    Some((i, '\'')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("an unterminated quote in {text:?}")),
                }
            };
            rest = &quoted[end..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        pairs.push((key, value));
        rest = rest.trim_start();
    }
    Ok(pairs)
}

/// Percent-encodes a URL component (all but RFC 3986's unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A PgBouncer duration (seconds, possibly fractional, or with a unit) as pgopt
/// writes one.
fn duration(value: &str) -> Option<String> {
    let (d, _) = pgopt_proxy::config::parse_duration(value)?;
    let ms = d.as_millis();
    Some(if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

fn flag(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// A TOML string literal.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn list(value: &str) -> String {
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(quote)
        .collect();
    format!("[{}]", items.join(", "))
}

/// Settings pgopt does without, and why (a note each, not an error).
const NOT_NEEDED: &[(&str, &str)] = &[
    ("logfile", "pgopt logs to stderr (logging.format)"),
    (
        "pidfile",
        "pgopt does not daemonize; run it under a service manager",
    ),
    (
        "user",
        "pgopt does not change users; run it as the user it should be",
    ),
    ("syslog", "pgopt logs to stderr"),
    ("syslog_ident", "pgopt logs to stderr"),
    ("syslog_facility", "pgopt logs to stderr"),
    ("verbose", "set RUST_LOG or logging.level"),
    (
        "stats_period",
        "pgopt's statistics are live (SHOW STATS, /metrics)",
    ),
    (
        "ignore_startup_parameters",
        "pgopt carries every start-up parameter to the server",
    ),
    (
        "track_extra_parameters",
        "pgopt carries every start-up parameter and SET",
    ),
    (
        "server_reset_query",
        "pgopt resets a session-mode connection with DISCARD ALL",
    ),
    (
        "server_reset_query_always",
        "pgopt carries transaction-mode session state itself",
    ),
    (
        "server_check_query",
        "pgopt checks an idle connection with an empty query",
    ),
    ("listen_backlog", "pgopt uses the system's backlog"),
    ("pkt_buf", "pgopt sizes its buffers itself"),
    ("sbuf_loopcnt", "pgopt's event loop needs no tuning"),
    ("tcp_defer_accept", "not needed"),
    ("tcp_socket_buffer", "the system's buffers are used"),
    ("dns_max_ttl", "pgopt resolves host names when it connects"),
    (
        "dns_nxdomain_ttl",
        "pgopt resolves host names when it connects",
    ),
    (
        "dns_zone_check_period",
        "pgopt resolves host names when it connects",
    ),
    ("resolv_conf", "pgopt uses the system's resolver"),
    ("disable_pqexec", "not supported"),
    ("server_fast_close", "not supported"),
    ("suspend_timeout", "pgopt has no online restart (SUSPEND)"),
    ("peer_id", "pgopt has no peering"),
    ("client_tls_protocols", "pgopt takes TLS 1.2 and 1.3"),
    ("client_tls_ciphers", "pgopt uses rustls' safe defaults"),
    ("client_tls_ecdhcurve", "pgopt uses rustls' safe defaults"),
    ("client_tls_dheparams", "pgopt uses rustls' safe defaults"),
    ("server_tls_protocols", "pgopt takes TLS 1.2 and 1.3"),
    ("server_tls_ciphers", "pgopt uses rustls' safe defaults"),
    (
        "autodb_idle_timeout",
        "the \"*\" database's pools end when their last client leaves",
    ),
];

/// Converts the ini at `path`.
pub fn convert(path: &str) -> Result<Converted, String> {
    let mut ini = Ini::default();
    read(path, &mut ini, 0)?;
    let mut notes = Vec::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Converted from {path} by `pgopt config from-pgbouncer`.\n\
         # The admin console is the database \"pgopt\", and \"pgbouncer\" as in PgBouncer.\n"
    );
    out.push_str("[proxy]\n");
    let mut listen_addr = None;
    let mut listen_port = "6432".to_string();
    let mut unix_socket_dir = Some("/tmp".to_string());
    let mut auth = ("md5".to_string(), None);
    let mut client_ca = false;
    let mut keepalive = None;
    let mut lines: Vec<String> = Vec::new();
    // The PgBouncer key each line came from: a setting given again (an %include
    // overriding the main file) replaces what the earlier one wrote, even with
    // nothing (PgBouncer's 0 pool size, a value pgopt could not read), as in PgBouncer
    // the last one counts.
    let mut line_keys: Vec<String> = Vec::new();
    for s in &ini.pgbouncer {
        let key = s.key.to_ascii_lowercase();
        let mut i = 0;
        while i < lines.len() {
            if line_keys[i] == key {
                lines.remove(i);
                line_keys.remove(i);
            } else {
                i += 1;
            }
        }
        let v = s.value.as_str();
        let mut bad = |why: &str| notes.push(format!("{}: {why}", s.at()));
        let seconds = |v: &str| duration(v);
        if key == "server_login_retry" {
            bad("carried over with another meaning: in pgopt, how long a host of a host list that failed is tried after the others (reconnects back off on their own)");
        }
        match key.as_str() {
            "listen_addr" => listen_addr = Some(v.to_string()),
            "listen_port" => listen_port = v.to_string(),
            "unix_socket_dir" => unix_socket_dir = (!v.is_empty()).then(|| v.to_string()),
            "unix_socket_mode" => lines.push(format!("unix_socket_mode = {}", quote(v))),
            "unix_socket_group" => lines.push(format!("unix_socket_group = {}", quote(v))),
            "auth_type" => auth = (v.to_ascii_lowercase(), Some(s.at())),
            "auth_file" => lines.push(format!("auth_file = {}", quote(v))),
            "auth_hba_file" => lines.push(format!("auth_hba_file = {}", quote(v))),
            "auth_ident_file" => lines.push(format!("auth_ident_file = {}", quote(v))),
            "auth_user" => lines.push(format!("auth_user = {}", quote(v))),
            "auth_query" => lines.push(format!("auth_query = {}", quote(v))),
            "admin_users" => lines.push(format!("admin_users = {}", list(v))),
            "stats_users" => lines.push(format!("stats_users = {}", list(v))),
            "pool_mode" => match v.to_ascii_lowercase().as_str() {
                m @ ("session" | "transaction") => lines.push(format!("pool_mode = {}", quote(m))),
                "statement" => {
                    bad("statement mode is not supported: transaction mode is used (multi-statement transactions are allowed)");
                    lines.push("pool_mode = \"transaction\"".into());
                }
                _ => bad("expected session, transaction or statement"),
            },
            "max_client_conn"
            | "default_pool_size"
            | "min_pool_size"
            | "reserve_pool_size"
            | "max_db_connections"
            | "max_user_connections" => match v.parse::<u64>() {
                // PgBouncer's 0 for the pool size means "use the default".
                Ok(0) if key == "default_pool_size" => {}
                Ok(n) => lines.push(format!("{key} = {n}")),
                Err(_) => bad("expected a whole number"),
            },
            "max_prepared_statements" => match v.parse::<u64>() {
                Ok(0) => bad(
                    "0 turns PgBouncer's prepared statements off in transaction mode; pgopt \
                     carries them always, with its own limit per server connection (1000)",
                ),
                Ok(n) => lines.push(format!("max_prepared_statements = {}", n.min(1_000_000))),
                Err(_) => bad("expected a whole number"),
            },
            "max_packet_size" => match v.parse::<u64>() {
                // pgopt's bounds: 64 kB (login messages) to PostgreSQL's 1 GiB - 1.
                Ok(n) => lines.push(format!(
                    "max_message_len = {}",
                    n.clamp(65_536, 1_073_741_823)
                )),
                Err(_) => bad("expected a whole number"),
            },
            "reserve_pool_timeout"
            | "server_lifetime"
            | "server_idle_timeout"
            | "server_connect_timeout"
            | "query_timeout"
            | "query_wait_timeout"
            | "client_idle_timeout"
            | "client_login_timeout"
            | "idle_transaction_timeout"
            | "server_check_delay"
            | "server_login_retry" => match seconds(v) {
                // (A 0 means what it does in PgBouncer: off for the timeouts, used once
                // for server_lifetime, checked always for server_check_delay.)
                Some(d) => lines.push(format!("{key} = {}", quote(&d))),
                None => bad("expected a number of seconds"),
            },
            "log_connections"
            | "log_disconnections"
            | "application_name_add_host"
            | "server_round_robin"
            | "so_reuseport" => match flag(v) {
                Some(b) => lines.push(format!("{key} = {b}")),
                None => bad("expected 0 or 1"),
            },
            "tcp_keepalive" => match flag(v) {
                Some(b) => keepalive = Some(b),
                None => bad("expected 0 or 1"),
            },
            "tcp_keepidle" | "tcp_keepintvl" => match v.parse::<u64>() {
                Ok(n) => lines.push(format!("{key} = {}", quote(&format!("{n}s")))),
                Err(_) => bad("expected a number of seconds"),
            },
            // (Milliseconds in PgBouncer; 0 is the system's in both.)
            "tcp_user_timeout" => match v.parse::<u64>() {
                Ok(n) => lines.push(format!("tcp_user_timeout = {}", quote(&format!("{n}ms")))),
                Err(_) => bad("expected a number of milliseconds"),
            },
            "tcp_keepcnt" => match v.parse::<u64>() {
                Ok(n) => lines.push(format!("tcp_keepcnt = {n}")),
                Err(_) => bad("expected a whole number"),
            },
            "client_tls_sslmode" => {
                let mode = match v.to_ascii_lowercase().as_str() {
                    "disable" => "disable",
                    "allow" | "prefer" => "prefer",
                    "require" => "require",
                    "verify-ca" | "verify-full" => {
                        bad("client certificates are asked of every TLS client with tls_ca_file and checked when sent; to require them, use auth = \"cert\" or hba rules with clientcert=verify-ca/verify-full");
                        "require"
                    }
                    _ => {
                        bad("expected disable, allow, prefer, require, verify-ca or verify-full");
                        continue;
                    }
                };
                lines.push(format!("tls_mode = {}", quote(mode)));
            }
            "client_tls_key_file" => lines.push(format!("tls_key_file = {}", quote(v))),
            "client_tls_cert_file" => lines.push(format!("tls_cert_file = {}", quote(v))),
            "client_tls_ca_file" => {
                client_ca = !v.is_empty();
                lines.push(format!("tls_ca_file = {}", quote(v)));
            }
            "server_tls_sslmode" => {
                let lower = v.to_ascii_lowercase();
                let mode = match lower.as_str() {
                    "disable" => "disable",
                    "allow" | "prefer" => "prefer",
                    m @ ("require" | "verify-ca" | "verify-full") => m,
                    _ => {
                        bad("expected disable, allow, prefer, require, verify-ca or verify-full");
                        continue;
                    }
                };
                lines.push(format!("server_tls_mode = {}", quote(mode)));
            }
            "server_tls_ca_file" | "server_tls_cert_file" | "server_tls_key_file" => {
                lines.push(format!("{key} = {}", quote(v)))
            }
            other => match NOT_NEEDED.iter().find(|(k, _)| *k == other) {
                Some((_, why)) => bad(&format!("not carried over: {why}")),
                None => bad("not a setting pgopt has: not carried over"),
            },
        }
        line_keys.resize(lines.len(), key);
    }
    // Where clients connect: PgBouncer listens on no TCP address unless told to.
    // `*`: every IPv4 and IPv6 address; a host name: the addresses it resolves to now.
    let mut addrs: Vec<String> = Vec::new();
    for a in (listen_addr.as_deref().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let found: Vec<String> = match a {
            "*" => {
                notes.push(format!(
                    "{path}: listen_addr: * is written as 0.0.0.0 and [::]; drop [::] from listen_also on a host without IPv6"
                ));
                vec!["0.0.0.0".into(), "[::]".into()]
            }
            a if a.parse::<std::net::IpAddr>().is_ok() && a.contains(':') => vec![format!("[{a}]")],
            a if a.parse::<std::net::IpAddr>().is_ok() => vec![a.to_string()],
            name => {
                use std::net::ToSocketAddrs;
                let resolved: Vec<String> = (name, 0)
                    .to_socket_addrs()
                    .map_err(|e| format!("{path}: listen_addr: {name}: {e}"))?
                    .map(|s| match s.ip() {
                        std::net::IpAddr::V4(ip) => ip.to_string(),
                        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    })
                    .collect();
                notes.push(format!(
                    "{path}: listen_addr: {name} is written as the addresses it resolves to now: {}",
                    resolved.join(", ")
                ));
                resolved
            }
        };
        for f in found {
            if !addrs.contains(&f) {
                addrs.push(f);
            }
        }
    }
    if addrs.is_empty() {
        notes.push(format!(
            "{path}: listen_addr: not set (PgBouncer: Unix socket only): pgopt also listens on 127.0.0.1"
        ));
        addrs.push("127.0.0.1".to_string());
    }
    let with_port = |a: &String| quote(&format!("{a}:{listen_port}"));
    let _ = writeln!(out, "listen = {}", with_port(&addrs[0]));
    if addrs.len() > 1 {
        let more: Vec<String> = addrs[1..].iter().map(with_port).collect();
        let _ = writeln!(out, "listen_also = [{}]", more.join(", "));
    }
    if let Some(dir) = &unix_socket_dir {
        let _ = writeln!(out, "unix_socket_dir = {}", quote(dir));
    }
    let method = match auth.0.as_str() {
        m @ ("trust" | "md5" | "scram-sha-256" | "hba" | "cert") => m,
        "any" => {
            notes.push(format!(
                "{}: any: clients are trusted as the user they name (trust)",
                auth.1.clone().unwrap_or_default()
            ));
            "trust"
        }
        "plain" => {
            notes.push(format!(
                "{}: plain: pgopt does not take cleartext passwords; md5 is used",
                auth.1.clone().unwrap_or_default()
            ));
            "md5"
        }
        other => {
            return Err(format!(
                "{}: auth_type {other:?} is not supported (trust, md5, scram-sha-256, hba, cert)",
                auth.1.clone().unwrap_or_default()
            ))
        }
    };
    let _ = writeln!(out, "auth = {}", quote(method));
    if method == "cert" && !client_ca {
        notes.push(format!(
            "{path}: auth_type = cert needs client_tls_ca_file: pgopt refuses to start without it"
        ));
    }
    if let Some(on) = keepalive {
        let _ = writeln!(out, "tcp_keepalive = {on}");
    }
    let key_of = |line: &str| line.split(" = ").next().unwrap_or("").to_string();
    let kept: std::collections::HashSet<String> = lines.iter().map(|l| key_of(l)).collect();
    // PgBouncer's defaults where pgopt's differ, for the settings the file leaves out
    // (or gives a value pgopt could not read: noted above).
    for (key, default) in [
        ("pool_mode", "\"session\""),
        ("max_client_conn", "100"),
        ("server_connect_timeout", "\"15s\""),
    ] {
        if !kept.contains(key) {
            let _ = writeln!(out, "{key} = {default}");
        }
    }
    for line in &lines {
        let _ = writeln!(out, "{line}");
    }
    // A database or user given twice: the last entry counts, as in PgBouncer.
    let last = |list: &[Setting], i: usize| !list[i + 1..].iter().any(|s| s.key == list[i].key);
    for (i, db) in ini.databases.iter().enumerate() {
        if last(&ini.databases, i) {
            out.push_str(&database(db, unix_socket_dir.as_deref(), &mut notes)?);
        }
    }
    for (i, user) in ini.users.iter().enumerate() {
        if last(&ini.users, i) {
            out.push_str(&user_entry(user, &mut notes)?);
        }
    }
    // What was written must load: a converter that writes what pgopt refuses helps no
    // one.
    if let Err(e) = toml::from_str::<crate::config::Config>(&out) {
        return Err(format!("the converted config does not load ({e}):\n{out}"));
    }
    Ok(Converted { toml: out, notes })
}

/// One `[databases]` entry as a `[[proxy.databases]]` table.
/// `socket_dir`: PgBouncer's `unix_socket_dir`, where it reaches a server with no host.
fn database(
    s: &Setting,
    socket_dir: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let pairs = conn_pairs(&s.value).map_err(|e| format!("{}: {e}", s.at()))?;
    let (mut host, mut port, mut dbname, mut user, mut password) =
        (None, "5432".to_string(), None, None, None);
    let mut extra = String::new();
    for (key, value) in pairs {
        match key.as_str() {
            "host" => host = Some(value),
            "port" => port = value,
            "dbname" => dbname = Some(value),
            "user" => user = Some(value),
            "password" => password = Some(value),
            "pool_size" | "min_pool_size" | "max_db_connections" | "reserve_pool"
            | "reserve_pool_size" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("{}: {key}: expected a whole number", s.at()))?;
                let name = match key.as_str() {
                    "reserve_pool" => "reserve_pool_size",
                    k => k,
                };
                let _ = writeln!(extra, "{name} = {n}");
            }
            "load_balance_hosts" => match value.as_str() {
                "round-robin" | "disable" => {
                    let _ = writeln!(extra, "load_balance_hosts = {}", quote(&value));
                }
                _ => {
                    return Err(format!(
                        "{}: load_balance_hosts: expected round-robin or disable",
                        s.at()
                    ))
                }
            },
            "pool_mode" => match value.as_str() {
                "session" | "transaction" => {
                    let _ = writeln!(extra, "pool_mode = {}", quote(&value));
                }
                "statement" => {
                    notes.push(format!(
                        "{}: pool_mode=statement is not supported: transaction mode is used",
                        s.at()
                    ));
                    extra.push_str("pool_mode = \"transaction\"\n");
                }
                _ => {
                    return Err(format!(
                        "{}: pool_mode: expected session or transaction",
                        s.at()
                    ))
                }
            },
            other => notes.push(format!(
                "{}: {other}: not carried over (no such database setting in pgopt)",
                s.at()
            )),
        }
    }
    if s.key == "*" {
        if let Some(db) = &dbname {
            return Err(format!(
                "{}: the fallback database \"*\" with dbname={db}: pgopt's fallback serves each client the database it asked for",
                s.at()
            ));
        }
    }
    // No host: PgBouncer connects through the Unix socket in its unix_socket_dir.
    let host = match (host, socket_dir) {
        (Some(host), _) => host,
        (None, Some(dir)) => dir.to_string(),
        (None, None) => {
            return Err(format!(
                "{}: no host, and unix_socket_dir is empty: give the server's host",
                s.at()
            ))
        }
    };
    let mut url = String::from("postgres://");
    if let Some(user) = &user {
        url.push_str(&encode(user));
        if let Some(password) = &password {
            url.push(':');
            url.push_str(&encode(password));
        }
        url.push('@');
    } else if password.is_some() {
        notes.push(format!(
            "{}: password without user: not carried over (the client's own login is used)",
            s.at()
        ));
    }
    // A host list (`host=a,b`): each host with the one port.
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(format!(
            "{}: port={port}: expected a number from 1 to 65535",
            s.at()
        ));
    }
    let mut hosts = Vec::new();
    for host in host.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(format!("{}: host: an empty name in the list", s.at()));
        }
        let host_part = if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]")
        } else {
            encode(host)
        };
        hosts.push(format!("{host_part}:{port}"));
    }
    url.push_str(&hosts.join(","));
    if s.key != "*" {
        url.push('/');
        url.push_str(&encode(dbname.as_deref().unwrap_or(&s.key)));
    }
    Ok(format!(
        "\n[[proxy.databases]]\nname = {}\nupstream = {}\n{extra}",
        quote(&s.key),
        quote(&url)
    ))
}

/// One `[users]` entry as a `[[proxy.users]]` table (its password comes from the
/// auth file).
fn user_entry(s: &Setting, notes: &mut Vec<String>) -> Result<String, String> {
    let mut extra = String::new();
    for (key, value) in conn_pairs(&s.value).map_err(|e| format!("{}: {e}", s.at()))? {
        match key.as_str() {
            "pool_mode" if value == "session" || value == "transaction" => {
                let _ = writeln!(extra, "pool_mode = {}", quote(&value));
            }
            "max_user_connections" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("{}: {key}: expected a whole number", s.at()))?;
                let _ = writeln!(extra, "max_user_connections = {n}");
            }
            other => notes.push(format!("{}: {other}={value}: not carried over", s.at())),
        }
    }
    Ok(format!(
        "\n[[proxy.users]]\nname = {}\n{extra}",
        quote(&s.key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_split_as_pgbouncer_does() {
        let pairs = conn_pairs("host=db1 port=6543  dbname='my db' password='it''s a\\b'").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("host".to_string(), "db1".to_string()),
                ("port".into(), "6543".into()),
                ("dbname".into(), "my db".into()),
                ("password".into(), "it's a\\b".into()),
            ]
        );
        assert!(conn_pairs("host db1").is_err());
        assert!(conn_pairs("host='db1").is_err());
        assert_eq!(encode("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(duration("30").as_deref(), Some("30s"));
        assert_eq!(duration("0.5").as_deref(), Some("500ms"));
        assert_eq!(duration("soon"), None);
    }

    #[test]
    fn pgbouncers_settings_keep_their_meaning() {
        let dir = std::env::temp_dir().join(format!("pgopt-pgb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        let convert_with = |listen: &str| {
            std::fs::write(&ini, format!("[pgbouncer]\nlisten_port = 6433\n{listen}")).unwrap();
            convert(ini.to_str().unwrap()).unwrap()
        };
        let c = convert_with("listen_addr = 127.0.0.1, ::1,*\n");
        assert!(
            c.toml.contains("listen = \"127.0.0.1:6433\"\n"),
            "{}",
            c.toml
        );
        let also = "listen_also = [\"[::1]:6433\", \"0.0.0.0:6433\", \"[::]:6433\"]\n";
        assert!(c.toml.contains(also), "{}", c.toml);
        // A host name: the addresses it resolves to, said in a note.
        let c = convert_with("listen_addr = localhost\n");
        let local = ["listen = \"127.0.0.1:6433\"", "listen = \"[::1]:6433\""];
        assert!(local.iter().any(|l| c.toml.contains(l)), "{}", c.toml);
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("localhost is written as")),
            "{:?}",
            c.notes
        );
        // A setting given twice: the last counts. One pgopt cannot read: its default.
        let c = convert_with(
            "max_client_conn = 50\nmax_client_conn = 70\npool_mode = transaction\npool_mode = often\n\
             default_pool_size = 10\ndefault_pool_size = 0\n\
             server_round_robin = 1\nserver_tls_cert_file = /etc/pgb/c.crt\nserver_tls_key_file = /etc/pgb/c.key\n\
             server_login_retry = 5\n",
        );
        assert!(
            c.notes.iter().any(|n| n.contains("another meaning")),
            "{:?}",
            c.notes
        );
        for line in [
            "server_round_robin = true\n",
            "server_login_retry = \"5s\"\n",
            "server_tls_cert_file = \"/etc/pgb/c.crt\"\n",
            "server_tls_key_file = \"/etc/pgb/c.key\"\n",
        ] {
            assert!(c.toml.contains(line), "{line}{}", c.toml);
        }
        assert!(c.toml.contains("max_client_conn = 70\n"), "{}", c.toml);
        assert!(!c.toml.contains("max_client_conn = 50\n"), "{}", c.toml);
        assert!(c.toml.contains("pool_mode = \"session\"\n"), "{}", c.toml);
        assert!(
            !c.toml.contains("pool_mode = \"transaction\""),
            "{}",
            c.toml
        );
        assert!(!c.toml.contains("default_pool_size"), "{}", c.toml);
        // max_packet_size is pgopt's max_message_len, within pgopt's bounds.
        for (packet, len) in [
            ("2147483647", 1_073_741_823),
            ("16777216", 16_777_216),
            ("100", 65_536),
        ] {
            let c = convert_with(&format!("max_packet_size = {packet}\n"));
            let line = format!("max_message_len = {len}\n");
            assert!(c.toml.contains(&line), "{line}{}", c.toml);
        }
        // max_prepared_statements: the same limit; its 0 (off) keeps pgopt's.
        let c = convert_with("max_prepared_statements = 200\n");
        assert!(
            c.toml.contains("max_prepared_statements = 200\n"),
            "{}",
            c.toml
        );
        let c = convert_with("max_prepared_statements = 0\n");
        assert!(!c.toml.contains("max_prepared_statements"), "{}", c.toml);
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("max_prepared_statements")),
            "{:?}",
            c.notes
        );
        // tcp_user_timeout is in milliseconds.
        let c = convert_with("tcp_user_timeout = 30000\ntcp_keepalive = 0\n");
        for line in [
            "tcp_user_timeout = \"30000ms\"\n",
            "tcp_keepalive = false\n",
        ] {
            assert!(c.toml.contains(line), "{line}{}", c.toml);
        }
        // PgBouncer's defaults where pgopt's differ; its 0 for "off", pgopt's too.
        let c =
            convert_with("query_wait_timeout = 0\nserver_idle_timeout = 0\nquery_timeout = 0\n");
        for line in [
            "pool_mode = \"session\"\n",
            "max_client_conn = 100\n",
            "server_connect_timeout = \"15s\"\n",
            "query_wait_timeout = \"0s\"\n",
            "server_idle_timeout = \"0s\"\n",
            "query_timeout = \"0s\"\n",
        ] {
            assert!(c.toml.contains(line), "{line}{}", c.toml);
        }
        // A database without a host is reached through PgBouncer's socket directory.
        let with_db = |socket_dir: &str| {
            std::fs::write(
                &ini,
                format!(
                    "[databases]\napp = dbname=shop\n[pgbouncer]\nunix_socket_dir ={socket_dir}\n"
                ),
            )
            .unwrap();
            convert(ini.to_str().unwrap())
        };
        let c = with_db(" /var/run/postgresql").unwrap();
        let url = "postgres://%2Fvar%2Frun%2Fpostgresql:5432/shop";
        assert!(c.toml.contains(url), "{}", c.toml);
        let e = with_db("").err().unwrap();
        assert!(e.contains("no host"), "{e}");
        // A host list, every host on the database's port, and its balance policy.
        let hosts = "[databases]\napp = host=db1,db2,::1 port=6000 dbname=shop load_balance_hosts=disable\n";
        std::fs::write(&ini, hosts).unwrap();
        let c = convert(ini.to_str().unwrap()).unwrap();
        let url = "upstream = \"postgres://db1:6000,db2:6000,[::1]:6000/shop\"\nload_balance_hosts = \"disable\"\n";
        assert!(c.toml.contains(url), "{}", c.toml);
        let twice = "[databases]\napp = host=old\napp = host=new\n[users]\nbob = pool_mode=session\nbob = pool_mode=transaction\n";
        std::fs::write(&ini, twice).unwrap();
        let c = convert(ini.to_str().unwrap()).unwrap();
        assert!(c.toml.contains("\"postgres://new:5432/app\""), "{}", c.toml);
        assert!(!c.toml.contains("//old"), "{}", c.toml);
        assert_eq!(c.toml.matches("name = \"bob\"").count(), 1, "{}", c.toml);
        assert!(
            c.toml.contains("pool_mode = \"transaction\"\n"),
            "{}",
            c.toml
        );
        std::fs::write(&ini, "[databases]\napp = host=a,b port=5432,5433\n").unwrap();
        let e = convert(ini.to_str().unwrap()).err().unwrap();
        assert!(e.contains("port=5432,5433: expected a number"), "{e}");
        std::fs::write(&ini, "[databases]\napp = host=db1,,db2\n").unwrap();
        let e = convert(ini.to_str().unwrap()).err().unwrap();
        assert!(e.contains("an empty name"), "{e}");
        for unset in ["", "listen_addr = \n", "listen_addr = , \n"] {
            let c = convert_with(unset);
            assert!(
                c.toml.contains("listen = \"127.0.0.1:6433\"\n"),
                "{}",
                c.toml
            );
            assert!(
                c.notes.iter().any(|n| n.contains("Unix socket only")),
                "{:?}",
                c.notes
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
