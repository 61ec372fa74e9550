"""This service's own model server, a real process: the Open Inference Protocol for tritonclient,
its service token, and nothing of users."""

from __future__ import annotations

import httpx
import numpy as np
import tritonclient.http as triton
from sklearn.datasets import load_breast_cancer

from tests.faults.server import Server
from tests.tier.conftest import MODEL_SERVER_TOKEN

FOREST_ROWS = load_breast_cancer().data[:4]


def test_tritonclient_drives_the_model_server(model_server: Server) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{model_server.port}", network_timeout=30)
    auth = {"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
    try:
        assert client.is_server_ready(headers=dict(auth))
        assert client.is_model_ready("breast_cancer", headers=dict(auth))
        x = np.asarray(FOREST_ROWS, dtype=np.float32)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
        result = client.infer("breast_cancer", [tensor], outputs=outputs, headers=dict(auth))
        assert result.as_numpy("probabilities").shape == (4, 2)
        assert {str(label) for label in result.as_numpy("label")} <= {"malignant", "benign"}
    finally:
        client.close()


def test_the_model_server_wants_its_token_and_has_no_users(model_server: Server) -> None:
    url = model_server.base_url
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    refused = httpx.post(f"{url}/v2/models/iris/infer", json=body)
    assert refused.status_code == 401
    assert "service token" in refused.json()["error"]
    wrong = httpx.post(f"{url}/v2/models/iris/infer", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.post(
        f"{url}/v2/models/iris/infer", json=body, headers={"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
    )
    assert ok.status_code == 200
    assert ok.json()["model_name"] == "iris"
    # Nothing of users or items is served there.
    assert (
        httpx.post(
            f"{url}/api/v1/auth/register", json={"email": "a@example.com", "password": "x" * 20}
        ).status_code
        == 404
    )
    assert httpx.get(f"{url}/readyz").json() == {
        "status": "ready",
        "models": "3 loaded",
        # No stored state in its (empty, in-memory) database: the manifest's seed, revision 0.
        "model_versions": {"iris": ["1.0.0"], "breast_cancer": ["1.0.0"], "diabetes": ["1.0.0"]},
        "model_state_revision": 0,
    }
    assert 'model_predictions_total{model="iris"' in httpx.get(f"{url}/metrics").text
