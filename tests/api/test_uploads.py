"""Uploads and hostile input: size limits (413), form limits, zip bombs, path traversal in
archives, pickled arrays, forged safetensors headers; stored names made by the server."""

import io
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Upload
from store.users import set_limits
from tests.api.builders import bearer, make_user
from tests.api.test_auth import npz_bytes, safetensors_bytes


def upload(client: TestClient, kind: str, content: bytes, filename: str = "f.bin", **data: str):  # type: ignore[no-untyped-def]
    return client.post(f"/v1/{kind}", files={"file": (filename, content)}, data=data)


def zip_of(members: dict[str, bytes], mode: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def refused(response, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    for word in words:
        assert word in error["msg"], error["msg"]


def test_an_npz_dataset_is_checked_and_stored_under_a_server_made_name(
    client: TestClient,
) -> None:
    content = npz_bytes(rows=30)
    response = upload(client, "datasets", content, filename="../../etc/evil name.npz", name="mine")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "npz" and body["name"] == "mine"
    assert body["filename"] == "evil name.npz"  # display only, its folders dropped
    assert body["info"]["rows"] == 30
    assert body["info"]["arrays"]["x"] == {"shape": [30, 4], "dtype": "float64"}
    with session_scope() as session:
        row = session.get_one(Upload, body["id"])
    assert row.path == f"uploads/dataset/{body['id']}.npz"
    stored = get_artifacts().path(row.path)
    assert stored.read_bytes() == content
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [body["id"]]
    assert client.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert not stored.exists()
    assert client.get(f"/v1/datasets/{body['id']}").status_code == 404


def test_a_csv_dataset_and_a_safetensors_file(client: TestClient) -> None:
    csv = b"a,b,label\n1,2,0\n3.5,-4,1\n5,6e-3,0\n"
    response = upload(client, "datasets", csv, filename="d.csv")
    assert response.status_code == 201, response.text
    assert response.json()["info"] == {"rows": 3, "columns": 3, "header": ["a", "b", "label"]}
    weights = upload(client, "weights", safetensors_bytes(), filename="w.safetensors")
    assert weights.status_code == 201, weights.text
    assert weights.json()["info"] == {"tensors": 1, "parameters": 6, "dtypes": ["F32"]}


@pytest.mark.parametrize(
    "name",
    ["../x.npy", "/etc/x.npy", "a/../../x.npy", "C:/x.npy", "..\\x.npy", "sub/x.npy", "x.py"],
)
def test_archive_member_paths_that_could_escape_are_refused(client: TestClient, name: str) -> None:
    content = zip_of({name: npy(np.zeros(3)), "y.npy": npy(np.zeros(3))})
    response = upload(client, "datasets", content)
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "path traversal" in message or "an .npz holds only NAME.npy" in message


def test_links_in_archives_are_refused(client: TestClient) -> None:
    content = zip_of({"x.npy": b"/etc/passwd", "y.npy": npy(np.zeros(3))}, mode=0o120777)
    refused(upload(client, "datasets", content), "not a plain file")


def test_a_zip_bomb_is_refused_before_it_is_unpacked(client: TestClient) -> None:
    # 200 MB of zeros compress to about 200 kB: far beyond any real dataset's ratio.
    header = npy(np.zeros(1, dtype=np.uint8))[:128]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header)
            for _ in range(200):
                member.write(bytes(1 << 20))
        archive.writestr("y.npy", npy(np.zeros(3)))
    content = buffer.getvalue()
    assert len(content) < 1_000_000
    refused(upload(client, "datasets", content), "zip bomb")


def test_an_archive_that_unpacks_past_the_limit_is_refused(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    settings = migrated(
        configure(DESCENT_DATA_DIR=str(tmp_path / "d"), DESCENT_MAX_UNPACKED_BYTES="1000")
    )
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        refused(upload(client, "datasets", npz_bytes(rows=100)), "unpacks to more than 1000")


def test_lying_sizes_in_an_archive_are_caught_while_reading(client: TestClient) -> None:
    content = bytearray(zip_of({"x.npy": npy(np.zeros((4, 2))), "y.npy": npy(np.zeros(4))}))
    # Declare x.npy's uncompressed size as 10 bytes in its central directory entry.
    first = content.find(b"PK\x01\x02")
    struct.pack_into("<I", content, first + 24, 10)
    refused(upload(client, "datasets", bytes(content)), "x.npy")


def test_pickled_object_arrays_are_never_loaded(client: TestClient) -> None:
    evil = np.array([{"__reduce__": "os.system"}, None], dtype=object)
    content = zip_of({"x.npy": npy(evil), "y.npy": npy(np.zeros(2))})
    refused(upload(client, "datasets", content), "must hold numbers")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x00\x01\x02binary junk", "NUL bytes"),
        (b"\xff\xfe\xfa junk", "UTF-8"),
        (b"a,b\n1,2\n3\n", "line 3 has 1 columns, not 2"),
        (b"a,b\n1,x\n2,3\n", "every cell after the header is a number"),
        (b"1,2\n", "at least 2 rows"),
        (b"a,b\n1,nan\n2,3\n", "every cell"),
    ],
)
def test_bad_csv_datasets_are_refused(client: TestClient, content: bytes, words: str) -> None:
    refused(upload(client, "datasets", content), words)


def forge(header: dict, data: bytes = b"") -> bytes:  # type: ignore[type-arg]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x02", "shorter than"),
        (struct.pack("<Q", 2**60) + b"{}", "bad header length"),
        (forge({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "cover 8 bytes"),
        (forge({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "fit"),
        (forge({"w": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, b"x"), "dtype"),
        (
            forge(
                {
                    "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},  # overlaps a
                },
                bytes(6),
            ),
            "does not follow",
        ),
        (forge([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
    ],
)
def test_forged_safetensors_are_refused(client: TestClient, content: bytes, words: str) -> None:
    refused(upload(client, "weights", content), words)


def test_form_limits_refuse_extra_files_and_fields(client: TestClient) -> None:
    two_files = client.post(
        "/v1/datasets",
        files=[("file", ("a.csv", b"1,2\n3,4\n")), ("file", ("b.csv", b"1,2\n3,4\n"))],
    )
    assert two_files.status_code == 400
    many_fields = client.post(
        "/v1/datasets",
        files={"file": ("a.csv", b"1,2\n3,4\n")},
        data={"name": "x", "extra": "y", "more": "z"},
    )
    assert many_fields.status_code == 400
    long_field = client.post(
        "/v1/datasets", files={"file": ("a.csv", b"1,2\n3,4\n")}, data={"name": "n" * 10_000}
    )
    assert long_field.status_code == 400
    no_file = client.post("/v1/datasets", data={"name": "x"})
    assert no_file.status_code == 422
    assert client.post("/v1/datasets", json={"file": "x"}).status_code == 422
    assert client.get("/v1/datasets").json()["items"] == []


def test_upload_size_limit_and_owner_quota_are_413(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    settings = migrated(
        configure(DESCENT_DATA_DIR=str(tmp_path / "d"), DESCENT_MAX_UPLOAD_BYTES="100000")
    )
    token = make_user()
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        big = b"a,b\n" + b"1,2\n" * 30_000  # 120 kB
        response = upload(client, "datasets", big)
        assert response.status_code == 413
        assert "100000 bytes" in response.json()["detail"]
        # Other routes keep the small JSON body limit.
        assert client.post("/v1/jobs", content=b"x" * 1_000_001).status_code == 413

        with session_scope() as session:
            set_limits(session, "local", {"upload_bytes": 5000})
        small = b"a,b\n" + b"1,2\n" * 800  # 3.2 kB
        assert upload(client, "datasets", small).status_code == 201
        over = upload(client, "datasets", small)
        assert over.status_code == 413
        assert "limit of 5000" in over.json()["detail"] or "quota" in over.json()["detail"]
        assert len(client.get("/v1/datasets").json()["items"]) == 1
