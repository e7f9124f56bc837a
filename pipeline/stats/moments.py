"""Statistics of float data (after transforms): float64 moments, merged exactly or pairwise.

``(B, C, H, W)`` float tensors are reduced in float64: per chunk a genuine
two-pass (mean, then squared deviations), merged with Chan et al.'s formula
(:class:`FloatMoments`); or a true global two-pass (:class:`FloatSums`, then
:class:`FloatDeviations` around its mean, with the corrected two-pass term).
Never averaged: per-batch standard deviations. Never used: ``E[x^2] - E[x]^2``
in float.

References:
    T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise
    algorithm for computing sample variances", COMPSTAT 1982; "Algorithms for
    computing the sample variance: analysis and recommendations", The
    American Statistician 37(3), 1983 (the corrected two-pass algorithm, eq. 1.7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.errors import Failure, InvalidArgumentError
from pipeline.stats.model import CHANNELS, HISTOGRAM_BINS, Stats

if TYPE_CHECKING:
    import torch

__all__ = [
    "FloatDeviations",
    "FloatMoments",
    "FloatSums",
    "chan_merge",
    "float_stats",
    "sqrt_fraction",
    "sqrt_ratio",
    "two_pass_stats",
]


def sqrt_fraction(q: Fraction) -> float:
    """Return the correctly rounded (to nearest) float square root of ``q >= 0``.

    Uses an integer square root with enough guard bits and a sticky bit, so the
    single rounding happens in one correctly rounded ``int / int``
    (:func:`sqrt_ratio` of its numerator and denominator).

    Example:
        >>> sqrt_fraction(Fraction(1, 4)), sqrt_fraction(Fraction(2)) == math.sqrt(2)
        (0.5, True)
    """
    if q < 0:
        raise InvalidArgumentError(f"q must be >= 0, got {q}")
    return sqrt_ratio(q.numerator, q.denominator)


def sqrt_ratio(p: int, d: int) -> float:
    """Return the correctly rounded float square root of ``p / d`` (integers, ``p >= 0 < d``).

    :func:`sqrt_fraction` without making a :class:`~fractions.Fraction` (whose
    reduction costs a gcd): the ratio need not be in lowest terms. The
    integer square root keeps at least 65 bits and a sticky bit, and the one
    rounding is Python's correctly rounded ``int / int``.

    Example:
        >>> sqrt_ratio(2, 8), sqrt_ratio(4, 2) == math.sqrt(2)
        (0.5, True)
    """
    if p < 0 or d <= 0:
        raise InvalidArgumentError(f"p / d must have p >= 0 and d > 0, got {p} / {d}")
    if p == 0:
        return 0.0
    k = max(0, (130 - (p.bit_length() - d.bit_length())) // 2)
    num = p << (2 * k)
    r = math.isqrt(num // d)
    exact = r * r * d == num
    return (2 * r + (0 if exact else 1)) / (1 << (k + 1))


def chan_merge(
    a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan, Golub & LeVeque's pairwise update of ``(n, mean, M2)`` per channel."""
    na, ma, m2a = a
    nb, mb, m2b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    m2 = m2a + m2b + delta * delta * (na * nb / n)
    return n, mean, m2


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    import torch

    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(
            f"x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
        )
    if t.ndim != 4:
        raise InvalidArgumentError(f"x must have shape (B, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InvalidArgumentError(f"x must have a floating dtype, got {t.dtype}")
    return t


def _channel_names(c: int) -> list[str]:
    return list(CHANNELS) if c == 3 else [f"c{i}" for i in range(c)]


@dataclass
class _PerImage:
    """Min, max, display histogram and per-image sums shared by the float partials."""

    min: np.ndarray
    max: np.ndarray
    images: int
    image_mean_sum: tuple[Fraction, ...]
    image_std_sum: tuple[Fraction, ...]
    histogram: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> _PerImage:
        return cls(
            min=np.full(channels, math.inf),
            max=np.full(channels, -math.inf),
            images=0,
            image_mean_sum=(Fraction(0),) * channels,
            image_std_sum=(Fraction(0),) * channels,
            histogram=np.zeros((channels, HISTOGRAM_BINS), dtype=np.int64),
        )

    @classmethod
    def of_channel_batches(cls, xs: list[torch.Tensor]) -> _PerImage:
        """From float64 ``(B, H, W)`` tensors, one per channel."""
        import torch

        c = len(xs)
        out = cls.empty(c)
        b, h, w = xs[0].shape
        if b == 0 or h * w == 0:
            return out
        means, stds = [], []
        for i, xc in enumerate(xs):
            out.min[i] = float(xc.amin())
            out.max[i] = float(xc.amax())
            pm = xc.mean(dim=(1, 2))
            pd = xc - pm[:, None, None]
            ps = (pd * pd).mean(dim=(1, 2)).sqrt()
            means.append(pm.tolist())
            stds.append(ps.tolist())
            out.histogram[i] = (
                torch.histc(xc, bins=HISTOGRAM_BINS, min=0.0, max=1.0).to(torch.int64).cpu().numpy()
            )
        out.images = b
        out.image_mean_sum = tuple(sum(map(Fraction, m), start=Fraction(0)) for m in means)
        out.image_std_sum = tuple(sum(map(Fraction, s), start=Fraction(0)) for s in stds)
        return out

    def merge(self, other: _PerImage) -> _PerImage:
        return _PerImage(
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
            images=self.images + other.images,
            image_mean_sum=tuple(
                a + b for a, b in zip(self.image_mean_sum, other.image_mean_sum, strict=True)
            ),
            image_std_sum=tuple(
                a + b for a, b in zip(self.image_std_sum, other.image_std_sum, strict=True)
            ),
            histogram=self.histogram + other.histogram,
        )

    def fill(self, stats: Stats) -> Stats:
        if self.images:
            stats.min = [float(v) for v in self.min]
            stats.max = [float(v) for v in self.max]
            stats.per_image_mean = [float(v / self.images) for v in self.image_mean_sum]
            stats.per_image_std = [float(v / self.images) for v in self.image_std_sum]
            stats.images = self.images
        stats.histogram = self.histogram.tolist()
        return stats


def _channels64(t: torch.Tensor) -> list[torch.Tensor]:
    import torch

    return [t[:, c].to(torch.float64) for c in range(t.shape[1])]


def _check_same_channels(a: int, b: int) -> None:
    if a != b:
        raise InvalidArgumentError(f"other must have {a} channels, got {b}")


@dataclass
class FloatMoments:
    """Float64 moments of float data; per-chunk two-pass, merged pairwise (Chan et al.).

    Attributes:
        n: values per channel.
        mean: ``(C,)`` float64 mean per channel.
        m2: ``(C,)`` float64 sum of squared deviations from ``mean``.
        extra: min, max, display histogram and exact per-image sums.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 3, 8, 8, generator=g)
        >>> a, b = FloatMoments.of(x[:1]), FloatMoments.of(x[1:])
        >>> m = a.merge(b)
        >>> m.n, m.mean.shape
        (256, (3,))
        >>> bool(np.allclose(m.mean, x.double().mean(dim=(0, 2, 3)).numpy(), rtol=1e-15))
        True
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray
    extra: _PerImage

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.mean.shape[0])

    @property
    def min(self) -> np.ndarray:
        """``(C,)`` smallest value per channel (``inf`` without data)."""
        return self.extra.min

    @property
    def max(self) -> np.ndarray:
        """``(C,)`` largest value per channel (``-inf`` without data)."""
        return self.extra.max

    @property
    def images(self) -> int:
        """Images (batch entries) seen."""
        return self.extra.images

    @classmethod
    def empty(cls, channels: int = 3) -> FloatMoments:
        """Moments of no data."""
        return cls(0, np.zeros(channels), np.zeros(channels), _PerImage.empty(channels))

    @classmethod
    def of(cls, x: torch.Tensor | np.ndarray) -> FloatMoments:
        """Moments of one chunk ``(B, C, H, W)``: float64 two-pass per channel.

        Pass 1 the mean (float64 sum over the chunk / n), pass 2 the sum of
        squared deviations from it; on the tensor's device.

        Raises:
            InvalidArgumentError: ``x`` is not a 4-d float tensor or array.
        """
        t = _as_batch(x)
        b, c, h, w = t.shape
        n = b * h * w
        xs = _channels64(t)
        mean = np.zeros(c)
        m2 = np.zeros(c)
        if n:
            for i, xc in enumerate(xs):
                mu = xc.sum() / n
                d = xc - mu
                mean[i] = float(mu)
                m2[i] = float((d * d).sum())
        return cls(n, mean, m2, _PerImage.of_channel_batches(xs))

    def merge(self, other: FloatMoments) -> FloatMoments:
        """Combine with another chunk's moments (Chan, Golub & LeVeque 1979)."""
        _check_same_channels(self.channels, other.channels)
        n, mean, m2 = chan_merge((self.n, self.mean, self.m2), (other.n, other.mean, other.m2))
        return FloatMoments(n, mean, m2, self.extra.merge(other.extra))

    def to_stats(
        self, *, failures: Sequence[Failure] = (), channels: Sequence[str] | None = None
    ) -> Stats:
        """Return :class:`Stats` with ``method="chan"``."""
        names = list(channels) if channels is not None else _channel_names(self.channels)
        stats = Stats.empty(method="chan", channels=names)
        if self.n:
            var = self.m2 / self.n
            stats.count = self.n
            stats.mean = [float(v) for v in self.mean]
            stats.var = [float(v) for v in var]
            stats.std = [math.sqrt(float(v)) for v in var]
        stats.failures = sorted(failures)
        return self.extra.fill(stats)


@dataclass
class FloatSums:
    """Pass 1 of the global two-pass: exact sums of the chunks' float64 sums.

    Attributes:
        n: values per channel.
        sums: per channel, the exact (rational) sum of per-chunk float64 sums.
        extra: min, max, display histogram and exact per-image sums.

    Example:
        >>> import torch
        >>> x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 32
        >>> FloatSums.of(x[:1]).merge(FloatSums.of(x[1:])).mean().tolist()
        [0.234375, 0.359375, 0.484375]
    """

    n: int
    sums: tuple[Fraction, ...]
    extra: _PerImage

    @property
    def channels(self) -> int:
        """Number of channels."""
        return len(self.sums)

    @classmethod
    def empty(cls, channels: int = 3) -> FloatSums:
        """Sums of no data."""
        return cls(0, (Fraction(0),) * channels, _PerImage.empty(channels))

    @classmethod
    def of(cls, x: torch.Tensor | np.ndarray) -> FloatSums:
        """Pass-1 sums of one chunk ``(B, C, H, W)`` in float64."""
        t = _as_batch(x)
        b, _, h, w = t.shape
        xs = _channels64(t)
        sums = tuple(Fraction(float(xc.sum())) for xc in xs)
        return cls(b * h * w, sums, _PerImage.of_channel_batches(xs))

    def merge(self, other: FloatSums) -> FloatSums:
        """Add another chunk's sums (exact, order-independent)."""
        _check_same_channels(self.channels, other.channels)
        return FloatSums(
            self.n + other.n,
            tuple(a + b for a, b in zip(self.sums, other.sums, strict=True)),
            self.extra.merge(other.extra),
        )

    def mean(self) -> np.ndarray:
        """The float64 mean per channel (NaN without data)."""
        if self.n == 0:
            return np.full(self.channels, math.nan)
        return np.array([float(s / self.n) for s in self.sums])


@dataclass
class FloatDeviations:
    """Pass 2 of the global two-pass: sums of deviations from a given mean.

    Attributes:
        n: values per channel.
        mean: ``(C,)`` the mean the deviations are taken from (pass 1's).
        sq: per channel, exact sum of per-chunk float64 ``sum((x - mean)^2)``.
        lin: per channel, exact sum of per-chunk float64 ``sum(x - mean)``
            (the correction term of the corrected two-pass algorithm).

    Example:
        >>> import torch
        >>> x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> sums = FloatSums.of(x[:2]).merge(FloatSums.of(x[2:]))
        >>> devs = FloatDeviations.of(x[:3], sums.mean()).merge(
        ...     FloatDeviations.of(x[3:], sums.mean()))
        >>> devs.n, len(devs.sq)
        (96, 3)
    """

    n: int
    mean: np.ndarray
    sq: tuple[Fraction, ...]
    lin: tuple[Fraction, ...]

    @classmethod
    def empty(cls, mean: np.ndarray) -> FloatDeviations:
        """Deviations of no data from ``mean``."""
        c = int(np.asarray(mean).shape[0])
        return cls(0, np.asarray(mean, dtype=np.float64), (Fraction(0),) * c, (Fraction(0),) * c)

    @classmethod
    def of(
        cls, x: torch.Tensor | np.ndarray, mean: np.ndarray | Sequence[float]
    ) -> FloatDeviations:
        """Pass-2 sums of one chunk ``(B, C, H, W)`` around ``mean``, in float64."""
        t = _as_batch(x)
        mu = np.asarray(mean, dtype=np.float64)
        if mu.shape != (t.shape[1],):
            raise InvalidArgumentError(
                f"mean must have shape ({t.shape[1]},), got {tuple(mu.shape)}"
            )
        b, _, h, w = t.shape
        sq, lin = [], []
        for i, xc in enumerate(_channels64(t)):
            d = xc - float(mu[i])
            sq.append(Fraction(float((d * d).sum())))
            lin.append(Fraction(float(d.sum())))
        return cls(b * h * w, mu, tuple(sq), tuple(lin))

    def merge(self, other: FloatDeviations) -> FloatDeviations:
        """Add another chunk's sums (exact, order-independent)."""
        if not np.array_equal(self.mean, other.mean):
            raise InvalidArgumentError(
                f"other must use the same mean {self.mean.tolist()}, got {other.mean.tolist()}"
            )
        return FloatDeviations(
            self.n + other.n,
            self.mean,
            tuple(a + b for a, b in zip(self.sq, other.sq, strict=True)),
            tuple(a + b for a, b in zip(self.lin, other.lin, strict=True)),
        )


def two_pass_stats(
    sums: FloatSums,
    deviations: FloatDeviations,
    *,
    failures: Sequence[Failure] = (),
    channels: Sequence[str] | None = None,
) -> Stats:
    """Combine the two passes into :class:`Stats` with ``method="two-pass"``.

    ``var = (sum((x - m)^2) - sum(x - m)^2 / n) / n`` (the corrected two-pass
    algorithm of Chan, Golub & LeVeque 1983, eq. 1.7).

    Raises:
        InvalidArgumentError: the passes saw different amounts of data.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> sums = FloatSums.of(x)
        >>> s = two_pass_stats(sums, FloatDeviations.of(x, sums.mean()))
        >>> s.count, s.method, bool(np.allclose(s.var, x.double().var(dim=(0, 2, 3),
        ...     unbiased=False).numpy(), rtol=1e-14))
        (100, 'two-pass', True)
    """
    if sums.n != deviations.n:
        raise InvalidArgumentError(
            f"deviations must cover the same {sums.n} values as sums, got {deviations.n}"
        )
    names = list(channels) if channels is not None else _channel_names(sums.channels)
    stats = Stats.empty(method="two-pass", channels=names)
    if sums.n:
        n = sums.n
        var = [
            (sq - lin * lin / n) / n for sq, lin in zip(deviations.sq, deviations.lin, strict=True)
        ]
        stats.count = n
        stats.mean = [float(v) for v in deviations.mean]
        stats.var = [float(v) for v in var]
        stats.std = [sqrt_fraction(max(v, Fraction(0))) for v in var]
    stats.failures = sorted(failures)
    return sums.extra.fill(stats)


def float_stats(
    batches: Callable[[], Iterable[torch.Tensor | np.ndarray]],
    *,
    method: Literal["chan", "two-pass"] = "chan",
    failures: Sequence[Failure] = (),
    channels: Sequence[str] | None = None,
) -> Stats:
    """Statistics of float data given as batches ``(B, C, H, W)``.

    Args:
        batches: a function returning a fresh iterable of the batches (called
            once for ``chan``, twice for ``two-pass``).
        method: ``chan`` (per-chunk two-pass, Chan merge) or ``two-pass``
            (global).
        failures: rejected inputs to report.
        channels: channel names (default ``R, G, B`` for 3 channels).

    Returns:
        The statistics.

    Example:
        >>> import torch
        >>> x = torch.rand(6, 3, 5, 4, generator=torch.Generator().manual_seed(0))
        >>> a = float_stats(lambda: x.split(2), method="chan")
        >>> b = float_stats(lambda: x.split(4), method="two-pass")
        >>> a.count, bool(np.allclose(a.var, b.var, rtol=1e-14))
        (120, True)
    """
    if method == "chan":
        moments: FloatMoments | None = None
        for x in batches():
            m = FloatMoments.of(x)
            moments = m if moments is None else moments.merge(m)
        if moments is None:
            return Stats.empty(method="chan", channels=channels or CHANNELS)
        return moments.to_stats(failures=failures, channels=channels)
    if method == "two-pass":
        sums: FloatSums | None = None
        for x in batches():
            s = FloatSums.of(x)
            sums = s if sums is None else sums.merge(s)
        if sums is None:
            return Stats.empty(method="two-pass", channels=channels or CHANNELS)
        mean = sums.mean()
        devs = FloatDeviations.empty(mean)
        for x in batches():
            devs = devs.merge(FloatDeviations.of(x, mean))
        return two_pass_stats(sums, devs, failures=failures, channels=channels)
    raise InvalidArgumentError(f"method must be 'chan' or 'two-pass', got {method!r}")
