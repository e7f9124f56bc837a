"""The prepare run end to end: store contract, values, determinism, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image, ImageOps

from ops import resized_shape
from pipeline.config import RunConfig, validate_config
from pipeline.errors import ShardWriteError, StoreError, StoreLockedError, StoreMismatchError
from pipeline.reader import ShardDataset
from pipeline.run import prepare, store_layout
from pipeline.stats import compute_stats
from pipeline.store import StoreLock, done_shards, read_records, verify
from pipeline.synthetic import make_dataset

SIZE = (24, 24)
AUGMENT = [
    {"op": "random_resized_crop", "scale": [0.4, 1.0], "ratio": [0.75, 1.333]},
    {"op": "invert", "p": 0.5},
    {"op": "dog_noise", "band": [0.05, 0.25], "rms": [0.02, 0.08], "p": 0.8},
    {"op": "shadows_highlights", "shadows": [0.0, 0.4], "highlights": [-0.3, 0.0], "p": 0.5},
    {"op": "gaussian_blur", "sigma": [0.1, 1.2], "p": 0.5},
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):
    # sizes stay below 2x the target, so no JPEG is draft-decoded: the reference
    # below decodes at full size too
    return make_dataset(
        tmp_path_factory.mktemp("src") / "images", n_per_class=5, sizes=(24, 46), seed=3
    )


def _config(src: Path, out: Path, **sections) -> RunConfig:
    data = {
        "source": {"path": str(src)},
        "transform": {"size": list(SIZE), "augment": []},
        "output": {"path": str(out), "shard_size": 7},
        "runtime": {"workers": 2, "batch_size": 4, "device": "cpu"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(path, mode="r")
    return {
        name: g[name][:] for name in ("images", "labels", "source_index", "copy_index", "paths")
    }


def _reference_sample(path: Path, mean, std) -> np.ndarray:
    """Independent float64 version of decode -> shorter-side-crop -> normalize."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
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


def test_store_contract_and_values(source, tmp_path):
    out = tmp_path / "ds.zarr"
    cfg = _config(source.root, out, transform={"copies": 2})
    result = prepare(cfg)
    valid = sorted(f.path for f in source.valid)
    broken = sorted(f.path for f in source.broken)
    n = 2 * len(valid)
    assert (result.samples, result.shards) == (n, -(-n // 7))
    assert result.shards_written == result.shards

    g = zarr.open_group(out, mode="r")
    images = g["images"]
    assert images.shape == (n, 3, *SIZE)
    assert images.dtype == np.float16
    assert images.chunks == (1, 3, *SIZE)
    assert images.shards == (7, 3, *SIZE)
    a = _arrays(out)
    assert a["labels"].dtype == np.int64
    assert a["source_index"].dtype == np.int64
    assert a["copy_index"].dtype == np.int32
    assert [str(p) for p in a["paths"]] == valid
    np.testing.assert_array_equal(a["source_index"], np.repeat(np.arange(len(valid)), 2))
    np.testing.assert_array_equal(a["copy_index"], np.tile([0, 1], len(valid)))

    attrs = g.attrs["imageprep"]
    classes = attrs["classes"]
    assert classes == list(source.classes)
    for row in range(n):
        folder = str(a["paths"][a["source_index"][row]]).split("/")[0]
        assert classes[a["labels"][row]] == folder
    assert sorted(f["path"] for f in attrs["failures"]) == broken
    assert all(f["error"] for f in attrs["failures"])
    expected = compute_stats(source.root).to_json()
    for key in ("mean", "std", "var", "count", "images", "min", "max"):
        assert attrs["stats"][key] == expected[key]
    assert attrs["config_identity"] == cfg.identity()
    assert attrs["complete"] is True
    assert verify(out).ok

    # values: an independent float64 decode/resize/normalize, within the uint8
    # rounding of the resize (<= 1 level) and one float16 ulp
    mean, std = np.array(attrs["stats"]["mean"]), np.array(attrs["stats"]["std"])
    stored = a["images"].astype(np.float64)
    for i, rel in enumerate(valid):
        ref = _reference_sample(source.root / rel, mean, std)
        tol = 1.0 / 255.0 / std.min() + np.spacing(np.float16(np.abs(ref).max())) * 2
        for k in range(2):  # no augmentation: both copies are the same sample
            np.testing.assert_allclose(stored[2 * i + k], ref, rtol=0, atol=tol, err_msg=rel)

    # read back through a DataLoader with worker processes
    loader = torch.utils.data.DataLoader(ShardDataset(out), batch_size=5, num_workers=2)
    xs, ys = zip(*loader, strict=True)
    np.testing.assert_array_equal(torch.cat(xs).numpy(), a["images"].astype(np.float32))
    np.testing.assert_array_equal(torch.cat(ys).numpy(), a["labels"])


def test_rerun_resumes_without_rewriting(source, tmp_path):
    out = tmp_path / "ds.zarr"
    cfg = _config(source.root, out)
    first = prepare(cfg)
    before = _arrays(out)
    again = prepare(cfg)
    assert again.resumed
    assert (again.shards_written, again.shards_skipped) == (0, first.shards)
    after = _arrays(out)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_augmented_values_do_not_depend_on_workers_shards_or_batches(source, tmp_path):
    def run(name: str, **runtime_and_output) -> np.ndarray:
        out = tmp_path / f"{name}.zarr"
        runtime = {k: v for k, v in runtime_and_output.items() if k != "shard_size"}
        output = {"shard_size": runtime_and_output.get("shard_size", 7)}
        cfg = _config(
            source.root,
            out,
            transform={"augment": AUGMENT, "copies": 2},
            runtime=runtime,
            output=output,
        )
        prepare(cfg)
        return _arrays(out)["images"]

    base = run("base", workers=2, batch_size=4)
    np.testing.assert_array_equal(run("one-worker", workers=1, batch_size=4), base)
    for name, kw in [("shards", {"shard_size": 3}), ("batches", {"batch_size": 1})]:
        other = run(name, workers=2, **{"batch_size": 4, **kw})
        ulp = np.spacing(np.abs(base.astype(np.float32)).astype(np.float16)).astype(np.float32)
        diff = np.abs(other.astype(np.float32) - base.astype(np.float32))
        assert (diff <= ulp).all(), f"{name}: max difference {diff.max()}"
    # augmentation really happened: copies of one source differ
    assert not np.array_equal(base[0], base[1])


def _objects(path: Path) -> dict[str, bytes]:
    """Every stored object of ``images`` and the records, by key."""
    root = Path(path)
    names = ("images", "records/sha256", "records/crc32c", "live", "labels")
    return {
        str(f.relative_to(root)): f.read_bytes()
        for name in names
        for f in sorted((root / name).rglob("c/**/*"))
        if f.is_file()
    }


@pytest.mark.parametrize(
    ("transform", "output", "batch_size"),
    [
        ({"augment": []}, {"dtype": "float16"}, 4),  # the 8-bit table
        ({"augment": []}, {"dtype": "uint8"}, 4),
        ({"augment": AUGMENT, "copies": 2}, {"dtype": "float32"}, 1),  # a box per copy
        ({"augment": AUGMENT[1:], "copies": 3}, {"dtype": "float16"}, 1),  # one decode, 3 rows
    ],
)
def test_samples_made_in_the_decode_threads_equal_the_batched_path(
    source, tmp_path, monkeypatch, transform, output, batch_size
):
    """On the CPU the decode threads finish and encode each sample; a GPU finishes batches.

    Both ways give the same stored bytes: every shard object, record and row
    flag, with the statistics given (broken files found by the shard tasks
    are holes) and with augmentation, copies and per-copy crop boxes. The
    batched path runs here by hiding the images' format from the shard tasks;
    its batch of one sample keeps augmentation results bit for bit (larger
    batches may round an augmented value differently by an ulp).
    """
    import pipeline.store as store_module

    stats = compute_stats(source.root).to_json()
    stats_file = tmp_path / "stats.json"
    stats_file.write_text(json.dumps(stats))

    def run(name: str) -> Path:
        out = tmp_path / f"{name}.zarr"
        cfg = _config(
            source.root,
            out,
            stats={"file": str(stats_file)},
            transform={**transform, **({"normalize": False} if output["dtype"] == "uint8" else {})},
            output=output,
            runtime={"batch_size": batch_size},
        )
        prepare(cfg)
        return out

    in_threads = run("in-threads")
    calls: list[object] = []
    with monkeypatch.context() as m:

        def hidden(array: object) -> None:
            calls.append(array)
            return None

        m.setattr(store_module, "shard_format", hidden)
        batched = run("batched")
    assert calls, "the batched path did not run"
    a, b = _objects(in_threads), _objects(batched)
    assert a.keys() == b.keys()
    assert any(k.startswith("images/") for k in a)
    for key in a:
        assert a[key] == b[key], key
    g = zarr.open_group(in_threads, mode="r")
    assert not g["live"][:].all(), "the broken files should be holes"
    assert verify(in_threads).ok


def test_resized_stats_make_the_samples_standard(source, tmp_path):
    out = tmp_path / "ds.zarr"
    cfg = _config(source.root, out, stats={"at": "resized"})
    prepare(cfg)
    x = zarr.open_group(out, mode="r")["images"][:].astype(np.float64)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    # float16 keeps ~3 significant digits: its rounding error averages out in the mean
    np.testing.assert_allclose(mean, 0.0, atol=1e-3)
    np.testing.assert_allclose(std, 1.0, atol=1e-3)


@pytest.mark.parametrize("method", ["chan", "two-pass"])
def test_resized_stats_methods_agree_with_exact(source, tmp_path, method):
    exact = _config(source.root, tmp_path / "e.zarr", stats={"at": "resized"})
    other = _config(source.root, tmp_path / "o.zarr", stats={"at": "resized", "method": method})
    a = zarr.open_group(prepare(exact).store, mode="r").attrs["imageprep"]["stats"]
    b = zarr.open_group(prepare(other).store, mode="r").attrs["imageprep"]["stats"]
    np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-12)
    np.testing.assert_allclose(b["var"], a["var"], rtol=1e-10)


def test_stats_file_and_uint8_output(source, tmp_path):
    stats = compute_stats(source.root).to_json()
    stats["mean"], stats["std"] = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    out = tmp_path / "f.zarr"
    prepare(_config(source.root, out, stats={"file": str(path)}, output={"dtype": "float32"}))
    g = zarr.open_group(out, mode="r")
    assert g.attrs["imageprep"]["stats"]["mean"] == [0.25, 0.5, 0.75]
    assert sorted(f["path"] for f in g.attrs["imageprep"]["failures"]) == sorted(
        f.path for f in source.broken
    )
    raw = tmp_path / "u8.zarr"
    prepare(_config(source.root, raw, output={"dtype": "uint8"}, transform={"normalize": False}))
    r = zarr.open_group(raw, mode="r")
    u8 = r["images"][:]
    assert u8.dtype == np.uint8
    # with a stats file the broken files are found by the shard tasks that decode them:
    # their rows are holes, never served; every other row is a sample of the same file
    live = g["live"][:]
    paths = g["paths"][:]
    served = sorted(str(paths[i]) for i in g["source_index"][:][live])
    assert served == sorted(str(p) for p in r["paths"][:][r["source_index"][:]])
    assert not {str(paths[i]) for i in g["source_index"][:][~live]} - {
        f.path for f in source.broken
    }
    row_of = {(str(p), 0): i for i, p in enumerate(r["paths"][:][r["source_index"][:]])}
    # the float32 store is exactly (u8 / 255 - mean) / std of the same resized pixels
    f32 = g["images"][:].astype(np.float64)[live]
    expect = u8[[row_of[(str(paths[i]), 0)] for i in g["source_index"][:][live]]]
    mean = np.array([0.25, 0.5, 0.75]).reshape(1, 3, 1, 1)
    std = np.array([0.5, 0.25, 0.125]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(f32, (expect / 255.0 - mean) / std, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_resize_modes(source, tmp_path, mode):
    out = tmp_path / f"{mode}.zarr"
    cfg = _config(
        source.root,
        out,
        transform={"resize": mode, "size": [16, 30], "normalize": False},
        output={"dtype": "uint8"},
    )
    prepare(cfg)
    x = zarr.open_group(out, mode="r")["images"][:]
    assert x.shape[1:] == (3, 16, 30)
    if mode == "pad":  # square-ish sources in a wide frame: black bars left and right
        assert (x[:, :, :, 0] == 0).all()
        assert (x[:, :, :, -1] == 0).all()


def test_other_config_is_refused_unless_overwrite(source, tmp_path):
    out = tmp_path / "ds.zarr"
    prepare(_config(source.root, out))
    with pytest.raises(StoreMismatchError, match=r"transform\.size"):
        prepare(_config(source.root, out, transform={"size": [16, 16]}))
    result = prepare(
        _config(source.root, out, transform={"size": [16, 16]}, output={"overwrite": True})
    )
    assert not result.resumed
    assert zarr.open_group(out, mode="r")["images"].shape[2:] == (16, 16)


def test_a_held_store_is_refused(source, tmp_path):
    out = tmp_path / "ds.zarr"
    with StoreLock(out), pytest.raises(StoreLockedError, match="in use"):
        prepare(_config(source.root, out))


def test_source_changed_during_the_run_fails_the_shard_and_stays_resumable(
    source, tmp_path, monkeypatch
):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source.root, src)
    out = tmp_path / "ds.zarr"
    cfg = _config(src, out)
    victim = sorted(f.path for f in source.valid)[10]

    from pipeline import run as run_module

    real_open_output = run_module.open_output

    def open_then_break(*args, **kwargs):
        state = real_open_output(*args, **kwargs)
        (src / victim).write_bytes(b"garbage")  # after the statistics pass
        return state

    monkeypatch.setattr(run_module, "open_output", open_then_break)
    with pytest.raises(ShardWriteError, match=rf"shard 1: {victim} changed during the run"):
        prepare(cfg)
    done = done_shards(out)
    assert 1 not in done
    assert len(done) == len(read_records(out)) - 1


def _done_so_far(path: Path) -> int:
    try:
        return len(done_shards(path))
    except StoreError:  # not there yet, or still being created
        return 0


_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    import pipeline.store as shards
    from pipeline.config import load_config
    from pipeline.run import prepare, store_layout

    real = shards.write_shard
    def slow(*args, **kwargs):
        record = real(*args, **kwargs)
        time.sleep(0.4)
        return record
    shards.write_shard = slow
    prepare(load_config(sys.argv[1]))
    """
)


def test_sigkill_then_rerun_equals_an_uninterrupted_run(source, tmp_path, monkeypatch):
    import yaml

    out = tmp_path / "killed.zarr"
    cfg = _config(
        source.root, out, transform={"augment": AUGMENT, "copies": 2}, runtime={"workers": 1}
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.resolved_dict()))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(config_file)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _done_so_far(out) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_done = done_shards(out)
    total = len(read_records(out))
    assert 2 <= len(killed_done) < total

    import pipeline.store as shards

    calls: list[int] = []
    real = shards.write_shard

    def counting(store, index, **kwargs):
        calls.append(index)
        return real(store, index, **kwargs)

    monkeypatch.setattr(shards, "write_shard", counting)
    result = prepare(cfg)
    assert result.resumed
    assert sorted(calls) == sorted(set(range(total)) - killed_done)
    assert verify(out).ok

    monkeypatch.setattr(shards, "write_shard", real)
    clean = tmp_path / "clean.zarr"
    prepare(_config(source.root, clean, transform={"augment": AUGMENT, "copies": 2}))
    a, b = _arrays(out), _arrays(clean)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r.sha256 for r in read_records(out)] == [r.sha256 for r in read_records(clean)]


@pytest.mark.gpu
def test_cuda_run_equals_cpu_run(source, tmp_path):
    cpu = prepare(_config(source.root, tmp_path / "cpu.zarr", transform={"augment": AUGMENT})).store
    gpu = prepare(
        _config(
            source.root,
            tmp_path / "gpu.zarr",
            transform={"augment": AUGMENT},
            runtime={"device": "cuda"},
        )
    ).store
    a, b = _arrays(cpu)["images"], _arrays(gpu)["images"]
    np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=0, atol=2e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_cuda_device_is_a_config_error_before_any_work(source, tmp_path):
    from pipeline.errors import ConfigError

    out = tmp_path / "ds.zarr"
    with pytest.raises(ConfigError, match=r"runtime\.device: 'cuda' asked for, but this machine"):
        prepare(_config(source.root, out, runtime={"device": "cuda"}))
    assert not out.exists()  # nothing scanned into a store, nothing decoded


def test_layout_from_config():
    cfg = validate_config(
        {
            "source": {"path": "/s"},
            "output": {"path": "/o", "shard_size": 8, "dtype": "float32"},
            "transform": {"size": [32, 48]},
        }
    )
    layout = store_layout(cfg, n_samples=20)
    assert (layout.height, layout.width, layout.shard_size, layout.dtype) == (32, 48, 8, "float32")
    assert layout.compression == cfg.output.compression.compression()
