"""HTTP requests (and time) per shard on an S3-compatible server (moto, loopback).

One ``images`` array of 3x64x64 float16 samples, shards of 64 samples, zstd
level 3 (the default compression). Two chunkings: one sample per chunk inside
a shard (the store layout of today) and one chunk per shard (no sharding).
Requests are counted at the server (every HTTP request moto answers), so they
include whatever s3fs and zarr's ``FsspecStore`` add (HEADs, LISTs). Then the
same for a whole :func:`pipeline.store.write_shard` (every array of the
store, the record, ``done`` last) on a store copied to the server.

Run: ``python benchmarks/bench_storage.py`` (needs the test extra: moto[server]).

Latest result (zarr 3.1.6, s3fs 2026.9.0, moto 5.2.5; requests are exact, the
milliseconds are noisy: 2 shared cores, moto in the same process):

    layout                      op                        requests
    chunk 1 sample, shard 64    open array                3 (GET 3)
    chunk 1 sample, shard 64    write shard               2 (GET 1, PUT 1)
    chunk 1 sample, shard 64    read shard                1 (GET 1)
    chunk 1 sample, shard 64    read 1 sample             2 (GET 2: shard index, chunk)
    chunk = shard, unsharded    write shard               1 (PUT 1)
    chunk = shard, unsharded    read shard                1 (GET 1)
    today's store layout        write_shard, all arrays  20 (GET 10, PUT 7, POST 3)

A shard is one PUT: zarr's sharding codec encodes the 64 inner chunks and the
index into one object. Before writing, zarr 3.1 reads the existing shard (one
GET; a 404 on the first write), even when the write covers the whole shard.
Of write_shard's 20 requests (store format 2, with ``live``), 9 GETs are
metadata (the root group and the 8 arrays it opens); the POSTs are deletes of
chunks equal to the fill value (``done = False`` and ``live = False`` first, an
all-zero ``copy_index``). Without ``max_concurrency=1``
(pipeline.storage's default for s3) s3fs sends a HEAD before every GET.
obstore (0.12.1, zarr's ObjectStore) makes the same requests, with less client
time per object on reads (about 7 ms against 10-60 ms for a 1.4 MB object
here).
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.config import CompressionConfig
from pipeline.storage import resolve_location, zarr_store
from pipeline.store import StoreLayout, create_store, write_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test server, tests/s3server.py
from tests.s3server import MotoS3Server

SHAPE = (3, 64, 64)
SHARD = 64


def _count(server: MotoS3Server, fn: Any) -> tuple[collections.Counter[str], float]:
    server.reset_log()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return collections.Counter(r.method for r in server.log()), dt


def _fmt(c: collections.Counter[str]) -> str:
    return f"{sum(c.values()):3d} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})"


def _ops(loc: Any, arr: zarr.Array, data: np.ndarray) -> list[tuple[str, Any]]:
    return [
        ("open array", lambda: zarr.open_array(zarr_store(loc, read_only=True), path="images")),
        ("write shard 0", lambda: arr.__setitem__(slice(0, SHARD), data[:SHARD])),
        ("write shard 0 again", lambda: arr.__setitem__(slice(0, SHARD), data[:SHARD])),
        ("read shard 0", lambda: arr[0:SHARD]),
        ("read 1 sample", lambda: arr[5]),
        ("write 1 sample (partial)", lambda: arr.__setitem__(70, data[70])),
    ]


def main() -> None:
    server = MotoS3Server()
    server.start()
    opts = server.storage_options()
    import s3fs

    s3fs.S3FileSystem(**opts).mkdir("bench")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2 * SHARD, *SHAPE)).astype(np.float16)
    compressors = CompressionConfig().compression().compressors()
    print(f"images (N=128, 3, 64, 64) float16, shard {SHARD} samples, zstd 3; requests per op")
    print(f"{'layout':32s} {'op':24s} {'requests':28s} ms")
    for name, chunks, shards in [
        ("chunk 1 sample, shard 64", (1, *SHAPE), (SHARD, *SHAPE)),
        ("chunk = shard (64), unsharded", (SHARD, *SHAPE), None),
    ]:
        loc = resolve_location(
            f"s3://bench/{name.split(',')[0].replace(' ', '-')}.zarr",
            key="output.path",
            storage_options=opts,
        )
        group = zarr.open_group(zarr_store(loc, read_only=False), mode="w", zarr_format=3)
        arr = group.create_array(
            "images",
            shape=data.shape,
            dtype="float16",
            chunks=chunks,
            shards=shards,
            compressors=compressors,
            fill_value=0,
        )
        arr = arr.with_config({"write_empty_chunks": True})
        for op, fn in _ops(loc, arr, data):
            c, dt = _count(server, fn)
            print(f"{name:32s} {op:24s} {_fmt(c):28s} {dt * 1e3:6.1f}")
        np.testing.assert_array_equal(arr[0:SHARD], data[:SHARD])

    # the whole write_shard of today's store (every array, record, done last)
    layout = StoreLayout(
        n_samples=2 * SHARD,
        channels=3,
        height=64,
        width=64,
        dtype="float16",
        shard_size=SHARD,
    )
    local = tempfile.mkdtemp() + "/ds.zarr"
    create_store(local, layout, attrs={"config_identity": "x"}, paths=["a.png"])
    loc = resolve_location("s3://bench/full.zarr", key="output.path", storage_options=opts)
    loc.fs.put(local, loc.path, recursive=True)
    n = SHARD

    def one_shard() -> None:
        group = zarr.open_group(zarr_store(loc, read_only=False), mode="r+", zarr_format=3)
        write_shard(
            group,
            0,
            images=data[:n],
            labels=np.zeros(n, int),
            source_index=np.arange(n),
            copy_index=np.zeros(n, int),
        )

    c, dt = _count(server, one_shard)
    label, op = "store layout of today", "write_shard (open+all)"
    print(f"{label:32s} {op:24s} {_fmt(c):28s} {dt * 1e3:6.1f}")
    server.stop()


if __name__ == "__main__":
    main()
