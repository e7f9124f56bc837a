"""Exact per-channel dataset statistics, pooled over every pixel, chunked with Dask.

Two kinds of data, three methods (``docs/stats.md`` has the long form). Modules:
:mod:`~pipeline.stats.model` (the stats JSON), :mod:`~pipeline.stats.exact` (integer
sources), :mod:`~pipeline.stats.moments` (float data), :mod:`~pipeline.stats.compute`
(chunked, parallel, over a source).

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

from pipeline.stats.compute import DEFAULT_CHUNK_SIZE, METHODS, Method, compute_stats, measure
from pipeline.stats.files import FileMoments
from pipeline.stats.model import CHANNELS, HISTOGRAM_BINS, Stats
from pipeline.stats.moments import (
    FloatDeviations,
    FloatMoments,
    FloatSums,
    float_stats,
    sqrt_fraction,
    sqrt_ratio,
    two_pass_stats,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_CHUNK_SIZE",
    "HISTOGRAM_BINS",
    "METHODS",
    "FileMoments",
    "FloatDeviations",
    "FloatMoments",
    "FloatSums",
    "Method",
    "Stats",
    "compute_stats",
    "float_stats",
    "measure",
    "sqrt_fraction",
    "sqrt_ratio",
    "two_pass_stats",
]
