"""The user's commands of ``descent``: talk to a running service over HTTP.

    descent submit job.yaml [--follow]         submit a spec (YAML or JSON); follow it live
    descent wait ID [--quiet]                  follow a job to its end (exit 0: it succeeded)
    descent jobs [--status S]                  the jobs, as a table
    descent show ID [--json]                   one job
    descent metrics ID [--csv]                 its per-epoch metrics, as a table or CSV
    descent cancel ID                          stop it
    descent download ID [--best | --epoch N] -o FILE   save a checkpoint, sha256 verified
    descent export ID --format onnx|torchscript [--epoch N] -o FILE   export, wait, save it
    descent datasets [upload FILE [--target COL] [--name N] | delete ID]   your datasets
    descent weights [upload FILE --arch A [--name N] | delete ID]          your backbone weights
    descent study submit|list|show|trials|cancel   hyperparameter searches (studies.py)

The server is ``--url`` or ``DESCENT_URL`` (default http://127.0.0.1:8000); the token is
``--token``, or ``DESCENT_TOKEN``, or the ``token`` file of the local data folder that
``descent serve`` writes. They use ``descent_client.client``: httpx, PyYAML and tqdm, no torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from descent_client.models import TERMINAL

if TYPE_CHECKING:  # httpx is imported only by the commands that talk to the service
    from descent_client.client import DescentClient
    from descent_client.models import Epoch, Job, Upload

# Columns shown first, in this order; any other metric follows by name.
FIRST_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
BAR_WIDTH = 24


def _client(args: argparse.Namespace) -> DescentClient:
    from descent_client.client import DescentClient

    return DescentClient(args.url, args.token)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{max(1, digits - 2)}e}"
        return f"{value:.{digits}f}"
    return str(value)


def _best(job: Job) -> str:
    best = job.get("best") or {}
    if best.get("epoch") is None:
        return "-"
    return f"{best.get('metric')} {_fmt(best.get('value'))} @ {best.get('epoch')}"


def _total_epochs(job: Job) -> int | None:
    total = ((job.get("spec") or {}).get("training") or {}).get("epochs")
    return int(total) if isinstance(total, int) else None


def _table(rows: list[list[str]], header: list[str], out: TextIO) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _metric_names(records: list[Epoch]) -> list[str]:
    names = {name for record in records for name in record["metrics"]}
    return [n for n in FIRST_METRICS if n in names] + sorted(names - set(FIRST_METRICS))


# ---- progress of a followed job -----------------------------------------------------------------


class Progress:
    """One line per epoch: a bar, the losses, and the best epoch so far.

    On a terminal the line is redrawn in place; elsewhere (a log, a pipe) each epoch gets
    its own line.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.total: int | None = None
        self.monitor = "val_loss"
        self.mode = "min"
        self.best: tuple[int, float] | None = None
        self.drawn = False

    def know(self, job: Job) -> None:
        """Take the epoch count and the monitored metric from the job."""
        self.total = _total_epochs(job) or self.total
        best = job.get("best") or {}
        self.monitor = best.get("metric") or self.monitor
        self.mode = best.get("mode") or self.mode

    def status(self, job: Job) -> None:
        self.know(job)
        self._end_line()
        print(f"job {job['id']}: {job['status']}", file=self.out, flush=True)

    def epoch(self, record: Epoch) -> None:
        epoch, metrics = record["epoch"], record["metrics"]
        value = metrics.get(self.monitor)
        if value is not None and math.isfinite(value):
            better = self.best is None or (
                value < self.best[1] if self.mode == "min" else value > self.best[1]
            )
            if better:
                self.best = (epoch, value)
        total = self.total or epoch
        done = min(BAR_WIDTH, round(BAR_WIDTH * epoch / total)) if total else 0
        bar = "#" * done + "-" * (BAR_WIDTH - done)
        width = len(str(total))
        parts = [f"epoch {epoch:>{width}}/{total} [{bar}]"]
        for name in ("train_loss", "val_loss", "val_accuracy"):
            if name in metrics:
                parts.append(f"{name} {_fmt(metrics[name])}")
        if self.best is not None:
            parts.append(f"best {self.monitor} {_fmt(self.best[1])} @ {self.best[0]}")
        line = "  ".join(parts)
        if self.live:
            print("\r\x1b[2K" + line, end="", file=self.out, flush=True)
            self.drawn = True
        else:
            print(line, file=self.out, flush=True)

    def _end_line(self) -> None:
        if self.drawn:
            print(file=self.out, flush=True)
            self.drawn = False

    def close(self) -> None:
        self._end_line()


def verdict(job: Job) -> str:
    """The job's outcome in one line."""
    name = job.get("name") or job["id"]
    line = f"{name} ({job['id']}) {job['status']}"
    stop: Mapping[str, Any] = job.get("stop") or {}
    if stop.get("reason"):
        line += f": {stop['reason'].replace('_', ' ')}"
        if stop.get("epoch"):
            line += f" at epoch {stop['epoch']}"
        if stop.get("detail") and job["status"] != "failed":
            line += f" ({stop['detail']})"
    if job.get("error"):
        line += f"; error: {job['error']}"
    if (job.get("best") or {}).get("epoch") is not None:
        line += f"; best {_best(job)}"
    return line


def _brief(value: Any) -> str:
    """A value of the diagnosis's evidence, readably: numbers rounded, long lists summed up."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        parts = [f"{key.replace('_', ' ')} {_brief(v)}" for key, v in value.items()]
        return ", ".join(parts)
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(value) > 4 and len(numbers) == len([v for v in value if v is not None]):
            if not numbers:
                return f"{len(value)} values, none known"
            return (
                f"{len(value)} values, {_brief(numbers[0])} … {_brief(numbers[-1])} "
                f"(min {_brief(min(numbers))}, max {_brief(max(numbers))})"
            )
        return "[" + ", ".join(_brief(v) for v in value) + "]"
    return str(value)


def diagnosis_lines(job: Job) -> list[str]:
    """The job's fit diagnosis as a few lines: the verdict and why, the evidence, the
    generalization gap summed up, and the remedies."""
    diagnosis = job.get("diagnosis")
    if not diagnosis:
        return []
    state = "final" if diagnosis.get("final") else "so far"
    epochs = diagnosis.get("epoch")
    head = f"diagnosis: {str(diagnosis.get('verdict', '?')).replace('_', ' ')} ({state}"
    lines = [head + (f", after {epochs} epochs)" if epochs is not None else ")")]
    if diagnosis.get("summary"):
        lines.append(f"  {diagnosis['summary']}")
    evidence = diagnosis.get("evidence")
    if isinstance(evidence, dict) and evidence:
        lines.append("  evidence:")
        lines += [f"    {key.replace('_', ' ')}: {_brief(v)}" for key, v in evidence.items()]
    gap = [g for g in diagnosis.get("gap") or [] if isinstance(g, int | float)]
    if gap:
        lines.append(
            f"  gap (val - train loss): {_brief(gap[-1])} at the last epoch "
            f"(min {_brief(min(gap))}, max {_brief(max(gap))} over {len(gap)} epochs)"
        )
    others = [
        str(f.get("verdict", "")).replace("_", " ")
        for f in diagnosis.get("findings") or []
        if f.get("verdict") != diagnosis.get("verdict")
    ]
    if others:
        lines.append(f"  also found: {', '.join(others)}")
    remedies = diagnosis.get("remedies") or []
    if remedies:
        lines.append("  remedies:")
        lines += [f"    - {remedy}" for remedy in remedies]
    return lines


def report(job: Job, out: TextIO) -> int:
    """The verdict of an ended job and its diagnosis; the exit status: 0 if it succeeded."""
    print(verdict(job), file=out, flush=True)
    for line in diagnosis_lines(job):
        print(line, file=out)
    for warning in job.get("warnings") or []:
        print(f"warning: {warning}", file=out)
    return 0 if job["status"] == "succeeded" else 1


def follow(client: DescentClient, job: Job, out: TextIO) -> Job:
    progress = Progress(out)
    progress.know(job)  # a finished job's stream sends its status only after its epochs
    try:
        return client.wait(job["id"], on_epoch=progress.epoch, on_status=progress.status)
    finally:
        progress.close()


# ---- the commands ---------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from descent_client.client import DescentError

    with _client(args) as client:
        try:
            job = client.submit(args.spec)
        except (OSError, ValueError) as exc:
            raise DescentError(0, f"cannot read the spec {args.spec}: {exc}") from exc
        print(job["id"], flush=True)
        if not args.follow:
            name = job.get("name") or "job"
            print(f"submitted {name} {job['id']}: {job['status']}", file=sys.stderr)
            return 0
        final = follow(client, job, sys.stderr)
        return report(final, sys.stdout)


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.quiet:
            final = client.wait(args.job_id)
        else:
            final = follow(client, client.job(args.job_id), sys.stderr)
    return report(final, sys.stdout)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs(status=args.status, limit=args.limit)
    rows = []
    for job in jobs:
        total = _total_epochs(job)
        rows.append(
            [
                job["id"],
                job.get("name") or "-",
                job["status"],
                f"{job['epoch']}/{total}" if total else str(job["epoch"]),
                _best(job),
                (job.get("created_at") or "")[:19].replace("T", " "),
            ]
        )
    _table(rows, ["ID", "NAME", "STATUS", "EPOCH", "BEST", "CREATED"], sys.stdout)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    total = _total_epochs(job)
    status: str = job["status"]
    if job.get("cancel_requested") and status not in TERMINAL:
        status += " (cancel requested)"
    facts: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("name", job.get("name")),
        ("status", status),
        ("epoch", f"{job['epoch']}/{total}" if total else job["epoch"]),
        ("best", _best(job)),
        ("last", _fmt((job.get("last") or {}).get("value"))),
        ("stop", verdict(job).split(": ", 1)[1] if job.get("stop") else None),
        ("error", job.get("error")),
        ("created", job.get("created_at")),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
    ]  # fmt: skip
    for key, value in facts:
        if value not in (None, ""):
            print(f"{key + ':':<11}{value}")
    for line in diagnosis_lines(job):
        print(line)
    for warning in job.get("warnings") or []:
        print(f"warning:   {warning}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        records = client.metrics(args.job_id, after=args.after)
    names = _metric_names(records)
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["epoch", *names])
        for record in records:
            values = [record["metrics"].get(name) for name in names]
            writer.writerow([record["epoch"], *("" if v is None else repr(v) for v in values)])
        return 0
    rows = [[str(r["epoch"]), *(_fmt(r["metrics"].get(n)) for n in names)] for r in records]
    _table(rows, ["EPOCH", *(n.upper() for n in names)], sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    state: str = job["status"]
    if state not in TERMINAL:
        state += ", stopping within a training step"
    print(f"{job['id']}: {state}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        checkpoint = client.download(
            args.job_id, args.output, epoch=args.epoch, progress=sys.stderr.isatty()
        )
    which = "best checkpoint" if args.epoch is None else "checkpoint"
    print(
        f"saved the {which} of epoch {checkpoint['epoch']} to {args.output} "
        f"({checkpoint['bytes']} bytes, sha256 {checkpoint['sha256']} verified)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        export = client.export(
            args.job_id,
            args.output,
            format=args.format,
            epoch=args.epoch,
            interval=args.interval,
            progress=sys.stderr.isatty(),
        )
    parity: Mapping[str, Any] = export["parity"] or {}
    print(
        f"saved the {export['format']} export {export['id']} of job {export['job_id']} to "
        f"{args.output} ({export['bytes']} bytes, sha256 {export['sha256']} verified; parity "
        f"max |diff| {_fmt(parity.get('max_abs_diff'))} on {parity.get('samples')} samples)"
    )
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _upload_info(upload: Upload) -> str:
    """What the service found in the file, in a few words."""
    info = upload.get("info") or {}
    if upload["kind"] == "weights":
        parts = [str(info.get("arch") or "-")]
        if info.get("parameters") is not None:
            parts.append(f"{info['parameters']:,} parameters")
        return ", ".join(parts)
    parts = [str(info.get("task") or "-")]
    if info.get("n_samples") is not None:
        parts.append(f"{info['n_samples']} samples")
    if info.get("image_shape"):
        parts.append("x".join(str(d) for d in info["image_shape"]))
    elif info.get("n_features") is not None:
        parts.append(f"{info['n_features']} features")
    if info.get("num_classes"):
        parts.append(f"{info['num_classes']} classes")
    return ", ".join(parts)


def cmd_uploads(args: argparse.Namespace) -> int:
    """``descent datasets`` and ``descent weights``: list, upload or delete."""
    from descent_client.client import DescentError

    kind = args.kind  # "dataset" or "weights"
    with _client(args) as client:
        if args.action == "upload":
            try:
                if kind == "dataset":
                    upload = client.upload_dataset(args.file, target=args.target, name=args.name)
                else:
                    upload = client.upload_weights(args.file, arch=args.arch, name=args.name)
            except OSError as exc:
                raise DescentError(0, f"cannot read {args.file}: {exc}") from exc
            print(upload["id"], flush=True)
            print(
                f"uploaded {kind} {upload.get('name') or upload.get('filename') or ''} "
                f"{upload['id']}: {upload['format']}, {_size(upload['bytes'])}, "
                f"{_upload_info(upload)}",
                file=sys.stderr,
            )
            return 0
        if args.action == "delete":
            if kind == "dataset":
                client.delete_dataset(args.upload_id)
            else:
                client.delete_weights(args.upload_id)
            print(f"{args.upload_id}: deleted")
            return 0
        uploads = client.datasets() if kind == "dataset" else client.weights()
    rows = [
        [
            u["id"],
            u.get("name") or "-",
            u.get("filename") or "-",
            u["format"],
            _size(u["bytes"]),
            _upload_info(u),
            (u.get("created_at") or "")[:19].replace("T", " "),
        ]
        for u in uploads
    ]
    _table(rows, ["ID", "NAME", "FILE", "FORMAT", "SIZE", "INFO", "CREATED"], sys.stdout)
    return 0


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """API errors as one line on stderr and exit status 1, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from descent_client.client import DescentError, describe_detail

        try:
            return command(args)
        except DescentError as exc:
            status = f"error {exc.status_code}" if exc.status_code else "error"
            print(f"descent: {status}: {describe_detail(exc.detail)}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `descent metrics ID | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            print("descent: interrupted (the job goes on; `descent cancel ID` stops it)",
                  file=sys.stderr)  # fmt: skip
            return 130

    return run


def add_client_commands(sub: Any) -> None:
    """Add the user's commands to the ``descent`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=None,
        help="the service (default: $DESCENT_URL or http://127.0.0.1:8000)",
    )
    common.add_argument(
        "--token",
        default=None,
        help="API token (default: $DESCENT_TOKEN, else the token file in ./data)",
    )

    p = sub.add_parser(
        "submit", parents=[common], help="submit a job spec (YAML or JSON)",
        description="Submit a job spec. Prints the job id; with --follow, shows each epoch "
        "as it ends and the job's verdict (exit status 0 only if it succeeded).",
    )  # fmt: skip
    p.add_argument("spec", help="the spec file (.yaml, .yml or .json)")
    p.add_argument("-f", "--follow", action="store_true", help="follow the job until it ends")
    p.set_defaults(func=_guard(cmd_submit))

    p = sub.add_parser(
        "wait", parents=[common], help="wait for a job to end; exit status 0 if it succeeded",
        description="Follow a job until it ends (its epochs on stderr), then print its verdict "
        "and fit diagnosis. Exit status 0 if it succeeded, 1 otherwise.",
    )  # fmt: skip
    p.add_argument("job_id", metavar="ID")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per epoch")
    p.set_defaults(func=_guard(cmd_wait))

    p = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    p.set_defaults(func=_guard(cmd_jobs))

    p = sub.add_parser("show", parents=[common], help="show one job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="the job as the API returns it")
    p.set_defaults(func=_guard(cmd_show))

    p = sub.add_parser("metrics", parents=[common], help="a job's per-epoch metrics")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p.add_argument("--after", type=int, default=0, help="only epochs after this one")
    p.set_defaults(func=_guard(cmd_metrics))

    p = sub.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("job_id", metavar="ID")
    p.set_defaults(func=_guard(cmd_cancel))

    p = sub.add_parser(
        "download", parents=[common], help="download a checkpoint (sha256 verified)",
        description="Save a checkpoint's weights (safetensors); the file's sha256 is checked "
        "against the service's, and nothing is left behind if it does not match.",
    )  # fmt: skip
    p.add_argument("job_id", metavar="ID")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best checkpoint (default)")
    which.add_argument("--epoch", type=int, help="the checkpoint of this epoch")
    p.add_argument("-o", "--output", required=True, help="the file to write")
    p.set_defaults(func=_guard(cmd_download))

    p = sub.add_parser(
        "export", parents=[common], help="export a checkpoint to ONNX or TorchScript",
        description="Export the job's best checkpoint (or the one of --epoch) on a worker, "
        "which checks the exported model's outputs against PyTorch's on the validation split; "
        "wait for it, then save the file (sha256 verified). Exit status 1 if it failed.",
    )  # fmt: skip
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--epoch", type=int, help="the checkpoint of this epoch (default: the best)")
    p.add_argument("-o", "--output", required=True, help="the file to write")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_guard(cmd_export))

    # The same options after a subcommand (`descent datasets upload F --url U`); SUPPRESS
    # keeps a value given before it (`descent datasets --url U upload F`).
    again = argparse.ArgumentParser(add_help=False)
    again.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    again.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "datasets", parents=[common], help="your uploaded datasets: list, upload, delete",
        description="Without a subcommand, list your datasets. A job uses one with "
        "`dataset: {source: upload, id: ID}`.",
    )  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=_guard(cmd_uploads), kind="dataset", action="list")
    q = actions.add_parser(
        "upload", parents=[again], help="upload a dataset (.csv, .npz, or .zip of an image folder)"
    )
    q.add_argument("file", metavar="FILE")
    q.add_argument("--target", help="a CSV dataset's target column (required for a CSV)")
    q.add_argument("--name", help="a name for it")
    q = actions.add_parser("delete", parents=[again], help="delete a dataset")
    q.add_argument("upload_id", metavar="ID")

    p = sub.add_parser(
        "weights", parents=[common], help="your uploaded backbone weights: list, upload, delete",
        description="Without a subcommand, list your weights files. A job uses one with "
        '`backbone: {arch: A, weights: "upload:ID"}`.',
    )  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=_guard(cmd_uploads), kind="weights", action="list")
    q = actions.add_parser(
        "upload", parents=[again], help="upload weights (.safetensors, .pt or .pth)"
    )
    q.add_argument("file", metavar="FILE")
    q.add_argument("--arch", required=True, help="the torchvision architecture they are for")
    q.add_argument("--name", help="a name for them")
    q = actions.add_parser("delete", parents=[again], help="delete a weights file")
    q.add_argument("upload_id", metavar="ID")

    from descent_client.studies import add_study_commands  # descent study ... (searches)

    add_study_commands(sub, common)
