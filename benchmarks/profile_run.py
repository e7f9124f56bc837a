"""Profile ``imageprep run`` with py-spy and break its CPU time down by stage.

Runs the console script exactly as a user does (``imageprep run CONFIG
--no-prefect``, verify on by default) on the benchmark JPEGs of
``bench_stats`` (~300-640 x 240-480, quality 90), 224x224 float16, no
augmentation, statistics given (``stats.file``), 2 workers, under
``py-spy record --native --idle --format raw``. Every sampled thread stack is
put in the first stage whose rule matches (rules in :data:`STAGES`, checked
in order), and the table gives each stage's share of the busy samples (CPU)
and of all samples (busy + waiting threads). Needs ``pip install py-spy``.

    python benchmarks/profile_run.py                          # 2000 images, zstd 3
    python benchmarks/profile_run.py --images 1000 --set output.compression.codec=none
    python benchmarks/profile_run.py --idle                   # waiting threads too
    python benchmarks/profile_run.py --raw profile.txt        # summarize an existing record
    python benchmarks/profile_run.py --speedscope run.json    # also write a speedscope file
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Innermost frames of a thread that waits instead of computing (seen with --idle).
_WAIT_LEAF = re.compile(
    r"(wait \(threading\.py|_wait_for_tstate_lock|acquire|select \(selectors\.py|"
    r"get \(queue\.py|_worker \(concurrent/futures/thread\.py|result \(concurrent/futures|"
    r"sleep|_run_once \(asyncio/base_events\.py|epoll_wait|pthread_cond|sem_(timed|clock)?wait|"
    r"futex|__poll|take_gil)"
)

#: (stage, regex over the whole stack, root to leaf); the first match wins.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("imports", re.compile(r"_find_and_load")),
    ("validation pass (stats.file: every file decoded once more)", re.compile(r"_validate_chunk")),
    (
        "verify after the run (read back + SHA-256)",
        re.compile(r"verify \(pipeline/shards\.py|_check_shard"),
    ),
    ("SHA-256 of each shard (write_shard)", re.compile(r"shard_digest")),
    (
        "zarr codec: compress (numcodecs, in zarr's thread pool)",
        re.compile(r"_encode_sync \(zarr/codecs|encode \(numcodecs|ZSTD_compress|blosc_compress"),
    ),
    (
        "zarr codec: decompress (verify's read-back)",
        re.compile(r"_decode_sync \(zarr/codecs|decode \(numcodecs|ZSTD_decompress"),
    ),
    (
        "zarr per-chunk pipeline (event loop, buffers, shard index, store I/O)",
        re.compile(r"zarr/|asyncio/|google_crc32c"),
    ),
    ("resize (torch, in decode threads)", re.compile(r"resize_image|_interpolate")),
    ("decode (Pillow, in decode threads)", re.compile(r"pipeline/decode\.py|PIL/")),
    ("normalize + cast to float16 (TransformPlan.finish)", re.compile(r"finish \(pipeline/transf")),
    ("rest of write_shard / write_one_shard", re.compile(r"write_shard|write_one_shard")),
    ("scan, config, store creation", re.compile(r"scan|pipeline/(sources|config)|create_st")),
    ("dask scheduling", re.compile(r"dask/")),
    ("progress display (rich)", re.compile(r"rich/|progress")),
    ("no Python frame: interpreter start-up and exit (final GC)", re.compile(r"^$|gc_collect_m")),
]


def _stage(stack: str, *, idle: bool) -> str:
    frames = stack.split(";")
    if idle and frames and frames[-1] and _WAIT_LEAF.search(frames[-1]):
        return "waiting (blocked threads)"
    if not any(".py:" in f for f in frames) and "gc_collect_main" not in stack:
        stack = ""  # no Python frame: interpreter start-up or finalization
    for name, rule in STAGES:
        if rule.search(stack):
            return name
    return "other"


def summarize(raw: Path, *, idle: bool = False) -> str:
    """The stage table of a py-spy ``--format raw`` record (one ``stack count`` per line)."""
    counts: Counter[str] = Counter()
    examples: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        stack = re.sub(r"^process \d+:[^;]*;?", "", stack)  # --subprocesses prefix
        stage = _stage(stack, idle=idle)
        counts[stage] += int(n)
        leaf = next((f for f in reversed(stack.split(";")) if ".py:" in f), "-")
        examples.setdefault(stage, Counter())[re.sub(r":\d+\)", ")", leaf)] += int(n)
    total = sum(counts.values())
    busy = total - counts["waiting (blocked threads)"]
    head = "% of busy samples (CPU)"
    lines = [
        f"| stage | {head} |" + (" % of all thread samples |" if idle else "") + " top frames |",
        "|---|---:|" + ("---:|" if idle else "") + "---|",
    ]
    for stage, n in counts.most_common():
        cpu = "-" if stage.startswith("waiting") else f"{100 * n / busy:.1f}"
        top = ", ".join(f"`{f[:48]}`" for f, _ in examples[stage].most_common(2))
        extra = f" {100 * n / total:.1f} |" if idle else ""
        lines.append(f"| {stage} | {cpu} |{extra} {top} |")
    lines.append(f"\n{busy} busy and {total - busy} waiting thread samples")
    return "\n".join(lines)


def _stats_file(path: Path) -> Path:
    from pipeline.stats import Stats

    stats = Stats.empty(method="exact")
    stats.mean, stats.std = list(MEAN), list(STD)
    stats.var = [s * s for s in STD]
    stats.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the run")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames; slower)")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle: also count waiting threads")
    ap.add_argument("--raw", type=Path, help="only summarize this existing raw record")
    ap.add_argument("--keep", type=Path, help="write the raw record here")
    ap.add_argument("--speedscope", type=Path, help="record a second run into this file")
    args = ap.parse_args()
    if args.raw is not None:
        print(summarize(args.raw, idle=args.idle))
        return
    from bench_stats import dataset

    src = dataset(args.images, max(args.images, 2000))
    bindir = Path(sys.executable).parent
    pyspy = shutil.which("py-spy", path=str(bindir)) or shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="profile-run-") as tmp:
        out = Path(tmp)
        config = out / "run.yaml"
        config.write_text(
            f"source: {{path: {src}}}\n"
            f"stats: {{file: {_stats_file(out / 'stats.json')}}}\n"
            "transform: {size: [224, 224], augment: []}\n"
            f"output: {{path: {out / 'ds.zarr'}, dtype: float16}}\n"
            f"runtime: {{workers: {args.workers}, device: cpu}}\n"
        )
        run = [str(bindir / "imageprep"), "run", str(config), "--no-prefect"]
        for s in args.set:
            run += ["--set", s]
        # the run alone first: its CPU time, without the profiler
        t0, u0 = time.perf_counter(), os.times()
        subprocess.run(run, check=True, stdout=subprocess.DEVNULL)
        wall, u1 = time.perf_counter() - t0, os.times()
        cpu = (u1.children_user - u0.children_user) + (u1.children_system - u0.children_system)
        stored = sum(f.stat().st_size for f in (out / "ds.zarr").rglob("*") if f.is_file())
        raw_bytes = args.images * 3 * 224 * 224 * 2
        print(
            f"$ {' '.join(run)}\n{args.images} images: wall {wall:.2f} s, CPU {cpu:.2f} s "
            f"({1e3 * cpu / args.images:.2f} ms per image, start-up and exit included), "
            f"store {stored / 1e6:.1f} MB = {stored / raw_bytes:.3f} of raw float16"
        )
        shutil.rmtree(out / "ds.zarr")
        record = [pyspy, "record", "--subprocesses", "-r", str(args.rate)]
        record += ["--native"] * args.native + ["--idle"] * args.idle
        raw = args.keep or out / "profile.txt"
        cmd = [*record, "--format", "raw", "-o", str(raw), "--", *run]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(summarize(raw, idle=args.idle))
        if args.speedscope is not None:
            shutil.rmtree(out / "ds.zarr", ignore_errors=True)
            cmd = [*record, "--format", "speedscope", "-o", str(args.speedscope), "--", *run]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"speedscope profile: {args.speedscope}")


if __name__ == "__main__":
    main()
