"""``descent study``'s output without a service: the live line, the summary, the trial table
and CSV (the commands against a running service: tests/e2e/test_studies.py)."""

import csv
import io
from typing import Any

import httpx
import pytest

from descent.cli import main
from descent_client.studies import progress_line, summary_lines, trial_rows

STUDY: dict[str, Any] = {
    "id": "s1",
    "name": "digits-lr",
    "status": "running",
    "algorithm": "tpe",
    "grid_size": None,
    "objective": {"metric": "val_loss", "mode": "min"},
    "max_trials": 32,
    "parallelism": 4,
    "pruner": {"name": "asha"},
    "trials": {
        "total": 9,
        "queued": 1,
        "running": 3,
        "succeeded": 3,
        "pruned": 2,
        "failed": 0,
        "cancelled": 0,
    },  # fmt: skip
    "best": {
        "number": 4,
        "job_id": "j4",
        "value": 0.123456,
        "epoch": 5,
        "checkpoint_id": "c4",
        "params": {"optimizer.lr": 0.0031234, "model.hidden": [64, 32]},
    },
    "epochs": {"trained": 31, "without_pruning": 45, "saved": 14},
    "created_at": "2026-01-01T00:00:00Z",
}

TRIALS: list[dict[str, Any]] = [
    {
        "number": 0, "job_id": "j0", "status": "pruned", "value": 2.5, "epoch": 1, "epochs": 1,
        "params": {"optimizer": {"name": "sgd"}, "optimizer.momentum": 0.9},
        "stop": {"reason": "pruned", "rule": "asha"},
    },
    {
        "number": 1, "job_id": "j1", "status": "succeeded", "value": 0.123456789, "epoch": 5,
        "epochs": 5, "params": {"optimizer": {"name": "adam"}}, "stop": {"reason": "completed"},
    },
    {
        "number": 2, "job_id": "j2", "status": "queued", "value": None, "epoch": None,
        "epochs": 0, "params": {"optimizer": {"name": "adam"}}, "stop": None,
    },
]  # fmt: skip


def test_the_live_line_counts_done_pruned_running_and_the_best() -> None:
    assert progress_line(STUDY) == (
        "study s1: 5/32 done (2 pruned, 0 failed), 3 running, 1 queued; "
        "best val_loss 0.1235 (trial 4)"
    )
    assert progress_line({**STUDY, "best": None}).endswith("1 queued")


def test_the_summary_names_the_best_trial_its_params_epochs_saved_and_importance() -> None:
    lines = summary_lines(STUDY, {"optimizer.lr": 0.8, "model.hidden": 0.2})
    assert lines == [
        "digits-lr (s1) running: 9 trials (3 succeeded, 2 pruned, 3 running, 1 queued)",
        "algorithm tpe, pruner asha, objective val_loss (min), max 32 trials, 4 at once",
        "best: trial 4 (job j4) val_loss 0.1235 at epoch 5, checkpoint c4",
        "  optimizer.lr = 0.003123",
        "  model.hidden = [64,32]",
        "epochs: 31 trained, 45 without pruning (14 saved)",
        "importance: optimizer.lr 0.80, model.hidden 0.20",
    ]
    assert "best: none yet" in summary_lines({**STUDY, "best": None}, None)


def test_the_trial_table_has_a_column_per_parameter_conditional_ones_dashed() -> None:
    header, rows = trial_rows(TRIALS)
    assert header == [
        "#", "STATUS", "VALUE", "EPOCH", "EPOCHS", "optimizer", "optimizer.momentum", "STOP",
        "JOB",
    ]  # fmt: skip
    assert rows[0] == ["0", "pruned", "2.5000", "1", "1", '{"name":"sgd"}', "0.9", "asha", "j0"]
    assert rows[1][5:8] == ['{"name":"adam"}', "-", "completed"]
    assert rows[2][:5] == ["2", "queued", "-", "-", "0"]


def serve(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's HTTP answered by ``handler`` (no service)."""
    real = httpx.Client.__init__

    def init(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        kwargs["transport"] = httpx.MockTransport(handler)
        real(self, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "__init__", init)


def test_trials_csv_has_full_precision_and_empty_cells(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"items": TRIALS, "next": None})

    serve(handler, monkeypatch)
    assert main(["study", "trials", "s1", "--csv", "--sort", "objective", "--url", "http://x"]) == 0
    assert asked[0].url.path == "/v1/studies/s1/trials"
    assert asked[0].url.params["sort"] == "objective"
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "number", "status", "value", "epoch", "epochs", "optimizer", "optimizer.momentum",
        "stop", "job",
    ]  # fmt: skip
    assert rows[2][2] == "0.123456789" and rows[3][2:4] == ["", ""]
    assert rows[1][6] == "0.9" and rows[2][6] == ""


def test_show_without_enough_trials_for_importance_and_errors_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/importance"):
            return httpx.Response(409, json={"detail": "needs at least 8 trials"})
        if request.url.path == "/v1/studies/s1":
            return httpx.Response(200, json=STUDY)
        return httpx.Response(404, json={"detail": "study nope not found"})

    serve(handler, monkeypatch)
    assert main(["study", "show", "s1", "--url", "http://x"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits-lr (s1) running: 9 trials") and "importance" not in out
    assert main(["study", "show", "nope", "--url", "http://x"]) == 1
    assert capsys.readouterr().err == "descent: error 404: study nope not found\n"


def test_submit_follow_prints_a_line_per_change_and_exits_0_once_completed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("base: {dataset: {name: iris}}\nspace: {optimizer.lr: {choice: [0.1]}}\n")
    counts = {**STUDY["trials"], "total": 1, "queued": 0, "running": 1, "succeeded": 0,
              "pruned": 0}  # fmt: skip
    states = [
        {**STUDY, "max_trials": 1, "best": None, "trials": counts},
        {**STUDY, "max_trials": 1, "best": None, "trials": counts},  # unchanged: no line
        {**STUDY, "max_trials": 1, "status": "completed",
         "trials": {**counts, "running": 0, "succeeded": 1}},
    ]  # fmt: skip
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(request.read())
            return httpx.Response(201, json=states[0])
        if request.url.path.endswith("/importance"):
            return httpx.Response(409, json={"detail": "too few"})
        return httpx.Response(200, json=states.pop(0))

    serve(handler, monkeypatch)
    argv = ["study", "submit", str(path), "--follow", "--interval", "0", "--url", "http://x"]
    assert main(argv) == 0
    assert b'"optimizer.lr"' in posted[0]
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "s1"
    assert "digits-lr (s1) completed: 1 trials (1 succeeded)" in captured.out
    assert captured.err.splitlines() == [
        "study s1: 0/1 done (0 pruned, 0 failed), 1 running, 0 queued",
        "study s1: 1/1 done (0 pruned, 0 failed), 0 running, 0 queued; best val_loss 0.1235 "
        "(trial 4)",
    ]
