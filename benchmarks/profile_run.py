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
    ("statistics pass (decode for the moments)", re.compile(r"_chunk \(pipeline/stats")),
    (
        "verify after the run (read back + SHA-256)",
        re.compile(r"verify \(pipeline/store/verify\.py|_check_shard"),
    ),
    ("SHA-256 of each shard (write_shard)", re.compile(r"shard_digest")),
    (
        "zarr codec: compress (numcodecs, in zarr's thread pool)",
        re.compile(r"_encode_sync \(zarr/codecs|encode \(numcodecs|ZSTD_compress|blosc_compress"),
    ),
    (
        "verify: zarr read pipeline + decompress (event loop and thread pool)",
        re.compile(
            r"_decode_sync \(zarr/codecs|decode \(numcodecs|ZSTD_decompress|read_batch|"
            r"_decode_single|_decode_partial|decode_partial|_get_selection"
        ),
    ),
    (
        "zarr write pipeline per chunk (merge copy, all_equal, shard dict, combine, store set)",
        re.compile(
            r"write_batch|_encode_single|_encode_partial|encode_partial|_set_selection|"
            r"_encode_shard_dict|LocalStore\.set"
        ),
    ),
    (
        "zarr event loop overhead (asyncio tasks, thread hops; write and read)",
        re.compile(r"zarr/|asyncio/|google_crc32c"),
    ),
    ("moments of each file (value histogram)", re.compile(r"_histogram_of")),
    ("resize (torch, in decode threads)", re.compile(r"resize \(ops/geometry|_interpolate")),
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


# ----------------------------------------------------------------------------- CPU accounting
#
# py-spy samples a thread while the OS reports it runnable, so on a busy shared machine a
# thread that wakes often (zarr's event loop) is over-represented. The accounting below
# measures CPU time itself: each patched function adds its thread's CPU time
# (time.thread_time, exclusive of nested patched calls) to its stage, and the CPU of
# every thread is read from /proc at the end.

_ACCOUNT_STAGES = {
    "imports": "imports (first import of each module, any thread)",
    "stats": "statistics pass (a second decode of every file; none when the stats are known)",
    "decode": "decode (Pillow) and read",
    "measure": "moments of each file in the writing decode (value histogram)",
    "resize": "resize (torch)",
    "finish": "normalize + cast to float16 (TransformPlan.finish)",
    "sha_write": "SHA-256 of each shard (EncodedImages.add, write_shard)",
    "crc_write": "CRC32C of each shard's object and rows (for the record; the rows' in verify)",
    "encode": "encode each sample and the shard object (ShardFormat.encode_chunk, parts)",
    "put": "write each shard object to its file (local store: writev in the shard task)",
    "verify": "verify: read the shards back, CRC32C of the bytes (verify._check_shard)",
    "decode_codec": "verify: decode the shard object (ShardFormat.decode: decompress)",
}


def _account(argv: list[str]) -> None:
    """Run ``imageprep`` in this process with CPU accounting; print one JSON line at exit."""
    import atexit
    import builtins
    import functools
    import json
    import threading
    from collections import defaultdict

    totals: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    tls = threading.local()
    sticky = {"stats", "imports"}

    def add(stage: str, dt: float) -> None:
        with lock:
            totals[stage] += dt

    def wrap(stage: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def inner(*a, **k):  # type: ignore[no-untyped-def]
            stack = getattr(tls, "stack", None)
            if stack is None:
                stack = tls.stack = []
            if stack and stack[-1][0] in sticky:  # e.g. decode inside validation stays there
                return fn(*a, **k)
            now = time.thread_time()
            if stack:
                add(stack[-1][0], now - stack[-1][1])
            stack.append([stage, now])
            try:
                return fn(*a, **k)
            finally:
                end = time.thread_time()
                add(stage, end - stack.pop()[1])
                if stack:
                    stack[-1][1] = end

        return inner

    real_import = builtins.__import__
    builtins.__import__ = wrap("imports", real_import)

    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    import ops
    import ops.geometry
    import pipeline.decode
    import pipeline.run
    import pipeline.stats.compute
    import pipeline.store
    import pipeline.store.shardio
    import pipeline.transforms

    writer = sys.modules["pipeline.store.writer"]
    verifier = sys.modules["pipeline.store.verify"]
    pipeline.stats.compute._chunk = wrap("stats", pipeline.stats.compute._chunk)
    pipeline.decode._decode_for_size = wrap("decode", pipeline.decode._decode_for_size)
    pipeline.decode.read_with_digest = wrap("decode", pipeline.decode.read_with_digest)
    pipeline.decode._histogram_of = wrap("measure", pipeline.decode._histogram_of)
    ops.resize = wrap("resize", ops.geometry.resize)
    plan = pipeline.transforms.TransformPlan
    plan.finish = wrap("finish", plan.finish)  # type: ignore[method-assign]
    writer.shard_digest = wrap("sha_write", writer.shard_digest)
    writer.rows_crc32c = wrap("crc_write", writer.rows_crc32c)
    pipeline.store.shardio.crc32c = wrap("crc_write", pipeline.store.shardio.crc32c)
    verifier._check_shard = wrap("verify", verifier._check_shard)
    for codec in (BloscCodec, GzipCodec, ZstdCodec):  # stores whose shards zarr writes
        codec._encode_sync = wrap("encode", codec._encode_sync)  # type: ignore[method-assign]
        codec._decode_sync = wrap("decode_codec", codec._decode_sync)  # type: ignore[method-assign]
    writer.EncodedImages.add = wrap("sha_write", writer.EncodedImages.add)  # type: ignore[method-assign]
    shard_format = pipeline.store.shardio.ShardFormat
    shard_format.encode_chunk = wrap("encode", shard_format.encode_chunk)  # type: ignore[method-assign]
    shard_format.parts = wrap("encode", shard_format.parts)  # type: ignore[method-assign]
    pipeline.store.shardio._put_parts = wrap("put", pipeline.store.shardio._put_parts)
    shard_format.decode = wrap("decode_codec", shard_format.decode)  # type: ignore[method-assign]

    def thread_cpu(thread: threading.Thread | None) -> float:
        """CPU seconds of a live thread (from /proc)."""
        if thread is None or thread.native_id is None:
            return 0.0
        stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def loop_thread_cpu() -> float:
        """CPU seconds of zarr's event loop thread (it is alive at exit)."""
        from zarr.core import sync

        return thread_cpu(sync.iothread[0])

    def store_io_cpu() -> float:
        """CPU seconds of the event loop's executor threads (file reads and writes)."""
        return sum(thread_cpu(t) for t in threading.enumerate() if t.name.startswith("asyncio_"))

    loop_in_verify = [0.0]
    real_verify = pipeline.store.verify

    @functools.wraps(real_verify)
    def verify(*a, **k):  # type: ignore[no-untyped-def]
        before = loop_thread_cpu()
        try:
            return real_verify(*a, **k)
        finally:
            loop_in_verify[0] += loop_thread_cpu() - before

    pipeline.store.verify = verify

    def report() -> None:
        data = {
            "stages": dict(totals),
            "loop": loop_thread_cpu(),
            "loop_verify": loop_in_verify[0],
            "store_io": store_io[0],
            "cpu": time.process_time(),
        }
        sys.stdout.write("\nACCOUNT " + json.dumps(data) + "\n")
        sys.stdout.flush()

    atexit.register(report)
    import flows.cli

    store_io = [0.0]
    sys.argv = ["imageprep", *argv]
    try:
        flows.cli.main()
    finally:  # before zarr's exit handler stops its executor threads
        store_io[0] = store_io_cpu()


def account(run_args: list[str]) -> str:
    """Run ``imageprep run_args`` under the CPU accounting; return the Markdown table."""
    import json

    cmd = [sys.executable, __file__, "_account", *run_args]
    t0, u0 = time.perf_counter(), os.times()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall, u1 = time.perf_counter() - t0, os.times()
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit("the accounted run failed")
    total = (u1.children_user - u0.children_user) + (u1.children_system - u0.children_system)
    line = next(x for x in r.stdout.splitlines() if x.startswith("ACCOUNT "))
    data = json.loads(line[len("ACCOUNT ") :])
    stages: dict[str, float] = data["stages"]
    rows = [(label, stages.get(key, 0.0)) for key, label in _ACCOUNT_STAGES.items()]
    loop, loop_verify = data["loop"], data["loop_verify"]
    rows.append(
        ("zarr event loop thread while writing (store I/O, small arrays)", loop - loop_verify)
    )
    rows.append(("verify: zarr event loop thread (store reads)", loop_verify))
    rows.append(
        ("store file I/O (zarr's executor threads: write and read the objects)", data["store_io"])
    )
    rows.append(("interpreter exit (after atexit: GC, module teardown)", total - data["cpu"]))
    rest = total - sum(v for _, v in rows)
    rows.append(("everything else (dask, zarr calls in workers, scan, store, Python)", rest))
    lines = [
        f"process CPU {total:.2f} s, wall {wall:.2f} s",
        "",
        "| stage | CPU s | % of CPU |",
        "|---|---:|---:|",
    ]
    for label, v in sorted(rows, key=lambda r: -r[1]):
        lines.append(f"| {label} | {v:.2f} | {100 * v / total:.1f} |")
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
    ap.add_argument(
        "--stats",
        choices=("file", "computed"),
        default="file",
        help="file: statistics given (one decode per file); computed: the run computes them "
        "(a statistics pass, then the writing decode)",
    )
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames; slower)")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle: also count waiting threads")
    ap.add_argument("--raw", type=Path, help="only summarize this existing raw record")
    ap.add_argument("--keep", type=Path, help="write the raw record here")
    ap.add_argument("--speedscope", type=Path, help="record a second run into this file")
    ap.add_argument(
        "--no-spy", action="store_true", help="skip py-spy: only the run and the CPU accounting"
    )
    args = ap.parse_args()
    if args.raw is not None:
        print(summarize(args.raw, idle=args.idle))
        return
    from bench_stats import dataset

    src = dataset(args.images, max(args.images, 2000))
    bindir = Path(sys.executable).parent
    pyspy = shutil.which("py-spy", path=str(bindir)) or shutil.which("py-spy")
    if pyspy is None and not args.no_spy:
        raise SystemExit("py-spy not found: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="profile-run-") as tmp:
        out = Path(tmp)
        config = out / "run.yaml"
        config.write_text(
            f"source: {{path: {src}}}\n"
            + (
                f"stats: {{file: {_stats_file(out / 'stats.json')}}}\n"
                if args.stats == "file"
                else ""
            )
            + "transform: {size: [224, 224], augment: []}\n"
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
        print("\nCPU accounting (thread CPU of patched functions; zarr's loop thread from /proc):")
        print(account(run[1:]))
        shutil.rmtree(out / "ds.zarr")
        if args.no_spy:
            return
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
    if len(sys.argv) > 1 and sys.argv[1] == "_account":
        _account(sys.argv[2:])
    else:
        main()
