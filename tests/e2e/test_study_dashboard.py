"""The study page of the dashboard in headless Chromium, while a study runs: its curves, its
parallel coordinates, its importance bars and its trial table against the API's numbers."""

import base64
import math
from pathlib import Path
from typing import Any

from tests.conftest import unavailable
from tests.e2e.chromium import Browser, find_chromium
from tests.e2e.service import Service
from tests.e2e.test_clients import ARTIFACTS, token_of
from tests.timing import wait_for

# What the page shows, read from its DOM in one go.
PAGE_STATE = """(() => {
  const all = (q) => [...document.querySelectorAll(q)];
  const curves = document.getElementById('chart-curves');
  const parallel = document.getElementById('chart-parallel');
  const importance = document.getElementById('importance');
  const badge = document.querySelector('#study-summary .badge');
  return {
    status: badge ? badge.textContent : '',
    live: (document.getElementById('live') || {dataset: {}}).dataset.live || '',
    rows: all('#trials tbody tr').map((tr) => ({
      number: Number(tr.dataset.number), status: tr.dataset.status, job: tr.dataset.job,
      value: tr.dataset.value === '' ? null : Number(tr.dataset.value),
      best: tr.classList.contains('best')})),
    curves: curves ? Number(curves.dataset.curves) : -1,
    curveTrials: all('#chart-curves .curve').map((g) => Number(g.dataset.trial)),
    points: all('#chart-curves .curve').reduce((n, g) => n + Number(g.dataset.points), 0),
    best: all('#chart-curves .curve.best').map((g) => Number(g.dataset.trial)),
    prunedCurves: all('#chart-curves .curve.pruned').map((g) => Number(g.dataset.trial)),
    pruneMarks: all('#chart-curves .curve.pruned .prune-mark').length,
    lines: parallel ? Number(parallel.dataset.lines) : -1,
    lineTrials: all('#chart-parallel .pc-line').map((p) => Number(p.dataset.trial)),
    bestLine: all('#chart-parallel .pc-line.best').map((p) => Number(p.dataset.trial)),
    axes: all('#chart-parallel .pc-axis .name').map((t) => t.textContent),
    importance: importance ? importance.dataset.state : '',
    importanceText: importance ? importance.textContent : '',
    bars: all('#importance .imp-row').map((r) => [r.dataset.param, Number(r.dataset.value)]),
  };
})()"""

ROW_NUMBERS = "[...document.querySelectorAll('#trials tbody tr')].map((r) => +r.dataset.number)"


EPOCHS = 12  # per trial


def screenshot_whole_page(browser: Browser, path: Path) -> None:
    """The page from top to bottom, not only the window's 900 pixels."""
    height = browser.evaluate("document.documentElement.scrollHeight")
    clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}
    data = browser.send(
        "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
    )["data"]
    path.write_bytes(base64.b64decode(data))


def test_the_study_page_draws_a_running_study_live_in_chromium(embedded_service: Service) -> None:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    service = embedded_service
    # A 2 x 4 grid run one trial at a time (one worker): 8 trials, enough for importance at
    # the end. Adam at a learning rate of 1.0 or 0.5 is hopeless: ASHA stops each at epoch 1,
    # behind trial 0 (a good rate), which no trial can be pruned before.
    body = {
        "name": "dashboard-study",
        "base": {
            "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
            "model": {"arch": "mlp", "hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.01},
            # 12 epochs of batches of 4: the study runs for several seconds, so the page
            # (updated every second) sees it through several states on a fast machine too.
            "training": {"epochs": EPOCHS, "batch_size": 4, "seed": 0},
            "checkpoints": {"keep_top_k": 1},
        },
        "space": {
            "model.hidden": {"choice": [[16], [32]]},
            "optimizer.lr": {"choice": [0.01, 1.0, 0.003, 0.5]},
        },
        "algorithm": "grid",
        "max_trials": 8,
        "parallelism": 2,
        "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 2},
    }
    # The browser is up before the study starts (its start takes seconds on a busy machine,
    # the study's first trials a fraction of one): the page then sees the study running.
    browser = Browser(binary)
    try:
        browser.open("about:blank")
        answer = service.http.post("/v1/studies", json=body)
        assert answer.status_code == 201, answer.text
        study_id = answer.json()["id"]
        token = token_of(service)
        url = f"{service.url}/studies/{study_id}" + (f"#token={token}" if token else "")
        seen: list[dict[str, Any]] = []
        ARTIFACTS.mkdir(exist_ok=True)
        live = ARTIFACTS / "dashboard-study-running.png"
        live.unlink(missing_ok=True)
        browser.navigate(url)

        def showing_the_end() -> bool:
            page = browser.evaluate(PAGE_STATE)
            seen.append(page)
            if page["status"] == "running" and len(page["rows"]) >= 3 and not live.exists():
                screenshot_whole_page(browser, live)  # how it looks while it runs
            return page["status"] == "completed" and page["live"] == "false"

        wait_for(
            "the study page to show the completed study",
            showing_the_end,
            180,
            interval=0.1,
            detail=lambda: f"last shown: {seen[-1] if seen else None}\n{service.tail()}",
        )
        screenshot_whole_page(browser, ARTIFACTS / "dashboard-study.png")
        # The table sorts by a click on a heading: the objective's, best first.
        browser.evaluate("document.querySelector('#trials th[data-key=value]').click()")
        by_value = browser.evaluate(ROW_NUMBERS)
        browser.evaluate("document.querySelector('#trials th[data-key=value]').click()")
        by_value_desc = browser.evaluate(ROW_NUMBERS)
        browser.navigate(f"{service.url}/studies")  # the same tab, which holds the token
        wait_for(
            "the study list",
            lambda: browser.evaluate("document.querySelectorAll('#studies tbody tr a').length"),
            30,
            interval=0.1,
        )
        listed = browser.evaluate("document.getElementById('studies').textContent")
    finally:
        browser.close()

    study = service.http.get(f"/v1/studies/{study_id}").json()
    trials = service.http.get(f"/v1/studies/{study_id}/trials", params={"limit": 100}).json()
    trials = trials["items"]
    page = seen[-1]
    assert study["status"] == "completed" and study["trials"]["total"] == len(trials) == 8

    # The table: a row per trial, as the API has it.
    assert sorted((r["number"], r["status"], r["job"], r["value"]) for r in page["rows"]) == [
        (t["number"], t["status"], t["job_id"], t["value"]) for t in trials
    ]
    assert [r["number"] for r in page["rows"] if r["best"]] == [study["best"]["number"]]
    best_first = service.http.get(
        f"/v1/studies/{study_id}/trials", params={"sort": "objective", "limit": 100}
    ).json()["items"]
    assert by_value == [t["number"] for t in best_first]
    assert by_value_desc == [t["number"] for t in best_first][::-1]

    # The curves: one per trial with a finite objective, as many points as its epochs.
    metric = study["objective"]["metric"]
    points = {}
    for trial in trials:
        records = service.metrics(trial["job_id"])
        points[trial["number"]] = sum(
            1 for r in records if isinstance(r["metrics"].get(metric), (int, float))
            and math.isfinite(r["metrics"][metric])
        )  # fmt: skip
    with_metrics = sorted(n for n, count in points.items() if count)
    assert page["curves"] == len(with_metrics) == 8
    assert sorted(page["curveTrials"]) == with_metrics
    assert page["points"] == sum(points.values()) == study["epochs"]["trained"]
    assert page["best"] == [study["best"]["number"]]
    # Pruned trials: marked, drawn to the epoch they stopped at.
    pruned = sorted(t["number"] for t in trials if t["status"] == "pruned")
    assert pruned and study["trials"]["pruned"] == len(pruned)
    hopeless = [t["number"] for t in trials if t["params"]["optimizer.lr"] in (1.0, 0.5)]
    assert set(hopeless) <= set(pruned)
    assert sorted(page["prunedCurves"]) == pruned and page["pruneMarks"] == len(pruned)
    for trial in trials:
        if trial["status"] == "pruned":
            assert points[trial["number"]] == trial["epochs"] == trial["stop"]["epoch"] < EPOCHS

    # Parallel coordinates: a line per ended trial, an axis per parameter and the objective.
    ended = sorted(t["number"] for t in trials if t["value"] is not None)
    assert page["lines"] == len(page["lineTrials"]) == len(ended) == 8
    assert sorted(page["lineTrials"]) == ended and page["bestLine"] == [study["best"]["number"]]
    assert page["axes"] == ["model.hidden", "optimizer.lr", metric]

    # Importance: the API's values, once 8 trials ended; "not enough trials yet" before.
    importance = service.http.get(f"/v1/studies/{study_id}/importance").json()["params"]
    assert page["importance"] == "ready"
    assert page["bars"] == [[name, value] for name, value in importance.items()]
    early = [s for s in seen if s["status"] == "running" and len(s["rows"]) < 8]
    assert early and early[0]["importance"] == "waiting"
    assert "Not enough trials yet" in early[0]["importanceText"]

    # Live: while the study ran, the page showed fewer trials or epochs than at the end, and
    # the same page (never reloaded) then showed more.
    running = [s for s in seen if s["status"] == "running"]
    assert running, f"the page never showed the study running: {seen[:3]}"
    assert min(s["points"] for s in running) < page["points"]
    assert len({(len(s["rows"]), s["points"]) for s in seen}) >= 3, [
        (len(s["rows"]), s["points"]) for s in seen
    ]
    assert "dashboard-study" in listed
    assert (ARTIFACTS / "dashboard-study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
