from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from flows.artifacts import (
    FAILURES_LISTED,
    artifact_key,
    failed_run_markdown,
    failures_table,
    run_markdown,
    stats_markdown,
    stats_table,
)
from pipeline.errors import Failure
from pipeline.run import RunResult

KEYS = ("mean", "std", "var", "min", "max", "per_image_mean", "per_image_std")


def random_stats(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    stats = {k: [float(v) for v in rng.random(3)] for k in KEYS}
    return {"channels": ["R", "G", "B"], "images": 7, "count": 123456, "method": "chan", **stats}


def parse_table(md: str) -> dict[str, list[float]]:
    """Read a Markdown table back: first column -> floats of the other columns."""
    block = md[md.index("| statistic") :].split("\n\n")[0]
    rows = [line for line in block.splitlines() if "---" not in line]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header.strip("|").split("|")] == ["statistic", "R", "G", "B"]
    out = {}
    for row in body:
        cells = [c.strip() for c in row.strip("|").split("|")]
        out[cells[0]] = [float(c) for c in cells[1:]]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_table_round_trips_to_six_significant_digits(seed):
    stats = random_stats(seed)
    table = parse_table(stats_table(stats))
    labels = {
        "mean": "mean",
        "std": "std",
        "var": "var",
        "min": "min",
        "max": "max",
        "per-image mean": "per_image_mean",
        "per-image std": "per_image_std",
    }
    assert set(table) == set(labels)
    for label, key in labels.items():
        np.testing.assert_allclose(table[label], stats[key], rtol=5e-6)


def test_stats_table_shows_nan_as_dash():
    stats = random_stats(0)
    stats["std"] = [float("nan")] * 3
    assert "| std | - | - | - |" in stats_table(stats)


def test_failures_table_escapes_and_limits():
    rng = np.random.default_rng(3)
    n = FAILURES_LISTED + 7
    failures = [
        Failure(f"c{i}/f|{rng.integers(1000)}.jpg", f"reason {i}\nsecond line") for i in range(n)
    ]
    md = failures_table(failures)
    assert md.startswith(f"{n} inputs rejected:")
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == FAILURES_LISTED
    # each row has exactly two cells: the pipe in the path is escaped, the newline is gone
    for row, f in zip(rows, failures, strict=False):
        cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
        assert len(cells) == 2
        assert cells[0].strip() == "`" + f.path.replace("|", "\\|") + "`"
        assert cells[1].strip() == f.error.replace("\n", " ")
    assert "... and 7 more" in md
    assert failures_table([]) == "No input was rejected."
    assert failures_table([{"path": "a.png", "error": "empty file"}]).startswith("1 input rejected")


def test_run_markdown_names_store_source_cache_and_failures(tmp_path: Path):
    stats = random_stats(4)
    result = RunResult(
        store=tmp_path / "ds.zarr",
        stats=stats,
        failures=[Failure("a/b.png", "empty file")],
        samples=20,
        shards=3,
        shards_written=2,
        shards_skipped=1,
        resumed=True,
        seconds=1.5,
        timings={"scan": 0.1, "stats": 0.4, "write": 1.0},
    )
    md = run_markdown(
        result, source="/src", stats_cached=True, verified=True, images_per_second=12.5
    )
    assert f"**Store:** `{tmp_path / 'ds.zarr'}`" in md
    assert "20 in 3 shards (2 written now, 1 already done, resumed)" in md
    assert "reused from the cache" in md
    assert "every shard matches its SHA-256 record" in md
    assert "12.5 images/s" in md
    assert "| `a/b.png` | empty file |" in md
    np.testing.assert_allclose(parse_table(md)["mean"], stats["mean"], rtol=5e-6)
    md = run_markdown(result, source="/src", stats_cached=False, verified=None)
    assert "computed in this run" in md
    assert "not verified" in md


def test_stats_and_failed_run_markdown():
    stats = {**random_stats(5), "failures": [{"path": "x.jpg", "error": "truncated image: ..."}]}
    md = stats_markdown(stats, source="/data/images", cached=False)
    assert "`/data/images`" in md
    assert "| `x.jpg` | truncated image: ... |" in md
    md = failed_run_markdown(
        store="/o.zarr", source="/s", error="1 of 2 shards failed\n  - shard 1: OSError: x"
    )
    assert "resumable" in md
    assert "  - shard 1: OSError: x" in md


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dataset.zarr", "imageprep-run-dataset-zarr"),
        ("ÄB__c", "imageprep-run-b-c"),
        ("___", "imageprep-run"),
    ],
)
def test_artifact_key_is_valid(name, expected):
    key = artifact_key("imageprep-run", name)
    assert key == expected
    assert re.fullmatch(r"[a-z0-9-]+", key)
