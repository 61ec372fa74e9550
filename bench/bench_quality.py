"""Live quality's figure of `make bench` (issue 24): `GET /api/v1/models/{name}/quality` over
1,000,000 logged and labelled predictions on PostgreSQL, against a real server process.

`uv run python -m bench.bench_quality [--quick] [--out PATH]`.

A database of its own (`mlservice_bench_quality`, re-created every run) gets 1,000,000 iris
prediction records of the bench user over 30 days, half of them served by version 1.0.0 and half by
2.0.0, each with its truth (a tenth of them wrong), and the drift counts they leave (each
ten-minute period, each version, each of the 4 features' 10 bins and the 3 labels: 371,520 rows),
written by SQL (`generate_series`), then VACUUM ANALYZE. One web process (pinned to the server
core) answers; the bench user is made an admin. Timed from the client, each after a warm-up call,
median of several: the window of all 1,000,000 (a time range over the 30 days), the newest
1,000,000 labelled rows (`last`), and the default window (each version's newest 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import (
    PYTHON,
    RESULTS,
    ResultsFile,
    Server,
    cores,
    free_port,
    judged,
    migrate,
    postgres_url,
    register_and_login,
    service_env,
    targets_table,
)

DATABASE = "mlservice_bench_quality"


@dataclass(frozen=True)
class Profile:
    predictions: int
    runs: int

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(100_000, 3) if quick else cls(1_000_000, 7)


def populate(database_url: str, n: int) -> float:
    """`n` labelled iris predictions of the (only) user, made admin; returns the seconds it took."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            user_id = await conn.fetchval("UPDATE users SET is_admin = true RETURNING id")
            await conn.execute(
                """
                INSERT INTO prediction_records
                    (prediction_id, user_id, model, version, rows, latency_ms, outcome, outputs, created_at)
                SELECT gen_random_uuid(), $1, 'iris', CASE WHEN g % 2 = 0 THEN '1.0.0' ELSE '2.0.0' END,
                       1, 1.0, 'ok', '[[0.8, 0.1, 0.1]]'::json,
                       now() - make_interval(secs => g * 2592000.0 / $2)
                FROM generate_series(1, $2) AS g
                """,
                user_id,
                n,
            )
            await conn.execute(
                """
                INSERT INTO prediction_feedback
                    (record_id, user_id, model, version, "row", label, correct, log_loss,
                     predicted_at, created_at)
                SELECT id, user_id, model, version, 0, 'setosa', (id % 10 <> 0)::int,
                       CASE WHEN id % 10 <> 0 THEN 0.2231 ELSE 2.3026 END, created_at, now()
                FROM prediction_records
                """
            )
            # Drift's counts as those predictions leave them: each ten-minute period of the 30 days,
            # for each version, every bin of iris's 4 features (10 each) and of its answers (-1: 3
            # labels), as the ~116 predictions of each version in a period fill them.
            await conn.execute(
                """
                INSERT INTO drift_counts (model, version, period, feature, bin, rows)
                SELECT 'iris', v, date_bin('10 minutes', now(), 'epoch') - make_interval(mins => 10 * p),
                       f, b, CASE WHEN f = -1 THEN 39 ELSE 12 END
                FROM generate_series(0, 4319) AS p, unnest(ARRAY['1.0.0', '2.0.0']) AS v,
                     generate_series(-1, 3) AS f, generate_series(0, 9) AS b
                WHERE f <> -1 OR b < 3
                """
            )
            for table in ("prediction_records", "prediction_feedback", "drift_counts"):
                await conn.execute(f"VACUUM (ANALYZE) {table}")
        finally:
            await conn.close()

    started = time.perf_counter()
    asyncio.run(run())
    return round(time.perf_counter() - started, 1)


def timed(port: int, token: str, query: str, runs: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/models/iris/quality{query}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})

    def once() -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - a local URL
            body = json.loads(response.read())
        return time.perf_counter() - started, body

    once()  # warm-up
    seconds, bodies = zip(*(once() for _ in range(runs)), strict=True)
    body = bodies[-1]
    out = {
        "query": query or "(default)",
        "median_s": round(statistics.median(seconds), 4),
        "max_s": round(max(seconds), 4),
        "labelled": {v["version"]: v["labelled"] for v in body["versions"]},
        "accuracy": {v["version"]: v["accuracy"] for v in body["versions"]},
        "drift_rows": {v["version"]: (v["drift"] or {}).get("rows") for v in body["versions"]},
    }
    print(f"  {out}", flush=True)
    return out


def run(profile: Profile, pin: list[str]) -> dict[str, Any]:
    url = postgres_url(DATABASE)
    port = free_port()
    env = service_env(url, port)
    migrate(env)
    with Server("quality-web", [PYTHON, "-m", "app.cli", "serve"], env, port, pin) as web:
        token = register_and_login(port)
        populate_s = populate(url, profile.predictions)
        print(f"  {profile.predictions:,} labelled predictions written in {populate_s} s", flush=True)
        since = (datetime.now(UTC) - timedelta(days=31)).isoformat()
        windows = {
            "all_by_time": timed(web.port, token, f"?since={urllib.parse.quote(since)}", profile.runs),
            "newest_n": timed(web.port, token, f"?last={profile.predictions}", profile.runs),
            "default": timed(web.port, token, "", profile.runs),
        }
    return {"predictions": profile.predictions, "populate_s": populate_s, "windows": windows}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results["runs"]
    w = r["windows"]
    rows = [
        (
            f"GET /api/v1/models/{{name}}/quality over {r['predictions']:,} logged predictions, "
            "PostgreSQL (s, median)",
            w["all_by_time"]["median_s"],
            "<= 1",
            f"all by time range {w['all_by_time']['median_s']} s (max {w['all_by_time']['max_s']}); "
            f"newest {r['predictions']:,} {w['newest_n']['median_s']} s; default window "
            f"{w['default']['median_s']} s",
        )
    ]
    return judged(rows)


def markdown(results: dict[str, Any]) -> str:
    return "\n".join([
        *targets_table(results["targets"]),
        "",
        f"Command: `{results['command']}`; web process on core {results['pinning']['server']}; "
        f"load average {results['load_average'][0]:.2f} before, {results['load_average'][1]:.2f} after; "
        f"{results['elapsed_s']:.0f} s.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_quality", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="100,000 predictions")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = parser.parse_args(argv)
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    results_file = ResultsFile("bench.bench_quality", args.quick, profile, server_pin, load_pin)
    results_file.write(args.out, {"runs": run(profile, server_pin)}, targets, markdown)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
