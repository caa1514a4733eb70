"""Per-trial overhead of a study: a random search through the service against the same
trainings run back to back by the core in one process; then the same search with ASHA.

The study (random, seed 0) of 5-epoch digits MLPs runs through ``descent serve`` (the
embedded service: SQLite, one worker) from ``POST /v1/studies`` until the study reads
completed; its wall time is the service's own: the study's ``created_at → finished_at``
(polled every half second: the polls' own work would otherwise be the service's). Then the
specs of its trials (their jobs' specs, fetched from the service) are trained one after the
other by ``core.Trainer`` in this process, with no hooks: the ratio of the two wall times is
what the service adds per trial (dispatch, setup in a worker, metrics and checkpoint
persistence, the next trial's proposal).
The same search with ASHA (rungs at epochs 1 and 3, reduction factor 3) reports its wall
time, epochs trained and best objective against the search without pruning.

    python -m benchmarks.bench_studies [--trials 32] [--epochs 5] [--parallelism 2] [--repeats 5]
"""

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.bench_latency import stamp
from benchmarks.common import load, machine
from tests.e2e.service import Service, running, start_embedded

BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
    "model": {"arch": "mlp", "hidden": [64]},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 5, "batch_size": 64, "seed": 0, "device": "cpu"},
    "checkpoints": {"keep_top_k": 1},
}
SPACE = {
    "optimizer.lr": {"loguniform": [1.0e-4, 3.0]},
    "optimizer.momentum": {"uniform": [0.0, 0.99]},
    "model.hidden": {"choice": [[32], [64], [128]]},
}
GOAL = 1.3
POLL_EVERY = 0.5


def run_study(
    svc: Service, trials: int, epochs: int, parallelism: int, pruner: str
) -> dict[str, Any]:
    base = {**BASE, "training": {**BASE["training"], "epochs": epochs}}
    body = {
        "name": f"bench-{pruner}",
        "base": base,
        "space": SPACE,
        "algorithm": "random",
        "max_trials": trials,
        "parallelism": parallelism,
        "seed": 0,
        "pruner": {"name": pruner, "min_epochs": 1, "reduction_factor": 3},
    }
    answer = svc.http.post("/v1/studies", json=body)
    answer.raise_for_status()
    study_id = answer.json()["id"]
    while True:
        study = svc.http.get(f"/v1/studies/{study_id}").json()
        if study["status"] != "running":
            break
        time.sleep(POLL_EVERY)
    wall = stamp(study["finished_at"]) - stamp(study["created_at"])
    assert study["status"] == "completed", study
    items = svc.http.get(f"/v1/studies/{study_id}/trials", params={"limit": 1000}).json()["items"]
    jobs = [svc.job(t["job_id"]) for t in items]
    return {"wall": wall, "study": study, "specs": [j["spec"] for j in jobs], "jobs": jobs}


def timeline(jobs: list[dict[str, Any]]) -> dict[str, float]:
    """Where a study's wall time went, in seconds summed over its trials: inside the jobs
    (claim → end: setup, training, persistence) and between them (created → claimed: the
    proposal, dispatch, the worker finishing the job before)."""
    inside = sum(stamp(j["finished_at"]) - stamp(j["started_at"]) for j in jobs)
    waiting = sum(stamp(j["started_at"]) - stamp(j["created_at"]) for j in jobs)
    return {"inside": inside, "queued": waiting}


def run_core(specs: list[dict[str, Any]], keep_data: bool = False) -> float:
    """The trainings back to back; ``keep_data``: with a DatasetCache, as a worker keeps
    the dataset it read and split for its next jobs (else each reads and splits it)."""
    from core.errors import NonFiniteLoss
    from core.resources import DatasetCache, Resources
    from core.spec import JobSpec
    from core.train import Trainer

    resources = Resources(read_cache=DatasetCache()) if keep_data else None
    started = time.perf_counter()
    for spec in specs:
        try:
            Trainer(JobSpec.model_validate(spec), resources=resources).train()
        except NonFiniteLoss:
            pass  # a diverging trial stops there in the service too (the job fails)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--parallelism", type=int, default=2, help="trials queued at once")
    parser.add_argument(
        "--repeats", type=int, default=5, help="study and core runs, alternated (medians)"
    )
    parser.add_argument(
        "--control-repeats",
        type=int,
        default=3,
        help="runs of the study on a worker whose small jobs keep every thread",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"{args.trials}-trial random search (seed 0) of {args.epochs}-epoch digits MLPs, "
        f"parallelism {args.parallelism}, one worker (descent serve), {args.repeats} repeats"
    )
    start_load = load()
    plains: list[dict[str, Any]] = []
    cores: list[float] = []
    kepts: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        for svc in running(start_embedded(Path(root))):
            # Warm-up: the worker's first trial loads torch and the dataset.
            run_study(svc, 1, 1, 1, "none")
            for repeat in range(args.repeats):
                # The study, then the core on its trials' specs, alternated: this machine's
                # speed swings, a run of each close in time is what a ratio compares.
                plains.append(run_study(svc, args.trials, args.epochs, args.parallelism, "none"))
                if repeat == 0:
                    run_core(plains[0]["specs"][:1])  # warm-up
                cores.append(run_core(plains[-1]["specs"]))
                kepts.append(run_core(plains[-1]["specs"], keep_data=True))
            asha = run_study(svc, args.trials, args.epochs, args.parallelism, "asha")
        # The same study on a worker whose jobs all use torch's default threads (every
        # core): what the one thread of a small step saves (worker/threads.py).
        control: list[float] = []
        with tempfile.TemporaryDirectory() as other:
            every = {"DESCENT_SINGLE_THREAD_BELOW_FLOPS": "0"}
            for svc in running(start_embedded(Path(other), every)):
                run_study(svc, 1, 1, 1, "none")
                for _ in range(args.control_repeats):
                    study = run_study(svc, args.trials, args.epochs, args.parallelism, "none")
                    control.append(study["wall"] / run_core(study["specs"]))
    print(f"load average at start: {start_load}; at end: {load()}")
    ratios = [p["wall"] / c for p, c in zip(plains, cores, strict=True)]
    kept_ratios = [p["wall"] / k for p, k in zip(plains, kepts, strict=True)]
    ratio, core, kept = median(ratios), median(cores), median(kepts)
    plain = {**plains[0], "wall": median(p["wall"] for p in plains)}
    pairs = zip(plains, cores, strict=True)
    per_trial = median((p["wall"] - c) / args.trials * 1e3 for p, c in pairs)
    print()
    print("| run | wall s | s/trial | epochs trained | best val_loss | vs core | goal | |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(f"| core, back to back | {core:.1f} | {core / args.trials:.2f} | "
          f"{plain['study']['epochs']['trained']} | - | 1.00× | | |")  # fmt: skip
    for name, run, versus in (("study, no pruning", plain, ratio), ("study, ASHA", asha, None)):
        study = run["study"]
        verdict = ("met" if versus <= GOAL else "missed") if versus else ""
        goal = f"≤ {GOAL}×" if versus else ""
        shown = versus if versus else run["wall"] / core
        print(
            f"| {name} | {run['wall']:.1f} | {run['wall'] / args.trials:.2f} | "
            f"{study['epochs']['trained']} of {study['epochs']['without_pruning']} | "
            f"{study['best']['value']:.4f} | {shown:.2f}× | {goal} | {verdict} |"
        )
    print()
    print("medians of the repeats; each repeat's study ÷ the core run right after it:")
    print("  study/core:", ", ".join(f"{r:.2f}×" for r in ratios))
    print(f"service overhead per trial: {per_trial:.0f} ms (study wall - core wall) / trials")
    print(
        f"core with the dataset kept between trials (as the worker keeps it): {kept:.2f} s; "
        f"study {median(kept_ratios):.2f}× that (runs: "
        + ", ".join(f"{r:.2f}×" for r in kept_ratios)
        + ")"
    )
    if control:
        print(
            "the same study, each job on torch's default threads (DESCENT_SINGLE_THREAD_BELOW"
            f"_FLOPS=0): {median(control):.2f}× the core (runs: "
            + ", ".join(f"{r:.2f}×" for r in control)
            + ")"
        )
    for p in plains:
        spent = timeline(p["jobs"])
        print(
            f"  a study: {p['wall']:.2f} s; summed over its trials {spent['inside']:.2f} s inside "
            f"jobs (started → finished), {spent['queued']:.2f} s queued (created → started)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
