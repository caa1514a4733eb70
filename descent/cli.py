"""The ``descent`` command: one entry point for every process the service runs.

    descent serve     the embedded default: migrate, one worker, the API (one command)
    descent migrate   bring the database to the latest schema (production: run once per deploy)
    descent api       the HTTP API only (production)
    descent worker    one Celery worker (production: one per GPU, or CPU)

and the user's commands, which talk to a running service (descent/commands.py):
submit, jobs, show, metrics, cancel, download; and the admin's (descent/admin.py):
users, tokens.

Heavy imports (uvicorn, SQLAlchemy, the API) happen inside the commands, so ``--help`` is fast.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

API_APP = "api.main:app"
CELERY_APP = "worker.app:celery_app"
# How long a stopping worker may spend on its running task before it is stopped cold;
# the job then resumes from its last checkpoint on the next start.
WORKER_GRACE_SECONDS = 10.0
# How long a stopping API waits for open requests: an event stream stays open as long as its
# job runs, so it is cut after this (its client reconnects with Last-Event-ID, missing nothing).
SHUTDOWN_GRACE_SECONDS = 5


def worker_command(queues: str, concurrency: int, name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", queues, "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", name,
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
    command = worker_command(args.queues, args.concurrency, args.name)
    os.execv(command[0], command)
    return 0  # not reached


class _Stop(Exception):
    """Raised by the signal handler, so that the worker is stopped on the way out."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In the worker's child process, before exec: stop cold if `descent serve` is killed."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGQUIT)


def _start_worker(settings_env: dict[str, str], queues: str) -> subprocess.Popen[bytes]:
    command = worker_command(queues, 1, "descent-embedded@%h")
    # Its own session: a Ctrl-C in the terminal reaches only `descent serve`, which then
    # stops the worker in order (warm first, cold after a grace period).
    return subprocess.Popen(
        command,
        env={**os.environ, **settings_env},
        start_new_session=True,
        preexec_fn=_die_with_parent,  # safe here: no other thread runs yet
    )


def _watch_worker(proc: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    code = proc.wait()
    if not stopping.is_set():
        print(
            f"descent: the worker stopped (exit code {code}); jobs stay queued until a worker "
            "runs again (restart `descent serve`, or run `descent worker --queues cpu,gpu`)",
            file=sys.stderr,
            flush=True,
        )


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    print(
        f"descent: stopping the worker; a running job gets {WORKER_GRACE_SECONDS:.0f} s, "
        "then resumes from its last checkpoint at the next start",
        file=sys.stderr,
        flush=True,
    )
    # SIGTERM is Celery's warm shutdown (finish the running task), SIGQUIT its cold one.
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        proc.send_signal(sig)
        try:
            proc.wait(WORKER_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    from descent.migrate import upgrade
    from descent.settings import get_settings

    settings = get_settings()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()
    try:
        upgrade()
        from descent.admin import serve_token

        serve_token(settings.data_dir)
        if not args.no_worker:
            worker = _start_worker(
                {"DESCENT_DATA_DIR": str(settings.data_dir)},
                f"{settings.cpu_queue},{settings.gpu_queue}",
            )
            print(f"descent: worker started (pid {worker.pid})", file=sys.stderr, flush=True)
            threading.Thread(target=_watch_worker, args=(worker, stopping), daemon=True).start()
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
        stopping.set()
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # let the worker stop in order
        if worker is not None:
            _stop_worker(worker)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="descent", description="Descent: hosted PyTorch training jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("worker", help="run one Celery worker (production)")
    p.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu (default: cpu)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default: 1)")
    p.add_argument("--name", default="descent@%h", help="Celery node name (default: descent@%%h)")
    p.set_defaults(func=cmd_worker)

    from descent.commands import add_client_commands

    add_client_commands(sub)

    from descent.admin import add_admin_commands

    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
