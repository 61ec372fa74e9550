#!/usr/bin/env bash
# Installs what `make bench` drives the service with and nothing else needs: wrk, from Debian's
# packages, when it is missing. (PostgreSQL comes from scripts/services.sh, which the benchmark
# runs itself; the Python side is in uv.lock.) Idempotent.
set -euo pipefail

command -v wrk >/dev/null 2>&1 && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: wrk is missing; install it (Debian/Ubuntu: apt-get install wrk) and run again" >&2
    exit 1
fi
echo "bench: installing wrk from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq wrk >/dev/null
