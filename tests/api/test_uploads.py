"""Uploads and hostile input: size limits (413), form limits, zip bombs, path traversal and
links in archives, pickled arrays and weights that would run code, forged safetensors; the
core's checks of datasets (CSV target column, classes) and of weights against their
architecture; stored names made by the server."""

import io
import json
import signal
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.errors import TooLarge
from core.errors import InvalidUpload
from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Upload
from store.users import set_limits
from tests.api.builders import bearer, make_user
from tests.api.inspectors import allocate, crash, die, hang
from tests.files import (
    Payload,
    csv_bytes,
    declaring_less,
    imagefolder_zip,
    needing_zip_version,
    npz_bytes,
    pickle_payload,
    png_bytes,
    safetensors_forged,
    weights_bytes,
    with_bad_crc,
    with_corrupt_deflate,
    with_unknown_method,
    zip_of,
)


def upload(client: TestClient, kind: str, content: bytes, filename: str = "f.bin", **data: str):  # type: ignore[no-untyped-def]
    return client.post(f"/v1/{kind}", files={"file": (filename, content)}, data=data)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def refused(response, *words: str, field: str = "file") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    for word in words:
        assert word in error["msg"], error["msg"]


def uploads_on_disk() -> list[Path]:
    """Every file under the upload folders (temp files of a refused upload included)."""
    root = get_artifacts().root / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_an_npz_dataset_is_checked_and_stored_under_a_server_made_name(
    client: TestClient,
) -> None:
    content = npz_bytes(rows=30)
    response = upload(client, "datasets", content, filename="../../etc/evil name.npz", name="mine")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "npz" and body["name"] == "mine"
    assert body["filename"] == "evil name.npz"  # display only, its folders dropped
    info = body["info"]
    assert (info["task"], info["n_samples"], info["n_features"]) == ("classification", 30, 4)
    assert info["class_counts"] == {"0": 15, "1": 15}
    with session_scope() as session:
        row = session.get_one(Upload, body["id"])
    assert row.path == f"uploads/dataset/{body['id']}.npz"
    stored = get_artifacts().path(row.path)
    assert stored.read_bytes() == content
    assert uploads_on_disk() == [stored]  # stored once; nothing else left behind
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [body["id"]]
    assert client.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert not stored.exists()
    assert client.get(f"/v1/datasets/{body['id']}").status_code == 404


def test_a_csv_dataset_names_its_target_column(client: TestClient) -> None:
    response = upload(client, "datasets", csv_bytes(rows=20), filename="d.csv", target="label")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "csv"
    info = body["info"]
    assert info["target"] == "label" and info["columns"] == ["a", "b"]
    assert info["class_names"] == ["no", "yes"] and info["n_features"] == 2
    # Without the target column's name, or naming a column the file lacks: 422 saying so.
    refused(upload(client, "datasets", csv_bytes()), "target column", field="target")
    refused(
        upload(client, "datasets", csv_bytes(), target="species"),
        "no column 'species'",
        "'a', 'b', 'label'",
    )
    # Target is for CSV files only; arch for weights only.
    refused(upload(client, "datasets", npz_bytes(), target="y"), "CSV column", field="target")
    assert len(client.get("/v1/datasets").json()["items"]) == 1


def test_an_image_folder_zip_is_a_classification_dataset(client: TestClient) -> None:
    response = upload(client, "datasets", imagefolder_zip(per_class=4), filename="pics.zip")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "imagefolder"
    info = body["info"]
    assert info["image_shape"] == [3, 32, 32] and info["pixel_max"] == 255.0
    assert info["class_counts"] == {"blue": 4, "red": 4}
    with session_scope() as session:
        assert session.get_one(Upload, body["id"]).path.endswith(".zip")
    # A class folder with no image in it is refused, naming it.
    red = png_bytes((200, 0, 0))
    empty = zip_of({"red/1.png": red, "red/2.png": red, "blue/": b""})
    refused(upload(client, "datasets", empty), "class 'blue' has no samples")


def test_weights_are_checked_against_their_architecture(client: TestClient) -> None:
    for format in ("safetensors", "pt"):
        content = weights_bytes(format=format)
        response = upload(client, "weights", content, arch="mobilenet_v3_small")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["format"] == ("safetensors" if format == "safetensors" else "pytorch")
        assert body["info"]["arch"] == "mobilenet_v3_small"
        assert body["info"]["dtypes"] == ["float16", "int64"]
    # Weights of another architecture: 422 listing the first mismatches.
    response = upload(client, "weights", weights_bytes(), arch="resnet18")
    refused(response, "do not fit resnet18", "missing keys", "unexpected keys", "(and ")
    refused(upload(client, "weights", weights_bytes()), "architecture", field="arch")
    refused(upload(client, "weights", weights_bytes(), arch="vgg11"), "unknown", field="arch")
    assert len(client.get("/v1/weights").json()["items"]) == 2


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    content = pickle_payload(marker)
    refused(
        upload(client, "weights", content, filename="w.pt", arch="resnet18"),
        "weights_only=True",
    )
    assert not marker.exists()
    assert uploads_on_disk() == []
    # The same payload does run code when unpickled: the file was a live one.
    import pickle

    pickle.loads(pickle_payload(tmp_path / "live"))
    assert (tmp_path / "live").exists()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../red/x.png", "'..' leads out"),
        ("red/../../x.png", "'..' leads out"),
        ("/etc/x.png", "an absolute path"),
        ("C:/x.png", "an absolute path"),
        ("..\\x.png", "bad characters"),
    ],
)
def test_archive_member_paths_that_could_escape_are_refused(
    client: TestClient, name: str, words: str
) -> None:
    images = {f"{c}/{i}.png": png_bytes((99, 99, 99)) for c in ("red", "blue") for i in range(2)}
    refused(upload(client, "datasets", zip_of({**images, name: b"x"})), "refused", words)
    assert uploads_on_disk() == []


def test_links_in_archives_are_refused(client: TestClient) -> None:
    images = {f"{c}/{i}.png": png_bytes((99, 99, 99)) for c in ("red", "blue") for i in range(2)}
    content = zip_of(images, links={"red/passwd.png": "/etc/passwd"})
    refused(upload(client, "datasets", content), "a symbolic link")


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
        refused(upload(client, "datasets", npz_bytes(rows=100)), "at most 1,000 bytes")
        refused(upload(client, "datasets", imagefolder_zip()), "at most 1,000 bytes")


def test_lying_sizes_in_an_archive_are_caught_while_reading(client: TestClient) -> None:
    content = bytearray(zip_of({"x.npy": npy(np.zeros((4, 2))), "y.npy": npy(np.zeros(4))}))
    # Declare x.npy's uncompressed size as 10 bytes in its central directory entry.
    first = content.find(b"PK\x01\x02")
    struct.pack_into("<I", content, first + 24, 10)
    refused(upload(client, "datasets", bytes(content)), "x.npy")


def test_pickled_object_arrays_are_never_loaded(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = np.array([Payload(marker), None], dtype=object)
    content = zip_of({"x.npy": npy(evil), "y.npy": npy(np.zeros(2))})
    refused(upload(client, "datasets", content), "cannot be read", "allow_pickle=False")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x00\x01\x02binary junk", "a header row and at least 2 rows"),
        (b"\xff\xfe\xfa junk", "not UTF-8"),
        (b"a,b\n1,0\n3\n", "line 3 has 1 columns; the header has 2"),
        (b"a,b\n1,0\nx,1\n2,0\n3,1\n", "line 3, column 'a': 'x' is not a finite number"),
        (b"a,b\n1,0\n", "at least 2 rows"),
        (b"a,b\n1,nan\n2,3\n", "the target 'nan' is not finite"),
        (b"a,b\n1,x\n2,x\n3,x\n", "at least 2 classes"),
    ],
)
def test_bad_csv_datasets_are_refused(client: TestClient, content: bytes, words: str) -> None:
    refused(upload(client, "datasets", content, target="b"), words)


def forge(header: dict, data: bytes = b"") -> bytes:  # type: ignore[type-arg]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x02", "nor a PyTorch state dict"),
        (struct.pack("<Q", 2**60) + b"{}", "not a valid safetensors file"),
        (forge({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "safetensors"),
        (forge({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "safe"),
        (forge({"w": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, b"x"), "safe"),
        (
            forge(
                {
                    "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},  # overlaps a
                },
                bytes(6),
            ),
            "safetensors",
        ),
        (forge([1, 2]), "safetensors"),  # type: ignore[arg-type]
    ],
)
def test_forged_safetensors_are_refused(client: TestClient, content: bytes, words: str) -> None:
    refused(upload(client, "weights", content, arch="resnet18"), words)


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
    unknown = client.post(
        "/v1/datasets", files={"file": ("a.csv", csv_bytes())}, data={"arch": "resnet18"}
    )
    refused(unknown, "unknown form field", field="arch")
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
        big = b"a,b\n" + b"1,0\n2,1\n" * 15_000  # 120 kB
        response = upload(client, "datasets", big, target="b")
        assert response.status_code == 413
        assert "100000 bytes" in response.json()["detail"]
        # A body that declares no length (chunked) is counted as it streams, and refused as
        # soon as it passes the limit: nothing of it is stored.
        boundary = "b0undary"

        def chunks():  # type: ignore[no-untyped-def]
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="big.csv"\r\n\r\na,b\n'
            ).encode()
            for _ in range(1000):  # 10 MB, far past the limit
                yield b"1,0\n" * 2500
            yield f"\r\n--{boundary}--\r\n".encode()

        streamed = client.post(
            "/v1/datasets",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert streamed.status_code == 413, streamed.text
        assert uploads_on_disk() == []
        # Other routes keep the small JSON body limit.
        assert client.post("/v1/jobs", content=b"x" * 1_000_001).status_code == 413

        with session_scope() as session:
            set_limits(session, "local", {"upload_bytes": 5000})
        small = b"a,b\n" + b"1,0\n2,1\n" * 400  # 3.2 kB
        assert upload(client, "datasets", small, target="b").status_code == 201
        over = upload(client, "datasets", small, target="b")
        assert over.status_code == 413
        assert "limit of 5000" in over.json()["detail"] or "quota" in over.json()["detail"]
        assert len(client.get("/v1/datasets").json()["items"]) == 1
        assert len(uploads_on_disk()) == 1


# ------------------------------------------------------------------ corrupt files


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (
            with_bad_crc(imagefolder_zip(per_class=2)),
            "member 'red/0.png' cannot be read: Bad CRC-32",
        ),
        (
            declaring_less(imagefolder_zip(per_class=2)),
            "member 'red/0.png' cannot be read: Bad CRC-32",
        ),
        (needing_zip_version(npz_bytes()), "zip file version 9.9"),
        (with_unknown_method(imagefolder_zip(per_class=2)), "compression method"),
        (with_corrupt_deflate(npz_bytes(rows=200)), "Error -3 while decompressing"),
    ],
    ids=["bad-crc", "longer-than-declared", "zip-version", "compression-method", "deflate"],
)
def test_corrupt_archives_are_422_naming_the_problem(
    client: TestClient, content: bytes, words: str
) -> None:
    refused(upload(client, "datasets", content, filename="broken.zip"), words)
    assert client.get("/v1/datasets").json()["items"] == []
    assert uploads_on_disk() == []


def test_safetensors_shapes_past_int64_are_422(client: TestClient) -> None:
    header = {"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}
    response = upload(client, "weights", safetensors_forged(header), arch="resnet18")
    refused(response, "not a valid safetensors file", "'w' has the shape [0, 9223372036854775808]")
    assert client.get("/v1/weights").json()["items"] == []
    assert uploads_on_disk() == []


# ------------------------------------------------------------------ resources


def rss_rise(action: Callable[[], object]) -> int:
    """How far this process's peak resident memory rose above where it stood while doing
    ``action`` (the peak is reset first: Linux's /proc/self/clear_refs)."""

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(key)

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("resetting the peak resident memory needs Linux's /proc/self/clear_refs")
    before = status("VmRSS")
    action()
    return status("VmHWM") - before


def grey_images_zip(count: int, side: int) -> bytes:
    """``count`` flat grey PNGs of side x side RGB: a few kB each, far under the zip-bomb
    floor, each decoding to side * side * 3 bytes."""
    flat = png_bytes((90, 90, 90), size=side, seed=0, noise=False)
    return zip_of({f"{c}/{i}.png": flat for c in ("a", "b") for i in range(count // 2)})


def test_an_upload_is_decoded_outside_the_api_and_bounded_before_decoding(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    content = grey_images_zip(20, 2048)  # 240 MiB of pixels
    assert len(content) < 700_000
    big = b"a,b,c,label\n" + b"1.25,2.5,3.75,yes\n2.5,1.25,0.5,no\n" * 300_000  # 10 MB
    settings = migrated(configure(DESCENT_DATA_DIR=str(tmp_path / "d")))
    assert settings.upload_max_decoded_bytes == 1 << 30
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        # The first upload starts the inspectors' fork server (a process of its own).
        assert upload(client, "datasets", npz_bytes()).status_code == 201
        responses = []
        rise = rss_rise(lambda: responses.append(upload(client, "datasets", content)))
        assert responses[0].status_code == 201, responses[0].text
        assert responses[0].json()["info"]["image_shape"] == [3, 2048, 2048]
        assert rise < 100 << 20, f"the API grew by {rise:,} bytes"
        rise = rss_rise(lambda: responses.append(upload(client, "datasets", big, target="label")))
        assert responses[1].status_code == 201, responses[1].text
        assert responses[1].json()["info"]["n_samples"] == 600_000
        assert rise < 100 << 20, f"the API grew by {rise:,} bytes"
    # Over the setting: refused from the images' headers, with the numbers.
    settings = migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "e"), DESCENT_UPLOAD_MAX_DECODED_BYTES="100000000"
        )
    )
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        refused(
            upload(client, "datasets", content),
            "the 20 images take 251,658,240 bytes decoded",
            "at most 100,000,000 bytes",
        )
        assert uploads_on_disk() == []


def test_an_inspection_out_of_memory_is_413_and_the_api_lives_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 48 MiB of arrays, well under the decoded-size setting, against an inspector allowed
    # 16 MiB: the child's allocation fails there, not in the API.
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 12 << 20), dtype=np.uint8), y=np.arange(4) % 2)
    monkeypatch.setattr("api.uploads.inspect.memory_limit", lambda decoded: 16 << 20)
    response = upload(client, "datasets", buffer.getvalue())
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == (
        "inspecting the file needs more memory than the 16,777,216 bytes it may use; a "
        "smaller file fits"
    )
    assert uploads_on_disk() == []
    monkeypatch.undo()
    assert upload(client, "datasets", npz_bytes()).status_code == 201


@pytest.mark.parametrize(
    ("function", "args", "error", "message"),
    [
        (allocate, (64,), TooLarge, "needs more memory than the 33,554,432 bytes it may use"),
        (die, (signal.SIGKILL,), TooLarge, "stopped for running out of memory"),
        (die, (signal.SIGSEGV,), InvalidUpload, "its reader ended with signal SIGSEGV"),
        (hang, (60,), InvalidUpload, "took longer than 2 seconds"),
        (crash, (), InvalidUpload, 'the file cannot be read: KeyError: "a reader\'s bug"'),
    ],
    ids=["memory-error", "oom-killed", "crashed", "timed-out", "raised"],
)
def test_an_inspector_that_fails_is_refused_never_a_500(
    function: Callable[..., dict],
    args: tuple,
    error: type,
    message: str,  # type: ignore[type-arg]
) -> None:
    from api.uploads.inspect import run_limited

    assert run_limited(allocate, (8,), memory_bytes=32 << 20) == {"length": 8 << 20}
    started = time.monotonic()
    with pytest.raises(error) as info:
        run_limited(function, args, memory_bytes=32 << 20, timeout=2 if function is hang else 120)
    assert message in str(info.value)
    assert time.monotonic() - started < 30


def test_staging_files_of_killed_uploads_are_swept_at_start(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app
    from api.uploads.service import _staged
    from tests.conftest import migrated

    settings = migrated(configure(DESCENT_DATA_DIR=str(tmp_path / "d")))
    assert settings.artifacts_dir is not None
    folder = settings.artifacts_dir / "uploads" / "dataset"
    folder.mkdir(parents=True)
    # An upload killed while it was checked (its process gone, its lock with it), the temp
    # file of a copy killed earlier on, and an upload another API process is checking now.
    killed = folder / ".01killed.checking"
    killed.write_bytes(bytes(8 << 20))
    copying = folder / "..01copying.checking.x1y2.tmp"
    copying.write_bytes(b"partial")
    kept = [folder / "01stored.csv", folder / ".hidden-by-someone"]
    for path in kept:
        path.write_bytes(b"a,b\n")
    with _staged(folder / ".01live.checking"):
        with TestClient(create_app(settings), headers=bearer(make_user())):
            assert not killed.exists() and not copying.exists()
            assert all(path.exists() for path in kept)
            assert (folder / ".01live.checking").exists()
    assert not (folder / ".01live.checking").exists()
    # One killed while the API runs is swept by the next upload.
    killed.write_bytes(bytes(1 << 20))
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        killed.write_bytes(bytes(1 << 20))
        assert upload(client, "datasets", csv_bytes(), target="label").status_code == 201
        assert not killed.exists()
