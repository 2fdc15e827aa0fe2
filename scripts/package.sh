#!/usr/bin/env bash
# Build the Debian package of tenancy for PostgreSQL 15 (`make package`):
#   target/package/tenancy_<version>-1_<arch>.deb, package name postgresql-15-tenancy
# (Debian's naming for a PostgreSQL 15 extension). Contents: the library, the control file, the
# current version's install script, every kept install script of earlier releases and every
# upgrade script (`sql/tenancy--*.sql`), and the README, CHANGELOG and licence under
# /usr/share/doc. Built from `cargo pgrx package` output (release build, already compiled when
# `make install` ran). Installs with `apt-get install ./target/package/tenancy_*.deb` on a
# machine with PostgreSQL 15 and no Rust: the library links only libc and libgcc_s.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.env
export PATH="$HOME/.cargo/bin:$PATH"

name=postgresql-15-tenancy
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=1
arch=$(dpkg --print-architecture)
out=target/package
stage=$out/stage
deb=$out/tenancy_${version}-${revision}_${arch}.deb

rm -rf "$stage" && mkdir -p "$stage"
cargo pgrx package --pg-config "$PG_BIN/pg_config" --out-dir "$stage" >"$out.log" 2>&1 \
    || { tail -30 "$out.log"; exit 1; }
extdir="$stage$("$PG_BIN/pg_config" --sharedir)/extension"
libdir="$stage$("$PG_BIN/pg_config" --pkglibdir)"
# the frozen install scripts of released versions (cargo pgrx copies only the upgrade scripts)
find sql -maxdepth 1 -name 'tenancy--*.sql' ! -name 'tenancy--*--*.sql' -exec install -m 644 {} "$extdir/" \;
strip --strip-debug "$libdir/tenancy.so"
docdir="$stage/usr/share/doc/$name"
mkdir -p "$docdir"
install -m 644 README.md CHANGELOG.md "$docdir/"
cat >"$docdir/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tenancy
Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

# dependencies: the server, and the C library at the newest symbol version the library uses
glibc=$(objdump -T "$libdir/tenancy.so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version-$revision
Architecture: $arch
Maintainer: tenancy maintainers <maintainers@tenancy.invalid>
Depends: postgresql-15, libc6 (>= $glibc), libgcc-s1
Provides: tenancy
Section: database
Priority: optional
Installed-Size: $installed_kb
Homepage: https://github.com/tenancy/tenancy
Description: multi-tenant safety for PostgreSQL 15 (workspace context, quotas, usage, RLS)
 tenancy makes a multi-tenant SaaS database safe, fair and observable from inside
 PostgreSQL: a validated workspace context, exact transactional per-workspace row
 quotas, per-workspace usage counters in shared memory, and row-level security
 helpers with an isolation audit. Add tenancy to shared_preload_libraries, restart,
 then CREATE EXTENSION tenancy (or ALTER EXTENSION tenancy UPDATE after an upgrade).
EOF
find "$stage" -type d -exec chmod 755 {} +
rm -f "$deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
