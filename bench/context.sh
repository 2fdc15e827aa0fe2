#!/usr/bin/env bash
# Cost of the policy-shaped predicate "workspaceId" = <current workspace> over a 1M-row table
# with no index (so the predicate is evaluated for every row), for tenancy.current_workspace_id()
# and the common current_setting('app.workspace_id', true)::uuid, each bare and wrapped in
# (SELECT ...). Baseline: the same scan comparing with a literal uuid.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${BENCH_REPS:-15}
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_context" -c "CREATE DATABASE bench_context"
psql -d bench_context -f bench/lib.sql -c "CREATE EXTENSION tenancy" -c "
    CREATE TABLE bench_rows (\"workspaceId\" uuid NOT NULL, payload int NOT NULL);
    INSERT INTO bench_rows
    SELECT md5('tenancy-fixture/root/' || (i % 100))::uuid, i FROM generate_series(1, 1000000) i;" \
    -c "VACUUM (FREEZE, ANALYZE) bench_rows"
psql -d bench_context -P footer=off -c "
    SET tenancy.workspace_id = '$(psql -d bench_context -Atc "SELECT md5('tenancy-fixture/root/7')::uuid")';
    SET app.workspace_id = '$(psql -d bench_context -Atc "SELECT md5('tenancy-fixture/root/7')::uuid")';
    SELECT * FROM bench.compare(ARRAY[
        ['literal (baseline)',            'SELECT count(*) FROM bench_rows WHERE \"workspaceId\" = ''' || current_setting('app.workspace_id') || '''::uuid'],
        ['tenancy.current_workspace_id() bare',      'SELECT count(*) FROM bench_rows WHERE \"workspaceId\" = tenancy.current_workspace_id()'],
        ['tenancy.current_workspace_id() (SELECT)',  'SELECT count(*) FROM bench_rows WHERE \"workspaceId\" = (SELECT tenancy.current_workspace_id())'],
        ['current_setting()::uuid bare',             'SELECT count(*) FROM bench_rows WHERE \"workspaceId\" = current_setting(''app.workspace_id'', true)::uuid'],
        ['current_setting()::uuid (SELECT)',         'SELECT count(*) FROM bench_rows WHERE \"workspaceId\" = (SELECT current_setting(''app.workspace_id'', true)::uuid)']
    ], $REPS, 1000000);"
