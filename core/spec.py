"""The job spec: the one configuration object of a training job.

This module must not import torch: the API validates specs with it and has to start fast.
Everything a spec needs to be judged valid (input shapes, class counts, parameter counts)
is computed here from static tables and arithmetic, so an invalid spec is refused at submit
time with a message naming the field, never at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# reconstruction: an autoencoder (input → encoder → decoder → input, MSE); segmentation: a
# class per pixel (per-pixel cross-entropy) on an image + mask dataset.
Task = Literal["classification", "regression", "reconstruction", "segmentation"]
DatasetName = Literal["digits", "iris", "wine", "breast_cancer", "moons", "regression", "shapes"]
UploadFormat = Literal["csv", "npz", "imagefolder"]
TorchvisionArch = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
]
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]
Init = Literal[
    "default",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "normal",
    "constant",
]
OptimizerName = Literal["sgd", "rmsprop", "adam", "adamw", "newton", "lbfgs"]
Monitor = Literal["val_loss", "val_accuracy", "train_loss", "train_accuracy"]
Mode = Literal["min", "max"]

# Newton's method builds the full P x P Hessian: above this it is too slow and too large.
NEWTON_MAX_PARAMETERS = 5_000
# Max pooling halves the images per conv block: three blocks take 8x8 digits to 1x1, five
# take 32x32 images there.
CNN_MAX_BLOCKS = 5
# Below this batch size batch statistics are noisy (notes 4.8.4): the job gets a warning.
BATCH_NORM_MIN_BATCH = 16

# Every number of a spec is bounded by what the code that reads it accepts, so that a spec
# that validates also runs: a bad value is refused at submit, never halfway through training.
Width = Annotated[int, Field(ge=1, le=16_384)]  # a layer's units or channels
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# random.seed, numpy and scikit-learn (random_state) and torch.manual_seed all take these.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
MAX_EPOCHS = 10_000
MAX_PROCESSES = 64  # ranks of one job (training.processes)
Epochs = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]  # a count of epochs (patience, periods)
LearningRate = Annotated[float, Field(gt=0.0, le=100.0)]
# Generated datasets (moons, regression, shapes): at most this many input values (rows ×
# features), about 400 MB as float32; scikit-learn generates them in float64 first.
GENERATED_MAX_VALUES = 50_000_000


class _Strict(BaseModel):
    # JSON has no NaN or infinity, and no float field means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetInfo:
    """What the core needs to know about a dataset before loading it."""

    task: Task  # what its targets are: classification, regression or segmentation (masks)
    n_samples: int
    n_features: int  # flattened input size
    num_classes: int  # 0 for regression; mask classes (background included) for segmentation
    image_shape: tuple[int, int, int] | None  # (C, H, W) for image datasets
    class_names: tuple[str, ...] | None = None
    # The largest value of the images' pixel format (16 for digits, 255 for 8-bit images, 1.0
    # for images already in [0, 1]): pretrained backbones divide by it to see [0, 1] pixels.
    pixel_max: float | None = None
    # The tasks its targets also support besides `task` (an integer CSV column is classes or
    # a number); every dataset supports reconstruction, which ignores the targets.
    also: tuple[Task, ...] = ()

    @property
    def output_size(self) -> int:
        return self.num_classes if self.task == "classification" else 1

    def supports(self, task: str) -> bool:
        return task in (self.task, "reconstruction", *self.also)

    def outputs_for(self, task: str) -> int:
        """The model's output size for a task on this dataset (per pixel for segmentation)."""
        if task in ("classification", "segmentation"):
            return self.num_classes
        if task == "reconstruction":
            return self.n_features
        return 1

    def to_meta(self) -> dict[str, Any]:
        """As JSON-ready metadata (the shape of core.uploads.inspect_dataset's answer)."""
        return {
            "task": self.task,
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "pixel_max": self.pixel_max,
            "tasks": [self.task, *self.also],
        }

    @classmethod
    def from_upload(cls, meta: dict[str, Any]) -> DatasetInfo:
        """From an upload's metadata (core.uploads.inspect_dataset's answer, as stored)."""
        try:
            task = meta["task"]
            shape = meta.get("image_shape")
            names = meta.get("class_names")
            return cls(
                task=task,
                n_samples=int(meta["n_samples"]),
                n_features=int(meta["n_features"]),
                num_classes=int(meta.get("num_classes") or 0),
                image_shape=tuple(int(d) for d in shape) if shape else None,  # type: ignore[arg-type]
                class_names=tuple(str(n) for n in names) if names is not None else None,
                pixel_max=float(meta["pixel_max"]) if meta.get("pixel_max") else None,
                also=tuple(t for t in meta.get("tasks", ()) if t != task),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a dataset's upload metadata: {exc!r}") from None


SHAPES_CLASSES = ("background", "square", "circle")

# Generated datasets (moons, regression, shapes) take their size from the spec; the rest are
# fixed.
_BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", 1797, 64, 10, (1, 8, 8), pixel_max=16.0),
    "iris": DatasetInfo("classification", 150, 4, 3, None),
    "wine": DatasetInfo("classification", 178, 13, 3, None),
    "breast_cancer": DatasetInfo("classification", 569, 30, 2, None),
}
_GENERATED_DEFAULTS: dict[str, dict[str, Any]] = {
    "moons": {"n_samples": 500, "noise": 0.2},
    "regression": {"n_samples": 500, "noise": 10.0, "n_features": 10},
    # Squares and circles on a background (3-channel images, a class per pixel).
    "shapes": {"n_samples": 200, "noise": 0.05, "image_size": 32},
}
_UPLOAD_ONLY = ("id", "format", "target")


class DatasetSpec(_Strict):
    """A built-in dataset (`name`) or an uploaded one (`source: upload`, `id`).

    An upload's format (and a CSV's target column) come from the upload when the spec is
    validated with the uploads' metadata in the validation context (see JobSpec); written
    here they must agree with it.
    """

    source: Literal["builtin", "upload"] = "builtin"
    name: DatasetName | None = None
    id: str | None = Field(None, min_length=1, max_length=100)  # the upload's id
    format: UploadFormat | None = None
    target: str | None = Field(None, min_length=1, max_length=200)  # a CSV's target column
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: Seed = 0
    # Only for the generated datasets (moons, regression, shapes); filled with their defaults.
    n_samples: int | None = Field(None, ge=20, le=200_000)
    noise: float | None = Field(None, ge=0.0, le=1_000.0)
    n_features: int | None = Field(None, ge=1, le=1_000)
    image_size: int | None = Field(None, ge=8, le=256)
    # Train on this many rows of the training split only (a stratified subset drawn with the
    # seed: a small labelled set); the validation split stays whole.
    train_size: int | None = Field(None, ge=2, le=100_000_000)

    # An upload's metadata, from the validation context: not part of the spec.
    _upload_info: DatasetInfo | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _source_fields(self, context: ValidationInfo) -> DatasetSpec:
        errors = []
        if self.source == "builtin":
            if self.name is None:
                errors.append(_error(("name",), "a builtin dataset needs a name", None))
            for field in _UPLOAD_ONLY:
                if getattr(self, field) is not None:
                    message = f"{field} is for uploaded datasets (source: upload)"
                    errors.append(_error((field,), message, getattr(self, field)))
        else:
            if self.id is None:
                errors.append(_error(("id",), "an uploaded dataset needs the upload's id", None))
            if self.name is not None:
                message = "name is for builtin datasets; an upload is named by its id"
                errors.append(_error(("name",), message, self.name))
            if self.target is not None and self.format not in (None, "csv"):
                message = f"target names a CSV column; a {self.format} upload holds its own"
                errors.append(_error(("target",), message, self.target))
        defaults = _GENERATED_DEFAULTS.get(self.name or "")
        for field in ("n_samples", "noise", "n_features", "image_size"):
            applies = defaults is not None and field in defaults
            if not applies and getattr(self, field) is not None:
                errors.append(
                    _error(
                        (field,),
                        f"{field} does not apply to dataset {self.name or 'uploads'!r}",
                        getattr(self, field),
                    )
                )
            elif applies and getattr(self, field) is None:
                setattr(self, field, defaults[field])  # type: ignore[index]
        if defaults is not None and not errors:
            info = self.known_info()
            assert info is not None
            if info.n_samples * info.n_features > GENERATED_MAX_VALUES:
                errors.append(
                    _error(
                        ("n_samples",),
                        f"{info.n_samples:,} samples of {info.n_features:,} values each are "
                        f"more than the {GENERATED_MAX_VALUES:,} values a generated dataset "
                        "may hold: use fewer samples"
                        + (" or features" if self.name == "regression" else "")
                        + (" or a smaller image_size" if self.name == "shapes" else ""),
                        self.n_samples,
                    )
                )
        _raise(errors)
        uploads = (context.context or {}).get("uploads") if context else None
        if self.source == "upload" and uploads is not None:
            self._from_upload(uploads)
        return self

    def _from_upload(self, uploads: dict[str, Any]) -> None:
        meta = uploads.get(self.id or "")
        if meta is None:
            _raise([_error(("id",), f"there is no dataset upload {self.id!r}", self.id)])
        assert meta is not None
        if "arch" in meta:
            _raise([_error(("id",), f"upload {self.id!r} holds weights, not a dataset", self.id)])
        errors = []
        stored_format, stored_target = meta.get("format"), meta.get("target")
        if self.format is not None and stored_format and self.format != stored_format:
            message = f"upload {self.id!r} is a {stored_format} dataset, not {self.format}"
            errors.append(_error(("format",), message, self.format))
        if self.target is not None and stored_target and self.target != stored_target:
            columns = meta.get("columns") or []
            if columns and self.target not in columns:
                message = f"upload {self.id!r} has no column {self.target!r}"
            else:
                message = (
                    f"upload {self.id!r} was checked with target column {stored_target!r}; "
                    f"upload it again to use {self.target!r}"
                )
            errors.append(_error(("target",), message, self.target))
        _raise(errors)
        try:
            self._upload_info = DatasetInfo.from_upload(meta)
        except ValueError as exc:
            _raise([_error(("id",), f"upload {self.id!r}: {exc}", self.id)])
        self.format = self.format or stored_format
        self.target = self.target or stored_target

    @property
    def label(self) -> str:
        """How messages name the dataset."""
        return repr(self.name) if self.source == "builtin" else f"upload {self.id!r}"

    def known_info(self) -> DatasetInfo | None:
        """The dataset's info, or None for an upload whose metadata was not given."""
        if self.source == "upload":
            return self._upload_info
        if self.name in _BUILTIN:
            return _BUILTIN[self.name]
        if self.name == "moons":
            return DatasetInfo("classification", self.n_samples or 0, 2, 2, None)
        if self.name == "shapes":
            size = self.image_size or 0
            return DatasetInfo(
                "segmentation",
                self.n_samples or 0,
                3 * size * size,
                len(SHAPES_CLASSES),
                (3, size, size),
                class_names=SHAPES_CLASSES,
                pixel_max=1.0,
            )
        return DatasetInfo("regression", self.n_samples or 0, self.n_features or 0, 0, None)

    def info(self) -> DatasetInfo:
        info = self.known_info()
        if info is None:
            raise ValueError(
                f"the metadata of upload {self.id!r} is not known here: validate the spec with "
                "context={'uploads': {id: metadata}}, or load the file (core.data.load_data)"
            )
        return info

    def split_sizes(self, info: DatasetInfo | None = None) -> tuple[int, int]:
        """(train, val) sizes exactly as sklearn's train_test_split rounds them (train after
        train_size)."""
        n = (info or self.info()).n_samples
        n_val = math.ceil(self.val_fraction * n)
        n_train = n - n_val
        return min(n_train, self.train_size or n_train), n_val


# --------------------------------------------------------------------------- model


class ModelSpec(_Strict):
    arch: Literal["mlp", "cnn"] = "mlp"
    # MLP: the hidden layers' widths ([] is a linear model); CNN: the conv blocks' channels.
    hidden: list[Width] = Field(default_factory=lambda: [64], max_length=16)
    channels: list[Width] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=CNN_MAX_BLOCKS
    )
    activation: Activation = "relu"
    dropout: Fraction = 0.0
    norm: Literal["none", "batch", "layer"] = "none"
    init: Init = "default"
    init_value: float = Field(0.01, ge=-10.0, le=10.0)  # for init: constant
    init_std: float = Field(0.01, gt=0.0, le=10.0)  # for init: normal, w ~ N(0, init_std²)
    # With training.processes > 1: batch norm's statistics over the whole global batch
    # (torch.nn.SyncBatchNorm) instead of each rank's share of it.
    sync_batch_norm: bool = False

    @field_validator("init", mode="before")
    @classmethod
    def _init_alias(cls, value: Any) -> Any:
        # The design sketch writes `init: kaiming`; accept the family name for the normal variant.
        if not isinstance(value, str):
            return value  # the Literal then refuses it, naming the field
        return {
            "xavier": "xavier_normal",
            "glorot": "xavier_normal",
            "kaiming": "kaiming_normal",
            "he": "kaiming_normal",
        }.get(value, value)


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class TorchvisionBody:
    """A torchvision model cut before its classifier's last linear layer (the head that a
    job replaces): counted here so that the spec can size a model without torch."""

    width: int  # features the cut model gives per image (into the replaced linear layer)
    parameters: int  # of the cut model
    channels: int  # of its convolutional feature map (what segmentation decodes)
    feature_parameters: int  # of the convolutional part alone
    head_keys: tuple[str, ...]  # the replaced layer's state-dict keys


# Checked against torchvision by tests/core/test_backbones.py.
TORCHVISION_BODIES: dict[str, TorchvisionBody] = {
    "resnet18": TorchvisionBody(512, 11_176_512, 512, 11_176_512, ("fc.weight", "fc.bias")),
    "resnet34": TorchvisionBody(512, 21_284_672, 512, 21_284_672, ("fc.weight", "fc.bias")),
    "resnet50": TorchvisionBody(2048, 23_508_032, 2048, 23_508_032, ("fc.weight", "fc.bias")),
    "mobilenet_v3_small": TorchvisionBody(
        1024, 1_517_856, 576, 927_008, ("classifier.3.weight", "classifier.3.bias")
    ),
    "mobilenet_v3_large": TorchvisionBody(
        1280, 4_202_032, 960, 2_971_952, ("classifier.3.weight", "classifier.3.bias")
    ),
    "efficientnet_b0": TorchvisionBody(
        1280, 4_007_548, 1280, 4_007_548, ("classifier.1.weight", "classifier.1.bias")
    ),
    "convnext_tiny": TorchvisionBody(
        768, 27_820_128, 768, 27_818_592, ("classifier.2.weight", "classifier.2.bias")
    ),
}
# Pretrained torchvision models see 3-channel images in [0, 1], normalized with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Adaptation(_Strict):
    """How a pretrained backbone adapts to the new task (notes 4.9): freeze it so only the
    head trains, and/or train it with a smaller learning rate than the head."""

    # Only the head trains; the backbone's batch-norm statistics stay as they were.
    freeze: bool = False
    # The backbone trains with lr × lr_scale (its own optimizer parameter group).
    lr_scale: float | None = Field(None, gt=0.0, le=1.0)
    # Gradual unfreezing: a frozen backbone joins training at the start of this epoch.
    unfreeze_at_epoch: int | None = Field(None, ge=2, le=MAX_EPOCHS)

    @model_validator(mode="after")
    def _consistent(self) -> _Adaptation:
        errors = []
        if self.unfreeze_at_epoch is not None and not self.freeze:
            message = "unfreeze_at_epoch unfreezes a frozen backbone: set freeze: true"
            errors.append(_error(("unfreeze_at_epoch",), message, self.unfreeze_at_epoch))
        if self.freeze and self.lr_scale is not None and self.unfreeze_at_epoch is None:
            message = (
                "a frozen backbone never trains, so lr_scale would not apply: "
                "set unfreeze_at_epoch, or freeze: false"
            )
            errors.append(_error(("lr_scale",), message, self.lr_scale))
        _raise(errors)
        return self


class JobBackbone(_Adaptation):
    """The encoder of a finished job of the same owner, from its best checkpoint: an
    autoencoder's encoder (task reconstruction), or generally a job's layers up to its head."""

    from_job: str = Field(min_length=1, max_length=100)
    part: Literal["encoder"] = "encoder"  # everything up to the head


class TorchvisionBackbone(_Adaptation):
    """A torchvision model with its classifier replaced by a head for the task.

    weights: "default" (torchvision's named weights, from the TORCH_HOME cache or
    downloaded), "upload:<weights id>" (an uploaded state dict), or "none" (random).
    Inputs are resized to input_size and normalized as the pretrained model expects
    (224 is what ImageNet models were trained at; smaller is faster).
    """

    arch: TorchvisionArch
    weights: str = "default"
    input_size: int = Field(64, ge=32, le=1024)

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        if value in ("none", "default") or (value.startswith("upload:") and len(value) > 7):
            return value
        raise PydanticCustomError(
            "invalid_spec", "weights is none, default or upload:<weights id>", {}
        )

    @property
    def upload_id(self) -> str | None:
        return self.weights.removeprefix("upload:") if self.weights.startswith("upload:") else None


def _backbone_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "job" if "from_job" in value else "torchvision"
    return "job" if isinstance(value, JobBackbone) else "torchvision"


BackboneSpec = Annotated[
    Annotated[JobBackbone, Tag("job")] | Annotated[TorchvisionBackbone, Tag("torchvision")],
    Discriminator(_backbone_kind),
]


# --------------------------------------------------------------------------- model layout
#
# Every model is input → body → head. The body is what a later job can take as its backbone
# (the encoder): an MLP's or CNN's hidden blocks, or a cut torchvision model. The head is
# what the task needs on top: a linear layer (or, with a backbone, an MLP of model.hidden)
# for classification and regression, a decoder back to the input for reconstruction, a
# small convolutional decoder to a class per pixel for segmentation. The counts below are
# those of core.models' modules, so a spec is sized without building it.


@dataclass(frozen=True)
class BodyShape:
    flat: int  # features per sample, flattened
    channels: int  # of the feature map (0 for a flat body)
    parameters: int


def _norm_parameters(model: ModelSpec) -> int:
    return 0 if model.norm == "none" else 2  # weight and bias per feature/channel


def _mlp_blocks(model: ModelSpec, width: int, widths: list[int]) -> tuple[int, int]:
    total = 0
    for h in widths:
        total += width * h + h + _norm_parameters(model) * h
        width = h
    return total, width


def decoder_widths(model: ModelSpec) -> list[int]:
    """A convolutional decoder's widths: the CNN's channels, mirrored."""
    return list(reversed(model.channels))


def _conv_decoder(widths: list[int], c_in: int, c_out: int) -> int:
    total = 0
    for w in widths:  # upsample x2, 3x3 convolution
        total += c_in * w * 9 + w
        c_in = w
    return total + c_in * c_out + c_out  # 1x1 convolution to the outputs


def body_shape(
    model: ModelSpec,
    backbone: TorchvisionBackbone | None,
    info: DatasetInfo,
    task: str,
) -> BodyShape:
    """The body that `model` (or a torchvision backbone) makes on this dataset."""
    if backbone is not None:
        tv = TORCHVISION_BODIES[backbone.arch]
        if task == "segmentation":
            return BodyShape(0, tv.channels, tv.feature_parameters)
        return BodyShape(tv.width, 0, tv.parameters)
    if model.arch == "mlp":
        total, width = _mlp_blocks(model, info.n_features, model.hidden)
        return BodyShape(width, 0, total)
    assert info.image_shape is not None
    c_in, h, w = info.image_shape
    total = 0
    for c in model.channels:
        total += c_in * c * 9 + c + _norm_parameters(model) * c  # 3x3 convolution
        c_in, h, w = c, h // 2, w // 2
    return BodyShape(c_in * h * w, c_in, total)


def head_parameters(
    model: ModelSpec, body: BodyShape, info: DatasetInfo, task: str, *, backbone: bool
) -> int:
    out = info.outputs_for(task)
    if task == "segmentation":
        return _conv_decoder(decoder_widths(model), body.channels, out)
    if task == "reconstruction":
        if model.arch == "cnn":
            assert info.image_shape is not None
            return _conv_decoder(decoder_widths(model), body.channels, info.image_shape[0])
        total, width = _mlp_blocks(model, body.flat, list(reversed(model.hidden[:-1])))
        return total + width * out + out
    total, width = _mlp_blocks(model, body.flat, model.hidden if backbone else [])
    return total + width * out + out


def parameter_count(model: ModelSpec, dataset: DatasetInfo, task: str | None = None) -> int:
    """Parameters of the model core.models builds without a backbone, counted without it."""
    task = task or dataset.task
    body = body_shape(model, None, dataset, task)
    return body.parameters + head_parameters(model, body, dataset, task, backbone=False)


# --------------------------------------------------------------------------- optimizer

# Which optimizer-specific fields each optimizer reads, with its defaults. A field set for
# an optimizer that would ignore it is refused rather than silently dropped.
_OPTIMIZER_FIELDS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "nesterov": False, "maximize": False},
    "rmsprop": {"lr": 0.001, "alpha": 0.99, "eps": 1e-8, "maximize": False},
    "adam": {
        "lr": 0.001,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "bias_correction": True,
        "maximize": False,
    },
    "adamw": {
        "lr": 0.001,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "bias_correction": True,
        "maximize": False,
    },
    "newton": {"lr": 1.0, "damping": 0.0},
    "lbfgs": {"lr": 1.0, "history_size": 10, "line_search": "strong_wolfe", "max_iter": 20},
}


class OptimizerSpec(_Strict):
    """Optimizer settings; fields left out take the chosen optimizer's defaults.

    lr is the step size η of every optimizer (for Newton, θ ← θ − η (H + λI)⁻¹∇L, so 1.0 is
    the plain Newton step).
    """

    name: OptimizerName = "adam"
    lr: LearningRate | None = None
    momentum: Fraction | None = None  # SGD's γ in m ← γm + η∇L
    nesterov: bool | None = None
    alpha: Fraction | None = None  # RMSprop's γ in v ← γv + (1−γ)∇L²
    betas: tuple[Fraction, Fraction] | None = None
    eps: float | None = Field(None, gt=0.0, le=1.0)
    bias_correction: bool | None = None
    maximize: bool | None = None
    damping: float | None = Field(None, ge=0.0, le=1e6)  # Newton: H + λI
    history_size: int | None = Field(None, ge=1, le=1_000)
    line_search: Literal["strong_wolfe", "none"] | None = None
    max_iter: int | None = Field(None, ge=1, le=1_000)  # L-BFGS iterations per epoch

    @model_validator(mode="after")
    def _fill_defaults(self) -> OptimizerSpec:
        applicable = _OPTIMIZER_FIELDS[self.name]
        errors = []
        for field in type(self).model_fields:
            if field == "name":
                continue
            value = getattr(self, field)
            if field not in applicable:
                if value is not None:
                    users = sorted(k for k, v in _OPTIMIZER_FIELDS.items() if field in v)
                    errors.append(
                        _error(
                            (field,),
                            f"{field} does not apply to {self.name} (only to {', '.join(users)})",
                            value,
                        )
                    )
            elif value is None:
                setattr(self, field, applicable[field])
        if self.nesterov and self.momentum == 0:
            errors.append(_error(("nesterov",), "Nesterov momentum needs momentum > 0", True))
        _raise(errors)
        return self


# --------------------------------------------------------------------------- regularization


class RegularizationSpec(_Strict):
    """Penalties and decay apply to weight matrices and kernels only, not to biases or norm scales.

    l1 and l2 are terms of the loss (a second objective): l1 adds l1·Σ|w|, which drives weights
    to (nearly) zero; l2 adds (l2/2)·Σw², gradient l2·w, which shrinks them all. weight_decay is
    part of the optimizer instead: SGD adds weight_decay·w to the gradient, the same step as l2;
    the adaptive optimizers (RMSprop, Adam, AdamW) shrink w ← w − η·weight_decay·w outside their
    adaptive scaling (decoupled), so there it is not the same as l2, whose gradient is divided
    by √v like any other. Gradient clipping is here as a guard against exploding gradients.
    """

    l1: float = Field(0.0, ge=0.0, le=100.0)
    l2: float = Field(0.0, ge=0.0, le=100.0)
    weight_decay: float = Field(0.0, ge=0.0, le=100.0)
    grad_clip_norm: float | None = Field(None, gt=0.0, le=1e6)
    grad_clip_value: float | None = Field(None, gt=0.0, le=1e6)


# --------------------------------------------------------------------------- augmentation

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class HFlip(_Strict):
    """Mirror left-right with probability p."""

    op: Literal["hflip"]
    p: Probability = 0.5


class VFlip(_Strict):
    """Mirror top-bottom with probability p."""

    op: Literal["vflip"]
    p: Probability = 0.5


class Rotate(_Strict):
    """Rotate about the centre by an angle drawn uniformly from [−degrees, degrees]."""

    op: Literal["rotate"]
    degrees: float = Field(gt=0.0, le=180.0)
    p: Probability = 1.0


class Crop(_Strict):
    """Random crop with padding: pad every side by `padding` pixels, crop back to the image
    size at a random offset (a whole-pixel shift of up to `padding` in each direction)."""

    op: Literal["crop"]
    padding: int = Field(ge=1, le=1_024)
    p: Probability = 1.0


class Translate(_Strict):
    """Shift by whole pixels, up to fraction × width horizontally and × height vertically."""

    op: Literal["translate"]
    fraction: float = Field(gt=0.0, le=0.5)
    p: Probability = 1.0


class Scale(_Strict):
    """Zoom about the centre by a factor drawn uniformly from [min, max]."""

    op: Literal["scale"]
    min: float = Field(0.9, gt=0.0, le=4.0)
    max: float = Field(1.1, gt=0.0, le=4.0)
    p: Probability = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.min > self.max:
            _raise([_error(("min",), "min must not exceed max", self.min)])
        return self


class ColorJitter(_Strict):
    """Per image: brightness × U[1−b, 1+b]; contrast blends with the image's mean grey by
    U[1−c, 1+c]; saturation blends with the pixel's grey by U[1−s, 1+s]; hue turns the
    chroma by U[−h, h] of a full turn. Saturation and hue need colour (3-channel) images."""

    op: Literal["color_jitter"]
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)
    saturation: float = Field(0.0, ge=0.0, le=1.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)
    p: Probability = 1.0

    @model_validator(mode="after")
    def _something(self) -> ColorJitter:
        if not (self.brightness or self.contrast or self.saturation or self.hue):
            message = "set at least one of brightness, contrast, saturation, hue"
            _raise([_error(("brightness",), message, 0.0)])
        return self


class Cutout(_Strict):
    """Erase a size × size square at a random centre (clipped at the border) to the mean
    image, i.e. to 0 in standardized units, as random erasing does."""

    op: Literal["cutout"]
    size: int = Field(ge=1, le=4_096)
    p: Probability = 1.0


AugmentationOp = Annotated[
    HFlip | VFlip | Rotate | Crop | Translate | Scale | ColorJitter | Cutout,
    Field(discriminator="op"),
]
GEOMETRIC_OPS = frozenset({"hflip", "vflip", "rotate", "crop", "translate", "scale"})
# The design sketch's short form: {"rotate": 10} sets the op's main field.
_MAIN_FIELD = {
    "hflip": "p",
    "vflip": "p",
    "rotate": "degrees",
    "crop": "padding",
    "translate": "fraction",
    "cutout": "size",
}


def _expand_op(item: Any) -> Any:
    """{"hflip": 0.5} → {"op": "hflip", "p": 0.5}; {"cutout": {"size": 2}} → {"op": "cutout",
    "size": 2}; {"scale": [0.9, 1.1]} → {"op": "scale", "min": 0.9, "max": 1.1}."""
    if not isinstance(item, dict) or "op" in item or len(item) != 1:
        return item
    [(name, value)] = item.items()
    if isinstance(value, dict):
        return {"op": name, **value}
    if name == "scale" and isinstance(value, list | tuple) and len(value) == 2:
        return {"op": name, "min": value[0], "max": value[1]}
    if name in _MAIN_FIELD:
        return {"op": name, _MAIN_FIELD[name]: value}
    return {"op": name}  # the union then names the unknown op


# --------------------------------------------------------------------------- schedules


class ConstantSchedule(_Strict):
    name: Literal["constant"] = "constant"


class InverseTimeSchedule(_Strict):
    """η_t = η₀ / (1 + k·t), t = epochs completed (0 for the first epoch)."""

    name: Literal["inverse_time"]
    decay: float = Field(0.01, gt=0.0, le=1_000.0)


class StepSchedule(_Strict):
    """η_t = η₀ · γ^⌊t / step_size⌋."""

    name: Literal["step"]
    step_size: int = Field(10, ge=1, le=MAX_EPOCHS)
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class ExponentialSchedule(_Strict):
    """η_t = η₀ · γ^t."""

    name: Literal["exponential"]
    gamma: float = Field(0.95, gt=0.0, le=1.0)


class CosineSchedule(_Strict):
    """η_t = min_lr + (η₀ − min_lr)(1 + cos(π t / t_max)) / 2, flat at min_lr after t_max."""

    name: Literal["cosine"]
    t_max: int | None = Field(None, ge=1, le=MAX_EPOCHS)  # default: training.epochs
    min_lr: float = Field(0.0, ge=0.0, le=100.0)


class WarmupSchedule(_Strict):
    """Linear ramp from start_factor·η₀ to η₀ over warmup_epochs, then η₀."""

    name: Literal["warmup"]
    warmup_epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    start_factor: float = Field(0.1, gt=0.0, le=1.0)


class ReduceOnPlateauSchedule(_Strict):
    """Multiply the lr by factor when the monitored value has not improved for patience epochs."""

    name: Literal["reduce_on_plateau"]
    monitor: Monitor = "val_loss"
    mode: Mode | None = None  # default: min for losses, max for accuracies
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: Epochs = 5
    threshold: float = Field(0.0, ge=0.0, le=1e6)
    min_lr: float = Field(0.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _mode(self) -> ReduceOnPlateauSchedule:
        self.mode = _check_mode(self.monitor, self.mode)
        return self


ScheduleSpec = Annotated[
    ConstantSchedule
    | InverseTimeSchedule
    | StepSchedule
    | ExponentialSchedule
    | CosineSchedule
    | WarmupSchedule
    | ReduceOnPlateauSchedule,
    Field(discriminator="name"),
]


# --------------------------------------------------------------------------- the rest


class TrainingSpec(_Strict):
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    # True: gradient descent, one optimizer step per epoch on the whole training set (the
    # gradient is accumulated over batch_size chunks, which then only bound memory).
    full_batch: bool = False
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # A limit on the job's training time (over all its attempts): the service stops it after
    # the epoch in which it passed this (stop reason max_runtime; the best checkpoint is
    # kept). Submitting counts it against the owner's compute budget. fit() ignores it.
    max_runtime_seconds: float | None = Field(None, gt=0.0, le=365 * 24 * 3600.0)
    # Autocast dtype of the forward pass and loss: fp32 (none, the default everywhere: runs
    # are reproducible and a job's numbers do not depend on the machine), bf16 (recommended
    # on Ampere and later GPUs; also works on CPU) or fp16 (CUDA only, with a gradient scaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Data-parallel processes (ranks) for this one job: batch_size stays the global batch,
    # each rank takes batch_size / processes rows of it. CUDA: one GPU per rank.
    processes: int = Field(1, ge=1, le=MAX_PROCESSES)


class EarlyStoppingSpec(_Strict):
    monitor: Monitor = "val_loss"
    mode: Mode | None = None  # default: min for losses, max for accuracies
    patience: Epochs = 5
    min_delta: float = Field(0.0, ge=0.0, le=1e6)
    stopping_threshold: float | None = None  # stop once the value is at least this good
    divergence_threshold: float | None = None  # stop once the value is this bad or worse
    min_epochs: Epochs = 0  # patience and thresholds do not stop before this epoch
    check_finite: bool = True  # stop when the monitored value is NaN or infinite

    @model_validator(mode="after")
    def _mode(self) -> EarlyStoppingSpec:
        self.mode = _check_mode(self.monitor, self.mode)
        return self


class NotifySpec(_Strict):
    """Webhooks: POSTs of the job's events to url, signed (see docs/webhooks.md)."""

    url: str = Field(max_length=2000, pattern=r"^https?://[^\s/?#]+[^\s]*$")
    # status: each change of the job's status; best: each new best epoch; pruned: a study's
    # pruner stopped the trial.
    events: list[Literal["status", "best", "pruned"]] = Field(
        ["status"], min_length=1, max_length=3
    )


class CheckpointSpec(_Strict):
    keep_top_k: int = Field(3, ge=1, le=50)
    # The cadence of the service's checkpoints: after every every_epochs-th epoch, and no
    # sooner than min_interval_seconds after the last one; the last epoch always, and a new
    # best with the next due one (or at the end). A crash redoes at most the epochs since
    # the last checkpoint. Not part of the spec's hash: it does not change the training.
    every_epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    # None (the default): at least a second, and at least 50 times as long as the last
    # checkpoint took to write, so that writing takes at most 2% of the run (a model whose
    # upload takes 0.1 s writes every 5 s); a number: exactly that (0: every due epoch).
    min_interval_seconds: float | None = Field(None, ge=0.0, le=24 * 3600.0)


class JobSpec(_Strict):
    """A job's whole configuration.

    Validated with a context, `JobSpec.model_validate(body, context={"uploads": {id: meta},
    "jobs": {id: {"status": ..., "spec": ...}}})`, it is checked against the uploads and
    jobs it names (an upload's format and target are then filled in from its metadata);
    the API passes the owner's own uploads and jobs only, so another owner's reads as
    missing. Without a context (the worker, a notebook) those checks are skipped: the
    worker finds the files through core.resources.Resources and fails the job if they do
    not fit.
    """

    name: str | None = Field(None, max_length=200)
    task: Task | None = None  # default: the dataset's task
    dataset: DatasetSpec
    # Without a backbone, the whole model; with one, the head on the backbone's features
    # (an MLP of model.hidden, a linear layer by default; segmentation: the decoder).
    model: ModelSpec = Field(default_factory=ModelSpec)
    backbone: BackboneSpec | None = None
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    # Applied in this order to each training batch (never to validation data); image datasets only.
    augmentation: list[AugmentationOp] = Field(default_factory=list, max_length=16)
    schedule: ScheduleSpec = Field(default_factory=ConstantSchedule)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    early_stopping: EarlyStoppingSpec | None = None
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    # Where the job's events are posted (not part of the spec's hash).
    notify: NotifySpec | None = None

    # The backbone job's spec, from the validation context: not part of the spec.
    _source: JobSpec | None = PrivateAttr(None)

    @field_validator("augmentation", mode="before")
    @classmethod
    def _short_ops(cls, value: Any) -> Any:
        return [_expand_op(item) for item in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _cross_field(self, context: ValidationInfo) -> JobSpec:
        info = self.dataset.known_info()
        if self.task is None and info is not None:
            self.task = info.task
        set_fields = self.model.model_fields_set
        if self.backbone is not None and "hidden" not in set_fields:
            self.model.hidden = []  # the replaced classifier: one linear layer
        if self.task == "segmentation" and self.backbone is None and "arch" not in set_fields:
            self.model.arch = "cnn"
        errors: list[InitErrorDetails] = []

        def refuse(loc: tuple[str | int, ...], message: str, value: Any) -> None:
            errors.append(_error(loc, message, value))

        given = (context.context or {}) if context else {}
        jobs, uploads = given.get("jobs"), given.get("uploads")
        if isinstance(self.backbone, JobBackbone) and jobs is not None:
            self._source = self._source_job(jobs, uploads, refuse)
        if isinstance(self.backbone, TorchvisionBackbone) and uploads is not None:
            self._check_weights_upload(self.backbone, uploads, refuse)
        if info is not None:
            self._check_dataset(info, refuse)
            self._check_backbone(info, refuse)
            self._check_augmentation(info, refuse)
        self._check_optimizer(info, refuse)
        self._check_scaling(refuse)
        for loc, monitor in (("early_stopping", self.early_stopping), ("schedule", self.schedule)):
            name = getattr(monitor, "monitor", None)
            if (
                name
                and name.endswith("accuracy")
                and self.task not in (None, "classification", "segmentation")
            ):
                refuse((loc, "monitor"), f"{name} needs a classification task", name)
        _raise(errors)
        return self

    # ------------------------------------------------------------------ cross-field checks

    def _check_dataset(self, info: DatasetInfo, refuse: Any) -> None:
        label, task, model = self.dataset.label, self.task, self.model
        assert task is not None
        if not info.supports(task):
            if task == "segmentation":
                message = (
                    "segmentation needs images with a mask each (shapes, or an npz upload of "
                    f"images x and masks y); dataset {label} is a {info.task} dataset"
                )
            else:
                message = f"dataset {label} is a {info.task} dataset, not {task}"
            refuse(("task",), message, task)
        if task == "segmentation" and model.arch != "cnn" and self.backbone is None:
            refuse(("model", "arch"), "segmentation needs arch cnn or a backbone", model.arch)
        _, n_val = self.dataset.split_sizes(info)
        n_train = info.n_samples - n_val  # before train_size
        if info.task == "classification" and min(n_train, n_val) < info.num_classes:
            refuse(
                ("dataset", "val_fraction"),
                f"splits {info.n_samples} samples into {n_train} train / {n_val} validation; "
                f"a stratified split needs at least {info.num_classes} (one per class) in each",
                self.dataset.val_fraction,
            )
        size = self.dataset.train_size
        if size is not None:
            classes = info.num_classes if info.task == "classification" else 0
            if size > n_train - classes:
                refuse(
                    ("dataset", "train_size"),
                    f"the training split has {n_train} rows: train_size must be at most "
                    f"{n_train - classes}"
                    + (" (a stratified subset leaves one per class out)" if classes else ""),
                    size,
                )
            elif size < classes:
                refuse(
                    ("dataset", "train_size"),
                    f"a stratified subset needs at least one row per class ({classes})",
                    size,
                )
        if model.arch == "cnn" and self.backbone is None:
            if info.image_shape is None:
                refuse(
                    ("model", "arch"),
                    "cnn needs an image dataset (digits, shapes, image uploads); dataset "
                    f"{label} is tabular",
                    "cnn",
                )
            else:
                _, h, w = info.image_shape
                blocks = len(model.channels)
                if min(h, w) >> blocks == 0:
                    refuse(
                        ("model", "channels"),
                        f"each conv block halves the {h}x{w} images: {blocks} blocks leave "
                        "nothing; use fewer",
                        model.channels,
                    )
        if model.norm == "batch" and self.training.batch_size == 1:
            refuse(
                ("model", "norm"),
                "batch norm needs batch_size > 1: a batch of one has no variance",
                "batch",
            )

    def _source_job(
        self, jobs: dict[str, Any], uploads: dict[str, Any] | None, refuse: Any
    ) -> JobSpec | None:
        assert isinstance(self.backbone, JobBackbone)
        job_id = self.backbone.from_job
        loc = ("backbone", "job", "from_job")
        job = jobs.get(job_id)
        if job is None:
            refuse(loc, f"there is no job {job_id!r}", job_id)
            return None
        status = job.get("status")
        if status != "succeeded":
            refuse(
                loc,
                f"job {job_id!r} is {status}: a backbone is the best checkpoint of a job "
                "that finished (succeeded)",
                job_id,
            )
            return None
        stored = job.get("spec")
        try:
            source = (
                stored
                if isinstance(stored, JobSpec)
                else JobSpec.model_validate(stored, context={"uploads": uploads or {}})
            )
        except ValidationError as exc:
            refuse(
                loc,
                f"the spec of job {job_id!r} is no longer valid: {exc.errors()[0]['msg']}",
                job_id,
            )
            return None
        if isinstance(source.backbone, JobBackbone):
            refuse(
                loc,
                f"job {job_id!r} itself trained on another job's encoder: take the encoder of "
                f"that job ({source.backbone.from_job!r}) instead",
                job_id,
            )
            return None
        if source.backbone is None and source.model.arch == "mlp" and not source.model.hidden:
            refuse(
                loc, f"the model of job {job_id!r} has no hidden layers: it has no encoder", job_id
            )
            return None
        return source

    def _check_weights_upload(
        self, backbone: TorchvisionBackbone, uploads: dict[str, Any], refuse: Any
    ) -> None:
        upload = backbone.upload_id
        if upload is None:
            return
        loc = ("backbone", "torchvision", "weights")
        meta = uploads.get(upload)
        if meta is None:
            refuse(loc, f"there is no weights upload {upload!r}", backbone.weights)
        elif "arch" not in meta:
            refuse(loc, f"upload {upload!r} is a dataset, not weights", backbone.weights)
        elif meta["arch"] != backbone.arch:
            refuse(
                loc,
                f"weights upload {upload!r} holds {meta['arch']} weights, not {backbone.arch}",
                backbone.weights,
            )

    def _check_backbone(self, info: DatasetInfo, refuse: Any) -> None:
        backbone, label = self.backbone, self.dataset.label
        if backbone is None:
            return
        if self.task == "reconstruction":
            refuse(("backbone",), "an autoencoder trains its own encoder: no backbone", None)
        if self.model.arch == "cnn":
            refuse(
                ("model", "arch"),
                "with a backbone, model describes the head on its features (an MLP; "
                "segmentation: a decoder): leave arch out",
                "cnn",
            )
        if backbone.unfreeze_at_epoch is not None and (
            backbone.unfreeze_at_epoch > self.training.epochs
        ):
            tag = "job" if isinstance(backbone, JobBackbone) else "torchvision"
            refuse(
                ("backbone", tag, "unfreeze_at_epoch"),
                f"epoch {backbone.unfreeze_at_epoch} comes after the last ({self.training.epochs})",
                backbone.unfreeze_at_epoch,
            )
        if isinstance(backbone, TorchvisionBackbone):
            self._check_torchvision_input(info, ("backbone", "torchvision", "arch"), refuse)
            return
        source = self._source
        if source is None:
            return  # not known here: checked by the worker when it loads the checkpoint
        loc = ("backbone", "job", "from_job")
        job_id = backbone.from_job
        if isinstance(source.backbone, TorchvisionBackbone):
            self._check_torchvision_input(info, loc, refuse)
            return
        if source.model.arch == "mlp" and self.task == "segmentation":
            refuse(
                loc,
                f"the encoder of job {job_id!r} is an MLP: segmentation needs a convolutional one",
                job_id,
            )
        source_info = source.dataset.known_info()
        if source_info is None:
            return
        if source.model.arch == "mlp":
            if source_info.n_features != info.n_features:
                refuse(
                    loc,
                    f"the encoder of job {job_id!r} takes {source_info.n_features} inputs; dataset "
                    f"{label} has {info.n_features}",
                    job_id,
                )
            return
        assert source_info.image_shape is not None
        if info.image_shape is None:
            refuse(
                loc,
                f"the encoder of job {job_id!r} takes images; dataset {label} is tabular",
                job_id,
            )
        elif info.image_shape[0] != source_info.image_shape[0]:
            refuse(
                loc,
                f"the encoder of job {job_id!r} takes {source_info.image_shape[0]}-channel images; "
                f"dataset {label} has {info.image_shape[0]} channels",
                job_id,
            )
        elif min(info.image_shape[1:]) >> len(source.model.channels) == 0:
            refuse(
                loc,
                f"the encoder of job {job_id!r} halves the images {len(source.model.channels)} "
                f"times: the {info.image_shape[1]}x{info.image_shape[2]} images of dataset {label} "
                "are too small",
                job_id,
            )

    def _check_torchvision_input(
        self, info: DatasetInfo, loc: tuple[str, ...], refuse: Any
    ) -> None:
        if info.image_shape is None:
            refuse(
                loc,
                f"a torchvision backbone needs images; dataset {self.dataset.label} is tabular",
                None,
            )
        elif info.image_shape[0] not in (1, 3):
            refuse(
                loc,
                "a torchvision backbone takes 1- or 3-channel images; dataset "
                f"{self.dataset.label} has {info.image_shape[0]} channels",
                None,
            )

    def _check_optimizer(self, info: DatasetInfo | None, refuse: Any) -> None:
        model, opt, train = self.model, self.optimizer, self.training
        if opt.name not in ("newton", "lbfgs"):
            return
        label = "Newton's method" if opt.name == "newton" else "L-BFGS"
        if not train.full_batch:
            refuse(
                ("training", "full_batch"),
                f"{label} works on the full training set: set full_batch: true",
                False,
            )
        reg = self.regularization
        if reg.weight_decay:
            refuse(
                ("regularization", "weight_decay"),
                f"{label} takes no weight_decay: use l2",
                reg.weight_decay,
            )
        for clip in ("grad_clip_norm", "grad_clip_value"):
            if getattr(reg, clip) is not None:
                refuse(
                    ("regularization", clip),
                    f"{label} does not clip gradients",
                    getattr(reg, clip),
                )
        backbone = self.backbone
        if opt.name == "lbfgs" and backbone is not None:
            for field in ("lr_scale", "unfreeze_at_epoch"):
                if getattr(backbone, field) is not None:
                    refuse(
                        ("optimizer", "name"),
                        f"L-BFGS has one learning rate for all parameters: no backbone {field}",
                        "lbfgs",
                    )
        if opt.name != "newton":
            return
        if backbone is not None or self.task not in (None, "classification", "regression"):
            refuse(
                ("optimizer", "name"),
                "Newton's method is for small classification and regression models without "
                "a backbone: use lbfgs",
                "newton",
            )
            return
        # An exact Hessian needs a deterministic loss that torch.func can differentiate twice.
        if model.dropout > 0:
            refuse(
                ("model", "dropout"),
                "Newton's method needs a deterministic loss: set dropout: 0",
                model.dropout,
            )
        if model.norm == "batch":
            refuse(
                ("model", "norm"),
                "Newton's method cannot differentiate batch norm's running statistics: "
                "use none or layer",
                "batch",
            )
        if self.augmentation:
            refuse(
                ("augmentation",),
                "Newton's method needs a deterministic loss: leave augmentation empty",
                [op.op for op in self.augmentation],
            )
        if info is not None and (model.arch == "mlp" or info.image_shape is not None):
            count = parameter_count(model, info, self.task)
            if count > NEWTON_MAX_PARAMETERS:
                refuse(
                    ("optimizer", "name"),
                    f"Newton's method is limited to {NEWTON_MAX_PARAMETERS:,} parameters (a "
                    f"{NEWTON_MAX_PARAMETERS:,}² Hessian); this model has {count:,}: "
                    "use lbfgs or a smaller model",
                    "newton",
                )

    def _check_scaling(self, refuse: Any) -> None:
        """Mixed precision and several processes: what they cannot be combined with."""
        train, opt = self.training, self.optimizer.name
        label = {"newton": "Newton's method", "lbfgs": "L-BFGS"}.get(opt)
        if train.precision == "fp16" and train.device == "cpu":
            refuse(
                ("training", "precision"),
                "fp16 autocast needs a CUDA GPU (its gradient scaler is CUDA-only): use bf16 "
                "on CPU, or device auto/cuda",
                "fp16",
            )
        if label is not None and train.precision != "fp32":
            refuse(
                ("training", "precision"),
                f"{label} needs exact fp32 losses and gradients (its line search / Hessian "
                "are not autocast-safe): use precision fp32",
                train.precision,
            )
        if train.processes == 1:
            return
        if label is not None:
            refuse(
                ("training", "processes"),
                f"{label} evaluates the whole training set in one process: use processes 1",
                train.processes,
            )
        if self.model.sync_batch_norm and train.device == "cpu":
            refuse(
                ("model", "sync_batch_norm"),
                "SyncBatchNorm runs on CUDA GPUs only: use device auto/cuda, or false",
                True,
            )
        if train.batch_size % train.processes:
            refuse(
                ("training", "batch_size"),
                f"batch_size is the global batch, split evenly over the {train.processes} "
                f"processes: it must be a multiple of {train.processes}",
                train.batch_size,
            )

    def _check_augmentation(self, info: DatasetInfo, refuse: Any) -> None:
        if not self.augmentation:
            return
        shape = info.image_shape
        label = self.dataset.label
        if shape is None:
            refuse(
                ("augmentation",),
                f"augmentation needs an image dataset (digits, shapes, image uploads); {label} "
                "is tabular",
                [op.op for op in self.augmentation],
            )
            return
        channels, height, width = shape
        for i, op in enumerate(self.augmentation):
            if isinstance(op, Cutout) and op.size > min(height, width):
                refuse(
                    ("augmentation", i, "size"),
                    f"cutout of {op.size} pixels is larger than the {height}x{width} images",
                    op.size,
                )
            if isinstance(op, Crop) and op.padding > min(height, width):
                refuse(
                    ("augmentation", i, "padding"),
                    f"padding {op.padding} exceeds the {height}x{width} images",
                    op.padding,
                )
            if isinstance(op, ColorJitter) and channels != 3:
                for field in ("saturation", "hue"):
                    if getattr(op, field):
                        refuse(
                            ("augmentation", i, field),
                            f"{field} needs colour (3-channel) images; {label} "
                            f"has {channels} channel{'s' if channels != 1 else ''}",
                            getattr(op, field),
                        )

    # ------------------------------------------------------------------ derived values

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the validated spec (defaults filled in)."""
        data = self.model_dump(mode="json")
        data.pop("notify", None)  # where events go does not change the training
        for name in ("every_epochs", "min_interval_seconds"):  # nor when checkpoints are written
            data["checkpoints"].pop(name, None)
        # Fields added later leave the hash of a spec that keeps their defaults unchanged, so
        # checkpoints written before they existed still resume.
        for section, name, default in _LATER_FIELDS:
            if data[section].get(name) == default:
                del data[section][name]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def source(self) -> JobSpec | None:
        """The backbone job's spec when it was given in the validation context."""
        return self._source

    def with_source(self, source: JobSpec) -> JobSpec:
        """This spec knowing its backbone job's spec (the worker's Resources hold it)."""
        self._source = source
        return self

    def body_shape(self, info: DatasetInfo | None = None) -> BodyShape:
        info = info or self.dataset.info()
        task = self.task or info.task
        backbone = self.backbone
        if isinstance(backbone, JobBackbone):
            source = self._source
            if source is None:
                raise ValueError(
                    f"job {backbone.from_job!r}'s spec is not known here: validate with "
                    "context={'jobs': {id: {'status': ..., 'spec': ...}}}"
                )
            tv = source.backbone if isinstance(source.backbone, TorchvisionBackbone) else None
            return body_shape(source.model, tv, info, task)
        return body_shape(self.model, backbone, info, task)

    def parameter_counts(self, info: DatasetInfo | None = None) -> dict[str, int]:
        """{"trainable": n, "frozen": m} when training starts (frozen: a frozen backbone)."""
        info = info or self.dataset.info()
        task = self.task or info.task
        body = self.body_shape(info)
        head = head_parameters(self.model, body, info, task, backbone=self.backbone is not None)
        frozen = body.parameters if self.backbone is not None and self.backbone.freeze else 0
        return {"trainable": body.parameters + head - frozen, "frozen": frozen}

    def parameter_count(self) -> int:
        """All the model's parameters (a frozen backbone's too: they may be unfrozen, and
        the forward pass runs through them either way)."""
        counts = self.parameter_counts()
        return counts["trainable"] + counts["frozen"]


# --------------------------------------------------------------------------- warnings


def warnings(spec: JobSpec, info: DatasetInfo | None = None) -> list[str]:
    """What is allowed but probably not meant: shown with the job at submit and in its result."""
    found = []
    backbone = spec.backbone
    if isinstance(backbone, TorchvisionBackbone) and backbone.weights == "none":
        if backbone.freeze:
            found.append(
                "backbone.freeze with weights none: the frozen backbone keeps random weights"
            )
        else:
            found.append("backbone.weights is none: the backbone starts from random weights")
    info = info or spec.dataset.known_info()
    if info is None:
        return found
    n_train, _ = spec.dataset.split_sizes(info)
    # Full batch too: the forward pass sees chunks of batch_size rows, normalized apart.
    batch = min(spec.training.batch_size, n_train)
    if spec.model.norm == "batch" and batch < BATCH_NORM_MIN_BATCH:
        found.append(
            f"model.norm: batch norm with batches of {batch} (< {BATCH_NORM_MIN_BATCH}): the "
            "batch statistics are noisy; use batch_size >= 16 or norm: layer"
        )
    return found


# --------------------------------------------------------------------------- helpers


# (section, field, default) of fields a spec_hash leaves out while at their default.
_LATER_FIELDS = (
    ("training", "precision", "fp32"),
    ("training", "processes", 1),
    ("model", "sync_batch_norm", False),
)


def _check_mode(monitor: str, mode: Mode | None) -> Mode:
    natural: Mode = "max" if monitor.endswith("accuracy") else "min"
    if mode is not None and mode != natural:
        direction = "larger" if natural == "max" else "smaller"
        message = f"{monitor} improves when it gets {direction}: mode must be {natural}"
        _raise([_error(("mode",), message, mode)])
    return natural


def _error(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    # Errors carry the field's location so the API's 422 names the field, not the spec.
    return InitErrorDetails(type=PydanticCustomError("invalid_spec", message), loc=loc, input=value)


def _raise(errors: list[InitErrorDetails]) -> None:
    if errors:
        raise ValidationError.from_exception_data("JobSpec", errors)
