//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` as the proxy's quick start takes it. As
//! in libpq, HOST may be a Unix-domain socket directory, percent-encoded
//! (`postgres://app@%2Fvar%2Frun%2Fpostgresql/shop`) or given as `?host=/dir`.

/// The parts of an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    /// The servers after the first of a host list (`HOST1:PORT1,HOST2:PORT2`).
    pub more_hosts: Vec<(String, u16)>,
    pub dbname: String,
}

const FORM: &str = "postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]…]/DB[?host=/SOCKET/DIR]";

/// A URL's parts after its scheme: user info, host and port, path, query.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    hostport: &'a str,
    path: &'a str,
    query: &'a str,
}

/// Splits what follows a URL's scheme into the user part and the rest: the user part
/// ends at the last `@` before the first `/` (a password may hold `@` and `?`).
pub(crate) fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    let head = rest.find('/').map_or(rest, |i| &rest[..i]);
    match head.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    }
}

/// Splits what follows the scheme: the user part (see [`split_userinfo`]), then the
/// query at the first `?`.
fn split(rest: &str) -> Parts<'_> {
    let (userinfo, rest) = split_userinfo(rest);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    Parts {
        userinfo,
        hostport,
        path,
        query,
    }
}

/// The query's `name=value` pairs, as written (not decoded).
fn params(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

pub fn parse(url: &str) -> Result<Upstream, String> {
    // In messages, with its password masked (they reach logs and the admin console).
    let shown = crate::config::mask_url_passwords(url);
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("expected {FORM}, found {shown:?}"))?;
    let Parts {
        userinfo,
        hostport,
        path,
        query,
    } = split(rest);
    let mut dbname = decode(path)?;
    let (mut user, mut password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (Some(decode(u)?), Some(decode_password(p)?)),
            None => (Some(decode(info)?), None),
        },
        None => (None, None),
    };
    // HOST[:PORT], or a comma-separated list of them. As in libpq, hosts and ports are
    // two lists: `host=` and `port=` in the query replace either one.
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    for one in split_hosts(hostport) {
        let (host, port) = if let Some(v6) = one.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("expected {FORM}: unclosed '[' in {shown:?}"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match one.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, Some(p)),
                None => (decode(one)?, None),
            }
        };
        hosts.push(host);
        ports.push(port.unwrap_or("").to_string());
    }
    // The connection parameters libpq takes in the query win, as in libpq; others
    // are the server's business (sslmode is `proxy.server_tls_mode`) and are ignored.
    for (name, value) in params(query) {
        match name {
            "host" => hosts = decode(value)?.split(',').map(str::to_string).collect(),
            "port" => ports = decode(value)?.split(',').map(str::to_string).collect(),
            "user" => user = Some(decode(value)?),
            "password" => password = Some(decode_password(value)?),
            "dbname" => dbname = decode(value)?,
            _ => {}
        }
    }
    // One port for every host, or one per host; an empty one is 5432.
    if ports.len() == 1 {
        ports = vec![ports[0].clone(); hosts.len()];
    }
    if ports.len() != hosts.len() {
        return Err(format!(
            "expected {FORM}: {} ports for {} hosts in {shown:?} (give one port, or one per host)",
            ports.len(),
            hosts.len()
        ));
    }
    let mut servers = Vec::with_capacity(hosts.len());
    for (host, port) in hosts.into_iter().zip(ports) {
        if host.is_empty() {
            return Err(format!("expected {FORM}: no host in {shown:?}"));
        }
        let port = match port.as_str() {
            "" => 5432,
            p => p.parse().ok().filter(|p: &u16| *p != 0).ok_or_else(|| {
                format!("expected {FORM}: port {p:?} is not a number from 1 to 65535")
            })?,
        };
        servers.push((host, port));
    }
    let (host, port) = servers.remove(0);
    let user = user.filter(|u| !u.is_empty());
    let dbname = if dbname.is_empty() {
        user.clone().unwrap_or_else(|| "postgres".into())
    } else {
        dbname
    };
    Ok(Upstream {
        user,
        password,
        host,
        port,
        more_hosts: servers,
        dbname,
    })
}

/// `HOST[:PORT],HOST[:PORT]…` split at the commas outside `[…]` (never empty: an
/// empty text is one empty host).
fn split_hosts(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Whether `url` names a database (`…/DB`) rather than leaving it to the default.
pub fn names_database(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    let parts = split(rest);
    !parts.path.is_empty() || params(parts.query).any(|(name, v)| name == "dbname" && !v.is_empty())
}

/// [`decode`] for a password: an error does not show it.
fn decode_password(text: &str) -> Result<String, String> {
    decode(text).map_err(|_| {
        "the password has bad percent-encoding (write % as %25) or does not decode to UTF-8"
            .to_string()
    })
}

/// Percent-decoding (`%40` → `@`), for passwords with reserved characters.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = parse("postgres://app:p%40ss@db.internal:5433/shop").unwrap();
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("db.internal", 5433, "shop")
        );
        let u = parse("postgresql://127.0.0.1/x").unwrap();
        assert_eq!((u.user, u.port), (None, 5432));
        let u = parse("postgres://bob@[::1]:6000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("::1", 6000, "bob")
        );
    }

    #[test]
    fn takes_a_socket_directory_as_libpq_does() {
        let u = parse("postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/shop").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("/var/run/postgresql", 5433, "shop")
        );
        let u = parse("postgresql://app@/shop?host=/tmp/pg%20sock&port=5444").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("/tmp/pg sock", 5444, "shop")
        );
        let u = parse("postgres://app@db:5432/shop?sslmode=require&host=/run/pg").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("/run/pg", 5432));
        let u = parse("postgres://?host=/run/pg&dbname=shop&user=app&password=p%26w").unwrap();
        assert_eq!(
            (u.host.as_str(), u.dbname.as_str(), u.user.as_deref()),
            ("/run/pg", "shop", Some("app"))
        );
        assert_eq!(u.password.as_deref(), Some("p&w"));
        // A password may hold '?' and '@', as before.
        let u = parse("postgres://app:pa?s@s@db:5433/shop").unwrap();
        assert_eq!(u.password.as_deref(), Some("pa?s@s"));
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("db", 5433, "shop")
        );
    }

    #[test]
    fn takes_a_host_list_as_libpq_does() {
        let u = parse("postgres://app@db1:5433,[::1]:6000,db3/shop").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("db1", 5433));
        assert_eq!(
            u.more_hosts,
            vec![("::1".to_string(), 6000), ("db3".to_string(), 5432)]
        );
        assert_eq!(u.dbname, "shop");
        // In the query: one port for all, or one per host.
        let u = parse("postgres://app@/shop?host=a,b&port=5444").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("a", 5444));
        assert_eq!(u.more_hosts, vec![("b".to_string(), 5444)]);
        let u = parse("postgres://app@/shop?host=a,/run/pg&port=1,2").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("a", 1));
        assert_eq!(u.more_hosts, vec![("/run/pg".to_string(), 2)]);
        let e = parse("postgres://app@/shop?host=a,b,c&port=1,2").unwrap_err();
        assert!(e.contains("2 ports for 3 hosts"), "{e}");
        let e = parse("postgres://app@a,,b/shop").unwrap_err();
        assert!(e.contains("no host"), "{e}");
        // The authority's port stays when only `host=` replaces the hosts.
        let u = parse("postgres://app@:5433/shop?host=/run/pg").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("/run/pg", 5433));
        let u = parse("postgres://app@:5433,:5434/shop?host=a,b").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("a", 5433));
        assert_eq!(u.more_hosts, vec![("b".to_string(), 5434)]);
        for bad in [
            "postgres://app:50%off@db/shop",
            "postgres://app@db/shop?password=50%off",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains("password has bad percent-encoding") && !e.contains("off"),
                "{e}"
            );
        }
        let e = parse("postgres://app:secret@a:1,b:2/shop?host=c").unwrap_err();
        assert!(e.contains("2 ports for 1 hosts"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = parse("postgres://app@a:1,b:0/shop").unwrap_err();
        assert!(e.contains("port \"0\""), "{e}");
        assert!(parse("postgres://app@db/shop")
            .unwrap()
            .more_hosts
            .is_empty());
    }

    #[test]
    fn tells_whether_a_database_is_named() {
        assert!(names_database("postgres://app@h:5433/shop"));
        assert!(names_database("postgresql://h/x?sslmode=require"));
        assert!(!names_database("postgres://app:pw@h:5433"));
        assert!(!names_database("postgres://app@h/"));
        assert!(!names_database("postgres://h/?sslmode=require"));
        assert!(!names_database("postgres://app@?host=/run/pg"));
        assert!(names_database("postgres://app@/shop?host=/run/pg"));
        assert!(names_database("postgres://app@?host=/run/pg&dbname=shop"));
        assert!(names_database("postgres://app:p?w@h/shop"));
        assert!(!names_database("postgres://app:p?w@h"));
    }

    #[test]
    fn says_what_was_expected() {
        for bad in [
            "mysql://x/y",
            "postgres://",
            "postgres://h:notaport/db",
            "postgres://h/%zz",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains("expected") || e.contains("percent"),
                "{bad}: {e}"
            );
        }
    }
}
