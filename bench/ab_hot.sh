#!/usr/bin/env bash
# Two trees' hot paths alternated: `python -m bench.profile_hot` (CPU µs per request, in process)
# for GET item, POST item and predict on PostgreSQL and SQLite, the BEFORE tree then the AFTER tree,
# ROUNDS times over. Each tree needs its own `make install`; PostgreSQL from scripts/services.sh.
#   bash bench/ab_hot.sh BEFORE_DIR AFTER_DIR [ROUNDS]     (e.g. a `git worktree` of the commit before)
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
source <(bash "$(dirname "$0")/../scripts/services.sh" 2>/dev/null | sed 's/^/export /')
unset PYTHONDONTWRITEBYTECODE
for round in $(seq 1 "$rounds"); do
    for kind in get_item post predict; do
        for side in before after; do
            dir=$before; [[ $side == after ]] && dir=$after
            for db in postgresql sqlite; do
                line=$(cd "$dir" && timeout 300 .venv/bin/python -m bench.profile_hot --db "$db" --kind "$kind" \
                    -n 2000 --rounds 3 2>&1 | grep "CPU per request")
                echo "$round $side $db $line"
            done
        done
    done
done
