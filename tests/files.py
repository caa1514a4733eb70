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


def png_bytes(colour: tuple[int, int, int], size: int = 32, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(0, 20, (size, size, 3)) + colour, 0, 255).astype(np.uint8)
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
