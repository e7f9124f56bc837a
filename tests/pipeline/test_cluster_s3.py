"""A Dask cluster without a shared disk: source and store in S3, workers in their own folders.

A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, each
worker started in its own empty temporary folder (its working directory and
its ``--local-directory``). The source and the store are on the S3-compatible
test server (moto, tests/s3server.py), reached through ``endpoint_url`` in the
storage options that travel with the tasks; the local copy of the source is
deleted before the cluster run, so nothing can be read from a disk the
workers share with the coordinator. The store must equal, array by array, the
store of a local run over a local folder of the same files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.run import prepare
from pipeline.store import read_attrs, verify
from tests.pipeline.test_object_store import _config, _image, _s3, arrays, upload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_bucket) -> Iterator[str]:
    """A scheduler and two single-threaded workers, each in its own empty folder: the address."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") or k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no credential lookups beyond the options
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )
        procs.append(proc)
        return proc

    try:
        scheduler = start(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            tmp_path_factory.mktemp("scheduler"),
        )
        for i in range(2):
            home = tmp_path_factory.mktemp(f"worker-{i}")  # a machine of its own, as it were
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
                    str(home),
                ],
                home,
            )
        from distributed import Client

        deadline = time.monotonic() + 180
        while True:
            try:
                with Client(address, timeout=5, set_as_default=False) as client:
                    if len(client.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            if scheduler.poll() is not None or time.monotonic() > deadline:
                text = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("*.log")))
                pytest.fail(f"no dask cluster with 2 workers:\n{text}")
            time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_a_cluster_without_a_shared_disk_writes_the_bytes_of_a_local_run(
    cluster: str, s3_bucket, tmp_path: Path
):
    local_source = tmp_path / "images"
    for i in range(16):
        _image(local_source / ("cat" if i % 2 else "dog") / f"{i:03d}.png", i)
    _image(local_source / "dog" / "deep.png", 77, mode="I;16")
    (local_source / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    src = _s3(s3_bucket, "data/images", "source.path")
    upload(local_source, src)
    reference = prepare(_config(local_source, tmp_path / "local.zarr"))
    shutil.rmtree(local_source)  # the cluster run can only read the objects

    out = s3_bucket.url("stores/cluster.zarr")
    cfg = _config(
        src.url,
        out,
        options=s3_bucket.storage_options,
        runtime={"dask_address": cluster, "workers": 2, "batch_size": 4, "device": "cpu"},
    )
    result = prepare(cfg)
    assert verify(result.store).ok
    got, expected = arrays(result.store), arrays(reference.store)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert np.array_equal(got[name], expected[name]), name
    assert {k: v for k, v in result.stats.items() if k != "fingerprint"} == {
        k: v for k, v in reference.stats.items() if k != "fingerprint"
    }
    attrs = read_attrs(result.store)
    assert attrs["config"]["runtime"]["dask_address"] == cluster
    assert attrs["config_identity"] == read_attrs(reference.store)["config_identity"]

    # the workers did the work: every shard task and the statistics chunks ran there
    from distributed import Client

    def keys_run_here(dask_worker) -> list[str]:  # on each worker (pickled by value)
        return sorted({str(entry[0]) for entry in dask_worker.state.log})

    def folder(dask_worker) -> str:
        return os.getcwd()

    with Client(cluster, set_as_default=False) as client:
        keys = client.run(keys_run_here)
        folders = client.run(folder)
    assert len(keys) == 2
    ran = {k for worker_keys in keys.values() for k in worker_keys}
    assert sum(k.startswith("guarded-") for k in ran) == result.shards
    assert any(k.startswith("_chunk-") for k in ran)
    assert len(set(folders.values())) == 2  # each worker in its own folder
    assert all(str(tmp_path) not in f for f in folders.values())
