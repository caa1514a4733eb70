"""A Python client for the Descent API, over httpx. It never imports torch.

    from descent_client import DescentClient

    with DescentClient("http://127.0.0.1:8000", token="...") as client:
        job = client.submit("job.yaml")                      # a path, YAML/JSON text or a dict
        job = client.wait(job["id"], on_epoch=lambda e: print(e["epoch"], e["metrics"]))
        frame = client.metrics_frame(job["id"])              # pandas, when it is installed
        client.download(job["id"], "best.safetensors")       # sha256 checked
        data = client.upload_dataset("train.csv", target="label")  # then {source: upload, id: ...}
        study = client.submit_study("study.yaml")            # a hyperparameter search
        study = client.wait_study(study["id"], on_update=lambda s: print(s["trials"]))
        best_first = client.trials(study["id"], sort="objective")

Without arguments the client takes the server from ``DESCENT_URL`` (default
``http://127.0.0.1:8000``) and the token from ``DESCENT_TOKEN``, else from the file
``token`` in the data folder (``DESCENT_DATA_DIR``, default ``./data``) that ``descent serve``
writes. Every error the API answers is raised as ``DescentError`` with its status and detail.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from descent_client.models import (
    TERMINAL,
    Checkpoint,
    Epoch,
    Export,
    Importance,
    Job,
    MetricsPage,
    Study,
    Trial,
    Upload,
)

if TYPE_CHECKING:
    import pandas

DEFAULT_URL = "http://127.0.0.1:8000"
# An event stream cut before the job's final status is opened again: after 0.5 s, doubling up
# to 10 s, and given up after 10 reconnects in a row that brought nothing (about a minute).
RECONNECTS = 10
RECONNECT_BACKOFF = (0.5, 10.0)
# Answers of a proxy or a restarting API that a reconnect may outlast.
RETRIED_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``status`` (data: the job) or ``epoch`` (data: its record)."""

    id: str
    event: str
    data: Any


class DescentError(Exception):
    """The API answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{status_code}: {describe_detail(detail)}")


class ChecksumMismatch(DescentError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(0, f"sha256 mismatch: expected {expected}, got {actual}")


def describe_detail(detail: Any) -> str:
    """FastAPI's error detail as one line: a string as is, validation errors as
    ``field.path: reason; ...``."""
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
                parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', '')}")
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return str(detail)


def default_url() -> str:
    return os.environ.get("DESCENT_URL") or DEFAULT_URL


def default_token() -> str | None:
    """``DESCENT_TOKEN``, else the token file of the local data folder, else None."""
    token = os.environ.get("DESCENT_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("DESCENT_DATA_DIR") or "data") / "token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def load_spec(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A job spec from a dict, a ``.yaml``/``.yml``/``.json`` file, or YAML/JSON text."""
    if isinstance(source, dict):
        return source
    looks_like_text = isinstance(source, str) and (
        "\n" in source or source.lstrip().startswith("{") or ": " in source
    )
    text = str(source) if looks_like_text else Path(source).read_text()
    import yaml  # JSON is YAML too

    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise ValueError("a job spec must be a mapping (YAML or JSON object)")
    return spec


class DescentClient:
    """The API as methods. Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else default_token()
        headers = {"User-Agent": "descent-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> DescentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- requests ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise DescentError(0, f"cannot reach {self.url}: {exc}") from exc
        _raise_for_status(response)
        return response

    def submit(self, spec: str | Path | dict[str, Any]) -> Job:
        """Submit a job spec (a dict, a YAML/JSON file path, or YAML/JSON text)."""
        job: Job = self._request("POST", "/v1/jobs", json=load_spec(spec)).json()
        return job

    def job(self, job_id: str) -> Job:
        job: Job = self._request("GET", f"/v1/jobs/{job_id}").json()
        return job

    def _pages(
        self, path: str, params: dict[str, Any], limit: int | None, page_size: int
    ) -> list[Any]:
        """The items of a cursor-paged list, page after page (at most ``limit`` of them);
        empty parameters are not sent."""
        out: list[Any] = []
        cursor: str | None = None
        while True:
            query = {k: v for k, v in params.items() if v}
            query["limit"] = min(page_size, limit - len(out)) if limit else page_size
            if cursor:
                query["cursor"] = cursor
            page = self._request("GET", path, params=query).json()
            out += page["items"]
            cursor = page["next"]
            if cursor is None or (limit is not None and len(out) >= limit):
                return out

    def jobs(self, status: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first, following the cursor (at most ``limit`` of them)."""
        return self._pages("/v1/jobs", {"status": status}, limit, page_size=200)

    def cancel(self, job_id: str) -> Job:
        job: Job = self._request("POST", f"/v1/jobs/{job_id}/cancel").json()
        return job

    def metrics_page(self, job_id: str, after: int = 0, limit: int = 1000) -> MetricsPage:
        """One page of ``/metrics``: ``{"items": [...], "next": cursor, "complete": bool}``.
        ``next`` is where the following page starts (pass it as ``after``); ``complete``
        says the job has ended and this page holds its last epoch."""
        page: MetricsPage = self._request(
            "GET", f"/v1/jobs/{job_id}/metrics", params={"after": after, "limit": limit}
        ).json()
        return page

    def metrics(self, job_id: str, after: int = 0) -> list[Epoch]:
        """Every epoch record after ``after`` stored so far, in order, following ``next``."""
        out: list[Epoch] = []
        while True:
            page = self.metrics_page(job_id, after)
            out += page["items"]
            # An empty page, or (servers before `complete`) a null `next`, is the end so far.
            if page.get("complete") or not page["items"] or page.get("next") is None:
                return out
            after = page["next"]

    def poll_metrics(self, job_id: str, after: int = 0, interval: float = 1.0) -> Iterator[Epoch]:
        """Every epoch record after ``after`` as it is stored, until the job has ended:
        polls ``/metrics`` with ``after`` set to each page's ``next`` (no epoch repeated or
        lost) and stops on ``complete``."""
        ended = False
        while True:
            page = self.metrics_page(job_id, after)
            yield from page["items"]
            if page["items"]:
                after = page["items"][-1]["epoch"] if page.get("next") is None else page["next"]
            if page.get("complete"):
                return
            if not page["items"]:
                # A server that does not say `complete`: the job's status does. An empty
                # page read after the job had ended means there is nothing more.
                if ended:
                    return
                ended = self.job(job_id)["status"] in TERMINAL
                if not ended:
                    time.sleep(interval)

    def metrics_frame(self, job_id: str) -> pandas.DataFrame:
        """The metrics as a pandas DataFrame indexed by epoch (needs pandas installed)."""
        try:
            import pandas
        except ImportError as exc:
            raise ImportError("metrics_frame needs pandas: pip install pandas") from exc
        records = self.metrics(job_id)
        frame = pandas.DataFrame.from_records(
            [{"epoch": r["epoch"], **r["metrics"]} for r in records]
        )
        return frame.set_index("epoch") if len(frame) else frame

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        items: list[Checkpoint] = self._request("GET", f"/v1/jobs/{job_id}/checkpoints").json()[
            "items"
        ]
        return items

    def plot(self, job_id: str, width: int = 1000, height: int = 450) -> bytes:
        """The job's curves as PNG bytes."""
        return self._request(
            "GET", f"/v1/jobs/{job_id}/plot.png", params={"width": width, "height": height}
        ).content

    def _checkpoint(self, job_id: str, epoch: int | None) -> Checkpoint:
        """The job's best checkpoint (``epoch`` None) or the one of ``epoch``, as listed."""
        listing = self.checkpoints(job_id)
        if epoch is None:
            best = next((c for c in listing if c["is_best"]), None)
            if best is None:
                raise DescentError(404, f"job {job_id} has no best checkpoint yet")
            return best
        chosen = next((c for c in listing if c["epoch"] == epoch), None)
        if chosen is None:
            kept = ", ".join(str(c["epoch"]) for c in listing) or "none"
            raise DescentError(
                404, f"job {job_id} keeps no checkpoint of epoch {epoch} (kept: {kept})"
            )
        return chosen

    def _save(
        self, url: str, path: str | Path, *, known: str, require: bool, progress: bool
    ) -> str:
        """Stream ``url`` into ``path`` (through ``path.part``, removed on any failure) and
        return its sha256, which must equal the server's checksum header (``known`` when it
        sends none) and, with ``require``, ``known`` too. ``progress``: a bar on stderr."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with self.http.stream("GET", url) as response:
                if response.is_error:
                    response.read()
                    _raise_for_status(response)
                served = response.headers.get("x-checksum-sha256") or response.headers.get(
                    "etag", ""
                ).strip('"')
                size = int(response.headers.get("content-length") or 0) or None
                with partial.open("wb") as out, _bar(progress, size, target.name) as bar:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
            actual = digest.hexdigest()
            expected = served or known
            if actual != expected or (require and actual != known):
                raise ChecksumMismatch(expected if actual != expected else known, actual)
            partial.replace(target)
        except httpx.TransportError as exc:
            raise DescentError(0, f"download from {self.url} failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return actual

    def download(
        self,
        job_id: str,
        path: str | Path,
        *,
        epoch: int | None = None,
        progress: bool = False,
    ) -> Checkpoint:
        """Save the best checkpoint (or the one of ``epoch``) to ``path``, checking its sha256
        against the checkpoint's listing and the response's ETag. Returns the checkpoint.
        ``progress`` draws a bar on stderr."""
        chosen = self._checkpoint(job_id, epoch)
        if epoch is None:
            url = f"/v1/jobs/{job_id}/checkpoints/best"
        else:
            url = f"/v1/checkpoints/{chosen['id']}"
        # The best may move on between the listing and the download: trust the server's
        # checksum of what it sent, and require the listing to agree when the checkpoint was
        # named by epoch.
        actual = self._save(
            url, path, known=chosen["sha256"], require=epoch is not None, progress=progress
        )
        if epoch is None and actual != chosen["sha256"]:
            chosen = next((c for c in self.checkpoints(job_id) if c["sha256"] == actual), chosen)
        return chosen

    # -- exports ----------------------------------------------------------------------------

    def create_export(self, checkpoint_id: str, format: str) -> Export:
        """Ask for an export of a checkpoint (``onnx`` or ``torchscript``); it runs on a
        worker. Returns the queued export."""
        export: Export = self._request(
            "POST", f"/v1/checkpoints/{checkpoint_id}/exports", json={"format": format}
        ).json()
        return export

    def export_status(self, export_id: str) -> Export:
        export: Export = self._request("GET", f"/v1/exports/{export_id}").json()
        return export

    def exports(self, checkpoint_id: str) -> list[Export]:
        """The checkpoint's exports, oldest first."""
        page = self._request("GET", f"/v1/checkpoints/{checkpoint_id}/exports").json()
        items: list[Export] = page["items"]
        return items

    def wait_export(
        self, export_id: str, interval: float = 1.0, timeout: float | None = None
    ) -> Export:
        """Poll the export until it has succeeded or failed (or ``timeout`` seconds pass:
        DescentError 0); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            export = self.export_status(export_id)
            if export["status"] in ("succeeded", "failed"):
                return export
            if deadline is not None and time.monotonic() >= deadline:
                raise DescentError(0, f"export {export_id} still {export['status']}")
            time.sleep(interval)

    def download_export(self, export: Export, path: str | Path, *, progress: bool = False) -> str:
        """Save a succeeded export's file to ``path``; its sha256 must match the export's.
        Returns the sha256."""
        if export["status"] != "succeeded" or not export["sha256"]:
            raise DescentError(409, f"export {export['id']} is {export['status']}, no file")
        return self._save(
            f"/v1/exports/{export['id']}/file",
            path,
            known=export["sha256"],
            require=True,
            progress=progress,
        )

    def export(
        self,
        job_id: str,
        path: str | Path,
        *,
        format: str = "onnx",
        epoch: int | None = None,
        interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Export:
        """Export the job's best checkpoint (or the one of ``epoch``) to ``format``, wait for
        the worker to make and check it, and save it to ``path``, sha256 verified. A failed
        export (a model that cannot be exported, a parity check above its tolerance)
        raises DescentError with the reason. Returns the export (its ``parity`` included)."""
        checkpoint = self._checkpoint(job_id, epoch)
        export = self.wait_export(
            self.create_export(checkpoint["id"], format)["id"], interval, timeout
        )
        if export["status"] == "failed":
            raise DescentError(0, f"export {export['id']} failed: {export['error']}")
        self.download_export(export, path, progress=progress)
        return export

    # -- uploads ----------------------------------------------------------------------------

    def _upload(self, route: str, path: str | Path, fields: dict[str, str | None]) -> Upload:
        source = Path(path)
        data = {key: value for key, value in fields.items() if value is not None}
        with source.open("rb") as handle:
            upload: Upload = self._request(
                "POST", route, files={"file": (source.name, handle)}, data=data
            ).json()
        return upload

    def upload_dataset(
        self, path: str | Path, target: str | None = None, name: str | None = None
    ) -> Upload:
        """Upload a dataset (.csv with ``target`` naming its target column, .npz, or a .zip
        of an image folder). A job uses it with ``dataset: {source: upload, id: ...}``."""
        return self._upload("/v1/datasets", path, {"target": target, "name": name})

    def upload_weights(self, path: str | Path, arch: str, name: str | None = None) -> Upload:
        """Upload backbone weights (.safetensors, .pt/.pth) for the torchvision ``arch``. A
        job uses them with ``backbone: {arch: ..., weights: "upload:<id>"}``."""
        return self._upload("/v1/weights", path, {"arch": arch, "name": name})

    def datasets(self, limit: int = 200) -> list[Upload]:
        """Your datasets, newest first."""
        page = self._request("GET", "/v1/datasets", params={"limit": limit}).json()
        items: list[Upload] = page["items"]
        return items

    def weights(self, limit: int = 200) -> list[Upload]:
        """Your weights files, newest first."""
        page = self._request("GET", "/v1/weights", params={"limit": limit}).json()
        items: list[Upload] = page["items"]
        return items

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def delete_weights(self, weights_id: str) -> None:
        self._request("DELETE", f"/v1/weights/{weights_id}")

    # -- studies ----------------------------------------------------------------------------

    def submit_study(self, study: str | Path | dict[str, Any]) -> Study:
        """Start a study (a dict, a YAML/JSON file path, or YAML/JSON text): ``base``,
        ``space``, ``algorithm``, ``max_trials``, ``parallelism``, ``pruner``..."""
        answer: Study = self._request("POST", "/v1/studies", json=load_spec(study)).json()
        return answer

    def study(self, study_id: str) -> Study:
        """The study: status, ``trials`` by status, ``best`` trial, ``epochs`` saved."""
        answer: Study = self._request("GET", f"/v1/studies/{study_id}").json()
        return answer

    def studies(self, limit: int | None = None) -> list[Study]:
        """Studies, newest first, following the cursor (at most ``limit`` of them)."""
        return self._pages("/v1/studies", {}, limit, page_size=200)

    def trials(self, study_id: str, sort: str = "number", status: str | None = None) -> list[Trial]:
        """Every trial of the study: ``sort`` is number, -number, objective (best first)
        or -objective; ``status`` one of queued, running, succeeded, pruned, failed,
        cancelled."""
        params = {"sort": sort, "status": status}
        return self._pages(f"/v1/studies/{study_id}/trials", params, None, page_size=1000)

    def cancel_study(self, study_id: str) -> Study:
        """Make no more trials; cancel the queued ones and stop the running ones."""
        answer: Study = self._request("POST", f"/v1/studies/{study_id}/cancel").json()
        return answer

    def importance(self, study_id: str) -> dict[str, float]:
        """{parameter: importance} (fANOVA; summing to 1, most important first). Raises
        DescentError 409 until enough trials have ended."""
        answer: Importance = self._request("GET", f"/v1/studies/{study_id}/importance").json()
        return answer["params"]

    def wait_study(
        self,
        study_id: str,
        on_update: Callable[[Study], None] | None = None,
        interval: float = 1.0,
    ) -> Study:
        """Poll the study until it is no longer running, calling ``on_update`` with it
        whenever its trials or best change (and once at the start); returns it."""
        seen: Any = None
        while True:
            study = self.study(study_id)
            best = study.get("best")
            state = (study["status"], study["trials"], best.get("job_id") if best else None)
            if on_update is not None and state != seen:
                on_update(study)
            seen = state
            if study["status"] != "running":
                return study
            time.sleep(interval)

    # -- live progress ----------------------------------------------------------------------

    def events(
        self,
        job_id: str,
        last_event_id: str | None = None,
        *,
        after: int | None = None,
        max_reconnects: int = RECONNECTS,
        backoff: tuple[float, float] = RECONNECT_BACKOFF,
    ) -> Iterator[Event]:
        """The job's events until its final status.

        A stream that ends before the final status event (a proxy's timeout, an API
        restart, a dropped connection: they read like a normal end) is opened again with
        ``Last-Event-ID``, so no epoch is lost or repeated. Reconnects wait ``backoff[0]``
        seconds, doubling up to ``backoff[1]``; after ``max_reconnects`` in a row that
        brought nothing (no event, no heartbeat) it raises DescentError 0."""
        last_id = last_event_id
        attempts = 0  # connections in a row that brought nothing
        while True:
            heard = False
            try:
                headers = {"Accept": "text/event-stream"}
                params: dict[str, Any] = {}
                if last_id:
                    headers["Last-Event-ID"] = last_id
                elif after is not None:
                    params["after"] = after
                with self.http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    params=params,
                    timeout=httpx.Timeout(self.http.timeout.connect, read=60.0),
                ) as response:
                    if response.status_code == 204:  # ended, and we have all of it
                        return
                    if response.is_error and response.status_code not in RETRIED_STATUSES:
                        response.read()
                        _raise_for_status(response)
                    reason = f"answered {response.status_code}"
                    if not response.is_error:
                        reason = "the stream ended before the job's final status"
                        for event in _read_events(response.iter_lines()):
                            heard = True
                            if event is None:
                                continue
                            last_id = event.id or last_id
                            yield event
                            if event.event == "status" and event.data.get("status") in TERMINAL:
                                return
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            attempts = 1 if heard else attempts + 1
            if attempts > max_reconnects:
                raise DescentError(
                    0, f"lost the event stream of job {job_id} ({max_reconnects} reconnects "
                    f"brought nothing): {reason}",
                )  # fmt: skip
            time.sleep(min(backoff[1], backoff[0] * 2 ** (attempts - 1)))

    def wait(
        self,
        job_id: str,
        on_epoch: Callable[[Epoch], None] | None = None,
        on_status: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the job until it ends, calling ``on_epoch`` for every epoch (from the
        first) and ``on_status`` at each status change; returns the final job."""
        job: Job | None = None
        for event in self.events(job_id, after=0):
            if event.event == "epoch" and on_epoch is not None:
                on_epoch(event.data)
            elif event.event == "status":
                job = event.data
                if on_status is not None:
                    on_status(event.data)
        return job if job is not None else self.job(job_id)


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events from a stream's lines (comments skipped)."""
    for event in _read_events(lines):
        if event is not None:
            yield event


def _read_events(lines: Iterator[str]) -> Iterator[Event | None]:
    """For each line of a stream, the event it completes, or None."""
    event_id, name = "", ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            event = None
            if data:
                event = Event(event_id, name or "message", json.loads("\n".join(data)))
            name, data = "", []
            yield event
            continue
        yield None
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def _bar(show: bool, total: int | None, name: str) -> Any:
    """A byte progress bar on stderr (tqdm), or one that draws nothing."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                leave=False)  # fmt: skip


def _raise_for_status(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise DescentError(response.status_code, detail)
