from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect.states import Failed

import pipeline.run
import pipeline.stats
from flows.tasks import (
    IO_BACKOFF_SECONDS,
    IO_RETRIES,
    finish_task,
    is_transient,
    open_store_task,
    scan_task,
    stats_cache_key,
    stats_task,
    verify_task,
    write_shards_task,
)
from pipeline.errors import (
    ConfigError,
    InvalidArgumentError,
    ShardWriteError,
    StoreLockedError,
    StoreVerificationError,
)
from pipeline.sources import scan
from pipeline.stats import compute_stats
from pipeline.store import done_shards, verify
from pipeline.synthetic import make_dataset
from tests.flows.conftest import make_source, read_store, run_config


def _with(cfg, section: str, **values):
    sub = getattr(cfg, section).model_copy(update=values)
    return cfg.model_copy(update={section: sub})


# ----------------------------------------------------------------------------- cache key


def test_stats_cache_key_depends_on_what_determines_the_stats(tmp_path: Path):
    cfg = run_config(tmp_path / "src", tmp_path / "out.zarr")
    key = stats_cache_key(cfg, "fp")
    changed = {
        "fingerprint": stats_cache_key(cfg, "fp-other"),
        "source.path": stats_cache_key(_with(cfg, "source", path=tmp_path / "other"), "fp"),
        "source.labels": stats_cache_key(_with(cfg, "source", labels="none"), "fp"),
        "stats.method": stats_cache_key(_with(cfg, "stats", method="chan"), "fp"),
        "stats.at": stats_cache_key(_with(cfg, "stats", at="resized"), "fp"),
    }
    for what, other in changed.items():
        assert other != key, what
    assert len(set(changed.values())) == len(changed)


def test_stats_cache_key_ignores_what_does_not_change_the_stats(tmp_path: Path):
    cfg = run_config(tmp_path / "src", tmp_path / "out.zarr")
    key = stats_cache_key(cfg, "fp")
    same = [
        _with(cfg, "output", path=tmp_path / "elsewhere.zarr", overwrite=False, shard_size=3),
        _with(cfg, "output", dtype="float32"),
        _with(cfg, "transform", size=(17, 9), resize="pad", copies=3, augment=()),
        _with(cfg, "transform", normalize=False),
        _with(cfg, "runtime", seed=99, workers=1, batch_size=2, dask_address="tcp://h:1"),
    ]
    for other in same:
        assert stats_cache_key(other, "fp") == key


def test_stats_cache_key_resized_depends_on_the_resize(tmp_path: Path):
    cfg = _with(run_config(tmp_path / "src", tmp_path / "o.zarr"), "stats", at="resized")
    key = stats_cache_key(cfg, "fp")
    assert stats_cache_key(_with(cfg, "transform", size=(32, 33)), "fp") != key
    assert stats_cache_key(_with(cfg, "transform", resize="stretch"), "fp") != key
    assert stats_cache_key(_with(cfg, "transform", augment=(), copies=4), "fp") == key


def test_stats_cache_key_with_a_stats_file_hashes_its_content(tmp_path: Path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text('{"mean": [0.1, 0.2, 0.3]}')
    b.write_text('{"mean": [0.1, 0.2, 0.3]}')
    c.write_text('{"mean": [0.1, 0.2, 0.4]}')
    cfg = run_config(tmp_path / "src", tmp_path / "o.zarr", stats={"file": str(a)})
    key = stats_cache_key(cfg, "fp")
    assert stats_cache_key(_with(cfg, "stats", file=b), "fp") == key  # same content
    assert stats_cache_key(_with(cfg, "stats", file=c), "fp") != key
    assert stats_cache_key(_with(cfg, "stats", method="two-pass"), "fp") == key  # file wins
    assert stats_cache_key(_with(cfg, "stats", file=None), "fp") != key
    a.unlink()
    with pytest.raises(ConfigError, match=r"stats\.file: cannot read"):
        stats_cache_key(cfg, "fp")


def test_touching_a_file_changes_the_key(tmp_path: Path):
    import os

    src = make_source(tmp_path / "src", n_per_class=2)
    cfg = run_config(src.root, tmp_path / "o.zarr")
    before = stats_cache_key(cfg, scan(src.root).fingerprint)
    assert stats_cache_key(cfg, scan(src.root).fingerprint) == before
    victim = next(p for p in sorted(src.root.rglob("*.png")))
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert stats_cache_key(cfg, scan(src.root).fingerprint) != before


# ----------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (OSError(5, "Input/output error"), True),
        (TimeoutError("nfs"), True),  # an OSError
        (ShardWriteError("1 of 4 shards failed"), True),
        (ConfigError("bad key"), False),
        (StoreLockedError("in use"), False),
        (InvalidArgumentError("root must be an existing folder"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_is_transient(exc, retry):
    assert is_transient(None, None, Failed(data=exc)) is retry


def test_is_transient_without_an_exception():
    assert is_transient(None, None, Failed(data="not an exception")) is False


def test_io_tasks_retry_with_exponential_backoff():
    for t in (scan_task, stats_task, open_store_task, write_shards_task, verify_task, finish_task):
        assert t.retries == IO_RETRIES, t.name
        assert t.retry_delay_seconds == [IO_BACKOFF_SECONDS * 2**i for i in range(IO_RETRIES)]
        assert t.retry_condition_fn is is_transient
    assert stats_task.persist_result is True
    assert scan_task.persist_result is False


# ----------------------------------------------------------------------------- tasks through .fn


def test_scan_and_stats_tasks_fn(tmp_path: Path):
    ds = make_dataset(tmp_path / "src", n_per_class=3, seed=2, sizes=(20, 40))
    cfg = run_config(ds.root, tmp_path / "o.zarr")
    manifest = scan_task.fn(cfg)
    assert manifest == scan(ds.root)
    run_stats = stats_task.fn(cfg, manifest)
    assert run_stats.stats == compute_stats(ds.root).to_json()
    assert run_stats.accepted == tuple(sorted(f.path for f in ds.valid))
    assert {f.path for f in run_stats.failures} == {f.path for f in ds.broken}
    classes = sorted({p.split("/")[0] for p in run_stats.accepted})
    assert run_stats.labels == tuple(classes.index(p.split("/")[0]) for p in run_stats.accepted)


def test_write_verify_finish_tasks_fn(tmp_path: Path, monkeypatch):
    src = make_source(tmp_path / "src", n_per_class=2)
    cfg = run_config(src.root, tmp_path / "o.zarr")
    manifest = scan_task.fn(cfg)
    run_stats = stats_task.fn(cfg, manifest)
    state = open_store_task.fn(cfg, manifest, run_stats)
    assert not state.resumed
    assert state.layout.n_samples == 2 * src.n_valid

    real = pipeline.run.write_one_shard

    def flaky(job, *args, **kwargs):
        if job.index == 1:
            raise OSError(28, "No space left on device")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(pipeline.run, "write_one_shard", flaky)
    with pytest.raises(ShardWriteError) as info:
        write_shards_task.fn(cfg, state, run_stats, root=str(manifest.root))
    message = str(info.value)
    assert f"1 of {state.layout.n_shards} shards failed" in message
    assert "shard 1: OSError: [Errno 28] No space left on device" in message
    assert done_shards(cfg.output.path) == set(range(state.layout.n_shards)) - {1}

    monkeypatch.setattr(pipeline.run, "write_one_shard", real)
    state = open_store_task.fn(cfg, manifest, run_stats)
    assert state.resumed
    assert state.todo == [1]
    write = write_shards_task.fn(cfg, state, run_stats, root=str(manifest.root))
    assert write.written == [1]
    assert write.skipped == state.layout.n_shards - 1
    report = verify_task.fn(str(cfg.output.path), workers=2)
    assert report.ok
    result = finish_task.fn(
        cfg, state, run_stats, write, root=str(manifest.root), timings={"write": 1.0}
    )
    assert result.samples == 2 * src.n_valid
    assert result.shards_written == 1

    # the same store written in one go by the plain pipeline: identical bytes
    plain = pipeline.run.prepare(_with(cfg, "output", path=tmp_path / "plain.zarr"))
    assert read_store(plain.store) == read_store(cfg.output.path)


def test_stats_task_fn_reuses_a_store_of_the_same_run(tmp_path: Path, monkeypatch):
    src = make_source(tmp_path / "src", n_per_class=2)
    cfg = run_config(src.root, tmp_path / "o.zarr")
    first = pipeline.run.prepare(cfg)
    manifest = scan(src.root)

    def no_compute(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr(pipeline.stats, "measure", no_compute)
    reused = stats_task.fn(cfg, manifest, reuse_store=True)
    assert reused.stats == first.stats
    assert reused.failures == tuple(first.failures)
    with pytest.raises(AssertionError, match="recomputed"):
        stats_task.fn(cfg, manifest)  # without reuse_store: computed


def test_verify_task_fn_detects_a_corrupted_shard(tmp_path: Path):
    import zarr

    src = make_source(tmp_path / "src", n_per_class=2)
    cfg = run_config(src.root, tmp_path / "o.zarr")
    pipeline.run.prepare(cfg)
    assert verify(cfg.output.path).ok
    images = zarr.open_array(str(cfg.output.path / "images"), mode="r+")
    rng = np.random.default_rng(0)
    images[9] = rng.standard_normal(images.shape[1:]).astype(images.dtype)  # in shard 1
    with pytest.raises(StoreVerificationError, match=r"shard 1: sha256"):
        verify_task.fn(str(cfg.output.path))
