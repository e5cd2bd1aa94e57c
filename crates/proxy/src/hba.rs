//! Host-based authentication (`proxy.auth = "hba"`, PgBouncer's `auth_hba_file`): rules
//! in `pg_hba.conf` form pick each client's method from how it connects (a Unix-domain
//! socket, TCP with or without TLS, its address), the database it asks for and its
//! user; the first rule that matches decides, and none matching refuses the client.
//!
//! ```text
//! # TYPE     DATABASE   USER         ADDRESS          METHOD
//! local      all        postgres                      peer
//! hostssl    app        alice,bob    10.0.0.0/8       scram-sha-256
//! host       pgopt      all          127.0.0.1/32     md5
//! host       all        all          0.0.0.0/0        reject
//! ```
//!
//! Types: `local`, `host`, `hostssl`, `hostnossl`. Databases and users: comma lists of
//! names (double-quoted when they hold odd characters), `all`; databases also
//! `sameuser`, and `replication`, which as in PostgreSQL is what a physical replication
//! connection (`replication=true`: pg_basebackup, a standby) matches, and all it
//! matches (`all` and names do not; a logical one, `replication=database`, matches as
//! any other connection to its database). Addresses: `all`, an IPv4 or IPv6 address with a `/prefix` (none: that
//! host alone), or an address and a netmask. Methods: `trust`, `reject`, `md5` (SCRAM
//! for a user whose stored password is a SCRAM verifier, as in PostgreSQL),
//! `scram-sha-256`, `peer` (`local` only: the socket's peer must be the operating
//! system user of the same name), `cert` (`hostssl` only: a client certificate that
//! verifies against `client_tls.ca_file`, with the user name as its common name).
//!
//! Options, as in PostgreSQL: on `hostssl` rules `clientcert=verify-ca` (the client
//! must also present a certificate that verifies against the CA file) or
//! `clientcert=verify-full` (and its common name must be the user's name); on `peer`
//! and `cert` rules `map=NAME`, a user name map of `auth_ident_file` (see `ident.rs`):
//! then only the system users or certificate names it pairs with a database user
//! log in as that user.

use std::net::IpAddr;

use crate::config::ClientAuth;

/// The rules of one file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    kind: Kind,
    databases: Names,
    /// The databases say `replication`: physical replication connections match.
    replication: bool,
    users: Names,
    address: Address,
    method: Method,
    client_cert: ClientCert,
    /// `map=NAME`: the user name map of `auth_ident_file` for peer and cert.
    map: Option<String>,
}

/// A rule's `clientcert` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCert {
    /// No certificate asked for (beyond what the method asks).
    #[default]
    Off,
    /// A certificate that verifies against the CA file (checked in the handshake).
    VerifyCa,
    /// That, and its common name is the user's name.
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// Names, and for databases whether `sameuser` is among them.
    Listed {
        names: Vec<String>,
        same_user: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    /// `local` rules have none.
    None,
    All,
    Net {
        ip: IpAddr,
        prefix: u8,
    },
}

/// What a rule says of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Auth(ClientAuth),
    Reject,
}

/// How a client is connected, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Host { ip: IpAddr, tls: bool },
}

/// The decision for one client: the method, the certificate it must present, and the
/// line that gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub method: Method,
    pub client_cert: ClientCert,
    pub line: usize,
    /// Which rule (see [`Hba::map_of`]).
    rule: usize,
}

impl Hba {
    /// Reads rules from `text`; an error names the line (1-based) and what is wrong.
    pub fn parse(text: &str) -> Result<Hba, (usize, String)> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fields = fields(raw).map_err(|e| (line, e))?;
            if fields.is_empty() {
                continue;
            }
            let mut rule = Rule::parse(&fields).map_err(|e| (line, e))?;
            rule.line = line;
            rules.push(rule);
        }
        Ok(Hba { rules })
    }

    /// Whether any rule asks for client certificates: the `cert` method or the
    /// `clientcert` option.
    pub fn needs_client_certificates(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.method == Method::Auth(ClientAuth::Cert) || r.client_cert != ClientCert::Off)
    }

    /// The first rule matching a client of `user` asking for `database`; `None` when
    /// no rule does (the client is refused).
    pub fn decide(&self, origin: Origin, database: &str, user: &str) -> Option<Decision> {
        self.decide_also(origin, database, None, user)
    }

    /// As [`Hba::decide`] for a database known by another name too (the admin
    /// console, `pgopt` and `pgbouncer`): a rule naming either matches, so a rule that
    /// refuses one name refuses the other too. `sameuser` is matched against the name
    /// the client asked for alone, as PostgreSQL would.
    pub fn decide_also(
        &self,
        origin: Origin,
        database: &str,
        also: Option<&str>,
        user: &str,
    ) -> Option<Decision> {
        self.first(|r| {
            r.matches(origin, Some(database), Some(user), user)
                || also.is_some_and(|other| r.matches(origin, Some(other), None, user))
        })
    }

    /// The first rule matching a physical replication connection of `user`: one
    /// whose databases say `replication`.
    pub fn decide_physical(&self, origin: Origin, user: &str) -> Option<Decision> {
        self.first(|r| r.matches(origin, None, None, user))
    }

    fn first(&self, matches: impl Fn(&Rule) -> bool) -> Option<Decision> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(r))
            .map(|(rule, r)| Decision {
                method: r.method,
                client_cert: r.client_cert,
                line: r.line,
                rule,
            })
    }

    /// The user name map (`map=NAME`) of the rule that made `decision`.
    pub fn map_of(&self, decision: &Decision) -> Option<&str> {
        self.rules.get(decision.rule)?.map.as_deref()
    }

    /// Each user name map a rule names, with its line.
    pub fn maps(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.rules
            .iter()
            .filter_map(|r| Some((r.map.as_deref()?, r.line)))
    }
}

impl Rule {
    fn parse(fields: &[Field]) -> Result<Rule, String> {
        let word = |i: usize, what: &str| {
            fields
                .get(i)
                .map(|f| f.text.as_str())
                .ok_or_else(|| format!("{what} is missing"))
        };
        let kind = match word(0, "the connection type")? {
            "local" => Kind::Local,
            "host" => Kind::Host,
            "hostssl" => Kind::HostSsl,
            "hostnossl" => Kind::HostNoSsl,
            other => {
                return Err(format!(
                    "connection type {other:?} is not one of local, host, hostssl, hostnossl"
                ))
            }
        };
        word(1, "the database")?;
        let (databases, replication) = Names::parse(&fields[1], true)?;
        word(2, "the user")?;
        let (users, _) = Names::parse(&fields[2], false)?;
        let (address, next) = match kind {
            Kind::Local => (Address::None, 3),
            _ => {
                let first = word(3, "the address")?;
                let mask = fields.get(4).map(|f| f.text.as_str());
                // An address and a netmask in two fields: the method comes after both.
                match mask.filter(|m| m.parse::<IpAddr>().is_ok() && fields.len() > 5) {
                    Some(mask) => (Address::with_mask(first, mask)?, 5),
                    None => (Address::parse(first)?, 4),
                }
            }
        };
        let method = match word(next, "the method")? {
            "trust" => Method::Auth(ClientAuth::Trust),
            "reject" => Method::Reject,
            "md5" => Method::Auth(ClientAuth::Md5),
            "scram-sha-256" => Method::Auth(ClientAuth::ScramSha256),
            "peer" if kind == Kind::Local => Method::Auth(ClientAuth::Peer),
            "peer" => return Err("peer authentication is only supported on local sockets".into()),
            "cert" if kind == Kind::HostSsl => Method::Auth(ClientAuth::Cert),
            "cert" => {
                return Err("cert authentication is only supported on hostssl connections".into())
            }
            other => {
                return Err(format!(
                "method {other:?} is not supported (trust, reject, md5, scram-sha-256, peer, cert)"
            ))
            }
        };
        // As PostgreSQL: the cert method asks for a certificate naming the user, so a
        // client without one hears so before anything else.
        let mut client_cert = match method {
            Method::Auth(ClientAuth::Cert) => ClientCert::VerifyFull,
            _ => ClientCert::Off,
        };
        let mut map = None;
        for option in &fields[next + 1..] {
            let (name, value) = option.text.split_once('=').ok_or_else(|| {
                format!(
                    "authentication option {:?} is not in name=value form",
                    option.text
                )
            })?;
            if name == "map" {
                if !matches!(
                    method,
                    Method::Auth(ClientAuth::Peer) | Method::Auth(ClientAuth::Cert)
                ) {
                    return Err("map is only supported with the peer and cert methods".into());
                }
                if value.is_empty() {
                    return Err("map needs the name of a map in auth_ident_file".into());
                }
                map = Some(value.to_string());
                continue;
            }
            if name != "clientcert" {
                return Err(format!(
                    "authentication option {name:?} is not supported (clientcert and map are)"
                ));
            }
            if kind != Kind::HostSsl {
                return Err("clientcert can only be configured for hostssl rows".into());
            }
            client_cert = match value {
                "verify-full" => ClientCert::VerifyFull,
                "verify-ca" if method == Method::Auth(ClientAuth::Cert) => {
                    return Err(
                        "clientcert only accepts verify-full when using cert authentication".into(),
                    )
                }
                "verify-ca" => ClientCert::VerifyCa,
                other => {
                    return Err(format!(
                        "invalid value for clientcert: {other:?} (verify-ca or verify-full)"
                    ))
                }
            };
        }
        Ok(Rule {
            line: 0,
            kind,
            databases,
            replication,
            users,
            address,
            method,
            client_cert,
            map,
        })
    }

    /// `same_user`: the user `sameuser` compares the database with (`None`: it does
    /// not match). No `database`: a physical replication connection.
    fn matches(
        &self,
        origin: Origin,
        database: Option<&str>,
        same_user: Option<&str>,
        user: &str,
    ) -> bool {
        let connection = match (self.kind, origin) {
            (Kind::Local, Origin::Local) => true,
            (Kind::Host, Origin::Host { .. }) => true,
            (Kind::HostSsl, Origin::Host { tls, .. }) => tls,
            (Kind::HostNoSsl, Origin::Host { tls, .. }) => !tls,
            _ => false,
        };
        let address = match (self.address, origin) {
            (Address::None | Address::All, _) => true,
            (Address::Net { ip, prefix }, Origin::Host { ip: client, .. }) => {
                in_net(client, ip, prefix)
            }
            (Address::Net { .. }, Origin::Local) => false,
        };
        connection
            && address
            && match database {
                Some(name) => self.databases.matches(name, same_user),
                None => self.replication,
            }
            && self.users.matches(user, None)
    }
}

impl Names {
    /// The names, and for databases whether `replication` is among them.
    fn parse(field: &Field, databases: bool) -> Result<(Names, bool), String> {
        let mut names = Vec::new();
        let mut all = false;
        let mut same_user = false;
        let mut replication = false;
        for (item, quoted) in field.items() {
            if all {
                // What follows `all` adds nothing but `replication` (and is not
                // checked, as before `replication` was read).
                replication |= databases && !quoted && item == "replication";
                continue;
            }
            match item.as_str() {
                "all" if !quoted => all = true,
                "sameuser" if databases && !quoted => same_user = true,
                "replication" if databases && !quoted => replication = true,
                "samerole" | "samegroup" if databases && !quoted => {
                    return Err(format!("database keyword {item:?} is not supported"))
                }
                _ if !quoted && (item.starts_with('@') || item.starts_with('+')) => {
                    return Err(format!(
                        "{item:?}: file inclusions (@) and role membership (+) are not supported"
                    ))
                }
                // PostgreSQL 16's regular expressions: taken as a name, the rule would
                // never match, and a client it should refuse would fall through.
                _ if !quoted && item.starts_with('/') => {
                    return Err(format!("{item:?}: regular expressions are not supported"))
                }
                "" => return Err("an empty name".into()),
                _ => names.push(item),
            }
        }
        let names = if all {
            Names::All
        } else {
            Names::Listed { names, same_user }
        };
        Ok((names, replication))
    }

    /// Whether `name` is covered; `user` for `sameuser`.
    fn matches(&self, name: &str, user: Option<&str>) -> bool {
        match self {
            Names::All => true,
            Names::Listed { names, same_user } => {
                names.iter().any(|n| n == name) || (*same_user && user == Some(name))
            }
        }
    }
}

impl Address {
    fn parse(text: &str) -> Result<Address, String> {
        if text == "all" {
            return Ok(Address::All);
        }
        let bad = || {
            format!("address {text:?} is not all, an IP address, or an IP address with a /prefix")
        };
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let prefix: u8 = prefix.parse().map_err(|_| bad())?;
                (ip, prefix)
            }
            None => {
                let ip: IpAddr = text.parse().map_err(|_| bad())?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("address {text:?}: the prefix is longer than {max}"));
        }
        Ok(Address::net(ip, prefix))
    }

    fn with_mask(address: &str, mask: &str) -> Result<Address, String> {
        let ip: IpAddr = address
            .parse()
            .map_err(|_| format!("address {address:?} is not an IP address"))?;
        let bits = match mask.parse::<IpAddr>() {
            Ok(IpAddr::V4(m)) if ip.is_ipv4() => u128::from(u32::from(m)) << 96,
            Ok(IpAddr::V6(m)) if ip.is_ipv6() => u128::from(m),
            _ => return Err(format!("netmask {mask:?} does not fit address {address:?}")),
        };
        let prefix = bits.leading_ones();
        if bits.checked_shl(prefix).unwrap_or(0) != 0 {
            return Err(format!("netmask {mask:?} is not contiguous"));
        }
        Ok(Address::net(ip, prefix as u8))
    }

    /// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 one: clients
    /// connected over IPv4 are matched as IPv4 (see [`in_net`]).
    fn net(ip: IpAddr, prefix: u8) -> Address {
        match ip {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Address::Net {
                    ip: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => Address::Net { ip, prefix },
            },
            _ => Address::Net { ip, prefix },
        }
    }
}

/// Whether `client` is in `net`/`prefix` (an IPv4-mapped IPv6 client counts as IPv4).
fn in_net(client: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    let (a, b, width) = match (client, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    (a >> shift) == (b >> shift)
}

/// One field of a line: its text without quotes, and whether any part was quoted.
#[derive(Debug)]
struct Field {
    text: String,
    /// The comma-separated items, each with whether it was quoted.
    items: Vec<(String, bool)>,
}

impl Field {
    fn items(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        self.items.iter().cloned()
    }
}

/// A line's fields as `pg_hba.conf` and `pg_ident.conf` split them (at blanks outside
/// double quotes; `#` starts a comment), without their quotes.
pub(crate) fn plain_fields(line: &str) -> Result<Vec<String>, String> {
    Ok(fields(line)?.into_iter().map(|f| f.text).collect())
}

/// Splits a line into fields at blanks, outside double quotes; `#` starts a comment.
fn fields(line: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => return Ok(fields),
            _ => {}
        }
        let mut text = String::new();
        let mut items = Vec::new();
        let mut item = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() && item.is_empty() && !quoted && text.ends_with(',') {
                // `alice, bob`: a list goes on past blanks after a comma.
                chars.next();
                continue;
            }
            if c.is_whitespace() || c == '#' {
                break;
            }
            chars.next();
            match c {
                '"' => {
                    quoted = true;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                item.push('"');
                            }
                            Some('"') => break,
                            Some(c) => item.push(c),
                            None => return Err("an unterminated quoted name".into()),
                        }
                    }
                }
                ',' => {
                    text.push_str(&item);
                    text.push(',');
                    items.push((std::mem::take(&mut item), quoted));
                    quoted = false;
                }
                c => item.push(c),
            }
        }
        text.push_str(&item);
        items.push((item, quoted));
        fields.push(Field { text, items });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ip: &str, tls: bool) -> Origin {
        Origin::Host {
            ip: ip.parse().unwrap(),
            tls,
        }
    }

    fn method(hba: &Hba, origin: Origin, db: &str, user: &str) -> Option<(Method, usize)> {
        hba.decide(origin, db, user).map(|d| (d.method, d.line))
    }

    const MD5: Method = Method::Auth(ClientAuth::Md5);
    const SCRAM: Method = Method::Auth(ClientAuth::ScramSha256);
    const TRUST: Method = Method::Auth(ClientAuth::Trust);
    const PEER: Method = Method::Auth(ClientAuth::Peer);

    #[test]
    fn the_first_matching_rule_decides() {
        let hba = Hba::parse(
            "# comment\n\
             local   all        postgres                    peer\n\
             \n\
             hostssl app        alice,\"Bob Smith\"  10.0.0.0/8  scram-sha-256  # tls only\n\
             hostnossl app      alice        10.1.0.0 255.255.0.0  md5\n\
             host    sameuser,reports all    192.168.1.7        trust\n\
             host    all        all          ::1/128            md5\n\
             host    all        all          all                reject\n",
        )
        .unwrap();
        assert_eq!(
            method(&hba, Origin::Local, "app", "postgres"),
            Some((PEER, 2))
        );
        assert_eq!(method(&hba, Origin::Local, "app", "alice"), None);
        let tls = host("10.9.8.7", true);
        assert_eq!(method(&hba, tls, "app", "alice"), Some((SCRAM, 4)));
        assert_eq!(method(&hba, tls, "app", "Bob Smith"), Some((SCRAM, 4)));
        assert_eq!(method(&hba, tls, "app", "bob"), Some((Method::Reject, 8)));
        assert_eq!(
            method(&hba, tls, "other", "alice"),
            Some((Method::Reject, 8))
        );
        // The netmask form, and hostnossl skipping a TLS client.
        let plain = host("10.1.200.1", false);
        assert_eq!(method(&hba, plain, "app", "alice"), Some((MD5, 5)));
        assert_eq!(
            method(&hba, host("10.1.200.1", true), "app", "alice"),
            Some((SCRAM, 4))
        );
        assert_eq!(
            method(&hba, host("10.2.0.1", false), "app", "alice"),
            Some((Method::Reject, 8))
        );
        // sameuser, a listed database, a single host, an IPv4-mapped client.
        let one = host("192.168.1.7", false);
        assert_eq!(method(&hba, one, "carol", "carol"), Some((TRUST, 6)));
        assert_eq!(method(&hba, one, "reports", "dave"), Some((TRUST, 6)));
        assert_eq!(
            method(&hba, one, "carol", "dave"),
            Some((Method::Reject, 8))
        );
        let mapped = host("::ffff:192.168.1.7", false);
        assert_eq!(method(&hba, mapped, "reports", "x"), Some((TRUST, 6)));
        assert_eq!(method(&hba, host("::1", false), "x", "y"), Some((MD5, 7)));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line, says) in [
            (
                "host all all 10.0.0.0/8 md5\nhost all all 10.0.0.0/33 md5",
                2,
                "prefix",
            ),
            ("hosts all all all md5", 1, "connection type"),
            ("host all all all ident", 1, "not supported"),
            ("host all all 127.0.0.1/32 peer", 1, "local sockets"),
            ("host all all all cert", 1, "hostssl"),
            ("local all", 1, "user is missing"),
            ("host all all", 1, "address is missing"),
            ("host all all 10.0.0.0/8", 1, "method is missing"),
            ("host all all 10.0.0.1 255.0.255.0 md5", 1, "contiguous"),
            (
                "host all all all md5 clientcert=verify-ca",
                1,
                "hostssl rows",
            ),
            ("hostssl all all all md5 clientcert=1", 1, "invalid value"),
            (
                "hostssl all all all cert clientcert=verify-ca",
                1,
                "only accepts",
            ),
            (
                "hostssl all all all md5 map=x",
                1,
                "only supported with the peer and cert",
            ),
            ("hostssl all all all md5 ldapserver=x", 1, "not supported"),
            ("hostssl all all all md5 clientcert", 1, "name=value"),
            ("local @dbs all trust", 1, "file inclusions"),
            ("local all +admins trust", 1, "role membership"),
            ("local \"app all trust", 1, "unterminated"),
            ("local samerole all trust", 1, "not supported"),
            ("host all all localhost md5", 1, "address"),
            ("host all /^guest all reject", 1, "regular expressions"),
        ] {
            let (at, e) = Hba::parse(text).unwrap_err();
            assert_eq!(at, line, "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
        // A list may go on after a comma and blanks; a mapped rule address is IPv4.
        let hba = Hba::parse("host app alice,  bob ::ffff:10.0.0.0/104 md5").unwrap();
        let client = host("10.1.2.3", false);
        assert_eq!(method(&hba, client, "app", "bob"), Some((MD5, 1)));
        assert_eq!(method(&hba, host("11.0.0.1", false), "app", "bob"), None);
        // clientcert on hostssl rules.
        let hba = Hba::parse(
            "hostssl app alice all md5 clientcert=verify-full\n\
             hostssl app bob all scram-sha-256 clientcert=verify-ca\n\
             hostssl app carol all cert clientcert=verify-full\n\
             hostssl app all all md5\n",
        )
        .unwrap();
        assert!(hba.needs_client_certificates());
        let cert = |user: &str| {
            hba.decide(host("10.0.0.1", true), "app", user)
                .map(|d| d.client_cert)
        };
        assert_eq!(cert("alice"), Some(ClientCert::VerifyFull));
        assert_eq!(cert("bob"), Some(ClientCert::VerifyCa));
        assert_eq!(cert("carol"), Some(ClientCert::VerifyFull));
        assert_eq!(cert("dave"), Some(ClientCert::Off));
        assert!(!Hba::parse("hostssl app all all md5")
            .unwrap()
            .needs_client_certificates());
        assert!(Hba::parse("hostssl app all all cert")
            .unwrap()
            .needs_client_certificates());
        // Quoted keywords are plain names.
        let hba = Hba::parse("local \"all\" all trust").unwrap();
        assert_eq!(method(&hba, Origin::Local, "all", "x"), Some((TRUST, 1)));
        assert_eq!(method(&hba, Origin::Local, "app", "x"), None);
    }

    #[test]
    fn replication_matches_physical_replication_connections_alone() {
        let hba = Hba::parse(
            "local   replication  walker        trust\n\
             host    all,replication  both  all  md5\n\
             host    \"replication\"  named  all  scram-sha-256\n\
             host    all          all           all  reject\n",
        )
        .unwrap();
        let physical = |origin, user| hba.decide_physical(origin, user).map(|d| d.line);
        // `replication` matches a physical connection; `all` and names do not.
        assert_eq!(physical(Origin::Local, "walker"), Some(1));
        assert_eq!(physical(host("10.0.0.1", false), "both"), Some(2));
        assert_eq!(physical(host("10.0.0.1", false), "named"), None);
        assert_eq!(physical(host("10.0.0.1", false), "other"), None);
        // Other connections (a logical one too) never match the keyword alone, and
        // a quoted "replication" is a database's name. What follows `all` is taken
        // as before, unchecked.
        assert!(Hba::parse("local all,@extra all trust").is_ok());
        assert_eq!(method(&hba, Origin::Local, "replication", "walker"), None);
        assert_eq!(
            method(&hba, host("10.0.0.1", false), "app", "both"),
            Some((Method::Auth(ClientAuth::Md5), 2))
        );
        assert_eq!(
            method(&hba, host("10.0.0.1", false), "replication", "named"),
            Some((Method::Auth(ClientAuth::ScramSha256), 3))
        );
    }
}
