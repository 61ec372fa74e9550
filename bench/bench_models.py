"""Model runtime benchmark: per-call latency of each runtime, the GIL effect, and micro-batching.

`uv run python -m bench.bench_models [--quick] [--json PATH]`

1. Latency of one call (median and p99) with 1 row and a full batch, for each runtime: ONNX
   Runtime sessions (as the registry configures them), scikit-learn's forest in this process, the
   same forest through the process pool (pickling and IPC included), and the registry's thread hop.
2. The GIL: calls per second with 1 thread and with 4 threads calling the same model. A runtime
   that releases the GIL scales with the cores; one that holds it does not (or gets slower).
   The process pool with 1 and 2 workers, for comparison.
3. The registry end to end: 64 concurrent callers sending one row each, batching on and off.

Prints Markdown tables (pasted into docs/models.md) and optionally writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import skops.io as sio
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from app.ml import worker
from app.ml.formats import RUNTIMES
from app.ml.manifest import load_manifest, read_verified
from app.ml.registry import ModelRegistry, RegistrySettings

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "ml_models"


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _latency(call: Callable[[], object], seconds: float) -> dict[str, float]:
    """Median and p99 wall time of one call, and its mean CPU time, in microseconds.

    CPU time per call hardly depends on other load on the machine; wall time does.
    """
    for _ in range(20):
        call()
    samples: list[float] = []
    cpu = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    cpu_us = (time.process_time() - cpu) / len(samples) * 1e6
    samples.sort()
    return {
        "median_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99)],
        "cpu_us": cpu_us,
        "n": len(samples),
    }


def _throughput(call: Callable[[], object], threads: int, seconds: float) -> tuple[float, float]:
    """Calls per second with `threads` threads each calling in a loop, and the CPU cores used.

    Cores used (process CPU time / wall time) shows parallelism even on a busy machine: code
    that holds the GIL cannot use more than about one core, whatever the number of threads.
    """
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            call()
            n += 1
        counts[i] = n

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    return sum(counts) / wall, (time.process_time() - cpu) / wall


def _loop_lag(call: Callable[[], object] | None, seconds: float) -> dict[str, float]:
    """How late a 1 ms asyncio timer fires while another thread calls the model in a loop.

    This is what a web process feels: a runtime that holds the GIL delays every coroutine.
    """
    stop = threading.Event()
    thread = None
    if call is not None:
        work = call

        def background() -> None:
            while not stop.is_set():
                work()

        thread = threading.Thread(target=background)
        thread.start()

    async def ticker() -> list[float]:
        lags: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - start - 0.001) * 1000)
        return lags

    try:
        lags = sorted(asyncio.run(ticker()))
    finally:
        stop.set()
        if thread is not None:
            thread.join()
    return {"p50_ms": statistics.median(lags), "p99_ms": lags[int(len(lags) * 0.99)], "max_ms": lags[-1]}


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool like the registry's: forkserver workers that load the forest once."""
    spec = next(s for s in load_manifest(MODEL_DIR).models if s.name == "breast_cancer")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["app.ml.worker_preload"])
    initargs = (
        RUNTIMES["skops"].implementation,
        str(MODEL_DIR / spec.file),
        spec.sha256,
        list(spec.trusted_types),
    )
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=worker.init, initargs=initargs)
    wait([pool.submit(worker.describe) for _ in range(workers)])
    return pool


def _pool_throughput(x: np.ndarray, workers: int, seconds: float) -> float:
    """Forest calls per second through a pool of `workers` processes, kept busy by 2x requests."""
    with _pool(workers) as pool:
        done = 0
        start = time.perf_counter()
        pending = {pool.submit(worker.predict, x, "classification") for _ in range(2 * workers)}
        while time.perf_counter() - start < seconds:
            finished, pending = wait(pending, return_when="FIRST_COMPLETED")
            done += len(finished)
            pending |= {pool.submit(worker.predict, x, "classification") for _ in finished}
        elapsed = time.perf_counter() - start
        wait(pending)
    return done / elapsed


async def _registry_run(
    batching: bool, name: str, rows: list[list[float]], clients: int, seconds: float
) -> dict[str, Any]:
    registry = ModelRegistry(
        RegistrySettings(model_dir=MODEL_DIR, process_workers=1, batching_enabled=batching)
    )
    await registry.start()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await registry.predict_one(name, rows[i % len(rows)])
            latencies.append((time.perf_counter() - start) * 1000)
            i += clients

    try:
        for i in range(clients):  # warm-up
            await registry.predict_one(name, rows[i % len(rows)])
        key = (name, registry.get(name).version)  # the metrics are per model version
        before = registry.metrics()[key].stats
        batches0, rows0 = before.batches, before.batch_rows
        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
        stats = registry.metrics()[key].stats
    finally:
        await registry.close()
    latencies.sort()
    batches = stats.batches - batches0
    return {
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "mean_batch_rows": (stats.batch_rows - rows0) / max(1, batches),
    }


class Models:
    """The served model files loaded directly, plus the forest converted to ONNX for comparison."""

    def __init__(self) -> None:
        manifest = {s.name: s for s in load_manifest(MODEL_DIR).models}
        self.iris_x = load_iris().data.astype(np.float32)
        self.cancer_x = load_breast_cancer().data.astype(np.float32)
        self.diabetes_x = load_diabetes(scaled=False).data.astype(np.float32)
        self.iris = _session(read_verified(MODEL_DIR, manifest["iris"]))
        self.diabetes = _session(read_verified(MODEL_DIR, manifest["diabetes"]))
        cancer = manifest["breast_cancer"]
        self.forest = sio.loads(read_verified(MODEL_DIR, cancer), trusted=list(cancer.trusted_types))
        converted = to_onnx(
            self.forest,
            initial_types=[("input", FloatTensorType([None, 30]))],
            target_opset={"": 22, "ai.onnx.ml": 3},
            options={id(self.forest): {"zipmap": False}},
        )
        self.forest_onnx = _session(converted.SerializeToString())


def _onnx_call(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    return lambda: session.run(None, {"input": x})


def _row(label: str, one: dict[str, float], full: dict[str, float], batch: int) -> str:
    def cell(r: dict[str, float]) -> str:
        cpu = f" / {r['cpu_us']:,.0f}" if "cpu_us" in r else ""
        return f"{r['median_us']:,.0f} / {r['p99_us']:,.0f}{cpu}"

    return f"| {label} | {cell(one)} | {cell(full)} ({batch} rows) |"


async def _registry_latency(m: Models, seconds: float) -> dict[str, dict[str, float]]:
    """Sequential calls through the registry (batching off): the cost of the executor hop."""
    registry = ModelRegistry(RegistrySettings(model_dir=MODEL_DIR, process_workers=1, batching_enabled=False))
    await registry.start()
    out: dict[str, dict[str, float]] = {}
    try:
        for name, data, batch in (("iris", m.iris_x, 64), ("breast_cancer", m.cancer_x, 128)):
            for rows in (1, batch):
                x = data[:rows]
                for _ in range(20):
                    await registry.predict(name, x)
                samples: list[float] = []
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    start = time.perf_counter_ns()
                    await registry.predict(name, x)
                    samples.append((time.perf_counter_ns() - start) / 1000)
                samples.sort()
                out[f"{name}/{rows}"] = {
                    "median_us": statistics.median(samples),
                    "p99_us": samples[int(len(samples) * 0.99)],
                }
    finally:
        await registry.close()
    return out


def bench_latency(m: Models, seconds: float) -> dict[str, Any]:
    print("\n## One call (microseconds: median / p99 wall time / mean CPU time in this process)\n")
    print("| Runtime | 1 row | full batch |")
    print("|---|---|---|")
    cases: list[tuple[str, Callable[[np.ndarray], Callable[[], object]], np.ndarray, int]] = [
        ("ONNX iris logistic regression", lambda x: _onnx_call(m.iris, x), m.iris_x, 64),
        ("ONNX diabetes ridge", lambda x: _onnx_call(m.diabetes, x), m.diabetes_x, 64),
        ("ONNX forest (converted, not served)", lambda x: _onnx_call(m.forest_onnx, x), m.cancer_x, 128),
        ("scikit-learn forest, in process", lambda x: lambda: m.forest.predict_proba(x), m.cancer_x, 128),
    ]
    latency: dict[str, Any] = {}
    for label, make, data, batch in cases:
        one = _latency(make(data[:1]), seconds)
        full = _latency(make(data[:batch]), seconds)
        latency[label] = {"1": one, str(batch): full}
        print(_row(label, one, full, batch))
    with _pool(1) as pool:
        empty = _latency(lambda: pool.submit(worker.describe).result(), seconds)
    latency["process pool round trip, no computation"] = {"1": empty}
    print(
        f"| process pool round trip, no computation | {empty['median_us']:,.0f} / {empty['p99_us']:,.0f} | |"
    )
    served = asyncio.run(_registry_latency(m, seconds))
    for name, label, batch in (
        ("iris", "registry, iris (thread-pool hop included)", 64),
        ("breast_cancer", "registry, forest (process round trip included)", 128),
    ):
        one, full = served[f"{name}/1"], served[f"{name}/{batch}"]
        latency[label] = {"1": one, str(batch): full}
        print(_row(label, one, full, batch))
    return latency


def bench_gil(m: Models, seconds: float) -> dict[str, Any]:
    print("\n## Threads and the GIL (calls per second)\n")
    print("| Runtime | 1 thread | 4 threads | 4 vs 1 | CPU cores used by 4 threads |")
    print("|---|---|---|---|---|")
    gil: dict[str, Any] = {}
    for label, call in (
        ("scikit-learn forest, 1 row", lambda: m.forest.predict_proba(m.cancer_x[:1])),
        ("scikit-learn forest, 128 rows", lambda: m.forest.predict_proba(m.cancer_x[:128])),
        ("ONNX forest, 1 row", _onnx_call(m.forest_onnx, m.cancer_x[:1])),
        ("ONNX forest, 128 rows", _onnx_call(m.forest_onnx, m.cancer_x[:128])),
        ("ONNX logistic regression, 1 row", _onnx_call(m.iris, m.iris_x[:1])),
        ("ONNX logistic regression, 64 rows", _onnx_call(m.iris, m.iris_x[:64])),
    ):
        one, _ = _throughput(call, 1, seconds)
        four, cores = _throughput(call, 4, seconds)
        gil[label] = {"1": one, "4": four, "ratio": four / one, "cores_4": cores}
        print(f"| {label} | {one:,.0f} | {four:,.0f} | {four / one:.2f}x | {cores:.2f} |")
    print("\n## Event-loop lag while one other thread calls the model (1 ms timer, ms late)\n")
    print("| Background thread | p50 | p99 | max |")
    print("|---|---|---|---|")
    for label, maybe_call in (
        ("none", None),
        ("scikit-learn forest, 1 row", lambda: m.forest.predict_proba(m.cancer_x[:1])),
        ("ONNX forest, 128 rows", _onnx_call(m.forest_onnx, m.cancer_x[:128])),
        ("ONNX logistic regression, 64 rows", _onnx_call(m.iris, m.iris_x[:64])),
    ):
        lag = _loop_lag(maybe_call, seconds)
        gil[f"loop lag: {label}"] = lag
        print(f"| {label} | {lag['p50_ms']:.2f} | {lag['p99_ms']:.2f} | {lag['max_ms']:.2f} |")
    print("\n| Runtime | 1 worker | 2 workers | 2 vs 1 |")
    print("|---|---|---|---|")
    one = _pool_throughput(m.cancer_x[:1], 1, seconds)
    two = _pool_throughput(m.cancer_x[:1], 2, seconds)
    gil["scikit-learn forest, process pool, 1 row"] = {"1": one, "2": two, "ratio": two / one}
    print(f"| scikit-learn forest in the process pool, 1 row | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    return gil


def bench_registry(m: Models, seconds: float) -> dict[str, Any]:
    print("\n## Registry, 64 concurrent callers, one row each\n")
    print("| Model | batching | req/s | p50 ms | p99 ms | mean rows per runtime call |")
    print("|---|---|---|---|---|---|")
    out: dict[str, Any] = {}
    for name, data in (("iris", m.iris_x), ("breast_cancer", m.cancer_x), ("diabetes", m.diabetes_x)):
        rows = data.astype(float).tolist()
        for batching in (True, False):
            r = asyncio.run(_registry_run(batching, name, rows, 64, seconds))
            out[f"{name}/{'on' if batching else 'off'}"] = r
            print(
                f"| {name} | {'on' if batching else 'off'} | {r['req_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['mean_batch_rows']:.1f} |"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier numbers)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--only", choices=["latency", "gil", "registry"], action="append", help="run only these parts"
    )
    args = parser.parse_args()
    t_lat, t_thr, t_reg = (0.5, 1.0, 2.0) if args.quick else (2.0, 3.0, 5.0)
    parts = args.only or ["latency", "gil", "registry"]
    load_before = os.getloadavg()[0]
    models = Models()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
        }
    }
    if "latency" in parts:
        results["latency"] = bench_latency(models, t_lat)
    if "gil" in parts:
        results["gil"] = bench_gil(models, t_thr)
    if "registry" in parts:
        results["registry"] = bench_registry(models, t_reg)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    results["machine"]["load"] = load
    print(
        f"\n{os.cpu_count()} CPUs, {load}, Python {platform.python_version()}, onnxruntime {ort.__version__}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
