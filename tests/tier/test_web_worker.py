"""A web worker whose models are all remote (ML_REMOTE_URL: the bundled manifest, every model
served by the model server), a real process: it serves them through the model server, loads none
of ONNX Runtime, scikit-learn, skops or SciPy, and starts no worker process."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.faults.server import Server
from tests.serving.test_open_inference_protocol import _children
from tests.tier.conftest import remote_web_worker


def _mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_remote_only_web_worker_loads_no_model_runtime(model_server: Server, tmp_path: Path) -> None:
    with remote_web_worker(model_server, tmp_path, "w@example.com") as (web, headers):
        base = web.base_url
        forest = httpx.post(f"{base}/api/v1/predict-heavy", json={"features": [1.0] * 30}, headers=headers)
        assert forest.status_code == 200, forest.text
        assert (
            httpx.post(
                f"{base}/api/v1/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}, headers=headers
            ).json()["prediction"]
            == "setosa"
        )
        mapped = _mapped_files(web.process.pid)
        for library in ("onnxruntime", "sklearn", "skops", "scipy"):
            assert f"/{library}/" not in mapped, f"a remote-only web worker loaded {library}"
        assert not _children(web.process.pid), "no model worker process, no forkserver"
