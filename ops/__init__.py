"""imageprep's kernel layer: pure PyTorch ops on ``(*, C, H, W)`` float tensors.

No I/O, no Dask, no Prefect, no config objects. Every op keeps dtype and
device, never modifies its input, and takes keyword-only options after the
data. Randomness comes only from an explicit ``torch.Generator``.
"""

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
from ops.geometry import crop_resize, upsample2x
from ops.noise import dog_band_sigmas, dog_noise, dog_peak_frequency, dog_transfer
from ops.normalize import denormalize, normalize, standardize

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
    "shadows_highlights",
    "standardize",
    "upsample2x",
]
