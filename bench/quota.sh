#!/usr/bin/env bash
# Quota enforcement cost, as ratios against a table without any trigger, measured in one run:
#  - single-row INSERT throughput (pgbench, 1 and 8 clients) into workspaces of 1k and of 100k
#    rows: tenancy's quota trigger, and the naive PL/pgSQL count(*) trigger users write today;
#  - a 100k-row INSERT ... SELECT (rolled back after timing).
# Three copies of Dittofeed's "Segment" (same columns, indexes, foreign keys) take the load:
# seg_plain (no trigger), seg_tenancy (tenancy.enforce_quota), seg_naive (count(*) trigger),
# and seg_floor: a PL/pgSQL statement trigger that only adds the statement's row count to a
# counter row (no limit check, no counted_when), the floor of any design that keeps exact
# counts in a table row updated by the writing transaction.
# The fixture holds 100 workspaces; single-row inserts go to 10 of them, grown to 1k and then
# to 100k rows each. Every variant runs once per round, rounds interleave variants, medians win.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-6}
ROUNDS=${BENCH_ROUNDS:-5}
DB=bench_quota
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql -f bench/lib.sql \
    -c "SELECT count(*) FROM fixture.generate(0, 0, 100, 0)" >/dev/null
psql -d $DB >/dev/null <<'SQL'
CREATE TABLE naive_limit (workspace_id uuid PRIMARY KEY, max_rows bigint NOT NULL);
CREATE FUNCTION naive_quota() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lim bigint;
    n bigint;
BEGIN
    SELECT max_rows INTO lim FROM naive_limit WHERE workspace_id = NEW."workspaceId";
    IF lim IS NOT NULL AND NEW."resourceType" = 'Declarative' THEN
        SELECT count(*) INTO n FROM seg_naive
         WHERE "workspaceId" = NEW."workspaceId" AND "resourceType" = 'Declarative';
        IF n >= lim THEN
            RAISE EXCEPTION 'quota exceeded' USING ERRCODE = '53400';
        END IF;
    END IF;
    RETURN NEW;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seg_plain', 'seg_tenancy', 'seg_naive', 'seg_floor'] LOOP
        EXECUTE format('CREATE TABLE %I (LIKE "Segment" INCLUDING ALL)', t);
        EXECUTE format('ALTER TABLE %I ADD FOREIGN KEY ("workspaceId") REFERENCES "Workspace"(id) ON DELETE CASCADE ON UPDATE CASCADE', t);
        EXECUTE format('ALTER TABLE %I ADD FOREIGN KEY ("subscriptionGroupId") REFERENCES "SubscriptionGroup"(id) ON DELETE SET NULL', t);
        EXECUTE format('INSERT INTO %I SELECT * FROM "Segment"', t);
    END LOOP;
END $$;
ALTER TABLE seg_plain SET (autovacuum_enabled = off);
ALTER TABLE seg_tenancy SET (autovacuum_enabled = off);
ALTER TABLE seg_naive SET (autovacuum_enabled = off);
ALTER TABLE seg_floor SET (autovacuum_enabled = off);
CREATE TABLE floor_counter (workspace_id uuid PRIMARY KEY, used bigint NOT NULL) WITH (fillfactor = 50);
INSERT INTO floor_counter SELECT id, 0 FROM "Workspace";
CREATE FUNCTION floor_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE floor_counter c SET used = c.used + d.n
      FROM (SELECT "workspaceId" AS ws, count(*) AS n FROM floor_new GROUP BY 1) d
     WHERE c.workspace_id = d.ws;
    RETURN NULL;
END $$;
CREATE TRIGGER floor_count AFTER INSERT ON seg_floor REFERENCING NEW TABLE AS floor_new
    FOR EACH STATEMENT EXECUTE FUNCTION floor_count();
CREATE TRIGGER naive_quota BEFORE INSERT ON seg_naive FOR EACH ROW EXECUTE FUNCTION naive_quota();
INSERT INTO naive_limit SELECT id, 10000000 FROM "Workspace";
SELECT tenancy.enforce_quota('seg_tenancy', counted_when => '"resourceType" = ''Declarative''');
SELECT tenancy.set_quota('seg_tenancy', 10000000);
-- grow 10 workspaces to p_rows Declarative rows in every copy (triggers off while loading)
CREATE FUNCTION bench_grow(p_rows int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seg_plain', 'seg_tenancy', 'seg_naive', 'seg_floor'] LOOP
        EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', t);
        EXECUTE format($q$
            INSERT INTO %I ("workspaceId", name, definition, status)
            SELECT md5('tenancy-fixture/root/' || w)::uuid, 'grow-' || i, '{}', 'Running'
              FROM generate_series(1, 10) w,
                   generate_series((SELECT count(*) FROM %I WHERE "workspaceId" = md5('tenancy-fixture/root/1')::uuid
                                     AND "resourceType" = 'Declarative') + 1, $1) i$q$, t, t)
        USING p_rows;
        EXECUTE format('ALTER TABLE %I ENABLE TRIGGER USER', t);
    END LOOP;
    PERFORM tenancy.enforce_quota('seg_tenancy', counted_when => '"resourceType" = ''Declarative''');
END $$;
SQL

for t in plain tenancy naive floor; do
    cat >"$work/insert_$t.sql" <<EOT
\set w random(1, 10)
INSERT INTO seg_$t ("workspaceId", name, definition) VALUES (md5('tenancy-fixture/root/' || :w)::uuid, gen_random_uuid()::text, '{}');
EOT
    cat >"$work/bulk_$t.sql" <<EOT
BEGIN;
INSERT INTO seg_$t ("workspaceId", name, definition)
SELECT md5('tenancy-fixture/root/' || (i % 100 + 1))::uuid, 'bulk-' || i, '{}' FROM generate_series(1, 100000) i;
ROLLBACK;
EOT
done

# pgbench TPS of one script: tps_of FILE CLIENTS
tps_of() {
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -c "$2" -j "$2" -T "$SECONDS_PER_RUN" -f "$1" $DB 2>/dev/null \
        | awk '/^tps = / {print $3}'
}
# average latency (ms) of one script run N times: latency_of FILE N
latency_of() {
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -c 1 -t "$2" -f "$1" $DB 2>/dev/null \
        | awk '/^latency average = / {print $4}'
}

results="$work/results"
: >"$results"
for size in 1000 100000; do
    echo "-- growing 10 workspaces to $size rows per table copy" >&2
    # Load, then settle: vacuum, analyze and checkpoint, and keep autovacuum off the copies
    # during the runs, so that no variant pays for background work the others do not.
    psql -d $DB -c "SELECT bench_grow($size)" -c "VACUUM ANALYZE seg_plain, seg_tenancy, seg_naive, seg_floor, tenancy.quota_counter" \
        -c "CHECKPOINT" >/dev/null
    for t in plain tenancy naive floor; do tps_of "$work/insert_$t.sql" 1 >/dev/null; done   # warm-up
    for r in $(seq 1 "$ROUNDS"); do
        for clients in 1 8; do
            # rotate which variant goes first, so no variant always inherits the same
            # predecessor's background work
            variants=(plain tenancy naive floor)
            k=$((r % 4))
            for t in "${variants[@]:k}" "${variants[@]:0:k}"; do
                echo "$size $clients $t $(tps_of "$work/insert_$t.sql" "$clients") $r" >>"$results"
            done
        done
        echo "   round $r/$ROUNDS done" >&2
    done
done
bulk="$work/bulk"
: >"$bulk"
for r in $(seq 1 "$ROUNDS"); do
    for t in plain tenancy; do
        echo "$t $(latency_of "$work/bulk_$t.sql" 1)" >>"$bulk"
    done
done

med() { awk -v s="$1" -v c="$2" -v t="$3" '$1 == s && $2 == c && $3 == t {print $4}' "$results" | median; }
# A variant's TPS over the no-trigger TPS of the same round (run within seconds of each other),
# then the median over rounds: slow drifts of the shared machine cancel within a round.
pratio() { # size clients variant
    awk -v s="$1" -v c="$2" -v t="$3" '$1 == s && $2 == c && $3 == t {x[$5] = $4} $1 == s && $2 == c && $3 == "plain" {y[$5] = $4}
        END {for (r in x) if (y[r] > 0) printf "%.4f\n", x[r] / y[r]}' "$results" | median
}
echo
echo "single-row INSERT throughput (median TPS of $ROUNDS runs of ${SECONDS_PER_RUN}s; ratio = median over rounds of TPS / TPS without trigger in the same round)"
printf '%-10s %-8s %11s %11s %11s %11s %9s %9s %9s\n' rows/ws clients no-trigger tenancy naive floor tenancy naive floor
declare -A R
for size in 1000 100000; do
    for clients in 1 8; do
        p=$(med $size $clients plain); q=$(med $size $clients tenancy); n=$(med $size $clients naive); f=$(med $size $clients floor)
        R[$size,$clients]=$(printf '%.3f' "$(pratio $size $clients tenancy)")
        printf '%-10s %-8s %11.1f %11.1f %11.1f %11.1f %9s %9s %9s\n' "$size" "$clients" "$p" "$q" "$n" "$f" \
            "${R[$size,$clients]}" "$(printf '%.3f' "$(pratio $size $clients naive)")" "$(printf '%.3f' "$(pratio $size $clients floor)")"
    done
done
echo
echo "flatness: tenancy ratio at 100k rows / at 1k rows (goal: within 0.90 .. 1.10)"
for clients in 1 8; do
    echo "  $clients client(s): $(ratio "${R[100000,$clients]}" "${R[1000,$clients]}")"
done
bp=$(awk '$1 == "plain" {print $2}' "$bulk" | median)
bq=$(awk '$1 == "tenancy" {print $2}' "$bulk" | median)
echo
echo "100k-row INSERT ... SELECT over 100 workspaces (median ms of $ROUNDS): no trigger $bp, tenancy $bq, speed ratio $(ratio "$bp" "$bq") (goal >= 0.8)"
