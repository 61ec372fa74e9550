"""The model-serving figures of `make bench`, over HTTP against the real service.

`uv run python -m bench.bench_serving [--quick] [--out PATH]`

1. Event-loop isolation (the guide's experiment). The service (`python -m app.cli serve`, one
   worker, access log off, rate limits off, SQLite in a temporary folder) is driven on a light
   endpoint at a fixed 50 req/s, open loop (bench/openloop.py: latency counted from each request's
   scheduled send time): `GET /healthz`, then an authenticated `GET /api/v1/users/me`, (a) with
   nothing else running, (b) while wrk keeps 8 connections busy on `POST /api/v1/predict-heavy`
   (the skops forest, process pool). The contrast: bench/inline_app.py, the same forest called
   inside an `async def` on the event loop, measured the same way on its `GET /healthz`.
   The figure is the light endpoint's p99 under heavy load divided by its idle p99.
2. Predictions per second for each model over HTTP: `POST /api/v1/models/{name}/predict` with one
   row per request (a random row of the model's dataset), wrk at concurrency 1 and 64, with the
   service started with `ML_BATCHING_ENABLED=true` and again with `false`; non-2xx answers counted
   and left out of the predictions per second.
3. Memory after the load: VmRSS and PSS (/proc/<pid>/smaps_rollup) of the web worker, the
   forkserver, and each model worker process.

Server pinned to one core, load generators to the other (taskset, as bench/run.py does); the
model workers are children of the server and inherit its core, so the service and the inline app
get the same CPU. Writes bench/results/serving.json, including `targets` (issue 5's rows) and
`markdown` (for docs/performance.md). About 3 minutes (`--quick`: about 1).
"""

from __future__ import annotations

import argparse
import json
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
    light_run,
    memory_of,
    post_script,
    raw_get,
    register_and_login,
    service_env,
    status_field,
)

MODEL_DIR = ROOT / "ml_models"
ROWS_PER_MODEL = 64


@dataclass(frozen=True)
class Profile:
    light_s: float  # each open-loop run of the light endpoint
    wrk_s: int  # each throughput run
    warmup_s: int  # wrk warm-up before each throughput figure (0: none)

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(4.0, 2, 0) if quick else cls(10.0, 5, 1)


# --------------------------------------------------------------------------- data and requests


def model_rows() -> dict[str, list[list[float]]]:
    """Real rows for each model of the manifest (its training dataset), zeros for unknown models."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    datasets = {
        "iris": load_iris().data,
        "breast_cancer": load_breast_cancer().data,
        "diabetes": load_diabetes(scaled=False).data,
    }
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    out: dict[str, list[list[float]]] = {}
    for model in manifest["models"]:
        data = datasets.get(model["name"])
        if data is not None and data.shape[1] == len(model["features"]):
            out[model["name"]] = [[float(v) for v in row] for row in data[:ROWS_PER_MODEL]]
        else:
            out[model["name"]] = [[0.0] * len(model["features"])]
    return out


def manifest_roles() -> tuple[dict[str, str], str]:
    """Each model's executor, and the name of the heavy (process-pool) model."""
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    executors = {m["name"]: m["executor"] for m in manifest["models"]}
    heavy = manifest.get("heavy_model") or next(n for n, e in executors.items() if e == "process")
    return executors, heavy


# --------------------------------------------------------------------------- the service


def start_service(name: str, workdir: Path, batching: bool, server_pin: list[str]) -> Server:
    port = free_port()
    env = service_env(f"sqlite+aiosqlite:///{workdir / f'{name}.db'}", port)
    env.update({"RATE_LIMIT_ENABLED": "false", "ML_BATCHING_ENABLED": "true" if batching else "false"})
    server = Server(name, [PYTHON, "-m", "app.cli", "serve"], env, port, server_pin)
    print(f"{name}: ready in {server.ready_s:.1f} s on port {port}", flush=True)
    return server


# --------------------------------------------------------------------------- measurements


def isolation(  # noqa: PLR0917 - one call site per server, named there
    load: Load, port: int, lights: dict[str, str], heavy_path: str, heavy_script: Path, seconds: float
) -> dict[str, Any]:
    """Each light endpoint idle, then each again under the heavy closed loop."""
    out: dict[str, Any] = {
        name: {"idle": light_run(load, port, raw, seconds, f"{name} idle")} for name, raw in lights.items()
    }
    heavy = HeavyLoad(load, f"http://127.0.0.1:{port}{heavy_path}", heavy_script)
    try:
        for name, raw in lights.items():
            out[name]["loaded"] = light_run(load, port, raw, seconds, f"{name} under heavy load")
    finally:
        out["heavy"] = heavy.stop()
    for name in lights:
        idle, loaded = out[name]["idle"]["latency"]["p99_ms"], out[name]["loaded"]["latency"]["p99_ms"]
        out[name]["p99_ratio"] = round(loaded / idle, 2) if idle else None
    return out


def _trim(result: dict[str, Any]) -> dict[str, Any]:
    ok = sum(c for s, c in result.get("status_counts", {}).items() if s.startswith("2"))
    requests = result.get("requests") or sum(result.get("status_counts", {}).values()) or 1
    result["predictions_per_s"] = round(result["rps"] * ok / requests, 1)
    return result


def throughput(  # noqa: PLR0917 - the one call site passes them in order
    load: Load,
    port: int,
    token: str,
    rows: dict[str, list[list[float]]],
    profile: Profile,
    batching: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url = f"http://127.0.0.1:{port}/"
    for name, model_rows_ in rows.items():
        script = post_script(
            load.workdir,
            f"predict-{name}",
            f"/api/v1/models/{name}/predict",
            token,
            [{"rows": [row]} for row in model_rows_],
        )
        if profile.warmup_s:  # connections, the model's first batches, the prediction log's backlog
            load.wrk(url, 1, profile.warmup_s, script)
        out[name] = {"c1": _trim(load.wrk(url, 1, profile.wrk_s, script))}
        if profile.warmup_s:
            load.wrk(url, 64, profile.warmup_s, script)
        out[name]["c64"] = _trim(load.wrk(url, 64, profile.wrk_s, script))
        c1, c64 = out[name]["c1"], out[name]["c64"]
        print(
            f"  {name} batching {'on' if batching else 'off'}: c1 {c1['predictions_per_s']:,.0f}/s, "
            f"c64 {c64['predictions_per_s']:,.0f}/s (p50 {c64.get('p50_ms')} ms, p99 {c64.get('p99_ms')} ms, "
            f"statuses {c64.get('status_counts')})",
            flush=True,
        )
    return out


def memory(pid: int, executors: dict[str, str]) -> list[dict[str, Any]]:
    """The web worker and each child, with its role (forkserver children are the model workers)."""
    process_models = [name for name, executor in executors.items() if executor == "process"]
    worker_label = (
        f"model worker ({', '.join(process_models)})" if len(process_models) == 1 else "model worker"
    )
    out = [{"role": "web worker", "pid": pid, **memory_of(pid)}]
    roles: dict[int, str] = {}
    for child in descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int(status_field(child, "PPid") or 0)
        except OSError:
            continue
        if "resource_tracker" in cmd:
            role = "resource tracker"
        elif roles.get(ppid) == "forkserver":
            role = worker_label
        elif "forkserver" in cmd:
            role = "forkserver"
        else:
            role = "other"
        roles[child] = role
        out.append({"role": role, "pid": child, **memory_of(child)})
    return out


# --------------------------------------------------------------------------- report


def _lat(ol: dict[str, Any]) -> str:
    lat = ol["latency"]
    return f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['max_ms']:.1f}"


def _ratio_text(d: dict[str, Any]) -> str:
    return (
        f"{d['p99_ratio']:.1f}x (p99 {d['idle']['latency']['p99_ms']:.1f} -> "
        f"{d['loaded']['latency']['p99_ms']:.1f} ms)"
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's rows: the isolation ratio per light endpoint, the batching ratio per model."""
    rows: list[dict[str, Any]] = []
    svc, inline = results["isolation"]["service"], results["isolation"]["inline"]
    labels = {"healthz": "GET /healthz", "users_me": "GET /api/v1/users/me"}
    for name in ("healthz", "users_me"):
        if name not in svc:
            continue
        measured = _ratio_text(svc[name])
        if name in inline:
            measured += f"; the same model inline in `async def`: {_ratio_text(inline[name])}"
        ratio = svc[name]["p99_ratio"]
        rows.append(
            {
                "metric": "light endpoint p99 while heavy predictions run "
                f"({labels[name]} at {LIGHT_RATE} req/s, {HEAVY_CLIENTS} clients on predict-heavy)",
                "target": "<= 2x idle p99",
                "measured": measured,
                "met": ratio is not None and ratio <= 2,
            }
        )
    for name, ratio in results["batching_ratio"].items():
        on = results["throughput"]["on"][name]["c64"]["predictions_per_s"]
        off = results["throughput"]["off"][name]["c64"]["predictions_per_s"]
        rows.append(
            {
                "metric": f"predictions per second at concurrency 64, batching on vs off: {name} "
                f"({results['executors'][name]} pool)",
                "target": ">= 4x",
                "measured": f"{ratio:.1f}x ({on:,.0f} vs {off:,.0f} per s)",
                "met": ratio >= 4,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    iso = results["isolation"]
    p = results["profile"]
    lines = [
        "### Event-loop isolation over HTTP (bench/bench_serving.py)",
        "",
        f"A light endpoint at a fixed {LIGHT_RATE} req/s (open loop, {p['light_s']:.0f} s, latency from the "
        f"scheduled send), idle and while wrk keeps {HEAVY_CLIENTS} connections busy on the heavy model "
        "(the scikit-learn forest). *Service*: `POST /api/v1/predict-heavy`, process pool. *Inline*: "
        "bench/inline_app.py, the same forest called in an `async def` on the event loop. The model "
        "workers inherit the server's core, so service and inline app get the same CPU. The service "
        "runs on SQLite in a temporary folder, rate limits off.",
        "",
        "| Server | light endpoint | idle p50 / p99 / max ms | under heavy load p50 / p99 / max ms "
        "| p99 loaded / idle | heavy req/s (non-2xx) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"healthz": "GET /healthz", "users_me": "GET /api/v1/users/me"}
    for server, data in (("service (process pool)", iso["service"]), ("inline `async def`", iso["inline"])):
        heavy = data["heavy"]
        for name, label in labels.items():
            if name in data:
                d = data[name]
                lines.append(
                    f"| {server} | {label} | {_lat(d['idle'])} | {_lat(d['loaded'])} | "
                    f"**{d['p99_ratio']:.1f}x** | {heavy['rps']:,.0f} ({heavy['non_2xx']}) |"
                )
    lines += [
        "",
        "### Predictions per second over HTTP, one row per request",
        "",
        f"`POST /api/v1/models/{{name}}/predict`, wrk for {p['wrk_s']} s per figure; the service started "
        "with `ML_BATCHING_ENABLED=true`, then `false`. Predictions per second count 2xx answers only. "
        "*Web worker CPU* is the web process's own CPU time per request (model workers not included): "
        "one core divided by it is the most requests a second that one web worker can parse, "
        "authenticate, log and answer, whatever the model costs.",
        "",
        "| Model | executor | batching | concurrency 1 /s | concurrency 64 /s | at 64: p50 / p99 ms "
        "| at 64: non-2xx | at 64: web worker CPU µs/req | on vs off at 64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ratio in results["batching_ratio"].items():
        for mode in ("on", "off"):
            r = results["throughput"][mode][name]
            c64 = r["c64"]
            lines.append(
                f"| {name} | {results['executors'][name]} | {mode} | {r['c1']['predictions_per_s']:,.0f} "
                f"| {c64['predictions_per_s']:,.0f} | {c64.get('p50_ms', float('nan')):.1f} / "
                f"{c64.get('p99_ms', float('nan')):.1f} | {c64['non_2xx'] + c64['socket_errors']} "
                f"| {c64['server_cpu_us']:,.0f} | {f'**{ratio:.1f}x**' if mode == 'on' else ''} |"
            )
    lines += [
        "",
        "### Memory after the load (MB)",
        "",
        "| Server | process | RSS | PSS | private (USS) |",
        "|---|---|---|---|---|",
    ]
    for label, procs in (
        ("service, batching on", results["memory"]["on"]),
        ("service, batching off", results["memory"]["off"]),
        ("inline app", results["memory"]["inline"]),
    ):
        for proc in procs:
            lines.append(
                f"| {label} | {proc['role']} | {proc['rss_mb']} | {proc['pss_mb']} | {proc['uss_mb']} |"
            )
    lines += [
        "",
        "PSS shares each page among the processes that map it: the model workers are forked from the "
        "forkserver, which already imported scikit-learn, so most of a worker's RSS is shared with it.",
        "",
        f"Run in {results['elapsed_s']:.0f} s by `{results['command']}`; load average "
        f"{results['load_average'][0]:.1f} before, {results['load_average'][1]:.1f} after "
        "(the machine is shared: compare rows of one run, not absolute values).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 1 minute)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args(argv)
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    results_file = ResultsFile("bench.bench_serving", args.quick, profile, server_pin, load_pin)
    executors, heavy_name = manifest_roles()
    rows = model_rows()
    heavy_body = [{"features": row} for row in rows[heavy_name]]
    results: dict[str, Any] = {
        "executors": executors,
        "heavy_model": heavy_name,
        "isolation": {},
        "throughput": {},
        "memory": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        load = Load(load_pin, workdir)
        for batching in (True, False):
            mode = "on" if batching else "off"
            with start_service(f"serving-batching-{mode}", workdir, batching, server_pin) as server:
                load.server_pid = server.pid
                token = register_and_login(server.port)
                if batching:
                    lights = {
                        "healthz": raw_get(server.port, "/healthz"),
                        "users_me": raw_get(server.port, "/api/v1/users/me", token),
                    }
                    script = post_script(workdir, "heavy", "/api/v1/predict-heavy", token, heavy_body)
                    print("service: event-loop isolation", flush=True)
                    results["isolation"]["service"] = isolation(
                        load, server.port, lights, "/api/v1/predict-heavy", script, profile.light_s
                    )
                results["throughput"][mode] = throughput(load, server.port, token, rows, profile, batching)
                results["memory"][mode] = memory(server.pid, executors)
        port = free_port()
        argv_inline = [PYTHON, "-m", "bench.inline_app", "--port", str(port)]
        with Server("serving-inline", argv_inline, base_env(), port, server_pin) as server:
            print(f"inline app: ready in {server.ready_s:.1f} s on port {port}", flush=True)
            load.server_pid = server.pid
            script = post_script(workdir, "heavy-inline", "/predict-heavy-inline", None, heavy_body)
            results["isolation"]["inline"] = isolation(
                load,
                port,
                {"healthz": raw_get(port, "/healthz")},
                "/predict-heavy-inline",
                script,
                profile.light_s,
            )
            results["memory"]["inline"] = memory(server.pid, {})
    results["batching_ratio"] = {
        name: round(
            results["throughput"]["on"][name]["c64"]["predictions_per_s"]
            / max(results["throughput"]["off"][name]["c64"]["predictions_per_s"], 1e-9),
            2,
        )
        for name in rows
    }
    results_file.write(args.out, results, targets, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
