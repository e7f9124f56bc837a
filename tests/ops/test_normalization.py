from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ops
from ops import denormalize, normalize, standardize
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op, tol

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _rand(shape, seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _np_normalize(a: np.ndarray, mean, std) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    return (a - m) / s


# ---------------------------------------------------------------- normalize / denormalize


@pytest.mark.parametrize("as_tensor", [False, True])
def test_normalize_matches_numpy(as_tensor):
    a = np.random.default_rng(0).random((2, 3, 10, 9))
    mean, std = (torch.tensor(MEAN), torch.tensor(STD)) if as_tensor else (MEAN, STD)
    out = normalize(torch.from_numpy(a), mean, std).numpy()
    # float32 tensors of stats carry float32 values: the reference uses exactly those.
    m = np.float32(MEAN).astype(np.float64) if as_tensor else MEAN
    s = np.float32(STD).astype(np.float64) if as_tensor else STD
    np.testing.assert_allclose(out, _np_normalize(a, m, s), rtol=1e-14, atol=1e-14)


def test_denormalize_matches_numpy_and_inverts():
    a = np.random.default_rng(1).normal(size=(2, 3, 7, 8))
    out = denormalize(torch.from_numpy(a), MEAN, STD).numpy()
    ref = a * np.reshape(STD, (-1, 1, 1)) + np.reshape(MEAN, (-1, 1, 1))
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-14)
    x = _rand((2, 3, 7, 8), 2, dtype=torch.float64)
    torch.testing.assert_close(denormalize(normalize(x, MEAN, STD), MEAN, STD), x)


@pytest.mark.parametrize("fn", [normalize, denormalize])
def test_normalize_op_contract(device, dtype, fn):
    x = _rand((3, 3, 11, 10), 3, device, dtype)
    out = check_op(fn, x, MEAN, STD)
    a = x.double().cpu().numpy()
    if fn is normalize:
        ref = _np_normalize(a, MEAN, STD)
    else:
        ref = a * np.reshape(STD, (-1, 1, 1)) + np.reshape(MEAN, (-1, 1, 1))
    np.testing.assert_allclose(
        out.double().cpu().numpy(), ref, **{k: 2 * v for k, v in tol(dtype).items()}
    )
    check_op(fn, x.double(), MEAN, STD, gradcheck=True)


def test_normalize_stats_tensors_on_any_device_and_dtype(device):
    x = _rand((2, 2, 5, 5), 4, device)
    mean = torch.tensor([0.2, 0.7], dtype=torch.float64)  # CPU, float64
    std = torch.tensor([0.5, 0.25], dtype=torch.float64)
    out = normalize(x, mean, std)
    assert out.device == x.device
    assert out.dtype == x.dtype
    ref = _np_normalize(x.double().cpu().numpy(), [0.2, 0.7], [0.5, 0.25])
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, rtol=1e-6, atol=1e-6)


def test_normalize_gradient_reaches_tensor_stats():
    x = _rand((2, 3, 4, 4), 5, dtype=torch.float64)
    mean = torch.tensor(MEAN, dtype=torch.float64, requires_grad=True)
    std = torch.tensor(STD, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: normalize(x, m, s), (mean, std))
    assert torch.autograd.gradcheck(lambda m, s: denormalize(x, m, s), (mean, std))


def test_normalize_empty_batch():
    assert normalize(torch.rand(0, 3, 4, 4), MEAN, STD).shape == (0, 3, 4, 4)
    assert denormalize(torch.rand(0, 3, 4, 4), MEAN, STD).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("fn", [normalize, denormalize])
@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([0.5, 0.5], STD, r"mean must have length C=3 .*got 2 values"),
        (MEAN, [0.2] * 4, r"std must have length C=3 .*got 4 values"),
        (MEAN, [0.2, 0.0, 0.2], r"std values must be finite and > 0, got \[0.2, 0.0, 0.2\]"),
        (MEAN, [0.2, -1.0, 0.2], r"std values must be finite and > 0"),
        ([0.5, math.nan, 0.5], STD, r"mean values must be finite, got"),
        (MEAN, torch.tensor([0.2, 0.0, 0.2]), r"std values must be finite and > 0"),
        (torch.tensor([[0.5, 0.5, 0.5]]), STD, r"mean must be a 1-D tensor of length C=3"),
        (
            MEAN,
            torch.tensor([0.2, 0.2]),
            r"std must be a 1-D tensor of length C=3 .*got shape \(2,\)",
        ),
        (0.5, STD, r"mean must be a sequence or 1-D tensor of 3 numbers, got 0.5"),
        (MEAN, "abc", r"std must be a sequence or 1-D tensor of 3 numbers, got 'abc'"),
    ],
)
def test_normalize_bad_stats(fn, mean, std, match):
    with pytest.raises(InvalidArgumentError, match=match):
        fn(torch.rand(1, 3, 4, 4), mean, std)


def test_normalize_rejects_integer_images():
    with pytest.raises(InvalidArgumentError, match="x must have a floating-point dtype"):
        normalize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), MEAN, STD)


# ---------------------------------------------------------------- standardize


def _tf_per_image_standardization(a: np.ndarray) -> np.ndarray:
    """TensorFlow's ``per_image_standardization`` transcribed to float64 NumPy.

    ``image_ops_impl.py``: over the last three axes, ``num_pixels = prod(shape[-3:])``,
    ``adjusted_stddev = maximum(reduce_std(image), rsqrt(num_pixels))``,
    ``(image - reduce_mean(image)) / adjusted_stddev``. TF's layout is (H, W, C);
    the statistics cover all three axes, so (C, H, W) gives the same numbers.
    """
    out = np.empty_like(a, dtype=np.float64)
    for idx in np.ndindex(a.shape[:-3]):
        image = a[idx].astype(np.float64)
        num_pixels = image.size
        adjusted = max(image.std(), 1.0 / math.sqrt(num_pixels))
        out[idx] = (image - image.mean()) / adjusted
    return out


def _loop_standardize(a: np.ndarray, floor: float | None) -> np.ndarray:
    """Per image and channel, with explicit loops over the pixels; floor None: 1/sqrt(H W)."""
    out = np.empty_like(a, dtype=np.float64)
    h, w = a.shape[-2:]
    for idx in np.ndindex(a.shape[:-2]):
        plane = a[idx].astype(np.float64)
        total = 0.0
        for i in range(h):
            for j in range(w):
                total += plane[i, j]
        mean = total / (h * w)
        sq = 0.0
        for i in range(h):
            for j in range(w):
                sq += (plane[i, j] - mean) ** 2
        std = math.sqrt(sq / (h * w))
        out[idx] = (plane - mean) / max(std, 1.0 / math.sqrt(h * w) if floor is None else floor)
    return out


def _mixed_images(seed: int) -> np.ndarray:
    """Images with std >= 0.17 (above every floor) but image 1, near-constant: its floor binds."""
    rng = np.random.default_rng(seed)
    a = rng.random((3, 3, 9, 11)) * (0.6 + 0.4 * rng.random((3, 1, 1, 1))) + rng.random(
        (3, 3, 1, 1)
    )
    a[1] = 0.4 + 0.05 * rng.random((3, 9, 11))  # std ~0.014, below 1/sqrt(99) and 1/sqrt(297)
    return a


def test_standardize_matches_tensorflow_formula():
    a = _mixed_images(6)
    ref = _tf_per_image_standardization(a)
    assert a[1].std() < 1 / math.sqrt(a[1].size)  # the floor is what divides image 1
    out = standardize(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    # Leading axes: any batch shape, each (C, H, W) on its own.
    out5 = standardize(torch.from_numpy(a).reshape(1, 3, 3, 9, 11)).numpy()
    np.testing.assert_allclose(out5[0], ref, rtol=1e-12, atol=1e-12)


def test_standardize_near_constant_image_uses_the_tf_floor():
    # The example: 224 x 224 RGB, constant but for one value 1/255 higher.
    x = torch.full((3, 224, 224), 0.5, dtype=torch.float64)
    x[0, 100, 100] += 1 / 255
    n = 3 * 224 * 224
    delta = 1 / 255
    expected = delta * (1 - 1 / n) * math.sqrt(n)  # (x - mean) / (1 / sqrt(N))
    assert expected == pytest.approx(1.52, abs=0.005)
    out = standardize(x)
    # rel 1e-10: x - mean is 1/255 next to a mean of 0.5 summed over 150528 values, so
    # the summation's rounding (order-dependent: threads) is amplified ~128x.
    assert out[0, 100, 100].item() == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(out.numpy(), _tf_per_image_standardization(x.numpy()), atol=1e-12)
    # The former rule (per channel, floor 1e-6) blows the pixel up to sqrt(H W - 1) ~ 224.
    old = standardize(x, per_channel=True, eps=1e-6)
    assert old[0, 100, 100].item() == pytest.approx(math.sqrt(224 * 224 - 1), rel=1e-9)
    # Per channel with the 1/sqrt(H W) floor: delta * sqrt(H W) (1 - 1/(H W)).
    per = standardize(x, per_channel=True)
    assert per[0, 100, 100].item() == pytest.approx(delta * 224 * (1 - 1 / 224**2), rel=1e-10)


def test_standardize_per_channel_matches_loops():
    a = _mixed_images(7)
    out = standardize(torch.from_numpy(a), per_channel=True).numpy()
    np.testing.assert_allclose(out, _loop_standardize(a, None), rtol=1e-12, atol=1e-12)
    out_eps = standardize(torch.from_numpy(a), per_channel=True, eps=1e-6).numpy()
    np.testing.assert_allclose(out_eps, _loop_standardize(a, 1e-6), rtol=1e-12, atol=1e-12)
    # The floors differ where they bind: on the near-constant image only.
    assert np.abs(out[1] - out_eps[1]).max() > 1.0
    np.testing.assert_allclose(out[[0, 2]], out_eps[[0, 2]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
def test_standardize_op_contract(device, dtype, per_channel):
    x = _rand((3, 3, 12, 10), 7, device, dtype)
    out = check_op(standardize, x, per_channel=per_channel)
    xd = x.double().cpu().numpy()
    ref = _loop_standardize(xd, None) if per_channel else _tf_per_image_standardization(xd)
    np.testing.assert_allclose(
        out.double().cpu().numpy(), ref, **{k: 4 * v for k, v in tol(dtype).items()}
    )
    check_op(standardize, x.double(), per_channel=per_channel, gradcheck=True)


def test_standardize_small_std_and_eps():
    g = torch.Generator().manual_seed(8)
    x = 0.6 + 1e-4 * torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    x32 = x.float()
    # std ~ 3e-5 next to a mean of 0.6, below the floor 1/sqrt(768): TF's rule divides
    # by the floor, and the float32 result keeps the float64 reference's digits.
    ref = _tf_per_image_standardization(x32.double().numpy())
    np.testing.assert_allclose(standardize(x32).double().numpy(), ref, rtol=0, atol=1e-6)
    assert standardize(x).abs().max() < 0.01
    # With a fixed floor below the std, cancellation must not eat the result.
    ref_eps = _loop_standardize(x32.double().numpy(), 1e-6)
    out_eps = standardize(x32, per_channel=True, eps=1e-6).double().numpy()
    np.testing.assert_allclose(out_eps, ref_eps, rtol=0, atol=2e-3)
    assert np.abs(out_eps).max() > 1.0
    # A fixed floor above the std divides by the floor instead.
    ref_big = _loop_standardize(x.numpy(), 1e-3)
    np.testing.assert_allclose(
        standardize(x, per_channel=True, eps=1e-3).numpy(), ref_big, rtol=1e-12, atol=1e-12
    )


def test_standardize_constant_image_and_channel_are_zero():
    x = torch.rand(2, 3, 5, 5)
    x[1] = 0.25
    out = standardize(x)
    assert torch.equal(out[1], torch.zeros(3, 5, 5))
    x[0, 2] = 0.75
    per = standardize(x, per_channel=True)
    assert torch.equal(per[0, 2], torch.zeros(5, 5))
    assert torch.isfinite(out).all()
    assert torch.isfinite(per).all()


def test_standardize_empty_and_bad_arguments():
    assert standardize(torch.rand(0, 3, 4, 4)).shape == (0, 3, 4, 4)
    with pytest.raises(InvalidArgumentError, match="eps must be > 0, got 0.0"):
        standardize(torch.rand(1, 3, 4, 4), eps=0.0)
    with pytest.raises(InvalidArgumentError, match="eps must be a number > 0"):
        standardize(torch.rand(1, 3, 4, 4), eps="a")
    with pytest.raises(InvalidArgumentError, match="per_channel must be a bool, got 1"):
        standardize(torch.rand(1, 3, 4, 4), per_channel=1)


# ------------------------------------------------ normalize_ (the run's in-place path)


def test_normalize_in_place_matches_float64_for_mixed_bit_depths():
    rng = np.random.default_rng(11)
    a8 = rng.integers(0, 256, (3, 5, 7)).astype(np.float64)
    a16 = rng.integers(0, 65536, (3, 5, 7)).astype(np.float64)
    x = torch.from_numpy(np.stack([a8, a16])).to(torch.float32)
    top = torch.tensor([255.0, 65535.0]).view(-1, 1, 1, 1)
    mean, std = [0.41, 0.52, 0.33], [0.21, 0.19, 0.27]
    out = ops.normalize_(x, mean, std, max_value=top)
    assert out is x  # in place, the buffer the caller owns
    ref = (np.stack([a8 / 255.0, a16 / 65535.0]) - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(
        std, (1, 3, 1, 1)
    )
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=3e-6)
    # without max_value: the pixels are on [0, 1] already, as normalize() takes them
    y = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        ops.normalize_(y.clone(), mean, std), ops.normalize(y, mean, std), rtol=0, atol=1e-6
    )


def test_normalize_in_place_checks_its_arguments():
    with pytest.raises(InvalidArgumentError, match=r"std values must be finite and > 0"):
        ops.normalize_(torch.zeros(3, 2, 2), [0.0] * 3, [1.0, 0.0, 1.0])
    with pytest.raises(InvalidArgumentError, match="mean must have length C=3"):
        ops.normalize_(torch.zeros(3, 2, 2), [0.0] * 2, [1.0] * 3)
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        ops.normalize_(torch.zeros(3, 2, 2, dtype=torch.uint8), [0.0] * 3, [1.0] * 3)
