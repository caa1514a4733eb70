"""Transfer learning (notes 4.9): an earlier job's encoder or a torchvision model as the
backbone, frozen, at a lower learning rate, or unfrozen part-way."""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from core import load_model
from core.errors import TrainingError
from core.models import torchvision_body
from core.resources import Resources
from core.results import EpochRecord
from core.spec import TORCHVISION_BODIES, JobSpec
from core.train import Trainer, TrainerHooks, evaluate
from tests.core.builders import colour_images, finished_job, merge


@pytest.mark.parametrize("arch", list(TORCHVISION_BODIES))
def test_torchvision_tables_match_torchvision(arch: str) -> None:
    """The spec sizes backbones from static tables (no torch at submit): they are right."""
    table = TORCHVISION_BODIES[arch]
    with torch.device("meta"):  # shapes only: no memory, no initialization
        full = torchvision.models.get_model(arch, weights=None)
        flat, dense = (
            torchvision_body(arch, "classification"),
            torchvision_body(arch, "segmentation"),
        )
        x = torch.zeros(2, 3, 64, 64)
        assert flat.eval()(x).shape == (2, table.width)
        assert dense.eval()(x).shape[1] == table.channels
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(flat), count(dense)) == (table.parameters, table.feature_parameters)
    head = [k for k in full.state_dict() if k not in flat.state_dict()]
    assert tuple(head) == table.head_keys


# ------------------------------------------------------------------ an earlier job's encoder

AUTOENCODER = {
    "task": "reconstruction",
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "channels": [16, 32]},
    "optimizer": {"lr": 3e-3},
    "training": {"epochs": 10, "batch_size": 64, "device": "cpu"},
}


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, Path]:
    return finished_job(AUTOENCODER, tmp_path_factory.mktemp("autoencoder"))


def test_autoencoder_reconstructs_its_input(autoencoder: tuple[JobSpec, Path]) -> None:
    spec, path = autoencoder
    model = load_model(None, path)  # rebuilt from the file alone
    metrics = evaluate(spec, model)
    assert metrics["val_loss"] < 0.2  # MSE of standardized pixels; predicting 0 gives ~1
    x = torch.zeros(3, 1, 8, 8)
    assert model(x).shape == x.shape


def test_transferred_encoder_beats_training_from_scratch(
    autoencoder: tuple[JobSpec, Path],
) -> None:
    """The text's exercise: the autoencoder's encoder as the feature extractor of a
    classifier trained on 100 labelled digits, against the same network from scratch, at
    equal epochs. The autoencoder saw the training split's images (not its labels) and never
    the validation split, which both classifiers share."""
    resources = Resources(backbone_jobs={"ae": autoencoder})
    base = {
        "dataset": {"name": "digits", "train_size": 100},
        "optimizer": {"lr": 0.01},
        "training": {"epochs": 3, "batch_size": 10, "device": "cpu"},
    }
    transfer_spec = merge(base, {"backbone": {"from_job": "ae", "lr_scale": 0.3}})
    scratch_spec = merge(base, {"model": {"arch": "cnn", "channels": [16, 32], "hidden": []}})
    transfer, scratch = [], []
    for seed in range(4):
        seeded = {"training": {"seed": seed}}
        trainer = Trainer(merge(transfer_spec, seeded), resources=resources).setup()
        counts = trainer.parameter_counts()
        transfer.append(trainer.train().history[-1].metrics["val_accuracy"])
        plain = Trainer(merge(scratch_spec, seeded)).setup()
        assert plain.parameter_counts() == counts  # the same network
        scratch.append(plain.train().history[-1].metrics["val_accuracy"])
    # Measured: transfer 0.848 vs scratch 0.735 on average over six seeds; every seed ahead.
    assert np.mean(transfer) > np.mean(scratch) + 0.05, (transfer, scratch)
    assert all(t > s for t, s in zip(transfer, scratch, strict=True)), (transfer, scratch)


def test_an_encoder_that_does_not_fit_fails_the_job(
    autoencoder: tuple[JobSpec, Path], tmp_path: Path
) -> None:
    spec = {"dataset": {"name": "digits"}, "backbone": {"from_job": "ae"}}
    with pytest.raises(TrainingError, match="backbone job 'ae' or its best checkpoint"):
        Trainer(spec, resources=Resources()).setup()
    # An MLP autoencoder's checkpoint offered as the CNN job's: the weights do not load.
    wrong = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file({"body.0.weight": torch.zeros(16, 64)}, wrong)
    resources = Resources(backbone_jobs={"ae": (autoencoder[0], wrong)})
    with pytest.raises(TrainingError, match="the encoder of job 'ae' do not fit"):
        Trainer(spec, resources=resources).setup()
    # Submit-time checks the worker runs again once it knows the backbone job: digits'
    # encoder on 13 wine features.
    resources = Resources(backbone_jobs={"ae": autoencoder})
    wine = {"dataset": {"name": "wine"}, "backbone": {"from_job": "ae"}}
    with pytest.raises(
        TrainingError, match="the encoder of job 'ae' takes images; dataset 'wine' is tabular"
    ):
        Trainer(wine, resources=resources).setup()


# ------------------------------------------------------------------ adaptation modes

CNN_SOURCE = {
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "channels": [8, 16], "norm": "batch"},
    "training": {"epochs": 2, "batch_size": 64, "device": "cpu"},
}


@pytest.fixture(scope="module")
def cnn_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, Path]:
    return finished_job(CNN_SOURCE, tmp_path_factory.mktemp("cnn"))


class Watch(TrainerHooks):
    """Records, per epoch, the body's state, the optimizer's groups, the counts."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, torch.Tensor]] = []
        self.groups: list[list[tuple[int, float, float | None]]] = []
        self.counts: list[dict[str, int]] = []

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.bodies.append({k: v.clone() for k, v in trainer.model.body.state_dict().items()})
        self.groups.append(
            [(len(g["params"]), g["lr"], g.get("lr_scale")) for g in trainer.optimizer.param_groups]
        )
        self.counts.append(trainer.parameter_counts())


def norm_modes(model: nn.Module) -> list[bool]:
    """Whether each batch-norm layer of the body ran in training mode, per forward pass."""
    seen: list[bool] = []
    for m in model.body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    return seen


def adaptation_cases(cnn_job: tuple[JobSpec, Path], tmp_path: Path) -> dict:
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    state = torchvision.models.resnet18(weights=None).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, weights)
    x, y = colour_images(48, 32)
    np.savez(tmp_path / "colours.npz", x=x, y=y)
    resources = Resources(
        datasets={"colours": tmp_path / "colours.npz"},
        weights={"r18": weights},
        backbone_jobs={"cnn": cnn_job},
    )
    return {
        "job": ({"dataset": {"name": "digits"}, "backbone": {"from_job": "cnn"}}, resources),
        "resnet18": (
            {
                "dataset": {"source": "upload", "id": "colours"},
                "backbone": {"arch": "resnet18", "weights": "upload:r18", "input_size": 32},
            },
            resources,
        ),
    }


@pytest.mark.parametrize("kind", ["job", "resnet18"])
def test_a_frozen_backbone_stays_bit_identical(
    kind: str, cnn_job: tuple[JobSpec, Path], tmp_path: Path
) -> None:
    spec, resources = adaptation_cases(cnn_job, tmp_path)[kind]
    spec = merge(
        spec,
        {
            "backbone": {"freeze": True},
            "optimizer": {"lr": 0.01},
            "training": {"epochs": 2, "batch_size": 16, "device": "cpu"},
        },
    )
    trainer = Trainer(spec, resources=resources).setup()
    before = {k: v.clone() for k, v in trainer.model.body.state_dict().items()}
    head = [p.clone() for p in trainer.model.head.parameters()]
    modes = norm_modes(trainer.model)
    counts = trainer.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for p in trainer.model.body.parameters()) > 0
    assert counts["trainable"] == sum(p.numel() for p in trainer.model.head.parameters())
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in trainer.model.body.parameters()}
    result = trainer.train()
    # Weights and batch-norm statistics alike: nothing of the backbone moved.
    after = trainer.model.body.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(
        torch.equal(a, b) for a, b in zip(head, trainer.model.head.parameters(), strict=True)
    )
    assert modes and not any(modes)  # eval mode in every forward pass, training included
    assert result.parameters == counts
    assert result.history[-1].metrics["val_accuracy"] > 0.5


def test_lr_scale_gives_the_backbone_its_own_parameter_group(
    cnn_job: tuple, tmp_path: Path
) -> None:
    spec, resources = adaptation_cases(cnn_job, tmp_path)["job"]
    spec = merge(
        spec,
        {
            "backbone": {"lr_scale": 0.1},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "regularization": {"weight_decay": 1e-4},
            "schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
            "training": {"epochs": 2, "batch_size": 64, "device": "cpu"},
        },
    )
    trainer = Trainer(spec, resources=resources, hooks=(watch := Watch())).setup()
    body = {id(p) for p in trainer.model.body.parameters()}
    groups = trainer.optimizer.param_groups
    # Head, then backbone; each apart by weight decay (kernels decay, biases and norms not).
    assert [(g["lr_scale"], g["weight_decay"]) for g in groups] == [
        (1.0, 1e-4),
        (1.0, 0.0),
        (0.1, 1e-4),
        (0.1, 0.0),
    ]
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    assert all({id(p) for p in g["params"]} <= body for g in groups[2:])
    assert not any({id(p) for p in g["params"]} & body for g in groups[:2])
    trainer.train()
    # The schedule halves every group's lr each epoch, keeping the backbone's at a tenth.
    lrs = [[lr for _, lr, _ in epoch] for epoch in watch.groups]
    assert lrs == [
        pytest.approx([0.05, 0.05, 0.005, 0.005]),
        pytest.approx([0.025] * 2 + [0.0025] * 2),
    ]
    assert watch.counts[0] == {"trainable": trainer.parameter_counts()["trainable"], "frozen": 0}


def test_the_backbone_unfreezes_at_the_stated_epoch(cnn_job: tuple, tmp_path: Path) -> None:
    spec, resources = adaptation_cases(cnn_job, tmp_path)["job"]
    spec = merge(
        spec,
        {
            "backbone": {"freeze": True, "unfreeze_at_epoch": 3, "lr_scale": 0.5},
            "optimizer": {"lr": 0.01},
            "training": {"epochs": 4, "batch_size": 64, "device": "cpu"},
        },
    )
    trainer = Trainer(spec, resources=resources, hooks=(watch := Watch())).setup()
    start = {k: v.clone() for k, v in trainer.model.body.state_dict().items()}
    modes = norm_modes(trainer.model)
    trainer.train()
    moved = [any(not torch.equal(start[k], body[k]) for k in start) for body in watch.bodies]
    assert moved == [False, False, True, True]  # trains from epoch 3 on
    body_size = sum(p.numel() for p in trainer.model.body.parameters())
    assert [c["frozen"] for c in watch.counts] == [body_size, body_size, 0, 0]
    assert [len(g) for g in watch.groups] == [1, 1, 2, 2]
    assert watch.groups[2][1][1:] == (0.005, 0.5)  # its own group at lr × lr_scale
    assert any(modes)  # batch norm trains again once unfrozen


def test_resume_is_exact_across_the_unfreezing(cnn_job: tuple, tmp_path: Path) -> None:
    spec, resources = adaptation_cases(cnn_job, tmp_path)["job"]
    spec = JobSpec.model_validate(
        merge(
            spec,
            {
                "backbone": {"freeze": True, "unfreeze_at_epoch": 3, "lr_scale": 0.3},
                "model": {"hidden": [16], "dropout": 0.2},
                "optimizer": {"name": "sgd", "lr": 0.05},
                "schedule": {"name": "cosine"},
                "augmentation": [{"crop": 1}],
                "training": {"epochs": 5, "batch_size": 64, "device": "cpu"},
            },
        )
    )
    whole = Trainer(spec, resources=resources).setup()
    whole.train()

    class DieAfter(TrainerHooks):
        def __init__(self, epoch: int) -> None:
            self.epoch, self.dead = epoch, False

        def should_stop(self) -> bool:
            return self.dead

        def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
            if record.epoch == self.epoch:
                trainer.save_checkpoint(tmp_path, f"e{self.epoch}")
                self.dead = True

    for died in (2, 3):  # before the unfreezing, and after it
        Trainer(spec, resources=resources, hooks=DieAfter(died)).setup().train()
        resumed = Trainer(spec, resources=resources)
        resumed.load_checkpoint(tmp_path / f"e{died}.state.pt", tmp_path / f"e{died}.safetensors")
        result = resumed.train()
        assert result.last_epoch == 5 and result.parameters == {
            "trainable": whole.parameter_counts()["trainable"],
            "frozen": 0,
        }
        for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        for a, b in zip(whole.history[died:], resumed.history, strict=True):
            assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-6)


# ------------------------------------------------------------------ torchvision


def test_resnet18_with_uploaded_weights_trains_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w")
    x, y = colour_images(96, 32)
    np.savez(tmp_path / "images.npz", x=x, y=y)
    resources = Resources(datasets={"img": tmp_path / "images.npz"}, weights={"w": tmp_path / "w"})
    spec = {
        "dataset": {"source": "upload", "id": "img"},
        "backbone": {"arch": "resnet18", "weights": "upload:w", "lr_scale": 0.1, "input_size": 32},
        "optimizer": {"lr": 0.01},
        "training": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    }
    trainer = Trainer(spec, resources=resources).setup()
    # The uploaded weights are the backbone's; the new head has 3 classes.
    assert torch.equal(trainer.model.body.conv1.weight, state["conv1.weight"])
    assert trainer.model.head.head.out_features == 3
    assert trainer.data.x_train.max() <= 1.0  # pixels in [0, 1]; the model normalizes them
    result = trainer.train()
    assert result.history[-1].metrics["val_accuracy"] > 0.8  # chance: 1/3
    assert result.parameters == {"trainable": 11_176_512 + 512 * 3 + 3, "frozen": 0}
    # The checkpoint alone rebuilds the model (no weights fetched: the file has them all).
    files = trainer.save_checkpoint(tmp_path, "last")
    model = load_model(None, files.weights_path)
    val = evaluate(spec, model, resources=resources)["val_loss"]
    assert val == pytest.approx(result.last_value, abs=1e-5)


def test_named_weights_come_from_the_cache_or_fail_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    x, y = colour_images(24, 32)
    np.savez(tmp_path / "images.npz", x=x, y=y)
    resources = Resources(datasets={"img": tmp_path / "images.npz"})
    spec = {
        "dataset": {"source": "upload", "id": "img", "val_fraction": 0.5},
        "backbone": {"arch": "mobilenet_v3_small", "weights": "default", "freeze": True},
        "training": {"epochs": 1, "device": "cpu"},
    }

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        TrainingError,
        match="weights for mobilenet_v3_small are not cached in "
        "TORCH_HOME .* and cannot be downloaded: <urlopen error no network>",
    ):
        Trainer(spec, resources=resources).setup()
    # In the cache under torchvision's file name, they are used without a download.
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    url = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    torch.save(state, cached)
    trainer = Trainer(spec, resources=resources).setup()
    assert torch.equal(trainer.model.body.features[0][0].weight, state["features.0.0.weight"])
    assert trainer.train().last_epoch == 1


def test_missing_uploads_fail_the_job_with_the_reason(tmp_path: Path) -> None:
    spec = {"dataset": {"source": "upload", "id": "gone"}, "training": {"device": "cpu"}}
    with pytest.raises(TrainingError, match="the dataset upload 'gone' is not available"):
        Trainer(spec, resources=Resources()).setup()
    x, y = colour_images(24, 32)
    np.savez(tmp_path / "images.npz", x=x, y=y)
    (tmp_path / "w.safetensors").write_bytes(b"")
    resources = Resources(
        datasets={"img": tmp_path / "images.npz"}, weights={"w": tmp_path / "w.safetensors"}
    )
    spec = {
        "dataset": {"source": "upload", "id": "img"},
        "backbone": {"arch": "resnet18", "weights": "upload:w"},
        "training": {"device": "cpu"},
    }
    with pytest.raises(TrainingError, match="weights upload 'w': not a safetensors file"):
        Trainer(spec, resources=resources).setup()
    # A spec validated without the upload's metadata is checked when the data is loaded.
    tabular = {"dataset": {"source": "upload", "id": "img"}, "model": {"arch": "mlp"}}
    bad = merge(tabular, {"task": "segmentation"})
    with pytest.raises(TrainingError, match="segmentation needs images with a mask each"):
        Trainer(bad, resources=resources).setup()


# ------------------------------------------------------------------ segmentation


def test_segmentation_on_shapes_beats_the_background_baseline() -> None:
    spec = {
        "dataset": {"name": "shapes", "n_samples": 160, "image_size": 24},
        "model": {"channels": [16, 32]},
        "optimizer": {"lr": 0.01},
        "augmentation": [{"hflip": 0.5}],
        "training": {"epochs": 12, "batch_size": 16, "device": "cpu"},
    }
    trainer = Trainer(spec).setup()
    assert trainer.task == "segmentation" and trainer.spec.model.arch == "cnn"
    baseline = trainer.data.majority_baseline  # every pixel background
    assert baseline is not None and 0.6 < baseline < 0.9
    result = trainer.train()
    accuracy = result.history[-1].metrics["val_accuracy"]  # per pixel
    assert accuracy > baseline + 0.05, (accuracy, baseline)
    out = trainer.model(trainer.data.x_val[:2])
    assert out.shape == (2, 3, 24, 24)


def test_segmentation_decodes_a_pretrained_encoder(tmp_path: Path) -> None:
    spec = {
        "dataset": {"name": "shapes", "n_samples": 40, "image_size": 32},
        "backbone": {"arch": "mobilenet_v3_small", "weights": "none", "input_size": 64},
        "model": {"channels": [8]},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    trainer = Trainer(spec).setup()
    assert trainer.model(trainer.data.x_val[:2]).shape == (2, 3, 32, 32)
    counts = JobSpec.model_validate(spec).parameter_counts()
    assert counts == trainer.parameter_counts()
    metrics = trainer.train().history[-1].metrics
    # The reported accuracy is the trained model's, per pixel, on the validation split.
    trainer.model.eval()
    with torch.no_grad():
        predicted = trainer.model(trainer.data.x_val).argmax(1)
    per_pixel = (predicted == trainer.data.y_val).double().mean().item()
    assert metrics["val_accuracy"] == pytest.approx(per_pixel, abs=1e-6)
    assert 0 < metrics["train_accuracy"] <= 1
