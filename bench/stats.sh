#!/usr/bin/env bash
# Cost of the usage statistics: pgbench TPS with tenancy preloaded and tracking, against the
# same server without tenancy in shared_preload_libraries, in one run, 8 clients:
#  - select-only (pgbench -S) under a workspace context set for the connection;
#  - a workspace-scoped mixed workload: each transaction sets a transaction-local context
#    (one of 100 workspaces) and runs pgbench's TPC-B-like statements.
# Both servers (ports $BENCH_PORT and $BENCH_PORT_PLAIN) have identical settings but for the
# preload; the runs alternate between them; medians of rounds. Also reports the shared memory
# reserved for tenancy.max_workspaces = 10000.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-8}
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
work=$(mktemp -d)
trap 'rm -rf "$work"; scripts/cluster.sh stop bench-stats >/dev/null 2>&1 || true; scripts/cluster.sh stop bench-plain >/dev/null 2>&1 || true' EXIT

common=(--conf "max_parallel_workers_per_gather = 0" --conf "jit = off")
scripts/cluster.sh start bench-stats "$BENCH_PORT_STATS" --fresh "${common[@]}" --conf "tenancy.max_workspaces = 10000"
scripts/cluster.sh start bench-plain "$BENCH_PORT_PLAIN" --fresh --no-preload "${common[@]}"
for port in "$BENCH_PORT_STATS" "$BENCH_PORT_PLAIN"; do
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE bench_stats"
    "$PGBENCH" -q -i -s 10 -h 127.0.0.1 -p "$port" -U postgres bench_stats >/dev/null 2>&1
done
psql -X -q -h 127.0.0.1 -p "$BENCH_PORT_STATS" -U postgres -d bench_stats -c "CREATE EXTENSION tenancy"

cat >"$work/mixed.sql" <<'EOT'
\set ws random(1, 100)
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
SELECT set_config('tenancy.workspace_id', md5('bench-ws-' || :ws)::uuid::text, true);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
EOT

run() { # port kind clients
    local opts=()
    if [ "$2" = select ]; then
        opts=(-S)
    else
        opts=(-f "$work/mixed.sql")
    fi
    PGOPTIONS="-c tenancy.workspace_id=a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" \
        "$PGBENCH" -n -h 127.0.0.1 -p "$1" -U postgres -c "$3" -j "$3" -T "$SECONDS_PER_RUN" -M prepared "${opts[@]}" bench_stats 2>/dev/null \
        | awk '/^tps = / {print $3}'
}

results="$work/results"
: >"$results"
for kind in select mixed; do run "$BENCH_PORT_STATS" $kind 8 >/dev/null; run "$BENCH_PORT_PLAIN" $kind 8 >/dev/null; done # warm-up
# Alternate which server goes first in each round, and pause between runs, so that neither
# systematically inherits the other's background work (checkpointer, writer, CPU caches).
for r in $(seq 1 "$ROUNDS"); do
    for clients in 1 8; do
        for kind in select mixed; do
            if [ $((r % 2)) = 1 ]; then order=(tenancy plain); else order=(plain tenancy); fi
            for who in "${order[@]}"; do
                sleep 1
                port=$BENCH_PORT_STATS
                [ "$who" = plain ] && port=$BENCH_PORT_PLAIN
                echo "$kind-$clients $who $(run "$port" $kind $clients) $r" >>"$results"
            done
        done
    done
    echo "   round $r/$ROUNDS done" >&2
done
med() { awk -v k="$1" -v s="$2" '$1 == k && $2 == s {print $3}' "$results" | median; }
# The ratio of each round's back-to-back pair, then the median over rounds: slow drifts of the
# shared machine cancel out within a pair.
paired() {
    awk -v k="$1" '$1 == k {t[$4, $2] = $3; r[$4] = 1}
        END {for (i in r) if (t[i, "plain"] > 0 && t[i, "tenancy"] > 0) printf "%.4f\n", t[i, "tenancy"] / t[i, "plain"]}' "$results" | median
}
echo
echo "pgbench, median TPS of $ROUNDS runs of ${SECONDS_PER_RUN}s; ratio = median over rounds of tracking / not preloaded, run back to back (goal >= 0.97 with 8 clients)"
printf '%-40s %8s %14s %12s %8s\n' workload clients "not preloaded" "tracking" ratio
for clients in 1 8; do
    for kind in select mixed; do
        p=$(med $kind-$clients plain); t=$(med $kind-$clients tenancy)
        label=$([ $kind = select ] && echo "select-only (-S), one workspace" || echo "mixed TPC-B-like, 100 workspaces")
        printf '%-40s %8s %14.1f %12.1f %8.3f\n' "$label" "$clients" "$p" "$t" "$(paired $kind-$clients)"
    done
done
echo
psql -X -q -h 127.0.0.1 -p "$BENCH_PORT_STATS" -U postgres -d bench_stats -P footer=off \
    -c "SELECT capacity, shared_memory_bytes, pg_size_pretty(shared_memory_bytes) AS shared_memory, bytes_per_entry, entries FROM tenancy.stats_info"
psql -X -q -h 127.0.0.1 -p "$BENCH_PORT_STATS" -U postgres -d bench_stats -P footer=off \
    -c "SELECT count(*) AS workspaces_tracked, sum(queries) AS queries, sum(nested_queries) AS nested, round(sum(exec_time_ms)) AS exec_ms FROM tenancy.workspace_stats"
