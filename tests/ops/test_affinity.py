from __future__ import annotations

import numpy as np
import pytest
import torch

from ops import local_affinity
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op, tol


def _np_affinity(y: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Brute force over pixels and neighbours of one (H, W) plane."""
    height, width = y.shape
    size = 2 * radius + 1
    p = np.pad(y, radius, mode="symmetric")
    out = np.zeros((size * size, height, width))
    for i in range(height):
        for j in range(width):
            window = [
                p[i + radius + dy, j + radius + dx]
                for dy in range(-radius, radius + 1)
                for dx in range(-radius, radius + 1)
            ]
            mu = sum(window) / len(window)
            var = sum((v - mu) ** 2 for v in window) / len(window)
            for k, v in enumerate(window):
                out[k, i, j] = 1.0 + (y[i, j] - mu) * (v - mu) / (var + eps)
    return out


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("hw", [(9, 11), (4, 3), (1, 6), (2, 2)])
@pytest.mark.parametrize("eps", [1e-6, 0.05])
def test_local_affinity_matches_brute_force(radius, hw, eps):
    rng = np.random.default_rng(radius * 100 + hw[0] * 10 + hw[1])
    y = rng.random((2, 1, *hw))
    out = local_affinity(torch.from_numpy(y), radius=radius, eps=eps).numpy()
    assert out.shape == (2, (2 * radius + 1) ** 2, *hw)
    for b in range(2):
        np.testing.assert_allclose(out[b], _np_affinity(y[b, 0], radius, eps), rtol=0, atol=1e-12)


def test_local_affinity_hand_computed_values():
    eps = 1e-6
    y = torch.full((1, 1, 6, 7), 0.3, dtype=torch.float64)
    y[..., 3:, :] = 0.8  # a horizontal step edge between rows 2 and 3
    out = local_affinity(y, radius=1, eps=eps)
    # Flat windows (rows 0-1 and 4-5, reflection included) give exactly 1.
    torch.testing.assert_close(out[..., :2, :], torch.ones_like(out[..., :2, :]))
    torch.testing.assert_close(out[..., 4:, :], torch.ones_like(out[..., 4:, :]))
    # Pixel (3, 3): window rows hold 0.3, 0.8, 0.8; mu = 0.3 + 1/3, var = 1/18.
    # Row-major index: (dy, dx) = (-1, 0) is 1, (0, 0) is 4, (1, 0) is 7.
    var = 1 / 18
    assert float(out[0, 1, 3, 3]) == pytest.approx(1 - (1 / 18) / (var + eps), abs=1e-12)
    assert float(out[0, 4, 3, 3]) == pytest.approx(1 + (1 / 36) / (var + eps), abs=1e-12)
    assert float(out[0, 7, 3, 3]) == pytest.approx(1 + (1 / 36) / (var + eps), abs=1e-12)
    # A bright centre and a dark corner on a grey window: a negative weight.
    z = torch.full((1, 1, 3, 3), 0.5, dtype=torch.float64)
    z[0, 0, 1, 1], z[0, 0, 2, 2] = 1.0, 0.0  # mu = 0.5, var = 0.5 / 9
    w = local_affinity(z, radius=1, eps=eps)
    assert float(w[0, 8, 1, 1]) == pytest.approx(1 - 0.25 / (0.5 / 9 + eps), abs=1e-12)
    assert float(w[0, 8, 1, 1]) < 0


def test_local_affinity_op_contract(device, dtype):
    g = torch.Generator().manual_seed(3)
    y = torch.rand(3, 1, 12, 10, generator=g).to(device=device, dtype=dtype)
    out = check_op(local_affinity, y, radius=2, eps=1e-2)
    ref = np.stack(
        [_np_affinity(y[b, 0].double().cpu().numpy(), 2, 1e-2) for b in range(y.shape[0])]
    )
    # Weights scale with 1 / (var + eps); compare relative to their magnitude.
    scale = {k: 2 * v for k, v in tol(dtype).items()}
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, **scale)


def test_local_affinity_gradcheck():
    g = torch.Generator().manual_seed(4)
    y = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64)
    check_op(local_affinity, y, radius=1, eps=1e-2, gradcheck=True)


def test_local_affinity_leading_dims_and_empty():
    g = torch.Generator().manual_seed(5)
    y = torch.rand(2, 3, 1, 7, 8, generator=g, dtype=torch.float64)
    out = local_affinity(y)
    assert out.shape == (2, 3, 9, 7, 8)
    torch.testing.assert_close(out.reshape(6, 9, 7, 8), local_affinity(y.reshape(6, 1, 7, 8)))
    assert local_affinity(torch.rand(0, 1, 4, 4)).shape == (0, 9, 4, 4)


@pytest.mark.parametrize(
    ("y", "kwargs", "match"),
    [
        (torch.rand(1, 3, 8, 8), {}, r"y must have one \(intensity\) channel.*\(1, 3, 8, 8\)"),
        (torch.rand(8, 8), {}, r"y must have shape \(\*, C, H, W\)"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), {}, "y must have a floating-point dtype"),
        (torch.rand(1, 1, 8, 8), {"radius": 0}, "radius must be >= 1, got 0"),
        (torch.rand(1, 1, 8, 8), {"radius": 1.5}, "radius must be an integer, got 1.5"),
        (torch.rand(1, 1, 8, 8), {"eps": 0.0}, "eps must be > 0, got 0.0"),
    ],
)
def test_local_affinity_bad_arguments(y, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        local_affinity(y, **kwargs)
