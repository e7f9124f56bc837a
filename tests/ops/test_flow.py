from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from ops import Flow, gaussian_blur, lucas_kanade
from ops.flow import _spline_coefficients, _warp_spline
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
    # Without the pyramid a shift of three window sigmas is out of reach for many pixels
    # (28 % to 70 % of them off by more than 1 px here).
    err1, _ = _interior_errors(lucas_kanade(ta, tb, levels=1), dx, dy)
    assert np.mean(err1 > 1.0) > 0.2


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
    # presmooth=0: the reference works on the images as given. From zero flow every
    # sample falls on a pixel centre, where the spline interpolant equals the pixel.
    out = lucas_kanade(
        torch.from_numpy(a[None]), torch.from_numpy(b[None]), sigma=1.5, iterations=1, presmooth=0
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
        ({"presmooth": -1.0}, "presmooth must be >= 0, got -1.0"),
        (
            {"interpolation": "bicubic"},
            r"interpolation must be one of \['linear', 'cubic', 'quintic'\], got 'bicubic'",
        ),
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


# ---------------------------------------------------------------- spline sampling


def _exact_spline_1d(f: np.ndarray, xq: np.ndarray, degree: int) -> np.ndarray:
    """B-spline interpolant of the half-sample symmetric extension of ``f`` at ``xq``.

    Coefficients by a DFT over one period (2n) of the extension, so exact for any
    length; the B-spline basis from scipy.interpolate.
    """
    from scipy.interpolate import BSpline

    n = f.size
    ext = np.concatenate([f, f[::-1]])
    w = 2 * np.pi * np.fft.fftfreq(2 * n)
    if degree == 3:
        sampled = (4 + 2 * np.cos(w)) / 6
    else:
        sampled = (66 + 52 * np.cos(w) + 2 * np.cos(2 * w)) / 120
    c = np.real(np.fft.ifft(np.fft.fft(ext) / sampled))
    beta = BSpline.basis_element(np.arange(degree + 2) - (degree + 1) / 2, extrapolate=False)
    out = np.empty(xq.size)
    for i, x in enumerate(xq):
        k = np.arange(int(np.floor(x)) - degree, int(np.floor(x)) + degree + 2)
        out[i] = np.sum(c[k % (2 * n)] * np.nan_to_num(beta(x - k)))
    return out


@pytest.mark.parametrize("degree", [3, 5])
def test_spline_warp_matches_scipy_map_coordinates(degree):
    # scipy's spline with mode="reflect" interpolates the same symmetric extension (its
    # boundary handling is exact on axes of a few tens of samples; shorter ones below).
    rng = np.random.default_rng(30 + degree)
    x = rng.random((2, 24, 31))
    flow = rng.normal(0.0, 3.0, (2, 24, 31))  # reaches outside the image
    out = _warp_spline(
        _spline_coefficients(torch.from_numpy(x)[None], degree),
        torch.from_numpy(flow)[None],
        degree,
    )[0].numpy()
    ys, xs = np.mgrid[0:24, 0:31].astype(np.float64)
    for c in range(2):
        ref = ndi.map_coordinates(x[c], [ys + flow[1], xs + flow[0]], order=degree, mode="reflect")
        np.testing.assert_allclose(out[c], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [3, 5])
def test_spline_warp_long_axis(degree):
    # Axes over 1024 samples are prefiltered by a convolution instead of a matrix.
    rng = np.random.default_rng(35 + degree)
    x = rng.random((1, 1, 2, 1100))
    shift = rng.normal(0.0, 3.0, (2, 1100))
    flow = np.stack([shift, np.zeros_like(shift)])[None]
    out = _warp_spline(
        _spline_coefficients(torch.from_numpy(x), degree), torch.from_numpy(flow), degree
    ).numpy()[0, 0]
    for r in range(2):
        ref = ndi.map_coordinates(
            x[0, 0, r], [np.arange(1100) + shift[r]], order=degree, mode="reflect"
        )
        np.testing.assert_allclose(out[r], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [3, 5])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_spline_warp_short_axes_match_the_exact_extension(degree, n):
    rng = np.random.default_rng(40 + n)
    f = rng.random(n)
    shift = rng.normal(0.0, 2.0, n)
    out = _warp_spline(
        _spline_coefficients(torch.from_numpy(f).view(1, 1, 1, n), degree),
        torch.from_numpy(np.stack([shift, np.zeros(n)])).view(1, 2, 1, n),
        degree,
    ).numpy()[0, 0, 0]
    ref = _exact_spline_1d(f, np.arange(n) + shift, degree)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
    # On the pixel centres the interpolant is the image itself.
    at_centres = _warp_spline(
        _spline_coefficients(torch.from_numpy(f).view(1, 1, 1, n), degree),
        torch.zeros(1, 2, 1, n, dtype=torch.float64),
        degree,
    ).numpy()[0, 0, 0]
    np.testing.assert_allclose(at_centres, f, rtol=0, atol=1e-14)


def test_presmooth_is_an_equal_blur_of_both_images():
    a = _texture((48, 52), seed=31)
    b = _fourier_shift(a, 0.7, -0.4)
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    out = lucas_kanade(ta, tb, presmooth=1.5)
    ref = lucas_kanade(gaussian_blur(ta, 1.5), gaussian_blur(tb, 1.5), presmooth=0)
    torch.testing.assert_close(out.flow, ref.flow, rtol=0, atol=0)
    torch.testing.assert_close(out.valid, ref.valid)


@pytest.mark.parametrize("interpolation", ["quintic", "linear"])
def test_lucas_kanade_other_interpolations_op_contract(interpolation):
    a = np.stack([_texture((30, 34), seed=50 + k) for k in range(2)])
    b = np.stack([_fourier_shift(a[k], 0.6, -0.3) for k in range(2)])
    x = torch.from_numpy(np.stack([a, b], axis=1))
    flow, _ = check_op(_lk_pair, x, levels=2, iterations=3, interpolation=interpolation)
    err = np.hypot(flow[:, 0].numpy() - 0.6, flow[:, 1].numpy() + 0.3)[:, 8:-8, 8:-8]
    assert np.median(err) < 0.05
    small = x[:1, :, :14, :16].clone()

    def flow_only(inp: torch.Tensor) -> torch.Tensor:
        return _lk_pair(inp, sigma=1.5, iterations=2, interpolation=interpolation).flow

    check_op(flow_only, small, gradcheck=True)


# ---------------------------------------------------------------- real photographs
#
# 8-bit photographs (scikit-image's samples, luma), moved by a known translation or
# a smooth field with methods independent of lucas_kanade, then quantized to uint8
# again: a translation by a Fourier shift of the mirror extension of the photo's
# central 256 x 256 region (exact for the band-limited region: the extension is
# periodic and continuous), a smooth
# field by scipy's quintic spline (exact for the photo's quintic-spline interpolant).
# The interior (12 px from the border) of a 192 x 192 centre crop is scored on its
# valid pixels: median of each error component (the bias) and of the endpoint error.

PHOTOS = ["camera", "astronaut", "coffee", "chelsea"]
CROP = 192


@functools.lru_cache(maxsize=8)
def _photo_luma(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    img = getattr(data, name)().astype(np.float64) / 255.0
    return img if img.ndim == 2 else img[..., :3] @ np.array([0.299, 0.587, 0.114])


REGION = 256  # the region around the centre that is moved; CROP of it is scored


def _region(name: str) -> np.ndarray:
    g = _photo_luma(name)
    h, w = g.shape
    return g[(h - REGION) // 2 : (h + REGION) // 2, (w - REGION) // 2 : (w + REGION) // 2]


@functools.lru_cache(maxsize=8)
def _mirror_spectrum(name: str) -> np.ndarray:
    g = _region(name)
    return np.fft.fft2(np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]]))


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0


def _centre(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    return x[(h - CROP) // 2 : (h + CROP) // 2, (w - CROP) // 2 : (w + CROP) // 2]


def _translated_pair(name: str, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    g = _region(name)
    moved = np.real(np.fft.ifft2(ndi.fourier_shift(_mirror_spectrum(name), (dy, dx))))
    return _quantize(_centre(g)), _quantize(_centre(moved[:REGION, :REGION]))


def _field(xs, ys, offset, amplitude, wavelength):
    ux = offset[0] + amplitude * np.sin(2 * np.pi * ys / wavelength)
    uy = offset[1] + amplitude * np.cos(2 * np.pi * xs / wavelength)
    return ux, uy


def _field_pair(name: str, offset, amplitude, wavelength):
    """b(p) = a(p - u(p)); the symmetric flow d(p) solves d = u(p + d/2)."""
    g = _photo_luma(name)
    h, w = g.shape
    y0, x0 = (h - CROP) // 2, (w - CROP) // 2
    ys, xs = np.mgrid[y0 : y0 + CROP, x0 : x0 + CROP].astype(np.float64)
    ux, uy = _field(xs, ys, offset, amplitude, wavelength)
    moved = ndi.map_coordinates(g, [ys - uy, xs - ux], order=5, mode="mirror")
    dx, dy = ux, uy
    for _ in range(40):  # a contraction: |grad u| / 2 < 0.01
        dx, dy = _field(xs + dx / 2, ys + dy / 2, offset, amplitude, wavelength)
    return _quantize(_centre(g)), _quantize(moved), dx, dy


def _photo_scores(a, b, truth_x, truth_y, **kwargs):
    result = lucas_kanade(torch.from_numpy(a)[None], torch.from_numpy(b)[None], **kwargs)
    flow = result.flow.numpy()[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    valid = result.valid.numpy()[0, MARGIN:-MARGIN, MARGIN:-MARGIN]
    tx = truth_x if np.isscalar(truth_x) else truth_x[MARGIN:-MARGIN, MARGIN:-MARGIN]
    ty = truth_y if np.isscalar(truth_y) else truth_y[MARGIN:-MARGIN, MARGIN:-MARGIN]
    ex = (flow[0] - tx)[valid]
    ey = (flow[1] - ty)[valid]
    return np.median(ex), np.median(ey), np.median(np.hypot(ex, ey)), valid.mean()


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(
    ("dx", "dy"), [(0.25, 0.0), (0.5, 0.0), (1.5, 0.0), (1.3, -0.7), (-0.6, 1.9), (1.8, -1.1)]
)
def test_lucas_kanade_unbiased_on_translated_photos(name, dx, dy):
    a, b = _translated_pair(name, dx, dy)
    bias_x, bias_y, epe, valid = _photo_scores(a, b, dx, dy)
    assert valid > 0.8
    assert abs(bias_x) <= 0.01
    assert abs(bias_y) <= 0.01
    assert epe <= 0.05


@pytest.mark.parametrize("name", PHOTOS)
def test_bilinear_sampling_fails_the_bias_bound_on_photos(name):
    # The same measure can fail: the former bilinear half-warps are biased by
    # 0.012-0.017 px at dx = 0.5 (their phase errors at -d/2 and +d/2 add up).
    a, b = _translated_pair(name, 0.5, 0.0)
    bias_x, _, _, _ = _photo_scores(a, b, 0.5, 0.0, interpolation="linear")
    assert bias_x > 0.01


@pytest.mark.parametrize("name", PHOTOS)
def test_lucas_kanade_on_a_smooth_field_over_photos(name):
    # |u| up to 2.2 px, |grad u| <= 0.012 per px: the window sees a nearly constant flow.
    a, b, dx, dy = _field_pair(name, (0.3, 0.2), 1.5, 768.0)
    assert np.hypot(dx, dy).max() > 2.0
    bias_x, bias_y, epe, valid = _photo_scores(a, b, dx, dy)
    assert valid > 0.8
    assert abs(bias_x) <= 0.01
    assert abs(bias_y) <= 0.01
    assert epe <= 0.05


@pytest.mark.parametrize("name", PHOTOS)
def test_lucas_kanade_pyramid_on_photos(name):
    for dx, dy in [(5.7, -4.3), (-6.2, 3.6)]:
        a, b = _translated_pair(name, dx, dy)
        bias_x, bias_y, epe, valid = _photo_scores(a, b, dx, dy, levels=3)
        assert valid > 0.8
        assert abs(bias_x) <= 0.01
        assert abs(bias_y) <= 0.01
        assert epe <= 0.1
    a, b, fx, fy = _field_pair(name, (5.0, -3.5), 1.0, 512.0)
    assert np.hypot(fx, fy).max() > 6.0
    bias_x, bias_y, epe, valid = _photo_scores(a, b, fx, fy, levels=3)
    assert valid > 0.8
    assert epe <= 0.1
