'use strict';
// A per-workspace cache of tracked tables' rows (say, a workspace's segments, user properties
// and journeys), kept correct by tenancy's change stamps (docs/caching.md):
//
//   mode 'stamp'  (default): every get() asks the database one cheap question in the request's
//                 own transaction -- the tables' tenancy.change_stamp() -- and reloads only the
//                 tables whose stamp moved. Never serves data older than the last commit before
//                 the call.
//   mode 'notify': get() trusts the cache until a NOTIFY on tenancy.change_channel says the
//                 (table, workspace) changed; no query at all for a hit. Fresh within the
//                 notification's delivery delay; a lost listener connection empties the cache.
//
// Reads run as the application role under row-level security: each get() sets the workspace
// context with tenancy.set_workspace() first, so an entry only ever holds rows its own
// workspace may read. Works through pgbouncer in transaction mode (one transaction per get());
// the LISTEN connection of 'notify' mode must be a direct (or session-pooled) connection.

const { Client, escapeIdentifier } = require('pg');

class WorkspaceCache {
  /**
   * @param {import('pg').Pool} pool  connections of the application role
   * @param {object} options
   * @param {Object<string, {table: string, load: (client: import('pg').PoolClient, workspace: string) => Promise<any>}>} options.tables
   *        per key: a tracked table (e.g. '"Segment"') and how to read the current workspace's
   *        data from it (the context is set; row-level security applies)
   * @param {'stamp'|'notify'} [options.mode]
   * @param {string} [options.channel]  tenancy.change_channel, for 'notify'
   * @param {object} [options.listenConfig]  node-postgres client config of the LISTEN connection
   */
  constructor(pool, { tables, mode = 'stamp', channel, listenConfig } = {}) {
    const keys = Object.keys(tables || {});
    if (keys.length === 0 || keys.some((k) => !tables[k].table || typeof tables[k].load !== 'function')) {
      throw new TypeError('tables: { key: { table, load } } with at least one table');
    }
    if (mode !== 'stamp' && mode !== 'notify') throw new TypeError(`unknown mode ${mode}`);
    if (mode === 'notify' && !channel) throw new TypeError("mode 'notify' needs the channel");
    this.pool = pool;
    this.tables = tables;
    this.keys = keys;
    this.tableNames = keys.map((k) => tables[k].table);
    // SELECT tenancy.change_stamp($1), tenancy.change_stamp($2), ...: one statement
    this.stampsSql = `SELECT ${keys.map((_, i) => `tenancy.change_stamp($${i + 1}::regclass)`).join(', ')}`;
    this.mode = mode;
    this.channel = channel;
    this.listenConfig = listenConfig;
    this.entries = new Map(); // workspace -> { key -> { stamp, value } }
    this.generations = new Map(); // workspace -> notifications seen (notify mode)
    this.epoch = 0; // every workspace at once: TRUNCATE, a lost listener
    this.listening = false;
    this.stats = { hits: 0, loads: 0, notifications: 0 };
  }

  /** Start listening (notify mode). Call before the first get(). */
  async start() {
    if (this.mode !== 'notify') return;
    const { rows } = await this.pool.query(
      `SELECT t, format('%I.%I', n.nspname, c.relname) AS name
         FROM unnest($1::text[]) t
         JOIN pg_catalog.pg_class c ON c.oid = t::regclass
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`,
      [this.keys.map((k) => this.tables[k].table)],
    );
    // as the payload names them: schema.table, quoted as needed
    this.byName = new Map(rows.map((r) => [r.name, this.keys.find((k) => this.tables[k].table === r.t)]));
    this.listener = new Client(this.listenConfig);
    const lost = () => {
      this.listening = false;
      this.dropAll();
    };
    this.listener.on('error', lost);
    this.listener.on('end', lost);
    this.listener.on('notification', (msg) => this.onNotification(msg));
    await this.listener.connect();
    await this.listener.query(`LISTEN ${escapeIdentifier(this.channel)}`);
    this.listening = true;
  }

  async stop() {
    this.listening = false;
    if (this.listener) {
      this.listener.removeAllListeners('end');
      await this.listener.end();
      this.listener = undefined;
    }
  }

  onNotification(msg) {
    if (msg.channel !== this.channel) return;
    let payload;
    try {
      payload = JSON.parse(msg.payload);
    } catch {
      this.dropAll(); // not ours to read: be safe
      return;
    }
    const key = this.byName.get(payload.table);
    if (key === undefined) return;
    this.stats.notifications += 1;
    if (payload.workspace === null) {
      this.dropAll(); // TRUNCATE: every workspace
      return;
    }
    const entry = this.entries.get(payload.workspace);
    if (entry) delete entry[key];
    this.generations.set(payload.workspace, (this.generations.get(payload.workspace) || 0) + 1);
  }

  dropAll() {
    this.entries.clear();
    this.epoch += 1;
  }

  /** The workspace's data, { key: value } for every table, from the cache where still valid. */
  async get(workspace) {
    const cached = this.entries.get(workspace) || {};
    if (this.mode === 'notify' && this.listening && this.keys.every((k) => k in cached)) {
      this.stats.hits += 1;
      return Object.fromEntries(this.keys.map((k) => [k, cached[k].value]));
    }
    // notify mode: what a notification arriving during the load would drop must not be stored
    const generation = this.generations.get(workspace) || 0;
    const epoch = this.epoch;
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT tenancy.set_workspace($1)', [workspace]);
      // 1. the stamps, in one statement...
      const [stamps] = (
        await client.query({ text: this.stampsSql, values: this.tableNames, rowMode: 'array' })
      ).rows;
      const result = {};
      const fresh = {};
      let loaded = false;
      for (const [i, k] of this.keys.entries()) {
        const stamp = stamps[i]; // a bigint, as text
        if (cached[k] && cached[k].stamp === stamp) {
          result[k] = cached[k].value;
        } else {
          // 2. ...the data in later ones: at least as new as the stamp
          result[k] = await this.tables[k].load(client, workspace);
          fresh[k] = { stamp, value: result[k] };
          loaded = true;
        }
      }
      await client.query('COMMIT');
      if (loaded) this.stats.loads += 1;
      else this.stats.hits += 1;
      if ((this.generations.get(workspace) || 0) === generation && this.epoch === epoch) {
        this.entries.set(workspace, { ...(this.entries.get(workspace) || {}), ...fresh });
      }
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }
}

module.exports = { WorkspaceCache };
