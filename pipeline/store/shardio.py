"""Whole-shard I/O of ``images``: one shard object encoded or decoded in one pass.

A shard of ``images`` is one object holding its 1-sample chunks, each through
the array's inner codecs (``bytes``, then the compressor), then the index of
``(offset, length)`` ``uint64`` pairs and the index's CRC32C (the Zarr v3
sharding codec, index at the end). zarr-python writes such a shard through
its per-chunk async pipeline: for every chunk a fill-value buffer, a merge,
the codec through ``asyncio.to_thread``, and a final copy of the whole shard;
the read runs the same way back. A shard task already holds the whole shard,
so this module encodes it directly with the same codecs (the ``numcodecs``
objects that zarr's codecs wrap, built from the same configuration) and
writes it as one object (in a local store, one ``writev`` of the encoded
chunks and the index into a file renamed into place, as zarr's ``LocalStore``
writes a file; elsewhere one ``store.set``), and reads it with one ``store.get``.

The bytes are exactly zarr-python's (the tests compare the objects written
both ways for every codec and for a last, partial shard), so a store is the
same whichever wrote it, and any Zarr v3 implementation reads it. One
exception: zarr-python's gzip stamps each chunk with the current time, and
this module writes 0 there, so a shard written again is the same object. An array
whose codecs are not the ones a store is created with (:func:`shard_format`
returns ``None``) is read and written through zarr.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import GZip
from numcodecs.compat import ensure_contiguous_ndarray

__all__ = [
    "ShardFormat",
    "crc32c",
    "get_shard_index",
    "get_shard_object",
    "get_shard_range",
    "read_images",
    "read_shard_ranges",
    "shard_format",
    "shard_object_crc32c",
    "write_images",
    "write_shard_parts",
]

#: An index entry of a chunk that is not in the shard (offset and length).
_MISSING = 2**64 - 1


def crc32c(data: Any, value: int = 0) -> int:
    """The CRC32C (Castagnoli) of bytes-like ``data``, continuing from ``value``.

    The checksum of Zarr's ``crc32c`` codec and of the sharding index
    (``google-crc32c``, hardware-accelerated: ~6 GB/s here, against ~1.2 GB/s
    for SHA-256).

    Example:
        >>> crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
        True
        >>> crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")
        True
    """
    import google_crc32c

    # bytes as they are, anything else as a flat uint8 array: google-crc32c takes both
    # without a copy (a memoryview it refuses)
    raw = data if isinstance(data, bytes) else np.frombuffer(memoryview(data).cast("B"), np.uint8)
    return int(google_crc32c.extend(value, raw))


@dataclass(frozen=True)
class ShardFormat:
    """How the shards of one ``images`` array are encoded.

    Attributes:
        sample_shape: ``(C, H, W)``, one inner chunk.
        dtype: the array's dtype (little-endian bytes in the chunks).
        per_shard: chunks (rows) per shard.
        compressor: the ``numcodecs`` codec of the inner chain, ``None`` for raw bytes.
        fill_value: the value of rows whose chunk is not in the shard.
    """

    sample_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    per_shard: int
    compressor: Any
    fill_value: Any

    def encode(self, data: np.ndarray) -> bytes:
        """The shard object of ``data`` (``(rows, C, H, W)``, ``rows <= per_shard``).

        Rows past ``rows`` are absent from the shard (a last, partial shard),
        as zarr-python leaves the chunks outside the array.
        """
        return self.assemble([self.encode_chunk(sample) for sample in data])

    def encode_chunk(self, sample: np.ndarray) -> Any:
        """One sample (``sample_shape``) through the inner codecs: its chunk, bytes-like.

        Safe to call from several threads at once (the codecs keep no state
        between calls), so chunks can be encoded where the samples are made.
        """
        flat = np.ascontiguousarray(sample, dtype=self.dtype.newbyteorder("<")).reshape(-1)
        if flat.size != int(np.prod(self.sample_shape)):
            raise ValueError(f"a sample has {flat.size} values, expected shape {self.sample_shape}")
        if self.compressor is None:
            return flat.data.cast("B")
        return self.compressor.encode(flat.view(np.uint8))

    def assemble(self, chunks: list[Any]) -> bytes:
        """The shard object of the encoded chunks of its first rows (:meth:`encode_chunk`)."""
        return b"".join(self.parts(chunks))

    def parts(self, chunks: list[Any]) -> list[Any]:
        """The shard object of ``chunks`` as the buffers to write in order: the chunks, the index.

        :meth:`assemble` joins them; :func:`write_shard_parts` writes them
        without the copy.
        """
        import google_crc32c

        rows = len(chunks)
        if rows > self.per_shard:
            raise ValueError(f"{rows} chunks for a shard of {self.per_shard}")
        index = np.full((self.per_shard, 2), _MISSING, dtype="<u8")
        lengths = np.fromiter((memoryview(c).nbytes for c in chunks), dtype=np.uint64, count=rows)
        index[:rows, 1] = lengths
        index[:rows, 0] = np.cumsum(lengths) - lengths
        index_bytes = index.tobytes()
        crc = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
        return [*chunks, index_bytes + crc]

    @property
    def index_nbytes(self) -> int:
        """Bytes of the index at the end of a shard object, its CRC32C included."""
        return self.per_shard * 16 + 4

    def parse_index(self, tail: Any) -> np.ndarray:
        """The ``(per_shard, 2)`` ``(offset, length)`` index from a shard object's last bytes.

        Raises:
            ValueError: too few bytes, or the index fails its CRC32C.
        """
        import google_crc32c

        view = memoryview(tail).cast("B")
        if view.nbytes < self.index_nbytes:
            raise ValueError(f"the shard object has {view.nbytes} bytes, fewer than its index")
        index_bytes = bytes(view[view.nbytes - self.index_nbytes : view.nbytes - 4])
        crc = int(np.frombuffer(view[view.nbytes - 4 :], dtype="<u4")[0])
        if google_crc32c.value(index_bytes) != crc:
            raise ValueError("the shard index fails its CRC32C checksum")
        return np.frombuffer(index_bytes, dtype="<u8").reshape(self.per_shard, 2)

    def chunk_range(self, index: np.ndarray, row: int, body: int | None = None) -> range | None:
        """The bytes of row ``row``'s chunk in the shard object (``None``: not in the shard).

        Raises:
            ValueError: the entry points past ``body`` (the bytes before the index).
        """
        offset, length = int(index[row, 0]), int(index[row, 1])
        if offset == _MISSING and length == _MISSING:
            return None
        if body is not None and offset + length > body:
            raise ValueError(f"the shard index points chunk {row} past the end of the object")
        return range(offset, offset + length)

    def decode_into(self, chunk: Any, out: np.ndarray, row: int) -> None:
        """Decode one chunk into ``out`` (one sample, C-contiguous; ``None``: the fill value).

        Raises:
            ValueError: an uncompressed chunk of the wrong size.
        """
        if chunk is None:
            out[...] = self.fill_value
            return
        target = out.reshape(-1).view(np.uint8)
        if self.compressor is None:
            view = memoryview(chunk).cast("B")
            if view.nbytes != target.nbytes:
                raise ValueError(f"chunk {row} has {view.nbytes} bytes, expected {target.nbytes}")
            target[:] = np.frombuffer(view, dtype=np.uint8)
        else:
            self.compressor.decode(chunk, out=target)

    def empty(self, rows: int) -> np.ndarray:
        """An uninitialized ``(rows, C, H, W)`` array in the chunks' (little-endian) dtype."""
        return np.empty((rows, *self.sample_shape), dtype=self.dtype.newbyteorder("<"))

    def decode(self, blob: Any, rows: int, index: np.ndarray | None = None) -> np.ndarray:
        """The first ``rows`` samples of a shard object (``None``: no object, all fill value).

        ``index`` is the object's index when the caller parsed it already
        (:meth:`parse_index`).

        Raises:
            ValueError: the object is shorter than its index, the index fails
                its CRC32C, an entry points outside the object, or a chunk
                does not decode to one sample (the caller names the shard).
        """
        out = self.empty(rows)
        if blob is None:
            out[...] = self.fill_value
            return out.astype(self.dtype, copy=False)
        view = memoryview(blob).cast("B")
        if index is None:
            index = self.parse_index(view)
        body = view.nbytes - self.index_nbytes
        for i in range(rows):
            where = self.chunk_range(index, i, body)
            self.decode_into(None if where is None else view[where.start : where.stop], out[i], i)
        return out.astype(self.dtype, copy=False)  # a no-op on little-endian machines


class _GZip(GZip):
    """numcodecs' ``GZip``, with the gzip header's modification time fixed at 0.

    numcodecs stamps each gzip member with the current time, so a shard
    written again (a resumed or retried run) would differ in those four bytes
    of every chunk; with 0 the same samples give the same object. Readers
    ignore the field; the codec's configuration (and so equality) is
    numcodecs' own.
    """

    def encode(self, buf: Any) -> bytes:
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=self.level, mtime=0) as f:
            f.write(ensure_contiguous_ndarray(buf))
        return out.getvalue()


def _numcodec(codec: Any) -> Any:
    """The ``numcodecs`` object behind a zarr-python compressor, configured as zarr configures it.

    Returns ``False`` for a codec this module does not know.
    """
    from numcodecs import Blosc, Zstd
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        return Blosc.from_config(
            {
                "cname": codec.cname.value,
                "clevel": codec.clevel,
                "shuffle": shuffle,
                "blocksize": codec.blocksize,
                "typesize": codec.typesize,
            }
        )
    if isinstance(codec, ZstdCodec):
        return Zstd.from_config({"level": codec.level, "checksum": codec.checksum})
    if isinstance(codec, GzipCodec):
        return _GZip(codec.level)
    return False


def shard_format(array: zarr.Array) -> ShardFormat | None:
    """The :class:`ShardFormat` of an ``images`` array, or ``None`` when zarr must do the I/O.

    ``None`` unless the array is sharded along its first axis only, with
    1-sample inner chunks of ``bytes`` (little-endian) and at most one known
    compressor (Blosc, Zstd, Gzip), and the index (``bytes``, CRC32C) at the end.
    """
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    meta = array.metadata
    codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    shape = tuple(array.shape)
    shard = tuple(meta.chunk_grid.chunk_shape)  # type: ignore[attr-defined]
    sample = tuple(shape[1:])
    if tuple(sharding.chunk_shape) != (1, *sample) or shard[1:] != sample:
        return None
    if sharding.index_location != ShardingCodecIndexLocation.end:
        return None
    index_codecs = tuple(sharding.index_codecs)
    if len(index_codecs) != 2 or not isinstance(index_codecs[1], Crc32cCodec):
        return None
    if not isinstance(index_codecs[0], BytesCodec) or index_codecs[0].endian is None:
        return None
    if index_codecs[0].endian.value != "little":
        return None
    inner = tuple(sharding.codecs)
    if not inner or not isinstance(inner[0], BytesCodec) or len(inner) > 2:
        return None
    dtype = np.dtype(array.dtype)
    endian = inner[0].endian
    if dtype.itemsize > 1 and (endian is None or endian.value != "little"):
        return None
    compressor = _numcodec(inner[1]) if len(inner) == 2 else None
    if compressor is False:
        return None
    return ShardFormat(sample, dtype, int(shard[0]), compressor, array.fill_value)


def _key(array: zarr.Array, index: int) -> str:
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    return f"{array.path}/{key}" if array.path else key


def write_images(array: zarr.Array, index: int, data: np.ndarray) -> int | None:
    """Write ``data`` as shard ``index`` of ``array``: one object (:func:`write_shard_parts`).

    Falls back to ``array[rows] = data`` (every chunk written) when
    :func:`shard_format` is ``None``. The local store writes the object to a
    temporary file and renames it, so it is never half-written.

    Returns:
        The :func:`crc32c` of the object written; ``None`` when zarr wrote it.
    """
    fmt = shard_format(array)
    if fmt is None:
        shard_rows = int(array.metadata.chunk_grid.chunk_shape[0])  # type: ignore[attr-defined]
        sl = slice(index * shard_rows, index * shard_rows + len(data))
        array.with_config({"write_empty_chunks": True})[sl] = data
        return None
    return write_shard_parts(array, index, fmt.parts([fmt.encode_chunk(s) for s in data]))


def write_shard_parts(array: zarr.Array, index: int, parts: list[Any]) -> int:
    """Store the concatenation of ``parts`` as shard ``index``'s object of ``array``; its CRC32C.

    ``parts`` are bytes-like (:meth:`ShardFormat.parts`). A local store's
    object is written in this thread with ``writev`` (no joined copy of the
    shard, no hop to zarr's event loop and its executor), to a
    ``<name>.<uuid>.partial`` file renamed into place, as zarr's
    ``LocalStore.set`` does (so a killed write leaves only that file, which
    :func:`pipeline.store.remove_partials` deletes); other stores get one
    ``store.set`` of the joined bytes.

    Raises:
        ValueError: the store is read-only.
    """
    from zarr.storage import LocalStore

    store = array.store_path.store
    if store.read_only:
        raise ValueError("store was opened in read-only mode and does not support writing")
    if isinstance(store, LocalStore):
        _put_parts(Path(store.root) / _key(array, index), parts)
    else:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = default_buffer_prototype().buffer.from_bytes(b"".join(parts))
        sync(store.set(_key(array, index), buf))
    crc = 0
    for part in parts:
        crc = crc32c(part, crc)
    return crc


#: Buffers per ``writev`` call (the system's limit; POSIX guarantees at least 16).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _put_parts(path: Path, parts: list[Any]) -> None:
    """Write ``parts`` one after the other as the file ``path``: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # zarr's LocalStore's naming
    views = [m for m in (memoryview(p).cast("B") for p in parts) if m.nbytes]
    try:
        with open(tmp, "xb") as f:
            if hasattr(os, "writev"):
                fd, i = f.fileno(), 0
                while i < len(views):
                    written = os.writev(fd, views[i : i + _IOV_MAX])
                    if not written:
                        raise OSError(f"no bytes written to {tmp}")
                    while written:  # a short write: go on from where it stopped
                        if written >= views[i].nbytes:
                            written -= views[i].nbytes
                            i += 1
                        else:
                            views[i] = views[i][written:]
                            written = 0
            else:
                for view in views:
                    f.write(view)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def _get(array: zarr.Array, index: int, byte_range: Any = None) -> Any:
    """Bytes of shard ``index``'s object (all, or ``byte_range``); ``None`` when there is none."""
    from zarr.core.buffer import default_buffer_prototype

    buf = await array.store_path.store.get(
        _key(array, index), prototype=default_buffer_prototype(), byte_range=byte_range
    )
    return None if buf is None else buf.as_numpy_array()


async def get_shard_object(array: zarr.Array, index: int) -> Any:
    """The stored bytes of shard ``index`` of ``array`` (``None`` when there is no object)."""
    return await _get(array, index)


async def get_shard_range(array: zarr.Array, index: int, start: int, stop: int) -> Any:
    """Bytes ``[start, stop)`` of shard ``index``'s object (``None`` when there is no object)."""
    from zarr.abc.store import RangeByteRequest

    return await _get(array, index, RangeByteRequest(start, stop))


def read_shard_ranges(array: zarr.Array, index: int, spans: list[range | None]) -> list[Any]:
    """The bytes of each span of shard ``index``'s object (``None`` for ``None`` or no object).

    A local store's object is read with one ``open`` and a ``pread`` per span,
    in this thread (a byte-range GET through zarr's event loop costs two
    thread hops, more than reading a chunk); other stores get concurrent
    byte-range GETs.
    """
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    store = array.store_path.store
    if isinstance(store, LocalStore):
        try:
            fd = os.open(os.path.join(store.root, _key(array, index)), os.O_RDONLY)
        except FileNotFoundError:
            return [None] * len(spans)
        try:
            return [None if w is None else os.pread(fd, len(w), w.start) for w in spans]
        finally:
            os.close(fd)

    async def gather() -> list[Any]:
        async def one(span: range | None) -> Any:
            if span is None:
                return None
            return await get_shard_range(array, index, span.start, span.stop)

        return list(await asyncio.gather(*(one(w) for w in spans)))

    return sync(gather())


def shard_object_crc32c(array: zarr.Array, index: int) -> int | None:
    """The :func:`crc32c` of shard ``index``'s stored object (``None`` when there is none).

    A local store's file is read in this thread in 1 MiB blocks into one
    buffer, each checksummed while it is in the cache (no copy of the whole
    object, no hop to zarr's event loop); other stores' objects are fetched
    whole.
    """
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    store = array.store_path.store
    if not isinstance(store, LocalStore):
        blob = sync(get_shard_object(array, index))
        return None if blob is None else crc32c(blob)
    try:
        f = open(os.path.join(store.root, _key(array, index)), "rb", buffering=0)
    except FileNotFoundError:
        return None
    block = bytearray(_READ_BLOCK)
    view = np.frombuffer(block, np.uint8)
    crc = 0
    with f:
        while n := f.readinto(block):
            crc = crc32c(view[:n], crc)
    return crc


#: Bytes per read of :func:`shard_object_crc32c` (stays in the cache while checksummed).
_READ_BLOCK = 1 << 20


async def get_shard_index(array: zarr.Array, index: int, fmt: ShardFormat) -> np.ndarray | None:
    """The index of shard ``index`` (one suffix read; ``None`` when there is no object).

    Raises:
        ValueError: the index is damaged (:meth:`ShardFormat.parse_index`).
    """
    from zarr.abc.store import SuffixByteRequest

    tail = await _get(array, index, SuffixByteRequest(fmt.index_nbytes))
    return None if tail is None else fmt.parse_index(tail)


def read_images(array: zarr.Array, index: int, rows: int) -> np.ndarray:
    """The first ``rows`` samples of shard ``index`` of ``array``, read whole.

    Through zarr when :func:`shard_format` is ``None``.

    Raises:
        ValueError: the shard object is damaged (see :meth:`ShardFormat.decode`).
    """
    fmt = shard_format(array)
    shard_rows = int(array.metadata.chunk_grid.chunk_shape[0])  # type: ignore[attr-defined]
    if fmt is None:
        return np.asarray(array[index * shard_rows : index * shard_rows + rows])
    from zarr.core.sync import sync

    blob = sync(get_shard_object(array, index))
    return fmt.decode(blob, rows)
