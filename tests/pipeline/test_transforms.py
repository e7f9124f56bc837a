from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import InvalidArgumentError
from pipeline.transforms import (
    TransformPlan,
    resize_image,
    resized_shape,
    sample_generator,
    sample_seed,
)


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
    out = resize_image(img, (16, 16), mode="shorter-side-crop")
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
    stretched = resize_image(img, (12, 12), mode="stretch")
    assert np.abs(stretched.numpy() - _reference_resize(img, (12, 12))).max() <= 1.0
    padded = resize_image(img, (12, 12), mode="pad").numpy()
    inner = _reference_resize(img, (6, 12))
    assert np.abs(padded[:, 3:9, :] - inner).max() <= 1.0
    assert (padded[:, :3] == 0).all()
    assert (padded[:, 9:] == 0).all()


def test_sixteen_bit_resize_keeps_integers():
    img = _textured(41, 29, dtype=np.uint16, seed=3)
    out = resize_image(img, (10, 10), mode="stretch")
    assert out.dtype == torch.int32
    ref = np.clip(np.round(_reference_resize(img, (10, 10))), 0, 65535)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_box_crop_equals_resized_slice():
    img = _textured(50, 70, seed=5)
    out = resize_image(img, (8, 8), box=(10, 5, 42, 37))
    ref = _reference_resize(np.ascontiguousarray(img[5:37, 10:42]), (8, 8))
    assert np.abs(out.numpy() - ref).max() <= 1.0
    same = resize_image(img, (32, 32), box=(10, 5, 42, 37))
    np.testing.assert_array_equal(same.numpy(), img[5:37, 10:42].transpose(2, 0, 1))


def test_identity_size_copies_pixels():
    img = _textured(16, 16)
    out = resize_image(img, (16, 16), mode="shorter-side-crop")
    np.testing.assert_array_equal(out.numpy(), img.transpose(2, 0, 1))


def test_resize_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match=r"image must have shape \(H, W, C\)"):
        resize_image(np.zeros((4, 4), np.uint8), (2, 2))
    with pytest.raises(InvalidArgumentError, match="image must be uint8 or uint16, got float32"):
        resize_image(np.zeros((4, 4, 3), np.float32), (2, 2))


def _plan(**kw) -> TransformPlan:
    base = dict(
        size=(4, 5),
        resize="stretch",
        normalize=True,
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.25, 0.3),
        out_dtype="float32",
    )
    base.update(kw)
    return TransformPlan(**base)


@pytest.mark.parametrize("augment", [[], [{"op": "invert", "p": 1.0}]])
def test_finish_normalizes_mixed_bit_depths_like_float64(augment):
    rng = np.random.default_rng(1)
    a8 = torch.from_numpy(rng.integers(0, 256, (3, 4, 5)).astype(np.uint8))
    a16 = torch.from_numpy(rng.integers(0, 65536, (3, 4, 5)).astype(np.int32))
    plan = _plan(augment=augment)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = plan.finish([a8, a16], [8, 16], gens)
    x = np.stack([a8.numpy() / 255.0, a16.numpy() / 65535.0])
    if augment:
        x = 1.0 - x
    mean = np.array(plan.mean).reshape(1, 3, 1, 1)
    std = np.array(plan.std).reshape(1, 3, 1, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x - mean) / std, rtol=0, atol=2e-6)


def test_finish_casts_to_store_dtypes():
    rng = np.random.default_rng(2)
    a8 = torch.from_numpy(rng.integers(0, 256, (3, 4, 5)).astype(np.uint8))
    gens = [torch.Generator()]
    raw = _plan(out_dtype="uint8", normalize=False).finish([a8], [8], gens)
    np.testing.assert_array_equal(raw[0], a8.numpy())
    inverted = _plan(out_dtype="uint8", normalize=False, augment=[{"op": "invert", "p": 1.0}])
    np.testing.assert_array_equal(inverted.finish([a8], [8], gens)[0], 255 - a8.numpy())
    half = _plan(out_dtype="float16", normalize=False).finish([a8], [8], gens)
    np.testing.assert_array_equal(half[0], (a8.numpy() / 255.0).astype(np.float16))


def test_finish_is_independent_of_the_batch():
    rng = np.random.default_rng(3)
    imgs = [torch.from_numpy(rng.integers(0, 256, (3, 6, 6)).astype(np.uint8)) for _ in range(4)]
    steps = [
        {"op": "invert", "p": 0.5},
        {"op": "dog_noise", "band": (0.05, 0.25), "rms": (0.02, 0.08), "p": 1.0},
        {"op": "gaussian_blur", "sigma": (0.1, 1.0), "p": 0.5},
    ]
    plan = _plan(size=(6, 6), augment=steps, out_dtype="float16")
    whole = plan.finish(imgs, [8] * 4, [sample_generator(0, i, 0) for i in range(4)])
    parts = [plan.finish(imgs[i : i + 1], [8], [sample_generator(0, i, 0)]) for i in range(4)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_sample_seeds_are_deterministic_and_distinct():
    seeds = {sample_seed(0, i, k) for i in range(200) for k in range(3)}
    assert len(seeds) == 600
    assert sample_seed(7, 3, 1) == sample_seed(7, 3, 1)
    assert sample_seed(7, 3, 1) != sample_seed(8, 3, 1)
    a = torch.rand(5, generator=sample_generator(1, 2, 3))
    b = torch.rand(5, generator=sample_generator(1, 2, 3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_draft_decodes_large_jpegs_close_to_a_full_decode(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline import decode as decode_module

    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    big = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=95)
    plan = _plan(size=(60, 80), resize="shorter-side-crop", out_dtype="uint8", normalize=False)

    calls = []
    real = decode_module.decode

    def spy(p, **kwargs):
        calls.append(kwargs)
        return real(p, **kwargs)

    monkeypatch.setattr(decode_module, "decode", spy)
    drafted, bits = plan.load(path, None)
    assert bits == 8
    assert calls == [{"draft": (60, 80)}]
    full = resize_image(real(path), (60, 80))
    # a DCT-scaled (draft) decode then a small resize, against a full decode then a
    # large resize: the same picture (measured: mean 0.8, max 5 levels)
    diff = np.abs(drafted.numpy().astype(int) - full.numpy().astype(int))
    assert diff.mean() < 1.5
    assert diff.max() <= 8
    # and not the full decode: the draft really happened
    assert not np.array_equal(drafted.numpy(), full.numpy())
