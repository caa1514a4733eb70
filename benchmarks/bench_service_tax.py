"""Service tax: a spec run as a job of the service, against the same spec run by the core alone.

For each case the core runs the spec in this process (``Trainer(spec).setup().train()``,
timed from setup to the end), and the service runs it as a job; the ratio is the job's own
``started_at → finished_at`` (claim, setup, every epoch's metrics transaction, checkpoint
writes, the end) over the core's time. Both ways to run the service, started as tests/e2e
starts them (see bench_latency): embedded (``descent serve``: SQLite, the SQLAlchemy broker)
and production (PostgreSQL + Redis, a Celery worker and uvicorn).

    python -m benchmarks.bench_service_tax [--repeats 2] [--mode embedded --mode redis]

The spec: a digits MLP (64-64, batch 32, about 10 ms an epoch on an idle 2-CPU machine) for
200 epochs, with the default checkpoint cadence (every epoch) and with every_epochs 20. Core
runs and jobs alternate, so both see the same machine; one untimed 1-epoch job warms each
service up first.
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_latency import authorize, service, stamp
from benchmarks.common import load, machine, median
from core.spec import JobSpec
from core.train import Trainer

SPEC: dict[str, Any] = {
    "name": "service-tax-digits",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": [64, 64]},
    "training": {"epochs": 200, "batch_size": 32, "seed": 0, "device": "cpu"},
}
CASES: dict[str, dict[str, Any]] = {
    "every epoch (default)": {},
    "every_epochs 20": {"every_epochs": 20},
}
GOAL = 1.15
MODES = ("embedded", "redis")


def spec_for(case: str) -> dict[str, Any]:
    return {**SPEC, "checkpoints": CASES[case]}


def core_seconds(spec: dict[str, Any]) -> float:
    start = time.perf_counter()
    Trainer(JobSpec.model_validate(spec)).setup().train()
    return time.perf_counter() - start


def job_seconds(svc: Any, spec: dict[str, Any]) -> float:
    job = svc.wait(svc.submit(spec)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    return stamp(job["finished_at"]) - stamp(job["started_at"])


def bench(mode: str, repeats: int, epochs: int) -> dict[str, list[tuple[float, float]]]:
    """{case: [(core seconds, job seconds), ...]}"""
    results: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix=f"descent-bench-tax-{mode}-") as tmp:
        with service(mode, Path(tmp)) as svc:
            authorize(svc)
            job_seconds(svc, {**SPEC, "training": {**SPEC["training"], "epochs": 1}})
            for _ in range(repeats):
                for case in CASES:
                    spec = spec_for(case)
                    spec["training"] = {**spec["training"], "epochs": epochs}
                    core = core_seconds(spec)
                    job = job_seconds(svc, spec)
                    print(f"  {mode}, {case}: core {core:.2f} s, job {job:.2f} s", flush=True)
                    results[case].append((core, job))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per case (default 2)")
    parser.add_argument("--mode", action="append", choices=MODES, help="default: both")
    parser.add_argument("--epochs", type=int, default=SPEC["training"]["epochs"])
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    print(
        f"digits MLP 64-64, batch 32, {args.epochs} epochs; "
        f"{args.repeats} core runs and {args.repeats} jobs per case, alternating"
    )
    start_load = load()
    results = {mode: bench(mode, args.repeats, args.epochs) for mode in args.mode or MODES}
    print(f"load average at start: {start_load}; at end: {load()}")
    print()
    print("| mode | checkpoints | core s | job s | job/core (runs) | goal | |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for mode, cases in results.items():
        for case, runs in cases.items():
            ratios = [job / core for core, job in runs]
            ratio = median(ratios)
            verdict = "met" if ratio <= GOAL else "missed"
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(
                f"| {mode} | {case} | {median([c for c, _ in runs]):.2f} "
                f"| {median([j for _, j in runs]):.2f} | **{ratio:.2f}×** ({each}) "
                f"| ≤ {GOAL}× | {verdict} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
