"""A study's search space over job-spec paths: parsed, enumerated (grid) and applied.

A space maps dotted spec paths to distributions::

    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    model.hidden: {choice: [[64], [128, 64]]}
    training.batch_size: {int: [16, 128], step: 16}
    optimizer: {choice: [{name: sgd, momentum: {uniform: [0.5, 0.99]}}, {name: adam}]}

A ``choice`` takes any JSON values; a choice of objects is merged into the spec at its path,
and the distributions inside an option are sampled only when that option is chosen (a
conditional space). A point of the space is ``{name: value}`` where a choice's value is the
index of its option; ``apply`` turns a point into a job spec (plain JSON), ``describe`` into
the parameters shown to the user. Pure Python: no torch, no sampler (see worker/studies.py).
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from core.spec import JobSpec

KINDS = ("choice", "uniform", "loguniform", "int")
MAX_PARAMS = 32
MAX_CHOICES = 100
MAX_GRID = 100_000


class SpaceError(ValueError):
    """A space that cannot be used: ``loc`` is where in the space (the path, then more)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


@dataclass
class Param:
    """One dimension. ``name`` is its full dotted spec path (nested ones too)."""

    name: str
    kind: str
    options: list[Any] = field(default_factory=list)  # choice: the options, nested dists removed
    low: float = 0.0
    high: float = 0.0
    step: int = 1
    log: bool = False
    # choice: the conditional parameters of each option (by option index)
    children: dict[int, list[Param]] = field(default_factory=dict)

    @property
    def path(self) -> list[str]:
        return self.name.split(".")

    def ends(self) -> list[Any]:
        """The values to validate when not every value is tried: each option, each end."""
        if self.kind == "choice":
            return list(range(len(self.options)))
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return list(range(len(self.options)))
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, self.step))
        raise SpaceError(
            (self.name,),
            f"a grid search needs choice or int (without log) distributions; {self.name} is "
            f"{self.kind}",
        )


def parse(space: Any) -> list[Param]:
    """The space's parameters, parents before the paths inside them."""
    if not isinstance(space, dict) or not space:
        raise SpaceError((), "must be a non-empty object of {dotted spec path: distribution}")
    params = [_parse_param(str(name), dist, (str(name),)) for name, dist in space.items()]
    count = sum(1 for _ in _walk(params))
    if count > MAX_PARAMS:
        raise SpaceError((), f"has {count} parameters; at most {MAX_PARAMS}")
    names = [p.name for p in params]
    for p in params:
        if not _schema_has(p.path):
            raise SpaceError((p.name,), f"{p.name} is not a field of the job spec")
    if len(set(names)) != len(names):
        raise SpaceError((), "a path is given twice")
    return sorted(params, key=lambda p: len(p.path))


def _is_dist(value: Any) -> bool:
    return isinstance(value, dict) and len(set(value) & set(KINDS)) == 1


def _parse_param(name: str, dist: Any, loc: tuple[str | int, ...]) -> Param:
    if not _is_dist(dist):
        raise SpaceError(
            loc,
            "must be one of {choice: [...]}, {uniform: [a, b]}, {loguniform: [a, b]}, "
            "{int: [a, b], step: 1, log: false}",
        )
    kind = next(k for k in KINDS if k in dist)
    allowed = {kind, "step", "log"} if kind == "int" else {kind}
    extra = sorted(set(dist) - allowed)
    if extra:
        raise SpaceError((*loc, extra[0]), f"{kind} takes no {extra[0]!r}")
    values = dist[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values or len(values) > MAX_CHOICES:
            raise SpaceError((*loc, kind), f"must be a list of 1 to {MAX_CHOICES} values")
        param = Param(name, kind)
        for index, option in enumerate(values):
            if isinstance(option, dict):
                constant, nested = _split(option, name, (*loc, kind, index))
                param.options.append(constant)
                if nested:
                    param.children[index] = nested
            else:
                param.options.append(option)
        return param
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        or not all(math.isfinite(v) for v in values)
    ):
        raise SpaceError((*loc, kind), "must be two finite numbers [low, high]")
    low, high = values
    if kind == "int":
        step, log = dist.get("step", 1), dist.get("log", False)
        if not isinstance(low, int) or not isinstance(high, int) or low > high:
            raise SpaceError((*loc, kind), "must be two integers, low <= high")
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise SpaceError((*loc, "step"), "must be an integer >= 1")
        if not isinstance(log, bool):
            raise SpaceError((*loc, "log"), "must be true or false")
        if log and (low < 1 or step != 1):
            raise SpaceError((*loc, "log"), "a log int range needs low >= 1 and step 1")
        return Param(name, kind, low=low, high=high, step=step, log=log)
    if not low < high:
        raise SpaceError((*loc, kind), "must be [low, high] with low < high")
    if kind == "loguniform" and low <= 0:
        raise SpaceError((*loc, kind), "a loguniform range needs low > 0")
    return Param(name, kind, low=float(low), high=float(high), log=kind == "loguniform")


def _split(
    option: dict[str, Any], prefix: str, loc: tuple[str | int, ...]
) -> tuple[dict[str, Any], list[Param]]:
    """An object option: its constant part and the distributions inside it."""
    constant: dict[str, Any] = {}
    nested: list[Param] = []
    for key, value in option.items():
        name = f"{prefix}.{key}"
        if _is_dist(value):
            nested.append(_parse_param(name, value, (*loc, key)))
        elif isinstance(value, dict):
            inner, more = _split(value, name, (*loc, key))
            constant[key] = inner
            nested.extend(more)
        else:
            constant[key] = value
    return constant, nested


def _walk(params: list[Param]) -> Iterator[Param]:
    for p in params:
        yield p
        for children in p.children.values():
            yield from _walk(children)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation may hold (through Optional, unions)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _schema_has(path: list[str]) -> bool:
    models: list[type[BaseModel]] = [JobSpec]
    for segment in path:
        fields = [m.model_fields[segment] for m in models if segment in m.model_fields]
        if not fields:
            return False
        models = [m for f in fields for m in _models(f.annotation)]
    return True


# ---------------------------------------------------------------------------- points


def active(params: list[Param], point: dict[str, Any]) -> Iterator[Param]:
    """The parameters a point uses: the top level, and the children of chosen options."""
    for p in params:
        yield p
        if p.kind == "choice" and p.name in point:
            yield from active(p.children.get(point[p.name], []), point)


def grid(params: list[Param]) -> Iterator[dict[str, Any]]:
    """Every point of a grid, in a fixed order (conditional parameters expanded per option)."""

    def points(group: list[Param]) -> Iterator[dict[str, Any]]:
        if not group:
            yield {}
            return
        first, rest = group[0], group[1:]
        for value in first.grid():
            children = first.children.get(value, []) if first.kind == "choice" else []
            for inner in points(children):
                for tail in points(rest):
                    yield {first.name: value, **inner, **tail}

    return points(params)


def grid_size(params: list[Param]) -> int:
    def size(group: list[Param]) -> int:
        total = 1
        for p in group:
            values = p.grid()
            if p.kind == "choice":
                total *= sum(size(p.children.get(v, [])) for v in values)
            else:
                total *= len(values)
            if total > MAX_GRID:
                return total
        return total

    return size(params)


def ends(params: list[Param]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Points that together take every choice option and both ends of every range:
    (the parameter varied, its value, the point), one parameter varied at a time."""

    def base(group: list[Param]) -> dict[str, Any]:
        point: dict[str, Any] = {}
        for p in group:
            point[p.name] = p.ends()[0]
            if p.kind == "choice":
                point.update(base(p.children.get(point[p.name], [])))
        return point

    def vary(group: list[Param], fixed: dict[str, Any]) -> Iterator[tuple[str, Any, dict]]:
        for p in group:
            for value in p.ends():
                point = {**fixed, p.name: value}
                if p.kind == "choice":
                    children = p.children.get(value, [])
                    point.update(base(children))
                    yield p.name, value, point
                    yield from vary(children, point)
                else:
                    yield p.name, value, point

    start = base(params)
    yield from vary(params, start)


def apply(base: dict[str, Any], params: list[Param], point: dict[str, Any]) -> dict[str, Any]:
    """The job spec (JSON) of a point: the base with each chosen value set at its path."""
    spec = copy.deepcopy(base)
    for p in active(params, point):
        value = point[p.name]
        if p.kind == "choice":
            option = copy.deepcopy(p.options[value])
            if isinstance(option, dict):
                target = _container(spec, p.path)
                current = target.get(p.path[-1])
                target[p.path[-1]] = _merge(current if isinstance(current, dict) else {}, option)
                continue
            value = option
        _container(spec, p.path)[p.path[-1]] = value
    return spec


def describe(params: list[Param], point: dict[str, Any]) -> dict[str, Any]:
    """The parameters as a user reads them: {path: the value given (a choice's option)}."""
    return {
        p.name: copy.deepcopy(p.options[point[p.name]]) if p.kind == "choice" else point[p.name]
        for p in active(params, point)
    }


def _container(spec: dict[str, Any], path: list[str]) -> dict[str, Any]:
    node = spec
    for segment in path[:-1]:
        child = node.get(segment)
        if not isinstance(child, dict):
            child = node[segment] = {}
        node = child
    return node


def _merge(into: dict[str, Any], option: dict[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    for key, value in option.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


__all__ = [
    "Param",
    "SpaceError",
    "active",
    "apply",
    "describe",
    "ends",
    "grid",
    "grid_size",
    "parse",
]
