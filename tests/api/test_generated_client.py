"""The OpenAPI document as a contract, proven by a client generated from it.

openapi-python-client, pinned, from PyPI into a virtualenv of its own (made once under .cache/ by
tests/venvs.py), generates a Python client from the live /openapi.json of a real server process
(models on, rate limits on with small limits), and a driver script run by that virtualenv's Python
walks the README through with the generated client alone: register, log in, create / list / read /
update / delete an item, submit a batch job, poll it and download its results, predict with the
models, make an API key and call the service with it. Every error it meets (403 outside the key's
scopes, 404, 409, 422, 429 on log-in and on an authenticated route) must come back parsed as the
generated `Problem`, with its status: before the document named `Problem` under the media type the
server sends, each of them was `parsed=None`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.faults.server import Server, free_port, private_database, server_env, start_server
from tests.venvs import cached_venv

pytestmark = [pytest.mark.slow, pytest.mark.database]

GENERATOR = "openapi-python-client"
GENERATOR_PIN = f"{GENERATOR}==0.29.1"

DRIVER = r'''
import io
import json
import sys
import time

from service_client import AuthenticatedClient, Client
from service_client.api.api_keys import create_api_key_api_v1_api_keys_post as create_api_key
from service_client.api.auth import login, register
from service_client.api.jobs import (
    job_results_api_v1_jobs_job_id_results_get as job_results,
    read_job_api_v1_jobs_job_id_get as read_job,
    submit_job_api_v1_jobs_post as submit_job,
)
from service_client.api.items import (
    create_item_api_v1_items_post as create_item,
    delete_item_api_v1_items_item_id_delete as delete_item,
    list_items_api_v1_items_get as list_items,
    read_item_api_v1_items_item_id_get as read_item,
    update_item_api_v1_items_item_id_patch as update_item,
)
from service_client.api.models import (
    list_models_api_v1_models_get as list_models,
    predict_rows_api_v1_models_name_predict_post as predict_rows,
)
from service_client.api.predictions import (
    predict_api_v1_predict_post as predict,
    predict_heavy_api_v1_predict_heavy_post as predict_heavy,
)
from service_client.api.users import read_me_api_v1_users_me_get as read_me
from service_client.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    BatchPredictRows,
    BodyLogin,
    BreastCancerPredictRequest,
    IrisPredictRequest,
    IrisRow,
    ItemCreate,
    ItemPublic,
    ItemUpdate,
    JobPublic,
    ModelName,
    PredictResponse,
    Problem,
    Scope,
    TokenPair,
    UserCreate,
    UserPublic,
)
from service_client.types import File

base_url = sys.argv[1]
anonymous = Client(base_url=base_url)
seen = {}


def problem(response, status, code):
    """The response is a parsed Problem with this status and problem type."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert isinstance(response.parsed, Problem), (status, response.parsed, response.content)
    assert response.parsed.status == status and response.parsed.type_.endswith("/" + code), response.parsed
    seen[status] = response.parsed.to_dict()
    return response.parsed


def log_in(email, password):
    response = login.sync_detailed(client=anonymous, body=BodyLogin(username=email, password=password))
    assert isinstance(response.parsed, TokenPair), response.content
    return AuthenticatedClient(base_url=base_url, token=response.parsed.access_token)


# Register two users; the same email again is a 409.
for email, password in [("alice@example.com", "alice-password"), ("bob@example.com", "bob-password")]:
    created = register.sync_detailed(client=anonymous, body=UserCreate(email=email, password=password))
    assert isinstance(created.parsed, UserPublic), created.content
again = register.sync_detailed(
    client=anonymous, body=UserCreate(email="alice@example.com", password="alice-password")
)
problem(again, 409, "conflict")

alice = log_in("alice@example.com", "alice-password")
bob = log_in("bob@example.com", "bob-password")

# Create, list, read, update.
item = create_item.sync(client=alice, body=ItemCreate(title="First item", description="Hello"))
assert isinstance(item, ItemPublic) and item.title == "First item", item
listed = list_items.sync_detailed(client=alice)
assert [i.id for i in listed.parsed] == [item.id] and listed.headers["x-total-count"] == "1"
assert read_item.sync(item.id, client=alice).description == "Hello"
assert update_item.sync(item.id, client=alice, body=ItemUpdate(title="Renamed")).title == "Renamed"

# Bob cannot see Alice's item: a 404, the same as a missing one.
problem(read_item.sync_detailed(item.id, client=bob), 404, "not-found")

# Delete it (204, no body), then it is gone (404).
deleted = delete_item.sync_detailed(item.id, client=alice)
assert deleted.status_code == 204 and deleted.content == b"" and "content-type" not in deleted.headers
problem(read_item.sync_detailed(item.id, client=alice), 404, "not-found")

# A batch job: a CSV file submitted as bytes (its name says the format), polled, its results
# downloaded (Bob's requests: the per-user limit of 20 a minute leaves room for 15 polls).
rows_csv = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
submitted = submit_job.sync_detailed(
    client=bob,
    body=File(payload=io.BytesIO(rows_csv), file_name="rows.csv"),
    model="iris",
    filename="rows.csv",
)
assert submitted.status_code == 202 and isinstance(submitted.parsed, JobPublic), submitted.content
for _ in range(15):
    polled = read_job.sync(submitted.parsed.id, client=bob)
    if str(polled.state) in ("succeeded", "failed"):
        break
    time.sleep(1)
assert str(polled.state) == "succeeded" and polled.rows_done == 2, polled
downloaded = job_results.sync(submitted.parsed.id, client=bob).payload.read().decode().splitlines()
assert downloaded[0].startswith("row,label,"), downloaded
assert [line.split(",")[1] for line in downloaded[1:]] == ["setosa", "virginica"], downloaded

# Invalid fields: a 422 naming each of them.
invalid = problem(create_item.sync_detailed(client=alice, body=ItemCreate(title="")), 422, "validation-error")
assert [e.field for e in invalid.errors] == ["title"], invalid

# Predict with the default model and the heavy one, with bodies typed by the document.
row = predict.sync(client=alice, body=IrisPredictRequest(features=[5.1, 3.5, 1.4, 0.2]))
assert isinstance(row, PredictResponse) and row.model == "iris" and row.prediction == "setosa", row
heavy = predict_heavy.sync(client=alice, body=BreastCancerPredictRequest(features=[10.0] * 30))
assert isinstance(heavy, PredictResponse) and heavy.model == "breast_cancer", heavy
models = list_models.sync(client=alice)
assert sorted(m.name for m in models) == sorted(name.value for name in ModelName)
iris_row = IrisRow(sepal_length=6.7, sepal_width=3.0, petal_length=5.2, petal_width=2.3)
rows = BatchPredictRows(rows=[iris_row, [5.1, 3.5, 1.4, 0.2]])
batch = predict_rows.sync(ModelName.IRIS, client=alice, body=rows)
assert [p.prediction for p in batch.predictions] == ["virginica", "setosa"], batch

# A program's API key, made by the generated client and used as its bearer token.
made = create_api_key.sync(
    client=alice, body=ApiKeyCreate(name="nightly job", scopes=[Scope("predict"), Scope("items:read")])
)
assert isinstance(made, ApiKeyCreated) and made.key.startswith("mlk_"), made
program = AuthenticatedClient(base_url=base_url, token=made.key)
assert predict.sync(client=program, body=IrisPredictRequest(features=[5.1, 3.5, 1.4, 0.2])).model == "iris"
assert list_items.sync_detailed(client=program).status_code == 200
# Outside its scopes: a 403 the client parses, naming the scope.
outside = create_item.sync_detailed(client=program, body=ItemCreate(title="x"))
outside = problem(outside, 403, "insufficient-scope")
assert "items:write" in outside.detail, outside

# 429s: the log-in limit per account, and the per-user limit of an authenticated route.
for _ in range(10):
    wrong = BodyLogin(username="bob@example.com", password="wrong-password")
    refused = login.sync_detailed(client=anonymous, body=wrong)
    if refused.status_code != 401:
        break
problem(refused, 429, "rate-limited")
assert int(refused.headers["retry-after"]) >= 1
carol_account = UserCreate(email="carol@example.com", password="carol-password")
assert register.sync_detailed(client=anonymous, body=carol_account).status_code == 201
carol = log_in("carol@example.com", "carol-password")
for _ in range(40):
    me = read_me.sync_detailed(client=carol)
    if me.status_code != 200:
        break
problem(me, 429, "rate-limited")

print(json.dumps({str(status): body for status, body in sorted(seen.items())}))
'''


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command[:3]}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result  # type: ignore[no-any-return]


def generator_venv() -> Path:
    """openapi-python-client in a virtualenv of its own, made once (tests/venvs.py)."""
    return cached_venv("openapi-client", (GENERATOR_PIN,), GENERATOR)


def _generated_client(root: Path, document: Path) -> Path:
    """The client generated from `document`; the folder to put on the driver's PYTHONPATH (the
    client needs nothing the generator's virtualenv does not have)."""
    package = root / "generated" / "service_client"
    # `--meta none`: the package alone (no pyproject), nothing to install.
    generate = ["generate", "--path", str(document), "--output-path", str(package), "--meta", "none"]
    _run([str(generator_venv() / "bin" / GENERATOR), *generate])
    return package.parent


async def test_a_generated_client_walks_the_readme_and_parses_every_error(tmp_path: Path) -> None:
    async with private_database(tmp_path) as url:
        env = server_env(
            url,
            free_port(),
            ML_ENABLED="true",
            RATE_LIMIT_ENABLED="true",
            RATE_LIMIT_AUTH_PER_ACCOUNT="3/minute",
            RATE_LIMIT_PER_USER="20/minute",
            JOBS_EMBEDDED_WORKER="true",  # on PostgreSQL too: the server runs the job itself
        )
        server: Server = await asyncio.to_thread(start_server, env, tmp_path / "server.log", timeout=90)
        try:
            document = tmp_path / "openapi.json"
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                document.write_bytes((await http.get("/openapi.json")).content)
            client_path = await asyncio.to_thread(_generated_client, tmp_path, document)
            (tmp_path / "driver.py").write_text(DRIVER)
            python = generator_venv() / "bin" / "python"
            driven = await asyncio.to_thread(
                _run,
                [str(python), str(tmp_path / "driver.py"), server.base_url],
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(client_path)},
            )
        finally:
            server.stop()
    seen = json.loads(driven.stdout.strip().splitlines()[-1])
    assert sorted(seen) == ["403", "404", "409", "422", "429"]
    assert seen["422"]["errors"] == [{"field": "title", "message": "String should have at least 1 character"}]
    assert "unhandled_error" not in server.log_path.read_text()
