"""The client's typed models (client/descent_client/models.py) against the API's OpenAPI
document: the same fields, the same required keys, compatible types. A field added to a
response schema fails here until the client's model has it too."""

import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from api.main import app
from descent_client.models import SCHEMAS

COMPONENTS: dict[str, Any] = app.openapi()["components"]["schemas"]
PYTHON = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def schema_types(prop: dict[str, Any]) -> set[str]:
    """The JSON types a property allows: a component by its name, an object or a list by
    what they hold (one level deep)."""
    if "$ref" in prop:
        return {prop["$ref"].rsplit("/", 1)[-1]}
    if "anyOf" in prop:
        return set().union(*(schema_types(p) for p in prop["anyOf"]))
    kind = prop.get("type")
    if kind == "array":
        return {f"array of {'|'.join(sorted(schema_types(prop.get('items', {}))))}"}
    if kind == "object":
        values = prop.get("additionalProperties")
        held = "|".join(sorted(schema_types(values))) if isinstance(values, dict) else "any"
        return {f"object of {held}"}
    return {kind} if kind else {"any"}


def python_types(annotation: Any) -> set[str]:
    """The same, for a model's annotation: a TypedDict names the component it mirrors, a
    plain dict of Any stands for an object (or a component the client does not type)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(python_types(a) for a in get_args(annotation)))
    if origin in (typing.NotRequired, typing.Required):
        return python_types(get_args(annotation)[0])
    if origin is Literal:
        return {PYTHON[type(value)] for value in get_args(annotation)}
    if origin is list:
        return {f"array of {'|'.join(sorted(python_types(get_args(annotation)[0])))}"}
    if origin is dict:
        held = get_args(annotation)[1]
        return {"object of " + ("any" if held is Any else "|".join(sorted(python_types(held))))}
    if annotation in SCHEMAS:
        return {SCHEMAS[annotation]}
    if annotation is Any:
        return {"any"}
    return {PYTHON[annotation]}


def compatible(model: set[str], api: set[str]) -> bool:
    """Equal, but where the client keeps a component untyped (``dict[str, Any]``)."""
    if model == api:
        return True
    untyped = {t for t in api if t in COMPONENTS or t.startswith("object of")}
    return "object of any" in model and model - {"object of any"} == api - untyped


@pytest.mark.parametrize("model", list(SCHEMAS), ids=lambda m: m.__name__)
def test_each_model_has_the_fields_of_its_schema(model: type) -> None:
    name = SCHEMAS[model]
    schema = COMPONENTS[name]
    where = f"client/descent_client/models.py: {model.__name__} (the API's {name})"
    fields = get_type_hints(model)
    assert set(fields) == set(schema["properties"]), (
        f"{where}: missing {sorted(set(schema['properties']) - set(fields))}, "
        f"extra {sorted(set(fields) - set(schema['properties']))}"
    )
    required = model.__required_keys__  # type: ignore[attr-defined]
    assert set(required) == set(schema.get("required", [])), (
        f"{where}: required keys differ: {sorted(set(required) ^ set(schema['required']))}"
    )
    hints = get_type_hints(model, include_extras=True)
    for field, prop in schema["properties"].items():
        ours, theirs = python_types(hints[field]), schema_types(prop)
        assert compatible(ours, theirs), f"{where}.{field}: {sorted(ours)} vs {sorted(theirs)}"


def test_every_response_component_the_client_reads_is_modelled() -> None:
    """The schemas the client's methods return (and the components inside them)."""
    assert set(SCHEMAS.values()) >= {
        "JobPublic", "BestPublic", "LastPublic", "EpochMetrics", "MetricsPage",
        "CheckpointPublic", "UploadPublic", "ExportPublic", "Parity", "StudyPublic",
        "TrialPublic", "ImportancePublic",
    }  # fmt: skip


def test_a_missing_field_is_caught() -> None:
    """The check above can fail: a model without one of its schema's fields."""
    from descent_client.models import Checkpoint

    fields = set(get_type_hints(Checkpoint)) - {"sha256"}
    assert fields != set(COMPONENTS["CheckpointPublic"]["properties"])
    assert not compatible({"string"}, {"integer"})
    assert compatible({"object of any", "null"}, {"DiagnosisPublic", "null"})
