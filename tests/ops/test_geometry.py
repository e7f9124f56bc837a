from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ops import crop_resize, resize, resize_to, resized_crop, resized_shape, upsample2x
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op, tol

# ---------------------------------------------------------------------------
# crop_resize
# ---------------------------------------------------------------------------


def _reflect(u: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    u = abs(u - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def _np_crop_resize(
    img: np.ndarray,
    box: np.ndarray,
    h: int,
    w: int,
    *,
    align_corners: bool = False,
    padding_mode: str = "border",
) -> np.ndarray:
    """Bilinear crop-resize of one (C, H, W) image, one output pixel at a time."""
    channels, height, width = img.shape
    x1, y1, x2, y2 = (float(v) for v in box)

    def source(k: int, n: int, lo: float, hi: float) -> float:
        # Source position of output pixel k, in pixel-index coordinates (centres at integers).
        if align_corners:
            return (lo + hi) / 2 if n == 1 else lo + k * (hi - lo) / (n - 1)
        return lo + (k + 0.5) * (hi - lo) / n - 0.5

    def pad(u: float, size: int) -> float:
        if padding_mode == "reflection":
            u = _reflect(u, 0.0, size - 1.0) if align_corners else _reflect(u, -0.5, size - 0.5)
        if padding_mode in ("border", "reflection"):
            u = min(max(u, 0.0), size - 1.0)
        return u

    def pixel(i: int, j: int) -> np.ndarray:
        if 0 <= i < height and 0 <= j < width:
            return img[:, i, j]
        return np.zeros(channels)

    out = np.zeros((channels, h, w))
    for i in range(h):
        v = pad(source(i, h, y1, y2), height)
        i0 = math.floor(v)
        fy = v - i0
        for j in range(w):
            u = pad(source(j, w, x1, x2), width)
            j0 = math.floor(u)
            fx = u - j0
            out[:, i, j] = (
                (1 - fy) * (1 - fx) * pixel(i0, j0)
                + (1 - fy) * fx * pixel(i0, j0 + 1)
                + fy * (1 - fx) * pixel(i0 + 1, j0)
                + fy * fx * pixel(i0 + 1, j0 + 1)
            )
    return out


def _random_images(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 1, 1, 9), (1, 2, 8, 1), (3, 1, 5, 5)])
def test_crop_resize_full_box_is_identity(shape):
    x = _random_images(shape)
    height, width = shape[-2:]
    out = crop_resize(x, torch.tensor([0.0, 0.0, width, height]), (height, width))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    out = crop_resize(
        x, torch.tensor([0.0, 0.0, width - 1, height - 1]), (height, width), align_corners=True
    )
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def test_crop_resize_integer_box_at_own_size_is_a_slice():
    rng = np.random.default_rng(1)
    x = _random_images((1, 3, 29, 41), seed=1)
    for _ in range(12):
        x1, x2 = sorted(rng.choice(42, size=2, replace=False).tolist())
        y1, y2 = sorted(rng.choice(30, size=2, replace=False).tolist())
        box = torch.tensor([x1, y1, x2, y2])  # integer tensor is accepted
        out = crop_resize(x, box, (y2 - y1, x2 - x1))
        torch.testing.assert_close(out, x[..., y1:y2, x1:x2], rtol=0, atol=1e-12)
        if x2 < 41 and y2 < 29:
            out = crop_resize(x, box, (y2 - y1 + 1, x2 - x1 + 1), align_corners=True)
            torch.testing.assert_close(out, x[..., y1 : y2 + 1, x1 : x2 + 1], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_crop_resize_property_integer_box_is_slice(data):
    height, width = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    x1 = data.draw(st.integers(0, width - 1))
    x2 = data.draw(st.integers(x1 + 1, width))
    y1 = data.draw(st.integers(0, height - 1))
    y2 = data.draw(st.integers(y1 + 1, height))
    x = _random_images((2, 2, height, width), seed=data.draw(st.integers(0, 2**16)))
    out = crop_resize(x, torch.tensor([x1, y1, x2, y2]), (y2 - y1, x2 - x1))
    torch.testing.assert_close(out, x[..., y1:y2, x1:x2], rtol=0, atol=1e-12)


def test_crop_resize_one_box_per_image_slices():
    x = _random_images((4, 2, 20, 24), seed=2)
    boxes = torch.tensor([[0, 0, 8, 6], [3, 5, 11, 11], [16, 14, 24, 20], [10, 1, 18, 7]])
    out = crop_resize(x, boxes.double(), (6, 8))
    expected = torch.stack([x[k, :, b[1] : b[3], b[0] : b[2]] for k, b in enumerate(boxes)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
def test_crop_resize_matches_numpy_reference(align_corners, padding_mode):
    x = _random_images((5, 3, 13, 17), seed=3)
    boxes = torch.tensor(
        [
            [2.3, 1.7, 11.9, 9.2],  # fractional, upscaled
            [0.0, 0.0, 17.0, 13.0],  # whole image, downscaled
            [-3.5, -2.25, 6.1, 15.4],  # reaches outside the image
            [14.2, 3.3, 4.8, 12.6],  # x2 < x1: mirrored
            [0.1, 12.4, 16.9, 13.0],  # a thin strip at the border
        ],
        dtype=torch.float64,
    )
    for size in [(7, 9), (1, 4), (20, 3)]:
        out = crop_resize(
            x, boxes, size, align_corners=align_corners, padding_mode=padding_mode
        ).numpy()
        for k in range(x.shape[0]):
            ref = _np_crop_resize(
                x[k].numpy(),
                boxes[k].numpy(),
                *size,
                align_corners=align_corners,
                padding_mode=padding_mode,
            )
            np.testing.assert_allclose(out[k], ref, rtol=0, atol=1e-12)


def test_crop_resize_border_band_keeps_edge_value():
    # Output pixel centres within half a pixel of the image edge read the edge pixel under
    # "border", and fade towards 0 under "zeros" (documented behaviour).
    x = torch.full((1, 1, 4, 4), 0.75, dtype=torch.float64)
    box = torch.tensor([0.0, 0.0, 4.0, 4.0])
    border = crop_resize(x, box, (2, 2))
    zeros = crop_resize(x, box, (2, 2), padding_mode="zeros")
    torch.testing.assert_close(border, torch.full_like(border, 0.75), rtol=0, atol=1e-12)
    torch.testing.assert_close(zeros, torch.full_like(zeros, 0.75), rtol=0, atol=1e-12)
    small = crop_resize(x, box, (8, 8), padding_mode="zeros")  # centres at 0.25 px from edges
    assert float(small[0, 0, 0, 0]) == pytest.approx(0.75 * 0.75 * 0.75, abs=1e-12)
    assert float(crop_resize(x, box, (8, 8))[0, 0, 0, 0]) == pytest.approx(0.75, abs=1e-12)


def test_crop_resize_broadcasting():
    x = _random_images((2, 3, 3, 11, 14), seed=4)
    rng = np.random.default_rng(4)
    raw = rng.uniform(0, 10, size=(2, 3, 4))
    raw[..., 2:] += 2.0
    boxes = torch.from_numpy(raw)
    out = crop_resize(x, boxes, (5, 6))
    assert out.shape == (2, 3, 3, 5, 6)
    for a in range(2):
        for b in range(3):
            ref = _np_crop_resize(x[a, b].numpy(), raw[a, b], 5, 6)
            np.testing.assert_allclose(out[a, b].numpy(), ref, rtol=0, atol=1e-12)
    # One image, many boxes (the tall-grid path) equals one call per box.
    many = crop_resize(x[0, 0], boxes[0], (5, 6))
    assert many.shape == (3, 3, 5, 6)
    for k in range(3):
        torch.testing.assert_close(
            many[k], crop_resize(x[0, 0], boxes[0, k], (5, 6)), rtol=0, atol=1e-12
        )
    # Batch of images, one box (4,) or (1, 4) for all.
    same = crop_resize(x[0], boxes[0, 0], (5, 6))
    torch.testing.assert_close(same, crop_resize(x[0], boxes[0, :1], (5, 6)))
    for k in range(3):
        torch.testing.assert_close(same[k], crop_resize(x[0, k], boxes[0, 0], (5, 6)))


def test_crop_resize_op_contract(device, dtype):
    x = _random_images((3, 3, 19, 22), seed=5, dtype=torch.float32).to(device=device, dtype=dtype)
    box = torch.tensor([1.6, 2.2, 17.3, 15.9])
    out = check_op(crop_resize, x, box, (9, 12))
    for k in range(3):
        ref = _np_crop_resize(x[k].double().cpu().numpy(), box.double().numpy(), 9, 12)
        np.testing.assert_allclose(
            out[k].double().cpu().numpy(), ref, **{key: 2 * v for key, v in tol(dtype).items()}
        )


def test_crop_resize_gradcheck_image():
    x = _random_images((2, 2, 7, 9), seed=6)
    check_op(crop_resize, x, torch.tensor([0.7, 1.2, 7.4, 5.9]), (5, 4), gradcheck=True)
    check_op(
        crop_resize,
        x,
        torch.tensor([0.7, 1.2, 7.4, 5.9]),
        (4, 6),
        align_corners=True,
        padding_mode="zeros",
        gradcheck=True,
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_crop_resize_gradcheck_boxes(align_corners):
    x = _random_images((2, 2, 9, 11), seed=7)
    # No sample lands on an integer position (where bilinear has a kink) in either mode.
    boxes = torch.tensor(
        [[1.13, 0.77, 8.37, 7.19], [2.41, 1.93, 10.17, 6.61]], dtype=torch.float64
    ).requires_grad_(True)
    xg = x.clone().requires_grad_(True)

    def fn(img, b):
        return crop_resize(img, b, (5, 6), align_corners=align_corners)

    assert torch.autograd.gradcheck(fn, (xg, boxes), eps=1e-6, atol=1e-6)
    # The box gradient is not zero: the crop really moves with the box.
    out = fn(x, boxes)
    (grad,) = torch.autograd.grad(out.sum(), boxes)
    assert bool((grad.abs() > 1e-3).any())


def test_crop_resize_empty_batch():
    x = torch.rand(0, 3, 8, 8)
    assert crop_resize(x, torch.zeros(0, 4), (4, 5)).shape == (0, 3, 4, 5)
    assert crop_resize(torch.rand(3, 8, 8), torch.zeros(0, 4), 4).shape == (0, 3, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boxes": [0, 0, 4, 4]}, "boxes must be a torch.Tensor of shape"),
        ({"boxes": torch.zeros(2, 3)}, r"boxes must have shape \(\*, 4\).*got shape \(2, 3\)"),
        ({"boxes": torch.zeros(4, dtype=torch.bool)}, "boxes must have a real dtype"),
        ({"boxes": torch.zeros(3, 4)}, "boxes must have leading dimensions that broadcast"),
        ({"size": 0}, r"size must be an int >= 1 or a pair \(h, w\)"),
        ({"size": (4, 2.5)}, r"size must be an int >= 1 or a pair \(h, w\)"),
        ({"align_corners": 1}, "align_corners must be a bool, got 1"),
        ({"padding_mode": "wrap"}, r"padding_mode must be one of \['border', 'zeros', "),
    ],
)
def test_crop_resize_bad_arguments(kwargs, match):
    args = {"boxes": torch.tensor([0.0, 0.0, 4.0, 4.0]), "size": (4, 4)}
    args.update(kwargs)
    boxes, size = args.pop("boxes"), args.pop("size")
    with pytest.raises(InvalidArgumentError, match=match):
        crop_resize(torch.rand(2, 3, 8, 8), boxes, size, **args)


def test_crop_resize_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match="x must have a floating-point dtype"):
        crop_resize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(4), 2)
    with pytest.raises(InvalidArgumentError, match=r"x must have H >= 1 and W >= 1"):
        crop_resize(torch.zeros(1, 3, 0, 4), torch.zeros(4), 2)


# ---------------------------------------------------------------------------
# upsample2x
# ---------------------------------------------------------------------------


def _interpolate2x(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, scale_factor=2, mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def _np_upsample2x(a: np.ndarray) -> np.ndarray:
    """Bilinear x2 of an (H, W) plane, per output pixel, with the source index clamped."""
    height, width = a.shape
    out = np.zeros((2 * height, 2 * width))
    for i in range(2 * height):
        v = max((i + 0.5) / 2 - 0.5, 0.0)
        i0 = min(math.floor(v), height - 1)
        i1 = min(i0 + 1, height - 1)
        fy = v - i0
        for j in range(2 * width):
            u = max((j + 0.5) / 2 - 0.5, 0.0)
            j0 = min(math.floor(u), width - 1)
            j1 = min(j0 + 1, width - 1)
            fx = u - j0
            out[i, j] = (1 - fy) * ((1 - fx) * a[i0, j0] + fx * a[i0, j1]) + fy * (
                (1 - fx) * a[i1, j0] + fx * a[i1, j1]
            )
    return out


@pytest.mark.parametrize(
    "hw", [(1, 1), (1, 7), (6, 1), (2, 2), (5, 9), (8, 12), (13, 4), (3, 16), (31, 17)]
)
def test_upsample2x_equals_interpolate(hw):
    x = _random_images((2, 3, *hw), seed=sum(hw))
    out = upsample2x(x)
    assert out.shape == (2, 3, 2 * hw[0], 2 * hw[1])
    torch.testing.assert_close(out, _interpolate2x(x), rtol=0, atol=1e-14)
    # And against a loop written from the definition (clamped source index).
    np.testing.assert_allclose(out[1, 2].numpy(), _np_upsample2x(x[1, 2].numpy()), atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 24), width=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_upsample2x_property_equals_interpolate(height, width, seed):
    x = _random_images((1, 2, height, width), seed=seed)
    torch.testing.assert_close(upsample2x(x), _interpolate2x(x), rtol=0, atol=1e-14)


def test_upsample2x_op_contract(device, dtype):
    x = _random_images((3, 2, 7, 10), seed=11, dtype=torch.float32).to(device=device, dtype=dtype)
    out = check_op(upsample2x, x)
    ref = _interpolate2x(x.double())
    torch.testing.assert_close(out.double(), ref, **tol(dtype))


def test_upsample2x_gradcheck():
    check_op(upsample2x, _random_images((2, 2, 5, 4), seed=12), gradcheck=True)
    check_op(upsample2x, _random_images((1, 1, 1, 3), seed=13), gradcheck=True)


def test_upsample2x_leading_dims_and_empty():
    x = _random_images((2, 3, 2, 4, 5), seed=14)
    torch.testing.assert_close(upsample2x(x), _interpolate2x(x), rtol=0, atol=1e-14)
    assert upsample2x(torch.rand(0, 3, 4, 5)).shape == (0, 3, 8, 10)
    assert upsample2x(torch.rand(2, 3, 0, 5)).shape == (2, 3, 0, 10)


def test_upsample2x_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match="x must have a floating-point dtype"):
        upsample2x(torch.zeros(1, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(\*, C, H, W\)"):
        upsample2x(torch.zeros(4, 4))


# ---------------------------------------------------------------------------
# resize, resize_to, resized_crop (the prepare run's resampling)
# ---------------------------------------------------------------------------


def _chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8/uint16 array -> (C, H, W) tensor as the pipeline holds pixels."""
    arr = img.astype(np.int32) if img.dtype == np.uint16 else img
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _reference_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float64 antialiased bilinear resize, rounded: the reference for the integer kernels."""
    x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
    out = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return out[0].numpy()


def _textured(h: int, w: int, *, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(h, w, 3)).astype(dtype)


@pytest.mark.parametrize(
    ("h", "w", "size", "mode", "expected"),
    [
        (375, 500, (224, 224), "shorter-side-crop", (224, 299)),
        (500, 375, (224, 224), "shorter-side-crop", (299, 224)),
        (100, 100, (224, 224), "shorter-side-crop", (224, 224)),
        (375, 500, (224, 224), "pad", (168, 224)),
        (375, 500, (64, 32), "pad", (24, 32)),
        (375, 500, (64, 32), "stretch", (64, 32)),
        (375, 500, (64, 32), "shorter-side-crop", (64, 85)),
    ],
)
def test_resized_shape(h, w, size, mode, expected):
    assert resized_shape(h, w, size, mode) == expected


def test_resized_shape_rejects_unknown_mode():
    with pytest.raises(InvalidArgumentError, match="resize must be one of"):
        resized_shape(10, 10, (4, 4), "squash")


@pytest.mark.parametrize(("h", "w"), [(37, 53), (53, 37), (20, 20), (9, 200)])
def test_shorter_side_crop_is_centre_of_full_resize(h, w):
    img = _textured(h, w)
    out = resize_to(_chw(img), (16, 16), mode="shorter-side-crop")
    rh, rw = resized_shape(h, w, (16, 16), "shorter-side-crop")
    ref = _reference_resize(img, (rh, rw))
    top, left = (rh - 16) // 2, (rw - 16) // 2
    ref = ref[:, top : top + 16, left : left + 16]
    assert out.dtype == torch.uint8
    assert out.shape == (3, 16, 16)
    # the uint8 kernel rounds; it agrees with float64 within one level
    assert np.abs(out.numpy().astype(np.float64) - ref).max() <= 1.0


def test_stretch_and_pad():
    img = _textured(30, 60)
    stretched = resize_to(_chw(img), (12, 12), mode="stretch")
    assert np.abs(stretched.numpy() - _reference_resize(img, (12, 12))).max() <= 1.0
    padded = resize_to(_chw(img), (12, 12), mode="pad").numpy()
    inner = _reference_resize(img, (6, 12))
    assert np.abs(padded[:, 3:9, :] - inner).max() <= 1.0
    assert (padded[:, :3] == 0).all()
    assert (padded[:, 9:] == 0).all()


def test_sixteen_bit_resize_keeps_integers():
    img = _textured(41, 29, dtype=np.uint16, seed=3)
    out = resize_to(_chw(img), (10, 10), mode="stretch")
    assert out.dtype == torch.int32
    ref = np.clip(np.round(_reference_resize(img, (10, 10))), 0, 65535)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_box_crop_equals_resized_slice():
    img = _textured(50, 70, seed=5)
    out = resized_crop(_chw(img), (10, 5, 42, 37), (8, 8))
    ref = _reference_resize(np.ascontiguousarray(img[5:37, 10:42]), (8, 8))
    assert np.abs(out.numpy() - ref).max() <= 1.0
    same = resized_crop(_chw(img), (10, 5, 42, 37), (32, 32))
    np.testing.assert_array_equal(same.numpy(), img[5:37, 10:42].transpose(2, 0, 1))


def test_identity_size_copies_pixels():
    img = _textured(16, 16)
    out = resize_to(_chw(img), (16, 16), mode="shorter-side-crop")
    np.testing.assert_array_equal(out.numpy(), img.transpose(2, 0, 1))


def test_resize_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match=r"image must have shape \(\*, C, H, W\)"):
        resize(torch.zeros(4, 4, dtype=torch.uint8), (2, 2))
    with pytest.raises(InvalidArgumentError, match="image must be floating point or uint8"):
        resize(torch.zeros(3, 4, 4, dtype=torch.bool), (2, 2))
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        resize_to(torch.zeros(3, 4, 4), (2, 2), mode="squash")
    with pytest.raises(InvalidArgumentError, match=r"box must be integers \(x1, y1, x2, y2\)"):
        resized_crop(torch.zeros(3, 4, 4), (0, 0, 5, 4), (2, 2))


def test_resize_keeps_dtype_device_and_equals_unbatched():
    x = torch.rand(4, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    check_op(resize, x, (16, 20), gradcheck=True)
    check_op(resize, (x * 255).round().to(torch.uint8), (16, 20))
    check_op(resize_to, x, (16, 16), mode="pad")


def test_float_resize_matches_float64_reference():
    x = torch.rand(2, 3, 41, 29, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for shape in [(10, 10), (80, 60), (41, 7)]:
        ref = np.stack([_reference_resize(np.transpose(im.numpy(), (1, 2, 0)), shape) for im in x])
        np.testing.assert_allclose(resize(x, shape).numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.int32])
def test_resize_contiguous_false_keeps_the_values_and_skips_only_the_layout_copy(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 37, 53), generator=g).to(dtype)
    ref = resize(x, (20, 29))
    got = resize(x, (20, 29), contiguous=False)
    assert torch.equal(got, ref)
    assert ref.is_contiguous()
    if dtype == torch.uint8:  # torch's uint8 kernel writes channels-last
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert not got.is_contiguous()
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        resize(x, (20, 29), contiguous=1)
