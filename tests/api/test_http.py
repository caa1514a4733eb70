"""HTTP semantics real clients rely on: HEAD, OPTIONS, CORS, gzip, conditional and range
requests on downloads (RFC 9110), every error as JSON."""

import hashlib
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings
from store.models import JobStatus
from tests.api.builders import add_checkpoint, add_epochs, bearer, history, make_job, make_user
from tests.conftest import migrated

CONTENT = bytes(range(256)) * 40  # 10,240 bytes
ETAG = f'"{hashlib.sha256(CONTENT).hexdigest()}"'


@pytest.fixture
def download(sqlite_client: TestClient) -> str:
    """The URL of a checkpoint holding CONTENT."""
    job_id = make_job(status=JobStatus.SUCCEEDED)
    checkpoint_id, _ = add_checkpoint(job_id, 1, content=CONTENT, best=True)
    return f"/v1/checkpoints/{checkpoint_id}"


def test_head_answers_where_get_does_with_the_same_headers(
    sqlite_client: TestClient, download: str
) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    for url in ("/healthz", "/v1/jobs", f"/v1/jobs/{job_id}", download, "/", "/docs",
                "/openapi.json", f"/v1/jobs/{job_id}/events"):  # fmt: skip
        got, head = sqlite_client.get(url), sqlite_client.head(url)
        assert head.status_code == got.status_code == 200, url
        assert head.content == b"", url
        for name in ("content-type", "content-length", "etag", "content-disposition"):
            assert head.headers.get(name) == got.headers.get(name), (url, name)
    assert sqlite_client.head(download).headers["content-length"] == str(len(CONTENT))
    assert sqlite_client.head("/v1/jobs/0123456789abcdef").status_code == 404


def test_options_names_every_method_of_the_path(sqlite_client: TestClient) -> None:
    response = sqlite_client.options("/v1/jobs")
    assert response.status_code == 204
    assert response.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert sqlite_client.options("/v1/jobs/abc/cancel").headers["allow"] == "OPTIONS, POST"
    assert sqlite_client.options("/v1/nothing-here").status_code == 404


def test_no_cors_headers_unless_origins_are_allowed(sqlite_client: TestClient) -> None:
    origin = {"Origin": "https://lab.example.org"}
    response = sqlite_client.get("/v1/jobs", headers=origin)
    assert response.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)


def test_allowed_origins_get_cors_answers_and_preflights(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app

    settings = migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            DESCENT_CORS_ORIGINS="https://lab.example.org, http://localhost:8888",
        )
    )
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        preflight = client.options(
            "/v1/jobs",
            headers={
                "Origin": "http://localhost:8888",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:8888"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        answer = client.get("/v1/jobs", headers={"Origin": "https://lab.example.org"})
        assert answer.headers["access-control-allow-origin"] == "https://lab.example.org"
        assert "etag" in answer.headers["access-control-expose-headers"].lower()
        # An error answer carries them too, so the page can read its {"detail": ...}.
        missing = client.get("/v1/jobs/abc", headers={"Origin": "https://lab.example.org"})
        assert missing.status_code == 404
        assert missing.headers["access-control-allow-origin"] == "https://lab.example.org"
        other = client.get("/v1/jobs", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers


def test_large_json_is_gzipped_downloads_and_streams_never(
    sqlite_client: TestClient, download: str
) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(300))
    page = sqlite_client.get(f"/v1/jobs/{job_id}/metrics", headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip"
    wire = int(page.headers["content-length"])
    assert wire * 3 < len(page.content), (wire, len(page.content))  # decoded by httpx
    small = sqlite_client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    for url in (download, f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/plot.png"):
        response = sqlite_client.get(url, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200, url
        assert "content-encoding" not in response.headers, url
    assert sqlite_client.get(download).content == CONTENT


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": ETAG}, 304),
        ({"If-None-Match": f'"other", W/{ETAG}'}, 304),  # weak comparison, any of a list
        ({"If-None-Match": '"other"'}, 200),
        ({"If-None-Match": ETAG[:-2] + '"'}, 200),  # a prefix of the tag is not the tag
        ({"If-Match": ETAG}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Match": '"other"'}, 412),
        ({"If-Match": f"W/{ETAG}"}, 412),  # If-Match compares strongly
        ({"If-Modified-Since": formatdate(4_000_000_000, usegmt=True)}, 304),
        ({"If-Modified-Since": formatdate(0, usegmt=True)}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        # If-None-Match wins over If-Modified-Since (RFC 9110, 13.2.2).
        ({"If-None-Match": '"other"', "If-Modified-Since": formatdate(4e9, usegmt=True)}, 200),
        ({"If-Unmodified-Since": formatdate(0, usegmt=True)}, 412),
    ],
)
def test_conditional_downloads_follow_rfc_9110(
    sqlite_client: TestClient, download: str, headers: dict[str, str], status: int
) -> None:
    response = sqlite_client.get(download, headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.content == CONTENT
    elif status == 304:
        assert response.content == b""
        assert response.headers["etag"] == ETAG
        assert response.headers["last-modified"]
    else:
        assert "detail" in response.json()


def test_last_modified_round_trips_to_304(sqlite_client: TestClient, download: str) -> None:
    whole = sqlite_client.get(download)
    since = {"If-Modified-Since": whole.headers["last-modified"]}
    assert sqlite_client.get(download, headers=since).status_code == 304
    assert sqlite_client.head(download, headers=since).status_code == 304


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        ({"Range": "items=0-1"}, 200, CONTENT),  # an unknown unit is ignored
        ({"Range": "bytes=abc"}, 200, CONTENT),  # no valid range in it: ignored
        ({"Range": "bytes=20-10"}, 200, CONTENT),
        ({"Range": "bytes=0-9", "If-Range": '"stale"'}, 200, CONTENT),  # changed: all of it
        ({"Range": "bytes=0-9", "If-Range": f"W/{ETAG}"}, 200, CONTENT),
        ({"Range": "bytes=0-9", "If-Range": ETAG}, 206, CONTENT[:10]),
    ],
)
def test_range_requests_follow_rfc_9110(
    sqlite_client: TestClient, download: str, headers: dict[str, str], status: int, body: bytes
) -> None:
    response = sqlite_client.get(download, headers=headers)
    assert response.status_code == status
    assert response.content == body


def test_an_unsatisfiable_range_is_416_json(sqlite_client: TestClient, download: str) -> None:
    response = sqlite_client.get(download, headers={"Range": f"bytes={len(CONTENT)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert str(len(CONTENT)) in response.json()["detail"]
