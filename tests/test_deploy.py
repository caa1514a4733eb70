"""The ways to run the service agree with each other: the README's commands, the Makefile,
.ci/run, the Dockerfile, docker-compose.yml and the `descent` command line."""

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from descent.cli import build_parser
from descent.settings import Settings
from store.db import make_engine
from tests import timing
from tests.conftest import unavailable
from tests.e2e.service import children
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
# The Compose file format's JSON schema (Apache-2.0, see tests/compose-spec/NOTICE): the
# compose file is checked without a Docker engine.
COMPOSE_SCHEMA = ROOT / "tests" / "compose-spec" / "compose-spec.json"
SUBCOMMANDS = {"serve", "migrate", "api", "worker"}


def read(name: str) -> str:
    return (ROOT / name).read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(read("docker-compose.yml"))


def descent_commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: service["command"]
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("descent")
    }


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The file names draft-07 by a URL jsonschema does not recognize; say it explicitly.
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_compose_runs_every_process_of_the_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres", "redis", "s3", "s3-bucket", "migrate", "api", "worker-gpu-0", "worker-cpu"
    }  # fmt: skip
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-gpu-0", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"

    assert descent_commands(compose) == {
        "migrate": ["descent", "migrate"],
        "api": ["descent", "api", "--host", "0.0.0.0", "--port", "8000"],
        "worker-gpu-0": ["descent", "worker", "--queues", "gpu,cpu"],
        "worker-cpu": ["descent", "worker", "--queues", "cpu"],
    }
    assert services["api"]["ports"] == ["8000:8000"]
    # A dead worker is started again; a stopping one has time to hand its job back.
    workers = [name for name in services if name.startswith("worker")]
    assert workers == ["worker-gpu-0", "worker-cpu"]
    for name in workers:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["stop_grace_period"] == "30s", name
    assert (
        "deploy" not in services["worker-cpu"]
        or "reservations" not in (services["worker-cpu"]["deploy"]["resources"])
    )


def test_checkpoints_and_uploads_go_to_the_s3_service_and_its_bucket(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:")  # Apache-2.0
    assert "-s3" in s3["command"] and "s3data:/data" in s3["volumes"]
    bucket = services["s3-bucket"]
    assert "create-bucket --bucket descent" in bucket["command"][0]
    assert bucket["restart"] == "no"
    assert bucket["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?")
    for name in ("api", "worker-gpu-0", "worker-cpu"):
        service = services[name]
        env = service["environment"]
        assert env["DESCENT_ARTIFACTS_URL"] == "s3://descent/artifacts", name
        assert env["DESCENT_S3_ENDPOINT_URL"] == "http://s3:8333", name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?"), name
        assert service["depends_on"]["s3-bucket"]["condition"] == "service_completed_successfully"
        # No volume shared for artifacts: a worker may run on any host.
        assert not any(v.endswith(":/artifacts") for v in service.get("volumes", [])), name
    assert "secretKey" in compose["configs"]["s3_identities"]["content"]


def test_postgres_is_healthy_only_once_it_answers_over_tcp(compose: dict[str, Any]) -> None:
    # Without -h, pg_isready answers on the local socket, while the image's first-start
    # server does not listen on TCP yet: migrate then ran too early and failed.
    test = shlex.split(" ".join(compose["services"]["postgres"]["healthcheck"]["test"][1:]))
    assert test[0] == "pg_isready"
    assert test[test.index("-h") + 1] == "127.0.0.1"


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if "gpu" in d["capabilities"]]


def test_each_gpu_worker_is_pinned_to_its_own_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pinned: list[str] = []
    for name, service in services.items():
        devices = gpu_devices(service)
        if not devices:
            continue
        # device_ids, not count: every replica of a `count: 1` service shares the same GPU.
        assert [d.get("count") for d in devices] == [None], name
        assert len(devices[0]["device_ids"]) == 1, name
        pinned += devices[0]["device_ids"]
        # A GPU worker takes the gpu queue first (cpu jobs only while no cuda job waits).
        command = service["command"]
        assert command[command.index("--queues") + 1].split(",")[0] == "gpu", name
    assert pinned == ["0"]
    assert len(set(pinned)) == len(pinned)


def test_the_database_password_is_required_and_kept_out_of_urls_and_images(
    compose: dict[str, Any],
) -> None:
    text = read("docker-compose.yml")
    assert "${POSTGRES_PASSWORD:-" not in text  # no known fallback password
    postgres = compose["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert compose["secrets"]["postgres_password"] == {"environment": "POSTGRES_PASSWORD"}
    for name in ("migrate", "api", "worker-gpu-0", "worker-cpu"):
        service = compose["services"][name]
        assert make_url(service["environment"]["DATABASE_URL"]).password is None, name
        assert "postgres_password" in service["secrets"], name
        secret = service["environment"]["DESCENT_DATABASE_PASSWORD_FILE"]
        assert secret == "/run/secrets/postgres_password", name
    # The README says to put the password in .env: it must reach neither git nor an image.
    assert {".env", "secrets"} <= set(read(".dockerignore").split())
    assert {".env", "secrets/"} <= set(read(".gitignore").split())


def test_a_password_file_is_quoted_into_the_database_url(
    tmp_path: Path, postgres_url: str, configure: Callable[..., Settings]
) -> None:
    password = "p@ss:w/o%rd #?&é"
    (tmp_path / "password").write_text(password + "\n")
    bare = make_url(postgres_url).set(password=None).render_as_string(hide_password=False)
    settings = configure(
        DATABASE_URL=bare, DESCENT_DATABASE_PASSWORD_FILE=str(tmp_path / "password")
    )
    url = make_url(settings.database_url)
    assert url.password == password
    assert (url.host, url.port, url.database) == (
        make_url(bare).host, make_url(bare).port, make_url(bare).database
    )  # fmt: skip
    engine = make_engine(settings.database_url, pooled=False)  # (this server trusts any password)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
    finally:
        engine.dispose()


def test_workers_have_limits_and_as_many_threads_as_cpus(compose: dict[str, Any]) -> None:
    for name in ("worker-gpu-0", "worker-cpu"):
        service = compose["services"][name]
        limits = service["deploy"]["resources"]["limits"]
        cpus = int(float(limits["cpus"]))
        assert cpus >= 1 and limits["memory"], name
        env = service["environment"]
        assert int(env["DESCENT_WORKER_THREADS"]) == int(env["OMP_NUM_THREADS"]) == cpus, name


def dockerfile_stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by its name."""
    stages: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", read("Dockerfile"))
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[-1].strip(), [])
        current.append(line)
    return stages


def test_images_install_dependencies_before_the_source() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["base", "api", "worker"]
    assert stages["base"][0] == "FROM python:3.11-slim AS base"
    assert not any(line.startswith("COPY . .") for line in stages["base"])
    for name in ("api", "worker"):
        lines = stages[name]
        assert lines[0] == f"FROM base AS {name}"
        copy = lines.index("COPY . .")
        # After the source only the projects themselves are installed, without dependencies.
        assert [line for line in lines[copy:] if "pip install" in line] == [
            "RUN pip install --no-deps -e ./client -e ."
        ]
        assert [line for line in lines if line.startswith("USER")] == ["USER descent"]  # not root
        assert lines.index("USER descent") > copy
    # The base (the API's image) installs the lock without torch; the worker adds torch's.
    # (tests/test_dependencies.py checks what each lock holds.)
    installs = {
        name: [line for line in lines if "pip install" in line] for name, lines in stages.items()
    }
    assert installs["base"] == ["RUN pip install -r requirements-api.lock"]
    assert installs["worker"][0] == "RUN pip install -r requirements-worker.lock"
    for pattern in (".venv", "data", ".git"):
        assert pattern in read(".dockerignore").split()


def test_images_run_as_a_user_who_owns_the_data_folder() -> None:
    base = "\n".join(dockerfile_stages()["base"])
    assert "DESCENT_DATA_DIR=/data" in base
    assert re.search(r"useradd [^&\n]*--uid 1000 descent", base)
    made = re.search(r"mkdir -p ([^&\n]+)&& chown descent:descent ([^&\n]+)", base)
    assert made, base
    assert set(made.group(1).split()) == set(made.group(2).split()) >= {
        "/data", "/artifacts", "/torch-cache"
    }  # fmt: skip


def test_compose_builds_the_slim_image_for_the_api_and_migrations(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    targets = {name: s["build"]["target"] for name, s in services.items() if "build" in s}
    assert targets == {
        "migrate": "api", "api": "api", "worker-gpu-0": "worker", "worker-cpu": "worker"
    }  # fmt: skip


def test_the_api_and_migrations_run_without_torch(tmp_path: Path) -> None:
    """What the slim image runs: `descent migrate`, the CLI and the API, torch absent."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['torchvision'] = None  # any import raises\n"
        "import api.main\n"
        "from descent.cli import main\n"
        "raise SystemExit(main(['migrate']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=embedded_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "descent.db").is_file()


def test_compose_and_dockerfile_use_commands_the_cli_has(compose: dict[str, Any]) -> None:
    parser = build_parser()
    commands = list(descent_commands(compose).values())
    cmds = re.findall(r"^CMD (\[.*\])$", read("Dockerfile"), re.MULTILINE)
    assert len(cmds) == 2, "the api and worker stages each end in an exec-form CMD"
    commands += [json.loads(cmd) for cmd in cmds]
    for command in commands:
        assert command[0] == "descent"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown option


def test_ci_and_readme_name_the_same_commands() -> None:
    targets = set(re.findall(r"^([a-z]+):", read("Makefile"), re.MULTILINE))
    assert {"install", "serve", "test", "lint", "bench"} <= targets
    ci = read(".ci/run").splitlines()
    assert "set -euo pipefail" in ci
    assert "make test" in ci
    assert "make lint" in ci
    readme = read("README.md")
    assert "make serve" in readme
    assert "make test" in readme
    assert "docker compose up" in readme


def test_cli_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "descent", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def embedded_env(tmp_path: Path) -> dict[str, str]:
    """This environment, pointed at the embedded default in a temporary data folder."""
    env = {**os.environ, "DESCENT_DATA_DIR": str(tmp_path / "data")}
    for key in ("DATABASE_URL", "DESCENT_DATABASE_URL", "REDIS_URL", "DESCENT_BROKER_URL"):
        env.pop(key, None)
    return env


def test_cli_migrate_creates_the_embedded_database(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "descent", "migrate"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=embedded_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "descent.db").is_file()
    assert "latest schema" in result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """tests.timing.wait_for: ``timeout`` scales with the machine."""
    return timing.wait_for(what, predicate, timeout, interval=0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Serve:
    """`descent serve` on a free port, in a temporary data folder, started and healthy."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        if not (ROOT / "api" / "main.py").is_file():
            unavailable("api/main.py does not exist yet")
        self.port = free_port()
        self.data = tmp_path / "data"
        self.out, self.err = tmp_path / "serve.out", tmp_path / "serve.err"
        self.worker_pid = 0
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "descent", "serve", "--port", str(self.port), *args],
                cwd=ROOT, env=embedded_env(tmp_path), stdout=stdout, stderr=stderr,
            )  # fmt: skip
        wait_for(self.healthy, 120, "/healthz")
        if "--no-worker" in args:
            return
        match = re.search(r"worker started \(pid (\d+)\)", self.stderr())
        assert match, self.stderr()
        self.worker_pid = int(match.group(1))
        # Celery logs "<node name> ready." once it consumes from the broker.
        wait_for(self.worker_ready, 120, "the worker to be ready")

    def worker_ready(self) -> bool:
        assert alive(self.worker_pid), f"the worker died:\n{self.stderr()}"
        return re.search(r"descent-embedded@\S+ ready\.", self.stderr()) is not None

    def stderr(self) -> str:
        return self.err.read_text()

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.stderr()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timing.scaled(60))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.worker_pid and alive(self.worker_pid):
            os.kill(self.worker_pid, signal.SIGQUIT)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The API's JSON answer, with the local user's token that serve wrote."""
        token = (self.data / "token").read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timing.scaled(30)) as response:
            return json.loads(response.read())

    def job_row(self, job_id: str) -> tuple[Any, ...]:
        with contextlib.closing(sqlite3.connect(self.data / "descent.db")) as db:
            row = db.execute(
                "SELECT status, worker, heartbeat_at, attempt, epoch FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        return tuple(row)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started = Serve(tmp_path)
    yield started
    started.kill()


def test_serve_runs_the_api_and_one_worker_then_stops_both(serve: Serve) -> None:
    assert f"http://127.0.0.1:{serve.port}" in serve.out.read_text()
    assert alive(serve.worker_pid)
    assert serve.stop() == 0, serve.stderr()
    assert not alive(serve.worker_pid)
    assert "the worker stopped" not in serve.stderr()  # stopped on purpose: not reported


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_no_worker_runs_the_api_alone(tmp_path: Path) -> None:
    serve = Serve(tmp_path, "--no-worker")
    try:
        job = serve.request("POST", "/v1/jobs", {"dataset": {"name": "iris"}, "name": "waits"})
        assert job["status"] == "queued"
        assert children(serve.proc.pid) == []  # no worker process
        assert "worker started" not in serve.stderr()
        assert serve.request("GET", f"/v1/jobs/{job['id']}")["status"] == "queued"
        assert serve.stop() == 0, serve.stderr()
    finally:
        serve.kill()


def test_stopping_serve_mid_job_queues_the_job_again_for_the_next_start(
    serve: Serve,
) -> None:
    """SIGTERM to `descent serve`: its worker stops the job at the next step and queues it
    again (the embedded broker keeps the message), well within the worker's grace period."""
    spec = {
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp", "hidden": [32]},
        "training": {"epochs": 10000, "batch_size": 16, "device": "cpu"},
        "name": "long",
    }
    job = serve.request("POST", "/v1/jobs", spec)
    wait_for(lambda: serve.job_row(job["id"])[4] >= 2, 120, "the job to pass epoch 2")
    started = time.monotonic()
    assert serve.stop() == 0, serve.stderr()
    stopped_in = time.monotonic() - started
    status, worker, heartbeat, attempt, epoch = serve.job_row(job["id"])
    assert (status, worker, heartbeat, attempt) == ("queued", None, None, 0)
    assert f"queued again to resume after epoch {epoch}" in serve.stderr()
    assert stopped_in < 10  # the worker's grace period (descent/cli.py), not used up
    assert not alive(serve.worker_pid)
    with contextlib.closing(sqlite3.connect(serve.data / "broker.db")) as broker:
        waiting = broker.execute("SELECT payload FROM kombu_message WHERE visible").fetchall()
    bodies = [base64.b64decode(json.loads(payload)["body"]) for (payload,) in waiting]
    assert [json.loads(body)[0] for body in bodies] == [[job["id"]]]  # the task's args


def test_serve_reports_a_worker_that_dies(serve: Serve) -> None:
    os.kill(serve.worker_pid, signal.SIGTERM)
    wait_for(lambda: "the worker stopped" in serve.stderr(), 60, "the notice on stderr")
    assert serve.healthy()  # the API keeps serving
    assert serve.stop() == 0, serve.stderr()


def copy_source(destination: Path) -> Path:
    """The project's files, without what a build or a run leaves behind."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "data", "build", "dist", "*.egg-info", "__pycache__", "test-artifacts",
        ".*_cache", "tests",
    )  # fmt: skip
    return Path(shutil.copytree(ROOT, destination, ignore=ignored))


def test_migrate_works_from_a_built_wheel(tmp_path: Path) -> None:
    """`descent migrate` from an installed wheel, with no checkout in sight."""
    source = copy_source(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), str(source / "client"), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    wheels = sorted(str(w) for w in (tmp_path / "dist").glob("descent*.whl"))  # and the client
    # A fresh environment holding the wheel alone; its dependencies come from this one
    # (a path in a .pth file: this environment's own editable install is not loaded).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         *wheels],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shutil.rmtree(source)  # nothing of the checkout is left to fall back on

    run = tmp_path / "run"
    run.mkdir()
    result = subprocess.run(
        [venv / "bin" / "descent", "migrate"],
        capture_output=True, text=True, timeout=120, cwd=run, env=embedded_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "data" / "descent.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
    assert {"alembic_version", "jobs", "metrics", "checkpoints", "users"} <= tables


def migrate(database_url: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**embedded_env(tmp_path), "DATABASE_URL": database_url}
    with (tmp_path / "migrate.err").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "descent", "migrate"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip


def test_migrate_waits_for_a_database_that_is_not_listening_yet(
    tmp_path: Path, postgres_url: str
) -> None:
    """Compose's first boot: migrate starts before PostgreSQL accepts TCP connections."""
    url = make_url(postgres_url)
    port = free_port()
    forward = TcpProxy((url.host or "127.0.0.1", url.port or 5432), port, listen=False)
    process = migrate(url.set(port=port).render_as_string(hide_password=False), tmp_path)
    err = tmp_path / "migrate.err"
    try:
        # Refused: it says so and tries again (it used to fail at once, and compose gave up).
        wait_for(
            lambda: process.poll() is not None or "waiting for the database" in err.read_text(),
            60, "migrate to report the refused connection",
        )  # fmt: skip
        assert process.poll() is None, err.read_text()
        assert "refused" in err.read_text()
        forward.start()  # the server is up
        stdout, _ = process.communicate(timeout=120)
        assert process.returncode == 0, err.read_text()
        assert "latest schema" in stdout
    finally:
        forward.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    engine = make_engine(postgres_url, pooled=False)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select version_num from alembic_version")).scalar()
    finally:
        engine.dispose()


def test_migrate_does_not_wait_for_a_database_that_answers_no(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = make_url(postgres_url).set(database="descent_no_such_database")
    started = time.monotonic()
    process = migrate(missing.render_as_string(hide_password=False), tmp_path)
    process.communicate(timeout=120)
    err = (tmp_path / "migrate.err").read_text()
    assert process.returncode != 0
    assert "descent_no_such_database" in err and "does not exist" in err
    assert "waiting for the database" not in err
    assert time.monotonic() - started < 60  # well under the 120 s it waits for a refused one
