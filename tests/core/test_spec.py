import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from core.models import build_model
from core.spec import NEWTON_MAX_PARAMETERS, JobSpec, warnings
from tests.core.builders import merge, spec_dict


def errors_of(spec: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize("module", ["core.spec", "core", "core.uploads", "core.resources"])
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


# ------------------------------------------------------------------ uploads and backbones

CSV_META = {
    "format": "csv",
    "target": "label",
    "columns": ["a", "b", "c"],
    "task": "classification",
    "tasks": ["classification", "regression"],
    "n_samples": 200,
    "n_features": 3,
    "num_classes": 2,
    "class_names": ["0", "1"],
    "image_shape": None,
    "pixel_max": None,
}
IMAGES_META = {
    **CSV_META,
    "format": "imagefolder",
    "target": None,
    "tasks": ["classification"],
    "n_features": 3 * 16 * 16,
    "image_shape": [3, 16, 16],
    "pixel_max": 255.0,
}
WEIGHTS_META = {"format": "safetensors", "arch": "resnet18", "tensors": 122, "head_classes": 1000}
UPLOADS = {"tab": CSV_META, "img": IMAGES_META, "w": WEIGHTS_META}


def errors_in(spec: dict, **context: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec, context=context)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


def test_an_upload_is_checked_against_its_metadata_when_given() -> None:
    spec = {"dataset": {"source": "upload", "id": "tab"}}
    checked = JobSpec.model_validate(spec, context={"uploads": UPLOADS})
    # Filled in from the upload: the stored spec names its format, target and task.
    assert (checked.dataset.format, checked.dataset.target, checked.task) == (
        "csv",
        "label",
        "classification",
    )
    assert checked.parameter_count() == 3 * 64 + 64 + 64 * 2 + 2
    again = JobSpec.model_validate(checked.model_dump(mode="json"))
    assert again.spec_hash() == checked.spec_hash()
    # Without the metadata (the worker, a notebook) the checks wait for the file.
    unchecked = JobSpec.model_validate(spec)
    assert unchecked.task is None and unchecked.dataset.known_info() is None
    with pytest.raises(ValueError, match="metadata of upload 'tab' is not known here"):
        unchecked.parameter_count()
    regression = {"task": "regression", "dataset": {"source": "upload", "id": "tab"}}
    assert JobSpec.model_validate(regression, context={"uploads": UPLOADS}).task == "regression"
    images = {
        "dataset": {"source": "upload", "id": "img"},
        "backbone": {"arch": "resnet18", "weights": "upload:w", "freeze": True},
    }
    checked = JobSpec.model_validate(images, context={"uploads": UPLOADS})
    assert checked.parameter_counts() == {"trainable": 512 * 2 + 2, "frozen": 11_176_512}


@pytest.mark.parametrize(
    ("patch", "loc", "fragment"),
    [
        ({"dataset": {"id": "nope"}}, ("dataset", "id"), "there is no dataset upload 'nope'"),
        ({"dataset": {"format": "npz"}}, ("dataset", "format"), "is a csv dataset, not npz"),
        ({"dataset": {"target": "b"}}, ("dataset", "target"), "checked with target column"),
        ({"dataset": {"target": "zz"}}, ("dataset", "target"), "has no column 'zz'"),
        ({"dataset": {"name": "iris"}}, ("dataset", "name"), "named by its id"),
        ({"model": {"arch": "cnn"}}, ("model", "arch"), "dataset upload 'tab' is tabular"),
        ({"task": "segmentation"}, ("task",), "a mask each"),
        ({"dataset": {"train_size": 190}}, ("dataset", "train_size"), "at most 158"),
        ({"backbone": {"arch": "resnet18"}}, ("backbone", "torchvision", "arch"), "needs images"),
        ({"augmentation": [{"hflip": 0.5}]}, ("augmentation",), "is tabular"),
        ({"dataset": {"id": "w"}}, ("dataset", "id"), "upload 'w' holds weights, not a dataset"),
        (
            {"dataset": {"id": "img"}, "backbone": {"arch": "resnet34", "weights": "upload:w"}},
            ("backbone", "torchvision", "weights"),
            "holds resnet18 weights, not resnet34",
        ),
        (
            {"dataset": {"id": "img"}, "backbone": {"arch": "resnet18", "weights": "upload:tab"}},
            ("backbone", "torchvision", "weights"),
            "upload 'tab' is a dataset, not weights",
        ),
        (
            {"dataset": {"id": "img"}, "backbone": {"arch": "resnet18", "weights": "upload:x"}},
            ("backbone", "torchvision", "weights"),
            "there is no weights upload 'x'",
        ),
    ],
)
def test_upload_specs_that_do_not_fit_name_the_field(
    patch: dict, loc: tuple, fragment: str
) -> None:
    spec = merge({"dataset": {"source": "upload", "id": "tab"}}, patch)
    errors = errors_in(spec, uploads=UPLOADS)
    assert any(e_loc == loc and fragment in msg for e_loc, msg in errors), errors


def test_builtin_and_upload_fields_do_not_mix() -> None:
    assert ("dataset", "id") in [
        loc for loc, _ in errors_of({"dataset": {"name": "iris", "id": "x"}})
    ]
    assert ("dataset", "name") in [loc for loc, _ in errors_of({"dataset": {"source": "builtin"}})]
    assert ("dataset", "id") in [loc for loc, _ in errors_of({"dataset": {"source": "upload"}})]


AUTOENCODER = {
    "task": "reconstruction",
    "dataset": {"name": "digits"},
    "model": {"hidden": [32, 16]},
}


def jobs(status: str = "succeeded", spec: dict | None = None) -> dict:
    return {"ae": {"status": status, "spec": spec or AUTOENCODER}}


def test_a_backbone_job_is_checked_when_given() -> None:
    spec = {"dataset": {"name": "digits"}, "backbone": {"from_job": "ae", "freeze": True}}
    checked = JobSpec.model_validate(spec, context={"jobs": jobs()})
    assert checked.model.hidden == []  # the head: one linear layer unless told otherwise
    encoder = 64 * 32 + 32 + 32 * 16 + 16
    assert checked.parameter_counts() == {"trainable": 16 * 10 + 10, "frozen": encoder}
    assert checked.source is not None and checked.source.task == "reconstruction"
    # Without the jobs, the spec is valid; the worker checks the fit when it loads them.
    assert JobSpec.model_validate(spec).source is None


@pytest.mark.parametrize(
    ("context", "spec", "fragment"),
    [
        ({"jobs": {}}, {}, "there is no job 'ae'"),
        ({"jobs": jobs("running")}, {}, "job 'ae' is running: a backbone is the best checkpoint"),
        ({"jobs": jobs("failed")}, {}, "that finished"),
        ({"jobs": jobs()}, {"dataset": {"name": "wine"}}, "takes 64 inputs; dataset 'wine' has 13"),
        (
            {"jobs": jobs(spec={**AUTOENCODER, "model": {"hidden": []}})},
            {},
            "has no hidden layers",
        ),
        (
            {"jobs": jobs(spec={"dataset": {"name": "digits"}, "backbone": {"from_job": "x"}})},
            {},
            "take the encoder of that job ('x') instead",
        ),
        (
            {"jobs": jobs(spec={**AUTOENCODER, "model": {"arch": "cnn", "channels": [4]}})},
            {"dataset": {"name": "shapes"}},
            "takes 1-channel images; dataset 'shapes' has 3 channels",
        ),
        ({"jobs": jobs()}, {"dataset": {"name": "shapes"}}, "segmentation needs a convolutional"),
    ],
)
def test_backbone_jobs_that_do_not_fit_are_refused(
    context: dict, spec: dict, fragment: str
) -> None:
    body = merge({"dataset": {"name": "digits"}, "backbone": {"from_job": "ae"}}, spec)
    errors = errors_in(body, **context)
    assert any(loc == ("backbone", "job", "from_job") and fragment in msg for loc, msg in errors), (
        errors
    )


@pytest.mark.parametrize(
    ("backbone", "patch", "loc", "fragment"),
    [
        ({"unfreeze_at_epoch": 3}, {}, ("unfreeze_at_epoch",), "set freeze: true"),
        ({"freeze": True, "lr_scale": 0.1}, {}, ("lr_scale",), "never trains"),
        ({"lr_scale": 0}, {}, ("lr_scale",), "greater than 0"),
        ({"lr_scale": 2}, {}, ("lr_scale",), "less than or equal to 1"),
        ({"freeze": True, "unfreeze_at_epoch": 30}, {}, ("unfreeze_at_epoch",), "after the last"),
        ({"weights": "imagenet"}, {}, ("weights",), "none, default or upload:<weights id>"),
        ({"arch": "vgg16"}, {}, ("arch",), "'resnet18'"),
        ({}, {"model": {"arch": "cnn"}}, ("model", "arch"), "model describes the head"),
        ({}, {"task": "reconstruction"}, ("backbone",), "trains its own encoder"),
        ({"input_size": 16}, {}, ("input_size",), "greater than or equal to 32"),
        (
            {"lr_scale": 0.1},
            {"optimizer": {"name": "lbfgs"}, "training": {"full_batch": True}},
            ("optimizer", "name"),
            "L-BFGS has one learning rate",
        ),
        (
            {},
            {"optimizer": {"name": "newton"}, "training": {"full_batch": True}},
            ("optimizer", "name"),
            "without a backbone",
        ),
    ],
)
def test_backbone_settings_are_checked(
    backbone: dict, patch: dict, loc: tuple, fragment: str
) -> None:
    spec = merge(
        {"dataset": {"name": "digits"}, "backbone": {"arch": "resnet18", **backbone}},
        patch,
    )
    errors = errors_of(spec)
    # Fields of the backbone are located under its kind: backbone.torchvision.lr_scale.
    assert any(e_loc[-len(loc) :] == loc and fragment in msg for e_loc, msg in errors), errors


def test_new_tasks_default_sensibly() -> None:
    shapes = JobSpec.model_validate({"dataset": {"name": "shapes"}})
    assert shapes.task == "segmentation" and shapes.model.arch == "cnn"
    assert (shapes.dataset.n_samples, shapes.dataset.image_size) == (200, 32)
    assert JobSpec.model_validate(shapes.model_dump(mode="json")).spec_hash() == shapes.spec_hash()
    [(loc, msg)] = errors_of({"dataset": {"name": "shapes"}, "model": {"arch": "mlp"}})
    assert loc == ("model", "arch") and "segmentation needs arch cnn or a backbone" in msg
    [(loc, msg)] = errors_of({"task": "segmentation", "dataset": {"name": "digits"}})
    assert loc == ("task",) and "a mask each" in msg
    # Any dataset can be reconstructed (an autoencoder ignores the labels).
    assert JobSpec.model_validate({"task": "reconstruction", "dataset": {"name": "wine"}})
    [(loc, msg)] = errors_of(
        {
            "task": "reconstruction",
            "dataset": {"name": "wine"},
            "early_stopping": {"monitor": "val_accuracy"},
        }
    )
    assert loc == ("early_stopping", "monitor")
    tv = JobSpec.model_validate({"dataset": {"name": "digits"}, "backbone": {"arch": "resnet18"}})
    assert tv.backbone is not None and tv.backbone.weights == "default"
    assert tv.model.hidden == [] and tv.parameter_count() == 11_176_512 + 512 * 10 + 10
    assert any(
        "random weights" in w
        for w in warnings(
            JobSpec.model_validate(
                {
                    "dataset": {"name": "digits"},
                    "backbone": {"arch": "resnet18", "weights": "none", "freeze": True},
                }
            )
        )
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"task": "reconstruction", "dataset": {"name": "digits"}, "model": {"hidden": [32, 8]}},
        {
            "task": "reconstruction",
            "dataset": {"name": "wine"},
            "model": {"hidden": [4], "norm": "layer"},
        },
        {
            "task": "reconstruction",
            "dataset": {"name": "digits"},
            "model": {"arch": "cnn", "channels": [4, 8]},
        },
        {
            "dataset": {"name": "shapes", "image_size": 20},
            "model": {"channels": [4, 8, 8], "norm": "batch"},
        },
        {
            "dataset": {"name": "digits"},
            "backbone": {"arch": "efficientnet_b0"},
            "model": {"hidden": [32], "norm": "batch"},
        },
        {
            "dataset": {"name": "shapes"},
            "backbone": {"arch": "convnext_tiny"},
            "model": {"channels": [8]},
        },
    ],
)
def test_parameter_counts_of_the_new_layouts_match_the_built_models(spec: dict) -> None:
    checked = JobSpec.model_validate(spec)
    with torch.device("meta"):
        built = build_model(checked)
    assert checked.parameter_count() == sum(p.numel() for p in built.parameters())
    info = checked.dataset.info()
    assert info.image_shape is not None or checked.model.arch == "mlp"
    shape = (
        (2, *info.image_shape)
        if checked.model.arch == "cnn" or checked.backbone
        else (2, info.n_features)
    )
    out = built(torch.zeros(shape, device="meta"))
    if checked.task == "reconstruction":
        assert out.shape == shape
    elif checked.task == "segmentation":
        assert out.shape == (2, 3, *shape[2:])
    else:
        assert out.shape == (2, 10)
