"""pipeline.storage: locations, zarr stores, listings and files, the object-store lock."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from fsspec.registry import known_implementations
from PIL import Image

from pipeline.decode import decode
from pipeline.errors import ConfigError, InvalidArgumentError, StoreError, StoreLockedError
from pipeline.storage import (
    FileEntry,
    Location,
    ObjectStoreLock,
    list_files,
    open_file,
    resolve_location,
    zarr_store,
)

# --------------------------------------------------------------------------- locations


def test_plain_paths_are_absolute_and_canonical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    via_link = resolve_location("link/ds.zarr", key="output.path", base_dir=tmp_path)
    direct = resolve_location(str(tmp_path / "real" / "ds.zarr"), key="output.path")
    real = os.path.realpath(tmp_path / "real" / "ds.zarr")
    assert via_link == direct
    assert (via_link.url, via_link.path, via_link.protocol) == (real, real, "file")
    assert via_link.is_local
    assert resolve_location(f"file://{tmp_path}/link/ds.zarr", key="output.path") == direct
    assert resolve_location(Path(tmp_path / "link" / "ds.zarr"), key="output.path") == direct
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_location("~/link/ds.zarr", key="output.path") == direct
    monkeypatch.chdir(tmp_path / "link")
    assert resolve_location("ds.zarr", key="output.path") == direct


@pytest.mark.parametrize(
    ("value", "url", "protocol", "path"),
    [
        ("s3://bucket/ds.zarr/", "s3://bucket/ds.zarr", "s3", "bucket/ds.zarr"),
        ("S3A://bucket/a/b", "s3://bucket/a/b", "s3", "bucket/a/b"),
        ("s3://bucket", "s3://bucket", "s3", "bucket"),
        ("memory://tmp/ds.zarr", "memory://tmp/ds.zarr", "memory", "/tmp/ds.zarr"),
        ("memory:///tmp/ds.zarr/", "memory://tmp/ds.zarr", "memory", "/tmp/ds.zarr"),
    ],
)
def test_urls_are_canonical(value: str, url: str, protocol: str, path: str):
    loc = resolve_location(value, key="output.path", storage_options={"anon": True})
    assert (loc.url, loc.protocol, loc.path, loc.is_local) == (url, protocol, path, False)
    assert loc.storage_options == {"anon": True}
    assert str(loc) == url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("foo://bucket/x", "output.path: URL scheme 'foo' is unknown"),
        ("http://host/x", "output.path: URL scheme 'http' is not supported"),
        ("zip://x", "output.path: URL scheme 'zip' is not supported"),
        ("simplecache::s3://b/x", "output.path: chained fsspec URLs are not supported"),
        ("s3:/bucket/ds.zarr", "write 's3://bucket/ds.zarr'"),
        ("s3://", "output.path: 's3://' names no bucket"),
        ("", "output.path: expected a non-empty path or URL"),
    ],
)
def test_bad_locations_name_the_key(value: str, expected: str):
    with pytest.raises(ConfigError) as info:
        resolve_location(value, key="output.path")
    assert expected in str(info.value)
    assert str(info.value).startswith("output.path: ")


def test_a_url_through_pathlib_is_not_a_local_folder():
    # pathlib turns "s3://b/x" into "s3:/b/x": refused, never a folder named "s3:"
    with pytest.raises(ConfigError, match=r"source\.path: .* lost a slash; write 's3://b/x'"):
        resolve_location(Path("s3://b/x"), key="source.path")


def test_a_scheme_without_its_package_names_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(
        known_implementations, "gs", {"class": "nosuch_gcs_pkg.GCSFileSystem", "err": "missing"}
    )
    registry_module = sys.modules["fsspec.registry"]  # fsspec.registry is also a mapping
    monkeypatch.delitem(registry_module._registry, "gs", raising=False)
    with pytest.raises(ConfigError) as info:
        resolve_location("gs://bucket/ds.zarr", key="output.path")
    assert str(info.value) == (
        "output.path: scheme 'gs' needs the package nosuch_gcs_pkg (pip install nosuch_gcs_pkg)"
    )


@pytest.mark.parametrize(
    ("url", "package"),
    [("gs://b/x", "gcsfs"), ("gcs://b/x", "gcsfs"), ("az://c/x", "adlfs"), ("abfs://c/x", "adlfs")],
)
def test_real_packages_missing(url: str, package: str):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ConfigError) as info:
        resolve_location(url, key="source.path")
    scheme = url.split(":", 1)[0]
    assert str(info.value) == (
        f"source.path: scheme '{scheme}' needs the package {package} (pip install {package})"
    )


def test_location_pickles_without_its_filesystem():
    loc = resolve_location("memory://pick/ds.zarr", key="output.path", storage_options={"a": 1})
    _ = loc.fs  # created, then left behind by pickle
    assert "fs" in loc.__dict__
    back = pickle.loads(pickle.dumps(loc))
    assert back == loc
    assert "fs" not in back.__dict__
    assert type(back.fs).__name__ == "MemoryFileSystem"


def test_joinpath_and_sibling(tmp_path: Path):
    loc = resolve_location("s3://bucket/data/ds.zarr", key="output.path")
    assert loc.joinpath("a/b.png").url == "s3://bucket/data/ds.zarr/a/b.png"
    assert loc.sibling("ds.zarr.lock").url == "s3://bucket/data/ds.zarr.lock"
    assert loc.sibling("x").storage_options is loc.storage_options
    with pytest.raises(StoreError, match="a bucket has no folder"):
        resolve_location("s3://bucket", key="output.path").sibling("bucket.lock")
    local = resolve_location(str(tmp_path / "ds.zarr"), key="output.path")
    assert local.sibling("ds.zarr.lock").path == os.path.join(
        os.path.realpath(tmp_path), "ds.zarr.lock"
    )
    for bad in ["../x", "/x", "a//b", ""]:
        with pytest.raises(InvalidArgumentError, match="relpath must be"):
            loc.joinpath(bad)


# --------------------------------------------------------------------------- zarr


def _round_trip(loc: Location, rng: np.random.Generator) -> None:
    images = rng.standard_normal((10, 3, 8, 8)).astype(np.float16)
    labels = rng.integers(0, 5, 10)
    group = zarr.open_group(zarr_store(loc, read_only=False), mode="w", zarr_format=3)
    group.attrs["imageprep"] = {"format_version": 1}
    arr = group.create_array(
        "images", shape=images.shape, dtype="float16", chunks=(1, 3, 8, 8), shards=(4, 3, 8, 8)
    )
    arr[:] = images
    group.create_array("labels", shape=(10,), dtype="int64", chunks=(4,))[:] = labels

    again = zarr.open_group(zarr_store(loc, read_only=True), mode="r", zarr_format=3)
    assert again.attrs["imageprep"] == {"format_version": 1}
    np.testing.assert_array_equal(again["images"][:], images)
    np.testing.assert_array_equal(again["labels"][:], labels)
    assert again["images"].shards == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="read-only|read only"):
        again["labels"][0] = 1


def test_local_store_is_zarr_local_store(tmp_path: Path):
    loc = resolve_location(str(tmp_path / "ds.zarr"), key="output.path")
    store = zarr_store(loc, read_only=False)
    assert type(store).__name__ == "LocalStore"
    _round_trip(loc, np.random.default_rng(0))
    assert (tmp_path / "ds.zarr" / "images" / "zarr.json").is_file()


def test_memory_store_round_trip():
    loc = resolve_location(f"memory://rt-{time.monotonic_ns()}/ds.zarr", key="output.path")
    assert type(zarr_store(loc, read_only=True)).__name__ == "FsspecStore"
    _round_trip(loc, np.random.default_rng(1))
    assert loc.fs.isfile(loc.path + "/images/zarr.json")


def test_s3_store_round_trip(s3_bucket):
    loc = resolve_location(
        s3_bucket.url("out/ds.zarr"), key="output.path", storage_options=s3_bucket.storage_options
    )
    _round_trip(loc, np.random.default_rng(2))
    keys = {f.path for f in list_files(loc)}
    # 10 samples in shards of 4: 3 shard objects, not one object per sample
    assert {k for k in keys if k.startswith("images/c/")} == {
        "images/c/0/0/0/0",
        "images/c/1/0/0/0",
        "images/c/2/0/0/0",
    }


# --------------------------------------------------------------------------- sources


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_list_and_open_files_on_s3(s3_bucket):
    rng = np.random.default_rng(3)
    arrays = {
        "cat/a.png": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        "cat/deep/b.png": rng.integers(0, 256, (4, 9, 3), dtype=np.uint8),
        "dog/c.png": rng.integers(0, 256, (6, 3, 3), dtype=np.uint8),
        "top.png": rng.integers(0, 256, (2, 2, 3), dtype=np.uint8),
    }
    src = resolve_location(
        s3_bucket.url("src"), key="source.path", storage_options=s3_bucket.storage_options
    )
    fs = src.fs
    fs.pipe({f"{src.path}/{k}": _png(v) for k, v in arrays.items()})
    fs.pipe_file(f"{src.path}/notes.txt", b"not an image")
    fs.pipe_file(f"{s3_bucket.name}/src2/other.png", b"outside the prefix")
    fs.pipe_file(f"{src.path}/empty/", b"")  # a "folder" marker object

    entries = list_files(src)
    assert [e.path for e in entries] == [*sorted(arrays), "notes.txt"][:2] + [
        "dog/c.png",
        "notes.txt",
        "top.png",
    ]
    for e in entries:
        assert isinstance(e, FileEntry)
        assert e.size == fs.size(f"{src.path}/{e.path}")
        assert abs(e.mtime_ns / 1e9 - time.time()) < 600
        assert len(e.version) == 32  # an MD5 ETag, quotes removed
    for rel, a in arrays.items():
        with open_file(src, rel) as fp:
            assert fp.name == f"{src.url}/{rel}"
            with Image.open(fp) as im:
                np.testing.assert_array_equal(np.asarray(im), a)
        np.testing.assert_array_equal(decode(open_file(src, rel)), a)

    fs.pipe_file(f"{src.path}/top.png", _png(arrays["top.png"][::-1].copy()))
    changed = {e.path: e for e in list_files(src)}["top.png"]
    assert changed.version != {e.path: e for e in entries}["top.png"].version  # a rewrite shows

    with pytest.raises(FileNotFoundError):
        open_file(src, "cat/missing.png")
    with pytest.raises(FileNotFoundError):
        list_files(src.joinpath("nothing-here"))


def test_list_local_files(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(b"123")
    (tmp_path / "y.png").write_bytes(b"45")
    os.symlink(tmp_path / "y.png", tmp_path / "a" / "link.png")
    os.symlink(tmp_path / "a", tmp_path / "dirlink")  # not followed
    os.symlink(tmp_path / "missing", tmp_path / "broken.png")
    loc = resolve_location(str(tmp_path), key="source.path")
    entries = list_files(loc)
    assert [(e.path, e.size, e.version) for e in entries] == [
        ("a/b/x.png", 3, ""),
        ("a/link.png", 2, ""),
        ("y.png", 2, ""),
    ]
    assert entries[2].mtime_ns == os.stat(tmp_path / "y.png").st_mtime_ns
    with open_file(loc, "a/b/x.png") as fp:
        assert fp.read() == b"123"
    with pytest.raises(FileNotFoundError):
        list_files(loc.joinpath("nope"))
    with pytest.raises(NotADirectoryError):
        list_files(loc.joinpath("y.png"))


def test_decode_of_an_empty_object_is_a_reason():
    loc = resolve_location(f"memory://empty-{time.monotonic_ns()}", key="source.path")
    loc.fs.pipe_file(loc.path + "/e.png", b"")
    loc.fs.pipe_file(loc.path + "/t.png", b"\x89PNG\r\n\x1a\n")
    with pytest.raises(Exception, match=r"memory://empty-\d+/e\.png: empty file"):
        decode(open_file(loc, "e.png"))
    with pytest.raises(Exception, match=r"memory://empty-\d+/t\.png: corrupt image"):
        decode(open_file(loc, "t.png"))


# --------------------------------------------------------------------------- lock


@pytest.fixture(params=["s3-conditional", "s3-read-back", "memory"])
def lock_store(request: pytest.FixtureRequest):
    """(store location, lock options) for each way the lock can work."""
    if request.param == "memory":
        loc = resolve_location(f"memory://locks-{time.monotonic_ns()}/ds.zarr", key="output.path")
        return loc, {"settle_s": 0.0}
    bucket = request.getfixturevalue("s3_bucket")
    loc = resolve_location(
        bucket.url("runs/ds.zarr"), key="output.path", storage_options=bucket.storage_options
    )
    if request.param == "s3-conditional":
        return loc, {"conditional": True}
    return loc, {"conditional": False, "settle_s": 0.05}


def _raw(lock: ObjectStoreLock) -> dict:
    return json.loads(lock.lock_location.fs.cat_file(lock.lock_location.path))


def test_lock_refuses_a_second_holder_and_names_the_first(lock_store):
    loc, opts = lock_store
    first = ObjectStoreLock(loc, **opts)
    assert first.lock_path == loc.url + ".lock"
    with first:
        assert first.held
        holder = first.holder()
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        with pytest.raises(StoreLockedError) as info:
            ObjectStoreLock(loc, **opts).acquire()
        msg = str(info.value)
        assert msg.startswith(f"{loc.url}: the output store is in use by pid {os.getpid()}")
        assert socket.gethostname() in msg
        assert first.lock_path in msg
        with pytest.raises(StoreError, match="already held"):
            first.acquire()
    assert not first.held
    assert first.holder() == {}
    assert _raw(first)["released"] is True
    with ObjectStoreLock(loc, **opts) as second:  # released: free for the next run
        assert second.held


def test_an_expired_lease_is_taken_over(lock_store):
    loc, opts = lock_store
    stale = ObjectStoreLock(loc, lease_s=30, heartbeat_s=0, **opts).acquire()  # a dead run
    later = ObjectStoreLock(loc, **opts)
    later._clock = lambda: time.time() + 31
    with pytest.raises(StoreLockedError):
        ObjectStoreLock(loc, **opts).acquire()  # the lease is still live now
    later.acquire()
    assert later.held
    assert _raw(later)["token"] == later._token
    stale.release()  # the old holder's release must not free the new holder's lock
    assert stale.lost
    assert _raw(later)["token"] == later._token
    with pytest.raises(StoreLockedError, match="lost its lock"):
        stale.check()
    later.release()


def test_the_heartbeat_renews_the_lease(lock_store):
    loc, opts = lock_store
    with ObjectStoreLock(loc, lease_s=2.0, heartbeat_s=0.1, **opts) as lock:
        first_expiry = _raw(lock)["expires"]
        deadline = time.time() + 5
        while _raw(lock)["expires"] <= first_expiry and time.time() < deadline:
            time.sleep(0.05)
        renewed = _raw(lock)["expires"]
        assert renewed > first_expiry
        # past the first lease, within the renewed one: still refused
        other = ObjectStoreLock(loc, **opts)
        other._clock = lambda: first_expiry + 0.01
        if renewed > first_expiry + 0.01:
            with pytest.raises(StoreLockedError):
                other.acquire()
        assert lock.held
        assert not lock.lost


def test_a_holder_learns_that_it_lost_the_lock(lock_store):
    loc, opts = lock_store
    lock = ObjectStoreLock(loc, lease_s=5.0, heartbeat_s=0.2, **opts).acquire()
    thief = ObjectStoreLock(loc, **opts)
    thief._clock = lambda: time.time() + 10
    thief.acquire()
    deadline = time.time() + 5
    while not lock.lost and time.time() < deadline:
        time.sleep(0.02)
    assert lock.lost
    assert not lock.held
    lock.release()
    assert _raw(thief)["token"] == thief._token
    thief.release()


def test_lock_arguments():
    loc = resolve_location("memory://args/ds.zarr", key="output.path")
    with pytest.raises(InvalidArgumentError, match="lease_s must be > 0, got 0"):
        ObjectStoreLock(loc, lease_s=0)
    with pytest.raises(InvalidArgumentError, match="heartbeat_s must be"):
        ObjectStoreLock(loc, lease_s=1, heartbeat_s=1)
    with pytest.raises(StoreError, match="a bucket has no folder"):
        ObjectStoreLock(resolve_location("s3://bucket", key="output.path"))
    assert (
        "If-None-Match"
        in ObjectStoreLock(resolve_location("s3://bucket/x", key="output.path")).guarantee
    )
    assert "read back" in ObjectStoreLock(loc).guarantee


@pytest.mark.parametrize("shard", [8, 64])
def test_a_shard_costs_a_constant_number_of_requests_on_s3(s3_bucket, shard: int):
    """zarr's sharding codec writes a shard as one PUT and reads it with one GET."""
    loc = resolve_location(
        s3_bucket.url(f"req{shard}.zarr"),
        key="output.path",
        storage_options=s3_bucket.storage_options,
    )
    group = zarr.open_group(zarr_store(loc, read_only=False), mode="w", zarr_format=3)
    arr = group.create_array(
        "images",
        shape=(2 * shard, 3, 16, 16),
        dtype="float16",
        chunks=(1, 3, 16, 16),
        shards=(shard, 3, 16, 16),
    ).with_config({"write_empty_chunks": True})
    data = np.random.default_rng(shard).standard_normal((shard, 3, 16, 16)).astype(np.float16)
    server = s3_bucket.server
    prefix = f"/{s3_bucket.name}/req{shard}.zarr/images/c/"

    def requests(fn) -> list[str]:
        server.reset_log()
        fn()
        return sorted(r.method for r in server.log() if r.path.startswith(prefix))

    # zarr 3.1 looks for an existing shard first (a GET, 404 here), then one PUT
    assert requests(lambda: arr.__setitem__(slice(0, shard), data)) == ["GET", "PUT"]
    assert requests(lambda: arr.__setitem__(slice(0, shard), data)) == ["GET", "PUT"]
    assert requests(lambda: arr[0:shard]) == ["GET"]
    assert requests(lambda: arr[1]) == ["GET", "GET"]  # the shard index, then the chunk
    np.testing.assert_array_equal(arr[0:shard], data)
