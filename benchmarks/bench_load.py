"""Benchmark: the run's per-file load, Pillow's pixels read in place against a copy.

The load of a measured file (``pipeline.decode.decode_measured``: Pillow
decode, value histogram, torch antialiased resize to 224x224, centre crop) on
the benchmark JPEGs of ``bench_stats`` (300-640 x 240-480, quality 90), in a
thread pool of 1 and 2 threads, two ways in the same process, interleaved
round by round:

- ``in place``: the resize reads Pillow's RGBX pixels through its Arrow
  export (``pipeline.decode._rgbx_view``, the default);
- ``copy``: the resize reads ``np.array(im)``, a copy made through
  ``Image.tobytes`` while holding the GIL (the previous code path; the
  in-place view switched off).

Both give the same bytes (checked on every file before timing). Printed:
images per second (best round) and the ratio in place / copy.

    python benchmarks/bench_load.py                    # 1000 files, 2 threads, 5 rounds
    python benchmarks/bench_load.py --threads 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stats import dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import torch

    import pipeline.decode as decode

    torch.set_num_threads(1)  # as in a shard task
    files = [str(p) for p in sorted(dataset(args.images, max(args.images, 2000)).rglob("*.jpg"))]
    files = files[: args.images]

    def load(path: str) -> torch.Tensor:
        return decode.decode_measured(path, (224, 224))[0]

    def copying() -> Any:
        return mock.patch.object(decode, "_rgbx_view", return_value=None)

    for path in files:
        with copying():
            reference = load(path)
        if not torch.equal(load(path), reference):
            raise SystemExit(f"{path}: the in-place load differs from the copy")
    print(f"{len(files)} JPEGs: the in-place load equals the copy on every file")

    print("| threads | in place img/s | copy img/s | in place / copy |")
    print("|---:|---:|---:|---:|")
    for threads in args.threads:
        best = {"in place": 0.0, "copy": 0.0}
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(args.rounds):
                for kind in best:
                    with copying() if kind == "copy" else nullcontext():
                        t0 = time.perf_counter()
                        for _ in pool.map(load, files):
                            pass
                        rate = len(files) / (time.perf_counter() - t0)
                    best[kind] = max(best[kind], rate)
        ratio = best["in place"] / best["copy"]
        print(f"| {threads} | {best['in place']:.0f} | {best['copy']:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
