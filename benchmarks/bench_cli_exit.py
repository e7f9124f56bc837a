"""Benchmark: a whole ``imageprep run`` process, with and without the objects frozen at exit.

``flows.cli.main`` calls ``gc.freeze()`` once the command is over, so the
interpreter's shutdown skips its last full collection over torch's, zarr's
and Dask's objects. This script runs the console script's entry point as a
new process both ways, alternating, on the benchmark JPEGs of ``bench_stats``
(224x224 float16, statistics given, 2 workers, ``--no-prefect``):

- ``rerun``: the store is complete and the folder unchanged (what most
  scheduled runs are: nothing decoded, nothing written);
- ``full``: a new store of ``--images`` images.

The baseline is the same entry point with ``gc.freeze`` replaced by a no-op
in the child. Wall time of the whole process (interpreter start to exit),
fastest of ``--rounds``.

    python benchmarks/bench_cli_exit.py                       # 512 images, 5 rounds
    python benchmarks/bench_cli_exit.py --images 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_prepare import _stats_file  # noqa: E402
from bench_stats import dataset  # noqa: E402

#: The child: the console script's entry point, ``gc.freeze`` disabled for the baseline.
_CHILD = """
import gc, sys
if sys.argv.pop(1) == "baseline":
    gc.freeze = lambda: None
from flows.cli import main
main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    src = dataset(args.images, max(args.images, 2000))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-exit-"))
    try:
        stats = _stats_file(tmp)

        def config(out: Path) -> Path:
            path = tmp / f"{out.name}.yaml"
            path.write_text(
                f"source: {{path: {src}}}\n"
                f"stats: {{file: {stats}}}\n"
                "transform: {size: [224, 224], augment: []}\n"
                f"output: {{path: {out}, dtype: float16}}\n"
                "runtime: {workers: 2, device: cpu}\n"
            )
            return path

        def run(way: str, cfg: Path) -> float:
            cmd = [sys.executable, "-c", _CHILD, way, "run", str(cfg), "--no-prefect"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - t0

        kept, fresh = tmp / "kept.zarr", tmp / "fresh.zarr"
        configs = {"rerun": config(kept), "full": config(fresh)}
        run("frozen", configs["rerun"])  # the complete store the reruns find
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for way in ("baseline", "frozen"):
                shutil.rmtree(fresh, ignore_errors=True)
                for kind, cfg in configs.items():
                    t = run(way, cfg)
                    best[kind, way] = min(best.get((kind, way), float("inf")), t)
        print(f"{args.images} JPEGs, whole process wall time, fastest of {args.rounds}")
        print("| run | gc at exit (baseline) s | objects frozen s | baseline / frozen |")
        print("|---|---:|---:|---:|")
        for kind in ("rerun", "full"):
            base, frozen = best[kind, "baseline"], best[kind, "frozen"]
            print(f"| {kind} | {base:.2f} | {frozen:.2f} | {base / frozen:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
