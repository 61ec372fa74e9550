"""The built image, run for real with the machine's container engine (`make image-test`).

Collected only when IMAGE_TEST is set (tests/conftest.py): the image must have been built first
(`make image`), and these tests start containers, so the ordinary `make pytest` leaves them out.
The engine, the image tag and podman's CONTAINERS_CONF come from `scripts/image.sh env`, the same
choice `make image` made.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.server import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "image-test-" + uuid.uuid4().hex + uuid.uuid4().hex
PASSWORD = "correct horse battery"
# Podman without systemd (this machine, CI) logs that it cannot add its healthcheck timers; the
# tests run the check themselves (`Container.health`), so those lines are only noise.
_ENGINE_NOISE = "unable to get systemd connection"


@dataclass
class Engine:
    command: str
    image: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def ok(self, *args: str, timeout: float = 120) -> str:
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, f"{self.command} {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout.strip()

    def image_config(self, key: str) -> Any:
        """`Healthcheck`, `Labels`...: podman keeps them at the top of `image inspect`, docker in
        its `Config`."""
        found = json.loads(self.ok("image", "inspect", self.image))[0]
        return found.get(key) or found.get("Config", {}).get(key)


@pytest.fixture(scope="session")
def engine() -> Engine:
    described = subprocess.run(
        ["bash", "scripts/image.sh", "env"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    values = dict(line.split("=", 1) for line in described.splitlines() if "=" in line)
    env = dict(os.environ)
    if values.get("CONTAINERS_CONF"):
        env["CONTAINERS_CONF"] = values["CONTAINERS_CONF"]
    found = Engine(values["ENGINE"], values["IMAGE"], env)
    if found("image", "inspect", found.image).returncode != 0:
        pytest.fail(f"no image {found.image}: run `make image` first", pytrace=False)
    return found


@dataclass
class Container:
    engine: Engine
    name: str
    port: int | None = None
    # When `run -d` returned (time.monotonic()): the container had started by then.
    created: float = field(default_factory=time.monotonic)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self, template: str) -> str:
        return self.engine.ok("inspect", "--format", template, self.name)

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def logs(self) -> str:
        done = self.engine("logs", self.name)
        return done.stdout + done.stderr

    def wait(self, timeout: float = 60) -> int:
        """The exit status once the container has stopped by itself."""
        return int(self.engine.ok("wait", self.name, timeout=timeout).splitlines()[-1])

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.name, *command)

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        """Poll /readyz from the host until it answers 200; fail at once if the container exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.base_url}/readyz", timeout=2)
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
            assert self.running(), f"the container exited ({self.exit_code()}):\n{self.logs()[-3000:]}"
            time.sleep(0.1)
        pytest.fail(f"not ready in {timeout} s:\n{self.logs()[-3000:]}")

    def health(self) -> str:
        """Run the image's HEALTHCHECK once and return the engine's health status.

        Podman schedules health checks with systemd timers, and there is no systemd here, so the
        check is run on demand (`podman healthcheck run`) exactly as the timer would; Docker runs
        it by itself every --health-interval, so this waits for its next check to be recorded."""
        if self.engine.command == "podman":
            self.engine("healthcheck", "run", self.name, timeout=30)
        else:
            previous = self._last_check()
            deadline = time.monotonic() + 60
            while self._last_check() == previous:
                assert time.monotonic() < deadline, f"no health check ran in 60 s:\n{self.logs()[-3000:]}"
                time.sleep(0.2)
        return self.inspect("{{.State.Health.Status}}")

    def _last_check(self) -> str:
        """When the latest recorded health check started (Docker keeps only the last five)."""
        checks = json.loads(self.inspect("{{json .State.Health.Log}}") or "null") or []
        return str(checks[-1].get("Start")) if checks else ""

    def wait_health(self, status: str, timeout: float = 60) -> list[str]:
        """Run checks until the engine reports `status`; the statuses seen, in order."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1] != status:
            assert time.monotonic() < deadline, f"not {status} in {timeout} s: {seen}\n{self.logs()[-3000:]}"
            seen.append(self.health())
        return seen

    def wait_start_period(self, seconds: float) -> None:
        """Wait until a health-check start period of `seconds` is over: `run -d` returned after
        the container started, so this errs on the late side."""
        time.sleep(max(0.0, self.created + seconds - time.monotonic()))

    def stop(self, grace: int) -> float:
        """`stop` (SIGTERM, SIGKILL after `grace` seconds); returns how long it took."""
        started = time.monotonic()
        self.engine.ok("stop", "--time", str(grace), self.name, timeout=grace + 30)
        return time.monotonic() - started


@dataclass
class Containers:
    """Starts containers and volumes, and removes every one of them after the test."""

    engine: Engine
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = f"fms-test-{uuid.uuid4().hex[:10]}"
        self.engine.ok("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        publish: bool = True,
        command: tuple[str, ...] = (),
    ) -> Container:
        """`run -d` the image, read-only with a tmpfs on /tmp only, published on a free
        127.0.0.1 port (or `publish=False` and pass --network=host in args)."""
        name = f"fms-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        port = free_port()
        options = [
            "--name", name,
            "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
            "--health-interval", "1s",
        ]  # fmt: skip
        if self.engine.command == "podman":
            # Podman would add tmpfs on /run and /var/tmp too; only /tmp is meant to be writable.
            options.append("--read-only-tmpfs=false")
        environment = {"SECRET_KEY": SECRET_KEY, **(env or {})}
        if publish:
            options += ["-p", f"127.0.0.1:{port}:8000"]
        else:
            environment.setdefault("PORT", str(port))
            environment.setdefault("HOST", "127.0.0.1")
        for key, value in environment.items():
            options += ["-e", f"{key}={value}"]
        self.engine.ok("run", "-d", *options, *args, self.engine.image, *command)
        return Container(self.engine, name, port)

    def cleanup(self) -> None:
        for name in self.names:
            self.engine("rm", "--force", "--time", "0", name)
        for volume in self.volumes:
            self.engine("volume", "rm", "--force", volume)


@pytest.fixture
def containers(engine: Engine) -> Iterator[Containers]:
    made = Containers(engine)
    try:
        yield made
    finally:
        made.cleanup()


def container_output(text: str) -> list[str]:
    """The lines the container wrote, without the engine's own complaints."""
    return [line for line in text.splitlines() if line.strip() and _ENGINE_NOISE not in line]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in container_output(text) if line.startswith("{")]
