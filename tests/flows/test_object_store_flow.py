"""The prepare flow (Prefect tasks) with its source and its store on S3 (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.prepare import prepare_flow
from pipeline.storage import REDACTED, Location, resolve_location
from pipeline.store import read_attrs, verify
from tests.flows.conftest import run_config
from tests.pipeline.test_object_store import assert_same_arrays, upload

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_flow_on_s3_writes_the_bytes_of_a_local_run(source, s3_bucket, tmp_path: Path):
    opts = s3_bucket.storage_options
    src = resolve_location(s3_bucket.url("images"), key="source.path", storage_options=opts)
    upload(source.root, src)
    local = run_config(source.root, tmp_path / "local.zarr")
    remote = run_config(
        src.url,
        s3_bucket.url("flow.zarr"),
        source={"storage_options": opts},
        output={"path": s3_bucket.url("flow.zarr"), "storage_options": opts},
    )
    result = prepare_flow(remote, refresh_stats=True)
    reference = prepare_flow(local, refresh_stats=True)
    assert isinstance(result.store, Location)
    assert result.store.url == s3_bucket.url("flow.zarr")
    assert verify(result.store).ok
    assert_same_arrays(result.store, reference.store)
    assert result.stats["mean"] == reference.stats["mean"]
    assert read_attrs(result.store)["config"]["output"]["storage_options"]["secret"] == REDACTED

    again = prepare_flow(remote)  # the statistics from the cache, nothing to write
    assert (again.shards_written, again.shards_skipped) == (0, result.shards)
    assert_same_arrays(again.store, reference.store)
