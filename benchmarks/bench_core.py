"""Epoch time of the core against a plain PyTorch loop, in the same process.

The core: ``core.Trainer(spec).setup()`` then ``.train()`` with no hooks, timed over whole
epochs (training steps and the validation evaluation). The baseline is the loop most
PyTorch code writes: a ``DataLoader`` over a ``TensorDataset`` (shuffle=True),
``torch.optim.Adam``, the running train loss read with ``loss.item()``, and the same
validation pass (loss and accuracy) at the end of each epoch. Same model (built by
``core.models.build_model`` from the same seed), same data (``core.data.load_data``), same
batch size, same device (CPU).

    python -m benchmarks.bench_core [--epochs 6] [--repeats 3] [--case NAME ...] [--threads N]

Each repeat makes a fresh core run and a fresh plain run, discards one warm-up epoch of
each, then times their epochs interleaved one by one, so that other load on the machine
hits both alike. Prints per-epoch milliseconds (medians over every timed epoch) and the
median of the per-pair ratios core/plain: below 1 the core is faster. torch's thread count
is left at its default (printed); --threads sets it, for diagnosis only.
"""

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import load, machine, median, percentile
from core.data import load_data
from core.models import build_model
from core.spec import JobSpec
from core.train import Trainer, seed_everything


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]
    goal: float  # core/plain at most this
    note: str


CASES = [
    Case(
        "mlp-digits-b32",
        {
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [64]},
            "training": {"batch_size": 32},
        },
        0.6,
        "MLP 64-64-10 on digits, batch 32 (overhead-bound)",
    ),
    Case(
        "cnn-wide-digits-b64",
        {
            "dataset": {"name": "digits"},
            "model": {"arch": "cnn", "channels": [64, 128]},
            "training": {"batch_size": 64},
        },
        1.05,
        "CNN conv64-conv128 on 8x8 digits, batch 64 (compute-bound)",
    ),
    Case(
        "mlp-wide-digits-b256",
        {
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [1024, 1024]},
            "training": {"batch_size": 256},
        },
        1.05,
        "MLP 64-1024-1024-10 on digits, batch 256 (compute-bound)",
    ),
]


class CoreRun:
    """The core's loop, advanced one whole epoch per call: Trainer.train() runs from the epoch
    after the last completed one to training.epochs, so raising training.epochs by one and
    calling train() again runs exactly the next epoch (training steps + validation pass)."""

    def __init__(self, spec: JobSpec) -> None:
        self.trainer = Trainer(spec.model_copy(deep=True)).setup()
        self.trainer.spec.training.epochs = 0

    def epoch(self) -> float:
        training = self.trainer.spec.training
        training.epochs += 1
        start = time.perf_counter()
        result = self.trainer.train()
        elapsed = time.perf_counter() - start
        assert result.last_epoch == training.epochs, result.stop
        return elapsed


class PlainRun:
    """The plain loop: DataLoader(TensorDataset, shuffle=True), torch.optim.Adam,
    loss.item() per step for the running train loss, then the validation pass."""

    def __init__(self, spec: JobSpec) -> None:
        assert spec.optimizer.lr is not None
        seed_everything(spec.training.seed)
        data = load_data(spec.dataset, images=spec.model.arch == "cnn")
        self.model = build_model(spec)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.optimizer.lr)
        self.loader = DataLoader(
            TensorDataset(data.x_train, data.y_train),
            batch_size=spec.training.batch_size,
            shuffle=True,
        )
        self.x_val, self.y_val = data.x_val, data.y_val
        self.history: list[tuple[float, float, float]] = []

    def epoch(self) -> float:
        model, optimizer = self.model, self.optimizer
        start = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        for xb, yb in self.loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(xb)
            seen += len(xb)
        model.eval()
        with torch.no_grad():
            out = model(self.x_val)
            val_loss = F.cross_entropy(out, self.y_val).item()
            val_accuracy = (out.argmax(1) == self.y_val).float().mean().item()
        elapsed = time.perf_counter() - start
        self.history.append((running / seen, val_loss, val_accuracy))
        return elapsed


def bench(case: Case, epochs: int, repeats: int) -> dict[str, float]:
    """Each repeat: a fresh core run and a fresh plain run, one warm-up epoch each (not
    counted), then their epochs interleaved one by one (order alternating), so that the
    two see the same machine. Medians over all timed epochs, and of the per-pair ratios."""
    spec = JobSpec.model_validate(
        {**case.spec, "training": {**case.spec["training"], "device": "cpu"}}
    )
    core_times, plain_times, ratios = [], [], []
    for _ in range(repeats):
        core, plain = CoreRun(spec), PlainRun(spec)
        core.epoch(), plain.epoch()  # warm-up: allocator, oneDNN primitives, lazy imports
        for i in range(epochs):
            if i % 2 == 0:
                c, p = core.epoch(), plain.epoch()
            else:
                p, c = plain.epoch(), core.epoch()
            core_times.append(c)
            plain_times.append(p)
            ratios.append(c / p)
    return {
        "core_ms": median(core_times) * 1e3,
        "plain_ms": median(plain_times) * 1e3,
        "ratio": median(ratios),
        "ratio_lo": percentile(ratios, 25),
        "ratio_hi": percentile(ratios, 75),
        "best_ratio": min(core_times) / min(plain_times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per repeat (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs of each (default 3)")
    parser.add_argument(
        "--case", action="append", choices=[c.name for c in CASES], help="default: all"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads for a diagnostic run (default: left at torch's default)",
    )
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.case is None or c.name in args.case]
    print(f"machine: {machine()}")
    threads = "default" if args.threads is None else f"set; the default is {default_threads}"
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()} "
        f"({threads}), device cpu; {args.repeats} repeats x {args.epochs} timed epochs "
        "(after 1 warm-up epoch each), medians"
    )
    print(f"load average at start: {load()}")
    print()
    print("| case | core ms/epoch | plain ms/epoch | core/plain (IQR) | best/best | goal | |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for case in cases:
        r = bench(case, args.epochs, args.repeats)
        verdict = "met" if r["ratio"] <= case.goal else "missed"
        print(
            f"| {case.name} | {r['core_ms']:.1f} | {r['plain_ms']:.1f} "
            f"| {r['ratio']:.2f}x ({r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}) "
            f"| {r['best_ratio']:.2f}x | <= {case.goal}x | {verdict} |",
            flush=True,
        )
    print()
    print(f"load average at end: {load()}")
    print("best/best: fastest core epoch over fastest plain epoch (least disturbed by other load)")
    for case in cases:
        print(f"{case.name}: {case.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
