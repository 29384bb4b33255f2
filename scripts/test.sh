#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, a real bitcoind (built once from the
# source the kernel crate vendors, then cached), electrs (built once, cached), a local
# PostgreSQL for the stores, an SMTP server (aiosmtpd) for e-mailed alarms, headless
# Chromium (and its WebDriver) for the web pages and the drill report, formatting,
# lints, every test (the fuzz corpora included), the hardware-signer tests against the real
# Ledger Bitcoin app in its emulator (../shared/ledger, beside the checkout), then every fuzz
# target briefly under libFuzzer.
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
# The emulator runs in a network namespace of its own with no route out: built above, the
# tests run offline, one at a time (it serves one client). `--workspace` keeps the features
# the build above resolved, so nothing is compiled again.
ledger=../shared/ledger
if [[ -x $ledger/with-ledger.sh ]]; then
  $ledger/setup.sh
  VIGIL_REQUIRE_LEDGER=1 $ledger/with-ledger.sh -- bash -c '
    cargo test --locked --offline --workspace --test ledger --test signer -- --test-threads=1 &&
    cargo test --locked --offline --workspace --test owner -- --test-threads=1 with_a_ledger'
  # The holder played by the tests themselves: they approve, reject and unplug the device.
  LEDGER_APPROVE=off VIGIL_REQUIRE_LEDGER=1 $ledger/with-ledger.sh -- \
    cargo test --locked --offline --workspace --test owner -- --test-threads=1 with_a_ledger
else
  echo "test.sh: no emulated Ledger at $ledger: the hardware-signer tests were NOT run" >&2
fi
scripts/fuzz.sh --brief
