"""Studies through HTTP: what is refused at submit (422 naming the path), the record of a
study, and owners. No worker runs here: the studies' trials are made by the worker (see
tests/worker/test_studies.py and tests/e2e/test_studies.py)."""

import math
import random
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from store.db import session_scope
from store.models import Job, Study, StudyTrial
from tests.api.builders import add_epochs, bearer, make_job, make_user, spec


def study(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "digits-lr",
        "base": spec(optimizer={"name": "sgd", "lr": 0.01}),
        "space": {
            "optimizer.lr": {"choice": [0.1, 0.01]},
            "model.hidden": {"choice": [[8], [16], [32]]},
        },
        "algorithm": "grid",
        "max_trials": 6,
        "parallelism": 2,
    }
    body.update(changes)
    return body


def rows() -> tuple[int | None, int | None]:
    with session_scope() as session:
        return (
            session.scalar(select(func.count()).select_from(Study)),
            session.scalar(select(func.count()).select_from(Job)),
        )


def refused(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    before = rows()
    answer = client.post("/v1/studies", json=body)
    assert answer.status_code == 422, answer.text
    assert rows() == before  # nothing made
    return answer.json()["detail"][0]


def test_a_grid_study_is_stored_with_its_size(client: TestClient) -> None:
    answer = client.post("/v1/studies", json=study())
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["grid_size"] == 6 and body["status"] == "running"
    assert body["objective"] == {"metric": "val_loss", "mode": "min"}
    assert body["trials"]["total"] == 0 and body["best"] is None
    assert body["epochs"] == {"trained": 0, "without_pruning": 0, "saved": 0}
    assert client.get(f"/v1/studies/{body['id']}").json()["id"] == body["id"]
    listed = client.get("/v1/studies").json()
    assert listed["items"][0]["id"] == body["id"]  # newest first
    assert client.get(f"/v1/studies/{body['id']}/trials").json() == {"items": [], "next": None}
    cancelled = client.post(f"/v1/studies/{body['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"


def test_the_objective_defaults_to_the_base_early_stopping_monitor(client: TestClient) -> None:
    base = spec(early_stopping={"monitor": "val_accuracy", "patience": 2})
    answer = client.post("/v1/studies", json=study(base=base))
    assert answer.status_code == 201, answer.text
    assert answer.json()["objective"] == {"metric": "val_accuracy", "mode": "max"}


def test_a_path_that_is_not_a_spec_field_is_refused_naming_it(client: TestClient) -> None:
    error = refused(client, study(space={"optimizer.lrate": {"choice": [0.1]}}))
    assert error["loc"] == ["body", "space", "optimizer.lrate"]
    assert "not a field of the job spec" in error["msg"]
    error = refused(client, study(space={"optimizer.lr": {"between": [0.1, 1]}}))
    assert error["loc"] == ["body", "space", "optimizer.lr"]
    error = refused(client, study(space={"optimizer.lr": {"loguniform": [0, 1]}}))
    assert error["loc"] == ["body", "space", "optimizer.lr", "loguniform"]


def test_a_grid_over_max_trials_is_refused_with_its_size(client: TestClient) -> None:
    space = {
        "optimizer.lr": {"choice": [0.1, 0.01, 0.001, 0.0001]},
        "training.batch_size": {"int": [16, 64], "step": 16},
    }
    error = refused(client, study(space=space, max_trials=15))
    assert error["loc"] == ["body", "max_trials"]
    assert "the grid has 16 points" in error["msg"]
    error = refused(client, study(space={"optimizer.lr": {"uniform": [0.01, 0.1]}}))
    assert error["loc"] == ["body", "space", "optimizer.lr"]
    assert "grid search needs choice or int" in error["msg"]


def test_every_option_and_range_end_must_make_a_valid_job_spec(client: TestClient) -> None:
    # The upper end of a range: dropout must be below 1.
    error = refused(
        client, study(algorithm="random", space={"model.dropout": {"uniform": [0.0, 1.5]}})
    )
    assert error["loc"] == ["body", "space", "model.dropout"]
    assert "model.dropout = 1.5" in error["msg"] and "model.dropout" in error["msg"]
    # A conditional distribution inside a choice of objects.
    space = {
        "optimizer": {
            "choice": [{"name": "sgd", "momentum": {"uniform": [0.5, 1.5]}}, {"name": "adam"}]
        }
    }
    error = refused(client, study(algorithm="tpe", space=space))
    assert error["loc"] == ["body", "space", "optimizer.momentum"]
    # A grid point: batch norm with batch size 1.
    base = spec(model={"arch": "mlp", "hidden": [16], "norm": "batch"})
    error = refused(client, study(base=base, space={"training.batch_size": {"choice": [32, 1]}}))
    assert error["loc"][:3] == ["body", "space", "training.batch_size"]
    assert "training.batch_size = 1" in error["msg"]


def test_the_base_spec_is_validated_like_a_job(client: TestClient) -> None:
    error = refused(client, study(base=spec(optimizer={"name": "sgd", "lr": -1})))
    assert error["loc"] == ["body", "base", "optimizer", "lr"]


def test_another_users_study_is_not_found(client: TestClient) -> None:
    mine = client.post("/v1/studies", json=study()).json()["id"]
    other = bearer(make_user("someone-else"))
    assert client.get(f"/v1/studies/{mine}", headers=other).status_code == 404
    assert client.get(f"/v1/studies/{mine}/trials", headers=other).status_code == 404
    assert client.post(f"/v1/studies/{mine}/cancel", headers=other).status_code == 404
    assert client.get("/v1/studies", headers=other).json()["items"] == []
    assert client.get(f"/v1/studies/{mine}").status_code == 200


def ended_trial(
    study_id: str, number: int, params: dict[str, Any], raw: dict[str, Any], value: float
) -> None:
    job_id = make_job(status="succeeded", study_id=study_id, params=params, epoch=1)
    add_epochs(job_id, [{"val_loss": value}])
    with session_scope() as session:
        session.add(
            StudyTrial(study_id=study_id, number=number, job_id=job_id, params=params, raw=raw)
        )


def test_importance_ranks_first_the_parameter_that_decides_the_objective(
    client: TestClient,
) -> None:
    """val_loss is set by the learning rate alone (the hidden sizes are noise): the learning
    rate's importance is the largest, by far; before 8 trials ended the answer is 409."""
    body = study(
        algorithm="random",
        max_trials=20,
        space={
            "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
            "model.hidden": {"choice": [[8], [16], [32]]},
            "training.batch_size": {"int": [16, 64], "step": 16},
        },
    )
    study_id = client.post("/v1/studies", json=body).json()["id"]
    url = f"/v1/studies/{study_id}/importance"
    rng = random.Random(0)
    for number in range(16):
        lr = 10 ** rng.uniform(-4, -1)
        hidden, batch = rng.randrange(3), rng.choice([16, 32, 48, 64])
        raw = {"optimizer.lr": lr, "model.hidden": hidden, "training.batch_size": batch}
        params = {**raw, "model.hidden": [[8], [16], [32]][hidden]}
        ended_trial(study_id, number, params, raw, value=abs(math.log10(lr) + 2.5))
        if number == 6:
            answer = client.get(url)
            assert answer.status_code == 409, answer.text
            assert "at least 8 trials" in answer.json()["detail"]
            assert "7 have so far" in answer.json()["detail"]
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["trials"] == 16 and found["evaluator"] == "fanova"
    importance = found["params"]
    assert set(importance) == {"optimizer.lr", "model.hidden", "training.batch_size"}
    assert list(importance)[0] == "optimizer.lr"
    assert importance["optimizer.lr"] > 0.8, importance
    assert abs(sum(importance.values()) - 1) < 1e-3
    other = bearer(make_user("someone-else"))
    assert client.get(url, headers=other).status_code == 404


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "studies").glob("*.yaml"))


def test_every_example_study_is_accepted(client: TestClient) -> None:
    """examples/studies/*.yaml as `descent study submit` posts them: each is valid (every
    option and range end makes a valid job spec), the grid has its size."""
    assert len(EXAMPLES) >= 4
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        answer = client.post("/v1/studies", json=body)
        assert answer.status_code == 201, (path.name, answer.text)
        made = answer.json()
        assert made["name"] == path.stem
        if body["algorithm"] == "grid":
            assert made["grid_size"] == made["max_trials"] == 12
        client.post(f"/v1/studies/{made['id']}/cancel")


def test_a_pruned_trial_is_shown_pruned_and_counts_in_the_epochs_saved(client: TestClient) -> None:
    study_id = client.post("/v1/studies", json=study()).json()["id"]
    ended_trial(study_id, 0, {"optimizer.lr": 0.1}, {"optimizer.lr": 0}, value=0.4)
    with session_scope() as session:
        session.get_one(Job, session.scalar(select(StudyTrial.job_id))).epoch = 3
    stop = {"reason": "pruned", "rule": "asha", "epoch": 1, "detail": "not in the top 1/3"}
    job_id = make_job(status="succeeded", study_id=study_id, params={}, epoch=1, stop=stop)
    add_epochs(job_id, [{"val_loss": 9.5}])
    with session_scope() as session:
        session.add(StudyTrial(study_id=study_id, number=1, job_id=job_id,
                               params={"optimizer.lr": 0.01}, raw={"optimizer.lr": 1}))  # fmt: skip
    record = client.get(f"/v1/studies/{study_id}").json()
    assert record["trials"]["pruned"] == 1 and record["trials"]["succeeded"] == 1
    # 3 + 1 trained; the pruned trial would have trained its spec's 3 epochs.
    assert record["epochs"] == {"trained": 4, "without_pruning": 6, "saved": 2}
    assert record["best"]["number"] == 0 and record["best"]["value"] == 0.4
    pruned = client.get(f"/v1/studies/{study_id}/trials", params={"status": "pruned"}).json()
    assert [t["number"] for t in pruned["items"]] == [1]
    assert pruned["items"][0]["stop"]["detail"] == "not in the top 1/3"
