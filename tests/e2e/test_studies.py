"""A study through the whole service: HTTP → broker → worker (top-up, trials) → HTTP."""

import csv
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from descent_client.client import DescentClient, DescentError
from tests.e2e.service import Service, running, start_embedded
from tests.e2e.test_clients import cli, token_of
from tests.e2e.test_worker_restart import training_pid, worker_pid
from tests.timing import scaled, wait_for


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


def test_the_client_and_cli_follow_a_study_to_its_end(
    embedded_service: Service, tmp_path: Path
) -> None:
    """`descent study submit --follow` prints a line as trials end and exits 0 once the study
    completed; show, trials (table and CSV) and the Python client agree with it."""
    service = embedded_service
    study = {
        "name": "iris-lr",
        "base": {
            "dataset": {"name": "iris", "seed": 0},
            "model": {"arch": "mlp", "hidden": [8]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 1, "batch_size": 32, "seed": 0},
            "checkpoints": {"keep_top_k": 1},
        },
        "space": {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}},
        "algorithm": "random",
        "max_trials": 3,
        "parallelism": 2,
        "seed": 3,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    done = cli(service, "study", "submit", str(path), "--follow", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr + service.tail()
    study_id = done.stdout.splitlines()[0]
    assert f"iris-lr ({study_id}) completed: 3 trials (3 succeeded)" in done.stdout
    lines = done.stderr.splitlines()
    assert lines[-1].startswith(f"study {study_id}: 3/3 done (0 pruned, 0 failed), 0 running")
    assert "; best val_loss " in lines[-1]

    with DescentClient(service.url, token_of(service)) as client:
        record = client.study(study_id)
        assert record["status"] == "completed" and record["trials"]["succeeded"] == 3
        assert study_id in [s["id"] for s in client.studies()]
        best_first = client.trials(study_id, sort="objective")
        assert [t["value"] for t in best_first] == sorted(t["value"] for t in best_first)
        assert best_first[0]["job_id"] == record["best"]["job_id"]
        assert client.wait_study(study_id)["status"] == "completed"
        with pytest.raises(DescentError) as refused:
            client.importance(study_id)  # 3 trials: too few
        assert refused.value.status_code == 409
        again = client.submit_study(path)
        assert client.cancel_study(again["id"])["status"] == "cancelled"

    table = cli(service, "study", "trials", study_id, "--sort", "objective", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "#", "STATUS", "VALUE", "EPOCH", "EPOCHS", "optimizer.lr", "STOP", "JOB"
    ]  # fmt: skip
    assert table.stdout.splitlines()[1].split()[-1] == best_first[0]["job_id"]
    rows = list(csv.DictReader(io.StringIO(cli(service, "study", "trials", study_id, "--csv",
                                               cwd=tmp_path).stdout)))  # fmt: skip
    assert [float(r["value"]) for r in rows] == [
        t["value"] for t in sorted(best_first, key=lambda t: t["number"])
    ]
    shown = cli(service, "study", "show", study_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"best: trial {record['best']['number']} (job {record['best']['job_id']})" in (
        shown.stdout
    )
    assert "epochs: 3 trained, 3 without pruning (0 saved)" in shown.stdout
    cancelled = cli(service, "study", "cancel", study_id, cwd=tmp_path)
    assert cancelled.returncode == 1
    assert "error 409" in cancelled.stderr and "already completed" in cancelled.stderr


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of this module's own: its worker is killed."""
    yield from running(start_embedded(tmp_path_factory.mktemp("study-kill")))


def test_a_study_survives_its_worker_and_then_the_whole_service_killed(serve: Service) -> None:
    """SIGKILL the process training a trial (`descent serve` starts a worker again), then,
    while another trial trains, the whole service (API and worker) and start it again: no
    trial is lost or run twice (each trial one job, each epoch once), the killed trials
    resume, and the study completes with max_trials trials."""
    base = {
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.005},
        # Each trial trains two seconds (scaled), then ends a success: killed at epoch 2 (a
        # few tenths of a second in) it cannot have ended.
        "training": {
            "epochs": 10_000,
            "batch_size": 64,
            "seed": 0,
            "device": "cpu",
            "max_runtime_seconds": scaled(2),
        },
        "checkpoints": {"keep_top_k": 1, "min_interval_seconds": 0},  # each epoch's
    }
    body = {
        "name": "killed",
        "base": base,
        "space": {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-2]}},
        "algorithm": "random",
        "max_trials": 4,
        "parallelism": 2,
        "seed": 1,
    }
    worker = wait_for("a running worker", lambda: worker_pid(serve), 60, detail=serve.tail)
    answer = serve.http.post("/v1/studies", json=body)
    assert answer.status_code == 201, answer.text
    study_id = answer.json()["id"]

    def trial_past_epoch_2(but: str | None = None) -> dict[str, Any] | None:
        """A running trial past epoch 2 with a durable checkpoint (its row commits on the
        writer thread, after its epoch's metrics): killed now, it must resume from it."""
        for trial in serve.http.get(f"/v1/studies/{study_id}/trials").json()["items"]:
            if trial["status"] == "running" and trial["epochs"] >= 2 and trial["job_id"] != but:
                saved = serve.http.get(f"/v1/jobs/{trial['job_id']}/checkpoints").json()
                if saved["items"]:
                    return trial
        return None

    killed = wait_for("a trial past epoch 2", trial_past_epoch_2, 120, detail=serve.tail)
    os.kill(training_pid(worker), signal.SIGKILL)
    # Then the whole service, while another trial trains; started again on its data.
    second = wait_for("another trial past epoch 2",
                      lambda: trial_past_epoch_2(but=killed["job_id"]), 180,
                      detail=serve.tail)  # fmt: skip
    dead = serve.processes.pop()
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait()
    port = serve.url.rsplit(":", 1)[1]
    serve.start("serve-again", "-m", "descent", "serve", "--port", port)
    serve.wait_healthy()

    def ended() -> dict[str, Any] | None:
        study = serve.http.get(f"/v1/studies/{study_id}").json()
        return study if study["status"] != "running" else None

    study = wait_for("the study to complete", ended, 300, detail=serve.tail)
    assert study["status"] == "completed", study
    assert study["trials"]["total"] == 4 and study["trials"]["succeeded"] == 4, study
    items = serve.http.get(f"/v1/studies/{study_id}/trials").json()["items"]
    assert [t["number"] for t in items] == [0, 1, 2, 3]
    assert len({t["job_id"] for t in items}) == 4
    jobs = serve.http.get("/v1/jobs", params={"limit": 200}).json()["items"]
    assert sum(job.get("study_id") == study_id for job in jobs) == 4  # no trial made twice
    for trial in items:
        job = serve.job(trial["job_id"])
        epochs = [item["epoch"] for item in serve.metrics(trial["job_id"])]
        assert epochs == list(range(1, job["epoch"] + 1)), (trial["number"], epochs)
        twice = trial["job_id"] in (killed["job_id"], second["job_id"])
        assert job["attempt"] == (2 if twice else 1), job
    for trial in (killed, second):
        assert f"job {trial['job_id']} resumes after epoch" in serve.log_text()
