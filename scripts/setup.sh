#!/usr/bin/env bash
# Install what `make demo`, `make test` and `make bench` need, idempotently.
# Seconds when everything is already there. Debian 12, run as root (or with sudo available).
set -euo pipefail

PGRX_VERSION=0.18.1
. "$(dirname "$0")/pg.env"
PG_CONFIG=$PG_BIN/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 gcc libc6-dev make binutils clang libclang-dev pkg-config sudo pgbouncer postgresql-15-hypopg postgresql-15-pg-qualstats prometheus-postgres-exporter prometheus chromium ca-certificates)

log() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages.
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# Node.js and npm for the node-postgres reference client (examples/node/): Debian's (18) where the
# machine has none; a Node.js from elsewhere (NodeSource's bundles npm) is kept.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing Node.js and npm"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
# Citus 13.2.2 for the Citus test (tests/citus.rs): not packaged in Debian, built in the
# workplace's shared folder beside the checkout (or TENANCY_CITUS_DIR); its install.sh is
# idempotent. Without it the Citus test fails (it never skips).
CITUS_DIR=${TENANCY_CITUS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/../shared/citus}
if [ -f "$CITUS_DIR/install.sh" ]; then
    as_root bash "$CITUS_DIR/install.sh" >/dev/null
elif [ ! -f "$($PG_CONFIG --pkglibdir)/citus.so" ]; then
    log "WARNING: Citus not found ($CITUS_DIR/install.sh): tests/citus.rs will fail"
fi
# Debian's postgresql package starts a "main" cluster on 5432 and pgbouncer on 6432; we use our
# own clusters and ports and leave those alone.

# 2. Rust toolchain (the machine image has rustup's; install it only where absent).
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        log "installing Rust with rustup"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

# 3. cargo-pgrx of exactly the pgrx version the crate uses.
have=$(cargo pgrx --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (was: ${have:-none}); takes a few minutes"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# 4. Register the system PostgreSQL 15 with pgrx (no download).
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -q "^pg15 *= *\"$PG_CONFIG\"" "$config" 2>/dev/null; then
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
fi
log "ready: $(cargo pgrx --version), $($PG_CONFIG --version)"
