"""imageprep's kernel layer: pure PyTorch ops on ``(*, C, H, W)`` float tensors.

No I/O, no Dask, no Prefect, no config objects. Every op keeps dtype and
device, never modifies its input, and takes keyword-only options after the
data. Randomness comes only from an explicit ``torch.Generator``.

The public names load lazily (PEP 562): importing :mod:`ops.errors` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ops.affinity import local_affinity
    from ops.augment import (
        Compose,
        DoGNoise,
        RandomGaussianBlur,
        RandomInvert,
        RandomResizedCrop,
        ShadowsHighlights,
    )
    from ops.color import (
        adjust_shadows_highlights,
        default_tone_sigma,
        invert,
        luminance,
        shadows_highlights,
    )
    from ops.filters import difference_of_gaussians, gaussian_blur, gaussian_kernel1d
    from ops.flow import Flow, lucas_kanade
    from ops.geometry import crop_resize, resize, resize_to, resized_crop, resized_shape, upsample2x
    from ops.noise import dog_band_sigmas, dog_noise, dog_peak_frequency, dog_transfer
    from ops.normalization import denormalize, normalize, normalize_, standardize

__all__ = [
    "Compose",
    "DoGNoise",
    "Flow",
    "RandomGaussianBlur",
    "RandomInvert",
    "RandomResizedCrop",
    "ShadowsHighlights",
    "adjust_shadows_highlights",
    "crop_resize",
    "default_tone_sigma",
    "denormalize",
    "difference_of_gaussians",
    "dog_band_sigmas",
    "dog_noise",
    "dog_peak_frequency",
    "dog_transfer",
    "gaussian_blur",
    "gaussian_kernel1d",
    "invert",
    "local_affinity",
    "lucas_kanade",
    "luminance",
    "normalize",
    "normalize_",
    "resize",
    "resize_to",
    "resized_crop",
    "resized_shape",
    "shadows_highlights",
    "standardize",
    "upsample2x",
]

#: Where each public name lives; the submodules (and torch) load on first use,
#: so that ``import ops.errors`` (which every imageprep error builds on) is cheap.
_HOMES: dict[str, str] = {
    "local_affinity": "ops.affinity",
    "Compose": "ops.augment",
    "DoGNoise": "ops.augment",
    "RandomGaussianBlur": "ops.augment",
    "RandomInvert": "ops.augment",
    "RandomResizedCrop": "ops.augment",
    "ShadowsHighlights": "ops.augment",
    "adjust_shadows_highlights": "ops.color",
    "default_tone_sigma": "ops.color",
    "invert": "ops.color",
    "luminance": "ops.color",
    "shadows_highlights": "ops.color",
    "difference_of_gaussians": "ops.filters",
    "gaussian_blur": "ops.filters",
    "gaussian_kernel1d": "ops.filters",
    "Flow": "ops.flow",
    "lucas_kanade": "ops.flow",
    "crop_resize": "ops.geometry",
    "resize": "ops.geometry",
    "resize_to": "ops.geometry",
    "resized_crop": "ops.geometry",
    "resized_shape": "ops.geometry",
    "upsample2x": "ops.geometry",
    "dog_band_sigmas": "ops.noise",
    "dog_noise": "ops.noise",
    "dog_peak_frequency": "ops.noise",
    "dog_transfer": "ops.noise",
    "denormalize": "ops.normalization",
    "normalize": "ops.normalization",
    "normalize_": "ops.normalization",
    "standardize": "ops.normalization",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
