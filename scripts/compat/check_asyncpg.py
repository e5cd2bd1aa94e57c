#!/usr/bin/env python3
"""Client compatibility check for pgopt with asyncpg (its own protocol code, no libpq).

The same interface as check.py: the same flags and environment variables, and one
line per check (`ok <name>`, `FAIL <name>: <reason>`, `skip <name>: <reason>`); exit
1 if any check failed. The checks carry check.py's names where they test the same
thing, plus what asyncpg does its own way:

    types       a statement with a type asyncpg does not know (an enum, a composite)
                makes it read pg_type, with `set_config('jit', 'off', false)` first
    pool_reset  asyncpg's pool resets a connection at each release with one query of
                several statements (`… UNLISTEN *; RESET ALL;`); a SET made before the
                release is gone after it, and the pool runs concurrent transactions
    cursor      a cursor read in steps inside a transaction

Tables and channels are named compat_apg_*_PID: runs can share a database.
"""

import asyncio
import os
import sys
import traceback

import asyncpg

import compat_args

RUN = os.getpid()
CHECK_TIMEOUT = 90.0


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


async def expect_sqlstate(coro, sqlstate, what):
    try:
        await coro
    except asyncpg.PostgresError as e:
        expect(e.sqlstate == sqlstate, f"{what}: expected SQLSTATE {sqlstate}, got {e.sqlstate} ({e})")
        return e
    raise CheckFailed(f"{what}: expected SQLSTATE {sqlstate}, but it succeeded")


class Checks:
    def __init__(self, args):
        self.args = args

    def params(self, **overrides):
        p = dict(
            host=self.args.host,
            port=self.args.port,
            database=self.args.db,
            user=self.args.user,
            password=self.args.password,
            ssl=False,
            timeout=10,
            server_settings={"application_name": "pgopt-compat-asyncpg"},
        )
        p.update(overrides)
        return p

    async def connect(self, **overrides):
        return await asyncpg.connect(**self.params(**overrides))

    def clients(self, want):
        """How many connections to hold at once: in session mode each holds a server
        connection, so no more than the proxy's pool has."""
        if self.args.mode == "session" and self.args.pool_size > 0:
            return min(want, self.args.pool_size)
        return want

    async def multi_statement(self):
        c = await self.connect()
        try:
            await c.execute(f"DROP TABLE IF EXISTS compat_apg_m_{RUN}; CREATE TABLE compat_apg_m_{RUN} (a int); INSERT INTO compat_apg_m_{RUN} VALUES (1), (2)")
            n = await c.fetchval(f"SELECT count(*) FROM compat_apg_m_{RUN}")
            expect(n == 2, f"count {n}")
            await expect_sqlstate(c.execute("SELECT 1; SELECT 1/0; SELECT 3"), "22012", "an error in the middle")
            expect(await c.fetchval("SELECT 4") == 4, "the connection is unusable after the error")
            await c.execute(f"DROP TABLE compat_apg_m_{RUN}")
        finally:
            await c.close()

    async def prepared(self):
        # asyncpg prepares every statement (named, cached per connection) and reuses it
        # across transactions, which in transaction mode land on any server connection.
        conns = [await self.connect() for _ in range(self.clients(3))]
        try:
            await conns[0].execute(f"DROP TABLE IF EXISTS compat_apg_p_{RUN}; CREATE TABLE compat_apg_p_{RUN} (id int PRIMARY KEY, v text, j jsonb, a int[])")
            rows = [(i, f"v{i}", f'{{"k": {i}}}', [i, i + 1]) for i in range(500)]
            await conns[0].executemany(f"INSERT INTO compat_apg_p_{RUN} VALUES ($1, $2, $3, $4)", rows)

            async def work(c, w):
                stmt = await c.prepare(f"SELECT v, a FROM compat_apg_p_{RUN} WHERE id = $1")
                for i in range(w, 500, 7):
                    async with c.transaction():
                        r = await stmt.fetchrow(i)
                    expect(r["v"] == f"v{i}" and list(r["a"]) == [i, i + 1], f"row {i}: {r!r}")
                    r = await c.fetchrow(f"SELECT count(*) AS n FROM compat_apg_p_{RUN} WHERE id <= $1", i)
                    expect(r["n"] == i + 1, f"count up to {i}: {r!r}")

            await asyncio.gather(*(work(c, w) for w, c in enumerate(conns)))
            await conns[0].execute(f"DROP TABLE compat_apg_p_{RUN}")
        finally:
            for c in conns:
                await c.close()

    async def types(self):
        c = await self.connect()
        try:
            mood, pair = f"compat_apg_mood_{RUN}", f"compat_apg_pair_{RUN}"
            await c.execute(f"DROP TYPE IF EXISTS {mood}, {pair}; CREATE TYPE {mood} AS ENUM ('sad', 'happy'); CREATE TYPE {pair} AS (a int, b text)")
            v = await c.fetchval(f"SELECT 'happy'::{mood}")
            expect(v == "happy", f"enum gave {v!r}")
            r = await c.fetchval(f"SELECT ROW(1, 'x')::{pair}")
            expect(tuple(r) == (1, "x"), f"composite gave {r!r}")
            arr = await c.fetchval(f"SELECT ARRAY['sad', 'happy']::{mood}[]")
            expect(list(arr) == ["sad", "happy"], f"enum array gave {arr!r}")
            # jit back as it was after the type lookup.
            jit = await c.fetchval("SHOW jit")
            expect(jit == "on", f"jit is {jit!r} after the type lookup")
            await c.execute(f"DROP TYPE {mood}, {pair}")
        finally:
            await c.close()

    async def pool_reset(self):
        size = self.clients(6)
        pool = await asyncpg.create_pool(**self.params(), min_size=min(2, size), max_size=size)
        try:
            async with pool.acquire() as c:
                await c.execute("SET work_mem = '7MB'")
                expect(await c.fetchval("SHOW work_mem") == "7MB", "the SET")
            for _ in range(6):
                async with pool.acquire() as c:
                    got = await c.fetchval("SHOW work_mem")
                    expect(got == "4MB", f"work_mem {got!r} after the release's RESET ALL")
            await pool.execute(f"DROP TABLE IF EXISTS compat_apg_r_{RUN}; CREATE TABLE compat_apg_r_{RUN} (id int PRIMARY KEY, v int)")
            await pool.executemany(f"INSERT INTO compat_apg_r_{RUN} VALUES ($1, 0)", [(i,) for i in range(40)])

            async def bump(i):
                async with pool.acquire() as c:
                    async with c.transaction():
                        await c.execute(f"UPDATE compat_apg_r_{RUN} SET v = v + 1 WHERE id = $1", i % 40)
                        return await c.fetchval(f"SELECT v FROM compat_apg_r_{RUN} WHERE id = $1", i % 40)

            await asyncio.gather(*(bump(i) for i in range(200)))
            total = await pool.fetchval(f"SELECT sum(v) FROM compat_apg_r_{RUN}")
            expect(total == 200, f"sum {total}")
            await pool.execute(f"DROP TABLE compat_apg_r_{RUN}")
        finally:
            await pool.close()

    async def schema_change(self):
        if self.args.mode == "session":
            return "skip", "session mode relays the client's own statements, as PostgreSQL would"
        c = await self.connect()
        table = f"compat_apg_s_{RUN}"
        try:
            await c.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (1)")
            for _ in range(2 * max(self.args.pool_size, 2)):
                r = await c.fetch(f"SELECT * FROM {table}")
                expect([tuple(x) for x in r] == [(1,)], f"before the change: {r!r}")
            await c.execute(f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 7")
            for i in range(2 * max(self.args.pool_size, 2)):
                r = await c.fetch(f"SELECT * FROM {table}")
                expect([tuple(x) for x in r] == [(1, 7)], f"run {i} after ALTER TABLE: {r!r}")
            await c.execute(f"DROP TABLE {table}")
        finally:
            await c.close()

    async def copy(self):
        import io
        c = await self.connect()
        table = f"compat_apg_c_{RUN}"
        try:
            await c.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, v text)")
            # asyncpg's copy_records_to_table sends COPY … FROM STDIN (FORMAT binary).
            res = await c.copy_records_to_table(table, records=[(i, f"r{i}") for i in range(5000)])
            expect(res == "COPY 5000", f"copy in: {res!r}")
            out = io.BytesIO()
            res = await c.copy_from_query(f"SELECT id, v FROM {table} ORDER BY id", output=out, format="csv")
            expect(res == "COPY 5000", f"copy out: {res!r}")
            lines = out.getvalue().decode().splitlines()
            expect(len(lines) == 5000 and lines[1] == "1,r1", f"copy out gave {len(lines)} lines")
            await c.execute(f"DROP TABLE {table}")
        finally:
            await c.close()

    async def cursor(self):
        c = await self.connect()
        try:
            async with c.transaction():
                n = 0
                async for r in c.cursor("SELECT g FROM generate_series(1, 3000) g", prefetch=100):
                    n += 1
                    expect(r["g"] == n, f"row {n} is {r['g']}")
                expect(n == 3000, f"{n} rows")
                cur = await c.cursor("SELECT g FROM generate_series(1, 1000) g")
                first = await cur.fetch(10)
                await cur.forward(100)
                nxt = await cur.fetchrow()
                expect(first[0]["g"] == 1 and nxt["g"] == 111, f"fetch/forward: {first[0]!r}, {nxt!r}")
        finally:
            await c.close()

    async def cancel(self):
        c = await self.connect()
        try:
            try:
                await c.fetchval("SELECT pg_sleep(30)", timeout=0.5)
                raise CheckFailed("pg_sleep(30) was not canceled")
            except asyncio.TimeoutError:
                pass
            expect(await c.fetchval("SELECT 5") == 5, "the connection is unusable after the cancel")
        finally:
            await c.close()

    async def tx_error(self):
        c = await self.connect()
        table = f"compat_apg_t_{RUN}"
        try:
            await c.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY)")
            try:
                async with c.transaction():
                    await c.execute(f"INSERT INTO {table} VALUES (1)")
                    await c.execute(f"INSERT INTO {table} VALUES (1)")
                raise CheckFailed("the duplicate key was accepted")
            except asyncpg.UniqueViolationError:
                pass
            n = await c.fetchval(f"SELECT count(*) FROM {table}")
            expect(n == 0, f"{n} rows after the rollback")
            await c.execute(f"DROP TABLE {table}")
        finally:
            await c.close()

    async def listen_notify(self):
        c = await self.connect()
        try:
            if self.args.mode != "session":
                # Refused by name, and the connection goes on.
                await expect_sqlstate(c.add_listener(f"compat_apg_{RUN}", lambda *a: None), "0A000", "LISTEN in transaction mode")
                expect(await c.fetchval("SELECT 6") == 6, "the connection is unusable after the refusal")
                return "ok", "transaction mode: refused with 0A000"
            got = asyncio.Queue()
            await c.add_listener(f"compat_apg_{RUN}", lambda _c, pid, ch, payload: got.put_nowait(payload))
            other = await self.connect()
            try:
                await other.execute(f"SELECT pg_notify('compat_apg_{RUN}', 'hello é')")
            finally:
                await other.close()
            payload = await asyncio.wait_for(got.get(), 10)
            expect(payload == "hello é", f"payload {payload!r}")
        finally:
            await c.close()

    async def auth(self):
        async with asyncpg.create_pool(**self.params(), min_size=1, max_size=1) as pool:
            user = await pool.fetchval("SELECT current_user")
            expect(user == self.args.user, f"logged in as {user!r}")
        if self.args.auth == "trust":
            return "ok", "trust: no password asked (wrong-password check skipped)"
        try:
            c = await self.connect(password=(self.args.password or "") + "-wrong")
            await c.close()
        except asyncpg.InvalidPasswordError:
            return None
        raise CheckFailed("a wrong password logged in")

    async def tls(self):
        if os.environ.get("PGOPT_COMPAT_TLS") != "1":
            return "skip", "needs a proxy with TLS configured; set PGOPT_COMPAT_TLS=1 to run it"
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = await self.connect(ssl=ctx)
        try:
            expect(c.get_server_pid() is not None, "no backend key")
            expect(await c.fetchval("SELECT 1") == 1, "SELECT 1 over TLS")
        finally:
            await c.close()


CHECKS = ["multi_statement", "prepared", "types", "pool_reset", "schema_change", "copy", "cursor", "cancel", "tx_error", "listen_notify", "auth", "tls"]


def describe(e):
    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, asyncpg.PostgresError):
        return f"{type(e).__name__} (SQLSTATE {e.sqlstate}): {str(e).strip()}"
    return f"{type(e).__name__}: {e}"


async def run_check(checks, name):
    try:
        value = await asyncio.wait_for(getattr(checks, name)(), CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        return "FAIL", f"no answer within {CHECK_TIMEOUT:.0f} s (hung)"
    except BaseException as e:  # noqa: BLE001 - every failure becomes a FAIL line
        if os.environ.get("PGOPT_COMPAT_VERBOSE"):
            sys.stderr.write(traceback.format_exc())
        return "FAIL", describe(e)
    return value or ("ok", None)


def parse_args(argv):
    return compat_args.parse_args(argv, CHECKS, "pgopt client compatibility check (asyncpg)")


async def main(argv):
    args = parse_args(argv)
    checks = Checks(args)
    print(f"# asyncpg {asyncpg.__version__} -> {args.host}:{args.port}/{args.db} as {args.user}, mode {args.mode}, auth {args.auth}", flush=True)
    failed = 0
    for name in args.checks:
        status, reason = await run_check(checks, name)
        failed += status == "FAIL"
        line = f"{status} {name}" + (f": {reason}" if reason else "")
        print(line.replace("\n", " | "), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
