"""/api/v1/jobs in one process with the embedded worker (SQLite's default): submit, poll,
download in each format, per-row errors, malformed uploads, limits, other users' jobs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import httpx
import pytest

from app.repositories.jobs import JobRepository
from tests.conftest import Headers, LogLines, assert_problem
from tests.jobs.conftest import FEATURES, iris_csv, submit_csv, wait_for


async def test_a_csv_job_runs_to_the_end_and_its_results_download_in_each_format(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await submit_csv(client, user_headers, iris_csv(120))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["input_format"] == "csv"
    done = await wait_for(client, user_headers, job["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["rows_done"] == done["rows_total"] == 120
    assert done["version"] == "1.0.0"

    as_csv = await client.get(f"/api/v1/jobs/{job['id']}/results", headers=user_headers)
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [int(r["row"]) for r in rows] == list(range(120))
    assert all(r["label"] in {"setosa", "versicolor", "virginica"} for r in rows)

    as_jsonl = await client.get(
        f"/api/v1/jobs/{job['id']}/results", headers={**user_headers, "Accept": "application/x-ndjson"}
    )
    assert as_jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in as_jsonl.text.splitlines()]
    assert [line["row"] for line in lines] == list(range(120))
    assert [line["label"] for line in lines] == [r["label"] for r in rows]

    as_parquet = await client.get(
        f"/api/v1/jobs/{job['id']}/results",
        headers={**user_headers, "Accept": "application/vnd.apache.parquet"},
    )
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(as_parquet.content))
    assert table.column("row").to_pylist() == list(range(120))
    assert table.column("label").to_pylist() == [r["label"] for r in rows]

    # As plain bytes, the input's format (what generated clients read a binary answer as).
    as_bytes = await client.get(
        f"/api/v1/jobs/{job['id']}/results", headers={**user_headers, "Accept": "application/octet-stream"}
    )
    assert as_bytes.headers["content-type"] == "application/octet-stream"
    assert as_bytes.content == as_csv.content

    # The same answers as /predict gives for these rows.
    first = [float(v) for v in iris_csv(1).decode().splitlines()[1].split(",")]
    online = await client.post("/api/v1/models/iris/predict", json={"rows": [first]}, headers=user_headers)
    assert online.json()["predictions"][0]["prediction"] == rows[0]["label"]


async def test_a_row_that_cannot_be_scored_gets_its_error_and_the_rest_are_scored(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    data = iris_csv(60, bad={3: "5.1,abc,1.4,0.2", 41: "5.1,3.5,1.4"})
    job = (await submit_csv(client, user_headers, data)).json()
    done = await wait_for(client, user_headers, job["id"], "succeeded", "failed")
    assert done["state"] == "succeeded"
    assert done["rows_done"] == 60
    assert done["rows_failed"] == 2
    response = await client.get(
        f"/api/v1/jobs/{job['id']}/results", headers={**user_headers, "Accept": "application/x-ndjson"}
    )
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [row["row"] for row in rows] == list(range(60))
    assert "sepal_width" in rows[3]["error"]
    assert "label" not in rows[3]
    assert rows[41]["error"]
    assert "label" not in rows[41]
    assert all("label" in row for i, row in enumerate(rows) if i not in {3, 41})


async def test_a_json_body_job_runs_and_answers_in_json_lines(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], dict(zip(FEATURES, [6.7, 3.0, 5.2, 2.3], strict=True))]
    response = await client.post("/api/v1/jobs", json={"model": "iris", "rows": rows}, headers=user_headers)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["input_format"] == "jsonl"
    await wait_for(client, user_headers, job["id"], "succeeded")
    results = await client.get(f"/api/v1/jobs/{job['id']}/results", headers=user_headers)
    labels = [json.loads(line)["label"] for line in results.text.splitlines()]
    assert labels == ["setosa", "virginica"]


async def test_malformed_submissions_are_4xx_problems_naming_the_field(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    unknown_type = await client.post(
        "/api/v1/jobs",
        params={"model": "iris"},
        content=b"a,b\n1,2\n",
        headers={**user_headers, "Content-Type": "image/png"},
    )
    assert assert_problem(unknown_type, 415)["errors"][0]["field"] == "file"
    lacking = await submit_csv(client, user_headers, b"sepal_length,sepal_width,petal_length\n1,2,3\n")
    body = assert_problem(lacking, 422)
    assert body["errors"][0]["field"] == "file"
    assert "petal_width" in body["detail"]
    empty = await submit_csv(client, user_headers, b"")
    assert assert_problem(empty, 422)["errors"][0]["field"] == "file"
    not_parquet = await client.post(
        "/api/v1/jobs",
        params={"model": "iris"},
        content=b"this is not parquet at all",
        headers={**user_headers, "Content-Type": "application/vnd.apache.parquet"},
    )
    assert assert_problem(not_parquet, 422)["errors"][0]["field"] == "file"
    no_model = await client.post(
        "/api/v1/jobs", content=iris_csv(2), headers={**user_headers, "Content-Type": "text/csv"}
    )
    assert assert_problem(no_model, 422)["errors"][0]["field"] == "model"
    unknown_model = await submit_csv(client, user_headers, iris_csv(2), model="nope")
    assert assert_problem(unknown_model, 422)["errors"][0]["field"] == "model"
    unknown_version = await submit_csv(client, user_headers, iris_csv(2), version="9.9.9")
    assert assert_problem(unknown_version, 422)["errors"][0]["field"] == "version"
    bad_json = await client.post("/api/v1/jobs", json={"model": "iris", "rows": "nope"}, headers=user_headers)
    assert assert_problem(bad_json, 422)["errors"][0]["field"].startswith("rows")
    # Nothing of the refused uploads is left behind.
    listed = await client.get("/api/v1/jobs", headers=user_headers)
    assert listed.json()["items"] == []


async def test_a_file_sent_as_a_form_runs_as_the_same_file_sent_as_the_body(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    """`curl -F model=iris -F file=@rows.csv`: the form's fields name the model, the file part's
    media type (or, when generic, its name) the format."""
    data = iris_csv(70, bad={5: "5.1,abc,1.4,0.2"})
    as_body = (await submit_csv(client, user_headers, data)).json()
    as_form = await client.post(
        "/api/v1/jobs",
        data={"model": "iris", "version": "default"},
        files={"file": ("rows.csv", data, "text/csv")},
        headers=user_headers,
    )
    assert as_form.status_code == 202, as_form.text
    assert as_form.json()["input_format"] == "csv"
    # A Parquet file, its part typed only as bytes: its name says the format; the model in the query.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: [5.1 + i / 10 for i in range(30)] for name in FEATURES})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    as_parquet = await client.post(
        "/api/v1/jobs",
        params={"model": "iris"},
        files={"file": ("rows.parquet", parquet.getvalue(), "application/octet-stream")},
        headers=user_headers,
    )
    assert as_parquet.status_code == 202, as_parquet.text
    assert as_parquet.json()["input_format"] == "parquet"

    results = []
    for job in (as_body, as_form.json(), as_parquet.json()):
        done = await wait_for(client, user_headers, job["id"], "succeeded", "failed")
        assert done["state"] == "succeeded", done
        answer = await client.get(
            f"/api/v1/jobs/{job['id']}/results", headers={**user_headers, "Accept": "application/x-ndjson"}
        )
        results.append([json.loads(line) for line in answer.text.splitlines()])
    assert results[1] == results[0]
    assert len(results[0]) == 70
    assert "error" in results[1][5]
    assert len(results[2]) == 30
    assert all("label" in row for row in results[2])


async def test_malformed_forms_are_4xx_problems_naming_the_field(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    data = iris_csv(3)
    boundary = "b0undary"

    def form(*parts: tuple[str, str | None, bytes], end: bool = True) -> bytes:
        body = b""
        for name, filename, content in parts:
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
        return body + (f"--{boundary}--\r\n".encode() if end else b"")

    async def post(
        body: bytes, content_type: str = f"multipart/form-data; boundary={boundary}", **params: str
    ):
        return await client.post(
            "/api/v1/jobs",
            params=params,
            content=body,
            headers={**user_headers, "Content-Type": content_type},
        )

    no_file = assert_problem(await post(form(("model", None, b"iris"))), 422)
    assert no_file["errors"][0]["field"] == "file"
    late = assert_problem(await post(form(("file", "rows.csv", data), ("model", None, b"iris"))), 422)
    assert late["errors"][0]["field"] == "model"
    assert "before" in late["detail"]
    twice = assert_problem(
        await post(form(("model", None, b"iris"), ("file", "r.csv", data)), model="heavy"), 422
    )
    assert twice["errors"][0]["field"] == "model"
    bad_name = assert_problem(await post(form(("model", None, b"../iris"), ("file", "r.csv", data))), 422)
    assert bad_name["errors"][0]["field"] == "model"
    two_files = assert_problem(
        await post(form(("model", None, b"iris"), ("file", "a.csv", data), ("file", "b.csv", data))), 422
    )
    assert two_files["errors"][0]["field"] == "file"
    unnamed_format = assert_problem(await post(form(("model", None, b"iris"), ("file", "rows", data))), 415)
    assert unnamed_format["errors"][0]["field"] == "file"
    cut_short = assert_problem(
        await post(form(("model", None, b"iris"), ("file", "r.csv", data), end=False)), 400
    )
    assert cut_short["errors"][0]["field"] == "file"
    assert "closing boundary" in cut_short["detail"]
    assert_problem(await post(b"--nope\r\n\r\n", content_type="multipart/form-data"), 400)
    garbage = assert_problem(await post(b"\x00" * 64 + form(("file", "r.csv", data))), 400)
    assert garbage["errors"][0]["field"] == "file"
    huge_field = assert_problem(await post(form(("model", None, b"x" * 5000), ("file", "r.csv", data))), 422)
    assert huge_field["errors"][0]["field"] == "model"
    # Nothing of the refused forms is left behind.
    assert (await client.get("/api/v1/jobs", headers=user_headers)).json()["items"] == []


async def test_another_users_job_is_not_found_and_admins_list_every_job(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers, admin_headers: Headers
) -> None:
    job = (await submit_csv(client, user_headers, iris_csv(5))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    for method, path in (
        ("GET", f"/api/v1/jobs/{job['id']}"),
        ("GET", f"/api/v1/jobs/{job['id']}/results"),
        ("POST", f"/api/v1/jobs/{job['id']}/cancel"),
        ("DELETE", f"/api/v1/jobs/{job['id']}"),
    ):
        assert_problem(await client.request(method, path, headers=other_headers), 404)
    assert (await client.get("/api/v1/jobs", headers=other_headers)).json()["items"] == []
    everyone = await client.get("/api/v1/jobs", params={"all_users": "true"}, headers=admin_headers)
    assert [j["id"] for j in everyone.json()["items"]] == [job["id"]]
    # Not an admin: `all_users` lists only the caller's own.
    assert (await client.get("/api/v1/jobs", params={"all_users": "true"}, headers=other_headers)).json()[
        "items"
    ] == []


async def test_a_finished_job_is_deleted_with_its_data_and_a_running_one_must_be_cancelled_first(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    job = (await submit_csv(client, user_headers, iris_csv(5))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    assert_problem(await client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=user_headers), 409)
    deleted = await client.delete(f"/api/v1/jobs/{job['id']}", headers=user_headers)
    assert deleted.status_code == 204
    assert_problem(await client.get(f"/api/v1/jobs/{job['id']}", headers=user_headers), 404)


async def test_results_are_refused_until_the_job_succeeds_and_in_a_format_not_offered(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    job = (await submit_csv(client, user_headers, iris_csv(5))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    refused = await client.get(
        f"/api/v1/jobs/{job['id']}/results", headers={**user_headers, "Accept": "application/xml"}
    )
    assert assert_problem(refused, 406)["errors"][0]["field"] == "Accept"


async def test_a_job_is_one_record_of_its_owners_history_and_every_log_line_of_its_work_names_it(
    client: httpx.AsyncClient, user_headers: Headers, log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = JobRepository.record_prediction

    async def slow_record(self: JobRepository, **values: Any) -> None:
        await asyncio.sleep(0.5)  # a slow write: the job must not read succeeded before it is done
        await record(self, **values)

    monkeypatch.setattr(JobRepository, "record_prediction", slow_record)
    job = (await submit_csv(client, user_headers, iris_csv(120))).json()
    await wait_for(client, user_headers, job["id"], "succeeded")
    history = (await client.get("/api/v1/predictions", headers=user_headers)).json()["items"]
    assert [(r["model"], r["version"], r["rows"], r["outcome"]) for r in history] == [
        ("iris", "1.0.0", 120, "ok")
    ]
    lines: list[dict[str, Any]] = []
    for _ in range(100):  # job_ended is logged just after the commit a client sees
        lines += [line for line in log_lines() if str(line.get("event", "")).startswith("job_")]
        if any(line["event"] == "job_ended" for line in lines):
            break
        await asyncio.sleep(0.05)
    assert any(line["event"] == "job_ended" for line in lines)
    assert all(line.get("job_id") == job["id"] for line in lines), lines
    exposition = (await client.get("/metrics")).text
    assert 'job_rows_total{model="iris"}' in exposition
    assert 'jobs{state="succeeded"}' in exposition


async def test_the_list_pages_by_cursor_and_filters_by_state(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    ids = [(await submit_csv(client, user_headers, iris_csv(3))).json()["id"] for _ in range(3)]
    for job_id in ids:
        await wait_for(client, user_headers, job_id, "succeeded")
    first = (await client.get("/api/v1/jobs", params={"limit": 2}, headers=user_headers)).json()
    assert [job["id"] for job in first["items"]] == ids[:2]
    rest = (
        await client.get(
            "/api/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=user_headers
        )
    ).json()
    assert [job["id"] for job in rest["items"]] == ids[2:]
    assert rest["next_cursor"] is None
    succeeded = await client.get("/api/v1/jobs", params={"state": "succeeded"}, headers=user_headers)
    assert len(succeeded.json()["items"]) == 3
    queued = await client.get("/api/v1/jobs", params={"state": "queued"}, headers=user_headers)
    assert queued.json()["items"] == []
    bad_state = await client.get("/api/v1/jobs", params={"state": "done"}, headers=user_headers)
    assert assert_problem(bad_state, 422)["errors"][0]["field"] == "state"
