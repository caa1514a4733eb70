"""plot.png: a PNG of the asked size, for a job with epochs, without any, and 404 otherwise."""

from fastapi.testclient import TestClient

from store.models import JobStatus
from tests.api.builders import add_epochs, history, make_job


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_of_a_finished_job(sqlite_client: TestClient) -> None:
    job_id = make_job(
        status=JobStatus.SUCCEEDED,
        best_epoch=12,
        best_value=0.3,
        stop={"reason": "early_stopping", "rule": "patience", "epoch": 17, "detail": ""},
    )
    add_epochs(job_id, history(17))
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (1000, 450)
    small = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png", params={"width": 640, "height": 300})
    assert png_size(small.content) == (640, 300)


def test_plot_of_a_job_with_no_epoch_yet(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.QUEUED)
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png")
    assert response.status_code == 200
    assert png_size(response.content) == (1000, 450)


def test_plot_of_an_unknown_job_and_bad_sizes(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/v1/jobs/nope/plot.png").status_code == 404
    job_id = make_job()
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png", params={"width": 10})
    assert response.status_code == 422
