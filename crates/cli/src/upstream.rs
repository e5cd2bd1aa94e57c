//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` as the proxy's quick start takes it.

/// The parts of an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

const FORM: &str = "postgres://USER[:PASSWORD]@HOST[:PORT]/DB";

pub fn parse(url: &str) -> Result<Upstream, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("expected {FORM}, found {url:?}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let dbname = decode(path.split('?').next().unwrap_or_default())?;
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (Some(decode(u)?), Some(decode(p)?)),
            None => (Some(decode(info)?), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("expected {FORM}: unclosed '[' in {url:?}"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("expected {FORM}: no host in {url:?}"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("expected {FORM}: port {p:?} is not a number from 1 to 65535"))?,
        None => 5432,
    };
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
        dbname,
    })
}

/// Whether `url` names a database (`…/DB`) rather than leaving it to the default.
pub fn names_database(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    rest.split_once('/')
        .is_some_and(|(_, path)| !path.split('?').next().unwrap_or_default().is_empty())
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
    fn tells_whether_a_database_is_named() {
        assert!(names_database("postgres://app@h:5433/shop"));
        assert!(names_database("postgresql://h/x?sslmode=require"));
        assert!(!names_database("postgres://app:pw@h:5433"));
        assert!(!names_database("postgres://app@h/"));
        assert!(!names_database("postgres://h/?sslmode=require"));
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
