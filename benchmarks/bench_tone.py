"""Selectivity of the shadows/highlights methods on real photographs (docs/ops.md table).

Usage::

    .venv/bin/python benchmarks/bench_tone.py
    .venv/bin/python benchmarks/bench_tone.py --photos camera coffee

For each of scikit-image's sample photographs (full size, float64 RGB in
``[0, 1]``, gray images repeated to 3 channels) it prints the mean change,
averaged over channels, of the darkest 10 % and of the brightest 10 % of the
pixels by BT.601 luma, and their ratio, for:

- the source's method, ``ops.shadows_highlights`` with ``gamma_shadows=0.5``
  (should lift the darkest tenth >= 4x the brightest) and with
  ``gamma_highlights=2`` (should darken the brightest tenth >= 4x the darkest);
- ``ops.adjust_shadows_highlights`` (Moroney-style, not the source's) with
  ``shadows=0.3`` and ``highlights=0.3``;
- the gain curve that ``adjust_shadows_highlights`` used before issue 12
  (``2 ** (shadows (1 - M)^2 - highlights M^2)``, re-implemented here) with
  ``shadows=0.5``.

The criterion (ratio >= 4) comes from issue 12; ``PASS``/``fail`` marks it.
Nothing is timed: this is a measurement of what the methods do.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.ndimage as ndi
import torch

import ops

PHOTOS = ["camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "astronaut"]


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as float64 RGB ``(3, H, W)`` in ``[0, 1]``."""
    import skimage.data

    img = getattr(skimage.data, name)().astype(np.float64) / 255.0
    return np.stack([img] * 3) if img.ndim == 2 else img[..., :3].transpose(2, 0, 1)


def decile_changes(out: np.ndarray, img: np.ndarray) -> tuple[float, float]:
    """Mean change of the darkest and of the brightest 10 % of the pixels, by luma."""
    luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    low, high = np.quantile(luma, [0.1, 0.9])
    change = (out - img).mean(axis=0)
    return float(change[luma <= low].mean()), float(change[luma >= high].mean())


def former_gain_curve(img: np.ndarray, shadows: float, highlights: float) -> np.ndarray:
    """The exposure gain ``adjust_shadows_highlights`` applied before issue 12."""
    luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    sigma = ops.default_tone_sigma(*img.shape[-2:])
    mask = np.clip(ndi.gaussian_filter(luma, sigma, mode="reflect"), 0, 1)
    gain = 2.0 ** (shadows * (1 - mask) ** 2 - highlights * mask**2)
    return img * (gain / np.maximum(1.0, gain * img.max(axis=0)))


def ratio(first: float, second: float) -> float:
    """``|first| / |second|`` (inf when ``second`` is 0 and ``first`` is not)."""
    if second == 0:
        return float("inf") if first != 0 else 0.0
    return abs(first) / abs(second)


def row(label: str, dark: float, bright: float, *, lift: bool) -> str:
    """One table row; ``lift``: the dark decile should move most (shadows)."""
    r = ratio(dark, bright) if lift else ratio(bright, dark)
    ok = "PASS" if r >= 4 and (dark > 0 if lift else bright < 0) else "fail"
    return f"| {label} | {dark:+.5f} | {bright:+.5f} | {r:.1f} | {ok} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="+", default=PHOTOS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| photo, method | darkest 10 % | brightest 10 % | ratio | >= 4 |")
    print("|---|---|---|---|---|")
    for name in args.photos:
        img = photo(name)
        x = torch.from_numpy(img)
        cases = [
            ("source gamma_shadows=0.5", ops.shadows_highlights(x, gamma_shadows=0.5), True),
            ("source gamma_highlights=2", ops.shadows_highlights(x, gamma_highlights=2.0), False),
            ("moroney shadows=0.3", ops.adjust_shadows_highlights(x, shadows=0.3), True),
            ("moroney highlights=0.3", ops.adjust_shadows_highlights(x, highlights=0.3), False),
        ]
        for label, out, lift in cases:
            print(row(f"{name}, {label}", *decile_changes(out.numpy(), img), lift=lift))
        former = former_gain_curve(img, 0.5, 0.0)
        print(row(f"{name}, former gain shadows=0.5", *decile_changes(former, img), lift=True))


if __name__ == "__main__":
    main()
