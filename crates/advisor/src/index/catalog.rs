//! What the index advisor needs to know about the workload's tables: columns with their
//! types and planner statistics (pg_stats), size, and the indexes they already have.

use tokio_postgres::Client;

use crate::AdvisorError;

/// One table (or materialized view) the workload reads or writes.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// `schema.name`, each part quoted when it must be.
    pub qualified: String,
    pub name: String,
    pub schema: String,
    /// Tables and materialized views can be indexed; views and partitioned parents
    /// (which HypoPG cannot simulate) cannot.
    pub indexable: bool,
    pub rows: f64,
    pub columns: Vec<Column>,
    pub indexes: Vec<ExistingIndex>,
}

#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// The name quoted for SQL when it must be.
    pub ident: String,
    /// `pg_type.typname` (`jsonb`, `tsvector`, `_int4`…) and whether it is an array.
    pub type_name: String,
    pub is_array: bool,
    pub stats: Option<ColumnStats>,
}

/// A column's row in pg_stats.
#[derive(Debug, Clone, Default)]
pub(crate) struct ColumnStats {
    pub null_frac: f64,
    /// Distinct values: positive is a count, negative a fraction of the rows.
    pub n_distinct: f64,
    pub common_values: Vec<String>,
    pub common_freqs: Vec<f64>,
    pub histogram: Vec<String>,
    /// Average width of a value in bytes.
    pub avg_width: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct ExistingIndex {
    /// Schema-qualified, quoted as needed.
    pub name: String,
    /// As EXPLAIN names it.
    pub relname: String,
    pub method: String,
    /// Key columns and expressions as `pg_get_indexdef` prints them, then INCLUDE columns.
    pub keys: Vec<String>,
    pub include: Vec<String>,
    pub predicate: Option<String>,
    /// Unique, primary key or backing a constraint: never reported as droppable.
    pub enforces: bool,
    pub valid: bool,
    pub bytes: i64,
    pub definition: String,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The share of rows a column's value equals `value` has, from pg_stats.
    pub fn eq_selectivity(&self, column: &str, value: &str) -> Option<f64> {
        let stats = self.column(column)?.stats.as_ref()?;
        if let Some(i) = stats.common_values.iter().position(|v| v == value) {
            return stats.common_freqs.get(i).copied();
        }
        let common: f64 = stats.common_freqs.iter().sum();
        let distinct = stats.distinct(self.rows);
        let others = distinct - stats.common_values.len() as f64;
        Some(if others >= 1.0 {
            (1.0 - common - stats.null_frac).max(0.0) / others
        } else {
            0.0
        })
    }
}

impl ColumnStats {
    pub fn distinct(&self, rows: f64) -> f64 {
        if self.n_distinct < 0.0 {
            -self.n_distinct * rows
        } else {
            self.n_distinct
        }
    }
}

/// `name` as a SQL identifier: bare when PostgreSQL would read it back unchanged.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED.contains(&name);
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Reserved keywords (and the non-reserved ones that cannot be a column name).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "system_user",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// Looks up tables by name as written (`schema.name` or `name`, resolved through the
/// session's search_path). Names that are not tables (CTEs, views, catalogs) are left
/// out.
pub(crate) async fn load(
    client: &Client,
    names: &[(Option<String>, String)],
) -> Result<Vec<Table>, AdvisorError> {
    let q = |source| AdvisorError::Query {
        check: "index_advisor.catalog",
        source,
    };
    let mut tables: Vec<Table> = Vec::new();
    for (schema, name) in names {
        let written = match schema {
            Some(s) => format!("{}.{}", quote_always(s), quote_always(name)),
            None => quote_always(name),
        };
        let Some(row) = client
            .query_opt(
                "SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.reltuples::float8
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = to_regclass($1)
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg_toast%'",
                &[&written],
            )
            .await
            .map_err(q)?
        else {
            continue;
        };
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let relname: String = row.get(2);
        if tables
            .iter()
            .any(|t| t.schema == schema && t.name == relname)
        {
            continue;
        }
        let kind: String = row.get(3);
        let columns = client
            .query(
                "SELECT a.attname::text, t.typname::text, t.typcategory = 'A',
                        s.null_frac::float8, s.n_distinct::float8,
                        s.most_common_vals::text, s.most_common_freqs::float8[],
                        s.histogram_bounds::text, s.attname IS NOT NULL, s.avg_width::float8
                   FROM pg_attribute a
                   JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_stats s ON s.schemaname = $2 AND s.tablename = $3
                                       AND s.attname = a.attname AND NOT s.inherited
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&oid, &schema, &relname],
            )
            .await
            .map_err(q)?
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let has_stats: bool = r.get(8);
                Column {
                    ident: quote_ident(&name),
                    name,
                    type_name: r.get(1),
                    is_array: r.get(2),
                    stats: has_stats.then(|| ColumnStats {
                        null_frac: r.get::<_, Option<f64>>(3).unwrap_or(0.0),
                        n_distinct: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
                        common_values: parse_array(r.get::<_, Option<&str>>(5).unwrap_or("")),
                        common_freqs: r.get::<_, Option<Vec<f64>>>(6).unwrap_or_default(),
                        histogram: parse_array(r.get::<_, Option<&str>>(7).unwrap_or("")),
                        avg_width: r.get::<_, Option<f64>>(9).unwrap_or(0.0),
                    }),
                }
            })
            .collect();
        let indexes = client
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname), am.amname::text,
                        ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                                FROM generate_series(1, i.indnatts) k ORDER BY k),
                        i.indnkeyatts::int4, pg_get_expr(i.indpred, i.indrelid, true),
                        i.indisunique OR i.indisprimary OR i.indisexclusion
                          OR EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid),
                        i.indisvalid, pg_relation_size(i.indexrelid), pg_get_indexdef(i.indexrelid),
                        ic.relname::text
                   FROM pg_index i
                   JOIN pg_class ic ON ic.oid = i.indexrelid
                   JOIN pg_namespace n ON n.oid = ic.relnamespace
                   JOIN pg_am am ON am.oid = ic.relam
                  WHERE i.indrelid = $1
                  ORDER BY ic.relname",
                &[&oid],
            )
            .await
            .map_err(q)?
            .into_iter()
            .map(|r| {
                let mut keys: Vec<String> = r.get(2);
                let nkeys = (r.get::<_, i32>(3) as usize).min(keys.len());
                let include = keys.split_off(nkeys);
                ExistingIndex {
                    name: r.get(0),
                    relname: r.get(9),
                    method: r.get(1),
                    keys,
                    include,
                    predicate: r.get(4),
                    enforces: r.get(5),
                    valid: r.get(6),
                    bytes: r.get(7),
                    definition: r.get(8),
                }
            })
            .collect();
        tables.push(Table {
            qualified: format!("{}.{}", quote_ident(&schema), quote_ident(&relname)),
            name: relname,
            schema,
            indexable: kind == "r" || kind == "m",
            rows: row.get::<_, f64>(4).max(0.0),
            columns,
            indexes,
        });
    }
    Ok(tables)
}

fn quote_always(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The elements of a one-dimensional array in PostgreSQL's text form (`{a,"b c",NULL}`);
/// NULLs are left out.
pub(crate) fn parse_array(text: &str) -> Vec<String> {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let mut item = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.extend(chars.next()),
                    '"' => break,
                    c => item.push(c),
                }
            }
            // Up to the separator.
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
            }
        } else {
            let mut depth = 0;
            for c in chars.by_ref() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => break,
                    _ => {}
                }
                item.push(c);
            }
        }
        if quoted || item != "NULL" {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_in_text_form() {
        assert_eq!(
            parse_array(r#"{a,"b c","say \"hi\"",NULL,"NULL",42}"#),
            vec!["a", "b c", "say \"hi\"", "NULL", "42"]
        );
        assert_eq!(parse_array("{}"), Vec::<String>::new());
        assert_eq!(parse_array(r#"{"{1,2}","{3}"}"#), vec!["{1,2}", "{3}"]);
        assert_eq!(parse_array(""), Vec::<String>::new());
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("email"), "email");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("Mixed"), "\"Mixed\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1x"), "\"1x\"");
    }
}
