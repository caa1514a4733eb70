import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from core.data import load_data, raw_arrays
from core.spec import DatasetSpec


def ds(**kw) -> DatasetSpec:
    return DatasetSpec.model_validate(kw)


def test_split_is_deterministic_by_seed() -> None:
    a = load_data(ds(name="wine", seed=3))
    b = load_data(ds(name="wine", seed=3))
    c = load_data(ds(name="wine", seed=4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)


def test_split_sizes_and_stratification() -> None:
    spec = ds(name="iris", val_fraction=0.2)
    data = load_data(spec)
    assert (len(data.x_train), len(data.x_val)) == spec.split_sizes() == (120, 30)
    # Stratified: each of the 3 balanced classes keeps its share in the validation split.
    assert torch.bincount(data.y_val).tolist() == [10, 10, 10]
    assert data.y_train.dtype == torch.int64 and data.x_train.dtype == torch.float32


def test_standardization_uses_training_statistics_only() -> None:
    spec = ds(name="breast_cancer", seed=1)
    data = load_data(spec, dtype=torch.float64)
    x, y = raw_arrays(spec)
    x_tr, x_va, _, _ = train_test_split(x, y, test_size=0.2, random_state=1, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)
    np.testing.assert_allclose(data.mean, mean)
    np.testing.assert_allclose(data.x_val.numpy(), (x_va - mean) / std, rtol=1e-12, atol=1e-12)
    # Train is exactly standardized; validation only approximately (it did not set the stats).
    np.testing.assert_allclose(data.x_train.mean(0).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(data.x_train.std(0, unbiased=False).numpy(), 1, atol=1e-12)
    assert np.abs(data.x_val.mean(0).numpy()).max() > 1e-3


def test_digits_as_images_and_rows() -> None:
    images = load_data(ds(name="digits"), images=True)
    rows = load_data(ds(name="digits"))
    assert images.x_train.shape[1:] == (1, 8, 8) and rows.x_train.shape[1:] == (64,)
    assert torch.equal(images.y_train, rows.y_train)
    # One channel, standardized by a single mean and std over all its pixels.
    assert abs(float(images.x_train.mean())) < 1e-5 and images.mean.shape == (1, 1, 1)


def test_generated_datasets_follow_the_spec() -> None:
    moons = load_data(ds(name="moons", n_samples=100, noise=0.1))
    assert moons.x_train.shape == (80, 2) and moons.info.num_classes == 2
    reg = load_data(ds(name="regression", n_samples=50, n_features=3))
    assert reg.x_train.shape == (40, 3) and reg.y_train.dtype == torch.float32
    assert reg.target_std > 1  # raw targets are far from unit scale; stored ones are standardized
    assert abs(float(reg.y_train.mean())) < 1e-5


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_data(ds(name="iris")).split("test")


def test_leakage_count_and_majority_baseline_come_with_the_data() -> None:
    iris = load_data(ds(name="iris"))
    assert iris.shared_samples == 1  # iris's one duplicated flower, split across
    assert iris.majority_baseline == pytest.approx(1 / 3)
    digits = load_data(ds(name="digits"))
    assert digits.shared_samples == 0
    assert digits.majority_baseline == pytest.approx(146 / 1437)  # classes 1 and 3
    regression = load_data(ds(name="regression", n_samples=50))
    assert regression.majority_baseline is None
