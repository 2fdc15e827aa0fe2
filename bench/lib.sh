# Shell helpers shared by the benchmark scripts (sourced from the repository root).
. scripts/pg.env
PGBENCH=$PG_BIN/pgbench
# median: of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# ratio A B: A / B with three decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
