"""No user bytes unpickled, and no dependency below the fix of a known CVE in what parses
user input: torch's weights-only loader, Starlette's multipart and Range handling,
python-multipart."""

import ast
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("api", "core", "worker", "store", "descent")

FLOORS = {
    "torch": "2.6.0",  # CVE-2025-32434: torch.load(weights_only=True) could run code
    "starlette": "1.3.1",  # CVE-2025-62727 (Range), CVE-2025-54121, CVE-2026-48710, form limits
    "python-multipart": "0.0.32",  # CVE-2024-53981, CVE-2026-24486, CVE-2026-42561, ...
}


@pytest.mark.parametrize(("package", "floor"), FLOORS.items())
def test_installed_versions_are_at_or_above_the_fixes(package: str, floor: str) -> None:
    assert Version(version(package)) >= Version(floor)


def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value if isinstance(func, ast.Attribute) else None
            prefix = getattr(owner, "id", getattr(owner, "attr", "")) if owner is not None else ""
            out.append((f"{prefix}.{name}".lstrip("."), node))
    return out


def test_nothing_is_unpickled_unsafely() -> None:
    """Every torch.load passes weights_only=True; no pickle, no np.load with pickles."""
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for name, call in calls(tree):
                keywords = {k.arg: k.value for k in call.keywords}
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                if name == "torch.load":
                    flag = keywords.get("weights_only")
                    assert isinstance(flag, ast.Constant) and flag.value is True, where
                assert not name.startswith(("pickle.", "cPickle.", "dill.", "joblib.")), where
                if name in ("np.load", "numpy.load"):
                    flag = keywords.get("allow_pickle")
                    assert flag is None or (isinstance(flag, ast.Constant) and not flag.value)
