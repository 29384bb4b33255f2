#!/usr/bin/env bash
# Installs (if needed) and starts a local PostgreSQL for the tower's store tests, with a
# `vigil` role and database on loopback. Prints the connection string.
set -euo pipefail
sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
if ! command -v pg_lsclusters >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n1)
if [[ $status != online* ]]; then
  $sudo pg_ctlcluster "$version" "$cluster" start >&2
fi
as_postgres() { if [[ $(id -u) -eq 0 ]]; then su postgres -c "$1"; else sudo -u postgres bash -c "$1"; fi; }
as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname='vigil'\"" | grep -q 1 \
  || as_postgres "psql -p $port -qc \"CREATE ROLE vigil LOGIN PASSWORD 'vigil'\"" >&2
as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_database WHERE datname='vigil'\"" | grep -q 1 \
  || as_postgres "createdb -p $port -O vigil vigil" >&2
echo "host=127.0.0.1 port=$port user=vigil password=vigil dbname=vigil"
