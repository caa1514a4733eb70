"""Nothing lost, with real processes: the API and Celery workers on PostgreSQL and a Redis
server of this module's own (append-only), which the tests restart, and workers they kill.

- Redis restarted with jobs queued: none is lost.
- The same job delivered twice: it runs once.
- A worker killed (SIGKILL) at epoch 3 of 10, in the process that runs the job (the solo
  pool runs it in the worker itself): a new worker's sweeper queues the job again, it resumes
  from its checkpoint, and its metrics equal an uninterrupted run's.
- A worker stopped (SIGTERM, as a redeploy or a spot machine's reclaim does): it hands its job
  back at the next step, and another worker resumes it at once, with the same metrics.
- PostgreSQL cut off mid-job (through a proxy the test controls): the API answers 503 with a
  reason, the worker retries, and no finished epoch is lost.
"""

import logging
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import postgres_database, unavailable
from tests.e2e.service import free_port
from tests.e2e.stacks import (
    LEASE,
    RESUME_SPEC,
    Stack,
    assert_same_metrics,
    kill,
    production_stack,
    reference_run,
)
from tests.tcp_proxy import TcpProxy
from tests.timing import scaled, wait_for

log = logging.getLogger(__name__)

SHORT_SPEC: dict[str, Any] = {
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


class RedisServer:
    """A redis-server of our own (never the machine's shared one), append-only."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        log_file = self.folder / "redis.log"
        wait_for(f"redis-server on port {self.port} to answer PING", pong, 20, interval=0.1,
                 detail=lambda: log_file.read_text(errors="replace"))  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            self.process.wait(timeout=scaled(20))

    def queued(self, queue: str) -> int:
        import redis

        with redis.Redis.from_url(self.url) as client:
            return int(client.llen(queue))


class RecoveryStack(Stack):
    """The stack on a Redis server of this module's own, and PostgreSQL through a proxy."""

    proxy: TcpProxy | None = None  # between every process of the stack and PostgreSQL


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed: the Redis restart tests need their own")
    assert binary is not None
    server = RedisServer(binary, tmp_path_factory.mktemp("redis-data"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RecoveryStack]:
    root = tmp_path_factory.mktemp("recovery")
    with postgres_database() as database_url:
        from sqlalchemy.engine import make_url

        parsed = make_url(database_url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        env = LEASE | {"DATABASE_URL": proxied, "REDIS_URL": redis_server.url}
        try:
            with production_stack(root, env, "recovery", RecoveryStack) as service:
                # The tests read the jobs table past the proxy (which they cut).
                service.database_url, service.proxy = database_url, proxy
                yield service
        finally:
            proxy.close()


@pytest.fixture(scope="module")
def reference() -> dict[int, dict[str, float]]:
    return reference_run(RESUME_SPEC)


def test_queued_jobs_survive_a_redis_restart(stack: Stack, redis_server: RedisServer) -> None:
    # No worker yet: the jobs wait in Redis.
    jobs = [stack.submit({**SHORT_SPEC, "name": f"queued-{i}"})["id"] for i in range(3)]
    assert redis_server.queued("cpu") == 3
    redis_server.stop()
    # While Redis is down a submit fails with 503 (the job is stored as failed, not lost).
    down = stack.http.post("/v1/jobs", json=SHORT_SPEC)
    assert down.status_code == 503 and "could not queue the job" in down.json()["detail"]
    redis_server.start()
    assert redis_server.queued("cpu") == 3  # the append-only file kept them
    jobs.append(stack.submit({**SHORT_SPEC, "name": "after-restart"})["id"])
    worker = stack.start_worker("worker-redis")
    try:
        for job_id in jobs:
            assert stack.wait(job_id, timeout=120)["status"] == "succeeded"
    finally:
        kill(worker)


def test_the_same_job_delivered_twice_runs_once(stack: Stack, redis_server: RedisServer) -> None:
    from celery import Celery

    worker = stack.start_worker("worker-twice")
    sender = Celery(broker=redis_server.url, set_as_current=False)
    try:
        job = stack.submit({**RESUME_SPEC, "name": "twice"})
        sender.send_task("training.run", args=[job["id"]], queue="cpu")  # a second delivery
        final = stack.wait(job["id"], timeout=180)
        assert final["status"] == "succeeded" and final["attempt"] == 1
        sender.send_task("training.run", args=[job["id"]], queue="cpu")  # and after its end
        wait_for("the worker to skip both extra deliveries",
                 lambda: stack.log("worker-twice").count("this delivery does nothing") >= 2, 30,
                 detail=stack.tail)  # fmt: skip
        row = stack.row(job["id"])
        assert row["attempt"] == 1 and row["status"] == "succeeded"
        assert set(row["rows"]) == set(range(1, 11)) and len(set(row["rows"].values())) == 1
    finally:
        sender.close()
        kill(worker)


def test_a_killed_worker_is_replaced_and_the_job_resumes(
    stack: Stack, reference: dict[int, dict[str, float]]
) -> None:
    first = stack.start_worker("worker-doomed")
    job = stack.submit(RESUME_SPEC)
    stack.wait(job["id"], until=lambda j: j["epoch"] >= 3 and j["best"]["checkpoint_id"],
               timeout=180, what="to pass epoch 3 with a checkpoint stored")  # fmt: skip
    # The job runs in the worker's own process (the solo pool): no pool process to lose.
    assert stack.row(job["id"])["worker"].rpartition("/")[2] == str(first.pid)
    kill(first)  # SIGKILL, as the OOM killer does
    killed_at = stack.job(job["id"])["epoch"]
    assert killed_at < 10
    second = stack.start_worker("worker-new")  # as a container's restart policy would
    try:
        final = stack.wait(job["id"], timeout=180)
        assert final["status"] == "succeeded" and final["attempt"] == 2, final
        worst = assert_same_metrics(stack, job["id"], reference, 1e-6)
        assert "queued again to resume" in stack.log("worker-new")
        # Checkpoints are written while the next epochs train: the last durable one is at or
        # behind the last committed epoch.
        resumed = [
            int(e) for e in re.findall(r"resumes after epoch (\d+)", stack.log("worker-new"))
        ]
        assert len(resumed) == 1 and 1 <= resumed[0] <= killed_at, stack.log("worker-new")
        log.info("worker killed after epoch %d: largest metric gap %.2e", killed_at, worst)
    finally:
        kill(second)


# Longer, so that the worker is stopped mid-job.
PREEMPT_SPEC: dict[str, Any] = {
    **RESUME_SPEC,
    "name": "preempted",
    "training": {**RESUME_SPEC["training"], "epochs": 40},
}


@pytest.fixture(scope="module")
def preempt_reference() -> dict[int, dict[str, float]]:
    return reference_run(PREEMPT_SPEC)


def test_a_stopped_worker_hands_its_job_to_another_at_once(
    stack: Stack, preempt_reference: dict[int, dict[str, float]]
) -> None:
    """SIGTERM (a redeploy, a spot machine taken back): the job stops at its next step, and
    another worker resumes it from its last checkpoint at once, not after the lease timeout."""
    # Leases that outlive the test: only the stopping worker's hand back can move the job.
    no_sweep = {"DESCENT_LEASE_TIMEOUT_SECONDS": "600", "DESCENT_SWEEP_SECONDS": "600"}
    workers = {name: stack.start_worker(name, no_sweep) for name in ("spot-a", "spot-b")}
    try:
        job = stack.submit(PREEMPT_SPEC)
        stack.wait(job["id"], until=lambda j: j["epoch"] >= 2, timeout=180, what="to pass epoch 2")
        holder = stack.row(job["id"])["worker"].rpartition("/")[2]
        [doomed] = [name for name, process in workers.items() if str(process.pid) == holder]
        [standby] = [name for name in workers if name != doomed]
        reached = stack.job(job["id"])["epoch"]
        stopped = time.monotonic()
        workers[doomed].send_signal(signal.SIGTERM)

        def on_standby() -> bool:
            return (stack.row(job["id"])["worker"] or "").endswith(f"/{workers[standby].pid}")

        wait_for("the other worker to take the job", on_standby, 10, interval=0.02,
                 detail=stack.tail)  # fmt: skip
        resumed_in = time.monotonic() - stopped
        # The stopping worker exits cleanly well within its grace period.
        assert workers[doomed].wait(timeout=scaled(10)) == 0, stack.tail()
        final = stack.wait(job["id"], timeout=180)
        # A preemption is not a failed attempt.
        assert final["status"] == "succeeded" and final["attempt"] == 1, final
        worst = assert_same_metrics(stack, job["id"], preempt_reference, 1e-6)
        handed = re.search(r"queued again to resume after epoch (\d+)", stack.log(doomed))
        assert handed, stack.tail()
        epoch = int(handed[1])
        # Every epoch finished before the signal is kept: at most the one running is redone.
        assert reached <= epoch < PREEMPT_SPEC["training"]["epochs"]
        assert f"resumes after epoch {epoch}" in stack.log(standby)
        assert resumed_in < scaled(3), resumed_in
        log.info(
            "SIGTERM after epoch %d: resumed on the other worker in %.2f s after epoch %d; "
            "largest metric gap %.2e", reached, resumed_in, epoch, worst,
        )  # fmt: skip
    finally:
        for process in workers.values():
            if process.poll() is None:
                kill(process)


def test_a_database_outage_answers_503_and_loses_no_epoch(
    stack: RecoveryStack, reference: dict[int, dict[str, float]]
) -> None:
    proxy = stack.proxy
    assert proxy is not None
    worker = stack.start_worker("worker-db")
    try:
        job = stack.submit(RESUME_SPEC)
        stack.wait(job["id"], until=lambda j: j["epoch"] >= 3, timeout=180, what="to pass epoch 3")
        proxy.cut()
        try:
            response = stack.http.get(f"/v1/jobs/{job['id']}")
            assert response.status_code == 503, response.text
            assert response.json()["detail"].startswith("database unavailable")
            assert response.elapsed.total_seconds() < scaled(10)  # an answer, not a hang
            # The worker's next epoch cannot commit meanwhile.
            wait_for("the worker to lose its database connection",
                     lambda: "lost connection" in stack.log("worker-db"), 60,
                     detail=stack.tail)  # fmt: skip
        finally:
            proxy.restore()
        final = stack.wait(job["id"], timeout=180)
        assert final["status"] == "succeeded", final
        assert_same_metrics(stack, job["id"], reference, 1e-6)
        assert "lost connection" in stack.log("worker-db")
    finally:
        kill(worker)


def test_the_api_keeps_answering_after_the_tests(stack: Stack) -> None:
    # The API process lived through Redis and database restarts without being restarted.
    assert stack.http.get("/healthz").status_code == 200
    assert httpx.get(f"{stack.url}/v1/jobs", timeout=10).status_code == 401
