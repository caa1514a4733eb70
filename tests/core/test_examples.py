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
