#!/usr/bin/env bash
# What a 1 Hz Prometheus scrape costs the database: pgbench TPS of a cluster whose exporter
# (Debian's prometheus-postgres-exporter with monitoring/queries.yaml, as `make monitor` runs it)
# is scraped every second, against the same workload on a cluster nobody scrapes.
#
# Two clusters, both preloading tenancy with the same data (ports $BENCH_PORT_STATS and
# $BENCH_PORT_PLAIN) and 5,000 workspaces in their statistics tables (so workspace_metrics()
# ranks 5,000 entries at every scrape), take the same workload *at the same time*: each
# transaction sets a transaction-local context (one of the 5,000) and runs one primary-key
# select. One exporter per cluster runs throughout; only one of them is scraped (curl every
# second, as Prometheus with scrape_interval 1s), and the next round swaps which. Ratio = median
# over rounds of TPS(scraped) / TPS(not scraped) (goal >= 0.97: a scrape costs <= 3%). The
# exporter's own CPU is spent on the same machine as both clusters, so it weighs on both alike:
# the ratio is the cost to the scraped server (its queries), as on a separate monitoring host.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-4}
WORKSPACES=5000
EXPORTER_PORTS=(25473 25474)
work=$(mktemp -d)
A=(bench-stats "$BENCH_PORT_STATS")
B=(bench-plain "$BENCH_PORT_PLAIN")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
    scripts/cluster.sh stop "${A[0]}" >/dev/null 2>&1 || true
    scripts/cluster.sh stop "${B[0]}" >/dev/null 2>&1 || true
}
trap cleanup EXIT
command -v prometheus-postgres-exporter >/dev/null || { echo "prometheus-postgres-exporter is not installed (make setup)"; exit 1; }

cat >"$work/ws.sql" <<EOT
\set ws random(1, $WORKSPACES)
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT set_config('tenancy.workspace_id', md5('scrape-ws-' || :ws)::uuid::text, true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
EOT
common=(--conf "max_parallel_workers_per_gather = 0" --conf "jit = off")
i=0
for c in "${A[*]}" "${B[*]}"; do
    set -- $c
    scripts/cluster.sh start "$1" "$2" --fresh "${common[@]}"
    psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d postgres -c "CREATE DATABASE bench_scrape" -c "CREATE ROLE bench_exporter LOGIN IN ROLE pg_monitor"
    "$PGBENCH" -q -i -s 10 -h 127.0.0.1 -p "$2" -U postgres bench_scrape >/dev/null 2>&1
    psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d bench_scrape -c "CREATE EXTENSION tenancy" -c "VACUUM ANALYZE" -c "CHECKPOINT"
    # every workspace gets its entry (no new-entry limit while filling)
    PGOPTIONS="-c tenancy.stats_new_entry_limit=-1" "$PGBENCH" -n -h 127.0.0.1 -p "$2" -U postgres -c 2 -j 2 \
        -t $((WORKSPACES * 3)) -M prepared -f "$work/ws.sql" bench_scrape >/dev/null 2>&1
    DATA_SOURCE_NAME="host=127.0.0.1 port=$2 user=bench_exporter dbname=bench_scrape sslmode=disable" \
        prometheus-postgres-exporter --web.listen-address="127.0.0.1:${EXPORTER_PORTS[$i]}" \
        --extend.query-path="$PWD/monitoring/queries.yaml" --disable-settings-metrics >"$work/exporter$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
sleep 2
for p in "${EXPORTER_PORTS[@]}"; do
    curl -sf "http://127.0.0.1:$p/metrics" | grep -c '^tenancy_workspace_statements_total{' >"$work/series" \
        || { echo "the exporter on $p does not answer"; cat "$work"/exporter*.log; exit 1; }
done
echo "series of tenancy_workspace_statements_total per scrape: $(cat "$work/series"); entries: $(psql -X -At -h 127.0.0.1 -p "${A[1]}" -U postgres -d bench_scrape -c 'SELECT entries FROM tenancy.stats_info')"

run() { # port: TPS
    "$PGBENCH" -n -h 127.0.0.1 -p "$1" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -M prepared \
        -f "$work/ws.sql" bench_scrape 2>/dev/null | awk '/^tps = / {print $3}'
}
scrape_loop() { # exporter port: one scrape a second until killed; counts scrapes and their time
    while :; do
        local t0 t1
        t0=$(date +%s%N)
        curl -sf -o /dev/null "http://127.0.0.1:$1/metrics" && echo ok >>"$work/scrapes"
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000)) >>"$work/scrape_ms"
        sleep "$(awk -v d=$(((t1 - t0) / 1000000)) 'BEGIN {s = 1 - d / 1000; if (s < 0) s = 0; printf "%.3f", s}')"
    done
}
results="$work/results"
: >"$results" ; : >"$work/scrapes"; : >"$work/scrape_ms"
for r in $(seq 0 "$ROUNDS"); do # round 0: warm-up, not reported
    if [ $((r % 2)) = 1 ]; then s=0; else s=1; fi
    scraped=$([ $s = 0 ] && echo "${A[1]}" || echo "${B[1]}")
    quiet=$([ $s = 0 ] && echo "${B[1]}" || echo "${A[1]}")
    scrape_loop "${EXPORTER_PORTS[$s]}" &
    sp=$!
    run "$scraped" >"$work/s" &
    p1=$!
    run "$quiet" >"$work/q" &
    p2=$!
    wait "$p1" "$p2"
    kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    [ "$r" -gt 0 ] && echo "$(cat "$work/s") $(cat "$work/q") $r" >>"$results" && echo "   round $r/$ROUNDS done" >&2
done
echo
echo "pgbench -M prepared, $CLIENTS clients per cluster, context (one of $WORKSPACES) + one primary-key select; $ROUNDS rounds of ${SECONDS_PER_RUN}s"
printf '%-28s %10s\n' "TPS scraped at 1 Hz" "$(awk '{print $1}' "$results" | median)"
printf '%-28s %10s\n' "TPS not scraped" "$(awk '{print $2}' "$results" | median)"
printf '%-28s %10s  (goal >= 0.97)\n' "ratio (median of rounds)" "$(awk '$2 > 0 {printf "%.4f\n", $1 / $2}' "$results" | median)"
printf '%-28s %10s  (%s scrapes)\n' "scrape time, median ms" "$(median <"$work/scrape_ms")" "$(wc -l <"$work/scrapes")"
# the server's share of one scrape: the three tenancy queries of monitoring/queries.yaml, timed
# inside the server (EXPLAIN ANALYZE, median of 10), with the statistics table as the run left it
for q in "tenancy.workspace_metrics()" "tenancy.quota_metrics()" "tenancy.stats_info"; do
    for _ in $(seq 10); do
        psql -X -At -h 127.0.0.1 -p "${A[1]}" -U bench_exporter -d bench_scrape \
            -c "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON) SELECT * FROM $q" \
            | python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; print(p["Planning Time"] + p["Execution Time"])'
    done | median >"$work/ms"
    printf '%-28s %10.2f ms  (at 1 Hz: %.3f%% of one core)\n' "$q" "$(cat "$work/ms")" "$(awk -v m="$(cat "$work/ms")" 'BEGIN {print m / 10}')"
done
