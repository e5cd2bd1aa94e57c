//! Verdicts of `analyze` on statements a proxy sees.

use pgopt_sql::{analyze, analyze_with, AnalysisConfig, SessionEffect, SqlError, StatementKind};

fn fp(sql: &str) -> u64 {
    analyze(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .fingerprint
}

fn tables(sql: &str) -> (Vec<String>, Vec<String>) {
    let a = analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    (a.tables_read, a.tables_written)
}

fn v(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn read_only(sql: &str) -> bool {
    analyze(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .read_only
}

#[test]
fn fingerprint_ignores_literals_whitespace_comments_case_and_in_list_length() {
    let base = fp("SELECT * FROM t WHERE a = 1 AND b IN (1, 2)");
    for same in [
        "SELECT * FROM t WHERE a = 42 AND b IN (1, 2)",
        "SELECT * FROM t WHERE a = 'x' AND b IN (1, 2)",
        "select *\n  from t\twhere a = 1 and b in (1,2)",
        "/* app:checkout */ SELECT * FROM t -- trailing\n WHERE a = 1 AND b IN (1, 2)",
        "SELECT * FROM t WHERE a = 1 AND b IN (1, 2, 3)",
        "SELECT * FROM t WHERE a = 1 AND b IN (7, 8, 9, 10, 11)",
    ] {
        assert_eq!(fp(same), base, "{same}");
    }
}

#[test]
fn fingerprint_separates_tables_columns_schemas_operators_and_limit() {
    let base = fp("SELECT a FROM t WHERE a = 1");
    for different in [
        "SELECT a FROM u WHERE a = 1",
        "SELECT b FROM t WHERE a = 1",
        "SELECT a FROM t WHERE b = 1",
        "SELECT a FROM s.t WHERE a = 1",
        "SELECT a FROM t WHERE a < 1",
        "SELECT a FROM t WHERE a = 1 LIMIT 10",
        "SELECT a FROM t_2024 WHERE a = 1",
    ] {
        assert_ne!(fp(different), base, "{different}");
    }
    assert_ne!(
        fp("SELECT a FROM orders_2024_01"),
        fp("SELECT a FROM orders_2024_02")
    );
    assert_ne!(fp("SELECT a FROM s1.t"), fp("SELECT a FROM s2.t"));
}

#[test]
fn fingerprint_hex_and_normalized() {
    let a = analyze("SELECT * FROM t WHERE id = 5 AND x IN (1, 2, 3)").unwrap();
    assert_eq!(a.fingerprint_hex().len(), 16);
    assert_eq!(
        a.normalized,
        "SELECT * FROM t WHERE id = $1 AND x IN ($2 /*, ... */)"
    );
}

#[test]
fn kinds_of_statements() {
    use StatementKind::*;
    let cases = [
        ("SELECT 1", Select),
        ("VALUES (1), (2)", Select),
        ("TABLE t", Select),
        ("INSERT INTO t VALUES (1)", Insert),
        ("UPDATE t SET a = 1", Update),
        ("DELETE FROM t", Delete),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Merge,
        ),
        ("COPY t FROM STDIN", Copy),
        ("CREATE TABLE t (id int)", Ddl),
        ("ALTER TABLE t ADD COLUMN b int", Ddl),
        ("DROP TABLE t", Ddl),
        ("TRUNCATE t", Ddl),
        ("SELECT * INTO new_t FROM t", Ddl),
        ("BEGIN", Transaction),
        ("COMMIT", Transaction),
        ("ROLLBACK", Transaction),
        ("SAVEPOINT s", Transaction),
        ("RELEASE SAVEPOINT s", Transaction),
        ("SET search_path = app", Set),
        ("RESET search_path", Reset),
        ("SHOW search_path", Show),
        ("EXPLAIN SELECT 1", Explain),
        ("LISTEN chan", Other),
        ("VACUUM t", Other),
    ];
    for (sql, kind) in cases {
        assert_eq!(analyze(sql).unwrap().kinds, vec![kind], "{sql}");
    }
    assert_eq!(
        analyze("BEGIN; UPDATE t SET a = 1; COMMIT").unwrap().kinds,
        vec![Transaction, Update, Transaction]
    );
}

#[test]
fn tables_of_selects_joins_subqueries_and_ctes() {
    assert_eq!(
        tables("SELECT * FROM a JOIN s.b ON a.id = b.id LEFT JOIN c USING (id)"),
        (v(&["a", "c", "s.b"]), v(&[]))
    );
    assert_eq!(
        tables("SELECT * FROM a WHERE id IN (SELECT id FROM b) AND EXISTS (SELECT 1 FROM c)"),
        (v(&["a", "b", "c"]), v(&[]))
    );
    assert_eq!(
        tables("SELECT (SELECT max(x) FROM d), * FROM (SELECT * FROM e) sub"),
        (v(&["d", "e"]), v(&[]))
    );
    assert_eq!(
        tables("WITH r AS (SELECT * FROM base) SELECT * FROM r JOIN other ON true"),
        (v(&["base", "other"]), v(&[]))
    );
    // Quoted names keep their case.
    assert_eq!(
        tables("SELECT * FROM \"Mixed\".\"Case\""),
        (v(&["Mixed.Case"]), v(&[]))
    );
}

#[test]
fn tables_of_writes() {
    assert_eq!(
        tables("WITH d AS (DELETE FROM old RETURNING *) INSERT INTO archive SELECT * FROM d"),
        (v(&[]), v(&["archive", "old"]))
    );
    assert_eq!(
        tables("INSERT INTO s.dst (a) SELECT a FROM src JOIN x ON true"),
        (v(&["src", "x"]), v(&["s.dst"]))
    );
    assert_eq!(
        tables("UPDATE t SET a = o.a FROM other o WHERE t.id = o.id"),
        (v(&["other"]), v(&["t"]))
    );
    assert_eq!(
        tables("DELETE FROM t USING other WHERE t.id = other.id"),
        (v(&["other"]), v(&["t"]))
    );
    assert_eq!(
        tables(
            "MERGE INTO tgt USING src ON tgt.id = src.id WHEN MATCHED THEN UPDATE SET a = src.a"
        ),
        (v(&["src"]), v(&["tgt"]))
    );
    assert_eq!(tables("COPY t FROM STDIN"), (v(&[]), v(&["t"])));
    assert_eq!(tables("COPY t TO STDOUT"), (v(&["t"]), v(&[])));
    assert_eq!(
        tables("COPY (SELECT * FROM q) TO STDOUT"),
        (v(&["q"]), v(&[]))
    );
    assert_eq!(tables("TRUNCATE a, s.b"), (v(&[]), v(&["a", "s.b"])));
    assert_eq!(
        tables("ALTER TABLE s.t ADD COLUMN c int"),
        (v(&[]), v(&["s.t"]))
    );
    assert_eq!(tables("DROP TABLE a, s.b"), (v(&[]), v(&["a", "s.b"])));
    // A child taken into or out of a parent changes the parent's rows too.
    for inherit in ["ALTER TABLE c INHERIT p", "ALTER TABLE c NO INHERIT p"] {
        assert_eq!(tables(inherit), (v(&[]), v(&["c", "p"])), "{inherit}");
    }
    assert_eq!(
        tables("CREATE TABLE n AS SELECT * FROM src"),
        (v(&["src"]), v(&["n"]))
    );
    assert_eq!(tables("CREATE INDEX ON t (a)"), (v(&[]), v(&["t"])));
    assert_eq!(tables("REFRESH MATERIALIZED VIEW mv"), (v(&[]), v(&["mv"])));
    assert_eq!(
        tables("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a"),
        (v(&[]), v(&["t"]))
    );
}

#[test]
fn read_only_verdicts() {
    for yes in [
        "SELECT * FROM t WHERE id = 1",
        "VALUES (1)",
        "SHOW work_mem",
        "EXPLAIN SELECT * FROM t",
        "SELECT count(*), now(), lower(name) FROM t GROUP BY name",
        "SELECT pg_sleep(1)",
        "SELECT currval('s')",
        "WITH r AS (SELECT 1) SELECT * FROM r",
        // Catalog helpers pg_dump and psql's \d call.
        "SELECT acldefault('r', relowner), pg_catalog.pg_relation_is_publishable(oid) FROM pg_class",
        "SELECT pg_describe_object(classid, objid, 0), pg_get_expr(adbin, adrelid) FROM d",
    ] {
        assert!(read_only(yes), "{yes} should be read-only");
    }
    for no in [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
        "SELECT nextval('s')",
        "SELECT setval('s', 5)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT set_config('a.b', 'c', false)",
        "SELECT txid_current()",
        "SELECT pg_notify('c', 'p')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT * FROM dblink('x', 'select 1') AS t(a int)",
        "SELECT my_function(1)",
        "SELECT app.fn()",
        "SELECT * FROM t WHERE id = (SELECT nextval('s'))",
        "SELECT ARRAY[nextval('s')]",
        "SELECT * FROM t LIMIT nextval('s')",
        "SELECT f(a => nextval('s'))",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN ANALYZE SELECT 1",
        "EXPLAIN DELETE FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
        "SELECT * INTO new_t FROM t",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "SET x = 1",
        "SELECT 1; DELETE FROM t",
        "",
    ] {
        assert!(!read_only(no), "{no} should not be read-only");
    }
}

#[test]
fn read_only_transaction_blocks() {
    let begins = |sql: &str| analyze(sql).unwrap().begins_read_only;
    for yes in [
        "BEGIN READ ONLY",
        "begin transaction read only",
        "START TRANSACTION READ ONLY",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "BEGIN READ ONLY; SELECT 1",
        "BEGIN READ ONLY; SELECT 1; COMMIT",
        "BEGIN READ ONLY; SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a",
    ] {
        assert!(begins(yes), "{yes} opens a read-only block");
    }
    for no in [
        "BEGIN",
        "BEGIN READ WRITE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "SET TRANSACTION READ ONLY",
        "SELECT 1; BEGIN READ ONLY",
        "COMMIT",
        // What follows the block's end would run outside it, on the same server.
        "BEGIN READ ONLY; COMMIT; INSERT INTO t VALUES (1)",
        "BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN; SELECT 1",
        "BEGIN READ ONLY; SELECT nextval('s')",
    ] {
        assert!(!begins(no), "{no} does not open a read-only block");
    }
}

#[test]
fn functions_are_found_in_every_expression_position() {
    for sql in [
        "SELECT * FROM t WHERE id = (SELECT nextval('s'))",
        "SELECT ARRAY[nextval('s')]",
        "SELECT * FROM t LIMIT nextval('s')",
        "SELECT lower(x) FROM t WHERE y = any(ARRAY[nextval('s')])",
        "SELECT (nextval('s')).x",
        "VALUES (nextval('s'))",
        "SELECT CASE WHEN a THEN nextval('s') END FROM t",
        "SELECT x FROM t ORDER BY nextval('s') COLLATE \"C\"",
    ] {
        let a = analyze(sql).unwrap();
        assert!(
            a.functions.iter().any(|f| f == "nextval"),
            "{sql}: {:?}",
            a.functions
        );
        assert!(!a.read_only && a.volatile, "{sql}");
    }
}

#[test]
fn allow_listed_user_functions_are_read_only() {
    let config = AnalysisConfig {
        read_only_functions: vec!["app.price".into()],
        volatile_functions: vec!["app.price".into()],
    };
    let a = analyze_with("SELECT app.price(1)", &config).unwrap();
    assert!(a.read_only);
    assert!(a.volatile);
    assert_eq!(a.functions, vec!["app.price"]);
    assert!(!analyze_with("SELECT price(1)", &config).unwrap().read_only);
}

#[test]
fn unparsable_sql_is_an_error() {
    match analyze("SELECT * FORM t") {
        Err(SqlError::Parse { message, position }) => {
            assert!(message.contains("syntax error"), "{message}");
            assert_eq!(position, Some(9));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        analyze("SELECT 'abc"),
        Err(SqlError::Parse { .. })
    ));
    assert!(matches!(
        analyze("SELECT 1\0"),
        Err(SqlError::NulByte { position: 8 })
    ));
}

/// A conversion to a date or time reads the clock for a text `'now'`: of a column,
/// the column is named (the cache checks its type); of an expression that may be
/// text, it is volatile.
#[test]
fn conversions_to_dates_and_times() {
    for (sql, columns) in [
        ("SELECT v::timestamptz FROM t", vec!["v"]),
        ("SELECT CAST(t.v AS timestamp) FROM t", vec!["v"]),
        (
            "SELECT date(created_at), at::time FROM t",
            vec!["at", "created_at"],
        ),
        ("SELECT max(v)::date FROM t GROUP BY k", vec!["v"]),
        ("SELECT date_trunc('day', at)::date FROM t", vec![]),
        ("SELECT '2024-01-01'::date, $1::timestamptz FROM t", vec![]),
        ("SELECT v::text FROM t", vec![]),
    ] {
        let a = analyze(sql).unwrap();
        assert!(!a.volatile, "{sql}");
        assert_eq!(a.datetime_casts, columns, "{sql}");
    }
    for sql in [
        "SELECT ('n' || 'ow')::timestamptz FROM t",
        "SELECT ARRAY[v]::timestamptz[] FROM t",
        "SELECT timestamptz(lower(v)) FROM t",
        "SELECT (j ->> 'at')::date FROM t",
        "SELECT v::text::date FROM t",
    ] {
        assert!(analyze(sql).unwrap().volatile, "{sql}");
    }
}

/// Procedural code that may change the session's settings (a DO block's body).
#[test]
fn procedural_code_that_may_set_settings() {
    // (Settings: not whether it may leave other state, as dynamic SQL may.)
    let may_set_settings = |body| {
        let set = pgopt_sql::settings_set_by(body);
        set.any || set.names.iter().any(|n| n != pgopt_sql::SESSION_STATE)
    };
    for yes in [
        "BEGIN PERFORM set_config('search_path', 't', false); END",
        "BEGIN SET search_path TO t; END",
        "BEGIN IF x THEN RESET timezone; END IF; END",
        "BEGIN EXECUTE 'SET search_path TO ' || quote_ident(t); END",
        "BEGIN\n -- the tenant's schema\n SET search_path TO t; END",
        "BEGIN /* its schema */ SET search_path TO t; END",
        "BEGIN UPDATE pg_settings SET setting = 't' WHERE name = 'search_path'; END",
        "BEGIN SET ROLE app_ro; END",
    ] {
        assert!(may_set_settings(yes), "{yes}");
    }
    for no in [
        "BEGIN UPDATE t SET v = 1; END",
        "BEGIN INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2; END",
        "BEGIN ALTER TABLE t ALTER COLUMN v SET DEFAULT 1; END",
        "BEGIN PERFORM 1; END",
        "BEGIN RAISE NOTICE 'é ü'; END",
        "é",
        "BEGIN SET LOCAL lock_timeout = '1s'; SET CONSTRAINTS ALL DEFERRED; END",
        "BEGIN SET TRANSACTION READ ONLY; END",
        "BEGIN IF status = 'reset' THEN RAISE NOTICE 'reset done'; END IF; END",
        "BEGIN EXECUTE 'UPDATE ' || quote_ident(t) || ' SET v = 1'; END",
        "BEGIN -- done; reset counters\n PERFORM 1; END",
    ] {
        assert!(!may_set_settings(no), "{no}");
    }
}

#[test]
fn volatile_detection() {
    for yes in [
        "SELECT now()",
        "SELECT current_timestamp",
        "SELECT CURRENT_DATE",
        "SELECT clock_timestamp()",
        "SELECT random()",
        "SELECT gen_random_uuid()",
        "SELECT nextval('s')",
        "SELECT statement_timestamp()",
        "SELECT timeofday()",
        "SELECT txid_current()",
        "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
        "SELECT * FROM t WHERE created > now() - interval '1 day'",
        "SELECT * FROM t WHERE created > 'now'::timestamptz - interval '1 day'",
        "SELECT * FROM t WHERE day = date 'today'",
        "SELECT * FROM t WHERE day < ' Tomorrow '",
        "SELECT 'yesterday'::date",
        // Text converted at run time into a range of dates or times, or into a
        // record's date or time column ('now' in it reads the clock).
        "SELECT ('[' || msg || ',infinity)')::tstzrange FROM log WHERE id = 1",
        "SELECT ('[' || msg || ',infinity)')::tsmultirange FROM log",
        "SELECT x.a FROM log, jsonb_to_record(jsonb_build_object('a', msg)) AS x(a timestamptz)",
        // The one-argument age() is from the current date.
        "SELECT age(ts) FROM items WHERE id = 1",
        // Read-only, but volatile in the catalog (or, the start time, changed by a
        // restart no write announces).
        "SELECT id, pg_blocking_pids(id) FROM items",
        "SELECT pg_jit_available() FROM items",
        "SELECT * FROM items, pg_partition_tree('items')",
        "SELECT pg_partition_ancestors('items') FROM items",
        "SELECT pg_postmaster_start_time() FROM items",
    ] {
        assert!(analyze(yes).unwrap().volatile, "{yes} should be volatile");
    }
    for no in [
        "SELECT * FROM t WHERE id = 1",
        "SELECT lower(name) FROM t",
        "SELECT current_user",
        "SELECT * FROM t WHERE created > '2026-01-01'::timestamptz",
        "SELECT * FROM t WHERE note = 'nowhere'",
    ] {
        assert!(
            !analyze(no).unwrap().volatile,
            "{no} should not be volatile"
        );
    }
    let a = analyze("SELECT currval('s')").unwrap();
    assert!(a.read_only && a.session_dependent && !a.cacheable());
    assert!(analyze("SELECT * FROM t WHERE id = 1").unwrap().cacheable());
    assert!(!analyze("SELECT now()").unwrap().cacheable());
}

#[test]
fn locking() {
    assert!(analyze("SELECT * FROM t FOR UPDATE").unwrap().locking);
    assert!(analyze("LOCK TABLE t IN EXCLUSIVE MODE").unwrap().locking);
    assert!(!analyze("SELECT * FROM t").unwrap().locking);
}

#[test]
fn session_effects() {
    let effects = |sql: &str| analyze(sql).unwrap().session_effects;
    assert_eq!(
        effects("SET search_path = app"),
        vec![SessionEffect::Set {
            name: "search_path".into()
        }]
    );
    assert_eq!(effects("SET LOCAL search_path = app"), vec![]);
    assert_eq!(
        effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        vec![]
    );
    assert_eq!(
        effects("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'"),
        vec![]
    );
    assert_eq!(
        effects("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        vec![SessionEffect::Set {
            name: "SESSION CHARACTERISTICS".into()
        }]
    );
    assert_eq!(
        effects("RESET work_mem"),
        vec![SessionEffect::Reset {
            name: "work_mem".into()
        }]
    );
    assert_eq!(effects("RESET ALL"), vec![SessionEffect::ResetAll]);
    assert_eq!(
        effects("LISTEN jobs"),
        vec![SessionEffect::Listen {
            channel: "jobs".into()
        }]
    );
    assert_eq!(
        effects("UNLISTEN *"),
        vec![SessionEffect::Unlisten { channel: None }]
    );
    assert_eq!(
        effects("SELECT pg_advisory_lock(7)"),
        vec![SessionEffect::AdvisoryLock]
    );
    assert_eq!(effects("SELECT pg_advisory_xact_lock(7)"), vec![]);
    // Not run now: a view's query, or a statement EXPLAIN only plans.
    for sql in [
        "CREATE VIEW v AS SELECT pg_try_advisory_lock(1)",
        "EXPLAIN SELECT pg_advisory_lock(1)",
        "EXPLAIN SELECT set_config('a.b', 'c', false)",
        "EXPLAIN CREATE TEMP TABLE t AS SELECT 1",
    ] {
        assert_eq!(effects(sql), vec![], "{sql}");
    }
    assert_eq!(
        effects("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)"),
        vec![SessionEffect::AdvisoryLock]
    );
    assert_eq!(
        effects("CREATE TEMP VIEW v AS SELECT pg_advisory_lock(1)"),
        vec![SessionEffect::TempObject { name: "v".into() }]
    );
    // SET … TO DEFAULT (and SET TIME ZONE LOCAL) is a RESET; SET LOCAL lasts only the
    // transaction.
    for (sql, name) in [
        ("SET work_mem TO DEFAULT", "work_mem"),
        ("SET SESSION search_path = DEFAULT", "search_path"),
        ("SET TIME ZONE LOCAL", "timezone"),
        ("SET TIME ZONE DEFAULT", "timezone"),
    ] {
        assert_eq!(
            effects(sql),
            vec![SessionEffect::Reset { name: name.into() }],
            "{sql}"
        );
    }
    assert_eq!(effects("SET LOCAL work_mem TO DEFAULT"), vec![]);
    assert_eq!(
        effects("SELECT set_config('a.b', 'c', false)"),
        vec![SessionEffect::SetConfig]
    );
    assert_eq!(effects("SELECT set_config('a.b', 'c', true)"), vec![]);
    assert_eq!(
        effects("CREATE TEMP TABLE tmp (id int)"),
        vec![SessionEffect::TempObject { name: "tmp".into() }]
    );
    assert_eq!(
        effects("CREATE TEMPORARY TABLE tmp AS SELECT 1"),
        vec![SessionEffect::TempObject { name: "tmp".into() }]
    );
    assert_eq!(effects("CREATE TABLE perm (id int)"), vec![]);
    // Made in the temporary schema by naming it: temporary all the same.
    for (sql, name) in [
        ("CREATE TABLE pg_temp.secrets (v text)", "pg_temp.secrets"),
        ("CREATE TABLE pg_temp_3.t (v text)", "pg_temp_3.t"),
        ("CREATE TABLE pg_temp.t AS SELECT 1", "pg_temp.t"),
        ("SELECT 1 INTO pg_temp.t", "pg_temp.t"),
        ("CREATE VIEW pg_temp.v AS SELECT 1", "pg_temp.v"),
        ("CREATE SEQUENCE pg_temp.s", "pg_temp.s"),
        ("CREATE TYPE pg_temp.c AS (a int)", "pg_temp.c"),
        ("CREATE TYPE pg_temp.e AS ENUM ('a')", "pg_temp.e"),
        ("CREATE DOMAIN pg_temp.d AS int", "pg_temp.d"),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "pg_temp.f",
        ),
    ] {
        assert_eq!(
            effects(sql),
            vec![SessionEffect::TempObject { name: name.into() }],
            "{sql}"
        );
    }
    assert_eq!(
        effects("CREATE TABLE pg_temp.t (id int) ON COMMIT DROP"),
        vec![]
    );
    for sql in [
        "CREATE TABLE pg_temporary.t (id int)",
        "CREATE TABLE pg_temp_x.t (id int)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "INSERT INTO pg_temp.t VALUES (1)",
    ] {
        assert_eq!(effects(sql), vec![], "{sql}");
    }
    assert_eq!(
        effects("PREPARE q AS SELECT 1"),
        vec![SessionEffect::Prepare { name: "q".into() }]
    );
    assert_eq!(
        effects("DEALLOCATE q"),
        vec![SessionEffect::Deallocate {
            name: Some("q".into())
        }]
    );
    assert_eq!(
        effects("DEALLOCATE ALL"),
        vec![SessionEffect::Deallocate { name: None }]
    );
    assert_eq!(effects("DISCARD ALL"), vec![SessionEffect::Discard]);
    assert_eq!(
        effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        vec![SessionEffect::HoldCursor { name: "c".into() }]
    );
    assert_eq!(effects("DECLARE c CURSOR FOR SELECT 1"), vec![]);
}

#[test]
fn hints_from_comments() {
    let a = analyze("/* pgopt:primary */ SELECT * FROM t").unwrap();
    assert!(a.hints.primary);
    let a = analyze("SELECT * FROM t /* pgopt:cache ttl=30s */").unwrap();
    assert_eq!(
        a.hints.cache.and_then(|c| c.ttl),
        Some(std::time::Duration::from_secs(30))
    );
    assert!(
        !analyze("SELECT '/* pgopt:primary */'")
            .unwrap()
            .hints
            .primary
    );
}

#[test]
fn a_multi_statement_text_has_one_analysis_per_statement() {
    let a = analyze("SELECT * FROM t WHERE id = 1; UPDATE t SET v = 'x' WHERE id = 2;").unwrap();
    assert_eq!(a.parts.len(), 2);
    assert_eq!(
        a.parts[0].fingerprint,
        analyze("select * from t where id = 42")
            .unwrap()
            .fingerprint
    );
    assert_eq!(a.parts[0].normalized, "SELECT * FROM t WHERE id = $1");
    assert_eq!(a.parts[1].kind(), StatementKind::Update);
    assert!(a.parts[0].read_only && !a.parts[1].read_only);
    assert!(analyze("SELECT 1").unwrap().parts.is_empty());
}

#[test]
fn writes_the_text_does_not_name_are_unknown() {
    let unknown = |sql: &str| analyze(sql).unwrap().unknown_writes;
    for sql in [
        "DO $$ BEGIN UPDATE t SET a = 1; END $$",
        "CALL p()",
        "SELECT f()",
        "REVOKE SELECT ON t FROM bob",
        "TRUNCATE t CASCADE",
        "COMMIT PREPARED 'x'",
        "UPDATE u SET a = 1; DO $$ BEGIN UPDATE t SET a = 1; END $$",
        "SELECT dblink_exec('dbname=app', 'DELETE FROM t')",
        // Names built-ins' prefixes match, but PostgreSQL does not have: a user's.
        "SELECT lo_restock(1)",
        "SELECT pg_stat_reset_my_table()",
        "SELECT pg_create_order_replication_slot()",
        "SELECT nextval('s'), f()",
    ] {
        assert!(unknown(sql), "{sql}");
    }
    // Side-effecting built-ins that change no table's rows.
    for sql in [
        "SELECT nextval('s')",
        "SELECT setval('s', 10)",
        "INSERT INTO t VALUES (nextval('s'))",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_lock(1)",
        "SELECT set_config('search_path', '', false)",
        "SELECT pg_notify('c', 'x')",
        "SELECT lo_unlink(1)",
    ] {
        let a = analyze(sql).unwrap();
        assert!(!a.unknown_writes && !a.read_only, "{sql}");
    }
    for sql in [
        "UPDATE t SET a = 1; UPDATE t SET a = 2",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "COMMIT",
        "SET work_mem = '8MB'",
        "SELECT * FROM t FOR UPDATE",
        "COPY t TO STDOUT",
        "TRUNCATE t",
        "LISTEN c",
        "VACUUM t",
    ] {
        assert!(!unknown(sql), "{sql}");
    }
}

#[test]
fn a_lone_execute_names_its_statement() {
    let executes = |sql: &str| analyze(sql).unwrap().executes;
    assert_eq!(executes("EXECUTE q(1, 'a')").as_deref(), Some("q"));
    assert_eq!(executes("execute \"Q x\"").as_deref(), Some("Q x"));
    assert!(analyze("EXECUTE q").unwrap().unknown_writes);
    for sql in [
        // An argument that may write, another statement, or EXECUTE inside another.
        "EXECUTE q(f())",
        "EXECUTE q(nextval('s'))",
        "EXECUTE q; SELECT 1",
        "SELECT 1; EXECUTE q",
        "CREATE TABLE t AS EXECUTE q",
        "EXPLAIN ANALYZE EXECUTE q",
        "SELECT 1",
    ] {
        assert_eq!(executes(sql), None, "{sql}");
    }
    // What an EXECUTE anywhere runs, the text does not say.
    for sql in [
        "CREATE TABLE t AS EXECUTE q",
        "EXPLAIN ANALYZE EXECUTE q",
        "EXECUTE q; SELECT 1",
    ] {
        assert!(analyze(sql).unwrap().unknown_writes, "{sql}");
    }
    assert!(!analyze("EXPLAIN EXECUTE q").unwrap().unknown_writes);
}

#[test]
fn limits_and_distinct_on_pick_rows() {
    for sql in [
        "SELECT * FROM t LIMIT 5",
        "SELECT * FROM t ORDER BY a OFFSET 10",
        "SELECT * FROM t FETCH FIRST 3 ROWS ONLY",
        "SELECT DISTINCT ON (a) a, b FROM t",
        "SELECT * FROM (SELECT * FROM t LIMIT 1) s",
        "SELECT (SELECT b FROM u LIMIT 1) FROM t",
        "(SELECT a FROM t LIMIT 1) UNION ALL (SELECT a FROM u)",
        "SELECT a FROM t UNION SELECT a FROM u LIMIT 3",
        "VALUES (1), (2) LIMIT 1",
    ] {
        assert!(analyze(sql).unwrap().picks_rows, "{sql}");
    }
    for sql in [
        "SELECT * FROM t",
        "SELECT DISTINCT a FROM t ORDER BY a",
        "SELECT count(*) FROM t",
        "SELECT a FROM t UNION SELECT a FROM u",
    ] {
        assert!(!analyze(sql).unwrap().picks_rows, "{sql}");
    }
}

/// Operators and casts a statement calls, those its syntax implies too.
#[test]
fn operators_and_type_names_include_what_the_syntax_implies() {
    let ops = |sql: &str| analyze(sql).unwrap().operators;
    let types = |sql: &str| analyze(sql).unwrap().type_names;
    assert_eq!(ops("SELECT a + 1 ##> b FROM t"), ["##>", "+"]);
    assert_eq!(ops("SELECT a OPERATOR(app.===) b FROM t"), ["==="]);
    assert_eq!(ops("SELECT * FROM t WHERE a IN (1, 2)"), ["="]);
    assert_eq!(ops("SELECT * FROM t WHERE a NOT IN (1, 2)"), ["<>"]);
    assert_eq!(ops("SELECT * FROM t WHERE a BETWEEN 1 AND 2"), ["<=", ">="]);
    assert_eq!(
        ops("SELECT * FROM t WHERE a NOT BETWEEN SYMMETRIC 1 AND 2"),
        ["<", ">"]
    );
    assert_eq!(ops("SELECT * FROM t WHERE a LIKE 'x%'"), ["~~"]);
    assert_eq!(ops("SELECT * FROM t WHERE a NOT ILIKE 'x%'"), ["!~~*"]);
    assert_eq!(ops("SELECT * FROM t WHERE a SIMILAR TO 'x'"), ["~"]);
    assert_eq!(ops("SELECT * FROM t WHERE a = ANY($1)"), ["="]);
    assert_eq!(
        ops("SELECT * FROM t WHERE a < ALL (SELECT b FROM u)"),
        ["<"]
    );
    for sql in [
        "SELECT * FROM t WHERE a IN (SELECT b FROM u)",
        "SELECT CASE a WHEN 1 THEN 'one' END FROM t",
        "SELECT * FROM t WHERE a IS DISTINCT FROM $1",
        "SELECT NULLIF(a, b) FROM t",
        "SELECT * FROM t JOIN u USING (id)",
        "SELECT * FROM t NATURAL JOIN u",
        "SELECT a FROM t GROUP BY a",
        "SELECT DISTINCT a FROM t",
        "SELECT a FROM t UNION SELECT b FROM u",
        "SELECT a FROM t UNION ALL (SELECT b FROM u INTERSECT SELECT c FROM v)",
        "SELECT sum(a) OVER (PARTITION BY b) FROM t",
        "SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY b)",
    ] {
        assert_eq!(ops(sql), ["="], "{sql}");
    }
    for sql in [
        "SELECT a FROM t ORDER BY a",
        "SELECT rank() OVER (ORDER BY a) FROM t",
        "SELECT string_agg(a, ',' ORDER BY a) FROM t",
    ] {
        assert_eq!(ops(sql), ["<"], "{sql}");
    }
    assert_eq!(ops("SELECT count(DISTINCT a) FROM t"), ["="]);
    for sql in [
        "SELECT a FROM t UNION ALL SELECT b FROM u",
        "SELECT CASE WHEN a THEN 1 END FROM t",
        "SELECT * FROM t WHERE a IS NULL",
    ] {
        assert!(ops(sql).is_empty(), "{sql}");
    }
    assert_eq!(
        types("SELECT $1::Email, CAST(a AS app.\"Dom\"), ARRAY[b]::tags[], int4 '1' FROM t"),
        ["dom", "email", "int4", "tags"]
    );
    assert_eq!(
        types("SELECT * FROM jsonb_to_record($1) AS x(a email)"),
        ["email"]
    );
    // A column, alias or comment of a type's name is no cast.
    assert!(types("SELECT email AS email FROM t /* ::email */").is_empty());
}
