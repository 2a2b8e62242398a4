"""What makes an open HDF5 file a readable trial log: its attributes and datasets, checked before use.

Every check reads only what it must: an attribute's or dataset's shape and type come from its
header, and a dataset's rows are read only once its shape agrees with the others and its declared
size is backed by storage in the file (a damaged header may declare 2^40 rows). Each failure is a
TrialLogError naming the file and the attribute or dataset. Exceptions h5py raises for a damaged
file become TrialLogError only around h5py calls (`hdf5_errors`): anything else is a bug.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

FORMAT = "forethought.trial"
# Version 2 adds `requested_actions` (what the controller asked for) beside `actions` (what the
# robot applied); version 1 files hold `actions` only, which were the requests clipped to the bounds.
FORMAT_VERSION = 2
DATASETS_V1 = ("states", "actions", "timestamps", "costs")
DATASETS = DATASETS_V1 + ("requested_actions",)
# The attributes the reader reads (the others are in the metadata too).
ATTRIBUTES = frozenset({"format", "format_version", "state_names", "action_names", "dt", "complete", "metadata"})
# Names of states or actions: far more than any robot has, few enough to read at once.
MAX_NAMES = 100_000
# Rows a partial file may declare past its stored chunks: the writer extends a dataset before its
# rows reach the disk, by at most one flush's worth (bytes, in the file's element type).
UNFLUSHED_TAIL_BYTES = 16 * 2**20
# A compressed dataset holds at most this many times its stored bytes (deflate's ceiling, 1032:1).
MAX_COMPRESSION = 1032
# h5py's exceptions for what libhdf5 finds damaged or cannot convert.
H5PY_ERRORS = (OSError, RuntimeError, LookupError, ValueError, TypeError, NotImplementedError, ArithmeticError)


class TrialLogError(ValueError):
    """A trial file that cannot be read, phrased as one line that names the file."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


@contextlib.contextmanager
def hdf5_errors(path: Path, what: str = ""):
    """Turn h5py's exceptions inside the block into TrialLogError naming `path` (and `what` was read)."""
    try:
        yield
    except TrialLogError:
        raise
    except H5PY_ERRORS as err:
        where = f" reading {what}" if what else ""
        raise TrialLogError(f"{path}: damaged trial log{where} ({one_line(err)})") from None


@dataclass(frozen=True)
class Header:
    """A trial log's attributes. dt: control period (s); metadata: the trial's metadata."""

    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    dt: float
    complete: bool
    metadata: dict


_MISSING = object()


def _attribute(f: h5py.File, path: Path, name: str, ndim: int):
    """The attribute `name` (of `ndim` dimensions, at most MAX_NAMES values) or _MISSING."""
    with hdf5_errors(path, f"attribute {name}"):
        if name not in f.attrs:
            return _MISSING
        attr = f.attrs.get_id(name)
        shape, dtype = attr.shape, attr.dtype
        if shape is None or len(shape) != ndim:
            raise TrialLogError(f"{path}: attribute {name} must have {ndim} dimension(s), got shape {shape}")
        if math.prod(shape) > MAX_NAMES:
            raise TrialLogError(f"{path}: attribute {name} has {math.prod(shape)} values, more than {MAX_NAMES}")
        if ndim and math.prod(shape) == 0:
            return np.empty(0, dtype=object)  # h5py stores an empty list as float64
        if dtype.kind not in "biufSO" or (dtype.kind in "SO" and h5py.check_string_dtype(dtype) is None):
            raise TrialLogError(f"{path}: attribute {name} has type {dtype}, not a number or a string")
        return f.attrs[name]


def _text(value, path: Path, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TrialLogError(f"{path}: attribute {name} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise TrialLogError(f"{path}: attribute {name} must be text, got {type(value).__name__}")
    return value


def _real(value, path: Path, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TrialLogError(f"{path}: attribute {name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise TrialLogError(f"{path}: attribute {name} must be finite, got {number}")
    return number


def datasets_of(version: int) -> tuple[str, ...]:
    """The datasets a trial log of format `version` holds."""
    return DATASETS if version >= 2 else DATASETS_V1


def check_format(f: h5py.File, path: Path) -> int:
    """That an open file is a trial log this version reads: its format attributes and datasets.
    Returns its format version."""
    fmt = _attribute(f, path, "format", 0)
    if fmt is _MISSING or not isinstance(fmt, (str, bytes)) or _text(fmt, path, "format") != FORMAT:
        raise TrialLogError(f"{path}: not a forethought trial log (no format attribute '{FORMAT}')")
    version = _attribute(f, path, "format_version", 0)
    version = 0.0 if version is _MISSING else _real(version, path, "format_version")
    if version != int(version) or version < 0:
        raise TrialLogError(f"{path}: attribute format_version must be a whole number, got {version}")
    if version > FORMAT_VERSION:
        raise TrialLogError(
            f"{path}: trial log format {int(version)} is newer than this forethought reads ({FORMAT_VERSION})"
        )
    with hdf5_errors(path):
        missing = [name for name in datasets_of(int(version)) if name not in f]
    if missing:
        raise TrialLogError(f"{path}: damaged trial log, missing dataset(s) {', '.join(missing)}")
    return int(version)


def read_header(f: h5py.File, path: Path) -> Header:
    """Check and read the attributes of an open trial log."""
    names = {}
    for name in ("state_names", "action_names"):
        values = _attribute(f, path, name, 1)
        if values is _MISSING:
            raise TrialLogError(f"{path}: damaged trial log, missing attribute {name}")
        names[name] = tuple(_text(value, path, name) for value in values)
    dt = _attribute(f, path, "dt", 0)
    if dt is _MISSING:
        raise TrialLogError(f"{path}: damaged trial log, missing attribute dt")
    dt = _real(dt, path, "dt")
    if dt <= 0:
        raise TrialLogError(f"{path}: attribute dt must be positive, got {dt}")
    complete = _attribute(f, path, "complete", 0)
    if complete is _MISSING:
        complete = False
    elif isinstance(complete, (bool, np.bool_, np.integer)) and complete in (0, 1):
        complete = bool(complete)
    else:
        raise TrialLogError(f"{path}: attribute complete must be true or false, got {complete!r:.40}")
    text = _attribute(f, path, "metadata", 0)
    if text is _MISSING:
        raise TrialLogError(f"{path}: damaged trial log, missing attribute metadata")
    metadata = parse_metadata(_text(text, path, "metadata"), path)
    return Header(names["state_names"], names["action_names"], dt, complete, metadata)


def parse_metadata(text: str, path: Path) -> dict:
    """The metadata attribute's JSON, which must be an object."""
    try:
        metadata = json.loads(text)
    except RecursionError:
        raise TrialLogError(f"{path}: attribute metadata is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, or an integer too long to convert
        raise TrialLogError(f"{path}: attribute metadata is not JSON ({one_line(err)})") from None
    if not isinstance(metadata, dict):
        raise TrialLogError(f"{path}: attribute metadata must be a JSON object, got {type(metadata).__name__}")
    return metadata


def open_datasets(f: h5py.File, path: Path, header: Header, names=DATASETS) -> dict[str, h5py.Dataset]:
    """The datasets `names`, checked to be plain real arrays of the right rank and width (nothing read)."""
    widths = {"states": len(header.state_names), "actions": len(header.action_names),
              "requested_actions": len(header.action_names)}
    datasets = {}
    for name in names:
        with hdf5_errors(path, f"dataset {name}"):
            if not isinstance(f.get(name, getlink=True), h5py.HardLink):
                raise TrialLogError(f"{path}: {name} must be a dataset in the file, not a link")
            dataset = f[name]
            if not isinstance(dataset, h5py.Dataset):
                raise TrialLogError(f"{path}: {name} must be a dataset, got a {type(dataset).__name__}")
            if dataset.is_virtual or dataset.external:
                raise TrialLogError(f"{path}: dataset {name} keeps its data outside the file")
            shape, dtype = dataset.shape, dataset.dtype
        if dtype.kind not in "fiu":
            raise TrialLogError(f"{path}: dataset {name} has type {dtype}, not real numbers")
        expected = 2 if name in widths else 1
        if shape is None or len(shape) != expected:
            raise TrialLogError(f"{path}: dataset {name} must have {expected} dimension(s), got shape {shape}")
        if name in widths and shape[1] != widths[name]:
            raise TrialLogError(
                f"{path}: dataset {name} has {shape[1]} columns for {widths[name]} "
                f"{name.removeprefix('requested_').removesuffix('s')} names"
            )
        datasets[name] = dataset
    return datasets


def rows_to_read(datasets: dict[str, h5py.Dataset], path: Path, complete: bool) -> int:
    """T, the steps to read: all of a complete trial's, whose shapes must agree; a partial trial's
    steps on which all datasets have rows (their final rows may lag each other)."""
    states, actions, stamps, costs = (datasets[name].shape[0] for name in DATASETS_V1)
    requested = datasets["requested_actions"].shape[0] if "requested_actions" in datasets else actions
    if complete:
        T = actions
        if (states, stamps, costs) != (T + 1, T + 1, T + 1):
            raise TrialLogError(
                f"{path}: damaged trial log, {T} actions need {T + 1} states, timestamps and costs, "
                f"got {states}, {stamps} and {costs}"
            )
        if requested != T:
            raise TrialLogError(f"{path}: damaged trial log, {T} actions but {requested} requested actions")
        return T
    T = min(states - 1, actions, requested, stamps - 1, costs)
    if T < 0:
        raise TrialLogError(f"{path}: partial trial log holds no steps")
    return T


def read_rows(dataset: h5py.Dataset, rows: int, path: Path, complete: bool) -> np.ndarray:
    """The first `rows` rows of `dataset` as float64, once the file is known to hold them."""
    name = dataset.name.lstrip("/")
    with hdf5_errors(path, f"dataset {name}"):
        declared = rows * math.prod(dataset.shape[1:]) * dataset.dtype.itemsize
        stored = dataset.id.get_storage_size()
        filtered = dataset.id.get_create_plist().get_nfilters() > 0
        backed = stored * (MAX_COMPRESSION if filtered else 1) + (0 if complete else UNFLUSHED_TAIL_BYTES)
        if declared > backed:
            raise TrialLogError(
                f"{path}: dataset {name} declares {declared} bytes but the file stores {stored} for it"
            )
        return np.asarray(dataset[:rows], dtype=np.float64)


def check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    """A finished trial's states, actions (applied and requested) and timestamps are all finite
    (costs may be NaN: none)."""
    for name in ("states", "actions", "requested_actions", "timestamps"):
        if name not in arrays:
            continue
        bad = ~np.isfinite(arrays[name])
        if bad.any():
            row = int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))
            raise TrialLogError(f"{path}: damaged trial log, {name} holds NaN or inf (row {row})")
