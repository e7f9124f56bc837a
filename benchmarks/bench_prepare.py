"""Benchmark: `imageprep run` against the decode+resize floor and a hand-written script.

N JPEGs (300-640 x 240-480, quality 90; the stats benchmark's set, cached in
benchmarks/_data/) become 224x224 float16 normalized samples in a sharded Zarr
store. Timed in one run, with the same thread count, each in its own process:

- floor:       bench_floor.floor: Pillow draft decode, Pillow bilinear resize
               of the shorter side, centre crop, in a thread pool; nothing
               stored (independent of imageprep and torch);
- script:      bench_floor.script: the ~30 lines a user writes instead (the
               same loading, NumPy normalize to float16, a sharded Zarr array
               with zstd 3, one shard written while the next decodes);
- run:         pipeline.run.prepare with the statistics given (stats.file) and
               the default codec: one decode per file (samples and moments),
               one Dask task per shard, verify; no augmentation;
- run/zstd-3:  `run` with zstd 3 forced (the script's codec);
- run/raw:     `run` without compression;
- run+stats:   `run` computing the exact statistics first (a second full decode);
- run+aug:     `run` with invert (p=0.5) + DoG band-pass noise;
- dataloader:  a torch DataLoader(num_workers=W) whose Dataset does Pillow
               resize + centre crop + normalize, appended to a zstd-3 Zarr
               array (the former baseline; not run by default).

Throughput is (N2 - N1) / (t(N2) - t(N1)), so start-up cancels; CPU time
(user + system of the process and its children) is reported beside, since a
shared machine disturbs it less than wall time. Peak memory (max RSS) at both
sizes shows that memory does not grow with the dataset. The stored size is
given as a fraction of the raw float16 bytes.

    python benchmarks/bench_prepare.py                    # 500 and 2000 images, 2 workers
    python benchmarks/bench_prepare.py --sizes 200 800    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_floor  # noqa: E402
from bench_stats import dataset, measure  # noqa: E402

KINDS = ("floor", "script", "run", "run/zstd-3", "run/raw", "run+stats", "run+aug", "dataloader")
DEFAULT_KINDS = KINDS[:-1]
SIZE = (224, 224)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _files(src: Path) -> list[Path]:
    return sorted(src.rglob("*.jpg"))


def _stats_file(out: Path) -> Path:
    from pipeline.stats import Stats

    stats = Stats.empty(method="exact")
    stats.mean, stats.std = list(MEAN), list(STD)
    stats.var = [s * s for s in STD]
    path = out / "stats.json"
    stats.save(path)
    return path


def run_prepare(src: Path, workers: int, out: Path, kind: str) -> dict:
    from pipeline.config import CompressionConfig, validate_config
    from pipeline.run import prepare

    augment: list[dict] = []
    if kind == "run+aug":
        augment = [
            {"op": "invert", "p": 0.5},
            {"op": "dog_noise", "band": [0.05, 0.2], "rms": 0.08},
        ]
    stats: dict = {"method": "exact"}
    if kind != "run+stats":
        stats["file"] = str(_stats_file(out))
    cfg = validate_config(
        {
            "source": {"path": str(src)},
            "stats": stats,
            "transform": {"size": list(SIZE), "augment": augment},
            "output": {"path": str(out / "ds.zarr"), "shard_size": 256},
            "runtime": {"workers": workers, "device": "cpu"},
        }
    )
    codec = {"run/raw": ("none", None), "run/zstd-3": ("zstd", 3)}.get(kind)
    if codec is not None:
        compression = CompressionConfig(codec=codec[0], level=codec[1])
        cfg = cfg.model_copy(
            update={"output": cfg.output.model_copy(update={"compression": compression})}
        )
    result = prepare(cfg)
    return {"images": result.samples, "stored": _stored(out / "ds.zarr")}


def _stored(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("c/**/*") if f.is_file())


class _Baseline:
    """The hand-written Dataset: Resize(256) + CenterCrop(224) + ToTensor + Normalize."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            im = im.crop((left, top, left + 224, top + 224))
            x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return (x - mean) / std


def run_dataloader(src: Path, workers: int, out: Path) -> dict:
    import numpy as np
    import torch
    import zarr
    from torch.utils.data import DataLoader
    from zarr.codecs import ZstdCodec

    torch.set_num_threads(1)
    files = _files(src)
    arr = zarr.create_array(
        out / "baseline.zarr",
        shape=(0, 3, 224, 224),
        dtype="float16",
        chunks=(1, 3, 224, 224),
        shards=(256, 3, 224, 224),
        compressors=ZstdCodec(level=3),
    )
    loader = DataLoader(_Baseline(files), batch_size=64, num_workers=workers)
    n = 0
    for x in loader:
        b = x.shape[0]
        arr.resize((n + b, 3, 224, 224))
        arr[n : n + b] = x.numpy().astype(np.float16)
        n += b
    return {"images": n, "stored": _stored(out / "baseline.zarr")}


def child(kind: str, src: Path, workers: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        t0 = time.perf_counter()
        if kind == "floor":
            res = {"images": bench_floor.floor(src, threads=workers)}
        elif kind == "script":
            n = bench_floor.script(src, out / "script.zarr", threads=workers)
            res = {"images": n, "stored": _stored(out / "script.zarr")}
        elif kind == "dataloader":
            res = run_dataloader(src, workers, out)
        else:
            res = run_prepare(src, workers, out, kind)
        res["work_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(res))


def timed(kind: str, src: Path, workers: int) -> dict:
    target = [sys.executable, __file__, "_child", kind, str(src), str(workers)]
    r = subprocess.run(
        [sys.executable, __file__, "_measure", *target], capture_output=True, text=True
    )
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"{kind} failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[500, 2000], metavar=("N1", "N2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per point; the fastest counts")
    ap.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=KINDS)
    args = ap.parse_args()
    n1, n2 = args.sizes
    src1, src2 = dataset(n1, n2), dataset(n2, n2)
    print(f"workers={args.workers}  sizes={n1},{n2}  cpus={os.cpu_count()}  repeat={args.repeat}")
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeat):  # interleaved, so that load spikes hit every run alike
        for kind in args.kinds:
            for n, src in ((n1, src1), (n2, src2)):
                r = timed(kind, src, args.workers)
                runs.setdefault((kind, n), []).append(r)
                print(
                    f"  [{rep + 1}] {kind:9s} N={n:5d}  wall {r['wall_s']:7.2f} s"
                    f"  cpu {r['cpu_s']:7.2f} s  peak {r['maxrss_mib']:6.0f} MiB",
                    flush=True,
                )
    results: dict[str, dict[int, dict]] = {}
    for (kind, n), rs in runs.items():
        best = dict(min(rs, key=lambda r: r["wall_s"]))
        best["cpu_s"] = min(r["cpu_s"] for r in rs)
        best["maxrss_mib"] = max(r["maxrss_mib"] for r in rs)
        results.setdefault(kind, {})[n] = best

    def rate(kind: str, key: str = "wall_s") -> float:
        r = results[kind]
        return (n2 - n1) / (r[n2][key] - r[n1][key])

    nan = float("nan")

    def stored(kind: str) -> str:
        r = results[kind][n2]
        if "stored" not in r:
            return "-"
        return f"{r['stored'] / (r['images'] * 3 * SIZE[0] * SIZE[1] * 2):.3f}"

    floor = rate("floor") if "floor" in results else nan
    base = rate("script") if "script" in results else nan
    cpu_floor = rate("floor", "cpu_s") if "floor" in results else nan
    cpu_base = rate("script", "cpu_s") if "script" in results else nan
    print()
    print(
        f"| run | t({n1}) s | t({n2}) s | img/s | vs floor | vs script | img/CPU-s "
        f"| CPU vs floor | CPU vs script | peak {n1} MiB | peak {n2} MiB | stored / raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        ips, cps = rate(kind), rate(kind, "cpu_s")
        print(
            f"| {kind} | {r[n1]['wall_s']:.2f} | {r[n2]['wall_s']:.2f} | {ips:.0f} | "
            f"{ips / floor:.2f} | {ips / base:.2f} | {cps:.0f} | {cps / cpu_floor:.2f} | "
            f"{cps / cpu_base:.2f} | {r[n1]['maxrss_mib']:.0f} | {r[n2]['maxrss_mib']:.0f} | "
            f"{stored(kind)} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        measure(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
