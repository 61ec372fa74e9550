"""Shadow traffic's figures of `make bench` (issue 24): what a shadow costs the requests it copies.

`uv run python -m bench.bench_shadow [--quick] [--out PATH]`.

One web process (pinned to the server core) on SQLite, with a copy of ml_models/ whose manifest
also lists iris 2.0.0 (the same file as 1.0.0: a shadow of the same cost) and iris 3.0.0 (the same
file with a time limit of 1 ms: a shadow that misses its time limit under load). wrk on the other
core, 16 connections, `POST /api/v1/predict` (iris, the `default` alias):
1. No shadow against 2.0.0 shadowing every request, alternated (`rounds` of each), p99 compared.
2. 3.0.0 shadowing every request: the primary's failures and its slowest request against its own
   time limit, and the copies the shadow dropped (`shadow_dropped_total`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    PYTHON,
    RESULTS,
    ROOT,
    Load,
    ResultsFile,
    Server,
    cores,
    free_port,
    judged,
    migrate,
    post_script,
    register_and_login,
    service_env,
    targets_table,
)

CONNECTIONS = 16
ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass(frozen=True)
class Profile:
    seconds: int
    rounds: int

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(4, 1) if quick else cls(10, 2)


def model_dir(workdir: Path) -> tuple[Path, int]:
    """ml_models/ with iris 2.0.0 (the same file) and 3.0.0 (the same file, a 1 ms time limit);
    returns it and iris's own time limit."""
    out = workdir / "models"
    shutil.copytree(ROOT / "ml_models", out)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    iris = next(m for m in manifest["models"] if m["name"] == "iris")
    manifest["models"] += [{**iris, "version": "2.0.0"}, {**iris, "version": "3.0.0", "timeout_ms": 1}]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out, int(iris["timeout_ms"])


def call(port: int, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - a local URL
        raw = response.read()
    return json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()


def dropped(port: int, token: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in call(port, token, "GET", "/metrics").splitlines():
        if line.startswith("shadow_dropped_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.removeprefix("shadow_dropped_total")] = float(value)
    return out


def shadow(port: int, token: str, version: str | None) -> None:
    body: dict[str, Any] = {"version": "1.0.0"}
    if version is not None:
        body["shadow"] = {"version": version, "percent": 100}
    call(port, token, "PUT", "/api/v1/models/iris/aliases/default", body)


def run(profile: Profile, server_pin: list[str], load_pin: list[str], workdir: Path) -> dict[str, Any]:
    port = free_port()
    database = workdir / "shadow.db"
    models, timeout_ms = model_dir(workdir)
    env = service_env(f"sqlite+aiosqlite:///{database}", port)
    env.update(
        {"RATE_LIMIT_ENABLED": "false", "ML_MODEL_DIR": str(models), "MODEL_STATE_POLL_SECONDS": "0.5"}
    )
    migrate(env)
    load = Load(load_pin, workdir)
    with Server("shadow", [PYTHON, "-m", "app.cli", "serve"], env, port, server_pin) as web:
        token = register_and_login(port)
        with sqlite3.connect(database) as db:
            db.execute("UPDATE users SET is_admin = 1")
        for version in ("2.0.0", "3.0.0"):
            call(port, token, "POST", f"/api/v1/model-repository/iris/versions/{version}/load")
        load.server_pid = web.pid
        script = post_script(workdir, "shadow", "/api/v1/predict", token, [{"features": ROW}])
        url = f"http://127.0.0.1:{port}/"
        load.wrk(url, CONNECTIONS, 2, script)  # warm-up
        phases: dict[str, list[dict[str, Any]]] = {"none": [], "same-cost": []}
        for _ in range(profile.rounds):
            for phase, version in (("none", None), ("same-cost", "2.0.0")):
                shadow(port, token, version)
                result = load.wrk(url, CONNECTIONS, profile.seconds, script)
                print(
                    f"  {phase}: p99 {result['p99_ms']} ms, {result['rps']:,.0f} req/s, "
                    f"server CPU {result.get('server_cpu_us')} µs a request",
                    flush=True,
                )
                phases[phase].append(result)
        shadow(port, token, "3.0.0")
        before = dropped(port, token)
        missing = load.wrk(url, CONNECTIONS, profile.seconds, script)
        after = dropped(port, token)
        shadow(port, token, None)
    drops = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    print(
        f"  missing its time limit: {missing.get('status_counts')}, max {missing['max_ms']} ms, "
        f"dropped {drops}",
        flush=True,
    )
    return {"phases": phases, "missing": missing, "dropped": drops, "timeout_ms": timeout_ms}


def _median(results: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in results), 2)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results["runs"]
    none, same = r["phases"]["none"], r["phases"]["same-cost"]
    p99_none, p99_same = _median(none, "p99_ms"), _median(same, "p99_ms")
    m = r["missing"]
    failed = m.get("non_2xx", 0) + m.get("socket_errors", 0)
    slow = int(m["max_ms"] > r["timeout_ms"])
    return judged([
        (
            f"primary predict p99 with a shadow of the same cost at 100% / no shadow "
            f"({CONNECTIONS} connections)",
            round(p99_same / p99_none, 2), "<= 1.2",
            f"{p99_same} / {p99_none} ms (medians of {len(same)}); {_median(same, 'rps'):,.0f} / "
            f"{_median(none, 'rps'):,.0f} req/s; server CPU {_median(same, 'server_cpu_us'):,.0f} / "
            f"{_median(none, 'server_cpu_us'):,.0f} µs a request",
        ),
        (
            "primary requests failed or slowed past their time limit while the shadow missed its own",
            failed + slow, "<= 0",
            f"{m['requests']:,} requests, {failed} not 2xx, slowest {m['max_ms']} ms against "
            f"{r['timeout_ms']} ms; the shadow dropped {sum(r['dropped'].values()):,.0f} copies "
            f"({', '.join(f'{k} {v:,.0f}' for k, v in r['dropped'].items())})",
        ),
    ])  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    return "\n".join([
        *targets_table(results["targets"]),
        "",
        f"Command: `{results['command']}`; web process on core {results['pinning']['server']}, wrk on "
        f"core {results['pinning']['load']}; load average {results['load_average'][0]:.2f} before, "
        f"{results['load_average'][1]:.2f} after; {results['elapsed_s']:.0f} s.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s windows, one round")
    parser.add_argument("--out", type=Path, default=RESULTS / "shadow.json")
    args = parser.parse_args(argv)
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    results_file = ResultsFile("bench.bench_shadow", args.quick, profile, server_pin, load_pin)
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        runs = run(profile, server_pin, load_pin, Path(tmp))
    results_file.write(args.out, {"runs": runs}, targets, markdown)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
