"""Sources and stores in object storage: config, runs, resume, updates, verify, lock, CLI.

The S3 tests run against moto's server on loopback (tests/s3server.py); the
``memory://`` ones against fsspec's in-process filesystem. Every store written
to object storage is compared, array by array, with the store a run of the
same config writes from a local folder of the same files to a local folder:
that run is the reference.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pipeline.run as run_module
from flows.cli import app
from pipeline.config import RunConfig, load_config, validate_config
from pipeline.errors import (
    ConfigError,
    ShardWriteError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)
from pipeline.reader import ShardDataset, iter_shards
from pipeline.run import prepare
from pipeline.stats import compute_stats
from pipeline.storage import REDACTED, Location, ObjectStoreLock, resolve_location
from pipeline.store import (
    StoreLock,
    compact,
    done_shards,
    lock_for,
    open_group,
    read_attrs,
    verify,
    write_shard,
)

runner = CliRunner()
SIZE = (16, 16)
ARRAYS = ("images", "labels", "source_index", "copy_index", "live", "paths")
FILE_ARRAYS = ("size", "sha256", "live", "label", "n", "s1", "s2", "min", "max")
RECORDS = ("rows", "sha256", "done")


# ----------------------------------------------------------------------------- helpers


def _image(path: Path, seed: int, *, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = 18 + seed % 9, 22 + seed % 13
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """14 PNGs in two classes, a 16-bit one, a broken file and a hidden one."""
    root = tmp_path / "src"
    for i in range(14):
        _image(root / ("cat" if i % 2 else "dog") / f"{i:03d}.png", i)
    _image(root / "dog" / "deep.png", 99, mode="I;16")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _image(root / "cat" / ".hidden.png", 5)
    return root


def upload(local: Path, location: Location) -> None:
    """Copy every file under ``local`` to ``location`` (one PUT each)."""
    fs = location.fs
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{location.path}/{path.relative_to(local).as_posix()}", path.read_bytes())
    fs.invalidate_cache()


def _config(src: Any, out: Any, *, options: dict | None = None, **sections: dict) -> RunConfig:
    data: dict = {
        "source": {"path": str(src)},
        "transform": {"size": list(SIZE), "copies": 2},
        "output": {"path": str(out), "shard_size": 6},
        "runtime": {"workers": 2, "batch_size": 4, "device": "cpu"},
    }
    if options is not None:
        for section in ("source", "output"):
            if "://" in data[section]["path"] and not data[section]["path"].startswith("memory"):
                data[section]["storage_options"] = dict(options)
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


def arrays(store: Any) -> dict[str, np.ndarray]:
    """Every array of a store that a run writes (not the timestamps of its attribute)."""
    group = open_group(store)
    names = [*ARRAYS, *(f"files/{n}" for n in FILE_ARRAYS), *(f"records/{n}" for n in RECORDS)]
    return {name: np.asarray(group[name][:]) for name in names}


def assert_same_arrays(got: Any, expected: Any) -> None:
    a, b = arrays(got), arrays(expected)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


def _stats_without_fingerprint(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "fingerprint"}


def _memory(name: str) -> str:
    return f"memory://{name}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- config


def test_urls_and_paths_in_the_config(tmp_path: Path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    cfg = validate_config(
        {
            "source": {"path": "s3://bucket/images/", "storage_options": {"anon": True}},
            "output": {"path": "link/ds.zarr"},
        },
        base_dir=tmp_path,
    )
    assert cfg.source.path == "s3://bucket/images"  # canonical URL, a string
    assert cfg.source.location == resolve_location(
        "s3://bucket/images", key="source.path", storage_options={"anon": True}
    )
    # a local path: absolute, symbolic links resolved
    assert cfg.output.path == Path(os.path.realpath(tmp_path / "real" / "ds.zarr"))
    assert cfg.output.location.is_local
    assert RunConfig.model_validate(cfg.resolved_dict()) == cfg
    memory = validate_config({"source": {"path": "memory://a/b"}, "output": {"path": "file:///x"}})
    assert (memory.source.path, memory.output.path) == ("memory://a/b", Path("/x"))
    assert RunConfig.model_validate(memory.resolved_dict()) == memory


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("output.path", "s3:/bucket/ds.zarr", "looks like a URL that lost a slash"),
        ("output.path", "S3:/bucket/ds.zarr", "looks like a URL that lost a slash"),
        ("source.path", "ftp://host/images", "URL scheme 'ftp' is not supported"),
        ("source.path", "nosuch://host/images", "URL scheme 'nosuch' is unknown"),
        ("output.path", "gs://bucket/ds.zarr", "needs the package gcsfs"),
        ("output.path", "az://container/ds.zarr", "needs the package adlfs"),
        ("output.path", "zip://a::file:///b.zip", "chained fsspec URLs are not supported"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_key(key, value, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "gcsfs" in expected or "adlfs" in expected:
        package = expected.rsplit(" ", 1)[-1]
        try:
            __import__(package)
            pytest.skip(f"{package} is installed here")
        except ImportError:
            pass
    config = tmp_path / "run.yaml"
    config.write_text("source: {path: imgs}\noutput: {path: out.zarr}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config, [f"{key}={value}"])
    assert f"{key}: " in str(info.value)
    assert expected in str(info.value)
    assert list(tmp_path.iterdir()) == [config]  # nothing made, least of all a folder "s3:"


def test_set_keeps_a_url_and_resolves_a_relative_path_against_the_working_directory(
    tmp_path: Path, monkeypatch
):
    config = tmp_path / "conf" / "run.yaml"
    config.parent.mkdir()
    config.write_text("source: {path: imgs}\noutput: {path: out.zarr}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ["output.path=s3://bucket/ds.zarr", "source.path=here"])
    assert cfg.output.path == "s3://bucket/ds.zarr"
    assert cfg.source.path == tmp_path / "here"


def test_storage_options_are_outside_the_identity_and_redacted_in_the_record():
    opts = {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t",
        "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "t0k3n"},
    }
    with_options = _config("s3://b/src", "s3://b/ds.zarr", options=opts)
    plain = _config("s3://b/src", "s3://b/ds.zarr")
    assert with_options.source.storage_options == opts
    assert with_options.identity() == plain.identity()
    recorded = with_options.recorded_dict()
    for section in ("source", "output"):
        options = recorded[section]["storage_options"]
        assert options["endpoint_url"] == "http://127.0.0.1:9000"
        assert options["key"] == options["secret"] == REDACTED
        assert options["client_kwargs"] == {
            "region_name": "eu-west-1",
            "aws_session_token": REDACTED,
        }
    text = json.dumps(recorded)
    for secret in ("s3cr3t", "AKIAEXAMPLE", "t0k3n"):
        assert secret not in text
    # the resolved dict keeps them: it must validate back to the same config
    assert RunConfig.model_validate(with_options.resolved_dict()) == with_options


def test_storage_options_with_a_local_path_are_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"output\.storage_options: only apply to a URL path"):
        validate_config(
            {
                "source": {"path": str(tmp_path)},
                "output": {"path": str(tmp_path / "o.zarr"), "storage_options": {"anon": True}},
            }
        )


def test_lock_selection_is_one_place(tmp_path: Path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    local = lock_for(tmp_path / "link" / "ds.zarr")
    assert isinstance(local, StoreLock)
    assert local.path == Path(os.path.realpath(tmp_path / "real" / "ds.zarr"))
    with local:  # the same folder through the symlink and directly: one lock
        with pytest.raises(StoreLockedError):
            lock_for(tmp_path / "real" / "ds.zarr").acquire()
    remote = lock_for(resolve_location("s3://bucket/ds.zarr", key="output.path"))
    assert isinstance(remote, ObjectStoreLock)
    assert remote.lock_path == "s3://bucket/ds.zarr.lock"
    assert isinstance(lock_for("memory://x/ds.zarr"), ObjectStoreLock)
    with pytest.raises(StoreError, match="StoreLock .flock. locks a local folder"):
        StoreLock("memory://x/ds.zarr")


# ----------------------------------------------------------------------------- memory://


def test_a_run_on_memory_equals_a_local_run_and_resumes_and_updates(source: Path, tmp_path: Path):
    src = resolve_location(_memory("src"), key="source.path")
    upload(source, src)
    out = _memory("out") + "/ds.zarr"
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    result = prepare(_config(src.url, out))
    assert isinstance(result.store, Location)
    assert result.store.url == out
    assert_same_arrays(result.store, reference.store)
    assert _stats_without_fingerprint(result.stats) == _stats_without_fingerprint(reference.stats)
    assert [f.path for f in result.failures] == ["cat/broken.png"]
    assert verify(out).ok

    again = prepare(_config(src.url, out))  # nothing changed: nothing written
    assert (again.shards_written, again.shards_skipped) == (0, result.shards)

    for i in range(200, 203):  # an update: three new files
        _image(source / "cat" / f"{i}.png", i)
        src.fs.pipe_file(f"{src.path}/cat/{i}.png", (source / "cat" / f"{i}.png").read_bytes())
    updated = prepare(_config(src.url, out))
    local_update = prepare(_config(source, tmp_path / "ref.zarr"))
    assert updated.diff is not None
    assert updated.diff.summary().startswith("3 new")
    assert updated.shards_written == local_update.shards_written
    assert_same_arrays(updated.store, local_update.store)
    assert verify(out).ok


@pytest.mark.parametrize("same_size", [False, True])
def test_an_object_changed_during_the_run_is_named_and_the_rerun_updates(
    source: Path, monkeypatch, same_size
):
    import pipeline.run as run_module
    from pipeline.errors import ShardWriteError

    src = resolve_location(_memory("src"), key="source.path")
    upload(source, src)
    out = _memory("out") + "/ds.zarr"
    key = f"{src.path}/cat/003.png"
    old = src.fs.cat_file(key)
    new = old[:-13] + bytes([old[-13] ^ 1]) + old[-12:] if same_size else old + b"\0" * 7
    real_open_output = run_module.open_output

    def open_then_change(*args, **kwargs):
        state = real_open_output(*args, **kwargs)  # every object measured by now
        src.fs.pipe_file(key, new)
        return state

    monkeypatch.setattr(run_module, "open_output", open_then_change)
    what = "same size, but its content" if same_size else f"its size is {len(new)} bytes"
    with pytest.raises(ShardWriteError, match=f"cat/003.png changed during the run \\({what}"):
        prepare(_config(src.url, out))
    monkeypatch.undo()
    again = prepare(_config(src.url, out))
    assert again.diff is not None
    assert again.diff.changed == ("cat/003.png",)
    assert verify(out).ok


def test_iter_shards_reads_a_store_in_object_storage(source: Path, tmp_path: Path):
    out = _memory("iter") + "/ds.zarr"
    prepare(_config(source, out))
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    got = list(iter_shards(out))
    expected = list(iter_shards(reference.store))
    assert len(got) == len(expected) == reference.shards
    for (a, la), (b, lb) in zip(got, expected, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
        assert np.array_equal(la.numpy(), lb.numpy())


def test_shard_dataset_reads_a_store_in_object_storage(source: Path, tmp_path: Path):
    out = _memory("dataset") + "/ds.zarr"
    prepare(_config(source, out))
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    dataset, expected = ShardDataset(out), ShardDataset(reference.store)
    assert len(dataset) == len(expected)
    for i in range(len(expected)):
        (a, la), (b, lb) = dataset[i], expected[i]
        assert la == lb
        assert np.array_equal(a.numpy(), b.numpy())


def test_preview_of_a_store_in_object_storage(source: Path, tmp_path: Path):
    out = _memory("preview") + "/ds.zarr"
    prepare(_config(source, out))
    r = runner.invoke(app, ["preview", out, "--out", str(tmp_path / "grid.png")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (4 * 160, 4 * 160)


def test_shard_dataset_on_s3_in_dataloader_workers(s3_bucket, s3_source, source, tmp_path):
    from torch.utils.data import DataLoader

    opts = s3_bucket.storage_options
    store = prepare(_config(s3_source.url, s3_bucket.url("ds.zarr"), options=opts)).store
    reference = ShardDataset(prepare(_config(source, tmp_path / "ref.zarr")).store)
    dataset = ShardDataset(store)  # a Location: its storage options go to each worker
    assert len(dataset) == len(reference)
    loader = DataLoader(dataset, batch_size=5, num_workers=2, shuffle=False)
    got = [(x.numpy(), y.numpy()) for x, y in loader]
    expected = [
        (
            np.stack([reference[i][0].numpy() for i in range(k, min(k + 5, len(reference)))]),
            np.array([reference[i][1] for i in range(k, min(k + 5, len(reference)))]),
        )
        for k in range(0, len(reference), 5)
    ]
    assert len(got) == len(expected)
    for (a, la), (b, lb) in zip(got, expected, strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(la, lb)


def test_compact_refuses_a_store_in_object_storage(source: Path):
    out = _memory("compact") + "/ds.zarr"
    prepare(_config(source, out))
    before = arrays(out)
    with pytest.raises(StoreError, match="compact works on a local folder only"):
        compact(out)
    r = runner.invoke(app, ["compact", out])
    assert r.exit_code == 2
    assert "no atomic rename" in r.output
    after = arrays(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(StoreError, match="no such store"):
        compact(_memory("nothing") + "/ds.zarr")


# ----------------------------------------------------------------------------- S3 (moto)


def _s3(bucket, key: str, what: str = "output.path") -> Location:
    return resolve_location(bucket.url(key), key=what, storage_options=bucket.storage_options)


@pytest.fixture
def s3_source(s3_bucket, source: Path) -> Location:
    """The ``source`` files uploaded to ``s3://<bucket>/data/images``."""
    location = _s3(s3_bucket, "data/images", "source.path")
    upload(source, location)
    return location


def test_a_run_from_s3_to_s3_equals_a_local_run(s3_bucket, s3_source, source, tmp_path):
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    opts = s3_bucket.storage_options
    cfg = _config(s3_source.url, s3_bucket.url("stores/ds.zarr"), options=opts)
    result = prepare(cfg)
    assert isinstance(result.store, Location)
    assert result.store.url == s3_bucket.url("stores/ds.zarr")
    assert_same_arrays(result.store, reference.store)
    assert _stats_without_fingerprint(result.stats) == _stats_without_fingerprint(reference.stats)
    assert [f.path for f in result.failures] == ["cat/broken.png"]
    assert verify(result.store).ok

    attrs = read_attrs(result.store)
    assert attrs["complete"] is True
    assert attrs["config_identity"] == read_attrs(reference.store)["config_identity"]
    recorded = attrs["config"]
    assert recorded["source"]["path"] == s3_source.url
    for section in ("source", "output"):
        options = recorded[section]["storage_options"]
        assert options["key"] == options["secret"] == REDACTED
        assert options["endpoint_url"] == opts["endpoint_url"]
    # one object per shard; the lock object beside the store, released
    fs = s3_source.fs
    fs.invalidate_cache()
    assert len(fs.find(f"{result.store.path}/images/c")) == result.shards
    assert json.loads(fs.cat_file(result.store.path + ".lock"))["released"] is True


def test_a_run_killed_at_a_shard_resumes_to_the_bytes_of_an_uninterrupted_run(
    s3_bucket, s3_source, source, tmp_path, monkeypatch
):
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    cfg = _config(s3_source.url, s3_bucket.url("ds.zarr"), options=s3_bucket.storage_options)
    real = run_module.write_one_shard

    def killed(job, *args, **kwargs):
        if job.index == 2:
            raise RuntimeError("killed while writing shard 2")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(run_module, "write_one_shard", killed)
    with pytest.raises(ShardWriteError, match="killed while writing shard 2"):
        prepare(cfg)
    store = cfg.output.location
    assert 2 not in done_shards(store)
    assert not read_attrs(store).get("complete")
    monkeypatch.setattr(run_module, "write_one_shard", real)
    resumed = prepare(cfg)
    assert resumed.resumed
    assert resumed.shards_written == 1
    assert_same_arrays(resumed.store, reference.store)
    assert verify(resumed.store).ok


def test_an_update_on_s3_equals_the_same_update_of_a_local_store(
    s3_bucket, s3_source, source, tmp_path
):
    cfg = _config(s3_source.url, s3_bucket.url("ds.zarr"), options=s3_bucket.storage_options)
    local = _config(source, tmp_path / "ref.zarr")
    prepare(cfg)
    prepare(local)
    for i in range(300, 304):
        path = source / "dog" / f"{i}.png"
        _image(path, i)
        s3_source.fs.pipe_file(f"{s3_source.path}/dog/{i}.png", path.read_bytes())
    updated = prepare(cfg)
    expected = prepare(local)
    assert updated.diff is not None
    assert (
        updated.diff.summary()
        == "4 new, 0 changed, 0 removed, 0 touched (same bytes), 15 unchanged"
    )
    assert updated.shards_written == expected.shards_written > 0
    assert_same_arrays(updated.store, expected.store)
    assert verify(updated.store).ok
    assert read_attrs(updated.store)["current_stats"]["images"] == 19


def test_shard_data_lands_before_its_record_and_done_last_on_s3(s3_bucket, source):
    out = _s3(s3_bucket, "order.zarr")
    prepare(_config(source, out.url, options=s3_bucket.storage_options))
    server = s3_bucket.server
    rng = np.random.default_rng(3)
    group = open_group(out)
    rows = slice(6, 12)  # shard 1: its planned rows, other sample values
    labels, sources, copies = (group[n][rows] for n in ("labels", "source_index", "copy_index"))
    server.reset_log()
    write_shard(  # a retried task writing shard 1 again
        out,
        1,
        images=rng.standard_normal((6, 3, *SIZE)),
        labels=labels,
        source_index=sources,
        copy_index=copies,
    )
    # each change of the store, in order: ("PUT", key), or ("delete", array) for a chunk
    # deleted because it equals the fill value (s3fs's batch delete does not show the key;
    # zarr reads the array's metadata just before)
    changes: list[tuple[str, str]] = []
    array = ""
    for r in server.log():
        key = r.path.split("/order.zarr/", 1)[-1]
        if r.method == "GET" and key.endswith("zarr.json"):
            array = key.removesuffix("zarr.json").rstrip("/")
        elif r.method == "PUT":
            changes.append(("PUT", key))
        elif r.method in ("POST", "DELETE"):
            changes.append(("delete", array))
    expected_order = [
        ("delete", "records/done"),  # done[1] = False first (False is the fill value)
        ("PUT", "images/c/1/0/0/0"),  # the data
        ("PUT", "records/rows/c/1"),  # the record
        ("PUT", "records/sha256/c/1/0"),
        ("PUT", "records/done/c/1"),  # done last
        ("PUT", "live/c/1"),  # its rows served only once it is done
    ]
    positions = [changes.index(change) for change in expected_order]
    assert positions == sorted(positions), changes
    assert changes[0] == ("delete", "records/done"), changes
    assert changes[-2:] == expected_order[-2:], changes
    assert verify(out).ok  # the record vouches for the new values


def test_a_store_of_another_config_is_replaced_only_with_overwrite_on_s3(
    s3_bucket, s3_source, source, tmp_path
):
    opts = s3_bucket.storage_options
    out = s3_bucket.url("ds.zarr")
    prepare(_config(s3_source.url, out, options=opts))
    other = {"size": [8, 8], "copies": 1}
    with pytest.raises(StoreMismatchError, match=r"transform\.size: \[16, 16\] -> \[8, 8\]"):
        prepare(_config(s3_source.url, out, options=opts, transform=other))
    replaced = prepare(
        _config(s3_source.url, out, options=opts, transform=other, output={"overwrite": True})
    )
    reference = prepare(_config(source, tmp_path / "ref.zarr", transform=other))
    assert_same_arrays(replaced.store, reference.store)
    assert verify(replaced.store).ok
    alien = s3_source.fs._strip_protocol(s3_bucket.url("alien"))
    s3_source.fs.pipe_file(
        f"{alien}/zarr.json", b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'
    )
    alien_cfg = _config(s3_source.url, f"s3://{alien}", options=opts, output={"overwrite": True})
    with pytest.raises(StoreError, match="not an imageprep store; refusing"):
        prepare(alien_cfg)
    assert s3_source.fs.exists(f"{alien}/zarr.json")  # overwrite never deletes what is not ours


def test_verify_finds_a_corrupted_object_and_repair_rewrites_it(
    s3_bucket, s3_source, source, tmp_path
):
    opts = s3_bucket.storage_options
    result = prepare(_config(s3_source.url, s3_bucket.url("ds.zarr"), options=opts))
    store = result.store
    fs = s3_source.fs
    shard = f"{store.path}/images/c/1/0/0/0"
    data = bytearray(fs.cat_file(shard))
    data[len(data) // 3] ^= 0xFF  # one flipped byte inside a compressed chunk
    fs.pipe_file(shard, bytes(data))
    report = verify(store)
    assert not report.ok
    assert [p.index for p in report.mismatched] == [1]
    assert report.verified == tuple(i for i in range(result.shards) if i != 1)
    args = ["verify", store.url, *_cli_options(opts)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "1 mismatched" in r.output
    assert "shard 1" in r.output

    # the recorded config has no credentials: the repair reads the source with the options
    # given for the store (the same S3), and rewrites shard 1 as it was
    r = runner.invoke(app, [*args, "--repair"])
    assert r.exit_code == 0, r.output
    assert "1 shard(s) un-marked, 1 rewritten from the source" in r.output
    assert verify(store).ok
    assert_same_arrays(store, prepare(_config(source, tmp_path / "ref.zarr")).store)


def _cli_options(opts: dict) -> list[str]:
    out = []
    for key, value in opts.items():
        if isinstance(value, dict):
            out += [f"-o{key}.{k}={v}" for k, v in value.items()]
        else:
            out += [f"-o{key}={value}"]
    return out


def test_a_run_is_refused_while_another_holds_the_store(s3_bucket, s3_source):
    opts = s3_bucket.storage_options
    cfg = _config(s3_source.url, s3_bucket.url("ds.zarr"), options=opts)
    with lock_for(cfg.output.location) as held:
        assert isinstance(held, ObjectStoreLock)
        with pytest.raises(StoreLockedError, match=f"in use by pid {os.getpid()}"):
            prepare(cfg)
        config = _write_config(cfg)
        r = runner.invoke(app, ["run", str(config), "--no-prefect"])
        assert r.exit_code == 2, r.output
        assert "in use by" in r.output
    fs = s3_source.fs
    fs.invalidate_cache()
    assert not fs.exists(cfg.output.location.path)  # nothing was written
    assert prepare(cfg).shards_written > 0  # released: the next run goes ahead


def _write_config(cfg: RunConfig) -> Path:
    import tempfile

    import yaml

    path = Path(tempfile.mkdtemp()) / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.resolved_dict()))
    return path


def test_a_run_that_lost_its_lease_does_not_finalize_the_store(s3_bucket, s3_source, monkeypatch):
    cfg = _config(s3_source.url, s3_bucket.url("ds.zarr"), options=s3_bucket.storage_options)
    real = run_module.verify_output

    def taken_over(*args, **kwargs):  # a run whose lease expired meanwhile: another took it
        report = real(*args, **kwargs)
        thief = ObjectStoreLock(cfg.output.location)
        thief._clock = lambda: time.time() + 3600
        thief.acquire()
        thief.release()
        return report

    monkeypatch.setattr(run_module, "verify_output", taken_over)
    with pytest.raises(StoreLockedError, match="lost its lock"):
        prepare(cfg)
    assert not read_attrs(cfg.output.location).get("complete")
    monkeypatch.setattr(run_module, "verify_output", real)
    assert prepare(cfg).shards_written == 0  # every shard was written: the rerun finalizes


def test_the_cli_on_s3(s3_bucket, s3_source, source, tmp_path):
    opts = s3_bucket.storage_options
    flags = _cli_options(opts)
    r = runner.invoke(app, ["stats", s3_source.url, *flags, "--json", "-"])
    assert r.exit_code == 0, r.output
    expected = compute_stats(source).to_json()
    assert _stats_without_fingerprint(json.loads(r.stdout)) == _stats_without_fingerprint(expected)

    config = tmp_path / "run.yaml"
    config.write_text(
        "transform: {size: [16, 16], copies: 2}\n"
        "output: {shard_size: 6}\n"
        "runtime: {workers: 2, batch_size: 4, device: cpu}\n"
    )
    out = s3_bucket.url("cli/ds.zarr")
    sets = [
        f"--set=source.path={s3_source.url}",
        f"--set=output.path={out}",
        f"--set=source.storage_options={json.dumps(opts)}",
        f"--set=output.storage_options={json.dumps(opts)}",
    ]
    r = runner.invoke(app, ["run", str(config), "--no-prefect", *sets])
    assert r.exit_code == 0, r.output
    assert f"store written: {out}" in r.output
    reference = prepare(_config(source, tmp_path / "ref.zarr"))
    cfg = _config(s3_source.url, out, options=opts)
    assert_same_arrays(cfg.output.location, reference.store)

    r = runner.invoke(app, ["info", out, *flags], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert out in r.output
    r = runner.invoke(app, ["verify", out, *flags])
    assert r.exit_code == 0, r.output
    assert f"{reference.shards}/{reference.shards} shards verified" in r.output

    r = runner.invoke(app, ["run", str(config), "--no-prefect", "--dry-run", *sets])
    assert r.exit_code == 0, r.output
    assert f"store: {out} (update)" in r.output
    assert "shards to write: 0" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "s3:/bucket/ds.zarr"],
        ["info", "ftp://host/ds.zarr"],
        ["stats", "gs:/bucket/images"],
        ["verify", "s3://bucket/ds.zarr", "-o", "nonsense"],
    ],
)
def test_cli_urls_that_cannot_work_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert list(tmp_path.iterdir()) == []


def test_run_with_a_url_that_lost_a_slash_writes_nothing(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"source: {{path: {source}}}\n")
    r = runner.invoke(
        app, ["run", str(config), "--no-prefect", "--set", "output.path=s3:/bucket/ds.zarr"]
    )
    assert r.exit_code == 2, r.output
    assert "output.path: 's3:/bucket/ds.zarr' looks like a URL that lost a slash" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "src"]


def test_store_requests_per_shard_do_not_grow_with_the_samples_in_it(s3_bucket, tmp_path):
    """A shard task makes the same number of requests to the store whatever its size."""
    src = _s3(s3_bucket, "many", "source.path")
    for i in range(32):
        path = tmp_path / "many" / f"{i:03d}.png"
        _image(path, i)
    upload(tmp_path / "many", src)
    per_shard = {}
    for shard_size in (4, 16):
        calls = _shard_requests(s3_bucket, src, f"req{shard_size}.zarr", shard_size)
        assert all(files == rows for rows, _, files in calls), calls  # one GET per source file
        per_shard[shard_size] = {store for _, store, _ in calls}
    assert len(per_shard[4]) == 1, per_shard  # every shard the same number of requests
    assert per_shard[4] == per_shard[16], per_shard  # 4 times the samples, the same requests
    assert max(per_shard[4]) <= 24


def _shard_requests(bucket, src: Location, key: str, shard_size: int) -> list[tuple[int, int, int]]:
    """(rows, requests to the store, requests to the source) of each shard task of a run."""
    server = bucket.server
    cfg = _config(
        src.url,
        bucket.url(key),
        options=bucket.storage_options,
        output={"shard_size": shard_size},
        transform={"size": list(SIZE), "copies": 1},
        runtime={"workers": 1, "batch_size": 4, "device": "cpu"},
    )
    calls: list[tuple[int, int, int]] = []
    real = run_module.write_one_shard
    one_at_a_time = threading.Lock()

    def counted(job, *args, **kwargs):
        with one_at_a_time:  # so the requests logged are this shard's
            server.reset_log()
            record = real(job, *args, **kwargs)
            log = server.log()
            # the store's keys, and batch deletes (POST to the bucket; the keys are in the body)
            # of chunks equal to their fill value: the source is only read
            store = sum(f"/{key}/" in r.path or r.method == "POST" for r in log)
            files = sum(
                f"/{src.path}/" in f"{r.path}/" or r.path.startswith(f"/{src.path}/") for r in log
            )
            calls.append((job.rows, store, files))
            return record

    run_module.write_one_shard = counted
    try:
        prepare(cfg)
    finally:
        run_module.write_one_shard = real
    return calls
