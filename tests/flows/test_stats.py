from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.stats
from flows.prepare import prepare_flow
from flows.stats import stats_flow
from pipeline.stats import compute_stats
from tests.flows.conftest import run_config, task_states

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_stats_flow_equals_the_library_and_shares_the_cache_with_prepare(
    source, tmp_path: Path, monkeypatch
):
    calls = []
    real = pipeline.stats.measure

    def counting(*args, **kwargs):  # the decoding pass of the statistics step
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.stats, "measure", counting)
    cfg = run_config(source.root, tmp_path / "ds.zarr")
    stats = stats_flow(cfg)
    assert stats == compute_stats(source.root).to_json()
    assert len(stats["failures"]) == source.n_broken
    assert len(calls) == 1

    state = prepare_flow(cfg, return_state=True)
    assert task_states(state.state_details.flow_run_id, expected=6)["stats"] == "Cached"
    assert len(calls) == 1
    assert state.result().stats == stats

    state = stats_flow(cfg, refresh=True, return_state=True)
    assert task_states(state.state_details.flow_run_id, expected=2)["stats"] == "Completed"
    assert len(calls) == 2


def test_stats_flow_at_resized_differs_from_source(source, tmp_path: Path):
    at_source = stats_flow(run_config(source.root, tmp_path / "a.zarr"))
    at_resized = stats_flow(run_config(source.root, tmp_path / "a.zarr", stats={"at": "resized"}))
    assert at_resized["images"] == at_source["images"]
    # 32x32 samples: 1024 pixels per image, whatever the source sizes
    assert at_resized["count"] == 1024 * at_resized["images"] != at_source["count"]
