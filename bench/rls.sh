#!/usr/bin/env bash
# Cost of the isolation policy and value of the index advice, as ratios against baselines
# measured in the same run (pgbench, 1 client, extended protocol like node-postgres: every query
# parsed and planned; the variants of a group mixed in one pgbench run, medians over rounds).
#
# Population: 1,000 workspaces (900 roots, 10 parents with 9 active children each) x 200
# Declarative segments (+ 4 Internal ones each), ~200k rows, in copies of Dittofeed's "Segment":
#   seg_plain  no row-level security (the baseline: explicit WHERE "workspaceId" = ...)
#   seg_rls    tenancy.enable_rls: "workspaceId" = (SELECT tenancy.current_workspace_id())
#   seg_cs     the common unwrapped policy: "workspaceId" = current_setting('app.workspace_id')::uuid
#   seg_hier   tenancy.enable_rls(hierarchy => true)
#   seg_inl, seg_hier_inl  the form for Citus (distributed => true): no sub-select, the context
#              functions called per row (issue 19)
#   *_n        the same without any index (a query the workspace index cannot serve: the policy
#              is evaluated per row)
# Every transaction sets both settings transaction-locally (as the application would), runs one
# query, and commits; all variants pay the same for that. Queries run as an application role
# (tenancy.create_app_role): neither superuser nor owner, so the policies apply.
#
# Index advice: "WHERE "workspaceId" = $1 AND status = 'Running' ORDER BY "definitionUpdatedAt"
# DESC LIMIT 50" on three copies with Dittofeed's indexes and foreign keys: as is, after applying
# tenancy.index_advice() to it, and with an index tailored to the query.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-4}  # per variant and round
ROUNDS=${BENCH_ROUNDS:-5}
DB=bench_rls
APP=bench_rls_app
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- building 1,000 workspaces x 200 segments" >&2
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -d $DB -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(10, 9, 900, 0)" >/dev/null
psql -d $DB >/dev/null <<SQL
SET client_min_messages = warning;
INSERT INTO "Segment" ("workspaceId", name, definition, status, "definitionUpdatedAt")
SELECT w.id, 'segment-' || i, jsonb_build_object('entryNode', jsonb_build_object('type', 'Trait', 'path', 'plan')),
       (ARRAY['Running', 'Paused', 'NotStarted']::"SegmentStatus"[])[1 + (i + abs(hashtext(w.id::text)::bigint)) % 3],
       timestamp '2026-01-01' + ((i * 7919 + abs(hashtext(w.id::text)::bigint)) % 100000) * interval '1 minute'
  FROM "Workspace" w, generate_series(1, 200) i
 WHERE w.status = 'Active';
DO \$\$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seg_plain', 'seg_rls', 'seg_cs', 'seg_hier', 'seg_inl', 'seg_hier_inl', 'seg_adv_before', 'seg_adv_after', 'seg_adv_tailored'] LOOP
        EXECUTE format('CREATE TABLE %I (LIKE "Segment" INCLUDING ALL)', t);
        EXECUTE format('INSERT INTO %I SELECT * FROM "Segment"', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['seg_plain_n', 'seg_rls_n', 'seg_cs_n', 'seg_inl_n', 'seg_hier_n', 'seg_hier_inl_n'] LOOP
        EXECUTE format('CREATE TABLE %I (LIKE "Segment" INCLUDING DEFAULTS)', t);
        EXECUTE format('INSERT INTO %I SELECT * FROM "Segment"', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['seg_adv_before', 'seg_adv_after', 'seg_adv_tailored'] LOOP
        EXECUTE format('ALTER TABLE %I ADD FOREIGN KEY ("workspaceId") REFERENCES "Workspace"(id) ON DELETE CASCADE ON UPDATE CASCADE', t);
        EXECUTE format('ALTER TABLE %I ADD FOREIGN KEY ("subscriptionGroupId") REFERENCES "SubscriptionGroup"(id) ON DELETE SET NULL', t);
    END LOOP;
END \$\$;
SELECT tenancy.enable_rls('seg_rls');
SELECT tenancy.enable_rls('seg_rls_n');
SELECT tenancy.enable_rls('seg_hier', hierarchy => true);
SELECT tenancy.enable_rls('seg_inl', distributed => true);
SELECT tenancy.enable_rls('seg_inl_n', distributed => true);
SELECT tenancy.enable_rls('seg_hier_inl', hierarchy => true, distributed => true);
SELECT tenancy.enable_rls('seg_hier_n', hierarchy => true);
SELECT tenancy.enable_rls('seg_hier_inl_n', hierarchy => true, distributed => true);
ALTER TABLE seg_cs ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_setting ON seg_cs USING ("workspaceId" = current_setting('app.workspace_id')::uuid);
ALTER TABLE seg_cs_n ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_setting ON seg_cs_n USING ("workspaceId" = current_setting('app.workspace_id')::uuid);
CREATE INDEX ON seg_adv_tailored ("workspaceId", status, "definitionUpdatedAt" DESC);
SELECT tenancy.create_app_role('$APP');
SQL
# The advice for seg_adv_after, applied as printed (CREATE INDEX CONCURRENTLY: outside a transaction).
psql -d $DB -At -c "SELECT ddl FROM tenancy.index_advice() WHERE table_name = 'seg_adv_after'::regclass" >"$work/advice.sql"
psql -d $DB -f "$work/advice.sql"
psql -d $DB -c "VACUUM ANALYZE" -c "CHECKPOINT"

# One transaction per request: both settings set transaction-locally, one query. Workspace ids
# go in as literals, as an application sends them; each variant is 10 scripts (10 root
# workspaces, or the 10 parents), which pgbench picks from at random.
PICK=(17 101 202 303 404 505 606 707 808 899)
uuid_of() { psql -d $DB -At -c "SELECT fixture.ws_id('$1', $2)"; }
script() { # name kind index query-template ("@WS@" = the workspace, "@FAMILY@" = parent and children)
    local k ws family c
    for k in $(seq 0 9); do
        if [ "$2" = parent ]; then
            ws=$(uuid_of parent $((k + 1)))
            family="'$ws'"
            for c in $(seq 1 9); do family="$family, '$(uuid_of child $(((k + 1) * 1000 + c)))'"; done
        else
            ws=$(uuid_of root "${PICK[$k]}")
            family="'$ws'"
        fi
        cat >"$work/$1.$k.sql" <<EOT
BEGIN;
SELECT set_config('tenancy.workspace_id', '$ws', true), set_config('app.workspace_id', '$ws', true);
$(echo "$3" | sed -e "s/@WS@/'$ws'/g" -e "s/@FAMILY@/$family/g");
END;
EOT
    done
}
list='SELECT id, name FROM %s ORDER BY name LIMIT 50'
script idx_where root "$(printf "$list" 'seg_plain WHERE "workspaceId" = @WS@')"
script idx_tenancy root "$(printf "$list" seg_rls)"
script idx_tenancy_where root "$(printf "$list" 'seg_rls WHERE "workspaceId" = @WS@')"
script idx_setting root "$(printf "$list" seg_cs)"
script idx_inline root "$(printf "$list" seg_inl)"
count='SELECT count(*) FROM %s'
script seq_where root "$(printf "$count" 'seg_plain_n WHERE "workspaceId" = @WS@')"
script seq_tenancy root "$(printf "$count" seg_rls_n)"
script seq_setting root "$(printf "$count" seg_cs_n)"
script seq_inline root "$(printf "$count" seg_inl_n)"
script hier_seq_in parent "$(printf "$count" 'seg_plain_n WHERE "workspaceId" IN (@FAMILY@)')"
script hier_seq_tenancy parent "$(printf "$count" seg_hier_n)"
script hier_seq_inline parent "$(printf "$count" seg_hier_inl_n)"
lookup="SELECT id FROM %s WHERE name = 'segment-7'%s"
script hier_in parent "$(printf "$lookup" seg_plain ' AND "workspaceId" IN (@FAMILY@)')"
script hier_tenancy parent "$(printf "$lookup" seg_hier "")"
script hier_inline parent "$(printf "$lookup" seg_hier_inl "")"
recent='SELECT id, name FROM %s ORDER BY "definitionUpdatedAt" DESC LIMIT 50'
script hier_recent_in parent "$(printf "$recent" 'seg_plain WHERE "workspaceId" IN (@FAMILY@)')"
script hier_recent_tenancy parent "$(printf "$recent" seg_hier)"
script hier_recent_inline parent "$(printf "$recent" seg_hier_inl)"
running="SELECT id, name FROM %s WHERE \"workspaceId\" = @WS@ AND status = 'Running' ORDER BY \"definitionUpdatedAt\" DESC LIMIT 50"
for t in before after tailored; do script "adv_$t" root "$(printf "$running" "seg_adv_$t")"; done

# One pgbench run per group and round, every variant's scripts mixed at random: all variants of a
# group meet the same moment of the shared machine, transaction by transaction. pgbench reports
# each script's average latency; a variant's latency is the transaction-weighted mean of its 10.
lat_of_group() { # variants...
    local files=() v f
    for v in "$@"; do for f in "$work/$v".*.sql; do files+=(-f "$f"); done; done
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U "$APP" -c 1 -j 1 -M extended -T $((SECONDS_PER_RUN * $#)) "${files[@]}" $DB 2>"$work/err" \
        | awk '/^SQL script [0-9]+:/ {n = split($4, p, "/"); v = p[n]; sub(/\.[0-9]+\.sql$/, "", v)}
               /^ - [0-9]+ transactions/ {tx = $2}
               /^ - latency average = / {s[v] += tx * $5; t[v] += tx}
               END {for (v in s) if (t[v] > 0) printf "%s %.6f\n", v, s[v] / t[v]}' | grep . || { cat "$work/err" >&2; return 1; }
}

groups=("idx_where idx_tenancy idx_tenancy_where idx_setting idx_inline" "seq_where seq_tenancy seq_setting seq_inline"
        "hier_in hier_tenancy hier_inline" "hier_recent_in hier_recent_tenancy hier_recent_inline"
        "hier_seq_in hier_seq_tenancy hier_seq_inline" "adv_before adv_after adv_tailored")
results="$work/results"
: >"$results"
for g in "${groups[@]}"; do SECONDS_PER_RUN=1 lat_of_group $g >/dev/null; done # warm-up
for r in $(seq 1 "$ROUNDS"); do
    for g in "${groups[@]}"; do
        lat_of_group $g | sed "s/\$/ $r/" >>"$results"
    done
    echo "   round $r/$ROUNDS done" >&2
done
# latency (ms) median over rounds; ratio: median over rounds of baseline latency / variant latency
med() { awk -v v="$1" '$1 == v {print $2}' "$results" | median; }
paired() { # variant baseline
    awk -v v="$1" -v b="$2" '$1 == v {x[$3] = $2} $1 == b {y[$3] = $2}
        END {for (r in x) if (x[r] > 0) printf "%.4f\n", y[r] / x[r]}' "$results" | median
}
line() { # label variant baseline goal
    printf '  %-62s %9.3f  %7.3f  %s\n' "$1" "$(med "$2")" "$(paired "$2" "$3")" "$4"
}
echo
echo "$ROUNDS rounds; per round one pgbench run per group, its variants mixed transaction by transaction (1 client)"
echo "columns: median transaction latency (ms: BEGIN, set context, the query, END); speed ratio = median over rounds of baseline latency / latency"
echo "indexed workspace-scoped list (ORDER BY name LIMIT 50 of a workspace's 204 rows):"
line "baseline: explicit WHERE, no RLS" idx_where idx_where ""
line "tenancy policy, no WHERE" idx_tenancy idx_where "(goal >= 0.95)"
line "tenancy policy + the application's own WHERE" idx_tenancy_where idx_where ""
line "unwrapped current_setting('app.workspace_id')::uuid policy" idx_setting idx_where ""
line "tenancy policy, form for Citus (no sub-select)" idx_inline idx_where ""
echo "no index the workspace can use (count(*) of a workspace, sequential scan of 204k rows):"
line "baseline: explicit WHERE, no RLS" seq_where seq_where ""
line "tenancy policy (initplan: compared once per row as a constant)" seq_tenancy seq_where ""
line "unwrapped current_setting policy (called per row)" seq_setting seq_where ""
line "tenancy policy, form for Citus (current_workspace_id() per row)" seq_inline seq_where ""
echo "parent reading its 9 active children (hierarchy option), against an explicit IN list of 10 ids:"
line "point lookup by name, baseline: WHERE ... IN (...)" hier_in hier_in ""
line "point lookup by name, tenancy hierarchy policy" hier_tenancy hier_in "(goal >= 0.9)"
line "point lookup by name, hierarchy, form for Citus" hier_inline hier_in ""
line "50 most recent of 2,040 rows, baseline: IN (...)" hier_recent_in hier_recent_in ""
line "50 most recent of 2,040 rows, tenancy hierarchy policy" hier_recent_tenancy hier_recent_in "(goal >= 0.9)"
line "50 most recent of 2,040 rows, hierarchy, form for Citus" hier_recent_inline hier_recent_in ""
echo "parent counting its family's rows without an index (sequential scan of 204k rows):"
line "baseline: WHERE ... IN (...), no RLS" hier_seq_in hier_seq_in ""
line "tenancy hierarchy policy (initplan array)" hier_seq_tenancy hier_seq_in ""
line "hierarchy, form for Citus (readable_workspace_ids() per row, one lookup per statement)" hier_seq_inline hier_seq_in ""
echo "index advice: WHERE \"workspaceId\" = \$1 AND status = 'Running' ORDER BY \"definitionUpdatedAt\" DESC LIMIT 50:"
line "Dittofeed's indexes (unique (workspaceId, name))" adv_before adv_before ""
line "after applying tenancy.index_advice()" adv_after adv_before ""
line "with (workspaceId, status, definitionUpdatedAt DESC)" adv_tailored adv_before ""
echo "  advice applied to the copy:"
sed 's/^/    /' "$work/advice.sql"
