"""The prepare flow on a real dask.distributed cluster: a scheduler and two workers on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.prepare import prepare_flow
from pipeline.store import read_attrs, verify
from tests.flows.conftest import BIN, free_port, read_store, run_config, stop, wait_for

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes (1 thread each): the address."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    try:
        scheduler = start(
            "scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
        )
        for i in range(2):
            start(
                f"worker-{i}",
                [
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--no-nanny",
                    "--local-directory",
                    str(logs / f"worker-{i}"),
                ],
            )
        from distributed import Client

        def two_workers() -> bool:
            try:
                with Client(address, timeout=5, set_as_default=False) as client:
                    return len(client.scheduler_info()["workers"]) == 2
            except OSError:
                return False

        wait_for(two_workers, timeout=120, what="dask scheduler with 2 workers", proc=scheduler)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc, grace=20)


def test_flow_on_a_dask_cluster_writes_the_same_bytes_as_a_local_run(
    dask_cluster: str, source, tmp_path: Path
):
    local_cfg = run_config(source.root, tmp_path / "local.zarr")
    cluster_cfg = run_config(
        source.root,
        tmp_path / "cluster.zarr",
        runtime={"dask_address": dask_cluster, "workers": 2},
        output={"path": str(tmp_path / "cluster.zarr")},
    )
    # fresh statistics on the cluster too: the cache would hide the cluster's stats pass
    cluster = prepare_flow(cluster_cfg, refresh_stats=True)
    local = prepare_flow(local_cfg, refresh_stats=True)
    assert verify(cluster.store).ok
    assert verify(local.store).ok
    assert cluster.stats == local.stats
    assert read_store(cluster.store) == read_store(local.store)
    attrs = read_attrs(cluster.store)
    assert attrs["config"]["runtime"]["dask_address"] == dask_cluster
    assert attrs["config_identity"] == read_attrs(local.store)["config_identity"]

    # the cluster really ran the work: one write task per shard, and the stats chunks
    from distributed import Client

    def keys_run_here(dask_worker) -> list[str]:  # on each worker (pickled by value)
        return sorted({str(entry[0]) for entry in dask_worker.state.log})

    with Client(dask_cluster, set_as_default=False) as client:
        keys = client.run(keys_run_here)
    assert len(keys) == 2
    ran = {k for worker_keys in keys.values() for k in worker_keys}  # a stolen task is in both
    assert sum(k.startswith("guarded-") for k in ran) == cluster.shards
    assert any(k.startswith("_chunk-") for k in ran)
