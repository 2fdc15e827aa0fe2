#!/usr/bin/env bash
# What change stamps cost a write: single-row INSERT transactions (autocommit) into a table
# tracked by tenancy.track_changes() and into the same table untracked, on the same server *at
# the same time* (two pgbench runs started together, so whatever else the machine does hits both
# alike); each round swaps which table is tracked. Ratio = median over rounds of TPS(tracked) /
# TPS(untracked) (goal >= 0.95). Workspaces: 1,000, one at random per insert.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-2}
DB=bench_stamps
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -c "
    CREATE TABLE seg_a (id bigserial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, name text NOT NULL);
    CREATE INDEX ON seg_a (\"workspaceId\");
    CREATE TABLE seg_b (LIKE seg_a INCLUDING ALL);"
for t in a b; do
    cat >"$work/ins_$t.sql" <<EOT
\set ws random(1, 1000)
INSERT INTO seg_$t ("workspaceId", name) VALUES (md5('stamps-ws-' || :ws)::uuid, 'segment');
EOT
done
run() { # table: TPS
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -c "$CLIENTS" -j 1 -T "$SECONDS_PER_RUN" -M prepared \
        -f "$work/ins_$1.sql" $DB 2>/dev/null | awk '/^tps = / {print $3}'
}
: >"$work/results"
for r in $(seq 0 "$ROUNDS"); do # round 0: warm-up
    if [ $((r % 2)) = 1 ]; then tracked=a untracked=b; else tracked=b untracked=a; fi
    psql -d $DB -c "SELECT tenancy.untrack_changes('seg_$untracked'), tenancy.track_changes('seg_$tracked')" >/dev/null
    run "$tracked" >"$work/t" &
    p1=$!
    run "$untracked" >"$work/u" &
    p2=$!
    wait "$p1" "$p2"
    [ "$r" -gt 0 ] && echo "$(cat "$work/t") $(cat "$work/u")" >>"$work/results" && echo "   round $r/$ROUNDS done" >&2
done
echo
echo "single-row INSERT transactions, $CLIENTS clients per table, $ROUNDS rounds of ${SECONDS_PER_RUN}s, both tables at once"
printf '%-30s %10s\n' "TPS tracked" "$(awk '{print $1}' "$work/results" | median)"
printf '%-30s %10s\n' "TPS untracked" "$(awk '{print $2}' "$work/results" | median)"
printf '%-30s %10s  (goal >= 0.95)\n' "ratio (median of rounds)" "$(awk '$2 > 0 {printf "%.4f\n", $1 / $2}' "$work/results" | median)"

# The same cost counted in instructions (callgrind, one backend in single-user mode, as
# bench/instructions.sh does): N single-row INSERT transactions into the tracked table against
# the untracked one; (long - short) / (LONG - SHORT) per transaction, so start-up cancels out.
if command -v valgrind >/dev/null; then
    SHORT=200 LONG=1200
    OUT=${TENANCY_RUN_DIR:-/tmp/tenancy-run}/bench-stamps
    rm -rf "$OUT" && mkdir -p "$OUT"
    psql -d $DB -c "SELECT tenancy.untrack_changes('seg_b'), tenancy.track_changes('seg_a')" >/dev/null
    for t in a b; do
        for n in $SHORT $LONG; do
            for ((i = 0; i < n; i++)); do
                echo "INSERT INTO seg_$t (\"workspaceId\", name) VALUES (md5('stamps-ws-$((i % 1000))')::uuid, 'segment');"
            done >"$OUT/$t.$n.sql"
        done
    done
    chown -R postgres:postgres "$OUT" 2>/dev/null || true
    data="$(scripts/cluster.sh dir bench)/data"
    scripts/cluster.sh stop bench
    count() { # file label
        runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$2" \
            "$PG_BIN/postgres" --single -D "$data" -c shared_preload_libraries=tenancy -c jit=off $DB \
            <"$1" >/dev/null 2>"$OUT/valgrind.$2.log"
        awk '/^(summary|totals):/ {print $2; exit}' "$OUT/callgrind.$2"
    }
    declare -A I
    for t in a b; do
        for n in $SHORT $LONG; do I[$t.$n]=$(count "$OUT/$t.$n.sql" "$t.$n"); done
    done
    scripts/cluster.sh start bench "$BENCH_PORT" --conf "max_parallel_workers_per_gather = 0" --conf "jit = off" >/dev/null
    per() { awk -v a="${I[$1.$LONG]}" -v b="${I[$1.$SHORT]}" -v n=$((LONG - SHORT)) 'BEGIN {printf "%.0f", (a - b) / n}'; }
    tracked=$(per a); untracked=$(per b)
    echo
    echo "instructions per single-row INSERT transaction (callgrind, $((LONG - SHORT)) transactions, one backend):"
    printf '  untracked  %10d\n  tracked    %10d\n  overhead   %10d  (%s%%)\n' "$untracked" "$tracked" $((tracked - untracked)) \
        "$(awk -v a="$tracked" -v b="$untracked" 'BEGIN {printf "%.2f", 100 * (a - b) / b}')"
fi
