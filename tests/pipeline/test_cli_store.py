"""`imageprep verify`, `info` and `preview` on a store written by the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import validate_config
from pipeline.run import prepare
from pipeline.synthetic import make_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-store")
    src = make_dataset(root / "images", n_per_class=3, sizes=(20, 40), seed=5)
    out = root / "ds.zarr"
    cfg = validate_config(
        {
            "source": {"path": str(src.root)},
            "transform": {"size": [16, 16], "augment": []},
            "output": {"path": str(out), "shard_size": 4},
            "runtime": {"workers": 1},
        }
    )
    prepare(cfg)
    return out


def test_verify_passes_then_names_a_corrupted_shard(store, tmp_path):
    ok = runner.invoke(app, ["verify", str(store)])
    assert ok.exit_code == 0, ok.output
    assert "0 mismatched" in ok.output

    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    images = zarr.open_array(copy / "images", mode="r+")
    row = images[5].copy()
    row[0, 0, 0] = row[0, 0, 0] + 1  # shard 1 (rows 4..7) no longer matches its record
    images[5] = row
    bad = runner.invoke(app, ["verify", str(copy)])
    assert bad.exit_code == 1
    assert "1 mismatched" in bad.output
    assert "shard 1" in bad.output


def test_a_quick_verify_checks_the_bytes_and_names_a_corrupted_shard(
    store, tmp_path, shard_decodes
):
    import shutil

    ok = runner.invoke(app, ["verify", str(store), "--quick"])
    assert ok.exit_code == 0, ok.output
    assert "0 mismatched" in ok.output
    assert shard_decodes == []  # bytes against their CRC32C: nothing decoded
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    f = copy / "images" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x04  # inside a chunk of shard 1
    f.write_bytes(bytes(raw))
    bad = runner.invoke(app, ["verify", str(copy), "--quick"])
    assert bad.exit_code == 1
    assert "1 mismatched" in bad.output
    assert "shard 1:" in bad.output


def test_verify_of_a_missing_store_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 2


def test_info_lists_shape_classes_and_failures(store):
    result = runner.invoke(app, ["info", str(store)], terminal_width=200)
    assert result.exit_code == 0, result.output
    n = zarr.open_group(store, mode="r")["images"].shape[0]
    assert f"{n} x 3 x 16 x 16" in result.output
    for name in ("checkers", "noise", "rings", "stripes"):
        assert name in result.output
    assert "broken_empty.png" in result.output


def test_preview_writes_the_grid_and_the_stats_plot(store, tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["preview", str(store), "--out", str(out), "--n", "8"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as grid:
        assert grid.size[0] > 0
        assert np.asarray(grid.convert("L")).std() > 0  # not a blank image
    plot = tmp_path / "grid-stats.png"
    assert plot.is_file()
    assert str(plot) in result.output.replace("\n", "")
