"""The training loop.

Trainer wraps one explicit loop (Trainer.train, readable top to bottom) in a class a worker
can drive and a test can import: setup() builds everything from the spec, train() runs the
epochs, save_checkpoint()/load_checkpoint() write and restore the whole state, so a resumed
run continues exactly where the saved one was.

    result = fit({"dataset": {"name": "digits"}, "training": {"epochs": 5}})
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from core.augment import Augmenter
from core.backbones import load_backbone, set_frozen
from core.checkpoint import (
    STATE_SUFFIX,
    WEIGHTS_SUFFIX,
    CheckpointFiles,
    atomic_write,
    load_state,
    load_weights,
    state_bytes,
    weights_metadata,
)
from core.data import Data, Scaling, load_data, read_source
from core.diagnosis import GRAD_NORM_PREFIX, diagnose, regularization_summary
from core.early_stopping import EarlyStopping
from core.errors import NonFiniteLoss, TrainingError
from core.models import build_model
from core.optim import Newton, build_optimizer, decay_groups, decayed
from core.resources import Resources
from core.results import EpochRecord, FitResult, StopInfo
from core.schedules import Schedule
from core.spec import DatasetInfo, JobBackbone, JobSpec, TorchvisionBackbone, warnings

STATE_VERSION = 1
EVAL_CHUNK = 4096  # rows per forward pass when evaluating
# The live diagnosis is recomputed every epoch for this many epochs, then every
# ⌈epochs/this⌉-th epoch (about 200 times per tenfold) and at the last: it reads the whole
# history, and a 10,000-epoch job of millisecond epochs should not spend its time on it.
DIAGNOSIS_EVERY_EPOCH = 100


class Hooks(Protocol):
    def should_stop(self) -> bool:
        """Called every training step; True cancels the job within that step."""
        ...

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """Called after each epoch's evaluation and early-stopping bookkeeping, before the
        loop acts on record.stop; the trainer's state is that of the finished epoch, so
        trainer.save_checkpoint() here writes a checkpoint a resumed run continues from."""
        ...


class TrainerHooks:
    """No-op hooks to subclass."""

    def should_stop(self) -> bool:
        return False

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        return None


def _never() -> bool:
    return False


class _Cancelled(Exception):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step


def resolve_device(requested: str | torch.device) -> torch.device:
    if str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "the spec asks for device 'cuda' but no CUDA GPU is available here: use 'auto' or 'cpu'"
        )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # What torch.manual_seed does for the CPU and every CUDA device, without its other
    # backends' lazy seeding: each of those formats the caller's stack (~1 ms in a worker).
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def task_loss(output: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Mean cross-entropy for classification (per pixel for segmentation), mean squared error
    for regression and for reconstruction (whose target is the input)."""
    if task == "classification" or task == "segmentation":
        return F.cross_entropy(output, target)
    if task == "reconstruction":
        return F.mse_loss(output, target)
    return F.mse_loss(output.squeeze(-1), target)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's and loss's autocast for training.precision (fp32: none at all)."""
    dtype = AMP_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    chunk: int = EVAL_CHUNK,
    precision: str = "fp32",
) -> dict[str, float]:
    """Loss (and accuracy for classification, pixel accuracy for segmentation) of the model
    in eval mode on (x, y); reconstruction's target is x. precision: the autocast of the
    forward pass, as in training."""
    was_training = model.training
    model.eval()
    loss_sum = x.new_zeros((), dtype=torch.float64)
    correct = x.new_zeros((), dtype=torch.int64)
    classes = task in ("classification", "segmentation")
    for start in range(0, len(x), chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        with autocast(x.device, precision):
            out = model(xb)
            loss = task_loss(out, xb if task == "reconstruction" else yb, task)
        loss_sum += loss.double() * len(xb)
        if classes:
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    result = {"loss": (loss_sum / len(x)).item()}
    if classes:
        result["accuracy"] = correct.item() / y.numel()  # per pixel for segmentation
    return result


def input_layout(spec: JobSpec) -> tuple[bool, Scaling]:
    """(images as (N, C, H, W)?, scaling) for the spec's model: torchvision backbones take
    [0, 1] pixels and normalize them themselves; the rest take standardized inputs."""
    backbone = spec.backbone
    if isinstance(backbone, JobBackbone):
        source = spec.source
        if source is None:
            raise TrainingError(f"the spec of backbone job {backbone.from_job!r} is needed")
        if isinstance(source.backbone, TorchvisionBackbone):
            return True, "unit"
        return source.model.arch == "cnn", "standardize"
    if isinstance(backbone, TorchvisionBackbone):
        return True, "unit"
    return spec.model.arch == "cnn", "standardize"


def with_source(spec: JobSpec, resources: Resources | None) -> JobSpec:
    """The spec, knowing its backbone job's spec (from resources) if it has one."""
    if isinstance(spec.backbone, JobBackbone) and spec.source is None:
        source, _ = (resources or Resources()).backbone_job(spec.backbone.from_job)
        spec.with_source(source)
    return spec


def recheck(spec: JobSpec, info: DatasetInfo, meta: dict[str, Any] | None) -> None:
    """Run the submit-time checks that need the dataset's and backbone job's metadata,
    now that they are known: a spec validated without them may not fit."""
    if spec.dataset.source != "upload" and not isinstance(spec.backbone, JobBackbone):
        return
    context: dict[str, Any] = {}
    if spec.dataset.source == "upload":
        context["uploads"] = {spec.dataset.id: {**(meta or {}), **info.to_meta()}}
        backbone = spec.backbone
        if isinstance(backbone, TorchvisionBackbone) and backbone.upload_id is not None:
            # Uploaded weights are checked against the architecture as they load.
            context["uploads"][backbone.upload_id] = {"arch": backbone.arch}
    if isinstance(spec.backbone, JobBackbone) and spec.source is not None:
        source = {"status": "succeeded", "spec": spec.source}
        context["jobs"] = {spec.backbone.from_job: source}
    try:
        JobSpec.model_validate(spec.model_dump(mode="json"), context=context)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise TrainingError(f"the spec does not fit its data: {reasons}") from None


def evaluate(
    spec: JobSpec | dict[str, Any],
    model: nn.Module,
    split: str = "val",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    resources: Resources | None = None,
) -> dict[str, float]:
    """The model's metrics on a split of the spec's dataset: {"val_loss": …, "val_accuracy": …}."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    spec = with_source(spec, resources)
    images, scaling = input_layout(spec)
    data = load_data(
        spec.dataset,
        images=images,
        device=device,
        dtype=dtype,
        resources=resources,
        task=spec.task,
        scaling=scaling,
    )
    x, y = data.split(split)
    task = spec.task or data.info.task
    chunk = EVAL_CHUNK if spec.backbone is None else max(64, spec.training.batch_size)
    return {
        f"{split}_{k}": v for k, v in measure(model.to(device, dtype), x, y, task, chunk).items()
    }


class Trainer:
    """One training job: Trainer(spec).setup(), then train(); hooks let a worker watch and cancel.

    dtype is float32 for jobs; tests pass float64 to compare with hand computations.
    resources: the uploaded files and backbone jobs the spec names (see core.resources).
    """

    def __init__(
        self,
        spec: JobSpec | dict[str, Any],
        *,
        device: str | torch.device | None = None,
        hooks: Hooks | TrainerHooks | None = None,
        dtype: torch.dtype = torch.float32,
        resources: Resources | None = None,
    ) -> None:
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        self.resources = resources
        self.device = resolve_device(device if device is not None else self.spec.training.device)
        self.hooks = hooks if hooks is not None else TrainerHooks()
        # Hooks may implement either method or both.
        self._should_stop = getattr(self.hooks, "should_stop", None) or _never
        self._on_epoch_end = getattr(self.hooks, "on_epoch_end", None)
        self.dtype = dtype
        self.epoch = 0  # last completed epoch
        self.last_value: float | None = None  # monitored value of that epoch
        self.history: list[EpochRecord] = []
        self.stop: StopInfo | None = None  # set once a stop rule fired
        # Every completed epoch's metrics since the job started (kept across resumes) and the
        # validation metrics before the first step: what the diagnosis reads.
        self.metrics_history: list[dict[str, float]] = []
        # metrics_history's series (_SERIES) as rows of a growing tensor, appended as epochs
        # end (see _history_state): (the list they were read from, names, tensor, rows).
        self._series: tuple[list[dict[str, float]], list[str], torch.Tensor, int] | None = None
        self.initial_metrics: dict[str, float] | None = None
        self.warnings: list[str] = warnings(self.spec)
        self._diagnosis: dict[str, Any] | None = None
        self._is_setup = False
        # Data parallel (training.processes > 1, see core.distributed): this process's rank
        # in the job's process group, and the group's size.
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if initialized else 0
        self.world = dist.get_world_size() if initialized else 1

    # ------------------------------------------------------------------ setup

    def setup(self) -> Trainer:
        spec = with_source(self.spec, self.resources)
        seed_everything(spec.training.seed)
        images, scaling = input_layout(spec)
        read = read_source(spec.dataset, self.resources)
        recheck(spec, read[2], read[3])
        self.data: Data = load_data(
            spec.dataset,
            images=images,
            device=self.device,
            dtype=self.dtype,
            resources=self.resources,
            task=spec.task,
            scaling=scaling,
            read=read,
        )
        info = self.data.info
        self.task: str = spec.task or info.task
        self.model = build_model(spec, info).to(self.device, self.dtype)
        load_backbone(self.model, spec, self.resources)
        if self.world > 1 and spec.model.sync_batch_norm:
            if self.device.type != "cuda":
                raise TrainingError("model.sync_batch_norm needs CUDA GPUs (SyncBatchNorm)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        backbone = spec.backbone
        # Batch-norm layers of a frozen backbone: kept in eval mode (see _train_mode).
        self._frozen_norms: list[nn.Module] = []
        if backbone is not None and backbone.freeze:
            self._frozen_norms = set_frozen(self._body(), True)
        self._unfrozen = False
        self._stop_group: Any = None
        self._has_batch_norm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()
        )
        self._eval_chunk = EVAL_CHUNK if backbone is None else max(64, spec.training.batch_size)
        self._setup_precision(images)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # this job's peak, not the process's
        self.optimizer = build_optimizer(spec, self.model)
        self.schedule = Schedule(spec)
        self.early_stopping = EarlyStopping.from_spec(spec.early_stopping)
        self._trainable_changed()
        self._augment: Augmenter | None = None
        if spec.augmentation:
            info = self.data.info
            assert info.image_shape is not None  # the spec refuses augmentation on tabular data
            self._augment = Augmenter(
                spec.augmentation,
                image_shape=info.image_shape,
                mean=self.data.mean,
                std=self.data.std,
                seed=spec.training.seed,
                device=self.device,
                dtype=self.dtype,
            )
        self._regularization = regularization_summary(spec)
        self.warnings = warnings(spec, info)
        if self.data.shared_samples:
            n = self.data.shared_samples
            self.warnings.append(
                f"dataset: {n} validation sample{'s are' if n != 1 else ' is'} also in the "
                "training split (same inputs): the validation loss flatters the model"
            )
        self._is_setup = True
        return self

    def _out_of_memory(self, exc: torch.OutOfMemoryError, epoch: int) -> torch.OutOfMemoryError:
        """The error, on one line: the batch that did not fit, the peak, what to change."""
        bs, world = self.spec.training.batch_size, self.world
        per_rank = f" ({bs // world} per process)" if world > 1 else ""
        peak = ""
        if self.device.type == "cuda":
            used = torch.cuda.max_memory_allocated(self.device) / 2**20
            total = torch.cuda.get_device_properties(self.device).total_memory / 2**20
            peak = f"; peak {used:,.0f} MiB of the GPU's {total:,.0f} MiB"
        remedy = "lower training.batch_size"
        if self.precision == "fp32" and self.device.type == "cuda":
            remedy += ", use training.precision bf16"
        remedy += " or a smaller model"
        return torch.OutOfMemoryError(
            f"{self.device.type} out of memory in epoch {epoch} with batch_size {bs}"
            f"{per_rank}{peak}: {remedy}"
        )

    def _setup_precision(self, images: bool) -> None:
        """training.precision: autocast, fp16's gradient scaler; on CUDA TF32 matmuls for
        fp32 and channels_last for convolutional models."""
        precision, cuda = self.spec.training.precision, self.device.type == "cuda"
        self.precision = precision
        if precision == "fp16" and not cuda:
            raise TrainingError(
                "precision fp16 needs a CUDA GPU (its gradient scaler is CUDA-only) and this "
                f"job runs on {self.device.type}: use bf16 or fp32"
            )
        self._scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        if cuda and precision == "fp32":
            # TF32 tensor cores for fp32 matmuls and convolutions (Ampere and later; a no-op
            # before): 10-bit mantissa products, fp32 accumulation.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cuda and images:
            self.model.to(memory_format=torch.channels_last)

    def _amp(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def _backward(self, objective: torch.Tensor) -> None:
        if self._scaler is not None:
            self._scaler.scale(objective).backward()
        else:
            objective.backward()

    def _step(self) -> None:
        """The optimizer step (skipped by fp16's scaler when a gradient is not finite)."""
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()

    def parameter_counts(self) -> dict[str, int]:
        """{"trainable": n, "frozen": m}: parameters that train now, and those that do not
        (a frozen backbone's, until it is unfrozen)."""
        if not self._is_setup:
            self.setup()
        counts = {"trainable": 0, "frozen": 0}
        for p in self.model.parameters():
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        return counts

    def step_flops(self) -> float:
        """A training step's floating-point operations, estimated: one sample's forward pass
        counted by torch's FlopCounterMode (matmuls and convolutions), times the batch size,
        times 3 (the backward pass costs about twice the forward). Nothing changes: the pass
        runs in eval mode, without gradients, on a copy of the random state."""
        from torch.utils.flop_counter import FlopCounterMode

        if not self._is_setup:
            self.setup()
        modes = [(module, module.training) for module in self.model.modules()]
        sample = self.data.x_train[:1]
        try:
            with (
                torch.random.fork_rng(devices=[]),
                torch.no_grad(),
                FlopCounterMode(display=False) as counter,
            ):
                self.model.eval()
                self.model(sample)
        finally:
            for module, training in modes:
                module.train(training)
        return 3.0 * counter.get_total_flops() * self.spec.training.batch_size

    def _trainable_changed(self) -> None:
        # What the training steps call: the model, or with several processes the model in
        # DistributedDataParallel, which averages the gradients over the ranks in backward
        # (rebuilt when parameters start training: DDP syncs those that train when built).
        self._net: nn.Module = self.model
        if self.world > 1:
            cuda = self.device.type == "cuda"
            index = self.device.index
            if cuda and index is None:
                index = torch.cuda.current_device()  # the rank's GPU (core.distributed)
            self._net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[index] if cuda else None
            )
            if self._stop_group is None and dist.get_backend() != "gloo":
                # The per-step stop vote goes over gloo on the CPU, not through the GPU.
                self._stop_group = dist.new_group(backend="gloo")
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._penalized = [p for p in self._params if decayed(p)]
        self._layer_names, self._layer_matrix = self._layers()

    def _unfreeze(self) -> None:
        """Gradual unfreezing: the frozen backbone trains from now on, in optimizer groups of
        its own at lr × lr_scale."""
        backbone = self.spec.backbone
        assert backbone is not None and backbone.freeze and not self._unfrozen
        set_frozen(self._body(), False)
        self._frozen_norms = []
        self._unfrozen = True
        params = list(self._body().parameters())
        scale = backbone.lr_scale or 1.0
        for group in decay_groups(params, self.spec.regularization.weight_decay, scale):
            self.optimizer.add_param_group(group)
        self._trainable_changed()

    def _unfreezes_at(self, epoch: int) -> bool:
        backbone = self.spec.backbone
        return (
            backbone is not None
            and backbone.unfreeze_at_epoch is not None
            and epoch >= backbone.unfreeze_at_epoch
            and not self._unfrozen
        )

    def _body(self) -> nn.Module:
        body = self.model.body
        assert isinstance(body, nn.Module)
        return body

    def _train_mode(self) -> None:
        self.model.train()
        for module in self._frozen_norms:  # a frozen backbone's running statistics stay put
            module.eval()

    def _layers(self) -> tuple[list[str], torch.Tensor]:
        """The layers whose gradient norms are recorded, as a (parameters × layers) 0/1 matrix
        that sums squared per-parameter norms into squared per-layer norms.

        A layer is a module with a weight matrix or kernel (linear, conv), named by its module
        path (body.0, head); norm layers' scales and shifts are left out.
        """
        index = {id(p): i for i, p in enumerate(self._params)}
        names, columns = [], []
        for name, module in self.model.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in index]
            if any(p.dim() >= 2 for p in own):
                names.append(name)
                columns.append([index[id(p)] for p in own])
        matrix = torch.zeros(len(self._params), len(names), dtype=self.dtype, device=self.device)
        for column, rows in enumerate(columns):
            matrix[rows, column] = 1.0
        return names, matrix

    # ------------------------------------------------------------------ the loop

    def train(self) -> FitResult:
        """Train from the epoch after self.epoch to training.epochs, or until a stop."""
        try:
            return self._train()
        except torch.OutOfMemoryError as exc:
            raise self._out_of_memory(exc, self.epoch + 1) from exc

    def _train(self) -> FitResult:
        if not self._is_setup:
            self.setup()
        processes = self.spec.training.processes
        if processes != self.world:
            raise TrainingError(
                f"training.processes is {processes} but this run has {self.world}: "
                "core.distributed.fit launches the processes"
            )
        if self.world > 1:
            # Every rank stops at the same step: one rank's stop is everyone's.
            self._should_stop = self._agreed(self._should_stop)
        if self.stop is not None:  # resumed from the checkpoint of an epoch that stopped the run
            return self._result("succeeded", self.stop, 0)
        first_epoch = self.epoch + 1
        if self.epoch == 0 and self.initial_metrics is None:
            # The model before any step: "still falling" can then be judged after one epoch.
            self.initial_metrics = self.evaluate("val")
        for epoch in range(first_epoch, self.spec.training.epochs + 1):
            start = time.perf_counter()
            if self.world > 1:
                # Each rank its own dropout masks, reproducible from (seed, epoch, rank).
                torch.manual_seed((self.spec.training.seed * 100_003 + epoch) * 64 + self.rank)
            if self._unfreezes_at(epoch):
                self._unfreeze()
            lr = self.schedule.lr(epoch)
            for group in self.optimizer.param_groups:
                # A backbone's groups train at a fraction of the schedule's lr.
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self._train_mode()
            try:
                if self.spec.optimizer.name == "newton":
                    metrics = self._newton_epoch(epoch)
                elif self.spec.training.full_batch:
                    metrics = self._full_batch_epoch(epoch)
                else:
                    metrics = self._minibatch_epoch(epoch)
            except _Cancelled as c:
                detail = f"cancelled during epoch {c.epoch} at step {c.step}"
                return self._result(
                    "cancelled",
                    StopInfo("cancelled", None, self.epoch, detail),
                    epoch - first_epoch,
                )
            except NonFiniteLoss as exc:
                failed = [*self.metrics_history, {"train_loss": exc.value}]
                exc.diagnosis = self._diagnose(failed, final=True)
                raise
            metrics.update(self.evaluate("val"))
            if self.world > 1:
                # Every rank evaluates the whole split (no sharding); rank 0's numbers are
                # everyone's, so that early stopping decides alike on every rank.
                metrics = self._broadcast(metrics)
            metrics["lr"] = lr
            metrics["epoch_seconds"] = time.perf_counter() - start
            if self.device.type == "cuda":
                # The most device memory the job's tensors took so far (this rank's GPU).
                metrics["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(self.device))

            value = metrics[self.early_stopping.monitor]
            is_best, stop = self.early_stopping.update(epoch, value)
            self.schedule.observe(metrics)
            self.epoch, self.last_value, self.stop = epoch, value, stop
            self.metrics_history.append(metrics)
            n = len(self.metrics_history)
            if (
                self._diagnosis is None
                or n <= DIAGNOSIS_EVERY_EPOCH
                or n % math.ceil(n / DIAGNOSIS_EVERY_EPOCH) == 0
                or stop is not None
                or epoch == self.spec.training.epochs
            ):
                self._diagnosis = self._diagnose(self.metrics_history, final=False)
            es = self.early_stopping
            record = EpochRecord(
                epoch=epoch,
                metrics=metrics,
                monitor=es.monitor,
                value=value,
                is_best=is_best,
                best_epoch=es.best_epoch,
                best_value=es.best_value,
                wait=es.wait,
                stop=stop,
                diagnosis=self._diagnosis,
            )
            self.history.append(record)
            if self._on_epoch_end is not None:
                self._on_epoch_end(self, record)
            if stop is not None:
                return self._result("succeeded", stop, epoch - first_epoch + 1)
        epochs = self.spec.training.epochs
        done = StopInfo("max_epochs", None, epochs, f"reached the epoch limit ({epochs})")
        return self._result("succeeded", done, max(0, epochs - first_epoch + 1))

    def _minibatch_epoch(self, epoch: int) -> dict[str, float]:
        """SGD: one optimizer step per batch of a fresh permutation of the training set."""
        bs = self.spec.training.batch_size
        # The epoch's order depends on (seed, epoch) only, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(self.spec.training.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data.x_train), generator=generator).to(self.device)
        # Shuffle once per epoch; each batch is then a cheap contiguous slice.
        x, y = self.data.x_train[order], self.data.y_train[order]
        starts = self._batch_starts(len(x))
        # Per-step values stay on the device until the epoch ends: reading one every step
        # (.item()) would make the CPU wait for the GPU at every step.
        losses, penalties, outputs, grad_norms = [], [], [], []
        should_stop, augment, task = self._should_stop, self._augment, self.task
        # Dense tasks keep per-step counts, not their per-pixel outputs.
        dense = task in ("reconstruction", "segmentation")
        world, local_sizes = self.world, []
        for step, start in enumerate(starts):
            if should_stop():
                raise _Cancelled(epoch, step + 1)
            xb, yb = x[start : start + bs], y[start : start + bs]
            if augment is not None:
                if task == "segmentation":
                    xb, yb = augment(xb, epoch, step, mask=yb)  # masks move with their images
                else:
                    xb = augment(xb, epoch, step)
            share = 1.0
            if world > 1:
                xb, yb, share = self._shard(xb, yb)
                local_sizes.append(len(xb))
            with self._amp():
                out = self._net(xb)
                loss = self._loss(out, xb if task == "reconstruction" else yb)
            penalty = self._penalty(self._penalized)
            objective = loss if share == 1.0 else loss * share
            self._backward(objective if penalty is None else objective + penalty)
            grad_norms.append(self._clip_gradients())
            self._step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if world > 1 and task == "classification":
                outputs.append((out.argmax(1) == yb).sum())  # this rank's rows: counted here
            elif not dense:
                outputs.append(out.detach())  # for the accuracy, counted once after the loop
            elif task == "segmentation":
                outputs.append((out.argmax(1) == yb).sum())
            if penalty is not None:
                penalties.append(penalty.detach())

        step_losses = torch.stack(losses)
        self._check_finite(step_losses, epoch)
        batch_sizes = [min(bs, len(x) - start) for start in starts]
        sizes = torch.tensor(batch_sizes, device=self.device, dtype=self.dtype)
        n = sum(batch_sizes)  # rows used (see _batch_starts)
        zero = x.new_zeros(())
        # Each step's per-parameter gradient norms (before clipping), steps × parameters.
        norms = torch.stack([norm for step in grad_norms for norm in step]).view(len(losses), -1)
        if world > 1:
            # Sums over this rank's rows, then over every rank: the global batches' means.
            local = torch.tensor(local_sizes, device=self.device, dtype=self.dtype)
            totals = torch.stack(
                [
                    (step_losses * local).sum(),
                    torch.stack(outputs).sum().to(self.dtype) if outputs else zero,
                ]
            )
            dist.all_reduce(totals)
            loss_mean = totals[0] / n
            per_row = n * (y[0].numel() if task == "segmentation" else 1)
            accuracy = totals[1] / per_row if task in ("classification", "segmentation") else zero
        else:
            loss_mean = (step_losses * sizes).sum() / n
            if task == "classification":
                accuracy = (torch.cat(outputs).argmax(1) == y[:n]).to(self.dtype).mean()
            elif task == "segmentation":
                accuracy = torch.stack(outputs).sum().to(self.dtype) / (n * y[0].numel())
            else:
                accuracy = zero
        stats = [
            loss_mean,
            (torch.stack(penalties) * sizes).sum() / n if penalties else zero,
            accuracy,
        ]
        extra = []
        if self._scaler is not None:
            # A step whose gradient was not finite was skipped by the scaler (which then
            # lowered its scale): counted, and left out of the gradient norms.
            finite = torch.isfinite(norms).all(1)
            extra = [(~finite).sum().to(self.dtype).reshape(1)]
            norms = norms[finite] if bool(finite.any()) else norms.nan_to_num()
        values = torch.cat([torch.stack(stats), self._norm_stats(norms), *extra]).tolist()
        if extra:
            metrics = self._train_metrics(*values[:-1])
            metrics["amp_skipped_steps"] = values[-1]
            return metrics
        return self._train_metrics(*values)

    def _full_batch_epoch(self, epoch: int) -> dict[str, float]:
        """Gradient descent (and L-BFGS): one step per epoch on the gradient of the whole
        training set, accumulated over chunks of batch_size rows, each weighted by its share
        of the rows so that they sum to the mean over every row.

        The loss and accuracy reported are those of the parameters after the step, measured
        in evaluation mode as the validation split is, so train_loss and val_loss (and their
        gap) describe the same model; grad_norm is the gradient's at the start of the epoch."""
        x, y = self.data.x_train, self.data.y_train
        chunks = self._full_batch_chunks(len(x))
        n, task, world = len(x), self.task, self.world
        first: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            if rng is not None:
                _set_step_rng(rng, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = x.new_zeros(())
            for chunk, (start, end) in enumerate(chunks):
                if self._should_stop():
                    raise _Cancelled(epoch, 1)
                xb, yb = x[start:end], y[start:end]
                if self._augment is not None:
                    # Seeded by (epoch, chunk): every evaluation of the closure sees the same data.
                    if task == "segmentation":
                        xb, yb = self._augment(xb, epoch, chunk, mask=yb)
                    else:
                        xb = self._augment(xb, epoch, chunk)
                if world > 1:
                    # This rank's rows of each chunk; gradients accumulate here and are
                    # averaged over the ranks once, in the last chunk's backward.
                    weight = len(xb) / n
                    xb, yb, share = self._shard(xb, yb)
                    last = chunk == len(chunks) - 1
                    with self._amp(), contextlib.ExitStack() as stack:
                        if not last:
                            stack.enter_context(self._net.no_sync())  # type: ignore[operator]
                        out = self._net(xb)
                        target = xb if task == "reconstruction" else yb
                        loss = self._loss(out, target) * weight
                        term = loss * share
                        penalty = self._penalty(self._penalized) if last else None
                        self._backward(term if penalty is None else term + penalty)
                    loss_sum += loss.detach() * share / world
                    continue
                with self._amp():
                    out = self.model(xb)
                    # Each chunk weighs by its share of the rows: the chunks sum to the mean.
                    target = xb if task == "reconstruction" else yb
                    loss = task_loss(out, target, task) * (len(xb) / n)
                self._backward(loss)
                loss_sum += loss.detach()
            objective = loss_sum
            penalty = self._penalty(self._penalized)
            if penalty is not None:
                if world == 1:
                    self._backward(penalty)
                objective = loss_sum + penalty.detach()
            if not first:
                first["norms"] = torch.stack(self._grad_norms())
            return objective

        rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if isinstance(self.optimizer, torch.optim.LBFGS):
            # L-BFGS evaluates the closure many times within a step (its line search compares
            # the values): each evaluation draws the same dropout masks, so that it minimizes
            # one function, not a new random one at every evaluation.
            rng = _get_step_rng(self.device)
            self.optimizer.step(closure)
        else:
            closure()
            norms = self._clip_gradients()
            if self._scaler is not None:
                first["norms"] = torch.stack(norms)  # unscaled
            self._step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._after_step(epoch, first["norms"])

    def _after_step(self, epoch: int, norms: torch.Tensor) -> dict[str, float]:
        """A full-batch epoch's metrics: the training split's loss and accuracy measured
        after the step (as the validation split's are), the penalty of the new weights."""
        after = measure(
            self.model,
            self.data.x_train,
            self.data.y_train,
            self.task,
            self._eval_chunk,
            self.precision,
        )
        if self.world > 1:
            after = self._broadcast(after)
        self._check_finite(torch.tensor([after["loss"]]), epoch)
        with torch.no_grad():
            penalty = self._penalty(self._penalized)
        return self._train_metrics(
            after["loss"],
            float(penalty) if penalty is not None else 0.0,
            after.get("accuracy", 0.0),
            *self._norm_stats(norms.view(1, -1)).tolist(),
        )

    def _newton_epoch(self, epoch: int) -> dict[str, float]:
        """Newton's method: one step with the exact Hessian of the full training loss.

        The loss is written as a pure function of the flat parameter vector (torch.func
        differentiates it twice), one term per chunk of the training set plus the penalty.
        Metrics are those after the step, as for _full_batch_epoch.
        """
        assert isinstance(self.optimizer, Newton)
        x, y = self.data.x_train, self.data.y_train
        chunks = self._full_batch_chunks(len(x))
        n = len(x)
        names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        shapes = [p.shape for p in self._params]
        numels = [p.numel() for p in self._params]
        penalized = [i for i, p in enumerate(self._params) if decayed(p)]
        penalty = self._penalty(self._penalized)

        def term(flat: torch.Tensor, i: int) -> torch.Tensor:
            if self._should_stop():
                raise _Cancelled(epoch, 1)
            tensors = [t.view(s) for t, s in zip(torch.split(flat, numels), shapes, strict=True)]
            if i == len(chunks):
                penalty = self._penalty([tensors[j] for j in penalized])
                assert penalty is not None
                return penalty
            start, end = chunks[i]
            xb, yb = x[start:end], y[start:end]
            out = torch.func.functional_call(
                self.model, dict(zip(names, tensors, strict=True)), (xb,)
            )
            return task_loss(out, yb, self.task) * (len(xb) / n)

        objective = self.optimizer.step(term, n_terms=len(chunks) + (penalty is not None))
        self._check_finite(objective.reshape(1), epoch)
        norms = torch.stack(self._grad_norms())
        self.optimizer.zero_grad(set_to_none=True)
        return self._after_step(epoch, norms)

    # ------------------------------------------------------------------ pieces of the loop

    def _batch_starts(self, n: int) -> list[int]:
        starts = list(range(0, n, self.spec.training.batch_size))
        if self._has_batch_norm and len(starts) > 1 and (n - starts[-1]) // self.world < 2:
            # A last batch of one row (one per rank) has no batch statistics: skip it.
            starts.pop()
        return starts

    # ------------------------------------------------------------------ several processes

    def _shard(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's contiguous share of a global batch, and the factor its mean loss is
        scaled by so that DDP's average over the ranks is the global batch's mean loss
        (1 when the batch splits evenly)."""
        m = len(xb)
        lo, hi = self.rank * m // self.world, (self.rank + 1) * m // self.world
        return xb[lo:hi], yb[lo:hi], (hi - lo) * self.world / m

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if len(out) == 0:  # a rank's empty share of a short last batch
            return out.sum() * 0.0
        return task_loss(out, target, self.task)

    def _broadcast(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rank 0's values of these metrics, on every rank."""
        names = sorted(metrics)
        values = torch.tensor([metrics[k] for k in names], dtype=torch.float64)
        values = values.to(self.device)
        dist.broadcast(values, 0)
        return dict(zip(names, values.tolist(), strict=True))

    def _agreed(self, should_stop: Any) -> Any:
        group = self._stop_group

        def agreed() -> bool:
            vote = torch.tensor([1 if should_stop() else 0], dtype=torch.int32)
            dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=group)
            return bool(vote.item())

        return agreed

    def _full_batch_chunks(self, n: int) -> list[tuple[int, int]]:
        """(start, end) of the chunks a full-batch epoch sums over: every row once. With batch
        norm a last chunk of one row (which has no batch statistics) joins the one before."""
        bs = self.spec.training.batch_size
        chunks = [(start, min(start + bs, n)) for start in range(0, n, bs)]
        if self._has_batch_norm and len(chunks) > 1 and chunks[-1][1] - chunks[-1][0] == 1:
            chunks[-2:] = [(chunks[-2][0], n)]
        return chunks

    def _penalty(self, weights: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """l1·Σ|w| + (l2/2)·Σw² over weight matrices and kernels, or None when both are 0."""
        reg = self.spec.regularization
        if not (reg.l1 or reg.l2):
            return None
        total = torch.zeros((), device=self.device, dtype=self.dtype)
        if reg.l1:
            total = total + reg.l1 * sum(w.abs().sum() for w in weights)
        if reg.l2:
            total = total + (reg.l2 / 2) * sum(w.pow(2).sum() for w in weights)
        return total

    def _grad_norms(self) -> tuple[torch.Tensor, ...]:
        """The norm of each parameter's gradient (0-d tensors, one kernel for all)."""
        return torch._foreach_norm(
            [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        )

    def _norm_stats(self, norms: torch.Tensor) -> torch.Tensor:
        """From per-parameter gradient norms (steps × parameters): the mean over the steps of
        the whole gradient's norm, then of each layer's, as one vector (1 + layers)."""
        squares = norms.square()
        whole = squares.sum(1).sqrt().mean().reshape(1)
        return torch.cat([whole, (squares @ self._layer_matrix).sqrt().mean(0)])

    def _clip_gradients(self) -> tuple[torch.Tensor, ...]:
        """Clip by norm and/or value; return each parameter's gradient norm from before clipping."""
        reg = self.spec.regularization
        if self._scaler is not None and self.optimizer.param_groups:
            self._scaler.unscale_(self.optimizer)  # clip (and report) the true gradient
        norms = self._grad_norms()
        if reg.grad_clip_norm is not None:
            total = torch.linalg.vector_norm(torch.stack(norms))
            torch.nn.utils.clip_grads_with_norm_(
                self._params, reg.grad_clip_norm, total, foreach=True
            )
        if reg.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self._params, reg.grad_clip_value, foreach=True)
        return norms

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            step = int((~finite).nonzero()[0, 0])
            raise NonFiniteLoss(float(losses[step]), epoch, step + 1)

    def _train_metrics(
        self, loss: float, penalty: float, accuracy: float, grad_norm: float, *layers: float
    ) -> dict[str, float]:
        metrics = {"train_loss": loss}
        if self.task in ("classification", "segmentation"):
            metrics["train_accuracy"] = accuracy
        reg = self.spec.regularization
        if reg.l1 or reg.l2:
            metrics["penalty"] = penalty  # train_loss + penalty is the objective minimized
        metrics["grad_norm"] = grad_norm
        for name, value in zip(self._layer_names, layers, strict=True):
            metrics[GRAD_NORM_PREFIX + name] = value  # per layer, mean over the epoch's steps
        return metrics

    def _diagnose(self, history: list[dict[str, float]], *, final: bool) -> dict[str, Any]:
        return diagnose(
            history,
            task=self.task,
            majority_baseline=self.data.majority_baseline,
            shared_samples=self.data.shared_samples,
            final=final,
            initial=self.initial_metrics,
            regularization=self._regularization,
        )

    def _result(self, status: str, stop: StopInfo, epochs_run: int) -> FitResult:
        es = self.early_stopping
        return FitResult(
            status=status,  # type: ignore[arg-type]
            stop=stop,
            monitor=es.monitor,
            mode=es.mode,
            best_epoch=es.best_epoch,
            best_value=es.best_value if es.best_epoch else None,
            last_epoch=self.epoch,
            last_value=self.last_value,
            epochs_run=epochs_run,
            history=list(self.history),
            diagnosis=self._diagnose(self.metrics_history, final=True),
            warnings=list(self.warnings),
            parameters=self.parameter_counts(),
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """{"<split>_loss": …, "<split>_accuracy": …} of the current model in eval mode."""
        if not self._is_setup:
            self.setup()
        x, y = self.data.split(split)
        measured = measure(self.model, x, y, self.task, self._eval_chunk, self.precision)
        return {f"{split}_{k}": v for k, v in measured.items()}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str | PathLike[str], stem: str) -> CheckpointFiles:
        """Write <stem>.safetensors (weights) and <stem>.state.pt (resume state) atomically."""
        return self.snapshot().save(Path(directory), stem)

    def snapshot(self) -> CheckpointSnapshot:
        """What a checkpoint of the current epoch holds (weights, their metadata, the resume
        state), every tensor copied to the CPU: training may go on at once, and the copy be
        written later on another thread (what the worker does)."""
        value = self.last_value if self.last_value is not None else math.nan
        monitor = self.early_stopping.monitor
        metadata = weights_metadata(self.spec, self.epoch, monitor, value, self._spec_facts)
        # What rebuilding the model takes beyond the spec: an upload's shape, the backbone
        # job's spec (see core.checkpoint.load_model).
        if self.spec.dataset.source == "upload":
            metadata["dataset_info"] = json.dumps(self.data.info.to_meta())
        if self.spec.source is not None:
            metadata["backbone_spec"] = self.spec.source.model_dump_json()
        # Separate contiguous copies: safetensors refuses tensors that share storage.
        weights = {
            name: tensor.detach().to("cpu", copy=True).contiguous()
            for name, tensor in self.model.state_dict().items()
        }
        return CheckpointSnapshot(weights, metadata, _cpu_copy(self._state_dict()))

    def load_checkpoint(
        self, state_path: str | PathLike[str], weights_path: str | PathLike[str]
    ) -> None:
        """Restore a saved run; train() then continues with the next epoch."""
        if not self._is_setup:
            self.setup()
        state = load_state(state_path)
        if state.get("version") != STATE_VERSION:
            raise TrainingError(
                f"{state_path}: unknown resume state version {state.get('version')!r}"
            )
        saved, processes = state.get("processes", 1), self.spec.training.processes
        if saved != processes:
            raise TrainingError(
                f"{state_path} was written by a run on {saved} process(es) and this one has "
                f"{processes}: a job resumes on as many processes as it started with (each "
                "rank's share of the batches and its random streams depend on their number)"
            )
        if state["spec_hash"] != self.spec.spec_hash():
            raise TrainingError(
                f"{state_path} was written for a different spec (hash {state['spec_hash'][:12]}…)"
            )
        load_weights(self.model, weights_path, self.device)
        if self._unfreezes_at(state["epoch"]):
            self._unfreeze()  # the saved optimizer has the backbone's groups
        self.optimizer.load_state_dict(state["optimizer"])
        if self._scaler is not None and state.get("scaler"):
            self._scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.epoch, self.last_value = state["epoch"], state["last_value"]
        self.stop = StopInfo.from_dict(state["stop"]) if state["stop"] else None
        self.metrics_history = _history_from_state(state.get("diagnosis_history"))
        self.initial_metrics = state.get("initial_metrics")
        _set_rng_state(state["rng"])

    def _history_state(self) -> dict[str, Any]:
        """What the diagnosis reads of the epochs so far, compactly: the series it follows as
        one float64 tensor (a resume state is written every epoch; a list of dicts of every
        metric would make a 10,000-epoch job write gigabytes), plus the last epoch in full
        (its per-layer gradient norms)."""
        history = self.metrics_history
        names = [n for n in _SERIES if history and n in history[0]]
        series = self._series
        if series is None or series[0] is not history or series[1] != names:
            # Read from the start: a new run, or a history restored from a checkpoint.
            series = (history, names, torch.empty((64, len(names)), dtype=torch.float64), 0)
        _, _, values, rows = series
        n = len(history)
        if n > values.shape[0]:  # grown by doubling: appending stays cheap
            values = torch.cat(
                [values[:rows], torch.empty((2 * n - rows, len(names)), dtype=values.dtype)]
            )
        if n > rows:
            new = [[m.get(name, math.nan) for name in names] for m in history[rows:n]]
            values[rows:n] = torch.tensor(new, dtype=torch.float64).reshape(n - rows, len(names))
        self._series = (history, names, values, n)
        last = dict(history[-1]) if history else None
        # A copy of the rows so far (a slice would save the whole buffer).
        return {"names": names, "values": values[:n].clone(), "last": last}

    @functools.cached_property
    def _spec_facts(self) -> tuple[str, str]:
        """The spec's hash and JSON, in every checkpoint of the run: computed once (each is
        a dump of the whole spec)."""
        return self.spec.spec_hash(), self.spec.model_dump_json()

    def _state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "spec_hash": self._spec_facts[0],
            "epoch": self.epoch,
            "last_value": self.last_value,
            "stop": self.stop.to_dict() if self.stop else None,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "diagnosis_history": self._history_state(),
            "initial_metrics": self.initial_metrics,
            "rng": _rng_state(),
            "processes": self.spec.training.processes,
            **({"scaler": self._scaler.state_dict()} if self._scaler is not None else {}),
        }


@dataclass
class CheckpointSnapshot:
    """A checkpoint's contents on the CPU (see Trainer.snapshot), not yet written."""

    weights: dict[str, torch.Tensor]
    metadata: dict[str, str]
    state: dict[str, Any]

    def encode_weights(self) -> bytes:
        """The weights file's contents (safetensors, with the metadata)."""
        return safetensors.torch.save(self.weights, metadata=self.metadata)

    def encode_state(self) -> bytes:
        """The resume state file's contents."""
        return state_bytes(self.state)

    def save(self, directory: Path, stem: str) -> CheckpointFiles:
        """<stem>.safetensors and <stem>.state.pt, each written atomically and fsynced."""
        weights_path = directory / f"{stem}{WEIGHTS_SUFFIX}"
        state_path = directory / f"{stem}{STATE_SUFFIX}"
        weights = self.encode_weights()
        atomic_write(weights_path, weights)
        atomic_write(state_path, self.encode_state())
        return CheckpointFiles(
            weights_path, state_path, len(weights), hashlib.sha256(weights).hexdigest()
        )


def _cpu_copy(value: Any) -> Any:
    """A deep copy of a state (dicts, lists, tuples of tensors and plain values) whose
    tensors are detached copies on the CPU: training may go on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_cpu_copy(item) for item in value)
    return value


# The per-epoch metrics the diagnosis follows over the whole run (see _history_state).
_SERIES = ("train_loss", "val_loss", "train_accuracy", "grad_norm")


def _history_from_state(state: dict[str, Any] | None) -> list[dict[str, float]]:
    if not state or state["last"] is None:
        return []
    history = [dict(zip(state["names"], row, strict=True)) for row in state["values"].tolist()]
    history[-1] = dict(state["last"])
    return history


def fit(
    spec: JobSpec | dict[str, Any],
    *,
    device: str | torch.device | None = None,
    hooks: Hooks | TrainerHooks | None = None,
    dtype: torch.dtype = torch.float32,
    resources: Resources | None = None,
) -> FitResult:
    """Train a spec from scratch: Trainer(spec, ...).setup().train(); a spec for several
    processes launches them (core.distributed.fit; hooks are not supported there)."""
    parsed = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    if parsed.training.processes > 1 and not dist.is_initialized() and hooks is None:
        from core import distributed  # it imports this module

        return distributed.fit(parsed, device=str(device) if device else None, resources=resources)
    trainer = Trainer(parsed, device=device, hooks=hooks, dtype=dtype, resources=resources)
    return trainer.setup().train()


def _get_step_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_step_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# RNG states as tensors and plain values, so torch.load(weights_only=True) can read them back.
def _rng_state() -> dict[str, Any]:
    # legacy=True is the default; the global MT19937 generator's legacy state is this tuple.
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    name, keys, pos, has_gauss, cached = state
    version, words, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        # Its 625 words as one tensor: a tuple of ints is copied and pickled word by word.
        "python": (version, torch.tensor(words, dtype=torch.int64), gauss),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (np_state["name"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    version, words, gauss = state["python"]
    if isinstance(words, torch.Tensor):  # a state written before held a tuple of ints
        words = words.tolist()
    random.setstate((version, tuple(words), gauss))
