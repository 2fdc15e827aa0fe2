#!/usr/bin/env bash
# Load that the stamp-validated cache takes off the database (issue 17): Dittofeed's
# compute-properties cycle over 1,000 workspaces -- each cycle reads every workspace's running
# segments, user properties and running journeys (its queries Q3, Q2, Q1) -- with 2% of the
# workspaces changing one row between cycles. The same cycles run without a cache and with the
# node-postgres reference client (examples/node/workspace-cache.js) in stamp mode and in notify
# mode (tenancy.change_channel), on one server, in rotating order; load = the database time of the application role's statements
# (pg_stat_statements: execution + planning), rows returned and rows read (pg_stat_database),
# per cycle. Every cached cycle's answers are compared with the uncached
# cycle's (same data): a difference is a stale read. Goal: load ratio <= 0.3, 0 stale reads.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PORT=${TENANCY_BENCH_CACHING_PORT:-25481}
ROUNDS=${BENCH_ROUNDS:-6}
WORKSPACES=${BENCH_WORKSPACES:-1000}
ROWS=${BENCH_ROWS:-10}
DB=bench_caching
APP=bench_caching_app
psql() { command psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
cleanup() { scripts/cluster.sh stop bench-caching >/dev/null 2>&1 || true; }
trap cleanup EXIT

command -v node >/dev/null || scripts/setup.sh >/dev/null
[ -d examples/node/node_modules/pg ] || (cd examples/node && npm ci --no-audit --no-fund >/dev/null)
scripts/cluster.sh start bench-caching "$PORT" --fresh --conf "max_parallel_workers_per_gather = 0" --conf "jit = off" \
    --conf "shared_preload_libraries = 'tenancy,pg_stat_statements'" --conf "pg_stat_statements.track_planning = on" >/dev/null
echo "-- building: $WORKSPACES workspaces, $ROWS rows per tenant table each (definitions of ~1 kB), isolation policies" >&2
psql -d postgres -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -c "CREATE EXTENSION pg_stat_statements" \
    -f fixture/dittofeed.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(0, 0, $WORKSPACES, $ROWS)" >/dev/null
psql -d $DB >/dev/null <<SQL
SET client_min_messages = warning;
-- definitions of about a kilobyte, as Dittofeed's segment, user property and journey trees are
UPDATE "Segment" SET definition = jsonb_build_object('entryNode', jsonb_build_object('type', 'And', 'children', (SELECT jsonb_agg('n' || g) FROM generate_series(1, 8) g)),
    'nodes', (SELECT jsonb_agg(jsonb_build_object('id', 'n' || g, 'type', 'Trait', 'path', 'traits.property_' || g, 'operator', jsonb_build_object('type', 'Equals', 'value', md5(id::text || g)))) FROM generate_series(1, 8) g));
UPDATE "UserProperty" SET definition = jsonb_build_object('type', 'Trait', 'path', 'traits.' || name,
    'nodes', (SELECT jsonb_agg(jsonb_build_object('id', 'p' || g, 'value', md5(id::text || g))) FROM generate_series(1, 8) g));
UPDATE "Journey" SET status = 'Running', definition = jsonb_build_object('entryNode', jsonb_build_object('type', 'SegmentEntryNode', 'segment', id),
    'nodes', (SELECT jsonb_agg(jsonb_build_object('id', 'm' || g, 'type', 'MessageNode', 'templateId', md5(id::text || g), 'child', 'm' || (g + 1))) FROM generate_series(1, 8) g))
 WHERE status <> 'Broadcast';
SELECT count(*) FROM tenancy.enable_rls_all();
SELECT tenancy.create_app_role('$APP');
SELECT tenancy.track_changes(t) FROM unnest(ARRAY['"Segment"', '"UserProperty"', '"Journey"']::regclass[]) t;
SELECT tenancy.track_changes('"Workspace"', 'id');
ALTER DATABASE $DB SET tenancy.change_channel = 'tenancy_changes';
SQL
psql -d $DB -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
PGHOST=127.0.0.1 PGPORT=$PORT BENCH_CHANNEL=tenancy_changes BENCH_DB=$DB BENCH_APP=$APP BENCH_ROUNDS=$ROUNDS BENCH_WORKSPACES=$WORKSPACES \
    NODE_PATH=examples/node/node_modules node bench/caching.js
