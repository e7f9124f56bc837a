"""Border handling shared by the filters: half-sample symmetric reflection."""

from __future__ import annotations

import functools

import torch

__all__ = ["pad_symmetric", "reflect_indices"]


@functools.lru_cache(maxsize=256)
def _reflect_indices_list(size: int, before: int, after: int) -> tuple[int, ...]:
    period = 2 * size
    out = []
    for i in range(-before, size + after):
        j = i % period
        out.append(j if j < size else period - 1 - j)
    return tuple(out)


def reflect_indices(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices that pad an axis of length ``size`` by half-sample symmetric reflection.

    Convention: ``d c b a | a b c d | d c b a`` (SciPy's ``mode="reflect"``,
    NumPy's ``"symmetric"``), repeated as often as the padding needs, so a pad
    wider than the axis is still defined.

    Example:
        >>> reflect_indices(3, 2, 4, torch.device("cpu")).tolist()
        [1, 0, 0, 1, 2, 2, 1, 0, 0]
    """
    return torch.tensor(_reflect_indices_list(size, before, after), device=device)


def pad_symmetric(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad the last two axes of ``x`` by ``pad_h`` rows and ``pad_w`` columns on each side.

    Args:
        x: tensor of shape ``(*, H, W)``.
        pad_h: rows added above and below.
        pad_w: columns added left and right.

    Returns:
        Tensor of shape ``(*, H + 2 pad_h, W + 2 pad_w)``.
    """
    h, w = x.shape[-2:]
    if pad_w:
        x = x.index_select(-1, reflect_indices(w, pad_w, pad_w, x.device))
    if pad_h:
        x = x.index_select(-2, reflect_indices(h, pad_h, pad_h, x.device))
    return x
