from __future__ import annotations

import json
import math
import threading
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import Failure, InvalidArgumentError
from pipeline.sources import scan
from pipeline.stats import (
    FloatDeviations,
    FloatMoments,
    FloatSums,
    Stats,
    compute_stats,
    float_stats,
    sqrt_fraction,
    sqrt_ratio,
    two_pass_stats,
)
from tests.pipeline.conftest import (
    png_bytes,
    random_rgb,
    reference_integers,
    reference_pixels,
    save,
)

CONTRACT_KEYS = [
    "channels",
    "scale",
    "images",
    "count",
    "mean",
    "var",
    "std",
    "min",
    "max",
    "per_image_mean",
    "per_image_std",
    "method",
    "failures",
]


def decimal_sqrt(q: Fraction) -> float:
    """Independent correctly rounded sqrt reference (60 significant digits)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float((Decimal(q.numerator) / Decimal(q.denominator)).sqrt())


# --------------------------------------------------- integer sources: reference


@pytest.fixture(scope="module")
def reference(mixed_source):
    pixels = [reference_pixels(p) for p in mixed_source.valid]
    allpix = np.concatenate(pixels)
    mean = allpix.mean(axis=0)
    var = ((allpix - mean) ** 2).mean(axis=0)
    return {
        "images": len(pixels),
        "count": allpix.shape[0],
        "mean": mean,
        "var": var,
        "std": np.sqrt(var),
        "min": allpix.min(axis=0),
        "max": allpix.max(axis=0),
        "per_image_mean": np.mean([p.mean(axis=0) for p in pixels], axis=0),
        "per_image_std": np.mean([p.std(axis=0) for p in pixels], axis=0),
        "histogram": np.stack(
            [
                np.bincount(
                    np.minimum(np.floor(allpix[:, c] * 256), 255).astype(int), minlength=256
                )
                for c in range(3)
            ]
        ),
        "bits": {16 if reference_integers(p)[1] == 65535 else 8 for p in mixed_source.valid},
    }


@pytest.mark.parametrize("method", ["exact", "chan", "two-pass"])
def test_methods_match_float64_reference(mixed_source, reference, method):
    assert reference["bits"] == {8, 16}  # the source really mixes bit depths
    s = compute_stats(mixed_source.root, method=method, workers=2, chunk_size=5)
    assert s.method == method
    assert s.channels == ["R", "G", "B"]
    assert s.scale == "0-1"
    assert s.images == reference["images"]
    assert s.count == reference["count"]
    for key in ("mean", "var", "std", "per_image_mean", "per_image_std"):
        np.testing.assert_allclose(getattr(s, key), reference[key], rtol=1e-12, atol=0, err_msg=key)
    assert s.min == list(reference["min"])
    assert s.max == list(reference["max"])
    np.testing.assert_array_equal(np.array(s.histogram), reference["histogram"])
    got = {f.path: f.error for f in s.failures}
    assert set(got) == set(mixed_source.broken)
    for path, prefix in mixed_source.broken.items():
        assert got[path].startswith(prefix), (path, got[path])
    assert s.fingerprint == scan(mixed_source.root).fingerprint


@pytest.mark.parametrize("method", ["chan", "two-pass"])
def test_float_methods_within_1e_15_of_exact_on_integer_sources(mixed_source, method):
    # docs/stats.md: on integer sources chan and two-pass agree with the correctly
    # rounded exact result to ~1e-15 relative, whatever the chunking (measured: 4.4e-16).
    exact = compute_stats(mixed_source.root, method="exact", workers=2, chunk_size=5)
    for chunk_size in (3, 5, 64):
        s = compute_stats(mixed_source.root, method=method, workers=2, chunk_size=chunk_size)
        for key in ("mean", "var", "std", "per_image_mean", "per_image_std"):
            np.testing.assert_allclose(
                getattr(s, key), getattr(exact, key), rtol=1e-15, atol=0, err_msg=key
            )


def test_exact_is_correctly_rounded_from_integers(mixed_source):
    """Every exact output equals the correctly rounded value of the exact rational."""
    n = 0
    s1 = [0, 0, 0]
    s2 = [0, 0, 0]
    lo = [Fraction(2)] * 3
    hi = [Fraction(-1)] * 3
    pm = [Fraction(0)] * 3
    ps = [Fraction(0)] * 3
    for p in mixed_source.valid:
        v, scale = reference_integers(p)
        k = 257 if scale == 255 else 1  # 8-bit v is 257 v on the 16-bit scale
        n += v.shape[0]
        for c in range(3):
            col = [int(x) for x in v[:, c]]
            a, b = sum(col), sum(x * x for x in col)
            s1[c] += k * a
            s2[c] += k * k * b
            lo[c] = min(lo[c], Fraction(min(col), scale))
            hi[c] = max(hi[c], Fraction(max(col), scale))
            m = len(col)
            pm[c] += Fraction(a / (m * scale))  # the per-image float, exactly
            ps[c] += Fraction(decimal_sqrt(Fraction(m * b - a * a, m * m * scale * scale)))
    s = compute_stats(mixed_source.root, method="exact", workers=2, chunk_size=4)
    images = len(mixed_source.valid)
    for c in range(3):
        var = Fraction(n * s2[c] - s1[c] ** 2, n * n * 65535**2)
        assert s.mean[c] == float(Fraction(s1[c], n * 65535))
        assert s.var[c] == float(var)
        assert s.std[c] == decimal_sqrt(var)
        assert s.min[c] == float(lo[c])
        assert s.max[c] == float(hi[c])
        assert s.per_image_mean[c] == float(pm[c] / images)
        assert s.per_image_std[c] == float(ps[c] / images)


def test_exact_is_bit_identical_for_any_chunking_and_workers(mixed_source):
    runs = [
        compute_stats(mixed_source.root, method="exact", workers=w, chunk_size=c).to_json()
        for c, w in [(1, 1), (3, 2), (7, 4), (16, 1), (1000, 3)]
    ]
    for r in runs[1:]:
        assert r == runs[0]


def test_mixed_bit_depth_share_one_scale(tmp_path):
    rng = np.random.default_rng(4)
    v8 = rng.integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    u16 = rng.integers(0, 65536, size=(4, 6)).astype(np.uint16)
    save(Image.fromarray(v8), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(png_bytes(u16))
    s = compute_stats(tmp_path, workers=1)
    n = 35 + 24
    for c in range(3):
        s1 = 257 * int(v8[..., c].astype(np.int64).sum()) + int(u16.astype(np.int64).sum())
        assert s.mean[c] == float(Fraction(s1, n * 65535))
    assert s.max[0] == max(v8[..., 0].max() / 255, u16.max() / 65535)
    # 8-bit only: the same numbers on the 255 scale
    (tmp_path / "b.png").unlink()
    s = compute_stats(tmp_path, workers=1)
    assert s.mean == [float(Fraction(int(v8[..., c].sum()), 35 * 255)) for c in range(3)]


def test_progress_is_called_once_per_file(mixed_source):
    calls = []
    lock = threading.Lock()

    def progress(k):
        with lock:
            calls.append(k)

    compute_stats(mixed_source.root, workers=3, chunk_size=4, progress=progress)
    m = scan(mixed_source.root)
    assert sum(calls) == len(m.files) == len(mixed_source.valid) + len(mixed_source.broken)


def test_bad_inputs_each_reported_once(bad_folder):
    s = compute_stats(bad_folder.root, workers=2, chunk_size=3)
    assert s.images == len(bad_folder.valid)
    paths = [f.path for f in s.failures]
    assert paths == sorted(paths)
    assert len(paths) == len(set(paths))
    assert set(paths) == set(bad_folder.broken)
    for f in s.failures:
        assert f.error.startswith(bad_folder.broken[f.path]), (f.path, f.error)
    # the valid images alone give the same statistics
    ref = np.concatenate([reference_pixels(bad_folder.root / p) for p in bad_folder.valid])
    np.testing.assert_allclose(s.mean, ref.mean(axis=0), rtol=1e-12)


def test_empty_source(tmp_path):
    s = compute_stats(tmp_path)
    assert (s.images, s.count, s.failures) == (0, 0, [])
    assert all(math.isnan(v) for v in s.mean + s.std + s.per_image_mean)
    d = s.to_json()
    assert d["mean"] == [None, None, None]
    json.dumps(d, allow_nan=False)


def test_only_broken_files(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    s = compute_stats(tmp_path, method="chan")
    assert s.images == 0
    assert s.failures == [Failure("x.jpg", "empty file")]
    assert math.isnan(s.var[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"method": "median"},
            r"method must be one of \['exact', 'chan', 'two-pass'\], got 'median'",
        ),
        ({"workers": 0}, "workers must be a positive int, got 0"),
        ({"chunk_size": -1}, "chunk_size must be a positive int, got -1"),
        ({"max_pixels": 0}, "max_pixels must be a positive int, got 0"),
    ],
)
def test_compute_stats_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        compute_stats(tmp_path, **kwargs)


def test_compute_stats_max_pixels(tmp_path):
    save(Image.fromarray(random_rgb(np.random.default_rng(0), 10, 10)), tmp_path / "a.png")
    save(Image.fromarray(random_rgb(np.random.default_rng(1), 20, 10)), tmp_path / "b.png")
    s = compute_stats(tmp_path, max_pixels=150)
    assert s.images == 1
    assert s.count == 100
    assert s.failures == [Failure("b.png", "decompression bomb: 200 pixels > limit 150")]


# ------------------------------------------------------------------ Stats JSON


def test_stats_json_contract_and_round_trip(mixed_source, tmp_path):
    s = compute_stats(mixed_source.root, workers=2)
    d = s.to_json()
    assert list(d)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert set(d) - set(CONTRACT_KEYS) == {"histogram", "fingerprint"}
    assert all(set(f) == {"path", "error"} for f in d["failures"])
    s.save(tmp_path / "s.json")
    loaded = Stats.load(tmp_path / "s.json")
    assert loaded == s
    assert json.loads((tmp_path / "s.json").read_text()) == d
    d2 = dict(d, future_field=1)
    del d2["histogram"]
    assert Stats.from_json(d2).histogram is None


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("mean"), r"stats JSON must have keys \['mean'\]"),
        (lambda d: d.update(mean=[0.1, 0.2]), "stats JSON mean must be a list of 3 numbers"),
        (lambda d: d.update(images=-1), "stats JSON images must be an int >= 0, got -1"),
        (lambda d: d.update(channels="RGB"), "stats JSON channels must be a list of str"),
        (lambda d: d.update(failures=[{"path": 1}]), "stats JSON failures must be a list"),
    ],
)
def test_stats_from_json_errors(mutate, match):
    d = Stats.empty(method="exact").to_json()
    mutate(d)
    with pytest.raises(InvalidArgumentError, match=match):
        Stats.from_json(d)


def test_sqrt_fraction_is_correctly_rounded():
    rng = np.random.default_rng(0)
    cases = [Fraction(0), Fraction(1), Fraction(4, 9), Fraction(2), Fraction(10**40 + 1, 3)]
    cases += [Fraction(int(a), int(b)) for a, b in rng.integers(1, 2**62, size=(300, 2))]
    cases += [Fraction(int(a), 2**70) for a in rng.integers(1, 2**40, size=100)]
    for q in cases:
        assert sqrt_fraction(q) == decimal_sqrt(q), q
    with pytest.raises(InvalidArgumentError, match="q must be >= 0"):
        sqrt_fraction(Fraction(-1, 2))


def test_sqrt_ratio_needs_no_lowest_terms():
    rng = np.random.default_rng(1)
    for a, b, m in rng.integers(1, 2**40, size=(300, 3)):
        a, b, m = int(a), int(b), int(m)
        expected = decimal_sqrt(Fraction(a, b))
        assert sqrt_ratio(a, b) == expected
        assert sqrt_ratio(a * m, b * m) == expected  # the same ratio, not reduced
    assert sqrt_ratio(0, 7) == 0.0
    assert sqrt_ratio(9 * 10**30, 4 * 10**30) == 1.5
    for p, d in [(-1, 2), (1, 0), (1, -3)]:
        with pytest.raises(InvalidArgumentError, match="p >= 0 and d > 0"):
            sqrt_ratio(p, d)


# ------------------------------------------------------------------ float path


def _float_reference(chunks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Float64 NumPy two-pass over all values, per channel."""
    c = chunks[0].shape[1]
    n = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in chunks)
    mean = np.array(
        [math.fsum(float(x[:, i].astype(np.float64).sum()) for x in chunks) / n for i in range(c)]
    )
    m2 = np.array(
        [
            math.fsum(float(((x[:, i].astype(np.float64) - mean[i]) ** 2).sum()) for x in chunks)
            for i in range(c)
        ]
    )
    return {"n": n, "mean": mean, "var": m2 / n}


def test_float_moments_match_reference_for_any_split():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(13, 3, 9, 11, generator=g) * 0.7 + 0.1
    ref = _float_reference([x.numpy()])
    per_image = x.double().mean(dim=(2, 3))
    per_image_std = x.double().std(dim=(2, 3), unbiased=False)
    for split in ([13], [1] * 13, [5, 0, 8], [2, 3, 8]):
        parts = [p for p in torch.split(x, split) if True]
        m = FloatMoments.empty(3)
        for p in parts:
            m = m.merge(FloatMoments.of(p))
        assert m.n == ref["n"]
        assert m.images == 13
        np.testing.assert_allclose(m.mean, ref["mean"], rtol=1e-14)
        np.testing.assert_allclose(m.m2 / m.n, ref["var"], rtol=1e-12)
        np.testing.assert_array_equal(m.min, x.amin(dim=(0, 2, 3)).double().numpy())
        np.testing.assert_array_equal(m.max, x.amax(dim=(0, 2, 3)).double().numpy())
        s = m.to_stats()
        assert s.method == "chan"
        assert s.count == ref["n"]
        np.testing.assert_allclose(s.per_image_mean, per_image.mean(0).numpy(), rtol=1e-14)
        np.testing.assert_allclose(s.per_image_std, per_image_std.mean(0).numpy(), rtol=1e-13)
        np.testing.assert_allclose(s.std, np.sqrt(ref["var"]), rtol=1e-12)
        hist = np.stack(
            [
                np.bincount(
                    np.floor(x[:, c].double().numpy() * 256).astype(int).ravel(), minlength=256
                )
                for c in range(3)
            ]
        )
        np.testing.assert_array_equal(np.array(s.histogram), hist)


def test_float_per_image_sums_do_not_depend_on_order():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, 3, 5, 6, generator=g)
    a = FloatMoments.of(x[:4]).merge(FloatMoments.of(x[4:])).to_stats()
    b = (
        FloatMoments.of(x[6:])
        .merge(FloatMoments.of(x[:2]))
        .merge(FloatMoments.of(x[2:6]))
        .to_stats()
    )
    assert a.per_image_mean == b.per_image_mean
    assert a.per_image_std == b.per_image_std
    assert a.images == b.images == 9


def test_float_inputs_numpy_and_other_channel_counts():
    rng = np.random.default_rng(2)
    x = rng.random((4, 5, 3, 3))
    s = float_stats(lambda: [x[:2], x[2:]], method="two-pass")
    assert s.channels == ["c0", "c1", "c2", "c3", "c4"]
    np.testing.assert_allclose(s.mean, x.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(s.var, x.var(axis=(0, 2, 3)), rtol=1e-13)


def test_two_pass_pieces_match_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 3, 7, 8, generator=g, dtype=torch.float64) * 0.2 + 0.5
    ref = _float_reference([x.numpy()])
    sums = FloatSums.empty(3)
    for p in torch.split(x, 3):
        sums = sums.merge(FloatSums.of(p))
    np.testing.assert_allclose(sums.mean(), ref["mean"], rtol=1e-15)
    mean = sums.mean()
    devs = FloatDeviations.empty(mean)
    for p in torch.split(x, 4):
        devs = devs.merge(FloatDeviations.of(p, mean))
    s = two_pass_stats(sums, devs)
    assert s.method == "two-pass"
    assert s.count == ref["n"]
    assert s.images == 10
    np.testing.assert_allclose(s.var, ref["var"], rtol=1e-13)
    with pytest.raises(InvalidArgumentError, match="deviations must cover the same"):
        two_pass_stats(sums, FloatDeviations.of(x[:2], mean))
    with pytest.raises(InvalidArgumentError, match="other must use the same mean"):
        devs.merge(FloatDeviations.of(x[:2], mean + 1e-9))
    with pytest.raises(InvalidArgumentError, match=r"mean must have shape \(3,\), got \(2,\)"):
        FloatDeviations.of(x, mean[:2])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(3, 4, 4), r"x must have shape \(B, C, H, W\), got shape \(3, 4, 4\)"),
        (
            torch.zeros(1, 3, 2, 2, dtype=torch.int64),
            "x must have a floating dtype, got torch.int64",
        ),
        ([[1.0]], "x must be a torch.Tensor or numpy.ndarray, got list"),
    ],
)
def test_float_bad_inputs(x, match):
    with pytest.raises(InvalidArgumentError, match=match):
        FloatMoments.of(x)


def test_float_merge_channel_mismatch_and_empty():
    with pytest.raises(InvalidArgumentError, match="other must have 3 channels, got 2"):
        FloatMoments.empty(3).merge(FloatMoments.empty(2))
    s = float_stats(lambda: [torch.zeros(0, 3, 4, 4)], method="chan")
    assert s.images == 0
    assert s.count == 0
    assert math.isnan(s.mean[0])
    s = float_stats(lambda: [], method="two-pass")
    assert s.images == 0
    with pytest.raises(InvalidArgumentError, match="method must be 'chan' or 'two-pass'"):
        float_stats(lambda: [], method="exact")  # type: ignore[arg-type]


# ------------------------------------------------------- adversarial float data

N_CHUNKS = 25
CHUNK_SHAPE = (10, 2, 400, 500)  # 4e6 values; 25 chunks = 1e8 values (5e7 per channel)


@pytest.fixture(scope="module")
def adversarial() -> list[np.ndarray]:
    """1e8 float32 values, mean 0.8, std ~1e-3; chunk means drift (between-chunk variance)."""
    g = torch.Generator().manual_seed(0)
    chunks = []
    for k in range(N_CHUNKS):
        offset = torch.tensor([math.sin(1.3 * k + 0.2), math.cos(0.7 * k)]) * 1.1e-3
        x = torch.randn(CHUNK_SHAPE, generator=g) * 7e-4 + (0.8 + offset).view(1, 2, 1, 1)
        chunks.append(x.numpy())
    return chunks


def test_adversarial_float_chan_and_two_pass_match_float64_two_pass(adversarial):
    ref = _float_reference(adversarial)
    assert ref["n"] * CHUNK_SHAPE[1] == 10**8  # values in all; n is per channel
    assert np.allclose(ref["mean"], 0.8, atol=2e-4)
    assert np.allclose(np.sqrt(ref["var"]), 1e-3, rtol=0.2)
    # The documented agreement (docs/stats.md): chan within 3e-14 of the reference
    # for var (1.5e-14 for std, 1e-15 for the mean), the global two-pass within 1e-15
    # (it computes what the reference computes). Measured here: chan var 4.3e-15 and
    # 2.3e-14, std 2.1e-15 and 1.2e-14, mean <= 2.2e-16; two-pass 0.
    documented = {
        "chan": {"mean": 1e-15, "var": 3e-14, "std": 1.5e-14},
        "two-pass": {"mean": 1e-15, "var": 1e-15, "std": 1e-15},
    }
    for method, rtol in documented.items():
        s = float_stats(lambda: iter(adversarial), method=method, channels=["a", "b"])
        assert s.count == ref["n"]
        assert s.channels == ["a", "b"]
        np.testing.assert_allclose(s.mean, ref["mean"], rtol=rtol["mean"], atol=0, err_msg=method)
        np.testing.assert_allclose(s.var, ref["var"], rtol=rtol["var"], atol=0, err_msg=method)
        np.testing.assert_allclose(
            s.std, np.sqrt(ref["var"]), rtol=rtol["std"], atol=0, err_msg=method
        )

    # These tolerances can fail: the textbook one-pass formula E[x^2] - E[x]^2, even
    # summed in float64 over the same data, is off by 2e-11 to 2e-10 here (the squares
    # of values near 0.8 cancel down to a variance of 1e-6), far outside them.
    s1 = np.zeros(2)
    s2 = np.zeros(2)
    for x in adversarial:
        x64 = x.astype(np.float64)
        s1 += x64.sum(axis=(0, 2, 3))
        s2 += (x64 * x64).sum(axis=(0, 2, 3))
    one_pass = s2 / ref["n"] - (s1 / ref["n"]) ** 2
    one_pass_error = np.abs(one_pass / ref["var"] - 1)
    assert np.all(one_pass_error > 100 * documented["chan"]["var"]), one_pass_error
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(one_pass, ref["var"], rtol=documented["chan"]["var"], atol=0)

    # what not to do 1: average per-batch standard deviations
    avg_std = np.mean([x.astype(np.float64).std(axis=(0, 2, 3)) for x in adversarial], axis=0)
    assert np.all(np.abs(avg_std / np.sqrt(ref["var"]) - 1) > 0.05)

    # what not to do 2: E[x^2] - E[x]^2 accumulated in float32
    s1 = np.float32(0)
    s2 = np.float32(0)
    for x in adversarial:
        s1 += x[:, 0].sum(dtype=np.float32)
        s2 += (x[:, 0] * x[:, 0]).sum(dtype=np.float32)
    n = np.float32(ref["n"])
    naive = s2 / n - (s1 / n) * (s1 / n)
    assert naive.dtype == np.float32
    assert abs(float(naive) / ref["var"][0] - 1) > 1e-2


def test_stats_module_reads_files_it_is_given(tmp_path: Path):
    # a manifest can be passed instead of a folder (and is not rescanned)
    save(Image.fromarray(random_rgb(np.random.default_rng(0), 6, 6)), tmp_path / "a.png")
    m = scan(tmp_path)
    save(Image.fromarray(random_rgb(np.random.default_rng(1), 6, 6)), tmp_path / "b.png")
    s = compute_stats(m, workers=1)
    assert s.images == 1
    assert s.fingerprint == m.fingerprint


@pytest.mark.parametrize(
    ("bits", "scale"),
    # up to ~4e9 pixels (the most 64-bit moments hold); 16-bit images above ~1e9
    # pixels take the Python-int path for sum(x * x)
    [(8, 1), (8, 6 * 10**5), (16, 1), (16, 1300)],
)
def test_file_moments_equal_python_integer_sums(bits, scale):
    from pipeline.decode import ImageHistogram
    from pipeline.stats.files import FileMoments

    rng = np.random.default_rng(bits + scale)
    levels = 2**bits
    first = rng.integers(0, 50, levels).astype(np.int64) * scale
    first[: levels // 4] = 0  # a gap at the bottom
    # every channel holds the same pixels, in other values
    counts = np.stack([first, first[::-1], rng.permutation(first)])
    h = ImageHistogram(bits=bits, counts=counts)
    m = FileMoments.of_histograms(["a.png"], [h], [bytes(32)])
    up = 257 if bits == 8 else 1
    for c in range(3):
        row = [int(x) for x in counts[c]]
        assert int(m.n[0]) == sum(row)
        assert int(m.s1[0, c]) == up * sum(k * v for v, k in enumerate(row))
        assert int(m.s2[0, c]) == up * up * sum(k * v * v for v, k in enumerate(row))
        nonzero = [v for v, k in enumerate(row) if k]
        assert int(m.min[0, c]) == up * nonzero[0]
        assert int(m.max[0, c]) == up * nonzero[-1]


def test_file_moments_of_many_histograms_equal_per_file_python_integers():
    """8-bit tables of many files at once (one matrix product), 16-bit ones per file."""
    from pipeline.decode import ImageHistogram
    from pipeline.stats.files import FileMoments

    rng = np.random.default_rng(7)
    hists = []
    for i in range(40):
        bits = 16 if i % 7 == 3 else 8
        levels = 2**bits
        if i % 5 == 0:  # gray: one row seen three times (a read-only broadcast view)
            row = rng.integers(0, 9, levels).astype(np.int64) * (1 + i)
            counts = np.broadcast_to(row, (3, levels))
        else:
            first = np.zeros(levels, np.int64)
            first[rng.integers(0, levels, 1 + i % 4)] = 10**i % 997 + 1  # few distinct values
            if i % 3 == 0:  # every value seen: ~6e8 pixels for 8 bits
                first = rng.integers(0, 50, levels).astype(np.int64) * (10**5 if bits == 8 else 1)
            counts = np.stack([first, first[::-1], rng.permutation(first)])
        hists.append(ImageHistogram(bits=bits, counts=counts))
    m = FileMoments.of_histograms([f"{i}.png" for i in range(40)], hists, [bytes(32)] * 40)
    for i, h in enumerate(hists):
        up, top = (257, 255) if h.bits == 8 else (1, 65535)
        for c in range(3):
            row = [int(x) for x in h.counts[c]]
            n = sum(row)
            s1 = sum(k * v for v, k in enumerate(row))
            s2 = sum(k * v * v for v, k in enumerate(row))
            nonzero = [v for v, k in enumerate(row) if k]
            assert int(m.n[i]) == n
            assert int(m.s1[i, c]) == up * s1
            assert int(m.s2[i, c]) == up * up * s2
            assert int(m.min[i, c]) == up * nonzero[0]
            assert int(m.max[i, c]) == up * nonzero[-1]
            assert m.image_mean[i, c] == float(Fraction(s1, n * top)), (i, c)
            assert m.image_std[i, c] == decimal_sqrt(Fraction(n * s2 - s1 * s1, (n * top) ** 2))
