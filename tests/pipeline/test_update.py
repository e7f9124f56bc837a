"""Incremental updates: a rerun over a changed source updates the store instead of rebuilding it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

import pipeline.decode
import pipeline.run as run_module
from ops import resized_shape
from pipeline.config import RunConfig, validate_config
from pipeline.errors import ShardWriteError, StoreMismatchError
from pipeline.reader import ShardDataset, iter_shards
from pipeline.run import plan_run, prepare
from pipeline.stats import compute_stats
from pipeline.store import compact, read_attrs, read_layout, verify

SIZE = (16, 16)
CONTRACT = (
    "images",
    "count",
    "mean",
    "var",
    "std",
    "min",
    "max",
    "per_image_mean",
    "per_image_std",
)


def _image(path: Path, seed: int, *, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = 20 + seed % 9, 24 + seed % 13
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(14):
        _image(root / ("cat" if i % 2 else "dog") / f"{i:03d}.png", i)
    _image(root / "dog" / "deep.png", 99, mode="I;16")  # a 16-bit file among 8-bit ones
    return root


def _config(src: Path, out: Path, **sections: dict) -> RunConfig:
    data: dict = {
        "source": {"path": str(src)},
        "transform": {"size": list(SIZE), "copies": 2},
        "output": {"path": str(out), "shard_size": 6},
        "runtime": {"workers": 2, "batch_size": 4, "device": "cpu"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


class Decodes:
    """The source files the decoder opened, by name, since the last :meth:`take`."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def take(self) -> Counter[str]:
        """How many times each file was decoded since the last call."""
        out = Counter(self.names)
        self.names.clear()
        return out


@pytest.fixture
def decoded(monkeypatch) -> Decodes:
    """Every decode of a source file (statistics pass and shard tasks alike)."""
    decodes = Decodes()
    real = pipeline.decode._loaded

    def counting(path, *args, **kwargs):
        decodes.names.append(os.path.basename(getattr(path, "name", path)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.decode, "_loaded", counting)
    return decodes


def _shard_files(store: Path) -> dict[str, str]:
    """SHA-256 of every file of the images array (the shards)."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((store / "images").rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def _current_equals_stats(store: Path, src: Path) -> None:
    current = read_attrs(store)["current_stats"]
    ref = compute_stats(src).to_json()
    assert {k: current[k] for k in CONTRACT} == {k: ref[k] for k in CONTRACT}


def _reference(path: Path, mean, std) -> np.ndarray:
    """float64 decode -> shorter-side-crop -> normalize, independent of the pipeline."""
    with Image.open(path) as im:
        if im.mode.startswith("I"):
            g = np.asarray(im).astype(np.float64) / 65535.0
            a = np.repeat(g[..., None], 3, axis=2)
        else:
            a = np.asarray(im.convert("RGB")).astype(np.float64) / 255.0
    h, w = a.shape[:2]
    rh, rw = resized_shape(h, w, SIZE, "shorter-side-crop")
    x = torch.from_numpy(a).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (rh - SIZE[0]) // 2, (rw - SIZE[1]) // 2
    x = x[:, top : top + SIZE[0], left : left + SIZE[1]].numpy()
    return (x - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))


def _by_path(store: Path) -> dict[tuple[str, int], np.ndarray]:
    """Every live sample, keyed by (source path, copy)."""
    g = zarr.open_group(store, mode="r")
    paths = g["paths"][:]
    live = g["live"][:]
    images, sources, copies = g["images"][:], g["source_index"][:], g["copy_index"][:]
    out = {}
    for row in np.flatnonzero(live):
        key = (str(paths[sources[row]]), int(copies[row]))
        assert key not in out, key
        out[key] = images[row]
    return out


# ----------------------------------------------------------------------------- growth


def test_new_files_become_new_shards_and_only_they_are_decoded(source, tmp_path, decoded):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    first = prepare(cfg)
    # a new store: the statistics pass, then the shard tasks (two copies share a decode)
    assert decoded.take() == Counter({f.name: 2 for f in source.rglob("*.png")})
    before = _shard_files(out)
    stats = read_attrs(out)["stats"]
    n_before = first.samples
    for i in range(100, 103):
        _image(source / "cat" / f"{i}.png", i)
    _image(source / "eel" / "new-class.png", 7)  # a new class folder

    result = prepare(cfg)
    # the new files only, each decoded once: the statistics are kept (stats.update:
    # freeze), so the shard task measures a file in the decode that makes its samples
    assert decoded.take() == Counter(["100.png", "101.png", "102.png", "new-class.png"])
    assert result.samples == n_before + 4 * 2
    assert result.diff.summary().startswith("4 new, 0 changed, 0 removed")
    after = _shard_files(out)
    assert {k: after[k] for k in before} == before  # written shards untouched
    assert read_attrs(out)["stats"] == stats  # freeze: the rows keep their statistics
    _current_equals_stats(out, source)
    assert verify(out).ok
    # the new classes are appended: labels already written keep their meaning
    ds = ShardDataset(out)
    assert ds.classes == ["cat", "dog", "eel"]
    assert len(ds) == n_before + 8
    samples = _by_path(out)
    for name in ["cat/100.png", "cat/102.png", "eel/new-class.png"]:
        ref = _reference(source / name, stats["mean"], stats["std"])
        for k in range(2):
            # the uint8 resize rounds (one level), then float16 (one ulp)
            tol = 1.0 / 255.0 / min(stats["std"]) + np.spacing(np.float16(np.abs(ref).max())) * 2
            np.testing.assert_allclose(samples[(name, k)].astype(np.float64), ref, rtol=0, atol=tol)
    labels = {ds.classes[label] for _, label in ds}
    assert labels == {"cat", "dog", "eel"}


@pytest.mark.parametrize("update", ["freeze", "refresh"])
def test_a_store_without_crc32c_records_is_updated_and_checked_by_sha256(source, tmp_path, update):
    """A store made before the CRC32C records were kept grows (or is rewritten) without them."""
    out = tmp_path / "o.zarr"
    cfg = _config(source, out, stats={"update": update})
    prepare(cfg)
    shutil.rmtree(out / "records" / "crc32c")  # as such a store is
    for i in range(300, 309):
        _image(source / "cat" / f"{i}.png", i)
    result = prepare(cfg)  # its verify step hashes every new shard's values
    assert result.shards_written >= 2
    assert not (out / "records" / "crc32c").exists()
    assert read_layout(out).n_shards == result.shards
    assert verify(out).ok
    assert verify(out, deep=False).ok
    if update == "refresh":  # every row written again: the same bytes as a new store
        fresh = tmp_path / "fresh.zarr"
        prepare(_config(source, fresh, stats={"update": update}))
        got, expected = _by_path(out), _by_path(fresh)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert np.array_equal(got[key], value), key
    assert len(list(iter_shards(out))) == result.shards


def _run_in_a_new_process(config: Path) -> tuple[str, list[str]]:
    """``imageprep run CONFIG --no-prefect`` in a fresh interpreter: its output, and
    which of torch and dask it imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from flows.cli import app\n"
        f"try:\n    app(['run', {str(config)!r}, '--no-prefect'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('IMPORTED', [m for m in ('torch', 'dask') if m in sys.modules])\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    ).stdout
    last = [line for line in out.splitlines() if line.startswith("IMPORTED")][-1]
    return out, json.loads(last.split(" ", 1)[1].replace("'", '"'))


def test_a_rerun_over_an_unchanged_source_imports_neither_torch_nor_dask(source, tmp_path):
    """The scheduled run over a folder that did not change: a scan and a diff, nothing heavy."""
    out = tmp_path / "o.zarr"
    config = tmp_path / "run.json"  # JSON is YAML
    data = {
        "source": {"path": str(source)},
        "transform": {"size": list(SIZE)},
        "output": {"path": str(out), "shard_size": 6},
        "runtime": {"workers": 1, "device": "auto"},
    }
    config.write_text(json.dumps(data))
    prepare(validate_config(data))
    text, imported = _run_in_a_new_process(config)
    assert "0 written now" in text
    assert imported == []
    _image(source / "cat" / "new.png", 77)  # a new file: the run decodes, resizes and writes
    text, imported = _run_in_a_new_process(config)
    assert "1 written now" in text
    assert imported == ["torch", "dask"]
    assert verify(out).ok


def test_touch_changes_nothing(source, tmp_path, decoded):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    prepare(cfg)
    decoded.take()
    before = _shard_files(out)
    victim = source / "cat" / "001.png"
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    result = prepare(cfg)
    assert not decoded.take()  # nothing decoded again
    assert result.diff.touched
    assert not result.diff.new
    assert not result.diff.retire
    assert result.shards_written == 0
    assert _shard_files(out) == before
    g = zarr.open_group(out, mode="r")
    row = list(g["paths"][:]).index("cat/001.png")
    assert int(g["files/mtime_ns"][row]) == victim.stat().st_mtime_ns  # the new mtime, kept


def test_changed_and_removed_files_are_retired_and_the_new_content_served(
    source, tmp_path, decoded
):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    prepare(cfg)
    old_cat3 = _by_path(out)[("cat/003.png", 0)]
    # same size, other bytes: only the digest can tell (mtime moves too)
    path = source / "cat" / "003.png"
    img = np.asarray(Image.open(path)).copy()
    img[img.shape[0] // 2, img.shape[1] // 2] = 255 - img[img.shape[0] // 2, img.shape[1] // 2]
    Image.fromarray(img).save(path)
    (source / "dog" / "000.png").unlink()
    decoded.take()
    plan = plan_run(cfg)
    assert plan.diff.changed == ("cat/003.png",)
    assert plan.diff.removed == ("dog/000.png",)
    assert plan.rows_to_retire == 4  # two files, two copies each
    result = prepare(cfg)
    assert decoded.take() == Counter(["003.png"])
    samples = _by_path(out)
    assert ("dog/000.png", 0) not in samples
    assert not np.array_equal(samples[("cat/003.png", 0)], old_cat3)  # the new content
    ds = ShardDataset(out)
    assert len(ds) == 14 * 2
    assert sum(x.shape[0] for x, _ in iter_shards(out)) == 14 * 2
    assert result.retired == read_layout(out).n_samples - 28
    _current_equals_stats(out, source)
    assert verify(out).ok


@pytest.mark.parametrize("change", ["other size", "same size", "touched", "removed"])
def test_a_file_changed_during_the_run_is_named_and_the_rerun_updates(
    source, tmp_path, monkeypatch, change
):
    """Between the statistics pass and the shard that decodes it, one file changes."""
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    victim = source / "cat" / "003.png"
    size = victim.stat().st_size
    real_open_output = run_module.open_output

    def open_then_change(*args, **kwargs):
        state = real_open_output(*args, **kwargs)  # every file measured by now
        if change == "other size":
            _image(victim, 1000)
        elif change == "same size":
            img = np.asarray(Image.open(victim)).copy()
            img[3, 4] = 255 - img[3, 4]
            Image.fromarray(img).save(victim)
            assert victim.stat().st_size == size  # noise compresses to the same size
        elif change == "touched":
            os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
        else:
            victim.unlink()
        return state

    monkeypatch.setattr(run_module, "open_output", open_then_change)
    expected = {
        "other size": rf"cat/003.png changed during the run \(its size is \d+ bytes, it was {size}",
        "same size": r"cat/003.png changed during the run \(same size, but its content is not",
        "removed": r"cat/003.png can no longer be decoded \(file not found\)",
    }
    if change == "touched":  # the same content: nothing to say, the run finishes
        prepare(cfg)
    else:
        with pytest.raises(ShardWriteError, match=expected[change]) as info:
            prepare(cfg)
        assert "resumable, and a rerun updates it" in str(info.value)
    monkeypatch.undo()

    prepare(cfg)  # the rerun: what the message promised
    samples = _by_path(out)
    if change == "removed":
        assert not any(name == "cat/003.png" for name, _ in samples)
    else:
        stats = read_attrs(out)["stats"]
        ref = _reference(victim, stats["mean"], stats["std"])
        tol = 1.0 / 255.0 / min(stats["std"]) + np.spacing(np.float16(np.abs(ref).max())) * 2
        for k in range(2):
            got = samples[("cat/003.png", k)].astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    assert len(samples) == (14 if change == "removed" else 15) * 2
    _current_equals_stats(out, source)
    assert verify(out).ok


def test_refresh_renormalizes_every_live_row_with_the_current_statistics(source, tmp_path):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out, stats={"update": "refresh"})
    prepare(cfg)
    for i in range(200, 206):
        _image(source / "dog" / f"{i}.png", i)
    (source / "cat" / "005.png").unlink()
    prepare(cfg)
    attrs = read_attrs(out)
    ref = compute_stats(source).to_json()
    assert {k: attrs["stats"][k] for k in CONTRACT} == {k: ref[k] for k in CONTRACT}
    # every live row equals what a new store of the changed source holds, bit for bit
    fresh = tmp_path / "fresh.zarr"
    prepare(_config(source, fresh))
    got, expected = _by_path(out), _by_path(fresh)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(got[key], value), key
    assert verify(out).ok


def test_a_config_change_still_needs_overwrite_and_names_the_keys(source, tmp_path):
    out = tmp_path / "o.zarr"
    prepare(_config(source, out))
    with pytest.raises(StoreMismatchError, match=r"transform.size: \[16, 16\] -> \[12, 12\]"):
        prepare(_config(source, out, transform={"size": [12, 12]}))
    prepare(_config(source, out, transform={"size": [12, 12]}, output={"overwrite": True}))
    assert read_layout(out).height == 12


def test_dry_run_writes_nothing(source, tmp_path, decoded):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    plan = plan_run(cfg)
    assert not plan.exists
    assert plan.files_to_decode == 15
    assert not out.exists()
    assert not decoded.take()
    prepare(cfg)
    decoded.take()
    _image(source / "cat" / "300.png", 300)
    tree = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    plan = plan_run(cfg)
    assert plan.exists
    assert plan.files_to_decode == 1
    assert plan.rows_to_add == 2
    assert plan.shards_to_write == 1
    assert any("1 new" in line for line in plan.lines())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == tree
    assert not decoded.take()


# ----------------------------------------------------------------------------- failures


def test_an_update_killed_anywhere_resumes_to_the_store_an_uninterrupted_update_writes(
    source, tmp_path, monkeypatch
):
    def grow(src: Path) -> None:
        for i in range(400, 405):
            _image(src / "cat" / f"{i}.png", i)
        (src / "dog" / "002.png").unlink()

    # the uninterrupted update
    src_a = tmp_path / "a"
    shutil.copytree(source, src_a)
    ref = tmp_path / "ref.zarr"
    prepare(_config(src_a, ref))
    grow(src_a)
    prepare(_config(src_a, ref))
    expected = _arrays(ref)

    # record_files: the coordinator stops after a shard task measured and wrote its files
    # but before their moments reach the file table (finish measures them again)
    kill_points = ["open_output", "write_one_shard", "record_files", "verify_output", "finish"]
    for point in kill_points:
        src = tmp_path / f"src-{point}"
        shutil.copytree(source, src)
        out = tmp_path / f"{point}.zarr"
        cfg = _config(src, out)
        prepare(cfg)
        grow(src)
        real = getattr(run_module, point)
        calls = {"n": 0}

        def crash(*args, _real=real, _point=point, _calls=calls, **kwargs):
            _calls["n"] += 1
            if _point == "write_one_shard" and _calls["n"] < 2:
                return _real(*args, **kwargs)  # one new shard lands, then the crash
            if _point == "open_output":
                _real(*args, **kwargs)  # the segment is laid out, nothing written yet
            raise RuntimeError(f"killed at {_point}")

        monkeypatch.setattr(run_module, point, crash)
        with pytest.raises((RuntimeError, ShardWriteError)):
            prepare(cfg)
        monkeypatch.setattr(run_module, point, real)
        prepare(cfg)
        got = _arrays(out)
        assert got.keys() == expected.keys()
        for name in expected:
            assert np.array_equal(got[name], expected[name]), (point, name)
        assert verify(out).ok


def _arrays(store: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(store, mode="r")
    names = ["images", "labels", "source_index", "copy_index", "live", "paths"]
    names += [
        f"files/{n}"
        for n in ("size", "sha256", "live", "measured", "label", "n", "s1", "s2", "min", "max")
    ]
    names += ["files/image_mean", "files/image_std"]
    names += ["records/rows", "records/sha256", "records/done"]
    return {n: np.asarray(g[n][:]) for n in names}


def test_a_file_broken_during_a_run_is_a_failure_after_the_rerun(source, tmp_path, monkeypatch):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    victim = source / "cat" / "007.png"
    real_open = run_module.open_output

    def open_then_break(*args, **kwargs):
        state = real_open(*args, **kwargs)
        victim.write_bytes(b"broken after the statistics")
        return state

    monkeypatch.setattr(run_module, "open_output", open_then_break)
    with pytest.raises(ShardWriteError, match="a rerun updates it"):
        prepare(cfg)
    monkeypatch.setattr(run_module, "open_output", real_open)
    result = prepare(cfg)  # the changed file is compared again: retired, and now a failure
    assert "cat/007.png" in {f.path for f in result.failures}
    assert ("cat/007.png", 0) not in _by_path(out)
    assert verify(out).ok
    _current_equals_stats(out, source)


def test_known_statistics_measure_each_file_in_the_decode_that_writes_it(source, tmp_path, decoded):
    """A stats file: no statistics pass; the shard tasks measure, and find the bad files."""
    (source / "cat" / "bad.png").write_bytes(b"not a png at all")
    stats_file = tmp_path / "stats.json"
    stats = compute_stats(source).to_json()
    stats["mean"], stats["std"] = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    stats_file.write_text(json.dumps(stats))
    decoded.take()
    out = tmp_path / "o.zarr"
    cfg = _config(source, out, stats={"file": str(stats_file)})
    result = prepare(cfg)
    # every file decoded exactly once, the bad one included (found by its shard task)
    assert decoded.take() == Counter(f.name for f in source.rglob("*.png"))
    # the same rejection, with the same reason, as the statistics pass gives
    assert [(f.path, f.error) for f in result.failures] == [
        ("cat/bad.png", "not an image: cannot identify image file")
    ]
    assert [(f.path, f.error) for f in compute_stats(source).failures] == [
        (f.path, f.error) for f in result.failures
    ]
    attrs = read_attrs(out)
    assert attrs["stats"]["mean"] == [0.4, 0.5, 0.6]  # the file's, used to normalize
    assert [f["path"] for f in attrs["failures"]] == ["cat/bad.png"]
    _current_equals_stats(out, source)  # the moments of every good file, exact
    g = zarr.open_group(out, mode="r")
    paths = [str(p) for p in g["paths"][:]]
    bad = paths.index("cat/bad.png")
    assert not g["files/live"][bad]
    assert g["files/measured"][:].sum() == len(paths) - 1
    assert len(ShardDataset(out)) == 15 * 2  # the bad file's rows are holes, never served
    assert ("cat/bad.png", 0) not in _by_path(out)
    assert result.samples == 15 * 2
    # a rerun decodes nothing: the bad file is a known failure while it is unchanged
    decoded.take()
    again = prepare(cfg)
    assert not decoded.take()
    assert again.shards_written == 0
    assert [f.path for f in again.failures] == ["cat/bad.png"]
    assert verify(out).ok


# ----------------------------------------------------------------------------- compact


def test_compact_drops_retired_rows_and_keeps_every_live_sample(source, tmp_path):
    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    prepare(cfg)
    for name in ["cat/001.png", "dog/004.png"]:
        (source / name).unlink()
    _image(source / "cat" / "500.png", 500)
    prepare(cfg)
    before = _by_path(out)
    n_before = read_layout(out).n_samples
    result = compact(out)
    assert result.rows_before == n_before
    assert result.rows_after == len(before)
    assert read_layout(out).n_samples == len(before)
    after = _by_path(out)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert np.array_equal(after[key], value)
    assert verify(out).ok
    assert compact(out).dropped == 0  # nothing left to drop
    # the store goes on updating after a compaction
    _image(source / "cat" / "501.png", 501)
    assert prepare(cfg).diff.summary().startswith("1 new")
    _current_equals_stats(out, source)


def test_a_killed_compaction_resumes(source, tmp_path, monkeypatch):
    import pipeline.store.compaction as compact_module

    out = tmp_path / "o.zarr"
    cfg = _config(source, out)
    prepare(cfg)
    (source / "cat" / "003.png").unlink()
    prepare(cfg)
    expected = _by_path(out)
    real = compact_module._copy_shard
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-copy")
        return real(*args, **kwargs)

    monkeypatch.setattr(compact_module, "_copy_shard", crash)
    with pytest.raises(Exception, match="killed mid-copy"):
        compact(out)
    assert out.with_name(out.name + ".compacting").is_dir()
    monkeypatch.setattr(compact_module, "_copy_shard", real)
    compact(out)
    assert _by_path(out).keys() == expected.keys()
    assert verify(out).ok
    # a kill between the two renames of the swap: the next command completes it
    (source / "cat" / "009.png").unlink()
    prepare(cfg)
    real_rename = compact_module._rename
    seen = {"n": 0}

    def rename(a, b):
        seen["n"] += 1
        if seen["n"] == 2:
            raise OSError("killed between the renames")
        return real_rename(a, b)

    monkeypatch.setattr(compact_module, "_rename", rename)
    with pytest.raises(OSError, match="between the renames"):
        compact(out)
    monkeypatch.setattr(compact_module, "_rename", real_rename)
    assert not out.exists()
    result = prepare(cfg)  # the run completes the swap, then finds nothing new
    assert out.is_dir()
    assert result.shards_written == 0
    assert verify(out).ok
