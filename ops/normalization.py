"""Per-channel normalization with dataset statistics, its inverse, per-image standardization."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ops._checks import check_float_image, check_positive, compute_dtype
from ops.errors import InvalidArgumentError

__all__ = ["denormalize", "normalize", "normalize_", "standardize"]

ChannelValues = Sequence[float] | torch.Tensor


def _channel_values(
    value: object,
    name: str,
    channels: int,
    *,
    positive: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``value`` as a ``(C, 1, 1)`` tensor after checking its length and its values."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 1 or value.shape[0] != channels:
            raise InvalidArgumentError(
                f"{name} must be a 1-D tensor of length C={channels} (one value per channel), "
                f"got shape {tuple(value.shape)}"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise InvalidArgumentError(f"{name} must have a real dtype, got {value.dtype}")
        out = value.to(device=device, dtype=dtype)
        detached = value.detach()
        bad = ~torch.isfinite(detached) | (detached <= 0) if positive else ~torch.isfinite(detached)
        if bool(bad.any()):
            rule = "finite and > 0" if positive else "finite"
            raise InvalidArgumentError(f"{name} values must be {rule}, got {value.tolist()}")
        return out.view(channels, 1, 1)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidArgumentError(
            f"{name} must be a sequence or 1-D tensor of {channels} numbers, got {value!r}"
        )
    if len(value) != channels:
        raise InvalidArgumentError(
            f"{name} must have length C={channels} (one value per channel), "
            f"got {len(value)} values: {list(value)!r}"
        )
    for v in value:
        if not math.isfinite(v) or (positive and v <= 0):
            rule = "finite and > 0" if positive else "finite"
            raise InvalidArgumentError(f"{name} values must be {rule}, got {list(value)!r}")
    return torch.tensor(value, dtype=dtype, device=device).view(channels, 1, 1)


def _mean_std(
    x: torch.Tensor, mean: ChannelValues, std: ChannelValues, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x`` and return ``mean`` and ``std`` as ``(C, 1, 1)`` tensors of ``dtype``."""
    check_float_image(x)
    channels = x.shape[-3]
    m = _channel_values(mean, "mean", channels, positive=False, dtype=dtype, device=x.device)
    s = _channel_values(std, "std", channels, positive=True, dtype=dtype, device=x.device)
    return m, s


def normalize(x: torch.Tensor, mean: ChannelValues, std: ChannelValues) -> torch.Tensor:
    """Normalize each channel with dataset statistics: ``(x - mean[c]) / std[c]``.

    Computed as one fused multiply-add ``x * (1 / std) + (-mean / std)``
    (``torch.addcmul``, a single pass over the data), which differs from the
    literal ``(x - mean) / std`` by a few units in the last place. 16-bit floats
    are computed in float32 and cast back. Differentiable in ``x`` (and in
    ``mean`` and ``std`` when they are tensors that require grad).

    Convention: ``mean`` and ``std`` hold one value per channel ``C`` (the
    third axis from the end), in the scale of ``x`` (``[0, 1]`` for the stats
    JSON's ``mean``/``std``).

    Args:
        x: image tensor ``(*, C, H, W)``, floating point.
        mean: ``C`` finite numbers (sequence or 1-D tensor).
        std: ``C`` finite numbers ``> 0`` (sequence or 1-D tensor).

    Returns:
        The normalized tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not a float image, ``mean`` or ``std`` has
            the wrong length or type, or a ``std`` value is not ``> 0``.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> out = normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        >>> out.shape
        torch.Size([2, 3, 8, 8])
        >>> back = denormalize(out, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        >>> torch.allclose(back, x, atol=1e-6)
        True
    """
    m, s = _mean_std(x, mean, std, compute_dtype(x.dtype))
    work_dtype = m.dtype
    if x.numel() == 0:
        return x.clone()
    scale = s.reciprocal()
    return torch.addcmul(-m * scale, x.to(work_dtype), scale).to(x.dtype)


def normalize_(
    x: torch.Tensor,
    mean: ChannelValues,
    std: ChannelValues,
    *,
    max_value: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """In-place :func:`normalize` of pixels: ``x = (x / max_value - mean[c]) / std[c]``.

    The prepare run's normalization: integer pixels converted to a float
    buffer it owns are scaled to ``[0, 1]`` and normalized in one pass, as
    ``x * ((1 / std) / max_value) + (-mean / std)``; it differs from the
    two-step ``normalize(x / max_value, mean, std)`` by a few units in the
    last place.

    Convention: ``max_value`` is the white level of the pixels (255 for
    8-bit, 65535 for 16-bit), a number or a tensor that broadcasts against
    ``x`` (one value per sample of a batch of mixed bit depths: shape
    ``(B, 1, 1, 1)``); ``None`` means the pixels are already on ``[0, 1]``.

    Args:
        x: float image tensor ``(*, C, H, W)``; modified in place, not
            differentiable (use :func:`normalize` for autograd).
        mean: ``C`` finite numbers (sequence or 1-D tensor), on the ``[0, 1]`` scale.
        std: ``C`` finite numbers ``> 0``.
        max_value: the white level (see above).

    Returns:
        ``x``.

    Raises:
        InvalidArgumentError: as :func:`normalize`.

    Example:
        >>> x = torch.tensor([[[255.0]], [[0.0]], [[51.0]]])
        >>> normalize_(x, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], max_value=255.0).flatten()
        tensor([ 1.0000, -1.0000, -0.6000])
    """
    m, s = _mean_std(x, mean, std, x.dtype)
    if x.numel() == 0:
        return x
    inv = s.reciprocal()
    shift = -m * inv
    factor = inv if max_value is None else inv / max_value
    return x.mul_(factor).add_(shift)


def denormalize(x: torch.Tensor, mean: ChannelValues, std: ChannelValues) -> torch.Tensor:
    """Undo :func:`normalize`: ``x * std[c] + mean[c]`` per channel.

    One fused multiply-add (``torch.addcmul``). 16-bit floats are computed in
    float32 and cast back. Differentiable.

    Args:
        x: normalized image tensor ``(*, C, H, W)``, floating point.
        mean: ``C`` finite numbers (sequence or 1-D tensor).
        std: ``C`` finite numbers ``> 0`` (sequence or 1-D tensor).

    Returns:
        The denormalized tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: as :func:`normalize`.

    Example:
        >>> denormalize(torch.zeros(3, 2, 2), [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])[:, 0, 0]
        tensor([0.5000, 0.4000, 0.3000])
    """
    m, s = _mean_std(x, mean, std, compute_dtype(x.dtype))
    work_dtype = m.dtype
    if x.numel() == 0:
        return x.clone()
    return torch.addcmul(m, x.to(work_dtype), s).to(x.dtype)


def standardize(
    x: torch.Tensor, *, per_channel: bool = False, eps: float | None = None
) -> torch.Tensor:
    r"""Standardize each image on its own: ``(x - mean) / max(std, floor)``.

    The default is TensorFlow's ``tf.image.per_image_standardization``
    exactly: ``mean`` and ``std`` are taken over all ``N = C * H * W`` values
    of each image ``(C, H, W)`` (channels together), ``std`` is the population
    standard deviation (``sqrt(mean((x - mean)^2))``, ``correction=0``), and it
    is floored at ``1 / sqrt(N)``, so that a uniform image becomes 0 and a
    near-uniform one is not blown up: a 224 x 224 RGB image that is constant
    except for one value ``1/255`` higher maps that value to ``(1/255) *
    sqrt(150528) = 1.52`` (the former rule, per channel with a floor of
    ``1e-6``, gave ``sqrt(H W - 1) = 224``).

    Convention: with ``per_channel=True`` the statistics are taken over the
    ``N = H * W`` pixels of each channel instead (each channel gets mean 0 and
    std 1), with the same floor rule ``1 / sqrt(N)`` for that ``N``. ``eps``
    replaces the floor by a fixed value (``eps=1e-6`` with ``per_channel=True``
    is this function's behaviour before the floor followed TensorFlow). Subtracts
    first, then scales (a fused form loses digits when the std is small next to
    the mean). 16-bit floats are computed in float32 and cast back. Differentiable.

    Args:
        x: image tensor ``(*, C, H, W)``, floating point.
        per_channel: statistics per channel (``True``) or over the whole image
            (``False``, TensorFlow's convention).
        eps: a fixed floor of the standard deviation, ``> 0``; ``None`` (default)
            floors at ``1 / sqrt(N)``.

    Returns:
        The standardized tensor, same shape, dtype and device as ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not a float image, ``per_channel`` is not a
            bool, or ``eps`` is not ``None`` or ``> 0``.

    References:
        TensorFlow, ``tf.image.per_image_standardization``
        (``tensorflow/python/ops/image_ops_impl.py``).

    Example:
        >>> out = standardize(torch.rand(2, 3, 16, 16))
        >>> out.shape
        torch.Size([2, 3, 16, 16])
        >>> torch.allclose(out.mean(dim=(-3, -2, -1)), torch.zeros(2), atol=1e-6)
        True
        >>> x = torch.full((3, 224, 224), 0.5)
        >>> x[0, 0, 0] += 1 / 255
        >>> round(standardize(x)[0, 0, 0].item(), 2)
        1.52
        >>> standardize(torch.full((3, 4, 4), 0.25)).abs().max().item()
        0.0
    """
    check_float_image(x)
    if not isinstance(per_channel, bool):
        raise InvalidArgumentError(f"per_channel must be a bool, got {per_channel!r}")
    if eps is not None:
        eps = check_positive(eps, "eps")
    if x.numel() == 0:
        return x.clone()
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    count = x.shape[-2] * x.shape[-1] * (1 if per_channel else x.shape[-3])
    floor = 1.0 / math.sqrt(count) if eps is None else eps
    work = x.to(compute_dtype(x.dtype))
    std, mean = torch.std_mean(work, dim=dims, correction=0, keepdim=True)
    # Subtract first: a fused ``x * scale - mean * scale`` would lose digits to
    # cancellation when the std is small next to the mean.
    centered = work - mean
    scale = std.clamp(min=floor).reciprocal()
    if centered.requires_grad:
        return (centered * scale).to(x.dtype)
    return centered.mul_(scale).to(x.dtype)
