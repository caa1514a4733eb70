"""Downsampling an epoch history for plotting, keeping its shape and its extremes.

The interior epochs are cut into equal buckets; each bucket keeps the epochs that hold the
minimum and the maximum of every key metric (the losses and the monitored metric), and the
first and last epochs are always kept. So every key metric's global minimum and maximum
survive, and the curve keeps its ups and downs at the resolution of the buckets.
"""

from collections.abc import Sequence
from typing import TypeAlias

Record: TypeAlias = tuple[int, dict[str, float | None]]


def key_metrics(records: Sequence[Record], monitor: str | None) -> list[str]:
    """The monitored metric first, then every loss; all metrics if there is no loss."""
    names: dict[str, None] = {}
    for _, metrics in records:
        names.update(dict.fromkeys(metrics))
    keys = [monitor] if monitor in names else []
    keys += sorted(n for n in names if "loss" in n and n != monitor)
    return keys or sorted(names)


def downsample(records: Sequence[Record], max_points: int, keys: Sequence[str]) -> list[Record]:
    """At most ``max_points`` (≥ 2) of ``records``, in epoch order."""
    n = len(records)
    if n <= max_points:
        return list(records)
    budget = max_points - 2  # the first and the last record are always kept
    if budget <= 0:
        return [records[0], records[-1]]
    buckets = max(1, budget // 2)
    while True:
        chosen = _extremes(records, keys, buckets)
        if len(chosen) <= budget:
            break
        if buckets == 1:
            # Even one bucket holds more extremes than fit: keep them in key order, so
            # the monitored metric's minimum and maximum go first.
            chosen = list(dict.fromkeys(_extremes_in_key_order(records, keys)))[:budget]
            break
        buckets = max(1, min(buckets - 1, buckets * budget // len(chosen)))
    picked = sorted({0, n - 1, *chosen})
    return [records[i] for i in picked]


def _extremes(records: Sequence[Record], keys: Sequence[str], buckets: int) -> list[int]:
    interior = len(records) - 2
    chosen: dict[int, None] = {}
    for b in range(buckets):
        lo = 1 + b * interior // buckets
        hi = 1 + (b + 1) * interior // buckets
        for key in keys:
            chosen.update(dict.fromkeys(_argmin_argmax(records, key, lo, hi)))
    return list(chosen)


def _extremes_in_key_order(records: Sequence[Record], keys: Sequence[str]) -> list[int]:
    out: list[int] = []
    for key in keys:
        out += _argmin_argmax(records, key, 1, len(records) - 1)
    return out


def _argmin_argmax(records: Sequence[Record], key: str, lo: int, hi: int) -> list[int]:
    lowest = highest = None
    low_value = high_value = 0.0
    for i in range(lo, hi):
        value = records[i][1].get(key)
        if value is None:  # missing, or not finite (stored NaN/inf are served as null)
            continue
        if lowest is None or value < low_value:
            lowest, low_value = i, value
        if highest is None or value > high_value:
            highest, high_value = i, value
    return [i for i in (lowest, highest) if i is not None]
