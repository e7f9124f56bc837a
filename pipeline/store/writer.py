"""Writing shards: one task writes one whole shard, its checksummed record, ``done`` last.

A shard is written in this order: its ``done`` flag and its rows' ``live``
flags are cleared, the data is written, then ``rows`` and ``sha256``, then
``done``, then ``live``; a shard counts as written only once ``done`` is True,
and its rows are served only after that, so a process killed anywhere in
between leaves the shard "not done" (nothing of it served) and a resumed run
writes it again. Zarr's local
store writes every object to a temporary file and renames it, so no object is
ever half-written. Records are one-element chunks, so concurrent shard tasks
never rewrite a shared document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.store.group import (
    ATTRIBUTE,
    PathLike,
    find_array,
    format_ranges,
    get_array,
    group_of,
    now,
    read_array,
    read_attrs,
    read_layout,
)
from pipeline.store.layout import StoreLayout
from pipeline.store.shardio import (
    ShardFormat,
    crc32c,
    shard_format,
    write_images,
    write_shard_parts,
)

__all__ = [
    "FROZEN_KEYS",
    "EncodedImages",
    "write_live",
    "ShardRecord",
    "done_shards",
    "finalize",
    "read_records",
    "rows_crc32c",
    "shard_digest",
    "unmark_shards",
    "write_shard",
]

#: Keys of the ``imageprep`` attribute that finalize() may not change.
FROZEN_KEYS = frozenset(
    {"format_version", "layout", "config", "config_identity", "files", "manifest"}
)


@dataclass(frozen=True)
class ShardRecord:
    """The record of one shard.

    Attributes:
        index: shard index.
        rows: rows written (0 when never written).
        sha256: hex digest of :func:`shard_digest` ("" when never written).
        done: True once the shard is completely written.
        crc32c: ``(images, rows)``: the CRC32C of the shard's ``images``
            object as written, and :func:`rows_crc32c` of its rows; ``None``
            when not recorded (a store made before imageprep recorded them,
            or an ``images`` array zarr writes itself). A fast check of the
            stored bytes; the SHA-256 stays the authority (a mismatch is
            settled by it).
    """

    index: int
    rows: int
    sha256: str
    done: bool
    crc32c: tuple[int, int] | None = None

    def bytes_match(
        self,
        object_crc: int,
        labels: np.ndarray,
        source_index: np.ndarray,
        copy_index: np.ndarray,
    ) -> bool:
        """Whether the bytes read are those the record's CRC32C were taken of.

        ``object_crc``: the :func:`~pipeline.store.shardio.crc32c` of the
        ``images`` object as read; the row arrays as read. False when no
        CRC32C is recorded: the SHA-256 then decides.
        """
        return (
            self.crc32c is not None
            and object_crc == self.crc32c[0]
            and rows_crc32c(labels, source_index, copy_index) == self.crc32c[1]
        )


def shard_digest(
    images: np.ndarray, labels: np.ndarray, source_index: np.ndarray, copy_index: np.ndarray
) -> str:
    """Return the hex SHA-256 of one shard's decoded values.

    Canonical byte order: the bytes of ``images`` (C order, little-endian, in
    the store's dtype), then ``labels`` (int64 LE), ``source_index`` (int64
    LE) and ``copy_index`` (int32 LE). The arrays are hashed exactly as they
    are stored, so the digest can be recomputed from a read-back with any Zarr
    implementation.

    Example:
        >>> z = np.zeros(1, np.int64)
        >>> digest = shard_digest(np.zeros((1, 1, 1, 1), np.uint8), z, z, z.astype(np.int32))
        >>> digest == hashlib.sha256(bytes(1 + 8 + 8 + 4)).hexdigest()  # 1 uint8, 2 int64, 1 int32
        True
    """
    h = hashlib.sha256()
    # memoryviews of contiguous arrays: hashed in place, no copy of the shard
    h.update(np.ascontiguousarray(images, dtype=images.dtype.newbyteorder("<")).data)
    return _rows_digest(h, labels, source_index, copy_index)


def _rows_digest(
    h: Any, labels: np.ndarray, source_index: np.ndarray, copy_index: np.ndarray
) -> str:
    """:func:`shard_digest` from ``h``, a SHA-256 that has hashed the images."""
    h.update(np.ascontiguousarray(labels, dtype="<i8").data)
    h.update(np.ascontiguousarray(source_index, dtype="<i8").data)
    h.update(np.ascontiguousarray(copy_index, dtype="<i4").data)
    return h.hexdigest()


def rows_crc32c(labels: np.ndarray, source_index: np.ndarray, copy_index: np.ndarray) -> int:
    """The CRC32C of one shard's row arrays, in :func:`shard_digest`'s byte order.

    ``labels`` (int64 LE), then ``source_index`` (int64 LE) and
    ``copy_index`` (int32 LE): with the ``images`` object's CRC32C, the
    record's fast check of every stored byte a shard's digest covers.
    """
    crc = crc32c(np.ascontiguousarray(labels, dtype="<i8"))
    crc = crc32c(np.ascontiguousarray(source_index, dtype="<i8"), crc)
    return crc32c(np.ascontiguousarray(copy_index, dtype="<i4"), crc)


class EncodedImages:
    """A shard's ``images`` given sample by sample, each already encoded where it was made.

    A shard task that finishes and encodes each sample in the thread that
    decoded it (:meth:`~pipeline.store.shardio.ShardFormat.encode_chunk`)
    passes the samples here in row order: :meth:`add` hashes each sample's
    values as :func:`shard_digest` does and keeps its chunk, so no
    ``(rows, C, H, W)`` array of the shard is made. :func:`write_shard` then
    writes the same object, record and digest as from that array.

    Example:
        >>> from pipeline.store.shardio import ShardFormat
        >>> fmt = ShardFormat((1, 2, 2), np.dtype("uint8"), 4, None, 0)
        >>> images = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)
        >>> enc = EncodedImages(fmt)
        >>> for sample in images:
        ...     enc.add(sample, fmt.encode_chunk(sample))
        >>> z = np.zeros(2, np.int64)
        >>> enc.digest(z, z, z) == shard_digest(images, z, z, z)
        True
        >>> fmt.assemble(enc.chunks) == fmt.encode(images)
        True
    """

    def __init__(self, fmt: ShardFormat) -> None:
        self.format = fmt
        self.chunks: list[Any] = []
        self._sha = hashlib.sha256()

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, sample: np.ndarray, chunk: Any) -> None:
        """Append the next row: its values (``sample_shape``) and its encoded chunk."""
        values = np.ascontiguousarray(sample, dtype=self.format.dtype.newbyteorder("<"))
        if values.shape != self.format.sample_shape:
            raise InvalidArgumentError(
                f"a sample must have shape {self.format.sample_shape}, got {values.shape}"
            )
        self._sha.update(values.data)
        self.chunks.append(chunk)

    def digest(self, labels: np.ndarray, source_index: np.ndarray, copy_index: np.ndarray) -> str:
        """:func:`shard_digest` of the rows added so far and these row arrays."""
        return _rows_digest(self._sha.copy(), labels, source_index, copy_index)


#: ``records/crc32c`` value of a shard whose checksums are not recorded.
_NO_CRC = -1


def _as_int_array(value: Any, name: str, rows: int, dtype: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (rows,):
        raise InvalidArgumentError(f"{name} must have shape ({rows},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must have an integer dtype, got {arr.dtype}")
    info = np.iinfo(dtype)
    if rows and (arr.min() < info.min or arr.max() > info.max):
        raise InvalidArgumentError(
            f"{name} must fit in {dtype}, got values in [{arr.min()}, {arr.max()}]"
        )
    return np.ascontiguousarray(arr, dtype=dtype)


def write_shard(
    store: PathLike | zarr.Group,
    index: int,
    *,
    images: np.ndarray | EncodedImages,
    labels: np.ndarray,
    source_index: np.ndarray,
    copy_index: np.ndarray,
    live: np.ndarray | None = None,
) -> ShardRecord:
    """Write shard ``index``: its rows of every array, then its record, ``done`` last.

    Rows ``layout.shard_rows(index)`` of ``images``, ``labels``,
    ``source_index`` and ``copy_index`` are written, the SHA-256 of the stored
    values (:func:`shard_digest`) and the row count go to ``records/``, and
    ``records/done[index]`` is set last. Writing a shard again (a retried task)
    first clears its ``done`` flag, so a record never vouches for data being
    replaced. Safe to call concurrently for different shards (threads or
    processes); never call it twice at once for the same shard.

    Args:
        store: the store folder or its open root group (``mode="r+"``).
        index: the shard index.
        images: ``(rows, C, H, W)``; float data is cast to the store's float
            dtype (round to nearest); a uint8 store takes uint8 only. Or the
            rows already encoded (:class:`EncodedImages`, in the format of
            the store's ``images`` array).
        labels: ``(rows,)`` integers, -1 for "no class".
        source_index: ``(rows,)`` integers, rows of ``paths``.
        copy_index: ``(rows,)`` integers that fit in int32.
        live: ``(rows,)`` bools, which rows readers serve (default: all);
            not part of the checksum (an update retires rows by clearing it).

    Returns:
        The shard's record.

    Raises:
        InvalidArgumentError: a shape, dtype or index is wrong.
        StoreError: ``store`` is not an imageprep store.
    """
    group = group_of(store, mode="r+")
    layout = StoreLayout.from_json(read_attrs(group)["layout"])
    rows = layout.shard_rows(index)
    n = len(rows)
    images_array = get_array(group, "images")
    lab = _as_int_array(labels, "labels", n, "int64")
    src = _as_int_array(source_index, "source_index", n, "int64")
    cpy = _as_int_array(copy_index, "copy_index", n, "int32")
    if isinstance(images, EncodedImages):
        if len(images) != n:
            raise InvalidArgumentError(f"shard {index} has {n} rows, got {len(images)} encoded")
        if images.format != shard_format(images_array):
            raise InvalidArgumentError(
                f"the encoded images of shard {index} are not in the format of the store's images"
            )
        digest = images.digest(lab, src, cpy)
    else:
        imgs = _images_array(images, layout, index)
        digest = shard_digest(imgs, lab, src, cpy)

    done = get_array(group, "records/done")
    sl = slice(rows.start, rows.stop)
    if live is None:
        live_rows = np.ones(n, dtype=bool)
    else:
        live_rows = np.asarray(live, dtype=bool)
        if live_rows.shape != (n,):
            raise InvalidArgumentError(f"live must have shape ({n},), got {live_rows.shape}")
    done[index] = False
    live_array = get_array(group, "live")
    live_array[sl] = False  # nothing of a shard being (re)written is served
    # the shard's one object, encoded here in one pass (pipeline.store.shardio)
    if isinstance(images, EncodedImages):
        object_crc: int | None = write_shard_parts(
            images_array, index, images.format.parts(images.chunks)
        )
    else:
        object_crc = write_images(images_array, index, imgs)
    get_array(group, "labels")[sl] = lab
    get_array(group, "source_index")[sl] = src
    get_array(group, "copy_index")[sl] = cpy
    get_array(group, "records/rows")[index] = n
    get_array(group, "records/sha256")[index] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    crc: tuple[int, int] | None = None
    crc_array = find_array(group, "records/crc32c")  # absent from stores made before it
    if crc_array is not None:
        if object_crc is not None:
            crc = (object_crc, rows_crc32c(lab, src, cpy))
        crc_array[index] = crc if crc is not None else (_NO_CRC, _NO_CRC)
    done[index] = True
    live_array[sl] = live_rows  # served only once the shard is done
    return ShardRecord(index=int(index), rows=n, sha256=digest, done=True, crc32c=crc)


def _images_array(images: np.ndarray, layout: StoreLayout, index: int) -> np.ndarray:
    """``images`` checked against the layout, contiguous, in the store's dtype."""
    imgs = np.asarray(images)
    n = len(layout.shard_rows(index))
    if imgs.shape != (n, *layout.sample_shape):
        raise InvalidArgumentError(
            f"images must have shape {(n, *layout.sample_shape)} for shard {index}, "
            f"got {imgs.shape}"
        )
    if layout.dtype == "uint8":
        if imgs.dtype != np.uint8:
            raise InvalidArgumentError(f"images must be uint8 for a uint8 store, got {imgs.dtype}")
    elif imgs.dtype.kind != "f":
        raise InvalidArgumentError(
            f"images must be floating-point for a {layout.dtype} store, got {imgs.dtype}"
        )
    return np.ascontiguousarray(imgs, dtype=layout.dtype)


def read_records(store: PathLike | zarr.Group) -> list[ShardRecord]:
    """Return every shard's record, written or not, in index order."""
    group = group_of(store)
    rows = read_array(get_array(group, "records/rows"))
    sha = read_array(get_array(group, "records/sha256"))
    done = read_array(get_array(group, "records/done"))
    crc_array = find_array(group, "records/crc32c")
    crc = read_array(crc_array) if crc_array is not None else None
    out = []
    for i in range(len(rows)):
        n = int(rows[i])
        checks = None
        if crc is not None and i < len(crc) and n and crc[i, 0] != _NO_CRC:
            checks = (int(crc[i, 0]), int(crc[i, 1]))
        out.append(
            ShardRecord(
                index=i,
                rows=n,
                sha256=bytes(sha[i]).hex() if n else "",
                done=bool(done[i]),
                crc32c=checks,
            )
        )
    return out


def done_shards(store: PathLike | zarr.Group) -> set[int]:
    """Return the indices of the shards whose ``done`` flag is set."""
    group = group_of(store)
    done = read_array(get_array(group, "records/done"))
    return {int(i) for i in np.flatnonzero(done)}


def unmark_shards(store: PathLike | zarr.Group, shards: Sequence[int]) -> None:
    """Clear the ``done`` record of ``shards`` so that the next run writes them again.

    Used by ``imageprep verify --repair`` on shards that do not match their
    checksum (or cannot be read): their records stop vouching for the data,
    the store's ``verified`` count drops below the first of them (the next
    run checks what it rewrites), and the store no longer counts as complete
    until a run has written them.
    """
    group = group_of(store, mode="r+")
    if not shards:
        return
    from zarr.core.sync import sync

    done = get_array(group, "records/done")
    images = get_array(group, "images")
    for index in sorted({int(i) for i in shards}):
        done[index] = False
        # the shard's object goes: a damaged one (truncated, bad index) would be read back
        # and merged when the shard is written again
        key = images.metadata.encode_chunk_key((index, 0, 0, 0))
        sync(group.store.delete(f"{images.path}/{key}"))
    meta = read_attrs(group)
    verified = min(int(meta.get("verified", 0)), min(int(i) for i in shards))
    group.attrs[ATTRIBUTE] = {**meta, "verified": verified, "complete": False}


def write_live(store: PathLike | zarr.Group, live: np.ndarray) -> int:
    """Set the ``live`` mask of every row, writing only the chunks (shards) that change.

    Returns:
        The number of chunks written.
    """
    group = group_of(store, mode="r+")
    array = get_array(group, "live")
    mask = np.asarray(live, dtype=bool)
    if mask.shape != array.shape:
        raise InvalidArgumentError(f"live must have shape {array.shape}, got {mask.shape}")
    old = read_array(array)
    step = array.chunks[0]
    written = 0
    for start in range(0, mask.shape[0], step):
        part = slice(start, min(start + step, mask.shape[0]))
        if not np.array_equal(old[part], mask[part]):
            array[part] = mask[part]
            written += 1
    return written


def finalize(store: PathLike | zarr.Group, attrs_update: Mapping[str, Any]) -> dict[str, Any]:
    """Record the run's final metadata once every shard is written.

    Merges ``attrs_update`` (e.g. ``failures``, ``timings``) into the
    ``imageprep`` attribute and sets ``complete: true``, ``finalized`` (UTC
    time) and the ``manifest`` (:mod:`pipeline.store.manifest`). Called once,
    by the coordinating process.

    Returns:
        The new ``imageprep`` attribute.

    Raises:
        StoreError: some shards are not done (their indices are listed).
        InvalidArgumentError: ``attrs_update`` changes a key that defines the
            store (layout, config, identity, fingerprint, format version) or
            is not JSON-safe.
    """
    group = group_of(store, mode="r+")
    layout = read_layout(group)
    missing = sorted(set(range(layout.n_shards)) - done_shards(group))
    if missing:
        raise StoreError(
            f"{group.store}: cannot finalize, {len(missing)} of {layout.n_shards} shards are "
            f"not written: {format_ranges(missing)}"
        )
    frozen = FROZEN_KEYS & set(attrs_update)
    if frozen:
        raise InvalidArgumentError(f"attrs_update must not change {', '.join(sorted(frozen))}")
    try:
        update = json.loads(json.dumps(dict(attrs_update), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs_update must be JSON-safe, got {exc}") from exc
    from pipeline.store.manifest import manifest_digests

    meta = {**read_attrs(group), **update, "complete": True, "finalized": now()}
    meta["manifest"] = manifest_digests(group, meta)
    group.attrs[ATTRIBUTE] = meta
    return meta
