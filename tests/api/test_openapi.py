"""The OpenAPI document has what a generated client needs: typed binary answers, declared
headers, typed error bodies, typed job fields, readable operation ids, described events."""

import warnings
from typing import Any

import pytest
from fastapi.testclient import TestClient

BINARY = {"type": "string", "format": "binary"}


@pytest.fixture
def document(sqlite_client: TestClient) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate operation ids
        return sqlite_client.get("/openapi.json").json()


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: {**op, "path": path, "method": method}
        for path, item in document["paths"].items()
        for method, op in item.items()
    }


def test_operation_ids_are_readable_and_stable(document: dict[str, Any]) -> None:
    ops = operations(document)
    expected = {
        "jobs-submit": ("post", "/v1/jobs"),
        "jobs-list": ("get", "/v1/jobs"),
        "jobs-get": ("get", "/v1/jobs/{job_id}"),
        "jobs-cancel": ("post", "/v1/jobs/{job_id}/cancel"),
        "metrics-list": ("get", "/v1/jobs/{job_id}/metrics"),
        "checkpoints-download-best": ("get", "/v1/jobs/{job_id}/checkpoints/best"),
        "checkpoints-download": ("get", "/v1/checkpoints/{checkpoint_id}"),
        "events-stream": ("get", "/v1/jobs/{job_id}/events"),
        "plots-get": ("get", "/v1/jobs/{job_id}/plot.png"),
        "monitoring-metrics": ("get", "/metrics"),
        "health-check": ("get", "/healthz"),
    }
    for op_id, (method, path) in expected.items():
        assert (ops[op_id]["method"], ops[op_id]["path"]) == (method, path)
    # HEAD is implied by GET: no operation of its own.
    assert not any(op["method"] == "head" for op in ops.values())


def test_binary_answers_are_binary_strings(document: dict[str, Any]) -> None:
    ops = operations(document)
    for op_id, media in (
        ("checkpoints-download-best", "application/octet-stream"),
        ("checkpoints-download", "application/octet-stream"),
        ("plots-get", "image/png"),
        ("monitoring-metrics", "text/plain"),
    ):
        content = ops[op_id]["responses"]["200"]["content"]
        assert content[media]["schema"] == BINARY, op_id
    partial = ops["checkpoints-download"]["responses"]["206"]["content"]
    assert partial["application/octet-stream"]["schema"] == BINARY


def test_request_and_response_headers_are_declared(document: dict[str, Any]) -> None:
    ops = operations(document)
    download = ops["checkpoints-download-best"]
    headers = {p["name"] for p in download["parameters"] if p["in"] == "header"}
    assert {"Range", "If-None-Match", "If-Range", "If-Match", "If-Modified-Since"} <= headers
    assert set(download["responses"]["200"]["headers"]) >= {
        "ETag", "Content-Disposition", "X-Checksum-SHA256", "Last-Modified",
    }  # fmt: skip
    assert "Content-Range" in download["responses"]["206"]["headers"]
    assert "Content-Range" in download["responses"]["416"]["headers"]
    events = {p["name"] for p in ops["events-stream"]["parameters"] if p["in"] == "header"}
    assert "last-event-id" in {name.lower() for name in events}


def test_every_error_has_the_detail_model_and_only_where_sent(
    document: dict[str, Any],
) -> None:
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert detail["required"] == ["detail"]
    for op_id, op in operations(document).items():
        responses = op["responses"]
        assert "500" in responses, op_id
        for status, response in responses.items():
            if status.startswith(("4", "5")) and status != "422":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (op_id, status)
        assert ("401" in responses) == ("security" in op), op_id
    ops = operations(document)
    assert "401" not in ops["health-check"]["responses"]
    assert "401" not in ops["monitoring-metrics"]["responses"]
    assert "503" not in ops["monitoring-metrics"]["responses"]
    assert "503" in ops["health-check"]["responses"]
    assert {"410", "412", "416"} <= ops["checkpoints-download"]["responses"].keys()
    assert "413" in ops["jobs-submit"]["responses"] and "413" not in ops["jobs-get"]["responses"]


def test_job_fields_are_typed(document: dict[str, Any]) -> None:
    job = document["components"]["schemas"]["JobPublic"]["properties"]
    assert job["spec"] == {"$ref": "#/components/schemas/JobSpec"}
    refs = {name: str(job[name]) for name in ("stop", "diagnosis")}
    assert "StopPublic" in refs["stop"] and "DiagnosisPublic" in refs["diagnosis"]
    diagnosis = document["components"]["schemas"]["DiagnosisPublic"]
    assert {"verdict", "summary", "evidence", "remedies"} <= set(diagnosis["required"])
    stop = document["components"]["schemas"]["StopPublic"]
    assert {"reason", "epoch", "detail"} <= set(stop["required"])


def test_event_payloads_are_described(document: dict[str, Any]) -> None:
    stream = operations(document)["events-stream"]["responses"]["200"]["content"]
    media = stream["text/event-stream"]
    assert "retry:" in media["schema"]["description"]
    assert media["x-events"]["status"] == {"$ref": "#/components/schemas/JobPublic"}
    assert media["x-events"]["epoch"] == {"$ref": "#/components/schemas/EpochMetrics"}
    assert "EpochMetrics" in document["components"]["schemas"]


def test_typed_job_fields_serve_stored_rows(sqlite_client: TestClient) -> None:
    from store.models import JobStatus
    from tests.api.builders import make_job

    stop = {"reason": "early_stopping", "rule": "patience", "epoch": 7, "detail": "no gain"}
    job_id = make_job(status=JobStatus.SUCCEEDED, stop=stop, diagnosis={"verdict": "good_fit",
        "summary": "fine", "evidence": {"epochs": 7}, "remedies": []})  # fmt: skip
    job = sqlite_client.get(f"/v1/jobs/{job_id}").json()
    assert job["stop"]["rule"] == "patience" and job["diagnosis"]["verdict"] == "good_fit"
    assert job["spec"]["model"]["arch"] == "mlp"
