#!/usr/bin/env bash
# Workload index advice (issue 14): throughput of Dittofeed's query mix after applying
# tenancy.index_advice() -- observed under that same mix -- divided by before, per query and for
# the mix; and single-row insert throughput on the indexed tables, after / before.
#
# Fixture at Dittofeed-like scale: 1,000 workspaces (900 roots, 10 parents x 9 children), per
# active workspace 200 segments, 50 journeys, 100 user properties, 20 integrations, 20
# subscription groups, 30 message templates, 10 secrets, 20 features, 300 broadcasts and 2,000
# computed-property periods (2 million in all), with exactly Dittofeed's indexes
# (fixture/dittofeed.sql, bench/advice-schema.sql).
# Workload: the query shapes of ../shared/notes/dittofeed-queries.md as Drizzle sends them, over
# the extended protocol (parsed and planned per execution, as node-postgres does), weighted by how
# often they run, workspaces drawn at random; 1 client, as the table owner (Dittofeed today: no
# row-level security).
# Procedure: build the database; observe the mix with pg_qualstats (sample_rate 1) for
# BENCH_OBSERVE seconds on one of two copies of the database (CREATE DATABASE ... TEMPLATE);
# take the advice there and apply its CREATE INDEX (and DROP INDEX) statements to the other copy,
# "after" ("before" is the first, with Dittofeed's indexes only); VACUUM ANALYZE both; then ROUNDS
# rounds, each running the mix for SECONDS_PER_RUN seconds on "before" then "after" (alternating
# which goes first), with pg_qualstats off; medians. Then the same for single-row inserts; then
# the mix observed again on "after", where the advice must have no workload row left.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PORT=${TENANCY_BENCH_PORT_ADVICE:-25461}
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-5}
OBSERVE=${BENCH_OBSERVE:-20}
INSERT_SECONDS=${BENCH_INSERT_SECONDS:-4}
ROOTS=${BENCH_ADVICE_ROOTS:-900}
CPP=${BENCH_ADVICE_PERIODS:-2000}
BASE=bench_adv_base
BEFORE=bench_adv_before
AFTER=bench_adv_after
psql() { command psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d)
cleanup() { rm -rf "$work"; scripts/cluster.sh stop bench-advice >/dev/null 2>&1 || true; }
trap cleanup EXIT

scripts/cluster.sh start bench-advice "$PORT" --fresh \
    --conf "shared_preload_libraries = 'tenancy, pg_qualstats'" --conf "compute_query_id = on" \
    --conf "pg_qualstats.sample_rate = 1" --conf "pg_qualstats.max = 5000" \
    --conf "max_parallel_workers_per_gather = 0" --conf "jit = off" --conf "shared_buffers = '2GB'" >/dev/null

echo "-- building 1,000 workspaces at Dittofeed-like scale ($CPP computed-property periods each)" >&2
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $BEFORE" -c "DROP DATABASE IF EXISTS $AFTER" \
    -c "DROP DATABASE IF EXISTS $BASE" -c "CREATE DATABASE $BASE"
psql -d $BASE -c "CREATE EXTENSION tenancy" -c "CREATE EXTENSION pg_qualstats" -c "CREATE EXTENSION hypopg" \
    -f fixture/dittofeed.sql -f bench/advice-schema.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(10, 9, $ROOTS, 0)" >/dev/null
psql -d $BASE >/dev/null <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE ws AS SELECT id, abs(hashtext(id::text)::bigint) AS h FROM "Workspace" WHERE status = 'Active';
INSERT INTO "Segment" (id, "workspaceId", name, definition, status, "resourceType", "definitionUpdatedAt")
SELECT md5(ws.id::text || 'seg' || i)::uuid, ws.id, 'segment-' || i, '{"entryNode": {"type": "Trait"}}',
       (ARRAY['Running', 'Paused', 'NotStarted']::"SegmentStatus"[])[1 + (i + ws.h) % 3],
       CASE WHEN i % 10 = 0 THEN 'Internal' ELSE 'Declarative' END::"DBResourceType",
       timestamp '2026-01-01' + ((i * 7919 + ws.h) % 100000) * interval '1 minute'
  FROM ws, generate_series(1, 200) i;
INSERT INTO "Journey" ("workspaceId", name, status, definition)
SELECT ws.id, 'journey-' || i, (ARRAY['Running', 'Paused', 'NotStarted', 'Broadcast']::"JourneyStatus"[])[1 + (i + ws.h) % 4], '{}'
  FROM ws, generate_series(1, 50) i;
INSERT INTO "UserProperty" (id, "workspaceId", name, definition)
SELECT md5(ws.id::text || 'up' || i)::uuid, ws.id, 'property-' || i, '{"type": "Trait"}' FROM ws, generate_series(1, 100) i;
INSERT INTO "Integration" ("workspaceId", name, definition, enabled)
SELECT ws.id, 'integration-' || i, '{}', i % 2 = 0 FROM ws, generate_series(1, 20) i;
INSERT INTO "SubscriptionGroup" ("workspaceId", name, type, channel)
SELECT ws.id, 'group-' || i, 'OptIn', 'Email' FROM ws, generate_series(1, 18) i;
INSERT INTO "MessageTemplate" ("workspaceId", name, definition, "resourceType")
SELECT ws.id, 'template-' || i, '{}', CASE WHEN i % 5 = 0 THEN 'Internal' ELSE 'Declarative' END::"DBResourceType"
  FROM ws, generate_series(1, 30) i;
INSERT INTO "Secret" ("workspaceId", name, value) SELECT ws.id, 'secret-' || i, 'x' FROM ws, generate_series(1, 10) i;
INSERT INTO "Feature" ("workspaceId", name, enabled) SELECT ws.id, 'feature-' || i, i % 3 = 0 FROM ws, generate_series(1, 20) i;
INSERT INTO "Broadcast" ("workspaceId", name, "createdAt")
SELECT ws.id, 'broadcast-' || i, timestamp '2026-01-01' + ((i * 104729 + ws.h) % 500000) * interval '1 minute'
  FROM ws, generate_series(1, 300) i;
INSERT INTO "ComputedPropertyPeriod" ("workspaceId", type, "computedPropertyId", version, "from", "to", step)
SELECT ws.id,
       CASE WHEN i % 300 < 200 THEN 'Segment' ELSE 'UserProperty' END::"DBComputedPropertyType",
       CASE WHEN i % 300 < 200 THEN md5(ws.id::text || 'seg' || (i % 300 + 1))::uuid
            ELSE md5(ws.id::text || 'up' || (i % 300 - 199))::uuid END,
       (extract(epoch FROM timestamp '2026-01-01') * 1000)::bigint::text,
       timestamp '2026-01-01' + i * interval '2 minutes', timestamp '2026-01-01' + (i + 1) * interval '2 minutes',
       (ARRAY['ComputeState', 'ComputeAssignments', 'ProcessAssignments'])[1 + i % 3]
  FROM ws, generate_series(1, $CPP) i;
SQL
psql -d $BASE -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
psql -d $BASE -At -c "SELECT format('   %s: %s rows', relname, n_live_tup) FROM pg_stat_user_tables WHERE n_live_tup > 0 ORDER BY n_live_tup DESC" >&2
# "before" and "after" are both copies of the same database, treated alike but for the advice
psql -d postgres -c "CREATE DATABASE $BEFORE TEMPLATE $BASE" -c "CREATE DATABASE $AFTER TEMPLATE $BASE" >/dev/null

# --- the query mix: name weight SQL (":ws" = a random root workspace; Drizzle's shapes)
WS="fixture.ws_id('root', :n)"
mix=(
  "q01_journey_status 10 SELECT * FROM \"Journey\" \"journey\" WHERE (\"journey\".\"workspaceId\" = $WS AND \"journey\".\"status\" = 'Running')"
  "q02_user_properties 10 SELECT * FROM \"UserProperty\" WHERE (\"workspaceId\" = $WS)"
  "q03_segment_status 10 SELECT * FROM \"Segment\" WHERE (\"workspaceId\" = $WS AND \"status\" = 'Running')"
  "q04_integrations 10 SELECT * FROM \"Integration\" \"integration\" WHERE (\"workspaceId\" = $WS AND \"enabled\" = true)"
  "q05_period_delete 10 DELETE FROM \"ComputedPropertyPeriod\" WHERE (\"workspaceId\" = $WS AND \"step\" = 'ComputeAssignments' AND \"computedPropertyId\" IN (md5($WS::text || 'seg' || :k)::uuid, md5($WS::text || 'seg' || :k + 1)::uuid) AND \"to\" < timestamp '2025-01-01')"
  "q06_period_max 10 SELECT min(\"maxTo\") FROM (SELECT \"type\", \"computedPropertyId\", max(\"to\") AS \"maxTo\" FROM \"ComputedPropertyPeriod\" LEFT JOIN \"Segment\" ON (\"computedPropertyId\" = \"Segment\".\"id\" AND \"type\" = 'Segment' AND \"Segment\".\"status\" = 'Running') LEFT JOIN \"UserProperty\" ON (\"computedPropertyId\" = \"UserProperty\".\"id\" AND \"type\" = 'UserProperty') WHERE (\"ComputedPropertyPeriod\".\"workspaceId\" = $WS AND \"step\" = 'ComputeAssignments' AND \"version\" = round(extract(epoch from COALESCE(\"Segment\".\"definitionUpdatedAt\", \"UserProperty\".\"definitionUpdatedAt\")) * 1000)::text) GROUP BY \"type\", \"computedPropertyId\") \"maxPerComputedProperty\""
  "q07_journeys 5 SELECT * FROM \"Journey\" \"journey\" WHERE \"journey\".\"workspaceId\" = $WS"
  "q10_secret 10 SELECT * FROM \"Secret\" \"secret\" WHERE (\"secret\".\"workspaceId\" = $WS AND \"secret\".\"name\" = 'secret-3') LIMIT 1"
  "q13_segment_by_name 2 SELECT * FROM \"Segment\" WHERE (\"workspaceId\" = $WS AND \"name\" = 'segment-' || :k) LIMIT 1"
  "q14_features 5 SELECT * FROM \"Feature\" \"feature\" WHERE \"feature\".\"workspaceId\" = $WS"
  "q15_segment_list 3 SELECT \"id\", \"name\" FROM \"Segment\" \"segment\" WHERE (\"workspaceId\" = $WS AND \"resourceType\" = 'Declarative') ORDER BY \"segment\".\"name\" ASC"
  "q16_broadcasts 3 SELECT \"id\", \"name\" FROM \"Broadcast\" \"broadcast\" WHERE \"broadcast\".\"workspaceId\" = $WS ORDER BY \"broadcast\".\"createdAt\" DESC LIMIT 20"
  "q17_templates 3 SELECT * FROM \"MessageTemplate\" \"messageTemplate\" WHERE (\"workspaceId\" = $WS AND \"resourceType\" = 'Declarative')"
  "q18_subscription_groups 3 SELECT * FROM \"SubscriptionGroup\" \"subscriptionGroup\" WHERE \"subscriptionGroup\".\"workspaceId\" = $WS"
)
args=()
names=()
for entry in "${mix[@]}"; do
    name=${entry%% *}; rest=${entry#* }; weight=${rest%% *}; sql=${rest#* }
    printf '\\set n random(1, %d)\n\\set k random(1, 190)\n%s;\n' "$ROOTS" "$sql" >"$work/$name.sql"
    args+=(-f "$work/$name.sql@$weight")
    names+=("$name")
done
inserts=(
  "i1_segment INSERT INTO \"Segment\" (\"workspaceId\", name, definition) VALUES ($WS, 'new-' || md5(random()::text), '{}')"
  "i2_journey INSERT INTO \"Journey\" (\"workspaceId\", name) VALUES ($WS, 'new-' || md5(random()::text))"
  "i3_period INSERT INTO \"ComputedPropertyPeriod\" (\"workspaceId\", type, \"computedPropertyId\", version, \"to\", step) VALUES ($WS, 'Segment', gen_random_uuid(), '1', now(), 'ComputeState')"
)
iargs=()
for entry in "${inserts[@]}"; do
    name=${entry%% *}; sql=${entry#* }
    printf '\\set n random(1, %d)\n%s;\n' "$ROOTS" "$sql" >"$work/$name.sql"
    iargs+=(-f "$work/$name.sql")
done

run() { # db seconds out pgbench-args...
    local db=$1 secs=$2 out=$3; shift 3
    "$PGBENCH" -n -h 127.0.0.1 -p "$PORT" -U postgres -M extended -c 1 -T "$secs" -r "$@" "$db" >"$out" 2>&1 \
        || { cat "$out" >&2; exit 1; }
}
# per script: "name tps latency_ms" from pgbench's per-script report
per_script() {
    awk '/^SQL script [0-9]+:/ { split($0, a, "/"); n = a[length(a)]; sub(/\.sql.*/, "", n) }
         /^ - [0-9]+ transactions/ { match($0, /tps = [0-9.]+/); t = substr($0, RSTART + 6, RLENGTH - 6) }
         /^ - latency average/ { print n, t, $5 }' "$1"
}
total_tps() { awk '/^tps = / {print $3}' "$1"; }

echo "-- observing the mix for ${OBSERVE}s (pg_qualstats, every query sampled)" >&2
psql -d $BEFORE -c "SELECT pg_qualstats_reset()" >/dev/null
run $BEFORE "$OBSERVE" "$work/observe.txt" "${args[@]}"
psql -d $BEFORE -c "\\x on" -c "SELECT table_name, reason, ddl, calls, cost_before, cost_after FROM tenancy.index_advice() WHERE table_name IS NULL OR reason LIKE 'workload%' OR ddl LIKE 'DROP INDEX%'" | tee "$work/advice.txt" >&2
psql -d $BEFORE -At -c "SELECT ddl FROM tenancy.index_advice() WHERE reason LIKE 'workload%'" >"$work/create.sql"
psql -d $BEFORE -At -c "SELECT ddl FROM tenancy.index_advice() WHERE ddl LIKE 'DROP INDEX%'" >"$work/drop.sql"
echo "-- advice applied to the copy: $(wc -l <"$work/create.sql") indexes created, $(wc -l <"$work/drop.sql") dropped" >&2
psql -d $AFTER -f "$work/create.sql" -f "$work/drop.sql" >/dev/null
for db in $BEFORE $AFTER; do psql -d $db -c "VACUUM ANALYZE" >/dev/null; done
psql -d postgres -c "CHECKPOINT" >/dev/null
cat "$work/create.sql" "$work/drop.sql" >&2
psql -d postgres -c "ALTER SYSTEM SET pg_qualstats.enabled = off" -c "SELECT pg_reload_conf()" >/dev/null

echo "-- $ROUNDS rounds of ${SECONDS_PER_RUN}s per database, alternating" >&2
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=("$BEFORE" "$AFTER"); else order=("$AFTER" "$BEFORE"); fi
    for db in "${order[@]}"; do
        run "$db" "$SECONDS_PER_RUN" "$work/mix.$db.$r.txt" "${args[@]}"
        run "$db" "$INSERT_SECONDS" "$work/ins.$db.$r.txt" "${iargs[@]}"
    done
    echo "   round $r: mix $(total_tps "$work/mix.$BEFORE.$r.txt") -> $(total_tps "$work/mix.$AFTER.$r.txt") tps, inserts $(total_tps "$work/ins.$BEFORE.$r.txt") -> $(total_tps "$work/ins.$AFTER.$r.txt") tps" >&2
done

med_total() { for r in $(seq 1 "$ROUNDS"); do total_tps "$work/$1.$2.$r.txt"; done | median; }
med_script() { for r in $(seq 1 "$ROUNDS"); do per_script "$work/$1.$2.$r.txt" | awk -v n="$3" '$1 == n {print $'"$4"'}'; done | median; }

echo
echo "Workload index advice: Dittofeed's query mix (extended protocol, 1 client), medians of $ROUNDS rounds of ${SECONDS_PER_RUN}s"
printf '| %-24s | %12s | %12s | %10s |\n' "query" "before ms" "after ms" "speed"
printf '|%s|%s|%s|%s|\n' "--------------------------" "--------------" "--------------" "------------"
for name in "${names[@]}"; do
    b=$(med_script mix $BEFORE "$name" 3); a=$(med_script mix $AFTER "$name" 3)
    printf '| %-24s | %12s | %12s | %10s |\n' "$name" "$b" "$a" "$(ratio "$b" "$a")"
done
b=$(med_total mix $BEFORE); a=$(med_total mix $AFTER)
printf '| %-24s | %12s | %12s | %10s |\n' "mix (tps)" "$b" "$a" "$(ratio "$a" "$b")"
bi=$(med_total ins $BEFORE); ai=$(med_total ins $AFTER)
printf '| %-24s | %12s | %12s | %10s |\n' "single-row inserts (tps)" "$bi" "$ai" "$(ratio "$ai" "$bi")"
echo "speed: before latency / after latency per query; mix and inserts: after tps / before tps."
echo "goals: mix >= 1.40, no query below 0.95, inserts >= 0.90"

echo "-- the mix observed again on the copy with the advice applied" >&2
psql -d postgres -c "ALTER SYSTEM SET pg_qualstats.enabled = on" -c "SELECT pg_reload_conf()" >/dev/null
psql -d $AFTER -c "SELECT pg_qualstats_reset()" >/dev/null
run $AFTER "$OBSERVE" "$work/observe2.txt" "${args[@]}"
left=$(psql -d $AFTER -At -c "SELECT count(*) FROM tenancy.index_advice() WHERE reason LIKE 'workload%'")
echo "workload advice left after applying it and observing again: $left row(s)"
psql -d postgres -c "ALTER SYSTEM RESET pg_qualstats.enabled" -c "SELECT pg_reload_conf()" >/dev/null
