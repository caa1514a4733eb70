"""The Python client and the user's commands, without a service: parsing and formatting."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from descent_client.client import (
    DescentClient,
    default_token,
    describe_detail,
    load_spec,
    parse_events,
)
from descent_client.commands import Progress, diagnosis_lines, report, verdict

ROOT = Path(__file__).resolve().parents[2]


def test_parse_events_joins_fields_and_skips_comments() -> None:
    lines = [
        "retry: 2000",
        "",
        ": keepalive",
        "",
        "id: 0:running",
        "event: status",
        'data: {"status": "running"}',
        "",
        "id: 1:running",
        "event: epoch",
        'data: {"epoch": 1,',
        'data:  "metrics": {}}',
        "",
    ]
    events = list(parse_events(iter(lines)))
    assert [(e.id, e.event) for e in events] == [("0:running", "status"), ("1:running", "epoch")]
    assert events[1].data == {"epoch": 1, "metrics": {}}


def test_load_spec_reads_yaml_and_json_files_and_text(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ntraining: {epochs: 3}\n")
    (tmp_path / "b.json").write_text('{"name": "b"}')
    assert load_spec(str(tmp_path / "a.yaml")) == {"name": "a", "training": {"epochs": 3}}
    assert load_spec(tmp_path / "b.json") == {"name": "b"}
    assert load_spec('{"name": "c"}') == {"name": "c"}
    assert load_spec({"name": "d"}) == {"name": "d"}
    with pytest.raises(FileNotFoundError):
        load_spec(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_spec(str(tmp_path / "list.yaml"))


def test_validation_errors_read_as_one_line() -> None:
    detail = [
        {"loc": ["body", "training", "batch_size"], "msg": "must be > 1 with batch norm"},
        {"loc": ["body", "optimizer", "name"], "msg": "unknown optimizer"},
    ]
    assert describe_detail(detail) == (
        "training.batch_size: must be > 1 with batch norm; optimizer.name: unknown optimizer"
    )
    assert describe_detail("job x not found") == "job x not found"


def test_token_comes_from_the_environment_then_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DESCENT_TOKEN", raising=False)
    monkeypatch.setenv("DESCENT_DATA_DIR", str(tmp_path))
    assert default_token() is None
    (tmp_path / "token").write_text("from-file\n")
    assert default_token() == "from-file"
    monkeypatch.setenv("DESCENT_TOKEN", "from-env")
    assert default_token() == "from-env"


def test_progress_shows_each_epoch_and_the_best_so_far() -> None:
    out = io.StringIO()
    progress = Progress(out)
    job = {
        "id": "j1",
        "status": "running",
        "best": {"metric": "val_loss", "mode": "min"},
        "spec": {"training": {"epochs": 4}},
    }
    progress.status(job)  # type: ignore[arg-type]
    for epoch, val in enumerate([0.5, 0.3, 0.4], start=1):
        progress.epoch({"epoch": epoch, "metrics": {"train_loss": 0.6, "val_loss": val}})
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "job j1: running"
    assert lines[1].startswith("epoch 1/4 [######------------------]")
    assert lines[3].endswith("best val_loss 0.3000 @ 2")


def test_verdict_names_the_outcome() -> None:
    job = {
        "id": "j1",
        "name": "digits",
        "status": "succeeded",
        "stop": {"reason": "early_stopping", "epoch": 9, "detail": "no improvement"},
        "best": {"epoch": 4, "metric": "val_loss", "value": 0.1, "mode": "min"},
        "error": None,
    }
    assert verdict(job) == (  # type: ignore[arg-type]
        "digits (j1) succeeded: early stopping at epoch 9 (no improvement); "
        "best val_loss 0.1000 @ 4"
    )


def test_client_and_commands_never_import_torch() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    code = (
        "import sys, descent_client.client, descent_client.commands, descent.cli\n"
        "descent.cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


DIAGNOSIS: dict[str, Any] = {
    "verdict": "overfitting",
    "summary": "validation loss rose for 29 epochs after epoch 11 (0.1455 → 0.9089)",
    "evidence": {
        "best": {"epoch": 11, "val_loss": 0.14545454545454545, "gap": 0.054545454545454536},
        "epochs_since_best": 29,
    },
    "remedies": ["more training data", "use the best checkpoint (epoch 11), not the last"],
    "gap": [0.5 - i / 39 + (1 / 3 if i == 7 else 0.0) for i in range(40)],
    "findings": [{"verdict": "overfitting"}, {"verdict": "val_below_train"}],
    "epoch": 40,
    "final": True,
}


def test_the_diagnosis_reads_as_lines_with_rounded_numbers() -> None:
    job = {"id": "j1", "status": "succeeded", "diagnosis": DIAGNOSIS}
    assert diagnosis_lines(job) == [  # type: ignore[arg-type]
        "diagnosis: overfitting (final, after 40 epochs)",
        "  validation loss rose for 29 epochs after epoch 11 (0.1455 → 0.9089)",
        "  evidence:",
        "    best: epoch 11, val loss 0.1455, gap 0.05455",
        "    epochs since best: 29",
        "  gap (val - train loss): -0.5 at the last epoch (min -0.5, max 0.6538 over 40 epochs)",
        "  also found: val below train",
        "  remedies:",
        "    - more training data",
        "    - use the best checkpoint (epoch 11), not the last",
    ]
    assert diagnosis_lines({"id": "j2", "status": "queued"}) == []  # type: ignore[typeddict-item]


def test_report_prints_the_verdict_then_the_diagnosis_and_gives_the_exit_status() -> None:
    job: Any = {
        "id": "j1",
        "name": "digits",
        "status": "succeeded",
        "stop": {"reason": "completed", "epoch": 40},
        "best": {"epoch": 11, "metric": "val_loss", "value": 0.14545454545454545, "mode": "min"},
        "diagnosis": DIAGNOSIS,
        "warnings": ["batch norm on batches of 8"],
    }
    out = io.StringIO()
    assert report(job, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "digits (j1) succeeded: completed at epoch 40; best val_loss 0.1455 @ 11"
    assert lines[1] == "diagnosis: overfitting (final, after 40 epochs)"
    assert lines[-1] == "warning: batch norm on batches of 8"
    # Readable: no number printed with more than 4 significant digits, no raw array.
    numbers = re.findall(r"\d+\.\d+", out.getvalue())
    assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 4 for n in numbers), numbers
    assert "[" not in out.getvalue() and "{" not in out.getvalue()
    assert report({**job, "status": "failed"}, io.StringIO()) == 1


def paged(records: list[dict[str, Any]], *, complete: bool | None, ended: list[bool]) -> Any:
    """A transport answering /metrics pages as the contract says, over ``records`` (which the
    test grows between polls): `next` always the cursor; `complete` (or, when None, no such
    field) once ``ended[0]`` and the page holds the last epoch."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metrics"):
            after = int(request.url.params["after"])
            limit = min(int(request.url.params["limit"]), 3)  # small pages: the cursor matters
            items = [r for r in records if r["epoch"] > after][:limit]
            page: dict[str, Any] = {"items": items, "next": items[-1]["epoch"] if items else after}
            if complete is not None:
                last = records[-1]["epoch"] if records else 0
                page["complete"] = ended[0] and page["next"] == last
            return httpx.Response(200, json=page)
        status = "succeeded" if ended[0] else "running"
        return httpx.Response(200, json={"id": "j", "status": status})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("complete", [True, None], ids=["complete", "no-complete-field"])
def test_metrics_follow_next_and_stop_on_complete(complete: bool | None) -> None:
    records: list[dict[str, Any]] = []
    ended = [False]
    transport = paged(records, complete=complete, ended=ended)
    with DescentClient("http://x", token="t", transport=transport) as client:
        assert client.metrics("j") == []  # nothing yet: an empty page, not an endless loop
        records += [{"epoch": e, "metrics": {"val_loss": 1 / e}} for e in range(1, 8)]
        assert [r["epoch"] for r in client.metrics("j")] == list(range(1, 8))
        assert [r["epoch"] for r in client.metrics("j", after=5)] == [6, 7]

        seen = []
        for record in client.poll_metrics("j", interval=0):
            seen.append(record["epoch"])
            if record["epoch"] == 7:  # the job goes on, then ends, while the client polls
                records.extend({"epoch": e, "metrics": {}} for e in range(8, 12))
                ended[0] = True
        assert seen == list(range(1, 12))
