"""POST /v1/jobs answers 422 naming the field for a value of the wrong JSON type or out of
its consumer's range: never a 500, never a job that fails at run time."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.builders import spec


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (spec(model={"init": {}}), ["body", "model", "init"]),
        (spec(model={"init": ["kaiming"]}), ["body", "model", "init"]),
        (spec(training={"seed": 10**30}), ["body", "training", "seed"]),
        (spec(dataset={"name": "digits", "seed": -1}), ["body", "dataset", "seed"]),
        (spec(dataset={"name": "digits", "seed": 2**64}), ["body", "dataset", "seed"]),
        (spec(model={"init": "constant", "init_value": 1e308}), ["body", "model", "init_value"]),
    ],
)
def test_a_spec_value_of_the_wrong_type_or_range_is_422_naming_the_field(
    sqlite_client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = sqlite_client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [e["loc"][: len(loc)] for e in detail] == [loc], detail
    assert detail[0]["msg"]
