"""The OpenAPI document as a contract for generated clients: FastAPI's document, completed once when
it is first built with what the route decorators cannot say.

- API keys as a security scheme of their own, with the scopes each operation needs.
- `Problem` (and its `FieldError`) in the components: every error response of /api and the probes
  points at it under `application/problem+json` (app.schemas.common.problem_responses).
- The served models, from the model manifest (a fork's own): model-name path parameters list them
  (`enum`), `GET /api/v1/models` links to the routes that take a name, and the prediction bodies
  document each model's features, so a generated client builds rows the server accepts.

Built once per process, on the first request for /openapi.json: no request path pays for it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import FastAPI

from app.core.config import Settings
from app.core.security import API_KEY_PREFIX, Scope
from app.ml.errors import ModelLoadError
from app.ml.manifest import Manifest, ModelSpec, load_manifest
from app.schemas.common import Problem

Document = dict[str, Any]
# The security schemes: the OAuth2 password flow (app.api.deps) and API keys (added here).
_OAUTH2_SCHEME = "OAuth2PasswordBearer"
API_KEY_SCHEME = "APIKey"
JSON = dict[str, Any]

_NUMBER: JSON = {"type": "number"}
# Operations whose `name` path parameter is a model's name.
_MODEL_PATHS = (
    "/api/v1/models/{name}",
    "/api/v1/models/{name}/predict",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
    "/api/v1/models/{name}/versions/{version}/predict",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/versions/{version}/infer",
    "/api/v1/models/{name}/aliases",
    "/api/v1/models/{name}/aliases/{alias}",
)


def install(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with one that completes FastAPI's document before it is cached."""
    build = app.openapi

    def openapi() -> Document:
        if app.openapi_schema is None:
            document = build()  # FastAPI caches it on app.openapi_schema; completed in place
            complete(document, served_manifest(settings))
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def served_manifest(settings: Settings) -> Manifest | None:
    """The manifest the registry serves (read again here: the document is built only once, and may
    be built before the lifespan has run), or None when models are off or it cannot be read (then
    start-up fails with the manifest's own error anyway)."""
    if not settings.ml_enabled:
        return None
    try:
        return load_manifest(settings.ml_model_dir)
    except ModelLoadError:
        return None


def complete(document: Document, manifest: Manifest | None) -> None:
    schemas: JSON = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"] = dict(sorted(operation["responses"].items()))
    _document_api_keys(document)
    if manifest is not None:
        _document_models(document, schemas, manifest)


def _document_api_keys(document: Document) -> None:
    """API keys as a security scheme of their own (`APIKey`, an HTTP bearer credential), offered by
    every operation a key may call, with the scopes it needs.

    FastAPI lists the scopes a route declares (`Security(..., scopes=[...])`, app.api.deps) under
    the OAuth2 scheme, but access tokens carry no scopes: a person logged in may do whatever their
    user may. So each requirement becomes two alternatives: the OAuth2 password flow with no scope,
    or a key with the scopes. An operation that declares none (account management, keys, log-out)
    is not offered to keys."""
    schemes: JSON = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[API_KEY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": f"API key ({API_KEY_PREFIX}...)",
        "description": "An API key made with `POST /api/v1/api-keys`, sent as `Authorization: Bearer "
        "<key>`. It may call only the operations that list its scopes: "
        + ", ".join(f"`{scope}`" for scope in Scope)
        + ".",
    }
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "security" not in operation:
                continue
            requirements: list[JSON] = []
            for requirement in operation["security"]:
                scopes = requirement.pop(_OAUTH2_SCHEME, None)
                if scopes is None:
                    requirements.append(requirement)
                    continue
                requirements.append({_OAUTH2_SCHEME: []})
                if scopes:
                    requirements.append({API_KEY_SCHEME: sorted(set(scopes))})
            operation["security"] = [r for i, r in enumerate(requirements) if r not in requirements[:i]]


def schema_name(spec: ModelSpec, suffix: str) -> str:
    """`breast_cancer` -> `BreastCancerRow`: a component name and a generated class name."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_-]", spec.name)) + suffix


def _features(spec: ModelSpec) -> str:
    return ", ".join(spec.feature_names)


def _row_schema(spec: ModelSpec) -> JSON:
    return {
        "type": "object",
        "title": schema_name(spec, "Row"),
        "description": f"One row for model `{spec.name}`, keyed by feature name.",
        "properties": {name: dict(_NUMBER) for name in spec.feature_names},
        "required": list(spec.feature_names),
        "additionalProperties": False,
    }


def _features_schema(spec: ModelSpec) -> JSON:
    width = len(spec.features)
    return {
        "type": "object",
        "title": schema_name(spec, "PredictRequest"),
        "description": f"One row for model `{spec.name}`. {spec.description}".strip(),
        "properties": {
            "features": {
                "type": "array",
                "items": dict(_NUMBER),
                "minItems": width,
                "maxItems": width,
                "description": f"The {width} feature values in this order: {_features(spec)}.",
            }
        },
        "required": ["features"],
        "additionalProperties": False,
    }


def _operations(document: Document, path: str) -> list[JSON]:
    item = document.get("paths", {}).get(path, {})
    return [operation for operation in item.values() if isinstance(operation, dict)]


def _set_body(operation: JSON, ref: str, examples: JSON | None = None) -> None:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return
    content["schema"] = {"$ref": ref}
    if examples:
        content["examples"] = examples


def _document_models(document: Document, schemas: JSON, manifest: Manifest) -> None:
    # Each model as a fresh deployment serves it: the first version the manifest lists (other
    # versions of a model take the same features, as a new version of one model would).
    firsts: dict[str, ModelSpec] = {}
    for spec in manifest.models:
        firsts.setdefault(spec.name, spec)
    manifest = manifest.model_copy(update={"models": tuple(firsts.values())})
    # One component, so a generated client has one enum of the model names.
    schemas["ModelName"] = {
        "type": "string",
        "title": "ModelName",
        "enum": [spec.name for spec in manifest.models],
        "description": "A served model (`GET /api/v1/models` lists them with their features).",
    }
    for path in _MODEL_PATHS:
        for operation in _operations(document, path):
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name":
                    parameter["schema"] = {"$ref": "#/components/schemas/ModelName"}
                    parameter["description"] = schemas["ModelName"]["description"]
    _document_inputs(document, schemas, manifest)
    _link_models(document)


def _document_inputs(document: Document, schemas: JSON, manifest: Manifest) -> None:
    listing = "; ".join(f"`{s.name}`: {_features(s)}" for s in manifest.models)
    for spec in manifest.models:
        schemas[schema_name(spec, "Row")] = _row_schema(spec)
        schemas[schema_name(spec, "PredictRequest")] = _features_schema(spec)
    ref = "#/components/schemas/{}".format

    by_name = {spec.name: spec for spec in manifest.models}
    one_row = {"/api/v1/predict": manifest.default_model, "/api/v1/predict-heavy": manifest.heavy_model}
    for path, model in one_row.items():
        spec = by_name[model or manifest.default_model]
        for operation in _operations(document, path):
            _set_body(operation, ref(schema_name(spec, "PredictRequest")))

    widths = [len(spec.features) for spec in manifest.models]
    batch = "BatchPredictRows"
    schemas[batch] = {
        "type": "object",
        "title": batch,
        "description": "Rows for the model named in the path, at most its `max_batch_size`. Each row: "
        "an array in the model's feature order, or an object keyed by feature name. " + listing + ".",
        "properties": {
            "rows": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "anyOf": [
                        {
                            "type": "array",
                            "items": dict(_NUMBER),
                            "minItems": min(widths),
                            "maxItems": max(widths),
                        },
                        *({"$ref": ref(schema_name(spec, "Row"))} for spec in manifest.models),
                    ]
                },
            }
        },
        "required": ["rows"],
        "additionalProperties": False,
    }
    examples = {
        spec.name: {
            "summary": f"A row for `{spec.name}`",
            "value": {"rows": [dict.fromkeys(spec.feature_names, 0.0)]},
        }
        for spec in manifest.models
    }
    for path in ("/api/v1/models/{name}/predict", "/api/v1/models/{name}/versions/{version}/predict"):
        for operation in _operations(document, path):
            _set_body(operation, ref(batch), examples)

    # FastAPI's generic bodies, replaced above by the per-model ones.
    for name in ("PredictRequest", "BatchPredictRequest"):
        if f'"{ref(name)}"' not in json.dumps(document):
            schemas.pop(name, None)


def _link_models(document: Document) -> None:
    """How a client (or a stateful fuzzer) goes on from the list of models to one of them."""
    targets = {
        "ReadModel": ("/api/v1/models/{name}", "get"),
        "PredictWithModel": ("/api/v1/models/{name}/predict", "post"),
    }
    listed = document.get("paths", {}).get("/api/v1/models", {}).get("get")
    if listed is not None:
        links = listed["responses"]["200"].setdefault("links", {})
        for link, (path, method) in targets.items():
            target = document["paths"].get(path, {}).get(method, {})
            if "operationId" in target:
                links[link] = {
                    "operationId": target["operationId"],
                    "parameters": {"name": "$response.body#/0/name"},
                }
