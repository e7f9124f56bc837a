"""Exact statistics of integer images from their value histograms.

Each image is reduced to its per-channel value histogram (a sufficient
statistic); a chunk of images to a :class:`Partial` (histograms, exact sums of
the per-image values, failures) that merges with others by addition. Values
are on one ``[0, 1]`` scale: an 8-bit ``v`` is ``v / 255``, a 16-bit ``u`` is
``u / 65535`` (equivalently ``v`` counts as ``257 v`` on the 16-bit scale).

- ``exact``: per channel the integers ``n``, ``S1 = sum(x)``, ``S2 = sum(x*x)``
  (Python ints, no overflow), combined as exact rationals
  ``mean = S1 / (n s)``, ``var = (n S2 - S1^2) / (n^2 s^2)`` and rounded once to
  float (``std`` is the correctly rounded square root of the exact ``var``).
  Bit-for-bit independent of chunking, worker count and order.
- ``chan``: per chunk, float64 two-pass moments ``(n, mean, M2)`` over the
  chunk's values (over the chunk histogram, values weighted by their counts),
  merged with the pairwise update of Chan, Golub & LeVeque.
- ``two-pass``: the merged histograms of the whole source, then the float64
  global two-pass over the values weighted by their counts: pass 1 the mean,
  pass 2 the squared deviations from it.

The per-image values (each image's mean and population std, averaged over
images) are summed exactly, in units of ``2**-1074``, so they do not depend on
order either.

References:
    T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise
    algorithm for computing sample variances", COMPSTAT 1982 / Stanford
    STAN-CS-79-773 (1979).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from pipeline.decode import ImageHistogram
from pipeline.errors import Failure
from pipeline.stats.files import FIXED_BITS as _FIXED_BITS
from pipeline.stats.files import FileMoments, image_values
from pipeline.stats.files import fixed_point as _fixed
from pipeline.stats.model import CHANNELS, Stats
from pipeline.stats.moments import chan_merge, sqrt_fraction

__all__ = ["Partial", "finish", "hist_moments", "merge"]


def _exact_dot(counts: np.ndarray, values: np.ndarray) -> int:
    """``sum(counts * values)`` in Python ints (no overflow)."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0
    return int(np.dot(counts[nz].astype(object), values[nz].astype(object)))


_V8 = np.arange(256, dtype=np.int64)
_V16 = np.arange(65536, dtype=np.int64)
_X8 = np.arange(256, dtype=np.float64) / 255.0
_X16 = np.arange(65536, dtype=np.float64) / 65535.0


def hist_moments(
    hist8: np.ndarray | None, hist16: np.ndarray | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Float64 two-pass ``(n, mean, M2)`` of the values in the histograms."""
    parts = [(h.astype(np.float64), x) for h, x in ((hist8, _X8), (hist16, _X16)) if h is not None]
    if not parts:
        return 0, np.zeros(3), np.zeros(3)
    n = int(sum(int(h[0].sum()) for h, _ in parts))
    if n == 0:
        return 0, np.zeros(3), np.zeros(3)
    mean = sum((h @ x for h, x in parts), start=np.zeros(3)) / n
    m2 = np.zeros(3)
    for h, x in parts:
        for c in range(3):
            d = x - mean[c]
            m2[c] += h[c] @ (d * d)
    return n, mean, m2


# --------------------------------------------------------- integer-source partial


@dataclass
class Partial:
    """What one chunk of files contributes; merges by addition (and Chan for ``chan``)."""

    hist8: np.ndarray | None = None
    hist16: np.ndarray | None = None
    images: int = 0
    # exact sums of the per-image floats, in units of 2**-1074 (see _fixed)
    mean_sum: list[int] = field(default_factory=lambda: [0, 0, 0])
    std_sum: list[int] = field(default_factory=lambda: [0, 0, 0])
    failures: list[Failure] = field(default_factory=list)
    moments: tuple[int, np.ndarray, np.ndarray] | None = None
    # per-file moments (when the caller asks for them), in any order
    files: list[FileMoments] = field(default_factory=list)

    def add_image(self, h: ImageHistogram) -> None:
        """Count one image: its histogram, and its mean and std in the exact per-image sums."""
        if h.bits == 8:
            self.hist8 = h.counts.copy() if self.hist8 is None else self.hist8 + h.counts
        else:
            if self.hist16 is None:
                self.hist16 = h.counts.copy()
            else:
                self.hist16 += h.counts
        means, stds = image_values(h)
        self.images += 1
        self.mean_sum = [s + _fixed(m) for s, m in zip(self.mean_sum, means, strict=True)]
        self.std_sum = [s + _fixed(m) for s, m in zip(self.std_sum, stds, strict=True)]


def _add_hist(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def merge(*parts: Partial) -> Partial:
    """Merge partials: histograms and exact sums add, ``chan`` moments merge pairwise."""
    out = Partial()
    for p in parts:
        out.hist8 = _add_hist(out.hist8, p.hist8)
        out.hist16 = _add_hist(out.hist16, p.hist16)
        out.images += p.images
        out.mean_sum = [a + b for a, b in zip(out.mean_sum, p.mean_sum, strict=True)]
        out.std_sum = [a + b for a, b in zip(out.std_sum, p.std_sum, strict=True)]
        out.failures.extend(p.failures)
        out.files.extend(p.files)
        if p.moments is not None:
            out.moments = p.moments if out.moments is None else chan_merge(out.moments, p.moments)
    return out


def finish(part: Partial, method: str) -> Stats:
    """Turn the merged partial of a whole source into :class:`Stats`."""
    if part.images == 0:
        return Stats.empty(method=method)
    zero8 = np.zeros((3, 256), dtype=np.int64)
    zero16 = np.zeros((3, 65536), dtype=np.int64)
    h8 = part.hist8 if part.hist8 is not None else zero8
    h16 = part.hist16 if part.hist16 is not None else zero16
    n = int(h8[0].sum()) + int(h16[0].sum())
    s = 65535
    mean: list[float] = []
    var: list[float] = []
    std: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for c in range(3):
        if method == "exact":
            s1 = 257 * _exact_dot(h8[c], _V8) + _exact_dot(h16[c], _V16)
            s2 = 257 * 257 * _exact_dot(h8[c], _V8 * _V8) + _exact_dot(h16[c], _V16 * _V16)
            q = Fraction(n * s2 - s1 * s1, n * n * s * s)
            mean.append(float(Fraction(s1, n * s)))
            var.append(float(q))
            std.append(sqrt_fraction(q))
        nz8, nz16 = np.flatnonzero(h8[c]), np.flatnonzero(h16[c])
        cands = [Fraction(int(nz8[0]), 255)] if nz8.size else []
        cands += [Fraction(int(nz16[0]), 65535)] if nz16.size else []
        lo.append(float(min(cands)))
        cands = [Fraction(int(nz8[-1]), 255)] if nz8.size else []
        cands += [Fraction(int(nz16[-1]), 65535)] if nz16.size else []
        hi.append(float(max(cands)))
    if method == "chan":
        assert part.moments is not None  # set by every chunk for this method
        _, m, m2 = part.moments
        mean, var = [float(v) for v in m], [float(v) for v in m2 / n]
        std = [math.sqrt(v) for v in var]
    elif method == "two-pass":
        _, m, m2 = hist_moments(part.hist8, part.hist16)
        mean, var = [float(v) for v in m], [float(v) for v in m2 / n]
        std = [math.sqrt(v) for v in var]
    display = h8 + h16.reshape(3, 256, 256).sum(axis=2)
    return Stats(
        channels=list(CHANNELS),
        scale="0-1",
        images=part.images,
        count=n,
        mean=mean,
        var=var,
        std=std,
        min=lo,
        max=hi,
        per_image_mean=[float(Fraction(v, part.images << _FIXED_BITS)) for v in part.mean_sum],
        per_image_std=[float(Fraction(v, part.images << _FIXED_BITS)) for v in part.std_sum],
        method=method,
        histogram=display.tolist(),
    )
