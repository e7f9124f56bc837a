"""Linear filters: separable Gaussian blur and difference of Gaussians."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ops._checks import check_float_image, check_nonnegative, check_pair, compute_dtype
from ops._padding import _reflect_indices_list, reflect_indices
from ops.errors import InvalidArgumentError

__all__ = ["difference_of_gaussians", "gaussian_blur", "gaussian_kernel1d"]


@functools.lru_cache(maxsize=512)
def _kernel_values(sigma: float, radius: int) -> tuple[float, ...]:
    if sigma == 0.0 or radius == 0:
        return (1.0,)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * (x / sigma) ** 2)
    return tuple((phi / phi.sum()).tolist())


def _radius(sigma: float, truncate: float) -> int:
    return int(truncate * sigma + 0.5)


def gaussian_kernel1d(
    sigma: float,
    *,
    truncate: float = 4.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the normalized 1-D Gaussian kernel used by :func:`gaussian_blur`.

    The kernel has radius ``int(truncate * sigma + 0.5)`` and sums to 1, as
    SciPy's ``gaussian_filter`` builds it; ``sigma == 0`` gives ``[1.0]``.

    Args:
        sigma: standard deviation in pixels, ``>= 0``.
        truncate: radius in units of ``sigma``.
        device: device of the returned tensor.
        dtype: dtype of the returned tensor.

    Returns:
        Tensor of shape ``(2 * radius + 1,)``.

    Example:
        >>> gaussian_kernel1d(1.0).shape
        torch.Size([9])
    """
    sigma = check_nonnegative(sigma, "sigma")
    truncate = check_nonnegative(truncate, "truncate")
    values = _kernel_values(sigma, _radius(sigma, truncate))
    return torch.tensor(values, dtype=dtype, device=device)


# Axes up to this length are blurred by one dense matrix product with the
# reflection folded in (``v @ A``): BLAS runs it several times faster than a
# padded convolution for the image sizes of a training pipeline. Longer axes are
# cut into tiles of ``_TILE`` outputs, each one product with a banded block.
_DENSE_MAX = 1024
_TILE = 128


def _axis_matrix(n: int, sigma: float, radius: int) -> torch.Tensor:
    """The float64 ``(n, n)`` matrix ``A`` with ``blur(v) = v @ A`` for a row ``v`` of length ``n``.

    Column ``o`` holds the kernel taps of output ``o``, each added onto the
    source index that half-sample symmetric padding reads, so the border rule is
    part of the matrix (taps that reflect onto one index more than once add up).
    ``radius == 0`` gives the identity.
    """
    # NumPy, not torch: tiny torch ops run as OpenMP regions, and those stall
    # badly when other processes hold the cores (seen: 50x slower at 2 threads).
    if sigma == 0.0 or radius == 0:
        return torch.from_numpy(np.eye(n))
    taps = 2 * radius + 1
    kernel = np.asarray(_kernel_values(sigma, radius))
    source = np.asarray(_reflect_indices_list(n, radius, radius))
    out_index = np.repeat(np.arange(n), taps)
    tap = np.tile(np.arange(taps), n)
    # Sum taps that land on one (source, output) cell, as np.add.at would, faster.
    flat = source[out_index + tap] * n + out_index
    matrix = np.bincount(flat, weights=kernel[tap], minlength=n * n).reshape(n, n)
    return torch.from_numpy(matrix)


@functools.lru_cache(maxsize=128)
def _axis_operator(
    n: int, sigma: float, radius: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`_axis_matrix` cast to ``dtype`` on ``device``, cached."""
    return _axis_matrix(n, sigma, radius).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _tile_operator(
    tile: int, sigma: float, radius: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The banded ``(tile + 2 radius, tile)`` block mapping a padded window to ``tile`` outputs."""
    taps = 2 * radius + 1
    kernel = np.asarray(_kernel_values(sigma, radius))
    out_index = np.repeat(np.arange(tile), taps)
    tap = np.tile(np.arange(taps), tile)
    block = np.zeros((tile + 2 * radius, tile))
    block[out_index + tap, out_index] = kernel[tap]
    return torch.from_numpy(block).to(device=device, dtype=dtype)


def _windows(padded: torch.Tensor, axis: int, tiles: int, length: int) -> torch.Tensor:
    """Overlapping windows of ``length`` along ``axis`` (-1 or -2), ``_TILE`` apart, as a view.

    For ``axis=-1`` the view is ``(*, tiles, H, length)``, for ``axis=-2`` it is
    ``(*, tiles, length, W)``: the window index goes first so that each window
    is one strided matrix BLAS reads in place.
    """
    *lead, rows, cols = padded.shape
    *lead_strides, row_stride, col_stride = padded.stride()
    if axis == -1:
        shape = (*lead, tiles, rows, length)
        strides = (*lead_strides, _TILE * col_stride, row_stride, col_stride)
    else:
        shape = (*lead, tiles, length, cols)
        strides = (*lead_strides, _TILE * row_stride, row_stride, col_stride)
    return padded.as_strided(shape, strides)


def _blur_last(x: torch.Tensor, sigma: float, truncate: float) -> torch.Tensor:
    """Blur ``x`` of shape ``(*, H, W)`` along its last axis."""
    radius = _radius(sigma, truncate)
    if sigma == 0.0 or radius == 0:
        return x
    n = x.shape[-1]
    if n <= _DENSE_MAX:
        return x @ _axis_operator(n, sigma, radius, x.dtype, x.device)
    tiles = -(-n // _TILE)
    index = reflect_indices(n, radius, radius + tiles * _TILE - n, x.device)
    windows = _windows(x.index_select(-1, index), -1, tiles, _TILE + 2 * radius)
    out = windows @ _tile_operator(_TILE, sigma, radius, x.dtype, x.device)  # (*, tiles, H, T)
    return out.transpose(-3, -2).flatten(-2)[..., :n]


def _blur_rows(x: torch.Tensor, sigma: float, truncate: float) -> torch.Tensor:
    """Blur ``x`` of shape ``(*, H, W)`` along the H axis."""
    radius = _radius(sigma, truncate)
    if sigma == 0.0 or radius == 0:
        return x
    n = x.shape[-2]
    if n <= _DENSE_MAX:
        return _axis_operator(n, sigma, radius, x.dtype, x.device).mT @ x
    tiles = -(-n // _TILE)
    index = reflect_indices(n, radius, radius + tiles * _TILE - n, x.device)
    windows = _windows(x.index_select(-2, index), -2, tiles, _TILE + 2 * radius)
    out = _tile_operator(_TILE, sigma, radius, x.dtype, x.device).mT @ windows  # (*, tiles, T, W)
    return out.flatten(-3, -2)[..., :n, :]


def _gaussian_blur_per_sample(
    x: torch.Tensor, sigmas: list[float], *, truncate: float = 4.0
) -> torch.Tensor:
    """Blur image ``i`` of ``x`` ``(B, C, H, W)`` with ``sigmas[i]`` on both axes, batched.

    Equal to ``gaussian_blur(x[i], sigmas[i])`` for each ``i`` (to float
    rounding): one batched product per axis with a per-image matrix (the
    identity where the radius is 0). Sizes above ``_DENSE_MAX`` loop instead.
    ``sigmas`` must already be checked (finite, ``>= 0``).
    """
    check_float_image(x, min_ndim=4)
    height, width = x.shape[-2:]
    if x.ndim != 4 or len(sigmas) != x.shape[0]:
        raise InvalidArgumentError(
            f"sigmas must hold one value per image of x (B, C, H, W), got {len(sigmas)} "
            f"for shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        return x.clone()
    work = x.to(compute_dtype(x.dtype))
    if max(height, width) > _DENSE_MAX:
        out = torch.stack(
            [gaussian_blur(work[i], s, truncate=truncate) for i, s in enumerate(sigmas)]
        )
        return out.to(x.dtype)

    np_dtype = np.float64 if work.dtype == torch.float64 else np.float32

    def stacked(n: int) -> torch.Tensor:
        mats = np.stack([_axis_matrix(n, s, _radius(s, truncate)).numpy() for s in sigmas])
        return torch.from_numpy(mats.astype(np_dtype)).to(device=x.device, dtype=work.dtype)

    rows = stacked(width)  # (B, W, W)
    cols = (rows if height == width else stacked(height)).mT  # (B, H, H), transposed views
    batch, channels = x.shape[:2]
    # Along W, the rows of all channels of an image share its matrix: one bmm.
    along_w = torch.bmm(work.reshape(batch, channels * height, width), rows)
    along_w = along_w.view(batch, channels, height, width)
    # Along H, one bmm per channel (a broadcast matmul would copy the matrices C times).
    out = torch.stack([torch.bmm(cols, along_w[:, c]) for c in range(channels)], dim=1)
    return out.to(x.dtype)


def gaussian_blur(
    x: torch.Tensor, sigma: float | tuple[float, float], *, truncate: float = 4.0
) -> torch.Tensor:
    """Blur every channel with a separable Gaussian.

    Convention: ``sigma`` is a float or ``(sigma_y, sigma_x)`` in pixels; the
    kernel radius along each axis is ``int(truncate * sigma + 0.5)``; borders
    are extended by half-sample symmetric reflection (``d c b a | a b c d``).
    The result equals ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect",
    truncate=truncate)`` applied to each ``(H, W)`` plane. A sigma of 0 leaves
    that axis unchanged. 16-bit floats are computed in float32 and cast back.

    Implementation: each axis is one matrix product. Up to 1024 pixels the
    blur of a row is ``row @ A`` with ``A`` the ``(W, W)`` matrix of the kernel
    taps with the reflection folded in (cached per size and sigma); longer axes
    are cut into tiles of 128 outputs, each one product of a reflect-padded
    window with a banded block. BLAS makes this several times faster than a
    padded convolution (see ``benchmarks/bench_ops.py``). On CUDA the products
    follow ``torch.backends.cuda.matmul.allow_tf32``: leave it off (the
    default) for float32 accuracy.

    Args:
        x: image tensor of shape ``(*, C, H, W)``, floating point.
        sigma: standard deviation(s) in pixels, ``>= 0``.
        truncate: kernel radius in units of sigma.

    Returns:
        The blurred tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not a float image, or ``sigma`` or
            ``truncate`` is negative or not a number.

    Example:
        >>> x = torch.rand(2, 3, 16, 20)
        >>> gaussian_blur(x, (1.0, 2.0)).shape
        torch.Size([2, 3, 16, 20])
    """
    check_float_image(x)
    sigma_y, sigma_x = check_pair(sigma, "sigma")
    check_nonnegative(sigma_y, "sigma")
    check_nonnegative(sigma_x, "sigma")
    truncate = check_nonnegative(truncate, "truncate")
    if x.numel() == 0:
        return x.clone()
    work = x.to(compute_dtype(x.dtype))
    out = _blur_rows(_blur_last(work, sigma_x, truncate), sigma_y, truncate)
    if out is work:
        out = work.clone()
    return out.contiguous().to(x.dtype)


def difference_of_gaussians(
    x: torch.Tensor,
    low_sigma: float | tuple[float, float],
    high_sigma: float | tuple[float, float] | None = None,
    *,
    truncate: float = 4.0,
) -> torch.Tensor:
    """Band-pass filter: ``gaussian_blur(x, low_sigma) - gaussian_blur(x, high_sigma)``.

    The difference of Gaussians approximates the Laplacian of Gaussian
    (Marr & Hildreth, "Theory of edge detection", Proc. R. Soc. Lond. B 207,
    1980) when ``high_sigma = 1.6 * low_sigma``, the default. Its frequency
    response is ``exp(-2 pi^2 s1^2 f^2) - exp(-2 pi^2 s2^2 f^2)`` for ``f`` in
    cycles per pixel (see :func:`ops.noise.dog_noise` for the peak). Equal to
    ``skimage.filters.difference_of_gaussians(x, low_sigma, high_sigma,
    mode="reflect", truncate=truncate)`` per ``(H, W)`` plane.

    Convention: sigmas are floats or ``(sigma_y, sigma_x)`` pairs in pixels.

    Args:
        x: image tensor of shape ``(*, C, H, W)``, floating point.
        low_sigma: sigma of the narrower Gaussian, ``>= 0``.
        high_sigma: sigma of the wider Gaussian; ``1.6 * low_sigma`` by default.
            Must be ``>= low_sigma`` on each axis.
        truncate: kernel radius in units of sigma.

    Returns:
        The band-passed tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: bad image, negative sigma, or
            ``high_sigma < low_sigma``.

    Example:
        >>> difference_of_gaussians(torch.rand(3, 32, 32), 1.0).shape
        torch.Size([3, 32, 32])
    """
    low = check_pair(low_sigma, "low_sigma")
    high = (
        (low[0] * 1.6, low[1] * 1.6) if high_sigma is None else check_pair(high_sigma, "high_sigma")
    )
    for lo, hi in zip(low, high, strict=True):
        check_nonnegative(lo, "low_sigma")
        check_nonnegative(hi, "high_sigma")
        if hi < lo:
            raise InvalidArgumentError(
                f"high_sigma must be >= low_sigma on each axis, got high_sigma={high} "
                f"and low_sigma={low}"
            )
    check_float_image(x)
    if x.numel() == 0:
        return x.clone()
    work = x.to(compute_dtype(x.dtype))
    out = gaussian_blur(work, low, truncate=truncate) - gaussian_blur(work, high, truncate=truncate)
    return out.to(x.dtype)
