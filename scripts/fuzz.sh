#!/usr/bin/env bash
# Runs Vigil's fuzz targets (fuzz/src/lib.rs, one per parser of outside input) under
# libFuzzer, each over its corpus in fuzz/corpus/<target>, where new finds are kept; a crash
# stops the run and is left in fuzz/targets/artifacts/<target>/ (commit it to the corpus once
# fixed: `cargo test` replays every corpus input).
#
#   scripts/fuzz.sh                     every target, 10,000,000 executions each
#   scripts/fuzz.sh --brief             every target briefly (CI; new finds are not kept)
#   scripts/fuzz.sh block_scan 1000000  one target, that many executions
#
# cargo-fuzz is installed once, and the instrumented build kept, under ~/.cache/vigil.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${VIGIL_CACHE:-$HOME/.cache/vigil}
targets=(block_scan outpoint_index policy_file tower_request node_rpc electrum_response zmq_frames)
runs=10000000
keep_finds=yes
case "${1:-}" in
  --brief) runs=20000 keep_finds=no ;;
  "") ;;
  *) targets=("$1"); runs=${2:-$runs} ;;
esac
if [[ ! -x $cache/cargo-fuzz/bin/cargo-fuzz ]]; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$cache/cargo-fuzz" >&2
fi
export PATH=$cache/cargo-fuzz/bin:$PATH
export CARGO_TARGET_DIR=$cache/fuzz-target
cd "$top/fuzz/targets"
# No sanitizer: the targets are safe Rust (unsafe code is denied); libFuzzer's coverage is the point.
flags=(--fuzz-dir . --sanitizer none --release --debug-assertions)
cargo fuzz build "${flags[@]}" >&2
for t in "${targets[@]}"; do
  log=$(mktemp)
  # libFuzzer writes new finds to the first corpus directory: a brief run (CI) keeps them in a
  # scratch one, so that it leaves the checkout as it found it.
  dirs=("../corpus/$t")
  if [[ $keep_finds == no ]]; then
    scratch=$(mktemp -d)
    dirs=("$scratch" "../corpus/$t")
  fi
  if ! cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- -runs="$runs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "$t: CRASH (see fuzz/targets/artifacts/$t)" >&2
    exit 1
  fi
  done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n1)
  echo "$t: ${done_line#Done }, 0 crashes, corpus $(ls "../corpus/$t" | wc -l) inputs"
  rm -f "$log"
  [[ -z ${scratch:-} ]] || rm -rf "$scratch"
done
