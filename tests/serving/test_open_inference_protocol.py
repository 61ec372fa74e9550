"""The Open Inference Protocol (KServe V2) at /v2, driven by the official tritonclient over a real
server process; and that the server leaves no model worker process behind when it stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import PASSWORD
from tests.faults.server import Server, free_port, server_env, start_server

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("oip")
    env = server_env(
        f"sqlite+aiosqlite:///{tmp / 'app.db'}", free_port(), ML_ENABLED="true", AUTO_MIGRATE="true"
    )
    running = start_server(env, tmp / "server.log")
    try:
        for _ in range(600):
            if httpx.get(f"{running.base_url}/readyz", timeout=2).status_code == 200:
                break
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    httpx.post(
        f"{server.base_url}/api/v1/auth/register", json={"email": "oip@example.com", "password": PASSWORD}
    )
    response = httpx.post(
        f"{server.base_url}/api/v1/auth/token", data={"username": "oip@example.com", "password": PASSWORD}
    )
    return str(response.json()["access_token"])


def auth(token: str) -> dict[str, str]:
    # A new dict for each call: tritonclient adds its own headers to the dict it is given.
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=30)
    yield c
    c.close()


def _infer(client: triton.InferenceServerClient, token: str, model: str, x: np.ndarray, outputs: list[str]):  # type: ignore[no-untyped-def]
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = [triton.InferRequestedOutput(name, binary_data=False) for name in outputs]
    return client.infer(model, [tensor], outputs=wanted, headers=auth(token))


def test_health_and_metadata(client: triton.InferenceServerClient, token: str) -> None:
    assert client.is_server_live(headers=auth(token))
    assert client.is_server_ready(headers=auth(token))
    assert client.is_model_ready("iris", headers=auth(token))
    assert client.get_server_metadata(headers=auth(token))["extensions"] == ["model_repository"]
    meta = client.get_model_metadata("iris", headers=auth(token))
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}


def test_infer_gives_the_same_results_as_api_v1(
    client: triton.InferenceServerClient, token: str, server: Server
) -> None:
    result = _infer(client, token, "iris", SAMPLES, ["label", "probabilities"])
    v1 = httpx.post(
        f"{server.base_url}/api/v1/models/iris/predict", json={"rows": SAMPLES.tolist()}, headers=auth(token)
    ).json()["predictions"]
    labels = [str(label) for label in result.as_numpy("label")]
    assert labels == [p["prediction"] for p in v1]
    expected = np.array([[p["probabilities"][c] for c in ("setosa", "versicolor", "virginica")] for p in v1])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6)


def test_regression_model_output(client: triton.InferenceServerClient, token: str, server: Server) -> None:
    x = np.zeros((2, 10), dtype=np.float32)
    result = _infer(client, token, "diabetes", x, ["prediction"])
    v1 = httpx.post(
        f"{server.base_url}/api/v1/models/diabetes/predict", json={"rows": x.tolist()}, headers=auth(token)
    ).json()["predictions"]
    np.testing.assert_allclose(result.as_numpy("prediction"), [p["prediction"] for p in v1], rtol=1e-9)


def test_binary_data_extension_gets_a_clear_400(client: triton.InferenceServerClient, token: str) -> None:
    tensor = triton.InferInput("input", list(SAMPLES.shape), "FP32")
    tensor.set_data_from_numpy(SAMPLES, binary_data=True)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("iris", [tensor], headers=auth(token))
    assert raised.value.status() == "400"
    assert "binary" in raised.value.message()


def test_errors_use_the_protocol_shape(server: Server, token: str) -> None:
    base = f"{server.base_url}/v2/models"
    unknown = httpx.post(f"{base}/nope/infer", json={"inputs": []}, headers=auth(token))
    assert unknown.status_code in (400, 404, 422)
    assert set(unknown.json()) == {"error"}
    wrong_shape = httpx.post(
        f"{base}/iris/infer",
        json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        headers=auth(token),
    )
    assert wrong_shape.status_code == 400
    assert "shape" in wrong_shape.json()["error"]
    no_token = httpx.get(f"{base}/iris")
    assert no_token.status_code == 401
    assert set(no_token.json()) == {"error"}


def test_stopping_the_server_leaves_no_worker_process(tmp_path: Path) -> None:
    env = server_env(
        f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", free_port(), ML_ENABLED="true", AUTO_MIGRATE="true"
    )
    running = start_server(env, tmp_path / "server.log")
    try:
        children = _children(running.process.pid)
        assert children, "the model worker processes should be running"
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
        # Helpers such as multiprocessing's forkserver and resource tracker exit when they see their
        # parent's pipe close: give them a moment, but none may stay.
        deadline = time.monotonic() + 10
        alive = [pid for pid in children if _is_running(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in children if _is_running(pid)]
        assert alive == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive]
    finally:
        running.kill()


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
