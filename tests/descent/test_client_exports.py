"""``DescentClient.export`` (``descent export``) against a fake API: it asks for the export
of the right checkpoint, waits for it, saves the file only when its sha256 matches, and
raises the reason of a failed export."""

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from descent_client.client import ChecksumMismatch, DescentClient, DescentError

MODEL = b"onnx bytes" * 1000
CHECKPOINTS = [
    {"id": "c1", "epoch": 1, "is_best": False, "sha256": "x"},
    {"id": "c2", "epoch": 2, "is_best": True, "sha256": "y"},
]


def fake_api(outcome: str, served: bytes = MODEL) -> tuple[httpx.MockTransport, list[str]]:
    """The export of a checkpoint, queued, then running, then ``outcome``; ``served`` is the
    file the download route sends. Returns the transport and the requests it saw."""
    seen: list[str] = []
    polls = iter(["queued", "running", outcome])

    def export(status: str) -> dict[str, Any]:
        done = status == "succeeded"
        return {
            "id": "e1", "checkpoint_id": "c2", "job_id": "j", "format": "onnx",
            "status": status, "error": "unsupported operator" if status == "failed" else None,
            "parity": {"max_abs_diff": 1e-6, "tolerance": 1e-4, "samples": 360} if done else None,
            "bytes": len(MODEL) if done else None,
            "sha256": hashlib.sha256(MODEL).hexdigest() if done else None,
        }  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        path = request.url.path
        if path == "/v1/jobs/j/checkpoints":
            return httpx.Response(200, json={"items": CHECKPOINTS})
        if path.endswith("/exports") and request.method == "POST":
            assert request.read() == b'{"format":"onnx"}'
            return httpx.Response(202, json=export("queued"))
        if path == "/v1/exports/e1":
            return httpx.Response(200, json=export(next(polls)))
        if path == "/v1/exports/e1/file":
            sha = hashlib.sha256(MODEL).hexdigest()
            return httpx.Response(200, content=served, headers={"x-checksum-sha256": sha})
        return httpx.Response(404, json={"detail": f"no {path}"})

    return httpx.MockTransport(handle), seen


def test_export_waits_for_the_best_checkpoints_export_and_saves_it(tmp_path: Path) -> None:
    transport, seen = fake_api("succeeded")
    out = tmp_path / "model.onnx"
    with DescentClient("http://x", token="t", transport=transport) as client:
        export = client.export("j", out, format="onnx", interval=0)
    assert out.read_bytes() == MODEL
    assert export["status"] == "succeeded" and export["parity"] is not None
    assert seen == [
        "GET /v1/jobs/j/checkpoints",
        "POST /v1/checkpoints/c2/exports",  # the best one
        "GET /v1/exports/e1", "GET /v1/exports/e1", "GET /v1/exports/e1",
        "GET /v1/exports/e1/file",
    ]  # fmt: skip


def test_a_failed_export_raises_its_reason_and_writes_nothing(tmp_path: Path) -> None:
    transport, seen = fake_api("failed")
    out = tmp_path / "model.onnx"
    with DescentClient("http://x", token="t", transport=transport) as client:
        with pytest.raises(DescentError, match="export e1 failed: unsupported operator"):
            client.export("j", out, epoch=1, interval=0)
    assert "POST /v1/checkpoints/c1/exports" in seen and "GET /v1/exports/e1/file" not in seen
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_download_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    transport, _ = fake_api("succeeded", served=MODEL[:-1] + b"!")
    out = tmp_path / "model.onnx"
    with DescentClient("http://x", token="t", transport=transport) as client:
        with pytest.raises(ChecksumMismatch):
            client.export("j", out, interval=0)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part
