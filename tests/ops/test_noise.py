from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ops import dog_band_sigmas, dog_noise, dog_peak_frequency, dog_transfer
from pipeline.errors import InvalidArgumentError

BANDS = [(0.05, 0.2), (0.02, 0.08), (0.1, 0.4), (0.25, 0.5), (0.08, 0.12), (0.01, 0.3)]


def _np_transfer(f: np.ndarray, s1: float, s2: float) -> np.ndarray:
    return np.exp(-2 * np.pi**2 * s1**2 * f**2) - np.exp(-2 * np.pi**2 * s2**2 * f**2)


def _radial_power(noise: np.ndarray, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of planes ``(..., H, W)``: (bin centres, power)."""
    h, w = noise.shape[-2:]
    power = (np.abs(np.fft.fft2(noise)) ** 2).reshape(-1, h, w).mean(axis=0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    edges = np.arange(0.0, 0.5 + bin_width, bin_width)
    which = np.digitize(f.ravel(), edges) - 1
    keep = (which >= 0) & (which < len(edges) - 1) & (f.ravel() > 0)
    sums = np.bincount(which[keep], weights=power.ravel()[keep], minlength=len(edges) - 1)
    counts = np.bincount(which[keep], minlength=len(edges) - 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    ok = counts > 0
    return centres[ok], sums[ok] / counts[ok]


# ---------------------------------------------------------------- band -> sigmas


@pytest.mark.parametrize("band", BANDS)
def test_band_sigmas_put_the_power_peak_at_the_band_centre(band):
    s1, s2 = dog_band_sigmas(band)
    assert s2 / s1 == pytest.approx(band[1] / band[0], rel=1e-12)
    # Independent: dense grid argmax of the power |H|^2 in NumPy.
    f = np.linspace(1e-6, 0.75, 1_500_001)
    peak = f[np.argmax(_np_transfer(f, s1, s2) ** 2)]
    assert peak == pytest.approx(math.sqrt(band[0] * band[1]), abs=1e-6)
    assert band[0] < peak < band[1]
    assert dog_peak_frequency(s1, s2) == pytest.approx(peak, abs=1e-6)


@pytest.mark.parametrize(("s1", "s2"), [(1.0, 1.6), (0.5, 4.0), (3.0, 3.3)])
def test_peak_frequency_formula(s1, s2):
    f = np.linspace(1e-6, 0.75, 1_500_001)
    assert dog_peak_frequency(s1, s2) == pytest.approx(
        f[np.argmax(_np_transfer(f, s1, s2))], abs=1e-6
    )
    assert dog_transfer(0.13, s1, s2) == pytest.approx(_np_transfer(np.float64(0.13), s1, s2))
    t = dog_transfer(torch.tensor([0.0, 0.13], dtype=torch.float64), s1, s2)
    np.testing.assert_allclose(t.numpy(), _np_transfer(np.array([0.0, 0.13]), s1, s2))


def test_narrowest_dog_spans_about_1_2_octaves():
    # The documented limit: as k -> 1 the half-power band tends to 0.62 f* .. 1.44 f*.
    s1, s2 = dog_band_sigmas((0.1, 0.1 * (1 + 1e-6)))
    f = np.linspace(1e-4, 0.5, 2_000_001)
    power = _np_transfer(f, s1, s2) ** 2
    above = f[power >= 0.5 * power.max()]
    centre = math.sqrt(0.1 * 0.1 * (1 + 1e-6))
    assert above[0] / centre == pytest.approx(0.62, abs=0.005)
    assert above[-1] / centre == pytest.approx(1.44, abs=0.005)


@pytest.mark.parametrize(
    "band", [(0.2, 0.1), (0.0, 0.1), (0.1, 0.6), (0.1, 0.1), (0.1,), "ab", 0.1, (0.1, None)]
)
def test_bad_band(band):
    with pytest.raises(
        InvalidArgumentError, match="band must be a pair .*0 < f_low < f_high <= 0.5"
    ):
        dog_band_sigmas(band)
    with pytest.raises(InvalidArgumentError, match="band must be a pair"):
        dog_noise((1, 8, 8), band=band, rms=0.1)


def test_peak_frequency_bad_sigmas():
    with pytest.raises(InvalidArgumentError, match="0 < sigma1 < sigma2"):
        dog_peak_frequency(2.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="sigma1 must be >= 0"):
        dog_peak_frequency(-1.0, 1.0)


# ---------------------------------------------------------------- dog_noise


@pytest.mark.parametrize("band", BANDS)
def test_noise_power_spectrum_peaks_inside_the_band(band):
    g = torch.Generator().manual_seed(20)
    noise = dog_noise((24, 1, 128, 128), band=band, rms=0.1, generator=g, dtype=torch.float64)
    centres, power = _radial_power(noise.numpy(), bin_width=1 / 128)
    peak = centres[np.argmax(power)]
    assert band[0] <= peak <= band[1], (peak, band)
    # And the measured spectrum follows |H|^2 (the filter really is this DoG).
    s1, s2 = dog_band_sigmas(band)
    model = _np_transfer(centres, s1, s2) ** 2
    strong = model > 0.25 * model.max()
    ratio = power[strong] / model[strong]
    assert ratio.std() / ratio.mean() < 0.2


def _np_dog_noise(white: np.ndarray, band, rms) -> np.ndarray:
    """Reference: NumPy FFT filtering by the documented H and per-sample normalization."""
    s1, s2 = dog_band_sigmas(band)
    h, w = white.shape[-2:]
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * _np_transfer(f, s1, s2)))
    flat = out.reshape(out.shape[0], -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat = flat * (rms / np.sqrt((flat**2).mean(axis=1, keepdims=True)))
    return flat.reshape(out.shape)


@pytest.mark.parametrize("shape", [(3, 2, 20, 17), (4, 1, 9, 32), (2, 3, 1, 24)])
def test_noise_matches_numpy_fft_reference(shape):
    g = torch.Generator().manual_seed(21)
    out = dog_noise(shape, band=(0.05, 0.3), rms=0.07, generator=g, dtype=torch.float64)
    white = torch.randn(shape, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    ref = _np_dog_noise(white.numpy(), (0.05, 0.3), 0.07)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 2e-3)]
)
def test_noise_each_sample_has_zero_mean_and_the_exact_rms(dtype, rtol):
    g = torch.Generator().manual_seed(22)
    out = dog_noise((2, 3, 3, 40, 36), band=(0.03, 0.25), rms=0.08, generator=g, dtype=dtype)
    assert out.dtype == dtype
    assert out.shape == (2, 3, 3, 40, 36)
    samples = out.double().reshape(6, -1)
    np.testing.assert_allclose(samples.mean(dim=1).numpy(), 0.0, atol=0.08 * rtol)
    rms = samples.square().mean(dim=1).sqrt().numpy()
    np.testing.assert_allclose(rms, 0.08, rtol=rtol)
    # Channels are not normalized one by one: their RMS differ.
    per_channel = out.double().reshape(6, 3, -1).square().mean(dim=2).sqrt()
    assert (per_channel.amax(dim=1) - per_channel.amin(dim=1)).min() > 1e-4


def test_noise_is_reproducible_and_seeds_differ():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return dog_noise((2, 3, 32, 32), band=(0.05, 0.2), rms=0.1, generator=g)

    assert torch.equal(draw(5), draw(5))
    a, b = draw(5), draw(6)
    assert (a - b).abs().max() > 0.05
    corr = float((a * b).mean() / (a.square().mean() * b.square().mean()).sqrt())
    assert abs(corr) < 0.1


def test_noise_samples_of_a_batch_are_independent():
    g = torch.Generator().manual_seed(23)
    out = dog_noise((2, 1, 64, 64), band=(0.1, 0.4), rms=1.0, generator=g)
    assert abs(float((out[0] * out[1]).mean())) < 0.1


def test_noise_device_and_generator_rules(device):
    g = torch.Generator().manual_seed(24)
    out = dog_noise((2, 3, 16, 16), band=(0.1, 0.3), rms=0.2, generator=g, device=device)
    assert out.device.type == device.type
    ref = dog_noise(
        (2, 3, 16, 16), band=(0.1, 0.3), rms=0.2, generator=torch.Generator().manual_seed(24)
    )
    # A CPU generator draws on the CPU whatever the device: same noise everywhere.
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)
    assert dog_noise((2, 3, 8, 8), band=(0.1, 0.3), rms=0.2).device.type == "cpu"


def test_noise_zero_rms_and_empty_shapes():
    assert torch.equal(dog_noise((1, 3, 8, 8), band=(0.1, 0.3), rms=0.0), torch.zeros(1, 3, 8, 8))
    assert dog_noise((0, 3, 8, 8), band=(0.1, 0.3), rms=0.1).shape == (0, 3, 8, 8)
    assert dog_noise((2, 0, 8, 8), band=(0.1, 0.3), rms=0.1).shape == (2, 0, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (8, 8)}, r"shape must be a sequence \(\*, C, H, W\) of at least 3 ints"),
        ({"shape": (1, -1, 8)}, "shape must be a sequence"),
        ({"shape": "abc"}, "shape must be a sequence"),
        ({"shape": (2, 3, 1, 1)}, r"shape must have H \* W >= 2"),
        ({"rms": -0.1}, "rms must be >= 0, got -0.1"),
        ({"rms": "x"}, "rms must be a number >= 0"),
        ({"dtype": torch.int32}, "dtype must be a floating-point torch.dtype, got torch.int32"),
    ],
)
def test_noise_bad_arguments(kwargs, match):
    args = {"shape": (1, 3, 8, 8), "band": (0.1, 0.3), "rms": 0.1} | kwargs
    shape = args.pop("shape")
    with pytest.raises(InvalidArgumentError, match=match):
        dog_noise(shape, **args)
