"""The clients against the running service: the CLI as a subprocess, the event stream over
HTTP with a disconnect, the dashboard in headless Chromium, /metrics and plot.png."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from descent_client.client import DescentClient
from tests.conftest import unavailable
from tests.e2e.chromium import Browser, find_chromium
from tests.e2e.service import ROOT, Service
from tests.e2e.test_jobs import digits_mlp
from tests.timing import scaled, wait_for

ARTIFACTS = ROOT / "test-artifacts"
# Prometheus samples by (name, sorted label pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def token_of(service: Service) -> str | None:
    """The token the test's HTTP client sends, if the service asks for one."""
    header = service.http.headers.get("authorization")
    return header.split(" ", 1)[1] if header else None


def user_env(service: Service, cwd: Path) -> dict[str, str]:
    """A user's environment pointed at the service (its URL and token), nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    env["DESCENT_URL"] = service.url
    env["DESCENT_DATA_DIR"] = str(cwd / "no-data")  # no stray token file from elsewhere
    token = token_of(service)
    if token:
        env["DESCENT_TOKEN"] = token
    return env


def cli(
    service: Service, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m descent ARGS`` as a user runs it, pointed at the service by environment."""
    env = user_env(service, cwd)
    return subprocess.run(
        [sys.executable, "-m", "descent", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
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
    job_id, verdict, *diagnosis = run.stdout.strip().splitlines()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert verdict.startswith(f"cli-digits ({job_id}) succeeded: ") and "best val_loss" in verdict
    assert re.fullmatch(r"diagnosis: [a-z ]+ \(final, after 5 epochs\)", diagnosis[0])
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


# What the job page shows: epochs drawn, points of the train_loss curve, the status badge,
# and a mark the test leaves on the document (gone if the page were loaded again).
JOB_PAGE = (
    "(() => { const svg = document.getElementById('chart-loss');"
    " const path = svg && svg.querySelector('path.series[data-name=train_loss]');"
    " const badge = document.querySelector('#summary .badge');"
    " return {epochs: svg ? Number(svg.dataset.epochs) : -1,"
    " points: path ? (path.getAttribute('d').match(/[ML]/g) || []).length : 0,"
    " status: badge ? badge.textContent : '', mark: window.testMark || null} })()"
)


def test_dashboard_draws_a_running_job_live_in_chromium(embedded_service: Service) -> None:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    assert binary is not None
    service = embedded_service
    token = token_of(service)
    assert token
    # Long (small batches, no early stop): cancelled once the page has drawn it growing.
    spec = digits_mlp(
        name="dashboard-live",
        training={"epochs": 400, "batch_size": 8},
        early_stopping={"monitor": "val_loss", "patience": 400},
    )
    spec["model"] = {"arch": "mlp", "hidden": [64, 64]}
    job = service.submit(spec)
    service.wait(job["id"], until=lambda j: j["status"] != "queued", what="to start")
    page_url = f"{service.url}/jobs/{job['id']}"
    shown: list[dict[str, Any]] = []

    def showing(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """What the page shows now if ``check`` holds of it, else nothing ({})."""
        state = browser.evaluate(JOB_PAGE)
        if not state:
            return {}
        shown.append(state)
        return state if check(state) else {}

    def last_shown() -> str:
        return f"last shown: {shown[-3:]}\n{service.tail()}"

    browser = Browser(binary)
    try:
        browser.open(f"{page_url}#token={token}")
        first = wait_for(
            "the page to draw the running job's first epochs",
            lambda: showing(lambda s: s["status"] == "running" and s["epochs"] >= 1),
            60, interval=0.1, detail=last_shown,
        )  # fmt: skip
        browser.evaluate("window.testMark = 'first load'")
        # The token was read into the tab's storage and taken out of the address bar.
        address = browser.evaluate("location.href")
        assert address == page_url and token not in address
        assert browser.evaluate("sessionStorage.getItem('descent.token')") == token

        # Live: later epochs are drawn as they arrive, on the same document, while it runs.
        grown = wait_for(
            "the page to draw two more epochs of the running job",
            lambda: showing(
                lambda s: s["mark"] == "first load"
                and s["status"] == "running"
                and s["epochs"] >= first["epochs"] + 2
            ),
            60, interval=0.1, detail=last_shown,
        )  # fmt: skip
        assert grown["points"] == grown["epochs"], grown  # a point per epoch on the curve
        assert service.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        final = service.wait(job["id"])
        assert final["status"] == "cancelled" and final["epoch"] >= grown["epochs"], final
        end = wait_for(
            "the page to show the job's last epoch and its end",
            lambda: showing(
                lambda s: s["status"] == "cancelled" and s["epochs"] == final["epoch"]
            ),
            60, interval=0.1, detail=last_shown,
        )  # fmt: skip
        assert end["mark"] == "first load" and end["points"] == final["epoch"], end
        running = [s["epochs"] for s in shown if s["status"] == "running"]
        assert running == sorted(running) and len(set(running)) >= 2, running

        listed = service.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
        epochs = [str(c["epoch"]) for c in listed]
        assert epochs, listed
        table = (
            "[...document.querySelectorAll('#checkpoints tbody tr')]"
            ".map((row) => row.cells[0].textContent)"
        )
        wait_for(
            f"the page's checkpoint table to list epochs {epochs}",
            lambda: browser.evaluate(table) == epochs,
            30, interval=0.1, detail=lambda: str(browser.evaluate(table)),
        )  # fmt: skip
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard-job.png")
        page = browser.evaluate(
            "(() => ({"
            " accuracy: Number(document.getElementById('chart-accuracy').dataset.epochs),"
            " lr: Number(document.getElementById('chart-lr').dataset.epochs),"
            " best: document.querySelectorAll('#chart-loss .mark-best').length,"
            " params: (document.getElementById('parameters') || {}).textContent || '',"
            " title: document.title }))()"
        )
        browser.navigate(f"{service.url}/")  # the same tab, which holds the token
        wait_for(
            "the job list",
            lambda: browser.evaluate("document.querySelectorAll('#jobs tbody tr').length"),
            30,
            interval=0.1,
        )
        listed_jobs = browser.evaluate("document.getElementById('jobs').textContent")
        browser.screenshot(ARTIFACTS / "dashboard-jobs.png")
    finally:
        browser.close()

    assert page["accuracy"] == page["lr"] == final["epoch"]
    assert page["best"] == 1
    assert "dashboard-live" in page["title"]
    counts = final["parameters"]
    assert counts, final
    assert page["params"] == f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen"
    assert "dashboard-live" in listed_jobs
    assert (ARTIFACTS / "dashboard-job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The token prompt and what the page holds: is the prompt shown, is it focused, the job
# list's rows, the address, the token kept for the tab.
PROMPT = (
    "(() => ({ shown: !document.getElementById('login').hidden,"
    " focused: document.activeElement ? document.activeElement.id : '',"
    " rows: document.querySelectorAll('#jobs tbody tr').length,"
    " href: location.href, stored: sessionStorage.getItem('descent.token') }))()"
)


def test_the_dashboard_asks_for_a_token_and_keeps_none_in_the_address_bar(
    embedded_service: Service,
) -> None:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    assert binary is not None
    service = embedded_service
    token = token_of(service)
    assert token
    service.submit(digits_mlp(name="behind-the-prompt"))  # something to list
    home = f"{service.url}/"

    def prompt(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        try:
            state = browser.evaluate(PROMPT)
        except RuntimeError as exc:  # the page navigating (it reloads once it has a token)
            if "navigated" in str(exc) or "context" in str(exc):
                return {}
            raise
        return state if state and check(state) else {}

    browser = Browser(binary)
    try:
        # No token (a new tab holds none): the API answers 401, the page asks for one.
        browser.open(home)
        asked = wait_for("the token prompt", lambda: prompt(lambda s: s["shown"]), 30,
                         interval=0.1)  # fmt: skip
        assert asked["focused"] == "token-input" and asked["rows"] == 0 and asked["stored"] is None
        # A token in the query (the old way) is not used: the address loses it at once.
        browser.open(f"{home}?token={token}")
        asked = wait_for("the token prompt", lambda: prompt(lambda s: s["shown"]), 30,
                         interval=0.1)  # fmt: skip
        assert asked["href"] == home and asked["stored"] is None, asked
        # The token typed into the prompt: kept for the tab, and the jobs are listed.
        browser.evaluate(
            f"document.getElementById('token-input').value = {json.dumps(token)};"
            " document.getElementById('login').requestSubmit()"
        )
        listed = wait_for("the job list once the token is typed",
                          lambda: prompt(lambda s: s["rows"] > 0), 30, interval=0.1)  # fmt: skip
        assert not listed["shown"] and listed["stored"] == token and listed["href"] == home
        assert "behind-the-prompt" in browser.evaluate(
            "document.getElementById('jobs').textContent"
        )
    finally:
        browser.close()


def scrape(service: Service) -> Samples:
    response = httpx.get(f"{service.url}/metrics", timeout=30)  # no token: scrapers have none
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_prometheus(response.text)


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` by the value of their one label ``label``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def epoch_histogram(samples: Samples) -> dict[str, float]:
    """descent_epoch_duration_seconds: each bucket by its ``le``, then "count" and "sum"."""
    histogram = series(samples, "descent_epoch_duration_seconds_bucket", "le")
    histogram["count"] = samples[("descent_epoch_duration_seconds_count", ())]
    histogram["sum"] = samples[("descent_epoch_duration_seconds_sum", ())]
    return histogram


def test_prometheus_metrics_count_this_tests_jobs_and_epochs_and_the_diagnosis_is_live(
    embedded_service: Service,
) -> None:
    """Two jobs on an idle service: one that succeeds, one cancelled while it runs (whose
    diagnosis follows its epochs meanwhile). /metrics moves by exactly their jobs and epochs."""
    service = embedded_service

    def idle() -> Samples:
        samples = scrape(service)
        jobs = series(samples, "descent_jobs", "status")
        waiting = series(samples, "descent_queue_length", "queue")
        return samples if jobs["queued"] == jobs["running"] == waiting["cpu"] == 0 else {}

    # Other tests' jobs have ended (and their tasks left the queue): only this test's move.
    before = wait_for("no job queued or running and no task waiting", idle, 120)

    done = service.submit(digits_mlp(name="plot-me"))
    final = service.wait(done["id"])
    assert final["status"] == "succeeded" and final["epoch"] == 4

    # Long, with no early stop: cancelled once its live diagnosis is checked.
    spec = digits_mlp(
        name="diagnosed-live",
        training={"epochs": 2000},
        early_stopping={"monitor": "val_loss", "patience": 2000},
    )
    long = service.submit(spec)
    reads = []
    for at_least in (3, 6):
        # Epochs ended within 0.2 s commit together: the second read waits for a later commit.
        at_least = max(at_least, reads[-1] + 1) if reads else at_least
        job = service.wait(long["id"], until=lambda j, n=at_least: j["epoch"] >= n,
                           what=f"to pass epoch {at_least}")  # fmt: skip
        assert job["status"] == "running", job
        # The diagnosis of the epochs committed so far, with the row that counts them.
        diagnosis = job["diagnosis"]
        assert diagnosis["final"] is False and diagnosis["epoch"] == job["epoch"], diagnosis
        assert len(diagnosis["gap"]) == job["epoch"], diagnosis
        reads.append(job["epoch"])
    assert reads[1] > reads[0]
    assert series(scrape(service), "descent_jobs", "status")["running"] == 1
    assert service.http.post(f"/v1/jobs/{long['id']}/cancel").status_code == 202
    cancelled = service.wait(long["id"])
    assert cancelled["status"] == "cancelled" and cancelled["epoch"] >= reads[1]

    after = scrape(service)
    jobs_before = series(before, "descent_jobs", "status")
    change = {s: n - jobs_before[s] for s, n in series(after, "descent_jobs", "status").items()}
    assert change == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1}
    assert series(after, "descent_queue_length", "queue")["cpu"] == 0
    # Every epoch the two jobs committed, each in the bucket of its epoch_seconds.
    seconds = [
        item["metrics"]["epoch_seconds"]
        for job_id in (done["id"], long["id"])
        for item in service.metrics(job_id)
    ]
    assert len(seconds) == final["epoch"] + cancelled["epoch"]
    old, new = epoch_histogram(before), epoch_histogram(after)
    assert new["count"] - old["count"] == len(seconds)
    assert new["+Inf"] == new["count"]
    assert new["sum"] - old["sum"] == pytest.approx(sum(seconds), rel=1e-6)
    bounds = [le for le in new if le not in ("+Inf", "count", "sum")]
    assert bounds
    for le in bounds:
        assert new[le] - old[le] == sum(s <= float(le) for s in seconds), le

    routes = {
        dict(labels).get("route")
        for name, labels in after
        if name.startswith("descent_http_request_duration_seconds")
    }
    assert "/v1/jobs/{job_id}" in routes
    assert not any(done["id"] in (route or "") for route in routes)  # templates, not paths

    size = {"width": 800, "height": 400}
    response = service.http.get(f"/v1/jobs/{done['id']}/plot.png", params=size)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (800, 400)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "plot.png").write_bytes(response.content)
    assert service.http.get("/v1/jobs/0123456789abcdef/plot.png").status_code == 404


def parse_prometheus(text: str) -> Samples:
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


def readme_block(heading: str, language: str) -> str:
    """The first ``language`` code block after ``heading`` in the README."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(heading)
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.M | re.S).search(readme, start)
    assert match, f"no {language} block after {heading}"
    return match.group(1)


def test_the_readmes_example_runs_pasted_whole_and_its_checkpoint_reproduces_val_loss(
    embedded_service: Service, tmp_path: Path
) -> None:
    """The README's example job as a newcomer pastes it: it waits for the job, every curl
    succeeds, the checkpoint is the real file; then the README's snippet rebuilds it."""
    service = embedded_service
    script = readme_block("## An example job", "sh")
    assert "wait" in script and "-OJ" not in script
    assert all("-f" in line.split()[1] for line in script.splitlines() if line.startswith("curl"))
    # The README's service is 127.0.0.1:8000 with the token in ./data; this one is elsewhere.
    script = script.replace("http://127.0.0.1:8000", service.url)
    script = script.replace(".venv/bin/descent", f"{sys.executable} -m descent")
    script = script.replace('"epochs": 30', '"epochs": 3')  # a short run will do
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "token").write_text(token_of(service) or "")
    env = {**user_env(service, tmp_path), "DESCENT_DATA_DIR": "data"}
    env.pop("DESCENT_TOKEN", None)  # the README's commands read data/token
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=scaled(180),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr + service.tail()
    job_id = re.search(r"\(([0-9a-f]{32})\) succeeded", run.stdout)
    assert job_id, run.stdout
    job = service.job(job_id.group(1))
    assert job["status"] == "succeeded" and job["epoch"] == 3
    assert "diagnosis: " in run.stdout
    # The curl lines ran after the end: the job as it ended, all its epochs, the best file.
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert answers[0]["status"] == "succeeded"
    assert [e["epoch"] for e in answers[1]["items"]] == [1, 2, 3]
    best = next(c for c in service.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
                if c["is_best"])  # fmt: skip
    saved = tmp_path / "best.safetensors"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == best["sha256"]

    snippet = readme_block("### Using a checkpoint", "python")
    run = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path, capture_output=True, text=True, timeout=scaled(120),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    measured = ast.literal_eval(run.stdout.strip().splitlines()[-1])  # what evaluate() gave
    assert abs(measured["val_loss"] - job["best"]["value"]) < 1e-5, (measured, job["best"])


def test_descent_wait_follows_a_job_to_its_end_and_says_how_it_ended(
    embedded_service: Service, tmp_path: Path
) -> None:
    service = embedded_service
    job = service.submit(digits_mlp(name="wait-for-me", training={"epochs": 4}))
    run = cli(service, "wait", job["id"], cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert service.job(job["id"])["status"] == "succeeded"
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"wait-for-me ({job['id']}) succeeded: ")
    assert re.fullmatch(r"diagnosis: [a-z ]+ \(final, after 4 epochs\)", lines[1])
    assert re.findall(r"^epoch\s+(\d+)/4 \[", run.stderr, flags=re.M) == ["1", "2", "3", "4"]

    # `show` prints the same diagnosis readably: no raw JSON, no long run of numbers.
    shown = cli(service, "show", job["id"], cwd=tmp_path).stdout
    assert "\n".join(lines[1:]) in shown
    assert "{" not in shown and "[" not in shown
    assert all(len(re.findall(r"\d+\.\d+", line)) <= 8 for line in shown.splitlines())

    # A job that does not succeed: exit status 1, and the verdict says why.
    long = service.submit(digits_mlp(name="wait-cancelled", training={"epochs": 500}))
    assert service.http.post(f"/v1/jobs/{long['id']}/cancel").status_code == 202
    run = cli(service, "wait", long["id"], "--quiet", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith(f"wait-cancelled ({long['id']}) cancelled")
    assert run.stderr == ""
    run = cli(service, "wait", "0123456789abcdef0123456789abcdef", cwd=tmp_path)
    assert run.returncode == 1 and "error 404" in run.stderr


def test_the_client_polls_metrics_by_cursor_with_no_epoch_lost_or_repeated(
    embedded_service: Service,
) -> None:
    service = embedded_service
    job = service.submit(digits_mlp(name="poll-me", training={"epochs": 25}))
    with DescentClient(service.url, token=token_of(service) or "") as client:
        seen = [record["epoch"] for record in client.poll_metrics(job["id"], interval=0.05)]
        final = client.job(job["id"])
        assert client.metrics(job["id"], after=20) == service.metrics(job["id"], after=20)
    assert final["status"] == "succeeded"
    assert seen == list(range(1, 26))


def test_the_transfer_example_runs_the_autoencoder_then_the_classifier_on_its_encoder(
    embedded_service: Service, tmp_path: Path
) -> None:
    service = embedded_service
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "transfer" / "run.py"), "--epochs", "2"],
        cwd=tmp_path, env=user_env(service, tmp_path), capture_output=True, text=True,
        timeout=scaled(240),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr + service.tail()
    ids = re.findall(r"^submitted \S+: ([0-9a-f]{32})$", run.stderr, flags=re.M)
    assert len(ids) == 2, run.stderr
    encoder, classifier = (service.job(job_id) for job_id in ids)
    assert encoder["spec"]["task"] == "reconstruction" and encoder["status"] == "succeeded"
    assert classifier["spec"]["backbone"]["from_job"] == encoder["id"]
    assert classifier["status"] == "succeeded" and classifier["epoch"] == 2
    assert classifier["parameters"]["trainable"] > 0
    verdicts = [line for line in run.stdout.splitlines() if f"({classifier['id']}) " in line]
    assert verdicts and "succeeded" in verdicts[0]
