"""Per-epoch metrics: paging, polling, non-finite values, downsampling."""

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.metrics.downsample import downsample, key_metrics
from store.db import session_scope
from store.models import Job, JobStatus, Metric
from tests.api.builders import add_epochs, history, make_job


def strict(response: Any) -> dict[str, Any]:
    """The body as JSON that has no NaN or Infinity in it."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.text, parse_constant=pytest.fail)


def test_pages_follow_the_cursor_in_epoch_order(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(250))
    url = f"/v1/jobs/{job_id}/metrics"

    first = strict(client.get(url))
    assert [r["epoch"] for r in first["items"]] == list(range(1, 101))
    assert first["next"] == 100
    assert set(first["items"][0]["metrics"]) == {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_seconds",
    }
    second = strict(client.get(url, params={"after": 100}))
    assert [r["epoch"] for r in second["items"]] == list(range(101, 201))
    assert first["complete"] is False and second["complete"] is False
    last = strict(client.get(url, params={"after": second["next"]}))
    assert [r["epoch"] for r in last["items"]] == list(range(201, 251))
    assert last["next"] == 250 and last["complete"] is True
    assert strict(client.get(url, params={"after": 250})) == {
        "items": [],
        "next": 250,
        "complete": True,
    }

    everything = strict(client.get(url, params={"limit": 1000}))
    assert len(everything["items"]) == 250
    assert everything["next"] == 250 and everything["complete"] is True
    exact = strict(client.get(url, params={"limit": 50, "after": 200}))
    assert exact["next"] == 250 and exact["complete"] is True  # epoch 250 is the last


def test_values_are_the_stored_ones(client: TestClient) -> None:
    job_id = make_job()
    add_epochs(job_id, [{"train_loss": 0.5, "val_loss": 0.25}, {"train_loss": 0.125}])
    page = strict(client.get(f"/v1/jobs/{job_id}/metrics"))
    assert page["items"] == [
        {"epoch": 1, "metrics": {"train_loss": 0.5, "val_loss": 0.25}},
        {"epoch": 2, "metrics": {"train_loss": 0.125}},
    ]


def test_only_per_epoch_rows_are_served(client: TestClient) -> None:
    job_id = make_job()
    add_epochs(job_id, [{"val_loss": 0.5}])
    with session_scope() as session:
        session.add(Metric(job_id=job_id, epoch=1, step=7, name="batch_loss", value=1.0))
    page = strict(client.get(f"/v1/jobs/{job_id}/metrics"))
    assert page["items"] == [{"epoch": 1, "metrics": {"val_loss": 0.5}}]


def test_limits_are_validated(sqlite_client: TestClient) -> None:
    job_id = make_job()
    url = f"/v1/jobs/{job_id}/metrics"
    for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"max_points": 1}):
        response = sqlite_client.get(url, params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][0] == "query"


def test_polling_after_the_last_epoch_shows_each_new_one(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.RUNNING)
    url = f"/v1/jobs/{job_id}/metrics"
    empty = {"items": [], "next": 0, "complete": False}
    assert strict(client.get(url, params={"after": 0})) == empty
    assert strict(client.get(url)) == empty
    seen: list[int] = []
    after = 0
    for epoch in range(1, 5):
        add_epochs(job_id, [{"val_loss": 1.0 / epoch}], first=epoch)
        page = strict(client.get(url, params={"after": after}))
        seen += [r["epoch"] for r in page["items"]]
        assert seen == list(range(1, epoch + 1))
        assert page["next"] == epoch and page["complete"] is False
        # Following `next` with nothing new yet keeps the place: no epoch comes twice.
        again = strict(client.get(url, params={"after": page["next"]}))
        assert again == {"items": [], "next": epoch, "complete": False}
        after = again["next"]
        # The whole history, asked the same way twice, follows the job too.
        assert len(strict(client.get(url))["items"]) == epoch
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.SUCCEEDED
    assert [r["epoch"] for r in strict(client.get(url))["items"]] == [1, 2, 3, 4]
    # The job has ended: the page holding its last epoch, or after it, says so.
    assert strict(client.get(url))["complete"] is True
    assert strict(client.get(url, params={"after": 4})) == {
        "items": [],
        "next": 4,
        "complete": True,
    }
    assert strict(client.get(url, params={"limit": 2}))["complete"] is False


def test_non_finite_values_are_null(client: TestClient) -> None:
    job_id = make_job()
    add_epochs(
        job_id,
        [
            {"train_loss": 1.0, "val_loss": float("nan")},
            {"train_loss": float("inf"), "val_loss": float("-inf")},
            {"train_loss": None, "val_loss": 0.5},
        ],
    )
    page = strict(client.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 2}))
    assert [r["epoch"] for r in page["items"]] == [1, 3]
    page = strict(client.get(f"/v1/jobs/{job_id}/metrics"))
    assert page["items"] == [
        {"epoch": 1, "metrics": {"train_loss": 1.0, "val_loss": None}},
        {"epoch": 2, "metrics": {"train_loss": None, "val_loss": None}},
        {"epoch": 3, "metrics": {"train_loss": None, "val_loss": 0.5}},
    ]


@pytest.mark.parametrize("max_points", [2, 3, 10, 50, 333])
def test_max_points_keeps_extremes_and_ends(client: TestClient, max_points: int) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    full = history(1000, seed=max_points)
    add_epochs(job_id, full)
    page = strict(client.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": max_points}))
    epochs = [r["epoch"] for r in page["items"]]
    assert len(epochs) <= max_points
    assert epochs == sorted(set(epochs))
    assert epochs[0] == 1 and epochs[-1] == 1000
    assert page["next"] == 1000 and page["complete"] is True
    if max_points >= 6:  # room for the first, the last and both extremes of val_loss
        for name in ("val_loss", "train_loss") if max_points >= 10 else ("val_loss",):
            values = [r["metrics"][name] for r in page["items"]]
            assert min(values) == min(h[name] for h in full), name
            assert max(values) == max(h[name] for h in full), name
    if max_points >= 50:
        assert len(epochs) >= max_points // 2  # it uses its budget


def test_max_points_downsamples_one_page(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(300))
    url = f"/v1/jobs/{job_id}/metrics"
    page = strict(client.get(url, params={"max_points": 20, "limit": 100, "after": 100}))
    epochs = [r["epoch"] for r in page["items"]]
    assert len(epochs) <= 20 and epochs[0] == 101 and epochs[-1] == 200
    assert page["next"] == 200 and page["complete"] is False


def _random_history(rng: random.Random, n: int, names: list[str]) -> list[Any]:
    return [
        (e, {name: (None if rng.random() < 0.05 else rng.gauss(0, 1)) for name in names})
        for e in range(1, n + 1)
    ]


def test_downsample_properties() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 400)
        names = rng.sample(["train_loss", "val_loss", "val_accuracy", "lr", "aux_loss"], 3)
        records = _random_history(rng, n, names)
        max_points = rng.randint(2, 120)
        keys = key_metrics(records, "val_accuracy")
        out = downsample(records, max_points, keys)
        assert len(out) <= max(max_points, 0) and len(out) == len(set(e for e, _ in out))
        assert [e for e, _ in out] == sorted(e for e, _ in out)
        if n <= max_points:
            assert out == records
            continue
        assert out[0] == records[0] and out[-1] == records[-1]
        if max_points >= 2 + 2 * len(keys):
            for key in keys:
                values = [m[key] for _, m in records if m.get(key) is not None]
                kept = [m[key] for _, m in out if m.get(key) is not None]
                if values:
                    assert min(kept) == min(values) and max(kept) == max(values)


def test_key_metrics_prefer_the_monitor_then_losses() -> None:
    records = [(1, {"lr": 0.1, "val_accuracy": 0.5, "val_loss": 1.0, "train_loss": 2.0})]
    assert key_metrics(records, "val_accuracy") == ["val_accuracy", "train_loss", "val_loss"]
    assert key_metrics([(1, {"lr": 0.1, "score": 1.0})], "val_loss") == ["lr", "score"]


def test_a_finished_page_follows_its_job_after_the_recheck(client: TestClient) -> None:
    client.app.state.metrics_cache.final_recheck = 0.0  # type: ignore[attr-defined]
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(3))
    url = f"/v1/jobs/{job_id}/metrics"
    assert len(strict(client.get(url))["items"]) == 3
    assert len(strict(client.get(url))["items"]) == 3  # the cached page
    # Re-run (a later feature) or removed: the next check of the row notices.
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.RUNNING
    add_epochs(job_id, history(1), first=4)
    assert len(strict(client.get(url))["items"]) == 4
    with session_scope() as session:
        session.query(Metric).filter_by(job_id=job_id).delete()
        session.query(Job).filter_by(id=job_id).delete()
    assert client.get(url).status_code == 404


def test_metrics_of_another_owner_are_invisible(client: TestClient) -> None:
    job_id = make_job(owner="someone-else", status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(2))
    assert client.get(f"/v1/jobs/{job_id}/metrics").status_code == 404


def test_complete_follows_the_job_ending_without_a_new_epoch(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.RUNNING)
    add_epochs(job_id, history(3))
    url = f"/v1/jobs/{job_id}/metrics"
    assert strict(client.get(url))["complete"] is False  # now in the page cache
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.FAILED  # the same epochs, a final status
    page = strict(client.get(url))
    assert [r["epoch"] for r in page["items"]] == [1, 2, 3]
    assert page["next"] == 3 and page["complete"] is True
