"""Local-window affinities: Levin, Lischinski & Weiss (2004) colorization weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops._checks import check_float_image, check_int, check_positive, compute_dtype
from ops._padding import pad_symmetric
from ops.errors import InvalidArgumentError

__all__ = ["local_affinity"]


def local_affinity(y: torch.Tensor, *, radius: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Correlation affinities between each pixel and the pixels of its window.

    For each pixel ``r`` and each neighbour ``s`` in the ``(2 radius + 1)^2``
    window centred on ``r`` (``r`` itself included, at index
    ``K // 2``)::

        w[r, s] = 1 + (y[r] - mu[r]) (y[s] - mu[r]) / (var[r] + eps)

    with ``mu[r]`` and ``var[r]`` the mean and population variance (two-pass:
    ``mean((y[s] - mu[r])^2)``) of ``y`` over the same window. This is the
    affinity of Levin et al.'s colorization ("neighbouring pixels with similar
    intensities should have similar colours"); their system uses it
    normalized to sum to 1 over ``s != r``, which is left to the caller
    (``w[..., K // 2, :, :]`` is the centre). The weights are not clipped: a
    neighbour on the other side of the mean gets ``w < 1``, down to ``w = 0``
    across a two-level step edge and ``w < 0`` when ``r`` and ``s`` deviate
    more than the window's spread. A flat window gives ``w = 1``; ``eps``
    keeps near-flat windows from blowing up.

    Convention: the output's channel ``k = (dy + radius) * (2 radius + 1) + (dx + radius)``
    holds the neighbour at offset ``(dy, dx)``, ``dy, dx`` in
    ``[-radius, radius]`` (row-major over the window, dy along the height).
    Windows past the border read half-sample symmetric reflections
    (``d c b a | a b c d``, as :func:`ops.filters.gaussian_blur`, NumPy's
    ``np.pad(mode="symmetric")``), repeated when the window is wider than the
    image. The input is one intensity channel, as in the paper (the Y of YUV);
    convert colour images first (e.g. to luminance). 16-bit floats are computed
    in float32 and cast back.

    Args:
        y: intensity images ``(*, 1, H, W)``, floating point.
        radius: window radius, ``>= 1``; the window is ``(2 radius + 1)^2``.
        eps: regularizer added to the window variance, ``> 0``, in squared
            intensity units.

    Returns:
        Tensor ``(*, (2 radius + 1)^2, H, W)``, dtype and device of ``y``.

    Raises:
        InvalidArgumentError: ``y`` is not a float image with one channel, or
            ``radius`` or ``eps`` is out of range.

    References:
        A. Levin, D. Lischinski and Y. Weiss, "Colorization using
        optimization", ACM SIGGRAPH 2004 (eq. 3).

    Example:
        >>> y = torch.rand(2, 1, 16, 20)
        >>> local_affinity(y).shape
        torch.Size([2, 9, 16, 20])
        >>> local_affinity(y, radius=2).shape
        torch.Size([2, 25, 16, 20])
    """
    check_float_image(y, "y")
    if y.shape[-3] != 1:
        raise InvalidArgumentError(
            f"y must have one (intensity) channel, shape (*, 1, H, W), got shape {tuple(y.shape)}"
        )
    radius = check_int(radius, "radius", minimum=1)
    eps = check_positive(eps, "eps")
    *lead, _, height, width = y.shape
    size = 2 * radius + 1
    if y.numel() == 0:
        return y.new_empty((*lead, size * size, height, width))
    work = y.to(compute_dtype(y.dtype)).reshape(-1, 1, height, width)
    padded = pad_symmetric(work, radius, radius)
    neighbours = F.unfold(padded, size).view(-1, size * size, height, width)
    mu = neighbours.mean(dim=1, keepdim=True)
    centred = neighbours - mu
    var = centred.square().mean(dim=1, keepdim=True)
    out = 1.0 + (work - mu) * centred / (var + eps)
    return out.reshape(*lead, size * size, height, width).to(y.dtype)
