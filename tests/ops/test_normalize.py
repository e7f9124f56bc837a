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


def _loop_standardize(a: np.ndarray, eps: float) -> np.ndarray:
    """Per image and channel, with explicit loops over the pixels."""
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
        out[idx] = (plane - mean) / max(std, eps)
    return out


def test_standardize_matches_loops():
    rng = np.random.default_rng(6)
    a = rng.random((2, 3, 9, 11)) * rng.random((2, 3, 1, 1)) + rng.random((2, 3, 1, 1))
    out = standardize(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(out, _loop_standardize(a, 1e-6), rtol=1e-12, atol=1e-12)


def test_standardize_op_contract(device, dtype):
    x = _rand((3, 3, 12, 10), 7, device, dtype)
    out = check_op(standardize, x)
    ref = _loop_standardize(x.double().cpu().numpy(), 1e-6)
    np.testing.assert_allclose(
        out.double().cpu().numpy(), ref, **{k: 4 * v for k, v in tol(dtype).items()}
    )
    check_op(standardize, x.double(), gradcheck=True)


def test_standardize_small_std_and_eps():
    g = torch.Generator().manual_seed(8)
    x = 0.6 + 1e-4 * torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    x32 = x.float()
    ref = _loop_standardize(x32.double().numpy(), 1e-6)
    # std ~ 3e-5 next to a mean of 0.6: cancellation must not eat the result.
    np.testing.assert_allclose(standardize(x32).double().numpy(), ref, rtol=0, atol=2e-3)
    # A floor above the std divides by the floor instead.
    ref_eps = _loop_standardize(x.numpy(), 1e-3)
    np.testing.assert_allclose(standardize(x, eps=1e-3).numpy(), ref_eps, rtol=1e-12, atol=1e-12)
    assert standardize(x, eps=1e-3).abs().max() < 0.1


def test_standardize_constant_channel_is_zero():
    x = torch.rand(2, 3, 5, 5)
    x[1, 2] = 0.25
    out = standardize(x)
    assert torch.equal(out[1, 2], torch.zeros(5, 5))
    assert torch.isfinite(out).all()


def test_standardize_empty_and_bad_eps():
    assert standardize(torch.rand(0, 3, 4, 4)).shape == (0, 3, 4, 4)
    with pytest.raises(InvalidArgumentError, match="eps must be > 0, got 0.0"):
        standardize(torch.rand(1, 3, 4, 4), eps=0.0)
    with pytest.raises(InvalidArgumentError, match="eps must be a number > 0"):
        standardize(torch.rand(1, 3, 4, 4), eps=None)


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
