from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------ uploads and generated


def test_uploaded_datasets_train_like_builtin_ones(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris

    from core.resources import Resources
    from core.train import Trainer
    from core.uploads import inspect_dataset
    from tests.core.builders import png_bytes, write_zip

    iris = load_iris()
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [
        ",".join(f"{v:g}" for v in row) + f",{iris.target_names[t]}"
        for row, t in zip(iris.data, iris.target, strict=True)
    ]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    colours = {"red": (200, 20, 20), "blue": (20, 20, 200)}
    entries = {f"{c}/{i}.png": png_bytes(rgb) for c, rgb in colours.items() for i in range(6)}
    write_zip(tmp_path / "folder.zip", entries)
    masks = np.zeros((30, 8, 8), dtype=np.int64)
    masks[:, 2:5, 2:5] = 1
    images = np.where(masks[:, None] == 1, 0.9, 0.1) + np.random.default_rng(0).normal(
        0, 0.05, (30, 1, 8, 8)
    )
    np.savez(tmp_path / "masks.npz", x=images.astype(np.float32), y=masks)
    resources = Resources(
        datasets={
            "iris": tmp_path / "iris.csv",
            "folder": tmp_path / "folder.zip",
            "masks": tmp_path / "masks.npz",
        }
    )
    meta = inspect_dataset(tmp_path / "iris.csv", "csv", target="species")
    assert meta["class_names"] == ["setosa", "versicolor", "virginica"]

    def train(dataset: dict, **spec: object) -> dict:
        body = {"dataset": {"source": "upload", **dataset}, "training": {"device": "cpu"}}
        trainer = Trainer({**body, **spec}, resources=resources).setup()
        return trainer.train().history[-1].metrics

    iris_spec = {"id": "iris", "format": "csv", "target": "species"}
    metrics = train(iris_spec, optimizer={"lr": 0.02}, training={"epochs": 10, "device": "cpu"})
    assert metrics["val_accuracy"] > 0.8
    metrics = train(
        {"id": "folder"},
        model={"arch": "cnn", "channels": [4]},
        optimizer={"lr": 0.02},
        training={"epochs": 10, "batch_size": 4, "device": "cpu"},
    )
    assert metrics["val_accuracy"] == 1.0  # red and blue images apart
    metrics = train(
        {"id": "masks"},
        task="segmentation",
        model={"arch": "cnn", "channels": [4]},
        optimizer={"lr": 0.02},
        training={"epochs": 8, "batch_size": 8, "device": "cpu"},
    )
    assert metrics["val_accuracy"] > 0.9  # per pixel; background alone is 0.86


def test_a_labelled_subset_keeps_the_validation_split() -> None:
    whole = load_data(ds(name="digits"))
    subset = load_data(ds(name="digits", train_size=100))
    assert len(subset.x_train) == 100 and torch.equal(subset.y_val, whole.y_val)
    assert torch.bincount(subset.y_train).min() >= 9  # stratified: about ten of each digit


def test_shapes_are_generated_reproducibly() -> None:
    spec = ds(name="shapes", n_samples=20, image_size=16)
    x, y = raw_arrays(spec)
    assert x.shape == (20, 3, 16, 16) and y.shape == (20, 16, 16)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == {0, 1, 2}
    again, _ = raw_arrays(spec)
    assert np.array_equal(x, again)
    data = load_data(spec, images=True, task="segmentation")
    assert data.y_train.dtype == torch.int64 and data.majority_baseline is not None


def png_of(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 pixels: (H, W) a greyscale ("L") image, (H, W, 3) an RGB one."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_greyscale_image_folder_loads_one_channel_and_trains(tmp_path: Path) -> None:
    """Mode "L" images: a 1-channel dataset, a model whose first layer takes 1 channel, and
    training that learns them; one colour image among them makes the folder RGB."""
    from core.resources import Resources
    from core.train import Trainer
    from core.uploads import read_dataset
    from tests.core.builders import write_zip

    rng = np.random.default_rng(0)
    pixels = {
        (name, i): np.clip(rng.normal(level, 20, (8, 8)), 0, 255).astype(np.uint8)
        for name, level in (("dark", 60), ("light", 190))
        for i in range(10)
    }
    entries = {f"{name}/{i}.png": png_of(p) for (name, i), p in pixels.items()}
    path = write_zip(tmp_path / "grey.zip", entries)
    x, y, meta = read_dataset(path, "imagefolder")
    assert x.shape == (20, 1, 8, 8) and x.dtype == np.uint8 and meta["image_shape"] == [1, 8, 8]
    assert meta["class_names"] == ["dark", "light"] and np.bincount(y).tolist() == [10, 10]
    assert sorted(map(bytes, x.reshape(20, 64))) == sorted(p.tobytes() for p in pixels.values())

    spec = {
        "dataset": {"source": "upload", "id": "grey", "format": "imagefolder", "seed": 0},
        "model": {"arch": "cnn", "channels": [4]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 5, "batch_size": 4, "device": "cpu", "seed": 0},
    }
    trainer = Trainer(spec, resources=Resources(datasets={"grey": path})).setup()
    assert tuple(trainer.data.x_train.shape) == (16, 1, 8, 8)
    assert tuple(trainer.data.x_val.shape) == (4, 1, 8, 8)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.in_channels == 1
    history = [record.metrics for record in trainer.train().history]
    losses = [m["train_loss"] for m in history]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.8 * losses[0], losses
    assert history[-1]["val_accuracy"] == 1.0  # dark and light apart

    # One RGB image: every image becomes RGB, the grey ones with three equal channels.
    entries["light/rgb.png"] = png_of(np.full((8, 8, 3), (200, 180, 160), np.uint8))
    x, _, meta = read_dataset(write_zip(tmp_path / "mixed.zip", entries), "imagefolder")
    assert x.shape == (21, 3, 8, 8) and meta["image_shape"] == [3, 8, 8]
    grey = [i for i in range(21) if len(np.unique(x[i, :, 0, 0])) == 1]
    assert len(grey) == 20 and all(np.array_equal(x[i, 0], x[i, 2]) for i in grey)


def test_a_dataset_read_once_serves_the_next_jobs_of_the_process_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a ``DatasetCache`` in the resources (a worker's), jobs on the same dataset read
    it once and train exactly as when each reads it; the kept arrays are read-only; another
    dataset spec is read anew, the least recently used is dropped past the limits, and a
    pickled cache (sent to a job's ranks) arrives empty."""
    import pickle

    from core import data
    from core.resources import DatasetCache, Resources
    from core.spec import JobSpec
    from core.train import Trainer

    reads: list[str | None] = []
    real = data.raw_arrays

    def counted(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
        reads.append(spec.name)
        return real(spec)

    monkeypatch.setattr(data, "raw_arrays", counted)
    base = {"dataset": {"name": "digits", "seed": 0}, "training": {"epochs": 2, "seed": 0}}
    specs = [
        {**base, "model": {"arch": "mlp", "hidden": [16]}},
        {**base, "model": {"arch": "mlp", "hidden": [32]}, "optimizer": {"name": "adam"}},
    ]
    cache = DatasetCache()
    kept = [
        Trainer(JobSpec.model_validate(s), resources=Resources(read_cache=cache)) for s in specs
    ]
    plain = [Trainer(JobSpec.model_validate(s)) for s in specs]
    for cached, alone in zip(kept, plain, strict=True):
        want = [r.metrics for r in alone.setup().train().history]
        got = [r.metrics for r in cached.setup().train().history]
        for g, w in zip(got, want, strict=True):
            assert {k: v for k, v in g.items() if k != "epoch_seconds"} == {
                k: v for k, v in w.items() if k != "epoch_seconds"
            }
    assert reads == ["digits", "digits", "digits"]  # both plain runs, the cached ones once
    resources = Resources(read_cache=cache)
    x, y, _, _ = data.read_source(DatasetSpec(name="digits", seed=0), resources)
    assert not x.flags.writeable and not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 1.0
    # Another spec, then the limits: one entry kept.
    small = DatasetCache(entries=1)
    for name in ("iris", "wine", "iris"):
        data.read_source(DatasetSpec(name=name), Resources(read_cache=small))
    assert reads[-3:] == ["iris", "wine", "iris"]
    tiny = DatasetCache(max_bytes=1000)  # iris is 4.8 kB: never kept
    for _ in range(2):
        data.read_source(DatasetSpec(name="iris"), Resources(read_cache=tiny))
    assert reads[-2:] == ["iris", "iris"]
    sent = pickle.loads(pickle.dumps(cache))
    assert sent.get(next(iter(cache._kept))) is None and sent.entries == cache.entries


def test_a_worker_keeps_the_split_too_and_each_job_gets_tensors_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a ``DatasetCache``, the next job on the same dataset spec neither reads nor
    splits it again: its tensors and statistics equal a plain load's exactly, and are its
    own (a job that changes them in place changes no other job's). Another split of the
    same dataset (another seed) is split anew."""
    from core import data
    from core.resources import DatasetCache, Resources

    splits: list[int] = []
    real = data.train_test_split

    def counted(*args: Any, **kwargs: Any) -> Any:
        splits.append(kwargs["random_state"])
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "train_test_split", counted)
    resources = Resources(read_cache=DatasetCache())
    spec = DatasetSpec(name="digits", seed=0)
    first = data.load_data(spec, resources=resources)
    second = data.load_data(spec, resources=resources)
    assert splits == [0]
    plain = data.load_data(spec)
    for got in (first, second):
        for name in ("x_train", "y_train", "x_val", "y_val"):
            assert torch.equal(getattr(got, name), getattr(plain, name)), name
            assert getattr(got, name).dtype == getattr(plain, name).dtype
        np.testing.assert_array_equal(got.mean, plain.mean)
        np.testing.assert_array_equal(got.std, plain.std)
        assert got.shared_samples == plain.shared_samples
        assert got.majority_baseline == plain.majority_baseline
    first.x_train.mul_(0.0)
    first.y_train.zero_()
    first.mean[:] = 7.0
    third = data.load_data(spec, resources=resources)
    assert torch.equal(third.x_train, plain.x_train) and torch.equal(third.y_train, plain.y_train)
    np.testing.assert_array_equal(third.mean, plain.mean)
    data.load_data(DatasetSpec(name="digits", seed=1), resources=resources)
    assert splits == [0, 0, 1]  # the plain load, then the other seed's
