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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Task = Literal["classification", "regression"]
DatasetName = Literal["digits", "iris", "wine", "breast_cancer", "moons", "regression"]
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
# Max pooling halves the 8x8 digit images per conv block: three blocks reach 1x1.
CNN_MAX_BLOCKS = 3
# Below this batch size batch statistics are noisy (notes 4.8.4): the job gets a warning.
BATCH_NORM_MIN_BATCH = 16

Width = Annotated[int, Field(ge=1, le=16_384)]  # a layer's units or channels
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetInfo:
    """What the core needs to know about a dataset before loading it."""

    task: Task
    n_samples: int
    n_features: int  # flattened input size
    num_classes: int  # 0 for regression
    image_shape: tuple[int, int, int] | None  # (C, H, W) for image datasets

    @property
    def output_size(self) -> int:
        return self.num_classes if self.task == "classification" else 1


# Generated datasets (moons, regression) take their size from the spec; the rest are fixed.
_BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", 1797, 64, 10, (1, 8, 8)),
    "iris": DatasetInfo("classification", 150, 4, 3, None),
    "wine": DatasetInfo("classification", 178, 13, 3, None),
    "breast_cancer": DatasetInfo("classification", 569, 30, 2, None),
}
_GENERATED_DEFAULTS: dict[str, dict[str, Any]] = {
    "moons": {"n_samples": 500, "noise": 0.2},
    "regression": {"n_samples": 500, "noise": 10.0, "n_features": 10},
}


class DatasetSpec(_Strict):
    source: Literal["builtin"] = "builtin"
    name: DatasetName
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    # Only for the generated datasets (moons, regression); filled with their defaults.
    n_samples: int | None = Field(None, ge=20, le=200_000)
    noise: float | None = Field(None, ge=0.0)
    n_features: int | None = Field(None, ge=1, le=1_000)

    @model_validator(mode="after")
    def _generated_only(self) -> DatasetSpec:
        defaults = _GENERATED_DEFAULTS.get(self.name)
        errors = []
        for field in ("n_samples", "noise", "n_features"):
            applies = defaults is not None and field in defaults
            if not applies and getattr(self, field) is not None:
                errors.append(
                    _error(
                        (field,),
                        f"{field} does not apply to dataset {self.name!r}",
                        getattr(self, field),
                    )
                )
            elif applies and getattr(self, field) is None:
                setattr(self, field, defaults[field])  # type: ignore[index]
        _raise(errors)
        return self

    def info(self) -> DatasetInfo:
        if self.name in _BUILTIN:
            return _BUILTIN[self.name]
        if self.name == "moons":
            return DatasetInfo("classification", self.n_samples or 0, 2, 2, None)
        return DatasetInfo("regression", self.n_samples or 0, self.n_features or 0, 0, None)

    def split_sizes(self) -> tuple[int, int]:
        """(train, val) sizes exactly as sklearn's train_test_split rounds them."""
        n = self.info().n_samples
        n_val = math.ceil(self.val_fraction * n)
        return n - n_val, n_val


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
    init_value: float = 0.01  # for init: constant
    init_std: float = Field(0.01, gt=0.0)  # for init: normal, w ~ N(0, init_std²)

    @field_validator("init", mode="before")
    @classmethod
    def _init_alias(cls, value: Any) -> Any:
        # The design sketch writes `init: kaiming`; accept the family name for the normal variant.
        return {
            "xavier": "xavier_normal",
            "glorot": "xavier_normal",
            "kaiming": "kaiming_normal",
            "he": "kaiming_normal",
        }.get(value, value)


def parameter_count(model: ModelSpec, dataset: DatasetInfo) -> int:
    """Trainable parameters of the model core.models builds, counted without building it."""
    norm_params = 0 if model.norm == "none" else 2  # weight and bias per feature/channel
    out = dataset.output_size
    if model.arch == "mlp":
        total, width = 0, dataset.n_features
        for h in model.hidden:
            total += width * h + h + norm_params * h
            width = h
        return total + width * out + out
    assert dataset.image_shape is not None
    c_in, size, _ = dataset.image_shape
    total = 0
    for c in model.channels:
        total += c_in * c * 9 + c + norm_params * c  # 3x3 convolution
        c_in, size = c, size // 2
    return total + c_in * size * size * out + out


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
    lr: float | None = Field(None, gt=0.0)
    momentum: Fraction | None = None  # SGD's γ in m ← γm + η∇L
    nesterov: bool | None = None
    alpha: Fraction | None = None  # RMSprop's γ in v ← γv + (1−γ)∇L²
    betas: tuple[Fraction, Fraction] | None = None
    eps: float | None = Field(None, gt=0.0)
    bias_correction: bool | None = None
    maximize: bool | None = None
    damping: float | None = Field(None, ge=0.0)  # Newton: H + λI
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

    l1: float = Field(0.0, ge=0.0)
    l2: float = Field(0.0, ge=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip_norm: float | None = Field(None, gt=0.0)
    grad_clip_value: float | None = Field(None, gt=0.0)


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
    padding: int = Field(ge=1)
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
    size: int = Field(ge=1)
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
    decay: float = Field(0.01, gt=0.0)


class StepSchedule(_Strict):
    """η_t = η₀ · γ^⌊t / step_size⌋."""

    name: Literal["step"]
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class ExponentialSchedule(_Strict):
    """η_t = η₀ · γ^t."""

    name: Literal["exponential"]
    gamma: float = Field(0.95, gt=0.0, le=1.0)


class CosineSchedule(_Strict):
    """η_t = min_lr + (η₀ − min_lr)(1 + cos(π t / t_max)) / 2, flat at min_lr after t_max."""

    name: Literal["cosine"]
    t_max: int | None = Field(None, ge=1)  # default: training.epochs
    min_lr: float = Field(0.0, ge=0.0)


class WarmupSchedule(_Strict):
    """Linear ramp from start_factor·η₀ to η₀ over warmup_epochs, then η₀."""

    name: Literal["warmup"]
    warmup_epochs: int = Field(5, ge=1)
    start_factor: float = Field(0.1, gt=0.0, le=1.0)


class ReduceOnPlateauSchedule(_Strict):
    """Multiply the lr by factor when the monitored value has not improved for patience epochs."""

    name: Literal["reduce_on_plateau"]
    monitor: Monitor = "val_loss"
    mode: Mode | None = None  # default: min for losses, max for accuracies
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(5, ge=0)
    threshold: float = Field(0.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)

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
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    # True: gradient descent, one optimizer step per epoch on the whole training set (the
    # gradient is accumulated over batch_size chunks, which then only bound memory).
    full_batch: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EarlyStoppingSpec(_Strict):
    monitor: Monitor = "val_loss"
    mode: Mode | None = None  # default: min for losses, max for accuracies
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    stopping_threshold: float | None = None  # stop once the value is at least this good
    divergence_threshold: float | None = None  # stop once the value is this bad or worse
    min_epochs: int = Field(0, ge=0)  # patience and thresholds do not stop before this epoch
    check_finite: bool = True  # stop when the monitored value is NaN or infinite

    @model_validator(mode="after")
    def _mode(self) -> EarlyStoppingSpec:
        self.mode = _check_mode(self.monitor, self.mode)
        return self


class CheckpointSpec(_Strict):
    keep_top_k: int = Field(3, ge=1, le=50)


class JobSpec(_Strict):
    name: str | None = Field(None, max_length=200)
    task: Task | None = None  # default: the dataset's task
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    # Applied in this order to each training batch (never to validation data); image datasets only.
    augmentation: list[AugmentationOp] = Field(default_factory=list, max_length=16)
    schedule: ScheduleSpec = Field(default_factory=ConstantSchedule)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    early_stopping: EarlyStoppingSpec | None = None
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)

    @field_validator("augmentation", mode="before")
    @classmethod
    def _short_ops(cls, value: Any) -> Any:
        return [_expand_op(item) for item in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _cross_field(self) -> JobSpec:
        info = self.dataset.info()
        if self.task is None:
            self.task = info.task
        errors: list[InitErrorDetails] = []

        def refuse(loc: tuple[str | int, ...], message: str, value: Any) -> None:
            errors.append(_error(loc, message, value))

        if self.task != info.task:
            refuse(
                ("task",),
                f"dataset {self.dataset.name!r} is a {info.task} dataset, not {self.task}",
                self.task,
            )
        n_train, n_val = self.dataset.split_sizes()
        if info.task == "classification" and min(n_train, n_val) < info.num_classes:
            refuse(
                ("dataset", "val_fraction"),
                f"splits {info.n_samples} samples into {n_train} train / {n_val} validation; "
                f"a stratified split needs at least {info.num_classes} (one per class) in each",
                self.dataset.val_fraction,
            )

        model, opt, train = self.model, self.optimizer, self.training
        if model.arch == "cnn" and info.image_shape is None:
            refuse(
                ("model", "arch"),
                f"cnn needs an image dataset (digits); {self.dataset.name!r} is tabular",
                "cnn",
            )
        if model.norm == "batch" and train.batch_size == 1:
            refuse(
                ("model", "norm"),
                "batch norm needs batch_size > 1: a batch of one has no variance",
                "batch",
            )

        self._check_augmentation(refuse)

        if opt.name in ("newton", "lbfgs"):
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
        if opt.name == "newton":
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
            if model.arch == "mlp" or info.image_shape is not None:
                count = parameter_count(model, info)
                if count > NEWTON_MAX_PARAMETERS:
                    refuse(
                        ("optimizer", "name"),
                        f"Newton's method is limited to {NEWTON_MAX_PARAMETERS:,} parameters (a "
                        f"{NEWTON_MAX_PARAMETERS:,}² Hessian); this model has {count:,}: "
                        "use lbfgs or a smaller model",
                        "newton",
                    )

        for loc, monitor in (("early_stopping", self.early_stopping), ("schedule", self.schedule)):
            name = getattr(monitor, "monitor", None)
            if name and name.endswith("accuracy") and self.task != "classification":
                refuse((loc, "monitor"), f"{name} needs a classification task", name)
        _raise(errors)
        return self

    def _check_augmentation(self, refuse: Any) -> None:
        if not self.augmentation:
            return
        shape = self.dataset.info().image_shape
        if shape is None:
            refuse(
                ("augmentation",),
                f"augmentation needs an image dataset (digits); {self.dataset.name!r} is tabular",
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
                            f"{field} needs colour (3-channel) images; {self.dataset.name!r} "
                            f"has {channels} channel{'s' if channels != 1 else ''}",
                            getattr(op, field),
                        )

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the validated spec (defaults filled in)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def parameter_count(self) -> int:
        return parameter_count(self.model, self.dataset.info())


# --------------------------------------------------------------------------- warnings


def warnings(spec: JobSpec) -> list[str]:
    """What is allowed but probably not meant: shown with the job at submit and in its result."""
    found = []
    n_train, _ = spec.dataset.split_sizes()
    # Full batch too: the forward pass sees chunks of batch_size rows, normalized apart.
    batch = min(spec.training.batch_size, n_train)
    if spec.model.norm == "batch" and batch < BATCH_NORM_MIN_BATCH:
        found.append(
            f"model.norm: batch norm with batches of {batch} (< {BATCH_NORM_MIN_BATCH}): the "
            "batch statistics are noisy; use batch_size >= 16 or norm: layer"
        )
    return found


# --------------------------------------------------------------------------- helpers


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
