"""A cron schedule fires: ``imageprep serve --cron '* * * * *'`` against a real Prefect server.

Nothing triggers a run by hand here: the server's scheduler services must
create the runs (``auto_scheduled``, created by the deployment's schedule),
and the served process must execute one to completion. Under SQLAlchemy 2.1
Prefect 3.8.8's scheduler fails every loop ("Can't evaluate bulk DML
statement") and no run is ever created: this test then times out. It takes
one to three minutes (the first run is due at the next whole minute).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.store import read_attrs, verify
from tests.flows.conftest import BIN, CONFIGS, make_source, stop, wait_for

pytestmark = pytest.mark.slow

DEPLOYMENT = "imageprep-prepare/every-minute"
FIRES_WITHIN_S = 420
"""The first auto-scheduled run is due within 60 s of the deployment; it must be done by then."""


def test_cron_schedule_creates_and_completes_a_run(
    prefect_server: str,
    tmp_path: Path,
):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    source = make_source(tmp_path / "images", n_per_class=2)
    store = tmp_path / "scheduled.zarr"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "serve-home"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    serve = subprocess.Popen(
        [
            str(BIN / "imageprep"),
            "serve",
            str(CONFIGS / "demo.yaml"),
            "--cron",
            "* * * * *",
            "--name",
            "every-minute",
            "--set",
            f"source.path={source.root}",
            "--set",
            f"output.path={store}",
            "--set",
            "output.overwrite=false",
            "--set",
            "transform.size=[16, 16]",
            "--set",
            "transform.augment=[]",
            "--set",
            "transform.copies=1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    completed: list[Any] = []

    def auto_runs() -> list[Any]:
        with get_client(sync_client=True) as client:
            return [
                r
                for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=[DEPLOYMENT.split("/")[1]])
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=50,
                )
                if r.auto_scheduled
            ]

    def fired() -> bool:
        ended = [r for r in auto_runs() if r.state is not None and r.state.is_final()]
        completed[:] = [r for r in ended if r.state.is_completed()]
        bad = [r for r in ended if not r.state.is_completed()]
        if bad:
            pytest.fail(f"scheduled run {bad[0].name} ended {bad[0].state}: {tail(log_path)}")
        return bool(completed)

    t0 = time.monotonic()
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            wait_for(fired, timeout=FIRES_WITHIN_S, what="an auto-scheduled run", proc=serve)
            run = completed[0]
            print(f"first scheduled run done after {time.monotonic() - t0:.0f} s")
            # created by the deployment's cron schedule, not by hand
            assert run.auto_scheduled
            assert run.created_by is not None
            assert run.created_by.type == "SCHEDULE"
            assert "auto-scheduled" in run.tags
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(DEPLOYMENT)
            assert run.deployment_id == deployment.id
            assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]
            assert run.parameters["config"]["output"]["path"] == str(store)
        report = verify(store)
        assert report.ok, report.summary()
        attrs = read_attrs(store)
        assert attrs["complete"] is True
        assert attrs["layout"]["n_samples"] == source.n_valid
    finally:
        stop(serve, grace=20)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""
