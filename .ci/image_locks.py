"""The Docker images' locks, from requirements.lock: no test tools in either image.

    python .ci/image_locks.py requirements.lock api      > requirements-api.lock
    python .ci/image_locks.py requirements.lock worker   > requirements-worker.lock

Each holds the entries of requirements.lock (exact versions and hashes) that the service's
runtime dependencies (pyproject.toml's and the client's) need, following pip-compile's
`# via` notes: the api image's without torch and torchvision (and what only they need), the
worker's with them. `make lock` runs it; tests/test_dependencies.py checks they are current.
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision"}  # the worker image's alone
LEFT_OUT = {"descent-client"}  # installed from ./client
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_roots() -> set[str]:
    """The runtime dependencies of the service and the client, by name (the client's own
    name left out)."""
    names = set()
    for path in (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml"):
        for requirement in tomllib.loads(path.read_text())["project"]["dependencies"]:
            match = NAME.match(requirement)
            assert match, requirement
            names.add(normalize(match[0]))
    return names - LEFT_OUT


def entries(text: str) -> dict[str, tuple[list[str], set[str]]]:
    """Each pinned package: its lines, and the packages it is `# via`."""
    out: dict[str, tuple[list[str], set[str]]] = {}
    current: str | None = None
    in_via = False
    for line in text.splitlines():
        match = ENTRY.match(line)
        if match:
            current, in_via = normalize(match[1]), False
            out[current] = ([line], set())
            continue
        if current is None or not line.startswith(" "):
            current = None
            continue
        out[current][0].append(line)
        note = line.strip()
        if note.startswith("# via"):
            in_via = True
            parent = note.removeprefix("# via").strip()
        elif in_via and note.startswith("#   "):
            parent = note.removeprefix("#   ").strip()
        else:
            continue
        if parent:
            out[current][1].add(normalize(parent.split()[0]))
    return out


def image_lock(text: str, image: str) -> str:
    """``image``: api (no torch) or worker."""
    left_out = LEFT_OUT | (TORCH if image == "api" else set())
    pinned = entries(text)
    keep = (runtime_roots() - left_out) & set(pinned)
    while True:  # every package a kept one needs
        more = {name for name, (_, via) in pinned.items() if via & keep} - keep - left_out
        if not more:
            break
        keep |= more
    what = "without torch, torchvision" if image == "api" else "with torch"
    head = [
        f"# The {image} image's dependencies: requirements.lock's runtime part, {what} and no",
        "# test tools. Made by `make lock` (.ci/image_locks.py); do not edit.",
    ]
    body = [line for name in sorted(keep) for line in pinned[name][0]]
    return "\n".join(head + body) + "\n"


if __name__ == "__main__":
    sys.stdout.write(image_lock(Path(sys.argv[1]).read_text(), sys.argv[2]))
