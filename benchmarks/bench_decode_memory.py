"""Benchmark: peak memory of the run's decode path on huge, legal images.

Writes N grayscale 9000 x 9000 PNGs (~100 KB each: mostly flat, legal under
Pillow's 89.5 MP limit) into a temporary folder, then measures in fresh
subprocesses the peak RSS *growth* (``VmHWM`` reset through
``/proc/self/clear_refs`` after imports and a warm-up, minus ``VmRSS`` then)
of three ways to process the same files:

- stats:  ``decode_histogram`` per file, one after the other (what a stats chunk does);
- before: ``ops.resize_to(to_tensor(decode(path, draft=size)), size)`` per file in a pool of
          ``--threads`` threads (what ``TransformPlan.load`` did), with this checkout's
          ``decode`` or, with ``--before-src``, an older one;
- after:  ``decode_for_size(path, size)`` in the same pool.

    python benchmarks/bench_decode_memory.py                 # 1 and 8 files, 8 threads
    python benchmarks/bench_decode_memory.py --counts 1 --threads 2 --mode RGB
    git archive 9d659cc pipeline ops | tar -x -C /tmp/before
    python benchmarks/bench_decode_memory.py --before-src /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, re, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.decode import decode, decode_histogram
from ops import resize_to
from pipeline.transforms import to_tensor

path, files, threads, size = sys.argv[1], sys.argv[2:-2], int(sys.argv[-2]), int(sys.argv[-1])
size = (size, size)
torch.set_num_threads(1)


def status():
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def stats(p):
    decode_histogram(p)


def before(p):
    resize_to(to_tensor(decode(p, draft=size)), size)


def after(p):
    from pipeline.decode import decode_for_size

    decode_for_size(p, size)


work = {"stats": stats, "before": before, "after": after}[path]
small = Path(files[0]).with_name("warmup.png")
Image.fromarray(np.arange(64 * 96, dtype=np.uint8).reshape(64, 96)).save(small)
work(small)
Path("/proc/self/clear_refs").write_text("5")
base = status()["VmRSS"]
t0 = time.perf_counter()
if path == "stats":
    for f in files:
        work(f)
else:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, files))
wall = time.perf_counter() - t0
print(json.dumps({"growth_mb": (status()["VmHWM"] - base) / 1024, "base_mb": base / 1024,
                  "wall_s": wall}))
"""


def make_files(folder: Path, n: int, side: int, mode: str) -> list[str]:
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        a = np.zeros((side, side), np.uint8)
        a[::97, :] = 200 + i
        a[:, ::89] = 50
        im = Image.fromarray(a)
        if mode != "L":
            im = im.convert(mode)
        p = folder / f"big{i}.png"
        im.save(p)
        out.append(str(p))
    return out


def measure(
    path: str, files: list[str], threads: int, size: int, src: str | None = None
) -> dict[str, float]:
    cmd = [sys.executable, "-c", CHILD, path, *files, str(threads), str(size)]
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--side", type=int, default=9000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mode", default="L", help="Pillow mode of the PNGs (L, RGB, P, I;16)")
    ap.add_argument(
        "--before-src",
        help="a folder holding an older pipeline/ (git archive <rev> pipeline ops | tar -x -C DIR)"
        " to measure 'before' with (default: this checkout's decode + ops.resize_to)",
    )
    args = ap.parse_args()
    print(
        f"{args.side}x{args.side} {args.mode} PNGs, target {args.size}x{args.size}, "
        f"{args.threads} threads; peak RSS growth in MB (wall s)"
    )
    print(f"{'files':>5} {'stats':>14} {'before':>14} {'after':>14} {'after/stats':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            files = make_files(folder, n, args.side, args.mode)
            r = {p: measure(p, files, args.threads, args.size) for p in ("stats", "after")}
            r["before"] = measure("before", files, args.threads, args.size, args.before_src)
            r = {p: r[p] for p in ("stats", "before", "after")}
            cells = [f"{r[p]['growth_mb']:7.0f} ({r[p]['wall_s']:4.1f})" for p in r]
            ratio = r["after"]["growth_mb"] / r["stats"]["growth_mb"]
            print(f"{n:>5} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14} {ratio:12.2f}")


if __name__ == "__main__":
    main()
