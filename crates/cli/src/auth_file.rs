//! `proxy.auth_file`: users and passwords in PgBouncer's `auth_file` form
//! (`userlist.txt`), so a PgBouncer deployment's file serves pgopt unchanged.
//!
//! ```text
//! ; comment
//! "alice" "SCRAM-SHA-256$4096:…"
//! "bob"   "md5…"
//! "carol" "plain text"
//! ```
//!
//! One user per line: the name and the password (plaintext, an md5 hash or a SCRAM
//! verifier, as `[[proxy.users]]` takes them), each in double quotes, a `"` inside
//! written twice; the rest of the line is ignored, as PgBouncer ignores it. Blank
//! lines and lines starting with `;` or `#` are skipped. Unlike PgBouncer, which
//! stops reading at a broken line and keeps what came before, a broken line is an
//! error that names it.

/// The (user, password) pairs of `text`, in order; an error names the line (1-based).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut users: Vec<(String, String)> = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let (name, rest) = quoted(line).map_err(|e| (number, format!("the user name {e}")))?;
        let (password, _) =
            quoted(rest.trim_start()).map_err(|e| (number, format!("the password {e}")))?;
        if name.is_empty() {
            return Err((number, "an empty user name".into()));
        }
        if let Some(first) = users.iter().position(|(n, _)| *n == name) {
            return Err((
                number,
                format!(
                    "user \"{name}\" is listed twice (first on line {})",
                    lines[first]
                ),
            ));
        }
        users.push((name, password));
        lines.push(number);
    }
    Ok(users)
}

/// A `"…"` field at the start of `text` (a `"` inside written `""`), and what follows.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let Some(mut rest) = text.strip_prefix('"') else {
        return Err("must be in double quotes".into());
    };
    let mut value = String::new();
    loop {
        let Some(end) = rest.find('"') else {
            return Err("has no closing double quote".into());
        };
        value.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                value.push('"');
                rest = after;
            }
            None => return Ok((value, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbouncers_user_list() {
        let users = parse(
            "; generated from pg_shadow\n\
             \n\
             \"alice\" \"md5b1e1c5a8ea2bfba1b9a6a8e8d4e1d9f0\"\n\
             \x20 \"bob\"\t\"say \"\"hi\"\"\" \"\" trailing fields ignored\n\
             # another comment\n\
             \"Carol Smith\" \"\"\n",
        )
        .unwrap();
        assert_eq!(
            users,
            vec![
                ("alice".into(), "md5b1e1c5a8ea2bfba1b9a6a8e8d4e1d9f0".into()),
                ("bob".into(), "say \"hi\"".into()),
                ("Carol Smith".into(), String::new()),
            ]
        );
    }

    #[test]
    fn broken_lines_are_named() {
        for (text, line, says) in [
            ("\"alice\" \"x\"\nbob \"y\"", 2, "double quotes"),
            ("\"alice\" x", 1, "the password must be in double quotes"),
            ("\"alice", 1, "no closing"),
            ("\"alice\" \"secret", 1, "the password has no closing"),
            ("\"alice\"", 1, "the password must be"),
            ("\"\" \"x\"", 1, "empty user name"),
            ("\"a\" \"x\"\n\"a\" \"y\"", 2, "twice (first on line 1)"),
        ] {
            let (at, e) = parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}: {e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
