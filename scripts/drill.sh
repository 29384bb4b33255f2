#!/usr/bin/env bash
# Installs what the build needs, builds `vigil`, and runs the coercion drill: the chain, a
# co-signer, three towers and the households as real processes on this machine, attacked
# scenario by scenario. Writes drill-report.html here (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --locked --bin vigil
exec target/debug/vigil drill "$@"
