"""Latency from submit to the first epoch's metrics, through the real service.

For each job: the time from sending ``POST /v1/jobs`` to the first response of
``GET /v1/jobs/{id}/metrics`` that holds epoch 1, minus that epoch's own ``epoch_seconds``
(what training itself took). Polled every ~2 ms so polling adds little; nothing else is
subtracted. Both ways to run the service, each started as tests/e2e starts it (the worker
consumes before anything is timed): embedded (``descent serve``: SQLite and the SQLAlchemy
broker transport) and production (PostgreSQL + Redis, a Celery worker and uvicorn), in a
database and Redis key space of its own, removed afterwards.

    python -m benchmarks.bench_latency [--jobs 10] [--mode embedded --mode redis]

Jobs run one after another (the next is submitted once the previous has ended), so each
finds the worker idle. One untimed job warms each service up first. The breakdown columns
use the job's own timestamps (same machine clock): submit → started_at is the broker's
delivery and the worker's claim; started_at → visible, less the epoch, is the worker's setup
(spec, data, model), the checkpoint write, the epoch's commit and the last poll.
"""

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIG_KEYS,
    configure,
    load,
    machine,
    median,
    postgres_database,
    redis_key_space,
)
from tests.e2e.service import Service, running, start_embedded, start_production
from tests.s3 import s3_server

SPEC: dict[str, Any] = {
    "name": "latency-iris",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [16]},
    "training": {"epochs": 1, "batch_size": 16, "device": "cpu"},
}
POLL_EVERY = 0.002
GOALS = {"embedded": 1.0, "redis": 0.1}


@contextmanager
def service(mode: str, root: Path, env: dict[str, str] | None = None) -> Iterator[Service]:
    """embedded; redis (PostgreSQL + Redis, artifacts in a folder); s3 (the same, artifacts in
    an S3 server of the benchmark's own: moto's, as in the tests). ``env``: settings added to
    the service's environment."""
    if mode == "embedded":
        yield from running(start_embedded(root, env))
        return
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres_database())
        redis_url, prefix = stack.enter_context(redis_key_space())
        extra = dict(env or {})
        if mode == "s3":
            server = stack.enter_context(s3_server(root))
            extra |= server.env(server.bucket())
        yield from running(start_production(root, database_url, redis_url, prefix, extra))


def authorize(svc: Service) -> None:
    """Give the service's HTTP client an API token, unless its starter already did: a user
    of the benchmark's own, made directly in the service's database."""
    if "authorization" in svc.http.headers:
        return
    from store.db import get_engine, session_scope
    from store.users import create_token, create_user

    configure(**{k: v for k, v in svc.env.items() if k.startswith("DESCENT_") or k in CONFIG_KEYS})
    with session_scope() as session:
        create_user(session, "bench")
        _, token = create_token(session, "bench", "bench_latency")
    get_engine().dispose()
    svc.http.headers["Authorization"] = f"Bearer {token}"


def stamp(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def one_job(svc: Service) -> dict[str, float]:
    http = svc.http
    sent = time.time()
    start = time.perf_counter()
    response = http.post("/v1/jobs", json=SPEC)
    posted = time.perf_counter()
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    url = f"/v1/jobs/{job_id}/metrics"
    polls = 0
    while True:
        page = http.get(url)
        polls += 1
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if items:
            break
        time.sleep(POLL_EVERY)
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"no metrics after 60 s\n{svc.tail()}")
    seen = time.perf_counter()
    epoch_seconds = items[0]["metrics"]["epoch_seconds"]
    job = svc.wait(job_id)
    assert job["status"] == "succeeded", job
    total = seen - start
    started = stamp(job["started_at"]) - sent
    return {
        "latency": total - epoch_seconds,
        "post": posted - start,
        "to_started": started,
        "after_start": total - started - epoch_seconds,
        "epoch": epoch_seconds,
        "polls": polls,
    }


def bench(mode: str, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"descent-bench-{mode}-") as tmp:
        with service(mode, Path(tmp)) as svc:
            authorize(svc)
            warm = one_job(svc)
            runs = [one_job(svc) for _ in range(jobs)]
    return {"warm": warm, "runs": runs}


def ms(value: float) -> str:
    return f"{value * 1e3:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="timed jobs per mode (default 10)")
    parser.add_argument("--mode", action="append", choices=list(GOALS), help="default: both")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"{args.jobs} timed jobs per mode (after 1 warm-up job), 1-epoch iris MLP, "
        f"polled every {POLL_EVERY * 1e3:.0f} ms; latency = first metrics visible - epoch_seconds"
    )
    start_load = load()
    results = {mode: bench(mode, args.jobs) for mode in args.mode or list(GOALS)}
    print(f"load average at start: {start_load}; at end: {load()}")
    print()
    print("| mode | median ms | max ms | goal | |")
    print("| --- | ---: | ---: | ---: | --- |")
    for mode, result in results.items():
        latency = [r["latency"] for r in result["runs"]]
        goal = GOALS[mode]
        verdict = "met" if max(latency) < goal else "missed"
        if median(latency) < goal <= max(latency):
            verdict = "median met, max missed"
        print(f"| {mode} | {ms(median(latency))} | {ms(max(latency))} | < {ms(goal)} | {verdict} |")
    print()
    print("Where the time goes (ms; timed jobs: median, and the first job after start):")
    print()
    print(
        "| mode | job | latency | POST answered | submit → started_at "
        "| started_at → visible, less the epoch | epoch_seconds | polls |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    keys = ("latency", "post", "to_started", "after_start", "epoch")
    for mode, result in results.items():
        timed = [median([r[k] for r in result["runs"]]) for k in keys]
        polls = median([r["polls"] for r in result["runs"]])
        first = [result["warm"][k] for k in keys]
        print(f"| {mode} | timed | {' | '.join(ms(v) for v in timed)} | {polls:.0f} |")
        print(
            f"| {mode} | first | {' | '.join(ms(v) for v in first)} | {result['warm']['polls']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
