import importlib.util
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torchvision

from core.resources import Resources
from core.spec import JobSpec
from core.train import Trainer
from tests.core.builders import finished_job, png_bytes, write_zip

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "optimizers").glob("*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_are_valid_and_train(path: Path) -> None:
    spec = JobSpec.model_validate(json.loads(path.read_text()))
    spec.training.epochs = 1  # one epoch shows it runs; the example's own length is for users
    result = Trainer(spec, device="cpu").setup().train()
    assert result.last_epoch == 1


TRANSFER = sorted((Path(__file__).parents[2] / "examples" / "transfer").glob("*.json"))


@pytest.fixture(scope="module")
def transfer_resources(tmp_path_factory: pytest.TempPathFactory) -> Resources:
    """What the examples' placeholder ids name: the autoencoder example's job (one epoch),
    an uploaded image folder, and uploaded resnet18 weights."""
    tmp = tmp_path_factory.mktemp("transfer")
    autoencoder = json.loads((TRANSFER[0].parent / "digits-autoencoder.json").read_text())
    autoencoder["training"]["epochs"] = 1
    job = finished_job(autoencoder, tmp, device="cpu")
    colours = {"red": (200, 20, 20), "blue": (20, 20, 200)}
    folder = write_zip(
        tmp / "folder.zip",
        {f"{c}/{i}.png": png_bytes(rgb, (16, 16)) for c, rgb in colours.items() for i in range(8)},
    )
    weights = tmp / "resnet18.safetensors"
    state = torchvision.models.resnet18(weights=None).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, weights)
    return Resources(
        datasets={"DATASET_UPLOAD_ID": folder},
        weights={"WEIGHTS_UPLOAD_ID": weights},
        backbone_jobs={"AUTOENCODER_JOB_ID": job},
    )


@pytest.mark.parametrize("path", TRANSFER, ids=[p.stem for p in TRANSFER])
def test_transfer_examples_train(path: Path, transfer_resources: Resources) -> None:
    """Each example trains an epoch, its placeholder ids filled in (transfer_resources).
    ImageNet weights ("default") would be downloaded: random ones stand in for them."""
    data = json.loads(path.read_text())
    if data.get("backbone", {}).get("weights") == "default":
        data["backbone"]["weights"] = "none"
    # One epoch, or up to the epoch a frozen backbone is unfrozen at (that is tested too).
    epochs = data.get("backbone", {}).get("unfreeze_at_epoch") or 1
    spec = JobSpec.model_validate(data)
    spec.training.epochs = epochs
    if spec.dataset.n_samples is not None:  # a generated dataset: a small one will do
        spec.dataset.n_samples = min(spec.dataset.n_samples, 48)
    result = Trainer(spec, device="cpu", resources=transfer_resources).setup().train()
    assert result.last_epoch == epochs
    assert all(math.isfinite(record.metrics["val_loss"]) for record in result.history)


def test_every_transfer_example_is_trained() -> None:
    assert len(TRANSFER) == 6, [p.name for p in TRANSFER]


def test_the_transfer_script_writes_the_digits_as_an_image_folder(tmp_path: Path) -> None:
    """`run.py --write-image-folder` gives the resnet18 examples an upload the service takes."""
    from core import inspect_dataset

    path = Path(__file__).parents[2] / "examples" / "transfer" / "run.py"
    module_spec = importlib.util.spec_from_file_location("transfer_run", path)
    assert module_spec is not None and module_spec.loader is not None
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    archive = tmp_path / "digits.zip"
    assert script.main(["--write-image-folder", str(archive)]) == 0
    info = inspect_dataset(archive, "imagefolder")
    assert info["n_samples"] == 1797 and info["num_classes"] == 10
    assert info["image_shape"] == [1, 8, 8] and info["task"] == "classification"


def test_the_optimizers_doc_shows_the_benchmarks_own_table(tmp_path: Path) -> None:
    """docs/optimizers.md's table is written by `bench_optimizers --write-docs`: between its
    markers, in the benchmark's format, one row per example spec."""
    from benchmarks.bench_optimizers import BEGIN, DOCS, END, HEADER, write_docs

    page = DOCS.read_text()
    generated = page[page.index(BEGIN) + len(BEGIN) : page.index(END)]
    assert HEADER in generated
    rows = [line for line in generated.splitlines() if line.startswith("| ") and "---" not in line]
    assert sorted(row.split(" | ")[0][2:] for row in rows[1:]) == sorted(p.stem for p in EXAMPLES)

    copy = tmp_path / "optimizers.md"
    copy.write_text(page)
    write_docs(HEADER + "\n| new | row |", "Measured here.", docs=copy)
    rewritten = copy.read_text()
    assert rewritten.startswith(page[: page.index(BEGIN) + len(BEGIN)])
    assert rewritten.endswith(page[page.index(END) :])
    assert "| new | row |" in rewritten and "| adam |" not in rewritten
