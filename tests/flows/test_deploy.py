"""``prefect.yaml`` and the work-pool path: ``prefect deploy``, a process worker, a triggered run.

The slow test does what docs/flows.md ("Running at scale") tells a user to
type, against a real ``prefect server start`` on a free loopback port: create
a ``process`` work pool, ``prefect --no-prompt deploy --all`` with the
repository's ``prefect.yaml`` from another folder, start ``prefect worker
start --pool imageprep`` (also from another folder), trigger the deployment
with ``prefect deployment run --watch``, and check the store with
``imageprep verify``. The other tests run on the package's temporary server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.deploy import checkout_root, enter_checkout, prepare_from_file
from pipeline.errors import ConfigError
from pipeline.store import read_attrs, verify
from tests.flows.conftest import BIN, make_source, stop, wait_for
from tests.flows.test_dashboard import run_log_lines

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "imageprep-prepare-file/demo"
TINY = ["transform.augment=[]", "transform.size=[16, 16]", "transform.copies=1"]


def _config_file(tmp_path: Path, source: Path) -> Path:
    """A run config with paths relative to its own folder (as users write them)."""
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "run.yaml"
    rel = os.path.relpath(source, path.parent)
    path.write_text(
        f"source: {{path: {rel}}}\n"
        "output: {path: ../out/ds.zarr, shard_size: 8}\n"
        "transform: {size: [24, 24], augment: [{op: invert, p: 0.5}]}\n"
        "runtime: {workers: 2}\n",
        encoding="utf-8",
    )
    return path


def test_prefect_yaml_names_the_flow_its_pull_step_and_valid_parameters():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    assert spec["build"] is None
    assert spec["push"] is None
    [pull] = spec["pull"]
    [(step, inputs)] = pull.items()
    assert import_object(step) is enter_checkout
    assert inputs == {}
    [deployment] = spec["deployments"]
    assert deployment["name"] == "demo"
    assert deployment["work_pool"]["name"] == "imageprep"
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow is prepare_from_file
    # the default parameters are valid parameters of the flow
    params = flow.validate_parameters(deployment["parameters"])
    assert params["config_path"] == "configs/demo.yaml"
    assert (ROOT / params["config_path"]).is_file()
    [schedule] = deployment["schedules"]
    assert schedule == {"cron": "0 3 * * *", "timezone": "UTC", "active": False}


def test_enter_checkout_works_in_the_checkout_or_the_folder_given(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkout_root() == ROOT
    assert enter_checkout() == {"directory": str(ROOT)}
    assert Path.cwd() == ROOT
    other = tmp_path / "work"
    other.mkdir()
    assert enter_checkout(str(other)) == {"directory": str(other)}
    assert Path.cwd() == other


@pytest.mark.usefixtures("prefect_api")
def test_prepare_from_file_loads_the_file_applies_overrides_and_prepares(tmp_path: Path):
    source = make_source(tmp_path / "data" / "images", n_per_class=2)
    config = _config_file(tmp_path, source.root)
    result = prepare_from_file(str(config), overrides=["transform.size=[16, 16]"])
    store = tmp_path / "out" / "ds.zarr"  # relative to the config file's folder
    assert result.store == store
    assert verify(store).ok
    attrs = read_attrs(store)
    assert attrs["config"]["transform"]["size"] == [16, 16]  # the override
    assert attrs["config"]["source"]["path"] == str(source.root)
    assert attrs["layout"]["n_samples"] == source.n_valid

    state = prepare_from_file(str(config), overrides=["transform.sise=[8, 8]"], return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="transform.sise"):
        state.result()


@pytest.mark.usefixtures("prefect_api")
def test_reading_the_workers_of_a_pool_sends_no_null_filters():
    # what `prefect deploy` does after creating a deployment; a server on FastAPI
    # 0.153 answered 422 (`"offset": null, "limit": null`) before flows._compat
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import WorkerFilter

    import flows.tasks  # noqa: F401  (installs the fix, as every flow module does)

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="nulls", type="process"))
        assert client.read_workers_for_work_pool("nulls") == []
        online = WorkerFilter(status={"any_": ["ONLINE"]})
        assert client.read_workers_for_work_pool("nulls", worker_filter=online) == []


def _prefect(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 240) -> Any:
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_deploy_to_a_process_work_pool_and_run_on_a_worker(
    prefect_server: str,
    tmp_path: Path,
):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    source = make_source(tmp_path / "images", n_per_class=2)
    store = tmp_path / "deployed.zarr"
    elsewhere = tmp_path / "elsewhere"  # not the checkout: prefect.yaml must not depend on it
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "cli-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "COLUMNS": "200",  # rich output on one line
    }

    r = _prefect(["work-pool", "create", "imageprep", "--type", "process"], env=env, cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    deploy = ["--no-prompt", "deploy", "--prefect-file", str(ROOT / "prefect.yaml"), "--all"]
    r = _prefect(deploy, env=env, cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr  # was 1: a 422 after creating the deployment
    assert f"Deployment '{DEPLOYMENT}' successfully created" in r.stdout
    assert "prefect worker start --pool 'imageprep'" in r.stdout  # no worker online yet

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.entrypoint == "flows.deploy.prepare_from_file"
        assert deployment.work_pool_name == "imageprep"
        assert deployment.pull_steps == [{"flows.deploy.enter_checkout": {}}]
        assert deployment.parameters["config_path"] == "configs/demo.yaml"
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *"
        assert not schedule.active

        log_path = tmp_path / "worker.log"
        log = open(log_path, "wb")
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "imageprep", "--name", "w1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=elsewhere,
        )
        log.close()
        try:
            overrides = [f"source.path={source.root}", f"output.path={store}", *TINY]
            run = [
                "deployment",
                "run",
                DEPLOYMENT,
                "--param",
                f"overrides={json.dumps(overrides)}",
                "--watch",
                "--watch-timeout",
                "240",
            ]
            r = _prefect(run, env=env, cwd=elsewhere, timeout=300)
            worker_log = log_path.read_text(errors="replace")[-4000:]
            assert r.returncode == 0, r.stdout + r.stderr + worker_log
            assert "Flow run finished successfully in 'Completed'" in r.stdout

            # the default config_path is relative: the pull step made it the checkout's
            # (every log of this server: it ran this one deployment run and its subflow)
            lines = run_log_lines(expect="Dask: local threads")
            assert any(f"config {ROOT / 'configs' / 'demo.yaml'} with " in line for line in lines)
        finally:
            stop(worker, grace=20)

        # the runs of the pool were picked up by this worker
        def worker_seen() -> bool:
            with get_client(sync_client=True) as client:
                workers = client.read_workers_for_work_pool("imageprep", limit=10, offset=0)
            return [w.name for w in workers] == ["w1"]

        wait_for(worker_seen, timeout=30, what="worker w1 registered with the pool")

    r = subprocess.run(
        [str(BIN / "imageprep"), "verify", str(store)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    attrs = read_attrs(store)
    assert attrs["complete"] is True
    assert attrs["layout"]["n_samples"] == source.n_valid
    print(f"deploy, worker and run: {time.monotonic() - t0:.0f} s")


def test_doctests_of_flows_compat():
    import doctest

    import flows._compat

    result = doctest.testmod(flows._compat)
    assert result.attempted > 0
    assert result.failed == 0
