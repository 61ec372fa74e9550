"""Batch jobs' figures of `make bench` (issue 23's targets), in one run, against real processes.

`uv run python -m bench.bench_jobs [--quick] [--out PATH]`; with `--cpu-split`, only one forest
job's CPU split by process (bench/analysis.md, jobs).

Processes, each pinned to the server core (load generators on the other, as bench/run.py does):
a web process (`python -m app.cli serve`, the embedded worker off) and a job worker
(`python -m app.cli worker`), on one SQLite database; for the SIGKILL row, the same pair again on
PostgreSQL (a `mlservice_bench_jobs` database, re-created every run).

Measured:
1. Rows per second of one job on the worker, submit (upload included) to `succeeded`, after a
   warm-up job of one chunk (as the requests get a warm-up run and the runtime alone a warm-up
   call), against the same rows sent as 64-row requests to `POST /api/v1/models/{name}/predict`
   over 8 connections (wrk), iris (ONNX, threads) and the forest (breast_cancer, the process pool).
2. The same job against the runtime alone scoring the same rows in process (a registry built as
   the worker builds it, `runtime.run` in batches of the job's size, one after the other), each
   given both cores (a second web process and worker, unpinned): a worker reads, scores and commits
   at once, in a thread, its model process and its event loop. The runtime alone is taken at its
   best, on the server core or on both (on both, its process pool pays a wake-up across cores per
   batch). The ratio with everything on the server core is in the row's detail.
3. The worker's peak RSS (VmHWM, and VmRSS sampled every 0.1 s) while it scores a CSV of 1 GB
   (`--quick`: 100 MB) of forest rows, generated to a temporary file, against its RSS idle.
4. Submit to first row scored (the first chunk committed: `rows_done` > 0), idle service, one
   chunk of iris; median of several.
5. Rows lost or duplicated after SIGKILL of the worker mid-job, another worker resuming it, on
   SQLite and on PostgreSQL: every result row's number read back.

Writes bench/results/jobs.json, including `targets` and `markdown` (for docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    PYTHON,
    RESULTS,
    ROOT,
    Load,
    ResultsFile,
    Server,
    cores,
    descendants,
    free_port,
    judged,
    migrate,
    post_script,
    postgres_url,
    proc_cpu,
    register_and_login,
    service_env,
    status_field,
    targets_table,
)

MODELS = ("iris", "breast_cancer")
CHUNK_ROWS = 4096
REQUEST_ROWS = 64
CONNECTIONS = 8
WAIT_LIMIT_S = 1800.0


@dataclass(frozen=True)
class Profile:
    rows: int  # rows of the throughput jobs
    wrk_s: int  # each 64-row request run
    big_mb: int  # the memory row's CSV
    first_row_runs: int
    kill_rows: int

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(40_000, 4, 100, 3, 60_000) if quick else cls(200_000, 10, 1024, 5, 200_000)


# --------------------------------------------------------------------------- data


def model_rows(model: str, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows like the model's training data: its rows resampled, with a little noise."""
    from sklearn.datasets import load_breast_cancer, load_iris

    data = (load_iris() if model == "iris" else load_breast_cancer()).data
    rng = np.random.default_rng(seed)
    picked = data[rng.integers(0, len(data), n)]
    return np.round(picked * rng.uniform(0.97, 1.03, picked.shape), 4)


def feature_names(model: str) -> list[str]:
    manifest = json.loads((ROOT / "ml_models" / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["name"] == model)
    return [f["name"] for f in entry["features"]]


def csv_bytes(model: str, rows: np.ndarray) -> bytes:
    header = ",".join(feature_names(model))
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    return f"{header}\n{body}\n".encode()


def write_big_csv(path: Path, model: str, megabytes: int) -> int:
    """A CSV of about `megabytes` MB of the model's rows; returns its rows."""
    block = csv_bytes(model, model_rows(model, 20_000, seed=7)).split(b"\n", 1)[1]
    n_block = block.count(b"\n")
    target = megabytes * 1024 * 1024
    rows = 0
    with path.open("wb") as out:
        out.write(",".join(feature_names(model)).encode() + b"\n")
        written = 0
        while written < target:
            out.write(block)
            written += len(block)
            rows += n_block
    return rows


# --------------------------------------------------------------------------- processes


def http(method: str, url: str, token: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - a local URL
        raw = response.read()
        return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw


class Worker:
    """`python -m app.cli worker`, pinned; ready when its log says `worker_started`."""

    def __init__(self, name: str, env: dict[str, str], pin: list[str]) -> None:
        self.log_path = RESULTS / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*pin, PYTHON, "-m", "app.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while b"worker_started" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {name} did not start; see {self.log_path}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def env_for(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = service_env(database_url, port)
    env.update(
        {
            "JOBS_EMBEDDED_WORKER": "false",
            "JOBS_CHUNK_ROWS": str(CHUNK_ROWS),
            "JOBS_MAX_ROWS": "100000000",
            "JOBS_MAX_UPLOAD_BYTES": str(4 * 1024**3),
            "JOBS_MAX_QUEUED_PER_USER": "100",
            "LOG_LEVEL": "INFO",
            **extra,
        }
    )
    return env


@contextlib.contextmanager
def stack(database_url: str, pin: list[str], tag: str, **extra: str) -> Iterator[tuple[Server, Worker, str]]:
    """A migrated database, a web process and a worker on it, and a logged-in user's token."""
    port = free_port()
    env = env_for(database_url, port, **extra)
    migrate(env)
    with Server(f"jobs-web-{tag}", [PYTHON, "-m", "app.cli", "serve"], env, port, pin) as web:
        token = register_and_login(port)
        with Worker(f"jobs-worker-{tag}", env, pin) as worker:
            yield web, worker, token


# --------------------------------------------------------------------------- one job


def submit(port: int, token: str, model: str, body: Any, length: int | None = None) -> int:
    headers = {"Content-Type": "text/csv"}
    if length is not None:  # a file streamed up
        headers["Content-Length"] = str(length)
    found = http("POST", f"http://127.0.0.1:{port}/api/v1/jobs?model={model}", token, body, headers)
    return int(found["id"])


def job(port: int, token: str, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = http("GET", f"http://127.0.0.1:{port}/api/v1/jobs/{job_id}", token)
    return found


def wait_job(port: int, token: str, job_id: int, done: Any, every: float = 0.05) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        seen = job(port, token, job_id)
        if done(seen):
            return seen
        if seen["state"] in {"failed", "cancelled"} or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id}: {seen}")
        time.sleep(every)


def ended(seen: dict[str, Any]) -> bool:
    return bool(seen["state"] == "succeeded")


def job_throughput(port: int, token: str, model: str, body: bytes, rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    job_id = submit(port, token, model, body)
    submitted = time.perf_counter()
    seen = wait_job(port, token, job_id, ended)
    seconds = time.perf_counter() - started
    assert seen["rows_done"] == rows, seen
    out = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "upload_s": round(submitted - started, 2),
        "rows_per_s": round(rows / seconds, 1),
    }
    print(f"  {model} job: {out}", flush=True)
    return out


def request_throughput(load: Load, port: int, token: str, model: str, seconds: int) -> dict[str, Any]:
    rows = model_rows(model, REQUEST_ROWS * 16, seed=3)
    bodies = [{"rows": chunk.tolist()} for chunk in np.split(rows, 16)]
    script = post_script(load.workdir, f"jobs-{model}", f"/api/v1/models/{model}/predict", token, bodies)
    url = f"http://127.0.0.1:{port}/"
    load.wrk(url, CONNECTIONS, 1, script)  # warm-up
    result = load.wrk(url, CONNECTIONS, seconds, script)
    ok = sum(c for s, c in result.get("status_counts", {}).items() if s.startswith("2"))
    requests = result.get("requests") or 1
    result["rows_per_s"] = round(result["rps"] * ok / requests * REQUEST_ROWS, 1)
    print(f"  {model} 64-row requests x{CONNECTIONS}: {result['rows_per_s']:,.0f} rows/s", flush=True)
    return result


RUNTIME_ALONE = """
import asyncio, json, sys, time
import numpy as np
from app.core.config import Settings
from app.http.state import registry_settings
from app.ml.registry import ModelRegistry
from app.worker import JOB_BATCH_ROWS, worker_settings

async def main() -> None:
    model, rows_path = sys.argv[1], sys.argv[2]
    x = np.load(rows_path)
    registry = ModelRegistry(registry_settings(worker_settings(Settings())))
    await registry.start()
    try:
        served = registry.resolve(model)
        size = max(served.spec.max_batch_size, JOB_BATCH_ROWS)
        await served.runtime.run(x[:size], 60.0)  # warm-up
        started = time.perf_counter()
        for i in range(0, len(x), size):
            await served.runtime.run(x[i : i + size], 60.0)
        seconds = time.perf_counter() - started
    finally:
        await registry.close()
    print(json.dumps({"rows": len(x), "batch": size, "seconds": seconds, "rows_per_s": len(x) / seconds}))

asyncio.run(main())
"""


def runtime_alone(
    model: str, rows: np.ndarray, workdir: Path, env: dict[str, str], pin: list[str]
) -> dict[str, Any]:
    path = workdir / f"{model}-rows.npy"
    np.save(path, rows.astype(np.float32 if model == "iris" else np.float64))
    done = subprocess.run(
        [*pin, PYTHON, "-c", RUNTIME_ALONE, model, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["rows_per_s"] = round(out["rows_per_s"], 1)
    print(f"  {model} runtime alone: {out}", flush=True)
    return out


# --------------------------------------------------------------------------- rows


def throughput_rows(profile: Profile, load: Load, pin: list[str], workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url = f"sqlite+aiosqlite:///{workdir / 'jobs.db'}"
    with stack(url, pin, "sqlite") as (web, worker, token):
        load.server_pid = web.pid
        out["worker_idle_rss_mb"] = _kb_mb(status_field(worker.pid, "VmRSS"))
        for model in MODELS:
            rows = model_rows(model, profile.rows, seed=1)
            body = csv_bytes(model, rows)
            # Warmed up as the runtime alone and the requests are: a job of one chunk first.
            warm = CHUNK_ROWS
            job_throughput(web.port, token, model, csv_bytes(model, rows[:warm]), warm)
            entry: dict[str, Any] = {"job": job_throughput(web.port, token, model, body, profile.rows)}
            entry["requests"] = request_throughput(load, web.port, token, model, profile.wrk_s)
            entry["runtime"] = runtime_alone(model, rows, workdir, env_for(url, free_port()), pin)
            out[model] = entry
        # Submit to first row scored, idle: one chunk of iris at a time.
        body = csv_bytes("iris", model_rows("iris", CHUNK_ROWS, seed=2))
        firsts = []
        for _ in range(profile.first_row_runs):
            time.sleep(1.5)  # idle: the worker's consumer back to its slowest poll
            started = time.perf_counter()
            job_id = submit(web.port, token, "iris", body)
            wait_job(web.port, token, job_id, lambda j: j["rows_done"] > 0, every=0.005)
            firsts.append(round(time.perf_counter() - started, 3))
        out["first_row_s"] = firsts
        print(f"  submit to first row scored: {firsts} s", flush=True)
    # The job against the runtime alone again, each given both cores: the worker reads, scores and
    # commits at once in a thread, its model process and its event loop, as deployed.
    url = f"sqlite+aiosqlite:///{workdir / 'jobs-two-cores.db'}"
    with stack(url, [], "two-cores") as (web, _worker, token):
        for model in MODELS:
            rows = model_rows(model, profile.rows, seed=1)
            job_throughput(web.port, token, model, csv_bytes(model, rows[:CHUNK_ROWS]), CHUNK_ROWS)
            out[model]["two_cores"] = {
                "job": job_throughput(web.port, token, model, csv_bytes(model, rows), profile.rows),
                "runtime": runtime_alone(model, rows, workdir, env_for(url, free_port()), []),
            }
    return out


def _kb_mb(field: str | None) -> float | None:
    return round(int(field.split()[0]) / 1024, 1) if field else None


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb, self.samples = pid, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rss = _kb_mb(status_field(self.pid, "VmRSS"))
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss)
                self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def memory_row(profile: Profile, pin: list[str], workdir: Path) -> dict[str, Any]:
    csv_path = workdir / "big.csv"
    rows = write_big_csv(csv_path, "breast_cancer", profile.big_mb)
    size_mb = round(csv_path.stat().st_size / 1024**2, 1)
    print(f"memory: {size_mb} MB CSV, {rows:,} forest rows", flush=True)
    url = f"sqlite+aiosqlite:///{workdir / 'jobs-big.db'}"
    with stack(url, pin, "memory") as (web, worker, token):
        time.sleep(2.0)
        idle = _kb_mb(status_field(worker.pid, "VmRSS"))
        idle_hwm = _kb_mb(status_field(worker.pid, "VmHWM"))
        sampler = RssSampler(worker.pid)
        started = time.perf_counter()
        with csv_path.open("rb") as body:
            job_id = submit(web.port, token, "breast_cancer", body, csv_path.stat().st_size)
        uploaded = time.perf_counter() - started
        seen = wait_job(web.port, token, job_id, ended, every=1.0)
        seconds = time.perf_counter() - started
        sampler.stop()
        hwm = _kb_mb(status_field(worker.pid, "VmHWM"))
        csv_path.unlink()
    out = {
        "csv_mb": size_mb,
        "rows": rows,
        "rows_done": seen["rows_done"],
        "upload_s": round(uploaded, 1),
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds, 1),
        "idle_rss_mb": idle,
        "idle_hwm_mb": idle_hwm,
        "peak_rss_sampled_mb": sampler.peak_mb,
        "peak_hwm_mb": hwm,
        "samples": sampler.samples,
    }
    print(f"  {out}", flush=True)
    return out


def kill_row(database: str, profile: Profile, pin: list[str], workdir: Path) -> dict[str, Any]:
    url = postgres_url("mlservice_bench_jobs") if database == "postgresql" else (
        f"sqlite+aiosqlite:///{workdir / 'jobs-kill.db'}"
    )  # fmt: skip
    extra = {"JOBS_LEASE_SECONDS": "3", "JOBS_REAP_SECONDS": "1"}
    n = profile.kill_rows
    with stack(url, pin, f"kill-{database}", **extra) as (web, worker, token):
        job_id = submit(web.port, token, "iris", csv_bytes("iris", model_rows("iris", n, seed=5)))
        at = wait_job(web.port, token, job_id, lambda j: j["rows_done"] >= 2 * CHUNK_ROWS, every=0.005)
        worker.kill()
        killed_at = job(web.port, token, job_id)["rows_done"]
        with Worker(f"jobs-worker-kill-{database}-2", env_for(url, free_port(), **extra), pin):
            seen = wait_job(web.port, token, job_id, ended, every=0.1)
        raw = http(
            "GET", f"http://127.0.0.1:{web.port}/api/v1/jobs/{job_id}/results", token,
            headers={"Accept": "application/x-ndjson"},
        )  # fmt: skip
    numbers = [json.loads(line)["row"] for line in raw.decode().splitlines() if line.strip()]
    unique = set(numbers)
    out = {
        "rows": n,
        "rows_done_when_killed": max(at["rows_done"], killed_at),
        "result_rows": len(numbers),
        "lost": len(set(range(n)) - unique),
        "duplicated": len(numbers) - len(unique),
        "resumed_complete": killed_at < n,
        "rows_done": seen["rows_done"],
    }
    print(f"  SIGKILL on {database}: {out}", flush=True)
    return out


def run(
    profile: Profile, server_pin: list[str], load_pin: list[str], workdir: Path, kill_dbs: list[str]
) -> dict[str, Any]:
    load = Load(load_pin, workdir)
    out: dict[str, Any] = {"throughput": throughput_rows(profile, load, server_pin, workdir)}
    out["memory"] = memory_row(profile, server_pin, workdir)
    out["kill"] = {db: kill_row(db, profile, server_pin, workdir) for db in kill_dbs}
    return out


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results["runs"]
    t, m = r["throughput"], r["memory"]
    rows: list[tuple[str, float, str, str]] = []
    for model in MODELS:
        job_rps, req_rps = t[model]["job"]["rows_per_s"], t[model]["requests"]["rows_per_s"]
        rows.append((
            f"{model}: rows/s of one job on one worker / 64-row requests over {CONNECTIONS} connections",
            ratio(job_rps, req_rps), ">= 5", f"{job_rps:,.0f} / {req_rps:,.0f} rows/s",
        ))  # fmt: skip
    for model in MODELS:
        both = t[model]["two_cores"]
        job_rps = both["job"]["rows_per_s"]
        # The runtime alone at its best: given both cores, its process pool pays a wake-up on the
        # other core per batch and may be slower than on one.
        alone = max(both["runtime"]["rows_per_s"], t[model]["runtime"]["rows_per_s"])
        one_core = ratio(t[model]["job"]["rows_per_s"], t[model]["runtime"]["rows_per_s"])
        pinned, unpinned = t[model]["runtime"]["rows_per_s"], both["runtime"]["rows_per_s"]
        rows.append((
            f"{model}: rows/s of one job given both cores / the runtime alone in process at its "
            f"best (one core or both), batches of {both['runtime']['batch']}",
            ratio(job_rps, alone), ">= 0.5",
            f"{job_rps:,.0f} / {alone:,.0f} rows/s (the runtime alone: {pinned:,.0f} on one core, "
            f"{unpinned:,.0f} on both); everything on one core: {one_core}",
        ))  # fmt: skip
    peak = max(m["peak_hwm_mb"] or 0, m["peak_rss_sampled_mb"])
    rows.append((
        f"worker's peak RSS scoring a {m['csv_mb']:,.0f} MB CSV / idle",
        ratio(peak, m["idle_rss_mb"]), "<= 1.5",
        f"{peak} / {m['idle_rss_mb']} MB ({m['rows']:,} forest rows at {m['rows_per_s']:,.0f} rows/s)",
    ))  # fmt: skip
    first = statistics.median(t["first_row_s"])
    rows.append((
        "submit to first row scored, idle (s, median)", round(first, 3), "<= 1",
        f"{t['first_row_s']} s, one {CHUNK_ROWS}-row iris chunk",
    ))  # fmt: skip
    for db, k in r["kill"].items():
        rows.append((
            f"rows lost or duplicated after SIGKILL of the worker mid-job ({db})",
            k["lost"] + k["duplicated"], "<= 0",
            f"{k['rows']:,} rows, killed at {k['rows_done_when_killed']:,}; {k['lost']} lost, "
            f"{k['duplicated']} duplicated",
        ))  # fmt: skip
    return judged(rows)


def markdown(results: dict[str, Any]) -> str:
    return "\n".join([
        *targets_table(results["targets"]),
        "",
        f"Command: `{results['command']}`; web process and worker on core {results['pinning']['server']}, "
        f"load on core {results['pinning']['load']} (the runtime-alone rows: both cores each); "
        f"JOBS_CHUNK_ROWS {CHUNK_ROWS}; load average "
        f"{results['load_average'][0]:.2f} before, {results['load_average'][1]:.2f} after; "
        f"{results['elapsed_s']:.0f} s.",
    ])  # fmt: skip


# --------------------------------------------------------------------------- where the time goes


def cpu_split(rows: int, runs: int) -> None:
    """`--cpu-split`: one forest job's time, split by process (bench/analysis.md, jobs): the web
    process's upload, the worker's own CPU, its model process's, against the runtime alone."""
    pin, _ = cores()
    model = "breast_cancer"
    x = model_rows(model, rows, seed=1)
    body = csv_bytes(model, x)
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'jobs.db'}"
        with stack(url, pin, "split") as (web, worker, token):
            job_throughput(web.port, token, model, csv_bytes(model, x[:CHUNK_ROWS]), CHUNK_ROWS)
            processes = [web.pid, worker.pid, *descendants(worker.pid)]
            for _ in range(runs):
                before = {pid: proc_cpu(pid) for pid in processes}
                started = time.perf_counter()
                job_id = submit(web.port, token, model, body)
                uploaded = time.perf_counter()
                wait_job(web.port, token, job_id, ended, every=0.2)
                ended_at = time.perf_counter()
                used = {pid: round(proc_cpu(pid) - before[pid], 2) for pid in processes}
                print(
                    f"{rows:,} rows in {ended_at - started:.2f} s (upload {uploaded - started:.2f} s); "
                    f"CPU s: web {used.pop(web.pid)}, worker {used.pop(worker.pid)}, "
                    f"its model processes {sorted(v for v in used.values() if v)}",
                    flush=True,
                )
            runtime_alone(model, x, Path(tmp), env_for(url, free_port()), pin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, a 100 MB CSV (about 3 minutes)")
    parser.add_argument("--kill-db", default="sqlite,postgresql", help="databases of the SIGKILL row")
    parser.add_argument("--out", type=Path, default=RESULTS / "jobs.json")
    parser.add_argument("--cpu-split", action="store_true", help="only one forest job's CPU by process")
    args = parser.parse_args(argv)
    if args.cpu_split:
        cpu_split(200_000, 3)
        return 0
    profile = Profile.make(args.quick)
    server_pin, load_pin = cores()
    results_file = ResultsFile("bench.bench_jobs", args.quick, profile, server_pin, load_pin)
    kill_dbs = [d.strip() for d in args.kill_db.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        runs = run(profile, server_pin, load_pin, Path(tmp), kill_dbs)
    results_file.write(args.out, {"runs": runs}, targets, markdown)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())
