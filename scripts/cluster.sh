#!/usr/bin/env bash
# Scratch PostgreSQL 15 clusters for the demo, the tests and the benchmarks.
#
#   scripts/cluster.sh start NAME PORT [--fresh] [--no-preload] [--standby-of PORT] [--conf 'key = value']...
#     --standby-of PORT: a new cluster is a streaming standby of the primary on PORT
#     (pg_basebackup -R), not an initdb.
#   scripts/cluster.sh stop NAME
#   scripts/cluster.sh restart NAME [-m fast|immediate]
#   scripts/cluster.sh dir NAME
#
# Each cluster lives in $TENANCY_RUN_DIR/NAME (default /tmp/tenancy-run/NAME), a directory the
# postgres user owns, so it works whatever folder the project was cloned into. Only the server
# runs as postgres (initdb and postgres refuse root); clients connect as the database superuser
# "postgres" over 127.0.0.1 with trust authentication (loopback only, scratch data only).
set -euo pipefail

. "$(dirname "$0")/pg.env"
BIN=$PG_BIN
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}

# The server must not inherit RUST_BACKTRACE: pgrx would append Rust backtraces to the
# DETAIL of errors that pass through the extension's hooks.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
    else
        env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
    fi
}

cmd=${1:?usage: cluster.sh start|stop|restart|dir NAME ...}
name=${2:?cluster name}
dir="$RUN_DIR/$name"
data="$dir/data"

case "$cmd" in
start)
    port=${3:?port}
    shift 3
    fresh=0 preload="shared_preload_libraries = 'tenancy'" extra=() primary=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --fresh) fresh=1 ;;
        --no-preload) preload="" ;;
        --standby-of) primary=$2; shift ;;
        --conf) extra+=("$2"); shift ;;
        *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    mkdir -p "$RUN_DIR"
    chmod 755 "$RUN_DIR"
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ "$fresh" = 1 ]; then rm -rf "$dir"; fi
    if [ ! -f "$data/PG_VERSION" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
        if [ -n "$primary" ]; then
            # a streaming standby: a base backup of the primary with standby.signal and
            # primary_conninfo (-R); the primary's include line is replaced by ours below
            as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$data" -R -X stream -c fast \
                >"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; exit 1; }
            sed -i '/^include = /d' "$data/postgresql.conf"
        else
            as_pg "$BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
                || { cat "$dir/initdb.log" >&2; exit 1; }
        fi
    fi
    # Our settings go in an included file, rewritten at every start.
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "$preload"
        echo "fsync = off                  # scratch data only"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
        echo "shared_buffers = 256MB"
        echo "max_connections = 200"
        echo "max_prepared_transactions = 10"
        echo "log_min_messages = warning"
        echo "log_line_prefix = '%m [%p] %d %e '   # %e: the SQLSTATE (scripts/test.sh looks for XX000)"
        for line in "${extra[@]}"; do echo "$line"; done
    } >"$dir/tenancy.conf"
    chmod 644 "$dir/tenancy.conf"
    grep -q "^include = '$dir/tenancy.conf'" "$data/postgresql.conf" \
        || echo "include = '$dir/tenancy.conf'" >>"$data/postgresql.conf"
    as_pg "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/server.log" >&2; exit 1; }
    ;;
stop)
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    ;;
restart)
    mode=fast
    [ "${3:-}" = "-m" ] && mode=${4:?mode}
    as_pg "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -m "$mode" -w -t 60 restart >/dev/null
    ;;
dir)
    echo "$dir"
    ;;
*)
    echo "cluster.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
