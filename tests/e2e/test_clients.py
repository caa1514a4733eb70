"""The clients against the running service: the CLI as a subprocess, the event stream over
HTTP with a disconnect, the dashboard in headless Chromium, /metrics and plot.png."""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import unavailable
from tests.e2e.chromium import Browser, find_chromium
from tests.e2e.service import ROOT, TERMINAL, Service
from tests.e2e.test_jobs import digits_mlp

ARTIFACTS = ROOT / "test-artifacts"


def token_of(service: Service) -> str | None:
    """The token the test's HTTP client sends, if the service asks for one."""
    header = service.http.headers.get("authorization")
    return header.split(" ", 1)[1] if header else None


def cli(
    service: Service, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m descent ARGS`` as a user runs it, pointed at the service by environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    env["DESCENT_URL"] = service.url
    env["DESCENT_DATA_DIR"] = str(cwd / "no-data")  # no stray token file from elsewhere
    token = token_of(service)
    if token:
        env["DESCENT_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "descent", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_submits_follows_and_downloads_a_verified_checkpoint(
    embedded_service: Service, tmp_path: Path
) -> None:
    service = embedded_service
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: cli-digits\n"
        "dataset: {name: digits, val_fraction: 0.2, seed: 0}\n"
        "model: {arch: mlp, hidden: [32]}\n"
        "optimizer: {name: adam, lr: 0.01}\n"
        "training: {epochs: 5, batch_size: 64, seed: 0}\n"
        "checkpoints: {keep_top_k: 2}\n"
    )
    run = cli(service, "submit", str(spec), "--follow", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id, verdict = run.stdout.strip().splitlines()[0], run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert "succeeded" in verdict and "best val_loss" in verdict
    # One progress line per epoch (stderr is not a terminal here), then the final status.
    epochs = re.findall(r"^epoch\s+(\d+)/5 \[", run.stderr, flags=re.M)
    assert epochs == ["1", "2", "3", "4", "5"], run.stderr
    assert "train_loss" in run.stderr and "best val_loss" in run.stderr
    assert run.stderr.strip().endswith(f"job {job_id}: succeeded")

    job = service.job(job_id)
    assert job["status"] == "succeeded" and job["epoch"] == 5

    out = tmp_path / "best.safetensors"
    run = cli(service, "download", job_id, "--best", "-o", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    checkpoints = service.http.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
    best = next(c for c in checkpoints if c["is_best"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == best["sha256"]
    assert f"epoch {best['epoch']}" in run.stdout and "verified" in run.stdout

    last = next(c for c in checkpoints if c["is_last"])
    out = tmp_path / "last.safetensors"
    run = cli(
        service, "download", job_id, "--epoch", str(last["epoch"]), "-o", str(out), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == last["sha256"]

    run = cli(service, "metrics", job_id, "--csv", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = run.stdout.strip().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss")
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]

    run = cli(service, "jobs", cwd=tmp_path)
    assert run.returncode == 0 and job_id in run.stdout and "cli-digits" in run.stdout
    run = cli(service, "show", job_id, "--json", cwd=tmp_path)
    assert json.loads(run.stdout)["id"] == job_id
    # An error is one line on stderr and exit status 1.
    run = cli(service, "cancel", job_id, cwd=tmp_path)
    assert run.returncode == 1 and "error 409" in run.stderr and "Traceback" not in run.stderr
    missing = tmp_path / "x"
    run = cli(service, "download", job_id, "--epoch", "99", "-o", str(missing), cwd=tmp_path)
    assert run.returncode == 1 and "no checkpoint of epoch 99" in run.stderr
    assert not missing.exists()


def test_cli_uploads_lists_and_deletes_a_dataset(embedded_service: Service, tmp_path: Path) -> None:
    service = embedded_service
    data = tmp_path / "tiny.csv"
    rows = [f"{i / 10},{(i * 7 % 10) / 10},{i % 2}" for i in range(40)]
    data.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    run = cli(
        service, "datasets", "upload", str(data), "--target", "label", "--name", "cli-tiny",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    dataset_id = run.stdout.strip()
    assert "uploaded dataset cli-tiny" in run.stderr and "40 samples" in run.stderr

    run = cli(service, "datasets", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ID ")
    line = next(row for row in run.stdout.splitlines() if row.startswith(dataset_id))
    assert "cli-tiny" in line and "tiny.csv" in line and "csv" in line

    run = cli(service, "datasets", "delete", dataset_id, cwd=tmp_path)
    assert run.returncode == 0 and f"{dataset_id}: deleted" in run.stdout
    assert dataset_id not in cli(service, "datasets", cwd=tmp_path).stdout
    # Errors: one line on stderr, exit status 1.
    run = cli(service, "datasets", "delete", dataset_id, cwd=tmp_path)
    assert run.returncode == 1 and "error 404" in run.stderr and "Traceback" not in run.stderr
    run = cli(service, "datasets", "upload", str(data), cwd=tmp_path)  # no --target
    assert run.returncode == 1 and "error 422" in run.stderr and "target" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = cli(service, "weights", "upload", str(tmp_path / "none.pt"), "--arch", "resnet18",
              cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1 and "cannot read" in run.stderr
    run = cli(service, "weights", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("ID ")


def read_events(
    service: Service, job_id: str, last_event_id: str | None = None, stop_after: int | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Events of the stream: all of them, or the first ``stop_after`` epochs and then the
    connection is dropped. Returns (events, whether the stream ended by itself)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    epochs = 0
    with service.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith(("id: ", "event: ", "data: ")):
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
            elif not line and current:
                events.append(current)
                current = {}
                if events[-1]["event"] == "epoch":
                    epochs += 1
                    if stop_after is not None and epochs >= stop_after:
                        return events, False  # leaving the block drops the connection
    return events, True


def test_event_stream_resumed_after_a_disconnect_loses_and_repeats_no_epoch(
    embedded_service: Service,
) -> None:
    service = embedded_service
    job = service.submit(digits_mlp(name="sse-resume", training={"epochs": 30}))
    first, ended = read_events(service, job["id"], stop_after=3)
    assert not ended
    assert first[0]["event"] == "status" and first[0]["data"]["status"] in ("queued", "running")
    rest, ended = read_events(service, job["id"], last_event_id=first[-1]["id"])
    assert ended
    events = first + rest
    epochs = [e["data"]["epoch"] for e in events if e["event"] == "epoch"]
    assert epochs == list(range(1, 31))
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "succeeded" and statuses.count("succeeded") == 1
    assert len(statuses) == len(set(statuses))  # no status sent twice
    assert events[-1]["event"] == "status" and events[-1]["id"] == "30:succeeded"
    # Coming back once everything was received: 204, nothing more to send.
    done = service.http.get(
        f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": events[-1]["id"]}
    )
    assert done.status_code == 204


def test_dashboard_draws_a_running_job_live_in_chromium(embedded_service: Service) -> None:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    service = embedded_service
    # Small batches make each epoch long enough for the page to open while the job runs.
    spec = digits_mlp(
        name="dashboard-live",
        training={"epochs": 30, "batch_size": 8},
        early_stopping={"monitor": "val_loss", "patience": 5},
    )
    spec["model"] = {"arch": "mlp", "hidden": [64, 64]}
    job = service.submit(spec)
    service.wait(job["id"], until=lambda j: j["status"] != "queued")
    token = token_of(service)
    url = f"{service.url}/jobs/{job['id']}" + (f"?token={token}" if token else "")
    shown: list[tuple[int, str]] = []
    browser = Browser(binary)
    try:
        browser.open(url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = browser.evaluate(
                "(() => { const svg = document.getElementById('chart-loss');"
                " const badge = document.querySelector('#summary .badge');"
                " return [svg ? Number(svg.dataset.epochs) : -1,"
                " badge ? badge.textContent : ''] })()"
            )
            shown.append((state[0], state[1]))
            if state[1] in TERMINAL and state[0] == service.job(job["id"])["epoch"]:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # let the last refresh of the checkpoints land before the picture
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard-job.png")
        page = browser.evaluate(
            "(() => ({"
            " accuracy: Number(document.getElementById('chart-accuracy').dataset.epochs),"
            " lr: Number(document.getElementById('chart-lr').dataset.epochs),"
            " best: document.querySelectorAll('#chart-loss .mark-best').length,"
            " checkpoints: document.querySelectorAll('#checkpoints tbody tr').length,"
            " params: (document.getElementById('parameters') || {}).textContent || '',"
            " title: document.title }))()"
        )
        browser.navigate(f"{service.url}/")  # the same tab, which holds the token
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = browser.evaluate("document.querySelectorAll('#jobs tbody tr').length")
            if rows:
                break
            time.sleep(0.2)
        listed = browser.evaluate("document.getElementById('jobs').textContent")
        browser.screenshot(ARTIFACTS / "dashboard-jobs.png")
    finally:
        browser.close()

    final = service.job(job["id"])
    assert final["status"] in TERMINAL, final
    assert shown and shown[-1] == (final["epoch"], final["status"]), shown[-5:]
    assert page["accuracy"] == page["lr"] == final["epoch"]
    assert page["best"] == 1
    assert page["checkpoints"] >= 1
    assert "dashboard-live" in page["title"]
    counts = final["parameters"]
    assert counts, final
    assert page["params"] == f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen"
    assert "dashboard-live" in listed
    assert (ARTIFACTS / "dashboard-job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prometheus_metrics_and_plot_png(embedded_service: Service) -> None:
    service = embedded_service
    job = service.submit(digits_mlp(name="plot-me"))
    final = service.wait(job["id"])
    assert final["status"] == "succeeded"

    response = httpx.get(f"{service.url}/metrics", timeout=30)  # no token: scrapers have none
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = parse_prometheus(response.text)
    assert samples[("descent_jobs", (("status", "succeeded"),))] >= 1
    assert samples[("descent_jobs", (("status", "running"),))] >= 0
    assert samples[("descent_queue_length", (("queue", "cpu"),))] >= 0
    count = samples[("descent_epoch_duration_seconds_count", ())]
    assert count >= final["epoch"]
    assert samples[("descent_epoch_duration_seconds_bucket", (("le", "+Inf"),))] == count
    assert samples[("descent_epoch_duration_seconds_sum", ())] > 0
    routes = {
        dict(labels).get("route")
        for name, labels in samples
        if name.startswith("descent_http_request_duration_seconds")
    }
    assert "/v1/jobs/{job_id}" in routes
    assert not any(job["id"] in (route or "") for route in routes)  # templates, not paths

    size = {"width": 800, "height": 400}
    response = service.http.get(f"/v1/jobs/{job['id']}/plot.png", params=size)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (800, 400)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "plot.png").write_bytes(response.content)
    assert service.http.get("/v1/jobs/0123456789abcdef/plot.png").status_code == 404


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        name, labels, value = match.groups()
        pairs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
