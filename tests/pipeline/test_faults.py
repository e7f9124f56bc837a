"""Hardening: runs killed anywhere, a full disk, hostile inputs; nothing lost, nothing silent.

The kill campaign stops a run at many points (a step, a chunk of the statistics
pass, the middle of a shard, the k-th write to the Zarr store, ...) by making a
function raise :class:`Killed` at its k-th call. ``Killed`` is a
``BaseException``, as a real kill is not an error a task can catch: no
``except Exception`` on the way (the shard tasks' :func:`pipeline.execution.guarded`,
Zarr's atomic write, the I/O retry) turns it into a recorded failure, and a
Zarr write stopped by it leaves its ``*.partial`` file behind, as a killed
process does. Every kill is followed by a rerun with the real functions, whose
store must equal, array for array and byte for byte, the store of an
uninterrupted run, verify, and hold no ``*.partial`` file. The runs use one
worker, so nothing else is in flight when the kill lands (a real kill stops
every thread at once).

The disk-full tests make the store's file writes fail with ``ENOSPC`` (and,
where a small tmpfs can be mounted, fill a real one); the command line must
exit 1 with one ``Error:`` line naming the cause, and a rerun with space again
must finish the same store.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import RunConfig, validate_config
from pipeline.run import prepare
from pipeline.stats import compute_stats
from pipeline.store import compact, read_attrs, verify
from tests.pipeline.test_decode_fuzz import mutants

SIZE = (8, 8)


class Killed(BaseException):
    """The process died here (raised by a patched function; nothing may catch it)."""


# ----------------------------------------------------------------------------- sources, configs


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = 14 + seed % 7, 16 + seed % 5
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _make_source(root: Path, n: int = 10) -> Path:
    for i in range(n):
        _image(root / ("cat" if i % 2 else "dog") / f"{i:03d}.png", i)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    return root


def _grow(root: Path) -> None:
    """The change an update applies: new files (one in a new class), a removal, a broken file."""
    for i in range(100, 105):
        _image(root / "cat" / f"{i}.png", i)
    _image(root / "eel" / "new-class.png", 7)
    (root / "dog" / "002.png").unlink()
    (root / "dog" / "bad-new.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def _config(src: Path, out: Path, **sections: dict[str, Any]) -> RunConfig:
    data: dict[str, Any] = {
        "source": {"path": str(src)},
        "transform": {"size": list(SIZE), "copies": 2},
        "output": {"path": str(out), "shard_size": 4},
        "runtime": {"workers": 1, "batch_size": 3, "device": "cpu"},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


# ----------------------------------------------------------------------------- comparing stores

# attributes that name a moment or a run, not the content
_VOLATILE = {"created", "finalized", "timings", "state", "config", "compacted_from", "versions"}


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the store, by its path in the group."""
    group = zarr.open_group(str(path), mode="r")
    return {
        name: np.asarray(node[...])
        for name, node in group.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }


def store_content(path: Path) -> dict[str, Any]:
    """The group attribute without its run-specific keys (failures sorted by path)."""
    meta = {k: v for k, v in read_attrs(path).items() if k not in _VOLATILE}
    meta["failures"] = sorted(meta.get("failures", []), key=lambda f: f["path"])
    for key in ("stats", "current_stats"):
        if key in meta:
            meta[key] = {k: v for k, v in meta[key].items() if k != "fingerprint"}
    if "manifest" in meta:
        # The recorded config names this store's own paths, so its digest differs
        # between two stores exactly as the (volatile) config does.
        meta["manifest"] = {k: v for k, v in meta["manifest"].items() if k != "config"}
    return meta


def assert_same_store(got: Path, expected: Path, *, what: str) -> None:
    a, b = store_arrays(got), store_arrays(expected)
    assert a.keys() == b.keys(), what
    for name in b:
        assert a[name].dtype == b[name].dtype, (what, name)
        assert a[name].shape == b[name].shape, (what, name)
        assert a[name].tobytes() == b[name].tobytes(), (what, name)
    assert store_content(got) == store_content(expected), what
    assert verify(got).ok, what
    leftovers = sorted(p.name for p in got.parent.rglob("*.partial"))
    assert not leftovers, (what, leftovers)


# ----------------------------------------------------------------------------- kill points


@dataclass(frozen=True)
class Point:
    """Where a run dies: the k-th call of ``target`` (``module:attr`` or ``module:Class.attr``).

    Attributes:
        name: what the point is, in words.
        target: the function whose call is the moment.
        k: the call that kills (counting only the calls ``only`` accepts, and only
            while ``within`` runs).
        when: ``before`` the real call; ``after`` it (its effects are done, its
            caller never learns); ``partial`` (Zarr's ``_put`` and ``shardio._put_parts``
            only: half the bytes are in the ``*.partial`` file, as a kill during
            ``write`` leaves them).
        only: a predicate on the call's arguments.
        within: count only while this function (``module:attr``) runs.
    """

    name: str
    target: str
    k: int = 1
    when: str = "before"
    only: Callable[..., bool] | None = field(default=None, compare=False)
    within: str | None = None

    def __str__(self) -> str:
        return self.name


def _resolve(target: str) -> tuple[Any, str]:
    module, attr = target.split(":")
    owner: Any = importlib.import_module(module)
    *parents, name = attr.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def _patch(monkeypatch: pytest.MonkeyPatch, target: str, make: Callable[[Any], Any]) -> None:
    owner, name = _resolve(target)
    real = getattr(owner, name)
    wrapper = make(real)
    if isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod):
        wrapper = staticmethod(wrapper)
    monkeypatch.setattr(owner, name, wrapper)


@dataclass
class Armed:
    """A kill point in place: how often it was reached, and whether it fired."""

    point: Point
    calls: int = 0
    fired: bool = False
    depth: int = 0


def arm(monkeypatch: pytest.MonkeyPatch, point: Point) -> Armed:
    """Patch ``point.target`` so that its k-th (matching) call kills the run."""
    armed = Armed(point)

    def make_killer(real: Callable[..., Any]) -> Callable[..., Any]:
        def killer(*args: Any, **kwargs: Any) -> Any:
            if (
                armed.fired
                or (point.within is not None and armed.depth == 0)
                or (point.only is not None and not point.only(*args, **kwargs))
            ):
                return real(*args, **kwargs)
            armed.calls += 1
            if armed.calls < point.k:
                return real(*args, **kwargs)
            armed.fired = True
            if point.when == "after":
                real(*args, **kwargs)
            elif point.when == "partial":
                path, value = args[0], args[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(value, list):  # shardio._put_parts: the object's parts
                    data = b"".join(bytes(memoryview(p).cast("B")) for p in value)
                else:
                    data = bytes(value.as_buffer_like())
                partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
                partial.write_bytes(data[: len(data) // 2])
            raise Killed(point.name)

        return killer

    def make_scope(real: Callable[..., Any]) -> Callable[..., Any]:
        def scope(*args: Any, **kwargs: Any) -> Any:
            armed.depth += 1
            try:
                return real(*args, **kwargs)
            finally:
                armed.depth -= 1

        return scope

    _patch(monkeypatch, point.target, make_killer)
    if point.within is not None:
        _patch(monkeypatch, point.within, make_scope)
    return armed


def _name_is(*names: str) -> Callable[..., bool]:
    # pipeline.store.writer.get_array(group, name)
    return lambda group, name, *a, **k: name in names


def _key(path: Path) -> str:
    """The key of a Zarr ``_put`` path in its store folder (``x.zarr``, ``x.zarr.compacting``)."""
    parts = path.parts
    top = max(i for i, p in enumerate(parts) if ".zarr" in p)
    return "/".join(parts[top + 1 :])


def _key_is(pattern: str) -> Callable[..., bool]:
    """Zarr ``_put(path, value, ...)`` calls of one key (``*`` at the end: a prefix)."""
    if pattern.endswith("*"):
        return lambda path, *a, **k: _key(path).startswith(pattern[:-1])
    return lambda path, *a, **k: _key(path) == pattern


PUT = "zarr.storage._local:_put"
"""Every file Zarr writes in a local store goes through it (a ``*.partial`` file, then a rename)."""
PUT_OBJECT = "pipeline.store.shardio:_put_parts"
"""Every ``images`` shard object of a local store is written by it (the same naming as ``_put``)."""

NEW_STORE = [
    # 1. the scan
    Point("scan: mid-walk", "pipeline.sources:_is_image_name", k=4),
    Point("scan: the fingerprint", "pipeline.sources:fingerprint_of"),
    # 2. the statistics pass
    Point("stats: a file of the chunk", "pipeline.stats.compute:decode_histogram", k=5),
    Point("stats: a chunk done, not merged", "pipeline.stats.compute:_chunk", when="after"),
    Point("stats: the merge", "pipeline.stats.compute:finish"),
    # 3. the store is laid out
    Point("open: arrays made, no file table", "pipeline.store.create:create_file_arrays"),
    Point(
        "open: mid-write of the group attribute",
        PUT,
        when="partial",
        only=_key_is("zarr.json"),
        within="zarr.core.attributes:Attributes.put",
    ),
    Point("open: laid out, nothing written", "pipeline.run:open_output", when="after"),
    # 4. the shards
    Point("shard: the 2nd task starts", "pipeline.run:write_one_shard", k=2),
    Point("shard: decoded, before write_shard", "pipeline.store:write_shard", k=2),
    Point("shard: after write_shard", "pipeline.store:write_shard", k=2, when="after"),
    Point("shard: a task done, not recorded", "pipeline.run:write_one_shard", k=3, when="after"),
    Point(
        "shard: images written, no record",
        "pipeline.store.writer:get_array",
        k=2,
        only=_name_is("records/rows"),
    ),
    Point(
        "shard: mid-write of an images shard",
        PUT_OBJECT,
        k=2,
        when="partial",
        only=_key_is("images/c/*"),
    ),
    Point(
        "shard: record written, not done",
        PUT,
        k=3,
        when="after",
        only=_key_is("records/sha256/c/*"),
    ),
    Point(
        "shard: done written, live not", PUT, k=4, when="after", only=_key_is("records/done/c/*")
    ),
    # 5. verify
    Point("verify: before", "pipeline.run:verify_output"),
    Point("verify: a shard", "pipeline.store.verify:_check_shard", k=3),
    # 6. finish
    Point("finish: before the live mask", "pipeline.store:write_live"),
    Point("finish: after the live mask", "pipeline.store:write_live", when="after"),
    Point("finish: before finalize", "pipeline.store:finalize"),
    Point(
        "finish: mid-write of the final attribute",
        PUT,
        when="partial",
        only=_key_is("zarr.json"),
        within="pipeline.store:finalize",
    ),
    Point("finish: finalized, not returned", "pipeline.store:finalize", when="after"),
]

STATS_FILE = [
    # the statistics are known: each file is measured by the shard task that decodes it
    Point("measure: a file being measured", "pipeline.run:_load_measured", k=3),
    Point("measure: shard written, files not recorded", "pipeline.run:record_files", k=2),
    Point(
        "measure: files recorded, the coordinator dies",
        "pipeline.run:record_files",
        k=2,
        when="after",
    ),
    Point(
        "measure: the broken file's rejection",
        "pipeline.run:reject_files",
        only=lambda g, r: bool(r),
    ),
    Point("measure: mid-write of a moment", PUT, k=2, when="partial", only=_key_is("files/s2/c/*")),
]

GROWTH = [
    Point("grow: the retired rows' live mask", "pipeline.store:write_live"),
    Point(
        "grow: file rows appended, no attribute", "pipeline.store.create:append_files", when="after"
    ),
    Point("grow: arrays resized, no attribute", "pipeline.store.create:SampleRows.write"),
    Point(
        "grow: mid-write of the new layout",
        PUT,
        when="partial",
        only=_key_is("zarr.json"),
        within="pipeline.store:grow_store",
    ),
    Point("grow: laid out, nothing written", "pipeline.store:grow_store", when="after"),
    Point(
        "grow: a new shard written, not recorded",
        "pipeline.run:record_files",
        only=lambda g, r, m: bool(r),
    ),
    Point("grow: a new file being measured", "pipeline.run:_load_measured", k=2),
    Point("grow: the 2nd new shard", "pipeline.run:write_one_shard", k=2),
    Point("grow: before finalize", "pipeline.store:finalize"),
]

REFRESH = [
    # stats.update: refresh: the statistics change, every live row is planned and written again
    Point("refresh: new file rows appended, before the reset", "pipeline.store:reset_rows"),
    Point(
        "refresh: arrays resized, rows not planned, no attribute",
        "pipeline.store.create:SampleRows.write",
        within="pipeline.store:reset_rows",
    ),
    Point("refresh: reset, nothing written", "pipeline.store:reset_rows", when="after"),
    Point("refresh: the 3rd shard rewritten", "pipeline.run:write_one_shard", k=3),
]

COMPACTION = [
    Point("compact: the copy laid out", "pipeline.store.compaction:create_store", when="after"),
    Point("compact: the 2nd shard copied", "pipeline.store.compaction:_copy_shard", k=2),
    Point(
        "compact: mid-write of a copied shard",
        PUT_OBJECT,
        k=2,
        when="partial",
        only=_key_is("images/c/*"),
    ),
    Point("compact: the copy verified", "pipeline.store.compaction:verify", when="after"),
    Point("compact: the copy finalized", "pipeline.store.compaction:finalize", when="after"),
    Point("compact: the store moved aside", "pipeline.store.compaction:_rename", when="after"),
    Point("compact: the copy moved in", "pipeline.store.compaction:_rename", k=2, when="after"),
]


# ----------------------------------------------------------------------------- the campaign


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sources and the stores of uninterrupted runs that the killed runs must end up as."""
    root = tmp_path_factory.mktemp("faults")
    src = _make_source(root / "src")
    stats_file = root / "stats.json"
    stats = compute_stats(src).to_json()
    stats["mean"], stats["std"] = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    stats_file.write_text(json.dumps(stats))
    new = root / "new.zarr"
    prepare(_config(src, new))
    known = root / "known.zarr"
    prepare(_config(src, known, stats={"file": str(stats_file)}))
    # an update: the store of src, then a grown copy of the source
    grown_src = root / "grown"
    shutil.copytree(src, grown_src)
    _grow(grown_src)
    grown = root / "grown.zarr"
    shutil.copytree(new, grown)
    prepare(_config(grown_src, grown))
    # the same update with stats.update: refresh (another config: its own stores)
    refresh_base = root / "refresh-base.zarr"
    prepare(_config(src, refresh_base, stats={"update": "refresh"}))
    refreshed = root / "refreshed.zarr"
    shutil.copytree(refresh_base, refreshed)
    prepare(_config(grown_src, refreshed, stats={"update": "refresh"}))
    compacted = root / "compacted.zarr"
    shutil.copytree(grown, compacted)
    compact(compacted, workers=1)
    return {
        "src": src,
        "stats_file": stats_file,
        "new": new,
        "known": known,
        "grown_src": grown_src,
        "grown": grown,
        "compacted": compacted,
        "refresh_base": refresh_base,
        "refreshed": refreshed,
    }


def _kill_then_rerun(monkeypatch: pytest.MonkeyPatch, point: Point, run: Callable[[], Any]) -> None:
    with monkeypatch.context() as m:
        armed = arm(m, point)
        with pytest.raises(Killed):
            run()
    assert armed.fired, f"{point}: the run never reached the point ({armed.calls} calls)"
    run()


@pytest.mark.parametrize("point", NEW_STORE, ids=str)
def test_a_new_store_killed_anywhere_resumes_to_the_same_bytes(base, tmp_path, monkeypatch, point):
    out = tmp_path / "o.zarr"
    _kill_then_rerun(monkeypatch, point, lambda: prepare(_config(base["src"], out)))
    assert_same_store(out, base["new"], what=point.name)


@pytest.mark.parametrize("point", STATS_FILE, ids=str)
def test_a_stats_file_run_killed_anywhere_resumes_to_the_same_bytes(
    base, tmp_path, monkeypatch, point
):
    out = tmp_path / "o.zarr"
    cfg = _config(base["src"], out, stats={"file": str(base["stats_file"])})
    _kill_then_rerun(monkeypatch, point, lambda: prepare(cfg))
    assert_same_store(out, base["known"], what=point.name)


@pytest.mark.parametrize("point", GROWTH, ids=str)
def test_an_update_killed_anywhere_resumes_to_the_same_bytes(base, tmp_path, monkeypatch, point):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["new"], out)
    _kill_then_rerun(monkeypatch, point, lambda: prepare(_config(base["grown_src"], out)))
    assert_same_store(out, base["grown"], what=point.name)


@pytest.mark.parametrize("point", REFRESH, ids=str)
def test_a_refresh_killed_anywhere_resumes_to_the_same_bytes(base, tmp_path, monkeypatch, point):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["refresh_base"], out)
    cfg = _config(base["grown_src"], out, stats={"update": "refresh"})
    _kill_then_rerun(monkeypatch, point, lambda: prepare(cfg))
    assert_same_store(out, base["refreshed"], what=point.name)


@pytest.mark.parametrize("point", COMPACTION, ids=str)
def test_a_compaction_killed_anywhere_resumes_to_the_same_bytes(base, tmp_path, monkeypatch, point):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["grown"], out)
    _kill_then_rerun(monkeypatch, point, lambda: compact(out, workers=1))
    assert_same_store(out, base["compacted"], what=point.name)
    assert not out.with_name("o.zarr.compacting").exists()
    assert not out.with_name("o.zarr.old").exists()


def test_a_run_after_a_compaction_killed_between_its_renames_completes_the_swap(
    base, tmp_path, monkeypatch
):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["grown"], out)
    point = Point(
        "compact: the store moved aside", "pipeline.store.compaction:_rename", when="after"
    )
    with monkeypatch.context() as m:
        armed = arm(m, point)
        with pytest.raises(Killed):
            compact(out, workers=1)
    assert armed.fired
    assert not out.exists()  # between the renames: the store is the .old and the .compacting
    prepare(_config(base["grown_src"], out))  # the run completes the swap, then finds no change
    assert_same_store(out, base["compacted"], what="prepare after the swap")
    assert not out.with_name("o.zarr.old").exists()


# ----------------------------------------------------------------------------- the command line

runner = CliRunner()


def _write_config(path: Path, src: Path, out: Path, **sections: dict[str, Any]) -> Path:
    data = _config(src, out, **sections).resolved_dict()
    path.write_text(yaml.safe_dump(data))
    return path


def _one_error_line(result: Any, code: int, *names: str) -> str:
    """The command failed with ``code`` and one ``Error:`` line naming ``names``; no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)
    return errors[0]


class Decodes:
    """How many source files the decoder opened."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Decodes:
    import pipeline.decode

    seen = Decodes()
    real = pipeline.decode._loaded

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.count += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.decode, "_loaded", counting)
    return seen


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["output.path=/"], ["output.path '/'", "root of the file system"]),
        (["output.path=SRC/inside.zarr"], ["output.path", "inside source.path"]),
        (["output.path=/proc/x.zarr"], ["output.path '/proc/x.zarr'"]),
        (["stats.file=NOTJSON"], ["stats.file", "not a stats JSON"]),
        (["stats.file=NOTSTATS"], ["stats.file", "not a stats JSON"]),
        (["source.path=EMPTY"], ["EMPTY", "no image files"]),
        (["source.path=BROKEN"], ["BROKEN", "none of its 2 files could be read"]),
        (["transform.size=[100000,100000]"], ["transform.size"]),
        (["output.shard_size=1000000000000"], ["output.shard_size"]),
        (["transform.copies=1000000000"], ["transform.copies"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) and v and "=" in v[0] else None,
)
def test_run_refuses_before_any_work_with_one_line(base, tmp_path, decodes, overrides, names):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "1.png").write_bytes(b"not a png")
    (broken / "2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "not.json").write_text("mean: 0.5  # YAML, not JSON\n")
    (tmp_path / "notstats.json").write_text('{"mean": [0.5, 0.5, 0.5]}')
    subst = {
        "SRC": str(base["src"]),
        "EMPTY": str(tmp_path / "empty"),
        "BROKEN": str(broken),
        "NOTJSON": str(tmp_path / "not.json"),
        "NOTSTATS": str(tmp_path / "notstats.json"),
    }

    def fill(text: str) -> str:
        for key, value in subst.items():
            text = text.replace(key, value)
        return text

    out = tmp_path / "o.zarr"
    config = _write_config(tmp_path / "run.yaml", base["src"], out)
    args = ["run", str(config), "--no-prefect"]
    for override in overrides:
        args += ["--set", fill(override)]
    before = sorted(p.name for p in base["src"].parent.iterdir())
    start = time.monotonic()
    result = runner.invoke(app, args)
    assert time.monotonic() - start < 60  # a hang bound: a refusal takes a fraction of that
    _one_error_line(result, 2, *(fill(n) for n in names))
    assert not out.exists()  # no store folder, not even an empty one
    assert not (base["src"] / "inside.zarr").exists()
    assert sorted(p.name for p in base["src"].parent.iterdir()) == before
    if overrides[0].split("=")[0] in ("transform.size", "output.shard_size"):
        assert decodes.count == 0  # refused before the scan
    if overrides[0].startswith("transform.copies"):
        assert decodes.count == 0  # refused after the scan, before a decode


def test_run_without_source_path_names_the_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output": {"path": str(tmp_path / "o.zarr")}}))
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    _one_error_line(result, 2, "source.path", "required key is missing")
    assert not (tmp_path / "o.zarr").exists()


def test_run_with_a_missing_source_folder_leaves_nothing_behind(tmp_path):
    config = tmp_path / "run.yaml"
    data = {
        "source": {"path": str(tmp_path / "gone")},
        "output": {"path": str(tmp_path / "o.zarr")},
    }
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    _one_error_line(result, 2, "source.path", "root must be an existing folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # no store, no lock file


def test_overwrite_keeps_a_foreign_file_and_the_store(base, tmp_path):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["new"], out)
    (out / "MY_NOTES.txt").write_text("mine")
    config = _write_config(
        tmp_path / "run.yaml",
        base["src"],
        out,
        transform={"size": [6, 6]},
        output={"overwrite": True},
    )
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    _one_error_line(result, 2, "MY_NOTES.txt", str(out))
    assert (out / "MY_NOTES.txt").read_text() == "mine"
    (out / "MY_NOTES.txt").unlink()
    assert_same_store(out, base["new"], what="the refused overwrite")


def test_verify_of_a_truncated_zarr_json_exits_1(base, tmp_path):
    out = tmp_path / "o.zarr"
    shutil.copytree(base["new"], out)
    text = (out / "zarr.json").read_bytes()
    (out / "zarr.json").write_bytes(text[: len(text) // 2])
    result = runner.invoke(app, ["verify", str(out)])
    _one_error_line(result, 1, str(out), "zarr.json")


# ----------------------------------------------------------------------------- a full disk


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> dict[str, int]:
    """The store's file writes fail with ENOSPC after ``writes`` of them, as on a full disk.

    Both ways a local store's files are written: zarr's ``_put``, and
    ``shardio._put_parts`` for the ``images`` shard objects.
    """
    import zarr.storage._local as local

    import pipeline.store.shardio as shardio

    seen = {"writes": 0, "refused": 0}

    def full(real: Callable[..., Any]) -> Callable[..., Any]:
        def put(path: Path, value: Any, *args: Any, **kwargs: Any) -> Any:
            if seen["writes"] >= writes:
                seen["refused"] += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            seen["writes"] += 1
            return real(path, value, *args, **kwargs)

        return put

    monkeypatch.setattr(local, "_put", full(local._put))
    monkeypatch.setattr(shardio, "_put_parts", full(shardio._put_parts))
    return seen


@pytest.mark.parametrize(
    "writes",
    [0, 40, 100, 125],
    ids=["creating the store", "laying out arrays", "writing shards", "last shards"],
)
def test_a_full_disk_exits_1_naming_the_cause_and_the_rerun_finishes(
    base, tmp_path, monkeypatch, writes
):
    out = tmp_path / "o.zarr"
    config = _write_config(tmp_path / "run.yaml", base["src"], out)
    with monkeypatch.context() as m:
        seen = _fill_disk_after(m, writes)
        result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    assert seen["refused"], "the disk never filled"
    # a full disk is not retried: one refused write per shard at most (5 shards)
    assert seen["refused"] <= 5, seen
    line = _one_error_line(result, 1)
    assert "No space left on device" in line
    assert "resumable" in line
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    assert result.exit_code == 0, result.output
    assert_same_store(out, base["new"], what=f"full after {writes} writes")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (mounting needs root and CAP_SYS_ADMIN: skipped where refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def test_a_really_full_disk_exits_1_and_the_rerun_finishes_once_there_is_space(
    base, tmp_path, small_disk
):
    # uncompressed float32 32x32 samples: 12 KiB each, about 10 MiB for the whole store
    sections: dict[str, Any] = {
        "transform": {"size": [32, 32], "copies": 40},
        "output": {"dtype": "float32", "compression": {"codec": "none"}, "shard_size": 40},
    }
    reference = tmp_path / "reference.zarr"
    prepare(_config(base["src"], reference, **sections))
    out = small_disk / "o.zarr"
    config = _write_config(tmp_path / "run.yaml", base["src"], out, **sections)
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    line = _one_error_line(result, 1)
    assert "No space left on device" in line
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True, timeout=30)
    result = runner.invoke(app, ["run", str(config), "--no-prefect"])
    assert result.exit_code == 0, result.output
    assert_same_store(out, reference, what="a full tmpfs")


# ----------------------------------------------------------------------------- hostile files


def _samples(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """Every live sample of a store, by (source path, copy)."""
    group = zarr.open_group(str(path), mode="r")
    paths = [str(p) for p in group["paths"][:]]
    sources, copies = group["source_index"][:], group["copy_index"][:]
    images = group["images"][:]
    out: dict[tuple[str, int], np.ndarray] = {}
    for row in np.flatnonzero(group["live"][:]):
        key = (paths[int(sources[row])], int(copies[row]))
        assert key not in out, key
        out[key] = images[row]
    return out


_RAW = {"transform": {"normalize": False}, "output": {"dtype": "uint8"}}
"""Samples that do not depend on the statistics (which the decodable mutants change)."""


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Valid files of every fuzzed format, their stats file, and a run over only them."""
    from tests.pipeline.test_decode_fuzz import seeds

    root = tmp_path_factory.mktemp("good") / "src"
    root.mkdir()
    for name in ("jpeg", "png-rgba", "webp-lossy", "tiff-lzw", "gif-animated", "png-16"):
        ext, data = seeds()[name]
        (root / f"good-{name}.{ext}").write_bytes(data)
    _image(root / "good-plain.png", 3)
    stats_file = root.parent / "stats.json"
    stats_file.write_text(json.dumps(compute_stats(root).to_json()))
    # two references: a run with a statistics pass may draft-decode a large JPEG, a run
    # with a stats file measures each file at full resolution
    samples = {}
    for known in (False, True):
        out = root.parent / f"good-{known}.zarr"
        stats = {"stats": {"file": str(stats_file)}} if known else {}
        prepare(_config(root, out, **_RAW, **stats))
        samples[known] = _samples(out)
    return {
        "root": root,
        "names": sorted(p.name for p in root.iterdir()),
        "stats_file": stats_file,
        "samples": samples,
    }


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cases=st.lists(mutants, min_size=6, max_size=12), known_stats=st.booleans())
def test_mutated_files_through_a_whole_run_are_samples_or_recorded_failures(
    good_files, tmp_path, cases, known_stats
):
    from tests.pipeline.test_decode_fuzz import HANG_LIMIT_S, REASON_PREFIXES, mutate, seeds

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    src = folder / "src"
    shutil.copytree(good_files["root"], src)
    for i, (name, ops) in enumerate(cases):
        ext, data = seeds()[name]
        (src / f"m{i:02d}-{name}.{ext}").write_bytes(mutate(data, ops))
    files = {p.name for p in src.iterdir()}
    # with a stats file, each file is measured (or rejected) by the shard task that decodes it
    stats = {"stats": {"file": str(good_files["stats_file"])}} if known_stats else {}
    out = folder / "o.zarr"
    start = time.monotonic()
    result = prepare(_config(src, out, **_RAW, **stats))
    assert time.monotonic() - start < HANG_LIMIT_S * len(files)  # a hang bound per file

    failed = {f.path: f.error for f in result.failures}
    for path, reason in failed.items():
        assert reason.startswith(REASON_PREFIXES), (path, reason)
    recorded = {f["path"]: f["error"] for f in read_attrs(out)["failures"]}
    assert recorded == failed
    samples = _samples(out)
    live = {path for path, _ in samples}
    assert live.isdisjoint(failed)
    assert live | set(failed) == files  # every file is a sample or a recorded failure
    assert sorted(samples) == sorted((p, k) for p in live for k in range(2))
    assert result.live == result.samples == len(samples)
    assert set(good_files["names"]) <= live
    for key, expected in good_files["samples"][known_stats].items():
        assert np.array_equal(samples[key], expected), key
    assert verify(out).ok
