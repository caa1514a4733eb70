"""The ``descent`` command: one entry point for every process the service runs.

    descent serve     the embedded default: migrate, one worker, the API (one command)
    descent migrate   bring the database to the latest schema (production: run once per deploy)
    descent api       the HTTP API only (production)
    descent worker    one Celery worker process, one job at a time (production: one per GPU,
                      and as many as wanted for CPU; the container runtime restarts it)

and the admin's (descent/admin.py): users, tokens. The ``descent`` command itself is the
client's (the ``descent-client`` distribution, descent_client/cli.py, which holds the user's
commands that talk to a running service: submit, wait, jobs, show, metrics, cancel,
download, export, datasets, weights, study); the service adds the commands above to it
through the entry point ``descent.commands`` (pyproject.toml), with add_service_commands.

Heavy imports (uvicorn, SQLAlchemy, the API) happen inside the commands, so ``--help`` is fast.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

API_APP = "api.main:app"
CELERY_APP = "worker.app:celery_app"
# How long a stopping worker may take before it is killed. On SIGTERM its running job stops
# at its next training step and is queued again (worker/tasks.py), to resume from the last
# checkpoint: a step, and a checkpoint write should the signal come during one, fit in it.
WORKER_GRACE_SECONDS = 10.0
# `descent serve` starts its worker again when it dies (the kernel's OOM killer, a crash):
# after 1 s, doubling up to 60 s while it keeps dying within a minute of its start.
RESTART_BACKOFF_SECONDS = (1.0, 60.0)
RESTART_STABLE_SECONDS = 60.0
# How long a stopping API waits for open requests: an event stream stays open as long as its
# job runs, so it is cut after this (its client reconnects with Last-Event-ID, missing nothing).
SHUTDOWN_GRACE_SECONDS = 5


def worker_command(queues: str, name: str) -> list[str]:
    """A Celery worker whose solo pool runs each task in the worker's own process, one at a
    time. No pool child to lose: with a prefork pool, a child killed while idle (as the OOM
    killer does) left the worker receiving tasks and never running one. A killed solo worker
    is simply gone; its supervisor starts it again, and the job's lease, once stale, lets the
    sweeper queue the job again to resume from its last checkpoint.

    Without mingle and gossip: Descent revokes no task (a cancel is the job's flag) and reads
    no worker events, so a start need not sync with the other workers (about a second)."""
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--pool", "solo",
        "-Q", queues, "--loglevel", "INFO", "-n", name, "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from descent.migrate import upgrade
    from descent.settings import get_settings

    upgrade()
    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    print(f"descent: {url} is at the latest schema")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        API_APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process, so the container's stop signal reaches Celery itself.
    command = worker_command(args.queues, args.name)
    os.execv(command[0], command)
    return 0  # not reached


class _Stop(Exception):
    """Raised by the signal handler, so that the worker is stopped on the way out."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _parent_death_signal() -> Callable[[], None] | None:
    """For the worker's child process, before exec: be killed when `descent serve` dies.

    Linux sends it when the *thread* that started the child ends: the supervisor's thread,
    which lives as long as the worker it waits on. libc is looked up here, in the parent, so
    that the forked child only makes one call before exec."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return set_signal


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class WorkerSupervisor(threading.Thread):
    """Runs the embedded worker, and starts it again whenever it dies, with a backoff.

    A job the dead worker was running is still marked running under its lease; once the
    lease is stale, the new worker's sweeper queues it again, and it resumes from its last
    checkpoint (its attempt counts one more)."""

    def __init__(self, env: dict[str, str], queues: str) -> None:
        super().__init__(name="descent-worker-supervisor", daemon=True)
        self.env, self.queues = env, queues
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._preexec = _parent_death_signal()

    def _start(self) -> subprocess.Popen[bytes] | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            # Its own session: a Ctrl-C in the terminal reaches only `descent serve`, which
            # then stops the worker in order (warm first, killed after a grace period).
            self.process = subprocess.Popen(
                worker_command(self.queues, "descent-embedded@%h"),
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        _say(f"worker started (pid {self.process.pid})")
        return self.process

    def run(self) -> None:
        delay = RESTART_BACKOFF_SECONDS[0]
        while (process := self._start()) is not None:
            started = time.monotonic()
            code = process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started >= RESTART_STABLE_SECONDS:
                delay = RESTART_BACKOFF_SECONDS[0]
            _say(
                f"the worker stopped ({_exit_reason(code)}); starting it again in {delay:.0f} s "
                "(a job it was running resumes from its last checkpoint)"
            )
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_BACKOFF_SECONDS[1])

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: the running job stops at its next step and is queued
        again) for WORKER_GRACE_SECONDS, then SIGKILL. The solo pool runs the task in the
        worker's main thread, where Celery's cold shutdown (SIGQUIT) only takes effect once
        the task returns."""
        with self.lock:
            self.stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        _say(
            "stopping the worker; a running job stops at its next step and resumes from its "
            "last checkpoint at the next start"
        )
        process.send_signal(signal.SIGTERM)
        self.join(WORKER_GRACE_SECONDS)
        if self.is_alive():
            process.kill()
            self.join()


def _say(message: str) -> None:
    print(f"descent: {message}", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from descent.migrate import upgrade
    from descent.settings import get_settings

    settings = get_settings()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    supervisor: WorkerSupervisor | None = None
    try:
        upgrade()
        from descent.admin import serve_token

        serve_token(settings.data_dir)
        if not args.no_worker:
            supervisor = WorkerSupervisor(
                {"DESCENT_DATA_DIR": str(settings.data_dir)},
                f"{settings.cpu_queue},{settings.gpu_queue}",
            )
            supervisor.start()
        print(
            f"Descent on http://{args.host}:{args.port} (API docs at /docs); "
            f"data in {settings.data_dir}",
            flush=True,
        )
        import uvicorn

        # uvicorn handles SIGINT/SIGTERM itself, then hands the signal back to our handler.
        uvicorn.run(
            API_APP,
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    except _Stop:
        pass
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # let the worker stop in order
        if supervisor is not None:
            supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def add_service_commands(sub: Any) -> None:
    """The service's commands, added to the ``descent`` parser's subcommands (the entry
    point ``descent.commands``)."""
    p = sub.add_parser(
        "serve",
        help="start everything on this machine: migrate, one worker, the API",
        description="The embedded default: SQLite and a serverless broker in the data folder "
        "(DESCENT_DATA_DIR, ./data), one Celery worker, and the API in the foreground.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-worker", action="store_true", help="start the API only")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="bring the database to the latest schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help="run the HTTP API (production; no migrations)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser(
        "worker",
        help="run one Celery worker (production)",
        description="One worker process, running one job at a time in its own process (Celery's "
        "solo pool): run as many workers as jobs should run at once, under a supervisor that "
        "starts a dead one again (compose's restart policy, systemd).",
    )
    p.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu (default: cpu)")
    p.add_argument(
        "--concurrency",
        type=int,
        choices=[1],
        default=1,
        help="jobs run at once: always 1 (kept for older command lines; run more workers)",
    )
    p.add_argument("--name", default="descent@%h", help="Celery node name (default: descent@%%h)")
    p.set_defaults(func=cmd_worker)

    from descent.admin import add_admin_commands

    add_admin_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``descent`` parser: the service's commands and the client's."""
    from descent_client.cli import build_parser as client_parser

    return client_parser([add_service_commands])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m descent``: the same as the ``descent`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
