"""Colour and tone: inversion, BT.601 luminance, two local shadows/highlights adjustments."""

from __future__ import annotations

import math

import torch

from ops._checks import (
    check_float_image,
    check_image,
    check_int,
    check_nonnegative,
    check_positive,
    compute_dtype,
)
from ops.errors import InvalidArgumentError
from ops.filters import gaussian_blur

__all__ = [
    "adjust_shadows_highlights",
    "default_tone_sigma",
    "invert",
    "luminance",
    "shadows_highlights",
]

# ITU-R BT.601 luma weights for R, G, B.
_BT601 = (0.299, 0.587, 0.114)
# The default mask blur of adjust_shadows_highlights, as a share of the shorter side.
_TONE_SIGMA_SHARE = 0.05
_INTEGER_MAX = {torch.uint8: 255, torch.uint16: 65535}


def invert(x: torch.Tensor, *, max_value: float = 1.0) -> torch.Tensor:
    """Invert intensities: ``max_value - x`` for floats, the full range for integers.

    Per-dtype behaviour (torchvision's ``invert_image``):

    - floating point: ``max_value - x``, computed in ``x``'s dtype (a single
      correctly rounded subtraction, so a 16-bit float gives the same result
      as computing in float32 and casting back). Values outside
      ``[0, max_value]`` are not clamped.
    - ``torch.uint8``: ``255 - x`` (``bitwise_not``).
    - ``torch.uint16``: ``65535 - x`` (``bitwise_not`` on the same bits viewed as
      int16, because torch 2.13 implements neither subtraction nor
      ``bitwise_not`` for uint16).
    - any other dtype (bool, signed integers, uint32, ...) is rejected.

    For integer dtypes ``max_value`` must be left at its default or equal the
    dtype's maximum (255 or 65535): the whole range is always inverted.

    Args:
        x: image tensor ``(*, C, H, W)``.
        max_value: the white level of a float image (1.0 for ``[0, 1]`` images).

    Returns:
        The inverted tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not an image tensor of a supported dtype,
            or ``max_value`` is not a finite number (or not allowed for ``x``'s
            integer dtype).

    Example:
        >>> invert(torch.tensor([[[0.0, 0.25]]]))
        tensor([[[1.0000, 0.7500]]])
        >>> invert(torch.tensor([[[0, 200]]], dtype=torch.uint8))
        tensor([[[255,  55]]], dtype=torch.uint8)
        >>> invert(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    check_image(x)
    if (
        not isinstance(max_value, int | float)
        or isinstance(max_value, bool)
        or not math.isfinite(max_value)
    ):
        raise InvalidArgumentError(f"max_value must be a finite number, got {max_value!r}")
    if x.is_floating_point():
        return torch.rsub(x, max_value)
    top = _INTEGER_MAX.get(x.dtype)
    if top is None:
        raise InvalidArgumentError(
            f"x must have a floating-point, uint8 or uint16 dtype, got {x.dtype}"
        )
    if max_value not in (1.0, top):
        raise InvalidArgumentError(
            f"max_value must be 1.0 (the default) or {top} for a {x.dtype} image, got {max_value!r}"
        )
    if x.dtype == torch.uint8:
        return torch.bitwise_not(x)
    return x.view(torch.int16).bitwise_not().view(torch.uint16)


def _luminance(work: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of a 3-channel ``(*, 3, H, W)`` tensor, in its dtype, as ``(*, 1, H, W)``."""
    if work.device.type == "cpu":
        # On the CPU a (1, 3) @ (3, H*W) product per image is one pass, ~4x faster
        # than three elementwise passes. (Elsewhere the elementwise form is kept:
        # a CUDA matmul could run in TF32 if a user enabled it.)
        weights = torch.tensor([_BT601], dtype=work.dtype)
        *lead, _, height, width = work.shape
        flat = work.reshape(-1, 3, height * width)
        return (weights @ flat).reshape(*lead, 1, height, width)
    return _luminance_elementwise(work)


def _luminance_elementwise(work: torch.Tensor) -> torch.Tensor:
    """:func:`_luminance` as three elementwise passes (the non-CPU path)."""
    red, green, blue = work.unbind(-3)
    out = red * _BT601[0]
    out = out.add_(green, alpha=_BT601[1]).add_(blue, alpha=_BT601[2])
    return out.unsqueeze(-3)


def _check_gray_or_rgb(x: torch.Tensor) -> int:
    channels = x.shape[-3]
    if channels not in (1, 3):
        raise InvalidArgumentError(
            f"x must have 1 (gray) or 3 (RGB) channels, got {channels} in shape {tuple(x.shape)}"
        )
    return channels


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Return the BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of RGB images.

    Convention: channels are ``(R, G, B)`` in that order; the weights are
    those of ITU-R Recommendation BT.601 (also PIL's ``convert("L")`` and
    kornia's ``rgb_to_grayscale``), applied to the values as given (no gamma
    decoding). A one-channel image is already gray and is returned as a copy.
    16-bit floats are computed in float32 and cast back.

    Args:
        x: image tensor ``(*, C, H, W)`` with ``C`` equal to 3 or 1, floating point.

    Returns:
        Tensor ``(*, 1, H, W)``, dtype and device of ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not a float image or has another channel count.

    References:
        ITU-R Recommendation BT.601-7, "Studio encoding parameters of digital
        television for standard 4:3 and wide-screen 16:9 aspect ratios", 2011.

    Example:
        >>> luminance(torch.rand(4, 3, 16, 16)).shape
        torch.Size([4, 1, 16, 16])
        >>> luminance(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)).item()
        0.29899999499320984
    """
    check_float_image(x)
    if _check_gray_or_rgb(x) == 1:
        return x.clone()
    if x.numel() == 0:
        return x.new_empty((*x.shape[:-3], 1, *x.shape[-2:]))
    return _luminance(x.to(compute_dtype(x.dtype))).to(x.dtype)


def default_tone_sigma(height: int, width: int) -> float:
    """The mask blur that :func:`adjust_shadows_highlights` uses by default: ``0.05 min(H, W)``.

    A twentieth of the shorter side (11.2 pixels at 224 x 224) makes the mask
    follow regions, not texture, at any image size.

    Example:
        >>> default_tone_sigma(224, 300)
        11.200000000000001
    """
    return _TONE_SIGMA_SHARE * min(height, width)


def _shadows_highlights(
    work: torch.Tensor, shadows: torch.Tensor, highlights: torch.Tensor, sigma: float
) -> torch.Tensor:
    """The kernel of :func:`adjust_shadows_highlights` with one amount per image.

    ``work`` is ``(N, C, H, W)`` in the compute dtype with ``C`` 1 or 3;
    ``shadows`` and ``highlights`` are ``(N,)`` tensors of that dtype and device.
    """
    n = work.shape[0]
    clamped = work.clamp(0.0, 1.0)
    luma = clamped if clamped.shape[-3] == 1 else _luminance(clamped)
    mask = gaussian_blur(luma, sigma).clamp_(0.0, 1.0)
    s = shadows.view(n, 1, 1, 1)
    h = highlights.view(n, 1, 1, 1)
    dark = (1.0 - torch.maximum(luma, mask)).square()
    bright = torch.minimum(luma, mask).square()
    exponent = torch.exp2(h * bright - s * dark)
    # gain = L^(e - 1) maps the luma L to L^e; black pixels (L = 0) keep gain 1.
    # The base is 1 there, so that neither the value nor its gradient is inf * 0.
    lit = luma > 0
    gain = torch.where(lit, torch.where(lit, luma, 1.0).pow(exponent - 1.0), 1.0)
    # g / max(1, g peak) = min(g, 1 / peak); 1 / 0 = inf leaves black pixels alone.
    scale = torch.minimum(gain, clamped.amax(dim=-3, keepdim=True).reciprocal())
    # The clamp only removes rounding: peak * scale <= 1 holds in exact arithmetic.
    return (clamped * scale).clamp_(0.0, 1.0)


def _check_amount(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not -1.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{name} must be a number in [-1, 1], got {value!r}")
    return float(value)


def adjust_shadows_highlights(
    x: torch.Tensor,
    *,
    shadows: float = 0.0,
    highlights: float = 0.0,
    sigma: float | None = None,
) -> torch.Tensor:
    r"""Lift or deepen shadows and tame or boost highlights with a power law (Moroney-style).

    **Not the source's method** (that is :func:`shadows_highlights`): a local
    tone curve after Moroney's non-linear masking, kept as a second method.
    Each pixel's luma ``L`` is raised to a power ``e`` chosen from ``L`` and
    its blurred neighbourhood ``M``; all channels of the pixel are multiplied
    by the same gain ``L^(e - 1)``, so colour ratios are kept:

    .. code-block:: text

        c   = clamp(x, 0, 1)
        L   = 0.299 R + 0.587 G + 0.114 B             (BT.601 luma of c; c itself if C == 1)
        M   = clamp(gaussian_blur(L, sigma), 0, 1)   (the mask: local brightness)
        ws  = (1 - max(L, M))**2                     (dark pixel in a dark neighbourhood)
        wh  = min(L, M)**2                           (bright pixel in a bright neighbourhood)
        e   = 2 ** (highlights * wh - shadows * ws)
        g   = L ** (e - 1)                           (1 where L == 0)
        out = c * g / max(1, g * max_channel(c))

    ``e < 1`` brightens, ``e > 1`` darkens. A power law moves dark values
    much more than bright ones (``L^e - L`` vanishes at ``L = 1``), and the
    weights ask the pixel *and* its neighbourhood to be dark (shadows) or
    bright (highlights), so ``shadows`` leaves bright pixels nearly alone even
    in dark surroundings, and ``highlights`` leaves dark ones alone. At
    ``shadows = 1`` a black neighbourhood gets ``e = 1/2`` (square root); at
    ``highlights = 1`` a white one gets ``e = 2``; negative amounts do the
    reverse. With ``sigma = 0`` and ``shadows = highlights = 1``, ``e = 2 **
    (2 L - 1)``: Moroney's exponent with the pixel itself as the mask. The last
    division is the ratio-keeping clamp: a pixel whose brightest channel would
    pass 1 is scaled down as a whole until it reaches 1, so the output lies in
    ``[0, 1]``.

    Convention: ``sigma`` is in pixels; by default it is
    :func:`default_tone_sigma` ``= 0.05 min(H, W)``. The input is clamped to
    ``[0, 1]`` first (an image with noise added can leave it), so with
    ``shadows = highlights = 0`` the output equals the input exactly when it is
    in ``[0, 1]``. Borders are reflected (see :func:`ops.filters.gaussian_blur`).
    16-bit floats are computed in float32 and cast back. Differentiable in ``x``
    where ``L > 0`` and ``L != M``.

    Args:
        x: image tensor ``(*, C, H, W)`` with ``C`` 3 (RGB) or 1, floating point.
        shadows: in ``[-1, 1]``; > 0 brightens dark regions, < 0 darkens them.
        highlights: in ``[-1, 1]``; > 0 darkens bright regions, < 0 brightens them.
        sigma: standard deviation of the mask blur in pixels, ``>= 0``
            (0: no blur, the mask is the pixel's own luma), or ``None``.

    Returns:
        The adjusted tensor in ``[0, 1]``, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: bad image or channel count, an amount outside
            ``[-1, 1]``, or a negative ``sigma``.

    References:
        N. Moroney, "Local color correction using non-linear masking", Proc.
        IS&T/SID 8th Color Imaging Conference, 2000, pp. 108-111.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> out = adjust_shadows_highlights(x, shadows=0.5, highlights=0.3)
        >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
        (torch.Size([2, 3, 32, 32]), True, True)
        >>> torch.equal(adjust_shadows_highlights(x), x)
        True
    """
    check_float_image(x)
    _check_gray_or_rgb(x)
    shadows = _check_amount(shadows, "shadows")
    highlights = _check_amount(highlights, "highlights")
    height, width = x.shape[-2:]
    if sigma is None:
        sigma = default_tone_sigma(height, width)
    sigma = check_nonnegative(sigma, "sigma")
    if x.numel() == 0:
        return x.clone()
    work = x.to(compute_dtype(x.dtype)).reshape(-1, *x.shape[-3:])
    amounts = torch.tensor([shadows, highlights], dtype=work.dtype, device=work.device)
    n = work.shape[0]
    out = _shadows_highlights(work, amounts[0].expand(n), amounts[1].expand(n), sigma)
    return out.reshape(x.shape).to(x.dtype)


def _source_shadows_highlights(
    work: torch.Tensor,
    gamma_shadows: torch.Tensor,
    gamma_highlights: torch.Tensor,
    kernel_size: int,
    sigma: float,
) -> torch.Tensor:
    """The kernel of :func:`shadows_highlights` with one pair of gammas per image.

    ``work`` is ``(N, C, H, W)`` in the compute dtype with ``C`` 1 or 3; the
    gammas are ``(N,)`` tensors of that dtype and device.
    """
    n = work.shape[0]
    gray = work if work.shape[-3] == 1 else _luminance(work)
    radius = kernel_size // 2
    # gaussian_blur's radius is int(truncate * sigma + 0.5): truncate = radius / sigma
    # gives exactly `radius` (the + 0.5 absorbs the rounding of the quotient).
    blurred = gaussian_blur(gray, sigma, truncate=radius / sigma)
    diff = gray - blurred
    highlights = diff.clamp(min=0.0)
    shadows = (-diff).clamp(min=0.0)
    gs = gamma_shadows.view(n, 1, 1, 1)
    gh = gamma_highlights.view(n, 1, 1, 1)
    exponent = gh * highlights + gs * shadows + 1.0 * (1.0 - highlights - shadows)
    # A negative value has no real power: the base is floored at 0 (no-op on [0, 1]).
    return work.clamp(min=0.0).pow(exponent)


def _check_gamma(value: object, name: str) -> float:
    """``value`` as a float after checking that it is a finite number > 0."""
    return check_positive(value, name)


def _check_kernel_size(value: object, name: str = "kernel_size") -> int:
    """``value`` as an int after checking that it is an odd integer >= 1."""
    size = check_int(value, name, minimum=1)
    if size % 2 == 0:
        raise InvalidArgumentError(f"{name} must be odd, got {size}")
    return size


def shadows_highlights(
    x: torch.Tensor,
    *,
    gamma_shadows: float = 1.0,
    gamma_highlights: float = 1.0,
    kernel_size: int = 7,
    sigma: float = 2.5,
) -> torch.Tensor:
    r"""The source's shadows/highlights: a per-pixel power law from local-contrast masks.

    Exactly the source's method, as written:

    .. code-block:: text

        gray       = luminance(x)                        (BT.601; x itself if C == 1)
        blurred    = gaussian_blur(gray, kernel_size x kernel_size, sigma)
        highlights = clamp(gray - blurred, min=0)
        shadows    = clamp(blurred - gray, min=0)
        out        = x ** (gamma_highlights * highlights + gamma_shadows * shadows
                           + 1 * (1 - highlights - shadows))

    The masks measure *local* contrast: ``shadows`` is how much darker a pixel
    is than its 7 x 7 neighbourhood, ``highlights`` how much brighter (at most
    one of them is non-zero). The exponent is 1 where the pixel equals its
    neighbourhood; ``gamma_shadows < 1`` lifts pixels darker than their
    surroundings, ``gamma_highlights > 1`` darkens pixels brighter than theirs
    (values in ``[0, 1]``: a power below 1 brightens). Both gammas equal to 1
    give the identity. The effect sits on edges and texture, and its size
    scales with the local contrast (masks are differences of ``[0, 1]``
    values): on real photos the mean change is a few thousandths even at
    ``gamma = 0.5`` or ``2``.

    Convention: the blur kernel is the normalized Gaussian sampled at the
    ``kernel_size`` integer offsets around the pixel (torchvision's and
    kornia's kernel for ``(kernel_size, sigma)``), applied separably with
    half-sample symmetric borders (``d c b a | a b c d``, as
    :func:`ops.filters.gaussian_blur`; torchvision pads by whole-sample
    reflection, which differs in the outer ``kernel_size // 2`` rows and columns
    only). Values below 0 are raised as 0 (a negative number has no real power);
    inputs in ``[0, 1]`` follow the formula exactly. Values above 1 are kept (no
    clamp). 16-bit floats are computed in float32 and cast back. Differentiable
    where ``x > 0``.

    Args:
        x: image tensor ``(*, C, H, W)`` with ``C`` 3 (RGB) or 1, floating point.
        gamma_shadows: exponent where the pixel is darker than its neighbourhood, ``> 0``
            (``< 1`` lifts shadows).
        gamma_highlights: exponent where it is brighter, ``> 0`` (``> 1`` deepens highlights).
        kernel_size: side of the square blur kernel, odd, ``>= 1``.
        sigma: standard deviation of the blur in pixels, ``> 0``.

    Returns:
        The adjusted tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: bad image or channel count, a gamma that is not
            ``> 0``, an even or non-positive ``kernel_size``, or ``sigma <= 0``.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> out = shadows_highlights(x, gamma_shadows=0.6, gamma_highlights=1.5)
        >>> out.shape
        torch.Size([2, 3, 32, 32])
        >>> torch.equal(shadows_highlights(x), x)  # both gammas 1: x ** 1
        True
    """
    check_float_image(x)
    _check_gray_or_rgb(x)
    gamma_shadows = _check_gamma(gamma_shadows, "gamma_shadows")
    gamma_highlights = _check_gamma(gamma_highlights, "gamma_highlights")
    kernel_size = _check_kernel_size(kernel_size)
    sigma = check_positive(sigma, "sigma")
    if x.numel() == 0:
        return x.clone()
    work = x.to(compute_dtype(x.dtype)).reshape(-1, *x.shape[-3:])
    gammas = torch.tensor([gamma_shadows, gamma_highlights], dtype=work.dtype, device=work.device)
    n = work.shape[0]
    out = _source_shadows_highlights(
        work, gammas[0].expand(n), gammas[1].expand(n), kernel_size, sigma
    )
    return out.reshape(x.shape).to(x.dtype)
