#!/usr/bin/env bash
# `make demo`: a scratch PostgreSQL 15 cluster of its own with tenancy preloaded, a
# Dittofeed-shaped database with sample workspaces, and the extension at work.
# Idempotent: a second run restarts the cluster and rebuilds the demo database.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${TENANCY_DEMO_PORT:-25432}
DB=dittofeed
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
export TENANCY_RUN_DIR=$RUN_DIR

echo "== starting the demo cluster (port $PORT, data in $RUN_DIR/demo)"
scripts/cluster.sh start demo "$PORT"
psql() { command psql -X -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

echo "== loading a Dittofeed-shaped database \"$DB\" with sample workspaces"
psql -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -q -d "$DB" -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql
psql -d "$DB" -c "SELECT type, status, count(*) AS workspaces FROM fixture.generate(2, 3, 5, 20) GROUP BY 1, 2 ORDER BY 1, 2"

for part in scripts/demo/[0-9]*.sql; do
    echo
    psql -d "$DB" -v ON_ERROR_STOP=0 -f "$part"
done

cat <<EOT

== the demo cluster is running
  connect:  psql -h 127.0.0.1 -p $PORT -U postgres $DB
            (or as the application role, under row-level security:
             psql -h 127.0.0.1 -p $PORT -U dittofeed_app $DB)
  stop:     make demo-stop
  logs:     $RUN_DIR/demo/server.log
  monitor:  make monitor   (Prometheus, the exporter and the tenancy console page; docs/monitoring.md)
EOT
