"""The real service in subprocesses, reached over real HTTP (used by tests and benchmarks).

- ``embedded``: ``python -m descent serve`` — the README's one-command start (SQLite, the
  SQLAlchemy broker transport, one worker process) in a temporary data folder.
- ``redis``: PostgreSQL + Redis, with ``descent migrate``, ``descent worker`` and
  ``descent api`` (the commands compose runs), in this run's own database and Redis key space.
"""

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.timing import scaled, wait_for

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}
# uvicorn's access log: `INFO:     127.0.0.1:5000 - "GET /v1/jobs/… HTTP/1.1" 200 OK`
ACCESS_LINE = re.compile(r'INFO: +[^ ]+ - "')
# Every service started and not yet stopped: a failing test shows their log tails.
LIVE: list["Service"] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Where `descent serve` writes the local user's token (read once the service answers).
    token_file: Path | None = None

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=scaled(30))
        LIVE.append(self)

    def authorize(self, token: str) -> None:
        """Send this API token with every request of ``self.http``."""
        self.http.headers["Authorization"] = f"Bearer {token}"

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(
        self,
        job_id: str,
        until: Any = None,
        timeout: float = 90,
        what: str = "",
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """Poll the job every ``interval`` seconds until ``until(job)`` holds (default: it
        has ended); ``timeout`` is scaled with the machine, ``what`` names the awaited state
        in a failure."""
        what = what or ("to end" if until is None else "to reach the awaited state")
        until = until or (lambda job: job["status"] in TERMINAL)
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            last.update(self.job(job_id))
            if until(last):
                return dict(last)
            if last["status"] in TERMINAL:  # it will not change any more: say so now
                raise AssertionError(
                    f"job {job_id} ended ({last['status']}: {last.get('error')}) instead of "
                    f"{what}: {last}\n{self.tail()}"
                )
            return None

        return wait_for(
            f"job {job_id} {what}",
            check,
            timeout,
            interval=interval,
            detail=lambda: f"its last state: {last}\n{self.tail()}",
        )

    def metrics(self, job_id: str, **params: Any) -> list[dict[str, Any]]:
        """Every epoch record so far, following the cursor until a page brings nothing new."""
        items: list[dict[str, Any]] = []
        after = params.pop("after", 0)
        for _ in range(100_000):
            response = self.http.get(
                f"/v1/jobs/{job_id}/metrics", params={"after": after, **params}
            )
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            if not page["items"] or page["next"] is None or page["next"] == after:
                return items
            after = page["next"]
        raise AssertionError(f"the metrics cursor of job {job_id} never ended")

    def log_text(self) -> str:
        """Every log of this service, concatenated (the embedded worker logs into serve's)."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def tail(self, lines: int = 60, requests: int = 5) -> str:
        """The last lines of each of this service's logs (its API's and its workers'): the
        last ``lines`` apart from the access log, then its last ``requests`` lines (a test's
        own polling would fill the tail otherwise)."""
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()
            access = [line for line in text if ACCESS_LINE.match(line)]
            other = [line for line in text if not ACCESS_LINE.match(line)]
            out.append(f"--- {path.name}\n" + "\n".join(other[-lines:]))
            if access:
                out.append(f"--- {path.name}, its last requests\n" + "\n".join(access[-requests:]))
        return "\n".join(out)

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``python *args`` in the service's environment (with ``env`` over it)."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"service process exited {process.returncode}\n{self.tail()}"
                    )
            try:
                if self.http.get("/healthz").status_code != 200:
                    return False
            except httpx.TransportError:
                return False
            if self.token_file is not None and "authorization" not in self.http.headers:
                self.authorize(self.token_file.read_text().strip())
            return True

        wait_for(f"the service at {self.url} to answer /healthz", healthy, timeout,
                 interval=0.1, detail=self.tail)  # fmt: skip

    def worker_ready(self, timeout: float = 120, count: int = 1) -> None:
        """Celery logs 'ready.' once it consumes; jobs sent earlier still wait, but tests
        that time things should not count the worker's start-up. ``count``: how many worker
        starts to wait for (a restarted worker logs it again)."""
        wait_for(f"{count} worker start(s) ('ready.' in the logs)",
                 lambda: self.log_text().count("ready.") >= count, timeout,
                 interval=0.1, detail=self.tail)  # fmt: skip

    def stop(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        self.http.close()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                # `descent serve` gives its worker's running job 10 s before killing it.
                process.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def base_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DESCENT_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(DESCENT_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env


def start_embedded(root: Path, env: dict[str, str] | None = None) -> Service:
    """``python -m descent serve``: the README's one-command start, in ``root`` (with
    ``env`` over its environment)."""
    port = free_port()
    data = root / "data"
    environment = base_env(data) | (env or {})
    service = Service(f"http://127.0.0.1:{port}", environment, root, token_file=data / "token")
    service.start("serve", "-m", "descent", "serve", "--port", str(port))
    return service


def make_token(env: dict[str, str], user: str) -> str:
    """``descent users create USER`` (if new) and ``descent tokens create USER``: the token."""
    command = [sys.executable, "-m", "descent"]
    made = subprocess.run(
        [*command, "users", "create", user], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0 or "already exists" in made.stderr, made.stderr
    result = subprocess.run(
        [*command, "tokens", "create", user],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def start_production(
    root: Path, database_url: str, redis_url: str, prefix: str, extra: dict[str, str] | None = None
) -> Service:
    """``descent migrate``, ``descent worker`` and ``descent api``: the commands compose runs
    (the worker's first queue is cpu: a worker whose first queue is gpu needs CUDA); ``extra``
    adds to their environment (an S3 store, say)."""
    port = free_port()
    env = (
        base_env(root / "data")
        | {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DESCENT_BROKER_KEY_PREFIX": prefix,
        }
        | (extra or {})
    )
    service = Service(f"http://127.0.0.1:{port}", env, root)
    subprocess.run([sys.executable, "-m", "descent", "migrate"], cwd=ROOT, env=env, check=True)
    service.authorize(make_token(env, "e2e"))
    service.start("worker", "-m", "descent", "worker", "--queues", "cpu,gpu",
                  "--name", f"e2e-{port}@%h")  # fmt: skip
    service.start("api", "-m", "descent", "api", "--host", "127.0.0.1", "--port", str(port))
    return service


def running(service: Service) -> Iterator[Service]:
    """Wait until the service answers and its worker consumes; stop it afterwards."""
    try:
        service.wait_healthy()
        service.worker_ready()
        yield service
    finally:
        service.stop()


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def is_celery(pid: int) -> bool:
    try:
        return b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
