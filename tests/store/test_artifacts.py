"""The local folder, the embedded default: files stay where they are written, keys are their
paths under the folder, and the same interface as the object store checks sha256s."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from descent.settings import Settings
from store.artifacts import ChecksumMismatch, LocalArtifacts, get_artifacts


def test_the_default_store_is_the_local_folder(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = configure(DESCENT_DATA_DIR=str(tmp_path / "data"))
    store = get_artifacts()
    assert isinstance(store, LocalArtifacts) and not store.remote
    assert store.root == (tmp_path / "data" / "artifacts").resolve() == settings.artifacts_dir


def test_local_files_are_stored_in_place_and_checked(tmp_path: Path) -> None:
    store = LocalArtifacts(tmp_path / "artifacts")
    data = bytes(range(256)) * 10
    digest = hashlib.sha256(data).hexdigest()
    path = store.job_dir("job") / "epoch-00001-1.safetensors"
    path.write_bytes(data)
    key = store.publish(path, digest)
    assert key == "job/epoch-00001-1.safetensors" and path.read_bytes() == data
    with store.fetch(key, digest) as local:
        assert local == path
    assert path.exists()  # fetching a local file copies nothing and deletes nothing
    assert b"".join(store.read(key, 10, 19)) == data[10:20]
    assert b"".join(store.read(key, 2550)) == data[2550:]
    info = store.info(key)
    assert info is not None and info.size == len(data)
    path.write_bytes(b"x" + data[1:])
    with pytest.raises(ChecksumMismatch):
        with store.fetch(key, digest):
            pass
    assert store.keys("job") == [key] and store.keys("nothing") == []
    assert store.presigned_url(key, "f.safetensors", 60) is None
    with pytest.raises(ValueError, match="outside the store"):
        store.path("../elsewhere")
    store.delete(key)
    assert store.info(key) is None and not path.exists()
