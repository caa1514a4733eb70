"""Small helpers that turn stored values into JSON-safe wire values."""

import math
from datetime import UTC, datetime
from typing import Any


def finite(value: float | None) -> float | None:
    """A float for JSON: NaN and ±inf become None (JSON has no such numbers)."""
    if value is None or math.isfinite(value):
        return value
    return None


def json_safe(value: Any) -> Any:
    """A copy of a JSON-like value with non-finite floats as None and unknown types as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def non_finite_paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where a JSON-like value holds NaN or ±inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, (*path, k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, (*path, i))]
    return []


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
