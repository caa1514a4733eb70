"""The ways to run the service agree with each other: the README's commands, the Makefile,
.ci/run, the Dockerfile, docker-compose.yml and the `descent` command line."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from descent.cli import build_parser
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
# The Compose file format's JSON schema, kept beside the repository (no Docker engine needed).
COMPOSE_SCHEMA = ROOT.parent / "shared" / "reference" / "compose-spec" / "compose-spec.json"
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
    if not COMPOSE_SCHEMA.is_file():
        unavailable(f"the Compose JSON schema is not at {COMPOSE_SCHEMA}")
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
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu"}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-gpu", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"

    assert descent_commands(compose) == {
        "migrate": ["descent", "migrate"],
        "api": ["descent", "api", "--host", "0.0.0.0", "--port", "8000"],
        "worker-gpu": ["descent", "worker", "--queues", "gpu,cpu", "--concurrency", "1"],
        "worker-cpu": ["descent", "worker", "--queues", "cpu"],
    }
    assert services["api"]["ports"] == ["8000:8000"]

    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]


def test_compose_shares_configuration_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("migrate", "api", "worker-gpu", "worker-cpu"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["DATABASE_URL"].split("@")[1] == "postgres:5432/descent"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["DESCENT_ARTIFACTS_DIR"] == "/artifacts"
    for name in ("api", "worker-gpu", "worker-cpu"):
        assert "artifacts:/artifacts" in services[name]["volumes"]


def test_compose_and_dockerfile_use_commands_the_cli_has(compose: dict[str, Any]) -> None:
    parser = build_parser()
    commands = list(descent_commands(compose).values())
    cmd = re.search(r"^CMD (\[.*\])$", read("Dockerfile"), re.MULTILINE)
    assert cmd, "the Dockerfile has no exec-form CMD"
    commands.append(json.loads(cmd.group(1)))
    for command in commands:
        assert command[0] == "descent"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown option


def test_dockerfile_installs_as_the_makefile_does() -> None:
    makefile = read("Makefile")
    dockerfile = read("Dockerfile")
    assert "FROM python:3.11-slim" in dockerfile
    assert "$(BIN)/pip install -e '.[test]'" in makefile
    # The same editable install, without the test extras.
    assert re.search(r"^RUN pip install -e \.$", dockerfile, re.MULTILINE)
    for pattern in (".venv", "data", ".git"):
        assert pattern in read(".dockerignore").split()


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Serve:
    """`descent serve` on a free port, in a temporary data folder, started and healthy."""

    def __init__(self, tmp_path: Path) -> None:
        if not (ROOT / "api" / "main.py").is_file():
            unavailable("api/main.py does not exist yet")
        self.port = free_port()
        self.out, self.err = tmp_path / "serve.out", tmp_path / "serve.err"
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "descent", "serve", "--port", str(self.port)],
                cwd=ROOT, env=embedded_env(tmp_path), stdout=stdout, stderr=stderr,
            )  # fmt: skip
        wait_for(self.healthy, 120, "/healthz")
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
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if alive(self.worker_pid):
            os.kill(self.worker_pid, signal.SIGQUIT)


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


def test_serve_reports_a_worker_that_dies(serve: Serve) -> None:
    os.kill(serve.worker_pid, signal.SIGTERM)
    wait_for(lambda: "the worker stopped" in serve.stderr(), 60, "the notice on stderr")
    assert serve.healthy()  # the API keeps serving
    assert serve.stop() == 0, serve.stderr()
