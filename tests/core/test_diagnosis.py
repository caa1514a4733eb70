import json
import math
from pathlib import Path

import numpy as np
import pytest

import core.data
from core import fit
from core.data import load_data, majority_baseline, shared_samples
from core.diagnosis import diagnose
from core.errors import NonFiniteLoss
from core.results import EpochRecord
from core.spec import DatasetSpec
from core.train import Trainer, TrainerHooks
from tests.core.builders import make_spec


def json_ready(value: object) -> None:
    json.dumps(value, allow_nan=False)  # raises on NaN/inf or non-JSON types


class BestEpochs(TrainerHooks):
    """The epochs at which a worker writes the best checkpoint (record.is_best)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.is_best:
            self.epochs.append(record.epoch)


def test_a_job_built_to_overfit_is_diagnosed_overfitting() -> None:
    # An MLP with 4,500 weights memorizes 20 noisy training points.
    spec = make_spec(
        dataset={"name": "moons", "n_samples": 40, "noise": 0.4, "val_fraction": 0.5},
        model={"hidden": [64, 64]},
        optimizer={"lr": 0.01},
        training={"epochs": 40, "batch_size": 8},
    )
    hooks = BestEpochs()
    result = fit(spec, hooks=hooks)
    diagnosis = result.diagnosis
    assert diagnosis["verdict"] == "overfitting" and diagnosis["final"] is True
    evidence = diagnosis["evidence"]
    best, last = evidence["best"], evidence["last"]
    # The best checkpoint is earlier than the last epoch, and the evidence names both.
    assert best["epoch"] == result.best_epoch == hooks.epochs[-1] < result.last_epoch == 40
    assert last["epoch"] == 40 and evidence["epochs_since_best"] == 40 - best["epoch"]
    assert last["val_loss"] > 2 * best["val_loss"] and last["train_loss"] < best["train_loss"]
    assert last["gap"] > best["gap"]
    assert diagnosis["gap"][-1] == pytest.approx(last["gap"])
    assert len(diagnosis["gap"]) == 40
    assert (
        f"use the best checkpoint (epoch {best['epoch']}), not the last" in (diagnosis["remedies"])
    )
    assert any("regularization" in r for r in diagnosis["remedies"])
    assert any("smaller model" in r for r in diagnosis["remedies"])
    assert any("more training data" in r for r in diagnosis["remedies"])
    json_ready(diagnosis)
    # Live, too: the epoch records carry the diagnosis of the run so far.
    live = result.history[-1].diagnosis
    assert live["verdict"] == "overfitting" and live["final"] is False and live["epoch"] == 40
    assert result.history[0].diagnosis["verdict"] == "too_early"


def test_one_epoch_with_a_tiny_learning_rate_is_underfitting() -> None:
    spec = make_spec(
        dataset={"name": "digits"},
        optimizer={"name": "sgd", "lr": 1e-5},
        training={"epochs": 1, "batch_size": 32},
    )
    diagnosis = fit(spec).diagnosis
    assert diagnosis["verdict"] == "underfitting"
    evidence = diagnosis["evidence"]
    falling = evidence["still_falling"]  # against the loss measured before the first step
    assert falling["since_epoch"] == 0 and falling["val_loss"] < falling["start_val_loss"]
    below = evidence["below_baseline"]
    assert below["train_accuracy"] <= below["majority_baseline"] == pytest.approx(0.1016, abs=1e-3)
    assert "more epochs (training.epochs)" in diagnosis["remedies"]
    assert any("bigger model" in r for r in diagnosis["remedies"])
    json_ready(diagnosis)


def test_a_deep_sigmoid_mlp_with_tiny_weights_has_vanishing_gradients() -> None:
    spec = make_spec(
        dataset={"name": "digits"},
        model={"hidden": [32] * 6, "activation": "sigmoid", "init": "normal", "init_std": 0.01},
        training={"epochs": 2, "batch_size": 64},
    )
    result = fit(spec)
    diagnosis = result.diagnosis
    assert diagnosis["verdict"] == "vanishing_gradients"
    evidence = diagnosis["evidence"]
    layers = evidence["layer_grad_norms"]
    assert list(layers) == [f"body.{2 * i}" for i in range(6)] + ["head"]  # in model order
    assert evidence["first_layer"] == "body.0" and evidence["largest_layer"] == "head"
    assert evidence["ratio"] < 1e-6  # each sigmoid layer passes back at most 1/4 of it
    assert layers["body.0"] < layers["body.4"] < layers["body.10"] < layers["head"]
    assert "body.0" in evidence["vanishing_layers"]
    assert any("Kaiming" in r for r in diagnosis["remedies"])
    metrics = result.history[-1].metrics
    assert metrics["grad_norm/body.0"] == pytest.approx(layers["body.0"])
    # The same network with Xavier's initialization and ReLU does not.
    healthy = make_spec(
        dataset={"name": "digits"},
        model={"hidden": [32] * 6, "activation": "relu", "init": "kaiming"},
        training={"epochs": 2, "batch_size": 64},
    )
    assert fit(healthy).diagnosis["verdict"] != "vanishing_gradients"


def test_shared_samples_are_counted_on_any_data() -> None:
    rng = np.random.default_rng(0)
    x_train, x_val = rng.normal(size=(200, 5)), rng.normal(size=(50, 5))
    assert shared_samples(x_train, x_val) == 0
    planted = [3, 17, 40, 41]
    x_val[planted] = x_train[[0, 5, 5, 199]]  # the same training row twice counts twice
    assert shared_samples(x_train, x_val) == 4
    x_val[0] = -0.0 * x_val[0] + x_train[9] * 1.0  # still a copy
    assert shared_samples(x_train, x_val) == 5
    x_val[0, 0] = np.nextafter(x_val[0, 0], 10)  # one ulp away is another sample
    assert shared_samples(x_train, x_val) == 4
    images = rng.integers(0, 3, size=(30, 1, 2, 2)).astype(float)  # any shape: rows of images
    assert shared_samples(images[:20], images[20:]) > 0
    assert majority_baseline(np.array([0, 1, 1, 2, 1])) == 0.6


def test_planted_duplicates_across_the_splits_are_reported(monkeypatch) -> None:
    spec = make_spec(dataset={"name": "wine", "val_fraction": 0.3}, training={"epochs": 3})
    assert load_data(spec.dataset).shared_samples == 0  # wine has no duplicate rows
    raw_arrays = core.data.raw_arrays

    def with_copies(dataset: DatasetSpec):
        x, y = raw_arrays(dataset)
        copies = np.arange(0, 178, 6)  # 30 rows, each added once more
        return np.concatenate([x, x[copies]]), np.concatenate([y, y[copies]])

    monkeypatch.setattr(core.data, "raw_arrays", with_copies)
    data = load_data(spec.dataset)
    train_rows = {r.tobytes() for r in data.x_train.numpy()}
    expected = sum(r.tobytes() in train_rows for r in data.x_val.numpy())
    assert 5 < data.shared_samples == expected < 30  # the pairs the split separated
    result = Trainer(spec).setup().train()
    assert result.diagnosis["shared_samples"] == expected
    assert any(
        f"{expected} validation samples are also in the training" in w for w in result.warnings
    )


def test_iris_real_duplicate_is_reported() -> None:
    # Iris has one duplicated flower; the default split puts one copy in each split.
    result = fit(make_spec())
    assert result.diagnosis["shared_samples"] == 1
    assert result.warnings == [
        "dataset: 1 validation sample is also in the training split (same inputs): "
        "the validation loss flatters the model"
    ]


def history(train, val, **more) -> list[dict[str, float]]:
    rows = [{"train_loss": t, "val_loss": v} for t, v in zip(train, val, strict=True)]
    for name, values in more.items():
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return rows


def run(rows, *, final=True, shared=0, baseline=None, initial=None, task="regression"):
    return diagnose(
        rows,
        task=task,
        majority_baseline=baseline,
        shared_samples=shared,
        final=final,
        initial=initial,
    )


def test_exploding_gradients_growth_and_non_finite() -> None:
    grads = [1.0, 0.5, 3.0, 40.0, 900.0]
    d = run(history([1.0, 0.9, 0.95, 1.5, 9.0], [1.0] * 5, grad_norm=grads))
    assert d["verdict"] == "exploding_gradients"
    assert d["evidence"] == {
        "from_epoch": 2,
        "from_grad_norm": 0.5,
        "epoch": 5,
        "grad_norm": 900.0,
        "growth": 1800.0,
    }
    assert any("clipping" in r for r in d["remedies"])
    # A network waking up from tiny weights grows its gradients too, but stays small.
    waking = run(history([1.0] * 4, [1.0] * 4, grad_norm=[1e-6, 1e-4, 1e-2, 0.5]))
    assert waking["verdict"] != "exploding_gradients"
    nan = run(history([1.0, math.nan], [1.0, 1.0], grad_norm=[1.0, math.inf]), final=False)
    assert nan["verdict"] == "exploding_gradients" and nan["evidence"]["epoch"] == 2
    json_ready(nan)
    assert nan["gap"] == [0.0, None]


def test_a_diverging_job_fails_with_its_diagnosis() -> None:
    spec = make_spec(
        dataset={"name": "regression", "n_samples": 100},
        model={"hidden": [32, 32]},
        optimizer={"name": "sgd", "lr": 3.0},
        training={"epochs": 5},
    )
    with pytest.raises(NonFiniteLoss) as info:
        fit(spec)
    diagnosis = info.value.diagnosis
    assert diagnosis["verdict"] == "exploding_gradients" and diagnosis["final"] is True
    json_ready(diagnosis)


def test_validation_loss_below_training_loss_names_the_reasons() -> None:
    # Converged (not still falling, which would rank first), validation well below training.
    rows = history([1.0, 0.7, 0.62, 0.61, 0.605], [0.9, 0.6, 0.52, 0.515, 0.514])
    regularization = {"regularizers": ["l2", "dropout"], "stopping_rule": None}
    d = diagnose(
        rows,
        task="regression",
        majority_baseline=None,
        shared_samples=3,
        final=True,
        regularization=regularization,
    )
    assert d["verdict"] == "val_below_train"
    assert d["evidence"]["epochs"] == [3, 4, 5] and d["evidence"]["shared_samples"] == 3
    assert d["evidence"]["harder_training"] == ["dropout"]
    assert "3 validation samples are also in the training split (leakage)" in d["summary"]
    assert d["regularization"] == regularization and d["shared_samples"] == 3
    assert any("leakage" in r for r in d["remedies"])


def test_good_fit_and_too_early() -> None:
    # Converged: the last epochs barely move, validation close to training.
    train = [1.0, 0.5, 0.3, 0.22, 0.2, 0.195, 0.194]
    val = [1.0, 0.55, 0.34, 0.25, 0.23, 0.226, 0.2259]
    d = run(history(train, val), task="classification", baseline=0.5)
    assert d["verdict"] == "good_fit" and d["remedies"] == [] and d["findings"] == []
    assert d["gap"] == pytest.approx([v - t for t, v in zip(train, val, strict=True)])
    assert run(history(train[:2], val[:2]), final=False)["verdict"] == "too_early"
    assert run([], final=True)["verdict"] == "too_early"
    # Still falling fast at the end: underfitting, live and final alike.
    falling = run(history(train[:4], val[:4]))
    assert falling["verdict"] == "underfitting"
    assert falling["evidence"]["still_falling"]["epoch"] == 4
    # An overfit run's validation loss must rise clearly above its best, not by noise.
    noisy = history([1, 0.8, 0.7, 0.6, 0.5], [0.9, 0.7, 0.702, 0.701, 0.703])
    assert run(noisy)["verdict"] != "overfitting"


def test_diagnosis_survives_a_resume(tmp_path: Path) -> None:
    spec = make_spec(optimizer={"lr": 0.05}, training={"epochs": 8})
    whole = fit(spec)

    class DieAfter(TrainerHooks):
        dead = False

        def should_stop(self) -> bool:
            return self.dead

        def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
            if record.epoch == 4:
                trainer.save_checkpoint(tmp_path, "last")
                self.dead = True

    Trainer(spec, hooks=DieAfter()).setup().train()
    resumed = Trainer(spec)
    resumed.load_checkpoint(tmp_path / "last.state.pt", tmp_path / "last.safetensors")
    result = resumed.train()
    for a, b in (
        (whole.diagnosis, result.diagnosis),
        (whole.history[-1].diagnosis, result.history[-1].diagnosis),
    ):
        assert a["verdict"] == b["verdict"] and a["epoch"] == b["epoch"] == 8
        assert a["gap"] == pytest.approx(b["gap"], abs=1e-6)


def test_regularizers_and_the_stopping_rule_are_kept_apart() -> None:
    spec = make_spec(
        model={"dropout": 0.2, "norm": "batch"},
        regularization={"l2": 1e-3, "weight_decay": 1e-4},
        early_stopping={"patience": 3},
        training={"epochs": 2},
    )
    summary = fit(spec).diagnosis["regularization"]
    assert summary["regularizers"] == ["l2", "weight_decay", "dropout", "batch_norm"]
    assert summary["stopping_rule"] == "early_stopping"
    assert "not a regularizer" in summary["note"]


def test_validation_accuracy_no_better_than_the_majority_baseline_is_underfitting() -> None:
    # Training accuracy is high and the losses are flat: only the validation accuracy (0.33,
    # below always predicting the majority class, 0.5) says the model has not learned.
    history = [
        {
            "train_loss": 0.30,
            "val_loss": 0.70,
            "train_accuracy": 0.90,
            "val_accuracy": 0.33,
            "grad_norm": 0.1,
        }
        for _ in range(5)
    ]
    diagnosis = diagnose(
        history, task="classification", majority_baseline=0.5, shared_samples=0, final=True
    )
    assert diagnosis["verdict"] == "underfitting"
    below = diagnosis["evidence"]["below_baseline"]
    assert below == {"epoch": 5, "majority_baseline": 0.5, "val_accuracy": 0.33}
    assert (
        "validation accuracy 0.330 is not above the majority-class baseline 0.500"
        in (diagnosis["summary"])
    )
    history[-1]["val_accuracy"] = 0.51
    better = diagnose(
        history, task="classification", majority_baseline=0.5, shared_samples=0, final=True
    )
    assert better["verdict"] == "good_fit"
