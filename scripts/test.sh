#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, a real bitcoind (built once from the
# source the kernel crate vendors, then cached), electrs (built once, cached), a local
# PostgreSQL for the stores, an SMTP server (aiosmtpd) for e-mailed alarms, headless
# Chromium (and its WebDriver) for the web pages and the drill report, formatting,
# lints, every test (the fuzz corpora included), then every fuzz target briefly under
# libFuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh librocksdb-dev clang libclang-dev python3-aiosmtpd chromium chromium-driver
BITCOIND_EXE=${BITCOIND_EXE:-$(scripts/build-bitcoind.sh)}
ELECTRS_EXE=${ELECTRS_EXE:-$(scripts/build-electrs.sh)}
VIGIL_TEST_POSTGRES=${VIGIL_TEST_POSTGRES:-$(scripts/start-postgres.sh)}
export BITCOIND_EXE ELECTRS_EXE VIGIL_TEST_POSTGRES
export VIGIL_REQUIRE_BITCOIND=1 VIGIL_REQUIRE_ELECTRS=1 VIGIL_REQUIRE_POSTGRES=1 VIGIL_REQUIRE_SMTP=1 VIGIL_REQUIRE_CHROMIUM=1
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --workspace
scripts/fuzz.sh --brief
