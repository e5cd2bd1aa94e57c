//! User name maps (`proxy.auth_ident_file`, PgBouncer's `auth_ident_file`, in
//! PostgreSQL's `pg_ident.conf` form): an hba rule's `map=NAME` lets the `peer` and
//! `cert` methods admit a client by its operating-system user (peer) or certificate
//! common name (cert) as the database user a line of map NAME pairs it with — and,
//! with a map, only then: as in PostgreSQL, the same name needs a line too.
//!
//! ```text
//! # MAPNAME   SYSTEM-USERNAME   PG-USERNAME
//! web         www-data          app
//! web         deploy            app
//! ```
//!
//! Names may be double-quoted. PostgreSQL's regular expressions (`/…`) and group
//! membership (`+role`) are refused at parse time, naming the line: they would
//! otherwise never match.

/// No maps at all: what a rule naming a map finds when there is no ident file.
pub static NO_MAPS: IdentMap = IdentMap { lines: Vec::new() };

/// The lines of one file, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentMap {
    lines: Vec<(String, String, String)>,
}

impl IdentMap {
    /// Reads maps from `text`; an error names the line (1-based) and what is wrong.
    pub fn parse(text: &str) -> Result<IdentMap, (usize, String)> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let number = i + 1;
            let fields = crate::hba::plain_fields(raw).map_err(|e| (number, e))?;
            match fields.as_slice() {
                [] => continue,
                [word, ..]
                    if matches!(
                        word.as_str(),
                        "include" | "include_if_exists" | "include_dir"
                    ) =>
                {
                    return Err((
                        number,
                        format!("{word} is not supported: list the maps here"),
                    ))
                }
                [map, system, user] => {
                    if system.starts_with('/') {
                        return Err((
                            number,
                            format!(
                                "regular expressions ({system}) are not supported; list each system user name"
                            ),
                        ));
                    }
                    if user == "all" {
                        return Err((
                            number,
                            "all (PostgreSQL 16's any database user) is not supported; give a user name".into(),
                        ));
                    }
                    if user.starts_with('+') || user.contains("\\1") {
                        return Err((
                            number,
                            format!("{user}: group membership and \\1 are not supported; give a user name"),
                        ));
                    }
                    lines.push((map.clone(), system.clone(), user.clone()));
                }
                _ => {
                    return Err((
                        number,
                        format!(
                            "expected MAPNAME SYSTEM-USERNAME PG-USERNAME, found {} fields",
                            fields.len()
                        ),
                    ))
                }
            }
        }
        Ok(IdentMap { lines })
    }

    /// Whether map `map` lets the system user (or certificate name) `system` log in
    /// as `user`.
    pub fn permits(&self, map: &str, system: &[u8], user: &str) -> bool {
        self.lines
            .iter()
            .any(|(m, s, u)| m == map && s.as_bytes() == system && u == user)
    }

    /// Whether map `map` has any line (a rule naming a map with none can never admit
    /// anyone: the config is refused).
    pub fn has(&self, map: &str) -> bool {
        self.lines.iter().any(|(m, _, _)| m == map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_pair_system_users_with_database_users() {
        let map = IdentMap::parse(
            "# web servers\n\
             web  www-data  app\n\
             \n\
             web  \"deploy user\"  app   # quoted\n\
             admins root postgres\n",
        )
        .unwrap();
        assert!(map.permits("web", b"www-data", "app"));
        assert!(map.permits("web", b"deploy user", "app"));
        assert!(!map.permits("web", b"www-data", "postgres"));
        assert!(!map.permits("admins", b"www-data", "app"));
        assert!(map.permits("admins", b"root", "postgres"));
        assert!(map.has("web") && !map.has("nobody"));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line, says) in [
            ("web www-data app\nweb www-data", 2, "found 2 fields"),
            ("web /^(.*)$ \\1", 1, "regular expressions"),
            ("web www-data +admins", 1, "group membership"),
            ("web \"www-data app", 1, "unterminated"),
            ("web www-data all", 1, "not supported"),
            ("include_dir maps.d", 1, "include_dir is not supported"),
        ] {
            let (at, e) = IdentMap::parse(text).unwrap_err();
            assert_eq!(at, line, "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
