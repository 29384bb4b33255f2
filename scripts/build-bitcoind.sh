#!/usr/bin/env bash
# Builds a real, unmodified bitcoind (and bitcoin-cli) from the Bitcoin Core source that the
# kernel's sys crate vendors, and caches it outside the repo keyed by the crate version.
# Prints the path of the bitcoind binary. Needs: cmake, a C++20 compiler, libboost-dev,
# libevent-dev. About 10 minutes on 2 cores the first time; instant afterwards.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -A1 'name = "libbitcoinkernel-sys"' "$top/Cargo.lock" | sed -n 's/version = "\(.*\)"/\1/p')
cache=${VIGIL_CACHE:-$HOME/.cache/vigil}/bitcoind-sys-$version
if [[ -x $cache/bin/bitcoind ]]; then echo "$cache/bin/bitcoind"; exit 0; fi
(cd "$top" && cargo fetch --locked >/dev/null 2>&1 || cargo fetch >/dev/null)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libbitcoinkernel-sys-"$version"/bitcoin | head -n1)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTS=OFF -DENABLE_WALLET=OFF \
  -DWITH_ZMQ=OFF -DENABLE_IPC=OFF -DWITH_EMBEDDED_ASMAP=OFF -DENABLE_EXTERNAL_SIGNER=OFF \
  -DBUILD_BITCOIN_BIN=OFF -DINSTALL_MAN=OFF -DWITH_CCACHE=OFF -DBUILD_KERNEL_LIB=OFF >&2
cmake --build "$build" --target bitcoind bitcoin-cli -j "$(nproc)" >&2
mkdir -p "$cache/bin"
cp "$build/bin/bitcoind" "$build/bin/bitcoin-cli" "$cache/bin/"
echo "$cache/bin/bitcoind"
