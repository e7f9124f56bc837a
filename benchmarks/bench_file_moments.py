"""Benchmark: a shard's file table from its 8-bit histograms, at once against file by file.

``FileMoments.of_histograms`` on the value histograms of N of the benchmark
JPEGs (``bench_stats``: 300-640 x 240-480), as a shard task calls it, against
the per-file path the library keeps for 16-bit files, run on the same 8-bit
files (NumPy dot products per channel, twice, ``np.flatnonzero`` for min and
max: what 8-bit files went through before, less the ``Fraction`` each std
then also built). Both give the same table (checked before timing). Printed:
milliseconds per call (best of the rounds) and the ratio.

    python benchmarks/bench_file_moments.py               # 256 files (one shard), 20 rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stats import dataset  # noqa: E402


def per_file(paths, histograms, digests):  # type: ignore[no-untyped-def]
    """The per-file path the library keeps for 16-bit files, run on 8-bit ones.

    ``pipeline.stats.files._dot`` per channel for S1 and S2, ``np.flatnonzero``
    for min and max, and ``image_values`` (the sums again, then each std by
    ``sqrt_ratio``): what every 8-bit file went through before, except that
    each std then also built a ``Fraction``.
    """
    from pipeline.stats import FileMoments
    from pipeline.stats.files import _dot, image_values

    out = FileMoments.zeros(paths, digests)
    values = np.arange(256, dtype=np.int64)
    for i, h in enumerate(histograms):
        out.n[i] = h.pixels
        for c in range(3):
            counts = h.counts[c]
            nz = np.flatnonzero(counts)
            out.s1[i, c] = 257 * _dot(counts, values)
            out.s2[i, c] = 257 * 257 * _dot(counts, values * values)
            out.min[i, c] = 257 * int(nz[0]) if nz.size else 0
            out.max[i, c] = 257 * int(nz[-1]) if nz.size else 0
        out.image_mean[i], out.image_std[i] = image_values(h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    from pipeline.decode import decode_histogram
    from pipeline.stats import FileMoments

    files = sorted(dataset(args.files, max(args.files, 2000)).rglob("*.jpg"))[: args.files]
    paths = [str(p) for p in files]
    histograms = [decode_histogram(p) for p in files]
    digests = [bytes(32)] * len(files)
    a = FileMoments.of_histograms(paths, histograms, digests)
    b = per_file(paths, histograms, digests)
    for field in ("n", "s1", "s2", "min", "max", "image_mean", "image_std"):
        if not np.array_equal(getattr(a, field), getattr(b, field)):
            raise SystemExit(f"{field} differs between the two")
    best = {"at once": float("inf"), "per file": float("inf")}
    for _ in range(args.rounds):
        for kind, fn in (("at once", FileMoments.of_histograms), ("per file", per_file)):
            t0 = time.perf_counter()
            fn(paths, histograms, digests)
            best[kind] = min(best[kind], time.perf_counter() - t0)
    print(f"{len(files)} 8-bit files, the same table both ways")
    print("| file table | ms per call | ms per file |")
    print("|---|---:|---:|")
    for kind, t in best.items():
        print(f"| {kind} | {1e3 * t:.1f} | {1e3 * t / len(files):.3f} |")
    print(f"per file / at once: {best['per file'] / best['at once']:.1f}x")


if __name__ == "__main__":
    main()
