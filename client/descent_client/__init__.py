"""Descent's Python client and command line: a service's API over HTTP, without torch.

    from descent_client import DescentClient

    with DescentClient("http://127.0.0.1:8000", token="...") as client:
        job = client.submit("job.yaml")
        job = client.wait(job["id"])
        client.download(job["id"], "best.safetensors")

The names below are imported on first use, so that ``descent --help`` (and the service's
commands) do not import httpx.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from descent_client.client import (
        ChecksumMismatch,
        DescentClient,
        DescentError,
        Event,
        load_spec,
    )
    from descent_client.models import (
        TERMINAL,
        Checkpoint,
        Epoch,
        Export,
        Job,
        Study,
        Trial,
        Upload,
    )

_WHERE = {
    **dict.fromkeys(
        ["ChecksumMismatch", "DescentClient", "DescentError", "Event", "load_spec"], "client"
    ),
    **dict.fromkeys(
        ["TERMINAL", "Checkpoint", "Epoch", "Export", "Job", "Study", "Trial", "Upload"], "models"
    ),
}
__all__ = [
    "TERMINAL",
    "Checkpoint",
    "ChecksumMismatch",
    "DescentClient",
    "DescentError",
    "Epoch",
    "Event",
    "Export",
    "Job",
    "Study",
    "Trial",
    "Upload",
    "load_spec",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'descent_client' has no attribute {name!r}")
    return getattr(import_module(f"descent_client.{_WHERE[name]}"), name)
