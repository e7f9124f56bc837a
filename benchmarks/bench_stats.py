"""Benchmark: `imageprep stats` against the decode floor and the tutorial loop.

Generates N JPEGs (300-640 x 240-480, quality 90) into benchmarks/_data/ (cached),
then times, with the same number of threads/workers, in one run:

- floor:     Pillow decode to a NumPy array in a ThreadPoolExecutor (no statistics);
- load:      Pillow decode only (Image.load, no array), the same way: a stricter floor;
- exact, chan, two-pass: pipeline.stats.compute_stats with each method;
- cli:       the `imageprep stats` console script (method exact);
- tutorial:  the per-image loop from common tutorials: a torch DataLoader over the
             files with a ToTensor-like conversion, per-image mean and std
             accumulated and averaged (also: how wrong its std is).

Runs are interleaved over --repeat rounds and the fastest of each counts (the
machine may be shared). Every run is its own subprocess, started by a fresh
helper process that reports the run's wall time and peak memory
(resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).
Throughput is (N2 - N1) / (t(N2) - t(N1)) over two dataset sizes, so start-up
(imports, scan, process spawn) cancels; the same with the runs' CPU time
(user + system, all threads and worker processes) gives images per CPU-second,
which a busy shared machine disturbs less than wall time.

    python benchmarks/bench_stats.py                  # 1000 and 4000 images, 2 workers
    python benchmarks/bench_stats.py --sizes 200 800  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
METHODS = ("floor", "load", "exact", "chan", "two-pass", "cli", "tutorial")


# ----------------------------------------------------------------- data


def _jpeg(i: int, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    w = int(rng.integers(300, 641))
    h = int(rng.integers(240, 481))
    small = rng.integers(0, 256, size=(int(rng.integers(4, 16)), int(rng.integers(4, 16)), 3))
    base = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(base).astype(np.float64) + rng.normal(0, 10, size=(h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def dataset(n: int, n_max: int) -> Path:
    """A folder of n JPEGs: hard links to the first n of a cached set of n_max (10 classes)."""
    full = DATA / f"jpeg-{n_max}"
    if not (full / ".complete").exists():
        full.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for i in range(n_max):
            p = full / f"class{i % 10}" / f"img{i:06d}.jpg"
            if not p.exists():
                p.parent.mkdir(exist_ok=True)
                p.write_bytes(_jpeg(i))
        (full / ".complete").write_text("")
        print(f"generated {n_max} JPEGs in {time.perf_counter() - t0:.0f} s into {full}")
    if n == n_max:
        return full
    sub = DATA / f"jpeg-{n}-of-{n_max}"
    if not (sub / ".complete").exists():
        for i in range(n):
            rel = Path(f"class{i % 10}") / f"img{i:06d}.jpg"
            (sub / rel.parent).mkdir(parents=True, exist_ok=True)
            if not (sub / rel).exists():
                os.link(full / rel, sub / rel)
        (sub / ".complete").write_text("")
    return sub


# ----------------------------------------------------------------- runs


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*.jpg"))


def run_floor(src: Path, workers: int, *, array: bool = True) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    def load(p: Path) -> int:
        with Image.open(p) as im:
            if not array:
                im.load()
                return im.size[1]
            a = np.asarray(im.convert("RGB"))
        return a.shape[0]

    with ThreadPoolExecutor(workers) as ex:
        n = sum(1 for _ in ex.map(load, _files(src), chunksize=16))
    return {"images": n}


def run_stats(src: Path, workers: int, method: str) -> dict:
    from pipeline.stats import compute_stats

    s = compute_stats(src, method=method, workers=workers)  # type: ignore[arg-type]
    return {"images": s.images, "std": s.std, "mean": s.mean}


class _Files:
    """The tutorials' Dataset: PIL open, convert RGB, ToTensor (HWC uint8 -> CHW float / 255)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as im:
            a = np.asarray(im.convert("RGB"))
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)


def run_tutorial(src: Path, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    loader = DataLoader(_Files(_files(src)), batch_size=1, num_workers=workers)
    mean = torch.zeros(3)
    std = torch.zeros(3)
    n = 0
    for x in loader:
        mean += x.mean(dim=(0, 2, 3))
        std += x.std(dim=(0, 2, 3))
        n += 1
    return {"images": n, "mean": (mean / n).tolist(), "std": (std / n).tolist()}


def child(kind: str, src: Path, workers: int) -> None:
    t0 = time.perf_counter()
    if kind in ("floor", "load"):
        out = run_floor(src, workers, array=kind == "floor")
    elif kind == "tutorial":
        out = run_tutorial(src, workers)
    else:
        out = run_stats(src, workers, kind)
    out["work_s"] = time.perf_counter() - t0
    print(json.dumps(out))


def measure(cmd: list[str]) -> None:
    """Run cmd as a child; print its stdout's last JSON line plus wall time and peak RSS."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        sys.stderr.write(r.stderr)
        raise SystemExit(f"{cmd} failed with {r.returncode}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss_kib = usage.ru_maxrss
    try:
        out = json.loads(r.stdout)  # the CLI's --json - output
    except json.JSONDecodeError:
        last = [line for line in r.stdout.splitlines() if line.startswith("{")]
        out = json.loads(last[-1]) if last else {}
    out.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_mib=maxrss_kib / 1024)
    print(json.dumps(out))


def timed(kind: str, src: Path, workers: int, tmp: Path) -> dict:
    if kind == "cli":
        exe = Path(sys.executable).parent / "imageprep"
        target = [str(exe), "stats", str(src), "--workers", str(workers), "--json", "-"]
    else:
        target = [sys.executable, __file__, "_child", kind, str(src), str(workers)]
    r = subprocess.run(
        [sys.executable, __file__, "_measure", *target], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000], metavar=("N1", "N2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per point; the fastest counts")
    ap.add_argument(
        "--repeat-tutorial", type=int, default=1, help="runs per point of the (slow) tutorial loop"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()
    n1, n2 = args.sizes
    src1, src2 = dataset(n1, n2), dataset(n2, n2)
    print(f"workers={args.workers}  sizes={n1},{n2}  cpus={os.cpu_count()}  repeat={args.repeat}")
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeat):  # interleaved, so that load spikes hit every run alike
        for kind in args.methods:
            if kind == "tutorial" and rep >= args.repeat_tutorial:
                continue
            for n, src in ((n1, src1), (n2, src2)):
                r = timed(kind, src, args.workers, DATA)
                runs.setdefault((kind, n), []).append(r)
                print(f"  [{rep + 1}] {kind:9s} N={n:5d}  wall {r['wall_s']:7.2f} s", end="")
                print(f"  cpu {r['cpu_s']:7.2f} s", end="")
                print(f"  peak {r['maxrss_mib']:6.0f} MiB", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for (kind, n), rs in runs.items():
        best = dict(min(rs, key=lambda r: r["wall_s"]))  # the fastest run counts
        best["maxrss_mib"] = max(r["maxrss_mib"] for r in rs)  # the largest peak counts
        best["cpu_s"] = min(r["cpu_s"] for r in rs)
        results.setdefault(kind, {})[n] = best

    def rate(kind: str, key: str = "wall_s") -> float:
        r = results[kind]
        return (n2 - n1) / (r[n2][key] - r[n1][key])

    nan = float("nan")
    base = {k: rate(k) if k in results else nan for k in ("floor", "load", "tutorial")}
    print()
    print(
        f"| run | t({n1}) s | t({n2}) s | img/s | vs floor | vs load | vs tutorial "
        f"| img/CPU-s | CPU vs floor | peak {n1} MiB | peak {n2} MiB | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cpu_floor = rate("floor", "cpu_s") if "floor" in results else nan
    for kind, r in results.items():
        ips = rate(kind)
        cps = rate(kind, "cpu_s")
        m1, m2 = r[n1]["maxrss_mib"], r[n2]["maxrss_mib"]
        print(
            f"| {kind} | {r[n1]['wall_s']:.2f} | {r[n2]['wall_s']:.2f} | {ips:.0f} | "
            f"{ips / base['floor']:.2f} | {ips / base['load']:.2f} | {ips / base['tutorial']:.2f} "
            f"| {cps:.0f} | {cps / cpu_floor:.2f} | {m1:.0f} | {m2:.0f} | {m2 / m1:.2f} |"
        )
    if "tutorial" in results and "exact" in results:
        exact_std = results["exact"][n2]["std"]
        tut_std = results["tutorial"][n2]["std"]
        err = [t / e - 1 for t, e in zip(tut_std, exact_std, strict=True)]
        print()
        print(
            "tutorial per-image std averaged vs exact pooled std (N2): "
            + ", ".join(f"{c} {100 * e:+.2f}%" for c, e in zip("RGB", err, strict=True))
        )
    if "exact" in results:
        ex = rate("exact")
        mem = results["exact"][n2]["maxrss_mib"] / results["exact"][n1]["maxrss_mib"]
        print(
            f"goals: exact/floor = {ex / base['floor']:.2f} (>= 0.85); "
            f"exact/tutorial = {ex / base['tutorial']:.2f} (>= 3); "
            f"exact peak memory N2/N1 = {mem:.2f} (<= 1.25)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_measure":
        measure(sys.argv[2:])
    else:
        main()
