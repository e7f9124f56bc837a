from __future__ import annotations

import math
import os
import subprocess
import threading
from pathlib import Path

import pytest

import flows.prepare
import flows.tasks
import pipeline.run
from flows.prepare import prepare_flow
from pipeline.errors import ShardWriteError, StoreLockedError
from pipeline.store import StoreLock, done_shards, read_attrs, verify
from tests.flows.conftest import BIN, CONFIGS, read_store, run_config, task_states, wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")

TASKS = ("scan", "stats", "open-store", "write-shards", "verify", "finish")


def _with_output(cfg, path: Path):
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": path})})


def _artifact(api: str, key: str, flow_run_id) -> str:
    """The markdown of the artifact ``key`` of a flow run, read over the REST API.

    (Prefect 3.8.8's client sends ``null`` for the filters it is not given,
    which this server version rejects; the request body here is explicit.)
    """
    import httpx

    body = {"artifacts": {"key": {"any_": [key]}}, "limit": 10, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(f"{api}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    found = [a for a in response.json() if a["flow_run_id"] == str(flow_run_id)]
    assert len(found) == 1, found
    assert found[0]["type"] == "markdown"
    return str(found[0]["data"])


def test_flow_writes_the_same_store_as_the_plain_pipeline(source, tmp_path: Path, prefect_api):
    cfg = run_config(source.root, tmp_path / "flow.zarr")
    state = prepare_flow(cfg, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    samples = 2 * source.n_valid
    assert (result.samples, result.shards) == (samples, math.ceil(samples / 8))
    assert (result.shards_written, result.shards_skipped, result.resumed) == (
        result.shards,
        0,
        False,
    )
    assert len(result.failures) == source.n_broken
    assert set(result.timings) == {"scan", "stats", "write", "verify"}
    assert verify(cfg.output.path).ok
    attrs = read_attrs(cfg.output.path)
    assert attrs["complete"] is True
    assert attrs["stats"] == result.stats

    plain = pipeline.run.prepare(_with_output(cfg, tmp_path / "plain.zarr"))
    assert read_store(plain.store) == read_store(result.store)
    assert plain.stats == result.stats

    flow_run_id = state.state_details.flow_run_id
    assert task_states(flow_run_id, expected=len(TASKS)) == dict.fromkeys(TASKS, "Completed")
    md = _artifact(prefect_api, "imageprep-run-flow-zarr", flow_run_id)
    assert f"`{cfg.output.path}`" in md
    assert f"{samples} in {result.shards} shards" in md
    assert f"| mean | {result.stats['mean'][0]:.6g} |" in md
    assert f"{source.n_broken} inputs rejected" in md


def test_flow_accepts_the_config_as_json(source, tmp_path: Path):
    """A deployment passes the config as JSON; Prefect validates it into a RunConfig."""
    cfg = run_config(source.root, tmp_path / "json.zarr")
    result = prepare_flow(cfg.resolved_dict(), verify=False)
    assert verify(cfg.output.path).ok
    assert read_attrs(result.store)["config"] == cfg.resolved_dict()
    bad = cfg.resolved_dict()
    bad["output"]["shard_size"] = 0
    with pytest.raises(Exception, match="shard_size"):
        prepare_flow(bad)


def test_stats_are_cached_until_the_source_changes(source, tmp_path: Path, monkeypatch):
    import pipeline.stats

    calls = []
    real = pipeline.stats.measure

    def counting(*args, **kwargs):  # the decoding pass of the statistics step
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.stats, "measure", counting)
    cfg = run_config(source.root, tmp_path / "a.zarr")

    first = prepare_flow(cfg, return_state=True)
    assert task_states(first.state_details.flow_run_id, expected=6)["stats"] == "Completed"
    assert len(calls) == 1

    # unchanged source, another store: the cached statistics are what the run uses
    cfg_b = _with_output(cfg, tmp_path / "b.zarr")
    second = prepare_flow(cfg_b, return_state=True)
    assert task_states(second.state_details.flow_run_id, expected=6)["stats"] == "Cached"
    assert len(calls) == 1
    assert read_attrs(cfg_b.output.path)["stats"] == first.result().stats
    assert read_store(cfg_b.output.path) == read_store(cfg.output.path)

    # refresh_stats recomputes even so
    third = prepare_flow(
        _with_output(cfg, tmp_path / "c.zarr"), refresh_stats=True, return_state=True
    )
    assert task_states(third.state_details.flow_run_id, expected=6)["stats"] == "Completed"
    assert len(calls) == 2

    # touching one file (mtime only) changes the fingerprint: recomputed
    victim = sorted(source.root.rglob("*.png"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    fourth = prepare_flow(_with_output(cfg, tmp_path / "d.zarr"), return_state=True)
    assert task_states(fourth.state_details.flow_run_id, expected=6)["stats"] == "Completed"
    assert len(calls) == 3
    fingerprints = {read_attrs(tmp_path / n)["source_fingerprint"] for n in ("a.zarr", "d.zarr")}
    assert len(fingerprints) == 2


@pytest.fixture
def fast_retries(monkeypatch):
    """The flow's write task with its retries but no backoff delay."""
    monkeypatch.setitem(
        flows.tasks.TASKS,
        pipeline.run.write_shards,
        flows.tasks.write_shards_task.with_options(retry_delay_seconds=0),
    )


@pytest.mark.usefixtures("fast_retries")
def test_a_shard_that_keeps_failing_fails_the_flow_and_the_store_resumes(
    source, tmp_path: Path, monkeypatch, prefect_api
):
    cfg = run_config(source.root, tmp_path / "fail.zarr")
    real = pipeline.run.write_one_shard
    calls: dict[int, int] = {}
    lock = threading.Lock()

    def broken_shard_2(job, *args, **kwargs):
        with lock:
            calls[job.index] = calls.get(job.index, 0) + 1
        if job.index == 2:
            raise OSError(5, "Input/output error (simulated)")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(pipeline.run, "write_one_shard", broken_shard_2)
    state = prepare_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ShardWriteError) as info:
        state.result()
    message = str(info.value)
    assert "shard 2: OSError: [Errno 5] Input/output error (simulated)" in message
    assert "after 3 attempts" in message
    assert "resumable" in message
    n_shards = math.ceil(2 * source.n_valid / 8)
    assert calls[2] == 3  # first attempt + 2 retries
    assert all(calls[i] == 1 for i in range(n_shards) if i != 2)  # done shards not rewritten
    assert done_shards(cfg.output.path) == set(range(n_shards)) - {2}
    assert "complete" not in read_attrs(cfg.output.path)
    md = _artifact(prefect_api, "imageprep-run-fail-zarr", state.state_details.flow_run_id)
    assert "run failed" in md
    assert "shard 2: OSError" in md
    assert task_states(state.state_details.flow_run_id, expected=4)["write-shards"] == "Failed"

    # the cause goes away: a rerun writes only the missing shard
    monkeypatch.setattr(pipeline.run, "write_one_shard", real)
    result = prepare_flow(cfg)
    assert (result.shards_written, result.shards_skipped, result.resumed) == (1, n_shards - 1, True)
    assert verify(cfg.output.path).ok
    plain = pipeline.run.prepare(_with_output(cfg, tmp_path / "plain.zarr"))
    assert read_store(plain.store) == read_store(cfg.output.path)


@pytest.mark.usefixtures("fast_retries")
def test_a_transient_shard_failure_is_retried(source, tmp_path: Path, monkeypatch):
    cfg = run_config(source.root, tmp_path / "retry.zarr")
    real = pipeline.run.write_one_shard
    failed = []

    def once(job, *args, **kwargs):
        if job.index == 1 and not failed:
            failed.append(job.index)
            raise TimeoutError("NFS server not responding (simulated)")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(pipeline.run, "write_one_shard", once)
    state = prepare_flow(cfg, return_state=True)
    assert state.is_completed()
    assert failed == [1]
    result = state.result()
    assert result.shards_written == 1
    assert result.shards_skipped == result.shards - 1
    assert verify(cfg.output.path).ok


def test_a_second_run_is_refused_while_a_flow_holds_the_store(
    source, tmp_path: Path, monkeypatch, prefect_api
):
    cfg = run_config(source.root, tmp_path / "held.zarr")
    real = pipeline.run.write_one_shard
    writing, release = threading.Event(), threading.Event()

    def blocking(job, *args, **kwargs):
        writing.set()
        assert release.wait(timeout=120), "never released"
        return real(job, *args, **kwargs)

    monkeypatch.setattr(pipeline.run, "write_one_shard", blocking)
    outcome: dict = {}

    def first_run():
        outcome["state"] = prepare_flow(cfg, return_state=True)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert writing.wait(timeout=120), "the first run never started writing"
        # the same process, another flow run
        with pytest.raises(StoreLockedError, match="in use by pid"):
            prepare_flow(cfg)
        # another process, through the command line
        env = {**os.environ, "PREFECT_API_URL": prefect_api}
        r = subprocess.run(
            [
                str(BIN / "imageprep"),
                "run",
                str(CONFIGS / "demo.yaml"),
                "--set",
                f"source.path={source.root}",
                "--set",
                f"output.path={cfg.output.path}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"in use by pid {os.getpid()}" in r.stderr.replace("\n", " ")
    finally:
        release.set()
        thread.join(timeout=180)
    assert outcome["state"].is_completed()
    assert verify(cfg.output.path).ok


def test_a_store_locked_by_another_process_is_refused(source, tmp_path: Path):
    import sys

    cfg = run_config(source.root, tmp_path / "locked.zarr")
    code = (
        "import sys, time\n"
        "from pipeline.store import StoreLock\n"
        f"lock = StoreLock({str(cfg.output.path)!r}).acquire()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"in use by pid {holder.pid}"):
            prepare_flow(cfg)
        assert not cfg.output.path.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    wait_for(
        lambda: StoreLock(cfg.output.path).acquire().release() is None, timeout=10, what="lock"
    )
    assert prepare_flow(cfg).samples == 2 * source.n_valid


def test_dataloader_workers_fork_cleanly_after_a_flow_ran(source, tmp_path: Path, prefect_api):
    """Prefect leaves exit hooks in forked children; flows/_fork.py neutralizes them."""
    import torch

    from flows.prepare import run_foreground
    from pipeline.reader import ShardDataset

    out = tmp_path / "ds.zarr"
    run_foreground(run_config(source.root, out), verify=False)
    loader = torch.utils.data.DataLoader(
        ShardDataset(out), batch_size=8, num_workers=2, multiprocessing_context="fork"
    )
    n = sum(len(labels) for _, labels in loader)
    assert n == len(ShardDataset(out))
