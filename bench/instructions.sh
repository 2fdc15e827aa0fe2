#!/usr/bin/env bash
# Instructions per request transaction, counted by valgrind's callgrind (deterministic, unlike
# timings on a shared 2-core machine): Dittofeed's request shape, one transaction that sets the
# context with set_config('tenancy.workspace_id', $1, true) and runs one indexed select, over
# 100 workspaces, run by one backend (`postgres --single` on the bench cluster's data folder)
# with tenancy preloaded and without. The cost per transaction is the difference between a run
# of LONG and a run of SHORT transactions divided by LONG - SHORT, so start-up cancels out.
# Prints both figures, the overhead in percent and where tenancy's instructions go.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SHORT=${BENCH_INSTR_SHORT:-200}
LONG=${BENCH_INSTR_LONG:-1200}
DB=bench_instr
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
OUT="$RUN_DIR/bench-instructions"
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }

psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -c "
    CREATE TABLE req (\"workspaceId\" uuid NOT NULL, id int NOT NULL, payload text NOT NULL,
                      PRIMARY KEY (\"workspaceId\", id));
    INSERT INTO req SELECT md5('ws' || w)::uuid, i, 'payload ' || i
      FROM generate_series(1, 100) w, generate_series(1, 100) i;" -c "VACUUM ANALYZE req"

rm -rf "$OUT" && mkdir -p "$OUT"
workload() { # n: n request transactions, one per line, round-robin over 100 workspaces
    for ((i = 0; i < $1; i++)); do
        ws=$(printf 'ws%d' $((i % 100 + 1)) | md5sum | cut -c1-32)
        ws="${ws:0:8}-${ws:8:4}-${ws:12:4}-${ws:16:4}-${ws:20:12}"
        echo "BEGIN; SELECT set_config('tenancy.workspace_id', '$ws', true); SELECT payload FROM req WHERE \"workspaceId\" = '$ws' AND id = $((i % 100 + 1)); COMMIT;"
    done
}
workload "$SHORT" >"$OUT/short.sql"
workload "$LONG" >"$OUT/long.sql"
chown -R postgres:postgres "$OUT" 2>/dev/null || true

data="$(scripts/cluster.sh dir bench)/data"
scripts/cluster.sh stop bench
trap 'scripts/cluster.sh start bench "$BENCH_PORT" --conf "max_parallel_workers_per_gather = 0" --conf "jit = off" >/dev/null' EXIT

count() { # preload-list workload-file label: total instructions of one single-user run
    local out="$OUT/callgrind.$3"
    # Same start for every run: no statistics saved by the previous run to load (the file's
    # size differs between a short and a long run, which would not cancel out).
    rm -f "$data/pg_stat/tenancy_stats.json"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$PG_BIN/postgres" --single -D "$data" -c "shared_preload_libraries=$1" -c jit=off "$DB" \
        <"$2" >/dev/null 2>"$OUT/valgrind.$3.log"
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
declare -A I
for cfg in tenancy none; do
    lib=$([ "$cfg" = tenancy ] && echo tenancy || echo "")
    I[$cfg.short]=$(count "$lib" "$OUT/short.sql" "$cfg.short")
    I[$cfg.long]=$(count "$lib" "$OUT/long.sql" "$cfg.long")
done
per() { awk -v a="${I[$1.long]}" -v b="${I[$1.short]}" -v n=$((LONG - SHORT)) 'BEGIN {printf "%.0f", (a - b) / n}'; }
with=$(per tenancy); without=$(per none)
echo
echo "instructions per request transaction (set_config + one indexed select, $((LONG - SHORT)) transactions, callgrind):"
printf '  without tenancy  %10d\n  with tenancy     %10d\n  overhead         %10d  (%s%%; goal <= 3%%)\n' \
    "$without" "$with" $((with - without)) "$(awk -v a="$with" -v b="$without" 'BEGIN {printf "%.2f", 100 * (a - b) / b}')"
echo
echo "where tenancy's instructions go (inclusive, long run with tenancy, top symbols of the extension):"
callgrind_annotate --inclusive=yes "$OUT/callgrind.tenancy.long" 2>/dev/null \
    | grep -E 'tenancy|pgrx' | head -15 || true
