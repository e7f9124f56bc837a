"""run_tasks: results in order, per-task completion, errors captured and named."""

from __future__ import annotations

import dask
import pytest

from pipeline.execution import TaskError, guarded, resolve_workers, run_tasks


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise OSError(f"disk {x} went away")


def test_local_results_in_order_and_errors_captured():
    tasks = [
        dask.delayed(guarded, pure=False)(f"t{i}", _fail if i == 2 else _square, i)
        for i in range(5)
    ]
    seen: list[int] = []
    results = run_tasks(tasks, workers=2, on_done=lambda pos, _: seen.append(pos))
    assert results[:2] == [0, 1]
    assert results[3:] == [9, 16]
    assert isinstance(results[2], TaskError)
    assert str(results[2]) == "t2: OSError: disk 2 went away"
    assert "Traceback" in results[2].traceback
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_distributed_failures_are_named():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        tasks = [dask.delayed(_square, pure=False)(3), dask.delayed(_fail, pure=False)(7)]
        results = run_tasks(tasks, address=cluster.scheduler_address, names=["shard 0", "shard 1"])
    assert results[0] == 9
    assert isinstance(results[1], TaskError)
    assert results[1].name == "shard 1"
    assert "disk 7 went away" in results[1].error


def test_no_tasks_and_worker_counts():
    assert run_tasks([]) == []
    assert resolve_workers(3) == 3
    assert resolve_workers(None) >= 1
