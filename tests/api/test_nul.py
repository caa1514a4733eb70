"""Hostile text and numbers answer the same 4xx on SQLite and PostgreSQL, never a 500.

PostgreSQL refuses U+0000 in text, and its epoch column is a 4-byte integer; SQLite has
neither limit. Every case runs on both databases (the ``client`` fixture).
"""

import base64

import pytest
from fastapi.testclient import TestClient

from store.models import JobStatus
from tests.api.builders import add_epochs, count_jobs, history, make_job, spec

NUL = "\x00"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("GET", "/v1/jobs/{id}/metrics"),
        ("GET", "/v1/jobs/{id}/events"),
        ("GET", "/v1/jobs/{id}/checkpoints"),
        ("GET", "/v1/jobs/{id}/checkpoints/best"),
        ("GET", "/v1/checkpoints/{id}"),
        ("GET", "/v1/datasets/{id}"),
        ("DELETE", "/v1/weights/{id}"),
    ],
)
def test_an_id_with_nul_in_the_path_is_404(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path.format(id="ab%00cd"))
    assert response.status_code == 404, response.text
    assert "detail" in response.json()


def test_a_query_value_with_nul_is_422_naming_it(client: TestClient) -> None:
    make_job()
    for params in ({"cursor": f"ab{NUL}cd"}, {"status": f"queued{NUL}"}):
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", *params]
        assert "NUL" in error["msg"]


def test_a_cursor_that_decodes_to_nul_is_422(client: TestClient) -> None:
    raw = f"2026-01-01T00:00:00+00:00|ab{NUL}cd".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = client.get("/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"name": f"digits{NUL}mlp"}, ["body", "name"]),
        ({"dataset": {"source": "upload", "id": f"ab{NUL}cd"}}, ["body", "dataset", "id"]),
        (
            {"backbone": {"from_job": f"ab{NUL}cd", "part": "encoder"}},
            ["body", "backbone", "from_job"],
        ),
        ({"dataset": {"name": "digits", f"se{NUL}ed": 1}}, ["body", "dataset", f"se{NUL}ed"]),
    ],
)
def test_a_spec_with_nul_is_422_naming_the_field(
    client: TestClient, changes: dict[str, object], loc: list[str]
) -> None:
    response = client.post("/v1/jobs", json=spec(**changes))
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [loc]
    assert count_jobs() == 0


def test_a_body_with_an_escaped_backslash_is_not_mistaken_for_nul(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=spec(name="a\\u0000b"))  # the six characters
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "a\\u0000b"


@pytest.mark.parametrize("field", ["name", "target"])
def test_an_upload_form_value_with_nul_is_422_naming_it(client: TestClient, field: str) -> None:
    data = {"name": "ok", "target": "y", field: f"bad{NUL}value"}
    response = client.post(
        "/v1/datasets", files={"file": ("d.csv", b"x,y\n1,0\n2,1\n3,0\n4,1\n")}, data=data
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_an_upload_file_name_with_nul_is_kept_without_it(client: TestClient) -> None:
    response = client.post(
        "/v1/datasets",
        files={"file": (f"d{NUL}.csv", b"x,y\n1,0\n2,1\n3,0\n4,1\n")},
        data={"target": "y"},
    )
    assert response.status_code in (201, 422), response.text
    assert NUL not in response.text


@pytest.mark.parametrize("after", [2**31 - 100, 2**31 - 1])
def test_a_metrics_cursor_near_the_epoch_range_end_is_an_empty_page(
    client: TestClient, after: int
) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(2))
    url = f"/v1/jobs/{job_id}/metrics"
    pages = ({"after": after}, {"after": after, "limit": 1000}, {"after": after, "max_points": 5})
    for params in pages:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        assert response.json() == {"items": [], "next": after, "complete": True}
    assert client.get(url, params={"after": 2**31}).status_code == 422


# Header bytes are read as latin-1: b"\xb2" is "²", a digit to str.isdigit() but not to int().
@pytest.mark.parametrize(
    "header", [b"\xb2:", b"1\xb9:", b"\xb3:running", b"99999999999:", b"2147483648:"]
)
def test_a_last_event_id_that_is_no_id_of_the_stream_is_422(
    client: TestClient, header: bytes
) -> None:
    job_id = make_job(status=JobStatus.RUNNING)
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": header})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def test_events_after_the_epoch_range_end_is_422_and_at_it_is_204(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(2))
    url = f"/v1/jobs/{job_id}/events"
    assert client.get(url, params={"after": 2**31}).status_code == 422
    last = client.get(url, headers={"Last-Event-ID": f"{2**31 - 1}:succeeded"})
    assert last.status_code == 204
