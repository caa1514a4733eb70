"""Files to upload, in one place: datasets (CSV, NPZ, image-folder zips), backbone weights,
and hostile files (a pickle that would run code, zips that reach out of their folder)."""

import io
import pickle
import stat
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np


def csv_bytes(rows: int = 20, target: str = "label") -> bytes:
    """A tabular classification set: two numeric features and a text label (2 classes)."""
    rng = np.random.default_rng(0)
    lines = [f"a,b,{target}"]
    for i in range(rows):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.4f},{b:.4f},{'yes' if i % 2 else 'no'}")
    return ("\n".join(lines) + "\n").encode()


def npz_bytes(rows: int = 20) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez_compressed(buffer, x=rng.normal(size=(rows, 4)), y=np.arange(rows) % 2)
    return buffer.getvalue()


def png_bytes(
    colour: tuple[int, int, int], size: int = 32, seed: int = 0, noise: bool = True
) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    spread = rng.normal(0, 20, (size, size, 3)) if noise else np.zeros((size, size, 3))
    pixels = np.clip(spread + colour, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def imagefolder_zip(per_class: int = 6, size: int = 32) -> bytes:
    """A zip of a folder per class ("red", "blue") of small noisy colour images."""
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200)}
    return zip_of(
        {
            f"{name}/{i}.png": png_bytes(colour, size, seed=i)
            for name, colour in colours.items()
            for i in range(per_class)
        }
    )


def zip_of(
    members: dict[str, bytes], *, links: dict[str, str] | None = None, mode: int | None = None
) -> bytes:
    """A zip of the given members (names as written, unchecked), plus symbolic links."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


@lru_cache
def weights_bytes(arch: str = "mobilenet_v3_small", format: str = "safetensors") -> bytes:
    """A state dict of the architecture (its classifier left out, as allowed), zeros in
    float16 to keep it small: safetensors, or torch.save's format."""
    import safetensors.torch
    import torch

    from core.spec import TORCHVISION_BODIES
    from core.uploads import architecture_shapes

    head = set(TORCHVISION_BODIES[arch].head_keys)
    tensors = {
        key: torch.zeros(shape, dtype=torch.int64 if key.endswith("tracked") else torch.float16)
        for key, shape in architecture_shapes(arch).items()
        if key not in head
    }
    if format == "safetensors":
        return safetensors.torch.save(tensors)
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


@lru_cache
def resnet18_safetensors() -> bytes:
    """torchvision's resnet18 with weights=None (random), as safetensors (about 45 MB)."""
    import safetensors.torch
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    return safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})


class Payload:
    """Unpickling this runs code: it creates the marker file (a stand-in for anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def pickle_payload(marker: Path) -> bytes:
    """A "state dict" whose unpickling would create ``marker``."""
    return pickle.dumps({"conv1.weight": Payload(marker)})


# ------------------------------------------------------------------ corrupt archives
# Each takes a zip's bytes and breaks its first member, in the local header (offset from
# "PK\x03\x04") and the central directory (offset from "PK\x01\x02") alike.


def _patch(content: bytes, fmt: str, value: int, local: int | None, central: int | None) -> bytes:
    import struct

    data = bytearray(content)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        if offset is not None:
            struct.pack_into(fmt, data, data.find(signature) + offset, value)
    return bytes(data)


def with_bad_crc(content: bytes) -> bytes:
    """The first member's CRC-32 is wrong."""
    return _patch(content, "<I", 0x12345678, local=14, central=16)


def declaring_less(content: bytes, size: int = 10) -> bytes:
    """The first member unpacks to more than the size it declares."""
    return _patch(content, "<I", size, local=22, central=24)


def needing_zip_version(content: bytes, version: int = 99) -> bytes:
    """The first member needs a zip version no reader supports (9.9)."""
    return _patch(content, "<H", version, local=4, central=6)


def with_unknown_method(content: bytes, method: int = 97) -> bytes:
    """The first member is compressed by a method zipfile does not know."""
    return _patch(content, "<H", method, local=8, central=10)


def with_corrupt_deflate(content: bytes) -> bytes:
    """The first member's deflate stream is garbled (its headers left intact)."""
    import struct

    data = bytearray(content)
    start = data.find(b"PK\x03\x04")
    name, extra = struct.unpack_from("<HH", data, start + 26)
    begin = start + 30 + name + extra
    for k in range(begin + 2, begin + 40):
        data[k] ^= 0xFF
    return bytes(data)


def safetensors_forged(header: dict, data: bytes = b"") -> bytes:  # type: ignore[type-arg]
    """A safetensors file of this header (as JSON) and data, unchecked."""
    import json
    import struct

    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data
