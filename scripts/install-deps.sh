#!/usr/bin/env bash
# Installs the Debian packages Vigil's build needs: the kernel's sys crate compiles Bitcoin
# Core's validation engine with cmake and a C++20 compiler against Boost headers; the real
# bitcoind used in tests also needs libevent; hardware signers are reached over USB through
# hidapi's hidraw backend, which builds against libudev. Extra packages may be named as arguments
# (scripts/test.sh adds what electrs needs).
set -euo pipefail
needed=(build-essential cmake libboost-dev libevent-dev pkg-config libudev-dev "$@")
missing=()
for p in "${needed[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
