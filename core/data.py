"""Built-in datasets as tensors that live on the training device.

The datasets are small (at most a few thousand rows), so the whole split sits on the device
and the training loop slices batches out of it: no DataLoader, no per-batch host copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split

from core.spec import DatasetInfo, DatasetSpec


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


def raw_arrays(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's features (n, features) and labels/targets as numpy arrays."""
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
    }[spec.name]
    bunch = loader()
    return bunch.data, bunch.target


def shared_samples(x_train: np.ndarray, x_val: np.ndarray) -> int:
    """How many validation rows have exactly the inputs of some training row.

    A model scores these from memory, so they make the validation loss look better than the
    model generalizes (leakage). Rows compare by their bytes, in one pass of hashing.
    """
    x_train = np.ascontiguousarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    x_val = np.ascontiguousarray(x_val, dtype=np.float64).reshape(len(x_val), -1)
    x_train, x_val = x_train + 0.0, x_val + 0.0  # -0.0 → 0.0, so equal values hash equal
    seen = {row.tobytes() for row in x_train}
    return sum(row.tobytes() in seen for row in x_val)


def majority_baseline(y_train: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent training class."""
    _, counts = np.unique(y_train, return_counts=True)
    return float(counts.max() / counts.sum())


def load_data(
    spec: DatasetSpec,
    *,
    images: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Split by spec.seed (stratified for classification) and standardize with train statistics.

    images=True returns image datasets as (N, C, H, W) for a CNN, standardized per channel;
    otherwise rows are flat and standardized per feature.
    """
    info = spec.info()
    x, y = raw_arrays(spec)
    classification = info.task == "classification"
    x_tr, x_va, y_tr, y_va = train_test_split(
        x,
        y,
        test_size=spec.val_fraction,
        random_state=spec.seed,
        stratify=y if classification else None,
    )
    shared = shared_samples(x_tr, x_va)  # on the raw inputs, before any scaling
    baseline = majority_baseline(y_tr) if classification else None
    if images:
        if info.image_shape is None:
            raise ValueError(f"dataset {spec.name!r} has no images")
        x_tr = x_tr.reshape(-1, *info.image_shape)
        x_va = x_va.reshape(-1, *info.image_shape)
        axes: tuple[int, ...] = (0, 2, 3)
    else:
        axes = (0,)
    # Statistics of the training split only: using validation rows would leak them into training.
    mean = x_tr.mean(axis=axes, keepdims=True)
    std = x_tr.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0  # constant features (e.g. digits' always-blank corner pixels)
    x_tr = (x_tr - mean) / std
    x_va = (x_va - mean) / std

    def tensor(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dt).to(device)

    t_mean, t_std = 0.0, 1.0
    if classification:
        label_dtype = torch.int64
    else:
        # Targets of make_regression are in the hundreds; standardized, the lr means the same
        # thing on every dataset.
        t_mean, t_std = float(y_tr.mean()), float(y_tr.std()) or 1.0
        y_tr, y_va = (y_tr - t_mean) / t_std, (y_va - t_mean) / t_std
        label_dtype = dtype
    return Data(
        x_train=tensor(x_tr, dtype),
        y_train=tensor(y_tr, label_dtype),
        x_val=tensor(x_va, dtype),
        y_val=tensor(y_va, label_dtype),
        info=info,
        mean=mean.squeeze(0),
        std=std.squeeze(0),
        target_mean=t_mean,
        target_std=t_std,
        shared_samples=shared,
        majority_baseline=baseline,
    )
