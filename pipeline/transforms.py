"""Per-sample transform plan: resize or random-resized-crop, augment, normalize, cast.

The plan is built once from the run config and the dataset statistics and is
applied inside each shard task:

1. ``load``: decode the source (JPEG draft decoding when the target is much
   smaller than the source), then resize to ``transform.size`` with the
   configured mode, as ``uint8``/``uint16`` pixels. ``random_resized_crop``,
   when configured, replaces the resize: its box is drawn by
   :class:`ops.RandomResizedCrop` from the sample's generator, and the pixels
   come from the same antialiased resampling as the other modes.
2. ``finish``: a batch of loaded samples goes to float ``[0, 1]`` on the
   configured device, through the configured augmentations in order (each
   drawing from its sample's generator), then ``(x - mean) / std`` with the
   dataset statistics, then the cast to the output dtype.

Randomness: sample ``(source i, copy k)`` uses one ``torch.Generator`` seeded
by :func:`sample_seed` ``(seed, i, k)``; draws happen in a fixed order (the
crop box first, then each augmentation in config order), so values never
depend on workers, shard size, batch size or the order of tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pipeline.config import RunConfig

__all__ = [
    "TransformPlan",
    "draft_size",
    "resize_image",
    "resized_shape",
    "sample_generator",
    "sample_seed",
]

_RESIZE_MODES = ("shorter-side-crop", "stretch", "pad")


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


def resized_shape(height: int, width: int, size: tuple[int, int], mode: str) -> tuple[int, int]:
    """Return the ``(h, w)`` an image is resized to before its crop or pad.

    Convention: ``size`` is the target ``(H, W)``.

    - ``shorter-side-crop``: scale by ``max(H / height, W / width)`` (the image
      covers the target), rounded; the centre is then cropped to ``(H, W)``
      (torchvision's ``Resize`` + ``CenterCrop`` when ``H == W``).
    - ``stretch``: exactly ``(H, W)``; the aspect ratio changes.
    - ``pad``: scale by ``min(H / height, W / width)`` (the image fits inside
      the target), rounded; the rest is padded with zeros (black).

    Example:
        >>> resized_shape(375, 500, (224, 224), "shorter-side-crop")
        (224, 299)
        >>> resized_shape(375, 500, (224, 224), "pad")
        (168, 224)
    """
    th, tw = size
    if mode == "stretch":
        return th, tw
    if mode == "shorter-side-crop":
        scale = max(th / height, tw / width)
        return max(th, round(height * scale)), max(tw, round(width * scale))
    if mode == "pad":
        scale = min(th / height, tw / width)
        return min(th, max(1, round(height * scale))), min(tw, max(1, round(width * scale)))
    raise InvalidArgumentError(f"resize must be one of {_RESIZE_MODES}, got {mode!r}")


def _interpolate(chw: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of one ``(C, H, W)`` integer image, keeping integers.

    ``uint8`` goes through torch's vectorized uint8 kernel (rounded); 16-bit
    values (held in int32) are resized in float64 and rounded back.
    """
    if tuple(chw.shape[-2:]) == shape:
        return chw
    x = chw[None]
    if x.dtype == torch.uint8:
        # torch's vectorized uint8 path wants channels-last memory.
        x = x.contiguous(memory_format=torch.channels_last)
        out = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
    else:
        out = F.interpolate(
            x.to(torch.float64), size=shape, mode="bilinear", antialias=True, align_corners=False
        )
        out = out.round_().clamp_(0, 65535).to(torch.int32)
    return out[0]


def resize_image(
    image: np.ndarray,
    size: tuple[int, int],
    *,
    mode: str = "shorter-side-crop",
    box: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Resize a decoded ``(H, W, C)`` image to a ``(C, h, w)`` tensor of ``size``.

    Resampling is antialiased bilinear (``F.interpolate(antialias=True)``),
    the same for every mode, and the result keeps integer pixel values: 8-bit
    images stay ``uint8`` (torch's vectorized path), 16-bit images come back
    as ``int32`` holding 0..65535 (torch has no fast ``uint16`` kernels).
    Integer results keep the ``exact`` statistics exact after the resize.

    Args:
        image: decoded pixels ``(H, W, C)``, ``uint8`` or ``uint16``.
        size: target ``(h, w)``.
        mode: ``shorter-side-crop``, ``stretch`` or ``pad`` (see
            :func:`resized_shape`); ignored when ``box`` is given.
        box: optional integer crop ``(x1, y1, x2, y2)`` in pixel-edge
            coordinates, resized to ``size`` directly (random resized crop).

    Returns:
        Tensor ``(C, h, w)``, ``uint8`` for 8-bit input, ``int32`` for 16-bit.

    Example:
        >>> img = np.zeros((375, 500, 3), dtype=np.uint8)
        >>> resize_image(img, (224, 224)).shape
        torch.Size([3, 224, 224])
    """
    if image.ndim != 3:
        raise InvalidArgumentError(f"image must have shape (H, W, C), got {image.shape}")
    if image.dtype == np.uint8:
        chw = torch.from_numpy(image).permute(2, 0, 1)
    elif image.dtype == np.uint16:
        chw = torch.from_numpy(image.astype(np.int32)).permute(2, 0, 1)
    else:
        raise InvalidArgumentError(f"image must be uint8 or uint16, got {image.dtype}")
    th, tw = size
    if box is not None:
        x1, y1, x2, y2 = box
        return _interpolate(chw[:, y1:y2, x1:x2], (th, tw)).contiguous()
    h, w = chw.shape[-2:]
    rh, rw = resized_shape(h, w, size, mode)
    resized = _interpolate(chw, (rh, rw))
    if mode == "pad":
        out = torch.zeros((chw.shape[0], th, tw), dtype=resized.dtype)
        top, left = (th - rh) // 2, (tw - rw) // 2
        out[:, top : top + rh, left : left + rw] = resized
        return out
    top, left = (rh - th) // 2, (rw - tw) // 2
    return resized[:, top : top + th, left : left + tw].contiguous()


def draft_size(size: tuple[int, int], mode: str) -> tuple[int, int] | None:
    """Return the least ``(h, w)`` a JPEG may be draft-decoded to for this resize.

    Draft decoding (DCT scaling by 1/2, 1/4 or 1/8) is only used when the
    scaled image still covers the target in both dimensions, so the resize
    that follows is always a downscale and the quality loss is nil.
    """
    if mode in _RESIZE_MODES:
        return size
    return None


@dataclass
class TransformPlan:
    """Everything a shard task needs to turn source files into stored samples.

    Build it with :meth:`from_config`; it is picklable (it is sent to Dask
    workers) and holds no open files.
    """

    size: tuple[int, int]
    resize: str
    normalize: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    out_dtype: str
    augment: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    max_pixels: int | None = None

    @classmethod
    def from_config(cls, config: RunConfig, stats: dict[str, Any]) -> TransformPlan:
        """Build the plan from a validated config and a stats JSON dict."""
        t = config.transform
        steps = [step.model_dump() for step in t.augment]
        return cls(
            size=(int(t.size[0]), int(t.size[1])),
            resize=t.resize,
            normalize=bool(t.normalize) and config.output.dtype != "uint8",
            mean=tuple(float(v) for v in stats["mean"]),
            std=tuple(float(v) for v in stats["std"]),
            out_dtype=config.output.dtype,
            augment=steps,
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
            normalize=False,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            out_dtype="float32",
            augment=[],
            seed=int(config.runtime.seed),
        )

    # -- stage 1: per file, in decode threads -------------------------------------------------

    @property
    def crop_step(self) -> dict[str, Any] | None:
        """The ``random_resized_crop`` step, if configured (it replaces the resize)."""
        for step in self.augment:
            if step["op"] == "random_resized_crop":
                return step
        return None

    @cached_property
    def crop_op(self) -> Any:
        """The :class:`ops.RandomResizedCrop` of the crop step (built once per plan)."""
        step = self.crop_step
        if step is None:
            raise InvalidArgumentError("this plan has no random_resized_crop step")
        return _crop_op(self.size, step)

    @cached_property
    def augmentations(self) -> list[Any]:
        """The ops augmentation objects of the steps, crop excluded (built once per plan)."""
        return _augmentations(self.augment)

    def load(
        self, path: str | Path, generator: torch.Generator | None, *, crop: bool = True
    ) -> tuple[torch.Tensor, int]:
        """Decode and resize one file; return ``((C, h, w) integer pixels, bit depth)``.

        Args:
            path: the source file.
            generator: the sample's generator (draws the crop box when
                ``random_resized_crop`` is configured).
            crop: ``False`` uses the configured resize even when a random
                crop is configured (statistics at ``stats.at: resized``).

        Raises:
            DecodeError: the file cannot be decoded.
        """
        from pipeline.decode import decode

        crop_step = self.crop_step if crop else None
        kwargs: dict[str, Any] = {}
        if self.max_pixels is not None:
            kwargs["max_pixels"] = self.max_pixels
        draft = None if crop_step is not None else draft_size(self.size, self.resize)
        image = decode(path, draft=draft, **kwargs)
        bits = 16 if image.dtype == np.uint16 else 8
        if crop_step is not None:
            if generator is None:
                raise InvalidArgumentError("generator is required with random_resized_crop")
            box = self.crop_op.sample_box(image.shape[0], image.shape[1], generator)
            ibox = tuple(int(round(float(v))) for v in box)
            return resize_image(image, self.size, box=ibox), bits  # type: ignore[arg-type]
        return resize_image(image, self.size, mode=self.resize), bits

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
        once; normalization then runs in place on that buffer as
        ``x * (1 / std) + (-mean / std)``, folded into the ``[0, 1]`` scaling
        when no augmentation needs the ``[0, 1]`` image; the cast to the
        output dtype writes straight into ``out`` when it is given.

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
        else:
            mean = torch.tensor(self.mean[:channels], dtype=torch.float32, device=device)
            inv_std = 1.0 / torch.tensor(self.std[:channels], dtype=torch.float32, device=device)
            scale, shift = inv_std.view(1, -1, 1, 1), (-mean * inv_std).view(1, -1, 1, 1)
            if augmentations:
                x.div_(top)
                for aug in augmentations:
                    x = aug(x, generators=generators)
                if self.normalize:
                    x.mul_(scale).add_(shift)
            elif self.normalize:
                # (v / top - mean) / std == v * (1 / (top * std)) + (-mean / std)
                x.mul_(scale / top).add_(shift)
            else:
                x.div_(top)
        target.copy_(x)  # the cast to the output dtype, into the output buffer
        return out


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


def _crop_op(size: tuple[int, int], step: dict[str, Any]) -> Any:
    from ops import RandomResizedCrop

    return RandomResizedCrop(size, scale=tuple(step["scale"]), ratio=tuple(step["ratio"]))


def _augmentations(steps: Sequence[dict[str, Any]]) -> list[Any]:
    """Instantiate the ops augmentation classes of the configured steps (crop excluded)."""
    import ops

    out: list[Any] = []
    for step in steps:
        op = step["op"]
        p = float(step.get("p", 1.0))
        if op == "invert":
            out.append(ops.RandomInvert(p=p))
        elif op == "dog_noise":
            out.append(ops.DoGNoise(band=tuple(step["band"]), rms=step["rms"], p=p))
        elif op == "shadows_highlights":
            out.append(
                ops.ShadowsHighlights(shadows=step["shadows"], highlights=step["highlights"], p=p)
            )
        elif op == "gaussian_blur":
            out.append(ops.RandomGaussianBlur(sigma=step["sigma"], p=p))
        elif op == "random_resized_crop":
            continue
        else:  # pragma: no cover - the config rejects unknown ops
            raise InvalidArgumentError(f"unknown augmentation op {op!r}")
    return out
