#!/usr/bin/env bash
# Installs what the build needs, then runs the main job on the embedded regtest chain.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --locked --bin vigil -- demo "$@"
