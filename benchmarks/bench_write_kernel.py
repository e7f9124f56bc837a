"""Benchmark: the kernel CPU of writing a shard-sized file, on this machine, in its states.

A run writes each shard object once (~61 MB for 256 float16 samples of
224x224 with the default codec). On some virtual machines (here: Firecracker
with ``virtio_balloon`` free page reporting) the kernel's first write into a
page the host has taken back costs far more than a write into a page just
freed. This script writes files of that size the way the store does (one
``writev`` of 256 chunks) and prints the kernel CPU per MB of the write
thread (``RUSAGE_THREAD``) for:

- ``new``: a new file each time (what a run does: every shard is a new file,
  kept);
- ``new, the last one deleted first``: a new file after deleting the previous
  one (its pages are freed just before: what a benchmark that deletes its
  store between rounds sees);
- ``rewrite``: the same file truncated and written again.

It compares nothing of imageprep: it tells how much of a run's kernel CPU
(``bench_ceiling.py``'s last column, ``profile_run.py``'s object-write row)
is this machine's.

    python benchmarks/bench_write_kernel.py                  # in a temporary folder
    python benchmarks/bench_write_kernel.py --dir /dev/shm --files 8
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--files", type=int, default=6, help="files per way")
    ap.add_argument("--chunk-kb", type=int, default=240, help="size of each of the 256 chunks")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-write-", dir=args.dir))
    chunks = [os.urandom(args.chunk_kb * 1000) for _ in range(256)]
    mb = sum(len(c) for c in chunks) / 1e6
    limit = os.sysconf("SC_IOV_MAX")

    def write(path: Path) -> float:
        """Kernel CPU ms of this thread to write ``chunks`` as ``path``."""
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
        try:
            for i in range(0, len(chunks), limit):
                os.writev(fd, chunks[i : i + limit])
        finally:
            os.close(fd)
        return 1e3 * (resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before)

    ways: dict[str, list[float]] = {"new": [], "new, the last one deleted first": [], "rewrite": []}
    try:
        for i in range(args.files):
            ways["new"].append(write(root / f"kept-{i}"))
        for i in range(args.files):
            if i:
                (root / f"deleted-{i - 1}").unlink()
            ways["new, the last one deleted first"].append(write(root / f"deleted-{i}"))
        for _ in range(args.files):
            ways["rewrite"].append(write(root / "rewritten"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.files} files of {mb:.1f} MB each in {root.parent}, one writev of 256 chunks")
    print("| way | kernel CPU ms per file (each) | median ms/MB |")
    print("|---|---|---:|")
    for way, ms in ways.items():
        each = " ".join(f"{m:.0f}" for m in ms)
        print(f"| {way} | {each} | {statistics.median(ms) / mb:.2f} |")
    new = statistics.median(ways["new"])
    reused = statistics.median(ways["new, the last one deleted first"])
    print(f"new / new with the last one deleted first (median kernel CPU): {new / reused:.1f}x")


if __name__ == "__main__":
    main()
