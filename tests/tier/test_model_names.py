"""Real processes over a model folder holding what older code let in (issue 21, findings 2 and 3):
a version outside the naming rule ("7 beta", once accepted by `models add`) and a corrupt file.
Each is set aside, and the model server and a web process with `ML_REMOTE_URL` start and serve the
rest; both exited with status 3 before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from tests.tier.conftest import MODEL_DIR, MODEL_SERVER_TOKEN, remote_web_worker, start_model_server


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(MODEL_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    iris = next(m for m in manifest["models"] if m["name"] == "iris")
    manifest["models"].append({**iris, "version": "7 beta"})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with (folder / "diabetes.onnx").open("ab") as file:
        file.write(b"\0")  # one byte appended: a sha256 mismatch
    return folder


def test_an_entry_or_file_a_process_cannot_take_leaves_the_rest_served(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    model_server = start_model_server(tmp_path, ML_MODEL_DIR=str(folder))
    try:
        token = {"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
        index = httpx.post(f"{model_server.base_url}/v2/repository/index", json={}, headers=token)
        assert index.status_code == 200, index.text
        states = {(m["name"], m["version"]): m for m in index.json()}
        assert states[("iris", "7 beta")]["state"] == "UNAVAILABLE"
        assert states[("diabetes", "1.0.0")]["state"] == "UNAVAILABLE"
        assert "sha256 mismatch" in states[("diabetes", "1.0.0")]["reason"]
        assert states[("iris", "1.0.0")]["state"] == "READY"

        web_worker = remote_web_worker(model_server, tmp_path, "n@example.com", ML_MODEL_DIR=str(folder))
        with web_worker as (web, headers):
            base = web.base_url
            iris = httpx.post(
                f"{base}/api/v1/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}, headers=headers
            )
            assert iris.status_code == 200, iris.text
            assert iris.json()["prediction"] == "setosa"
            forest = httpx.post(
                f"{base}/api/v1/predict-heavy", json={"features": [1.0] * 30}, headers=headers
            )
            assert forest.status_code == 200, forest.text
            # The rule holds at the door too: a version outside it is a 422 naming the parameter.
            outside = httpx.post(
                f"{base}/api/v1/models/iris/versions/7%20beta/predict",
                json={"rows": [[5.1, 3.5, 1.4, 0.2]]},
                headers=headers,
            )
            assert outside.status_code == 422, outside.text
            assert "version" in outside.text
    finally:
        model_server.stop()
