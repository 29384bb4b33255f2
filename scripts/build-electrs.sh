#!/usr/bin/env bash
# Builds electrs, the Electrum server the tower's Electrum backend is tested against, from
# crates.io, dynamically linked to Debian's RocksDB, and caches it outside the repo. Prints
# the binary's path. Needs librocksdb-dev, clang and libclang-dev (scripts/test.sh installs
# them). A few minutes on 2 cores the first time; instant afterwards.
#
# 0.10.10 is the last release that links Debian 12's RocksDB (7.8); later ones need 9.10.
set -euo pipefail
version=0.10.10
cache=${VIGIL_CACHE:-$HOME/.cache/vigil}/electrs-$version
if [[ -x $cache/bin/electrs ]]; then echo "$cache/bin/electrs"; exit 0; fi
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
ROCKSDB_INCLUDE_DIR=/usr/include ROCKSDB_LIB_DIR=/usr/lib CARGO_TARGET_DIR=$target \
  cargo install electrs --version "$version" --locked --root "$cache" >&2
echo "$cache/bin/electrs"
