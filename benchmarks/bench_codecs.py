"""Benchmark: codecs and levels for the store's ``images`` array, on real photos.

Which compressor should the store use by default? Every codec is measured
through zarr-python 3's own codec objects, the way a store uses them: a Zarr
array in memory (``zarr.storage.MemoryStore``, so disk speed does not enter)
with the store's sharding, written with one ``array[...] = shard`` call and
read back with one ``array[...]``, for two inner-chunk layouts:

- ``sample``: chunk ``(1, C, H, W)`` inside a shard of ``S`` samples: the
  store's current layout (one codec call per sample);
- ``shard``: inner chunk = the whole shard: one codec call per shard, which
  shows the per-chunk overhead of the layout above.

Data (``S`` samples of 224x224, 256 by default = one shard):

- ``photos``: the colour photographs of ``skimage.data`` (astronaut, coffee,
  chelsea, rocket, immunohistochemistry, hubble_deep_field, retina, cat),
  each first made a typical dataset image (longer side 500 px, JPEG quality
  90, decoded), then cut into samples the way a run makes them: the whole
  image shorter-side resized and centre cropped, and random crops (area
  0.25-1, aspect 3/4-4/3, random flip) resized with the project's resize
  (:func:`pipeline.transforms.resize_image`, antialiased bilinear);
- ``synthetic``: the JPEGs that ``bench_stats``/``bench_prepare`` time (smooth
  colour fields plus Gaussian noise of sigma 10), decoded and resized the same
  way: noisier than photos, so they show the worst case of the throughput
  benchmark's data.

Each set is stored as ``float16`` after ``(x / 255 - mean) / std`` with the
set's own pooled per-channel statistics (what a run stores by default), and
as ``uint8`` (the un-normalized compact store).

Columns: ``ratio`` = raw bytes / stored bytes (shard index included);
``enc``/``dec`` MB/s per core = raw MB (1e6 bytes) per CPU-second of the
process (user + system, every thread: zarr runs codecs in a thread pool), so
a busy machine disturbs them less than wall time, which is printed beside;
``ms/img`` = CPU milliseconds per 3x224x224 sample. Rounds are interleaved
(every codec once per round) and the best round counts. Every round trip is
checked bit for bit.

The Pareto front is over (enc MB/s/core, dec MB/s/core, ratio) of the
``photos`` float16 rows of each layout. The recommendation is the front's
codec with the least encode + decode CPU per sample among those that store
at most ``--target`` (0.85) of the raw bytes on every float16 set measured
(photos and synthetic), as the Throughput issue asks.

    python benchmarks/bench_codecs.py                       # 256 samples, 3 rounds
    python benchmarks/bench_codecs.py --samples 64 --repeat 1 --data photos   # quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZE = (224, 224)
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cat",
)
MB = 1e6


# ----------------------------------------------------------------------------- data


def _as_dataset_image(rgb: np.ndarray, *, longer: int = 500, quality: int = 90) -> np.ndarray:
    """A photo as a typical dataset JPEG: longer side ``longer`` px, JPEG ``quality``, decoded."""
    from PIL import Image

    im = Image.fromarray(rgb)
    scale = longer / max(im.size)
    if scale < 1:
        im = im.resize(
            (round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR
        )
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as back:
        return np.array(back.convert("RGB"))  # writable, for torch.from_numpy


def _random_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """A random crop box (x1, y1, x2, y2): area 0.25-1 of the image, aspect 3/4-4/3."""
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * h * w
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        bw, bh = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < bw <= w and 0 < bh <= h:
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            return (x, y, x + bw, y + bh)
    return (0, 0, w, h)


def _cut(images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` uint8 samples ``(n, 3, 224, 224)``: each image whole, then random crops."""
    import torch

    from ops import resize_to, resized_crop

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, *SIZE), dtype=np.uint8)
    for i in range(n):
        img = images[i % len(images)]
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if i < len(images):
            x = resize_to(t, SIZE).numpy()
        else:
            x = resized_crop(t, _random_box(rng, *img.shape[:2]), SIZE).numpy()
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
        out[i] = x
    return out


def photo_samples(n: int = 256, *, seed: int = 0) -> np.ndarray:
    """``n`` uint8 samples ``(n, 3, 224, 224)`` cut from skimage's colour photos (offline)."""
    import skimage.data

    images = [_as_dataset_image(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
    return _cut(images, n, seed)


def synthetic_samples(n: int = 256, *, seed: int = 0) -> np.ndarray:
    """``n`` uint8 samples from the benchmark JPEGs of ``bench_stats`` (made in memory)."""
    from bench_stats import _jpeg
    from PIL import Image

    images = []
    for i in range(min(n, 64)):
        with Image.open(io.BytesIO(_jpeg(i))) as im:
            images.append(np.array(im.convert("RGB")))
    return _cut(images, n, seed)


def normalized(samples: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """``float16((x / 255 - mean) / std)`` with the samples' pooled per-channel statistics."""
    x = samples.astype(np.float64) / 255
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    m = mean.astype(np.float32)[None, :, None, None]
    s = std.astype(np.float32)[None, :, None, None]
    out = ((samples.astype(np.float32) / np.float32(255) - m) / s).astype(np.float16)
    return out, mean.tolist(), std.tolist()


def sample_sets(names: list[str], n: int) -> dict[tuple[str, str], np.ndarray]:
    """``{(set, dtype): array}`` for the named sets, float16 normalized and uint8."""
    makers = {"photos": photo_samples, "synthetic": synthetic_samples}
    out = {}
    for name in names:
        u8 = makers[name](n)
        out[(name, "float16")] = normalized(u8)[0]
        out[(name, "uint8")] = u8
    return out


# ----------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class Codec:
    """A named compressor configuration; ``make(itemsize)`` returns zarr's compressors."""

    name: str
    make: Callable[[int], tuple[Any, ...] | None]
    slow: bool = False


def _blosc(cname: str, clevel: int, shuffle: str) -> Callable[[int], tuple[Any, ...]]:
    def make(itemsize: int) -> tuple[Any, ...]:
        from zarr.codecs import BloscCodec

        return (BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, typesize=itemsize),)

    return make


def _zstd(level: int) -> Callable[[int], tuple[Any, ...]]:
    def make(itemsize: int) -> tuple[Any, ...]:
        from zarr.codecs import ZstdCodec

        return (ZstdCodec(level=level),)

    return make


def _gzip(level: int) -> Callable[[int], tuple[Any, ...]]:
    def make(itemsize: int) -> tuple[Any, ...]:
        from zarr.codecs import GzipCodec

        return (GzipCodec(level=level),)

    return make


# c-blosc 1 maps the zstd clevel to a zstd level: 1 -> 1, 2 -> 3, 3 -> 5 (2 * clevel - 1).
CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("none", lambda itemsize: None),
        Codec("zstd-1", _zstd(1)),
        Codec("zstd-3", _zstd(3)),
        Codec("gzip-6", _gzip(6), slow=True),
        Codec("blosc-lz4-5-shuffle", _blosc("lz4", 5, "shuffle")),
        Codec("blosc-lz4-5-bitshuffle", _blosc("lz4", 5, "bitshuffle")),
        Codec("blosc-lz4-9-shuffle", _blosc("lz4", 9, "shuffle")),
        Codec("blosc-lz4-9-bitshuffle", _blosc("lz4", 9, "bitshuffle")),
        Codec("blosc-zstd-1-shuffle", _blosc("zstd", 1, "shuffle")),
        Codec("blosc-zstd-1-bitshuffle", _blosc("zstd", 1, "bitshuffle")),
        Codec("blosc-zstd-2-shuffle", _blosc("zstd", 2, "shuffle")),
        Codec("blosc-zstd-2-bitshuffle", _blosc("zstd", 2, "bitshuffle")),
    )
}
LAYOUTS = ("sample", "shard")
TIMES = ("enc_wall", "enc_cpu", "dec_wall", "dec_cpu")


# ----------------------------------------------------------------------------- timing


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def roundtrip(data: np.ndarray, compressors: tuple[Any, ...] | None, layout: str) -> dict:
    """Write ``data`` as one shard of a Zarr array in memory, read it back; times and bytes."""
    import zarr

    chunks = (1, *data.shape[1:]) if layout == "sample" else data.shape
    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(
        store,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=data.shape,
        compressors=compressors,
        fill_value=0,
        config={"write_empty_chunks": True},  # what write_shard sets: no all-fill scan
    )
    w0, c0 = _clock()
    arr[...] = data
    w1, c1 = _clock()
    back = arr[...]
    w2, c2 = _clock()
    if not np.array_equal(np.asarray(back).view(np.uint8), data.view(np.uint8)):
        raise SystemExit(f"round trip of {compressors} ({layout}) changed the data")
    stored = sum(len(v) for k, v in store._store_dict.items() if not k.endswith("zarr.json"))
    return {
        "enc_wall": w1 - w0,
        "enc_cpu": c1 - c0,
        "dec_wall": w2 - w1,
        "dec_cpu": c2 - c1,
        "stored": stored,
    }


@dataclass
class Row:
    data: str
    dtype: str
    codec: str
    layout: str
    raw: int
    samples: int
    stored: int
    enc_wall: float
    enc_cpu: float
    dec_wall: float
    dec_cpu: float

    @property
    def ratio(self) -> float:
        return self.raw / self.stored

    def rate(self, key: str) -> float:
        return self.raw / MB / max(getattr(self, key), 1e-9)

    def ms(self, key: str) -> float:
        return 1e3 * getattr(self, key) / self.samples


def pareto(rows: list[Row]) -> list[Row]:
    """Rows that no other row beats on encode speed, decode speed and ratio at once."""

    def key(r: Row) -> tuple[float, float, float]:
        return (r.rate("enc_cpu"), r.rate("dec_cpu"), r.ratio)

    front = []
    for r in rows:
        a = key(r)
        dominated = any(
            all(x >= y for x, y in zip(key(o), a, strict=True)) and key(o) != a
            for o in rows
            if o is not r
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: -r.rate("enc_cpu"))


def table(rows: list[Row]) -> str:
    lines = [
        "| data | dtype | codec | layout | ratio | stored/raw | enc MB/s/core | dec MB/s/core "
        "| enc ms/img | dec ms/img | enc MB/s wall | dec MB/s wall |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.data} | {r.dtype} | {r.codec} | {r.layout} | {r.ratio:.3f} | "
            f"{1 / r.ratio:.3f} | {r.rate('enc_cpu'):.0f} | {r.rate('dec_cpu'):.0f} | "
            f"{r.ms('enc_cpu'):.3f} | {r.ms('dec_cpu'):.3f} | {r.rate('enc_wall'):.0f} | "
            f"{r.rate('dec_wall'):.0f} |"
        )
    return "\n".join(lines)


def recommend(rows: list[Row], *, target: float, floor_ips: float) -> str:
    """The recommendation text for the photos float16 rows of the store's layout."""
    out = []
    for layout in LAYOUTS:
        sel = [r for r in rows if (r.data, r.dtype, r.layout) == ("photos", "float16", layout)]
        if not sel:
            continue
        front = pareto(sel)
        out.append(f"\nPareto front, photos float16, layout {layout} (enc, dec MB/s/core, ratio):")
        for r in front:
            ok = "meets" if 1 / r.ratio <= target else "misses"
            worst_any = max(
                1 / o.ratio for o in rows if o.codec == r.codec and o.dtype == "float16"
            )
            out.append(
                f"  {r.codec:26s} {r.rate('enc_cpu'):6.0f} {r.rate('dec_cpu'):6.0f} "
                f"{r.ratio:6.3f}  ({ok} stored/raw <= {target}; worst float16 set "
                f"{worst_any:.3f})"
            )
        # the target must hold on every float16 set measured (photos and the noisy synthetic)
        worst = {
            r.codec: max(1 / o.ratio for o in rows if o.codec == r.codec and o.dtype == "float16")
            for r in front
        }
        fits = [r for r in front if worst[r.codec] <= target]
        if not fits:
            out.append(f"  no codec on the front stores <= {target} of raw on every set")
            continue
        best = min(fits, key=lambda r: r.enc_cpu + r.dec_cpu)
        by = {r.codec: r for r in sel}
        out.append(f"  recommended ({layout}): {best.codec}")
        per_core = floor_ips / 2
        for other in ("none", "zstd-3"):
            o = by.get(other)
            if o is None or o is best:
                continue
            out.append(
                f"    vs {other}: encode {best.ms('enc_cpu'):.3f} vs {o.ms('enc_cpu'):.3f} ms/img "
                f"({o.enc_cpu / best.enc_cpu:.2f}x), decode {best.ms('dec_cpu'):.3f} vs "
                f"{o.ms('dec_cpu'):.3f} ms/img ({o.dec_cpu / best.dec_cpu:.2f}x), stored/raw "
                f"{1 / best.ratio:.3f} vs {1 / o.ratio:.3f}"
            )
        out.append(
            f"    at the floor's {per_core:.0f} img/s per core the encode takes "
            f"{100 * best.ms('enc_cpu') * per_core / 1e3:.0f} % of a core "
            f"(zstd-3: {100 * by['zstd-3'].ms('enc_cpu') * per_core / 1e3:.0f} %)"
            if "zstd-3" in by
            else ""
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=256, help="samples per shard (one shard)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best counts")
    ap.add_argument("--data", nargs="+", default=["photos", "synthetic"])
    ap.add_argument("--dtypes", nargs="+", default=["float16", "uint8"])
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--target", type=float, default=0.85, help="stored/raw the default must meet")
    ap.add_argument(
        "--floor-ips", type=float, default=460.0, help="the decode floor (img/s on 2 cores)"
    )
    ap.add_argument("--json", type=Path, help="also write every row here")
    args = ap.parse_args()

    import numcodecs
    import zarr

    sets = {k: v for k, v in sample_sets(args.data, args.samples).items() if k[1] in args.dtypes}
    print(
        f"{args.samples} samples of 3x224x224 per shard; zarr {zarr.__version__}, numcodecs "
        f"{numcodecs.__version__}, {os.cpu_count()} CPUs, async.concurrency "
        f"{zarr.config.get('async.concurrency')}, codec_pipeline.batch_size "
        f"{zarr.config.get('codec_pipeline.batch_size')}; best of {args.repeat}"
    )
    runs: dict[tuple[str, str, str, str], list[dict]] = {}
    for rep in range(args.repeat):
        for (data, dtype), arr in sets.items():
            for name in args.codecs:
                codec = CODECS[name]
                for layout in args.layouts:
                    r = roundtrip(arr, codec.make(arr.dtype.itemsize), layout)
                    runs.setdefault((data, dtype, name, layout), []).append(r)
                    print(
                        f"  [{rep + 1}] {data:9s} {dtype:7s} {name:24s} {layout:6s} "
                        f"enc {r['enc_wall']:6.3f} s wall {r['enc_cpu']:6.3f} s cpu  "
                        f"dec {r['dec_wall']:6.3f} s wall {r['dec_cpu']:6.3f} s cpu  "
                        f"ratio {arr.nbytes / r['stored']:.3f}",
                        flush=True,
                    )
    rows = []
    for (data, dtype, name, layout), rs in runs.items():
        arr = sets[(data, dtype)]
        rows.append(
            Row(
                data=data,
                dtype=dtype,
                codec=name,
                layout=layout,
                raw=arr.nbytes,
                samples=arr.shape[0],
                stored=rs[0]["stored"],
                **{k: min(r[k] for r in rs) for k in TIMES},
            )
        )
    print()
    print(table(rows))
    if "sample" in args.layouts and "shard" in args.layouts:
        print("\nper-chunk overhead of 1-sample chunks (CPU per sample, sample - shard layout):")
        by = {(r.data, r.dtype, r.codec, r.layout): r for r in rows}
        for (data, dtype, name, layout), r in by.items():
            if layout != "sample" or (data, dtype, name, "shard") not in by:
                continue
            s = by[(data, dtype, name, "shard")]
            enc = 1e3 * (r.ms("enc_cpu") - s.ms("enc_cpu"))
            dec = 1e3 * (r.ms("dec_cpu") - s.ms("dec_cpu"))
            print(
                f"  {data:9s} {dtype:7s} {name:24s} encode {enc:6.0f} us  decode {dec:6.0f} us  "
                f"size {r.stored / s.stored:.3f}x"
            )
    print(recommend(rows, target=args.target, floor_ips=args.floor_ips))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    main()
