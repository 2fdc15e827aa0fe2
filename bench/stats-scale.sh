#!/usr/bin/env bash
# Usage statistics at Dittofeed's scale: pgbench TPS with 20,000 and with 100,000 active
# workspaces against 100, at the default settings (tenancy.max_workspaces = 50000,
# tenancy.stats_new_entry_limit = 1000). Each transaction sets a transaction-local context (a
# workspace drawn at random among K) and runs one primary-key select (pgbench -S's query).
#
# Two clusters, both with tenancy preloaded and the same data (ports $BENCH_PORT_STATS and
# $BENCH_PORT_PLAIN), take their workloads *at the same time*: one with K workspaces, the other
# with 100; the next round swaps them. Whatever else the shared machine does hits both members
# of a pair alike; the ratio reported is the median over rounds of TPS(K) / TPS(100) (goal >=
# 0.95; keep the round count even, so that each cluster runs K as often). Each cluster keeps its statistics table across rounds, as a server would.
#
# A second set of pairs lifts the new-entry limit (tenancy.stats_new_entry_limit = -1): every
# new workspace gets an entry at once, so with 100,000 active workspaces the table (50,000)
# fills and evicts continuously: what eviction itself costs.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-4}
work=$(mktemp -d)
A=(bench-stats "$BENCH_PORT_STATS")
B=(bench-plain "$BENCH_PORT_PLAIN")
trap 'rm -rf "$work"; scripts/cluster.sh stop ${A[0]} >/dev/null 2>&1 || true; scripts/cluster.sh stop ${B[0]} >/dev/null 2>&1 || true' EXIT

common=(--conf "max_parallel_workers_per_gather = 0" --conf "jit = off")
for c in "${A[*]}" "${B[*]}"; do
    set -- $c
    scripts/cluster.sh start "$1" "$2" --fresh "${common[@]}"
    psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d postgres -c "CREATE DATABASE bench_scale"
    "$PGBENCH" -q -i -s 10 -h 127.0.0.1 -p "$2" -U postgres bench_scale >/dev/null 2>&1
    psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d bench_scale -c "CREATE EXTENSION tenancy" -c "VACUUM ANALYZE" -c "CHECKPOINT"
done

script() { # workspaces: the pgbench script over that many workspaces
    cat <<EOT
\set ws random(1, $1)
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT set_config('tenancy.workspace_id', md5('scale-ws-' || :ws)::uuid::text, true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
EOT
}
for k in 100 20000 100000; do script $k >"$work/ws$k.sql"; done

run() { # port workspaces limit: TPS
    PGOPTIONS="-c tenancy.stats_new_entry_limit=$3" \
        "$PGBENCH" -n -h 127.0.0.1 -p "$1" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -M prepared \
        -f "$work/ws$2.sql" bench_scale 2>/dev/null | awk '/^tps = / {print $3}'
}
results="$work/results"
: >"$results"
# pair K LIMIT ROUND: K workspaces on one cluster, 100 on the other, at once
pair() {
    local big small
    if [ $(($3 % 2)) = 1 ]; then big=${A[1]} small=${B[1]}; else big=${B[1]} small=${A[1]}; fi
    run "$big" "$1" "$2" >"$work/big" &
    run "$small" 100 "$2" >"$work/small" &
    wait
    echo "$1 $2 $(cat "$work/big") $(cat "$work/small") $3" >>"$results"
}
for limit in 1000 -1; do pair 20000 "$limit" 0; done # warm-up, not reported
for r in $(seq 1 "$ROUNDS"); do
    for limit in 1000 -1; do
        for k in 20000 100000; do pair "$k" "$limit" "$r"; done
    done
    echo "   round $r/$ROUNDS done" >&2
done

med() { awk -v k="$1" -v l="$2" -v c="$3" '$1 == k && $2 == l && $5 > 0 {print $c}' "$results" | median; }
paired() { awk -v k="$1" -v l="$2" '$1 == k && $2 == l && $5 > 0 && $4 > 0 {printf "%.4f\n", $3 / $4}' "$results" | median; }
echo
echo "pgbench -M prepared, $CLIENTS clients per cluster, context set per transaction + one primary-key select;"
echo "median of $ROUNDS rounds of ${SECONDS_PER_RUN}s; ratio = median over rounds of TPS(K workspaces) / TPS(100), run at once (goal >= 0.95)"
printf '%-34s %12s %10s %10s %8s\n' "new-entry limit" workspaces "TPS(K)" "TPS(100)" ratio
for limit in 1000 -1; do
    label=$([ "$limit" = 1000 ] && echo "1000/min (default)" || echo "-1 (every workspace an entry)")
    for k in 20000 100000; do
        printf '%-34s %12s %10.1f %10.1f %8.3f\n' "$label" "$k" "$(med $k "$limit" 3)" "$(med $k "$limit" 4)" "$(paired $k "$limit")"
    done
done
echo
for c in "${A[*]}" "${B[*]}"; do
    set -- $c
    psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d bench_scale -P footer=off \
        -c "SELECT '$1' AS cluster, i.capacity, i.entries, i.evictions, i.refused_statements,
                   pg_size_pretty(i.shared_memory_bytes) AS shared_memory,
                   (SELECT sum(queries) FROM tenancy.workspace_stats) AS in_workspaces,
                   (SELECT sum(queries) FROM tenancy.workspace_stats_other) AS in_other
              FROM tenancy.stats_info i"
done
