"""No user bytes unpickled, and no dependency below the fix of a known CVE in what parses
user input: torch's weights-only loader, Starlette's multipart and Range handling,
python-multipart. The lock files pin every dependency, with hashes, and the venv holds
their versions."""

import ast
import importlib.util
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
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


# ---- the lock files (`make lock`) ----------------------------------------------------------

LOCK = ROOT / "requirements.lock"
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, tuple[str, int]]:
    """Each package a lock pins: its version and how many hashes it carries."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in text.splitlines():
        match = ENTRY.match(line)
        if match:
            current = normalize(match[1])
            out[current] = (match[2], 0)
        elif current and "--hash=sha256:" in line:
            version, hashes = out[current]
            out[current] = (version, hashes + line.count("--hash=sha256:"))
        elif not line.startswith(" "):
            current = None
    return out


def declared() -> list[Requirement]:
    """Every dependency of pyproject.toml (its test extra too) and of the client's."""
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    texts = service["dependencies"] + service["optional-dependencies"]["test"]
    return [Requirement(text) for text in texts + client["dependencies"]]


def test_the_lock_pins_every_dependency_with_hashes_within_its_range() -> None:
    locked = pins(LOCK.read_text())
    assert len(locked) > 50
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert unhashed == []
    for requirement in declared():
        name = normalize(requirement.name)
        if name == "descent-client":  # installed from ./client, not from the lock
            continue
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement}: run `make lock`"
        )
    assert locked["torch"][0] == "2.14.1" and locked["torchvision"][0] == "0.29.1"
    assert "descent" not in locked and "descent-client" not in locked


def test_the_venv_holds_the_locked_versions() -> None:
    """`make install` installs from the lock: what it pins is what is installed."""
    differ = {}
    for name, (locked, _) in pins(LOCK.read_text()).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(locked):
            differ[name] = (locked, installed)
    assert differ == {}, f"(locked, installed): {differ}"


@pytest.mark.parametrize("image", ["api", "worker"])
def test_the_images_locks_are_the_locks_runtime_part(image: str) -> None:
    spec = importlib.util.spec_from_file_location("image_locks", ROOT / ".ci" / "image_locks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / f"requirements-{image}.lock").read_text()
    assert text == module.image_lock(LOCK.read_text(), image), "run `make lock`"
    held, locked = pins(text), pins(LOCK.read_text())
    assert all(locked[name] == pin for name, pin in held.items())  # the same versions, hashes
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    runtime = {
        normalize(Requirement(text).name)
        for text in service["dependencies"] + client["dependencies"]
    } - {"descent-client"}
    torch = {"torch", "torchvision"}
    assert not held.keys() & {"pytest", "ruff", "mypy", "moto", "schemathesis"}  # test tools
    if image == "api":
        assert runtime - torch <= held.keys()
        assert not held.keys() & (torch | {"triton"})
        assert not [name for name in held if name.startswith("nvidia-")]
    else:
        assert runtime <= held.keys()
