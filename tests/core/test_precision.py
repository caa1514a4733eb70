"""training.precision: autocast bf16/fp16, and fp32 (the default) left exactly as it was."""

import math

import pytest
import torch
from pydantic import ValidationError

from core.errors import TrainingError
from core.spec import JobSpec
from core.train import Trainer, fit
from tests.core.builders import spec_dict

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"
)

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9) but autocast accumulates matmuls and
# computes the loss in fp32: over 3 epochs of digits, bf16's train and validation losses were
# measured within 3e-4 (relative) of fp32's for an MLP (SGD and Adam), 1.5e-3 for a CNN.
BF16_RTOL = 1e-2
# A CNN's convolutions round in bf16 as the CPU's kernels do: 1.5e-3 on one machine, 2.1e-2
# on another (an AMD EPYC); still far from a run that does not learn alike.
BF16_CNN_RTOL = 5e-2


def _losses(precision: str, opt: str, **model: object) -> list[float]:
    spec = spec_dict(
        dataset={"name": "digits"},
        model=model or {"hidden": [64]},
        optimizer={"name": opt},
        training={"epochs": 3, "batch_size": 64, "precision": precision, "device": "cpu"},
    )
    result = fit(spec)
    return [r.metrics[k] for r in result.history for k in ("train_loss", "val_loss")]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_bf16_losses_are_close_to_fp32(opt: str) -> None:
    fp32, bf16 = _losses("fp32", opt), _losses("bf16", opt)
    assert bf16 != fp32  # autocast ran in bf16
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn


def test_bf16_cnn_losses_are_close_to_fp32() -> None:
    fp32 = _losses("fp32", "adam", arch="cnn", channels=[8, 16])
    bf16 = _losses("bf16", "adam", arch="cnn", channels=[8, 16])
    assert bf16 != fp32
    assert bf16 == pytest.approx(fp32, rel=BF16_CNN_RTOL)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn


def test_default_spec_hash_and_run_are_unchanged() -> None:
    # The hash of a spec that keeps the new fields at their defaults is what it was before
    # they existed: checkpoints written then still resume.
    plain = JobSpec.model_validate({"dataset": {"name": "digits"}})
    assert plain.spec_hash() == "144622dc844301c9347d97172964694db82d847fe418fad13c4e22e57b11c2cd"
    explicit = JobSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {"sync_batch_norm": False},
            "training": {"precision": "fp32", "processes": 1},
        }
    )
    assert explicit.spec_hash() == plain.spec_hash()
    bf16 = JobSpec.model_validate(
        {"dataset": {"name": "digits"}, "training": {"precision": "bf16"}}
    )
    assert bf16.spec_hash() != plain.spec_hash()
    base = spec_dict(training={"epochs": 2, "batch_size": 64, "device": "cpu"})
    a = fit(base).history
    b = fit(spec_dict(training={**base["training"], "precision": "fp32"})).history
    assert [r.metrics["val_loss"] for r in a] == [r.metrics["val_loss"] for r in b]
    assert "amp_skipped_steps" not in a[-1].metrics


@pytest.mark.parametrize(
    ("training", "optimizer", "loc", "fragment"),
    [
        ({"precision": "fp16", "device": "cpu"}, {}, ("training", "precision"), "CUDA"),
        (
            {"precision": "bf16", "full_batch": True},
            {"name": "lbfgs"},
            ("training", "precision"),
            "fp32",
        ),
        (
            {"precision": "fp16", "full_batch": True},
            {"name": "newton"},
            ("training", "precision"),
            "fp32",
        ),
    ],
)
def test_precisions_refused_with_the_reason(
    training: dict, optimizer: dict, loc: tuple, fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec_dict(training=training, optimizer=optimizer))
    found = [(e["loc"], e["msg"]) for e in info.value.errors()]
    assert any(where == loc and fragment in m for where, m in found), found


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_fp16_on_a_cpu_only_machine_fails_the_job_with_the_reason() -> None:
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        Trainer(spec_dict(training={"precision": "fp16", "device": "auto"})).setup()


def test_steps_the_gradient_scaler_skips_are_counted_per_epoch_and_change_nothing() -> None:
    """fp16 needs CUDA, but its scaler's bookkeeping is the trainer's own: with torch's CPU
    GradScaler in its place, a non-finite gradient injected at steps 2, 5 and 11 (8 steps an
    epoch) is 2, 1 and 0 skipped steps, halves the scale three times and leaves the weights
    as they were at each of those steps."""
    trainer = Trainer(spec_dict()).setup()  # iris: 120 rows, batches of 16, 3 epochs
    trainer._scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    weight = next(trainer.model.parameters())
    before: list[torch.Tensor] = []  # the weight as each backward pass found it

    def poison(grad: torch.Tensor) -> torch.Tensor:
        before.append(weight.detach().clone())
        return torch.full_like(grad, math.inf) if len(before) in (2, 5, 11) else grad

    weight.register_hook(poison)
    history = trainer.train().history
    assert len(before) == 24
    assert [r.metrics["amp_skipped_steps"] for r in history] == [2.0, 1.0, 0.0]
    assert trainer._scaler.get_scale() == 2.0**7  # 2000 good steps would double it: none
    changed = [not torch.equal(a, b) for a, b in zip(before, before[1:], strict=False)]
    assert [i + 1 for i, c in enumerate(changed) if not c] == [2, 5, 11]  # steps skipped
    # The skipped steps are left out of the gradient norms, which stay finite.
    assert all(math.isfinite(r.metrics["grad_norm"]) for r in history)
    assert history[-1].metrics["train_loss"] < history[0].metrics["train_loss"]


@needs_cuda
def test_fp16_on_cuda_counts_skipped_steps_and_learns() -> None:
    spec = spec_dict(
        training={"epochs": 3, "batch_size": 64, "precision": "fp16", "device": "cuda"}
    )
    trainer = Trainer(spec).setup()
    history = trainer.train().history
    # The scaler starts at 2^16 and halves on each overflow; it would double only after
    # 2,000 finite steps in a row (this run has 6): the skipped steps are its halvings.
    skipped = [r.metrics["amp_skipped_steps"] for r in history]
    assert all(n == int(n) for n in skipped), skipped
    assert sum(skipped) == math.log2(2.0**16 / trainer._scaler.get_scale())
    assert history[-1].metrics["train_loss"] < history[0].metrics["train_loss"]


@needs_cuda
def test_fp32_on_cuda_uses_tf32_and_cnn_channels_last() -> None:
    spec = spec_dict(
        dataset={"name": "digits"},
        model={"arch": "cnn", "channels": [8]},
        training={"device": "cuda"},
    )
    trainer = Trainer(spec).setup()
    assert torch.backends.cuda.matmul.allow_tf32
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_out_of_memory_names_the_batch_size_and_a_remedy(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(spec_dict(training={"batch_size": 32})).setup()

    def too_big(self: torch.nn.Module, *args: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(type(trainer.model), "forward", too_big)
    with pytest.raises(torch.OutOfMemoryError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message  # the worker reports the first line
    assert "out of memory in epoch 1 with batch_size 32" in message
    assert "lower training.batch_size" in message


@needs_cuda
def test_peak_device_memory_is_an_epoch_metric() -> None:
    history = fit(spec_dict(training={"device": "cuda"})).history
    assert all(r.metrics["peak_memory_bytes"] > 0 for r in history)
