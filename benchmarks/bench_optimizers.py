"""Every optimizer of the course text on one task, run through the service.

Submits each spec of ``examples/optimizers/`` (the same task: a 16-unit tanh MLP on
breast_cancer, seed 0) to the embedded service (``descent serve``), one after another,
and prints a table: final train/validation loss, best epoch and value, validation
accuracy, and the job's wall time (started_at → finished_at, as the worker recorded it).

    python -m benchmarks.bench_optimizers
"""

import argparse
import json
import tempfile
from datetime import datetime
from pathlib import Path

from benchmarks.common import load, machine
from tests.e2e.service import running, start_embedded

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "optimizers"


def seconds(job: dict) -> float:
    start, end = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(f"machine: {machine()}; load: {load()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for svc in running(start_embedded(Path(tmp))):
            for path in sorted(EXAMPLES.glob("*.json")):
                spec = json.loads(path.read_text())
                job = svc.wait(svc.submit(spec)["id"], timeout=600)
                history = svc.metrics(job["id"])
                last = history[-1]["metrics"] if history else {}
                rows.append((path.stem, spec["optimizer"]["name"], job, last, seconds(job)))
    print()
    print(
        "| example | optimizer | status | epochs | train loss | val loss | best epoch "
        "| best val loss | val accuracy | wall time (s) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    nan = float("nan")
    for stem, name, job, last, wall in rows:
        print(
            f"| {stem} | {name} | {job['status']} | {job['epoch']} "
            f"| {last.get('train_loss', nan):.4f} | {last.get('val_loss', nan):.4f} "
            f"| {job['best']['epoch']} | {job['best']['value']:.4f} "
            f"| {last.get('val_accuracy', nan):.3f} | {wall:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
