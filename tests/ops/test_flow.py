from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from ops import Flow, lucas_kanade
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op

MARGIN = 12  # interior: away from the border, where windows reach reflected pixels


def _texture(shape=(96, 96), seed=0, smooth=2.0) -> np.ndarray:
    """Periodic smoothed noise around 0.5 (std 0.15), so a Fourier shift is exact."""
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.standard_normal(shape), smooth, mode="wrap")
    return 0.5 + 0.15 * t / t.std()


def _fourier_shift(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """b(x, y) = a(x - dx, y - dy) on a periodic image."""
    return np.real(np.fft.ifft2(ndi.fourier_shift(np.fft.fft2(a), (dy, dx))))


def _interior_errors(result: Flow, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    flow = result.flow.double().numpy()[..., MARGIN:-MARGIN, MARGIN:-MARGIN]
    valid = result.valid.numpy()[..., 0, MARGIN:-MARGIN, MARGIN:-MARGIN]
    err = np.hypot(flow[..., 0, :, :] - dx, flow[..., 1, :, :] - dy)
    return err, valid


@pytest.mark.parametrize(("dx", "dy"), [(1.5, 0.0), (0.0, -1.5), (1.2, -0.9), (-0.9, 1.2)])
def test_lucas_kanade_subpixel_shift(dx, dy):
    a = _texture(seed=1)
    b = _fourier_shift(a, dx, dy)
    result = lucas_kanade(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    err, valid = _interior_errors(result, dx, dy)
    assert valid.mean() > 0.99
    assert np.median(err[valid]) <= 0.1
    # The sign convention, component by component: flow = (dx, dy).
    flow = result.flow.numpy()[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert np.median(flow[0]) == pytest.approx(dx, abs=0.05)
    assert np.median(flow[1]) == pytest.approx(dy, abs=0.05)


def test_lucas_kanade_sign_convention_with_spline_shift():
    # scipy.ndimage.shift(a, (dy, dx)) moves the content by +dx along x and +dy along y.
    a = _texture((80, 90), seed=2)
    for dx, dy in [(1.0, -0.5), (-0.5, 1.0), (-1.25, -0.75)]:
        b = ndi.shift(a, (dy, dx), order=3, mode="grid-wrap")
        flow = lucas_kanade(torch.from_numpy(a[None]), torch.from_numpy(b[None])).flow.numpy()
        inner = flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
        assert np.median(inner[0]) == pytest.approx(dx, abs=0.05)
        assert np.median(inner[1]) == pytest.approx(dy, abs=0.05)


@pytest.mark.parametrize(("dx", "dy"), [(6.0, -4.5), (-6.0, 6.0), (0.0, 6.0)])
def test_lucas_kanade_pyramid_large_shift(dx, dy):
    a = _texture((128, 128), seed=3)
    b = _fourier_shift(a, dx, dy)
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    err, valid = _interior_errors(lucas_kanade(ta, tb, levels=3), dx, dy)
    assert valid.mean() > 0.99
    assert np.median(err[valid]) <= 0.25
    assert np.mean(err > 1.0) < 0.01
    # Without the pyramid a shift of three window sigmas is out of reach for many pixels.
    err1, _ = _interior_errors(lucas_kanade(ta, tb, levels=1), dx, dy)
    assert np.mean(err1 > 1.0) > 0.3


def test_lucas_kanade_odd_sizes_and_batch():
    # Odd sides go through the padded pyramid steps; the batch shares nothing.
    shifts = [(2.5, -1.0), (-3.0, 2.0)]
    a = np.stack([_texture((77, 93), seed=4 + k) for k in range(2)])
    b = np.stack([_fourier_shift(a[k], *shifts[k]) for k in range(2)])
    result = lucas_kanade(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], levels=3)
    assert result.flow.shape == (2, 2, 77, 93)
    for k, (dx, dy) in enumerate(shifts):
        flow = result.flow[k].numpy()[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
        err = np.hypot(flow[0] - dx, flow[1] - dy)
        assert np.median(err) <= 0.1


def test_lucas_kanade_invalid_on_flat_patch():
    a = _texture((96, 96), seed=5)
    a[30:70, 25:75] = 0.5  # flat patch
    b = _fourier_shift(a, 1.0, -0.5)
    result = lucas_kanade(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    valid = result.valid[0].numpy()
    flow = result.flow.numpy()
    # The window (radius 4 sigma = 8) plus the shift stays inside the patch here.
    core = (slice(30 + 10, 70 - 10), slice(25 + 10, 75 - 10))
    assert not valid[core].any()
    assert np.all(flow[:, core[0], core[1]] == 0.0)
    # Textured pixels away from the patch and the border stay valid and accurate.
    textured = np.ones_like(valid)
    textured[20:80, 15:85] = False
    textured[:MARGIN] = textured[-MARGIN:] = False
    textured[:, :MARGIN] = textured[:, -MARGIN:] = False
    assert valid[textured].mean() > 0.99
    err = np.hypot(flow[0] - 1.0, flow[1] + 0.5)[textured]
    assert np.median(err) <= 0.1


def test_lucas_kanade_threshold_controls_the_mask():
    a = _texture((64, 64), seed=6)
    b = _fourier_shift(a, 0.5, 0.5)
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    assert bool(lucas_kanade(ta, tb, min_eigenvalue=0.0).valid.all())
    none = lucas_kanade(ta, tb, min_eigenvalue=1.0)  # far above any squared gradient here
    assert not bool(none.valid.any())
    assert bool((none.flow == 0).all())


def test_lucas_kanade_multichannel_sums_structure_tensors():
    a = _texture((72, 72), seed=7)
    b = _fourier_shift(a, -1.0, 0.75)
    one = lucas_kanade(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    # Three identical channels scale G and h by 3: the same flow.
    three = lucas_kanade(torch.from_numpy(np.stack([a] * 3)), torch.from_numpy(np.stack([b] * 3)))
    torch.testing.assert_close(three.flow, one.flow, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(three.valid, one.valid)
    # Flat channels add nothing: the textured channel alone determines the flow.
    flat_a = np.stack([a, np.full_like(a, 0.2), np.full_like(a, 0.9)])
    flat_b = np.stack([b, np.full_like(b, 0.2), np.full_like(b, 0.9)])
    mixed = lucas_kanade(torch.from_numpy(flat_a), torch.from_numpy(flat_b))
    torch.testing.assert_close(mixed.flow, one.flow, rtol=1e-9, atol=1e-9)


def _np_one_step(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """One step from zero flow, pixel by pixel, with explicit windows (independent loops)."""
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    window = np.outer(g, g)

    def grad(img):
        p = np.pad(img, 1, mode="symmetric")
        return (p[1:-1, 2:] - p[1:-1, :-2]) / 2, (p[2:, 1:-1] - p[:-2, 1:-1]) / 2

    ax, ay = grad(a)
    bx, by = grad(b)
    ix, iy, it = (ax + bx) / 2, (ay + by) / 2, b - a
    pads = [np.pad(v, radius, mode="symmetric") for v in (ix, iy, it)]
    height, width = a.shape
    out = np.zeros((2, height, width))
    for i in range(height):
        for j in range(width):
            px, py, pt = (p[i : i + 2 * radius + 1, j : j + 2 * radius + 1] for p in pads)
            gmat = np.array(
                [
                    [np.sum(window * px * px), np.sum(window * px * py)],
                    [np.sum(window * px * py), np.sum(window * py * py)],
                ]
            )
            rhs = -np.array([np.sum(window * px * pt), np.sum(window * py * pt)])
            out[:, i, j] = np.linalg.solve(gmat, rhs)
    return out


def test_lucas_kanade_one_step_matches_brute_force():
    rng = np.random.default_rng(8)
    a = ndi.gaussian_filter(rng.random((13, 15)), 1.0)
    b = ndi.gaussian_filter(rng.random((13, 15)), 1.0) * 0.3 + a * 0.7
    out = lucas_kanade(
        torch.from_numpy(a[None]), torch.from_numpy(b[None]), sigma=1.5, iterations=1
    )
    assert bool(out.valid.all())
    np.testing.assert_allclose(out.flow.numpy(), _np_one_step(a, b, 1.5), rtol=0, atol=1e-10)


def _lk_pair(x: torch.Tensor, **kwargs) -> Flow:
    """Run lucas_kanade on the two halves of the channel axis (for the shared checker)."""
    c = x.shape[-3] // 2
    return lucas_kanade(x[..., :c, :, :], x[..., c:, :, :], **kwargs)


def test_lucas_kanade_op_contract(device, dtype):
    a = np.stack([_texture((40, 44), seed=9 + k) for k in range(3)])
    b = np.stack([_fourier_shift(a[k], 0.7 * (k - 1), 0.4) for k in range(3)])
    x = torch.from_numpy(np.stack([a, b], axis=1)).to(device=device, dtype=dtype)  # (3, 2, H, W)
    flow, valid = check_op(_lk_pair, x, levels=2, iterations=3)
    assert flow.shape == (3, 2, 40, 44)
    assert valid.shape == (3, 1, 40, 44)
    assert valid.dtype == torch.bool


def test_lucas_kanade_gradcheck():
    a = _texture((14, 16), seed=10, smooth=1.5)
    b = _fourier_shift(a, 0.4, -0.3)
    x = torch.from_numpy(np.stack([a, b])[None])  # (1, 2, H, W)

    def flow_only(inp: torch.Tensor) -> torch.Tensor:
        # gradcheck takes float outputs only; the bool mask has no gradient.
        return _lk_pair(inp, sigma=1.5, iterations=2, levels=2).flow

    check_op(flow_only, x, gradcheck=True)


def test_lucas_kanade_leading_dims_and_empty():
    a = torch.from_numpy(np.stack([_texture((32, 32), seed=11 + k) for k in range(4)]))
    b = torch.roll(a, 1, dims=-1)
    out = lucas_kanade(a.reshape(2, 2, 1, 32, 32), b.reshape(2, 2, 1, 32, 32))
    flat = lucas_kanade(a[:, None], b[:, None])
    torch.testing.assert_close(out.flow.reshape(4, 2, 32, 32), flat.flow)
    empty = lucas_kanade(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8))
    assert empty.flow.shape == (0, 2, 8, 8)
    assert empty.valid.shape == (0, 1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": torch.rand(1, 3, 8, 9)}, "b must have the shape, dtype and device of a"),
        ({"b": torch.rand(1, 3, 8, 8, dtype=torch.float64)}, "b must have the shape, dtype"),
        ({"sigma": 0.0}, "sigma must be > 0, got 0.0"),
        ({"levels": 0}, "levels must be >= 1, got 0"),
        ({"levels": 2.0}, "levels must be an integer, got 2.0"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
        ({"min_eigenvalue": -1e-3}, "min_eigenvalue must be >= 0, got -0.001"),
    ],
)
def test_lucas_kanade_bad_arguments(kwargs, match):
    a = torch.rand(1, 3, 8, 8)
    b = kwargs.pop("b", torch.rand(1, 3, 8, 8))
    with pytest.raises(InvalidArgumentError, match=match):
        lucas_kanade(a, b, **kwargs)


def test_lucas_kanade_rejects_bad_images():
    with pytest.raises(InvalidArgumentError, match="a must have a floating-point dtype"):
        lucas_kanade(torch.zeros(1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"b must have shape \(\*, C, H, W\)"):
        lucas_kanade(torch.zeros(1, 4, 4), torch.zeros(4, 4))
