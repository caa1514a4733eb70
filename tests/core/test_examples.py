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
