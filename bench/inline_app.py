"""The contrast of the event-loop isolation experiment: the heavy model run *inline*, on the event loop.

`python -m bench.inline_app --port N`

A small FastAPI app that loads the service's own heavy model (the skops forest of
ml_models/manifest.json, sha256 checked, loaded with the manifest's trusted types only) in the web
process and serves `POST /predict-heavy-inline` as an `async def` that calls `predict_proba`
directly: the guide's "#1 performance bug". scikit-learn's forest holds the GIL for the whole call,
so every other request of the process (`GET /healthz` here) waits behind it. No database, no auth,
no middleware: whatever slows `/healthz` down under load is the inline model. Served by uvicorn with
the production entry point's flags, like bench/bare_app.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from fastapi import FastAPI
from pydantic import BaseModel

from app.ml.manifest import load_manifest, read_verified

MODEL_DIR = Path(os.environ.get("ML_MODEL_DIR", Path(__file__).resolve().parents[1] / "ml_models"))


def _load_heavy() -> tuple[Any, Any]:
    manifest = load_manifest(MODEL_DIR)
    heavy = manifest.heavy_model or next(s.name for s in manifest.models if s.executor == "process")
    spec = next(s for s in manifest.models if s.name == heavy)
    model = sio.loads(read_verified(MODEL_DIR, spec), trusted=list(spec.trusted_types))
    return spec, model


SPEC, MODEL = _load_heavy()
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class PredictRequest(BaseModel):
    features: list[float]


class PredictResponse(BaseModel):
    prediction: str
    probabilities: dict[str, float]
    model: str
    version: str


@app.post("/predict-heavy-inline")
async def predict_heavy_inline(body: PredictRequest) -> PredictResponse:
    # Deliberately wrong: CPU-bound, GIL-holding work inside `async def` blocks the event loop.
    proba = MODEL.predict_proba(np.asarray([body.features], dtype=np.float32))[0]
    best = int(np.argmax(proba))
    return PredictResponse(
        prediction=SPEC.labels[best],
        probabilities={label: float(p) for label, p in zip(SPEC.labels, proba, strict=True)},
        model=SPEC.name,
        version=SPEC.version,
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


def main() -> None:
    from bench.bare_app import serve_like_the_service

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_like_the_service(app, args.port)


if __name__ == "__main__":
    main()
