"""Prefect test set-up for the flow tests: one temporary server per session, own PREFECT_HOME.

The environment is set when this file is imported, before any test module
imports Prefect (Prefect reads its settings at import): PREFECT_HOME points
at a temporary folder (profiles, the persisted results of the stats cache),
no API URL or profile of the developer's is used, and the temporary server's
telemetry is off. Subprocesses started by the tests inherit it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="imageprep-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
assert "prefect" not in sys.modules, "Prefect was imported before tests/flows/conftest.py"
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
    os.environ.pop(_name, None)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the flow tests after every other test of the session.

    The rest of the suite then never runs next to the Prefect server's
    threads. (Forked children of a process that ran a flow used to exit with
    status 1 because of a Prefect 3.8.8 exit hook; flows/_fork.py fixes that,
    and tests/flows/test_prepare.py checks it.)
    """
    flows_items = [i for i in items if HERE in Path(str(i.path)).resolve().parents]
    if flows_items:
        others = [i for i in items if HERE not in Path(str(i.path)).resolve().parents]
        items[:] = others + flows_items


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="package")
def prefect_api() -> Iterator[str]:
    """One temporary Prefect server (SQLite in a temporary folder) for the flow tests: its URL.

    Package scope: started once, by the first flow test that needs it, and
    stopped after the last test of tests/flows, so that the rest of the suite
    does not run (nor fork DataLoader workers) next to its threads.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="package")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME: the API URL.

    A real server (its scheduler and other services run, unlike the test
    harness's): package scope, so the serve, schedule and deploy tests share
    one start (~15 s on 2 cores) instead of one each.
    """
    import httpx

    home = tmp_path_factory.mktemp("server-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=120, what="prefect server", proc=proc)
        yield url
    finally:
        stop(proc, grace=20)


@dataclass
class Source:
    """A generated ImageFolder source: 4 classes, mixed sizes and modes, 6 broken files."""

    root: Path
    n_valid: int
    n_broken: int


def make_source(root: Path, *, n_per_class: int = 4, seed: int = 5) -> Source:
    from pipeline.synthetic import make_dataset

    ds = make_dataset(root, n_per_class=n_per_class, seed=seed, sizes=(24, 48))
    return Source(ds.root, len(ds.valid), len(ds.broken))


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return make_source(tmp_path / "images")


def run_config(src: Path, out: Path, **sections: dict[str, Any]) -> Any:
    """The demo config (every augmentation, 2 copies) at 32x32, 8 samples per shard."""
    from flows.demo import demo_config_data
    from pipeline.config import validate_config

    data, _ = demo_config_data()
    data["source"]["path"] = str(src)
    data["output"]["path"] = str(out)
    data["transform"]["size"] = [32, 32]
    data["output"]["shard_size"] = 8
    data["runtime"]["workers"] = 2
    data["runtime"]["batch_size"] = 5
    for section, values in sections.items():
        data[section].update(values)
    return validate_config(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, proc: Any = None) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` s or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}")
        time.sleep(0.25)
    pytest.fail(f"{what}: not ready after {timeout} s")


def stop(proc: subprocess.Popen[Any], *, grace: float = 15.0) -> None:
    """Terminate a process we started (SIGTERM, then SIGKILL after ``grace`` s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def read_store(path: Path) -> dict[str, Any]:
    """Every array of a store as raw bytes (paths as a list), for bitwise comparison."""
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out: dict[str, Any] = {}
    for name in ("images", "labels", "source_index", "copy_index"):
        a = np.asarray(group[name][:])
        out[name] = (a.dtype.str, a.shape, a.tobytes())
    out["paths"] = [str(p) for p in np.asarray(group["paths"][:])]
    return out


def task_states(flow_run_id: Any, *, expected: int, timeout: float = 30.0) -> dict[str, str]:
    """Task name -> state name of a flow run's task runs, read from the API.

    Task run states reach the server as events, shortly after the run: poll
    until ``expected`` task runs are there in a final state.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    states: dict[str, str] = {}

    def done() -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=100,
            )
        states.clear()
        for r in runs:
            if r.state is not None and r.state.is_final():
                states[r.name.rsplit("-", 1)[0]] = r.state.name
        return len(states) >= expected

    wait_for(done, timeout=timeout, what="task run states")
    return dict(states)
