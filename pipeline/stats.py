"""Exact per-channel dataset statistics, pooled over every pixel, chunked with Dask.

Two kinds of data, three methods (``notes/README-stats.md`` has the long form):

**Integer sources** (decoded 8- and 16-bit images, :func:`compute_stats`). Each
image is reduced to its per-channel value histogram (Pillow's
``Image.histogram`` in C for 8-bit, ``numpy.bincount`` for 16-bit), which is a
sufficient statistic: every method below, and min, max and the per-image
values, follow from it. Chunks of files are decoded by Dask tasks (threads);
their partials (histograms and a few exact sums, a few kB) are merged in a
tree. Values are on one ``[0, 1]`` scale: an 8-bit ``v`` is ``v / 255``, a
16-bit ``u`` is ``u / 65535`` (equivalently ``v`` counts as ``257 v`` on the
16-bit scale, exactly).

- ``exact``: per channel the integers ``n``, ``S1 = sum(x)``, ``S2 = sum(x*x)``
  (Python ints, no overflow), combined as exact rationals
  ``mean = S1 / (n s)``, ``var = (n S2 - S1^2) / (n^2 s^2)`` and rounded once to
  float (``std`` is the correctly rounded square root of the exact ``var``).
  Bit-for-bit independent of chunking, worker count and order.
- ``chan``: per chunk, float64 two-pass moments ``(n, mean, M2)`` over the
  chunk's values (computed over the chunk histogram, values weighted by their
  counts), merged with the pairwise update of Chan, Golub & LeVeque.
- ``two-pass``: the histograms of the whole source are merged (one decode
  pass), then the float64 global two-pass runs over the values weighted by
  their counts: pass 1 the mean, pass 2 the squared deviations from it.

**Float data** (after transforms: :class:`FloatMoments`, :class:`FloatSums`,
:class:`FloatDeviations`, :func:`float_stats`). ``(B, C, H, W)`` float tensors
are reduced in float64: per chunk a genuine two-pass (mean, then squared
deviations), merged with Chan et al.'s formula; or a true global two-pass (pass
1 the exact sum of the chunks' float64 sums, pass 2 the sums of squared
deviations from that mean, with the corrected two-pass term).

In every case the per-image values (each image's mean and population std,
averaged over images) are summed as exact :class:`fractions.Fraction` of their
floats, so they do not depend on order either. Never averaged: per-batch
standard deviations. Never used: ``E[x^2] - E[x]^2`` in float.

References:
    T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise
    algorithm for computing sample variances", COMPSTAT 1982 / Stanford
    STAN-CS-79-773 (1979); "Algorithms for computing the sample variance:
    analysis and recommendations", The American Statistician 37(3), 1983
    (the corrected two-pass algorithm, eq. 1.7).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.decode import DEFAULT_MAX_PIXELS, ImageHistogram, decode_histogram
from pipeline.errors import DecodeError, Failure, InvalidArgumentError
from pipeline.sources import Manifest, scan

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HISTOGRAM_BINS",
    "METHODS",
    "FloatDeviations",
    "FloatMoments",
    "FloatSums",
    "Method",
    "Stats",
    "compute_stats",
    "float_stats",
    "sqrt_fraction",
    "two_pass_stats",
]

Method = Literal["exact", "chan", "two-pass"]
METHODS: tuple[str, ...] = ("exact", "chan", "two-pass")
DEFAULT_CHUNK_SIZE = 64
"""Files per Dask task in :func:`compute_stats`."""
HISTOGRAM_BINS = 256
"""Bins of the display histogram: ``256`` equal bins of ``[0, 1]``."""

_RGB = ("R", "G", "B")
_CONTRACT_KEYS = (
    "channels",
    "scale",
    "images",
    "count",
    "mean",
    "var",
    "std",
    "min",
    "max",
    "per_image_mean",
    "per_image_std",
    "method",
    "failures",
)


# --------------------------------------------------------------------------- Stats


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass
class Stats:
    """Dataset statistics: the stats JSON contract, plus additive fields.

    ``mean``/``var``/``std`` are pooled over every pixel of every image
    (population variance) on the ``[0, 1]`` scale; ``per_image_*`` are the
    averages over images of per-image means and population stds. Undefined
    values (no image) are NaN here and ``null`` in JSON.

    Attributes:
        channels: channel names, ``["R", "G", "B"]`` for images.
        scale: ``"0-1"``.
        images: images measured.
        count: values per channel (pixels).
        mean: pooled mean per channel.
        var: pooled population variance per channel.
        std: pooled population standard deviation per channel.
        min: smallest value per channel.
        max: largest value per channel.
        per_image_mean: average of the per-image means.
        per_image_std: average of the per-image population stds.
        method: ``exact``, ``chan`` or ``two-pass``.
        failures: rejected inputs, sorted by path.
        histogram: additive: per channel, counts over 256 equal bins of
            ``[0, 1]`` (bin ``min(floor(256 x), 255)``), or ``None``.
        fingerprint: additive: the source manifest's fingerprint, or ``None``.

    Example:
        >>> s = Stats.from_json(Stats.empty(method="exact").to_json())
        >>> s.images, s.channels, s.to_json()["mean"]
        (0, ['R', 'G', 'B'], [None, None, None])
    """

    channels: list[str]
    scale: str
    images: int
    count: int
    mean: list[float]
    var: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    per_image_mean: list[float]
    per_image_std: list[float]
    method: str
    failures: list[Failure] = field(default_factory=list)
    histogram: list[list[int]] | None = None
    fingerprint: str | None = None

    @classmethod
    def empty(cls, *, method: str, channels: Sequence[str] = _RGB) -> Stats:
        """Return the statistics of no data (every value NaN)."""
        nan = [math.nan] * len(channels)
        return cls(
            channels=list(channels),
            scale="0-1",
            images=0,
            count=0,
            mean=list(nan),
            var=list(nan),
            std=list(nan),
            min=list(nan),
            max=list(nan),
            per_image_mean=list(nan),
            per_image_std=list(nan),
            method=method,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready dict: the contract keys in order, then additive keys."""
        d: dict[str, Any] = {
            "channels": list(self.channels),
            "scale": self.scale,
            "images": self.images,
            "count": self.count,
        }
        for key in ("mean", "var", "std", "min", "max", "per_image_mean", "per_image_std"):
            d[key] = [_json_float(float(v)) for v in getattr(self, key)]
        d["method"] = self.method
        d["failures"] = [f.to_json() for f in self.failures]
        if self.histogram is not None:
            d["histogram"] = [list(map(int, row)) for row in self.histogram]
        if self.fingerprint is not None:
            d["fingerprint"] = self.fingerprint
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stats:
        """Build from a stats JSON dict; unknown keys are ignored (additive contract).

        Raises:
            InvalidArgumentError: a contract key is missing or has the wrong type.
        """
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"stats JSON must be an object, got {type(d).__name__}")
        missing = [k for k in _CONTRACT_KEYS if k not in d]
        if missing:
            raise InvalidArgumentError(f"stats JSON must have keys {missing}, got {sorted(d)}")
        channels = d["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise InvalidArgumentError(
                f"stats JSON channels must be a list of str, got {channels!r}"
            )

        def floats(key: str) -> list[float]:
            v = d[key]
            if (
                not isinstance(v, list)
                or len(v) != len(channels)
                or not all(x is None or isinstance(x, (int, float)) for x in v)
            ):
                raise InvalidArgumentError(
                    f"stats JSON {key} must be a list of {len(channels)} numbers, got {v!r}"
                )
            return [math.nan if x is None else float(x) for x in v]

        def integer(key: str) -> int:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgumentError(f"stats JSON {key} must be an int >= 0, got {v!r}")
            return v

        failures = d["failures"]
        if not isinstance(failures, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("error"), str)
            for f in failures
        ):
            raise InvalidArgumentError(
                f"stats JSON failures must be a list of {{path, error}} objects, got {failures!r}"
            )
        hist = d.get("histogram")
        return cls(
            channels=list(channels),
            scale=str(d["scale"]),
            images=integer("images"),
            count=integer("count"),
            mean=floats("mean"),
            var=floats("var"),
            std=floats("std"),
            min=floats("min"),
            max=floats("max"),
            per_image_mean=floats("per_image_mean"),
            per_image_std=floats("per_image_std"),
            method=str(d["method"]),
            failures=[Failure(f["path"], f["error"]) for f in failures],
            histogram=None if hist is None else [[int(v) for v in row] for row in hist],
            fingerprint=d.get("fingerprint"),
        )

    def save(self, path: str | Path) -> None:
        """Write the stats JSON (indented, UTF-8) to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        """Read a stats JSON file written by :meth:`save` (or by hand)."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


# ------------------------------------------------------------------ exact helpers


def sqrt_fraction(q: Fraction) -> float:
    """Return the correctly rounded (to nearest) float square root of ``q >= 0``.

    Uses an integer square root with enough guard bits and a sticky bit, so the
    single rounding happens in ``float(Fraction)``.

    Example:
        >>> sqrt_fraction(Fraction(1, 4)), sqrt_fraction(Fraction(2)) == math.sqrt(2)
        (0.5, True)
    """
    if q < 0:
        raise InvalidArgumentError(f"q must be >= 0, got {q}")
    p, d = q.numerator, q.denominator
    if p == 0:
        return 0.0
    k = max(0, (130 - (p.bit_length() - d.bit_length())) // 2)
    num = p << (2 * k)
    r = math.isqrt(num // d)
    exact = r * r * d == num
    return float(Fraction(2 * r + (0 if exact else 1), 1 << (k + 1)))


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
_INT64_SAFE = 1 << 62


def _image_values(h: ImageHistogram) -> tuple[list[float], list[float]]:
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
            s1 = _exact_dot(counts, v)
            s2 = _exact_dot(counts, v * v)
        means.append(s1 / (n * scale))
        stds.append(sqrt_fraction(Fraction(n * s2 - s1 * s1, n * n * scale * scale)))
    return means, stds


# ------------------------------------------------------------- moments (float64)


def _chan_merge(
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


def _hist_moments(
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

_FIXED_BITS = 1074  # every finite float is an integer multiple of 2**-1074


def _fixed(x: float) -> int:
    """The float ``x`` exactly, as an integer number of ``2**-1074`` (cheaper than Fraction)."""
    num, den = x.as_integer_ratio()
    return num << (_FIXED_BITS + 1 - den.bit_length())


@dataclass
class _Partial:
    """What one chunk of files contributes; merges by addition (and Chan for ``chan``)."""

    hist8: np.ndarray | None = None
    hist16: np.ndarray | None = None
    images: int = 0
    # exact sums of the per-image floats, in units of 2**-1074 (see _fixed)
    mean_sum: list[int] = field(default_factory=lambda: [0, 0, 0])
    std_sum: list[int] = field(default_factory=lambda: [0, 0, 0])
    failures: list[Failure] = field(default_factory=list)
    moments: tuple[int, np.ndarray, np.ndarray] | None = None

    def add_image(self, h: ImageHistogram) -> None:
        if h.bits == 8:
            self.hist8 = h.counts.copy() if self.hist8 is None else self.hist8 + h.counts
        else:
            if self.hist16 is None:
                self.hist16 = h.counts.copy()
            else:
                self.hist16 += h.counts
        means, stds = _image_values(h)
        self.images += 1
        self.mean_sum = [s + _fixed(m) for s, m in zip(self.mean_sum, means, strict=True)]
        self.std_sum = [s + _fixed(m) for s, m in zip(self.std_sum, stds, strict=True)]


def _add_hist(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _merge(*parts: _Partial) -> _Partial:
    out = _Partial()
    for p in parts:
        out.hist8 = _add_hist(out.hist8, p.hist8)
        out.hist16 = _add_hist(out.hist16, p.hist16)
        out.images += p.images
        out.mean_sum = [a + b for a, b in zip(out.mean_sum, p.mean_sum, strict=True)]
        out.std_sum = [a + b for a, b in zip(out.std_sum, p.std_sum, strict=True)]
        out.failures.extend(p.failures)
        if p.moments is not None:
            out.moments = p.moments if out.moments is None else _chan_merge(out.moments, p.moments)
    return out


def _chunk(
    root: str,
    paths: tuple[str, ...],
    method: str,
    max_pixels: int | None,
    progress: Callable[[int], None] | None,
    loader: Callable[[str], ImageHistogram] | None = None,
) -> _Partial:
    part = _Partial()
    for rel in paths:
        try:
            path = os.path.join(root, rel)
            if loader is None:
                h = decode_histogram(path, max_pixels=max_pixels)
            else:
                h = loader(path)
        except DecodeError as e:
            part.failures.append(Failure(rel, e.reason))
        else:
            part.add_image(h)
        if progress is not None:
            progress(1)
    if method == "chan":
        part.moments = _hist_moments(part.hist8, part.hist16)
    return part


def _finish(part: _Partial, method: str) -> Stats:
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
        _, m, m2 = _hist_moments(part.hist8, part.hist16)
        mean, var = [float(v) for v in m], [float(v) for v in m2 / n]
        std = [math.sqrt(v) for v in var]
    display = h8 + h16.reshape(3, 256, 256).sum(axis=2)
    return Stats(
        channels=list(_RGB),
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


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


_FAN_IN = 8


def _merge_tree(level: list[Any], *, delayed: bool = False) -> Any:
    """Merge partials in a fixed tree of fan-in 8 (the same for every worker count)."""
    import dask

    while len(level) > 1:
        level = [
            dask.delayed(_merge, pure=False)(*level[i : i + _FAN_IN])
            if delayed
            else _merge(*level[i : i + _FAN_IN])
            for i in range(0, len(level), _FAN_IN)
        ]
    if delayed:
        return level
    return level[0] if level else _Partial()


def _remote_chunks(
    address: str,
    root: str,
    chunks: list[tuple[str, ...]],
    method: str,
    max_pixels: int | None,
    loader: Callable[[str], ImageHistogram] | None,
    progress: Callable[[int], None] | None,
) -> list[_Partial]:
    """Compute every chunk's partial on a Dask cluster; return them in chunk order."""
    from distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        futures = [
            client.submit(_chunk, root, chunk, method, max_pixels, None, loader, pure=False)
            for chunk in chunks
        ]
        position = {f.key: i for i, f in enumerate(futures)}
        parts: list[_Partial] = [_Partial()] * len(futures)
        for future in as_completed(futures, loop=client.loop):
            i = position[future.key]
            parts[i] = future.result()
            if progress is not None:
                progress(len(chunks[i]))
        return parts


def compute_stats(
    source: str | Path | Manifest,
    *,
    method: Method = "exact",
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    loader: Callable[[str], ImageHistogram] | None = None,
    address: str | None = None,
) -> Stats:
    """Compute per-channel statistics of a folder of images (or of its manifest).

    Files are decoded in chunks of ``chunk_size`` by Dask tasks on a thread
    pool of ``workers`` threads (Pillow releases the GIL while decoding); each
    task returns a small partial (histograms and exact sums), and the partials
    are merged in a tree, so memory is bounded by the chunk, not the dataset.
    See the module docstring for what each method computes.

    Args:
        source: a folder (scanned with :func:`pipeline.sources.scan`) or a
            manifest.
        method: ``exact`` (default), ``chan`` or ``two-pass``.
        workers: threads; ``None`` for ``os.cpu_count()``.
        chunk_size: files per task.
        max_pixels: decompression bomb limit per image (``None``: none).
        progress: called with ``1`` after each file (from worker threads);
            with ``address``, with the chunk's file count as each chunk ends.
        loader: per-file function returning the :class:`ImageHistogram` to
            count, instead of :func:`decode_histogram` (the prepare step
            passes decode + resize for ``stats.at: resized``); it must raise
            :class:`DecodeError` for a bad file.
        address: run the chunk tasks on the ``dask.distributed`` scheduler
            at this address; the partials are merged here in the same fixed
            tree, so the result equals a local run.

    Returns:
        The statistics; ``failures`` holds the scan's rejections and every file
        that could not be decoded, sorted by path; ``fingerprint`` the
        manifest's.

    Raises:
        InvalidArgumentError: an option is invalid or ``source`` is not a folder.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 2), (0, 255, 51)).save(d / "a.png")
        >>> _ = (d / "b.jpg").write_bytes(b"not a jpeg")
        >>> s = compute_stats(d, workers=1)
        >>> s.images, s.count, s.mean, s.std
        (1, 8, [0.0, 1.0, 0.2], [0.0, 0.0, 0.0])
        >>> s.failures
        [Failure(path='b.jpg', error='not an image: cannot identify image file')]
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {list(METHODS)}, got {method!r}")
    if workers is not None:
        _check_positive_int("workers", workers)
    _check_positive_int("chunk_size", chunk_size)
    if max_pixels is not None:
        _check_positive_int("max_pixels", max_pixels)
    manifest = source if isinstance(source, Manifest) else scan(source)

    import dask

    root = str(manifest.root)
    paths = [f.path for f in manifest.files]
    chunks = [tuple(paths[i : i + chunk_size]) for i in range(0, len(paths), chunk_size)]
    if address is not None:
        part = _merge_tree(
            _remote_chunks(address, root, chunks, method, max_pixels, loader, progress)
        )
    else:
        level = [
            dask.delayed(_chunk, pure=False)(root, chunk, method, max_pixels, progress, loader)
            for chunk in chunks
        ]
        level = _merge_tree(level, delayed=True)
        if level:
            (part,) = dask.compute(level[0], scheduler="threads", num_workers=workers)
        else:
            part = _Partial()
    stats = _finish(part, method)
    stats.failures = sorted([*manifest.rejected, *part.failures])
    stats.fingerprint = manifest.fingerprint
    return stats


# --------------------------------------------------------------------- float path


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
    return list(_RGB) if c == 3 else [f"c{i}" for i in range(c)]


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
        n, mean, m2 = _chan_merge((self.n, self.mean, self.m2), (other.n, other.mean, other.m2))
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
            return Stats.empty(method="chan", channels=channels or _RGB)
        return moments.to_stats(failures=failures, channels=channels)
    if method == "two-pass":
        sums: FloatSums | None = None
        for x in batches():
            s = FloatSums.of(x)
            sums = s if sums is None else sums.merge(s)
        if sums is None:
            return Stats.empty(method="two-pass", channels=channels or _RGB)
        mean = sums.mean()
        devs = FloatDeviations.empty(mean)
        for x in batches():
            devs = devs.merge(FloatDeviations.of(x, mean))
        return two_pass_stats(sums, devs, failures=failures, channels=channels)
    raise InvalidArgumentError(f"method must be 'chan' or 'two-pass', got {method!r}")
