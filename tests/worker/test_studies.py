"""Studies in the worker against a real database: trials proposed from the recorded ones,
made once, and pruned as their epochs are committed (the runner without Celery)."""

from typing import Any

from sqlalchemy import func, select, update

from descent.settings import Settings
from store.db import session_scope
from store.models import Job, Study, StudyTrial
from tests.api.builders import make_user
from worker import studies
from worker.runner import run_job

BASE = {
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 3, "batch_size": 16, "seed": 0},
    "checkpoints": {"keep_top_k": 1},
}


def make_study(space: dict[str, Any], base: dict[str, Any] = BASE, **options: Any) -> str:
    spec = {
        "base": base,
        "space": space,
        "objective": {"metric": "val_loss", "mode": "min"},
        "algorithm": "random",
        "max_trials": 4,
        "parallelism": 2,
        "seed": 0,
        "pruner": {"name": "none", "min_epochs": 1, "reduction_factor": 3, "min_trials": 5},
    }
    spec.update(options)
    grid = None
    if spec["algorithm"] == "grid":
        from core import space as search

        grid = search.grid_size(search.parse(space))
    with session_scope() as session:
        study = Study(owner="local", name="s", spec=spec, queue="cpu", grid_size=grid)
        session.add(study)
        session.flush()
        return study.id


def trials(study_id: str) -> list[StudyTrial]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(StudyTrial)
                .where(StudyTrial.study_id == study_id)
                .order_by(StudyTrial.number)
            )
        )


SPACE = {
    "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
    "model.hidden": {"choice": [[8], [16, 8]]},
    "optimizer": {
        "choice": [{"name": "sgd", "momentum": {"uniform": [0.5, 0.99]}}, {"name": "adam"}]
    },
}


def test_a_seeded_random_study_proposes_the_same_trials_again(sqlite_env: Settings) -> None:
    make_user()
    sent: list[tuple[str, str]] = []

    def send(job_id: str, queue: str) -> None:
        sent.append((job_id, queue))

    base = {**BASE, "optimizer": {"name": "sgd", "lr": 0.05}}  # a choice merges into it
    first, again, other = (make_study(SPACE, base, seed=seed) for seed in (7, 7, 8))
    for study_id in (first, again, other):
        assert len(studies.top_up(study_id, send, sqlite_env)) == 2  # parallelism 2
    # Nothing has ended: asking again makes no trial (no number is made twice).
    assert studies.top_up(first, send, sqlite_env) == []
    assert len(sent) == 6 and {queue for _, queue in sent} == {"cpu"}
    made = [[t.params for t in trials(s)] for s in (first, again, other)]
    assert made[0] == made[1]
    assert made[0] != made[2]
    assert len({repr(p) for p in made[0]}) == 2
    # The conditional space: momentum only with sgd, and each trial's job has its params.
    with session_scope() as session:
        for trial in trials(first):
            job = session.get_one(Job, trial.job_id)
            assert job.status == "queued", job.error
            assert job.study_id == first and job.params == trial.params
            sgd = trial.params["optimizer"] == {"name": "sgd"}
            assert ("optimizer.momentum" in trial.params) == sgd
            assert job.spec["optimizer"]["name"] == trial.params["optimizer"]["name"]
            assert job.spec["optimizer"]["lr"] == trial.params["optimizer.lr"]
            assert job.spec["model"]["hidden"] == trial.params["model.hidden"]


def test_a_hopeless_trial_is_pruned_at_its_first_rung(sqlite_env: Settings) -> None:
    """ASHA with reduction factor 2 from epoch 1: learning rate 10 (validation loss in
    the millions after one epoch) stops after epoch 1; the good trial trains to the end."""
    make_user()
    study_id = make_study(
        {"optimizer.lr": {"choice": [0.05, 10.0]}},
        algorithm="grid",
        max_trials=2,
        parallelism=1,
        pruner={"name": "asha", "min_epochs": 1, "reduction_factor": 2, "min_trials": 5},
    )
    sent: list[str] = []

    def send(job_id: str, queue: str) -> None:
        sent.append(job_id)

    studies.top_up(study_id, send, sqlite_env)
    assert len(sent) == 1  # parallelism 1
    assert run_job(sent[0], worker="w1", settings=sqlite_env) == "succeeded"
    studies.after_job(sent[0], send, sqlite_env)
    assert len(sent) == 2
    assert run_job(sent[1], worker="w1", settings=sqlite_env) == "succeeded"
    studies.after_job(sent[1], send, sqlite_env)
    with session_scope() as session:
        good, hopeless = (session.get_one(Job, job_id) for job_id in sent)
        assert good.params == {"optimizer.lr": 0.05} and good.epoch == 3
        assert good.stop["reason"] != "pruned"
        assert hopeless.params == {"optimizer.lr": 10.0}
        assert hopeless.status == "succeeded" and hopeless.epoch == 1
        assert hopeless.best_checkpoint_id is not None
        stop = hopeless.stop
        assert stop["reason"] == "pruned" and stop["rule"] == "asha" and stop["epoch"] == 1
        assert stop["value"] > 1000 * stop["threshold"] and stop["trials"] == 2
        assert "not in the top 1/2 of the 2 trials at rung 0" in stop["detail"]
        study = session.get_one(Study, study_id)
        assert study.status == "completed"  # both trials ended, none left to make
        assert session.scalar(select(func.count()).select_from(StudyTrial)) == 2


def test_median_pruning_names_the_median_and_a_restarted_trial_stays_pruned(
    sqlite_env: Settings,
) -> None:
    make_user()
    study_id = make_study(
        {"optimizer.lr": {"choice": [0.05, 10.0]}},
        algorithm="grid",
        max_trials=2,
        parallelism=1,
        pruner={"name": "median", "min_epochs": 1, "reduction_factor": 3, "min_trials": 1},
    )
    sent: list[str] = []
    studies.top_up(study_id, lambda job_id, queue: sent.append(job_id), sqlite_env)
    run_job(sent[0], worker="w1", settings=sqlite_env)
    studies.after_job(sent[0], lambda job_id, queue: sent.append(job_id), sqlite_env)
    run_job(sent[1], worker="w1", settings=sqlite_env)
    with session_scope() as session:
        good, hopeless = (session.get_one(Job, job_id) for job_id in sent)
        median = [t for t in trials(study_id) if t.job_id == hopeless.id][0].pruned
        assert hopeless.epoch == 1 and hopeless.stop.items() >= median.items()
        assert median["rule"] == "median" and median["trials"] == 1
        assert median["detail"].startswith(f"val_loss {median['value']:.4g} by epoch 1 is worse")
        assert f"the median {median['threshold']:.4g} of 1 finished trials" in median["detail"]
        assert good.epoch == 3
    # Its worker died after committing the pruned epoch, before ending the job: the next
    # delivery resumes it from that epoch's checkpoint and stops at once, still pruned.
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == sent[1])
            .values(status="queued", stop=None, finished_at=None, worker=None)
        )
    assert run_job(sent[1], worker="w2", settings=sqlite_env) == "succeeded"
    with session_scope() as session:
        again = session.get_one(Job, sent[1])
        assert again.epoch == 1 and again.attempt == 2 and again.stop["reason"] == "pruned"
