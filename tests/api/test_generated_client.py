"""A client generated from the service's own /openapi.json by a standard generator
(openapi-python-client) drives a real server: submit, follow the metrics, download the best
checkpoint, and read typed errors. What it cannot type or reach, the document lacks.

The server is uvicorn in a thread (tests/api/server.py); the job is trained by the worker's
own code (``worker.runner.run_job``) in another thread while the generated client polls.
Generation runs once per test session, offline, into a temporary folder.
"""

import hashlib
import importlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from descent.settings import Settings
from tests.api.builders import make_user
from tests.api.server import serve
from tests.timing import scaled, wait_for

PACKAGE = "descent_generated"
# No post hooks (the generator runs ruff on its output by default: not needed to import it);
# the plot's PNG is read as a binary file like the downloads.
CONFIG = f"""
project_name_override: descent-generated
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  image/png: application/octet-stream
"""
SPEC: dict[str, Any] = {
    "name": "generated-client",
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 4, "batch_size": 16, "seed": 0},
    "checkpoints": {"keep_top_k": 2},
}

Generate = Callable[[dict[str, Any]], ModuleType]


def _import_fresh(root: Path) -> ModuleType:
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))


@pytest.fixture(scope="session")
def generate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generate]:
    """``generate(document)``: the generated package for this OpenAPI document, imported
    (generated once per distinct document in the session)."""
    made: dict[str, ModuleType] = {}

    def run(document: dict[str, Any]) -> ModuleType:
        text = json.dumps(document, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        if key not in made:
            root = tmp_path_factory.mktemp(f"generated-{key}")
            (root / "openapi.json").write_text(text)
            (root / "config.yml").write_text(CONFIG)
            result = subprocess.run(
                [
                    *[sys.executable, "-m", "openapi_python_client", "generate"],
                    *["--path", str(root / "openapi.json")],
                    *["--config", str(root / "config.yml")],
                    *["--output-path", str(root / "out"), "--overwrite"],
                ],
                capture_output=True,
                text=True,
                timeout=scaled(60),
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, output
            # Every operation and response was understood: no piece left out.
            assert "Warning" not in output, output
            made[key] = _import_fresh(root / "out")
        return made[key]

    yield run
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


@pytest.fixture
def live(sqlite_env: Settings) -> Iterator[tuple[str, str]]:
    """(base URL, token) of a real server over this test's database."""
    token = make_user()
    with serve(sqlite_env) as url:
        yield url, token


def test_a_generated_client_submits_follows_and_downloads(
    live: tuple[str, str], generate: Generate
) -> None:
    from worker.runner import run_job

    url, token = live
    document = httpx.get(f"{url}/openapi.json").json()
    gen = generate(document)
    api = importlib.import_module(f"{PACKAGE}.api")
    models = importlib.import_module(f"{PACKAGE}.models")
    jobs = importlib.import_module(f"{PACKAGE}.api.jobs")
    client = gen.AuthenticatedClient(base_url=url, token=token, timeout=httpx.Timeout(scaled(30)))

    # Submit: the body is the generated JobSpec, the answer a typed JobPublic (201).
    submitted = importlib.import_module(f"{jobs.__name__}.jobs_submit").sync_detailed(
        client=client, body=models.JobSpec.from_dict(SPEC)
    )
    assert submitted.status_code == 201, submitted.content
    job = submitted.parsed
    assert isinstance(job, models.JobPublic)
    assert job.status == models.JobPublicStatus.QUEUED
    assert isinstance(job.spec, models.JobSpec)
    assert job.spec.training.epochs == 4 and job.spec.dataset.name == "iris"

    # A worker trains it meanwhile; the client follows /metrics page by page.
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job.id, worker="w1")))
    worker.start()
    metrics_list = importlib.import_module(f"{api.__name__}.metrics.metrics_list")
    epochs: list[int] = []
    after = 0

    def follow() -> bool:
        nonlocal after
        page = metrics_list.sync(job.id, client=client, after=after, limit=2)
        assert isinstance(page, models.MetricsPage), page
        epochs.extend(item.epoch for item in page.items)
        after = page.next_
        return page.complete

    wait_for("the job's last epoch in /metrics", follow, 120, interval=0.2)
    worker.join(scaled(60))
    assert outcome == ["succeeded"]
    assert epochs == [1, 2, 3, 4]  # each epoch once, in order, over several pages
    page = metrics_list.sync(job.id, client=client, after=0)
    assert page.items[0].metrics["train_loss"] > 0
    ended = importlib.import_module(f"{jobs.__name__}.jobs_get").sync(job.id, client=client)
    assert ended.status == models.JobPublicStatus.SUCCEEDED
    assert ended.best.epoch in epochs and ended.best.checkpoint_id

    # The best checkpoint: bytes (a File), the sha256 in a header the client can read.
    checkpoints = importlib.import_module(f"{api.__name__}.checkpoints")
    best = importlib.import_module(
        f"{checkpoints.__name__}.checkpoints_download_best"
    ).sync_detailed(job.id, client=client)
    assert best.status_code == 200
    assert isinstance(best.parsed, gen.types.File)
    data = best.parsed.payload.read()
    raw = httpx.get(
        f"{url}/v1/jobs/{job.id}/checkpoints/best", headers={"Authorization": f"Bearer {token}"}
    )
    assert data == raw.content and len(data) > 100
    digest = hashlib.sha256(data).hexdigest()
    assert best.headers["X-Checksum-SHA256"] == digest
    assert best.headers["ETag"].strip('"') == digest
    listed = importlib.import_module(f"{checkpoints.__name__}.checkpoints_list").sync(
        job.id, client=client
    )
    [best_row] = [c for c in listed.items if c.is_best]
    assert (best_row.id, best_row.sha256, best_row.bytes_) == (
        ended.best.checkpoint_id, digest, len(data)
    )  # fmt: skip
    # A range of it, by the header parameter the document declares.
    part = importlib.import_module(f"{checkpoints.__name__}.checkpoints_download").sync_detailed(
        best_row.id, client=client, range_="bytes=10-19"
    )
    assert part.status_code == 206
    assert part.parsed.payload.read() == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"

    # Errors come back typed: {"detail": ...} as ErrorDetail, 422 as HTTPValidationError.
    missing = importlib.import_module(f"{jobs.__name__}.jobs_get").sync_detailed(
        "no-such-job", client=client
    )
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.ErrorDetail)
    assert "no-such-job" in missing.parsed.detail
    finished = importlib.import_module(f"{jobs.__name__}.jobs_cancel").sync_detailed(
        job.id, client=client
    )
    assert finished.status_code == 409
    assert isinstance(finished.parsed, models.ErrorDetail)
    assert "succeeded" in finished.parsed.detail
    bad = {**SPEC, "training": {"epochs": 4, "batch_size": 0}}
    refused = importlib.import_module(f"{jobs.__name__}.jobs_submit").sync_detailed(
        client=client, body=models.JobSpec.from_dict(bad)
    )
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.HTTPValidationError)
    assert refused.parsed.detail[0].loc == ["body", "training", "batch_size"]
    anonymous = gen.Client(base_url=url)
    unauthorized = importlib.import_module(f"{jobs.__name__}.jobs_get").sync_detailed(
        job.id, client=anonymous
    )
    assert unauthorized.status_code == 401
    assert isinstance(unauthorized.parsed, models.ErrorDetail)
