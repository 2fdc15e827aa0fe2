'use strict';
// The reference client against a real server: scripts/test.sh runs it with PGHOST/PGPORT of the
// live test cluster and TENANCY_TEST_TEMPLATE naming the Dittofeed fixture database. Each run
// clones the fixture into a database of its own, puts "Segment" under the isolation policy,
// tracks it for change stamps and connects as an application role (no superuser, no BYPASSRLS).

const test = require('node:test');
const assert = require('node:assert/strict');
const { Client, Pool } = require('pg');
const { WorkspaceCache } = require('../workspace-cache');

const template = process.env.TENANCY_TEST_TEMPLATE || 'tenancy_fixture';
const db = `node_example_${process.pid}`;
const app = 'node_example_app';
const channel = 'tenancy_changes';
const base = {
  host: process.env.PGHOST || '127.0.0.1',
  port: Number(process.env.PGPORT || 25442),
};
const admin = (database) => new Client({ ...base, user: 'postgres', database });

let pool;
let owner; // the migration role's connection (superuser here)
let A;
let B;

const loadSegments = async (client) =>
  (await client.query('SELECT id, name FROM "Segment" ORDER BY name')).rows;
const tables = { segments: { table: '"Segment"', load: loadSegments } };
// the segments alone
const segmentsOf = async (cache, ws) => (await cache.get(ws)).segments;

test.before(async () => {
  const c = admin('postgres');
  await c.connect();
  await c.query(`DROP DATABASE IF EXISTS ${db}`);
  for (let attempt = 0; ; attempt += 1) {
    try {
      await c.query(`CREATE DATABASE ${db} TEMPLATE ${template}`);
      break;
    } catch (e) {
      // another test is copying the template at this moment
      if (attempt > 50 || !/being accessed by other users/.test(e.message)) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await c.end();
  owner = admin(db);
  await owner.connect();
  await owner.query(`
    DO $$ BEGIN PERFORM tenancy.create_app_role('${app}');
    EXCEPTION WHEN duplicate_object THEN NULL; END $$;
    SELECT tenancy.enable_rls('"Segment"');
    SELECT tenancy.track_changes('"Segment"');
    SELECT tenancy.track_changes('"Workspace"', 'id');
    ALTER DATABASE ${db} SET tenancy.change_channel = '${channel}';`);
  // the channel applies to sessions started after ALTER DATABASE
  await owner.end();
  owner = admin(db);
  await owner.connect();
  A = (await owner.query("SELECT fixture.ws_id('root', 1)::text AS id")).rows[0].id;
  B = (await owner.query("SELECT fixture.ws_id('root', 2)::text AS id")).rows[0].id;
  pool = new Pool({ ...base, user: app, database: db, max: 4 });
});

test.after(async () => {
  await pool.end();
  await owner.end();
  const c = admin('postgres');
  await c.connect();
  await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  await c.end();
});

const addSegment = (ws, name) =>
  owner.query('INSERT INTO "Segment" ("workspaceId", name, definition) VALUES ($1, $2, \'{}\')', [
    ws,
    name,
  ]);

test('stamp mode: repeats come from the cache, a commit reloads, another workspace does not', async () => {
  const cache = new WorkspaceCache(pool, { tables });
  const first = await segmentsOf(cache, A);
  assert.ok(first.length > 0, 'the fixture gives every workspace segments');
  for (let i = 0; i < 5; i += 1) assert.deepEqual(await segmentsOf(cache, A), first);
  assert.equal(cache.stats.loads, 1);
  assert.equal(cache.stats.hits, 5);
  const b = await segmentsOf(cache, B);
  assert.ok(b.every((s) => !first.some((f) => f.id === s.id)), "B's rows are B's own");

  await addSegment(B, 'only in B');
  assert.deepEqual(await segmentsOf(cache, A), first, 'a change of B leaves A cached');
  assert.equal(cache.stats.loads, 2);
  const b2 = await segmentsOf(cache, B);
  assert.ok(b2.some((s) => s.name === 'only in B'), 'B reloaded');

  await addSegment(A, 'new in A');
  const a2 = await segmentsOf(cache, A);
  assert.equal(a2.length, first.length + 1, 'A reloaded at the next get()');
  // a rolled-back change moves nothing
  await owner.query('BEGIN');
  await addSegment(A, 'rolled back');
  await owner.query('ROLLBACK');
  const loads = cache.stats.loads;
  assert.deepEqual(await segmentsOf(cache, A), a2);
  assert.equal(cache.stats.loads, loads, 'no reload after a rollback');
  // bad input: a workspace that does not exist is refused by set_workspace (42704)
  await assert.rejects(segmentsOf(cache, '00000000-0000-0000-0000-00000000dead'), (e) => e.code === '42704');
});

test('stamp mode: never older than the last commit before the call, under a concurrent writer', async () => {
  const cache = new WorkspaceCache(pool, { tables });
  const writer = admin(db);
  await writer.connect();
  const start = (await segmentsOf(cache, A)).length;
  let committed = 0; // segments whose INSERT returned
  let running = true;
  const write = (async () => {
    for (let i = 0; running; i += 1) {
      await writer.query(
        'INSERT INTO "Segment" ("workspaceId", name, definition) VALUES ($1, $2, \'{}\')',
        [A, `race ${i}`],
      );
      committed += 1;
      if (i % 3 === 0) await new Promise((r) => setTimeout(r, Math.random() * 3));
    }
  })();
  let checks = 0;
  let stale = 0;
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    const before = committed;
    const rows = await segmentsOf(cache, A);
    checks += 1;
    if (rows.length < start + before) stale += 1;
  }
  running = false;
  await write;
  await writer.end();
  assert.ok(committed >= 50, `too few commits: ${committed}`);
  assert.ok(checks >= 200, `too few checks: ${checks}`);
  assert.equal(stale, 0, `${stale} stale reads of ${checks}`);
  assert.ok(cache.stats.hits > 0 && cache.stats.loads > 1, JSON.stringify(cache.stats));
});

test('notify mode: a hit asks nothing, a NOTIFY drops the entry', async () => {
  const cache = new WorkspaceCache(pool, {
    tables,
    mode: 'notify',
    channel,
    listenConfig: { ...base, user: app, database: db },
  });
  await cache.start();
  try {
    const first = await segmentsOf(cache, A);
    for (let i = 0; i < 20; i += 1) assert.deepEqual(await segmentsOf(cache, A), first);
    assert.equal(cache.stats.hits, 20);
    assert.equal(cache.stats.loads, 1);

    await addSegment(A, 'pushed');
    for (let i = 0; i < 100 && cache.entries.get(A)?.segments; i += 1) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(!cache.entries.get(A)?.segments, 'the NOTIFY dropped the entry');
    assert.ok((await segmentsOf(cache, A)).some((s) => s.name === 'pushed'), 'reloaded');
    // one notification per (table, workspace) per transaction, however many rows
    const seen = cache.stats.notifications;
    await owner.query('BEGIN');
    for (let i = 0; i < 10; i += 1) await addSegment(B, `batch ${i}`);
    await owner.query('COMMIT');
    for (let i = 0; i < 100 && cache.stats.notifications === seen; i += 1) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(cache.stats.notifications, seen + 1, 'coalesced');
    // TRUNCATE: every workspace
    await segmentsOf(cache, A);
    await owner.query('TRUNCATE "Segment" CASCADE');
    for (let i = 0; i < 100 && cache.entries.size > 0; i += 1) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(cache.entries.size, 0, 'TRUNCATE dropped every entry');
    assert.deepEqual(await segmentsOf(cache, A), []);
  } finally {
    await cache.stop();
  }
});
