from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.report import (
    render_info,
    stats_plot_path,
    store_info,
    write_preview,
    write_previews,
    write_stats_plot,
)
from pipeline.store import StoreLayout, create_store, finalize, write_shard

MEAN = [0.5, 0.4, 0.3]
STD = [0.25, 0.2, 0.15]
STATS = {
    "channels": ["R", "G", "B"],
    "scale": "0-1",
    "images": 30,
    "count": 30 * 64,
    "mean": MEAN,
    "var": [s * s for s in STD],
    "std": STD,
    "min": [0.0, 0.0, 0.0],
    "max": [1.0, 1.0, 1.0],
    "per_image_mean": MEAN,
    "per_image_std": STD,
    "method": "exact",
    "failures": [],
}


def _store(tmp_path, *, shards=None, channels=3, n=30, dtype="float16", labels=None):
    layout = StoreLayout(
        n_samples=n, channels=channels, height=8, width=8, dtype=dtype, shard_size=7
    )
    path = tmp_path / "ds.zarr"
    stats = {**STATS, "mean": MEAN[:channels], "std": STD[:channels]}
    attrs = {
        "classes": ["ant", "bee", "cow"],
        "config": {"transform": {"normalize": dtype != "uint8"}},
        "stats": stats,
        "config_identity": "f" * 64,
        "failures": [{"path": "x/broken.jpg", "error": "truncated image"}],
    }
    create_store(path, layout, attrs=attrs, paths=[f"p{i}" for i in range(n)])
    rng = np.random.default_rng(0)
    if labels is None:
        labels = rng.integers(-1, 3, size=n)
    pixels = rng.random((n, channels, 8, 8))
    mean = np.array(MEAN[:channels]).reshape(-1, 1, 1)
    std = np.array(STD[:channels]).reshape(-1, 1, 1)
    if dtype == "uint8":
        stored = np.round(pixels * 255).astype(np.uint8)
    else:
        stored = ((pixels - mean) / std).astype(dtype)
    for i in shards if shards is not None else range(layout.n_shards):
        rows = layout.shard_rows(i)
        write_shard(
            path,
            i,
            images=stored[rows.start : rows.stop],
            labels=labels[rows.start : rows.stop],
            source_index=np.arange(rows.start, rows.stop),
            copy_index=np.zeros(len(rows), dtype=np.int32),
        )
    return path, layout, labels


def _du(path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def test_store_info_counts(tmp_path):
    path, layout, labels = _store(tmp_path)
    info = store_info(path)
    assert info["shape"] == [30, 3, 8, 8]
    assert info["dtype"] == "float16"
    assert info["chunks"] == [1, 3, 8, 8]
    assert info["shard_size"] == 7
    assert info["classes"] == ["ant", "bee", "cow"]
    expected = {
        "ant": int((labels == 0).sum()),
        "bee": int((labels == 1).sum()),
        "cow": int((labels == 2).sum()),
        "(no class)": int((labels == -1).sum()),
    }
    assert expected["(no class)"] > 0
    assert info["class_counts"] == expected
    assert info["samples_written"] == 30
    assert info["sources"] == 30
    assert info["shards"] == {"done": 5, "total": 5}
    assert info["complete"]
    assert not info["finalized"]
    assert info["normalized"]
    assert info["stats"]["mean"] == MEAN
    assert info["failures"] == [{"path": "x/broken.jpg", "error": "truncated image"}]
    assert info["bytes_on_disk"] == _du(path)
    assert info["images_bytes_on_disk"] == _du(path / "images")
    assert info["images_bytes_raw"] == 30 * 3 * 8 * 8 * 2
    assert info["compression_ratio"] == pytest.approx(30 * 3 * 8 * 8 * 2 / _du(path / "images"))
    json.dumps(info, allow_nan=False)
    finalize(path, {})
    assert store_info(path)["finalized"]


def test_store_info_of_a_partial_store_counts_written_rows(tmp_path):
    path, _, labels = _store(tmp_path, shards=[1, 4])
    info = store_info(path)
    written = np.r_[labels[7:14], labels[28:30]]
    assert info["samples_written"] == 9
    assert info["shards"] == {"done": 2, "total": 5}
    assert not info["complete"]
    assert sum(info["class_counts"].values()) == 9
    assert info["class_counts"]["bee"] == int((written == 1).sum())
    assert info["images_bytes_raw"] == 9 * 3 * 8 * 8 * 2


def test_render_info_shows_the_summary(tmp_path):
    path, _, _ = _store(tmp_path)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_info(store_info(path)))
    text = console.file.getvalue()
    for needle in (
        "ds.zarr",
        "30 x 3 x 8 x 8",
        "5 / 5 written",
        "ant",
        "cow",
        "0.5000",
        "x/broken.jpg",
        "compression ratio",
    ):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("n", "columns", "cell", "size"),
    [(6, 4, 96, (384, 192)), (16, 4, 64, (256, 256)), (100, 8, 40, (320, 160))],
)
def test_write_preview_size(tmp_path, n, columns, cell, size):
    path, _, _ = _store(tmp_path)
    out = write_preview(path, tmp_path / "sub" / "grid.png", n=n, columns=columns, cell=cell)
    with Image.open(out) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == size  # n = 100 is capped at the 30 samples: 4 rows of 8


def test_write_preview_draws_the_denormalized_sample(tmp_path):
    # One sample whose de-normalized pixels are pure red: the grid must show red.
    labels = np.array([2])
    layout = StoreLayout(n_samples=1, channels=3, height=8, width=8, dtype="float32", shard_size=1)
    path = tmp_path / "red.zarr"
    create_store(
        path,
        layout,
        attrs={
            "classes": ["a", "b", "c"],
            "config": {"transform": {"normalize": True}},
            "stats": STATS,
        },
        paths=["r"],
    )
    red = np.zeros((1, 3, 8, 8))
    red[:, 0] = 1.0
    normalized = (red - np.array(MEAN).reshape(3, 1, 1)) / np.array(STD).reshape(3, 1, 1)
    write_shard(
        path,
        0,
        images=normalized.astype(np.float32),
        labels=labels,
        source_index=np.zeros(1, int),
        copy_index=np.zeros(1, np.int32),
    )
    out = write_preview(path, tmp_path / "red.png", n=1, columns=1, cell=200)
    with Image.open(out) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert rgb.shape == (200, 200, 3)
    center = rgb[120, 100]  # below the title line, inside the image
    assert tuple(center) == (255, 0, 0)


def test_write_preview_grayscale_and_uint8(tmp_path):
    path, _, _ = _store(tmp_path, channels=1, dtype="uint8")
    out = write_preview(path, tmp_path / "g.png", n=4, columns=2, cell=64)
    with Image.open(out) as image:
        assert image.size == (128, 128)


def test_write_preview_rejects_bad_arguments(tmp_path):
    path, _, _ = _store(tmp_path, shards=[])
    with pytest.raises(StoreError, match="no samples written yet"):
        write_preview(path, tmp_path / "x.png")
    with pytest.raises(InvalidArgumentError, match="columns must be an integer >= 1, got 0"):
        write_preview(path, tmp_path / "x.png", columns=0)


def _check_figure(fig, stats, counts):
    """The figure draws what the stats say: per channel the density, the mean, mean ± std."""
    from matplotlib.patches import StepPatch

    axes = fig.get_axes()
    assert len(axes) == len(stats["mean"])
    bins = counts.shape[1]
    for c, ax in enumerate(axes):
        (stairs,) = [p for p in ax.patches if isinstance(p, StepPatch)]
        expected = counts[c] / counts[c].sum() * bins  # a density over [0, 1]
        np.testing.assert_allclose(stairs.get_data().values, expected, rtol=1e-12)
        np.testing.assert_allclose(stairs.get_data().edges, np.linspace(0, 1, bins + 1))
        m, s = stats["mean"][c], stats["std"][c]
        lines = sorted(line.get_xdata()[0] for line in ax.get_lines())
        np.testing.assert_allclose(lines, [m - s, m, m + s], rtol=1e-12)
        assert f"{m:.4f} ± {s:.4f}" in ax.get_title()
        assert ax.get_xlim() == (0.0, 1.0)


def test_write_stats_plot_from_histogram_field(tmp_path):
    from pipeline.report import stats_figure

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 1000, size=(3, 256))
    stats = {**STATS, "histogram": counts.tolist()}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    for source in (stats, tmp_path / "stats.json"):
        out = write_stats_plot(source, tmp_path / "h.png", size=(900, 300))
        with Image.open(out) as image:
            assert image.size == (900, 300)
            # the solid mean line of the first panel is dark in the picture
            fig = stats_figure(source, size=(900, 300))
            ax = fig.get_axes()[0]
            x, y = ax.transData.transform((STATS["mean"][0], 0.5 * ax.get_ylim()[1]))
            px = np.asarray(image.convert("L"))[int(round(300 - y)), int(round(x))]
            assert px < 80
        _check_figure(stats_figure(source), STATS, counts.astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="one list of bin counts per channel"):
        write_stats_plot({**STATS, "histogram": [[1, 2]]}, tmp_path / "bad.png")


def test_write_stats_plot_from_stored_samples(tmp_path):
    from pipeline.report import _sample_histograms, stats_figure

    path, _, _ = _store(tmp_path)
    out = write_stats_plot(STATS, tmp_path / "s.png", store=path)
    with Image.open(out) as image:
        assert image.size == (1200, 400)
    raw, _ = _sample_histograms(path, samples=256, seed=0, bins=256)
    _check_figure(stats_figure(STATS, store=path), STATS, raw.astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="pass store= to plot a histogram"):
        write_stats_plot(STATS, tmp_path / "none.png")
    with pytest.raises(InvalidArgumentError, match="per-channel 'mean' and 'std'"):
        write_stats_plot({"mean": [0.5]}, tmp_path / "none.png")


def test_write_previews_names_both_files(tmp_path):
    path, _, _ = _store(tmp_path)
    grid, plot = write_previews(path, tmp_path / "out" / "grid.png", n=8)
    assert grid == tmp_path / "out" / "grid.png"
    assert plot == tmp_path / "out" / "grid-stats.png"
    assert stats_plot_path("a/b.png") == Path("a/b-stats.png")
    assert stats_plot_path("grid") == Path("grid-stats.png")
    for png in (grid, plot):
        with Image.open(png) as image:
            image.verify()
