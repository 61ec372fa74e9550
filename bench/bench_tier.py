"""The two tiers' figures of `make bench` (issue 13's targets), in one run, over HTTP.

`uv run python -m bench.bench_tier [--quick] [--out PATH]`

Processes, each pinned to the server core (load generators on the other, as bench/run.py does):
- the bare FastAPI app (bench/bare_app.py): the reference for memory and start-up;
- the model server (`python -m app.cli model-server`, one process with the forest's worker pool);
- a remote-only web worker (`python -m app.cli serve`, `ML_REMOTE_URL` pointing at the model
  server: no model in it), and a web worker with every model in process (today's default).

Measured:
1. Start to ready (launch until /readyz answers 200), median of several starts: the bare app and
   the remote-only web worker (the model server already up).
2. Forest predictions per second, `POST /api/v1/models/breast_cancer/predict` with one row per
   request, wrk at 64 connections: through the remote-only web worker and the model server, and
   through the in-process web worker's process pool. Both paths share the one server core.
3. The light endpoint (`GET /api/v1/users/me`, authenticated) at a fixed 50 req/s, open loop
   (bench/openloop.py), on the remote-only web worker: idle, then while wrk keeps 8 connections
   busy on the heavy endpoint (`POST /api/v1/predict-heavy`, computed remotely).
4. Memory after the load (VmRSS and PSS): the bare app after its own wrk load; the remote-only web
   worker; the model server with its children; the in-process web worker with its children. The
   deployments compared are computed from these: 4 remote-only workers + the model server against
   1 in-process worker with its pools + 3 remote-only workers (both PSS and RSS sums).

Writes bench/results/tier.json, including `targets` and `markdown` (for docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    HEAVY_CLIENTS,
    LIGHT_RATE,
    PYTHON,
    RESULTS,
    ROOT,
    HeavyLoad,
    Load,
    ResultsFile,
    Server,
    base_env,
    cores,
    descendants,
    free_port,
    judged,
    light_run,
    memory_of,
    migrate,
    post_script,
    raw_get,
    register_and_login,
    service_env,
    targets_table,
)

MODEL_DIR = ROOT / "ml_models"
TOKEN = "bench-tier-model-server-token-" + "b" * 24
FOREST = "breast_cancer"


@dataclass(frozen=True)
class Profile:
    starts: int  # cold starts per kind
    wrk_s: int  # each throughput run
    light_s: float  # each open-loop run of the light endpoint

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(2, 3, 4.0) if quick else cls(5, 8, 10.0)


def forest_rows() -> list[list[float]]:
    from sklearn.datasets import load_breast_cancer

    return [[float(v) for v in row] for row in load_breast_cancer().data[:64]]


def total_memory(pid: int) -> dict[str, Any]:
    """The process and all its descendants: summed RSS and PSS, and each process."""
    processes = [{"pid": pid, **memory_of(pid)}]
    processes += [{"pid": child, **memory_of(child)} for child in descendants(pid)]
    return {
        "rss_mb": round(sum(p["rss_mb"] or 0 for p in processes), 1),
        "pss_mb": round(sum(p["pss_mb"] or 0 for p in processes), 1),
        "processes": processes,
    }


def web_env(workdir: Path, port: int, remote_url: str | None, **extra: str) -> dict[str, str]:
    """A web worker's environment: one SQLite file migrated beforehand (as a release's migration
    Job does), so start-up is the worker's own."""
    env = service_env(f"sqlite+aiosqlite:///{workdir / 'tier.db'}", port)
    env.update({"RATE_LIMIT_ENABLED": "false", "AUTO_MIGRATE": "false", "MODEL_SERVER_TOKEN": TOKEN, **extra})
    if remote_url is not None:
        env["ML_REMOTE_URL"] = remote_url
    return env


def start_web(workdir: Path, name: str, remote_url: str | None, pin: list[str], **extra: str) -> Server:
    port = free_port()
    env = web_env(workdir, port, remote_url, **extra)
    return Server(name, [PYTHON, "-m", "app.cli", "serve"], env, port, pin)


def cold_starts(make: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        with make() as server:
            out.append(round(server.ready_s, 3))
    return out


def forest_throughput(load: Load, port: int, token: str, seconds: int) -> dict[str, Any]:
    script = post_script(
        load.workdir, f"forest-{port}", f"/api/v1/models/{FOREST}/predict", token,
        [{"rows": [row]} for row in forest_rows()],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    load.wrk(url, 64, 1, script)  # warm-up: connections, the first batches
    result = load.wrk(url, 64, seconds, script)
    ok = sum(c for s, c in result.get("status_counts", {}).items() if s.startswith("2"))
    requests = result.get("requests") or 1
    result["predictions_per_s"] = round(result["rps"] * ok / requests, 1)
    print(
        f"  forest c64: {result['predictions_per_s']:,.0f}/s (p99 {result.get('p99_ms')} ms, "
        f"statuses {result.get('status_counts')})",
        flush=True,
    )
    return result


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


def run(profile: Profile, server_pin: list[str], load_pin: list[str], workdir: Path) -> dict[str, Any]:
    load = Load(load_pin, workdir)
    out: dict[str, Any] = {}
    migrate(web_env(workdir, free_port(), None))

    # 1. The bare app: start-up, then its memory after a wrk load.
    def bare() -> Server:
        port = free_port()
        return Server(
            "tier-bare",
            [PYTHON, "-m", "bench.bare_app", "fastapi", "--port", str(port)],
            base_env(),
            port,
            server_pin,
        )

    out["bare_start_s"] = cold_starts(bare, profile.starts)
    with bare() as server:
        load.wrk(f"http://127.0.0.1:{server.port}/items/1", 64, profile.wrk_s)
        out["bare_memory"] = memory_of(server.pid)
    print(
        f"bare FastAPI: ready {statistics.median(out['bare_start_s']):.2f} s, {out['bare_memory']}",
        flush=True,
    )

    # For scale: a web worker with no model at all (ML_ENABLED=false), what the web stack costs.
    out["no_models_start_s"] = cold_starts(
        lambda: start_web(workdir, "tier-no-models", None, server_pin, ML_ENABLED="false"), profile.starts
    )
    with start_web(workdir, "tier-no-models", None, server_pin, ML_ENABLED="false") as web:
        load.wrk(f"http://127.0.0.1:{web.port}/healthz", 64, profile.wrk_s)
        out["no_models_memory"] = memory_of(web.pid)

    # 2. The model server, and the remote-only web worker in front of it.
    ms_port = free_port()
    ms_env = base_env()
    ms_env.update(
        {"ENVIRONMENT": "production", "SECRET_KEY": TOKEN, "MODEL_SERVER_TOKEN": TOKEN, "HOST": "127.0.0.1",
         "PORT": str(ms_port), "WEB_CONCURRENCY": "1", "ACCESS_LOG": "false", "LOG_LEVEL": "WARNING"}
    )  # fmt: skip
    url = f"http://127.0.0.1:{ms_port}"
    with Server(
        "tier-model-server", [PYTHON, "-m", "app.cli", "model-server"], ms_env, ms_port, server_pin
    ) as ms:
        out["model_server_start_s"] = round(ms.ready_s, 3)
        out["remote_start_s"] = cold_starts(
            lambda: start_web(workdir, "tier-remote-cold", url, server_pin), profile.starts
        )
        print(f"remote-only web worker: ready {statistics.median(out['remote_start_s']):.2f} s", flush=True)
        with start_web(workdir, "tier-remote", url, server_pin) as web:
            load.server_pid = web.pid
            token = register_and_login(web.port)
            print("remote-only web worker: forest through the model server", flush=True)
            out["remote_forest"] = forest_throughput(load, web.port, token, profile.wrk_s)
            light = raw_get(web.port, "/api/v1/users/me", token)
            out["light_idle"] = light_run(load, web.port, light, profile.light_s, "users/me idle")
            heavy_script = post_script(
                workdir,
                "tier-heavy",
                "/api/v1/predict-heavy",
                token,
                [{"features": r} for r in forest_rows()],
            )
            heavy = HeavyLoad(load, f"http://127.0.0.1:{web.port}/api/v1/predict-heavy", heavy_script)
            try:
                out["light_loaded"] = light_run(
                    load, web.port, light, profile.light_s, "users/me with remote heavy predictions"
                )
            finally:
                out["heavy_load"] = heavy.stop()
            out["remote_memory"] = memory_of(web.pid)
            out["remote_children"] = len(descendants(web.pid))
            out["model_server_memory"] = total_memory(ms.pid)

    # 3. Today's web worker: every model in process, the forest in its process pool.
    with start_web(workdir, "tier-local", None, server_pin) as web:
        load.server_pid = web.pid
        token = register_and_login(web.port)
        print("in-process web worker: forest in its process pool", flush=True)
        out["local_forest"] = forest_throughput(load, web.port, token, profile.wrk_s)
        out["local_memory"] = total_memory(web.pid)
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results["runs"]
    bare_rss = r["bare_memory"]["rss_mb"]
    remote = r["remote_memory"]
    ms, local = r["model_server_memory"], r["local_memory"]
    two_tier = {k: round(4 * remote[k] + ms[k], 1) for k in ("rss_mb", "pss_mb")}
    one_tier = {k: round(local[k] + 3 * remote[k], 1) for k in ("rss_mb", "pss_mb")}
    bare_start = statistics.median(r["bare_start_s"])
    remote_start = statistics.median(r["remote_start_s"])
    remote_pps, local_pps = r["remote_forest"]["predictions_per_s"], r["local_forest"]["predictions_per_s"]
    idle, loaded = r["light_idle"]["latency"]["p99_ms"], r["light_loaded"]["latency"]["p99_ms"]
    rows = [
        ("RSS of a remote-only web worker after load / bare FastAPI's", ratio(remote["rss_mb"], bare_rss),
         "<= 1.6", f"{remote['rss_mb']} / {bare_rss} MB"),
        ("4 remote-only workers + model server / 1 worker with pools + 3 remote-only (PSS)",
         ratio(two_tier["pss_mb"], one_tier["pss_mb"]), "<= 1.0",
         f"{two_tier['pss_mb']} / {one_tier['pss_mb']} MB PSS "
         f"({two_tier['rss_mb']} / {one_tier['rss_mb']} MB RSS)"),
        ("remote-only web worker start to ready / bare FastAPI's", ratio(remote_start, bare_start), "<= 1.5",
         f"{remote_start:.2f} / {bare_start:.2f} s (medians of {len(r['bare_start_s'])})"),
        ("forest predictions/s at 64 connections, via the model server / in-process pool",
         ratio(remote_pps, local_pps), ">= 0.7", f"{remote_pps:,.0f} / {local_pps:,.0f} per s"),
        ("light endpoint p99 with remote heavy predictions / idle "
         f"({LIGHT_RATE} req/s, {HEAVY_CLIENTS} heavy clients)",
         ratio(loaded, idle), "<= 1.5", f"{loaded:.2f} / {idle:.2f} ms"),
    ]  # fmt: skip
    return judged(rows)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        *targets_table(results["targets"]),
        "",
        _context(results["runs"]),
        "",
        f"Command: `{results['command']}`; server core {results['pinning']['server']}, load core "
        f"{results['pinning']['load']}; load average {results['load_average'][0]:.2f} before, "
        f"{results['load_average'][1]:.2f} after; {results['elapsed_s']:.0f} s. The remote-only web worker "
        f"had {results['runs']['remote_children']} child processes.",
    ]
    return "\n".join(lines)


def _context(r: dict[str, Any]) -> str:
    """The figures a reader needs to judge the rows above: what the web stack costs with no model,
    and today's alternative of four workers that each hold the models and a pool."""
    none, remote, local = r["no_models_memory"], r["remote_memory"], r["local_memory"]
    four_local = round(4 * local["pss_mb"], 1)
    two_tier = round(4 * remote["pss_mb"] + r["model_server_memory"]["pss_mb"], 1)
    return (
        f"For scale: a web worker with no model at all (ML_ENABLED=false) holds {none['rss_mb']} MB RSS "
        f"({none['pss_mb']} MB PSS) and is ready in {statistics.median(r['no_models_start_s']):.2f} s; "
        f"the remote-only worker {remote['rss_mb']} MB RSS. The model server (process and its pool) "
        f"holds {r['model_server_memory']['pss_mb']} MB PSS, the in-process worker with its pool "
        f"{local['pss_mb']} MB. Four workers that each hold the models and a pool: {four_local} MB PSS, "
        f"against {two_tier} MB for four remote-only workers and the model server."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tier", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer starts, shorter runs (about 1 minute)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tier.json")
    args = parser.parse_args(argv)
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    results_file = ResultsFile("bench.bench_tier", args.quick, profile, server_pin, load_pin)
    with tempfile.TemporaryDirectory(prefix="bench-tier-") as tmp:
        runs = run(profile, server_pin, load_pin, Path(tmp))
    results_file.write(args.out, {"runs": runs}, targets, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
