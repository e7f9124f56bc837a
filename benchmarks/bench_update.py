"""Benchmark: a nightly rerun after the source grew by 10 % against a full run of the grown source.

A folder of N JPEGs (the stats benchmark's set: 300-640 x 240-480, quality 90,
cached in benchmarks/_data/) is prepared into a store (224x224 float16,
statistics computed, no augmentation, `imageprep run --no-prefect` as a plain
function). Then N/10 new JPEGs are added and the same config is run again:
an incremental update. Its wall time is compared, in the same session, with a
full run of the grown folder into a new store. Every decode of a source file
is counted, in the statistics pass and in the shard tasks alike (the update
must decode the new files only, once each: their samples and their exact
moments come from one decode), and the shard files written before the update
are checked to be untouched. Last, the same config runs once more over the
unchanged folder (what most scheduled runs are): it must decode and write
nothing, and it is timed as a whole process too (interpreter start and
imports included).

Each timed run is its own process (the first run is not timed).

    python benchmarks/bench_update.py                 # 2000 + 200 images, 2 workers
    python benchmarks/bench_update.py --images 400    # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_stats import dataset  # noqa: E402

_RUN = """
import json, os, sys, time
import pipeline.decode
from pipeline.config import validate_config
from pipeline.run import prepare

decoded = []  # every decode of a source file: statistics pass and shard tasks alike
real = pipeline.decode._loaded

def counting(path, *args, **kwargs):
    decoded.append(os.path.basename(getattr(path, "name", path)))
    return real(path, *args, **kwargs)

pipeline.decode._loaded = counting
src, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = validate_config({
    "source": {"path": src, "labels": "none"},
    "transform": {"size": [224, 224]},
    "output": {"path": out},
    "runtime": {"workers": workers, "device": "cpu"},
})
t0 = time.perf_counter()
result = prepare(cfg)
print(json.dumps({
    "seconds": time.perf_counter() - t0,
    "torch": "torch" in sys.modules,
    "decoded": decoded,
    "samples": result.samples,
    "shards_written": result.shards_written,
    "timings": result.timings,
}))
"""


def _run(src: Path, out: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(src), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def _decodes(result: dict) -> str:
    return f"{len(result['decoded'])} ({len(set(result['decoded']))})"


def _shard_digests(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((store / "images").rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images before the update")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    grow = args.images // 10
    pool = dataset(args.images + grow, args.images + grow)  # cached JPEGs
    files = sorted(pool.rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        src.mkdir()
        for f in files[: args.images]:
            shutil.copy2(f, src / f.name)
        store = tmp_path / "nightly.zarr"
        first = _run(src, store, args.workers)
        before = _shard_digests(store)
        for f in files[args.images : args.images + grow]:
            shutil.copy2(f, src / f.name)
        update = _run(src, store, args.workers)
        after = _shard_digests(store)
        untouched = all(after.get(k) == v for k, v in before.items())
        noop = _run(src, store, args.workers)
        full = _run(src, tmp_path / "full.zarr", args.workers)

    ratio = update["seconds"] / full["seconds"]
    print(f"{args.images} JPEGs, then {grow} added; {args.workers} workers; 224x224 float16\n")
    print("| run | seconds | decodes (files) | shards written | vs full run |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| first run ({args.images} images) | {first['seconds']:.2f} | "
        f"{_decodes(first)} | {first['shards_written']} | |"
    )
    print(
        f"| full run of the grown source ({args.images + grow}) | {full['seconds']:.2f} | "
        f"{_decodes(full)} | {full['shards_written']} | 1.00 |"
    )
    print(
        f"| **incremental rerun** (+{grow}) | {update['seconds']:.2f} | "
        f"{_decodes(update)} | {update['shards_written']} | **{ratio:.3f}** |"
    )
    print(
        f"| rerun, source unchanged | {noop['seconds']:.2f} | {_decodes(noop)} | "
        f"{noop['shards_written']} | {noop['seconds'] / full['seconds']:.3f} |"
    )
    print()
    print(
        "whole processes (interpreter, imports, run): "
        f"full {full['process_seconds']:.2f} s, update {update['process_seconds']:.2f} s, "
        f"unchanged {noop['process_seconds']:.2f} s "
        f"(torch imported: {noop['torch']})"
    )
    print(
        f"update timings (s): {json.dumps({k: round(v, 2) for k, v in update['timings'].items()})}"
    )
    new_names = {f.name for f in files[args.images : args.images + grow]}
    print(
        "files decoded by the update = the new files, once each: "
        f"{sorted(update['decoded']) == sorted(new_names)}"
    )
    print(f"shards written before the update untouched: {untouched}")
    print(f"goal: update <= 0.2 of the full run: {'met' if ratio <= 0.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
