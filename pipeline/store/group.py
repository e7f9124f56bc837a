"""Opening an imageprep store: the group, its ``imageprep`` attribute, its arrays.

The helpers here are the public way for the rest of the library (reader,
report, run) to reach into a store: :func:`open_group`, :func:`read_attrs`,
:func:`read_layout`, :func:`get_array`, :func:`read_array`, and
:func:`format_ranges` for messages that list shard indices.

A store is named by a local path, a URL string (``s3://bucket/ds.zarr``,
``memory://...``; see :mod:`pipeline.storage`) or a
:class:`~pipeline.storage.Location` (a URL with its storage options).
:func:`store_location` turns any of them into a location; every function of
:mod:`pipeline.store` accepts all three.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import InvalidArgumentError, NotAStoreError, StoreError
from pipeline.storage import Location, resolve_location, zarr_store
from pipeline.store.layout import StoreLayout

__all__ = [
    "ATTRIBUTE",
    "CREATING",
    "FORMAT_VERSION",
    "PathLike",
    "find_array",
    "format_ranges",
    "get_array",
    "group_of",
    "now",
    "open_group",
    "open_zarr_group",
    "read_array",
    "read_attrs",
    "read_layout",
    "store_location",
    "store_ref",
]

#: Name of the group attribute that holds imageprep's metadata.
ATTRIBUTE = "imageprep"
#: Version of the store layout; a reader refuses versions it does not know.
FORMAT_VERSION = 2
#: Group attribute present only while :func:`pipeline.store.create_store` runs.
CREATING = "imageprep_creating"
PathLike = str | os.PathLike[str] | Location
"""A store: a local path, a URL string, or a :class:`~pipeline.storage.Location`."""


def store_location(path: PathLike) -> Location:
    """The location of a store given as a path, a URL string or a location.

    A plain path is a local folder (made absolute, symbolic links resolved); a
    URL is parsed by :func:`pipeline.storage.resolve_location` without
    storage options (the environment's credentials apply; pass a
    :class:`~pipeline.storage.Location` to give options).

    Raises:
        ConfigError: a URL of an unknown or unsupported scheme, or one that
            lost a slash (``s3:/bucket``).

    Example:
        >>> store_location("memory://doc/ds.zarr").url
        'memory://doc/ds.zarr'
    """
    return resolve_location(path, key="store")


def store_ref(location: Location) -> Path | Location:
    """What the library hands back for a store: a ``Path`` for a local folder, else the location.

    Example:
        >>> store_ref(store_location("/tmp/x/../ds.zarr")).as_posix()
        '/tmp/ds.zarr'
    """
    return Path(location.path) if location.is_local else location


def now() -> str:
    """The current UTC time, ISO 8601 to the second (what the store records)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_group(path: PathLike, *, mode: str = "r") -> zarr.Group:
    """Open an imageprep store's root group.

    Args:
        path: the store folder.
        mode: ``"r"`` (read-only) or ``"r+"`` (read and write).

    Raises:
        StoreError: there is no complete imageprep store at ``path``, or its
            format version is unknown.
    """
    group = open_zarr_group(path, mode=mode)
    meta = group.attrs.get(ATTRIBUTE)
    if not isinstance(meta, dict):
        if CREATING in group.attrs:
            raise StoreError(f"{path}: the store was not completely created (interrupted run)")
        raise NotAStoreError(f"{path}: not an imageprep store (no '{ATTRIBUTE}' group attribute)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format_version must be {FORMAT_VERSION}, got {version!r} "
            f"(written by another imageprep version; rerun with output.overwrite: true "
            f"to rebuild it)"
        )
    return group


def open_zarr_group(path: PathLike, *, mode: str) -> zarr.Group:
    """Open the Zarr v3 group at ``path`` without checking that imageprep made it.

    A local folder opens as zarr's ``LocalStore``, an object-store URL as
    ``FsspecStore`` (:func:`pipeline.storage.zarr_store`).

    Raises:
        NotAStoreError: no folder, or no ``zarr.json`` in it (under the prefix).
        StoreError: ``zarr.json`` is unreadable or not a Zarr v3 group.
        ConfigError: a URL that :func:`store_location` refuses.
    """
    if mode not in ("r", "r+"):
        raise InvalidArgumentError(f"mode must be 'r' or 'r+', got {mode!r}")
    location = store_location(path)
    if location.is_local:
        if not Path(location.path).is_dir():
            raise NotAStoreError(f"{path}: no such store (not a folder)")
        if not (Path(location.path) / "zarr.json").is_file():
            raise NotAStoreError(f"{path}: not a Zarr v3 store (no zarr.json)")
        store: Any = location.path
    else:
        store = zarr_store(location, read_only=mode == "r")
    try:
        return zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=False)  # type: ignore[arg-type]
    except FileNotFoundError as exc:  # an object store: no zarr.json object under the prefix
        if not location.is_local:
            raise NotAStoreError(f"{path}: no such store (no zarr.json under it)") from exc
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: zarr.json is unreadable or corrupt ({reason})") from None
    except (zarr.errors.BaseZarrError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: zarr.json is unreadable or corrupt ({reason})") from None


def group_of(store: PathLike | zarr.Group, *, mode: str = "r") -> zarr.Group:
    """``store`` itself when it is an open group, else :func:`open_group` of it."""
    if isinstance(store, zarr.Group):
        return store
    return open_group(store, mode=mode)


def read_array(array: zarr.Array, selection: Any = slice(None)) -> np.ndarray:
    """Read ``array[selection]`` as a NumPy array."""
    return np.asarray(array[selection])


def get_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``.

    Raises:
        StoreError: it is missing or is a group.
    """
    try:
        node = group[name]
    except KeyError as exc:
        raise StoreError(f"{group.store}: array '{name}' is missing") from exc
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: '{name}' must be an array, got a group")
    return node


def find_array(group: zarr.Group, name: str) -> zarr.Array | None:
    """The array ``name`` of ``group``, or ``None`` when the store has none (an optional array).

    Raises:
        StoreError: ``name`` is a group.
    """
    try:
        node = group[name]
    except KeyError:
        return None
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: '{name}' must be an array, got a group")
    return node


def read_attrs(store: PathLike | zarr.Group) -> dict[str, Any]:
    """Return the store's ``imageprep`` attribute (a copy).

    Raises:
        StoreError: not an imageprep store.
    """
    meta: dict[str, Any] = json.loads(json.dumps(group_of(store).attrs[ATTRIBUTE]))
    return meta


def read_layout(store: PathLike | zarr.Group) -> StoreLayout:
    """Return the store's layout, checked against the ``images`` array's metadata.

    Raises:
        StoreError: not an imageprep store, or the attribute and the arrays disagree.
    """
    group = group_of(store)
    try:
        layout = StoreLayout.from_json(read_attrs(group)["layout"])
    except (InvalidArgumentError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{group.store}: the layout attribute is corrupt ({exc})") from None
    images = get_array(group, "images")
    expected = (layout.n_samples, *layout.sample_shape)
    if images.shape[1:] == expected[1:] and str(images.dtype) == layout.dtype:
        if images.shape[0] != layout.n_samples:
            raise StoreError(
                f"{group.store}: images has {images.shape[0]} rows, its layout says "
                f"{layout.n_samples}: an update was interrupted while it laid out its rows; "
                "rerun it (the run repairs the store)"
            )
    elif images.shape != expected or str(images.dtype) != layout.dtype:
        raise StoreError(
            f"{group.store}: images must have shape {expected} and dtype {layout.dtype} as its "
            f"layout says, got {images.shape} {images.dtype}"
        )
    shards = images.shards
    done = get_array(group, "records/done")
    if (shards is not None and shards[0] != layout.shard_size) or done.shape != (layout.n_shards,):
        raise StoreError(
            f"{group.store}: the layout attribute says {layout.n_shards} shards of "
            f"{layout.shard_size} rows, the arrays have {done.shape[0]} shard records and "
            f"shards of {shards[0] if shards else '?'} rows (edited or corrupt)"
        )
    return layout


def format_ranges(indices: Sequence[int], limit: int = 10) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (at most ``limit`` parts)."""
    parts: list[str] = []
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    if len(parts) > limit:
        return ", ".join(parts[:limit]) + f", ... ({len(parts) - limit} more)"
    return ", ".join(parts)
