"""Service tax: a spec run as a job of the service, against the same spec run by the core alone.

For each case the core runs the spec in this process (``Trainer(spec).setup().train()``,
timed from setup to the end), and the service runs it as a job; the ratio is the job's own
``started_at → finished_at`` (claim, setup, every epoch's metrics transaction, checkpoint
writes, the end) over the core's time. The service is started as tests/e2e starts it (see
bench_latency): embedded (``descent serve``: SQLite, the SQLAlchemy broker), redis
(PostgreSQL + Redis, a Celery worker and ``descent api``, artifacts in a folder) and s3 (the
same with artifacts in an S3 server: moto's standalone server, as in the tests).

    python -m benchmarks.bench_service_tax [--repeats 2] [--mode embedded --mode s3] [--scale 1]
        [--case "CNN, default cadence"] [--cnn-channels 320,640] [--pin]

The cases: a digits MLP (64-64, batch 32, about 10 ms an epoch on an idle 2-CPU machine)
for 200 epochs with the default checkpoint cadence (goal ≤ 1.15×), and with a checkpoint
every epoch (``min_interval_seconds: 0``: no goal, it shows what writing costs); a digits
CNN (conv320-conv640, batch 32, about a second an epoch on a 2-CPU machine) for 10 epochs
(goal ≤ 1.02×). Core
runs and jobs alternate, so both see the same machine; one untimed 1-epoch run warms up
the core and each service first. Both train at torch's defaults (threads, OpenMP's wait policy).
Beside the wall times it prints the CPU the worker's process used during each job against
the core run's own: the service's work in the training process, less swayed than the wall
time by a host whose speed swings. A second table splits each job's time: outside its epochs
(less the core's: the service's own work on the training thread) and in them (over the
core's epochs), with the CPU the machine's other processes used beside each. The core runs
with the worker's malloc setting (worker/memory.py). ``--pin``: the core and the worker
train on one thread on the last CPU, the service's other processes run on the others.
"""

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_latency import authorize, service, stamp
from benchmarks.common import cpu_seconds, cpu_spent, load, machine, median
from core.spec import JobSpec
from core.train import Trainer
from descent.settings import get_settings
from tests.e2e.service import children, is_celery
from worker.memory import keep_freed_memory

MLP: dict[str, Any] = {
    "name": "service-tax-digits",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": [64, 64]},
    "training": {"epochs": 200, "batch_size": 32, "seed": 0, "device": "cpu"},
}
CNN: dict[str, Any] = {
    "name": "service-tax-digits-cnn",
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "channels": [320, 640]},
    "training": {"epochs": 10, "batch_size": 32, "seed": 0, "device": "cpu"},
}
# case: (spec, checkpoints, goal). The issue's goals are for the default cadence ("small-
# epoch jobs no longer write every epoch"); a checkpoint every 10-ms epoch, asked for
# explicitly, shows what writing costs.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], float | None]] = {
    "MLP, default cadence": (MLP, {}, 1.15),
    "MLP, every epoch": (MLP, {"min_interval_seconds": 0}, None),
    "CNN, default cadence": (CNN, {}, 1.02),
}
MODES = ("embedded", "redis", "s3")
# How often the benchmark asks whether a job has ended. Its measure is the job's own
# timestamps, so this only sets how much CPU the API spends answering (a user's dashboard
# polls every second or so; a request every 50 ms cost the CNN ~3% on two cores).
POLL_EVERY = 1.0


def spec_for(case: str, scale: float) -> dict[str, Any]:
    """The case's spec, its epochs multiplied by ``scale`` (at least 1)."""
    spec, checkpoints, _ = CASES[case]
    epochs = max(1, round(spec["training"]["epochs"] * scale))
    return {**spec, "checkpoints": checkpoints, "training": {**spec["training"], "epochs": epochs}}


def core_seconds(spec: dict[str, Any]) -> tuple[float, float, float]:
    """(wall, CPU, epochs) seconds of the core's run, every thread of this process counted;
    epochs: the sum of its epochs' own ``epoch_seconds``."""
    start, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(JobSpec.model_validate(spec)).setup()
    trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, sum(m["epoch_seconds"] for m in trainer.metrics_history)


def job_seconds(svc: Any, spec: dict[str, Any]) -> tuple[float, float]:
    """(wall, epochs) seconds of the job: started_at → finished_at, and the sum of its
    epochs' ``epoch_seconds`` (the same clock on the training thread as the core's)."""
    job = svc.wait(svc.submit(spec)["id"], timeout=600, interval=POLL_EVERY)
    assert job["status"] == "succeeded", job
    epochs = sum(item["metrics"]["epoch_seconds"] for item in svc.metrics(job["id"]))
    return stamp(job["finished_at"]) - stamp(job["started_at"]), epochs


@dataclass
class Run:
    """One core run and the job after it (seconds)."""

    core: float
    job: float
    core_cpu: float
    worker_cpu: float  # the worker's process during the job
    core_epochs: float  # the sum of the epochs' own epoch_seconds
    job_epochs: float
    # The CPU the machine's other processes (the API, the databases, the S3 server, the
    # host's own) used during the core run and during the job: what took the cores from
    # training beside it (``others``).
    others_core: float
    others_job: float

    def outside(self) -> float:
        """The job's time outside its epochs less the core's (setup, claim, the epochs'
        hand-offs, the end): the service's own time on the training thread."""
        return (self.job - self.job_epochs) - (self.core - self.core_epochs)


def others(spent: dict[str, float], training: str) -> float:
    """The CPU of every process but the one training (``training``: the benchmark's own
    during the core run, the worker during the job). An idle worker's broker polls count
    during the core run; the benchmark's polls of the job count during the job."""
    return sum(v for k, v in spent.items() if k != training)


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and theirs (Linux)."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def pin(training: set[int], rest: set[int]) -> None:
    """The worker's process (every thread) and this one on the ``training`` CPUs, every other
    process this benchmark started (the API, the S3 server) on the ``rest``: a training host
    of its own. Threads started later keep their starter's CPUs."""
    for pid in descendants(os.getpid()):
        cpus = training if is_celery(pid) else rest
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a process or thread that ended meanwhile
            continue
    os.sched_setaffinity(0, training)


def bench(
    mode: str, repeats: int, scale: float, cases: list[str], pinned: bool = False
) -> dict[str, list[Run]]:
    """{case: [Run, ...]}; pinned: training on the last CPU, one thread, the rest elsewhere."""
    results: dict[str, list[Run]] = {case: [] for case in cases}
    env = {"DESCENT_WORKER_THREADS": "1"} if pinned else None
    with tempfile.TemporaryDirectory(prefix=f"descent-bench-tax-{mode}-") as tmp:
        with service(mode, Path(tmp), env) as svc:
            if pinned:
                cpus = sorted(os.sched_getaffinity(0))
                pin({cpus[-1]}, set(cpus[:-1]))
            authorize(svc)
            warm_up = {**MLP, "training": {**MLP["training"], "epochs": 1}}
            core_seconds(warm_up)
            job_seconds(svc, warm_up)
            for _ in range(repeats):
                for case in cases:
                    spec = spec_for(case, scale)
                    before = cpu_seconds()
                    core, core_cpu, core_epochs = core_seconds(spec)
                    between = cpu_seconds()
                    job, job_epochs = job_seconds(svc, spec)
                    spent = cpu_spent(between, cpu_seconds())
                    beside = cpu_spent(before, between)
                    where = ", ".join(f"{k} {v:.2f}" for k, v in sorted(spent.items()))
                    run = Run(
                        core,
                        job,
                        core_cpu,
                        spent.get("worker", 0.0),
                        core_epochs,
                        job_epochs,
                        others(beside, "benchmark"),
                        others(spent, "worker"),
                    )
                    print(
                        f"  {mode}, {case}: core {core:.2f} s ({core_cpu:.2f} s of CPU, "
                        f"epochs {core_epochs:.2f} s), job {job:.2f} s (epochs "
                        f"{job_epochs:.2f} s; outside them {run.outside():+.3f} s; "
                        f"CPU s meanwhile: {where})",
                        flush=True,
                    )
                    results[case].append(run)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per case (default 2)")
    parser.add_argument("--mode", action="append", choices=MODES, help="default: both")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every case's epochs")
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: all")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="train on one thread on the last CPU (the core and the worker) and run the "
        "service's other processes on the others: a training host of its own",
    )
    parser.add_argument(
        "--cnn-channels",
        default="320,640",
        help="the CNN's two conv widths (its epoch's time goes with their product)",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    print(f"{args.repeats} core runs and {args.repeats} jobs per case, alternating")
    start_load = load()
    cases = args.case or list(CASES)
    CNN["model"]["channels"] = [int(c) for c in args.cnn_channels.split(",")]
    # The core's malloc as the worker's (worker/memory.py): the ratio is the service's, not
    # glibc's (the default's page faults cost a CPU CNN ~1-2%, and how many it takes depends
    # on what the process freed before).
    keep_freed_memory(get_settings().worker_malloc_keep_mb)
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs at least two CPUs")
        torch.set_num_threads(1)  # the core's, as the worker's (DESCENT_WORKER_THREADS=1)
    results = {
        mode: bench(mode, args.repeats, args.scale, cases, args.pin) for mode in args.mode or MODES
    }
    print(f"load average at start: {start_load}; at end: {load()}")
    print()
    print("| mode | checkpoints | core s | job s | job/core (runs) | goal | | CPU: worker/core |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for mode, by_case in results.items():
        for case, runs in by_case.items():
            ratios = [r.job / r.core for r in runs]
            cpu = median([r.worker_cpu / r.core_cpu for r in runs])
            ratio, goal = median(ratios), CASES[case][2]
            verdict = "" if goal is None else "met" if ratio <= goal else "missed"
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(
                f"| {mode} | {case} | {median([r.core for r in runs]):.2f} "
                f"| {median([r.job for r in runs]):.2f} | **{ratio:.2f}×** ({each}) "
                f"| {'–' if goal is None else f'≤ {goal}×'} | {verdict} | {cpu:.2f}× |"
            )
    print()
    print(
        "Where the job's time went (medians): its time outside the epochs less the core's "
        "(the service's own work on the training thread); its epochs' time over the core's; "
        "the CPU the machine's other processes used during the job and during the core run."
    )
    print()
    print(
        "| mode | case | outside epochs: job − core | epochs: job/core | others' CPU: job, core |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for mode, by_case in results.items():
        for case, runs in by_case.items():
            outside = median([r.outside() for r in runs])
            epochs = median([r.job_epochs / r.core_epochs for r in runs])
            print(
                f"| {mode} | {case} | {outside * 1000:+.0f} ms "
                f"({outside / median([r.core for r in runs]):+.1%}) | {epochs:.3f}× "
                f"| {median([r.others_job for r in runs]):.2f} s, "
                f"{median([r.others_core for r in runs]):.2f} s |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
