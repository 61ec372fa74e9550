"""The container rows of `make bench`: the image's size, its cold start, its memory, each beside the
same service run as a bare process in the same run.

`uv run python -m bench.bench_container [--runs 5] [--out PATH]`

1. `scripts/image.sh build` (docker or podman; cached layers make it quick when nothing changed),
   then the image's size as the engine reports it (uncompressed), and the base image's.
2. Cold start, `runs` times each, alternating: from the `run -d` command (a read-only container,
   tmpfs on /tmp, the data volume, the port published on 127.0.0.1) until `/readyz` answers 200
   through the published port; and from launching `python -m app.cli serve` on the host until the
   same. Same settings for both (production, one worker, models on, access log off, the embedded
   SQLite already migrated), both pinned to the server core (`--cpuset-cpus` / taskset) as
   bench/run.py pins its servers.
   The engine's own share: `run` of a container with the same options whose command is `true`.
3. Memory after a short load (200 item reads and 200 predictions): VmRSS of the web worker (the
   container's PID 1, read from the host's /proc) and of its children (forkserver, model worker),
   and the same for the bare process.

Without a container engine it writes `{"skipped": "..."}` and says why. Writes
bench/results/container.json. About a minute once the image is built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    PASSWORD,
    PYTHON,
    RESULTS,
    ROOT,
    Server,
    cores,
    descendants,
    free_port,
    http_get_status,
    rss_mb,
    service_env,
    spread,
)

LOAD_REQUESTS = 200


class Engine:
    def __init__(self, described: dict[str, str]) -> None:
        self.command = described["ENGINE"]
        self.image = described["IMAGE"]
        self.env = dict(os.environ)
        if described.get("CONTAINERS_CONF"):
            self.env["CONTAINERS_CONF"] = described["CONTAINERS_CONF"]

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [self.command, *args], env=self.env, capture_output=True, text=True, check=False, timeout=300
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{self.command} {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout.strip()

    def size_mb(self, image: str) -> float:
        return round(int(self("image", "inspect", "--format", "{{.Size}}", image)) / 1e6, 1)


def find_engine() -> Engine | str:
    """The engine `make image` uses, or why there is none."""
    done = subprocess.run(
        ["bash", "scripts/image.sh", "env"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return done.stderr.strip() or "scripts/image.sh env failed"
    return Engine(dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line))


def settings(port: int, database_url: str) -> dict[str, str]:
    """bench/harness.py's production settings of the service, for either way of running it."""
    env = service_env(database_url, port)
    env["ML_ENABLED"] = "true"
    return env


def container_env(database_url: str) -> list[str]:
    """The same settings as -e options, minus the host's own environment: only what the service reads."""
    wanted = settings(8000, database_url)
    keep = (
        "ENVIRONMENT",
        "SECRET_KEY",
        "DATABASE_URL",
        "WEB_CONCURRENCY",
        "ACCESS_LOG",
        "LOG_LEVEL",
        "ACCESS_TOKEN_EXPIRE_SECONDS",
        "RATE_LIMIT_PER_USER",
        "ML_ENABLED",
    )
    return [option for key in keep for option in ("-e", f"{key}={wanted[key]}")]


def ready_after(port: int, started: float, is_alive: Any, timeout: float = 90) -> float:
    """Seconds from `started` until /readyz answers 200, polled every 5 ms. Whether the container
    is still alive is asked only every 2 s: `podman inspect` costs about 0.1 s of CPU, and asked at
    every poll it took a core's worth from the start it measured (1.4x the bare process's time,
    against 0.9-1.0x by hand)."""
    checked = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if http_get_status(port, "/readyz", timeout=0.5) == 200:
            return time.perf_counter() - started
        if time.perf_counter() - checked > 2:
            if not is_alive():
                raise RuntimeError("exited before it was ready")
            checked = time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError(f"not ready after {timeout} s")


def _request(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local URL
        return json.loads(response.read() or b"null")


def light_load(port: int) -> None:
    """A user, then LOAD_REQUESTS item reads and predictions: the state the RSS is read in."""
    email = f"container-{uuid.uuid4().hex[:8]}@example.com"
    json_type = {"Content-Type": "application/json"}
    _request(
        port,
        "POST",
        "/api/v1/auth/register",
        json.dumps({"email": email, "password": PASSWORD}).encode(),
        json_type,
    )
    form = f"username={email}&password={PASSWORD}".encode()
    token = _request(
        port, "POST", "/api/v1/auth/token", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )["access_token"]
    auth = {"Authorization": f"Bearer {token}", **json_type}
    item = _request(port, "POST", "/api/v1/items", json.dumps({"title": "bench"}).encode(), auth)["id"]
    features = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
    for _ in range(LOAD_REQUESTS):
        _request(port, "GET", f"/api/v1/items/{item}", None, auth)
        _request(port, "POST", "/api/v1/predict", features, auth)


def memory(pid: int) -> dict[str, Any]:
    children = []
    for child in descendants(pid):
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80].strip()
        children.append({"cmd": cmd, "rss_mb": rss_mb(child)})
    total = (rss_mb(pid) or 0) + sum(c["rss_mb"] or 0 for c in children)
    return {"web_worker_rss_mb": rss_mb(pid), "children": children, "total_rss_mb": round(total, 1)}


class Containers:
    def __init__(self, engine: Engine, cpuset: str | None) -> None:
        self.engine, self.cpuset = engine, cpuset
        self.volume = f"fms-bench-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Containers:
        self.engine("volume", "create", self.volume)
        # Migrated once, as the bare process's database is: both starts then only check the head.
        self.engine("run", "--rm", "-v", f"{self.volume}:/app/data", *container_env(self.database_url),
                    self.engine.image, "python", "-m", "app.cli", "migrate")  # fmt: skip
        return self

    def __exit__(self, *_exc: object) -> None:
        self.engine("volume", "rm", "--force", self.volume, check=False)

    database_url = "sqlite+aiosqlite:////app/data/app.db"

    def options(self, port: int) -> list[str]:
        """Read-only, tmpfs on /tmp only, the data volume, published on 127.0.0.1, pinned."""
        options = ["--read-only", "--tmpfs", "/tmp", "-v", f"{self.volume}:/app/data"]  # noqa: S108
        options += ["-p", f"127.0.0.1:{port}:8000"]
        if self.engine.command == "podman":
            options.append("--read-only-tmpfs=false")
        return options + (["--cpuset-cpus", self.cpuset] if self.cpuset else [])

    def cold_start(self, *, keep: bool = False) -> tuple[float, str, int]:
        name, port = f"fms-bench-{uuid.uuid4().hex[:8]}", free_port()
        env = container_env(self.database_url)
        started = time.perf_counter()
        self.engine("run", "-d", "--name", name, *self.options(port), *env, self.engine.image)
        try:
            seconds = ready_after(
                port,
                started,
                lambda: self.engine("inspect", "--format", "{{.State.Running}}", name) == "true",
            )
        except RuntimeError as exc:
            logs = self.engine("logs", name, check=False)
            self.remove(name)
            raise RuntimeError(f"container {exc}:\n{logs[-2000:]}") from None
        if not keep:
            self.remove(name)
        return seconds, name, port

    def engine_overhead(self) -> float:
        """The engine's own share of a cold start: `run` of a container with the same options whose
        command is `true`, until it has exited."""
        started = time.perf_counter()
        self.engine("run", "--rm", *self.options(free_port()), "--entrypoint", "true", self.engine.image)
        return time.perf_counter() - started

    def remove(self, name: str) -> None:
        self.engine("stop", "--time", "15", name, check=False)
        self.engine("rm", "--force", name, check=False)


def bare_cold_start(database_url: str, pin: list[str], *, keep: bool = False) -> tuple[float, Server]:
    port = free_port()
    server = Server(
        "container-bench-bare", [PYTHON, "-m", "app.cli", "serve"], settings(port, database_url), port, pin
    )
    if not keep:
        server.stop()
    return server.ready_s, server


def measure(engine: Engine, runs: int) -> dict[str, Any]:
    build = subprocess.run(["bash", "scripts/image.sh", "build"], cwd=ROOT, env=engine.env, check=False)
    if build.returncode != 0:
        return {"error": f"scripts/image.sh build exited with {build.returncode}"}
    server_pin, _ = cores()
    cpuset = server_pin[-1] if server_pin else None
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"uv run python -m bench.bench_container --runs {runs}",
        "engine": f"{engine.command} {engine('--version').split()[-1]}",
        "image": engine.image,
        "image_size_mb": engine.size_mb(engine.image),
        "pinning": f"--cpuset-cpus {cpuset} / taskset -c {cpuset}" if cpuset else "none",
        "runs": runs,
    }
    base_image = os.environ.get("BASE_IMAGE") or "localhost/fastapi-ml-service-base:bookworm"
    if engine("image", "inspect", base_image, check=False):
        result["base_image"] = base_image
        result["base_image_size_mb"] = engine.size_mb(base_image)
    result["load_average"] = {"before": [round(x, 2) for x in os.getloadavg()]}
    container_starts: list[float] = []
    bare_starts: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-container-") as tmp,
        Containers(engine, cpuset) as containers,
    ):
        bare_url = f"sqlite+aiosqlite:///{Path(tmp) / 'app.db'}"
        subprocess.run(
            [PYTHON, "-m", "app.cli", "migrate"],
            cwd=ROOT,
            env=settings(free_port(), bare_url),
            check=True,
            capture_output=True,
        )
        for run in range(runs):
            # Alternating, so a burst of foreign load on the machine lands on both sides.
            seconds, _, _ = containers.cold_start()
            container_starts.append(round(seconds, 3))
            seconds, _ = bare_cold_start(bare_url, server_pin)
            bare_starts.append(round(seconds, 3))
            print(
                f"  cold start {run + 1}/{runs}: container {container_starts[-1]:.2f} s, "
                f"bare {bare_starts[-1]:.2f} s",
                flush=True,
            )
        overheads = [round(containers.engine_overhead(), 3) for _ in range(runs)]
        result["engine_overhead_s"] = spread(overheads)
        result["cold_start_s"] = spread(container_starts)
        result["bare_cold_start_s"] = spread(bare_starts)
        result["cold_starts"] = {"container": container_starts, "bare": bare_starts}

        _, name, port = containers.cold_start(keep=True)
        try:
            light_load(port)
            pid = int(engine("inspect", "--format", "{{.State.Pid}}", name))
            result["memory"] = memory(pid)
        finally:
            containers.remove(name)
        _, server = bare_cold_start(bare_url, server_pin, keep=True)
        try:
            light_load(server.port)
            result["bare_memory"] = memory(server.pid)
        finally:
            server.stop()
    result["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_container", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="cold starts of each kind (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS / "container.json")
    args = parser.parse_args(argv)
    found = find_engine()
    if isinstance(found, str):
        result: dict[str, Any] = {"skipped": f"no container engine: {found}"}
        print(f"container rows skipped: {found}", flush=True)
    else:
        print(f"container: {found.command}, image {found.image}", flush=True)
        result = measure(found, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "memory"}, indent=1), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
