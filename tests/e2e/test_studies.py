"""A study through the whole service: HTTP → broker → worker (top-up, trials) → HTTP."""

from typing import Any

from tests.e2e.service import Service
from tests.timing import wait_for


def test_a_2x3_grid_runs_six_distinct_trials_and_reports_the_best(service: Service) -> None:
    base: dict[str, Any] = {
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 2, "batch_size": 128, "seed": 0},
        "checkpoints": {"keep_top_k": 1},
    }
    body = {
        "name": "digits-grid",
        "base": base,
        "space": {
            "optimizer.lr": {"choice": [0.01, 0.001]},
            "model.hidden": {"choice": [[8], [16], [32]]},
        },
        "algorithm": "grid",
        "max_trials": 10,
        "parallelism": 2,
    }
    answer = service.http.post("/v1/studies", json=body)
    assert answer.status_code == 201, answer.text
    study_id = answer.json()["id"]
    assert answer.json()["grid_size"] == 6

    def ended() -> dict[str, Any] | None:
        study = service.http.get(f"/v1/studies/{study_id}").json()
        return study if study["status"] != "running" else None

    def state() -> str:
        return str(service.http.get(f"/v1/studies/{study_id}").json())

    study = wait_for(f"study {study_id} to complete", ended, 180, detail=state)
    assert study["status"] == "completed"
    assert study["trials"]["total"] == 6 and study["trials"]["succeeded"] == 6
    trials = service.http.get(f"/v1/studies/{study_id}/trials", params={"sort": "objective"})
    items = trials.json()["items"]
    assert sorted(t["number"] for t in items) == [0, 1, 2, 3, 4, 5]
    points = {(t["params"]["optimizer.lr"], tuple(t["params"]["model.hidden"])) for t in items}
    assert points == {(lr, h) for lr in (0.01, 0.001) for h in ((8,), (16,), (32,))}
    values = [t["value"] for t in items]
    assert values == sorted(values)  # best first
    best = study["best"]
    assert best["value"] == min(values) and best["job_id"] == items[0]["job_id"]
    assert best["checkpoint_id"] is not None
    assert study["epochs"] == {"trained": 12, "without_pruning": 12, "saved": 0}
    # Each trial is an ordinary job carrying its study and parameters.
    job = service.job(best["job_id"])
    assert job["study_id"] == study_id and job["params"] == best["params"]
    assert job["spec"]["optimizer"]["lr"] == best["params"]["optimizer.lr"]
    assert job["best"]["value"] == best["value"]
