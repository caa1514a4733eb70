"""Every optimizer of the course text on one task, run through the service.

Submits each spec of ``examples/optimizers/`` (the same task: a 16-unit tanh MLP on
breast_cancer, seed 0) to the embedded service (``descent serve``), one after another,
and prints a markdown table: final train/validation loss, best epoch and value, validation
accuracy, and the job's wall time (started_at → finished_at, as the worker recorded it).
``--write-docs`` also puts the table into docs/optimizers.md, between its markers.

    python -m benchmarks.bench_optimizers [--write-docs]
"""

import argparse
import json
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import load, machine
from tests.e2e.service import running, start_embedded

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "optimizers"
DOCS = ROOT / "docs" / "optimizers.md"
BEGIN = "<!-- bench_optimizers: begin (python -m benchmarks.bench_optimizers --write-docs) -->"
END = "<!-- bench_optimizers: end -->"
HEADER = (
    "| example | optimizer | status | epochs | train loss | val loss | best epoch "
    "| best val loss | val accuracy | wall time (s) |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def seconds(job: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def optimizer_name(spec: dict[str, Any]) -> str:
    name = str(spec["optimizer"]["name"])
    return f"{name} (full batch)" if spec.get("training", {}).get("full_batch") else name


def table(rows: list[tuple[str, str, dict[str, Any], dict[str, float], float]]) -> str:
    nan = float("nan")
    lines = [HEADER]
    for stem, name, job, last, wall in rows:
        best = job.get("best") or {}
        best_value = best.get("value")
        lines.append(
            f"| {stem} | {name} | {job['status']} | {job['epoch']} "
            f"| {last.get('train_loss', nan):.4f} | {last.get('val_loss', nan):.4f} "
            f"| {best.get('epoch')} | {nan if best_value is None else best_value:.4f} "
            f"| {last.get('val_accuracy', nan):.3f} | {wall:.2f} |"
        )
    return "\n".join(lines)


def write_docs(text: str, where: str, docs: Path = DOCS) -> None:
    """Replace what lies between the markers of ``docs`` with ``where`` and the table."""
    page = docs.read_text()
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    docs.write_text(f"{page[:start]}\n{where}\n\n{text}\n{page[end:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-docs", action="store_true", help=f"put the table into {DOCS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    where = f"{machine()}, {date.today().isoformat()}; load: {load()}"
    print(f"machine: {where}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for svc in running(start_embedded(Path(tmp))):
            for path in sorted(EXAMPLES.glob("*.json")):
                spec = json.loads(path.read_text())
                job = svc.wait(svc.submit(spec)["id"], timeout=600)
                history = svc.metrics(job["id"])
                last = history[-1]["metrics"] if history else {}
                rows.append((path.stem, optimizer_name(spec), job, last, seconds(job)))
    text = table(rows)
    print()
    print(text)
    if args.write_docs:
        write_docs(text, f"Measured on {where}.")
        print(f"\nwrote the table into {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
