"""Benchmark: a run's shard tasks, samples made in the decode threads against batches.

``pipeline.run.prepare`` on the benchmark JPEGs of ``bench_stats``
(300-640 x 240-480, quality 90) to 224x224 float16 normalized samples, the
statistics given, 2 workers, the default codec, two ways in the same process,
interleaved round by round (the fastest round of each counts), with the
decode+resize floor of ``bench_floor`` timed in the same rounds:

- ``in threads``: the default on the CPU: the decode thread that loaded a file
  also normalizes and encodes its samples, and the task hashes them in row
  order and writes the shard object (``pipeline.store.EncodedImages``);
- ``batched``: the path a GPU takes, forced on the CPU by hiding the images'
  format from the shard tasks: the task normalizes batches of
  ``runtime.batch_size`` into an array of its whole shard, then encodes and
  hashes that array.

Both write the same bytes (checked after the first round: every shard object
and record). Printed: images per second of each (the whole ``prepare``: scan,
tasks, verify, final record; imports are done before timing) and the ratios.

    python benchmarks/bench_shard_task.py                      # 1024 images, 3 rounds
    python benchmarks/bench_shard_task.py --images 512 --rounds 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_floor  # noqa: E402
from bench_prepare import _stats_file  # noqa: E402
from bench_stats import dataset  # noqa: E402


def _objects(store: Path) -> dict[str, bytes]:
    names = ("images", "records/sha256", "records/crc32c", "live")
    return {
        str(f.relative_to(store)): f.read_bytes()
        for name in names
        for f in sorted((store / name).rglob("c/**/*"))
        if f.is_file()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import pipeline.store
    from pipeline.config import validate_config
    from pipeline.run import prepare

    src = dataset(args.images, max(args.images, 2000))
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-task-"))
    stats = _stats_file(tmp)

    def run(kind: str) -> float:
        out = tmp / f"{kind.replace(' ', '-')}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cfg = validate_config(
            {
                "source": {"path": str(src)},
                "stats": {"file": str(stats)},
                "transform": {"size": [224, 224], "augment": []},
                "output": {"path": str(out), "shard_size": 256},
                "runtime": {"workers": args.workers, "device": "cpu"},
            }
        )
        hide = mock.patch.object(pipeline.store, "shard_format", return_value=None)
        t0 = time.perf_counter()
        if kind == "floor":
            bench_floor.floor(src, threads=args.workers)
        elif kind == "batched":
            with hide:
                prepare(cfg)
        else:
            prepare(cfg)
        return args.images / (time.perf_counter() - t0)

    try:
        best = {"floor": 0.0, "in threads": 0.0, "batched": 0.0}
        for round_ in range(args.rounds):
            for kind in best:
                best[kind] = max(best[kind], run(kind))
            if round_ == 0:
                a, b = _objects(tmp / "in-threads.zarr"), _objects(tmp / "batched.zarr")
                if a != b:
                    raise SystemExit("the two paths wrote different bytes")
                print(f"{len(a)} objects, the same bytes both ways")
        print(f"{args.images} JPEGs, {args.workers} workers, best of {args.rounds} rounds")
        print("| path | img/s | vs floor |")
        print("|---|---:|---:|")
        for kind, rate in best.items():
            print(f"| {kind} | {rate:.0f} | {rate / best['floor']:.2f} |")
        print(f"in threads / batched: {best['in threads'] / best['batched']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
