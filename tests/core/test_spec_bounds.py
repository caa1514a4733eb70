"""A spec is refused at once, naming the field, or it runs: never a crash at submit (a
validator meeting a JSON type it did not expect) or halfway through training (a number
its consumer refuses)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from pydantic import ValidationError

from core import fit
from core.spec import JobSpec
from tests.core.builders import make_spec, spec_dict

# Every section written out, so that every field is reached by the walk below.
FULL: dict[str, Any] = {
    "name": "n",
    "task": "classification",
    "dataset": {"name": "moons", "val_fraction": 0.2, "seed": 0, "n_samples": 40, "noise": 0.1},
    "model": {
        "arch": "mlp",
        "hidden": [4],
        "channels": [4],
        "activation": "relu",
        "dropout": 0.0,
        "norm": "none",
        "init": "constant",
        "init_value": 0.1,
        "init_std": 0.1,
    },
    "backbone": {"arch": "resnet18", "weights": "none", "input_size": 32, "freeze": False},
    "optimizer": {"name": "adam", "lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-8},
    "regularization": {"l1": 0.0, "l2": 0.0, "weight_decay": 0.0, "grad_clip_norm": 1.0},
    "augmentation": [{"op": "hflip", "p": 0.5}, {"rotate": 10}],
    "schedule": {"name": "step", "step_size": 2, "gamma": 0.5},
    "training": {"epochs": 1, "batch_size": 8, "full_batch": False, "seed": 0, "device": "cpu"},
    "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 0.0},
    "checkpoints": {"keep_top_k": 1},
}
HOSTILE: list[Any] = [{}, [], "x", None, True, 10**30, -(10**30), 1e308, -1, 0.5, [{}], {"a": []}]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def replaced(path: tuple[Any, ...], new: Any) -> Any:
    body = copy.deepcopy(FULL)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return body


@pytest.mark.parametrize("path", paths(FULL), ids=lambda p: ".".join(map(str, p)))
def test_any_json_value_in_any_field_is_refused_with_a_validation_error_or_accepted(
    path: tuple[Any, ...],
) -> None:
    for value in HOSTILE:
        try:
            JobSpec.model_validate(replaced(path, value))
        except ValidationError as exc:
            # The refusal names where it was: the field itself or a section holding it.
            assert all(isinstance(e["msg"], str) for e in exc.errors())


@pytest.mark.parametrize("init", [{}, [], ["kaiming"], {"kaiming": 1}, 3])
def test_model_init_of_the_wrong_type_is_refused_naming_the_field(init: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec_dict(model={"init": init}))
    assert [e["loc"][:2] for e in caught.value.errors()] == [("model", "init")]


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "seed", 10**30),
        ("training", "seed", -1),
        ("training", "seed", 2**32),
        ("dataset", "seed", -1),
        ("dataset", "seed", 2**64),
        ("model", "init_value", 1e308),
        ("model", "init_value", -11.0),
        ("model", "init_std", 1e308),
        ("optimizer", "lr", 1e308),
        ("optimizer", "eps", 1e300),
        ("regularization", "l2", 1e308),
        ("regularization", "grad_clip_norm", float("inf")),
        ("early_stopping", "stopping_threshold", float("inf")),
        ("early_stopping", "min_delta", float("nan")),
        ("early_stopping", "patience", 10**30),
        ("schedule", "step_size", 10**30),
    ],
)
def test_numbers_out_of_their_consumers_range_are_refused_at_once(
    section: str, field: str, value: Any
) -> None:
    body = spec_dict(**{section: {field: value}})
    if section == "schedule":
        body["schedule"]["name"] = "step"
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(body)
    # A discriminated union adds its tag: schedule.step.step_size.
    assert any(e["loc"][0] == section and e["loc"][-1] == field for e in caught.value.errors())


def test_the_largest_seeds_accepted_train() -> None:
    seed = 2**32 - 1
    spec = make_spec(
        dataset={"name": "moons", "seed": seed, "n_samples": 40},
        model={"init": "constant", "init_value": 10.0, "dropout": 0.5},
        augmentation=[],
        training={"epochs": 1, "seed": seed},
    )
    result = fit(spec)
    assert result.epochs_run == 1 and math.isfinite(result.history[0].metrics["val_loss"])


def test_a_generated_dataset_is_bounded_in_size() -> None:
    with pytest.raises(ValidationError) as caught:
        make_spec(dataset={"name": "regression", "n_samples": 200_000, "n_features": 1_000})
    error = caught.value.errors()[0]
    assert error["loc"] == ("dataset", "n_samples")
    assert "200,000 samples of 1,000 values" in error["msg"]
    make_spec(dataset={"name": "regression", "n_samples": 50_000, "n_features": 1_000})
