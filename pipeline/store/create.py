"""Creating a store, resuming it, and deleting only what imageprep made.

Layout (a Zarr v3 group on the local filesystem; ``N`` samples, ``S`` rows per
shard, ``M`` accepted source files)::

    images          (N, C, H, W)  float16 | float32 | uint8, chunk (1, C, H, W), shard (S, C, H, W)
    labels          (N,)          int64, chunk (S,)   -1 where the source has no classes
    source_index    (N,)          int64, chunk (S,)   row of ``paths`` each sample came from
    copy_index      (N,)          int32, chunk (S,)   which augmented copy of its source it is
    paths           (M,)          variable-length UTF-8, sorted, relative to the source root
    records/rows    (n_shards,)   int64, chunk (1,)   rows written by shard i
    records/sha256  (n_shards, 32) uint8, chunk (1, 32)  SHA-256 of shard i (see shard_digest)
    records/done    (n_shards,)   bool, chunk (1,)    True once shard i is completely written
    attribute ``imageprep``: format version, layout, and what the caller records
                             (resolved config, config identity, stats JSON,
                             classes, seed, package versions, source
                             fingerprint, failures, and what finalize() adds).

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
from pipeline.store.group import ATTRIBUTE, CREATING, FORMAT_VERSION, PathLike, now, open_zarr_group
from pipeline.store.layout import StoreLayout
from pipeline.store.writer import done_shards

__all__ = ["StoreState", "create_store", "differences", "flatten", "open_or_create"]


@dataclass(frozen=True)
class StoreState:
    """What :func:`open_or_create` found or made.

    Attributes:
        path: the store.
        layout: its layout.
        resumed: True when an existing store of the same identity was reused.
        done: indices of the shards already written.
    """

    path: Path
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
    paths: Sequence[str],
    overwrite: bool = False,
) -> None:
    """Create an empty store: every array, the source manifest and the group attribute.

    The group attribute is written last, so an interrupted creation is
    recognisable (and :func:`open_or_create` simply redoes it).

    Args:
        path: the store folder (must not exist, or be empty, unless ``overwrite``).
        layout: shape, dtype, sharding, compression.
        attrs: the ``imageprep`` attribute (see :func:`store_attrs`), JSON-safe;
            ``format_version``, ``layout`` and ``created`` are added.
        paths: the manifest, every accepted source file relative to the source
            root, in sorted order.
        overwrite: delete an existing imageprep store at ``path`` first.

    Raises:
        StoreError: ``path`` holds something else, or a store and not ``overwrite``.
        InvalidArgumentError: ``attrs`` is not JSON-safe or uses reserved keys.
    """
    path = Path(path)
    _check_attrs(attrs)
    manifest = np.empty(len(paths), dtype=object)
    manifest[:] = list(paths)
    bad = next((p for p in manifest if not isinstance(p, str)), None)
    if bad is not None or isinstance(paths, str):
        raise InvalidArgumentError(f"paths must be a sequence of strings, got an item {bad!r}")
    if _occupied(path):
        if not overwrite:
            raise StoreError(f"{path}: a store already exists (pass overwrite=True to replace it)")
        _delete_store(path)
    group = zarr.create_group(
        str(path), zarr_format=3, overwrite=True, attributes={CREATING: {"pid": os.getpid()}}
    )
    n, rows = layout.n_samples, layout.shard_size
    compressors = layout.compression.compressors()
    group.create_array(
        "images",
        shape=(n, *layout.sample_shape),
        dtype=layout.dtype,
        chunks=(1, *layout.sample_shape),
        shards=(rows, *layout.sample_shape),
        compressors=compressors,
        fill_value=0,
        dimension_names=("sample", "channel", "y", "x"),
    )
    for name, dtype in (("labels", "int64"), ("source_index", "int64"), ("copy_index", "int32")):
        group.create_array(
            name,
            shape=(n,),
            dtype=dtype,
            chunks=(rows,),
            compressors=compressors,
            fill_value=-1 if name == "labels" else 0,
            dimension_names=("sample",),
        )
    arr = group.create_array(
        "paths",
        shape=(len(manifest),),
        dtype=str,
        chunks=(max(1, min(len(manifest), 65536)),),
        compressors=compressors,
        dimension_names=("file",),
    )
    if len(manifest):
        arr[:] = manifest
    records = group.create_group("records")
    n_shards = layout.n_shards
    records.create_array("rows", shape=(n_shards,), dtype="int64", chunks=(1,), fill_value=0)
    records.create_array(
        "sha256", shape=(n_shards, 32), dtype="uint8", chunks=(1, 32), fill_value=0
    )
    records.create_array("done", shape=(n_shards,), dtype="bool", chunks=(1,), fill_value=False)
    meta = {
        **json.loads(json.dumps(dict(attrs))),
        "format_version": FORMAT_VERSION,
        "layout": layout.to_json(),
        "created": now(),
    }
    group.attrs.put({ATTRIBUTE: meta})


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    if not isinstance(attrs, Mapping):
        raise InvalidArgumentError(f"attrs must be a mapping, got {type(attrs).__name__}")
    reserved = {"format_version", "layout", "created"} & set(attrs)
    if reserved:
        raise InvalidArgumentError(
            f"attrs must not set {', '.join(sorted(reserved))} (the store sets them)"
        )
    try:
        json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs must be JSON-safe, got {exc}") from exc


def _occupied(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a folder")
    return any(path.iterdir())


def _delete_store(path: Path) -> None:
    """Delete a store, refusing anything that is not one (overwrite must never eat a home)."""
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: is not a Zarr store; refusing to delete it")
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable zarr.json; refusing to delete it ({exc})") from exc
    attributes = meta.get("attributes") or {}
    if ATTRIBUTE not in attributes and CREATING not in attributes:
        raise StoreError(
            f"{path}: is a Zarr store but not an imageprep store; refusing to delete it"
        )
    shutil.rmtree(path)


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
        path: the store folder.
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
    path = Path(path)
    for key in ("config_identity", "source_fingerprint"):
        if not isinstance(attrs.get(key), str):
            raise InvalidArgumentError(
                f"attrs must contain '{key}' (a string), got {attrs.get(key)!r}"
            )
    if not _occupied(path):
        create_store(path, layout, attrs=attrs, paths=paths)
        return StoreState(path, layout, resumed=False, done=frozenset())
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"{path}: is not a Zarr store but a folder with other files; refusing to use or "
            "delete it (choose another output.path)"
        )
    group = open_zarr_group(path, mode="r")
    existing = group.attrs.get(ATTRIBUTE)
    if not isinstance(existing, dict):
        if CREATING in group.attrs:  # an interrupted create_store: nothing of value in it
            create_store(path, layout, attrs=attrs, paths=paths, overwrite=True)
            return StoreState(path, layout, resumed=False, done=frozenset())
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
        create_store(path, layout, attrs=attrs, paths=paths, overwrite=True)
        return StoreState(path, layout, resumed=False, done=frozenset())
    return StoreState(path, layout, resumed=True, done=frozenset(done_shards(group)))
