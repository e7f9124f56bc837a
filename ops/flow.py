"""Dense optical flow: pyramidal, iterative Lucas–Kanade with a Gaussian window."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ops._checks import (
    check_choice,
    check_float_image,
    check_int,
    check_nonnegative,
    check_positive,
    compute_dtype,
)
from ops._padding import _reflect_indices_list, pad_symmetric, reflect_indices
from ops.errors import InvalidArgumentError
from ops.filters import gaussian_blur
from ops.geometry import upsample2x

__all__ = ["Flow", "lucas_kanade"]

_PYRAMID_SIGMA = 1.0
# B-spline degree of each interpolation, and the half-length of the FIR that
# replaces its recursive prefilter: the taps decay as |z1|^k with z1 the pole
# nearest -1 (-0.268 for degree 3, -0.431 for degree 5) and are cut below 1e-17.
_SPLINE_DEGREE = {"cubic": 3, "quintic": 5}
_PREFILTER_RADIUS = {3: 30, 5: 47}
_INTERPOLATIONS = ("linear", "cubic", "quintic")


class Flow(NamedTuple):
    """Result of :func:`lucas_kanade`.

    Attributes:
        flow: ``(*, 2, H, W)``, channel 0 the x (width) component, channel 1
            the y (height) component, in pixels of the input; 0 where invalid.
        valid: ``(*, 1, H, W)`` bool, ``False`` where the windowed structure
            tensor's smaller eigenvalue is below ``min_eigenvalue`` (flat
            regions, straight edges: the aperture problem).
    """

    flow: torch.Tensor
    valid: torch.Tensor


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences ``(x[i+1] - x[i-1]) / 2``, borders by half-sample reflection."""
    p = pad_symmetric(x, 1, 1)
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * 0.5
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * 0.5
    return gx, gy


def _warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (N, C, H, W) at ``p + flow(p)``, bilinear, edge pixels repeated outside."""
    n, _, height, width = x.shape
    ys = torch.arange(height, dtype=x.dtype, device=x.device).view(1, height, 1)
    xs = torch.arange(width, dtype=x.dtype, device=x.device).view(1, 1, width)
    # Pixel-index coordinate c -> normalized (2 c + 1) / size - 1 (align_corners=False).
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / width - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / height - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@functools.lru_cache(maxsize=8)
def _prefilter_taps(degree: int) -> tuple[float, ...]:
    """The B-spline prefilter ``1 / B(z)`` as a symmetric FIR (float64, NumPy).

    ``B(omega) = sum_m beta(m) exp(-i omega m)`` is the spline's sampled kernel:
    ``(4 + 2 cos w) / 6`` for degree 3, ``(66 + 52 cos w + 2 cos 2w) / 120`` for
    degree 5. Its inverse's impulse response, read off a 4096-point inverse DFT,
    decays geometrically; ``_PREFILTER_RADIUS`` taps on each side keep it to
    ~1e-17.
    """
    size = 4096
    w = 2.0 * np.pi * np.fft.fftfreq(size)
    if degree == 3:
        sampled = (4.0 + 2.0 * np.cos(w)) / 6.0
    else:
        sampled = (66.0 + 52.0 * np.cos(w) + 2.0 * np.cos(2.0 * w)) / 120.0
    impulse = np.real(np.fft.ifft(1.0 / sampled))
    radius = _PREFILTER_RADIUS[degree]
    return tuple(np.concatenate([impulse[-radius:], impulse[: radius + 1]]).tolist())


# Axes up to this length are prefiltered by one dense matrix product (the
# reflection folded in, as the Gaussian blur does); longer ones by a convolution.
_DENSE_MAX = 1024


@functools.lru_cache(maxsize=32)
def _prefilter_matrix(n: int, degree: int) -> np.ndarray:
    """The float64 ``(n, n + 2 keep)`` matrix ``A`` with ``coefficients = row @ A``.

    Column ``o`` holds the FIR taps of coefficient ``o - keep``, each added onto
    the sample that half-sample symmetric extension reads there (taps landing on
    one sample add up).
    """
    keep = degree // 2 + 1
    radius = _PREFILTER_RADIUS[degree]
    taps = np.asarray(_prefilter_taps(degree))
    source = np.asarray(_reflect_indices_list(n, radius + keep, radius + keep))
    width = n + 2 * keep
    out_index = np.repeat(np.arange(width), taps.size)
    tap = np.tile(np.arange(taps.size), width)
    flat = source[out_index + tap] * width + out_index
    return np.bincount(flat, weights=taps[tap], minlength=n * width).reshape(n, width)


@functools.lru_cache(maxsize=32)
def _prefilter_operator(
    n: int, degree: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`_prefilter_matrix` cast to ``dtype`` on ``device``, cached."""
    return torch.from_numpy(_prefilter_matrix(n, degree)).to(device=device, dtype=dtype)


def _prefilter_last(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Prefilter along the last axis, output padded by ``keep`` coefficients on each side."""
    n = x.shape[-1]
    if n <= _DENSE_MAX:
        return x @ _prefilter_operator(n, degree, x.dtype, x.device)
    keep = degree // 2 + 1
    pad = _PREFILTER_RADIUS[degree] + keep
    index = reflect_indices(n, pad, pad, x.device)
    taps = torch.tensor(_prefilter_taps(degree), dtype=x.dtype, device=x.device)
    rows = x.index_select(-1, index).reshape(-1, 1, n + 2 * pad)
    return F.conv1d(rows, taps.view(1, 1, -1)).reshape(*x.shape[:-1], n + 2 * keep)


def _spline_coefficients(x: torch.Tensor, degree: int) -> torch.Tensor:
    """B-spline coefficients of ``x`` (N, C, H, W), padded by ``degree // 2 + 1`` on each side.

    The coefficients interpolate the half-sample symmetric extension of ``x``
    (``d c b a | a b c d``, period ``2 H`` and ``2 W``): the FIR prefilter of
    :func:`_prefilter_taps` runs along the rows, then along the columns.
    """
    along_w = _prefilter_last(x, degree)
    return _prefilter_last(along_w.transpose(-1, -2), degree).transpose(-1, -2).contiguous()


def _reflect_coordinate(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Map a pixel-index coordinate into ``[-0.5, size - 0.5]`` by half-sample reflection."""
    period = 2.0 * size
    u = torch.remainder(coord + 0.5, period)
    return torch.where(u > size, period - u, u) - 0.5


def _spline_pairs(coord: torch.Tensor, degree: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis: (weight, position) of the bilinear fetches that make the B-spline sum.

    The ``degree + 1`` B-spline weights at the fractional part ``t`` are all
    positive, so each pair of neighbouring taps ``(k, k + 1)`` with weights
    ``(w0, w1)`` is one linear-interpolation fetch at ``k + w1 / (w0 + w1)``
    weighted by ``w0 + w1`` (Sigg & Hadwiger, GPU Gems 2, ch. 20): 2 fetches
    per axis for degree 3, 3 for degree 5.
    """
    floor = torch.floor(coord)
    t = coord - floor
    u = 1.0 - t
    if degree == 3:
        # beta3 at offsets t + 1, t, t - 1, t - 2 (taps floor - 1 .. floor + 2).
        weights = [u**3 / 6.0, t * t * (t / 2.0 - 1.0) + 2.0 / 3.0]
        weights += [u * u * (u / 2.0 - 1.0) + 2.0 / 3.0, t**3 / 6.0]
        first = -1
    else:

        def near(s: torch.Tensor) -> torch.Tensor:  # beta5(1 - s), taps floor and floor + 1
            return s * (
                s * (s * (s * (s / 12.0 - 1.0 / 6.0) - 1.0 / 6.0) + 1.0 / 6.0) + 5.0 / 12.0
            ) + (13.0 / 60.0)

        def far(s: torch.Tensor) -> torch.Tensor:  # beta5(2 - s), taps floor - 1 and floor + 2
            return s * (
                s * (s * (s * (1.0 / 24.0 - s / 24.0) + 1.0 / 12.0) + 1.0 / 12.0) + 1.0 / 24.0
            ) + (1.0 / 120.0)

        weights = [u**5 / 120.0, far(u), near(u), near(t), far(t), t**5 / 120.0]
        first = -2
    pairs = []
    for k in range(0, len(weights), 2):
        total = weights[k] + weights[k + 1]
        pairs.append((total, floor + (first + k) + weights[k + 1] / total))
    return pairs


def _warp_spline(coeffs: torch.Tensor, flow: torch.Tensor, degree: int) -> torch.Tensor:
    """Sample the B-spline with coefficients ``coeffs`` at ``p + flow(p)``.

    ``coeffs`` comes from :func:`_spline_coefficients` (padded by ``degree // 2
    + 1``). Positions outside the image are reflected into it first (half-sample
    symmetric, the extension the coefficients interpolate), so every fetch
    lies inside the padded coefficients. Equal to
    ``scipy.ndimage.map_coordinates(x, p + flow, order=degree, mode="reflect")``
    to float rounding wherever scipy's own boundary rule is exact (axes of a few
    tens of samples or more; on shorter ones scipy approximates the extension).
    """
    keep = degree // 2 + 1
    n, channels, padded_h, padded_w = coeffs.shape
    height, width = padded_h - 2 * keep, padded_w - 2 * keep
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(1, height, 1)
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, 1, width)
    along_x = _spline_pairs(_reflect_coordinate(xs + flow[:, 0], width), degree)
    along_y = _spline_pairs(_reflect_coordinate(ys + flow[:, 1], height), degree)
    out = coeffs.new_zeros((n, channels, height, width))
    for weight_y, pos_y in along_y:
        # Index c of the image is c + keep of the padded array; align_corners=True
        # maps index i to 2 i / (size - 1) - 1.
        gy = (pos_y + keep) * (2.0 / (padded_h - 1)) - 1.0
        for weight_x, pos_x in along_x:
            gx = (pos_x + keep) * (2.0 / (padded_w - 1)) - 1.0
            grid = torch.stack([gx, gy], dim=-1)
            fetched = F.grid_sample(
                coeffs, grid, mode="bilinear", padding_mode="border", align_corners=True
            )
            out = torch.addcmul(out, (weight_y * weight_x).unsqueeze(1), fetched)
    return out


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """One pyramid step: Gaussian blur, then 2x2 mean; an odd side is first padded by 1.

    Coarse pixel ``i`` covers fine pixels ``2 i`` and ``2 i + 1`` (pixel edges
    halve exactly), the convention of :func:`ops.geometry.upsample2x`.
    """
    height, width = x.shape[-2:]
    blurred = gaussian_blur(x, _PYRAMID_SIGMA)
    if height % 2 or width % 2:
        blurred = F.pad(blurred, (0, width % 2, 0, height % 2), mode="replicate")
    return F.avg_pool2d(blurred, 2)


def _min_eigenvalue(gxx: torch.Tensor, gxy: torch.Tensor, gyy: torch.Tensor) -> torch.Tensor:
    """Smaller eigenvalue of ``[[gxx, gxy], [gxy, gyy]]``, as ``det / lambda_max``.

    Dividing the determinant by the larger eigenvalue avoids the cancellation of
    ``trace / 2 - sqrt(...)`` when the eigenvalues differ by orders of magnitude.
    """
    det = gxx * gyy - gxy * gxy
    lam_max = 0.5 * (gxx + gyy) + torch.sqrt((0.5 * (gxx - gyy)) ** 2 + gxy * gxy)
    return torch.where(lam_max > 0, det / lam_max.clamp_min(torch.finfo(det.dtype).tiny), 0.0)


def _refine(
    a: torch.Tensor,
    b: torch.Tensor,
    flow: torch.Tensor,
    *,
    sigma: float,
    iterations: int,
    min_eigenvalue: float,
    interpolation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lucas–Kanade iterations at one pyramid level, starting from ``flow``.

    Each step samples ``a`` at ``p - d/2`` and ``b`` at ``p + d/2`` (with
    their gradients, in one interpolation per image), linearizes the
    residual of every neighbour ``s`` around its own current flow ``d(s)``,
    ``r_s(d) ~ r_s + g_s . (d - d(s))``, and solves the windowed least squares
    ``G d = W * [g (g . d(s) - r_s)]`` in closed form.
    """
    channels = a.shape[1]
    ax, ay = _gradients(a)
    bx, by = _gradients(b)
    stack_a = torch.cat([a, ax, ay], dim=1)
    stack_b = torch.cat([b, bx, by], dim=1)
    degree = _SPLINE_DEGREE.get(interpolation, 1)
    if degree > 1:
        # The prefilter runs once per level; each step only fetches.
        stack_a = _spline_coefficients(stack_a, degree)
        stack_b = _spline_coefficients(stack_b, degree)
    valid = torch.ones_like(flow[:, :1], dtype=torch.bool)
    for _ in range(iterations):
        half = 0.5 * flow
        if degree > 1:
            wa = _warp_spline(stack_a, -half, degree).split(channels, dim=1)
            wb = _warp_spline(stack_b, half, degree).split(channels, dim=1)
        else:
            wa = _warp(stack_a, -half).split(channels, dim=1)
            wb = _warp(stack_b, half).split(channels, dim=1)
        gx = 0.5 * (wa[1] + wb[1])
        gy = 0.5 * (wa[2] + wb[2])
        q = gx * flow[:, :1] + gy * flow[:, 1:] - (wb[0] - wa[0])
        terms = torch.stack(
            [
                (gx * gx).sum(1),
                (gx * gy).sum(1),
                (gy * gy).sum(1),
                (gx * q).sum(1),
                (gy * q).sum(1),
            ],
            dim=1,
        )
        gxx, gxy, gyy, hx, hy = gaussian_blur(terms, sigma).unbind(1)
        det = gxx * gyy - gxy * gxy
        with torch.no_grad():
            ok = (_min_eigenvalue(gxx, gxy, gyy) >= min_eigenvalue) & (det > 0)
        safe_det = torch.where(ok, det, torch.ones_like(det))
        # G^{-1} = [[gyy, -gxy], [-gxy, gxx]] / det
        solved = torch.stack([gyy * hx - gxy * hy, gxx * hy - gxy * hx], dim=1) / safe_det[:, None]
        valid = ok.unsqueeze(1)
        flow = torch.where(valid, solved, flow)
    return flow, valid


def lucas_kanade(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    sigma: float = 2.0,
    levels: int = 1,
    iterations: int = 5,
    min_eigenvalue: float = 1e-6,
    presmooth: float = 1.0,
    interpolation: str = "cubic",
) -> Flow:
    """Dense optical flow from ``a`` to ``b`` by iterative, pyramidal Lucas–Kanade.

    For every pixel ``r``, the flow ``d`` minimizes the Gaussian-windowed sum of
    squared differences ``sum_s w(s - r) (b(s + d/2) - a(s - d/2))^2`` by
    Gauss–Newton steps with a closed-form 2x2 solve:

    - Both images are first blurred with a Gaussian of ``presmooth`` pixels
      (:func:`ops.filters.gaussian_blur`). The same blur on both sides commutes
      with a translation, so it does not move the estimate; it removes the
      content near the Nyquist frequency, which no interpolation can shift
      without a phase error (on 8-bit photographs the bias drops from ~0.01-0.02
      to ~0.002 px with ``presmooth=1``).
    - ``a`` and ``b`` are sampled halfway, at ``p - d/2`` and ``p + d/2``, with
      their gradients ``Ix, Iy`` (central differences ``(x[i+1] - x[i-1]) / 2``,
      borders by half-sample symmetric reflection). ``interpolation="cubic"``
      (default) samples the cubic B-spline interpolant (prefiltered once per
      pyramid level, then four bilinear fetches per sample); ``"quintic"`` the
      degree-5 one (nine fetches); outside the image both read the half-sample
      symmetric extension. ``"linear"`` is bilinear ``grid_sample`` with edge
      pixels repeated, the former scheme: faster, but biased (below).
    - Why splines: sampling both images by the same half step gives both the
      same interpolation *blur*, but an interpolator's *phase* error has
      opposite signs at fractional offsets ``t`` and ``1 - t`` (``-d/2`` and
      ``+d/2``), so in the difference the two errors add: a bias of up to
      ``0.02`` px at ``d = 0.5`` on 8-bit photos with bilinear sampling. Keys'
      cubic convolution (``a = -0.5``) has exactly the phase response of bilinear
      interpolation, and ``grid_sample``'s bicubic (``a = -0.75``) does not
      reproduce linear ramps (a frequency-independent bias); the cubic B-spline
      is accurate to fourth order (phase bias below 0.001 px up to a quarter of
      the sampling frequency). The gradient used is the mean of the two warped
      gradients, as in ESM (Benhimane & Malis 2004).
    - The window sums are :func:`ops.filters.gaussian_blur` with ``sigma``
      (weights summing to 1): the structure tensor
      ``G = W * [[Ix Ix, Ix Iy], [Ix Iy, Iy Iy]]`` and the right-hand side
      ``h = W * [I (I . d(s) - It)]`` with ``It = b(s + d(s)/2) - a(s - d(s)/2)``,
      which linearizes each neighbour's residual around its own current flow
      ``d(s)``. The new flow is ``d = G^{-1} h``.
    - ``levels > 1``: the same on a Gaussian pyramid (blur with sigma 1, then
      2x2 mean; an odd side is padded by repeating its last row or column),
      coarsest level first; each level's flow is upsampled with
      :func:`ops.geometry.upsample2x` and doubled to start the next one. Shifts
      up to about ``sigma * 2 ** (levels - 1)`` pixels are within reach;
      ``levels=1`` handles about ``sigma``.

    Convention: if ``b`` is ``a`` with its content moved by ``(dx, dy)``, that
    is ``b(x, y) = a(x - dx, y - dy)``, then ``flow[..., 0, :, :] = dx`` and
    ``flow[..., 1, :, :] = dy`` (x along the width, in input pixels). The flow
    at ``p`` is the displacement of the content found halfway, at ``p - d/2`` in
    ``a`` and ``p + d/2`` in ``b``.
    Multi-channel images: the structure tensors and right-hand sides are summed
    over channels (any textured channel constrains the flow); pass a luminance
    channel to weigh channels otherwise.

    Invalid pixels: where the smaller eigenvalue of ``G`` (a weighted *mean*
    of squared gradients of the presmoothed images, in squared intensity units
    per pixel^2, summed over channels; at full resolution and the final
    estimate) is below ``min_eigenvalue``, the flow is not determined (flat
    regions, straight edges: the aperture problem): ``valid`` is ``False``
    there and the flow is set to 0, not NaN, so that the result stays usable in
    arithmetic and autograd. At coarser levels such pixels keep the flow they
    started with. Pixels whose window reaches across the image border, or
    whose target lies outside the image, are estimated from reflected or
    repeated pixels and are less accurate. 16-bit floats are computed in
    float32 and cast back. The result is differentiable in ``a`` and ``b``
    almost everywhere (the mask is piecewise constant).

    Args:
        a: first images ``(*, C, H, W)``, floating point.
        b: second images, same shape, dtype and device as ``a``.
        sigma: standard deviation of the Gaussian window in pixels (at every
            pyramid level), ``> 0``.
        levels: pyramid levels, ``>= 1`` (1: no pyramid).
        iterations: Gauss–Newton steps per level, ``>= 1``.
        min_eigenvalue: threshold on the smaller eigenvalue of the windowed
            structure tensor, ``>= 0``.
        presmooth: standard deviation in pixels of the Gaussian blur applied to
            both images first, ``>= 0`` (0: none).
        interpolation: ``"cubic"`` (B-spline, default), ``"quintic"`` (B-spline)
            or ``"linear"`` (bilinear, biased; see above).

    Returns:
        :class:`Flow` ``(flow, valid)``: flow ``(*, 2, H, W)`` in ``a``'s dtype,
        valid ``(*, 1, H, W)`` bool.

    Raises:
        InvalidArgumentError: bad images or mismatched ``a`` and ``b``, or a bad
            option.

    References:
        B. D. Lucas and T. Kanade, "An iterative image registration technique
        with an application to stereo vision", IJCAI 1981.
        J.-Y. Bouguet, "Pyramidal implementation of the Lucas Kanade feature
        tracker: description of the algorithm", Intel Corporation, 2000.
        S. Benhimane and E. Malis, "Real-time image-based tracking of planes
        using efficient second-order minimization", IROS 2004.
        M. Unser, "Splines: a perfect fit for signal and image processing",
        IEEE Signal Processing Magazine 16(6), 1999 (B-spline interpolation).
        R. Keys, "Cubic convolution interpolation for digital image
        processing", IEEE Trans. ASSP 29(6), 1981.

    Example:
        >>> a = gaussian_blur(torch.rand(2, 1, 48, 64), 2.0)
        >>> b = torch.roll(a, shifts=(1, 2), dims=(-2, -1))  # content moves by dx=2, dy=1
        >>> flow, valid = lucas_kanade(a, b, levels=2)
        >>> flow.shape, valid.shape, valid.dtype
        (torch.Size([2, 2, 48, 64]), torch.Size([2, 1, 48, 64]), torch.bool)
        >>> [round(v, 1) for v in flow[:, :, 16:32, 16:48].mean(dim=(0, 2, 3)).tolist()]
        [2.0, 1.0]
    """
    check_float_image(a, "a")
    check_float_image(b, "b")
    if b.shape != a.shape or b.dtype != a.dtype or b.device != a.device:
        raise InvalidArgumentError(
            f"b must have the shape, dtype and device of a ({tuple(a.shape)}, {a.dtype}, "
            f"{a.device}), got ({tuple(b.shape)}, {b.dtype}, {b.device})"
        )
    sigma = check_positive(sigma, "sigma")
    levels = check_int(levels, "levels", minimum=1)
    iterations = check_int(iterations, "iterations", minimum=1)
    min_eigenvalue = check_nonnegative(min_eigenvalue, "min_eigenvalue")
    presmooth = check_nonnegative(presmooth, "presmooth")
    interpolation = check_choice(interpolation, "interpolation", _INTERPOLATIONS)
    *lead, channels, height, width = a.shape
    if a.numel() == 0:
        return Flow(
            a.new_zeros((*lead, 2, height, width)),
            torch.zeros((*lead, 1, height, width), dtype=torch.bool, device=a.device),
        )

    work = compute_dtype(a.dtype)
    first = a.to(work).reshape(-1, channels, height, width)
    second = b.to(work).reshape(-1, channels, height, width)
    if presmooth > 0:
        first = gaussian_blur(first, presmooth)
        second = gaussian_blur(second, presmooth)
    pyramid = [(first, second)]
    for _ in range(levels - 1):
        pa, pb = pyramid[-1]
        pyramid.append((_downsample(pa), _downsample(pb)))

    n = pyramid[0][0].shape[0]
    coarse_h, coarse_w = pyramid[-1][0].shape[-2:]
    flow = torch.zeros((n, 2, coarse_h, coarse_w), dtype=work, device=a.device)
    mask = torch.ones((n, 1, coarse_h, coarse_w), dtype=torch.bool, device=a.device)
    for level in range(levels - 1, -1, -1):
        la, lb = pyramid[level]
        if level < levels - 1:
            lh, lw = la.shape[-2:]
            flow = 2.0 * upsample2x(flow)[..., :lh, :lw]
        flow, mask = _refine(
            la,
            lb,
            flow,
            sigma=sigma,
            iterations=iterations,
            min_eigenvalue=min_eigenvalue,
            interpolation=interpolation,
        )
    flow = torch.where(mask, flow, torch.zeros_like(flow))
    return Flow(
        flow.reshape(*lead, 2, height, width).to(a.dtype),
        mask.reshape(*lead, 1, height, width),
    )
