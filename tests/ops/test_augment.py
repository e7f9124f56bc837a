from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ops import (
    Compose,
    DoGNoise,
    RandomGaussianBlur,
    RandomInvert,
    RandomResizedCrop,
    ShadowsHighlights,
    adjust_shadows_highlights,
    crop_resize,
    dog_noise,
    gaussian_blur,
    invert,
    shadows_highlights,
)
from pipeline.errors import InvalidArgumentError
from tests.ops.checker import tol


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _rand(shape, seed, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


AUGMENTATIONS = {
    "invert": lambda: RandomInvert(0.5),
    "dog_noise": lambda: DoGNoise(((0.03, 0.08), (0.15, 0.4)), (0.02, 0.1), p=0.7),
    "shadows_highlights": lambda: ShadowsHighlights((-0.5, 1.0), (-1.0, 0.8), p=0.8),
    "shadows_highlights_fixed": lambda: ShadowsHighlights(0.3, -0.2),
    "shadows_highlights_source": lambda: ShadowsHighlights(
        method="source", gamma_shadows=(0.3, 1.0), gamma_highlights=(1.0, 3.0), p=0.8
    ),
    "blur": lambda: RandomGaussianBlur((0.1, 1.5), p=0.6),
    "blur_fixed": lambda: RandomGaussianBlur(1.0, p=0.5),
    "compose": lambda: Compose(
        [RandomInvert(0.5), DoGNoise((0.05, 0.2), 0.08), RandomGaussianBlur((0.0, 1.0))]
    ),
}
SEEDS = [11, 12, 13, 14, 15]


# ---------------------------------------------------------------- determinism contract


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_batch_equals_samples_alone(name, device, dtype):
    aug = AUGMENTATIONS[name]()
    x = _rand((5, 3, 20, 24), 1, device, dtype)
    before = x.clone()
    out = aug(x, generators=_gens(SEEDS))
    assert torch.equal(x, before)
    assert out.dtype == dtype
    assert out.device == x.device
    assert out.shape == x.shape
    singles = torch.cat([aug(x[i : i + 1], generators=_gens([s])) for i, s in enumerate(SEEDS)])
    torch.testing.assert_close(out, singles, **tol(dtype))
    # Any other batch split, in any order, gives the same samples.
    order = [3, 0, 4]
    part = aug(x[order], generators=_gens([SEEDS[i] for i in order]))
    torch.testing.assert_close(part, out[order], **tol(dtype))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_same_seeds_same_output_other_seeds_differ(name):
    aug = AUGMENTATIONS[name]()
    x = _rand((5, 3, 16, 16), 2)
    a = aug(x, generators=_gens(SEEDS))
    assert torch.equal(a, aug(x, generators=_gens(SEEDS)))
    b = aug(x, generators=_gens([s + 100 for s in SEEDS]))
    if name == "shadows_highlights_fixed":  # fixed amounts, p = 1: nothing random
        assert torch.equal(a, b)
    else:
        assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_sample_takes_a_fixed_number_of_draws(name):
    aug = AUGMENTATIONS[name]()
    x = _rand((5, 3, 16, 16), 3)
    gens = _gens(SEEDS)
    aug(x, generators=gens)
    states = [g.get_state() for g in gens]
    # The same count for every sample whatever its coin: compare with seeds' own streams.
    counts = []
    for seed, state in zip(SEEDS, states, strict=True):
        probe = torch.Generator().manual_seed(seed)
        for k in range(12):
            if torch.equal(probe.get_state(), state):
                counts.append(k)
                break
            torch.rand((), generator=probe, dtype=torch.float64)
    assert len(counts) == len(SEEDS)
    assert len(set(counts)) == 1


def _draws(seed: int, n: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(n)]


def test_documented_draw_order():
    # RandomInvert: the coin u < p.
    for seed in range(20):
        (u,) = _draws(seed, 1)
        assert RandomInvert(0.4).sample_params(torch.Generator().manual_seed(seed)).apply == (
            u < 0.4
        )
    # ShadowsHighlights: coin, shadows, highlights.
    for seed in range(20):
        u = _draws(seed, 3)
        prm = ShadowsHighlights((-0.5, 1.0), 0.25, p=0.5).sample_params(
            torch.Generator().manual_seed(seed)
        )
        assert prm.apply == (u[0] < 0.5)
        assert prm.shadows == -0.5 + (1.0 - -0.5) * u[1]
        assert prm.highlights == 0.25
        assert (prm.gamma_shadows, prm.gamma_highlights) == (1.0, 1.0)
    # ShadowsHighlights(method="source"): coin, gamma_shadows, gamma_highlights.
    for seed in range(20):
        u = _draws(seed, 3)
        prm = ShadowsHighlights(
            method="source", gamma_shadows=(0.25, 1.0), gamma_highlights=2.0, p=0.5
        ).sample_params(torch.Generator().manual_seed(seed))
        assert prm.apply == (u[0] < 0.5)
        assert prm.gamma_shadows == 0.25 + (1.0 - 0.25) * u[1]
        assert prm.gamma_highlights == 2.0
        assert (prm.shadows, prm.highlights) == (0.0, 0.0)
    # RandomGaussianBlur: coin, sigma.
    u = _draws(7, 2)
    prm = RandomGaussianBlur((0.5, 2.5), p=0.9).sample_params(torch.Generator().manual_seed(7))
    assert (prm.apply, prm.sigma) == (u[0] < 0.9, 0.5 + (2.5 - 0.5) * u[1])
    # DoGNoise: coin, f_low, f_high, rms, then an int64 seed.
    g = torch.Generator().manual_seed(8)
    u = [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(4)]
    seed = int(torch.randint(0, 2**63 - 1, (), generator=g, dtype=torch.int64))
    prm = DoGNoise(((0.02, 0.06), (0.2, 0.3)), (0.01, 0.05)).sample_params(
        torch.Generator().manual_seed(8)
    )
    assert prm.apply == (u[0] < 1.0)
    assert prm.band == (0.02 + (0.06 - 0.02) * u[1], 0.2 + (0.3 - 0.2) * u[2])
    assert prm.rms == 0.01 + (0.05 - 0.01) * u[3]
    assert prm.seed == seed


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_coin_is_always_drawn_and_streams_stay_aligned(p):
    after = []
    for prob in (p, 0.5):
        g = torch.Generator().manual_seed(4)
        ShadowsHighlights(0.5, 0.5, p=prob).sample_params(g)
        after.append(float(torch.rand((), generator=g, dtype=torch.float64)))
    assert after[0] == after[1]


def test_coin_frequency_matches_p():
    aug = RandomInvert(0.3)
    hits = sum(aug.sample_params(torch.Generator().manual_seed(s)).apply for s in range(2000))
    # Binomial(2000, 0.3): sd 20.5; 5 sd either side.
    assert abs(hits - 600) < 103


# ---------------------------------------------------------------- each augmentation's effect


def test_random_invert_applies_to_its_samples_only():
    x = _rand((6, 3, 8, 8), 5)
    aug = RandomInvert(0.5)
    seeds = list(range(6))
    out = aug(x, generators=_gens(seeds))
    flags = [aug.sample_params(g).apply for g in _gens(seeds)]
    assert any(flags)
    assert not all(flags)
    for i, flag in enumerate(flags):
        assert torch.equal(out[i], invert(x[i]) if flag else x[i])


def test_random_invert_on_integer_images():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    out = RandomInvert(1.0)(x, generators=_gens(range(4)))
    assert out.dtype == torch.uint8
    assert torch.equal(out, 255 - x)


def test_dog_noise_adds_the_documented_mask():
    x = _rand((5, 3, 24, 20), 6, dtype=torch.float64)
    aug = DoGNoise(((0.03, 0.08), (0.15, 0.4)), (0.02, 0.1), p=0.6)
    out = aug(x, generators=_gens(SEEDS))
    params = [aug.sample_params(g) for g in _gens(SEEDS)]
    assert any(prm.apply for prm in params)
    assert not all(prm.apply for prm in params)
    for i, prm in enumerate(params):
        assert 0.03 <= prm.band[0] <= 0.08
        assert 0.15 <= prm.band[1] <= 0.4
        assert 0.02 <= prm.rms <= 0.1
        if not prm.apply:
            assert torch.equal(out[i], x[i])
            continue
        noise = dog_noise(
            (3, 24, 20),
            band=prm.band,
            rms=prm.rms,
            generator=torch.Generator().manual_seed(prm.seed),
            dtype=torch.float64,
        )
        torch.testing.assert_close(out[i] - x[i], noise, rtol=0, atol=1e-12)
        assert float((out[i] - x[i]).square().mean().sqrt()) == pytest.approx(prm.rms, rel=1e-9)


def test_shadows_highlights_augmentation_calls_the_function():
    x = _rand((5, 3, 20, 20), 7)
    aug = ShadowsHighlights((-1.0, 1.0), (-1.0, 1.0), p=0.7, sigma=2.0)
    out = aug(x, generators=_gens(SEEDS))
    params = [aug.sample_params(g) for g in _gens(SEEDS)]
    assert len({prm.apply for prm in params}) == 2
    for i, prm in enumerate(params):
        ref = (
            adjust_shadows_highlights(
                x[i], shadows=prm.shadows, highlights=prm.highlights, sigma=2.0
            )
            if prm.apply
            else x[i]
        )
        torch.testing.assert_close(out[i], ref, rtol=1e-6, atol=1e-6)


def test_shadows_highlights_augmentation_default_sigma():
    x = _rand((2, 3, 40, 60), 8)
    aug = ShadowsHighlights(0.8, 0.6)
    out = aug(x, generators=_gens([1, 2]))
    ref = adjust_shadows_highlights(x, shadows=0.8, highlights=0.6)  # sigma 0.05 * 40
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_shadows_highlights_source_augmentation_calls_the_function():
    x = _rand((5, 3, 20, 20), 17, dtype=torch.float64)
    aug = ShadowsHighlights(
        method="source", gamma_shadows=(0.2, 1.0), gamma_highlights=(1.0, 4.0), p=0.7
    )
    out = aug(x, generators=_gens(SEEDS))
    params = [aug.sample_params(g) for g in _gens(SEEDS)]
    assert len({prm.apply for prm in params}) == 2
    for i, prm in enumerate(params):
        ref = (
            shadows_highlights(
                x[i], gamma_shadows=prm.gamma_shadows, gamma_highlights=prm.gamma_highlights
            )
            if prm.apply
            else x[i]
        )
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-13)
    # kernel_size and sigma reach the function.
    aug = ShadowsHighlights(method="source", gamma_shadows=0.5, kernel_size=5, sigma=1.0)
    ref = shadows_highlights(x, gamma_shadows=0.5, kernel_size=5, sigma=1.0)
    torch.testing.assert_close(aug(x, generators=_gens(SEEDS)), ref, rtol=0, atol=1e-13)


def test_shadows_highlights_methods_take_the_same_draws():
    x = _rand((3, 3, 12, 12), 18)
    states = []
    for aug in (
        ShadowsHighlights((0.0, 1.0), (-1.0, 0.0), p=0.3),
        ShadowsHighlights(method="source", gamma_shadows=(0.5, 1.0), p=0.3),
    ):
        gens = _gens([1, 2, 3])
        aug(x, generators=gens)
        states.append([g.get_state() for g in gens])
    probe = _gens([1, 2, 3])
    for g in probe:
        _draws_from(g, 3)
    for k in range(3):
        assert torch.equal(states[0][k], probe[k].get_state())
        assert torch.equal(states[1][k], probe[k].get_state())


def _draws_from(g: torch.Generator, n: int) -> None:
    for _ in range(n):
        torch.rand((), generator=g, dtype=torch.float64)


def test_random_gaussian_blur_calls_the_function():
    x = _rand((5, 3, 20, 20), 9, dtype=torch.float64)
    aug = RandomGaussianBlur((0.2, 2.0), p=0.7)
    out = aug(x, generators=_gens(SEEDS))
    params = [aug.sample_params(g) for g in _gens(SEEDS)]
    assert len({prm.apply for prm in params}) == 2
    for i, prm in enumerate(params):
        assert 0.2 <= prm.sigma <= 2.0
        ref = gaussian_blur(x[i], prm.sigma) if prm.apply else x[i]
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 2, 6, 1030), (3, 1, 1100, 5)])
def test_random_gaussian_blur_long_axes(shape):
    x = _rand(shape, 19, dtype=torch.float64)
    aug = RandomGaussianBlur((0.0, 3.0), p=0.8)
    seeds = range(shape[0])
    out = aug(x, generators=_gens(seeds))
    for i, g in enumerate(_gens(seeds)):
        prm = aug.sample_params(g)
        ref = gaussian_blur(x[i], prm.sigma) if prm.apply else x[i]
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-12)


def test_compose_chains_with_the_same_generators():
    x = _rand((4, 3, 16, 16), 10)
    steps = [RandomInvert(0.5), ShadowsHighlights((0.0, 1.0)), RandomGaussianBlur((0.1, 1.0))]
    out = Compose(steps)(x, generators=_gens(range(4)))
    gens = _gens(range(4))
    ref = x
    for step in steps:
        ref = step(ref, generators=gens)
    assert torch.equal(out, ref)
    empty = Compose([])(x, generators=_gens(range(4)))
    assert torch.equal(empty, x)
    assert empty.data_ptr() != x.data_ptr()


def test_empty_batch():
    x = torch.rand(0, 3, 8, 8)
    for make in AUGMENTATIONS.values():
        assert make()(x, generators=[]).shape == (0, 3, 8, 8)


# ---------------------------------------------------------------- argument checks


def test_generators_must_match_the_batch():
    x = torch.rand(3, 3, 8, 8)
    aug = RandomInvert(0.5)
    with pytest.raises(
        InvalidArgumentError, match=r"generators must be a sequence of 3 .*got 2 items"
    ):
        aug(x, generators=_gens([1, 2]))
    with pytest.raises(InvalidArgumentError, match="generators must be a sequence of 3"):
        aug(x, generators=[1, 2, 3])
    with pytest.raises(
        InvalidArgumentError, match="generators must be a sequence of 3 .*got Generator"
    ):
        aug(x, generators=torch.Generator())
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(B, C, H, W\)"):
        aug(torch.rand(3, 8, 8), generators=_gens([1, 2, 3]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RandomInvert(1.5), r"p must be in \[0, 1\], got 1.5"),
        (lambda: DoGNoise((0.2, 0.1), 0.1), r"f_low must be < f_high, got \[0.2, 0.1\]"),
        (lambda: DoGNoise((0.1, 0.6), 0.1), r"the band must lie in \(0, 0.5\]"),
        (lambda: DoGNoise((0.05, 0.2), 0.0), r"rms must be > 0, got 0.0"),
        (lambda: DoGNoise((0.05, 0.2), (0.0, 0.1)), r"rms must be > 0, got \[0.0, 0.1\]"),
        (lambda: DoGNoise(((0.05, 0.2), (0.15, 0.3)), 0.1), "band must be a pair"),
        (lambda: DoGNoise(((0.2, 0.05), (0.25, 0.3)), 0.1), "band must be a pair"),
        (lambda: DoGNoise("ab", 0.1), "band must be a pair"),
        (lambda: DoGNoise((0.05, 0.2), (0.1, 0.05)), r"rms must be a number or a \(lo, hi\) range"),
        (lambda: DoGNoise((0.05, 0.2), -0.1), "rms must be"),
        (lambda: ShadowsHighlights(1.5), r"shadows must lie in \[-1, 1\], got 1.5"),
        (lambda: ShadowsHighlights(0.0, (-2.0, 0.0)), r"highlights must lie in \[-1, 1\]"),
        (lambda: ShadowsHighlights(0.0, sigma=-1.0), "sigma must be >= 0"),
        (
            lambda: ShadowsHighlights(method="gain"),
            r"method must be one of \['moroney', 'source'\], got 'gain'",
        ),
        (
            lambda: ShadowsHighlights(0.5, method="source"),
            "shadows is not a parameter of method='source', got shadows=0.5",
        ),
        (
            lambda: ShadowsHighlights(gamma_shadows=0.5),
            "gamma_shadows is not a parameter of method='moroney'",
        ),
        (
            lambda: ShadowsHighlights(kernel_size=5),
            "kernel_size is not a parameter of method='moroney'",
        ),
        (
            lambda: ShadowsHighlights(method="source", gamma_shadows=(0.0, 1.0)),
            r"gamma_shadows must be a number > 0 or a \(lo, hi\) range",
        ),
        (
            lambda: ShadowsHighlights(method="source", gamma_highlights=(2.0, 1.0)),
            "gamma_highlights must be",
        ),
        (lambda: ShadowsHighlights(method="source", kernel_size=4), "kernel_size must be odd"),
        (lambda: ShadowsHighlights(method="source", sigma=0.0), "sigma must be > 0, got 0.0"),
        (lambda: RandomGaussianBlur(-1.0), "sigma must be"),
        (lambda: RandomGaussianBlur("a"), "sigma must be a number or a pair"),
        (lambda: RandomGaussianBlur(1.0, p=-0.1), r"p must be in \[0, 1\]"),
        (lambda: Compose([RandomInvert(), "x"]), "transforms must hold batch augmentations"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make()


def test_input_checks():
    with pytest.raises(InvalidArgumentError, match="x must have 1 .* or 3 .* channels"):
        ShadowsHighlights(0.5)(torch.rand(1, 2, 8, 8), generators=_gens([1]))
    with pytest.raises(InvalidArgumentError, match=r"x must have H \* W >= 2"):
        DoGNoise((0.05, 0.2), 0.1)(torch.rand(1, 3, 1, 1), generators=_gens([1]))
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        RandomGaussianBlur(1.0)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), generators=_gens([1]))


# ---------------------------------------------------------------- RandomResizedCrop


def _torchvision_get_params(height, width, scale, ratio, g):
    """torchvision.transforms.RandomResizedCrop.get_params, with every draw from ``g``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)
        ).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (224, 224, (0.08, 1.0), (3 / 4, 4 / 3)),
        (375, 500, (0.35, 1.0), (0.75, 1.333)),
        (40, 900, (0.5, 1.0), (3 / 4, 4 / 3)),  # very wide: fallbacks happen
        (900, 40, (0.5, 1.0), (3 / 4, 4 / 3)),  # very tall
        (17, 23, (0.9, 1.0), (1.0, 1.0)),
    ],
)
def test_sample_box_follows_torchvision_rule(height, width, scale, ratio):
    rrc = RandomResizedCrop(8, scale=scale, ratio=ratio)
    for seed in range(200):
        box = rrc.sample_box(height, width, torch.Generator().manual_seed(seed))
        i, j, h, w = _torchvision_get_params(
            height, width, scale, ratio, torch.Generator().manual_seed(seed)
        )
        assert box == (j, i, j + w, i + h)


def test_sample_box_fallback_is_the_centred_crop():
    rrc = RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    # 10 x 400: any crop of >= 90 % of the area is far wider than 4/3, every attempt fails.
    box = rrc.sample_box(10, 400, torch.Generator().manual_seed(0))
    assert box == (193, 0, 206, 10)  # w = round(10 * 4 / 3) = 13, centred
    assert rrc.sample_box(400, 10, torch.Generator().manual_seed(0)) == (0, 193, 10, 206)


def test_sample_box_statistics():
    # With these ranges every first attempt fits a 400 x 400 image (w, h <= 358), so the
    # area share is uniform on scale and log(aspect) uniform on log(ratio), up to rounding.
    scale, ratio = (0.25, 0.6), (3 / 4, 4 / 3)
    rrc = RandomResizedCrop(8, scale=scale, ratio=ratio)
    height = width = 400
    areas, log_aspects, lefts, tops = [], [], [], []
    for seed in range(1000):
        x1, y1, x2, y2 = rrc.sample_box(height, width, torch.Generator().manual_seed(seed))
        assert 0 <= x1 < x2 <= width
        assert 0 <= y1 < y2 <= height
        w, h = x2 - x1, y2 - y1
        areas.append(w * h / (height * width))
        log_aspects.append(math.log(w / h))
        lefts.append(x1 / (width - w))
        tops.append(y1 / (height - h))
    areas, log_aspects = np.array(areas), np.array(log_aspects)
    # Rounding w and h to integers moves area and ratio by at most ~1 pixel per side.
    assert areas.min() >= scale[0] - 0.005
    assert areas.max() <= scale[1] + 0.005
    assert log_aspects.min() >= math.log(ratio[0]) - 0.01
    assert log_aspects.max() <= math.log(ratio[1]) + 0.01
    # Means within ~5 standard errors of the uniform laws' means.
    assert abs(areas.mean() - np.mean(scale)) < 0.015
    assert abs(log_aspects.mean()) < 0.03
    assert abs(areas.std() - (scale[1] - scale[0]) / math.sqrt(12)) < 0.01
    assert abs(np.mean(lefts) - 0.5) < 0.05
    assert abs(np.mean(tops) - 0.5) < 0.05


def test_random_resized_crop_resizes_the_cropped_pixels():
    image = _rand((3, 60, 80), 20, dtype=torch.float64)
    rrc = RandomResizedCrop((16, 24), scale=(0.3, 0.9), antialias=False)
    out = rrc(image, generator=torch.Generator().manual_seed(5))
    x1, y1, x2, y2 = rrc.sample_box(60, 80, torch.Generator().manual_seed(5))
    # torchvision's resized_crop: crop, then resize the crop on its own.
    full = torch.tensor([[0.0, 0.0, x2 - x1, y2 - y1]], dtype=torch.float64)
    ref = crop_resize(image[None, :, y1:y2, x1:x2], full, (16, 24))[0]
    assert out.shape == (3, 16, 24)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # Shrinking, no sample falls outside the box: the same as the box of the whole image.
    boxed = crop_resize(
        image[None], torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), (16, 24)
    )
    torch.testing.assert_close(out, boxed[0], rtol=0, atol=1e-12)
    assert torch.equal(rrc(image.unsqueeze(0), generator=torch.Generator().manual_seed(5)), out)


def _pillow_bilinear(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's BILINEAR resize (triangle filter widened when shrinking), channel by channel."""
    from PIL import Image

    h, w = size
    return np.stack(
        [
            np.asarray(
                Image.fromarray(channel.astype(np.float32), mode="F").resize(
                    (w, h), Image.Resampling.BILINEAR
                )
            )
            for channel in region
        ]
    )


def test_random_resized_crop_antialias_resamples_like_pillow():
    # The class's antialiased resampling is Pillow's BILINEAR on the cut (an
    # independent implementation), for float and for uint8 images.
    image = _rand((3, 90, 120), 21, dtype=torch.float64)
    rrc = RandomResizedCrop((10, 12), scale=(0.5, 0.6))
    out = rrc(image, generator=torch.Generator().manual_seed(6))
    x1, y1, x2, y2 = rrc.sample_box(90, 120, torch.Generator().manual_seed(6))
    ref = _pillow_bilinear(image[:, y1:y2, x1:x2].numpy(), (10, 12))
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-6)
    pixels = (image * 255).round().to(torch.uint8)
    out8 = rrc(pixels, generator=torch.Generator().manual_seed(6))
    assert out8.dtype == torch.uint8
    ref8 = _pillow_bilinear(pixels[:, y1:y2, x1:x2].numpy().astype(np.float64), (10, 12))
    # the uint8 kernel rounds between its two separable passes: within one level
    assert np.abs(out8.numpy().astype(np.float64) - ref8).max() <= 1.0
    # Shrinking white noise without the antialiasing keeps its variance; with it, it drops.
    plain = RandomResizedCrop((10, 12), scale=(0.5, 0.6), antialias=False)
    aliased = plain(image, generator=torch.Generator().manual_seed(6))
    assert out.var() < 0.5 * aliased.var()


def test_random_resized_crop_full_box_is_identity(dtype):
    image = _rand((3, 30, 45), 22, dtype=dtype)
    rrc = RandomResizedCrop((30, 45), scale=(1.0, 1.0), ratio=(1.5, 1.5))
    out = rrc(image, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    torch.testing.assert_close(out, image, **tol(dtype))


def test_random_resized_crop_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="size must be"):
        RandomResizedCrop(0)
    with pytest.raises(
        InvalidArgumentError, match=r"scale must satisfy 0 < lo <= hi <= 1, got \[0.9, 0.1\]"
    ):
        RandomResizedCrop(8, scale=(0.9, 0.1))
    with pytest.raises(InvalidArgumentError, match=r"scale must satisfy 0 < lo <= hi <= 1"):
        RandomResizedCrop(8, scale=(0.5, 1.2))
    with pytest.raises(InvalidArgumentError, match=r"scale must be a pair \(lo, hi\) of numbers"):
        RandomResizedCrop(8, scale="ab")
    with pytest.raises(InvalidArgumentError, match=r"ratio must satisfy 0 < lo <= hi"):
        RandomResizedCrop(8, ratio=(0.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="antialias must be a bool"):
        RandomResizedCrop(8, antialias="yes")
    rrc = RandomResizedCrop(8)
    with pytest.raises(
        InvalidArgumentError, match=r"image must have shape \(C, H, W\) or \(1, C, H, W\)"
    ):
        rrc(torch.rand(2, 3, 8, 8), generator=torch.Generator())
    with pytest.raises(InvalidArgumentError, match="generator must be a CPU torch.Generator"):
        rrc(torch.rand(3, 8, 8), generator=None)
    with pytest.raises(InvalidArgumentError, match="height and width must be ints >= 1"):
        rrc.sample_box(0, 5, torch.Generator())
    with pytest.raises(InvalidArgumentError, match="image must be floating point or uint8"):
        rrc(torch.zeros(3, 8, 8, dtype=torch.bool), generator=torch.Generator())
