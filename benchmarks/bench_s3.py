"""Benchmark: a whole run reading from and writing to S3 (moto on loopback) against local disk.

One run of :func:`pipeline.run.prepare` per location, the same config and the
same N JPEGs (300-640 x 240-480; the stats benchmark's set, cached in
benchmarks/_data/): statistics, then one Dask task per shard (decode, resize,
normalize, write with its record), verify, finish.

- local: the source is a local folder, the store a local folder;
- s3:    the source is ``s3://bench/images`` and the store ``s3://bench/ds.zarr``
         on moto's S3 server (``moto[server]``, the test extra), which runs in a
         child process on 127.0.0.1, so that its request handling does not share
         this process's interpreter; s3fs reaches it through ``endpoint_url``.

Reported: wall time per step and in all, images per second, the ratio s3/local,
and the HTTP requests the server answered per step: per shard of the write step
the requests to the store (metadata, shard, record) and to the source (one GET
per image), and per image of the statistics step; and CPU seconds of the run's
process and of the moto server (which shares the machine's cores with the run).
Requests are counted at the server, so they include everything s3fs and zarr
add. moto is no AWS: what the ratio shows is the cost of the object-store path
(s3fs, zarr's FsspecStore, one HTTP round trip per object, and the server's own
CPU on the same cores) on loopback, not S3's latency or bandwidth.

    python benchmarks/bench_s3.py                         # 400 images, 64x64 samples, 2 workers
    python benchmarks/bench_s3.py --images 100 --repeat 1 # quick

Latest result (``python benchmarks/bench_s3.py``; zarr 3.1.6, s3fs, moto 5; 2 cores,
quiet machine, 2026-12-02; on a loaded machine three runs gave 4.4x to 5.4x; the
requests are exact):

    400 JPEGs -> 64x64 float16, shards of 64, 2 workers
              total s   scan  compute   open  write  verify   cpu s  moto cpu
    local        2.23   0.01   0.56    0.16   1.14    0.24    2.90      0.00  179 images/s
    s3          10.73   0.15   3.12    1.58   4.00    0.81    7.61      5.96   37 images/s
    s3 / local: 4.81x the wall time of the whole run, 3.53x the write step

    requests (s3 run; 7 shards, 400 images):
      scan 1, statistics 401 (one GET per image), open 178, write 592, verify 100
      per shard, to the store:  27.4 (GET 17.4, POST 3, PUT 7); per image, to the source: 1 GET

A shard costs a constant number of requests to the store, whatever its number of
samples (tests/pipeline/test_object_store.py checks 4 against 16 samples): 20 in
the shard task (10 GETs: the group's and 8 arrays' metadata and the shard before
it is replaced; 7 PUTs: the shard, 2 row chunks, the record's 2 elements,
``done``, ``live``; 3 batch deletes of chunks equal to their fill value: ``done``
and ``live`` cleared first, an all-zero ``copy_index`` chunk), and the write
step's reads of the plan, spread over the shards (5.9 here). Each source image
is one GET in the statistics pass and one in its shard task. The gap to local
disk on this machine is CPU more than the network: the run's process spends
5.6 s more CPU (about 4 ms per request: signing, aiohttp, the hops to fsspec's
event loop) and moto 6.1 s, on the same two cores; the rest is latency, since
write_shard's 20 requests are sequential and a shard task reads each image
just before decoding it. Ways to narrow it, not done here: prefetch a shard's
(and a statistics chunk's) source objects concurrently, open a store's arrays
once per worker process or concurrently, create the store's arrays with
concurrent metadata writes, and obstore (see bench_storage.py: less client
time per object).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # tests/s3server.py

STEPS = ("scan_source", "compute_run_stats", "open_output", "write_shards", "verify_output")


# ----------------------------------------------------------------------------- the server


def _serve(conn: Any) -> None:
    """Child process: moto's S3 server; answers "port", "reset", "log" and "stop" on ``conn``."""
    from tests.s3server import MotoS3Server

    server = MotoS3Server()
    server.start()
    conn.send(server.port)
    while True:
        command = conn.recv()
        if command == "reset":
            server.reset_log()
            conn.send(None)
        elif command == "log":
            conn.send([(r.method, r.path) for r in server.log()])
        elif command == "cpu":
            import resource

            usage = resource.getrusage(resource.RUSAGE_SELF)
            conn.send(usage.ru_utime + usage.ru_stime)
        else:
            server.stop()
            conn.send(None)
            return


class Server:
    """moto's S3 server in a child process, with its request log."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        self.port = self._conn.recv()

    def call(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def stop(self) -> None:
        self.call("stop")
        self._proc.join(timeout=30)

    def options(self) -> dict[str, Any]:
        return {
            "endpoint_url": f"http://127.0.0.1:{self.port}",
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"region_name": "us-west-2"},
        }


# ----------------------------------------------------------------------------- runs


def _config(src: str, out: str, args: argparse.Namespace, options: dict | None) -> Any:
    from pipeline.config import validate_config

    data: dict[str, Any] = {
        "source": {"path": src},
        "transform": {"size": [args.size, args.size]},
        "output": {"path": out, "shard_size": args.shard},
        "runtime": {"workers": args.workers, "device": "cpu"},
    }
    if options is not None:
        data["source"]["storage_options"] = options
        data["output"]["storage_options"] = options
    return validate_config(data)


def _run(cfg: Any, server: Server | None) -> dict[str, Any]:
    """One prepare; per step: seconds, and (on S3) the requests the server answered."""
    from pipeline.run import prepare

    steps: dict[str, dict[str, Any]] = {}

    def runner(step: Callable[..., Any], /, *a: Any, **k: Any) -> Any:
        if server is not None:
            server.call("reset")
        t0 = time.perf_counter()
        out = step(*a, **k)
        entry: dict[str, Any] = {"seconds": time.perf_counter() - t0}
        if server is not None:
            entry["log"] = server.call("log")
        steps[step.__name__] = entry
        return out

    server_cpu = server.call("cpu") if server is not None else 0.0
    cpu, t0 = time.process_time(), time.perf_counter()
    result = prepare(cfg, runner=runner)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu": time.process_time() - cpu,
        "server_cpu": (server.call("cpu") - server_cpu) if server is not None else 0.0,
        "steps": steps,
        "result": result,
    }


def _requests(log: list[tuple[str, str]], part: str) -> collections.Counter[str]:
    return collections.Counter(method for method, path in log if part in path)


def _store_requests(log: list[tuple[str, str]]) -> collections.Counter[str]:
    """Requests to the store: its keys, and batch deletes of chunks equal to their fill value.

    s3fs deletes with a POST to the bucket (the keys are in the body); the source is only read.
    """
    return collections.Counter(m for m, path in log if "/bench/ds-" in path or m == "POST")


def _fmt(c: collections.Counter[str], per: float = 1.0) -> str:
    total = sum(c.values()) / per
    inner = ", ".join(f"{k} {v / per:.3g}" for k, v in sorted(c.items()))
    return f"{total:.3g} ({inner})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=64, help="sample height and width")
    parser.add_argument("--shard", type=int, default=64, help="samples per shard")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs per location, alternating")
    args = parser.parse_args()

    from bench_stats import dataset

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    src = dataset(args.images, args.images)
    server = Server()
    options = server.options()
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bench")
    files = sorted(p for p in src.rglob("*.jpg"))
    t0 = time.perf_counter()
    for p in files:
        fs.pipe_file(f"bench/images/{p.relative_to(src).as_posix()}", p.read_bytes())
    upload = time.perf_counter() - t0
    mib = sum(p.stat().st_size for p in files) / 2**20
    print(
        f"{len(files)} JPEGs ({mib:.1f} MiB) -> {args.size}x{args.size} float16, "
        f"shards of {args.shard}, {args.workers} workers; upload to moto {upload:.1f} s"
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
    for i in range(args.repeat):
        local = _config(str(src), str(tmp / f"local-{i}.zarr"), args, None)
        runs["local"].append(_run(local, None))
        remote = _config("s3://bench/images", f"s3://bench/ds-{i}.zarr", args, options)
        runs["s3"].append(_run(remote, server))
        fs.rm(f"bench/ds-{i}.zarr", recursive=True)
    server.stop()

    print(
        f"\n{'':8s} {'total s':>8s} "
        + " ".join(f"{s.split('_')[0]:>8s}" for s in STEPS)
        + f" {'cpu s':>8s} {'moto cpu':>8s}"
    )
    best = {}
    for name, items in runs.items():
        run = min(items, key=lambda r: r["seconds"])
        best[name] = run
        cells = " ".join(f"{run['steps'][s]['seconds']:8.2f}" for s in STEPS)
        images = run["result"].samples
        print(
            f"{name:8s} {run['seconds']:8.2f} {cells} {run['cpu']:8.2f} {run['server_cpu']:8.2f}"
            f"   {images / run['seconds']:.0f} images/s"
        )
    ratio = best["s3"]["seconds"] / best["local"]["seconds"]
    write = (
        best["s3"]["steps"]["write_shards"]["seconds"]
        / (best["local"]["steps"]["write_shards"]["seconds"])
    )
    print(f"\ns3 / local: {ratio:.2f}x the wall time of the whole run, {write:.2f}x the write step")

    s3 = best["s3"]
    result = s3["result"]
    shards, n = result.shards, len(files)
    print(f"\nrequests (s3 run; {shards} shards, {n} images):")
    for step in STEPS:
        log = s3["steps"][step]["log"]
        print(f"  {step:18s} {_fmt(collections.Counter(m for m, _ in log))}")
    write_log = s3["steps"]["write_shards"]["log"]
    print(f"  per shard, to the store:  {_fmt(_store_requests(write_log), shards)}")
    print(f"  per image, to the source: {_fmt(_requests(write_log, '/bench/images/'), n)}")
    stats_log = s3["steps"]["compute_run_stats"]["log"]
    print(f"  statistics, per image:    {_fmt(_requests(stats_log, '/bench/images/'), n)}")


if __name__ == "__main__":
    main()
