"""Creating a store, growing it, resuming it, and deleting only what imageprep made.

Layout (a Zarr v3 group in a local folder or under an object-store prefix;
``N`` sample rows, ``S`` rows per shard, ``M`` source files)::

    images          (N, C, H, W)  float16 | float32 | uint8, chunk (1, C, H, W), shard (S, C, H, W)
    labels          (N,)          int64, chunk (S,)   -1 where the source has no classes
    source_index    (N,)          int64, chunk (S,)   row of ``paths`` each sample came from
    copy_index      (N,)          int32, chunk (S,)   which augmented copy of its source it is
    live            (N,)          bool, chunk (S,)    False for retired rows and holes
    paths           (M,)          variable-length UTF-8, relative to the source root
    files/...       (M, ...)      the file table (pipeline.store.files): size, mtime,
                                  sha256, label, live, exact moments
    records/rows    (n_shards,)   int64, chunk (1,)   rows written by shard i
    records/sha256  (n_shards, 32) uint8, chunk (1, 32)  SHA-256 of shard i (see shard_digest)
    records/done    (n_shards,)   bool, chunk (1,)    True once shard i is completely written
    records/crc32c  (n_shards, 2) int64, chunk (1, 2)  CRC32C of shard i's images object and
                                  of its rows (see ShardRecord.crc32c); -1: not recorded
                                  (absent from stores made before imageprep recorded it)
    attribute ``imageprep``: format version, layout (with its segments), ``files``
                             (rows of the file table in use), and what the
                             caller records (resolved config, config identity,
                             stats JSON, classes, seed, package versions,
                             source fingerprint, failures, and what
                             finalize() adds).

The coordinator writes ``labels``, ``source_index`` and ``copy_index`` of the
rows it plans (:func:`create_store`, :func:`grow_store`), so the plan of every
shard not yet written is in the store and a resumed run reads it back; each
shard task then writes its rows again with the images, and its record.

One shard task writes exactly one ``images`` shard, one chunk of each 1-D
array and one element (its own chunk) of each ``records/`` array: no two
writers ever touch the same object, and no task rewrites a shared document
(the group attribute is written only by :func:`create_store` and
:func:`pipeline.store.finalize`, in the coordinating process).

Resume (:func:`open_or_create`): an existing store with the same config
identity, source fingerprint and layout is reused and only its missing shards
need writing; anything else is a :class:`~pipeline.errors.StoreMismatchError`
naming what differs, unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import InvalidArgumentError, StoreError, StoreMismatchError
from pipeline.storage import Location, zarr_store
from pipeline.store.files import FileTable, append_files, create_file_arrays
from pipeline.store.group import (
    ATTRIBUTE,
    CREATING,
    FORMAT_VERSION,
    PathLike,
    find_array,
    get_array,
    now,
    open_zarr_group,
    read_attrs,
    store_location,
    store_ref,
)
from pipeline.store.layout import StoreLayout
from pipeline.store.writer import done_shards

__all__ = [
    "STORE_ENTRIES",
    "SampleRows",
    "StoreState",
    "create_store",
    "differences",
    "flatten",
    "foreign_entries",
    "grow_store",
    "open_or_create",
    "read_metadata",
    "remove_partials",
    "reset_rows",
    "restore_layout",
]


_ROW_ARRAYS = (("labels", "int64"), ("source_index", "int64"), ("copy_index", "int32"))
_ROW_FILL = {"labels": -1, "source_index": 0, "copy_index": 0}


@dataclass(frozen=True)
class SampleRows:
    """The plan of consecutive sample rows: each row's label, source file row and copy.

    Example:
        >>> SampleRows.of_files([5, 7], [0, 2], copies=2).source_index.tolist()
        [5, 5, 7, 7]
    """

    labels: np.ndarray
    source_index: np.ndarray
    copy_index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def of_files(
        cls,
        file_rows: Sequence[int] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        copies: int,
    ) -> SampleRows:
        """``copies`` rows per file: row ``j * copies + k`` is copy ``k`` of file ``j``."""
        src = np.repeat(np.asarray(file_rows, np.int64), copies)
        lab = np.repeat(np.asarray(labels, np.int64), copies)
        cpy = np.tile(np.arange(copies, dtype=np.int32), len(file_rows))
        return cls(labels=lab, source_index=src, copy_index=cpy)

    def write(self, group: zarr.Group, start: int) -> None:
        """Write the plan as rows ``start, start + 1, ...`` of the row arrays."""
        end = start + len(self)
        for name, _ in _ROW_ARRAYS:
            get_array(group, name)[start:end] = getattr(self, name)


def grow_store(
    group: zarr.Group,
    layout: StoreLayout,
    *,
    files: FileTable,
    rows: SampleRows,
    attrs_update: Mapping[str, Any],
) -> StoreLayout:
    """Append a segment: the new files to the file table, ``rows`` as new shards.

    The shards already written are not touched. The order makes an
    interruption harmless: the file rows and the sample rows are written
    first, past what the group attribute counts; the attribute (the new
    layout, the file count and ``attrs_update``) is written last, so a store
    interrupted before it is the store before the call with longer arrays,
    which :func:`restore_layout` (called by the next run) cuts back.

    Args:
        group: the store, open for writing.
        layout: its current layout.
        files: the file table rows to append (may be empty).
        rows: the plan of the new sample rows (at least one).
        attrs_update: keys of the ``imageprep`` attribute to set with it.

    Returns:
        The new layout.
    """
    meta = read_attrs(group)
    count = int(meta["files"])
    append_files(group, files, at=count)
    grown = layout.extended(len(rows))
    for name, _ in (("images", ""), *_ROW_ARRAYS, ("live", "")):
        array = get_array(group, name)
        array.resize((grown.n_samples, *array.shape[1:]))
    for array in _record_arrays(group):
        array.resize((grown.n_shards, *array.shape[1:]))
    rows.write(group, grown.segments[-1][0])
    update = json.loads(json.dumps(dict(attrs_update)))
    group.attrs[ATTRIBUTE] = {
        **meta,
        **update,
        "layout": grown.to_json(),
        "files": count + len(files),
    }
    return grown


def reset_rows(
    group: zarr.Group,
    layout: StoreLayout,
    *,
    rows: SampleRows,
    attrs_update: Mapping[str, Any],
) -> None:
    """Replace every sample row with the plan ``rows`` (one segment): all shards to write again.

    Used to renormalize every live row (``stats.update: refresh``). The file
    table is kept. The order keeps an interruption safe: every shard is first
    marked not done and every row not live, then the arrays take the new
    shape and plan, and the group attribute (the new layout and
    ``attrs_update``) is written last; a rerun plans the same rows again.
    """
    meta = read_attrs(group)
    done = get_array(group, "records/done")
    done[:] = False
    live = get_array(group, "live")
    live[:] = False
    for name, _ in (("images", ""), *_ROW_ARRAYS, ("live", "")):
        array = get_array(group, name)
        array.resize((layout.n_samples, *array.shape[1:]))
    for array in _record_arrays(group):
        array.resize((layout.n_shards, *array.shape[1:]))
        array[:] = array.fill_value
    if len(rows):
        rows.write(group, 0)
    update = json.loads(json.dumps(dict(attrs_update)))
    group.attrs[ATTRIBUTE] = {**meta, **update, "layout": layout.to_json(), "verified": 0}


_RECORDS = ("rows", "sha256", "done")
"""The ``records/`` arrays of every store; ``crc32c`` is optional (older stores lack it)."""


def _record_arrays(group: zarr.Group) -> list[zarr.Array]:
    """The store's ``records/`` arrays (``crc32c`` when it has one)."""
    arrays = [get_array(group, f"records/{name}") for name in _RECORDS]
    crc = find_array(group, "records/crc32c")
    return arrays if crc is None else [*arrays, crc]


def restore_layout(group: zarr.Group) -> bool:
    """Give the sample and record arrays the length the group attribute's layout says.

    :func:`grow_store` and :func:`reset_rows` resize the arrays before they write
    the attribute that holds the new layout; a run killed in between leaves
    arrays longer (or shorter) than the layout, and the store unreadable
    (:func:`pipeline.store.read_layout` refuses it). The rows past the layout
    were never part of the store: they are dropped, and the rerun lays them out
    again. Call only while holding the store's lock.

    Returns:
        True when an array was resized.
    """
    layout = StoreLayout.from_json(read_attrs(group)["layout"])
    lengths = {name: layout.n_samples for name in ("images", *dict(_ROW_ARRAYS), "live")}
    arrays = [(get_array(group, name), length) for name, length in lengths.items()]
    arrays += [(array, layout.n_shards) for array in _record_arrays(group)]
    changed = False
    for array, length in arrays:
        if array.shape[0] != length:
            array.resize((length, *array.shape[1:]))
            changed = True
    return changed


@dataclass(frozen=True)
class StoreState:
    """What :func:`open_or_create` found or made.

    Attributes:
        path: the store (a ``Path`` for a local folder, else its
            :class:`~pipeline.storage.Location`).
        layout: its layout.
        resumed: True when an existing store of the same identity was reused.
        done: indices of the shards already written.
    """

    path: Path | Location
    layout: StoreLayout
    resumed: bool
    done: frozenset[int]

    @property
    def todo(self) -> list[int]:
        """Indices of the shards still to write, in order."""
        return [i for i in range(self.layout.n_shards) if i not in self.done]


def create_store(
    path: PathLike,
    layout: StoreLayout,
    *,
    attrs: Mapping[str, Any],
    paths: Sequence[str] | None = None,
    files: FileTable | None = None,
    rows: SampleRows | None = None,
    overwrite: bool = False,
) -> None:
    """Create an empty store: every array, the file table, the row plan, the group attribute.

    The group attribute is written last, so an interrupted creation is
    recognisable (and :func:`open_or_create` simply redoes it).

    Args:
        path: the store folder or URL (must not exist, or be empty, unless ``overwrite``).
        layout: shape, dtype, sharding, compression.
        attrs: the ``imageprep`` attribute (see :func:`pipeline.run.store_attrs`),
            JSON-safe; ``format_version``, ``layout``, ``files`` and ``created``
            are added.
        paths: the source files relative to the source root, when ``files``
            is not given (a table with nothing but the paths).
        files: the file table.
        rows: the plan of the sample rows (labels, source and copy of each);
            default: none written yet (labels -1, sources 0).
        overwrite: delete an existing imageprep store at ``path`` first.

    Raises:
        StoreError: ``path`` holds something else, or a store and not ``overwrite``.
        InvalidArgumentError: ``attrs`` is not JSON-safe or uses reserved keys,
            ``paths`` is not a sequence of strings, ``rows`` does not fit the layout.
    """
    location = store_location(path)
    _check_attrs(attrs)
    if files is None:
        if paths is None or isinstance(paths, str):
            raise InvalidArgumentError(f"paths must be a sequence of strings, got {paths!r}")
        bad = next((p for p in paths if not isinstance(p, str)), None)
        if bad is not None:
            raise InvalidArgumentError(f"paths must be a sequence of strings, got an item {bad!r}")
        files = FileTable.blank(list(paths))
    if rows is not None and len(rows) != layout.n_samples:
        raise InvalidArgumentError(
            f"rows must plan the layout's {layout.n_samples} rows, got {len(rows)}"
        )
    if _occupied(location):
        if not overwrite:
            raise StoreError(f"{path}: a store already exists (pass overwrite=True to replace it)")
        _delete_store(location)
    target: Any = location.path if location.is_local else zarr_store(location, read_only=False)
    group = zarr.create_group(
        target, zarr_format=3, overwrite=True, attributes={CREATING: {"pid": os.getpid()}}
    )
    n, rows_per_shard = layout.n_samples, layout.shard_size
    compressors = layout.compression.compressors()
    group.create_array(
        "images",
        shape=(n, *layout.sample_shape),
        dtype=layout.dtype,
        chunks=(1, *layout.sample_shape),
        shards=(rows_per_shard, *layout.sample_shape),
        compressors=compressors,
        fill_value=0,
        dimension_names=("sample", "channel", "y", "x"),
    )
    for name, dtype in _ROW_ARRAYS:
        group.create_array(
            name,
            shape=(n,),
            dtype=dtype,
            chunks=(rows_per_shard,),
            compressors=compressors,
            fill_value=_ROW_FILL[name],
            dimension_names=("sample",),
        )
    group.create_array(
        "live",
        shape=(n,),
        dtype="bool",
        chunks=(rows_per_shard,),
        compressors=compressors,
        fill_value=False,
        dimension_names=("sample",),
    )
    if rows is not None and n:
        rows.write(group, 0)
    create_file_arrays(group, files, compressors)
    records = group.create_group("records")
    n_shards = layout.n_shards
    records.create_array("rows", shape=(n_shards,), dtype="int64", chunks=(1,), fill_value=0)
    records.create_array(
        "sha256", shape=(n_shards, 32), dtype="uint8", chunks=(1, 32), fill_value=0
    )
    records.create_array("done", shape=(n_shards,), dtype="bool", chunks=(1,), fill_value=False)
    records.create_array("crc32c", shape=(n_shards, 2), dtype="int64", chunks=(1, 2), fill_value=-1)
    meta = {
        **json.loads(json.dumps(dict(attrs))),
        "format_version": FORMAT_VERSION,
        "layout": layout.to_json(),
        "files": len(files),
        "created": now(),
    }
    group.attrs.put({ATTRIBUTE: meta})


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    if not isinstance(attrs, Mapping):
        raise InvalidArgumentError(f"attrs must be a mapping, got {type(attrs).__name__}")
    reserved = {"format_version", "layout", "files", "created"} & set(attrs)
    if reserved:
        raise InvalidArgumentError(
            f"attrs must not set {', '.join(sorted(reserved))} (the store sets them)"
        )
    try:
        json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs must be JSON-safe, got {exc}") from exc


def _occupied(location: Location) -> bool:
    """True when the folder (or object prefix) holds anything."""
    if location.is_local:
        path = Path(location.path)
        if not path.exists():
            return False
        if not path.is_dir():
            raise StoreError(f"{location}: exists and is not a folder")
        return any(path.iterdir())
    fs = location.fs
    fs.invalidate_cache(location.path)
    if fs.isfile(location.path):
        raise StoreError(f"{location}: exists and is an object, not a folder")
    try:
        return bool(fs.ls(location.path, detail=False))  # one LIST with a delimiter
    except FileNotFoundError:
        return False


STORE_ENTRIES = frozenset(
    {"zarr.json", "images", "labels", "source_index", "copy_index", "live", "paths", "files"}
    | {"records"}
)
"""The top-level entries of a store folder; ``overwrite`` deletes these and nothing else."""


def _entries(location: Location) -> list[tuple[str, bool]]:
    """``(name, is a folder)`` of the top-level entries of a folder or object prefix."""
    if location.is_local:
        return [(e.name, e.is_dir()) for e in Path(location.path).iterdir()]
    fs = location.fs
    fs.invalidate_cache(location.path)
    try:
        found = fs.ls(location.path, detail=True)
    except FileNotFoundError:
        return []
    return [
        (str(info["name"]).rstrip("/").rsplit("/", 1)[-1], info.get("type") == "directory")
        for info in found
    ]


def foreign_entries(path: PathLike) -> list[str]:
    """Top-level entries of the store folder (or prefix) ``path`` that a store does not have.

    Folders (common prefixes) end in ``/``.
    """
    return sorted(
        name + ("/" if folder else "")
        for name, folder in _entries(store_location(path))
        if name not in STORE_ENTRIES
    )


def read_metadata(location: Location) -> bytes | None:
    """The bytes of the store's root ``zarr.json``; None when there is none.

    Raises:
        OSError: it exists but cannot be read.
    """
    meta = location.joinpath("zarr.json")
    if location.is_local:
        try:
            return Path(meta.path).read_bytes() if Path(meta.path).is_file() else None
        except IsADirectoryError:
            return None
    try:
        return bytes(location.fs.cat_file(meta.path))
    except FileNotFoundError:
        return None


def _delete_store(location: Location) -> None:
    """Delete a store's own entries, refusing anything that is not one or holds foreign files.

    ``overwrite`` must never eat a home folder (or a bucket), nor the notes a
    user put beside the arrays: only :data:`STORE_ENTRIES` are removed, and
    only when nothing else is there; on an object store, every object under
    those prefixes.
    """
    from pipeline.errors import OutputPathError

    try:
        raw = read_metadata(location)
        meta = json.loads(raw) if raw is not None else None
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{location}: unreadable zarr.json; refusing to delete it ({exc})"
        ) from exc
    if meta is None:
        raise OutputPathError(f"{location}: is not a Zarr store; refusing to delete it")
    attributes = meta.get("attributes") or {}
    if ATTRIBUTE not in attributes and CREATING not in attributes:
        raise OutputPathError(
            f"{location}: is a Zarr store but not an imageprep store; refusing to delete it"
        )
    foreign = foreign_entries(location)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputPathError(
            f"{location}: holds files imageprep did not make ({shown}); overwrite deletes only a "
            "store's own files: move them out of the store folder, or choose another output.path"
        )
    if not location.is_local:
        fs = location.fs
        names = sorted(name for name, _ in _entries(location))
        # the root zarr.json last: a store interrupted here still says what it is
        for name in [n for n in names if n != "zarr.json"] + ["zarr.json"]:
            fs.rm(location.joinpath(name).path, recursive=True)
        fs.invalidate_cache(location.path)
        return
    path = Path(location.path)
    for entry in sorted(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_partials(path: PathLike) -> int:
    """Delete the ``*.partial`` files a killed writer left in a local store; return how many.

    Zarr writes each chunk to ``<name>.<uuid>.partial`` and renames it into
    place, so a kill between the two leaves the temporary file. Call only while
    holding the store's lock (no writer is running). An object store has none
    (a PUT replaces an object whole or not at all): 0.
    """
    location = store_location(path)
    if not location.is_local:
        return 0
    root = Path(location.path)
    if not root.is_dir():
        return 0
    removed = 0
    for stray in root.rglob("*.partial"):
        if stray.is_file():
            stray.unlink(missing_ok=True)
            removed += 1
    return removed


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}`` (lists are values)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: before -> after`` for every flattened key whose value differs."""
    a, b = flatten(dict(old)), flatten(dict(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            before, after = json.dumps(a.get(key, "(absent)")), json.dumps(b.get(key, "(absent)"))
            lines.append(f"{key}: {before} -> {after}")
    return lines


def open_or_create(
    path: PathLike,
    layout: StoreLayout,
    *,
    attrs: Mapping[str, Any],
    paths: Sequence[str],
    overwrite: bool = False,
    explain: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> StoreState:
    """Open the store for a run, resuming it when it was made by the same run.

    An existing store is reused when its ``config_identity``,
    ``source_fingerprint`` and layout equal those given; its done shards are
    kept. A store left half-created by an interrupted run is re-created. A
    store of another identity, source or layout is an error naming what
    differs, unless ``overwrite`` (then it is deleted and re-created). Call it
    while holding :class:`StoreLock`.

    Args:
        path: the store folder or URL.
        layout: the layout this run writes.
        attrs: the ``imageprep`` attribute; must contain ``config_identity``
            and ``source_fingerprint``.
        paths: the source manifest (written only when creating).
        overwrite: replace a mismatching store.
        explain: given the existing store's attribute, the lines that say how
            its config differs from this run's (shown when the identities
            differ; the caller knows which keys make the identity).

    Returns:
        The :class:`StoreState`: ``resumed`` and the shards already done.

    Raises:
        StoreMismatchError: the existing store was made by another config,
            source or layout, and not ``overwrite``.
        StoreError: ``path`` holds something that is not an imageprep store.
    """
    location = store_location(path)
    ref = store_ref(location)
    for key in ("config_identity", "source_fingerprint"):
        if not isinstance(attrs.get(key), str):
            raise InvalidArgumentError(
                f"attrs must contain '{key}' (a string), got {attrs.get(key)!r}"
            )
    if not _occupied(location):
        create_store(location, layout, attrs=attrs, paths=paths)
        return StoreState(ref, layout, resumed=False, done=frozenset())
    if read_metadata(location) is None:
        raise StoreError(
            f"{path}: is not a Zarr store but a folder with other files; refusing to use or "
            "delete it (choose another output.path)"
        )
    group = open_zarr_group(location, mode="r")
    existing = group.attrs.get(ATTRIBUTE)
    if not isinstance(existing, dict):
        if CREATING in group.attrs:  # an interrupted create_store: nothing of value in it
            create_store(location, layout, attrs=attrs, paths=paths, overwrite=True)
            return StoreState(ref, layout, resumed=False, done=frozenset())
        raise StoreError(f"{path}: is a Zarr store but not an imageprep store; refusing to use it")
    problems = []
    if existing.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version: {existing.get('format_version')!r} -> {FORMAT_VERSION}")
    if existing.get("config_identity") != attrs["config_identity"]:
        changed = explain(existing) if explain is not None else []
        detail = f" ({'; '.join(changed)})" if changed else ""
        problems.append(
            f"config identity: {str(existing.get('config_identity'))[:12]} -> "
            f"{attrs['config_identity'][:12]}{detail}"
        )
    if existing.get("source_fingerprint") != attrs["source_fingerprint"]:
        problems.append(
            f"source fingerprint: {str(existing.get('source_fingerprint'))[:16]} -> "
            f"{attrs['source_fingerprint'][:16]} (the source files changed)"
        )
    if existing.get("layout") != layout.to_json():
        changed = differences(existing.get("layout", {}), layout.to_json())
        problems.append(f"layout: {'; '.join(changed)}")
    if problems:
        if not overwrite:
            raise StoreMismatchError(
                f"{path}: the existing store was made by another run: {' | '.join(problems)}. "
                "Set output.overwrite: true (--set output.overwrite=true) to replace it, "
                "or choose another output.path"
            )
        create_store(location, layout, attrs=attrs, paths=paths, overwrite=True)
        return StoreState(ref, layout, resumed=False, done=frozenset())
    return StoreState(ref, layout, resumed=True, done=frozenset(done_shards(group)))
