r"""Markdown for the Prefect artifacts of a run: statistics table, failures, store.

Pure functions from the run's plain data (the stats JSON, failures, the
:class:`pipeline.run.RunResult`) to Markdown text; :mod:`flows.prepare` and
:mod:`flows.stats` publish it with ``prefect.artifacts.create_markdown_artifact``.
Nothing here talks to Prefect, so it is tested like any function.

Example:
    >>> stats = {"channels": ["R", "G", "B"], "images": 2, "count": 8, "method": "exact",
    ...          "mean": [0.5, 0.25, 0.125], "std": [0.1, 0.2, 0.3], "var": [0.01, 0.04, 0.09],
    ...          "min": [0.0, 0.0, 0.0], "max": [1.0, 1.0, 1.0],
    ...          "per_image_mean": [0.5, 0.25, 0.125], "per_image_std": [0.1, 0.2, 0.3]}
    >>> print(stats_table(stats).splitlines()[2])
    | mean | 0.5 | 0.25 | 0.125 |
    >>> print(failures_table([{"path": "a/x|y.jpg", "error": "empty file"}]))
    1 input rejected:
    <BLANKLINE>
    | path | reason |
    |---|---|
    | `a/x\|y.jpg` | empty file |
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.errors import Failure
    from pipeline.run import RunResult

__all__ = [
    "FAILURES_LISTED",
    "artifact_key",
    "failed_run_markdown",
    "failures_table",
    "run_markdown",
    "stats_markdown",
    "stats_table",
]

#: Rejected inputs listed in an artifact; the rest are counted (all are in the store).
FAILURES_LISTED = 50

_ROWS = (
    ("mean", "mean"),
    ("std", "std"),
    ("var", "var"),
    ("min", "min"),
    ("max", "max"),
    ("per-image mean", "per_image_mean"),
    ("per-image std", "per_image_std"),
)


def _cell(text: object) -> str:
    """Escape a value for a Markdown table cell (pipes, line breaks)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def artifact_key(prefix: str, name: str) -> str:
    """Return a Prefect artifact key: lowercase letters, digits and dashes only.

    Example:
        >>> artifact_key("imageprep-run", "My Data_set.zarr")
        'imageprep-run-my-data-set-zarr'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug}" if slug else prefix


def stats_table(stats: Mapping[str, Any]) -> str:
    """The per-channel statistics as a Markdown table (one row per statistic).

    Args:
        stats: the stats JSON (contract shape).

    Returns:
        The table, header first; per-image rows last.
    """
    channels = list(stats.get("channels", ["R", "G", "B"]))
    lines = [
        "| statistic | " + " | ".join(_cell(c) for c in channels) + " |",
        "|---|" + "---:|" * len(channels),
    ]
    for label, key in _ROWS:
        values = stats.get(key) or [float("nan")] * len(channels)
        lines.append(f"| {label} | " + " | ".join(_number(v) for v in values) + " |")
    return "\n".join(lines)


def _failure_pair(failure: Failure | Mapping[str, Any]) -> tuple[str, str]:
    if isinstance(failure, Mapping):
        return str(failure.get("path", "")), str(failure.get("error", ""))
    return failure.path, failure.error


def failures_table(
    failures: Sequence[Failure | Mapping[str, Any]], *, limit: int = FAILURES_LISTED
) -> str:
    """Summarize rejected inputs: a count, then a table of the first ``limit``.

    Args:
        failures: :class:`~pipeline.errors.Failure` records or their JSON dicts.
        limit: rows listed at most.

    Returns:
        ``"No input was rejected."`` or the count and the table.
    """
    if not failures:
        return "No input was rejected."
    n = len(failures)
    lines = [f"{n} input{'s' if n != 1 else ''} rejected:", "", "| path | reason |", "|---|---|"]
    for failure in failures[:limit]:
        path, error = _failure_pair(failure)
        lines.append(f"| `{_cell(path)}` | {_cell(error)} |")
    if n > limit:
        lines.append("")
        lines.append(f"... and {n - limit} more (all in the store's `imageprep.failures`).")
    return "\n".join(lines)


def _stats_header(stats: Mapping[str, Any], *, cached: bool) -> str:
    origin = "reused from the cache (unchanged source)" if cached else "computed in this run"
    count = stats.get("count", 0)
    return (
        f"{stats.get('images', 0)} images, {count:,} pixels per channel, method "
        f"`{stats.get('method', '?')}`, {origin}. Pooled over every pixel on the 0-1 scale; "
        "per-image rows average per-image values."
    )


def stats_markdown(stats: Mapping[str, Any], *, source: str, cached: bool) -> str:
    """The artifact of :func:`flows.stats.stats_flow`: source, statistics, failures."""
    return "\n".join(
        [
            "# imageprep statistics",
            "",
            f"**Source:** `{_cell(source)}`",
            "",
            _stats_header(stats, cached=cached),
            "",
            stats_table(stats),
            "",
            "## Rejected inputs",
            "",
            failures_table(stats.get("failures", [])),
            "",
        ]
    )


def run_markdown(
    result: RunResult,
    *,
    source: str,
    stats_cached: bool,
    verified: bool | None,
    images_per_second: float | None = None,
) -> str:
    """The artifact of a finished :func:`flows.prepare.prepare_flow`.

    Args:
        result: the run summary.
        source: the source folder.
        stats_cached: whether the statistics came from the task cache.
        verified: ``True`` when every shard matched its checksum after the
            write, ``None`` when verification was skipped.
        images_per_second: write throughput of this run, if any shard was written.
    """
    verify_line = {
        True: "every shard matches its SHA-256 record",
        False: "verification failed",
        None: "not verified in this run",
    }[verified]
    rate = f", {images_per_second:.1f} images/s" if images_per_second else ""
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    return "\n".join(
        [
            "# imageprep run",
            "",
            f"**Store:** `{_cell(result.store)}`",
            "",
            f"- samples: {result.samples} in {result.shards} shards "
            f"({result.shards_written} written now, {result.shards_skipped} already done"
            f"{', resumed' if result.resumed else ''})",
            f"- checksums: {verify_line}",
            f"- source: `{_cell(source)}`",
            f"- timings: {timings}{rate}",
            "",
            "## Statistics",
            "",
            _stats_header(result.stats, cached=stats_cached),
            "",
            stats_table(result.stats),
            "",
            "## Rejected inputs",
            "",
            failures_table(result.failures),
            "",
        ]
    )


def failed_run_markdown(*, store: str, source: str, error: str) -> str:
    """The artifact of a run whose shards could not all be written.

    Example:
        >>> print(failed_run_markdown(store="/o.zarr", source="/s", error="shard 2: OSError: x"))
        ... # doctest: +NORMALIZE_WHITESPACE
        # imageprep run failed
        <BLANKLINE>
        **Store:** `/o.zarr` (resumable: rerun the same config to write the missing shards)
        <BLANKLINE>
        - source: `/s`
        <BLANKLINE>
        ```
        shard 2: OSError: x
        ```
        <BLANKLINE>
    """
    return "\n".join(
        [
            "# imageprep run failed",
            "",
            f"**Store:** `{_cell(store)}` (resumable: rerun the same config to write the "
            "missing shards)",
            "",
            f"- source: `{_cell(source)}`",
            "",
            "```",
            error.replace("```", "'''"),
            "```",
            "",
        ]
    )
