"""Uploads are inspected in a child process, so that a hostile file cannot take the API down.

The child is forked from a fork server (multiprocessing's "forkserver" start method: a
process started once, on the first upload, with the inspectors' modules imported, torch
among them, so that a weights upload does not pay for importing it, while the API itself
never imports torch). Before it reads a byte of the file, the child limits what it may
allocate (``RLIMIT_DATA``, counted above what it inherited) and offers itself first to the
kernel's OOM killer. It answers in JSON over a pipe; one that runs out of memory answers
413, one that dies or takes longer than ``TIMEOUT_SECONDS`` is killed and answers 422, and
any other failure to read the file is a 422 naming it. The API's own memory does not grow
with the file: it only copies it to disk and reads the child's answer.
"""

import json
import logging
import multiprocessing
import os
import resource
import signal
import traceback
from collections.abc import Callable
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from api.errors import TooLarge
from api.uploads.validate import Checked, FormFieldError, InvalidUpload

logger = logging.getLogger("api")

TIMEOUT_SECONDS = 300.0
MAX_ANSWER = 16 << 20  # the JSON a child may answer with
# Modules the fork server imports once, for every child to inherit.
PRELOAD = ["api.uploads.inspect", "core.uploads", "PIL.Image", "torch", "torchvision"]


def memory_limit(max_decoded_bytes: int) -> int:
    """What an inspection may allocate: the decoded data, a copy of it (a transpose, a
    conversion), and room for the libraries."""
    return 2 * max_decoded_bytes + (1 << 30)


def inspect_upload(
    kind: str,
    path: Path,
    *,
    target: str | None,
    arch: str | None,
    max_unpacked_bytes: int,
    max_decoded_bytes: int,
) -> Checked:
    """The core's verdict on an uploaded file, reached in a child process: its Checked
    metadata, or FormFieldError / InvalidUpload (422) or TooLarge (413) saying why not."""
    answer = run_limited(
        _inspect,
        (kind, str(path), target, arch, max_unpacked_bytes, max_decoded_bytes),
        memory_bytes=memory_limit(max_decoded_bytes),
    )
    return Checked(answer["format"], answer["info"])


def run_limited(
    function: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    *,
    memory_bytes: int,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """``function(*args)`` (JSON-ready) in a child limited to ``memory_bytes`` and
    ``timeout`` seconds; its refusals raised here as they were there."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(sender, function, args, memory_bytes), name="descent-inspect"
    )
    child.start()
    sender.close()
    raw, died, timed_out = None, False, False
    try:
        if receiver.poll(timeout):
            raw = receiver.recv_bytes(MAX_ANSWER)
        else:
            timed_out = True
    except EOFError:  # it died before it answered
        died = True
    except OSError:  # an answer longer than MAX_ANSWER
        pass
    finally:
        receiver.close()
        child.join(timeout=5 if raw is not None else 0)
        if child.exitcode is None:
            child.kill()
            child.join()
    if timed_out:
        raise InvalidUpload(f"inspecting the file took longer than {timeout:g} seconds")
    if died and child.exitcode == -signal.SIGKILL:  # the OOM killer's signal
        raise TooLarge(
            "inspecting the file was stopped for running out of memory (it may use "
            f"{memory_bytes:,} bytes)"
        )
    if died:
        how = _ending(child.exitcode)
        raise InvalidUpload(f"the file could not be inspected: its reader ended with {how}")
    if raw is None:
        raise InvalidUpload("the file's description is too large")
    answer = json.loads(raw)
    if "error" not in answer:
        return answer
    if answer.get("status") == 413:
        raise TooLarge(answer["error"])
    if answer.get("field", "file") != "file":
        raise FormFieldError(answer["field"], answer["error"])
    raise InvalidUpload(answer["error"])


def _ending(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


@cache
def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _child(
    sender: Connection,
    function: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    memory_bytes: int,
) -> None:
    _limit_memory(memory_bytes)
    try:
        answer = function(*args)
    except FormFieldError as exc:
        answer = {"error": str(exc), "field": exc.field}
    except InvalidUpload as exc:
        answer = {"error": str(exc)}
    except MemoryError:
        answer = {
            "error": f"inspecting the file needs more memory than the {memory_bytes:,} "
            "bytes it may use; a smaller file fits",
            "status": 413,
        }
    except BaseException as exc:  # noqa: BLE001 - whatever a hostile file makes a reader do
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        answer = {"error": f"the file cannot be read: {type(exc).__name__}: {text}"}
    sender.send_bytes(json.dumps(answer).encode())
    sender.close()


def _limit_memory(memory_bytes: int) -> None:
    """Limit what this process may allocate to ``memory_bytes`` more than it holds now,
    and make it the OOM killer's first choice."""
    try:
        with open("/proc/self/status") as f:
            held = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        held = 0
    limit = held + memory_bytes
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError):
        logger.warning("upload inspection runs without a memory limit (RLIMIT_DATA refused)")
    try:
        with open(f"/proc/{os.getpid()}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _inspect(
    kind: str,
    path: str,
    target: str | None,
    arch: str | None,
    max_unpacked_bytes: int,
    max_decoded_bytes: int,
) -> dict[str, Any]:
    from api.uploads.validate import check_dataset, check_weights

    if kind == "dataset":
        checked = check_dataset(
            Path(path),
            target=target,
            max_unpacked=max_unpacked_bytes,
            max_decoded=max_decoded_bytes,
        )
    else:
        checked = check_weights(Path(path), arch=arch)
    return {"format": checked.format, "info": checked.info}
