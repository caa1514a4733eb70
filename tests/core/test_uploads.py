import io
import pickle
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

from core.errors import InvalidUpload
from core.spec import DatasetInfo
from core.uploads import MAX_RATIO, inspect_dataset, inspect_weights, read_dataset
from tests.core.builders import png_bytes, write_zip
from tests.files import (
    declaring_less,
    imagefolder_zip,
    needing_zip_version,
    npz_bytes,
    safetensors_forged,
    with_bad_crc,
    with_corrupt_deflate,
    with_unknown_method,
    zip_of,
)

# ------------------------------------------------------------------ csv


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_text_labels_is_a_classification_dataset(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3 * 0.5},{['cat', 'dog'][i % 2]}\n" for i in range(10))
    path = write_csv(tmp_path / "a.csv", "size,weight,animal\n" + rows)
    meta = inspect_dataset(path, "csv", target="animal")
    assert meta["task"] == "classification" and meta["tasks"] == ["classification"]
    assert (meta["n_samples"], meta["n_features"], meta["num_classes"]) == (10, 2, 2)
    assert meta["class_names"] == ["cat", "dog"] and meta["class_counts"] == {"cat": 5, "dog": 5}
    assert meta["columns"] == ["size", "weight"] and meta["target"] == "animal"
    info = DatasetInfo.from_upload(meta)  # the spec reads the stored metadata back
    assert info.task == "classification" and info.image_shape is None and info.n_features == 2


def test_csv_numeric_targets(tmp_path: Path) -> None:
    values = "".join(f"{i},{i * 1.5 + 0.25}\n" for i in range(30))
    meta = inspect_dataset(write_csv(tmp_path / "r.csv", "x,y\n" + values), "csv", target="y")
    assert meta["task"] == "regression" and meta["num_classes"] == 0
    # Few integer values: classes by default, a number on request.
    labels = "".join(f"{i},{1 + i % 3}\n" for i in range(30))
    meta = inspect_dataset(write_csv(tmp_path / "c.csv", "x,y\n" + labels), "csv", target="y")
    assert meta["task"] == "classification" and meta["tasks"] == ["classification", "regression"]
    assert meta["class_names"] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("text", "target", "fragment"),
    [
        ("a,b\n1,x\n2,y\n3,x\n", "label", "no column 'label'; its columns are 'a', 'b'"),
        ("a,b\n1,x\n2,y\n3,x\n", None, "needs the name of its target column"),
        ("a,b\n1,x\nfoo,y\n3,x\n3,y\n", "b", "line 3, column 'a': 'foo' is not a finite number"),
        ("a,b\n1,x\n2\n3,x\n", "b", "line 3 has 1 columns"),
        ("a,b\n1,x\n2,y\n3,x\n", "b", "class 'y' has only 1 sample"),
        ("a,b\n1,x\n2,x\n3,x\n", "b", "at least 2 classes"),
        ("a,a,b\n1,2,x\n", "b", "at least 2 rows"),
        ("a,a,b\n1,2,x\n1,2,y\n1,2,x\n1,2,y\n", "b", "columns more than once: a"),
    ],
)
def test_bad_csv_says_why(tmp_path: Path, text: str, target: str | None, fragment: str) -> None:
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(write_csv(tmp_path / "bad.csv", text), "csv", target=target)
    assert fragment in str(info.value)


# ------------------------------------------------------------------ npz


def test_npz_tabular_images_and_masks(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", x=np.random.rand(20, 5), y=np.arange(20) % 4)
    meta = inspect_dataset(tmp_path / "t.npz", "npz")
    assert (meta["task"], meta["n_features"], meta["num_classes"]) == ("classification", 5, 4)
    # Channels-last images become (C, H, W); 8-bit pixels top out at 255.
    images = np.random.randint(0, 256, (12, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "i.npz", x=images, y=np.arange(12) % 2)
    x, _, meta = read_dataset(tmp_path / "i.npz", "npz")
    assert x.shape == (12, 3, 6, 7) and meta["image_shape"] == [3, 6, 7]
    assert meta["pixel_max"] == 255.0 and np.array_equal(x[3], images[3].transpose(2, 0, 1))
    masks = np.zeros((12, 6, 7), dtype=np.int64)
    masks[:, :2] = 1
    np.savez(tmp_path / "m.npz", x=images.astype(np.float32) / 255, y=masks)
    meta = inspect_dataset(tmp_path / "m.npz", "npz")
    assert meta["task"] == "segmentation" and meta["num_classes"] == 2
    assert meta["pixel_max"] == 1.0
    np.savez(tmp_path / "r.npz", x=np.random.rand(20, 5), y=np.random.rand(20))
    assert inspect_dataset(tmp_path / "r.npz", "npz")["task"] == "regression"


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((10, 3))}, "exactly the arrays x and y; found x.npy"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, dtype=int)}, "10 rows and y 9"),
        ({"x": np.zeros((10, 3)), "y": np.array([0, 2] * 5)}, "class '1' has no samples"),
        ({"x": np.full((10, 3), np.nan), "y": np.array([0, 1] * 5)}, "NaN or infinite"),
        ({"x": np.zeros((10, 3)), "y": np.array(["a", "b"] * 5)}, "holds <U1, not numbers"),
        ({"x": np.zeros((10, 4, 4, 5)), "y": np.array([0, 1] * 5)}, "1 or 3 channels"),
        (
            {"x": np.zeros((10, 1, 4, 4)), "y": np.zeros((10, 4, 5), dtype=int)},
            "do not match",
        ),
    ],
)
def test_bad_npz_says_why(tmp_path: Path, arrays: dict, fragment: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(tmp_path / "bad.npz", "npz")
    assert fragment in str(info.value)


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    x = np.array([Payload(marker)] * 4, dtype=object)
    np.savez(tmp_path / "obj.npz", x=x, y=np.zeros(4))
    with pytest.raises(InvalidUpload, match="cannot be read"):
        inspect_dataset(tmp_path / "obj.npz", "npz")
    assert not marker.exists()


# ------------------------------------------------------------------ image folder


def folder_entries(prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}{name}/{i}.png": png_bytes(colour)
        for name, colour in (("red", (200, 10, 10)), ("green", (10, 200, 10)))
        for i in range(3)
    }


def test_image_folder_zip(tmp_path: Path) -> None:
    entries = folder_entries("pets/")  # a zipped folder around the class folders
    entries["pets/red/4.png"] = png_bytes((180, 0, 0), size=(10, 6))  # resized to 8x8
    entries["__MACOSX/pets/._1.png"] = b"litter"
    entries["pets/.DS_Store"] = b"litter"
    x, y, meta = read_dataset(write_zip(tmp_path / "f.zip", entries), "imagefolder")
    assert meta["class_names"] == ["green", "red"] and meta["image_shape"] == [3, 8, 8]
    assert meta["class_counts"] == {"green": 3, "red": 4} and meta["resized"] == 1
    assert x.shape == (7, 3, 8, 8) and x.dtype == np.uint8 and meta["pixel_max"] == 255.0
    assert x[y == 1][:, 0].min() >= 170 and x[y == 0][:, 1].min() == 200


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"../evil.png": b"x"}, "'..' leads out of the folder"),
        ({"red/../../evil.png": b"x"}, "'..' leads out of the folder"),
        ({"/etc/evil.png": b"x"}, "an absolute path"),
        ({"C:/evil.png": b"x"}, "an absolute path"),
        ({"red\\evil.png": b"x"}, "bad characters"),
        ({"blue/": b""}, "class 'blue' has no samples"),
        ({"red/notes.txt": b"hello"}, "is not an image file"),
        ({"red/broken.png": b"not a png"}, "not an image Pillow can read"),
        ({"loose.png": png_bytes((0, 0, 0))}, "is not in a class folder"),
    ],
)
def test_image_folder_refusals(tmp_path: Path, extra: dict, fragment: str) -> None:
    path = write_zip(tmp_path / "bad.zip", {**folder_entries(), **extra})
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(path, "imagefolder")
    assert fragment in str(info.value)


def test_image_folder_refuses_symbolic_links(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "link.zip", folder_entries(), links={"red/passwd.png": "/etc/passwd"}
    )
    with pytest.raises(InvalidUpload, match="'red/passwd.png': a symbolic link"):
        inspect_dataset(path, "imagefolder")


def test_zip_bombs_are_refused_before_unpacking(tmp_path: Path) -> None:
    # 64 MiB of zeros compress about a thousandfold.
    bomb = write_zip(tmp_path / "bomb.zip", {**folder_entries(), "red/big.png": bytes(64 << 20)})
    assert bomb.stat().st_size < (64 << 20) // MAX_RATIO
    with pytest.raises(InvalidUpload, match="zip bomb"):
        inspect_dataset(bomb, "imagefolder")
    small = write_zip(tmp_path / "small.zip", folder_entries())
    with pytest.raises(InvalidUpload, match="unpacks to .* at most 100 bytes"):
        inspect_dataset(small, "imagefolder", max_unpacked_bytes=100)
    with pytest.raises(InvalidUpload, match="6 members; at most 5"):
        inspect_dataset(small, "imagefolder", max_files=5)


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (a decompression bomb's header)."""
    data = bytearray(png_bytes((0, 0, 0), size=(1, 1)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR's data starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    return bytes(data)


def test_a_huge_declared_image_is_refused_before_decoding(tmp_path: Path) -> None:
    entries = {**folder_entries(), "red/huge.png": png_claiming(8_000, 8_000)}
    with pytest.raises(InvalidUpload, match="'red/huge.png' is 8000x8000: at most"):
        inspect_dataset(write_zip(tmp_path / "huge.zip", entries), "imagefolder")


def test_decoded_images_have_a_budget(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "f.zip", folder_entries())  # 6 images of 8x8 RGB: 1,152 bytes
    assert inspect_dataset(path, "imagefolder", max_decoded_bytes=1152)["n_samples"] == 6
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(path, "imagefolder", max_decoded_bytes=1151)
    assert str(info.value) == (
        "the 6 images take 1,152 bytes decoded, and 1,152 bytes as 8x8x3 arrays; at most "
        "1,151 bytes"
    )


# ------------------------------------------------------------------ weights


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_weights_that_fit_are_described(tmp_path: Path, resnet18_state: dict) -> None:
    safetensors.torch.save_file(resnet18_state, tmp_path / "w.safetensors")
    meta = inspect_weights(tmp_path / "w.safetensors", "resnet18")
    assert meta["format"] == "safetensors" and meta["head_classes"] == 1000
    assert meta["parameters"] == 11_689_512
    # A PyTorch state dict, wrapped as training scripts save it, without the classifier.
    headless = {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")}
    torch.save({"state_dict": headless}, tmp_path / "w.pt")
    meta = inspect_weights(tmp_path / "w.pt", "resnet18")
    assert meta["format"] == "pytorch" and meta["head_classes"] is None


def test_weight_mismatches_are_listed(tmp_path: Path, resnet18_state: dict) -> None:
    state = dict(resnet18_state)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(2)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    state["fc.weight"] = torch.zeros(10, 512)  # the head may have any shape: it is replaced
    safetensors.torch.save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(InvalidUpload) as info:
        inspect_weights(tmp_path / "w.safetensors", "resnet18")
    message = str(info.value)
    assert message.startswith("the weights do not fit resnet18: ")
    assert "1 missing keys: layer1.0.conv1.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 shape mismatches: conv1.weight: (64, 1, 7, 7) in the file, (64, 3, 7, 7)" in message
    # Another architecture's weights: the first few of many mismatches, and the count.
    with pytest.raises(InvalidUpload, match=r"missing keys: .*\(and \d+ more\)"):
        inspect_weights(tmp_path / "w.safetensors", "mobilenet_v3_small")


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    state = {"conv1.weight": torch.zeros(1), "payload": Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(InvalidUpload, match="weights_only=True"):
        inspect_weights(path, "resnet18")
    assert not marker.exists()
    # The payload is real: plain unpickling would have run it.
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


def test_not_a_weights_file(tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(InvalidUpload, match="not a safetensors file"):
        inspect_weights(tmp_path / "junk.bin", "resnet18")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InvalidUpload, match="no state dict"):
        inspect_weights(tmp_path / "list.pt", "resnet18")


# ------------------------------------------------------------------ corrupt files


@pytest.mark.parametrize("format", ["npz", "imagefolder"])
@pytest.mark.parametrize(
    ("breaking", "fragment"),
    [
        (with_bad_crc, "Bad CRC-32 for file"),
        (declaring_less, "Bad CRC-32 for file"),  # read past its size, its CRC fails
        (needing_zip_version, "zip file version 9.9"),
        (with_unknown_method, "compression method is not supported"),
        (with_corrupt_deflate, "Error -3 while decompressing data"),
    ],
)
def test_corrupt_archives_are_refused_saying_why(
    tmp_path: Path, format: str, breaking: Callable[[bytes], bytes], fragment: str
) -> None:
    content = npz_bytes(rows=200) if format == "npz" else imagefolder_zip(per_class=2)
    path = tmp_path / "broken.zip"
    path.write_bytes(breaking(content))
    with pytest.raises(InvalidUpload, match=re.escape(fragment)):
        inspect_dataset(path, format)
    with pytest.raises(InvalidUpload, match=re.escape(fragment)):
        inspect_dataset(path, None)  # told from its content: the zip is read to tell


@pytest.mark.parametrize(
    "shape",
    [[0, 2**63], [2**40, 2**40], [2**64], [-1], [2**62, 4]],
)
def test_safetensors_shapes_past_int64_are_refused(tmp_path: Path, shape: list[int]) -> None:
    path = tmp_path / "w.safetensors"
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}
    path.write_bytes(safetensors_forged(header))
    with pytest.raises(InvalidUpload, match="not a valid safetensors file"):
        inspect_weights(path, "resnet18")


# ------------------------------------------------------------------ decoded size


def test_a_csv_is_bounded_by_its_rows_times_columns(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 2}\n" for i in range(100))
    path = write_csv(tmp_path / "c.csv", "a,b\n" + rows)  # 100 rows x 2 columns x 8 bytes
    assert inspect_dataset(path, "csv", target="b", max_decoded_bytes=1600)["n_samples"] == 100
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(path, "csv", target="b", max_decoded_bytes=1599)
    assert str(info.value) == (
        "the CSV's 100 rows of 2 columns take 1,600 bytes as numbers; at most 1,599 bytes"
    )


def test_npz_arrays_are_bounded_by_their_headers(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 3), dtype=np.float32), y=np.arange(10) % 2)
    assert inspect_dataset(tmp_path / "a.npz", "npz", max_decoded_bytes=200)["n_samples"] == 10
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(tmp_path / "a.npz", "npz", max_decoded_bytes=199)
    assert str(info.value) == (
        "the arrays (x (10, 3) float32, y (10,) int64) take 200 bytes; at most 199 bytes"
    )
    # A header claiming a huge array over a few bytes of data: refused before numpy
    # allocates what the header claims.
    y = io.BytesIO()
    np.save(y, np.zeros(4))
    content = zip_of({"x.npy": npy_claiming((10**6, 10**6)), "y.npy": y.getvalue()})
    (tmp_path / "b.npz").write_bytes(content)
    with pytest.raises(InvalidUpload, match="x \\(1000000, 1000000\\) float64"):
        inspect_dataset(tmp_path / "b.npz", "npz")


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy header claiming the shape (float64), with no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_many_small_images_are_bounded_before_decoding(tmp_path: Path) -> None:
    # 40 PNGs of 1024x1024 grey, each a few kB and far under the zip-bomb floor, unpack to
    # 40 MiB of pixels: refused from their headers alone.
    flat = png_bytes((90, 90, 90), size=(1024, 1024))
    entries = {f"{c}/{i}.png": flat for c in ("a", "b") for i in range(20)}
    path = write_zip(tmp_path / "many.zip", entries)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InvalidUpload) as info:
        inspect_dataset(path, "imagefolder", max_decoded_bytes=10 << 20)
    assert "the 40 images take 125,829,120 bytes decoded" in str(info.value)
    assert "at most 10,485,760 bytes" in str(info.value)
