"""Benchmark: what one shard write costs, and how much of it is zarr's per-chunk pipeline.

One shard of ``--samples`` (256) photo samples, 3x224x224 float16 normalized
(``bench_codecs.photo_samples``), written in one process, one thread, to a
fresh store on the local disk, in the ways below; every way's bytes are read
back through zarr and compared bit for bit, and rounds are interleaved (the
best counts). Ratios are against the current layout (``chunk 1``), in the
same run:

- ``write_shard``: :func:`pipeline.shards.write_shard`, what a run does per
  shard (``done`` flag, images, the three 1-D arrays, rows, SHA-256, ``done``);
- ``chunk 1``: ``images[0:S] = shard`` on the store's layout (shard ``S``,
  inner chunk one sample, ``write_empty_chunks=True`` as write_shard sets it);
  then the same with one setting changed: ``write_empty_chunks=False``,
  ``codec_pipeline.batch_size`` = S, ``async.concurrency`` 1 and 64;
- ``chunk S``: the same call with inner chunk = the whole shard (one codec call);
- ``no sharding``: a plain array whose chunk is the whole shard (one object);
- ``hand-built``: the store's layout (1-sample chunks, shard index with
  CRC32C at the end, exactly what zarr writes) built without zarr's codec
  pipeline, as a run now writes it: :func:`pipeline.store.shardio.write_images`
  (each sample compressed with the numcodecs codec zarr's codec wraps, the
  index, one object written);
- reads of the whole shard (``images[0:S]``) for each layout.

CPU time (user + system, all threads) is printed beside wall time.

    python benchmarks/bench_shard_write.py                        # none, zstd-3, blosc lz4
    python benchmarks/bench_shard_write.py --codecs zstd-3 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_codecs import CODECS, normalized, photo_samples  # noqa: E402

MB = 1e6
WRITEV = "object write of encoded chunks: writev, in this thread (now)"
JOINED = "object write of encoded chunks: joined, one zarr store.set (before)"
CRC_NOW = "read: CRC32C of the object, 1 MiB blocks in this thread (verify, now)"
CRC_BEFORE = "read: CRC32C of the object, one zarr store.get (verify, before)"


def _array(path: Path, data: np.ndarray, codec: str, *, chunk: int | None, sharded: bool) -> Any:
    import zarr

    shape = data.shape
    chunks = (chunk or shape[0], *shape[1:])
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype=data.dtype,
        chunks=chunks if sharded else shape,
        shards=shape if sharded else None,
        compressors=CODECS[codec].make(data.dtype.itemsize),
        fill_value=0,
        zarr_format=3,
    )


def hand_built(arr: Any, data: np.ndarray) -> None:
    """Write ``data`` as shard 0 of ``arr`` the way a run does, without zarr's pipeline."""
    from pipeline.store.shardio import write_images

    write_images(arr, 0, data)


def joined_set(arr: Any, index: int, parts: list[Any]) -> int:
    """The object write before ``write_shard_parts``: the parts joined, one zarr ``store.set``."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from pipeline.store.shardio import _key, crc32c

    blob = b"".join(parts)
    buf = default_buffer_prototype().buffer.from_bytes(blob)
    sync(arr.store_path.store.set(_key(arr, index), buf))
    return crc32c(blob)


def whole_crc32c(arr: Any, index: int) -> int:
    """Verify's object check before ``shard_object_crc32c``: one zarr ``store.get``, one CRC."""
    from zarr.core.sync import sync

    from pipeline.store.shardio import crc32c, get_shard_object

    return crc32c(sync(get_shard_object(arr, index)))


def _cpu() -> float:
    return time.process_time()  # every thread of the process, ns resolution


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - w0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--codecs",
        nargs="+",
        default=["none", "zstd-3", "blosc-lz4-5-shuffle", "blosc-lz4-5-bitshuffle"],
        choices=CODECS,
    )
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the stores (local disk)")
    args = ap.parse_args()

    import zarr

    from pipeline.store import Compression, StoreLayout, create_store, write_shard
    from pipeline.store.shardio import shard_format, shard_object_crc32c, write_shard_parts

    data = normalized(photo_samples(args.samples))[0]
    n = data.shape[0]
    mb = data.nbytes / MB
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-", dir=args.tmp))
    print(
        f"one shard of {n} samples, 3x224x224 float16 ({mb:.1f} MB), zarr {zarr.__version__}, "
        f"{os.cpu_count()} CPUs, best of {args.repeat}, stores in {tmp}"
    )
    store_codec = {
        "none": Compression("none", None),
        "zstd-3": Compression("zstd", 3),
        "blosc-lz4-5-shuffle": Compression("blosc", 5, "byte"),  # lz4, byte shuffle
        "blosc-lz4-5-bitshuffle": Compression("blosc", 5, "bit"),  # the default
    }

    def fresh(name: str) -> Path:
        path = tmp / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def check(arr: Any) -> None:
        if not np.array_equal(np.asarray(arr[...]).view(np.uint16), data.view(np.uint16)):
            raise SystemExit(f"{arr} read back different data")

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    sizes: dict[tuple[str, str], int] = {}

    def record(codec: str, name: str, path: Path, wall_cpu: tuple[float, float]) -> None:
        results.setdefault((codec, name), []).append(wall_cpu)
        sizes[(codec, name)] = sum(f.stat().st_size for f in path.rglob("c/**/*") if f.is_file())

    for rep in range(args.repeat):
        for codec in args.codecs:
            # the run's own path, when the config can express the codec
            if codec in store_codec:
                path = fresh("run.zarr")
                layout = StoreLayout(
                    n_samples=n,
                    channels=3,
                    height=224,
                    width=224,
                    dtype="float16",
                    shard_size=n,
                    compression=store_codec[codec],
                )
                attrs = {"config_identity": "x", "source_fingerprint": "x", "classes": []}
                create_store(path, layout, attrs=attrs, paths=["x"])
                z = np.zeros(n, np.int64)
                wc = timed(
                    lambda path=path, z=z: write_shard(
                        path,
                        0,
                        images=data,
                        labels=z,
                        source_index=z,
                        copy_index=z.astype(np.int32),
                    )
                )
                record(codec, "write_shard (current, everything)", path / "images", wc)
                check(zarr.open_array(str(path / "images")))

            variants: list[tuple[str, int | None, bool, dict[str, Any], bool]] = [
                ("chunk 1 (current layout)", 1, True, {}, True),
                ("chunk 1, write_empty_chunks=False", 1, True, {}, False),
                (f"chunk 1, batch_size={n}", 1, True, {"codec_pipeline.batch_size": n}, True),
                ("chunk 1, async.concurrency=1", 1, True, {"async.concurrency": 1}, True),
                ("chunk 1, async.concurrency=64", 1, True, {"async.concurrency": 64}, True),
                (f"chunk {n} (whole shard)", None, True, {}, True),
                (f"no sharding, chunk {n}", None, False, {}, True),
            ]
            for name, chunk, sharded, cfg, empty in variants:
                path = fresh("a.zarr")
                with zarr.config.set(cfg):  # batch_size is read when the pipeline is built
                    arr = _array(path, data, codec, chunk=chunk, sharded=sharded)
                    target = arr.with_config({"write_empty_chunks": empty})
                    wc = timed(lambda target=target: target.__setitem__(slice(0, n), data))
                record(codec, name, path, wc)
                check(arr)
                if not cfg and empty:  # read the whole shard back, per layout
                    with zarr.config.set(cfg):
                        rwc = timed(lambda arr=arr: arr[0:n])
                    results.setdefault((codec, f"read: {name}"), []).append(rwc)
            path = fresh("h.zarr")
            arr = _array(path, data, codec, chunk=1, sharded=True)
            wc = timed(lambda arr=arr: hand_built(arr, data))
            record(codec, "hand-built shard, 1-sample chunks (shardio)", path, wc)
            check(arr)
            # the object write alone, of chunks already encoded (a run encodes them in
            # its decode threads): writev of the parts against the joined bytes through zarr
            fmt = shard_format(arr)
            parts = fmt.parts([fmt.encode_chunk(s) for s in data])
            for name, write in (
                (WRITEV, write_shard_parts),
                (JOINED, joined_set),
            ):
                path = fresh("p.zarr")
                arr = _array(path, data, codec, chunk=1, sharded=True)
                wc = timed(lambda arr=arr, write=write, parts=parts: write(arr, 0, parts))
                record(codec, name, path, wc)
                check(arr)
            # verify's check of that object against its CRC32C: read in blocks against whole
            for name, crc in ((CRC_NOW, shard_object_crc32c), (CRC_BEFORE, whole_crc32c)):
                rwc = timed(lambda arr=arr, crc=crc: crc(arr, 0))
                results.setdefault((codec, name), []).append(rwc)
        print(f"  round {rep + 1} done", flush=True)

    print()
    print(
        "| codec | way | wall s | CPU s | MB/s (CPU) | ms/sample (CPU) | speed vs chunk 1 (CPU) "
        "| stored/raw |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for codec in args.codecs:
        base = min(c for _, c in results[(codec, "chunk 1 (current layout)")])
        for (c, name), runs in results.items():
            if c != codec:
                continue
            wall = min(w for w, _ in runs)
            cpu = min(c for _, c in runs)
            size = sizes.get((codec, name))
            ratio = f"{size / data.nbytes:.3f}" if size else "-"
            vs = f"{base / cpu:.2f}x" if not name.startswith("read") else "-"
            print(
                f"| {codec} | {name} | {wall:.3f} | {cpu:.3f} | {mb / cpu:.0f} | "
                f"{1e3 * cpu / n:.3f} | {vs} | {ratio} |"
            )
    for codec in args.codecs:
        now = min(c for _, c in results[(codec, WRITEV)])
        before = min(c for _, c in results[(codec, JOINED)])
        print(f"{codec}: object write, before / now (CPU): {before / now:.2f}x")
        now = min(c for _, c in results[(codec, CRC_NOW)])
        before = min(c for _, c in results[(codec, CRC_BEFORE)])
        print(f"{codec}: verify's read and CRC32C, before / now (CPU): {before / now:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
