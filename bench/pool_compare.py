"""The hot paths' connection hand-out, three ways side by side over HTTP (issue 12).

`python -m bench.pool_compare [--rounds 3] [--duration 5] [--out bench/results/pool.json]`

Each variant of bench/pool_variants.py (the app's turnstile with hand-off; asyncpg's own pool;
SQLAlchemy's pool alone) serves through the production entry point with bench/run.py's flags and
pinning (`python -m bench.pool_variants VARIANT`, which is `python -m app.cli serve` with the
variant installed), on PostgreSQL (a dedicated `mlservice_bench_pool` database, seeded like
bench/run.py's). Per server: authenticated GET item, list (20) and POST item, wrk at 64
connections, each a 1 s warm-up then one run of `--duration` seconds. The variants take turns
(a, b, c, a, b, c, ...) for `--rounds` rounds, so drift and other tenants' load fall on all of
them alike; each server is started afresh, and the items its POST phase wrote are deleted and the
tables vacuumed before the next one starts. Figures: median (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    PYTHON,
    RESULTS,
    Load,
    Server,
    cores,
    free_port,
    migrate,
    postgres_url,
    seed,
    service_env,
    settle_postgres,
    summarize_runs,
)

POOL_DB = "mlservice_bench_pool"
VARIANTS = {
    "turnstile": "a. turnstile with hand-off (the app's)",
    "asyncpg_pool": "b. asyncpg.create_pool, no reset query",
    "sqlalchemy_pool": "c. SQLAlchemy's pool alone",
}
KINDS = ("get_item", "list", "post")  # post last: its rows are deleted before the next server
CONNECTIONS = 64


def delete_posted(database_url: str) -> int:
    """Removes what the POST phase wrote (the seeded items stay), so every server starts from the
    same table."""
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            status: str = await conn.execute("DELETE FROM items WHERE description = 'closed loop'")
            return int(status.rsplit(maxsplit=1)[-1])
        finally:
            await conn.close()

    return asyncio.run(run())


def one_server(  # noqa: PLR0917 - the one call site passes them in order
    variant: str,
    database_url: str,
    users: list[dict[str, Any]],
    load: Load,
    server_pin: list[str],
    duration: int,
) -> dict[str, Any]:
    port = free_port()
    stats_path = load.workdir / f"stats-{variant}.json"
    stats_path.unlink(missing_ok=True)
    env = service_env(database_url, port)
    env["BENCH_POOL_STATS"] = str(stats_path)
    argv = [PYTHON, "-m", "bench.pool_variants", variant]
    out: dict[str, Any] = {}
    with Server(f"pool-{variant}", argv, env, port, server_pin) as server:
        load.server_pid = server.pid
        base = f"http://127.0.0.1:{port}/"
        for kind in KINDS:
            script = load.lua(kind, users, None)
            load.wrk(base, CONNECTIONS, 1, script)  # warm-up: connections, caches, statements
            out[kind] = load.wrk(base, CONNECTIONS, duration, script)
    stats = json.loads(stats_path.read_text())
    answered = sum(r.get("requests", 0) for r in out.values())
    holders = stats["installed_in"]
    # The variant must be what served: every hot module holds it, and it ran for each request.
    if not holders or any(v != variant for v in holders.values()):
        raise RuntimeError(f"{variant} was not what served: {holders}")
    if stats["calls"] < answered:
        raise RuntimeError(f"{variant} ran {stats['calls']} times for {answered} requests")
    out["calls"] = stats["calls"]
    out["installed_in"] = sorted(holders)
    out["deleted_posted"] = delete_posted(database_url)
    out["settle_s"] = settle_postgres(database_url)
    return out


def pool_settings(env: dict[str, str]) -> dict[str, Any]:
    """DB_POOL_SIZE, DB_MAX_OVERFLOW and DB_POOL_TIMEOUT as the servers got them."""
    from app.core.config import Settings

    fields = Settings.model_fields
    return {
        key: env.get(key, fields[key.lower()].default)
        for key in ("DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT")
    }


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant and endpoint: median, min and max over the rounds."""
    return {
        variant: {kind: summarize_runs([r[variant][kind] for r in rounds]) for kind in KINDS}
        for variant in rounds[0]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (after 1 s warm-up)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, in turn order")
    parser.add_argument("--out", type=Path, default=RESULTS / "pool.json")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    server_pin, load_pin = cores()
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    database_url = postgres_url(POOL_DB)
    env = service_env(database_url, 8000)  # the port is not used by migrate and seed
    migrate(env)
    users = seed(database_url, env)
    settle_postgres(database_url)
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        load = Load(load_pin, Path(tmp))
        for n in range(args.rounds):
            this: dict[str, dict[str, Any]] = {}
            for variant in variants:
                this[variant] = one_server(variant, database_url, users, load, server_pin, args.duration)
                print(
                    f"round {n + 1} {variant}: "
                    + ", ".join(
                        f"{k} {this[variant][k]['rps']:,.0f} req/s p99 {this[variant][k]['p99_ms']:.1f} ms "
                        f"{this[variant][k]['server_cpu_us']:.0f} us"
                        for k in KINDS
                    ),
                    flush=True,
                )
            rounds.append(this)
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"uv run python -m bench.pool_compare {' '.join(argv or sys.argv[1:])}".strip(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections": CONNECTIONS,
        "pinning": {"server": " ".join(server_pin) or "none", "load": " ".join(load_pin) or "none"},
        "pool": pool_settings(env),
        "labels": {v: VARIANTS[v] for v in variants},
        "variants": summarize(rounds),
        "load_average": [load_before, os.getloadavg()[0]],
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
