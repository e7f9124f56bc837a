"""Lucas–Kanade on real photographs: bias, endpoint error, and runtime against OpenCV's Farneback.

Usage::

    .venv/bin/python benchmarks/bench_lk.py                  # tables + runtime, 1 thread
    .venv/bin/python benchmarks/bench_lk.py --threads 2 --repeats 7
    .venv/bin/python benchmarks/bench_lk.py --no-opencv      # without the Farneback rows

Data (the same construction as ``tests/ops/test_flow.py``): the luma of
scikit-image's sample photographs, 8-bit. A pair is the central ``--region``
square of a photo and that square moved by a known motion, both quantized to
uint8 again:

- translation ``(dx, dy)``: Fourier shift of the region's mirror extension
  (periodic and continuous, so the shift is exact for the band-limited region);
- smooth field ``u(x, y) = offset + A (sin(2 pi y / L), cos(2 pi x / L))``:
  ``b(p) = a(p - u(p))`` sampled with scipy's quintic spline.

Scores, on the valid pixels of the central ``--crop`` square minus a 12 px
margin: the median of each error component (the *bias*) and the median
endpoint error (EPE); Farneback, which has no validity mask, is scored on the
pixels ``ours`` marks valid (the same pixels for every method on a pair).
``lucas_kanade`` runs on float32 images and returns the flow at the midpoint
(``b(p + d/2) = a(p - d/2)``), Farneback in ``a``'s frame (``b(p + d) = a(p)``);
for fields each is scored against its own truth (fixed-point solutions of
``d = u(p + d/2)`` and ``d = u(p + d)``).

The methods compared are these.

- ``ours``: ``lucas_kanade`` defaults (cubic B-spline half-warps, presmooth 1,
  sigma 2, 5 iterations), ``levels=1`` up to 2 px and ``levels=3`` beyond;
- ``ours quintic``: the same with ``interpolation="quintic"``;
- ``ours linear``: bilinear half-warps with the presmoothing;
- ``former``: the scheme before issue 12 (bilinear, no presmoothing);
- ``farneback``: ``cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5,
  1.2, 0)`` (OpenCV's documented example parameters), on the uint8 images.

Runtime: one pair of ``--size`` x ``--size`` pixels (the camera photo,
translated by (5.7, -4.3)), ``ours`` at ``levels=3`` against Farneback (3 levels
too), both on ``--threads`` threads, median of ``--repeats`` runs after one
warm-up; the ratio is ours / Farneback (below 1: ours is faster).

OpenCV is a benchmark-only dependency (``pip install -c constraints.txt
opencv-python-headless``, or ``make bench``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.ndimage as ndi
import torch

from ops import lucas_kanade

PHOTOS = ["camera", "astronaut", "coffee", "chelsea"]
MARGIN = 12
TRANSLATIONS = [
    (0.25, 0.0),
    (0.5, 0.0),
    (0.75, 0.0),
    (1.0, 0.0),
    (1.5, 0.0),
    (1.3, -0.7),
    (1.8, -1.1),
    (5.7, -4.3),
    (-6.2, 3.6),
]
# (offset, amplitude, wavelength): |grad u| <= 0.012 per pixel.
FIELDS = [((0.3, 0.2), 1.5, 768.0), ((5.0, -3.5), 1.0, 512.0)]


@functools.lru_cache(maxsize=8)
def luma(name: str) -> np.ndarray:
    """BT.601 luma of a scikit-image sample photograph, float64 in [0, 1]."""
    import skimage.data

    img = getattr(skimage.data, name)().astype(np.float64) / 255.0
    return img if img.ndim == 2 else img[..., :3] @ np.array([0.299, 0.587, 0.114])


def centre(x: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` square of ``x``."""
    h, w = x.shape
    return x[(h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2]


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to 8 bits, back on the [0, 1] scale."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0


@functools.lru_cache(maxsize=16)
def mirror_spectrum(name: str, region: int) -> np.ndarray:
    """FFT of the mirror extension of the photo's central region."""
    g = centre(luma(name), region)
    return np.fft.fft2(np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]]))


def translated(name: str, region: int, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """The region and the region moved by ``(dx, dy)``, both 8-bit."""
    g = centre(luma(name), region)
    moved = np.real(np.fft.ifft2(ndi.fourier_shift(mirror_spectrum(name, region), (dy, dx))))
    return quantize(g), quantize(moved[:region, :region])


def field(
    xs: np.ndarray, ys: np.ndarray, offset: tuple[float, float], amplitude: float, length: float
) -> tuple[np.ndarray, np.ndarray]:
    """The smooth displacement field at ``(xs, ys)``."""
    ux = offset[0] + amplitude * np.sin(2 * np.pi * ys / length)
    uy = offset[1] + amplitude * np.cos(2 * np.pi * xs / length)
    return ux, uy


def field_pair(
    name: str, region: int, offset: tuple[float, float], amplitude: float, length: float
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``a``, ``b(p) = a(p - u(p))`` and the truth in the midpoint and in ``a``'s frame."""
    g = luma(name)
    h, w = g.shape
    y0, x0 = (h - region) // 2, (w - region) // 2
    ys, xs = np.mgrid[y0 : y0 + region, x0 : x0 + region].astype(np.float64)
    ux, uy = field(xs, ys, offset, amplitude, length)
    moved = ndi.map_coordinates(g, [ys - uy, xs - ux], order=5, mode="mirror")
    truth = {}
    for frame, share in (("mid", 0.5), ("a", 1.0)):
        dx, dy = ux, uy
        for _ in range(60):
            dx, dy = field(xs + share * dx, ys + share * dy, offset, amplitude, length)
        truth[frame] = (dx, dy)
    return quantize(centre(g, region)), quantize(moved), truth


def ours(
    **kwargs: object,
) -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """A flow method: ``lucas_kanade`` on float32 images with ``kwargs``; (flow, valid)."""

    def run(a: np.ndarray, b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
        ta = torch.from_numpy(a).float()[None]
        tb = torch.from_numpy(b).float()[None]
        res = lucas_kanade(ta, tb, levels=levels, **kwargs)
        return res.flow.double().numpy(), res.valid.numpy()[0]

    return run


def farneback(a: np.ndarray, b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's Farneback flow on the uint8 images (no validity mask: every pixel)."""
    import cv2

    a8 = np.round(a * 255).astype(np.uint8)
    b8 = np.round(b * 255).astype(np.uint8)
    flow = cv2.calcOpticalFlowFarneback(a8, b8, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return flow.transpose(2, 0, 1).astype(np.float64), np.ones(a.shape, dtype=bool)


def score(
    flow: np.ndarray, valid: np.ndarray, tx: np.ndarray | float, ty: np.ndarray | float, crop: int
) -> tuple[float, float, float, float]:
    """Median bias x, y, median EPE and valid share on the scored square."""
    region = flow.shape[-1]
    lo = (region - crop) // 2 + MARGIN
    hi = (region + crop) // 2 - MARGIN
    box = (slice(lo, hi), slice(lo, hi))
    v = valid[box]
    tx = tx[box] if isinstance(tx, np.ndarray) else tx
    ty = ty[box] if isinstance(ty, np.ndarray) else ty
    ex = (flow[0][box] - tx)[v]
    ey = (flow[1][box] - ty)[v]
    return (
        float(np.median(ex)),
        float(np.median(ey)),
        float(np.median(np.hypot(ex, ey))),
        float(v.mean()),
    )


def tables(methods: dict[str, Callable], region: int, crop: int) -> None:
    """Print the translation and field tables (worst over photos, and per photo)."""
    print(f"\n## Translations ({region} px region of {', '.join(PHOTOS)}, {crop} px scored)")
    print("max |bias| and max median EPE over the photos (px); levels 1 up to 2 px, else 3\n")
    print("| (dx, dy) | " + " | ".join(f"{m} bias / EPE" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    detail = []
    for dx, dy in TRANSLATIONS:
        levels = 1 if max(abs(dx), abs(dy)) <= 2 else 3
        cells = []
        for label, method in methods.items():
            worst_bias = worst_epe = 0.0
            for name in PHOTOS:
                a, b = translated(name, region, dx, dy)
                flow, valid = method(a, b, levels)
                if label == "farneback":  # scored where ours is valid, for a like-for-like median
                    valid = ours()(a, b, levels)[1]
                bx, by, epe, valid_share = score(flow, valid, dx, dy, crop)
                worst_bias = max(worst_bias, abs(bx), abs(by))
                worst_epe = max(worst_epe, epe)
                detail.append((label, name, dx, dy, bx, by, epe, valid_share))
            cells.append(f"{worst_bias:.4f} / {worst_epe:.4f}")
        print(f"| ({dx}, {dy}) | " + " | ".join(cells) + " |")
    print("\n## Smooth fields (same scoring; each method against the truth in its frame)\n")
    print("| field | " + " | ".join(f"{m} bias / EPE" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for offset, amplitude, length in FIELDS:
        levels = 1 if max(abs(o) for o in offset) + amplitude <= 2.5 else 3
        cells = []
        for label, method in methods.items():
            worst_bias = worst_epe = 0.0
            for name in PHOTOS:
                a, b, truth = field_pair(name, region, offset, amplitude, length)
                tx, ty = truth["a" if label == "farneback" else "mid"]
                flow, valid = method(a, b, levels)
                if label == "farneback":
                    valid = ours()(a, b, levels)[1]
                bx, by, epe, _ = score(flow, valid, tx, ty, crop)
                worst_bias = max(worst_bias, abs(bx), abs(by))
                worst_epe = max(worst_epe, epe)
            cells.append(f"{worst_bias:.4f} / {worst_epe:.4f}")
        print(f"| offset {offset}, A {amplitude}, L {length:g} | " + " | ".join(cells) + " |")
    print("\n## Per photo (translations)\n")
    print("| method | photo | (dx, dy) | bias x | bias y | EPE | valid |")
    print("|---|---|---|---|---|---|---|")
    for label, name, dx, dy, bx, by, epe, valid in detail:
        print(
            f"| {label} | {name} | ({dx}, {dy}) | {bx:+.4f} | {by:+.4f} | {epe:.4f} | {valid:.3f} |"
        )


def phase_bias_table() -> None:
    """The worst phase bias of each interpolation in the symmetric half-warp (analytic).

    For ``exp(i w x)`` sampled on the integers, an interpolator with kernel ``k``
    (and B-spline prefilter ``1 / B(w)``) returns ``H_t(w) exp(i w (n + t))`` at
    ``n + t``; the half-warps sample at ``t`` and ``-t``, so the flow is off by
    ``2 arg H_t(w) / w``. Printed: the worst case over ``t`` in (0, 1/2).
    """
    from scipy.interpolate import BSpline

    def bspline(n: int) -> Callable[[np.ndarray], np.ndarray]:
        basis = BSpline.basis_element(np.arange(n + 2) - (n + 1) / 2, extrapolate=False)
        return lambda x: np.nan_to_num(basis(x))

    def keys(a: float) -> Callable[[np.ndarray], np.ndarray]:
        def k(x: np.ndarray) -> np.ndarray:
            s = np.abs(x)
            inner = (a + 2) * s**3 - (a + 3) * s**2 + 1
            outer = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
            return np.where(s <= 1, inner, np.where(s < 2, outer, 0.0))

        return k

    kernels = {
        "bilinear": (lambda x: np.clip(1 - np.abs(x), 0, None), None),
        "Keys a = -0.5": (keys(-0.5), None),
        "grid_sample bicubic (Keys a = -0.75)": (keys(-0.75), None),
        "cubic B-spline": (bspline(3), bspline(3)),
        "quintic B-spline": (bspline(5), bspline(5)),
    }
    freqs = np.array([0.125, 0.25, 0.5, 0.75]) * np.pi
    taps = np.arange(-4, 6)
    print("\n## Worst phase bias of the half-warps, px (analytic, per angular frequency w)\n")
    print("| interpolation | " + " | ".join(f"w = {f / np.pi:g} pi" for f in freqs) + " |")
    print("|---|" + "---|" * len(freqs))
    for label, (kernel, prefilter) in kernels.items():
        worst = np.zeros(freqs.size)
        for t in np.linspace(0.01, 0.49, 49):
            h = (kernel(t - taps)[:, None] * np.exp(1j * freqs * (taps[:, None] - t))).sum(0)
            if prefilter is not None:
                m = np.arange(-4, 5)
                h = h / (prefilter(m)[:, None] * np.exp(-1j * freqs * m[:, None])).sum(0)
            worst = np.maximum(worst, np.abs(2 * np.angle(h) / freqs))
        print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in worst) + " |")


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def runtime(size: int, repeats: int, with_opencv: bool) -> None:
    """Time ours (levels 3) and Farneback on one translated camera pair."""
    dx, dy = 5.7, -4.3
    a, b = translated("camera", size, dx, dy)
    print(f"\n## Runtime: camera {size} x {size}, translated by ({dx}, {dy})\n")
    print("| method | median s | bias x | bias y | EPE | valid |")
    print("|---|---|---|---|---|---|")
    rows = {}
    mask = ours()(a, b, 3)[1]
    for label, method in [
        ("ours (cubic, levels 3)", ours()),
        ("ours quintic (levels 3)", ours(interpolation="quintic")),
        ("ours linear (levels 3)", ours(interpolation="linear")),
    ] + ([("farneback (3 levels)", farneback)] if with_opencv else []):
        seconds = timed(lambda m=method: m(a, b, 3), repeats)
        flow, valid = method(a, b, 3)
        if label.startswith("farneback"):
            valid = mask
        bx, by, epe, valid_share = score(flow, valid, dx, dy, size)
        rows[label] = seconds
        print(
            f"| {label} | {seconds:.3f} | {bx:+.4f} | {by:+.4f} | {epe:.4f} | {valid_share:.3f} |"
        )
    if with_opencv:
        base = rows["farneback (3 levels)"]
        print()
        for label, seconds in rows.items():
            if label != "farneback (3 levels)":
                print(f"ratio {label} / farneback: {seconds / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--region", type=int, default=256, help="side of the moved region")
    parser.add_argument("--crop", type=int, default=192, help="side of the scored square")
    parser.add_argument("--size", type=int, default=512, help="side of the timed pair")
    parser.add_argument("--no-opencv", action="store_true", help="leave Farneback out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with_opencv = not args.no_opencv
    if with_opencv:
        try:
            import cv2
        except ImportError:
            print("opencv-python-headless is not installed: Farneback rows left out")
            with_opencv = False
        else:
            cv2.setNumThreads(args.threads)
            print(f"OpenCV {cv2.__version__}, torch {torch.__version__}, {args.threads} thread(s)")
    methods: dict[str, Callable] = {
        "ours": ours(),
        "ours quintic": ours(interpolation="quintic"),
        "ours linear": ours(interpolation="linear"),
        "former": ours(interpolation="linear", presmooth=0.0),
    }
    if with_opencv:
        methods["farneback"] = farneback
    phase_bias_table()
    tables(methods, args.region, args.crop)
    runtime(args.size, args.repeats, with_opencv)


if __name__ == "__main__":
    main()
