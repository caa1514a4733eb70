"""Uploaded datasets and backbone weights: read, checked, described.

inspect_dataset() and inspect_weights() check an upload when it arrives and return its
metadata (JSON-ready; DatasetInfo.from_upload reads a dataset's back, so a spec naming the
upload is checked at submit); read_dataset() and read_weights() are what training loads.
Reading a dataset needs numpy and Pillow only: the API may call inspect_dataset without
importing torch. Nothing here unpickles: NPZ arrays load with allow_pickle=False, weights
are safetensors or a state dict that torch.load(weights_only=True) accepts, and an image
folder's zip is read member by member in memory, never extracted.

Dataset formats:
- csv: a header row, then one row per sample; the target column (named at upload) is the
  label (text or integers: classes) or the value (numbers: regression); the other columns
  are numeric features.
- npz: arrays x (rows first: (N, F) features, (N, H, W) or (N, C, H, W) / (N, H, W, C)
  images) and y ((N,) labels 0..K-1 or values, or (N, H, W) masks of classes 0..K-1:
  segmentation).
- imagefolder: a zip of one folder per class (optionally inside one top folder) holding
  images Pillow can decode; all are converted to RGB (grayscale if all are) and to the most
  common size.
"""

from __future__ import annotations

import io
import math
import stat
import zipfile
from collections import Counter
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidUpload
from core.spec import TORCHVISION_BODIES

if TYPE_CHECKING:
    import torch

# Limits of an image folder's zip: what it may unpack to, how many members, how much more
# a member may unpack to than it takes compressed (a zip bomb compresses zeros ~1000:1), and
# how large a decoded image and all decoded images together may be.
MAX_UNPACKED_BYTES = 1 << 30
MAX_FILES = 100_000
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # members smaller than this may compress as they like
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_DECODED_BYTES = 2 << 30
# An integer target with at most this many distinct values is taken for classes.
MAX_CLASSES = 1_000
MAX_CLASSES_GUESSED = 50
LISTED = 5  # mismatches named in an error message

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


# --------------------------------------------------------------------------- datasets


def inspect_dataset(
    path: str | PathLike[str],
    format: str,
    target: str | None = None,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
) -> dict[str, Any]:
    """Check an uploaded dataset; return its metadata or raise InvalidUpload saying why.

    The metadata: format, target (csv), task (what the targets are), tasks (what they
    support), n_samples, n_features, num_classes, class_names, class_counts, image_shape,
    pixel_max, and per format columns (csv) or resized (imagefolder).
    """
    _, _, meta = read_dataset(
        path, format, target, max_unpacked_bytes=max_unpacked_bytes, max_files=max_files
    )
    return meta


def read_dataset(
    path: str | PathLike[str],
    format: str | None,
    target: str | None = None,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(x, y, metadata): x as (N, F) features or (N, C, H, W) images, y as class indices,
    values or masks. format None: told from the file's content."""
    path = Path(path)
    format = format or sniff_format(path)
    if format != "csv" and target is not None:
        raise InvalidUpload(f"a {format} dataset holds its own targets: target is for CSV files")
    if format == "csv":
        x, y, meta = _read_csv(path, target)
    elif format == "npz":
        x, y, meta = _read_npz(path, max_unpacked_bytes)
    elif format == "imagefolder":
        x, y, meta = _read_imagefolder(path, max_unpacked_bytes, max_files)
    else:
        raise InvalidUpload(f"unknown dataset format {format!r}: use csv, npz or imagefolder")
    return x, y, {"format": format, **meta}


def sniff_format(path: Path) -> str:
    """npz (a zip with x.npy), imagefolder (another zip) or csv."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile as exc:
            raise InvalidUpload(f"not a readable zip archive: {exc}") from None
        return "npz" if "x.npy" in names else "imagefolder"
    return "csv"


def _describe(
    x: np.ndarray, y: np.ndarray, task: str, class_names: list[str] | None, **extra: Any
) -> dict[str, Any]:
    image_shape = list(x.shape[1:]) if x.ndim == 4 else None
    meta: dict[str, Any] = {
        "task": task,
        "tasks": [task],
        "n_samples": int(len(x)),
        "n_features": int(math.prod(x.shape[1:])),
        "num_classes": len(class_names) if class_names is not None else 0,
        "class_names": class_names,
        "class_counts": None,
        "image_shape": image_shape,
        "pixel_max": _pixel_max(x) if image_shape else None,
    }
    if class_names is not None:
        counts = np.bincount(y.reshape(-1), minlength=len(class_names))
        meta["class_counts"] = {n: int(c) for n, c in zip(class_names, counts, strict=True)}
    meta.update(extra)
    return meta


def _pixel_max(x: np.ndarray) -> float:
    """The top of the images' value range: 255 for 8-bit images, 1.0 for [0, 1] floats."""
    if x.dtype == np.uint8:
        return 255.0
    top = float(x.max()) if x.size else 1.0
    return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top


def _check_classes(counts: np.ndarray, names: list[str], what: str = "class") -> None:
    if len(names) < 2:
        found = len(names)
        raise InvalidUpload(f"a classification dataset needs at least 2 classes; found {found}")
    for name, count in zip(names, counts, strict=True):
        if count == 0:
            raise InvalidUpload(f"{what} {name!r} has no samples")
        if count < 2 and what == "class":
            # A stratified train/validation split puts one of each class on each side.
            raise InvalidUpload(f"class {name!r} has only 1 sample; every class needs 2 or more")


# ------------------------------------------------------------------ csv


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    import csv

    if not target:
        raise InvalidUpload("a CSV dataset needs the name of its target column")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f, strict=True) if row]
    except UnicodeDecodeError:
        raise InvalidUpload("not a CSV file: it is not UTF-8 text") from None
    except csv.Error as exc:
        raise InvalidUpload(f"not a valid CSV file: {exc}") from None
    if len(rows) < 3:
        raise InvalidUpload("a CSV dataset has a header row and at least 2 rows of data")
    header = [cell.strip() for cell in rows[0]]
    if target not in header:
        shown = ", ".join(repr(c) for c in header[:20]) + (", …" if len(header) > 20 else "")
        raise InvalidUpload(f"the CSV has no column {target!r}; its columns are {shown}")
    if len(set(header)) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise InvalidUpload(f"the CSV names columns more than once: {', '.join(twice)}")
    if len(header) < 2:
        raise InvalidUpload("a CSV dataset needs at least one feature column besides the target")
    t = header.index(target)
    features = np.empty((len(rows) - 1, len(header) - 1), dtype=np.float64)
    labels: list[str] = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InvalidUpload(
                f"CSV line {i} has {len(row)} columns; the header has {len(header)}"
            )
        labels.append(row[t].strip())
        cells = row[:t] + row[t + 1 :]
        for j, cell in enumerate(cells):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                column = header[j if j < t else j + 1]
                raise InvalidUpload(
                    f"CSV line {i}, column {column!r}: {cell[:40]!r} is not a finite number"
                )
            features[i - 2, j] = value
    columns = [c for c in header if c != target]
    numbers = _numbers(labels)
    if numbers is None:  # text labels: classes
        names = sorted(set(labels))
        if len(names) > MAX_CLASSES:
            raise InvalidUpload(
                f"target {target!r} has {len(names)} classes; at most {MAX_CLASSES}"
            )
        index = {n: k for k, n in enumerate(names)}
        y = np.array([index[v] for v in labels], dtype=np.int64)
        _check_classes(np.bincount(y, minlength=len(names)), names)
        meta = _describe(features, y, "classification", names, target=target, columns=columns)
        return features, y, meta
    values = np.unique(numbers)
    integral = bool(np.all(values == np.round(values)))
    if integral and 2 <= len(values) <= MAX_CLASSES_GUESSED:
        # Integers: class labels (their values name them) or a quantity; classes by default.
        names = [str(int(v)) for v in values]
        y = np.searchsorted(values, numbers).astype(np.int64)
        _check_classes(np.bincount(y, minlength=len(names)), names)
        meta = _describe(features, y, "classification", names, target=target, columns=columns)
        meta["tasks"] = ["classification", "regression"]
        meta["target_values"] = [float(v) for v in values]
        return features, y, meta
    meta = _describe(features, numbers, "regression", None, target=target, columns=columns)
    return features, numbers, meta


def _numbers(cells: list[str]) -> np.ndarray | None:
    try:
        values = np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return None
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InvalidUpload(f"CSV line {bad + 2}: the target {cells[bad]!r} is not finite")
    return values


def classification_labels(meta: dict[str, Any], y: np.ndarray, task: str) -> np.ndarray:
    """y as the task wants it: class indices, or (regression on an integer CSV target) the
    values the indices stand for."""
    if task == "regression" and meta.get("target_values") is not None:
        return np.asarray(meta["target_values"], dtype=np.float64)[y]
    return y


# ------------------------------------------------------------------ npz


def _read_npz(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"not a readable .npz archive: {exc}") from None
    names = sorted(i.filename for i in infos)
    if names != ["x.npy", "y.npy"]:
        raise InvalidUpload(
            f"an npz dataset holds exactly the arrays x and y; found {', '.join(names[:10])}"
        )
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise InvalidUpload(f"the arrays unpack to {declared:,} bytes; at most {max_bytes:,} bytes")
    for info in infos:
        _check_ratio(info)
    try:
        # allow_pickle=False: an object array (which would need unpickling) is refused.
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidUpload(f"the npz arrays cannot be read: {exc}") from None
    for name, array in (("x", x), ("y", y)):
        if array.dtype.kind not in "biuf":
            raise InvalidUpload(f"array {name} holds {array.dtype}, not numbers")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InvalidUpload(f"array {name} holds NaN or infinite values")
    if x.ndim < 2 or x.ndim > 4:
        raise InvalidUpload(f"x has shape {x.shape}: (N, features) or images (N, [C,] H, W)")
    if len(x) != len(y):
        raise InvalidUpload(f"x has {len(x)} rows and y {len(y)}: one target per row")
    if len(x) < 4:
        raise InvalidUpload("a dataset needs at least 4 samples")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise InvalidUpload(
                f"x has shape {x.shape}: images are (N, C, H, W) or (N, H, W, C) with 1 or 3 "
                "channels"
            )
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        if y.dtype.kind == "f":
            meta = _describe(x, y.astype(np.float64), "regression", None)
            return x, y.astype(np.float64), meta
        y = y.astype(np.int64)
        if y.min() < 0:
            raise InvalidUpload("class labels in y run from 0 to K-1; found negative labels")
        if y.max() >= MAX_CLASSES:
            raise InvalidUpload(f"y has labels up to {y.max()}; at most {MAX_CLASSES} classes")
        names = [str(k) for k in range(int(y.max()) + 1)]
        _check_classes(np.bincount(y, minlength=len(names)), names)
        meta = _describe(x, y, "classification", names)
        meta["tasks"] = ["classification", "regression"]
        return x, y, meta
    if y.ndim == 3 and x.ndim == 4:
        if y.shape[1:] != x.shape[2:]:
            raise InvalidUpload(
                f"masks y of shape {y.shape[1:]} do not match the {x.shape[2:]} images"
            )
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            raise InvalidUpload("masks y hold class indices (integers)")
        y = y.astype(np.int64)
        if y.min() < 0 or y.max() >= MAX_CLASSES:
            raise InvalidUpload(f"mask classes run from 0 to K-1 (at most {MAX_CLASSES})")
        names = [str(k) for k in range(int(y.max()) + 1)]
        _check_classes(np.bincount(y.reshape(-1), minlength=len(names)), names, "mask class")
        return x, y, _describe(x, y, "segmentation", names)
    raise InvalidUpload(
        f"y has shape {y.shape}: (N,) labels or values, or (N, H, W) masks for (N, C, H, W) images"
    )


def _check_ratio(info: zipfile.ZipInfo) -> None:
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise InvalidUpload(
            f"archive member {info.filename[:100]!r} unpacks to more than {MAX_RATIO} times its "
            "compressed size (a zip bomb?)"
        )


# ------------------------------------------------------------------ image folder


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path, refused if it could reach outside a folder (.., absolute, drive
    letters, backslashes) or is anything but a file or folder (a link, a device)."""
    name = info.filename
    shown = name[:100]
    if not name or "\\" in name or "\x00" in name:
        raise InvalidUpload(f"refused archive member {shown!r}: bad characters in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or ":" in path.parts[0]:
        raise InvalidUpload(f"refused archive member {shown!r}: an absolute path")
    if any(part == ".." for part in path.parts):
        raise InvalidUpload(f"refused archive member {shown!r}: '..' leads out of the folder")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise InvalidUpload(f"refused archive member {shown!r}: a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidUpload(f"refused archive member {shown!r}: not a plain file or folder")
    if info.flag_bits & 0x1:
        raise InvalidUpload(f"refused archive member {shown!r}: encrypted")
    return path


def _ignored(path: PurePosixPath) -> bool:
    # Archivers' litter: macOS resource forks, hidden files (.DS_Store), Windows thumbnails.
    return any(p.startswith(".") or p == "__MACOSX" for p in path.parts) or path.name in (
        "Thumbs.db",
        "desktop.ini",
    )


def _read_imagefolder(
    path: Path, max_bytes: int, max_files: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from PIL import Image

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"not a readable zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise InvalidUpload(f"the archive has {len(infos):,} members; at most {max_files:,}")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise InvalidUpload(
                f"the archive unpacks to {declared:,} bytes; at most {max_bytes:,} bytes"
            )
        files: list[tuple[PurePosixPath, zipfile.ZipInfo]] = []
        folders: set[PurePosixPath] = set()
        for info in infos:
            member = _member_path(info)  # every member is checked, even ignored ones
            _check_ratio(info)
            if _ignored(member):
                continue
            if info.is_dir() or stat.S_IFMT(info.external_attr >> 16) == stat.S_IFDIR:
                folders.add(member)
            else:
                files.append((member, info))
        if not files:
            raise InvalidUpload("the archive holds no images")
        # One top folder around the class folders is allowed (a zipped folder).
        tops = {m.parts[0] for m, _ in files} | {f.parts[0] for f in folders}
        strip = 1 if len(tops) == 1 and all(len(m.parts) == 3 for m, _ in files) else 0
        classes: dict[str, list[tuple[PurePosixPath, zipfile.ZipInfo]]] = {}
        for folder in folders:
            if len(folder.parts) == strip + 1:
                classes.setdefault(folder.parts[strip], [])
        for member, info in files:
            parts = member.parts[strip:]
            if len(parts) != 2:
                where = "is not in a class folder" if len(parts) < 2 else "is nested too deep"
                raise InvalidUpload(
                    f"{str(member)[:100]!r} {where}: the zip holds one folder per class of images"
                )
            if member.suffix.lower() not in IMAGE_SUFFIXES:
                raise InvalidUpload(f"{str(member)[:100]!r} is not an image file")
            classes.setdefault(parts[0], []).append((member, info))
        names = sorted(classes)
        counts = np.array([len(classes[n]) for n in names])
        _check_classes(counts, names)

        images: list[Any] = []
        labels: list[int] = []
        unpacked = decoded = 0
        for label, name in enumerate(names):
            for member, info in sorted(classes[name], key=lambda item: str(item[0])):
                with archive.open(info) as f:
                    # Read no more than the budget left: a member's declared size can lie.
                    data = f.read(max_bytes - unpacked + 1)
                unpacked += len(data)
                if unpacked > max_bytes:
                    raise InvalidUpload(f"the archive unpacks to more than {max_bytes:,} bytes")
                im, size = _decode(Image, member, data, MAX_DECODED_BYTES - decoded)
                decoded += size
                images.append(im)
                labels.append(label)
    gray = all(im.mode in ("1", "L", "I", "I;16", "F") for im in images)
    mode = "L" if gray else "RGB"
    sizes = Counter(im.size for im in images)
    (width, height), _ = sizes.most_common(1)[0]
    channels = 1 if gray else 3
    total = len(images) * channels * width * height
    if total > MAX_DECODED_BYTES:
        raise InvalidUpload(
            f"the {len(images):,} images of {width}x{height} take {total:,} bytes decoded; at "
            f"most {MAX_DECODED_BYTES:,}"
        )
    x = np.empty((len(images), height, width, channels), dtype=np.uint8)
    resized = 0
    for i, im in enumerate(images):
        im = _to_8bit(im).convert(mode)
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
            resized += 1
        x[i] = np.asarray(im, dtype=np.uint8).reshape(height, width, channels)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    y = np.asarray(labels, dtype=np.int64)
    return x, y, _describe(x, y, "classification", names, resized=resized)


def _decode(image_module: Any, member: PurePosixPath, data: bytes, budget: int) -> tuple[Any, int]:
    """The decoded image and the bytes its pixels take, refused before decoding if it is
    larger than one image may be or than the budget left for all of them: a small file
    can declare a huge image."""
    shown = str(member)[:100]
    try:
        im = image_module.open(io.BytesIO(data))
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InvalidUpload(
                f"{shown!r} is {width}x{height}: at most {MAX_IMAGE_PIXELS:,} pixels an image"
            )
        size = width * height * len(im.getbands())
        if size > budget:
            raise InvalidUpload(
                f"the images take more than {MAX_DECODED_BYTES:,} bytes decoded (at {shown!r})"
            )
        im.load()
    except InvalidUpload:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise InvalidUpload(f"{shown!r} is not an image Pillow can read: {exc}") from None
    return im, size


def _to_8bit(im: Any) -> Any:
    if im.mode in ("I", "I;16", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max() or 1.0
        from PIL import Image

        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P" or im.mode == "LA" or im.mode == "RGBA":
        return im.convert("RGB") if im.mode != "LA" else im.convert("L")
    return im


# --------------------------------------------------------------------------- weights


def read_weights(path: str | PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """A weights file's tensors and its format (safetensors or pytorch).

    Safetensors holds tensors only. Anything else is read with
    torch.load(weights_only=True), which refuses every pickled object but tensors and plain
    containers, so a file that would run code when unpickled is refused, not run.
    """
    import safetensors
    import safetensors.torch
    import torch

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        try:
            return safetensors.torch.load_file(str(path), device="cpu"), "safetensors"
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise InvalidUpload(f"not a valid safetensors file: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refused pickles and broken files fail variously
        text = str(exc)
        # torch's own message goes on to suggest weights_only=False: not advice for a user here.
        if "WeightsUnpickler error:" in text:
            text = text.split("WeightsUnpickler error:", 1)[1]
            detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
            text = (
                "it holds objects other than tensors and plain containers "
                f"(refused; none of it ran): {detail}"
            )
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise InvalidUpload(
            "not a safetensors file, nor a PyTorch state dict that loads with "
            f"torch.load(weights_only=True): {first[:300]}"
        ) from None
    # A checkpoint may wrap the state dict: {"state_dict": {...}} or {"model": {...}}.
    if isinstance(state, dict) and len(state) == 1:
        (inner,) = state.values()
        if isinstance(inner, dict) and next(iter(state)) in ("state_dict", "model"):
            state = inner
    if not isinstance(state, dict) or not state:
        raise InvalidUpload("the file holds no state dict (a mapping of names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidUpload(f"entry {str(key)[:100]!r} of the state dict is not a tensor")
    # Saved from a DataParallel/DistributedDataParallel model: names start with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, "pytorch"


def architecture_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of a torchvision architecture (built on the meta device:
    no memory, no initialization)."""
    return {k: tuple(v.shape) for k, v in _meta_model(arch).state_dict().items()}


def _meta_model(arch: str) -> torch.nn.Module:
    import torch
    import torchvision

    if arch not in TORCHVISION_BODIES:
        raise InvalidUpload(f"unknown architecture {arch!r}: use {', '.join(TORCHVISION_BODIES)}")
    with torch.device("meta"):
        return torchvision.models.get_model(arch, weights=None)


def weights_mismatches(
    tensors: dict[str, torch.Tensor], arch: str, *, required: set[str] | None = None
) -> list[str]:
    """How the tensors fail the architecture's state dict: missing and unexpected keys, shape
    and dtype mismatches. The replaced classifier layer may be absent or of any shape, and
    batch norm's num_batches_tracked may be absent."""
    expected = architecture_shapes(arch)
    head = set(TORCHVISION_BODIES[arch].head_keys)
    optional = head | {k for k in expected if k.endswith("num_batches_tracked")}
    needed = required if required is not None else set(expected) - optional
    missing = sorted(k for k in needed if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected)
    shapes, dtypes = [], []
    for key, value in tensors.items():
        if key not in expected or key in head:
            continue
        if tuple(value.shape) != expected[key]:
            shapes.append(f"{key}: {tuple(value.shape)} in the file, {expected[key]} in {arch}")
        elif not key.endswith("num_batches_tracked") and not value.is_floating_point():
            dtypes.append(f"{key}: {value.dtype}, not a floating-point type")
    problems = []
    for what, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
        ("dtype mismatches", dtypes),
    ):
        if items:
            more = f" (and {len(items) - LISTED} more)" if len(items) > LISTED else ""
            problems.append(f"{len(items)} {what}: {'; '.join(items[:LISTED])}{more}")
    return problems


def inspect_weights(path: str | PathLike[str], arch: str) -> dict[str, Any]:
    """Check uploaded backbone weights against a torchvision architecture; return their
    metadata or raise InvalidUpload listing the first mismatches."""
    tensors, format = read_weights(path)
    problems = weights_mismatches(tensors, arch)
    if problems:
        raise InvalidUpload(f"the weights do not fit {arch}: " + " | ".join(problems))
    head = TORCHVISION_BODIES[arch].head_keys
    weight = tensors.get(head[0])
    parameters = {name for name, _ in _meta_model(arch).named_parameters()}
    return {
        "format": format,
        "arch": arch,
        "tensors": len(tensors),
        "parameters": int(sum(v.numel() for k, v in tensors.items() if k in parameters)),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()}),
        # The classifier the weights were trained with (replaced by the job's head).
        "head_classes": int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None,
    }
