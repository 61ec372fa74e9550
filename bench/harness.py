"""What the benchmark runners share: the machine, the servers they start, the databases they seed,
wrk and its scripts, and the figures they compute and format.

Imported by the runners (bench/run.py, bench/bench_serving.py, bench/profile_hot.py,
bench/pool_compare.py); it imports none of them, and no runner imports another (the project's
import-linter contract for bench).
"""

from __future__ import annotations

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
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
BENCH_DB = "mlservice_bench"
SECRET_KEY = secrets.token_urlsafe(48)
PASSWORD = "bench-password-1234"  # noqa: S105 - the seeded users' password, local only
N_USERS = 8
N_ITEMS = 10_000
# The endpoints bench/run.py measures on the service (kind -> label, as the report names them);
# `predict` only when the route exists.
ENDPOINTS = {
    "get_item": "GET /api/v1/items/{id}",
    "list": "GET /api/v1/items (20)",
    "list_v2": "GET /api/v2/items (20)",
    "post": "POST /api/v1/items",
    "predict": "POST /api/v1/predict",
    "get_item_key": "GET /api/v1/items/{id} (API key)",
    "predict_key": "POST /api/v1/predict (API key)",
}


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


class RawConnection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams (no client library between the
    load and the server); reconnects when the server closes it. Answers (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lower = name.strip().lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


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


def postgres_url(database: str = BENCH_DB) -> str:
    """Starts PostgreSQL (idempotent), re-creates the bench database `database`, returns its URL."""
    out = subprocess.run(
        ["bash", "scripts/services.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    test_url = next(
        line.split("=", 1)[1] for line in out.splitlines() if line.startswith("TEST_DATABASE_URL=")
    )
    parsed = urllib.parse.urlsplit(test_url)
    bench_url = urllib.parse.urlunsplit(parsed._replace(path=f"/{database}"))

    async def recreate() -> None:
        import asyncpg

        conn = await asyncpg.connect(test_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}"')
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
            "RATE_LIMIT_PER_API_KEY": "100000000/minute",
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
    """N_USERS users with N_ITEMS items between them (bulk SQL), and an access token and an API key
    (scopes `items:read predict`) per user.

    The tokens and keys are the service's own: a login session row plus a JWT from `TokenCodec`,
    and an `api_keys` row with its hash from `ApiKeyCodec`, with the server's key. Logging in through
    the API would spend Argon2 time and the login rate limit on set-up; one real login is still made
    through the API as a check (see `check_login`)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher
    from sqlalchemy import func, insert, select

    from app.core.config import Settings
    from app.core.security import API_KEY_SHOWN_CHARS, ApiKeyCodec, TokenCodec
    from app.db.engine import create_engine
    from app.models import ApiKey, AuthSession, Item, User

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
    key_codec = ApiKeyCodec(SECRET_KEY)
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
                    key, key_hash = key_codec.new()
                    await conn.execute(
                        insert(ApiKey),
                        [
                            {
                                "user_id": owner_id,
                                "name": "bench",
                                "prefix": key[:API_KEY_SHOWN_CHARS],
                                "key_hash": key_hash,
                                "scopes": "items:read predict",
                            }
                        ],
                    )
                    users.append({"id": owner_id, "token": token, "key": key, "lo": lo, "hi": hi})
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


def proc_cpu(pid: int) -> float:
    """User and system CPU seconds of one process so far (/proc/<pid>/stat); 0 once it is gone."""
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
                    postgres += proc_cpu(int(entry.name))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "busy": busy,
        "server": proc_cpu(server_pid) if server_pid else 0.0,
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

-- `<kind>_key`: the same request, authenticated by the user's API key instead of the access token.
local credential = "token"
if string.sub(kind, -4) == "_key" then
  kind = string.sub(kind, 1, -5)
  credential = "key"
end

function request()
  local u = users[math.random(#users)]
  local h = {["Authorization"] = "Bearer " .. u[credential]}
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
        table = (
            "{"
            + ",".join(f'{{token="{u["token"]}",key="{u["key"]}",lo={u["lo"]},hi={u["hi"]}}}' for u in users)
            + "}"
        )
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


def closed(  # noqa: PLR0917 - the call sites pass them in this order
    load: Load, url: str, duration: int, repeats: int, script: Path | None, connections: int = 64
) -> dict[str, Any]:
    """A 1 s warm-up, then `repeats` wrk runs of `duration` seconds: median, min and max."""
    load.wrk(url, connections, 1, script)  # warm-up: connections, caches, the statement cache
    return summarize_runs([load.wrk(url, connections, duration, script) for _ in range(repeats)])


def closed_pair(  # noqa: PLR0917 - as `closed`
    load: Load, url: str, duration: int, repeats: int, scripts: tuple[Path, Path], connections: int = 64
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two variants of one request side by side: warmed up both, then their runs alternated (A B A B
    ...), so a machine that slows down mid-way slows both alike."""
    for script in scripts:
        load.wrk(url, connections, 1, script)
    runs: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for _ in range(repeats):
        for runs_of, script in zip(runs, scripts, strict=True):
            runs_of.append(load.wrk(url, connections, duration, script))
    return summarize_runs(runs[0]), summarize_runs(runs[1])


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


# --------------------------------------------------------------------------- report pieces


def in_process_markdown(data: dict[str, Any]) -> str:
    """A summary of bench/bench_models.py's JSON (`--json`): the same questions without HTTP."""
    lines = ["### In process, without HTTP (bench/bench_models.py)", ""]
    lags = {
        k.removeprefix("loop lag: "): v for k, v in data.get("gil", {}).items() if k.startswith("loop lag")
    }
    if lags:
        lines += [
            "How late a 1 ms asyncio timer fires while another thread of the same process calls the model "
            "(ms): what every request of a web process would feel with the model on a thread.",
            "",
            "| Model called in the other thread | p50 | p99 | max |",
            "|---|---|---|---|",
            *(
                f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['max_ms']:.2f} |"
                for k, v in lags.items()
            ),
            "",
        ]
    registry = data.get("registry", {})
    if registry:
        lines += [
            "The registry called directly by 64 concurrent callers, one row each:",
            "",
            "| Model | batching | predictions/s | p50 ms | p99 ms | rows per runtime call |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in registry.items():
            name, mode = key.split("/")
            lines.append(
                f"| {name} | {mode} | {r['req_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['mean_batch_rows']:.1f} |"
            )
        lines.append("")
    if data.get("machine", {}).get("load"):
        lines.append(f"In-process run: {data['machine']['load']}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- a runner's results file


class ResultsFile:
    """A runner's run from its start to its results file (bench/bench_serving.py, bench_swap.py,
    bench_tier.py): made when the run starts, it holds the header fields every file carries
    (`command`, `profile`, `pinning`) and the load average then; `write` adds the load average
    after and the time taken, the `targets` rows and the `markdown` (made from the results, so it
    may quote all of these), writes the file and prints the markdown."""

    def __init__(
        self, module: str, quick: bool, profile: object, server_pin: list[str], load_pin: list[str]
    ) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self._began = time.perf_counter()
        self._load_before = os.getloadavg()[0]
        self.header: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": f"uv run python -m {module}{' --quick' if quick else ''}",
            "profile": profile.__dict__,
            "pinning": {"server": " ".join(server_pin) or "none", "load": " ".join(load_pin) or "none"},
        }

    def write(
        self,
        out: Path,
        results: dict[str, Any],
        targets: Callable[[dict[str, Any]], list[dict[str, Any]]],
        markdown: Callable[[dict[str, Any]], str],
    ) -> dict[str, Any]:
        """`results` (the header first) with `load_average`, `elapsed_s`, `targets(results)` and
        `markdown(results)` added, written to `out` as JSON and its markdown printed."""
        results = {**self.header, **results}
        results["load_average"] = [self._load_before, os.getloadavg()[0]]
        results["elapsed_s"] = round(time.perf_counter() - self._began, 1)
        results["targets"] = targets(results)
        results["markdown"] = markdown(results)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print("\n" + results["markdown"], flush=True)
        print(f"\nwrote {out}", flush=True)
        return results


def judged(rows: list[tuple[str, float, str, str]]) -> list[dict[str, Any]]:
    """(metric, value, target such as ">= 5" or "<= 1.5", figures) rows, each judged met or not."""
    out = []
    for metric, value, target, figures in rows:
        limit = float(target.split()[-1])
        met = value <= limit if target.startswith("<=") else value >= limit
        out.append({"metric": metric, "value": value, "target": target, "met": met, "figures": figures})
    return out


def targets_table(targets: list[dict[str, Any]]) -> list[str]:
    """The markdown table of `targets` rows with a value and figures (bench_swap, bench_tier)."""
    return [
        "| Metric | Measured | Target | Met | Figures |",
        "|---|---|---|---|---|",
        *(
            f"| {t['metric']} | {t['value']} | {t['target']} | {'yes' if t['met'] else '**no**'} "
            f"| {t['figures']} |"
            for t in targets
        ),
    ]


# ---------------------------------------------------- requests and loads of the model benches

BENCH_EMAIL = "serving-bench@example.com"
BENCH_PASSWORD = "serving-bench-password-1"  # noqa: S105 - a throwaway user in a temporary database
LIGHT_RATE = 50  # req/s, the guide's fixed rate for the light endpoint
HEAVY_CLIENTS = 8


def raw_get(port: int, path: str, token: str | None = None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n"


POST_LUA = (
    r"""
local path = "%(path)s"
local headers = {["Content-Type"] = "application/json"%(auth)s}
local bodies = {%(bodies)s}

function request()
  return wrk.format("POST", path, headers, bodies[math.random(#bodies)])
end
"""
    + LUA_STATUS_COUNTS
)


def post_script(workdir: Path, name: str, path: str, token: str | None, bodies: list[dict[str, Any]]) -> Path:
    """A wrk script POSTing a random one of `bodies` (JSON without single quotes) to `path`."""
    script = workdir / f"{name}.lua"
    auth = f', ["Authorization"] = "Bearer {token}"' if token else ""
    lua_bodies = ",".join(f"'{json.dumps(b, separators=(',', ':'))}'" for b in bodies)
    script.write_text(POST_LUA % {"path": path, "auth": auth, "bodies": lua_bodies})
    return script


def _call(port: int, path: str, data: bytes, content_type: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a local URL
        result: dict[str, Any] = json.loads(response.read())
        return result


def register_and_login(port: int) -> str:
    """One real user through the API: register (unless a server on the same database did), then log
    in with the OAuth2 password form."""
    body = json.dumps({"email": BENCH_EMAIL, "password": BENCH_PASSWORD}).encode()
    try:
        _call(port, "/api/v1/auth/register", body, "application/json")
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: already registered
            raise
    form = urllib.parse.urlencode({"username": BENCH_EMAIL, "password": BENCH_PASSWORD}).encode()
    token: str = _call(port, "/api/v1/auth/token", form, "application/x-www-form-urlencoded")["access_token"]
    return token


def light_run(load: Load, port: int, raw: str, seconds: float, label: str) -> dict[str, Any]:
    """The light endpoint at LIGHT_RATE req/s, open loop; latency from each scheduled send."""
    plan = {"host": f"127.0.0.1:{port}", "port": port, "path": raw}
    result = load.openloop(
        plan, "raw", "--rate", str(LIGHT_RATE), "--duration", str(seconds), "--connections", "64"
    )
    result.pop("percentile_curve_ms", None)
    lat = result["latency"]
    print(
        f"  {label}: p50 {lat['p50_ms']:.2f} / p99 {lat['p99_ms']:.2f} / max {lat['max_ms']:.1f} ms, "
        f"statuses {result['status_counts']}, errors {result['errors']}",
        flush=True,
    )
    return result


class HeavyLoad:
    """wrk keeping HEAVY_CLIENTS connections busy on a heavy endpoint until stopped (SIGINT makes
    wrk stop and print its summary)."""

    def __init__(self, load: Load, url: str, script: Path) -> None:
        argv = [*load.pin, "wrk", "-t1", f"-c{HEAVY_CLIENTS}", "-d600s", "--timeout", "10s", "--latency"]
        self.proc = subprocess.Popen(
            [*argv, "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.0)  # let the load reach its steady state before the light requests are timed

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        result = parse_wrk(out)
        if "rps" not in result:
            raise RuntimeError(f"could not read wrk's output:\n{out}\n{err}")
        print(
            f"  heavy load: {result['rps']:.0f} req/s, p50 {result.get('p50_ms')} ms, "
            f"statuses {result.get('status_counts')}",
            flush=True,
        )
        return result


def status_field(pid: int, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return line.split(":", 1)[1].strip()
    return None


def memory_of(pid: int) -> dict[str, float | None]:
    """VmRSS, and PSS and USS (private pages) from smaps_rollup, in MB."""
    kb: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                kb[key] = int(rest.split()[0])
    rss = status_field(pid, "VmRSS")

    def mb(value: int | None) -> float | None:
        return round(value / 1024, 1) if value is not None else None

    uss = kb["Private_Clean"] + kb["Private_Dirty"] if "Private_Clean" in kb else None
    return {
        "rss_mb": mb(int(rss.split()[0])) if rss else None,
        "pss_mb": mb(kb.get("Pss")),
        "uss_mb": mb(uss),
    }
