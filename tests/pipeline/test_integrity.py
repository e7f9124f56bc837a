"""Corrupted stores: every array and attribute a reader trusts is checked, named, and repaired.

Each case damages a finished store the way a disk, a copy tool or a hand edit
would, then asserts that ``imageprep verify`` finds it (exit 1, the shard or
the manifest part named), and that ``verify --repair`` restores the exact
bytes where the data can be rewritten from the source, or refuses, naming
what cannot.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import validate_config
from pipeline.errors import StoreError
from pipeline.run import prepare, repair
from pipeline.store import read_attrs, verify
from pipeline.synthetic import make_dataset

runner = CliRunner()

ARRAYS = ("images", "labels", "source_index", "copy_index", "live", "paths")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished store of 12 images in shards of 4 rows, and its source."""
    root = tmp_path_factory.mktemp("integrity")
    src = make_dataset(root / "images", n_per_class=3, sizes=(20, 40), seed=11)
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
    assert verify(out).ok
    return out, src.root


@pytest.fixture
def store(pristine: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the pristine store (same config, same source), to damage."""
    out, _ = pristine
    copy = tmp_path / "ds.zarr"
    shutil.copytree(out, copy)  # a moved store: repair works where it is now
    return copy


def _meta(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def _set_attrs(store: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc["attributes"]["imageprep"])
    (store / "zarr.json").write_text(json.dumps(doc))


def _arrays(store: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(store, mode="r")
    return {name: np.asarray(g[name][:]) for name in ARRAYS}


def _shard_file(store: Path, index: int) -> Path:
    return store / "images" / "c" / str(index) / "0" / "0" / "0"


def _verify_cli(store: Path) -> tuple[int, str]:
    r = runner.invoke(app, ["verify", str(store)])
    assert "Traceback" not in r.output
    return r.exit_code, r.output


# ----------------------------------------------------------------------------- shards


def _flip_bit(store: Path) -> None:
    f = _shard_file(store, 1)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


def _delete_shard(store: Path) -> None:
    _shard_file(store, 1).unlink()


def _swap_shards(store: Path) -> None:
    a, b = _shard_file(store, 0), _shard_file(store, 1)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _edit_labels(store: Path) -> None:
    g = zarr.open_group(store, mode="r+")
    labels = g["labels"][:]
    labels[5] = (labels[5] + 1) % 4
    g["labels"][:] = labels


def _truncate_chunk(store: Path) -> None:
    f = _shard_file(store, 2)
    f.write_bytes(f.read_bytes()[:100])


SHARD_DAMAGE = {
    "flipped bit": (_flip_bit, {1}),
    "deleted shard file": (_delete_shard, {1}),
    "swapped shard files": (_swap_shards, {0, 1}),
    "truncated shard file": (_truncate_chunk, {2}),
}


@pytest.mark.parametrize("case", list(SHARD_DAMAGE))
def test_damaged_shards_are_named_by_verify_and_rewritten_by_repair(store, pristine, case):
    damage, shards = SHARD_DAMAGE[case]
    expected = _arrays(pristine[0])
    damage(store)
    report = verify(store)
    assert not report.ok
    assert {p.index for p in report.mismatched} == shards
    code, output = _verify_cli(store)
    assert code == 1
    for index in shards:
        assert f"shard {index}:" in output
    r = runner.invoke(app, ["verify", str(store), "--repair"])
    assert r.exit_code == 0, r.output
    assert "repaired:" in r.output
    assert verify(store).ok
    got = _arrays(store)
    for name in ARRAYS:
        assert np.array_equal(got[name], expected[name]), (case, name)
    assert read_attrs(store)["complete"] is True


# ----------------------------------------------------------------------------- the manifest


def _reverse_paths(store: Path) -> None:
    g = zarr.open_group(store, mode="r+")
    g["paths"][:] = g["paths"][:][::-1].copy()


def _edit_mean(store: Path) -> None:
    def edit(meta: dict) -> None:
        meta["stats"]["mean"] = [m + 0.1 for m in meta["stats"]["mean"]]

    _set_attrs(store, edit)


def _edit_classes(store: Path) -> None:
    _set_attrs(store, lambda meta: meta["classes"].reverse())


def _edit_config(store: Path) -> None:
    _set_attrs(store, lambda meta: meta["config"]["transform"].update(copies=2))


def _edit_file_table(store: Path) -> None:
    g = zarr.open_group(store, mode="r+")
    s1 = g["files/s1"][:]
    s1[0, 0] += 1
    g["files/s1"][:] = s1


def _edit_layout(store: Path) -> None:
    _set_attrs(store, lambda meta: meta["layout"].update(shard_size=8))


MANIFEST_DAMAGE = {
    "paths reversed": (_reverse_paths, "paths"),
    "mean edited": (_edit_mean, "stats"),
    "classes reordered": (_edit_classes, "classes"),
    "config edited": (_edit_config, "config"),
    "file table edited": (_edit_file_table, "files"),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_edits_outside_the_shards_fail_the_manifest_and_are_not_repaired_silently(store, case):
    damage, part = MANIFEST_DAMAGE[case]
    damage(store)
    report = verify(store)
    assert not report.ok
    assert not report.mismatched  # the shards themselves are intact
    assert [m.split(":", 1)[0] for m in report.manifest] == [part]
    code, output = _verify_cli(store)
    assert code == 1
    assert f"manifest: {part}:" in output
    with pytest.raises(StoreError, match=f"cannot repair: {part}:"):
        repair(store)
    r = runner.invoke(app, ["verify", str(store), "--repair"])
    assert r.exit_code == 1
    assert "output.overwrite" in r.output
    assert "Traceback" not in r.output


def test_edited_labels_fail_their_shard_and_the_row_plan_and_are_not_rewritten_from_it(store):
    _edit_labels(store)
    report = verify(store)
    assert {p.index for p in report.mismatched} == {1}
    assert [m.split(":", 1)[0] for m in report.manifest] == ["rows"]
    with pytest.raises(StoreError, match="cannot repair: rows:"):
        repair(store)


def test_an_edited_layout_is_caught_before_any_shard_is_read(store):
    _edit_layout(store)
    code, output = _verify_cli(store)
    assert code == 1
    assert "Error:" in output


def test_a_flipped_live_flag_fails_the_manifest_and_repair_restores_it(store, pristine):
    g = zarr.open_group(store, mode="r+")
    live = g["live"][:]
    live[3] = not live[3]
    g["live"][:] = live
    report = verify(store)
    assert [m.split(":", 1)[0] for m in report.manifest] == ["live"]
    result = repair(store)
    assert result.after.ok
    assert np.array_equal(_arrays(store)["live"], _arrays(pristine[0])["live"])


def test_a_truncated_zarr_json_is_a_one_line_error_with_exit_1(store):
    meta = store / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    code, output = _verify_cli(store)
    assert code == 1
    assert "zarr.json is unreadable or corrupt" in output
    assert output.count("Error:") == 1


def test_a_folder_that_is_no_store_is_a_usage_error(tmp_path):
    (tmp_path / "notes").mkdir()
    code, output = _verify_cli(tmp_path / "notes")
    assert code == 2
    assert "not a Zarr v3 store" in output


def test_the_manifest_is_rewritten_by_each_finishing_run_and_dropped_while_an_update_runs(
    store, pristine
):
    before = _meta(store)["imageprep"]["manifest"]
    assert set(before) == {
        "paths",
        "files",
        "rows",
        "live",
        "classes",
        "stats",
        "config",
        "layout",
    }
    src = pristine[1]
    cls = sorted(p for p in src.iterdir() if p.is_dir())[0]
    shutil.copy(next(iter(sorted(cls.iterdir()))), cls / "zz-new.png")
    try:
        recorded = _meta(store)["imageprep"]["config"]
        recorded["output"]["path"] = str(store)
        prepare(validate_config(recorded))
    finally:
        (cls / "zz-new.png").unlink()
    after = _meta(store)["imageprep"]["manifest"]
    assert after["paths"] != before["paths"]
    assert after["config"] == before["config"]
    assert verify(store).ok
