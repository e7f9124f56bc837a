"""The Dask dashboard link: logged by pipeline.execution, shown in the run's log and on the console.

A real ``LocalCluster(processes=False)`` with a TCP scheduler on 127.0.0.1 and
a dashboard on a free port; the flow runs on the package's temporary Prefect
server and its log is read back from the API.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows._logs import LOCAL_DASHBOARD_HINT
from flows.cli import app
from flows.prepare import prepare_flow
from pipeline.execution import dashboard_link, run_tasks
from pipeline.store import verify
from tests.flows.conftest import CONFIGS, run_config, wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")


def _cluster(**kwargs: Any) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        **kwargs,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A scheduler (tcp://127.0.0.1, dashboard on a free port) and one in-process worker."""
    with _cluster(dashboard_address="127.0.0.1:0") as c:
        yield c


def run_log_lines(*, flow_run_id: Any = None, expect: str, count: int = 1) -> list[str]:
    """The messages of the run logs stored on the server, once ``count`` contain ``expect``.

    The logs of the flow run ``flow_run_id`` and its task runs, or of every run.
    Logs reach the API in batches, shortly after they are written (the lines
    of one run may arrive in different batches): poll until all are there.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None
    )
    lines: list[str] = []

    def found() -> bool:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=log_filter, limit=200, offset=0, sort=LogSort.TIMESTAMP_ASC
            )
        lines[:] = [log.message for log in logs]
        return sum(expect in line for line in lines) >= count

    wait_for(found, timeout=60, what=f"{count} run log line(s) with {expect!r}")
    return lines


def test_run_tasks_on_a_cluster_logs_the_dashboard_link(cluster, caplog):
    import dask

    caplog.set_level(logging.INFO, logger="pipeline.execution")
    link = cluster.dashboard_link
    assert link.startswith("http://127.0.0.1:")
    assert link.endswith("/status")
    tasks = [dask.delayed(operator.add)(i, 1) for i in range(3)]
    assert run_tasks(tasks, address=cluster.scheduler_address) == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.execution"] == [
        f"Dask cluster {cluster.scheduler_address}: 3 task(s); dashboard: {link}"
    ]

    caplog.clear()
    assert run_tasks(tasks, workers=2) == [1, 2, 3]  # local threads: no cluster, no link
    assert not [r for r in caplog.records if r.name == "pipeline.execution"]


def test_dashboard_link_of_a_scheduler_without_one_is_none():
    # distributed raises KeyError when the scheduler reports no "dashboard" service
    class NoDashboard:
        @property
        def dashboard_link(self) -> str:
            raise KeyError("dashboard")

    assert dashboard_link(NoDashboard()) is None


def test_the_flow_run_log_has_the_dashboard_link(cluster, source, tmp_path: Path):
    cfg = run_config(
        source.root,
        tmp_path / "cluster.zarr",
        transform={"augment": [], "copies": 1},
        runtime={"dask_address": cluster.scheduler_address},
    )
    state = prepare_flow(cfg, return_state=True)
    assert state.is_completed(), state
    assert verify(tmp_path / "cluster.zarr").ok
    expected = f"Dask cluster {cluster.scheduler_address}"
    # the statistics (one task per 64 files) and the shard writes each ran on the cluster
    lines = run_log_lines(flow_run_id=state.state_details.flow_run_id, expect=expected, count=2)
    linked = [line for line in lines if line.startswith(expected)]
    assert len(linked) == 2, lines
    assert all(line.endswith(f"dashboard: {cluster.dashboard_link}") for line in linked)
    assert LOCAL_DASHBOARD_HINT not in lines


def test_a_local_flow_run_says_how_to_get_a_dashboard(source, tmp_path: Path):
    cfg = run_config(source.root, tmp_path / "local.zarr", transform={"augment": []})
    state = prepare_flow(cfg, return_state=True)
    assert state.is_completed(), state
    lines = run_log_lines(flow_run_id=state.state_details.flow_run_id, expect="Dask: local")
    assert LOCAL_DASHBOARD_HINT in lines
    assert "runtime.dask_address=tcp://HOST:8786" in LOCAL_DASHBOARD_HINT
    assert not [line for line in lines if line.startswith("Dask cluster")]


def test_run_no_prefect_prints_the_dashboard_link(cluster, source, tmp_path: Path):
    store = tmp_path / "console.zarr"
    r = CliRunner().invoke(
        app,
        [
            "run",
            str(CONFIGS / "demo.yaml"),
            "--no-prefect",
            "--set",
            f"source.path={source.root}",
            "--set",
            f"output.path={store}",
            "--set",
            "transform.augment=[]",
            "--set",
            "transform.size=[16, 16]",
            "--set",
            f"runtime.dask_address={cluster.scheduler_address}",
        ],
    )
    assert r.exit_code == 0, r.output
    expected = (
        f"Dask cluster {cluster.scheduler_address}: 1 task(s); dashboard: {cluster.dashboard_link}"
    )
    assert expected in r.stderr.splitlines(), r.stderr
    assert verify(store).ok


def test_doctests_of_flows_logs():
    import doctest

    import flows._logs

    result = doctest.testmod(flows._logs)
    assert result.attempted > 0
    assert result.failed == 0
