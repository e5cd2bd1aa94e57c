//! Statements too long to parse whole (bulk INSERTs, long IN lists, big literals) are
//! analysed shortened: the verdicts are those of the whole text, in bounded memory.

use pgopt_sql::{analyze, Analysis, Analyzer, StatementKind, SHORTENED};

fn analysed(sql: &str) -> Analysis {
    analyze(sql).unwrap_or_else(|e| panic!("{:.80}: {e}", sql))
}

/// `INSERT INTO t (id, name, score) VALUES (1, 'name 1', 1.5), …` with `rows` rows,
/// the row `last` put last.
fn bulk_insert(rows: usize, last: &str) -> String {
    let mut sql = String::from("INSERT INTO app.items (id, name, score) VALUES ");
    for i in 0..rows {
        sql.push_str(&format!("({i}, 'name {i}', {i}.5::numeric), "));
    }
    sql.push_str(last);
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
    sql
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_bulk_insert_is_analysed_as_its_first_row_in_bounded_memory() {
    let small = analysed(&bulk_insert(1, "(-1, NULL, DEFAULT)"));
    let sql = bulk_insert(200_000, "(-1, NULL, DEFAULT)");
    let before = peak_rss();
    let big = analysed(&sql);
    let grown = peak_rss().saturating_sub(before);
    // It took 3 GB (and 11 s) before it was shortened.
    assert!(
        grown < 256 << 20,
        "analysing {} MB grew the peak RSS by {grown} bytes",
        sql.len() >> 20
    );
    assert_eq!(big.kinds, vec![StatementKind::Insert]);
    assert_eq!(big.tables_written, vec!["app.items".to_string()]);
    assert_eq!(
        (
            big.tables_read.clone(),
            big.functions.clone(),
            big.unknown_writes,
            big.volatile
        ),
        (
            small.tables_read.clone(),
            small.functions.clone(),
            small.unknown_writes,
            small.volatile
        )
    );
    assert!(
        big.normalized.ends_with(SHORTENED),
        "{:.200}",
        big.normalized
    );
    assert!(big.normalized.len() < 1024, "{:.200}", big.normalized);
    // Long statements of a shape share a fingerprint, apart from short ones.
    assert_ne!(big.fingerprint, small.fingerprint);
    assert_eq!(
        analysed(&bulk_insert(100_000, "(-1, NULL, DEFAULT)")).fingerprint,
        big.fingerprint
    );
}

#[test]
fn what_a_cut_row_or_value_would_hide_is_never_cut() {
    // A clock word, a function, a subquery in the last row: the row stays.
    for (last, check) in [
        ("(-1, 'today', 0)", "volatile"),
        ("(-1, CURRENT_TIMESTAMP, 0)", "volatile"),
        ("(-1, random()::text, 0)", "volatile"),
        (
            "(-1, (SELECT name FROM app.names LIMIT 1), 0)",
            "reads app.names",
        ),
    ] {
        let a = analysed(&bulk_insert(2_000, last));
        let seen = match check {
            "volatile" => a.volatile,
            _ => a.tables_read.contains(&"app.names".to_string()),
        };
        assert!(seen, "{last}: {a:?}");
    }
    let mut list: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
    let select =
        |list: &[String]| format!("SELECT * FROM app.items WHERE id IN ({})", list.join(", "));
    let plain = analysed(&select(&list));
    assert!(plain.cacheable(), "{plain:?}");
    assert_eq!(plain.tables_read, vec!["app.items".to_string()]);
    list.push("(SELECT max(id) FROM app.other)".into());
    let sub = analysed(&select(&list));
    assert!(
        sub.tables_read.contains(&"app.other".to_string()),
        "{sub:?}"
    );
}

#[test]
fn a_huge_literal_is_analysed_without_it() {
    let sql = format!(
        "UPDATE app.docs SET body = '{}' WHERE id = 1",
        "y".repeat(24 << 20)
    );
    let before = peak_rss();
    let a = Analyzer::default().analyze(&sql).unwrap();
    let grown = peak_rss().saturating_sub(before);
    // (The text itself is 24 MB; it took 150 MB before it was shortened.)
    assert!(grown < 64 << 20, "grew the peak RSS by {grown} bytes");
    assert_eq!(a.tables_written, vec!["app.docs".to_string()]);
}

#[test]
fn in_a_multi_statement_text_only_the_cut_statement_is_marked() {
    let insert = bulk_insert(5_000, "(-1, NULL, DEFAULT)");
    let text = format!("BEGIN; {insert}; COMMIT");
    let a = analysed(&text);
    assert_eq!(a.parts.len(), 3, "{a:?}");
    assert_eq!(a.parts[0].fingerprint, analysed("BEGIN").fingerprint);
    assert_eq!(a.parts[1].fingerprint, analysed(&insert).fingerprint);
    assert_ne!(
        a.parts[1].fingerprint,
        analysed(&bulk_insert(1, "(-1, NULL, DEFAULT)")).fingerprint
    );
    assert!(
        a.parts[1].normalized.ends_with(SHORTENED),
        "{}",
        a.parts[1].normalized
    );
    assert_eq!(a.parts[2].fingerprint, analysed("COMMIT").fingerprint);
}

#[test]
fn a_bulk_insert_of_rows_that_may_read_the_clock_is_still_cut() {
    // Each row's text holds "now": one such row stays for the analysis (volatile), the
    // rest are cut.
    let mut sql = String::from("INSERT INTO app.items (id, name) VALUES ");
    let rows: Vec<String> = (0..200_000)
        .map(|i| format!("({i}, 'Buy now {i}')"))
        .collect();
    sql.push_str(&rows.join(", "));
    let before = peak_rss();
    let a = analysed(&sql);
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 256 << 20, "grew the peak RSS by {grown} bytes");
    assert!(a.volatile, "{a:?}");
    assert!(a.normalized.ends_with(SHORTENED), "{:.200}", a.normalized);
}

#[test]
fn a_huge_literal_that_may_read_the_clock_is_analysed_without_it_and_still_volatile() {
    let filler = "y".repeat(24 << 20);
    let sql = format!(
        "SELECT count(*) FROM app.docs WHERE at = ANY('{{2020-01-01,today,{filler}}}'::text[]::date[])"
    );
    let before = peak_rss();
    let a = Analyzer::default().analyze(&sql).unwrap();
    let grown = peak_rss().saturating_sub(before);
    // (Twice the text: the key keeps such a literal whole.)
    assert!(grown < 128 << 20, "grew the peak RSS by {grown} bytes");
    assert!(a.volatile, "{a:?}");
}
