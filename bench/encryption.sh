#!/usr/bin/env bash
# Per-workspace encryption (issue 18):
# 1. encrypt and decrypt of a 100-byte secret in one backend (one core): calls per second,
#    100,000 calls in one statement, medians of rounds; beside it the same statement calling
#    length() (the cost of the loop itself);
# 2. Dittofeed's secret read (query Q10: a workspace's secret by name, in the request
#    transaction after set_workspace, as the application role under the isolation policy) from
#    a plaintext "Secret" and from a copy whose value is encrypted (decrypted in the query), two
#    pgbench runs at the same time, alternating which is first; ratio = median over rounds of
#    TPS(encrypted) / TPS(plaintext) (goal >= 0.9). 1,000 workspaces, 5 secrets each.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-2}
DB=bench_crypto
APP=bench_crypto_app
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
psql() { command psql -X -q -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
# the master keyring, readable by the server's user alone
keyfile="$(scripts/cluster.sh dir bench)/bench-master.keys"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$keyfile"
echo >>"$keyfile"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$keyfile"
chmod 0600 "$keyfile"
psql -d postgres -c "ALTER SYSTEM SET tenancy.master_key_file = '$keyfile'" -c "SELECT pg_reload_conf()" >/dev/null
psql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
echo "-- building: 1,000 workspaces, 5 secrets each, plaintext and encrypted" >&2
psql -d $DB -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql \
    -c "SELECT count(*) FROM fixture.generate(0, 0, 1000, 1)" >/dev/null
psql -d $DB >/dev/null <<SQL
SET client_min_messages = warning;
INSERT INTO "Secret" ("workspaceId", name, value, "configValue")
SELECT w.id, p, 'key-' || md5(w.id::text || p) || md5(p || w.id::text) || repeat('x', 36), jsonb_build_object('apiKey', md5(p))
  FROM "Workspace" w, unnest(ARRAY['sendgrid', 'twilio', 'resend', 'postmark', 'webhook']) p
 WHERE w.status = 'Active'
ON CONFLICT DO NOTHING;
CREATE TABLE "SecretEnc" (LIKE "Secret" INCLUDING ALL);
ALTER TABLE "SecretEnc" DROP COLUMN value, DROP COLUMN "configValue",
    ADD COLUMN "valueCiphertext" bytea, ADD COLUMN "configValueCiphertext" bytea;
INSERT INTO "SecretEnc" (id, "workspaceId", name, "createdAt", "updatedAt", "valueCiphertext", "configValueCiphertext")
SELECT id, "workspaceId", name, "createdAt", "updatedAt", tenancy.encrypt(value, "workspaceId"), tenancy.encrypt("configValue"::text, "workspaceId")
  FROM "Secret";
SELECT count(*) FROM tenancy.enable_rls_all();
SELECT tenancy.create_app_role('$APP');
SQL
psql -d $DB -c "VACUUM ANALYZE" >/dev/null

echo "-- 1. calls per second in one backend (100-byte secret)" >&2
N=100000
ws=$(psql -d $DB -At -c "SELECT fixture.ws_id('root', 1)")
timed() { # statement: seconds
    psql -d $DB -At -c "SELECT set_config('tenancy.workspace_id', '$ws', false)" -c '\timing on' -c "$1" \
        | awk '/^Time: / {print $2 / 1000}'
}
: >"$work/calls"
for r in $(seq 1 "$ROUNDS"); do
    base=$(timed "SELECT count(length(v)) FROM generate_series(1, $N), (SELECT repeat('s', 100)::bytea v) s")
    e=$(timed "SELECT count(tenancy.encrypt(v)) FROM generate_series(1, $N), (SELECT repeat('s', 100)::bytea v) s")
    d=$(timed "SELECT count(tenancy.decrypt(c)) FROM generate_series(1, $N), (SELECT tenancy.encrypt(repeat('s', 100)::bytea) c) s")
    echo "$base $e $d" >>"$work/calls"
done
persec() { awk -v n=$N '{print n / $'"$1"'}' "$work/calls" | median; }

echo "-- 2. Dittofeed's secret read, plaintext against encrypted ($ROUNDS rounds of ${SECONDS_PER_RUN}s)" >&2
cat >"$work/plain.sql" <<'EOT'
\set n random(1, 1000)
BEGIN;
SELECT tenancy.set_workspace(md5('tenancy-fixture/root/' || :n)::uuid);
SELECT id, name, value, "configValue" FROM "Secret" WHERE "workspaceId" = md5('tenancy-fixture/root/' || :n)::uuid AND name = 'sendgrid' LIMIT 1;
COMMIT;
EOT
cat >"$work/enc.sql" <<'EOT'
\set n random(1, 1000)
BEGIN;
SELECT tenancy.set_workspace(md5('tenancy-fixture/root/' || :n)::uuid);
SELECT id, name, tenancy.decrypt_text("valueCiphertext") AS value, tenancy.decrypt_text("configValueCiphertext")::jsonb AS "configValue" FROM "SecretEnc" WHERE "workspaceId" = md5('tenancy-fixture/root/' || :n)::uuid AND name = 'sendgrid' LIMIT 1;
COMMIT;
EOT
run() { # script: TPS
    "$PGBENCH" -n -h 127.0.0.1 -p "$BENCH_PORT" -U "$APP" -c "$CLIENTS" -j 1 -T "$SECONDS_PER_RUN" -M prepared \
        -f "$work/$1.sql" $DB 2>"$work/$1.err" | awk '/^tps = / {print $3}'
}
: >"$work/reads"
for r in $(seq 0 "$ROUNDS"); do # round 0: warm-up
    run plain >"$work/p" &
    p1=$!
    run enc >"$work/e" &
    p2=$!
    wait "$p1" "$p2"
    [ -s "$work/p" ] && [ -s "$work/e" ] || { cat "$work"/*.err >&2; exit 1; }
    [ "$r" -gt 0 ] && echo "$(cat "$work/e") $(cat "$work/p")" >>"$work/reads" && echo "   round $r/$ROUNDS: encrypted $(cat "$work/e") TPS, plaintext $(cat "$work/p")" >&2
done
echo
echo "encrypt / decrypt of a 100-byte secret, one backend, $N calls per statement, medians of $ROUNDS rounds"
printf '%-44s %12.0f\n' "encrypt, calls per second per core" "$(persec 2)"
printf '%-44s %12.0f\n' "decrypt, calls per second per core" "$(persec 3)"
printf '%-44s %12.0f\n' "length() (the loop itself), per second" "$(persec 1)"
echo
echo "Dittofeed secret read (Q10 in the request transaction, application role, RLS), $CLIENTS clients each, both at once"
printf '%-44s %12s\n' "TPS encrypted" "$(awk '{print $1}' "$work/reads" | median)"
printf '%-44s %12s\n' "TPS plaintext" "$(awk '{print $2}' "$work/reads" | median)"
printf '%-44s %12s  (goal >= 0.9)\n' "ratio (median of rounds)" "$(awk '$2 > 0 {printf "%.4f\n", $1 / $2}' "$work/reads" | median)"
psql -d postgres -c "ALTER SYSTEM RESET tenancy.master_key_file" -c "SELECT pg_reload_conf()" >/dev/null
