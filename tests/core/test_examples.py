import importlib.util
import json
from pathlib import Path

import pytest

from core.spec import JobSpec
from core.train import Trainer

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "optimizers").glob("*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_are_valid_and_train(path: Path) -> None:
    spec = JobSpec.model_validate(json.loads(path.read_text()))
    spec.training.epochs = 1  # one epoch shows it runs; the example's own length is for users
    result = Trainer(spec, device="cpu").setup().train()
    assert result.last_epoch == 1


TRANSFER = sorted((Path(__file__).parents[2] / "examples" / "transfer").glob("*.json"))


@pytest.mark.parametrize("path", TRANSFER, ids=[p.stem for p in TRANSFER])
def test_transfer_examples_are_valid(path: Path) -> None:
    """Valid without context (the ids are placeholders); those that need no uploads, earlier
    jobs or downloaded weights train an epoch."""
    spec = JobSpec.model_validate(json.loads(path.read_text()))
    backbone = spec.backbone
    if spec.dataset.source == "upload" or backbone is not None:
        return
    spec.training.epochs = 1
    if spec.dataset.n_samples is not None:  # a generated dataset: a small one will do
        spec.dataset.n_samples = min(spec.dataset.n_samples, 100)
    assert Trainer(spec, device="cpu").setup().train().last_epoch == 1


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
