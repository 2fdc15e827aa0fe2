'use strict';
// Driven by bench/caching.sh (see there). One round: 2% of the workspaces change one row of one
// of the three tables; then a cycle without a cache and a cycle with the reference client's
// cache (the order alternates per round); the database-side load of each cycle is measured
// alone (statistics reset before, backends ended after so that they flush their counters).
const { Client, Pool } = require('pg');
const { WorkspaceCache } = require('../examples/node/workspace-cache');

const env = process.env;
const db = env.BENCH_DB;
const app = env.BENCH_APP;
const rounds = Number(env.BENCH_ROUNDS || 6);
const nWorkspaces = Number(env.BENCH_WORKSPACES || 1000);
const CONCURRENCY = 2;

// Dittofeed's compute-properties reads (dittofeed-queries.md Q3, Q2, Q1), as the application
// role under the isolation policy, with the explicit workspace predicate Drizzle sends
const queries = {
  segments: 'SELECT * FROM "Segment" WHERE "workspaceId" = $1 AND status = \'Running\' ORDER BY id',
  userProperties: 'SELECT * FROM "UserProperty" WHERE "workspaceId" = $1 ORDER BY id',
  journeys: 'SELECT * FROM "Journey" WHERE "workspaceId" = $1 AND status = \'Running\' ORDER BY id',
};
const tableOf = { segments: '"Segment"', userProperties: '"UserProperty"', journeys: '"Journey"' };

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function eachWorkspace(workspaces, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < workspaces.length) {
        const ws = workspaces[next++];
        await fn(ws);
      }
    }),
  );
}

// a cycle without a cache: every workspace's three reads, in one request transaction each
async function plainCycle(pool, workspaces) {
  const out = new Map();
  await eachWorkspace(workspaces, async (ws) => {
    const c = await pool.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT tenancy.set_workspace($1)', [ws]);
      const r = {};
      for (const [k, q] of Object.entries(queries)) r[k] = (await c.query(q, [ws])).rows;
      await c.query('COMMIT');
      out.set(ws, r);
    } finally {
      c.release();
    }
  });
  return out;
}

async function cachedCycle(cache, workspaces) {
  const out = new Map();
  await eachWorkspace(workspaces, async (ws) => out.set(ws, await cache.get(ws)));
  return out;
}

// PostgreSQL 15 flushes a busy backend's table and database counters once it has been idle
// for PGSTAT_IDLE_INTERVAL (10 s): the rows read of a cycle are read after that
const FLUSH_MS = 10500;
const dbRead = async (admin) => {
  await admin.query('SELECT pg_stat_clear_snapshot()');
  const r = await admin.query(
    'SELECT tup_returned + tup_fetched AS read FROM pg_stat_database WHERE datname = current_database()',
  );
  return Number(r.rows[0].read);
};

async function measure(admin, appOid, body) {
  await new Promise((r) => setTimeout(r, FLUSH_MS));
  const before = await dbRead(admin);
  await admin.query('SELECT pg_stat_statements_reset()');
  const result = await body();
  const s = (await admin.query(
    `SELECT coalesce(sum(total_exec_time + total_plan_time), 0)::float8 AS ms, coalesce(sum(calls), 0)::bigint AS calls,
            coalesce(sum(rows), 0)::bigint AS rows, coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint AS blks
       FROM pg_stat_statements WHERE userid = $1 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [appOid],
  )).rows[0];
  await new Promise((r) => setTimeout(r, FLUSH_MS));
  const after = await dbRead(admin);
  return {
    result,
    ms: s.ms,
    calls: Number(s.calls),
    rows: Number(s.rows),
    blks: Number(s.blks),
    // our own statements in between read a few catalog rows: counted on both sides alike
    read: after - before,
  };
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function main() {
  const admin = new Client({ host: env.PGHOST, port: env.PGPORT, user: 'postgres', database: db });
  await admin.connect();
  const workspaces = (await admin.query(
    "SELECT id::text FROM \"Workspace\" WHERE status = 'Active' AND type = 'Root' ORDER BY name LIMIT $1",
    [nWorkspaces],
  )).rows.map((r) => r.id);
  const appOid = (await admin.query('SELECT oid FROM pg_roles WHERE rolname = $1', [app])).rows[0].oid;
  const tables = Object.fromEntries(
    Object.entries(queries).map(([k, q]) => [
      k,
      { table: tableOf[k], load: async (c, ws) => (await c.query(q, [ws])).rows },
    ]),
  );
  // one pool per side, kept across cycles as a worker keeps its connections
  const newPool = () => new Pool({ host: env.PGHOST, port: env.PGPORT, user: app, database: db, max: CONCURRENCY });
  const plainPool = newPool();
  const cache = new WorkspaceCache(newPool(), { tables });
  const runCached = () => cachedCycle(cache, workspaces);
  // the same client in notify mode: a hit asks the database nothing
  const notifyCache = new WorkspaceCache(newPool(), {
    tables,
    mode: 'notify',
    channel: env.BENCH_CHANNEL,
    listenConfig: { host: env.PGHOST, port: env.PGPORT, user: app, database: db },
  });
  await notifyCache.start();
  const runNotify = () => cachedCycle(notifyCache, workspaces);
  const runPlain = () => plainCycle(plainPool, workspaces);

  // warm-up: fill the cache (its cold cycle is reported, not compared)
  const cold = await measure(admin, appOid, runCached);
  await measure(admin, appOid, runNotify);
  const warmPlain = await measure(admin, appOid, runPlain);
  console.error(`-- cold cache cycle: ${cold.ms.toFixed(0)} ms in the database (an uncached one: ${warmPlain.ms.toFixed(0)} ms)`);

  const ratios = { ms: [], calls: [], rows: [], read: [], blks: [] };
  const sums = { plain: { ms: [], read: [] }, cached: { ms: [], read: [] } };
  let checks = 0;
  let stale = 0;
  let staleNotify = 0;
  const notifyRatio = [];
  const notifyCalls = [];
  let changed = 0;
  for (let r = 1; r <= rounds; r += 1) {
    // 2% of the workspaces change one row of one table
    const n = Math.max(1, Math.round(workspaces.length * 0.02));
    for (let i = 0; i < n; i += 1) {
      const ws = workspaces[Math.floor(Math.random() * workspaces.length)];
      const k = Object.keys(tableOf)[Math.floor(Math.random() * 3)];
      await admin.query(
        `UPDATE ${tableOf[k]} SET "updatedAt" = now(), name = name || '*'
          WHERE id = (SELECT id FROM ${tableOf[k]} WHERE "workspaceId" = $1 ORDER BY random() LIMIT 1)`,
        [ws],
      );
      changed += 1;
    }
    // the notifications of the changes are delivered (asynchronously) before the cycles
    await new Promise((res) => setTimeout(res, 300));
    const order = [
      ['plain', runPlain],
      ['cached', runCached],
      ['notify', runNotify],
    ];
    for (let i = 0; i < r % 3; i += 1) order.push(order.shift());
    const m = {};
    for (const [name, run] of order) m[name] = await measure(admin, appOid, run);
    const { plain, cached, notify } = m;
    for (const ws of workspaces) {
      for (const k of Object.keys(queries)) {
        checks += 2;
        if (!same(plain.result.get(ws)[k], cached.result.get(ws)[k])) stale += 1;
        if (!same(plain.result.get(ws)[k], notify.result.get(ws)[k])) staleNotify += 1;
      }
    }
    notifyRatio.push(notify.ms / plain.ms);
    notifyCalls.push(notify.calls / plain.calls);
    for (const m of Object.keys(ratios)) ratios[m].push(cached[m] / plain[m]);
    sums.plain.ms.push(plain.ms);
    sums.cached.ms.push(cached.ms);
    sums.plain.read.push(plain.read);
    sums.cached.read.push(cached.read);
    console.error(
      `   round ${r}/${rounds}: uncached ${plain.ms.toFixed(1)} ms, ${plain.calls} statements, ${plain.read} rows read; ` +
        `cached ${cached.ms.toFixed(1)} ms, ${cached.calls} statements, ${cached.read} rows read; ` +
        `notify ${notify.ms.toFixed(1)} ms, ${notify.calls} statements`,
    );
  }
  await admin.end();
  await plainPool.end();
  await cache.pool.end();
  await notifyCache.stop();
  await notifyCache.pool.end();
  const f = (x) => x.toFixed(3);
  console.log(`\ncompute-properties cycles over ${workspaces.length} workspaces (segments, user properties, journeys), 2% changing between cycles, ${rounds} rounds`);
  console.log(`${'database time per cycle, uncached (ms)'.padEnd(48)} ${median(sums.plain.ms).toFixed(1)}`);
  console.log(`${'database time per cycle, cached (ms)'.padEnd(48)} ${median(sums.cached.ms).toFixed(1)}`);
  console.log(`${'rows read per cycle, uncached'.padEnd(48)} ${median(sums.plain.read)}`);
  console.log(`${'rows read per cycle, cached'.padEnd(48)} ${median(sums.cached.read)}`);
  console.log(`${'ratio: database time (goal <= 0.3)'.padEnd(48)} ${f(median(ratios.ms))}`);
  console.log(`${'ratio: statements'.padEnd(48)} ${f(median(ratios.calls))}`);
  console.log(`${'ratio: rows returned'.padEnd(48)} ${f(median(ratios.rows))}`);
  console.log(`${'ratio: rows read'.padEnd(48)} ${f(median(ratios.read))}`);
  console.log(`${'notify mode: ratio database time'.padEnd(48)} ${f(median(notifyRatio))}`);
  console.log(`${'notify mode: ratio statements'.padEnd(48)} ${f(median(notifyCalls))}`);
  console.log(`${'stale reads (goal 0)'.padEnd(48)} ${stale + staleNotify} of ${checks} checks (stamp mode ${stale}, notify mode ${staleNotify}; ${changed} changes)`);
  if (stale + staleNotify > 0) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
