"""Dense optical flow: pyramidal, iterative Lucas–Kanade with a Gaussian window."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ops._checks import (
    check_float_image,
    check_int,
    check_nonnegative,
    check_positive,
    compute_dtype,
)
from ops._padding import pad_symmetric
from ops.errors import InvalidArgumentError
from ops.filters import gaussian_blur
from ops.geometry import upsample2x

__all__ = ["Flow", "lucas_kanade"]

_PYRAMID_SIGMA = 1.0


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lucas–Kanade iterations at one pyramid level, starting from ``flow``.

    Each step samples ``a`` at ``p - d/2`` and ``b`` at ``p + d/2`` (with
    their gradients, in one ``grid_sample`` per image), linearizes the
    residual of every neighbour ``s`` around its own current flow ``d(s)``,
    ``r_s(d) ~ r_s + g_s . (d - d(s))``, and solves the windowed least squares
    ``G d = W * [g (g . d(s) - r_s)]`` in closed form.
    """
    channels = a.shape[1]
    ax, ay = _gradients(a)
    bx, by = _gradients(b)
    stack_a = torch.cat([a, ax, ay], dim=1)
    stack_b = torch.cat([b, bx, by], dim=1)
    valid = torch.ones_like(flow[:, :1], dtype=torch.bool)
    for _ in range(iterations):
        half = 0.5 * flow
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
) -> Flow:
    """Dense optical flow from ``a`` to ``b`` by iterative, pyramidal Lucas–Kanade.

    For every pixel ``r``, the flow ``d`` minimizes the Gaussian-windowed sum of
    squared differences ``sum_s w(s - r) (b(s + d/2) - a(s - d/2))^2`` by
    Gauss–Newton steps with a closed-form 2x2 solve:

    - ``a`` and ``b`` are sampled halfway, at ``p - d/2`` and ``p + d/2``
      (bilinear ``grid_sample``, edge pixels repeated outside the image), with
      their gradients ``Ix, Iy``: central differences ``(x[i+1] - x[i-1]) / 2``,
      borders by half-sample symmetric reflection. Warping both images by
      the same half step gives both the same interpolation blur, so it cancels in
      the difference (warping only ``b`` leaves a blur mismatch that costs
      about 0.1 px per pixel on smooth textures); the gradient used is the mean
      of the two warped gradients, as in ESM (Benhimane & Malis 2004).
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
    ``flow[..., 1, :, :] = dy`` (x along the width, in input pixels).
    Multi-channel images: the structure tensors and right-hand sides are summed
    over channels (any textured channel constrains the flow); pass a luminance
    channel to weigh channels otherwise.

    Invalid pixels: where the smaller eigenvalue of ``G`` (a weighted *mean*
    of squared gradients, in squared intensity units per pixel^2, summed over
    channels; at full resolution and the final estimate) is below
    ``min_eigenvalue``, the flow is not determined (flat regions, straight
    edges: the aperture problem): ``valid`` is ``False`` there and the flow is
    set to 0, not NaN, so that the result stays usable in arithmetic and
    autograd. At coarser levels such pixels keep the flow they started with.
    Pixels whose window reaches across the image border, or whose target lies
    outside the image, are estimated from reflected or repeated pixels and are
    less accurate. 16-bit floats are computed in float32 and cast back. The
    result is differentiable in ``a`` and ``b`` almost everywhere (the mask is
    piecewise constant).

    Args:
        a: first images ``(*, C, H, W)``, floating point.
        b: second images, same shape, dtype and device as ``a``.
        sigma: standard deviation of the Gaussian window in pixels (at every
            pyramid level), ``> 0``.
        levels: pyramid levels, ``>= 1`` (1: no pyramid).
        iterations: Gauss–Newton steps per level, ``>= 1``.
        min_eigenvalue: threshold on the smaller eigenvalue of the windowed
            structure tensor, ``>= 0``.

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
    *lead, channels, height, width = a.shape
    if a.numel() == 0:
        return Flow(
            a.new_zeros((*lead, 2, height, width)),
            torch.zeros((*lead, 1, height, width), dtype=torch.bool, device=a.device),
        )

    work = compute_dtype(a.dtype)
    pyramid = [
        (
            a.to(work).reshape(-1, channels, height, width),
            b.to(work).reshape(-1, channels, height, width),
        )
    ]
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
            la, lb, flow, sigma=sigma, iterations=iterations, min_eigenvalue=min_eigenvalue
        )
    flow = torch.where(mask, flow, torch.zeros_like(flow))
    return Flow(
        flow.reshape(*lead, 2, height, width).to(a.dtype),
        mask.reshape(*lead, 1, height, width),
    )
