"""Baselines for the prepare throughput: the decode+resize floor and a hand-written script.

Both take a folder of JPEGs (searched recursively) and make 224x224 samples;
neither imports imageprep or torch, so they stay independent references:

- ``floor``: what no prepare run can beat without a faster decoder or resize:
  Pillow draft decode (DCT scaling, never below the target), Pillow bilinear
  resize of the shorter side to 224, centre crop, to a NumPy array, in a
  ``ThreadPoolExecutor(threads)``; nothing is normalized or stored;
- ``script``: the ~30 lines a competent user writes instead of using
  imageprep: the same loading in the same thread pool, NumPy normalize
  ``(x / 255 - mean) / std`` to float16, a sharded Zarr array (chunk one
  sample, shard 256 samples, zstd 3 by default: ``--codec``) written one
  shard per ``array[...] = batch`` call while the pool already decodes the
  next shard.

Every run is its own process; the timer starts after the imports (so
interpreter start-up is not in the rate; the wall time of the whole process
is printed beside). Rounds are interleaved and the fastest counts; CPU time
(user + system, every thread) is printed beside wall time, since a shared
machine disturbs it less. The functions :func:`floor` and :func:`script` are
the baselines the throughput benchmark imports.

    python benchmarks/bench_floor.py                       # the 2000 benchmark JPEGs, 2 threads
    python benchmarks/bench_floor.py SRC --threads 2 --codecs zstd-3 blosc-lz4-5-shuffle none
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")


def jpegs(src: Path) -> list[Path]:
    """The JPEGs under ``src``, sorted."""
    return sorted(p for p in Path(src).rglob("*") if p.suffix in EXTENSIONS)


def load(path: Path, size: int = SIZE) -> np.ndarray:
    """Pillow draft decode, bilinear resize (shorter side to ``size``), centre crop: HWC uint8."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        scale = size / min(w, h)
        im.draft("RGB", (max(size, round(w * scale)), max(size, round(h * scale))))
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


def floor(src: Path, *, threads: int = 2) -> int:
    """Decode + resize + crop every JPEG under ``src`` in ``threads`` threads; the image count."""
    with ThreadPoolExecutor(threads) as ex:
        return sum(1 for _ in ex.map(load, jpegs(src)))


def script(
    src: Path,
    out: Path,
    *,
    threads: int = 2,
    codec: str = "zstd-3",
    shard: int = 256,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> int:
    """The hand-written prepare: thread pool, Pillow, NumPy normalize, sharded Zarr; the count."""
    import zarr
    from bench_codecs import CODECS

    files = jpegs(src)
    m = np.asarray(mean, np.float32).reshape(3, 1, 1)
    s = np.asarray(std, np.float32).reshape(3, 1, 1)

    def sample(path: Path) -> np.ndarray:
        x = load(path).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return ((x - m) / s).astype(np.float16)

    arr = zarr.create_array(
        out,
        shape=(len(files), 3, SIZE, SIZE),
        dtype="float16",
        chunks=(1, 3, SIZE, SIZE),
        shards=(shard, 3, SIZE, SIZE),
        compressors=CODECS[codec].make(2),
    )
    with ThreadPoolExecutor(threads) as ex:
        pending = [ex.submit(sample, p) for p in files[:shard]]
        for start in range(0, len(files), shard):
            following = [ex.submit(sample, p) for p in files[start + shard : start + 2 * shard]]
            arr[start : start + len(pending)] = np.stack([f.result() for f in pending])
            pending = following
    return len(files)


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def child(kind: str, src: Path, threads: int, codec: str) -> None:
    """Run one baseline in this process and print its JSON result (timer after the imports)."""
    import PIL.Image  # noqa: F401  (imports before the timer, as a user's script has them)
    import zarr  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        w0, c0 = time.perf_counter(), _cpu()
        if kind == "floor":
            n = floor(src, threads=threads)
        else:
            n = script(src, Path(tmp) / "script.zarr", threads=threads, codec=codec)
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        stored = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    print(json.dumps({"images": n, "wall_s": wall, "cpu_s": cpu, "stored": stored}))


def measure(kind: str, src: Path, threads: int, codec: str = "zstd-3") -> dict:
    """Run ``kind`` (``floor`` or ``script``) in a fresh process; its result and wall time."""
    cmd = [sys.executable, __file__, "_child", kind, str(src), str(threads), codec]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"{kind} failed")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path, nargs="?", help="folder of JPEGs (default: 2000 generated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest counts")
    ap.add_argument("--codecs", nargs="+", default=["zstd-3"], help="codecs of the script runs")
    args = ap.parse_args()
    if args.src is None:
        from bench_stats import dataset

        args.src = dataset(2000, 2000)
    n = len(jpegs(args.src))
    print(f"{n} JPEGs in {args.src}, {args.threads} threads, {os.cpu_count()} CPUs")
    kinds = [("floor", "-")] + [("script", c) for c in args.codecs]
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeat):
        for kind, codec in kinds:
            r = measure(kind, args.src, args.threads, codec if codec != "-" else "zstd-3")
            runs.setdefault((kind, codec), []).append(r)
            print(
                f"  [{rep + 1}] {kind:6s} {codec:22s} {r['images'] / r['wall_s']:6.0f} img/s  "
                f"wall {r['wall_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                f"process {r['process_s']:6.2f} s",
                flush=True,
            )
    best = {k: min(rs, key=lambda r: r["wall_s"]) for k, rs in runs.items()}
    cpu = {k: min(r["cpu_s"] for r in rs) for k, rs in runs.items()}
    fl = best[("floor", "-")]
    print()
    print("| run | codec | img/s | vs floor | img/CPU-s | CPU vs floor | stored / raw float16 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (kind, codec), r in best.items():
        ips, cps = r["images"] / r["wall_s"], r["images"] / cpu[(kind, codec)]
        raw = r["images"] * 3 * SIZE * SIZE * 2
        ratio = f"{r['stored'] / raw:.3f}" if kind == "script" else "-"
        print(
            f"| {kind} | {codec} | {ips:.0f} | {ips / (fl['images'] / fl['wall_s']):.2f} | "
            f"{cps:.0f} | {cps / (fl['images'] / cpu[('floor', '-')]):.2f} | {ratio} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
