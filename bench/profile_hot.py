"""CPU cost of one request through the whole app, with no server and no network: for profiling.

`python -m bench.profile_hot [--db postgresql|sqlite] [--kind get_item] [-n 3000] [--concurrency 16]
[--cprofile]` (a kind ending in `_key`, such as `get_item_key`, sends the user's API key instead of
the access token)

Builds the app the production way (`create_app` with ENVIRONMENT=production settings), runs its
lifespan, seeds users and items like bench/run.py (bench/harness.py's `seed`), then calls the ASGI
app directly with `n` requests (`concurrency` at a time) on uvloop and prints the CPU microseconds
per request, and with `--cprofile` the functions that cost most. Used to measure each hot-path
change in isolation from the noise of a shared machine (CPU time, not wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness, pool_variants


def _scope(method: str, path: str, query: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def _post(path: str, body: bytes, auth: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], bytes]:
    length = (b"content-length", str(len(body)).encode())
    return _scope("POST", path, "", [*auth, (b"content-type", b"application/json"), length]), body


def request_for(kind: str, users: list[dict[str, Any]], rng: random.Random) -> tuple[dict[str, Any], bytes]:
    user = rng.choice(users)
    # `<kind>_key`: the same request, authenticated by the user's API key instead of the token.
    credential = "token"
    if kind.endswith("_key"):
        kind, credential = kind.removesuffix("_key"), "key"
    auth = [(b"authorization", f"Bearer {user[credential]}".encode())]
    if kind == "get_item":
        return _scope("GET", f"/api/v1/items/{rng.randint(user['lo'], user['hi'])}", "", auth), b""
    if kind == "list":
        return _scope("GET", "/api/v1/items", "offset=0&limit=20", auth), b""
    if kind == "list_v2":
        return _scope("GET", "/api/v2/items", "limit=20", auth), b""
    if kind == "post":
        return _post("/api/v1/items", b'{"title":"profiled","description":"profile_hot"}', auth)
    if kind == "predict":
        return _post("/api/v1/predict", b'{"features":[5.1,3.5,1.4,0.2]}', auth)
    if kind == "me":
        return _scope("GET", "/api/v1/users/me", "", auth), b""
    if kind == "noauth":
        return _scope("GET", "/api/v1/items/1", "", []), b""
    if kind == "healthz":
        return _scope("GET", "/healthz", "", []), b""
    raise ValueError(kind)


async def call(app: Any, scope: dict[str, Any], body: bytes) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: Any, kind: str, users: list[dict[str, Any]], n: int, concurrency: int) -> dict[int, int]:
    rng = random.Random(1)
    counts: dict[int, int] = {}
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            scope, body = request_for(kind, users, rng)
            status = await call(app, scope, body)
            counts[status] = counts.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def transactions(url: str) -> int | None:
    """Transactions PostgreSQL counted in the database so far (each BEGIN..ROLLBACK, or each
    statement run in autocommit)."""
    if not url.startswith("postgresql"):
        return None
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await conn.close()


async def main_async(
    args: argparse.Namespace, url: str, env: dict[str, str], users: list[dict[str, Any]]
) -> None:
    from asgi_lifespan import LifespanManager

    from app.core.config import Settings
    from app.main import create_app

    overrides = {k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in Settings.model_fields}
    settings = Settings(_env_file=None, **overrides)  # type: ignore[arg-type]
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120):
        await drive(app, args.kind, users, min(500, args.n), args.concurrency)  # warm-up
        if args.gc_freeze:
            gc.freeze()
        print(f"objects tracked by the GC: {len(gc.get_objects())}, frozen {gc.get_freeze_count()}")
        gc_before = [s["collections"] for s in gc.get_stats()]
        if args.pause:
            await asyncio.to_thread(input, f"paused before the rounds (pid {os.getpid()}); press enter")
        xact0 = await transactions(url)
        profiler = cProfile.Profile() if args.cprofile else None
        if profiler:
            profiler.enable()
        # Several rounds: on a shared machine the least-disturbed round (min) is the best estimate.
        per_request, on_loop, counts = [], [], {}
        for _ in range(args.rounds):
            cpu0, main0 = time.process_time(), time.thread_time()
            for status, count in (await drive(app, args.kind, users, args.n, args.concurrency)).items():
                counts[status] = counts.get(status, 0) + count
            per_request.append((time.process_time() - cpu0) / args.n * 1e6)
            on_loop.append((time.thread_time() - main0) / args.n * 1e6)
        if profiler:
            profiler.disable()
        await asyncio.sleep(1.5)  # PostgreSQL publishes its counters about once a second
        xact = await transactions(url)
        if xact is not None and xact0 is not None:
            print(f"PostgreSQL transactions per request: {(xact - xact0) / (args.n * args.rounds):.2f}")
    gc_after = [s["collections"] for s in gc.get_stats()]
    print(
        "GC collections per generation during the rounds:",
        [a - b for a, b in zip(gc_after, gc_before, strict=True)],
    )
    print(
        f"{args.kind} on {args.db}: CPU per request min {min(per_request):.0f} us, median "
        f"{statistics.median(per_request):.0f} us over {args.rounds} rounds of {args.n} (event-loop thread: "
        f"min {min(on_loop):.0f} us); statuses {counts}"
    )
    if args.pool:
        print(f"{args.pool}: {pool_variants.CALLS[0]} blocks, in {pool_variants.installed_in()}")
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
        print(by_package(stats, args.n * args.rounds))


def by_package(stats: pstats.Stats, requests: int) -> str:
    """Own time (tottime) summed per package: where a request's CPU goes, without the cumulative
    times that greenlet switches make meaningless. Profiled time, inflated by cProfile itself:
    read it as shares, not as microseconds."""
    totals: dict[str, float] = {}
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        if "site-packages/" in filename:
            package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/app/" in filename:
            package = "app/" + filename.split("/app/", 1)[1].split("/", 1)[0]
        elif filename == "~":
            package = "builtins: " + name.split(" of ")[-1][:40]
        else:
            package = "stdlib: " + Path(filename).name
        totals[package] = totals.get(package, 0.0) + tottime
    whole = sum(totals.values())
    lines = [f"own CPU time per package (profiled, {whole / requests * 1e6:.0f} us per request):"]
    for package, total in sorted(totals.items(), key=lambda kv: -kv[1])[:25]:
        lines.append(f"  {total / whole:6.1%}  {total / requests * 1e6:7.1f} us  {package}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--kind", default="get_item")
    parser.add_argument("-n", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--pause", action="store_true", help="wait for enter before the rounds")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the warm-up")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--pool", choices=pool_variants.VARIANTS, help="serve the hot paths' connections this way"
    )
    args = parser.parse_args()
    if args.pool:  # before anything imports the app's services
        pool_variants.install(args.pool)
    import uvloop

    if args.db == "postgresql":
        url = harness.postgres_url()
    else:
        url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'profile.db'}"
    env = harness.service_env(url, 8000)
    harness.migrate(env)
    users = harness.seed(url, env)
    uvloop.run(main_async(args, url, env, users))


if __name__ == "__main__":
    main()
