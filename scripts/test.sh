#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, a real bitcoind (built once from the
# source the kernel crate vendors, then cached), formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BITCOIND_EXE=${BITCOIND_EXE:-$(scripts/build-bitcoind.sh)}
export BITCOIND_EXE VIGIL_REQUIRE_BITCOIND=1
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --workspace
