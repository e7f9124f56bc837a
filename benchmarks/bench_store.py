"""Store benchmark: shard writes, verify and reads against plain baselines in the same run.

Writes ``--samples`` smooth random float16 images (ImageNet-like statistics
after normalization, so they compress like real data, not like white noise)
of ``--size`` x ``--size`` pixels:

- ``write_shard`` (sharded Zarr, records, checksums), sequential and with
  ``--threads`` threads, against two baselines: ``np.save`` of the same bytes
  (raw, uncompressed, one file) and a plain Zarr array with one chunk per
  sample and no sharding/records (same codec);
- ``verify`` (re-read and re-hash everything);
- reads: ``iter_shards`` (one read per shard), ``ShardDataset`` through a
  shuffled ``DataLoader`` (batch 64, ``__getitems__``) and item by item,
  against ``np.load(mmap_mode="r")`` of the raw file.

Usage: ``python benchmarks/bench_store.py [--samples 2048] [--size 64] [--shard 256]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader

from pipeline.reader import ShardDataset, iter_shards
from pipeline.store import Compression, StoreLayout, create_store, verify, write_shard


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Low-frequency random images plus a little noise, normalized, as float16."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, size // 8 + 1, size // 8 + 1))
    up = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :size, :size]
    x = 0.8 * up + 0.2 * rng.random((n, 3, size, size))
    return ((x - 0.45) / 0.25).astype(np.float16)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--shard", type=int, default=256)
    parser.add_argument("--codec", default="zstd", choices=["zstd", "blosc", "gzip", "none"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    images = smooth_images(args.samples, args.size)
    n = args.samples
    labels = np.arange(n, dtype=np.int64) % 10
    src = np.arange(n, dtype=np.int64)
    cpy = np.zeros(n, dtype=np.int32)
    mb = images.nbytes / 2**20
    compression = Compression(args.codec)
    layout = StoreLayout(
        n_samples=n,
        channels=3,
        height=args.size,
        width=args.size,
        dtype="float16",
        shard_size=args.shard,
        compression=compression,
    )
    attrs = {
        "classes": [str(i) for i in range(10)],
        "config": {"transform": {"normalize": True}},
        "stats": {"mean": [0.45] * 3, "std": [0.25] * 3},
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    print(
        f"{n} samples of 3x{args.size}x{args.size} float16 ({mb:.1f} MiB), shard {args.shard}, "
        f"codec {compression.codec} {compression.level}, torch {torch.__version__}, "
        f"zarr {zarr.__version__}, {os.cpu_count()} CPUs"
    )

    def shard(i: int) -> None:
        r = layout.shard_rows(i)
        s = slice(r.start, r.stop)
        write_shard(
            tmp / "ours.zarr",
            i,
            images=images[s],
            labels=labels[s],
            source_index=src[s],
            copy_index=cpy[s],
        )

    def ours(threads: int) -> float:
        shutil.rmtree(tmp / "ours.zarr", ignore_errors=True)
        create_store(tmp / "ours.zarr", layout, attrs=attrs, paths=["x"])
        if threads == 1:
            return timed(lambda: [shard(i) for i in range(layout.n_shards)])
        with ThreadPoolExecutor(threads) as pool:
            return timed(lambda: list(pool.map(shard, range(layout.n_shards))))

    def npy() -> None:
        np.save(tmp / "raw.npy", images)

    def plain_zarr() -> None:
        shutil.rmtree(tmp / "plain.zarr", ignore_errors=True)
        arr = zarr.create_array(
            tmp / "plain.zarr",
            shape=images.shape,
            dtype="float16",
            chunks=(1, 3, args.size, args.size),
            compressors=compression.compressors(),
        )
        for i in range(layout.n_shards):
            r = layout.shard_rows(i)
            arr[r.start : r.stop] = images[r.start : r.stop]

    t_npy = timed(npy)
    t_plain = timed(plain_zarr)
    t_ours = ours(1)
    t_ours_mt = ours(args.threads)
    disk = sum(f.stat().st_size for f in (tmp / "ours.zarr" / "images").rglob("*") if f.is_file())
    files_ours = sum(1 for f in (tmp / "ours.zarr").rglob("*") if f.is_file())
    files_plain = sum(1 for f in (tmp / "plain.zarr").rglob("*") if f.is_file())
    t_verify = timed(lambda: verify(tmp / "ours.zarr"))

    print("\nwrite                         MiB/s   vs np.save   vs plain zarr")
    for name, t in [
        ("np.save (raw, 1 file)", t_npy),
        ("plain zarr (chunk/sample)", t_plain),
        ("write_shard, 1 thread", t_ours),
        (f"write_shard, {args.threads} threads", t_ours_mt),
    ]:
        print(f"{name:28s} {mb / t:7.1f}   {t_npy / t:9.2f}x   {t_plain / t:11.2f}x")
    print(f"verify (read + sha256)       {mb / t_verify:7.1f}")
    print(
        f"images on disk {disk / 2**20:.1f} MiB (ratio {images.nbytes / disk:.2f}x); "
        f"files: sharded {files_ours}, plain {files_plain}"
    )

    # reads
    raw = np.load(tmp / "raw.npy", mmap_mode="r")
    perm = np.random.default_rng(1).permutation(n)

    def read_raw_random() -> None:
        for i in perm:
            torch.from_numpy(np.asarray(raw[i], dtype=np.float32))

    def read_raw_seq() -> None:
        for start in range(0, n, args.shard):
            torch.from_numpy(np.asarray(raw[start : start + args.shard], dtype=np.float32))

    ds = ShardDataset(tmp / "ours.zarr")

    def read_loader() -> None:
        for _ in DataLoader(ds, batch_size=64, shuffle=True, num_workers=0):
            pass

    def read_items() -> None:
        for i in perm[: min(n, 512)]:
            ds[int(i)]

    t_raw_seq = timed(read_raw_seq)
    t_raw_rand = timed(read_raw_random)
    t_iter = timed(lambda: list(iter_shards(tmp / "ours.zarr")))
    t_loader = timed(read_loader)
    t_items = timed(read_items) * n / min(n, 512)
    print("\nread (to float32 tensors)              samples/s   vs np.load mmap")
    print(f"np.load mmap, sequential blocks       {n / t_raw_seq:10.0f}")
    print(f"iter_shards (one read per shard)      {n / t_iter:10.0f}   {t_raw_seq / t_iter:8.3f}x")
    print(f"np.load mmap, random items            {n / t_raw_rand:10.0f}")
    ratio = t_raw_rand / t_loader
    print(f"DataLoader(ShardDataset), shuffled    {n / t_loader:10.0f}   {ratio:8.3f}x")
    print(
        f"ShardDataset[i], random items         {n / t_items:10.0f}   {t_raw_rand / t_items:8.3f}x"
    )
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
