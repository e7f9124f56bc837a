"""What a reader does to stored samples: convert, augment per epoch, normalize, on a device.

:class:`ReadTransform` turns a batch of stored samples (the store's dtype)
into the floating tensors a model sees. It is the read-time counterpart of
:meth:`pipeline.transforms.TransformPlan.finish` and runs the same kernels:

1. to the ``[0, 1]`` pixel scale when augmenting: ``x / 255`` for uint8
   stores, :func:`ops.denormalize` with the store's stats for normalized
   float stores;
2. the augmentation steps, in order: the :mod:`ops` classes that the run
   config's ``transform.augment`` steps build (the registry
   :data:`pipeline.config.STEPS`), each drawing from its sample's generator;
3. :func:`ops.normalize_` with the store's stats when the output is
   normalized (the run's own normalization, so a uint8 store normalized at
   read time equals the float store the run writes, before its cast);
4. the cast to the requested dtype.

Output scale: ``normalize=None`` keeps the store's scale (a normalized float
store stays normalized; uint8 and un-normalized float stores give ``[0, 1]``
pixels); ``normalize=True`` always returns ``(x - mean) / std`` with the
stored stats; ``normalize=False`` always returns ``[0, 1]`` pixels (what
``denormalize=True`` asks for).

Randomness: the sample in store row ``r`` at epoch ``e`` draws from one CPU
``torch.Generator`` seeded by :func:`read_seed` ``(seed, e, r)``, so its
draws depend on neither the batch it is in nor the worker that reads it. On
the CPU the augmentation runs with one torch thread, as the run's does (a
reduction split over threads rounds differently), so its bytes do not depend
on them either; on a GPU they equal the CPU's within float32 rounding.
:func:`read_seed` is the run's :func:`~pipeline.transforms.sample_seed` with
the row in place of the source index and the epoch in place of the copy
index: on a store written with ``copies: 1`` (row ``r`` is source ``r``),
epoch ``k`` draws exactly what copy ``k`` draws at write time, and gives the
same bytes (tested).

``random_resized_crop`` is not available at read time: it cuts the crop out
of the full source image, which the store no longer holds.

Example:
    >>> t = ReadTransform({"stats": {"mean": [0.5], "std": [0.25]}}, "uint8", 1,
    ...                   normalize=True, augment=[{"op": "invert", "p": 1.0}])
    >>> x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)       # (B, C, H, W)
    >>> t(x, rows=[0], epoch=0)                                   # 1 - x/255, normalized
    tensor([[[[ 2., -2.]]]])
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

import ops
from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.execution import torch_threads
from pipeline.transforms import sample_seed

__all__ = ["ReadTransform", "parse_augment", "read_generators", "read_seed", "resolve_read_device"]


def read_seed(seed: int, epoch: int, row: int) -> int:
    """The 63-bit seed of store row ``row`` at ``epoch`` (read-time augmentation).

    ``sample_seed(seed, row, epoch)``: see the module docstring.

    Example:
        >>> read_seed(0, 1, 5) == read_seed(0, 1, 5) != read_seed(0, 2, 5)
        True
    """
    return sample_seed(seed, row, epoch)


def read_generators(
    seed: int, epoch: int, rows: Sequence[int] | np.ndarray
) -> list[torch.Generator]:
    """One fresh CPU generator per row, seeded by :func:`read_seed`."""
    return [torch.Generator().manual_seed(read_seed(seed, epoch, int(r))) for r in rows]


def parse_augment(augment: Any, size: tuple[int, int]) -> list[Any]:
    """Validate ``augment`` as the run config's ``transform.augment`` and build its ops objects.

    Args:
        augment: a sequence of steps, each a dict (``{"op": "invert", "p": 0.5}``)
            or a step model of :data:`pipeline.config.STEPS`.
        size: ``(H, W)`` of the samples.

    Returns:
        The :mod:`ops` batch augmentations, in order.

    Raises:
        InvalidArgumentError: not a sequence, an invalid step (one line per
            problem, each naming ``augment[i].key``), or ``random_resized_crop``.
    """
    from pipeline.config import TransformConfig
    from pipeline.config.messages import problems

    if isinstance(augment, str | bytes | Mapping) or not isinstance(augment, Sequence):
        raise InvalidArgumentError(
            f"augment must be a sequence of steps (dicts as in transform.augment), "
            f"got {type(augment).__name__}"
        )
    try:
        steps = TransformConfig.model_validate({"augment": list(augment)}).augment
    except ValidationError as exc:
        lines = problems(exc)
        raise InvalidArgumentError(
            "augment has invalid steps:\n" + "\n".join(f"  {line}" for line in lines)
        ) from None
    for i, step in enumerate(steps):
        if step.augmentation is ops.RandomResizedCrop:
            raise InvalidArgumentError(
                f"augment[{i}]: random_resized_crop is not available at read time: it cuts "
                "the crop out of the full source image, and the store holds samples already "
                f"resized to {size[0]}x{size[1]}; put it in the run config's transform.augment"
            )
    return [step.build(size) for step in steps]


def resolve_read_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``"auto"`` is CUDA when available.

    Raises:
        InvalidArgumentError: not a device, or a CUDA device this machine lacks.

    Example:
        >>> resolve_read_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None
    if dev.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= available:
            raise InvalidArgumentError(
                f"device {str(dev)!r} asked for, but this machine has {available} CUDA "
                "device(s); use 'auto' or 'cpu'"
            )
    elif dev.type != "cpu":
        raise InvalidArgumentError(f"device must be a CPU or CUDA device, got {str(dev)!r}")
    return dev


def _stats(meta: Mapping[str, Any], channels: int) -> tuple[list[float], list[float]]:
    stats = meta.get("stats") or {}
    mean, std = stats.get("mean"), stats.get("std")
    if not (isinstance(mean, list) and isinstance(std, list)):
        raise StoreError("the store's stats have no mean/std (needed to (de)normalize)")
    if len(mean) != channels or len(std) != channels:
        raise StoreError(
            f"stats mean/std must have {channels} values (one per channel), "
            f"got {len(mean)} and {len(std)}"
        )
    return [float(v) for v in mean], [float(v) for v in std]


def _into(x: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast to ``dtype``, in ``out`` when given."""
    if out is None:
        return x.to(dtype)
    if x.data_ptr() != out.data_ptr():
        out.copy_(x)
    return out


class ReadTransform:
    """Stored samples to model input (see the module docstring).

    Args:
        meta: the store's ``imageprep`` attribute (``config``, ``stats``).
        store_dtype: ``"uint8"``, ``"float16"`` or ``"float32"``.
        channels: ``C`` of the samples.
        normalize: output scale: ``None`` as stored, ``True`` normalized,
            ``False`` ``[0, 1]`` pixels.
        dtype: floating dtype of the output.
        augment: augmentation steps as in ``transform.augment``.
        seed: the augmentation seed.
        device: where the conversion and the augmentation run.
        size: ``(H, W)`` of the samples (for building the steps).

    Raises:
        InvalidArgumentError: a bad ``dtype``, ``augment`` or ``device``.
        StoreError: the output needs the stats and the store has none.
    """

    def __init__(
        self,
        meta: Mapping[str, Any],
        store_dtype: str,
        channels: int,
        *,
        normalize: bool | None = None,
        dtype: torch.dtype = torch.float32,
        augment: Sequence[Any] = (),
        seed: int = 0,
        device: str | torch.device = "cpu",
        size: tuple[int, int] = (1, 1),
    ) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype must be a floating torch dtype, got {dtype!r}")
        if normalize is not None and not isinstance(normalize, bool):
            raise InvalidArgumentError(f"normalize must be None, True or False, got {normalize!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InvalidArgumentError(f"seed must be an integer >= 0, got {seed!r}")
        self.dtype = dtype
        self.seed = seed
        self.device = resolve_read_device(device)
        self.uint8 = store_dtype == "uint8"
        config = meta.get("config") or {}
        #: the stored float samples are (x - mean) / std
        # true (an older spelling) or "dataset": (x - mean) / std with the store's stats;
        # "per-image" and "none" stores have no dataset statistics to undo
        mode = (config.get("transform") or {}).get("normalize", False)
        self.stored_normalized = bool(not self.uint8 and mode in (True, "dataset"))
        self.normalized_out = self.stored_normalized if normalize is None else normalize
        self.augmentations = parse_augment(augment, size)
        self.work = torch.promote_types(dtype, torch.float32)
        needs_stats = self.normalized_out or (self.stored_normalized and self._to_pixels)
        #: the store's mean and std, when the output needs them
        self.mean: list[float] = []
        self.std: list[float] = []
        if needs_stats:
            self.mean, self.std = _stats(meta, channels)

    @property
    def _to_pixels(self) -> bool:
        """Whether the stored samples pass through the [0, 1] scale."""
        return bool(self.augmentations) or not self.normalized_out

    @property
    def identity(self) -> bool:
        """True when the output is the stored float values, only cast."""
        return (
            not self.uint8
            and not self.augmentations
            and self.normalized_out == self.stored_normalized
        )

    def __call__(
        self,
        stored: torch.Tensor,
        *,
        rows: Sequence[int] | np.ndarray,
        epoch: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convert (and augment) a batch ``(B, C, H, W)`` of stored samples.

        Args:
            stored: the stored values (store dtype), any device (moved to this
                transform's device first).
            rows: the store row of each sample (seeds the augmentation).
            epoch: the epoch (seeds the augmentation).
            out: a tensor of the output's shape, dtype and device to write
                into (e.g. one in shared memory), instead of a new one.

        Returns:
            ``(B, C, H, W)`` of ``dtype`` on ``device`` (``out`` when given).

        Raises:
            InvalidArgumentError: ``out`` does not fit.
        """
        x = stored.to(self.device, non_blocking=True)
        if out is not None and (
            out.shape != x.shape or out.dtype != self.dtype or out.device != self.device
        ):
            raise InvalidArgumentError(
                f"out must be a {tuple(x.shape)} {self.dtype} tensor on {self.device}, got "
                f"{tuple(out.shape)} {out.dtype} on {out.device}"
            )
        if self.identity:
            return out.copy_(x) if out is not None else x.to(self.dtype)
        if out is not None and out.dtype == self.work:
            work = out.copy_(x)  # convert straight into the caller's buffer
        else:
            work = x.to(self.work)  # a buffer this function owns and may change in place
            if work.data_ptr() == x.data_ptr():
                work = work.clone()
        if not self.augmentations:
            if self.uint8 and self.normalized_out:
                ops.normalize_(work, self.mean, self.std, max_value=255.0)
            elif self.uint8:
                work.div_(255.0)
            elif self.normalized_out:  # stored pixels -> normalized
                ops.normalize_(work, self.mean, self.std)
            else:  # stored normalized -> pixels
                work = ops.denormalize(work, self.mean, self.std)
            return _into(work, out, self.dtype)
        if self.uint8:
            work.div_(255.0)
        elif self.stored_normalized:
            work = ops.denormalize(work, self.mean, self.std)
        generators = read_generators(self.seed, epoch, rows)
        # one torch thread on the CPU, as the run: a reduction split over threads rounds
        # differently, and a sample's bytes must not depend on where it is augmented
        with torch_threads(1) if self.device.type == "cpu" else contextlib.nullcontext():
            for aug in self.augmentations:
                work = aug(work, generators=generators)
        if self.normalized_out:
            ops.normalize_(work, self.mean, self.std)
        return _into(work, out, self.dtype)

    def __repr__(self) -> str:
        return (
            f"ReadTransform(store={'uint8' if self.uint8 else 'float'}, "
            f"normalized_out={self.normalized_out}, augment={self.augmentations}, "
            f"seed={self.seed}, device={self.device}, dtype={self.dtype})"
        )
