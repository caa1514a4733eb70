"""Studies in the worker against a real database: trials proposed from the recorded ones,
made once, and pruned as their epochs are committed (the runner without Celery)."""

import math
import random
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from descent.settings import Settings
from store.db import make_engine, session_scope
from store.models import Job, Study, StudyTrial, utcnow
from tests.api.builders import make_job, make_user
from tests.timing import scaled, wait_for
from worker import studies
from worker.runner import run_job
from worker.sweeper import sweep

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


def active_trials(study_id: str) -> int:
    with session_scope() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.study_id == study_id, Job.status.in_(("queued", "running")))
            )
            or 0
        )


def test_a_study_never_exceeds_its_owners_limit_of_jobs_at_once(sqlite_env: Settings) -> None:
    """active_jobs=1, parallelism 3: one trial at a time (none while another job of the
    owner is queued), and the study still completes with its max_trials trials."""
    make_user(active_jobs=1)
    other = make_job(status="queued", owner="local")
    study_id = make_study({"optimizer.lr": {"choice": [0.05, 0.1, 0.2]}}, algorithm="grid",
                          max_trials=3, parallelism=3,
                          base={**BASE, "training": {**BASE["training"], "epochs": 1}})  # fmt: skip
    sent: list[str] = []

    def send(job_id: str, queue: str) -> None:
        sent.append(job_id)

    assert studies.top_up(study_id, send, sqlite_env) == []  # the owner's one job is queued
    with session_scope() as session:
        session.get_one(Job, other).status = "cancelled"
    studies.after_job(other, send, sqlite_env)
    most = 0
    while sent:
        most = max(most, active_trials(study_id))
        job_id = sent.pop(0)
        assert studies.top_up(study_id, send, sqlite_env) == []  # no room while it is queued
        assert run_job(job_id, worker="w1", settings=sqlite_env) == "succeeded"
        studies.after_job(job_id, send, sqlite_env)
    assert most == 1
    with session_scope() as session:
        assert session.get_one(Study, study_id).status == "completed"
    assert len(trials(study_id)) == 3


def test_a_used_up_compute_budget_holds_a_study_until_it_is_raised(sqlite_env: Settings) -> None:
    make_user(device_hours=1.0)
    study_id = make_study({"optimizer.lr": {"choice": [0.05, 0.1]}}, algorithm="grid",
                          max_trials=2, parallelism=1,
                          base={**BASE, "training": {**BASE["training"], "epochs": 1}})  # fmt: skip
    sent: list[str] = []

    def send(job_id: str, queue: str) -> None:
        sent.append(job_id)

    studies.top_up(study_id, send, sqlite_env)
    assert len(sent) == 1
    run_job(sent[0], worker="w1", settings=sqlite_env)
    # Another job of the owner used up the budget: the study makes no trial...
    make_job(status="succeeded", owner="local", runtime_seconds=3600.0)
    studies.after_job(sent[0], send, sqlite_env)
    assert len(sent) == 1 and len(trials(study_id)) == 1
    with session_scope() as session:
        assert session.get_one(Study, study_id).status == "running"
    # ... until the budget is raised: the next job's end makes it.
    make_user(device_hours=2.0)
    studies.after_job(sent[0], send, sqlite_env)
    assert len(sent) == 2 and len(trials(study_id)) == 2


def test_a_jobs_end_tops_up_its_owners_studies_on_the_top_up_thread(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The training task hands the top-up to a thread of its own and goes on to its next
    job; that thread makes the next trial and sends it. A failing top-up is logged there."""
    from descent.queue import TRAIN_TASK
    from worker import tasks

    make_user()
    study_id = make_study({"optimizer.lr": {"choice": [0.05, 0.1]}}, algorithm="grid",
                          max_trials=2, parallelism=1)  # fmt: skip
    first: list[str] = []
    studies.top_up(study_id, lambda job_id, queue: first.append(job_id), sqlite_env)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == first[0]).values(status="succeeded", finished_at=utcnow())
        )
    sends: list[tuple[str, list[str], str, str]] = []

    class App:
        def send_task(self, name: str, args: list[str], queue: str) -> None:
            sends.append((name, args, queue, threading.current_thread().name))

    tasks._after_job(App(), first[0]).result(timeout=scaled(10))
    second = trials(study_id)[1].job_id
    assert [(n, a, q) for n, a, q, _ in sends] == [(TRAIN_TASK, [second], "cpu")]
    assert sends[0][3].startswith("study-top-up") and sends[0][3] != threading.current_thread().name

    def broken(*args: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(studies, "after_job", broken)
    assert tasks._after_job(App(), second).result(timeout=scaled(10)) is None
    assert f"job {second}: topping up its owner's studies failed" in caplog.text


def test_a_random_trial_is_the_point_its_seed_draws_after_all_the_trials_before() -> None:
    """Random search proposes without rebuilding the trials before (their number only
    grows): its point is still the one Optuna draws with them, as it was with that rebuild."""
    import optuna

    space = {
        "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
        "optimizer.momentum": {"uniform": [0.0, 0.99]},
        "model.hidden": {"choice": [[8], [16], [32]]},
    }
    spec = {"space": space, "algorithm": "random", "seed": 3,
            "objective": {"metric": "val_loss", "mode": "min"}}  # fmt: skip
    study = Study(id="s", owner="local", spec=spec)
    records = []
    for number in range(12):
        point = studies.propose(study, records, number)
        assert point is not None
        values = {1: float(number % 5), 2: float(number % 3)}
        records.append(
            studies.TrialRecord(number, f"j{number}", "succeeded", point, {}, None, values)
        )
        sampler = optuna.samplers.RandomSampler(seed=studies.trial_seed(3, number))
        trial = studies.rebuild(study, records[:-1], sampler=sampler).ask()
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        momentum = trial.suggest_float("optimizer.momentum", 0.0, 0.99)
        hidden = trial.suggest_categorical("model.hidden", [0, 1, 2])
        assert point == {"optimizer.lr": lr, "optimizer.momentum": momentum, "model.hidden": hidden}
    assert len({p.raw["optimizer.lr"] for p in records}) == 12


def test_tpe_with_a_seed_proposes_the_same_point_from_the_same_trials() -> None:
    """Past TPE's 10 random start-up trials, the point proposed from the same recorded
    trials is the same for the same seed and differs for another seed."""
    space = {
        "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
        "model.hidden": {"choice": [[8], [16, 8]]},
        "regularization.weight_decay": {"uniform": [0.0, 0.01]},
    }
    rng = random.Random(0)
    records = []
    for number in range(12):
        point = {
            "optimizer.lr": 10 ** rng.uniform(-4, -1),
            "model.hidden": rng.randrange(2),
            "regularization.weight_decay": rng.uniform(0, 0.01),
        }
        value = abs(math.log10(point["optimizer.lr"]) + 2) + point["model.hidden"]
        records.append(
            studies.TrialRecord(number, f"j{number}", "succeeded", point, {}, None, {1: value})
        )

    def proposed(seed: int) -> dict[str, Any] | None:
        spec = {"space": space, "objective": {"metric": "val_loss", "mode": "min"},
                "algorithm": "tpe", "seed": seed}  # fmt: skip
        return studies.propose(Study(id="s", spec=spec), records, 12)

    first = proposed(5)
    assert first is not None and first == proposed(5)
    assert first != proposed(6)
    # TPE, not random: it proposes near the best trials' learning rate (1e-2).
    assert -3.5 < math.log10(first["optimizer.lr"]) < -0.5


# ---------------------------------------------------------------------------- the sweeper


def end_trials(study_id: str) -> int:
    """The study's queued trials end (as if run), and nothing makes the next ones: the
    process that would have (a trial's end) died. Returns how many ended."""
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(Job.study_id == study_id, Job.status.in_(("queued", "running")))
            .values(status="succeeded", finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def study_state(study_id: str) -> tuple[str, list[int], int]:
    """(status, trial numbers, trials queued or running)."""
    with session_scope() as session:
        status = session.get_one(Study, study_id).status
    return status, [t.number for t in trials(study_id)], active_trials(study_id)


def test_the_sweeper_makes_the_trials_a_stalled_study_has_room_for(db_env: Settings) -> None:
    """max_trials 5, parallelism 2, no trial's end tops the study up: each sweep makes what
    there is room for (2, then the 5th alone), makes nothing while 2 are active, and
    completes the study once its 5 trials have ended."""
    make_user()
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    study_id = make_study({"optimizer.lr": {"choice": lrs}}, algorithm="random", max_trials=5)
    sent: list[str] = []
    sessions = sessionmaker(make_engine(db_env.database_url, pooled=False))

    def send(job_id: str, queue: str) -> None:
        sent.append(job_id)

    assert sweep(sessions, send, db_env) == []  # no job of a dead worker to queue again
    assert study_state(study_id) == ("running", [0, 1], 2) and len(sent) == 2
    assert sweep(sessions, send, db_env) == [] and len(sent) == 2  # no room: 2 active
    assert end_trials(study_id) == 2
    sweep(sessions, send, db_env)
    assert study_state(study_id) == ("running", [0, 1, 2, 3], 2) and len(sent) == 4
    assert end_trials(study_id) == 2
    sweep(sessions, send, db_env)
    assert study_state(study_id) == ("running", [0, 1, 2, 3, 4], 1) and len(sent) == 5
    assert end_trials(study_id) == 1
    sweep(sessions, send, db_env)
    assert study_state(study_id) == ("completed", [0, 1, 2, 3, 4], 0)
    assert len(sent) == len(set(sent)) == 5
    assert sent == [t.job_id for t in trials(study_id)]
    sessions.kw["bind"].dispose()


@pytest.mark.parametrize("owner_row", [True, False], ids=["owner-lock", "unique-number"])
def test_concurrent_sweeps_make_each_trial_once(db_env: Settings, owner_row: bool) -> None:
    """Two workers' sweepers, each with its own engine, top up the same stalled study at the
    same moment, three rounds: each round makes exactly the 3 trials there is room for, none
    twice. With the owner's row they take turns on its lock; without one (no lock to take)
    the trial number's uniqueness turns the second away."""
    if owner_row:
        make_user()
    study_id = make_study(
        {"optimizer.lr": {"choice": [0.01 * (i + 1) for i in range(8)]}},
        algorithm="grid",
        max_trials=8,
        parallelism=3,
    )
    sent: list[str] = []
    engines = [make_engine(db_env.database_url, pooled=False) for _ in range(2)]
    failures: list[BaseException] = []

    def one(engine: Any, start: threading.Barrier) -> None:
        try:
            start.wait(timeout=10)
            sweep(sessionmaker(engine), lambda job_id, queue: sent.append(job_id), db_env)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)

    for made, active_now in ((3, 3), (6, 3), (8, 2)):
        start = threading.Barrier(2)
        threads = [threading.Thread(target=one, args=(e, start)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
        status, numbers, active = study_state(study_id)
        assert status == "running" and numbers == list(range(made)) and active == active_now
        assert len(sent) == len(set(sent)) == made
        end_trials(study_id)
    for engine in engines:
        sweep(sessionmaker(engine), lambda job_id, queue: sent.append(job_id), db_env)
        engine.dispose()
    assert study_state(study_id) == ("completed", list(range(8)), 0) and len(sent) == 8
    with session_scope() as session:
        lrs = [session.get_one(Job, t.job_id).spec["optimizer"]["lr"] for t in trials(study_id)]
    assert sorted(lrs) == [0.01 * (i + 1) for i in range(8)]


class Killed(BaseException):
    """The process dies (SIGKILL) between a trial's commit and its send."""


def test_a_trial_committed_but_never_sent_is_sent_after_the_grace_and_run_once(
    db_env: Settings,
) -> None:
    """Both trials of parallelism 2 are committed, and the top-up dies before sending them:
    they hold both places, so no sweep makes more; within the grace none is sent, after it
    a sweep sends each once, each runs once, and the study goes on to its end."""
    make_user()
    study_id = make_study({"optimizer.lr": {"choice": [0.01, 0.02, 0.03]}}, algorithm="grid",
                          max_trials=3, parallelism=2)  # fmt: skip

    def dies(job_id: str, queue: str) -> None:
        raise Killed

    with pytest.raises(Killed):
        studies.top_up(study_id, dies, db_env)
    made = [t.job_id for t in trials(study_id)]
    assert study_state(study_id) == ("running", [0, 1], 2)
    grace = scaled(1.0)
    settings = db_env.model_copy(update={"resend_grace_seconds": grace})
    sessions = sessionmaker(make_engine(db_env.database_url, pooled=False))
    sent: list[str] = []

    def send(job_id: str, queue: str) -> None:
        sent.append(job_id)

    assert sweep(sessions, send, settings) == [] and sent == []  # within the grace
    assert study_state(study_id) == ("running", [0, 1], 2)
    # Queued a moment apart, the two may pass their grace in two sweeps.
    resent: list[str] = []

    def both_resent() -> bool:
        resent.extend(sweep(sessions, send, settings))
        return len(resent) >= 2

    wait_for("the unsent trials sent", both_resent, 10)
    assert sorted(resent) == sorted(sent) == sorted(made)
    assert sweep(sessions, send, settings) == [] and len(sent) == 2  # once each
    for job_id in made:
        assert run_job(job_id, worker="w/1") == "succeeded"
        assert run_job(job_id, worker="w/2") == "skipped"  # a late first message
    assert sweep(sessions, send, settings) == []  # makes the third trial, sent as usual
    third = trials(study_id)[2].job_id
    assert study_state(study_id) == ("running", [0, 1, 2], 1) and sent[2:] == [third]
    assert sweep(sessions, send, settings.model_copy(update={"resend_grace_seconds": 0})) == []
    assert run_job(third, worker="w/1") == "succeeded"
    sweep(sessions, send, settings)
    assert study_state(study_id) == ("completed", [0, 1, 2], 0) and len(sent) == 3
    with session_scope() as session:
        attempts = [session.get_one(Job, t.job_id).attempt for t in trials(study_id)]
    assert attempts == [1, 1, 1]
    sessions.kw["bind"].dispose()
