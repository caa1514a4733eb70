"""The application as a whole: health, docs, error shapes, body limits, no torch."""

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings
from tests.api.builders import SPEC, bearer, count_jobs
from tests.conftest import migrated

ROOT = Path(__file__).resolve().parents[2]


def test_healthz_checks_the_database(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_database_down_answers_503_naming_no_host(
    configure: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from api.main import create_app

    settings = configure(
        DESCENT_DATA_DIR=str(tmp_path / "data"),
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",  # nothing listens on port 1
    )
    # A token cannot be checked without the database: 503 too, not 401.
    with (
        TestClient(create_app(settings), headers=bearer("dsc_any")) as client,
        caplog.at_level(logging.WARNING, logger="api"),
    ):
        for path in ("/healthz", "/v1/jobs", "/v1/jobs/abc/metrics"):
            response = client.get(path)
            assert response.status_code == 503, path
            # The reason is generic, even to an unauthenticated caller of /healthz...
            assert response.json() == {"detail": "database unavailable"}, path
            assert "127.0.0.1" not in response.text and "Traceback" not in response.text
    # ... and the driver's own words, with the host and port, are in the log.
    logged = [r.getMessage() for r in caplog.records if r.name == "api"]
    assert any("127.0.0.1" in m and "database unavailable" in m for m in logged), logged


def test_api_never_imports_torch(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    env["DESCENT_DATA_DIR"] = str(tmp_path)
    code = (
        "import sys, api.main\n"
        "assert api.main.app.routes\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_docs_and_openapi_name_the_contract(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/docs").status_code == 200
    paths = sqlite_client.get("/openapi.json").json()["paths"]
    assert {
        "/healthz",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/metrics",
        "/v1/jobs/{job_id}/checkpoints",
        "/v1/jobs/{job_id}/checkpoints/best",
        "/v1/checkpoints/{checkpoint_id}",
    } <= paths.keys()
    # The submit body is documented as the job spec itself.
    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/JobSpec")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("GET", "/v1/jobs/{id}/metrics"),
        ("GET", "/v1/jobs/{id}/checkpoints"),
        ("GET", "/v1/jobs/{id}/checkpoints/best"),
        ("GET", "/v1/checkpoints/{id}"),
    ],
)
def test_unknown_ids_are_404_with_a_reason(
    sqlite_client: TestClient, method: str, path: str
) -> None:
    response = sqlite_client.request(method, path.format(id="0123456789abcdef"))
    assert response.status_code == 404
    assert "0123456789abcdef" in response.json()["detail"]
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/jobs", "GET, HEAD, OPTIONS, POST"),
        ("PUT", "/v1/jobs/abc", "GET, HEAD, OPTIONS"),
        ("GET", "/v1/jobs/abc/cancel", "OPTIONS, POST"),
        ("POST", "/v1/datasets/abc", "DELETE, GET, HEAD, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
    ],
)
def test_405_names_every_method_of_the_path_in_allow(
    sqlite_client: TestClient, method: str, path: str, allow: str
) -> None:
    response = sqlite_client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


def test_openapi_documents_the_page_and_upload_limits(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app

    settings = migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            DESCENT_METRICS_PAGE_LIMIT="500",
            DESCENT_MAX_UPLOAD_BYTES="7000000",
        )
    )
    with TestClient(create_app(settings)) as client:
        for _ in range(2):  # the document is amended once, not on each request
            paths = client.get("/openapi.json").json()["paths"]
            page = paths["/v1/jobs/{job_id}/metrics"]["get"]["parameters"]
            (limit,) = [p for p in page if p["name"] == "limit"]
            assert limit["schema"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 500}
            for path in ("/v1/datasets", "/v1/weights"):
                text = paths[path]["post"]["description"]
                assert text.count("7,000,000 bytes") == 1, text
                assert "one file part" in text


def test_unknown_route_is_json_404(sqlite_client: TestClient) -> None:
    response = sqlite_client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.fixture
def failing_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from api.jobs import service

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "get_job", boom)
    yield


def test_unexpected_error_is_500_json_without_traceback(
    sqlite_client: TestClient, failing_service: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="api"):
        response = sqlite_client.get("/v1/jobs/abc")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "secret internals" not in response.text
    # ... but it is logged, with its traceback, for whoever runs the service.
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_oversized_body_is_413_by_its_declared_length(sqlite_client: TestClient) -> None:
    big = b'{"dataset": {"name": "digits"}, "name": "' + b"x" * 1_000_001 + b'"}'
    response = sqlite_client.post(
        "/v1/jobs", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "1000000 bytes" in response.json()["detail"]
    assert count_jobs() == 0


def test_oversized_body_is_413_as_it_streams(sqlite_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"dataset": {"name": "digits"}, "name": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = sqlite_client.post(
        "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert count_jobs() == 0


def test_a_body_at_the_limit_passes(sqlite_client: TestClient) -> None:
    """1,000,000 bytes exactly (the spec padded with JSON whitespace), declared or chunked."""
    body = json.dumps(SPEC).encode()
    body += b" " * (1_000_000 - len(body))
    headers = {"content-type": "application/json"}
    assert len(body) == 1_000_000
    response = sqlite_client.post("/v1/jobs", content=body, headers=headers)
    assert response.status_code == 201, response.text
    chunked = sqlite_client.post(
        "/v1/jobs", content=iter([body[:500_000], body[500_000:]]), headers=headers
    )
    assert chunked.status_code == 201, chunked.text
    assert count_jobs() == 2
    # One byte more is refused.
    assert sqlite_client.post("/v1/jobs", content=body + b" ", headers=headers).status_code == 413
