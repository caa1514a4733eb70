"""``descent study``: hyperparameter searches, over HTTP with ``descent_client.client``.

    descent study submit study.yaml [--follow]   start a study and follow it (exit 0: completed)
    descent study list                           your studies, newest first
    descent study show ID [--json]               status, best trial, epochs saved, importance
    descent study trials ID [--sort S] [--csv]   every trial: params, objective, status
    descent study cancel ID                      make no more trials, stop the running ones

They reach the service as the job commands do (``--url``, ``--token``; commands.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from descent_client.commands import _client, _fmt, _guard, _table


def _value(value: Any) -> str:
    """A parameter's value, short: numbers rounded, anything else as compact JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _objective(study: Mapping[str, Any]) -> str:
    return str(study["objective"]["metric"])


def progress_line(study: Mapping[str, Any]) -> str:
    """``study ID: 5/32 done (2 pruned, 0 failed), 4 running, 0 queued; best val_loss
    0.1234 (trial 3)``."""
    t = study["trials"]
    done = t["succeeded"] + t["pruned"] + t["failed"] + t["cancelled"]
    line = (
        f"study {study['id']}: {done}/{study['max_trials']} done "
        f"({t['pruned']} pruned, {t['failed']} failed), {t['running']} running, "
        f"{t['queued']} queued"
    )
    best = study.get("best")
    if best:
        line += f"; best {_objective(study)} {_fmt(best['value'])} (trial {best['number']})"
    return line


def summary_lines(study: Mapping[str, Any], importance: dict[str, float] | None) -> list[str]:
    t = study["trials"]
    counts = ", ".join(
        f"{t[k]} {k}"
        for k in ("succeeded", "pruned", "failed", "cancelled", "running", "queued")
        if t[k]
    )
    name = study.get("name") or "study"
    lines = [f"{name} ({study['id']}) {study['status']}: {t['total']} trials ({counts or 'none'})"]
    grid = f", grid of {study['grid_size']}" if study.get("grid_size") is not None else ""
    lines.append(
        f"algorithm {study['algorithm']}{grid}, pruner {study['pruner']['name']}, "
        f"objective {_objective(study)} ({study['objective']['mode']}), "
        f"max {study['max_trials']} trials, {study['parallelism']} at once"
    )
    best = study.get("best")
    if best:
        lines.append(
            f"best: trial {best['number']} (job {best['job_id']}) {_objective(study)} "
            f"{_fmt(best['value'])} at epoch {best['epoch']}"
            + (f", checkpoint {best['checkpoint_id']}" if best.get("checkpoint_id") else "")
        )
        lines += [f"  {name} = {_value(value)}" for name, value in best["params"].items()]
    else:
        lines.append("best: none yet")
    epochs = study["epochs"]
    lines.append(
        f"epochs: {epochs['trained']} trained, {epochs['without_pruning']} without pruning "
        f"({epochs['saved']} saved)"
    )
    if importance:
        shown = ", ".join(f"{name} {value:.2f}" for name, value in importance.items())
        lines.append(f"importance: {shown}")
    return lines


def _importance(client: Any, study_id: str) -> dict[str, float] | None:
    from descent_client.client import DescentError

    try:
        found: dict[str, float] = client.importance(study_id)
        return found
    except DescentError as exc:
        if exc.status_code == 409:  # too few trials ended
            return None
        raise


def report(client: Any, study: Mapping[str, Any], out: TextIO) -> int:
    for line in summary_lines(study, _importance(client, study["id"])):
        print(line, file=out, flush=True)
    return 0 if study["status"] == "completed" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from descent_client.client import DescentError

    with _client(args) as client:
        try:
            study = client.submit_study(args.study)
        except (OSError, ValueError) as exc:
            raise DescentError(0, f"cannot read the study {args.study}: {exc}") from exc
        print(study["id"], flush=True)
        if not args.follow:
            grid = f" (a grid of {study['grid_size']})" if study.get("grid_size") else ""
            print(f"submitted study {study['id']}{grid}: {study['status']}", file=sys.stderr)
            return 0
        live = sys.stderr.isatty()

        def update(current: Mapping[str, Any]) -> None:
            line = progress_line(current)
            if live:
                print("\r\x1b[2K" + line, end="", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)

        final = client.wait_study(study["id"], on_update=update, interval=args.interval)
        if live:
            print(file=sys.stderr)
        return report(client, final, sys.stdout)


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        studies = client.studies(limit=args.limit)
    rows = []
    for s in studies:
        t = s["trials"]
        best = s.get("best")
        rows.append(
            [
                s["id"],
                s.get("name") or "-",
                s["status"],
                s["algorithm"],
                f"{t['total']}/{s['max_trials']}",
                f"{_objective(s)} {_fmt(best['value'])}" if best else "-",
                s["created_at"][:19].replace("T", " "),
            ]
        )
    _table(rows, ["ID", "NAME", "STATUS", "ALGORITHM", "TRIALS", "BEST", "CREATED"], sys.stdout)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        study = client.study(args.study_id)
        if args.json:
            print(json.dumps(study, indent=2))
            return 0
        for line in summary_lines(study, _importance(client, args.study_id)):
            print(line)
    return 0


def trial_rows(trials: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: number, status, value, its epoch, epochs trained, each
    parameter (in the order they first appear), the stop rule, the job."""
    names: list[str] = []
    for trial in trials:
        names += [name for name in trial["params"] if name not in names]
    header = ["#", "STATUS", "VALUE", "EPOCH", "EPOCHS", *names, "STOP", "JOB"]
    rows = []
    for t in trials:
        stop = t.get("stop") or {}
        rule = stop.get("rule") or stop.get("reason") or "-"
        params = [_value(t["params"][n]) if n in t["params"] else "-" for n in names]
        rows.append(
            [
                str(t["number"]),
                t["status"],
                _fmt(t["value"]),
                _fmt(t["epoch"]),
                str(t["epochs"]),
                *params,
                str(rule).replace("_", " "),
                t["job_id"],
            ]
        )
    return header, rows


def cmd_trials(args: argparse.Namespace) -> int:
    with _client(args) as client:
        trials = client.trials(args.study_id, sort=args.sort, status=args.status)
    header, rows = trial_rows(trials)
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([h.lower() if h != "#" else "number" for h in header])
        for t, row in zip(trials, rows, strict=True):
            # Full precision in CSV.
            row[2] = "" if t["value"] is None else repr(t["value"])
            writer.writerow(["" if cell == "-" else cell for cell in row])
        return 0
    _table(rows, header, sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        study = client.cancel_study(args.study_id)
    print(f"study {study['id']}: {study['status']}")
    return 0


def add_study_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``descent study ACTION``: added to the ``descent`` parser's subcommands."""
    again = argparse.ArgumentParser(add_help=False)
    again.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    again.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p = sub.add_parser(
        "study", parents=[common], help="hyperparameter searches: submit, list, show, trials",
        description="A study runs many trials of one job spec, each with a point of a search "
        "space, pruning hopeless ones early (see docs/studies.md).",
    )  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "submit", parents=[again], help="start a study (YAML or JSON)",
        description="Start a study. Prints its id; with --follow, a line as its trials end "
        "(done, pruned, running, best so far) and its summary (exit status 0 only if it "
        "completed).",
    )  # fmt: skip
    q.add_argument("study", help="the study file (.yaml, .yml or .json)")
    q.add_argument("-f", "--follow", action="store_true", help="follow it until it ends")
    q.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    q.set_defaults(func=_guard(cmd_submit))
    q = actions.add_parser("list", parents=[again], help="your studies, newest first")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    q.set_defaults(func=_guard(cmd_list))
    q = actions.add_parser("show", parents=[again], help="a study: best trial, epochs, importance")
    q.add_argument("study_id", metavar="ID")
    q.add_argument("--json", action="store_true", help="the study as the API returns it")
    q.set_defaults(func=_guard(cmd_show))
    q = actions.add_parser("trials", parents=[again], help="a study's trials, as a table or CSV")
    q.add_argument("study_id", metavar="ID")
    q.add_argument(
        "--sort",
        choices=["number", "-number", "objective", "-objective"],
        default="number",
        help="objective: best first (default: number)",
    )
    q.add_argument(
        "--status", choices=["queued", "running", "succeeded", "pruned", "failed", "cancelled"]
    )
    q.add_argument("--csv", action="store_true", help="CSV instead of a table")
    q.set_defaults(func=_guard(cmd_trials))
    q = actions.add_parser("cancel", parents=[again], help="cancel a study and its trials")
    q.add_argument("study_id", metavar="ID")
    q.set_defaults(func=_guard(cmd_cancel))
