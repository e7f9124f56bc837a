"""imageprep's kernel layer: pure PyTorch ops on ``(*, C, H, W)`` float tensors.

No I/O, no Dask, no Prefect, no config objects. Every op keeps dtype and
device, never modifies its input, and takes keyword-only options after the
data. Randomness comes only from an explicit ``torch.Generator``.
"""

from ops.affinity import local_affinity
from ops.filters import difference_of_gaussians, gaussian_blur, gaussian_kernel1d
from ops.flow import Flow, lucas_kanade
from ops.geometry import crop_resize, upsample2x

__all__ = [
    "Flow",
    "crop_resize",
    "difference_of_gaussians",
    "gaussian_blur",
    "gaussian_kernel1d",
    "local_affinity",
    "lucas_kanade",
    "upsample2x",
]
