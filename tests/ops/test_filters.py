from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.filters import difference_of_gaussians as sk_dog

from ops import difference_of_gaussians, gaussian_blur, gaussian_kernel1d
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op, tol


def _scipy_blur(a: np.ndarray, sigma, truncate=4.0) -> np.ndarray:
    out = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-2]):
        out[idx] = ndi.gaussian_filter(a[idx], sigma, mode="reflect", truncate=truncate)
    return out


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [
        ((2, 3, 17, 23), 1.0),
        ((1, 1, 9, 5), (2.5, 0.7)),
        ((2, 2, 3, 4), 5.0),  # radius wider than the image: repeated reflection
        ((1, 3, 20, 31), (0.0, 1.3)),  # zero sigma leaves that axis alone
        ((3, 8, 8), 0.4),
    ],
)
@pytest.mark.parametrize("truncate", [4.0, 2.5])
def test_gaussian_blur_matches_scipy(shape, sigma, truncate):
    rng = np.random.default_rng(0)
    a = rng.random(shape)
    out = gaussian_blur(torch.from_numpy(a), sigma, truncate=truncate)
    np.testing.assert_allclose(out.numpy(), _scipy_blur(a, sigma, truncate), rtol=0, atol=1e-12)


def test_gaussian_blur_kernel_matches_scipy_radius():
    for sigma in [0.3, 1.0, 1.49, 2.6]:
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        assert k.numel() == 2 * int(4.0 * sigma + 0.5) + 1
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-15)


def test_gaussian_blur_op_contract(device, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 19, 22, generator=g).to(device=device, dtype=dtype)
    out = check_op(gaussian_blur, x, (1.2, 0.8))
    ref = _scipy_blur(x.double().cpu().numpy(), (1.2, 0.8))
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, **tol(dtype))


def test_gaussian_blur_gradcheck():
    x = torch.rand(1, 2, 7, 6, dtype=torch.float64)
    check_op(gaussian_blur, x, 1.1, gradcheck=True)


def test_gaussian_blur_empty_batch():
    x = torch.rand(0, 3, 8, 8)
    assert gaussian_blur(x, 1.0).shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0,), "sigma must be >= 0, got -1.0"),
        (("a",), "sigma must be a number or a pair"),
        ((1.0, 2.0, 3.0), None),
    ],
)
def test_gaussian_blur_bad_arguments(args, match):
    x = torch.rand(1, 3, 8, 8)
    if len(args) == 3:
        with pytest.raises(TypeError):
            gaussian_blur(x, *args)
        return
    with pytest.raises(InvalidArgumentError, match=match):
        gaussian_blur(x, *args)


def test_gaussian_blur_rejects_integer_and_small_inputs():
    with pytest.raises(InvalidArgumentError, match="x must have a floating-point dtype"):
        gaussian_blur(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 1.0)
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(\*, C, H, W\)"):
        gaussian_blur(torch.zeros(4, 4), 1.0)


@pytest.mark.parametrize(("low", "high"), [(1.0, None), (1.2, 3.0), ((0.5, 1.0), (2.0, 2.5))])
def test_difference_of_gaussians_matches_skimage(low, high):
    rng = np.random.default_rng(3)
    a = rng.random((2, 3, 40, 33))
    out = difference_of_gaussians(torch.from_numpy(a), low, high).numpy()
    ref = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-2]):
        ref[idx] = sk_dog(a[idx], low, high, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_difference_of_gaussians_op_contract(device, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 18, generator=g).to(device=device, dtype=dtype)
    check_op(difference_of_gaussians, x, 0.8, 2.0)
    xd = torch.rand(1, 1, 9, 7, dtype=torch.float64)
    check_op(difference_of_gaussians, xd, 0.8, gradcheck=True)


def test_difference_of_gaussians_rejects_inverted_sigmas():
    with pytest.raises(InvalidArgumentError, match="high_sigma must be >= low_sigma"):
        difference_of_gaussians(torch.rand(1, 1, 8, 8), 2.0, 1.0)


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [
        ((1, 2, 6, 1300), (0.0, 1.5)),  # long W: tiled banded products
        ((1, 1, 1100, 5), (40.0, 0.8)),  # long H, radius 160 > 1/2 tile
        ((2, 1, 1030, 1025), 2.0),  # both axes just past the dense limit
    ],
)
def test_gaussian_blur_long_axes_match_scipy(shape, sigma):
    rng = np.random.default_rng(5)
    a = rng.random(shape)
    out = gaussian_blur(torch.from_numpy(a), sigma)
    np.testing.assert_allclose(out.numpy(), _scipy_blur(a, sigma), rtol=0, atol=1e-12)
    out32 = gaussian_blur(torch.from_numpy(a).float(), sigma)
    np.testing.assert_allclose(out32.double().numpy(), _scipy_blur(a, sigma), rtol=0, atol=1e-5)


def test_gaussian_blur_non_contiguous_input():
    rng = np.random.default_rng(6)
    a = rng.random((2, 3, 21, 17))
    x = torch.from_numpy(a).transpose(-1, -2)  # (2, 3, 17, 21), strided view
    out = gaussian_blur(x, (1.3, 0.6))
    ref = _scipy_blur(np.ascontiguousarray(a.transpose(0, 1, 3, 2)), (1.3, 0.6))
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)
