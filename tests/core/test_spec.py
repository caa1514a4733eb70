import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from core.models import build_model
from core.spec import NEWTON_MAX_PARAMETERS, JobSpec
from tests.core.builders import spec_dict


def errors_of(spec: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize("module", ["core.spec", "core"])
def test_spec_imports_without_torch(module: str) -> None:
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minimal_spec_is_valid_and_filled_in() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}})
    assert spec.task == "classification"
    assert spec.optimizer.name == "adam"
    assert spec.optimizer.lr == 0.001 and spec.optimizer.bias_correction is True
    assert spec.optimizer.momentum is None  # not an Adam setting
    assert spec.early_stopping is None and spec.checkpoints.keep_top_k == 3
    assert JobSpec.model_validate({"dataset": {"name": "regression"}}).task == "regression"
    # A validated spec's dump validates to the same spec (the worker reloads stored specs).
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_optimizer_defaults_depend_on_the_optimizer() -> None:
    sgd = JobSpec.model_validate(spec_dict(optimizer={"name": "sgd", "lr": None})).optimizer
    assert (sgd.lr, sgd.momentum, sgd.nesterov) == (0.01, 0.9, False)
    newton = JobSpec.model_validate(
        spec_dict(optimizer={"name": "newton", "lr": None}, training={"full_batch": True})
    ).optimizer
    assert (newton.lr, newton.damping) == (1.0, 0.0)


def test_spec_hash_is_canonical() -> None:
    a = JobSpec.model_validate(spec_dict())
    b = JobSpec.model_validate(spec_dict(optimizer={"betas": [0.9, 0.999]}))  # the defaults
    c = JobSpec.model_validate(spec_dict(training={"seed": 1}))
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    assert len(a.spec_hash()) == 64


@pytest.mark.parametrize(
    ("patch", "loc", "fragment"),
    [
        ({"model": {"arch": "cnn"}}, ("model", "arch"), "image dataset"),
        ({"task": "regression"}, ("task",), "classification dataset"),
        ({"model": {"norm": "batch"}, "training": {"batch_size": 1}}, ("model", "norm"), "> 1"),
        ({"optimizer": {"name": "newton"}}, ("training", "full_batch"), "full_batch: true"),
        ({"optimizer": {"name": "lbfgs"}}, ("training", "full_batch"), "full_batch: true"),
        (
            {"optimizer": {"name": "sgd", "momentum": 0.0, "nesterov": True}},
            ("optimizer", "nesterov"),
            "momentum > 0",
        ),
        (
            {"optimizer": {"name": "sgd", "bias_correction": False}},
            ("optimizer", "bias_correction"),
            "only to adam, adamw",
        ),
        ({"optimizer": {"name": "adam", "momentum": 0.9}}, ("optimizer", "momentum"), "sgd"),
        (
            {"early_stopping": {"monitor": "val_accuracy", "mode": "min"}},
            ("early_stopping", "mode"),
            "mode must be max",
        ),
        ({"optimizer": {"name": "adamax"}}, ("optimizer", "name"), "'sgd'"),
        ({"optimizer": {"lr": -1}}, ("optimizer", "lr"), "greater than 0"),
        ({"dataset": {"val_fraction": 1.0}}, ("dataset", "val_fraction"), "less than 1"),
        ({"dataset": {"val_fraction": 0.01}}, ("dataset", "val_fraction"), "stratified"),
        ({"dataset": {"noise": 0.1}}, ("dataset", "noise"), "does not apply"),
        ({"training": {"epochs": 0}}, ("training", "epochs"), "greater than or equal to 1"),
        ({"regularization": {"l2": -0.1}}, ("regularization", "l2"), "greater than or equal"),
        ({"model": {"dropout": 1.0}}, ("model", "dropout"), "less than 1"),
        ({"schedule": {"name": "step", "decay": 0.1}}, ("schedule", "step", "decay"), "Extra"),
        ({"optimizer": {"learning_rate": 0.1}}, ("optimizer", "learning_rate"), "Extra"),
        ({"checkpoints": {"keep_top_k": 0}}, ("checkpoints", "keep_top_k"), "greater than"),
    ],
)
def test_invalid_specs_name_the_field(patch: dict, loc: tuple, fragment: str) -> None:
    errors = errors_of(spec_dict(**patch))
    assert any(e_loc == loc and fragment in msg for e_loc, msg in errors), errors


def test_regression_refuses_accuracy_and_classification_mismatch() -> None:
    spec = {
        "dataset": {"name": "regression"},
        "early_stopping": {"monitor": "val_accuracy"},
        "schedule": {"name": "reduce_on_plateau", "monitor": "train_accuracy"},
    }
    locs = [loc for loc, _ in errors_of(spec)]
    assert ("early_stopping", "monitor") in locs and ("schedule", "monitor") in locs


def test_newton_parameter_limit_names_limit_and_count() -> None:
    spec = spec_dict(
        dataset={"name": "digits"},
        model={"hidden": [128]},
        optimizer={"name": "newton"},
        training={"full_batch": True},
    )
    count = 64 * 128 + 128 + 128 * 10 + 10
    [(loc, msg)] = errors_of(spec)
    assert loc == ("optimizer", "name")
    assert f"{NEWTON_MAX_PARAMETERS:,}" in msg and f"{count:,}" in msg


def test_newton_refuses_dropout_and_batch_norm() -> None:
    base = spec_dict(optimizer={"name": "newton"}, training={"full_batch": True})
    assert errors_of({**base, "model": {"dropout": 0.5}})[0][0] == ("model", "dropout")
    assert errors_of({**base, "model": {"norm": "batch"}})[0][0] == ("model", "norm")


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "mlp", "hidden": []},
        {"arch": "mlp", "hidden": [32, 16], "norm": "batch"},
        {"arch": "mlp", "hidden": [8], "norm": "layer"},
        {"arch": "cnn", "channels": [4]},
        {"arch": "cnn", "channels": [4, 8, 16], "norm": "layer"},
        {"arch": "cnn", "channels": [8, 8], "norm": "batch", "dropout": 0.2},
    ],
)
def test_parameter_count_matches_the_built_model(model: dict) -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "model": model})
    built = build_model(spec)
    assert spec.parameter_count() == sum(p.numel() for p in built.parameters())
    out = built(torch.zeros(2, *(spec.dataset.info().image_shape or (64,))))
    assert out.shape == (2, 10)


def test_init_family_names_are_accepted() -> None:
    spec = JobSpec.model_validate(spec_dict(model={"init": "kaiming"}))
    assert spec.model.init == "kaiming_normal"
