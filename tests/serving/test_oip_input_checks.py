"""Issue 11, finding 4: Open Inference Protocol inputs are checked against what they declare.

Before the fix `UINT8` 300 and `INT8` -200 were accepted (and predicted on), a 1-D shape was read
as one row, and nested data under a flat shape was flattened whatever its nesting. Each is now the
protocol's 400 `{"error": "..."}` naming the input; nothing answers 500.

Issue 21, finding 7: a shape of `["1", "4"]` was read as [1, 4], an input of any name (`"x"`) was
taken for the model's, and an output asked for twice came back twice. Each is now the protocol's
422 naming the field (`inputs.0.shape.0`, `inputs.0.name`, `outputs`).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.serving.conftest import login

pytestmark = pytest.mark.asyncio(loop_scope="module")

INFER = "/v2/models/iris/infer"
ROW = [5.1, 3.5, 1.4, 0.2]


def _tensor(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}


async def _infer(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post(INFER, json=body, headers=await login(client, "oip-checks@example.com"))


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("UINT8", [300, 1, 2, 3], "outside UINT8 (0 to 255)"),
        ("UINT8", [-1, 1, 2, 3], "outside UINT8"),
        ("INT8", [-200, 1, 2, 3], "outside INT8 (-128 to 127)"),
        ("INT16", [40_000, 1, 2, 3], "outside INT16"),
        ("UINT16", [70_000, 1, 2, 3], "outside UINT16"),
        ("INT32", [2**31, 1, 2, 3], "outside INT32"),
        ("UINT32", [2**32, 1, 2, 3], "outside UINT32"),
        ("INT64", [2**63, 1, 2, 3], "outside INT64"),
        ("INT64", [-(2**63) - 1, 1, 2, 3], "outside INT64"),
        ("UINT64", [2**64, 1, 2, 3], "outside UINT64"),
        ("UINT64", [-1, 1, 2, 3], "outside UINT64"),
        ("INT8", [1.5, 1, 2, 3], "not whole numbers"),
        ("FP16", [70_000.0, 1, 2, 3], "outside FP16"),
    ],
)
async def test_values_outside_their_datatype_are_a_400(
    ml_client: httpx.AsyncClient, datatype: str, data: list[Any], fragment: str
) -> None:
    response = await _infer(ml_client, _tensor(datatype, [1, 4], data))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert "'input'" in response.json()["error"]
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("UINT8", [255, 0, 7, 1]),
        ("INT8", [-128, 127, 0, 1]),
        ("INT64", [2**63 - 1, -(2**63), 0, 1]),  # exact at the 64-bit bounds, past float64's 2**53
        ("UINT64", [2**64 - 1, 0, 0, 1]),
        ("INT32", [5.0, 3, 1, 0]),  # a whole number written as a float
    ],
)
async def test_values_at_the_edges_of_their_datatype_are_accepted(
    ml_client: httpx.AsyncClient, datatype: str, data: list[Any]
) -> None:
    response = await _infer(ml_client, _tensor(datatype, [1, 4], data))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("shape", "data", "fragment"),
    [
        ([4], ROW, "shape [rows, 4]"),  # 1-D: the model takes rows
        ([1, 4, 1], ROW, "shape [rows, 4]"),
        ([0, 4], [], "shape [rows, 4]"),
        ([1, 4], [[5.1, 3.5], [1.4, 0.2]], "nested as [2, 2]"),  # nested, not as the shape
        ([1, 4], [5.1, [3.5, 1.4], 0.2], "mixes values and arrays"),  # nested under a flat shape
        ([1, 4], [[ROW]], "an array of 1 where its shape needs 4"),
        ([1, 4], [[[5.1], [3.5], [1.4], [0.2]]], "nested deeper than its shape"),
        ([2, 4], [ROW, [1.0, 2.0, 3.0]], "array of 3 where its shape needs 4"),  # ragged
        ([2, 4], ROW, "has 4 values; shape [2, 4] needs 8"),
        ([1, 4], [*ROW, 1.0], "has 5 values"),
        ([2, 4], [ROW], "values nested as [1, 4]"),
    ],
)
async def test_shape_and_nesting_must_match(
    ml_client: httpx.AsyncClient, shape: list[int], data: list[Any], fragment: str
) -> None:
    response = await _infer(ml_client, _tensor("FP32", shape, data))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"], response.json()


@pytest.mark.parametrize(
    ("shape", "data"),
    [([1, 4], ROW), ([1, 4], [ROW]), ([2, 4], [*ROW, *ROW]), ([2, 4], [ROW, ROW])],
)
async def test_flat_or_nested_as_the_shape_is_accepted(
    ml_client: httpx.AsyncClient, shape: list[int], data: list[Any]
) -> None:
    response = await _infer(ml_client, _tensor("FP32", shape, data))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"][0] == shape[0]


@pytest.mark.parametrize(
    "data",
    [
        [None, 1, 2, 3],
        [True, 1, 2, 3],
        ["3", 1, 2, 3],
        [{"a": 1}, 1, 2, 3],
        [10**400, 1, 2, 3],
        [[1, 2, 3, "x"]],
    ],
)
async def test_values_that_are_no_numbers_are_refused_not_a_500(
    ml_client: httpx.AsyncClient, data: list[Any]
) -> None:
    response = await _infer(ml_client, _tensor("INT8", [1, 4], data))
    assert response.status_code in (400, 422), response.text
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("shape", [["1", "4"], [1, "4"], [True, 4]])
async def test_a_shape_of_the_wrong_type_is_a_422_naming_it(
    ml_client: httpx.AsyncClient, shape: list[Any]
) -> None:
    response = await _infer(ml_client, _tensor("FP32", shape, ROW))
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    assert "inputs.0.shape." in response.json()["error"]


@pytest.mark.parametrize("name", ["x", "INPUT", "input-0", "features", ""])
@pytest.mark.parametrize("path", [INFER, "/v2/models/iris/versions/1.0.0/infer"])
async def test_an_input_the_model_does_not_name_is_a_422(
    ml_client: httpx.AsyncClient, name: str, path: str
) -> None:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    response = await ml_client.post(path, json=body, headers=await login(ml_client, "oip-checks@example.com"))
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    assert "inputs.0.name: must be 'input'" in response.json()["error"]


async def test_the_input_the_metadata_names_is_the_one_taken(ml_client: httpx.AsyncClient) -> None:
    """What tritonclient's users do: read the input's name from the model's metadata, send that."""
    headers = await login(ml_client, "oip-checks@example.com")
    metadata = await ml_client.get("/v2/models/iris", headers=headers)
    [advertised] = metadata.json()["inputs"]
    body = {"inputs": [{"name": advertised["name"], "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    response = await ml_client.post(INFER, json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["setosa"]


@pytest.mark.parametrize(
    "outputs",
    [
        [{"name": "label"}, {"name": "label"}],
        [{"name": "probabilities"}, {"name": "label"}, {"name": "probabilities"}],
    ],
)
async def test_an_output_asked_for_twice_is_a_422_naming_outputs(
    ml_client: httpx.AsyncClient, outputs: list[dict[str, str]]
) -> None:
    response = await _infer(ml_client, {**_tensor("FP32", [1, 4], ROW), "outputs": outputs})
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    assert "outputs: " in response.json()["error"]
    assert "at most once" in response.json()["error"]


async def test_outputs_asked_for_once_each_come_back_in_that_order(ml_client: httpx.AsyncClient) -> None:
    outputs = [{"name": "probabilities"}, {"name": "label"}]
    response = await _infer(ml_client, {**_tensor("FP32", [1, 4], ROW), "outputs": outputs})
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities", "label"]
