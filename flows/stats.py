"""The statistics flow: scan the source and compute (or reuse) its dataset statistics.

:func:`stats_flow` runs the same cached :data:`flows.tasks.stats_task` as
:func:`flows.prepare.prepare_flow`, so statistics computed by one are reused
by the other while the source is unchanged. It writes nothing but an artifact
(the statistics table and the rejected inputs) and returns the stats JSON.

Run it as a module::

    python -m flows.stats configs/demo.yaml --set source.path=/data/images
"""

# No ``from __future__ import annotations`` here: a served run receives the flow
# pickled by value (cloudpickle), without this module's globals, and Prefect
# validates the JSON parameters against the annotations, which must therefore
# be the classes themselves, not strings naming them.
import json
import sys
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import pipeline.run as run
from flows._logs import to_run_log
from flows.artifacts import artifact_key, stats_markdown
from flows.tasks import TaskRunner
from pipeline.config import RunConfig
from pipeline.progress import LogProgress

__all__ = ["FLOW_NAME", "main", "stats_flow"]

#: Name of the flow in Prefect.
FLOW_NAME = "imageprep-stats"


@flow(name=FLOW_NAME, description="Exact per-channel statistics of a folder of images.")
def stats_flow(config: RunConfig, refresh: bool = False) -> dict[str, Any]:
    """Return the stats JSON of ``config``'s source (``source`` and ``stats`` sections).

    Args:
        config: the validated run config; only ``source``, ``stats`` (and, for
            ``stats.at: resized``, ``transform.size``/``resize``) and
            ``runtime`` matter.
        refresh: recompute even when the cache holds statistics for this source.

    Returns:
        The stats JSON (contract shape), ``failures`` included.
    """
    runner = TaskRunner(refresh_stats=refresh)
    logger = get_run_logger()
    manifest = runner(run.scan_source, config)
    with to_run_log(logger):  # the Dask cluster and its dashboard link
        run_stats = runner(run.compute_run_stats, config, manifest, progress=LogProgress(logger))
    cached = runner.states.get("stats") == "Cached"
    create_markdown_artifact(
        stats_markdown(run_stats.stats, source=str(manifest.root), cached=cached),
        key=artifact_key("imageprep-stats", manifest.root.name),
        description="imageprep statistics",
    )
    return dict(run_stats.stats)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m flows.stats CONFIG [--set key=value ...]``: print the stats JSON."""
    from pipeline.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: python -m flows.stats CONFIG [--set key.path=value ...]")
    overrides = [v for k, v in zip(args[1::2], args[2::2], strict=False) if k == "--set"]
    print(json.dumps(stats_flow(load_config(args[0], overrides)), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
