from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from ops import (
    adjust_shadows_highlights,
    default_tone_sigma,
    invert,
    luminance,
    shadows_highlights,
)
from ops.color import _luminance_elementwise
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import check_op, tol


def _rand(shape, seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


# ---------------------------------------------------------------- invert


@pytest.mark.parametrize("max_value", [1.0, 255.0, 0.5])
def test_invert_float_matches_numpy(max_value):
    a = np.random.default_rng(0).random((2, 3, 9, 7)) * max_value
    out = invert(torch.from_numpy(a), max_value=max_value)
    np.testing.assert_array_equal(out.numpy(), np.float64(max_value) - a)


def test_invert_op_contract(device, dtype):
    x = _rand((3, 3, 10, 12), 1, device, dtype)
    out = check_op(invert, x)
    ref = 1.0 - x.double().cpu().numpy()
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, **tol(dtype))
    check_op(invert, x.double(), gradcheck=True)


@pytest.mark.parametrize(("dtype", "top"), [(torch.uint8, 255), (torch.uint16, 65535)])
def test_invert_integer_dtypes(device, dtype, top):
    rng = np.random.default_rng(2)
    a = rng.integers(0, top + 1, size=(4, 3, 6, 5), dtype=np.int64)
    a[0, 0, 0, :2] = (0, top)  # both ends of the range
    x = torch.from_numpy(a).to(dtype).to(device)
    out = check_op(invert, x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.cpu().to(torch.int64).numpy(), top - a)
    np.testing.assert_array_equal(invert(x, max_value=top).cpu().to(torch.int64).numpy(), top - a)


def test_invert_twice_is_identity_for_integers():
    x = torch.randint(0, 65536, (2, 1, 4, 4), dtype=torch.int64).to(torch.uint16)
    assert torch.equal(invert(invert(x)), x)


def test_invert_empty_batch():
    assert invert(torch.rand(0, 3, 4, 4)).shape == (0, 3, 4, 4)
    assert invert(torch.zeros(0, 3, 4, 4, dtype=torch.uint8)).dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.bool, torch.uint32])
def test_invert_rejects_other_dtypes(dtype):
    with pytest.raises(InvalidArgumentError, match=f"x must have a floating-point.*got {dtype}"):
        invert(torch.zeros(1, 3, 4, 4, dtype=dtype))


def test_invert_rejects_bad_max_value():
    with pytest.raises(InvalidArgumentError, match="max_value must be 1.0 .* or 255.*got 2.0"):
        invert(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), max_value=2.0)
    with pytest.raises(InvalidArgumentError, match="max_value must be a finite number, got nan"):
        invert(torch.rand(1, 3, 4, 4), max_value=float("nan"))
    with pytest.raises(InvalidArgumentError, match="max_value must be a finite number, got '1'"):
        invert(torch.rand(1, 3, 4, 4), max_value="1")
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(\*, C, H, W\)"):
        invert(torch.rand(4, 4))


# ---------------------------------------------------------------- luminance


def test_luminance_matches_numpy():
    a = np.random.default_rng(3).random((2, 3, 11, 13))
    out = luminance(torch.from_numpy(a)).numpy()
    ref = 0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2]
    np.testing.assert_allclose(out, ref[:, None], rtol=0, atol=1e-15)


def test_luminance_op_contract(device, dtype):
    x = _rand((3, 3, 9, 8), 4, device, dtype)
    out = check_op(luminance, x)
    assert out.shape == (3, 1, 9, 8)
    a = x.double().cpu().numpy()
    ref = (0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2])[:, None]
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, **tol(dtype))
    check_op(luminance, x.double(), gradcheck=True)


def test_luminance_elementwise_path_matches_numpy():
    # The form used off the CPU, checked here on the CPU.
    a = np.random.default_rng(15).random((2, 3, 7, 9))
    out = _luminance_elementwise(torch.from_numpy(a)).numpy()
    ref = 0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2]
    np.testing.assert_allclose(out, ref[:, None], rtol=0, atol=1e-15)


def test_luminance_gray_passes_through_as_copy():
    x = torch.rand(2, 1, 5, 5)
    out = luminance(x)
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()


def test_luminance_empty_batch_and_bad_channels():
    assert luminance(torch.rand(0, 3, 4, 4)).shape == (0, 1, 4, 4)
    with pytest.raises(InvalidArgumentError, match="x must have 1 .* or 3 .* channels, got 4"):
        luminance(torch.rand(1, 4, 4, 4))
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        luminance(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------- real photographs


def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as float64 RGB (3, H, W) in [0, 1] (gray repeated)."""
    data = pytest.importorskip("skimage.data")
    img = getattr(data, name)().astype(np.float64) / 255.0
    return np.stack([img] * 3) if img.ndim == 2 else img[..., :3].transpose(2, 0, 1)


def _decile_changes(out: np.ndarray, img: np.ndarray) -> tuple[float, float]:
    """Mean change (over channels) of the darkest and the brightest 10 % of pixels, by luma."""
    luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    low, high = np.quantile(luma, [0.1, 0.9])
    change = (out - img).mean(axis=0)
    return float(change[luma <= low].mean()), float(change[luma >= high].mean())


# ---------------------------------------------------------------- shadows_highlights (source)


def _source_reference(a: np.ndarray, gamma_shadows, gamma_highlights, kernel_size, sigma):
    """The source's formula, transcribed line by line in float64 NumPy/SciPy.

    The kernel is built here (normalized Gaussian at the kernel_size integer
    offsets) and applied with scipy's correlate1d, mode="reflect" (d c b a | a b c d).
    """
    radius = kernel_size // 2
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-3]):
        img = a[idx]
        gray = img[0] if img.shape[0] == 1 else 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        blurred = ndi.correlate1d(gray, kernel, axis=1, mode="reflect")
        blurred = ndi.correlate1d(blurred, kernel, axis=0, mode="reflect")
        highlights = np.clip(gray - blurred, 0, None)
        shadows = np.clip(blurred - gray, 0, None)
        out[idx] = img ** (
            gamma_highlights * highlights + gamma_shadows * shadows + 1 * (1 - highlights - shadows)
        )
    return out


@pytest.mark.parametrize(
    ("gamma_shadows", "gamma_highlights", "kernel_size", "sigma"),
    [
        (0.5, 1.0, 7, 2.5),
        (1.0, 2.0, 7, 2.5),
        (0.3, 3.0, 7, 2.5),
        (0.7, 1.4, 5, 1.0),
        (2.0, 0.5, 9, 4.0),
    ],
)
def test_source_shadows_highlights_matches_the_formula(
    gamma_shadows, gamma_highlights, kernel_size, sigma
):
    a = np.random.default_rng(21).random((2, 3, 24, 30)) ** 2
    out = shadows_highlights(
        torch.from_numpy(a),
        gamma_shadows=gamma_shadows,
        gamma_highlights=gamma_highlights,
        kernel_size=kernel_size,
        sigma=sigma,
    )
    ref = _source_reference(a, gamma_shadows, gamma_highlights, kernel_size, sigma)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-13)
    assert np.abs(ref - a).max() > 0.02  # the formula does change the image


def test_source_shadows_highlights_defaults_gray_and_photo():
    a = np.random.default_rng(22).random((3, 1, 20, 17))
    out = shadows_highlights(torch.from_numpy(a), gamma_shadows=0.6, gamma_highlights=1.7)
    np.testing.assert_allclose(out.numpy(), _source_reference(a, 0.6, 1.7, 7, 2.5), atol=1e-13)
    photo = _photo("coffee")[:, :96, :128]
    out = shadows_highlights(torch.from_numpy(photo), gamma_shadows=0.5, gamma_highlights=2.0)
    ref = _source_reference(photo, 0.5, 2.0, 7, 2.5)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-13)


def test_source_shadows_highlights_identity_and_masks(dtype):
    x = _rand((4, 3, 33, 29), 23, dtype=dtype)
    assert torch.equal(shadows_highlights(x), x)  # x ** 1, exactly
    assert torch.equal(shadows_highlights(x, gamma_shadows=0.3, kernel_size=1, sigma=2.5), x)
    # A flat image has no local contrast: both masks are 0 (to the blur's rounding)
    # whatever the gammas.
    flat = torch.full((1, 3, 16, 16), 0.4, dtype=dtype)
    torch.testing.assert_close(
        shadows_highlights(flat, gamma_shadows=0.2, gamma_highlights=5.0), flat, **tol(dtype)
    )


def test_source_shadows_highlights_op_contract(device, dtype):
    x = _rand((3, 3, 20, 18), 24, device, dtype)
    out = check_op(shadows_highlights, x, gamma_shadows=0.5, gamma_highlights=2.0)
    ref = _source_reference(x.double().cpu().numpy(), 0.5, 2.0, 7, 2.5)
    np.testing.assert_allclose(
        out.double().cpu().numpy(), ref, **{k: 2 * v for k, v in tol(dtype).items()}
    )
    # Away from 0, where x ** e has a finite derivative.
    xd = 0.05 + 0.95 * _rand((2, 3, 9, 8), 25, dtype=torch.float64)
    check_op(shadows_highlights, xd, gamma_shadows=0.6, gamma_highlights=1.8, gradcheck=True)


def test_source_shadows_highlights_negative_values_and_empty():
    x = _rand((1, 3, 12, 12), 26, dtype=torch.float64) * 1.4 - 0.2
    out = shadows_highlights(x, gamma_shadows=0.5, gamma_highlights=2.0)
    assert torch.isfinite(out).all()
    assert torch.equal(out[x < 0], torch.zeros_like(out[x < 0]))  # 0 ** e = 0
    above = x > 1  # kept above 1, no clamp
    assert bool((out[above] > 1).all())
    assert shadows_highlights(torch.rand(0, 3, 8, 8)).shape == (0, 3, 8, 8)


def test_source_shadows_lift_dark_pixels_more_than_bright_on_a_photo():
    # camera: the darkest tenth of the pixels gains >= 4x what the brightest tenth gains.
    # The source's masks are local contrast, so this is a property of the photo too: see
    # docs/ops.md for the same measure on other photographs (where it does not always hold).
    img = _photo("camera")
    out = shadows_highlights(torch.from_numpy(img), gamma_shadows=0.5).numpy()
    dark, bright = _decile_changes(out, img)
    assert dark > 0
    assert dark >= 4 * abs(bright)
    out = shadows_highlights(torch.from_numpy(img), gamma_highlights=2.0).numpy()
    dark, bright = _decile_changes(out, img)
    assert bright < 0
    assert -bright >= 4 * abs(dark)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma_shadows": 0.0}, "gamma_shadows must be > 0, got 0.0"),
        ({"gamma_highlights": -1.0}, "gamma_highlights must be > 0, got -1.0"),
        ({"gamma_highlights": "a"}, "gamma_highlights must be a number > 0"),
        ({"kernel_size": 6}, "kernel_size must be odd, got 6"),
        ({"kernel_size": 0}, "kernel_size must be >= 1, got 0"),
        ({"kernel_size": 7.0}, "kernel_size must be an integer, got 7.0"),
        ({"sigma": 0.0}, "sigma must be > 0, got 0.0"),
    ],
)
def test_source_shadows_highlights_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        shadows_highlights(torch.rand(1, 3, 8, 8), **kwargs)
    with pytest.raises(InvalidArgumentError, match="x must have 1 .* or 3 .* channels, got 2"):
        shadows_highlights(torch.rand(1, 2, 8, 8))


# ---------------------------------------------------------------- adjust_shadows_highlights


def _reference_shadows_highlights(a: np.ndarray, shadows, highlights, sigma) -> np.ndarray:
    """The documented formula in float64 NumPy, with SciPy's Gaussian blur."""
    out = np.empty_like(a)
    for idx in np.ndindex(a.shape[:-3]):
        c = np.clip(a[idx], 0.0, 1.0)
        luma = c[0] if c.shape[0] == 1 else 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        mask = np.clip(ndi.gaussian_filter(luma, sigma, mode="reflect", truncate=4.0), 0, 1)
        dark = (1 - np.maximum(luma, mask)) ** 2
        bright = np.minimum(luma, mask) ** 2
        exponent = 2.0 ** (highlights * bright - shadows * dark)
        with np.errstate(divide="ignore"):
            gain = np.where(luma > 0, luma ** (exponent - 1), 1.0)
        peak = c.max(axis=0)
        out[idx] = c * (gain / np.maximum(1.0, gain * peak))
    return out


def _former_gain_curve(a: np.ndarray, shadows, highlights, sigma) -> np.ndarray:
    """The gain curve this function used before (an exposure gain 2 ** (s (1-M)^2 - h M^2))."""
    luma = 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    mask = np.clip(ndi.gaussian_filter(luma, sigma, mode="reflect", truncate=4.0), 0, 1)
    gain = 2.0 ** (shadows * (1 - mask) ** 2 - highlights * mask**2)
    return a * (gain / np.maximum(1.0, gain * a.max(axis=0)))


@pytest.mark.parametrize(
    ("shadows", "highlights", "sigma"),
    [(0.6, 0.0, 2.0), (0.0, 0.8, 3.5), (-0.4, -0.7, 1.0), (1.0, 1.0, None), (0.3, -1.0, 0.0)],
)
def test_shadows_highlights_matches_reference(shadows, highlights, sigma):
    a = np.random.default_rng(5).random((2, 3, 24, 30)) ** 2  # skewed dark: both regions
    out = adjust_shadows_highlights(
        torch.from_numpy(a), shadows=shadows, highlights=highlights, sigma=sigma
    )
    s = default_tone_sigma(24, 30) if sigma is None else sigma
    ref = _reference_shadows_highlights(a, shadows, highlights, s)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_shadows_highlights_is_moroneys_exponent_at_sigma_zero():
    # shadows = highlights = 1, no blur: L -> L ** (2 ** (2 L - 1)) (Moroney 2000, mask = L).
    a = np.random.default_rng(15).random((1, 1, 12, 14))
    out = adjust_shadows_highlights(torch.from_numpy(a), shadows=1.0, highlights=1.0, sigma=0.0)
    np.testing.assert_allclose(out.numpy(), a ** (2.0 ** (2 * a - 1)), rtol=0, atol=1e-14)


def test_shadows_highlights_gray_matches_reference():
    a = np.random.default_rng(6).random((3, 1, 20, 17))
    out = adjust_shadows_highlights(torch.from_numpy(a), shadows=0.5, highlights=0.5, sigma=2.0)
    ref = _reference_shadows_highlights(a, 0.5, 0.5, 2.0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_shadows_highlights_op_contract(device, dtype):
    x = _rand((3, 3, 20, 18), 7, device, dtype)
    out = check_op(adjust_shadows_highlights, x, shadows=0.5, highlights=0.4, sigma=1.5)
    ref = _reference_shadows_highlights(x.double().cpu().numpy(), 0.5, 0.4, 1.5)
    np.testing.assert_allclose(
        out.double().cpu().numpy(), ref, **{k: 2 * v for k, v in tol(dtype).items()}
    )
    xd = 0.05 + 0.95 * _rand((2, 3, 8, 7), 8, dtype=torch.float64)
    check_op(adjust_shadows_highlights, xd, shadows=0.7, highlights=-0.5, sigma=1.0, gradcheck=True)


def test_shadows_highlights_identity_at_zero(dtype):
    x = _rand((4, 3, 33, 29), 9, dtype=dtype)
    assert torch.equal(adjust_shadows_highlights(x), x)
    assert torch.equal(adjust_shadows_highlights(x, shadows=0.0, highlights=0.0, sigma=0.0), x)
    gray = _rand((2, 1, 16, 16), 10, dtype=dtype)
    assert torch.equal(adjust_shadows_highlights(gray, sigma=3.0), gray)


@pytest.mark.parametrize("name", ["camera", "coffee"])
@pytest.mark.parametrize("amount", [0.3, 1.0])
def test_shadows_highlights_are_selective_on_photos(name, amount):
    img = _photo(name)
    x = torch.from_numpy(img)
    dark, bright = _decile_changes(adjust_shadows_highlights(x, shadows=amount).numpy(), img)
    assert dark > 0.02 * amount
    assert dark >= 4 * abs(bright)
    dark, bright = _decile_changes(adjust_shadows_highlights(x, highlights=amount).numpy(), img)
    assert bright < -0.01 * amount
    assert -bright >= 4 * abs(dark)
    # The former gain curve fails the shadows half of this test on the same photo:
    # an exposure gain moves bright pixels more than dark ones in absolute terms.
    s = default_tone_sigma(*img.shape[-2:])
    dark, bright = _decile_changes(_former_gain_curve(img, amount, 0.0, s), img)
    assert dark < 4 * abs(bright)


def _two_region_image(seed: int) -> torch.Tensor:
    """Left half dark (0.05-0.25), right half bright (0.7-0.95), random colours."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(4, 3, 48, 96, dtype=torch.float64)
    x[..., :48] = 0.05 + 0.2 * torch.rand(4, 3, 48, 48, generator=g, dtype=torch.float64)
    x[..., 48:] = 0.7 + 0.25 * torch.rand(4, 3, 48, 48, generator=g, dtype=torch.float64)
    return x


def _region_change(out: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    # Stay 3 sigma away from the boundary so each region's mask is its own.
    dark = (out - x)[..., 6:42, 4:36].mean().item()
    bright = (out - x)[..., 6:42, 60:92].mean().item()
    return dark, bright


@pytest.mark.parametrize("amount", [0.3, 1.0])
def test_shadows_lift_dark_regions_more_than_bright(amount):
    x = _two_region_image(11)
    out = adjust_shadows_highlights(x, shadows=amount, sigma=2.0)
    dark, bright = _region_change(out, x)
    assert dark > 0.02 * amount
    assert dark > 10 * abs(bright)
    out_neg = adjust_shadows_highlights(x, shadows=-amount, sigma=2.0)
    dark_neg, bright_neg = _region_change(out_neg, x)
    assert dark_neg < -0.01 * amount
    assert -dark_neg > 10 * abs(bright_neg)


@pytest.mark.parametrize("amount", [0.3, 1.0])
def test_highlights_lower_bright_regions_more_than_dark(amount):
    x = _two_region_image(12)
    out = adjust_shadows_highlights(x, highlights=amount, sigma=2.0)
    dark, bright = _region_change(out, x)
    assert bright < -0.02 * amount
    assert -bright > 10 * abs(dark)
    dark_neg, bright_neg = _region_change(
        adjust_shadows_highlights(x, highlights=-amount, sigma=2.0), x
    )
    assert bright_neg > 0.01 * amount  # bounded by the clamp at 1
    assert bright_neg > 10 * abs(dark_neg)


def test_shadows_highlights_effect_is_monotone_in_the_amount():
    x = _two_region_image(13)
    lifts = [
        _region_change(adjust_shadows_highlights(x, shadows=s, sigma=2.0), x)[0]
        for s in (-1.0, -0.5, 0.0, 0.5, 1.0)
    ]
    assert lifts == sorted(lifts)
    drops = [
        _region_change(adjust_shadows_highlights(x, highlights=h, sigma=2.0), x)[1]
        for h in (-1.0, -0.5, 0.0, 0.5, 1.0)
    ]
    assert drops == sorted(drops, reverse=True)


def test_shadows_highlights_range_and_colour_ratios():
    g = torch.Generator().manual_seed(14)
    x = torch.rand(3, 3, 40, 40, generator=g, dtype=torch.float64) * 1.4 - 0.2  # leaves [0, 1]
    out = adjust_shadows_highlights(x, shadows=1.0, highlights=-1.0, sigma=2.0)
    assert out.min() >= 0
    assert out.max() <= 1
    c = x.clamp(0, 1)
    torch.testing.assert_close(
        out, adjust_shadows_highlights(c, shadows=1.0, highlights=-1.0, sigma=2.0), rtol=0, atol=0
    )
    # Every channel of a pixel is scaled by the same factor, clamped or not.
    valid = c.min(dim=1).values > 0.05
    ratio = out / c.clamp(min=1e-12)
    spread = (ratio.amax(dim=1) - ratio.amin(dim=1))[valid]
    assert spread.max() < 1e-12
    # Pixels pushed past 1 are scaled as a whole: the brightest channel lands on 1.
    clipped = (ratio.amax(dim=1) * c.amax(dim=1) > 1 - 1e-12) & valid
    assert clipped.any()
    torch.testing.assert_close(out.amax(dim=1)[clipped], torch.ones_like(out.amax(dim=1)[clipped]))
    # Black pixels stay black (gain 1 where L = 0), finite.
    black = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(adjust_shadows_highlights(black, shadows=1.0, highlights=1.0), black)


def test_shadows_highlights_empty_and_bad_arguments():
    assert adjust_shadows_highlights(torch.rand(0, 3, 8, 8), shadows=0.5).shape == (0, 3, 8, 8)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(
        InvalidArgumentError, match=r"shadows must be a number in \[-1, 1\], got 1.5"
    ):
        adjust_shadows_highlights(x, shadows=1.5)
    with pytest.raises(InvalidArgumentError, match=r"highlights must be a number in \[-1, 1\]"):
        adjust_shadows_highlights(x, highlights="a")
    with pytest.raises(InvalidArgumentError, match="sigma must be >= 0, got -1.0"):
        adjust_shadows_highlights(x, sigma=-1.0)
    with pytest.raises(InvalidArgumentError, match="x must have 1 .* or 3 .* channels, got 2"):
        adjust_shadows_highlights(torch.rand(1, 2, 8, 8))
