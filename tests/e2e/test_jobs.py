"""One training job through the whole service: HTTP → broker → worker → database → HTTP."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.service import Service
from tests.timing import scaled, wait_for


def digits_mlp(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "digits-mlp",
        "task": "classification",
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "mlp", "hidden": [32]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 4, "batch_size": 64, "seed": 0},
        # Every epoch's checkpoint (its epochs are shorter than the default interval).
        "checkpoints": {"keep_top_k": 2, "min_interval_seconds": 0},
    }
    for key, value in overrides.items():
        spec[key] = value if not isinstance(value, dict) else {**spec.get(key, {}), **value}
    return spec


def test_job_trains_and_its_best_checkpoint_reproduces_val_loss(
    service: Service, tmp_path: Path
) -> None:
    job = service.submit(digits_mlp())
    assert job["status"] == "queued"
    assert job["spec"]["dataset"]["name"] == "digits"

    # Poll the way a client does: each poll asks only for epochs after the last one seen.
    seen: list[dict[str, Any]] = []

    def poll() -> bool:
        # The job first: once it reads as ended, every epoch it wrote is committed already.
        state = service.job(job["id"])
        after = seen[-1]["epoch"] if seen else 0
        page = service.http.get(f"/v1/jobs/{job['id']}/metrics", params={"after": after}).json()
        seen.extend(page["items"])
        done = state["status"] in ("succeeded", "failed", "cancelled")
        return done and (seen[-1]["epoch"] if seen else 0) == state["epoch"]

    wait_for(f"job {job['id']} to end with every epoch polled", poll, 90,
             detail=lambda: f"epochs seen: {[item['epoch'] for item in seen]}")  # fmt: skip
    final = service.job(job["id"])
    assert final["status"] == "succeeded", final
    assert final["stop"]["reason"] == "max_epochs"
    assert final["started_at"] and final["finished_at"]
    assert [item["epoch"] for item in seen] == [1, 2, 3, 4]
    for item in seen:
        assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds"} <= item[
            "metrics"
        ].keys()
    val_losses = {item["epoch"]: item["metrics"]["val_loss"] for item in seen}
    best_epoch = min(val_losses, key=lambda e: val_losses[e])
    assert final["best"]["epoch"] == best_epoch
    assert final["best"]["value"] == pytest.approx(val_losses[best_epoch], abs=1e-9)
    assert final["last"]["epoch"] == 4
    assert final["last"]["value"] == pytest.approx(val_losses[4], abs=1e-9)
    assert val_losses[4] < val_losses[1]  # it learned

    # Retention: the best keep_top_k (2) plus the last, never the best or the last deleted.
    # (Which epochs were written depends on the machine's speed: a checkpoint superseded
    # while it waits for the writer is skipped. tests/worker checks the ranking itself.)
    checkpoints = service.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    epochs = {c["epoch"] for c in checkpoints}
    assert {best_epoch, 4} <= epochs and len(epochs) <= 3, epochs
    best_row = next(c for c in checkpoints if c["is_best"])
    assert best_row["epoch"] == best_epoch
    assert next(c for c in checkpoints if c["is_last"])["epoch"] == 4

    response = service.http.get(f"/v1/jobs/{job['id']}/checkpoints/best")
    assert response.status_code == 200
    digest = hashlib.sha256(response.content).hexdigest()
    assert digest == best_row["sha256"] == response.headers["etag"].strip('"')
    assert ".safetensors" in response.headers["content-disposition"]
    path = tmp_path / "best.safetensors"
    path.write_bytes(response.content)

    from core import evaluate, load_model
    from core.spec import JobSpec

    spec = JobSpec.model_validate(final["spec"])
    model = load_model(spec, path)
    metrics = evaluate(spec, model)
    assert metrics["val_loss"] == pytest.approx(final["best"]["value"], abs=1e-5)


def test_early_stopping_stops_an_overfitting_job_and_keeps_the_best(
    embedded_service: Service,
) -> None:
    # A wide MLP on a small noisy training set: validation loss turns up quickly.
    spec = digits_mlp(
        name="overfit",
        dataset={"name": "moons", "n_samples": 80, "noise": 0.35, "val_fraction": 0.5, "seed": 1},
        model={"arch": "mlp", "hidden": [256, 256]},
        optimizer={"name": "adam", "lr": 0.02},
        training={"epochs": 300, "batch_size": 8, "seed": 0},
        early_stopping={"monitor": "val_loss", "mode": "min", "patience": 5, "min_delta": 0.0},
    )
    job = embedded_service.submit(spec)
    final = embedded_service.wait(job["id"])
    assert final["status"] == "succeeded", final
    stop = final["stop"]
    assert stop["reason"] == "early_stopping" and stop["rule"] == "patience"
    history = embedded_service.metrics(job["id"])
    val = [item["metrics"]["val_loss"] for item in history]
    best_epoch = 1 + min(range(len(val)), key=val.__getitem__)
    assert final["best"]["epoch"] == best_epoch < final["last"]["epoch"] == stop["epoch"]
    assert stop["epoch"] == best_epoch + 5  # patience ran out five epochs after the best
    assert final["best"]["value"] == pytest.approx(min(val), abs=1e-9)
    assert final["last"]["value"] > final["best"]["value"]
    assert len(history) == stop["epoch"] < 300
    # The fit diagnosis reads the same history: validation loss rose while training fell.
    diagnosis = final["diagnosis"]
    assert diagnosis["final"] and diagnosis["verdict"] == "overfitting", diagnosis
    assert diagnosis["remedies"]
    assert len(diagnosis["gap"]) == len(history)
    gap = [item["metrics"]["val_loss"] - item["metrics"]["train_loss"] for item in history]
    assert diagnosis["gap"] == pytest.approx(gap, abs=1e-6)


def long_job(name: str) -> dict[str, Any]:
    return digits_mlp(name=name, training={"epochs": 10000, "batch_size": 16, "seed": 0})


def test_cancel_stops_a_running_job_and_keeps_its_history(service: Service) -> None:
    job = service.submit(long_job("cancel-running"))
    service.wait(job["id"], until=lambda j: j["status"] == "running" and j["epoch"] >= 2)
    response = service.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    final = service.wait(job["id"], timeout=10, what="to stop once cancelled")
    assert final["status"] == "cancelled"
    assert final["stop"]["reason"] == "cancelled"
    history = service.metrics(job["id"])
    assert len(history) >= 2 and history[-1]["epoch"] <= final["epoch"] + 1
    assert service.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert service.http.get(f"/v1/jobs/{job['id']}/checkpoints/best").status_code == 200
    # A finished job cannot be cancelled again into another state.
    assert service.http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_cancel_of_a_queued_job_means_it_never_starts(embedded_service: Service) -> None:
    # One worker: while it runs the first job, the second one waits in the queue.
    running = embedded_service.submit(long_job("blocker"))
    queued = embedded_service.submit(digits_mlp(name="never-runs"))
    embedded_service.wait(running["id"], until=lambda j: j["status"] == "running")
    response = embedded_service.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    embedded_service.http.post(f"/v1/jobs/{running['id']}/cancel")
    embedded_service.wait(running["id"])
    # The worker now receives the cancelled job's task, and must skip it.
    skipped = f"job {queued['id']} has already cancelled; this delivery does nothing"
    wait_for("the worker to skip the cancelled job's delivery",
             lambda: skipped in embedded_service.log_text(), 30,
             detail=embedded_service.tail)  # fmt: skip
    final = embedded_service.job(queued["id"])
    assert final["status"] == "cancelled" and final["started_at"] is None and final["epoch"] == 0
    assert embedded_service.metrics(queued["id"]) == []


def test_cuda_job_goes_to_the_gpu_queue_and_fails_clearly_without_one(
    embedded_service: Service,
) -> None:
    job = embedded_service.submit(digits_mlp(name="on-gpu", training={"device": "cuda"}))
    assert job["queue"] == "gpu"
    final = embedded_service.wait(job["id"])
    import torch

    if torch.cuda.is_available():
        assert final["status"] == "succeeded"
    else:
        assert final["status"] == "failed"
        assert "cuda" in final["error"].lower()


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"optimizer": {"name": "adagrad-typo", "lr": 0.1}}, "optimizer"),
        ({"optimizer": {"name": "adam", "lr": -1}}, "lr"),
        ({"dataset": {"name": "no-such-dataset"}}, "dataset"),
    ],
)
def test_bad_spec_is_refused_and_changes_nothing(
    embedded_service: Service, patch: dict[str, Any], field: str
) -> None:
    before = embedded_service.http.get("/v1/jobs", params={"limit": 200}).json()["items"]
    response = embedded_service.http.post("/v1/jobs", json={**digits_mlp(), **patch})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(field in ".".join(map(str, err["loc"])) for err in detail), detail
    after = embedded_service.http.get("/v1/jobs", params={"limit": 200}).json()["items"]
    assert len(after) == len(before)
    assert embedded_service.http.get("/v1/jobs/0123456789abcdef").status_code == 404


def test_submit_follow_exits_non_zero_when_the_job_fails(
    embedded_service: Service, tmp_path: Path
) -> None:
    """`descent submit --follow` as a script runs it: the exit status says the job failed."""
    spec = tmp_path / "diverges.json"
    spec.write_text(
        json.dumps(
            {
                "name": "diverges",
                "dataset": {"name": "iris", "seed": 0},
                "model": {"arch": "mlp", "hidden": [8]},
                "optimizer": {"name": "sgd", "lr": 100.0, "momentum": 0.9},
                "training": {"epochs": 20, "batch_size": 16, "seed": 0, "device": "cpu"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    env["DESCENT_URL"] = embedded_service.url
    env["DESCENT_TOKEN"] = embedded_service.http.headers["Authorization"].removeprefix("Bearer ")
    env["DESCENT_DATA_DIR"] = str(tmp_path / "no-data")
    run = subprocess.run(
        [sys.executable, "-m", "descent", "submit", str(spec), "--follow"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=scaled(120),
    )  # fmt: skip
    job_id = run.stdout.splitlines()[0]
    job = embedded_service.job(job_id)
    assert job["status"] == "failed", job
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "failed" in run.stdout and "lower the learning rate" in run.stdout + run.stderr
