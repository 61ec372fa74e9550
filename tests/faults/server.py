"""Real server processes for the fault and browser tests: `python -m app.cli serve` on a free port,
a private database for each (a SQLite file, or a fresh database on the test PostgreSQL server), and
a TCP proxy in front of PostgreSQL that a test can cut and restore."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import URL, make_url

from tests.conftest import TEST_SECRET_KEY, admin_sql
from tests.lifespan import SERVER_STARTUP_LIMIT_S

ROOT = Path(__file__).resolve().parents[2]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now that this process has not handed out before: the kernel may give the same
    ephemeral port to two binds in a row once the first socket is closed (MLServer once got equal
    HTTP and gRPC ports here, served gRPC, and never became ready)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def server_env(database_url: str, port: int, **overrides: str) -> dict[str, str]:
    """The environment of a test server: fast hashes, no models, no rate limits, quiet logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "REDIS_URL"))}
    env.update(
        {
            "ENVIRONMENT": "test",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATABASE_URL": database_url,
            "SECRET_KEY": TEST_SECRET_KEY,
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "PASSWORD_HASH_TIME_COST": "1",
            "ML_ENABLED": "false",
            "RATE_LIMIT_ENABLED": "false",
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "WEB_CONCURRENCY": "1",
            "TIMEOUT_GRACEFUL_SHUTDOWN": "5",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(
    env: dict[str, str],
    log_path: Path,
    *,
    timeout: float = SERVER_STARTUP_LIMIT_S,
    args: Sequence[str] = ("-m", "app.cli", "serve"),
) -> Server:
    """Start `python -m app.cli serve` (or python with other `args`) and wait until /healthz answers."""
    port = int(env["PORT"])
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the server did not start in {timeout} s:\n{server.log_tail()}")


def _admin_url(url: URL) -> URL:
    return url.set(drivername="postgresql+asyncpg")


@asynccontextmanager
async def private_database(tmp_path: Path) -> AsyncIterator[str]:
    """A database URL no other test touches: a fresh database on the PostgreSQL server of
    TEST_DATABASE_URL (created, migrated, dropped), or a SQLite file when there is none."""
    shared = os.environ.get("TEST_DATABASE_URL")
    if not shared:
        yield f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
        return
    base = make_url(shared)
    name = f"faults_{uuid.uuid4().hex[:12]}"
    await admin_sql(base, f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        migrate = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app.cli", "migrate"],
            cwd=ROOT,
            env=server_env(url, 8000),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr.decode()
        yield url
    finally:
        await admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection and refuses new ones
    (or, with `blackhole=True`, accepts them and never answers), `restore()` forwards again."""

    target_host: str
    target_port: int
    port: int = field(default_factory=free_port)
    _server: asyncio.base_events.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _blackhole: bool = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._blackhole:
            return  # held open, never answered: the client must time out on its own
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)

    async def cut(self, *, blackhole: bool = False) -> None:
        self._blackhole = blackhole
        if not blackhole and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        self._blackhole = False
        for writer in list(self._writers):  # connections left hanging by a blackhole
            writer.transport.abort()
        self._writers.clear()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
