import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from core import evaluate, fit, load_model, read_metadata
from core.checkpoint import load_state
from core.errors import NonFiniteLoss, TrainingError
from core.results import EpochRecord
from core.spec import JobSpec
from core.train import Trainer, TrainerHooks, task_loss
from tests.core.builders import make_spec, merge, spec_dict


def params_of(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_fit_records_every_epochs_metrics() -> None:
    result = fit(make_spec())
    assert result.status == "succeeded" and result.epochs_run == 3 == result.last_epoch
    assert result.stop.reason == "max_epochs" and result.stop.rule is None
    metrics = result.history[-1].metrics
    expected = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "grad_norm"}
    layers = {"grad_norm/body.0", "grad_norm/head"}  # per layer with weights, mean over steps
    assert expected | layers | {"epoch_seconds"} == set(metrics)
    # Means over the steps: the whole gradient's norm lies between the norm of the layers'
    # mean norms (triangle inequality) and their sum.
    per_layer = [metrics[k] for k in layers]
    assert math.hypot(*per_layer) - 1e-9 <= metrics["grad_norm"] <= sum(per_layer) + 1e-9
    assert all(math.isfinite(v) for v in metrics.values())
    assert result.monitor == "val_loss" and result.mode == "min"
    assert result.best_value == min(h.metrics["val_loss"] for h in result.history)
    assert set(result.to_dict()) >= {"status", "stop", "best_epoch", "best_value", "epochs_run"}


def test_regression_and_cnn_train() -> None:
    reg = fit(make_spec(dataset={"name": "regression", "n_samples": 100}))
    assert "val_accuracy" not in reg.history[-1].metrics
    assert reg.history[-1].metrics["train_loss"] < reg.history[0].metrics["train_loss"]
    cnn = fit(
        make_spec(
            dataset={"name": "digits", "val_fraction": 0.5},
            model={"arch": "cnn", "channels": [4, 8], "norm": "batch", "dropout": 0.1},
            training={"epochs": 2, "batch_size": 64},
        )
    )
    assert cnn.history[-1].metrics["val_accuracy"] > 0.5


def test_full_batch_gradient_descent_decreases_the_loss_every_epoch() -> None:
    # Softmax regression is convex; GD with a small enough step decreases it monotonically.
    spec = dict(
        model={"hidden": []},
        optimizer={"name": "sgd", "lr": 0.3, "momentum": 0.0},
        training={"epochs": 15, "full_batch": True, "batch_size": 1000},
    )
    whole = Trainer(make_spec(**spec), dtype=torch.float64).setup()
    losses = [h.metrics["train_loss"] for h in whole.train().history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # The gradient accumulated over chunks of 16 rows is the full-batch gradient.
    chunked_spec = make_spec(**merge(spec, {"training": {"batch_size": 16}}))
    chunked = Trainer(chunked_spec, dtype=torch.float64).setup()
    chunked.train()
    for a, b in zip(params_of(whole), params_of(chunked), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_l2_penalty_equals_weight_decay_for_sgd() -> None:
    def run(regularization: dict) -> Trainer:
        spec = make_spec(optimizer={"name": "sgd", "lr": 0.1}, regularization=regularization)
        trainer = Trainer(spec, dtype=torch.float64).setup()
        trainer.train()
        return trainer

    l2, decay = run({"l2": 0.1}), run({"weight_decay": 0.1})
    for a, b in zip(params_of(l2), params_of(decay), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert l2.history[-1].metrics["penalty"] > 0 and "penalty" not in decay.history[-1].metrics


def test_non_finite_loss_names_the_epoch_and_step() -> None:
    spec = make_spec(training={"batch_size": 16, "seed": 5})
    trainer = Trainer(spec).setup()
    poisoned = 7
    trainer.data.x_train[poisoned] = math.nan
    n = len(trainer.data.x_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5 * 100_003 + 1))
    step = int((order == poisoned).nonzero()) // 16 + 1
    with pytest.raises(NonFiniteLoss, match=f"loss became NaN at epoch 1, step {step}: lower"):
        trainer.train()


@pytest.mark.parametrize("clip", [{"grad_clip_norm": 0.01}, {"grad_clip_value": 0.001}])
def test_clipping_bounds_the_update(clip: dict) -> None:
    spec = make_spec(
        optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0},
        regularization=clip,
        training={"epochs": 1, "full_batch": True},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    before = torch.cat([p.reshape(-1) for p in params_of(trainer)])
    record = trainer.train().history[0]
    delta = torch.cat([p.reshape(-1) for p in params_of(trainer)]) - before
    if "grad_clip_norm" in clip:
        # torch divides by (norm + 1e-6), so the clipped norm is a hair under the bound.
        assert 0.01 * (1 - 1e-4) < float(delta.norm()) <= 0.01
        assert record.metrics["grad_norm"] > 0.01  # the metric is the norm before clipping
    else:
        assert float(delta.abs().max()) == pytest.approx(0.001, rel=1e-12)


class Recorder(TrainerHooks):
    def __init__(self, stop_at_call: int | None = None) -> None:
        self.calls = 0
        self.stop_at_call = stop_at_call
        self.records: list[EpochRecord] = []

    def should_stop(self) -> bool:
        self.calls += 1
        return self.stop_at_call is not None and self.calls >= self.stop_at_call

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        assert trainer.epoch == record.epoch
        self.records.append(record)


def test_should_stop_is_checked_every_step_and_cancels_within_the_step() -> None:
    spec = make_spec(training={"batch_size": 16, "epochs": 5})  # 120 rows: 8 steps an epoch
    hooks = Recorder()
    fit(spec, hooks=hooks)
    assert hooks.calls == 5 * 8
    hooks = Recorder(stop_at_call=8 + 3)
    trainer = Trainer(spec, hooks=hooks).setup()
    result = trainer.train()
    assert result.status == "cancelled" and result.stop.reason == "cancelled"
    assert result.stop.epoch == 1 == result.last_epoch == trainer.epoch == result.epochs_run
    assert result.stop.detail == "cancelled during epoch 2 at step 3"
    assert [r.epoch for r in hooks.records] == [1]


def test_on_epoch_end_sees_best_and_the_stop_before_the_loop_acts() -> None:
    spec = make_spec(
        optimizer={"lr": 0.5},  # too high: the validation loss soon stops improving
        early_stopping={"patience": 2},
        training={"epochs": 200},
    )
    hooks = Recorder()
    result = fit(spec, hooks=hooks)
    last = hooks.records[-1]
    assert result.stop.reason == "early_stopping" and result.stop.rule == "patience"
    assert last.stop == result.stop and last.wait == 2 and result.last_epoch == last.epoch
    best = min(hooks.records, key=lambda r: r.value)
    assert (result.best_epoch, result.best_value) == (best.epoch, best.value)
    assert [r.epoch for r in hooks.records if r.is_best][-1] == best.epoch
    assert all(r.best_epoch <= r.epoch for r in hooks.records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        Trainer(make_spec(training={"device": "cuda"}))


class SaveBest(TrainerHooks):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.is_best:
            self.files = trainer.save_checkpoint(self.directory, "best")


def test_best_checkpoint_reproduces_the_best_validation_loss(tmp_path: Path) -> None:
    spec = make_spec(optimizer={"lr": 0.3}, training={"epochs": 12})
    hooks = SaveBest(tmp_path)
    result = fit(spec, hooks=hooks)
    assert result.best_epoch < result.last_epoch  # the best is not simply the last epoch
    files = hooks.files
    assert files is not None and files.weights_path.read_bytes()
    model = load_model(spec, files.weights_path)
    assert not model.training
    assert evaluate(spec, model)["val_loss"] == pytest.approx(result.best_value, abs=1e-5)
    meta = read_metadata(files.weights_path)
    assert meta["spec_hash"] == spec.spec_hash() and meta["monitor"] == "val_loss"
    assert int(meta["epoch"]) == result.best_epoch
    assert float(meta["value"]) == result.best_value
    # The file alone is enough: its metadata holds the spec.
    again = load_model(None, files.weights_path)
    assert evaluate(spec, again)["val_loss"] == pytest.approx(result.best_value, abs=1e-5)
    import hashlib

    data = files.weights_path.read_bytes()
    assert files.bytes == len(data) and files.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "best.state.pt"]


class DieAfter(TrainerHooks):
    """Save a checkpoint at the end of epoch `epoch`, then cancel: a worker that died."""

    def __init__(self, directory: Path, epoch: int) -> None:
        self.directory, self.epoch, self.dead = directory, epoch, False

    def should_stop(self) -> bool:
        return self.dead

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            trainer.save_checkpoint(self.directory, "last")
            self.dead = True


RESUME_CASES = {
    "adam-dropout-plateau": spec_dict(
        model={"hidden": [16, 16], "dropout": 0.3},
        schedule={"name": "reduce_on_plateau", "patience": 0, "factor": 0.5},
        early_stopping={"patience": 50, "min_delta": 1e-3},
    ),
    "text-sgd-batchnorm-inverse-time": spec_dict(
        model={"norm": "batch"},
        optimizer={"name": "sgd", "lr": 0.05, "nesterov": True},
        schedule={"name": "inverse_time", "decay": 0.2},
        regularization={"l1": 1e-3, "grad_clip_norm": 1.0},
    ),
    "rmsprop-cnn-augmented": spec_dict(
        dataset={"name": "digits", "val_fraction": 0.8},
        model={"arch": "cnn", "channels": [4], "dropout": 0.2},
        optimizer={"name": "rmsprop"},
        augmentation=[{"hflip": 0.5}, {"rotate": 10}, {"crop": 1}, {"cutout": {"size": 2}}],
        training={"batch_size": 64},
    ),
    "lbfgs": spec_dict(
        model={"hidden": [8], "activation": "tanh"},
        optimizer={"name": "lbfgs", "max_iter": 5},
        regularization={"l2": 1e-3},
        training={"full_batch": True},
    ),
    "torch-sgd": spec_dict(optimizer={"name": "sgd", "lr": 0.05}),
    "full-batch-adam-warmup": spec_dict(
        schedule={"name": "warmup", "warmup_epochs": 4}, training={"full_batch": True}
    ),
    "adamw-no-correction": spec_dict(
        optimizer={"name": "adamw", "bias_correction": False},
        regularization={"weight_decay": 0.1},
    ),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_a_resumed_run_equals_an_uninterrupted_one(case: str, tmp_path: Path) -> None:
    spec = JobSpec.model_validate(merge(RESUME_CASES[case], {"training": {"epochs": 6}}))
    whole = Trainer(spec).setup()
    whole.train()

    first = Trainer(spec, hooks=DieAfter(tmp_path, 3)).setup()
    assert first.train().status == "cancelled"
    resumed = Trainer(spec)
    resumed.load_checkpoint(tmp_path / "last.state.pt", tmp_path / "last.safetensors")
    assert resumed.epoch == 3
    result = resumed.train()
    assert result.last_epoch == 6 and result.epochs_run == 3

    for a, b in zip(params_of(whole), params_of(resumed), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    for a, b in zip(whole.history[3:], resumed.history, strict=True):
        assert a.epoch == b.epoch
        for name in ("train_loss", "val_loss", "lr", "grad_norm"):
            assert a.metrics[name] == pytest.approx(b.metrics[name], abs=1e-6), name
        assert (a.best_epoch, a.wait) == (b.best_epoch, b.wait)


def test_resume_state_is_plain_and_checked(tmp_path: Path) -> None:
    spec = make_spec(early_stopping={"patience": 1}, training={"epochs": 50})
    trainer = Trainer(spec, hooks=SaveBest(tmp_path)).setup()
    trainer.train()
    path = tmp_path / "last"
    files = trainer.save_checkpoint(tmp_path, "last")
    state = torch.load(files.state_path, weights_only=True)  # no pickled code
    assert state["epoch"] == trainer.epoch and state["stop"]["rule"] == "patience"
    # A run restored from the epoch that stopped it is finished.
    again = Trainer(spec)
    again.load_checkpoint(files.state_path, files.weights_path)
    result = again.train()
    assert result.stop.rule == "patience" and result.epochs_run == 0
    # A different spec refuses the checkpoint.
    other = Trainer(make_spec(early_stopping={"patience": 2}, training={"epochs": 50}))
    with pytest.raises(TrainingError, match="different spec"):
        other.load_checkpoint(files.state_path, files.weights_path)
    with pytest.raises(TrainingError, match="cannot read"):
        load_state(path.with_suffix(".missing"))


def test_python_random_state_is_one_tensor_and_old_states_still_load() -> None:
    """The resume state keeps Python's 625-word random state as one int64 tensor (a tuple of
    ints is copied and pickled word by word each epoch); a state written as a tuple by an
    earlier version restores the same stream."""
    import random

    from core.train import _rng_state, _set_rng_state

    random.seed(7)
    state = _rng_state()
    version, words, gauss = state["python"]
    assert isinstance(words, torch.Tensor) and words.dtype == torch.int64 and len(words) == 625
    want = [random.random() for _ in range(3)]
    _set_rng_state(state)
    assert [random.random() for _ in range(3)] == want
    state["python"] = (version, tuple(words.tolist()), gauss)  # the earlier format
    _set_rng_state(state)
    assert [random.random() for _ in range(3)] == want


def test_the_resume_states_series_grow_with_the_epochs_and_match_the_history(
    tmp_path: Path,
) -> None:
    """The series the diagnosis follows are kept as a tensor that grows epoch by epoch (a
    snapshot then copies them, not rebuilds them from every epoch's metrics): at every
    epoch, and after a resume, they are exactly the history's, and a state holds only its
    own rows."""

    def rebuilt(trainer: Trainer) -> torch.Tensor:
        names = trainer._history_state()["names"]
        rows = [[m.get(n, math.nan) for n in names] for m in trainer.metrics_history]
        return torch.tensor(rows, dtype=torch.float64)

    seen: list[int] = []

    class Check(TrainerHooks):
        def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
            state = trainer._history_state()
            assert state["names"] == ["train_loss", "val_loss", "train_accuracy", "grad_norm"]
            assert torch.equal(state["values"], rebuilt(trainer)), record.epoch
            assert state["values"].untyped_storage().nbytes() == record.epoch * 4 * 8
            seen.append(record.epoch)
            if record.epoch == 70:  # past the first 64 rows' buffer
                trainer.save_checkpoint(tmp_path, "at70")
                saved.append(rebuilt(trainer))

    saved: list[torch.Tensor] = []
    spec = make_spec(training={"epochs": 75})
    Trainer(spec, hooks=Check()).setup().train()
    assert seen == list(range(1, 76))
    again = Trainer(spec, hooks=Check())
    again.load_checkpoint(tmp_path / "at70.state.pt", tmp_path / "at70.safetensors")
    assert torch.equal(again._history_state()["values"], saved[0])
    again.train()
    assert seen[-5:] == [71, 72, 73, 74, 75]


def test_newton_converges_on_regularized_softmax_regression() -> None:
    spec = make_spec(
        model={"hidden": []},
        optimizer={"name": "newton", "lr": 1.0},
        regularization={"l2": 0.01},
        training={"epochs": 8, "full_batch": True, "batch_size": 1000},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    history = trainer.train().history
    objective = [h.metrics["train_loss"] + h.metrics["penalty"] for h in history]
    assert all(b < a for a, b in zip(objective, objective[1:5], strict=False)), objective
    assert history[-1].metrics["grad_norm"] < 1e-8  # quadratic convergence


def test_full_batch_uses_every_row_when_batch_norm_would_leave_one_alone() -> None:
    # iris: 120 training rows in chunks of 7 leave a last chunk of one row, which batch norm
    # cannot normalize: it joins the chunk before (8 rows), and every row weighs 1/120.
    spec = make_spec(
        model={"hidden": [8], "norm": "batch"},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0},
        training={"epochs": 1, "full_batch": True, "batch_size": 7},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    reference = copy.deepcopy(trainer.model)
    x, y = trainer.data.x_train, trainer.data.y_train
    assert len(x) == 120
    grads: list[list[torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    trainer.train()
    chunks = [(s, s + 7) for s in range(0, 105, 7)] + [(112 - 7, 112), (112, 120)]
    assert sum(e - s for s, e in chunks) == 120
    objective = sum(
        task_loss(reference(x[s:e]), y[s:e], "classification") * (e - s) / 120 for s, e in chunks
    )
    assert isinstance(objective, torch.Tensor)
    objective.backward()
    for got, p in zip(grads[0], reference.parameters(), strict=True):
        assert p.grad is not None
        assert torch.allclose(got, p.grad, rtol=1e-10, atol=1e-12)


def test_lbfgs_sees_the_same_dropout_masks_at_every_evaluation_of_a_step() -> None:
    spec = make_spec(
        model={"hidden": [16], "dropout": 0.5},
        optimizer={"name": "lbfgs", "max_iter": 4},
        training={"epochs": 2, "full_batch": True},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    step = trainer.optimizer.step
    values: list[tuple[float, float]] = []

    def twice(closure: Any) -> Any:
        values.append((float(closure()), float(closure())))  # same parameters, same function
        return step(closure)

    trainer.optimizer.step = twice  # type: ignore[method-assign]
    trainer.train()
    assert len(values) == 2
    assert all(a == b for a, b in values), values
    assert values[0] != values[1]  # and new masks for the next step


class TrainAfterStep(TrainerHooks):
    def __init__(self) -> None:
        self.pairs: list[tuple[float, float, float, float]] = []

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        measured = {**trainer.evaluate("train"), **trainer.evaluate("val")}
        metrics = record.metrics
        self.pairs.append(
            (
                metrics["train_loss"],
                measured["train_loss"],
                metrics["val_loss"],
                measured["val_loss"],
            )
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": {"name": "lbfgs"}},
        {"optimizer": {"name": "sgd", "lr": 0.5}},
        {"optimizer": {"name": "newton"}, "model": {"hidden": []}},
    ],
    ids=["lbfgs", "gd", "newton"],
)
def test_full_batch_epochs_report_train_and_val_loss_of_the_same_parameters(
    changes: dict[str, Any],
) -> None:
    spec = make_spec(**merge({"training": {"epochs": 2, "full_batch": True}}, changes))
    hooks = TrainAfterStep()
    Trainer(spec, dtype=torch.float64, hooks=hooks).setup().train()
    assert len(hooks.pairs) == 2  # one per epoch
    for train_loss, measured_train, val_loss, measured_val in hooks.pairs:
        assert train_loss == pytest.approx(measured_train, rel=1e-12)
        assert val_loss == pytest.approx(measured_val, rel=1e-12)
