"""``imageprep serve`` against a real Prefect server: deployment, schedule, a triggered run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.store import read_attrs, verify
from tests.flows.conftest import BIN, CONFIGS, make_source, stop, wait_for

pytestmark = pytest.mark.slow

DEPLOYMENT = "imageprep-prepare/nightly"


def test_served_deployment_runs_on_trigger(prefect_server: str, tmp_path: Path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    source = make_source(tmp_path / "images", n_per_class=2)
    store = tmp_path / "served.zarr"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "serve-home"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [
            str(BIN / "imageprep"),
            "serve",
            str(CONFIGS / "demo.yaml"),
            "--cron",
            "0 3 * * *",
            "--name",
            "nightly",
            "--set",
            f"source.path={source.root}",
            "--set",
            f"output.path={store}",
            "--set",
            "transform.size=[32, 32]",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            from prefect import get_client

            deployment = None

            def deployed() -> bool:
                nonlocal deployment
                with get_client(sync_client=True) as client:
                    try:
                        deployment = client.read_deployment_by_name(DEPLOYMENT)
                    except Exception:  # not created yet (ObjectNotFound)
                        return False
                return True

            wait_for(deployed, timeout=120, what="served deployment", proc=serve)
            assert deployment is not None
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            assert all(s.active for s in deployment.schedules)
            config = deployment.parameters["config"]
            assert config["source"]["path"] == str(source.root)
            assert config["output"]["path"] == str(store)
            assert config["transform"]["size"] == [32, 32]

            flow_run = run_deployment(DEPLOYMENT, timeout=240, poll_interval=1)
            assert flow_run.state is not None
            assert flow_run.state.is_completed(), (
                flow_run.state,
                (tmp_path / "serve.log").read_text()[-3000:],
            )
        assert verify(store).ok
        attrs = read_attrs(store)
        assert attrs["complete"] is True
        assert attrs["config"] == config
        assert attrs["layout"]["n_samples"] == 2 * source.n_valid
    finally:
        stop(serve, grace=20)
