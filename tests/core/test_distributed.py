"""training.processes: one job on several processes (torch.distributed, gloo on the CPU)."""

import pytest
import torch
from pydantic import ValidationError

from core import distributed
from core.errors import TrainingError
from core.spec import JobSpec
from core.train import Trainer, fit
from tests.core.builders import spec_dict

# What the steps of two ranks may differ by from one process's: float rounding only (the
# sums over a batch are split in two). Measured over 3 epochs of digits: 4.8e-7 (SGD),
# 1.2e-7 (Adam).
TOLERANCE = 1e-5


def _digits(opt: str, processes: int) -> dict:
    return spec_dict(
        dataset={"name": "digits"},
        model={"hidden": [32]},
        optimizer={"name": opt, "lr": None},
        training={"epochs": 3, "batch_size": 64, "processes": processes},
    )


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_two_processes_train_as_one_with_the_same_global_batch(opt: str) -> None:
    one = fit(_digits(opt, 1)).history
    two = distributed.fit(_digits(opt, 2)).history
    assert [r.epoch for r in two] == [1, 2, 3]
    names = [k for k in one[0].metrics if k != "epoch_seconds"]
    assert sorted(names) == sorted(k for k in two[0].metrics if k != "epoch_seconds")
    for a, b in zip(one, two, strict=True):
        for name in names:
            assert b.metrics[name] == pytest.approx(a.metrics[name], abs=TOLERANCE), name
    assert two[-1].metrics["val_loss"] < two[0].metrics["val_loss"]


def test_full_batch_gradient_descent_on_two_processes() -> None:
    spec = spec_dict(
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0},
        regularization={"l2": 0.01},
        training={"full_batch": True, "batch_size": 16, "epochs": 3},
    )
    one = fit(spec).history
    # core.train.fit launches the processes a spec asks for.
    two = fit({**spec, "training": {**spec["training"], "processes": 2}}).history
    for a, b in zip(one, two, strict=True):
        for name in ("train_loss", "val_loss", "penalty", "grad_norm"):
            assert b.metrics[name] == pytest.approx(a.metrics[name], abs=TOLERANCE), name


def test_a_rank_error_reaches_the_caller_as_the_same_error() -> None:
    # SyncBatchNorm needs CUDA: each rank fails at setup, and the launch says why.
    spec = spec_dict(
        model={"norm": "batch", "sync_batch_norm": True},
        training={"device": "auto", "processes": 2},
    )
    if torch.cuda.is_available():
        pytest.skip("checks a machine without a GPU")
    with pytest.raises(TrainingError, match="sync_batch_norm needs CUDA"):
        distributed.fit(spec)


def test_a_trainer_refuses_a_spec_for_more_processes_than_it_has() -> None:
    with pytest.raises(TrainingError, match="training.processes is 2 but this run has 1"):
        Trainer(spec_dict(training={"processes": 2})).setup().train()


@pytest.mark.parametrize(
    ("patch", "loc", "fragment"),
    [
        ({"training": {"processes": 3, "batch_size": 16}}, ("training", "batch_size"), "of 3"),
        ({"training": {"processes": 65}}, ("training", "processes"), "64"),
        (
            {"optimizer": {"name": "lbfgs"}, "training": {"processes": 2, "full_batch": True}},
            ("training", "processes"),
            "processes 1",
        ),
        (
            {"model": {"sync_batch_norm": True}, "training": {"processes": 2}},
            ("model", "sync_batch_norm"),
            "CUDA",
        ),
    ],
)
def test_processes_refused_with_the_reason(patch: dict, loc: tuple, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec_dict(**patch))
    found = [(e["loc"], e["msg"]) for e in info.value.errors()]
    assert any(where == loc and fragment in m for where, m in found), found


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for a 2-rank NCCL job")
def test_two_gpus_train_as_one() -> None:
    spec = _digits("adam", 1)
    spec["training"]["device"] = "cuda"
    one = fit(spec).history
    spec["training"]["processes"] = 2
    two = distributed.fit(spec).history
    for a, b in zip(one, two, strict=True):
        assert b.metrics["val_loss"] == pytest.approx(a.metrics["val_loss"], rel=1e-3)
