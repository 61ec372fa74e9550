#!/usr/bin/env bash
# Installs (from Debian's packages) and starts the PostgreSQL and Redis the full test suite and the
# benchmarks use, on 127.0.0.1 only. Idempotent: safe to run when they are already up.
# Prints the URLs to export: TEST_DATABASE_URL and TEST_REDIS_URL.
set -euo pipefail

PG_USER=${PG_USER:-mlservice}
PG_PASSWORD=${PG_PASSWORD:-mlservice-test-password}
PG_DB=${PG_DB:-mlservice_test}
REDIS_PORT=${REDIS_PORT:-6379}

need_install=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
if ((${#need_install[@]})); then
    echo "services: installing ${need_install[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
fi
for _ in $(seq 1 30); do
    su postgres -c "pg_isready -q -h 127.0.0.1" && break
    sleep 0.5
done
# A larger max_connections lets several test servers and the benchmark share one cluster.
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB\"" >&2
# The tests drop their private databases WITH (FORCE). An autovacuum worker still busy in one is a
# backend of no role, which PostgreSQL 15 lets only members of pg_signal_backend end: without this,
# the drop fails now and then after a test that wrote a lot ("must be a member of the role whose
# process is being terminated or member of pg_signal_backend").
su postgres -c "psql -qc \"GRANT pg_signal_backend TO $PG_USER\"" >&2
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'\"" | grep -q 1 ||
    su postgres -c "createdb -O $PG_USER $PG_DB" >&2

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >&2
    for _ in $(seq 1 30); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.2
    done
fi

echo "TEST_DATABASE_URL=postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$PG_DB"
echo "TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
