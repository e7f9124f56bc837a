"""The store's manifest: checksums of everything outside the shards that a reader trusts.

Each shard's record covers its images, labels, source and copy indices
(:func:`pipeline.store.writer.shard_digest`). What gives those rows their
meaning lives elsewhere: the ``paths`` of the source files, the file table,
the row plan (which file and copy each row holds: a repair rewrites from it),
the ``live`` mask, the class names, the statistics the samples are normalized
with (and ``denormalize`` undoes), the recorded config and the layout. The
manifest is one SHA-256 per such part, written into the group attribute
(``manifest``) when a run or a compaction finishes, and recomputed by
:func:`pipeline.store.verify`, which names the part that no longer matches
(a reversed ``paths`` array, an edited mean, a flipped ``live`` flag).

Digests are over canonical bytes: arrays in C order, little-endian, in their
stored dtype; ``paths`` as UTF-8 (with ``surrogateescape``) joined by NUL;
attribute parts as JSON with sorted keys and no spaces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from pipeline.store.files import FILE_ARRAYS
from pipeline.store.group import get_array, read_array

__all__ = ["MANIFEST_PARTS", "manifest_digests", "manifest_problems"]

#: The parts the manifest covers: attribute keys, or arrays (``paths``, ``files/``, ``live``).
MANIFEST_PARTS: dict[str, tuple[str, ...]] = {
    "paths": ("paths",),
    "files": tuple(f"files/{name}" for name in FILE_ARRAYS),
    "rows": ("labels", "source_index", "copy_index"),
    "live": ("live",),
    "classes": ("classes",),
    "stats": ("stats", "current_stats"),
    "config": ("config", "config_identity", "seed"),
    "layout": ("layout", "format_version", "files"),
}


_ROW_ARRAYS = ("live", "labels", "source_index", "copy_index")


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _array_bytes(array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


def manifest_digests(group: zarr.Group, meta: Mapping[str, Any]) -> dict[str, str]:
    """The hex SHA-256 of each part of :data:`MANIFEST_PARTS` (``meta``: the group attribute)."""
    count = int(meta.get("files", 0))
    out: dict[str, str] = {}
    for part, names in MANIFEST_PARTS.items():
        h = hashlib.sha256()
        for name in names:
            h.update(name.encode() + b"\0")
            if name == "paths":
                paths = read_array(get_array(group, "paths"), slice(0, count))
                h.update(b"\0".join(str(p).encode("utf-8", "surrogateescape") for p in paths))
            elif name.startswith("files/") or name in (
                "live",
                "labels",
                "source_index",
                "copy_index",
            ):
                rows = slice(0, count) if name.startswith("files/") else slice(None)
                h.update(_array_bytes(read_array(get_array(group, name), rows)))
            else:
                h.update(_json(meta.get(name)))
        out[part] = h.hexdigest()
    return out


def manifest_problems(group: zarr.Group, meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The parts whose stored values no longer match the manifest (empty: all match, or none).

    A store without a manifest (never finished) has nothing to compare.
    """
    recorded = meta.get("manifest")
    if not isinstance(recorded, dict):
        return ()
    try:
        now = manifest_digests(group, meta)
    except Exception as exc:  # an array that cannot be read is itself the finding
        return (f"cannot read the manifest's arrays: {type(exc).__name__}: {exc}",)
    problems = []
    for part, names in MANIFEST_PARTS.items():
        if recorded.get(part) != now[part]:
            what = ", ".join(names) if part not in ("files", "paths", "live") else part
            what = "the row plan (labels, source_index, copy_index)" if part == "rows" else what
            problems.append(
                f"{part}: {what} do not match the manifest checksum (edited or corrupted since "
                "the run finished)"
            )
    return tuple(problems)
