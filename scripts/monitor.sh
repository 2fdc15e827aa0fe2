#!/usr/bin/env bash
# `make monitor`: Debian's prometheus-postgres-exporter (with monitoring/queries.yaml) and a
# Prometheus of their own (with monitoring/alerts.yml and the console monitoring/consoles/tenancy.html)
# watching the demo cluster of `make demo`; `make monitor-stop` stops them.
#
#   scripts/monitor.sh [start]   stop a previous instance, then start both (idempotent)
#   scripts/monitor.sh stop
#
# Needs the demo cluster running (127.0.0.1:$TENANCY_DEMO_PORT, default 25432, database
# dittofeed); builds nothing. Creates the login role tenancy_exporter (member of pg_monitor) there
# if missing. Both programs run in the background as the invoking user; their config, data, logs
# and pid files are in $TENANCY_RUN_DIR/monitor (default /tmp/tenancy-run/monitor).
# Ports: TENANCY_MONITOR_EXPORTER_PORT (default 25469), TENANCY_MONITOR_PROMETHEUS_PORT (25470).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

. scripts/pg.env
PG_PORT=${TENANCY_DEMO_PORT:-25432}
EXPORTER_PORT=${TENANCY_MONITOR_EXPORTER_PORT:-25469}
PROM_PORT=${TENANCY_MONITOR_PROMETHEUS_PORT:-25470}
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
MON=$RUN_DIR/monitor
DB=dittofeed
ROLE=tenancy_exporter
EXPORTER=/usr/bin/prometheus-postgres-exporter
PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool
CONSOLE_LIBRARIES=/usr/share/doc/prometheus/examples/console_libraries

log() { printf '[monitor] %s\n' "$*"; }
die() { printf '[monitor] %s\n' "$*" >&2; exit 1; }
psql() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

# 0 when GET http://127.0.0.1:PORT/PATH answers 200 (bash's /dev/tcp: no curl needed)
http_ok() {
    local port=$1 path=$2 status=""
    { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$path" "$port" >&3
    read -r -t 5 status <&3 || true
    exec 3<&- 3>&-
    [[ $status == HTTP/1.?" 200"* ]]
}

# stop NAME BINARY: the process of $MON/NAME.pid, if it is still that program
stop_one() {
    local name=$1 binary=$2 pidfile="$MON/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$binary" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$binary" ] || break
            sleep 0.1
        done
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$binary" ]; then
            log "$name (pid $pid) did not stop in 10 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "$name stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_one prometheus "$PROMETHEUS"
    stop_one exporter "$EXPORTER"
}

# start_bg NAME BINARY ARGS...: in the background, detached from this shell's session
start_bg() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$MON/$name.log" 2>&1 &
    echo $! >"$MON/$name.pid"
}

# wait_ready NAME PORT PATH
wait_ready() {
    local name=$1 port=$2 path=$3 pid
    pid=$(cat "$MON/$name.pid")
    for _ in $(seq 300); do
        # gone, or a zombie (not yet reaped by this shell)
        if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
            tail -20 "$MON/$name.log" >&2 || true
            die "$name exited at start (log: $MON/$name.log)"
        fi
        http_ok "$port" "$path" && return 0
        sleep 0.1
    done
    tail -20 "$MON/$name.log" >&2 || true
    # what it answers, if anything (the exporter answers 500 with the failed queries' errors)
    curl -s -m 5 "http://127.0.0.1:$port$path" 2>/dev/null | head -5 >&2 || true
    die "$name does not answer 200 on http://127.0.0.1:$port$path after 30 s (log: $MON/$name.log)"
}

start() {
    for f in "$EXPORTER" "$PROMETHEUS" "$PROMTOOL"; do
        [ -x "$f" ] || die "$f is missing: run \`make setup\` (Debian packages prometheus and prometheus-postgres-exporter)"
    done
    mkdir -p "$MON"
    stop

    # the demo cluster must be there: this script starts nothing else and builds nothing
    if ! psql -d "$DB" -c "SELECT 1" >/dev/null 2>&1; then
        die "no demo cluster on 127.0.0.1:$PG_PORT with database $DB: start it with \`make demo\` first"
    fi
    if [ "$(psql -At -d "$DB" -c "SELECT to_regprocedure('tenancy.workspace_metrics(integer)') IS NOT NULL")" != t ]; then
        die "database $DB has no tenancy.workspace_metrics() (extension missing or older than 0.5.0): run \`make demo\` again, or ALTER EXTENSION tenancy UPDATE in $DB"
    fi
    for port in "$EXPORTER_PORT" "$PROM_PORT"; do
        if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
            exec 3<&- 3>&-
            die "port $port is already in use by another program (set TENANCY_MONITOR_EXPORTER_PORT / TENANCY_MONITOR_PROMETHEUS_PORT)"
        fi
    done

    # the exporter's role: in pg_monitor, which may run the metrics functions and read the stats
    psql -d "$DB" -c "SET client_min_messages = warning" -c "DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN CREATE ROLE $ROLE LOGIN; END IF;
        END \$\$" -c "GRANT pg_monitor TO $ROLE"

    cat >"$MON/prometheus.yml" <<EOT
# written by scripts/monitor.sh at every start
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/monitoring/alerts.yml
scrape_configs:
  - job_name: tenancy
    static_configs:
      - targets: ['127.0.0.1:$EXPORTER_PORT']
EOT
    "$PROMTOOL" check config "$MON/prometheus.yml" >"$MON/promtool.log" 2>&1 \
        || { cat "$MON/promtool.log" >&2; die "promtool check config failed"; }

    log "starting prometheus-postgres-exporter on 127.0.0.1:$EXPORTER_PORT"
    DATA_SOURCE_NAME="host=127.0.0.1 port=$PG_PORT user=$ROLE dbname=$DB sslmode=disable" \
        start_bg exporter "$EXPORTER" \
        --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
        --extend.query-path="$ROOT/monitoring/queries.yaml" \
        --disable-settings-metrics
    wait_ready exporter "$EXPORTER_PORT" /metrics

    log "starting prometheus on 127.0.0.1:$PROM_PORT"
    start_bg prometheus "$PROMETHEUS" \
        --config.file="$MON/prometheus.yml" \
        --storage.tsdb.path="$MON/data" \
        --storage.tsdb.retention.time=7d \
        --web.listen-address="127.0.0.1:$PROM_PORT" \
        --web.console.templates="$ROOT/monitoring/consoles" \
        --web.console.libraries="$CONSOLE_LIBRARIES"
    wait_ready prometheus "$PROM_PORT" /-/ready

    cat <<EOT

== monitoring the demo cluster (database $DB on 127.0.0.1:$PG_PORT), scraped every 5 s
  console:     http://127.0.0.1:$PROM_PORT/consoles/tenancy.html
  prometheus:  http://127.0.0.1:$PROM_PORT/   (alerts: http://127.0.0.1:$PROM_PORT/alerts)
  exporter:    http://127.0.0.1:$EXPORTER_PORT/metrics
  grafana:     import $ROOT/monitoring/grafana/tenancy.json (a Prometheus data source pointing at the above)
  stop:        make monitor-stop
  logs:        $MON/prometheus.log, $MON/exporter.log
EOT
}

case "${1:-start}" in
start) start ;;
stop)
    stop
    echo "monitoring stopped"
    ;;
*)
    echo "usage: monitor.sh [start|stop]" >&2
    exit 2
    ;;
esac
