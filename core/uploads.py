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
import json
import math
import stat
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
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
# What a dataset may take once decoded (image pixels, arrays, a CSV's numbers), counted
# before decoding it.
MAX_DECODED_BYTES = 1 << 30
MAX_COLUMNS = 100_000
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit
# An integer target with at most this many distinct values is taken for classes.
MAX_CLASSES = 1_000
MAX_CLASSES_GUESSED = 50
LISTED = 5  # mismatches named in an error message

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# What zipfile raises for a broken archive or member: a bad CRC, a member longer than it
# declares, a corrupt deflate stream, an unsupported zip version or compression method,
# encryption, a truncated file.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    struct.error,
)


def _open_zip(path: Path, what: str = "zip archive") -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise InvalidUpload(f"not a readable {what}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return text or type(exc).__name__


# --------------------------------------------------------------------------- datasets


def inspect_dataset(
    path: str | PathLike[str],
    format: str,
    target: str | None = None,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> dict[str, Any]:
    """Check an uploaded dataset; return its metadata or raise InvalidUpload saying why.

    The metadata: format, target (csv), task (what the targets are), tasks (what they
    support), n_samples, n_features, num_classes, class_names, class_counts, image_shape,
    pixel_max, and per format columns (csv) or resized (imagefolder).
    """
    _, _, meta = read_dataset(
        path,
        format,
        target,
        max_unpacked_bytes=max_unpacked_bytes,
        max_files=max_files,
        max_decoded_bytes=max_decoded_bytes,
    )
    return meta


def read_dataset(
    path: str | PathLike[str],
    format: str | None,
    target: str | None = None,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(x, y, metadata): x as (N, F) features or (N, C, H, W) images, y as class indices,
    values or masks. format None: told from the file's content. What the data takes decoded
    is counted from its headers before it is decoded, and refused over max_decoded_bytes."""
    path = Path(path)
    format = format or sniff_format(path)
    if format != "csv" and target is not None:
        raise InvalidUpload(f"a {format} dataset holds its own targets: target is for CSV files")
    if format == "csv":
        x, y, meta = _read_csv(path, target, max_decoded_bytes)
    elif format == "npz":
        x, y, meta = _read_npz(path, max_unpacked_bytes, max_decoded_bytes)
    elif format == "imagefolder":
        x, y, meta = _read_imagefolder(path, max_unpacked_bytes, max_files, max_decoded_bytes)
    else:
        raise InvalidUpload(f"unknown dataset format {format!r}: use csv, npz or imagefolder")
    return x, y, {"format": format, **meta}


def sniff_format(path: Path) -> str:
    """npz (a zip with x.npy), imagefolder (another zip) or csv."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        with _open_zip(path) as archive:
            names = set(archive.namelist())
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


def _read_csv(
    path: Path, target: str | None, max_decoded: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read in two passes, neither holding the rows: the first checks the shape of every
    row, counts them and tells number targets from text labels, so that what the arrays
    will take is known (and bounded) before they are made; the second fills them."""
    if not target:
        raise InvalidUpload("a CSV dataset needs the name of its target column")
    header: list[str] = []
    t: int | None = None
    n = 0
    uneven: tuple[int, int] | None = None  # the first row whose length is not the header's
    numeric = True
    classes: set[str] = set()
    for i, row in _csv_rows(path):
        if i == 1:
            header = [cell.strip() for cell in row]
            t = header.index(target) if target in header else None
            continue
        n += 1
        if len(row) != len(header):
            uneven = uneven or (i, len(row))
            continue
        if t is None:
            continue
        if numeric:
            try:
                float(row[t])
            except ValueError:
                numeric = False
        if not numeric and len(classes) <= MAX_CLASSES:
            classes.add(row[t].strip())
    if n < 2:
        raise InvalidUpload("a CSV dataset has a header row and at least 2 rows of data")
    _check_header(header, target)
    assert t is not None
    if uneven:
        raise InvalidUpload(
            f"CSV line {uneven[0]} has {uneven[1]} columns; the header has {len(header)}"
        )
    decoded = n * len(header) * 8
    if decoded > max_decoded:
        raise InvalidUpload(
            f"the CSV's {n:,} rows of {len(header):,} columns take {decoded:,} bytes as "
            f"numbers; at most {max_decoded:,} bytes"
        )
    if not numeric and len(classes) > MAX_CLASSES:
        raise InvalidUpload(f"target {target!r} has more than {MAX_CLASSES} classes")
    names = sorted(classes)
    index = {name: k for k, name in enumerate(names)}
    features = np.empty((n, len(header) - 1), dtype=np.float64)
    targets = np.empty(n, dtype=np.float64 if numeric else np.int64)
    for i, row in _csv_rows(path):
        if i == 1:
            continue
        r = i - 2
        for j, cell in enumerate(row[:t] + row[t + 1 :]):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                column = header[j if j < t else j + 1]
                raise InvalidUpload(
                    f"CSV line {i}, column {column!r}: {cell[:40]!r} is not a finite number"
                )
            features[r, j] = value
        label = row[t].strip()
        if not numeric:
            targets[r] = index[label]
            continue
        targets[r] = float(label)
        if not math.isfinite(targets[r]):
            raise InvalidUpload(f"CSV line {i}: the target {label[:40]!r} is not finite")
    columns = [c for c in header if c != target]
    if not numeric:  # text labels: classes
        y = targets
        _check_classes(np.bincount(y, minlength=len(names)), names)
        meta = _describe(features, y, "classification", names, target=target, columns=columns)
        return features, y, meta
    numbers = targets
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


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(number, cells) of the non-empty rows, counted from 1 (the header), one at a time."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = (row for row in csv.reader(f, strict=True) if row)
            yield from enumerate(rows, start=1)
    except UnicodeDecodeError:
        raise InvalidUpload("not a CSV file: it is not UTF-8 text") from None
    except csv.Error as exc:
        raise InvalidUpload(f"not a valid CSV file: {exc}") from None


def _check_header(header: list[str], target: str) -> None:
    if target not in header:
        shown = ", ".join(repr(c) for c in header[:20]) + (", …" if len(header) > 20 else "")
        raise InvalidUpload(f"the CSV has no column {target!r}; its columns are {shown}")
    if len(header) > MAX_COLUMNS:
        raise InvalidUpload(f"the CSV has {len(header):,} columns; at most {MAX_COLUMNS:,}")
    if len(set(header)) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise InvalidUpload(f"the CSV names columns more than once: {', '.join(twice)}")
    if len(header) < 2:
        raise InvalidUpload("a CSV dataset needs at least one feature column besides the target")


def classification_labels(meta: dict[str, Any], y: np.ndarray, task: str) -> np.ndarray:
    """y as the task wants it: class indices, or (regression on an integer CSV target) the
    values the indices stand for."""
    if task == "regression" and meta.get("target_values") is not None:
        return np.asarray(meta["target_values"], dtype=np.float64)[y]
    return y


# ------------------------------------------------------------------ npz


def _read_npz(
    path: Path, max_bytes: int, max_decoded: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    with _open_zip(path, ".npz archive") as archive:
        infos = archive.infolist()
        names = sorted(i.filename for i in infos)
        if names != ["x.npy", "y.npy"]:
            raise InvalidUpload(
                f"an npz dataset holds exactly the arrays x and y; found {', '.join(names[:10])}"
            )
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise InvalidUpload(
                f"the arrays unpack to {declared:,} bytes; at most {max_bytes:,} bytes"
            )
        for info in infos:
            _check_ratio(info)
        # What the arrays take, from their headers: numpy allocates that before reading.
        shapes = {info.filename: _npy_header(archive, info) for info in infos}
    decoded = sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values())
    if decoded > max_decoded:
        shown = ", ".join(f"{n[0]} {shape} {dtype}" for n, (shape, dtype) in shapes.items())
        raise InvalidUpload(
            f"the arrays ({shown}) take {decoded:,} bytes; at most {max_decoded:,} bytes"
        )
    try:
        # allow_pickle=False: an object array (which would need unpickling) is refused.
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except ZIP_ERRORS as exc:
        raise InvalidUpload(f"the npz arrays cannot be read: {_reason(exc)}") from None
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


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], Any]:
    """An .npy member's shape and dtype, read from its header alone."""
    from numpy.lib import format as npy

    try:
        with archive.open(info) as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f)
            else:
                shape, _, dtype = npy.read_array_header_2_0(f)
    except ZIP_ERRORS as exc:
        raise InvalidUpload(f"{info.filename} is not a readable array: {_reason(exc)}") from None
    return shape, dtype


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
    path: Path, max_bytes: int, max_files: int, max_decoded: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Two passes over the members, one at a time: the first reads every image's header
    (its size and bands), so that what the images take decoded is known and bounded before
    one is decoded; the second decodes each straight into the array."""
    from PIL import Image

    with _open_zip(path) as archive:
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
        members = [
            (label, member, info)
            for label, name in enumerate(names)
            for member, info in sorted(classes[name], key=lambda item: str(item[0]))
        ]

        # Pass 1: headers only (each member read whole, so that its CRC is checked).
        headers: list[tuple[tuple[int, int], str]] = []
        unpacked = decoded = 0
        for _, member, info in members:
            data = _read_member(archive, info, max_bytes - unpacked)
            unpacked += len(data)
            if unpacked > max_bytes:
                raise InvalidUpload(f"the archive unpacks to more than {max_bytes:,} bytes")
            im = _open_image(Image, member, data)
            headers.append((im.size, im.mode))
            decoded += im.size[0] * im.size[1] * len(im.getbands())
            del data, im
        gray = all(mode in GRAY_MODES for _, mode in headers)
        mode = "L" if gray else "RGB"
        (width, height), _ = Counter(size for size, _ in headers).most_common(1)[0]
        channels = 1 if gray else 3
        array = len(members) * channels * width * height
        if max(decoded, array) > max_decoded:
            raise InvalidUpload(
                f"the {len(members):,} images take {decoded:,} bytes decoded, and "
                f"{array:,} bytes as {width}x{height}x{channels} arrays; at most "
                f"{max_decoded:,} bytes"
            )

        # Pass 2: decode each image into its place.
        x = np.empty((len(members), channels, height, width), dtype=np.uint8)
        resized = 0
        for i, (_, member, info) in enumerate(members):
            im = _decode(Image, member, _read_member(archive, info, info.file_size))
            im = _to_8bit(im).convert(mode)
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BILINEAR)
                resized += 1
            pixels = np.asarray(im, dtype=np.uint8).reshape(height, width, channels)
            x[i] = pixels.transpose(2, 0, 1)
            del im, pixels
    y = np.asarray([label for label, _, _ in members], dtype=np.int64)
    return x, y, _describe(x, y, "classification", names, resized=resized)


GRAY_MODES = ("1", "L", "I", "I;16", "F")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """A member's bytes, no more than one past the budget (a member's declared size can
    lie), its CRC checked when it is read whole."""
    try:
        with archive.open(info) as f:
            return f.read(budget + 1)
    except ZIP_ERRORS as exc:
        shown = info.filename[:100]
        raise InvalidUpload(f"archive member {shown!r} cannot be read: {_reason(exc)}") from None


def _open_image(image_module: Any, member: PurePosixPath, data: bytes) -> Any:
    """The image with its header read (not decoded), refused if it is larger than one image
    may be: a small file can declare a huge image."""
    shown = str(member)[:100]
    try:
        im = image_module.open(io.BytesIO(data))
        width, height = im.size
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise InvalidUpload(f"{shown!r} is not an image Pillow can read: {exc}") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidUpload(
            f"{shown!r} is {width}x{height}: at most {MAX_IMAGE_PIXELS:,} pixels an image"
        )
    return im


def _decode(image_module: Any, member: PurePosixPath, data: bytes) -> Any:
    im = _open_image(image_module, member, data)
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        shown = str(member)[:100]
        raise InvalidUpload(f"{shown!r} is not an image Pillow can read: {exc}") from None
    return im


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
        _check_safetensors_shapes(path)
        try:
            return safetensors.torch.load_file(str(path), device="cpu"), "safetensors"
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001 - Rust panics derive from BaseException
            raise InvalidUpload(f"not a valid safetensors file: {_reason(exc)}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
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


def _check_safetensors_shapes(path: Path) -> None:
    """Refuse shapes torch cannot make (a dimension or element count past int64), which
    safetensors passes when they hold no data: the rest of the header is safetensors' to
    check."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_SAFETENSORS_HEADER:
            raise InvalidUpload(
                f"not a valid safetensors file: a header of {length:,} bytes; at most "
                f"{MAX_SAFETENSORS_HEADER:,}"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidUpload(f"not a valid safetensors file: its header: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidUpload("not a valid safetensors file: its header is not a JSON object")
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if name == "__metadata__" or not isinstance(shape, list):
            continue  # safetensors says what is wrong with it
        dims = [d for d in shape if isinstance(d, int) and not isinstance(d, bool)]
        if len(dims) == len(shape) and (
            any(d < 0 or d >= 2**63 for d in dims) or math.prod(dims) >= 2**63
        ):
            raise InvalidUpload(
                f"not a valid safetensors file: tensor {str(name)[:100]!r} has the shape "
                f"{str(shape)[:200]}, past what a tensor can hold (2**63 elements)"
            )


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
