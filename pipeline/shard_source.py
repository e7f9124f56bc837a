"""Whole-shard reads of a store, each shard checked against its record on its first read.

:class:`ShardSource` is the read side's one way into a store's samples. It
reads a shard as one unit (every written row of ``images``, ``labels``,
``source_index`` and ``copy_index``: one object and one decode per array),
and the first time a process reads a shard it checks those bytes against the
shard's record, so a flipped bit, a missing shard file (Zarr reads it as fill
values), a shard file swapped with another or edited labels raise
:class:`~pipeline.errors.StoreError` naming the store and the shard instead
of coming back as silently wrong data. The check is the CRC32C of the
``images`` object as read and of the row arrays
(:attr:`pipeline.store.ShardRecord.crc32c`, recorded as the shard was
written: no hash of the decoded values); a store without them, or a shard
whose bytes differ, gets :func:`pipeline.store.shard_digest` over the
decoded rows compared with the record's SHA-256, which decides and says what
the mismatch looks like. ``verify=False`` skips the check (for a store just
checked with ``imageprep verify``).

A small LRU cache keeps the last ``cache_shards`` shards read, so rows of the
same shard asked for one batch at a time are decoded once. The source opens
the store lazily, once per process, and pickles without its handle or its
cache, so a ``DataLoader`` worker opens, verifies and caches on its own.

Everything goes through :mod:`pipeline.store`'s public functions, so the
store may be any location :func:`pipeline.store.open_group` opens.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.store import StoreLayout, create_store, read_layout, write_shard
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> layout = StoreLayout(n_samples=3, channels=1, height=2, width=2, dtype="uint8",
    ...                      shard_size=2)
    >>> create_store(path, layout, attrs={}, paths=["x.png"])
    >>> for i, rows in enumerate([2, 1]):
    ...     _ = write_shard(path, i, images=np.full((rows, 1, 2, 2), i, np.uint8),
    ...                     labels=np.arange(rows), source_index=np.zeros(rows, int),
    ...                     copy_index=np.zeros(rows, int))
    >>> source = ShardSource(path, read_layout(path))
    >>> shard = source.read(1)
    >>> shard.start, shard.images.shape, source.is_verified(1), source.is_verified(0)
    (2, (1, 1, 2, 2), True, False)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.store import (
    ShardRecord,
    StoreLayout,
    get_array,
    open_group,
    read_array,
    read_records,
    shard_digest,
)
from pipeline.store.shardio import (
    ShardFormat,
    crc32c,
    get_shard_index,
    get_shard_object,
    read_shard_ranges,
    shard_format,
)

__all__ = ["Shard", "ShardSource", "store_name"]

#: Shard indexes kept per process for single-row reads (16 bytes per row each).
_INDEXES_KEPT = 8192


def store_name(path: Any) -> str:
    """The store as messages name it: the path or URL as given."""
    try:
        return os.fspath(path)
    except TypeError:
        return str(path)


@dataclass(frozen=True)
class Shard:
    """One shard's written rows, as stored.

    Attributes:
        index: the shard index.
        start: the store row of its first row.
        images: ``(rows, C, H, W)`` in the store's dtype.
        labels: ``(rows,)`` int64.
    """

    index: int
    start: int
    images: np.ndarray
    labels: np.ndarray


class ShardSource:
    """Read whole shards of one store, verified once per process, with a small cache.

    Args:
        path: the store (a folder or anything :func:`pipeline.store.open_group` opens).
        layout: its layout.
        verify: check each shard against its record on its first read in a process.
        cache_shards: shards kept decoded (``>= 0``).
        records: the store's shard records, when already read
            (:func:`pipeline.store.read_records`).

    Raises:
        InvalidArgumentError: a bad ``cache_shards``.
        StoreError: the records cannot be read.
    """

    def __init__(
        self,
        path: Any,
        layout: StoreLayout,
        *,
        verify: bool = True,
        cache_shards: int = 2,
        records: Sequence[ShardRecord] | None = None,
    ) -> None:
        if not isinstance(verify, bool):
            raise InvalidArgumentError(f"verify must be True or False, got {verify!r}")
        if not isinstance(cache_shards, int) or isinstance(cache_shards, bool) or cache_shards < 0:
            raise InvalidArgumentError(
                f"cache_shards must be an integer >= 0, got {cache_shards!r}"
            )
        self.path = path
        self.name = store_name(path)
        self.layout = layout
        self.verify = verify
        self.cache_shards = cache_shards
        if records is None:
            records = read_records(open_group(path))
        self._records = list(records)
        self._reset()

    # -- per process state (never pickled)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._verified: set[int] = set()
        self._cache: OrderedDict[int, Shard] = OrderedDict()
        self._indexes: dict[int, np.ndarray] = {}  # shard -> its object's chunk index
        self._formats: dict[str, ShardFormat | None] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in (
            "_group",
            "_arrays",
            "_verified",
            "_cache",
            "_indexes",
            "_formats",
            "_lock",
            "_pid",
        ):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _array(self, name: str) -> zarr.Array:
        if self._pid != os.getpid():  # a forked child: its own handle, cache and checks
            self._reset()
        array = self._arrays.get(name)
        if array is None:
            if self._group is None:
                self._group = open_group(self.path)
            array = self._arrays[name] = get_array(self._group, name)
        return array

    # -- reading

    def is_verified(self, index: int) -> bool:
        """Whether ``index`` was verified in this process (always True with ``verify=False``)."""
        return not self.verify or (self._pid == os.getpid() and index in self._verified)

    def cached(self, index: int) -> Shard | None:
        """The shard when it is in this process's cache (it becomes the most recent)."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            shard = self._cache.get(index)
            if shard is not None:
                self._cache.move_to_end(index)
            return shard

    def _where(self, index: int) -> str:
        span = self.layout.shard_rows(index)
        return f"{self.name}: shard {index} (rows {span.start}-{span.stop - 1})"

    def read(self, index: int) -> Shard:
        """Return shard ``index`` (every written row), from the cache or read whole.

        A shard not yet verified in this process is verified first.

        Raises:
            StoreError: the shard is not written, cannot be read, or does not
                match its record (the message names the store, the shard and
                what mismatched).
        """
        shard = self.cached(index)
        if shard is not None:
            return shard
        shard = self._read(index)
        if self.cache_shards:
            with self._lock:
                self._cache[index] = shard
                self._cache.move_to_end(index)
                while len(self._cache) > self.cache_shards:
                    self._cache.popitem(last=False)
        return shard

    def _read(self, index: int) -> Shard:
        span = self.layout.shard_rows(index)
        if not self._records[index].done:
            raise StoreError(f"{self._where(index)} is not written (its record is not done)")
        sl = slice(span.start, span.stop)
        check = not self.is_verified(index)
        names = ("images", "labels", "source_index", "copy_index")
        # the CRC32C of the images object, when the record has one to compare it with
        crcs: list[int] | None = [] if check and self._records[index].crc32c is not None else None
        try:
            images, labels, *rest = self._read_arrays(
                sl, names if check else names[:2], shard=index, object_crcs=crcs
            )
        except StoreError:
            raise
        except Exception as exc:  # a corrupt object fails to decode: name the shard
            raise StoreError(
                f"{self._where(index)} cannot be read: {type(exc).__name__}: {exc}"
            ) from exc
        if check:
            self._check_rows(index)
            if not (crcs and self._records[index].bytes_match(crcs[0], labels, *rest)):
                self._check(index, images, labels, *rest)  # the SHA-256 decides, and explains
            with self._lock:
                self._verified.add(index)
        return Shard(index, span.start, images, labels.astype(np.int64, copy=False))

    def _read_arrays(
        self,
        sl: slice,
        names: Sequence[str],
        shard: int | None = None,
        object_crcs: list[int] | None = None,
    ) -> list[np.ndarray]:
        """Rows ``sl`` of the arrays ``names``, read concurrently.

        With ``shard`` (whose rows ``sl`` are), ``images`` is read as the one
        shard object and decoded here (:mod:`pipeline.store.shardio`) when its
        format allows, instead of through zarr's per-chunk pipeline; the
        object's CRC32C is appended to ``object_crcs`` when given.
        """
        arrays = [self._array(name) for name in names]
        formats = [
            self._format(name) if name == "images" and shard is not None else None for name in names
        ]

        async def read(array: zarr.Array, fmt: ShardFormat | None) -> Any:
            if fmt is None:
                return await array.async_array.getitem(sl)
            return await get_shard_object(array, int(shard))  # type: ignore[arg-type]

        async def gather() -> list[Any]:
            return list(
                await asyncio.gather(*(read(a, f) for a, f in zip(arrays, formats, strict=True)))
            )

        raw = zarr_sync(gather())
        rows = sl.stop - sl.start
        out = []
        for x, fmt in zip(raw, formats, strict=True):
            if fmt is None:
                out.append(np.asarray(x))
                continue
            if object_crcs is not None and x is not None:
                object_crcs.append(crc32c(x))
            index = None if x is None else fmt.parse_index(x)
            if index is not None and shard is not None:  # kept for single-row reads
                self._keep_index(shard, index)
            out.append(fmt.decode(x, rows, index))
        return out

    def _format(self, name: str) -> ShardFormat | None:
        """The array's :class:`ShardFormat` (``None``: zarr reads it), worked out once."""
        array = self._array(name)  # first: a forked child resets its state here
        if name not in self._formats:
            self._formats[name] = shard_format(array)
        return self._formats[name]

    def _keep_index(self, shard: int, index: np.ndarray) -> None:
        with self._lock:
            if len(self._indexes) >= _INDEXES_KEPT:
                self._indexes.clear()
            self._indexes[shard] = index

    def _check_rows(self, index: int) -> None:
        span = self.layout.shard_rows(index)
        if self._records[index].rows != len(span):
            raise StoreError(
                f"{self._where(index)} does not match its record: the record says "
                f"{self._records[index].rows} rows were written, the layout has {len(span)}"
            )

    def _check(
        self,
        index: int,
        images: np.ndarray,
        labels: np.ndarray,
        source: np.ndarray,
        copy: np.ndarray,
    ) -> None:
        digest = shard_digest(images, labels, source, copy)
        expected = self._records[index].sha256
        if digest == expected:
            return
        if self._rewritten(index, digest):
            raise StoreError(
                f"{self._where(index)} was rewritten since the reader opened the store "
                "(its record changed); open it again"
            )
        raise StoreError(
            f"{self._where(index)} does not match its SHA-256 record: its images, labels, "
            f"source_index and copy_index hash to {digest[:16]}..., the record says "
            f"{expected[:16]}...{self._hint(index, digest, images)}; the store "
            f"is corrupted (check it with `imageprep verify {self.name}`)"
        )

    def _rewritten(self, index: int, digest: str) -> bool:
        """Whether the shard's record changed since the store was opened, to these values."""
        try:
            record = read_records(open_group(self.path))[index]
        except Exception:  # a diagnosis only
            return False
        return bool(record.done and record.sha256 == digest != self._records[index].sha256)

    def _hint(self, index: int, digest: str, images: np.ndarray) -> str:
        """What the mismatch looks like, where a cheap look tells (only on the failure path)."""
        if images.size and not images.any():
            return " (its images read as all zeros: the images shard file is probably missing)"
        for other, expected in enumerate(r.sha256 for r in self._records):
            if other != index and expected == digest:
                return f" (its contents match shard {other}'s record: a copied or swapped shard)"
        try:  # the images of another shard with this shard's 1-D arrays?
            labels, source, copy = (
                read_array(self._array(name)) for name in ("labels", "source_index", "copy_index")
            )
        except Exception:  # a diagnosis only: never hide the mismatch behind it
            return ""
        prefix = hashlib.sha256(np.ascontiguousarray(images, images.dtype.newbyteorder("<")).data)
        for other, expected in enumerate(r.sha256 for r in self._records):
            span = self.layout.shard_rows(other)
            if other == index or not self._records[other].done or len(span) != len(images):
                continue
            sl = slice(span.start, span.stop)
            h = prefix.copy()
            h.update(np.ascontiguousarray(labels[sl], dtype="<i8").data)
            h.update(np.ascontiguousarray(source[sl], dtype="<i8").data)
            h.update(np.ascontiguousarray(copy[sl], dtype="<i4").data)
            if h.hexdigest() == expected:
                return f" (its images are shard {other}'s: a copied or swapped images shard file)"
        return ""

    def read_rows(self, index: int, rows: np.ndarray) -> np.ndarray:
        """``images[rows]`` of a shard already verified in this process, by single-row reads.

        For scattered access (a few rows of a shard not in the cache): one
        concurrent batch of single-row reads, which reads only those inner
        chunks.

        Raises:
            StoreError: the shard was not verified in this process.
        """
        if not self.is_verified(index):
            raise StoreError(f"{self._where(index)} must be read whole (verified) first")
        array = self._array("images")
        fmt = self._format("images")
        try:
            if fmt is not None:
                return self._read_chunks(array, fmt, index, rows)

            async def gather() -> list[Any]:
                return list(
                    await asyncio.gather(*(array.async_array.getitem((int(r),)) for r in rows))
                )

            return np.stack([np.asarray(x) for x in zarr_sync(gather())])
        except Exception as exc:
            raise StoreError(
                f"{self._where(index)} cannot be read: {type(exc).__name__}: {exc}"
            ) from exc

    def _read_chunks(
        self, array: zarr.Array, fmt: ShardFormat, index: int, rows: np.ndarray
    ) -> np.ndarray:
        """``images[rows]`` of shard ``index``: one byte-range read per row, decoded here.

        The shard's chunk index comes from its whole read in this process (or
        one suffix read), so a row costs one ranged read and one decode
        (:func:`pipeline.store.shardio.read_shard_ranges`).
        """
        start = index * self.layout.shard_size
        chunk_index = self._indexes.get(index)
        if chunk_index is None:
            chunk_index = zarr_sync(get_shard_index(array, index, fmt))
            if chunk_index is not None:
                self._keep_index(index, chunk_index)
        where = [
            None if chunk_index is None else fmt.chunk_range(chunk_index, int(r) - start)
            for r in rows
        ]
        out = fmt.empty(len(rows))
        for k, chunk in enumerate(read_shard_ranges(array, index, where)):
            fmt.decode_into(chunk, out[k], int(rows[k]) - start)
        return out.astype(self.layout.dtype, copy=False)
