"""The artifact store: a local folder (a shared volume in production).

Stored names are always made by the server: ``<job id>/<stem>.<suffix>``.
"""

from pathlib import Path

from descent.settings import get_settings


class LocalArtifacts:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def job_dir(self, job_id: str) -> Path:
        path = self.root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact path outside the store: {relative!r}")
        return path

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)


def get_artifacts() -> LocalArtifacts:
    settings = get_settings()
    assert settings.artifacts_dir is not None
    return LocalArtifacts(settings.artifacts_dir)
