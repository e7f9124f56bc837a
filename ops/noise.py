"""Band-pass noise masks: white Gaussian noise filtered by a difference of Gaussians."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ops._checks import check_nonnegative, compute_dtype
from ops.errors import InvalidArgumentError

__all__ = ["dog_band_sigmas", "dog_noise", "dog_peak_frequency", "dog_transfer"]


def _check_band(band: object, name: str = "band") -> tuple[float, float]:
    if (
        isinstance(band, Sequence)
        and not isinstance(band, str)
        and len(band) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in band)
    ):
        f_low, f_high = float(band[0]), float(band[1])
        if 0.0 < f_low < f_high <= 0.5:
            return f_low, f_high
    raise InvalidArgumentError(
        f"{name} must be a pair (f_low, f_high) in cycles per pixel with "
        f"0 < f_low < f_high <= 0.5, got {band!r}"
    )


def dog_band_sigmas(band: tuple[float, float]) -> tuple[float, float]:
    r"""The DoG sigmas ``(sigma1, sigma2)`` in pixels that :func:`dog_noise` uses for ``band``.

    The ratio is the band's: ``k = sigma2 / sigma1 = f_high / f_low``, and
    ``sigma1`` puts the peak of the response at the band's geometric centre
    ``f_c = sqrt(f_low f_high)``. Solving ``f* = f_c`` (see :func:`dog_noise`):

    .. code-block:: text

        sigma1 = sqrt(ln(k^2) / (2 pi^2 (k^2 - 1))) / f_c,   sigma2 = k sigma1

    Args:
        band: ``(f_low, f_high)`` in cycles per pixel, ``0 < f_low < f_high <= 0.5``.

    Returns:
        ``(sigma1, sigma2)`` with ``sigma1 < sigma2``.

    Raises:
        InvalidArgumentError: ``band`` is not such a pair.

    Example:
        >>> s1, s2 = dog_band_sigmas((0.05, 0.2))
        >>> round(s1, 4), round(s2, 4)
        (0.9677, 3.8707)
        >>> round(dog_peak_frequency(s1, s2), 6)  # sqrt(0.05 * 0.2)
        0.1
    """
    f_low, f_high = _check_band(band)
    k = f_high / f_low
    centre = math.sqrt(f_low * f_high)
    # ln(k^2) / (k^2 - 1), written to stay accurate as k -> 1 (where it -> 1).
    ratio = 2.0 * math.log(k) / ((k - 1.0) * (k + 1.0))
    sigma1 = math.sqrt(ratio / (2.0 * math.pi**2)) / centre
    return sigma1, k * sigma1


def dog_peak_frequency(sigma1: float, sigma2: float) -> float:
    r"""Peak frequency ``f*`` of the DoG response, in cycles per pixel.

    ``f* = sqrt(ln(sigma2^2 / sigma1^2) / (2 pi^2 (sigma2^2 - sigma1^2)))``:
    the zero of ``dH/df`` for ``H(f) = exp(-2 pi^2 sigma1^2 f^2) - exp(-2 pi^2
    sigma2^2 f^2)``. It is also the peak of the power ``|H|^2``, since ``H >= 0``.

    Args:
        sigma1: the narrower sigma in pixels, ``> 0``.
        sigma2: the wider sigma in pixels, ``> sigma1``.

    Returns:
        ``f*`` in cycles per pixel.

    Raises:
        InvalidArgumentError: not ``0 < sigma1 < sigma2``.

    Example:
        >>> round(dog_peak_frequency(1.0, 1.6), 4)
        0.1747
    """
    s1 = check_nonnegative(sigma1, "sigma1")
    s2 = check_nonnegative(sigma2, "sigma2")
    if not 0.0 < s1 < s2:
        raise InvalidArgumentError(
            f"sigma1 and sigma2 must satisfy 0 < sigma1 < sigma2, got {sigma1!r} and {sigma2!r}"
        )
    return math.sqrt(math.log(s2**2 / s1**2) / (2.0 * math.pi**2 * (s2**2 - s1**2)))


def _frequency_squared(
    height: int, width: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``f^2 = fy^2 + fx^2`` on the ``rfft2`` grid ``(H, W // 2 + 1)``, cycles per pixel."""
    fy = torch.fft.fftfreq(height, dtype=dtype, device=device)
    fx = torch.fft.rfftfreq(width, dtype=dtype, device=device)
    return fy.square().unsqueeze(-1) + fx.square()


def _transfer(f2: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``H(f)`` for ``f2`` ``(h, w)`` and sigmas ``(N,)``, as ``(N, 1, h, w)``.

    ``exp(-a) - exp(-b) = -exp(-a) expm1(-(b - a))`` keeps full relative
    precision even when ``sigma2`` is close to ``sigma1``.
    """
    c = 2.0 * math.pi**2
    s1 = sigma1.square().view(-1, 1, 1, 1)
    s2 = sigma2.square().view(-1, 1, 1, 1)
    a = c * s1 * f2
    return -torch.exp(-a) * torch.expm1(-(c * (s2 - s1)) * f2)


def dog_transfer(f: torch.Tensor | float, sigma1: float, sigma2: float) -> torch.Tensor | float:
    r"""The DoG frequency response ``H(f) = exp(-2 pi^2 s1^2 f^2) - exp(-2 pi^2 s2^2 f^2)``.

    This is the Fourier transform of ``G(sigma1) - G(sigma2)`` (unit-area
    Gaussians), ``f`` in cycles per pixel; the power spectrum of DoG-filtered
    white noise is proportional to ``H(f)^2``.

    Args:
        f: frequencies in cycles per pixel (a float or a tensor).
        sigma1: the narrower sigma in pixels.
        sigma2: the wider sigma in pixels.

    Returns:
        ``H(f)``, a float or a tensor like ``f``.

    Example:
        >>> round(dog_transfer(0.0, 1.0, 2.0), 6), round(dog_transfer(0.1, 1.0, 2.0), 4)
        (0.0, 0.3668)
    """
    c = 2.0 * math.pi**2
    if isinstance(f, torch.Tensor):
        return torch.exp(-c * sigma1**2 * f**2) - torch.exp(-c * sigma2**2 * f**2)
    return math.exp(-c * sigma1**2 * f**2) - math.exp(-c * sigma2**2 * f**2)


def _dog_filter(
    white: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor, rms: torch.Tensor
) -> torch.Tensor:
    """Filter white noise ``(N, C, H, W)`` by a DoG per sample, then fix mean 0 and ``rms``.

    ``sigma1``, ``sigma2`` and ``rms`` are ``(N,)`` or ``(1,)`` (shared by all
    samples) tensors of the dtype and device of ``white`` (float32 or float64).
    Circular convolution on the torus: the DFT of each plane times ``H``
    sampled on the DFT grid. Not differentiable (works in place on its
    intermediates).
    """
    height, width = white.shape[-2:]
    f2 = _frequency_squared(height, width, white.dtype, white.device)
    spectrum = torch.fft.rfft2(white).mul_(_transfer(f2, sigma1, sigma2))
    noise = torch.fft.irfft2(spectrum, s=(height, width))
    var, mean = torch.var_mean(noise, dim=(-3, -2, -1), correction=0, keepdim=True)
    return noise.sub_(mean).mul_(rms.view(-1, 1, 1, 1) * var.rsqrt())


def _draw_white(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def _check_shape(shape: object) -> tuple[int, ...]:
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, str)
        or len(shape) < 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
    ):
        raise InvalidArgumentError(
            f"shape must be a sequence (*, C, H, W) of at least 3 ints >= 0, got {shape!r}"
        )
    dims = tuple(int(v) for v in shape)
    if math.prod(dims) > 0 and dims[-1] * dims[-2] < 2:
        raise InvalidArgumentError(
            f"shape must have H * W >= 2 (a 1 x 1 plane has no frequency but 0), got {shape!r}"
        )
    return dims


def dog_noise(
    shape: Sequence[int],
    *,
    band: tuple[float, float],
    rms: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Band-pass noise masks: white Gaussian noise filtered by a difference of Gaussians.

    Each sample ``(C, H, W)`` (the last three axes of ``shape``; the leading
    axes index samples) is drawn as white Gaussian noise, filtered by the DoG
    ``G(sigma1) - G(sigma2)`` and then shifted and scaled so that it has mean 0
    and root-mean-square ``rms`` over its ``C * H * W`` values, exactly (up to
    float rounding). Channels get independent noise; pass ``C = 1`` and
    broadcast for the same mask on every channel.

    Frequency response (``f`` radial frequency in cycles per pixel):

    .. code-block:: text

        H(f)  = exp(-2 pi^2 sigma1^2 f^2) - exp(-2 pi^2 sigma2^2 f^2)
        f*    = sqrt(ln(sigma2^2 / sigma1^2) / (2 pi^2 (sigma2^2 - sigma1^2)))   (peak)

    ``H >= 0``, so the power spectrum ``|H|^2`` peaks at the same ``f*``. The
    band sets the sigmas (:func:`dog_band_sigmas`): ``k = sigma2 / sigma1 =
    f_high / f_low`` and ``sigma1`` such that ``f* = sqrt(f_low f_high)``, the
    band's geometric centre, so the power peak always lies in the band. Note
    that a DoG cannot be arbitrarily narrow: as ``k -> 1`` it tends to the
    Laplacian of Gaussian, whose half-power band spans about 1.2 octaves
    (``0.62 f*`` to ``1.44 f*``); a narrower ``band`` still sets the peak.

    Convention: frequencies in cycles per pixel (Nyquist is 0.5). From cycles
    per degree of visual angle at ``ppd`` pixels per degree:
    ``f_cpp = f_cpd / ppd`` (e.g. 2-8 cpd at 40 px/deg is ``band=(0.05, 0.2)``).

    Filtering is circular (exact on the torus): each plane's 2-D DFT is
    multiplied by ``H`` sampled on the DFT grid (``torch.fft.rfft2``) and
    transformed back, so the noise tiles seamlessly and no border rule enters.

    Randomness: white noise is drawn with ``torch.randn`` in float32 (float64
    for ``dtype=torch.float64``) from ``generator`` on the generator's own
    device, then moved to ``device``, so a CPU generator gives the same noise
    on every device. ``generator=None`` uses torch's default generator of
    ``device``.

    Args:
        shape: ``(*, C, H, W)``, at least 3 ints, ``H * W >= 2`` unless empty.
        band: ``(f_low, f_high)`` in cycles per pixel, ``0 < f_low < f_high <= 0.5``.
        rms: the root-mean-square of each sample, ``>= 0``.
        generator: the source of randomness.
        device: device of the result (default: the generator's, else CPU).
        dtype: floating dtype of the result; 16-bit floats are computed in
            float32 and cast back.

    Returns:
        Tensor of ``shape``, ``dtype`` and ``device``.

    Raises:
        InvalidArgumentError: bad ``shape``, ``band``, ``rms`` or ``dtype``.

    References:
        D. Marr and E. Hildreth, "Theory of edge detection", Proc. R. Soc. Lond.
        B 207 (1980) 187-217 (the DoG as a band-pass filter).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> noise = dog_noise((4, 3, 64, 64), band=(0.05, 0.2), rms=0.1, generator=g)
        >>> noise.shape
        torch.Size([4, 3, 64, 64])
        >>> noise.square().mean(dim=(1, 2, 3)).sqrt()
        tensor([0.1000, 0.1000, 0.1000, 0.1000])
    """
    dims = _check_shape(shape)
    f_low, f_high = _check_band(band)
    rms = check_nonnegative(rms, "rms")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if math.prod(dims) == 0:
        return torch.empty(dims, dtype=dtype, device=device)
    work_dtype = compute_dtype(dtype)
    white = _draw_white(dims, generator, device, work_dtype).reshape(-1, *dims[-3:])
    s1, s2 = dog_band_sigmas((f_low, f_high))
    params = torch.tensor([[s1], [s2], [rms]], dtype=work_dtype, device=device)
    noise = _dog_filter(white, params[0], params[1], params[2])
    return noise.reshape(dims).to(dtype)
