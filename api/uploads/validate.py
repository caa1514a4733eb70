"""Checks of uploaded files, before anything is stored. Nothing here unpickles or executes
what a user sent, and nothing is extracted to disk.

- ``.npz`` datasets are zip archives of ``.npy`` arrays: the member names must be plain
  (no absolute paths, ``..``, backslashes, links or folders), the archive must not unpack to
  more than the limit (declared sizes are checked first, then every member is read through,
  counting, since declared sizes can lie), the compression ratio is bounded (zip bombs), and
  each array's header must describe plain numbers (object arrays would need pickle).
- ``.csv`` datasets must be UTF-8 text of numbers in a rectangle, with an optional header.
- ``.safetensors`` weights: the JSON header is parsed by hand (no torch) and every tensor's
  offsets must tile the data section exactly.

The format is taken from the file's content, never from the name the client gave it.
"""

import csv
import io
import json
import math
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

CHUNK = 1 << 20
MAX_MEMBERS = 64
MAX_RATIO = 200  # uncompressed / compressed, for members over RATIO_FLOOR
RATIO_FLOOR = 1 << 20
MAX_NAME_CHARS = 200
MAX_NPY_HEADER = 10_000
MAX_CSV_COLUMNS = 10_000
MAX_CSV_FIELD = 1000  # characters in one cell
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own cap
MAX_TENSORS = 100_000

SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class InvalidUpload(ValueError):
    """The file is refused; the message says why (it is shown to the client)."""


@dataclass(frozen=True)
class Checked:
    format: str  # npz | csv | safetensors
    info: dict[str, Any]


def check_dataset(f: IO[bytes], size: int, *, max_unpacked: int) -> Checked:
    f.seek(0)
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK"):
        return Checked("npz", check_npz(f, max_unpacked=max_unpacked))
    return Checked("csv", check_csv(f, size))


def check_weights(f: IO[bytes], size: int) -> Checked:
    return Checked("safetensors", check_safetensors(f, size))


# ------------------------------------------------------------------------------ npz


def safe_member_name(name: str) -> bool:
    """A member name that could never reach outside a folder it were extracted to."""
    if not name or len(name) > MAX_NAME_CHARS or "\\" in name or "\x00" in name:
        return False
    path = PurePosixPath(name)
    if path.is_absolute() or ":" in path.parts[0]:  # /etc/x, C:/x
        return False
    return all(part not in ("", ".", "..") for part in path.parts) and not name.endswith("/")


def check_npz(f: IO[bytes], *, max_unpacked: int) -> dict[str, Any]:
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidUpload(f"not a valid .npz (zip) archive: {exc}") from None
    with archive:
        members = archive.infolist()
        if not members:
            raise InvalidUpload("the archive is empty")
        if len(members) > MAX_MEMBERS:
            raise InvalidUpload(f"the archive has {len(members)} members; at most {MAX_MEMBERS}")
        seen: set[str] = set()
        declared = 0
        for info in members:
            name = info.filename
            if not safe_member_name(name):
                raise InvalidUpload(f"refused archive member name {name[:100]!r} (path traversal)")
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver set no type
            if info.is_dir() or kind not in (0, stat.S_IFREG):  # links, folders, devices
                raise InvalidUpload(f"archive member {name!r} is not a plain file")
            if info.flag_bits & 0x1:
                raise InvalidUpload(f"archive member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InvalidUpload(f"archive member {name!r}: only stored or deflated members")
            if not name.endswith(".npy") or "/" in name:
                raise InvalidUpload(f"archive member {name!r}: an .npz holds only NAME.npy arrays")
            if name in seen:
                raise InvalidUpload(f"archive member {name!r} appears twice")
            seen.add(name)
            declared += info.file_size
            if declared > max_unpacked:
                raise InvalidUpload(f"the archive unpacks to more than {max_unpacked} bytes")
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(
                info.compress_size, 1
            ):
                raise InvalidUpload(
                    f"archive member {name!r} is compressed more than {MAX_RATIO}:1 (zip bomb)"
                )
        arrays = {info.filename[:-4]: _check_npy(archive, info) for info in members}
    return _dataset_arrays(arrays)


def _check_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, Any]:
    from numpy.lib import format as npy  # numpy, never torch; and only its header parser

    name = info.filename
    try:
        with archive.open(info) as member:
            version = npy.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(member, MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy.read_array_header_2_0(member, MAX_NPY_HEADER)
            else:
                raise InvalidUpload(f"{name}: unsupported .npy version {version}")
            if dtype.hasobject or dtype.kind not in "biuf":
                raise InvalidUpload(f"{name}: arrays must hold numbers, not {dtype}")
            expected = math.prod(shape) * dtype.itemsize
            # Read it all through: the CRC is checked at the end, and the real size counted.
            read = 0
            while chunk := member.read(CHUNK):
                read += len(chunk)
                if read > expected:
                    break
    except InvalidUpload:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidUpload(f"{name}: not a readable .npy array: {exc}") from None
    if read != expected:
        raise InvalidUpload(f"{name}: holds {read} bytes of data, its header says {expected}")
    return {"shape": list(shape), "dtype": str(dtype)}


def _dataset_arrays(arrays: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if "x" not in arrays or "y" not in arrays:
        raise InvalidUpload("an .npz dataset holds x.npy (inputs) and y.npy (targets)")
    x, y = arrays["x"]["shape"], arrays["y"]["shape"]
    if not 2 <= len(x) <= 4 or not 1 <= len(y) <= 2:
        raise InvalidUpload("x must have 2 to 4 dimensions (rows first), y 1 or 2")
    if x[0] != y[0] or x[0] < 2:
        raise InvalidUpload(f"x and y need the same number of rows, at least 2: {x[0]}, {y[0]}")
    return {"rows": x[0], "arrays": arrays}


# ------------------------------------------------------------------------------ csv


def check_csv(f: IO[bytes], size: int) -> dict[str, Any]:
    f.seek(0)
    text = io.TextIOWrapper(f, encoding="utf-8", errors="strict", newline="")
    try:
        reader = csv.reader(_no_nul(text), strict=True)
        columns: int | None = None
        header: list[str] | None = None
        rows = 0
        for line, row in enumerate(reader, start=1):
            if not row:
                continue
            if columns is None:
                columns = len(row)
                if not 2 <= columns <= MAX_CSV_COLUMNS:
                    raise InvalidUpload(f"a csv dataset has 2 to {MAX_CSV_COLUMNS} columns")
            elif len(row) != columns:
                raise InvalidUpload(f"csv line {line} has {len(row)} columns, not {columns}")
            if any(len(cell) > MAX_CSV_FIELD for cell in row):
                raise InvalidUpload(f"csv line {line} has a cell over {MAX_CSV_FIELD} characters")
            numbers = [_number(cell) for cell in row]
            if all(n is not None for n in numbers):
                rows += 1
            elif line == 1:
                header = [cell.strip() for cell in row]
            else:
                raise InvalidUpload(f"csv line {line}: every cell after the header is a number")
    except UnicodeDecodeError:
        raise InvalidUpload("not a csv dataset (UTF-8 text) nor an .npz archive") from None
    except csv.Error as exc:
        raise InvalidUpload(f"not a valid csv file: {exc}") from None
    finally:
        text.detach()  # leave the upload's file open for storing
    if rows < 2:
        raise InvalidUpload("a csv dataset has at least 2 rows of numbers")
    return {"rows": rows, "columns": columns, "header": header}


def _no_nul(lines: Any) -> Any:
    for line in lines:
        if "\x00" in line:
            raise InvalidUpload("not a csv dataset: the file holds NUL bytes")
        yield line


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------ safetensors


def check_safetensors(f: IO[bytes], size: int) -> dict[str, Any]:
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) < 8:
        raise InvalidUpload("not a safetensors file: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_SAFETENSORS_HEADER, size - 8):
        raise InvalidUpload("not a safetensors file: bad header length")
    try:
        header = json.loads(f.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidUpload("not a safetensors file: the header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidUpload("not a safetensors file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidUpload("safetensors __metadata__ must map names to strings")
    if not header or len(header) > MAX_TENSORS:
        raise InvalidUpload(f"a weights file holds 1 to {MAX_TENSORS} tensors")
    data_size = size - 8 - length
    spans = []
    parameters = 0
    dtypes = set()
    for name, tensor in header.items():
        spans.append(_tensor_span(name, tensor))
        parameters += math.prod(tensor["shape"])
        dtypes.add(tensor["dtype"])
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise InvalidUpload(f"tensor {name[:100]!r}: its data does not follow the previous")
        end = stop
    if end != data_size:
        raise InvalidUpload(f"the tensors cover {end} bytes of data; the file holds {data_size}")
    return {"tensors": len(header), "parameters": parameters, "dtypes": sorted(dtypes)}


def _tensor_span(name: str, tensor: Any) -> tuple[int, int, str]:
    bad = InvalidUpload(f"tensor {name[:100]!r}: needs dtype, shape and data_offsets")
    if len(name) > 1000 or not isinstance(tensor, dict):
        raise bad
    dtype, shape, offsets = tensor.get("dtype"), tensor.get("shape"), tensor.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise InvalidUpload(f"tensor {name[:100]!r}: unknown dtype {str(dtype)[:20]!r}")
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and 0 <= d < 2**40 for d in shape)
        or len(shape) > 16
    ):
        raise bad
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise bad
    begin, stop = offsets
    if stop - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        raise InvalidUpload(f"tensor {name[:100]!r}: its offsets do not fit its shape and dtype")
    return begin, stop, name
