"""The client alone, as a researcher installs it on a laptop: a fresh virtualenv with only
``pip install ./client`` (no torch, no server code), small and quick to install, driving a
running service with its ``descent`` command."""

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.service import ROOT, Service
from tests.e2e.test_clients import user_env
from tests.timing import scaled

INSTALL_SECONDS = 60
INSTALL_BYTES = 50 * 1024 * 1024
SERVER_PACKAGES = ("torch", "fastapi", "sqlalchemy", "celery", "uvicorn", "pydantic", "numpy")


@dataclass
class ClientVenv:
    root: Path
    install_seconds: float
    site_bytes: int

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))

    def run(
        self, service: Service, *args: str, cwd: Path, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A program of the venv (``descent``, ``python``), as a user runs it."""
        env = {k: v for k, v in user_env(service, cwd).items() if k != "PYTHONPATH"}
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=scaled(timeout),
        )  # fmt: skip


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientVenv]:
    root = tmp_path_factory.mktemp("client") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=env)
    installed = subprocess.run(
        [str(root / "bin" / "pip"), "install", "--quiet", str(ROOT / "client")],
        env=env, capture_output=True, text=True, timeout=scaled(300),
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert installed.returncode == 0, installed.stdout + installed.stderr
    venv = ClientVenv(root, seconds, 0)
    venv.site_bytes = tree_bytes(venv.site_packages())
    print(  # noqa: T201 - the measured numbers, in the test's output
        f"\nthe client's fresh venv: made and installed in {seconds:.1f} s, "
        f"site-packages {venv.site_bytes / 2**20:.1f} MiB"
    )
    yield venv


def test_the_client_alone_installs_small_and_quickly(client_venv: ClientVenv) -> None:
    assert client_venv.install_seconds < INSTALL_SECONDS
    assert client_venv.site_bytes < INSTALL_BYTES
    site = client_venv.site_packages()
    present = [name for name in SERVER_PACKAGES if (site / name).exists()]
    assert present == [], f"server-side packages in the client's venv: {present}"
    assert (site / "descent_client").is_dir() and not (site / "descent").exists()


def test_the_clients_descent_submits_follows_and_downloads_a_verified_checkpoint(
    client_venv: ClientVenv, embedded_service: Service, tmp_path: Path
) -> None:
    service = embedded_service
    venv = client_venv
    usage = venv.run(service, "descent", "--help", cwd=tmp_path)
    assert usage.returncode == 0, usage.stderr
    assert "submit" in usage.stdout and "export" in usage.stdout
    assert "serve" not in usage.stdout and "migrate" not in usage.stdout  # the service's

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: light-client\n"
        "dataset: {name: digits, val_fraction: 0.2, seed: 0}\n"
        "model: {arch: mlp, hidden: [16]}\n"
        "optimizer: {name: adam, lr: 0.01}\n"
        "training: {epochs: 3, batch_size: 64, seed: 0}\n"
    )
    run = venv.run(service, "descent", "submit", str(spec), "--follow", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id, verdict = run.stdout.splitlines()[:2]
    assert verdict.startswith(f"light-client ({job_id}) succeeded")
    assert [line.split("/")[0] for line in run.stderr.splitlines() if line.startswith("epoch")] == [
        "epoch 1", "epoch 2", "epoch 3"
    ]  # fmt: skip

    out = tmp_path / "best.safetensors"
    run = venv.run(service, "descent", "download", job_id, "-o", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    listing = service.http.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
    best = next(c for c in listing if c["is_best"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == best["sha256"]
    assert best["sha256"] in run.stdout

    # The Python client of that venv, torch absent.
    code = (
        "import importlib.util, json, sys\n"
        "from descent_client import DescentClient\n"
        "assert importlib.util.find_spec('torch') is None\n"
        "with DescentClient() as client:\n"
        f"    epochs = [r['epoch'] for r in client.metrics({job_id!r})]\n"
        f"    print(json.dumps([client.job({job_id!r})['status'], epochs]))\n"
    )
    run = venv.run(service, "python", "-c", code, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["succeeded", [1, 2, 3]]


def test_descent_export_waits_for_the_export_and_saves_a_verified_onnx_model(
    client_venv: ClientVenv, embedded_service: Service, tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime

    service = embedded_service
    job = service.submit(
        {
            "name": "export-me",
            "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
            "model": {"arch": "mlp", "hidden": [16]},
            "training": {"epochs": 2, "batch_size": 64, "seed": 0},
        }
    )
    service.wait(job["id"])
    out = tmp_path / "model.onnx"
    run = client_venv.run(
        service, "descent", "export", job["id"], "--format", "onnx", "-o", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    best = service.job(job["id"])["best"]["checkpoint_id"]
    [export] = service.http.get(f"/v1/checkpoints/{best}/exports").json()["items"]
    assert export["status"] == "succeeded" and export["format"] == "onnx"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == export["sha256"]
    assert export["sha256"] in run.stdout and export["id"] in run.stdout
    assert export["parity"]["max_abs_diff"] <= export["parity"]["tolerance"] == 1e-4
    session = onnxruntime.InferenceSession(str(out))
    logits = session.run(None, {"input": np.zeros((3, 64), dtype=np.float32)})[0]
    assert logits.shape == (3, 10)  # digits: 64 features in, 10 classes out

    missing = tmp_path / "none.onnx"
    run = client_venv.run(
        service, "descent", "export", job["id"], "--epoch", "99", "-o", str(missing),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "no checkpoint of epoch 99" in run.stderr
    assert not missing.exists()
