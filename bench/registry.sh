#!/usr/bin/env bash
# What the registry cache saves a request (issue 17 item 3): the application's request
# transaction through a real pgbouncer (transaction pooling) -- BEGIN; set_workspace(w); one
# indexed query under the isolation policy; COMMIT -- for 1,000 workspaces, one at random per
# transaction. Two copies of the same database on one server, run *at the same time* (whatever
# else the machine does hits both alike): in one the registry is tracked for change stamps (the
# lookups are answered from the cache), in the other not (every set_workspace reads the
# registry); each round swaps them. Ratio = median over rounds of TPS(cache) / TPS(no cache);
# the registry reads per transaction of each side are counted from pg_stat_user_tables.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-4}
POOL=${BENCH_POOL:-2}
PGB_PORT=${TENANCY_BENCH_PGB_PORT:-25480}
APP=bench_reg_app
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
PGB_DIR=$RUN_DIR/bench-registry-pgbouncer
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d)
pgb_pid=
cleanup() {
    [ -n "$pgb_pid" ] && kill "$pgb_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "-- building: 1,000 workspaces, 5 rows per tenant table each, isolation policies" >&2
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_reg_a" \
    -c "DROP DATABASE IF EXISTS bench_reg_b" -c "CREATE DATABASE bench_reg_a"
psql -d bench_reg_a -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(0, 0, 1000, 5)" >/dev/null
psql -d bench_reg_a >/dev/null <<SQL
SET client_min_messages = warning;
SELECT count(*) FROM tenancy.enable_rls_all();
DO \$\$ BEGIN PERFORM tenancy.create_app_role('$APP'); EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
SQL
psql -d bench_reg_a -c "VACUUM ANALYZE" >/dev/null
psql -d postgres -c "CREATE DATABASE bench_reg_b TEMPLATE bench_reg_a"
psql -d bench_reg_b -c "CHECKPOINT" >/dev/null

rm -rf "$PGB_DIR" && mkdir -p "$PGB_DIR"
cat >"$PGB_DIR/pgbouncer.ini" <<INI
[databases]
bench_reg_a = host=127.0.0.1 port=$BENCH_PORT dbname=bench_reg_a pool_size=$POOL
bench_reg_b = host=127.0.0.1 port=$BENCH_PORT dbname=bench_reg_b pool_size=$POOL
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $PGB_DIR/userlist.txt
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
pool_mode = transaction
default_pool_size = $POOL
reserve_pool_size = 0
max_client_conn = 200
server_reset_query_always = 0
ignore_startup_parameters = extra_float_digits,options
INI
echo "\"$APP\" \"\"" >"$PGB_DIR/userlist.txt"
if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$PGB_DIR"
    runuser -u postgres -- /usr/sbin/pgbouncer "$PGB_DIR/pgbouncer.ini" </dev/null >/dev/null 2>&1 &
else
    /usr/sbin/pgbouncer "$PGB_DIR/pgbouncer.ini" </dev/null >/dev/null 2>&1 &
fi
pgb_pid=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$PGB_PORT) 2>/dev/null && break; sleep 0.1; done

cat >"$work/request.sql" <<'EOT'
\set n random(1, 1000)
\set k random(1, 5)
BEGIN;
SELECT tenancy.set_workspace(md5('tenancy-fixture/root/' || :n)::uuid);
SELECT id, definition FROM "Segment" WHERE name = 'segment-' || :k;
COMMIT;
EOT
run() { # database: TPS
    "$PGBENCH" -n -h 127.0.0.1 -p "$PGB_PORT" -U "$APP" -c "$CLIENTS" -j 1 -T "$SECONDS_PER_RUN" \
        -f "$work/request.sql" "$1" 2>"$work/pgbench.$1.err" | awk '/^tps = / {print $3}'
}
# registry reads (sequential and index scans) of a database so far, as the statistics have them
# (a backend flushes its counts at most once a second while busy: the last second of a run may
# be counted in the next round; the figure is an indicator, ~1 without the cache, ~0 with it)
reads() {
    psql -d "$1" -At -c "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = '\"Workspace\"'::regclass"
}
: >"$work/results"
for r in $(seq 0 "$ROUNDS"); do # round 0: warm-up
    if [ $((r % 2)) = 1 ]; then cached=a plain=b; else cached=b plain=a; fi
    psql -d bench_reg_$plain -c "SELECT tenancy.untrack_changes('\"Workspace\"')" >/dev/null
    psql -d bench_reg_$cached -c "SELECT tenancy.track_changes('\"Workspace\"', 'id')" >/dev/null
    # warm both sides (the cache starts empty in every backend with every tracking period)
    SECONDS_PER_RUN=2 run bench_reg_$cached >/dev/null &
    p1=$!
    SECONDS_PER_RUN=2 run bench_reg_$plain >/dev/null
    wait "$p1"
    sleep 1.2 # let the backends flush their statistics
    rc0=$(reads bench_reg_$cached); rp0=$(reads bench_reg_$plain)
    run bench_reg_$cached >"$work/c" &
    p1=$!
    run bench_reg_$plain >"$work/p" &
    p2=$!
    wait "$p1" "$p2"
    [ -s "$work/c" ] && [ -s "$work/p" ] || { cat "$work"/pgbench.*.err >&2; exit 1; }
    sleep 1.2
    rc1=$(reads bench_reg_$cached); rp1=$(reads bench_reg_$plain)
    c=$(cat "$work/c"); p=$(cat "$work/p")
    # registry reads per transaction, each side
    rpt_c=$(awk -v d=$((rc1 - rc0)) -v t="$c" -v s="$SECONDS_PER_RUN" 'BEGIN {printf "%.3f", d / (t * s)}')
    rpt_p=$(awk -v d=$((rp1 - rp0)) -v t="$p" -v s="$SECONDS_PER_RUN" 'BEGIN {printf "%.3f", d / (t * s)}')
    [ "$r" -gt 0 ] && echo "$c $p $rpt_c $rpt_p" >>"$work/results" && echo "   round $r/$ROUNDS: cache $c TPS ($rpt_c registry reads/tx), no cache $p TPS ($rpt_p)" >&2
done
echo
echo "request transactions through pgbouncer (transaction pooling, pool $POOL per database), $CLIENTS clients per database, $ROUNDS rounds of ${SECONDS_PER_RUN}s, both at once"
printf '%-40s %10s\n' "TPS with the registry cache" "$(awk '{print $1}' "$work/results" | median)"
printf '%-40s %10s\n' "TPS without" "$(awk '{print $2}' "$work/results" | median)"
printf '%-40s %10s\n' "registry reads per transaction, cache" "$(awk '{print $3}' "$work/results" | median)"
printf '%-40s %10s\n' "registry reads per transaction, without" "$(awk '{print $4}' "$work/results" | median)"
printf '%-40s %10s\n' "ratio (median of rounds)" "$(awk '$2 > 0 {printf "%.4f\n", $1 / $2}' "$work/results" | median)"

# set_workspace() alone, one client per database straight to the server (no pooler): the
# per-call cost with and without the cache, both at once, the same alternation
cat >"$work/set.sql" <<'EOT'
\set n random(1, 1000)
SELECT tenancy.set_workspace(md5('tenancy-fixture/root/' || :n)::uuid);
EOT
direct() { # database: TPS
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U "$APP" -c 1 -j 1 -T "$SECONDS_PER_RUN" -M prepared \
        -f "$work/set.sql" "$1" 2>"$work/pgbench.$1.err" | awk '/^tps = / {print $3}'
}
: >"$work/direct"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then cached=a plain=b; else cached=b plain=a; fi
    psql -d bench_reg_$plain -c "SELECT tenancy.untrack_changes('\"Workspace\"')" >/dev/null
    psql -d bench_reg_$cached -c "SELECT tenancy.track_changes('\"Workspace\"', 'id')" >/dev/null
    direct bench_reg_$cached >"$work/c" &
    p1=$!
    direct bench_reg_$plain >"$work/p" &
    p2=$!
    wait "$p1" "$p2"
    echo "$(cat "$work/c") $(cat "$work/p")" >>"$work/direct"
done
us() { awk '{print 1e6 / $'"$1"'}' "$work/direct" | median; }
echo
echo "SELECT tenancy.set_workspace(w) alone (prepared, one client per database, no pooler; each backend's cache warms within the run): $ROUNDS rounds of ${SECONDS_PER_RUN}s"
printf '%-40s %10.1f\n' "us per call with the registry cache" "$(us 1)"
printf '%-40s %10.1f\n' "us per call without" "$(us 2)"
