#!/usr/bin/env bash
# Fair sharing (issue 15): per-workspace admission control.
#
# 1. Noisy neighbour, through a real pgbouncer (transaction pooling, one database user, a pool of
#    BENCH_POOL_SIZE server connections as Dittofeed's 10 per process): workspace A runs
#    BENCH_HEAVY_CLIENTS clients of an aggregation over its 200,000 segments (CPU-heavy), B runs
#    BENCH_LIGHT_CLIENTS clients of primary-key lookups (tests/bin/noisy.rs drives both; each
#    request is one transaction with set_workspace(ws, true); a client of A refused with 53000
#    backs off 20 ms and retries, as an application answering 429 would). B's p95 latency with A
#    unlimited and with A limited (max_active 1, max_wait BENCH_MAX_WAIT: A's statements wait,
#    sleeping, holding their server connections, so the pool is sized above A's clients, as
#    docs/admission.md says), each divided by B's p95 alone.
#    Goals: limited <= 2.0, unlimited >= 4.0 (the test bites), B sees no errors, A's refusals
#    and waits counted in workspace_stats. Medians of ROUNDS rounds.
# 2. Overhead: request transactions (set_config('tenancy.workspace_id', ws, true) + one
#    primary-key select) over 100 workspaces, pgbench, 2 clients, direct connections, with a
#    default limit configured that is never reached (max_active 64) against the same server
#    without limits, rounds alternating. Goal: tps ratio >= 0.97.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PORT=${TENANCY_BENCH_PORT_ADMISSION:-25466}
PGB_PORT=${TENANCY_BENCH_PORT_ADMISSION_PGBOUNCER:-25467}
SECONDS_PER_RUN=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
HEAVY=${BENCH_HEAVY_CLIENTS:-16}
LIGHT=${BENCH_LIGHT_CLIENTS:-2}
POOL=${BENCH_POOL_SIZE:-20}
MAX_WAIT=${BENCH_MAX_WAIT:-2 s}
DB=bench_adm
APP=bench_adm_app
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
PGB_DIR=$RUN_DIR/bench-admission-pgbouncer
psql() { command psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d)
pgb_pid=
cleanup() {
    [ -n "$pgb_pid" ] && kill "$pgb_pid" 2>/dev/null || true
    rm -rf "$work"
    scripts/cluster.sh stop bench-admission >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/cluster.sh start bench-admission "$PORT" --fresh --conf "max_parallel_workers_per_gather = 0" --conf "jit = off" >/dev/null
echo "-- building: workspace A with 200,000 segments, B with 2,000, 100 more for the overhead run" >&2
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(0, 0, 100, 0)" >/dev/null
psql -d $DB >/dev/null <<SQL
SET client_min_messages = warning;
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT fixture.ws_id('root', 1), 'segment-' || i, jsonb_build_object('entryNode', jsonb_build_object('type', 'Trait', 'path', 'p' || i))
  FROM generate_series(1, 200000) i;
INSERT INTO "Segment" ("workspaceId", name, definition)
SELECT fixture.ws_id('root', w), 'segment-' || i, '{}' FROM generate_series(2, 100) w, generate_series(1, 2000) i;
SELECT tenancy.create_app_role('$APP');
SQL
psql -d $DB -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
A=$(psql -d $DB -At -c "SELECT fixture.ws_id('root', 1)")
B=$(psql -d $DB -At -c "SELECT fixture.ws_id('root', 2)")

# pgbouncer, transaction pooling, trust, one pool of $POOL for the application role
rm -rf "$PGB_DIR" && mkdir -p "$PGB_DIR"
cat >"$PGB_DIR/pgbouncer.ini" <<INI
[databases]
$DB = host=127.0.0.1 port=$PORT dbname=$DB pool_size=$POOL
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

cargo build -q --release -p tenancy-it --bin noisy
NOISY=target/release/noisy
noisy() { "$NOISY" 127.0.0.1 "$PGB_PORT" "$DB" "$APP" "$A" "$B" "$1" "$LIGHT" "$SECONDS_PER_RUN"; }

echo "-- noisy neighbour: $ROUNDS rounds of ${SECONDS_PER_RUN}s per variant (B alone, A unlimited, A limited to 1)" >&2
for r in $(seq 1 "$ROUNDS"); do
    psql -d $DB -c "SELECT tenancy.clear_limits('$A')" >/dev/null
    noisy 0 >"$work/alone.$r"
    noisy "$HEAVY" >"$work/unlimited.$r"
    psql -d $DB -c "SELECT tenancy.set_limits(1, interval '$MAX_WAIT', workspace => '$A')" >/dev/null
    noisy "$HEAVY" >"$work/limited.$r"
    echo "   round $r: B p95 alone $(cut -d' ' -f2 "$work/alone.$r") ms, A unlimited $(cut -d' ' -f2 "$work/unlimited.$r") ms, A limited $(cut -d' ' -f2 "$work/limited.$r") ms" >&2
done
psql -d $DB -c "SELECT tenancy.clear_limits('$A')" >/dev/null
col() { for r in $(seq 1 "$ROUNDS"); do cut -d' ' -f"$2" "$work/$1.$r"; done | median; }
sum() { for r in $(seq 1 "$ROUNDS"); do cut -d' ' -f"$2" "$work/$1.$r"; done | awk '{s+=$1} END {print s}'; }
alone=$(col alone 2); unl=$(col unlimited 2); lim=$(col limited 2)
stats=$(psql -d $DB -At -F' ' -c "SELECT statements_admitted, statements_waited, admission_rejections FROM tenancy.workspace_stats WHERE workspace_id = '$A' AND database = current_database()")

echo
echo "Noisy neighbour through pgbouncer (transaction pooling, pool $POOL): A = $HEAVY clients of an aggregation over 200,000 segments, B = $LIGHT clients of primary-key lookups; medians of $ROUNDS rounds of ${SECONDS_PER_RUN}s"
printf '| %-30s | %10s | %10s | %12s | %12s | %10s | %10s |\n' "variant" "B p50 ms" "B p95 ms" "p95 / alone" "B requests" "B errors" "A done"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "--------------------------------" "------------" "------------" "--------------" "--------------" "------------" "------------"
for v in alone unlimited limited; do
    p95=$(col $v 2)
    printf '| %-30s | %10s | %10s | %12s | %12s | %10s | %10s |\n' "$v" "$(col $v 1)" "$p95" "$(ratio "$p95" "$alone")" "$(sum $v 3)" "$(sum $v 4)" "$(sum $v 5)"
done
echo "A limited: $(sum limited 6) refusals (53000) seen by A's clients; workspace_stats for A (all rounds): admitted, waited, refused = $stats"
echo "goals: limited <= 2.0, unlimited >= 4.0, no B errors"

# --- overhead: limits configured, never reached
echo "-- overhead: 100 workspaces, limits never reached vs none, $ROUNDS x 2 runs of ${SECONDS_PER_RUN}s" >&2
ids=$(psql -d $DB -At -c "SELECT string_agg(format('(%s, %L)', n, fixture.ws_id('root', n + 1)), ',') FROM generate_series(1, 99) n")
psql -d $DB -c "CREATE TABLE IF NOT EXISTS bench_ws (n int PRIMARY KEY, id uuid NOT NULL); TRUNCATE bench_ws; INSERT INTO bench_ws VALUES $ids" \
    -c "CREATE TABLE IF NOT EXISTS bench_seg AS SELECT \"workspaceId\", name, id FROM \"Segment\" WHERE \"workspaceId\" <> '$A'" \
    -c "CREATE UNIQUE INDEX IF NOT EXISTS bench_seg_key ON bench_seg (\"workspaceId\", name)" \
    -c "GRANT SELECT ON bench_ws, bench_seg TO $APP" -c "ANALYZE bench_ws, bench_seg" >/dev/null
cat >"$work/req.sql" <<'SQL'
\set n random(1, 99)
\set k random(1, 2000)
BEGIN;
SELECT set_config('tenancy.workspace_id', (SELECT id::text FROM bench_ws WHERE n = :n), true);
SELECT id FROM bench_seg WHERE "workspaceId" = (SELECT id FROM bench_ws WHERE n = :n) AND name = 'segment-' || :k;
COMMIT;
SQL
tps_of() { awk '/^tps = / {print $3}' "$1"; }
for r in $(seq 1 "$ROUNDS"); do
    for variant in none limits timeout; do
        case $variant in
            limits) psql -d $DB -c "SELECT tenancy.set_limits(64, interval '1 s')" >/dev/null ;;
            timeout) psql -d $DB -c "SELECT tenancy.set_limits(64, interval '1 s', interval '30 s')" >/dev/null ;;
            *) psql -d $DB -c "SELECT tenancy.clear_limits(NULL)" >/dev/null ;;
        esac
        "$PGBENCH" -n -h 127.0.0.1 -p "$PORT" -U "$APP" -M prepared -c 2 -j 2 -T "$SECONDS_PER_RUN" -f "$work/req.sql" $DB >"$work/ovh.$variant.$r" 2>&1
    done
    echo "   round $r: none $(tps_of "$work/ovh.none.$r") tps, limits $(tps_of "$work/ovh.limits.$r") tps, limits + timeout $(tps_of "$work/ovh.timeout.$r") tps" >&2
done
psql -d $DB -c "SELECT tenancy.clear_limits(NULL)" >/dev/null
none=$(for r in $(seq 1 "$ROUNDS"); do tps_of "$work/ovh.none.$r"; done | median)
lims=$(for r in $(seq 1 "$ROUNDS"); do tps_of "$work/ovh.limits.$r"; done | median)
tmo=$(for r in $(seq 1 "$ROUNDS"); do tps_of "$work/ovh.timeout.$r"; done | median)
echo
echo "Overhead: request transactions over 99 workspaces (pgbench, 2 clients, prepared), medians of $ROUNDS rounds of ${SECONDS_PER_RUN}s"
printf '| %-40s | %10s | %8s |\n' "variant" "tps" "ratio"
printf '|%s|%s|%s|\n' "------------------------------------------" "------------" "----------"
printf '| %-40s | %10s | %8s |\n' "no limits" "$none" "1.000"
printf '| %-40s | %10s | %8s |\n' "max_active 64 (never reached)" "$lims" "$(ratio "$lims" "$none")"
printf '| %-40s | %10s | %8s |\n' "max_active 64 + statement_timeout 30 s" "$tmo" "$(ratio "$tmo" "$none")"
echo "goal: >= 0.97"
