"""The benchmark behind `make bench` / `make bench-quick`: the service beside the framework's ceiling.

`python -m bench.run [--quick] [--db postgresql,sqlite] [--no-docs]`

In one run, on this machine:
1. References: a raw ASGI app (the server's ceiling) and a bare FastAPI route returning the same
   response model with no database and no auth (the framework's ceiling), both under uvicorn with the
   production entry point's flags (bench/bare_app.py).
2. The real service through its production entry point (`python -m app.cli serve`, one worker,
   access log off) on PostgreSQL (started by scripts/services.sh; a dedicated `mlservice_bench`
   database, dropped, re-created and migrated by `python -m app.cli migrate` every run) and on the
   embedded SQLite; seeded with users and 10,000 items by bulk SQL.
3. Closed loop with wrk (64 connections, repeated; median, min, max) per endpoint; open loop at half
   the measured throughput (bench/openloop.py); 1,024 vs 64 connections; cold start (launch until
   /readyz is 200), median of 5; resident memory of the web worker after the load.
4. On PostgreSQL, the hot paths' connection hand-out three ways side by side (bench/pool_compare.py:
   the app's turnstile, asyncpg's pool, SQLAlchemy's pool alone; about 3 minutes, `--no-pool` skips
   it); then the model-serving figures (bench/bench_serving.py, bench/bench_models.py) and the two
   tiers' (bench/bench_tier.py: the model server and remote-only web workers), and predictions
   while a model version is swapped (bench/bench_swap.py: p99 against steady, failed requests);
   shadow traffic (bench/bench_shadow.py: p99 with a shadow of the same cost, a shadow missing its
   time limit), live quality (bench/bench_quality.py: over a million labelled predictions on
   PostgreSQL),
   batch jobs (bench/bench_jobs.py: a job on a worker process against requests and the runtime
   alone, memory on a 1 GB CSV, submit to first row, SIGKILL mid-job; `--no-jobs` skips it).
5. The container (bench/bench_container.py: builds the image with scripts/image.sh): its size, cold
   start from `run` to ready beside the bare process's, memory inside it; skipped, saying why,
   where there is no docker or podman (`--no-container` skips it).
6. bench/results/latest.json, docs/performance.md and the plots in docs/.

Server and load generator are pinned to different cores with taskset when there are two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    ENDPOINTS,
    PYTHON,
    RESULTS,
    ROOT,
    Load,
    Server,
    base_env,
    check_login,
    closed,
    closed_pair,
    cores,
    free_port,
    in_process_markdown,
    machine,
    migrate,
    postgres_url,
    predict_features,
    process_memory,
    route_exists,
    rss_mb,
    seed,
    service_env,
    settle_postgres,
    spread,
)

# Measured side by side with the kind they repeat by API key (runs alternated: `closed_pair`).
KEY_PAIRS = {"get_item": "get_item_key", "predict": "predict_key"}
# Issue 5's targets, as fractions of the bare-FastAPI ceiling.
THROUGHPUT_TARGETS = {"get_item": 0.40, "list": 0.25, "post": 0.25}


@dataclass(frozen=True)
class Profile:
    duration: int  # seconds per wrk run
    repeats: int
    openloop_s: float
    cold_starts: int
    wide_s: int  # the 1,024-connection runs
    pool_rounds: int  # bench/pool_compare.py: rounds of the three variants in turn
    pool_s: int  # ... and seconds per wrk run

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(3, 1, 4.0, 3, 3, 1, 3) if quick else cls(6, 3, 8.0, 5, 5, 3, 5)


# --------------------------------------------------------------------------- phases


def reference(load: Load, kind: str, profile: Profile, server_pin: list[str]) -> dict[str, Any]:
    port = free_port()
    argv = [PYTHON, "-m", "bench.bare_app", kind, "--port", str(port)]
    print(f"reference {kind}: serving on {port}", flush=True)
    with Server(f"bare-{kind}", argv, base_env(), port, server_pin) as server:
        load.server_pid = server.pid
        result = closed(load, f"http://127.0.0.1:{port}/items/1", profile.duration, profile.repeats, None)
        result["rss_mb"] = rss_mb(server.pid)
        if kind == "fastapi":
            rate = round(result["rps"]["median"] / 2)
            plan = {"host": f"127.0.0.1:{port}", "port": port, "users": []}
            result["openloop"] = load.openloop(
                plan, "bare", "--rate", str(rate), "--duration", str(profile.openloop_s)
            )
    if kind == "fastapi":
        starts = []
        for _ in range(profile.cold_starts):
            port = free_port()
            argv = [PYTHON, "-m", "bench.bare_app", kind, "--port", str(port)]
            with Server(f"bare-{kind}-cold", argv, base_env(), port, server_pin) as server:
                starts.append(server.ready_s)
        result["cold_start_s"] = spread(starts)
    print(f"reference {kind}: {result['rps']['median']:.0f} req/s", flush=True)
    return result


def endpoint(  # noqa: PLR0917
    load: Load,
    base: str,
    profile: Profile,
    kind: str,
    users: list[dict[str, Any]],
    features: list[float] | None,
) -> dict[str, dict[str, Any]]:
    """One endpoint's closed loop; with its API-key twin beside it (`KEY_PAIRS`), runs alternated."""
    if kind not in KEY_PAIRS:
        script = load.lua(kind, users, features)
        return {kind: closed(load, base, profile.duration, profile.repeats, script)}
    scripts = (load.lua(kind, users, features), load.lua(KEY_PAIRS[kind], users, features))
    outcomes = closed_pair(load, base, profile.duration, profile.repeats, scripts)
    return dict(zip((kind, KEY_PAIRS[kind]), outcomes, strict=True))


def service(db: str, load: Load, profile: Profile, server_pin: list[str], bare_rps: float) -> dict[str, Any]:
    database_url = (
        postgres_url() if db == "postgresql" else f"sqlite+aiosqlite:///{load.workdir / 'bench.db'}"
    )
    port = free_port()
    env = service_env(database_url, port)
    migrate(env)
    users = seed(database_url, env)
    features = predict_features()
    argv = [PYTHON, "-m", "app.cli", "serve"]
    result: dict[str, Any] = {"database": db, "endpoints": {}}
    if db == "postgresql":
        # The seed's 10,000 inserts wake autovacuum about a minute later: in the middle of the
        # closed loop (0.65 cores of PostgreSQL during the list phase), unless it is done first.
        result["seed_settle_s"] = settle_postgres(database_url)
    print(f"service on {db}: serving on {port}", flush=True)
    with Server(f"service-{db}", argv, env, port, server_pin) as server:
        load.server_pid = server.pid
        check_login(port)
        token = users[0]["token"]
        kinds = [k for k in ENDPOINTS if k not in {"predict", *KEY_PAIRS.values()}]
        if route_exists(port, token, "POST", "/api/v1/predict"):
            kinds.append("predict")
        else:
            result["predict_absent"] = True
        base = f"http://127.0.0.1:{port}/"
        for kind in kinds:
            for name, outcome in endpoint(load, base, profile, kind, users, features).items():
                result["endpoints"][name] = outcome
                print(
                    f"  {db} {name}: {outcome['rps']['median']:.0f} req/s "
                    f"({outcome['rps']['median'] / bare_rps:.0%} of the ceiling), "
                    f"p50 {outcome['p50_ms']['median']} ms,"
                    f" p99 {outcome['p99_ms']['median']} ms, non-2xx {outcome['non_2xx']}",
                    flush=True,
                )
        get_item = result["endpoints"]["get_item"]
        rate = round(get_item["rps"]["median"] / 2)
        if db == "postgresql":
            result["settle_s"] = settle_postgres(database_url)
            print(f"  {db} settled (VACUUM ANALYZE, autovacuum done) in {result['settle_s']} s", flush=True)
        plan = {"host": f"127.0.0.1:{port}", "port": port, "users": users, "predict_features": features}
        result["openloop"] = load.openloop(
            plan, "get_item", "--rate", str(rate), "--duration", str(profile.openloop_s)
        )
        print(f"  {db} open loop at {rate} req/s: {result['openloop']['latency']}", flush=True)
        script = load.lua("get_item", users, features)
        result["wide"] = {
            "c64": load.wrk(base, 64, profile.wide_s, script),
            "c1024": load.wrk(base, 1024, profile.wide_s, script),
        }
        # wrk cannot time responses by status: this probe checks that shed requests are fast 503s.
        result["wide"]["c1024_probe"] = load.openloop(
            plan, "get_item", "--closed", "1024", "--duration", str(min(profile.wide_s, 4))
        )
        print(f"  {db} 1024 vs 64: {result['wide']['c1024']} / {result['wide']['c64']['rps']}", flush=True)
        result["memory"] = process_memory(server.pid)
    if db == "postgresql":
        starts = []
        for _ in range(profile.cold_starts):
            port = free_port()
            env = service_env(database_url, port)
            with Server(f"service-{db}-cold", argv, env, port, server_pin) as server:
                starts.append(server.ready_s)
        result["cold_start_s"] = spread(starts)
        print(f"  cold start: {result['cold_start_s']}", flush=True)
    return result


def run_models_bench(quick: bool) -> dict[str, Any] | None:
    """The model-serving figures, kept together in bench/results/models.json:

    - `python -m bench.bench_serving` over HTTP against the real service (event-loop isolation at a
      fixed 50 req/s with and without heavy predictions, against the same model run inline;
      predictions per second per model at concurrency 1 and 64 with batching on and off; memory of
      the web and model worker processes): bench/results/serving.json, whose `targets` and
      `markdown` go into the report;
    - `python -m bench.bench_models --json ...` in process (per-call latency, GIL and event-loop lag,
      the registry's batching without HTTP): bench/results/models-inprocess.json.
    """
    if not (ROOT / "bench" / "bench_serving.py").exists():
        return None
    flags = ["--quick"] if quick else []
    runs = {
        "serving": ("bench.bench_serving", RESULTS / "serving.json", "--out"),
        "in_process": ("bench.bench_models", RESULTS / "models-inprocess.json", "--json"),
    }
    data: dict[str, Any] = {}
    for key, (module, path, option) in runs.items():
        path.unlink(missing_ok=True)
        print(f"models: python -m {module} {' '.join(flags)}", flush=True)
        done = subprocess.run([PYTHON, "-m", module, *flags, option, str(path)], cwd=ROOT, check=False)
        if done.returncode != 0 or not path.exists():
            data[key] = {"error": f"{module} exited with {done.returncode}"}
        else:
            data[key] = json.loads(path.read_text())
    serving, in_process = data["serving"], data["in_process"]
    data["targets"] = serving.get("targets", [])
    parts = [serving.get("markdown") or f"*bench_serving failed: {serving.get('error')}*"]
    parts.append(
        in_process_markdown(in_process)
        if "error" not in in_process
        else f"*bench_models failed: {in_process['error']}*"
    )
    data["markdown"] = "\n\n".join(parts)
    (RESULTS / "models.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


def _runner(
    label: str, module: str, flags: list[str], path: Path, *, any_status: bool = False
) -> dict[str, Any]:
    """Run `python -m module flags --out path` and read its JSON; `{"error": ...}` when it failed
    (with `any_status`, only when it wrote nothing: a runner that skips says why in its file)."""
    path.unlink(missing_ok=True)
    print(f"{label}: python -m {module} {' '.join(flags)}", flush=True)
    done = subprocess.run([PYTHON, "-m", module, *flags, "--out", str(path)], cwd=ROOT, check=False)
    if not path.exists() or (done.returncode != 0 and not any_status):
        return {"error": f"{module} exited with {done.returncode}"}
    data: dict[str, Any] = json.loads(path.read_text())
    data["in_make_bench"] = True  # measured in this run (bench/report.py says when one was not)
    return data


def run_container_bench(profile: Profile) -> dict[str, Any]:
    """The image's size, cold start and memory beside the bare process's (`python -m
    bench.bench_container`, which builds the image first): bench/results/container.json, or
    `{"skipped": ...}` where the machine has no container engine."""
    flags = ["--runs", str(profile.cold_starts)]
    return _runner("container", "bench.bench_container", flags, RESULTS / "container.json", any_status=True)


def run_tier_bench(quick: bool) -> dict[str, Any]:
    """The two tiers' figures (`python -m bench.bench_tier`: the model server, a remote-only web
    worker, the in-process worker, the bare app): bench/results/tier.json."""
    flags = ["--quick"] if quick else []
    return _runner("tier", "bench.bench_tier", flags, RESULTS / "tier.json")


def run_swap_bench(quick: bool) -> dict[str, Any]:
    """Predict latency while a model version is swapped against the same load steady (`python -m
    bench.bench_swap`): bench/results/swap.json. Read even when it exited non-zero (a failed
    prediction during the swap): its file says how many."""
    flags = ["--quick"] if quick else []
    return _runner("swap", "bench.bench_swap", flags, RESULTS / "swap.json", any_status=True)


def run_jobs_bench(quick: bool) -> dict[str, Any]:
    """Batch jobs' figures (`python -m bench.bench_jobs`: a job on a worker process against 64-row
    requests and the runtime alone, the worker's memory on a 1 GB CSV, submit to first row, rows
    after a SIGKILL on SQLite and PostgreSQL): bench/results/jobs.json."""
    flags = ["--quick"] if quick else []
    return _runner("jobs", "bench.bench_jobs", flags, RESULTS / "jobs.json")


def run_quality_bench(quick: bool) -> dict[str, Any]:
    """Live quality over a million labelled predictions on PostgreSQL (`python -m
    bench.bench_quality`): bench/results/quality.json."""
    flags = ["--quick"] if quick else []
    return _runner("quality", "bench.bench_quality", flags, RESULTS / "quality.json")


def run_shadow_bench(quick: bool) -> dict[str, Any]:
    """What a shadow costs the requests it copies (`python -m bench.bench_shadow`):
    bench/results/shadow.json."""
    flags = ["--quick"] if quick else []
    return _runner("shadow", "bench.bench_shadow", flags, RESULTS / "shadow.json")


def run_pool_compare(profile: Profile) -> dict[str, Any]:
    """The hot paths' connection hand-out three ways, side by side (`python -m bench.pool_compare`,
    its own server per variant and round, its own database): bench/results/pool.json."""
    flags = ["--rounds", str(profile.pool_rounds), "--duration", str(profile.pool_s)]
    return _runner("pool", "bench.pool_compare", flags, RESULTS / "pool.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat of each (under 2 minutes)")
    parser.add_argument("--db", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite")
    parser.add_argument("--no-docs", action="store_true", help="write only bench/results/*.json")
    parser.add_argument(
        "--no-models", action="store_true", help="skip bench/bench_serving.py and bench/bench_models.py"
    )
    parser.add_argument(
        "--no-pool", action="store_true", help="skip bench/pool_compare.py (the connection hand-out)"
    )
    parser.add_argument(
        "--no-container", action="store_true", help="skip bench/bench_container.py (the image's rows)"
    )
    parser.add_argument("--no-tier", action="store_true", help="skip bench/bench_tier.py (the two tiers)")
    parser.add_argument(
        "--no-swap", action="store_true", help="skip bench/bench_swap.py (predictions during a model swap)"
    )
    parser.add_argument("--no-jobs", action="store_true", help="skip bench/bench_jobs.py (batch jobs)")
    parser.add_argument(
        "--no-shadow", action="store_true", help="skip bench/bench_shadow.py (shadow traffic)"
    )
    parser.add_argument(
        "--no-quality", action="store_true", help="skip bench/bench_quality.py (live quality on PostgreSQL)"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    command = "make bench-quick" if args.quick else "make bench"
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{command}  (uv run python -m bench.run {' '.join(argv or sys.argv[1:])})".strip(),
        "profile": profile.__dict__,
        "machine": machine(),
        "pinning": {"server": " ".join(server_pin) or "none", "load": " ".join(load_pin) or "none"},
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        load = Load(load_pin, Path(tmp))
        results["asgi"] = reference(load, "asgi", profile, server_pin)
        results["fastapi"] = reference(load, "fastapi", profile, server_pin)
        bare_rps = results["fastapi"]["rps"]["median"]
        results["service"] = {}
        for db in [d.strip() for d in args.db.split(",") if d.strip()]:
            results["service"][db] = service(db, load, profile, server_pin, bare_rps)
    if "postgresql" in results["service"] and not args.no_pool:
        results["pool"] = run_pool_compare(profile)
    if not args.no_models:
        results["models"] = run_models_bench(args.quick)
    if not args.no_container:
        results["container"] = run_container_bench(profile)
    if not args.no_tier:
        results["tier"] = run_tier_bench(args.quick)
    if not args.no_swap:
        results["swap"] = run_swap_bench(args.quick)
    if not args.no_jobs:
        results["jobs"] = run_jobs_bench(args.quick)
    if not args.no_shadow:
        results["shadow"] = run_shadow_bench(args.quick)
    if not args.no_quality:
        results["quality"] = run_quality_bench(args.quick)
    results["elapsed_s"] = round(time.perf_counter() - began, 1)
    out = args.out or RESULTS / "latest.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", flush=True)
    if not args.no_docs:
        from bench.report import write_report

        write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
