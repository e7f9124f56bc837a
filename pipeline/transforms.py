"""Per-sample transform plan: resize or random-resized-crop, augment, normalize, cast.

The plan is built once from the run config and the dataset statistics and is
applied inside each shard task; every pixel operation is an :mod:`ops` kernel:

1. :meth:`TransformPlan.load`: decode the source straight to the target
   size (:func:`pipeline.decode.decode_for_size`: JPEG draft decoding to no
   less than the target, then the :func:`ops.resize` resampling band by band,
   so a huge image never becomes a full-size array), as integer pixels
   (``uint8``, or ``int32`` holding 16-bit values): bit for bit
   :func:`ops.resize_to` of the decoded image. ``random_resized_crop``, when
   configured, replaces the resize: the :class:`ops.RandomResizedCrop` of the
   step draws the box from the sample's generator and the cut is resampled
   as the class resamples it (:func:`ops.resized_crop`).
2. :meth:`TransformPlan.finish`: a batch of loaded samples goes to float
   ``[0, 1]`` on the configured device, through the configured augmentations
   in order (the :mod:`ops` classes the config's steps build, each drawing
   from its sample's generator), then :func:`ops.normalize_` with the dataset
   statistics, then the cast to the output dtype.

Randomness: sample ``(source i, copy k)`` uses one ``torch.Generator`` seeded
by :func:`sample_seed` ``(seed, i, k)``; draws happen in a fixed order (the
crop box first, then each augmentation in config order), so values never
depend on workers, shard size, batch size or the order of tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

import ops
from pipeline.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pipeline.config import RunConfig, Step
    from pipeline.decode import ImageHistogram

__all__ = ["TransformPlan", "resolve_device", "sample_generator", "sample_seed", "to_tensor"]


def sample_seed(seed: int, source_index: int, copy_index: int) -> int:
    """Return the 63-bit seed of sample ``(source_index, copy_index)`` for run ``seed``.

    A hash (SHA-256 of the three integers) rather than arithmetic, so that
    neighbouring samples and neighbouring run seeds get unrelated streams.

    Example:
        >>> sample_seed(0, 1, 0) == sample_seed(0, 1, 0) != sample_seed(0, 0, 1)
        True
    """
    digest = hashlib.sha256(f"imageprep:{seed}:{source_index}:{copy_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_generator(seed: int, source_index: int, copy_index: int) -> torch.Generator:
    """Return a fresh CPU generator seeded by :func:`sample_seed`."""
    return torch.Generator().manual_seed(sample_seed(seed, source_index, copy_index))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """A decoded ``(H, W, C)`` ``uint8``/``uint16`` array as a ``(C, H, W)`` integer tensor.

    ``uint8`` stays ``uint8`` (a view); ``uint16`` becomes ``int32`` (torch has
    no fast ``uint16`` kernels).

    Raises:
        InvalidArgumentError: not ``(H, W, C)``, or another dtype.

    Example:
        >>> t = to_tensor(np.zeros((4, 5, 3), np.uint16))
        >>> t.shape, t.dtype
        (torch.Size([3, 4, 5]), torch.int32)
    """
    if image.ndim != 3:
        raise InvalidArgumentError(f"image must have shape (H, W, C), got {image.shape}")
    if image.dtype == np.uint8:
        return torch.from_numpy(image).permute(2, 0, 1)
    if image.dtype == np.uint16:
        return torch.from_numpy(image.astype(np.int32)).permute(2, 0, 1)
    raise InvalidArgumentError(f"image must be uint8 or uint16, got {image.dtype}")


@dataclass
class TransformPlan:
    """Everything a shard task needs to turn source files into stored samples.

    Build it with :meth:`from_config`; it is picklable (it is sent to Dask
    workers) and holds no open files.

    Attributes:
        size: ``(H, W)`` of every sample.
        resize: ``shorter-side-crop``, ``stretch`` or ``pad``.
        normalize: ``dataset`` (``(x - mean) / std`` with ``mean``/``std``),
            ``per-image`` (:func:`ops.standardize`: each image on its own, TF's
            ``per_image_standardization``) or ``none``.
        mean: per-channel mean on the ``[0, 1]`` scale.
        std: per-channel std.
        out_dtype: ``float16``, ``float32`` or ``uint8``.
        steps: the config's augment steps, in order.
        seed: the run's seed.
        device: ``runtime.device`` (resolved where the shard runs).
        max_pixels: decompression-bomb limit (``None``: the decoder's default).
    """

    size: tuple[int, int]
    resize: str
    normalize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    out_dtype: str
    steps: tuple[Step, ...] = ()
    seed: int = 0
    device: str = "cpu"
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.normalize, bool):  # the older spelling
            self.normalize = "dataset" if self.normalize else "none"
        if self.normalize not in ("dataset", "per-image", "none"):
            raise InvalidArgumentError(
                f"normalize must be 'dataset', 'per-image' or 'none', got {self.normalize!r}"
            )

    @classmethod
    def from_config(cls, config: RunConfig, stats: dict[str, Any]) -> TransformPlan:
        """Build the plan from a validated config and a stats JSON dict."""
        t = config.transform
        return cls(
            size=(int(t.size[0]), int(t.size[1])),
            resize=t.resize,
            normalize=t.normalize if config.output.dtype != "uint8" else "none",
            mean=tuple(float(v) for v in stats["mean"]),
            std=tuple(float(v) for v in stats["std"]),
            out_dtype=config.output.dtype,
            steps=tuple(t.augment),
            seed=int(config.runtime.seed),
            device=config.runtime.device,
        )

    @classmethod
    def for_stats(cls, config: RunConfig) -> TransformPlan:
        """The plan's resize only, for statistics at ``stats.at: resized``."""
        t = config.transform
        return cls(
            size=(int(t.size[0]), int(t.size[1])),
            resize=t.resize,
            normalize="none",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            out_dtype="float32",
            seed=int(config.runtime.seed),
        )

    # -- the steps as ops objects, built once per plan (and per process)

    @cached_property
    def crop(self) -> ops.RandomResizedCrop | None:
        """The :class:`ops.RandomResizedCrop` of the crop step, if one is configured."""
        for step in self.steps:
            if step.ops_class() is ops.RandomResizedCrop:
                crop: ops.RandomResizedCrop = step.build(self.size)
                return crop
        return None

    @cached_property
    def augmentations(self) -> list[Any]:
        """The :mod:`ops` augmentations of the other steps, in config order."""
        return [
            step.build(self.size)
            for step in self.steps
            if step.ops_class() is not ops.RandomResizedCrop
        ]

    # -- stage 1: per file, in decode threads -------------------------------------------------

    def load(
        self,
        path: str | Path | IO[bytes],
        generator: torch.Generator | None,
        *,
        crop: bool = True,
        draft: bool = True,
    ) -> tuple[torch.Tensor, int]:
        """Decode and resize one file; return ``((C, h, w) integer pixels, bit depth)``.

        Args:
            path: the source file (or its bytes as an open binary file).
            generator: the sample's generator (draws the crop box when
                ``random_resized_crop`` is configured).
            crop: ``False`` uses the configured resize even when a random
                crop is configured (statistics at ``stats.at: resized``).
            draft: allow JPEG draft decoding (a reduced-scale decode when the
                target size allows it); a store segment whose files were
                measured in the same decode is made without it, and its
                resumed shards must be too.

        Raises:
            DecodeError: the file cannot be decoded.
        """
        from pipeline.decode import decode_for_size

        cropper = self.crop if crop else None
        kwargs: dict[str, Any] = {}
        if self.max_pixels is not None:
            kwargs["max_pixels"] = self.max_pixels
        if cropper is None:
            return decode_for_size(path, self.size, mode=self.resize, draft=draft, **kwargs)
        # the box is drawn from the displayed size, as ops.RandomResizedCrop draws it,
        # and the cut is resampled as ops.resized_crop does (a random crop may zoom
        # into a small box: no draft decoding)
        return decode_for_size(
            path, self.size, box=self._box(cropper, generator), draft=False, **kwargs
        )

    def load_measured(
        self, path: str | Path | IO[bytes], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int, ImageHistogram]:
        """:meth:`load` without draft decoding, and the file's full-resolution value histogram.

        One decode gives the sample and the file's exact moments
        (:func:`pipeline.decode.decode_measured`): a run whose statistics are
        known before it writes needs no separate statistics pass.

        Raises:
            DecodeError: the file cannot be decoded.
        """
        from pipeline.decode import decode_measured

        kwargs: dict[str, Any] = {}
        if self.max_pixels is not None:
            kwargs["max_pixels"] = self.max_pixels
        if self.crop is None:
            return decode_measured(path, self.size, mode=self.resize, **kwargs)
        return decode_measured(path, self.size, box=self._box(self.crop, generator), **kwargs)

    @staticmethod
    def _box(
        cropper: Any, generator: torch.Generator | None
    ) -> Callable[[int, int], tuple[int, int, int, int]]:
        if generator is None:
            raise InvalidArgumentError("generator is required with random_resized_crop")
        return lambda h, w: cropper.sample_box(h, w, generator)

    # -- stage 2: per batch, on the device -----------------------------------------------------

    def finish(
        self,
        pixels: Sequence[torch.Tensor],
        bits: Sequence[int],
        generators: Sequence[torch.Generator],
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Augment, normalize and cast a batch of loaded samples.

        Every operation is elementwise or per sample, so a sample's values do
        not depend on the batch it is in. The batch is converted to float32
        once; normalization then runs in place on that buffer
        (:func:`ops.normalize_`), folded into the ``[0, 1]`` scaling when no
        augmentation needs the ``[0, 1]`` image; the cast to the output dtype
        writes straight into ``out`` when it is given.

        Args:
            pixels: the loaded samples, ``(C, H, W)`` each (:meth:`load`).
            bits: each sample's source bit depth (8 or 16).
            generators: each sample's generator (after :meth:`load` drew from it).
            out: optional ``(B, C, H, W)`` array of the output dtype to fill.

        Returns:
            ``(B, C, H, W)`` array of the output dtype (``out`` when given).
        """
        n = len(pixels)
        if out is None:
            out = np.empty((n, 3, *self.size), dtype=self.out_dtype)
        if n == 0:
            return out
        device = torch.device(resolve_device(self.device))
        target = torch.from_numpy(out)
        augmentations = self.augmentations
        eight_bit = all(p.dtype == torch.uint8 for p in pixels)
        if self.out_dtype == "uint8" and not augmentations and eight_bit:
            for i, p in enumerate(pixels):
                target[i].copy_(p)
            return out
        if device.type == "cpu" and eight_bit and self._lut is not None:
            # 8-bit samples, nothing but normalize and cast: a table of the 256 values
            lut = self._lut
            for i, p in enumerate(pixels):
                values = p.numpy()
                for c in range(values.shape[0]):
                    np.take(lut[c], values[c], out=out[i, c])
            return out
        if device.type == "cpu":
            # one pass: each sample converted into the float32 batch
            x = torch.empty((n, *pixels[0].shape), dtype=torch.float32)
            for i, p in enumerate(pixels):
                x[i].copy_(p)
        else:  # move the compact integers, convert on the device
            dtype = torch.uint8 if eight_bit else torch.int32
            x = torch.stack([p.to(dtype) for p in pixels]).to(device).to(torch.float32)
        top = torch.tensor([float(2**b - 1) for b in bits], dtype=torch.float32, device=device)
        top = top.view(-1, 1, 1, 1)
        channels = x.shape[1]
        if self.out_dtype == "uint8":
            x.div_(top)
            for aug in augmentations:
                x = aug(x, generators=generators)
            x = x.clamp_(0.0, 1.0).mul_(255.0).round_()
        elif augmentations or self.normalize == "per-image":
            x.div_(top)
            for aug in augmentations:
                x = aug(x, generators=generators)
            if self.normalize == "dataset":
                ops.normalize_(x, self.mean[:channels], self.std[:channels])
            elif self.normalize == "per-image":
                x = ops.standardize(x)
        elif self.normalize == "dataset":
            ops.normalize_(x, self.mean[:channels], self.std[:channels], max_value=top)
        else:
            x.div_(top)
        target.copy_(x)  # the cast to the output dtype, into the output buffer
        return out

    @cached_property
    def _lut(self) -> np.ndarray | None:
        """``(3, 256)`` output values of the 8-bit values, when :meth:`finish` only normalizes.

        Computed by the same float32 operations :meth:`finish` applies to a
        batch (elementwise, each rounded once, no fused multiply-add), so a
        looked-up value is bit for bit the computed one, at a third of the cost.
        """
        if self.out_dtype == "uint8" or self.augmentations or self.normalize == "per-image":
            return None
        x = torch.arange(256, dtype=torch.float32).expand(1, 3, 1, 256).contiguous()
        top = torch.tensor([255.0]).view(1, 1, 1, 1)
        if self.normalize == "dataset":
            ops.normalize_(x, self.mean[:3], self.std[:3], max_value=top)
        else:
            x.div_(top)
        lut = np.empty((1, 3, 1, 256), dtype=self.out_dtype)
        torch.from_numpy(lut).copy_(x)
        return lut.reshape(3, 256)


def resolve_device(device: str) -> str:
    """Resolve ``runtime.device`` where the work runs: ``auto`` is ``cuda`` when available.

    The plan keeps the configured string and resolves it in each worker, so
    ``auto`` means the GPU of the machine that runs the shard.

    Raises:
        InvalidArgumentError: a CUDA device is asked for and this machine has
            none (or not that many).

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= available:
            raise InvalidArgumentError(
                f"runtime.device: {device!r} asked for, but this machine has "
                f"{available} CUDA device(s) (torch.cuda.is_available() is "
                f"{torch.cuda.is_available()}); use 'auto' or 'cpu'"
            )
    return device
