#!/usr/bin/env node
// Client compatibility check for pgopt with node-postgres (`pg`, pure JavaScript).
//
// Runs the same checks as check.py (psycopg 3) against a PostgreSQL server or a pgopt
// proxy in front of one, and prints one line per check:
//
//     ok <name>
//     FAIL <name>: <reason>
//     skip <name>: <reason>
//
// It exits 1 if any check failed, 2 on bad arguments. Connection details come from the
// flags or the environment (flags win):
//
//     --host      PGOPT_COMPAT_HOST       127.0.0.1
//     --port      PGOPT_COMPAT_PORT       6432
//     --db        PGOPT_COMPAT_DB         compat
//     --user      PGOPT_COMPAT_USER       compat_app
//     --password  PGOPT_COMPAT_PASSWORD   (none)
//     --mode      PGOPT_COMPAT_MODE       transaction | session (the proxy's pool mode;
//                                         LISTEN/NOTIFY runs only in session mode)
//     --auth      PGOPT_COMPAT_AUTH       scram-sha-256 | md5 | trust (what the proxy asks)
//     --pool-size PGOPT_COMPAT_POOL_SIZE  server connections per (db, user) behind the
//                                         proxy; 0 = unknown, do not check
//     --checks    PGOPT_COMPAT_CHECKS     comma-separated subset of the check names
//     PGOPT_COMPAT_TLS=1                  also run the TLS check (sslmode=require)
//
// Tables and channels are named compat_js_*_PID, so check.py and other runs can use the
// same database at once.
'use strict'

const { Readable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

// Tables, channels and markers carry the process id: several runs can share a database.
const RUN = process.pid
const CHECK_TIMEOUT_MS = 90_000
const CONNECT_TIMEOUT_MS = 10_000
const CHECKS = ['multi_statement', 'prepared', 'statement_cache', 'schema_change', 'copy', 'cancel', 'tx_error', 'listen_notify', 'auth', 'tls']

class CheckFailed extends Error {}

function expect(condition, message) {
  if (!condition) throw new CheckFailed(message)
}

/** Awaits promise; it must reject with a server error of this SQLSTATE. */
async function expectSqlstate(promise, sqlstate, what) {
  try {
    await promise
  } catch (e) {
    expect(e.code === sqlstate, `${what}: expected SQLSTATE ${sqlstate}, got ${e.code} (${e.message})`)
    return e
  }
  throw new CheckFailed(`${what}: expected SQLSTATE ${sqlstate}, but it succeeded`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

class Checks {
  constructor(args) {
    this.args = args
  }

  config(overrides = {}) {
    return {
      host: this.args.host,
      port: this.args.port,
      database: this.args.db,
      user: this.args.user,
      password: this.args.password,
      application_name: 'pgopt-compat-js',
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      ...overrides,
    }
  }

  async connect(overrides = {}) {
    const client = new pg.Client(this.config(overrides))
    // A connection that dies between queries emits 'error'; the next query reports it.
    client.on('error', () => {})
    await client.connect()
    return client
  }

  /** Runs fn with n fresh clients and ends them whatever happens. */
  async withClients(n, fn, overrides = {}) {
    const clients = []
    try {
      for (let i = 0; i < n; i++) clients.push(await this.connect(overrides))
      return await fn(...clients)
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  }

  // 1. Several statements in one simple-protocol Query message.
  async multi_statement() {
    await this.withClients(1, async (client) => {
      // No values: pg sends a simple Query, and returns one result per statement.
      const results = await client.query("SELECT 1 AS a; SELECT 2 AS b, 'two' AS c")
      expect(Array.isArray(results) && results.length === 2, `expected 2 results, got ${JSON.stringify(results.rows ?? results.length)}`)
      expect(JSON.stringify(results[0].rows) === '[{"a":1}]', `first result ${JSON.stringify(results[0].rows)}`)
      expect(JSON.stringify(results[1].rows) === '[{"b":2,"c":"two"}]', `second result ${JSON.stringify(results[1].rows)}`)
      // An error in the middle stops the rest; the connection goes on.
      await expectSqlstate(client.query('SELECT 1; SELECT 1/0; SELECT 3'), '22012', 'SELECT 1; SELECT 1/0; SELECT 3')
      const after = await client.query('SELECT 4 AS n')
      expect(after.rows[0].n === 4, 'the connection is unusable after the error')
    })
  }

  // 2. Named and unnamed extended-protocol statements over few server connections.
  async prepared() {
    const workers = 4
    const rounds = 40
    const pids = new Set()
    const outcomes = await Promise.allSettled(
      Array.from({ length: workers }, (_, w) => this.preparedWorker(w, rounds, pids)),
    )
    const failures = outcomes
      .map((o, w) => (o.status === 'rejected' ? `worker ${w}: ${describe(o.reason)}` : null))
      .filter(Boolean)
    expect(failures.length === 0, failures.join('; '))
    // Pipeline mode: many queries sent before the first answer comes back.
    await this.withClients(
      1,
      async (client) => {
        const queries = Array.from({ length: 30 }, (_, i) =>
          i % 2
            ? client.query({ name: 'compat_js_pipe', text: 'SELECT $1::int + 1 AS n, pg_backend_pid() AS pid', values: [i] })
            : client.query('SELECT $1::int * 2 AS n, pg_backend_pid() AS pid', [i]),
        )
        const results = await Promise.all(queries)
        results.forEach((r, i) => {
          const want = i % 2 ? i + 1 : i * 2
          expect(r.rows[0].n === want, `pipelined query ${i} gave ${r.rows[0].n}, expected ${want}`)
          pids.add(r.rows[0].pid)
        })
      },
      { pipeline: true },
    )
    if (this.args.poolSize > 0) {
      expect(
        pids.size <= this.args.poolSize,
        `${workers} clients used ${pids.size} server connections, pool size is ${this.args.poolSize}`,
      )
    }
  }

  async preparedWorker(w, rounds, pids) {
    await this.withClients(1, async (client) => {
      const named = { name: 'compat_js_add', text: 'SELECT $1::int + 1 AS n, pg_backend_pid() AS pid' }
      const unnamed = 'SELECT $1::int * 2 AS n, $2::text AS t, pg_backend_pid() AS pid'
      for (let i = 0; i < rounds; i++) {
        // A `name`: Parse once with that name, then Bind/Execute by name.
        let r = await client.query({ ...named, values: [i] })
        expect(r.rows[0].n === i + 1, `named statement: ${i} + 1 gave ${r.rows[0].n}`)
        pids.add(r.rows[0].pid)
        // No name: the unnamed statement, Parse/Bind/Execute each time.
        r = await client.query(unnamed, [i, `w${w}`])
        expect(r.rows[0].n === i * 2 && r.rows[0].t === `w${w}`, `unnamed statement gave ${JSON.stringify(r.rows[0])}`)
        pids.add(r.rows[0].pid)
      }
      // A Parse that fails, named and unnamed, then good statements on the same
      // connection: a new one, and the one prepared before the error.
      await expectSqlstate(client.query({ name: 'compat_js_bad', text: 'SELEC $1::int', values: [1] }), '42601', 'named Parse of bad SQL')
      await expectSqlstate(client.query('SELEC $1::int', [1]), '42601', 'unnamed Parse of bad SQL')
      await expectSqlstate(
        client.query({ name: 'compat_js_missing', text: 'SELECT $1::int FROM no_such_table_js', values: [1] }),
        '42P01',
        'named Parse of a missing table',
      )
      let r = await client.query({ name: 'compat_js_new', text: 'SELECT $1::int + 100 AS n', values: [w] })
      expect(r.rows[0].n === w + 100, 'new named statement after a failed Parse')
      r = await client.query({ ...named, values: [41] })
      expect(r.rows[0].n === 42, 'earlier named statement after a failed Parse')
      r = await client.query(unnamed, [5, 'x'])
      expect(r.rows[0].n === 10 && r.rows[0].t === 'x', 'unnamed statement after a failed Parse')
      // Inside one transaction the statements see one server connection.
      await client.query('BEGIN')
      const inTx = new Set()
      for (let i = 0; i < 5; i++) inTx.add((await client.query({ ...named, values: [i] })).rows[0].pid)
      await client.query('COMMIT')
      expect(inTx.size === 1, `one transaction ran on ${inTx.size} server connections`)
    })
  }

  // 2b. psycopg's statement-cache eviction (check.py); node-postgres has no such cache.
  async statement_cache() {
    return ['skip', 'node-postgres keeps every named statement for the life of the connection']
  }

  // 2c. A schema change under a named statement: PostgreSQL alone answers "cached plan
  // must not change result type"; through pgopt node-postgres (which describes the
  // portal) gets the new columns on every server connection.
  async schema_change() {
    if (this.args.mode === 'session') {
      return ['skip', "session mode relays the client's own statements, as PostgreSQL would"]
    }
    const table = `compat_js_schema_${RUN}`
    const runs = 2 * Math.max(this.args.poolSize ?? 2, 2)
    await this.withClients(1, async (client) => {
      await client.query(`DROP TABLE IF EXISTS ${table}`)
      await client.query(`CREATE TABLE ${table} (a int)`)
      await client.query(`INSERT INTO ${table} VALUES (1)`)
      const named = { name: 'compat_js_schema', text: `SELECT * FROM ${table} WHERE a = $1`, values: [1] }
      try {
        for (let i = 0; i < runs; i++) {
          const r = await client.query(named)
          expect(JSON.stringify(r.rows) === '[{"a":1}]', `before the change: ${JSON.stringify(r.rows)}`)
        }
        await client.query(`ALTER TABLE ${table} ADD COLUMN b int DEFAULT 7`)
        for (let i = 0; i < runs; i++) {
          const r = await client.query(named)
          expect(JSON.stringify(r.rows) === '[{"a":1,"b":7}]', `run ${i} after ALTER TABLE: ${JSON.stringify(r.rows)}`)
        }
      } finally {
        await client.query(`DROP TABLE IF EXISTS ${table}`)
      }
    })
  }

  // 3. COPY FROM STDIN then COPY TO STDOUT (pg-copy-streams, text format).
  async copy() {
    const rows = 10_000
    // Text that COPY's text format must escape: tab, newline, backslash, non-ASCII.
    const note = (i) => (i % 1000 === 0 ? null : `row\t${i}\nline two \\ é €`)
    const escape = (v) => (v === null ? '\\N' : v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n'))
    const line = (i) => `${i}\t${escape(`name ${i}`)}\t${escape(note(i))}\n`
    await this.withClients(1, async (client) => {
      await client.query(`DROP TABLE IF EXISTS compat_js_copy_${RUN}`)
      await client.query(`CREATE TABLE compat_js_copy_${RUN} (id int PRIMARY KEY, name text, note text)`)
      const input = client.query(copyStreams.from(`COPY compat_js_copy_${RUN} (id, name, note) FROM STDIN`))
      await pipeline(
        Readable.from(
          (function* () {
            for (let i = 0; i < rows; i += 100) {
              let chunk = ''
              for (let j = i; j < i + 100; j++) chunk += line(j)
              yield Buffer.from(chunk)
            }
          })(),
        ),
        input,
      )
      expect(input.rowCount === rows, `COPY FROM STDIN reported ${input.rowCount} rows`)
      const counts = (await client.query(`SELECT count(*)::int AS n, count(note)::int AS notes FROM compat_js_copy_${RUN}`)).rows[0]
      expect(counts.n === rows && counts.notes === rows - rows / 1000, `count(*), count(note): ${JSON.stringify(counts)}`)
      const output = client.query(copyStreams.to(`COPY (SELECT id, name, note FROM compat_js_copy_${RUN} ORDER BY id) TO STDOUT`))
      const chunks = []
      for await (const chunk of output) chunks.push(chunk)
      const text = Buffer.concat(chunks).toString('utf8')
      const expected = Array.from({ length: rows }, (_, i) => line(i)).join('')
      if (text !== expected) {
        const got = text.split('\n')
        const want = expected.split('\n')
        const at = want.findIndex((l, i) => got[i] !== l)
        throw new CheckFailed(`COPY TO STDOUT: ${got.length - 1} lines; first difference at line ${at}: ${JSON.stringify(got[at])} vs ${JSON.stringify(want[at])}`)
      }
      // A bad row ends the COPY with an error; the connection goes on.
      const bad = client.query(copyStreams.from(`COPY compat_js_copy_${RUN} (id, name) FROM STDIN`))
      await expectSqlstate(pipeline(Readable.from([Buffer.from('100000\tok\nnot-a-number\tbad\n')]), bad), '22P02', 'COPY FROM STDIN with a bad row')
      // A client-side abort sends CopyFail; the server answers 57014.
      const aborted = client.query(copyStreams.from(`COPY compat_js_copy_${RUN} (id, name) FROM STDIN`))
      const failing = new Readable({
        read() {
          this.push(Buffer.from('100001\tnever\n'))
          this.destroy(new Error('client gives up'))
        },
      })
      await pipeline(failing, aborted).then(
        () => {
          throw new CheckFailed('aborted COPY did not fail')
        },
        () => {},
      )
      const n = (await client.query(`SELECT count(*)::int AS n FROM compat_js_copy_${RUN}`)).rows[0].n
      expect(n === rows, `a failed COPY left rows behind: ${n} rows`)
      await client.query(`DROP TABLE compat_js_copy_${RUN}`)
    })
  }

  // 4. Cancel a running query with the driver's cancel API (Client#cancel).
  async cancel() {
    const marker = `compat-cancel-js-${RUN}`
    await this.withClients(2, async (client, monitor) => {
      const query = new pg.Query(`SELECT pg_sleep(30) /* ${marker} */`)
      const done = new Promise((resolve) => {
        query.on('error', (e) => resolve({ error: e, at: Date.now() }))
        query.on('end', () => resolve({ error: null, at: Date.now() }))
      })
      client.query(query)
      // Cancel once the server shows the query running, not after a fixed delay.
      const deadline = Date.now() + 10_000
      for (;;) {
        const r = await monitor.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
          [`%${marker}%`],
        )
        if (r.rows[0].n > 0) break
        expect(Date.now() < deadline, 'pg_sleep never showed as running')
        await sleep(50)
      }
      const sent = Date.now()
      // node-postgres' cancel API: a second Client sends CancelRequest for the first.
      new pg.Client(this.config()).cancel(client, query)
      const timeout = sleep(35_000).then(() => ({ timeout: true }))
      const outcome = await Promise.race([done, timeout])
      expect(!outcome.timeout, 'the query still runs 35 s after the cancel')
      expect(outcome.error, 'pg_sleep(30) finished without an error')
      expect(outcome.error.code === '57014', `expected SQLSTATE 57014, got ${outcome.error.code} (${outcome.error.message})`)
      const waited = (outcome.at - sent) / 1000
      expect(waited < 5, `the query ended ${waited.toFixed(1)} s after the cancel`)
      const r = await client.query("SELECT 'alive' AS s")
      expect(r.rows[0].s === 'alive', 'connection after the cancel')
    })
  }

  // 5. An error in the middle of a transaction, ROLLBACK, nothing left behind.
  async tx_error() {
    await this.withClients(2, async (client, other) => {
      await client.query(`DROP TABLE IF EXISTS compat_js_tx_${RUN}`)
      await client.query(`CREATE TABLE compat_js_tx_${RUN} (id int PRIMARY KEY, v text)`)
      await client.query('BEGIN')
      await client.query(`INSERT INTO compat_js_tx_${RUN} VALUES (1, 'simple')`)
      await client.query(`INSERT INTO compat_js_tx_${RUN} VALUES ($1, $2)`, [2, 'extended'])
      await expectSqlstate(client.query(`INSERT INTO compat_js_tx_${RUN} VALUES ($1, $2)`, [1, 'dup']), '23505', 'duplicate key inside the transaction')
      await expectSqlstate(client.query('SELECT 1'), '25P02', 'statement in a failed transaction')
      await expectSqlstate(client.query('SELECT $1::int', [1]), '25P02', 'extended statement in a failed transaction')
      await client.query('ROLLBACK')
      let r = await client.query(`SELECT count(*)::int AS n FROM compat_js_tx_${RUN}`)
      expect(r.rows[0].n === 0, 'the rolled-back rows are visible')
      r = await other.query(`SELECT count(*)::int AS n FROM compat_js_tx_${RUN}`)
      expect(r.rows[0].n === 0, 'another connection sees the rolled-back rows')
      // Again with a simple-protocol error, then a transaction that commits.
      await client.query('BEGIN')
      await client.query(`INSERT INTO compat_js_tx_${RUN} VALUES (3, 'gone')`)
      await expectSqlstate(client.query('SELECT 1/0'), '22012', '1/0 inside a transaction')
      await client.query('ROLLBACK')
      await client.query('BEGIN')
      await client.query(`INSERT INTO compat_js_tx_${RUN} VALUES ($1, $2)`, [4, 'kept'])
      await client.query('COMMIT')
      r = await other.query(`SELECT id FROM compat_js_tx_${RUN} ORDER BY id`)
      expect(JSON.stringify(r.rows) === '[{"id":4}]', `after the second rollback and a commit: ${JSON.stringify(r.rows)}`)
      await client.query(`DROP TABLE compat_js_tx_${RUN}`)
    })
  }

  // 6. LISTEN on one connection, NOTIFY with a payload on another.
  async listen_notify() {
    if (this.args.mode !== 'session') {
      return ['skip', 'needs session pool mode (transaction mode does not carry LISTEN)']
    }
    const payload = "hello from node-postgres: é, 'quoted', \\"
    await this.withClients(2, async (listener, notifier) => {
      const received = []
      let wake = () => {}
      listener.on('notification', (msg) => {
        received.push(msg)
        wake()
      })
      const next = async (count) => {
        const deadline = Date.now() + 10_000
        while (received.length < count && Date.now() < deadline) {
          await Promise.race([new Promise((resolve) => (wake = resolve)), sleep(100)])
        }
        expect(received.length >= count, `no notification within 10 s (${received.length} so far)`)
        return received[count - 1]
      }
      await listener.query(`LISTEN compat_js_channel_${RUN}`)
      const notifierPid = (await notifier.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
      await notifier.query(`SELECT pg_notify('compat_js_channel_${RUN}', $1)`, [payload])
      const n = await next(1)
      expect(n.channel === `compat_js_channel_${RUN}`, `channel ${n.channel}`)
      expect(n.payload === payload, `payload ${JSON.stringify(n.payload)}`)
      expect(n.processId === notifierPid, `sender pid ${n.processId}, notifier's backend is ${notifierPid}`)
      // A NOTIFY inside a transaction arrives at COMMIT.
      await notifier.query('BEGIN')
      await notifier.query(`NOTIFY compat_js_channel_${RUN}, 'second'`)
      await notifier.query('COMMIT')
      const second = await next(2)
      expect(second.payload === 'second', `second notification ${JSON.stringify(second.payload)}`)
      expect(received.length === 2, `${received.length} notifications, expected 2`)
      await listener.query('UNLISTEN *')
    })
  }

  // 7. Password login with the method the proxy asks for; a wrong password fails.
  async auth() {
    const auth = this.args.auth
    const client = new pg.Client(this.config())
    client.on('error', () => {})
    // Which authentication request the server (the proxy) sent.
    const asked = []
    for (const event of ['authenticationCleartextPassword', 'authenticationMD5Password', 'authenticationSASL']) {
      client.connection.on(event, (msg) => asked.push(event === 'authenticationSASL' ? `SASL ${msg.mechanisms.join(',')}` : event))
    }
    await client.connect()
    try {
      const user = (await client.query('SELECT current_user AS u')).rows[0].u
      expect(user === this.args.user, `logged in as ${user}`)
    } finally {
      await client.end()
    }
    const want = {
      'scram-sha-256': ['SASL SCRAM-SHA-256'],
      md5: ['authenticationMD5Password'],
      trust: [],
    }[auth]
    expect(JSON.stringify(asked) === JSON.stringify(want), `auth ${auth}: the server asked for ${JSON.stringify(asked)}, expected ${JSON.stringify(want)}`)
    if (auth === 'trust') return ['ok', 'trust: no password asked (wrong-password check skipped)']
    for (const [who, overrides] of [
      ['wrong password', { password: `${this.args.password ?? ''}-wrong` }],
      ['unknown user', { user: 'compat_no_such_user', password: 'whatever' }],
    ]) {
      let client2
      try {
        client2 = await this.connect(overrides)
      } catch (e) {
        expect(e.code === '28P01', `${who}: expected SQLSTATE 28P01, got ${e.code} (${e.message})`)
        continue
      }
      await client2.end()
      throw new CheckFailed(`${who}: the log-in succeeded`)
    }
  }

  // 8. TLS between the client and the proxy.
  async tls() {
    if (process.env.PGOPT_COMPAT_TLS !== '1') {
      return ['skip', 'needs a proxy with TLS configured; set PGOPT_COMPAT_TLS=1 to run it']
    }
    // sslmode=require: encrypt, do not verify the certificate.
    await this.withClients(
      1,
      async (client) => {
        expect(client.connection.stream.encrypted === true, 'connected without TLS')
        const r = await client.query('SELECT 1 AS n')
        expect(r.rows[0].n === 1, 'SELECT 1 over TLS')
      },
      // With SCRAM, SCRAM-SHA-256-PLUS: bound to the TLS channel when offered.
      { ssl: { rejectUnauthorized: false }, enableChannelBinding: true },
    )
  }
}

function describe(e) {
  if (e instanceof CheckFailed) return e.message
  if (e && e.code) return `${e.constructor.name} (SQLSTATE ${e.code}): ${e.message}`
  return `${e && e.constructor ? e.constructor.name : 'error'}: ${e && e.message ? e.message : e}`
}

async function runCheck(checks, name) {
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(['FAIL', `no answer within ${CHECK_TIMEOUT_MS / 1000} s (hung)`]), CHECK_TIMEOUT_MS)
  })
  const run = checks[name]().then(
    (value) => value ?? ['ok', null],
    (e) => {
      if (process.env.PGOPT_COMPAT_VERBOSE) console.error(e)
      return ['FAIL', describe(e)]
    },
  )
  try {
    return await Promise.race([run, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function parseArgs(argv) {
  const env = process.env
  const args = {
    host: env.PGOPT_COMPAT_HOST ?? '127.0.0.1',
    port: env.PGOPT_COMPAT_PORT ?? '6432',
    db: env.PGOPT_COMPAT_DB ?? 'compat',
    user: env.PGOPT_COMPAT_USER ?? 'compat_app',
    password: env.PGOPT_COMPAT_PASSWORD,
    mode: env.PGOPT_COMPAT_MODE ?? 'transaction',
    auth: env.PGOPT_COMPAT_AUTH ?? 'scram-sha-256',
    poolSize: env.PGOPT_COMPAT_POOL_SIZE ?? '0',
    checks: env.PGOPT_COMPAT_CHECKS ?? CHECKS.join(','),
  }
  const flags = { '--host': 'host', '--port': 'port', '--db': 'db', '--user': 'user', '--password': 'password', '--mode': 'mode', '--auth': 'auth', '--pool-size': 'poolSize', '--checks': 'checks' }
  const usage = (msg) => {
    console.error(`check.js: ${msg}\nusage: node check.js [${Object.keys(flags).map((f) => `${f} VALUE`).join('] [')}]`)
    process.exit(2)
  }
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s)
    if (!(flag in flags)) usage(`unknown argument ${argv[i]}`)
    if (value === undefined) {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`)
      value = argv[++i]
    }
    args[flags[flag]] = value
  }
  args.port = Number(args.port)
  args.poolSize = Number(args.poolSize)
  if (!Number.isInteger(args.port)) usage('--port must be a number')
  if (!Number.isInteger(args.poolSize)) usage('--pool-size must be a number')
  if (!['transaction', 'session'].includes(args.mode)) usage(`--mode must be transaction or session, not ${args.mode}`)
  if (!['scram-sha-256', 'md5', 'trust'].includes(args.auth)) usage(`--auth must be scram-sha-256, md5 or trust, not ${args.auth}`)
  args.checks = args.checks.split(',').map((c) => c.trim()).filter(Boolean)
  const unknown = args.checks.filter((c) => !CHECKS.includes(c))
  if (unknown.length) usage(`unknown check(s) ${unknown.join(', ')}; known: ${CHECKS.join(', ')}`)
  return args
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const checks = new Checks(args)
  const version = require('pg/package.json').version
  console.log(`# node-postgres ${version} (node ${process.version}) -> ${args.host}:${args.port}/${args.db} as ${args.user}, mode ${args.mode}, auth ${args.auth}`)
  let failed = 0
  for (const name of args.checks) {
    const [status, reason] = await runCheck(checks, name)
    if (status === 'FAIL') failed++
    console.log(`${status} ${name}${reason ? `: ${String(reason).replace(/\n/g, ' | ')}` : ''}`)
  }
  // Connections of hung checks must not keep the process alive.
  process.exit(failed ? 1 : 0)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
