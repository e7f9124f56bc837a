from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.config import config_differences, validate_config
from pipeline.errors import (
    InvalidArgumentError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)
from pipeline.run import store_attrs
from pipeline.store import (
    Compression,
    EncodedImages,
    StoreLayout,
    StoreLock,
    create_store,
    done_shards,
    finalize,
    open_or_create,
    read_attrs,
    read_layout,
    read_records,
    shard_format,
    verify,
    write_shard,
    writer,
)

REPO = Path(__file__).resolve().parents[2]
ATTRS = {"config_identity": "id-1", "source_fingerprint": "fp-1", "classes": ["a", "b", "c"]}


def _data(layout: StoreLayout, seed: int = 0) -> dict[str, np.ndarray]:
    """Random sample arrays for every row of ``layout``."""
    rng = np.random.default_rng(seed)
    n, shape = layout.n_samples, layout.sample_shape
    if layout.dtype == "uint8":
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    else:
        images = rng.normal(0.0, 1.5, size=(n, *shape)).astype(layout.dtype)
    return {
        "images": images,
        "labels": rng.integers(-1, 3, size=n).astype(np.int64),
        "source_index": rng.integers(0, 1000, size=n).astype(np.int64),
        "copy_index": rng.integers(0, 4, size=n).astype(np.int32),
    }


def _rows(data: dict[str, np.ndarray], rows: range) -> dict[str, np.ndarray]:
    return {k: v[rows.start : rows.stop] for k, v in data.items()}


def _write_all(path, layout, data, order=None):
    for i in order if order is not None else range(layout.n_shards):
        write_shard(path, i, **_rows(data, layout.shard_rows(i)))


def _reference_digest(images, labels, source_index, copy_index) -> str:
    """SHA-256 of the documented canonical bytes, built independently of shard_digest."""
    blob = b"".join(
        [
            images.astype(images.dtype.newbyteorder("<")).tobytes(order="C"),
            labels.astype("<i8").tobytes(),
            source_index.astype("<i8").tobytes(),
            copy_index.astype("<i4").tobytes(),
        ]
    )
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture
def layout() -> StoreLayout:
    return StoreLayout(n_samples=23, channels=3, height=6, width=5, dtype="float16", shard_size=4)


@pytest.fixture
def store(tmp_path, layout) -> Path:
    path = tmp_path / "ds.zarr"
    create_store(path, layout, attrs=ATTRS, paths=["a/0.png", "b/ü 1.png", "c/2.tif"])
    return path


# --------------------------------------------------------------------------- layout


def test_layout_rows_cover_every_sample_once():
    for n, s in [(0, 3), (1, 1), (10, 4), (12, 4), (7, 100)]:
        layout = StoreLayout(
            n_samples=n, channels=1, height=1, width=1, dtype="uint8", shard_size=s
        )
        rows = [r for i in range(layout.n_shards) for r in layout.shard_rows(i)]
        assert rows == list(range(n))
        assert layout.n_shards == (n + s - 1) // s
        assert StoreLayout.from_json(layout.to_json()) == layout


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": -1}, "n_samples must be an integer >= 0, got -1"),
        ({"channels": 0}, "channels must be an integer >= 1, got 0"),
        ({"shard_size": 2.0}, "shard_size must be an integer >= 1, got 2.0"),
        ({"dtype": "float64"}, "dtype must be one of float16, float32, uint8, got 'float64'"),
    ],
)
def test_layout_rejects_bad_values(kwargs, match):
    base = {
        "n_samples": 4,
        "channels": 3,
        "height": 2,
        "width": 2,
        "dtype": "uint8",
        "shard_size": 2,
    }
    with pytest.raises(InvalidArgumentError, match=match):
        StoreLayout(**{**base, **kwargs})


def test_shard_rows_rejects_bad_index(layout):
    with pytest.raises(
        InvalidArgumentError, match=r"index must be a shard index in \[0, 6\), got 6"
    ):
        layout.shard_rows(6)


# --------------------------------------------------------------------------- layout on disk


def test_store_layout_on_disk_is_the_contract(store, layout):
    """Read the Zarr v3 metadata documents directly, not through zarr-python."""
    meta = json.loads((store / "images" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["shape"] == [23, 3, 6, 5]
    assert meta["data_type"] == "float16"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 3, 6, 5]  # the shard
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["chunk_shape"] == [1, 3, 6, 5]
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "zstd"]
    for name, dtype in [("labels", "int64"), ("source_index", "int64"), ("copy_index", "int32")]:
        meta = json.loads((store / name / "zarr.json").read_text())
        assert meta["shape"] == [23]
        assert meta["data_type"] == dtype
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4]  # one chunk per shard
    live = json.loads((store / "live" / "zarr.json").read_text())
    assert (live["shape"], live["data_type"]) == ([23], "bool")
    assert live["chunk_grid"]["configuration"]["chunk_shape"] == [4]
    paths = json.loads((store / "paths" / "zarr.json").read_text())
    assert paths["shape"] == [3]
    assert paths["data_type"] == "string"
    expected_files = {
        "size": ("int64", [3]),
        "mtime_ns": ("int64", [3]),
        "sha256": ("uint8", [3, 32]),
        "label": ("int64", [3]),
        "live": ("bool", [3]),
        "n": ("int64", [3]),
        "s1": ("int64", [3, 3]),
        "s2": ("uint64", [3, 3]),
        "min": ("uint16", [3, 3]),
        "max": ("uint16", [3, 3]),
        "image_mean": ("float64", [3, 3]),
        "image_std": ("float64", [3, 3]),
    }
    for name, (dtype, shape) in expected_files.items():
        meta = json.loads((store / "files" / name / "zarr.json").read_text())
        assert (meta["data_type"], meta["shape"]) == (dtype, shape), name
    for name, shape, chunk in [
        ("rows", [6], [1]),
        ("sha256", [6, 32], [1, 32]),
        ("done", [6], [1]),
    ]:
        meta = json.loads((store / "records" / name / "zarr.json").read_text())
        assert meta["shape"] == shape
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == chunk
    group = json.loads((store / "zarr.json").read_text())
    attrs = group["attributes"]["imageprep"]
    assert attrs["format_version"] == 2
    assert attrs["layout"] == layout.to_json()
    assert attrs["layout"]["segments"] == [[0, 23]]
    assert attrs["files"] == 3
    assert attrs["classes"] == ["a", "b", "c"]
    assert zarr.open_array(store / "paths", mode="r")[:].tolist() == [
        "a/0.png",
        "b/ü 1.png",
        "c/2.tif",
    ]


# --------------------------------------------------------------------------- write / read back


def test_concurrent_shards_in_random_order_read_back_exactly(store, layout):
    data = _data(layout)
    order = np.random.default_rng(1).permutation(layout.n_shards).tolist()
    with ThreadPoolExecutor(max_workers=4) as pool:
        records = list(
            pool.map(lambda i: write_shard(store, i, **_rows(data, layout.shard_rows(i))), order)
        )
    group = zarr.open_group(store, mode="r")
    for name, expected in data.items():
        got = np.asarray(group[name][:])
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    by_index = {r.index: r for r in records}
    stored = read_records(store)
    assert [r.index for r in stored] == list(range(layout.n_shards))
    for record in stored:
        rows = layout.shard_rows(record.index)
        assert record.done
        assert record.rows == len(rows)
        assert record == by_index[record.index]
        assert record.sha256 == _reference_digest(**_rows(data, rows))
    assert [r.rows for r in stored] == [4, 4, 4, 4, 4, 3]  # partial last shard
    assert done_shards(store) == set(range(layout.n_shards))
    report = verify(store)
    assert report.ok
    assert report.verified == tuple(range(6))
    assert report.unfinished == ()
    assert report.mismatched == ()


def _reference_crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: independent code."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_the_record_holds_the_crc32c_of_the_stored_bytes(store, layout):
    assert _reference_crc32c(b"123456789") == 0xE3069283  # the reference's own check value
    data = _data(layout)
    _write_all(store, layout, data)
    for record in read_records(store):
        rows = _rows(data, layout.shard_rows(record.index))
        stored = (store / "images" / "c" / str(record.index) / "0" / "0" / "0").read_bytes()
        assert record.crc32c is not None
        assert record.crc32c[0] == _reference_crc32c(stored)
        canonical = b"".join(
            [
                rows["labels"].astype("<i8").tobytes(),
                rows["source_index"].astype("<i8").tobytes(),
                rows["copy_index"].astype("<i4").tobytes(),
            ]
        )
        assert record.crc32c[1] == _reference_crc32c(canonical)


def test_a_quick_verify_reads_bytes_without_decoding(store, layout, shard_decodes):
    data = _data(layout)
    _write_all(store, layout, data)
    assert verify(store, deep=False).verified == tuple(range(layout.n_shards))
    assert shard_decodes == []
    assert verify(store).ok  # the deep check decodes every shard
    assert len(shard_decodes) == layout.n_shards
    # a byte of shard 2 changed on disk: the quick check finds it, and the SHA-256 explains it
    f = store / "images" / "c" / "2" / "0" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[3] ^= 0x40
    f.write_bytes(bytes(raw))
    report = verify(store, deep=False)
    assert [p.index for p in report.mismatched] == [2]
    assert "sha256" in report.mismatched[0].reason or "cannot read" in report.mismatched[0].reason


def test_write_shard_casts_floats_to_the_store_dtype(store, layout):
    data = _data(layout)
    rows = layout.shard_rows(1)
    wide = np.random.default_rng(5).random((4, 3, 6, 5))  # float64
    record = write_shard(store, 1, **{**_rows(data, rows), "images": wide})
    stored = np.asarray(zarr.open_array(store / "images", mode="r")[4:8])
    np.testing.assert_array_equal(stored, wide.astype(np.float16))  # round to nearest
    assert record.sha256 == _reference_digest(
        wide.astype(np.float16),
        *(_rows(data, rows)[k] for k in ("labels", "source_index", "copy_index")),
    )


def test_write_shard_of_encoded_samples_equals_the_array(tmp_path, layout):
    """Samples encoded one by one (EncodedImages) give the same objects and records."""
    data = _data(layout)
    paths: dict[str, Path] = {}
    for name in ("array", "encoded"):
        paths[name] = tmp_path / f"{name}.zarr"
        create_store(paths[name], layout, attrs=ATTRS, paths=[])
    fmt = shard_format(zarr.open_array(paths["encoded"] / "images", mode="r"))
    assert fmt is not None
    for i in range(layout.n_shards):
        rows = _rows(data, layout.shard_rows(i))
        a = write_shard(paths["array"], i, **rows)
        encoded = EncodedImages(fmt)
        for sample in rows["images"]:
            encoded.add(sample, fmt.encode_chunk(sample))
        b = write_shard(paths["encoded"], i, **{**rows, "images": encoded})
        assert a == b
        assert b.sha256 == _reference_digest(
            *(rows[k] for k in ("images", "labels", "source_index", "copy_index"))
        )
    for f in sorted((paths["array"] / "images").rglob("c/**/*")):
        if f.is_file():
            assert (paths["encoded"] / f.relative_to(paths["array"])).read_bytes() == f.read_bytes()
    assert verify(paths["encoded"]).ok


def test_write_shard_refuses_encoded_samples_that_do_not_fit(store, layout):
    data = _rows(_data(layout), layout.shard_rows(0))
    fmt = shard_format(zarr.open_array(store / "images", mode="r"))
    assert fmt is not None
    short = EncodedImages(fmt)
    short.add(data["images"][0], fmt.encode_chunk(data["images"][0]))
    with pytest.raises(InvalidArgumentError, match="shard 0 has 4 rows, got 1 encoded"):
        write_shard(store, 0, **{**data, "images": short})
    other = EncodedImages(replace(fmt, compressor=None))
    for sample in data["images"]:
        other.add(sample, other.format.encode_chunk(sample))
    with pytest.raises(InvalidArgumentError, match="not in the format of the store's images"):
        write_shard(store, 0, **{**data, "images": other})
    with pytest.raises(InvalidArgumentError, match="a sample must have shape"):
        short.add(data["images"][:2], b"")
    assert done_shards(store) == set()


def test_done_shards_after_partial_write(store, layout):
    data = _data(layout)
    _write_all(store, layout, data, order=[4, 0, 2])
    assert done_shards(store) == {0, 2, 4}
    records = read_records(store)
    assert [r.done for r in records] == [True, False, True, False, True, False]
    assert records[1].rows == 0
    assert records[1].sha256 == ""
    report = verify(store)
    assert not report.ok
    assert report.unfinished == (1, 3, 5)
    assert report.verified == (0, 2, 4)
    assert "3/6 shards verified, 3 unfinished" in report.summary()


def test_rewriting_a_shard_clears_done_before_touching_data(store, layout, monkeypatch):
    data = _data(layout)
    _write_all(store, layout, data)
    real = writer.get_array

    def failing(group, name):
        if name == "labels":
            raise OSError("disk full")
        return real(group, name)

    monkeypatch.setattr(writer, "get_array", failing)
    with pytest.raises(OSError, match="disk full"):
        write_shard(store, 2, **_rows(_data(layout, seed=9), layout.shard_rows(2)))
    monkeypatch.setattr(writer, "get_array", real)
    assert done_shards(store) == {0, 1, 3, 4, 5}  # new images, old labels: not vouched for
    assert verify(store).unfinished == (2,)


@pytest.mark.parametrize(
    ("codec", "dtype"),
    [
        ({"codec": "zstd", "level": 9}, "float16"),
        ({"codec": "blosc"}, "float32"),
        ({"codec": "blosc", "level": 1}, "uint8"),
        ({"codec": "gzip", "level": 1}, "float16"),
        ({"codec": "none"}, "uint8"),
    ],
)
def test_compression_codecs_round_trip(tmp_path, codec, dtype):
    compression = Compression(**codec)
    layout = StoreLayout(
        n_samples=9,
        channels=2,
        height=7,
        width=3,
        dtype=dtype,
        shard_size=4,
        compression=compression,
    )
    path = tmp_path / "c.zarr"
    create_store(path, layout, attrs=ATTRS, paths=[])
    data = _data(layout, seed=3)
    _write_all(path, layout, data)
    group = zarr.open_group(path, mode="r")
    for name, expected in data.items():
        np.testing.assert_array_equal(np.asarray(group[name][:]), expected)
    meta = json.loads((path / "images" / "zarr.json").read_text())
    inner = [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]]
    expected_codecs = {
        "zstd": ["bytes", "zstd"],
        "blosc": ["bytes", "blosc"],
        "gzip": ["bytes", "gzip"],
    }
    assert inner == expected_codecs.get(compression.codec, ["bytes"])
    assert read_layout(path).compression == compression
    assert verify(path).ok


def test_empty_store(tmp_path):
    layout = StoreLayout(n_samples=0, channels=3, height=4, width=4, dtype="float16", shard_size=8)
    create_store(tmp_path / "e.zarr", layout, attrs=ATTRS, paths=[])
    assert done_shards(tmp_path / "e.zarr") == set()
    report = verify(tmp_path / "e.zarr")
    assert report.ok
    assert report.n_shards == 0
    finalize(tmp_path / "e.zarr", {"failures": []})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"images": np.zeros((4, 3, 6, 6), np.float16)},
            r"images must have shape \(4, 3, 6, 5\) for shard 0",
        ),
        (
            {"images": np.zeros((4, 3, 6, 5), np.int16)},
            "images must be floating-point for a float16 store",
        ),
        ({"labels": np.zeros(4)}, "labels must have an integer dtype, got float64"),
        ({"labels": np.zeros(5, np.int64)}, r"labels must have shape \(4,\), got \(5,\)"),
        ({"copy_index": np.full(4, 2**40)}, "copy_index must fit in int32"),
    ],
)
def test_write_shard_rejects_bad_arguments(store, layout, change, match):
    args = {**_rows(_data(layout), layout.shard_rows(0)), **change}
    with pytest.raises(InvalidArgumentError, match=match):
        write_shard(store, 0, **args)
    assert done_shards(store) == set()


def test_uint8_store_takes_uint8_only(tmp_path):
    layout = StoreLayout(n_samples=2, channels=1, height=2, width=2, dtype="uint8", shard_size=2)
    create_store(tmp_path / "u.zarr", layout, attrs=ATTRS, paths=[])
    data = _data(layout)
    with pytest.raises(
        InvalidArgumentError, match="images must be uint8 for a uint8 store, got float32"
    ):
        write_shard(tmp_path / "u.zarr", 0, **{**data, "images": data["images"].astype(np.float32)})


# --------------------------------------------------------------------------- verify


def test_verify_reports_exactly_the_shard_with_a_flipped_byte(store, layout):
    data = _data(layout)
    _write_all(store, layout, data)
    shard_file = store / "images" / "c" / "3" / "0" / "0" / "0"
    blob = bytearray(shard_file.read_bytes())
    blob[len(blob) // 3] ^= 0x55
    shard_file.write_bytes(bytes(blob))
    report = verify(store)
    assert not report.ok
    assert report.unfinished == ()
    assert [p.index for p in report.mismatched] == [3]
    assert report.verified == (0, 1, 2, 4, 5)
    assert "shard 3:" in report.summary()


def test_verify_reports_a_value_changed_behind_the_record(store, layout):
    data = _data(layout)
    _write_all(store, layout, data)
    labels = zarr.open_array(store / "labels", mode="r+")
    labels[21] = labels[21] + 1  # row 21 is in the last, partial shard
    report = verify(store)
    assert [(p.index, p.reason.split(" ")[0]) for p in report.mismatched] == [(5, "sha256")]


def test_verify_reports_a_wrong_row_count(store, layout):
    _write_all(store, layout, _data(layout))
    zarr.open_array(store / "records" / "rows", mode="r+")[0] = 3
    report = verify(store)
    assert [(p.index, p.reason) for p in report.mismatched] == [
        (0, "record says 3 rows, the layout has 4")
    ]


# --------------------------------------------------------------------------- resume / mismatch


def test_open_or_create_resumes_a_store_of_the_same_run(tmp_path, layout):
    path = tmp_path / "ds.zarr"
    state = open_or_create(path, layout, attrs=ATTRS, paths=["x"])
    assert not state.resumed
    assert state.todo == list(range(6))
    data = _data(layout)
    _write_all(path, layout, data, order=[0, 1, 5])
    again = open_or_create(path, layout, attrs=ATTRS, paths=["x"])
    assert again.resumed
    assert again.done == frozenset({0, 1, 5})
    assert again.todo == [2, 3, 4]
    _write_all(path, layout, data, order=again.todo)
    assert verify(path).ok


def test_open_or_create_refuses_another_config_unless_overwrite(tmp_path, layout):
    cfg = validate_config({"source": {"path": "/s"}, "output": {"path": str(tmp_path / "ds.zarr")}})
    other = validate_config(
        {
            "source": {"path": "/s"},
            "output": {"path": str(tmp_path / "ds.zarr")},
            "transform": {"size": [128, 96]},
        }
    )
    stats = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    first = store_attrs(cfg, stats=stats, classes=["a"], source_fingerprint="fp")
    second = store_attrs(other, stats=stats, classes=["a"], source_fingerprint="fp")
    path = tmp_path / "ds.zarr"
    open_or_create(path, layout, attrs=first, paths=["x"])
    _write_all(path, layout, _data(layout), order=[0])
    explain = lambda existing: config_differences(existing.get("config"), other)  # noqa: E731
    with pytest.raises(StoreMismatchError) as exc:
        open_or_create(path, layout, attrs=second, paths=["x"], explain=explain)
    message = str(exc.value)
    assert "config identity" in message
    assert "transform.size: [224, 224] -> [128, 96]" in message
    assert "output.overwrite" in message
    assert done_shards(path) == {0}  # untouched
    state = open_or_create(path, layout, attrs=second, paths=["x"], overwrite=True)
    assert not state.resumed
    assert done_shards(path) == set()
    assert read_attrs(path)["config_identity"] == other.identity()


def test_open_or_create_names_a_changed_source_and_layout(tmp_path, layout):
    path = tmp_path / "ds.zarr"
    open_or_create(path, layout, attrs=ATTRS, paths=["x"])
    with pytest.raises(StoreMismatchError, match="source fingerprint: fp-1 -> fp-2"):
        open_or_create(path, layout, attrs={**ATTRS, "source_fingerprint": "fp-2"}, paths=["x"])
    bigger = StoreLayout(n_samples=24, channels=3, height=6, width=5, dtype="float16", shard_size=4)
    with pytest.raises(StoreMismatchError, match="layout: n_samples: 23 -> 24"):
        open_or_create(path, bigger, attrs=ATTRS, paths=["x"])


def test_open_or_create_never_deletes_what_it_did_not_make(tmp_path, layout):
    folder = tmp_path / "important"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    with pytest.raises(
        StoreError, match="is not a Zarr store but a folder with other files; refusing"
    ):
        open_or_create(folder, layout, attrs=ATTRS, paths=[], overwrite=True)
    assert (folder / "thesis.tex").read_text() == "keep me"
    foreign = tmp_path / "foreign.zarr"
    zarr.create_group(foreign, attributes={"owner": "someone"})
    with pytest.raises(StoreError, match="not an imageprep store"):
        open_or_create(foreign, layout, attrs=ATTRS, paths=[], overwrite=True)
    assert zarr.open_group(foreign, mode="r").attrs["owner"] == "someone"
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="exists and is not a folder"):
        open_or_create(tmp_path / "file.zarr", layout, attrs=ATTRS, paths=[])


def test_interrupted_creation_is_redone(tmp_path, layout):
    path = tmp_path / "ds.zarr"
    zarr.create_group(path, attributes={"imageprep_creating": {"pid": 1}})  # what a crash leaves
    with pytest.raises(StoreError, match="not completely created"):
        verify(path)
    state = open_or_create(path, layout, attrs=ATTRS, paths=["x"])
    assert not state.resumed
    assert read_layout(path) == layout


def test_create_store_refuses_an_existing_store(store, layout):
    with pytest.raises(StoreError, match="a store already exists"):
        create_store(store, layout, attrs=ATTRS, paths=[])
    with pytest.raises(InvalidArgumentError, match="attrs must not set layout"):
        create_store(store.parent / "x.zarr", layout, attrs={"layout": 1}, paths=[])
    with pytest.raises(InvalidArgumentError, match="paths must be a sequence of strings"):
        create_store(store.parent / "z.zarr", layout, attrs=ATTRS, paths=["a", 3])
    assert not (store.parent / "z.zarr").exists()
    with pytest.raises(InvalidArgumentError, match="attrs must be JSON-safe"):
        create_store(store.parent / "y.zarr", layout, attrs={"x": float("nan")}, paths=[])


def test_finalize(store, layout):
    data = _data(layout)
    _write_all(store, layout, data, order=[0, 1, 2, 3])
    with pytest.raises(StoreError, match="2 of 6 shards are not written: 4-5"):
        finalize(store, {})
    _write_all(store, layout, data, order=[4, 5])
    failures = [{"path": "b/bad.jpg", "error": "truncated image"}]
    meta = finalize(store, {"failures": failures, "timings": {"write_s": 1.5}})
    assert meta == read_attrs(store)
    assert meta["complete"] is True
    assert meta["failures"] == failures
    assert meta["classes"] == ATTRS["classes"]
    with pytest.raises(InvalidArgumentError, match="attrs_update must not change config_identity"):
        finalize(store, {"config_identity": "other"})


def test_store_attrs_records_the_run(tmp_path):
    cfg = validate_config(
        {"source": {"path": "/s"}, "output": {"path": "/o"}, "runtime": {"seed": 7}}
    )
    stats = {"channels": ["R", "G", "B"], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    attrs = store_attrs(
        cfg,
        stats=stats,
        classes=["cat"],
        source_fingerprint="abc",
        failures=[{"path": "p", "error": "e"}],
    )
    assert attrs["config"] == cfg.resolved_dict()
    assert attrs["config_identity"] == cfg.identity()
    assert attrs["seed"] == 7
    assert attrs["stats"] == stats
    assert attrs["failures"] == [{"path": "p", "error": "e"}]
    assert attrs["versions"]["zarr"] == zarr.__version__
    json.dumps(attrs, allow_nan=False)


# --------------------------------------------------------------------------- lock

_HOLD = textwrap.dedent(
    """
    import sys, time
    from pipeline.store import StoreLock
    lock = StoreLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _spawn_holder(path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    path = tmp_path / "ds.zarr"
    child = _spawn_holder(path)
    try:
        with pytest.raises(StoreLockedError) as exc:
            StoreLock(path).acquire()
        message = str(exc.value)
        assert f"pid {child.pid} on host {socket.gethostname()}" in message
        assert str(path) in message
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with StoreLock(path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held
        assert lock.holder()["pid"] == os.getpid()
    assert not lock.held


def test_lock_in_one_process(tmp_path):
    path = tmp_path / "ds.zarr"
    first = StoreLock(path).acquire()
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        StoreLock(path).acquire()
    with pytest.raises(StoreError, match="already held"):
        first.acquire()
    first.release()
    first.release()  # idempotent
    StoreLock(path).acquire().release()
    assert (tmp_path / "ds.zarr.lock").exists()
    assert not path.exists()  # the lock lives next to the store, not in it


# --------------------------------------------------------------------------- crash + resume

_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np, zarr
    from pipeline.store import StoreLayout, open_or_create, write_shard, StoreLock

    path, npz, point, target = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = dict(np.load(npz))
    layout = StoreLayout.from_json(__import__("json").loads(sys.argv[5]))
    attrs = {"config_identity": "id-1", "source_fingerprint": "fp-1", "classes": []}
    real = zarr.Array.__setitem__

    def die_at(self, key, value):
        hit = {
            "images": False,
            "after_data": self.path == "records/rows" and key == target,
            "before_done": self.path == "records/done" and key == target and bool(value),
        }[point]
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, key, value)

    import pipeline.store.writer as writer
    real_images = writer.write_images

    def die_in_images(array, index, data):  # the shard's images object is written in one call
        if point == "images" and index == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_images(array, index, data)

    zarr.Array.__setitem__ = die_at
    writer.write_images = die_in_images
    lock = StoreLock(path).acquire()
    state = open_or_create(path, layout, attrs=attrs, paths=["x"])
    for i in state.todo:
        rows = layout.shard_rows(i)
        write_shard(path, i, **{k: v[rows.start:rows.stop] for k, v in data.items()})
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("point", ["images", "after_data", "before_done"])
def test_a_run_killed_mid_shard_resumes(tmp_path, layout, point):
    path = tmp_path / "ds.zarr"
    data = _data(layout)
    np.savez(tmp_path / "data.npz", **data)
    args = [str(path), str(tmp_path / "data.npz"), point, "2", json.dumps(layout.to_json())]
    child = subprocess.run(
        [sys.executable, "-c", _WRITER, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["0", "1"]
    assert done_shards(path) == {0, 1}
    assert verify(path).unfinished == (2, 3, 4, 5)
    # the dead writer's lock is gone; a new run resumes where it stopped
    with StoreLock(path):
        state = open_or_create(path, layout, attrs=ATTRS, paths=["x"])
        assert state.resumed
        assert state.todo == [2, 3, 4, 5]
        _write_all(path, layout, data, order=state.todo)
    assert verify(path).ok
    group = zarr.open_group(path, mode="r")
    for name, expected in data.items():
        np.testing.assert_array_equal(np.asarray(group[name][:]), expected)


_LOOP = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pipeline.store import StoreLayout, open_or_create, write_shard

    path = sys.argv[1]
    layout = StoreLayout.from_json(json.loads(sys.argv[2]))
    attrs = {"config_identity": "id-1", "source_fingerprint": "fp-1", "classes": []}
    state = open_or_create(path, layout, attrs=attrs, paths=["x"])
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    while True:  # rewrite shards forever, so a kill lands at a random point of a write
        for i in range(layout.n_shards):
            n = len(layout.shard_rows(i))
            write_shard(path, i, images=rng.random((n, 3, 16, 16)).astype(np.float16),
                        labels=rng.integers(0, 3, n), source_index=np.arange(n),
                        copy_index=np.zeros(n, dtype=np.int32))
    """
)


def test_sigkill_at_a_random_moment_never_leaves_a_done_shard_that_fails_verify(tmp_path):
    layout = StoreLayout(
        n_samples=40, channels=3, height=16, width=16, dtype="float16", shard_size=8
    )
    path = tmp_path / "ds.zarr"
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.05, 0.4, size=3):
        child = subprocess.Popen(
            [sys.executable, "-c", _LOOP, str(path), json.dumps(layout.to_json())],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(delay))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        report = verify(path)
        assert report.mismatched == (), report.summary()
