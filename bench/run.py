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
4. bench/results/latest.json, docs/performance.md and the plots in docs/.

Server and load generator are pinned to different cores with taskset when there are two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
PYTHON = sys.executable
BENCH_DB = "mlservice_bench"
SECRET_KEY = secrets.token_urlsafe(48)
PASSWORD = "bench-password-1234"  # noqa: S105 - the seeded users' password, local only
N_USERS = 8
N_ITEMS = 10_000

# The endpoints measured on the service (kind -> label); `predict` only when the route exists.
ENDPOINTS = {
    "get_item": "GET /api/v1/items/{id}",
    "list": "GET /api/v1/items (20)",
    "list_v2": "GET /api/v2/items (20)",
    "post": "POST /api/v1/items",
    "predict": "POST /api/v1/predict",
}
# Issue 5's targets, as fractions of the bare-FastAPI ceiling.
THROUGHPUT_TARGETS = {"get_item": 0.40, "list": 0.25, "post": 0.25}


@dataclass(frozen=True)
class Profile:
    duration: int  # seconds per wrk run
    repeats: int
    openloop_s: float
    cold_starts: int
    wide_s: int  # the 1,024-connection runs

    @classmethod
    def make(cls, quick: bool) -> Profile:
        return cls(3, 1, 4.0, 3, 3) if quick else cls(6, 3, 8.0, 5, 5)


# --------------------------------------------------------------------------- machine


def cores() -> tuple[list[str], list[str]]:
    """taskset prefixes for the server and for the load generator (empty with one core)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return [], []
    return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])]


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    versions = {}
    for dist in (
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pydantic",
        "pydantic-core",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "pyjwt",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
        "postgresql": pg.stdout.strip(),
        "versions": versions,
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of a GET, or None when nothing answers (raw socket: cheap enough to poll every 5 ms)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
            return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else None
    except (OSError, ValueError):
        return None


class Server:
    """A server process pinned to the server core; `ready_s` is launch until /readyz answered 200."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, pin: list[str]) -> None:
        self.name, self.port = name, port
        log_dir = RESULTS / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [*pin, *argv], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = started + 90
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log_path}")
            if http_get_status(port, "/readyz", timeout=0.5) == 200:
                break
            time.sleep(0.005)
        else:
            self.stop()
            raise RuntimeError(f"{name} not ready after 90 s; see {self.log_path}")
        self.ready_s = time.perf_counter() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out.append(int(child))
                    out.extend(descendants(int(child)))
    return out


def process_memory(pid: int) -> dict[str, Any]:
    """RSS of the web worker and of every child (model workers, forkserver) with its command line.

    With WEB_CONCURRENCY=1 uvicorn runs the app in the launched process itself (no supervisor), so
    that process is the web worker."""
    children = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            children.append({"pid": child, "cmd": cmd.strip(), "rss_mb": rss_mb(child)})
    return {"web_worker_rss_mb": rss_mb(pid), "children": children}


# --------------------------------------------------------------------------- databases


def postgres_url() -> str:
    """Starts PostgreSQL (idempotent), re-creates the bench database, returns its URL."""
    out = subprocess.run(
        ["bash", "scripts/services.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    test_url = next(
        line.split("=", 1)[1] for line in out.splitlines() if line.startswith("TEST_DATABASE_URL=")
    )
    parsed = urllib.parse.urlsplit(test_url)
    bench_url = urllib.parse.urlunsplit(parsed._replace(path=f"/{BENCH_DB}"))

    async def recreate() -> None:
        import asyncpg

        conn = await asyncpg.connect(test_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    return bench_url


def settle_postgres(database_url: str, timeout_s: float = 30.0) -> float:
    """Let PostgreSQL finish the maintenance the benchmark's own bulk writes trigger (the seed's
    10,000 items before the closed loop; tens of thousands of items and prediction records before
    the open loop) before anything is measured: VACUUM ANALYZE the written tables now, then wait
    for autovacuum workers to finish. Measured without it: 1.4 cores of autovacuum during the open
    loop (its p99 went from ~4 ms to 23 ms), 0.65 cores during the list phase. Returns the seconds
    it took."""
    import asyncpg

    async def settle() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            for table in ("items", "prediction_records", "auth_sessions", "users"):
                await conn.execute(f"VACUUM (ANALYZE) {table}")
            busy = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            for _ in range(int(timeout_s / 0.2)):  # polled: PostgreSQL offers no event for it
                if not await conn.fetchval(busy):
                    break
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    started = time.monotonic()
    asyncio.run(settle())
    return round(time.monotonic() - started, 2)


def base_env() -> dict[str, str]:
    """The caller's environment, minus what would make the servers unlike production: no test or
    database URLs, and bytecode caching on (the image compiles it; with PYTHONDONTWRITEBYTECODE
    set, as on some CI machines, every start would compile every module again)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "TEST_")) and k != "PYTHONDONTWRITEBYTECODE"
    }


def service_env(database_url: str, port: int) -> dict[str, str]:
    env = base_env()
    env.update(
        {
            "ENVIRONMENT": "production",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "ACCESS_TOKEN_EXPIRE_SECONDS": "7200",
            # The per-user limit stays on (its cost is part of every request measured here) but high
            # enough that 8 users at thousands of requests a second are never refused by it.
            "RATE_LIMIT_PER_USER": "100000000/minute",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # Anything the operator wants to try (pool sizes, ...): BENCH_ENV_DB_POOL_SIZE=20 -> DB_POOL_SIZE=20.
    for key, value in os.environ.items():
        if key.startswith("BENCH_ENV_"):
            env[key.removeprefix("BENCH_ENV_")] = value
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "-m", "app.cli", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)


def seed(database_url: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """N_USERS users with N_ITEMS items between them (bulk SQL), and an access token per user.

    The tokens are the service's own: a login session row plus a JWT from `TokenCodec`, with the
    server's key. Logging in through the API would spend Argon2 time and the login rate limit on
    set-up; one real login is still made through the API as a check (see `check_login`)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher
    from sqlalchemy import func, insert, select

    from app.core.config import Settings
    from app.core.db import create_engine
    from app.core.security import TokenCodec
    from app.models import AuthSession, Item, User

    settings = Settings(_env_file=None, database_url=database_url, secret_key=SECRET_KEY)  # type: ignore[arg-type]
    settings.access_token_expire_seconds = int(env["ACCESS_TOKEN_EXPIRE_SECONDS"])
    hashed = PasswordHash(
        (
            Argon2Hasher(
                memory_cost=settings.password_hash_memory_kib,
                time_cost=settings.password_hash_time_cost,
                parallelism=settings.password_hash_parallelism,
            ),
        )
    ).hash(PASSWORD)
    codec = TokenCodec(settings, SECRET_KEY)
    per_user = N_ITEMS // N_USERS

    async def run() -> list[dict[str, Any]]:
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                emails = [f"bench{i}@example.com" for i in range(N_USERS)]
                await conn.execute(insert(User), [{"email": e, "hashed_password": hashed} for e in emails])
                ids = {row.email: row.id for row in (await conn.execute(select(User.email, User.id))).all()}
                for email in emails:
                    rows = [
                        {
                            "owner_id": ids[email],
                            "title": f"Item {n} of {email}",
                            "description": "Seeded by bench/run.py. " * 4,
                        }
                        for n in range(per_user)
                    ]
                    await conn.execute(insert(Item), rows)
                ranges = (
                    await conn.execute(
                        select(Item.owner_id, func.min(Item.id), func.max(Item.id), func.count()).group_by(
                            Item.owner_id
                        )
                    )
                ).all()
                users = []
                expires = datetime.now(UTC) + timedelta(days=1)
                for owner_id, lo, hi, count in ranges:
                    assert hi - lo + 1 == count, "seeded ids are not contiguous"
                    session_id = uuid.uuid4().hex
                    await conn.execute(
                        insert(AuthSession), [{"id": session_id, "user_id": owner_id, "expires_at": expires}]
                    )
                    token, _ = codec.issue(owner_id, session_id)
                    users.append({"id": owner_id, "token": token, "lo": lo, "hi": hi})
                return users
        finally:
            await engine.dispose()

    return asyncio.run(run())


def check_login(port: int) -> None:
    """One real login through the API, so a broken token endpoint cannot hide behind minted tokens."""
    body = urllib.parse.urlencode({"username": "bench0@example.com", "password": PASSWORD}).encode()
    with urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/auth/token", data=body), timeout=10
    ) as response:
        assert json.loads(response.read())["token_type"] == "bearer"  # noqa: S105


def predict_features() -> list[float] | None:
    manifest = ROOT / "ml_models" / "manifest.json"
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    model = next(m for m in data["models"] if m["name"] == data["default_model"])
    example = [5.1, 3.5, 1.4, 0.2]
    n = len(model["features"])
    return example if n == 4 else [0.5] * n


def route_exists(port: int, token: str, method: str, path: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - a fixed local URL
            return True
    except urllib.error.HTTPError as exc:
        return exc.code not in (404, 405)


# --------------------------------------------------------------------------- other load on the machine

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def cpu_snapshot(server_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: the whole machine, the server, PostgreSQL, and our waited-for children
    (wrk, the open-loop generator). Whatever is left is someone else's load on a shared machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / CLK_TCK
    postgres = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    postgres += _proc_cpu(int(entry.name))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "busy": busy,
        "server": _proc_cpu(server_pid) if server_pid else 0.0,
        "postgres": postgres,
        "load": children.ru_utime + children.ru_stime,
        "t": time.perf_counter(),
    }


def cpu_usage(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores used during a run by each party; `foreign` is load we did not cause (other tenants)."""
    elapsed = after["t"] - before["t"]
    used = {k: (after[k] - before[k]) / elapsed for k in ("busy", "server", "postgres", "load")}
    foreign = max(0.0, used["busy"] - used["server"] - used["postgres"] - used["load"])
    return {
        "server_cores": round(used["server"], 2),
        "postgres_cores": round(used["postgres"], 2),
        "load_cores": round(used["load"], 2),
        "foreign_cores": round(foreign, 2),
    }


# --------------------------------------------------------------------------- load generators

# What every wrk script here shares: a random seed per thread, and a count of the statuses seen,
# printed at the end as one `STATUS_COUNTS {...}` line (wrk itself reports only "non-2xx").
LUA_STATUS_COUNTS = r"""
counts = {}
local threads = {}
local n = 0

function setup(thread)
  n = n + 1
  thread:set("seed", n * 7919)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(seed)
  counts = {}
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    for s, c in pairs(t:get("counts")) do agg[s] = (agg[s] or 0) + c end
  end
  local parts = {}
  for s, c in pairs(agg) do table.insert(parts, '"' .. s .. '":' .. c) end
  io.write("STATUS_COUNTS {" .. table.concat(parts, ",") .. "}\n")
end
"""

LUA = (
    r"""
local users = %(users)s
local kind = "%(kind)s"
local features = "%(features)s"

function request()
  local u = users[math.random(#users)]
  local h = {["Authorization"] = "Bearer " .. u.token}
  if kind == "get_item" then
    return wrk.format("GET", "/api/v1/items/" .. math.random(u.lo, u.hi), h)
  elseif kind == "list" then
    return wrk.format("GET", "/api/v1/items?offset=0&limit=20", h)
  elseif kind == "list_v2" then
    return wrk.format("GET", "/api/v2/items?limit=20", h)
  elseif kind == "post" then
    h["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/v1/items", h,
      '{"title":"bench ' .. math.random(1, 1000000000) .. '","description":"closed loop"}')
  elseif kind == "predict" then
    h["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/v1/predict", h, '{"features":' .. features .. '}')
  end
end
"""
    + LUA_STATUS_COUNTS
)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif words[:1] == ["Latency"] and len(words) >= 4:
            result["max_ms"] = _ms(words[3])
        elif len(words) == 2 and words[0] in ("50%", "75%", "90%", "99%"):
            result[f"p{words[0][:-1]}_ms"] = _ms(words[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            result["socket_errors"] = sum(int(x.strip(",")) for x in words[3::2])
        elif "requests in" in line:
            result["requests"] = int(words[0])
        elif line.startswith("STATUS_COUNTS "):
            result["status_counts"] = json.loads(line.split(" ", 1)[1])
    return result


class Load:
    def __init__(self, pin: list[str], workdir: Path) -> None:
        self.pin = pin
        self.workdir = workdir
        self.server_pid: int | None = None  # whose CPU time is the server's in `cpu`

    def lua(self, kind: str, users: list[dict[str, Any]], features: list[float] | None) -> Path:
        table = "{" + ",".join(f'{{token="{u["token"]}",lo={u["lo"]},hi={u["hi"]}}}' for u in users) + "}"
        path = self.workdir / f"{kind}.lua"
        path.write_text(LUA % {"users": table, "kind": kind, "features": json.dumps(features or [])})
        return path

    def wrk(self, url: str, connections: int, duration: int, script: Path | None = None) -> dict[str, Any]:
        argv = [
            *self.pin,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        if script:
            argv += ["-s", str(script)]
        before = cpu_snapshot(self.server_pid)
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        result = parse_wrk(out)
        result["cpu"] = cpu_usage(before, cpu_snapshot(self.server_pid))
        if "rps" not in result:
            raise RuntimeError(f"could not read wrk's output:\n{out}")
        # Server CPU per request: unlike req/s, hardly moved by other tenants' load on the machine.
        result["server_cpu_us"] = round(result["cpu"]["server_cores"] / result["rps"] * 1e6, 1)
        return result

    def openloop(self, plan: dict[str, Any], kind: str, *extra: str) -> dict[str, Any]:
        plan_path = self.workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        out = self.workdir / f"openloop-{kind}.json"
        argv = [PYTHON, "-m", "bench.openloop", "--plan", str(plan_path), "--kind", kind, "--out", str(out)]
        before = cpu_snapshot(self.server_pid)
        subprocess.run([*self.pin, *argv, *extra], cwd=ROOT, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        result["cpu"] = cpu_usage(before, cpu_snapshot(self.server_pid))
        return result


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each figure over the repeats."""
    out: dict[str, Any] = {"runs": runs}
    for key in ("rps", "p50_ms", "p99_ms", "max_ms", "server_cpu_us"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
    out["foreign_cores_max"] = max(r["cpu"]["foreign_cores"] for r in runs)
    out["server_cores_median"] = statistics.median(r["cpu"]["server_cores"] for r in runs)
    out["non_2xx"] = sum(r.get("non_2xx", 0) for r in runs)
    out["socket_errors"] = sum(r.get("socket_errors", 0) for r in runs)
    return out


def closed(
    load: Load, url: str, profile: Profile, script: Path | None, connections: int = 64
) -> dict[str, Any]:
    load.wrk(url, connections, 1, script)  # warm-up: connections, caches, the statement cache
    return summarize_runs(
        [load.wrk(url, connections, profile.duration, script) for _ in range(profile.repeats)]
    )


# --------------------------------------------------------------------------- phases


def reference(load: Load, kind: str, profile: Profile, server_pin: list[str]) -> dict[str, Any]:
    port = free_port()
    argv = [PYTHON, "-m", "bench.bare_app", kind, "--port", str(port)]
    print(f"reference {kind}: serving on {port}", flush=True)
    with Server(f"bare-{kind}", argv, base_env(), port, server_pin) as server:
        load.server_pid = server.pid
        result = closed(load, f"http://127.0.0.1:{port}/items/1", profile, None)
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
        result["cold_start_s"] = _spread(starts)
    print(f"reference {kind}: {result['rps']['median']:.0f} req/s", flush=True)
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


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
        kinds = [k for k in ENDPOINTS if k != "predict"]
        if route_exists(port, token, "POST", "/api/v1/predict"):
            kinds.append("predict")
        else:
            result["predict_absent"] = True
        base = f"http://127.0.0.1:{port}/"
        for kind in kinds:
            outcome = closed(load, base, profile, load.lua(kind, users, features))
            result["endpoints"][kind] = outcome
            print(
                f"  {db} {kind}: {outcome['rps']['median']:.0f} req/s "
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
        result["cold_start_s"] = _spread(starts)
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
    from bench.bench_serving import in_process_markdown

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat of each (under 2 minutes)")
    parser.add_argument("--db", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite")
    parser.add_argument("--no-docs", action="store_true", help="write only bench/results/*.json")
    parser.add_argument(
        "--no-models", action="store_true", help="skip bench/bench_serving.py and bench/bench_models.py"
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
    if not args.no_models:
        results["models"] = run_models_bench(args.quick)
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
