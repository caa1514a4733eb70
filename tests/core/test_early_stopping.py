import math

import pytest

from core.early_stopping import EarlyStopping
from core.results import StopInfo


def feed(es: EarlyStopping, values: list[float]) -> tuple[list[bool], StopInfo | None]:
    """Feed values epoch by epoch until a stop; return is_best per epoch and the stop."""
    bests = []
    for epoch, value in enumerate(values, start=1):
        is_best, stop = es.update(epoch, value)
        bests.append(is_best)
        if stop is not None:
            return bests, stop
    return bests, None


def test_patience_fires_after_patience_epochs_without_improvement() -> None:
    es = EarlyStopping(patience=3)
    bests, stop = feed(es, [1.0, 0.8, 0.9, 0.85, 0.81, 0.7])
    assert stop is not None
    assert (stop.reason, stop.rule, stop.epoch) == ("early_stopping", "patience", 5)
    assert stop.detail == "no improvement > 0.0 for 3 epochs"
    assert bests == [True, True, False, False, False]
    assert (es.best_epoch, es.best_value, es.wait) == (2, 0.8, 3)


def test_improvement_resets_patience() -> None:
    es = EarlyStopping(patience=2)
    _, stop = feed(es, [1.0, 1.1, 0.9, 1.2, 0.8, 0.85])
    assert stop is None and es.wait == 1 and es.best_epoch == 5


def test_min_delta_counts_small_improvements_as_none_but_best_is_best() -> None:
    es = EarlyStopping(patience=2, min_delta=0.1)
    bests, stop = feed(es, [1.0, 0.95, 0.92, 0.5])
    assert stop is not None and (stop.rule, stop.epoch) == ("patience", 3)
    # 0.92 was not a significant improvement, but it is the best value of the run so far.
    assert bests == [True, True, True]
    assert (es.best_epoch, es.best_value) == (3, 0.92)
    assert stop.detail == "no improvement > 0.1 for 2 epochs"


def test_best_is_best_over_the_whole_run_not_the_last() -> None:
    es = EarlyStopping(patience=100)
    bests, _ = feed(es, [0.9, 0.5, 0.7, 0.6, 0.55, 0.8])
    assert (es.best_epoch, es.best_value) == (2, 0.5)
    assert bests == [True, True, False, False, False, False]


def test_max_mode() -> None:
    es = EarlyStopping("val_accuracy", "max", patience=1)
    _, stop = feed(es, [0.5, 0.7, 0.6])
    assert stop is not None and (stop.rule, stop.epoch) == ("patience", 3)
    assert es.best_value == 0.7


@pytest.mark.parametrize(
    ("kwargs", "values", "rule", "epoch"),
    [
        ({"stopping_threshold": 0.3}, [1.0, 0.5, 0.3, 0.1], "stopping_threshold", 3),
        ({"divergence_threshold": 5.0}, [1.0, 2.0, 6.0], "divergence_threshold", 3),
        ({}, [1.0, math.nan], "non_finite", 2),
        ({}, [1.0, math.inf], "non_finite", 2),
        ({"mode": "max", "stopping_threshold": 0.9}, [0.5, 0.95], "stopping_threshold", 2),
        ({"mode": "max", "divergence_threshold": 0.1}, [0.5, 0.05], "divergence_threshold", 2),
    ],
)
def test_threshold_rules(kwargs: dict, values: list[float], rule: str, epoch: int) -> None:
    es = EarlyStopping(patience=100, **kwargs)
    _, stop = feed(es, values)
    assert stop is not None and (stop.rule, stop.epoch) == (rule, epoch)


def test_min_epochs_holds_back_patience_and_thresholds_but_not_non_finite() -> None:
    es = EarlyStopping(patience=1, stopping_threshold=0.5, min_epochs=4)
    _, stop = feed(es, [1.0, 0.4, 0.45, 0.46, 0.47])
    assert stop is not None and (stop.rule, stop.epoch) == ("stopping_threshold", 4)
    es = EarlyStopping(patience=1, min_epochs=10)
    _, stop = feed(es, [1.0, math.nan])
    assert stop is not None and stop.rule == "non_finite"


def test_check_finite_off_never_calls_nan_good_enough() -> None:
    es = EarlyStopping(patience=100, stopping_threshold=0.5, check_finite=False)
    _, stop = feed(es, [1.0, math.nan, 0.9])
    assert stop is None


def test_tracking_only() -> None:
    es = EarlyStopping.from_spec(None)
    bests, stop = feed(es, [1.0, 2.0, 3.0, 4.0, 0.5, math.nan])
    assert stop is None and es.monitor == "val_loss" and es.best_epoch == 5
    assert bests == [True, False, False, False, True, False]


def test_state_dict_round_trip_continues_identically() -> None:
    values = [1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.9, 0.95]
    whole = EarlyStopping(patience=3)
    _, stop_whole = feed(whole, values)
    first = EarlyStopping(patience=3)
    feed(first, values[:3])
    second = EarlyStopping(patience=3)
    second.load_state_dict(first.state_dict())
    stop = None
    for epoch, value in enumerate(values[3:], start=4):
        _, stop = second.update(epoch, value)
        if stop:
            break
    assert stop == stop_whole and second.state_dict() == whole.state_dict()
