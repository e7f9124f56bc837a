from __future__ import annotations

import numpy as np
import pytest
import torch

import ops
from pipeline.config import DogNoiseStep, GaussianBlurStep, InvertStep
from pipeline.errors import InvalidArgumentError
from pipeline.transforms import TransformPlan, sample_generator, sample_seed, to_tensor


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


@pytest.mark.parametrize("augment", [(), (InvertStep(op="invert", p=1.0),)])
def test_finish_normalizes_mixed_bit_depths_like_float64(augment):
    rng = np.random.default_rng(1)
    a8 = torch.from_numpy(rng.integers(0, 256, (3, 4, 5)).astype(np.uint8))
    a16 = torch.from_numpy(rng.integers(0, 65536, (3, 4, 5)).astype(np.int32))
    plan = _plan(steps=augment)
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
    inverted = _plan(out_dtype="uint8", normalize=False, steps=(InvertStep(op="invert", p=1.0),))
    np.testing.assert_array_equal(inverted.finish([a8], [8], gens)[0], 255 - a8.numpy())
    half = _plan(out_dtype="float16", normalize=False).finish([a8], [8], gens)
    np.testing.assert_array_equal(half[0], (a8.numpy() / 255.0).astype(np.float16))


def test_finish_is_independent_of_the_batch():
    rng = np.random.default_rng(3)
    imgs = [torch.from_numpy(rng.integers(0, 256, (3, 6, 6)).astype(np.uint8)) for _ in range(4)]
    steps = (
        InvertStep(op="invert", p=0.5),
        DogNoiseStep(op="dog_noise", band=(0.05, 0.25), rms=(0.02, 0.08), p=1.0),
        GaussianBlurStep(op="gaussian_blur", sigma=(0.1, 1.0), p=0.5),
    )
    plan = _plan(size=(6, 6), steps=steps, out_dtype="float16")
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
    real = decode_module.decode_for_size

    def spy(p, size, **kwargs):
        calls.append((size, kwargs))
        return real(p, size, **kwargs)

    monkeypatch.setattr(decode_module, "decode_for_size", spy)
    drafted, bits = plan.load(path, None)
    assert bits == 8
    assert calls == [((60, 80), {"mode": "shorter-side-crop", "draft": True})]  # the default
    full = ops.resize_to(to_tensor(decode_module.decode(path)), (60, 80))
    # a DCT-scaled (draft) decode then a small resize, against a full decode then a
    # large resize: the same picture (measured: mean 0.8, max 5 levels)
    diff = np.abs(drafted.numpy().astype(int) - full.numpy().astype(int))
    assert diff.mean() < 1.5
    assert diff.max() <= 8
    # and not the full decode: the draft really happened
    assert not np.array_equal(drafted.numpy(), full.numpy())
    # draft off (a segment whose files are measured as they are written): the full decode
    undrafted, _ = plan.load(path, None, draft=False)
    assert np.array_equal(undrafted.numpy(), full.numpy())
    # the measuring load: the same pixels, and the full-resolution histogram
    measured, bits, histogram = plan.load_measured(path, None)
    assert bits == 8
    assert np.array_equal(measured.numpy(), full.numpy())
    with Image.open(path) as im:  # independent: Pillow's full decode, counted by NumPy
        rgb = np.asarray(im.convert("RGB"))
    reference = np.stack([np.bincount(rgb[..., c].ravel(), minlength=256) for c in range(3)])
    assert histogram.bits == 8
    assert np.array_equal(histogram.counts, reference)


def test_to_tensor_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match=r"image must have shape \(H, W, C\)"):
        to_tensor(np.zeros((4, 4), np.uint8))
    with pytest.raises(InvalidArgumentError, match="image must be uint8 or uint16, got float32"):
        to_tensor(np.zeros((4, 4, 3), np.float32))


def test_the_crop_step_is_the_ops_class(tmp_path):
    """The pipeline's random resized crop is ops.RandomResizedCrop on the decoded pixels."""
    from PIL import Image

    from pipeline.config import RandomResizedCropStep
    from pipeline.decode import decode

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)).save(tmp_path / "a.png")
    step = RandomResizedCropStep(op="random_resized_crop", scale=(0.3, 0.8))
    plan = _plan(size=(24, 32), steps=(step,), out_dtype="uint8", normalize=False)
    pixels, _ = plan.load(tmp_path / "a.png", sample_generator(0, 5, 1))
    alone = ops.RandomResizedCrop((24, 32), scale=(0.3, 0.8))
    expected = alone(to_tensor(decode(tmp_path / "a.png")), generator=sample_generator(0, 5, 1))
    assert torch.equal(pixels, expected)


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("normalize", ["dataset", "none"])
def test_the_8bit_table_equals_the_computed_path_bit_for_bit(out_dtype, normalize):
    """8-bit samples that are only normalized are looked up; the bits are the computed ones."""
    rng = np.random.default_rng(5)
    pixels = [
        torch.from_numpy(rng.integers(0, 256, (3, 24, 31)).astype(np.uint8)) for _ in range(3)
    ]
    pixels[0][:, 0, :] = torch.arange(31, dtype=torch.uint8) * 8 + 7  # 7 .. 247
    pixels[0][:, 1, :16] = torch.tensor([0, 255] * 8, dtype=torch.uint8)
    kw = dict(
        size=(24, 31),
        normalize=normalize,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        out_dtype=out_dtype,
    )
    table = _plan(**kw)
    assert table._lut is not None
    assert table._lut.shape == (3, 256)
    computed = _plan(**kw)
    computed.__dict__["_lut"] = None  # the float32 batch path
    gens = [torch.Generator() for _ in pixels]
    got = table.finish(pixels, [8] * 3, gens)
    want = computed.finish(pixels, [8] * 3, gens)
    assert got.dtype == want.dtype == np.dtype(out_dtype)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    # and both are the float64 formula to the output dtype's rounding
    x = np.stack([p.numpy() for p in pixels]) / 255.0
    if normalize == "dataset":
        x = (x - np.reshape(kw["mean"], (1, 3, 1, 1))) / np.reshape(kw["std"], (1, 3, 1, 1))
    tol = 2e-3 * np.abs(x).max() if out_dtype == "float16" else 2e-6
    np.testing.assert_allclose(got.astype(np.float64), x, rtol=0, atol=tol)


def test_no_table_when_the_values_depend_on_more_than_the_pixel_value():
    assert _plan(steps=(InvertStep(op="invert", p=1.0),))._lut is None
    assert _plan(normalize="per-image")._lut is None
    assert _plan(out_dtype="uint8", normalize="none")._lut is None
