"""Flow benchmark: Prefect's overhead on a prepare run, and a run on a local Dask cluster.

Generates ``--images`` JPEGs of ``--source-size`` (H x W, 4 class folders,
smooth random content) into ``benchmarks/_data/flow-<n>-<h>x<w>/`` once, then
prepares them with ``configs/demo.yaml`` (every augmentation) at
``--out-size`` x ``--out-size``, one copy, ``--shard`` samples per shard:

1. **Prefect overhead**: :func:`pipeline.run.prepare` (the plain function)
   against :func:`flows.prepare.prepare_flow` on the same config, each into a
   fresh store, in turn, ``--repeats`` times. The flow recomputes the
   statistics (``refresh_stats``) and skips verification, so both do the same
   work. It runs as ``imageprep run`` runs it (:func:`flows.prepare.run_foreground`:
   flow-run heartbeats off) and with Prefect's default heartbeats (whose
   thread's join rounds a run up to a whole second); the flow with the verify
   task and a rerun whose statistics come from the cache are shown beside.
   Prefect runs against a temporary local server (SQLite) started once before
   the timings; its start-up is reported apart.
2. **Dask cluster**: the flow with ``runtime.dask_address`` on a local
   ``dask scheduler`` and ``--dask-workers`` ``dask worker`` processes of one
   thread each, against the local run with ``--workers`` threads; the stored
   arrays are compared byte for byte.

Times are the best of ``--repeats`` (wall clock). The machine may be shared:
treat single runs as provisional.

Usage: ``python benchmarks/bench_flow.py [--images 4000] [--repeats 2] [--skip-dask]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("alpha", "beta", "gamma", "delta")


def make_images(folder: Path, n: int, height: int, width: int, *, seed: int = 0) -> Path:
    """Write ``n`` JPEGs (smooth random RGB) into 4 class folders, once; return the folder."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{n} {height} {width} {seed}":
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for c in CLASSES:
        (folder / c).mkdir(parents=True)

    def one(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        coarse = rng.random((height // 16 + 2, width // 16 + 2, 3))
        up = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
        x = 0.85 * up + 0.15 * rng.random((height, width, 3))
        im = Image.fromarray((255 * x).astype(np.uint8))
        im.save(folder / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, range(n)))
    done.write_text(f"{n} {height} {width} {seed}")
    return folder


def bench_config(src: Path, out: Path, args: argparse.Namespace, **runtime: Any) -> Any:
    from pipeline.config import load_config

    overrides = [
        f"source.path={src}",
        f"output.path={out}",
        f"transform.size=[{args.out_size}, {args.out_size}]",
        "transform.copies=1",
        f"output.shard_size={args.shard}",
        "output.overwrite=true",
        f"runtime.workers={args.workers}",
        f"runtime.batch_size={args.batch}",
        *(f"runtime.{k}={v}" for k, v in runtime.items()),
    ]
    return load_config(ROOT / "configs" / "demo.yaml", overrides)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def stored(path: Path) -> dict[str, bytes]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(group[k][:]).tobytes() for k in ("images", "labels", "source_index")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_cluster(workers: int, logs: Path) -> Iterator[str]:
    """A ``dask scheduler`` and ``workers`` one-thread ``dask worker`` processes on 127.0.0.1."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        common = ["--no-dashboard"]
        with open(logs / "scheduler.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for i in range(workers):
            with open(logs / f"worker-{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            dask,
                            "worker",
                            address,
                            "--nthreads",
                            "1",
                            "--host",
                            "127.0.0.1",
                            "--local-directory",
                            str(logs / f"w{i}"),
                            *common,
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with Client(address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(workers, timeout=60)
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Dask cluster did not start (logs in {logs})")
            time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def row(name: str, seconds: float, base: float, runs: list[float], note: str = "") -> str:
    ratio = seconds / base
    shown = ", ".join(f"{r:.2f}" for r in runs)
    return (
        f"| {name} | {seconds:.2f} | {ratio:.3f} ({100 * (ratio - 1):+.1f} %) | {shown} | {note} |"
    )


def prefect_env() -> str:
    """Set Prefect's environment before it is imported; return the throwaway PREFECT_HOME.

    Prefect reads its settings at import: the results and the stats cache go to
    a temporary home, the temporary server does not phone home, and no API URL
    of the user's is used.
    """
    home = tempfile.mkdtemp(prefix="imageprep-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return home


def main() -> None:
    prefect_home = prefect_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--source-size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    parser.add_argument("--out-size", type=int, default=64)
    parser.add_argument("--shard", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="local threads")
    parser.add_argument("--dask-workers", type=int, default=2, help="1-thread Dask workers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "_data")
    args = parser.parse_args()

    h, w = args.source_size
    src = make_images(args.data / f"flow-{args.images}-{h}x{w}", args.images, h, w)
    scratch = Path(tempfile.mkdtemp(prefix="imageprep-bench-flow-"))
    print(f"source: {src} ({args.images} JPEGs {h}x{w}); scratch: {scratch}")
    print(
        f"config: configs/demo.yaml at {args.out_size}x{args.out_size}, 1 copy, "
        f"{args.shard} per shard, {args.workers} threads, Python {sys.version.split()[0]}"
    )

    from prefect.testing.utilities import prefect_test_harness

    from flows.prepare import run_foreground
    from pipeline.run import prepare

    counter = iter(range(10**6))

    def fresh(name: str, **runtime: Any) -> Any:
        return bench_config(src, scratch / f"{name}-{next(counter)}.zarr", args, **runtime)

    def clean(cfg: Any) -> None:
        shutil.rmtree(cfg.output.path, ignore_errors=True)

    t_server, harness = timed(lambda: _enter(prefect_test_harness(server_startup_timeout=120)))
    try:
        # warm-up (imports, first-call costs) outside the timings
        warm = fresh("warm")
        run_foreground(warm, verify=False)
        clean(warm)

        def flow(cfg: Any, *, heartbeat: bool = False, **options: Any) -> Any:
            return run_foreground(cfg, heartbeat=heartbeat, **options)

        cases: dict[str, tuple[str, Callable[[Any], Any], str]] = {
            "plain": ("`pipeline.run.prepare` (plain function)", prepare, ""),
            "flow": (
                "`prepare_flow` as `imageprep run` runs it",
                lambda c: flow(c, verify=False, refresh_stats=True),
                "same work: stats recomputed, verify off; heartbeats off",
            ),
            "heartbeat": (
                "`prepare_flow` with Prefect's default heartbeats",
                lambda c: flow(c, verify=False, refresh_stats=True, heartbeat=True),
                "same work; the heartbeat thread's join rounds up to a whole second",
            ),
            "verify": (
                "`prepare_flow`, + verify task",
                lambda c: flow(c, refresh_stats=True),
                "stats recomputed, every shard re-hashed",
            ),
            "cached": (
                "`prepare_flow`, stats cached",
                lambda c: flow(c, verify=False),
                "rerun over the unchanged source, new store",
            ),
        }
        results: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for key, (_, fn, _) in cases.items():
                cfg = fresh(key)
                results[key].append(timed(lambda fn=fn, cfg=cfg: fn(cfg))[0])
                clean(cfg)
        best = {k: min(v) for k, v in results.items()}
        base = best["plain"]
        print()
        print(f"Prefect overhead, {args.images} images (best of {args.repeats}):")
        print()
        print("| run | seconds | vs plain | all runs (s) | note |")
        print("|---|---:|---:|---|---|")
        for key, (name, _, note) in cases.items():
            print(row(name, best[key], base, results[key], note))
        print()
        print(f"one-time: temporary Prefect server start {t_server:.1f} s (not in the rows)")
        for key in ("flow", "heartbeat"):
            print(
                f"Prefect overhead ({key}): {best[key] - base:+.2f} s = "
                f"{100 * (best[key] / base - 1):+.1f} % of the plain run"
            )

        if not args.skip_dask:
            with local_cluster(args.dask_workers, scratch / "dask-logs") as address:
                dask_runs, local_runs = [], []
                for _ in range(args.repeats):
                    cfg_d = fresh("dask", dask_address=address)
                    dask_runs.append(
                        timed(lambda c=cfg_d: run_foreground(c, verify=False, refresh_stats=True))[
                            0
                        ]
                    )
                    cfg_l = fresh("local")
                    local_runs.append(
                        timed(lambda c=cfg_l: run_foreground(c, verify=False, refresh_stats=True))[
                            0
                        ]
                    )
                    same = stored(cfg_d.output.path) == stored(cfg_l.output.path)
                    clean(cfg_d)
                    clean(cfg_l)
            print()
            print(
                f"Dask cluster, {args.images} images (best of {args.repeats}; flow as `imageprep "
                "run` runs it, stats recomputed, verify off):"
            )
            print()
            print("| run | seconds | vs local | all runs (s) | note |")
            print("|---|---:|---:|---|---|")
            lb = min(local_runs)
            print(row(f"local threads ({args.workers})", lb, lb, local_runs))
            print(
                row(
                    f"local cluster: scheduler + {args.dask_workers} workers x 1 thread",
                    min(dask_runs),
                    lb,
                    dask_runs,
                    f"stored arrays identical: {same}",
                )
            )
    finally:
        harness.__exit__(None, None, None)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(prefect_home, ignore_errors=True)


def _enter(cm: Any) -> Any:
    cm.__enter__()
    return cm


if __name__ == "__main__":
    main()
