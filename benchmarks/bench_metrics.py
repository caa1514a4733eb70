"""Throughput of the metrics endpoint on a long history, against a bare endpoint.

A finished job with 1,000 epochs x 7 metrics (train_loss, train_accuracy, grad_norm,
val_loss, val_accuracy, lr, epoch_seconds) is written through the ``store`` models into a
fresh, migrated database: SQLite in a temporary data folder, and a PostgreSQL database of
its own (dropped afterwards). Its owner is a user whose API token every request sends. One
uvicorn process serves ``benchmarks.bare_app``: the service's app plus ``GET /bare``, which
sends the same bytes from memory. ``wrk -t2 -c32 -d10s --latency`` measures requests/s and
p99 latency of each, one after the other, for the default page (100 epochs) and for
``?limit=1000`` (the whole history).

    python -m benchmarks.bench_metrics [--duration 10] [--mode sqlite --mode postgres]

The bare route sends exactly the bytes the endpoint sent for the same page. Under wrk the
job is finished, so the endpoint answers from its page cache; "cold page ms" is the time of
the first request for the same page of 5 more such jobs (median), when the page is built
from the database: what the first poll after each new epoch of a running job costs.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import configure, load, machine, median, postgres_database
from tests.e2e.service import ROOT, base_env, free_port

EPOCHS = 1000
WRK = shutil.which("wrk") or "/usr/bin/wrk"
VARIANTS = {"default": "", "limit=1000": "?limit=1000"}
GOAL = 0.5
OWNER = "bench"
COLD_SAMPLES = 5  # further jobs, whose first request times building a page


@contextmanager
def database(mode: str, root: Path) -> Iterator[dict[str, str]]:
    """The environment of a fresh, migrated database of the given kind."""
    env = {"DESCENT_DATA_DIR": str(root / "data")}
    if mode == "sqlite":
        yield env
        return
    with postgres_database() as url:
        yield env | {"DATABASE_URL": url}


def fill(env: dict[str, str], jobs: int) -> tuple[str, list[str]]:
    """Migrate, then write a user with an API token, and ``jobs`` finished jobs of theirs of
    EPOCHS epochs of metrics each; return the token and the job ids."""
    from sqlalchemy import insert

    from core.spec import JobSpec
    from descent.migrate import upgrade
    from store.db import get_engine, session_scope
    from store.models import Job, JobStatus, Metric, utcnow
    from store.users import create_token, create_user

    configure(**env)
    upgrade()
    with session_scope() as session:
        create_user(session, OWNER)
        _, token = create_token(session, OWNER, "bench_metrics")
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "training": {"epochs": EPOCHS}})
    ids = []
    for _ in range(jobs):
        with session_scope() as session:
            job = Job(
                owner=OWNER,
                name="bench-metrics",
                status=JobStatus.SUCCEEDED,
                spec=spec.model_dump(mode="json"),
                spec_hash=spec.spec_hash(),
                queue="cpu",
                monitor="val_loss",
                mode="min",
                started_at=utcnow(),
                finished_at=utcnow(),
                epoch=EPOCHS,
                attempt=1,
            )
            session.add(job)
            session.flush()
            rows = [
                {"job_id": job.id, "epoch": epoch, "step": 0, "name": name, "value": value}
                for epoch in range(1, EPOCHS + 1)
                for name, value in epoch_metrics(epoch).items()
            ]
            session.execute(insert(Metric), rows)
            ids.append(job.id)
    get_engine().dispose()
    return token, ids


def epoch_metrics(epoch: int) -> dict[str, float]:
    """The 7 metrics the worker writes for an epoch, on a plausible curve."""
    decay = 1.0 / (1.0 + 0.01 * epoch)
    return {
        "train_loss": 2.3 * decay,
        "train_accuracy": 1.0 - 0.9 * decay,
        "grad_norm": 5.0 * decay + 0.1,
        "val_loss": 2.3 * decay + 0.01 * (epoch % 7),
        "val_accuracy": 1.0 - 0.92 * decay,
        "lr": 0.001,
        "epoch_seconds": 0.2 + 0.001 * (epoch % 13),
    }


@contextmanager
def server(env: dict[str, str], body_file: Path, root: Path) -> Iterator[str]:
    port = free_port()
    log = open(root / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "benchmarks.bare_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ],
        cwd=ROOT,
        env=base_env(root / "data") | env | {"BENCH_BARE_BODY": str(body_file)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError((root / f"uvicorn-{port}.log").read_text())
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def wrk(url: str, duration: int, token: str) -> dict[str, float]:
    out = subprocess.run(
        [
            WRK,
            "-t2",
            "-c32",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    assert p99 is not None, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale}


def bench(mode: str, duration: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"descent-bench-metrics-{mode}-") as tmp:
        root = Path(tmp)
        with database(mode, root) as env:
            token, (job_id, *others) = fill(env, 1 + COLD_SAMPLES)
            headers = {"Authorization": f"Bearer {token}"}
            for variant, query in VARIANTS.items():
                body_file = root / f"{variant}.json"
                with (
                    server(env, body_file, root) as url,
                    httpx.Client(base_url=url, headers=headers) as http,
                ):
                    http.get(f"/v1/jobs/{others[0]}").raise_for_status()  # warm the pool
                    cold = []
                    for other in others:  # first request of each job: its page is built
                        start = time.perf_counter()
                        http.get(f"/v1/jobs/{other}/metrics{query}").raise_for_status()
                        cold.append(time.perf_counter() - start)
                    path = f"/v1/jobs/{job_id}/metrics{query}"
                    body = http.get(path).raise_for_status().content
                    body_file.write_bytes(body)
                    assert http.get("/bare").content == body
                    for _ in range(50):
                        http.get(path), http.get("/bare")
                    metrics = wrk(url + path, duration, token)
                    bare = wrk(url + "/bare", duration, token)
                rows.append(
                    {
                        "mode": mode,
                        "variant": variant,
                        "bytes": len(body),
                        "cold_ms": median(cold) * 1e3,
                        "metrics": metrics,
                        "bare": bare,
                        "ratio": metrics["rps"] / bare["rps"],
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--mode", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args(argv)
    modes = args.mode or ["sqlite", "postgres"]
    print(f"machine: {machine()}")
    print(
        f"wrk -t2 -c32 -d{args.duration}s --latency; one uvicorn process; "
        f"a finished job of {EPOCHS} epochs x 7 metrics"
    )
    start_load = load()
    rows = [row for mode in modes for row in bench(mode, args.duration)]
    print(f"load average at start: {start_load}; at end: {load()}")
    print()
    print(
        "| database | page | bytes | metrics req/s | metrics p99 ms | bare req/s | bare p99 ms "
        "| metrics/bare | goal | | cold page ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        m, b = r["metrics"], r["bare"]
        verdict = "met" if r["ratio"] >= GOAL else "missed"
        print(
            f"| {r['mode']} | {r['variant']} | {r['bytes']:,} "
            f"| {m['rps']:,.0f} | {m['p99_ms']:.1f} | {b['rps']:,.0f} | {b['p99_ms']:.1f} "
            f"| {r['ratio']:.2f} | >= {GOAL} | {verdict} "
            f"| {r['cold_ms']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
