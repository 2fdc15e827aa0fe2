#!/usr/bin/env bash
# `make bench`: every benchmark reports ratios against a baseline measured in the same run,
# as medians of repeated, interleaved runs (the machines are shared and noisy).
#   bench/run.sh [name...]     names: context quota stats stats-scale rls instructions advice admission monitoring stamps registry caching encryption (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${TENANCY_RUN_DIR:-/tmp/tenancy-run}
export TENANCY_RUN_DIR=$RUN_DIR
export BENCH_PORT=${TENANCY_BENCH_PORT:-25451}
export BENCH_PORT_PLAIN=${TENANCY_BENCH_PORT_PLAIN:-25452}
export BENCH_PORT_STATS=${TENANCY_BENCH_PORT_STATS:-25453}
OUT=${TENANCY_BENCH_OUT:-$RUN_DIR/bench}
mkdir -p "$OUT"

cleanup() {
    scripts/cluster.sh stop bench >/dev/null 2>&1 || true
    scripts/cluster.sh stop bench-plain >/dev/null 2>&1 || true
}
trap cleanup EXIT

benches=("$@")
[ ${#benches[@]} -eq 0 ] && benches=(context quota stats stats-scale rls instructions advice admission monitoring stamps registry caching encryption)
# instructions.sh counts with valgrind (callgrind): install it where missing
if [[ " ${benches[*]} " == *" instructions "* ]] && ! command -v valgrind >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind
fi
scripts/cluster.sh start bench "$BENCH_PORT" --fresh --conf "max_parallel_workers_per_gather = 0" --conf "jit = off"
for b in "${benches[@]}"; do
    echo "=== bench: $b"
    "bench/$b.sh" | tee "$OUT/$b.txt"
done
echo "results saved in $OUT"
