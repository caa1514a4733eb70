import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from core.augment import Augmenter, batch_seed
from core.data import load_data
from core.spec import AugmentationOp, JobSpec
from core.train import Trainer, measure
from tests.core.builders import make_spec, spec_dict


def ops(*items: dict) -> JobSpec:
    return JobSpec.model_validate(spec_dict(dataset={"name": "digits"}, augmentation=list(items)))


_OPS = TypeAdapter(list[AugmentationOp])


def augmenter(*items: dict, shape=(1, 6, 6), mean=None, std=None, seed: int = 0) -> Augmenter:
    """An augmenter of explicit ops ({"op": ..., ...}) for any image shape (colour too)."""
    channels = shape[0]
    return Augmenter(
        _OPS.validate_python(list(items)),
        image_shape=shape,
        mean=np.zeros((channels, 1, 1)) if mean is None else mean,
        std=np.ones((channels, 1, 1)) if std is None else std,
        seed=seed,
        dtype=torch.float64,
    )


def test_short_and_explicit_forms_are_the_same_spec() -> None:
    short = ops({"hflip": 0.5}, {"rotate": 10}, {"cutout": {"size": 2}}, {"scale": [0.8, 1.2]})
    explicit = ops(
        {"op": "hflip", "p": 0.5},
        {"op": "rotate", "degrees": 10},
        {"op": "cutout", "size": 2},
        {"op": "scale", "min": 0.8, "max": 1.2},
    )
    assert short == explicit and short.spec_hash() == explicit.spec_hash()
    assert [op.op for op in short.augmentation] == ["hflip", "rotate", "cutout", "scale"]
    dumped = short.model_dump(mode="json")["augmentation"]
    assert dumped[0] == {"op": "hflip", "p": 0.5}
    assert JobSpec.model_validate(short.model_dump(mode="json")) == short


@pytest.mark.parametrize(
    ("patch", "loc", "fragment"),
    [
        ({"augmentation": [{"hflip": 0.5}]}, ("augmentation",), "needs an image dataset"),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"op": "blur"}]},
            ("augmentation", 0),
            "does not match",
        ),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"cutout": 9}]},
            ("augmentation", 0, "size"),
            "larger than the 8x8",
        ),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"color_jitter": {"hue": 0.1}}]},
            ("augmentation", 0, "hue"),
            "colour (3-channel)",
        ),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"op": "color_jitter"}]},
            ("augmentation", 0, "color_jitter", "brightness"),
            "at least one",
        ),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"scale": [1.2, 0.8]}]},
            ("augmentation", 0, "scale", "min"),
            "must not exceed",
        ),
        (
            {"dataset": {"name": "digits"}, "augmentation": [{"hflip": 1.5}]},
            ("augmentation", 0, "hflip", "p"),
            "less than or equal to 1",
        ),
        (
            {
                "dataset": {"name": "digits"},
                "model": {"hidden": [4]},
                "optimizer": {"name": "newton"},
                "training": {"full_batch": True},
                "augmentation": [{"hflip": 0.5}],
            },
            ("augmentation",),
            "deterministic loss",
        ),
    ],
)
def test_invalid_augmentation_is_refused_at_submit(patch: dict, loc: tuple, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec_dict(**patch))
    errors = [(e["loc"], e["msg"]) for e in info.value.errors()]
    assert any(e_loc == loc and fragment in msg for e_loc, msg in errors), errors


def images(n: int = 16, shape=(1, 6, 6), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=generator, dtype=torch.float64) + 0.5


def test_the_same_seed_epoch_and_step_give_the_same_batch() -> None:
    items = (
        {"op": "hflip"},
        {"op": "rotate", "degrees": 15},
        {"op": "crop", "padding": 1},
        {"op": "cutout", "size": 2},
    )
    x = images()
    first = augmenter(*items)(x, 3, 7)
    again = augmenter(*items)(x, 3, 7)  # a fresh augmenter: nothing carried over
    assert torch.equal(first, again)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(augmenter(*items)(x, 3, 7), first)
    for other in (augmenter(*items)(x, 3, 8), augmenter(*items)(x, 4, 7)):
        assert not torch.equal(other, first)
    assert not torch.equal(augmenter(*items, seed=1)(x, 3, 7), first)
    assert len({batch_seed(0, e, s) for e in range(50) for s in range(50)}) == 2500


def test_flips_are_exact_and_per_image() -> None:
    x = images(64)
    assert torch.equal(augmenter({"op": "hflip", "p": 1.0})(x, 1, 0), x.flip(-1))
    assert torch.equal(augmenter({"op": "vflip", "p": 1.0})(x, 1, 0), x.flip(-2))
    half = augmenter({"op": "hflip"})(x, 1, 0)
    flipped = [bool(torch.equal(a, b.flip(-1))) for a, b in zip(half, x, strict=True)]
    kept = [bool(torch.equal(a, b)) for a, b in zip(half, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48  # each image draws its own coin


def test_crop_with_padding_shifts_by_whole_pixels_and_pads_black() -> None:
    x = images(32)
    out = augmenter({"op": "crop", "padding": 2})(x, 1, 0)
    shifts = set()
    for a, b in zip(out, x, strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(a, _shift(b, dy, dx))
        ]
        assert found, "not a whole-pixel shift with black padding"
        shifts.add(found[0])
    assert len(shifts) > 5


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_rotation_turns_about_the_centre_counter_clockwise() -> None:
    aug = augmenter({"op": "rotate", "degrees": 90})
    aug._uniform = lambda n, low, high, like: torch.full((n,), 90.0, dtype=like.dtype)
    x = images(4)
    assert torch.allclose(aug(x, 1, 0), torch.rot90(x, 1, (2, 3)), atol=1e-12)


def test_cutout_erases_one_square_to_the_mean() -> None:
    mean = np.full((1, 1, 1), 0.7)
    x = (images(64) - 0.7) / 2.0  # standardized with mean 0.7, std 2
    aug = augmenter({"op": "cutout", "size": 3}, mean=mean, std=np.full((1, 1, 1), 2.0))
    out = aug(x, 1, 0)
    erased = (out != x).reshape(len(x), -1).sum(1)
    # A 3x3 square (9 pixels) or its part inside the image; erased pixels read 0 standardized.
    assert erased.max() == 9 and erased.min() >= 4
    assert torch.all(out[out != x] == 0)


def test_a_segmentation_mask_gets_the_same_geometric_transform() -> None:
    x = images(32)
    mask = (x[:, 0] > 1.0).long() + 1  # classes 1 and 2; 0 is the background
    aug = augmenter(
        {"op": "hflip"},
        {"op": "vflip"},
        {"op": "crop", "padding": 2},
        {"op": "translate", "fraction": 0.34},
    )
    out, moved = aug(x, 2, 5, mask=mask)
    assert moved.dtype == torch.long and moved.shape == mask.shape
    # Whole-pixel ops move image and mask alike; pixels from outside are black / background.
    expected = torch.where(out[:, 0] == 0, 0, (out[:, 0] > 1.0).long() + 1)
    assert torch.equal(moved, expected)
    assert not torch.equal(moved, mask)
    # Photometric ops and cutout leave the mask alone.
    _, same = augmenter({"op": "cutout", "size": 2}, {"op": "color_jitter", "brightness": 0.5})(
        x, 1, 0, mask=mask
    )
    assert torch.equal(same, mask)


def test_colour_jitter_numbers() -> None:
    rgb = images(32, shape=(3, 5, 5))
    brighter = augmenter({"op": "color_jitter", "brightness": 0.4}, shape=(3, 5, 5))(rgb, 1, 0)
    factor = (brighter / rgb).reshape(32, -1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor))  # one factor per image
    assert 0.6 <= float(factor.min()) and float(factor.max()) <= 1.4
    assert float(factor[:, 0].std()) > 0.05

    contrast = augmenter({"op": "color_jitter", "contrast": 0.5}, shape=(3, 5, 5))(rgb, 1, 0)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    mean_grey = (rgb * luma).sum(1).mean((1, 2))
    assert torch.allclose((contrast * luma).sum(1).mean((1, 2)), mean_grey)  # the mean stays

    grey = images(8, shape=(1, 5, 5)).expand(8, 3, 5, 5)
    for jitter in ({"saturation": 0.9}, {"hue": 0.5}):
        aug = augmenter({"op": "color_jitter", **jitter}, shape=(3, 5, 5))
        assert torch.allclose(aug(grey, 1, 0), grey)  # grey has no colour to change
        turned = aug(rgb, 1, 0)
        assert not torch.allclose(turned, rgb)
        if "hue" in jitter:  # a hue turn keeps each pixel's luma
            assert torch.allclose((turned * luma).sum(1), (rgb * luma).sum(1))


def test_ops_that_never_apply_leave_the_batch_unchanged() -> None:
    x = images()
    out = augmenter({"op": "rotate", "degrees": 30, "p": 0}, {"op": "hflip", "p": 0})(x, 1, 0)
    assert torch.allclose(out, x, atol=1e-12)  # only the round trip through raw intensities


class Recorder:
    def __init__(self, augment: Augmenter) -> None:
        self.augment, self.rows = augment, []

    def __call__(self, x, epoch, step, mask=None):
        self.rows.append(x.clone())
        return self.augment(x, epoch, step)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_augmentation_touches_training_batches_only(arch: str) -> None:
    spec = make_spec(
        dataset={"name": "digits", "val_fraction": 0.5},
        model={"arch": arch, "channels": [4], "hidden": [16]},
        augmentation=[{"hflip": 0.5}, {"rotate": 20}, {"crop": 1}, {"cutout": 3}],
        training={"epochs": 2, "batch_size": 128},
    )
    trainer = Trainer(spec).setup()
    x_train, x_val = trainer.data.x_train.clone(), trainer.data.x_val.clone()
    recorder = Recorder(trainer._augment)
    trainer._augment = recorder
    result = trainer.train()
    seen = torch.cat(recorder.rows)
    assert len(seen) == 2 * len(x_train)  # every training row, every epoch, nothing else
    train_rows = {r.numpy().tobytes() for r in x_train}
    assert all(r.numpy().tobytes() in train_rows for r in seen)
    # The stored splits are untouched, and validation metrics are those of the plain data.
    assert torch.equal(trainer.data.x_train, x_train) and torch.equal(trainer.data.x_val, x_val)
    fresh = load_data(spec.dataset, images=arch == "cnn")
    assert torch.equal(fresh.x_val, x_val)
    val = measure(trainer.model, fresh.x_val, fresh.y_val, "classification")
    assert result.history[-1].metrics["val_loss"] == pytest.approx(val["loss"], abs=1e-6)


def test_augmented_training_changes_the_result_and_repeats_exactly() -> None:
    base = dict(
        dataset={"name": "digits", "val_fraction": 0.5},
        model={"arch": "cnn", "channels": [4]},
        training={"epochs": 2, "batch_size": 64},
    )
    plain = Trainer(make_spec(**base)).setup()
    plain.train()
    runs = []
    for _ in range(2):
        trainer = Trainer(make_spec(**base, augmentation=[{"rotate": 10}, {"crop": 1}])).setup()
        trainer.train()
        runs.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    plain_params = torch.cat([p.detach().reshape(-1) for p in plain.model.parameters()])
    assert not torch.allclose(runs[0], plain_params)


def test_full_batch_closures_see_the_same_augmented_data() -> None:
    # L-BFGS evaluates its closure several times per step: each time the same augmented
    # chunks (seeded by epoch and chunk), or its line search would compare different losses.
    spec = make_spec(
        dataset={"name": "digits", "val_fraction": 0.5},
        model={"hidden": [8]},
        optimizer={"name": "lbfgs", "max_iter": 4},
        augmentation=[{"translate": 0.125}, {"cutout": 1}],
        training={"epochs": 2, "full_batch": True, "batch_size": 300},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    calls: list[tuple[int, int, torch.Tensor]] = []
    augment = trainer._augment

    def recording(x, epoch, step, mask=None):
        out = augment(x, epoch, step)
        calls.append((epoch, step, out))
        return out

    trainer._augment = recording
    before = trainer.evaluate("train")["train_loss"]
    history = trainer.train().history
    # Full-batch epochs report the loss after their step: both steps lowered it.
    assert history[0].metrics["train_loss"] < before
    assert history[-1].metrics["train_loss"] < before
    by_key: dict[tuple[int, int], torch.Tensor] = {}
    for epoch, step, out in calls:
        assert torch.equal(by_key.setdefault((epoch, step), out), out)
    assert len(calls) > len(by_key)  # the closure ran more than once per step
