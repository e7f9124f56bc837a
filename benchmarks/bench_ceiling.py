"""Benchmark: how close a run can come to the floor: its per-image work without a store.

On the benchmark JPEGs of ``bench_stats`` (300-640 x 240-480, quality 90),
224x224 float16 normalized samples, the statistics given, the default codec,
in one process, the kinds interleaved round by round (the fastest round of
each counts):

- ``floor``: ``bench_floor.floor``, Pillow decode + bilinear resize + centre
  crop in a thread pool (nothing kept, independent of imageprep);
- ``work``: exactly the run's work per image, and nothing else, in a pool of
  the same threads: read and hash the file, decode it at full resolution, its
  value histogram (the file's exact moments), torch resize and crop
  (``TransformPlan.load_measured``), normalize and cast (``finish``), encode
  the sample (``ShardFormat.encode_chunk``), SHA-256 of the samples in row
  order and each shard's object assembled, as a shard task does; no store,
  no Dask, no verify;
- ``work, 1 thread``: the same in one thread (how well the work scales);
- ``work, processes`` (``--processes``): the same in forked worker processes
  that send each sample's bytes and chunk back to be hashed and assembled,
  the way round the GIL;
- ``run``: ``pipeline.run.prepare`` (scan, store, shard tasks, file table,
  verify, final record). Its rate is ``(N - N0) / (t(N) - t(N0))`` from runs
  of ``N0`` and ``N`` images, so its fixed costs (store creation, the last
  shard's write, verify and finish) cancel, as in ``bench_prepare``.

``work / floor`` is the most a run can reach while it computes what it
computes (the exact per-file moments, the checksums, the compression): the
rest of ``run / floor`` is the store and the orchestration. Beside the
throughput, each kind's images per CPU-second (user + kernel, ``os.times``),
cores busy on average and kernel CPU per image (of the round that gave its
best throughput) tell extra work from idle cores.

    python benchmarks/bench_ceiling.py                     # 1024 images (256 for N0), 3 rounds
    python benchmarks/bench_ceiling.py --images 512 --base 128 --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_floor  # noqa: E402
from bench_prepare import _stats_file  # noqa: E402
from bench_stats import dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--base", type=int, default=256, help="N0, the smaller run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--processes",
        action="store_true",
        help="also the work in a pool of forked processes that send the samples back",
    )
    args = ap.parse_args()
    if not 0 < args.base < args.images:
        raise SystemExit("--base must be between 0 and --images")

    import torch
    import zarr

    from pipeline.config import validate_config
    from pipeline.run import _load_measured, prepare
    from pipeline.store import get_array, shard_format
    from pipeline.transforms import TransformPlan

    big = dataset(args.images, max(args.images, 2000))
    small = dataset(args.base, max(args.images, 2000))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    stats = _stats_file(tmp)
    shard = 256

    def config(src: Path, out: Path):  # type: ignore[no-untyped-def]
        return validate_config(
            {
                "source": {"path": str(src)},
                "stats": {"file": str(stats)},
                "transform": {"size": [224, 224], "augment": []},
                "output": {"path": str(out), "shard_size": shard},
                "runtime": {"workers": args.threads, "device": "cpu"},
            }
        )

    def run(src: Path) -> tuple[float, float, float]:
        out = tmp / "run.zarr"
        shutil.rmtree(out, ignore_errors=True)
        start = _clock()
        prepare(config(src, out))
        return _since(start)

    # the run's plan and shard format, from a store it made
    run(small)
    cfg = config(small, tmp / "run.zarr")
    plan = TransformPlan.from_config(cfg, json.loads(stats.read_text()))
    fmt = shard_format(get_array(zarr.open_group(str(tmp / "run.zarr"), mode="r"), "images"))
    if fmt is None:
        raise SystemExit("the store's images are not in a format shardio writes")
    files = [p.relative_to(big).as_posix() for p in sorted(big.rglob("*.jpg"))]

    def one(rel: str) -> tuple[object, object]:
        # the shard task's load of a measured file: read once, SHA-256, full decode,
        # histogram, resize (pipeline.run._load_measured)
        pixels, bits, _moments, _digest = _load_measured(plan, str(big), rel, None)
        sample = plan.finish([pixels], [bits], [torch.Generator()])[0]
        return sample, fmt.encode_chunk(sample)

    def work(threads: int, processes: bool = False) -> tuple[float, float, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # as a run's shard tasks
        _CHILD.update(one=one)  # what a forked worker calls (it inherits this)
        start = _clock()
        try:
            if processes:  # the pool made and shut down inside the timing: its CPU counts
                context = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(threads, mp_context=context) as procs:
                    _consume(procs.map(_one_in_child, files, chunksize=8), fmt, shard)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    _consume(pool.map(one, files), fmt, shard)
        finally:
            torch.set_num_threads(before)
        return _since(start)

    def floor() -> tuple[float, float, float]:
        start = _clock()
        bench_floor.floor(big, threads=args.threads)
        return _since(start)

    n, n0 = args.images, args.base
    kinds = ("floor", "work", "work, 1 thread", *(["work, processes"] * args.processes), "run")
    best = dict.fromkeys(kinds, 0.0)  # images per second of wall time
    cpu = dict.fromkeys(kinds, 0.0)  # images per CPU-second (user + kernel), of that round
    busy = dict.fromkeys(kinds, 0.0)  # cores busy on average, of that round
    kernel = dict.fromkeys(kinds, 0.0)  # kernel CPU ms per image, of that round

    def keep(kind: str, images: int, wall: float, user: float, system: float) -> None:
        if images / wall > best[kind]:
            best[kind], cpu[kind] = images / wall, images / (user + system)
            busy[kind], kernel[kind] = (user + system) / wall, 1e3 * system / images

    try:
        for _ in range(args.rounds):
            keep("floor", n, *floor())
            keep("work", n, *work(args.threads))
            keep("work, 1 thread", n, *work(1))
            if args.processes:
                keep("work, processes", n, *work(args.threads, processes=True))
            small_run, big_run = run(small), run(big)
            keep("run", n - n0, *(b - a for a, b in zip(small_run, big_run, strict=True)))
        print(f"{n} JPEGs ({n0} for the run's base), {args.threads} threads, best of {args.rounds}")
        print("| kind | img/s | vs floor | img/CPU-s | vs floor | cores busy | kernel CPU ms/img |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind in kinds:
            print(
                f"| {kind} | {best[kind]:.0f} | {best[kind] / best['floor']:.2f} | {cpu[kind]:.0f} "
                f"| {cpu[kind] / cpu['floor']:.2f} | {busy[kind]:.2f} | {kernel[kind]:.2f} |"
            )
        print(f"work in {args.threads} threads / in 1: {best['work'] / best['work, 1 thread']:.2f}")
        print(
            f"run / work: {best['run'] / best['work']:.2f} of the throughput, "
            f"{cpu['run'] / cpu['work']:.2f} of the images per CPU-second, "
            f"{busy['run'] / busy['work']:.2f} of the cores busy"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: What a forked worker of ``work(processes=True)`` calls (set before the fork).
_CHILD: dict[str, Any] = {}


def _one_in_child(rel: str) -> tuple[bytes, bytes]:
    """One image's work in a worker process; the sample's bytes and its chunk go back."""
    sample, chunk = _CHILD["one"](rel)
    return sample.tobytes(), bytes(chunk)


def _consume(made: Iterable[tuple[Any, Any]], fmt: Any, shard: int) -> None:
    """What a shard task does with the samples: SHA-256 in row order, each shard's object."""
    digest, chunks = hashlib.sha256(), []
    for sample, chunk in made:
        digest.update(sample)
        chunks.append(chunk)
        if len(chunks) == shard:
            fmt.assemble(chunks)
            digest, chunks = hashlib.sha256(), []
    fmt.assemble(chunks)


def _clock() -> tuple[float, float, float]:
    """Wall time, user CPU and kernel CPU of this process and its reaped children, in seconds."""
    t = os.times()
    return time.perf_counter(), t.user + t.children_user, t.system + t.children_system


def _since(start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Wall, user and kernel seconds since ``start`` (:func:`_clock`)."""
    now = _clock()
    return now[0] - start[0], now[1] - start[1], now[2] - start[2]


if __name__ == "__main__":
    main()
