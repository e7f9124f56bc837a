"""Whole-shard I/O (pipeline.store.shardio) against zarr-python on the same arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.store.codecs import Compression
from pipeline.store.shardio import read_images, shard_format, write_images

SAMPLE = (3, 6, 5)
PER_SHARD = 4
COMPRESSIONS = [
    Compression("blosc"),
    Compression("blosc", 3, "byte"),
    Compression("blosc", 9, "none"),
    Compression("zstd"),
    Compression("zstd", 19),
    Compression("gzip", 1),
    Compression("none"),
]


def _array(target: Path | Any, n: int, dtype: str, compression: Compression) -> zarr.Array:
    """``images`` as a store lays it out, in a new group at ``target`` (a folder or a store)."""
    group = zarr.open_group(target, mode="w")
    return group.create_array(
        "images",
        shape=(n, *SAMPLE),
        dtype=dtype,
        chunks=(1, *SAMPLE),
        shards=(PER_SHARD, *SAMPLE),
        compressors=compression.compressors(),
        fill_value=0,
    )


def _samples(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        data = rng.integers(0, 256, (n, *SAMPLE), dtype=np.uint8)
    else:
        data = (rng.normal(size=(n, *SAMPLE)) * 3).astype(dtype)
    data[1] = 0  # an all-fill sample is still written
    return data


def _object(path: Path, index: int) -> bytes:
    return (path / "images" / "c" / str(index) / "0" / "0" / "0").read_bytes()


def _without_gzip_time(blob: bytes, fmt: Any) -> bytes:
    """``blob`` with the modification time of each gzip chunk (header bytes 4-7) set to 0."""
    out = bytearray(blob)
    index = fmt.parse_index(blob)
    for row in range(fmt.per_shard):
        where = fmt.chunk_range(index, row, len(blob) - fmt.index_nbytes)
        if where is not None:
            assert out[where.start : where.start + 2] == b"\x1f\x8b"  # a gzip member
            out[where.start + 4 : where.start + 8] = bytes(4)
    return bytes(out)


def test_a_gzip_shard_written_again_is_the_same_object(tmp_path, monkeypatch):
    """zarr-python's gzip chunks carry the time they were written; ours carry 0."""
    import time

    data = _samples(PER_SHARD, "float16")
    array = _array(tmp_path / "g.zarr", PER_SHARD, "float16", Compression("gzip", 1))
    objects = []
    for now in (1_000_000_000.0, 1_700_000_000.0):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        write_images(array, 0, data)
        objects.append(_object(tmp_path / "g.zarr", 0))
    assert objects[0] == objects[1]
    np.testing.assert_array_equal(read_images(array, 0, PER_SHARD), data)


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8"])
@pytest.mark.parametrize(
    "compression", COMPRESSIONS, ids=lambda c: f"{c.codec}-{c.level}-{c.shuffle}"
)
@pytest.mark.parametrize("n", [8, 10], ids=["whole-shards", "partial-last-shard"])
def test_the_shard_object_is_zarrs_byte_for_byte(tmp_path, dtype, compression, n):
    data = _samples(n, dtype)
    by_zarr = _array(tmp_path / "zarr.zarr", n, dtype, compression)
    by_us = _array(tmp_path / "ours.zarr", n, dtype, compression)
    assert shard_format(by_us) is not None
    for index in range(-(-n // PER_SHARD)):
        rows = slice(index * PER_SHARD, min(n, (index + 1) * PER_SHARD))
        by_zarr.with_config({"write_empty_chunks": True})[rows] = data[rows]
        write_images(by_us, index, data[rows])
        ours, theirs = (
            _object(tmp_path / "ours.zarr", index),
            _object(tmp_path / "zarr.zarr", index),
        )
        if compression.codec == "gzip":
            theirs = _without_gzip_time(theirs, shard_format(by_us))
        assert ours == theirs
        # each reads what the other wrote
        np.testing.assert_array_equal(read_images(by_zarr, index, len(data[rows])), data[rows])
    np.testing.assert_array_equal(np.asarray(zarr.open_array(tmp_path / "ours.zarr/images")), data)


def test_a_shard_cut_short_by_its_segment_leaves_its_last_rows_absent(tmp_path):
    # an update's segment can end inside a shard: its rows past the end are holes
    array = _array(tmp_path / "s.zarr", 8, "float16", Compression("blosc"))
    data = _samples(3, "float16")
    write_images(array, 1, data)
    np.testing.assert_array_equal(np.asarray(array[4:7]), data)
    np.testing.assert_array_equal(np.asarray(array[7]), np.zeros(SAMPLE, np.float16))
    np.testing.assert_array_equal(read_images(array, 1, 3), data)
    index = np.frombuffer(_object(tmp_path / "s.zarr", 1)[-4 - 16 * PER_SHARD : -4], dtype="<u8")
    assert (index.reshape(PER_SHARD, 2)[3] == 2**64 - 1).all()


def test_a_shard_with_no_object_reads_as_the_fill_value(tmp_path):
    array = _array(tmp_path / "s.zarr", 8, "uint8", Compression("zstd"))
    np.testing.assert_array_equal(read_images(array, 1, 4), np.zeros((4, *SAMPLE), np.uint8))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:50], "fewer than its index"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "fails its CRC32C"),
        (lambda b: b[:10] + b[-4 - 16 * PER_SHARD :], "past the end of the object"),
    ],
    ids=["truncated", "index-bit-flip", "chunks-cut-out"],
)
def test_a_damaged_shard_object_is_refused_saying_how(tmp_path, damage, message):
    array = _array(tmp_path / "s.zarr", 8, "float16", Compression("zstd"))
    write_images(array, 0, _samples(4, "float16"))
    f = tmp_path / "s.zarr" / "images" / "c" / "0" / "0" / "0" / "0"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_images(array, 0, 4)


def test_a_damaged_chunk_fails_to_decode(tmp_path):
    array = _array(tmp_path / "s.zarr", 8, "float16", Compression("zstd"))
    write_images(array, 0, _samples(4, "float16"))
    f = tmp_path / "s.zarr" / "images" / "c" / "0" / "0" / "0" / "0"
    blob = bytearray(f.read_bytes())
    blob[:8] = b"\0" * 8  # the first chunk's zstd frame header
    f.write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match="[Zz]std"):
        read_images(array, 0, 4)


@pytest.mark.parametrize(
    "make",
    [
        # two samples per inner chunk
        lambda g: g.create_array(
            "images", shape=(8, *SAMPLE), dtype="uint8", chunks=(2, *SAMPLE), shards=(4, *SAMPLE)
        ),
        # no sharding
        lambda g: g.create_array("images", shape=(8, *SAMPLE), dtype="uint8", chunks=(4, *SAMPLE)),
        # two compressors
        lambda g: g.create_array(
            "images",
            shape=(8, *SAMPLE),
            dtype="uint8",
            chunks=(1, *SAMPLE),
            shards=(4, *SAMPLE),
            compressors=(BloscCodec(), ZstdCodec()),
        ),
    ],
    ids=["2-sample-chunks", "unsharded", "two-compressors"],
)
def test_other_layouts_go_through_zarr(tmp_path, make):
    array = make(zarr.open_group(tmp_path / "s.zarr", mode="w"))
    assert shard_format(array) is None
    data = _samples(4, "uint8")
    write_images(array, 1, data)
    np.testing.assert_array_equal(np.asarray(array[4:8]), data)
    np.testing.assert_array_equal(read_images(array, 1, 4), data)


def test_a_memory_store_takes_the_same_path(tmp_path):
    array = _array(zarr.storage.MemoryStore(), 6, "float16", Compression("blosc"))
    assert shard_format(array) is not None
    data = _samples(6, "float16")
    write_images(array, 0, data[:4])
    write_images(array, 1, data[4:])
    np.testing.assert_array_equal(np.asarray(array[:]), data)
    np.testing.assert_array_equal(read_images(array, 1, 2), data[4:])


@pytest.mark.parametrize("where", ["local", "memory"])
def test_single_rows_are_read_by_byte_range_with_the_shards_index(tmp_path, where):
    from zarr.core.sync import sync

    from pipeline.store.shardio import get_shard_index, read_shard_ranges

    target = tmp_path / "s.zarr" if where == "local" else zarr.storage.MemoryStore()
    array = _array(target, 12, "float16", Compression("zstd"))
    fmt = shard_format(array)
    assert fmt is not None
    data = _samples(7, "float16")
    write_images(array, 0, data[:4])
    write_images(array, 1, data[4:])  # rows 4-6; row 7 is absent
    index = sync(get_shard_index(array, 1, fmt))
    assert index is not None
    spans = [fmt.chunk_range(index, row) for row in (2, 0, 3)]
    assert spans[2] is None  # not in the shard
    out = fmt.empty(3)
    for k, chunk in enumerate(read_shard_ranges(array, 1, spans)):
        fmt.decode_into(chunk, out[k], k)
    np.testing.assert_array_equal(out, np.stack([data[6], data[4], np.zeros(SAMPLE, np.float16)]))
    # shard 2 has no object: no index, and a read gives nothing
    assert sync(get_shard_index(array, 2, fmt)) is None
    assert read_shard_ranges(array, 2, [range(0, 4), None]) == [None, None]


# ----------------------------------------------------------------------------- local writes


@pytest.mark.parametrize("compression", [Compression("blosc"), Compression("none")])
def test_a_local_shard_object_is_its_parts_written_in_order(tmp_path, compression):
    import google_crc32c

    from pipeline.store.shardio import write_shard_parts

    array = _array(tmp_path / "s.zarr", 8, "float16", compression)
    fmt = shard_format(array)
    assert fmt is not None
    data = _samples(4, "float16")
    parts = fmt.parts([fmt.encode_chunk(s) for s in data])
    blob = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert blob == fmt.encode(data)
    crc = write_shard_parts(array, 1, parts)
    assert crc == google_crc32c.value(blob)  # independent of the incremental CRC
    assert _object(tmp_path / "s.zarr", 1) == blob
    np.testing.assert_array_equal(np.asarray(array[4:8]), data)  # zarr reads it
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))


def test_short_writes_and_the_buffer_limit_still_write_every_byte(tmp_path, monkeypatch):
    import os

    import pipeline.store.shardio as shardio

    array = _array(tmp_path / "s.zarr", 8, "uint8", Compression("zstd"))
    fmt = shard_format(array)
    assert fmt is not None
    data = _samples(4, "uint8")
    parts = fmt.parts([fmt.encode_chunk(s) for s in data])
    real, calls = os.writev, []

    def short(fd: int, buffers: list[Any]) -> int:  # at most 7 bytes a call
        calls.append(len(buffers))
        head = b"".join(bytes(b) for b in buffers)[:7]
        return real(fd, [head])

    monkeypatch.setattr(shardio.os, "writev", short)
    monkeypatch.setattr(shardio, "_IOV_MAX", 2)
    shardio.write_shard_parts(array, 0, parts)
    assert max(calls) == 2
    assert len(calls) > len(parts)
    assert _object(tmp_path / "s.zarr", 0) == fmt.encode(data)


def test_a_failed_write_leaves_the_old_object_and_no_partial_file(tmp_path, monkeypatch):
    import errno
    import os

    import pipeline.store.shardio as shardio

    array = _array(tmp_path / "s.zarr", 8, "float16", Compression("blosc"))
    fmt = shard_format(array)
    assert fmt is not None
    old = _samples(4, "float16", seed=1)
    write_images(array, 0, old)
    before = _object(tmp_path / "s.zarr", 0)
    real, calls = os.writev, [0]

    def full(fd: int, buffers: list[Any]) -> int:  # the disk fills after the first call
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buffers[:1])

    monkeypatch.setattr(shardio.os, "writev", full)
    with pytest.raises(OSError, match="No space left"):
        write_images(array, 0, _samples(4, "float16", seed=2))
    assert _object(tmp_path / "s.zarr", 0) == before
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))


def test_a_read_only_store_refuses_the_write(tmp_path):
    from pipeline.store.shardio import write_shard_parts

    array = _array(tmp_path / "s.zarr", 8, "float16", Compression("blosc"))
    fmt = shard_format(array)
    assert fmt is not None
    ro = zarr.open_group(zarr.storage.LocalStore(tmp_path / "s.zarr", read_only=True), mode="r")
    ro = ro["images"]
    parts = fmt.parts([fmt.encode_chunk(s) for s in _samples(4, "float16")])
    with pytest.raises(ValueError, match="read-only"):
        write_shard_parts(ro, 0, parts)
    assert not (tmp_path / "s.zarr" / "images" / "c").exists()


@pytest.mark.parametrize("where", ["local", "local, small blocks", "memory"])
def test_the_crc32c_of_a_stored_object_is_that_of_its_bytes(tmp_path, monkeypatch, where):
    import google_crc32c
    from zarr.core.sync import sync

    import pipeline.store.shardio as shardio

    if where == "local, small blocks":
        monkeypatch.setattr(shardio, "_READ_BLOCK", 100)  # many blocks, a short last one
    target = zarr.storage.MemoryStore() if where == "memory" else tmp_path / "s.zarr"
    array = _array(target, 8, "float16", Compression("blosc"))
    write_images(array, 1, _samples(4, "float16"))
    blob = bytes(sync(shardio.get_shard_object(array, 1)))
    assert len(blob) > 300
    assert shardio.shard_object_crc32c(array, 1) == google_crc32c.value(blob)
    assert shardio.shard_object_crc32c(array, 0) is None  # no object
