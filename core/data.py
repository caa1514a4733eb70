"""Datasets as tensors that live on the training device.

Built-in datasets (scikit-learn's, and the generated moons, regression and shapes) and
uploaded ones (core.uploads reads them from the files in core.resources.Resources). They
are small enough that the whole split sits on the device and the training loop slices
batches out of it: no DataLoader, no per-batch host copies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split

from core.errors import InvalidUpload, TrainingError
from core.resources import Resources
from core.spec import DatasetInfo, DatasetSpec

# standardize: per feature (per channel for images) with the training split's statistics;
# unit: pixels divided by the format's maximum, to [0, 1] (what pretrained torchvision
# backbones take; the model normalizes them further itself).
Scaling = Literal["standardize", "unit"]


@dataclass
class Data:
    """Standardized train/validation tensors and the statistics used to standardize them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    info: DatasetInfo
    mean: np.ndarray  # feature (or channel) mean of the training split
    std: np.ndarray
    target_mean: float = 0.0  # regression targets are standardized too; 0/1 otherwise
    target_std: float = 1.0
    # Validation samples whose inputs equal a training sample's: leakage (see shared_samples).
    shared_samples: int = 0
    # Share of the most frequent class in the training split: the accuracy of always
    # predicting it. None for regression.
    majority_baseline: float | None = None

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.x_train, self.y_train
        if name == "val":
            return self.x_val, self.y_val
        raise ValueError(f"unknown split {name!r}: use 'train' or 'val'")


def make_shapes(
    n_samples: int, image_size: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Squares and circles on a background: images (N, 3, S, S) in [0, 1] and masks (N, S, S)
    of core.spec.SHAPES_CLASSES (0 background, 1 square, 2 circle).

    Each image has a dark background of a random colour and 1 to 3 shapes of random bright
    colours and sizes, later shapes over earlier ones; Gaussian noise of std `noise` on top.
    Colour says shape from background; only the outline says square from circle.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    rows, cols = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    x = np.empty((n_samples, 3, s, s), dtype=np.float64)
    y = np.zeros((n_samples, s, s), dtype=np.int64)
    for i in range(n_samples):
        image = np.broadcast_to(rng.uniform(0.0, 0.35, (3, 1, 1)), (3, s, s)).copy()
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(1, 3))
            r = rng.uniform(s / 8, s / 4)
            cy, cx = rng.uniform(r, s - r, 2)
            if kind == 1:
                inside = (np.abs(rows - cy) <= r) & (np.abs(cols - cx) <= r)
            else:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            image[:, inside] = rng.uniform(0.55, 1.0, (3, 1))
            y[i, inside] = kind
        x[i] = image
    x += rng.normal(0.0, noise, x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


def raw_arrays(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset's inputs, (n, features) or (n, C, H, W) for shapes, and its
    labels/targets (masks for shapes) as numpy arrays."""
    if spec.name == "shapes":
        assert spec.n_samples and spec.image_size and spec.noise is not None
        return make_shapes(spec.n_samples, spec.image_size, spec.noise, spec.seed)
    if spec.name == "moons":
        return skdatasets.make_moons(
            n_samples=spec.n_samples, noise=spec.noise, random_state=spec.seed
        )
    if spec.name == "regression":
        x, y = skdatasets.make_regression(
            n_samples=spec.n_samples,
            n_features=spec.n_features,
            noise=spec.noise,
            random_state=spec.seed,
        )
        return x, y
    loader = {
        "digits": skdatasets.load_digits,
        "iris": skdatasets.load_iris,
        "wine": skdatasets.load_wine,
        "breast_cancer": skdatasets.load_breast_cancer,
    }[spec.name or ""]
    bunch = loader()
    return bunch.data, bunch.target


def shared_samples(x_train: np.ndarray, x_val: np.ndarray) -> int:
    """How many validation rows have exactly the inputs of some training row.

    A model scores these from memory, so they make the validation loss look better than the
    model generalizes (leakage). Rows compare by their bytes, in one pass of hashing.
    """
    x_train = np.ascontiguousarray(x_train).reshape(len(x_train), -1)
    x_val = np.ascontiguousarray(x_val).reshape(len(x_val), -1)
    if x_train.dtype.kind == "f" or x_val.dtype != x_train.dtype:
        x_train = x_train.astype(np.float64) + 0.0  # -0.0 → 0.0, so equal values hash equal
        x_val = x_val.astype(np.float64) + 0.0
    seen = {row.tobytes() for row in x_train}
    return sum(row.tobytes() in seen for row in x_val)


def majority_baseline(y_train: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent training class."""
    _, counts = np.unique(y_train, return_counts=True)
    return float(counts.max() / counts.sum())


def read_source(
    spec: DatasetSpec, resources: Resources | None = None
) -> tuple[np.ndarray, np.ndarray, DatasetInfo, dict | None]:
    """(x, y, info, upload metadata or None) of a built-in or uploaded dataset; from the
    resources' ``read_cache`` when this process read the same one before (its arrays are
    then read-only: every use copies them, splitting)."""
    cache = resources.read_cache if resources is not None else None
    path = None
    if spec.source == "upload":
        assert spec.id is not None
        path = (resources or Resources()).dataset(spec.id)
    key = None
    if cache is not None:
        key = _cache_key(spec, path)
        found = cache.get(key)
        if found is not None:
            x, y, info, meta = found
            return x, y, info, copy.deepcopy(meta)
    if path is None:
        x, y = raw_arrays(spec)
        info, meta = spec.info(), None
    else:
        from core.uploads import read_dataset

        try:
            x, y, meta = read_dataset(path, spec.format, spec.target)
        except InvalidUpload as exc:
            raise TrainingError(f"dataset upload {spec.id!r} cannot be used: {exc}") from None
        info = DatasetInfo.from_upload(meta)
    if cache is not None:
        x, y = np.asarray(x), np.asarray(y)
        x.flags.writeable = y.flags.writeable = False
        cache.put(key, (x, y, info, copy.deepcopy(meta)), x.nbytes + y.nbytes)
    return x, y, info, meta


def _cache_key(spec: DatasetSpec, path: Path | None) -> tuple[object, ...]:
    """A dataset's key in a DatasetCache: the whole dataset spec (split included), and for
    an upload its file as it is now."""
    stat = path.stat() if path is not None else None
    return (spec.model_dump_json(), str(path), stat and (stat.st_size, stat.st_mtime_ns))


def load_data(
    spec: DatasetSpec,
    *,
    images: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    resources: Resources | None = None,
    task: str | None = None,
    scaling: Scaling = "standardize",
    read: tuple[np.ndarray, np.ndarray, DatasetInfo, dict | None] | None = None,
) -> Data:
    """Split by spec.seed (stratified for classification datasets), keep train_size rows of
    the training split, and scale with its statistics.

    images=True returns image datasets as (N, C, H, W) for convolutional models, standardized
    per channel; otherwise rows are flat and standardized per feature. task (default: the
    dataset's) picks the targets: class indices, standardized values (regression) or masks.
    read: what read_source() gave, when the caller has read the dataset already.
    With the resources' ``read_cache`` (a worker's), the split and scaled arrays are kept
    too: the next job on the same dataset (a study's trial) only copies them to tensors.
    """
    x, y, info, meta = read if read is not None else read_source(spec, resources)
    cache = resources.read_cache if resources is not None else None
    key = None
    if resources is not None and cache is not None:
        path = resources.dataset(spec.id) if spec.source == "upload" and spec.id else None
        key = ("split", _cache_key(spec, path), images, task, scaling)
        kept = cache.get(key)
        if kept is not None:
            return _to_tensors(kept, info, device, dtype)
    split = _split(x, y, info, meta, spec, images=images, task=task, scaling=scaling)
    if cache is not None:
        for array in split.arrays():
            array.flags.writeable = False
        cache.put(key, split, sum(a.nbytes for a in split.arrays()))
    return _to_tensors(split, info, device, dtype)


@dataclass
class _Split:
    """load_data's arrays before they become tensors (what a DatasetCache keeps)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    target_mean: float
    target_std: float
    shared_samples: int
    majority_baseline: float | None
    labels: bool  # class indices (int64), else values in the model's dtype

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.x_train, self.y_train, self.x_val, self.y_val, self.mean, self.std


def _to_tensors(
    split: _Split, info: DatasetInfo, device: torch.device | str, dtype: torch.dtype
) -> Data:
    def tensor(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        # A copy: the arrays may be a cache's, kept for the next job.
        return torch.tensor(a, dtype=dt).to(device)

    label_dtype = torch.int64 if split.labels else dtype
    return Data(
        x_train=tensor(split.x_train, dtype),
        y_train=tensor(split.y_train, label_dtype),
        x_val=tensor(split.x_val, dtype),
        y_val=tensor(split.y_val, label_dtype),
        info=info,
        mean=split.mean.squeeze(0).copy(),
        std=split.std.squeeze(0).copy(),
        target_mean=split.target_mean,
        target_std=split.target_std,
        shared_samples=split.shared_samples,
        majority_baseline=split.majority_baseline,
    )


def _split(
    x: np.ndarray,
    y: np.ndarray,
    info: DatasetInfo,
    meta: dict | None,
    spec: DatasetSpec,
    *,
    images: bool,
    task: str | None,
    scaling: Scaling,
) -> _Split:
    task = task or info.task
    if task == "reconstruction":
        task = info.task  # the targets are kept as they are; the loss ignores them
    classes = info.task == "classification"
    x_tr, x_va, y_tr, y_va = train_test_split(
        x,
        y,
        test_size=spec.val_fraction,
        random_state=spec.seed,
        stratify=y if classes else None,
    )
    if spec.train_size is not None and spec.train_size < len(x_tr):
        x_tr, _, y_tr, _ = train_test_split(
            x_tr,
            y_tr,
            train_size=spec.train_size,
            random_state=spec.seed,
            stratify=y_tr if classes else None,
        )
    if meta is not None and task == "regression":
        from core.uploads import classification_labels

        y_tr = classification_labels(meta, y_tr, task)
        y_va = classification_labels(meta, y_va, task)
    shared = shared_samples(x_tr, x_va)  # on the raw inputs, before any scaling
    baseline = majority_baseline(y_tr) if task in ("classification", "segmentation") else None
    if x_tr.dtype.kind != "f":
        # 8-bit images: float32 is exact for them and a quarter of float64's memory.
        x_tr, x_va = x_tr.astype(np.float32), x_va.astype(np.float32)
    if images:
        if info.image_shape is None:
            raise ValueError(f"dataset {spec.label} has no images")
        x_tr = x_tr.reshape(-1, *info.image_shape)
        x_va = x_va.reshape(-1, *info.image_shape)
        axes: tuple[int, ...] = (0, 2, 3)
    else:
        x_tr = x_tr.reshape(len(x_tr), -1)
        x_va = x_va.reshape(len(x_va), -1)
        axes = (0,)
    if scaling == "unit":
        if info.pixel_max is None or not images:
            raise ValueError(f"dataset {spec.label} has no images to scale to [0, 1]")
        x_tr, x_va = x_tr / info.pixel_max, x_va / info.pixel_max
        mean = np.zeros((1, x_tr.shape[1], 1, 1))
        std = np.ones((1, x_tr.shape[1], 1, 1))
    else:
        # Statistics of the training split only: validation rows would leak into training.
        mean = x_tr.mean(axis=axes, keepdims=True)
        std = x_tr.std(axis=axes, keepdims=True)
        std[std == 0] = 1.0  # constant features (e.g. digits' always-blank corner pixels)
        x_tr = (x_tr - mean) / std
        x_va = (x_va - mean) / std

    t_mean, t_std = 0.0, 1.0
    labels = task in ("classification", "segmentation")
    if not labels:
        # Targets of make_regression are in the hundreds; standardized, the lr means the same
        # thing on every dataset.
        t_mean, t_std = float(y_tr.mean()), float(y_tr.std()) or 1.0
        y_tr, y_va = (y_tr - t_mean) / t_std, (y_va - t_mean) / t_std
    c = np.ascontiguousarray
    return _Split(
        c(x_tr), c(y_tr), c(x_va), c(y_va), c(mean), c(std), t_mean, t_std, shared, baseline, labels
    )
