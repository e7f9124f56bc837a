"""Per-file exact moments: what a store keeps so its statistics stay exact without decoding again.

A :class:`FileMoments` table holds, for each image, the integers that the
``exact`` method sums (pixels ``n``, ``S1 = sum(x)``, ``S2 = sum(x*x)``,
``min``, ``max`` per channel, all on the 16-bit scale: an 8-bit ``v`` counts as
``257 v``), its per-image mean and population std (correctly rounded floats),
and the SHA-256 of the file's bytes. The statistics of any subset of the
files are then a sum (:meth:`FileMoments.stats`), equal bit for bit to the
``exact`` method run over those files (:func:`pipeline.stats.compute_stats`),
min and max included; only the display histogram is not kept.

Example:
    >>> from pipeline.decode import ImageHistogram
    >>> counts = np.zeros((3, 256), np.int64); counts[:, [0, 255]] = 2
    >>> t = FileMoments.of_histograms(["a.png"], [ImageHistogram(8, counts)], [bytes(32)])
    >>> s = t.stats()
    >>> s.mean, s.std, s.min, s.max
    ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.decode import ImageHistogram
from pipeline.errors import Failure, InvalidArgumentError
from pipeline.stats.model import CHANNELS, Stats
from pipeline.stats.moments import sqrt_fraction, sqrt_ratio

__all__ = ["FIXED_BITS", "FileMoments", "fixed_point", "image_values"]

_SCALE = 65535
_V8 = np.arange(256, dtype=np.int64)
_V16 = np.arange(65536, dtype=np.int64)
_INT64_SAFE = 1 << 62
#: Every finite float is an integer multiple of ``2**-FIXED_BITS``.
FIXED_BITS = 1074


def fixed_point(x: float) -> int:
    """The float ``x`` exactly, as an integer number of ``2**-1074`` (cheaper than Fraction)."""
    num, den = x.as_integer_ratio()
    return num << (FIXED_BITS + 1 - den.bit_length())


def _dot(counts: np.ndarray, values: np.ndarray) -> int:
    """``sum(counts * values)`` exactly (Python ints).

    In int64 when no partial sum can overflow (``sum(counts) * max(values)``
    below ``2**63``: every 8-bit image, and 16-bit ones up to ~2 Gpx for the
    first moment), else with Python integers.
    """
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0
    c, v = counts[nz], values[nz]
    if int(c.sum()) * int(v.max()) < _INT64_SAFE:
        return int(np.dot(c.astype(np.int64), v.astype(np.int64)))
    return int(np.dot(c.astype(object), v.astype(object)))


def image_values(h: ImageHistogram) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of one image, correctly rounded."""
    v = _V8 if h.bits == 8 else _V16
    scale = 255 if h.bits == 8 else 65535
    gray = h.counts.strides[0] == 0
    means: list[float] = []
    stds: list[float] = []
    for c in range(3):
        if gray and c > 0:
            means.append(means[0])
            stds.append(stds[0])
            continue
        counts = h.counts[c]
        n = int(counts.sum())
        if n * scale * scale < _INT64_SAFE:
            s1 = int(np.dot(counts, v))
            s2 = int(np.dot(counts, v * v))
        else:
            s1 = _dot(counts, v)
            s2 = _dot(counts, v * v)
        means.append(s1 / (n * scale))
        stds.append(sqrt_ratio(n * s2 - s1 * s1, n * n * scale * scale))
    return means, stds


@dataclass
class FileMoments:
    """Exact per-file moments of ``k`` images (see the module docstring).

    Attributes:
        paths: the files, relative to the source root.
        sha256: ``(k, 32)`` uint8, the SHA-256 of each file's bytes.
        n: ``(k,)`` int64, pixels per channel.
        s1: ``(k, 3)`` int64, ``sum(x)`` per channel on the 16-bit scale.
        s2: ``(k, 3)`` uint64, ``sum(x * x)`` per channel on the 16-bit scale.
        min: ``(k, 3)`` uint16, the smallest value per channel (16-bit scale).
        max: ``(k, 3)`` uint16, the largest value per channel.
        image_mean: ``(k, 3)`` float64, each image's mean (``[0, 1]`` scale).
        image_std: ``(k, 3)`` float64, each image's population std.
    """

    paths: list[str]
    sha256: np.ndarray
    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    image_mean: np.ndarray
    image_std: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> FileMoments:
        """No files."""
        return cls(
            paths=[],
            sha256=np.zeros((0, 32), np.uint8),
            n=np.zeros(0, np.int64),
            s1=np.zeros((0, 3), np.int64),
            s2=np.zeros((0, 3), np.uint64),
            min=np.zeros((0, 3), np.uint16),
            max=np.zeros((0, 3), np.uint16),
            image_mean=np.zeros((0, 3), np.float64),
            image_std=np.zeros((0, 3), np.float64),
        )

    @classmethod
    def zeros(cls, paths: Sequence[str], digests: Sequence[bytes]) -> FileMoments:
        """A table of ``paths`` with their SHA-256 ``digests`` and every moment 0, to fill."""
        k = len(paths)
        return cls(
            paths=list(paths),
            sha256=np.frombuffer(b"".join(digests), np.uint8).reshape(k, 32).copy(),
            n=np.zeros(k, np.int64),
            s1=np.zeros((k, 3), np.int64),
            s2=np.zeros((k, 3), np.uint64),
            min=np.zeros((k, 3), np.uint16),
            max=np.zeros((k, 3), np.uint16),
            image_mean=np.zeros((k, 3), np.float64),
            image_std=np.zeros((k, 3), np.float64),
        )

    @classmethod
    def of_histograms(
        cls,
        paths: Sequence[str],
        histograms: Sequence[ImageHistogram],
        digests: Sequence[bytes],
    ) -> FileMoments:
        """The moments of images from their value histograms and file digests.

        Raises:
            InvalidArgumentError: the three sequences differ in length, or an
                image is too large for 64-bit sums (over 4.29e9 pixels).
        """
        k = len(paths)
        if not (len(histograms) == len(digests) == k):
            raise InvalidArgumentError(
                f"paths, histograms and digests must have one item per file, got {k}, "
                f"{len(histograms)} and {len(digests)}"
            )
        out = cls.zeros(paths, digests)
        pixels = [h.pixels for h in histograms]
        for i, n in enumerate(pixels):
            if n * _SCALE * _SCALE >= 1 << 64:
                raise InvalidArgumentError(
                    f"{paths[i]}: {n} pixels is too many for exact 64-bit moments"
                )
        eight = [i for i, h in enumerate(histograms) if h.bits == 8]
        if eight:
            out._set_eight_bit(eight, [histograms[i] for i in eight], pixels)
        for i, h in enumerate(histograms):  # 16-bit images: per file, in Python integers
            if h.bits == 8:
                continue
            values = _V16
            out.n[i] = pixels[i]
            for c in range(3):
                counts = h.counts[c]
                nz = np.flatnonzero(counts)
                out.s1[i, c] = _dot(counts, values)
                out.s2[i, c] = _dot(counts, values * values)
                out.min[i, c] = int(nz[0]) if nz.size else 0
                out.max[i, c] = int(nz[-1]) if nz.size else 0
            means, stds = image_values(h)
            out.image_mean[i] = means
            out.image_std[i] = stds
        return out

    def _set_eight_bit(
        self, rows: Sequence[int], histograms: Sequence[ImageHistogram], pixels: Sequence[int]
    ) -> None:
        """Fill ``rows`` from 8-bit histograms: one matrix product for all of them.

        The integers are exact in int64 (``S2 <= n * 255**2``, and ``n`` is
        below ``2**32`` by :meth:`of_histograms`' check); the means are one
        correctly rounded float division of two exactly represented
        integers, as ``int / int`` is; each std is :func:`sqrt_ratio` of
        Python integers: the values of per-file Python integer sums, field for
        field (``tests/pipeline/test_stats.py`` compares them).
        """
        counts = np.stack([h.counts for h in histograms])  # (m, 3, 256)
        n = np.asarray([pixels[i] for i in rows], np.int64)
        s1 = counts @ _V8  # (m, 3)
        s2 = counts @ (_V8 * _V8)
        seen = counts > 0
        some = seen.any(axis=-1)
        first = seen.argmax(axis=-1)
        last = 255 - seen[..., ::-1].argmax(axis=-1)
        at = np.asarray(rows, np.intp)
        self.n[at] = n
        self.s1[at] = 257 * s1
        self.s2[at] = s2.astype(np.uint64) * np.uint64(257 * 257)
        self.min[at] = np.where(some, 257 * first, 0)
        self.max[at] = np.where(some, 257 * last, 0)
        self.image_mean[at] = s1 / (n[:, None] * 255)
        for j, row in enumerate(rows):
            nj = int(n[j])
            den = nj * nj * 255 * 255
            for c in range(3):
                a, b = int(s1[j, c]), int(s2[j, c])
                self.image_std[row, c] = sqrt_ratio(nj * b - a * a, den)

    @classmethod
    def concat(cls, parts: Sequence[FileMoments]) -> FileMoments:
        """The tables one after the other."""
        if not parts:
            return cls.empty()
        return cls(
            paths=[p for part in parts for p in part.paths],
            sha256=np.concatenate([p.sha256 for p in parts]),
            n=np.concatenate([p.n for p in parts]),
            s1=np.concatenate([p.s1 for p in parts]),
            s2=np.concatenate([p.s2 for p in parts]),
            min=np.concatenate([p.min for p in parts]),
            max=np.concatenate([p.max for p in parts]),
            image_mean=np.concatenate([p.image_mean for p in parts]),
            image_std=np.concatenate([p.image_std for p in parts]),
        )

    def take(self, rows: Sequence[int] | np.ndarray) -> FileMoments:
        """The table of the files at ``rows``, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return FileMoments(
            paths=[self.paths[int(i)] for i in idx],
            sha256=self.sha256[idx],
            n=self.n[idx],
            s1=self.s1[idx],
            s2=self.s2[idx],
            min=self.min[idx],
            max=self.max[idx],
            image_mean=self.image_mean[idx],
            image_std=self.image_std[idx],
        )

    def sorted(self) -> FileMoments:
        """The table in path order."""
        return self.take(sorted(range(len(self)), key=self.paths.__getitem__))

    def stats(self, *, failures: Sequence[Failure] = ()) -> Stats:
        """The ``exact`` statistics of these files (no display histogram).

        Equal bit for bit to :func:`pipeline.stats.compute_stats` with
        ``method="exact"`` over the same files: the same integer sums, divided
        once, rounded once.
        """
        stats = Stats.empty(method="exact")
        stats.failures = sorted(failures)
        images = len(self)
        if images == 0:
            return stats
        n = sum(int(v) for v in self.n)
        s = _SCALE
        for c in range(3):
            s1 = sum(int(v) for v in self.s1[:, c])
            s2 = sum(int(v) for v in self.s2[:, c])
            q = Fraction(n * s2 - s1 * s1, n * n * s * s)
            stats.mean[c] = float(Fraction(s1, n * s))
            stats.var[c] = float(q)
            stats.std[c] = sqrt_fraction(q)
            stats.min[c] = float(Fraction(int(self.min[:, c].min()), s))
            stats.max[c] = float(Fraction(int(self.max[:, c].max()), s))
            mean_sum = sum(fixed_point(float(v)) for v in self.image_mean[:, c])
            std_sum = sum(fixed_point(float(v)) for v in self.image_std[:, c])
            stats.per_image_mean[c] = float(Fraction(mean_sum, images << FIXED_BITS))
            stats.per_image_std[c] = float(Fraction(std_sum, images << FIXED_BITS))
        stats.images = images
        stats.count = n
        stats.channels = list(CHANNELS)
        return stats
