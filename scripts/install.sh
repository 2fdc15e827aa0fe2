#!/usr/bin/env bash
# Build (release) and install the extension into the system PostgreSQL 15.
#   scripts/install.sh [--fresh-inode-only]
# The installed library gets a fresh inode first: the installer rewrites the file in place, which
# would corrupt the mapping of servers still running from it (another cluster of this machine).
# The copy is renamed over the old name (atomic: the file never goes missing); running servers
# keep the old, now unlinked, inode intact.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.env
export PATH="$HOME/.cargo/bin:$PATH"
so="$("$PG_BIN/pg_config" --pkglibdir)/tenancy.so"
if [ -f "$so" ]; then cp -p "$so" "$so.new" && mv -f "$so.new" "$so"; fi
# --fresh-inode-only: before another installer (cargo pgrx test) writes the library
[ "${1:-}" = --fresh-inode-only ] && exit 0
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" "$@"
# cargo pgrx installs the current version's script and the upgrade scripts (sql/tenancy--A--B.sql);
# the frozen install scripts of released versions (sql/tenancy--A.sql, kept for the upgrade test
# and CREATE EXTENSION tenancy VERSION 'A') are copied here.
find sql -maxdepth 1 -name 'tenancy--*.sql' ! -name 'tenancy--*--*.sql' \
    -exec install -m 644 {} "$("$PG_BIN/pg_config" --sharedir)/extension/" \;
