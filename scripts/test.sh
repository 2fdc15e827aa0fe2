#!/usr/bin/env bash
# Run the test layers and print a summary per layer. Exit non-zero if any layer failed.
#   scripts/test.sh all|unit|regress|isolation|live|node|package
# LIVE_TEST=name runs one file of tests/ only (e.g. LIVE_TEST=replica scripts/test.sh live).
# Every server started here is stopped on exit, also on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

. scripts/pg.env
PG_CONFIG=$PG_BIN/pg_config
PGBIN=$PG_BIN
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
export TENANCY_RUN_DIR=$RUN_DIR
# Fixed ports of this project (demo 25432, regress 25441, live 25442, live tests' own clusters and
# pgbouncers 25443-25450, bench 25451-25453, replica 25454-25455, isolation 25456, upgrade
# 25457-25458, index advice 25460-25462, its benchmark 25461,
# admission crash 25464, pgbouncer admission 25465, bench admission 25466-25467, exporter 25468, Prometheus test exporter 25471 and Prometheus 25472, dropped-databases exporter 25475, make monitor 25469-25470, bench monitoring exporters 25473-25474, change stamps 25477-25479, bench registry pgbouncer 25480, bench caching 25481, encryption 25482, Citus coordinators and workers 25483-25488) lie below Linux's ephemeral range (32768-60999):
# inside it, a burst of outgoing connections (the fuzz and pgbouncer tests open hundreds) can
# hold a port a cluster is about to listen on ("Address already in use", seen in a CI run).
REGRESS_PORT=${TENANCY_REGRESS_PORT:-25441}
LIVE_PORT=${TENANCY_LIVE_PORT:-25442}
what=${1:-all}

declare -A RESULT
order=()

# Server logs of this run. Every `cluster.sh start` rewrites the cluster's tenancy.conf, so the
# clusters started by this run are those whose tenancy.conf is newer than a stamp touched when
# the run begins; of those, the test clusters (regress, live, and the live tests' own, it-*),
# not scratch clusters someone else started meanwhile. A log kept from an earlier run (a start
# without --fresh) is read only from where it ended when this run began (same inode).
LOG_STAMP="$RUN_DIR/.test-run-stamp"
declare -A LOG_START
mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"
touch "$LOG_STAMP"
for f in "$RUN_DIR"/*/server.log; do
    [ -f "$f" ] && LOG_START[$f]=$(stat -c '%i %s' "$f")
done

cleanup() {
    scripts/cluster.sh stop regress >/dev/null 2>&1 || true
    scripts/cluster.sh stop live >/dev/null 2>&1 || true
    scripts/cluster.sh stop isolation >/dev/null 2>&1 || true
    pkill -f "$RUN_DIR/pgbouncer" >/dev/null 2>&1 || true
}
trap cleanup EXIT

record() { order+=("$1"); RESULT[$1]=$2; }

# "N passed, M failed" summed over every cargo "test result:" line of a log.
cargo_counts() {
    grep -E '^test result:' "$1" | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed", p, f}'
}

psql_at() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres "${@:2}"; }

# The fixture database every regress and live test clones: extension + Dittofeed schema + data.
make_fixture_db() { # port dbname
    psql_at "$1" -d postgres -c "DROP DATABASE IF EXISTS $2" -c "CREATE DATABASE $2" &&
        psql_at "$1" -d "$2" -c "CREATE EXTENSION tenancy" -f fixture/dittofeed.sql -f fixture/generate.sql \
            -c "SELECT count(*) AS workspaces FROM fixture.generate(2, 2, 3, 10)" >/dev/null
}

# A fresh inode for the installed library before anything installs over it (scripts/install.sh).
unlink_installed_library() {
    scripts/install.sh --fresh-inode-only
}

layer_unit() {
    echo "=== layer 1: #[pg_test] (cargo pgrx test, shared_preload_libraries = 'tenancy')"
    mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"
    local pgdata="$RUN_DIR/pgrx-test-data"
    rm -rf "$pgdata"
    local runas=()
    if [ "$(id -u)" = 0 ]; then
        # the server runs as postgres (via sudo): give it a data folder it owns
        mkdir -p "$pgdata" && chown postgres:postgres "$pgdata" && chmod 700 "$pgdata"
        runas=(--runas postgres --pgdata "$pgdata")
    fi
    unlink_installed_library
    cargo pgrx test pg15 "${runas[@]}" 2>&1 | tee "$RUN_DIR/unit.log"
    local rc=${PIPESTATUS[0]}
    record "unit (#[pg_test])" "$rc $(cargo_counts "$RUN_DIR/unit.log")"
}

install_release() {
    [ -n "${INSTALLED:-}" ] && return 0
    echo "=== installing the release build"
    scripts/install.sh >"$RUN_DIR/install.log" 2>&1 \
        || { tail -30 "$RUN_DIR/install.log"; return 1; }
    INSTALLED=1
}

# Install the release build, start a fresh scratch cluster and build the fixture database.
# prepare_cluster LABEL NAME PORT DB: records LABEL as failed and returns 1 on any failure.
prepare_cluster() {
    mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"
    install_release || { record "$1" "1 install failed"; return 1; }
    scripts/cluster.sh start "$2" "$3" --fresh || { record "$1" "1 cluster failed"; return 1; }
    make_fixture_db "$3" "$4" || { record "$1" "1 fixture failed"; return 1; }
}

layer_regress() { # [LABEL]: the package layer runs it again against the installed package
    local label=${1:-regress (pg_test/)}
    echo "=== layer 2: pg_regress (pg_test/) on a scratch cluster, port $REGRESS_PORT ($label)"
    prepare_cluster "$label" regress "$REGRESS_PORT" tenancy_regress || return
    local out="$RUN_DIR/regress-out"
    rm -rf "$out" && mkdir -p "$out"
    local tests
    tests=$(sed -e 's/#.*//' pg_test/schedule | xargs)
    "$(dirname "$($PG_CONFIG --pgxs)")/../test/regress/pg_regress" \
        --use-existing --host=127.0.0.1 --port="$REGRESS_PORT" --user=postgres \
        --dbname=tenancy_regress --inputdir=pg_test --outputdir="$out" \
        $tests 2>&1 | tee "$RUN_DIR/regress.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ] && [ -f "$out/regression.diffs" ]; then
        echo "--- regression.diffs"; cat "$out/regression.diffs"
    fi
    local summary
    summary=$(grep -E 'tests passed|tests failed|failed \(ignoring|of [0-9]+ tests' "$RUN_DIR/regress.log" | tail -1)
    record "$label" "$rc $summary"
    scripts/cluster.sh stop regress
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The Debian package (scripts/package.sh, `make package`): installed into the system with
# apt-get, checked (every file it lists is there, the installed library is the package's, the
# install and upgrade scripts are in it), the regress suite run against it; then removed (its
# files must go) and the development build installed again.
layer_package() {
    local label="package (.deb)"
    echo "=== layer 5: Debian package, installed with apt-get; pg_regress against it"
    mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"
    install_release || { record "$label" "1 build failed"; return 1; }
    local deb
    deb=$(scripts/package.sh 2>"$RUN_DIR/package.log" | tail -1)
    [ -f "$deb" ] || { cat "$RUN_DIR/package.log"; record "$label" "1 package build failed"; return 1; }
    dpkg-deb -I "$deb" && dpkg-deb -c "$deb"
    unlink_installed_library
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall --allow-downgrades "./$deb" \
        >>"$RUN_DIR/package.log" 2>&1 || { tail -20 "$RUN_DIR/package.log"; record "$label" "1 apt-get install failed"; return 1; }
    local problems=() lib ext
    lib="$($PG_CONFIG --pkglibdir)/tenancy.so"
    ext="$($PG_CONFIG --sharedir)/extension"
    [ "$(dpkg-query -W -f '${Status}' postgresql-15-tenancy)" = "install ok installed" ] || problems+=("not installed")
    while read -r f; do [ -e "$f" ] || problems+=("missing $f"); done < <(dpkg -L postgresql-15-tenancy)
    cmp -s "$lib" target/package/stage"$lib" || problems+=("installed library is not the package's")
    # runs without Rust: the library needs only the C library and libgcc_s (declared Depends)
    local needed
    needed=$(objdump -p "$lib" | awk '/NEEDED/ {print $2}' | grep -Ev '^(libc\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$' || true)
    [ -z "$needed" ] || problems+=("library needs $needed")
    for f in tenancy.control "tenancy--$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1).sql" sql/tenancy--*.sql; do
        dpkg -L postgresql-15-tenancy | grep -qx "$ext/$(basename "$f")" || problems+=("$(basename "$f") not in the package")
    done
    if [ ${#problems[@]} -gt 0 ]; then
        printf 'package: %s\n' "${problems[@]}"; record "$label" "1 ${problems[*]}"
    else
        INSTALLED=1 layer_regress "$label"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q postgresql-15-tenancy >>"$RUN_DIR/package.log" 2>&1
    if [ -e "$lib" ] || [ -e "$ext/tenancy.control" ]; then
        echo "package: files left after apt-get remove"; RESULT[$label]="1 files left after apt-get remove"
    fi
    # put the development build back (the machine keeps a working install)
    INSTALLED= install_release || true
}

layer_live() {
    echo "=== layer 3: live-server Rust tests (tests/) on a scratch cluster, port $LIVE_PORT"
    prepare_cluster "live (tests/)" live "$LIVE_PORT" tenancy_fixture || return
    TENANCY_TEST_PORT=$LIVE_PORT TENANCY_TEST_CLUSTER=live TENANCY_TEST_TEMPLATE=tenancy_fixture \
        cargo test -p tenancy-it --release ${LIVE_TEST:+--test "$LIVE_TEST"} -- --test-threads=2 2>&1 | tee "$RUN_DIR/live.log"
    local rc=${PIPESTATUS[0]}
    record "live (tests/)" "$rc $(cargo_counts "$RUN_DIR/live.log")"
    [ -z "${LIVE_TEST:-}" ] && node_example
    scripts/cluster.sh stop live
}

# The node-postgres reference client (examples/node/) and its test, against the live cluster
# (its fixture database as template). Its dependencies come from package-lock.json (npm ci).
node_example() {
    local label="node example (examples/node/)"
    echo "=== node-postgres reference client (examples/node/), port $LIVE_PORT"
    if ! (cd examples/node && npm ci --no-audit --no-fund) >"$RUN_DIR/node.log" 2>&1; then
        tail -20 "$RUN_DIR/node.log"; record "$label" "1 npm ci failed"; return
    fi
    PGHOST=127.0.0.1 PGPORT=$LIVE_PORT TENANCY_TEST_TEMPLATE=tenancy_fixture \
        node --test examples/node/test/ 2>&1 | tee -a "$RUN_DIR/node.log"
    local rc=${PIPESTATUS[0]}
    record "$label" "$rc $(awk '/^# pass / {p=$3} /^# fail / {f=$3} END {printf "%d passed, %d failed", p, f}' "$RUN_DIR/node.log")"
}

layer_node() {
    prepare_cluster "node example (examples/node/)" live "$LIVE_PORT" tenancy_fixture || return
    node_example
    scripts/cluster.sh stop live
}

# Quota interleavings as PostgreSQL isolation specs (pg_test/isolation/), run by
# pg_isolation_regress on a scratch cluster with tenancy preloaded (the shared-memory path).
ISOLATION_PORT=${TENANCY_ISOLATION_PORT:-25456}
layer_isolation() {
    local label="isolation (specs)"
    echo "=== layer: pg_isolation_regress (pg_test/isolation/) on a scratch cluster, port $ISOLATION_PORT"
    mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"
    install_release || { record "$label" "1 install failed"; return; }
    scripts/cluster.sh start isolation "$ISOLATION_PORT" --fresh || { record "$label" "1 cluster failed"; return; }
    if ! psql_at "$ISOLATION_PORT" -d postgres -c "CREATE DATABASE tenancy_isolation" >/dev/null ||
        ! psql_at "$ISOLATION_PORT" -d tenancy_isolation -c "CREATE EXTENSION tenancy" >/dev/null; then
        record "$label" "1 database failed"; scripts/cluster.sh stop isolation; return
    fi
    local out="$RUN_DIR/isolation-out"
    rm -rf "$out" && mkdir -p "$out"
    "$(dirname "$($PG_CONFIG --pgxs)")/../test/isolation/pg_isolation_regress" \
        --use-existing --host=127.0.0.1 --port="$ISOLATION_PORT" --user=postgres \
        --dbname=tenancy_isolation --inputdir=pg_test/isolation --outputdir="$out" \
        --schedule=pg_test/isolation/schedule 2>&1 | tee "$RUN_DIR/isolation.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ] && [ -f "$out/regression.diffs" ]; then
        echo "--- regression.diffs"; cat "$out/regression.diffs"
    fi
    local summary
    summary=$(grep -E 'tests passed|tests failed|failed \(ignoring|of [0-9]+ tests' "$RUN_DIR/isolation.log" | tail -1)
    record "$label" "$rc ${summary:-no summary (see $RUN_DIR/isolation.log)}"
    scripts/cluster.sh stop isolation
}

# After the other layers: no internal error (SQLSTATE XX000, logged through log_line_prefix's %e,
# see scripts/cluster.sh) and no Rust panic in the server log of any cluster this run started.
# The #[pg_test] server's log is not kept: cargo-pgrx sends it to a pipe its test framework reads
# (shown only for a failing test), so that layer is not covered here.
layer_server_logs() {
    echo "=== server logs of the clusters started by this run: internal errors (XX000), Rust panics"
    local conf dir name log start from skip checked=0 found=0 report="$RUN_DIR/server-logs.txt"
    : >"$report"
    while IFS= read -r conf; do
        dir=$(dirname "$conf")
        name=$(basename "$dir")
        case "$name" in regress | live | isolation | it-*) ;; *) continue ;; esac
        log="$dir/server.log"
        [ -f "$log" ] || continue
        from=1
        start=${LOG_START[$log]:-}
        if [ -n "$start" ] && [ "${start%% *}" = "$(stat -c %i "$log")" ]; then
            from=$((${start#* } + 1))
        fi
        skip=$(head -c $((from - 1)) "$log" | wc -l)
        checked=$((checked + 1))
        # Citus reports a worker that went away (tests/citus.rs restarts one) as XX000 on the
        # coordinator: those messages (and the CONTEXT and STATEMENT lines of any XX000, whose
        # ERROR line is still checked), and only in the Citus test's clusters, are expected
        ignore='^$'
        case "$name" in it-citus-*) ignore='could not commit transaction for shard|WARNING:  FATAL:  terminating connection due to administrator command|connection to the remote node|server closed the connection|connection not open| XX000 (CONTEXT|STATEMENT):  ' ;; esac
        tail -c +"$from" "$log" | grep -n -a -E ' XX000 |panicked at|Rust panic' | grep -a -v -E "$ignore" \
            | awk -v f="$log" -v k="$skip" -F: '{ n = $1 + k; sub(/^[0-9]+:/, ""); print f ":" n ": " $0 }' >>"$report"
    done < <(find "$RUN_DIR" -mindepth 2 -maxdepth 2 -name tenancy.conf -newer "$LOG_STAMP" | sort)
    found=$(wc -l <"$report")
    if [ "$found" -gt 0 ]; then
        echo "--- internal errors or panics in server logs ($report):"
        cat "$report"
        record "server logs" "1 $found line(s) with XX000 or a panic in $checked log(s)"
    else
        record "server logs" "0 $checked log(s) checked, no XX000, no panic"
    fi
}

case "$what" in
all) layer_unit; layer_regress; layer_isolation; layer_live; layer_package ;;
unit) layer_unit ;;
regress) layer_regress ;;
live) layer_live ;;
node) layer_node ;;
package) layer_package ;;
isolation) layer_isolation ;;
*) echo "usage: test.sh all|unit|regress|isolation|live|node|package" >&2; exit 2 ;;
esac
layer_server_logs

echo
echo "=== summary"
status=0
for k in "${order[@]}"; do
    rc=${RESULT[$k]%% *}
    rest=${RESULT[$k]#* }
    if [ "$rc" = 0 ]; then mark=PASS; else mark=FAIL; status=1; fi
    printf '%-22s %s  %s\n' "$k" "$mark" "$rest"
done
exit $status
