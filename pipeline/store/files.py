"""The store's file table: one row per source file the store has seen, appended to, never reordered.

Row ``j`` of the table is row ``j`` of ``paths`` and of every array of the
``files/`` group: ``size``, ``mtime_ns`` (what the scan saw), ``sha256`` (of
the file's bytes), ``label``, ``live`` (False once the file was removed or
changed: its samples are retired), ``measured`` (its moments are known: a run
whose statistics are known before it writes measures a file in the same decode
that makes its samples), and the file's exact moments ``n``, ``s1``,
``s2``, ``min``, ``max``, ``image_mean``, ``image_std``
(:class:`pipeline.stats.FileMoments`). ``source_index`` of a sample is a row of
this table. The number of rows in use is the ``files`` key of the group
attribute: rows past it (an interrupted append) are ignored and overwritten.

Example:
    >>> t = FileTable.blank(["a/x.png", "b/y.png"])
    >>> len(t), t.live.tolist(), t.take([1]).paths
    (2, [True, True], ['b/y.png'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.errors import InvalidArgumentError
from pipeline.store.group import get_array, read_array

__all__ = [
    "FILE_ARRAYS",
    "FileTable",
    "append_files",
    "create_file_arrays",
    "read_files",
    "set_file_rows",
]

#: name -> (dtype, trailing shape) of each ``files/`` array.
FILE_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "size": ("int64", ()),
    "mtime_ns": ("int64", ()),
    "sha256": ("uint8", (32,)),
    "label": ("int64", ()),
    "live": ("bool", ()),
    "measured": ("bool", ()),
    "n": ("int64", ()),
    "s1": ("int64", (3,)),
    "s2": ("uint64", (3,)),
    "min": ("uint16", (3,)),
    "max": ("uint16", (3,)),
    "image_mean": ("float64", (3,)),
    "image_std": ("float64", (3,)),
}
_CHUNK = 65536


@dataclass
class FileTable:
    """Rows of the file table, as NumPy arrays (plain values).

    Attributes:
        paths: the files, relative to the source root.
        size, mtime_ns, sha256, label, live, measured, n, s1, s2, min, max,
            image_mean, image_std: one row per file, dtypes and shapes of
            :data:`FILE_ARRAYS`.
    """

    paths: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    sha256: np.ndarray
    label: np.ndarray
    live: np.ndarray
    measured: np.ndarray
    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    image_mean: np.ndarray
    image_std: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __post_init__(self) -> None:
        k = len(self.paths)
        for name, (dtype, shape) in FILE_ARRAYS.items():
            value = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            if value.shape != (k, *shape):
                raise InvalidArgumentError(
                    f"{name} must have shape {(k, *shape)} (one row per path), got {value.shape}"
                )
            setattr(self, name, value)

    @classmethod
    def blank(cls, paths: Sequence[str], *, labels: Sequence[int] | None = None) -> FileTable:
        """Live, unmeasured rows for ``paths`` with nothing else known (zeros)."""
        k = len(paths)
        values: dict[str, Any] = {
            name: np.zeros((k, *shape), dtype) for name, (dtype, shape) in FILE_ARRAYS.items()
        }
        values["live"] = np.ones(k, bool)
        if labels is not None:
            values["label"] = np.asarray(labels, np.int64)
        return cls(paths=list(paths), **values)

    @classmethod
    def concat(cls, parts: Sequence[FileTable]) -> FileTable:
        """The tables one after the other."""
        if not parts:
            return cls.blank([])
        values = {name: np.concatenate([getattr(p, name) for p in parts]) for name in FILE_ARRAYS}
        return cls(paths=[x for p in parts for x in p.paths], **values)

    def take(self, rows: Sequence[int] | np.ndarray) -> FileTable:
        """The rows ``rows``, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        values = {name: getattr(self, name)[idx] for name in FILE_ARRAYS}
        return FileTable(paths=[self.paths[int(i)] for i in idx], **values)


def create_file_arrays(group: zarr.Group, table: FileTable, compressors: Any) -> None:
    """Create ``paths`` and the ``files/`` arrays holding ``table``."""
    k = len(table)
    chunk = max(1, min(k, _CHUNK))
    paths = np.empty(k, dtype=object)
    paths[:] = table.paths
    arr = group.create_array(
        "paths",
        shape=(k,),
        dtype=str,
        chunks=(chunk,),
        compressors=compressors,
        dimension_names=("file",),
    )
    if k:
        arr[:] = paths
    sub = group.create_group("files")
    for name, (dtype, shape) in FILE_ARRAYS.items():
        a = sub.create_array(
            name,
            shape=(k, *shape),
            dtype=dtype,
            chunks=(chunk, *shape),
            compressors=compressors,
            fill_value=False if dtype == "bool" else 0,
        )
        if k:
            a[:] = getattr(table, name)


def read_files(group: zarr.Group, count: int | None = None) -> FileTable:
    """The first ``count`` rows of the file table (default: all of ``paths``)."""
    paths_array = get_array(group, "paths")
    k = paths_array.shape[0] if count is None else int(count)
    paths = [str(p) for p in read_array(paths_array, slice(0, k))]
    values = {
        name: read_array(get_array(group, f"files/{name}"), slice(0, k)) for name in FILE_ARRAYS
    }
    return FileTable(paths=paths, **values)


def append_files(group: zarr.Group, table: FileTable, *, at: int) -> None:
    """Write ``table`` as rows ``at, at + 1, ...`` of the file table, growing it as needed."""
    end = at + len(table)
    paths = np.empty(len(table), dtype=object)
    paths[:] = table.paths
    targets = [("paths", get_array(group, "paths"), paths)] + [
        (name, get_array(group, f"files/{name}"), getattr(table, name)) for name in FILE_ARRAYS
    ]
    for _, array, values in targets:
        if array.shape[0] < end:
            array.resize((end, *array.shape[1:]))
        if len(table):
            array[at:end] = values


def set_file_rows(group: zarr.Group, rows: Sequence[int], values: dict[str, Any]) -> None:
    """Set rows ``rows`` (any order, not necessarily contiguous) of the named ``files/`` arrays.

    Args:
        group: the store's root group, writable.
        rows: file-table rows.
        values: ``{array name: (len(rows), ...) values}``, names from :data:`FILE_ARRAYS`.

    Raises:
        InvalidArgumentError: an unknown array name.
    """
    unknown = sorted(set(values) - set(FILE_ARRAYS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown file-table arrays {unknown}; known: {list(FILE_ARRAYS)}"
        )
    if not len(rows):
        return
    idx = np.asarray(rows, dtype=np.int64)
    for name, value in values.items():
        dtype, shape = FILE_ARRAYS[name]
        get_array(group, f"files/{name}").oindex[idx] = np.asarray(value, dtype).reshape(
            len(idx), *shape
        )
