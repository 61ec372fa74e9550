"""Load generators the benchmark needs beside wrk: open-loop (fixed rate) and a closed-loop prober.

Open loop: request i is *scheduled* at `start + i / rate`, whatever happened to earlier ones, and
its latency is counted from that scheduled time (`time.perf_counter`), so a stalled server shows up
as queueing delay instead of silently lowering the offered load (coordinated omission). Requests go
over a pool of HTTP/1.1 keep-alive connections on raw asyncio streams; a request waiting for a free
connection keeps its scheduled start. How late each request actually left (client lag) is reported
separately, so a saturated client can be told from a slow server.

Closed loop (`--closed`): every connection sends its next request as soon as the last answer came
back; it records latency per status code, which wrk cannot (used to check that shed requests are
fast 503s at 1,024 connections).

`python -m bench.openloop --plan plan.json --kind get_item --rate 3000 --duration 8 --out out.json`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import RawConnection

# Percentiles stored for the latency-distribution plot (HdrHistogram style: dense near the tail).
PERCENTILES = [
    *range(0, 90, 5),
    90,
    92,
    94,
    95,
    96,
    97,
    98,
    99,
    99.5,
    99.7,
    99.9,
    99.95,
    99.99,
    100,
]


def build_request(kind: str, plan: dict[str, Any], rng: random.Random) -> bytes:
    """One raw HTTP/1.1 request of `kind` for a random seeded user (see bench/run.py's plan)."""
    host = plan["host"]
    if kind == "raw":
        return plan["path"].encode()  # a full raw request, used as-is
    if kind == "bare":
        return f"GET /items/{rng.randint(1, 10_000)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    user = rng.choice(plan["users"])
    auth = f"Authorization: Bearer {user['token']}\r\n"
    if kind == "get_item":
        target = f"/api/v1/items/{rng.randint(user['lo'], user['hi'])}"
    elif kind == "list":
        target = "/api/v1/items?offset=0&limit=20"
    elif kind == "list_v2":
        target = "/api/v2/items?limit=20"
    elif kind == "post":
        body = json.dumps({"title": f"bench {rng.randint(0, 1 << 30)}", "description": "open loop"}).encode()
        head = (
            f"POST /api/v1/items HTTP/1.1\r\nHost: {host}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body
    elif kind == "predict":
        body = json.dumps({"features": plan["predict_features"]}).encode()
        head = (
            f"POST /api/v1/predict HTTP/1.1\r\nHost: {host}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body
    elif kind == "healthz":
        target = "/healthz"
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()


@dataclass
class Recorder:
    latencies: list[float] = field(default_factory=list)  # seconds
    lateness: list[float] = field(default_factory=list)  # seconds
    by_status: dict[int, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, status: int, latency: float, late: float = 0.0) -> None:
        self.latencies.append(latency)
        self.lateness.append(late)
        self.by_status.setdefault(status, []).append(latency)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarize_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "p999_ms": round(percentile(ordered, 99.9) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else float("nan")) * 1000, 3),
    }


async def open_loop(  # noqa: PLR0917 - the generator's knobs, named at the one call site
    host: str, port: int, make: Any, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    rec = Recorder()
    total = int(rate * duration)
    next_index = 0
    start = time.perf_counter() + 0.2  # connections are opened before the first scheduled send

    async def worker() -> None:
        nonlocal next_index
        conn = RawConnection(host, port)
        try:
            conn.reader, conn.writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            rec.errors[type(exc).__name__] += 1
        while True:
            i = next_index
            if i >= total:
                break
            next_index += 1
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            try:
                status, _ = await conn.request(make())
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                rec.errors[type(exc).__name__] += 1
                conn.close()
                continue
            rec.add(status, time.perf_counter() - scheduled, sent - scheduled)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return _report(rec, elapsed, {"mode": "open", "rate": rate, "duration_s": duration})


async def closed_loop(host: str, port: int, make: Any, duration: float, connections: int) -> dict[str, Any]:
    rec = Recorder()
    stop = time.perf_counter() + duration

    async def worker() -> None:
        conn = RawConnection(host, port)
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                status, _ = await conn.request(make())
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                rec.errors[type(exc).__name__] += 1
                conn.close()
                await asyncio.sleep(0.01)
                continue
            rec.add(status, time.perf_counter() - began)
        conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return _report(
        rec,
        time.perf_counter() - began,
        {"mode": "closed", "connections": connections, "duration_s": duration},
    )


def _report(rec: Recorder, elapsed: float, header: dict[str, Any]) -> dict[str, Any]:
    ordered = sorted(rec.latencies)
    return {
        **header,
        "elapsed_s": round(elapsed, 3),
        "completed": len(ordered),
        "achieved_rps": round(len(ordered) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": summarize_ms(ordered),
        "client_lag": summarize_ms(rec.lateness),
        "status_counts": {str(k): len(v) for k, v in sorted(rec.by_status.items())},
        "latency_by_status": {str(k): summarize_ms(v) for k, v in sorted(rec.by_status.items())},
        "errors": dict(rec.errors),
        "percentile_curve_ms": [[p, round(percentile(ordered, p) * 1000, 3)] for p in PERCENTILES],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True, help="JSON: host, port, users [token, lo, hi]")
    parser.add_argument("--kind", required=True)
    parser.add_argument("--rate", type=float, help="requests per second (open loop)")
    parser.add_argument("--closed", type=int, metavar="N", help="closed loop over N connections instead")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=128, help="connection pool (open loop)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    rng = random.Random(args.seed)

    def make() -> bytes:
        return build_request(args.kind, plan, rng)

    host, port = plan["host"].split(":")[0], plan["port"]
    if args.closed:
        result = asyncio.run(closed_loop(host, port, make, args.duration, args.closed))
    else:
        if not args.rate:
            parser.error("--rate or --closed is required")
        result = asyncio.run(open_loop(host, port, make, args.rate, args.duration, args.connections))
    result["kind"] = args.kind
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
