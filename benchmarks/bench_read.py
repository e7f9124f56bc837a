"""Benchmark: the read side against plain baselines, in one run.

``--images`` JPEGs (300-640 x 240-480, quality 90: the set of bench_stats and
bench_prepare, cached in benchmarks/_data/) are prepared by ``imageprep``'s
run into 224x224 stores: float16 normalized and uint8 pixels, each with zstd 3,
blosc (LZ4, level 5, bitshuffle: the default codec) and no compression
(``--shard-size`` rows per shard). Then, each in its
own process, timed over the work only (wall, and CPU = user + system of the
process, its threads and its worker processes):

reads of every sample, one shard at a time (consumer does nothing):
- ``mmap``: ``np.load(mmap_mode="r")`` of the same decoded float16 bytes,
  sliced shard by shard into float32 tensors (``mmap/f16``: into float16
  tensors, a copy only);
- ``iter_shards``: the float16 stores into float32 (as stored: normalized),
  with and without the check on first read (``verify``), zstd, blosc and
  none; ``/p1``: ``prefetch=1``, one read-ahead thread instead of two;
  ``/f16``: the stored float16 values, no conversion;
- ``zarr``: the floor of any reader that goes through zarr-python: a plain
  ``read_array`` of each shard's rows of ``images`` (no checks, no labels);

one epoch of normalized float32 224x224 batches of 64, 2 worker processes:
- ``imagefolder``: a DataLoader over the JPEGs whose Dataset does Pillow
  decode + resize (shorter side 256) + centre crop 224 + normalize;
- ``ShardDataset``: a DataLoader over the store with the ShardBatchSampler
  (whole-shard reads, verified, each worker on its own shards); uint8 stores
  are normalized at read time (``normalize=True``); ``ShardLoader``: the same
  through the loader (batches gathered in the workers, no per-sample collate);

augmentation (invert p=0.5 + DoG band-pass noise), producing augmented samples:
- ``write-time``: ``imageprep run`` with ``copies: 2`` and the steps (decode,
  resize, augment, normalize, write; statistics given), timed at ``--images``
  and half as many, so that the run's start-up cancels;
- ``on-the-fly``: a ShardLoader over the clean uint8 store with the same steps
  (read, augment, normalize in the 2 workers), one epoch.

Reads and epochs are timed in the steady state: a first pass (cold: the
process opens the store, forks its workers, and checks each shard against its record
the first time it reads it), then ``PASSES`` passes (persistent workers)
whose mean is reported; the first pass is reported beside. Runs are
interleaved over ``--repeat`` rounds; the fastest wall time counts (and the
lowest CPU time), since the machine may be shared.

    python benchmarks/bench_read.py                     # 500 images, shards of 64, 3 rounds
    python benchmarks/bench_read.py --images 200 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stats import dataset  # noqa: E402

SIZE = (224, 224)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BATCH = 64
PASSES = 2  # timed passes after the first one
AUGMENT = [
    {"op": "invert", "p": 0.5},
    {"op": "dog_noise", "band": [0.05, 0.2], "rms": 0.08},
]

# kind -> (group, label)
READS = {
    "mmap": "NumPy memory map -> float32",
    "iter/zstd": "iter_shards zstd 3, verify",
    "iter/zstd/noverify": "iter_shards zstd 3, verify=False",
    "iter/zstd/p1": "iter_shards zstd 3, verify, prefetch=1 (one read-ahead thread)",
    "iter/blosc": "iter_shards blosc lz4, verify",
    "iter/blosc/noverify": "iter_shards blosc lz4, verify=False",
    "iter/blosc/p1": "iter_shards blosc lz4, verify, prefetch=1 (one read-ahead thread)",
    "iter/none": "iter_shards none, verify",
    "iter/none/noverify": "iter_shards none, verify=False",
    "zarr/zstd": "zarr-python read_array per shard, zstd 3 -> float32 (the zarr floor)",
    "zarr/none": "zarr-python read_array per shard, none -> float32 (the zarr floor)",
    "mmap/f16": "NumPy memory map -> float16 (copy only)",
    "iter/none/f16": "iter_shards none, verify, float16 out",
    "iter/none/noverify/f16": "iter_shards none, verify=False, float16 out",
    "zarr/none/f16": "zarr-python read_array per shard, none (the zarr floor)",
}
LOADS = {
    "imagefolder": "ImageFolder loop (Pillow decode+resize+crop+normalize)",
    "ds/f16/zstd": "ShardDataset f16 zstd 3 + sampler",
    "ds/f16/zstd/noverify": "ShardDataset f16 zstd 3 verify=False + sampler",
    "ds/f16/blosc": "ShardDataset f16 blosc lz4 + sampler",
    "ds/f16/none": "ShardDataset f16 none + sampler",
    "ds/u8/zstd": "ShardDataset u8 zstd 3 normalize=True + sampler",
    "ds/u8/blosc": "ShardDataset u8 blosc lz4 normalize=True + sampler",
    "ds/u8/none": "ShardDataset u8 none normalize=True + sampler",
    "loader/f16/zstd": "ShardLoader f16 zstd 3",
    "loader/f16/blosc": "ShardLoader f16 blosc lz4 (the default store)",
    "loader/f16/none": "ShardLoader f16 none",
    "loader/u8/zstd": "ShardLoader u8 zstd 3 normalize=True",
    "loader/u8/blosc": "ShardLoader u8 blosc lz4 normalize=True",
    "loader/u8/none": "ShardLoader u8 none normalize=True",
}
AUGS = {
    "write-time": "run copies=2 + augment (decode, resize, augment, write)",
    "on-the-fly": "ShardLoader u8 zstd + augment, normalize=True",
}


# ----------------------------------------------------------------- setup (parent)


def _stats_file(out: Path) -> Path:
    from pipeline.stats import Stats

    stats = Stats.empty(method="exact")
    stats.mean, stats.std = list(MEAN), list(STD)
    stats.var = [s * s for s in STD]
    path = out / "stats.json"
    stats.save(path)
    return path


def _config(src: Path, out: Path, *, dtype: str, codec: str, shard: int, workers: int, **t):
    from pipeline.config import validate_config

    compression = {"codec": codec, "level": {"zstd": 3, "blosc": 5, "none": None}[codec]}
    return validate_config(
        {
            "source": {"path": str(src)},
            "stats": {"file": str(_stats_file(out.parent))},
            "transform": {"size": list(SIZE), "normalize": dtype != "uint8", **t},
            "output": {
                "path": str(out),
                "dtype": dtype,
                "shard_size": shard,
                "compression": compression,
            },
            "runtime": {"workers": workers, "device": "cpu"},
        }
    )


def prepare_stores(src: Path, work: Path, shard: int, workers: int) -> dict[str, Path]:
    import numpy as np

    from pipeline.run import prepare
    from pipeline.store import get_array, open_group, read_array

    stores = {}
    for dtype, short in (("float16", "f16"), ("uint8", "u8")):
        for codec in ("zstd", "blosc", "none"):
            out = work / f"{short}-{codec}.zarr"
            if not out.exists():
                prepare(_config(src, out, dtype=dtype, codec=codec, shard=shard, workers=workers))
            stores[f"{short}/{codec}"] = out
    npy = work / "f16.npy"
    if not npy.exists():
        images = read_array(get_array(open_group(stores["f16/none"]), "images"))
        np.save(npy, images)
    stores["npy"] = npy
    return stores


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in (path / "images").rglob("*") if f.is_file())


# ----------------------------------------------------------------- children


def _cpu() -> float:
    """CPU seconds of this process, its threads and its children (live or reaped)."""
    import psutil

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            live += t.user + t.system
        except psutil.Error:  # ended meanwhile: counted in RUSAGE_CHILDREN
            pass
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + live


def _reads(kind: str, stores: dict[str, str], shard: int):
    """A function that reads every sample once and returns the count."""
    import numpy as np
    import torch

    from pipeline.reader import iter_shards

    if kind.startswith("mmap"):

        def mmap_pass() -> int:
            m = np.load(stores["npy"], mmap_mode="r")
            n = 0
            for start in range(0, m.shape[0], shard):
                block = torch.from_numpy(np.array(m[start : start + shard]))
                if kind == "mmap":
                    block = block.to(torch.float32)
                n += block.shape[0]
            return n

        return mmap_pass
    parts = kind.split("/")
    dtype = torch.float16 if parts[-1] == "f16" else torch.float32
    if kind.startswith("zarr"):
        from pipeline.store import get_array, open_group, read_array

        def zarr_pass() -> int:
            images = get_array(open_group(stores[f"f16/{parts[1]}"]), "images")
            n = 0
            for start in range(0, images.shape[0], shard):
                block = torch.from_numpy(read_array(images, slice(start, start + shard)))
                n += block.to(dtype).shape[0]
            return n

        return zarr_pass

    def iter_pass() -> int:
        blocks = iter_shards(
            stores[f"f16/{parts[1]}"],
            verify="noverify" not in parts,
            dtype=dtype,
            prefetch=1 if "p1" in parts else 2,  # prefetch 2: two read-ahead threads
        )
        return sum(images.shape[0] for images, _ in blocks)

    return iter_pass


class ImageFolderLike:
    """The loop a user writes: Resize(256) + CenterCrop(224) + ToTensor + Normalize."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            im = im.crop((left, top, left + 224, top + 224))
            x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return (x - mean) / std, i % 10


def _epochs(kind: str, stores: dict[str, str], src: str, workers: int):
    """A function that runs one epoch (persistent workers) and returns the sample count."""
    import torch
    from torch.utils.data import DataLoader

    from pipeline.reader import ShardDataset, ShardLoader
    from pipeline.sampler import ShardBatchSampler

    torch.set_num_threads(1)
    persistent = {"num_workers": workers, "persistent_workers": workers > 0}
    if kind == "imagefolder":
        files = sorted(Path(src).rglob("*.jpg"))
        loader = DataLoader(ImageFolderLike(files), batch_size=BATCH, shuffle=True, **persistent)
        epochs = [0]

        def set_epoch() -> None:
            pass

    else:
        parts = kind.split("/")
        store = stores["u8/zstd"] if kind == "on-the-fly" else stores[f"{parts[1]}/{parts[2]}"]
        ds = ShardDataset(
            store,
            normalize=True if kind == "on-the-fly" or parts[1] == "u8" else None,
            verify="noverify" not in parts,
            augment=AUGMENT if kind == "on-the-fly" else (),
        )
        epochs = [0]
        if kind == "on-the-fly" or parts[0] == "loader":
            loader = ShardLoader(ds, BATCH, **persistent)

            def set_epoch() -> None:
                loader.set_epoch(epochs[0])

        else:
            sampler = ShardBatchSampler(ds, BATCH, num_workers=workers)
            loader = DataLoader(ds, batch_sampler=sampler, **persistent)

            def set_epoch() -> None:
                sampler.set_epoch(epochs[0])

    def epoch() -> int:
        set_epoch()
        epochs[0] += 1
        n = 0
        for x, _ in loader:
            if x.dtype != torch.float32 or x.shape[1:] != (3, *SIZE):
                raise SystemExit(f"{kind}: got {x.dtype} {tuple(x.shape)}")
            n += int(x.shape[0])
        return n

    return epoch


def _write_time(src: str, work: str, shard: int, workers: int) -> int:
    from pipeline.run import prepare

    out = Path(work) / "aug-write.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cfg = _config(
        Path(src),
        out,
        dtype="float16",
        codec="zstd",
        shard=shard,
        workers=workers,
        copies=2,
        augment=AUGMENT,
    )
    result = prepare(cfg)
    shutil.rmtree(out, ignore_errors=True)
    return int(result.samples)


def child(kind: str, stores: dict[str, str], src: str, work: str, shard: int, workers: int):
    """Time one kind: a first (cold) pass, then ``PASSES`` passes (the steady state)."""
    # imports first: the timed part is the work only
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch.utils.data  # noqa: F401

    import pipeline.reader
    import pipeline.run  # noqa: F401

    if kind.startswith("write-time"):
        t0, c0 = time.perf_counter(), _cpu()
        n = _write_time(src if kind == "write-time" else stores["src_half"], work, shard, workers)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        print(
            json.dumps(
                {"n": n, "first_wall_s": wall, "first_cpu_s": cpu, "wall_s": wall, "cpu_s": cpu}
            )
        )
        return
    t0, c0 = time.perf_counter(), _cpu()
    run = _reads(kind, stores, shard) if kind in READS else _epochs(kind, stores, src, workers)
    n = run()
    first_wall, first_cpu = time.perf_counter() - t0, _cpu() - c0
    t0, c0 = time.perf_counter(), _cpu()
    for _ in range(PASSES):
        if run() != n:
            raise SystemExit(f"{kind}: passes of different sizes")
    wall, cpu = (time.perf_counter() - t0) / PASSES, (_cpu() - c0) / PASSES
    print(
        json.dumps(
            {
                "n": n,
                "first_wall_s": first_wall,
                "first_cpu_s": first_cpu,
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
    )


def timed(kind: str, args: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "_child", kind, *args], capture_output=True, text=True
    )
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"{kind} failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the fastest run counts")
    ap.add_argument("--work", type=Path, default=HERE / "_data" / "bench-read")
    kinds = [*READS, *LOADS, *AUGS]
    ap.add_argument("--kinds", nargs="+", default=kinds, choices=kinds)
    args = ap.parse_args()
    src = dataset(args.images, args.images)
    work = args.work / f"n{args.images}-s{args.shard_size}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stores = prepare_stores(src, work, args.shard_size, args.workers)
    print(f"stores ready in {time.perf_counter() - t0:.0f} s under {work}", flush=True)
    paths = {k: str(v) for k, v in stores.items()}
    paths["src_half"] = str(dataset(args.images // 2, args.images))
    child_args = [json.dumps(paths), str(src), str(work), str(args.shard_size), str(args.workers)]
    todo = [k for k in args.kinds for k in ([k, "write-time/half"] if k == "write-time" else [k])]
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for kind in todo:
            r = timed(kind, child_args)
            runs.setdefault(kind, []).append(r)
            print(
                f"  [{rep + 1}] {kind:24s} n={r['n']:5d}  first pass: wall {r['first_wall_s']:6.2f}"
                f" s cpu {r['first_cpu_s']:6.2f} s;  then per pass: wall {r['wall_s']:6.2f} s"
                f"  cpu {r['cpu_s']:6.2f} s",
                flush=True,
            )
    best = {
        k: {
            "n": rs[0]["n"],
            **{key: min(r[key] for r in rs) for key in ("wall_s", "cpu_s", "first_wall_s")},
        }
        for k, rs in runs.items()
    }
    if "write-time" in best and "write-time/half" in best:
        # two sizes: the run's start-up (scan, validation, store creation) cancels
        full, half = best["write-time"], best.pop("write-time/half")
        best["write-time"] = {
            key: full[key] - half[key] for key in ("n", "wall_s", "cpu_s", "first_wall_s")
        }
    command = "python benchmarks/bench_read.py " + " ".join(sys.argv[1:])
    print(
        f"\n`{command.strip()}` ({os.cpu_count()} CPUs, {args.images} images, 224x224, "
        f"shards of {args.shard_size}, batches of {BATCH}, {args.workers} workers; "
        f"steady state: the mean of {PASSES} passes after a first one)\n"
    )

    def table(group: dict[str, str], base: str, title: str) -> None:
        present = [k for k in group if k in best]
        if not present:
            return
        ref = best.get(base)
        print(
            f"| {title} | samples/s | ms/sample wall | ms/sample CPU | vs {base} (wall) "
            f"| vs {base} (CPU) | first pass, ms/sample wall |"
        )
        print("|---|---|---|---|---|---|---|")
        for k in present:
            r = best[k]
            per = r["wall_s"] / r["n"]
            cpu = r["cpu_s"] / r["n"]
            if ref is None:
                vs_wall = vs_cpu = "-"
            else:
                vs_wall = f"{(ref['wall_s'] / ref['n']) / per:.2f}"
                vs_cpu = f"{(ref['cpu_s'] / ref['n']) / cpu:.2f}"
            print(
                f"| {group[k]} | {1 / per:.0f} | {1e3 * per:.3f} | {1e3 * cpu:.3f} | {vs_wall} "
                f"| {vs_cpu} | {1e3 * r['first_wall_s'] / r['n']:.3f} |"
            )
        print()

    table({k: v for k, v in READS.items() if not k.endswith("f16")}, "mmap", "read")
    table({k: v for k, v in READS.items() if k.endswith("f16")}, "mmap/f16", "read, float16 out")
    table(LOADS, "imagefolder", "DataLoader epoch")
    table(AUGS, "write-time", "augmented samples")
    print("| store (images array) | bytes on disk | bytes per sample | vs float16 raw |")
    print("|---|---|---|---|")
    raw = _bytes(stores["npy"])
    for key in ("f16/zstd", "f16/blosc", "f16/none", "u8/zstd", "u8/blosc", "u8/none"):
        size = _bytes(stores[key])
        print(f"| {key} | {size:,} | {size / args.images:,.0f} | {size / raw:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(
            sys.argv[2],
            json.loads(sys.argv[3]),
            sys.argv[4],
            sys.argv[5],
            int(sys.argv[6]),
            int(sys.argv[7]),
        )
    else:
        main()
