"""The image, built and run for real (issues 16 and 21): read-only and non-root, healthy, the
HEALTHCHECK's documented timings and unhealthy until migrated, `models add` of an ONNX classifier,
the README's walk-through from outside, SQLite data kept across containers, a clean drain on `stop`,
the PostgreSQL configuration, the faults (no SECRET_KEY, read-only data volume, database gone), and
the web tier and the model server as two containers of the one image."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.conftest import admin_sql
from tests.container.conftest import (
    PASSWORD,
    ROOT,
    Container,
    Containers,
    Engine,
    container_output,
    json_lines,
)
from tests.faults.server import free_port
from tests.steady_load import SteadyLoad, post_json

GRACE_SECONDS = 10


def _walk_through(base_url: str) -> tuple[dict[str, str], int]:
    """README.md's walk-through against the published port; returns Alice's header and the id of
    an item left in place."""
    with httpx.Client(base_url=base_url, timeout=30) as api:
        for who in ("alice", "bob"):
            registered = api.post(
                "/api/v1/auth/register", json={"email": f"{who}@example.com", "password": f"{who}-password"}
            )
            assert registered.status_code == 201, registered.text
        alice, bob = ({"Authorization": f"Bearer {_token(api, who)}"} for who in ("alice", "bob"))
        created = api.post(
            "/api/v1/items", headers=alice, json={"title": "First item", "description": "Hello"}
        )
        assert created.status_code == 201, created.text
        item = created.json()["id"]
        listed = api.get("/api/v1/items", headers=alice)
        assert listed.status_code == 200
        assert listed.headers["x-total-count"] == "1"
        assert api.get(f"/api/v1/items/{item}", headers=alice).json()["title"] == "First item"
        renamed = api.patch(f"/api/v1/items/{item}", headers=alice, json={"title": "Renamed"})
        assert renamed.status_code == 200
        assert renamed.json()["title"] == "Renamed"
        hidden = api.get(f"/api/v1/items/{item}", headers=bob)
        assert hidden.status_code == 404
        assert hidden.headers["content-type"] == "application/problem+json"
        assert api.delete(f"/api/v1/items/{item}", headers=alice).status_code == 204
        assert api.get(f"/api/v1/items/{item}", headers=alice).status_code == 404

        predicted = api.post("/api/v1/predict", headers=alice, json={"features": [5.1, 3.5, 1.4, 0.2]})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["prediction"] == "setosa"
        models = api.get("/api/v1/models", headers=alice)
        assert models.status_code == 200
        # Every bundled model answers, the process-pool one (scikit-learn, forkserver) included.
        for model in models.json():
            done = api.post(
                f"/api/v1/models/{model['name']}/predict", headers=alice, json=model["example_request"]
            )
            assert done.status_code == 200, (model["name"], done.text)

        kept = api.post(
            "/api/v1/items", headers=alice, json={"title": "Kept", "description": "across restarts"}
        )
        assert kept.status_code == 201
        return alice, kept.json()["id"]


def _token(api: httpx.Client, who: str) -> str:
    response = api.post(
        "/api/v1/auth/token", data={"username": f"{who}@example.com", "password": f"{who}-password"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _writable(container: Container, path: str, *, as_root: bool = False) -> bool:
    probe = f"import tempfile; tempfile.TemporaryFile(dir={path!r}).close()"
    user = ("--user", "0") if as_root else ()
    return container.exec(*user, "python", "-c", probe).returncode == 0


def _assert_stopped_cleanly(container: Container, seconds: float, event: str = "stopped") -> None:
    assert container.exit_code() == 0, container.logs()[-3000:]
    assert seconds < GRACE_SECONDS, f"stop took {seconds:.1f} s: SIGKILL, not a drain"
    assert any(line.get("event") == event for line in json_lines(container.logs()))


# --- SQLite: the default configuration ----------------------------------------------------------


def test_read_only_non_root_healthy_walk_through_and_data_kept_across_containers(
    engine: Engine, containers: Containers
) -> None:
    volume = containers.volume()
    sqlite = {
        "DATABASE_URL": "sqlite+aiosqlite:////app/data/app.db",
        "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS),
    }
    first = containers.run("-v", f"{volume}:/app/data", env=sqlite)
    ready = first.wait_ready()
    assert ready["models"] == "3 loaded"
    assert first.health() == "healthy"

    # Non-root: the image's user, and the server process (PID 1) really runs as it.
    assert first.inspect("{{.Config.User}}") == "10001:10001"
    status = first.exec("cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4
    # Read-only root filesystem, even for root in the container: only the tmpfs and the data
    # volume take writes, and the service user can write to both.
    assert first.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    for path in ("/", "/app", "/app/app", "/app/.venv", "/etc", "/usr", "/var/tmp", "/run"):
        assert not _writable(first, path, as_root=True), f"{path} is writable"
    assert _writable(first, "/tmp")
    assert _writable(first, "/app/data")
    # Nothing of the build in it: no uv, pip, compilers or curl, no tests, no build secret.
    tools = first.exec(
        "python",
        "-c",
        "import shutil; print([t for t in ('uv', 'pip', 'pip3', 'gcc', 'cc', 'curl') if shutil.which(t)])",
    )
    assert tools.stdout.strip() == "[]", tools
    present = first.exec(
        "python",
        "-c",
        "import os; print([p for p in ('/app/tests', '/app/bench', '/opt/uv', '/run/secrets')"
        " if os.path.exists(p)])",
    )
    assert present.stdout.strip() == "[]", present
    env = first.inspect("{{json .Config.Env}}")
    assert "SSL_CERT_FILE" not in env
    assert "PIP_CERT" not in env
    labels = engine.image_config("Labels")
    for label in ("title", "version", "revision", "created"):
        assert labels[f"org.opencontainers.image.{label}"], labels

    alice, kept = _walk_through(first.base_url)
    _assert_stopped_cleanly(first, first.stop(GRACE_SECONDS + 5))
    # Every line the container wrote is a JSON log line: uvicorn's, the app's, the libraries'.
    lines = container_output(first.logs())
    assert len(json_lines(first.logs())) == len(lines), [line for line in lines if not line.startswith("{")]

    # A new container on the same volume: the users, the item and the signing key's tokens hold.
    second = containers.run("-v", f"{volume}:/app/data", env=sqlite)
    second.wait_ready()
    with httpx.Client(base_url=second.base_url, timeout=30) as api:
        items = api.get("/api/v1/items", headers=alice)
        assert items.status_code == 200, items.text
        assert [(i["id"], i["title"]) for i in items.json()] == [(kept, "Kept")]
        assert _token(api, "bob")
    _assert_stopped_cleanly(second, second.stop(GRACE_SECONDS + 5))


def test_the_healthcheck_probes_readiness_with_the_documented_timings(engine: Engine) -> None:
    """docs/deployment.md: "`HEALTHCHECK` runs a standard-library one-liner against `/readyz`
    every 10 s (timeout 4 s, start period 30 s, 3 retries)": the image's own, read back."""
    docs = " ".join((ROOT / "docs" / "deployment.md").read_text().split())
    promised = re.search(
        r"`HEALTHCHECK` runs a standard-library one-liner against `/readyz` every (\d+) s "
        r"\(timeout (\d+) s, start period (\d+) s, (\d+) retries\)",
        docs,
    )
    assert promised, "docs/deployment.md no longer states the HEALTHCHECK's timings"
    interval, timeout, start_period, retries = (int(value) for value in promised.groups())
    check = engine.image_config("Healthcheck")
    seconds = 1_000_000_000  # the engines give durations in nanoseconds
    assert check["Interval"] == interval * seconds, check
    assert check["Timeout"] == timeout * seconds, check
    assert check["StartPeriod"] == start_period * seconds, check
    assert check["Retries"] == retries, check
    assert check["Test"][0] == "CMD", check
    assert "/readyz" in check["Test"][-1], check


def test_unhealthy_until_the_database_is_migrated(containers: Containers) -> None:
    """docs/deployment.md: unhealthy while the database is unmigrated. Served on an empty SQLite
    file with AUTO_MIGRATE off (as a PostgreSQL deployment is, by default): live, not ready, and
    unhealthy at the third failed check; `python -m app.cli migrate` makes it healthy."""
    volume = containers.volume()
    check: list[str] = containers.engine.image_config("Healthcheck")["Test"]
    server = containers.run(
        "-v",
        f"{volume}:/app/data",
        # The image's own check; a 1 s start period instead of 30 s, so failures count at once
        # (podman 4.3 applies --health-* only together with --health-cmd).
        "--health-cmd",
        json.dumps(check[1:]),
        "--health-start-period=1s",
        env={"DATABASE_URL": "sqlite+aiosqlite:////app/data/app.db", "AUTO_MIGRATE": "false"},
    )
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/healthz", timeout=2).status_code == 200:
                break
        assert server.running(), server.logs()[-3000:]
        assert time.monotonic() < deadline, server.logs()[-3000:]
        time.sleep(0.1)
    not_ready = httpx.get(f"{server.base_url}/readyz", timeout=5)
    assert not_ready.status_code == 503, not_ready.text
    assert "migrated" in not_ready.json()["detail"], not_ready.text
    server.wait_start_period(1)
    statuses = [server.health() for _ in range(3)]
    assert statuses == ["starting", "starting", "unhealthy"], statuses
    assert server.running()

    migrated = server.exec("python", "-m", "app.cli", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert server.health() == "healthy"
    assert httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 200


def test_models_add_reads_an_onnx_classifiers_labels_in_the_image(containers: Containers) -> None:
    """`python -m app.cli models add` in the image (no dev dependencies) takes an ONNX classifier
    without --labels: its class names are read from the file into the manifest, and a service on
    that model directory answers with them. The model directory is a volume (the image is
    read-only): a copy of the bundled one."""
    volume = containers.volume()
    env = {"ML_MODEL_DIR": "/app/data/models", "DATABASE_URL": "sqlite+aiosqlite:////app/data/app.db"}
    mount = ("-v", f"{volume}:/app/data")
    copy = "import shutil; shutil.copytree('/app/ml_models', '/app/data/models')"
    copied = containers.run(*mount, publish=False, env=env, command=("python", "-c", copy))
    assert copied.wait() == 0, copied.logs()
    add = ("python", "-m", "app.cli", "models", "add", "/app/ml_models/iris.onnx")
    added = containers.run(
        *mount, publish=False, env=env, command=(*add, "--name", "flowers", "--version", "2")
    )
    assert added.wait(timeout=120) == 0, added.logs()
    assert container_output(added.logs())[0].startswith("added flowers 2 (onnx, 4 features, 3 classes)")

    server = containers.run(*mount, env=env)
    assert server.wait_ready()["models"] == "4 loaded"
    manifest = json.loads(server.exec("cat", "/app/data/models/manifest.json").stdout)
    entry = next(m for m in manifest["models"] if m["name"] == "flowers")
    assert entry["version"] == "2"
    assert entry["task"] == "classification"
    # The classes as the file names them: iris.onnx was converted from integer targets
    # (scripts/train_models.py), so its classifier node says 0, 1, 2; the bundled manifest names
    # them by hand, as --labels would.
    assert entry["labels"] == ["0", "1", "2"]
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        registered = api.post(
            "/api/v1/auth/register", json={"email": "carol@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        token = api.post("/api/v1/auth/token", data={"username": "carol@example.com", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        catalogue = {m["name"]: m for m in api.get("/api/v1/models", headers=headers).json()}
        assert catalogue["flowers"]["labels"] == ["0", "1", "2"]
        predicted = api.post(
            "/api/v1/models/flowers/predict", headers=headers, json={"rows": [[5.1, 3.5, 1.4, 0.2]]}
        )
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["predictions"][0]["prediction"] == "0", predicted.text


# What each load's requests are answered when the server serves them: registrations succeed, and
# predictions without a token are refused with 401 (a cheap answer that keeps a second kind going).
EXPECTED = {"register": 201, "predict": 401}
# Refusals allowed only for a request sent after SIGTERM: the connection refused or closed by a
# server no longer accepting (a transport error, status 0), or 503 from one that is draining.
REFUSED_CONNECTIONS = {"ConnectError", "RemoteProtocolError", "ReadError"}


async def _register(client: httpx.AsyncClient) -> httpx.Response:
    email = f"load-{uuid.uuid4().hex[:12]}@example.com"
    return await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})


def _load(base_url: str, kind: str, loops: int) -> SteadyLoad:
    """Closed loops of one kind of request, named `kind` in their outcomes."""
    send = (
        _register if kind == "register" else post_json("/api/v1/predict", {"features": [5.1, 3.5, 1.4, 0.2]})
    )
    return SteadyLoad(
        {kind: base_url},
        send,
        loops=loops,
        thread=True,
        timeout_s=GRACE_SECONDS * 2,
        pause_after_error_s=0.05,
    )


async def test_stop_drains_every_request_in_flight_and_exits_0(containers: Containers) -> None:
    """`stop` under load from the host: SIGTERM, every request sent before it answered (with
    success), exit status 0 well inside the grace period; after it, refusals are allowed."""
    volume = containers.volume()
    server = containers.run(
        "-v",
        f"{volume}:/app/data",
        env={
            "DATABASE_URL": "sqlite+aiosqlite:////app/data/app.db",
            "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS),
            "RATE_LIMIT_ENABLED": "false",
            # Slow registrations (Argon2 at 4 passes, one at a time): several are in flight at SIGTERM.
            "PASSWORD_HASH_TIME_COST": "4",
            "PASSWORD_HASH_CONCURRENCY": "1",
            "ML_ENABLED": "false",
        },
    )
    await asyncio.to_thread(server.wait_ready)
    async with (
        _load(server.base_url, "register", 6) as registrations,
        _load(server.base_url, "predict", 2) as predictions,
    ):
        deadline = time.monotonic() + 60
        while not {201, 401} <= {o.status for o in registrations.outcomes + predictions.outcomes}:
            assert time.monotonic() < deadline, (
                registrations.statuses(),
                predictions.statuses(),
                server.logs()[-3000:],
            )
            await asyncio.sleep(0.1)
        # Taken before `stop` is even called, so earlier than the signal really is: a request
        # counted as sent before SIGTERM surely was.
        signalled_at = time.monotonic()
        took = await asyncio.to_thread(server.stop, GRACE_SECONDS + 5)
    outcomes = registrations.outcomes + predictions.outcomes
    detail = (took, server.logs()[-4000:])
    _assert_stopped_cleanly(server, took)
    assert '"event": "shutdown_requested"' in server.logs(), detail
    before = [o for o in outcomes if o.sent < signalled_at]
    lost = [o for o in before if o.status != EXPECTED[o.client]]
    assert lost == [], (lost, detail)
    in_flight = [o for o in before if o.client == "register" and o.answered > signalled_at]
    assert in_flight, "no registration was in flight at SIGTERM: the test proved nothing"
    after = [o for o in outcomes if o.sent >= signalled_at]
    refused = [
        o for o in after if o.status not in {*EXPECTED.values(), 503} and o.error not in REFUSED_CONNECTIONS
    ]
    assert refused == [], (refused, detail)


# --- Faults --------------------------------------------------------------------------------------


def test_production_without_secret_key_exits_at_once_with_one_line(
    engine: Engine, containers: Containers
) -> None:
    server = containers.run(env={"SECRET_KEY": ""})
    started = time.monotonic()
    assert server.wait(timeout=30) == 2
    assert time.monotonic() - started < 10
    lines = container_output(server.logs())
    assert len(lines) == 1, lines
    assert lines[0].startswith("configuration error: SECRET_KEY must be set"), lines


def test_a_read_only_data_volume_is_a_one_line_start_up_error(containers: Containers) -> None:
    volume = containers.volume()
    server = containers.run(
        "-v", f"{volume}:/app/data:ro", env={"DATABASE_URL": "sqlite+aiosqlite:////app/data/app.db"}
    )
    assert server.wait(timeout=30) == 2
    lines = container_output(server.logs())
    assert lines == [
        "start-up error: DATABASE_URL: the SQLite database /app/data/app.db cannot be written "
        "(Read-only file system): mount a writable volume at /app/data"
    ], lines


# --- PostgreSQL ----------------------------------------------------------------------------------


def _postgresql_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        pytest.skip(
            "TEST_DATABASE_URL names no PostgreSQL server (.ci/run sets it after scripts/services.sh)"
        )
    return url


def _migrate(containers: Containers, database_url: str) -> None:
    """The image's own CLI as the container command: `python -m app.cli migrate`."""
    migrate = containers.run(
        "--network=host",
        publish=False,
        env={"DATABASE_URL": database_url},
        command=("python", "-m", "app.cli", "migrate"),
    )
    assert migrate.wait(timeout=60) == 0, migrate.logs()
    assert "database migrated to head" in migrate.logs()


def test_the_postgresql_configuration_on_the_host_network(containers: Containers) -> None:
    base = make_url(_postgresql_url())
    name = "mlservice_image"
    asyncio.run(admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin_sql(base, f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(containers, url)
        server = containers.run(
            "--network=host",
            publish=False,
            env={"DATABASE_URL": url, "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS)},
        )
        ready = server.wait_ready()
        assert ready["database"] == "ok"
        assert ready["models"] == "3 loaded"
        assert server.health() == "healthy"
        _walk_through(server.base_url)
        _assert_stopped_cleanly(server, server.stop(GRACE_SECONDS + 5))
    finally:
        asyncio.run(admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster of this test's own, on its own port, that it may stop."""

    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-o", options, "start")

    def pg_ctl(self, *args: str) -> None:
        log = self.data_dir.parent / "postgresql.log"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
             "-l", str(log), "-w", "-t", "30", *args],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found or os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs PostgreSQL's server binaries (scripts/services.sh installs them) and root")
    bin_dir = found[-1].parent
    # Not pytest's tmp_path: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="fms-image-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
         "-U", "postgres", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    made = Cluster(bin_dir, data, free_port())
    made.start()
    try:
        yield made
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            made.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_health_turns_unhealthy_when_the_database_is_gone_and_healthy_when_it_returns(
    containers: Containers, cluster: Cluster
) -> None:
    _migrate(containers, cluster.url)
    # Podman ignores failed checks for the whole --health-start-period (30 s in the image), even
    # after a first success; 1 s here, so the failures below count at once. Podman 4.3 applies
    # --health-* options only together with --health-cmd: the image's own command is restated.
    check: list[str] = containers.engine.image_config("Healthcheck")["Test"]
    assert check[0] == "CMD", check
    server = containers.run(
        "--network=host",
        "--health-cmd",
        json.dumps(check[1:]),
        "--health-start-period=1s",
        publish=False,
        env={"DATABASE_URL": cluster.url, "ML_ENABLED": "false"},
    )
    server.wait_ready()
    server.wait_start_period(1)
    assert server.health() == "healthy"

    cluster.pg_ctl("-m", "fast", "stop")
    # Unhealthy at the HEALTHCHECK's --retries (3) failures in a row, not before; the process keeps
    # running (liveness is not readiness: no restart loop while the database is away).
    statuses = [server.health() for _ in range(3)]
    assert statuses == ["healthy", "healthy", "unhealthy"], statuses
    assert server.running()
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 503

    cluster.start()
    server.wait_health("healthy")


# --- Two tiers: the web tier and the model server as two containers of the one image -------------


def test_the_web_tier_and_the_model_server_run_as_two_containers(containers: Containers) -> None:
    """The same image as the model server (`python -m app.cli model-server`, its service token)
    and as a web tier whose models are all remote (`ML_REMOTE_URL`): the README's walk-through,
    every model included, is answered through the model server."""
    token = f"service-token-{uuid.uuid4().hex}"
    model_server = containers.run(
        "--network=host",
        publish=False,
        env={"MODEL_SERVER_TOKEN": token, "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS)},
        command=("python", "-m", "app.cli", "model-server"),
    )
    model_server.wait_ready()
    assert model_server.health() == "healthy"
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    infer = f"{model_server.base_url}/v2/models/iris/infer"
    assert httpx.post(infer, json={"inputs": [tensor]}, timeout=10).status_code == 401  # no token
    web = containers.run(
        "--network=host",
        publish=False,
        env={
            "DATABASE_URL": "sqlite+aiosqlite:////tmp/web.db",
            "ML_REMOTE_URL": model_server.base_url,
            "MODEL_SERVER_TOKEN": token,
            "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS),
        },
    )
    web.wait_ready()
    # Answered by the model server: its own metrics count every row the walk-through predicted
    # (the default model twice, every other model once), and with it stopped the web tier's
    # predictions answer 503.
    served: dict[str, list[str]] = model_server.wait_ready()["model_versions"]
    before = _predicted_rows(model_server.base_url)
    alice, _ = _walk_through(web.base_url)
    counted = _predicted_rows(model_server.base_url)
    predicted = {name: counted.get(name, 0) - before.get(name, 0) for name in served}
    assert predicted == {name: 2 if name == "iris" else 1 for name in served}, (before, counted)
    with httpx.Client(base_url=web.base_url, timeout=30) as api:
        models = api.get("/api/v1/models", headers=alice).json()
        assert sorted(model["name"] for model in models) == sorted(served)
        _assert_stopped_cleanly(model_server, model_server.stop(GRACE_SECONDS + 5), "model_server_stopped")
        for model in models:
            orphaned = api.post(
                f"/api/v1/models/{model['name']}/predict", headers=alice, json=model["example_request"]
            )
            assert orphaned.status_code == 503, (model["name"], orphaned.text)
            assert orphaned.headers["content-type"] == "application/problem+json"
        assert api.get("/api/v1/items", headers=alice).status_code == 200  # the rest still serves
    _assert_stopped_cleanly(web, web.stop(GRACE_SECONDS + 5))


def _predicted_rows(base_url: str) -> dict[str, float]:
    """`model_predictions_total` by model, from the process's own /metrics."""
    exposition = httpx.get(f"{base_url}/metrics", timeout=10)
    assert exposition.status_code == 200, exposition.text
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(exposition.text)
        for sample in family.samples
        if sample.name == "model_predictions_total"
    }
