# tenancy: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
include scripts/pg.env
PG_CONFIG := $(PG_BIN)/pg_config
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup install package test test-unit test-regress test-live test-package demo demo-stop monitor monitor-stop bench clean

all: install

## Install whatever is missing (Debian packages, cargo-pgrx 0.18.1, pgrx init). Idempotent.
setup:
	@scripts/setup.sh

## Build (release) and install the extension into the system PostgreSQL 15.
install: setup
	@scripts/install.sh

## The Debian package: target/package/tenancy_<version>-1_<arch>.deb (apt-get install ./target/package/tenancy_*.deb).
package: install
	@scripts/package.sh

## Every test suite: #[pg_test], pg_regress (pg_test/), isolation specs, live-server Rust tests
## (tests/, the upgrade test among them), the Debian package (installed, regress suite against it).
test: setup
	@scripts/test.sh all

test-unit: setup
	@scripts/test.sh unit

test-regress: setup
	@scripts/test.sh regress

test-live: setup
	@scripts/test.sh live

test-package: setup
	@scripts/test.sh package

## A scratch cluster with a Dittofeed-shaped database, and the extension at work.
demo: install
	@scripts/demo.sh

demo-stop:
	@scripts/cluster.sh stop demo && echo "demo cluster stopped"

## Prometheus (alert rules, console http://127.0.0.1:25470/consoles/tenancy.html) and the exporter
## watching the running demo cluster; builds nothing (start the cluster with `make demo` first).
monitor:
	@scripts/monitor.sh start

monitor-stop:
	@scripts/monitor.sh stop

## Benchmarks: ratios against baselines measured in the same run.
bench: install
	@bench/run.sh

clean:
	cargo clean
	rm -rf $${TENANCY_RUN_DIR:-/tmp/tenancy-run}
