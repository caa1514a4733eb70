import math

import pytest

from core.schedules import Schedule
from core.train import fit
from tests.core.builders import make_spec


def lrs(schedule: dict, epochs: int = 6, lr: float = 0.1) -> list[float]:
    s = Schedule(make_spec(schedule=schedule, optimizer={"lr": lr}, training={"epochs": epochs}))
    return [s.lr(epoch) for epoch in range(1, epochs + 1)]


def test_inverse_time_is_eta0_over_one_plus_kt() -> None:
    got = lrs({"name": "inverse_time", "decay": 0.5})
    assert got == pytest.approx([0.1 / (1 + 0.5 * t) for t in range(6)], rel=1e-15)


@pytest.mark.parametrize(
    ("schedule", "want"),
    [
        ({"name": "constant"}, [0.1] * 6),
        ({"name": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ({"name": "exponential", "gamma": 0.5}, [0.1 * 0.5**t for t in range(6)]),
        (
            {"name": "cosine", "t_max": 4, "min_lr": 0.01},
            [0.01 + 0.09 * (1 + math.cos(math.pi * min(t, 4) / 4)) / 2 for t in range(6)],
        ),
        (
            {"name": "warmup", "warmup_epochs": 4, "start_factor": 0.2},
            [0.02, 0.04, 0.06, 0.08, 0.1, 0.1],
        ),
    ],
)
def test_closed_form_schedules(schedule: dict, want: list[float]) -> None:
    assert lrs(schedule) == pytest.approx(want, rel=1e-12)


def test_reduce_on_plateau() -> None:
    spec = make_spec(schedule={"name": "reduce_on_plateau", "factor": 0.5, "patience": 1})
    s = Schedule(spec)
    seen = []
    for epoch, value in enumerate([1.0, 0.9, 0.95, 0.93, 0.92, 0.8, 0.85, 0.9], start=1):
        seen.append(s.lr(epoch))
        s.observe({"val_loss": value})
    # Two epochs without improvement (more than patience=1) halve the lr.
    assert seen == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005])
    restored = Schedule(spec)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(9) == s.lr(9)


def test_every_epochs_lr_is_a_recorded_metric() -> None:
    result = fit(make_spec(schedule={"name": "inverse_time", "decay": 1.0}, training={"epochs": 3}))
    assert [h.metrics["lr"] for h in result.history] == pytest.approx([0.01, 0.005, 0.01 / 3])
