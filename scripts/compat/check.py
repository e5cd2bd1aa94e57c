#!/usr/bin/env python3
"""Client compatibility check for pgopt with psycopg 3 (libpq underneath).

Runs the same checks as check.js (node-postgres) against a PostgreSQL server or a
pgopt proxy in front of one, and prints one line per check:

    ok <name>
    FAIL <name>: <reason>
    skip <name>: <reason>

It exits 1 if any check failed, 2 on bad arguments. Connection details come from
the flags or the environment (flags win):

    --host      PGOPT_COMPAT_HOST       127.0.0.1
    --port      PGOPT_COMPAT_PORT       6432
    --db        PGOPT_COMPAT_DB         compat
    --user      PGOPT_COMPAT_USER       compat_app
    --password  PGOPT_COMPAT_PASSWORD   (none)
    --mode      PGOPT_COMPAT_MODE       transaction | session (the proxy's pool mode;
                                        LISTEN/NOTIFY runs only in session mode)
    --auth      PGOPT_COMPAT_AUTH       scram-sha-256 | md5 | trust (what the proxy asks)
    --pool-size PGOPT_COMPAT_POOL_SIZE  server connections per (db, user) behind the
                                        proxy; 0 = unknown, do not check
    --checks    PGOPT_COMPAT_CHECKS     comma-separated subset of the check names
    PGOPT_COMPAT_TLS=1                  also run the TLS check (sslmode=require)

The user needs to create tables in the database (it owns it, say). Tables and
channels are named compat_py_*_PID, so check.js and other runs can use the same
database at once.
"""

import os
import select
import sys
import threading
import time
import traceback

import psycopg
from psycopg import errors, pq

import compat_args

# Tables, channels and markers carry the process id: several runs can share a database.
RUN = os.getpid()
CHECK_TIMEOUT = 90.0  # seconds a single check may take before it is reported hung
CONNECT_TIMEOUT = 10


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def expect_sqlstate(fn, sqlstate, what):
    """Runs fn(); it must raise a psycopg error with this SQLSTATE."""
    try:
        fn()
    except psycopg.Error as e:
        expect(
            e.sqlstate == sqlstate,
            f"{what}: expected SQLSTATE {sqlstate}, got {e.sqlstate} ({e})",
        )
        return e
    raise CheckFailed(f"{what}: expected SQLSTATE {sqlstate}, but it succeeded")


class Checks:
    def __init__(self, args):
        self.args = args

    def connect(self, **overrides):
        params = dict(
            host=self.args.host,
            port=self.args.port,
            dbname=self.args.db,
            user=self.args.user,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="pgopt-compat-py",
            autocommit=True,
        )
        if self.args.password is not None:
            params["password"] = self.args.password
        params.update(overrides)
        return psycopg.connect(**params)

    # 1. Several statements in one simple-protocol Query message.
    def multi_statement(self):
        with self.connect() as conn:
            cur = conn.cursor()
            # No parameters: psycopg sends a simple Query, which may hold several statements.
            cur.execute("SELECT 1 AS a; SELECT 2 AS b, 'two' AS c")
            first = cur.fetchall()
            expect(first == [(1,)], f"first result: {first!r}")
            expect(cur.nextset(), "only one result set came back")
            second = cur.fetchall()
            expect(second == [(2, "two")], f"second result: {second!r}")
            expect(not cur.nextset(), "more than two result sets")
            # An error in the middle stops the rest; the connection goes on.
            expect_sqlstate(
                lambda: cur.execute("SELECT 1; SELECT 1/0; SELECT 3"),
                "22012",
                "SELECT 1; SELECT 1/0; SELECT 3",
            )
            cur.execute("SELECT 4")
            expect(cur.fetchone() == (4,), "the connection is unusable after the error")

    # 2. Named and unnamed extended-protocol statements over few server connections.
    def prepared(self):
        workers, rounds = 4, 40
        pids, errors_seen = set(), []
        lock = threading.Lock()

        def work(w):
            try:
                seen = self._prepared_worker(w, rounds)
                with lock:
                    pids.update(seen)
            except BaseException as e:  # noqa: BLE001 - reported below
                with lock:
                    errors_seen.append(f"worker {w}: {describe(e)}")

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expect(not errors_seen, "; ".join(errors_seen))
        if self.args.pool_size > 0:
            expect(
                len(pids) <= self.args.pool_size,
                f"{workers} clients used {len(pids)} server connections, pool size is "
                f"{self.args.pool_size}",
            )

    def _prepared_worker(self, w, rounds):
        pids = set()
        with self.connect() as conn:
            cur = conn.cursor()
            # Every client's first statement is named _pg3_0, with a text of its own.
            named = f"SELECT %s::int + 1 AS n, pg_backend_pid() AS pid /* worker {w} */"
            unnamed = "SELECT %s::int * 2 AS n, %s::text AS t, pg_backend_pid() AS pid"
            for i in range(rounds):
                # prepare=True: Parse with a name (_pg3_N), then Bind/Execute by name.
                cur.execute(named, (i,), prepare=True)
                n, pid = cur.fetchone()
                expect(n == i + 1, f"named statement: {i} + 1 gave {n}")
                pids.add(pid)
                # prepare=False: the unnamed statement, Parse/Bind/Execute each time.
                cur.execute(unnamed, (i, f"w{w}"), prepare=False)
                n, t, pid = cur.fetchone()
                expect((n, t) == (i * 2, f"w{w}"), f"unnamed statement gave {(n, t)!r}")
                pids.add(pid)
            # A Parse that fails, named and unnamed, then good statements on the same
            # connection: the new one, and the one prepared before the error.
            expect_sqlstate(
                lambda: cur.execute("SELEC %s::int", (1,), prepare=True),
                "42601",
                "named Parse of bad SQL",
            )
            expect_sqlstate(
                lambda: cur.execute("SELEC %s::int", (1,), prepare=False),
                "42601",
                "unnamed Parse of bad SQL",
            )
            expect_sqlstate(
                lambda: cur.execute("SELECT %s::int FROM no_such_table_py", (1,), prepare=True),
                "42P01",
                "named Parse of a missing table",
            )
            cur.execute("SELECT %s::int + 100 AS n", (w,), prepare=True)
            expect(cur.fetchone() == (w + 100,), "new named statement after a failed Parse")
            cur.execute(named, (41,), prepare=True)
            expect(cur.fetchone()[0] == 42, "earlier named statement after a failed Parse")
            cur.execute(unnamed, (5, "x"), prepare=False)
            expect(cur.fetchone()[:2] == (10, "x"), "unnamed statement after a failed Parse")
            # Inside one transaction the statements see one server connection.
            with conn.transaction():
                in_tx = set()
                for i in range(5):
                    cur.execute(named, (i,), prepare=True)
                    in_tx.add(cur.fetchone()[1])
                expect(len(in_tx) == 1, f"one transaction ran on {len(in_tx)} server connections")
            # Pipeline mode: statements sent before any result is read.
            with conn.pipeline():
                cursors = []
                for i in range(20):
                    c = conn.cursor()
                    c.execute(named if i % 2 else unnamed,
                              (i,) if i % 2 else (i, "p"), prepare=bool(i % 2))
                    cursors.append(c)
            for i, c in enumerate(cursors):
                row = c.fetchone()
                want = i + 1 if i % 2 else i * 2
                expect(row[0] == want, f"pipelined statement {i} gave {row!r}")
                pids.add(row[-1])
            # DEALLOCATE ALL from the client, then the same statements again.
            cur.execute("DEALLOCATE ALL")
            cur.execute(named, (7,), prepare=True)
            expect(cur.fetchone()[0] == 8, "after DEALLOCATE ALL")
        return pids

    # 2b. psycopg's statement cache evicting: it deallocates each statement it drops,
    # with a protocol Close (libpq >= 17) or the SQL `DEALLOCATE _pg3_N` (older libpq).
    def statement_cache(self):
        texts = [f"SELECT %s::int + {k} AS n /* cached {k} */" for k in range(5)]
        with self.connect() as conn:
            conn.prepared_max = 2
            cur = conn.cursor()
            for r in range(4):
                for k, text in enumerate(texts):
                    try:
                        cur.execute(text, (r,), prepare=True)
                    except psycopg.Error as e:
                        how = "a protocol Close" if pq.version() >= 170000 else "DEALLOCATE _pg3_N"
                        raise CheckFailed(
                            f"statement {k}, round {r}, psycopg evicting with {how}: {describe(e)}"
                        ) from e
                    n = cur.fetchone()[0]
                    expect(n == r + k, f"statement {k} with a 2-statement cache gave {n}, expected {r + k}")
        # The server connections behind the proxy still prepare these texts for others.
        with self.connect() as conn:
            cur = conn.cursor()
            for r in range(2 * max(self.args.pool_size, 2)):
                for k, text in enumerate(texts):
                    try:
                        cur.execute(text, (r,), prepare=True)
                    except psycopg.Error as e:
                        raise CheckFailed(f"a new client preparing statement {k}: {describe(e)}") from e
                    expect(cur.fetchone()[0] == r + k, f"a new client's statement {k}")

    # 2d. SQL DEALLOCATE sent in the extended protocol (as psycopg's execute sends it
    # with parameters or in pipeline mode, where its statement cache deallocates so with
    # libpq < 17): the named
    # statement is gone, and the name can be prepared again, as on PostgreSQL.
    def deallocate(self):
        def status(result):
            return pq.ExecStatus(result.status).name, result.error_field(pq.DiagnosticField.SQLSTATE)

        with self.connect() as conn:
            pg = conn.pgconn
            for target in ["compat_dealloc", "ALL"]:
                r = pg.prepare(b"compat_dealloc", b"SELECT 1")
                expect(status(r) == ("COMMAND_OK", None), f"PREPARE before DEALLOCATE {target}: {status(r)}")
                # (PQexecParams: psycopg's execute without parameters is a simple query.)
                sql = f"DEALLOCATE {target}"
                tag = b"DEALLOCATE ALL" if target == "ALL" else b"DEALLOCATE"
                r = pg.exec_params(sql.encode(), [])
                expect(
                    status(r) == ("COMMAND_OK", None) and r.command_status == tag,
                    f"{sql} (extended protocol): {status(r)} {r.error_message!r}",
                )
                r = pg.exec_prepared(b"compat_dealloc", [])
                expect(status(r)[1] == b"26000", f"after DEALLOCATE {target} the statement ran: {status(r)}")
                r = pg.prepare(b"compat_dealloc", b"SELECT 2")
                expect(status(r) == ("COMMAND_OK", None), f"prepared again after DEALLOCATE {target}: {status(r)}")
                r = pg.exec_prepared(b"compat_dealloc", [])
                expect(r.get_value(0, 0) == b"2", f"prepared again after DEALLOCATE {target}")
                conn.execute("DEALLOCATE ALL")
            # psycopg's cache evicting in pipeline mode.
            texts = [f"SELECT %s::int + {k} AS n /* piped {k} */" for k in range(5)]
            conn.prepared_max = 2
            for r in range(3):
                with conn.pipeline():
                    cursors = []
                    for k, text in enumerate(texts):
                        cur = conn.cursor()
                        cur.execute(text, (r,), prepare=True)
                        cursors.append(cur)
                for k, cur in enumerate(cursors):
                    n = cur.fetchone()[0]
                    expect(n == r + k, f"pipelined statement {k}, round {r}, gave {n}")

    # 2e. A client_encoding other than UTF8: psycopg encodes queries in it, and they go
    # through as sent, prepared or not, with a setting beyond ASCII carried along.
    def encoding(self):
        with self.connect(client_encoding="latin1") as conn:
            conn.execute("SET compat.word = 'ñandú'")
            for i in range(2 * max(self.args.pool_size, 2)):
                for prepare in (True, False):
                    row = conn.execute("SELECT ascii('é'), %s::text || 'é'", ("à",), prepare=prepare).fetchone()
                    expect(row == (233, "àé"), f"LATIN1 round {i}, prepare={prepare}: {row!r}")
                row = conn.execute("SELECT current_setting('compat.word')").fetchone()
                expect(row == ("ñandú",), f"LATIN1 setting, round {i}: {row!r}")

    # 2c. A schema change under a prepared statement: PostgreSQL alone answers
    # "cached plan must not change result type"; through pgopt psycopg (which asks for
    # the portal's description) gets the new columns on every server connection.
    def schema_change(self):
        if self.args.mode == "session":
            return "skip", "session mode relays the client's own statements, as PostgreSQL would"
        table = f"compat_schema_{os.getpid()}_{threading.get_ident() % 10000}"
        text = f"SELECT * FROM {table}"
        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int)")
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            try:
                for _ in range(2 * max(self.args.pool_size, 2)):
                    cur.execute(text, prepare=True)
                    expect(cur.fetchall() == [(1,)], "before the change")
                cur.execute(f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 7")
                for i in range(2 * max(self.args.pool_size, 2)):
                    try:
                        cur.execute(text, prepare=True)
                    except psycopg.Error as e:
                        raise CheckFailed(f"run {i} after ALTER TABLE: {describe(e)}") from e
                    rows = cur.fetchall()
                    expect(rows == [(1, 7)], f"run {i} after ALTER TABLE gave {rows!r}")
            finally:
                cur.execute(f"DROP TABLE IF EXISTS {table}")

    # 3. COPY FROM STDIN then COPY TO STDOUT.
    def copy(self):
        rows = 10_000
        # Text that COPY's text format must escape: tab, newline, backslash, non-ASCII.
        def note(i):
            return None if i % 1000 == 0 else f"row\t{i}\nline two \\ é €"

        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS compat_py_copy_{RUN}")
            cur.execute(f"CREATE TABLE compat_py_copy_{RUN} (id int PRIMARY KEY, name text, note text)")
            with cur.copy(f"COPY compat_py_copy_{RUN} (id, name, note) FROM STDIN") as cp:
                for i in range(rows):
                    cp.write_row((i, f"name {i}", note(i)))
            expect(cur.rowcount == rows, f"COPY FROM STDIN reported {cur.rowcount} rows")
            cur.execute(f"SELECT count(*), count(note) FROM compat_py_copy_{RUN}")
            counts = cur.fetchone()
            expect(counts == (rows, rows - rows // 1000), f"count(*), count(note): {counts}")
            got = 0
            with cur.copy(f"COPY (SELECT id, name, note FROM compat_py_copy_{RUN} ORDER BY id) TO STDOUT") as cp:
                cp.set_types(["int4", "text", "text"])
                for i, row in enumerate(cp.rows()):
                    expect(row == (i, f"name {i}", note(i)), f"COPY TO STDOUT row {i}: {row!r}")
                    got += 1
            expect(got == rows, f"COPY TO STDOUT gave {got} rows, expected {rows}")
            # A bad row ends the COPY with an error; a client-side abort sends CopyFail.
            def bad_copy():
                with cur.copy(f"COPY compat_py_copy_{RUN} (id, name) FROM STDIN") as cp:
                    cp.write(b"100000\tok\nnot-a-number\tbad\n")
            expect_sqlstate(bad_copy, "22P02", "COPY FROM STDIN with a bad row")

            def aborted_copy():
                with cur.copy(f"COPY compat_py_copy_{RUN} (id, name) FROM STDIN") as cp:
                    cp.write_row((100001, "never"))
                    raise RuntimeError("client gives up")
            try:
                aborted_copy()
                raise CheckFailed("aborted COPY did not raise")
            except RuntimeError:
                pass  # psycopg sent CopyFail and swallowed the server's 57014
            cur.execute(f"SELECT count(*) FROM compat_py_copy_{RUN}")
            expect(cur.fetchone() == (rows,), "a failed COPY left rows behind")
            cur.execute(f"DROP TABLE compat_py_copy_{RUN}")

    # 4. Cancel a running query with the driver's cancel API.
    def cancel(self):
        for api in ("cancel_safe", "cancel"):
            self._cancel_with(api)

    def _cancel_with(self, api):
        marker = f"compat-cancel-py-{RUN}-{api}"
        with self.connect() as conn, self.connect() as monitor:
            outcome = {}

            def run():
                start = time.monotonic()
                try:
                    conn.execute(f"SELECT pg_sleep(30) /* {marker} */")
                    outcome["error"] = None
                except psycopg.Error as e:
                    outcome["error"] = e
                outcome["seconds"] = time.monotonic() - start

            t = threading.Thread(target=run)
            t.start()
            # Cancel once the server shows the query running, not after a fixed delay.
            deadline = time.monotonic() + 10
            while True:
                running = monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND pid <> pg_backend_pid() AND query LIKE %s",
                    (f"%{marker}%",),
                ).fetchone()[0]
                if running:
                    break
                expect(time.monotonic() < deadline, f"{api}: pg_sleep never showed as running")
                time.sleep(0.05)
            sent = time.monotonic()
            getattr(conn, api)()
            t.join(35)
            expect(not t.is_alive(), f"{api}: the query still runs 35 s after the cancel")
            err = outcome["error"]
            expect(err is not None, f"{api}: pg_sleep(30) finished without an error")
            expect(err.sqlstate == "57014", f"{api}: expected SQLSTATE 57014, got {err.sqlstate} ({err})")
            waited = time.monotonic() - sent
            expect(waited < 5, f"{api}: the query ended {waited:.1f} s after the cancel")
            row = conn.execute("SELECT 'alive'").fetchone()
            expect(row == ("alive",), f"{api}: connection after the cancel gave {row!r}")

    # 5. An error in the middle of a transaction, ROLLBACK, nothing left behind.
    def tx_error(self):
        with self.connect() as conn, self.connect() as other:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS compat_py_tx_{RUN}")
            cur.execute(f"CREATE TABLE compat_py_tx_{RUN} (id int PRIMARY KEY, v text)")
            cur.execute("BEGIN")
            cur.execute(f"INSERT INTO compat_py_tx_{RUN} VALUES (1, 'simple')")
            cur.execute(f"INSERT INTO compat_py_tx_{RUN} VALUES (%s, %s)", (2, "extended"))
            expect_sqlstate(
                lambda: cur.execute(f"INSERT INTO compat_py_tx_{RUN} VALUES (%s, %s)", (1, "dup")),
                "23505",
                "duplicate key inside the transaction",
            )
            expect(
                conn.info.transaction_status == pq.TransactionStatus.INERROR,
                f"transaction status after the error: {conn.info.transaction_status.name}",
            )
            expect_sqlstate(lambda: cur.execute("SELECT 1"), "25P02", "statement in a failed transaction")
            cur.execute("ROLLBACK")
            expect(
                conn.info.transaction_status == pq.TransactionStatus.IDLE,
                f"transaction status after ROLLBACK: {conn.info.transaction_status.name}",
            )
            cur.execute(f"SELECT count(*) FROM compat_py_tx_{RUN}")
            expect(cur.fetchone() == (0,), "the rolled-back rows are visible")
            row = other.execute(f"SELECT count(*) FROM compat_py_tx_{RUN}").fetchone()
            expect(row == (0,), "another connection sees the rolled-back rows")
            # The same with the driver's own transaction block and a simple-protocol error.
            try:
                with conn.transaction():
                    cur.execute(f"INSERT INTO compat_py_tx_{RUN} VALUES (3, 'gone')")
                    cur.execute("SELECT 1/0")
                raise CheckFailed("1/0 inside a transaction did not fail")
            except errors.DivisionByZero:
                pass
            with conn.transaction():
                cur.execute(f"INSERT INTO compat_py_tx_{RUN} VALUES (%s, %s)", (4, "kept"))
            rows = other.execute(f"SELECT id FROM compat_py_tx_{RUN} ORDER BY id").fetchall()
            expect(rows == [(4,)], f"after the second rollback and a commit: {rows!r}")
            cur.execute(f"DROP TABLE compat_py_tx_{RUN}")

    # 6. LISTEN on one connection, NOTIFY with a payload on another.
    def listen_notify(self):
        if self.args.mode != "session":
            return "skip", "needs session pool mode (transaction mode does not carry LISTEN)"
        payload = "hello from psycopg: é, 'quoted', \\"
        with self.connect() as listener, self.connect() as notifier:
            listener.execute(f"LISTEN compat_py_channel_{RUN}")
            notifier_pid = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
            notifier.execute(f"SELECT pg_notify('compat_py_channel_{RUN}', %s)", (payload,))
            got = list(listener.notifies(timeout=10, stop_after=1))
            expect(len(got) == 1, "no notification within 10 s")
            n = got[0]
            expect(n.channel == f"compat_py_channel_{RUN}", f"channel {n.channel!r}")
            expect(n.payload == payload, f"payload {n.payload!r}")
            expect(n.pid == notifier_pid, f"sender pid {n.pid}, notifier's backend is {notifier_pid}")
            # A NOTIFY inside a transaction arrives at COMMIT.
            with notifier.transaction():
                notifier.execute(f"NOTIFY compat_py_channel_{RUN}, 'second'")
            got = list(listener.notifies(timeout=10, stop_after=1))
            expect([x.payload for x in got] == ["second"], f"second notification: {got!r}")
            listener.execute("UNLISTEN *")

    # 7. Password login with the method the proxy asks for; a wrong password fails.
    def auth(self):
        auth = self.args.auth
        # libpq >= 16 refuses any other method than require_auth names.
        require = {"scram-sha-256": "scram-sha-256", "md5": "md5", "trust": "none"}[auth]
        note = None
        if pq.version() >= 160000:
            overrides = dict(require_auth=require)
        else:
            overrides = {}
            note = f"libpq {pq.version()} cannot require the method (require_auth is 16+)"
        with self.connect(**overrides) as conn:
            user = conn.execute("SELECT current_user").fetchone()[0]
            expect(user == self.args.user, f"logged in as {user!r}")
        if auth == "trust":
            return "ok", "trust: no password asked (wrong-password check skipped)"
        for who, overrides in (
            ("wrong password", dict(password=(self.args.password or "") + "-wrong")),
            ("unknown user", dict(user="compat_no_such_user", password="whatever")),
        ):
            try:
                self.connect(**overrides).close()
            except psycopg.OperationalError as e:
                # libpq keeps only the text of an error at log-in, not its SQLSTATE;
                # this text is PostgreSQL's (and pgopt's) message for SQLSTATE 28P01.
                expect(
                    "password authentication failed" in str(e),
                    f"{who}: expected 28P01 'password authentication failed', got: {e}",
                )
                continue
            raise CheckFailed(f"{who}: the log-in succeeded")
        return ("ok", note) if note else None

    # 8. TLS between the client and the proxy.
    def tls(self):
        if os.environ.get("PGOPT_COMPAT_TLS") != "1":
            return "skip", "needs a proxy with TLS configured; set PGOPT_COMPAT_TLS=1 to run it"
        # With SCRAM, bound to the TLS channel (SCRAM-SHA-256-PLUS), as libpq insists.
        binding = dict(channel_binding="require") if self.args.auth == "scram-sha-256" else {}
        with self.connect(sslmode="require", **binding) as conn:
            expect(conn.pgconn.ssl_in_use, "sslmode=require connected without TLS")
            row = conn.execute("SELECT 1").fetchone()
            expect(row == (1,), f"SELECT 1 over TLS gave {row!r}")


CHECKS = ["multi_statement", "prepared", "statement_cache", "deallocate", "encoding", "schema_change", "copy", "cancel", "tx_error", "listen_notify", "auth", "tls"]


def describe(e):
    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, psycopg.Error) and e.sqlstate:
        return f"{type(e).__name__} (SQLSTATE {e.sqlstate}): {str(e).strip()}"
    return f"{type(e).__name__}: {e}"


def run_check(checks, name):
    """Runs one check in a thread so a hang is reported, not waited on forever."""
    result = {}

    def target():
        try:
            result["value"] = getattr(checks, name)()
        except BaseException as e:  # noqa: BLE001 - every failure becomes a FAIL line
            result["error"] = e
            result["trace"] = traceback.format_exc()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(CHECK_TIMEOUT)
    if t.is_alive():
        return "FAIL", f"no answer within {CHECK_TIMEOUT:.0f} s (hung)"
    if "error" in result:
        if os.environ.get("PGOPT_COMPAT_VERBOSE"):
            sys.stderr.write(result["trace"])
        return "FAIL", describe(result["error"])
    value = result.get("value")
    if value is None:
        return "ok", None
    return value


def parse_args(argv):
    return compat_args.parse_args(argv, CHECKS, "pgopt client compatibility check (psycopg 3)")


def main(argv):
    args = parse_args(argv)
    checks = Checks(args)
    print(
        f"# psycopg {psycopg.__version__} (libpq {pq.version()}, {pq.__impl__}) -> "
        f"{args.host}:{args.port}/{args.db} as {args.user}, mode {args.mode}, auth {args.auth}",
        flush=True,
    )
    failed = 0
    for name in args.checks:
        status, reason = run_check(checks, name)
        if status == "FAIL":
            failed += 1
        line = f"{status} {name}" + (f": {reason}" if reason else "")
        print(line.replace("\n", " | "), flush=True)
    # Daemon threads of hung checks must not keep the process alive.
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
