"""Every spec the validator accepts runs: no spec is refused halfway through training.

Specs are drawn from the spec's own JSON schema (hypothesis-jsonschema), narrowed only where
a spec would otherwise be slow to run (a large dataset or model, several epochs, a
pretrained backbone to download) or would rarely validate (optimizer fields that do not
apply to the chosen optimizer; each optimizer's own fields are drawn with it). The numeric
bounds the schema carries are the validator's own: what the test exercises is exactly what
the API accepts.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis_jsonschema import from_schema
from pydantic import ValidationError

from core.errors import NonFiniteLoss
from core.spec import _OPTIMIZER_FIELDS, JobSpec
from core.train import Trainer


def _narrowed_schema() -> dict[str, Any]:
    schema = copy.deepcopy(JobSpec.model_json_schema())
    defs = schema["$defs"]
    dataset = defs["DatasetSpec"]["properties"]
    small = {
        "n_samples": {"type": "integer", "minimum": 20, "maximum": 40},
        "noise": dataset["noise"]["anyOf"][0],
        "n_features": {"type": "integer", "minimum": 1, "maximum": 8},
        "image_size": {"type": "integer", "minimum": 8, "maximum": 12},
    }
    generated = {
        "moons": ["n_samples", "noise"],
        "regression": ["n_samples", "noise", "n_features"],
    }
    generated["shapes"] = ["n_samples", "noise", "image_size"]
    variants = []
    for name in ("iris", "wine", "digits", "moons", "regression", "shapes"):
        props: dict[str, Any] = {
            "name": {"const": name},
            "val_fraction": dataset["val_fraction"],
            "seed": dataset["seed"],
            "train_size": {"type": "integer", "minimum": 2, "maximum": 60},
            **{field: small[field] for field in generated.get(name, [])},
        }
        # digits has 1,797 rows: a subset keeps an epoch of batch_size 1 short.
        required = ["name", "train_size"] if name == "digits" else ["name"]
        variants.append(
            {
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            }
        )
    schema["properties"]["dataset"] = {"anyOf": variants}

    model = defs["ModelSpec"]["properties"]
    model["hidden"] = {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": 8},
        "maxItems": 3,
    }
    model["channels"] = {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": 4},
        "minItems": 1,
        "maxItems": 5,
    }
    optimizer = defs["OptimizerSpec"]["properties"]
    optimizer["history_size"]["anyOf"][0]["maximum"] = 5
    optimizer["max_iter"]["anyOf"][0]["maximum"] = 3
    # The same bounds as items rather than prefixItems, which hypothesis-jsonschema draws by
    # filtering.
    beta = optimizer["betas"]["anyOf"][0]["prefixItems"][0]
    optimizer["betas"] = {"type": "array", "items": beta, "minItems": 2, "maxItems": 2}
    schema["properties"]["optimizer"] = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    **{field: optimizer[field] for field in fields},
                },
                "required": ["name"],
                "additionalProperties": False,
            }
            for name, fields in _OPTIMIZER_FIELDS.items()
        ]
    }
    training = defs["TrainingSpec"]["properties"]
    training["epochs"] = {"const": 1}
    training["device"] = {"const": "cpu"}
    defs["TrainingSpec"]["required"] = ["epochs", "device"]
    schema["properties"]["augmentation"]["maxItems"] = 3
    schema["properties"]["backbone"] = {"type": "null"}  # torchvision: large, or downloads
    schema["properties"]["name"] = {"type": ["string", "null"], "maxLength": 20}
    schema["required"] = ["dataset", "training"]
    return schema


SCHEMA = _narrowed_schema()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(raw=from_schema(SCHEMA))
def test_every_spec_the_validator_accepts_builds_and_trains(raw: dict[str, Any]) -> None:
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError:
        reject()
    trainer = Trainer(spec).setup()
    try:
        result = trainer.train()
    except NonFiniteLoss:
        return  # a diverging run is an outcome the job reports (with its diagnosis), not a crash
    assert result.epochs_run == 1
    assert result.history[0].metrics["val_loss"] == pytest.approx(
        trainer.evaluate("val")["val_loss"], nan_ok=True
    )
