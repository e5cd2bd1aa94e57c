//! Named prepared statements in transaction mode: a client's statements follow it onto
//! whichever server connection it is lent.

use std::process::Command;

mod common;

use pgopt_embedded::Postgres;
use pgopt_proxy::{PoolMode, Proxy};

async fn start(pool_size: usize) -> (Postgres, Proxy) {
    common::start(PoolMode::Transaction, pool_size).await
}

async fn connect(proxy: &Proxy) -> tokio_postgres::Client {
    common::connect(proxy, "postgres", None).await.unwrap()
}

/// A PostgreSQL set up with `sql`, a proxy with one server connection (which the
/// clients of a test take turns on), and a client of PostgreSQL itself.
async fn on_one_connection(sql: &str) -> (Postgres, Proxy, tokio_postgres::Client) {
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |c| c.default_pool_size = 1).await;
    let admin = pg.connect("postgres").await.unwrap();
    admin.batch_execute(sql).await.unwrap();
    (pg, proxy, admin)
}

/// A PostgreSQL set up with `sql`, a proxy with two server connections on one
/// thread, and three clients of it.
async fn on_two_connections(
    sql: &str,
) -> (
    Postgres,
    Proxy,
    (
        tokio_postgres::Client,
        tokio_postgres::Client,
        tokio_postgres::Client,
    ),
) {
    let pg = Postgres::start().await.unwrap();
    let mut config = common::config_for(&pg, PoolMode::Transaction, 2);
    config.workers = 1;
    let proxy = Proxy::start(config).await.unwrap();
    pg.psql(sql).unwrap();
    let clients = (
        connect(&proxy).await,
        connect(&proxy).await,
        connect(&proxy).await,
    );
    (pg, proxy, clients)
}

/// The client's open transaction counts a query run (its first snapshot is taken):
/// the isolation level can't be set any more (25001). Rolled back after.
async fn assert_a_query_ran(client: &tokio_postgres::Client) {
    let err = client
        .batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap_err();
    assert_eq!(common::code(&err), Some("25001"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_work_on_whichever_server_connection_a_client_gets() {
    let (pg, proxy) = start(2).await;
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let client = connect(&proxy).await;
        tasks.push(tokio::spawn(async move {
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            let pid = client.prepare("SELECT pg_backend_pid()").await.unwrap();
            let mut servers = std::collections::HashSet::new();
            for i in 0..50i32 {
                let row = client.query_one(&add, &[&i, &c]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + c);
                servers.insert(client.query_one(&pid, &[]).await.unwrap().get::<_, i32>(0));
                // Ad-hoc statements too (tokio-postgres names and closes them).
                let row = client
                    .query_one("SELECT $1::text || 'x'", &[&"a"])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, &str>(0), "ax");
            }
            servers.len()
        }));
    }
    let mut most = 0;
    for t in tasks {
        most = most.max(t.await.unwrap());
    }
    assert!(
        most > 1,
        "clients never moved between server connections: the test proves nothing"
    );
    drop(pg);
}

#[tokio::test]
async fn a_parse_that_fails_leaves_the_client_usable() {
    let (_pg, proxy) = start(1).await;
    let client = connect(&proxy).await;
    let err = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42601"));
    let err = client
        .prepare("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42P01"));
    let ok = client.prepare("SELECT 42").await.unwrap();
    assert_eq!(
        client.query_one(&ok, &[]).await.unwrap().get::<_, i32>(0),
        42
    );
}

#[tokio::test]
async fn closed_statements_can_be_prepared_again_and_discard_all_is_survived() {
    let (_pg, proxy) = start(1).await;
    let client = connect(&proxy).await;
    for round in 0..3i64 {
        let stmt = client.prepare("SELECT $1::bigint * 2").await.unwrap();
        assert_eq!(
            client
                .query_one(&stmt, &[&round])
                .await
                .unwrap()
                .get::<_, i64>(0),
            round * 2
        );
        drop(stmt); // sends Close
    }
    let stmt = client.prepare("SELECT $1::bigint * 3").await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    // The server forgot its statements; pgopt prepares them again.
    assert_eq!(
        client
            .query_one(&stmt, &[&5i64])
            .await
            .unwrap()
            .get::<_, i64>(0),
        15
    );
}

#[tokio::test]
async fn describe_before_execute_and_statements_in_a_transaction() {
    let (_pg, proxy) = start(2).await;
    let client = connect(&proxy).await;
    client
        .batch_execute("CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2)")
        .await
        .unwrap();
    assert_eq!(
        insert.params().len(),
        2,
        "Describe returned the parameter types"
    );
    client.batch_execute("BEGIN").await.unwrap();
    for i in 0..20i32 {
        client
            .execute(&insert, &[&i, &format!("v{i}")])
            .await
            .unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    let count = client.prepare("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(count.columns().len(), 1);
    assert_eq!(
        client
            .query_one(&count, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_mode_in_transaction_pooling() {
    let (pg, proxy) = start(2).await;
    let pgbench = pg.binaries().program("pgbench");
    common::pgbench_init(&pg);
    // One thread per client: pgbench prepares with a blocking PQprepare, so a thread
    // serving several clients stalls them all while one waits for a pooled connection
    // that another of its own clients holds mid-transaction — with any pooler.
    let out = Command::new(&pgbench)
        .args([
            "-n",
            "-c",
            "8",
            "-j",
            "8",
            "-t",
            "200",
            "-M",
            "prepared",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &proxy.local_addr().port().to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of transactions actually processed: 1600/1600"),
        "{stdout}"
    );
}

#[tokio::test]
async fn deallocate_and_discard_variants_never_break_later_statements() {
    let (_pg, proxy) = start(1).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let stmt = a.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&1]).await.unwrap().get::<_, i32>(0),
        11
    );
    // Statements survive DISCARD PLANS/TEMP/SEQUENCES on the server; pgopt must not
    // think otherwise (it would prepare them again: 42P05 "already exists").
    for discard in ["DISCARD PLANS", "DISCARD TEMP", "DISCARD SEQUENCES"] {
        a.batch_execute(discard).await.unwrap();
        let again = b.prepare("SELECT $1::int + 10").await.unwrap();
        assert_eq!(
            b.query_one(&again, &[&2]).await.unwrap().get::<_, i32>(0),
            12
        );
        assert_eq!(
            a.query_one(&stmt, &[&3]).await.unwrap().get::<_, i32>(0),
            13
        );
    }
    // DISCARD ALL fails inside a transaction: nothing was dropped.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("DISCARD ALL").await.is_err());
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&4]).await.unwrap().get::<_, i32>(0),
        14
    );
    let again = b.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        b.query_one(&again, &[&5]).await.unwrap().get::<_, i32>(0),
        15
    );

    // DEALLOCATE of one's own statement (what psycopg sends with libpq < 17) works
    // and leaves other clients' copies alone; an unknown name is the server's 26000.
    let named: Vec<String> = a
        .simple_query("SELECT name FROM pg_prepared_statements")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(named.iter().all(|n| n.starts_with("pgopt_")), "{named:?}");
    // tokio-postgres names a client's first statement s0.
    a.batch_execute("DEALLOCATE s0").await.unwrap();
    let err = a.query_one(&stmt, &[&6]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("26000"), "{err}");
    assert_eq!(
        b.query_one(&again, &[&6]).await.unwrap().get::<_, i32>(0),
        16
    );
    let err = a
        .batch_execute("DEALLOCATE no_such_statement")
        .await
        .unwrap_err();
    assert_eq!(common::code(&err), Some("26000"), "{err}");
    // Inside a block it is a statement: the isolation level can't be set after it.
    let s1 = a.prepare("SELECT 1").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_a_query_ran(&a).await;
    // (Not undone by the rollback, as on PostgreSQL.)
    let err = a.query(&s1, &[]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("26000"), "{err}");
    // Inside a failed transaction PostgreSQL refuses everything but ROLLBACK.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    let err = a.batch_execute("DEALLOCATE ALL").await.unwrap_err();
    assert_eq!(common::code(&err), Some("25P02"), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let fresh = a.prepare("SELECT $1::int + 10").await.unwrap();
    assert_eq!(
        a.query_one(&fresh, &[&7]).await.unwrap().get::<_, i32>(0),
        17
    );
}

/// A raw protocol client, for message sequences drivers hide (libpq's
/// Bind/Describe portal/Execute/Sync).
struct Raw {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    /// Every CommandComplete's tag so far, in order.
    tags: Vec<String>,
    /// Every DataRow's first value so far, in order.
    values: Vec<Option<Vec<u8>>>,
}

impl Raw {
    async fn connect(proxy: &Proxy) -> Raw {
        Raw::connect_with(proxy, &[]).await
    }

    /// [`Raw::connect`] with more start-up parameters.
    async fn connect_with(proxy: &Proxy, more: &[(&str, &str)]) -> Raw {
        use pgopt_wire::startup::{ProtocolVersion, StartupMessage};
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        let mut out = bytes::BytesMut::new();
        let mut params = vec![("user", "postgres"), ("database", "app")];
        params.extend_from_slice(more);
        StartupMessage {
            protocol: ProtocolVersion { major: 3, minor: 0 },
            params: pgopt_wire::List::from(&params[..]),
        }
        .encode(&mut out)
        .unwrap();
        stream.write_all(&out).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: bytes::BytesMut::new(),
            tags: Vec::new(),
            values: Vec::new(),
        };
        raw.until_ready().await;
        raw
    }

    async fn send(&mut self, messages: &[pgopt_wire::frontend::FrontendMessage<'_>]) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        for m in messages {
            m.encode(&mut out).unwrap();
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// Message tags up to ReadyForQuery, with the column count of each RowDescription
    /// and DataRow, and each error's SQLSTATE.
    async fn until_ready(&mut self) -> Vec<String> {
        self.until(b'Z').await
    }

    /// Message tags up to the first of type `last`, as [`Raw::until_ready`] gives
    /// them.
    async fn until(&mut self, last: u8) -> Vec<String> {
        use pgopt_wire::backend::BackendMessage as B;
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        loop {
            while let Some(frame) = pgopt_wire::split_frame(&mut self.buf, 1 << 24).unwrap() {
                let tag = frame.tag();
                let item = match frame.backend().unwrap() {
                    B::RowDescription(r) => format!("T{}", r.fields.len()),
                    B::DataRow(r) => {
                        let first = r.values.iter().next().flatten();
                        self.values.push(first.map(<[u8]>::to_vec));
                        format!("D{}", r.values.len())
                    }
                    B::ErrorResponse(e) => format!("E{}", e.code().unwrap_or("")),
                    B::CommandComplete(c) => {
                        self.tags.push(c.tag.to_string());
                        "C".to_string()
                    }
                    other => (other.tag() as char).to_string(),
                };
                seen.push(item);
                if tag == last {
                    return seen;
                }
            }
            assert!(
                self.stream.read_buf(&mut self.buf).await.unwrap() > 0,
                "closed"
            );
        }
    }
}

/// A Parse of `query` as statement `name`, with no parameter types given.
fn parse<'a>(name: &'a str, query: &'a str) -> pgopt_wire::frontend::FrontendMessage<'a> {
    pgopt_wire::frontend::FrontendMessage::Parse(pgopt_wire::frontend::Parse {
        name,
        query,
        param_types: (&[]).into(),
    })
}

/// A Bind of `statement` to the unnamed portal, without parameters.
fn bind(statement: &str) -> pgopt_wire::frontend::FrontendMessage<'_> {
    pgopt_wire::frontend::FrontendMessage::Bind(pgopt_wire::frontend::Bind {
        portal: "",
        statement,
        param_formats: (&[]).into(),
        params: (&[]).into(),
        result_formats: (&[]).into(),
    })
}

/// An Execute of the unnamed portal, every row.
const EXECUTE: pgopt_wire::frontend::FrontendMessage<'static> =
    pgopt_wire::frontend::FrontendMessage::Execute(pgopt_wire::frontend::Execute {
        portal: "",
        max_rows: 0,
    });

/// Bind s1, Describe the portal, Execute, Sync: what libpq's PQexecPrepared sends.
async fn exec_prepared(raw: &mut Raw, statement: &str) -> Vec<String> {
    use pgopt_wire::frontend::{Bind, Describe, Execute, FrontendMessage as F};
    let none: [pgopt_wire::Format; 0] = [];
    let params: [Option<&[u8]>; 0] = [];
    raw.send(&[
        F::Bind(Bind {
            portal: "",
            statement,
            param_formats: (&none).into(),
            params: (&params).into(),
            result_formats: (&none).into(),
        }),
        F::Describe(Describe {
            target: pgopt_wire::Target::Portal,
            name: "",
        }),
        F::Execute(Execute {
            portal: "",
            max_rows: 0,
        }),
        F::Sync,
    ])
    .await;
    raw.until_ready().await
}

/// The extended protocol's `DEALLOCATE` (psycopg's in pipeline mode with libpq < 17,
/// any driver's prepared `DEALLOCATE ALL`) of the client's own statements, or of
/// all of them, works as on PostgreSQL: the server has them under pgopt's names.
#[tokio::test]
async fn an_extended_deallocate_of_the_clients_statements_works_as_on_postgresql() {
    use pgopt_wire::frontend::{FrontendMessage as F, Query};
    let (_pg, proxy) = start(1).await;
    let mut raw = Raw::connect(&proxy).await;
    let other = connect(&proxy).await;
    let theirs = other.prepare("SELECT 1").await.unwrap();
    async fn prepare(raw: &mut Raw, name: &str) {
        raw.send(&[
            parse(name, "SELECT 1"),
            pgopt_wire::frontend::FrontendMessage::Sync,
        ])
        .await;
        assert_eq!(raw.until_ready().await, ["1", "Z"], "{name}");
    }
    // Parse, Bind, Describe portal, Execute, Sync: what PQexecParams sends.
    async fn run(raw: &mut Raw, sql: &str) -> Vec<String> {
        raw.send(&[parse("", sql), bind("")]).await;
        exec_prepared_tail(raw).await
    }
    let works = ["2", "T1", "D1", "C", "Z"];
    prepare(&mut raw, "s1").await;
    assert_eq!(
        run(&mut raw, "DEALLOCATE s1").await,
        ["1", "2", "n", "C", "Z"]
    );
    assert_eq!(raw.tags.last().unwrap(), "DEALLOCATE");
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E26000", "Z"]);
    prepare(&mut raw, "s1").await;
    assert_eq!(exec_prepared(&mut raw, "s1").await, works);
    assert_eq!(
        run(&mut raw, "deallocate prepare S1").await,
        ["1", "2", "n", "C", "Z"]
    );
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E26000", "Z"]);
    // A name the client doesn't have is PostgreSQL's 26000.
    assert_eq!(
        run(&mut raw, "DEALLOCATE s1").await,
        ["1", "2", "n", "E26000", "Z"]
    );

    // DEALLOCATE ALL, prepared under a name: that goes too, and the names can be
    // prepared again (before, they stayed the client's: 42P05 "already exists").
    prepare(&mut raw, "s1").await;
    prepare(&mut raw, "s2").await;
    raw.send(&[parse("d", "DEALLOCATE ALL"), bind("d")]).await;
    assert_eq!(
        exec_prepared_tail(&mut raw).await,
        ["1", "2", "n", "C", "Z"]
    );
    assert_eq!(raw.tags.last().unwrap(), "DEALLOCATE ALL");
    for name in ["s1", "s2", "d"] {
        assert_eq!(
            exec_prepared(&mut raw, name).await,
            ["E26000", "Z"],
            "{name}"
        );
    }
    prepare(&mut raw, "s1").await;
    prepare(&mut raw, "s2").await;
    // Pipelined: prepared again behind it, in one batch.
    raw.send(&[parse("", "DEALLOCATE s1"), bind(""), EXECUTE])
        .await;
    raw.send(&[parse("s1", "SELECT 1"), bind("s1")]).await;
    assert_eq!(
        exec_prepared_tail(&mut raw).await,
        ["1", "2", "C", "1", "2", "T1", "D1", "C", "Z"]
    );
    // An error before it in its batch: skipped, nothing deallocated.
    raw.send(&[parse("bad", "SELEC"), parse("", "DEALLOCATE ALL"), bind("")])
        .await;
    assert_eq!(exec_prepared_tail(&mut raw).await, ["E42601", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s2").await, works);
    // An error after it: it happened (statements are not transactional).
    raw.send(&[
        parse("", "DEALLOCATE s2"),
        bind(""),
        EXECUTE,
        parse("bad", "SELEC"),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "2", "C", "E42601", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s2").await, ["E26000", "Z"]);
    // In a failed transaction: refused (25P02), nothing deallocated.
    raw.send(&[F::Query(Query {
        sql: "BEGIN; SELECT 1/0",
    })])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "E22012", "Z"]);
    assert_eq!(run(&mut raw, "DEALLOCATE s1").await, ["E25P02", "Z"]);
    raw.send(&[F::Query(Query { sql: "ROLLBACK" })]).await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s1").await, works);
    // In a live block it takes the transaction's snapshot, as DEALLOCATE does.
    raw.send(&[F::Query(Query { sql: "BEGIN" })]).await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(
        run(&mut raw, "DEALLOCATE s1").await,
        ["1", "2", "n", "C", "Z"]
    );
    raw.send(&[F::Query(Query {
        sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    })])
    .await;
    assert_eq!(raw.until_ready().await, ["E25001", "Z"]);
    raw.send(&[F::Query(Query { sql: "ROLLBACK" })]).await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E26000", "Z"]);
    // A portal of one, once its transaction is over, is no stand-in's: a cursor
    // DECLAREd under its name runs as itself.
    prepare(&mut raw, "s1").await;
    let none: [pgopt_wire::Format; 0] = [];
    let values: [Option<&[u8]>; 0] = [];
    raw.send(&[
        parse("", "DEALLOCATE ALL"),
        F::Bind(pgopt_wire::frontend::Bind {
            portal: "c1",
            statement: "",
            param_formats: (&none).into(),
            params: (&values).into(),
            result_formats: (&none).into(),
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "2", "Z"]);
    raw.send(&[F::Query(Query {
        sql: "BEGIN; DECLARE c1 CURSOR FOR SELECT generate_series(1, 3)",
    })])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "C", "Z"]);
    raw.send(&[
        F::Execute(pgopt_wire::frontend::Execute {
            portal: "c1",
            max_rows: 2,
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["D1", "D1", "s", "Z"]);
    raw.send(&[F::Query(Query { sql: "COMMIT" })]).await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s1").await, works);
    // A block's SQL PREPARE goes with DEALLOCATE ALL too, as the client's names do.
    for sql in ["BEGIN", "PREPARE q AS SELECT 1"] {
        raw.send(&[F::Query(Query { sql })]).await;
        assert_eq!(raw.until_ready().await, ["C", "Z"], "{sql}");
    }
    assert_eq!(
        run(&mut raw, "DEALLOCATE ALL").await,
        ["1", "2", "n", "C", "Z"]
    );
    assert_eq!(raw.tags.last().unwrap(), "DEALLOCATE ALL");
    raw.send(&[F::Query(Query {
        sql: "PREPARE q AS SELECT 2",
    })])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    raw.send(&[F::Query(Query { sql: "COMMIT" })]).await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E26000", "Z"]);
    // The other client's statement of the same text, on the same server connection,
    // was never touched.
    assert_eq!(
        other
            .query_one(&theirs, &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// Clients whose client_encoding is not UTF8 send text PostgreSQL reads in it: it
/// goes through as sent, in both modes, with and without named statements, and the
/// same bytes from clients of two encodings are two statements on the server (0xE9 is
/// é in LATIN1, И in KOI8R). Settings beyond ASCII follow the client.
#[tokio::test]
async fn text_in_other_encodings_goes_through_as_sent() {
    use pgopt_wire::frontend::{FrontendMessage as F, Query};
    use pgopt_wire::text::escape;
    let pg = Postgres::start().await.unwrap();
    let session = Proxy::start(common::config_for(&pg, PoolMode::Session, 1))
        .await
        .unwrap();
    let transaction = common::start_with(&pg, |c| c.default_pool_size = 1).await;
    let text = escape(b"SELECT ascii('\xe9'), '\xe9'::text");
    let first = |raw: &Raw| raw.values.last().cloned().flatten();
    for proxy in [&session, &transaction] {
        let mut latin1 = Raw::connect_with(proxy, &[("client_encoding", "LATIN1")]).await;
        raw_query(&mut latin1, &text).await;
        assert_eq!(first(&latin1).as_deref(), Some(&b"233"[..]));
        latin1.send(&[parse("s1", &text), F::Sync]).await;
        assert_eq!(latin1.until_ready().await, ["1", "Z"]);
        assert_eq!(
            exec_prepared(&mut latin1, "s1").await,
            ["2", "T2", "D2", "C", "Z"]
        );
        assert_eq!(first(&latin1).as_deref(), Some(&b"233"[..]));
    }
    drop(session);
    let mut latin1 = Raw::connect_with(&transaction, &[("client_encoding", "LATIN1")]).await;
    let mut koi8 = Raw::connect_with(&transaction, &[("client_encoding", "KOI8R")]).await;
    for raw in [&mut latin1, &mut koi8] {
        raw.send(&[parse("s1", &text), F::Sync]).await;
        // (ParameterStatus as pgopt applies the client's encoding: as it was.)
        let mut seen = raw.until_ready().await;
        seen.retain(|m| m != "S");
        assert_eq!(seen, ["1", "Z"]);
    }
    raw_query(&mut latin1, &escape(b"SET my.var = '\xe9t\xe9'")).await;
    for _ in 0..2 {
        exec_prepared(&mut latin1, "s1").await;
        assert_eq!(first(&latin1).as_deref(), Some(&b"233"[..]), "é");
        exec_prepared(&mut koi8, "s1").await;
        assert_eq!(first(&koi8).as_deref(), Some(&b"1048"[..]), "И");
        raw_query(&mut latin1, "SELECT current_setting('my.var')").await;
        assert_eq!(first(&latin1).as_deref(), Some(&b"\xe9t\xe9"[..]));
    }
    // A statement beyond ASCII keeps the meaning it was parsed with: prepared again
    // on a new server connection under the client's encoding, or refused (0A000)
    // once the client's encoding changed, where pgopt can't.
    let admin = common::admin(&transaction).await;
    admin.simple_query("RECONNECT app").await.unwrap();
    let mut seen = exec_prepared(&mut latin1, "s1").await;
    seen.retain(|m| m != "S"); // (ParameterStatus as its encoding is applied)
    assert_eq!(seen, ["2", "T2", "D2", "C", "Z"], "prepared again");
    assert_eq!(
        first(&latin1).as_deref(),
        Some(&b"233"[..]),
        "prepared again"
    );
    raw_query(&mut latin1, "SET client_encoding = 'UTF8'").await;
    admin.simple_query("RECONNECT app").await.unwrap();
    let mut seen = exec_prepared(&mut latin1, "s1").await;
    seen.retain(|m| m != "S");
    assert_eq!(seen, ["E0A000", "Z"]);
    // The setting made in LATIN1 was read back in UTF8, and so applied there.
    raw_query(&mut latin1, "SELECT current_setting('my.var')").await;
    assert_eq!(first(&latin1).as_deref(), Some("été".as_bytes()));
    // SJIS, whose characters may end in an ASCII byte: SQL pgopt can't read so is
    // refused in transaction mode (ー is 81 5B, `[`), SQL it reads goes through.
    let mut sjis = Raw::connect_with(&transaction, &[("client_encoding", "SJIS")]).await;
    let setting = escape(b"SET search_path TO \x83\x86\x81\x5b\x83\x55\x81\x5b");
    sjis.send(&[F::Query(Query { sql: &setting })]).await;
    let mut seen = sjis.until_ready().await;
    seen.retain(|m| m != "S");
    assert_eq!(seen, ["E0A000", "Z"]);
    raw_query(&mut sjis, &escape(b"SELECT '\x83\x86\x81\x5b'")).await;

    async fn raw_query(raw: &mut Raw, sql: &str) {
        raw.send(&[F::Query(Query { sql })]).await;
        let seen = raw.until_ready().await;
        assert_eq!(seen.last().map(String::as_str), Some("Z"), "{seen:?}");
        assert!(
            !seen.iter().any(|m| m.starts_with('E')),
            "{sql:?}: {seen:?}"
        );
    }
}

/// Describe the unnamed portal, Execute it, Sync; the replies up to ReadyForQuery
/// (those of messages sent before too).
async fn exec_prepared_tail(raw: &mut Raw) -> Vec<String> {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F};
    raw.send(&[
        F::Describe(Describe {
            target: pgopt_wire::Target::Portal,
            name: "",
        }),
        EXECUTE,
        F::Sync,
    ])
    .await;
    raw.until_ready().await
}

/// A pool of one, table `t` (one row), and a raw client that prepared `s1` (`SELECT *
/// FROM t`) and ran it before `t` gained a column: the server's plan of it is stale.
async fn s1_before_a_schema_change() -> (Postgres, Proxy, tokio_postgres::Client, Raw) {
    use pgopt_wire::frontend::FrontendMessage as F;
    let (pg, proxy) = start(1).await;
    let admin = pg.connect("postgres").await.unwrap();
    admin
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[parse("s1", "SELECT * FROM t"), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["1", "Z"]);
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T1", "D1", "C", "Z"]
    );
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    (pg, proxy, admin, raw)
}

#[tokio::test]
async fn a_schema_change_is_absorbed_for_a_client_that_describes_its_portal() {
    use pgopt_wire::frontend::FrontendMessage as F;
    let (_pg, _proxy, admin, mut raw) = s1_before_a_schema_change().await;
    // PostgreSQL alone answers 0A000 "cached plan must not change result type"; pgopt
    // prepares the statement again and runs the batch again.
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T2", "D2", "C", "Z"]
    );
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T2", "D2", "C", "Z"]
    );

    // Inside a transaction the batch cannot run again: the client gets the error, and
    // the next batch works.
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN c int")
        .await
        .unwrap();
    raw.send(&[F::Query(pgopt_wire::frontend::Query { sql: "BEGIN" })])
        .await;
    raw.until_ready().await;
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E0A000", "Z"]);
    raw.send(&[F::Query(pgopt_wire::frontend::Query { sql: "ROLLBACK" })])
        .await;
    raw.until_ready().await;
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T3", "D3", "C", "Z"]
    );
}

/// A statement to prepare again after a schema change, behind an error in its batch:
/// the server skipped pgopt's Close and Parse of it and still has the old one, which
/// is closed and prepared again at the next use (before, pgopt took it for gone and
/// its Parse met 42P05 "already exists").
#[tokio::test]
async fn a_statement_prepared_again_behind_an_error_is_prepared_again_next_time() {
    use pgopt_wire::frontend::{FrontendMessage as F, Query};
    let (_pg, _proxy, _admin, mut raw) = s1_before_a_schema_change().await;
    // Inside a block: the client gets PostgreSQL's 0A000, and the statement is to be
    // prepared again.
    raw.send(&[F::Query(Query { sql: "BEGIN" })]).await;
    raw.until_ready().await;
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E0A000", "Z"]);
    raw.send(&[F::Query(Query { sql: "ROLLBACK" })]).await;
    raw.until_ready().await;
    for _ in 0..2 {
        raw.send(&[
            parse("", "SELECT 1/0"),
            bind(""),
            EXECUTE,
            bind("s1"),
            F::Describe(pgopt_wire::frontend::Describe {
                target: pgopt_wire::Target::Portal,
                name: "",
            }),
            EXECUTE,
            F::Sync,
        ])
        .await;
        assert_eq!(raw.until_ready().await, ["1", "E22012", "Z"]);
    }
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T2", "D2", "C", "Z"]
    );
}

#[tokio::test]
async fn a_deallocate_pipelined_behind_a_failing_statement_gets_the_servers_answer() {
    use pgopt_wire::frontend::{FrontendMessage as F, Parse, Query};
    let (_pg, proxy) = start(1).await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        F::Parse(Parse {
            name: "s1",
            query: "SELECT 1",
            param_types: (&[]).into(),
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "Z"]);
    // Sent in one write: the DEALLOCATE reaches pgopt before the failure is known.
    let pipelined = |sql| F::Query(Query { sql });
    raw.send(&[
        pipelined("BEGIN; SELECT 1/0"),
        pipelined("DEALLOCATE ALL"),
        pipelined("DEALLOCATE s1"),
        pipelined("ROLLBACK"),
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "E22012", "Z"]);
    assert_eq!(raw.until_ready().await, ["E25P02", "Z"]);
    assert_eq!(raw.until_ready().await, ["E25P02", "Z"]);
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T1", "D1", "C", "Z"],
        "nothing was deallocated"
    );
    // In a live transaction it takes effect (statements are not transactional).
    raw.send(&[
        pipelined("BEGIN"),
        pipelined("DEALLOCATE s1"),
        pipelined("ROLLBACK"),
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    assert_eq!(exec_prepared(&mut raw, "s1").await, ["E26000", "Z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_schema_change_a_statement_prepared_again_works_on_every_server_connection() {
    // One runtime: with session threads each client keeps to its own thread's
    // connections (see `Pool::take_idle`), and A must meet both.
    let pg = Postgres::start().await.unwrap();
    let mut config = common::config_for(&pg, PoolMode::Transaction, 2);
    config.workers = 1;
    let proxy = Proxy::start(config).await.unwrap();
    let admin = pg.connect("postgres").await.unwrap();
    admin
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let sql = "SELECT t.*, pg_backend_pid() AS pid FROM t";
    let old_a = a.prepare(sql).await.unwrap();
    let old_b = b.prepare(sql).await.unwrap();
    // The statement on both server connections: A holds one while B uses the other.
    a.batch_execute("BEGIN").await.unwrap();
    let pid_a: i32 = a.query_one(&old_a, &[]).await.unwrap().get("pid");
    let pid_b: i32 = b.query_one(&old_b, &[]).await.unwrap().get("pid");
    assert_ne!(pid_a, pid_b);
    a.batch_execute("COMMIT").await.unwrap();

    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    // tokio-postgres keeps the old row description, so the error is the right answer,
    // as PostgreSQL gives it.
    let err = a.query_one(&old_a, &[]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("0A000"), "{err}");
    let err = b.query_one(&old_b, &[]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("0A000"), "{err}");
    // With PostgreSQL's routine, which pgjdbc looks for to prepare it again itself.
    let routine = err.as_db_error().and_then(|e| e.routine());
    assert_eq!(routine, Some("RevalidateCachedQuery"), "{err:?}");

    // Prepared again (same text), the statement works on whichever connection: the
    // stale copies are closed and prepared again, not reused.
    let new_a = a.prepare(sql).await.unwrap();
    let mut pids = std::collections::HashSet::new();
    // (Which connection each gets depends on when the relays release them, a race
    // with the clients' next messages: a few more rounds when A keeps meeting one.)
    for i in 0..20 {
        if i >= 6 && pids.len() == 2 {
            break;
        }
        // B holds a connection in turns before or after A's, so A meets both.
        let hold_first = i % 2 == 0;
        if hold_first {
            b.batch_execute("BEGIN; SELECT 1").await.unwrap();
        } else {
            a.batch_execute("BEGIN").await.unwrap();
        }
        let row = a.query_one(&new_a, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>("b"), 7);
        pids.insert(row.get::<_, i32>("pid"));
        if hold_first {
            b.batch_execute("COMMIT").await.unwrap();
        } else {
            b.batch_execute("BEGIN; SELECT 1").await.unwrap();
            a.batch_execute("COMMIT").await.unwrap();
            b.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert_eq!(pids.len(), 2, "A's statement did not meet both connections");
    let new_b = b.prepare(sql).await.unwrap();
    assert_eq!(
        b.query_one(&new_b, &[]).await.unwrap().get::<_, i32>("b"),
        7
    );
}

/// A statement prepared afresh after a schema change, in the transaction that made
/// it (a migration: psycopg prepares a query again after an ALTER, under a new name),
/// is prepared afresh on the server too, as PostgreSQL prepares it. Reusing the
/// server's copy from before the change failed with 0A000, and the migration rolled
/// back.
#[tokio::test]
async fn a_statement_prepared_after_a_schema_change_in_its_transaction_is_prepared_afresh() {
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE pt (a int, b text); INSERT INTO pt VALUES (1, 'x')").await;
    let client = connect(&proxy).await;
    let sql = "SELECT * FROM pt WHERE a = $1";
    let before = client.prepare(sql).await.unwrap();
    assert_eq!(client.query(&before, &[&1i32]).await.unwrap().len(), 1);
    client
        .batch_execute("BEGIN; ALTER TABLE pt ADD COLUMN z int DEFAULT 5")
        .await
        .unwrap();
    let after = client.prepare(sql).await.unwrap();
    assert_eq!(after.columns().len(), 3);
    let row = client.query_one(&after, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>("z"), 5);
    client.batch_execute("COMMIT").await.unwrap();
    let z: i32 = admin
        .query_one("SELECT z FROM pt", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(z, 5, "the migration was rolled back");
    // The statement prepared before the change gets PostgreSQL's error, as there.
    let err = client.query(&before, &[&1i32]).await.unwrap_err();
    assert_eq!(common::code(&err), Some("0A000"), "{err}");
}

/// A schema change in a named statement is seen each time the statement runs, not
/// only when it is prepared: the server connection's statements are prepared afresh
/// after it (before, a fresh Parse of one in a transaction got "cached plan must not
/// change result type" from the server's copy from before the change).
#[tokio::test]
async fn a_schema_change_in_a_named_statement_is_seen_each_time_it_runs() {
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE pt (a int, b text); INSERT INTO pt VALUES (1, 'x')").await;
    let (changer, reader) = (connect(&proxy).await, connect(&proxy).await);
    let drop_z = changer
        .prepare("ALTER TABLE pt DROP COLUMN IF EXISTS z")
        .await
        .unwrap();
    changer.execute(&drop_z, &[]).await.unwrap();
    // Behind pgopt's back; the reader's statement is prepared in the new shape.
    admin
        .batch_execute("ALTER TABLE pt ADD COLUMN z int DEFAULT 5")
        .await
        .unwrap();
    let sql = "SELECT * FROM pt";
    let st = reader.prepare(sql).await.unwrap();
    assert_eq!(reader.query(&st, &[]).await.unwrap()[0].len(), 3);
    changer.execute(&drop_z, &[]).await.unwrap();
    let fresh = connect(&proxy).await;
    fresh.batch_execute("BEGIN").await.unwrap();
    let st = fresh.prepare(sql).await.unwrap();
    assert_eq!(st.columns().len(), 2);
    assert_eq!(fresh.query(&st, &[]).await.unwrap()[0].len(), 2);
    fresh.batch_execute("COMMIT").await.unwrap();
}

/// A statement prepared again on another server connection while a transaction that
/// changes the schema is open (not blocked: a function takes no lock against it) has
/// the old shape: once that transaction commits, statements are prepared afresh
/// again, so a fresh Parse in a transaction there gets the new shape, not the
/// server's "cached plan must not change result type". (Before, a COMMIT followed by
/// a BEGIN in the same query left that for the next transaction's end.)
#[tokio::test]
async fn statements_prepared_during_a_schema_change_are_prepared_afresh_after_its_commit() {
    let (_pg, _proxy, (changer, reader, fresh)) =
        on_two_connections("CREATE FUNCTION f() RETURNS TABLE (a int) LANGUAGE sql AS 'SELECT 1'")
            .await;
    let sql = "SELECT * FROM f()";
    // The changer holds one server connection, the reader gets the other.
    changer.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let st = reader.prepare(sql).await.unwrap();
    assert_eq!(reader.query(&st, &[]).await.unwrap()[0].len(), 1);
    changer
        .batch_execute(
            "DROP FUNCTION f(); \
             CREATE FUNCTION f() RETURNS TABLE (a int, b int) LANGUAGE sql AS 'SELECT 1, 2'",
        )
        .await
        .unwrap();
    // Prepared afresh there, before the commit: the old shape.
    assert_eq!(reader.query(&st, &[]).await.unwrap()[0].len(), 1);
    // (A transaction begun in the same query: the commit is seen at its tag.)
    changer
        .batch_execute("COMMIT; BEGIN; SELECT 1")
        .await
        .unwrap();
    fresh.batch_execute("BEGIN").await.unwrap();
    let st = fresh.prepare(sql).await.unwrap();
    assert_eq!(st.columns().len(), 2);
    assert_eq!(fresh.query(&st, &[]).await.unwrap()[0].len(), 2);
    fresh.batch_execute("COMMIT").await.unwrap();
    changer.batch_execute("COMMIT").await.unwrap();
}

/// In a block that changed the schema, a Describe of a statement prepared before is
/// answered by the server, which prepares it afresh: the new shape (before, pgopt
/// answered the old one from what a server had said, and the Bind after it then got
/// "cached plan must not change result type").
#[tokio::test]
async fn a_describe_after_a_schema_change_in_its_block_gives_the_new_shape() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F, Query};
    let (_pg, proxy, _admin) =
        on_one_connection("CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[parse("s1", "SELECT * FROM t"), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["1", "Z"]);
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T1", "D1", "C", "Z"]
    );
    raw.send(&[F::Query(Query {
        sql: "BEGIN; ALTER TABLE t ADD COLUMN b int DEFAULT 7",
    })])
    .await;
    raw.until_ready().await;
    let describe = F::Describe(Describe {
        target: pgopt_wire::Target::Statement,
        name: "s1",
    });
    raw.send(&[describe, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "T2", "Z"]);
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T2", "D2", "C", "Z"]
    );
    raw.send(&[F::Query(Query { sql: "COMMIT" })]).await;
    raw.until_ready().await;
    // Another client's change, committed: what a server said before it is not the
    // answer in a later block either.
    let other = connect(&proxy).await;
    other
        .batch_execute("ALTER TABLE t ADD COLUMN c int DEFAULT 8")
        .await
        .unwrap();
    raw.send(&[F::Query(Query { sql: "BEGIN" })]).await;
    raw.until_ready().await;
    raw.send(&[describe, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "T3", "Z"]);
    assert_eq!(
        exec_prepared(&mut raw, "s1").await,
        ["2", "T3", "D3", "C", "Z"]
    );
    raw.send(&[F::Query(Query { sql: "COMMIT" })]).await;
    raw.until_ready().await;
}

/// What a prepared `SELECT * FROM {table}` gives `client` through a schema change
/// rolled back, then one undone: its column count, or the error's SQLSTATE.
async fn through_changes_undone(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let run = |st: tokio_postgres::Statement| async move {
        match client.query(&st, &[]).await {
            Ok(rows) => rows[0].len().to_string(),
            Err(e) => common::code(&e).unwrap_or("?").to_string(),
        }
    };
    let st = client
        .prepare(&format!("SELECT * FROM {table}"))
        .await
        .unwrap();
    let mut seen = vec![run(st.clone()).await];
    client
        .batch_execute(&format!("BEGIN; ALTER TABLE {table} ADD COLUMN b int"))
        .await
        .unwrap();
    seen.push(run(st.clone()).await);
    client.batch_execute("ROLLBACK").await.unwrap();
    seen.push(run(st.clone()).await);
    for change in ["ADD COLUMN c int", "DROP COLUMN c"] {
        client
            .batch_execute(&format!("ALTER TABLE {table} {change}"))
            .await
            .unwrap();
        seen.push(run(st.clone()).await);
    }
    seen
}

/// A statement whose result shape a schema change altered gets "cached plan must not
/// change result type" as long as the shape differs, and runs again once the change
/// is rolled back or undone, through pgopt as on PostgreSQL (before, pgopt refused
/// it for good).
#[tokio::test]
async fn a_statement_runs_again_once_its_shape_is_back() {
    let (_pg, proxy, admin) = on_one_connection(
        "CREATE TABLE direct_t (a int); INSERT INTO direct_t VALUES (1); \
         CREATE TABLE pooled_t (a int); INSERT INTO pooled_t VALUES (1)",
    )
    .await;
    let expected = ["1", "0A000", "1", "0A000", "1"];
    assert_eq!(through_changes_undone(&admin, "direct_t").await, expected);
    let client = connect(&proxy).await;
    assert_eq!(through_changes_undone(&client, "pooled_t").await, expected);
    // Another client's statement of the same text, prepared before, too.
    admin
        .batch_execute("ALTER TABLE pooled_t ADD COLUMN d int")
        .await
        .unwrap();
    let other = connect(&proxy).await;
    let st = other.prepare("SELECT * FROM pooled_t").await.unwrap();
    assert_eq!(other.query(&st, &[]).await.unwrap()[0].len(), 2);
    client
        .batch_execute("ALTER TABLE pooled_t DROP COLUMN d")
        .await
        .unwrap();
    let e = other.query(&st, &[]).await.unwrap_err();
    assert_eq!(common::code(&e), Some("0A000"), "{e}");
}

/// A stale statement prepared again (Close and Parse; one that returns no rows, so
/// its Bind does not wait for a shape check) with a schema change pipelined right
/// behind it: once the server confirms the Close, the statement is still known
/// stale (the change came after the Parse), so its next use closes it again rather
/// than prepare it over the copy the server has (42P05 on every later use, for every
/// client of the connection).
#[tokio::test]
async fn a_schema_change_pipelined_behind_a_statement_prepared_again_leaves_it_usable() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy, _admin) =
        on_one_connection("CREATE TABLE pt (a int); INSERT INTO pt VALUES (1)").await;
    let mut raw = common::raw_login(&proxy).await;
    let prepare = |sql: &str| {
        let mut batch = common::message(b'P', format!("s1\0{sql}\0\0\0").as_bytes());
        batch.extend(common::message(b'S', b""));
        batch
    };
    let run_s1 = || {
        let mut batch = common::message(b'B', b"\0s1\0\0\0\0\0\0\0");
        batch.extend(common::message(b'E', b"\0\0\0\0\0"));
        batch
    };
    raw.write_all(&prepare("UPDATE pt SET a = a"))
        .await
        .unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"1Z");
    // A schema change makes s1's copy stale.
    raw.write_all(&common::message(b'Q', b"ALTER TABLE pt ADD COLUMN b int\0"))
        .await
        .unwrap();
    common::read_until(&mut raw, b'Z').await;
    // s1 used (closed and prepared again) with another change pipelined behind it.
    let mut batch = run_s1();
    batch.extend(common::run_unnamed("ALTER TABLE pt ADD COLUMN c int", b'S'));
    raw.write_all(&batch).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"2C12CZ");
    for _ in 0..3 {
        let mut batch = run_s1();
        batch.extend(common::message(b'S', b""));
        raw.write_all(&batch).await.unwrap();
        assert_eq!(common::read_until(&mut raw, b'Z').await, b"2CZ");
    }
}

/// A driver's prepare and first run in one batch (Parse, Describe, Bind, Execute,
/// Sync) of a text a server connection had from before a schema change made behind
/// pgopt's back: answered as PostgreSQL answers a fresh Parse, in the new shape.
#[tokio::test]
async fn a_prepare_and_run_in_one_batch_after_a_schema_change_behind_pgopts_back() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE kv (k int, v int); INSERT INTO kv VALUES (1, 2)").await;
    let batch = || {
        let mut batch = common::message(b'P', b"s\0SELECT * FROM kv WHERE k = $1\0\0\0");
        batch.extend(common::message(b'D', b"Ss\0"));
        batch.extend(common::message(b'B', b"\0s\0\0\0\0\x01\0\0\0\x011\0\0"));
        batch.extend(common::message(b'E', b"\0\0\0\0\0"));
        batch.extend(common::message(b'S', b""));
        batch
    };
    let mut first = common::raw_login(&proxy).await;
    first.write_all(&batch()).await.unwrap();
    assert_eq!(common::read_until(&mut first, b'Z').await, b"1tT2DCZ");
    admin
        .batch_execute("ALTER TABLE kv ADD COLUMN w int DEFAULT 3")
        .await
        .unwrap();
    let mut second = common::raw_login(&proxy).await;
    second.write_all(&batch()).await.unwrap();
    assert_eq!(common::read_until(&mut second, b'Z').await, b"1tT2DCZ");
}

/// A schema change a client made through pgopt has every server connection of the
/// pool prepare its statements afresh, not only the one it ran on: a client's fresh
/// Parse inside a transaction on another connection works too, also for a client that
/// binds it without describing it first (as psycopg and libpq's PQprepare do).
#[tokio::test]
async fn after_a_schema_change_through_pgopt_fresh_statements_work_on_every_connection() {
    use tokio::io::AsyncWriteExt;
    let (_pg, proxy, (a, b, c)) =
        on_two_connections("CREATE TABLE pt (a int, b text); INSERT INTO pt VALUES (1, 'x')").await;
    let sql = "SELECT *, pg_backend_pid() AS pid FROM pt WHERE a = $1";
    // The statement on both server connections: each client holds one.
    let mut pids = Vec::new();
    for client in [&a, &b] {
        client.batch_execute("BEGIN").await.unwrap();
        let statement = client.prepare(sql).await.unwrap();
        let row = client.query_one(&statement, &[&1i32]).await.unwrap();
        pids.push(row.get::<_, i32>("pid"));
    }
    assert_ne!(pids[0], pids[1]);
    for client in [&a, &b] {
        client.batch_execute("COMMIT").await.unwrap();
    }
    c.batch_execute("ALTER TABLE pt ADD COLUMN z int DEFAULT 5")
        .await
        .unwrap();
    // Prepared afresh in a transaction on each connection (each raw client holds
    // one), and bound with no Describe of the statement.
    let mut raws = Vec::new();
    for _ in 0..2 {
        let mut raw = common::raw_login(&proxy).await;
        raw.write_all(&common::message(b'Q', b"BEGIN\0"))
            .await
            .unwrap();
        common::read_until(&mut raw, b'Z').await;
        let mut batch = common::message(b'P', format!("fresh\0{sql}\0\0\0").as_bytes());
        batch.extend(common::message(b'S', b""));
        batch.extend(common::message(b'B', b"\0fresh\0\0\0\0\x01\0\0\0\x011\0\0"));
        batch.extend(common::message(b'E', b"\0\0\0\0\0"));
        batch.extend(common::message(b'S', b""));
        raw.write_all(&batch).await.unwrap();
        assert_eq!(common::read_until_nth(&mut raw, b'Z', 2).await, b"1Z2DCZ");
        raws.push(raw);
    }
    for raw in &mut raws {
        raw.write_all(&common::message(b'Q', b"COMMIT\0"))
            .await
            .unwrap();
        common::read_until(raw, b'Z').await;
    }
}

/// In a failed transaction a server connection that lacks a client's statement
/// can't prepare it (PostgreSQL refuses every Parse but COMMIT's and ROLLBACK's): a
/// Describe or Bind of it is answered as PostgreSQL answers it, from what a server
/// said of the statement when it was first prepared.
#[tokio::test]
async fn describe_and_bind_in_a_failed_transaction_on_a_connection_without_the_statement() {
    use pgopt_wire::frontend::{Bind, Describe, FrontendMessage as F};
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |_| {}).await;
    let admin = pg.connect("postgres").await.unwrap();
    admin.batch_execute("CREATE TABLE t (a int)").await.unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        parse("ins", "INSERT INTO t VALUES ($1::int)"),
        parse("sel", "SELECT a FROM t WHERE a > $1::int"),
        parse("rollback", "ROLLBACK"),
        parse("", "SELECT $1::int, $2::text"),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "1", "1", "1", "Z"]);
    // The next transaction gets a server connection that never had them.
    let console = common::admin(&proxy).await;
    console.simple_query("RECONNECT app").await.unwrap();
    // (Not by simple queries, which would drop the unnamed statement.) Portal
    // "empty", of an empty query, runs even once the transaction failed.
    let empty = F::Bind(Bind {
        portal: "empty",
        statement: "empty",
        param_formats: (&[]).into(),
        params: (&[]).into(),
        result_formats: (&[]).into(),
    });
    raw.send(&[
        parse("b", "BEGIN"),
        self::bind("b"),
        EXECUTE,
        parse("empty", ""),
        empty,
        parse("e", "SELECT 1/0"),
        self::bind("e"),
        EXECUTE,
        F::Sync,
    ])
    .await;
    assert_eq!(
        raw.until_ready().await,
        ["1", "2", "C", "1", "2", "1", "E22012", "Z"]
    );
    let describe = |name| {
        F::Describe(Describe {
            target: pgopt_wire::Target::Statement,
            name,
        })
    };
    let none: [pgopt_wire::Format; 0] = [];
    let one: [Option<&[u8]>; 1] = [Some(b"1")];
    let two: [Option<&[u8]>; 2] = [Some(b"1"), Some(b"2")];
    let bind = |statement, params| {
        F::Bind(Bind {
            portal: "",
            statement,
            param_formats: (&none).into(),
            params,
            result_formats: (&none).into(),
        })
    };
    // PostgreSQL describes the parameters of a statement that returns no rows, and
    // refuses one that does.
    raw.send(&[describe("ins"), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "n", "Z"]);
    raw.send(&[describe("ins"), describe("sel"), describe("ins"), F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["t", "n", "E25P02", "Z"]);
    // A Bind: the count of its parameters first, then 25P02.
    raw.send(&[bind("ins", (&two).into()), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["E08P01", "Z"]);
    raw.send(&[bind("sel", (&one).into()), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["E25P02", "Z"]);
    // The unnamed statement's count is its Parse's: its highest $n.
    raw.send(&[bind("", (&one).into()), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["E08P01", "Z"]);
    raw.send(&[bind("", (&two).into()), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["E25P02", "Z"]);
    // Behind an Execute, which might have been a ROLLBACK's, wrong counts still come
    // first; right ones get the server's answer.
    let run_empty = F::Execute(pgopt_wire::frontend::Execute {
        portal: "empty",
        max_rows: 0,
    });
    raw.send(&[run_empty, bind("ins", (&two).into()), F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["I", "E08P01", "Z"]);
    raw.send(&[run_empty, bind("", (&one).into()), F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["I", "E08P01", "Z"]);
    raw.send(&[run_empty, bind("ins", (&one).into()), F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["I", "E25P02", "Z"]);
    // ROLLBACK prepares, and ends the transaction.
    let nothing: [Option<&[u8]>; 0] = [];
    raw.send(&[
        bind("rollback", (&nothing).into()),
        F::Execute(pgopt_wire::frontend::Execute {
            portal: "",
            max_rows: 0,
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["2", "C", "Z"]);
    raw.send(&[bind("ins", (&one).into()), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["2", "Z"]);
}

/// In a failed transaction PostgreSQL refuses the Parse of anything but a transaction's
/// end: also of a statement the server connection has, when its text starts with a
/// comment (pgopt doesn't read past one) or is COMMIT PREPARED (which ends another
/// transaction); and the Bind of a statement whose plan changed meets 25P02 before
/// the plan is checked.
#[tokio::test]
async fn failed_transaction_refusals_for_statements_the_server_has() {
    use pgopt_wire::frontend::{FrontendMessage as F, Query};
    let (pg, proxy) = start(1).await;
    let admin = pg.connect("postgres").await.unwrap();
    admin
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut a = Raw::connect(&proxy).await;
    let mut b = Raw::connect(&proxy).await;
    a.send(&[
        parse("c1", "/* c */ SELECT 1"),
        parse("p1", "COMMIT PREPARED 'x'"),
        F::Sync,
    ])
    .await;
    assert_eq!(a.until_ready().await, ["1", "1", "Z"]);
    for raw in [&mut a, &mut b] {
        raw.send(&[parse("s1", "SELECT * FROM t"), F::Sync]).await;
        assert_eq!(raw.until_ready().await, ["1", "Z"]);
    }
    for sql in ["BEGIN", "SELECT 1/0"] {
        a.send(&[F::Query(Query { sql })]).await;
        a.until_ready().await;
    }
    for (name, sql) in [("c2", "/* c */ SELECT 1"), ("p2", "COMMIT PREPARED 'x'")] {
        a.send(&[parse(name, sql), F::Sync]).await;
        assert_eq!(a.until_ready().await, ["E25P02", "Z"], "{sql}");
    }
    a.send(&[F::Query(Query { sql: "ROLLBACK" })]).await;
    a.until_ready().await;
    a.send(&[bind("c2"), F::Sync]).await;
    assert_eq!(a.until_ready().await, ["E26000", "Z"], "c2 was never made");
    // b's s1 outdated by a's run after a schema change.
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    assert_eq!(
        exec_prepared(&mut a, "s1").await,
        ["2", "T2", "D2", "C", "Z"]
    );
    for sql in ["BEGIN", "SELECT 1/0"] {
        b.send(&[F::Query(Query { sql })]).await;
        b.until_ready().await;
    }
    b.send(&[bind("s1"), EXECUTE, F::Sync]).await;
    assert_eq!(b.until_ready().await, ["E25P02", "Z"]);
}

/// A client's Parse of a statement the server has, after a BEGIN executed earlier in
/// the same batch: the server parses it too (it takes the block's first snapshot).
#[tokio::test]
async fn a_parse_after_a_begin_in_its_batch_takes_the_snapshot() {
    use pgopt_wire::frontend::FrontendMessage as F;
    let (_pg, proxy) = start(1).await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[parse("s1", "SELECT 1"), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["1", "Z"]);
    raw.send(&[
        parse("", "BEGIN"),
        bind(""),
        EXECUTE,
        parse("s2", "SELECT 1"),
        parse("", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        bind(""),
        EXECUTE,
        F::Sync,
    ])
    .await;
    assert_eq!(
        raw.until_ready().await,
        ["1", "2", "C", "1", "1", "2", "E25001", "Z"]
    );
}

/// In a failed transaction, on a server connection without the statement, a Describe
/// is answered from what is known of it: also after another statement's plan changed,
/// and with a Sync still in flight before it.
#[tokio::test]
async fn failed_transaction_descriptions_outlive_other_statements_schema_changes() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F, Query};
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |_| {}).await;
    let admin = pg.connect("postgres").await.unwrap();
    admin
        .batch_execute("CREATE TABLE t (a int); CREATE TABLE u (a int); INSERT INTO u VALUES (1)")
        .await
        .unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        parse("ins", "INSERT INTO t VALUES ($1::int)"),
        parse("all_u", "SELECT * FROM u"),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "1", "Z"]);
    // Another statement's plan changes.
    admin
        .batch_execute("ALTER TABLE u ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    assert_eq!(
        exec_prepared(&mut raw, "all_u").await,
        ["2", "T2", "D2", "C", "Z"]
    );
    let console = common::admin(&proxy).await;
    console.simple_query("RECONNECT app").await.unwrap();
    for sql in ["BEGIN", "SELECT 1/0"] {
        raw.send(&[F::Query(Query { sql })]).await;
        raw.until_ready().await;
    }
    let describe = F::Describe(Describe {
        target: pgopt_wire::Target::Statement,
        name: "ins",
    });
    raw.send(&[describe, F::Sync, describe, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "n", "Z"]);
    assert_eq!(raw.until_ready().await, ["t", "n", "Z"]);
}

/// An unnamed Parse the server skipped after an error leaves the server's unnamed
/// statement what it was — on a pooled connection, maybe another client's: a Bind of
/// the unnamed statement then never reaches that one.
#[tokio::test]
async fn a_skipped_unnamed_parse_never_lends_another_clients_unnamed_statement() {
    use pgopt_wire::frontend::FrontendMessage as F;
    let (_pg, proxy) = start(1).await;
    let mut other = Raw::connect(&proxy).await;
    other.send(&[parse("", "SELECT 'other'"), F::Sync]).await;
    assert_eq!(other.until_ready().await, ["1", "Z"]);
    let mut raw = Raw::connect(&proxy).await;
    let run = |name, sql| [parse(name, sql), bind(name), EXECUTE];
    let mut batch: Vec<F> = Vec::new();
    batch.extend(run("b", "BEGIN"));
    batch.extend(run("sp", "SAVEPOINT s"));
    batch.push(F::Sync);
    raw.send(&batch).await;
    assert_eq!(raw.until_ready().await, ["1", "2", "C", "1", "2", "C", "Z"]);
    let mut batch: Vec<F> = run("e", "SELECT 1/0").into();
    batch.push(parse("", "SELECT 'mine'"));
    batch.push(F::Sync);
    raw.send(&batch).await;
    // (Planned at the Bind, which fails.)
    assert_eq!(raw.until_ready().await, ["1", "E22012", "Z"]);
    let mut batch: Vec<F> = run("rb", "ROLLBACK TO SAVEPOINT s").into();
    batch.extend([bind(""), EXECUTE, F::Sync]);
    raw.send(&batch).await;
    // As on PostgreSQL: the client has no unnamed statement.
    assert_eq!(raw.until_ready().await, ["1", "2", "C", "E26000", "Z"]);
    raw.send(&[F::Query(pgopt_wire::frontend::Query { sql: "ROLLBACK" })])
        .await;
    raw.until_ready().await;

    // The same with the Bind pipelined behind the failing batch: sent before pgopt
    // hears the Parse was skipped. Another client's statement (two columns) is never
    // what it binds: it waits for the Parse's answer, then finds no statement, as
    // PostgreSQL would.
    other.send(&[parse("", "SELECT 'other', 2"), F::Sync]).await;
    assert_eq!(other.until_ready().await, ["1", "Z"]);
    let mut batch: Vec<F> = run("e2", "SELECT 1/0").into();
    batch.extend([
        parse("", "SELECT 'mine'"),
        F::Sync,
        bind(""),
        EXECUTE,
        F::Sync,
    ]);
    raw.send(&batch).await;
    assert_eq!(raw.until_ready().await, ["1", "E22012", "Z"]);
    assert_eq!(raw.until_ready().await, ["E26000", "Z"]);
}

/// A Parse of a statement the server connection already has still reaches the server
/// inside a transaction block: there PostgreSQL's Parse takes the transaction's first
/// snapshot, after which the isolation level can't be set.
#[tokio::test]
async fn a_parse_inside_a_block_takes_the_snapshot_as_on_postgresql() {
    let (_pg, proxy) = start(1).await;
    let a = connect(&proxy).await;
    a.prepare("SELECT 1").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let again = a.prepare("SELECT 1").await.unwrap();
    assert_a_query_ran(&a).await;
    assert_eq!(a.query_one(&again, &[]).await.unwrap().get::<_, i32>(0), 1);
}

/// COPY FROM STDIN through the extended protocol, as tokio-postgres and libpq's
/// PQexecParams send it: Bind, Execute, Sync, then the data, CopyDone and a Sync.
/// PostgreSQL ignores the first Sync (it came during COPY) and answers one
/// ReadyForQuery; the server connection goes back to the pool after it.
#[tokio::test]
async fn copy_in_through_the_extended_protocol_leaves_the_connection_to_the_pool() {
    use futures_util::SinkExt;
    let (pg, proxy) = start(1).await;
    pg.psql("CREATE TABLE c (id int)").unwrap();
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    for round in 0..3 {
        let sink = a.copy_in("COPY c FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);
        // The other client gets the one server connection.
        let counted: i64 = b
            .query_one("SELECT count(*) FROM c", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(counted, 2 * (round + 1));
        assert_eq!(
            a.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
            7
        );
    }
}

/// A statement a server connection prepared before a schema change changed its
/// result type: another client preparing the same text gets the server's copy, whose
/// Describe (tokio-postgres, asyncpg, pgjdbc and postgres.js describe what they
/// prepare) meets "cached plan must not change result type" — which PostgreSQL never
/// gives a statement just parsed. The batch runs again on a copy prepared again, and
/// the pool prepares it again everywhere.
#[tokio::test]
async fn a_stale_copy_met_by_a_describe_is_prepared_again() {
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let sql = "SELECT * FROM t";
    let a = connect(&proxy).await;
    assert_eq!(a.query(sql, &[]).await.unwrap()[0].len(), 1);
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let b = connect(&proxy).await;
    let statement = b.prepare(sql).await.unwrap();
    assert_eq!(statement.columns().len(), 2);
    let rows = b.query(&statement, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>("b"), 7);
    // (The first client's own copy: PostgreSQL's error until it prepares it again.)
    assert_eq!(a.prepare(sql).await.unwrap().columns().len(), 2);
}

/// A client's Parse of a statement the connection has from before a schema change
/// made outside pgopt (another client's copy) prepares it afresh there, as PostgreSQL
/// plans a fresh Parse: a batch that parses it, runs an INSERT and then describes it
/// gets the new shape and commits, as on PostgreSQL. (Before, the Describe met the
/// stale copy: the client got 0A000 and the INSERT rolled back with the batch.)
#[tokio::test]
async fn a_statement_parsed_again_after_a_schema_change_elsewhere_is_fresh() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F};
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE t (a int); CREATE TABLE log (x int)").await;
    let a = connect(&proxy).await;
    a.prepare("SELECT * FROM t").await.unwrap();
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int")
        .await
        .unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        parse("s1", "SELECT * FROM t"),
        parse("", "INSERT INTO log VALUES (1)"),
        self::bind(""),
        EXECUTE,
        F::Describe(Describe {
            target: pgopt_wire::Target::Statement,
            name: "s1",
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(
        raw.until_ready().await,
        ["1", "1", "2", "C", "t", "T2", "Z"]
    );
    let logged: i64 = admin
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1, "committed, as on PostgreSQL");
    // And again, in the new shape.
    raw.send(&[
        F::Describe(Describe {
            target: pgopt_wire::Target::Statement,
            name: "s1",
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["t", "T2", "Z"]);
}

/// `set_config(…, false)` in an unnamed statement parsed in one batch and bound in
/// the next (asyncpg without a statement cache, as behind a pooler): read back after
/// the Bind's batch, so it follows its client and never stays for another.
#[tokio::test]
async fn set_config_in_an_unnamed_statement_bound_later_is_read_back() {
    use pgopt_wire::frontend::{Bind, Describe, FrontendMessage as F};
    let (_pg, proxy, _admin) = on_one_connection("SELECT 1").await;
    let other = connect(&proxy).await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        parse("", "SELECT set_config('app.tenant', $1, false)"),
        F::Describe(Describe {
            target: pgopt_wire::Target::Statement,
            name: "",
        }),
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["1", "t", "T1", "Z"]);
    let tenant: [Option<&[u8]>; 1] = [Some(b"t1")];
    raw.send(&[
        F::Bind(Bind {
            portal: "",
            statement: "",
            param_formats: (&[]).into(),
            params: (&tenant).into(),
            result_formats: (&[]).into(),
        }),
        EXECUTE,
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["2", "D1", "C", "Z"]);
    for _ in 0..2 {
        let seen = common::value(
            &other,
            "SELECT coalesce(current_setting('app.tenant', true), '')",
        )
        .await;
        assert_eq!(seen, "", "another client's tenant");
        // (Divides by zero unless the client's own is there.)
        raw.send(&[F::Query(pgopt_wire::frontend::Query {
            sql: "SELECT 1 / (current_setting('app.tenant') = 't1')::int",
        })])
        .await;
        assert_eq!(raw.until_ready().await, ["T1", "D1", "C", "Z"]);
    }
}

/// A statement a client prepared before a schema change that changed its result
/// type, run on a server connection opened since (which prepares it fresh, so the
/// server has no old plan to refuse): pgopt describes the fresh copy first, sees the
/// shape the client was told is gone, and the client gets PostgreSQL's "cached plan
/// must not change result type" — not rows in a shape it would misread. A change that
/// leaves the shape alone (a table dropped and made again) changes nothing.
#[tokio::test]
async fn a_changed_shape_is_caught_on_a_connection_that_prepares_it_fresh() {
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let a = connect(&proxy).await;
    let st = a.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(a.query(&st, &[]).await.unwrap()[0].len(), 1);
    let console = common::admin(&proxy).await;
    // The same shape, on a new table: runs.
    admin
        .batch_execute("DROP TABLE t; CREATE TABLE t (a int); INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    console.simple_query("RECONNECT app").await.unwrap();
    let row = a.query_one(&st, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    // Another shape: refused, as PostgreSQL refuses it.
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b text DEFAULT 'x'")
        .await
        .unwrap();
    console.simple_query("RECONNECT app").await.unwrap();
    let e = a.query(&st, &[]).await.unwrap_err();
    assert_eq!(common::code(&e), Some("0A000"), "{e:?}");
    // Prepared again, it runs in the new shape.
    let st = a.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(a.query(&st, &[]).await.unwrap()[0].len(), 2);
}

/// In a transaction block, a Describe of a statement the server connection lacks is
/// answered from what a server said of it: preparing it there would take the block's
/// first snapshot, which PostgreSQL's Describe does not (SET TRANSACTION ISOLATION
/// LEVEL would then be refused).
#[tokio::test]
async fn a_describe_in_a_block_takes_no_snapshot() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F, Query};
    let (_pg, proxy, _admin) = on_one_connection("SELECT 1").await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[parse("s1", "SELECT 1 AS one"), F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["1", "Z"]);
    let describe = F::Describe(Describe {
        target: pgopt_wire::Target::Statement,
        name: "s1",
    });
    raw.send(&[describe, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "T1", "Z"]);
    let console = common::admin(&proxy).await;
    console.simple_query("RECONNECT app").await.unwrap();
    raw.send(&[F::Query(Query { sql: "BEGIN" })]).await;
    raw.until_ready().await;
    raw.send(&[describe, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["t", "T1", "Z"]);
    raw.send(&[F::Query(Query {
        sql: "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    })])
    .await;
    assert_eq!(raw.until_ready().await, ["C", "Z"]);
    raw.send(&[self::bind("s1"), EXECUTE, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["2", "D1", "C", "Z"]);
    raw.send(&[F::Query(Query { sql: "COMMIT" })]).await;
    raw.until_ready().await;
}

/// The row-shape check of a statement prepared fresh: an error of a query pipelined
/// before the Bind does not end the wait for the check's answer; and a fresh copy
/// another client's prepare made (and described) counts as well.
#[tokio::test]
async fn a_changed_shape_is_caught_behind_an_error_and_after_another_clients_prepare() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F, Query};
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let console = common::admin(&proxy).await;
    let mut raw = Raw::connect(&proxy).await;
    let describe = F::Describe(Describe {
        target: pgopt_wire::Target::Statement,
        name: "s1",
    });
    raw.send(&[parse("s1", "SELECT * FROM t"), describe, F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["1", "t", "T1", "Z"]);
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int")
        .await
        .unwrap();
    console.simple_query("RECONNECT app").await.unwrap();
    raw.send(&[
        F::Query(Query { sql: "SELECT 1/0" }),
        self::bind("s1"),
        EXECUTE,
        F::Sync,
    ])
    .await;
    assert_eq!(raw.until_ready().await, ["E22012", "Z"]);
    assert_eq!(raw.until_ready().await, ["E0A000", "Z"]);
    // Told the new shape (a Describe of its own), the client runs it.
    raw.send(&[describe, self::bind("s1"), EXECUTE, F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["t", "T2", "2", "D2", "C", "Z"]);

    // Another change; another client prepares the same text first, on a fresh
    // connection: the shape it is told invalidates the first client's.
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN c int")
        .await
        .unwrap();
    console.simple_query("RECONNECT app").await.unwrap();
    let other = connect(&proxy).await;
    let st = other.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(st.columns().len(), 3);
    raw.send(&[self::bind("s1"), EXECUTE, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["E0A000", "Z"]);
    assert_eq!(other.query(&st, &[]).await.unwrap()[0].len(), 3);
}

/// A driver that prepares with a Flush and binds only once it has the description
/// (postgres.js): when the server's copy is another client's from before a schema
/// change, the Describe runs again (pgopt ends the failed batch with a Sync of its
/// own; nothing in it ran), and the client gets the new description.
#[tokio::test]
async fn a_stale_copy_met_by_a_flushed_describe_is_described_again() {
    use pgopt_wire::frontend::{Describe, FrontendMessage as F};
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let a = connect(&proxy).await;
    a.prepare("SELECT * FROM t").await.unwrap();
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[
        parse("s1", "SELECT * FROM t"),
        F::Describe(Describe {
            target: pgopt_wire::Target::Statement,
            name: "s1",
        }),
        F::Flush,
    ])
    .await;
    let described = tokio::time::timeout(std::time::Duration::from_secs(10), raw.until(b'T'))
        .await
        .expect("no RowDescription within 10 s");
    assert_eq!(described, ["1", "t", "T2"]);
    raw.send(&[self::bind("s1"), EXECUTE, F::Sync]).await;
    assert_eq!(raw.until_ready().await, ["2", "D2", "C", "Z"]);
}

/// Values of hundreds of kilobytes, which pgopt queues for the server as they came
/// rather than copied (a Bind under the server's name for its statement gets a new
/// head before them): in a named statement's Bind, in a query's text, in COPY data,
/// pipelined between small messages and through several clients sharing one server
/// connection. Every byte arrives in its place.
#[tokio::test]
async fn large_values_reach_the_server_whole_in_every_kind_of_message() {
    use futures_util::SinkExt;
    let (pg, proxy) = start(1).await;
    pg.psql("CREATE TABLE big (id int, v text)").unwrap();
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    // A text whose every position says where it is.
    let value = |len: usize, seed: u8| -> String {
        (0..len)
            .map(|i| (b'a' + ((i * 7 + seed as usize) % 26) as u8) as char)
            .collect()
    };
    let check = "SELECT length(v), md5(v) FROM big WHERE id = $1";
    let insert = a.prepare("INSERT INTO big VALUES ($1, $2)").await.unwrap();
    for (id, len) in [(1, 70_000), (2, 300_000), (3, 1_500_000)] {
        let v = value(len, id as u8);
        // Pipelined with small statements of the other client in between.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &v];
        let (inserted, seven) =
            tokio::join!(a.execute(&insert, &params), b.query_one("SELECT 7", &[]));
        assert_eq!(inserted.unwrap(), 1);
        assert_eq!(seven.unwrap().get::<_, i32>(0), 7);
        let row = b.query_one(check, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0) as usize, len);
        // md5 of the same text computed by the server from a simple query's literal.
        let sql = format!("SELECT md5('{v}')");
        let simple = match &a.simple_query(&sql).await.unwrap()[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(row.get::<_, String>(1), simple);
        assert_eq!(server_md5(&b, &v).await, simple);
    }
    // COPY data: rows of 200 kB, in one CopyData each.
    let sink = a.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for id in 10..13 {
        let row = format!("{id}\t{}\n", value(200_000, id as u8));
        sink.send(bytes::Bytes::from(row)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 3);
    let row = b
        .query_one(
            "SELECT count(*), sum(length(v)) FROM big WHERE id >= 10",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, i64>(1), 600_000);
    let want = server_md5(&b, &value(200_000, 11)).await;
    let got: String = a
        .query_one("SELECT md5(v) FROM big WHERE id = 11", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, want);
    // A COPY that fails at its first row while a large one is on its way: the client
    // gets the error, nothing is written, and the one server connection goes on.
    let sink = a.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from("x\tbad id\n")).await.unwrap();
    let row = format!("20\t{}\n", value(2_000_000, 20));
    let sent = sink.send(bytes::Bytes::from(row)).await;
    let finished = match sent {
        Ok(()) => sink.finish().await,
        Err(e) => Err(e),
    };
    let error = finished.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION),
        "{error:?}"
    );
    let row = b
        .query_one("SELECT count(*) FROM big WHERE id >= 10", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    let row = a.query_one("SELECT 8", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_reach_the_client_whole_in_every_kind_of_response() {
    // Rows of 64 kB and more go to the client as they arrive, not held whole: in a
    // result of several, beside a small one, in a COPY TO, through a cursor, before an
    // error; another client takes turns on the one server connection meanwhile.
    use futures_util::TryStreamExt;
    let (pg, proxy) = start(1).await;
    pg.psql(
        "CREATE TABLE big (id int, v text);
         INSERT INTO big SELECT n, string_agg(chr(97 + (i * 7 + n) % 26), '' ORDER BY i)
           FROM (VALUES (1, 70000), (2, 300000), (3, 1500000)) AS s(n, len),
                generate_series(1, len) AS i
          GROUP BY n;
         INSERT INTO big VALUES (4, 'small');",
    )
    .unwrap();
    let value = |id: usize| -> String {
        match id {
            4 => "small".into(),
            _ => {
                let len = [70_000, 300_000, 1_500_000][id - 1];
                (1..=len)
                    .map(|i| (b'a' + ((i * 7 + id) % 26) as u8) as char)
                    .collect()
            }
        }
    };
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let others = || async {
        for _ in 0..5 {
            assert_eq!(
                b.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
                7
            );
        }
    };
    let texts = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .collect()
    };
    let all: Vec<String> = (1..=4).map(value).collect();

    // Extended protocol, a result of four rows.
    let (rows, ()) = tokio::join!(a.query("SELECT v FROM big ORDER BY id", &[]), others());
    let got: Vec<String> = rows.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(
        got == all,
        "extended: lengths {:?}",
        got.iter().map(String::len).collect::<Vec<_>>()
    );

    // Simple protocol, two statements.
    let sql = "SELECT v FROM big WHERE id = 3; SELECT v FROM big WHERE id = 4";
    let (messages, ()) = tokio::join!(a.simple_query(sql), others());
    assert!(texts(messages.unwrap()) == all[2..], "simple");

    // COPY TO STDOUT: a CopyData per row.
    let copy = async {
        let stream = a
            .copy_out("COPY (SELECT v FROM big ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        chunks.concat()
    };
    let (copied, ()) = tokio::join!(copy, others());
    let want: String = all.iter().map(|v| format!("{v}\n")).collect();
    assert!(copied == want.as_bytes(), "COPY: {} bytes", copied.len());

    // A cursor in a transaction block, fetched in two steps.
    let fetch = async {
        let mut got = Vec::new();
        for sql in [
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT v FROM big ORDER BY id",
        ] {
            a.simple_query(sql).await.unwrap();
        }
        for sql in ["FETCH 2 FROM c", "FETCH ALL FROM c"] {
            got.extend(texts(a.simple_query(sql).await.unwrap()));
        }
        a.simple_query("COMMIT").await.unwrap();
        got
    };
    let (got, ()) = tokio::join!(fetch, others());
    assert!(got == all, "cursor");

    // An error after large rows: the client gets it, and the connection goes on.
    // (Not a constant 1 / 0: that fails while planning, before any row.)
    let failing =
        "SELECT CASE WHEN id < 4 THEN v ELSE (1 / (id - 4))::text END FROM big ORDER BY id";
    let (failed, ()) = tokio::join!(a.simple_query(failing), others());
    let error = failed.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let row = a
        .query_one("SELECT length(v) FROM big WHERE id = 2", &[])
        .await;
    assert_eq!(row.unwrap().get::<_, i32>(0), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_part_way_through_a_large_row_lets_its_connection_go() {
    // The one server connection: a client's COPY fails at its first row while a large
    // row is part way to the server, which would read the rest only to drop it. In
    // transaction mode the connection is closed rather than held for a client that
    // may never send the rest (another client gets a fresh one at once, without the
    // SQL statement the block prepared), and the rest is dropped as it comes. In
    // session mode the connection is the client's: one that stops there is cut by
    // idle_transaction_timeout.
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE t (id int)").unwrap();
    let row = {
        let mut body = b"1\t".to_vec();
        body.resize(1 << 20, b'7');
        body.push(b'\n');
        common::message(b'd', &body)
    };
    let (head, rest) = row.split_at(300_000);
    // A bad first row and the start of the large one, in one write.
    let mut failing = common::message(b'd', b"x\n");
    failing.extend_from_slice(head);
    let prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql";
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let proxy = common::start_with(&pg, |c| {
            c.pool_mode = mode;
            c.default_pool_size = 1;
            c.idle_transaction_timeout = Duration::from_millis(500);
        })
        .await;
        let mut raw = common::raw_login(&proxy).await;
        for sql in ["BEGIN", "PREPARE p AS SELECT 1"] {
            raw.write_all(&common::message(b'Q', format!("{sql}\0").as_bytes()))
                .await
                .unwrap();
            common::read_until(&mut raw, b'Z').await;
        }
        let mut batch = common::message(b'Q', b"COMMIT\0");
        batch.extend(common::message(b'Q', b"COPY t FROM STDIN\0"));
        raw.write_all(&batch).await.unwrap();
        assert_eq!(common::read_until(&mut raw, b'G').await, b"CZG");
        raw.write_all(&failing).await.unwrap();
        assert_eq!(common::read_until(&mut raw, b'Z').await, b"EZ");
        let other = connect(&proxy).await;
        let count = tokio::time::timeout(Duration::from_secs(10), other.query_one(prepared, &[]));
        let row = count
            .await
            .expect("the connection stayed with the client part way through a CopyData")
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            0,
            "{mode:?}: the block's PREPARE was left behind"
        );
        if mode == PoolMode::Transaction {
            // The client goes on: the rest of its row, the end of its COPY, a query.
            tokio::time::sleep(Duration::from_millis(700)).await;
            raw.write_all(rest).await.unwrap();
            raw.write_all(&common::message(b'c', b"")).await.unwrap();
            raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
                .await
                .unwrap();
            assert_eq!(common::read_until(&mut raw, b'Z').await, b"TDCZ");
            let row = other
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), 0);
        } else {
            // Cut: its FATAL, and the other client had the connection after it.
            assert_eq!(common::read_until(&mut raw, b'E').await, b"E");
        }
    }
    // A setting a statement before the COPY set is read back from its connection
    // once the rest is through, not lost with a connection closed early.
    let proxy = common::start_with(&pg, |c| c.default_pool_size = 1).await;
    let mut raw = common::raw_login(&proxy).await;
    let mut batch = common::message(
        b'Q',
        b"SELECT set_config('application_name', 'kept', false)\0",
    );
    batch.extend(common::message(b'Q', b"COPY t FROM STDIN\0"));
    raw.write_all(&batch).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'G').await, b"TDCSZG");
    raw.write_all(&failing).await.unwrap();
    assert_eq!(common::read_until(&mut raw, b'Z').await, b"EZ");
    raw.write_all(rest).await.unwrap();
    raw.write_all(&common::message(b'c', b"")).await.unwrap();
    let other = connect(&proxy).await;
    // (Not another client's.)
    assert_ne!(common::value(&other, "SHOW application_name").await, "kept");
    raw.write_all(&common::message(b'Q', b"SHOW application_name\0"))
        .await
        .unwrap();
    let reply = read_reply(&mut raw).await;
    assert!(
        reply.windows(4).any(|w| w == b"kept"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_pass_both_ways_at_once() {
    // A client pipelines a query whose row is 4 MB, a COPY FROM and a CopyData of
    // 4 MB behind it, without waiting: the server sends the row while the CopyData is
    // part way through pgopt (each passed on as it comes), then takes the data.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LEN: usize = 4 << 20;
    let (pg, proxy) = start(1).await;
    pg.psql("CREATE TABLE t (v text)").unwrap();
    let raw = common::raw_login(&proxy).await;
    let (mut rd, mut wr) = raw.into_split();
    let mut batch = common::message(b'Q', format!("SELECT repeat('r', {LEN})\0").as_bytes());
    batch.extend(common::message(b'Q', b"COPY t FROM STDIN\0"));
    let mut row = vec![b'w'; LEN];
    row.push(b'\n');
    batch.extend(common::message(b'd', &row));
    batch.extend(common::message(b'c', b""));
    // The CopyData in two parts, the row coming back between them.
    let writer = tokio::spawn(async move {
        let (first, rest) = batch.split_at(batch.len() - LEN / 2);
        wr.write_all(first).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        wr.write_all(rest).await.unwrap();
        wr
    });
    // Every message, with the DataRow's value checked as it is read.
    let mut tags = Vec::new();
    let mut readies = 0;
    while readies < 2 {
        let mut head = [0u8; 5];
        rd.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        rd.read_exact(&mut body).await.unwrap();
        if head[0] == b'D' {
            assert_eq!(body.len(), 6 + LEN);
            assert!(body[6..].iter().all(|&b| b == b'r'), "the row's bytes");
        }
        readies += usize::from(head[0] == b'Z');
        tags.push(head[0]);
    }
    assert_eq!(tags, b"TDCZGCZ");
    let _wr = writer.await.unwrap();
    let client = connect(&proxy).await;
    let row = client
        .query_one(
            "SELECT count(*), sum(length(v)) FROM t WHERE v ~ '^w+$'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), LEN as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_binds_pass_through_or_go_as_the_server_would_take_them() {
    // Binds of 256 kB or more go to the server as they arrive, in both pool modes; in
    // transaction mode also after a Parse pgopt refuses (the rest dropped as it comes,
    // as the server would skip it), and on a connection that lacks the statement
    // (held while pgopt prepares and describes it there, then passed); held whole in
    // a failed transaction (pgopt answers from the statement's description there).
    use tokio::io::AsyncWriteExt;
    let value =
        |len: usize| -> String { (0..len).map(|i| (b'a' + (i % 23) as u8) as char).collect() };
    let pg = Postgres::start().await.unwrap();
    pg.psql("CREATE TABLE big (id int, v text)").unwrap();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = common::start_with(&pg, |c| {
            c.pool_mode = mode;
            c.default_pool_size = 1;
        })
        .await;
        let client = connect(&proxy).await;
        let insert = client
            .prepare("INSERT INTO big VALUES ($1, $2)")
            .await
            .unwrap();
        let check = client
            .prepare("SELECT length(v), v = $2 FROM big WHERE id = $1")
            .await
            .unwrap();
        let id = if mode == PoolMode::Session { 1 } else { 2 };
        let v = value(1_500_000);
        assert_eq!(client.execute(&insert, &[&id, &v]).await.unwrap(), 1);
        let row = client.query_one(&check, &[&id, &v]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1_500_000, "{mode:?}");
        assert!(row.get::<_, bool>(1), "{mode:?}: the value differs");
        // In a failed transaction: the server's 25P02, then the rollback.
        client.batch_execute("BEGIN").await.unwrap();
        assert!(client.batch_execute("SELECT 1 / 0").await.is_err());
        let err = client.execute(&insert, &[&9, &v]).await.unwrap_err();
        assert_eq!(common::code(&err), Some("25P02"), "{mode:?}: {err}");
        client.batch_execute("ROLLBACK").await.unwrap();
        if mode == PoolMode::Transaction {
            // A Parse pgopt refuses, a large Bind behind it in the same batch: the
            // error, then the ReadyForQuery of the batch's Sync; nothing of it ran.
            let mut raw = common::raw_login(&proxy).await;
            let mut batch = common::message(b'P', b"\0LISTEN x\0\0\0");
            let mut bind = b"\0\0\0\0\0\x01".to_vec();
            bind.extend_from_slice(&(1_000_000u32).to_be_bytes());
            bind.resize(bind.len() + 1_000_000, b'q');
            bind.extend_from_slice(b"\0\0");
            batch.extend(common::message(b'B', &bind));
            batch.extend(common::message(b'E', b"\0\0\0\0\0"));
            batch.extend(common::message(b'S', b""));
            raw.write_all(&batch).await.unwrap();
            assert_eq!(common::read_until(&mut raw, b'Z').await, b"EZ");
            raw.write_all(&common::message(b'Q', b"SELECT 1\0"))
                .await
                .unwrap();
            assert_eq!(common::read_until(&mut raw, b'Z').await, b"TDCZ");
        }
        let row = client
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), id as i64, "{mode:?}");
    }
    // Transaction mode, two server connections: a statement with rows is prepared on
    // one while another client holds the other, then bound on the other.
    let proxy = common::start_with(&pg, |c| c.default_pool_size = 2).await;
    let (a, b, c) = (
        connect(&proxy).await,
        connect(&proxy).await,
        connect(&proxy).await,
    );
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let sum = a
        .prepare("SELECT length($2::text) + $1::int, md5($2::text)")
        .await
        .unwrap();
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let v = value(1_200_000);
    let row = a.query_one(&sum, &[&3, &v]).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1_200_003);
    assert_eq!(row.get::<_, String>(1), server_md5(&b, &v).await);
}

/// The bytes `raw` receives up to and including a ReadyForQuery.
async fn read_reply(raw: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut reply = Vec::new();
    while !(reply.len() >= 6 && reply[reply.len() - 6] == b'Z') {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("no ReadyForQuery in 10 s")
            .unwrap();
        assert!(n > 0, "closed");
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

/// The server's md5 of `text`, sent as a bound parameter.
async fn server_md5(client: &tokio_postgres::Client, text: &str) -> String {
    let row = client
        .query_one("SELECT md5($1::text)", &[&text])
        .await
        .unwrap();
    row.get(0)
}

/// Past `max_prepared_statements` on a server connection, the statements unused
/// longest are closed there and prepared again where a client next uses them; never
/// one the current transaction used (its portals may still run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_the_statements_unused_longest_are_closed_on_the_server() {
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.max_prepared_statements = 3;
    })
    .await;
    let mut client = connect(&proxy).await;
    let other = connect(&proxy).await;
    let on_server = || async {
        let n: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgopt_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let mut statements = Vec::new();
    for i in 0..6 {
        let sql = format!("SELECT {i}::int + $1");
        statements.push(client.prepare(&sql).await.unwrap());
        assert!(on_server().await <= 3, "after {} statements", i + 1);
    }
    // Every one still runs: those closed are prepared again, others closed instead.
    for round in 0..2 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = client.query_one(s, &[&10]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + 10, "round {round}");
            assert!(on_server().await <= 3);
        }
    }
    // One transaction may use more than the limit: none it used is closed under it.
    let tx = client.transaction().await.unwrap();
    let portal = tx.bind(&statements[0], &[&1]).await.unwrap();
    for (i, s) in statements.iter().enumerate() {
        let v: i32 = tx.query_one(s, &[&1]).await.unwrap().get(0);
        assert_eq!(v, i as i32 + 1);
    }
    let rows = tx.query_portal(&portal, 0).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    tx.commit().await.unwrap();
    let extra = client.prepare("SELECT 100 + $1::int").await.unwrap();
    let v: i32 = client.query_one(&extra, &[&1]).await.unwrap().get(0);
    assert_eq!(v, 101);
    assert!(on_server().await <= 3);
}

/// A statement closed past the limit whose Close the server skipped (an error earlier
/// in its batch), used again in a batch pipelined behind: closed again before it is
/// prepared again, not prepared over its old copy (42P05).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_statement_used_again_behind_a_failed_batch_is_prepared_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = Postgres::start().await.unwrap();
    let proxy = common::start_with(&pg, |c| {
        c.default_pool_size = 1;
        c.max_prepared_statements = 2;
    })
    .await;
    let mut raw = common::raw_login(&proxy).await;
    let parse =
        |name: &str, sql: &str| common::message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    let bind = |name: &str| common::message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
    let execute = common::message(b'E', b"\0\0\0\0\0");
    let sync = common::message(b'S', b"");
    for (name, sql) in [("a", "SELECT 1"), ("b", "SELECT 2")] {
        raw.write_all(&[parse(name, sql), sync.clone()].concat())
            .await
            .unwrap();
        common::read_until(&mut raw, b'Z').await;
    }
    // `c` closes `a` (unused longest) first; the division fails before that Close.
    let pipeline = [
        common::run_unnamed("SELECT 1/0", b'H'),
        parse("c", "SELECT 3"),
        sync.clone(),
        bind("a"),
        execute.clone(),
        sync.clone(),
    ]
    .concat();
    raw.write_all(&pipeline).await.unwrap();
    let mut reply = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while reply.iter().filter(|&&b| b == b'Z').count() < 2
        || !reply.windows(8).any(|w| w == b"SELECT 1")
    {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, raw.read(&mut buf))
            .await
            .expect("the pipeline's answers")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("22012"), "the division's error: {text}");
    assert!(
        !text.contains("42P05"),
        "prepared over its old copy: {text}"
    );
    assert!(text.contains("SELECT 1"), "`a` ran: {text}");
}

/// A new client's Parse, Bind and Execute (no Describe) of a statement the
/// connection has from before a schema change made directly on PostgreSQL runs: a
/// Parse prepares afresh, as PostgreSQL plans one. Before, the Bind met the old copy
/// and the client got "cached plan must not change result type" on its first try
/// (an exploratory test: after a migration run directly, not through pgopt).
#[tokio::test]
async fn a_fresh_parse_after_a_schema_change_made_directly_runs() {
    use pgopt_wire::frontend::FrontendMessage as F;
    let (_pg, proxy, admin) =
        on_one_connection("CREATE TABLE nc (id int PRIMARY KEY); INSERT INTO nc VALUES (1)").await;
    let a = connect(&proxy).await;
    let sql = "SELECT * FROM nc WHERE id = 1";
    let old = a.prepare(sql).await.unwrap();
    assert_eq!(a.query(&old, &[]).await.unwrap().len(), 1);
    admin
        .batch_execute("ALTER TABLE nc ADD COLUMN e int DEFAULT 5")
        .await
        .unwrap();
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[parse("s1", sql), self::bind("s1"), EXECUTE, F::Sync])
        .await;
    assert_eq!(raw.until_ready().await, ["1", "2", "D2", "C", "Z"]);
}
