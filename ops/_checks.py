"""Argument checks shared by every op (kornia's ``core/check.py`` habit).

Each check raises :class:`ops.errors.InvalidArgumentError` naming the
parameter, what was expected and what was got. Messages are formatted only
when a check fails, so the checks cost next to nothing on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ops.errors import InvalidArgumentError

__all__ = [
    "check_choice",
    "check_float_image",
    "check_image",
    "check_int",
    "check_nonnegative",
    "check_pair",
    "check_positive",
    "check_probability",
    "check_size",
    "compute_dtype",
]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)


def check_image(x: Any, name: str = "x", *, min_ndim: int = 3) -> None:
    """Check that ``x`` is a tensor of shape ``(*, C, H, W)``.

    Args:
        x: the value to check.
        name: the parameter name used in the message.
        min_ndim: the least number of dimensions (3 for ``(C, H, W)``).

    Raises:
        InvalidArgumentError: ``x`` is not a tensor or has too few dimensions.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise InvalidArgumentError(
            f"{name} must have shape (*, C, H, W) with at least {min_ndim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def check_float_image(x: Any, name: str = "x", *, min_ndim: int = 3) -> None:
    """Check that ``x`` is a floating-point tensor of shape ``(*, C, H, W)``.

    Raises:
        InvalidArgumentError: ``x`` is not a floating-point image tensor.
    """
    check_image(x, name, min_ndim=min_ndim)
    if not x.is_floating_point():
        raise InvalidArgumentError(f"{name} must have a floating-point dtype, got {x.dtype}")


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking that it is finite and > 0.

    Raises:
        InvalidArgumentError: ``value`` is not a finite number > 0.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number > 0, got {_describe(value)}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_nonnegative(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking that it is finite and >= 0.

    Raises:
        InvalidArgumentError: ``value`` is not a finite number >= 0.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number >= 0, got {_describe(value)}")
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def check_probability(value: Any, name: str = "p") -> float:
    """Return ``value`` as a float after checking that it lies in ``[0, 1]``.

    Raises:
        InvalidArgumentError: ``value`` is not a number in ``[0, 1]``.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number in [0, 1], got {_describe(value)}")
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_pair(value: Any, name: str) -> tuple[float, float]:
    """Return ``value`` as a pair of floats; a single number is repeated.

    Raises:
        InvalidArgumentError: ``value`` is neither a number nor a pair of numbers.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return float(value[0]), float(value[1])
    raise InvalidArgumentError(
        f"{name} must be a number or a pair of numbers, got {_describe(value)}"
    )


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int after checking that it is an integer ``>= minimum``.

    Raises:
        InvalidArgumentError: ``value`` is not an integer or is below ``minimum``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_size(value: Any, name: str = "size") -> tuple[int, int]:
    """Return ``value`` as an ``(h, w)`` pair of ints >= 1; a single int is repeated.

    Raises:
        InvalidArgumentError: ``value`` is not a positive int or a pair of them.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise InvalidArgumentError(
        f"{name} must be an int >= 1 or a pair (h, w) of ints >= 1, got {_describe(value)}"
    )


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Return ``value`` after checking that it is one of ``choices``.

    Raises:
        InvalidArgumentError: ``value`` is not one of ``choices``.
    """
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    raise InvalidArgumentError(f"{name} must be one of {list(choices)}, got {_describe(value)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype an op computes in: float32 for 16-bit floats, else ``dtype``.

    16-bit inputs are upcast for the arithmetic and cast back on return, so
    CPU and CUDA give the same result within a float16 ulp.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype
