"""A worker's malloc keeps what a training step frees for the next step (worker/memory.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]

# Trains a small CNN on digits for three epochs on one thread, in a fresh process with
# keep_freed_memory(argv[1]), and prints the page faults the last two epochs took.
EPOCH_FAULTS = """
import json, resource, sys
import torch
from core.spec import JobSpec
from core.train import Trainer, TrainerHooks
from worker.memory import keep_freed_memory

torch.set_num_threads(1)
taken = keep_freed_memory(int(sys.argv[1]))
faults = []

class Hooks(TrainerHooks):
    def on_epoch_end(self, trainer, record):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

spec = {"name": "faults", "dataset": {"name": "digits"},
        "model": {"arch": "cnn", "channels": [64, 128]},
        "training": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"}}
Trainer(JobSpec.model_validate(spec), hooks=Hooks()).setup().train()
print(json.dumps({"taken": taken, "faults": faults[-1] - faults[0]}))
"""


def epoch_faults(keep_mb: int) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", EPOCH_FAULTS, str(keep_mb)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_workers_training_steps_take_no_new_pages_from_the_kernel() -> None:
    """With the worker's setting, two epochs after the first take next to no page faults;
    with glibc's defaults the same epochs take thousands (each step's freed tensors go back
    to the kernel and come back as fresh pages)."""
    kept, defaults = epoch_faults(256), epoch_faults(0)
    assert kept["taken"] and not defaults["taken"]
    assert kept["faults"] < 500, kept
    assert defaults["faults"] > 10 * max(kept["faults"], 100), (kept, defaults)


def test_nothing_is_set_when_the_setting_is_zero() -> None:
    assert keep_freed_memory(0) is False
