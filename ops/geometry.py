"""Geometry: resizing, crop-and-resize through affine sampling grids, 2x upsampling.

:func:`resize`, :func:`resize_to` and :func:`resized_crop` are the resampling
the prepare run applies to decoded pixels (antialiased bilinear, integer
pixels kept integer); :func:`crop_resize` samples arbitrary (sub-pixel,
differentiable) boxes.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ops._checks import (
    check_choice,
    check_float_image,
    check_size,
    compute_dtype,
)
from ops.errors import InvalidArgumentError

__all__ = ["crop_resize", "resize", "resize_to", "resized_crop", "resized_shape", "upsample2x"]

_PADDING_MODES = ("border", "zeros", "reflection")
RESIZE_MODES = ("shorter-side-crop", "stretch", "pad")
_INTEGER_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_resizable(x: object, name: str = "image") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 3:
        raise InvalidArgumentError(f"{name} must have shape (*, C, H, W), got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in _INTEGER_DTYPES):
        raise InvalidArgumentError(
            f"{name} must be floating point or uint8/int16/int32/int64, got {x.dtype}"
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise InvalidArgumentError(f"{name} must have H >= 1 and W >= 1, got {tuple(x.shape)}")
    return x


def resize(
    image: torch.Tensor,
    size: int | tuple[int, int],
    *,
    antialias: bool = True,
    contiguous: bool = True,
) -> torch.Tensor:
    """Resize images to ``size`` with (antialiased) bilinear interpolation, keeping the dtype.

    The resampling is ``F.interpolate(mode="bilinear", align_corners=False)``:
    pixel-edge coordinates, output pixel ``j`` centred on input
    ``x = (j + 0.5) W / w - 0.5``. With ``antialias`` (default), shrinking
    widens the triangle filter by the scale factor, as Pillow's ``BILINEAR``
    and torchvision's ``resize(antialias=True)`` do, so fine detail does not
    alias; enlarging is plain bilinear.

    Per dtype:

    - floating point: computed in the dtype (16-bit floats in float32, cast back);
    - ``uint8``: torch's vectorized uint8 kernel (channels-last), rounded to
      nearest: integer pixels stay integers, so exact integer statistics can
      be taken after the resize;
    - ``int16``/``int32``/``int64`` (e.g. 16-bit pixels held in int32):
      computed in float64, rounded to nearest, clamped to the input's range
      of values of the dtype, cast back.

    Args:
        image: ``(*, C, H, W)``, floating point or integer, ``H, W >= 1``.
        size: output ``(h, w)`` or one int for a square.
        antialias: widen the filter when shrinking.
        contiguous: return a contiguous tensor (default); ``False`` keeps the
            memory format the kernel produced (channels-last for ``uint8``),
            which saves a copy when the caller stores it elsewhere anyway.

    Returns:
        ``(*, C, h, w)``, dtype and device of ``image``; ``image`` itself when
        it already has that size.

    Raises:
        InvalidArgumentError: bad ``image``, ``size`` or ``antialias``.

    Example:
        >>> x = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
        >>> resize(x, (224, 299)).dtype, resize(x, (224, 299)).shape
        (torch.uint8, torch.Size([3, 224, 299]))
    """
    x = _check_resizable(image)
    h, w = check_size(size)
    if not isinstance(antialias, bool):
        raise InvalidArgumentError(f"antialias must be a bool, got {antialias!r}")
    if not isinstance(contiguous, bool):
        raise InvalidArgumentError(f"contiguous must be a bool, got {contiguous!r}")
    if tuple(x.shape[-2:]) == (h, w):
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    if flat.shape[0] == 0:
        return x.new_empty((*lead, x.shape[-3], h, w))
    if x.dtype == torch.uint8:
        # torch's vectorized uint8 path wants channels-last memory
        flat = flat.contiguous(memory_format=torch.channels_last)
        out = F.interpolate(
            flat, size=(h, w), mode="bilinear", antialias=antialias, align_corners=False
        )
    elif x.is_floating_point():
        work = flat.to(compute_dtype(x.dtype))
        out = F.interpolate(
            work, size=(h, w), mode="bilinear", antialias=antialias, align_corners=False
        ).to(x.dtype)
    else:
        out = F.interpolate(
            flat.to(torch.float64),
            size=(h, w),
            mode="bilinear",
            antialias=antialias,
            align_corners=False,
        )
        info = torch.iinfo(x.dtype)
        out = out.round_().clamp_(info.min, info.max).to(x.dtype)
    out = out.reshape(*lead, x.shape[-3], h, w)
    return out.contiguous() if contiguous else out


def resized_shape(height: int, width: int, size: tuple[int, int], mode: str) -> tuple[int, int]:
    """Return the ``(h, w)`` an image is resized to before its centre crop or pad.

    Convention: ``size`` is the target ``(H, W)``.

    - ``shorter-side-crop``: scale by ``max(H / height, W / width)`` (the image
      covers the target), rounded; the centre is then cropped to ``(H, W)``
      (torchvision's ``Resize`` + ``CenterCrop`` when ``H == W``).
    - ``stretch``: exactly ``(H, W)``; the aspect ratio changes.
    - ``pad``: scale by ``min(H / height, W / width)`` (the image fits inside
      the target), rounded; the rest is padded with zeros (black).

    Raises:
        InvalidArgumentError: ``mode`` is not one of the three.

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
    raise InvalidArgumentError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")


def resize_to(
    image: torch.Tensor, size: int | tuple[int, int], *, mode: str = "shorter-side-crop"
) -> torch.Tensor:
    """Bring images to exactly ``size``: resize (:func:`resize`), then centre crop or pad.

    ``mode`` (see :func:`resized_shape`): ``shorter-side-crop`` scales the
    image to cover the target and cuts its centre (offsets ``(rh - H) // 2``,
    ``(rw - W) // 2``); ``stretch`` resizes to the target; ``pad`` scales the
    image to fit inside and centres it on zeros (black).

    Args:
        image: ``(*, C, H, W)``, floating point or integer.
        size: target ``(h, w)`` or one int.
        mode: ``shorter-side-crop``, ``stretch`` or ``pad``.

    Returns:
        ``(*, C, h, w)``, dtype and device of ``image``.

    Example:
        >>> resize_to(torch.rand(3, 375, 500), (224, 224)).shape
        torch.Size([3, 224, 224])
    """
    x = _check_resizable(image)
    th, tw = check_size(size)
    check_choice(mode, "mode", RESIZE_MODES)
    rh, rw = resized_shape(int(x.shape[-2]), int(x.shape[-1]), (th, tw), mode)
    resized = resize(x, (rh, rw))
    if mode == "pad":
        out = resized.new_zeros((*x.shape[:-2], th, tw))
        top, left = (th - rh) // 2, (tw - rw) // 2
        out[..., top : top + rh, left : left + rw] = resized
        return out
    top, left = (rh - th) // 2, (rw - tw) // 2
    return resized[..., top : top + th, left : left + tw].contiguous()


def resized_crop(
    image: torch.Tensor,
    box: tuple[int, int, int, int],
    size: int | tuple[int, int],
    *,
    antialias: bool = True,
) -> torch.Tensor:
    """Cut the integer ``box`` out of images and resize the cut to ``size`` (:func:`resize`).

    torchvision's ``resized_crop``: the pixels inside the box are resized on
    their own, so nothing outside the box leaks in.

    Convention: ``box = (x1, y1, x2, y2)`` in integer pixel-edge coordinates,
    ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``.

    Raises:
        InvalidArgumentError: bad ``image`` or ``size``, or a box outside the image.

    Example:
        >>> resized_crop(torch.rand(3, 100, 80), (0, 23, 79, 91), (32, 32)).shape
        torch.Size([3, 32, 32])
    """
    x = _check_resizable(image)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if (
        not (isinstance(box, tuple | list) and len(box) == 4)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
        or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height)
    ):
        raise InvalidArgumentError(
            f"box must be integers (x1, y1, x2, y2) with 0 <= x1 < x2 <= {width} and "
            f"0 <= y1 < y2 <= {height}, got {box!r}"
        )
    x1, y1, x2, y2 = box
    return resize(x[..., y1:y2, x1:x2], size, antialias=antialias).contiguous()


def _check_boxes(boxes: object) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        raise InvalidArgumentError(
            f"boxes must be a torch.Tensor of shape (*, 4), got {type(boxes).__name__}"
        )
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise InvalidArgumentError(
            f"boxes must have shape (*, 4) holding (x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
        )
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise InvalidArgumentError(f"boxes must have a real dtype, got {boxes.dtype}")
    return boxes


def _box_theta(
    boxes: torch.Tensor, height: int, width: int, *, align_corners: bool
) -> torch.Tensor:
    """Affine matrices ``(N, 2, 3)`` mapping output normalized coords to input ones.

    ``align_corners=False``: normalized -1 and +1 are the outer pixel *edges*,
    so the pixel-edge coordinate ``u`` in ``[0, W]`` is ``n = 2 u / W - 1``.
    The output edges ``n_out = -1, +1`` must land on ``x1, x2``:
    ``n_in = n_out (x2 - x1) / W + (x1 + x2) / W - 1``.

    ``align_corners=True``: -1 and +1 are the centres of the corner pixels, so
    the pixel-index coordinate ``c`` in ``[0, W - 1]`` is ``n = 2 c / (W - 1) - 1``.
    The output corner centres must land on ``x1, x2``:
    ``n_in = n_out (x2 - x1) / (W - 1) + (x1 + x2) / (W - 1) - 1``. A side of
    length 1 uses 1 as divisor (grid_sample then reads index 0 whatever ``n``).
    """
    if align_corners:
        dx, dy = float(max(width - 1, 1)), float(max(height - 1, 1))
    else:
        dx, dy = float(width), float(height)
    x1, y1, x2, y2 = boxes.unbind(-1)
    zero = torch.zeros_like(x1)
    row_x = torch.stack([(x2 - x1) / dx, zero, (x1 + x2) / dx - 1.0], dim=-1)
    row_y = torch.stack([zero, (y2 - y1) / dy, (y1 + y2) / dy - 1.0], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def crop_resize(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int | tuple[int, int],
    *,
    align_corners: bool = False,
    padding_mode: str = "border",
) -> torch.Tensor:
    """Crop boxes out of images and resample each to ``size`` with bilinear interpolation.

    One ``F.affine_grid`` and one ``F.grid_sample`` call serve the whole batch:
    each box becomes an axis-aligned affine map from the output's normalized
    coordinates to the input's (see the README for the derivation of ``theta``).
    The result is differentiable with respect to ``x`` and to ``boxes``.

    Convention: ``boxes[..., :] = (x1, y1, x2, y2)``, x along the width.

    - ``align_corners=False`` (default): pixel-*edge* coordinates. Pixel
      ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``, the full image is the box
      ``(0, 0, W, H)``, and the output's outer edges land on the box's edges:
      output pixel ``j`` samples the input at ``x = x1 + (j + 0.5) (x2 - x1) / w``
      (pixel centres sit at half-integers). The full box at the input size is
      the identity, and an integer box at its own size is the slice
      ``x[..., y1:y2, x1:x2]``.
    - ``align_corners=True``: pixel-*index* coordinates (pixel centres at
      integers, as in kornia's ``crop_and_resize``). The output's corner pixel
      centres land on ``(x1, y1)`` and ``(x2, y2)``: output pixel ``j`` samples
      ``x = x1 + j (x2 - x1) / (w - 1)`` (``(x1 + x2) / 2`` when ``w == 1``).
      The full image is ``(0, 0, W - 1, H - 1)`` and an integer box at size
      ``(y2 - y1 + 1, x2 - x1 + 1)`` is the slice ``x[..., y1:y2 + 1, x1:x2 + 1]``.

    ``x2 < x1`` (or ``y2 < y1``) mirrors the crop. Samples outside the image
    follow ``padding_mode``: ``"border"`` (default) repeats the edge pixels,
    which is also what keeps samples between the outermost pixel centre and the
    image edge (within half a pixel of the border) equal to the edge pixel
    instead of fading to 0; ``"zeros"`` reads 0 outside (and fades in that
    half-pixel band); ``"reflection"`` mirrors.

    Downscaling: there is no antialiasing. Each output pixel is one bilinear
    sample, so shrinking a box by a factor ``s > 2`` aliases fine detail. Blur
    first when that matters, e.g. ``gaussian_blur(x, (s - 1) / 2)`` as
    ``skimage.transform.resize(anti_aliasing=True)`` does.

    Broadcasting: the leading dimensions of ``x`` (``x.shape[:-3]``) and of
    ``boxes`` (``boxes.shape[:-1]``) broadcast together. So ``x`` of shape
    ``(B, C, H, W)`` with ``boxes`` ``(B, 4)`` crops one box per image;
    ``boxes`` of shape ``(4,)`` crops the same box from every image (also from a
    single ``(C, H, W)`` image); and a single image ``(C, H, W)`` with boxes
    ``(N, 4)`` gives ``N`` crops of it, sampled in one call without copying the
    image ``N`` times. Float16/bfloat16 images are computed in float32 and cast
    back; boxes are cast to the compute dtype and moved to ``x``'s device.

    Args:
        x: images ``(*, C, H, W)``, floating point, ``H, W >= 1``.
        boxes: ``(*, 4)`` real tensor of ``(x1, y1, x2, y2)``.
        size: output ``(h, w)``, or one int for a square.
        align_corners: box coordinates and sampling convention (see above).
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        Tensor ``(*batch, C, h, w)`` with ``batch`` the broadcast of the leading
        dimensions, dtype and device of ``x``.

    Raises:
        InvalidArgumentError: bad image, boxes of the wrong shape or dtype,
            leading dimensions that do not broadcast, bad ``size``,
            ``align_corners`` or ``padding_mode``.

    References:
        Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015 (affine
        grid + bilinear sampler, differentiable in the image and the grid).

    Example:
        >>> x = torch.rand(2, 3, 32, 48)
        >>> boxes = torch.tensor([[0.0, 0.0, 48.0, 32.0], [4.5, 2.0, 20.5, 18.0]])
        >>> crop_resize(x, boxes, (16, 16)).shape
        torch.Size([2, 3, 16, 16])
        >>> crop_resize(x[0], boxes, 8).shape  # one image, two boxes
        torch.Size([2, 3, 8, 8])
        >>> box = torch.tensor([8.0, 4.0, 24.0, 20.0])  # at its own size: a slice
        >>> torch.allclose(crop_resize(x, box, (16, 16)), x[..., 4:20, 8:24], atol=1e-6)
        True
    """
    check_float_image(x)
    boxes = _check_boxes(boxes)
    h, w = check_size(size)
    if not isinstance(align_corners, bool):
        raise InvalidArgumentError(f"align_corners must be a bool, got {align_corners!r}")
    check_choice(padding_mode, "padding_mode", _PADDING_MODES)
    try:
        batch = torch.broadcast_shapes(x.shape[:-3], boxes.shape[:-1])
    except RuntimeError:
        raise InvalidArgumentError(
            f"boxes must have leading dimensions that broadcast with x's: x has shape "
            f"{tuple(x.shape)} (batch {tuple(x.shape[:-3])}), boxes has shape "
            f"{tuple(boxes.shape)} (batch {tuple(boxes.shape[:-1])})"
        ) from None
    channels, height, width = x.shape[-3:]
    if height == 0 or width == 0:
        raise InvalidArgumentError(f"x must have H >= 1 and W >= 1, got shape {tuple(x.shape)}")
    n = math.prod(batch)
    if n == 0 or channels == 0:
        return x.new_empty((*batch, channels, h, w))

    work_dtype = compute_dtype(x.dtype)
    flat_boxes = boxes.to(device=x.device, dtype=work_dtype).expand(*batch, 4).reshape(n, 4)
    theta = _box_theta(flat_boxes, height, width, align_corners=align_corners)
    if align_corners and min(h, w) == 1:
        # A unit-size side samples the box centre (affine_grid's documented rule since
        # torch 1.3); silence its warning about that case.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Since version 1.3.0, affine_grid")
            grid = F.affine_grid(theta, [n, channels, h, w], align_corners=True)
    else:
        grid = F.affine_grid(theta, [n, channels, h, w], align_corners=align_corners)
    work = x.to(work_dtype)
    if math.prod(x.shape[:-3]) == 1 and n > 1:
        # One image, many boxes: stack the grids vertically and sample once.
        tall = grid.reshape(1, n * h, w, 2)
        out = F.grid_sample(
            work.reshape(1, channels, height, width),
            tall,
            mode="bilinear",
            padding_mode=padding_mode,
            align_corners=align_corners,
        )
        out = out.reshape(channels, n, h, w).transpose(0, 1)
    else:
        images = work.expand(*batch, channels, height, width).reshape(n, channels, height, width)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
        )
    return out.reshape(*batch, channels, h, w).to(x.dtype)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Upsample by 2 with bilinear interpolation, as one transposed convolution.

    Equal to ``F.interpolate(x, scale_factor=2, mode="bilinear",
    align_corners=False)`` everywhere, borders included (to rounding).

    Derivation, per axis: output sample ``o`` reads the input at
    ``s = (o + 0.5) / 2 - 0.5``, clamped to ``[0, n - 1]``. So
    ``out[2k] = x[k - 1] / 4 + 3 x[k] / 4`` and
    ``out[2k + 1] = 3 x[k] / 4 + x[k + 1] / 4``, where the clamp at both ends
    is exactly "replicate the edge sample": ``x[-1] = x[0]``, ``x[n] = x[n - 1]``.
    After replicate padding by 1 (``xp[i] = x[i - 1]``), the transposed
    convolution with stride 2 and kernel ``k = (1, 3, 3, 1) / 4``,
    ``y[m] = sum_i xp[i] k[m - 2 i]``, gives ``y[o + 3] = out[o]``; the
    ``padding=3`` argument of ``conv_transpose2d`` removes those 3 samples on
    each side and leaves exactly ``2 n``. In 2-D the kernel is ``k k^T``
    (bilinear is separable, and so is the clamp).

    Convention: pixel centres are aligned as in ``align_corners=False``: the
    output covers the same extent (pixel edges) as the input, output pixel
    centres at ``(o + 0.5) / 2 - 0.5`` in input pixel-index coordinates.
    16-bit floats are computed in float32 and cast back.

    Args:
        x: images ``(*, C, H, W)``, floating point.

    Returns:
        Tensor ``(*, C, 2 H, 2 W)``, dtype and device of ``x``.

    Raises:
        InvalidArgumentError: ``x`` is not a floating-point image.

    References:
        Long, Shelhamer & Darrell, "Fully convolutional networks for semantic
        segmentation", CVPR 2015 (bilinear upsampling as a fixed deconvolution).

    Example:
        >>> x = torch.rand(2, 3, 5, 8)
        >>> upsample2x(x).shape
        torch.Size([2, 3, 10, 16])
        >>> ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        >>> torch.allclose(upsample2x(x), ref, atol=1e-6)
        True
    """
    check_float_image(x)
    *lead, height, width = x.shape
    if x.numel() == 0:
        return x.new_empty((*lead, 2 * height, 2 * width))
    work = x.to(compute_dtype(x.dtype)).reshape(-1, 1, height, width)
    k = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=work.dtype, device=work.device)
    weight = (k[:, None] * k[None, :]).view(1, 1, 4, 4)
    padded = F.pad(work, (1, 1, 1, 1), mode="replicate")
    out = F.conv_transpose2d(padded, weight, stride=2, padding=3)
    return out.reshape(*lead, 2 * height, 2 * width).to(x.dtype)
