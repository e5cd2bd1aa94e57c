//! Real servers: start, use, stop, and leave nothing behind.

use std::time::{Duration, Instant};

use pgopt_embedded::{Error, HostAuth, Postgres, Redis};

fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test]
async fn postgres_starts_answers_and_stops_on_drop() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.connect("postgres").await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('fsync'), current_setting('port')::int",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
    assert_eq!(row.get::<_, i32>(1), pg.port() as i32);
    let libs: String = client
        .query_one("SHOW shared_preload_libraries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(libs.contains("pg_stat_statements"), "{libs}");

    let pid = pg.pid().unwrap();
    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    drop(client);
    drop(pg);
    assert!(!process_exists(pid), "postmaster {pid} still running");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn panicking_test_leaves_no_orphan_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let pg = Postgres::builder().start_blocking().unwrap();
        tx.send((pg.pid().unwrap(), pg.data_dir().to_path_buf()))
            .unwrap();
        panic!("a test failing while it holds a server");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (pid, dir) = rx.recv().unwrap();
    assert!(!process_exists(pid), "postmaster {pid} outlived the panic");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn many_servers_in_parallel_get_distinct_ports() {
    let (a, b, c) = tokio::join!(Postgres::start(), Postgres::start(), Postgres::start());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_ne!(a.port(), b.port());
    assert_ne!(b.port(), c.port());
    assert_ne!(a.data_dir(), c.data_dir());
    for pg in [&a, &b, &c] {
        pg.connect("postgres")
            .await
            .unwrap()
            .simple_query("SELECT 1")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn replica_streams_a_row_written_on_the_primary() {
    let primary = Postgres::start().await.unwrap();
    let db = primary.connect("postgres").await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int primary key, note text); INSERT INTO t VALUES (1, 'before')",
    )
    .await
    .unwrap();
    let replica = Postgres::start_replica(&primary).await.unwrap();
    assert_ne!(replica.port(), primary.port());
    let r = replica.connect("postgres").await.unwrap();
    let in_recovery: bool = r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "replica is not a standby");

    db.execute("INSERT INTO t VALUES (2, 'streamed')", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = r
            .query("SELECT note FROM t WHERE id = 2", &[])
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            assert_eq!(row.get::<_, String>(0), "streamed");
            break;
        }
        assert!(Instant::now() < deadline, "row never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let write = r.execute("INSERT INTO t VALUES (3, 'x')", &[]).await;
    assert!(write.is_err(), "a standby must refuse writes");
}

#[tokio::test]
async fn stopped_server_restarts_on_the_same_port_with_its_data() {
    let mut pg = Postgres::start().await.unwrap();
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    let port = pg.port();
    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.connect("postgres").await.is_err());
    pg.restart().unwrap();
    assert_eq!(pg.port(), port);
    let x: i32 = pg
        .connect("postgres")
        .await
        .unwrap()
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
}

#[tokio::test]
async fn a_port_clash_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Postgres::builder().port(port).start().await.unwrap_err();
    assert!(
        matches!(err, Error::PortInUse { port: p } if p == port),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&port.to_string()) && text.contains("already in use"),
        "{text}"
    );
}

#[tokio::test]
async fn create_database_gives_each_test_its_own() {
    let pg = Postgres::start().await.unwrap();
    let a = pg.create_database("test_a").await.unwrap();
    let name: String = a
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "test_a");
}

#[tokio::test]
async fn redis_starts_answers_and_stops_on_drop() {
    use std::io::{Read, Write};
    let redis = Redis::start().await.unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    conn.write_all(b"SET k v\r\nGET k\r\n").unwrap();
    let mut buf = [0u8; 12];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n$1\r\nv\r\n");
    let pid = redis.pid().unwrap();
    drop(conn);
    drop(redis);
    assert!(!process_exists(pid), "redis {pid} still running");
}

#[tokio::test]
async fn password_auth_stores_the_hash_the_method_needs() {
    for (auth, prefix) in [
        (HostAuth::Md5, "md5"),
        (HostAuth::ScramSha256, "SCRAM-SHA-256$"),
    ] {
        let pg = Postgres::builder()
            .password("s3cret", auth)
            .start()
            .await
            .unwrap();
        let client = pg.connect("postgres").await.unwrap();
        let stored: String = client
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with(prefix), "{auth:?}: {stored}");
        let mut wrong = pg.config("postgres");
        wrong.password("nope");
        let Err(err) = wrong.connect(tokio_postgres::NoTls).await else {
            panic!("a wrong password must fail");
        };
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("28P01"),
            "{auth:?}: {err}"
        );
    }
}
