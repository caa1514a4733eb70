"""The Python client and the user's commands, without a service: parsing and formatting."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from descent.client import default_token, describe_detail, load_spec, parse_events
from descent.commands import Progress, verdict

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
        "import sys, descent.client, descent.commands, descent.cli\n"
        "descent.cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
